//! `fleetctl audit`: the controller's record of every mutating operator call
//! (`AuditService/ListAudit`), oldest first.

use fleet_proto::{AuditEntry, ListAuditRequest};
use serde_json::{json, Value};

use crate::args::AuditArgs;
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Format, Report, Table};

/// `audit [--since 1h|TIME]`.
pub async fn list(client: &Client, args: &AuditArgs, format: Format) -> Result<Report, Error> {
    let since_ms = args.since.map(|s| s.start_ms(fleet_proto::now_ms())).unwrap_or(0);
    let entries = client
        .audit()
        .list_audit(ListAuditRequest { since_ms })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .entries;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(entries.iter().map(entry_json).collect())),
        Format::Table => {
            let mut report = Report::out(table(&entries));
            if entries.is_empty() {
                report.stderr = if since_ms == 0 {
                    "no mutating operator calls recorded yet\n".into()
                } else {
                    format!("no mutating operator calls since {}\n", output::timestamp(since_ms))
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
    })
}

/// The entries as a table: WHEN WHO WHAT FROM OUTCOME (and TARGET when any
/// entry names one).
pub fn table(entries: &[AuditEntry]) -> String {
    let targets = entries.iter().any(|e| !e.target.is_empty());
    let mut header = vec!["WHEN", "WHO", "WHAT", "FROM"];
    if targets {
        header.push("TARGET");
    }
    header.push("OUTCOME");
    let mut t = Table::new(header);
    for e in entries {
        let mut row = vec![
            output::timestamp(e.at_ms),
            e.who.clone(),
            e.what.clone(),
            if e.from.is_empty() { "-".into() } else { e.from.clone() },
        ];
        if targets {
            row.push(if e.target.is_empty() {
                "-".into()
            } else {
                e.target.clone()
            });
        }
        row.push(e.outcome.lines().next().unwrap_or_default().to_string());
        t.row(row);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_when_who_what_from_outcome() {
        let entries = vec![
            AuditEntry {
                at_ms: 1_700_000_000_123,
                who: "admin".into(),
                what: "TokenService/CreateToken".into(),
                from: "127.0.0.1:50000".into(),
                outcome: "ok".into(),
                target: String::new(),
            },
            AuditEntry {
                at_ms: 1_700_000_001_000,
                who: "unauthenticated".into(),
                what: "HostService/RemoveHost".into(),
                from: String::new(),
                outcome: "Unauthenticated: the operator token is not valid".into(),
                target: String::new(),
            },
        ];
        assert_eq!(
            table(&entries),
            "WHEN                  WHO              WHAT                      FROM             OUTCOME\n\
             2023-11-14T22:13:20Z  admin            TokenService/CreateToken  127.0.0.1:50000  ok\n\
             2023-11-14T22:13:21Z  unauthenticated  HostService/RemoveHost    -                Unauthenticated: the operator token is not valid\n"
        );
        assert_eq!(entry_json(&entries[0])["what"], "TokenService/CreateToken");
    }
}
