//! The command tree and its flags (clap). Parsing errors exit with 2, which
//! is also what fleetctl uses for its own usage errors.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Flags;
use crate::output::Format;

mod access;
mod apps;
mod hosts;
mod rollouts;
#[cfg(test)]
mod tests;

pub use access::*;
pub use apps::*;
pub use hosts::*;
pub use rollouts::*;

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
    /// Operator identities (people, CI) with roles, and their tokens.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Keys that sign releases (verified by hosts that pin them).
    #[command(subcommand)]
    Keys(KeysCommand),
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
    /// The audit log: every change and every refused call, who, from where, on
    /// what, how it ended; oldest first.
    Audit(AuditArgs),
    /// The fleet's events: rollouts, deploys, hosts connecting, disconnecting,
    /// enrolling and removed, releases, apps; oldest first, one per line.
    Events(EventsArgs),
    /// Webhooks: rollouts starting, waiting for a canary's approval, ending,
    /// rolled back, hosts failing, sent to chat (slack) or any HTTP endpoint
    /// (json, signed).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Install and enroll fleet-agent on hosts over SSH.
    Bootstrap(BootstrapArgs),
    /// Print shell completions: `fleetctl completion bash > /etc/bash_completion.d/fleetctl`
    /// (the package installs bash's).
    Completion {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages into DIR (the packages' build uses it).
    #[command(hide = true)]
    Man {
        /// Directory for fleetctl.1 and one page per subcommand
        dir: PathBuf,
    },
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
