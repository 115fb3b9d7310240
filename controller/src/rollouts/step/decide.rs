//! [`next`]: what the engine does next, from the record, its parameters
//! and the world the engine sees ([`View`]). Pure.

use super::*;

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
        let failed = failures(r) as usize;
        if reached == 0 && (skipped > 0 || failed > 0) {
            // Nothing was changed: that is not a success, whatever the
            // budget (a success makes the release the app's for new hosts,
            // and convergence would push a release that no host took).
            let reason = if failed == 0 {
                format!("no host was reachable: {}", skipped_words(skipped))
            } else {
                let mut why = format!(
                    "no host runs {}: {failed} host{} failed",
                    r.version,
                    if failed == 1 { "" } else { "s" }
                );
                if skipped > 0 {
                    why.push_str(&format!(", {}", skipped_words(skipped)));
                }
                why
            };
            return Next::Change(Change::End {
                state: RolloutState::Failed,
                reason,
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
/// host that is not connected is waited for until the restart's grace or
/// its own (`back_by_ms`) ends. A task is never sent twice.
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
        Some(hv) if v.now_ms < p.grace_until_ms.max(hv.back_by_ms) => None,
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
        None => Some(Next::Change(removed_host(b, &h.host_id))),
    }
}

/// When the next grace ends: the restart's, or that of a host whose stream
/// ended while its task ran (then hosts still away are judged).
fn waited_for(p: &Params, v: &View) -> Option<i64> {
    std::iter::once(p.grace_until_ms)
        .chain(v.hosts.values().map(|h| h.back_by_ms))
        .filter(|t| *t > v.now_ms)
        .min()
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
    let mut until = Some(waited_for(p, v).map_or(deadline, |t| t.min(deadline)));
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
            None => return Next::Change(removed_host(b, &h.host_id)),
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
    let mut until = waited_for(p, v);
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

/// The end of a host of batch `batch` that was removed from the fleet.
fn removed_host(batch: usize, host: &str) -> Change {
    Change::HostEnded {
        batch,
        host: host.to_string(),
        outcome: Outcome::new(
            HostState::Failed,
            FailureCause::Unreachable,
            "the host was removed from the fleet",
        ),
    }
}
