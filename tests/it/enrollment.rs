//! Enrollment, heartbeats, labels, metrics.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::harness::{wait_until, Fleet};

#[test]
fn three_agents_enroll_and_heartbeat() {
    let fleet = Fleet::start(3);
    let hosts = fleet.wait_connected(3, Duration::from_secs(30));

    let mut names: Vec<&str> = hosts
        .iter()
        .map(|h| h["hostname"].as_str().expect("hostname"))
        .collect();
    names.sort();
    assert_eq!(names, ["web-1", "web-2", "web-3"]);
    for h in &hosts {
        // Token labels and agent labels are merged.
        assert_eq!(h["labels"]["env"], "test", "{h}");
        assert_eq!(h["labels"]["az"], "zone-a", "{h}");
        assert!(!h["agent_version"].as_str().unwrap_or("").is_empty(), "{h}");
        assert!(h["cpus"].as_u64().unwrap_or(0) > 0, "{h}");
        assert!(h["memory_used_bytes"].as_u64().unwrap_or(0) > 0, "{h}");
        assert!(h["disk_total_bytes"].as_u64().unwrap_or(0) > 0, "{h}");
        assert!(h["uptime_secs"].as_u64().unwrap_or(0) > 0, "{h}");
        assert!(
            h["cert_not_after_ms"].as_i64().unwrap_or(0) > h["enrolled_at_ms"].as_i64().unwrap_or(0),
            "{h}"
        );
        assert!(h["remote_addr"].as_str().unwrap_or("").starts_with("127.0.0.1:"), "{h}");
    }

    // Heartbeats keep arriving: last_seen moves forward.
    let id = hosts[0]["id"].as_str().expect("id").to_string();
    let first_seen = hosts[0]["last_seen_ms"].as_i64().expect("last_seen");
    wait_until(Duration::from_secs(10), "last_seen to advance with heartbeats", || {
        let h = fleet.fleetctl_json(&["hosts", "show", &id]);
        (h["last_seen_ms"].as_i64().unwrap_or(0) > first_seen).then_some(())
    });

    // The private key stays on the host, readable by its owner only.
    for a in &fleet.agents {
        let mode = std::fs::metadata(a.dir.join("state/identity.pem"))
            .expect("identity.pem")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "identity.pem of {}", a.name);
    }
    // The token's uses were spent, once per host.
    let tokens = fleet.fleetctl_json(&["token", "ls", "--all"]);
    assert_eq!(tokens[0]["uses"], 3, "{tokens}");
    assert_eq!(tokens[0]["state"], "used_up", "{tokens}");

    let metrics = fleet.controller.metrics_text();
    assert!(metrics.contains("fleet_agents_connected 3"), "{metrics}");
    assert!(
        metrics.contains("fleet_enrollments_total{result=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fleet_rpc_requests_total{method=\"HostService/ListHosts\",code=\"Ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("fleet_hosts_enrolled 3"), "{metrics}");
}

#[test]
fn hosts_can_be_labelled_and_selected() {
    let fleet = Fleet::start(2);
    let out = fleet.fleetctl(&["hosts", "label", "web-1", "role=api", "tier=1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fleet.fleetctl(&["hosts", "label", "web-1", "--remove", "tier"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api = fleet.fleetctl_json(&["hosts", "ls", "--selector", "role=api"]);
    let api = api.as_array().expect("array");
    assert_eq!(api.len(), 1, "{api:?}");
    assert_eq!(api[0]["hostname"], "web-1");
    assert!(api[0]["labels"].get("tier").is_none(), "{:?}", api[0]);

    // A bad label is refused with its name, and changes nothing.
    let out = fleet.fleetctl(&["hosts", "label", "web-2", "bad key=x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unknown host: exit code 3 (not found).
    let out = fleet.fleetctl(&["hosts", "show", "no-such-host"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-host"));

    // The table output lists both hosts.
    let out = fleet.fleetctl(&["hosts", "ls"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("web-1") && table.contains("web-2") && table.contains("connected"),
        "{table}"
    );
}
