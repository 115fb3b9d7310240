//! Webhooks: the fleet's events (`events`), as they happen, to chat or to
//! any HTTP endpoint. `fleetctl notify add|ls|rm|test`.
//!
//! One dispatcher follows the event log (the same watch `fleetctl events
//! --follow` uses, so a dispatcher that falls behind reads what it missed
//! from the store) and puts each event into the queue of every webhook that
//! wants it ([`payload::wants`]). Each webhook has a worker that delivers
//! its queue in order, one event at a time, retrying a failed delivery with
//! backoff ([`retry_after`]) before giving up on it. Nothing here is on a
//! rollout's path: the engine only publishes to the event log, which never
//! waits for a webhook. A queue holds at most [`QUEUE_MAX`] events; past
//! that the oldest is dropped (counted, logged, shown in `notify ls`).
//!
//! Queues live in memory: events not delivered when the controller stops
//! are not delivered after it starts (the event log still has them).

pub mod http;
pub mod payload;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::http::Uri;
use fleet_proto::notify_service_server::NotifyService;
use fleet_proto::{
    AddNotifierRequest, AddNotifierResponse, FleetEvent, FleetEventKind, ListNotifiersRequest, ListNotifiersResponse,
    Notifier, RemoveNotifierRequest, TestNotifierRequest, TestNotifierResponse,
};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::events::{EventLog, Watch};
use crate::metrics::Metrics;
use crate::store::notifiers::NotifierRecord;
use crate::store::{Store, StoreError};
use payload::Format;

/// Events one webhook's queue holds before the oldest is dropped.
pub const QUEUE_MAX: usize = 1000;
/// Attempts at one delivery before it is given up.
pub const ATTEMPTS: u32 = 8;

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Worth another attempt: no answer, 408, 429, 5xx.
    Retry(String),
    /// Another attempt would fare no better: any other 4xx, 3xx.
    GiveUp(String),
}

/// Judges an attempt's result. Pure.
pub fn judge(result: &Result<http::Answer, String>) -> Outcome {
    match result {
        Err(e) => Outcome::Retry(e.clone()),
        Ok(a) if (200..300).contains(&a.status) => Outcome::Delivered,
        Ok(a) => {
            let why = format!(
                "HTTP {}: {}",
                a.status,
                a.body.lines().next().unwrap_or_default().trim()
            );
            if a.status == 408 || a.status == 429 || a.status >= 500 {
                Outcome::Retry(why)
            } else {
                Outcome::GiveUp(why)
            }
        }
    }
}

/// How long to wait after failed attempt `n` (1-based) before the next,
/// or None when it was the last: 1 s, 2 s, 4 s … at most 60 s, about 2.5
/// minutes over [`ATTEMPTS`]. Pure.
pub fn retry_after(n: u32) -> Option<Duration> {
    (n < ATTEMPTS).then(|| Duration::from_secs((1u64 << (n - 1).min(6)).min(60)))
}

/// A webhook ready to deliver to: its record, checked.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its name.
    pub name: String,
    /// Where to.
    pub url: Uri,
    /// The payload.
    pub format: Format,
    /// Only this app's events.
    pub app: String,
    /// Only these kinds (empty: the defaults).
    pub kinds: Vec<FleetEventKind>,
    /// The HMAC key of JSON payloads.
    pub secret: String,
}

impl Spec {
    /// Checks a stored record.
    pub fn of(rec: &NotifierRecord) -> Result<Spec, String> {
        let kinds = rec
            .kinds
            .iter()
            .map(|k| FleetEventKind::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Spec {
            name: rec.name.clone(),
            url: http::check_url(&rec.url)?,
            format: Format::parse(&rec.format)?,
            app: rec.app.clone(),
            kinds,
            secret: rec.secret.clone(),
        })
    }

    /// The headers of a delivery of `body` about `e`.
    fn headers(&self, e: &FleetEvent, body: &[u8]) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("x-fleet-event", e.kind().word().to_string()),
            ("x-fleet-delivery", e.seq.to_string()),
        ];
        if self.format == Format::Json && !self.secret.is_empty() {
            let ts = u64::try_from(fleet_proto::now_ms() / 1000).unwrap_or(0);
            h.push(("x-fleet-timestamp", ts.to_string()));
            h.push((
                "x-fleet-signature",
                payload::signature(self.secret.as_bytes(), ts, body),
            ));
        }
        h
    }
}

/// How a webhook's deliveries went since the controller started.
#[derive(Debug, Clone, Default)]
struct Stats {
    delivered: u64,
    failed: u64,
    last_error: String,
    last_error_at_ms: i64,
}

/// A webhook's queue and its worker's handles.
struct Worker {
    spec: Arc<Spec>,
    queue: Arc<Mutex<VecDeque<FleetEvent>>>,
    wake: Arc<Notify>,
    stats: Arc<Mutex<Stats>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Short critical sections of plain pushes and counters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every webhook's worker, and what they share.
pub struct Notifiers {
    store: Store,
    tls: Arc<rustls::ClientConfig>,
    metrics: Arc<Metrics>,
    workers: Mutex<HashMap<String, Worker>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Notifiers {
    /// The webhooks of `store`, not started.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Notifiers, String> {
        Ok(Notifiers {
            store,
            tls: http::tls_config()?,
            metrics,
            workers: Mutex::new(HashMap::new()),
            tracker,
            shutdown,
        })
    }

    /// Starts a worker for every stored webhook and the dispatcher that
    /// feeds them from `log`, from now on.
    pub fn start(self: &Arc<Self>, log: Arc<EventLog>) -> Result<(), StoreError> {
        self.sync()?;
        let (tx, mut rx) = mpsc::channel::<Result<FleetEvent, ()>>(1024);
        let watch = Watch {
            since_ms: fleet_proto::now_ms(),
            follow: true,
            ..Default::default()
        };
        self.tracker
            .spawn(crate::events::run_watch(log, watch, tx, self.shutdown.clone()));
        let me = self.clone();
        self.tracker.spawn(async move {
            while let Some(Ok(e)) = rx.recv().await {
                me.dispatch(&e);
            }
        });
        Ok(())
    }

    /// Puts `e` into the queue of every webhook that wants it.
    fn dispatch(&self, e: &FleetEvent) {
        for w in lock(&self.workers).values() {
            if !payload::wants(&w.spec.app, &w.spec.kinds, e) {
                continue;
            }
            let dropped = {
                let mut q = lock(&w.queue);
                q.push_back(e.clone());
                if q.len() > QUEUE_MAX {
                    q.pop_front()
                } else {
                    None
                }
            };
            if let Some(old) = dropped {
                self.metrics.notification(&w.spec.name, "dropped");
                let why = format!(
                    "queue full ({QUEUE_MAX} events waiting): event {} ({}) dropped",
                    old.seq,
                    old.kind().word()
                );
                tracing::warn!(webhook = %w.spec.name, "{why}");
                let mut s = lock(&w.stats);
                s.failed += 1;
                s.last_error = why;
                s.last_error_at_ms = fleet_proto::now_ms();
            }
            w.wake.notify_one();
        }
    }

    /// Makes the running workers match the stored webhooks.
    pub fn sync(&self) -> Result<(), StoreError> {
        let records = self.store.notifiers()?;
        let mut workers = lock(&self.workers);
        workers.retain(|name, w| {
            let keep = records.iter().any(|r| &r.name == name);
            if !keep {
                w.stop.cancel();
            }
            keep
        });
        for rec in records {
            if workers.contains_key(&rec.name) {
                continue;
            }
            let spec = match Spec::of(&rec) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::error!(webhook = %rec.name, error = %e, "webhook not started: its stored settings are not valid; remove and add it again");
                    continue;
                }
            };
            let w = Worker {
                spec: spec.clone(),
                queue: Arc::new(Mutex::new(VecDeque::new())),
                wake: Arc::new(Notify::new()),
                stats: Arc::new(Mutex::new(Stats::default())),
                stop: self.shutdown.child_token(),
            };
            self.tracker.spawn(run_worker(
                spec,
                w.queue.clone(),
                w.wake.clone(),
                w.stats.clone(),
                w.stop.clone(),
                self.tls.clone(),
                self.metrics.clone(),
            ));
            workers.insert(rec.name.clone(), w);
        }
        Ok(())
    }

    /// A record as operators see it: the URL redacted, the delivery figures.
    fn view(&self, rec: &NotifierRecord) -> Notifier {
        let workers = lock(&self.workers);
        let w = workers.get(&rec.name);
        let stats = w.map(|w| lock(&w.stats).clone()).unwrap_or_default();
        Notifier {
            name: rec.name.clone(),
            url: http::redacted(&rec.url),
            format: rec.format.clone(),
            app: rec.app.clone(),
            kinds: rec
                .kinds
                .iter()
                .filter_map(|k| FleetEventKind::parse(k).ok())
                .map(|k| k as i32)
                .collect(),
            created_at_ms: rec.created_at_ms,
            created_by: rec.created_by.clone(),
            delivered: stats.delivered,
            failed: stats.failed,
            last_error: stats.last_error,
            last_error_at_ms: stats.last_error_at_ms,
            queued: w.map_or(0, |w| lock(&w.queue).len() as u64),
        }
    }
}

/// Delivers one event to `spec`: one attempt.
async fn attempt(spec: &Spec, e: &FleetEvent, tls: &Arc<rustls::ClientConfig>) -> Result<http::Answer, String> {
    let body = payload::body(spec.format, e);
    let headers = spec.headers(e, &body);
    http::post(&spec.url, &headers, body, tls).await
}

/// A webhook's worker: delivers its queue in order until stopped.
async fn run_worker(
    spec: Arc<Spec>,
    queue: Arc<Mutex<VecDeque<FleetEvent>>>,
    wake: Arc<Notify>,
    stats: Arc<Mutex<Stats>>,
    stop: CancellationToken,
    tls: Arc<rustls::ClientConfig>,
    metrics: Arc<Metrics>,
) {
    loop {
        let next = lock(&queue).pop_front();
        let Some(e) = next else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => continue,
            }
        };
        let mut n = 0;
        loop {
            n += 1;
            let result = attempt(&spec, &e, &tls).await;
            let why = match judge(&result) {
                Outcome::Delivered => {
                    metrics.notification(&spec.name, "delivered");
                    lock(&stats).delivered += 1;
                    break;
                }
                Outcome::Retry(why) => match retry_after(n) {
                    Some(wait) => {
                        metrics.notification(&spec.name, "retried");
                        tracing::info!(webhook = %spec.name, seq = e.seq, attempt = n, error = %why, retry_in_s = wait.as_secs(), "webhook delivery failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                    None => format!("gave up after {n} attempts: {why}"),
                },
                Outcome::GiveUp(why) => format!("refused: {why}"),
            };
            metrics.notification(&spec.name, "failed");
            tracing::warn!(webhook = %spec.name, url = %http::redacted(&spec.url.to_string()), seq = e.seq, kind = e.kind().word(), error = %why, "webhook delivery failed");
            let mut s = lock(&stats);
            s.failed += 1;
            s.last_error = why;
            s.last_error_at_ms = fleet_proto::now_ms();
            break;
        }
    }
}

/// Checks a webhook's name: 1-63 of `a-z 0-9 . _ -`, not starting with `.`
/// or `-` (as app names).
fn check_name(name: &str) -> Result<(), Error> {
    fleet_proto::limits::check_app_name(name).map_err(|_| {
        Error::invalid(
            "name",
            format!(
                "webhook name {:?} is not 1-63 of a-z 0-9 . _ - (not starting with . or -)",
                name.chars().take(80).collect::<String>()
            ),
        )
    })
}

/// `NotifyService`.
pub struct NotifyApi(pub Arc<Notifiers>);

#[tonic::async_trait]
impl NotifyService for NotifyApi {
    async fn add_notifier(&self, req: Request<AddNotifierRequest>) -> Result<Response<AddNotifierResponse>, Status> {
        let who = crate::auth::operator(&req).name;
        let note = crate::audit::note(&req);
        let r = req.into_inner();
        note.set(|d| {
            d.target = format!("webhook {}", r.name);
            d.app = r.app.clone();
        });
        check_name(&r.name)?;
        let format = Format::parse(&r.format).map_err(|e| Error::invalid("format", e))?;
        http::check_url(&r.url).map_err(|e| Error::invalid("url", e))?;
        let mut kinds = Vec::with_capacity(r.kinds.len());
        for k in &r.kinds {
            match FleetEventKind::try_from(*k) {
                Ok(k) if FleetEventKind::ALL.contains(&k) => kinds.push(k.word().to_string()),
                _ => {
                    return Err(
                        Error::invalid("kinds", format!("{k} is not an event kind this controller sends")).into(),
                    )
                }
            }
        }
        let store = &self.0.store;
        if !r.app.is_empty() && store.app(&r.app).map_err(Error::Store)?.is_none() {
            return Err(Error::UnknownApp(r.app.clone()).into());
        }
        let secret = match format {
            Format::Json => format!("whsec_{}", crate::random_hex(24)),
            Format::Slack => String::new(),
        };
        let rec = NotifierRecord {
            name: r.name.clone(),
            url: r.url,
            format: format.word().into(),
            app: r.app,
            kinds,
            secret: secret.clone(),
            created_at_ms: fleet_proto::now_ms(),
            created_by: who.clone(),
        };
        if !store.create_notifier(&rec).map_err(Error::Store)? {
            return Err(Error::Exists(format!(
                "webhook '{}' exists; remove it first with 'fleetctl notify rm {}'",
                rec.name, rec.name
            ))
            .into());
        }
        store.flush().await.map_err(Error::Store)?;
        self.0.sync().map_err(Error::Store)?;
        tracing::info!(webhook = %rec.name, url = %http::redacted(&rec.url), format = %rec.format, by = %who, "webhook added");
        Ok(Response::new(AddNotifierResponse {
            notifier: Some(self.0.view(&rec)),
            secret,
        }))
    }

    async fn list_notifiers(
        &self,
        _req: Request<ListNotifiersRequest>,
    ) -> Result<Response<ListNotifiersResponse>, Status> {
        let records = self.0.store.notifiers().map_err(Error::Store)?;
        let notifiers = records.iter().map(|r| self.0.view(r)).collect();
        Ok(Response::new(ListNotifiersResponse { notifiers }))
    }

    async fn remove_notifier(&self, req: Request<RemoveNotifierRequest>) -> Result<Response<Notifier>, Status> {
        let who = crate::auth::operator(&req).name;
        let name = req.get_ref().name.clone();
        crate::audit::note(&req).set(|d| d.target = format!("webhook {name}"));
        let view_before = self
            .0
            .store
            .notifier(&name)
            .map_err(Error::Store)?
            .map(|r| self.0.view(&r));
        let rec = self
            .0
            .store
            .remove_notifier(&name)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownNotifier(name.clone()))?;
        self.0.store.flush().await.map_err(Error::Store)?;
        self.0.sync().map_err(Error::Store)?;
        tracing::info!(webhook = %rec.name, by = %who, "webhook removed");
        Ok(Response::new(view_before.unwrap_or_else(|| self.0.view(&rec))))
    }

    async fn test_notifier(&self, req: Request<TestNotifierRequest>) -> Result<Response<TestNotifierResponse>, Status> {
        let who = crate::auth::operator(&req).name;
        let name = req.get_ref().name.clone();
        crate::audit::note(&req).set(|d| d.target = format!("webhook {name}"));
        let rec = self
            .0
            .store
            .notifier(&name)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownNotifier(name.clone()))?;
        let spec = Spec::of(&rec)
            .map_err(|e| Error::Internal(format!("webhook '{name}' is stored with bad settings: {e}")))?;
        let mut e = crate::events::event(FleetEventKind::NotifyTest);
        e.who = who.clone();
        e.detail = format!("a test event sent by {who} with 'fleetctl notify test {name}'");
        let started = Instant::now();
        let result = attempt(&spec, &e, &self.0.tls).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (http_status, detail) = match &result {
            Ok(a) => (u32::from(a.status), a.body.clone()),
            Err(e) => (0, e.clone()),
        };
        Ok(Response::new(TestNotifierResponse {
            http_status,
            detail,
            duration_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_no_answer_are_retried_client_errors_are_not() {
        let answer = |status: u16| {
            Ok(http::Answer {
                status,
                body: "nope\nmore".into(),
            })
        };
        assert_eq!(judge(&answer(200)), Outcome::Delivered);
        assert_eq!(judge(&answer(204)), Outcome::Delivered);
        assert_eq!(judge(&answer(503)), Outcome::Retry("HTTP 503: nope".into()));
        assert!(matches!(judge(&answer(429)), Outcome::Retry(_)));
        assert!(matches!(judge(&answer(408)), Outcome::Retry(_)));
        assert_eq!(judge(&answer(404)), Outcome::GiveUp("HTTP 404: nope".into()));
        assert!(matches!(judge(&answer(301)), Outcome::GiveUp(_)));
        assert_eq!(
            judge(&Err("cannot connect".into())),
            Outcome::Retry("cannot connect".into())
        );
    }

    #[test]
    fn retries_back_off_to_a_minute_and_stop() {
        let waits: Vec<u64> = (1..=ATTEMPTS).map_while(retry_after).map(|d| d.as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60]);
        assert_eq!(retry_after(ATTEMPTS), None);
    }
}
