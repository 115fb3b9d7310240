//! What can go wrong in fleetctl, and the exit code each failure maps to.
//! CI scripts branch on these codes (ARCHITECTURE.md, "fleetctl"), so the
//! mapping lives in one place: [`Error::exit_code`].

use crate::config::ConfigError;

/// The exit codes of ARCHITECTURE.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The operation failed.
    Failed = 1,
    /// Usage or configuration error.
    Usage = 2,
    /// The named object does not exist.
    NotFound = 3,
    /// Authentication or permission refused.
    Denied = 4,
    /// The controller cannot be reached or its certificate is not trusted.
    Unreachable = 5,
}

/// A fleetctl failure, carrying an operator-readable message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Flags that clap accepts but that do not make sense together (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The controller could not be reached, or TLS failed (exit 5).
    #[error("{0}")]
    Unreachable(String),
    /// The controller answered with an error; `message` is already phrased
    /// for the operator (the server's status message plus any hint).
    #[error("{message}")]
    Rpc { code: tonic::Code, message: String },
    /// Anything else that failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> Exit {
        match self {
            Error::Config(_) | Error::Usage(_) => Exit::Usage,
            Error::Unreachable(_) => Exit::Unreachable,
            Error::Rpc { code, .. } => exit_for(*code),
            Error::Failed(_) => Exit::Failed,
        }
    }
}

/// The exit code for a gRPC status code. InvalidArgument from the server is
/// an operation failure (1), not a usage error: the flags parsed fine, the
/// controller refused the values.
pub fn exit_for(code: tonic::Code) -> Exit {
    use tonic::Code;
    match code {
        Code::Ok => Exit::Ok,
        Code::NotFound => Exit::NotFound,
        Code::Unauthenticated | Code::PermissionDenied => Exit::Denied,
        Code::Unavailable => Exit::Unreachable,
        _ => Exit::Failed,
    }
}

impl From<fleet_proto::transport::TransportError> for Error {
    fn from(e: fleet_proto::transport::TransportError) -> Error {
        use fleet_proto::transport::TransportError;
        match e {
            TransportError::Connect { message, .. } => Error::Unreachable(message),
            // A bad address, CA file or TLS setting is the operator's input.
            other => Error::Usage(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn status_codes_map_to_exit_codes() {
        assert_eq!(exit_for(Code::NotFound), Exit::NotFound);
        assert_eq!(exit_for(Code::Unauthenticated), Exit::Denied);
        assert_eq!(exit_for(Code::PermissionDenied), Exit::Denied);
        assert_eq!(exit_for(Code::Unavailable), Exit::Unreachable);
        assert_eq!(exit_for(Code::InvalidArgument), Exit::Failed);
        assert_eq!(exit_for(Code::FailedPrecondition), Exit::Failed);
        assert_eq!(exit_for(Code::Internal), Exit::Failed);
        assert_eq!(exit_for(Code::Unimplemented), Exit::Failed);
    }

    #[test]
    fn local_failures_map_to_exit_codes() {
        assert_eq!(Error::Usage("x".into()).exit_code() as u8, 2);
        assert_eq!(Error::Unreachable("x".into()).exit_code() as u8, 5);
        assert_eq!(Error::Failed("x".into()).exit_code() as u8, 1);
        let missing = crate::config::Settings::default().require().expect_err("incomplete");
        assert_eq!(Error::from(missing).exit_code() as u8, 2);
        let connect = fleet_proto::transport::TransportError::Connect {
            message: "cannot reach".into(),
            cause: fleet_proto::transport::Cause::Other("test".into()),
        };
        assert_eq!(Error::from(connect).exit_code() as u8, 5);
        let address = fleet_proto::transport::TransportError::BadAddress("x".into());
        assert_eq!(Error::from(address).exit_code() as u8, 2);
    }
}
