//! Which artifacts a host may download: [`Grants`] mints a `FetchGrant` into
//! every deploy task the controller sends, and checks it when the host
//! fetches the artifact.
//!
//! A grant is an HMAC, under a key derived from `mac.key` (`secrets`), over the host id,
//! the app, the version, the artifact's sha256 and an expiry. It proves "this
//! controller sent this host a task naming this artifact" without any state:
//! the `Tasks` registry forgets a task when its host's stream drops or the
//! controller restarts, but the agent carries on and resumes the download
//! from its offset — with the grant the task brought, which a restarted
//! controller still verifies. The fetch also requires the app's selector to
//! match the host's labels *now* (see `stream::fetch_artifact`), so a host
//! relabelled out of an app loses its downloads at once.

use fleet_proto::FetchGrant;
use ring::hmac;

/// How long a grant is honoured: the agent's own download deadline is 15
/// minutes, and a task may wait in its queue (8 deep) behind others.
pub const GRANT_TTL_MS: i64 = 24 * 3600 * 1000;

/// Why a grant does not let a host download an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefusal {
    /// The request carries no grant.
    #[error("the request carries no grant (no deploy task sent to this host names the artifact)")]
    Missing,
    /// The grant was not made by this controller for this host and artifact.
    #[error("its grant was not issued for this host and artifact (a task of another host, or of another release)")]
    Forged,
    /// The grant is too old.
    #[error("the grant of the task that named it expired at {at} (tasks are honoured for 24h)")]
    Expired {
        /// When it expired (UTC).
        at: String,
    },
}

/// Mints and checks fetch grants.
pub struct Grants {
    key: hmac::Key,
}

impl Grants {
    /// Grants under `key` (from `secrets::Macs::derive`).
    pub fn new(key: &[u8; 32]) -> Grants {
        Grants {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// A grant letting `host_id` download `sha256`, the artifact of `app`'s
    /// release `version`, until `now_ms + GRANT_TTL_MS`.
    pub fn mint(&self, host_id: &str, app: &str, version: &str, sha256: &str, now_ms: i64) -> FetchGrant {
        let expires_at_ms = now_ms.saturating_add(GRANT_TTL_MS);
        FetchGrant {
            app: app.to_string(),
            version: version.to_string(),
            expires_at_ms,
            mac: hmac::sign(&self.key, &signed_bytes(host_id, app, version, sha256, expires_at_ms))
                .as_ref()
                .to_vec(),
        }
    }

    /// Checks that `grant` lets `host_id` download `sha256` at `now_ms`.
    pub fn verify(
        &self,
        host_id: &str,
        sha256: &str,
        grant: Option<&FetchGrant>,
        now_ms: i64,
    ) -> Result<(), GrantRefusal> {
        let g = grant.ok_or(GrantRefusal::Missing)?;
        let msg = signed_bytes(host_id, &g.app, &g.version, sha256, g.expires_at_ms);
        hmac::verify(&self.key, &msg, &g.mac).map_err(|_| GrantRefusal::Forged)?;
        if now_ms >= g.expires_at_ms {
            return Err(GrantRefusal::Expired {
                at: crate::store::utc(g.expires_at_ms),
            });
        }
        Ok(())
    }
}

/// What the MAC covers: each field length-prefixed, so no two different
/// grants share their bytes.
fn signed_bytes(host_id: &str, app: &str, version: &str, sha256: &str, expires_at_ms: i64) -> Vec<u8> {
    let mut out = b"fleet fetch grant v1".to_vec();
    for field in [host_id, app, version, sha256] {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab";

    #[test]
    fn a_grant_lets_only_its_host_fetch_only_its_artifact_until_it_expires() {
        let grants = Grants::new(&[7; 32]);
        let g = grants.mint("h1", "web", "1.0.0", SHA, 1_000);
        assert_eq!(grants.verify("h1", SHA, Some(&g), 2_000), Ok(()));
        assert_eq!(grants.verify("h2", SHA, Some(&g), 2_000), Err(GrantRefusal::Forged));
        assert_eq!(grants.verify("h1", "cd", Some(&g), 2_000), Err(GrantRefusal::Forged));
        assert!(matches!(
            grants.verify("h1", SHA, Some(&g), 1_000 + GRANT_TTL_MS),
            Err(GrantRefusal::Expired { .. })
        ));
        assert_eq!(grants.verify("h1", SHA, None, 2_000), Err(GrantRefusal::Missing));
    }

    #[test]
    fn no_field_of_a_grant_can_be_changed() {
        let grants = Grants::new(&[7; 32]);
        let g = grants.mint("h1", "web", "1.0.0", SHA, 1_000);
        let changed = [
            FetchGrant {
                app: "db".into(),
                ..g.clone()
            },
            FetchGrant {
                version: "2.0.0".into(),
                ..g.clone()
            },
            FetchGrant {
                expires_at_ms: g.expires_at_ms + 1,
                ..g.clone()
            },
            // Moving a byte between fields must not keep the MAC valid.
            FetchGrant {
                app: "we".into(),
                version: "b1.0.0".into(),
                ..g.clone()
            },
        ];
        for c in changed {
            assert_eq!(
                grants.verify("h1", SHA, Some(&c), 2_000),
                Err(GrantRefusal::Forged),
                "{c:?}"
            );
        }
        let other_controller = Grants::new(&[8; 32]);
        assert_eq!(
            other_controller.verify("h1", SHA, Some(&g), 2_000),
            Err(GrantRefusal::Forged)
        );
    }
}
