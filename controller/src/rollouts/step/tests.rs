//! The rules of `step`, one table case each; [`worlds`] runs the decisions
//! through random worlds and checks the rollout invariants.

use std::collections::{HashMap, HashSet, VecDeque};

use fleet_proto::rollout::OfflinePolicy;
use fleet_proto::{
    BatchState, EventKind, FailureCause, HostState, Rollout, RolloutBatch, RolloutHost, RolloutKind, RolloutState,
    StartRolloutRequest, StopCause, TaskProgress, TaskState,
};
use proptest::prelude::*;

use super::*;

fn host(id: &str, from: &str, to: &str) -> RolloutHost {
    let mut h = RolloutHost {
        host_id: id.into(),
        hostname: format!("web-{id}"),
        from_version: from.into(),
        to_version: to.into(),
        ..Default::default()
    };
    h.set_state(HostState::Pending);
    h
}

/// A rollout of `batches` (host ids per batch) from "1" to "2".
fn rollout(batches: &[&[&str]], budget: u32) -> Rollout {
    let mut r = Rollout {
        id: "r-1".into(),
        app: "demo".into(),
        version: "2".into(),
        failure_budget: budget,
        whole_selection: true,
        batch_size: batches.iter().map(|b| b.len()).max().unwrap_or(1) as u32,
        params: Some(StartRolloutRequest::default()),
        batches: batches
            .iter()
            .map(|ids| {
                let mut b = RolloutBatch {
                    hosts: ids.iter().map(|id| host(id, "1", "2")).collect(),
                    ..Default::default()
                };
                b.set_state(BatchState::Pending);
                b
            })
            .collect(),
        ..Default::default()
    };
    r.set_state(RolloutState::Running);
    r.set_kind(RolloutKind::Rollout);
    r
}

fn params() -> Params {
    Params {
        batch_deadline_ms: 1_000,
        offline: OfflinePolicy::Skip,
        canary_wait_ms: 0,
        canary_approve: false,
        pause_between_ms: 0,
        auto_rollback: true,
        grace_until_ms: 0,
    }
}

fn online(ids: &[&str], current: &str) -> HashMap<String, HostView> {
    ids.iter()
        .map(|id| {
            (
                id.to_string(),
                HostView {
                    connected: true,
                    current: current.into(),
                    ..Default::default()
                },
            )
        })
        .collect()
}

struct Case {
    now: i64,
    control: Control,
    hosts: HashMap<String, HostView>,
    following: HashSet<String>,
}

impl Case {
    fn new(hosts: HashMap<String, HostView>) -> Case {
        Case {
            now: 100,
            control: Control::Run,
            hosts,
            following: HashSet::new(),
        }
    }

    fn next(&self, r: &Rollout, p: &Params) -> Next {
        let v = View {
            now_ms: self.now,
            control: self.control,
            hosts: &self.hosts,
            following: &self.following,
        };
        let mut n = 0;
        next(r, p, &v, &mut || {
            n += 1;
            format!("t-{n}")
        })
    }

    /// Applies the change `next` gives (panics on anything else).
    fn change(&self, r: &mut Rollout, p: &Params) -> (Change, Vec<Effect>) {
        match self.next(r, p) {
            Next::Change(c) => {
                let e = apply(r, &c, self.now);
                (c, e)
            }
            other => panic!("expected a change, got {other:?} for {r:?}"),
        }
    }
}

fn final_report(task: &str, ok: bool) -> TaskProgress {
    let mut p = TaskProgress {
        task_id: task.into(),
        phase: "done".into(),
        detail: if ok {
            "healthy".into()
        } else {
            "health check failed".into()
        },
        ..Default::default()
    };
    p.set_state(if ok { TaskState::Succeeded } else { TaskState::Failed });
    if !ok {
        p.set_cause(FailureCause::Health);
    }
    p
}

fn state_of(r: &Rollout, id: &str) -> HostState {
    r.batches
        .iter()
        .flat_map(|b| &b.hosts)
        .find(|h| h.host_id == id)
        .map(|h| h.state())
        .expect("host in rollout")
}

/// Runs batch 0 of `r` to the point where host `id` was sent its task.
fn send_first(c: &mut Case, r: &mut Rollout, p: &Params, id: &str) -> String {
    assert!(matches!(c.change(r, p).0, Change::StartBatch { batch: 0 }));
    let (ch, _) = c.change(r, p);
    let Change::Assign { host, task_id, .. } = ch else {
        panic!("expected assign, got {ch:?}")
    };
    assert_eq!(host, id);
    assert_eq!(
        c.next(r, p),
        Next::Send {
            batch: 0,
            host: id.into()
        }
    );
    apply(
        r,
        &Change::Sent {
            batch: 0,
            host: id.into(),
        },
        c.now,
    );
    c.following.insert(task_id.clone());
    task_id
}

#[test]
fn a_batch_runs_its_hosts_and_a_success_records_the_desired_release() {
    let mut r = rollout(&[&["a"], &["b"]], 0);
    let p = params();
    let mut c = Case::new(online(&["a", "b"], "1"));
    let task = send_first(&mut c, &mut r, &p, "a");
    assert_eq!(
        c.next(&r, &p),
        Next::Wait { until_ms: Some(1_100) },
        "waits for the report, up to the deadline"
    );
    let effects = report(&mut r, 0, "a", &final_report(&task, true));
    assert_eq!(state_of(&r, "a"), HostState::Succeeded);
    assert!(effects.contains(&Effect::SetDesired {
        host: "a".into(),
        version: "2".into()
    }));
    c.following.clear();
    assert!(matches!(c.change(&mut r, &p).0, Change::EndBatch { batch: 0 }));
    assert_eq!(r.batches[0].state(), BatchState::Done);
    assert!(matches!(c.change(&mut r, &p).0, Change::NextBatch));
    assert!(matches!(c.change(&mut r, &p).0, Change::StartBatch { batch: 1 }));
}

#[test]
fn a_host_already_on_the_target_is_left_unchanged() {
    let mut r = rollout(&[&["a"]], 0);
    let p = params();
    let c = Case::new(online(&["a"], "2"));
    c.change(&mut r, &p);
    let (ch, effects) = c.change(&mut r, &p);
    assert!(matches!(ch, Change::HostEnded { .. }), "{ch:?}");
    assert_eq!(state_of(&r, "a"), HostState::Unchanged);
    assert!(effects.contains(&Effect::SetDesired {
        host: "a".into(),
        version: "2".into()
    }));
}

#[test]
fn offline_hosts_are_skipped_or_waited_for() {
    let mut offline = online(&["a"], "1");
    offline.get_mut("a").expect("a").connected = false;

    let mut r = rollout(&[&["a"]], 0);
    let c = Case::new(offline.clone());
    c.change(&mut r, &params());
    let (_, effects) = c.change(&mut r, &params());
    assert_eq!(state_of(&r, "a"), HostState::Skipped);
    assert!(
        effects.contains(&Effect::SetDesired {
            host: "a".into(),
            version: "2".into()
        }),
        "a skipped host converges to the target when it connects"
    );
    c.change(&mut r, &params());
    c.change(&mut r, &params());
    assert_eq!(
        r.state(),
        RolloutState::Failed,
        "a rollout that reached no host did not succeed"
    );
    assert!(r.reason.contains("no host was reachable"), "{}", r.reason);

    let wait = Params {
        offline: OfflinePolicy::Wait(std::time::Duration::from_millis(300)),
        ..params()
    };
    let mut r = rollout(&[&["a"]], 0);
    let mut c = Case::new(offline);
    c.change(&mut r, &wait);
    assert_eq!(c.next(&r, &wait), Next::Wait { until_ms: Some(400) });
    c.now = 400;
    c.change(&mut r, &wait);
    assert_eq!(state_of(&r, "a"), HostState::Failed);
}

#[test]
fn after_a_restart_no_host_is_judged_offline_within_the_grace() {
    let mut offline = online(&["a"], "1");
    offline.get_mut("a").expect("a").connected = false;
    let grace = Params {
        grace_until_ms: 5_000,
        batch_deadline_ms: 60_000,
        ..params()
    };
    let mut r = rollout(&[&["a"]], 0);
    let mut c = Case::new(offline);
    c.change(&mut r, &grace);
    assert_eq!(c.next(&r, &grace), Next::Wait { until_ms: Some(5_000) });
    // It reconnects within the grace: it is deployed, not skipped.
    c.hosts.get_mut("a").expect("a").connected = true;
    assert!(matches!(c.change(&mut r, &grace).0, Change::Assign { .. }));
}

#[test]
fn a_restarted_engine_re_attaches_or_judges_by_what_the_host_runs_and_never_resends() {
    let p = Params {
        grace_until_ms: 5_000,
        batch_deadline_ms: 60_000,
        ..params()
    };
    let sent = |state_current: &str, running: bool, connected: bool| {
        let mut r = rollout(&[&["a"]], 0);
        let mut c = Case::new(online(&["a"], "1"));
        send_first(&mut c, &mut r, &params(), "a");
        // The controller restarts: nobody follows the task any more.
        c.following.clear();
        let v = c.hosts.get_mut("a").expect("a");
        v.current = state_current.into();
        v.connected = connected;
        if running {
            v.running_tasks.push(r.batches[0].hosts[0].task_id.clone());
        }
        (r, c)
    };
    let (r, c) = sent("1", true, true);
    assert!(matches!(c.next(&r, &p), Next::Follow { .. }), "the agent still runs it");
    let (mut r, c) = sent("2", false, true);
    c.change(&mut r, &p);
    assert_eq!(state_of(&r, "a"), HostState::Succeeded, "finished while nobody watched");
    let (mut r, c) = sent("1", false, true);
    c.change(&mut r, &p);
    assert_eq!(
        state_of(&r, "a"),
        HostState::Failed,
        "ended without reaching 2; not sent again"
    );
    let (r, mut c) = sent("1", false, false);
    assert_eq!(
        c.next(&r, &p),
        Next::Wait { until_ms: Some(5_000) },
        "offline within the grace: wait"
    );
    c.now = 5_000;
    let mut r = r;
    c.change(&mut r, &p);
    assert_eq!(state_of(&r, "a"), HostState::Failed);
    assert_eq!(r.batches[0].hosts[0].cause(), FailureCause::Unreachable);
}

#[test]
fn a_host_whose_stream_ended_mid_task_is_waited_for_then_followed_or_judged() {
    let p = Params {
        batch_deadline_ms: 60_000,
        ..params()
    };
    // a's stream ended while its task ran (c.now is 100): the engine no
    // longer follows the task and waits for a until 3,000.
    let away = || {
        let mut r = rollout(&[&["a"]], 0);
        let mut c = Case::new(online(&["a"], "1"));
        send_first(&mut c, &mut r, &p, "a");
        c.following.clear();
        let v = c.hosts.get_mut("a").expect("a");
        v.connected = false;
        v.back_by_ms = 3_000;
        (r, c)
    };
    let (mut r, mut c) = away();
    assert_eq!(
        c.next(&r, &p),
        Next::Wait { until_ms: Some(3_000) },
        "woken when a's grace ends"
    );
    assert_eq!(state_of(&r, "a"), HostState::Running);
    // Not back by then: failed as unreachable.
    c.now = 3_000;
    c.change(&mut r, &p);
    assert_eq!(state_of(&r, "a"), HostState::Failed);
    assert_eq!(r.batches[0].hosts[0].cause(), FailureCause::Unreachable);
    // Back in time, still running its task: followed again, not sent again.
    let (r, mut c) = away();
    let task = r.batches[0].hosts[0].task_id.clone();
    let v = c.hosts.get_mut("a").expect("a");
    v.connected = true;
    v.running_tasks.push(task.clone());
    assert_eq!(
        c.next(&r, &p),
        Next::Follow {
            host: "a".into(),
            task_id: task
        }
    );
    // Back in time, its task ended on 2 while away: succeeded.
    let (mut r, mut c) = away();
    let v = c.hosts.get_mut("a").expect("a");
    v.connected = true;
    v.current = "2".into();
    c.change(&mut r, &p);
    assert_eq!(state_of(&r, "a"), HostState::Succeeded);
}

#[test]
fn a_batch_past_its_deadline_fails_what_is_left_as_timed_out() {
    let mut r = rollout(&[&["a"]], 0);
    let mut c = Case::new(online(&["a"], "1"));
    send_first(&mut c, &mut r, &params(), "a");
    c.now = 1_100;
    let (_, effects) = c.change(&mut r, &params());
    assert_eq!(state_of(&r, "a"), HostState::Failed);
    assert_eq!(r.batches[0].hosts[0].cause(), FailureCause::Timeout);
    assert!(effects.iter().any(|e| matches!(e, Effect::Forget { .. })));
}

#[test]
fn over_the_budget_the_changed_hosts_are_rolled_back_in_batches() {
    let mut r = rollout(&[&["a", "b"], &["c", "d"]], 1);
    r.batches[0].hosts[0].set_state(HostState::Succeeded);
    r.batches[0].hosts[1].set_state(HostState::Succeeded);
    r.batches[0].set_state(BatchState::Done);
    r.batches[1].hosts[0].set_state(HostState::Failed);
    r.batches[1].hosts[1].set_state(HostState::Failed);
    r.batches[1].set_state(BatchState::Failed);
    r.current_batch = 1;
    r.batch_size = 1;
    let p = params();
    let c = Case::new(online(&["a", "b", "c", "d"], "2"));
    let (ch, _) = c.change(&mut r, &p);
    assert!(
        matches!(
            ch,
            Change::BeginRollback {
                cause: StopCause::FailureBudget,
                ..
            }
        ),
        "{ch:?}"
    );
    assert!(r.reason.contains("failure budget of 1"), "{}", r.reason);
    assert!(matches!(c.change(&mut r, &p).0, Change::AssignRollback { .. }));
    // One at a time (batch size 1): the next step sends it, no second assign.
    assert!(matches!(c.next(&r, &p), Next::Send { .. }));
    let mut c2 = Case::new(online(&["a", "b", "c", "d"], "2"));
    let task = r.batches[0].hosts[0].task_id.clone();
    apply(
        &mut r,
        &Change::Sent {
            batch: 0,
            host: "a".into(),
        },
        c2.now,
    );
    c2.following.insert(task.clone());
    assert!(matches!(c2.next(&r, &p), Next::Wait { .. }), "batch size 1 in flight");
    let effects = report(&mut r, 0, "a", &final_report(&task, true));
    assert_eq!(state_of(&r, "a"), HostState::RolledBack);
    assert!(effects.contains(&Effect::SetDesired {
        host: "a".into(),
        version: "1".into()
    }));
}

#[test]
fn failures_within_the_budget_succeed_unless_no_host_took_the_release() {
    // Budget 2 of 2 (--max-failures 100%): a host that took the release
    // makes it a success with failures.
    let mut r = rollout(&[&["a", "b"]], 2);
    r.batches[0].hosts[0].set_state(HostState::Succeeded);
    r.batches[0].hosts[1].set_state(HostState::Failed);
    r.batches[0].set_state(BatchState::Failed);
    let c = Case::new(online(&["a", "b"], "2"));
    c.change(&mut r, &params());
    assert_eq!(r.state(), RolloutState::Succeeded, "{}", r.reason);

    // Every host failed: within the budget, still not a success.
    let mut r = rollout(&[&["a", "b"]], 2);
    r.batches[0].hosts[0].set_state(HostState::Failed);
    r.batches[0].hosts[1].set_state(HostState::Failed);
    r.batches[0].set_state(BatchState::Failed);
    let c = Case::new(online(&["a", "b"], "1"));
    let (ch, _) = c.change(&mut r, &params());
    assert!(matches!(ch, Change::End { .. }), "{ch:?}");
    assert_eq!(r.state(), RolloutState::Failed);
    assert_eq!(r.reason, "no host runs 2: 2 hosts failed");
}

#[test]
fn without_auto_rollback_the_rollout_stops_failed() {
    let mut r = rollout(&[&["a"], &["b"]], 0);
    r.params = Some(StartRolloutRequest {
        no_auto_rollback: true,
        ..Default::default()
    });
    r.batches[0].hosts[0].set_state(HostState::Failed);
    r.batches[0].set_state(BatchState::Failed);
    let c = Case::new(online(&["a", "b"], "1"));
    c.change(&mut r, &params());
    assert_eq!(r.state(), RolloutState::Failed);
    assert_eq!(state_of(&r, "b"), HostState::Pending, "later batches are not touched");
}

#[test]
fn pause_resume_and_abort_with_and_without_rollback() {
    let p = params();
    let mut r = rollout(&[&["a"], &["b"]], 0);
    let mut c = Case::new(online(&["a", "b"], "1"));
    c.control = Control::Pause;
    let (_, effects) = c.change(&mut r, &p);
    assert_eq!(r.state(), RolloutState::Paused);
    assert!(effects.contains(&Effect::HoldPaused));
    assert_eq!(c.next(&r, &p), Next::Wait { until_ms: None });
    c.control = Control::Run;
    c.change(&mut r, &p);
    assert_eq!(r.state(), RolloutState::Running);

    // Abort before anything changed: nothing to move back.
    c.control = Control::Abort { rollback: true };
    c.change(&mut r, &p);
    assert_eq!(r.state(), RolloutState::Aborted);

    // Abort with rollback after a host changed.
    let mut r = rollout(&[&["a"], &["b"]], 0);
    r.batches[0].hosts[0].set_state(HostState::Succeeded);
    r.batches[0].set_state(BatchState::Done);
    c.control = Control::Abort { rollback: true };
    let (ch, _) = c.change(&mut r, &p);
    assert!(matches!(
        ch,
        Change::BeginRollback {
            cause: StopCause::Aborted,
            ..
        }
    ));
    // ... and without.
    let mut r = rollout(&[&["a"], &["b"]], 0);
    r.batches[0].hosts[0].set_state(HostState::Succeeded);
    r.batches[0].set_state(BatchState::Done);
    c.control = Control::Abort { rollback: false };
    c.change(&mut r, &p);
    assert_eq!(r.state(), RolloutState::Aborted);
    assert_eq!(state_of(&r, "a"), HostState::Succeeded);
}

#[test]
fn a_canary_waits_for_approval_or_for_its_wait() {
    let mut r = rollout(&[&["a"], &["b"]], 0);
    r.batches[0].canary = true;
    r.batches[0].hosts[0].set_state(HostState::Succeeded);
    r.batches[0].set_state(BatchState::Done);
    r.batches[0].ended_at_ms = 50;
    r.current_batch = 1;
    let approve = Params {
        canary_approve: true,
        ..params()
    };
    let mut c = Case::new(online(&["a", "b"], "1"));
    let (ch, effects) = c.change(&mut r, &approve);
    assert!(matches!(ch, Change::Pause { .. }), "{ch:?}");
    assert!(r.reason.contains("rollout resume"), "{}", r.reason);
    assert!(effects.contains(&Effect::HoldPaused), "only a new resume approves");
    c.control = Control::Pause;
    assert_eq!(c.next(&r, &approve), Next::Wait { until_ms: None });
    c.control = Control::Run;
    c.change(&mut r, &approve);
    assert!(r.canary_approved);
    assert!(matches!(c.change(&mut r, &approve).0, Change::StartBatch { batch: 1 }));

    let mut r = rollout(&[&["a"], &["b"]], 0);
    r.batches[0].canary = true;
    r.batches[0].set_state(BatchState::Done);
    r.batches[0].ended_at_ms = 50;
    r.current_batch = 1;
    let wait = Params {
        canary_wait_ms: 500,
        ..params()
    };
    assert_eq!(c.next(&r, &wait), Next::Wait { until_ms: Some(550) });
    let between = Params {
        pause_between_ms: 200,
        ..params()
    };
    r.batches[0].canary = false;
    assert_eq!(c.next(&r, &between), Next::Wait { until_ms: Some(250) });
}

#[test]
fn success_over_the_whole_selection_sets_the_release_for_new_hosts_but_convergence_does_not() {
    let mut r = rollout(&[&["a"]], 0);
    r.batches[0].hosts[0].set_state(HostState::Succeeded);
    r.batches[0].set_state(BatchState::Done);
    let c = Case::new(online(&["a"], "2"));
    let (_, effects) = c.change(&mut r, &params());
    assert_eq!(r.state(), RolloutState::Succeeded);
    assert!(effects.contains(&Effect::SetAppRelease { version: "2".into() }));
    for (kind, whole) in [(RolloutKind::Converge, true), (RolloutKind::Rollout, false)] {
        let mut r = rollout(&[&["a"]], 0);
        r.set_kind(kind);
        r.whole_selection = whole;
        r.batches[0].hosts[0].set_state(HostState::Succeeded);
        r.batches[0].set_state(BatchState::Done);
        let (_, effects) = c.change(&mut r, &params());
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::SetAppRelease { .. })),
            "{kind:?} whole={whole}"
        );
    }
}

#[test]
fn events_name_what_happened() {
    let mut r = rollout(&[&["a"]], 0);
    let effects = apply(&mut r, &Change::StartBatch { batch: 0 }, 5);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Emit {
            kind: EventKind::BatchStarted,
            ..
        }
    )));
}

mod worlds;

#[test]
fn a_host_whose_agent_moved_back_is_recorded_as_reverted() {
    let mut r = rollout(&[&["a"], &["b"]], 10);
    let p = params();
    let mut c = Case::new(online(&["a", "b"], "1"));
    let task = send_first(&mut c, &mut r, &p, "a");
    let mut failed = final_report(&task, false);
    failed.reverted = true;
    failed.current = "1".into();
    report(&mut r, 0, "a", &failed);
    let a = &r.batches[0].hosts[0];
    assert_eq!((a.state(), a.reverted), (HostState::Failed, true));
    assert!(a.detail.contains("(the host reverted to 1)"), "{}", a.detail);
    // A failure the agent could not revert is no revert.
    let mut r = rollout(&[&["a"]], 10);
    let mut c = Case::new(online(&["a"], "1"));
    let task = send_first(&mut c, &mut r, &p, "a");
    report(&mut r, 0, "a", &final_report(&task, false));
    assert!(!r.batches[0].hosts[0].reverted);
}
