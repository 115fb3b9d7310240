//! `Enrollment/Enroll`: a join token and a CSR become a host and its first
//! client certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::enrollment_server::Enrollment;
use fleet_proto::transport::fingerprint;
use fleet_proto::{now_ms, EnrollRequest, EnrollResponse, Host};
use tonic::{Request, Response, Status};

use crate::fleet::{internal, Fleet};
use crate::store::{secret_hash, CertRecord, EnrollError, TokenRefusal};

/// Prefix of join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "fleet_jt_";

/// Splits `fleet_jt_<id>.<secret>` into (id, secret).
pub fn parse_token<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let (id, secret) = token.trim().strip_prefix(prefix)?.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

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

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let fleet = &self.0;
        let remote = crate::tls::peer_addr(&req).map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        let Some((token_id, secret)) = parse_token(JOIN_TOKEN_PREFIX, &r.token) else {
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
                let r = TokenRefusal::Unknown(token_id.to_string());
                fleet.metrics.enrollment(refusal_kind(&r));
                tracing::info!(token_id, %remote, "enrollment refused: unknown token");
                return Err(refusal_status(&r));
            }
        };
        if let Err(r) = token.check(Some(&hash), now) {
            fleet.metrics.enrollment(refusal_kind(&r));
            tracing::info!(token_id, %remote, reason = refusal_kind(&r), "enrollment refused");
            return Err(refusal_status(&r));
        }
        let facts = r.facts.unwrap_or_default();
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

    #[test]
    fn token_syntax() {
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_jt_ab.cd"), Some(("ab", "cd")));
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, " fleet_jt_ab.cd\n"), Some(("ab", "cd")));
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_jt_ab"), None);
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_jt_.cd"), None);
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_op_ab.cd"), None);
    }
}
