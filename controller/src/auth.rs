//! Tokens: the text form of join and operator tokens, the one check of an
//! operator's bearer token, and what a join token lets an enrolling host say
//! about itself. Used by the `ops::OperatorGate` layer (which refuses the
//! call, and names the caller to the audit layer), a watch that checks its
//! token still holds (`still_valid`), and `enroll`.
//!
//! Depends only on `store`: nothing here knows about services or `Status`;
//! `error` maps [`AuthError`] and [`HostClaimRefusal`] to gRPC codes.

use std::collections::HashMap;

use tonic::Request;

use crate::access::{Role, Scope};
use crate::store::{secret_hash, Store, StoreError, TokenRecord};

/// Prefix of operator tokens.
pub const OPERATOR_TOKEN_PREFIX: &str = "fleet_op_";
/// Prefix of join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "fleet_jt_";

/// Splits `<prefix><id>.<secret>` (e.g. `fleet_jt_<id>.<secret>`) into
/// (id, secret); surrounding whitespace is ignored.
pub fn parse_token<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let (id, secret) = token.trim().strip_prefix(prefix)?.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

pub use crate::access::Operator;

/// Why an `authorization` header does not name an operator.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No header at all.
    #[error("no operator token: run 'fleetctl login' or pass --token / FLEET_TOKEN")]
    Missing,
    /// The header's bytes are not visible ASCII.
    #[error("the authorization header is not text")]
    NotText,
    /// Not `fleet_op_<id>.<secret>`.
    #[error("the operator token is malformed (expected fleet_op_<id>.<secret>)")]
    Malformed,
    /// Unknown id or wrong secret.
    #[error("the operator token is not valid on this controller; check FLEET_TOKEN or run 'fleetctl login' again")]
    NotValid,
    /// The token was revoked.
    #[error("operator token {id} was revoked at {at}; ask an admin for a new one ('fleetctl operator token create')")]
    Revoked {
        /// Its id.
        id: String,
        /// When (UTC).
        at: String,
    },
    /// The token is past its lifetime.
    #[error("operator token {id} expired at {at}; ask an admin for a new one ('fleetctl operator token create')")]
    Expired {
        /// Its id.
        id: String,
        /// When (UTC).
        at: String,
    },
    /// The token's identity was removed (or its record is unusable).
    #[error("operator token {id} belongs to operator '{name}', which no longer exists; ask an admin")]
    NoIdentity {
        /// The token's id.
        id: String,
        /// The identity it named.
        name: String,
    },
    /// The operator could not be looked up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `authorization: Bearer fleet_op_<id>.<secret>` (the `Bearer `
/// prefix is optional) against the operator tokens in the store, or
/// against the controller host's recovery key (see [`Recovery`]), at `now`.
/// A wrong secret says only "not valid", whatever the id.
pub fn authenticate(
    store: &Store,
    recovery: &Recovery,
    authorization: Option<&http::HeaderValue>,
    now_ms: i64,
) -> Result<Operator, AuthError> {
    let value = authorization
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::NotText)?;
    let token = value.strip_prefix("Bearer ").unwrap_or(value);
    let (id, secret) = parse_token(OPERATOR_TOKEN_PREFIX, token).ok_or(AuthError::Malformed)?;
    if id.starts_with(RECOVERY_ID_PREFIX) {
        return recovery.check(id, secret, now_ms);
    }
    let Some(tok) = store.operator(id)?.filter(|t| t.secret_sha256 == secret_hash(secret)) else {
        return Err(AuthError::NotValid);
    };
    holds(store, tok, now_ms)
}

/// Checks operator tokens the way every caller is checked: a source with
/// too many failed attempts is refused before its token is looked at, and
/// a failed attempt counts against its source. The gate (`ops`) and the
/// dashboard (a token in a cookie) share it.
#[derive(Clone)]
pub struct Authenticator {
    /// Where operator tokens and identities are.
    pub store: Store,
    /// The controller host's break-glass tokens.
    pub recovery: std::sync::Arc<Recovery>,
    /// Failed attempts per source address.
    pub failures: std::sync::Arc<crate::ratelimit::Limiter<std::net::IpAddr>>,
}

/// Why [`Authenticator::check`] refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Too many failed attempts from the source.
    #[error(transparent)]
    Limited(#[from] crate::ratelimit::Limited),
    /// The token.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Authenticator {
    /// The operator `authorization` authenticates, from `source`, now.
    pub fn check(
        &self,
        source: Option<std::net::IpAddr>,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Operator, Refusal> {
        let now = std::time::Instant::now();
        if let Some(ip) = source {
            self.failures.check(&ip, now).inspect_err(|_| {
                tracing::warn!(%ip, "operator call refused: too many failed authentications");
            })?;
        }
        authenticate(&self.store, &self.recovery, authorization, fleet_proto::now_ms()).map_err(|e| {
            // A store failure is the controller's, not a guess.
            if let (false, Some(ip)) = (matches!(e, AuthError::Store(_)), source) {
                self.failures.spend(&ip, now);
            }
            Refusal::from(e)
        })
    }
}

/// The operator a token authenticates at `now`: not revoked, not expired,
/// its identity still there (with a role and a selector that parse).
fn holds(store: &Store, tok: crate::store::OperatorRecord, now_ms: i64) -> Result<Operator, AuthError> {
    if tok.revoked_at_ms != 0 {
        return Err(AuthError::Revoked {
            id: tok.id,
            at: crate::store::utc(tok.revoked_at_ms),
        });
    }
    if tok.expires_at_ms != 0 && now_ms >= tok.expires_at_ms {
        return Err(AuthError::Expired {
            id: tok.id,
            at: crate::store::utc(tok.expires_at_ms),
        });
    }
    let no_identity = || AuthError::NoIdentity {
        id: tok.id.clone(),
        name: tok.name.clone(),
    };
    let identity = store.identity(&tok.name)?.ok_or_else(no_identity)?;
    let role = Role::parse(&identity.role).map_err(|_| no_identity())?;
    let selector = crate::selector::parse_selector(&identity.selector).map_err(|_| no_identity())?;
    Ok(Operator {
        name: identity.name,
        role,
        scope: Scope {
            apps: identity.apps,
            selector,
        },
        token_id: tok.id,
        token_expires_at_ms: tok.expires_at_ms,
    })
}

/// Whether the token `op` was authenticated with still holds at `now`
/// (not revoked, not expired, its identity still there): long-lived calls
/// (a rollout watch) check it while they run.
pub fn still_valid(store: &Store, op: &Operator, now_ms: i64) -> Result<(), AuthError> {
    if op.token_id.starts_with(RECOVERY_ID_PREFIX) {
        return match op.token_expires_at_ms {
            at if now_ms >= at => Err(AuthError::Expired {
                id: op.token_id.clone(),
                at: crate::store::utc(at),
            }),
            _ => Ok(()),
        };
    }
    let tok = store.operator(&op.token_id)?.ok_or(AuthError::NotValid)?;
    holds(store, tok, now_ms).map(|_| ())
}

/// The id prefix of recovery tokens: `fleet_op_recovery-<expiry ms>.<mac>`.
pub const RECOVERY_ID_PREFIX: &str = "recovery-";
/// The identity recovery tokens authenticate (an admin; reserved name).
pub const RECOVERY_NAME: &str = "recovery";
/// How long a recovery token is honoured.
pub const RECOVERY_TTL_MS: i64 = 3600 * 1000;

/// Break-glass admin tokens for the controller host: an HMAC, under a key
/// derived from the CA key, over the token's expiry. Whoever can read the
/// data dir's `ca.key` (root, the `fleet-controller` user) can mint one with
/// `fleet-controller admin-token`, even while the controller runs; nobody
/// else can. Nothing is stored: the controller checks the MAC and the expiry.
pub struct Recovery {
    key: ring::hmac::Key,
}

impl Recovery {
    /// Recovery under `key` (from `secrets::Macs::derive(RECOVERY_PURPOSE)`).
    pub fn new(key: &[u8; 32]) -> Recovery {
        Recovery {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        }
    }

    /// A token valid until `now_ms + RECOVERY_TTL_MS`.
    pub fn mint(&self, now_ms: i64) -> String {
        let id = format!("{RECOVERY_ID_PREFIX}{}", now_ms.saturating_add(RECOVERY_TTL_MS));
        let mac = ring::hmac::sign(&self.key, id.as_bytes());
        format!(
            "{OPERATOR_TOKEN_PREFIX}{id}.{}",
            fleet_proto::transport::hex(mac.as_ref())
        )
    }

    fn check(&self, id: &str, secret: &str, now_ms: i64) -> Result<Operator, AuthError> {
        let expires: i64 = id[RECOVERY_ID_PREFIX.len()..]
            .parse()
            .map_err(|_| AuthError::NotValid)?;
        let mac = unhex(secret).ok_or(AuthError::NotValid)?;
        ring::hmac::verify(&self.key, id.as_bytes(), &mac).map_err(|_| AuthError::NotValid)?;
        // Only this controller mints them, never for longer than the TTL.
        if expires > now_ms.saturating_add(RECOVERY_TTL_MS) {
            return Err(AuthError::NotValid);
        }
        if now_ms >= expires {
            return Err(AuthError::Expired {
                id: id.to_string(),
                at: crate::store::utc(expires),
            });
        }
        Ok(Operator {
            name: RECOVERY_NAME.into(),
            role: Role::Admin,
            scope: Scope::default(),
            token_id: id.to_string(),
            token_expires_at_ms: expires,
        })
    }
}

/// What the recovery key is derived for.
pub const RECOVERY_PURPOSE: &str = "operator-recovery-v1";

/// A token's hex (at most 64 bytes: a token is never longer).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() > 128 {
        return None;
    }
    fleet_proto::transport::unhex(s)
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

/// How often a long-lived watch checks that its caller's token still holds.
pub const TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The operator a request was authenticated as (put there by the gate);
/// "unknown", a viewer, if none (the gate refuses every operator call it
/// cannot authenticate, so handlers never see that).
pub fn operator<T>(req: &Request<T>) -> Operator {
    req.extensions().get::<Operator>().cloned().unwrap_or(Operator {
        name: "unknown".into(),
        role: Role::Viewer,
        scope: Scope::default(),
        token_id: String::new(),
        token_expires_at_ms: 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{IdentityRecord, OperatorRecord};

    #[test]
    fn tokens_parse() {
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_jt_ab.cd"), Some(("ab", "cd")));
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, " fleet_jt_ab.cd\n"), Some(("ab", "cd")));
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_jt_ab"), None);
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_jt_.cd"), None);
        assert_eq!(parse_token(JOIN_TOKEN_PREFIX, "fleet_op_ab.cd"), None);
    }

    /// A new store with one operator: alice, admin, token
    /// `fleet_op_abc123.s3cret`.
    pub(crate) fn store_with_alice() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        store
            .create_identity(&IdentityRecord {
                name: "alice".into(),
                role: "admin".into(),
                apps: vec![],
                selector: String::new(),
                created_at_ms: 0,
                created_by: "test".into(),
                description: String::new(),
            })
            .expect("identity");
        store
            .put_operator(&OperatorRecord {
                id: "abc123".into(),
                name: "alice".into(),
                secret_sha256: secret_hash("s3cret"),
                ..Default::default()
            })
            .expect("operator");
        (dir, store)
    }

    fn recovery() -> Recovery {
        Recovery::new(&[7; 32])
    }

    fn check(store: &Store, s: Option<&str>, now: i64) -> Result<Operator, AuthError> {
        let h = s.map(|s| http::HeaderValue::from_str(s).expect("header"));
        authenticate(store, &recovery(), h.as_ref(), now)
    }

    #[test]
    fn bearer_tokens_are_checked_against_the_store() {
        let (_dir, store) = store_with_alice();
        let op = check(&store, Some("Bearer fleet_op_abc123.s3cret"), 1).expect("valid");
        assert_eq!(
            (op.name.as_str(), op.role, op.token_id.as_str()),
            ("alice", Role::Admin, "abc123")
        );
        assert!(check(&store, Some("fleet_op_abc123.s3cret"), 1).is_ok());
        assert!(matches!(check(&store, None, 1), Err(AuthError::Missing)));
        assert!(matches!(
            check(&store, Some("Bearer nonsense"), 1),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            check(&store, Some("Bearer fleet_op_abc123.wrong"), 1),
            Err(AuthError::NotValid)
        ));
        assert!(matches!(
            check(&store, Some("Bearer fleet_op_nobody.s3cret"), 1),
            Err(AuthError::NotValid)
        ));
        let binary = http::HeaderValue::from_bytes(b"Bearer \xff").expect("header");
        assert!(matches!(
            authenticate(&store, &recovery(), Some(&binary), 1),
            Err(AuthError::NotText)
        ));
    }

    #[test]
    fn expired_revoked_and_orphaned_tokens_are_refused_by_name() {
        let (_dir, store) = store_with_alice();
        let mut t = store.operator("abc123").expect("get").expect("alice's");
        t.expires_at_ms = 100;
        store.put_operator(&t).expect("put");
        assert!(check(&store, Some("fleet_op_abc123.s3cret"), 99).is_ok());
        let e = check(&store, Some("fleet_op_abc123.s3cret"), 100).expect_err("expired");
        assert!(matches!(e, AuthError::Expired { .. }), "{e}");
        // A wrong secret never learns the token's state.
        assert!(matches!(
            check(&store, Some("fleet_op_abc123.nope"), 100),
            Err(AuthError::NotValid)
        ));
        store.revoke_operator_token("abc123", 50).expect("revoke");
        let e = check(&store, Some("fleet_op_abc123.s3cret"), 60).expect_err("revoked");
        assert!(
            matches!(e, AuthError::Revoked { .. }) && e.to_string().contains("abc123"),
            "{e}"
        );
        store
            .put_operator(&OperatorRecord {
                id: "orphan".into(),
                name: "gone".into(),
                secret_sha256: secret_hash("x"),
                ..Default::default()
            })
            .expect("put");
        let e = check(&store, Some("fleet_op_orphan.x"), 1).expect_err("no identity");
        assert!(
            matches!(e, AuthError::NoIdentity { .. }) && e.to_string().contains("'gone'"),
            "{e}"
        );
    }

    #[test]
    fn a_running_call_learns_of_revocation_expiry_and_removal() {
        let (_dir, store) = store_with_alice();
        let op = check(&store, Some("fleet_op_abc123.s3cret"), 1).expect("valid");
        assert!(still_valid(&store, &op, 1).is_ok());
        store.revoke_operator_token("abc123", 2).expect("revoke");
        assert!(matches!(still_valid(&store, &op, 3), Err(AuthError::Revoked { .. })));
        let rec = Recovery::new(&[7; 32]);
        let op = check(&store, Some(&rec.mint(0)), 1).expect("recovery");
        assert!(still_valid(&store, &op, RECOVERY_TTL_MS - 1).is_ok());
        assert!(matches!(
            still_valid(&store, &op, RECOVERY_TTL_MS),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn recovery_tokens_need_the_key_and_expire() {
        let (_dir, store) = store_with_alice();
        let token = recovery().mint(1_000);
        // Honoured no earlier than it could have been minted.
        assert!(matches!(check(&store, Some(&token), 999), Err(AuthError::NotValid)));
        let op = check(&store, Some(&token), 1_000 + RECOVERY_TTL_MS - 1).expect("valid");
        assert_eq!((op.name.as_str(), op.role), (RECOVERY_NAME, Role::Admin));
        assert!(matches!(
            check(&store, Some(&token), 1_000 + RECOVERY_TTL_MS),
            Err(AuthError::Expired { .. })
        ));
        // Minted under another key, or with its expiry moved: not valid.
        let other = Recovery::new(&[8; 32]).mint(1_000);
        assert!(matches!(check(&store, Some(&other), 1_001), Err(AuthError::NotValid)));
        let (head, mac) = token.split_once('.').expect("dot");
        let moved = format!("{}9.{mac}", head);
        assert!(matches!(check(&store, Some(&moved), 1_001), Err(AuthError::NotValid)));
        assert!(matches!(
            check(&store, Some("fleet_op_recovery-x.zz"), 1),
            Err(AuthError::NotValid)
        ));
    }

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
        let big = "x".repeat(1 << 20);
        assert!(check_host_says(&t, &big, &HashMap::new()).is_err());
        assert!(check_host_says(&t, "web-1", &labels(&[("az", &big)])).is_err());
    }
}
