//! The connection to the controller: TLS through `fleet_proto::transport`,
//! the bearer token on every call, and gRPC statuses turned into fleetctl
//! errors with the right exit code.

use fleet_proto::app_service_client::AppServiceClient;
use fleet_proto::audit_service_client::AuditServiceClient;
use fleet_proto::event_service_client::EventServiceClient;
use fleet_proto::host_service_client::HostServiceClient;
use fleet_proto::notify_service_client::NotifyServiceClient;
use fleet_proto::operator_service_client::OperatorServiceClient;
use fleet_proto::release_service_client::ReleaseServiceClient;
use fleet_proto::rollout_service_client::RolloutServiceClient;
use fleet_proto::session_client::SessionClient;
use fleet_proto::token_service_client::TokenServiceClient;
use fleet_proto::transport::{self, Trust};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::config::{ConfigError, Resolved, Token, TrustSource};
use crate::error::Error;

/// A channel whose every request carries the operator token.
pub type Authed = InterceptedService<Channel, Auth>;

/// Adds `authorization: Bearer <token>` to every request. The header value is
/// marked sensitive so that tonic and hyper never print it.
#[derive(Clone)]
pub struct Auth(MetadataValue<Ascii>);

impl Auth {
    /// Builds the header value; fails when the token cannot be a header.
    pub fn new(token: &Token) -> Result<Auth, ConfigError> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.expose())
            .parse()
            .map_err(|_| ConfigError::BadToken)?;
        value.set_sensitive(true);
        Ok(Auth(value))
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The largest answer fleetctl takes, bytes. tonic's default of 4 MiB is
/// passed by the record of a rollout of about 9,000 hosts (about 470 bytes
/// a host with its timeline), which `rollout show` and `--wait` read
/// whole; lists that grow with the fleet (`hosts ls`) come in pages below
/// 2 MiB.
pub const MAX_ANSWER: usize = 64 << 20;

/// A constructor per service: the channel, the token on every call, and
/// [`MAX_ANSWER`].
macro_rules! services {
    ($($(#[$doc:meta])* $name:ident => $client:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> $client<Authed> {
                $client::with_interceptor(self.channel.clone(), self.auth.clone())
                    .max_decoding_message_size(MAX_ANSWER)
            }
        )*
    };
}

/// A connected, authenticated client of the operator API.
pub struct Client {
    channel: Channel,
    auth: Auth,
    addr: String,
    resolved: Resolved,
}

impl Client {
    /// Dials the controller named in `resolved` and checks nothing else: the
    /// first call tells whether the token is good.
    pub async fn connect(resolved: &Resolved) -> Result<Client, Error> {
        let trust = load_trust(&resolved.trust)?;
        let auth = Auth::new(&resolved.token)?;
        let config = transport::client_config(trust, None)?;
        // Several controllers of one fleet: the first that answers serves.
        let addrs = transport::split_addresses(&resolved.controller)?;
        let mut failed: Vec<transport::TransportError> = Vec::new();
        for addr in addrs {
            match transport::connect(&addr, config.clone()).await {
                Ok(channel) => {
                    return Ok(Client {
                        channel,
                        auth,
                        addr,
                        resolved: resolved.clone(),
                    })
                }
                Err(e) => failed.push(e),
            }
        }
        // Each error names its address; one is the error, several are listed.
        let last = failed.pop().expect("split_addresses gives at least one address");
        Err(match (failed.is_empty(), last) {
            (true, last) => last.into(),
            (false, transport::TransportError::Connect { message, cause }) => {
                let mut all: Vec<String> = failed.iter().map(ToString::to_string).collect();
                all.push(message);
                transport::TransportError::Connect {
                    message: format!("no controller answered: {}", all.join("; ")),
                    cause,
                }
                .into()
            }
            (false, other) => other.into(),
        })
    }

    /// A new connection to the fleet, dialled like the first: after a lost
    /// stream, the first of several controllers that answers (the one that
    /// took over when this one died).
    pub async fn reconnect(&self) -> Result<Client, Error> {
        Client::connect(&self.resolved).await
    }

    /// The controller's address, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    services! {
        /// `Session` service.
        session => SessionClient,
        /// `HostService`.
        hosts => HostServiceClient,
        /// `TokenService`.
        tokens => TokenServiceClient,
        /// `AppService`.
        apps => AppServiceClient,
        /// `ReleaseService`.
        releases => ReleaseServiceClient,
        /// `RolloutService`.
        rollouts => RolloutServiceClient,
        /// `OperatorService`.
        operators => OperatorServiceClient,
        /// `AuditService`.
        audit => AuditServiceClient,
        /// `EventService`.
        events => EventServiceClient,
        /// `NotifyService`.
        notify => NotifyServiceClient,
    }

    /// Turns a failed call's status into a fleetctl error.
    pub fn fail(&self, status: Status) -> Error {
        rpc_error(&status, &self.addr)
    }
}

/// Loads what fleetctl trusts the controller's certificate by.
pub fn load_trust(source: &TrustSource) -> Result<Trust, ConfigError> {
    match source {
        TrustSource::Fingerprint(fp) => Ok(Trust::PinnedFingerprint(fp.clone())),
        TrustSource::CaFile { path, origin } => {
            let bad = |detail: String| ConfigError::CaFile {
                path: path.clone(),
                origin: origin.clone(),
                detail,
            };
            let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let certs = transport::certs_from_pem("CA file", &pem).map_err(|e| bad(e.to_string()))?;
            // A CA file holds the fleet CA alone; take the first certificate
            // so a bundle that starts with it works too.
            let ca = certs
                .into_iter()
                .next()
                .ok_or_else(|| bad("no CERTIFICATE block in it".into()))?;
            Ok(Trust::Ca(ca))
        }
    }
}

/// A gRPC status as an operator-readable error. The server's message is
/// already phrased for operators, so it is printed as is (never tonic's
/// `status: ..., metadata: ...` rendering); connection failures surfacing
/// as statuses are explained by `transport::explain`.
pub fn rpc_error(status: &Status, addr: &str) -> Error {
    let code = status.code();
    if code == Code::Unavailable && std::error::Error::source(status).is_some() {
        return Error::Unreachable(transport::explain(status, addr));
    }
    // A status with a source was made on this side from a broken connection
    // (h2 reset, EOF), not sent by the controller: it died or the network
    // dropped in the middle of the call (exit 5, not 1).
    if std::error::Error::source(status).is_some() {
        return Error::Unreachable(format!(
            "the connection to the controller at {addr} broke during the call ({}); check it is up with 'fleetctl whoami' and run the command again",
            status.message().trim()
        ));
    }
    let message = status.message().trim();
    // tonic's own check on this side, not the controller's word.
    if message.contains("decoded message length too large") {
        return Error::Rpc {
            code,
            message: format!(
                "the controller's answer is larger than fleetctl takes ({} MiB): {message}; \
                 narrow the request (a selector, an app) where the command has one",
                MAX_ANSWER >> 20
            ),
        };
    }
    let message = match (code, message.is_empty()) {
        (Code::Unimplemented, true) => {
            format!("the controller at {addr} does not offer this call; upgrade fleet-controller")
        }
        (_, true) => format!("the controller at {addr} answered: {}", code.description()),
        (_, false) => message.to_string(),
    };
    let message = match code {
        Code::Unauthenticated => format!("{message}; check your token (fleetctl login)"),
        _ => message,
    };
    Error::Rpc { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    #[test]
    fn a_connection_broken_mid_call_is_unreachable_not_a_failure() {
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(broken.code(), Code::Unknown, "tonic's code for a client-side error");
        let err = rpc_error(&broken, "c:1");
        assert_eq!(err.exit_code(), Exit::Unreachable, "{err}");
        assert!(err.to_string().contains("broke during the call"), "{err}");
        // The same code sent by the controller stays a failure.
        let sent = rpc_error(&Status::unknown("boom"), "c:1");
        assert_eq!(sent.exit_code(), Exit::Failed);
    }

    #[test]
    fn server_message_printed_without_noise() {
        let err = rpc_error(&Status::not_found("no host matches 'web-9'"), "c:1");
        assert_eq!(err.to_string(), "no host matches 'web-9'");
        assert_eq!(err.exit_code(), Exit::NotFound);

        let err = rpc_error(&Status::unauthenticated("token expired"), "c:1");
        assert_eq!(err.to_string(), "token expired; check your token (fleetctl login)");
        assert_eq!(err.exit_code(), Exit::Denied);

        let err = rpc_error(&Status::permission_denied("admin only"), "c:1");
        assert_eq!(err.exit_code(), Exit::Denied);

        let err = rpc_error(&Status::invalid_argument("bad selector"), "c:1");
        assert_eq!(err.exit_code(), Exit::Failed);

        let err = rpc_error(&Status::unavailable("shutting down"), "c:1");
        assert_eq!(err.exit_code(), Exit::Unreachable);
        assert_eq!(err.to_string(), "shutting down");

        let err = rpc_error(&Status::unimplemented(""), "c:1");
        assert!(err.to_string().contains("upgrade fleet-controller"), "{err}");
        assert_eq!(err.exit_code(), Exit::Failed);
    }

    #[test]
    fn auth_header_is_bearer_and_sensitive() {
        use tonic::service::Interceptor;
        let mut auth = Auth::new(&Token::new("fleet_op_a.b")).expect("header");
        let request = auth.call(tonic::Request::new(())).expect("intercept");
        let value = request.metadata().get("authorization").expect("authorization header");
        assert_eq!(value.to_str().ok(), Some("Bearer fleet_op_a.b"));
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("fleet_op_a.b"));
        assert!(Auth::new(&Token::new("bad\ntoken")).is_err());
    }

    #[test]
    fn unreadable_ca_names_file_and_origin() {
        let source = TrustSource::CaFile {
            path: "/nonexistent/ca.pem".into(),
            origin: crate::config::Origin::Env("FLEET_CA"),
        };
        let err = load_trust(&source).expect_err("missing file");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/ca.pem") && msg.contains("$FLEET_CA"),
            "{msg}"
        );
    }
}
