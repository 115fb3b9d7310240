//! Followers: on etcd, every controller of a fleet takes hosts' and
//! operators' connections; the one holding the serving lock answers them
//! and the others forward each request to it.
//!
//! - A follower terminates TLS as the serving controller does (its own
//!   server certificate, the fleet's CA, the honoured certificates read
//!   from etcd), then sends the request on over a connection of its own
//!   to the serving controller ([`serve`]), one upstream connection per
//!   client connection, so the serving controller's connection limits and
//!   deadlines see what they would see without it.
//! - The request carries who the client is: its address and the
//!   fingerprint of the certificate it proved in the handshake, under an
//!   HMAC by a key derived from `mac.key` ([`FORWARD_KEY`]), which only the
//!   fleet's controllers hold ([`Signer`]). The serving controller takes
//!   these in place of the follower's own connection ([`ForwardedLayer`])
//!   and then authenticates and authorizes as for a direct client.
//! - Responses and streams come back unchanged: a rollout's task reaches a
//!   host whose stream a follower holds through that stream.
//! - The peers' artifact copies (`PeerService`) a follower answers itself:
//!   the controller that serves next may lack an artifact another holds.
//! - When the serving controller dies, the streams forwarded to it end;
//!   clients dial again, and a follower forwards to the controller that
//!   serves next (read from etcd every [`LEADER_LOOK`]). Until one serves,
//!   a follower answers UNAVAILABLE.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use ring::hmac;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tower::{Layer, Service, ServiceExt};

use crate::connections::Connections;
use crate::listener::StreamTrackingLayer;
use crate::store::Peers;
use crate::tls::{PeerConn, PeerInfo};

/// What the forwarding key is derived for (`secrets::Macs::derive`).
pub const FORWARD_KEY: &str = "peer-forward-v1";
/// How often a follower reads which controller serves.
pub const LEADER_LOOK: Duration = Duration::from_secs(1);
/// How long a follower holds a request while no controller it can reach
/// serves (the serving one died: its lock's lease runs out, 6 s, and
/// another takes it), before it answers UNAVAILABLE.
pub const HOLD: Duration = Duration::from_secs(15);

/// The follower that forwarded a request (its advertised address).
const BY: &str = "fleet-forwarded-by";
/// The client's address as the follower saw it.
const FOR: &str = "fleet-forwarded-for";
/// The fingerprint of the client's certificate (empty: none).
const CERT: &str = "fleet-forwarded-cert";
/// The HMAC over the three.
const MAC: &str = "fleet-forwarded-mac";

/// Who a forwarded request came from, as a follower vouches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The follower.
    pub by: String,
    /// The client's address.
    pub remote: SocketAddr,
    /// The client's certificate, if it presented one.
    pub cert_fp: Option<String>,
}

/// Why a request's forwarding headers are not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Some of the headers are missing or unreadable.
    #[error("its forwarding headers are incomplete or unreadable")]
    Malformed,
    /// The HMAC does not match: not made with this fleet's `mac.key`.
    #[error("its forwarding headers were not signed with this fleet's mac.key (a controller of another fleet, or a forgery)")]
    Forged,
}

/// Signs and checks the forwarding headers.
pub struct Signer {
    key: hmac::Key,
}

impl Signer {
    /// A signer under `key` (from `secrets::Macs::derive(FORWARD_KEY)`).
    pub fn new(key: &[u8; 32]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    fn signed(by: &str, remote: &str, cert: &str) -> Vec<u8> {
        [by.as_bytes(), b"\n", remote.as_bytes(), b"\n", cert.as_bytes()].concat()
    }

    /// Replaces any forwarding headers in `headers` with ones saying `by`
    /// forwards a request from `f`.
    pub fn stamp(&self, headers: &mut HeaderMap, f: &Forwarded) {
        strip(headers);
        let remote = f.remote.to_string();
        let cert = f.cert_fp.clone().unwrap_or_default();
        let mac = hmac::sign(&self.key, &Self::signed(&f.by, &remote, &cert));
        let values = [
            (BY, f.by.clone()),
            (FOR, remote),
            (CERT, cert),
            (MAC, fleet_proto::transport::hex(mac.as_ref())),
        ];
        for (name, value) in values {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }

    /// The client a follower vouches for in `headers`: `None` when the
    /// request was not forwarded.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<Forwarded>, Refusal> {
        if [BY, FOR, CERT, MAC].iter().all(|h| !headers.contains_key(*h)) {
            return Ok(None);
        }
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(Refusal::Malformed)
        };
        let (by, remote, cert, mac) = (text(BY)?, text(FOR)?, text(CERT)?, text(MAC)?);
        let mac = fleet_proto::transport::unhex(mac).ok_or(Refusal::Malformed)?;
        hmac::verify(&self.key, &Self::signed(by, remote, cert), &mac).map_err(|_| Refusal::Forged)?;
        Ok(Some(Forwarded {
            by: by.to_string(),
            remote: remote.parse().map_err(|_| Refusal::Malformed)?,
            cert_fp: (!cert.is_empty()).then(|| cert.to_string()),
        }))
    }
}

/// Removes the forwarding headers (a client cannot send its own).
fn strip(headers: &mut HeaderMap) {
    for name in [BY, FOR, CERT, MAC] {
        headers.remove(name);
    }
}

/// The serving controller's side: a request a follower forwarded is taken
/// as coming from the client the follower vouches for (its address and
/// certificate replace the follower's connection's in [`PeerInfo`]).
/// Headers that do not verify are dropped and the request stays the
/// follower's own (no certificate: it is refused where one is needed).
#[derive(Clone)]
pub struct ForwardedLayer(pub Arc<Signer>);

impl<S> Layer<S> for ForwardedLayer {
    type Service = ForwardedService<S>;
    fn layer(&self, inner: S) -> ForwardedService<S> {
        ForwardedService {
            inner,
            signer: self.0.clone(),
        }
    }
}

/// The service [`ForwardedLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct ForwardedService<S> {
    inner: S,
    signer: Arc<Signer>,
}

impl<S, B> Service<http::Request<B>> for ForwardedService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        match self.signer.check(req.headers()) {
            Ok(None) => {}
            Ok(Some(f)) => {
                if let Some(peer) = req.extensions_mut().get_mut::<PeerInfo>() {
                    peer.remote = f.remote;
                    peer.cert_fp = f.cert_fp;
                }
            }
            Err(refusal) => {
                let from = req.extensions().get::<PeerInfo>().map(|p| p.remote.to_string());
                tracing::warn!(
                    from = from.as_deref().unwrap_or("?"),
                    path = %req.uri().path(),
                    reason = %refusal,
                    "ignored a request's forwarding headers: it is answered as the sender's own"
                );
            }
        }
        strip(req.headers_mut());
        self.inner.call(req)
    }
}

/// What a follower needs to forward.
pub struct Following {
    /// Which controller serves now (see [`watch_leader`]).
    pub leader: watch::Receiver<Leader>,
    /// Trusts the fleet's CA, for dialing the serving controller.
    pub tls: Arc<rustls::ClientConfig>,
    /// Signs what it forwards.
    pub signer: Arc<Signer>,
    /// This controller's advertised address.
    pub me: String,
    /// What it forwarded (the follower's `/metrics`).
    pub counts: Arc<Counts>,
    /// Asks [`watch_leader`] to read who serves now, not at its next look.
    pub look_now: Arc<tokio::sync::Notify>,
    /// What it answers itself: requests whose path starts with `.0` (the
    /// peers' artifact copies, which the serving controller may lack).
    pub local: Option<(&'static str, Local)>,
}

/// A service a follower answers with itself.
pub type Local = tower::util::BoxCloneSyncService<
    http::Request<hyper::body::Incoming>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// A follower's figures.
#[derive(Debug, Default)]
pub struct Counts {
    /// Client connections open now.
    pub connections: std::sync::atomic::AtomicU64,
    /// Requests forwarded since it started.
    pub requests: std::sync::atomic::AtomicU64,
}

impl Counts {
    /// The OpenMetrics lines of these figures.
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "# HELP fleet_controller_forwarded_connections Client connections this follower holds and forwards.\n\
             # TYPE fleet_controller_forwarded_connections gauge\n\
             fleet_controller_forwarded_connections {}\n\
             # HELP fleet_controller_forwarded_requests Requests this follower forwarded to the serving controller.\n\
             # TYPE fleet_controller_forwarded_requests counter\n\
             fleet_controller_forwarded_requests_total {}\n",
            self.connections.load(Relaxed),
            self.requests.load(Relaxed)
        )
    }
}

/// Counts a connection open while it lives.
struct Open(Arc<Counts>);
impl Open {
    fn new(counts: &Arc<Counts>) -> Open {
        counts.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open(counts.clone())
    }
}
impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Who a follower forwards to: the address of the controller serving the
/// fleet (`None`: none does now), or why it cannot tell (etcd does not
/// answer, and it never read who serves).
pub type Leader = Result<Option<String>, String>;

/// Keeps `tx` up to date with the address of the controller serving the
/// fleet, read from etcd every [`LEADER_LOOK`], until `stop`. When etcd
/// does not answer, the last address read stays (the controller there
/// may well still serve).
pub async fn watch_leader(
    peers: Arc<Peers>,
    tx: watch::Sender<Leader>,
    look_now: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        let p = peers.clone();
        let read = match tokio::task::spawn_blocking(move || p.serving_addr()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the task reading it failed: {e}")),
        };
        tx.send_if_modified(|now| match (&read, &*now) {
            (Ok(leader), _) if Ok(leader) != now.as_ref() => {
                match leader {
                    Some(addr) => tracing::info!(serving = %addr, "forwarding to the controller that serves"),
                    None => tracing::warn!("no controller serves this fleet now; holding requests until one does"),
                }
                *now = Ok(leader.clone());
                true
            }
            (Ok(_), _) => false,
            (Err(e), Ok(Some(_))) => {
                tracing::warn!(error = %e, "cannot read which controller serves; forwarding to the last one read");
                false
            }
            (Err(e), _) => {
                tracing::warn!(error = %e, "cannot read which controller serves; trying again");
                let changed = now.as_ref().err() != Some(e);
                *now = Err(e.clone());
                changed
            }
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LEADER_LOOK) => {}
            _ = look_now.notified() => {}
        }
    }
}

/// A follower's gRPC port: accepts connections as the serving controller
/// does (`listener::accept_loop`) and forwards their requests, until
/// `stop`; then closes every connection and the port.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: Arc<Connections>,
    following: Arc<Following>,
    stop: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Result<PeerConn, std::io::Error>>(256);
    let accepting = tokio::spawn(crate::listener::accept_loop(
        listener,
        acceptor,
        connections,
        tx,
        stop.clone(),
    ));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let conn = tokio::select! {
            _ = stop.cancelled() => break,
            c = rx.recv() => match c {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        conns.spawn(connection(conn, following.clone()));
    }
    conns.shutdown().await;
    let _ = accepting.await;
}

/// The upstream connection of one client connection: to the serving
/// controller at `.0`.
type Upstream = tokio::sync::Mutex<Option<(String, Sender)>>;

/// One client connection: HTTP/2, each request forwarded.
async fn connection(conn: PeerConn, following: Arc<Following>) {
    let info = conn.connect_info();
    let _open = Open::new(&following.counts);
    let upstream: Arc<Upstream> = Arc::default();
    let forwarding = {
        let info = info.clone();
        tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            forward(req, info.clone(), following.clone(), upstream.clone())
        })
    };
    // Counts each request on the connection while it runs, so the
    // connection's idle deadline does not close a live stream.
    let tracked = StreamTrackingLayer.layer(forwarding);
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info.clone());
        tracked.clone().oneshot(req)
    });
    let served = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
    if let Err(e) = served.await {
        tracing::debug!(error = %e, "a forwarded connection ended with an error");
    }
}

/// Forwards one request to the serving controller; its response comes
/// back as it is. Answers UNAVAILABLE (gRPC; 503 to a browser) when no
/// controller serves or the serving one cannot be reached.
async fn forward(
    req: http::Request<hyper::body::Incoming>,
    client: PeerInfo,
    following: Arc<Following>,
    upstream: Arc<Upstream>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    if let Some((prefix, local)) = &following.local {
        if req.uri().path().starts_with(prefix) {
            return local.clone().oneshot(req).await;
        }
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let (leader, mut sender) = match upstream_sender(&following, &upstream).await {
        Ok(up) => up,
        Err(why) => return Ok(unavailable(&why, grpc)),
    };
    following
        .counts
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut parts, body) = req.into_parts();
    following.signer.stamp(
        &mut parts.headers,
        &Forwarded {
            by: following.me.clone(),
            remote: client.remote,
            cert_fp: client.cert_fp.clone(),
        },
    );
    // The serving controller is the request's authority.
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match format!("https://{leader}{path}").parse() {
        Ok(uri) => parts.uri = uri,
        Err(_) => return Ok(unavailable(&format!("cannot forward {path} to {leader}"), grpc)),
    }
    let out = http::Request::from_parts(parts, tonic::body::Body::new(body));
    match sender.send_request(out).await {
        Ok(response) => Ok(response.map(tonic::body::Body::new)),
        Err(e) => {
            // Dial again at the next request.
            *upstream.lock().await = None;
            Ok(unavailable(
                &format!(
                    "this controller forwards to {leader}, which serves the fleet, and the request failed there: {e}"
                ),
                grpc,
            ))
        }
    }
}

/// Sends requests on one HTTP/2 connection to the serving controller.
type Sender = hyper::client::conn::http2::SendRequest<tonic::body::Body>;

/// Opens an HTTP/2 connection to the controller at `addr`.
async fn open(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<Sender, String> {
    let io = fleet_proto::transport::dial(addr, tls)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        // As a host's own: what the serving controller may send ahead of
        // the host's reading is held here, per forwarded stream.
        .initial_stream_window_size(fleet_proto::transport::RECEIVE_WINDOW)
        .initial_connection_window_size(2 * fleet_proto::transport::RECEIVE_WINDOW)
        .handshake(io)
        .await
        .map_err(|e| format!("HTTP/2 with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a connection to the serving controller ended");
        }
    });
    Ok(sender)
}

/// The connection to the serving controller for one client connection:
/// the one it has if it is open and still goes to the controller that
/// serves, else a new one. While none can be had (no controller serves,
/// or the one named cannot be reached: it died and its lock has not
/// expired yet), waits for who serves to change, looking again each
/// second, for up to [`HOLD`]: a request made during a failover is
/// answered by the next controller instead of failing.
async fn upstream_sender(following: &Following, upstream: &Upstream) -> Result<(String, Sender), String> {
    let deadline = tokio::time::Instant::now() + HOLD;
    let mut leader = following.leader.clone();
    let mut why = "no controller serves this fleet right now (the one serving is gone and none took over within \
                   15 s): check 'fleet-controller members', then try again"
        .to_string();
    loop {
        let serving = match leader.borrow_and_update().clone() {
            Ok(serving) => serving,
            Err(e) => {
                why = format!("this controller cannot read from etcd which controller serves the fleet: {e}");
                None
            }
        };
        if let Some(addr) = serving {
            let mut held = upstream.lock().await;
            if let Some((to, sender)) = held.as_mut() {
                if *to == addr && sender.ready().await.is_ok() {
                    return Ok((addr, sender.clone()));
                }
                // Closed (the controller died or stopped), or another serves.
                *held = None;
            }
            match open(&addr, following.tls.clone()).await {
                Ok(sender) => {
                    *held = Some((addr.clone(), sender.clone()));
                    return Ok((addr, sender));
                }
                Err(e) => {
                    why =
                        format!("this controller forwards to {addr}, which serves the fleet, and cannot reach it: {e}");
                    // It may be dead: who serves may have changed already.
                    following.look_now.notify_one();
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(why);
        }
        let wait = (deadline - now).min(LEADER_LOOK);
        if let Ok(Err(_)) = tokio::time::timeout(wait, leader.changed()).await {
            // The follower is stopping to serve: it closes its connections,
            // this request's with them, and the client dials again. An
            // answer now would be final (a browser's event stream given a
            // 503 is not dialed again), so it comes only once the
            // connection is gone, and ends this request's task (hyper runs
            // each stream on a task of its own).
            tokio::time::sleep(Duration::from_secs(5)).await;
            return Err(why);
        }
    }
}

/// UNAVAILABLE: as a gRPC status to a gRPC client, else 503 (a browser).
fn unavailable(why: &str, grpc: bool) -> http::Response<tonic::body::Body> {
    if grpc {
        return tonic::Status::unavailable(why).into_http();
    }
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        prost::bytes::Bytes::from(format!("{why}\n")),
    )));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(byte: u8) -> Signer {
        Signer::new(&[byte; 32])
    }

    fn from_host() -> Forwarded {
        Forwarded {
            by: "c2.example.com:7443".into(),
            remote: "10.0.0.7:51234".parse().expect("addr"),
            cert_fp: Some("sha256:ab12".into()),
        }
    }

    #[test]
    fn a_stamped_request_is_taken_as_the_clients_own() {
        let s = signer(1);
        let mut h = HeaderMap::new();
        s.stamp(&mut h, &from_host());
        assert_eq!(s.check(&h), Ok(Some(from_host())));
        // Without a certificate (enrollment, operators).
        let anonymous = Forwarded {
            cert_fp: None,
            ..from_host()
        };
        s.stamp(&mut h, &anonymous);
        assert_eq!(s.check(&h), Ok(Some(anonymous)));
    }

    #[test]
    fn a_request_not_forwarded_is_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("authorization", http::HeaderValue::from_static("Bearer x"));
        assert_eq!(signer(1).check(&h), Ok(None));
    }

    #[test]
    fn another_fleets_key_or_an_edited_header_is_refused() {
        let mut h = HeaderMap::new();
        signer(2).stamp(&mut h, &from_host());
        assert_eq!(signer(1).check(&h), Err(Refusal::Forged));

        let s = signer(1);
        s.stamp(&mut h, &from_host());
        // A client naming another host's certificate.
        h.insert(CERT, http::HeaderValue::from_static("sha256:ffff"));
        assert_eq!(s.check(&h), Err(Refusal::Forged));
        s.stamp(&mut h, &from_host());
        h.insert(FOR, http::HeaderValue::from_static("10.9.9.9:1"));
        assert_eq!(s.check(&h), Err(Refusal::Forged));
        // Only some of the headers.
        let mut partial = HeaderMap::new();
        partial.insert(CERT, http::HeaderValue::from_static("sha256:ab12"));
        assert_eq!(s.check(&partial), Err(Refusal::Malformed));
        s.stamp(&mut h, &from_host());
        h.insert(MAC, http::HeaderValue::from_static("zz"));
        assert_eq!(s.check(&h), Err(Refusal::Malformed));
    }

    #[test]
    fn stamping_replaces_what_the_client_sent() {
        let s = signer(1);
        let mut h = HeaderMap::new();
        h.insert(CERT, http::HeaderValue::from_static("sha256:forged"));
        h.insert(BY, http::HeaderValue::from_static("me"));
        s.stamp(&mut h, &from_host());
        assert_eq!(s.check(&h), Ok(Some(from_host())));
        assert_eq!(h.get_all(CERT).iter().count(), 1);
    }
}
