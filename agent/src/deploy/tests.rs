//! Every path of the deploy worker against fakes of the unit manager, the
//! health check and the download: real files in a temp state dir, real
//! hooks (shell scripts), no systemd, no network.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::agent_message::Body as Out;
use fleet_proto::phase::Phase;
use fleet_proto::{
    task, AgentMessage, AppSpec, DeployTask, FailureCause, FetchGrant, HealthCheck, HealthResult, ReleaseRef,
    RollbackTask, Task, TaskProgress, TaskState, UnitState,
};
use tokio::sync::mpsc;

use super::fetch::Fetch;
use super::worker::Worker;
use super::{fail, Failed};
use crate::health::Checker;
use crate::hooks::HookMode;
use crate::layout::{AppDir, Intent};
use crate::systemd::{FullState, OneshotEnd, ServiceUser, SystemdError};
use crate::testkit::Tar;
use crate::units::{BoxFuture, Units};
use crate::unpack::Limits;

const APP: &str = "web";
const UNIT: &str = "fleet-app-web.service";

/// The unit manager: scripted answers, and a log of what was asked.
#[derive(Default)]
struct FakeUnits {
    /// Answers to restart, in order; then "done".
    restarts: Mutex<VecDeque<Result<String, SystemdError>>>,
    /// Answers to state, in order; then active with no restarts.
    states: Mutex<VecDeque<Result<UnitState, SystemdError>>>,
    journal: String,
    log: Mutex<Vec<String>>,
    /// Whom the hook unit runs as (default: a dynamic user).
    hook_user: Option<ServiceUser>,
    /// The state dir, where the hook unit finds what the agent prepared.
    state_dir: Mutex<Option<PathBuf>>,
}

fn unit(active: &str, n_restarts: u32) -> UnitState {
    UnitState {
        name: UNIT.into(),
        active_state: active.into(),
        sub_state: if active == "active" { "running" } else { "dead" }.into(),
        n_restarts,
        main_pid: 42,
    }
}

impl Units for FakeUnits {
    fn restart<'a>(&'a self, unit: &'a str, _: std::time::Duration) -> BoxFuture<'a, Result<String, SystemdError>> {
        self.log.lock().unwrap().push(format!("restart {unit}"));
        let answer = self.restarts.lock().unwrap().pop_front().unwrap_or(Ok("done".into()));
        Box::pin(async move { answer })
    }

    fn state<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<FullState, SystemdError>> {
        let answer = self.states.lock().unwrap().pop_front().unwrap_or(Ok(unit("active", 0)));
        Box::pin(async move {
            answer.map(|unit| FullState {
                unit,
                load_state: "loaded".into(),
            })
        })
    }

    fn journal_tail<'a>(&'a self, _: &'a str, _: u32) -> BoxFuture<'a, String> {
        Box::pin(async move { self.journal.clone() })
    }

    /// Does what `fleet-hook@.service` does with what the agent prepared
    /// under `apps/<app>/hook/`: runs `run` in `release` with `env`,
    /// its output into `output`; stops it at the timeout.
    fn run_oneshot<'a>(&'a self, unit: &'a str, timeout: Duration) -> BoxFuture<'a, Result<OneshotEnd, SystemdError>> {
        self.log.lock().unwrap().push(format!("oneshot {unit}"));
        let app = unit.trim_start_matches("fleet-hook@").trim_end_matches(".service");
        let dir = self
            .state_dir
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .join("apps")
            .join(app)
            .join("hook");
        Box::pin(async move {
            let env: Vec<(String, String)> = std::fs::read_to_string(dir.join("env"))
                .unwrap()
                .lines()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            let out = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("output"))
                .unwrap();
            let mut child = tokio::process::Command::new(dir.join("run"))
                .current_dir(dir.join("release"))
                .env_clear()
                .envs(env)
                .env("PATH", "/usr/bin:/bin")
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(status) => {
                    let code = status.unwrap().code().unwrap_or(-1);
                    let result = if code == 0 { "success" } else { "exit-code" };
                    Ok(OneshotEnd::Finished {
                        result: result.into(),
                        status: code,
                    })
                }
                Err(_) => Ok(OneshotEnd::Stopped),
            }
        })
    }

    fn service_user<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ServiceUser, SystemdError>> {
        let user = self.hook_user.clone().unwrap_or(ServiceUser {
            user: String::new(),
            dynamic: true,
        });
        Box::pin(async move { Ok(user) })
    }
}

impl FakeUnits {
    fn restarted(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("restart"))
            .count()
    }
}

/// Health: scripted results, then healthy.
#[derive(Default)]
struct FakeHealth(Mutex<VecDeque<bool>>);

impl Checker for FakeHealth {
    fn check<'a>(&'a self, _: &'a HealthCheck) -> BoxFuture<'a, HealthResult> {
        let ok = self.0.lock().unwrap().pop_front().unwrap_or(true);
        Box::pin(async move {
            HealthResult {
                ok,
                detail: if ok {
                    "GET / → 200"
                } else {
                    "GET / → 503: not ready"
                }
                .into(),
                checked_at_ms: 1,
            }
        })
    }
}

/// Downloads: scripted contents (or a failure), then the last one again.
#[derive(Default)]
struct FakeFetch(Mutex<VecDeque<Result<Vec<u8>, String>>>);

impl Fetch for FakeFetch {
    fn fetch<'a>(
        &'a self,
        _: &'a str,
        _: &'a ReleaseRef,
        _: Option<&'a FetchGrant>,
        part: &'a Path,
    ) -> BoxFuture<'a, Result<(), Failed>> {
        let mut script = self.0.lock().unwrap();
        let next = if script.len() > 1 {
            script.pop_front()
        } else {
            script.front().cloned()
        };
        let part = part.to_path_buf();
        Box::pin(async move {
            match next {
                // Written off the runtime thread, as a real download streams.
                Some(Ok(bytes)) => {
                    tokio::task::spawn_blocking(move || std::fs::write(part, bytes).unwrap())
                        .await
                        .unwrap();
                    Ok(())
                }
                Some(Err(e)) => Err(fail(Phase::Fetch, FailureCause::Download, e)),
                None => Err(fail(Phase::Fetch, FailureCause::Download, "nothing scripted")),
            }
        })
    }
}

struct World {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    worker: Worker,
    reports: mpsc::Receiver<AgentMessage>,
    units: Arc<FakeUnits>,
    health: Arc<FakeHealth>,
    fetch: Arc<FakeFetch>,
}

fn world_with(units: FakeUnits) -> World {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    *units.state_dir.lock().unwrap() = Some(state.clone());
    let units = Arc::new(units);
    let health = Arc::new(FakeHealth::default());
    let fetch = Arc::new(FakeFetch::default());
    let (worker, reports) = Worker::new(&state, Limits::default(), units.clone(), fetch.clone(), health.clone());
    World {
        _dir: dir,
        state,
        worker,
        reports,
        units,
        health,
        fetch,
    }
}

fn world() -> World {
    world_with(FakeUnits {
        journal: "Dec 01 web[42]: listening".into(),
        ..Default::default()
    })
}

/// Release 1 runs, release 2 is on disk.
fn upgrading() -> World {
    let w = world();
    w.running("1");
    w.on_disk("2", &[]);
    w
}

fn spec(settle_ms: u64) -> AppSpec {
    AppSpec {
        name: APP.into(),
        unit: UNIT.into(),
        settle_ms,
        keep: 5,
        ..Default::default()
    }
}

fn sha256(bytes: &[u8]) -> String {
    fleet_proto::transport::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn deploy_task(version: &str, artifact: &[u8], settle_ms: u64) -> Task {
    Task {
        task_id: format!("t-{version}"),
        kind: Some(task::Kind::Deploy(DeployTask {
            app: APP.into(),
            release: Some(ReleaseRef {
                signature: None,
                version: version.into(),
                sha256: sha256(artifact),
                size: artifact.len() as u64,
                format: "tar.gz".into(),
            }),
            spec: Some(spec(settle_ms)),
        })),
        ..Default::default()
    }
}

fn rollback_task(to: &str) -> Task {
    Task {
        task_id: "t-rollback".into(),
        kind: Some(task::Kind::Rollback(RollbackTask {
            app: APP.into(),
            to_version: to.into(),
            spec: Some(spec(0)),
        })),
        ..Default::default()
    }
}

fn release_tarball(version: &str) -> Vec<u8> {
    Tar::new()
        .dir("bin/", 0o755)
        .file("bin/web", 0o755, b"#!/bin/sh\nexit 0\n")
        .file("VERSION", 0o644, version.as_bytes())
        .gz()
}

impl World {
    fn app(&self) -> AppDir {
        AppDir::new(&self.state, APP)
    }

    /// Release `version` unpacked on disk, with `files` (path, script).
    fn on_disk(&self, version: &str, files: &[(&str, &str)]) {
        let dir = self.app().release(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// Release `version` on disk whose manifest names one hook, `script`.
    fn with_hook(&self, version: &str, hook: &str, script: &str) {
        let path = format!("hooks/{hook}.sh");
        self.on_disk(
            version,
            &[
                ("fleet.toml", &format!("[hooks]\n{hook} = \"{path}\"\n")),
                (&path, script),
            ],
        );
    }

    /// `version` on disk and current, as after an earlier deploy.
    fn running(&self, version: &str) {
        self.app().ensure().unwrap();
        self.on_disk(version, &[]);
        self.app().swap(version).unwrap();
    }

    /// Runs a task; returns its reports.
    async fn run(&mut self, task: Task) -> Vec<TaskProgress> {
        self.worker.handle(task).await;
        let mut out = Vec::new();
        while let Ok(m) = self.reports.try_recv() {
            if let Some(Out::TaskProgress(p)) = m.body {
                out.push(p);
            }
        }
        out
    }
}

/// The task's last report.
fn end(reports: &[TaskProgress]) -> &TaskProgress {
    let last = reports.last().unwrap();
    assert!(Phase::Done.is(&last.phase), "the last report is not done: {reports:#?}");
    last
}

/// `phase:state` of every finished phase, in order.
fn trail(reports: &[TaskProgress]) -> Vec<String> {
    reports
        .iter()
        .filter(|p| p.state() != TaskState::Running)
        .map(|p| {
            let word = if p.state() == TaskState::Succeeded {
                "ok"
            } else {
                "failed"
            };
            format!("{}:{word}", p.phase)
        })
        .collect()
}

#[tokio::test]
async fn a_deploy_goes_through_every_phase_and_swaps() {
    let mut w = world();
    w.running("1");
    let artifact = release_tarball("2");
    w.fetch.0.lock().unwrap().push_back(Ok(artifact.clone()));
    let reports = w.run(deploy_task("2", &artifact, 0)).await;
    assert_eq!(
        trail(&reports),
        [
            "fetch:ok",
            "verify:ok",
            "unpack:ok",
            "swap:ok",
            "restart:ok",
            "settle:ok",
            "health:ok",
            "done:ok"
        ]
    );
    assert_eq!(end(&reports).state(), TaskState::Succeeded);
    assert_eq!(w.app().current().as_deref(), Some("2"));
    assert_eq!(w.app().previous().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 1);
    assert!(
        w.app().intent().is_none(),
        "the intent record must be gone after success"
    );
    assert!(
        !crate::layout::downloads(&w.state)
            .join(format!("{}.part", sha256(&artifact)))
            .exists(),
        "the download must be removed once unpacked"
    );
}

#[tokio::test]
async fn a_failed_download_changes_nothing() {
    let mut w = world();
    w.running("1");
    w.fetch
        .0
        .lock()
        .unwrap()
        .push_back(Err("NotFound: no such artifact".into()));
    let reports = w.run(deploy_task("2", b"whatever", 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause(), done.reverted),
        (TaskState::Failed, FailureCause::Download, false)
    );
    assert_eq!(trail(&reports), ["fetch:failed", "done:failed"]);
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 0);
}

#[tokio::test]
async fn bytes_that_never_match_the_digest_are_refused_at_verify() {
    let mut w = world();
    w.running("1");
    let artifact = release_tarball("2");
    let task = deploy_task("2", &artifact, 0);
    // The controller's copy is damaged: every download has other bytes.
    w.fetch.0.lock().unwrap().push_back(Ok(b"damaged".to_vec()));
    let reports = w.run(task).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause()),
        (TaskState::Failed, FailureCause::Download)
    );
    assert!(done.detail.starts_with("verify failed:"), "{}", done.detail);
    assert!(done.detail.contains("3 fresh downloads"), "{}", done.detail);
    assert!(!w.app().release("2").exists(), "nothing may be unpacked");
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn a_hostile_archive_is_refused_at_unpack() {
    let mut w = world();
    w.running("1");
    let hostile = Tar::new().file("../escape", 0o644, b"x").gz();
    w.fetch.0.lock().unwrap().push_back(Ok(hostile.clone()));
    let reports = w.run(deploy_task("2", &hostile, 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause()),
        (TaskState::Failed, FailureCause::ArchiveRefused)
    );
    assert_eq!(
        trail(&reports),
        ["fetch:ok", "verify:ok", "unpack:failed", "done:failed"]
    );
    assert!(!w.app().release("2").exists());
    assert!(!w.state.join("apps/escape").exists() && !w.state.join("apps/web/escape").exists());
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn a_failing_pre_activate_hook_changes_nothing() {
    let mut w = world();
    w.running("1");
    w.with_hook("2", "pre_activate", "#!/bin/sh\necho migration refused >&2\nexit 3\n");
    let reports = w.run(deploy_task("2", b"on disk already", 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause(), done.reverted),
        (TaskState::Failed, FailureCause::Hook, false)
    );
    assert_eq!(trail(&reports), ["fetch:ok", "pre_activate:failed", "done:failed"]);
    assert!(done.detail.contains("migration refused"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 0, "nothing may be restarted before the swap");
}

#[tokio::test]
async fn a_failed_restart_reverts_with_the_journal_as_evidence() {
    let mut w = upgrading();
    w.units.restarts.lock().unwrap().push_back(Ok("failed".into()));
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause(), done.reverted),
        (TaskState::Failed, FailureCause::Unit, true)
    );
    assert_eq!(
        trail(&reports),
        ["fetch:ok", "swap:ok", "restart:failed", "revert:ok", "done:failed"]
    );
    assert!(done.detail.contains("ended 'failed'"), "{}", done.detail);
    assert!(done
        .detail
        .contains("--- journal of fleet-app-web.service ---\nDec 01 web[42]: listening"));
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 2, "the new release, then the previous one");
    assert!(w.app().intent().is_none());
}

#[tokio::test]
async fn a_restart_refused_by_polkit_names_the_rule() {
    let mut w = upgrading();
    w.units.restarts.lock().unwrap().push_back(Err(SystemdError::Denied {
        what: "restart",
        unit: UNIT.into(),
    }));
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert!(done.detail.contains("50-fleet-agent.rules"), "{}", done.detail);
    assert!(done.reverted);
}

#[tokio::test]
async fn settle_fails_when_the_unit_restarts_by_itself() {
    let mut w = upgrading();
    w.units
        .states
        .lock()
        .unwrap()
        .extend([Ok(unit("active", 0)), Ok(unit("active", 0)), Ok(unit("active", 1))]);
    let reports = w.run(deploy_task("2", b"x", 30)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Unit, true));
    assert!(done.detail.contains("NRestarts 0→1"), "{}", done.detail);
    assert!(trail(&reports).contains(&"settle:failed".to_string()));
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn settle_fails_when_the_unit_is_not_active() {
    let mut w = upgrading();
    // The reachability check, then settle's first read.
    w.units
        .states
        .lock()
        .unwrap()
        .extend([Ok(unit("active", 0)), Ok(unit("failed", 0))]);
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Unit, true));
    assert!(done.detail.contains("ActiveState=failed"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn an_unhealthy_release_is_reverted() {
    let mut w = upgrading();
    w.health.0.lock().unwrap().push_back(false);
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Health, true));
    assert!(done.detail.contains("503: not ready"), "{}", done.detail);
    assert!(done.detail.contains("reverted to 1"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert!(
        w.app().health().unwrap().ok,
        "the last health recorded is the reverted release's"
    );
}

#[tokio::test]
async fn hooks_failing_after_the_swap_are_reverted() {
    for hook in ["post_activate", "validate"] {
        let mut w = world();
        w.running("1");
        w.with_hook(
            "2",
            hook,
            "#!/bin/sh\necho \"$FLEET_VERSION was $FLEET_PREVIOUS_VERSION\"\nexit 1\n",
        );
        let reports = w.run(deploy_task("2", b"x", 0)).await;
        let done = end(&reports);
        assert_eq!((done.cause(), done.reverted), (FailureCause::Hook, true), "{hook}");
        assert!(trail(&reports).contains(&format!("{hook}:failed")), "{hook}");
        assert!(done.detail.contains("2 was 1"), "{hook}: {}", done.detail);
        assert_eq!(w.app().current().as_deref(), Some("1"), "{hook}");
    }
}

#[tokio::test]
async fn a_failed_revert_is_reported_as_not_reverted() {
    let mut w = upgrading();
    w.units
        .restarts
        .lock()
        .unwrap()
        .extend([Ok("failed".to_string()), Ok("failed".to_string())]);
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.reverted), (TaskState::Failed, false));
    assert!(trail(&reports).contains(&"revert:failed".to_string()));
    assert!(
        done.detail
            .contains("--- revert ---\nswapped back to 1 but its restart job ended 'failed'"),
        "{}",
        done.detail
    );
}

#[tokio::test]
async fn a_first_release_that_fails_has_nothing_to_go_back_to() {
    let mut w = world();
    w.on_disk("1", &[]);
    w.health.0.lock().unwrap().push_back(false);
    let reports = w.run(deploy_task("1", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.reverted), (TaskState::Failed, false));
    assert!(
        done.detail.contains("no earlier release on this host"),
        "{}",
        done.detail
    );
}

#[tokio::test]
async fn an_unreachable_systemd_stops_the_deploy_before_the_swap() {
    let mut w = upgrading();
    w.units.states.lock().unwrap().push_back(Err(SystemdError::Connect {
        bus: "system",
        detail: "no bus".into(),
    }));
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Agent, false));
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert!(w.app().intent().is_none());
}

#[tokio::test]
async fn an_agent_killed_after_the_swap_goes_back_at_start() {
    let w = world();
    w.running("1");
    w.on_disk("2", &[]);
    w.app()
        .write_intent(&Intent {
            from: Some("1".into()),
            to: "2".into(),
            unit: UNIT.into(),
        })
        .unwrap();
    w.app().swap("2").unwrap();
    w.worker.recover().await;
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.log.lock().unwrap().as_slice(), [format!("restart {UNIT}")]);
    assert!(w.app().intent().is_none());
}

#[tokio::test]
async fn a_rollback_without_a_previous_release_is_refused() {
    let mut w = world();
    w.running("1");
    let reports = w.run(rollback_task("")).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Invalid));
    assert!(
        done.detail.contains("has no previous release on this host"),
        "{}",
        done.detail
    );
    assert_eq!(w.units.restarted(), 0);
}

#[tokio::test]
async fn a_rollback_runs_no_hooks() {
    let mut w = world();
    w.with_hook("1", "pre_activate", "#!/bin/sh\nexit 1\n");
    w.running("2");
    w.app().set_previous(Some("1")).unwrap();
    let reports = w.run(rollback_task("")).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", trail(&reports));
    assert!(!trail(&reports).iter().any(|p| p.starts_with("pre_activate")));
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn a_hook_that_prints_the_agents_key_is_redacted() {
    let mut w = world();
    w.running("1");
    w.with_hook("2", "pre_activate", "#!/bin/sh\nprintf -- '-----BEGIN PRIVATE KEY-----\\nMIGHAgEAsecret\\n-----END PRIVATE KEY-----\\n'\necho token fleet_jt_ab12.s3cret\n");
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded);
    let hook = reports
        .iter()
        .find(|p| Phase::PreActivate.is(&p.phase) && p.state() == TaskState::Succeeded)
        .unwrap();
    assert!(hook.detail.contains("[PEM block redacted]"), "{}", hook.detail);
    assert!(hook.detail.contains("fleet_jt_ab12.<redacted>"), "{}", hook.detail);
    for p in &reports {
        assert!(
            !p.detail.contains("MIGHAgEAsecret") && !p.detail.contains("s3cret"),
            "{}",
            p.detail
        );
    }
}

/// A world whose hooks run as the (fake) `fleet-hook@web.service`.
fn with_hook_units(units: FakeUnits) -> World {
    let mut w = world_with(units);
    w.worker.hook_mode = HookMode::Unit;
    w.worker.hook_template_state_dir = w.state.clone();
    w.running("1");
    w
}

#[tokio::test]
async fn a_hook_unit_runs_in_its_release_with_its_environment_and_its_output_is_reported() {
    let mut w = with_hook_units(FakeUnits::default());
    w.with_hook(
        "2",
        "pre_activate",
        "#!/bin/sh\necho \"$FLEET_APP $FLEET_VERSION was $FLEET_PREVIOUS_VERSION in $(pwd)\"\necho warn >&2\n",
    );
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", reports);
    let hook = reports
        .iter()
        .find(|p| Phase::PreActivate.is(&p.phase) && p.state() == TaskState::Succeeded)
        .unwrap();
    let release = w.app().release("2").canonicalize().unwrap();
    for want in [
        "(fleet-hook@web.service, as a dynamic user) exited with status 0",
        &format!("web 2 was 1 in {}", release.display()),
        "warn",
    ] {
        assert!(hook.detail.contains(want), "{want:?} not in {}", hook.detail);
    }
    assert!(w
        .units
        .log
        .lock()
        .unwrap()
        .contains(&"oneshot fleet-hook@web.service".to_string()));
}

#[tokio::test]
async fn a_hook_unit_that_fails_or_outlives_its_timeout_changes_nothing() {
    let mut w = with_hook_units(FakeUnits::default());
    w.with_hook("2", "pre_activate", "#!/bin/sh\necho no migration >&2\nexit 3\n");
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Hook));
    assert!(
        done.detail.contains("exited with status 3") && done.detail.contains("no migration"),
        "{}",
        done.detail
    );
    assert_eq!(w.app().current().as_deref(), Some("1"));

    w.on_disk(
        "3",
        &[
            (
                "fleet.toml",
                "[hooks]\npre_activate = \"hooks/slow.sh\"\ntimeout = \"300ms\"\n",
            ),
            ("hooks/slow.sh", "#!/bin/sh\necho started\nexec sleep 30\n"),
        ],
    );
    let started = std::time::Instant::now();
    let reports = w.run(deploy_task("3", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Hook));
    assert!(
        done.detail.contains("did not finish within 300ms and was stopped") && done.detail.contains("started"),
        "{}",
        done.detail
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 0);
}

#[tokio::test]
async fn a_run_as_the_hook_unit_does_not_run_as_is_refused_before_anything_runs() {
    let mut w = with_hook_units(FakeUnits::default());
    w.with_hook("2", "pre_activate", "#!/bin/sh\nexit 0\n");
    let mut task = deploy_task("2", b"x", 0);
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        d.spec.as_mut().unwrap().run_as = "web".into();
    }
    let reports = w.run(task.clone()).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Hook));
    assert!(
        done.detail.contains("must run as web")
            && done
                .detail
                .contains("/etc/systemd/system/fleet-hook@web.service.d/run-as.conf"),
        "{}",
        done.detail
    );
    assert!(!w.units.log.lock().unwrap().iter().any(|l| l.starts_with("oneshot")));
    assert_eq!(w.app().current().as_deref(), Some("1"));

    // Once the operator's drop-in names the user, the hook runs as it.
    let mut w = with_hook_units(FakeUnits {
        hook_user: Some(ServiceUser {
            user: "web".into(),
            dynamic: true,
        }),
        ..Default::default()
    });
    w.with_hook("2", "pre_activate", "#!/bin/sh\nexit 0\n");
    let reports = w.run(task).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", reports);
}

#[tokio::test]
async fn hook_units_need_the_state_dir_their_unit_file_reads() {
    let mut w = with_hook_units(FakeUnits::default());
    w.worker.hook_template_state_dir = PathBuf::from("/var/lib/fleet-agent");
    w.with_hook("2", "pre_activate", "#!/bin/sh\nexit 0\n");
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!(done.state(), TaskState::Failed);
    assert!(
        done.detail.contains("reads /var/lib/fleet-agent") && done.detail.contains("[hooks] run = \"process\""),
        "{}",
        done.detail
    );
}

/// Bytes that do not compress: a release whose download, hashing and
/// unpacking take real time.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn heartbeats_keep_their_interval_while_a_large_release_is_unpacked_and_pruned() {
    let mut w = world();
    w.running("1");
    // Old releases to prune (keep 2): many files each.
    for v in ["0a", "0b", "0c"] {
        let files: Vec<(String, String)> = (0..200).map(|i| (format!("lib/f{i}"), format!("{v} {i}"))).collect();
        let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        w.on_disk(v, &refs);
    }
    let mut tar = Tar::new().file("VERSION", 0o644, b"2");
    for i in 0..48 {
        tar = tar.file(&format!("data/blob{i}"), 0o644, &noise(2 << 20, i + 1));
    }
    let artifact = tar.zst();
    // Twice: the fake hands out the last one by copying it, on this thread.
    w.fetch
        .0
        .lock()
        .unwrap()
        .extend([Ok(artifact.clone()), Ok(artifact.clone())]);
    let mut task = deploy_task("2", &artifact, 0);
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        d.spec.as_mut().unwrap().keep = 2;
        d.release.as_mut().unwrap().format = "tar.zst".into();
    }
    // The heartbeat's stand-in: a timer on the same (current-thread) runtime
    // as the worker, as the agent's session loop is.
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                ticks.lock().unwrap().push(std::time::Instant::now());
            }
        })
    };
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    let reports = w.run(task).await;
    let took = started.elapsed();
    ticker.abort();
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", trail(&reports));
    let pruned = ["0a", "0b", "0c"]
        .iter()
        .filter(|v| !w.app().release(v).exists())
        .count();
    assert!(pruned >= 2, "the old releases were pruned: {:?}", w.app().releases());
    let ticks = ticks.lock().unwrap();
    let longest = ticks.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(took);
    let unpack = reports
        .iter()
        .find(|p| Phase::Unpack.is(&p.phase) && p.state() == TaskState::Succeeded)
        .map(|p| Duration::from_millis(p.duration_ms))
        .unwrap();
    eprintln!("deploy {took:?}, unpack {unpack:?}, longest gap between 10 ms ticks {longest:?}");
    // A step on the runtime thread holds the timer for its whole length;
    // unpacking 96 MiB, the longest step, would stall it that long.
    assert!(
        longest * 3 < unpack,
        "the runtime thread stalled for {longest:?} during a deploy of {took:?} whose unpack took {unpack:?} ({} ticks)",
        ticks.len()
    );
}

#[tokio::test]
async fn no_file_system_step_blocks_the_runtime_thread() {
    let mut w = world();
    w.running("1");
    w.on_disk("0", &[]);
    w.app().set_previous(Some("0")).unwrap();
    let artifact = release_tarball("2");
    w.fetch.0.lock().unwrap().push_back(Ok(artifact.clone()));
    // From here on, a blocking step on this thread (the runtime's: tokio's
    // test runtime runs on it) panics.
    crate::offload::mark_runtime_thread();
    // A deploy that downloads, verifies, unpacks, swaps and prunes (keep 2).
    let mut task = deploy_task("2", &artifact, 0);
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        d.spec.as_mut().unwrap().keep = 2;
    }
    assert_eq!(end(&w.run(task).await).state(), TaskState::Succeeded);
    // One that fails after the swap and reverts; a rollback; a recovery.
    w.health.0.lock().unwrap().push_back(false);
    w.fetch.0.lock().unwrap().push_back(Ok(release_tarball("3")));
    let reports = w.run(deploy_task("3", &release_tarball("3"), 0)).await;
    assert!(end(&reports).reverted, "{:#?}", trail(&reports));
    assert_eq!(end(&w.run(rollback_task("1")).await).state(), TaskState::Succeeded);
    w.worker.recover().await;
    let mut left = w.app().releases();
    left.sort();
    assert_eq!(left, ["1", "2", "3"], "prune must have removed 0");
}

#[tokio::test]
async fn the_inventory_is_sent_before_the_task_ends() {
    let mut w = upgrading();
    w.worker.handle(deploy_task("2", b"x", 0)).await;
    let mut order = Vec::new();
    while let Ok(m) = w.reports.try_recv() {
        match m.body {
            Some(Out::Inventory(inv)) => order.push(format!("inventory current={}", inv.apps[0].current)),
            Some(Out::TaskProgress(p)) if Phase::Done.is(&p.phase) => order.push("done".into()),
            _ => {}
        }
    }
    assert_eq!(order, ["inventory current=2", "done"]);
}

/// A worker pinning one key, and that key's PKCS#8.
fn pinning(w: &mut World) -> Vec<u8> {
    let pkcs8 = fleet_proto::signing::new_key().unwrap();
    let probe = fleet_proto::signing::sign(&pkcs8, "x", "x", "x", 0).unwrap();
    w.worker.trusted_keys = vec![fleet_proto::signing::PublicKey::parse(&probe.key).unwrap()];
    pkcs8
}

fn signed(mut task: Task, pkcs8: &[u8], app: &str, sequence: u64) -> Task {
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        let rel = d.release.as_mut().unwrap();
        rel.signature = Some(fleet_proto::signing::sign(pkcs8, app, &rel.version, &rel.sha256, sequence).unwrap());
    }
    task
}

#[tokio::test]
async fn a_host_that_pins_keys_refuses_unsigned_and_foreign_releases_before_fetching() {
    let mut w = world();
    w.running("1");
    let key = pinning(&mut w);
    let artifact = release_tarball("2");
    w.fetch.0.lock().unwrap().push_back(Ok(artifact.clone()));
    for (task, says) in [
        (deploy_task("2", &artifact, 0), "not signed"),
        (
            signed(deploy_task("2", &artifact, 0), &key, "other-app", 5),
            "does not verify",
        ),
    ] {
        let reports = w.run(task).await;
        let done = end(&reports);
        assert_eq!(
            (done.state(), done.cause(), done.reverted),
            (TaskState::Failed, FailureCause::Signature, false)
        );
        assert_eq!(trail(&reports), ["signature:failed", "done:failed"]);
        assert!(done.detail.contains(says), "{says}: {}", done.detail);
    }
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert!(!w.app().release("2").exists(), "nothing fetched or unpacked");
    assert_eq!(w.units.restarted(), 0);

    // Signed by the pinned key: deployed, with the signature phase first.
    let reports = w.run(signed(deploy_task("2", &artifact, 0), &key, APP, 5)).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{reports:#?}");
    assert_eq!(trail(&reports)[0], "signature:ok");
    assert_eq!(w.app().current().as_deref(), Some("2"));

    // An older signed release this host never ran: a replay.
    let old = release_tarball("0");
    let reports = w.run(signed(deploy_task("0", &old, 0), &key, APP, 4)).await;
    let done = end(&reports);
    assert_eq!(done.cause(), FailureCause::Signature);
    assert!(done.detail.contains("replay"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("2"));
}
