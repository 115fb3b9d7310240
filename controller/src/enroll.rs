//! `Enrollment/Enroll`: a join token and a CSR become a host and its first
//! client certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::enrollment_server::Enrollment;
use fleet_proto::transport::fingerprint;
use fleet_proto::{now_ms, EnrollRequest, EnrollResponse, Host};
use tonic::{Request, Response, Status};

use crate::auth::{check_host_says, parse_token, JOIN_TOKEN_PREFIX};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::store::{secret_hash, CertRecord, EnrollError, TokenRefusal};

/// The Enrollment service.
pub struct EnrollmentService(pub Arc<Fleet>);

fn refusal_kind(r: &TokenRefusal) -> &'static str {
    match r {
        TokenRefusal::Unknown(_) => "unknown_token",
        TokenRefusal::WrongSecret(_) => "wrong_secret",
        TokenRefusal::Revoked { .. } => "revoked_token",
        TokenRefusal::Expired { .. } => "expired_token",
        TokenRefusal::UsedUp { .. } => "used_up_token",
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let fleet = &self.0;
        let source = crate::tls::peer_addr(&req).map(|a| a.ip());
        let remote = crate::tls::peer_addr(&req).map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        let clock = Instant::now();
        // Rate limits first, before any store read or signature: a refusal
        // is RESOURCE_EXHAUSTED, which agents retry with backoff.
        if let Some(ip) = source {
            let limits = &fleet.limits;
            if let Err(l) = limits
                .enroll_per_source
                .take(&ip, clock)
                .and_then(|()| limits.auth_failures.check(&ip, clock))
            {
                fleet.metrics.enrollment("rate_limited");
                tracing::info!(%remote, limit = l.limit, retry_after_s = l.retry_after.as_secs(), "enrollment refused: rate limit");
                return Err(Error::from(l).into());
            }
        }
        // A wrong or made-up token counts against its source's failures.
        let failed_auth = || {
            if let Some(ip) = source {
                fleet.limits.auth_failures.spend(&ip, clock);
            }
        };
        let Some((token_id, secret)) = parse_token(JOIN_TOKEN_PREFIX, &r.token) else {
            failed_auth();
            fleet.metrics.enrollment("malformed_token");
            return Err(Error::invalid(
                "token",
                "the join token is not a fleet join token (expected fleet_jt_<id>.<secret>); \
                 copy it exactly as 'fleetctl token create' printed it",
            )
            .into());
        };
        let hash = secret_hash(secret);
        let now = now_ms();
        // Checked here to pick the certificate lifetime, and again inside the
        // transaction that spends the use (another host may race for it).
        let token = match fleet.store.token(token_id).map_err(Error::Store)? {
            Some(t) => t,
            None => {
                failed_auth();
                let r = TokenRefusal::Unknown(token_id.to_string());
                fleet.metrics.enrollment(refusal_kind(&r));
                tracing::info!(token_id, %remote, "enrollment refused: unknown token");
                return Err(Error::from(r).into());
            }
        };
        if let Err(r) = token.check(Some(&hash), now) {
            if matches!(r, TokenRefusal::WrongSecret(_)) {
                failed_auth();
            }
            fleet.metrics.enrollment(refusal_kind(&r));
            tracing::info!(token_id, %remote, reason = refusal_kind(&r), "enrollment refused");
            return Err(Error::from(r).into());
        }
        // Per token only once the secret is proven: knowing a token's id
        // (shown by 'token ls') must not let anyone spend its rate.
        if let Err(l) = fleet.limits.enroll_per_token.take(&token.id, clock) {
            fleet.metrics.enrollment("rate_limited");
            tracing::info!(token_id, %remote, limit = l.limit, retry_after_s = l.retry_after.as_secs(), "enrollment refused: rate limit");
            return Err(Error::from(l).into());
        }
        let facts = r.facts.unwrap_or_default();
        if let Err(refusal) = check_host_says(&token, &facts.hostname, &r.labels) {
            fleet.metrics.enrollment(refusal.kind());
            tracing::info!(token_id, %remote, reason = refusal.kind(), "enrollment refused");
            return Err(Error::from(refusal).into());
        }
        if let Err(e) = fleet_proto::limits::check_csr(&r.csr_der) {
            fleet.metrics.enrollment("bad_csr");
            return Err(Error::from(e).into());
        }
        let host_id = crate::random_hex(8);
        let signed = fleet
            .authority
            .current()
            .signing
            .sign_client(&r.csr_der, &host_id, Duration::from_millis(token.cert_ttl_ms))
            .map_err(|e| {
                fleet.metrics.enrollment("bad_csr");
                Error::invalid("csr", e.to_string())
            })?;
        let mut labels: HashMap<String, String> = r.labels;
        labels.extend(token.labels.clone());
        let host = Host {
            id: host_id.clone(),
            labels: labels.clone(),
            facts: Some(facts.clone()),
            last_seen_ms: now,
            enrolled_at_ms: now,
            token_id: token_id.to_string(),
            cert_not_after_ms: signed.not_after_ms,
            ..Default::default()
        };
        let cert = CertRecord {
            replaces: None,
            host_id: host_id.clone(),
            issued_at_ms: now,
            not_after_ms: signed.not_after_ms,
        };
        // A sled transaction may wait on sled's IO buffers: off the runtime.
        let (store, tid, fp) = (fleet.store.clone(), token_id.to_string(), fingerprint(&signed.der));
        let txn = tokio::task::spawn_blocking(move || store.enroll(&tid, &hash, now, &host, &fp, &cert))
            .await
            .map_err(|e| Error::Internal(format!("the enrollment task failed: {e}")))?;
        match txn {
            Ok(()) => {}
            Err(EnrollError::Token(r)) => {
                fleet.metrics.enrollment(refusal_kind(&r));
                return Err(Error::from(r).into());
            }
            Err(EnrollError::Store(e)) => return Err(Error::Store(e).into()),
        }
        // Durable before the agent is told it exists.
        fleet.store.flush().await.map_err(Error::Store)?;
        fleet.metrics.enrollment("ok");
        tracing::info!(host_id, token_id, hostname = %facts.hostname, %remote, "host enrolled");
        fleet
            .events
            .note(fleet_proto::FleetEventKind::HostEnrolled, "controller", |e| {
                e.host_id = host_id.clone();
                e.hostname = facts.hostname.clone();
                e.detail = format!("enrolled from {remote} with join token {token_id}");
            });
        // A machine enrolling again under its hostname replaces its old entry.
        if let Err(e) = crate::retire::replaced_by(fleet, &host_id, &facts.hostname).await {
            tracing::error!(host_id, error = %e, "cannot retire the entries this enrollment replaces");
        }
        Ok(Response::new(EnrollResponse {
            host_id,
            certificate_pem: signed.pem,
            ca_pem: fleet.authority.current().bundle_pem.clone(),
            not_after_ms: signed.not_after_ms,
            labels,
        }))
    }
}
