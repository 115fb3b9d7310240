//! `fleet-controller serve`: the TLS listener, the gRPC services, the metrics
//! port, and graceful shutdown.
//!
//! Tasks: one accept loop (TCP accept, then one task per connection for the
//! TLS handshake and its deadlines: see `listener`), tonic's server (one task
//! per HTTP/2 connection), one session task per agent stream (see `stream`), the metrics
//! HTTP server, and the signal task that cancels the root token.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::agent_service_server::AgentServiceServer;
use fleet_proto::app_service_server::AppServiceServer;
use fleet_proto::audit_service_server::AuditServiceServer;
use fleet_proto::enrollment_server::EnrollmentServer;
use fleet_proto::event_service_server::EventServiceServer;
use fleet_proto::host_service_server::HostServiceServer;
use fleet_proto::notify_service_server::NotifyServiceServer;
use fleet_proto::now_ms;
use fleet_proto::operator_service_server::OperatorServiceServer;
use fleet_proto::release_service_server::ReleaseServiceServer;
use fleet_proto::rollout_service_server::RolloutServiceServer;
use fleet_proto::session_server::SessionServer;
use fleet_proto::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::authority::{Authority, Change, LoadError};
use crate::config::Config;
use crate::connections::Connections;
use crate::fleet::{Fleet, Settings};
use crate::init::MARKER;
use crate::listener::StreamTrackingLayer;
use crate::metrics::{Metrics, RpcMetricsLayer};
use crate::ops::{HostsService, OperatorGate, SessionService, TokensService};
use crate::ratelimit::Limiter;
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::tls::PeerConn;

/// How long shutdown waits for connections to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the final flush.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that stop `serve` from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data dir is missing or not one `init` made.
    #[error(
        "{0} is not a fleet-controller data dir (no {MARKER} in it); create one with \
         'fleet-controller init --data-dir DIR' and point data_dir at it"
    )]
    NotADataDir(String),
    /// A file of the data dir is missing or unreadable.
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    /// The store is missing, locked, damaged, or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A port could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: String,
        what: &'static str,
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// The server failed while running.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The audit log's forwarding cannot be set up.
    #[error("{0}")]
    Audit(String),
    /// Start-up failed in a way none of the above covers (a task panicked).
    #[error("start-up failed: {0}")]
    Startup(String),
}

impl ServeError {
    /// The exit status: 2 when only an operator can fix it (configuration,
    /// data dir, a missing or damaged store), so systemd does not restart
    /// (`RestartPreventExitStatus=2`); 1 when trying again may work (a port
    /// still held, a store locked by an instance that is stopping, I/O).
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::NotADataDir(_) | ServeError::Read { .. } | ServeError::Tls(_) | ServeError::Audit(_) => 2,
            ServeError::Store(StoreError::Missing { .. } | StoreError::Damaged { .. } | StoreError::Corrupt { .. }) => {
                2
            }
            ServeError::Store(_) | ServeError::Bind { .. } | ServeError::Server(_) | ServeError::Startup(_) => 1,
        }
    }
}

/// Removes what a killed push or an interrupted release removal left in the
/// artifact store, before anything is served or pushed (so no push is in
/// flight): unverified `.upload-*` files and artifacts no release names.
fn sweep_artifacts(artifacts: &crate::artifacts::Artifacts, store: &Store) -> Result<(), ServeError> {
    let named = store.artifact_digests()?;
    let sweep = artifacts
        .sweep(&named)
        .map_err(|e| ServeError::Startup(format!("cleaning the artifact store: {e}")))?;
    for name in &sweep.uploads {
        tracing::info!(file = %name, "removed the temp file of a push that never finished");
    }
    for sha256 in &sweep.orphans {
        tracing::info!(sha256 = %sha256, "removed an artifact no release names");
    }
    Ok(())
}

/// The address the fleet's other controllers reach this one at (shown by
/// `members`; followers forward to it and copy artifacts from it): the listen address when
/// the server certificate names it; else the certificate's first name that
/// is not loopback, with the listen port; else `listen` (or this host's
/// name when it listens on every address).
fn advertised(listen: std::net::SocketAddr, sans: &[String], host: &str) -> String {
    let port = listen.port();
    let with_port = |name: &str| match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{name}:{port}"),
    };
    // The other controllers check our certificate against the name they
    // dial: a name in it, and one they can reach (not loopback) if any.
    if !listen.ip().is_unspecified() && sans.iter().any(|s| s.parse() == Ok(listen.ip())) {
        return listen.to_string();
    }
    let loopback = |s: &str| s == "localhost" || s.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if let Some(name) = sans.iter().find(|s| !loopback(s)) {
        return with_port(name);
    }
    if listen.ip().is_unspecified() {
        with_port(host)
    } else {
        listen.to_string()
    }
}

/// Waits for `opening`; if it takes longer than a moment (a follower
/// controller waiting for the serving lock), tells systemd the service has
/// started and pings its watchdog until it ends.
async fn standing_by<T>(mut opening: tokio::task::JoinHandle<T>) -> Result<T, tokio::task::JoinError> {
    let notifier = crate::watchdog::notifier();
    let period = notifier
        .as_ref()
        .and_then(fleet_proto::notify::Notifier::period)
        .map_or(Duration::from_secs(5), |p| p / 2);
    let mut ready = false;
    loop {
        tokio::select! {
            done = &mut opening => return done,
            _ = tokio::time::sleep(period) => {
                if let Some(n) = &notifier {
                    if !ready {
                        let _ = n.ready();
                        ready = true;
                    }
                    let _ = n.alive();
                }
            }
        }
    }
}

/// Binds `addr` for `what` ("gRPC", "metrics"), the error naming both.
async fn bind(addr: std::net::SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind {
        addr: addr.to_string(),
        what,
        source,
    })
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    // Every agent stream is a socket: systemd's default soft limit (1024) is
    // far below what one controller holds.
    match crate::watchdog::raise_nofile_limit() {
        Ok((before, after)) => tracing::info!(before, after, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit; streams beyond it are refused"),
    }
    let dir = &config.data_dir;
    if !dir.join(MARKER).is_file() {
        return Err(ServeError::NotADataDir(dir.display().to_string()));
    }
    let authority = Arc::new(Authority::open(dir, now_ms()).map_err(|e| match e {
        LoadError::Read { path, detail } => ServeError::Read { path, detail },
        e => ServeError::Tls(e.to_string()),
    })?);
    let macs = crate::secrets::Macs::load_or_migrate(dir, &authority.current().signing)
        .map_err(|e| ServeError::Startup(format!("{}: {e}", dir.join(crate::secrets::FILE).display())))?;
    let (backend, data_dir) = (config.store.clone(), dir.clone());
    let host = crate::init::hostname().unwrap_or_else(|| "unknown".into());
    let ca_der = fleet_proto::transport::certs_from_pem("CA", &authority.current().signing.cert_pem)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    // The names of the certificate it presents (already loaded).
    let sans = authority
        .current()
        .server
        .cert
        .first()
        .and_then(|der| crate::ca::sans_of_der(der).ok())
        .unwrap_or_default();
    let me = crate::store::Me {
        addr: advertised(config.listen, &sans, &host),
        host,
        ca_fingerprint: fleet_proto::transport::fingerprint(&ca_der[0]),
    };
    // The key of grants between the fleet's controllers (see `peers`).
    let peer_grants = macs.derive(crate::peers::PEER_GRANTS);
    // Signs what a follower forwards; the serving controller checks it.
    let forward_signer = Arc::new(crate::forward::Signer::new(&macs.derive(crate::forward::FORWARD_KEY)));
    // How the fleet's controllers dial each other: trusting its CAs.
    let bundle = fleet_proto::transport::certs_from_pem("ca.pem", &authority.current().bundle_pem)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let peer_tls = fleet_proto::transport::client_config(fleet_proto::transport::Trust::Cas(bundle), None)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let joined = |e: tokio::task::JoinError| ServeError::Startup(format!("the task opening the store failed: {e}"));
    let store = match &config.store {
        // sled's recovery reads the whole log: off the runtime.
        crate::store::Backend::Sled => {
            tokio::task::spawn_blocking(move || Store::open_to_serve(&backend, &data_dir, &me))
                .await
                .map_err(joined)??
        }
        // On etcd this controller follows while another one serves the
        // fleet: it forwards its clients' requests to that one and copies
        // its releases' artifacts; it tells systemd it started and keeps
        // the watchdog fed meanwhile.
        crate::store::Backend::Etcd(_) => {
            let standby = tokio::task::spawn_blocking(move || Store::stand_by(&backend, &data_dir, &me))
                .await
                .map_err(joined)??;
            let mirror = crate::peers::Mirror {
                peers: standby.peers(),
                artifacts: Arc::new(crate::artifacts::Artifacts::new(dir)),
                grants: crate::grants::Grants::new(&peer_grants),
                tls: peer_tls.clone(),
            };
            // Meanwhile it takes connections and forwards them to the
            // controller that serves (see `forward`).
            let (leader_tx, leader) = tokio::sync::watch::channel(Ok(None));
            let counts = Arc::new(crate::forward::Counts::default());
            let look_now = Arc::new(tokio::sync::Notify::new());
            let follower_tls = crate::tls::server_config(
                authority.clone(),
                standby.peers() as Arc<dyn crate::tls::Allowlist>,
                Arc::new(Metrics::new()),
            )
            .map_err(|e| ServeError::Tls(e.to_string()))?;
            let following = Arc::new(crate::forward::Following {
                leader: leader.clone(),
                tls: mirror.tls.clone(),
                signer: forward_signer.clone(),
                me: standby.peers().addr().to_string(),
                counts: counts.clone(),
                look_now: look_now.clone(),
                local: Some((
                    "/fleet.v1.PeerService/",
                    tower::util::BoxCloneSyncService::new(fleet_proto::peer_service_server::PeerServiceServer::new(
                        crate::peers::PeerApi {
                            holder: crate::peers::Holder::Following {
                                peers: standby.peers(),
                                artifacts: mirror.artifacts.clone(),
                                metrics: Arc::new(Metrics::new()),
                            },
                            grants: crate::grants::Grants::new(&peer_grants),
                        },
                    )),
                )),
            });
            let listener = bind(config.listen, "gRPC").await?;
            let metrics_listener = bind(config.metrics_listen, "metrics").await?;
            let stop = CancellationToken::new();
            let watching = tokio::spawn(crate::forward::watch_leader(
                standby.peers(),
                leader_tx,
                look_now,
                stop.clone(),
            ));
            let forwarding = tokio::spawn(crate::forward::serve(
                listener,
                TlsAcceptor::from(follower_tls),
                Connections::new(config.connections.clone(), Arc::new(Metrics::new())),
                following,
                stop.clone(),
            ));
            let mirroring = tokio::spawn(crate::peers::mirror(mirror, stop.clone()));
            let probing = tokio::spawn(crate::metrics::serve_follower_http(
                metrics_listener,
                leader,
                move || counts.render(),
                stop.clone(),
            ));
            let store = standing_by(tokio::task::spawn_blocking(move || standby.serve()))
                .await
                .map_err(joined)?;
            // The artifacts and the ports are this controller's from now on.
            stop.cancel();
            let _ = mirroring.await;
            let _ = probing.await;
            let _ = forwarding.await;
            let _ = watching.await;
            store?
        }
    };

    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let tls = crate::tls::server_config(authority.clone(), Arc::new(store.clone()), metrics.clone())
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let grants = crate::grants::Grants::new(&macs.derive("fetch-grant-v1"));
    let recovery = Arc::new(crate::auth::Recovery::new(&macs.derive(crate::auth::RECOVERY_PURPOSE)));
    let audit = Arc::new(
        crate::audit::AuditLog::open(&store, &config.audit).map_err(|e| match e {
            crate::audit::OpenError::Store(e) => ServeError::Store(e),
            e => ServeError::Audit(e.to_string()),
        })?,
    );
    let events = Arc::new(crate::events::EventLog::open(&store, config.events_max_entries)?);
    let artifacts = crate::artifacts::Artifacts::new(dir);
    sweep_artifacts(&artifacts, &store)?;
    let auth_failures = Arc::new(Limiter::new(
        "limits.auth_failures_per_source",
        config.limits.auth_failures_per_source,
    ));
    let fleet = Arc::new(Fleet {
        audit: audit.clone(),
        events: events.clone(),
        store: store.clone(),
        artifacts,
        authority,
        grants,
        registry: Registry::new(metrics.clone()),
        metrics: metrics.clone(),
        settings: Settings {
            heartbeat_interval: config.heartbeat_interval,
            cert_ttl: config.cert_ttl,
            token_ttl: config.token_ttl,
            data_dir: config.data_dir.clone(),
            max_release_bytes: config.max_release_bytes,
            reconnect_grace: config.reconnect_grace,
            token_uses: config.limits.token_uses,
        },
        limits: crate::ratelimit::RateLimits {
            enroll_per_token: Limiter::new("limits.enroll_per_token", config.limits.enroll_per_token),
            enroll_per_source: Limiter::new("limits.enroll_per_source", config.limits.enroll_per_source),
            auth_failures: auth_failures.clone(),
            renewals: crate::ratelimit::RenewalGate::new(config.limits.renew_min_interval),
        },
        tasks: Default::default(),
        rollouts: crate::rollouts::Rollouts::open(&store, &store.hosts()?, events.clone())?,
        shutdown: shutdown.clone(),
        tracker: tokio_util::task::TaskTracker::new(),
    });

    let listener = bind(config.listen, "gRPC").await?;
    let metrics_listener = bind(config.metrics_listen, "metrics").await?;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        metrics = %metrics_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %dir.display(),
        hosts = store.host_count(),
        "fleet-controller serving"
    );

    let counted = store.clone();
    // Owned like every other task: both end on the shutdown token.
    fleet.tracker.spawn(crate::metrics::serve_http(
        metrics_listener,
        metrics.clone(),
        move || counted.host_count(),
        store.health(),
        shutdown.clone(),
    ));
    fleet.tracker.spawn(wait_for_signal(shutdown.clone()));
    fleet.tracker.spawn(follow_rotations(fleet.clone()));
    let notifiers = Arc::new(
        crate::notify::Notifiers::new(store.clone(), metrics.clone(), fleet.tracker.clone(), shutdown.clone())
            .map_err(|e| ServeError::Startup(format!("webhooks: {e}")))?,
    );
    notifiers.start(events.clone())?;

    let (conn_tx, conn_rx) = mpsc::channel::<Result<PeerConn, std::io::Error>>(256);
    let connections = Connections::new(config.connections.clone(), metrics.clone());
    let accepting = tokio::spawn(crate::listener::accept_loop(
        listener,
        TlsAcceptor::from(tls),
        connections,
        conn_tx,
        shutdown.clone(),
    ));

    // grpc.health.v1 (load balancers, probes) and server reflection
    // (grpcurl): open to anyone, see `access::PUBLIC_METHODS`.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    fleet
        .tracker
        .spawn(follow_store_health(health, store.health(), shutdown.clone()));
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(fleet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServeError::Startup(format!("gRPC reflection: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServeError::Startup(format!("gRPC reflection: {e}")))?;
    let authenticator = crate::auth::Authenticator {
        store: store.clone(),
        recovery: recovery.clone(),
        failures: fleet.limits.auth_failures.clone(),
    };
    let gate = OperatorGate {
        auth: authenticator.clone(),
    };
    // The audit layer is outside the gate, so refusals are recorded too.
    let router = tonic::transport::Server::builder()
        .layer(crate::forward::ForwardedLayer(forward_signer))
        .layer(StreamTrackingLayer)
        .layer(RpcMetricsLayer(metrics.clone()))
        .layer(crate::audit::AuditLayer(audit.clone()))
        .layer(gate)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(EnrollmentServer::new(crate::enroll::EnrollmentService(fleet.clone())))
        .add_service(AgentServiceServer::new(crate::stream::StreamService(fleet.clone())))
        .add_service(fleet_proto::peer_service_server::PeerServiceServer::new(
            crate::peers::PeerApi {
                holder: crate::peers::Holder::Serving(fleet.clone()),
                grants: crate::grants::Grants::new(&peer_grants),
            },
        ))
        .add_service(SessionServer::new(SessionService))
        .add_service(HostServiceServer::new(HostsService(fleet.clone())))
        .add_service(TokenServiceServer::new(TokensService(fleet.clone())))
        .add_service(AppServiceServer::new(crate::apps::AppsService(fleet.clone())))
        .add_service(AuditServiceServer::new(crate::audit::AuditLogService(audit)))
        .add_service(NotifyServiceServer::new(crate::notify::NotifyApi(notifiers)))
        .add_service(crate::dashboard::Dashboard::new(fleet.clone(), authenticator.clone()))
        .add_service(EventServiceServer::new(crate::events::EventsService {
            log: events,
            store: store.clone(),
            shutdown: shutdown.clone(),
            tracker: fleet.tracker.clone(),
        }))
        .add_service(ReleaseServiceServer::new(crate::releases::ReleasesService(
            fleet.clone(),
        )))
        .add_service(RolloutServiceServer::new(crate::rollouts::RolloutsService(
            fleet.clone(),
        )))
        .add_service(OperatorServiceServer::new(crate::operators::OperatorsService(
            fleet.clone(),
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let stop = shutdown.clone();
    let server = tokio::spawn(
        router.serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move { stop.cancelled().await }),
    );
    // On etcd it keeps copying artifacts it lacks from the controllers that
    // hold them (it may have taken over before copying the last push).
    if let Some(peers) = store.peers() {
        fleet.tracker.spawn(crate::peers::mirror(
            crate::peers::Mirror {
                peers,
                artifacts: Arc::new(crate::artifacts::Artifacts::new(dir)),
                grants: crate::grants::Grants::new(&peer_grants),
                tls: peer_tls,
            },
            shutdown.clone(),
        ));
    }
    // Rollouts a previous run left unfinished carry on from where they
    // were; the converger starts listening for hosts that connect.
    crate::rollouts::start(&fleet);
    // Serving: tell systemd, and from now on prove the store and the runtime work.
    let watchdog = tokio::spawn(crate::watchdog::run(
        crate::watchdog::notifier(),
        store.clone(),
        shutdown.clone(),
    ));

    // Losing etcd's serving lock (see store::etcd::lock) stops the
    // controller: its writes are refused from then on.
    let lost = tokio::select! {
        _ = shutdown.cancelled() => None,
        why = store.lock_lost() => {
            tracing::error!(reason = %why, "stopping");
            shutdown.cancel();
            Some(why)
        }
    };
    tracing::info!("shutting down: closing agent streams");
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!("connections did not drain within 10s; exiting anyway"),
    }
    if accepting.await.is_err() {
        tracing::warn!("the accept loop failed");
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, crate::rollouts::stopped(&fleet))
        .await
        .is_err()
    {
        tracing::warn!("rollout engines did not stop within 10s; exiting anyway (they resume at the next start)");
    }
    // Bounded: a hung disk must not keep a stopping controller alive until
    // systemd's SIGKILL (sled replays its log on the next start).
    match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, store.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "final store flush failed"),
        Err(_) => tracing::error!(timeout = ?FINAL_FLUSH_TIMEOUT, "final store flush did not finish; exiting anyway"),
    }
    let _ = watchdog.await;
    if let Some(why) = lost {
        return Err(ServeError::Store(StoreError::Etcd {
            name: "etcd".into(),
            detail: why,
        }));
    }
    store.release_lock().await;
    tracing::info!("fleet-controller stopped");
    Ok(())
}

/// Keeps `grpc.health.v1`'s answer for the whole server ("") in step with
/// the store, as `/healthz` is: NOT_SERVING while it takes no durable
/// writes, and from the start of a shutdown.
async fn follow_store_health(
    reporter: tonic_health::server::HealthReporter,
    store: Arc<crate::store::Health>,
    shutdown: CancellationToken,
) {
    use tonic_health::ServingStatus;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
            _ = tick.tick() => {}
        }
        let now = store.problem().is_none();
        if now != serving {
            serving = now;
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
        }
    }
}

/// How often the data dir is looked at for a CA rotation to take up.
const ROTATION_LOOK: Duration = Duration::from_secs(1);

/// Takes up CA rotations (`fleet-controller ca rotate`) while serving: when
/// one begins, every connected agent is asked to renew onto the new CA; at
/// the end of its overlap the old CA is dropped. Live connections stay.
async fn follow_rotations(fleet: Arc<Fleet>) {
    let mut tick = tokio::time::interval(ROTATION_LOOK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = fleet.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let authority = fleet.authority.clone();
        let change = match tokio::task::spawn_blocking(move || authority.refresh(now_ms())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot take up the CA rotation; the CA in force stays");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the CA rotation check failed");
                continue;
            }
        };
        match change {
            Change::None => {}
            Change::Began(plan) => {
                let hosts = fleet.registry.hosts();
                tracing::info!(
                    ca = %plan.next_fingerprint,
                    replaces = %plan.previous_fingerprint,
                    until = %crate::store::utc(plan.ends_at_ms),
                    agents = hosts.len(),
                    "CA rotation begun: agents renew onto the new CA"
                );
                for host in hosts {
                    crate::stream::ask_to_renew(&fleet, &host, &plan);
                }
            }
            Change::Finished(plan) => {
                tracing::info!(ca = %plan.next_fingerprint, retired = %plan.previous_fingerprint, "CA rotation finished: the old CA is no longer trusted");
            }
        }
    }
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop the controller with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::advertised;

    fn sans(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_address_others_dial_is_a_name_in_the_certificate() {
        let any = "0.0.0.0:7443".parse().expect("addr");
        // init's default names: localhost, 127.0.0.1, the hostname.
        assert_eq!(
            advertised(any, &sans(&["localhost", "127.0.0.1", "ip-10-0-0-5"]), "ip-10-0-0-5"),
            "ip-10-0-0-5:7443"
        );
        assert_eq!(
            advertised(any, &sans(&["c2.example.com"]), "ip-10-0-0-5"),
            "c2.example.com:7443"
        );
        assert_eq!(advertised(any, &sans(&["localhost", "fd00::5"]), "h"), "[fd00::5]:7443");
        assert_eq!(advertised(any, &sans(&["localhost"]), "h"), "h:7443");
        let lo = "127.0.0.1:9000".parse().expect("addr");
        assert_eq!(
            advertised(lo, &sans(&["127.0.0.1", "localhost"]), "h"),
            "127.0.0.1:9000"
        );
        let specific = "10.0.0.5:7443".parse().expect("addr");
        assert_eq!(
            advertised(specific, &sans(&["c2.example.com"]), "h"),
            "c2.example.com:7443"
        );
        assert_eq!(
            advertised(specific, &sans(&["c2.example.com", "10.0.0.5"]), "h"),
            "10.0.0.5:7443"
        );
        assert_eq!(advertised(specific, &sans(&[]), "h"), "10.0.0.5:7443");
    }
}
