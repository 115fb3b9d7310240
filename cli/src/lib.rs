//! fleetctl, the operator and CI client of fleet: everything but flag parsing,
//! so the commands are testable without a process.
//!
//! Each command returns a [`output::Report`] or an [`error::Error`]; [`run`]
//! prints the one and maps the other to an exit code (ARCHITECTURE.md).

pub mod apps;
pub mod args;
pub mod audit;
pub mod bootstrap;
pub mod client;
pub mod config;
pub mod confirm;
pub mod deploy;
pub mod error;
pub mod events;
pub mod hosts;
pub mod keys;
pub mod notify;
pub mod operators;
pub mod output;
pub mod releases;
pub mod rollouts;
pub mod session;
pub mod tokens;
pub mod watch;

use std::io::Write;
use std::process::ExitCode;

use args::{
    AppCommand, Cli, Command, HostsCommand, KeysCommand, NotifyCommand, OperatorCommand, OperatorTokenCommand,
    ReleaseCommand, RolloutCommand, TokenCommand,
};
use client::Client;
use config::Env;
use error::{Error, Exit};
use output::Report;

/// Runs one parsed command line against the process environment and returns
/// the exit code; errors are printed to stderr as `fleetctl: <message>`.
pub fn run(cli: Cli) -> ExitCode {
    let env = Env::from_process();
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(execute(&cli, &env)),
        Err(e) => Err(Error::Failed(format!("cannot start the async runtime: {e}"))),
    };
    let code = match result {
        Ok(report) => print(&report),
        Err(e) => {
            eprintln!("fleetctl: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

/// Runs one command.
pub async fn execute(cli: &Cli, env: &Env) -> Result<Report, Error> {
    let format = cli.global.output;
    match &cli.command {
        Command::Login(args) => session::login(&cli.global, args, env).await,
        Command::Whoami => session::whoami(&connect(cli, env).await?, format).await,
        Command::Token(TokenCommand::Create(args)) => {
            let request = tokens::create_request(args)?;
            tokens::create(&connect(cli, env).await?, request, format).await
        }
        Command::Token(TokenCommand::Ls { all }) => tokens::list(&connect(cli, env).await?, *all, format).await,
        Command::Token(TokenCommand::Revoke { id }) => tokens::revoke(&connect(cli, env).await?, id, format).await,
        Command::Keys(KeysCommand::Generate { name }) => keys::generate(name, format),
        Command::Operator(OperatorCommand::Create(args)) => {
            let request = operators::create_request(args)?;
            operators::create(&connect(cli, env).await?, request, format).await
        }
        Command::Operator(OperatorCommand::Ls) => operators::list(&connect(cli, env).await?, format).await,
        Command::Operator(OperatorCommand::Show { name }) => {
            operators::show(&connect(cli, env).await?, name, format).await
        }
        Command::Operator(OperatorCommand::Rm { name, yes }) => {
            let confirm = confirm::Confirm::from_flag(*yes, "remove an operator")?;
            let client = connect(cli, env).await?;
            confirm
                .check(
                    format!("remove operator {name} and every token it has? [y/N] "),
                    format!("operator {name} not removed"),
                )
                .await?;
            operators::remove(&client, name, format).await
        }
        Command::Operator(OperatorCommand::Token(OperatorTokenCommand::Create { name, ttl, description })) => {
            let client = connect(cli, env).await?;
            operators::create_token(&client, name, *ttl, description.as_deref(), format).await
        }
        Command::Operator(OperatorCommand::Token(OperatorTokenCommand::Revoke { id })) => {
            operators::revoke_token(&connect(cli, env).await?, id, format).await
        }
        Command::App(AppCommand::Create { name, args }) => {
            let spec = apps::create_spec(name, args)?;
            apps::create(&connect(cli, env).await?, spec, format).await
        }
        Command::App(AppCommand::Update { name, args }) => {
            fleet_proto::limits::check_app_name(name).map_err(|e| Error::Usage(e.to_string()))?;
            apps::update(&connect(cli, env).await?, name, args, format).await
        }
        Command::App(AppCommand::Ls) => apps::list(&connect(cli, env).await?, format).await,
        Command::App(AppCommand::Show { name }) => apps::show(&connect(cli, env).await?, name, format).await,
        Command::App(AppCommand::History { name }) => apps::history(&connect(cli, env).await?, name, format).await,
        Command::Release(ReleaseCommand::Push(args)) => releases::push(&connect(cli, env).await?, args, format).await,
        Command::Release(ReleaseCommand::Ls { app }) => releases::list(&connect(cli, env).await?, app, format).await,
        Command::Release(ReleaseCommand::Show { app, version }) => {
            releases::show(&connect(cli, env).await?, app, version, format).await
        }
        Command::Release(ReleaseCommand::Rm { app, version, yes }) => {
            let confirm = confirm::Confirm::from_flag(*yes, "delete a release")?;
            let client = connect(cli, env).await?;
            confirm
                .check(
                    format!("delete release {app} {version}? [y/N] "),
                    format!("{app} {version} not deleted"),
                )
                .await?;
            releases::delete(&client, app, version, format).await
        }
        Command::Deploy(args) => deploy::deploy(&connect(cli, env).await?, args, false, format).await,
        Command::Rollback(args) => match args.single_host() {
            Some(one) => deploy::deploy(&connect(cli, env).await?, &one, true, format).await,
            None => {
                let request = rollouts::rollback_request(args);
                rollouts::start(&connect(cli, env).await?, request, &args.flags, format).await
            }
        },
        Command::Rollout(args) => match &args.command {
            None => {
                // Checked before dialling: a usage error needs no controller.
                let request = rollouts::start_request(&args.start)?;
                rollouts::start(&connect(cli, env).await?, request, &args.start.flags, format).await
            }
            Some(RolloutCommand::Ls { app }) => rollouts::list(&connect(cli, env).await?, app.as_deref(), format).await,
            Some(RolloutCommand::Show { id }) => rollouts::show(&connect(cli, env).await?, id, format).await,
            Some(RolloutCommand::Status { id, watch }) => {
                rollouts::status(&connect(cli, env).await?, id, *watch, format).await
            }
            Some(RolloutCommand::Pause { id }) => {
                rollouts::control(&connect(cli, env).await?, id, "pause", false, format).await
            }
            Some(RolloutCommand::Resume { id }) => {
                rollouts::control(&connect(cli, env).await?, id, "resume", false, format).await
            }
            Some(RolloutCommand::Abort { id, rollback, yes }) => {
                // Moving hosts back is a change of its own: asked for.
                let confirm = if *rollback {
                    confirm::Confirm::from_flag(*yes, "abort a rollout and move its hosts back")?
                } else {
                    confirm::Confirm::Skip
                };
                let client = connect(cli, env).await?;
                confirm
                    .check(
                        format!(
                            "abort rollout {id} and move the hosts it changed back to their previous release? [y/N] "
                        ),
                        format!("rollout {id} not aborted"),
                    )
                    .await?;
                rollouts::control(&client, id, "abort", *rollback, format).await
            }
        },
        Command::Audit(args) => audit::list(&connect(cli, env).await?, args, format).await,
        Command::Events(args) => events::watch(&connect(cli, env).await?, args, format).await,
        Command::Notify(NotifyCommand::Add(args)) => notify::add(&connect(cli, env).await?, args, format).await,
        Command::Notify(NotifyCommand::Ls) => notify::list(&connect(cli, env).await?, format).await,
        Command::Notify(NotifyCommand::Rm { name }) => notify::remove(&connect(cli, env).await?, name, format).await,
        Command::Notify(NotifyCommand::Test { name }) => notify::test(&connect(cli, env).await?, name, format).await,
        Command::Hosts(HostsCommand::Ls { selector }) => {
            hosts::list(&connect(cli, env).await?, selector.as_deref(), format).await
        }
        Command::Hosts(HostsCommand::Show { id }) => hosts::show(&connect(cli, env).await?, id, format).await,
        Command::Hosts(HostsCommand::Label { id, set, remove }) => {
            let request = hosts::label_request(id, set, remove)?;
            hosts::label(&connect(cli, env).await?, request, format).await
        }
        Command::Hosts(HostsCommand::Rm { id, yes }) => {
            // Decided before dialling: a script without --yes is told so
            // even when the controller is down.
            let confirm = hosts::Confirm::from_flag(*yes, "remove a host")?;
            hosts::remove(&connect(cli, env).await?, id, confirm, format).await
        }
        Command::Hosts(HostsCommand::Prune {
            disconnected_for,
            dry_run,
            yes,
        }) => {
            let confirm = if *dry_run {
                confirm::Confirm::Skip
            } else {
                confirm::Confirm::from_flag(*yes, "prune hosts")?
            };
            hosts::prune(&connect(cli, env).await?, *disconnected_for, *dry_run, confirm, format).await
        }
        Command::Bootstrap(args) => bootstrap::run(cli, env, args).await,
        Command::Completion { shell } => Ok(Report::out(completion(*shell))),
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
                .map_err(|e| Error::Failed(format!("cannot write man pages to {}: {e}", dir.display())))?;
            Ok(Report::default())
        }
    }
}

/// The completion script for `shell`.
pub fn completion(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fleetctl", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves the configuration and dials the controller.
async fn connect(cli: &Cli, env: &Env) -> Result<Client, Error> {
    let resolved = config::resolve(&cli.global.flags(), env)?.require()?;
    Client::connect(&resolved).await
}

/// Writes a report. A closed stdout (`fleetctl hosts ls | head -1`) is not
/// a failure of the command.
fn print(report: &Report) -> Exit {
    let written = std::io::stdout()
        .lock()
        .write_all(report.stdout.as_bytes())
        .and_then(|()| std::io::stdout().flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("fleetctl: cannot write the output: {e}");
            return Exit::Failed;
        }
        _ => {}
    }
    // Best effort: stderr carries notes for people, never results.
    let _ = std::io::stderr().lock().write_all(report.stderr.as_bytes());
    Exit::Ok
}
