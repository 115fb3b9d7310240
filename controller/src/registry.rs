//! The live side of the fleet: which hosts have a stream open right now,
//! their latest heartbeat, and the handle to cut or feed each stream.
//!
//! Durable facts (labels, enrollment, certificates) live in the store; this
//! holds only what a restart may forget, so heartbeats never touch the disk.
//!
//! The outbound half of a stream is tonic's (`Result<ControllerMessage,
//! Status>`); why a stream was cut is an [`Error`], turned into the status
//! the agent sees by `stream` when it ends the stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_proto::{ControllerMessage, HostMetrics};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::Error;
use crate::metrics::Metrics;

/// What the controller knows live about one connected host.
#[derive(Debug, Clone)]
pub struct Live {
    /// Peer address of the stream.
    pub remote: SocketAddr,
    /// Last message received (ms).
    pub last_seen_ms: i64,
    /// Latest heartbeat metrics.
    pub metrics: Option<HostMetrics>,
}

struct Session {
    id: u64,
    live: Live,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<Error>>>,
    tx: Outbound,
}

/// The sending half of a host's stream (what `stream` hands to tonic).
/// Messages queue boxed: tokio allocates a channel's slots 32 at a time and
/// keeps the first block, so 464-byte slots were 15 KiB of memory for every
/// connected host, boxed ones 256 bytes (see `stream::OutboundStream`).
pub type Outbound = mpsc::Sender<Result<Box<ControllerMessage>, Status>>;

/// A registered stream, held by its session task.
pub struct SessionHandle {
    /// Distinguishes this stream from a later one of the same host.
    pub id: u64,
    /// Cancelled when the stream must end.
    pub cancel: CancellationToken,
    reason: Arc<Mutex<Option<Error>>>,
}

impl SessionHandle {
    /// Why the stream was cut (what to end it with), once cancelled; taken,
    /// so asked once. No reason means the controller is shutting down.
    pub fn take_reason(&self) -> Error {
        lock(&self.reason).take().unwrap_or(Error::ShuttingDown)
    }
}

/// Live sessions by host id. The only way in is through its methods.
pub struct Registry {
    sessions: Mutex<HashMap<String, Session>>,
    /// Bumped whenever a stream opens or ends, for waiters (rollout engines).
    changes: tokio::sync::watch::Sender<u64>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short critical sections leaves consistent
    // data (plain inserts/removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// An empty registry reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::Sender::new(0),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    /// Registers a new stream for `host_id`, cutting an older one of the same host.
    pub fn register(
        &self,
        host_id: &str,
        remote: SocketAddr,
        parent: &CancellationToken,
        tx: Outbound,
        now: i64,
    ) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = parent.child_token();
        let reason = Arc::new(Mutex::new(None));
        let session = Session {
            id,
            live: Live {
                remote,
                last_seen_ms: now,
                metrics: None,
            },
            cancel: cancel.clone(),
            reason: reason.clone(),
            tx,
        };
        let old = lock(&self.sessions).insert(host_id.to_string(), session);
        self.changed();
        match old {
            Some(old) => cut_session(&old, Error::Replaced),
            None => {
                self.metrics.agents_connected.inc();
            }
        };
        SessionHandle { id, cancel, reason }
    }

    /// The hosts with a stream open now.
    pub fn hosts(&self) -> Vec<String> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// Forgets a stream that ended (unless a newer one replaced it already).
    pub fn unregister(&self, host_id: &str, session_id: u64) -> Option<Live> {
        let mut sessions = lock(&self.sessions);
        if sessions.get(host_id).map(|s| s.id) == Some(session_id) {
            self.metrics.agents_connected.dec();
            let live = sessions.remove(host_id).map(|s| s.live);
            self.changed();
            return live;
        }
        None
    }

    /// Records that a message arrived, with metrics when it was a heartbeat.
    pub fn seen(&self, host_id: &str, session_id: u64, now: i64, metrics: Option<HostMetrics>) {
        if let Some(s) = lock(&self.sessions).get_mut(host_id).filter(|s| s.id == session_id) {
            s.live.last_seen_ms = now;
            if metrics.is_some() {
                s.live.metrics = metrics;
            }
        }
    }

    /// Ends a host's live stream for `reason`; true when one was open.
    pub fn cut(&self, host_id: &str, reason: Error) -> bool {
        let removed = lock(&self.sessions).remove(host_id);
        match removed {
            Some(s) => {
                self.metrics.agents_connected.dec();
                cut_session(&s, reason);
                self.changed();
                true
            }
            None => false,
        }
    }

    /// The live state of a host, when connected.
    pub fn live(&self, host_id: &str) -> Option<Live> {
        lock(&self.sessions).get(host_id).map(|s| s.live.clone())
    }

    /// A sender onto a connected host's stream.
    pub fn sender(&self, host_id: &str) -> Option<Outbound> {
        lock(&self.sessions).get(host_id).map(|s| s.tx.clone())
    }

    /// A receiver that sees a change whenever a stream opens or ends.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How many streams are open.
    pub fn connected(&self) -> usize {
        lock(&self.sessions).len()
    }
}

fn cut_session(s: &Session, reason: Error) {
    *lock(&s.reason) = Some(reason);
    s.cancel.cancel();
}
