//! `fleet-agent run --config /etc/fleet/agent.toml`: parses flags, loads the
//! configuration, and hands over to [`fleet_agent::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_agent::{exit, Config};

/// The fleet agent: keeps this host enrolled and connected to its controller.
#[derive(Parser)]
#[command(name = "fleet-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll if needed, then hold the stream to the controller until stopped.
    Run {
        /// The agent configuration file.
        #[arg(long, env = "FLEET_AGENT_CONFIG", default_value = "/etc/fleet/agent.toml")]
        config: PathBuf,
    },
    /// Tell the controller this host leaves the fleet (the package's prerm
    /// runs it on removal): `fleetctl hosts ls` then shows it uninstalled.
    /// Exits 1 when the controller could not be told.
    Goodbye {
        /// The agent configuration file.
        #[arg(long, env = "FLEET_AGENT_CONFIG", default_value = "/etc/fleet/agent.toml")]
        config: PathBuf,
        /// Why, for the controller's log.
        #[arg(long, default_value = "the fleet-agent package is being removed")]
        reason: String,
    },
    /// Write the man pages into DIR (the package's build uses it).
    #[command(hide = true)]
    Man {
        /// Directory for fleet-agent.1 and one page per subcommand
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let config = match Cli::parse().command {
        Command::Run { config } => config,
        Command::Goodbye { config, reason } => return goodbye(&config, &reason),
        Command::Man { dir } => {
            use clap::CommandFactory;
            return match std::fs::create_dir_all(&dir).and_then(|()| clap_mangen::generate_to(Cli::command(), &dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleet-agent: cannot write man pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
    };
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => return fail(&e, exit::BAD_CONFIG),
    };
    fleet_agent::init_logging(config.log_format);
    // One thread: the agent mostly waits, and every thread costs memory.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            return fail(
                &anyhow::Error::new(e).context("cannot start the async runtime"),
                exit::FAILED,
            )
        }
    };
    match runtime.block_on(fleet_agent::run(config)) {
        Ok(()) => ExitCode::from(exit::STOPPED),
        Err(e) => fail(&e, e.exit_code()),
    }
}

fn goodbye(config: &std::path::Path, reason: &str) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return fail(&e, exit::BAD_CONFIG),
    };
    let said = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::new)
        .and_then(|rt| rt.block_on(fleet_agent::goodbye::goodbye(&config, reason)));
    match said {
        Ok(fleet_agent::goodbye::Said::Told { host_id, controller }) => {
            eprintln!("fleet-agent: told the controller at {controller} that host {host_id} leaves the fleet");
            ExitCode::SUCCESS
        }
        Ok(fleet_agent::goodbye::Said::NotEnrolled) => {
            eprintln!("fleet-agent: this host never enrolled; no controller to tell");
            ExitCode::SUCCESS
        }
        Err(e) => fail(
            &e.context("could not tell the controller this host leaves"),
            exit::FAILED,
        ),
    }
}

/// One line on stderr, whatever the log format, so it is seen in journald
/// and by whoever ran the command.
fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("fleet-agent: {e:#}");
    ExitCode::from(code)
}
