//! Chunks of artifacts read from disk once and shared by the downloads
//! that follow. A batch of hosts fetching one release asks for the same
//! chunks at about the same time: each is read once and every download
//! sends the same bytes (a reference, not a copy per host). The cache is
//! bounded: a chunk that would pass the budget makes room by dropping the
//! oldest ones (a download still sending one keeps its reference).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use prost::bytes::Bytes;

/// Which chunk: an artifact's digest and the chunk's offset in it.
type Key = (String, u64);

/// The cache; see the module's text.
pub struct ChunkCache {
    budget: usize,
    inner: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    chunks: HashMap<Key, Bytes>,
    /// Oldest first.
    order: VecDeque<Key>,
    bytes: usize,
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of chunks.
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            budget,
            inner: Mutex::new(Cached::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk of `sha256` at `offset`: the cached one, or what `read`
    /// gives (kept for the next download). Two downloads missing the same
    /// chunk at once may both read it; the page cache answers the second.
    pub fn get_or_read<E>(
        &self,
        sha256: &str,
        offset: u64,
        read: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        let key = (sha256.to_string(), offset);
        if let Some(hit) = self.lock().chunks.get(&key) {
            return Ok(hit.clone());
        }
        let data = read()?;
        if data.len() <= self.budget {
            let mut c = self.lock();
            if !c.chunks.contains_key(&key) {
                while c.bytes + data.len() > self.budget {
                    let Some(old) = c.order.pop_front() else { break };
                    if let Some(gone) = c.chunks.remove(&old) {
                        c.bytes -= gone.len();
                    }
                }
                c.bytes += data.len();
                c.order.push_back(key.clone());
                c.chunks.insert(key, data.clone());
            }
        }
        Ok(data)
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn chunk(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn a_chunk_is_read_once_and_shared() {
        let cache = ChunkCache::new(1000);
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok::<_, ()>(chunk(100))
        };
        let a = cache.get_or_read("d1", 0, read).expect("read");
        let b = cache.get_or_read("d1", 0, read).expect("read");
        assert_eq!(reads.get(), 1);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
        cache.get_or_read("d1", 100, read).expect("read");
        cache.get_or_read("d2", 0, read).expect("read");
        assert_eq!(reads.get(), 3, "another offset or artifact is another chunk");
    }

    #[test]
    fn the_budget_holds_and_the_oldest_go_first() {
        let cache = ChunkCache::new(250);
        for offset in [0, 100, 200] {
            cache
                .get_or_read("d", offset, || Ok::<_, ()>(chunk(100)))
                .expect("read");
            assert!(cache.held() <= 250, "{}", cache.held());
        }
        assert_eq!(cache.held(), 200);
        let read_again = Cell::new(false);
        cache
            .get_or_read("d", 0, || {
                read_again.set(true);
                Ok::<_, ()>(chunk(100))
            })
            .expect("read");
        assert!(read_again.get(), "offset 0 was the oldest, so it went");
        cache
            .get_or_read("d", 200, || -> Result<Bytes, ()> { panic!("200 is still held") })
            .expect("read");
    }

    #[test]
    fn a_failed_read_is_not_kept_and_a_chunk_over_budget_is_not_held() {
        let cache = ChunkCache::new(50);
        assert_eq!(cache.get_or_read("d", 0, || Err::<Bytes, _>("disk")), Err("disk"));
        assert_eq!(
            cache
                .get_or_read("d", 0, || Ok::<_, ()>(chunk(60)))
                .expect("read")
                .len(),
            60
        );
        assert_eq!(cache.held(), 0);
    }
}
