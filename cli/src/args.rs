//! The command tree and its flags (clap). Parsing errors exit with 2, which
//! is also what fleetctl uses for its own usage errors.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    /// Enrolled hosts.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Install and enroll fleet-agent on hosts over SSH.
    Bootstrap(BootstrapArgs),
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
    /// How many hosts may enroll with it [default: unlimited until it expires]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: Option<u32>,
    /// Lifetime of certificates issued to hosts enrolled with it, e.g. 7d [default: the controller's]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub cert_ttl: Option<Duration>,
    /// Free-form note, e.g. "eu-west-1 autoscaling group"
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
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
}
