//! Flags of `fleetctl login`, `token`, `operator`, `audit`, `events` and
//! `notify`: who may do what, what was done, and who hears of it.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::{parse_duration, parse_label, Label};

/// `fleetctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only calls at or after this: a duration back from now (1h, 7d) or an RFC 3339 time
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only entries about this app
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// Only entries by this operator (or unauthenticated, controller)
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
}

/// `fleetctl events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// From this: a duration back from now (10m, 1d) or an RFC 3339 time
    /// [default: 1h, or now with --follow]
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only events about this app
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// Only events of this kind (repeatable): rollout_started, rollout_ended,
    /// host_task_ended, host_connected, host_disconnected, ...
    #[arg(long = "kind", value_name = "KIND", value_parser = crate::events::parse_kind)]
    pub kinds: Vec<fleet_proto::FleetEventKind>,
    /// Keep the stream open and show events as they happen
    #[arg(short, long)]
    pub follow: bool,
}

/// `fleetctl notify`.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Add a webhook; a json one's signing secret is printed once.
    Add(NotifyAddArgs),
    /// List webhooks (URLs without their path) and how their deliveries went.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a webhook.
    Rm {
        /// Webhook name
        name: String,
    },
    /// Send a test event to a webhook now; fails unless it answers 2xx.
    Test {
        /// Webhook name
        name: String,
    },
}

/// `fleetctl notify add`.
#[derive(Debug, Args)]
pub struct NotifyAddArgs {
    /// Name, e.g. ops-chat (a-z 0-9 . _ -)
    pub name: String,
    /// Where events are POSTed (http:// or https://; a Slack incoming-webhook URL for --format slack)
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// slack (a line for a channel: Slack, Mattermost, Rocket.Chat) or json (the event, signed)
    #[arg(long, value_name = "FORMAT", default_value = "json", value_parser = ["slack", "json"])]
    pub format: String,
    /// Only this app's events [default: every app]
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// Only events of this kind (repeatable) [default: rollout started, canary waiting,
    /// rolling back, rollout ended, hosts failing, direct deploys' ends]
    #[arg(long = "kind", value_name = "KIND", value_parser = crate::events::parse_kind)]
    pub kinds: Vec<fleet_proto::FleetEventKind>,
}

/// `--since`: how far back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before now.
    Ago(Duration),
    /// From this Unix time in ms.
    At(i64),
}

impl Since {
    /// The start as Unix ms, given the time now.
    pub fn start_ms(self, now_ms: i64) -> i64 {
        match self {
            Since::Ago(d) => now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Since::At(ms) => ms,
        }
    }
}

pub(super) fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Since::Ago(d));
    }
    let at = humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("'{s}' is neither a duration nor an RFC 3339 time; use e.g. 1h, 7d or 2024-05-01T12:00:00Z")
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("'{s}' is before 1970; give a later time"))?
        .as_millis();
    Ok(Since::At(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// `fleetctl login`: takes --controller, --token and --ca (or --ca-fingerprint).
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Trust the controller's CA by fingerprint instead of a CA file
    #[arg(long, value_name = "sha256:HEX")]
    pub ca_fingerprint: Option<String>,
}

/// `fleetctl token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; prints the secret token string alone on stdout.
    Create(TokenCreateArgs),
    /// List join tokens (active ones unless --all).
    #[command(visible_alias = "list")]
    Ls {
        /// Include expired, revoked and used-up tokens
        #[arg(long)]
        all: bool,
    },
    /// Revoke a join token so it can no longer enroll hosts.
    Revoke {
        /// Token id
        id: String,
    },
}

/// `fleetctl token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Label every host enrolled with the token gets (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
    /// How long the token can be used, e.g. 1h [default: the controller's]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// How many hosts may enroll with it; 0 means unlimited until it expires
    /// [default: the controller's token_uses, 1 unless configured]
    #[arg(long, value_name = "N")]
    pub uses: Option<u32>,
    /// Any number of hosts may enroll with it until it expires (same as --uses 0)
    #[arg(long)]
    pub unlimited: bool,
    /// Lifetime of certificates issued to hosts enrolled with it, e.g. 7d [default: the controller's]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub cert_ttl: Option<Duration>,
    /// Free-form note, e.g. "eu-west-1 autoscaling group"
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A label key hosts enrolling with the token may set themselves in
    /// agent.toml [labels] (repeatable); hosts sending any other key are refused
    #[arg(long = "allow-label", value_name = "KEY")]
    pub allow_labels: Vec<String>,
}

/// `fleetctl keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make an Ed25519 key pair for signing releases: NAME.key (private,
    /// 0600) and NAME.pub (public).
    Generate {
        /// Path prefix of the two files, e.g. ci-signing
        name: std::path::PathBuf,
    },
}

/// `fleetctl operator ...`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Create an operator identity (a person, a CI pipeline) with a role;
    /// then give it a token with 'fleetctl operator token create NAME'.
    Create(OperatorCreateArgs),
    /// List operator identities with their role, scope and tokens.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one identity and every token it has.
    Show {
        /// Operator name
        name: String,
    },
    /// Remove an identity and every token it has (refused for the last admin).
    Rm {
        /// Operator name
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// An identity's tokens: several at once, each with its own expiry.
    #[command(subcommand)]
    Token(OperatorTokenCommand),
}

/// `fleetctl operator create`.
#[derive(Debug, Args)]
pub struct OperatorCreateArgs {
    /// Name, e.g. alice or ci-web (a-z 0-9 - _ . @); shown in the audit log
    pub name: String,
    /// admin (everything), deployer (push releases, deploy, roll out) or viewer (read only)
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// An app a deployer may change (repeatable) [default: every app]
    #[arg(long = "app", value_name = "APP")]
    pub apps: Vec<String>,
    /// Labels every host a deployer changes must carry, e.g. env=staging [default: every host]
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub selector: Option<String>,
    /// Free-form note, e.g. "GitHub Actions of the web repo"
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// `fleetctl operator token ...`.
#[derive(Debug, Subcommand)]
pub enum OperatorTokenCommand {
    /// Create a token for an identity; prints the secret alone on stdout, once.
    Create {
        /// Operator name
        name: String,
        /// How long it works: a duration (90d, 12h) or 'never'
        #[arg(long, value_name = "DURATION|never", default_value = "90d", value_parser = parse_ttl)]
        ttl: Ttl,
        /// Free-form note, e.g. "rotated 2026-12"
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Revoke one token at once; the identity's other tokens keep working.
    Revoke {
        /// Token id (see 'fleetctl operator show NAME')
        id: String,
    },
}

/// `--ttl` of an operator token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Expires this long after it is made.
    For(Duration),
    /// Never expires.
    Never,
}

pub(super) fn parse_ttl(s: &str) -> Result<Ttl, String> {
    if s == "never" {
        return Ok(Ttl::Never);
    }
    super::parse_duration(s).map(Ttl::For)
}
