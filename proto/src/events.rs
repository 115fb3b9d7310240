//! The words of the fleet's event kinds (what `fleetctl events` prints,
//! what `--kind` and the webhooks' event filters accept), and an event's
//! JSON form.

use crate::v1::{FleetEvent, FleetEventKind};

/// An event as JSON: what `fleetctl events -o json` prints and what a
/// JSON webhook receives (which adds `"type": "fleet.event"`). One place,
/// so the two cannot drift; the field names are stable.
pub fn to_json(e: &FleetEvent) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "at_ms": e.at_ms,
        "kind": e.kind().word(),
        "app": e.app,
        "version": e.version,
        "host_id": e.host_id,
        "hostname": e.hostname,
        "rollout_id": e.rollout_id,
        "rollout_kind": e.rollout_kind,
        "outcome": e.outcome,
        "detail": e.detail,
        "who": e.who,
    })
}

impl FleetEventKind {
    /// Every kind that is sent.
    pub const ALL: [FleetEventKind; 19] = [
        FleetEventKind::RolloutStarted,
        FleetEventKind::BatchStarted,
        FleetEventKind::BatchDone,
        FleetEventKind::RolloutHostDone,
        FleetEventKind::CanaryWaiting,
        FleetEventKind::RolloutPaused,
        FleetEventKind::RolloutResumed,
        FleetEventKind::RollingBack,
        FleetEventKind::RolloutEnded,
        FleetEventKind::HostTaskEnded,
        FleetEventKind::HostConnected,
        FleetEventKind::HostDisconnected,
        FleetEventKind::HostEnrolled,
        FleetEventKind::HostRemoved,
        FleetEventKind::ReleasePushed,
        FleetEventKind::ReleaseDeleted,
        FleetEventKind::AppChanged,
        FleetEventKind::JoinTokenRevoked,
        FleetEventKind::OperatorChanged,
    ];

    /// The word people, JSON and filters use.
    pub fn word(self) -> &'static str {
        match self {
            FleetEventKind::Unspecified => "unknown",
            FleetEventKind::RolloutStarted => "rollout_started",
            FleetEventKind::BatchStarted => "batch_started",
            FleetEventKind::BatchDone => "batch_done",
            FleetEventKind::RolloutHostDone => "rollout_host_done",
            FleetEventKind::CanaryWaiting => "canary_waiting",
            FleetEventKind::RolloutPaused => "rollout_paused",
            FleetEventKind::RolloutResumed => "rollout_resumed",
            FleetEventKind::RollingBack => "rolling_back",
            FleetEventKind::RolloutEnded => "rollout_ended",
            FleetEventKind::HostTaskEnded => "host_task_ended",
            FleetEventKind::HostConnected => "host_connected",
            FleetEventKind::HostDisconnected => "host_disconnected",
            FleetEventKind::HostEnrolled => "host_enrolled",
            FleetEventKind::HostRemoved => "host_removed",
            FleetEventKind::ReleasePushed => "release_pushed",
            FleetEventKind::ReleaseDeleted => "release_deleted",
            FleetEventKind::AppChanged => "app_changed",
            FleetEventKind::JoinTokenRevoked => "join_token_revoked",
            FleetEventKind::OperatorChanged => "operator_changed",
            FleetEventKind::NotifyTest => "notify_test",
        }
    }

    /// The kind a word names, or an error listing the words.
    pub fn parse(s: &str) -> Result<FleetEventKind, String> {
        FleetEventKind::ALL.into_iter().find(|k| k.word() == s).ok_or_else(|| {
            let words: Vec<&str> = FleetEventKind::ALL.iter().map(|k| k.word()).collect();
            format!("event kind '{s}' is not one of {}", words.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_word_and_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for k in FleetEventKind::ALL {
            assert!(seen.insert(k.word()), "{} twice", k.word());
            assert_eq!(FleetEventKind::parse(k.word()), Ok(k));
        }
        // Every value of the enum but "unspecified" and the webhook test is in ALL.
        let values = (1..100).filter(|v| FleetEventKind::try_from(*v).is_ok()).count();
        assert_eq!(values, FleetEventKind::ALL.len() + 1);
        let e = FleetEventKind::parse("nope").expect_err("not a kind");
        assert!(e.contains("rollout_ended"), "{e}");
    }
}
