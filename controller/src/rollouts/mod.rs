//! Rollouts: an app's hosts moved to a release in batches, health-gated,
//! as a state machine persisted before it is acted on, and the desired
//! release of every (app, host) that follows from them.
//!
//! - [`plan`]: which hosts, batches, from → to (pure).
//! - [`step`]: what the engine does next, and how a change or a report
//!   updates the record (pure; table- and property-tested).
//! - [`engine`]: one task per active rollout: reads the world, asks `step`,
//!   persists, sends, waits, emits.
//! - [`converge`]: one task that turns hosts running something other than
//!   their desired release into convergence runs through the same engine.
//! - `crate::store::rollouts`: the records (rollouts, desired per host,
//!   release for new hosts), inside the store like every sled access.
//! - [`api`]: `RolloutService`; its refusals are `crate::error::Error`s
//!   (`Busy`, `NoHosts`, `UnknownRollout`, ...) like every service's.

pub mod api;
pub mod converge;
pub mod engine;
pub mod plan;
pub mod step;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleet_proto::{Event, EventKind, Host, Rollout};
use tokio::sync::{broadcast, mpsc, watch};

pub use crate::store::rollouts::RolloutStore;
pub use api::RolloutsService;

use crate::fleet::Fleet;
use crate::store::{Store, StoreError};
use step::Control;

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
    controls: Mutex<HashMap<String, watch::Sender<Control>>>,
    /// Serialises "is a rollout of this app active? then store mine".
    starting: tokio::sync::Mutex<()>,
    signals: mpsc::Sender<Signal>,
    signals_rx: Mutex<Option<mpsc::Receiver<Signal>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Short critical sections of plain inserts and removes: a poisoned lock
    // still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rollouts {
    /// Opens the records (migrating those of earlier releases).
    pub fn open(store: &Store, hosts: &[Host]) -> Result<Rollouts, StoreError> {
        let (signals, rx) = mpsc::channel(1024);
        Ok(Rollouts {
            records: RolloutStore::open(store, hosts)?,
            events: Mutex::new(HashMap::new()),
            controls: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            signals,
            signals_rx: Mutex::new(Some(rx)),
        })
    }

    fn events(&self, id: &str) -> broadcast::Sender<Event> {
        lock(&self.events)
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(512).0)
            .clone()
    }

    fn emit(&self, r: &Rollout, kind: EventKind, host_id: &str, detail: String) {
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
        // Nobody watching is fine.
        let _ = self.events(&r.id).send(e);
    }

    /// Asks the converger for a sweep (dropped when its queue is full: a
    /// sweep already queued covers it).
    pub fn signal(&self, s: Signal) {
        let _ = self.signals.try_send(s);
    }

    /// Hands a control to a running engine.
    fn control(&self, id: &str, c: Control) -> bool {
        match lock(&self.controls).get(id) {
            Some(tx) => {
                tx.send_replace(c);
                true
            }
            None => false,
        }
    }
}

/// Starts the owned background work: an engine for every rollout a
/// previous controller left unfinished, and the converger.
pub fn start(fleet: &Arc<Fleet>) {
    match fleet.rollouts.records.all() {
        Ok(all) => {
            for r in all.into_iter().filter(|r| !r.state().ended()) {
                tracing::info!(rollout_id = %r.id, app = %r.app, state = r.state().word(), batch = r.current_batch, "resuming rollout");
                engine::spawn(fleet, r, engine::Start::Resumed);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read rollouts to resume"),
    }
    if let Some(rx) = lock(&fleet.rollouts.signals_rx).take() {
        let f = fleet.clone();
        fleet.tracker.spawn(converge::run(f, rx));
    }
}

/// Waits for every owned task (engines, the converger, forwarders) to
/// stop; they stop on the fleet's shutdown token.
pub async fn stopped(fleet: &Fleet) {
    fleet.tracker.close();
    fleet.tracker.wait().await;
}

/// A single-host deploy or rollback ended healthy on `version`: that
/// becomes the host's desired release (durably), and its inventory shows it.
pub async fn settled(fleet: &Fleet, host: &str, app: &str, version: &str) -> Result<(), StoreError> {
    fleet.rollouts.records.set_desired(app, host, version)?;
    crate::store::rollouts::note_current(&fleet.store, host, app, version)?;
    fleet.store.flush().await
}
