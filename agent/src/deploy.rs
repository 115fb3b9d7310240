//! The deploy worker: one task that runs deploys and rollbacks one at a time,
//! phase by phase, reporting each phase with its duration.
//!
//! Deploy: fetch (resumable) → verify (sha256) → unpack (into a staging dir,
//! fsynced, renamed into `releases/`) → `pre_activate` → swap `current` →
//! restart the unit (D-Bus, waits for JobRemoved) → settle (active, NRestarts
//! unchanged) → `post_activate` → health → `validate` → done. A failure
//! before the swap changes nothing that runs; a failure after it swaps back,
//! restarts and checks the previous release, and the report carries the
//! evidence (journal tail, hook output, health response).
//!
//! The worker outlives streams: its reports queue in the outbox, which each
//! session drains; its downloads use whichever channel the current session
//! published, and resume from the bytes already on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::agent_message::Body as Out;
use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::{
    task, AgentMessage, AppInventory, AppSpec, FailureCause, FetchArtifactRequest, FetchGrant, HealthResult, Inventory,
    ReleaseRef, Task, TaskProgress, TaskState,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::Bus;
use crate::hooks::{self, Hook, Manifest};
use crate::layout::{self, AppDir, Intent};
use crate::systemd::Systemd;
use crate::unpack::{self, Format, Limits, UnpackError};

/// Tasks waiting to run; more are refused as busy.
const QUEUE: usize = 8;
/// Reports waiting for a stream.
const OUTBOX: usize = 256;
/// How long a download may take in all, across reconnects.
const FETCH_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Fresh downloads of an artifact (the `.part` deleted, from byte 0) whose
/// bytes do not match the release's digest, or that the controller ends
/// short, before the task fails: a transfer error is not repeated, a damaged
/// copy on the controller always is, so retrying longer only delays the report.
const FRESH_ATTEMPTS: u32 = 3;
/// How long a restart job may take.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// How often settle reads the unit's state.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// Journal lines in a failure report.
const JOURNAL_LINES: u32 = 20;

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

/// The host's apps and the bus to their units; shared by worker and sessions.
pub struct Host {
    state_dir: PathBuf,
    bus: Bus,
    systemd: Mutex<Option<Systemd>>,
    /// Tasks accepted and not finished (queued or running).
    running: std::sync::Mutex<Vec<String>>,
}

impl Host {
    fn running(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a task taken from the controller.
    pub fn accept(&self, task_id: &str) {
        self.running().push(task_id.to_string());
    }

    /// Forgets a task: finished, or never queued.
    pub fn finish(&self, task_id: &str) {
        self.running().retain(|t| t != task_id);
    }

    /// A connection to systemd, made on first use and kept while it answers.
    async fn systemd(&self) -> Result<Systemd, String> {
        let mut guard = self.systemd.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.alive().await {
                return Ok(s.clone());
            }
            // The bus went away (dbus or systemd restarted): connect again
            // instead of failing every deploy until the agent restarts.
            tracing::warn!(
                bus = s.bus(),
                "the connection to systemd no longer answers; connecting again"
            );
            *guard = None;
        }
        let s = Systemd::connect(self.bus).await.map_err(|e| e.to_string())?;
        *guard = Some(s.clone());
        Ok(s)
    }

    /// What the host runs: every app's releases, links, unit and last health.
    pub async fn inventory(&self) -> Inventory {
        let mut apps = Vec::new();
        for dir in layout::apps(&self.state_dir) {
            let spec = dir.spec();
            let unit = match &spec {
                Some(spec) => match self.systemd().await {
                    Ok(sd) => sd.state(&spec.unit).await.ok().map(|s| s.unit),
                    Err(_) => None,
                },
                None => None,
            };
            apps.push(AppInventory {
                app: dir.app.clone(),
                releases: dir.releases(),
                current: dir.current().unwrap_or_default(),
                previous: dir.previous().unwrap_or_default(),
                unit,
                last_health: dir.health(),
            });
        }
        Inventory {
            apps,
            running_tasks: self.running().clone(),
        }
    }
}

/// Starts the worker; it first finishes or undoes what a killed agent left.
pub fn start(state_dir: &Path, bus: Bus, limits: Limits, cancel: CancellationToken) -> WorkerHandle {
    let (tasks_tx, tasks_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(OUTBOX);
    let (chan_tx, chan_rx) = watch::channel(None);
    let host = Arc::new(Host {
        state_dir: state_dir.to_path_buf(),
        bus,
        systemd: Mutex::new(None),
        running: Default::default(),
    });
    let worker = Worker {
        host: host.clone(),
        limits,
        outbox: out_tx,
        channel: chan_rx,
    };
    tokio::spawn(worker.run(tasks_rx, cancel));
    WorkerHandle {
        tasks: tasks_tx,
        outbox: out_rx,
        channel: chan_tx,
        state: host,
    }
}

struct Worker {
    host: Arc<Host>,
    limits: Limits,
    outbox: mpsc::Sender<AgentMessage>,
    channel: watch::Receiver<Option<Channel>>,
}

/// A phase that failed: its cause and what was seen.
struct Failed {
    phase: &'static str,
    cause: FailureCause,
    detail: String,
}

fn fail(phase: &'static str, cause: FailureCause, detail: impl Into<String>) -> Failed {
    Failed {
        phase,
        cause,
        detail: detail.into(),
    }
}

/// One task's reporting context.
struct Run<'a> {
    worker: &'a Worker,
    task_id: String,
    app: AppDir,
}

impl Run<'_> {
    fn send(&self, p: TaskProgress) {
        let msg = AgentMessage {
            body: Some(Out::TaskProgress(p)),
        };
        if self.worker.outbox.try_send(msg).is_err() {
            tracing::warn!(task_id = %self.task_id, "report queue full; a progress report was dropped");
        }
    }

    fn started(&self, phase: &str) -> Instant {
        tracing::info!(task_id = %self.task_id, app = %self.app.app, phase, "phase started");
        self.send(TaskProgress {
            task_id: self.task_id.clone(),
            phase: phase.into(),
            state: TaskState::Running.into(),
            current: self.app.current().unwrap_or_default(),
            ..Default::default()
        });
        Instant::now()
    }

    fn succeeded(&self, phase: &str, since: Instant, detail: impl Into<String>) {
        let duration_ms = since.elapsed().as_millis() as u64;
        let detail = detail.into();
        tracing::info!(task_id = %self.task_id, app = %self.app.app, phase, duration_ms, %detail, "phase succeeded");
        self.send(TaskProgress {
            task_id: self.task_id.clone(),
            phase: phase.into(),
            state: TaskState::Succeeded.into(),
            detail,
            duration_ms,
            current: self.app.current().unwrap_or_default(),
            ..Default::default()
        });
    }

    fn phase_failed(&self, f: &Failed, since: Instant) {
        let duration_ms = since.elapsed().as_millis() as u64;
        tracing::warn!(task_id = %self.task_id, app = %self.app.app, phase = f.phase, duration_ms, detail = %f.detail, "phase failed");
        self.send(TaskProgress {
            task_id: self.task_id.clone(),
            phase: f.phase.into(),
            state: TaskState::Failed.into(),
            detail: f.detail.clone(),
            duration_ms,
            cause: f.cause.into(),
            current: self.app.current().unwrap_or_default(),
            ..Default::default()
        });
    }

    fn done(&self, since: Instant, outcome: Result<String, (Failed, bool)>) {
        let duration_ms = since.elapsed().as_millis() as u64;
        let current = self.app.current().unwrap_or_default();
        let p = match outcome {
            Ok(detail) => TaskProgress {
                task_id: self.task_id.clone(),
                phase: "done".into(),
                state: TaskState::Succeeded.into(),
                detail,
                duration_ms,
                current,
                ..Default::default()
            },
            Err((f, reverted)) => TaskProgress {
                task_id: self.task_id.clone(),
                phase: "done".into(),
                state: TaskState::Failed.into(),
                detail: format!("{} failed: {}", f.phase, f.detail),
                duration_ms,
                cause: f.cause.into(),
                reverted,
                current,
                ..Default::default()
            },
        };
        tracing::info!(task_id = %self.task_id, app = %self.app.app, state = p.state, current = %p.current, reverted = p.reverted, "task finished");
        self.send(p);
    }
}

impl Worker {
    async fn run(self, mut tasks: mpsc::Receiver<Task>, cancel: CancellationToken) {
        self.recover().await;
        loop {
            let task = tokio::select! {
                _ = cancel.cancelled() => return,
                t = tasks.recv() => match t { Some(t) => t, None => return },
            };
            let task_id = task.task_id.clone();
            self.handle(task).await;
            self.host.finish(&task_id);
            self.send_inventory().await;
        }
    }

    async fn send_inventory(&self) {
        let inv = self.host.inventory().await;
        let _ = self.outbox.try_send(AgentMessage {
            body: Some(Out::Inventory(inv)),
        });
    }

    /// Undoes a change an agent was killed in the middle of: the swap back
    /// to the release that was verified before, and a restart onto it.
    async fn recover(&self) {
        for app in layout::apps(&self.host.state_dir) {
            let leftovers = app.clean_leftovers();
            if !leftovers.is_empty() {
                tracing::warn!(app = %app.app, ?leftovers, "removed what an interrupted deploy left behind");
            }
            let Some(intent) = app.intent() else { continue };
            let current = app.current();
            tracing::warn!(app = %app.app, from = ?intent.from, to = %intent.to, current = ?current, "the agent stopped during a deploy; going back to the release that was verified");
            match &intent.from {
                Some(from) if current.as_deref() != Some(from.as_str()) => {
                    if let Err(e) = app.swap(from) {
                        tracing::error!(app = %app.app, error = %e, "cannot swap back; leaving the intent for the next start");
                        continue;
                    }
                }
                Some(_) => {}
                None => tracing::warn!(app = %app.app, "no earlier release to go back to; current stays as it is"),
            }
            if intent.from.is_some() {
                match self.host.systemd().await {
                    Ok(sd) => match sd.restart(&intent.unit, RESTART_TIMEOUT).await {
                        Ok(r) => {
                            tracing::info!(app = %app.app, unit = %intent.unit, job = %r, "restarted on the release that was verified")
                        }
                        Err(e) => tracing::error!(app = %app.app, error = %e, "restart after recovery failed"),
                    },
                    Err(e) => {
                        tracing::error!(app = %app.app, error = %e, "cannot reach systemd to restart after recovery")
                    }
                }
            }
            if let Err(e) = app.clear_intent() {
                tracing::error!(app = %app.app, error = %e, "cannot remove the intent file");
            }
        }
    }

    async fn handle(&self, task: Task) {
        let started = Instant::now();
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
            worker: self,
            task_id: task.task_id.clone(),
            app: AppDir::new(&self.host.state_dir, if app_name.is_empty() { "_" } else { &app_name }),
        };
        let spec = match (layout::check_name("app", &app_name), spec) {
            (Ok(()), Some(spec)) if spec.name == app_name && !spec.unit.is_empty() => spec,
            (Err(e), _) => return run.done(started, Err((fail("start", FailureCause::Invalid, e), false))),
            _ => {
                return run.done(
                    started,
                    Err((
                        fail(
                            "start",
                            FailureCause::Invalid,
                            "the task carries no usable app definition",
                        ),
                        false,
                    )),
                )
            }
        };
        if let Err(e) = run.app.ensure().and_then(|()| run.app.save_spec(&spec)) {
            return run.done(
                started,
                Err((
                    fail(
                        "start",
                        io_cause(&e),
                        format!("cannot prepare {}: {e}", run.app.root().display()),
                    ),
                    false,
                )),
            );
        }
        let outcome = match kind {
            Kind::Deploy(release, grant) => self.deploy(&run, &spec, &release, grant.as_ref()).await,
            Kind::Rollback(to) => self.rollback(&run, &spec, &to).await,
        };
        let outcome = outcome.map(|detail| {
            let removed = run.app.prune(spec.keep.max(2) as usize);
            if removed.is_empty() {
                detail
            } else {
                format!("{detail}; pruned {}", removed.join(", "))
            }
        });
        run.done(started, outcome);
    }

    async fn deploy(
        &self,
        run: &Run<'_>,
        spec: &AppSpec,
        rel: &ReleaseRef,
        grant: Option<&FetchGrant>,
    ) -> Result<String, (Failed, bool)> {
        let nothing_changed = |f: Failed| (f, false);
        layout::check_name("version", &rel.version)
            .map_err(|e| nothing_changed(fail("start", FailureCause::Invalid, e)))?;
        let format = Format::from_name(&rel.format).ok_or_else(|| {
            nothing_changed(fail(
                "start",
                FailureCause::Invalid,
                format!("release format '{}' is not tar.gz or tar.zst", rel.format),
            ))
        })?;
        let dir = run.app.release(&rel.version);
        if dir.is_dir() {
            let t = run.started("fetch");
            run.succeeded(
                "fetch",
                t,
                format!("{} is already on disk; nothing to download", rel.version),
            );
        } else {
            let t = run.started("fetch");
            let mut mismatches: Vec<String> = Vec::new();
            let part = loop {
                let part = self.fetch(&spec.name, rel, grant).await.map_err(|f| {
                    run.phase_failed(&f, t);
                    nothing_changed(f)
                })?;
                match sha256_file(&part).await {
                    Ok(d) if d == rel.sha256 => break part,
                    Ok(d) => {
                        let _ = std::fs::remove_file(&part);
                        tracing::warn!(
                            sha256 = %rel.sha256,
                            got = %d,
                            attempt = mismatches.len() + 1,
                            "downloaded bytes do not match the release's digest; downloading again from the start"
                        );
                        mismatches.push(d);
                        if mismatches.len() as u32 >= FRESH_ATTEMPTS {
                            run.succeeded("fetch", t, format!("{} bytes, {} times", rel.size, mismatches.len()));
                            let tv = run.started("verify");
                            let f = fail(
                                "verify",
                                FailureCause::Download,
                                digest_mismatch(&spec.name, rel, &mismatches),
                            );
                            run.phase_failed(&f, tv);
                            return Err(nothing_changed(f));
                        }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&part);
                        let f = fail(
                            "verify",
                            io_cause(&e),
                            format!("cannot read the download {}: {e}", part.display()),
                        );
                        run.phase_failed(&f, t);
                        return Err(nothing_changed(f));
                    }
                }
            };
            let fetched = match mismatches.len() {
                0 => format!("{} bytes", rel.size),
                n => format!(
                    "{} bytes, after {n} download(s) that did not match the digest",
                    rel.size
                ),
            };
            run.succeeded("fetch", t, fetched);
            let t = run.started("verify");
            run.succeeded("verify", t, format!("sha256 {}", rel.sha256));

            let t = run.started("unpack");
            let staging = run.app.staging(&rel.version);
            let limits = self.limits.clone();
            let staged = staging.clone();
            let archive = part.clone();
            let unpacked = tokio::task::spawn_blocking(move || unpack::unpack(&archive, format, &staged, &limits))
                .await
                .unwrap_or_else(|e| {
                    Err(UnpackError::Corrupt {
                        detail: format!("the unpacker panicked: {e}"),
                    })
                });
            let summary = match unpacked {
                Ok(s) => s,
                Err(e) => {
                    let cause = match e {
                        UnpackError::DiskFull { .. } => FailureCause::DiskFull,
                        UnpackError::Io { .. } | UnpackError::DestExists { .. } => FailureCause::Agent,
                        _ => FailureCause::ArchiveRefused,
                    };
                    let f = fail("unpack", cause, format!("{e}; the current release stays active"));
                    run.phase_failed(&f, t);
                    return Err(nothing_changed(f));
                }
            };
            if let Err(e) = run.app.commit(&staging, &rel.version) {
                let _ = std::fs::remove_dir_all(&staging);
                let f = fail(
                    "unpack",
                    io_cause(&e),
                    format!("cannot move the release into place: {e}"),
                );
                run.phase_failed(&f, t);
                return Err(nothing_changed(f));
            }
            let _ = std::fs::remove_file(layout::downloads(&self.host.state_dir).join(format!("{}.part", rel.sha256)));
            run.succeeded(
                "unpack",
                t,
                format!("{} entries, {} bytes", summary.entries, summary.bytes),
            );
        }
        self.activate(run, spec, &rel.version, true).await
    }

    async fn rollback(&self, run: &Run<'_>, spec: &AppSpec, to: &str) -> Result<String, (Failed, bool)> {
        let target = if to.is_empty() {
            run.app.previous().ok_or_else(|| {
                (
                    fail(
                        "start",
                        FailureCause::Invalid,
                        format!(
                            "{} has no previous release on this host (releases on disk: {}); roll back to a version with --version",
                            run.app.app,
                            list(&run.app.releases())
                        ),
                    ),
                    false,
                )
            })?
        } else {
            to.to_string()
        };
        if layout::check_name("version", &target).is_err() || !run.app.release(&target).is_dir() {
            return Err((
                fail(
                    "start",
                    FailureCause::Invalid,
                    format!(
                        "release {target} of {} is not on this host (on disk: {}); deploy it instead",
                        run.app.app,
                        list(&run.app.releases())
                    ),
                ),
                false,
            ));
        }
        self.activate(run, spec, &target, false).await
    }

    /// Everything from the swap on, with the revert when a step fails.
    async fn activate(
        &self,
        run: &Run<'_>,
        spec: &AppSpec,
        version: &str,
        with_hooks: bool,
    ) -> Result<String, (Failed, bool)> {
        let from = run.app.current();
        let release = run.app.release(version);
        let manifest = if with_hooks {
            Manifest::load(&release).map_err(|e| (fail("pre_activate", FailureCause::Hook, e), false))?
        } else {
            Manifest::default()
        };
        let user = if with_hooks
            && [Hook::PreActivate, Hook::PostActivate, Hook::Validate]
                .iter()
                .any(|h| manifest.hook(*h).is_some())
        {
            hooks::resolve_user(&spec.run_as).map_err(|e| (fail("pre_activate", FailureCause::Hook, e), false))?
        } else {
            None
        };
        let env = vec![
            ("FLEET_APP", spec.name.clone()),
            ("FLEET_VERSION", version.to_string()),
            ("FLEET_PREVIOUS_VERSION", from.clone().unwrap_or_default()),
            ("FLEET_RELEASE_DIR", release.display().to_string()),
            ("FLEET_UNIT", spec.unit.clone()),
        ];
        let hook = |h: Hook| {
            let manifest = &manifest;
            let env = &env;
            let release = &release;
            async move {
                let Some(path) = manifest.hook(h) else { return Ok(()) };
                let t = run.started(h.name());
                let r = hooks::run(path, release, env, user, manifest.timeout).await;
                if r.ok {
                    run.succeeded(h.name(), t, r.detail);
                    Ok(())
                } else {
                    let f = fail(h.name(), FailureCause::Hook, r.detail);
                    run.phase_failed(&f, t);
                    Err(f)
                }
            }
        };
        hook(Hook::PreActivate).await.map_err(|f| (f, false))?;

        let sd = self
            .host
            .systemd()
            .await
            .map_err(|e| (fail("restart", FailureCause::Agent, e), false))?;

        // From here on, a failure swaps back.
        run.app
            .write_intent(&Intent {
                from: from.clone(),
                to: version.to_string(),
                unit: spec.unit.clone(),
            })
            .map_err(|e| {
                (
                    fail("swap", io_cause(&e), format!("cannot record the change: {e}")),
                    false,
                )
            })?;
        let t = run.started("swap");
        if let Err(e) = run.app.swap(version) {
            let _ = run.app.clear_intent();
            let f = fail("swap", io_cause(&e), format!("cannot swap current: {e}"));
            run.phase_failed(&f, t);
            return Err((f, false));
        }
        run.succeeded(
            "swap",
            t,
            format!("current → {version} (was {})", from.as_deref().unwrap_or("none")),
        );

        let checked = async {
            self.restart_and_settle(run, &sd, spec).await?;
            hook(Hook::PostActivate).await?;
            let t = run.started("health");
            let health = crate::health::run(spec.health.as_ref().unwrap_or(&Default::default())).await;
            self.record_health(run, &health);
            if !health.ok {
                let f = fail("health", FailureCause::Health, health.detail.clone());
                run.phase_failed(&f, t);
                return Err(f);
            }
            run.succeeded("health", t, health.detail);
            hook(Hook::Validate).await
        }
        .await;

        match checked {
            Ok(()) => {
                if from.as_deref() != Some(version) {
                    if let Err(e) = run.app.set_previous(from.as_deref()) {
                        tracing::warn!(app = %run.app.app, error = %e, "cannot record the previous release");
                    }
                }
                let _ = run.app.clear_intent();
                Ok(format!(
                    "{} {version} is active and healthy (was {})",
                    spec.name,
                    from.as_deref().unwrap_or("none")
                ))
            }
            Err(mut failed) => {
                let journal = sd.journal_tail(&spec.unit, JOURNAL_LINES).await;
                if !journal.is_empty() {
                    failed.detail = format!("{}\n--- journal of {} ---\n{journal}", failed.detail, spec.unit);
                }
                let reverted = self.revert(run, &sd, spec, from.as_deref()).await;
                let _ = run.app.clear_intent();
                match reverted {
                    Ok(detail) => {
                        failed.detail = format!("{}\n--- revert ---\n{detail}", failed.detail);
                        Err((failed, true))
                    }
                    Err(detail) => {
                        failed.detail = format!("{}\n--- revert ---\n{detail}", failed.detail);
                        Err((failed, false))
                    }
                }
            }
        }
    }

    fn record_health(&self, run: &Run<'_>, health: &HealthResult) {
        if let Err(e) = run.app.save_health(health) {
            tracing::warn!(app = %run.app.app, error = %e, "cannot store the health result");
        }
    }

    async fn restart_and_settle(&self, run: &Run<'_>, sd: &Systemd, spec: &AppSpec) -> Result<(), Failed> {
        let t = run.started("restart");
        match sd.restart(&spec.unit, RESTART_TIMEOUT).await {
            Ok(result) if result == "done" => run.succeeded("restart", t, format!("job {result}")),
            Ok(result) => {
                let f = fail(
                    "restart",
                    FailureCause::Unit,
                    format!("the restart job of {} ended '{result}'", spec.unit),
                );
                run.phase_failed(&f, t);
                return Err(f);
            }
            Err(e) => {
                let f = fail("restart", FailureCause::Unit, e.to_string());
                run.phase_failed(&f, t);
                return Err(f);
            }
        }
        let t = run.started("settle");
        let settle = Duration::from_millis(spec.settle_ms);
        let first = sd
            .state(&spec.unit)
            .await
            .map_err(|e| fail("settle", FailureCause::Unit, e.to_string()))?;
        let start_restarts = first.unit.n_restarts;
        let deadline = Instant::now() + settle;
        let mut last = first;
        loop {
            let u = &last.unit;
            if u.active_state != "active" || u.n_restarts != start_restarts {
                let f = fail(
                    "settle",
                    FailureCause::Unit,
                    format!(
                        "{} did not stay up: ActiveState={} SubState={} NRestarts {}→{} MainPID={} within {:.1}s of the restart",
                        spec.unit,
                        u.active_state,
                        u.sub_state,
                        start_restarts,
                        u.n_restarts,
                        u.main_pid,
                        t.elapsed().as_secs_f64()
                    ),
                );
                run.phase_failed(&f, t);
                return Err(f);
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(SETTLE_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
            last = sd
                .state(&spec.unit)
                .await
                .map_err(|e| fail("settle", FailureCause::Unit, e.to_string()))?;
        }
        run.succeeded(
            "settle",
            t,
            format!(
                "{} active ({}) for {:.1}s, MainPID {}, NRestarts {}",
                spec.unit,
                last.unit.sub_state,
                settle.as_secs_f64(),
                last.unit.main_pid,
                last.unit.n_restarts
            ),
        );
        Ok(())
    }

    /// Swaps back to `from`, restarts and checks; `Ok` says what it did.
    async fn revert(&self, run: &Run<'_>, sd: &Systemd, spec: &AppSpec, from: Option<&str>) -> Result<String, String> {
        let Some(from) = from else {
            return Err("no earlier release on this host to go back to; the unit is left as it is".into());
        };
        let t = run.started("revert");
        let outcome: Result<String, String> = async {
            run.app
                .swap(from)
                .map_err(|e| format!("cannot swap back to {from}: {e}"))?;
            match sd.restart(&spec.unit, RESTART_TIMEOUT).await {
                Ok(r) if r == "done" => {}
                Ok(r) => return Err(format!("swapped back to {from} but its restart job ended '{r}'")),
                Err(e) => return Err(format!("swapped back to {from} but could not restart: {e}")),
            }
            // A short settle: the previous release was verified before.
            tokio::time::sleep(Duration::from_millis(spec.settle_ms.min(2_000))).await;
            let s = sd.state(&spec.unit).await.map_err(|e| e.to_string())?;
            if s.unit.active_state != "active" {
                return Err(format!(
                    "swapped back to {from} but {} is {} ({})",
                    spec.unit, s.unit.active_state, s.unit.sub_state
                ));
            }
            let health = crate::health::run(spec.health.as_ref().unwrap_or(&Default::default())).await;
            self.record_health(run, &health);
            if !health.ok {
                return Err(format!(
                    "swapped back to {from}, but it is not healthy either: {}",
                    health.detail
                ));
            }
            Ok(format!(
                "reverted to {from}: {} active, MainPID {}, healthy",
                spec.unit, s.unit.main_pid
            ))
        }
        .await;
        match &outcome {
            Ok(d) => run.succeeded("revert", t, d.clone()),
            Err(d) => run.phase_failed(&fail("revert", FailureCause::Unit, d.clone()), t),
        }
        outcome
    }

    /// Downloads an artifact into `downloads/<sha256>.part`, resuming from
    /// what is there, across broken connections, until it is complete.
    /// `grant` is the task's permission to download it, shown on every
    /// attempt (a restarted controller honours it too).
    async fn fetch(&self, app: &str, rel: &ReleaseRef, grant: Option<&FetchGrant>) -> Result<PathBuf, Failed> {
        let dir = layout::downloads(&self.host.state_dir);
        std::fs::create_dir_all(&dir).map_err(|e| fail("fetch", io_cause(&e), format!("{}: {e}", dir.display())))?;
        let part = dir.join(format!("{}.part", rel.sha256));
        let deadline = Instant::now() + FETCH_DEADLINE;
        let mut channel = self.channel.clone();
        let mut last_error = String::from("no connection to the controller");
        let mut attempt = 0u32;
        let mut short_ends = 0u32;
        loop {
            let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if have == rel.size {
                return Ok(part);
            }
            if have > rel.size {
                let _ = std::fs::remove_file(&part);
                continue;
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    "fetch",
                    FailureCause::Download,
                    format!(
                        "download of {} stopped at {have} of {} bytes: {last_error}",
                        rel.sha256, rel.size
                    ),
                ));
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(10)))).await;
            }
            attempt += 1;
            let current = channel.borrow_and_update().clone();
            if attempt > 1 {
                tracing::info!(sha256 = %rel.sha256, offset = have, size = rel.size, "resuming the download");
            }
            let Some(ch) = current else {
                // Wait for a session to publish a channel.
                let _ = tokio::time::timeout(Duration::from_secs(5), channel.changed()).await;
                continue;
            };
            match self.fetch_from(ch, rel, grant, &part, have).await {
                Ok(()) => {}
                Err(FetchError::Fatal(f)) => return Err(f),
                Err(FetchError::Short(at)) => {
                    // The controller answered and ended the stream early: its
                    // copy is shorter than the release (a broken connection
                    // ends with an error instead). Start over, a few times.
                    short_ends += 1;
                    let _ = std::fs::remove_file(&part);
                    if short_ends >= FRESH_ATTEMPTS {
                        return Err(fail(
                            "fetch",
                            FailureCause::Download,
                            short_artifact(app, rel, at, short_ends),
                        ));
                    }
                    tracing::warn!(sha256 = %rel.sha256, at, size = rel.size, "the controller ended the download early; downloading again from the start");
                    last_error = format!("the controller ended the download at {at} of {} bytes", rel.size);
                }
                Err(FetchError::Retry(e)) => {
                    tracing::warn!(sha256 = %rel.sha256, offset = have, error = %e, "download interrupted; resuming");
                    last_error = e;
                }
            }
        }
    }

    async fn fetch_from(
        &self,
        ch: Channel,
        rel: &ReleaseRef,
        grant: Option<&FetchGrant>,
        part: &Path,
        offset: u64,
    ) -> Result<(), FetchError> {
        let mut client = AgentServiceClient::new(ch).max_decoding_message_size(4 << 20);
        let mut stream = client
            .fetch_artifact(FetchArtifactRequest {
                sha256: rel.sha256.clone(),
                offset,
                grant: grant.cloned(),
            })
            .await
            .map_err(|s| classify_fetch(&s))?
            .into_inner();
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .await
            .map_err(|e| FetchError::Fatal(fail("fetch", io_cause(&e), format!("{}: {e}", part.display()))))?;
        let mut at = offset;
        let result = loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if chunk.offset != at {
                        break Err(FetchError::Retry(format!(
                            "the controller sent bytes at offset {} when {at} was next",
                            chunk.offset
                        )));
                    }
                    if at + chunk.data.len() as u64 > rel.size {
                        break Err(FetchError::Fatal(fail(
                            "fetch",
                            FailureCause::Download,
                            format!("the artifact is longer than the {} bytes the release says", rel.size),
                        )));
                    }
                    if let Err(e) = file.write_all(&chunk.data).await {
                        break Err(FetchError::Fatal(fail(
                            "fetch",
                            io_cause(&e),
                            format!("{}: {e}", part.display()),
                        )));
                    }
                    at += chunk.data.len() as u64;
                }
                Ok(None) if at == rel.size => break Ok(()),
                Ok(None) => break Err(FetchError::Short(at)),
                Err(s) => break Err(classify_fetch(&s)),
            }
        };
        if let Err(e) = file.sync_all().await {
            return Err(FetchError::Fatal(fail(
                "fetch",
                io_cause(&e),
                format!("{}: {e}", part.display()),
            )));
        }
        result
    }
}

enum Kind {
    Deploy(ReleaseRef, Option<FetchGrant>),
    Rollback(String),
}

enum FetchError {
    /// A transfer error: resume from the offset reached.
    Retry(String),
    /// The controller ended the stream cleanly at this offset, before the
    /// end of the artifact.
    Short(u64),
    /// Retrying cannot help.
    Fatal(Failed),
}

/// The fix for an artifact whose copy on the controller is damaged.
fn controller_fix(app: &str, version: &str) -> String {
    format!(
        "the controller's copy is damaged: repair it on the controller by pushing the same file again \
         ('fleetctl release push {app} FILE --version {version}'; 'fleet-controller check' lists damaged releases)"
    )
}

/// The failure of a download whose bytes never matched the digest.
fn digest_mismatch(app: &str, rel: &ReleaseRef, got: &[String]) -> String {
    format!(
        "the downloaded bytes of {app} {} have sha256 {}, not {} as the release says, in {} fresh downloads; \
         nothing was unpacked. {}",
        rel.version,
        got.last().map(String::as_str).unwrap_or_default(),
        rel.sha256,
        got.len(),
        controller_fix(app, &rel.version)
    )
}

/// The failure of a download the controller keeps ending short.
fn short_artifact(app: &str, rel: &ReleaseRef, at: u64, times: u32) -> String {
    format!(
        "the controller ended the download of {app} {} (artifact sha256 {}) at {at} of {} bytes, {times} times \
         from the start; nothing was unpacked. {}",
        rel.version,
        rel.sha256,
        rel.size,
        controller_fix(app, &rel.version)
    )
}

fn classify_fetch(s: &tonic::Status) -> FetchError {
    use tonic::Code;
    match s.code() {
        // DATA_LOSS: the controller found its copy damaged and says how to fix it.
        Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::InvalidArgument
        | Code::OutOfRange
        | Code::DataLoss => FetchError::Fatal(fail("fetch", FailureCause::Download, s.message().to_string())),
        _ => FetchError::Retry(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn io_cause(e: &std::io::Error) -> FailureCause {
    if e.raw_os_error() == Some(28) {
        FailureCause::DiskFull
    } else {
        FailureCause::Agent
    }
}

async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(fleet_proto::transport::hex(ctx.finish().as_ref()))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_artifact_on_the_controller_is_not_retried() {
        let damaged = tonic::Status::data_loss("the controller's copy of web 1.0 is damaged");
        assert!(matches!(classify_fetch(&damaged), FetchError::Fatal(f) if f.cause == FailureCause::Download));
        let cut = tonic::Status::unavailable("connection reset");
        assert!(matches!(classify_fetch(&cut), FetchError::Retry(_)));
    }

    #[test]
    fn give_up_messages_name_the_digest_and_the_controller_side_fix() {
        let rel = ReleaseRef {
            version: "1.2.0".into(),
            sha256: "a".repeat(64),
            size: 10,
            format: "tar.gz".into(),
        };
        let m = digest_mismatch("web", &rel, &["b".repeat(64), "c".repeat(64)]);
        assert!(m.contains(&"a".repeat(64)) && m.contains(&"c".repeat(64)), "{m}");
        assert!(m.contains("2 fresh downloads"), "{m}");
        assert!(m.contains("fleetctl release push web FILE --version 1.2.0"), "{m}");
        let m = short_artifact("web", &rel, 4, FRESH_ATTEMPTS);
        assert!(m.contains(&"a".repeat(64)) && m.contains("at 4 of 10 bytes"), "{m}");
        assert!(m.contains("fleetctl release push web FILE --version 1.2.0"), "{m}");
    }
}
