//! Tokens: the text form of join and operator tokens, and the one check of
//! an operator's bearer token. Used by the `ops::OperatorAuth` interceptor
//! (which refuses the call) and by the audit layer (which names the caller).
//!
//! Depends only on `store`: nothing here knows about services or `Status`;
//! `ops` maps [`AuthError`] to a status.

use tonic::Request;

use crate::store::{secret_hash, Store, StoreError};

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

/// The operator a request was authenticated as (put there by the
/// interceptor); "unknown" if none.
pub fn operator<T>(req: &Request<T>) -> Operator {
    req.extensions().get::<Operator>().cloned().unwrap_or(Operator {
        name: "unknown".into(),
        role: String::new(),
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn bearer_tokens_are_checked_against_the_store() {
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
}
