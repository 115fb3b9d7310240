//! The records the store keeps as JSON (certificates, join tokens,
//! operators), the rules on them (a token's state and uses, its secret
//! compared in constant time), and why an enrollment is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// A client certificate the controller issued and still honours.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRecord {
    /// The host it names.
    pub host_id: String,
    /// Issued at (ms).
    pub issued_at_ms: i64,
    /// Expires at (ms).
    pub not_after_ms: i64,
    /// For a renewed certificate not yet used: the fingerprint of the one it
    /// replaces, revoked when the host first authenticates with this one
    /// (`Store::confirm_cert`). Absent in records written before renewals
    /// revoked anything, and once confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// A join token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 (hex) of the secret part.
    pub secret_sha256: String,
    /// Labels of hosts it enrolls.
    pub labels: BTreeMap<String, String>,
    /// Created at (ms).
    pub created_at_ms: i64,
    /// Expires at (ms).
    pub expires_at_ms: i64,
    /// Allowed uses, 0 = unlimited.
    pub max_uses: u32,
    /// Uses so far.
    pub uses: u32,
    /// Revoked at (ms), 0 = not revoked.
    pub revoked_at_ms: i64,
    /// Operator who created it.
    pub created_by: String,
    /// Free-form note.
    pub description: String,
    /// Lifetime of certificates issued with it (ms).
    pub cert_ttl_ms: u64,
    /// Label keys hosts enrolling with it may set themselves (absent in
    /// records written before it existed: none).
    #[serde(default)]
    pub allowed_label_keys: Vec<String>,
}

/// An operator token: it authenticates the identity `name` (whose role and
/// scope are in its [`IdentityRecord`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OperatorRecord {
    /// Public id.
    pub id: String,
    /// The identity it authenticates.
    pub name: String,
    /// The role of stores written before identities existed: the upgrade
    /// at open makes the identity from it. Not read otherwise.
    #[serde(default)]
    pub role: String,
    /// SHA-256 (hex) of the secret part.
    pub secret_sha256: String,
    /// Created at (ms).
    pub created_at_ms: i64,
    /// Expires at (ms); 0: never.
    #[serde(default)]
    pub expires_at_ms: i64,
    /// Revoked at (ms); 0: not revoked.
    #[serde(default)]
    pub revoked_at_ms: i64,
    /// The operator who created it ("init" for the first).
    #[serde(default)]
    pub created_by: String,
    /// Free-form note.
    #[serde(default)]
    pub description: String,
}

/// An operator identity: who calls, with which role, limited to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// Name (unique; the key).
    pub name: String,
    /// "admin", "deployer" or "viewer".
    pub role: String,
    /// Apps a deployer may change; empty: any.
    #[serde(default)]
    pub apps: Vec<String>,
    /// Labels hosts a deployer changes must carry (`k=v,…`); empty: any.
    #[serde(default)]
    pub selector: String,
    /// Created at (ms).
    pub created_at_ms: i64,
    /// The operator who created it.
    #[serde(default)]
    pub created_by: String,
    /// Free-form note.
    #[serde(default)]
    pub description: String,
}

/// Why a join token cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token.
    #[error("join token {0} is unknown to this controller; create one with 'fleetctl token create'")]
    Unknown(String),
    /// The secret part does not match.
    #[error("join token {0} does not match the one the controller issued (wrong secret); copy it again from 'fleetctl token create'")]
    WrongSecret(String),
    /// Revoked by an operator.
    #[error("join token {id} was revoked at {at}; create a new one with 'fleetctl token create'")]
    Revoked { id: String, at: String },
    /// Past its lifetime.
    #[error("join token {id} expired at {at}; create a new one with 'fleetctl token create'")]
    Expired { id: String, at: String },
    /// Every allowed use is spent.
    #[error("join token {id} is used up ({uses} of {max} enrollments); create a new one with 'fleetctl token create --uses N'")]
    UsedUp { id: String, uses: u32, max: u32 },
}

/// Why an enrollment transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token cannot be used.
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RFC 3339 UTC time of a ms timestamp, for messages.
pub fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Hex SHA-256 of a secret.
pub fn secret_hash(secret: &str) -> String {
    fleet_proto::transport::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

impl TokenRecord {
    /// Whether the token can enroll a host at `now`, and if not why.
    pub fn state(&self, now: i64) -> fleet_proto::TokenState {
        use fleet_proto::TokenState;
        match self.check(None, now) {
            Ok(()) => TokenState::Active,
            Err(TokenRefusal::Revoked { .. }) => TokenState::Revoked,
            Err(TokenRefusal::UsedUp { .. }) => TokenState::UsedUp,
            Err(_) => TokenState::Expired,
        }
    }

    /// Whether the token may enroll a host now (checking the secret hash when given).
    pub fn check(&self, secret_sha256: Option<&str>, now: i64) -> Result<(), TokenRefusal> {
        if let Some(h) = secret_sha256 {
            if !ring_eq(h.as_bytes(), self.secret_sha256.as_bytes()) {
                return Err(TokenRefusal::WrongSecret(self.id.clone()));
            }
        }
        if self.revoked_at_ms != 0 {
            return Err(TokenRefusal::Revoked {
                id: self.id.clone(),
                at: utc(self.revoked_at_ms),
            });
        }
        if now >= self.expires_at_ms {
            return Err(TokenRefusal::Expired {
                id: self.id.clone(),
                at: utc(self.expires_at_ms),
            });
        }
        if self.max_uses != 0 && self.uses >= self.max_uses {
            return Err(TokenRefusal::UsedUp {
                id: self.id.clone(),
                uses: self.uses,
                max: self.max_uses,
            });
        }
        Ok(())
    }
}

/// Constant-time equality, so a wrong secret's hash leaks no prefix length.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
