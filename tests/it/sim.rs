//! fleet-sim at small sizes, so it cannot rot:
//! - 300 simulated hosts enroll and connect to a real controller, a release
//!   goes to all of them in 10 % batches, and a release that fails on every
//!   tenth host goes past its failure budget and is rolled back on its own,
//!   every host ending on the release it ran before;
//! - 1,000 hosts fail a release with their journals in their reports: the
//!   answers that grow with the fleet still reach fleetctl and the
//!   dashboard (the rollout's record passes gRPC's usual 4 MiB; the host
//!   list comes in pages).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleet_proto::host_service_client::HostServiceClient;
use fleet_proto::rollout_service_client::RolloutServiceClient;
use fleet_proto::{GetRolloutRequest, ListHostsRequest};
use serde_json::Value;

use crate::harness::{bin, wait_until, Fleet};
use crate::limits::operator_channel;
use crate::releases::{assert_success, release};

const HOSTS: usize = 300;
const APP: &str = "demo";

/// The simulator; killed when dropped.
struct Sim {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Sim {
    /// `hosts` simulated hosts labelled role=sim running APP, with `extra`
    /// arguments (which releases fail, how).
    fn start(fleet: &Fleet, token: &str, hosts: usize, extra: &[&str]) -> Sim {
        let mut child = Command::new(bin("fleet-sim"))
            .args([
                "--controller",
                &fleet.controller.addr.to_string(),
                "--ca-fingerprint",
                &fleet.controller.ca_fingerprint,
                "--agents",
                &hosts.to_string(),
                "--label",
                "role=sim",
                "--app",
                APP,
                "--report-every",
                "2s",
                // Gently: the tests beside this one share two cores.
                "--enroll-concurrency",
                "8",
            ])
            .args(extra)
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

/// The usual controller for these tests: enrollment limits that let
/// hundreds of hosts in at once.
fn controller(heartbeat: &str) -> Fleet {
    Fleet::controller_only(&[
        (
            "limits",
            "{ enroll_per_source = { burst = 100000, per_minute = 1000000 }, \
             enroll_per_token = { burst = 100000, per_minute = 1000000 } }",
        ),
        ("heartbeat_interval", heartbeat),
    ])
}

fn create_app(fleet: &Fleet) {
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
}

fn push(fleet: &Fleet, version: &str) {
    assert_success(
        &fleet.push_release(APP, version, &release(version, &[]).gz()),
        "release push",
    );
}

fn rollout(fleet: &Fleet, version: &str, batch: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "rollout",
        APP,
        "--release",
        version,
        "--batch",
        batch,
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
    let fleet = controller("\"2s\"");
    let token = fleet.token(&["--uses", &HOSTS.to_string(), "--label", "role=sim"]);
    let sim = Sim::start(
        &fleet,
        &token,
        HOSTS,
        // Each deploy downloads its artifact and checks it, as an agent does.
        &[
            "--fail-version",
            "3.0.0",
            "--fail-every",
            "10",
            "--phase-ms",
            "10",
            "--fetch",
        ],
    );
    sim.wait_line("enrolled 300 hosts", 180);
    sim.wait_line("connected 300 hosts", 120);
    wait_until(Duration::from_secs(30), "300 hosts connected in hosts ls", || {
        let hosts = fleet.hosts();
        (hosts.iter().filter(|h| h["status"] == "connected").count() == HOSTS).then_some(())
    });
    create_app(&fleet);

    // Everyone to 1.0.0, then 2.0.0, in ten batches each.
    push(&fleet, "1.0.0");
    let r = rollout(&fleet, "1.0.0", "10%", &[]);
    assert_eq!(r["state"], "succeeded", "{r}");
    push(&fleet, "2.0.0");
    let r = rollout(&fleet, "2.0.0", "10%", &[]);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["batches"].as_array().map(Vec::len), Some(10), "10 % batches: {r}");
    assert_eq!(currents(&fleet).get("2.0.0"), Some(&HOSTS), "{:?}", currents(&fleet));

    // 3.0.0 fails its health check on every tenth host: 30 in all, so the
    // rollout goes past a 5 % budget (15 hosts) before its last batch, and
    // the hosts it changed are moved back.
    push(&fleet, "3.0.0");
    let r = rollout(&fleet, "3.0.0", "10%", &["--max-failures", "5%"]);
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

#[test]
fn a_thousand_hosts_failing_with_their_journals_fit_every_answer() {
    const CROWD: usize = 1000;
    let fleet = controller("\"10s\"");
    let token = fleet.token(&["--uses", &CROWD.to_string(), "--label", "role=sim"]);
    // Every host fails 1.0.0's health check, its report carrying 6 KB of
    // journal, as a real agent's does (the check's output and the unit's
    // last lines).
    let sim = Sim::start(
        &fleet,
        &token,
        CROWD,
        &[
            "--fail-version",
            "1.0.0",
            "--fail-every",
            "1",
            "--fail-detail-bytes",
            "6000",
            "--phase-ms",
            "0",
        ],
    );
    sim.wait_line("connected 1000 hosts", 300);
    create_app(&fleet);
    push(&fleet, "1.0.0");

    // fleetctl follows the rollout to its end, and shows and lists it. The
    // budget allows every failure, and still a release no host took is no
    // success (nor the app's release, which convergence would push).
    let r = rollout(&fleet, "1.0.0", "100%", &["--max-failures", "100%"]);
    assert_eq!(r["state"], "failed", "{} {}", r["state"], r["reason"]);
    assert_eq!(r["reason"], "no host runs 1.0.0: 1000 hosts failed");
    assert_eq!(r["hosts"]["failed"], CROWD, "{}", r["hosts"]);
    let detail = r["batches"][0]["hosts"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("simulated line") && detail.len() >= 6000, "{detail}");
    let id = r["id"].as_str().expect("id").to_string();
    let shown = fleet.fleetctl_json(&["rollout", "show", &id]);
    assert_eq!(shown["hosts"]["failed"], CROWD, "{}", shown["hosts"]);
    let listed = fleet.fleetctl_json(&["rollout", "ls"]);
    let ids: Vec<&Value> = listed.as_array().expect("a list").iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [id.as_str()], "no convergence run toward a release no host took");
    // The table asks for summaries (counts, no hosts), as app history does.
    let table = fleet.fleetctl(&["rollout", "ls"]);
    assert_success(&table, "rollout ls");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("0/1000 done, 1000 failed"), "{text}");
    let history = fleet.fleetctl_json(&["app", "history", APP]);
    assert_eq!(history[0]["hosts"]["failed"], CROWD, "{history}");

    // That record is past tonic's default answer limit: a client that keeps
    // the default cannot read it (so the above proves fleetctl can).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (channel, auth) = operator_channel(&fleet, &rt);
    let authed = move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", auth.clone());
        Ok(r)
    };
    let mut rollouts = RolloutServiceClient::with_interceptor(channel.clone(), authed.clone());
    let status = rt
        .block_on(rollouts.get_rollout(GetRolloutRequest { id: id.clone() }))
        .expect_err("the record is over 4 MiB");
    assert!(
        status.message().contains("decoded message length too large"),
        "{status:?}"
    );

    // The host list in pages: each host once, in order, the total on each.
    let mut hosts = HostServiceClient::with_interceptor(channel, authed);
    let mut page_token = String::new();
    let mut sizes = Vec::new();
    let mut names = Vec::new();
    loop {
        let page = rt
            .block_on(hosts.list_hosts(ListHostsRequest {
                page_size: 300,
                page_token,
                ..Default::default()
            }))
            .expect("a page of hosts")
            .into_inner();
        assert_eq!(page.total as usize, CROWD);
        sizes.push(page.hosts.len());
        names.extend(page.hosts.iter().map(|h| h.facts.clone().unwrap_or_default().hostname));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, [300, 300, 300, 100]);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, none twice");
    let all = rt
        .block_on(hosts.list_hosts(ListHostsRequest::default()))
        .expect("every host at once, as before pages")
        .into_inner();
    assert_eq!((all.hosts.len(), all.next_page_token.as_str()), (CROWD, ""));
    let status = rt
        .block_on(hosts.list_hosts(ListHostsRequest {
            page_size: 5001,
            ..Default::default()
        }))
        .expect_err("page_size over the maximum");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("page_size: "), "{}", status.message());
    assert_eq!(fleet.hosts().len(), CROWD, "fleetctl hosts ls walks the pages");

    // The dashboard's host list: 500 a page, the next linked.
    let first = dashboard_page(&fleet, "/ui/hosts");
    assert!(first.contains("1000 hosts, 1000 connected · showing 1–500"), "{first}");
    let at = first.find("/ui/hosts?after=").expect("a link to the next page");
    let next = &first[at..at + first[at..].find('"').expect("link end")];
    let second = dashboard_page(&fleet, &next.replace("&amp;", "&"));
    assert!(second.contains("showing 501–1000"), "{second}");
    assert!(!second.contains("/ui/hosts?after="), "the last page links no further");
    drop(sim);
}

/// A dashboard page as the admin sees it (curl, the fleet's CA).
fn dashboard_page(fleet: &Fleet, path: &str) -> String {
    let token = fleet.controller.admin_token();
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(fleet.controller.data_dir.join("ca.pem"))
        .args(["-b", &format!("fleet_ui={token}")])
        .arg(format!("https://{}{path}", fleet.controller.addr))
        .output()
        .expect("run curl (tests/deps.sh installs it)");
    assert!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 page")
}
