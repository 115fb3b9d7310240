//! fleet-agent: runs on every host, enrolls once with a join token, then
//! keeps one mTLS stream open to the controller, sending heartbeats with
//! host metrics and renewing its certificate at half-life.
//!
//! [`run`] is the whole agent; `main` only parses flags and calls it.

pub mod backoff;
pub mod config;
pub mod deploy;
mod enroll;
pub mod facts;
pub mod goodbye;
pub mod health;
pub mod hooks;
pub mod identity;
pub mod inventory;
pub mod layout;
mod offload;
mod redact;
mod renew;
pub mod rotation;
mod stream;
pub mod systemd;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod trust;
pub mod units;
pub mod unpack;
pub mod watchdog;

use std::time::{Duration, UNIX_EPOCH};

use fleet_proto::transport::{self, Cause};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::{Config, ConfigError, LogFormat};
pub use enroll::EnrollError;
pub use identity::IdentityError;

use config::JoinToken;
use facts::Sampler;
use identity::{Identity, StateDir};
use stream::{Session, SessionError};

/// Process exit codes; systemd is told not to restart on 2 and 3.
pub mod exit {
    /// Stopped by SIGTERM or SIGINT.
    pub const STOPPED: u8 = 0;
    /// Anything unexpected; a restart may help.
    pub const FAILED: u8 = 1;
    /// The configuration is wrong; fix the file.
    pub const BAD_CONFIG: u8 = 2;
    /// The controller refuses this host; only an operator can fix it.
    pub const REFUSED: u8 = 3;
}

/// Why the agent stopped, other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The controller refuses this host (token refused, host removed,
    /// certificate revoked or expired); the message says what to do.
    #[error("{0}")]
    Refused(String),
    /// The state dir or the identity in it cannot be used.
    #[error(transparent)]
    State(#[from] IdentityError),
    /// Enrollment failed in a way retrying cannot fix.
    #[error(transparent)]
    Enroll(EnrollError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl AgentError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => exit::BAD_CONFIG,
            AgentError::Refused(_) => exit::REFUSED,
            AgentError::State(_) | AgentError::Enroll(_) | AgentError::Signals(_) => exit::FAILED,
        }
    }
}

/// Sends logs to stderr, as text or JSON; `RUST_LOG` filters (default info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Ignored error: a subscriber is already set (e.g. in tests), keep it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the agent until SIGTERM or SIGINT (`Ok`) or a permanent failure.
pub async fn run(config: Config) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let watcher = tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping");
        on_signal.cancel();
    });
    let result = run_until(config, cancel).await;
    watcher.abort();
    result
}

/// Runs the agent until `cancel` fires (`Ok`) or a permanent failure.
pub async fn run_until(config: Config, cancel: CancellationToken) -> Result<(), AgentError> {
    let state = StateDir::new(&config.state_dir);
    state.ensure()?;
    let worker = deploy::start(&config, cancel.clone());
    // A random first controller spreads a fleet over its controllers.
    let rotation = rotation::Rotation::new(config.controllers.clone(), fastrand::usize(..));
    let mut agent = Agent {
        rotation,
        sampler: Sampler::new(state.path(), config.hostname.clone()),
        config,
        state,
        cancel,
        worker,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        controllers = %agent.rotation.describe(),
        state_dir = %agent.state.path().display(),
        "fleet-agent starting"
    );
    watchdog::ready();

    let loaded = agent.state.load()?;
    let identity = match loaded {
        Some(id) if !id.is_expired(fleet_proto::now_ms()) => Some(id),
        Some(expired) => {
            agent
                .enroll_after_expiry(&expired, "while the agent was not running")
                .await?
        }
        None => {
            let token = agent.config.require_join_token()?.clone();
            let path = agent.config.path.display().to_string();
            agent
                .enroll(&token, |reason| {
                    format!(
                        "the controller refused join token {}: {reason}; put a new token from \
                         'fleetctl token create' in join_token in {path}",
                        token.id()
                    )
                })
                .await?
        }
    };
    match identity {
        Some(identity) => agent.connect_loop(identity).await,
        None => Ok(()),
    }
}

/// What the agent holds for its whole life.
struct Agent {
    config: Config,
    state: StateDir,
    sampler: Sampler,
    cancel: CancellationToken,
    worker: deploy::WorkerHandle,
    /// Which controller to dial next.
    rotation: rotation::Rotation,
}

impl Agent {
    /// Keeps a stream open, reconnecting with backoff, until stopped or refused.
    async fn connect_loop(&mut self, mut identity: Identity) -> Result<(), AgentError> {
        let mut backoff = self.rotation.backoff();
        loop {
            watchdog::alive();
            if identity.is_expired(fleet_proto::now_ms()) {
                match self
                    .enroll_after_expiry(&identity, "while the controller could not be reached")
                    .await?
                {
                    Some(renewed) => identity = renewed,
                    None => return Ok(()),
                }
            }
            let host_id = identity.host.host_id.clone();
            let session = Session {
                addr: self.rotation.current(),
                config: &self.config,
                state: &self.state,
                identity: &mut identity,
                sampler: &mut self.sampler,
                cancel: &self.cancel,
                worker: &mut self.worker,
            };
            let ended = session
                .run()
                .instrument(tracing::info_span!("stream", host_id = %host_id))
                .await;
            match ended {
                Ok(()) => {
                    tracing::info!(host_id = %host_id, "stopped");
                    return Ok(());
                }
                Err(SessionError::Identity(e)) => return Err(e.into()),
                Err(SessionError::Refused(reason)) => match self.replacement_token(&identity) {
                    Some(token) => {
                        tracing::warn!(
                            host_id = %host_id, %reason, token_id = %token.id(),
                            "the controller refuses this host; enrolling again with the new join token in the config"
                        );
                        let path = self.config.path.display().to_string();
                        let enrolled = self
                            .enroll(&token, |why| {
                                format!(
                                    "the controller refuses host {host_id} ({reason}) and refused the new join token {} \
                                     too: {why}; put a new token from 'fleetctl token create' in join_token in {path}, \
                                     then restart fleet-agent",
                                    token.id()
                                )
                            })
                            .await?;
                        match enrolled {
                            Some(new) => {
                                identity = new;
                                backoff.reset();
                            }
                            None => return Ok(()),
                        }
                    }
                    None => {
                        return Err(AgentError::Refused(format!(
                            "the controller refuses host {host_id}: {reason}; this host must be enrolled again with \
                             a new join token: run 'fleetctl token create', put it in join_token in {}, then restart \
                             fleet-agent",
                            self.config.path.display()
                        )))
                    }
                },
                Err(SessionError::Lost { reason, welcomed }) => {
                    if welcomed {
                        backoff.reset();
                        self.rotation.succeeded();
                    }
                    let delay = self.rotation.delay_after_failure(&mut backoff);
                    tracing::warn!(
                        host_id = %host_id, %reason, delay = ?delay, next = %self.rotation.current(),
                        "stream lost; reconnecting"
                    );
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        _ = watchdog::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// A join token in the config other than the one this host enrolled
    /// with: the operator's way of saying "enroll this host again".
    fn replacement_token(&self, identity: &Identity) -> Option<JoinToken> {
        self.config
            .join_token
            .clone()
            .filter(|t| t.id() != identity.host.token_id)
    }

    /// Enrolls again after the certificate of `expired` ran out, with the
    /// token in the config; refuses with instructions when that cannot work.
    async fn enroll_after_expiry(&mut self, expired: &Identity, when: &str) -> Result<Option<Identity>, AgentError> {
        let host_id = &expired.host.host_id;
        let path = self.config.path.display().to_string();
        let refusal = |why: &str| {
            format!(
                "the certificate of host {host_id} expired at {} {when}; a host with an expired certificate needs a \
                 new join token: run 'fleetctl token create' and put it in join_token in {}, then restart \
                 fleet-agent ({why})",
                utc(expired.host.not_after_ms),
                path
            )
        };
        let Some(token) = self.config.join_token.clone() else {
            return Err(AgentError::Refused(refusal("there is no join_token in it")));
        };
        tracing::warn!(
            host_id = %host_id,
            not_after = %utc(expired.host.not_after_ms),
            token_id = %token.id(),
            "certificate expired; enrolling again with the join token in the config"
        );
        let message = |why: String| refusal(&format!("the join token {} in it was refused: {why}", token.id()));
        self.enroll(&token, message).await
    }

    /// Enrolls with `token`; a refusal becomes [`AgentError::Refused`] with
    /// the message `refused` makes of the controller's reason.
    async fn enroll(
        &mut self,
        token: &JoinToken,
        refused: impl FnOnce(String) -> String,
    ) -> Result<Option<Identity>, AgentError> {
        match enroll::enroll(
            &self.config,
            &mut self.rotation,
            token,
            &self.sampler,
            &self.state,
            &self.cancel,
        )
        .await
        {
            Ok(identity) => Ok(identity),
            Err(EnrollError::Refused(reason)) => Err(AgentError::Refused(refused(reason))),
            Err(e) => Err(AgentError::Enroll(e)),
        }
    }
}

/// A Unix-ms timestamp as RFC 3339 UTC, for messages.
pub(crate) fn utc(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// An operator sentence for a failed call to the controller at `addr`:
/// the connection-level cause when there is one, else the gRPC status.
pub(crate) fn describe(status: &tonic::Status, addr: &str) -> String {
    match transport::cause_of(status) {
        Cause::Other(_) => {
            let mut text = format!("the controller at {addr} answered {:?}", status.code());
            if !status.message().is_empty() {
                text.push_str(": ");
                text.push_str(status.message());
            }
            // Lower layers (HTTP/2, TLS) often say more than the status.
            let mut source = std::error::Error::source(status);
            while let Some(e) = source {
                let s = e.to_string();
                if !text.contains(&s) {
                    text.push_str(": ");
                    text.push_str(&s);
                }
                source = e.source();
            }
            text
        }
        _ => transport::explain(status, addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let path = std::path::PathBuf::from("/etc/fleet/agent.toml");
        assert_eq!(AgentError::Config(ConfigError::NoJoinToken { path }).exit_code(), 2);
        assert_eq!(AgentError::Refused("x".into()).exit_code(), 3);
        assert_eq!(AgentError::Signals(std::io::Error::other("x")).exit_code(), 1);
    }

    #[test]
    fn utc_is_rfc3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn status_is_described_with_code_and_message() {
        let s = tonic::Status::unavailable("controller shutting down");
        assert_eq!(
            describe(&s, "c:1"),
            "the controller at c:1 answered Unavailable: controller shutting down"
        );
    }
}
