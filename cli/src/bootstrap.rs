//! `fleetctl bootstrap`: installs and enrolls fleet-agent on existing hosts
//! over SSH (russh). Per host: check its host key against known_hosts (with
//! ssh's `accept-new` semantics), log in with a key, check passwordless sudo,
//! upload the .deb and verify its digest, write /etc/fleet/agent.toml with a
//! fresh single-use join token bound to the labels, `dpkg -i`, `systemctl
//! enable --now`, then wait until the host shows as connected.
//!
//! Hosts run in parallel (`--parallel`) under one progress display; a failing
//! host never stops the others, and the summary says which failed and why.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::transport::{self, Trust};
use fleet_proto::{CreateTokenRequest, HostStatus, ListHostsRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use russh::client;
use russh::keys::known_hosts::known_host_keys_path;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use serde_json::json;

use crate::args::{label_map, BootstrapArgs, Cli};
use crate::client::{load_trust, Client};
use crate::config::{self, Env};
use crate::error::Error;
use crate::output::{Format, Report, Table};

/// How long the TCP connect plus SSH handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one remote command may take (dpkg included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Lifetime of the join token made for one host.
const TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

/// One host to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// SSH user.
    pub user: String,
    /// Host name or address.
    pub host: String,
    /// SSH port.
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port == 22 {
            write!(f, "{}@{}", self.user, self.host)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// Parses `[USER@]HOST[:PORT]` (`[v6addr]:port` too); `user` and `port` fill
/// in what the target does not say.
pub fn parse_target(s: &str, user: Option<&str>, port: u16) -> Result<Target, String> {
    let s = s.trim();
    let (who, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, s),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("target '{s}' has '[' without ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, parse_port(s, p)?),
            None if after.is_empty() => (h, port),
            None => return Err(format!("target '{s}' has text after ']'; write [ADDRESS]:PORT")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, parse_port(s, p)?),
            _ => (rest, port),
        }
    };
    if host.is_empty() {
        return Err(format!("target '{s}' names no host; write [USER@]HOST[:PORT]"));
    }
    let user = match who.or(user) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            return Err(format!(
                "target '{s}' names no user and neither --user nor $USER is set; write USER@{host}"
            ))
        }
    };
    Ok(Target {
        user,
        host: host.to_string(),
        port,
    })
}

fn parse_port(target: &str, p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("target '{target}' has a bad port '{p}'"))
}

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
    key: Arc<russh::keys::PrivateKey>,
    key_path: PathBuf,
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
    let key_path = match &args.identity {
        Some(p) => p.clone(),
        None => in_home(".ssh/id_ed25519")?,
    };
    let known_hosts = match &args.known_hosts {
        Some(p) => p.clone(),
        None => in_home(".ssh/known_hosts")?,
    };
    let key = russh::keys::load_secret_key(&key_path, None).map_err(|e| {
        Error::Usage(format!(
            "cannot use the SSH key {} ({e}); pass an unencrypted private key with --identity",
            key_path.display()
        ))
    })?;
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
        key: Arc::new(key),
        key_path,
        known_hosts,
        known_hosts_lock: Arc::new(Mutex::new(())),
        accept_new: args.accept_new,
        agent_controller,
        ca_fingerprint,
        wait: args.wait,
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

/// Bootstraps one host; `Ok` is its host id once connected.
async fn bootstrap_host(plan: &Plan, target: &Target, bar: &ProgressBar) -> Result<String, HostError> {
    let host = target.to_string();
    bar.set_message("connecting");
    let mut ssh = Ssh::connect(plan, target).await?;

    bar.set_message("checking sudo");
    let sudo = ssh.run("sudo -n true", None).await?;
    if sudo.status != 0 {
        return Err(HostError::Sudo {
            host,
            user: target.user.clone(),
            detail: sudo.stderr_line(),
        });
    }

    bar.set_message("uploading the package");
    let upload = ssh
        .run(
            "set -e; umask 077; f=$(mktemp /tmp/fleet-agent.XXXXXXXX.deb); cat >\"$f\"; sha256sum \"$f\"",
            Some(plan.deb.as_slice()),
        )
        .await?;
    let remote = upload.stdout_text();
    let (digest, remote_path) = remote.trim().split_once(char::is_whitespace).unwrap_or_default();
    let remote_path = remote_path.trim().to_string();
    if upload.status != 0 || digest != plan.deb_sha256 || !remote_path.starts_with("/tmp/fleet-agent.") {
        return Err(HostError::Remote {
            host,
            step: "uploading the package",
            detail: format!(
                "the copy of {} does not check out (sha256 {} expected, the host said '{}' {})",
                plan.deb_name,
                plan.deb_sha256,
                remote.trim(),
                upload.stderr_line()
            ),
        });
    }

    bar.set_message("creating a join token");
    let request = CreateTokenRequest {
        labels: plan.labels.clone(),
        ttl_ms: TOKEN_TTL.as_millis() as u64,
        max_uses: 1,
        description: format!("fleetctl bootstrap {host}"),
        cert_ttl_ms: 0,
        // The labels are the token's; the agent.toml written here has none.
        allowed_label_keys: Vec::new(),
        unlimited: false,
    };
    let created = plan
        .client
        .tokens()
        .create_token(request)
        .await
        .map_err(|s| HostError::Token {
            host: host.clone(),
            detail: plan.client.fail(s).to_string(),
        })?
        .into_inner();
    let token_id = created.token.map(|t| t.id).unwrap_or_default();
    // The secret travels on the command's stdin, never on a command line.
    let mut agent_toml = format!(
        "# Written by 'fleetctl bootstrap {host}'.\ncontroller = \"{}\"\nca_fingerprint = \"{}\"\njoin_token = \"{}\"\n",
        plan.agent_controller, plan.ca_fingerprint, created.secret
    );
    if !plan.trusted_keys.is_empty() {
        let quoted: Vec<String> = plan.trusted_keys.iter().map(|k| format!("\"{k}\"")).collect();
        agent_toml.push_str(&format!("[releases]\ntrusted_keys = [{}]\n", quoted.join(", ")));
    }

    bar.set_message("installing");
    // What a host's operator would run: the config first, so the package's
    // postinst finds a controller and starts the agent; --force-confold
    // keeps that config; enable --now covers an agent that was stopped.
    let install = format!(
        "sudo -n sh -c 'set -e; install -d -m 0755 /etc/fleet; umask 027; cat >/etc/fleet/agent.toml.bootstrap; \
         mv -f /etc/fleet/agent.toml.bootstrap /etc/fleet/agent.toml; \
         DEBIAN_FRONTEND=noninteractive dpkg --force-confold -i \"$1\"; rm -f \"$1\"; \
         systemctl enable --now fleet-agent.service' fleet-bootstrap {remote_path}"
    );
    let installed = ssh.run(&install, Some(agent_toml.as_bytes())).await?;
    if installed.status != 0 {
        return Err(HostError::Remote {
            host,
            step: "installing fleet-agent (dpkg -i, systemctl enable --now)",
            detail: installed.tail(),
        });
    }

    bar.set_message("waiting for the agent to connect");
    let start = Instant::now();
    loop {
        if let Some(id) = connected_host(plan, &mut ssh, &token_id).await? {
            return Ok(id);
        }
        if start.elapsed() > plan.wait {
            return Err(HostError::NotConnected {
                host,
                waited: humantime::format_duration(plan.wait).to_string(),
                controller: plan.agent_controller.clone(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The id of the host, once the controller sees it connected: the host that
/// enrolled with `token_id`, or (a host bootstrapped again, which keeps its
/// identity) the host id the agent stored on the host.
async fn connected_host(plan: &Plan, ssh: &mut Ssh, token_id: &str) -> Result<Option<String>, HostError> {
    let Ok(listed) = plan.client.hosts().list_hosts(ListHostsRequest::default()).await else {
        return Ok(None);
    };
    let hosts = listed.into_inner().hosts;
    let connected = |h: &&fleet_proto::Host| h.status == HostStatus::Connected as i32;
    if let Some(h) = hosts.iter().filter(connected).find(|h| h.token_id == token_id) {
        return Ok(Some(h.id.clone()));
    }
    let stored = ssh.run("cat /var/lib/fleet-agent/host.json", None).await?;
    let stored_id = serde_json::from_slice::<serde_json::Value>(&stored.stdout)
        .ok()
        .and_then(|v| v["host_id"].as_str().map(String::from));
    Ok(stored_id.filter(|id| hosts.iter().filter(connected).any(|h| &h.id == id)))
}

/// What a remote command gave.
struct Output {
    status: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The first line of stderr, for one-line messages.
    fn stderr_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        text.lines().next().unwrap_or("no message").trim().to_string()
    }

    /// The last lines of stdout and stderr, for a failed step.
    fn tail(&self) -> String {
        let both = format!(
            "{}\n{}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        );
        let lines: Vec<&str> = both.lines().filter(|l| !l.trim().is_empty()).collect();
        format!(
            "exit status {}: {}",
            self.status,
            lines[lines.len().saturating_sub(6)..].join(" | ")
        )
    }
}

/// The host key check russh asks for during the handshake. The verdict is
/// kept, so a refusal can be reported with its reason.
struct HostKeyCheck {
    host: String,
    port: u16,
    label: String,
    known_hosts: PathBuf,
    accept_new: bool,
    lock: Arc<Mutex<()>>,
    refusal: Arc<Mutex<Option<HostError>>>,
}

impl HostKeyCheck {
    fn verdict(&self, key: &PublicKey) -> Result<(), HostError> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let known_hosts = self.known_hosts.display().to_string();
        // Held across read and append so two hosts' tasks do not interleave.
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let recorded =
            known_host_keys_path(&self.host, self.port, &self.known_hosts).map_err(|e| HostError::Connect {
                host: self.label.clone(),
                detail: format!("cannot read {known_hosts}: {e}"),
            })?;
        if recorded.iter().any(|(_, k)| k == key) {
            return Ok(());
        }
        // Any other key on record for this host, of any type, is a change:
        // stricter than matching by key type, never weaker than ssh.
        if let Some((line, _)) = recorded.first() {
            return Err(HostError::ChangedHostKey {
                host: self.label.clone(),
                fingerprint,
                known_hosts,
                line: *line,
            });
        }
        if !self.accept_new {
            return Err(HostError::UnknownHostKey {
                host: self.label.clone(),
                fingerprint,
                known_hosts,
            });
        }
        self.record(key).map_err(|e| HostError::Connect {
            host: self.label.clone(),
            detail: format!("cannot record its host key in {known_hosts}: {e}"),
        })
    }

    /// Appends the key to known_hosts as ssh writes it (`[host]:port` when
    /// the port is not 22), creating the file (0600) and its directory.
    fn record(&self, key: &PublicKey) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom, Write};
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = self.known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.known_hosts)?;
        let mut last = [0u8; 1];
        let needs_newline =
            file.seek(SeekFrom::End(-1)).is_ok() && file.read_exact(&mut last).is_ok() && last[0] != b'\n';
        let name = if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        };
        let openssh = key.to_openssh().map_err(std::io::Error::other)?;
        let line = format!("{}{name} {openssh}\n", if needs_newline { "\n" } else { "" });
        file.write_all(line.as_bytes())?;
        file.sync_all()
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.verdict(key),
            PublicKeyOrCertificate::Certificate(_) => Err(HostError::HostCertificate {
                host: self.label.clone(),
            }),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

/// A logged-in SSH connection to one host.
struct Ssh {
    handle: client::Handle<HostKeyCheck>,
    host: String,
}

impl Ssh {
    /// Connects, checks the host key, and logs in with the plan's key.
    async fn connect(plan: &Plan, target: &Target) -> Result<Ssh, HostError> {
        let label = target.to_string();
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(COMMAND_TIMEOUT),
            ..client::Config::default()
        });
        let refusal = Arc::new(Mutex::new(None));
        let check = HostKeyCheck {
            host: target.host.clone(),
            port: target.port,
            label: label.clone(),
            known_hosts: plan.known_hosts.clone(),
            accept_new: plan.accept_new,
            lock: plan.known_hosts_lock.clone(),
            refusal: refusal.clone(),
        };
        let connecting = client::connect(config, (target.host.as_str(), target.port), check);
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await;
        let refused = refusal.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut handle = match (connected, refused) {
            (_, Some(refusal)) => return Err(refusal),
            (Ok(Ok(h)), None) => h,
            (Ok(Err(e)), None) => {
                return Err(HostError::Connect {
                    host: label,
                    detail: e.to_string(),
                })
            }
            (Err(_), None) => {
                return Err(HostError::Connect {
                    host: label,
                    detail: format!("no SSH handshake within {CONNECT_TIMEOUT:?}"),
                })
            }
        };

        let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
        let key = PrivateKeyWithHashAlg::new(plan.key.clone(), hash);
        let auth = handle
            .authenticate_publickey(target.user.clone(), key)
            .await
            .map_err(|e| HostError::Connect {
                host: label.clone(),
                detail: format!("authentication failed: {e}"),
            })?;
        if !auth.success() {
            return Err(HostError::AuthRefused {
                host: label,
                user: target.user.clone(),
                key: plan.key_path.display().to_string(),
            });
        }
        Ok(Ssh { handle, host: label })
    }

    /// Runs `command` through the user's shell, feeding it `stdin`.
    async fn run(&mut self, command: &str, stdin: Option<&[u8]>) -> Result<Output, HostError> {
        let fail = |detail: String| HostError::Remote {
            host: self.host.clone(),
            step: "running a command",
            detail,
        };
        let work = async {
            let mut channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| fail(format!("cannot open a session: {e}")))?;
            channel
                .exec(true, command)
                .await
                .map_err(|e| fail(format!("cannot start '{command}': {e}")))?;
            if let Some(bytes) = stdin {
                channel
                    .data(bytes)
                    .await
                    .map_err(|e| fail(format!("cannot send input: {e}")))?;
            }
            channel
                .eof()
                .await
                .map_err(|e| fail(format!("cannot close input: {e}")))?;
            let mut out = Output {
                status: u32::MAX,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.status = exit_status,
                    _ => {}
                }
            }
            Ok(out)
        };
        tokio::time::timeout(COMMAND_TIMEOUT, work)
            .await
            .map_err(|_| fail(format!("'{command}' did not finish within {COMMAND_TIMEOUT:?}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICdmGdxtkJvW8ISvm6ASmJ5fwXo+0EqDV9WOgweCF6Eh";
    const KEY_B: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEwMbsByiDoqQiXZV0HHyreiNKP15UwmS8t+INhSgaWp1QS5JJhSjCBWACT/3HeVyttc4PwCosNWJqqfTYtf9uA=";

    fn check(known_hosts: &std::path::Path, port: u16, accept_new: bool) -> HostKeyCheck {
        HostKeyCheck {
            host: "web-1".into(),
            port,
            label: "ubuntu@web-1".into(),
            known_hosts: known_hosts.to_path_buf(),
            accept_new,
            lock: Arc::new(Mutex::new(())),
            refusal: Arc::new(Mutex::new(None)),
        }
    }

    #[test]
    fn host_keys_follow_accept_new_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ssh/known_hosts");
        let a = PublicKey::from_openssh(KEY_A).expect("key a");
        let b = PublicKey::from_openssh(KEY_B).expect("key b");

        // Unknown, no --accept-new: refused, nothing written.
        let err = check(&file, 2222, false).verdict(&a).expect_err("unknown");
        assert!(matches!(err, HostError::UnknownHostKey { .. }), "{err}");
        assert!(!file.exists());

        // Unknown with --accept-new: recorded as ssh writes it, then known.
        check(&file, 2222, true).verdict(&a).expect("accepted");
        let text = std::fs::read_to_string(&file).expect("written");
        assert_eq!(text, format!("[web-1]:2222 {KEY_A}\n"));
        check(&file, 2222, false).verdict(&a).expect("known now");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), text, "no duplicate line");

        // Another key for the same host, even of another type: changed, refused
        // with --accept-new too, and the file is left alone.
        let err = check(&file, 2222, true).verdict(&b).expect_err("changed");
        assert!(matches!(err, HostError::ChangedHostKey { line: 1, .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), text);

        // Port 22 is a different entry, written as the bare host name.
        check(&file, 22, true).verdict(&b).expect("accepted on port 22");
        assert!(std::fs::read_to_string(&file)
            .expect("read")
            .ends_with(&format!("\nweb-1 {KEY_B}\n")));
    }

    #[test]
    fn targets_parse() {
        let t = parse_target("ubuntu@web-1", None, 22).expect("parse");
        assert_eq!((t.user.as_str(), t.host.as_str(), t.port), ("ubuntu", "web-1", 22));
        let t = parse_target("web-1:2222", Some("admin"), 22).expect("parse");
        assert_eq!((t.user.as_str(), t.host.as_str(), t.port), ("admin", "web-1", 2222));
        let t = parse_target("root@[::1]:2200", None, 22).expect("parse");
        assert_eq!((t.host.as_str(), t.port), ("::1", 2200));
        let t = parse_target("u@::1", None, 22).expect("parse");
        assert_eq!((t.host.as_str(), t.port), ("::1", 22));
        assert_eq!(t.to_string(), "u@::1");
        for bad in ["web-1", "u@", "u@h:0", "u@h:x", "u@[::1"] {
            let err = parse_target(bad, None, 22).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }
}
