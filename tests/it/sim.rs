//! fleet-sim at a small size, so it cannot rot: 300 simulated hosts enroll
//! and connect to a real controller, a release goes to all of them in 10 %
//! batches, and a release that fails on every tenth host goes past its
//! failure budget and is rolled back on its own, every host ending on the
//! release it ran before.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{bin, wait_until, Fleet};
use crate::releases::{assert_success, release};

const HOSTS: usize = 300;
const APP: &str = "demo";

/// The simulator; killed when dropped.
struct Sim {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Sim {
    fn start(fleet: &Fleet, token: &str) -> Sim {
        let mut child = Command::new(bin("fleet-sim"))
            .args([
                "--controller",
                &fleet.controller.addr.to_string(),
                "--ca-fingerprint",
                &fleet.controller.ca_fingerprint,
                "--agents",
                &HOSTS.to_string(),
                "--label",
                "role=sim",
                "--app",
                APP,
                "--fail-version",
                "3.0.0",
                "--fail-every",
                "10",
                "--phase-ms",
                "10",
                "--report-every",
                "2s",
                // Gently: the tests beside this one share two cores.
                "--enroll-concurrency",
                "8",
            ])
            .env("FLEET_SIM_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fleet-sim");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("fleet-sim: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Sim { child, lines }
    }

    /// Waits for a line starting with `prefix`.
    fn wait_line(&self, prefix: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("fleet-sim printed no '{prefix}' line within {secs} s"),
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push(fleet: &Fleet, version: &str) {
    assert_success(
        &fleet.push_release(APP, version, &release(version, &[]).gz()),
        "release push",
    );
}

fn rollout(fleet: &Fleet, version: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "rollout",
        APP,
        "--release",
        version,
        "--batch",
        "10%",
        "--wait",
        "--output",
        "json",
    ];
    args.extend(extra);
    let out = fleet
        .fleetctl_within(&args, Duration::from_secs(300))
        .expect("the rollout ends within 5 minutes");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("rollout JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn currents(fleet: &Fleet) -> std::collections::BTreeMap<String, usize> {
    let app = fleet.fleetctl_json(&["app", "show", APP]);
    let mut by_version = std::collections::BTreeMap::new();
    for h in app["hosts"].as_array().expect("hosts") {
        *by_version
            .entry(h["current"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    by_version
}

#[test]
fn three_hundred_simulated_hosts_roll_out_and_roll_back_on_their_own() {
    let fleet = Fleet::controller_only(&[
        (
            "limits",
            "{ enroll_per_source = { burst = 100000, per_minute = 1000000 }, \
             enroll_per_token = { burst = 100000, per_minute = 1000000 } }",
        ),
        ("heartbeat_interval", "\"2s\""),
    ]);
    let token = fleet.token(&["--uses", &HOSTS.to_string(), "--label", "role=sim"]);
    let sim = Sim::start(&fleet, &token);
    sim.wait_line("enrolled 300 hosts", 180);
    sim.wait_line("connected 300 hosts", 120);
    wait_until(Duration::from_secs(30), "300 hosts connected in hosts ls", || {
        let hosts = fleet.hosts();
        (hosts.iter().filter(|h| h["status"] == "connected").count() == HOSTS).then_some(())
    });
    assert_success(
        &fleet.fleetctl(&[
            "app",
            "create",
            APP,
            "--unit",
            "fleet-app-demo.service",
            "--selector",
            "role=sim",
            "--no-health",
        ]),
        "app create",
    );

    // Everyone to 1.0.0, then 2.0.0, in ten batches each.
    push(&fleet, "1.0.0");
    let r = rollout(&fleet, "1.0.0", &[]);
    assert_eq!(r["state"], "succeeded", "{r}");
    push(&fleet, "2.0.0");
    let r = rollout(&fleet, "2.0.0", &[]);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["batches"].as_array().map(Vec::len), Some(10), "10 % batches: {r}");
    assert_eq!(currents(&fleet).get("2.0.0"), Some(&HOSTS), "{:?}", currents(&fleet));

    // 3.0.0 fails its health check on every tenth host: 30 in all, so the
    // rollout goes past a 5 % budget (15 hosts) before its last batch, and
    // the hosts it changed are moved back.
    push(&fleet, "3.0.0");
    let r = rollout(&fleet, "3.0.0", &["--max-failures", "5%"]);
    assert_eq!(r["state"], "rolled_back", "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("budget") || reason.contains("failed"), "{reason}");
    let batches = r["batches"].as_array().expect("batches");
    let started = batches.iter().filter(|b| b["state"] != "pending").count();
    assert!(started < batches.len(), "it stopped before the last batch: {r}");
    wait_until(Duration::from_secs(60), "every host back on 2.0.0", || {
        let c = currents(&fleet);
        (c.get("2.0.0") == Some(&HOSTS)).then_some(c)
    });
    // The simulator stayed connected throughout.
    let hosts = fleet.hosts();
    assert_eq!(hosts.iter().filter(|h| h["status"] == "connected").count(), HOSTS);
    drop(sim);
}
