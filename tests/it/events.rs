//! The fleet's event stream, followed the way an operator (or a script
//! feeding a chat channel) follows it: `fleetctl events --follow -o json`
//! running while a rollout succeeds, one is rolled back, a canary waits
//! for approval, a direct deploy reverts, and the controller restarts
//! under the follower, which picks up after the last event it saw.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{sigterm, wait_exit};
use crate::releases::assert_success;
use crate::rollouts::{Cluster, APP};

/// A running `fleetctl events --follow -o json` and the events it printed.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Follower {
    fn start(c: &Cluster, extra: &[&str]) -> Follower {
        let mut args = vec!["events", "--follow", "--output", "json"];
        args.extend(extra);
        let mut child = c.fleet.fleetctl_command(&args).spawn().expect("run fleetctl events");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line: {line}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until an event matching `want` has been printed; returns it.
    fn wait_for(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.seen.iter().find(|e| want(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if want(&e) {
                        return e;
                    }
                }
                Err(_) => panic!("no {what} event within 90 s; saw:\n{}", kinds(&self.seen).join("\n")),
            }
        }
    }

    /// Waits until `n` printed events match `want`.
    fn wait_count(&mut self, what: &str, n: usize, want: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.seen.iter().filter(|e| want(e)).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(_) => panic!(
                    "fewer than {n} {what} events within 90 s; saw:\n{}",
                    kinds(&self.seen).join("\n")
                ),
            }
        }
    }

    fn stop(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(e) = self.lines.try_recv() {
            self.seen.push(e);
        }
        self.seen
    }
}

fn kind(e: &Value) -> &str {
    e["kind"].as_str().expect("kind")
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {} {} {}", e["seq"], kind(e), e["hostname"], e["outcome"]))
        .collect()
}

fn is(k: &'static str) -> impl Fn(&Value) -> bool {
    move |e| kind(e) == k
}

/// The kinds, in order, of `events` about rollout `id`.
fn course(events: &[Value], id: &str) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .filter(|e| e["rollout_id"] == id)
        .map(|e| kind(e).to_string())
        .collect();
    out.dedup();
    out
}

#[test]
fn the_event_stream_tells_a_rollout_a_rollback_a_canary_a_revert_and_survives_a_restart() {
    let mut c = Cluster::start(3);
    let mut f = Follower::start(&c, &[]);

    // A release and a rollout that succeeds everywhere.
    c.push("1.0.0", &[]);
    let pushed = f.wait_for("release_pushed", is("release_pushed"));
    assert_eq!(
        (pushed["app"].as_str(), pushed["version"].as_str()),
        (Some(APP), Some("1.0.0"))
    );
    assert_eq!(pushed["who"], "admin", "{pushed}");
    let ok = c.rollout(&["--release", "1.0.0", "--batch", "2", "--wait"]);
    assert_success(&ok, "rollout 1.0.0");
    let ended = f.wait_for("rollout_ended", is("rollout_ended"));
    assert_eq!(ended["outcome"], "succeeded", "{ended}");
    let first = ended["rollout_id"].as_str().expect("rollout id").to_string();
    assert_eq!(
        course(&f.seen, &first),
        [
            "rollout_started",
            "batch_started",
            "rollout_host_done",
            "batch_done",
            "batch_started",
            "rollout_host_done",
            "batch_done",
            "rollout_ended"
        ],
        "{:#?}",
        kinds(&f.seen)
    );
    let host_done: Vec<&Value> = f
        .seen
        .iter()
        .filter(|e| e["rollout_id"] == first.as_str() && kind(e) == "rollout_host_done")
        .collect();
    assert_eq!(host_done.len(), 3, "one end per host");
    assert!(
        host_done
            .iter()
            .all(|e| e["outcome"] == "succeeded" && !e["hostname"].as_str().unwrap_or_default().is_empty()),
        "{host_done:#?}"
    );

    // A release unhealthy on one host: the rollout is rolled back.
    c.push("2.0.0", &[c.ports[0]]);
    let bad = c.rollout(&["--release", "2.0.0", "--batch", "100%", "--wait"]);
    assert!(!bad.status.success(), "a rolled-back rollout fails --wait");
    let ended = f.wait_for("the second rollout_ended", |e| {
        kind(e) == "rollout_ended" && e["rollout_id"] != first.as_str()
    });
    assert_eq!(ended["outcome"], "rolled_back", "{ended}");
    let second = ended["rollout_id"].as_str().expect("rollout id").to_string();
    assert!(
        course(&f.seen, &second).contains(&"rolling_back".to_string()),
        "{:#?}",
        kinds(&f.seen)
    );

    // A canary that waits for approval says so.
    c.push("3.0.0", &[]);
    let canary = c.fleet.fleetctl_json(&[
        "rollout",
        APP,
        "--release",
        "3.0.0",
        "--canary",
        "1",
        "--canary-approve",
        "--no-auto-rollback",
    ]);
    let canary_id = canary["id"].as_str().expect("rollout id").to_string();
    let waiting = f.wait_for("canary_waiting", is("canary_waiting"));
    assert_eq!(waiting["rollout_id"], canary_id.as_str(), "{waiting}");
    assert_success(&c.fleet.fleetctl(&["rollout", "abort", &canary_id]), "abort the canary");
    f.wait_for("the canary's end", |e| {
        kind(e) == "rollout_ended" && e["rollout_id"] == canary_id.as_str()
    });

    // A direct deploy of the unhealthy release on its host reverts.
    let hosts = c.fleet.hosts();
    let host0 = hosts
        .iter()
        .find(|h| c.host_index(h["id"].as_str().expect("id")) == 0)
        .expect("host 0")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deploy = c
        .fleet
        .fleetctl(&["deploy", APP, "--host", &host0, "--release", "2.0.0"]);
    assert!(!deploy.status.success(), "the deploy fails on the unhealthy host");
    let reverted = f.wait_for("host_task_ended", is("host_task_ended"));
    assert_eq!(reverted["outcome"], "reverted", "{reverted}");
    assert_eq!(reverted["host_id"], host0.as_str(), "{reverted}");

    // The controller restarts under the follower: its hosts come back,
    // and the follower goes on after the last event it saw.
    let before_restart = f.seen.last().expect("events")["seq"].as_u64().expect("seq");
    let mut child = c.fleet.controller.child.take().expect("controller running");
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(20), "controller stops on SIGTERM");
    c.fleet.controller.start();
    f.wait_count("host_connected after the restart", 3, |e| {
        kind(e) == "host_connected" && e["seq"].as_u64().expect("seq") > before_restart
    });
    let events = f.stop();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    // Every event once, in order, none missing: the follower resumed after
    // the last one it saw.
    let expected: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{:#?}", kinds(&events));
    let reconnected = events
        .iter()
        .filter(|e| kind(e) == "host_connected" && e["seq"].as_u64().expect("seq") > before_restart)
        .count();
    assert_eq!(reconnected, 3, "{:#?}", kinds(&events));

    // The log outlives the restart, and filters apply.
    let listed = c
        .fleet
        .fleetctl(&["events", "--since", "1h", "--app", APP, "--output", "json"]);
    assert_success(&listed, "events --app");
    let listed: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(listed.iter().all(|e| e["app"] == APP), "{listed:#?}");
    assert!(
        listed.iter().any(|e| e["rollout_id"] == first.as_str()),
        "{:#?}",
        kinds(&listed)
    );
    let only = c
        .fleet
        .fleetctl(&["events", "--since", "1h", "--kind", "rollout_ended", "--output", "json"]);
    assert_success(&only, "events --kind");
    let ends: Vec<Value> = String::from_utf8_lossy(&only.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let outcomes: Vec<&str> = ends.iter().map(|e| e["outcome"].as_str().expect("outcome")).collect();
    assert_eq!(outcomes, ["succeeded", "rolled_back", "aborted"], "{ends:#?}");
    let wrong = c.fleet.fleetctl(&["events", "--kind", "nope"]);
    assert_eq!(wrong.status.code(), Some(2), "an unknown kind is a usage error");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("rollout_ended"),
        "the error lists the kinds"
    );
}
