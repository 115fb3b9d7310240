//! Webhooks (space `notifiers`, key: name, value `1` + JSON
//! [`NotifierRecord`]).

use serde::{Deserialize, Serialize};

use super::kv::{Attempt, Space, Txn};
use super::{dec_json, decode_all, enc_json, Store, StoreError};

const TREE: &str = Space::Notifiers.name();

/// A webhook as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifierRecord {
    /// Its name.
    pub name: String,
    /// Where events are POSTed (whole: its path is often a secret).
    pub url: String,
    /// "slack" or "json".
    pub format: String,
    /// Only this app's events (empty: all).
    #[serde(default)]
    pub app: String,
    /// Only these kinds, as words (empty: the default set).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// The HMAC-SHA256 key of JSON payloads (hex; empty for slack).
    #[serde(default)]
    pub secret: String,
    /// When it was added (ms).
    pub created_at_ms: i64,
    /// Who added it.
    pub created_by: String,
}

fn dec(k: &[u8], v: &[u8]) -> Result<NotifierRecord, StoreError> {
    dec_json(TREE, k, v)
}

impl Store {
    /// Adds a webhook; false (and nothing written) when the name is taken.
    pub fn create_notifier(&self, rec: &NotifierRecord) -> Result<bool, StoreError> {
        self.rmw(rec.name.as_bytes(), "adding a webhook", |kv| {
            if kv.get(Space::Notifiers, rec.name.as_bytes())?.is_some() {
                return Ok(Attempt::Done(false));
            }
            let txn =
                Txn::new()
                    .when_absent(Space::Notifiers, &rec.name)
                    .put(Space::Notifiers, &rec.name, enc_json(rec));
            Ok(Attempt::Commit(txn, true))
        })
    }

    /// A webhook by name.
    pub fn notifier(&self, name: &str) -> Result<Option<NotifierRecord>, StoreError> {
        self.get_with(Space::Notifiers, name.as_bytes(), dec)
    }

    /// Every webhook, by name.
    pub fn notifiers(&self) -> Result<Vec<NotifierRecord>, StoreError> {
        decode_all(self.kv.as_ref(), Space::Notifiers, b"", dec)
    }

    /// Removes a webhook; returns it.
    pub fn remove_notifier(&self, name: &str) -> Result<Option<NotifierRecord>, StoreError> {
        self.rmw(name.as_bytes(), "removing a webhook", |kv| {
            let Some(v) = kv.get(Space::Notifiers, name.as_bytes())? else {
                return Ok(Attempt::Done(None));
            };
            let rec = dec(name.as_bytes(), &v)?;
            let txn = Txn::new()
                .when_equals(Space::Notifiers, name, &v)
                .delete(Space::Notifiers, name);
            Ok(Attempt::Commit(txn, Some(rec)))
        })
    }
}
