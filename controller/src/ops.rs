//! The operator API: `Session`, `HostService`, `TokenService`, and the gate
//! in front of every call (bearer token via `auth`, the permission via
//! `access`, failure limits).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fleet_proto::host_service_server::HostService;
use fleet_proto::session_server::Session;
use fleet_proto::token_service_server::TokenService;
use fleet_proto::{
    now_ms, CreateTokenRequest, CreateTokenResponse, GetHostRequest, Host, JoinToken, LabelHostRequest,
    ListHostsRequest, ListHostsResponse, ListTokensRequest, ListTokensResponse, PruneHostsRequest, PruneHostsResponse,
    RemoveHostRequest, RemoveHostResponse, RevokeTokenRequest, WhoAmIRequest, WhoAmIResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::access::{self, Callee};
use crate::audit;
use crate::auth::{operator, Authenticator, Operator, JOIN_TOKEN_PREFIX};
use crate::config::MIN_TOKEN_CERT_TTL;
use crate::error::Error;
use crate::fleet::Fleet;
use crate::selector::parse_selector;
use crate::store::{secret_hash, utc, TokenRecord};
use crate::tls::PeerInfo;

/// The gate in front of every call: an agent's method passes (its own
/// authentication is mTLS or a join token); an operator's method needs a
/// valid bearer token (`auth::authenticate`) whose role grants the
/// permission [`access::TABLE`] names for it; any other method is refused.
/// The authenticated [`Operator`] goes into the request's extensions for
/// the handler's scope checks. A source address with too many failed
/// authentications (`limits.auth_failures_per_source`) is refused with
/// RESOURCE_EXHAUSTED before its token is even looked at, so secrets cannot
/// be guessed at speed.
#[derive(Clone)]
pub struct OperatorGate {
    /// How tokens are checked.
    pub auth: Authenticator,
}

impl OperatorGate {
    /// Who calls `path`, from `source`, with `authorization`, and whether
    /// they may: the operator, or the refusal.
    fn admit(
        &self,
        path: &str,
        source: Option<IpAddr>,
        authorization: Option<&http::HeaderValue>,
        note: Option<&audit::Note>,
    ) -> Result<Option<Operator>, Error> {
        let (method, permission) = match access::callee(path) {
            // The dashboard checks its own callers (a token in a cookie).
            Callee::Agent | Callee::Public | Callee::Web => return Ok(None),
            Callee::Unknown => return Err(access::unknown_method(path).into()),
            Callee::Operator(m, p) => (m, p),
        };
        let op = self.auth.check(source, authorization)?;
        // The audit layer outside records who asked, refused or not.
        if let Some(note) = note {
            note.set(|d| d.who = Some(op.name.clone()));
        }
        access::authorize(&op, method, permission)?;
        Ok(Some(op))
    }
}

impl<S> tower::Layer<S> for OperatorGate {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

/// The service [`OperatorGate`] wraps around the router.
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: OperatorGate,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let source = req.extensions().get::<PeerInfo>().map(|p| p.remote.ip());
        let admitted = self.gate.admit(
            req.uri().path(),
            source,
            req.headers().get(http::header::AUTHORIZATION),
            req.extensions().get::<audit::Note>(),
        );
        match admitted {
            Ok(op) => {
                if let Some(op) = op {
                    req.extensions_mut().insert(op);
                }
                Box::pin(self.inner.call(req))
            }
            Err(e) => {
                let refusal = Status::from(e).into_http::<RB>();
                Box::pin(std::future::ready(Ok(refusal)))
            }
        }
    }
}

/// `Session/WhoAmI`.
pub struct SessionService;

#[tonic::async_trait]
impl Session for SessionService {
    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let op = operator(&req);
        Ok(Response::new(WhoAmIResponse {
            name: op.name,
            role: op.role.word().into(),
            controller_version: env!("CARGO_PKG_VERSION").into(),
            scope: Some(op.scope.to_proto()),
            token_id: op.token_id,
            token_expires_at_ms: op.token_expires_at_ms,
            permissions: op.role.permissions().iter().map(|p| p.word().into()).collect(),
        }))
    }
}

/// `HostService`.
pub struct HostsService(pub Arc<Fleet>);

#[tonic::async_trait]
impl HostService for HostsService {
    async fn list_hosts(&self, req: Request<ListHostsRequest>) -> Result<Response<ListHostsResponse>, Status> {
        let r = req.get_ref();
        fleet_proto::limits::check_list_hosts(r).map_err(Error::from)?;
        let selector = parse_selector(&r.selector).map_err(Error::from)?;
        let hosts = self.0.hosts_listed(&selector)?;
        let total = hosts.len() as u32;
        let limits = crate::paging::Limits {
            items: r.page_size as usize,
            bytes: fleet_proto::limits::MAX_PAGE_BYTES,
        };
        let page = crate::paging::page(
            hosts,
            crate::fleet::host_list_key,
            Message::encoded_len,
            &r.page_token,
            limits,
        );
        Ok(Response::new(ListHostsResponse {
            hosts: page.items,
            next_page_token: page.next,
            total,
        }))
    }

    async fn get_host(&self, req: Request<GetHostRequest>) -> Result<Response<Host>, Status> {
        let host = self.0.resolve_host(&req.get_ref().id)?;
        let name = host.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default();
        let mut shared: Vec<String> = (self.0.store.hosts_named(&name).map_err(Error::Store)?)
            .into_iter()
            .map(|h| h.id)
            .filter(|id| *id != host.id)
            .collect();
        shared.sort();
        let mut host = self.0.view(host);
        host.same_hostname = shared;
        Ok(Response::new(host))
    }

    async fn label_host(&self, req: Request<LabelHostRequest>) -> Result<Response<Host>, Status> {
        let op = operator(&req);
        let note = audit::note(&req);
        let r = req.into_inner();
        fleet_proto::limits::check_label_host(&r).map_err(Error::from)?;
        let host = self.0.resolve_host(&r.id)?;
        let set: BTreeMap<&String, &String> = r.set.iter().collect();
        note.set(|d| {
            d.hosts = vec![host.id.clone()];
            d.target = set
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(r.remove.iter().map(|k| format!("-{k}")))
                .collect::<Vec<_>>()
                .join(" ");
        });
        let updated = self
            .0
            .store
            .update_host(&host.id, |h| {
                for k in &r.remove {
                    h.labels.remove(k);
                }
                h.labels.extend(r.set.clone());
            })
            .map_err(Error::Store)?
            .ok_or_else(|| Error::HostGone(host.id.clone()))?;
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(host_id = %host.id, operator = %op.name, "host labels changed");
        Ok(Response::new(self.0.view(updated)))
    }

    async fn remove_host(&self, req: Request<RemoveHostRequest>) -> Result<Response<RemoveHostResponse>, Status> {
        let op = operator(&req);
        let host = self.0.resolve_host(&req.get_ref().id)?;
        audit::note(&req).set(|d| d.hosts = vec![host.id.clone()]);
        let (_, revoked) = self
            .0
            .store
            .remove_host(&host.id)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::HostGone(host.id.clone()))?;
        // Durable first: a controller crash right after must not resurrect it.
        self.0.store.flush().await.map_err(Error::Store)?;
        self.0.limits.renewals.forget(&host.id);
        let stream_cut = self.0.registry.cut(
            &host.id,
            Error::Denied(format!(
                "host {} was removed from the fleet by operator {}; its certificate is revoked",
                host.id, op.name
            )),
        );
        tracing::info!(host_id = %host.id, operator = %op.name, revoked, stream_cut, "host removed");
        self.0
            .events
            .note(fleet_proto::FleetEventKind::HostRemoved, &op.name, |e| {
                e.host_id = host.id.clone();
                e.hostname = host.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default();
                e.detail = format!("removed by {}; {revoked} certificates revoked", op.name);
            });
        Ok(Response::new(RemoveHostResponse {
            host_id: host.id,
            revoked_certificates: revoked,
            stream_cut,
        }))
    }

    async fn prune_hosts(&self, req: Request<PruneHostsRequest>) -> Result<Response<PruneHostsResponse>, Status> {
        let op = operator(&req);
        let note = audit::note(&req);
        let r = req.into_inner();
        fleet_proto::limits::check_duration_ms(
            "disconnected_for",
            r.disconnected_for_ms,
            fleet_proto::limits::MAX_DURATION_MS,
        )
        .map_err(Error::from)?;
        if r.disconnected_for_ms < crate::retire::MIN_PRUNE_MS {
            return Err(Error::invalid(
                "disconnected_for",
                "--disconnected-for must be at least 1m: shorter would remove hosts that are only reconnecting",
            )
            .into());
        }
        let now = fleet_proto::now_ms();
        let removed = if r.dry_run {
            crate::retire::stale(&self.0, r.disconnected_for_ms, now)
        } else {
            crate::retire::prune(&self.0, r.disconnected_for_ms, now, &op.name).await
        }
        .map_err(Error::Store)?;
        note.set(|d| {
            d.dry_run = r.dry_run;
            d.target = format!("{} hosts", removed.len());
            d.hosts = removed.iter().map(|h| h.id.clone()).collect();
        });
        Ok(Response::new(PruneHostsResponse { removed }))
    }
}

/// `TokenService`.
pub struct TokensService(pub Arc<Fleet>);

fn to_wire(t: &TokenRecord, now: i64) -> JoinToken {
    JoinToken {
        id: t.id.clone(),
        labels: t.labels.clone().into_iter().collect(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        max_uses: t.max_uses,
        uses: t.uses,
        revoked_at_ms: t.revoked_at_ms,
        created_by: t.created_by.clone(),
        description: t.description.clone(),
        state: t.state(now).into(),
        cert_ttl_ms: t.cert_ttl_ms,
        allowed_label_keys: t.allowed_label_keys.clone(),
    }
}

/// Longest a join token or certificate may live.
const MAX_TTL: Duration = Duration::from_secs(366 * 86400);

#[tonic::async_trait]
impl TokenService for TokensService {
    async fn create_token(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        let op = operator(&req);
        let req_note = audit::note(&req);
        let r = req.into_inner();
        fleet_proto::limits::check_create_token(&r).map_err(Error::from)?;
        let mut allowed_label_keys = r.allowed_label_keys.clone();
        allowed_label_keys.sort();
        allowed_label_keys.dedup();
        let settings = &self.0.settings;
        let ttl = if r.ttl_ms == 0 {
            settings.token_ttl
        } else {
            Duration::from_millis(r.ttl_ms)
        };
        if ttl > MAX_TTL {
            return Err(Error::invalid("ttl", "a join token may live at most 366 days").into());
        }
        let cert_ttl = if r.cert_ttl_ms == 0 {
            settings.cert_ttl
        } else {
            Duration::from_millis(r.cert_ttl_ms)
        };
        if r.cert_ttl_ms != 0 && cert_ttl < MIN_TOKEN_CERT_TTL {
            return Err(Error::invalid(
                "cert_ttl",
                format!(
                    "certificate lifetime {} is too short: the minimum is 1h",
                    humantime::format_duration(cert_ttl)
                ),
            )
            .into());
        }
        if cert_ttl > MAX_TTL {
            return Err(Error::invalid("cert_ttl", "a certificate may live at most 366 days").into());
        }
        let now = now_ms();
        let id = crate::random_hex(6);
        let secret = crate::random_hex(24);
        let rec = TokenRecord {
            id: id.clone(),
            secret_sha256: secret_hash(&secret),
            labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as i64,
            // 0 is "unlimited" in the record; the request's 0 is "the default".
            max_uses: if r.unlimited {
                0
            } else if r.max_uses == 0 {
                settings.token_uses
            } else {
                r.max_uses
            },
            uses: 0,
            revoked_at_ms: 0,
            created_by: op.name.clone(),
            description: r.description,
            cert_ttl_ms: cert_ttl.as_millis() as u64,
            allowed_label_keys,
        };
        req_note.set(|d| d.target = format!("join token {id}"));
        self.0.store.put_token(&rec).map_err(Error::Store)?;
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(token_id = %id, operator = %op.name, expires = %utc(rec.expires_at_ms), "join token created");
        Ok(Response::new(CreateTokenResponse {
            token: Some(to_wire(&rec, now)),
            secret: format!("{JOIN_TOKEN_PREFIX}{id}.{secret}"),
        }))
    }

    async fn list_tokens(&self, req: Request<ListTokensRequest>) -> Result<Response<ListTokensResponse>, Status> {
        let now = now_ms();
        let mut tokens: Vec<JoinToken> = self
            .0
            .store
            .tokens()
            .map_err(Error::Store)?
            .iter()
            .map(|t| to_wire(t, now))
            .filter(|t| req.get_ref().all || t.state() == fleet_proto::TokenState::Active)
            .collect();
        tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(&self, req: Request<RevokeTokenRequest>) -> Result<Response<JoinToken>, Status> {
        let op = operator(&req);
        // Accept the whole token string too, but never keep or log its secret.
        let id = fleet_proto::token_public_id(&req.get_ref().id);
        audit::note(&req).set(|d| d.target = format!("join token {id}"));
        let rec = self
            .0
            .store
            .revoke_token(&id, now_ms())
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownToken(id.clone()))?;
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(token_id = %id, operator = %op.name, "join token revoked");
        self.0
            .events
            .note(fleet_proto::FleetEventKind::JoinTokenRevoked, &op.name, |e| {
                e.detail = format!("join token {id} revoked");
            });
        Ok(Response::new(to_wire(&rec, now_ms())))
    }
}
