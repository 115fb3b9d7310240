//! Every path of the deploy worker against fakes of the unit manager, the
//! health check and the download: real files in a temp state dir, real
//! hooks (shell scripts), no systemd, no network.

#![allow(clippy::unwrap_used)]

mod hooks;
mod paths;
mod runtime;
mod trust;

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
