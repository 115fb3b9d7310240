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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the call arrived (ms).
    pub at_ms: i64,
    /// Operator name, "unauthenticated", or "controller".
    pub who: String,
    /// `Service/Method`, or what the controller did (e.g. "Convergence").
    pub what: String,
    /// Peer address.
    pub from: String,
    /// "ok" or `Code: message`.
    pub outcome: String,
    /// The call's main argument, when known.
    #[serde(default)]
    pub target: String,
}

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

    /// Entries at or after `since_ms`, oldest first; the newest `limit` of
    /// them when there are more.
    pub fn since(&self, since_ms: i64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.kv.scan_from(SPACE, &key(since_ms, 0), limit, Order::Descending)? {
            let hex = fleet_proto::transport::hex(&k);
            out.push(codec::from_json(TREE, hex.as_bytes(), &v, V1)?);
        }
        out.reverse();
        Ok(out)
    }
}
