//! `fleetctl notify add|ls|rm|test`: webhooks that get the fleet's events
//! as they happen (`NotifyService`). A `slack` webhook gets a line for a
//! channel; a `json` one gets the event, signed with HMAC-SHA256 under the
//! secret `add` prints once.

use fleet_proto::{AddNotifierRequest, ListNotifiersRequest, Notifier, RemoveNotifierRequest, TestNotifierRequest};
use serde_json::{json, Value};

use crate::args::NotifyAddArgs;
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Format, Report, Table};

/// Adds a webhook.
pub async fn add(client: &Client, args: &NotifyAddArgs, format: Format) -> Result<Report, Error> {
    let response = client
        .notify()
        .add_notifier(AddNotifierRequest {
            name: args.name.clone(),
            url: args.url.clone(),
            format: args.format.clone(),
            app: args.app.clone().unwrap_or_default(),
            kinds: args.kinds.iter().map(|k| *k as i32).collect(),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let n = response.notifier.unwrap_or_default();
    Ok(match format {
        Format::Json => {
            let mut v = notifier_json(&n);
            v["secret"] = json!(response.secret);
            Report::json(&v)
        }
        Format::Table if response.secret.is_empty() => Report::out(format!(
            "added webhook {} ({}, {}); try it: fleetctl notify test {}",
            output::escape(&n.name),
            n.format,
            kinds_text(&n),
            output::escape(&n.name)
        )),
        Format::Table => Report {
            stdout: format!("{}\n", response.secret),
            stderr: format!(
                "added webhook {} ({}, {}); the secret above is shown only once: check each delivery's \
                 X-Fleet-Signature (sha256=HMAC-SHA256 of \"<X-Fleet-Timestamp>.<body>\" under it); \
                 try it: fleetctl notify test {}\n",
                output::escape(&n.name),
                n.format,
                kinds_text(&n),
                output::escape(&n.name)
            ),
        },
    })
}

/// Lists the webhooks and how their deliveries went.
pub async fn list(client: &Client, format: Format) -> Result<Report, Error> {
    let list = client
        .notify()
        .list_notifiers(ListNotifiersRequest {})
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .notifiers;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(list.iter().map(notifier_json).collect())),
        Format::Table if list.is_empty() => Report {
            stdout: String::new(),
            stderr: "no webhooks; add one with 'fleetctl notify add NAME --url URL'\n".into(),
        },
        Format::Table => Report::out(table(&list)),
    })
}

/// Removes a webhook.
pub async fn remove(client: &Client, name: &str, format: Format) -> Result<Report, Error> {
    let n = client
        .notify()
        .remove_notifier(RemoveNotifierRequest { name: name.into() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&notifier_json(&n)),
        Format::Table => Report::out(format!("removed webhook {}", output::escape(&n.name))),
    })
}

/// Sends a test event now; fails unless the endpoint answers 2xx.
pub async fn test(client: &Client, name: &str, format: Format) -> Result<Report, Error> {
    let r = client
        .notify()
        .test_notifier(TestNotifierRequest { name: name.into() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let ok = (200..300).contains(&r.http_status);
    let said = r.detail.lines().next().unwrap_or_default().trim().to_string();
    if !ok {
        let why = if r.http_status == 0 {
            format!("no answer: {said}")
        } else {
            format!(
                "HTTP {}{}",
                r.http_status,
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            )
        };
        return Err(Error::Failed(format!(
            "webhook {} did not take the test event ({why}); check its URL and that the controller host can reach it",
            output::escape(name)
        )));
    }
    Ok(match format {
        Format::Json => Report::json(&json!({
            "name": name,
            "http_status": r.http_status,
            "detail": r.detail,
            "duration_ms": r.duration_ms,
        })),
        Format::Table => Report::out(format!(
            "webhook {} answered HTTP {} in {} ms",
            output::escape(name),
            r.http_status,
            r.duration_ms
        )),
    })
}

fn kinds_text(n: &Notifier) -> String {
    if n.kinds.is_empty() {
        return "default events".into();
    }
    n.kinds
        .iter()
        .map(|k| fleet_proto::FleetEventKind::try_from(*k).map_or("unknown", |k| k.word()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A webhook for scripts; field names are stable.
pub fn notifier_json(n: &Notifier) -> Value {
    json!({
        "name": n.name,
        "url": n.url,
        "format": n.format,
        "app": n.app,
        "kinds": n.kinds.iter().map(|k| fleet_proto::FleetEventKind::try_from(*k).map_or("unknown", |k| k.word())).collect::<Vec<_>>(),
        "created_at_ms": n.created_at_ms,
        "created_by": n.created_by,
        "delivered": n.delivered,
        "failed": n.failed,
        "queued": n.queued,
        "last_error": n.last_error,
        "last_error_at_ms": n.last_error_at_ms,
    })
}

/// NAME FORMAT APP EVENTS URL DELIVERED FAILED LAST ERROR.
pub fn table(list: &[Notifier]) -> String {
    let mut t = Table::new(vec![
        "NAME",
        "FORMAT",
        "APP",
        "EVENTS",
        "URL",
        "DELIVERED",
        "FAILED",
        "LAST ERROR",
    ]);
    for n in list {
        t.row(vec![
            n.name.clone(),
            n.format.clone(),
            if n.app.is_empty() { "*".into() } else { n.app.clone() },
            kinds_text(n),
            n.url.clone(),
            n.delivered.to_string(),
            n.failed.to_string(),
            if n.last_error.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} ({})",
                    n.last_error.lines().next().unwrap_or_default(),
                    output::timestamp(n.last_error_at_ms)
                )
            },
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_where_deliveries_go_and_how_they_went() {
        let n = Notifier {
            name: "ops-chat".into(),
            url: "https://hooks.slack.com/…".into(),
            format: "slack".into(),
            delivered: 4,
            failed: 1,
            last_error: "gave up after 8 attempts: HTTP 500: oops".into(),
            last_error_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let text = table(&[n]);
        assert!(text.starts_with("NAME"), "{text}");
        assert!(
            text.contains("ops-chat  slack   *    default events  https://hooks.slack.com/…  4          1       gave up after 8 attempts: HTTP 500: oops (2023-11-14T22:13:20Z)"),
            "{text}"
        );
    }
}
