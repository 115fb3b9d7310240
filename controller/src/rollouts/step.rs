//! The rollout engine's decisions, as pure functions.
//!
//! [`next`] looks at a rollout record, its parameters and what the engine
//! sees of the world now ([`View`]: the clock, the operator's control, which
//! hosts are connected and what they run, which tasks the engine is
//! following) and says what to do next. [`apply`] makes a [`Change`] to the
//! record and says what follows from it ([`Effect`]: events to emit, desired
//! releases to record); [`report`] does the same for a host's progress
//! report. None of them does I/O, so every rule is unit-tested here, and a
//! property test drives them through random worlds.
//!
//! The driver (`engine`) does `let next = next(..); apply; save; act`.

use std::collections::{HashMap, HashSet};

use fleet_proto::rollout::OfflinePolicy;
use fleet_proto::{
    BatchState, EventKind, FailureCause, HostState, Rollout, RolloutHost, RolloutKind, RolloutState, StopCause,
    TaskProgress, TaskState,
};

/// A batch's deadline when the rollout names none.
pub const DEFAULT_BATCH_DEADLINE_MS: i64 = 10 * 60 * 1000;

pub use crate::rollout_hub::Control;

/// The rules a rollout runs under, read once from its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// How long one batch may run.
    pub batch_deadline_ms: i64,
    /// What to do with hosts that are not connected.
    pub offline: OfflinePolicy,
    /// Wait after the canary batch.
    pub canary_wait_ms: i64,
    /// Wait for `rollout resume` after the canary batch.
    pub canary_approve: bool,
    /// Wait between batches.
    pub pause_between_ms: i64,
    /// Move changed hosts back when the budget is exceeded.
    pub auto_rollback: bool,
    /// After a controller restart, no host is judged offline before this
    /// time (ms), so hosts that have not reconnected yet are not skipped.
    pub grace_until_ms: i64,
}

impl Params {
    /// The parameters of a stored rollout (they were validated when it was
    /// planned; an unreadable offline policy falls back to skip).
    pub fn of(r: &Rollout, grace_until_ms: i64) -> Params {
        let p = r.params.clone().unwrap_or_default();
        Params {
            batch_deadline_ms: match p.batch_deadline_ms {
                0 => DEFAULT_BATCH_DEADLINE_MS,
                ms => ms.min(i64::MAX as u64) as i64,
            },
            offline: OfflinePolicy::of_request(&p.offline).unwrap_or(OfflinePolicy::Skip),
            canary_wait_ms: p.canary_wait_ms.min(i64::MAX as u64) as i64,
            canary_approve: p.canary_approve,
            pause_between_ms: p.pause_between_ms.min(i64::MAX as u64) as i64,
            auto_rollback: !p.no_auto_rollback,
            grace_until_ms,
        }
    }
}

/// What the engine sees of one host now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostView {
    /// Its stream is open.
    pub connected: bool,
    /// The release its `current` names (from its inventory); empty for none.
    pub current: String,
    /// Tasks the agent said it has accepted and not finished.
    pub running_tasks: Vec<String>,
}

/// What the engine sees of the world now.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// The clock (ms).
    pub now_ms: i64,
    /// The operator's latest control.
    pub control: Control,
    /// Hosts that still exist, by id.
    pub hosts: &'a HashMap<String, HostView>,
    /// Task ids whose reports the engine receives.
    pub following: &'a HashSet<String>,
}

/// The engine's next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing to do until a report, a control, a connection, or this time.
    Wait {
        /// Wake at this time (ms) even if nothing happens.
        until_ms: Option<i64>,
    },
    /// Record this change, then act on its effects.
    Change(Change),
    /// Hand the recorded task of this host to its stream, then record it sent.
    Send {
        /// Batch index.
        batch: usize,
        /// Host id.
        host: String,
    },
    /// Receive the reports of this host's task (the agent still runs it).
    Follow {
        /// Host id.
        host: String,
        /// The task.
        task_id: String,
    },
    /// The rollout is over.
    Done,
}

/// A change to the rollout record.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Stop before the next batch.
    Pause {
        /// Shown to operators.
        reason: String,
    },
    /// Continue (and approve a canary that waits for it).
    Resume,
    /// Start batch `batch`.
    StartBatch {
        /// Batch index.
        batch: usize,
    },
    /// Give a host a task (recorded before it is sent).
    Assign {
        /// Batch index.
        batch: usize,
        /// Host id.
        host: String,
        /// The new task's id (chosen by the driver).
        task_id: String,
    },
    /// The host's task was handed to its stream.
    Sent {
        /// Batch index.
        batch: usize,
        /// Host id.
        host: String,
    },
    /// A host's part ended.
    HostEnded {
        /// Batch index.
        batch: usize,
        /// Host id.
        host: String,
        /// How it ended.
        outcome: Outcome,
    },
    /// Every host of the current batch ended.
    EndBatch {
        /// Batch index.
        batch: usize,
    },
    /// Go on to the next batch.
    NextBatch,
    /// Start moving the changed hosts back.
    BeginRollback {
        /// Why.
        cause: StopCause,
        /// In words.
        reason: String,
    },
    /// Give a changed host its rollback task (recorded before it is sent).
    AssignRollback {
        /// Batch index.
        batch: usize,
        /// Host id.
        host: String,
        /// The new task's id (chosen by the driver).
        task_id: String,
    },
    /// The rollout ends.
    End {
        /// Final state.
        state: RolloutState,
        /// Why, when it did not succeed.
        reason: String,
    },
}

/// How a host's part ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The host's new state (an ended one).
    pub state: HostState,
    /// Why it failed, when it did.
    pub cause: FailureCause,
    /// In words.
    pub detail: String,
}

impl Outcome {
    fn new(state: HostState, cause: FailureCause, detail: impl Into<String>) -> Outcome {
        Outcome {
            state,
            cause,
            detail: detail.into(),
        }
    }
}

/// What follows from a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Emit an event.
    Emit {
        /// Kind.
        kind: EventKind,
        /// Host id, or empty.
        host: String,
        /// In words.
        detail: String,
    },
    /// The host should run this release of the app from now on.
    SetDesired {
        /// Host id.
        host: String,
        /// Version.
        version: String,
    },
    /// The app's release for new hosts.
    SetAppRelease {
        /// Version.
        version: String,
    },
    /// The engine stops following this task (it ended or was given up).
    Forget {
        /// Task id.
        task_id: String,
    },
    /// The operator's control becomes "pause", so only a `rollout resume`
    /// given after this pause continues (a canary approval is explicit).
    HoldPaused,
}

fn emit(kind: EventKind, host: &str, detail: impl Into<String>) -> Effect {
    Effect::Emit {
        kind,
        host: host.to_string(),
        detail: detail.into(),
    }
}

/// Hosts that ended failed, across the rollout.
pub fn failures(r: &Rollout) -> u32 {
    hosts(r).filter(|(_, h)| h.state() == HostState::Failed).count() as u32
}

fn hosts(r: &Rollout) -> impl Iterator<Item = (usize, &RolloutHost)> {
    r.batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| batch.hosts.iter().map(move |h| (b, h)))
}

/// Hosts the rollout changed that a rollback must move back, in plan order:
/// those whose batch timed out first (their task may still finish on the
/// agent; the rollback queues behind it on the same host), then those that
/// succeeded. A host with no earlier release stays where it is.
pub fn rollback_candidates(r: &Rollout) -> Vec<(usize, String)> {
    let wanted = |h: &RolloutHost| !h.from_version.is_empty() && h.from_version != h.to_version;
    // A host that timed out before its task was sent did not change.
    let timed_out = hosts(r).filter(|(_, h)| {
        h.state() == HostState::Failed && h.cause() == FailureCause::Timeout && h.task_sent_at_ms > 0 && wanted(h)
    });
    let succeeded = hosts(r).filter(|(_, h)| h.state() == HostState::Succeeded && wanted(h));
    timed_out
        .chain(succeeded)
        .map(|(b, h)| (b, h.host_id.clone()))
        .collect()
}

fn in_flight(r: &Rollout) -> usize {
    hosts(r).filter(|(_, h)| h.state().in_flight()).count()
}

/// The release a host's task moves it to (its target, or back to where it
/// was while rolling back).
pub fn task_target(h: &RolloutHost) -> &str {
    if h.state() == HostState::RollingBack {
        &h.from_version
    } else {
        &h.to_version
    }
}

fn earliest(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The state a host in flight ends in when its task succeeded: on its
/// target, or back where it was when the task was its rollback.
fn done_state(h: &RolloutHost) -> HostState {
    if h.state() == HostState::RollingBack {
        HostState::RolledBack
    } else {
        HostState::Succeeded
    }
}

/// The state a host in flight ends in when its task failed.
fn failed_state(h: &RolloutHost) -> HostState {
    if h.state() == HostState::RollingBack {
        HostState::RollbackFailed
    } else {
        HostState::Failed
    }
}

/// What to do next. `new_task_id` names a task the driver is about to record.
pub fn next(r: &Rollout, p: &Params, v: &View, new_task_id: &mut dyn FnMut() -> String) -> Next {
    let state = r.state();
    if state.ended() || state == RolloutState::Planned {
        return Next::Done;
    }
    if state == RolloutState::RollingBack {
        return rolling_back(r, p, v, new_task_id);
    }
    let b = r.current_batch as usize;
    let Some(batch) = r.batches.get(b) else {
        return Next::Change(Change::End {
            state: RolloutState::Succeeded,
            reason: String::new(),
        });
    };
    match batch.state() {
        BatchState::Running => running_batch(r, b, p, v, new_task_id),
        BatchState::Done | BatchState::Failed => after_batch(r, b, v),
        BatchState::Pending | BatchState::Unspecified => before_batch(r, b, p, v),
    }
}

/// Stop: roll the changed hosts back when asked and there are any.
fn stop(r: &Rollout, cause: StopCause, reason: String, rollback: bool) -> Next {
    if rollback && !rollback_candidates(r).is_empty() {
        return Next::Change(Change::BeginRollback { cause, reason });
    }
    let state = if cause == StopCause::Aborted {
        RolloutState::Aborted
    } else {
        RolloutState::Failed
    };
    Next::Change(Change::End { state, reason })
}

fn abort_reason(rollback: bool) -> String {
    format!(
        "aborted by an operator{}",
        if rollback { "; changed hosts rolled back" } else { "" }
    )
}

fn before_batch(r: &Rollout, b: usize, p: &Params, v: &View) -> Next {
    match v.control {
        Control::Abort { rollback } => return stop(r, StopCause::Aborted, abort_reason(rollback), rollback),
        Control::Pause if r.state() == RolloutState::Running => {
            return Next::Change(Change::Pause {
                reason: format!("paused; continue with 'fleetctl rollout resume {}'", r.id),
            })
        }
        Control::Run if r.state() == RolloutState::Paused => return Next::Change(Change::Resume),
        _ => {}
    }
    if r.state() == RolloutState::Paused {
        return Next::Wait { until_ms: None };
    }
    if let Some(prev) = b.checked_sub(1).and_then(|i| r.batches.get(i)) {
        if prev.canary {
            if p.canary_approve && !r.canary_approved {
                return Next::Change(Change::Pause {
                    reason: format!(
                        "canary batch done; approve the rest with 'fleetctl rollout resume {}'",
                        r.id
                    ),
                });
            }
            let until = prev.ended_at_ms.saturating_add(p.canary_wait_ms);
            if !p.canary_approve && v.now_ms < until {
                return Next::Wait { until_ms: Some(until) };
            }
        } else {
            let until = prev.ended_at_ms.saturating_add(p.pause_between_ms);
            if v.now_ms < until {
                return Next::Wait { until_ms: Some(until) };
            }
        }
    }
    Next::Change(Change::StartBatch { batch: b })
}

fn after_batch(r: &Rollout, b: usize, v: &View) -> Next {
    if let Control::Abort { rollback } = v.control {
        return stop(r, StopCause::Aborted, abort_reason(rollback), rollback);
    }
    let failed = failures(r);
    if failed > r.failure_budget {
        let summary: Vec<String> = hosts(r)
            .filter(|(_, h)| h.state() == HostState::Failed)
            .map(|(_, h)| format!("{}: {}", host_name(h), h.detail.lines().next().unwrap_or_default()))
            .collect();
        let reason = format!(
            "{failed} host{} failed, more than the failure budget of {}: {}",
            if failed == 1 { "" } else { "s" },
            r.failure_budget,
            summary.join("; ")
        );
        let auto = r.params.as_ref().is_none_or(|p| !p.no_auto_rollback);
        return stop(r, StopCause::FailureBudget, reason, auto);
    }
    if b + 1 >= r.batches.len() {
        let skipped = hosts(r).filter(|(_, h)| h.state() == HostState::Skipped).count();
        let reached = hosts(r)
            .filter(|(_, h)| matches!(h.state(), HostState::Succeeded | HostState::Unchanged))
            .count();
        if reached == 0 && skipped > 0 {
            // Nothing was changed: that is not a success, whatever the budget.
            return Next::Change(Change::End {
                state: RolloutState::Failed,
                reason: format!("no host was reachable: {}", skipped_words(skipped)),
            });
        }
        let reason = if skipped > 0 {
            skipped_words(skipped)
        } else {
            String::new()
        };
        return Next::Change(Change::End {
            state: RolloutState::Succeeded,
            reason,
        });
    }
    Next::Change(Change::NextBatch)
}

/// "2 offline hosts skipped; they converge to it when they connect".
fn skipped_words(n: usize) -> String {
    if n == 1 {
        "1 offline host skipped; it converges to the release when it connects".into()
    } else {
        format!("{n} offline hosts skipped; they converge to the release when they connect")
    }
}

/// A person's name for a host: its hostname, or its short id.
pub fn host_name(h: &RolloutHost) -> String {
    if h.hostname.is_empty() {
        fleet_proto::rollout::short_id(&h.host_id).to_string()
    } else {
        h.hostname.clone()
    }
}

/// Judges a host whose task was sent but whose reports nobody receives
/// (after a controller restart, or when its stream ended): follow it again
/// when the agent still runs it, else judge by what the host runs now. A
/// task is never sent twice.
fn reattach(b: usize, h: &RolloutHost, p: &Params, v: &View) -> Option<Next> {
    let target = task_target(h);
    let rolling_back = h.state() == HostState::RollingBack;
    match v.hosts.get(&h.host_id) {
        Some(hv) if hv.connected => {
            if hv.running_tasks.contains(&h.task_id) {
                return Some(Next::Follow {
                    host: h.host_id.clone(),
                    task_id: h.task_id.clone(),
                });
            }
            let outcome = if hv.current == target {
                Outcome::new(
                    done_state(h),
                    if rolling_back {
                        h.cause()
                    } else {
                        FailureCause::Unspecified
                    },
                    format!("its task finished while the controller was not watching; it runs {target}"),
                )
            } else {
                let runs = if hv.current.is_empty() { "nothing" } else { &hv.current };
                Outcome::new(
                    failed_state(h),
                    FailureCause::Agent,
                    format!(
                        "its task to {target} ended while the controller was not watching and it runs {runs}; \
                         its log on the host says why"
                    ),
                )
            };
            Some(Next::Change(Change::HostEnded {
                batch: b,
                host: h.host_id.clone(),
                outcome,
            }))
        }
        Some(_) if v.now_ms < p.grace_until_ms => None,
        Some(_) => {
            let outcome = Outcome::new(
                failed_state(h),
                FailureCause::Unreachable,
                format!("went offline while its task to {target} ran; what it did is in its inventory when it is back"),
            );
            Some(Next::Change(Change::HostEnded {
                batch: b,
                host: h.host_id.clone(),
                outcome,
            }))
        }
        None => Some(Next::Change(Change::HostEnded {
            batch: b,
            host: h.host_id.clone(),
            outcome: Outcome::new(
                HostState::Failed,
                FailureCause::Unreachable,
                "the host was removed from the fleet",
            ),
        })),
    }
}

/// The step for an in-flight host (its task recorded): send, re-attach, or wait.
fn in_flight_step(b: usize, h: &RolloutHost, p: &Params, v: &View) -> Option<Next> {
    if v.following.contains(&h.task_id) {
        return None;
    }
    if h.task_sent_at_ms == 0 {
        return match v.hosts.get(&h.host_id) {
            Some(hv) if hv.connected => Some(Next::Send {
                batch: b,
                host: h.host_id.clone(),
            }),
            Some(_) => offline(b, h, p, v, 0),
            None => reattach(b, h, p, v),
        };
    }
    reattach(b, h, p, v)
}

/// A host that is not connected and has not been sent its task.
fn offline(b: usize, h: &RolloutHost, p: &Params, v: &View, batch_started_ms: i64) -> Option<Next> {
    if v.now_ms < p.grace_until_ms {
        return None;
    }
    let outcome = match p.offline {
        OfflinePolicy::Skip => Outcome::new(
            HostState::Skipped,
            FailureCause::Unreachable,
            "offline; it converges to its desired release when it connects",
        ),
        OfflinePolicy::Wait(d) => {
            let until = batch_started_ms.saturating_add(d.as_millis() as i64);
            if batch_started_ms == 0 || v.now_ms < until {
                return None;
            }
            Outcome::new(
                HostState::Failed,
                FailureCause::Unreachable,
                format!("offline for the {} the rollout waits", humantime::format_duration(d)),
            )
        }
    };
    Some(Next::Change(Change::HostEnded {
        batch: b,
        host: h.host_id.clone(),
        outcome,
    }))
}

fn running_batch(r: &Rollout, b: usize, p: &Params, v: &View, new_task_id: &mut dyn FnMut() -> String) -> Next {
    let batch = &r.batches[b];
    let deadline = batch.started_at_ms.saturating_add(p.batch_deadline_ms);
    if v.now_ms >= deadline {
        if let Some(h) = batch.hosts.iter().find(|h| !h.state().ended()) {
            let phase = if h.phase.is_empty() { "queued" } else { &h.phase };
            return Next::Change(Change::HostEnded {
                batch: b,
                host: h.host_id.clone(),
                outcome: Outcome::new(
                    HostState::Failed,
                    FailureCause::Timeout,
                    format!(
                        "timed out in phase {phase} (batch deadline {})",
                        humantime::format_duration(std::time::Duration::from_millis(p.batch_deadline_ms as u64))
                    ),
                ),
            });
        }
    }
    let mut until = Some(deadline);
    if v.now_ms < p.grace_until_ms {
        until = earliest(until, p.grace_until_ms);
    }
    if let OfflinePolicy::Wait(d) = p.offline {
        let wait_end = batch.started_at_ms.saturating_add(d.as_millis() as i64);
        if v.now_ms < wait_end {
            until = earliest(until, wait_end);
        }
    }
    // Past the budget, or aborted: nothing new starts; the hosts in flight
    // finish, then the batch ends and the rollout stops.
    let stopping = matches!(v.control, Control::Abort { .. }) || failures(r) > r.failure_budget;
    // Every host of the batch is given its task before any is sent, so the
    // driver makes them durable in one write (the batch starts at once).
    let pending = batch
        .hosts
        .iter()
        .filter(|h| matches!(h.state(), HostState::Pending | HostState::Unspecified));
    for h in pending {
        if stopping {
            // The host stays untouched.
            continue;
        }
        match v.hosts.get(&h.host_id) {
            None => {
                return Next::Change(Change::HostEnded {
                    batch: b,
                    host: h.host_id.clone(),
                    outcome: Outcome::new(
                        HostState::Failed,
                        FailureCause::Unreachable,
                        "the host was removed from the fleet",
                    ),
                })
            }
            Some(hv) if hv.connected && hv.current == h.to_version => {
                return Next::Change(Change::HostEnded {
                    batch: b,
                    host: h.host_id.clone(),
                    outcome: Outcome::new(
                        HostState::Unchanged,
                        FailureCause::Unspecified,
                        format!("already runs {}", h.to_version),
                    ),
                })
            }
            Some(hv) if hv.connected => {
                return Next::Change(Change::Assign {
                    batch: b,
                    host: h.host_id.clone(),
                    task_id: new_task_id(),
                })
            }
            Some(_) => {
                if let Some(n) = offline(b, h, p, v, batch.started_at_ms) {
                    return n;
                }
            }
        }
    }
    for h in batch.hosts.iter().filter(|h| h.state() == HostState::Running) {
        if let Some(n) = in_flight_step(b, h, p, v) {
            return n;
        }
    }
    let open = batch
        .hosts
        .iter()
        .any(|h| !(h.state().ended() || (stopping && h.state() == HostState::Pending)));
    if !open {
        return Next::Change(Change::EndBatch { batch: b });
    }
    Next::Wait { until_ms: until }
}

fn rolling_back(r: &Rollout, p: &Params, v: &View, new_task_id: &mut dyn FnMut() -> String) -> Next {
    let mut until = None;
    if v.now_ms < p.grace_until_ms {
        until = earliest(until, p.grace_until_ms);
    }
    // A rollback may queue on the agent behind the late task of a host that
    // timed out, so it gets at least the default deadline.
    let rollback_deadline_ms = p.batch_deadline_ms.max(DEFAULT_BATCH_DEADLINE_MS);
    for (b, h) in hosts(r).filter(|(_, h)| h.state() == HostState::RollingBack) {
        if h.task_sent_at_ms > 0 {
            let deadline = h.task_sent_at_ms.saturating_add(rollback_deadline_ms);
            if v.now_ms >= deadline {
                return Next::Change(Change::HostEnded {
                    batch: b,
                    host: h.host_id.clone(),
                    outcome: Outcome::new(
                        HostState::RollbackFailed,
                        FailureCause::Timeout,
                        format!(
                            "the rollback to {} did not finish within {}",
                            h.from_version,
                            humantime::format_duration(std::time::Duration::from_millis(rollback_deadline_ms as u64))
                        ),
                    ),
                });
            }
            until = earliest(until, deadline);
        }
    }
    // Up to the batch size of hosts are given their rollback before any is
    // sent, so the driver makes them durable in one write.
    let limit = r.batch_size.max(1) as usize;
    if in_flight(r) < limit {
        if let Some((b, host)) = rollback_candidates(r).into_iter().next() {
            return Next::Change(Change::AssignRollback {
                batch: b,
                host,
                task_id: new_task_id(),
            });
        }
    }
    for (b, h) in hosts(r).filter(|(_, h)| h.state() == HostState::RollingBack) {
        if let Some(n) = in_flight_step(b, h, p, v) {
            // A host offline past the grace with its rollback unsent: it
            // cannot be moved back now.
            if let Next::Change(Change::HostEnded { outcome, .. }) = &n {
                if outcome.state == HostState::Skipped {
                    return Next::Change(Change::HostEnded {
                        batch: b,
                        host: h.host_id.clone(),
                        outcome: Outcome::new(
                            HostState::RollbackFailed,
                            FailureCause::Unreachable,
                            format!(
                                "offline; not moved back to {}: it converges to it when it connects",
                                h.from_version
                            ),
                        ),
                    });
                }
            }
            return n;
        }
    }
    if in_flight(r) > 0 {
        return Next::Wait { until_ms: until };
    }
    let state = if r.stop() == StopCause::Aborted {
        RolloutState::Aborted
    } else {
        RolloutState::RolledBack
    };
    Next::Change(Change::End {
        state,
        reason: r.reason.clone(),
    })
}

fn host_mut<'a>(r: &'a mut Rollout, b: usize, host: &str) -> Option<&'a mut RolloutHost> {
    r.batches.get_mut(b)?.hosts.iter_mut().find(|h| h.host_id == host)
}

/// Makes `change` to the record at `now_ms`; returns what follows from it.
pub fn apply(r: &mut Rollout, change: &Change, now_ms: i64) -> Vec<Effect> {
    let mut out = Vec::new();
    match change {
        Change::Pause { reason } => {
            r.set_state(RolloutState::Paused);
            r.reason = reason.clone();
            out.push(Effect::HoldPaused);
            out.push(emit(EventKind::Paused, "", reason.clone()));
        }
        Change::Resume => {
            r.set_state(RolloutState::Running);
            r.reason.clear();
            let b = r.current_batch as usize;
            if b > 0 && r.batches.get(b - 1).is_some_and(|prev| prev.canary) {
                r.canary_approved = true;
            }
            out.push(emit(EventKind::Resumed, "", "resumed"));
        }
        Change::StartBatch { batch } => {
            let n = r.batches.len();
            r.current_batch = *batch as u32;
            if let Some(bt) = r.batches.get_mut(*batch) {
                bt.set_state(BatchState::Running);
                bt.started_at_ms = now_ms;
            }
            out.push(emit(EventKind::BatchStarted, "", format!("batch {} of {n}", batch + 1)));
        }
        Change::Assign { batch, host, task_id } => {
            if let Some(h) = host_mut(r, *batch, host) {
                h.set_state(HostState::Running);
                h.task_id = task_id.clone();
                h.task_sent_at_ms = 0;
                h.phase = "queued".into();
            }
        }
        Change::AssignRollback { batch, host, task_id } => {
            if let Some(h) = host_mut(r, *batch, host) {
                h.set_state(HostState::RollingBack);
                h.task_id = task_id.clone();
                h.task_sent_at_ms = 0;
                h.phase = "queued".into();
            }
        }
        Change::Sent { batch, host } => {
            if let Some(h) = host_mut(r, *batch, host) {
                h.task_sent_at_ms = now_ms;
            }
        }
        Change::HostEnded { batch, host, outcome } => {
            out.extend(host_ended(r, *batch, host, outcome));
        }
        Change::EndBatch { batch } => {
            let n = r.batches.len();
            if let Some(bt) = r.batches.get_mut(*batch) {
                let failed = bt.hosts.iter().any(|h| h.state() == HostState::Failed);
                bt.set_state(if failed { BatchState::Failed } else { BatchState::Done });
                bt.ended_at_ms = now_ms;
                out.push(emit(
                    EventKind::BatchDone,
                    "",
                    format!("batch {} of {n} {}", batch + 1, bt.state().word()),
                ));
            }
        }
        Change::NextBatch => {
            r.current_batch += 1;
        }
        Change::BeginRollback { cause, reason } => {
            r.set_state(RolloutState::RollingBack);
            r.set_stop(*cause);
            r.reason = reason.clone();
            for b in &mut r.batches {
                for h in &mut b.hosts {
                    let changed = h.state() == HostState::Succeeded
                        || (h.state() == HostState::Failed
                            && h.cause() == FailureCause::Timeout
                            && h.task_sent_at_ms > 0);
                    if changed && h.from_version.is_empty() {
                        h.detail = format!(
                            "{}; no earlier release on this host to move back to, left on {}",
                            h.detail, h.to_version
                        );
                    }
                }
            }
            out.push(emit(EventKind::RollingBack, "", reason.clone()));
        }
        Change::End { state, reason } => {
            r.set_state(*state);
            r.reason = reason.clone();
            r.ended_at_ms = now_ms;
            if *state == RolloutState::Aborted && r.stop() == StopCause::Unspecified {
                r.set_stop(StopCause::Aborted);
            }
            if *state == RolloutState::Succeeded
                && r.whole_selection
                && r.kind() != RolloutKind::Converge
                && !r.version.is_empty()
            {
                out.push(Effect::SetAppRelease {
                    version: r.version.clone(),
                });
            }
            let words = if reason.is_empty() {
                state.word().to_string()
            } else {
                format!("{}: {reason}", state.word())
            };
            out.push(emit(EventKind::RolloutEnded, "", words));
        }
    }
    out
}

fn host_ended(r: &mut Rollout, b: usize, host: &str, o: &Outcome) -> Vec<Effect> {
    let mut out = Vec::new();
    let Some(h) = host_mut(r, b, host) else {
        return out;
    };
    if !h.task_id.is_empty() {
        out.push(Effect::Forget {
            task_id: h.task_id.clone(),
        });
    }
    let was_rolling_back = h.state() == HostState::RollingBack;
    h.set_state(o.state);
    if o.cause != FailureCause::Unspecified || !was_rolling_back {
        h.set_cause(o.cause);
    }
    h.detail = if was_rolling_back && !h.detail.is_empty() && o.state == HostState::RolledBack {
        format!("{}; moved back to {}", h.detail, h.from_version)
    } else if was_rolling_back && o.state == HostState::RolledBack {
        format!("moved back to {}", h.from_version)
    } else {
        o.detail.clone()
    };
    h.phase.clear();
    let desired = match o.state {
        HostState::Succeeded | HostState::Unchanged | HostState::Skipped => Some(h.to_version.clone()),
        HostState::RolledBack | HostState::RollbackFailed => Some(h.from_version.clone()),
        _ => None,
    };
    let line = format!("{}: {}", o.state.word(), h.detail.lines().next().unwrap_or_default());
    if let Some(version) = desired.filter(|v| !v.is_empty()) {
        out.push(Effect::SetDesired {
            host: host.to_string(),
            version,
        });
    }
    out.push(emit(EventKind::HostDone, host, line));
    out
}

/// Takes a progress report of a host's task into the record: a phase, or
/// (when final) the host's outcome. Reports of other tasks are ignored.
pub fn report(r: &mut Rollout, host: &str, p: &TaskProgress) -> Vec<Effect> {
    let Some((b, h)) = r
        .batches
        .iter()
        .enumerate()
        .find_map(|(b, bt)| bt.hosts.iter().find(|h| h.host_id == host).map(|h| (b, h)))
    else {
        return Vec::new();
    };
    if h.task_id != p.task_id || !h.state().in_flight() {
        return Vec::new();
    }
    let rolling_back = h.state() == HostState::RollingBack;
    if p.phase == "done" && p.state() != TaskState::Running {
        let target = task_target(h).to_string();
        let outcome = if p.state() == TaskState::Succeeded {
            Outcome::new(done_state(h), FailureCause::Unspecified, p.detail.clone())
        } else {
            let mut detail = if rolling_back {
                format!("the rollback to {target} failed: {}", p.detail)
            } else {
                p.detail.clone()
            };
            if p.reverted {
                detail.push_str(&format!(" (the host reverted to {})", p.current));
            }
            Outcome::new(failed_state(h), p.cause(), detail)
        };
        return host_ended(r, b, host, &outcome);
    }
    // Invariant: (b, host) was found above.
    let Some(h) = host_mut(r, b, host) else {
        return Vec::new();
    };
    h.phase = p.phase.clone();
    if p.state() != TaskState::Running {
        h.timeline.push(p.clone());
    }
    let word = match p.state() {
        TaskState::Running => "running",
        TaskState::Succeeded => "ok",
        TaskState::Failed => "failed",
        TaskState::Unspecified => "?",
    };
    vec![emit(EventKind::HostPhase, host, format!("{} {word}", p.phase))]
}

#[cfg(test)]
mod tests;
