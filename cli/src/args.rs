//! The command tree and its flags (clap). Parsing errors exit with 2, which
//! is also what fleetctl uses for its own usage errors.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fleet_proto::rollout::{BatchSpec, FailureBudget, OfflinePolicy};

use crate::config::Flags;
use crate::output::Format;

/// fleetctl: operate a fleet from a laptop or a CI job.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, about, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 not found, \
                        4 authentication or permission refused, 5 controller unreachable or not trusted."
)]
pub struct Cli {
    /// Flags every subcommand takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the controller is and how to talk to it; later sources win:
/// config file, then FLEET_CONTROLLER / FLEET_TOKEN / FLEET_CA, then these flags.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Config file [env: FLEET_CONFIG] [default: $XDG_CONFIG_HOME/fleet/fleetctl.toml or ~/.config/fleet/fleetctl.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Controller address [env: FLEET_CONTROLLER]
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub controller: Option<String>,
    /// Operator token [env: FLEET_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the controller with [env: FLEET_CA]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl Global {
    /// The flags that feed configuration resolution.
    pub fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            controller: self.controller.clone(),
            token: self.token.clone(),
            ca: self.ca.clone(),
        }
    }
}

/// fleetctl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check credentials against the controller and save them to the config file.
    Login(LoginArgs),
    /// Show who the token belongs to.
    Whoami,
    /// Join tokens that enroll hosts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Apps: what fleet deploys, and how to tell they are healthy.
    #[command(subcommand)]
    App(AppCommand),
    /// Releases: immutable tarballs of an app.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Deploy a release to one host and follow it phase by phase.
    #[command(disable_version_flag = true)]
    Deploy(DeployArgs),
    /// Roll hosts back to their previous release (already on disk: no download):
    /// one host with --host, else the app's whole selection as a rollout.
    #[command(disable_version_flag = true)]
    Rollback(RollbackArgs),
    /// Move an app's hosts to a release in batches, or manage rollouts (ls, show, status, pause, resume, abort).
    #[command(disable_version_flag = true)]
    Rollout(RolloutArgs),
    /// Enrolled hosts.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// The audit log: every mutating operator call, oldest first.
    Audit(AuditArgs),
    /// Install and enroll fleet-agent on hosts over SSH.
    Bootstrap(BootstrapArgs),
}

/// `fleetctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only calls at or after this: a duration back from now (1h, 7d) or an RFC 3339 time
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    pub since: Option<Since>,
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

fn parse_since(s: &str) -> Result<Since, String> {
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

/// `fleetctl rollout`: either a subcommand or an app to roll out.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RolloutArgs {
    /// A subcommand that works on existing rollouts.
    #[command(subcommand)]
    pub command: Option<RolloutCommand>,
    /// Start a rollout of this app.
    #[command(flatten)]
    pub start: StartArgs,
}

/// `fleetctl rollout APP ...`: what to roll out, where, and how fast.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// App name
    #[arg(required = true)]
    pub app: Option<String>,
    /// Target version
    #[arg(long, value_name = "V", conflicts_with = "latest")]
    pub version: Option<String>,
    /// Roll out the newest release
    #[arg(long)]
    pub latest: bool,
    /// Canary hosts, changed first and alone
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Wait this long after the canary is healthy before going on, e.g. 60s
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "canary", conflicts_with = "canary_approve")]
    pub canary_wait: Option<Duration>,
    /// Stop after the canary until 'fleetctl rollout resume ID'
    #[arg(long, requires = "canary")]
    pub canary_approve: bool,
    /// When failures exceed the budget, stop but leave the hosts already changed as they are
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// Batch size, pacing, failures and output
    #[command(flatten)]
    pub flags: RolloutFlags,
}

/// Flags shared by `rollout APP` and the fleet-wide `rollback APP`.
#[derive(Debug, Args, Default, Clone)]
pub struct RolloutFlags {
    /// Only the app's hosts whose labels match, e.g. env=prod,region=eu-west-1
    #[arg(long, short = 'l', value_name = "K=V,...")]
    pub selector: Option<String>,
    /// Hosts changed at once: a share (25%) or a count (2) [default: 25%; rollback: 50%]
    #[arg(long, value_name = "N|P%", value_parser = parse_batch)]
    pub batch: Option<String>,
    /// Wait between batches, e.g. 10s
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub pause_between: Option<Duration>,
    /// Failed hosts tolerated before the rollout stops: a count (2) or a share (10%) [default: 0]
    #[arg(long, value_name = "N|P%", value_parser = parse_max_failures)]
    pub max_failures: Option<String>,
    /// Hosts offline when their batch comes: skip them (they converge when they return) or wait:5m [default: skip]
    #[arg(long, value_name = "skip|wait:DURATION", value_parser = parse_offline)]
    pub offline: Option<String>,
    /// How long one batch may take before its unfinished hosts count as failed [default: the controller's]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub batch_deadline: Option<Duration>,
    /// Print the plan (hosts per batch, from which release to which, failure budget) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Block until the rollout ends; exit 0 only when it succeeded
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Follow the rollout live until it ends (progress bars on a terminal, a line per event otherwise)
    #[arg(long, conflicts_with = "dry_run")]
    pub watch: bool,
}

/// `fleetctl rollout ls|show|status|pause|resume|abort`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// List rollouts, newest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Only this app's rollouts
        app: Option<String>,
    },
    /// Show one rollout: its batches and a timeline per host with each phase's duration.
    Show {
        /// Rollout id
        id: String,
    },
    /// Where a rollout stands; --watch follows it until it ends.
    Status {
        /// Rollout id, or an app name for its latest rollout
        id: String,
        /// Follow it live until it ends
        #[arg(long)]
        watch: bool,
    },
    /// Pause a rollout after the hosts in flight finish.
    Pause {
        /// Rollout id
        id: String,
    },
    /// Resume a paused rollout (or approve its canary).
    Resume {
        /// Rollout id
        id: String,
    },
    /// Stop a rollout; with --rollback, also move the hosts it changed back.
    Abort {
        /// Rollout id
        id: String,
        /// Roll the hosts it already changed back to their previous release
        #[arg(long)]
        rollback: bool,
    },
}

/// `fleetctl rollback APP [--host ID]`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// App name
    pub app: String,
    /// One host only: host id, unique id prefix, or hostname
    #[arg(long, value_name = "ID", conflicts_with_all = [
        "selector", "batch", "pause_between", "max_failures", "offline", "batch_deadline", "dry_run", "wait", "watch",
    ])]
    pub host: Option<String>,
    /// The release to go back to, one for every host [default: the release
    /// before the app's current one in its history; with --host: the host's
    /// previous release]
    #[arg(long, value_name = "V", visible_alias = "version")]
    pub to: Option<String>,
    /// Without --host: batch size, pacing, failures and output of the rollback rollout
    #[command(flatten)]
    pub flags: RolloutFlags,
}

impl RollbackArgs {
    /// The single-host form, when --host was given.
    pub fn single_host(&self) -> Option<DeployArgs> {
        let host = self.host.clone()?;
        Some(DeployArgs {
            app: self.app.clone(),
            version: self.to.clone(),
            host,
        })
    }
}

/// Checks `--batch` with the contract's own parser (`fleet_proto::rollout`),
/// the one the controller uses: "25%" (1-100) or a count of at least 1.
pub fn parse_batch(s: &str) -> Result<String, String> {
    s.parse::<BatchSpec>().map(|b| b.to_string())
}

/// Checks `--max-failures` with the contract's parser: a count or "10%".
pub fn parse_max_failures(s: &str) -> Result<String, String> {
    s.parse::<FailureBudget>().map(|b| b.to_string())
}

/// Checks `--offline` with the contract's parser: "skip" or "wait:DURATION"
/// (kept as given).
pub fn parse_offline(s: &str) -> Result<String, String> {
    s.parse::<OfflinePolicy>().map(|_| s.trim().to_string())
}

/// `fleetctl bootstrap`: per host, verify its SSH host key, upload the agent
/// package, install it with sudo, write agent.toml with a fresh single-use
/// join token bound to the labels, start the agent, and wait until it is
/// connected.
#[derive(Debug, Args)]
#[command(
    after_help = "Targets are [USER@]HOST[:PORT], on the command line or one per line in --hosts-file \
                        (blank lines and # comments are ignored). Exit code 1 when any host failed; the \
                        summary names each failed host and why."
)]
pub struct BootstrapArgs {
    /// Hosts to bootstrap, as [USER@]HOST[:PORT]
    #[arg(value_name = "[USER@]HOST[:PORT]")]
    pub targets: Vec<String>,
    /// File with one [USER@]HOST[:PORT] per line
    #[arg(long, value_name = "FILE")]
    pub hosts_file: Option<PathBuf>,
    /// SSH user for targets that name none [default: $USER]
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// SSH port for targets that name none
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// Private key to log in with [default: ~/.ssh/id_ed25519]
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// known_hosts file the host keys are checked against [default: ~/.ssh/known_hosts]
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Trust and record the key of a host not in known_hosts yet (a changed key is always refused)
    #[arg(long)]
    pub accept_new: bool,
    /// Label the hosts get (repeatable); bound into each host's join token
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
    /// The fleet-agent .deb to install [default: target/debian/fleet-agent_<version>-1_amd64.deb]
    #[arg(long, value_name = "PATH")]
    pub deb: Option<PathBuf>,
    /// Controller address the agents dial [default: the address fleetctl uses]
    #[arg(long, value_name = "HOST:PORT")]
    pub agent_controller: Option<String>,
    /// How many hosts to work on at once
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub parallel: u16,
    /// How long to wait for each host to show as connected, e.g. 2m
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2m")]
    pub wait: Duration,
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

/// `fleetctl hosts ...`.
#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List hosts.
    #[command(visible_alias = "list")]
    Ls {
        /// Only hosts whose labels match, e.g. env=prod,role=api
        #[arg(long, short = 'l', value_name = "K=V,...")]
        selector: Option<String>,
    },
    /// Show one host in detail.
    Show {
        /// Host id, unique id prefix, or hostname
        id: String,
    },
    /// Set or remove a host's labels; prints the labels it ends up with.
    Label {
        /// Host id, unique id prefix, or hostname
        id: String,
        /// Labels to set
        #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
        set: Vec<Label>,
        /// Label key to remove (repeatable)
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Remove a host: revoke its certificates and cut its live stream.
    #[command(visible_alias = "remove")]
    Rm {
        /// Host id, unique id prefix, or hostname
        id: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Remove every host that has been disconnected for at least a duration
    /// (machines that are gone), revoking their certificates.
    Prune {
        /// How long a host must have been away, e.g. 7d (at least 1m)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        disconnected_for: Duration,
        /// List the hosts without removing them
        #[arg(long)]
        dry_run: bool,
    },
}

/// `fleetctl app ...`.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Define an app.
    Create {
        /// App name, e.g. api-service
        name: String,
        /// Its settings
        #[command(flatten)]
        args: AppArgs,
    },
    /// Change an app; only the given flags change.
    Update {
        /// App name
        name: String,
        /// The settings to change
        #[command(flatten)]
        args: AppArgs,
    },
    /// List apps.
    #[command(visible_alias = "list")]
    Ls,
    /// Show an app and, per host, what it should run and what it runs.
    Show {
        /// App name
        name: String,
    },
    /// What was rolled out when, by whom, and how it ended.
    History {
        /// App name
        name: String,
    },
}

/// An app's settings.
#[derive(Debug, Args, Default)]
pub struct AppArgs {
    /// The systemd unit that runs it, e.g. api-service.service
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// Healthy when GET URL answers 2xx, e.g. http://127.0.0.1:8080/health
    #[arg(long, value_name = "URL")]
    pub health_http: Option<String>,
    /// Healthy when this shell command exits 0
    #[arg(long, value_name = "CMD")]
    pub health_command: Option<String>,
    /// No health check: the unit staying active is enough
    #[arg(long)]
    pub no_health: bool,
    /// How long the health check keeps trying [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// How long the unit must stay active after a restart [default: 3s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub settle: Option<Duration>,
    /// Releases kept on each host, at least 2 [default: 5]
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,
    /// Hosts it runs on, e.g. role=api,env=prod [default: all]
    #[arg(long, value_name = "K=V,...")]
    pub selector: Option<String>,
    /// User the release's hooks run as (needs a root agent)
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Let --unit be any service, not only fleet-app-NAME.service (the agent's
    /// polkit rule only lets it restart fleet-app-* units: extend it too)
    #[arg(long, conflicts_with = "no_allow_any_unit")]
    pub allow_any_unit: bool,
    /// Restrict --unit to fleet-app-NAME.service again (the default; app update)
    #[arg(long)]
    pub no_allow_any_unit: bool,
    /// Let --health-http point anywhere, not only at loopback (127.0.0.0/8, ::1,
    /// localhost)
    #[arg(long, conflicts_with = "no_allow_remote_health")]
    pub allow_remote_health: bool,
    /// Restrict --health-http to loopback again (the default; app update)
    #[arg(long)]
    pub no_allow_remote_health: bool,
}

/// `fleetctl release ...`.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Upload a release (.tar.gz or .tar.zst).
    #[command(disable_version_flag = true)]
    Push(PushArgs),
    /// List an app's releases, newest first.
    #[command(visible_alias = "list")]
    Ls {
        /// App name
        app: String,
    },
    /// Show one release.
    #[command(disable_version_flag = true)]
    Show {
        /// App name
        app: String,
        /// Version
        version: String,
    },
    /// Delete a release no host runs or is meant to run; its artifact is
    /// removed from the controller when no other release has the same bytes.
    #[command(visible_alias = "delete", disable_version_flag = true)]
    Rm {
        /// App name
        app: String,
        /// Version
        version: String,
    },
}

/// `fleetctl release push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// App name
    pub app: String,
    /// The tarball
    pub file: std::path::PathBuf,
    /// Version, e.g. 1.4.2
    #[arg(long, value_name = "V")]
    pub version: String,
    /// Metadata, e.g. git=abc123 (repeatable)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub meta: Vec<Label>,
}

/// `fleetctl deploy` and `fleetctl rollback`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// App name
    pub app: String,
    /// Version (deploy: required; rollback: default the previous release)
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Host id, unique id prefix, or hostname
    #[arg(long, value_name = "ID")]
    pub host: String,
}

/// One `key=value` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// Parses `key=value`. Commas are refused because selectors (`k=v,k2=v2`)
/// could not match such a label; the error names the label as given.
pub fn parse_label(s: &str) -> Result<Label, String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("label '{s}' is not key=value, e.g. env=prod"));
    };
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() {
        return Err(format!(
            "label '{s}' has an empty key; write it as key=value, e.g. env=prod"
        ));
    }
    if key.contains(char::is_whitespace) || s.contains(',') {
        return Err(format!(
            "label '{s}' contains a space or comma in its key or a comma in its value; use e.g. env=prod"
        ));
    }
    Ok(Label {
        key: key.into(),
        value: value.into(),
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration ({e}); use e.g. 30m, 1h, 7d"))?;
    if d.is_zero() {
        return Err(format!("'{s}' is zero; give a positive duration, e.g. 1h"));
    }
    let max = fleet_proto::limits::MAX_DURATION_MS;
    if d.as_millis() > u128::from(max) {
        return Err(format!(
            "'{s}' is longer than the maximum of {}",
            humantime::format_duration(Duration::from_millis(max))
        ));
    }
    Ok(d)
}

/// Labels as a map; a key given twice is a usage error naming it.
pub fn label_map(labels: &[Label]) -> Result<std::collections::HashMap<String, String>, String> {
    let mut map = std::collections::HashMap::new();
    for Label { key, value } in labels {
        if map.insert(key.clone(), value.clone()).is_some() {
            return Err(format!("label key '{key}' is given twice; give each key once"));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label("env=prod"),
            Ok(Label {
                key: "env".into(),
                value: "prod".into()
            })
        );
        assert_eq!(
            parse_label("note=a=b"),
            Ok(Label {
                key: "note".into(),
                value: "a=b".into()
            })
        );
        assert_eq!(
            parse_label("empty="),
            Ok(Label {
                key: "empty".into(),
                value: String::new()
            })
        );
        for bad in ["envprod", "=prod", "e nv=x", "env=a,b"] {
            let err = parse_label(bad).expect_err(bad);
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
        let dup = label_map(&[parse_label("a=1").expect("label"), parse_label("a=2").expect("label")]);
        assert!(dup.expect_err("duplicate").contains("'a'"));
    }

    #[test]
    fn bad_label_flag_is_a_usage_error() {
        let err = Cli::try_parse_from(["fleetctl", "token", "create", "--label", "oops"]).expect_err("bad label");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("'oops'"), "{err}");
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli =
            Cli::try_parse_from(["fleetctl", "hosts", "ls", "--output", "json", "--controller", "c:1"]).expect("parse");
        assert_eq!(cli.global.output, Format::Json);
        assert_eq!(cli.global.controller.as_deref(), Some("c:1"));
        let cli =
            Cli::try_parse_from(["fleetctl", "token", "create", "--ttl", "1h", "--cert-ttl", "7d"]).expect("parse");
        let Command::Token(TokenCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(args.cert_ttl, Some(Duration::from_secs(7 * 86_400)));
        assert!(Cli::try_parse_from(["fleetctl", "token", "create", "--ttl", "soon"]).is_err());
    }

    fn rollout(args: &[&str]) -> Result<RolloutArgs, clap::Error> {
        let mut all = vec!["fleetctl", "rollout"];
        all.extend(args);
        match Cli::try_parse_from(all)?.command {
            Command::Rollout(r) => Ok(r),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn rollout_start_takes_every_flag() {
        let r = rollout(&[
            "api",
            "--version",
            "2.0",
            "--selector",
            "env=prod",
            "--batch",
            "2",
            "--canary",
            "1",
            "--canary-wait",
            "60s",
            "--pause-between",
            "10s",
            "--max-failures",
            "10%",
            "--no-auto-rollback",
            "--offline",
            "wait:5m",
            "--batch-deadline",
            "10m",
            "--wait",
            "--watch",
        ])
        .expect("parse");
        assert!(r.command.is_none());
        let s = r.start;
        assert_eq!(s.app.as_deref(), Some("api"));
        assert_eq!(s.version.as_deref(), Some("2.0"));
        assert_eq!(s.canary, Some(1));
        assert_eq!(s.canary_wait, Some(Duration::from_secs(60)));
        assert!(s.no_auto_rollback && s.flags.wait && s.flags.watch && !s.flags.dry_run);
        assert_eq!(s.flags.batch.as_deref(), Some("2"));
        assert_eq!(s.flags.max_failures.as_deref(), Some("10%"));
        assert_eq!(s.flags.offline.as_deref(), Some("wait:5m"));
        assert_eq!(s.flags.batch_deadline, Some(Duration::from_secs(600)));
        assert_eq!(s.flags.pause_between, Some(Duration::from_secs(10)));

        let req = crate::rollouts::start_request(&s).expect("request");
        assert_eq!(
            (req.app.as_str(), req.version.as_str(), req.batch.as_str()),
            ("api", "2.0", "2")
        );
        assert_eq!(
            (req.canary, req.canary_wait_ms, req.pause_between_ms),
            (1, 60_000, 10_000)
        );
        assert_eq!((req.max_failures.as_str(), req.offline.as_str()), ("10%", "wait:5m"));
        assert_eq!(req.batch_deadline_ms, 600_000);
        assert!(req.no_auto_rollback && !req.dry_run && !req.rollback);
    }

    #[test]
    fn rollout_defaults() {
        let s = rollout(&["api", "--latest", "--dry-run"]).expect("parse").start;
        let req = crate::rollouts::start_request(&s).expect("request");
        assert!(req.latest && req.dry_run && req.version.is_empty());
        assert_eq!(
            (req.batch.as_str(), req.max_failures.as_str(), req.offline.as_str()),
            ("25%", "0", "skip")
        );
        assert_eq!((req.canary, req.canary_wait_ms, req.batch_deadline_ms), (0, 0, 0));
        let s = rollout(&["api"]).expect("parse").start;
        let err = crate::rollouts::start_request(&s).expect_err("no version");
        assert!(err.to_string().contains("--latest"), "{err}");
        assert_eq!(err.exit_code() as u8, 2);
    }

    #[test]
    fn rollout_subcommands() {
        assert!(matches!(
            rollout(&["ls"]).expect("ls").command,
            Some(RolloutCommand::Ls { app: None })
        ));
        assert!(matches!(
            rollout(&["ls", "api"]).expect("ls app").command,
            Some(RolloutCommand::Ls { app: Some(a) }) if a == "api"
        ));
        assert!(matches!(
            rollout(&["show", "r1"]).expect("show").command,
            Some(RolloutCommand::Show { id }) if id == "r1"
        ));
        assert!(matches!(
            rollout(&["status", "r1", "--watch"]).expect("status").command,
            Some(RolloutCommand::Status { id, watch: true }) if id == "r1"
        ));
        assert!(matches!(
            rollout(&["pause", "r1"]).expect("pause").command,
            Some(RolloutCommand::Pause { .. })
        ));
        assert!(matches!(
            rollout(&["resume", "r1"]).expect("resume").command,
            Some(RolloutCommand::Resume { .. })
        ));
        assert!(matches!(
            rollout(&["abort", "r1", "--rollback"]).expect("abort").command,
            Some(RolloutCommand::Abort { rollback: true, .. })
        ));
        // Start flags belong to starting a rollout, not to its subcommands.
        assert!(rollout(&["ls", "--batch", "2"]).is_err());
        // Neither a subcommand nor an app.
        assert_eq!(rollout(&[]).expect_err("nothing").exit_code(), 2);
    }

    #[test]
    fn rollout_flags_are_checked() {
        for bad in [
            vec!["api", "--latest", "--version", "1"],
            vec!["api", "--latest", "--batch", "0"],
            vec!["api", "--latest", "--batch", "120%"],
            vec!["api", "--latest", "--batch", "half"],
            vec!["api", "--latest", "--max-failures", "-1"],
            vec!["api", "--latest", "--max-failures", "101%"],
            vec!["api", "--latest", "--offline", "wait"],
            vec!["api", "--latest", "--offline", "wait:soon"],
            vec!["api", "--latest", "--canary-wait", "60s"],
            vec![
                "api",
                "--latest",
                "--canary",
                "1",
                "--canary-wait",
                "1s",
                "--canary-approve",
            ],
            vec!["api", "--latest", "--dry-run", "--wait"],
        ] {
            let err = rollout(&bad).expect_err(&format!("{bad:?}"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
        let err = rollout(&["api", "--latest", "--batch", "0"]).expect_err("zero batch");
        assert!(err.to_string().contains("'0'"), "{err}");
        assert!(rollout(&["api", "--latest", "--canary", "1", "--canary-approve"]).is_ok());
        assert!(rollout(&["api", "--latest", "--max-failures", "0%"]).is_ok());
        assert!(rollout(&["api", "--latest", "--batch", "100%"]).is_ok());
    }

    #[test]
    fn rollback_with_or_without_host() {
        let cli = Cli::try_parse_from(["fleetctl", "rollback", "api", "--host", "web-1"]).expect("parse");
        let Command::Rollback(args) = cli.command else {
            panic!("wrong command");
        };
        let one = args.single_host().expect("single host");
        assert_eq!(
            (one.app.as_str(), one.host.as_str(), one.version),
            ("api", "web-1", None)
        );

        let cli =
            Cli::try_parse_from(["fleetctl", "rollback", "api", "--selector", "env=prod", "--wait"]).expect("parse");
        let Command::Rollback(args) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.single_host().is_none());
        let req = crate::rollouts::rollback_request(&args);
        assert!(req.rollback && req.version.is_empty() && req.canary == 0);
        assert_eq!((req.batch.as_str(), req.selector.as_str()), ("50%", "env=prod"));
        // Rollout flags belong to the fleet-wide form.
        assert!(Cli::try_parse_from(["fleetctl", "rollback", "api", "--host", "web-1", "--batch", "2"]).is_err());
        // --to (or --version) names one release for the whole selection.
        for flag in ["--to", "--version"] {
            let cli = Cli::try_parse_from(["fleetctl", "rollback", "api", flag, "1.0"]).expect("parse");
            let Command::Rollback(args) = cli.command else {
                panic!("wrong command");
            };
            assert_eq!(crate::rollouts::rollback_request(&args).version, "1.0");
        }
    }

    #[test]
    fn audit_since_is_a_duration_or_a_time() {
        let cli = Cli::try_parse_from(["fleetctl", "audit", "--since", "1h"]).expect("parse");
        let Command::Audit(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.since, Some(Since::Ago(Duration::from_secs(3600))));
        assert_eq!(Since::Ago(Duration::from_secs(1)).start_ms(10_000), 9_000);
        assert_eq!(parse_since("2023-11-14T22:13:20.5Z"), Ok(Since::At(1_700_000_000_500)));
        let err = parse_since("yesterday").expect_err("not a time");
        assert!(err.contains("'yesterday'"), "{err}");
    }
}
