//! The controller's TLS: one port, client certificates optional at the TLS
//! layer (enrollment and operators have none), but a certificate that is
//! presented must be one this controller issued and still honours.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::transport::server::Connected;

use fleet_proto::transport::{fingerprint, provider, ALPN_H2};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::connections::{ConnState, Slot};
use crate::metrics::Metrics;
use crate::store::Store;

/// Verifies client certificates against the CA, then against the store's
/// allowlist, so a removed host is refused during the handshake.
#[derive(Debug)]
struct AllowlistVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    store: StoreRef,
    metrics: MetricsRef,
}

// Store and Metrics do not implement Debug; wrap them to satisfy the trait bound.
struct StoreRef(Store);
impl std::fmt::Debug for StoreRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}
struct MetricsRef(Arc<Metrics>);
impl std::fmt::Debug for MetricsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl AllowlistVerifier {
    fn refused(&self, reason: &str) {
        self.metrics
            .0
            .tls_refused
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }
}

impl ClientCertVerifier for AllowlistVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.webpki.verify_client_cert(end_entity, intermediates, now) {
            let reason = match &e {
                rustls::Error::InvalidCertificate(CertificateError::Expired) => "expired",
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
                rustls::Error::InvalidCertificate(CertificateError::BadSignature) => "bad_signature",
                _ => "invalid",
            };
            self.refused(reason);
            tracing::info!(reason, error = %e, "refused a client certificate");
            return Err(e);
        }
        let fp = fingerprint(end_entity);
        match self.store.0.cert_host(&fp) {
            Ok(Some(_)) => Ok(ClientCertVerified::assertion()),
            Ok(None) => {
                self.refused("revoked");
                tracing::info!(cert = %fp, "refused a revoked client certificate (its host was removed)");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Err(e) => {
                tracing::error!(error = %e, "store lookup failed during a handshake");
                Err(rustls::Error::General(
                    "the controller's store failed; try again".into(),
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Builds the server configuration: `chain` is the server certificate then the
/// CA (agents pin the CA by fingerprint and find it in the chain).
pub fn server_config(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    store: Store,
    metrics: Arc<Metrics>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = AllowlistVerifier {
        webpki,
        store: StoreRef(store),
        metrics: MetricsRef(metrics),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Who is on the other end of a TLS connection, worked out once per
/// connection and attached to every request on it (tonic's `Connected`).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// TCP peer address.
    pub remote: SocketAddr,
    /// `sha256:<hex>` of the client certificate, when one was presented.
    pub cert_fp: Option<String>,
    /// The connection's request count and deadlines (see `listener`).
    pub conn: Arc<ConnState>,
}

/// A server-side TLS connection that tells tonic its [`PeerInfo`], holds
/// its place in the connection table, and fails its next read once the
/// controller decides to close it (idle, or evicted at a cap).
pub struct PeerConn {
    tls: TlsStream<TcpStream>,
    info: PeerInfo,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    // Released when hyper drops the connection, that is with the socket.
    _slot: Slot,
}

impl PeerConn {
    /// Wraps an accepted connection.
    pub fn new(tls: TlsStream<TcpStream>, remote: SocketAddr, slot: Slot) -> PeerConn {
        let cert_fp = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| fingerprint(c));
        let conn = slot.conn().clone();
        PeerConn {
            tls,
            closed: Box::pin(conn.close_token().clone().cancelled_owned()),
            info: PeerInfo { remote, cert_fp, conn },
            _slot: slot,
        }
    }
}

impl Connected for PeerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        // hyper always has a read pending, so this is where a close decided
        // elsewhere takes effect: the error ends the connection.
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed by the controller: no request in time, or room made for a new connection",
            )));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// The fingerprint of the client certificate a request came with, if any.
pub fn peer_fingerprint<T>(req: &tonic::Request<T>) -> Option<String> {
    req.extensions().get::<PeerInfo>()?.cert_fp.clone()
}

/// The peer address of a request on the TLS port.
pub fn peer_addr<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
    req.extensions().get::<PeerInfo>().map(|p| p.remote)
}
