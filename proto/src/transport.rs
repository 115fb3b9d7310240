//! Client-side TLS for agents and fleetctl, and the pieces the controller's
//! server side shares with them (fingerprints, ALPN, PEM loading).
//!
//! Every connection is TLS 1.2+/1.3 with rustls and the `ring` provider, ALPN
//! `h2`. The client verifies the controller either against a CA certificate
//! it holds (`Trust::Ca`), or, before enrollment, against the CA whose
//! SHA-256 fingerprint it was given (`Trust::PinnedFingerprint`): the
//! controller sends its CA in the chain and the client accepts the chain only
//! if that CA has the pinned fingerprint and signs the server certificate.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint, Uri};

/// The ALPN protocol gRPC runs on.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors building TLS configurations or dialling the controller.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what}: {detail}")]
    Pem { what: String, detail: String },
    /// The controller address is not `host:port`.
    #[error("controller address '{0}' is not host:port (e.g. controller.example.com:7443)")]
    BadAddress(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The connection failed; `message` explains why in operator terms.
    #[error("{message}")]
    Connect {
        /// The operator sentence.
        message: String,
        /// What went wrong, for callers that act on it.
        cause: Cause,
    },
}

/// The `ring` crypto provider, the only one fleet uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<64 hex>` of a DER certificate: how operators name a CA.
pub fn fingerprint(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
    )
}

/// The bytes of a hex string (either case); `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TransportError::Pem {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TransportError::Pem {
            what: what.into(),
            detail: "no CERTIFICATE block in it".into(),
        });
    }
    Ok(certs)
}

/// Parses the first private key in a PEM text.
pub fn key_from_pem(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TransportError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TransportError::Pem {
            what: what.into(),
            detail: e.to_string(),
        })?
        .ok_or_else(|| TransportError::Pem {
            what: what.into(),
            detail: "no PRIVATE KEY block in it".into(),
        })
}

/// How a client decides to trust the controller.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Verify against this CA certificate (DER).
    Ca(CertificateDer<'static>),
    /// Verify against any of these CA certificates (a bundle: during a CA
    /// rotation, the new CA and the one it replaces).
    Cas(Vec<CertificateDer<'static>>),
    /// Accept the CA in the presented chain whose fingerprint is this
    /// (`sha256:<hex>`), and verify the server certificate against it.
    PinnedFingerprint(String),
}

/// A client certificate chain and its key.
pub struct ClientIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

/// Builds the rustls client configuration for talking to the controller.
pub fn client_config(trust: Trust, identity: Option<ClientIdentity>) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca)?;
            builder.with_root_certificates(roots)
        }
        Trust::Cas(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca)?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::PinnedFingerprint(pin) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                    pin: pin.to_ascii_lowercase(),
                    provider,
                }))
        }
    };
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Verifies the server against the CA in its own chain whose fingerprint is
/// pinned. The pin is the whole of the trust: without a matching CA in the
/// chain, nothing is accepted.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller's certificate chain holds no CA with fingerprint {}; \
                 check ca_fingerprint against the output of 'fleet-controller init'",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Splits a list of controller addresses (`host:port`, separated by
/// commas; several controllers of one fleet), checking each; the first
/// bad one is the error. Empty entries (a trailing comma) are skipped.
pub fn split_addresses(list: &str) -> Result<Vec<String>, TransportError> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| split_host_port(a).map(|_| a.to_string()))
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err(TransportError::BadAddress(list.to_string()));
    }
    Ok(addrs)
}

/// Splits `host:port` (or `[v6]:port`), rejecting anything else.
pub fn split_host_port(addr: &str) -> Result<(String, u16), TransportError> {
    let addr = addr.trim().trim_start_matches("https://").trim_end_matches('/');
    let bad = || TransportError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// HTTP/2 flow-control window a client opens per stream, in bytes.
pub const RECEIVE_WINDOW: u32 = 512 * 1024;

/// Dials the controller at `addr` (`host:port`) over TLS with `config`.
///
/// The name is resolved afresh on every connection attempt (also on the
/// channel's own reconnects), so a controller that moved is found.
pub async fn connect(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, TransportError> {
    connect_from(addr, config, None).await
}

/// [`connect`], from the local address `source` when one is given (a load
/// generator spreads its connections over loopback addresses so they fit
/// in the ephemeral port range).
pub async fn connect_from(
    addr: &str,
    config: Arc<ClientConfig>,
    source: Option<std::net::IpAddr>,
) -> Result<Channel, TransportError> {
    let (endpoint, host, port, server_name) = endpoint(addr)?;
    endpoint
        .connect_with_connector(tls_connector(host, port, server_name, config, source))
        .await
        .map_err(|e| TransportError::Connect {
            message: explain(&e, addr),
            cause: cause_of(&e),
        })
}

/// A channel to `addr` over TLS with `config` that dials on first use (and
/// again after a connection is lost), for a client that must not wait for
/// the server when it starts (the controller's etcd backend).
pub fn connect_lazy(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, TransportError> {
    let (endpoint, host, port, server_name) = endpoint(addr)?;
    Ok(endpoint.connect_with_connector_lazy(tls_connector(host, port, server_name, config, None)))
}

/// A TLS connection to `addr` (`host:port`) with `config`, for a caller
/// that speaks HTTP/2 over it itself (a follower forwarding to the
/// serving controller): unlike a [`Channel`], it is never dialed again, so
/// its loss is seen. Within 10 s.
pub async fn dial(
    addr: &str,
    config: Arc<ClientConfig>,
) -> Result<TokioIo<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>, TransportError> {
    let (host, port) = split_host_port(addr)?;
    let server_name = ServerName::try_from(host.clone()).map_err(|_| TransportError::BadAddress(addr.to_string()))?;
    let connector = tls_connector(host, port, server_name, config, None);
    let failed = |e: std::io::Error| TransportError::Connect {
        message: explain(&e, addr),
        cause: cause_of(&e),
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        tower::ServiceExt::oneshot(connector, Uri::from_static("/")),
    )
    .await
    {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(failed(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no connection within 10 s",
        ))),
    }
}

/// The endpoint for `addr` with the HTTP/2 settings every client uses.
fn endpoint(addr: &str) -> Result<(Endpoint, String, u16, ServerName<'static>), TransportError> {
    let (host, port) = split_host_port(addr)?;
    let server_name = ServerName::try_from(host.clone()).map_err(|_| TransportError::BadAddress(addr.to_string()))?;
    let uri: Uri = format!("https://{}", authority(&host, port))
        .parse()
        .map_err(|_| TransportError::BadAddress(addr.to_string()))?;
    let endpoint = Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        // What the controller may send ahead of our reading: two artifact
        // chunks per stream. Larger windows only grew the agent's heap
        // during a download (tests/bench/agent-deploy-memory.sh); 512 KiB
        // in flight still fills 50 MB/s at 10 ms round trips.
        .initial_stream_window_size(Some(RECEIVE_WINDOW))
        .initial_connection_window_size(Some(2 * RECEIVE_WINDOW))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok((endpoint, host, port, server_name))
}

/// How long one of several addresses of a name may take to accept before
/// the next is tried (a dead instance drops SYNs; the endpoint's own
/// deadline is 10 s in all).
const NEXT_ADDRESS_AFTER: Duration = Duration::from_secs(3);

/// Dials the addresses a name resolved to, starting at `start` (modulo
/// their number: callers pass a random number, so the clients of a name
/// with several A records spread over them) and going on to the next when
/// one refuses or does not accept within [`NEXT_ADDRESS_AFTER`].
async fn connect_spread(
    name: &str,
    addrs: &[std::net::SocketAddr],
    start: usize,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for i in 0..addrs.len() {
        let addr = addrs[(start + i) % addrs.len()];
        let more = i + 1 < addrs.len();
        let attempt = tokio::net::TcpStream::connect(addr);
        let result = if more {
            match tokio::time::timeout(NEXT_ADDRESS_AFTER, attempt).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{addr} did not accept within {NEXT_ADDRESS_AFTER:?}"),
                )),
            }
        } else {
            attempt.await
        };
        match result {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{name} resolves to no address"))))
}

/// Dials `host:port` (from `source` when given) and runs the TLS handshake.
fn tls_connector(
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    source: Option<std::net::IpAddr>,
) -> impl tower::Service<Uri, Response = TokioIo<Replayed>, Error = std::io::Error, Future = impl Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: Uri| {
        let (host, server_name, config) = (host.clone(), server_name.clone(), config.clone());
        async move {
            // Invariant: lookup happens here, per attempt, never cached.
            let tcp = match source {
                None => {
                    let addrs: Vec<std::net::SocketAddr> =
                        tokio::net::lookup_host((host.as_str(), port)).await?.collect();
                    connect_spread(&host, &addrs, fastrand::usize(..)).await?
                }
                Some(ip) => {
                    let to = tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .find(|a| a.is_ipv4() == ip.is_ipv4())
                        .ok_or_else(|| {
                            std::io::Error::new(std::io::ErrorKind::NotFound, "no address of the source's family")
                        })?;
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    socket.connect(to).await?
                }
            };
            tcp.set_nodelay(true)?;
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            // In TLS 1.3 the server judges our certificate after we think the
            // handshake is done. Wait for its first bytes (the HTTP/2 server
            // preface, sent unprompted) so a refusal surfaces here as a typed
            // rustls alert instead of a later "connection closed" from h2.
            let mut first = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut first))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer after the TLS handshake")
                })??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the controller closed the connection right after the TLS handshake",
                ));
            }
            first.truncate(n);
            Ok::<_, std::io::Error>(TokioIo::new(Replayed {
                inner: tls,
                prefix: first,
                pos: 0,
            }))
        }
    })
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What went wrong on a connection, found by walking an error's sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The controller sent a TLS alert: it refused our certificate.
    Alert(rustls::AlertDescription),
    /// Our side refused the controller's certificate.
    BadServerCert(String),
    /// A socket-level failure (refused, unreachable, timed out, DNS).
    Io(std::io::ErrorKind, String),
    /// Anything else.
    Other(String),
}

/// TLS alerts that mean "the peer refused the certificate", by rustls name.
const CERT_ALERTS: [rustls::AlertDescription; 8] = [
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::CertificateRequired,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::AccessDenied,
];

/// The client side of a TLS connection, replaying the bytes `connect` read
/// while it waited for the server to accept the client certificate.
struct Replayed {
    inner: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// Bytes read while waiting for the server's verdict, replayed first.
    prefix: Vec<u8>,
    pos: usize,
}

impl tokio::io::AsyncRead for Replayed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Replayed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether the controller refused this client's certificate (as opposed to a
/// failure worth retrying).
pub fn is_certificate_refusal(cause: &Cause) -> bool {
    matches!(cause, Cause::Alert(a) if CERT_ALERTS.contains(a))
}

/// Finds a certificate alert in rustls' wording ("received fatal alert: X"),
/// which is all that is left of it once h2 has stringified the error.
fn alert_in_text(text: &str) -> Option<rustls::AlertDescription> {
    let (_, rest) = text.split_once("received fatal alert: ")?;
    let name = rest.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    CERT_ALERTS.into_iter().find(|a| format!("{a:?}") == name)
}

/// Finds the most telling cause in an error chain.
pub fn cause_of(err: &(dyn std::error::Error + 'static)) -> Cause {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut io = None;
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_cause(tls);
        }
        if let Some(ioe) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = ioe.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_cause(tls);
            }
            io.get_or_insert(Cause::Io(ioe.kind(), ioe.to_string()));
        }
        if let Some(alert) = alert_in_text(&e.to_string()) {
            return Cause::Alert(alert);
        }
        cur = e.source();
    }
    io.unwrap_or_else(|| Cause::Other(err.to_string()))
}

fn tls_cause(e: &rustls::Error) -> Cause {
    match e {
        rustls::Error::AlertReceived(a) => Cause::Alert(*a),
        other => Cause::BadServerCert(other.to_string()),
    }
}

/// An operator-facing sentence for a failed connection to `addr`.
pub fn explain(err: &(dyn std::error::Error + 'static), addr: &str) -> String {
    match cause_of(err) {
        Cause::Alert(rustls::AlertDescription::CertificateRevoked) => format!(
            "the controller at {addr} refused this client's certificate: it was revoked (the host was removed); enroll again with a new join token"
        ),
        Cause::Alert(rustls::AlertDescription::CertificateExpired) => format!(
            "the controller at {addr} refused this client's certificate: it expired; enroll again with a new join token"
        ),
        Cause::Alert(rustls::AlertDescription::UnknownCA) => format!(
            "the controller at {addr} refused this client's certificate: another CA issued it (alert UnknownCA); enroll with this controller's join token"
        ),
        Cause::Alert(a) => format!(
            "the controller at {addr} refused the TLS handshake (alert {a:?}): this client's certificate is not one it honours"
        ),
        Cause::BadServerCert(detail) => format!(
            "the controller at {addr} presented a certificate this client does not trust: {detail}; check the CA file or fingerprint you were given"
        ),
        Cause::Io(_, detail) => format!("cannot reach the controller at {addr}: {detail}; check the address and that fleet-controller is running"),
        Cause::Other(detail) => format!("cannot connect to the controller at {addr}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_addresses_of_a_name_are_spread_over_and_a_dead_one_is_passed() {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        // An address nobody listens on (bound, then closed).
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let addrs = [dead, a.local_addr().expect("addr"), b.local_addr().expect("addr")];
        let mut reached = Vec::new();
        for start in 0..6 {
            let tcp = connect_spread("fleet.example", &addrs, start)
                .await
                .expect("a live address");
            reached.push(tcp.peer_addr().expect("peer"));
        }
        // Starting at the dead one goes on to the next; every start lands
        // where the order says, so random starts spread over the live ones.
        assert_eq!(
            reached,
            [addrs[1], addrs[1], addrs[2], addrs[1], addrs[1], addrs[2]],
            "{addrs:?}"
        );
        let err = connect_spread("fleet.example", &[dead], 0).await.expect_err("dead");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let err = connect_spread("fleet.example", &[], 0).await.expect_err("none");
        assert!(
            err.to_string().contains("fleet.example resolves to no address"),
            "{err}"
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.example:7443").ok(), Some(("a.example".into(), 7443)));
        assert_eq!(
            split_host_port("https://127.0.0.1:1/").ok(),
            Some(("127.0.0.1".into(), 1))
        );
        assert_eq!(split_host_port("[::1]:9").ok(), Some(("::1".into(), 9)));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("a:port").is_err());
    }

    #[test]
    fn address_lists() {
        assert_eq!(split_addresses("a:1").ok(), Some(vec!["a:1".to_string()]));
        assert_eq!(
            split_addresses(" a:1, b:2 ,").ok(),
            Some(vec!["a:1".to_string(), "b:2".to_string()])
        );
        assert!(matches!(split_addresses("a:1,b"), Err(TransportError::BadAddress(b)) if b == "b"));
        assert!(split_addresses(" , ").is_err());
        assert!(split_addresses("").is_err());
    }

    #[test]
    fn alerts_survive_stringification() {
        // h2 keeps only rustls' text; if rustls rewords it, this fails.
        let text = format!(
            "h2 protocol error: {}",
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
        );
        let err = std::io::Error::other(text);
        assert_eq!(
            cause_of(&err),
            Cause::Alert(rustls::AlertDescription::CertificateRevoked)
        );
        let other = std::io::Error::other("received fatal alert: DecodeError");
        assert!(matches!(cause_of(&other), Cause::Io(..)));
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        let fp = fingerprint(b"abc");
        assert_eq!(
            fp,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
