//! `AgentService/Stream`: one task per connected agent.
//!
//! The handler authenticates the stream (client certificate → host), waits
//! for hello, answers welcome, then hands the inbound half to a session task
//! that records heartbeats, answers renewals, and ends the stream when the
//! registry cuts it (host removed, replaced, shutdown).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::agent_message::Body as FromAgent;
use fleet_proto::agent_service_server::AgentService;
use fleet_proto::controller_message::Body as ToAgent;
use fleet_proto::transport::fingerprint;
use fleet_proto::{
    now_ms, AgentMessage, ArtifactChunk, ControllerMessage, FetchArtifactRequest, Release, RenewResponse, Welcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::grants::GrantRefusal;
use crate::registry::{Outbound, SessionHandle};
use crate::selector::parse_selector;
use crate::store::CertRecord;

/// How long an agent has to send hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Outbound queue per agent: bounded, so a stuck agent cannot grow memory.
const OUTBOUND: usize = 16;

/// The AgentService.
pub struct StreamService(pub Arc<Fleet>);

/// A host's outbound queue ([`Outbound`]) as the stream tonic sends: each
/// message unboxed as it leaves.
pub struct OutboundStream(ReceiverStream<Result<Box<ControllerMessage>, Status>>);

impl tokio_stream::Stream for OutboundStream {
    type Item = Result<ControllerMessage, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|m| m.map(|b| *b)))
    }
}

#[tonic::async_trait]
impl AgentService for StreamService {
    type StreamStream = OutboundStream;
    type FetchArtifactStream = ReceiverStream<Result<ArtifactChunk, Status>>;

    async fn fetch_artifact(
        &self,
        req: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let fleet = &self.0;
        let Some(fp) = crate::tls::peer_fingerprint(&req) else {
            return Err(Error::NoClientCert("downloading a release needs the host's client certificate").into());
        };
        let cert = fleet
            .store
            .cert_host(&fp)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::Denied("this certificate was revoked (the host was removed)".into()))?;
        let release = authorize_fetch(fleet, &cert.host_id, req.get_ref())?;
        tracing::debug!(host_id = %cert.host_id, sha256 = %req.get_ref().sha256, offset = req.get_ref().offset, "artifact download");
        crate::releases::await_copy(fleet, &release).await?;
        Ok(Response::new(crate::releases::fetch(fleet, req.get_ref(), &release)?))
    }

    async fn stream(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let fleet = self.0.clone();
        let remote = crate::tls::peer_addr(&req).unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
        let Some(fp) = crate::tls::peer_fingerprint(&req) else {
            return Err(Error::NoClientCert(
                "the agent stream needs a client certificate; enroll the agent with a join token first",
            )
            .into());
        };
        // Checked per RPC as well as per handshake: HTTP/2 lets a client open
        // new streams on a connection made before its host was removed.
        let cert = fleet.store.cert_host(&fp).map_err(Error::Store)?.ok_or_else(|| {
            Error::Denied(
                "this certificate was revoked (the host was removed); enroll again with a new join token".into(),
            )
        })?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Error::HelloTimeout)??;
        let hello = match first.and_then(|m| m.body) {
            Some(FromAgent::Hello(hello)) => hello,
            Some(FromAgent::Goodbye(bye)) => {
                goodbye(&fleet, &cert.host_id, &bye, remote)?;
                // Nothing to say: the stream ends at once (its sender is dropped).
                let (_, rx) = mpsc::channel(1);
                return Ok(Response::new(OutboundStream(ReceiverStream::new(rx))));
            }
            _ => {
                return Err(Error::Protocol("the first message on the agent stream must be hello (or goodbye)").into())
            }
        };
        let host_id = cert.host_id.clone();
        if hello.host_id != host_id {
            return Err(Error::Denied(format!(
                "hello names host {} but the client certificate belongs to host {host_id}",
                hello.host_id
            ))
            .into());
        }
        // The same hostname rule as at enrollment: a host's facts reach
        // operators' terminals and `--host NAME` lookups.
        if let Some(facts) = &hello.facts {
            if let Err(e) = fleet_proto::check_hostname(&facts.hostname) {
                tracing::warn!(host_id, error = %e, "hello refused");
                return Err(Error::invalid("hello.facts.hostname", e).into());
            }
        }
        let now = now_ms();
        let stored = fleet
            .store
            .update_host(&host_id, |h| {
                h.facts = hello.facts.clone();
                h.inventory = hello.inventory.clone();
                h.last_seen_ms = now;
                // Back after a goodbye: reinstalled.
                h.uninstalled_at_ms = 0;
            })
            .map_err(Error::Store)?
            .ok_or_else(|| removed(&host_id))?;

        let (tx, rx) = mpsc::channel(OUTBOUND);
        let session = fleet
            .registry
            .register(&host_id, remote, &fleet.shutdown, tx.clone(), now);
        let welcome = ControllerMessage {
            body: Some(ToAgent::Welcome(Welcome {
                host_id: host_id.clone(),
                heartbeat_interval_ms: fleet.settings.heartbeat_interval.as_millis() as u64,
                labels: stored.labels.clone(),
            })),
        };
        // Invariant: the channel was just made with room for OUTBOUND messages.
        let _ = tx.try_send(Ok(Box::new(welcome)));
        let hostname = hello.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default();
        tracing::info!(host_id, %hostname, %remote, "agent connected");
        fleet
            .events
            .note(fleet_proto::FleetEventKind::HostConnected, "controller", |e| {
                e.host_id = host_id.clone();
                e.hostname = hostname.clone();
                e.detail = format!("from {remote}");
            });
        // A CA rotation under way and a certificate from the old CA: renew.
        if let Some(plan) = &fleet.authority.current().rotation {
            if cert.issued_at_ms < plan.started_at_ms {
                ask_to_renew(&fleet, &host_id, plan);
            }
        }
        fleet
            .rollouts
            .signal(crate::rollouts::Signal::HostConnected(host_id.clone()));
        // This stream is authenticated with `fp` and said hello: if `fp` is
        // a renewal, the agent has moved to it, and the certificate it
        // replaces is revoked. The stream that still used the old one (if
        // any) was just cut by `register`, so no live stream loses its
        // certificate, and the new one is proven before the old one goes.
        match fleet.store.confirm_cert(&fp) {
            Ok(None) => {}
            Ok(Some(old)) => {
                if let Err(e) = fleet.store.flush().await {
                    tracing::error!(host_id, error = %e, "cannot make the revocation of a replaced certificate durable");
                }
                tracing::info!(host_id, revoked = %old, "replaced certificate revoked: the host uses its renewed one");
            }
            Err(e) => tracing::error!(host_id, error = %e, "cannot revoke the certificate this one replaces"),
        }
        let owner = fleet.clone();
        owner
            .tracker
            .spawn(run_session(fleet, host_id, fp, session, inbound, tx));
        Ok(Response::new(OutboundStream(ReceiverStream::new(rx))))
    }
}

/// The refusal of a host whose entry is gone.
fn removed(host_id: &str) -> Error {
    Error::Denied(format!("host {host_id} was removed from the fleet"))
}

/// Lets a host download an artifact only when a deploy task the controller
/// sent it names the artifact (the task's grant, see `grants`), the release
/// still exists, and its app's selector matches the host's labels now.
/// Returns the release the grant names.
fn authorize_fetch(fleet: &Fleet, host_id: &str, req: &FetchArtifactRequest) -> Result<Release> {
    let denied = |why: String| {
        tracing::warn!(host_id, sha256 = %req.sha256, reason = %why, "artifact download refused");
        Error::Denied(format!(
            "host {host_id} may not download artifact {}: {why}. A host downloads only releases a deploy or \
             rollout sent it, of apps whose selector matches its labels; deploy the release to it with \
             'fleetctl deploy APP --release V --host {host_id}' or 'fleetctl rollout APP'",
            req.sha256
        ))
    };
    let grant = match (
        fleet.grants.verify(host_id, &req.sha256, req.grant.as_ref(), now_ms()),
        &req.grant,
    ) {
        (Ok(()), Some(grant)) => grant,
        (Err(refusal), _) => return Err(denied(refusal.to_string())),
        (Ok(()), None) => return Err(denied(GrantRefusal::Missing.to_string())),
    };
    let app = &grant.app;
    let spec = fleet
        .store
        .app(app)?
        .ok_or_else(|| denied(format!("app {app} no longer exists")))?;
    let host = fleet.store.host(host_id)?.ok_or_else(|| removed(host_id))?;
    let selector = parse_selector(&spec.selector)?;
    if let Some((k, v)) = selector.iter().find(|(k, v)| host.labels.get(k) != Some(v)) {
        return Err(denied(format!(
            "its labels no longer match app {app}'s selector ({k}={v} is not among them)"
        )));
    }
    match fleet.store.release(app, &grant.version)? {
        Some(r) if r.artifact.as_ref().is_some_and(|a| a.sha256 == req.sha256) => Ok(r),
        _ => Err(denied(format!("release {app} {} no longer exists", grant.version))),
    }
}

/// Reads one agent's messages until the stream ends or is cut.
async fn run_session(
    fleet: Arc<Fleet>,
    host_id: String,
    cert_fp: String,
    session: SessionHandle,
    mut inbound: Streaming<AgentMessage>,
    tx: Outbound,
) {
    // Three missed heartbeats and the host counts as gone, even if TCP has
    // not noticed yet.
    let silence = fleet.settings.heartbeat_interval * 3 + Duration::from_secs(1);
    let ended = loop {
        let msg = tokio::select! {
            _ = session.cancel.cancelled() => {
                let status = Status::from(session.take_reason());
                // The receiver may be gone already; the stream is over either way.
                let _ = tx.send(Err(status.clone())).await;
                break format!("cut: {}", status.message());
            }
            m = tokio::time::timeout(silence, inbound.message()) => m,
        };
        let msg = match msg {
            Err(_) => break format!("no message for {}s", silence.as_secs()),
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break "agent closed the stream".to_string(),
            Ok(Err(status)) => break format!("stream error: {}", status.message()),
        };
        let now = now_ms();
        match msg.body {
            Some(FromAgent::Heartbeat(hb)) => {
                // A clock ahead of ours counts as no delay.
                let delay_ms = now.saturating_sub(hb.sampled_at_ms).max(0);
                fleet.metrics.heartbeat_delay_seconds.observe(delay_ms as f64 / 1000.0);
                fleet.registry.seen(&host_id, session.id, now, hb.metrics)
            }
            Some(FromAgent::Renew(renew)) => {
                fleet.registry.seen(&host_id, session.id, now, None);
                match renew_certificate(&fleet, &host_id, &cert_fp, &renew.csr_der).await {
                    Ok(resp) => {
                        let _ = tx
                            .send(Ok(Box::new(ControllerMessage {
                                body: Some(ToAgent::Renewed(resp)),
                            })))
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(host_id, error = %e, "renewal refused");
                        let _ = tx.send(Err(e.into())).await;
                        break "renewal refused".to_string();
                    }
                }
            }
            Some(FromAgent::Inventory(inv)) => {
                fleet.registry.seen(&host_id, session.id, now, None);
                if let Err(e) = fleet.store.update_host(&host_id, |h| h.inventory = Some(inv.clone())) {
                    tracing::error!(host_id, error = %e, "could not store inventory");
                }
            }
            Some(FromAgent::TaskProgress(p)) => {
                fleet.registry.seen(&host_id, session.id, now, None);
                tracing::info!(host_id, task_id = %p.task_id, phase = %p.phase, state = p.state, duration_ms = p.duration_ms, detail = %p.detail, "task progress");
                if crate::tasks::is_final(&p) {
                    fleet.metrics.host_task_ended(&p);
                } else {
                    fleet.metrics.phase_done(&p);
                }
                fleet.tasks.progress(&host_id, p);
            }
            Some(FromAgent::Hello(_) | FromAgent::Goodbye(_)) | None => {
                let _ = tx
                    .send(Err(Error::Protocol(
                        "hello and goodbye are only valid as the first message",
                    )
                    .into()))
                    .await;
                break "protocol error".to_string();
            }
        }
    };
    if let Some(live) = fleet.registry.unregister(&host_id, session.id) {
        fleet.tasks.host_gone(&host_id, &ended);
        let last_seen = live.last_seen_ms;
        if let Err(e) = fleet
            .store
            .update_host(&host_id, |h| h.last_seen_ms = h.last_seen_ms.max(last_seen))
        {
            tracing::warn!(host_id, error = %e, "could not record last seen");
        }
        // Only the host's current session: one replaced by a newer stream
        // of the same host is no disconnection.
        let hostname = match fleet.store.host(&host_id) {
            Ok(Some(h)) => h.facts.map(|f| f.hostname).unwrap_or_default(),
            _ => String::new(),
        };
        fleet
            .events
            .note(fleet_proto::FleetEventKind::HostDisconnected, "controller", |e| {
                e.host_id = host_id.clone();
                e.hostname = hostname;
                e.detail = ended.clone();
            });
    }
    tracing::info!(host_id, reason = %ended, "agent disconnected");
}

/// Answers a renewal on a stream authenticated with `current_fp`: one in
/// flight per host and `limits.renew_min_interval` between them (else
/// RESOURCE_EXHAUSTED); the new certificate records that it replaces
/// `current_fp`.
async fn renew_certificate(fleet: &Fleet, host_id: &str, current_fp: &str, csr_der: &[u8]) -> Result<RenewResponse> {
    fleet_proto::limits::check_csr(csr_der)?;
    let host = fleet.store.host(host_id)?.ok_or_else(|| removed(host_id))?;
    // The same lifetime the host was first given: the token's choice.
    let ttl = match fleet.store.token(&host.token_id)? {
        Some(t) => Duration::from_millis(t.cert_ttl_ms),
        None => fleet.settings.cert_ttl,
    };
    let material = fleet.authority.current();
    // During a CA rotation a host still on the old CA's certificate renews
    // without waiting out the minimum interval (it was asked to).
    let rotating = match &material.rotation {
        Some(plan) => fleet
            .store
            .cert_host(current_fp)?
            .is_some_and(|c| c.issued_at_ms < plan.started_at_ms),
        None => false,
    };
    let permit = if rotating {
        fleet.limits.renewals.begin_rotating(host_id, Instant::now())?
    } else {
        fleet.limits.renewals.begin(host_id, ttl, Instant::now())?
    };
    let signed = material
        .signing
        .sign_client(csr_der, host_id, ttl)
        .map_err(|e| Error::invalid("csr", e.to_string()))?;
    let rec = CertRecord {
        replaces: Some(current_fp.to_string()),
        host_id: host_id.to_string(),
        issued_at_ms: now_ms(),
        not_after_ms: signed.not_after_ms,
    };
    // A sled transaction may wait on sled's IO buffers: off the runtime.
    let (store, fp) = (fleet.store.clone(), fingerprint(&signed.der));
    let added = tokio::task::spawn_blocking(move || store.add_cert(&fp, &rec))
        .await
        .map_err(|e| Error::Internal(format!("the renewal task failed: {e}")))??;
    if !added {
        return Err(removed(host_id));
    }
    fleet.store.flush().await?;
    permit.issued(Instant::now());
    fleet.metrics.renewals.inc();
    tracing::info!(host_id, not_after = %crate::store::utc(signed.not_after_ms), "certificate renewed");
    Ok(RenewResponse {
        certificate_pem: signed.pem,
        not_after_ms: signed.not_after_ms,
        ca_pem: material.bundle_pem.clone(),
    })
}

/// Asks `host_id`'s agent, if connected, to renew onto the new CA of a
/// rotation (the agent skips it when its certificate is already newer).
pub fn ask_to_renew(fleet: &Fleet, host_id: &str, plan: &crate::rotation::Plan) {
    let Some(tx) = fleet.registry.sender(host_id) else {
        return;
    };
    let msg = ControllerMessage {
        body: Some(ToAgent::RenewNow(fleet_proto::RenewNow {
            issued_before_ms: plan.started_at_ms,
        })),
    };
    if tx.try_send(Ok(Box::new(msg))).is_err() {
        tracing::warn!(
            host_id,
            "cannot ask the agent to renew now (its queue is full); it renews at its next connection"
        );
    }
}

/// The host's agent is being uninstalled: mark the host, so operators see
/// it left rather than merely dropped off.
fn goodbye(
    fleet: &Fleet,
    host_id: &str,
    bye: &fleet_proto::Goodbye,
    remote: std::net::SocketAddr,
) -> Result<(), Status> {
    if bye.host_id != host_id {
        return Err(Error::Denied(format!(
            "goodbye names host {} but the client certificate belongs to host {host_id}",
            bye.host_id
        ))
        .into());
    }
    let now = now_ms();
    fleet
        .store
        .update_host(host_id, |h| {
            h.uninstalled_at_ms = now;
            h.last_seen_ms = h.last_seen_ms.max(now);
        })
        .map_err(Error::Store)?
        .ok_or_else(|| removed(host_id))?;
    let reason: String = bye.reason.chars().take(200).collect();
    tracing::info!(host_id, %remote, reason = %reason.escape_debug(), "agent uninstalled: the host left the fleet");
    Ok(())
}
