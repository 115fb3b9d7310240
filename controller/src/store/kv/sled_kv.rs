//! The sled backend of [`Kv`]: one tree per [`Space`]. With the flusher's
//! call of [`Kv::flush_sync`], the only code that touches sled.

use std::path::Path;

use sled::transaction::{TransactionError, Transactional};

use super::{Committed, Entry, Kv, Op, Order, Space, Txn};
use crate::store::StoreError;

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::kv::contract::{
        compare_and_commit, concurrent_committers, optimistic_retries_then_gives_up, scans,
    };

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
