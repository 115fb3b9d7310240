//! Restarts, removal, renewal and expiry.

use std::time::{Duration, Instant};

use crate::harness::{sigterm, wait_exit, wait_until, Fleet};
use crate::refusals::raw_stream;

#[test]
fn controller_kill9_and_restart_keeps_the_store_and_agents_return() {
    let mut fleet = Fleet::start(3);
    let before = fleet.hosts();
    let tokens_before = fleet.fleetctl_json(&["token", "ls", "--all"]);
    fleet.fleetctl(&["hosts", "label", "web-2", "role=db"]);

    fleet.controller.kill9();
    fleet.controller.start();
    let restarted = Instant::now();
    let after = fleet.wait_connected(3, Duration::from_secs(10));
    eprintln!(
        "all 3 agents back {:?} after the controller came up",
        restarted.elapsed()
    );

    let ids = |hs: &[serde_json::Value]| {
        let mut v: Vec<String> = hs.iter().map(|h| h["id"].as_str().unwrap_or("").to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&before), ids(&after), "the same hosts after kill -9");
    let db = after.iter().find(|h| h["hostname"] == "web-2").expect("web-2");
    assert_eq!(db["labels"]["role"], "db", "a label set before kill -9 survives it");
    assert_eq!(fleet.fleetctl_json(&["token", "ls", "--all"]), tokens_before);
}

#[test]
fn sigterm_stops_the_controller_gracefully_and_agents_reconnect() {
    let mut fleet = Fleet::start(2);
    let mut child = fleet.controller.child.take().expect("running");
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15), "controller to stop on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", fleet.logs());
    assert!(fleet.controller.log_text().contains("fleet-controller stopped"));
    // Agents survive a controller outage and come back by themselves.
    for a in &mut fleet.agents {
        assert!(
            a.child.as_mut().expect("agent").try_wait().expect("try_wait").is_none(),
            "agent {} exited",
            a.name
        );
    }
    fleet.controller.start();
    fleet.wait_connected(2, Duration::from_secs(20));
}

#[test]
fn removing_a_host_cuts_its_stream_and_refuses_it_afterwards() {
    let mut fleet = Fleet::start(2);
    let victim = fleet.agents[0].host_id().expect("host id");
    let out = fleet.fleetctl_json(&["hosts", "rm", &victim, "--yes"]);
    let removed_at = Instant::now();
    assert_eq!(out["host_id"], victim.as_str());
    assert_eq!(out["stream_cut"], true, "{out}");
    assert!(out["revoked_certificates"].as_u64().unwrap_or(0) >= 1, "{out}");

    // The agent learns at once and stops: only an operator can fix this.
    let code = fleet.agents[0].wait_exit(Duration::from_secs(10));
    eprintln!("removed agent exited {:?} after the rm", removed_at.elapsed());
    assert_eq!(code, Some(3), "{}", fleet.logs());
    assert!(
        fleet.agents[0].log_text().contains("removed"),
        "{}",
        fleet.agents[0].log_text()
    );

    // Started again with the same certificate, it is refused and says why.
    fleet.agents[0].start();
    let code = fleet.agents[0].wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(3), "{}", fleet.logs());
    let log = fleet.agents[0].log_text();
    assert!(log.contains("revoked"), "{log}");

    // At the TLS layer, for any client holding that certificate.
    let identity = std::fs::read_to_string(fleet.agents[0].dir.join("state/identity.pem")).expect("identity");
    let err = raw_stream(&fleet, Some(&identity), &victim).expect_err("revoked cert refused");
    assert!(err.contains("revoked"), "{err}");

    // The other host is untouched.
    let hosts = fleet.hosts();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["hostname"], "web-2");
    assert_eq!(hosts[0]["status"], "connected");
    let metrics = fleet.controller.metrics_text();
    assert!(
        metrics.contains("fleet_tls_refused_total{reason=\"revoked\"}"),
        "{metrics}"
    );
}

#[test]
fn certificates_renew_at_half_life_without_dropping_the_stream() {
    // 20 s certificates: the agent renews at about 10 s.
    let fleet = Fleet::controller_only(&[("cert_ttl", "\"20s\"")]);
    let mut fleet = fleet;
    let token = fleet.token(&[]);
    fleet.add_agent("web-1", &token, &[]);
    let hosts = fleet.wait_connected(1, Duration::from_secs(30));
    let first_expiry = hosts[0]["cert_not_after_ms"].as_i64().expect("expiry");
    let id = hosts[0]["id"].as_str().expect("id").to_string();
    wait_until(Duration::from_secs(25), "a renewed certificate", || {
        let h = fleet.fleetctl_json(&["hosts", "show", &id]);
        (h["cert_not_after_ms"].as_i64().unwrap_or(0) > first_expiry).then_some(())
    });
    // Past the first certificate's expiry the host is still connected on its
    // original stream (no reconnect logged by the controller).
    wait_until(Duration::from_secs(25), "the first certificate to expire", || {
        (fleet_proto::now_ms() > first_expiry + 1000).then_some(())
    });
    let h = fleet.fleetctl_json(&["hosts", "show", &id]);
    assert_eq!(h["status"], "connected", "{}", fleet.logs());
    let log = fleet.controller.log_text();
    assert_eq!(
        log.matches("agent connected").count(),
        1,
        "the stream was never dropped:\n{log}"
    );
    assert!(log.contains("certificate renewed"), "{log}");
    // A restarted agent uses the renewed identity.
    fleet.agents[0].kill9();
    fleet.agents[0].start();
    fleet.wait_connected(1, Duration::from_secs(20));
}

#[test]
fn an_expired_certificate_needs_a_new_token() {
    let mut fleet = Fleet::controller_only(&[("cert_ttl", "\"10s\"")]);
    let token = fleet.token(&["--uses", "1"]);
    fleet.add_agent("web-1", &token, &[]);
    let hosts = fleet.wait_connected(1, Duration::from_secs(30));
    let expiry = hosts[0]["cert_not_after_ms"].as_i64().expect("expiry");
    fleet.agents[0].kill9();
    // Let the certificate expire while the agent is off (no renewal possible).
    wait_until(Duration::from_secs(30), "the certificate to expire", || {
        (fleet_proto::now_ms() > expiry + 1000).then_some(())
    });
    fleet.agents[0].start();
    let code = fleet.agents[0].wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(3), "{}", fleet.logs());
    let log = fleet.agents[0].log_text();
    assert!(log.contains("expired"), "{log}");
    assert!(log.contains("fleetctl token create"), "{log}");

    // With a fresh token in its config, the same agent enrolls again by itself.
    let fresh = fleet.token(&[]);
    let config = std::fs::read_to_string(&fleet.agents[0].config).expect("config");
    let config = config.replace(&token, &fresh);
    std::fs::write(&fleet.agents[0].config, config).expect("write config");
    let old_id = hosts[0]["id"].as_str().expect("id").to_string();
    fleet.agents[0].start();
    // It enrolls as a new host, which replaces the old entry of its hostname
    // (so the dead entry no longer counts in batches or shows in hosts ls).
    let hosts = wait_until(
        Duration::from_secs(30),
        "the re-enrolled host to replace its old entry",
        || {
            let hosts = fleet.hosts();
            let connected = hosts.iter().filter(|h| h["status"] == "connected").count();
            (hosts.len() == 1 && connected == 1).then_some(hosts)
        },
    );
    assert_ne!(hosts[0]["id"].as_str(), Some(old_id.as_str()), "a new id: {hosts:?}");
    assert_eq!(hosts[0]["hostname"], "web-1", "{hosts:?}");
}

#[test]
fn hosts_gone_longer_than_a_duration_are_pruned() {
    let mut fleet = Fleet::start(2);
    fleet.wait_connected(2, Duration::from_secs(30));
    fleet.agents[1].kill9();
    wait_until(Duration::from_secs(30), "web-2 to be seen disconnected", || {
        let hosts = fleet.hosts();
        (hosts.iter().filter(|h| h["status"] == "connected").count() == 1).then_some(())
    });
    // A script must say --yes; without it nothing is asked or removed.
    let unasked = fleet.fleetctl(&["hosts", "prune", "--disconnected-for", "1m"]);
    assert_eq!(unasked.status.code(), Some(2), "{unasked:?}");
    assert!(
        String::from_utf8_lossy(&unasked.stderr).contains("pass --yes"),
        "{unasked:?}"
    );
    let too_short = fleet.fleetctl(&["hosts", "prune", "--disconnected-for", "10s", "--yes"]);
    assert_eq!(too_short.status.code(), Some(1), "under a minute is refused");
    let dry = fleet.fleetctl_json(&["hosts", "prune", "--disconnected-for", "1m", "--dry-run"]);
    assert_eq!(
        dry["removed"].as_array().map(Vec::len),
        Some(0),
        "web-2 left just now: {dry}"
    );
    std::thread::sleep(Duration::from_secs(61));
    let dry = fleet.fleetctl_json(&["hosts", "prune", "--disconnected-for", "1m", "--dry-run"]);
    assert_eq!(dry["removed"][0]["hostname"], "web-2", "{dry}");
    assert_eq!(fleet.hosts().len(), 2, "a dry run removes nothing");
    let pruned = fleet.fleetctl_json(&["hosts", "prune", "--disconnected-for", "1m", "--yes"]);
    assert_eq!(pruned["removed"].as_array().map(Vec::len), Some(1), "{pruned}");
    let hosts = fleet.hosts();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["hostname"], "web-1");
    // The pruned machine's certificate is revoked: it cannot come back by itself.
    fleet.agents[1].start();
    assert_eq!(
        fleet.agents[1].wait_exit(Duration::from_secs(30)),
        Some(3),
        "{}",
        fleet.logs()
    );
}
