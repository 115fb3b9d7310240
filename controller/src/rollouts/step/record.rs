//! [`apply`] and [`report`]: a change, or a host's progress report, made
//! to the rollout record, and what follows from it ([`Effect`]). Pure.

use super::*;

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

/// Takes a progress report of `host`'s task in batch `b` into the record:
/// a phase, or (when final) the host's outcome. Reports of other tasks are
/// ignored.
pub fn report(r: &mut Rollout, b: usize, host: &str, p: &TaskProgress) -> Vec<Effect> {
    let Some(h) = r
        .batches
        .get(b)
        .and_then(|bt| bt.hosts.iter().find(|h| h.host_id == host))
    else {
        return Vec::new();
    };
    if h.task_id != p.task_id || !h.state().in_flight() {
        return Vec::new();
    }
    let rolling_back = h.state() == HostState::RollingBack;
    if fleet_proto::phase::Phase::Done.is(&p.phase) && p.state() != TaskState::Running {
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
        let effects = host_ended(r, b, host, &outcome);
        if let Some(h) = host_mut(r, b, host) {
            h.reverted = p.reverted && p.state() != TaskState::Succeeded;
        }
        return effects;
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
