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
    /// When its stream ended while its task of this rollout ran (the agent
    /// runs it on): until when (ms) it is waited for before it is judged;
    /// 0 when that did not happen.
    pub back_by_ms: i64,
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

mod decide;
mod record;

pub use decide::next;
pub use record::{apply, report};

#[cfg(test)]
mod tests;
