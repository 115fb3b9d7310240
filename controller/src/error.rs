//! The controller's one error type, [`Error`], and the one place it becomes
//! a gRPC `Status` (`impl From<Error> for Status`).
//!
//! Variants say what went wrong (an unknown app, a refused join token, a
//! full disk), not which gRPC code answers it: the code, and the logging of
//! the controller's own failures, are decided below in one match. Every
//! module under the services returns [`Result`]; the services turn it into
//! a `Status` with `?`. Depends only on the leaf errors it wraps (`store`,
//! `auth`, `artifacts`, `ratelimit`), so any module may use it.

use tonic::Status;

use crate::artifacts::{ArtifactError, NotARelease};
use crate::auth::{AuthError, HostClaimRefusal};
use crate::ratelimit::{Limited, RenewRefusal};
use crate::store::{StoreError, TokenRefusal};

/// `Result` with the controller's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request (an operator's call, an agent's message) cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- The request itself -------------------------------------------
    /// A request field is malformed or out of bounds (checked at the edge).
    /// `why` is the whole sentence the caller sees, naming the field.
    #[error("{why}")]
    Invalid {
        /// The field, as an operator knows it (a flag or a proto field).
        field: String,
        /// What is wrong and what would be accepted.
        why: String,
    },
    /// An agent broke the stream's protocol.
    #[error("{0}")]
    Protocol(&'static str),
    /// An upload is not a release archive.
    #[error(transparent)]
    NotARelease(#[from] NotARelease),
    /// A download asked for bytes past the artifact's end.
    #[error("offset {offset} is past the end of artifact {sha256} ({len} bytes)")]
    PastEnd {
        /// The offset asked for.
        offset: u64,
        /// The artifact.
        sha256: String,
        /// Its length.
        len: u64,
    },

    // --- What the request names ---------------------------------------
    /// No such operator identity.
    #[error("no operator '{0}'; list them with 'fleetctl operator ls'")]
    UnknownOperator(String),
    /// No such operator token.
    #[error("no operator token '{0}'; see an operator's tokens with 'fleetctl operator show NAME'")]
    UnknownOperatorToken(String),
    /// No such app.
    #[error("no app '{0}'; list apps with 'fleetctl app ls' or create it with 'fleetctl app create'")]
    UnknownApp(String),
    /// No such release of an app.
    #[error("{app} has no release {version}; list them with 'fleetctl release ls {app}' or push it with 'fleetctl release push'")]
    UnknownRelease {
        /// App.
        app: String,
        /// Version.
        version: String,
    },
    /// No host by that id, id prefix or hostname.
    #[error("no host '{0}' in the fleet; list hosts with 'fleetctl hosts ls'")]
    UnknownHost(String),
    /// A host reference matches several hosts.
    #[error("'{key}' matches {} hosts ({}); give more of the id", ids.len(), ids.join(", "))]
    AmbiguousHost {
        /// The reference given.
        key: String,
        /// The hosts it matches.
        ids: Vec<String>,
    },
    /// A host was found, then removed before the change could be written.
    #[error("host {0} was removed meanwhile")]
    HostGone(String),
    /// No such join token.
    #[error("no join token '{0}'; list them with 'fleetctl token ls --all'")]
    UnknownToken(String),
    /// No such rollout.
    #[error("no rollout '{0}'; list them with 'fleetctl rollout ls'")]
    UnknownRollout(String),
    /// No such webhook.
    #[error("no webhook '{0}'; list them with 'fleetctl notify ls'")]
    UnknownNotifier(String),
    /// What the request would create exists (an app, a release version).
    #[error("{0}")]
    Exists(String),

    // --- The fleet's state does not allow it --------------------------
    /// Something the fleet is doing or holds stands in the way (a rollout
    /// under way, a host outside the app's selector, a release in use).
    #[error("{0}")]
    Precondition(String),
    /// The app has no release at all.
    #[error("{app} has no releases; push one first with 'fleetctl release push'")]
    NoReleases {
        /// App.
        app: String,
    },
    /// No host matches a rollout's selectors.
    #[error("no host matches {app}'s selector{}; check labels with 'fleetctl hosts ls'", if selector.is_empty() { String::new() } else { format!(" and {selector}") })]
    NoHosts {
        /// App.
        app: String,
        /// The rollout's narrowing selector.
        selector: String,
    },
    /// A rollback without `--to` found nothing to go back to.
    #[error("{app}'s history has no successful rollout of a release other than {} to go back to; name one with 'fleetctl rollback {app} --to VERSION'", if current.is_empty() { "its current one" } else { current.as_str() })]
    NoEarlierRelease {
        /// App.
        app: String,
        /// Its current release.
        current: String,
    },
    /// The app has an active rollout.
    #[error("{app} already has rollout {id} ({state}, {kind} to {to}); wait for it, or 'fleetctl rollout abort {id}'")]
    Busy {
        /// App.
        app: String,
        /// The running rollout.
        id: String,
        /// Its state.
        state: &'static str,
        /// Its kind.
        kind: &'static str,
        /// Its target.
        to: String,
    },
    /// The rollout is over.
    #[error("rollout {id} already ended ({state})")]
    RolloutEnded {
        /// Rollout.
        id: String,
        /// Its state.
        state: &'static str,
    },

    // --- Who is asking ------------------------------------------------
    /// The operator's bearer token does not name an operator.
    #[error(transparent)]
    Auth(AuthError),
    /// A join token cannot be used.
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    /// What an enrolling host says about itself is refused.
    #[error(transparent)]
    HostClaim(#[from] HostClaimRefusal),
    /// An agent call came without a client certificate.
    #[error("{0}")]
    NoClientCert(&'static str),
    /// The caller is known but may not do this (a revoked certificate, a
    /// removed host, an artifact it was not sent).
    #[error("{0}")]
    Denied(String),

    // --- Limits -------------------------------------------------------
    /// A rate limit refused the call.
    #[error(transparent)]
    RateLimited(#[from] Limited),
    /// A certificate renewal came too soon or while one is in flight.
    #[error(transparent)]
    Renewal(#[from] RenewRefusal),

    // --- Not now ------------------------------------------------------
    /// A host or an engine cannot take the request now; trying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The controller is shutting down.
    #[error("the controller is shutting down")]
    ShuttingDown,
    /// A newer stream from the same host took this one's place.
    #[error("a newer stream from this host replaced this one")]
    Replaced,
    /// The agent did not say hello in time.
    #[error("no hello within 30s of opening the stream")]
    HelloTimeout,

    // --- The controller's own failures --------------------------------
    /// The store failed.
    #[error("the controller's store failed: {0}")]
    Store(#[from] StoreError),
    /// The artifact store failed, or an upload's bytes were not announced ones.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// A stored artifact is damaged (the sentence says which and the fix).
    #[error("{0}")]
    Damaged(String),
    /// An upload ended before the size its header announced.
    #[error("the upload ended after {got} of {want} bytes; push again")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// A task of the controller's own failed (a panicked blocking task).
    #[error("{0}")]
    Internal(String),
}

impl From<crate::auth::Refusal> for Error {
    fn from(r: crate::auth::Refusal) -> Error {
        match r {
            crate::auth::Refusal::Limited(l) => Error::RateLimited(l),
            crate::auth::Refusal::Auth(a) => Error::Auth(a),
        }
    }
}

impl Error {
    /// A malformed or out-of-bounds request field; `why` is the whole sentence.
    pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            why: why.into(),
        }
    }
}

/// An operator-token failure: the store's own failure stays a store failure.
impl From<crate::access::Denied> for Error {
    fn from(d: crate::access::Denied) -> Error {
        Error::Denied(d.0)
    }
}

impl From<crate::access::Denied> for Status {
    fn from(d: crate::access::Denied) -> Status {
        Error::from(d).into()
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Error {
        match e {
            AuthError::Store(e) => Error::Store(e),
            e => Error::Auth(e),
        }
    }
}

/// A field outside the contract's limits (`fleet_proto::limits`); the text
/// stays the contract's (`field: problem`).
impl From<fleet_proto::limits::FieldError> for Error {
    fn from(e: fleet_proto::limits::FieldError) -> Error {
        Error::Invalid {
            why: e.to_string(),
            field: e.field,
        }
    }
}

/// The one mapping from errors to gRPC codes (fleetctl's exit codes follow
/// from these). The controller's own failures are logged here, once.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::Invalid { .. }
            | Error::Protocol(_)
            | Error::NotARelease(_)
            | Error::AmbiguousHost { .. }
            | Error::HostClaim(HostClaimRefusal::Hostname(_) | HostClaimRefusal::Label(_)) => {
                Status::invalid_argument(msg)
            }
            Error::PastEnd { .. } => Status::out_of_range(msg),
            Error::UnknownApp(_)
            | Error::UnknownRelease { .. }
            | Error::UnknownHost(_)
            | Error::HostGone(_)
            | Error::UnknownToken(_)
            | Error::UnknownRollout(_)
            | Error::UnknownNotifier(_)
            | Error::UnknownOperator(_)
            | Error::UnknownOperatorToken(_) => Status::not_found(msg),
            Error::Exists(_) => Status::already_exists(msg),
            Error::Precondition(_)
            | Error::NoReleases { .. }
            | Error::NoHosts { .. }
            | Error::NoEarlierRelease { .. }
            | Error::Busy { .. }
            | Error::RolloutEnded { .. } => Status::failed_precondition(msg),
            Error::Store(e) | Error::Auth(AuthError::Store(e)) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(format!("the controller's store failed: {e}"))
            }
            Error::Auth(_)
            | Error::NoClientCert(_)
            | Error::Token(TokenRefusal::Unknown(_) | TokenRefusal::WrongSecret(_)) => Status::unauthenticated(msg),
            Error::Token(_) | Error::HostClaim(HostClaimRefusal::KeyNotAllowed { .. }) | Error::Denied(_) => {
                Status::permission_denied(msg)
            }
            Error::RateLimited(_) | Error::Renewal(_) => Status::resource_exhausted(msg),
            Error::Unavailable(_) | Error::ShuttingDown => Status::unavailable(msg),
            Error::Replaced => Status::aborted(msg),
            Error::HelloTimeout => Status::deadline_exceeded(msg),
            Error::Artifact(ArtifactError::DiskFull { .. }) => Status::resource_exhausted(msg),
            Error::Artifact(ArtifactError::DigestMismatch { .. }) => Status::data_loss(msg),
            Error::Artifact(e @ ArtifactError::Io { .. }) => {
                tracing::error!(error = %e, "artifact store I/O failed");
                Status::internal(msg)
            }
            Error::Damaged(_) | Error::Truncated { .. } => Status::data_loss(msg),
            Error::Internal(_) => {
                tracing::error!(error = %msg, "controller task failed");
                Status::internal(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tonic::Code;

    use crate::ratelimit::{Limiter, Rate};

    #[test]
    fn rate_limits_are_resource_exhausted_naming_the_limit() {
        let rate = Rate {
            burst: 1,
            per_minute: 1,
        };
        let l = Limiter::new("limits.enroll_per_token", rate);
        let t0 = Instant::now();
        l.take(&"t", t0).expect("burst");
        let s = Status::from(Error::from(l.take(&"t", t0).expect_err("limited")));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("limits.enroll_per_token"), "{}", s.message());
    }

    #[test]
    fn codes_follow_meaning_and_texts_are_kept() {
        let cases: Vec<(Error, Code, &str)> = vec![
            (
                Error::UnknownApp("web".into()),
                Code::NotFound,
                "no app 'web'; list apps with 'fleetctl app ls' or create it with 'fleetctl app create'",
            ),
            (
                Error::AmbiguousHost {
                    key: "ab".into(),
                    ids: vec!["ab1".into(), "ab2".into()],
                },
                Code::InvalidArgument,
                "'ab' matches 2 hosts (ab1, ab2); give more of the id",
            ),
            (
                fleet_proto::limits::check_app_name("").expect_err("empty").into(),
                Code::InvalidArgument,
                "",
            ),
            (AuthError::Missing.into(), Code::Unauthenticated, ""),
            (TokenRefusal::WrongSecret("t".into()).into(), Code::Unauthenticated, ""),
            (
                TokenRefusal::UsedUp {
                    id: "t".into(),
                    uses: 1,
                    max: 1,
                }
                .into(),
                Code::PermissionDenied,
                "",
            ),
            (
                HostClaimRefusal::KeyNotAllowed {
                    key: "role".into(),
                    token_id: "t".into(),
                }
                .into(),
                Code::PermissionDenied,
                "",
            ),
            (HostClaimRefusal::Label("bad".into()).into(), Code::InvalidArgument, ""),
            (
                RenewRefusal::InFlight { host_id: "h".into() }.into(),
                Code::ResourceExhausted,
                "",
            ),
            (Error::Replaced, Code::Aborted, ""),
            (
                Error::ShuttingDown,
                Code::Unavailable,
                "the controller is shutting down",
            ),
            (
                Error::Truncated { got: 1, want: 2 },
                Code::DataLoss,
                "the upload ended after 1 of 2 bytes; push again",
            ),
            (
                Error::PastEnd {
                    offset: 9,
                    sha256: "ab".into(),
                    len: 3,
                },
                Code::OutOfRange,
                "",
            ),
        ];
        for (e, code, text) in cases {
            let shown = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{shown}");
            assert_eq!(s.message(), shown, "the status carries the error's text");
            if !text.is_empty() {
                assert_eq!(s.message(), text);
            }
        }
    }
}
