//! `controller.toml`: typed, validated at load, defaults in one place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Backend;

mod store;
pub use store::{store_backend, RawStore};

/// Errors loading `controller.toml`; each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}{hint}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
        /// What to do: the ownership fix when permission was denied, else
        /// which file to pass.
        hint: String,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("{path} is not a valid controller config: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// A key holds a value that cannot be used.
    #[error("{path}: key '{key}': {detail}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        detail: String,
    },
}

/// The file's shape. Durations are humantime strings ("10s", "7d").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The data dir `fleet-controller init` created.
    pub data_dir: PathBuf,
    /// gRPC over TLS, for agents and operators.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// Plain HTTP for `/metrics` and `/healthz`.
    #[serde(default = "defaults::metrics_listen")]
    pub metrics_listen: String,
    /// Heartbeat interval the controller asks agents for.
    #[serde(default = "defaults::heartbeat_interval")]
    pub heartbeat_interval: String,
    /// Default lifetime of agent certificates.
    #[serde(default = "defaults::cert_ttl")]
    pub cert_ttl: String,
    /// Default lifetime of join tokens.
    #[serde(default = "defaults::token_ttl")]
    pub token_ttl: String,
    /// "text" or "json".
    #[serde(default = "defaults::log_format")]
    pub log_format: String,
    /// Largest release artifact `release push` accepts, e.g. "2GiB", "500MiB".
    #[serde(default = "defaults::max_release_size")]
    pub max_release_size: String,
    /// After a restart, how long a resumed rollout waits for its hosts to
    /// reconnect before judging any of them offline; and how long a rollout
    /// waits for a host whose stream ended while its task ran.
    #[serde(default = "defaults::reconnect_grace")]
    pub reconnect_grace: String,
    /// Limits of the TLS port's connections (`[connections]`); `init` leaves
    /// the table out, so the defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<RawConnections>,
    /// Rate limits and quotas (`[limits]`); `init` leaves the table out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawLimits>,
    /// The audit log's cap and forwarding (`[audit]`); `init` leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<RawAudit>,
    /// How much of the event log is kept (`[events]`); `init` leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<RawEvents>,
    /// Where the fleet's state is kept (`[store]`); without it, sled in the
    /// data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<RawStore>,
}

/// `[events]`: how much of the fleet's event log is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// Events kept; the oldest go first.
    #[serde(default = "defaults::events_max_entries")]
    pub max_entries: usize,
}

/// `[audit]`: how much of the audit log is kept, and where each record is
/// forwarded as a JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Entries kept; the oldest go first.
    #[serde(default = "defaults::audit_max_entries")]
    pub max_entries: usize,
    /// A file every record is appended to (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_file: Option<PathBuf>,
    /// Send every record to the local syslog too.
    #[serde(default)]
    pub forward_syslog: bool,
    /// The syslog socket.
    #[serde(default = "defaults::syslog_socket")]
    pub syslog_socket: PathBuf,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            max_entries: defaults::audit_max_entries(),
            forward_file: None,
            forward_syslog: false,
            syslog_socket: defaults::syslog_socket(),
        }
    }
}

/// The validated `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Entries kept.
    pub max_entries: usize,
    /// The file every record is appended to.
    pub forward_file: Option<PathBuf>,
    /// The syslog socket records are sent to, when forwarding to syslog.
    pub syslog_socket: Option<PathBuf>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            max_entries: defaults::audit_max_entries(),
            forward_file: None,
            syslog_socket: None,
        }
    }
}

/// A rate in controller.toml: `{ burst = 50, per_minute = 300 }`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Calls allowed at once.
    pub burst: u32,
    /// Calls allowed per minute after the burst.
    pub per_minute: u32,
}

/// `[limits]`: rate limits and quotas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Enrollments per join token.
    #[serde(default = "defaults::enroll_per_token")]
    pub enroll_per_token: RawRate,
    /// Enrollments per source address.
    #[serde(default = "defaults::enroll_per_source")]
    pub enroll_per_source: RawRate,
    /// Failed authentications (operator tokens, join-token secrets) per source address.
    #[serde(default = "defaults::auth_failures_per_source")]
    pub auth_failures_per_source: RawRate,
    /// Shortest time between two certificate renewals of one host.
    #[serde(default = "defaults::renew_min_interval")]
    pub renew_min_interval: String,
    /// Uses of a join token created without `--uses`.
    #[serde(default = "defaults::token_uses")]
    pub token_uses: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            enroll_per_token: defaults::enroll_per_token(),
            enroll_per_source: defaults::enroll_per_source(),
            auth_failures_per_source: defaults::auth_failures_per_source(),
            renew_min_interval: defaults::renew_min_interval(),
            token_uses: defaults::token_uses(),
        }
    }
}

/// `[connections]`: how many connections the TLS port holds and how long a
/// connection may stay without a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    /// Connections held at once, from everyone; lowered at start to what the
    /// open-file limit leaves room for.
    #[serde(default = "defaults::max_connections")]
    pub max_total: usize,
    /// Connections held at once from one source address.
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_per_ip: usize,
    /// Deadline of the TLS handshake.
    #[serde(default = "defaults::handshake_timeout")]
    pub handshake_timeout: String,
    /// Deadline, after the handshake, of the first request (so also of the
    /// HTTP/2 preface, which comes before it).
    #[serde(default = "defaults::first_request_timeout")]
    pub first_request_timeout: String,
    /// How long a connection may stay open with no request in flight.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: String,
}

impl Default for RawConnections {
    fn default() -> Self {
        RawConnections {
            max_total: defaults::max_connections(),
            max_per_ip: defaults::max_connections_per_ip(),
            handshake_timeout: defaults::handshake_timeout(),
            first_request_timeout: defaults::first_request_timeout(),
            idle_timeout: defaults::idle_timeout(),
        }
    }
}

/// Every default of the controller, in one place.
pub mod defaults {
    use super::RawRate;

    /// The embedded store: one controller needs nothing else.
    pub fn store_backend() -> String {
        "sled".into()
    }
    /// The key prefix of a fleet in etcd.
    pub fn etcd_prefix() -> String {
        "fleet/".into()
    }
    /// One etcd call: a majority's disks fsync well within it.
    pub fn etcd_timeout() -> String {
        "5s".into()
    }

    /// Enrollments per join token: an autoscaling group of 100 comes up at
    /// once, then 10 a second; agents refused back off and retry.
    pub fn enroll_per_token() -> RawRate {
        RawRate {
            burst: 100,
            per_minute: 600,
        }
    }
    /// Enrollments per source address: below the per-token rate, so one
    /// address cannot spend a shared token alone (raise it behind a NAT).
    pub fn enroll_per_source() -> RawRate {
        RawRate {
            burst: 50,
            per_minute: 300,
        }
    }
    /// Failed authentications per source address: enough for typos and a
    /// misconfigured agent, far too few to guess a secret.
    pub fn auth_failures_per_source() -> RawRate {
        RawRate {
            burst: 20,
            per_minute: 30,
        }
    }
    /// Between two renewals of one host: an agent renews at half-life and
    /// asks again only after 60 s without an answer.
    pub fn renew_min_interval() -> String {
        "60s".into()
    }
    /// Uses of a join token created without --uses: one host per token
    /// unless the operator says otherwise (--uses N, --unlimited).
    pub fn token_uses() -> u32 {
        1
    }
    /// gRPC listen address.
    pub fn listen() -> String {
        "0.0.0.0:7443".into()
    }
    /// Metrics listen address: loopback, so metrics are not exposed by accident.
    pub fn metrics_listen() -> String {
        "127.0.0.1:9090".into()
    }
    /// Heartbeat interval.
    pub fn heartbeat_interval() -> String {
        "10s".into()
    }
    /// Agent certificate lifetime.
    pub fn cert_ttl() -> String {
        "7d".into()
    }
    /// Join token lifetime.
    pub fn token_ttl() -> String {
        "1h".into()
    }
    /// Log format.
    pub fn log_format() -> String {
        "text".into()
    }
    /// Largest release.
    pub fn max_release_size() -> String {
        "2GiB".into()
    }
    /// Reconnect grace of resumed rollouts: longer than the agents' longest
    /// reconnect backoff (30 s) plus a connection attempt.
    pub fn reconnect_grace() -> String {
        "60s".into()
    }
    /// Audit entries kept: a year of a busy team's changes, a few tens of MB.
    pub fn audit_max_entries() -> usize {
        100_000
    }
    /// Events kept: days of a busy fleet's rollouts and reconnects.
    pub fn events_max_entries() -> usize {
        100_000
    }
    /// Where the local syslog listens.
    pub fn syslog_socket() -> std::path::PathBuf {
        "/dev/log".into()
    }
    /// Connections held at once: the design's stretch target of agents per
    /// controller (the open-file limit usually lowers it; see `listener`).
    pub fn max_connections() -> usize {
        50_000
    }
    /// Connections from one address: high enough for a NAT gateway in front
    /// of a few thousand agents, low enough that one source cannot take all.
    pub fn max_connections_per_ip() -> usize {
        4_096
    }
    /// TLS handshake deadline.
    pub fn handshake_timeout() -> String {
        "10s".into()
    }
    /// First-request deadline: a real client sends its first request within
    /// a round trip of the handshake.
    pub fn first_request_timeout() -> String {
        "10s".into()
    }
    /// Idle deadline: agents always hold their stream, so only operator and
    /// CI connections between calls are ever idle.
    pub fn idle_timeout() -> String {
        "120s".into()
    }
}

/// The validated `[connections]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections held at once (before the open-file limit lowers it).
    pub max_total: usize,
    /// Connections held at once from one source address.
    pub max_per_ip: usize,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Deadline of the first request after the handshake.
    pub first_request_timeout: Duration,
    /// How long a connection may stay with no request in flight.
    pub idle_timeout: Duration,
}

/// The validated `[limits]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Enrollments per join token.
    pub enroll_per_token: crate::ratelimit::Rate,
    /// Enrollments per source address.
    pub enroll_per_source: crate::ratelimit::Rate,
    /// Failed authentications per source address.
    pub auth_failures_per_source: crate::ratelimit::Rate,
    /// Shortest time between two renewals of one host.
    pub renew_min_interval: Duration,
    /// Uses of a join token created without `--uses`.
    pub token_uses: u32,
}

/// The validated configuration `serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config was read from (for messages).
    pub path: PathBuf,
    /// Data dir (absolute, or relative to the config file's directory).
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Metrics listen address.
    pub metrics_listen: SocketAddr,
    /// Heartbeat interval sent to agents.
    pub heartbeat_interval: Duration,
    /// Default agent certificate lifetime.
    pub cert_ttl: Duration,
    /// Default join token lifetime.
    pub token_ttl: Duration,
    /// Emit JSON logs.
    pub json_logs: bool,
    /// Largest release artifact, bytes.
    pub max_release_bytes: u64,
    /// Reconnect grace of resumed rollouts.
    pub reconnect_grace: Duration,
    /// Limits of the TLS port's connections.
    pub connections: ConnectionLimits,
    /// Rate limits and quotas.
    pub limits: Limits,
    /// The audit log's cap and forwarding.
    pub audit: AuditSettings,
    /// Events kept in the event log.
    pub events_max_entries: usize,
    /// Where the fleet's state is kept.
    pub store: Backend,
}

/// Shortest certificate lifetime a join token may ask for (the floor).
pub const MIN_TOKEN_CERT_TTL: Duration = Duration::from_secs(3600);
/// Shortest `cert_ttl` controller.toml accepts; below an hour is for tests of renewal.
pub const MIN_CONFIG_CERT_TTL: Duration = Duration::from_secs(10);

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            let hint = match crate::owner::permission_hint(&source, path.parent().unwrap_or(path)) {
                h if h.is_empty() => "; pass the controller.toml that 'fleet-controller init' wrote".to_string(),
                h => h,
            };
            ConfigError::Read {
                path: path.into(),
                source,
                hint,
            }
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            detail: e.to_string(),
        })?;
        Config::validate(path, raw)
    }

    /// Checks every key of `raw`.
    pub fn validate(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, detail: String| ConfigError::Invalid {
            path: path.into(),
            key,
            detail,
        };
        let addr = |key: &'static str, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| invalid(key, format!("'{v}' is not an ip:port address such as 0.0.0.0:7443")))
        };
        let dur = |key: &'static str, v: &str| {
            humantime::parse_duration(v)
                .map_err(|e| invalid(key, format!("'{v}' is not a duration such as 10s, 1h or 7d ({e})")))
        };
        let data_dir = if raw.data_dir.is_absolute() {
            raw.data_dir.clone()
        } else {
            path.parent().unwrap_or(Path::new(".")).join(&raw.data_dir)
        };
        let heartbeat_interval = dur("heartbeat_interval", &raw.heartbeat_interval)?;
        if heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid("heartbeat_interval", "must be at least 100ms".into()));
        }
        let cert_ttl = dur("cert_ttl", &raw.cert_ttl)?;
        if cert_ttl < MIN_CONFIG_CERT_TTL {
            return Err(invalid(
                "cert_ttl",
                "must be at least 10s (1h or more outside tests)".into(),
            ));
        }
        let token_ttl = dur("token_ttl", &raw.token_ttl)?;
        let reconnect_grace = dur("reconnect_grace", &raw.reconnect_grace)?;
        if reconnect_grace > Duration::from_secs(3600) {
            return Err(invalid("reconnect_grace", "must be at most 1h".into()));
        }
        let json_logs = match raw.log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("'{other}' is neither \"text\" nor \"json\""),
                ))
            }
        };
        let max_release_bytes = fleet_proto::parse_size(&raw.max_release_size)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "max_release_size",
                    format!("'{}' is not a size such as 500MiB or 2GiB", raw.max_release_size),
                )
            })?;
        let raw_conns = raw.connections.clone().unwrap_or_default();
        let count = |key: &'static str, v: usize| {
            if v == 0 {
                Err(invalid(key, "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        let deadline = |key: &'static str, v: &str| {
            let d = dur(key, v)?;
            if d < Duration::from_millis(100) {
                return Err(invalid(key, format!("'{v}' is too short; give at least 100ms")));
            }
            Ok(d)
        };
        let connections = ConnectionLimits {
            max_total: count("connections.max_total", raw_conns.max_total)?,
            max_per_ip: count("connections.max_per_ip", raw_conns.max_per_ip)?,
            handshake_timeout: deadline("connections.handshake_timeout", &raw_conns.handshake_timeout)?,
            first_request_timeout: deadline("connections.first_request_timeout", &raw_conns.first_request_timeout)?,
            idle_timeout: deadline("connections.idle_timeout", &raw_conns.idle_timeout)?,
        };
        let raw_limits = raw.limits.clone().unwrap_or_default();
        let rate = |key: &'static str, r: RawRate| {
            if r.burst == 0 || r.per_minute == 0 {
                return Err(invalid(key, "burst and per_minute must be at least 1".into()));
            }
            Ok(crate::ratelimit::Rate {
                burst: r.burst,
                per_minute: r.per_minute,
            })
        };
        let renew_min_interval = dur("limits.renew_min_interval", &raw_limits.renew_min_interval)?;
        if renew_min_interval > Duration::from_secs(86_400) {
            return Err(invalid(
                "limits.renew_min_interval",
                "must be at most 1d (agents renew at half-life)".into(),
            ));
        }
        let limits = Limits {
            enroll_per_token: rate("limits.enroll_per_token", raw_limits.enroll_per_token)?,
            enroll_per_source: rate("limits.enroll_per_source", raw_limits.enroll_per_source)?,
            auth_failures_per_source: rate("limits.auth_failures_per_source", raw_limits.auth_failures_per_source)?,
            renew_min_interval,
            token_uses: count("limits.token_uses", raw_limits.token_uses as usize)? as u32,
        };
        let raw_audit = raw.audit.clone().unwrap_or_default();
        if raw_audit.max_entries < 1000 {
            return Err(invalid(
                "audit.max_entries",
                format!("{} is too few; keep at least 1000", raw_audit.max_entries),
            ));
        }
        if let Some(f) = raw_audit.forward_file.as_ref().filter(|f| !f.is_absolute()) {
            return Err(invalid(
                "audit.forward_file",
                format!("'{}' is not an absolute path", f.display()),
            ));
        }
        let audit = AuditSettings {
            max_entries: raw_audit.max_entries,
            forward_file: raw_audit.forward_file,
            syslog_socket: raw_audit.forward_syslog.then_some(raw_audit.syslog_socket),
        };
        let events_max_entries = raw
            .events
            .as_ref()
            .map_or_else(defaults::events_max_entries, |e| e.max_entries);
        if events_max_entries < 1000 {
            return Err(invalid(
                "events.max_entries",
                format!("{events_max_entries} is too few; keep at least 1000"),
            ));
        }
        let store = match &raw.store {
            None => Backend::Sled,
            Some(raw_store) => store_backend(raw_store, path.parent().unwrap_or(Path::new(".")))
                .map_err(|(key, detail)| invalid(key, detail))?,
        };
        Ok(Config {
            path: path.into(),
            store,
            audit,
            events_max_entries,
            limits,
            connections,
            max_release_bytes,
            data_dir,
            listen: addr("listen", &raw.listen)?,
            metrics_listen: addr("metrics_listen", &raw.metrics_listen)?,
            heartbeat_interval,
            cert_ttl,
            token_ttl,
            json_logs,
            reconnect_grace,
        })
    }
}

#[cfg(test)]
mod tests;
