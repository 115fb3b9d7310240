//! What a webhook receives, and which events it wants. Pure.
//!
//! - `slack`: `{"text": "..."}`, one line a person reads in a channel
//!   (Slack's incoming webhooks, and Mattermost, Rocket.Chat and others that
//!   take the same payload);
//! - `json`: the event (the fields of `fleetctl events -o json`, plus
//!   `"type": "fleet.event"`), with `X-Fleet-Timestamp` (Unix seconds) and
//!   `X-Fleet-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`
//!   under the webhook's secret, so a receiver can tell the controller sent
//!   it and refuse replays of old deliveries.

use fleet_proto::{FleetEvent, FleetEventKind};
use serde_json::json;

/// How a webhook's payload looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"text": ...}` for chat.
    Slack,
    /// The event as JSON, signed.
    Json,
}

impl Format {
    /// The format a word names.
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "slack" => Ok(Format::Slack),
            "json" | "" => Ok(Format::Json),
            other => Err(format!("format '{other}' is not one of slack, json")),
        }
    }

    /// Its word.
    pub fn word(self) -> &'static str {
        match self {
            Format::Slack => "slack",
            Format::Json => "json",
        }
    }
}

/// The kinds a webhook gets when it names none.
pub const DEFAULT_KINDS: [FleetEventKind; 6] = [
    FleetEventKind::RolloutStarted,
    FleetEventKind::CanaryWaiting,
    FleetEventKind::RollingBack,
    FleetEventKind::RolloutEnded,
    FleetEventKind::RolloutHostDone,
    FleetEventKind::HostTaskEnded,
];

/// Whether a webhook with `app` and `kinds` (empty: the defaults) wants `e`.
/// The defaults leave out what would flood a channel: hosts that succeeded
/// in a rollout, and convergence runs (hosts catching up on their own)
/// unless they fail.
pub fn wants(app: &str, kinds: &[FleetEventKind], e: &FleetEvent) -> bool {
    if e.kind() == FleetEventKind::NotifyTest {
        return true;
    }
    if !app.is_empty() && e.app != app {
        return false;
    }
    if !kinds.is_empty() {
        return kinds.contains(&e.kind());
    }
    if !DEFAULT_KINDS.contains(&e.kind()) {
        return false;
    }
    let failed = matches!(
        e.outcome.as_str(),
        "failed" | "rolled_back" | "rollback_failed" | "reverted" | "unknown" | "aborted"
    );
    match e.kind() {
        FleetEventKind::RolloutHostDone => failed,
        _ if e.rollout_kind == "converge" => failed || e.kind() == FleetEventKind::RollingBack,
        _ => true,
    }
}

/// The JSON form of an event, as `fleetctl events -o json` prints it.
pub fn event_json(e: &FleetEvent) -> serde_json::Value {
    let mut v = fleet_proto::events::to_json(e);
    v["type"] = json!("fleet.event");
    v
}

/// The body a webhook of `format` receives for `e`.
pub fn body(format: Format, e: &FleetEvent) -> Vec<u8> {
    let v = match format {
        Format::Slack => json!({ "text": text(e) }),
        Format::Json => event_json(e),
    };
    // Invariant: a JSON value of strings and numbers always serializes.
    serde_json::to_vec(&v).unwrap_or_default()
}

fn host(e: &FleetEvent) -> &str {
    if e.hostname.is_empty() {
        &e.host_id
    } else {
        &e.hostname
    }
}

/// The line a person reads in a channel.
pub fn text(e: &FleetEvent) -> String {
    let what = if e.rollout_kind.is_empty() || e.rollout_kind == "rollout" {
        "rollout".to_string()
    } else {
        e.rollout_kind.clone()
    };
    let target = format!("{} {}", e.app, e.version).trim().to_string();
    let by = if e.who.is_empty() || e.who == "controller" {
        String::new()
    } else {
        format!(" (by {})", e.who)
    };
    let detail = e.detail.lines().next().unwrap_or_default();
    let line = match e.kind() {
        FleetEventKind::RolloutStarted => format!("{what} {} of {target} started{by}", e.rollout_id),
        FleetEventKind::CanaryWaiting => format!(
            "{what} {} of {target}: canary healthy, waiting for approval: fleetctl rollout resume {}",
            e.rollout_id, e.rollout_id
        ),
        FleetEventKind::RollingBack => format!("{what} {} of {target} is rolling back: {detail}", e.rollout_id),
        FleetEventKind::RolloutEnded => {
            format!(
                "{what} {} of {target} {}: {detail}",
                e.rollout_id,
                e.outcome.replace('_', " ")
            )
        }
        FleetEventKind::RolloutHostDone => format!(
            "{what} {} of {target}: host {} {}: {detail}",
            e.rollout_id,
            host(e),
            e.outcome.replace('_', " ")
        ),
        FleetEventKind::HostTaskEnded => {
            format!("deploy of {target} on {} {}: {detail}", host(e), e.outcome)
        }
        FleetEventKind::NotifyTest => format!("fleet webhook test: {detail}"),
        k => {
            let about = [target.as_str(), host(e), detail]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            format!("{}: {about}", k.word().replace('_', " "))
        }
    };
    format!("fleet: {line}")
}

/// `sha256=<hex>` of HMAC-SHA256 under `key` over `"<timestamp>.<body>"`.
pub fn signature(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", fleet_proto::transport::hex(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: FleetEventKind, outcome: &str) -> FleetEvent {
        let mut e = FleetEvent {
            seq: 3,
            at_ms: 1_700_000_000_000,
            app: "web".into(),
            version: "2.0".into(),
            rollout_id: "r-1".into(),
            rollout_kind: "rollout".into(),
            outcome: outcome.into(),
            detail: "2 of 10 hosts failed\nmore".into(),
            who: "alice".into(),
            hostname: "web-3".into(),
            ..Default::default()
        };
        e.set_kind(kind);
        e
    }

    #[test]
    fn the_defaults_keep_starts_ends_canaries_and_failures_and_leave_out_the_flood() {
        let wants_default = |e: &FleetEvent| wants("", &[], e);
        assert!(wants_default(&ev(FleetEventKind::RolloutStarted, "")));
        assert!(wants_default(&ev(FleetEventKind::CanaryWaiting, "")));
        assert!(wants_default(&ev(FleetEventKind::RolloutEnded, "succeeded")));
        assert!(wants_default(&ev(FleetEventKind::RolloutHostDone, "failed")));
        assert!(!wants_default(&ev(FleetEventKind::RolloutHostDone, "succeeded")));
        assert!(wants_default(&ev(FleetEventKind::HostTaskEnded, "reverted")));
        assert!(!wants_default(&ev(FleetEventKind::HostConnected, "")));
        assert!(!wants_default(&ev(FleetEventKind::BatchDone, "")));
        let mut converge = ev(FleetEventKind::RolloutEnded, "succeeded");
        converge.rollout_kind = "converge".into();
        assert!(!wants_default(&converge), "a convergence run that worked is no news");
        converge.outcome = "failed".into();
        assert!(wants_default(&converge));
        // An app filter and explicit kinds.
        assert!(!wants("api", &[], &ev(FleetEventKind::RolloutStarted, "")));
        assert!(wants(
            "web",
            &[FleetEventKind::BatchDone],
            &ev(FleetEventKind::BatchDone, "")
        ));
        assert!(!wants(
            "web",
            &[FleetEventKind::BatchDone],
            &ev(FleetEventKind::RolloutStarted, "")
        ));
        // A test reaches the webhook whatever its filter.
        assert!(wants(
            "api",
            &[FleetEventKind::BatchDone],
            &ev(FleetEventKind::NotifyTest, "")
        ));
    }

    #[test]
    fn slack_lines_say_what_happened_to_what() {
        assert_eq!(
            text(&ev(FleetEventKind::RolloutEnded, "rolled_back")),
            "fleet: rollout r-1 of web 2.0 rolled back: 2 of 10 hosts failed"
        );
        assert_eq!(
            text(&ev(FleetEventKind::RolloutStarted, "")),
            "fleet: rollout r-1 of web 2.0 started (by alice)"
        );
        assert_eq!(
            text(&ev(FleetEventKind::HostTaskEnded, "reverted")),
            "fleet: deploy of web 2.0 on web-3 reverted: 2 of 10 hosts failed"
        );
        assert!(text(&ev(FleetEventKind::CanaryWaiting, "")).contains("fleetctl rollout resume r-1"));
        let v: serde_json::Value =
            serde_json::from_slice(&body(Format::Slack, &ev(FleetEventKind::RolloutStarted, ""))).expect("json");
        assert!(v["text"].as_str().expect("text").starts_with("fleet: rollout r-1"));
        let v: serde_json::Value =
            serde_json::from_slice(&body(Format::Json, &ev(FleetEventKind::RolloutEnded, "failed"))).expect("json");
        assert_eq!(
            (v["kind"].as_str(), v["seq"].as_u64()),
            (Some("rollout_ended"), Some(3))
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The construction, checked against ring's one-shot HMAC, and shown
        // to depend on the key, the timestamp and the body.
        let s = signature(b"key", 1_700_000_000, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64, "{s}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key");
        let direct = ring::hmac::sign(&key, b"1700000000.{}");
        assert_eq!(s, format!("sha256={}", fleet_proto::transport::hex(direct.as_ref())));
        assert_ne!(s, signature(b"key", 1_700_000_001, b"{}"));
        assert_ne!(s, signature(b"other", 1_700_000_000, b"{}"));
        assert_ne!(s, signature(b"key", 1_700_000_000, b"{ }"));
    }

    #[test]
    fn formats_parse_and_json_is_the_default() {
        assert_eq!(Format::parse(""), Ok(Format::Json));
        assert_eq!(Format::parse("slack"), Ok(Format::Slack));
        assert!(Format::parse("teams").expect_err("unknown").contains("slack, json"));
    }
}
