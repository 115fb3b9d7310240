//! The desired state per host, through the situations operators live
//! through: a rollback followed by a controller restart, a rollout narrowed
//! by a selector, a controller killed between batches while a host is away,
//! rollbacks to one named release, and many hosts coming back at once —
//! each on real agents with their own systemd (see `rollouts` for the
//! cluster and the activation log the release hooks write).

use std::time::Duration;

use serde_json::Value;

use crate::harness::wait_until;
use crate::releases::{assert_success, json};
use crate::rollouts::{host_states, max_overlap, rollout_id, Cluster, APP};

/// `app show` per host: (hostname, desired, current, drift), by hostname.
fn app_hosts(c: &Cluster) -> Vec<(String, String, String, bool)> {
    let v = c.fleet.fleetctl_json(&["app", "show", APP]);
    let mut out: Vec<(String, String, String, bool)> = v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["hostname"].as_str().unwrap_or_default().to_string(),
                h["desired"].as_str().unwrap_or_default().to_string(),
                h["current"].as_str().unwrap_or_default().to_string(),
                h["drift"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

fn rollouts(c: &Cluster) -> Vec<Value> {
    c.fleet
        .fleetctl_json(&["rollout", "ls", APP])
        .as_array()
        .expect("rollouts")
        .clone()
}

/// Restarts the controller (kill -9, as a crash or an upgrade would) and
/// waits until every agent is back.
fn restart_controller(c: &mut Cluster) {
    c.fleet.controller.kill9();
    c.fleet.controller.start();
    c.fleet.wait_connected(c.ports.len(), Duration::from_secs(60));
}

#[test]
fn a_fleet_wide_rollback_sticks_across_a_controller_restart() {
    let mut c = Cluster::on_v1(3);
    c.push("2.0.0", &[]);
    assert_success(
        &c.rollout(&["--release", "2.0.0", "--batch", "100%", "--wait"]),
        "rollout 2.0.0",
    );
    c.wait_all_serve("2.0.0");

    let out = c.fleet.fleetctl(&["rollback", APP, "--wait", "--output", "json"]);
    assert_success(&out, "rollback");
    let r = json(&out);
    assert_eq!(
        (r["kind"].as_str(), r["version"].as_str()),
        (Some("rollback"), Some("1.0.0")),
        "{r}"
    );
    c.wait_all_serve("1.0.0");
    let shown = c.fleet.fleetctl_json(&["app", "show", APP]);
    assert_eq!(
        shown["desired_version"], "1.0.0",
        "the release for new hosts follows the rollback: {shown}"
    );
    for (name, desired, current, drift) in app_hosts(&c) {
        assert_eq!(
            (desired.as_str(), current.as_str(), drift),
            ("1.0.0", "1.0.0", false),
            "{name}"
        );
    }

    let activations = c.spans("2.0.0").len();
    let runs = rollouts(&c).len();
    restart_controller(&mut c);
    // Give a wrong convergence every chance to happen.
    std::thread::sleep(Duration::from_secs(8));
    for i in 0..3 {
        assert_eq!(c.served(i).as_deref(), Some("1.0.0"), "app-{} after the restart", i + 1);
    }
    assert_eq!(c.spans("2.0.0").len(), activations, "nothing activated 2.0.0 again");
    assert_eq!(
        rollouts(&c).len(),
        runs,
        "no convergence run was needed: {:?}",
        rollouts(&c)
    );
}

#[test]
fn a_rollout_narrowed_by_a_selector_never_reaches_a_host_outside_it() {
    let mut c = Cluster::start_groups(&["a", "a", "b"]);
    c.push("1.0.0", &[]);
    assert_success(
        &c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]),
        "rollout 1.0.0",
    );
    c.wait_all_serve("1.0.0");
    c.push("3.0.0", &[]);
    let out = c.rollout(&["--release", "3.0.0", "-l", "group=a", "--wait", "--output", "json"]);
    assert_success(&out, "rollout 3.0.0 to group=a");
    assert_eq!(json(&out)["whole_selection"], false);
    assert_eq!(c.served(0).as_deref(), Some("3.0.0"));
    assert_eq!(c.served(1).as_deref(), Some("3.0.0"));
    assert_eq!(c.served(2).as_deref(), Some("1.0.0"));
    let shown = c.fleet.fleetctl_json(&["app", "show", APP]);
    assert_eq!(
        shown["desired_version"], "1.0.0",
        "a narrowed rollout leaves the release for new hosts: {shown}"
    );

    // The host outside the selector reconnects (its agent restarts), and
    // so does the controller: it stays on 1.0.0.
    c.fleet.agents[2].kill9();
    c.fleet.agents[2].start();
    restart_controller(&mut c);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(c.served(2).as_deref(), Some("1.0.0"), "app-3 is outside group=a");
    assert!(
        c.spans("3.0.0").iter().all(|s| s.port != c.ports[2]),
        "3.0.0 never activated on app-3"
    );
    let hosts = app_hosts(&c);
    assert_eq!(
        hosts[2],
        ("app-3".into(), "1.0.0".into(), "1.0.0".into(), false),
        "{hosts:?}"
    );
    assert_eq!(hosts[0].1, "3.0.0", "{hosts:?}");
}

#[test]
fn a_controller_killed_between_batches_resumes_without_skipping_a_host_that_is_late_back() {
    let mut c = Cluster::on_v1(3);
    c.push("2.0.0", &[]);
    let out = c.rollout(&[
        "--release",
        "2.0.0",
        "--batch",
        "1",
        "--pause-between",
        "4s",
        "--output",
        "json",
    ]);
    assert_success(&out, "start rollout 2.0.0");
    let id = rollout_id(&out);
    wait_until(Duration::from_secs(60), "batch 1 to end", || {
        let r = c.show(&id);
        (r["batches"][0]["state"] == "done").then_some(())
    });
    // During the pause: the controller dies, and app-3 is away when it
    // comes back (its agent returns a few seconds later).
    c.fleet.agents[2].kill9();
    c.fleet.controller.kill9();
    c.fleet.controller.start();
    std::thread::sleep(Duration::from_secs(5));
    c.fleet.agents[2].start();
    let r = c.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    let states: Vec<String> = host_states(&c, &r).into_iter().map(|(_, s)| s).collect();
    assert_eq!(states, ["succeeded", "succeeded", "succeeded"], "nobody skipped: {r}");
    c.assert_each_host_activated_once("2.0.0");
    let spans = c.spans("2.0.0");
    assert_eq!(max_overlap(&spans), 1, "never more than the batch at once: {spans:?}");
    c.wait_all_serve("2.0.0");
}

#[test]
fn rollback_to_a_named_release_leaves_every_host_on_one_version() {
    let c = Cluster::on_v1(3);
    c.push("2.0.0", &[]);
    assert_success(
        &c.rollout(&["--release", "2.0.0", "--batch", "100%", "--wait"]),
        "rollout 2.0.0",
    );
    // 3.0.0 fails on app-2: the budget of 0 rolls the changed hosts back.
    c.push("3.0.0", &[c.ports[1]]);
    let out = c.rollout(&["--release", "3.0.0", "--batch", "1", "--wait", "--output", "json"]);
    assert!(!out.status.success());
    assert_eq!(json(&out)["state"], "rolled_back");
    c.wait_all_serve("2.0.0");

    // The release before the current one (2.0.0) in the app's history: 1.0.0.
    let out = c.fleet.fleetctl(&["rollback", APP, "--wait", "--output", "json"]);
    assert_success(&out, "rollback");
    assert_eq!(json(&out)["version"], "1.0.0");
    c.wait_all_serve("1.0.0");

    let out = c
        .fleet
        .fleetctl(&["rollback", APP, "--to", "2.0.0", "--wait", "--output", "json"]);
    assert_success(&out, "rollback --to 2.0.0");
    c.wait_all_serve("2.0.0");
    let hosts = app_hosts(&c);
    assert!(
        hosts
            .iter()
            .all(|(_, d, cur, drift)| d == "2.0.0" && cur == "2.0.0" && !drift),
        "{hosts:?}"
    );

    // `rollout status` exits like --wait, and takes an app name.
    let failed = rollouts(&c)
        .into_iter()
        .find(|r| r["state"] == "rolled_back")
        .expect("the rolled-back rollout");
    let st = c
        .fleet
        .fleetctl(&["rollout", "status", failed["id"].as_str().expect("id")]);
    assert_eq!(st.status.code(), Some(1), "a rolled-back rollout is a failure");
    let st = c.fleet.fleetctl(&["rollout", "status", APP]);
    assert_success(&st, "status of the app's latest rollout");

    let history = c.fleet.fleetctl_json(&["app", "history", APP]);
    let kinds: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        ["rollback", "rollback", "rollout", "rollout", "rollout"],
        "{history}"
    );
}

#[test]
fn hosts_coming_back_converge_through_the_engine_within_the_batch_size() {
    let mut c = Cluster::on_v1(4);
    c.push("2.0.0", &[]);
    for i in 1..4 {
        c.fleet.agents[i].kill9();
    }
    let out = c.rollout(&["--release", "2.0.0", "--batch", "1", "--wait", "--output", "json"]);
    assert_success(&out, "rollout 2.0.0 with three hosts away");
    let r = json(&out);
    let states: Vec<String> = host_states(&c, &r).into_iter().map(|(_, s)| s).collect();
    assert_eq!(states, ["succeeded", "skipped", "skipped", "skipped"], "{r}");
    // The three come back at once.
    for i in 1..4 {
        c.fleet.agents[i].start();
    }
    c.wait_all_serve("2.0.0");
    let spans = c.spans("2.0.0");
    assert_eq!(spans.len(), 4, "one activation per host: {spans:?}");
    assert_eq!(
        max_overlap(&spans),
        1,
        "convergence kept the batch size of 1: {spans:?}"
    );
    // Convergence is a visible run (or several, as hosts connect), ended
    // once the last host's task is through.
    let runs = wait_until(Duration::from_secs(60), "the convergence runs to end", || {
        let runs: Vec<Value> = rollouts(&c).into_iter().filter(|r| r["kind"] == "converge").collect();
        let ended = !runs.is_empty() && runs.iter().all(|r| r["state"] == "succeeded");
        ended.then_some(runs)
    });
    let converged: usize = runs
        .iter()
        .map(|r| r["hosts"]["done"].as_u64().unwrap_or(0) as usize)
        .sum();
    assert_eq!(converged, 3, "{runs:?}");
    assert!(runs.iter().all(|r| r["created_by"] == "controller"), "{runs:?}");
    let audit = c.fleet.fleetctl_json(&["audit"]);
    let converge: Vec<&Value> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["what"] == "Convergence")
        .collect();
    assert!(
        !converge.is_empty() && converge.iter().all(|e| e["who"] == "controller"),
        "convergence runs are in the audit log: {audit}"
    );
    let metrics = c.fleet.controller.metrics_text();
    assert!(metrics.contains("fleet_convergence_hosts_total 3"), "{metrics}");
    assert!(
        metrics.contains("fleet_rollouts_ended_total{kind=\"converge\",state=\"succeeded\"}"),
        "{metrics}"
    );
}

#[test]
fn app_show_reflects_a_deploy_at_once() {
    let c = Cluster::on_v1(2);
    c.push("2.0.0", &[]);
    let out = c.fleet.fleetctl(&[
        "deploy",
        APP,
        "--release",
        "2.0.0",
        "--host",
        "app-1",
        "--output",
        "json",
    ]);
    assert_success(&out, "deploy to app-1");
    let hosts = app_hosts(&c);
    assert_eq!(
        hosts[0],
        ("app-1".into(), "2.0.0".into(), "2.0.0".into(), false),
        "{hosts:?}"
    );
    assert_eq!(
        hosts[1],
        ("app-2".into(), "1.0.0".into(), "1.0.0".into(), false),
        "{hosts:?}"
    );
}

/// A controller process killed when the test ends, however it ends.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A data dir written by the release before typed rollout states and
/// per-host desired releases (`tests/fixtures/datadir-v1.tar.gz`: made by
/// that release's `tests/local-fleet.sh --once`: rollouts of 1.0.0 and 2.0.0
/// that succeeded and a 3.0.0 that was rolled back, three hosts on 2.0.0,
/// the app-wide desired version 2.0.0) is migrated when the controller
/// starts, and nothing about the fleet changes.
#[test]
fn a_data_dir_of_the_previous_release_is_migrated_at_start() {
    use crate::harness::{bin, free_addr, http_get};
    let root = tempfile::Builder::new().prefix("fleet-it-").tempdir().expect("tempdir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/datadir-v1.tar.gz");
    let ok = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(root.path())
        .status()
        .expect("tar");
    assert!(ok.success(), "unpacking {}", fixture.display());
    let dir = root.path().join("controller");
    let (addr, metrics) = (free_addr(), free_addr());
    // The fixture was made in another directory, on other ports.
    let rewrite = |file: &str, f: &dyn Fn(&str) -> Option<String>| {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).expect("read config");
        let text: Vec<String> = text.lines().map(|l| f(l).unwrap_or_else(|| l.to_string())).collect();
        std::fs::write(&path, text.join("\n") + "\n").expect("write config");
    };
    rewrite("controller.toml", &|l| {
        let key = l.split(" =").next().unwrap_or_default();
        match key {
            "data_dir" => Some(format!("data_dir = \"{}\"", dir.display())),
            "listen" => Some(format!("listen = \"{addr}\"")),
            "metrics_listen" => Some(format!("metrics_listen = \"{metrics}\"")),
            _ => None,
        }
    });
    rewrite("fleetctl.toml", &|l| {
        let key = l.split(" =").next().unwrap_or_default();
        match key {
            "controller" => Some(format!("controller = \"{addr}\"")),
            "ca" => Some(format!("ca = \"{}\"", dir.join("ca.pem").display())),
            _ => None,
        }
    });
    let log = root.path().join("controller.log");
    let start = || {
        let child = std::process::Command::new(bin("fleet-controller"))
            .args(["serve", "--config"])
            .arg(dir.join("controller.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn controller");
        let serving = Serving(child);
        wait_until(Duration::from_secs(20), "the controller's /healthz", || {
            http_get(metrics, "/healthz").filter(|b| b.contains("ok")).map(|_| ())
        });
        serving
    };
    let fleetctl = |args: &[&str]| -> Value {
        let out = std::process::Command::new(bin("fleetctl"))
            .args(args)
            .args(["--output", "json"])
            .env("FLEET_CONFIG", dir.join("fleetctl.toml"))
            .output()
            .expect("fleetctl");
        assert_success(&out, &format!("fleetctl {args:?}"));
        json(&out)
    };

    let first = start();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("rollout record migrated"), "{logged}");
    let rollouts = fleetctl(&["rollout", "ls", APP]);
    let states: Vec<(&str, &str, &str)> = rollouts
        .as_array()
        .expect("rollouts")
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap_or_default(),
                r["kind"].as_str().unwrap_or_default(),
                r["state"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("3.0.0", "rollout", "rolled_back"),
            ("2.0.0", "rollout", "succeeded"),
            ("1.0.0", "rollout", "succeeded"),
        ],
        "{rollouts}"
    );
    let rolled_back = &rollouts[0];
    let host_states: Vec<&str> = rolled_back["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .flat_map(|b| b["hosts"].as_array().expect("hosts").iter())
        .map(|h| h["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(host_states, ["rolled_back", "rolled_back", "failed"], "{rolled_back}");
    let app = fleetctl(&["app", "show", APP]);
    assert_eq!(
        app["desired_version"], "2.0.0",
        "the app-wide version is the release for new hosts: {app}"
    );
    let hosts = app["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3, "{app}");
    for h in hosts {
        assert_eq!(
            (h["desired"].as_str(), h["current"].as_str()),
            (Some("2.0.0"), Some("2.0.0")),
            "{h}"
        );
    }
    // The rollback default follows the history: the release before 2.0.0.
    let plan = fleetctl(&["rollback", APP, "--dry-run"]);
    assert_eq!(plan["version"], "1.0.0", "{plan}");

    // Migrated once: a second start finds nothing more to migrate.
    drop(first);
    let _again = start();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!logged.contains("migrated"), "{logged}");
    assert_eq!(fleetctl(&["rollout", "ls", APP]).as_array().map(Vec::len), Some(3));
}
