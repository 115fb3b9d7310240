//! Enrollment: trading the join token and a CSR for a client certificate,
//! over TLS that trusts only the CA whose fingerprint is pinned in the config.
//! The private key is made here and never leaves the host.

use std::time::Duration;

use fleet_proto::enrollment_client::EnrollmentClient;
use fleet_proto::transport::{self, Trust};
use fleet_proto::EnrollRequest;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::config::{Config, JoinToken};
use crate::facts::Sampler;
use crate::identity::{self, HostRecord, Identity, IdentityError};

/// How long one Enroll call may take before it counts as a failed attempt.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why enrollment did not produce an identity.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The controller refused the token; its message says why (expired,
    /// revoked, used up, unknown). Retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// The controller answered with something unusable. Not retried: every
    /// attempt may use up the token and leave a host entry behind.
    #[error("the controller's enrollment answer is unusable: {0}")]
    BadResponse(String),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The key, the CSR or the state dir failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Enrolls with `token`, retrying with backoff while the controller cannot
/// be reached, and stores the identity. `Ok(None)` when cancelled first.
pub async fn enroll(
    config: &Config,
    rotation: &mut crate::rotation::Rotation,
    token: &JoinToken,
    sampler: &Sampler,
    state: &identity::StateDir,
    cancel: &CancellationToken,
) -> Result<Option<Identity>, EnrollError> {
    let mut backoff = rotation.backoff();
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            r = attempt(config, rotation.current(), token, sampler) => r,
        };
        match attempt {
            Ok(identity) => {
                rotation.succeeded();
                state.store(&identity)?;
                tracing::info!(
                    host_id = %identity.host.host_id,
                    token_id = %identity.host.token_id,
                    not_after = %crate::utc(identity.host.not_after_ms),
                    "enrolled"
                );
                return Ok(Some(identity));
            }
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Unreachable(reason)) => {
                let controller = rotation.current().to_string();
                let delay = rotation.delay_after_failure(&mut backoff);
                tracing::warn!(%controller, %reason, delay = ?delay, next = %rotation.current(), "enrollment failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = crate::watchdog::sleep(delay) => {}
                }
            }
        }
    }
}

/// One attempt's failure: worth retrying or not.
enum Attempt {
    Unreachable(String),
    Failed(EnrollError),
}

impl From<IdentityError> for Attempt {
    fn from(e: IdentityError) -> Self {
        Attempt::Failed(e.into())
    }
}

async fn attempt(config: &Config, addr: &str, token: &JoinToken, sampler: &Sampler) -> Result<Identity, Attempt> {
    let facts = sampler.facts();
    let (key, csr_der) = identity::new_key_and_csr(&facts.hostname)?;
    let tls = transport::client_config(Trust::PinnedFingerprint(config.ca_fingerprint.clone()), None)
        .map_err(|e| Attempt::Failed(e.into()))?;
    let channel = transport::connect(addr, tls)
        .await
        .map_err(|e| Attempt::Unreachable(e.to_string()))?;
    let request = EnrollRequest {
        token: token.expose().to_string(),
        csr_der,
        facts: Some(facts),
        labels: config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    let mut client = EnrollmentClient::new(channel);
    let call = tokio::time::timeout(ENROLL_TIMEOUT, client.enroll(request));
    let response = match call.await {
        Err(_) => {
            return Err(Attempt::Unreachable(format!(
                "no answer from {addr} within {ENROLL_TIMEOUT:?}"
            )))
        }
        Ok(Err(status)) if refuses_token(status.code()) => {
            return Err(Attempt::Failed(EnrollError::Refused(status.message().to_string())))
        }
        Ok(Err(status)) => return Err(Attempt::Unreachable(crate::describe(&status, addr))),
        Ok(Ok(response)) => response.into_inner(),
    };
    let bad = |what: String| Attempt::Failed(EnrollError::BadResponse(what));
    if response.host_id.is_empty() {
        return Err(bad("no host_id".into()));
    }
    let identity = Identity {
        host: HostRecord {
            host_id: response.host_id,
            not_after_ms: response.not_after_ms,
            issued_at_ms: fleet_proto::now_ms(),
            token_id: token.id().to_string(),
        },
        cert_pem: response.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_pem: response.ca_pem,
    };
    identity.check().map_err(|e| bad(e.to_string()))?;
    // The CAs we will trust from now on must include the one the operator
    // pinned (during a CA rotation they are the new CA and the old one).
    if let Ok(Trust::Cas(cas)) = identity.trust() {
        let got: Vec<String> = cas.iter().map(|c| transport::fingerprint(c)).collect();
        if !got.contains(&config.ca_fingerprint) {
            return Err(bad(format!(
                "its CA has fingerprint {}, not the pinned {}",
                got.join(" or "),
                config.ca_fingerprint
            )));
        }
    }
    if identity.is_expired(fleet_proto::now_ms()) {
        return Err(bad(format!(
            "the certificate is already expired (not_after {})",
            crate::utc(identity.host.not_after_ms)
        )));
    }
    if !response.labels.is_empty() {
        tracing::info!(host_id = %identity.host.host_id, labels = ?response.labels, "labels given by the controller");
    }
    Ok(identity)
}

/// The answers to Enroll that mean "this token will never work".
fn refuses_token(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::FailedPrecondition
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_token_problems_are_permanent() {
        assert!(refuses_token(Code::Unauthenticated));
        assert!(refuses_token(Code::PermissionDenied));
        assert!(refuses_token(Code::InvalidArgument));
        assert!(refuses_token(Code::FailedPrecondition));
        assert!(!refuses_token(Code::Unavailable));
        assert!(!refuses_token(Code::Internal));
        // A rate limit (enrollment burst, auth failures): back off and retry.
        assert!(!refuses_token(Code::ResourceExhausted));
        assert!(!refuses_token(Code::DeadlineExceeded));
    }
}
