//! The audit log: mutating operator calls are recorded with who, what, from
//! where and the outcome, read-only calls are not, `--since` narrows the
//! list, and the log survives a restart.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{sigterm, wait_exit, Fleet};

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
