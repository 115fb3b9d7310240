//! `fleetctl events`: the fleet's event log (`EventService/WatchEvents`):
//! rollouts, direct deploys' ends, hosts connecting, disconnecting,
//! enrolling and removed, releases, apps, join tokens and operators.
//!
//! One line per event as it arrives (a table row, or one JSON object per
//! line with `-o json`, so `jq` reads it as it comes). With `--follow` the
//! stream stays open; when the controller goes away it is opened again
//! after the last event seen, so nothing is shown twice or lost while the
//! controller keeps it.

use std::io::Write;
use std::time::Duration;

use fleet_proto::{FleetEvent, FleetEventKind, WatchEventsRequest};
use serde_json::Value;
use tonic::Code;

use crate::args::EventsArgs;
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Format, Report};

/// How many times in a row a lost stream is opened again before giving up.
const REOPEN_ATTEMPTS: u32 = 30;
/// How far back `events` looks without `--since` (and without `--follow`).
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

/// Where a stream picks up: after the last event seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    since_ms: i64,
    after_seq: u64,
}

/// `events [--since D|TIME] [--app A] [--kind K]... [--follow]`.
pub async fn watch(client: &Client, args: &EventsArgs, format: Format) -> Result<Report, Error> {
    let now = fleet_proto::now_ms();
    let since_ms = match (args.since, args.follow) {
        (Some(s), _) => s.start_ms(now),
        // Following: from now on.
        (None, true) => now,
        (None, false) => now.saturating_sub(DEFAULT_SINCE.as_millis() as i64),
    };
    let kinds: Vec<i32> = args.kinds.iter().map(|k| *k as i32).collect();
    let mut cursor = Cursor { since_ms, after_seq: 0 };
    let mut shown = 0usize;
    let mut header = format == Format::Table;
    let mut failures = 0u32;
    // After a lost stream: a new connection (another controller of the
    // fleet when this one died).
    let mut fresh: Option<Client> = None;
    loop {
        let client = fresh.as_ref().unwrap_or(client);
        let request = WatchEventsRequest {
            since_ms: cursor.since_ms,
            app: args.app.clone().unwrap_or_default(),
            after_seq: cursor.after_seq,
            follow: args.follow,
            kinds: kinds.clone(),
        };
        let result = async {
            let mut stream = client.events().watch_events(request).await?.into_inner();
            while let Some(e) = stream.message().await? {
                if header {
                    print(&format!(
                        "{:<20}  {:<18}  {:<14}  {:<20}  DETAIL",
                        "WHEN", "KIND", "APP", "HOST"
                    ));
                    header = false;
                }
                print(&line(&e, format));
                cursor = Cursor {
                    since_ms: e.at_ms,
                    after_seq: e.seq,
                };
                shown += 1;
                failures = 0;
            }
            Ok::<(), tonic::Status>(())
        }
        .await;
        match result {
            Ok(()) if !args.follow => break,
            // The controller ended the stream (it is stopping): open again.
            Ok(()) => {}
            Err(status) if args.follow && reopenable(&status) => {}
            Err(status) => return Err(client.fail(status)),
        }
        failures += 1;
        if failures > REOPEN_ATTEMPTS {
            return Err(Error::Unreachable(format!(
                "lost the controller at {} while following events; run 'fleetctl events --follow --since {}' to go on",
                client.addr(),
                output::timestamp(cursor.since_ms)
            )));
        }
        let _ = writeln!(
            std::io::stderr(),
            "fleetctl: the event stream was cut; opening it again after event {} (attempt {failures} of {REOPEN_ATTEMPTS})",
            cursor.after_seq
        );
        tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)))).await;
        if let Ok(next) = client.reconnect().await {
            fresh = Some(next);
        }
    }
    let mut report = Report::default();
    if shown == 0 && format == Format::Table {
        report.stderr = format!("no events since {}\n", output::timestamp(since_ms));
    }
    Ok(report)
}

fn reopenable(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

fn print(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One event as a line of the chosen format.
fn line(e: &FleetEvent, format: Format) -> String {
    match format {
        Format::Json => {
            let mut v = event_json(e);
            output::with_times(&mut v);
            v.to_string()
        }
        Format::Table => {
            let host = if e.hostname.is_empty() {
                short(&e.host_id)
            } else {
                e.hostname.clone()
            };
            format!(
                "{:<20}  {:<18}  {:<14}  {:<20}  {}",
                output::timestamp(e.at_ms),
                e.kind().word(),
                dash(&e.app),
                dash(&host),
                detail(e)
            )
            .trim_end()
            .to_string()
        }
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// What the row says after the host: version, rollout, outcome, detail, who.
fn detail(e: &FleetEvent) -> String {
    let mut parts: Vec<String> = Vec::new();
    for p in [&e.version, &e.rollout_id] {
        if !p.is_empty() {
            parts.push(p.clone());
        }
    }
    if !e.outcome.is_empty() {
        parts.push(format!("[{}]", e.outcome));
    }
    let first = e.detail.lines().next().unwrap_or_default();
    if !first.is_empty() && first != e.outcome {
        parts.push(first.to_string());
    }
    if !e.who.is_empty() && e.who != "controller" {
        parts.push(format!("(by {})", e.who));
    }
    parts.join(" ")
}

/// An event for scripts; field names are stable.
pub fn event_json(e: &FleetEvent) -> Value {
    fleet_proto::events::to_json(e)
}

/// `--kind`: an event kind's word.
pub fn parse_kind(s: &str) -> Result<FleetEventKind, String> {
    FleetEventKind::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended() -> FleetEvent {
        let mut e = FleetEvent {
            seq: 7,
            at_ms: 1_700_000_000_000,
            app: "web".into(),
            version: "2.0".into(),
            rollout_id: "r-1".into(),
            outcome: "rolled_back".into(),
            detail: "rolled_back: 2 of 3 hosts failed\nmore".into(),
            who: "alice".into(),
            ..Default::default()
        };
        e.set_kind(FleetEventKind::RolloutEnded);
        e
    }

    #[test]
    fn a_row_names_the_kind_app_host_and_what_happened() {
        assert_eq!(
            line(&ended(), Format::Table),
            "2023-11-14T22:13:20Z  rollout_ended       web             -                     \
             2.0 r-1 [rolled_back] rolled_back: 2 of 3 hosts failed (by alice)"
        );
        let mut connected = FleetEvent {
            at_ms: 1_700_000_000_000,
            host_id: "0123456789abcdef".into(),
            who: "controller".into(),
            ..Default::default()
        };
        connected.set_kind(FleetEventKind::HostConnected);
        assert_eq!(
            line(&connected, Format::Table),
            "2023-11-14T22:13:20Z  host_connected      -               0123456789ab"
        );
    }

    #[test]
    fn json_lines_carry_the_sequence_and_kind_word() {
        let v: Value = serde_json::from_str(&line(&ended(), Format::Json)).expect("one JSON object");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["kind"], "rollout_ended");
        assert_eq!(v["outcome"], "rolled_back");
    }
}
