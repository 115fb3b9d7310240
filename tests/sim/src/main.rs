//! `fleet-sim`: many simulated agents in one process, against a real
//! controller, for the scale benchmarks (BENCHMARKS.md) and the end-to-end
//! test that keeps it honest (`tests/it/sim.rs`).
//!
//! Each simulated host does what a real agent does on the wire, with the
//! agent's own code where it matters: it enrolls with its own key and CSR
//! (`fleet_agent::identity::new_key_and_csr`) and a join token, dials the
//! controller over mTLS with the certificate it got (`fleet_proto::
//! transport`), says hello with its facts and inventory, sends heartbeats
//! with plausible metrics at the interval the controller asks for, answers
//! deploy and rollback tasks phase by phase (each phase takes `--phase-ms`;
//! no download or unpack), reports its inventory after each, and reconnects
//! with the agent's jittered backoff (`fleet_agent::backoff`) when its
//! stream ends. The controller has no shortcut for it.
//!
//! Connections are spread over loopback source addresses (127.0.0.1 to
//! 127.0.0.N, `--sources`), so tens of thousands fit in the ephemeral port
//! range; the open-file limit is raised to the hard limit.
//!
//! It prints one line when every host has enrolled, one when every host is
//! connected, and a status line every `--report-every`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fleet_agent::identity::{HostRecord, Identity};
use fleet_agent::rotation::Rotation;
use fleet_proto::agent_message::Body as FromAgent;
use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::controller_message::Body as ToAgent;
use fleet_proto::enrollment_client::EnrollmentClient;
use fleet_proto::phase::Phase;
use fleet_proto::transport::{self, Trust};
use fleet_proto::{
    task, AgentMessage, AppInventory, EnrollRequest, FailureCause, FetchArtifactRequest, Heartbeat, Hello, HostFacts,
    HostMetrics, Inventory, Task, TaskProgress, TaskState, UnitState,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "fleet-sim", about = "Many simulated fleet agents against a real controller")]
struct Args {
    /// The controller's address (host:port); several controllers of one
    /// fleet separated by commas, dialled as the agent does (agent::rotation)
    #[arg(long)]
    controller: String,
    /// The controller CA's fingerprint (sha256:...), as agents pin it
    #[arg(long)]
    ca_fingerprint: String,
    /// A join token with enough uses for every host
    #[arg(long, env = "FLEET_SIM_TOKEN")]
    token: String,
    /// How many hosts
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Hostnames are PREFIX-00001, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Labels every host asks for (repeatable), e.g. role=sim
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The app the hosts run (reported in their inventory)
    #[arg(long, default_value = "demo")]
    app: String,
    /// How long each phase of a simulated deploy takes, ms
    #[arg(long, default_value_t = 20)]
    phase_ms: u64,
    /// Releases whose health check fails on some hosts (repeatable)
    #[arg(long = "fail-version", value_name = "V")]
    fail_versions: Vec<String>,
    /// Of those releases, every Nth host fails (host 1, N+1, 2N+1, ...)
    #[arg(long, default_value_t = 10)]
    fail_every: usize,
    /// Bytes of a simulated journal in a failed health check's report (a
    /// real agent adds the health check's output and the unit's last
    /// journal lines: a few KB)
    #[arg(long, default_value_t = 0)]
    fail_detail_bytes: usize,
    /// Enrollments at once
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    /// Loopback source addresses the connections are spread over
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// A status line this often
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    report_every: Duration,
    /// Download each deploy's artifact from the controller in the fetch
    /// phase, as a real agent does (kept in memory only long enough to
    /// check its sha256 and size; nothing is written)
    #[arg(long)]
    fetch: bool,
    /// Append a line "EPOCH_MS TASK_ID" to this file for each task a host
    /// receives (for a benchmark of the fan-out)
    #[arg(long, value_name = "FILE")]
    task_log: Option<std::path::PathBuf>,
    /// Exit once every host has connected (for a benchmark of the start)
    #[arg(long)]
    exit_when_connected: bool,
}

/// What one simulated host runs.
#[derive(Debug, Default, Clone)]
struct Running {
    current: String,
    previous: String,
    releases: Vec<String>,
}

/// Counters every host updates.
#[derive(Default)]
struct Counts {
    enrolled: AtomicUsize,
    connected: AtomicUsize,
    heartbeats: AtomicU64,
    tasks: AtomicU64,
    reconnects: AtomicU64,
    /// Where each task's arrival is noted (`--task-log`).
    task_log: Option<Mutex<std::fs::File>>,
}

impl Counts {
    /// Notes a task's arrival: counted, and logged when asked.
    fn task_arrived(&self, task_id: &str) {
        self.tasks.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &self.task_log {
            use std::io::Write;
            let line = format!("{} {task_id}\n", fleet_proto::now_ms());
            // One write per line, so that lines never interleave.
            let _ = lock(log).write_all(line.as_bytes());
        }
    }
}

struct Host {
    index: usize,
    hostname: String,
    identity: Identity,
    source: IpAddr,
    running: Mutex<Running>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.sources == 0 {
        bail!("--sources must be at least 1");
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).context("reading the open-file limit")?;
    if soft < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).context("raising the open-file limit")?;
    }
    let need = args.agents as u64 * 2 + 256;
    if hard < need {
        eprintln!(
            "fleet-sim: the open-file limit is {hard}; {} hosts need about {need}",
            args.agents
        );
    }
    let task_log = match &args.task_log {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening --task-log {}", path.display()))?,
        )),
        None => None,
    };
    let counts = Arc::new(Counts {
        task_log,
        ..Counts::default()
    });
    let started = Instant::now();

    // Enroll every host, `enroll_concurrency` at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(args.enroll_concurrency.max(1)));
    let mut enrolling = tokio::task::JoinSet::new();
    for index in 1..=args.agents {
        let (args, gate, counts) = (args.clone(), gate.clone(), counts.clone());
        enrolling.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let host = enroll(&args, index).await?;
            counts.enrolled.fetch_add(1, Ordering::Relaxed);
            Ok::<Host, anyhow::Error>(host)
        });
    }
    let mut hosts = Vec::with_capacity(args.agents);
    while let Some(joined) = enrolling.join_next().await {
        hosts.push(Arc::new(joined.context("an enrollment task")??));
    }
    println!(
        "enrolled {} hosts in {:.2}s",
        hosts.len(),
        started.elapsed().as_secs_f64()
    );

    let connecting = Instant::now();
    for host in &hosts {
        let (args, counts, host) = (args.clone(), counts.clone(), host.clone());
        tokio::spawn(async move { run_host(&args, &counts, &host).await });
    }
    let mut report = tokio::time::interval(args.report_every);
    report.tick().await;
    let mut all_connected = false;
    loop {
        tokio::select! {
            _ = report.tick() => {
                println!(
                    "status: connected {}/{} heartbeats {} tasks {} reconnects {} after {:.1}s",
                    counts.connected.load(Ordering::Relaxed),
                    hosts.len(),
                    counts.heartbeats.load(Ordering::Relaxed),
                    counts.tasks.load(Ordering::Relaxed),
                    counts.reconnects.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if !all_connected => {
                if counts.connected.load(Ordering::Relaxed) == hosts.len() {
                    all_connected = true;
                    println!(
                        "connected {} hosts in {:.2}s",
                        hosts.len(),
                        connecting.elapsed().as_secs_f64()
                    );
                    if args.exit_when_connected {
                        return Ok(());
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn facts(hostname: &str) -> HostFacts {
    HostFacts {
        hostname: hostname.to_string(),
        agent_version: format!("fleet-sim {}", env!("CARGO_PKG_VERSION")),
        os: "Ubuntu 24.04 LTS (simulated)".into(),
        kernel: "6.8.0-sim".into(),
        boot_id: format!("sim-{hostname}"),
        cpus: 2,
        memory_total_bytes: 4 << 30,
    }
}

/// Enrolls host `index`, retrying what a real agent retries.
async fn enroll(args: &Args, index: usize) -> Result<Host> {
    let hostname = format!("{}-{index:05}", args.prefix);
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(args.sources)) as u8));
    let labels = args
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label '{l}' is not KEY=VALUE"))
        })
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    let mut rotation = Rotation::new(transport::split_addresses(&args.controller)?, index);
    let mut backoff = rotation.backoff();
    loop {
        let (key, csr_der) = fleet_agent::identity::new_key_and_csr(&hostname)?;
        let tls = transport::client_config(Trust::PinnedFingerprint(args.ca_fingerprint.clone()), None)?;
        let attempt = async {
            let channel = transport::connect_from(rotation.current(), tls, Some(source)).await?;
            let response = EnrollmentClient::new(channel)
                .enroll(EnrollRequest {
                    token: args.token.clone(),
                    csr_der,
                    facts: Some(facts(&hostname)),
                    labels: labels.clone(),
                })
                .await?
                .into_inner();
            Ok::<_, anyhow::Error>(response)
        }
        .await;
        match attempt {
            Ok(r) => {
                return Ok(Host {
                    index,
                    hostname,
                    source,
                    identity: Identity {
                        host: HostRecord {
                            host_id: r.host_id,
                            not_after_ms: r.not_after_ms,
                            issued_at_ms: fleet_proto::now_ms(),
                            token_id: String::new(),
                        },
                        cert_pem: r.certificate_pem,
                        key_pem: key.serialize_pem(),
                        ca_pem: r.ca_pem,
                    },
                    running: Mutex::new(Running::default()),
                })
            }
            Err(e) => {
                // A refused token never works: stop. Rate limits and an
                // unreachable controller are waited out.
                if let Some(status) = e.downcast_ref::<tonic::Status>() {
                    if matches!(
                        status.code(),
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
                    ) {
                        bail!("{hostname}: enrollment refused: {}", status.message());
                    }
                }
                tokio::time::sleep(rotation.delay_after_failure(&mut backoff)).await;
            }
        }
    }
}

fn inventory(app: &str, running: &Running) -> Inventory {
    Inventory {
        apps: vec![AppInventory {
            app: app.to_string(),
            releases: running.releases.clone(),
            current: running.current.clone(),
            previous: running.previous.clone(),
            unit: Some(UnitState {
                name: format!("fleet-app-{app}.service"),
                active_state: "active".into(),
                sub_state: "running".into(),
                n_restarts: 0,
                ..Default::default()
            }),
            last_health: None,
        }],
        running_tasks: Vec::new(),
    }
}

fn metrics(index: usize) -> HostMetrics {
    let load = 0.2 + fastrand::f64() * 0.8;
    HostMetrics {
        load1: load,
        load5: load * 0.9,
        load15: load * 0.8,
        cpu_percent: 5.0 + fastrand::f64() * 30.0,
        memory_used_bytes: (1 << 30) + fastrand::u64(0..(1 << 29)),
        memory_total_bytes: 4 << 30,
        disk_free_bytes: 20 << 30,
        disk_total_bytes: 40 << 30,
        uptime_secs: 86_400 + index as u64,
        agent_rss_bytes: 8 << 20,
    }
}

fn message(body: FromAgent) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

/// Keeps host `h` connected: one stream at a time, reconnecting with the
/// agent's backoff when it ends.
async fn run_host(args: &Arc<Args>, counts: &Arc<Counts>, h: &Arc<Host>) {
    let addrs = transport::split_addresses(&args.controller).unwrap_or_else(|_| vec![args.controller.clone()]);
    let mut rotation = Rotation::new(addrs, h.index);
    let mut backoff = rotation.backoff();
    let mut first = true;
    loop {
        if !first {
            counts.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let was_connected = stream_once(args, counts, h, rotation.current()).await;
        if was_connected {
            counts.connected.fetch_sub(1, Ordering::Relaxed);
            backoff.reset();
            rotation.succeeded();
        }
        tokio::time::sleep(rotation.delay_after_failure(&mut backoff)).await;
    }
}

/// One stream: hello, then heartbeats and tasks until it ends. Whether it
/// was accepted.
async fn stream_once(args: &Arc<Args>, counts: &Arc<Counts>, h: &Arc<Host>, addr: &str) -> bool {
    let Ok(trust) = h.identity.trust() else { return false };
    let Ok(id) = h.identity.client_identity() else {
        return false;
    };
    let Ok(tls) = transport::client_config(trust, Some(id)) else {
        return false;
    };
    let Ok(channel) = transport::connect_from(addr, tls, Some(h.source)).await else {
        return false;
    };
    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    let hello = Hello {
        host_id: h.identity.host.host_id.clone(),
        facts: Some(facts(&h.hostname)),
        labels: Default::default(),
        inventory: Some(inventory(&args.app, &lock(&h.running))),
    };
    if tx.send(message(FromAgent::Hello(hello))).await.is_err() {
        return false;
    }
    let Ok(response) = AgentServiceClient::new(channel.clone())
        .stream(ReceiverStream::new(rx))
        .await
    else {
        return false;
    };
    let mut inbound = response.into_inner();
    let interval = match inbound.message().await {
        Ok(Some(m)) => match m.body {
            Some(ToAgent::Welcome(w)) => Duration::from_millis(w.heartbeat_interval_ms.max(100)),
            _ => return false,
        },
        _ => return false,
    };
    counts.connected.fetch_add(1, Ordering::Relaxed);
    // Heartbeats start at a random point of the interval, as hosts that
    // connected at different times would.
    let mut beat = tokio::time::interval_at(
        tokio::time::Instant::now() + interval.mul_f64(fastrand::f64()),
        interval,
    );
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let hb = Heartbeat { sampled_at_ms: fleet_proto::now_ms(), metrics: Some(metrics(h.index)) };
                if tx.send(message(FromAgent::Heartbeat(hb))).await.is_err() {
                    return true;
                }
                counts.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    if let Some(ToAgent::Task(t)) = m.body {
                        counts.task_arrived(&t.task_id);
                        let (args, h, tx, ch) = (args.clone(), h.clone(), tx.clone(), channel.clone());
                        tokio::spawn(async move { run_task(&args, &h, t, &tx, ch).await });
                    }
                }
                _ => return true,
            },
        }
    }
}

/// What a task does on this host, decided before it runs. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Go to `version` through these phases; fail at health when `fails`.
    Deploy { version: String, fails: bool },
    /// Move back to `version` (no download, no hooks).
    Rollback { version: String },
    /// Nothing to go back to.
    NoPrevious,
}

/// A deploy task's artifact, downloaded with the task's grant and checked
/// (its sha256 and size), then dropped.
async fn download(channel: Channel, t: &Task) -> Result<(), String> {
    let Some(task::Kind::Deploy(d)) = &t.kind else {
        return Ok(());
    };
    let release = d.release.clone().unwrap_or_default();
    let mut client = AgentServiceClient::new(channel).max_decoding_message_size(4 << 20);
    let mut chunks = client
        .fetch_artifact(FetchArtifactRequest {
            sha256: release.sha256.clone(),
            offset: 0,
            grant: t.fetch_grant.clone(),
        })
        .await
        .map_err(|s| format!("download refused: {}", s.message()))?
        .into_inner();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|s| format!("download broke at {size} bytes: {}", s.message()))?
    {
        digest.update(&chunk.data);
        size += chunk.data.len() as u64;
    }
    let sha256: String = digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if size != release.size || sha256 != release.sha256 {
        return Err(format!(
            "downloaded {size} bytes with sha256 {sha256}; the release is {} bytes with sha256 {}",
            release.size, release.sha256
        ));
    }
    Ok(())
}

/// A failed health check's report: `headline`, then about `journal` bytes
/// of simulated journal lines, as a real agent adds them.
fn failure_detail(headline: &str, app: &str, journal: usize) -> String {
    let mut detail = headline.to_string();
    if journal > 0 {
        detail.push_str(&format!("\n--- journal of fleet-app-{app}.service ---\n"));
        let mut n = 0;
        while detail.len() < journal {
            n += 1;
            detail.push_str(&format!(
                "2026-12-02T10:00:00+0000 sim {app}[4242]: simulated line {n}\n"
            ));
        }
    }
    detail
}

fn plan(t: &Task, running: &Running, index: usize, fail_versions: &[String], fail_every: usize) -> Option<Plan> {
    match t.kind.as_ref()? {
        task::Kind::Deploy(d) => {
            let version = d.release.as_ref()?.version.clone();
            let fails = fail_versions.contains(&version) && fail_every > 0 && (index - 1).is_multiple_of(fail_every);
            Some(Plan::Deploy { version, fails })
        }
        task::Kind::Rollback(r) => {
            let version = if r.to_version.is_empty() {
                running.previous.clone()
            } else {
                r.to_version.clone()
            };
            Some(if version.is_empty() {
                Plan::NoPrevious
            } else {
                Plan::Rollback { version }
            })
        }
    }
}

/// Runs a task: each phase reported as it starts and ends, then the end
/// and the inventory after it.
async fn run_task(args: &Args, h: &Host, t: Task, tx: &mpsc::Sender<AgentMessage>, channel: Channel) {
    let running = lock(&h.running).clone();
    let Some(plan) = plan(&t, &running, h.index, &args.fail_versions, args.fail_every) else {
        return;
    };
    let progress = |phase: Phase, state: TaskState, detail: String, duration_ms: u64| {
        let mut p = TaskProgress {
            task_id: t.task_id.clone(),
            phase: phase.as_str().to_string(),
            detail,
            duration_ms,
            ..Default::default()
        };
        p.set_state(state);
        message(FromAgent::TaskProgress(p))
    };
    let phases: &[Phase] = match &plan {
        Plan::Deploy { .. } => &[
            Phase::Fetch,
            Phase::Verify,
            Phase::Unpack,
            Phase::Swap,
            Phase::Restart,
            Phase::Settle,
            Phase::Health,
        ],
        Plan::Rollback { .. } => &[Phase::Swap, Phase::Restart, Phase::Settle],
        Plan::NoPrevious => &[],
    };
    for phase in phases {
        let _ = tx.send(progress(*phase, TaskState::Running, String::new(), 0)).await;
        if *phase == Phase::Fetch && args.fetch {
            let started = Instant::now();
            let fetched = download(channel.clone(), &t).await;
            let took = started.elapsed().as_millis() as u64;
            if let Err(why) = fetched {
                let _ = tx.send(progress(*phase, TaskState::Failed, why.clone(), took)).await;
                let mut end = TaskProgress {
                    task_id: t.task_id.clone(),
                    phase: Phase::Done.as_str().to_string(),
                    detail: why,
                    current: running.current.clone(),
                    ..Default::default()
                };
                end.set_state(TaskState::Failed);
                end.set_cause(FailureCause::Download);
                let _ = tx.send(message(FromAgent::TaskProgress(end))).await;
                return;
            }
            let _ = tx
                .send(progress(*phase, TaskState::Succeeded, String::new(), took))
                .await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(args.phase_ms)).await;
        let failing = matches!(&plan, Plan::Deploy { fails: true, .. }) && *phase == Phase::Health;
        let state = if failing {
            TaskState::Failed
        } else {
            TaskState::Succeeded
        };
        let detail = if failing {
            failure_detail("simulated health check failure", &args.app, args.fail_detail_bytes)
        } else {
            String::new()
        };
        let _ = tx.send(progress(*phase, state, detail, args.phase_ms)).await;
        if failing {
            break;
        }
    }
    let mut end = TaskProgress {
        task_id: t.task_id.clone(),
        phase: Phase::Done.as_str().to_string(),
        ..Default::default()
    };
    {
        let mut r = lock(&h.running);
        match &plan {
            Plan::Deploy { version, fails: false } => {
                if r.current != *version {
                    r.previous = std::mem::take(&mut r.current);
                    r.current = version.clone();
                }
                if !r.releases.contains(version) {
                    r.releases.push(version.clone());
                }
                end.set_state(TaskState::Succeeded);
                end.detail = format!("{} {version} is active and healthy (simulated)", args.app);
            }
            Plan::Deploy { version, fails: true } => {
                // The agent swaps back to what ran before.
                if !r.releases.contains(version) {
                    r.releases.push(version.clone());
                }
                end.set_state(TaskState::Failed);
                end.set_cause(FailureCause::Health);
                end.reverted = !r.current.is_empty();
                end.detail = failure_detail(
                    &format!("the health check of {version} failed (simulated)"),
                    &args.app,
                    args.fail_detail_bytes,
                );
            }
            Plan::Rollback { version } => {
                r.previous = std::mem::replace(&mut r.current, version.clone());
                end.set_state(TaskState::Succeeded);
                end.detail = format!("moved back to {version} (simulated)");
            }
            Plan::NoPrevious => {
                end.set_state(TaskState::Failed);
                end.set_cause(FailureCause::Invalid);
                end.detail = "no previous release on this host (simulated)".into();
            }
        }
        end.current = r.current.clone();
    }
    let inv = inventory(&args.app, &lock(&h.running));
    let _ = tx.send(message(FromAgent::Inventory(inv))).await;
    let _ = tx.send(message(FromAgent::TaskProgress(end))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{DeployTask, ReleaseRef, RollbackTask};

    fn deploy(version: &str) -> Task {
        Task {
            task_id: "t".into(),
            kind: Some(task::Kind::Deploy(DeployTask {
                app: "demo".into(),
                release: Some(ReleaseRef {
                    version: version.into(),
                    ..Default::default()
                }),
                spec: None,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn every_nth_host_fails_a_failing_release_and_rollbacks_go_to_the_previous() {
        let running = Running {
            current: "2".into(),
            previous: "1".into(),
            releases: vec!["1".into(), "2".into()],
        };
        let fail = ["3".to_string()];
        let fails: Vec<usize> = (1..=25)
            .filter(|i| {
                matches!(
                    plan(&deploy("3"), &running, *i, &fail, 10),
                    Some(Plan::Deploy { fails: true, .. })
                )
            })
            .collect();
        assert_eq!(fails, [1, 11, 21]);
        assert_eq!(
            plan(&deploy("2"), &running, 1, &fail, 10),
            Some(Plan::Deploy {
                version: "2".into(),
                fails: false
            })
        );
        let back = Task {
            kind: Some(task::Kind::Rollback(RollbackTask {
                app: "demo".into(),
                to_version: String::new(),
                spec: None,
            })),
            ..Default::default()
        };
        assert_eq!(
            plan(&back, &running, 1, &fail, 10),
            Some(Plan::Rollback { version: "1".into() })
        );
        assert_eq!(plan(&back, &Running::default(), 1, &fail, 10), Some(Plan::NoPrevious));
    }
}
