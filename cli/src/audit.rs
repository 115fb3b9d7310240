//! `fleetctl audit`: the controller's record of every mutating operator call
//! (`AuditService/ListAudit`), oldest first.

use fleet_proto::{AuditEntry, ListAuditRequest};
use serde_json::{json, Value};

use crate::args::AuditArgs;
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Format, Report, Table};

/// `audit [--since 1h|TIME] [--app APP] [--operator NAME]`.
pub async fn list(client: &Client, args: &AuditArgs, format: Format) -> Result<Report, Error> {
    let since_ms = args.since.map(|s| s.start_ms(fleet_proto::now_ms())).unwrap_or(0);
    let entries = client
        .audit()
        .list_audit(ListAuditRequest {
            since_ms,
            app: args.app.clone().unwrap_or_default(),
            operator: args.operator.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .entries;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(entries.iter().map(entry_json).collect())),
        Format::Table => {
            let mut report = Report::out(table(&entries));
            if entries.is_empty() {
                let filtered = args.app.is_some() || args.operator.is_some();
                report.stderr = match (since_ms, filtered) {
                    (0, false) => "nothing recorded yet\n".into(),
                    (0, true) => "no entries match\n".into(),
                    (at, _) => format!("no entries match since {}\n", output::timestamp(at)),
                };
            }
            report
        }
    })
}

/// An entry for scripts; field names are stable.
pub fn entry_json(e: &AuditEntry) -> Value {
    json!({
        "at_ms": e.at_ms,
        "who": e.who,
        "what": e.what,
        "from": e.from,
        "outcome": e.outcome,
        "target": e.target,
        "app": e.app,
        "version": e.version,
        "hosts": e.hosts,
        "selector": e.selector,
        "rollout_id": e.rollout_id,
        "dry_run": e.dry_run,
    })
}

/// What an entry touched, in one cell: `web 1.2.0 r-ab12 env=prod (3 hosts) (dry run) token …`.
pub fn target(e: &AuditEntry) -> String {
    let mut parts: Vec<String> = Vec::new();
    for p in [&e.app, &e.version, &e.rollout_id] {
        if !p.is_empty() {
            parts.push(p.clone());
        }
    }
    if !e.selector.is_empty() {
        parts.push(format!("[{}]", e.selector));
    }
    match e.hosts.as_slice() {
        [] => {}
        [one] => parts.push(format!("host {one}")),
        many => parts.push(format!("{} hosts", many.len())),
    }
    if !e.target.is_empty() {
        parts.push(e.target.clone());
    }
    if e.dry_run {
        parts.push("(dry run)".into());
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// The entries as a table: WHEN WHO WHAT FROM TARGET OUTCOME.
pub fn table(entries: &[AuditEntry]) -> String {
    let mut t = Table::new(vec!["WHEN", "WHO", "WHAT", "FROM", "TARGET", "OUTCOME"]);
    for e in entries {
        t.row(vec![
            output::timestamp(e.at_ms),
            e.who.clone(),
            e.what.clone(),
            if e.from.is_empty() { "-".into() } else { e.from.clone() },
            target(e),
            e.outcome.lines().next().unwrap_or_default().to_string(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_when_who_what_from_target_outcome() {
        let entries = vec![
            AuditEntry {
                at_ms: 1_700_000_000_123,
                who: "ci".into(),
                what: "RolloutService/StartRollout".into(),
                from: "127.0.0.1:50000".into(),
                outcome: "ok".into(),
                app: "web".into(),
                version: "1.2.0".into(),
                rollout_id: "r-1".into(),
                selector: "env=staging".into(),
                hosts: vec!["a".into(), "b".into()],
                dry_run: true,
                ..Default::default()
            },
            AuditEntry {
                at_ms: 1_700_000_001_000,
                who: "unauthenticated".into(),
                what: "HostService/RemoveHost".into(),
                outcome: "Unauthenticated: the operator token is not valid".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            table(&entries),
            "WHEN                  WHO              WHAT                         FROM             TARGET                                         OUTCOME\n\
             2023-11-14T22:13:20Z  ci               RolloutService/StartRollout  127.0.0.1:50000  web 1.2.0 r-1 [env=staging] 2 hosts (dry run)  ok\n\
             2023-11-14T22:13:21Z  unauthenticated  HostService/RemoveHost       -                -                                              Unauthenticated: the operator token is not valid\n"
        );
        assert_eq!(entry_json(&entries[0])["dry_run"], true);
        assert_eq!(entry_json(&entries[0])["hosts"], serde_json::json!(["a", "b"]));
    }
}
