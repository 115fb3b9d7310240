//! The controller's TLS: one port, client certificates optional at the TLS
//! layer (enrollment and operators have none), but a certificate that is
//! presented must be one this controller issued and still honours. The CA
//! material comes from `authority` at each handshake (a CA rotation swaps
//! it without a restart).

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
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::authority::Authority;
use crate::connections::{ConnState, Slot};
use crate::metrics::Metrics;
use crate::store::{CertRecord, Peers, Store, StoreError};

/// Verifies client certificates against the CAs in force (the
/// authority's: two during a CA rotation), then against the store's
/// allowlist, so a removed host is refused during the handshake.
#[derive(Debug)]
struct AllowlistVerifier {
    authority: AuthorityRef,
    store: StoreRef,
    metrics: MetricsRef,
}

/// Where the certificates the fleet honours are looked up: the store of
/// the serving controller, or etcd as a follower reads it ([`Peers`]).
pub trait Allowlist: Send + Sync {
    /// The record of `cert_fp` if the fleet honours it (issued, its host
    /// not removed).
    fn cert_host(&self, cert_fp: &str) -> Result<Option<CertRecord>, StoreError>;
}

impl Allowlist for Store {
    fn cert_host(&self, cert_fp: &str) -> Result<Option<CertRecord>, StoreError> {
        Store::cert_host(self, cert_fp)
    }
}

impl Allowlist for Peers {
    fn cert_host(&self, cert_fp: &str) -> Result<Option<CertRecord>, StoreError> {
        Peers::cert_host(self, cert_fp)
    }
}

struct AuthorityRef(Arc<Authority>);
impl std::fmt::Debug for AuthorityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

/// Presents the authority's server certificate in force.
#[derive(Debug)]
struct ServerCert(AuthorityRef);

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0 .0.current().server.clone())
    }
}

// The allowlist and Metrics do not implement Debug; wrap them to satisfy the trait bound.
struct StoreRef(Arc<dyn Allowlist>);
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
        // The CAs change at a rotation; agents send their one certificate
        // without hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let webpki = self.authority.0.current().client_verifier.clone();
        if let Err(e) = webpki.verify_client_cert(end_entity, intermediates, now) {
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
        self.authority
            .0
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.authority
            .0
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.authority.0.current().client_verifier.supported_verify_schemes()
    }
}

/// Builds the server configuration on the authority's material, read at
/// every handshake: the server chain is the server certificate then the
/// CA(s) (agents pin the CA by fingerprint and find it in the chain).
pub fn server_config(
    authority: Arc<Authority>,
    store: Arc<dyn Allowlist>,
    metrics: Arc<Metrics>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = AllowlistVerifier {
        authority: AuthorityRef(authority.clone()),
        store: StoreRef(store),
        metrics: MetricsRef(metrics),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(ServerCert(AuthorityRef(authority))));
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
