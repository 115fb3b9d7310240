//! The fleet's event log: every rollout's course, each direct deploy's
//! end, hosts connecting, disconnecting, enrolling and being removed,
//! releases pushed and deleted, apps, join tokens and operators changed.
//! `EventService/WatchEvents` (`fleetctl events`) serves it; the webhooks
//! (`notify`) and the dashboard read the same events.
//!
//! [`EventLog::publish`] numbers an event, appends it to the store (a
//! capped [`Journal`] in space `events`, `[events] max_entries`) and hands
//! it to live watchers. It never waits for the disk: the log is a record of
//! what happened, and what happened is already durable where it matters
//! (rollout records, hosts, releases). Numbering, appending and handing out
//! happen under one lock, so watchers see sequence numbers in order.
//!
//! A watch sends the stored events first, then live ones; one that falls
//! behind the live channel reads what it missed back from the store, so a
//! slow reader loses nothing that is still kept. Host phases of rollouts
//! stay on `WatchRollout` (there are many; this log has their ends).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use fleet_proto::event_service_server::EventService;
use fleet_proto::{EventKind, FleetEvent, FleetEventKind, HostState, Rollout, RolloutState, WatchEventsRequest};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::store::codec;
use crate::store::journal::{Entry, Journal};
use crate::store::kv::Space;
use crate::store::{Store, StoreError};

const V1: u8 = 1;

/// The most stored events one read takes; a watch reads in pages of this.
const PAGE: usize = 1000;
/// Live events held for slow watchers before they must read the store.
const LIVE_BUFFER: usize = 4096;

impl Entry for FleetEvent {
    const SPACE: Space = Space::Events;

    fn at_ms(&self) -> i64 {
        self.at_ms
    }

    fn encode(&self) -> Vec<u8> {
        codec::proto(V1, self)
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let hex = fleet_proto::transport::hex(key);
        codec::from_proto(Self::SPACE.name(), hex.as_bytes(), bytes, V1)
    }
}

/// A new event of `kind`, now; the caller fills in what it is about.
pub fn event(kind: FleetEventKind) -> FleetEvent {
    let mut e = FleetEvent {
        at_ms: fleet_proto::now_ms(),
        who: "controller".into(),
        ..Default::default()
    };
    e.set_kind(kind);
    e
}

/// The fleet event a rollout event makes, if any: host phases make none
/// (they stay on the rollout's own watch), a pause after the canary batch
/// while approval is awaited is `CanaryWaiting`. Pure.
pub fn of_rollout(r: &Rollout, kind: EventKind, host_id: &str, hostname: &str, detail: &str) -> Option<FleetEvent> {
    let fleet_kind = match kind {
        EventKind::RolloutStarted => FleetEventKind::RolloutStarted,
        EventKind::BatchStarted => FleetEventKind::BatchStarted,
        EventKind::BatchDone => FleetEventKind::BatchDone,
        EventKind::HostDone => FleetEventKind::RolloutHostDone,
        EventKind::Paused if awaits_canary_approval(r) => FleetEventKind::CanaryWaiting,
        EventKind::Paused => FleetEventKind::RolloutPaused,
        EventKind::Resumed => FleetEventKind::RolloutResumed,
        EventKind::RollingBack => FleetEventKind::RollingBack,
        EventKind::RolloutEnded => FleetEventKind::RolloutEnded,
        EventKind::HostPhase | EventKind::Snapshot | EventKind::Unspecified => return None,
    };
    let mut e = event(fleet_kind);
    e.app = r.app.clone();
    e.version = r.version.clone();
    e.rollout_id = r.id.clone();
    e.rollout_kind = r.kind().word().to_string();
    e.host_id = host_id.to_string();
    e.hostname = hostname.to_string();
    e.detail = detail.to_string();
    e.who = if r.created_by.is_empty() {
        "controller".into()
    } else {
        r.created_by.clone()
    };
    e.outcome = match fleet_kind {
        FleetEventKind::RolloutEnded => r.state().word().to_string(),
        // A host whose agent moved back to what it ran says "reverted".
        FleetEventKind::RolloutHostDone => r
            .batches
            .iter()
            .flat_map(|b| &b.hosts)
            .find(|h| h.host_id == host_id)
            .map(|h| {
                if h.reverted && h.state() == HostState::Failed {
                    "reverted".to_string()
                } else {
                    h.state().word().to_string()
                }
            })
            .unwrap_or_default(),
        _ => String::new(),
    };
    Some(e)
}

/// Whether a paused rollout waits for the canary batch to be approved.
fn awaits_canary_approval(r: &Rollout) -> bool {
    let b = r.current_batch as usize;
    r.state() == RolloutState::Paused
        && !r.canary_approved
        && r.params.as_ref().is_some_and(|p| p.canary_approve)
        && b > 0
        && r.batches.get(b - 1).is_some_and(|prev| prev.canary)
}

/// Which events a watcher (or a webhook) wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this app's (empty: any).
    pub app: String,
    /// Only these kinds (empty: any).
    pub kinds: Vec<FleetEventKind>,
}

impl Filter {
    /// Whether `e` is wanted.
    pub fn keeps(&self, e: &FleetEvent) -> bool {
        (self.app.is_empty() || e.app == self.app) && (self.kinds.is_empty() || self.kinds.contains(&e.kind()))
    }
}

/// The event log: stored, and handed to live watchers.
pub struct EventLog {
    journal: Journal<FleetEvent>,
    live: broadcast::Sender<FleetEvent>,
    /// Numbering, storing and handing out, in one order.
    order: Mutex<()>,
}

impl EventLog {
    /// Opens the log in `store`, keeping at most `max_entries`.
    pub fn open(store: &Store, max_entries: usize) -> Result<EventLog, StoreError> {
        Ok(EventLog {
            journal: Journal::open(store.kv().clone(), max_entries)?,
            live: broadcast::channel(LIVE_BUFFER).0,
            order: Mutex::new(()),
        })
    }

    /// Records `e` (numbered here) and hands it to live watchers. A store
    /// failure is logged; live watchers still get the event.
    pub fn publish(&self, mut e: FleetEvent) {
        let _one = self.order.lock().unwrap_or_else(|p| p.into_inner());
        e.seq = self.journal.next_seq();
        if let Err(err) = self.journal.put(e.seq, &e) {
            tracing::error!(error = %err, kind = e.kind().word(), "event not stored");
        }
        // Nobody watching is fine.
        let _ = self.live.send(e);
    }

    /// Publishes an event of `kind` that `who` caused (an operator's name,
    /// or "controller"); `about` fills in what it is about.
    pub fn note(&self, kind: FleetEventKind, who: &str, about: impl FnOnce(&mut FleetEvent)) {
        let mut e = event(kind);
        e.who = who.to_string();
        about(&mut e);
        self.publish(e);
    }

    /// The newest `limit` stored events, oldest first.
    pub fn newest(&self, limit: usize) -> Result<Vec<FleetEvent>, StoreError> {
        let found = self.journal.since(0, None, limit, |_| true)?;
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FleetEvent> {
        self.live.subscribe()
    }

    /// Stored events at or after `since_ms`, above `after_seq`, that
    /// `filter` keeps: the oldest [`PAGE`] of them.
    pub fn page(&self, since_ms: i64, after_seq: Option<u64>, filter: &Filter) -> Result<Vec<FleetEvent>, StoreError> {
        let found = self.journal.first(since_ms, after_seq, PAGE, |e| filter.keeps(e))?;
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }
}

/// What a watch asks for.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Which events.
    pub filter: Filter,
    /// From this time (ms).
    pub since_ms: i64,
    /// Only above this sequence number.
    pub after_seq: Option<u64>,
    /// Keep going with live events.
    pub follow: bool,
}

/// Sends `w`'s events into `tx`: stored ones, then (following) live ones,
/// until the receiver goes, the controller stops, or `keep_going` fails.
pub async fn run_watch<E: Send + 'static>(
    log: Arc<EventLog>,
    w: Watch,
    tx: mpsc::Sender<Result<FleetEvent, E>>,
    shutdown: CancellationToken,
) {
    // Subscribed before the stored events are read, so nothing falls
    // between the two; what both hold is dropped by its number.
    let mut live = log.subscribe();
    let mut last = w.after_seq;
    let mut from = w.since_ms;
    // Stored events (and, after a lag, the ones missed).
    loop {
        let l = log.clone();
        let filter = w.filter.clone();
        let (f, a) = (from, last);
        let page = match tokio::task::spawn_blocking(move || l.page(f, a, &filter)).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the event log");
                return;
            }
            Err(_) => return,
        };
        let full = page.len() == PAGE;
        for e in page {
            last = Some(e.seq);
            from = e.at_ms;
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        if !w.follow {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                e = live.recv() => e,
            };
            match next {
                Ok(e) => {
                    if last.is_some_and(|l| e.seq <= l) || e.at_ms < w.since_ms || !w.filter.keeps(&e) {
                        continue;
                    }
                    last = Some(e.seq);
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                // Fell behind: read the missed ones from the store.
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// `EventService`: the log for operators.
pub struct EventsService {
    /// The log.
    pub log: Arc<EventLog>,
    /// Where tokens are checked again while a watch runs.
    pub store: Store,
    /// Ends every watch.
    pub shutdown: CancellationToken,
    /// Owns the watches.
    pub tracker: tokio_util::task::TaskTracker,
}

#[tonic::async_trait]
impl EventService for EventsService {
    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<FleetEvent, Status>> + Send>>;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let op = crate::auth::operator(&req);
        let r = req.into_inner();
        let mut kinds = Vec::with_capacity(r.kinds.len());
        for k in &r.kinds {
            match FleetEventKind::try_from(*k) {
                Ok(k) if k != FleetEventKind::Unspecified => kinds.push(k),
                _ => {
                    return Err(
                        Error::invalid("kinds", format!("{k} is not an event kind this controller knows")).into(),
                    )
                }
            }
        }
        let since_ms = if r.since_ms == 0 && r.follow {
            fleet_proto::now_ms()
        } else {
            r.since_ms
        };
        let w = Watch {
            filter: Filter { app: r.app, kinds },
            since_ms,
            after_seq: (r.after_seq > 0).then_some(r.after_seq),
            follow: r.follow,
        };
        let (tx, rx) = mpsc::channel(256);
        let (log, store, shutdown) = (self.log.clone(), self.store.clone(), self.shutdown.clone());
        self.tracker.spawn(async move {
            let events = run_watch(log, w, tx.clone(), shutdown);
            tokio::pin!(events);
            // A token revoked or expired while the watch runs ends it.
            let mut recheck = tokio::time::interval(crate::auth::TOKEN_RECHECK);
            recheck.tick().await;
            loop {
                tokio::select! {
                    _ = &mut events => return,
                    _ = recheck.tick() => {
                        if let Err(e) = crate::auth::still_valid(&store, &op, fleet_proto::now_ms()) {
                            let _ = tx.send(Err(Error::from(e).into())).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{RolloutBatch as Batch, RolloutHost, StartRolloutRequest as RolloutParams};

    fn rollout(canary_approve: bool) -> Rollout {
        let mut r = Rollout {
            id: "r-1".into(),
            app: "web".into(),
            version: "2.0".into(),
            created_by: "alice".into(),
            params: Some(RolloutParams {
                canary_approve,
                ..Default::default()
            }),
            batches: vec![
                Batch {
                    canary: true,
                    hosts: vec![RolloutHost {
                        host_id: "h1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                Batch::default(),
            ],
            current_batch: 1,
            ..Default::default()
        };
        r.set_state(RolloutState::Paused);
        r
    }

    #[test]
    fn a_pause_after_the_canary_is_canary_waiting_only_while_approval_is_awaited() {
        let r = rollout(true);
        let e = of_rollout(&r, EventKind::Paused, "", "", "canary batch done").expect("an event");
        assert_eq!(e.kind(), FleetEventKind::CanaryWaiting);
        assert_eq!(
            (e.app.as_str(), e.rollout_id.as_str(), e.who.as_str()),
            ("web", "r-1", "alice")
        );
        let mut approved = rollout(true);
        approved.canary_approved = true;
        let e = of_rollout(&approved, EventKind::Paused, "", "", "paused").expect("an event");
        assert_eq!(e.kind(), FleetEventKind::RolloutPaused);
        let e = of_rollout(&rollout(false), EventKind::Paused, "", "", "paused").expect("an event");
        assert_eq!(e.kind(), FleetEventKind::RolloutPaused);
    }

    #[test]
    fn host_phases_stay_off_the_fleet_log_and_ends_carry_their_outcome() {
        let mut r = rollout(false);
        assert!(of_rollout(&r, EventKind::HostPhase, "h1", "web-1", "fetch running").is_none());
        r.batches[0].hosts[0].set_state(fleet_proto::HostState::RolledBack);
        let e = of_rollout(&r, EventKind::HostDone, "h1", "web-1", "rolled back").expect("an event");
        assert_eq!(
            (e.kind(), e.outcome.as_str()),
            (FleetEventKind::RolloutHostDone, "rolled_back")
        );
        assert_eq!(e.hostname, "web-1");
        r.batches[0].hosts[0].set_state(fleet_proto::HostState::Failed);
        r.batches[0].hosts[0].reverted = true;
        let e = of_rollout(&r, EventKind::HostDone, "h1", "web-1", "failed").expect("an event");
        assert_eq!(e.outcome, "reverted", "the agent moved back: said so");
        r.set_state(RolloutState::Failed);
        let e = of_rollout(&r, EventKind::RolloutEnded, "", "", "failed").expect("an event");
        assert_eq!((e.kind(), e.outcome.as_str()), (FleetEventKind::RolloutEnded, "failed"));
    }

    #[test]
    fn a_filter_keeps_its_app_and_kinds() {
        let mut e = event(FleetEventKind::ReleasePushed);
        e.app = "web".into();
        assert!(Filter::default().keeps(&e));
        assert!(Filter {
            app: "web".into(),
            kinds: vec![FleetEventKind::ReleasePushed]
        }
        .keeps(&e));
        assert!(!Filter {
            app: "api".into(),
            kinds: vec![]
        }
        .keeps(&e));
        assert!(!Filter {
            app: String::new(),
            kinds: vec![FleetEventKind::HostConnected]
        }
        .keeps(&e));
    }

    fn log() -> (tempfile::TempDir, Arc<EventLog>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        (dir, Arc::new(EventLog::open(&store, 100_000).expect("log")))
    }

    async fn collect(rx: &mut mpsc::Receiver<Result<FleetEvent, ()>>, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let e = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("an event in time")
                .expect("open")
                .expect("ok");
            seqs.push(e.seq);
        }
        seqs
    }

    #[tokio::test]
    async fn a_watch_sends_stored_then_live_events_in_order_and_a_lagging_one_loses_none() {
        let (_dir, log) = log();
        for _ in 0..1500 {
            log.publish(event(FleetEventKind::HostConnected));
        }
        let (tx, mut rx) = mpsc::channel(8);
        let w = Watch {
            follow: true,
            ..Default::default()
        };
        let stop = CancellationToken::new();
        let watch = tokio::spawn(run_watch(log.clone(), w, tx, stop.clone()));
        // Stored pages first (more than one page).
        assert_eq!(collect(&mut rx, 1500).await, (0..1500).collect::<Vec<_>>());
        log.publish(event(FleetEventKind::HostEnrolled));
        assert_eq!(collect(&mut rx, 1).await, [1500]);
        // Now live: more events than the live channel holds while the
        // watcher cannot hand them on. It lags, and reads the ones it
        // missed back from the store.
        let burst = LIVE_BUFFER + 500;
        for _ in 0..burst {
            log.publish(event(FleetEventKind::HostDisconnected));
        }
        let seqs = collect(&mut rx, burst).await;
        assert_eq!(seqs, (1501..1501 + burst as u64).collect::<Vec<_>>());
        stop.cancel();
        watch.await.expect("the watch ends on shutdown");
    }

    #[tokio::test]
    async fn a_watch_resumes_after_the_last_event_it_saw_and_ends_without_follow() {
        let (_dir, log) = log();
        for _ in 0..10 {
            log.publish(event(FleetEventKind::HostConnected));
        }
        let (tx, mut rx) = mpsc::channel(64);
        let w = Watch {
            after_seq: Some(6),
            ..Default::default()
        };
        run_watch(log.clone(), w, tx, CancellationToken::new()).await;
        assert_eq!(collect(&mut rx, 3).await, [7, 8, 9]);
        assert!(rx.recv().await.is_none(), "without follow the watch ends");
    }
}
