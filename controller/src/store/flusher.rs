//! The store's one path to durability: a single flusher thread doing group
//! commit, and the store's health as the flushes show it.
//!
//! sled 0.34's `flush_async` deadlocks when called concurrently
//! (spacejam/sled#1308; issue 11 froze the controller with it), so nothing
//! calls it. Every `Store::flush` becomes a request on a bounded queue; the
//! flusher takes every request queued so far, runs ONE synchronous
//! [`Kv::flush_sync`] (sled: `Db::flush`, write the IO buffers and fsync)
//! off the async runtime, and answers all of them with its result. A request that arrives while a flush
//! runs waits for the next one, so:
//!
//! Invariant (group commit): a caller's `flush` returns Ok only after a
//! `Kv::flush_sync` that started after its request was queued has succeeded, so
//! every write it made before asking is durable.
//!
//! The flusher knows the backend only as a [`Kv`]: the thread holds an
//! `Arc<dyn Kv>`, so the backend (sled's database and its lock) lives until
//! the thread has ended.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::kv::Kv;
use super::StoreError;

/// Flush requests that may wait for the flusher; a caller beyond them waits
/// for room (backpressure instead of an unbounded queue).
const QUEUE: usize = 4096;

/// A flush that has run longer than this makes the store unhealthy: the
/// disk is not answering.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// Where the flusher sends one request's result: `Err` holds sled's error text.
type Reply = oneshot::Sender<Result<(), String>>;

/// What the flushes say about the store, for `/healthz`, `/metrics` and the
/// watchdog.
#[derive(Debug)]
pub struct Health {
    dir: PathBuf,
    /// A backend across the network: its name (see `Kv::remote`).
    remote: Option<String>,
    state: Mutex<HealthState>,
    flushes: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug, Default)]
struct HealthState {
    /// The error of the last flush, until a flush succeeds.
    failing: Option<String>,
    /// When the flush under way started.
    flushing_since: Option<Instant>,
}

/// Counters of the flusher, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushCounts {
    /// `Kv::flush_sync` (sled: `Db::flush`) calls made.
    pub flushes: u64,
    /// `Store::flush` requests answered (many share one flush).
    pub requests: u64,
    /// Flushes that failed.
    pub failures: u64,
}

impl Health {
    fn new(dir: &Path, remote: Option<String>) -> Health {
        Health {
            dir: dir.to_path_buf(),
            remote,
            state: Mutex::new(HealthState::default()),
            flushes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // A poisoned lock only means a panic elsewhere; the fields stay valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the store cannot take durable writes now, or None when it can:
    /// the last flush failed, or the one under way is stuck.
    pub fn problem(&self) -> Option<String> {
        let s = self.state();
        if let Some(detail) = &s.failing {
            return Some(self.flush_error(detail.clone()).to_string());
        }
        match s.flushing_since {
            Some(t) if t.elapsed() > STUCK_AFTER => Some(format!(
                "a flush of the store in {} has been running for {}s: the disk is not answering; \
                 check the filesystem (dmesg) and the volume",
                self.dir.display(),
                t.elapsed().as_secs()
            )),
            _ => None,
        }
    }

    /// Records a write the store refused (sled fails writes, not only
    /// flushes, once an I/O error hit it): unhealthy until a flush succeeds.
    pub fn record_write_error(&self, detail: String) {
        let mut s = self.state();
        if s.failing.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %detail, "store write failed");
        }
        s.failing = Some(detail);
    }

    /// The flusher's counters.
    pub fn counts(&self) -> FlushCounts {
        FlushCounts {
            flushes: self.flushes.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    fn flush_error(&self, detail: String) -> StoreError {
        if let Some(name) = &self.remote {
            // The backend's error says what happened and what to do.
            return StoreError::Etcd {
                name: name.clone(),
                detail,
            };
        }
        StoreError::Flush {
            dir: self.dir.display().to_string(),
            detail,
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            dir: self.dir.display().to_string(),
        }
    }
}

/// The handle the store holds: the request queue and the flusher thread.
/// Dropping the last one closes the queue and waits for the thread, so a
/// store reopened in the same process finds sled's lock released.
pub(super) struct Flusher {
    requests: Option<mpsc::Sender<Reply>>,
    thread: Option<JoinHandle<()>>,
    health: Arc<Health>,
}

impl Flusher {
    /// Starts the flusher thread of `kv`, whose files are in `dir`.
    pub(super) fn start(kv: Arc<dyn Kv>, dir: &Path) -> Result<Flusher, StoreError> {
        let health = Arc::new(Health::new(dir, kv.remote()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn({
                let health = health.clone();
                move || run(kv, rx, &health)
            })
            .map_err(|e| StoreError::Thread {
                dir: dir.display().to_string(),
                detail: e.to_string(),
            })?;
        Ok(Flusher {
            requests: Some(tx),
            thread: Some(thread),
            health,
        })
    }

    pub(super) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Waits until a flush that started after this call has succeeded.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(|| self.health.closed())?;
        requests.send(reply).await.map_err(|_| self.health.closed())?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(self.health.flush_error(detail)),
            Err(_) => Err(self.health.closed()),
        }
    }

    /// [`Flusher::flush`] for callers outside an async runtime (`init`).
    /// Panics when called on a runtime thread.
    pub(super) fn flush_blocking(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(|| self.health.closed())?;
        requests.blocking_send(reply).map_err(|_| self.health.closed())?;
        match answer.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(self.health.flush_error(detail)),
            Err(_) => Err(self.health.closed()),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the requests already queued.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(dir = %self.health.dir.display(), "the store's flusher thread panicked");
            }
        }
    }
}

/// The flusher thread: one `Kv::flush_sync` per batch of queued requests.
fn run(kv: Arc<dyn Kv>, mut rx: mpsc::Receiver<Reply>, health: &Health) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // Invariant (group commit): every request in `batch` was queued before
        // this flush starts, so its writes are covered by it.
        let started = Instant::now();
        health.state().flushing_since = Some(started);
        let result = kv.flush_sync();
        let took = started.elapsed();
        {
            let mut s = health.state();
            s.flushing_since = None;
            match &result {
                Ok(()) => {
                    if let Some(was) = s.failing.take() {
                        tracing::info!(dir = %health.dir.display(), previous_error = %was, "store flushes succeed again");
                    }
                }
                Err(e) => {
                    health.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(dir = %health.dir.display(), error = %e, waiters = batch.len(), "store flush failed");
                    s.failing = Some(e.clone());
                }
            }
        }
        health.flushes.fetch_add(1, Ordering::Relaxed);
        health.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::trace!(
            waiters = batch.len(),
            took_ms = took.as_millis() as u64,
            "store flushed"
        );
        for reply in batch.drain(..) {
            // A caller that gave up (its RPC was cancelled) no longer listens.
            let _ = reply.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kv::{Committed, SledKv, Space, Txn};
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_share_flushes_and_all_complete() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv: Arc<dyn Kv> = Arc::new(SledKv::open(dir.path()).expect("open"));
        let flusher = Arc::new(Flusher::start(kv.clone(), dir.path()).expect("flusher"));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..256u32 {
            let (kv, flusher) = (kv.clone(), flusher.clone());
            tasks.spawn(async move {
                let put = Txn::new().put(Space::Audit, i.to_be_bytes(), vec![1u8; 64]);
                assert_eq!(kv.commit(put).expect("put"), Committed::Applied);
                flusher.flush().await
            });
        }
        let done = tokio::time::timeout(Duration::from_secs(30), tasks.join_all())
            .await
            .expect("256 concurrent flushes finish (no deadlock)");
        assert!(done.iter().all(Result::is_ok), "{done:?}");
        let counts = flusher.health().counts();
        assert_eq!(counts.requests, 256);
        assert!(counts.flushes <= 256 && counts.flushes >= 1, "{counts:?}");
        assert_eq!(flusher.health().problem(), None);
    }

    #[test]
    fn a_failed_flush_names_the_dir_and_the_fix_until_one_succeeds() {
        let health = Health::new(Path::new("/var/lib/fleet-controller/store"), None);
        health.state().failing = Some("No space left on device (os error 28)".into());
        let problem = health.problem().expect("unhealthy");
        assert!(problem.contains("/var/lib/fleet-controller/store"), "{problem}");
        assert!(problem.contains("free space"), "{problem}");
        health.state().failing = None;
        health.state().flushing_since = Some(Instant::now() - STUCK_AFTER - Duration::from_secs(1));
        let problem = health.problem().expect("stuck");
        assert!(problem.contains("not answering"), "{problem}");
        health.state().flushing_since = Some(Instant::now());
        assert_eq!(health.problem(), None);
    }
}
