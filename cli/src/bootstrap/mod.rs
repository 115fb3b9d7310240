//! `fleetctl bootstrap`: installs and enrolls fleet-agent on existing hosts
//! over SSH (russh). Per host: check its host key against known_hosts (with
//! ssh's `accept-new` semantics), log in with a key, check passwordless sudo,
//! upload the .deb and verify its digest, write /etc/fleet/agent.toml with a
//! fresh single-use join token bound to the labels, `dpkg -i`, `systemctl
//! enable --now`, then wait until the host shows as connected.
//!
//! Hosts run in parallel (`--parallel`) under one progress display; a failing
//! host never stops the others, and the summary says which failed and why.
//!
//! One job per file: `mod.rs` the command (the plan every host shares, the
//! parallel run, the summary), `target` (what `[USER@]HOST[:PORT]` means),
//! `host` (the steps on one host), `ssh` (the russh session: host keys
//! against known_hosts, remote commands with deadlines), `tests`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::transport::{self, Trust};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;

use crate::args::{label_map, BootstrapArgs, Cli};
use crate::client::{load_trust, Client};
use crate::config::{self, Env};
use crate::error::Error;
use crate::output::{Format, Report, Table};

mod host;
mod ssh;
mod target;
#[cfg(test)]
mod tests;

use host::bootstrap_host;
pub use target::{parse_target, Target};

/// How long the TCP connect plus SSH handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one remote command may take (dpkg included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Lifetime of the join token made for one host.
const TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

/// Why one host failed; each message names the host and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Not in known_hosts, and `--accept-new` was not given.
    #[error(
        "host key of {host} ({fingerprint}) is not in {known_hosts}; check the fingerprint with the host's \
         owner, then run again with --accept-new to record it (or add it with ssh-keyscan)"
    )]
    UnknownHostKey {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    /// known_hosts has another key for the host: refused, `--accept-new` or not.
    #[error(
        "HOST KEY OF {host} CHANGED: it offered {fingerprint}, which does not match {known_hosts} line {line}; \
         someone may be intercepting the connection, or the host was reinstalled. Refused even with \
         --accept-new: verify the new key, then remove the old one with 'ssh-keygen -R {host}' (use -f for \
         another file)"
    )]
    ChangedHostKey {
        host: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    /// The host presented a certificate instead of a plain key.
    #[error("{host} presented an SSH host certificate; bootstrap checks plain host keys against known_hosts only")]
    HostCertificate { host: String },
    /// The private key file could not be used.
    #[error("cannot use the SSH key {path}: {detail}")]
    Key { path: String, detail: String },
    /// TCP or the SSH handshake failed.
    #[error("cannot connect to {host}: {detail}")]
    Connect { host: String, detail: String },
    /// The server refused the key for the user.
    #[error(
        "{host} refused the key {key} for user {user}; put its public key ({key}.pub) in ~{user}/.ssh/authorized_keys \
         on the host, or pass the right key with --identity"
    )]
    AuthRefused { host: String, user: String, key: String },
    /// The server refused every key the ssh-agent holds.
    #[error(
        "{host} refused all {keys} keys of the ssh-agent at {socket} for user {user}; put the right public key in \
         ~{user}/.ssh/authorized_keys on the host, add the right key to the agent ('ssh-add FILE'), or pass it \
         with --identity"
    )]
    AgentRefused {
        host: String,
        user: String,
        keys: usize,
        socket: String,
    },
    /// The ssh-agent failed.
    #[error("the ssh-agent at {socket} failed: {detail}")]
    Agent { socket: String, detail: String },
    /// sudo wants a password (or is missing).
    #[error(
        "sudo on {host} does not run without a password for {user} ({detail}); bootstrap needs passwordless sudo \
         (a NOPASSWD rule, as on cloud images)"
    )]
    Sudo { host: String, user: String, detail: String },
    /// A remote step failed.
    #[error("{step} on {host} failed: {detail}")]
    Remote {
        host: String,
        step: &'static str,
        detail: String,
    },
    /// The controller did not issue a token.
    #[error("cannot create a join token for {host}: {detail}")]
    Token { host: String, detail: String },
    /// The agent did not connect in time.
    #[error(
        "the agent on {host} was installed and started but did not connect within {waited}; look at \
         'journalctl -u fleet-agent' on the host (is {controller} reachable from it?)"
    )]
    NotConnected {
        host: String,
        waited: String,
        controller: String,
    },
}

/// What bootstrapping one host gave.
#[derive(Debug)]
struct Outcome {
    target: Target,
    result: Result<String, HostError>,
}

/// Everything every host's task shares.
struct Plan {
    client: Client,
    labels: HashMap<String, String>,
    deb_name: String,
    deb: Arc<Vec<u8>>,
    deb_sha256: String,
    login: Login,
    known_hosts: PathBuf,
    /// Serialises reading and appending known_hosts across parallel hosts.
    known_hosts_lock: Arc<Mutex<()>>,
    accept_new: bool,
    agent_controller: String,
    ca_fingerprint: String,
    wait: Duration,
    /// `[releases] trusted_keys` of the agent.toml written.
    trusted_keys: Vec<String>,
}

/// How bootstrap logs in to hosts.
pub(crate) enum Login {
    /// With a private key file (not encrypted).
    Key {
        /// The key.
        key: Arc<russh::keys::PrivateKey>,
        /// Where it was read from.
        path: PathBuf,
    },
    /// With the keys of a running ssh-agent (`$SSH_AUTH_SOCK`), as ssh does:
    /// the agent signs, no key is read here (an encrypted key works).
    Agent {
        /// The agent's socket.
        socket: PathBuf,
        /// The public keys it holds, tried in order.
        keys: Vec<russh::keys::PublicKey>,
    },
}

/// Where the login comes from, decided from the flags and the environment
/// before anything is read. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoginSource {
    /// `--identity FILE`.
    Identity(PathBuf),
    /// The agent at this socket; the default key file if it holds no key.
    Agent { socket: PathBuf, fallback: PathBuf },
    /// The default key file.
    DefaultKey(PathBuf),
}

fn login_source(identity: Option<&Path>, auth_sock: Option<&str>, default_key: PathBuf) -> LoginSource {
    match (identity, auth_sock.filter(|s| !s.is_empty())) {
        (Some(p), _) => LoginSource::Identity(p.to_path_buf()),
        (None, Some(sock)) => LoginSource::Agent {
            socket: PathBuf::from(sock),
            fallback: default_key,
        },
        (None, None) => LoginSource::DefaultKey(default_key),
    }
}

fn load_key(path: &Path, agent_tried: Option<&str>) -> Result<Login, Error> {
    let key = russh::keys::load_secret_key(path, None).map_err(|e| {
        let why = match agent_tried {
            Some(why) => format!("{why}, and "),
            None => String::new(),
        };
        Error::Usage(format!(
            "{why}cannot use the SSH key {} ({e}); pass an unencrypted private key with --identity, or load the key \
             into ssh-agent ('ssh-add FILE') and run without --identity",
            path.display()
        ))
    })?;
    Ok(Login::Key {
        key: Arc::new(key),
        path: path.to_path_buf(),
    })
}

/// The login `source` says, read: the key file, or the agent's keys.
async fn login(source: LoginSource) -> Result<Login, Error> {
    match source {
        LoginSource::Identity(p) | LoginSource::DefaultKey(p) => load_key(&p, None),
        LoginSource::Agent { socket, fallback } => {
            let keys = async {
                let mut agent = russh::keys::agent::client::AgentClient::connect_uds(&socket)
                    .await
                    .map_err(|e| e.to_string())?;
                let ids = agent.request_identities().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(ids.iter().map(|i| i.public_key().into_owned()).collect::<Vec<_>>())
            }
            .await;
            match keys {
                Ok(keys) if !keys.is_empty() => Ok(Login::Agent { socket, keys }),
                Ok(_) => load_key(
                    &fallback,
                    Some(&format!("the ssh-agent at {} holds no key", socket.display())),
                ),
                Err(e) => load_key(
                    &fallback,
                    Some(&format!("the ssh-agent at {} cannot be used ({e})", socket.display())),
                ),
            }
        }
    }
}

/// `fleetctl bootstrap`.
pub async fn run(cli: &Cli, env: &Env, args: &BootstrapArgs) -> Result<Report, Error> {
    let format = cli.global.output;
    let targets = targets(args, env)?;
    let labels = label_map(&args.labels).map_err(Error::Usage)?;
    let home = env.get("HOME").map(PathBuf::from);
    let in_home = |rel: &str| {
        home.as_ref()
            .map(|h| h.join(rel))
            .ok_or_else(|| Error::Usage(format!("$HOME is not set; pass the file for ~/{rel} explicitly")))
    };
    let default_key = match &args.identity {
        Some(p) => p.clone(),
        None => in_home(".ssh/id_ed25519")?,
    };
    let known_hosts = match &args.known_hosts {
        Some(p) => p.clone(),
        None => in_home(".ssh/known_hosts")?,
    };
    let login = login(login_source(
        args.identity.as_deref(),
        env.get("SSH_AUTH_SOCK"),
        default_key,
    ))
    .await?;
    let deb_path = match &args.deb {
        Some(p) => p.clone(),
        None => PathBuf::from(format!(
            "target/debian/fleet-agent_{}-1_amd64.deb",
            env!("CARGO_PKG_VERSION")
        )),
    };
    let deb = std::fs::read(&deb_path).map_err(|e| {
        Error::Usage(format!(
            "cannot read the agent package {} ({e}); pass it with --deb, or build it with \
             'bash packaging/build-debs.sh'",
            deb_path.display()
        ))
    })?;
    let deb_name = deb_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".deb"))
        .ok_or_else(|| Error::Usage(format!("{} is not a .deb file", deb_path.display())))?;

    let resolved = config::resolve(&cli.global.flags(), env)?.require()?;
    let ca_fingerprint = match load_trust(&resolved.trust)? {
        Trust::Ca(der) => transport::fingerprint(&der),
        Trust::Cas(ders) => ders.first().map(|d| transport::fingerprint(d)).unwrap_or_default(),
        Trust::PinnedFingerprint(fp) => fp,
    };
    let agent_controller = args
        .agent_controller
        .clone()
        .unwrap_or_else(|| resolved.controller.clone());
    transport::split_host_port(&agent_controller).map_err(|_| {
        Error::Usage(format!(
            "--agent-controller '{agent_controller}' is not host:port, e.g. controller.example.com:7443"
        ))
    })?;
    let client = Client::connect(&resolved).await?;

    let trusted_keys = args
        .trusted_keys
        .iter()
        .map(|k| crate::keys::read_public(k).map(|k| k.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = Arc::new(Plan {
        trusted_keys,
        client,
        labels,
        deb_name,
        deb_sha256: transport::hex(ring::digest::digest(&ring::digest::SHA256, &deb).as_ref()),
        deb: Arc::new(deb),
        login,
        known_hosts,
        known_hosts_lock: Arc::new(Mutex::new(())),
        accept_new: args.accept_new,
        agent_controller,
        ca_fingerprint,
        wait: args.connect_timeout,
    });

    let progress = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let overall = progress.add(ProgressBar::new(targets.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} hosts done")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let limit = Arc::new(tokio::sync::Semaphore::new(usize::from(args.parallel)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in targets.iter().cloned().enumerate() {
        let bar = progress.insert_before(&overall, ProgressBar::new_spinner());
        bar.set_style(style.clone());
        bar.set_prefix(target.to_string());
        bar.set_message("waiting");
        let (plan, limit, overall) = (plan.clone(), limit.clone(), overall.clone());
        tasks.spawn(async move {
            // Invariant: the semaphore is never closed, so acquire cannot fail.
            let _permit = limit.acquire_owned().await;
            bar.enable_steady_tick(Duration::from_millis(200));
            let result = bootstrap_host(&plan, &target, &bar).await;
            match &result {
                Ok(host_id) => bar.finish_with_message(format!("connected as host {host_id}")),
                Err(e) => bar.finish_with_message(format!("FAILED: {e}")),
            }
            overall.inc(1);
            (i, Outcome { target, result })
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..targets.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, outcome)) => outcomes[i] = Some(outcome),
            Err(e) => return Err(Error::Failed(format!("a bootstrap task failed: {e}"))),
        }
    }
    overall.finish_and_clear();
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    summarize(&outcomes, format)
}

/// The targets from the command line and --hosts-file, in that order.
fn targets(args: &BootstrapArgs, env: &Env) -> Result<Vec<Target>, Error> {
    let user = args.user.as_deref().or_else(|| env.get("USER"));
    let mut lines: Vec<String> = args.targets.clone();
    if let Some(file) = &args.hosts_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::Usage(format!("cannot read --hosts-file {}: {e}", file.display())))?;
        lines.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
                .filter(|l| !l.is_empty()),
        );
    }
    if lines.is_empty() {
        return Err(Error::Usage(
            "no hosts given; name them as [USER@]HOST[:PORT] or in --hosts-file".into(),
        ));
    }
    let mut targets = Vec::new();
    for line in &lines {
        let t = parse_target(line, user, args.port).map_err(Error::Usage)?;
        if targets.contains(&t) {
            return Err(Error::Usage(format!("{t} is given twice; give each host once")));
        }
        targets.push(t);
    }
    Ok(targets)
}

/// Prints the per-host summary on stdout; fails (exit 1) when any host failed.
fn summarize(outcomes: &[Outcome], format: Format) -> Result<Report, Error> {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let report = match format {
        Format::Json => Report::json(&serde_json::Value::Array(
            outcomes
                .iter()
                .map(|o| match &o.result {
                    Ok(id) => json!({"target": o.target.to_string(), "ok": true, "host_id": id}),
                    Err(e) => json!({"target": o.target.to_string(), "ok": false, "error": e.to_string()}),
                })
                .collect(),
        )),
        Format::Table => {
            let mut table = Table::new(vec!["TARGET", "RESULT", "DETAIL"]);
            for o in outcomes {
                match &o.result {
                    Ok(id) => table.row(vec![o.target.to_string(), "connected".into(), format!("host {id}")]),
                    Err(e) => table.row(vec![o.target.to_string(), "FAILED".into(), e.to_string()]),
                }
            }
            Report::out(table.render())
        }
    };
    if failed.is_empty() {
        return Ok(report);
    }
    // The summary is the result even when hosts failed: print it, then fail.
    print!("{}", report.stdout);
    let mut message = format!("{} of {} hosts failed:", failed.len(), outcomes.len());
    for o in &failed {
        if let Err(e) = &o.result {
            message.push_str(&format!("\n  {}: {e}", o.target));
        }
    }
    Err(Error::Failed(message))
}
