//! `fleet-controller`: flags in, one library call out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleet-controller",
    version,
    about = "The fleet controller: CA, store, agent streams, operator API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new data dir: CA, server certificate, store, admin credential.
    Init(NewDataDir),
    /// Add a controller to a fleet on etcd: a new data dir with the fleet's
    /// CA and keys (copied from one of its controllers into --from), a
    /// server certificate of its own for --san, and the fleet's etcd. While
    /// another controller serves, it forwards its clients to that one and
    /// copies the releases.
    Join {
        /// A directory holding ca.pem, ca.key and mac.key from the data dir
        /// of a controller of the fleet (copy them over ssh; they are as
        /// secret as the CA; remove the copy after the join).
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        dir: NewDataDir,
    },
    /// Run the controller.
    Serve {
        /// The controller.toml that init wrote.
        #[arg(long, env = "FLEET_CONTROLLER_CONFIG")]
        config: PathBuf,
    },
    /// Print a break-glass admin token, valid for one hour, for when no
    /// admin token is left. Needs read access to the data dir's ca.key (run
    /// it as root or fleet-controller on the controller host); works while
    /// the controller runs. Use it to make a lasting token:
    /// 'fleetctl operator token create admin --ttl 90d'.
    AdminToken {
        /// The controller.toml that init wrote.
        #[arg(long, env = "FLEET_CONTROLLER_CONFIG")]
        config: PathBuf,
    },
    /// Write the man pages into DIR (the package's build uses it).
    #[command(hide = true)]
    Man {
        /// Directory for fleet-controller.1 and one page per subcommand
        dir: PathBuf,
    },
    /// The fleet's CA: rotate it, or show a rotation under way.
    #[command(subcommand)]
    Ca(CaCommand),
    /// List the fleet's controllers (on etcd): which one serves, which stand
    /// by to take over when it stops or dies.
    Members {
        /// The controller.toml that init wrote.
        #[arg(long, env = "FLEET_CONTROLLER_CONFIG")]
        config: PathBuf,
        /// Print JSON (one object per controller) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every release's stored artifact (present, right size, matches
    /// its sha256); run it with the controller stopped. Exits 1 when any is
    /// missing or damaged, 2 when it cannot check.
    Check {
        /// The controller.toml that init wrote.
        #[arg(long, env = "FLEET_CONTROLLER_CONFIG")]
        config: PathBuf,
    },
}

/// Where and how a new data dir is made (`init`, `join`).
#[derive(clap::Args)]
struct NewDataDir {
    /// The new data dir (must not exist, or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// A name or IP agents and operators reach the controller by (repeatable;
    /// default: localhost, 127.0.0.1 and this host's name). The first is
    /// written into fleetctl.toml.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// gRPC listen address written into controller.toml.
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: String,
    /// Metrics listen address written into controller.toml.
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics_listen: String,
    /// Keep the fleet's state in etcd instead of the data dir: a member's
    /// client URL, http://host:port or https://host:port (repeatable, one
    /// per member). Written into controller.toml's [store].
    #[arg(long = "etcd", value_name = "URL")]
    etcd: Vec<String>,
    /// With --etcd: the key prefix of this fleet, ending with '/'.
    #[arg(long, requires = "etcd", default_value = "fleet/")]
    etcd_prefix: String,
    /// With https:// --etcd: the CA certificate of etcd's members (PEM).
    #[arg(long, requires = "etcd", requires_all = ["etcd_cert", "etcd_key"])]
    etcd_ca: Option<PathBuf>,
    /// With https:// --etcd: this controller's client certificate (PEM).
    #[arg(long, requires = "etcd_ca")]
    etcd_cert: Option<PathBuf>,
    /// With https:// --etcd: the client certificate's key (PEM).
    #[arg(long, requires = "etcd_ca")]
    etcd_key: Option<PathBuf>,
}

impl NewDataDir {
    fn options(self, join_from: Option<PathBuf>) -> fleet_controller::InitOptions {
        let abs = |p: Option<PathBuf>| p.map(|p| std::path::absolute(&p).unwrap_or(p));
        let store = (!self.etcd.is_empty()).then(|| fleet_controller::config::RawStore {
            backend: "etcd".into(),
            endpoints: self.etcd,
            prefix: Some(self.etcd_prefix),
            ca: abs(self.etcd_ca),
            cert: abs(self.etcd_cert),
            key: abs(self.etcd_key),
            timeout: None,
        });
        fleet_controller::InitOptions {
            data_dir: self.data_dir,
            sans: self.sans,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            store,
            join_from,
        }
    }
}

#[derive(Subcommand)]
enum CaCommand {
    /// Begin replacing the CA: the running controller takes it up within a
    /// second (no restart), its agents renew onto the new CA at once, and
    /// the old CA stays trusted for the overlap. Run it as the data dir's
    /// owner (sudo -u fleet-controller) or root.
    Rotate {
        /// The controller.toml that init wrote.
        #[arg(long, env = "FLEET_CONTROLLER_CONFIG")]
        config: PathBuf,
        /// How long the old CA stays trusted: agents offline longer must
        /// enroll again, and fleetctl configs must change within it
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        overlap: std::time::Duration,
    },
    /// Show the rotation under way, if any.
    Status {
        /// The controller.toml that init wrote.
        #[arg(long, env = "FLEET_CONTROLLER_CONFIG")]
        config: PathBuf,
    },
}

/// `fleet-controller init` and `join`.
fn init(opts: fleet_controller::InitOptions) -> ExitCode {
    match fleet_controller::init(&opts) {
        Ok(r) => {
            print_next_steps(&r);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-controller: {e}");
            ExitCode::from(2)
        }
    }
}

/// `fleet-controller members`.
fn members(config: &std::path::Path, json: bool) -> ExitCode {
    let config = match fleet_controller::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let peers = match fleet_controller::store::Store::members(&config.store) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fleet-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let now = fleet_proto::now_ms();
    let role = |p: &fleet_controller::store::etcd::Peer| if p.serving { "serving" } else { "follower" };
    if json {
        for p in &peers {
            let line = serde_json::json!({
                "role": role(p),
                "host": p.field("host"),
                "addr": p.field("addr"),
                "pid": p.field("pid").parse::<u64>().unwrap_or(0),
                "dir": p.field("dir"),
                "since_ms": p.field("since").parse::<i64>().unwrap_or(0),
            });
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<8} {:<24} {:<24} {:>8} {:>10}  DATA DIR",
        "ROLE", "HOST", "ADDRESS", "PID", "UP"
    );
    for p in &peers {
        let up_ms = now - p.field("since").parse::<i64>().unwrap_or(now);
        let up = humantime::format_duration(std::time::Duration::from_secs(u64::try_from(up_ms / 1000).unwrap_or(0)));
        println!(
            "{:<8} {:<24} {:<24} {:>8} {:>10}  {}",
            role(p),
            p.field("host"),
            p.field("addr"),
            p.field("pid"),
            up.to_string(),
            p.field("dir")
        );
    }
    if !peers.iter().any(|p| p.serving) {
        eprintln!("fleet-controller: no controller serves this fleet now (none is running, or one is taking over)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(dir) => init(dir.options(None)),
        Command::Join { from, dir } => init(dir.options(Some(from))),
        Command::Check { config } => {
            let config = match fleet_controller::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fleet-controller: {e}");
                    return ExitCode::from(2);
                }
            };
            match fleet_controller::check(&config) {
                Ok(report) => {
                    print!("{}", report.render());
                    if report.damaged().next().is_some() {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("fleet-controller: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Ca(command) => ca(command),
        Command::Members { config, json } => members(&config, json),
        Command::Man { dir } => {
            use clap::CommandFactory;
            match std::fs::create_dir_all(&dir).and_then(|()| clap_mangen::generate_to(Cli::command(), &dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleet-controller: cannot write man pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::AdminToken { config } => {
            let config = match fleet_controller::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fleet-controller: {e}");
                    return ExitCode::from(2);
                }
            };
            match fleet_controller::recover::admin_token(&config.data_dir, fleet_proto::now_ms()) {
                Ok((token, expires_ms)) => {
                    println!("{token}");
                    eprintln!(
                        "a recovery admin token, valid until {} (audit name: recovery). Make a lasting one:\n  \
                         FLEET_TOKEN=<the token above> fleetctl operator token create admin --ttl 90d",
                        fleet_controller::store::utc(expires_ms)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleet-controller: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve { config } => {
            let config = match fleet_controller::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fleet-controller: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(config.json_logs);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fleet-controller: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(fleet_controller::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleet-controller: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

fn ca(command: CaCommand) -> ExitCode {
    let (config, rotate) = match command {
        CaCommand::Rotate { config, overlap } => (config, Some(overlap)),
        CaCommand::Status { config } => (config, None),
    };
    let config = match fleet_controller::Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = &config.data_dir;
    let now = fleet_proto::now_ms();
    let utc = fleet_controller::store::utc;
    let Some(overlap) = rotate else {
        return match fleet_controller::rotation::state(dir, now) {
            Ok(fleet_controller::rotation::State::Idle) => {
                println!("no CA rotation under way");
                ExitCode::SUCCESS
            }
            Ok(fleet_controller::rotation::State::Overlap(p) | fleet_controller::rotation::State::Due(p)) => {
                println!(
                    "CA rotation under way since {}: new CA {}, old CA {} trusted until {}",
                    utc(p.started_at_ms),
                    p.next_fingerprint,
                    p.previous_fingerprint,
                    utc(p.ends_at_ms)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet-controller: {e}");
                ExitCode::from(2)
            }
        };
    };
    match fleet_controller::rotation::begin(dir, overlap, now) {
        Ok(p) => {
            let end = utc(p.ends_at_ms);
            println!("CA rotation begun: the new CA is {}", p.next_fingerprint);
            println!("the old CA {} stays trusted until {end}", p.previous_fingerprint);
            println!();
            println!("The running controller takes it up within a second (no restart); connected agents");
            println!("renew onto the new CA at once. Before {end}, update:");
            println!(
                "  - fleetctl configs: fleetctl login --ca-fingerprint {} (or a copy of {}/rotation/ca.pem)",
                p.next_fingerprint,
                dir.display()
            );
            println!(
                "  - cloud-init user-data and bootstrap: ca_fingerprint = \"{}\" for new hosts",
                p.next_fingerprint
            );
            println!("Agents offline until {end} must enroll again afterwards.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-controller: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn print_next_steps(r: &fleet_controller::InitReport) {
    let dir = r.data_dir.display();
    match &r.given_to {
        Some(user) => println!("fleet controller initialised in {dir} (its files are {user}'s)"),
        None => println!("fleet controller initialised in {dir}"),
    }
    println!();
    println!("  CA fingerprint (agents pin it):  {}", r.ca_fingerprint);
    let Some(fleetctl_config) = &r.fleetctl_config else {
        println!();
        println!("This controller joined a fleet on etcd. Next steps:");
        if r.packaged {
            println!("  1. start it:  sudo systemctl enable --now fleet-controller");
        } else {
            println!("  1. start it:  fleet-controller serve --config {}", r.config.display());
        }
        println!("     It forwards to the controller that serves until it serves itself; 'fleet-controller members' lists them.");
        println!(
            "  2. add {} to the controller list of agents (agent.toml) and of fleetctl (fleetctl.toml), e.g.",
            r.controller
        );
        println!("       controller = \"c1.example.com:7443,{}\"", r.controller);
        return;
    };
    println!("  admin credential for fleetctl:   {}", fleetctl_config.display());
    println!();
    println!("Next steps:");
    if r.packaged {
        println!("  1. start it:       sudo systemctl enable --now fleet-controller");
    } else {
        println!(
            "  1. start it:       fleet-controller serve --config {}",
            r.config.display()
        );
    }
    println!("  2. log in, here or on a laptop with fleetctl installed (the token is in the credential file above):");
    println!(
        "       fleetctl login --controller {} --ca-fingerprint {} --token fleet_op_…",
        r.controller, r.ca_fingerprint
    );
    println!("  3. make a token:   fleetctl token create --label env=prod --ttl 1h --uses 10");
    println!("  4. on each host, /etc/fleet/agent.toml:");
    println!("       controller = \"{}\"", r.controller);
    println!("       ca_fingerprint = \"{}\"", r.ca_fingerprint);
    println!("       join_token = \"<the token from step 3>\"");
}
