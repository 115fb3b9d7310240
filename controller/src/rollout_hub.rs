//! The live state of rollouts that [`crate::fleet::Fleet`] holds: the
//! durable records, each rollout's event channel, each running engine's
//! control, and the converger's signal queue. It sits below `fleet` (and
//! depends on nothing above `store`), so `fleet` does not import the
//! engine, and `rollouts` (engine, converger, service) depends on `fleet`
//! only downward. Every rollout event but host phases also goes to the
//! fleet's event log (`events`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleet_proto::{Event, EventKind, Host, Rollout};
use tokio::sync::{broadcast, mpsc, watch};

use crate::events::EventLog;
use crate::store::rollouts::RolloutStore;
use crate::store::{Store, StoreError};

/// What the operator asked the rollout to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Run,
    /// Stop before the next batch.
    Pause,
    /// End once the hosts in flight finish; `rollback` moves changed hosts back.
    Abort {
        /// Move the hosts it changed back where they were.
        rollback: bool,
    },
}

/// Where a convergence sweep is asked for.
#[derive(Debug, Clone)]
pub enum Signal {
    /// A host's stream opened (it reconnected, or it is new).
    HostConnected(String),
    /// An app's rollout ended, so hosts that waited for it can converge.
    AppFree(String),
}

/// The persisted rollouts, the desired releases, and the live parts: event
/// channels and each running engine's control.
pub struct Rollouts {
    /// The durable records.
    pub records: RolloutStore,
    events: Mutex<HashMap<String, broadcast::Sender<Event>>>,
    /// Each running engine's control, by rollout id.
    pub(crate) controls: Mutex<HashMap<String, watch::Sender<Control>>>,
    /// Serialises "is a rollout of this app active? then store mine".
    pub(crate) starting: tokio::sync::Mutex<()>,
    signals: mpsc::Sender<Signal>,
    /// The converger's end of the queue, taken once when it starts.
    pub(crate) signals_rx: Mutex<Option<mpsc::Receiver<Signal>>>,
    /// The fleet's event log, which gets every event but host phases.
    log: Arc<EventLog>,
}

/// Locks a mutex of this module's maps.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Short critical sections of plain inserts and removes: a poisoned lock
    // still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rollouts {
    /// Opens the records (migrating those of earlier releases).
    pub fn open(store: &Store, hosts: &[Host], log: Arc<EventLog>) -> Result<Rollouts, StoreError> {
        let (signals, rx) = mpsc::channel(1024);
        Ok(Rollouts {
            records: RolloutStore::open(store, hosts)?,
            events: Mutex::new(HashMap::new()),
            controls: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            signals,
            signals_rx: Mutex::new(Some(rx)),
            log,
        })
    }

    /// The event channel of rollout `id` (made on first use).
    pub(crate) fn events(&self, id: &str) -> broadcast::Sender<Event> {
        lock(&self.events)
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(512).0)
            .clone()
    }

    /// Sends an event of `r` to whoever watches it.
    pub(crate) fn emit(&self, r: &Rollout, kind: EventKind, host_id: &str, detail: String) {
        let hostname = r
            .batches
            .iter()
            .flat_map(|b| &b.hosts)
            .find(|h| h.host_id == host_id)
            .map(|h| h.hostname.clone())
            .unwrap_or_default();
        let mut e = Event {
            at_ms: fleet_proto::now_ms(),
            rollout_id: r.id.clone(),
            host_id: host_id.to_string(),
            hostname,
            detail,
            rollout: Some(r.clone()),
            ..Default::default()
        };
        e.set_kind(kind);
        if let Some(fe) = crate::events::of_rollout(r, kind, host_id, &e.hostname, &e.detail) {
            self.log.publish(fe);
        }
        // Nobody watching is fine.
        let _ = self.events(&r.id).send(e);
    }

    /// Asks the converger for a sweep (dropped when its queue is full: a
    /// sweep already queued covers it).
    pub fn signal(&self, s: Signal) {
        let _ = self.signals.try_send(s);
    }

    /// Hands a control to a running engine.
    pub(crate) fn control(&self, id: &str, c: Control) -> bool {
        match lock(&self.controls).get(id) {
            Some(tx) => {
                tx.send_replace(c);
                true
            }
            None => false,
        }
    }
}
