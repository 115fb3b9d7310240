//! The audit log: who called which mutating operator RPC, when, from where,
//! and with what outcome, in the sled tree `audit`; and `AuditService` that
//! lists it.
//!
//! Recording happens in [`AuditLayer`], a tower layer around the whole gRPC
//! router, so no handler has to remember to do it: the layer recognises the
//! audited methods by path ([`AUDITED`]), names the operator from the bearer
//! token, takes the peer address from the connection's [`PeerInfo`], and the
//! outcome from `grpc-status` at the response head (a trailers-only error
//! carries it there; otherwise the call was accepted: "ok"). A streaming
//! call (`Deploy`) is therefore recorded as accepted; its task's own result
//! is in the task's progress.
//!
//! The entries are stored by `crate::store::audit` (key layout there).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use fleet_proto::audit_service_server::AuditService;
use fleet_proto::{now_ms, AuditEntry, ListAuditRequest, ListAuditResponse};
use tonic::{Request, Response, Status};

use crate::auth::{authenticate, AuthError, Recovery};
use crate::error::Error;
use crate::store::audit::AuditTrail;
use crate::store::{Store, StoreError};
use crate::tls::PeerInfo;

/// The operator methods that change something, as `Service/Method`: the
/// one list of what is audited.
pub const AUDITED: [&str; 16] = [
    "TokenService/CreateToken",
    "TokenService/RevokeToken",
    "HostService/LabelHost",
    "HostService/RemoveHost",
    "HostService/PruneHosts",
    "AppService/CreateApp",
    "AppService/UpdateApp",
    "AppService/Deploy",
    "ReleaseService/PushRelease",
    "ReleaseService/DeleteRelease",
    "RolloutService/StartRollout",
    "RolloutService/ControlRollout",
    "OperatorService/CreateOperator",
    "OperatorService/RemoveOperator",
    "OperatorService/CreateOperatorToken",
    "OperatorService/RevokeOperatorToken",
];

/// The package prefix of every gRPC path.
const PACKAGE: &str = "/fleet.v1.";
/// Who a call without a valid operator token is recorded as.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// The most entries one ListAudit answers with (the newest ones), so an
/// answer stays well under gRPC's message limit.
pub const MAX_LISTED: usize = 10_000;
/// `Service/Method` of an audited call, or None.
pub fn audited(path: &str) -> Option<&'static str> {
    let method = path.strip_prefix(PACKAGE)?;
    AUDITED.iter().copied().find(|m| *m == method)
}

pub use crate::store::audit::Record;

impl From<Record> for AuditEntry {
    fn from(r: Record) -> AuditEntry {
        AuditEntry {
            at_ms: r.at_ms,
            who: r.who,
            what: r.what,
            from: r.from,
            outcome: r.outcome,
            target: r.target,
        }
    }
}

/// The audit log in the store, and who an operator call comes from.
pub struct AuditLog {
    store: Store,
    recovery: Arc<Recovery>,
    trail: AuditTrail,
}

impl AuditLog {
    /// Opens the log; sequence numbers go on from the last entry.
    pub fn open(store: &Store, recovery: Arc<Recovery>) -> Result<AuditLog, StoreError> {
        Ok(AuditLog {
            store: store.clone(),
            recovery,
            trail: store.audit_trail()?,
        })
    }

    /// Appends an entry.
    pub fn record(&self, r: &Record) -> Result<(), StoreError> {
        self.trail.append(r)
    }

    /// Entries at or after `since_ms`, oldest first; the newest `limit` of
    /// them when there are more.
    pub fn since(&self, since_ms: i64, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.trail.since(since_ms, limit)
    }

    /// The operator an `authorization` header names, when its token is
    /// valid; "unauthenticated" otherwise (the call itself is refused by the
    /// interceptor then, and recorded with that refusal).
    pub fn who(&self, authorization: Option<&http::HeaderValue>) -> String {
        match authenticate(&self.store, &self.recovery, authorization, now_ms()) {
            Ok(op) => op.name,
            Err(AuthError::Store(e)) => {
                tracing::warn!(error = %e, "audit: cannot look up the operator");
                UNAUTHENTICATED.into()
            }
            Err(_) => UNAUTHENTICATED.into(),
        }
    }

    fn write(&self, r: &Record) {
        if let Err(e) = self.record(r) {
            // The call itself already happened; losing its audit entry is
            // logged loudly rather than failing the operator's call.
            tracing::error!(error = %e, what = %r.what, who = %r.who, "audit entry not stored");
        }
    }
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

/// An audited call not answered yet: written when the answer's head comes,
/// or, if the caller goes away first, when it is dropped.
struct Pending {
    log: Arc<AuditLog>,
    record: Option<Record>,
}

impl Pending {
    fn finish(mut self, outcome: String) {
        if let Some(mut r) = self.record.take() {
            r.outcome = outcome;
            self.log.write(&r);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.outcome = "cancelled: the caller went away before the answer".into();
            self.log.write(&r);
        }
    }
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(what) = audited(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        let pending = Pending {
            log: self.log.clone(),
            record: Some(Record {
                at_ms: now_ms(),
                who: self.log.who(req.headers().get(http::header::AUTHORIZATION)),
                what: what.into(),
                from: req
                    .extensions()
                    .get::<PeerInfo>()
                    .map(|p| p.remote.to_string())
                    .unwrap_or_default(),
                outcome: String::new(),
                target: String::new(),
            }),
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

/// `AuditService`: the log for operators.
pub struct AuditLogService(pub Arc<AuditLog>);

#[tonic::async_trait]
impl AuditService for AuditLogService {
    async fn list_audit(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        let since = req.get_ref().since_ms;
        let log = self.0.clone();
        let records = tokio::task::spawn_blocking(move || log.since(since, MAX_LISTED))
            .await
            .map_err(|e| Error::Internal(format!("reading the audit log failed: {e}")))?
            .map_err(Error::Store)?;
        Ok(Response::new(ListAuditResponse {
            entries: records.into_iter().map(AuditEntry::from).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    fn log() -> (tempfile::TempDir, Arc<AuditLog>) {
        let (dir, store) = crate::auth::tests::store_with_alice();
        let log = Arc::new(AuditLog::open(&store, Arc::new(Recovery::new(&[1; 32]))).expect("audit log"));
        (dir, log)
    }

    fn rec(at_ms: i64, what: &str) -> Record {
        Record {
            at_ms,
            who: "alice".into(),
            what: what.into(),
            from: "127.0.0.1:1".into(),
            outcome: "ok".into(),
            target: String::new(),
        }
    }

    #[test]
    fn audited_methods_are_recognised_by_path() {
        assert_eq!(
            audited("/fleet.v1.HostService/RemoveHost"),
            Some("HostService/RemoveHost")
        );
        assert_eq!(
            audited("/fleet.v1.RolloutService/StartRollout"),
            Some("RolloutService/StartRollout")
        );
        assert_eq!(audited("/fleet.v1.HostService/ListHosts"), None);
        assert_eq!(audited("/fleet.v1.AuditService/ListAudit"), None);
        assert_eq!(audited("/fleet.v1.AgentService/Stream"), None);
        assert_eq!(audited("/other.v1.HostService/RemoveHost"), None);
    }

    #[test]
    fn entries_come_back_oldest_first_from_a_time() {
        let (_dir, log) = log();
        // Same millisecond twice: the sequence keeps both, in order.
        for (at, what) in [(1_000, "a"), (2_000, "b"), (2_000, "c"), (3_000, "d")] {
            log.record(&rec(at, what)).expect("record");
        }
        let whats = |v: Vec<Record>| v.into_iter().map(|r| r.what).collect::<Vec<_>>();
        assert_eq!(whats(log.since(0, MAX_LISTED).expect("all")), ["a", "b", "c", "d"]);
        assert_eq!(whats(log.since(2_000, MAX_LISTED).expect("since")), ["b", "c", "d"]);
        assert_eq!(whats(log.since(2_001, MAX_LISTED).expect("since")), ["d"]);
        assert_eq!(whats(log.since(0, 2).expect("newest two")), ["c", "d"]);
        // Reopened, the sequence goes on after the last key: a new entry in
        // the same millisecond as the last one comes after it.
        let again = AuditLog::open(&log.store, log.recovery.clone()).expect("reopen");
        again.record(&rec(3_000, "e")).expect("record");
        assert_eq!(whats(again.since(3_000, MAX_LISTED).expect("since")), ["d", "e"]);
    }

    #[test]
    fn who_is_the_operator_of_a_valid_token_only() {
        let (_dir, log) = log();
        let header = |s: &str| http::HeaderValue::from_str(s).expect("header");
        assert_eq!(log.who(Some(&header("Bearer fleet_op_abc123.s3cret"))), "alice");
        assert_eq!(log.who(Some(&header("Bearer fleet_op_abc123.wrong"))), UNAUTHENTICATED);
        assert_eq!(log.who(Some(&header("Bearer fleet_op_nobody.s3cret"))), UNAUTHENTICATED);
        assert_eq!(log.who(Some(&header("Bearer nonsense"))), UNAUTHENTICATED);
        assert_eq!(log.who(None), UNAUTHENTICATED);
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

    async fn call(log: &Arc<AuditLog>, path: &str, status: Option<&'static str>) {
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
        let mut svc = AuditLayer(log.clone()).layer(inner);
        let mut req = http::Request::builder()
            .uri(format!("https://c{path}"))
            .header("authorization", "Bearer fleet_op_abc123.s3cret")
            .body(())
            .expect("request");
        req.extensions_mut().insert(PeerInfo {
            remote: "10.0.0.7:40000".parse().expect("addr"),
            cert_fp: None,
            conn: Arc::new(crate::connections::ConnState::new(1, [10, 0, 0, 7].into())),
        });
        svc.ready().await.expect("ready").call(req).await.expect("answer");
    }

    #[tokio::test]
    async fn the_layer_records_mutating_calls_with_outcome_and_peer() {
        let (_dir, log) = log();
        call(&log, "/fleet.v1.TokenService/CreateToken", None).await;
        call(&log, "/fleet.v1.HostService/ListHosts", None).await;
        call(&log, "/fleet.v1.HostService/RemoveHost", Some("9")).await;
        let got = log.since(0, MAX_LISTED).expect("entries");
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
    async fn a_call_dropped_before_its_answer_is_recorded_as_cancelled() {
        let (_dir, log) = log();
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
        let got = log.since(0, MAX_LISTED).expect("entries");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].who, UNAUTHENTICATED);
        assert!(got[0].outcome.starts_with("cancelled"), "{}", got[0].outcome);
    }
}
