//! The worker's queue: tasks one at a time; each checked, run as a deploy
//! or a rollback, its old releases pruned, and ended with one report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fleet_proto::agent_message::Body as Out;
use fleet_proto::phase::Phase;
use fleet_proto::{task, AgentMessage, AppSpec, FailureCause, FetchGrant, ReleaseRef, Task};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::fetch::{Fetch, Grpc};
use super::report::Run;
use super::{blocking, fail, io_cause, Outcome, OUTBOX, QUEUE};
use crate::config::{Config, DEFAULT_STATE_DIR};
use crate::health::{Checker, Probe};
use crate::hooks::HookMode;
use crate::inventory::Host;
use crate::layout::{self, AppDir};
use crate::units::{Dbus, Units};
use crate::unpack::Limits;
use fleet_proto::signing::PublicKey;

/// What sessions use to talk to the worker.
pub struct WorkerHandle {
    /// Tasks from the controller.
    pub tasks: mpsc::Sender<Task>,
    /// Reports for the controller (progress, inventory).
    pub outbox: mpsc::Receiver<AgentMessage>,
    /// The channel downloads use; the session publishes its own.
    pub channel: watch::Sender<Option<Channel>>,
    /// Reads inventories.
    pub state: Arc<Host>,
}

/// Starts the worker on the real systemd, health checks and downloads; it
/// first finishes or undoes what a killed agent left.
pub fn start(config: &Config, cancel: CancellationToken) -> WorkerHandle {
    let (tasks_tx, tasks_rx) = mpsc::channel(QUEUE);
    let (chan_tx, chan_rx) = watch::channel(None);
    let (mut worker, outbox) = Worker::new(
        &config.state_dir,
        config.limits.clone(),
        Arc::new(Dbus::new(config.bus)),
        Arc::new(Grpc::new(chan_rx)),
        Arc::new(Probe),
    );
    worker.trusted_keys = config.trusted_keys.clone();
    worker.hook_mode = config.hook_mode;
    let state = worker.host.clone();
    tokio::spawn(worker.run(tasks_rx, cancel));
    WorkerHandle {
        tasks: tasks_tx,
        outbox,
        channel: chan_tx,
        state,
    }
}

/// What a task asks for.
enum Kind {
    Deploy(ReleaseRef, Option<FetchGrant>),
    Rollback(String),
}

/// The worker and what it waits on.
pub(super) struct Worker {
    pub host: Arc<Host>,
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub outbox: mpsc::Sender<AgentMessage>,
    pub units: Arc<dyn Units>,
    pub fetch: Arc<dyn Fetch>,
    pub health: Arc<dyn Checker>,
    /// The keys releases must be signed by (`[releases] trusted_keys`).
    pub trusted_keys: Vec<PublicKey>,
    /// How hooks run (`[hooks] run`).
    pub hook_mode: HookMode,
    /// The state directory the hook unit's file reads.
    pub hook_template_state_dir: PathBuf,
}

impl Worker {
    /// A worker on these parts, and the receiving end of its reports.
    pub fn new(
        state_dir: &Path,
        limits: Limits,
        units: Arc<dyn Units>,
        fetch: Arc<dyn Fetch>,
        health: Arc<dyn Checker>,
    ) -> (Worker, mpsc::Receiver<AgentMessage>) {
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        let worker = Worker {
            host: Arc::new(Host::new(state_dir.to_path_buf(), units.clone())),
            state_dir: state_dir.to_path_buf(),
            limits,
            outbox: out_tx,
            units,
            fetch,
            health,
            trusted_keys: Vec::new(),
            hook_mode: HookMode::Process,
            hook_template_state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        };
        (worker, out_rx)
    }

    async fn run(self, mut tasks: mpsc::Receiver<Task>, cancel: CancellationToken) {
        self.recover().await;
        loop {
            let task = tokio::select! {
                _ = cancel.cancelled() => return,
                t = tasks.recv() => match t { Some(t) => t, None => return },
            };
            self.handle(task).await;
        }
    }

    async fn send_inventory(&self) {
        let inv = self.host.inventory().await;
        let _ = self.outbox.try_send(AgentMessage {
            body: Some(Out::Inventory(inv)),
        });
    }

    /// Runs one task to its end and reports it: the host's inventory
    /// first, then the task's end, so whoever sees the end (fleetctl, a
    /// rollout) finds the controller's view of the host already current.
    pub async fn handle(&self, task: Task) {
        let started = Instant::now();
        let (run, outcome) = self.run_task(task).await;
        let end = run.end(started, outcome);
        self.host.ended(&end);
        self.send_inventory().await;
        run.report_end(end);
    }

    async fn run_task(&self, task: Task) -> (Run<'_>, Outcome) {
        let (app_name, spec, kind) = match task.kind {
            Some(task::Kind::Deploy(d)) => (
                d.app,
                d.spec,
                Kind::Deploy(d.release.unwrap_or_default(), task.fetch_grant),
            ),
            Some(task::Kind::Rollback(r)) => (r.app, r.spec, Kind::Rollback(r.to_version)),
            None => (String::new(), None, Kind::Rollback(String::new())),
        };
        let run = Run {
            outbox: &self.outbox,
            task_id: task.task_id.clone(),
            app: AppDir::new(&self.state_dir, if app_name.is_empty() { "_" } else { &app_name }),
        };
        let spec = match usable_spec(&app_name, spec) {
            Ok(spec) => spec,
            Err(e) => return (run, Err(fail(Phase::Start, FailureCause::Invalid, e).unchanged())),
        };
        let app = run.app.clone();
        let saved = spec.clone();
        if let Err(e) = blocking(move || app.ensure().and_then(|()| app.save_spec(&saved))).await {
            let detail = format!("cannot prepare {}: {e}", run.app.root().display());
            return (run, Err(fail(Phase::Start, io_cause(&e), detail).unchanged()));
        }
        let outcome: Outcome = match kind {
            Kind::Deploy(release, grant) => self.deploy(&run, &spec, &release, grant.as_ref()).await,
            Kind::Rollback(to) => self.rollback(&run, &spec, &to).await,
        };
        let outcome = match outcome {
            Ok(detail) => {
                let app = run.app.clone();
                let keep = spec.keep.max(2) as usize;
                let removed = blocking(move || app.prune(keep)).await;
                if removed.is_empty() {
                    Ok(detail)
                } else {
                    Ok(format!("{detail}; pruned {}", removed.join(", ")))
                }
            }
            failed => failed,
        };
        (run, outcome)
    }
}

/// The task's app definition, when it names this app and a unit.
fn usable_spec(app_name: &str, spec: Option<AppSpec>) -> Result<AppSpec, String> {
    layout::check_name("app", app_name)?;
    match spec {
        Some(spec) if spec.name == app_name && !spec.unit.is_empty() => Ok(spec),
        _ => Err("the task carries no usable app definition".into()),
    }
}
