//! Three controllers of one fleet on a real 3-member etcd cluster, with six
//! hosts (each with its own systemd): one controller serves, two follow,
//! forwarding what they are asked to it and copying its releases. The
//! hosts dial the followers, so every task reaches its host through a
//! controller other than the one that decided it. Killed mid-rollout, the
//! serving one is replaced; the hosts come back through the others and
//! the rollout finishes there, every host activated exactly once.

use std::time::{Duration, Instant};

use crate::etcd_store::{init_args, members, stderr, strs, Etcd};
use crate::harness::{bin, http_get, http_get_status, tail, wait_until, Controller, Fleet};
use crate::rollouts::{rollout_id, Cluster};

/// The role of each controller of `config`'s fleet, by its data dir.
fn roles(config: &std::path::Path, controllers: &[&Controller]) -> Vec<String> {
    let listed = members(config);
    controllers
        .iter()
        .map(|c| {
            let dir = c.data_dir.display().to_string();
            listed
                .iter()
                .find(|m| m["dir"].as_str() == Some(dir.as_str()))
                .map_or("absent".to_string(), |m| m["role"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Fails the test: the logs of the fleet and of `others` (controllers),
/// then `what` ended how and each host's outcome, last (CI shows the
/// output's tail).
fn rollout_failed(cluster: &mut Cluster, others: &[&Controller], r: &serde_json::Value, what: &str) -> ! {
    eprintln!("{}", cluster.fleet.logs());
    for c in others {
        eprintln!(
            "--- controller {} log ---\n{}",
            c.data_dir.display(),
            tail(&c.log_text(), 80)
        );
    }
    cluster.fleet.logs_shown = true;
    panic!("{what} ended {}: {}", r["state"], outcome(r));
}

/// A rollout record in a few lines: why it ended, and how each host did.
fn outcome(r: &serde_json::Value) -> String {
    let mut s = format!("{}\n", r["reason"].as_str().unwrap_or_default());
    for b in r["batches"].as_array().into_iter().flatten() {
        for h in b["hosts"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "  {} {} {}\n",
                h["host_id"].as_str().unwrap_or_default(),
                h["state"].as_str().unwrap_or_default(),
                h["detail"].as_str().unwrap_or_default()
            ));
        }
    }
    s
}

/// The client connections follower `c` holds and forwards.
fn forwarded(c: &Controller) -> u64 {
    http_get(c.metrics, "/metrics")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("fleet_controller_forwarded_connections "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Waits until `c` forwards to the controller that serves.
pub fn wait_following(c: &Controller) {
    wait_until(Duration::from_secs(60), "a controller to follow", || {
        c.log_text()
            .contains("forwarding to the controller that serves")
            .then_some(())
    });
}

/// Whether the artifact `sha256` is in `c`'s data dir.
fn holds(c: &Controller, sha256: &str) -> bool {
    c.data_dir.join("artifacts").join(sha256).is_file()
}

/// Makes the admin's fleetctl.toml name the controllers `all` (commas).
pub fn fleetctl_knows(fleet: &Fleet, all: &str) {
    let fleetctl = std::fs::read_to_string(&fleet.controller.fleetctl_config).expect("fleetctl.toml");
    let line = fleetctl
        .lines()
        .find(|l| l.starts_with("controller"))
        .expect("controller in fleetctl.toml")
        .to_string();
    std::fs::write(
        &fleet.controller.fleetctl_config,
        fleetctl.replace(&line, &format!("controller = \"{all}\"")),
    )
    .expect("write fleetctl.toml");
}

/// The sha256 of `app`'s release `version`.
fn sha_of(cluster: &Cluster, version: &str) -> String {
    let v = cluster
        .fleet
        .fleetctl_json(&["release", "show", crate::rollouts::APP, version]);
    v["sha256"]
        .as_str()
        .or_else(|| v["artifact"]["sha256"].as_str())
        .unwrap_or_else(|| panic!("sha256 in {v}"))
        .to_string()
}

#[test]
fn a_controller_that_takes_over_without_an_artifact_copies_it_from_the_one_that_holds_it() {
    let etcd = Etcd::cluster(1);
    let args = init_args(&etcd, "fleet/copies/");
    let mut fleet = Fleet::controller_only_with(&strs(&args), &[], "info");
    let root = fleet.root.path().to_path_buf();
    let mut b = fleet.controller.join(&root, "controller-b", &strs(&args), &[]);
    let mut c = fleet.controller.join(&root, "controller-c", &strs(&args), &[]);
    b.spawn();
    wait_following(&b);
    let all = [fleet.controller.addr, b.addr, c.addr].map(|a| a.to_string()).join(",");
    fleetctl_knows(&fleet, &all);
    fleet.agent_controllers = Some(all);
    let mut cluster = Cluster::on_fleet(fleet, &[""; 2], "info");
    // Pushed to a, copied by b (the push waits for it); c is not running.
    cluster.push("1.0.0", &[]);
    let sha = sha_of(&cluster, "1.0.0");
    assert!(holds(&b, &sha), "b holds 1.0.0 when the push is answered");
    // b, then a die; c starts and serves without the artifact.
    b.kill9();
    cluster.fleet.controller.kill9();
    c.spawn();
    wait_until(Duration::from_secs(60), "c to serve", || {
        c.log_text().contains("fleet-controller serving").then_some(())
    });
    assert!(!holds(&c, &sha), "c never had a chance to copy 1.0.0");
    // b returns (as a follower): c copies the artifact from it, verified,
    // and the hosts get it from c.
    b.spawn();
    cluster.fleet.wait_connected(2, Duration::from_secs(60));
    let out = cluster.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]);
    assert!(out.status.success(), "rollout 1.0.0 from c: {}", stderr(&out));
    cluster.wait_all_serve("1.0.0");
    assert!(holds(&c, &sha), "c holds 1.0.0 now");
    assert!(
        c.log_text().contains("copied a release's artifact") && c.log_text().contains(&b.addr.to_string()),
        "c copied 1.0.0 from b: {}",
        c.log_text()
    );
    b.kill9();
    c.kill9();
}

#[test]
fn three_controllers_a_rollout_survives_its_controller_killed_mid_batch_and_hosts_move_to_the_next() {
    let etcd = Etcd::cluster(3);
    let args = init_args(&etcd, "fleet/three/");
    let mut fleet = Fleet::controller_only_with(&strs(&args), &[], "info");
    let root = fleet.root.path().to_path_buf();
    // Two more join it: the fleet's CA and keys, their own certificates.
    let mut b = fleet.controller.join(&root, "controller-b", &strs(&args), &[]);
    let mut c = fleet.controller.join(&root, "controller-c", &strs(&args), &[]);
    assert!(
        !b.data_dir.join("fleetctl.toml").exists(),
        "a joined controller makes no admin token"
    );
    // Keys of another fleet cannot join this one; nothing is written.
    let stranger = Controller::init(&root.join("stranger"), &[]);
    let refused = root.join("refused");
    let out = std::process::Command::new(bin("fleet-controller"))
        .args(["join", "--from"])
        .arg(&stranger.data_dir)
        .arg("--data-dir")
        .arg(&refused)
        .args(&args)
        .output()
        .expect("join");
    assert!(!out.status.success(), "a stranger's keys joined");
    assert!(
        stderr(&out).contains(&stranger.ca_fingerprint) && stderr(&out).contains(&fleet.controller.ca_fingerprint),
        "{}",
        stderr(&out)
    );
    assert!(!refused.exists(), "nothing written for a refused join");
    b.spawn();
    c.spawn();
    let serving = fleet.controller.addr.to_string();
    for s in [&b, &c] {
        wait_following(s);
        let (code, body) = http_get_status(s.metrics, "/healthz").expect("a follower's /healthz");
        assert!(code == 200 && body.contains(&serving), "{code} {body}");
    }
    assert_eq!(
        roles(&fleet.controller.config, &[&fleet.controller, &b, &c]),
        ["serving", "follower", "follower"]
    );
    // fleetctl knows all three; the hosts know the two followers only, so
    // that every host's stream is held by a controller that does not serve.
    let all = [fleet.controller.addr, b.addr, c.addr].map(|a| a.to_string()).join(",");
    fleetctl_knows(&fleet, &all);
    fleet.agent_controllers = Some([b.addr, c.addr].map(|a| a.to_string()).join(","));
    let cluster = Cluster::on_fleet(fleet, &[""; 6], "info");
    assert!(
        forwarded(&b) + forwarded(&c) >= 6,
        "the followers hold the hosts' connections: b {}, c {}",
        forwarded(&b),
        forwarded(&c)
    );

    // A push is answered once a follower holds a copy too.
    cluster.push("1.0.0", &[]);
    let sha1 = sha_of(&cluster, "1.0.0");
    assert!(
        holds(&b, &sha1) || holds(&c, &sha1),
        "a follower holds 1.0.0 when the push is answered"
    );
    // An operator who knows only a follower rolls it out through it.
    let out = cluster.fleet.fleetctl_with_controller(
        &c.addr.to_string(),
        &[
            "rollout",
            crate::rollouts::APP,
            "--release",
            "1.0.0",
            "--batch",
            "100%",
            "--wait",
        ],
    );
    assert!(
        out.status.success(),
        "rollout 1.0.0 through a follower: {}",
        stderr(&out)
    );
    cluster.wait_all_serve("1.0.0");
    cluster.push("2.0.0", &[]);
    let out = cluster.rollout(&["--release", "2.0.0", "--batch", "1", "--output", "json"]);
    assert!(out.status.success(), "rollout 2.0.0: {}", stderr(&out));
    let id = rollout_id(&out);
    wait_until(Duration::from_secs(60), "the second batch to start", || {
        (cluster.spans("2.0.0").len() >= 2).then_some(())
    });

    // Live streams opened on the serving controller: they must go on on
    // the next one.
    let stdout_of = |args: &[&str], name: &str| {
        let path = root.join(name);
        let child = cluster
            .fleet
            .fleetctl_command(args)
            .stdout(std::fs::File::create(&path).expect("stdout file"))
            .stderr(std::fs::File::create(root.join(format!("{name}.err"))).expect("stderr file"))
            .spawn()
            .expect("spawn fleetctl");
        (child, path)
    };
    let (mut watching, watched) = stdout_of(&["rollout", "status", &id, "--watch", "--output", "json"], "watch.out");
    let (mut following, followed) = stdout_of(&["events", "--follow", "--output", "json"], "events.out");
    std::thread::sleep(Duration::from_secs(1));

    // The serving controller dies mid-rollout.
    let mut cluster = cluster;
    cluster.fleet.controller.kill9();
    let killed = Instant::now();
    let next = wait_until(Duration::from_secs(60), "a follower to serve", || {
        [&b, &c]
            .into_iter()
            .position(|s| s.log_text().contains("fleet-controller serving"))
    });
    let took_over = killed.elapsed();
    cluster.fleet.wait_connected(6, Duration::from_secs(60));
    let reconnected = killed.elapsed();
    println!(
        "failover: a follower served {:.1} s after the kill; all 6 hosts connected to it {:.1} s after the kill \
         ({:.1} s after it served)",
        took_over.as_secs_f64(),
        reconnected.as_secs_f64(),
        (reconnected - took_over).as_secs_f64()
    );

    let r = cluster.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    if r["state"] != "succeeded" {
        rollout_failed(&mut cluster, &[&b, &c], &r, "the rollout across the failover");
    }
    cluster.assert_each_host_activated_once("2.0.0");
    cluster.wait_all_serve("2.0.0");
    // `rollout status --watch` followed it to the end across the failover.
    let status = crate::harness::wait_exit(&mut watching, Duration::from_secs(60), "rollout status --watch");
    let err = std::fs::read_to_string(root.join("watch.out.err")).unwrap_or_default();
    assert!(status.success(), "the watch ended with an error: {err}");
    let last: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&watched).expect("watch output").trim())
        .unwrap_or_else(|e| panic!("the watch's final record: {e}; stderr: {err}"));
    assert_eq!(last["state"], "succeeded", "{last}");
    // `events --follow` saw the rollout end, which happened on the new controller.
    wait_until(
        Duration::from_secs(30),
        "the followed events to show the rollout's end",
        || {
            std::fs::read_to_string(&followed)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("rollout_succeeded") || (l.contains(&id) && l.contains("succeeded")))
                .then_some(())
        },
    );
    let _ = following.kill();
    let _ = following.wait();

    // One etcd member lost: the new serving controller takes a push (a
    // follower copies it) and rolls it out.
    let mut etcd = etcd;
    etcd.kill9_member(1);
    cluster.push("3.0.0", &[]);
    let out = cluster.rollout(&["--release", "3.0.0", "--batch", "100%", "--wait"]);
    assert!(
        out.status.success(),
        "rollout 3.0.0 with an etcd member down: {}",
        stderr(&out)
    );
    cluster.wait_all_serve("3.0.0");

    // The killed one comes back as a follower.
    cluster.fleet.controller.spawn();
    let config = [&b, &c][next].config.clone();
    wait_until(Duration::from_secs(60), "the old controller to follow", || {
        let r = roles(&config, &[&cluster.fleet.controller, &b, &c]);
        (r.iter().filter(|x| *x == "serving").count() == 1 && r.iter().filter(|x| *x == "follower").count() == 2)
            .then_some(())
    });

    wait_following(&cluster.fleet.controller);
    // A second etcd member lost: no majority. Writes are refused naming
    // etcd, whichever controller is asked; the serving one's /healthz
    // says so.
    etcd.kill9_member(2);
    let serving_metrics = [&b, &c][next].metrics;
    crate::etcd_store::writes_refused_naming_etcd(&cluster.fleet, serving_metrics);
    // Both return: the fleet goes on, three controllers, one serving.
    etcd.restart();
    wait_until(Duration::from_secs(60), "/healthz to recover", || {
        http_get_status(serving_metrics, "/healthz").filter(|(code, _)| *code == 200)
    });
    let out = cluster.rollout(&["--release", "2.0.0", "--batch", "100%", "--wait"]);
    assert!(
        out.status.success(),
        "rollout 2.0.0 once etcd is back: {}",
        stderr(&out)
    );
    cluster.wait_all_serve("2.0.0");
    let r = roles(&config, &[&cluster.fleet.controller, &b, &c]);
    assert_eq!(
        (
            r.iter().filter(|x| *x == "serving").count(),
            r.iter().filter(|x| *x == "follower").count()
        ),
        (1, 2),
        "{r:?}"
    );
    b.kill9();
    c.kill9();
}

#[test]
fn a_follower_killed_while_its_hosts_deploy_loses_no_host_of_the_rollout() {
    let etcd = Etcd::cluster(1);
    let args = init_args(&etcd, "fleet/follower-killed/");
    let mut fleet = Fleet::controller_only_with(&strs(&args), &[], "info");
    let root = fleet.root.path().to_path_buf();
    let mut followers = [
        fleet.controller.join(&root, "controller-b", &strs(&args), &[]),
        fleet.controller.join(&root, "controller-c", &strs(&args), &[]),
    ];
    for f in &mut followers {
        f.spawn();
        wait_following(f);
    }
    let addrs = |cs: &[&Controller]| cs.iter().map(|c| c.addr.to_string()).collect::<Vec<_>>().join(",");
    fleetctl_knows(&fleet, &addrs(&[&fleet.controller, &followers[0], &followers[1]]));
    // The hosts dial the followers only: every host's stream to the
    // serving controller goes through one of them.
    fleet.agent_controllers = Some(addrs(&[&followers[0], &followers[1]]));
    let mut cluster = Cluster::on_fleet(fleet, &[""; 4], "info");
    cluster.push("1.0.0", &[]);
    let out = cluster.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]);
    assert!(out.status.success(), "rollout 1.0.0: {}", stderr(&out));
    cluster.wait_all_serve("1.0.0");

    // Each host's activation of 2.0.0 takes 4 s; the follower holding
    // more of the hosts' streams dies while they run.
    cluster.push_pausing("2.0.0", &[], 4);
    wait_until(Duration::from_secs(30), "the followers to hold the 4 hosts", || {
        (forwarded(&followers[0]) + forwarded(&followers[1]) >= 4).then_some(())
    });
    let dying = usize::from(forwarded(&followers[1]) > forwarded(&followers[0]));
    let held = forwarded(&followers[dying]);
    assert!(held >= 2, "the follower to kill holds {held} hosts");
    let out = cluster.rollout(&["--release", "2.0.0", "--batch", "100%", "--output", "json"]);
    assert!(out.status.success(), "rollout 2.0.0: {}", stderr(&out));
    let id = rollout_id(&out);
    wait_until(Duration::from_secs(60), "every host to start activating 2.0.0", || {
        (cluster.spans("2.0.0").len() == 4).then_some(())
    });
    followers[dying].kill9();

    // Its hosts come back through the other one, and their tasks, which
    // ran on, are taken as they end: nobody failed, nobody twice.
    let r = cluster.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    if r["state"] != "succeeded" {
        let what = format!("the rollout with {held} hosts' follower killed");
        rollout_failed(&mut cluster, &[&followers[1 - dying]], &r, &what);
    }
    cluster.assert_each_host_activated_once("2.0.0");
    cluster.wait_all_serve("2.0.0");
    for f in &mut followers {
        f.kill9();
    }
}
