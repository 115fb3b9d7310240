//! Rollouts across a fleet of agents, each with its own real systemd manager
//! and its own instance of the sample app (one port per host, since they
//! share loopback). Release hooks write when each host's activation started
//! and ended into one shared log, so the tests see the batches from the
//! hosts' side.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{bin, free_addr, http_get, wait_until, Fleet};
use crate::releases::{assert_success, json, release};
use crate::sandbox::Sandbox;

pub const APP: &str = "demo";
const UNIT: &str = "fleet-app-demo.service";

pub struct Cluster {
    pub fleet: Fleet,
    pub sandboxes: Vec<Sandbox>,
    pub ports: Vec<u16>,
    /// Activation log: "start|end VERSION PORT NANOS" lines from the hooks.
    log: PathBuf,
}

/// One activation seen through the hooks.
#[derive(Debug, Clone)]
pub struct Span {
    pub port: u16,
    start: u128,
    end: Option<u128>,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Cluster::start_groups(&vec![""; n])
    }

    /// One host per entry; a non-empty entry is the host's `group` label
    /// (set by its join token).
    pub fn start_groups(groups: &[&str]) -> Cluster {
        Cluster::start_with(groups, &[], "info")
    }

    /// `start_groups` with controller.toml `extra` keys, the controller
    /// and the agents logging at `rust_log`.
    pub fn start_with(groups: &[&str], extra: &[(&str, &str)], rust_log: &str) -> Cluster {
        Cluster::start_full(groups, &[], extra, rust_log)
    }

    /// `start_with`, with more arguments for the controller's `init`.
    pub fn start_full(groups: &[&str], init_args: &[&str], extra: &[(&str, &str)], rust_log: &str) -> Cluster {
        Cluster::on_fleet(
            Fleet::controller_only_with(init_args, extra, rust_log),
            groups,
            rust_log,
        )
    }

    /// One host per entry of `groups` (see [`Cluster::start_groups`]) of
    /// `fleet`, and the app they run.
    pub fn on_fleet(mut fleet: Fleet, groups: &[&str], rust_log: &str) -> Cluster {
        let n = groups.len();
        let mut sandboxes = Vec::new();
        let mut ports = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            let group_label = format!("group={group}");
            let mut args = vec!["--label", "role=web", "--uses", "1"];
            if !group.is_empty() {
                args.extend(["--label", group_label.as_str()]);
            }
            let token = fleet.token(&args);
            let (sandbox, port) = host_logging(&mut fleet, &token, i + 1, rust_log);
            sandboxes.push(sandbox);
            ports.push(port);
        }
        fleet.wait_connected(n, Duration::from_secs(60));
        let check = format!("{} check", bin("fleet-sample-app").display());
        let created = fleet.fleetctl(&[
            "app",
            "create",
            APP,
            "--unit",
            UNIT,
            "--health-command",
            &check,
            "--health-timeout",
            "3s",
            "--settle",
            "1s",
            "--selector",
            "role=web",
        ]);
        assert_success(&created, "app create");
        let log = fleet.root.path().join("activations.log");
        Cluster {
            fleet,
            sandboxes,
            ports,
            log,
        }
    }

    /// `n` hosts all running 1.0.0 (rolled out to all at once).
    pub fn on_v1(n: usize) -> Cluster {
        let c = Cluster::start(n);
        c.push("1.0.0", &[]);
        assert_success(
            &c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]),
            "rollout 1.0.0",
        );
        c
    }

    /// A release whose hooks record its activation on each host;
    /// `failing_ports` are the hosts where it is unhealthy.
    pub fn push(&self, version: &str, failing_ports: &[u16]) {
        self.push_pausing(version, failing_ports, 0)
    }

    /// [`Cluster::push`], the activation hook taking `secs` seconds after
    /// it logged its start.
    pub fn push_pausing(&self, version: &str, failing_ports: &[u16], secs: u32) {
        let log = self.log.display().to_string();
        let hook =
            |what: &str| format!("#!/bin/sh\necho \"{what} $FLEET_VERSION $SAMPLE_PORT $(date +%s%N)\" >> '{log}'\n");
        let fail: String = failing_ports.iter().map(|p| format!("{p}\n")).collect();
        let start = format!("{}sleep {secs}\n", hook("start"));
        let tar = release(
            version,
            &[
                (
                    "fleet.toml",
                    "[hooks]\npre_activate = \"hooks/start.sh\"\nvalidate = \"hooks/end.sh\"\n",
                    0o644,
                ),
                ("hooks/start.sh", &start, 0o755),
                ("hooks/end.sh", &hook("end"), 0o755),
                ("FAIL_PORTS", &fail, 0o644),
            ],
        );
        assert_success(&self.fleet.push_release(APP, version, &tar.gz()), "release push");
    }

    /// A release whose pre_activate hook takes `secs` seconds.
    pub fn push_slow(&self, version: &str, secs: u32) {
        let tar = release(
            version,
            &[
                ("fleet.toml", "[hooks]\npre_activate = \"slow.sh\"\n", 0o644),
                ("slow.sh", &format!("#!/bin/sh\nsleep {secs}\n"), 0o755),
            ],
        );
        assert_success(&self.fleet.push_release(APP, version, &tar.gz()), "release push");
    }

    /// Asserts that every host activated `version` exactly once (the
    /// activation hooks' log).
    pub fn assert_each_host_activated_once(&self, version: &str) {
        let spans = self.spans(version);
        let mut ports: Vec<u16> = spans.iter().map(|s| s.port).collect();
        ports.sort();
        let mut want = self.ports.clone();
        want.sort();
        assert_eq!(ports, want, "every host activated {version} exactly once: {spans:?}");
    }

    pub fn rollout(&self, args: &[&str]) -> Output {
        let mut all = vec!["rollout", APP];
        all.extend(args);
        self.fleet.fleetctl(&all)
    }

    pub fn served(&self, i: usize) -> Option<String> {
        http_get(([127, 0, 0, 1], self.ports[i]).into(), "/version").map(|b| b.trim().to_string())
    }

    pub fn wait_all_serve(&self, version: &str) {
        wait_until(
            Duration::from_secs(60),
            &format!("every host serving {version}"),
            || {
                (0..self.ports.len())
                    .all(|i| self.served(i).as_deref() == Some(version))
                    .then_some(())
            },
        );
    }

    /// Activations of `version`, by start time.
    pub fn spans(&self, version: &str) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut spans: Vec<Span> = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [what, v, port, at] = f[..] else { continue };
            if v != version {
                continue;
            }
            let (Ok(port), Ok(at)) = (port.parse::<u16>(), at.parse::<u128>()) else {
                continue;
            };
            match what {
                "start" => spans.push(Span {
                    port,
                    start: at,
                    end: None,
                }),
                "end" => {
                    if let Some(s) = spans.iter_mut().rev().find(|s| s.port == port && s.end.is_none()) {
                        s.end = Some(at);
                    }
                }
                _ => {}
            }
        }
        spans.sort_by_key(|s| s.start);
        spans
    }

    pub fn show(&self, id: &str) -> Value {
        self.fleet.fleetctl_json(&["rollout", "show", id])
    }

    pub fn wait_state(&self, id: &str, states: &[&str]) -> Value {
        wait_until(
            Duration::from_secs(120),
            &format!("rollout {id} to be {states:?}"),
            || {
                let v = self.show(id);
                states.contains(&v["state"].as_str().unwrap_or_default()).then_some(v)
            },
        )
    }

    pub fn host_index(&self, host_id: &str) -> usize {
        self.fleet
            .agents
            .iter()
            .position(|a| a.host_id().as_deref() == Some(host_id))
            .unwrap_or_else(|| panic!("no agent has host id {host_id}"))
    }
}

/// Starts host `app-<i>`: a systemd sandbox with the app's unit on its own
/// port, and an agent enrolled with `token`.
pub fn host(fleet: &mut Fleet, token: &str, i: usize) -> (Sandbox, u16) {
    host_logging(fleet, token, i, "info")
}

/// `host`, its agent logging at `rust_log`.
pub fn host_logging(fleet: &mut Fleet, token: &str, i: usize, rust_log: &str) -> (Sandbox, u16) {
    let sandbox = Sandbox::start(&fleet.root.path().join(format!("systemd-{i}")));
    let port = free_addr().port();
    let idx = fleet.add_agent_with(
        &format!("app-{i}"),
        token,
        &[],
        Some(&sandbox),
        &[("SAMPLE_PORT", port.to_string()), ("RUST_LOG", rust_log.to_string())],
    );
    let current = fleet.agents[idx].dir.join("state/apps").join(APP).join("current");
    sandbox.install_sample_app(UNIT, &current, port);
    (sandbox, port)
}

/// Host states of a rollout record, by agent index.
pub fn host_states(c: &Cluster, r: &Value) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = r["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .flat_map(|b| b["hosts"].as_array().expect("hosts").clone())
        .map(|h| {
            (
                c.host_index(h["host_id"].as_str().expect("host_id")),
                h["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The most activations that overlapped in time.
pub fn max_overlap(spans: &[Span]) -> usize {
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for s in spans {
        edges.push((s.start, 1));
        edges.push((s.end.unwrap_or(u128::MAX), -1));
    }
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

pub fn rollout_id(out: &Output) -> String {
    let v = json(out);
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no rollout id in {v}"))
        .to_string()
}

#[test]
fn batches_run_in_order_and_the_failure_budget_rolls_back_exactly_the_changed_hosts() {
    let c = Cluster::start(4);
    c.push("1.0.0", &[]);
    let out = c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait", "--output", "json"]);
    assert_success(&out, "rollout 1.0.0");
    assert_eq!(json(&out)["state"], "succeeded");
    c.wait_all_serve("1.0.0");

    // Batches of one: never two hosts changing at once, in hostname order.
    c.push("2.0.0", &[]);
    let out = c.rollout(&["--release", "2.0.0", "--batch", "1", "--wait", "--output", "json"]);
    assert_success(&out, "rollout 2.0.0");
    let r = json(&out);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["batches"].as_array().expect("batches").len(), 4, "{r}");
    let spans = c.spans("2.0.0");
    assert_eq!(spans.len(), 4, "one activation per host: {spans:?}");
    assert_eq!(
        max_overlap(&spans),
        1,
        "batch size 1 changed two hosts at once: {spans:?}"
    );
    let order: Vec<u16> = spans.iter().map(|s| s.port).collect();
    assert_eq!(order, c.ports, "batches follow the plan's order");
    c.wait_all_serve("2.0.0");

    // 3.0.0 is unhealthy on app-3 only. Batches of two: app-1 and app-2
    // succeed, then app-3 fails (and reverts itself); the budget of 0 is
    // exceeded, so app-1, app-2 and app-4 are rolled back to 2.0.0.
    c.push("3.0.0", &[c.ports[2]]);
    let out = c.rollout(&[
        "--release",
        "3.0.0",
        "--batch",
        "2",
        "--max-failures",
        "0",
        "--wait",
        "--output",
        "json",
    ]);
    assert!(!out.status.success(), "a rolled-back rollout must fail --wait");
    let r = json(&out);
    assert_eq!(r["state"], "rolled_back", "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("failure budget"), "{reason}");
    let states = host_states(&c, &r);
    assert_eq!(
        states,
        vec![
            (0, "rolled_back".to_string()),
            (1, "rolled_back".to_string()),
            (2, "failed".to_string()),
            (3, "rolled_back".to_string()),
        ],
        "{r}"
    );
    let spans = c.spans("3.0.0");
    assert!(max_overlap(&spans) <= 2, "batch size 2 exceeded: {spans:?}");
    c.wait_all_serve("2.0.0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rolled_back") || stderr.contains("rolled back"),
        "{stderr}"
    );
}

#[test]
fn a_controller_killed_mid_rollout_resumes_without_deploying_a_host_twice() {
    let mut c = Cluster::on_v1(4);
    c.push("2.0.0", &[]);
    let out = c.rollout(&["--release", "2.0.0", "--batch", "1", "--output", "json"]);
    assert_success(&out, "start rollout 2.0.0");
    let id = rollout_id(&out);
    wait_until(Duration::from_secs(60), "the second batch to start", || {
        (c.spans("2.0.0").len() >= 2).then_some(())
    });
    c.fleet.controller.kill9();
    c.fleet.controller.start();
    let r = c.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    c.assert_each_host_activated_once("2.0.0");
    c.wait_all_serve("2.0.0");
}

#[test]
fn an_offline_host_is_skipped_and_converges_when_it_returns() {
    let mut c = Cluster::on_v1(4);
    c.push("2.0.0", &[]);
    // app-4 goes away while the first batch runs.
    let out = c.rollout(&[
        "--release",
        "2.0.0",
        "--batch",
        "2",
        "--offline",
        "skip",
        "--output",
        "json",
    ]);
    assert_success(&out, "start rollout 2.0.0");
    let id = rollout_id(&out);
    wait_until(Duration::from_secs(60), "the first batch to start", || {
        (!c.spans("2.0.0").is_empty()).then_some(())
    });
    c.fleet.agents[3].kill9();
    let r = c.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    let states = host_states(&c, &r);
    assert_eq!(states[3], (3, "skipped".to_string()), "{r}");
    assert_eq!(
        c.served(3).as_deref(),
        Some("1.0.0"),
        "app-4's unit still runs what it had"
    );
    c.fleet.agents[3].start();
    wait_until(Duration::from_secs(60), "app-4 to converge to 2.0.0", || {
        (c.served(3).as_deref() == Some("2.0.0")).then_some(())
    });
    let shown = c.fleet.fleetctl_json(&["app", "show", APP]);
    assert_eq!(shown["desired_version"], "2.0.0", "{shown}");

    // A new host with matching labels converges by itself when it enrolls.
    let token = c.fleet.token(&["--label", "role=web", "--uses", "1"]);
    let (sandbox, port) = host(&mut c.fleet, &token, 5);
    c.sandboxes.push(sandbox);
    c.ports.push(port);
    wait_until(
        Duration::from_secs(60),
        "the new host app-5 to converge to 2.0.0",
        || (c.served(4).as_deref() == Some("2.0.0")).then_some(()),
    );

    // --offline wait: the rollout waits for a host that is down, and
    // deploys it when it is back within the wait.
    c.push("3.0.0", &[]);
    c.fleet.agents[3].kill9();
    let out = c.rollout(&[
        "--release",
        "3.0.0",
        "--batch",
        "100%",
        "--offline",
        "wait:60s",
        "--output",
        "json",
    ]);
    assert_success(&out, "start rollout 3.0.0");
    let id = rollout_id(&out);
    wait_until(Duration::from_secs(60), "the online hosts on 3.0.0", || {
        (0..3).all(|i| c.served(i).as_deref() == Some("3.0.0")).then_some(())
    });
    assert_eq!(c.show(&id)["state"], "running", "still waiting for app-4");
    c.fleet.agents[3].start();
    let r = c.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(host_states(&c, &r)[3], (3, "succeeded".to_string()), "{r}");
    c.wait_all_serve("3.0.0");
}

#[test]
fn canary_approval_pause_resume_abort_and_one_rollout_per_app() {
    let c = Cluster::on_v1(4);

    c.push("2.0.0", &[]);
    let out = c.rollout(&[
        "--release",
        "2.0.0",
        "--canary",
        "1",
        "--canary-approve",
        "--batch",
        "2",
        "--output",
        "json",
    ]);
    assert_success(&out, "start rollout 2.0.0");
    let id = rollout_id(&out);
    let r = c.wait_state(&id, &["paused"]);
    assert!(r["reason"].as_str().unwrap_or_default().contains("resume"), "{r}");
    assert_eq!(c.served(0).as_deref(), Some("2.0.0"), "the canary runs 2.0.0");
    assert_eq!(c.served(1).as_deref(), Some("1.0.0"), "the rest waits for approval");

    // A second rollout of the app is refused, naming the running one.
    let second = c.rollout(&["--release", "2.0.0"]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&id), "{stderr}");

    assert_success(&c.fleet.fleetctl(&["rollout", "resume", &id]), "resume");
    let r = c.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    c.wait_all_serve("2.0.0");

    // Abort with rollback while waiting for approval: the canary goes back.
    c.push("3.0.0", &[]);
    let out = c.rollout(&[
        "--release",
        "3.0.0",
        "--canary",
        "1",
        "--canary-approve",
        "--output",
        "json",
    ]);
    let id = rollout_id(&out);
    c.wait_state(&id, &["paused"]);
    assert_eq!(c.served(0).as_deref(), Some("3.0.0"));
    assert_success(
        &c.fleet.fleetctl(&["rollout", "abort", &id, "--rollback", "--yes"]),
        "abort",
    );
    let r = c.wait_state(&id, &["aborted"]);
    assert_eq!(host_states(&c, &r)[0], (0, "rolled_back".to_string()), "{r}");
    c.wait_all_serve("2.0.0");

    // Pause between batches, then resume.
    let out = c.rollout(&[
        "--release",
        "3.0.0",
        "--batch",
        "1",
        "--pause-between",
        "2s",
        "--output",
        "json",
    ]);
    let id = rollout_id(&out);
    assert_success(&c.fleet.fleetctl(&["rollout", "pause", &id]), "pause");
    let r = c.wait_state(&id, &["paused"]);
    let done = |r: &Value| host_states(&c, r).iter().filter(|(_, s)| s == "succeeded").count();
    let at_pause = done(&r);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(done(&c.show(&id)), at_pause, "a paused rollout changes no more hosts");
    assert_success(&c.fleet.fleetctl(&["rollout", "resume", &id]), "resume");
    let r = c.wait_state(&id, &["succeeded"]);
    assert_eq!(done(&r), 4, "{r}");
    c.wait_all_serve("3.0.0");

    // The whole fleet back to the previous release, as a rollout of its own.
    let out = c.fleet.fleetctl(&["rollback", APP, "--wait", "--output", "json"]);
    assert_success(&out, "fleet-wide rollback");
    let r = json(&out);
    assert_eq!(r["state"], "succeeded", "{r}");
    c.wait_all_serve("2.0.0");
}

#[test]
fn a_batch_past_its_deadline_fails_in_the_phase_it_was_in_and_is_rolled_back() {
    let c = Cluster::on_v1(2);
    c.push_slow("2.0.0", 6);
    let out = c.rollout(&[
        "--release",
        "2.0.0",
        "--batch",
        "100%",
        "--batch-deadline",
        "2s",
        "--wait",
        "--output",
        "json",
    ]);
    assert!(!out.status.success(), "a timed-out batch fails the rollout");
    let r = json(&out);
    assert_eq!(r["state"], "rolled_back", "{r}");
    for h in r["batches"][0]["hosts"].as_array().expect("hosts") {
        let detail = h["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("timed out in phase pre_activate"), "{h}");
        assert_eq!(h["cause"], "timed out", "{h}");
        assert_eq!(h["state"], "rolled_back", "the task finished late and was undone: {h}");
    }
    // The hosts' late deploys were undone: both serve 1.0.0.
    c.wait_all_serve("1.0.0");
}
