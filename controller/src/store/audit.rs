//! The audit trail's records in the store (tree `audit`).
//!
//! Key: big-endian ms timestamp (8 bytes) + big-endian sequence (8 bytes),
//! so a range scan from a time is the trail from that time, oldest first.
//! Value: `1` + JSON [`Record`]. Entries are durable at the next flush of
//! the store (sled also flushes by itself every 500 ms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::codec;
use super::kv::{Kv, Order, Space, Txn};
use super::{Store, StoreError};

const SPACE: Space = Space::Audit;
const TREE: &str = SPACE.name();
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

fn key(at_ms: i64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&u64::try_from(at_ms).unwrap_or(0).to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The `audit` tree: appended to, read from a time.
pub struct AuditTrail {
    kv: Arc<dyn Kv>,
    /// Next sequence number: keeps keys unique within a millisecond.
    seq: AtomicU64,
}

impl Store {
    /// The audit trail; sequence numbers go on from its last entry.
    pub fn audit_trail(&self) -> Result<AuditTrail, StoreError> {
        let kv = self.kv().clone();
        let last = kv.scan_from(SPACE, b"", 1, Order::Descending)?;
        let next = match last.first() {
            Some((k, _)) if k.len() == 16 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&k[8..]);
                u64::from_be_bytes(seq).wrapping_add(1)
            }
            _ => 0,
        };
        Ok(AuditTrail {
            kv,
            seq: AtomicU64::new(next),
        })
    }
}

impl AuditTrail {
    /// Appends an entry.
    pub fn append(&self, r: &Record) -> Result<(), StoreError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .kv
            .commit(Txn::new().put(SPACE, key(r.at_ms, seq), codec::json(V1, r)))?;
        Ok(())
    }

    /// How many entries there are (reads every key: at start only).
    pub fn count(&self) -> Result<usize, StoreError> {
        self.kv.count(SPACE)
    }

    /// Removes the `n` oldest entries; returns how many went.
    pub fn trim_oldest(&self, n: usize) -> Result<usize, StoreError> {
        let oldest = self.kv.scan_from(SPACE, b"", n, Order::Ascending)?;
        let mut txn = Txn::new();
        for (k, _) in &oldest {
            txn = txn.delete(SPACE, k);
        }
        let _ = self.kv.commit(txn)?;
        Ok(oldest.len())
    }

    /// Entries at or after `since_ms` that `keep` accepts, oldest first;
    /// the newest `limit` of them when there are more. Reads every entry
    /// from `since_ms` on when `keep` is selective (the trail is capped).
    pub fn since(
        &self,
        since_ms: i64,
        limit: usize,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>, StoreError> {
        const PAGE: usize = 1024;
        let mut out = std::collections::VecDeque::with_capacity(limit.min(PAGE));
        let mut from = key(since_ms, 0).to_vec();
        loop {
            let page = self.kv.scan_from(SPACE, &from, PAGE, Order::Ascending)?;
            for (k, v) in &page {
                let hex = fleet_proto::transport::hex(k);
                let r: Record = codec::from_json(TREE, hex.as_bytes(), v, V1)?;
                if keep(&r) {
                    if out.len() == limit {
                        out.pop_front();
                    }
                    out.push_back(r);
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == PAGE => {
                    from = k.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(out.into())
    }
}
