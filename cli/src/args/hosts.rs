//! Flags of `fleetctl hosts` and `fleetctl bootstrap`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{parse_duration, parse_label, Label};

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
    /// A release-signing public key the hosts pin (a .pub file or the key;
    /// repeatable): they then run only releases it signed
    #[arg(long = "trusted-key", value_name = "KEYFILE")]
    pub trusted_keys: Vec<String>,
    /// The fleet-agent .deb to install [default: target/debian/fleet-agent_<version>-1_amd64.deb]
    #[arg(long, value_name = "PATH")]
    pub deb: Option<PathBuf>,
    /// Controller address the agents dial [default: the address fleetctl uses]
    #[arg(long, value_name = "HOST:PORT")]
    pub agent_controller: Option<String>,
    /// How many hosts to work on at once
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub parallel: u16,
    /// How long to wait for each host to show as connected, e.g. 2m (`--wait`
    /// before; `--wait` is a flag on `rollout`, so it was renamed)
    #[arg(long = "connect-timeout", alias = "wait", value_name = "DURATION", value_parser = parse_duration, default_value = "2m")]
    pub connect_timeout: Duration,
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
        /// Do not ask for confirmation
        #[arg(long, short = 'y', conflicts_with = "dry_run")]
        yes: bool,
    },
}
