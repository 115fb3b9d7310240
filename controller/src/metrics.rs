//! Prometheus metrics, and the loopback HTTP server for `/metrics` and `/healthz`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::Health;

/// Label sets of metric families.
type Labels = Vec<(String, String)>;

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// Streams open right now.
    pub agents_connected: Gauge,
    /// Enrolled hosts (refreshed on scrape).
    pub hosts_enrolled: Gauge,
    /// Enrollment attempts by result ("ok" or the refusal kind).
    pub enrollments: Family<Vec<(String, String)>, Counter>,
    /// Certificate renewals.
    pub renewals: Counter<u64, AtomicU64>,
    /// gRPC requests by method and status code at response head.
    pub rpc_requests: Family<Vec<(String, String)>, Counter>,
    /// gRPC handling latency by method (to response head; for streams, the setup).
    pub rpc_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// TLS handshakes refused, by reason.
    pub tls_refused: Family<Vec<(String, String)>, Counter>,
    /// Rollouts ended, by kind (rollout, rollback, converge) and final state.
    pub rollouts_ended: Family<Labels, Counter>,
    /// Rollouts started, by kind.
    pub rollouts_started: Family<Labels, Counter>,
    /// Enrolled hosts by status (connected, disconnected), set on scrape.
    hosts: Family<Labels, Gauge>,
    /// How long each phase of a deploy or rollback took on hosts, by phase.
    pub phase_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// How long after a host sampled a heartbeat the controller took it in.
    pub heartbeat_delay_seconds: Histogram,
    /// The process's own figures (`process_*`), set on scrape.
    process: Process,
    /// Hosts put into convergence runs.
    pub hosts_converging: Counter<u64, AtomicU64>,
    /// Deploy and rollback tasks ended on hosts (direct and in rollouts),
    /// by outcome (succeeded, reverted, failed) and failure cause.
    pub host_tasks_ended: Family<Labels, Counter>,
    /// Webhook deliveries, by webhook and result (delivered, retried,
    /// failed, dropped).
    pub notifications: Family<Labels, Counter>,
    /// Connections held on the TLS port (accepted and not yet closed).
    pub connections_open: Gauge,
    /// Connections the controller closed or refused, by reason (see
    /// `connections::CloseReason`).
    pub connections_closed: Family<Vec<(String, String)>, Counter>,
    /// `accept` failures on the TLS port (e.g. out of file descriptors).
    pub accept_errors: Counter<u64, AtomicU64>,
    /// `Db::flush` calls of the store's flusher (copied from it on scrape).
    store_flushes: Counter<u64, AtomicU64>,
    /// Durable-write requests answered; over `store_flushes`, the group-commit factor.
    store_flush_requests: Counter<u64, AtomicU64>,
    /// Flushes that failed.
    store_flush_failures: Counter<u64, AtomicU64>,
    /// 1 while the store takes durable writes, else 0 (as `/healthz`).
    store_healthy: Gauge,
    /// Downloads refused because the stored artifact no longer matches its
    /// release's digest or size.
    pub artifacts_corrupt: Counter<u64, AtomicU64>,
}

/// The standard `process_*` metrics.
#[derive(Default)]
struct Process {
    resident: Gauge,
    virtual_bytes: Gauge,
    cpu: Counter<f64, AtomicU64>,
    threads: Gauge,
    start: Gauge<f64, AtomicU64>,
    open_fds: Gauge,
    max_fds: Gauge,
}

impl Process {
    fn register(&self, r: &mut Registry) {
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.resident.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            self.virtual_bytes.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            self.cpu.clone(),
        );
        r.register(
            "process_threads",
            "Number of OS threads in the process",
            self.threads.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            self.start.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            self.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            self.max_fds.clone(),
        );
    }

    fn observe(&self) {
        let Some(f) = crate::process_stats::read() else {
            return;
        };
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.resident.set(clamp(f.resident_bytes));
        self.virtual_bytes.set(clamp(f.virtual_bytes));
        // A counter only goes up: add what was used since the last scrape.
        let before = self.cpu.get();
        if f.cpu_seconds > before {
            self.cpu.inc_by(f.cpu_seconds - before);
        }
        self.threads.set(clamp(f.threads));
        self.start.set(f.start_time_seconds);
        self.open_fds.set(clamp(f.open_fds));
        self.max_fds.set(clamp(f.max_fds));
    }
}

/// Buckets of deploy phases: from a fast swap (10 ms) to a slow hook or
/// download (10 minutes).
fn phase_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let process = Process::default();
        process.register(&mut root);
        let registry = root.sub_registry_with_prefix("fleet");
        let agents_connected = Gauge::default();
        registry.register(
            "agents_connected",
            "Agent streams open right now",
            agents_connected.clone(),
        );
        let hosts_enrolled = Gauge::default();
        registry.register("hosts_enrolled", "Hosts in the store", hosts_enrolled.clone());
        let enrollments = Family::default();
        registry.register("enrollments", "Enrollment attempts by result", enrollments.clone());
        let renewals = Counter::default();
        registry.register("certificate_renewals", "Agent certificates renewed", renewals.clone());
        let rpc_requests = Family::default();
        registry.register(
            "rpc_requests",
            "gRPC requests by method and status code",
            rpc_requests.clone(),
        );
        let rpc_seconds = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "rpc_duration_seconds",
            "gRPC handling latency by method",
            rpc_seconds.clone(),
        );
        let tls_refused = Family::default();
        registry.register("tls_refused", "TLS handshakes refused, by reason", tls_refused.clone());
        let rollouts_ended = Family::default();
        registry.register(
            "rollouts_ended",
            "Rollouts ended, by kind and final state",
            rollouts_ended.clone(),
        );
        let rollouts_started = Family::default();
        registry.register(
            "rollouts_started",
            "Rollouts started, by kind (rollout, rollback, converge)",
            rollouts_started.clone(),
        );
        let hosts = Family::default();
        registry.register(
            "hosts",
            "Enrolled hosts by status (connected, disconnected)",
            hosts.clone(),
        );
        let phase_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(phase_histogram);
        registry.register(
            "deploy_phase_duration_seconds",
            "How long each phase of deploy and rollback tasks took on hosts (fetch, unpack, restart, health, ...)",
            phase_seconds.clone(),
        );
        let heartbeat_delay_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "heartbeat_delay_seconds",
            "How long after a host sampled a heartbeat the controller took it in (the host's clock against \
             the controller's, so their skew is in it; a busy controller shows here first)",
            heartbeat_delay_seconds.clone(),
        );
        let notifications = Family::default();
        registry.register(
            "notifications",
            "Webhook deliveries, by webhook and result: delivered, retried (an attempt failed and another follows), \
             failed (given up after every retry), dropped (the webhook's queue was full)",
            notifications.clone(),
        );
        let host_tasks_ended = Family::default();
        registry.register(
            "host_tasks_ended",
            "Deploy and rollback tasks ended on hosts, by outcome (succeeded, reverted, failed) and failure cause",
            host_tasks_ended.clone(),
        );
        registry.register(
            "build",
            "The controller's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        let hosts_converging = Counter::default();
        registry.register(
            "convergence_hosts",
            "Hosts put into convergence runs (they ran something other than their desired release)",
            hosts_converging.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections held on the TLS port",
            connections_open.clone(),
        );
        let connections_closed = Family::default();
        registry.register(
            "connections_closed",
            "Connections the controller closed or refused, by reason",
            connections_closed.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "accept failures on the TLS port",
            accept_errors.clone(),
        );
        let store_flushes = Counter::default();
        registry.register(
            "store_flushes",
            "Flushes (write + fsync) of the store",
            store_flushes.clone(),
        );
        let store_flush_requests = Counter::default();
        registry.register(
            "store_flush_requests",
            "Durable-write requests answered by the store's flusher (many share one flush)",
            store_flush_requests.clone(),
        );
        let store_flush_failures = Counter::default();
        registry.register(
            "store_flush_failures",
            "Flushes of the store that failed",
            store_flush_failures.clone(),
        );
        let store_healthy = Gauge::default();
        registry.register(
            "store_healthy",
            "1 while the store takes durable writes, else 0",
            store_healthy.clone(),
        );
        let artifacts_corrupt = Counter::default();
        registry.register(
            "artifacts_corrupt",
            "Artifact downloads refused because the stored file did not match its release's digest or size",
            artifacts_corrupt.clone(),
        );
        Metrics {
            registry: root,
            rollouts_started,
            hosts,
            phase_seconds,
            heartbeat_delay_seconds,
            process,
            host_tasks_ended,
            notifications,
            artifacts_corrupt,
            rollouts_ended,
            hosts_converging,
            connections_open,
            connections_closed,
            accept_errors,
            agents_connected,
            hosts_enrolled,
            enrollments,
            renewals,
            rpc_requests,
            rpc_seconds,
            tls_refused,
            store_flushes,
            store_flush_requests,
            store_flush_failures,
            store_healthy,
        }
    }

    /// Copies the store's flush counters and health in, before a scrape.
    fn observe_store(&self, health: &Health) {
        let c = health.counts();
        self.store_flushes.inner().store(c.flushes, Ordering::Relaxed);
        self.store_flush_requests.inner().store(c.requests, Ordering::Relaxed);
        self.store_flush_failures.inner().store(c.failures, Ordering::Relaxed);
        self.store_healthy.set(i64::from(health.problem().is_none()));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Invariant: writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("String write");
        out
    }

    /// Counts a rollout that started.
    pub fn rollout_started(&self, kind: &str) {
        self.rollouts_started
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc();
    }

    /// Observes a host's report of a finished phase (not the task's end).
    pub fn phase_done(&self, p: &fleet_proto::TaskProgress) {
        if p.state() == fleet_proto::TaskState::Running || crate::tasks::is_final(p) || p.phase.is_empty() {
            return;
        }
        self.phase_seconds
            .get_or_create(&vec![("phase".into(), p.phase.clone())])
            .observe(p.duration_ms as f64 / 1000.0);
    }

    /// Sets what is read on scrape: hosts by status, the process's figures.
    fn observe_scrape(&self, enrolled: usize) {
        let connected = self.agents_connected.get().max(0);
        let enrolled = i64::try_from(enrolled).unwrap_or(i64::MAX);
        self.hosts_enrolled.set(enrolled);
        self.hosts
            .get_or_create(&vec![("status".into(), "connected".into())])
            .set(connected);
        self.hosts
            .get_or_create(&vec![("status".into(), "disconnected".into())])
            .set((enrolled - connected).max(0));
        self.process.observe();
    }

    /// Counts a rollout that ended.
    pub fn rollout_ended(&self, kind: &str, state: &str) {
        self.rollouts_ended
            .get_or_create(&vec![("kind".into(), kind.into()), ("state".into(), state.into())])
            .inc();
    }

    /// Counts a deploy or rollback task that ended on a host.
    pub fn host_task_ended(&self, p: &fleet_proto::TaskProgress) {
        let (outcome, cause) = match p.state() {
            fleet_proto::TaskState::Succeeded => ("succeeded", String::new()),
            _ => (
                if p.reverted { "reverted" } else { "failed" },
                p.cause()
                    .as_str_name()
                    .trim_start_matches("FAILURE_CAUSE_")
                    .to_ascii_lowercase(),
            ),
        };
        self.host_tasks_ended
            .get_or_create(&vec![("outcome".into(), outcome.into()), ("cause".into(), cause)])
            .inc();
    }

    /// Counts a webhook delivery's result.
    pub fn notification(&self, webhook: &str, result: &str) {
        self.notifications
            .get_or_create(&vec![
                ("webhook".into(), webhook.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    /// Counts hosts put into a convergence run.
    pub fn convergence_started(&self, hosts: u64) {
        self.hosts_converging.inc_by(hosts);
    }

    /// Counts an enrollment attempt.
    pub fn enrollment(&self, result: &str) {
        self.enrollments
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A tower layer that counts gRPC requests and times them.
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // The dashboard's pages are one label, not one per host or rollout.
        let method = if path.starts_with(crate::access::WEB_PREFIX) {
            "dashboard".to_string()
        } else {
            path.trim_start_matches("/fleet.v1.").to_string()
        };
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from(c)))
                    .unwrap_or_else(|| "Ok".into()),
                Err(_) => "TransportError".into(),
            };
            let labels = vec![("method".to_string(), method.clone()), ("code".to_string(), code)];
            metrics.rpc_requests.get_or_create(&labels).inc();
            metrics
                .rpc_seconds
                .get_or_create(&vec![("method".to_string(), method)])
                .observe(start.elapsed().as_secs_f64());
            res
        })
    }
}

/// The answer of `/healthz`: 200 "ok", or 503 with the reason while the
/// store cannot take durable writes.
fn healthz(store: &Health) -> (u16, String) {
    match store.problem() {
        None => (200, "ok\n".to_string()),
        Some(problem) => (503, format!("unhealthy: {problem}\n")),
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    hosts: impl Fn() -> usize + Send + Sync + 'static,
    store: Arc<Health>,
    shutdown: CancellationToken,
) {
    let respond = move |path: &str| match path {
        "/metrics" => {
            metrics.observe_scrape(hosts());
            metrics.observe_store(&store);
            (200, OPENMETRICS, metrics.render())
        }
        "/healthz" => {
            let (status, body) = healthz(&store);
            (status, "text/plain", body)
        }
        _ => (404, "text/plain", "not found: try /metrics or /healthz\n".to_string()),
    };
    serve_paths(listener, respond, shutdown).await
}

/// The metrics port of a follower (see `forward`): `/healthz` answers 200
/// naming the controller it forwards to, 503 while no controller serves
/// the fleet (it has nowhere to forward); `/metrics` has
/// `fleet_controller_follower 1` and the lines `figures` gives (what it
/// forwarded).
pub async fn serve_follower_http(
    listener: TcpListener,
    leader: tokio::sync::watch::Receiver<Result<Option<String>, String>>,
    figures: impl Fn() -> String + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let respond = move |path: &str| {
        match path {
        "/healthz" => match leader.borrow().clone() {
            Ok(Some(serving)) => (
                200,
                "text/plain",
                format!("ok: follower, forwarding to {serving}, which serves this fleet; this controller serves when it stops or dies\n"),
            ),
            Ok(None) => (
                503,
                "text/plain",
                "follower: no controller serves this fleet right now (another takes over within seconds)\n".to_string(),
            ),
            Err(e) => (
                503,
                "text/plain",
                format!("follower: cannot read from etcd which controller serves this fleet: {e}\n"),
            ),
        },
        "/metrics" => (
            200,
            OPENMETRICS,
            format!(
                "# HELP fleet_controller_follower Whether this controller forwards (1) to another that serves the fleet.\n\
                 # TYPE fleet_controller_follower gauge\nfleet_controller_follower 1\n{}# EOF\n",
                figures()
            ),
        ),
        _ => (404, "text/plain", "not found: try /metrics or /healthz\n".to_string()),
    }
    };
    serve_paths(listener, respond, shutdown).await
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers HTTP/1.1 GETs on `listener` with `respond(path)` (status,
/// content type, body) until `shutdown`.
async fn serve_paths(
    listener: TcpListener,
    respond: impl Fn(&str) -> (u16, &'static str, String) + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let respond = Arc::new(respond);
    // One task per connection, owned here: dropped (aborted) on shutdown.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    continue;
                }
            },
        };
        let respond = respond.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, ctype, body) = respond(req.uri().path());
                async move {
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", ctype)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}
