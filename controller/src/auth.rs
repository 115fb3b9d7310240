//! Tokens: the text form of join and operator tokens, the one check of an
//! operator's bearer token, and what a join token lets an enrolling host say
//! about itself. Used by the `ops::OperatorAuth` interceptor (which refuses
//! the call), the audit layer (which names the caller) and `enroll`.
//!
//! Depends only on `store`: nothing here knows about services or `Status`;
//! `error` maps [`AuthError`] and [`HostClaimRefusal`] to gRPC codes.

use std::collections::HashMap;

use tonic::Request;

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

/// The authenticated operator of a request (a request extension).
#[derive(Debug, Clone)]
pub struct Operator {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
}

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
    /// The operator could not be looked up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `authorization: Bearer fleet_op_<id>.<secret>` (the `Bearer `
/// prefix is optional) against the operators in the store.
pub fn authenticate(store: &Store, authorization: Option<&http::HeaderValue>) -> Result<Operator, AuthError> {
    let value = authorization
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::NotText)?;
    let token = value.strip_prefix("Bearer ").unwrap_or(value);
    let (id, secret) = parse_token(OPERATOR_TOKEN_PREFIX, token).ok_or(AuthError::Malformed)?;
    match store.operator(id)? {
        Some(op) if op.secret_sha256 == secret_hash(secret) => Ok(Operator {
            name: op.name,
            role: op.role,
        }),
        _ => Err(AuthError::NotValid),
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

/// The operator a request was authenticated as (put there by the
/// interceptor); "unknown" if none.
pub fn operator<T>(req: &Request<T>) -> Operator {
    req.extensions().get::<Operator>().cloned().unwrap_or(Operator {
        name: "unknown".into(),
        role: String::new(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::OperatorRecord;

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
            .put_operator(&OperatorRecord {
                id: "abc123".into(),
                name: "alice".into(),
                role: "admin".into(),
                secret_sha256: secret_hash("s3cret"),
                created_at_ms: 0,
            })
            .expect("operator");
        (dir, store)
    }

    #[test]
    fn bearer_tokens_are_checked_against_the_store() {
        let (_dir, store) = store_with_alice();
        let check = |s: Option<&str>| {
            let h = s.map(|s| http::HeaderValue::from_str(s).expect("header"));
            authenticate(&store, h.as_ref())
        };
        let op = check(Some("Bearer fleet_op_abc123.s3cret")).expect("valid");
        assert_eq!((op.name.as_str(), op.role.as_str()), ("alice", "admin"));
        assert!(check(Some("fleet_op_abc123.s3cret")).is_ok());
        assert!(matches!(check(None), Err(AuthError::Missing)));
        assert!(matches!(check(Some("Bearer nonsense")), Err(AuthError::Malformed)));
        assert!(matches!(
            check(Some("Bearer fleet_op_abc123.wrong")),
            Err(AuthError::NotValid)
        ));
        assert!(matches!(
            check(Some("Bearer fleet_op_nobody.s3cret")),
            Err(AuthError::NotValid)
        ));
        let binary = http::HeaderValue::from_bytes(b"Bearer \xff").expect("header");
        assert!(matches!(authenticate(&store, Some(&binary)), Err(AuthError::NotText)));
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
