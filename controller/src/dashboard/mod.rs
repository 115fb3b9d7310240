//! The web dashboard, served by the controller on its own port under
//! `/ui/` (`access::WEB_PREFIX`): hosts, apps with their releases and
//! history, rollouts with live batch progress and each host's phases, the
//! audit log, and the fleet's events as they happen. Read-only. Pages are
//! rendered on the server ([`pages`], maud); one small script (`app.js`)
//! keeps a page's `<main>` current from server-sent events, without a
//! reload. Nothing to build but the controller.
//!
//! Who may look: any operator token (a viewer's is enough). `POST
//! /ui/login` checks the token the way every gRPC call is checked
//! (`auth::Authenticator`: the same failure limit per source) and keeps
//! it in an `HttpOnly; Secure; SameSite=Strict` cookie scoped to `/ui/`;
//! every request checks it again, so a revoked or expired token is out at
//! its next page, and a live stream ends within `auth::TOKEN_RECHECK`.
//! Pages carry a strict Content-Security-Policy (scripts and styles only
//! from `/ui/`, no inline script) and are never cached.

pub mod pages;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fleet_proto::{AuditEntry, EventKind, Rollout};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame};
use maud::Markup;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::access::{self, Permission};
use crate::auth::{Authenticator, Operator};
use crate::error::Error;
use crate::events::Watch;
use crate::fleet::Fleet;
use pages::{Live, Viewer};

/// The cookie that carries the operator token.
const COOKIE: &str = "fleet_ui";
/// How long the browser keeps the cookie (the token's own expiry and
/// revocation still apply at every request).
const COOKIE_MAX_AGE_S: u64 = 12 * 3600;
/// The most audit entries and events a page lists.
const LISTED: usize = 500;
/// A comment line on idle live streams, so proxies keep them open.
const KEEPALIVE: Duration = Duration::from_secs(15);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A response body: a page, or a live stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The dashboard: a tower service tonic routes `/ui/*` to.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    fleet: Arc<Fleet>,
    auth: Authenticator,
}

impl Dashboard {
    /// The dashboard of `fleet`, checking tokens with `auth`.
    pub fn new(fleet: Arc<Fleet>, auth: Authenticator) -> Dashboard {
        Dashboard {
            inner: Arc::new(Inner { fleet, auth }),
        }
    }
}

impl tonic::server::NamedService for Dashboard {
    const NAME: &'static str = "ui";
}

impl tower::Service<Request<tonic::body::Body>> for Dashboard {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn html(status: StatusCode, m: Markup) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", full(m.into_string()))
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", full(""));
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The operator token in the request's cookie, if any.
fn cookie_token(req: &Request<tonic::body::Body>) -> Option<HeaderValue> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_string))
        .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
}

/// `name`'s value in a form body (`a=1&b=2`), %-decoded.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn source(req: &Request<tonic::body::Body>) -> Option<std::net::IpAddr> {
    req.extensions().get::<crate::tls::PeerInfo>().map(|p| p.remote.ip())
}

/// What went wrong, as the page says it: a missing thing is 404, the
/// rest is the controller's trouble (500).
fn failed(e: Error) -> Response<Body> {
    let missing = matches!(
        e,
        Error::UnknownApp(_) | Error::UnknownHost(_) | Error::UnknownRollout(_) | Error::AmbiguousHost { .. }
    );
    let status = if missing {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    html(status, pages::not_found(&e.to_string()))
}

impl Inner {
    async fn handle(&self, req: Request<tonic::body::Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let part = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "part=main"));
        let segments: Vec<&str> = path
            .trim_start_matches(access::WEB_PREFIX)
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["style.css"]) => {
                return respond(
                    StatusCode::OK,
                    "text/css; charset=utf-8",
                    full(include_str!("style.css")),
                )
            }
            (&Method::GET, ["app.js"]) => {
                return respond(
                    StatusCode::OK,
                    "text/javascript; charset=utf-8",
                    full(include_str!("app.js")),
                )
            }
            (&Method::GET, ["login"]) => return html(StatusCode::OK, pages::login(None)),
            (&Method::POST, ["login"]) => return self.login(req).await,
            (_, ["logout"]) => {
                return redirect(
                    "/ui/login",
                    Some(format!(
                        "{COOKIE}=; Path=/ui/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"
                    )),
                )
            }
            _ => {}
        }
        let op = match self.auth.check(source(&req), cookie_token(&req).as_ref()) {
            Ok(op) => op,
            // Not signed in, or the token no longer holds: sign in (again).
            Err(_) if part => return respond(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", full("")),
            Err(_) => return redirect("/ui/login", None),
        };
        if let Err(e) = access::authorize(&op, "dashboard", Permission::Read) {
            return html(StatusCode::FORBIDDEN, pages::not_found(&e.to_string()));
        }
        if req.method() != Method::GET {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                full("read-only"),
            );
        }
        let viewer = Viewer {
            name: op.name.clone(),
            role: op.role.word().to_string(),
        };
        let now = fleet_proto::now_ms();
        let f = &self.fleet;
        let page = |title: &str, live: Live<'_>, main: Markup| {
            if part {
                html(StatusCode::OK, main)
            } else {
                html(StatusCode::OK, pages::page(title, &viewer, live, main))
            }
        };
        let result: Result<Response<Body>, Error> = match segments.as_slice() {
            [] | ["hosts"] => f.hosts_listed(&[]).map(|hosts| {
                let after = req.uri().query().and_then(|q| form_value(q.as_bytes(), "after"));
                page(
                    "Hosts",
                    Live::Refresh(
                        "host_connected,host_disconnected,host_enrolled,host_removed,rollout_host_done,host_task_ended",
                    ),
                    pages::hosts(hosts, after.as_deref().unwrap_or_default(), now),
                )
            }),
            ["hosts", id] => f
                .resolve_host(id)
                .map(|h| page("Host", Live::No, pages::host(&f.view(h), now))),
            ["apps"] => self.apps().map(|apps| page("Apps", Live::No, pages::apps(&apps))),
            ["apps", name] => self.app(name).map(|(status, releases, history)| {
                page(
                    name,
                    Live::Refresh("rollout_ended,rollout_host_done,host_task_ended,release_pushed,release_deleted"),
                    pages::app(&status, &releases, &history, now),
                )
            }),
            ["rollouts"] => self.rollouts().map(|list| {
                page(
                    "Rollouts",
                    Live::Refresh("rollout_started,batch_started,batch_done,rollout_ended,rollout_host_done"),
                    pages::rollouts(&list, now),
                )
            }),
            ["rollouts", id] => match f.rollouts.records.get(id).map_err(Error::Store) {
                Ok(Some(r)) => {
                    let live = if r.state().ended() { Live::No } else { Live::Rollout(id) };
                    Ok(page(&format!("Rollout {id}"), live, pages::rollout(&r, now)))
                }
                Ok(None) => Err(Error::UnknownRollout(id.to_string())),
                Err(e) => Err(e),
            },
            ["audit"] => self
                .audit()
                .map(|entries| page("Audit", Live::No, pages::audit(&entries))),
            ["events"] => f
                .events
                .newest(LISTED)
                .map_err(Error::Store)
                .map(|list| page("Events", Live::Append, pages::events(&list))),
            ["sse", "events"] => Ok(self.events_stream(op)),
            ["sse", "rollouts", id] => Ok(self.rollout_stream(op, id)),
            _ => Ok(html(
                StatusCode::NOT_FOUND,
                pages::not_found(&format!("no page {path}")),
            )),
        };
        result.unwrap_or_else(failed)
    }

    async fn login(&self, req: Request<tonic::body::Body>) -> Response<Body> {
        let from = source(&req);
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return html(StatusCode::BAD_REQUEST, pages::login(Some("the form is too large"))),
        };
        let token = form_value(&body, "token").unwrap_or_default();
        let header = HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok();
        match self.auth.check(from, header.as_ref()) {
            Ok(op) => {
                tracing::info!(operator = %op.name, source = ?from, "dashboard sign-in");
                redirect(
                    "/ui/hosts",
                    Some(format!(
                        "{COOKIE}={}; Path=/ui/; HttpOnly; Secure; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_S}",
                        token.trim()
                    )),
                )
            }
            Err(e) => {
                let why = Error::from(e).to_string();
                html(StatusCode::UNAUTHORIZED, pages::login(Some(&why)))
            }
        }
    }

    fn apps(&self) -> Result<Vec<(fleet_proto::AppSpec, String)>, Error> {
        let f = &self.fleet;
        f.store
            .apps()
            .map_err(Error::Store)?
            .into_iter()
            .map(|a| {
                let release = f.rollouts.records.app_release(&a.name).map_err(Error::Store)?;
                Ok((a, release.unwrap_or_default()))
            })
            .collect()
    }

    #[allow(clippy::type_complexity)]
    fn app(&self, name: &str) -> Result<(fleet_proto::AppStatus, Vec<fleet_proto::Release>, Vec<Rollout>), Error> {
        let f = &self.fleet;
        let status = f.app_status(name)?;
        let releases = f.store.releases(name).map_err(Error::Store)?;
        let mut history: Vec<Rollout> = self.rollouts()?.into_iter().filter(|r| r.app == name).collect();
        history.truncate(LISTED);
        Ok((status, releases, history))
    }

    /// Every rollout, newest first.
    fn rollouts(&self) -> Result<Vec<Rollout>, Error> {
        let mut all = self.fleet.rollouts.records.all().map_err(Error::Store)?;
        all.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        all.truncate(LISTED);
        Ok(all)
    }

    fn audit(&self) -> Result<Vec<AuditEntry>, Error> {
        let entries = self
            .fleet
            .audit
            .since(0, LISTED, &crate::audit::Filter::default())
            .map_err(Error::Store)?;
        Ok(entries.into_iter().map(AuditEntry::from).collect())
    }

    /// A live stream: `frames` of `op`, until the browser leaves, the
    /// controller stops, or `op`'s token stops holding.
    fn stream(&self, op: Operator, mut frames: mpsc::Receiver<String>) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let shutdown = self.fleet.shutdown.clone();
        let store = self.fleet.store.clone();
        self.fleet.tracker.spawn(async move {
            let mut recheck = tokio::time::interval(crate::auth::TOKEN_RECHECK);
            let mut keepalive = tokio::time::interval(KEEPALIVE);
            recheck.tick().await;
            keepalive.tick().await;
            // Open the stream at once, so the browser knows it is live.
            if tx.send(Ok(Frame::data(Bytes::from(": live\n\n")))).await.is_err() {
                return;
            }
            loop {
                let text = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = keepalive.tick() => ": ping\n\n".to_string(),
                    _ = recheck.tick() => {
                        if crate::auth::still_valid(&store, &op, fleet_proto::now_ms()).is_err() {
                            let _ = tx.send(Ok(Frame::data(Bytes::from("event: end\ndata: signed out\n\n")))).await;
                            return;
                        }
                        continue;
                    }
                    f = frames.recv() => match f {
                        Some(f) => f,
                        None => return,
                    },
                };
                if tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_err() {
                    return;
                }
            }
        });
        respond(
            StatusCode::OK,
            "text/event-stream",
            StreamBody::new(ReceiverStream::new(rx)).boxed_unsync(),
        )
    }

    /// The fleet's events from now: `event: fleet`, data `{kind, row}`.
    fn events_stream(&self, op: Operator) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Result<fleet_proto::FleetEvent, ()>>(256);
        let watch = Watch {
            since_ms: fleet_proto::now_ms(),
            follow: true,
            ..Default::default()
        };
        let (ftx, frx) = mpsc::channel::<String>(256);
        let f = &self.fleet;
        f.tracker.spawn(crate::events::run_watch(
            f.events.clone(),
            watch,
            tx,
            f.shutdown.child_token(),
        ));
        f.tracker.spawn(async move {
            let mut events = ReceiverStream::new(rx);
            loop {
                let e = tokio::select! {
                    // The browser left: the watch ends with this receiver.
                    _ = ftx.closed() => return,
                    e = events.next() => match e {
                        Some(Ok(e)) => e,
                        _ => return,
                    },
                };
                let data = serde_json::json!({
                    "kind": e.kind().word(),
                    "row": pages::event_row(&e).into_string(),
                });
                if ftx.send(format!("event: fleet\ndata: {data}\n\n")).await.is_err() {
                    return;
                }
            }
        });
        self.stream(op, frx)
    }

    /// Rollout `id`'s changes: `event: change` (data: the event's kind),
    /// and `event: end` once it ended.
    fn rollout_stream(&self, op: Operator, id: &str) -> Response<Body> {
        let mut events = self.fleet.rollouts.events(id).subscribe();
        let (ftx, frx) = mpsc::channel::<String>(64);
        let shutdown = self.fleet.shutdown.clone();
        self.fleet.tracker.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ftx.closed() => return,
                    e = events.recv() => e,
                };
                let kind = match next {
                    Ok(e) => e.kind(),
                    // Fell behind: one refresh catches up.
                    Err(broadcast::error::RecvError::Lagged(_)) => EventKind::Snapshot,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let frame = if kind == EventKind::RolloutEnded {
                    "event: end\ndata: rollout_ended\n\n".to_string()
                } else {
                    format!("event: change\ndata: {}\n\n", kind.word())
                };
                if ftx.send(frame).await.is_err() || kind == EventKind::RolloutEnded {
                    return;
                }
            }
        });
        self.stream(op, frx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value(b"a=1&token=fleet_op_ab12.c%2Bd+e", "token").as_deref(),
            Some("fleet_op_ab12.c+d e")
        );
        assert_eq!(form_value(b"tokenx=1", "token"), None);
        // As browsers do (WHATWG): a broken escape stays as it is.
        assert_eq!(form_value(b"token=%zz", "token").as_deref(), Some("%zz"));
        assert_eq!(form_value(b"after=web%00id1", "after").as_deref(), Some("web\0id1"));
    }
}
