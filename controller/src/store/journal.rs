//! Append-only logs in the store, capped at a number of entries: the audit
//! trail (space `audit`) and the fleet's event log (space `events`).
//!
//! Key: big-endian ms timestamp (8 bytes) + big-endian sequence number (8
//! bytes), so a range scan from a time is the log from that time, oldest
//! first. The sequence number goes on from the last entry's after a
//! restart, so it also tells entries of one millisecond apart, and a reader
//! that saw entry N can ask for what came after it. Entries are durable at
//! the store's next flush; appending never waits for the disk.
//!
//! Past `max_entries` the oldest go, in steps of 1 % of the cap rather
//! than at every append.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::kv::{Kv, Order, Space, Txn};
use super::StoreError;

/// What a journal holds: how one entry is stored and read back.
pub trait Entry: Sized {
    /// The space it lives in.
    const SPACE: Space;
    /// When it happened (ms): the first half of its key.
    fn at_ms(&self) -> i64;
    /// Its stored bytes.
    fn encode(&self) -> Vec<u8>;
    /// Reads it back (`key` for error messages).
    fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError>;
}

fn key(at_ms: i64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&u64::try_from(at_ms).unwrap_or(0).to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = k.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// A capped, append-only log of `E`s.
pub struct Journal<E> {
    kv: Arc<dyn Kv>,
    /// The next sequence number.
    seq: AtomicU64,
    /// The most entries kept.
    max_entries: usize,
    /// Entries now (counted at open, then kept).
    count: AtomicUsize,
    /// One trim at a time: two would each remove the excess.
    trimming: Mutex<()>,
    _entries: PhantomData<fn() -> E>,
}

impl<E: Entry> Journal<E> {
    /// Opens the log: sequence numbers go on from the last entry; counts
    /// the entries (one read of every key) and trims them to `max_entries`.
    pub fn open(kv: Arc<dyn Kv>, max_entries: usize) -> Result<Journal<E>, StoreError> {
        let last = kv.scan_from(E::SPACE, b"", 1, Order::Descending)?;
        let next = last
            .first()
            .and_then(|(k, _)| seq_of(k))
            .map_or(0, |s| s.wrapping_add(1));
        let count = kv.count(E::SPACE)?;
        let j = Journal {
            kv,
            seq: AtomicU64::new(next),
            max_entries,
            count: AtomicUsize::new(count),
            trimming: Mutex::new(()),
            _entries: PhantomData,
        };
        j.trim(0)?;
        Ok(j)
    }

    /// Takes the next sequence number (for an entry that carries its own).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends `e` under sequence number `seq` (from [`Journal::next_seq`]);
    /// past the cap, the oldest entries go.
    pub fn put(&self, seq: u64, e: &E) -> Result<(), StoreError> {
        let _ = self
            .kv
            .commit(Txn::new().put(E::SPACE, key(e.at_ms(), seq), e.encode()))?;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.trim(self.max_entries / 100)
    }

    /// Appends `e` under the next sequence number; returns it.
    pub fn append(&self, e: &E) -> Result<u64, StoreError> {
        let seq = self.next_seq();
        self.put(seq, e)?;
        Ok(seq)
    }

    /// Removes the oldest entries when there are more than the cap plus `slack`.
    fn trim(&self, slack: usize) -> Result<(), StoreError> {
        if self.count.load(Ordering::Relaxed) <= self.max_entries + slack {
            return Ok(());
        }
        // A poisoned lock guards no data: go on.
        let _one = self.trimming.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.count.load(Ordering::Relaxed);
        if n <= self.max_entries + slack {
            return Ok(());
        }
        let oldest = self
            .kv
            .scan_from(E::SPACE, b"", n - self.max_entries, Order::Ascending)?;
        let mut txn = Txn::new();
        for (k, _) in &oldest {
            txn = txn.delete(E::SPACE, k);
        }
        let _ = self.kv.commit(txn)?;
        self.count.fetch_sub(oldest.len().min(n), Ordering::Relaxed);
        tracing::info!(
            space = E::SPACE.name(),
            removed = oldest.len(),
            kept = self.max_entries,
            "log trimmed to its max_entries"
        );
        Ok(())
    }

    /// Entries at or after `since_ms` with a sequence number above
    /// `after_seq` (None: any) that `keep` accepts, oldest first, with
    /// their sequence numbers; the newest `limit` of them when there are
    /// more. Reads every entry from `since_ms` on when `keep` is selective
    /// (the log is capped).
    pub fn since(
        &self,
        since_ms: i64,
        after_seq: Option<u64>,
        limit: usize,
        keep: impl Fn(&E) -> bool,
    ) -> Result<Vec<(u64, E)>, StoreError> {
        self.scan(since_ms, after_seq, limit, Take::Newest, keep)
    }

    /// Like [`Journal::since`], but the oldest `limit` of them: a page of
    /// a reader that goes through the log in order.
    pub fn first(
        &self,
        since_ms: i64,
        after_seq: Option<u64>,
        limit: usize,
        keep: impl Fn(&E) -> bool,
    ) -> Result<Vec<(u64, E)>, StoreError> {
        self.scan(since_ms, after_seq, limit, Take::Oldest, keep)
    }

    fn scan(
        &self,
        since_ms: i64,
        after_seq: Option<u64>,
        limit: usize,
        take: Take,
        keep: impl Fn(&E) -> bool,
    ) -> Result<Vec<(u64, E)>, StoreError> {
        const PAGE: usize = 1024;
        let mut out = std::collections::VecDeque::with_capacity(limit.min(PAGE));
        let mut from = key(since_ms, 0).to_vec();
        loop {
            let page = self.kv.scan_from(E::SPACE, &from, PAGE, Order::Ascending)?;
            for (k, v) in &page {
                let Some(seq) = seq_of(k) else { continue };
                if after_seq.is_some_and(|after| seq <= after) {
                    continue;
                }
                let e = E::decode(k, v)?;
                if keep(&e) {
                    if out.len() == limit {
                        match take {
                            Take::Oldest => return Ok(out.into()),
                            Take::Newest => out.pop_front(),
                        };
                    }
                    out.push_back((seq, e));
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

/// Which entries a bounded scan keeps.
#[derive(Clone, Copy)]
enum Take {
    Oldest,
    Newest,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    #[derive(Debug, Clone, PartialEq)]
    struct Note(i64, String);

    impl Entry for Note {
        const SPACE: Space = Space::Events;
        fn at_ms(&self) -> i64 {
            self.0
        }
        fn encode(&self) -> Vec<u8> {
            codec::text(1, &format!("{}|{}", self.0, self.1))
        }
        fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
            let s = codec::from_text("events", key, bytes, 1)?;
            let (at, text) = s.split_once('|').expect("two parts");
            Ok(Note(at.parse().expect("a number"), text.into()))
        }
    }

    fn kv() -> (tempfile::TempDir, Arc<dyn Kv>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = crate::store::kv::SledKv::open(dir.path()).expect("open");
        (dir, Arc::new(kv))
    }

    #[test]
    fn sequence_numbers_go_on_after_a_reopen_and_after_seq_skips_what_was_seen() {
        let (_dir, kv) = kv();
        let j: Journal<Note> = Journal::open(kv.clone(), 1000).expect("open");
        assert_eq!(j.append(&Note(10, "a".into())).expect("append"), 0);
        assert_eq!(j.append(&Note(10, "b".into())).expect("append"), 1);
        drop(j);
        let j: Journal<Note> = Journal::open(kv, 1000).expect("reopen");
        assert_eq!(j.append(&Note(20, "c".into())).expect("append"), 2);
        let all = j.since(0, None, 100, |_| true).expect("since");
        let texts: Vec<_> = all.iter().map(|(s, n)| (*s, n.1.as_str())).collect();
        assert_eq!(texts, [(0, "a"), (1, "b"), (2, "c")]);
        let after = j.since(10, Some(0), 100, |_| true).expect("after");
        assert_eq!(after.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        let from_time = j.since(11, None, 100, |_| true).expect("from time");
        assert_eq!(from_time.len(), 1);
        let newest = j.since(0, None, 2, |n| n.1 != "c").expect("limit");
        assert_eq!(newest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1]);
        let newest = j.since(0, None, 2, |_| true).expect("limit");
        assert_eq!(newest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        let oldest = j.first(0, None, 2, |_| true).expect("first");
        assert_eq!(oldest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn the_oldest_go_past_the_cap() {
        let (_dir, kv) = kv();
        let j: Journal<Note> = Journal::open(kv.clone(), 200).expect("open");
        for i in 0..260 {
            j.append(&Note(i, format!("{i}"))).expect("append");
        }
        // Trimmed in steps: never more than the cap plus 1 %.
        let n = kv.count(Space::Events).expect("count");
        assert!((200..=202).contains(&n), "{n} entries");
        let first = j.since(0, None, 1000, |_| true).expect("since");
        assert_eq!(first.last().map(|(s, _)| *s), Some(259));
        assert!(first[0].0 >= 58, "the oldest went first: {}", first[0].0);
        // Reopening with a smaller cap trims at once.
        let j: Journal<Note> = Journal::open(kv.clone(), 50).expect("reopen");
        assert_eq!(kv.count(Space::Events).expect("count"), 50);
        assert_eq!(j.append(&Note(1000, "x".into())).expect("append"), 260);
    }
}
