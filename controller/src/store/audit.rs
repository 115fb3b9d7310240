//! The audit trail's records in the store: a [`Journal`] in space `audit`
//! (key layout there). Value: `1` + JSON [`Record`].

use serde::{Deserialize, Serialize};

use super::codec;
use super::journal::{Entry, Journal};
use super::kv::Space;
use super::{Store, StoreError};

const V1: u8 = 1;

/// One audited call, or a change the controller made by itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the call arrived (ms).
    pub at_ms: i64,
    /// Operator name, "unauthenticated", or "controller".
    pub who: String,
    /// `Service/Method`, or what the controller did (e.g. "Convergence",
    /// "RolloutEnded").
    pub what: String,
    /// Peer address.
    pub from: String,
    /// "ok", "accepted" (its end is a later record), or `Code: message`.
    pub outcome: String,
    /// What the call names besides the fields below: a token, an operator,
    /// a task.
    #[serde(default)]
    pub target: String,
    /// The app it changes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// The release version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Hosts it changes (at most [`MAX_HOSTS`]; `target` gives the count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The host selector it was given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// The rollout it started, controlled or ended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollout_id: String,
    /// A dry run: nothing changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// The most host ids one record lists.
pub const MAX_HOSTS: usize = 50;

impl Entry for Record {
    const SPACE: Space = Space::Audit;

    fn at_ms(&self) -> i64 {
        self.at_ms
    }

    fn encode(&self) -> Vec<u8> {
        codec::json(V1, self)
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let hex = fleet_proto::transport::hex(key);
        codec::from_json(Self::SPACE.name(), hex.as_bytes(), bytes, V1)
    }
}

/// The audit trail.
pub type AuditTrail = Journal<Record>;

impl Store {
    /// The audit trail, keeping at most `max_entries`.
    pub fn audit_trail(&self, max_entries: usize) -> Result<AuditTrail, StoreError> {
        Journal::open(self.kv().clone(), max_entries)
    }
}
