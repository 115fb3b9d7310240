//! Artifacts among the controllers of one fleet on etcd, without a shared
//! disk.
//!
//! - A standby controller copies every release's artifact from the serving
//!   one ([`mirror`]): it reads the releases in etcd, fetches each artifact
//!   it lacks from the serving controller's `PeerService` by digest,
//!   verifies the sha256 as a push does ([`Artifacts::commit`]), and notes
//!   its copy in etcd (`meta` `copy/<sha256>/<addr>`).
//! - The serving controller answers a push only once another running
//!   controller noted a copy (`releases::replicated`): a release that was pushed
//!   survives the loss of the controller it was pushed to. With no other
//!   controller running there is nowhere to copy to, and the push says so
//!   in the log.
//! - A peer's fetch carries a grant for the peer identity [`PEER`], made
//!   with a key derived from `mac.key` ([`PEER_GRANTS`]), which only the
//!   fleet's controllers hold; agents' grants use another key, so neither
//!   passes for the other.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::peer_service_server::PeerService;
use fleet_proto::{ArtifactChunk, FetchArtifactRequest, Release};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::artifacts::Artifacts;
use crate::error::Error;
use crate::fleet::Fleet;
use crate::grants::Grants;
use crate::store::Peers;

/// The identity peer grants are made for (no host id looks like it).
pub const PEER: &str = "controller";
/// What the peer grants' key is derived for (`secrets::Macs::derive`).
pub const PEER_GRANTS: &str = "peer-fetch-grant-v1";
/// How often a standby looks for releases it lacks.
pub const MIRROR_EVERY: Duration = Duration::from_secs(1);

/// `PeerService`: artifacts for the fleet's other controllers, from the
/// serving controller or from a follower's copies.
pub struct PeerApi {
    /// Where the release records and the artifacts are.
    pub holder: Holder,
    /// Checks peer grants.
    pub grants: Grants,
}

/// Whose artifacts a [`PeerApi`] serves.
pub enum Holder {
    /// The serving controller's.
    Serving(Arc<Fleet>),
    /// A follower's copies (the releases read from etcd).
    Following {
        /// The fleet in etcd.
        peers: Arc<Peers>,
        /// The follower's artifact store.
        artifacts: Arc<Artifacts>,
        /// Counts a damaged artifact.
        metrics: Arc<crate::metrics::Metrics>,
    },
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    type FetchArtifactStream = ReceiverStream<std::result::Result<ArtifactChunk, Status>>;

    async fn fetch_artifact(
        &self,
        req: Request<FetchArtifactRequest>,
    ) -> std::result::Result<Response<Self::FetchArtifactStream>, Status> {
        let r = req.get_ref();
        let denied = |why: String| {
            tracing::warn!(sha256 = %r.sha256, reason = %why, "a peer's artifact download refused");
            Error::Denied(format!(
                "artifact {} is served to the fleet's own controllers only: {why}",
                r.sha256
            ))
        };
        if let Err(refusal) = self
            .grants
            .verify(PEER, &r.sha256, r.grant.as_ref(), fleet_proto::now_ms())
        {
            return Err(denied(refusal.to_string()).into());
        }
        let grant = r.grant.clone().unwrap_or_default();
        let found = match &self.holder {
            Holder::Serving(fleet) => fleet.store.release(&grant.app, &grant.version),
            Holder::Following { peers, .. } => {
                let (peers, app, version) = (peers.clone(), grant.app.clone(), grant.version.clone());
                tokio::task::spawn_blocking(move || peers.release(&app, &version))
                    .await
                    .map_err(|e| Status::internal(format!("reading the release: {e}")))?
            }
        }
        .map_err(Error::Store)?;
        let release = match found {
            Some(rel) if rel.artifact.as_ref().is_some_and(|a| a.sha256 == r.sha256) => rel,
            _ => return Err(denied(format!("release {} {} no longer exists", grant.app, grant.version)).into()),
        };
        tracing::info!(app = %grant.app, version = %grant.version, offset = r.offset, "a peer controller copies an artifact");
        let chunks = match &self.holder {
            Holder::Serving(fleet) => crate::releases::fetch(fleet, r, &release)?,
            Holder::Following { artifacts, metrics, .. } => {
                crate::releases::fetch_from(artifacts, metrics, r, &release)?
            }
        };
        Ok(Response::new(chunks))
    }
}

/// What a standby needs to copy artifacts.
pub struct Mirror {
    /// The fleet as seen in etcd.
    pub peers: Arc<Peers>,
    /// This controller's artifact store.
    pub artifacts: Arc<Artifacts>,
    /// Makes peer grants.
    pub grants: Grants,
    /// Trusts the fleet's CA.
    pub tls: Arc<rustls::ClientConfig>,
}

/// A standby's loop: copies every release's artifact it lacks from the
/// serving controller, until `stop`.
pub async fn mirror(m: Mirror, stop: CancellationToken) {
    let mut failing: Option<String> = None;
    let mut noted = std::collections::HashSet::new();
    loop {
        let round = mirror_once(&m, &mut noted);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        match outcome {
            Ok(copied) => {
                if copied > 0 {
                    tracing::info!(copied, "copied artifacts from the serving controller");
                }
                if failing.take().is_some() {
                    tracing::info!("copying artifacts from the serving controller works again");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "cannot copy artifacts from the serving controller; trying again");
                    failing = Some(text);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MIRROR_EVERY) => {}
        }
    }
}

/// One round: the number of artifacts copied. `noted`: the digests whose
/// copy this run noted in etcd already.
async fn mirror_once(m: &Mirror, noted: &mut std::collections::HashSet<String>) -> anyhow::Result<usize> {
    let peers = m.peers.clone();
    let releases = tokio::task::spawn_blocking(move || peers.releases()).await??;
    // Who serves: read once a round, and only when something is missing.
    let mut serving: Option<Option<String>> = None;
    let mut copied = 0;
    let mut lacking = Vec::new();
    for release in releases {
        let Some(artifact) = release.artifact.clone() else {
            continue;
        };
        let artifacts = m.artifacts.clone();
        let sha = artifact.sha256.clone();
        let present =
            tokio::task::spawn_blocking(move || artifacts.examine(&sha, artifact.size).map(|c| c.is_intact()))
                .await??;
        if present {
            // Once per run: a copy made before a restart is noted too.
            if !noted.contains(&artifact.sha256) {
                let (peers, sha) = (m.peers.clone(), artifact.sha256.clone());
                tokio::task::spawn_blocking(move || peers.note_copy(&sha)).await??;
                noted.insert(artifact.sha256.clone());
            }
            continue;
        }
        if serving.is_none() {
            let peers = m.peers.clone();
            serving = Some(tokio::task::spawn_blocking(move || peers.serving_addr()).await??);
        }
        // From the serving controller first, then from any controller that
        // noted a copy (the serving one may lack it: it took over before
        // copying a release pushed just before the last one died).
        let (peers, sha) = (m.peers.clone(), artifact.sha256.clone());
        let holders = tokio::task::spawn_blocking(move || peers.copies(&sha)).await??;
        let me = m.peers.addr();
        let mut sources: Vec<String> = Vec::new();
        for source in serving.clone().flatten().into_iter().chain(holders) {
            if source != me && !sources.contains(&source) {
                sources.push(source);
            }
        }
        let mut from = None;
        let mut failures = Vec::new();
        for source in sources {
            match fetch(m, &source, &release).await {
                Ok(()) => {
                    from = Some(source);
                    break;
                }
                Err(e) => failures.push(format!("{source}: {e:#}")),
            }
        }
        let Some(from) = from else {
            // The others are copied all the same.
            lacking.push(format!(
                "{} {} ({})",
                release.app,
                artifact.version,
                if failures.is_empty() {
                    "no other controller holds it".to_string()
                } else {
                    failures.join("; ")
                }
            ));
            continue;
        };
        let (peers, sha) = (m.peers.clone(), artifact.sha256.clone());
        tokio::task::spawn_blocking(move || peers.note_copy(&sha)).await??;
        noted.insert(artifact.sha256.clone());
        tracing::info!(app = %release.app, version = %artifact.version, from = %from, "copied a release's artifact");
        copied += 1;
    }
    if !lacking.is_empty() {
        anyhow::bail!(
            "copied {copied}; this controller lacks the artifacts of {}",
            lacking.join(", ")
        );
    }
    Ok(copied)
}

/// Fetches `release`'s artifact from the controller at `from`, verifying it.
async fn fetch(m: &Mirror, from: &str, release: &Release) -> anyhow::Result<()> {
    use anyhow::Context;
    let artifact = release.artifact.clone().unwrap_or_default();
    let grant = m.grants.mint(
        PEER,
        &release.app,
        &artifact.version,
        &artifact.sha256,
        fleet_proto::now_ms(),
    );
    let channel = fleet_proto::transport::connect(from, m.tls.clone()).await?;
    let mut chunks = fleet_proto::peer_service_client::PeerServiceClient::new(channel)
        .fetch_artifact(FetchArtifactRequest {
            sha256: artifact.sha256.clone(),
            offset: 0,
            grant: Some(grant),
        })
        .await
        .with_context(|| {
            format!(
                "the controller at {from} refused the download of {} {}",
                release.app, artifact.version
            )
        })?
        .into_inner();
    let artifacts = m.artifacts.clone();
    let mut upload = tokio::task::spawn_blocking(move || artifacts.upload()).await??;
    while let Some(chunk) = chunks
        .message()
        .await
        .with_context(|| format!("downloading {} {} from {from}", release.app, artifact.version))?
    {
        anyhow::ensure!(
            chunk.offset == upload.size(),
            "the controller at {from} sent bytes at {} where {} was next",
            chunk.offset,
            upload.size()
        );
        upload = tokio::task::spawn_blocking(move || upload.write(&chunk.data).map(|()| upload)).await??;
    }
    anyhow::ensure!(
        upload.size() == artifact.size,
        "the controller at {from} sent {} of {} bytes of {} {}",
        upload.size(),
        artifact.size,
        release.app,
        artifact.version
    );
    let artifacts = m.artifacts.clone();
    let sha = artifact.sha256.clone();
    tokio::task::spawn_blocking(move || artifacts.commit(upload, &sha)).await??;
    Ok(())
}
