//! `ReleaseService` (push, list, show) and the artifact store on disk.
//!
//! Artifacts are content-addressed: `DATA_DIR/artifacts/<sha256>`, written to
//! a temp file beside it while the upload is hashed, fsynced, checked against
//! the header's digest and size, then renamed into place. The same bytes are
//! stored once, whatever app or version names them. A version is immutable:
//! pushing it again with other bytes is refused, with the same bytes it is a
//! no-op that returns the stored release.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_proto::release_service_server::ReleaseService;
use fleet_proto::signing::PublicKey;
use fleet_proto::{
    now_ms, AppSpec, ArtifactChunk, DeleteReleaseRequest, DeleteReleaseResponse, FetchArtifactRequest,
    GetReleaseRequest, Host, ListReleasesRequest, ListReleasesResponse, PushReleaseChunk, Release, ReleaseHeader,
    ReleaseRef, Rollout,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::artifacts::{check_head, ArtifactError, Artifacts, Condition, NotARelease, HEAD};
use crate::auth::operator;
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::rollouts::current_of;

/// Size of the chunks artifacts are served in.
pub const CHUNK: usize = 64 * 1024;

/// The formats a release may come in, by name on the wire.
pub const FORMATS: [&str; 2] = ["tar.gz", "tar.zst"];

/// Checks a version string: it becomes a directory name on every host.
pub fn check_version(v: &str) -> Result<()> {
    if fleet_proto::is_safe_name(v) {
        Ok(())
    } else {
        Err(Error::invalid(
            "version",
            format!("version '{v}' is not valid: 1-64 of [A-Za-z0-9._+-], not starting with '.'"),
        ))
    }
}

/// Checks a lowercase hex sha256.
pub fn check_sha256(s: &str) -> Result<()> {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(Error::invalid(
            "sha256",
            format!("'{s}' is not a sha256 digest (64 lowercase hex characters)"),
        ))
    }
}

/// Response metadata key of a push's outcome: `stored` (new release),
/// `unchanged` (same bytes again, stored copy intact) or `repaired` (same
/// bytes again, replacing a missing or damaged stored copy).
pub const PUSH_OUTCOME: &str = "fleet-push-outcome";

fn answer(release: Release, outcome: &'static str) -> Response<Release> {
    let mut r = Response::new(release);
    r.metadata_mut()
        .insert(PUSH_OUTCOME, tonic::metadata::MetadataValue::from_static(outcome));
    r
}

/// Checks a push's signature against the app's required keys (any key
/// when it requires none: a signature that does not verify is refused
/// either way). Hosts check again with the keys they pin.
fn check_signature(spec: &AppSpec, header: &ReleaseHeader) -> Result<()> {
    let required = spec
        .signing_keys
        .iter()
        .map(|k| PublicKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|why| Error::Internal(format!("app {}'s stored signing keys: {why}", spec.name)))?;
    fleet_proto::signing::check(
        &required,
        "the app",
        &header.app,
        &header.version,
        &header.sha256,
        header.signature.as_ref(),
    )
    .map(|_| ())
    .map_err(|r| Error::invalid("signature", format!("{} {}: {r}", header.app, header.version)))
}

/// `ReleaseService`.
pub struct ReleasesService(pub Arc<Fleet>);

#[tonic::async_trait]
impl ReleaseService for ReleasesService {
    async fn push_release(&self, req: Request<Streaming<PushReleaseChunk>>) -> Result<Response<Release>, Status> {
        let fleet = &self.0;
        let op = operator(&req);
        let who = op.name.clone();
        let note = crate::audit::note(&req);
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Error::invalid("header", "the upload ended before its header"))?;
        let header = first
            .header
            .ok_or_else(|| Error::invalid("header", "the first chunk of an upload must carry the header"))?;
        note.set(|d| {
            d.app = header.app.clone();
            d.version = header.version.clone();
            d.target = format!("sha256 {}", header.sha256);
        });
        op.may_change_app(&header.app)?;
        let spec = fleet
            .store
            .app(&header.app)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownApp(header.app.clone()))?;
        check_version(&header.version)?;
        check_sha256(&header.sha256)?;
        check_signature(&spec, &header)?;
        fleet_proto::limits::check_metadata(header.metadata.iter()).map_err(Error::from)?;
        if !FORMATS.contains(&header.format.as_str()) {
            return Err(Error::invalid(
                "format",
                format!(
                    "format '{}' is not supported: push a .tar.gz or .tar.zst",
                    header.format
                ),
            )
            .into());
        }
        if header.size > fleet.settings.max_release_bytes {
            return Err(Error::invalid(
                "size",
                format!(
                    "the release is {} bytes, more than max_release_size ({} bytes) in controller.toml",
                    header.size, fleet.settings.max_release_bytes
                ),
            )
            .into());
        }
        if header.size == 0 {
            return Err(Error::from(NotARelease::Empty).into());
        }
        let existing = fleet
            .store
            .release(&header.app, &header.version)
            .map_err(Error::Store)?;
        if let Some(existing) = &existing {
            let stored = existing.artifact.clone().unwrap_or_default();
            if stored.sha256 != header.sha256 {
                return Err(Error::Exists(format!(
                    "{} {} exists with other bytes (sha256 {}, this upload {}); releases are immutable: push a new version",
                    header.app, header.version, stored.sha256, header.sha256
                ))
                .into());
            }
            if header.signature.is_some() && stored.signature != header.signature {
                return Err(Error::Exists(format!(
                    "{} {} was pushed with {} signature; releases are immutable: push a new version to sign it",
                    header.app,
                    header.version,
                    if stored.signature.is_some() { "another" } else { "no" }
                ))
                .into());
            }
            let artifacts = &fleet.artifacts;
            let condition =
                tokio::task::block_in_place(|| artifacts.examine(&stored.sha256, stored.size)).map_err(Error::from)?;
            if condition.is_intact() {
                // Same bytes again: nothing to store. The rest of the upload
                // is not read; the client sees the answer and stops sending.
                tracing::info!(app = %header.app, version = %header.version, "release pushed again with the same bytes; no-op");
                replicated(fleet, existing).await?;
                return Ok(answer(existing.clone(), "unchanged"));
            }
            // The stored copy is gone or damaged and these are its bytes:
            // take the upload and put it back (verified like any upload).
            tracing::warn!(
                app = %header.app,
                version = %header.version,
                sha256 = %stored.sha256,
                condition = condition.word(),
                "release pushed again while its stored artifact is not intact; repairing it"
            );
        }

        let mut upload = fleet.artifacts.upload().map_err(Error::from)?;
        let mut head: Vec<u8> = Vec::new();
        let mut judged = false;
        let mut data = first.data;
        loop {
            if upload.size() + data.len() as u64 > header.size {
                return Err(Error::invalid(
                    "data",
                    format!(
                        "the upload is longer than the {} bytes its header announced",
                        header.size
                    ),
                )
                .into());
            }
            if !judged {
                // Refuse what can never be a release as soon as enough of it
                // arrived, before storing the rest.
                head.extend_from_slice(&data[..data.len().min(HEAD - head.len())]);
                if head.len() >= HEAD {
                    check_head(&header.format, &head).map_err(Error::from)?;
                    judged = true;
                }
            }
            upload.write(&data).map_err(Error::from)?;
            match chunks.message().await? {
                Some(c) => data = c.data,
                None => break,
            }
        }
        if upload.size() != header.size {
            return Err(Error::Truncated {
                got: upload.size(),
                want: header.size,
            }
            .into());
        }
        if !judged {
            check_head(&header.format, &head).map_err(Error::from)?;
        }
        // From the rename until the release naming the file is durable, no
        // release removal may collect the file.
        let naming = fleet.artifacts.naming.lock().await;
        let artifacts = &fleet.artifacts;
        tokio::task::block_in_place(|| artifacts.commit(upload, &header.sha256)).map_err(Error::from)?;
        if let Some(existing) = existing {
            tracing::info!(app = %header.app, version = %header.version, sha256 = %header.sha256, "stored artifact repaired");
            drop(naming);
            replicated(fleet, &existing).await?;
            return Ok(answer(existing, "repaired"));
        }
        let digest = header.sha256.clone();
        let release = Release {
            app: header.app.clone(),
            artifact: Some(ReleaseRef {
                version: header.version.clone(),
                sha256: digest,
                size: header.size,
                format: header.format.clone(),
                signature: header.signature.clone(),
            }),
            pushed_by: who,
            pushed_at_ms: now_ms(),
            metadata: header.metadata,
        };
        match fleet.store.put_release(&release).map_err(Error::Store)? {
            Ok(()) => {}
            // A concurrent push of the same version won the race.
            Err(existing) if existing.artifact.as_ref().map(|a| &a.sha256) == Some(&header.sha256) => {
                return Ok(answer(existing, "unchanged"))
            }
            Err(existing) => {
                return Err(Error::Exists(format!(
                    "{} {} was pushed concurrently with other bytes (sha256 {})",
                    header.app,
                    header.version,
                    existing.artifact.unwrap_or_default().sha256
                ))
                .into())
            }
        }
        fleet.store.flush().await.map_err(Error::Store)?;
        drop(naming);
        tracing::info!(app = %release.app, version = %header.version, size = header.size, "release stored");
        // Several controllers: answered once another one holds a copy.
        replicated(fleet, &release).await?;
        fleet
            .events
            .note(fleet_proto::FleetEventKind::ReleasePushed, &release.pushed_by, |e| {
                e.app = release.app.clone();
                e.version = header.version.clone();
                e.detail = format!("{} bytes, sha256 {}", header.size, header.sha256);
            });
        Ok(answer(release, "stored"))
    }

    async fn list_releases(&self, req: Request<ListReleasesRequest>) -> Result<Response<ListReleasesResponse>, Status> {
        let app = &req.get_ref().app;
        self.0
            .store
            .app(app)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownApp(app.clone()))?;
        let releases = self.0.store.releases(app).map_err(Error::Store)?;
        Ok(Response::new(ListReleasesResponse { releases }))
    }

    async fn get_release(&self, req: Request<GetReleaseRequest>) -> Result<Response<Release>, Status> {
        let r = req.get_ref();
        self.0
            .store
            .app(&r.app)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownApp(r.app.clone()))?;
        let rel = self
            .0
            .store
            .release(&r.app, &r.version)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownRelease {
                app: r.app.clone(),
                version: r.version.clone(),
            })?;
        Ok(Response::new(rel))
    }

    async fn delete_release(
        &self,
        req: Request<DeleteReleaseRequest>,
    ) -> Result<Response<DeleteReleaseResponse>, Status> {
        let fleet = &self.0;
        let op = operator(&req);
        let who = op.name.clone();
        let note = crate::audit::note(&req);
        let DeleteReleaseRequest { app, version } = req.into_inner();
        note.set(|d| {
            d.app = app.clone();
            d.version = version.clone();
        });
        op.may_change_app(&app)?;
        fleet
            .store
            .app(&app)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownApp(app.clone()))?;
        check_version(&version)?;
        // One naming change at a time: no push may name the artifact between
        // "nothing names it" and its removal.
        let _naming = fleet.artifacts.naming.lock().await;
        let release = fleet
            .store
            .release(&app, &version)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownRelease {
                app: app.clone(),
                version: version.clone(),
            })?;
        let records = &fleet.rollouts.records;
        let uses = in_use(
            &app,
            &version,
            &fleet.store.hosts().map_err(Error::Store)?,
            &records.desired_of_app(&app).map_err(Error::Store)?,
            records.app_release(&app).map_err(Error::Store)?.as_deref(),
            records.active(&app).map_err(Error::Store)?.as_ref(),
        );
        if !uses.is_empty() {
            return Err(Error::Precondition(format!(
                "{app} {version} is in use and was not deleted: {}. Deploy another release to those hosts \
                 (or let the rollout end) and delete it then",
                uses.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ))
            .into());
        }
        fleet.store.delete_release(&app, &version).map_err(Error::Store)?;
        // Durable before the file goes: a crash in between leaves an
        // artifact nothing names (swept at start), never a release without
        // its bytes.
        fleet.store.flush().await.map_err(Error::Store)?;
        let sha256 = release.artifact.as_ref().map(|a| a.sha256.clone()).unwrap_or_default();
        let named = fleet.store.artifact_digests().map_err(Error::Store)?;
        let artifact_removed = !sha256.is_empty() && !named.contains(&sha256);
        if artifact_removed {
            let artifacts = &fleet.artifacts;
            tokio::task::block_in_place(|| artifacts.remove(&sha256)).map_err(Error::from)?;
        }
        tracing::info!(app, version, sha256, artifact_removed, operator = %who, "release deleted");
        fleet
            .events
            .note(fleet_proto::FleetEventKind::ReleaseDeleted, &who, |e| {
                e.app = app.clone();
                e.version = version.clone();
            });
        Ok(Response::new(DeleteReleaseResponse {
            release: Some(release),
            artifact_removed,
        }))
    }
}

/// What keeps a release from being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InUse {
    /// A host runs it (its last inventory says so).
    Runs {
        /// Host id.
        host_id: String,
        /// Its hostname.
        hostname: String,
    },
    /// A host's desired release is it: convergence would deploy it again.
    Desired {
        /// Host id.
        host_id: String,
    },
    /// It is the app's release for new hosts.
    ForNewHosts,
    /// A rollout that has not ended deploys it or may roll hosts back to it.
    Rollout {
        /// Rollout id.
        id: String,
    },
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InUse::Runs { host_id, hostname } => write!(f, "host {hostname} ({host_id}) runs it"),
            InUse::Desired { host_id } => write!(f, "host {host_id} is meant to run it (its desired release)"),
            InUse::ForNewHosts => write!(f, "it is the app's release for new hosts"),
            InUse::Rollout { id } => write!(f, "rollout {id} has not ended and deploys it or may roll back to it"),
        }
    }
}

/// Everything that uses `version` of `app`: hosts running it, hosts whose
/// desired release it is, the app's release for new hosts, and the app's
/// active rollout. Empty when the release may be deleted.
pub fn in_use(
    app: &str,
    version: &str,
    hosts: &[Host],
    desired: &HashMap<String, String>,
    for_new_hosts: Option<&str>,
    active: Option<&Rollout>,
) -> Vec<InUse> {
    let mut uses = Vec::new();
    for h in hosts {
        if current_of(h, app) == version {
            uses.push(InUse::Runs {
                host_id: h.id.clone(),
                hostname: h.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default(),
            });
        }
    }
    let mut wanted: Vec<&String> = desired.iter().filter(|(_, v)| *v == version).map(|(h, _)| h).collect();
    wanted.sort();
    uses.extend(wanted.into_iter().map(|h| InUse::Desired { host_id: h.clone() }));
    if for_new_hosts == Some(version) {
        uses.push(InUse::ForNewHosts);
    }
    if let Some(r) = active {
        let touches = r.version == version
            || r.batches
                .iter()
                .flat_map(|b| &b.hosts)
                .any(|h| h.to_version == version || h.from_version == version);
        if touches {
            uses.push(InUse::Rollout { id: r.id.clone() });
        }
    }
    uses
}

/// Streams `DATA_DIR/artifacts/<sha256>` of `release` from `offset` (the
/// agents' download), after checking that the stored bytes still are the
/// release's: a damaged artifact is refused with DATA_LOSS naming the release,
/// the digest and the fix, and counted in `fleet_artifacts_corrupt_total`.
pub fn fetch(
    fleet: &Fleet,
    req: &FetchArtifactRequest,
    release: &Release,
) -> Result<ReceiverStream<Result<ArtifactChunk, Status>>> {
    fetch_from(&fleet.artifacts, &fleet.metrics, req, release)
}

/// How long a host's download waits for an artifact this controller is
/// copying from another (see [`await_copy`]).
pub const COPY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// On etcd, an artifact this controller lacks (it took over before it
/// copied a release pushed just before the last serving controller died)
/// is being copied from a controller that holds it (`peers::mirror`, every
/// second): waits up to [`COPY_WAIT`] for it, so that the host's download
/// is answered. On sled, or when the artifact is there, returns at once.
pub async fn await_copy(fleet: &Fleet, release: &Release) -> Result<()> {
    if fleet.store.peers().is_none() {
        return Ok(());
    }
    let artifact = release.artifact.clone().unwrap_or_default();
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let condition = tokio::task::block_in_place(|| fleet.artifacts.examine(&artifact.sha256, artifact.size))?;
        if condition != Condition::Missing || started.elapsed() >= COPY_WAIT {
            return Ok(());
        }
        if !told {
            tracing::warn!(app = %release.app, version = %artifact.version, "a host asks for an artifact this controller lacks; waiting for its copy from another controller");
            told = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// [`fetch`] from `artifacts`, counting a damaged one in `metrics` (a
/// follower serves its copies to the fleet's other controllers).
pub fn fetch_from(
    artifacts: &Artifacts,
    metrics: &Metrics,
    req: &FetchArtifactRequest,
    release: &Release,
) -> Result<ReceiverStream<Result<ArtifactChunk, Status>>> {
    check_sha256(&req.sha256)?;
    let artifact = release.artifact.clone().unwrap_or_default();
    let condition = tokio::task::block_in_place(|| artifacts.examine(&req.sha256, artifact.size))?;
    if !condition.is_intact() {
        metrics.artifacts_corrupt.inc();
        tracing::error!(
            app = %release.app,
            version = %artifact.version,
            sha256 = %req.sha256,
            condition = condition.word(),
            "refusing to serve a damaged artifact"
        );
        return Err(Error::Damaged(damaged(release, &condition)));
    }
    let path = artifacts.path(&req.sha256);
    let io = |what: &'static str, e: std::io::Error| -> Error {
        ArtifactError::Io {
            what,
            path: path.clone(),
            source: e,
        }
        .into()
    };
    let file = std::fs::File::open(&path).map_err(|e| io("open", e))?;
    let len = file.metadata().map_err(|e| io("stat", e))?.len();
    if req.offset > len {
        return Err(Error::PastEnd {
            offset: req.offset,
            sha256: req.sha256.clone(),
            len,
        });
    }
    // Two chunks in flight per download: each a reference to the shared
    // read (artifacts::chunks), so a batch of hosts costs its encode and
    // send buffers, not a copy of the chunks each.
    let (tx, rx) = mpsc::channel(2);
    let mut offset = req.offset;
    let cache = artifacts.chunks.clone();
    let sha256 = req.sha256.clone();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        // The agent's stream carries a status: the same one `?` would give.
        let fail = |what: &'static str, e: std::io::Error| -> Status {
            Error::from(ArtifactError::Io {
                what,
                path: path.clone(),
                source: e,
            })
            .into()
        };
        while offset < len {
            let (start, size, skip) = chunk_at(offset, len);
            let read = || -> std::io::Result<prost::bytes::Bytes> {
                let mut buf = vec![0u8; size];
                file.read_exact_at(&mut buf, start)?;
                Ok(buf.into())
            };
            let data = match cache.get_or_read(&sha256, start, read) {
                Ok(d) => d.slice(skip..),
                Err(e) => {
                    let _ = tx.blocking_send(Err(fail("read", e)));
                    return;
                }
            };
            let n = data.len() as u64;
            if tx.blocking_send(Ok(ArtifactChunk { offset, data })).is_err() {
                return; // the agent went away
            }
            offset += n;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The chunk of an artifact of `len` bytes that holds `offset`: where it
/// starts, its size, and how far into it `offset` is. Chunks start at
/// multiples of [`CHUNK`], so that every download asks for the same ones
/// (and shares them); a resumed download starts inside its first.
fn chunk_at(offset: u64, len: u64) -> (u64, usize, usize) {
    let start = offset - offset % CHUNK as u64;
    let size = (len - start).min(CHUNK as u64) as usize;
    (start, size, (offset - start) as usize)
}

/// The operator's sentence for a release whose stored artifact is damaged.
pub fn damaged(release: &Release, condition: &Condition) -> String {
    let a = release.artifact.clone().unwrap_or_default();
    format!(
        "the controller's copy of {app} {version} (artifact sha256 {sha}) is damaged: {what}; nothing was \
         sent. Repair it on the controller by pushing the same file again: 'fleetctl release push {app} FILE \
         --release {version}' ('fleet-controller check' lists every damaged release)",
        app = release.app,
        version = a.version,
        sha = a.sha256,
        what = condition.describe(a.size),
    )
}

/// How long a push waits for another controller to copy its artifact.
pub const REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// After a push stored `release` here: notes this controller's copy and
/// waits until another running controller noted one too. Nothing to wait
/// for on sled, or when no other controller runs (logged).
async fn replicated(fleet: &Fleet, release: &Release) -> Result<()> {
    let Some(peers) = fleet.store.peers() else {
        return Ok(());
    };
    let artifact = release.artifact.clone().unwrap_or_default();
    let sha256 = artifact.sha256.clone();
    tokio::task::block_in_place(|| peers.note_copy(&sha256)).map_err(Error::Store)?;
    let others = tokio::task::block_in_place(|| peers.others()).map_err(Error::Store)?;
    if others.is_empty() {
        tracing::warn!(
            app = %release.app, version = %artifact.version,
            "no other controller of the fleet is running: this release's artifact is on this controller only"
        );
        return Ok(());
    }
    let started = std::time::Instant::now();
    loop {
        let copies = tokio::task::block_in_place(|| peers.copies(&sha256)).map_err(Error::Store)?;
        let me = peers.addr();
        if let Some(other) = copies.iter().find(|a| *a != me) {
            tracing::info!(app = %release.app, version = %artifact.version, copy = %other, after = ?started.elapsed(), "the artifact is on another controller too");
            return Ok(());
        }
        if started.elapsed() >= REPLICATION_WAIT {
            return Err(Error::Unavailable(format!(
                "release {} {} is stored on this controller ({me}), but no other controller of the fleet ({}) \
                 copied its artifact within {REPLICATION_WAIT:?}, so it would be lost with this controller: check \
                 their logs and 'fleet-controller members', then push it again (the release is kept; a push of \
                 the same bytes waits for the copy again)",
                release.app,
                artifact.version,
                others.join(", ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_aligned_and_a_resumed_download_gets_each_byte_once() {
        let c = CHUNK as u64;
        assert_eq!(chunk_at(0, 3 * c), (0, CHUNK, 0));
        assert_eq!(chunk_at(c + 5, 3 * c), (c, CHUNK, 5));
        assert_eq!(chunk_at(2 * c, 2 * c + 10), (2 * c, 10, 0), "the last is short");
        // A walk as the serving loop does it, from an odd offset.
        let (len, mut offset, mut sent) = (3 * c + 77, c / 3, Vec::new());
        while offset < len {
            let (start, size, skip) = chunk_at(offset, len);
            assert_eq!(start % c, 0);
            sent.push((offset, size - skip));
            offset += (size - skip) as u64;
        }
        assert_eq!(offset, len);
        assert_eq!(sent[0], (c / 3, CHUNK - (c / 3) as usize));
        assert_eq!(sent.len(), 4);
    }

    #[test]
    fn versions_are_safe_directory_names() {
        for ok in ["1.4.2", "v2", "1.0.0-rc.1+build.5", "2026_11_24"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", ".hidden", "a/b", "1 2", "x\0", &"9".repeat(65)] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_must_be_lowercase_hex() {
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256("../../etc/passwd").is_err());
    }

    fn host_running(id: &str, version: &str) -> Host {
        Host {
            id: id.into(),
            facts: Some(fleet_proto::HostFacts {
                hostname: format!("{id}.example"),
                ..Default::default()
            }),
            inventory: Some(fleet_proto::Inventory {
                apps: vec![fleet_proto::AppInventory {
                    app: "web".into(),
                    current: version.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_release_is_in_use_while_a_host_runs_wants_or_a_rollout_uses_it() {
        let hosts = [host_running("h1", "1.0"), host_running("h2", "2.0")];
        let none = HashMap::new();
        assert_eq!(in_use("web", "3.0", &hosts, &none, None, None), vec![]);
        assert_eq!(
            in_use("web", "1.0", &hosts, &none, None, None),
            vec![InUse::Runs {
                host_id: "h1".into(),
                hostname: "h1.example".into()
            }]
        );
        // Another app's release of the same version is not this one.
        assert_eq!(in_use("api", "1.0", &hosts, &none, None, None), vec![]);
        let desired = HashMap::from([("h2".to_string(), "3.0".to_string())]);
        assert_eq!(
            in_use("web", "3.0", &hosts, &desired, Some("3.0"), None),
            vec![InUse::Desired { host_id: "h2".into() }, InUse::ForNewHosts]
        );
        let rollout = Rollout {
            id: "r-1".into(),
            app: "web".into(),
            version: "4.0".into(),
            batches: vec![fleet_proto::RolloutBatch {
                hosts: vec![fleet_proto::RolloutHost {
                    host_id: "h1".into(),
                    from_version: "0.9".into(),
                    to_version: "4.0".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        for used in ["4.0", "0.9"] {
            assert_eq!(
                in_use("web", used, &[], &none, None, Some(&rollout)),
                vec![InUse::Rollout { id: "r-1".into() }],
                "{used}"
            );
        }
        assert_eq!(in_use("web", "3.0", &[], &none, None, Some(&rollout)), vec![]);
    }
}
