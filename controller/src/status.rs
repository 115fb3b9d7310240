//! Where controller errors become a gRPC `Status`: store failures
//! (`internal`), operator-token refusals (`AuthError`), and the NOT_FOUND
//! answers several services give for an app or a release. Depends only on
//! `store` and `auth`, so a service can use these without importing another
//! service or `fleet`.

use tonic::Status;

use crate::auth::AuthError;
use crate::store::StoreError;

/// Maps a store failure to an INTERNAL status, logging the detail.
pub fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, "store failure");
    Status::internal(format!("the controller's store failed: {e}"))
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Store(e) => internal(e),
            e => Status::unauthenticated(e.to_string()),
        }
    }
}

/// NOT_FOUND for an app.
pub fn unknown_app(app: &str) -> Status {
    Status::not_found(format!(
        "no app '{app}'; list apps with 'fleetctl app ls' or create it with 'fleetctl app create'"
    ))
}

/// NOT_FOUND for a release.
pub fn unknown_release(app: &str, version: &str) -> Status {
    Status::not_found(format!(
        "{app} has no release {version}; list them with 'fleetctl release ls {app}' or push it with 'fleetctl release push'"
    ))
}
