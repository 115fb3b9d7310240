//! The live state of rollouts that [`crate::fleet::Fleet`] holds: the
//! durable records, each rollout's event channel, each running engine's
//! control, and the converger's signal queue. It sits below `fleet` (and
//! depends on nothing above `store`), so `fleet` does not import the
//! engine, and `rollouts` (engine, converger, service) depends on `fleet`
//! only downward. Every rollout event but host phases also goes to the
//! fleet's event log (`events`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleet_proto::{Event, EventKind, Host, Rollout, RolloutHost};
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
    /// When each rollout's last host event carried the record.
    phase_records: Mutex<HashMap<String, std::time::Instant>>,
}

/// How often a host's event (a phase, an end) carries the whole rollout
/// record at most; every other event always does, and a host's event always
/// carries that host's entry. A record per host event made a watched
/// rollout quadratic in its hosts (tests/bench/sim-scale.sh: 40 s against
/// 5 s unwatched at 1,000 hosts with a record per phase; 120 s against 60 s
/// at 5,000 with one per end); four a second keep a watcher's bars current.
pub const PHASE_RECORD_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

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
            phase_records: Mutex::new(HashMap::new()),
        })
    }

    /// The event channel of rollout `id` (made on first use).
    pub(crate) fn events(&self, id: &str) -> broadcast::Sender<Event> {
        lock(&self.events)
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(512).0)
            .clone()
    }

    /// Sends an event of `r` to whoever watches it. `host` is `host_id`'s
    /// latest entry in `r` when the caller knows it (the engine does);
    /// otherwise it is looked up.
    pub(crate) fn emit(&self, r: &Rollout, kind: EventKind, host: Option<&RolloutHost>, host_id: &str, detail: String) {
        let found;
        let host = match host {
            Some(h) => Some(h),
            None if host_id.is_empty() => None,
            None => {
                found = r.batches.iter().flat_map(|b| &b.hosts).rfind(|h| h.host_id == host_id);
                found
            }
        };
        let hostname = host.map(|h| h.hostname.clone()).unwrap_or_default();
        if let Some(fe) = crate::events::of_rollout(r, kind, host_id, &hostname, &detail) {
            self.log.publish(fe);
        }
        let channel = self.events(&r.id);
        if channel.receiver_count() == 0 {
            return;
        }
        // A host's events carry its entry; the whole record goes with them
        // at most every PHASE_RECORD_EVERY, and with every other event.
        let of_host = matches!(kind, EventKind::HostPhase | EventKind::HostDone);
        let with_record = !of_host || {
            let mut last = lock(&self.phase_records);
            let now = std::time::Instant::now();
            let due = last
                .get(&r.id)
                .is_none_or(|at| now.duration_since(*at) >= PHASE_RECORD_EVERY);
            if due {
                last.insert(r.id.clone(), now);
            }
            due
        };
        let mut e = Event {
            at_ms: fleet_proto::now_ms(),
            rollout_id: r.id.clone(),
            host_id: host_id.to_string(),
            hostname,
            detail,
            rollout: with_record.then(|| r.clone()),
            host: host.filter(|_| of_host).cloned(),
            ..Default::default()
        };
        e.set_kind(kind);
        let _ = channel.send(e);
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_events_carry_their_host_and_the_record_at_most_four_times_a_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let log = Arc::new(EventLog::open(&store, 1000).expect("log"));
        let hub = Rollouts::open(&store, &[], log).expect("rollouts");
        let host = |id: &str, state| RolloutHost {
            host_id: id.into(),
            hostname: format!("name-{id}"),
            state: state as i32,
            ..Default::default()
        };
        let r = Rollout {
            id: "r-1".into(),
            batches: vec![
                fleet_proto::RolloutBatch {
                    hosts: vec![host("h1", fleet_proto::HostState::Failed)],
                    ..Default::default()
                },
                // A rollback batch: h1's latest entry.
                fleet_proto::RolloutBatch {
                    hosts: vec![host("h1", fleet_proto::HostState::Succeeded)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut rx = hub.events("r-1").subscribe();
        let mut got = |kind| {
            hub.emit(
                &r,
                kind,
                None,
                if kind == EventKind::BatchDone { "" } else { "h1" },
                String::new(),
            );
            rx.try_recv().expect("an event")
        };
        let first = got(EventKind::HostPhase);
        assert!(first.rollout.is_some(), "the first host event carries it");
        assert_eq!(first.hostname, "name-h1");
        assert_eq!(
            first.host.as_ref().map(|h| h.state()),
            Some(fleet_proto::HostState::Succeeded),
            "the host's latest entry"
        );
        let next = got(EventKind::HostPhase);
        assert!(
            next.rollout.is_none() && next.host.is_some(),
            "the next one within 250 ms only its host"
        );
        let done = got(EventKind::HostDone);
        assert!(done.rollout.is_none() && done.host.is_some(), "an end too");
        let batch = got(EventKind::BatchDone);
        assert!(
            batch.rollout.is_some() && batch.host.is_none(),
            "a batch's end always carries it"
        );
        std::thread::sleep(PHASE_RECORD_EVERY);
        assert!(got(EventKind::HostDone).rollout.is_some(), "250 ms later it does again");
    }
}
