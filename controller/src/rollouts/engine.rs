//! The rollout engine: one task per active rollout, owned by
//! the fleet's task tracker. It reads the world, asks [`step::next`] what to
//! do, records the change and makes it durable, then acts (sends a task,
//! emits events, records desired releases) — and waits for reports,
//! controls, connections or a deadline when there is nothing to do. Every
//! decision is in `step`; this file only does I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{now_ms, task, DeployTask, HostState, RollbackTask, Rollout, TaskProgress};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt, StreamMap};
use tracing::Instrument;

use super::step::{self, Change, Control, Effect, HostView, Next, Outcome, Params, View};
use crate::fleet::Fleet;
use crate::rollout_hub::{lock, Signal};
use crate::store::rollouts::{current_of, Touched};
use crate::store::StoreError;

/// How an engine starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A rollout just planned.
    Fresh,
    /// A rollout a previous controller left unfinished: hosts get the
    /// reconnect grace before any is judged offline.
    Resumed,
}

/// Starts the engine of `r` on the fleet's task tracker.
pub fn spawn(fleet: &Arc<Fleet>, r: Rollout, start: Start) {
    let initial = if r.state() == fleet_proto::RolloutState::Paused {
        Control::Pause
    } else {
        Control::Run
    };
    let (tx, rx) = watch::channel(initial);
    lock(&fleet.rollouts.controls).insert(r.id.clone(), tx);
    let grace_until_ms = match start {
        Start::Fresh => 0,
        Start::Resumed => now_ms() + fleet.settings.reconnect_grace.as_millis() as i64,
    };
    let span = tracing::info_span!("rollout", rollout_id = %r.id, app = %r.app, kind = r.kind().word());
    let engine = Engine {
        params: Params::of(&r, grace_until_ms),
        fleet: fleet.clone(),
        connections: fleet.registry.subscribe(),
        r,
        control: rx,
        hosts: HashMap::new(),
        away: HashMap::new(),
        following: StreamMap::new(),
        followed: HashMap::new(),
        followed_ids: HashSet::new(),
        start,
        dirty: false,
        unflushed: Vec::new(),
        phases_saved_at: None,
        places: Places::default(),
        touched: Touched::all(),
    };
    let f = fleet.clone();
    fleet.tracker.spawn(
        async move {
            let id = engine.r.id.clone();
            let app = engine.r.app.clone();
            if let Err(e) = engine.run().await {
                tracing::error!(error = %e, "rollout engine stopped on a store failure; it resumes at the next controller start");
            }
            lock(&f.rollouts.controls).remove(&id);
            f.rollouts.signal(Signal::AppFree(app));
        }
        .instrument(span),
    );
}

struct Engine {
    fleet: Arc<Fleet>,
    r: Rollout,
    params: Params,
    control: watch::Receiver<Control>,
    connections: watch::Receiver<u64>,
    /// What the engine saw of the rollout's hosts when it last looked.
    hosts: HashMap<String, HostView>,
    /// Hosts whose stream ended while their task ran, and until when
    /// they are waited for (`HostView::back_by_ms`).
    away: HashMap<String, i64>,
    /// Reports of the tasks being followed, by task id.
    following: StreamMap<String, ReceiverStream<TaskProgress>>,
    /// The followed tasks' ids, and the batch and host each is of (kept
    /// with `following`, so neither a report nor a decision walks every
    /// host or copies every id).
    followed: HashMap<String, (usize, String)>,
    followed_ids: HashSet<String>,
    start: Start,
    /// The record was written since the last flush.
    dirty: bool,
    /// Events of changes not yet durable.
    unflushed: Vec<(fleet_proto::EventKind, String, String)>,
    /// When hosts' phases were last written to the record (None: not since
    /// the last full write).
    phases_saved_at: Option<std::time::Instant>,
    /// Where each host's latest entry is in the record, for events.
    places: Places,
    /// The batches whose hosts changed since the record was last written.
    touched: Touched,
}

/// Each host's latest entry in a record (its last in batch order: a
/// rollback batch's once there is one), by host id: an event finds its host
/// without a walk through every host (that walk per event made a rollout
/// quadratic in its hosts). Rebuilt when the batches change.
#[derive(Default)]
struct Places {
    batches: usize,
    at: HashMap<String, (usize, usize)>,
}

impl Places {
    fn entry<'r>(&mut self, r: &'r Rollout, host_id: &str) -> Option<&'r fleet_proto::RolloutHost> {
        if host_id.is_empty() {
            return None;
        }
        if self.batches != r.batches.len() || self.at.is_empty() {
            self.at.clear();
            for (b, batch) in r.batches.iter().enumerate() {
                for (i, h) in batch.hosts.iter().enumerate() {
                    self.at.insert(h.host_id.clone(), (b, i));
                }
            }
            self.batches = r.batches.len();
        }
        let (b, i) = *self.at.get(host_id)?;
        r.batches.get(b)?.hosts.get(i).filter(|h| h.host_id == host_id)
    }

    /// Where `host_id` is in batch `batch`: its latest entry's index when
    /// that is in `batch`, else found by a walk of the batch (a host in an
    /// earlier batch than its latest entry: rare, during a rollback).
    fn index(&mut self, r: &Rollout, batch: usize, host_id: &str) -> Option<usize> {
        if self.entry(r, host_id).is_some() {
            if let Some(&(b, i)) = self.at.get(host_id) {
                if b == batch {
                    return Some(i);
                }
            }
        }
        r.batches.get(batch)?.hosts.iter().position(|h| h.host_id == host_id)
    }
}

/// How often hosts' phase reports are written to the rollout record at
/// most; every outcome and every change of the rollout is written at once.
const PHASE_SAVE_EVERY: Duration = Duration::from_millis(250);

/// Reports taken at one wake-up at most, before the engine decides again.
const DRAIN_AT_ONCE: usize = 1024;

enum Wake {
    Report(String, TaskProgress),
    Looked,
    Shutdown,
}

impl Engine {
    async fn run(mut self) -> Result<(), StoreError> {
        if self.start == Start::Fresh {
            self.fleet.metrics.rollout_started(self.r.kind().word());
            self.fleet.rollouts.emit(
                &self.r,
                fleet_proto::EventKind::RolloutStarted,
                None,
                "",
                self.r.plan.clone(),
            );
        }
        self.look()?;
        loop {
            let now = now_ms();
            let control = *self.control.borrow_and_update();
            let view = View {
                now_ms: now,
                control,
                hosts: &self.hosts,
                following: &self.followed_ids,
            };
            let mut new_task_id = || format!("t-{}", crate::random_hex(8));
            let next = step::next(&self.r, &self.params, &view, &mut new_task_id);
            match next {
                Next::Done => {
                    self.make_durable().await?;
                    break;
                }
                Next::Change(change) => {
                    let effects = self.change(&change, now);
                    self.record(effects)?;
                    match change {
                        Change::End { .. } => {
                            // The audit record is made durable with the end,
                            // before the end event releases `--wait`.
                            self.audit_end();
                            self.make_durable().await?;
                            self.ended();
                        }
                        // Other hosts matter now: look at them.
                        Change::NextBatch | Change::StartBatch { .. } | Change::BeginRollback { .. } => self.look()?,
                        _ => {}
                    }
                }
                Next::Send { batch, host } => {
                    // Durable before acted on: the task (and every change
                    // before it) is on disk before the host gets it.
                    self.make_durable().await?;
                    self.send(batch, &host).await?
                }
                Next::Follow { host, task_id } => {
                    tracing::info!(host_id = %host, task_id, "re-attached to a task in flight");
                    let rx = self.fleet.tasks.register(&task_id, &host);
                    // Once per task re-attached after a restart: a walk is fine.
                    let batch = self
                        .r
                        .batches
                        .iter()
                        .position(|b| b.hosts.iter().any(|h| h.task_id == task_id))
                        .unwrap_or(self.r.current_batch as usize);
                    self.follow(task_id, batch, host, rx);
                }
                Next::Wait { until_ms } => {
                    self.make_durable().await?;
                    match self.wait(until_ms).await {
                        Wake::Shutdown => return Ok(()),
                        Wake::Report(task_id, p) => {
                            self.on_report(&task_id, p).await?;
                            // Reports already here are taken too, before the
                            // next decision: one write of the record covers
                            // them all (a batch's hosts end close together).
                            for _ in 1..DRAIN_AT_ONCE {
                                let Some((task_id, p)) = self.ready_report() else { break };
                                self.on_report(&task_id, p).await?;
                            }
                        }
                        Wake::Looked => self.look()?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads what the hosts that matter now run and whether they are connected.
    fn look(&mut self) -> Result<(), StoreError> {
        let ids: Vec<String> = if self.r.state() == fleet_proto::RolloutState::RollingBack {
            self.r
                .batches
                .iter()
                .flat_map(|b| &b.hosts)
                .map(|h| h.host_id.clone())
                .collect()
        } else {
            self.r
                .batches
                .get(self.r.current_batch as usize)
                .map(|b| b.hosts.iter().map(|h| h.host_id.clone()).collect())
                .unwrap_or_default()
        };
        self.hosts.clear();
        for id in ids {
            if let Some(host) = self.fleet.store.host(&id)? {
                let inv = host.inventory.clone().unwrap_or_default();
                self.hosts.insert(
                    id.clone(),
                    HostView {
                        connected: self.fleet.registry.sender(&id).is_some(),
                        current: current_of(&host, &self.r.app),
                        running_tasks: inv.running_tasks,
                        back_by_ms: self.away.get(&id).copied().unwrap_or(0),
                    },
                );
            }
        }
        Ok(())
    }

    /// Writes the record and what follows from the change; the write
    /// becomes durable, and its events are emitted, at the next
    /// [`Engine::make_durable`] — which comes before anything is sent to a
    /// host and before the engine waits, so nothing is acted on or shown
    /// that a crash could take back (several changes share one flush).
    fn record(&mut self, effects: Vec<Effect>) -> Result<(), StoreError> {
        self.dirty = true;
        for e in effects {
            match e {
                Effect::Emit { kind, host, detail } => self.unflushed.push((kind, host, detail)),
                Effect::SetDesired { host, version } => {
                    self.fleet.rollouts.records.set_desired(&self.r.app, &host, &version)?;
                }
                Effect::SetAppRelease { version } => {
                    self.fleet.rollouts.records.set_app_release(&self.r.app, &version)?;
                }
                Effect::Forget { task_id } => {
                    self.fleet.tasks.forget(&task_id);
                    self.unfollow(&task_id);
                }
                Effect::HoldPaused => {
                    self.fleet.rollouts.control(&self.r.id, Control::Pause);
                    // The engine's own pause is not an operator's new request.
                    self.control.borrow_and_update();
                }
            }
        }
        Ok(())
    }

    /// Writes the record once for every change since the last time (each
    /// write encodes all of it: once per outcome made a rollout quadratic in
    /// its hosts), makes it durable, then emits the changes' events.
    async fn make_durable(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.fleet.rollouts.records.put_touched(&self.r, &self.touched)?;
            self.touched.clear();
            self.fleet.store.flush().await?;
            self.dirty = false;
        }
        for (kind, host, detail) in std::mem::take(&mut self.unflushed) {
            if kind == fleet_proto::EventKind::HostDone {
                tracing::info!(host_id = %host, detail = %detail, "rollout host done");
            }
            let entry = self.places.entry(&self.r, &host);
            self.fleet.rollouts.emit(&self.r, kind, entry, &host, detail);
        }
        Ok(())
    }

    fn ended(&self) {
        let state = self.r.state().word();
        let kind = self.r.kind().word();
        self.fleet.metrics.rollout_ended(kind, state);
        if self.r.state() == fleet_proto::RolloutState::Succeeded {
            tracing::info!(state, reason = %self.r.reason, "rollout ended");
        } else {
            tracing::warn!(state, reason = %self.r.reason, "rollout ended");
        }
    }

    /// Records how the rollout ended in the audit log, as its creator.
    fn audit_end(&self) {
        let state = self.r.state().word();
        let kind = self.r.kind().word();
        let hosts = super::rollout_hosts(&self.r);
        self.fleet.audit.write(&crate::audit::Record {
            at_ms: now_ms(),
            who: self.r.created_by.clone(),
            what: super::ROLLOUT_ENDED.into(),
            outcome: if self.r.reason.is_empty() {
                state.to_string()
            } else {
                format!("{state}: {}", self.r.reason)
            },
            target: format!("{kind}, {} hosts", hosts.len()),
            app: self.r.app.clone(),
            version: self.r.version.clone(),
            hosts: crate::audit::layer::listed(hosts),
            rollout_id: self.r.id.clone(),
            ..Default::default()
        });
    }

    /// Hands the recorded task of `host` to its stream.
    async fn send(&mut self, batch: usize, host: &str) -> Result<(), StoreError> {
        let Some(h) = self
            .r
            .batches
            .get(batch)
            .and_then(|b| b.hosts.iter().find(|h| h.host_id == host))
            .cloned()
        else {
            return Ok(());
        };
        let fail = |detail: String| Change::HostEnded {
            batch,
            host: host.to_string(),
            outcome: Outcome {
                state: if h.state() == HostState::RollingBack {
                    HostState::RollbackFailed
                } else {
                    HostState::Failed
                },
                cause: fleet_proto::FailureCause::Invalid,
                detail,
            },
        };
        let Some(spec) = self.fleet.store.app(&self.r.app)? else {
            let c = fail(format!("app {} was deleted", self.r.app));
            let effects = self.change(&c, now_ms());
            return self.record(effects);
        };
        let kind = if h.state() == HostState::RollingBack {
            task::Kind::Rollback(RollbackTask {
                app: self.r.app.clone(),
                to_version: h.from_version.clone(),
                spec: Some(spec),
            })
        } else {
            let Some(release) = self.fleet.store.release(&self.r.app, &h.to_version)? else {
                let c = fail(format!("release {} of {} is gone", h.to_version, self.r.app));
                let effects = self.change(&c, now_ms());
                return self.record(effects);
            };
            task::Kind::Deploy(DeployTask {
                app: self.r.app.clone(),
                release: release.artifact,
                spec: Some(spec),
            })
        };
        match self.fleet.dispatch().send_as(host, &self.r.id, &h.task_id, kind).await {
            Ok(rx) => {
                self.follow(h.task_id.clone(), batch, host.to_string(), rx);
                let effects = self.change(
                    &Change::Sent {
                        batch,
                        host: host.to_string(),
                    },
                    now_ms(),
                );
                self.record(effects)
            }
            Err(e) => {
                tracing::info!(host_id = %host, error = %e, "task not sent; the host is treated as offline");
                if let Some(v) = self.hosts.get_mut(host) {
                    v.connected = false;
                }
                Ok(())
            }
        }
    }

    /// Makes `change` to the record, noting which hosts it may have
    /// changed (for the next write of the record).
    fn change(&mut self, change: &Change, now_ms: i64) -> Vec<Effect> {
        match change {
            Change::Assign { batch, host, .. }
            | Change::AssignRollback { batch, host, .. }
            | Change::Sent { batch, host }
            | Change::HostEnded { batch, host, .. } => self.touch(*batch, host),
            // The head alone.
            Change::Pause { .. }
            | Change::Resume
            | Change::StartBatch { .. }
            | Change::EndBatch { .. }
            | Change::NextBatch
            | Change::End { .. } => {}
            Change::BeginRollback { .. } => self.touched.everything(),
        }
        step::apply(&mut self.r, change, now_ms)
    }

    /// Notes that `host`'s entry in `batch` may change (the whole batch when
    /// it is not found there).
    fn touch(&mut self, batch: usize, host: &str) {
        match self.places.index(&self.r, batch, host) {
            Some(i) => self.touched.host(batch, i),
            None => self.touched.batch(batch),
        }
    }

    fn follow(&mut self, task_id: String, batch: usize, host: String, rx: tokio::sync::mpsc::Receiver<TaskProgress>) {
        self.followed_ids.insert(task_id.clone());
        self.followed.insert(task_id.clone(), (batch, host));
        self.following.insert(task_id, ReceiverStream::new(rx));
    }

    fn unfollow(&mut self, task_id: &str) {
        self.following.remove(task_id);
        self.followed.remove(task_id);
        self.followed_ids.remove(task_id);
    }

    async fn on_report(&mut self, task_id: &str, p: TaskProgress) -> Result<(), StoreError> {
        let Some((batch, host)) = self.followed.get(task_id).cloned() else {
            self.unfollow(task_id);
            return Ok(());
        };
        if crate::tasks::went_away(&p) {
            // The host's stream ended (its controller, or a follower that
            // held it, died; the network broke); its agent runs the task
            // on. It is judged as after a restart: followed again when it
            // is back and still runs the task, else by what it runs; failed
            // as unreachable only if it is not back within the grace.
            tracing::info!(host_id = %host, task_id, "the host's stream ended while its task ran; waiting for it to come back");
            self.unfollow(task_id);
            let grace = self.fleet.settings.reconnect_grace.as_millis() as i64;
            self.away.insert(host, now_ms().saturating_add(grace));
            return self.look();
        }
        let fin = crate::tasks::is_final(&p);
        self.touch(batch, &host);
        let effects = step::report(&mut self.r, batch, &host, &p);
        if fin && !p.current.is_empty() {
            crate::store::rollouts::note_current(&self.fleet.store, &host, &self.r.app, &p.current)?;
        }
        if fin {
            self.unfollow(task_id);
            self.record(effects)
        } else {
            // A phase: recorded without waiting for the disk (the outcome is
            // what must be durable), at most every PHASE_SAVE_EVERY (each
            // write encodes the whole record: writing it for every phase of
            // every host made a rollout quadratic in its hosts), then shown.
            // Readers of the store see phases that late at most; watchers
            // get every one from the events.
            let due = self.phases_saved_at.is_none_or(|at| at.elapsed() >= PHASE_SAVE_EVERY);
            if due {
                self.fleet.rollouts.records.put_touched(&self.r, &self.touched)?;
                self.touched.clear();
                self.phases_saved_at = Some(std::time::Instant::now());
            }
            for e in effects {
                if let Effect::Emit { kind, host, detail } = e {
                    let entry = self.places.entry(&self.r, &host);
                    self.fleet.rollouts.emit(&self.r, kind, entry, &host, detail);
                }
            }
            Ok(())
        }
    }

    /// A report of a followed task that has already arrived, if any.
    fn ready_report(&mut self) -> Option<(String, TaskProgress)> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(&mut self.following).poll_next(&mut cx) {
            std::task::Poll::Ready(next) => next,
            std::task::Poll::Pending => None,
        }
    }

    async fn wait(&mut self, until_ms: Option<i64>) -> Wake {
        let sleep = async {
            match until_ms {
                Some(t) => {
                    let ms = (t - now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(ms)).await
                }
                None => std::future::pending().await,
            }
        };
        let shutdown = self.fleet.shutdown.clone();
        tokio::select! {
            _ = shutdown.cancelled() => Wake::Shutdown,
            Some((task_id, p)) = self.following.next(), if !self.following.is_empty() => Wake::Report(task_id, p),
            _ = self.control.changed() => Wake::Looked,
            _ = self.connections.changed() => Wake::Looked,
            _ = sleep => Wake::Looked,
        }
    }
}
