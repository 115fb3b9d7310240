//! Records written before states were typed (record version 1): the same
//! field numbers, with states as strings. Decoded only to be upgraded.

use super::*;

#[derive(Clone, PartialEq, prost::Message)]
pub struct RolloutV1 {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub app: String,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(string, tag = "4")]
    pub state: String,
    #[prost(message, optional, tag = "5")]
    pub params: Option<StartRolloutRequest>,
    #[prost(message, repeated, tag = "6")]
    pub batches: Vec<BatchV1>,
    #[prost(string, tag = "7")]
    pub reason: String,
    #[prost(int64, tag = "8")]
    pub created_at_ms: i64,
    #[prost(int64, tag = "9")]
    pub ended_at_ms: i64,
    #[prost(string, tag = "10")]
    pub created_by: String,
    #[prost(uint32, tag = "11")]
    pub failure_budget: u32,
    #[prost(uint32, tag = "12")]
    pub current_batch: u32,
    #[prost(string, tag = "13")]
    pub plan: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchV1 {
    #[prost(message, repeated, tag = "1")]
    pub hosts: Vec<HostV1>,
    #[prost(string, tag = "2")]
    pub state: String,
    #[prost(bool, tag = "3")]
    pub canary: bool,
    #[prost(int64, tag = "4")]
    pub started_at_ms: i64,
    #[prost(int64, tag = "5")]
    pub ended_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HostV1 {
    #[prost(string, tag = "1")]
    pub host_id: String,
    #[prost(string, tag = "2")]
    pub from_version: String,
    #[prost(string, tag = "3")]
    pub state: String,
    #[prost(message, repeated, tag = "4")]
    pub timeline: Vec<TaskProgress>,
    #[prost(enumeration = "FailureCause", tag = "5")]
    pub cause: i32,
    #[prost(string, tag = "6")]
    pub detail: String,
    #[prost(string, tag = "7")]
    pub phase: String,
    #[prost(string, tag = "8")]
    pub task_id: String,
}

fn rollout_state(s: &str) -> RolloutState {
    match s {
        "planned" => RolloutState::Planned,
        "running" => RolloutState::Running,
        "paused" => RolloutState::Paused,
        "rolling_back" => RolloutState::RollingBack,
        "succeeded" => RolloutState::Succeeded,
        "failed" => RolloutState::Failed,
        "rolled_back" => RolloutState::RolledBack,
        "aborted" => RolloutState::Aborted,
        _ => RolloutState::Unspecified,
    }
}

fn batch_state(s: &str) -> BatchState {
    match s {
        "pending" => BatchState::Pending,
        "running" => BatchState::Running,
        "done" => BatchState::Done,
        "failed" => BatchState::Failed,
        _ => BatchState::Unspecified,
    }
}

fn host_state(s: &str) -> HostState {
    match s {
        "pending" => HostState::Pending,
        "running" => HostState::Running,
        "succeeded" => HostState::Succeeded,
        "failed" => HostState::Failed,
        "rolled_back" => HostState::RolledBack,
        "skipped" => HostState::Skipped,
        _ => HostState::Unspecified,
    }
}

/// The typed record of a version-1 one. A version-1 rollback had no
/// version (each host went to its own previous release): its hosts'
/// target is left empty. A version-1 rollout still running had sent the
/// tasks of its running hosts (it recorded them before sending).
pub fn upgrade(old: RolloutV1) -> Rollout {
    let rollback = old.params.as_ref().is_some_and(|p| p.rollback);
    let whole = old.params.as_ref().is_none_or(|p| p.selector.is_empty());
    let mut r = Rollout {
        id: old.id,
        app: old.app,
        version: old.version.clone(),
        params: old.params,
        reason: old.reason,
        created_at_ms: old.created_at_ms,
        ended_at_ms: old.ended_at_ms,
        created_by: old.created_by,
        failure_budget: old.failure_budget,
        current_batch: old.current_batch,
        plan: old.plan,
        whole_selection: whole && !rollback,
        batch_size: old
            .batches
            .iter()
            .filter(|b| !b.canary)
            .map(|b| b.hosts.len())
            .max()
            .unwrap_or(1) as u32,
        ..Default::default()
    };
    let state = rollout_state(&old.state);
    r.set_state(state);
    r.set_kind(if rollback {
        RolloutKind::Rollback
    } else {
        RolloutKind::Rollout
    });
    if matches!(state, RolloutState::Aborted) {
        r.set_stop(StopCause::Aborted);
    }
    for b in old.batches {
        let mut nb = RolloutBatch {
            canary: b.canary,
            started_at_ms: b.started_at_ms,
            ended_at_ms: b.ended_at_ms,
            ..Default::default()
        };
        nb.set_state(batch_state(&b.state));
        for h in b.hosts {
            let mut st = host_state(&h.state);
            if st == HostState::Skipped && h.detail.starts_with("already runs") {
                // Version 1 kept "already runs" apart only in words.
                st = HostState::Unchanged;
            }
            let mut nh = RolloutHost {
                host_id: h.host_id,
                from_version: h.from_version,
                timeline: h.timeline,
                cause: h.cause,
                detail: h.detail,
                phase: h.phase,
                task_id: h.task_id,
                to_version: old.version.clone(),
                task_sent_at_ms: if st == HostState::Running {
                    old.created_at_ms.max(1)
                } else {
                    0
                },
                ..Default::default()
            };
            nh.set_state(st);
            nb.hosts.push(nh);
        }
        r.batches.push(nb);
    }
    r
}
