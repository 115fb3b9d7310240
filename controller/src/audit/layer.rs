//! The tower layer that records operator calls ([`AuditLayer`]), and the
//! [`Note`] through which a handler tells it what the call touched.
//!
//! The layer wraps the whole router, so no handler can forget it: it
//! recognises the audited methods by path (`AUDITED`), and records a refusal
//! (authentication or authorization) of any operator call. The operator is
//! the one the gate (`ops::OperatorGate`, inside this layer) authenticated
//! and wrote into the note, so a call is authenticated once; it takes the
//! peer address from the
//! connection's [`PeerInfo`], and the outcome from `grpc-status` at the
//! response head (a trailers-only error carries it there; otherwise the
//! call was accepted: "ok"). A handler whose call ends later (a deploy)
//! marks its note, the record says "accepted", and the handler writes the
//! end itself ("DeployEnded"); rollouts' ends are written by their engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fleet_proto::now_ms;
use tonic::Request;

use super::{audited, AuditLog, Record};
use crate::access::Callee;
use crate::store::audit::MAX_HOSTS;
use crate::tls::PeerInfo;

/// What a handler noted about its call: the fields of the record it fills.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// The operator, once the gate has authenticated the call (the audit
    /// layer is outside it; without a valid token the record says
    /// "unauthenticated").
    pub who: Option<String>,
    /// A token, an operator, a task.
    pub target: String,
    /// The app.
    pub app: String,
    /// The release version.
    pub version: String,
    /// Hosts it changes.
    pub hosts: Vec<String>,
    /// The selector it was given.
    pub selector: String,
    /// The rollout.
    pub rollout_id: String,
    /// Nothing changed.
    pub dry_run: bool,
    /// The call ends after its answer: the name of the record that will
    /// say how (e.g. "DeployEnded").
    pub ends_later: Option<&'static str>,
}

/// A handler's note to the audit layer (a request extension). Handlers get
/// it with [`note`]; outside the layer (unit tests) it is a note nobody reads.
#[derive(Debug, Clone, Default)]
pub struct Note(Arc<Mutex<Details>>);

impl Note {
    /// Changes the details.
    pub fn set(&self, f: impl FnOnce(&mut Details)) {
        // A poisoned note only means a panic while noting; keep what is there.
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Copies the details into `r`; returns `ends_later`.
    fn fill(&self, r: &mut Record) -> Option<&'static str> {
        let d = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(who) = d.who {
            r.who = who;
        }
        r.target = d.target;
        r.app = d.app;
        r.version = d.version;
        r.hosts = listed(d.hosts);
        r.selector = d.selector;
        r.rollout_id = d.rollout_id;
        r.dry_run = d.dry_run;
        d.ends_later
    }
}

/// At most `MAX_HOSTS` of `hosts`.
pub fn listed(mut hosts: Vec<String>) -> Vec<String> {
    hosts.truncate(MAX_HOSTS);
    hosts
}

/// The note of a request (a detached one when the layer is not in front).
pub fn note<T>(req: &Request<T>) -> Note {
    req.extensions().get::<Note>().cloned().unwrap_or_default()
}

/// Decodes grpc-message's percent-encoding.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The outcome a response head tells: "ok", or `Code: message` for a
/// trailers-only error.
pub fn outcome(headers: &http::HeaderMap) -> String {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Ok);
    if code == tonic::Code::Ok {
        return "ok".into();
    }
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    if message.is_empty() {
        format!("{code:?}")
    } else {
        format!("{code:?}: {message}")
    }
}

/// A tower layer that records audited calls; wraps the whole router.
#[derive(Clone)]
pub struct AuditLayer(pub Arc<AuditLog>);

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Audited<S>;
    fn layer(&self, inner: S) -> Audited<S> {
        Audited {
            inner,
            log: self.0.clone(),
        }
    }
}

/// The service [`AuditLayer`] wraps around the router.
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    log: Arc<AuditLog>,
}

/// A call not answered yet: written when the answer's head comes (with
/// what the handler noted), or, if the caller goes away first, when it is
/// dropped. A call that changes nothing is written only when refused.
struct Pending {
    log: Arc<AuditLog>,
    record: Option<Record>,
    note: Note,
    only_refusals: bool,
}

impl Pending {
    fn finish(mut self, outcome: String) {
        if let Some(mut r) = self.record.take() {
            if self.only_refusals && !is_refusal(&outcome) {
                return;
            }
            let later = self.note.fill(&mut r);
            r.outcome = match later {
                Some(end) if outcome == "ok" => format!("accepted: its end is recorded as {end}"),
                _ => outcome,
            };
            self.log.write(&r);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            if self.only_refusals {
                return;
            }
            self.note.fill(&mut r);
            r.outcome = "cancelled: the caller went away before the answer".into();
            self.log.write(&r);
        }
    }
}

/// Whether an outcome is a refusal of who asked (authentication or
/// authorization), which is recorded for every operator call.
fn is_refusal(outcome: &str) -> bool {
    outcome.starts_with("Unauthenticated") || outcome.starts_with("PermissionDenied")
}

impl<S, B, RB> tower::Service<http::Request<B>> for Audited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let (what, only_refusals) = match (audited(path), crate::access::callee(path)) {
            (Some(what), _) => (what, false),
            (None, Callee::Operator(method, _)) => (method, true),
            (None, _) => return Box::pin(self.inner.call(req)),
        };
        let note = Note::default();
        req.extensions_mut().insert(note.clone());
        let pending = Pending {
            log: self.log.clone(),
            record: Some(Record {
                at_ms: now_ms(),
                who: super::UNAUTHENTICATED.into(),
                what: what.into(),
                from: req
                    .extensions()
                    .get::<PeerInfo>()
                    .map(|p| p.remote.to_string())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            note,
            only_refusals,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            pending.finish(match &res {
                Ok(resp) => outcome(resp.headers()),
                Err(_) => "failed: the call broke before an answer".into(),
            });
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    use crate::audit::{Filter, MAX_LISTED, UNAUTHENTICATED};

    fn log() -> (tempfile::TempDir, crate::store::Store, Arc<AuditLog>) {
        crate::audit::tests::log_and_store()
    }

    #[test]
    fn outcome_reads_grpc_status_and_message() {
        let mut h = http::HeaderMap::new();
        assert_eq!(outcome(&h), "ok");
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(outcome(&h), "ok");
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(outcome(&h), "NotFound");
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("no host matches %27web-9%27%3B try %E2%80%9Chosts ls%E2%80%9D"),
        );
        assert_eq!(outcome(&h), "NotFound: no host matches 'web-9'; try “hosts ls”");
        assert_eq!(percent_decode("100%"), "100%");
    }

    /// The gate as `serve` puts it inside the audit layer.
    fn gate(store: &crate::store::Store) -> crate::ops::OperatorGate {
        crate::ops::OperatorGate {
            auth: crate::auth::Authenticator {
                store: store.clone(),
                recovery: Arc::new(crate::auth::Recovery::new(&[1; 32])),
                failures: Arc::new(crate::ratelimit::Limiter::new(
                    "limits.auth_failures_per_source",
                    crate::ratelimit::Rate {
                        burst: 100,
                        per_minute: 100,
                    },
                )),
            },
        }
    }

    async fn call(log: &Arc<AuditLog>, store: &crate::store::Store, path: &str, status: Option<&'static str>) {
        call_as(log, store, path, status, Some("Bearer fleet_op_abc123.s3cret")).await
    }

    async fn call_as(
        log: &Arc<AuditLog>,
        store: &crate::store::Store,
        path: &str,
        status: Option<&'static str>,
        authorization: Option<&str>,
    ) {
        let inner = tower::service_fn(move |_req: http::Request<()>| async move {
            let mut resp = http::Response::new(());
            if let Some(code) = status {
                resp.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static(code));
                resp.headers_mut()
                    .insert("grpc-message", http::HeaderValue::from_static("refused%21"));
            }
            Ok::<_, Infallible>(resp)
        });
        let mut svc = AuditLayer(log.clone()).layer(gate(store).layer(inner));
        let mut req = http::Request::builder().uri(format!("https://c{path}"));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let mut req = req.body(()).expect("request");
        req.extensions_mut().insert(PeerInfo {
            remote: "10.0.0.7:40000".parse().expect("addr"),
            cert_fp: None,
            conn: Arc::new(crate::connections::ConnState::new(1, [10, 0, 0, 7].into())),
        });
        svc.ready().await.expect("ready").call(req).await.expect("answer");
    }

    #[tokio::test]
    async fn the_layer_records_mutating_calls_with_outcome_and_peer() {
        let (_dir, store, log) = log();
        call(&log, &store, "/fleet.v1.TokenService/CreateToken", None).await;
        call(&log, &store, "/fleet.v1.HostService/ListHosts", None).await;
        call(&log, &store, "/fleet.v1.HostService/RemoveHost", Some("9")).await;
        let got = log.since(0, MAX_LISTED, &Filter::default()).expect("entries");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (
                got[0].who.as_str(),
                got[0].what.as_str(),
                got[0].from.as_str(),
                got[0].outcome.as_str()
            ),
            ("alice", "TokenService/CreateToken", "10.0.0.7:40000", "ok")
        );
        assert_eq!(got[1].what, "HostService/RemoveHost");
        assert_eq!(got[1].outcome, "FailedPrecondition: refused!");
    }

    #[tokio::test]
    async fn refusals_of_any_operator_call_and_the_handlers_note_are_recorded() {
        let (_dir, store, log) = log();
        // A read refused: recorded; a read answered: not.
        call(&log, &store, "/fleet.v1.HostService/ListHosts", Some("7")).await;
        call(&log, &store, "/fleet.v1.HostService/ListHosts", None).await;
        // An agent's call: never.
        call(&log, &store, "/fleet.v1.AgentService/Stream", Some("16")).await;
        let got = log.since(0, MAX_LISTED, &Filter::default()).expect("entries");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].what, "HostService/ListHosts");
        assert!(got[0].outcome.starts_with("PermissionDenied"), "{}", got[0].outcome);

        // What the handler notes lands in the record; a call that ends
        // later is "accepted".
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let note = req.extensions().get::<Note>().expect("the layer's note").clone();
            note.set(|d| {
                d.app = "web".into();
                d.version = "1.2.0".into();
                d.hosts = (0..80).map(|i| format!("h{i}")).collect();
                d.ends_later = Some("DeployEnded");
            });
            Ok::<_, Infallible>(http::Response::new(()))
        });
        let mut svc = AuditLayer(log.clone()).layer(inner);
        let req = http::Request::builder()
            .uri("https://c/fleet.v1.AppService/Deploy")
            .body(())
            .expect("request");
        svc.ready().await.expect("ready").call(req).await.expect("answer");
        let got = log.since(0, MAX_LISTED, &Filter::default()).expect("entries");
        let deploy = got.last().expect("deploy");
        assert_eq!((deploy.app.as_str(), deploy.version.as_str()), ("web", "1.2.0"));
        assert_eq!(deploy.hosts.len(), crate::store::audit::MAX_HOSTS);
        assert!(
            deploy.outcome.starts_with("accepted") && deploy.outcome.contains("DeployEnded"),
            "{}",
            deploy.outcome
        );
    }

    #[tokio::test]
    async fn who_is_the_operator_the_gate_authenticated_once() {
        let (_dir, store, log) = log();
        let who = |header: Option<&'static str>| {
            let (log, store) = (log.clone(), store.clone());
            async move {
                call_as(&log, &store, "/fleet.v1.TokenService/CreateToken", None, header).await;
                let got = log.since(0, MAX_LISTED, &Filter::default()).expect("entries");
                got.last().expect("recorded").who.clone()
            }
        };
        assert_eq!(who(Some("Bearer fleet_op_abc123.s3cret")).await, "alice");
        assert_eq!(who(Some("Bearer fleet_op_abc123.wrong")).await, UNAUTHENTICATED);
        assert_eq!(who(Some("Bearer fleet_op_nobody.s3cret")).await, UNAUTHENTICATED);
        assert_eq!(who(Some("Bearer nonsense")).await, UNAUTHENTICATED);
        assert_eq!(who(None).await, UNAUTHENTICATED);
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_is_recorded_as_cancelled() {
        let (_dir, _store, log) = log();
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            std::future::pending::<Result<http::Response<()>, Infallible>>().await
        });
        let mut svc = AuditLayer(log.clone()).layer(inner);
        let req = http::Request::builder()
            .uri("https://c/fleet.v1.HostService/RemoveHost")
            .body(())
            .expect("request");
        let fut = svc.ready().await.expect("ready").call(req);
        drop(fut);
        let got = log.since(0, MAX_LISTED, &Filter::default()).expect("entries");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].who, UNAUTHENTICATED);
        assert!(got[0].outcome.starts_with("cancelled"), "{}", got[0].outcome);
    }
}
