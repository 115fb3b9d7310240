//! A property test that runs `step`'s decisions through random worlds (host
//! outcomes, disconnects, controls, controller restarts) and checks the
//! rollout invariants after every step.

use super::*;

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
    /// Hosts whose stream ended while a followed task ran: waited for
    /// until then.
    back_by: HashMap<usize, i64>,
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
            back_by: HashMap::new(),
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
                        back_by_ms: self.back_by.get(&i).copied().unwrap_or(0),
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
            let b = batch_of(&self.r, &task);
            let e = report(&mut self.r, b, &id(i), &final_report(&task, ok));
            self.following.remove(&task);
            self.effects(e);
        }
    }

    fn toggle(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.connected = !a.connected;
        if !a.connected {
            // The engine stops following the tasks of that stream (the
            // agent runs them on) and waits for the host for the grace.
            let followed = a.queue.iter().any(|(t, _)| self.following.contains(t));
            let tasks: Vec<String> = a.queue.iter().map(|(t, _)| t.clone()).collect();
            for t in tasks {
                self.following.remove(&t);
            }
            if followed {
                self.back_by.insert(i, self.now + self.grace);
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

/// The batch whose host holds `task` (the engine keeps it beside the task
/// when it sends it); past the batches when none does.
fn batch_of(r: &Rollout, task: &str) -> usize {
    r.batches
        .iter()
        .position(|b| b.hosts.iter().any(|h| h.task_id == task))
        .unwrap_or(r.batches.len())
}
