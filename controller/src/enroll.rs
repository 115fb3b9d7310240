//! `Enrollment/Enroll`: a join token and a CSR become a host and its first
//! client certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::enrollment_server::Enrollment;
use fleet_proto::transport::fingerprint;
use fleet_proto::{now_ms, EnrollRequest, EnrollResponse, Host};
use tonic::{Request, Response, Status};

use crate::auth::{parse_token, JOIN_TOKEN_PREFIX};
use crate::fleet::Fleet;
use crate::status::internal;
use crate::store::{secret_hash, CertRecord, EnrollError, TokenRecord, TokenRefusal};

/// The Enrollment service.
pub struct EnrollmentService(pub Arc<Fleet>);

fn refusal_status(r: &TokenRefusal) -> Status {
    match r {
        TokenRefusal::Unknown(_) | TokenRefusal::WrongSecret(_) => Status::unauthenticated(r.to_string()),
        _ => Status::permission_denied(r.to_string()),
    }
}

fn refusal_kind(r: &TokenRefusal) -> &'static str {
    match r {
        TokenRefusal::Unknown(_) => "unknown_token",
        TokenRefusal::WrongSecret(_) => "wrong_secret",
        TokenRefusal::Revoked { .. } => "revoked_token",
        TokenRefusal::Expired { .. } => "expired_token",
        TokenRefusal::UsedUp { .. } => "used_up_token",
    }
}

/// Why what a host says about itself at enrollment is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostClaimRefusal {
    /// The hostname breaks the hostname rule.
    #[error("{0}")]
    Hostname(String),
    /// A label breaks the label rule.
    #[error("{0}; fix [labels] in agent.toml")]
    Label(String),
    /// The token does not let hosts set this label key.
    #[error(
        "label '{key}' from the agent's [labels] is not allowed by join token {token_id}: a token lists the \
         label keys hosts may set themselves; create one with 'fleetctl token create --allow-label {key}' or \
         remove {key} from [labels] in agent.toml"
    )]
    KeyNotAllowed {
        /// The label key.
        key: String,
        /// The token's id.
        token_id: String,
    },
}

impl HostClaimRefusal {
    /// The metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            HostClaimRefusal::Hostname(_) => "bad_hostname",
            HostClaimRefusal::Label(_) => "bad_label",
            HostClaimRefusal::KeyNotAllowed { .. } => "label_not_allowed",
        }
    }
}

impl From<HostClaimRefusal> for Status {
    fn from(r: HostClaimRefusal) -> Status {
        match r {
            HostClaimRefusal::KeyNotAllowed { .. } => Status::permission_denied(r.to_string()),
            _ => Status::invalid_argument(r.to_string()),
        }
    }
}

/// Checks the hostname and labels an enrolling host sends: each within the
/// rules of `fleet_proto::check_hostname` / `check_label`, and every label
/// key either set by the token itself (the token's value wins) or listed in
/// its `allowed_label_keys`. Keys are checked in order, so the refusal
/// names the first offending one.
pub fn check_host_says(
    token: &TokenRecord,
    hostname: &str,
    labels: &HashMap<String, String>,
) -> Result<(), HostClaimRefusal> {
    fleet_proto::check_hostname(hostname).map_err(HostClaimRefusal::Hostname)?;
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    for key in keys {
        fleet_proto::check_label(key, &labels[key]).map_err(HostClaimRefusal::Label)?;
        if !token.labels.contains_key(key) && !token.allowed_label_keys.contains(key) {
            return Err(HostClaimRefusal::KeyNotAllowed {
                key: key.clone(),
                token_id: token.id.clone(),
            });
        }
    }
    Ok(())
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
                return Err(l.into());
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
            return Err(Status::invalid_argument(
                "the join token is not a fleet join token (expected fleet_jt_<id>.<secret>); \
                 copy it exactly as 'fleetctl token create' printed it",
            ));
        };
        let hash = secret_hash(secret);
        let now = now_ms();
        // Checked here to pick the certificate lifetime, and again inside the
        // transaction that spends the use (another host may race for it).
        let token = match fleet.store.token(token_id).map_err(internal)? {
            Some(t) => t,
            None => {
                failed_auth();
                let r = TokenRefusal::Unknown(token_id.to_string());
                fleet.metrics.enrollment(refusal_kind(&r));
                tracing::info!(token_id, %remote, "enrollment refused: unknown token");
                return Err(refusal_status(&r));
            }
        };
        if let Err(r) = token.check(Some(&hash), now) {
            if matches!(r, TokenRefusal::WrongSecret(_)) {
                failed_auth();
            }
            fleet.metrics.enrollment(refusal_kind(&r));
            tracing::info!(token_id, %remote, reason = refusal_kind(&r), "enrollment refused");
            return Err(refusal_status(&r));
        }
        // Per token only once the secret is proven: knowing a token's id
        // (shown by 'token ls') must not let anyone spend its rate.
        if let Err(l) = fleet.limits.enroll_per_token.take(&token.id, clock) {
            fleet.metrics.enrollment("rate_limited");
            tracing::info!(token_id, %remote, limit = l.limit, retry_after_s = l.retry_after.as_secs(), "enrollment refused: rate limit");
            return Err(l.into());
        }
        let facts = r.facts.unwrap_or_default();
        if let Err(refusal) = check_host_says(&token, &facts.hostname, &r.labels) {
            fleet.metrics.enrollment(refusal.kind());
            tracing::info!(token_id, %remote, reason = refusal.kind(), "enrollment refused");
            return Err(refusal.into());
        }
        if let Err(e) = fleet_proto::limits::check_csr(&r.csr_der) {
            fleet.metrics.enrollment("bad_csr");
            return Err(e.into());
        }
        let host_id = crate::random_hex(8);
        let signed = fleet
            .ca
            .sign_client(&r.csr_der, &host_id, Duration::from_millis(token.cert_ttl_ms))
            .map_err(|e| {
                fleet.metrics.enrollment("bad_csr");
                Status::invalid_argument(e.to_string())
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
            .map_err(|e| Status::internal(format!("the enrollment task failed: {e}")))?;
        match txn {
            Ok(()) => {}
            Err(EnrollError::Token(r)) => {
                fleet.metrics.enrollment(refusal_kind(&r));
                return Err(refusal_status(&r));
            }
            Err(EnrollError::Store(e)) => return Err(internal(e)),
        }
        // Durable before the agent is told it exists.
        fleet.store.flush().await.map_err(internal)?;
        fleet.metrics.enrollment("ok");
        tracing::info!(host_id, token_id, hostname = %facts.hostname, %remote, "host enrolled");
        // A machine enrolling again under its hostname replaces its old entry.
        if let Err(e) = crate::retire::replaced_by(fleet, &host_id, &facts.hostname).await {
            tracing::error!(host_id, error = %e, "cannot retire the entries this enrollment replaces");
        }
        Ok(Response::new(EnrollResponse {
            host_id,
            certificate_pem: signed.pem,
            ca_pem: fleet.ca.cert_pem.clone(),
            not_after_ms: signed.not_after_ms,
            labels,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(labels: &[(&str, &str)], allowed: &[&str]) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            secret_sha256: String::new(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created_at_ms: 0,
            expires_at_ms: 0,
            max_uses: 0,
            uses: 0,
            revoked_at_ms: 0,
            created_by: String::new(),
            description: String::new(),
            cert_ttl_ms: 0,
            allowed_label_keys: allowed.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn hosts_set_only_the_label_keys_their_token_allows() {
        let t = token(&[("env", "prod")], &["az"]);
        assert_eq!(check_host_says(&t, "web-1", &labels(&[("az", "a")])), Ok(()));
        // A key the token sets: allowed, and the token's value wins later.
        assert_eq!(check_host_says(&t, "web-1", &labels(&[("env", "dev")])), Ok(()));
        let e = check_host_says(&t, "web-1", &labels(&[("az", "a"), ("role", "db")])).expect_err("role");
        assert_eq!(e.kind(), "label_not_allowed");
        assert!(
            e.to_string().contains("'role'") && e.to_string().contains("--allow-label role"),
            "{e}"
        );
        assert_eq!(Status::from(e).code(), tonic::Code::PermissionDenied);
        let none = token(&[], &[]);
        assert!(
            check_host_says(&none, "web-1", &labels(&[("az", "a")])).is_err(),
            "default: none"
        );
    }

    #[test]
    fn hostile_hostnames_and_labels_are_refused() {
        let t = token(&[], &["az"]);
        let e = check_host_says(&t, "web\n1", &HashMap::new()).expect_err("newline");
        assert_eq!(e.kind(), "bad_hostname");
        let e = check_host_says(&t, "web-1", &labels(&[("az", "\x1b[31m")])).expect_err("escape");
        assert_eq!(e.kind(), "bad_label");
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        let big = "x".repeat(1 << 20);
        assert!(check_host_says(&t, &big, &HashMap::new()).is_err());
        assert!(check_host_says(&t, "web-1", &labels(&[("az", &big)])).is_err());
    }
}
