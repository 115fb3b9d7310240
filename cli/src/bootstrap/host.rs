//! The steps on one host: connect, check sudo, upload and verify the
//! package, write agent.toml with a fresh join token, install, wait until
//! the host is connected.

use std::time::{Duration, Instant};

use fleet_proto::{CreateTokenRequest, HostStatus};
use indicatif::ProgressBar;

use super::ssh::Ssh;
use super::*;

/// Bootstraps one host; `Ok` is its host id once connected.
pub(super) async fn bootstrap_host(plan: &Plan, target: &Target, bar: &ProgressBar) -> Result<String, HostError> {
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
    let Ok(hosts) = crate::hosts::all(&plan.client, "").await else {
        return Ok(None);
    };
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
