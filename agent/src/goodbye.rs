//! `fleet-agent goodbye`: run by the package's prerm when fleet-agent is
//! removed. Tells the controller, over the host's own mTLS identity, that
//! the host leaves the fleet, so `fleetctl hosts ls` shows it uninstalled
//! instead of merely disconnected.

use std::time::Duration;

use anyhow::{anyhow, Context};
use fleet_proto::agent_message::Body as Out;
use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::{transport, AgentMessage, Goodbye};

use crate::config::Config;
use crate::identity::StateDir;

/// How long the whole exchange may take: package removal must not hang on
/// a controller that is down.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What happened, for the one line the command prints.
#[derive(Debug, PartialEq, Eq)]
pub enum Said {
    /// The controller took the goodbye.
    Told { host_id: String, controller: String },
    /// The host never enrolled: nobody to tell.
    NotEnrolled,
}

/// Says goodbye for this host; `reason` is shown in the controller's log.
pub async fn goodbye(config: &Config, reason: &str) -> anyhow::Result<Said> {
    let state = StateDir::new(&config.state_dir);
    let Some(identity) = state.load().context("cannot read this host's identity")? else {
        return Ok(Said::NotEnrolled);
    };
    let tls = transport::client_config(identity.trust()?, Some(identity.client_identity()?))
        .map_err(|e| anyhow!("this host's identity cannot be used for TLS: {e}"))?;
    let host_id = identity.host.host_id.clone();
    // Any controller of the fleet can mark the host; the first that answers does.
    let mut failures = Vec::new();
    for addr in &config.controllers {
        match tell(addr, tls.clone(), &host_id, reason).await {
            Ok(()) => {
                return Ok(Said::Told {
                    host_id,
                    controller: addr.clone(),
                })
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    Err(anyhow!("{}", failures.join("; ")))
}

/// Says goodbye to the controller at `addr`.
async fn tell(
    addr: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    host_id: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let exchange = async {
        let channel = transport::connect(addr, tls).await?;
        let message = AgentMessage {
            body: Some(Out::Goodbye(Goodbye {
                host_id: host_id.to_string(),
                reason: reason.to_string(),
            })),
        };
        let mut inbound = AgentServiceClient::new(channel)
            .stream(tokio_stream::iter([message]))
            .await
            .map_err(|s| anyhow!("the controller at {addr} refused the goodbye: {}", s.message()))?
            .into_inner();
        // The controller ends the stream once the host is marked.
        while inbound
            .message()
            .await
            .map_err(|s| anyhow!("the controller at {addr} refused the goodbye: {}", s.message()))?
            .is_some()
        {}
        anyhow::Ok(())
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("the controller at {addr} did not answer within {TIMEOUT:?}"))?
}
