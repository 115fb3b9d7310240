//! The audit log: mutating operator calls are recorded with who, what, from
//! where and the outcome, read-only calls are not, `--since` narrows the
//! list, and the log survives a restart.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{sigterm, wait_exit, Fleet};
use crate::releases::assert_success;
use crate::rollouts::{Cluster, APP};

fn audit(fleet: &Fleet, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit"];
    all.extend(args);
    fleet.fleetctl_json(&all).as_array().expect("audit array").clone()
}

fn what_and_outcome(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            let outcome = e["outcome"].as_str().expect("outcome");
            // The kind of outcome; messages are checked separately.
            let kind = outcome.split(':').next().unwrap_or_default();
            (e["what"].as_str().expect("what").to_string(), kind.to_string())
        })
        .collect()
}

#[test]
fn mutating_calls_are_audited_in_order() {
    let mut fleet = Fleet::controller_only(&[]);

    let token = fleet.fleetctl_json(&["token", "create", "--uses", "1"]);
    let id = token["id"].as_str().expect("token id").to_string();
    let label = fleet.fleetctl(&["hosts", "label", "no-such-host", "env=x"]);
    assert_eq!(label.status.code(), Some(3), "labelling a missing host is 'not found'");
    fleet.fleetctl_json(&["token", "revoke", &id]);
    // Read-only calls are not audited.
    fleet.fleetctl_json(&["hosts", "ls"]);
    fleet.fleetctl_json(&["token", "ls", "--all"]);
    fleet.fleetctl_json(&["whoami"]);
    // A call with a token the controller does not know.
    let forged = fleet.fleetctl(&["--token", "fleet_op_0000deadbeef.nope", "token", "create"]);
    assert_eq!(forged.status.code(), Some(4));

    let entries = audit(&fleet, &[]);
    assert_eq!(
        what_and_outcome(&entries),
        [
            ("TokenService/CreateToken".to_string(), "ok".to_string()),
            ("HostService/LabelHost".into(), "NotFound".into()),
            ("TokenService/RevokeToken".into(), "ok".into()),
            ("TokenService/CreateToken".into(), "Unauthenticated".into()),
        ],
        "{entries:#?}"
    );
    let who: Vec<&str> = entries.iter().map(|e| e["who"].as_str().expect("who")).collect();
    assert_eq!(who, ["admin", "admin", "admin", "unauthenticated"]);
    for e in &entries {
        let from = e["from"].as_str().expect("from");
        assert!(from.starts_with("127.0.0.1:"), "peer address: {e}");
    }
    let refused = entries[1]["outcome"].as_str().expect("outcome");
    assert!(refused.contains("no-such-host"), "the error is recorded: {refused}");
    let at: Vec<i64> = entries.iter().map(|e| e["at_ms"].as_i64().expect("at_ms")).collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "oldest first: {at:?}");

    // --since: a duration back from now, or a time.
    assert_eq!(audit(&fleet, &["--since", "1h"]).len(), 4);
    let third = UNIX_EPOCH + Duration::from_millis(at[2] as u64);
    let since = humantime::format_rfc3339_millis(third).to_string();
    let later = audit(&fleet, &["--since", &since]);
    assert_eq!(
        what_and_outcome(&later),
        [
            ("TokenService/RevokeToken".to_string(), "ok".to_string()),
            ("TokenService/CreateToken".into(), "Unauthenticated".into()),
        ],
        "since {since}: {later:#?}"
    );

    // The table a person reads.
    let table = fleet.fleetctl(&["audit"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    let header = text.lines().next().unwrap_or_default();
    assert!(
        ["WHEN", "WHO", "WHAT", "FROM", "OUTCOME"]
            .iter()
            .all(|c| header.contains(c)),
        "{text}"
    );
    assert_eq!(text.lines().count(), 5, "{text}");

    // The log is in the store: it survives a restart.
    let mut child = fleet.controller.child.take().expect("controller running");
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(20), "controller stops on SIGTERM");
    fleet.controller.start();
    assert_eq!(audit(&fleet, &[]), entries);
}

/// Entries as (who, what, outcome kind) for matching.
fn rows(entries: &[Value]) -> Vec<(String, String, String)> {
    entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            let kind = s("outcome").split(':').next().unwrap_or_default().to_string();
            (s("who"), s("what"), kind)
        })
        .collect()
}

fn find<'a>(entries: &'a [Value], who: &str, what: &str, dry_run: bool) -> &'a Value {
    entries
        .iter()
        .find(|e| e["who"] == who && e["what"] == what && e["dry_run"] == dry_run)
        .unwrap_or_else(|| panic!("no {what} by {who} (dry run {dry_run}) in {entries:#?}"))
}

#[test]
fn the_log_answers_who_changed_what_where_and_how_it_ended() {
    let sink = tempfile::tempdir().expect("tempdir");
    let file = sink.path().join("audit.jsonl");
    let socket = sink.path().join("syslog.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket).expect("bind a syslog socket");
    syslog.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let table = format!(
        "{{ forward_file = \"{}\", forward_syslog = true, syslog_socket = \"{}\" }}",
        file.display(),
        socket.display()
    );
    // Every level of every log is kept, to look for secrets at the end.
    let c = Cluster::start_with(&["", ""], &[("audit", &table)], "trace");
    let f = &c.fleet;
    c.push("1.0.0", &[]);
    let ci_secret = {
        f.fleetctl_json(&["operator", "create", "ci", "--role", "deployer", "--app", APP]);
        let t = f.fleetctl_json(&["operator", "token", "create", "ci", "--ttl", "1h"]);
        t["secret"].as_str().expect("secret").to_string()
    };
    let as_ci = |args: &[&str]| {
        let mut all = vec!["--token", ci_secret.as_str()];
        all.extend(args);
        f.fleetctl(&all)
    };
    assert_success(&as_ci(&["rollout", APP, "--release", "1.0.0", "--dry-run"]), "dry run");
    assert_success(&as_ci(&["rollout", APP, "--release", "1.0.0", "--wait"]), "rollout");
    // A deploy that fails its health check on host 1 and is reverted.
    c.push("2.0.0", &[c.ports[1]]);
    let host1 = f.agents[1].host_id().expect("host id");
    let deploy = as_ci(&["deploy", APP, "--release", "2.0.0", "--host", &host1]);
    assert_eq!(
        deploy.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );

    let mine = audit(f, &["--app", APP, "--operator", "ci"]);
    assert!(
        mine.iter().all(|e| e["who"] == "ci" && e["app"] == APP),
        "filters: {mine:#?}"
    );
    let dry = find(&mine, "ci", "RolloutService/StartRollout", true);
    assert_eq!(dry["version"], "1.0.0", "{dry}");
    assert_eq!(dry["outcome"], "ok", "{dry}");
    let real = find(&mine, "ci", "RolloutService/StartRollout", false);
    let rollout_id = real["rollout_id"].as_str().expect("rollout id").to_string();
    assert!(rollout_id.starts_with("r-"), "{real}");
    assert_eq!(real["hosts"].as_array().map(Vec::len), Some(2), "{real}");
    assert!(
        real["outcome"].as_str().unwrap_or_default().starts_with("accepted"),
        "{real}"
    );
    let ended = find(&mine, "ci", "RolloutEnded", false);
    assert_eq!(ended["rollout_id"], rollout_id.as_str(), "{ended}");
    assert!(
        ended["outcome"].as_str().unwrap_or_default().starts_with("succeeded"),
        "{ended}"
    );
    let asked = find(&mine, "ci", "AppService/Deploy", false);
    assert_eq!(
        (asked["version"].as_str(), asked["hosts"][0].as_str()),
        (Some("2.0.0"), Some(host1.as_str()))
    );
    let deployed = find(&mine, "ci", "DeployEnded", false);
    assert!(
        deployed["outcome"]
            .as_str()
            .unwrap_or_default()
            .starts_with("failed and reverted"),
        "{deployed}"
    );
    assert_eq!(deployed["hosts"][0], host1.as_str(), "{deployed}");
    // The metrics count how the hosts' tasks ended, and name the version.
    let metrics = f.controller.metrics_text();
    for line in [
        "fleet_host_tasks_ended_total{outcome=\"reverted\",cause=\"health\"} 1",
        "fleet_host_tasks_ended_total{outcome=\"succeeded\",cause=\"\"} 2",
        &format!("fleet_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in /metrics:\n{metrics}"
        );
    }
    // The admin's pushes are the admin's.
    let admins = audit(f, &["--operator", "admin", "--app", APP]);
    let pushes = rows(&admins)
        .into_iter()
        .filter(|r| r.1 == "ReleaseService/PushRelease")
        .count();
    assert_eq!(pushes, 2, "{admins:#?}");
    assert!(admins.iter().all(|e| e["who"] == "admin"), "{admins:#?}");

    // Every other kind of change, each recorded with what it touched.
    let host0 = f.agents[0].host_id().expect("host id");
    let ok = |args: &[&str]| assert_success(&f.fleetctl(args), &format!("{args:?}"));
    ok(&["app", "update", APP, "--settle", "2s"]);
    c.push("9.9.8", &[]);
    ok(&["release", "rm", APP, "9.9.8", "--yes"]);
    c.push("9.9.9", &[]);
    let canary = f.fleetctl_json(&[
        "rollout",
        APP,
        "--release",
        "9.9.9",
        "--canary",
        "1",
        "--canary-approve",
    ]);
    let canary_id = canary["id"].as_str().expect("rollout id").to_string();
    ok(&["rollout", "abort", &canary_id]);
    ok(&["hosts", "label", &host0, "tier=a"]);
    ok(&["hosts", "prune", "--disconnected-for", "1h", "--dry-run"]);
    let ci_token = f.fleetctl_json(&["operator", "show", "ci"])["tokens"][0]["id"]
        .as_str()
        .expect("token id")
        .to_string();
    ok(&["operator", "token", "revoke", &ci_token]);
    ok(&["operator", "rm", "ci", "--yes"]);
    ok(&["hosts", "rm", &f.agents[1].host_id().expect("host id"), "--yes"]);
    let join_token = f.fleetctl_json(&["token", "ls", "--all"])[0]["id"]
        .as_str()
        .expect("a join token")
        .to_string();
    ok(&["token", "revoke", &join_token]);
    ok(&["notify", "add", "hook", "--url", "http://127.0.0.1:9/nobody-listens"]);
    let test = f.fleetctl(&["notify", "test", "hook"]);
    assert_eq!(test.status.code(), Some(1), "nothing listens: the test fails");
    ok(&["notify", "rm", "hook"]);
    let all = audit(f, &[]);
    let touched = |e: &Value| {
        ["app", "target", "rollout_id", "selector"]
            .iter()
            .any(|k| !e[k].as_str().unwrap_or_default().is_empty())
            || e["hosts"].as_array().is_some_and(|h| !h.is_empty())
    };
    // Every audited call, and the ends of deploys and rollouts.
    let ends = [
        fleet_controller::apps::DEPLOY_ENDED,
        fleet_controller::rollouts::ROLLOUT_ENDED,
    ];
    for what in fleet_controller::audit::AUDITED.into_iter().chain(ends) {
        let mine: Vec<&Value> = all.iter().filter(|e| e["what"] == what).collect();
        assert!(!mine.is_empty(), "no {what} recorded: {all:#?}");
        for e in mine {
            assert!(touched(e), "{what} recorded without what it touched: {e}");
            assert!(!e["outcome"].as_str().unwrap_or_default().is_empty(), "{e}");
        }
    }
    let aborted = all
        .iter()
        .find(|e| e["what"] == "RolloutEnded" && e["rollout_id"] == canary_id.as_str())
        .expect("the aborted rollout's end");
    assert!(
        aborted["outcome"].as_str().unwrap_or_default().starts_with("aborted"),
        "{aborted}"
    );
    let prune = all
        .iter()
        .find(|e| e["what"] == "HostService/PruneHosts")
        .expect("prune");
    assert_eq!(prune["dry_run"], true, "{prune}");

    // Every stored record was forwarded as one JSON line, and to syslog.
    let all = audit(f, &[]);
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .expect("the forward file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), all.len(), "forwarded {lines:#?}");
    assert_eq!(lines.last().map(|l| &l["what"]), all.last().map(|e| &e["what"]));
    let mut buf = vec![0u8; 65536];
    let n = syslog.recv(&mut buf).expect("a syslog datagram");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(
        msg.starts_with("<86>fleet-controller[") && msg.contains("\"what\":"),
        "{msg}"
    );

    // No secret in any log at any level: the operator token's secret, the
    // admin's, and no private key.
    let admin_config = std::fs::read_to_string(&f.controller.fleetctl_config).expect("fleetctl.toml");
    let admin_secret = admin_config
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .and_then(|t| t.trim_end_matches('"').split('.').nth(1))
        .expect("admin token secret")
        .to_string();
    let ci_part = ci_secret.split('.').nth(1).expect("secret part").to_string();
    let mut logs = vec![("controller".to_string(), f.controller.log_text())];
    logs.extend(f.agents.iter().map(|a| (a.name.clone(), a.log_text())));
    assert!(
        logs[0].1.contains("TRACE") || logs[0].1.contains("DEBUG"),
        "the controller logged at every level"
    );
    for (name, text) in &logs {
        for secret in [&ci_part, &admin_secret] {
            assert!(!text.contains(secret.as_str()), "a token secret is in the {name} log");
        }
        assert!(!text.contains("PRIVATE KEY"), "a private key is in the {name} log");
    }
}
