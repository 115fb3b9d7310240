//! `AppService`: app definitions, and deploying or rolling back one host.
//!
//! A deploy is a task sent on the host's stream; the agent reports each phase
//! and the controller forwards those reports to the caller until the task
//! ends. The rollout engine builds its batches on the same task path.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::app_service_server::AppService;
use fleet_proto::limits;
use fleet_proto::{
    now_ms, task, AppSpec, AppStatus, DeployRequest, DeployTask, FailureCause, FleetEventKind, GetAppRequest,
    ListAppsRequest, ListAppsResponse, RollbackTask, TaskProgress, TaskState,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::{self, Record};
use crate::auth::operator;
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::selector::parse_selector;
use crate::tasks::is_final;

/// Releases kept per host when the app names no number.
pub const DEFAULT_KEEP: u32 = 5;
/// How long the unit must stay up after a restart, by default.
pub const DEFAULT_SETTLE_MS: u64 = 3_000;
/// How long a health check keeps trying, by default.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 30_000;
/// How long one deploy may take in all before the caller is told it timed out.
pub const TASK_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Fills in defaults, then validates every field of an app definition with
/// the contract's limits (`fleet_proto::limits`): the one check at the edge.
pub fn normalize(mut spec: AppSpec) -> Result<AppSpec> {
    let health = spec.health.get_or_insert_with(Default::default);
    if health.timeout_ms == 0 {
        health.timeout_ms = DEFAULT_HEALTH_TIMEOUT_MS;
    }
    if spec.keep == 0 {
        spec.keep = DEFAULT_KEEP;
    }
    if spec.keep < 2 {
        return Err(Error::invalid(
            "keep",
            "keep must be at least 2: the current and the previous release always stay on disk",
        ));
    }
    if spec.settle_ms == 0 {
        spec.settle_ms = DEFAULT_SETTLE_MS;
    }
    limits::check_app_spec(&spec)?;
    Ok(spec)
}

/// `AppService`.
pub struct AppsService(pub Arc<Fleet>);

#[tonic::async_trait]
impl AppService for AppsService {
    async fn create_app(&self, req: Request<AppSpec>) -> Result<Response<AppSpec>, Status> {
        let who = crate::auth::operator(&req).name;
        let note = audit::note(&req);
        let spec = normalize(req.into_inner())?;
        note.set(|d| {
            d.app = spec.name.clone();
            d.selector = spec.selector.clone();
        });
        if !self.0.store.put_app(&spec, true).map_err(Error::Store)? {
            return Err(Error::Exists(format!(
                "app '{}' exists; change it with 'fleetctl app update {}'",
                spec.name, spec.name
            ))
            .into());
        }
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(app = %spec.name, unit = %spec.unit, "app created");
        self.0.events.note(FleetEventKind::AppChanged, &who, |e| {
            e.app = spec.name.clone();
            e.detail = format!("created (unit {})", spec.unit);
        });
        Ok(Response::new(spec))
    }

    async fn update_app(&self, req: Request<AppSpec>) -> Result<Response<AppSpec>, Status> {
        let who = crate::auth::operator(&req).name;
        let note = audit::note(&req);
        let spec = normalize(req.into_inner())?;
        note.set(|d| {
            d.app = spec.name.clone();
            d.selector = spec.selector.clone();
        });
        self.0
            .store
            .app(&spec.name)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownApp(spec.name.clone()))?;
        self.0.store.put_app(&spec, false).map_err(Error::Store)?;
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(app = %spec.name, "app updated");
        self.0.events.note(FleetEventKind::AppChanged, &who, |e| {
            e.app = spec.name.clone();
            e.detail = "updated".into();
        });
        Ok(Response::new(spec))
    }

    async fn list_apps(&self, _req: Request<ListAppsRequest>) -> Result<Response<ListAppsResponse>, Status> {
        let apps = self.0.store.apps().map_err(Error::Store)?;
        Ok(Response::new(ListAppsResponse { apps }))
    }

    async fn get_app(&self, req: Request<GetAppRequest>) -> Result<Response<AppStatus>, Status> {
        Ok(Response::new(self.0.app_status(&req.get_ref().name)?))
    }

    type DeployStream = ReceiverStream<Result<TaskProgress, Status>>;

    async fn deploy(&self, req: Request<DeployRequest>) -> Result<Response<Self::DeployStream>, Status> {
        let fleet = self.0.clone();
        let op = operator(&req);
        let note = audit::note(&req);
        let r = req.into_inner();
        note.set(|d| {
            d.app = r.app.clone();
            d.version = r.version.clone();
            d.target = if r.rollback { "rollback".into() } else { String::new() };
        });
        limits::check_app_name(&r.app).map_err(Error::from)?;
        if !r.version.is_empty() {
            limits::check_version(&r.version).map_err(Error::from)?;
        }
        let spec = fleet
            .store
            .app(&r.app)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownApp(r.app.clone()))?;
        op.may_change_app(&spec.name)?;
        let host = fleet.resolve_host(&r.host)?;
        note.set(|d| d.hosts = vec![host.id.clone()]);
        op.may_change_hosts([&host])?;
        if let Some(running) = fleet.rollouts.records.active(&spec.name).map_err(Error::Store)? {
            return Err(Error::Precondition(format!(
                "rollout {} of {} is under way; wait for it or abort it before deploying by hand",
                running.id, spec.name
            ))
            .into());
        }
        let selector = parse_selector(&spec.selector).map_err(Error::from)?;
        if let Some((k, v)) = selector.iter().find(|(k, v)| host.labels.get(k) != Some(v)) {
            return Err(Error::Precondition(format!(
                "host {} does not match app {}'s selector ({k}={v} is not among its labels); \
                 label it with 'fleetctl hosts label' or change the app's selector",
                host.id, spec.name
            ))
            .into());
        }
        let kind = if r.rollback {
            task::Kind::Rollback(RollbackTask {
                app: spec.name.clone(),
                to_version: r.version.clone(),
                spec: Some(spec.clone()),
            })
        } else {
            let release = fleet
                .store
                .release(&spec.name, &r.version)
                .map_err(Error::Store)?
                .ok_or_else(|| Error::UnknownRelease {
                    app: spec.name.clone(),
                    version: r.version.clone(),
                })?;
            task::Kind::Deploy(DeployTask {
                app: spec.name.clone(),
                release: release.artifact,
                spec: Some(spec.clone()),
            })
        };
        if fleet.registry.sender(&host.id).is_none() {
            return Err(Error::Unavailable(format!(
                "host {} is not connected (last seen {}); deploy again when it is back",
                host.id,
                crate::store::utc(host.last_seen_ms)
            ))
            .into());
        }
        let (task_id, mut progress) = fleet.dispatch().send(&host.id, "", kind).await.map_err(Error::from)?;
        tracing::info!(task_id, host_id = %host.id, app = %spec.name, version = %r.version, rollback = r.rollback, "deploy requested");

        note.set(|d| {
            d.target = format!("task {task_id}{}", if r.rollback { " (rollback)" } else { "" });
            d.ends_later = Some(DEPLOY_ENDED);
        });

        let (tx, rx) = mpsc::channel(64);
        let host_id = host.id.clone();
        let hostname = host.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default();
        let app = spec.name.clone();
        let owner = fleet.clone();
        let ended = Record {
            who: op.name.clone(),
            what: DEPLOY_ENDED.into(),
            target: format!("task {task_id}"),
            app: app.clone(),
            version: r.version.clone(),
            hosts: vec![host_id.clone()],
            ..Default::default()
        };
        owner.tracker.spawn(async move {
            let deadline = tokio::time::sleep(TASK_DEADLINE);
            tokio::pin!(deadline);
            let mut phase = String::from("start");
            // The caller may leave; the task is followed to its end anyway,
            // so the audit log says how it ended.
            let mut listening = true;
            let shutdown = fleet.shutdown.clone();
            // The task's last report, or what the controller saw instead,
            // and how the audit log tells the end.
            let (last, outcome) = loop {
                let failed = |detail: String, cause: FailureCause| TaskProgress {
                    task_id: task_id.clone(),
                    phase: "done".into(),
                    state: TaskState::Failed.into(),
                    detail,
                    cause: cause.into(),
                    host_id: host_id.clone(),
                    ..Default::default()
                };
                let p = tokio::select! {
                    p = progress.recv() => p,
                    _ = &mut deadline => {
                        fleet.tasks.forget(&task_id);
                        let detail = format!("no end of the task within {TASK_DEADLINE:?}; timed out in phase {phase}");
                        break (failed(detail.clone(), FailureCause::Timeout), format!("failed: {detail}"));
                    }
                    _ = shutdown.cancelled() => {
                        let detail = format!("the controller stopped while the task was in phase {phase}");
                        break (
                            failed(detail.clone(), FailureCause::Unreachable),
                            format!("unknown: {detail}; the agent carries on and reports its inventory"),
                        );
                    }
                    _ = tx.closed(), if listening => {
                        listening = false;
                        continue;
                    }
                };
                let Some(p) = p else {
                    let detail = format!("the host's stream ended while the task was in phase {phase}");
                    break (
                        failed(detail.clone(), FailureCause::Unreachable),
                        format!("unknown: {detail}; the agent carries on and reports its inventory when it is back"),
                    );
                };
                phase = p.phase.clone();
                if is_final(&p) {
                    if p.state() == TaskState::Succeeded && !p.current.is_empty() {
                        // What the operator asked for is now this host's desired
                        // release, and `app show` shows it at once.
                        if let Err(e) = crate::rollouts::settled(&fleet, &host_id, &app, &p.current).await {
                            tracing::error!(error = %e, host_id, app, "cannot record the host's new desired release");
                        }
                    }
                    let outcome = task_outcome(&p);
                    break (p, outcome);
                }
                if listening && tx.send(Ok(p)).await.is_err() {
                    listening = false;
                }
            };
            let version = if last.current.is_empty() {
                ended.version.clone()
            } else {
                last.current.clone()
            };
            fleet.events.note(FleetEventKind::HostTaskEnded, &ended.who, |e| {
                e.app = ended.app.clone();
                e.version = version.clone();
                e.host_id = host_id.clone();
                e.hostname = hostname;
                e.outcome = task_outcome_word(&last).into();
                e.detail = last.detail.clone();
            });
            fleet.audit.write(&Record {
                at_ms: now_ms(),
                outcome,
                version,
                ..ended
            });
            if listening {
                let _ = tx.send(Ok(last)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// How a task ended, in a word: "succeeded", "failed", "reverted" (failed,
/// and the agent moved back to what it ran before), "unknown" (the
/// controller saw no end).
fn task_outcome_word(p: &TaskProgress) -> &'static str {
    match p.state() {
        TaskState::Succeeded => "succeeded",
        _ if p.reverted => "reverted",
        _ if p.cause() == FailureCause::Unreachable => "unknown",
        _ => "failed",
    }
}

/// What the audit log calls the end of a deploy.
pub const DEPLOY_ENDED: &str = "DeployEnded";

/// How a task ended, for the audit log: "succeeded", "failed: …",
/// "failed and reverted: …".
fn task_outcome(p: &TaskProgress) -> String {
    match p.state() {
        TaskState::Succeeded => "succeeded".into(),
        _ if p.reverted => format!("failed and reverted: {}", p.detail),
        _ => format!("failed: {}", p.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::health_check::Check;
    use fleet_proto::HealthCheck;

    fn spec() -> AppSpec {
        AppSpec {
            name: "api-service".into(),
            unit: "fleet-app-api-service.service".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = normalize(spec()).expect("valid");
        assert_eq!(s.keep, DEFAULT_KEEP);
        assert_eq!(s.settle_ms, DEFAULT_SETTLE_MS);
        assert_eq!(s.health.expect("health").timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS);
    }

    #[test]
    fn bad_definitions_are_refused_by_field() {
        let cases: Vec<(AppSpec, &str)> = vec![
            (
                AppSpec {
                    name: "Api".into(),
                    ..spec()
                },
                "app name",
            ),
            (
                AppSpec {
                    name: "../x".into(),
                    ..spec()
                },
                "app name",
            ),
            (
                AppSpec {
                    unit: "api".into(),
                    ..spec()
                },
                "unit",
            ),
            (AppSpec { keep: 1, ..spec() }, "keep"),
            (
                AppSpec {
                    selector: "role".into(),
                    ..spec()
                },
                "selector",
            ),
            (
                AppSpec {
                    health: Some(HealthCheck {
                        check: Some(Check::HttpUrl("https://x/health".into())),
                        timeout_ms: 0,
                    }),
                    ..spec()
                },
                "http://",
            ),
        ];
        for (s, needle) in cases {
            let e = normalize(s.clone()).expect_err("refused");
            assert!(matches!(e, Error::Invalid { .. }), "{s:?}: {e:?}");
            assert!(e.to_string().contains(needle), "{s:?}: {e}");
        }
    }
}
