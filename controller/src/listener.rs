//! The TLS port's connections: accepting them and how long one may stay
//! without a request (how many are held is `connections`).
//!
//! Every accepted connection gets a `Slot` in [`Connections`] (counted per
//! source address and in total until the socket is closed) and one task that
//! runs the TLS handshake under a deadline, hands the connection to tonic,
//! and then watches it: a connection that has not started a request within
//! `first_request_timeout` of its handshake, or that has had no request in
//! flight for `idle_timeout`, is closed. Requests are counted by
//! [`StreamTrackingLayer`] around the gRPC router, so an agent's long-lived
//! stream (or a download, or a watch) keeps its connection busy.
//!
//! At a cap, the connection with no request in flight that has been idle
//! the longest makes room for the new one; only when every held connection
//! is busy is the new one refused. So idle connections, however many, never
//! lock out an operator or an agent: the newcomer is the last to be chosen.
//! The total cap is lowered at start to the open-file limit minus
//! `connections::FD_RESERVE`, so the process keeps descriptors for its store, artifact
//! reads and the metrics port; if `accept` still fails for lack of
//! descriptors, the oldest idle connection is closed and the loop backs off
//! instead of spinning, and the failure is logged at most once per
//! [`LOG_EVERY`] with a count of what was not logged.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConnectionLimits;
use crate::connections::{CloseReason, ConnState, Connections, Slot, StreamGuard};
use crate::tls::{PeerConn, PeerInfo};

/// At most one log line per this long for a repeated failure (accept
/// errors, connections refused at a cap).
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// First and longest pause after `accept` fails.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Allows one log line per period and counts the ones it held back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// Whether an `accept` error means the process or the system is out of
/// file descriptors (or socket memory): waiting helps, spinning does not.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Accepts connections until `shutdown`, admitting each through `conns` and
/// handing those that finish the TLS handshake to tonic through `to_tonic`.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: Arc<Connections>,
    to_tonic: mpsc::Sender<Result<PeerConn, std::io::Error>>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let mut accept_log = Throttle::new(LOG_EVERY);
    let mut refused_log = Throttle::new(LOG_EVERY);
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff = ACCEPT_BACKOFF.0;
                x
            }
            Err(e) => {
                conns.metrics.accept_errors.inc();
                let freed = out_of_descriptors(&e) && conns.evict_one_idle();
                if let Some(held_back) = accept_log.allow(Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        not_logged = held_back,
                        closed_an_idle_connection = freed,
                        pause_ms = backoff.as_millis() as u64,
                        "accept failed; pausing (raise LimitNOFILE if this is 'Too many open files')"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let slot = match conns.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                conns.closed(reason);
                if let Some(held_back) = refused_log.allow(Instant::now()) {
                    tracing::warn!(
                        %peer,
                        reason = reason.label(),
                        not_logged = held_back,
                        max_total = conns.max_total,
                        max_per_ip = conns.limits.max_per_ip,
                        "connection refused: every connection at the cap is busy"
                    );
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tasks.spawn(run_connection(
            tcp,
            peer,
            slot,
            acceptor.clone(),
            conns.clone(),
            to_tonic.clone(),
            shutdown.clone(),
        ));
    }
    tasks.close();
    // Every connection task ends on `shutdown`; this only makes it certain
    // none outlives the loop.
    tasks.wait().await;
}

/// One connection's life on the controller's side: handshake, hand-off, and
/// the first-request and idle deadlines.
async fn run_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    acceptor: TlsAcceptor,
    conns: Arc<Connections>,
    to_tonic: mpsc::Sender<Result<PeerConn, std::io::Error>>,
    shutdown: CancellationToken,
) {
    let conn = slot.conn().clone();
    let limits = &conns.limits;
    let tls = tokio::select! {
        _ = conn.close.cancelled() => return,
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                conns.closed(CloseReason::HandshakeTimeout);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let handshaken = Instant::now();
    let io = PeerConn::new(tls, peer, slot);
    tokio::select! {
        _ = conn.close.cancelled() => return,
        _ = shutdown.cancelled() => return,
        sent = to_tonic.send(Ok(io)) => if sent.is_err() { return },
    }
    if let Some(reason) = watch(&conn, limits, handshaken, &shutdown).await {
        conns.closed(reason);
        tracing::debug!(%peer, reason = reason.label(), "closing a connection with no request");
        conn.close.cancel();
    }
}

/// Waits until the connection must be closed for lack of requests (the
/// reason), or is gone or the controller stops (None).
async fn watch(
    conn: &ConnState,
    limits: &ConnectionLimits,
    handshaken: Instant,
    shutdown: &CancellationToken,
) -> Option<CloseReason> {
    loop {
        let changed = conn.changed.notified();
        if conn.streams() > 0 {
            tokio::select! {
                _ = conn.close.cancelled() => return None,
                _ = shutdown.cancelled() => return None,
                _ = changed => continue,
            }
        }
        let (deadline, reason) = if conn.requests.load(Ordering::SeqCst) == 0 {
            (
                handshaken + limits.first_request_timeout,
                CloseReason::FirstRequestTimeout,
            )
        } else {
            (conn.idle_since() + limits.idle_timeout, CloseReason::IdleTimeout)
        };
        tokio::select! {
            _ = conn.close.cancelled() => return None,
            _ = shutdown.cancelled() => return None,
            _ = changed => continue,
            _ = tokio::time::sleep_until(deadline) => {
                // A request may have started just now: look again.
                if conn.streams() == 0 && Instant::now() >= deadline {
                    return Some(reason);
                }
            }
        }
    }
}

/// A tower layer that counts each connection's requests in flight, from the
/// request's arrival until its response body is dropped (for a stream: until
/// it ends), so the idle deadline never closes a busy connection.
#[derive(Clone, Copy, Default)]
pub struct StreamTrackingLayer;

impl<S> tower::Layer<S> for StreamTrackingLayer {
    type Service = StreamTracking<S>;
    fn layer(&self, inner: S) -> StreamTracking<S> {
        StreamTracking { inner }
    }
}

/// The service [`StreamTrackingLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct StreamTracking<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for StreamTracking<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<Tracked<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req.extensions().get::<PeerInfo>().map(|p| p.conn.begin());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| Tracked { inner, _guard: guard }))
        })
    }
}

/// A response body that keeps its request counted until it is dropped.
pub struct Tracked<B> {
    inner: B,
    _guard: Option<StreamGuard>,
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::connections::tests::limits;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_applies_the_first_request_then_the_idle_deadline() {
        let conn = Arc::new(ConnState::new(1, ip(1)));
        let limits = limits(10, 10);
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        assert_eq!(
            watch(&conn, &limits, start, &shutdown).await,
            Some(CloseReason::FirstRequestTimeout)
        );
        assert_eq!(start.elapsed(), limits.first_request_timeout);

        let conn = Arc::new(ConnState::new(2, ip(1)));
        let busy = conn.begin();
        let watcher = {
            let (conn, limits, shutdown) = (conn.clone(), limits.clone(), shutdown.clone());
            tokio::spawn(async move { watch(&conn, &limits, Instant::now(), &shutdown).await })
        };
        // Busy far past both deadlines: never closed.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!watcher.is_finished());
        let idle_from = Instant::now();
        drop(busy);
        assert_eq!(watcher.await.expect("watcher"), Some(CloseReason::IdleTimeout));
        assert_eq!(idle_from.elapsed(), limits.idle_timeout);
    }

    #[test]
    fn throttle_logs_once_per_period_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(t.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), None);
    }
}
