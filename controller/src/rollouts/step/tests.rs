//! The rules of `step`, one table case each, and a property test that runs
//! the decisions through random worlds (host outcomes, disconnects,
//! controls, controller restarts) and checks the rollout invariants.

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
                    running_tasks: Vec::new(),
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
    let effects = report(&mut r, "a", &final_report(&task, true));
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
    let effects = report(&mut r, "a", &final_report(&task, true));
    assert_eq!(state_of(&r, "a"), HostState::RolledBack);
    assert!(effects.contains(&Effect::SetDesired {
        host: "a".into(),
        version: "1".into()
    }));
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

// --- property test ---------------------------------------------------------

/// Something that happens in the simulated world.
#[derive(Debug, Clone)]
enum Act {
    /// The engine takes a step.
    Step,
    /// Host `i`'s agent finishes its current task, healthy or not.
    Finish(usize, bool),
    /// Host `i` disconnects or reconnects.
    Toggle(usize),
    /// The controller restarts.
    Restart,
    /// The operator pauses, resumes or aborts.
    Operator(u8),
    /// Time passes.
    Tick(i64),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        8 => Just(Act::Step),
        4 => (0usize..6, prop::bool::weighted(0.8)).prop_map(|(i, ok)| Act::Finish(i, ok)),
        1 => (0usize..6).prop_map(Act::Toggle),
        1 => Just(Act::Restart),
        1 => (0u8..8).prop_map(Act::Operator),
        2 => (1i64..400).prop_map(Act::Tick),
    ]
}

#[derive(Debug, Clone)]
struct Agent {
    connected: bool,
    current: String,
    /// (task id, target) in order; the first one runs.
    queue: VecDeque<(String, String)>,
}

struct Sim {
    r: Rollout,
    p: Params,
    now: i64,
    control: Control,
    agents: Vec<Agent>,
    following: HashSet<String>,
    desired: HashMap<String, String>,
    /// Deploys sent per (host, version), and rollbacks per host.
    deploys: HashMap<(String, String), u32>,
    rollbacks: HashMap<String, u32>,
    next_id: u32,
    grace: i64,
}

fn id(i: usize) -> String {
    format!("h{i}")
}

impl Sim {
    fn new(n: usize, batch: usize, budget: u32, auto_rollback: bool) -> Sim {
        let ids: Vec<String> = (0..n).map(id).collect();
        let chunks: Vec<Vec<&str>> = ids
            .chunks(batch)
            .map(|c| c.iter().map(String::as_str).collect())
            .collect();
        let refs: Vec<&[&str]> = chunks.iter().map(Vec::as_slice).collect();
        let mut r = rollout(&refs, budget);
        r.batch_size = batch as u32;
        r.params = Some(StartRolloutRequest {
            no_auto_rollback: !auto_rollback,
            ..Default::default()
        });
        Sim {
            r,
            p: Params {
                auto_rollback,
                batch_deadline_ms: 1_000,
                ..params()
            },
            now: 1,
            control: Control::Run,
            agents: (0..n)
                .map(|_| Agent {
                    connected: true,
                    current: "1".into(),
                    queue: VecDeque::new(),
                })
                .collect(),
            following: HashSet::new(),
            desired: HashMap::new(),
            deploys: HashMap::new(),
            rollbacks: HashMap::new(),
            next_id: 0,
            grace: 2_000,
        }
    }

    fn view(&self) -> HashMap<String, HostView> {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    id(i),
                    HostView {
                        connected: a.connected,
                        current: a.current.clone(),
                        running_tasks: a.queue.iter().map(|(t, _)| t.clone()).collect(),
                    },
                )
            })
            .collect()
    }

    fn effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::SetDesired { host, version } => {
                    self.desired.insert(host, version);
                }
                Effect::Forget { task_id } => {
                    self.following.remove(&task_id);
                }
                Effect::HoldPaused => self.control = Control::Pause,
                Effect::Emit { .. } | Effect::SetAppRelease { .. } => {}
            }
        }
    }

    fn check_running(&self) -> Result<(), TestCaseError> {
        let in_flight = self
            .r
            .batches
            .iter()
            .flat_map(|b| &b.hosts)
            .filter(|h| h.state().in_flight())
            .count();
        prop_assert!(
            in_flight <= self.r.batch_size as usize,
            "{in_flight} hosts changing at once, batch size {}",
            self.r.batch_size
        );
        Ok(())
    }

    /// One engine step; false when the rollout is over.
    fn step(&mut self) -> Result<bool, TestCaseError> {
        let hosts = self.view();
        let v = View {
            now_ms: self.now,
            control: self.control,
            hosts: &hosts,
            following: &self.following,
        };
        let mut n = self.next_id;
        let next = next(&self.r, &self.p, &v, &mut || {
            n += 1;
            format!("t-{n}")
        });
        self.next_id = n;
        match next {
            Next::Done => return Ok(false),
            Next::Wait { until_ms } => {
                self.now = until_ms.map_or(self.now + 50, |u| u.max(self.now + 1));
            }
            Next::Change(c) => {
                if let Change::Assign { .. } = c {
                    prop_assert!(
                        failures(&self.r) <= self.r.failure_budget,
                        "a host was given a task after the budget was exceeded"
                    );
                }
                let e = apply(&mut self.r, &c, self.now);
                self.effects(e);
                self.check_running()?;
            }
            Next::Send { batch, host } => {
                let i: usize = host[1..].parse().expect("h<i>");
                if self.agents[i].connected {
                    let h = self.r.batches[batch]
                        .hosts
                        .iter()
                        .find(|h| h.host_id == host)
                        .expect("host")
                        .clone();
                    let target = task_target(&h).to_string();
                    if h.state() == HostState::RollingBack {
                        *self.rollbacks.entry(host.clone()).or_default() += 1;
                    } else {
                        *self.deploys.entry((host.clone(), target.clone())).or_default() += 1;
                    }
                    self.agents[i].queue.push_back((h.task_id.clone(), target));
                    self.following.insert(h.task_id.clone());
                    let e = apply(&mut self.r, &Change::Sent { batch, host }, self.now);
                    self.effects(e);
                } else {
                    // The driver sees the send fail and looks again later.
                    self.now += 10;
                }
            }
            Next::Follow { task_id, .. } => {
                self.following.insert(task_id);
            }
        }
        Ok(true)
    }

    fn finish(&mut self, i: usize, ok: bool) {
        let Some((task, target)) = self.agents[i].queue.pop_front() else {
            return;
        };
        if ok {
            self.agents[i].current = target;
        }
        // A failed change reverts itself on the host: current stays.
        if self.agents[i].connected && self.following.contains(&task) {
            let e = report(&mut self.r, &id(i), &final_report(&task, ok));
            self.following.remove(&task);
            self.effects(e);
        }
    }

    fn toggle(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.connected = !a.connected;
        if !a.connected {
            // The controller fails the tasks it followed on that stream.
            let tasks: Vec<String> = a
                .queue
                .iter()
                .map(|(t, _)| t.clone())
                .filter(|t| self.following.contains(t))
                .collect();
            for t in tasks {
                let mut p = final_report(&t, false);
                p.set_cause(FailureCause::Unreachable);
                let e = report(&mut self.r, &id(i), &p);
                self.following.remove(&t);
                self.effects(e);
            }
        }
    }

    fn restart(&mut self) {
        self.following.clear();
        self.p.grace_until_ms = self.now + self.grace;
        self.control = if self.r.state() == RolloutState::Paused {
            Control::Pause
        } else {
            Control::Run
        };
    }

    fn operator(&mut self, k: u8) {
        self.control = match k {
            0 => Control::Pause,
            1 => Control::Abort { rollback: true },
            2 => Control::Abort { rollback: false },
            _ => Control::Run,
        };
    }
}

fn run_world(n: usize, batch: usize, budget: u32, auto: bool, acts: Vec<Act>) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(n, batch, budget, auto);
    for a in acts {
        match a {
            Act::Step => {
                sim.step()?;
            }
            Act::Finish(i, ok) => sim.finish(i % n, ok),
            Act::Toggle(i) => sim.toggle(i % n),
            Act::Restart => sim.restart(),
            Act::Operator(k) => sim.operator(k),
            Act::Tick(d) => sim.now += d,
        }
    }
    // Quiet down: every host back, no new operator pause, agents finish what
    // they hold (healthy), the engine runs to its end.
    for i in 0..n {
        if !sim.agents[i].connected {
            sim.toggle(i);
        }
    }
    if sim.control == Control::Pause {
        sim.control = Control::Run;
    }
    let mut steps = 0;
    loop {
        steps += 1;
        prop_assert!(steps < 20_000, "the rollout did not end: {:?}", sim.r);
        // One agent at a time, so several hosts are in flight together.
        if steps % 3 == 0 {
            sim.finish((steps / 3) % n, true);
        }
        if sim.r.state() == RolloutState::Paused {
            sim.control = Control::Run;
        }
        if !sim.step()? && sim.agents.iter().all(|a| a.queue.is_empty()) {
            break;
        }
    }
    prop_assert!(sim.r.state().ended(), "{:?}", sim.r.state());
    for ((host, version), count) in &sim.deploys {
        prop_assert!(*count <= 1, "{host} was sent the change to {version} {count} times");
    }
    for (host, count) in &sim.rollbacks {
        prop_assert!(*count <= 1, "{host} was sent its rollback {count} times");
    }
    for (i, agent) in sim.agents.iter().enumerate() {
        let h = sim
            .r
            .batches
            .iter()
            .flat_map(|b| &b.hosts)
            .find(|h| h.host_id == id(i))
            .expect("host");
        match h.state() {
            HostState::Succeeded | HostState::Unchanged => {
                prop_assert_eq!(&agent.current, &h.to_version, "host {} {:?}", i, h.state())
            }
            HostState::RolledBack => prop_assert_eq!(&agent.current, &h.from_version, "host {} rolled back", i),
            _ => {}
        }
        if matches!(
            h.state(),
            HostState::Succeeded | HostState::Unchanged | HostState::RolledBack
        ) {
            prop_assert_eq!(
                sim.desired.get(&id(i)),
                Some(&agent.current),
                "host {} runs its desired release once quiet",
                i
            );
        }
    }
    if sim.r.stop() == StopCause::FailureBudget {
        prop_assert!(failures(&sim.r) > sim.r.failure_budget || sim.r.state() != RolloutState::Succeeded);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("FLEET_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(10_000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rollouts_keep_their_invariants_in_random_worlds(
        n in 1usize..6,
        batch in 1usize..4,
        budget in 0u32..3,
        auto in any::<bool>(),
        acts in prop::collection::vec(act(), 0..120),
    ) {
        run_world(n, batch, budget, auto, acts)?;
    }
}
