//! The seam under the typed store: a narrow key-value trait ([`Kv`]) that
//! the typed methods (`Store`, `RolloutStore`, `Journal`) and the codec
//! sit on, and its sled backend ([`SledKv`]), the only code that touches
//! sled apart from the flusher's call of [`Kv::flush_sync`].
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

use std::path::Path;
use std::time::Duration;

use sled::transaction::{TransactionError, Transactional};

use super::StoreError;

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

/// sled's own file in a store directory: a directory without it holds no
/// store (an empty mount point, a deleted store).
pub const SLED_DB_FILE: &str = "db";

/// Removes `snap.*.generating` files from a sled store directory; returns
/// the files removed.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it, and
/// only then renames it to `snap.<lsn>` and removes older snapshots. But
/// when it reads the store it takes the last `snap.*` file by name, which
/// is an unfinished `.generating` one when a write failed (ENOSPC while
/// opening on a full disk), and refuses the whole store as corrupt: a
/// restart on a full disk would damage the store for good. Such a file
/// never holds a snapshot sled finished, and the previous snapshot is kept
/// until the rename, so removing it loses nothing. It is done only while
/// this process holds sled's own lock on `db` (an exclusive `flock`, as
/// sled takes it), so a running controller's snapshot in progress is never
/// touched; when the lock is held elsewhere nothing is removed and sled's
/// open reports the store locked.
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    use rustix::fs::{flock, FlockOperation};

    let db = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(SLED_DB_FILE))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    match flock(&db, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    }
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    // Closing `db` releases the lock before sled takes it.
    drop(db);
    Ok(removed)
}

/// The sled backend: one tree per [`Space`], named by [`Space::name`].
pub struct SledKv {
    db: sled::Db,
    /// Indexed by `Space::index`.
    trees: Vec<sled::Tree>,
}

fn pairs(iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>) -> Result<Vec<Entry>, StoreError> {
    iter.map(|kv| {
        let (k, v) = kv?;
        Ok((k.to_vec(), v.to_vec()))
    })
    .collect()
}

impl SledKv {
    /// Opens (or creates) the sled database in `dir` and its trees. Errors
    /// say what is wrong with the directory: locked by another process,
    /// I/O, or unreadable (damaged).
    pub fn open(dir: &Path) -> Result<SledKv, StoreError> {
        let path = dir.display().to_string();
        match remove_unfinished_snapshots(dir) {
            Ok(removed) => {
                for f in removed {
                    tracing::warn!(
                        file = %f.display(),
                        "removed an unfinished sled snapshot (a snapshot write that failed, e.g. on a full disk); \
                         the store is recovered from the previous snapshot and its log"
                    );
                }
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path,
                    detail: format!("cannot clear unfinished snapshots: {e}"),
                })
            }
        }
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| {
                let detail = e.to_string();
                // sled's words when fs2's try_lock_exclusive fails (config.rs, 0.34).
                if detail.contains("could not acquire lock") {
                    StoreError::Locked {
                        path: path.clone(),
                        detail,
                    }
                } else if matches!(e, sled::Error::Io(_)) {
                    StoreError::Open {
                        path: path.clone(),
                        detail,
                    }
                } else {
                    StoreError::Damaged {
                        path: path.clone(),
                        detail,
                    }
                }
            })?;
        let trees = Space::ALL
            .iter()
            .map(|s| db.open_tree(s.name()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SledKv { db, trees })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.trees[space.index()]
    }
}

impl Kv for SledKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        pairs(self.tree(space).scan_prefix(prefix))
    }

    fn scan_from(&self, space: Space, from: &[u8], limit: usize, order: Order) -> Result<Vec<Entry>, StoreError> {
        let range = self.tree(space).range(from..);
        match order {
            Order::Ascending => pairs(range.take(limit)),
            Order::Descending => pairs(range.rev().take(limit)),
        }
    }

    fn commit(&self, txn: Txn) -> Result<Committed, StoreError> {
        // A single unconditional write is atomic by itself.
        if txn.compares.is_empty() && txn.ops.len() <= 1 {
            match txn.ops.into_iter().next() {
                Some(Op::Put { space, key, value }) => {
                    self.tree(space).insert(key, value)?;
                }
                Some(Op::Delete { space, key }) => {
                    self.tree(space).remove(key)?;
                }
                None => {}
            }
            return Ok(Committed::Applied);
        }
        // One sled transaction over the trees involved; sled runs it under
        // its global concurrency-control write lock, so the compares and the
        // writes see no other writer in between.
        let spaces = txn.spaces();
        let trees: Vec<&sled::Tree> = spaces.iter().map(|s| self.tree(*s)).collect();
        let at = |space: Space| spaces.binary_search(&space).expect("every space of the txn has a tree");
        let r: Result<Committed, TransactionError<()>> = trees.as_slice().transaction(|views| {
            for c in &txn.compares {
                let now = views[at(c.space)].get(&c.key)?;
                if now.as_deref() != c.value.as_deref() {
                    return Ok(Committed::Conflict);
                }
            }
            for op in &txn.ops {
                match op {
                    Op::Put { space, key, value } => {
                        views[at(*space)].insert(key.as_slice(), value.as_slice())?;
                    }
                    Op::Delete { space, key } => {
                        views[at(*space)].remove(key.as_slice())?;
                    }
                }
            }
            Ok(Committed::Applied)
        });
        r.map_err(|e| match e {
            TransactionError::Abort(()) => unreachable!("the commit closure never aborts"),
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    fn count(&self, space: Space) -> Result<usize, StoreError> {
        Ok(self.tree(space).len())
    }

    fn flush_sync(&self) -> Result<(), String> {
        self.db.flush().map(drop).map_err(|e| e.to_string())
    }
}

/// The contract every backend must meet, run here against [`SledKv`]; a
/// second backend runs the same functions against itself.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use std::sync::Arc;

    /// Compares decide; nothing of a failed txn is written.
    pub fn compare_and_commit(kv: &dyn Kv) {
        assert_eq!(kv.get(Space::Tokens, b"a").expect("get"), None);
        let create = Txn::new()
            .when(Space::Tokens, b"a", None)
            .put(Space::Tokens, b"a", b"1".to_vec())
            .put(Space::Hosts, b"h", b"x".to_vec());
        assert_eq!(kv.commit(create.clone()).expect("commit"), Committed::Applied);
        assert_eq!(kv.get(Space::Tokens, b"a").expect("get").as_deref(), Some(&b"1"[..]));
        assert_eq!(
            kv.commit(create).expect("commit"),
            Committed::Conflict,
            "the key exists now"
        );
        // A failed compare anywhere leaves every space as it was.
        let stale = Txn::new()
            .when(Space::Hosts, b"h", Some(b"x"))
            .when(Space::Tokens, b"a", Some(b"0"))
            .put(Space::Hosts, b"h", b"y".to_vec())
            .delete(Space::Tokens, b"a");
        assert_eq!(kv.commit(stale).expect("commit"), Committed::Conflict);
        assert_eq!(kv.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"x"[..]));
        assert_eq!(kv.get(Space::Tokens, b"a").expect("get").as_deref(), Some(&b"1"[..]));
        // Every compare holds: every op applies.
        let fresh = Txn::new()
            .when(Space::Hosts, b"h", Some(b"x"))
            .when(Space::Tokens, b"a", Some(b"1"))
            .when(Space::Certs, b"c", None)
            .put(Space::Hosts, b"h", b"y".to_vec())
            .delete(Space::Tokens, b"a");
        assert_eq!(kv.commit(fresh).expect("commit"), Committed::Applied);
        assert_eq!(kv.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"y"[..]));
        assert_eq!(kv.get(Space::Tokens, b"a").expect("get"), None);
        // Unconditional writes always apply; deleting an absent key is no error.
        let blind = Txn::new().delete(Space::Tokens, b"a").put(Space::Certs, b"c", vec![]);
        assert_eq!(kv.commit(blind).expect("commit"), Committed::Applied);
        assert_eq!(
            kv.get(Space::Certs, b"c").expect("get"),
            Some(vec![]),
            "empty is not absent"
        );
        assert_eq!(
            kv.commit(Txn::new().when(Space::Certs, b"c", None)).expect("commit"),
            Committed::Conflict
        );
        assert_eq!(kv.commit(Txn::new()).expect("commit"), Committed::Applied);
        // Spaces are apart: the same key elsewhere is another key.
        assert_eq!(kv.get(Space::Operators, b"h").expect("get"), None);
    }

    /// Prefix scans and scans from a key, in key order, within one space.
    pub fn scans(kv: &dyn Kv) {
        let mut txn = Txn::new();
        for k in ["app\0b", "app\0a", "ap", "app", "apq\0a", "b"] {
            txn = txn.put(Space::Releases, k, k.as_bytes().to_vec());
        }
        txn = txn.put(Space::Desired, "app\0z", b"other space".to_vec());
        assert_eq!(kv.commit(txn).expect("commit"), Committed::Applied);
        let keys = |v: Vec<Entry>| {
            v.into_iter()
                .map(|(k, v)| {
                    assert_eq!(k, v, "each value is its key");
                    String::from_utf8(k).expect("utf8")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(kv.scan_prefix(Space::Releases, b"app\0").expect("scan")),
            ["app\0a", "app\0b"]
        );
        assert_eq!(kv.scan_prefix(Space::Releases, b"").expect("scan").len(), 6);
        assert_eq!(kv.count(Space::Releases).expect("count"), 6);
        assert_eq!(kv.count(Space::Audit).expect("count"), 0);
        assert!(kv.scan_prefix(Space::Releases, b"c").expect("scan").is_empty());
        assert_eq!(
            keys(
                kv.scan_from(Space::Releases, b"app", 3, Order::Ascending)
                    .expect("scan")
            ),
            ["app", "app\0a", "app\0b"]
        );
        assert_eq!(
            keys(
                kv.scan_from(Space::Releases, b"app", 2, Order::Descending)
                    .expect("scan")
            ),
            ["b", "apq\0a"]
        );
        assert_eq!(
            keys(
                kv.scan_from(Space::Releases, b"apq", 10, Order::Descending)
                    .expect("scan")
            ),
            ["b", "apq\0a"]
        );
        assert!(kv
            .scan_from(Space::Releases, b"c", 10, Order::Descending)
            .expect("scan")
            .is_empty());
        assert!(kv
            .scan_from(Space::Releases, b"", 0, Order::Ascending)
            .expect("scan")
            .is_empty());
    }

    /// Threads incrementing one counter by compare-and-commit lose no
    /// increment, and conflicts are reported (not applied).
    pub fn concurrent_committers(kv: Arc<dyn Kv>) {
        const THREADS: u64 = 8;
        const EACH: u64 = 200;
        let conflicts: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let kv = kv.clone();
                    s.spawn(move || {
                        let mut conflicts = 0;
                        let mut done = 0;
                        while done < EACH {
                            let was = kv.get(Space::Meta, b"n").expect("get");
                            let n = was
                                .as_deref()
                                .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                            let txn = Txn::new()
                                .when(Space::Meta, b"n", was.as_deref())
                                .put(Space::Meta, b"n", (n + 1).to_be_bytes().to_vec())
                                .put(Space::Audit, format!("{t}/{done}"), n.to_be_bytes().to_vec());
                            match kv.commit(txn).expect("commit") {
                                Committed::Applied => done += 1,
                                Committed::Conflict => conflicts += 1,
                            }
                        }
                        conflicts
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("worker")).sum()
        });
        let n = kv.get(Space::Meta, b"n").expect("get").expect("set");
        assert_eq!(u64::from_be_bytes(n.try_into().expect("8 bytes")), THREADS * EACH);
        // Each applied txn saw a distinct counter value.
        let mut seen: Vec<Vec<u8>> = kv
            .scan_prefix(Space::Audit, b"")
            .expect("scan")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len() as u64, THREADS * EACH, "no two increments from one value");
        tracing::debug!(conflicts, "concurrent committers");
    }

    /// The optimistic loop retries conflicts and gives up with Contended.
    pub fn optimistic_retries_then_gives_up(kv: &dyn Kv) {
        let mut tries = 0;
        let r = optimistic::<(), StoreError>(kv, "a test update", |kv| {
            tries += 1;
            // Someone else always wins between the read and the commit.
            let was = kv.get(Space::Meta, b"x")?;
            let next = was.clone().unwrap_or_default().len() + 1;
            let _ = kv.commit(Txn::new().put(Space::Meta, b"x", vec![0; next]))?;
            Ok(Attempt::Commit(
                Txn::new()
                    .when(Space::Meta, b"x", was.as_deref())
                    .put(Space::Meta, b"y", vec![1]),
                (),
            ))
        });
        let err = r.expect_err("always conflicting");
        assert_eq!(tries, MAX_TRIES);
        assert!(err.to_string().contains("a test update"), "{err}");
        assert_eq!(kv.get(Space::Meta, b"y").expect("get"), None);
        let got = optimistic::<u32, StoreError>(kv, "a test read", |_| Ok(Attempt::Done(7))).expect("done");
        assert_eq!(got, 7);
    }

    fn sled() -> (tempfile::TempDir, Arc<dyn Kv>) {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Arc::new(SledKv::open(dir.path()).expect("open"));
        (dir, kv)
    }

    #[test]
    fn sled_compare_and_commit() {
        let (_dir, kv) = sled();
        compare_and_commit(kv.as_ref());
    }

    #[test]
    fn sled_scans() {
        let (_dir, kv) = sled();
        scans(kv.as_ref());
    }

    #[test]
    fn sled_concurrent_committers() {
        let (_dir, kv) = sled();
        concurrent_committers(kv);
    }

    #[test]
    fn sled_optimistic_retries_then_gives_up() {
        let (_dir, kv) = sled();
        optimistic_retries_then_gives_up(kv.as_ref());
    }

    #[test]
    fn sled_values_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let kv = SledKv::open(dir.path()).expect("open");
            let txn = Txn::new().put(Space::Hosts, b"h", b"v".to_vec());
            assert_eq!(kv.commit(txn).expect("commit"), Committed::Applied);
            kv.flush_sync().expect("flush");
        }
        let kv = SledKv::open(dir.path()).expect("reopen");
        assert_eq!(kv.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"v"[..]));
    }

    /// What a snapshot write that failed on a full disk leaves: an empty
    /// `snap.<lsn>.generating`, newest by name.
    fn unfinished_snapshot(dir: &Path) -> std::path::PathBuf {
        let f = dir.join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&f, b"").expect("unfinished snapshot");
        f
    }

    fn store_with_a_value(dir: &Path) {
        let kv = SledKv::open(dir).expect("open");
        let txn = Txn::new().put(Space::Hosts, b"h", b"v".to_vec());
        assert_eq!(kv.commit(txn).expect("commit"), Committed::Applied);
        kv.flush_sync().expect("flush");
    }

    #[test]
    fn an_unfinished_snapshot_is_removed_and_the_store_opens_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        store_with_a_value(dir.path());
        let leftover = unfinished_snapshot(dir.path());
        // sled alone refuses the store as corrupt (the defect this works around).
        let raw = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).open();
        assert!(
            matches!(raw, Err(sled::Error::Corruption { .. })),
            "sled 0.34 reads the unfinished snapshot: {raw:?}"
        );
        let kv = SledKv::open(dir.path()).expect("opens once the leftover is removed");
        assert!(!leftover.exists());
        assert_eq!(kv.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_running_stores_snapshot_in_progress_is_not_touched() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = SledKv::open(dir.path()).expect("open");
        let in_progress = unfinished_snapshot(dir.path());
        assert_eq!(
            remove_unfinished_snapshots(dir.path()).expect("checked"),
            Vec::<std::path::PathBuf>::new()
        );
        assert!(in_progress.exists(), "the running store's file is left alone");
        let second = SledKv::open(dir.path()).err().expect("locked");
        assert!(matches!(second, StoreError::Locked { .. }), "{second}");
        assert!(in_progress.exists());
        drop(kv);
    }
}
