//! Flags of `fleetctl app`, `release` and `deploy`.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::{parse_duration, parse_label, Label};

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
    /// User the release's hooks run as; the packaged agent runs hooks as
    /// fleet-hook@APP.service, whose drop-in on each host must set User=USER
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
    /// Refuse pushes not signed by one of these public keys (a .pub file or
    /// the key; repeatable; replaces the app's list)
    #[arg(
        long = "require-signature",
        value_name = "KEYFILE",
        conflicts_with = "no_require_signature"
    )]
    pub require_signature: Vec<String>,
    /// Accept unsigned pushes again
    #[arg(long)]
    pub no_require_signature: bool,
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
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `--release V` (`-r V`): which release of the app. `--version` was its
/// name before; it is still accepted, with a note on stderr, until the next
/// release of fleetctl (`--version` alone means fleetctl's own version).
#[derive(Debug, Clone, Default, Args)]
pub struct ReleaseFlag {
    /// The release's version, e.g. 1.4.2
    #[arg(long = "release", short = 'r', value_name = "V")]
    pub value: Option<String>,
    /// The old spelling of --release
    #[arg(long = "version", value_name = "V", hide = true, conflicts_with = "value")]
    pub old: Option<String>,
}

impl ReleaseFlag {
    /// The release named, by either spelling; the old one is noted on stderr.
    pub fn get(&self) -> Option<String> {
        if let Some(v) = &self.old {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "fleetctl: --version V is now --release V (or -r V); the old spelling goes in the next release"
            );
            return Some(v.clone());
        }
        self.value.clone()
    }

    /// A release given as `--release`.
    pub fn of(v: &str) -> ReleaseFlag {
        ReleaseFlag {
            value: Some(v.to_string()),
            old: None,
        }
    }
}

/// `fleetctl release push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// App name
    pub app: String,
    /// The tarball
    pub file: std::path::PathBuf,
    /// The release's version, e.g. 1.4.2
    #[command(flatten)]
    pub release: ReleaseFlag,
    /// Metadata, e.g. git=abc123 (repeatable)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub meta: Vec<Label>,
    /// Sign the release with this private key ('fleetctl keys generate'); the
    /// key stays here, only the signature is sent
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<std::path::PathBuf>,
    /// The release sequence to sign, higher than every earlier release of
    /// the app [default: the time now in ms]
    #[arg(long, value_name = "N", requires = "sign_key", value_parser = clap::value_parser!(u64).range(1..))]
    pub sequence: Option<u64>,
}

/// `fleetctl deploy` and `fleetctl rollback`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// App name
    pub app: String,
    /// The release (deploy: required; rollback: default the previous release)
    #[command(flatten)]
    pub release: ReleaseFlag,
    /// Host id, unique id prefix, or hostname
    #[arg(long, value_name = "ID")]
    pub host: String,
}
