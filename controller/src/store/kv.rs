//! The seam under the typed store: a narrow key-value trait ([`Kv`]) that
//! the typed methods (`Store`, `RolloutStore`, `Journal`) and the codec
//! sit on. Its sled backend is [`SledKv`] (`kv/sled_kv.rs`), the only code
//! that touches sled apart from the flusher's call of [`Kv::flush_sync`];
//! the contract any backend meets is in `kv/contract.rs`.
//!
//! The trait has the shape of etcd's KV API so that a second backend (etcd,
//! for several controllers) can sit behind it:
//!
//! - [`Kv::get`] and [`Kv::scan_prefix`] / [`Kv::scan_from`] are etcd range
//!   reads (a prefix is a range to the prefix's successor; `scan_from` is a
//!   range to the end of the space with a sort order and a limit);
//! - [`Kv::commit`] is an etcd `Txn`: `when` = the [`Txn`]'s compares (a key's
//!   value equals given bytes, or its version is 0 = it is absent),
//!   `and_then` = its puts and deletes, and [`Committed::Applied`] is the
//!   response's `succeeded`;
//! - a [`Space`] is a sled tree here and a key prefix there
//!   (`<space name>/`).
//!
//! Read-modify-writes are optimistic ([`optimistic`]): read, decide (pure),
//! commit with compares on what was read, and start again on
//! [`Committed::Conflict`], a bounded number of times.
//!
//! Durability: `Store::flush().await` stays the one path to it. The store's
//! single flusher thread (`store::flusher`) owns an `Arc<dyn Kv>` and calls
//! [`Kv::flush_sync`] once per batch of requests (group commit). For sled
//! that is `Db::flush` (never `flush_async`: spacejam/sled#1308); a backend
//! whose commits are durable when they return (etcd: raft-committed) makes it
//! a no-op.

use std::time::Duration;

use super::StoreError;

#[cfg(test)]
pub(crate) mod contract;
mod sled_kv;
pub use sled_kv::{SledKv, SLED_DB_FILE};

/// The named key spaces of the store (sled trees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// `schema`, `alive`.
    Meta,
    /// Enrolled hosts.
    Hosts,
    /// Honoured client certificates.
    Certs,
    /// Join tokens.
    Tokens,
    /// Operator credentials.
    Operators,
    /// App specs.
    Apps,
    /// Release records.
    Releases,
    /// The audit trail.
    Audit,
    /// Rollout records.
    Rollouts,
    /// Each (app, host)'s desired release.
    Desired,
    /// Each app's release for new hosts.
    AppRelease,
    /// Operator identities (their tokens are in `Operators`).
    Identities,
    /// The fleet's event log.
    Events,
    /// Webhooks.
    Notifiers,
    /// The hosts of rollout records, one key per host (see `rollouts`).
    RolloutHosts,
}

impl Space {
    /// Every space, in the order of their index.
    pub const ALL: [Space; 15] = [
        Space::Meta,
        Space::Hosts,
        Space::Certs,
        Space::Tokens,
        Space::Operators,
        Space::Apps,
        Space::Releases,
        Space::Audit,
        Space::Rollouts,
        Space::Desired,
        Space::AppRelease,
        Space::Identities,
        Space::Events,
        Space::Notifiers,
        Space::RolloutHosts,
    ];

    /// The space's name: the sled tree's name, and in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Hosts => "hosts",
            Space::Certs => "certs",
            Space::Tokens => "tokens",
            Space::Operators => "operators",
            Space::Apps => "apps",
            Space::Releases => "releases",
            Space::Audit => "audit",
            Space::Rollouts => "rollouts",
            Space::Desired => "desired",
            Space::AppRelease => "app_release",
            Space::Identities => "identities",
            Space::Events => "events",
            Space::Notifiers => "notifiers",
            Space::RolloutHosts => "rollout_hosts",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A condition of a [`Txn`]: the key's value in the space is `value`, or
/// the key is absent when `value` is None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// Where the key is.
    pub space: Space,
    /// The key.
    pub key: Vec<u8>,
    /// The value it must hold, None: it must be absent.
    pub value: Option<Vec<u8>>,
}

/// A write of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets the key's value.
    Put {
        /// Where the key is.
        space: Space,
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Removes the key (nothing when it is absent).
    Delete {
        /// Where the key is.
        space: Space,
        /// The key.
        key: Vec<u8>,
    },
}

/// An atomic conditional write: every op is applied, in order, only if every
/// compare holds at the moment of the commit; otherwise nothing is.
/// Contract (etcd's): one txn writes a key at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold.
    pub compares: Vec<Compare>,
    /// Applied when they do.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction (always applies).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds a compare: `key` in `space` holds `value` (None: is absent).
    pub fn when(mut self, space: Space, key: impl AsRef<[u8]>, value: Option<&[u8]>) -> Txn {
        self.compares.push(Compare {
            space,
            key: key.as_ref().to_vec(),
            value: value.map(<[u8]>::to_vec),
        });
        self
    }

    /// Adds a compare: `key` in `space` holds `value`.
    pub fn when_equals(self, space: Space, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Txn {
        self.when(space, key, Some(value.as_ref()))
    }

    /// Adds a compare: `key` in `space` is absent.
    pub fn when_absent(self, space: Space, key: impl AsRef<[u8]>) -> Txn {
        self.when(space, key, None)
    }

    /// Adds a put.
    pub fn put(mut self, space: Space, key: impl AsRef<[u8]>, value: Vec<u8>) -> Txn {
        self.ops.push(Op::Put {
            space,
            key: key.as_ref().to_vec(),
            value,
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, space: Space, key: impl AsRef<[u8]>) -> Txn {
        self.ops.push(Op::Delete {
            space,
            key: key.as_ref().to_vec(),
        });
        self
    }

    /// Every space the transaction reads or writes, sorted, once each.
    fn spaces(&self) -> Vec<Space> {
        let mut s: Vec<Space> = self
            .compares
            .iter()
            .map(|c| c.space)
            .chain(self.ops.iter().map(|op| match op {
                Op::Put { space, .. } | Op::Delete { space, .. } => *space,
            }))
            .collect();
        s.sort();
        s.dedup();
        s
    }
}

/// A key and its value, as scans return them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// What [`Kv::commit`] did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Every compare held; every op was applied.
    Applied,
    /// A compare did not hold; nothing was written.
    Conflict,
}

/// Direction and end of a [`Kv::scan_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The first entries from the start key, in ascending key order.
    Ascending,
    /// The last entries of the space (down to the start key), in
    /// descending key order.
    Descending,
}

/// The store's key-value backend. Blocking: async callers use it from the
/// runtime only for short operations, and run contended ones (enrollment)
/// in `spawn_blocking`.
pub trait Kv: Send + Sync + 'static {
    /// The value of `key` in `space`.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every entry of `space` whose key starts with `prefix` (empty: the
    /// whole space), in ascending key order.
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;

    /// At most `limit` entries of `space` whose key is at or after `from`:
    /// the first ones ascending, or the last ones descending (see [`Order`]).
    fn scan_from(&self, space: Space, from: &[u8], limit: usize, order: Order) -> Result<Vec<Entry>, StoreError>;

    /// Applies `txn` atomically if every compare holds (see [`Txn`]).
    fn commit(&self, txn: Txn) -> Result<Committed, StoreError>;

    /// How many entries `space` holds.
    fn count(&self, space: Space) -> Result<usize, StoreError> {
        Ok(self.scan_prefix(space, b"")?.len())
    }

    /// Makes every commit that returned before the call durable, blocking.
    /// Only the store's flusher thread calls it (group commit); `Err` holds
    /// the backend's error text.
    fn flush_sync(&self) -> Result<(), String>;

    /// The most writes one [`Txn`] may hold (etcd's `--max-txn-ops`, 128 by
    /// default). A writer of many keys that need not change together (a
    /// rollout's hosts) splits its writes into txns of at most this many.
    fn max_ops(&self) -> usize {
        usize::MAX
    }

    /// A backend across the network (etcd) gives its name for messages: its
    /// errors carry their own advice, where sled's need the disk's.
    fn remote(&self) -> Option<String> {
        None
    }
}

/// How many times a read-modify-write is attempted before it gives up with
/// [`StoreError::Contended`].
pub const MAX_TRIES: u32 = 64;

/// What one attempt of a read-modify-write decided from what it read.
pub enum Attempt<T> {
    /// Nothing to write: the answer.
    Done(T),
    /// Commit this (compares on what was read), then answer `T`.
    Commit(Txn, T),
}

/// Runs a read-modify-write optimistically: `attempt` reads through `kv`
/// and decides; its transaction is committed and, on a conflict (something
/// it read changed), it runs again, up to [`MAX_TRIES`] times. `what` names
/// the operation in the error when every try conflicted.
pub fn optimistic<T, E: From<StoreError>>(
    kv: &dyn Kv,
    what: &'static str,
    mut attempt: impl FnMut(&dyn Kv) -> Result<Attempt<T>, E>,
) -> Result<T, E> {
    for n in 0..MAX_TRIES {
        match attempt(kv)? {
            Attempt::Done(t) => return Ok(t),
            Attempt::Commit(txn, t) => match kv.commit(txn)? {
                Committed::Applied => return Ok(t),
                Committed::Conflict => back_off(n),
            },
        }
    }
    Err(StoreError::Contended { what, tries: MAX_TRIES }.into())
}

/// Lets the writer that won go on before trying again: a yield at first,
/// then random sleeps growing to at most ~6 ms.
fn back_off(n: u32) {
    if n < 4 {
        std::thread::yield_now();
    } else {
        let cap = 25u64 << n.min(8);
        std::thread::sleep(Duration::from_micros(fastrand::u64(1..=cap)));
    }
}
