//! `RolloutService`: requests in, rollouts planned, stored and controlled;
//! refusals are `crate::error::Error`s.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::rollout_service_server::RolloutService;
use fleet_proto::{
    now_ms, ControlAction, ControlRolloutRequest, Event, EventKind, GetRolloutRequest, Host, ListRolloutsRequest,
    ListRolloutsResponse, Rollout, RolloutKind, StartRolloutRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::engine::{self, Start};
use super::plan;
use super::step::Control;
use crate::auth::{operator, Operator};
use crate::error::{Error, Result};
use crate::fleet::Fleet;

/// `RolloutService`.
pub struct RolloutsService(pub Arc<Fleet>);

/// Plans a rollout of `req` (stored and started unless it is a dry run).
/// `op` must be allowed to change the app and every host the plan takes.
pub async fn start(fleet: &Arc<Fleet>, req: &StartRolloutRequest, op: &Operator) -> Result<Rollout> {
    let spec = fleet
        .store
        .app(&req.app)?
        .ok_or_else(|| Error::UnknownApp(req.app.clone()))?;
    op.may_change_app(&spec.name)?;
    let hosts = fleet.store.hosts()?;
    let releases: Vec<String> = fleet
        .store
        .releases(&req.app)?
        .into_iter()
        .filter_map(|r| r.artifact.map(|a| a.version))
        .collect();
    let history: Vec<Rollout> = fleet
        .rollouts
        .records
        .all()?
        .into_iter()
        .filter(|r| r.app == req.app)
        .collect();
    let app_release = fleet.rollouts.records.app_release(&req.app)?;
    let mut rollout = plan::plan(&plan::Input {
        app: &spec,
        req,
        hosts: &hosts,
        releases: &releases,
        history: &history,
        app_release: app_release.as_deref(),
        who: &op.name,
        id: format!("r-{}", crate::random_hex(6)),
        now_ms: now_ms(),
    })?;
    op.may_change_hosts(planned_hosts(&rollout, &hosts))?;
    if !op.scope.selector.is_empty() {
        // A deployer limited to some hosts never sets the release hosts
        // that join the app later get: they may be outside its scope.
        rollout.whole_selection = false;
    }
    if req.dry_run {
        return Ok(rollout);
    }
    store_and_run(fleet, rollout).await
}

/// The hosts of `all` that `rollout`'s batches take.
fn planned_hosts<'a>(rollout: &Rollout, all: &'a [Host]) -> Vec<&'a Host> {
    let ids: std::collections::HashSet<&str> = rollout
        .batches
        .iter()
        .flat_map(|b| b.hosts.iter().map(|h| h.host_id.as_str()))
        .collect();
    all.iter().filter(|h| ids.contains(h.id.as_str())).collect()
}

/// How long an operator's rollout waits for a convergence run it preempts.
const PREEMPT_WAIT: Duration = Duration::from_secs(60);

/// Stores a planned rollout and starts its engine, unless the app has an
/// active one (checked and written under one lock). An operator's rollout
/// preempts a convergence run: the run is aborted (its hosts in flight
/// finish) and the rollout starts when it has ended.
pub async fn store_and_run(fleet: &Arc<Fleet>, rollout: Rollout) -> Result<Rollout> {
    let mut preempted = false;
    let guard = loop {
        let guard = fleet.rollouts.starting.lock().await;
        let Some(running) = fleet.rollouts.records.active(&rollout.app)? else {
            break guard;
        };
        let convergence = running.kind() == RolloutKind::Converge;
        if convergence && rollout.kind() != RolloutKind::Converge && !preempted {
            drop(guard);
            preempted = true;
            preempt(fleet, &running.id).await;
            continue;
        }
        return Err(Error::Busy {
            app: rollout.app.clone(),
            id: running.id.clone(),
            state: running.state().word(),
            kind: running.kind().word(),
            to: if running.version.is_empty() {
                "each host's desired release".into()
            } else {
                running.version.clone()
            },
        });
    };
    fleet.rollouts.records.put(&rollout)?;
    fleet.store.flush().await?;
    drop(guard);
    if preempted {
        tracing::info!(app = %rollout.app, "an operator's rollout preempted a convergence run");
    }
    let hosts: usize = rollout.batches.iter().map(|b| b.hosts.len()).sum();
    tracing::info!(rollout_id = %rollout.id, app = %rollout.app, version = %rollout.version, kind = rollout.kind().word(), hosts, "rollout started");
    engine::spawn(fleet, rollout.clone(), Start::Fresh);
    Ok(rollout)
}

/// Aborts a convergence run and waits (bounded) until it has ended.
async fn preempt(fleet: &Fleet, id: &str) {
    let mut events = fleet.rollouts.events(id).subscribe();
    if !fleet.rollouts.control(id, Control::Abort { rollback: false }) {
        return;
    }
    let _ = tokio::time::timeout(PREEMPT_WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) if e.kind() == EventKind::RolloutEnded => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
    .await;
}

fn get(fleet: &Fleet, id: &str) -> Result<Rollout> {
    fleet
        .rollouts
        .records
        .get(id)?
        .ok_or_else(|| Error::UnknownRollout(id.to_string()))
}

/// Whether an event shows that `control` took effect.
fn shows(control: Control, e: &Event) -> bool {
    match control {
        Control::Pause => e.kind() == EventKind::Paused,
        Control::Run => e.kind() == EventKind::Resumed,
        Control::Abort { .. } => matches!(e.kind(), EventKind::RollingBack | EventKind::RolloutEnded),
    }
}

#[tonic::async_trait]
impl RolloutService for RolloutsService {
    async fn start_rollout(&self, req: Request<StartRolloutRequest>) -> Result<Response<Rollout>, Status> {
        let op = operator(&req);
        let note = crate::audit::note(&req);
        let req = req.into_inner();
        note.set(|d| {
            d.app = req.app.clone();
            d.version = req.version.clone();
            d.selector = req.selector.clone();
            d.dry_run = req.dry_run;
        });
        fleet_proto::limits::check_start_rollout(&req).map_err(Error::from)?;
        let rollout = start(&self.0, &req, &op).await?;
        note.set(|d| {
            d.version = rollout.version.clone();
            d.rollout_id = rollout.id.clone();
            d.hosts = super::rollout_hosts(&rollout);
            d.target = format!("{} hosts in {} batches", d.hosts.len(), rollout.batches.len());
            if !req.dry_run {
                d.ends_later = Some(super::ROLLOUT_ENDED);
            }
        });
        Ok(Response::new(rollout))
    }

    async fn list_rollouts(&self, req: Request<ListRolloutsRequest>) -> Result<Response<ListRolloutsResponse>, Status> {
        let ListRolloutsRequest { app, summaries } = req.get_ref();
        let mut rollouts: Vec<Rollout> = self
            .0
            .rollouts
            .records
            .all()
            .map_err(Error::Store)?
            .into_iter()
            .filter(|r| app.is_empty() || &r.app == app)
            .collect();
        if *summaries {
            rollouts
                .iter_mut()
                .flat_map(|r| r.batches.iter_mut())
                .for_each(fleet_proto::HostCounts::summarize);
        }
        Ok(Response::new(ListRolloutsResponse { rollouts }))
    }

    async fn get_rollout(&self, req: Request<GetRolloutRequest>) -> Result<Response<Rollout>, Status> {
        Ok(Response::new(get(&self.0, &req.get_ref().id)?))
    }

    async fn control_rollout(&self, req: Request<ControlRolloutRequest>) -> Result<Response<Rollout>, Status> {
        let fleet = &self.0;
        let op = operator(&req);
        let note = crate::audit::note(&req);
        let r = req.into_inner();
        note.set(|d| {
            d.rollout_id = r.id.clone();
            d.target = match r.action() {
                ControlAction::Abort if r.rollback => "abort and roll back".into(),
                a => a.as_str_name().trim_start_matches("CONTROL_ACTION_").to_lowercase(),
            };
        });
        let rollout = get(fleet, &r.id)?;
        note.set(|d| d.app = rollout.app.clone());
        op.may_change_app(&rollout.app)?;
        op.may_change_hosts(planned_hosts(&rollout, &fleet.store.hosts().map_err(Error::Store)?))?;
        if rollout.state().ended() {
            return Err(Error::RolloutEnded {
                state: rollout.state().word(),
                id: rollout.id,
            }
            .into());
        }
        let control = match r.action() {
            ControlAction::Pause => Control::Pause,
            ControlAction::Resume => Control::Run,
            ControlAction::Abort => Control::Abort { rollback: r.rollback },
            ControlAction::Unspecified => {
                return Err(Error::invalid("action", "control action is not pause, resume or abort").into())
            }
        };
        // Subscribe before asking, so the event that shows the change is seen.
        let mut events = fleet.rollouts.events(&rollout.id).subscribe();
        if !fleet.rollouts.control(&rollout.id, control) {
            return Err(Error::Unavailable(format!(
                "rollout {} has no engine running on this controller; try again in a moment",
                rollout.id
            ))
            .into());
        }
        // The engine records the change (pause and abort at the next batch
        // boundary); answer with it when it comes quickly.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.recv().await {
                    Ok(e) if shows(control, &e) => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .await;
        Ok(Response::new(get(fleet, &rollout.id)?))
    }

    type WatchRolloutStream = ReceiverStream<Result<Event, Status>>;

    async fn watch_rollout(
        &self,
        req: Request<GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let fleet = self.0.clone();
        let op = operator(&req);
        let id = req.get_ref().id.clone();
        let mut events = fleet.rollouts.events(&id).subscribe();
        let snapshot = get(&fleet, &id)?;
        let (tx, rx) = mpsc::channel(64);
        let shutdown = fleet.shutdown.clone();
        let f = fleet.clone();
        // Owned by the fleet's tracker; ends with the watcher, the
        // rollout, or the controller.
        fleet.tracker.spawn(async move {
            let snap = |r: Rollout| {
                let mut e = Event {
                    at_ms: now_ms(),
                    rollout_id: r.id.clone(),
                    detail: r.state().word().to_string(),
                    rollout: Some(r),
                    ..Default::default()
                };
                e.set_kind(EventKind::Snapshot);
                e
            };
            let done = snapshot.state().ended();
            if tx.send(Ok(snap(snapshot))).await.is_err() || done {
                return;
            }
            // A token revoked or expired while the watch runs ends it.
            let mut recheck = tokio::time::interval(crate::auth::TOKEN_RECHECK);
            recheck.tick().await;
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = recheck.tick() => {
                        if let Err(e) = crate::auth::still_valid(&f.store, &op, now_ms()) {
                            let _ = tx.send(Err(Error::from(e).into())).await;
                            return;
                        }
                        continue;
                    }
                    e = events.recv() => e,
                };
                let e = match next {
                    Ok(e) => e,
                    // Too slow a reader: give it the state as it is now.
                    Err(broadcast::error::RecvError::Lagged(_)) => match get(&f, &id) {
                        Ok(now) => snap(now),
                        Err(_) => return,
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = e.kind() == EventKind::RolloutEnded
                    || (e.kind() == EventKind::Snapshot && e.rollout.as_ref().is_some_and(|r| r.state().ended()));
                if tx.send(Ok(e)).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
