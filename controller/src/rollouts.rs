//! Rollouts: an app's hosts moved to a release in batches, health-gated,
//! as a state machine persisted in sled.
//!
//! Every transition is written to the `rollouts` tree before it is acted on
//! (a host is recorded `running` with its task id, and flushed, before the
//! task is sent). One engine task per active rollout drives it; after a
//! controller restart, [`resume_all`] starts an engine for every rollout that
//! was running or paused, which re-attaches to tasks in flight by id: the
//! agent keeps running them and reports them in its inventory
//! (`running_tasks`), so no host is deployed twice and none is skipped.
//!
//! Desired state: a rollout that succeeds records the app's version in the
//! `desired` tree; a host that connects later (it was offline, or is new)
//! and runs something else is sent a deploy by [`converge`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::rollout_service_server::RolloutService;
use fleet_proto::{
    now_ms, task, ControlRolloutRequest, DeployTask, Event, FailureCause, GetRolloutRequest, Host, ListRolloutsRequest,
    ListRolloutsResponse, RollbackTask, Rollout, RolloutBatch, RolloutHost, StartRolloutRequest, TaskProgress,
    TaskState,
};
use prost::Message;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::fleet::{internal, Fleet};
use crate::ops::{operator, parse_selector};
use crate::releases::unknown_app;
use crate::store::{Store, StoreError};
use crate::tasks::is_final;

/// A batch's deadline when the rollout names none.
pub const DEFAULT_BATCH_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// How often a paused rollout or an offline wait looks again.
const POLL: Duration = Duration::from_millis(250);

/// Rollout states that are over.
pub fn ended(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "rolled_back" | "aborted")
}

/// What an operator asked a running rollout to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Pause,
    Abort { rollback: bool },
}

/// The persisted rollouts, the desired versions, and the live channels.
pub struct Rollouts {
    tree: sled::Tree,
    desired: sled::Tree,
    events: Mutex<HashMap<String, broadcast::Sender<Event>>>,
    controls: Mutex<HashMap<String, watch::Sender<Control>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn corrupt(key: &[u8], detail: String) -> StoreError {
    StoreError::Corrupt {
        tree: "rollouts",
        key: String::from_utf8_lossy(key).into(),
        detail,
    }
}

impl Rollouts {
    /// Opens the trees.
    pub fn open(store: &Store) -> Result<Rollouts, StoreError> {
        Ok(Rollouts {
            tree: store.tree("rollouts")?,
            desired: store.tree("desired")?,
            events: Mutex::new(HashMap::new()),
            controls: Mutex::new(HashMap::new()),
        })
    }

    fn put(&self, r: &Rollout) -> Result<(), StoreError> {
        let mut v = vec![1u8];
        v.extend(r.encode_to_vec());
        self.tree.insert(r.id.as_bytes(), v)?;
        Ok(())
    }

    /// One rollout.
    pub fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        match self.tree.get(id)? {
            None => Ok(None),
            Some(v) => match v.split_first() {
                Some((1, rest)) => Rollout::decode(rest)
                    .map(Some)
                    .map_err(|e| corrupt(id.as_bytes(), e.to_string())),
                _ => Err(corrupt(id.as_bytes(), "unknown version byte".into())),
            },
        }
    }

    /// Every rollout, newest first.
    pub fn all(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            match v.split_first() {
                Some((1, rest)) => out.push(Rollout::decode(rest).map_err(|e| corrupt(&k, e.to_string()))?),
                _ => return Err(corrupt(&k, "unknown version byte".into())),
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
        Ok(out)
    }

    /// The release every host of `app` should run, once a rollout succeeded.
    pub fn desired(&self, app: &str) -> Result<Option<String>, StoreError> {
        Ok(self.desired.get(app)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn set_desired(&self, app: &str, version: &str) -> Result<(), StoreError> {
        self.desired.insert(app, version.as_bytes())?;
        Ok(())
    }

    /// The rollout of `app` that has not ended, if any.
    pub fn active(&self, app: &str) -> Result<Option<Rollout>, StoreError> {
        Ok(self.all()?.into_iter().find(|r| r.app == app && !ended(&r.state)))
    }

    fn events(&self, id: &str) -> broadcast::Sender<Event> {
        lock(&self.events)
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(512).0)
            .clone()
    }

    fn emit(&self, r: &Rollout, kind: &str, host_id: &str, detail: String) {
        let _ = self.events(&r.id).send(Event {
            at_ms: now_ms(),
            rollout_id: r.id.clone(),
            host_id: host_id.to_string(),
            kind: kind.to_string(),
            detail,
            rollout: Some(r.clone()),
        });
    }
}

/// Parses "25%" or "2" against `n` hosts: at least 1.
pub fn batch_size(spec: &str, n: usize) -> Result<usize, String> {
    let spec = spec.trim();
    let size = if let Some(p) = spec.strip_suffix('%') {
        let p: usize = p.trim().parse().map_err(|_| format!("batch '{spec}' is not N or N%"))?;
        if p == 0 || p > 100 {
            return Err(format!("batch '{spec}' must be between 1% and 100%"));
        }
        (n * p).div_ceil(100)
    } else {
        let k: usize = spec.parse().map_err(|_| format!("batch '{spec}' is not N or N%"))?;
        if k == 0 {
            return Err("batch must be at least 1 host".into());
        }
        k
    };
    Ok(size.max(1))
}

/// Parses "0", "2" or "10%" against `n` hosts into a count of tolerated failures.
pub fn failure_budget(spec: &str, n: usize) -> Result<u32, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(0);
    }
    if let Some(p) = spec.strip_suffix('%') {
        let p: usize = p
            .trim()
            .parse()
            .map_err(|_| format!("max-failures '{spec}' is not N or N%"))?;
        if p > 100 {
            return Err(format!("max-failures '{spec}' is above 100%"));
        }
        return Ok((n * p / 100) as u32);
    }
    spec.parse()
        .map_err(|_| format!("max-failures '{spec}' is not N or N%"))
}

/// How offline hosts are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// Skipped now; they converge when they come back.
    Skip,
    /// Waited for, this long, then failed as unreachable.
    Wait(Duration),
}

/// Parses "skip" or "wait:5m".
pub fn parse_offline(spec: &str) -> Result<Offline, String> {
    match spec.trim() {
        "" | "skip" => Ok(Offline::Skip),
        s => {
            let d = s
                .strip_prefix("wait:")
                .and_then(|d| humantime::parse_duration(d).ok())
                .ok_or_else(|| format!("offline '{s}' is neither 'skip' nor 'wait:DURATION' (e.g. wait:5m)"))?;
            Ok(Offline::Wait(d))
        }
    }
}

fn matches(host: &Host, selector: &[(String, String)]) -> bool {
    selector.iter().all(|(k, v)| host.labels.get(k) == Some(v))
}

fn current_of(host: &Host, app: &str) -> String {
    host.inventory
        .as_ref()
        .and_then(|i| i.apps.iter().find(|a| a.app == app))
        .map(|a| a.current.clone())
        .unwrap_or_default()
}

/// Builds the plan: hosts, batches, budget (stored unless it is a dry run).
fn plan(fleet: &Fleet, req: &StartRolloutRequest, who: &str) -> Result<Rollout, Status> {
    let spec = fleet
        .store
        .app(&req.app)
        .map_err(internal)?
        .ok_or_else(|| unknown_app(&req.app))?;
    let version = if req.rollback {
        String::new()
    } else if req.latest || req.version.is_empty() {
        if !req.latest {
            return Err(Status::invalid_argument("give --version V or --latest"));
        }
        let newest = fleet.store.releases(&req.app).map_err(internal)?.into_iter().next();
        newest
            .and_then(|r| r.artifact)
            .map(|a| a.version)
            .ok_or_else(|| Status::failed_precondition(format!("{} has no releases; push one first", req.app)))?
    } else {
        fleet
            .store
            .release(&req.app, &req.version)
            .map_err(internal)?
            .ok_or_else(|| crate::releases::unknown_release(&req.app, &req.version))?;
        req.version.clone()
    };
    let mut selector = parse_selector(&spec.selector)?;
    selector.extend(parse_selector(&req.selector)?);
    let mut hosts: Vec<Host> = fleet
        .store
        .hosts()
        .map_err(internal)?
        .into_iter()
        .filter(|h| matches(h, &selector))
        .collect();
    if hosts.is_empty() {
        return Err(Status::failed_precondition(format!(
            "no host matches {}'s selector{}; check labels with 'fleetctl hosts ls'",
            req.app,
            if req.selector.is_empty() {
                String::new()
            } else {
                format!(" and {}", req.selector)
            }
        )));
    }
    hosts.sort_by(|a, b| {
        let name = |h: &Host| h.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default();
        name(a).cmp(&name(b)).then(a.id.cmp(&b.id))
    });
    let n = hosts.len();
    let default_batch = if req.rollback { "50%" } else { "25%" };
    let batch = if req.batch.is_empty() {
        default_batch
    } else {
        req.batch.as_str()
    };
    let size = batch_size(batch, n).map_err(Status::invalid_argument)?;
    let budget = failure_budget(&req.max_failures, n).map_err(Status::invalid_argument)?;
    parse_offline(&req.offline).map_err(Status::invalid_argument)?;
    if req.canary as usize >= n && req.canary > 0 {
        return Err(Status::invalid_argument(format!(
            "canary {} leaves no host for the batches after it ({n} hosts match)",
            req.canary
        )));
    }
    let entry = |h: &Host| RolloutHost {
        host_id: h.id.clone(),
        from_version: current_of(h, &req.app),
        state: "pending".into(),
        ..Default::default()
    };
    let mut batches = Vec::new();
    let canary = if req.rollback { 0 } else { req.canary as usize };
    let (first, rest) = hosts.split_at(canary);
    if !first.is_empty() {
        batches.push(RolloutBatch {
            hosts: first.iter().map(entry).collect(),
            state: "pending".into(),
            canary: true,
            ..Default::default()
        });
    }
    for chunk in rest.chunks(size) {
        batches.push(RolloutBatch {
            hosts: chunk.iter().map(entry).collect(),
            state: "pending".into(),
            canary: false,
            ..Default::default()
        });
    }
    let target = if req.rollback {
        "its previous release".to_string()
    } else {
        version.clone()
    };
    let mut text = format!(
        "{} {} on {n} host{} in {} batch{}; up to {budget} failed host{} tolerated ({}), then {}\n",
        if req.rollback { "roll back" } else { "roll out" },
        if req.rollback {
            req.app.clone()
        } else {
            format!("{} {version}", req.app)
        },
        if n == 1 { "" } else { "s" },
        batches.len(),
        if batches.len() == 1 { "" } else { "es" },
        if budget == 1 { "" } else { "s" },
        if req.max_failures.is_empty() {
            "max-failures 0"
        } else {
            req.max_failures.as_str()
        },
        if req.no_auto_rollback {
            "stop"
        } else {
            "roll the changed hosts back"
        },
    );
    for (i, b) in batches.iter().enumerate() {
        text.push_str(&format!(
            "batch {}{}:\n",
            i + 1,
            if b.canary { " (canary)" } else { "" }
        ));
        for h in &b.hosts {
            let name = hosts
                .iter()
                .find(|x| x.id == h.host_id)
                .and_then(|x| x.facts.as_ref().map(|f| f.hostname.clone()))
                .unwrap_or_default();
            let from = if h.from_version.is_empty() {
                "nothing"
            } else {
                &h.from_version
            };
            text.push_str(&format!("  {} {name}: {from} → {target}\n", h.host_id));
        }
    }
    Ok(Rollout {
        id: format!("r-{}", crate::random_hex(6)),
        app: req.app.clone(),
        version,
        state: if req.dry_run { "planned" } else { "running" }.into(),
        params: Some(req.clone()),
        batches,
        reason: String::new(),
        created_at_ms: now_ms(),
        ended_at_ms: 0,
        created_by: who.to_string(),
        failure_budget: budget,
        current_batch: 0,
        plan: text,
    })
}

/// `RolloutService`.
pub struct RolloutsService(pub Arc<Fleet>);

#[tonic::async_trait]
impl RolloutService for RolloutsService {
    async fn start_rollout(&self, req: Request<StartRolloutRequest>) -> Result<Response<Rollout>, Status> {
        let fleet = self.0.clone();
        let who = operator(&req).name;
        let req = req.into_inner();
        let rollout = plan(&fleet, &req, &who)?;
        if req.dry_run {
            return Ok(Response::new(rollout));
        }
        // One active rollout per app; checked and written under one lock so
        // two concurrent starts cannot both pass.
        let _guard = lock(&fleet.rollouts.controls);
        if let Some(running) = fleet.rollouts.active(&req.app).map_err(internal)? {
            return Err(Status::failed_precondition(format!(
                "{} already has rollout {} ({}, to {}); wait for it, or 'fleetctl rollout abort {}'",
                req.app,
                running.id,
                running.state,
                if running.version.is_empty() {
                    "previous"
                } else {
                    &running.version
                },
                running.id
            )));
        }
        fleet.rollouts.put(&rollout).map_err(internal)?;
        drop(_guard);
        fleet.store.flush().await.map_err(internal)?;
        tracing::info!(rollout_id = %rollout.id, app = %rollout.app, version = %rollout.version, hosts = rollout.batches.iter().map(|b| b.hosts.len()).sum::<usize>(), "rollout started");
        spawn(fleet, rollout.clone());
        Ok(Response::new(rollout))
    }

    async fn list_rollouts(&self, req: Request<ListRolloutsRequest>) -> Result<Response<ListRolloutsResponse>, Status> {
        let app = &req.get_ref().app;
        let rollouts = self
            .0
            .rollouts
            .all()
            .map_err(internal)?
            .into_iter()
            .filter(|r| app.is_empty() || &r.app == app)
            .collect();
        Ok(Response::new(ListRolloutsResponse { rollouts }))
    }

    async fn get_rollout(&self, req: Request<GetRolloutRequest>) -> Result<Response<Rollout>, Status> {
        Ok(Response::new(get(&self.0, &req.get_ref().id)?))
    }

    async fn control_rollout(&self, req: Request<ControlRolloutRequest>) -> Result<Response<Rollout>, Status> {
        let fleet = &self.0;
        let r = req.into_inner();
        let rollout = get(fleet, &r.id)?;
        if ended(&rollout.state) {
            return Err(Status::failed_precondition(format!(
                "rollout {} already ended ({})",
                rollout.id, rollout.state
            )));
        }
        let control = match r.action.as_str() {
            "pause" => Control::Pause,
            "resume" => Control::Run,
            "abort" => Control::Abort { rollback: r.rollback },
            other => {
                return Err(Status::invalid_argument(format!(
                    "action '{other}' is not pause, resume or abort"
                )))
            }
        };
        let sender = lock(&fleet.rollouts.controls).get(&rollout.id).cloned();
        match sender {
            Some(tx) => {
                tx.send_replace(control);
            }
            None => {
                return Err(Status::unavailable(format!(
                    "rollout {} has no engine running on this controller; try again in a moment",
                    rollout.id
                )))
            }
        }
        // The engine records the change; wait briefly so the answer shows it.
        let want = |r: &Rollout| match control {
            Control::Pause => r.state == "paused",
            Control::Run => r.state == "running",
            Control::Abort { .. } => ended(&r.state) || r.reason.contains("abort"),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = get(fleet, &rollout.id)?;
            if want(&now) || Instant::now() > deadline {
                return Ok(Response::new(now));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    type WatchRolloutStream = ReceiverStream<Result<Event, Status>>;

    async fn watch_rollout(
        &self,
        req: Request<GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let fleet = self.0.clone();
        let id = req.get_ref().id.clone();
        let mut events = fleet.rollouts.events(&id).subscribe();
        let snapshot = get(&fleet, &id)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let done = ended(&snapshot.state);
            let first = Event {
                at_ms: now_ms(),
                rollout_id: id.clone(),
                kind: "snapshot".into(),
                detail: snapshot.state.clone(),
                rollout: Some(snapshot),
                ..Default::default()
            };
            if tx.send(Ok(first)).await.is_err() || done {
                return;
            }
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let last = e.kind == "rollout_ended";
                        if tx.send(Ok(e)).await.is_err() || last {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: give it the state as it is now.
                        let Ok(now) = get(&fleet, &id) else { return };
                        let e = Event {
                            at_ms: now_ms(),
                            rollout_id: id.clone(),
                            kind: "snapshot".into(),
                            detail: now.state.clone(),
                            rollout: Some(now),
                            ..Default::default()
                        };
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn get(fleet: &Fleet, id: &str) -> Result<Rollout, Status> {
    fleet
        .rollouts
        .get(id)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no rollout '{id}'; list them with 'fleetctl rollout ls'")))
}

/// Starts an engine for every rollout a previous controller left running.
pub fn resume_all(fleet: &Arc<Fleet>) {
    match fleet.rollouts.all() {
        Ok(all) => {
            for r in all.into_iter().filter(|r| !ended(&r.state)) {
                tracing::info!(rollout_id = %r.id, app = %r.app, state = %r.state, batch = r.current_batch, "resuming rollout");
                spawn(fleet.clone(), r);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read rollouts to resume"),
    }
}

fn spawn(fleet: Arc<Fleet>, r: Rollout) {
    let initial = if r.state == "paused" {
        Control::Pause
    } else {
        Control::Run
    };
    let (tx, rx) = watch::channel(initial);
    lock(&fleet.rollouts.controls).insert(r.id.clone(), tx);
    let id = r.id.clone();
    tokio::spawn(async move {
        let mut engine = Engine {
            fleet: fleet.clone(),
            r,
            control: rx,
        };
        if let Err(e) = engine.run().await {
            tracing::error!(rollout_id = %id, error = %e, "rollout engine stopped on a store failure; it resumes at the next controller start");
        }
        lock(&fleet.rollouts.controls).remove(&id);
    });
}

/// How one host's part ended.
struct HostOutcome {
    state: &'static str,
    cause: FailureCause,
    detail: String,
}

struct Engine {
    fleet: Arc<Fleet>,
    r: Rollout,
    control: watch::Receiver<Control>,
}

impl Engine {
    fn params(&self) -> StartRolloutRequest {
        self.r.params.clone().unwrap_or_default()
    }

    /// Writes the rollout (and flushes when `durable`): before acting on it.
    async fn save(&self, durable: bool) -> Result<(), StoreError> {
        self.fleet.rollouts.put(&self.r)?;
        if durable {
            self.fleet.store.flush().await?;
        }
        Ok(())
    }

    fn emit(&self, kind: &str, host_id: &str, detail: String) {
        self.fleet.rollouts.emit(&self.r, kind, host_id, detail);
    }

    fn host_mut(&mut self, b: usize, host_id: &str) -> &mut RolloutHost {
        // Invariant: host ids come from this batch's own list.
        self.r.batches[b]
            .hosts
            .iter_mut()
            .find(|h| h.host_id == host_id)
            .expect("host of this batch")
    }

    fn failures(&self) -> u32 {
        self.r
            .batches
            .iter()
            .flat_map(|b| &b.hosts)
            .filter(|h| h.state == "failed")
            .count() as u32
    }

    /// Waits while paused; returns the abort request if one came.
    async fn checkpoint(&mut self) -> Result<Option<bool>, StoreError> {
        loop {
            let c = *self.control.borrow_and_update();
            match c {
                Control::Abort { rollback } => return Ok(Some(rollback)),
                Control::Run => {
                    if self.r.state == "paused" {
                        self.r.state = "running".into();
                        self.r.reason.clear();
                        self.save(true).await?;
                        self.emit("resumed", "", "resumed".into());
                    }
                    return Ok(None);
                }
                Control::Pause => {
                    if self.r.state != "paused" {
                        self.r.state = "paused".into();
                        if self.r.reason.is_empty() {
                            self.r.reason = format!("paused; continue with 'fleetctl rollout resume {}'", self.r.id);
                        }
                        self.save(true).await?;
                        self.emit("paused", "", self.r.reason.clone());
                    }
                    let _ = self.control.changed().await;
                }
            }
        }
    }

    async fn run(&mut self) -> Result<(), StoreError> {
        if self.r.current_batch == 0 && self.r.batches.iter().all(|b| b.state == "pending") {
            self.emit("rollout_started", "", self.r.plan.clone());
        }
        let params = self.params();
        let n_batches = self.r.batches.len();
        let mut b = self.r.current_batch as usize;
        while b < n_batches {
            if let Some(rollback) = self.checkpoint().await? {
                return self.abort(rollback).await;
            }
            if self.r.batches[b].state != "done" {
                self.r.current_batch = b as u32;
                self.r.batches[b].state = "running".into();
                self.r.batches[b].started_at_ms = now_ms();
                self.save(true).await?;
                self.emit("batch_started", "", format!("batch {} of {n_batches}", b + 1));
                self.run_batch(b).await?;
                let failed_here = self.r.batches[b].hosts.iter().any(|h| h.state == "failed");
                self.r.batches[b].state = if failed_here { "failed" } else { "done" }.into();
                self.r.batches[b].ended_at_ms = now_ms();
                self.save(true).await?;
                self.emit(
                    "batch_done",
                    "",
                    format!("batch {} of {n_batches} {}", b + 1, self.r.batches[b].state),
                );
                if self.failures() > self.r.failure_budget {
                    let reason = format!(
                        "{} host{} failed, more than the failure budget of {}: {}",
                        self.failures(),
                        if self.failures() == 1 { "" } else { "s" },
                        self.r.failure_budget,
                        self.failure_summary()
                    );
                    return self.stop(reason, !params.no_auto_rollback).await;
                }
                let last = b + 1 == n_batches;
                if self.r.batches[b].canary && !last {
                    if params.canary_approve {
                        self.r.reason = format!(
                            "canary batch done; approve the rest with 'fleetctl rollout resume {}'",
                            self.r.id
                        );
                        // The next checkpoint pauses until `rollout resume`.
                        if let Some(tx) = lock(&self.fleet.rollouts.controls).get(&self.r.id) {
                            tx.send_replace(Control::Pause);
                        }
                    } else if params.canary_wait_ms > 0 {
                        self.sleep(Duration::from_millis(params.canary_wait_ms)).await;
                    }
                } else if !last && params.pause_between_ms > 0 {
                    self.sleep(Duration::from_millis(params.pause_between_ms)).await;
                }
            }
            b += 1;
        }
        self.finish().await
    }

    /// Sleeps, but wakes for an abort.
    async fn sleep(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                r = self.control.changed() => {
                    if r.is_err() || matches!(*self.control.borrow(), Control::Abort { .. }) {
                        return;
                    }
                }
            }
        }
    }

    fn failure_summary(&self) -> String {
        self.r
            .batches
            .iter()
            .flat_map(|b| &b.hosts)
            .filter(|h| h.state == "failed")
            .map(|h| format!("{}: {}", h.host_id, h.detail.lines().next().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Runs every unfinished host of batch `b` at once, within the deadline.
    async fn run_batch(&mut self, b: usize) -> Result<(), StoreError> {
        let params = self.params();
        let deadline = match params.batch_deadline_ms {
            0 => DEFAULT_BATCH_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        let offline = parse_offline(&params.offline).unwrap_or(Offline::Skip);
        let (tx, mut rx) = mpsc::channel::<(String, Report)>(256);
        let mut pending = 0usize;
        let hosts: Vec<RolloutHost> = self.r.batches[b].hosts.clone();
        for h in hosts {
            if matches!(h.state.as_str(), "succeeded" | "failed" | "skipped" | "rolled_back") {
                continue;
            }
            pending += 1;
            let host = self.fleet.store.host(&h.host_id)?;
            let Some(host) = host else {
                self.host_done(
                    b,
                    &h.host_id,
                    HostOutcome {
                        state: "failed",
                        cause: FailureCause::Unreachable,
                        detail: "the host was removed from the fleet".into(),
                    },
                )
                .await?;
                pending -= 1;
                continue;
            };
            let target = self.r.version.clone();
            if !self.r.version.is_empty() && h.state == "pending" && current_of(&host, &self.r.app) == target {
                let connected = self.fleet.registry.sender(&h.host_id).is_some();
                if connected {
                    self.host_done(
                        b,
                        &h.host_id,
                        HostOutcome {
                            state: "skipped",
                            cause: FailureCause::Unspecified,
                            detail: format!("already runs {target}"),
                        },
                    )
                    .await?;
                    pending -= 1;
                    continue;
                }
            }
            // Choose the task id and record it before sending anything.
            let task_id = if h.state == "running" && !h.task_id.is_empty() {
                h.task_id.clone()
            } else {
                let id = format!("t-{}", crate::random_hex(8));
                let entry = self.host_mut(b, &h.host_id);
                entry.state = "running".into();
                entry.task_id = id.clone();
                entry.phase = "queued".into();
                id
            };
            let resuming = h.state == "running" && !h.task_id.is_empty();
            self.save(true).await?;
            let ctx = HostRun {
                fleet: self.fleet.clone(),
                rollout_id: self.r.id.clone(),
                app: self.r.app.clone(),
                version: self.r.version.clone(),
                from: h.from_version.clone(),
                host_id: h.host_id.clone(),
                task_id,
                resuming,
                offline,
                rollback: params.rollback,
            };
            let tx = tx.clone();
            tokio::spawn(async move { ctx.run(tx).await });
        }
        drop(tx);
        let until = tokio::time::Instant::now() + deadline;
        while pending > 0 {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(until) => None,
            };
            let Some((host_id, report)) = msg else { break };
            match report {
                Report::Phase(p) => {
                    let e = self.host_mut(b, &host_id);
                    e.phase = p.phase.clone();
                    let line = format!("{} {}", p.phase, state_word(p.state()));
                    if p.state() != TaskState::Running {
                        e.timeline.push(p);
                    }
                    self.save(false).await?;
                    self.emit("host_phase", &host_id, line);
                }
                Report::Done(o) => {
                    self.host_done(b, &host_id, o).await?;
                    pending -= 1;
                }
            }
        }
        // The deadline passed: what is left failed where it stood.
        let left: Vec<(String, String)> = self.r.batches[b]
            .hosts
            .iter()
            .filter(|h| h.state == "running" || h.state == "pending")
            .map(|h| (h.host_id.clone(), h.phase.clone()))
            .collect();
        for (host_id, phase) in left {
            let task_id = self.host_mut(b, &host_id).task_id.clone();
            self.fleet.tasks.forget(&task_id);
            let phase = if phase.is_empty() { "queued".to_string() } else { phase };
            self.host_done(
                b,
                &host_id,
                HostOutcome {
                    state: "failed",
                    cause: FailureCause::Timeout,
                    detail: format!(
                        "timed out in phase {phase} (batch deadline {})",
                        humantime::format_duration(deadline)
                    ),
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn host_done(&mut self, b: usize, host_id: &str, o: HostOutcome) -> Result<(), StoreError> {
        let e = self.host_mut(b, host_id);
        e.state = o.state.into();
        e.cause = o.cause.into();
        e.detail = o.detail.clone();
        e.phase.clear();
        self.save(true).await?;
        tracing::info!(rollout_id = %self.r.id, host_id, state = o.state, detail = %o.detail, "rollout host done");
        self.emit(
            "host_done",
            host_id,
            format!("{}: {}", o.state, o.detail.lines().next().unwrap_or_default()),
        );
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), StoreError> {
        self.r.state = "succeeded".into();
        self.r.ended_at_ms = now_ms();
        let skipped = self
            .r
            .batches
            .iter()
            .flat_map(|b| &b.hosts)
            .filter(|h| h.state == "skipped" && !h.detail.starts_with("already runs"))
            .count();
        self.r.reason = if skipped > 0 {
            format!("{skipped} offline host(s) skipped; they converge to it when they connect")
        } else {
            String::new()
        };
        if !self.r.version.is_empty() {
            self.fleet.rollouts.set_desired(&self.r.app, &self.r.version)?;
        }
        self.save(true).await?;
        tracing::info!(rollout_id = %self.r.id, app = %self.r.app, version = %self.r.version, "rollout succeeded");
        self.emit("rollout_ended", "", "succeeded".into());
        Ok(())
    }

    async fn abort(&mut self, rollback: bool) -> Result<(), StoreError> {
        let reason = format!(
            "aborted by an operator{}",
            if rollback { "; changed hosts rolled back" } else { "" }
        );
        self.stop(reason, rollback).await
    }

    /// Ends the rollout: rolls the changed hosts back when asked.
    async fn stop(&mut self, reason: String, rollback: bool) -> Result<(), StoreError> {
        self.r.reason = reason;
        if rollback {
            self.r.state = "rolling_back".into();
            self.save(true).await?;
            self.emit("rolling_back", "", self.r.reason.clone());
            self.roll_back_changed().await?;
            self.r.state = if self.r.reason.starts_with("aborted") {
                "aborted"
            } else {
                "rolled_back"
            }
            .into();
        } else {
            self.r.state = if self.r.reason.starts_with("aborted") {
                "aborted"
            } else {
                "failed"
            }
            .into();
        }
        self.r.ended_at_ms = now_ms();
        self.save(true).await?;
        tracing::warn!(rollout_id = %self.r.id, state = %self.r.state, reason = %self.r.reason, "rollout ended");
        self.emit("rollout_ended", "", format!("{}: {}", self.r.state, self.r.reason));
        Ok(())
    }

    /// Sends every host this rollout changed back to its `from_version`.
    async fn roll_back_changed(&mut self) -> Result<(), StoreError> {
        let changed: Vec<(usize, String, String)> = self
            .r
            .batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| {
                batch
                    .hosts
                    .iter()
                    .filter(|h| h.state == "succeeded")
                    .map(move |h| (b, h.host_id.clone(), h.from_version.clone()))
            })
            .collect();
        let spec = self.fleet.store.app(&self.r.app)?.unwrap_or_default();
        let mut waits = Vec::new();
        for (b, host_id, from) in changed {
            if from.is_empty() {
                let e = self.host_mut(b, &host_id);
                e.detail = "no earlier release on this host to roll back to; left as it is".into();
                continue;
            }
            let kind = task::Kind::Rollback(RollbackTask {
                app: self.r.app.clone(),
                to_version: from.clone(),
                spec: Some(spec.clone()),
            });
            match crate::tasks::send(&self.fleet, &host_id, &self.r.id, kind).await {
                Ok((_, rx)) => waits.push((b, host_id, from, rx)),
                Err(s) => {
                    let e = self.host_mut(b, &host_id);
                    e.detail = format!("rollback to {from} not sent: {}", s.message());
                }
            }
        }
        for (b, host_id, from, mut rx) in waits {
            let end = tokio::time::timeout(DEFAULT_BATCH_DEADLINE, async {
                while let Some(p) = rx.recv().await {
                    if is_final(&p) {
                        return Some(p);
                    }
                }
                None
            })
            .await
            .ok()
            .flatten();
            let e = self.host_mut(b, &host_id);
            match end {
                Some(p) if p.state() == TaskState::Succeeded => {
                    e.state = "rolled_back".into();
                    e.detail = format!("rolled back to {from}");
                }
                Some(p) => e.detail = format!("rollback to {from} failed: {}", p.detail),
                None => e.detail = format!("rollback to {from} did not finish"),
            }
            self.save(true).await?;
            self.emit("host_done", &host_id, e_detail(&self.r, b, &host_id));
        }
        Ok(())
    }
}

fn e_detail(r: &Rollout, b: usize, host_id: &str) -> String {
    r.batches[b]
        .hosts
        .iter()
        .find(|h| h.host_id == host_id)
        .map(|h| format!("{}: {}", h.state, h.detail))
        .unwrap_or_default()
}

fn state_word(s: TaskState) -> &'static str {
    match s {
        TaskState::Running => "running",
        TaskState::Succeeded => "ok",
        TaskState::Failed => "failed",
        TaskState::Unspecified => "?",
    }
}

enum Report {
    Phase(TaskProgress),
    Done(HostOutcome),
}

/// One host's deploy within a batch.
struct HostRun {
    fleet: Arc<Fleet>,
    rollout_id: String,
    app: String,
    version: String,
    from: String,
    host_id: String,
    task_id: String,
    resuming: bool,
    offline: Offline,
    rollback: bool,
}

impl HostRun {
    async fn run(self, tx: mpsc::Sender<(String, Report)>) {
        let outcome = self.drive(&tx).await;
        let _ = tx.send((self.host_id.clone(), Report::Done(outcome))).await;
    }

    async fn wait_connected(&self, up_to: Duration) -> bool {
        let until = Instant::now() + up_to;
        loop {
            if self.fleet.registry.sender(&self.host_id).is_some() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn drive(&self, tx: &mpsc::Sender<(String, Report)>) -> HostOutcome {
        let fail = |cause: FailureCause, detail: String| HostOutcome {
            state: "failed",
            cause,
            detail,
        };
        if self.resuming {
            // Re-attach: the agent may still run this task, or have finished it.
            let rx = self.fleet.tasks.register(&self.task_id, &self.host_id);
            if self.wait_connected(DEFAULT_BATCH_DEADLINE).await {
                // Hello stored its inventory before the stream was registered.
                let host = self.fleet.store.host(&self.host_id).ok().flatten().unwrap_or_default();
                let inv = host.inventory.clone().unwrap_or_default();
                if inv.running_tasks.contains(&self.task_id) {
                    tracing::info!(rollout_id = %self.rollout_id, host_id = %self.host_id, task_id = %self.task_id, "re-attached to a task in flight");
                    return self.follow(rx, tx).await;
                }
                self.fleet.tasks.forget(&self.task_id);
                let current = current_of(&host, &self.app);
                if !self.version.is_empty() && current == self.version {
                    return HostOutcome {
                        state: "succeeded",
                        cause: FailureCause::Unspecified,
                        detail: format!("finished while the controller was down; runs {current}"),
                    };
                }
                if self.version.is_empty() && current != self.from {
                    return HostOutcome {
                        state: "succeeded",
                        cause: FailureCause::Unspecified,
                        detail: format!("rolled back while the controller was down; runs {current}"),
                    };
                }
                // Unchanged: the task never reached the host (or it failed
                // and reverted there); it is sent now.
                tracing::info!(rollout_id = %self.rollout_id, host_id = %self.host_id, "the task of a restarted rollout did not change the host; sending it");
            } else {
                self.fleet.tasks.forget(&self.task_id);
            }
        }
        let progress = {
            if self.fleet.registry.sender(&self.host_id).is_none() {
                match self.offline {
                    Offline::Skip => {
                        return HostOutcome {
                            state: "skipped",
                            cause: FailureCause::Unreachable,
                            detail: "offline; it converges to the app's release when it connects".into(),
                        }
                    }
                    Offline::Wait(d) => {
                        if !self.wait_connected(d).await {
                            return fail(
                                FailureCause::Unreachable,
                                format!("offline for the {} the rollout waits", humantime::format_duration(d)),
                            );
                        }
                    }
                }
            }
            let spec = match self.fleet.store.app(&self.app) {
                Ok(Some(s)) => s,
                _ => return fail(FailureCause::Invalid, format!("app {} is gone", self.app)),
            };
            let kind = if self.rollback {
                task::Kind::Rollback(RollbackTask {
                    app: self.app.clone(),
                    to_version: String::new(),
                    spec: Some(spec),
                })
            } else {
                let release = match self.fleet.store.release(&self.app, &self.version) {
                    Ok(Some(r)) => r,
                    _ => return fail(FailureCause::Invalid, format!("release {} is gone", self.version)),
                };
                task::Kind::Deploy(DeployTask {
                    app: self.app.clone(),
                    release: release.artifact,
                    spec: Some(spec),
                })
            };
            match crate::tasks::send_as(&self.fleet, &self.host_id, &self.rollout_id, &self.task_id, kind).await {
                Ok(rx) => rx,
                Err(s) => return fail(FailureCause::Unreachable, s.message().to_string()),
            }
        };
        self.follow(progress, tx).await
    }

    /// Forwards a task's phases until it ends.
    async fn follow(
        &self,
        mut progress: mpsc::Receiver<TaskProgress>,
        tx: &mpsc::Sender<(String, Report)>,
    ) -> HostOutcome {
        while let Some(p) = progress.recv().await {
            if is_final(&p) {
                return if p.state() == TaskState::Succeeded {
                    HostOutcome {
                        state: "succeeded",
                        cause: FailureCause::Unspecified,
                        detail: p.detail,
                    }
                } else {
                    let mut detail = p.detail.clone();
                    if p.reverted {
                        detail.push_str(&format!(" (the host reverted to {})", p.current));
                    }
                    HostOutcome {
                        state: "failed",
                        cause: p.cause(),
                        detail,
                    }
                };
            }
            if tx.send((self.host_id.clone(), Report::Phase(p))).await.is_err() {
                break;
            }
        }
        HostOutcome {
            state: "failed",
            cause: FailureCause::Unreachable,
            detail: "the host's progress stopped".into(),
        }
    }
}

/// Sends a host that just connected the desired release of every app it
/// should run and does not, unless a rollout of that app is under way.
pub async fn converge(fleet: Arc<Fleet>, host_id: String) {
    let Ok(Some(host)) = fleet.store.host(&host_id) else {
        return;
    };
    let Ok(apps) = fleet.store.apps() else { return };
    let inv = host.inventory.clone().unwrap_or_default();
    if !inv.running_tasks.is_empty() {
        return;
    }
    for spec in apps {
        let Ok(Some(version)) = fleet.rollouts.desired(&spec.name) else {
            continue;
        };
        let Ok(selector) = parse_selector(&spec.selector) else {
            continue;
        };
        if !matches(&host, &selector) || current_of(&host, &spec.name) == version {
            continue;
        }
        if matches!(fleet.rollouts.active(&spec.name), Ok(Some(_))) {
            continue;
        }
        let Ok(Some(release)) = fleet.store.release(&spec.name, &version) else {
            continue;
        };
        let kind = task::Kind::Deploy(DeployTask {
            app: spec.name.clone(),
            release: release.artifact,
            spec: Some(spec.clone()),
        });
        match crate::tasks::send(&fleet, &host_id, "", kind).await {
            Ok((task_id, mut rx)) => {
                tracing::info!(host_id, app = %spec.name, version, task_id, "converging a host to the app's release");
                let app = spec.name.clone();
                let host = host_id.clone();
                tokio::spawn(async move {
                    while let Some(p) = rx.recv().await {
                        if is_final(&p) {
                            tracing::info!(host_id = %host, app, ok = p.state() == TaskState::Succeeded, detail = %p.detail, "convergence finished");
                            return;
                        }
                    }
                });
            }
            Err(s) => tracing::warn!(host_id, app = %spec.name, error = %s.message(), "cannot converge the host"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes() {
        assert_eq!(batch_size("25%", 4), Ok(1));
        assert_eq!(batch_size("25%", 5), Ok(2));
        assert_eq!(batch_size("100%", 5), Ok(5));
        assert_eq!(batch_size("2", 5), Ok(2));
        assert_eq!(batch_size("1%", 3), Ok(1));
        assert!(batch_size("0", 3).is_err());
        assert!(batch_size("0%", 3).is_err());
        assert!(batch_size("lots", 3).is_err());
    }

    #[test]
    fn failure_budgets() {
        assert_eq!(failure_budget("0", 10), Ok(0));
        assert_eq!(failure_budget("", 10), Ok(0));
        assert_eq!(failure_budget("2", 10), Ok(2));
        assert_eq!(failure_budget("10%", 10), Ok(1));
        assert_eq!(failure_budget("10%", 9), Ok(0));
        assert!(failure_budget("x", 3).is_err());
    }

    #[test]
    fn offline_modes() {
        assert_eq!(parse_offline("skip"), Ok(Offline::Skip));
        assert_eq!(parse_offline("wait:5m"), Ok(Offline::Wait(Duration::from_secs(300))));
        assert!(parse_offline("wait").is_err());
        assert!(parse_offline("later").is_err());
    }
}
