//! Certificate renewal over the live stream, at half-life, without dropping
//! the stream: the new identity is written to disk and used from the next
//! connection on.

use std::time::{Duration, Instant};

use fleet_proto::{RenewRequest, RenewResponse};

use crate::identity::{self, HostRecord, Identity, IdentityError};

/// How long to wait for `renewed` before asking again with a new key.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a `renewed` answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// `renewed` came without a request outstanding (or after a newer one
    /// replaced it, so its certificate is for a key we no longer hold).
    #[error("the controller sent a renewed certificate this agent did not ask for (or no longer waits for)")]
    Unexpected,
    /// The certificate does not fit the key, or is already expired.
    #[error("the renewed certificate is unusable: {0}")]
    Unusable(String),
    /// Making the key or CSR failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The renewal state of one stream.
#[derive(Default)]
pub struct Renewal {
    pending: Option<Pending>,
    /// The controller asked for a renewal now (a CA rotation).
    forced: bool,
}

struct Pending {
    key: rcgen::KeyPair,
    sent_at: Instant,
}

impl Renewal {
    /// A `renew` request to send now, if the certificate is past its
    /// half-life and no request is waiting for an answer (or the last one
    /// went unanswered for [`ANSWER_TIMEOUT`]).
    pub fn request_if_due(
        &mut self,
        identity: &Identity,
        common_name: &str,
        now_ms: i64,
        now: Instant,
    ) -> Result<Option<RenewRequest>, RenewError> {
        if now_ms < identity.renew_at_ms() && !self.forced {
            return Ok(None);
        }
        if let Some(p) = &self.pending {
            if now.duration_since(p.sent_at) < ANSWER_TIMEOUT {
                return Ok(None);
            }
            tracing::warn!(host_id = %identity.host.host_id, "no answer to renew within {ANSWER_TIMEOUT:?}; asking again");
        }
        let (key, csr_der) = identity::new_key_and_csr(common_name)?;
        self.pending = Some(Pending { key, sent_at: now });
        self.forced = false;
        Ok(Some(RenewRequest { csr_der }))
    }

    /// The controller's CA is being rotated: renew at the next heartbeat,
    /// unless the certificate was issued since the rotation began (it is
    /// already the new CA's). Returns whether a renewal is due.
    pub fn renew_now(&mut self, identity: &Identity, issued_before_ms: i64) -> bool {
        if identity.host.issued_at_ms < issued_before_ms {
            self.forced = true;
        }
        self.forced
    }

    /// The identity made of `current` and the answer to our request.
    pub fn complete(&mut self, current: &Identity, answer: RenewResponse, now_ms: i64) -> Result<Identity, RenewError> {
        let pending = self.pending.take().ok_or(RenewError::Unexpected)?;
        let renewed = Identity {
            host: HostRecord {
                not_after_ms: answer.not_after_ms,
                issued_at_ms: now_ms,
                ..current.host.clone()
            },
            cert_pem: answer.certificate_pem,
            key_pem: pending.key.serialize_pem(),
            // The CAs to trust from now on; an older controller sends none.
            ca_pem: if answer.ca_pem.trim().is_empty() {
                current.ca_pem.clone()
            } else {
                answer.ca_pem
            },
        };
        // Also catches an answer to an earlier request that was replaced:
        // its certificate is for another key.
        if let Err(e) = renewed.check() {
            // A newer request may still be answered; keep waiting for it.
            self.pending = Some(pending);
            return Err(RenewError::Unusable(e.to_string()));
        }
        if renewed.is_expired(now_ms) {
            return Err(RenewError::Unusable(format!(
                "it expired at {}",
                crate::utc(answer.not_after_ms)
            )));
        }
        Ok(renewed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_ca::TestCa;

    const HOUR: i64 = 3_600_000;

    fn answer(ca: &TestCa, req: &RenewRequest, not_after_ms: i64) -> RenewResponse {
        RenewResponse {
            certificate_pem: ca.sign(&req.csr_der),
            not_after_ms,
            ca_pem: String::new(),
        }
    }

    #[test]
    fn a_rotation_forces_a_renewal_of_older_certificates_only_and_brings_the_cas() {
        let ca = TestCa::new();
        let now = fleet_proto::now_ms();
        let current = ca.identity("h-1", now - HOUR, now + 3 * HOUR);
        let t0 = Instant::now();
        let mut r = Renewal::default();
        // Issued after the rotation began: already the new CA's.
        assert!(!r.renew_now(&current, now - 2 * HOUR));
        assert!(r.request_if_due(&current, "web-1", now, t0).expect("ok").is_none());
        // Issued before: renewed at the next heartbeat, long before half-life.
        assert!(r.renew_now(&current, now));
        let req = r
            .request_if_due(&current, "web-1", now, t0)
            .expect("ok")
            .expect("forced");
        let mut a = answer(&ca, &req, now + 9 * HOUR);
        a.ca_pem = format!("{}{}", ca.pem, ca.pem);
        let renewed = r.complete(&current, a, now).expect("renewed");
        assert_eq!(renewed.ca_pem, format!("{}{}", ca.pem, ca.pem), "the CAs to trust now");
        assert!(matches!(renewed.trust().expect("trust"), fleet_proto::transport::Trust::Cas(c) if c.len() == 2));
        // The force is spent.
        assert!(r.request_if_due(&renewed, "web-1", now, t0).expect("ok").is_none());
    }

    #[test]
    fn asks_at_half_life_and_takes_the_answer() {
        let ca = TestCa::new();
        let now = fleet_proto::now_ms();
        let current = ca.identity("h-1", now - HOUR, now + 3 * HOUR);
        let t0 = Instant::now();
        let mut r = Renewal::default();
        assert!(
            r.request_if_due(&current, "web-1", now, t0).expect("ok").is_none(),
            "not due before half-life"
        );

        let req = r
            .request_if_due(&current, "web-1", now + HOUR, t0)
            .expect("ok")
            .expect("due");
        // Waiting for the answer: no second request.
        assert!(r
            .request_if_due(&current, "web-1", now + HOUR, t0)
            .expect("ok")
            .is_none());

        let renewed = r
            .complete(&current, answer(&ca, &req, now + 9 * HOUR), now + HOUR)
            .expect("renewed");
        assert_eq!(renewed.host.host_id, "h-1");
        assert_eq!(renewed.host.not_after_ms, now + 9 * HOUR);
        assert_eq!(renewed.host.issued_at_ms, now + HOUR);
        assert_ne!(renewed.key_pem, current.key_pem);
        assert_eq!(renewed.renew_at_ms(), now + 5 * HOUR);
    }

    #[test]
    fn unanswered_request_is_replaced_and_a_late_answer_is_refused() {
        let ca = TestCa::new();
        let now = fleet_proto::now_ms();
        let current = ca.identity("h-1", now - 2 * HOUR, now + HOUR);
        let t0 = Instant::now();
        let mut r = Renewal::default();
        let first = r.request_if_due(&current, "web-1", now, t0).expect("ok").expect("due");
        let second = r
            .request_if_due(&current, "web-1", now, t0 + ANSWER_TIMEOUT)
            .expect("ok")
            .expect("asked again");
        assert_ne!(first.csr_der, second.csr_der);

        let late = r.complete(&current, answer(&ca, &first, now + 8 * HOUR), now);
        assert!(
            matches!(late, Err(RenewError::Unusable(_))),
            "certificate for the replaced key"
        );
        r.complete(&current, answer(&ca, &second, now + 8 * HOUR), now)
            .expect("the current answer still works");
        assert!(matches!(
            r.complete(&current, answer(&ca, &second, now + 8 * HOUR), now),
            Err(RenewError::Unexpected)
        ));
    }
}
