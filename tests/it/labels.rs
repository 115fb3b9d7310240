//! What hosts say about themselves is checked, and what reaches an
//! operator's terminal is escaped: a label key the join token does not
//! allow, a label value with an escape sequence, and a hostname with a
//! newline are each refused at enrollment (agent exit 3, the reason in its
//! log); operators' labels follow the same rule (refused, exit 2); a token
//! description holding an escape sequence and a long text is shown escaped
//! and cut by `fleetctl token ls`, and whole by `-o json`. Two live
//! machines under one hostname are both kept and marked, and a name that
//! stands for both is refused listing their ids.

use std::time::Duration;

use crate::harness::{Agent, Fleet};

/// A refused agent: its name, its [labels], its hostname line (if not its
/// name), and what its log must say.
type Refused<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>, &'a [&'a str]);

/// Adds (not starting) an agent named `name` with these labels and, if
/// given, this `hostname = ...` line instead of its name; returns its index.
fn new_agent(fleet: &mut Fleet, name: &str, token: &str, labels: &[(&str, &str)], hostname: Option<&str>) -> usize {
    let addr = fleet.controller.addr.to_string();
    let agent = Agent::new(
        fleet.root.path(),
        name,
        &addr,
        &fleet.controller.ca_fingerprint,
        token,
        labels,
    );
    fleet.agents.push(agent);
    let i = fleet.agents.len() - 1;
    if let Some(line) = hostname {
        set_hostname_line(fleet, i, line);
    }
    i
}

/// Replaces the `hostname = ...` line of an agent's config with `line`.
fn set_hostname_line(fleet: &Fleet, i: usize, line: &str) {
    let path = &fleet.agents[i].config;
    let text = std::fs::read_to_string(path).expect("agent.toml");
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("hostname") { line } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(path, text).expect("agent.toml");
}

#[test]
fn hostile_labels_and_hostnames_are_refused_or_escaped() {
    let mut fleet = Fleet::controller_only(&[]);
    let token = fleet.token(&["--label", "env=test", "--allow-label", "az"]);
    let shown = fleet.fleetctl_json(&["token", "ls"]);
    assert_eq!(shown[0]["allowed_label_keys"], serde_json::json!(["az"]), "{shown}");

    // Refused: each names what is wrong and what to do.
    let cases: [Refused; 3] = [
        (
            "not-allowed",
            &[("az", "a"), ("role", "admin")],
            None,
            &["'role'", "fleetctl token create --allow-label role"],
        ),
        (
            "escape-value",
            &[("az", "\\u001b[31mred")],
            None,
            &["label 'az'", "[A-Za-z0-9._:/-]"],
        ),
        (
            "newline-host",
            &[],
            Some("hostname = \"web-1\\nweb-2  forged\""),
            &["hostname", "agent.toml"],
        ),
    ];
    for (name, labels, hostname, expect) in cases {
        let i = new_agent(&mut fleet, name, &token, labels, hostname);
        fleet.agents[i].start();
        let code = fleet.agents[i].wait_exit(Duration::from_secs(20));
        let log = fleet.agents[i].log_text();
        assert_eq!(code, Some(3), "agent {name} is refused for good:\n{log}");
        for needle in expect {
            assert!(log.contains(needle), "agent {name}'s log says '{needle}':\n{log}");
        }
    }
    assert!(
        fleet.hosts().is_empty(),
        "no refused host was stored: {:?}",
        fleet.hosts()
    );

    // Allowed: a key the token lists; the token's own label wins.
    fleet.add_agent("web-1", &token, &[("az", "zone-a"), ("env", "prod")]);
    let hosts = fleet.wait_connected(1, Duration::from_secs(30));
    assert_eq!(hosts[0]["labels"]["az"], "zone-a");
    assert_eq!(hosts[0]["labels"]["env"], "test");

    // Operator-set labels follow the same rule as hosts' (a selector could
    // not match anything else): an escape sequence or a 200-character value
    // is refused before dialling, naming the field.
    let hostile = "\u{1b}[2J\u{1b}[Hgotcha";
    let long = "v".repeat(200);
    for label in [format!("note={hostile}"), format!("long={long}")] {
        let out = fleet.fleetctl(&["hosts", "label", "web-1", &label]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with("fleetctl: labels: "), "{err}");
    }
    // What operators may still write freely (a token's description) is shown
    // escaped and cut in tables, whole in JSON.
    let description = format!("{hostile} {long}");
    let out = fleet.fleetctl(&["token", "create", "--description", &description, "--uses", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fleet.fleetctl(&["token", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !table.contains('\u{1b}'),
        "no raw escape reaches the terminal:\n{table}"
    );
    assert!(table.contains("\\x1b[2J"), "shown escaped:\n{table}");
    assert!(table.contains('…'), "the long description cell is cut:\n{table}");
    let json = fleet.fleetctl_json(&["token", "ls"]);
    let descriptions: Vec<&str> = json
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["description"].as_str())
        .collect();
    assert!(descriptions.contains(&description.as_str()), "{json}");
}

/// Two live machines enrolled under one hostname (a cloned image, a reused
/// name): both are kept, `hosts ls` marks both, and `--host NAME` fails
/// listing both ids rather than picking one.
#[test]
fn a_hostname_two_live_machines_share_is_marked_and_ambiguous() {
    let mut fleet = Fleet::controller_only(&[]);
    let token = fleet.token(&["--uses", "2"]);
    for name in ["twin-a", "twin-b"] {
        let i = new_agent(&mut fleet, name, &token, &[], Some("hostname = \"twin\""));
        fleet.agents[i].start();
        fleet.wait_connected(i + 1, Duration::from_secs(30));
    }
    let ids: Vec<String> = fleet.agents.iter().map(|a| a.host_id().expect("enrolled")).collect();
    assert_ne!(ids[0], ids[1]);

    // Both kept, each naming the other.
    let hosts = fleet.hosts();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    for h in &hosts {
        let me = h["id"].as_str().expect("id");
        let other = ids.iter().find(|id| id.as_str() != me).expect("the other id");
        assert_eq!(h["hostname"], "twin");
        assert_eq!(h["same_hostname"], serde_json::json!([other]), "{h}");
    }
    let out = fleet.fleetctl(&["hosts", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        table.matches("twin (shared with 1)").count(),
        2,
        "both rows marked:\n{table}"
    );
    let logs = fleet.controller.log_text();
    assert!(
        logs.contains("a connected host already uses this hostname"),
        "the second enrollment is logged as a duplicate:\n{logs}"
    );

    // By name: ambiguous, both ids listed, nothing chosen.
    let out = fleet.fleetctl(&["hosts", "show", "twin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused by the controller: {err}");
    for id in &ids {
        assert!(err.contains(id.as_str()), "the error lists {id}: {err}");
    }
    // By id: found, and the block says who shares the name.
    let out = fleet.fleetctl(&["hosts", "show", &ids[0]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("same_hostname") && text.contains(ids[1].as_str()),
        "{text}"
    );
}
