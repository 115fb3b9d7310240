//! Flags of `fleetctl rollout` (start, ls, show, status, pause, resume,
//! abort) and `fleetctl rollback`.

use std::time::Duration;

use clap::{Args, Subcommand};
use fleet_proto::rollout::{BatchSpec, FailureBudget, OfflinePolicy};

use super::apps::DeployArgs;
use super::parse_duration;

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
    /// The release to roll out
    #[command(flatten)]
    pub release: super::ReleaseFlag,
    /// Roll out the newest release
    #[arg(long, conflicts_with_all = ["value", "old"])]
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
        /// With --rollback: do not ask for confirmation
        #[arg(long, short = 'y', requires = "rollback")]
        yes: bool,
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
    #[arg(long, value_name = "V", visible_alias = "release")]
    pub to: Option<String>,
    /// The old spelling of --to
    #[arg(long = "version", value_name = "V", hide = true, conflicts_with = "to")]
    pub old_to: Option<String>,
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
            release: super::ReleaseFlag {
                value: self.to.clone(),
                old: self.old_to.clone(),
            },
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
