//! The SSH session of one host (russh): the host key checked against
//! known_hosts with ssh's `accept-new` semantics, key login, remote
//! commands with deadlines.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::known_hosts::known_host_keys_path;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;

use super::*;

/// What a remote command gave.
pub(super) struct Output {
    pub(super) status: u32,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: Vec<u8>,
}

impl Output {
    pub(super) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The first line of stderr, for one-line messages.
    pub(super) fn stderr_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        text.lines().next().unwrap_or("no message").trim().to_string()
    }

    /// The last lines of stdout and stderr, for a failed step.
    pub(super) fn tail(&self) -> String {
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
pub(super) struct HostKeyCheck {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) label: String,
    pub(super) known_hosts: PathBuf,
    pub(super) accept_new: bool,
    pub(super) lock: Arc<Mutex<()>>,
    pub(super) refusal: Arc<Mutex<Option<HostError>>>,
}

impl HostKeyCheck {
    pub(super) fn verdict(&self, key: &PublicKey) -> Result<(), HostError> {
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
    pub(super) fn record(&self, key: &PublicKey) -> std::io::Result<()> {
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
pub(super) struct Ssh {
    pub(super) handle: client::Handle<HostKeyCheck>,
    pub(super) host: String,
}

impl Ssh {
    /// Connects, checks the host key, and logs in with the plan's key.
    pub(super) async fn connect(plan: &Plan, target: &Target) -> Result<Ssh, HostError> {
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
        let failed = |e: String| HostError::Connect {
            host: label.clone(),
            detail: format!("authentication failed: {e}"),
        };
        match &plan.login {
            Login::Key { key, path } => {
                let key = PrivateKeyWithHashAlg::new(key.clone(), hash);
                let auth = handle
                    .authenticate_publickey(target.user.clone(), key)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                if !auth.success() {
                    return Err(HostError::AuthRefused {
                        host: label,
                        user: target.user.clone(),
                        key: path.display().to_string(),
                    });
                }
            }
            Login::Agent { socket, keys } => {
                let mut agent = russh::keys::agent::client::AgentClient::connect_uds(socket)
                    .await
                    .map_err(|e| HostError::Agent {
                        socket: socket.display().to_string(),
                        detail: e.to_string(),
                    })?;
                let mut accepted = false;
                for key in keys {
                    let auth = handle
                        .authenticate_publickey_with(target.user.clone(), key.clone(), hash, &mut agent)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                    if auth.success() {
                        accepted = true;
                        break;
                    }
                }
                if !accepted {
                    return Err(HostError::AgentRefused {
                        host: label,
                        user: target.user.clone(),
                        keys: keys.len(),
                        socket: socket.display().to_string(),
                    });
                }
            }
        }
        Ok(Ssh { handle, host: label })
    }

    /// Runs `command` through the user's shell, feeding it `stdin`.
    pub(super) async fn run(&mut self, command: &str, stdin: Option<&[u8]>) -> Result<Output, HostError> {
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
