//! `ReleaseService` (push, list, show) and the artifact store on disk.
//!
//! Artifacts are content-addressed: `DATA_DIR/artifacts/<sha256>`, written to
//! a temp file beside it while the upload is hashed, fsynced, checked against
//! the header's digest and size, then renamed into place. The same bytes are
//! stored once, whatever app or version names them. A version is immutable:
//! pushing it again with other bytes is refused, with the same bytes it is a
//! no-op that returns the stored release.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_proto::release_service_server::ReleaseService;
use fleet_proto::transport::hex;
use fleet_proto::{
    now_ms, ArtifactChunk, FetchArtifactRequest, GetReleaseRequest, ListReleasesRequest, ListReleasesResponse,
    PushReleaseChunk, Release, ReleaseRef,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{internal, Fleet};
use crate::ops::operator;

/// Size of the chunks artifacts are served in.
pub const CHUNK: usize = 256 * 1024;

/// The formats a release may come in, by name on the wire.
pub const FORMATS: [&str; 2] = ["tar.gz", "tar.zst"];

/// Checks a version string: it becomes a directory name on every host.
pub fn check_version(v: &str) -> Result<(), Status> {
    if fleet_proto::is_safe_name(v) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "version '{v}' is not valid: 1-64 of [A-Za-z0-9._+-], not starting with '.'"
        )))
    }
}

/// Checks a lowercase hex sha256.
pub fn check_sha256(s: &str) -> Result<(), Status> {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "'{s}' is not a sha256 digest (64 lowercase hex characters)"
        )))
    }
}

/// The artifact directory of a data dir.
pub fn artifacts_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("artifacts")
}

/// Which format the first bytes of an archive are, by magic number.
fn sniff(first: &[u8]) -> Option<&'static str> {
    if first.starts_with(&[0x1f, 0x8b]) {
        Some("tar.gz")
    } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("tar.zst")
    } else {
        None
    }
}

/// An upload being written; the temp file is removed unless it is kept.
struct Upload {
    tmp: PathBuf,
    file: std::fs::File,
    hasher: ring::digest::Context,
    size: u64,
}

impl Upload {
    fn new(dir: &Path) -> Result<Upload, Status> {
        std::fs::create_dir_all(dir).map_err(|e| io_status("create the artifact directory", dir, &e))?;
        let tmp = dir.join(format!(".upload-{}", crate::random_hex(8)));
        let file = std::fs::File::create(&tmp).map_err(|e| io_status("create", &tmp, &e))?;
        Ok(Upload {
            tmp,
            file,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Status> {
        self.file
            .write_all(data)
            .map_err(|e| io_status("write", &self.tmp, &e))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// fsyncs and renames into `dir/<sha256>`; returns the digest.
    fn finish(self, dir: &Path) -> Result<String, Status> {
        self.file.sync_all().map_err(|e| io_status("fsync", &self.tmp, &e))?;
        let digest = hex(self.hasher.clone().finish().as_ref());
        let dest = dir.join(&digest);
        if !dest.exists() {
            std::fs::rename(&self.tmp, &dest).map_err(|e| io_status("rename", &dest, &e))?;
            if let Ok(d) = std::fs::File::open(dir) {
                // Best effort: the rename is durable once the directory is.
                let _ = d.sync_all();
            }
        }
        Ok(digest)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a successful rename this path no longer exists; either way
        // no partial upload is left behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn io_status(what: &str, path: &Path, e: &std::io::Error) -> Status {
    if e.raw_os_error() == Some(28) {
        return Status::resource_exhausted(format!(
            "the controller's disk is full ({what} {}); free space in its data dir and push again",
            path.display()
        ));
    }
    tracing::error!(path = %path.display(), error = %e, what, "artifact store I/O failed");
    Status::internal(format!("the controller could not {what} {}: {e}", path.display()))
}

/// `ReleaseService`.
pub struct ReleasesService(pub Arc<Fleet>);

#[tonic::async_trait]
impl ReleaseService for ReleasesService {
    async fn push_release(&self, req: Request<Streaming<PushReleaseChunk>>) -> Result<Response<Release>, Status> {
        let fleet = &self.0;
        let who = operator(&req).name;
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the upload ended before its header"))?;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("the first chunk of an upload must carry the header"))?;
        fleet
            .store
            .app(&header.app)
            .map_err(internal)?
            .ok_or_else(|| unknown_app(&header.app))?;
        check_version(&header.version)?;
        check_sha256(&header.sha256)?;
        fleet_proto::limits::check_metadata(header.metadata.iter())?;
        if !FORMATS.contains(&header.format.as_str()) {
            return Err(Status::invalid_argument(format!(
                "format '{}' is not supported: push a .tar.gz or .tar.zst",
                header.format
            )));
        }
        if header.size > fleet.settings.max_release_bytes {
            return Err(Status::invalid_argument(format!(
                "the release is {} bytes, more than max_release_size ({} bytes) in controller.toml",
                header.size, fleet.settings.max_release_bytes
            )));
        }
        if let Some(existing) = fleet.store.release(&header.app, &header.version).map_err(internal)? {
            let stored = existing.artifact.clone().unwrap_or_default();
            if stored.sha256 != header.sha256 {
                return Err(Status::already_exists(format!(
                    "{} {} exists with other bytes (sha256 {}, this upload {}); releases are immutable: push a new version",
                    header.app, header.version, stored.sha256, header.sha256
                )));
            }
            // Same bytes again: nothing to store. The rest of the upload is
            // not read; the client sees the answer and stops sending.
            tracing::info!(app = %header.app, version = %header.version, "release pushed again with the same bytes; no-op");
            return Ok(Response::new(existing));
        }

        let dir = artifacts_dir(&fleet.settings.data_dir);
        let mut upload = Upload::new(&dir)?;
        let mut data = first.data;
        let mut sniffed = false;
        loop {
            if !data.is_empty() {
                if !sniffed {
                    sniffed = true;
                    match sniff(&data) {
                        Some(f) if f == header.format => {}
                        Some(f) => {
                            return Err(Status::invalid_argument(format!(
                                "the upload says {} but its bytes are {f}; name the file after its format",
                                header.format
                            )))
                        }
                        None => {
                            return Err(Status::invalid_argument(format!(
                                "the upload is not a {} archive (its first bytes are neither gzip nor zstd)",
                                header.format
                            )))
                        }
                    }
                }
                if upload.size + data.len() as u64 > header.size {
                    return Err(Status::invalid_argument(format!(
                        "the upload is longer than the {} bytes its header announced",
                        header.size
                    )));
                }
                upload.write(&data)?;
            }
            match chunks.message().await? {
                Some(c) => data = c.data,
                None => break,
            }
        }
        if upload.size != header.size {
            return Err(Status::data_loss(format!(
                "the upload ended after {} of {} bytes; push again",
                upload.size, header.size
            )));
        }
        let digest = tokio::task::block_in_place(|| upload.finish(&dir))?;
        if digest != header.sha256 {
            return Err(Status::data_loss(format!(
                "the uploaded bytes have sha256 {digest}, not {} as announced; the file changed or was corrupted in transit: push again",
                header.sha256
            )));
        }
        let release = Release {
            app: header.app.clone(),
            artifact: Some(ReleaseRef {
                version: header.version.clone(),
                sha256: digest,
                size: header.size,
                format: header.format.clone(),
            }),
            pushed_by: who,
            pushed_at_ms: now_ms(),
            metadata: header.metadata,
            signature: Vec::new(),
        };
        match fleet.store.put_release(&release).map_err(internal)? {
            Ok(()) => {}
            // A concurrent push of the same version won the race.
            Err(existing) if existing.artifact.as_ref().map(|a| &a.sha256) == Some(&header.sha256) => {
                return Ok(Response::new(existing))
            }
            Err(existing) => {
                return Err(Status::already_exists(format!(
                    "{} {} was pushed concurrently with other bytes (sha256 {})",
                    header.app,
                    header.version,
                    existing.artifact.unwrap_or_default().sha256
                )))
            }
        }
        fleet.store.flush().await.map_err(internal)?;
        tracing::info!(app = %release.app, version = %header.version, size = header.size, "release stored");
        Ok(Response::new(release))
    }

    async fn list_releases(&self, req: Request<ListReleasesRequest>) -> Result<Response<ListReleasesResponse>, Status> {
        let app = &req.get_ref().app;
        self.0
            .store
            .app(app)
            .map_err(internal)?
            .ok_or_else(|| unknown_app(app))?;
        let releases = self.0.store.releases(app).map_err(internal)?;
        Ok(Response::new(ListReleasesResponse { releases }))
    }

    async fn get_release(&self, req: Request<GetReleaseRequest>) -> Result<Response<Release>, Status> {
        let r = req.get_ref();
        self.0
            .store
            .app(&r.app)
            .map_err(internal)?
            .ok_or_else(|| unknown_app(&r.app))?;
        let rel = self
            .0
            .store
            .release(&r.app, &r.version)
            .map_err(internal)?
            .ok_or_else(|| unknown_release(&r.app, &r.version))?;
        Ok(Response::new(rel))
    }
}

/// NOT_FOUND for an app.
pub fn unknown_app(app: &str) -> Status {
    Status::not_found(format!(
        "no app '{app}'; list apps with 'fleetctl app ls' or create it with 'fleetctl app create'"
    ))
}

/// NOT_FOUND for a release.
pub fn unknown_release(app: &str, version: &str) -> Status {
    Status::not_found(format!(
        "{app} has no release {version}; list them with 'fleetctl release ls {app}' or push it with 'fleetctl release push'"
    ))
}

/// Streams `DATA_DIR/artifacts/<sha256>` from `offset` (the agents' download).
pub fn fetch(
    fleet: &Fleet,
    req: &FetchArtifactRequest,
) -> Result<ReceiverStream<Result<ArtifactChunk, Status>>, Status> {
    check_sha256(&req.sha256)?;
    let path = artifacts_dir(&fleet.settings.data_dir).join(&req.sha256);
    let mut file = std::fs::File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Status::not_found(format!("the controller has no artifact {}", req.sha256))
        } else {
            io_status("open", &path, &e)
        }
    })?;
    let len = file.metadata().map_err(|e| io_status("stat", &path, &e))?.len();
    if req.offset > len {
        return Err(Status::out_of_range(format!(
            "offset {} is past the end of artifact {} ({len} bytes)",
            req.offset, req.sha256
        )));
    }
    let (tx, rx) = mpsc::channel(4);
    let mut offset = req.offset;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(io_status("seek", &path, &e)));
            return;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(io_status("read", &path, &e)));
                    return;
                }
            };
            let chunk = ArtifactChunk {
                offset,
                data: buf[..n].to_vec(),
            };
            offset += n as u64;
            if tx.blocking_send(Ok(chunk)).is_err() {
                return; // the agent went away
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn formats_are_sniffed_from_magic_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Some("tar.gz"));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some("tar.zst"));
        assert_eq!(sniff(b"ustar"), None);
    }

    #[test]
    fn digests_must_be_lowercase_hex() {
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256("../../etc/passwd").is_err());
    }
}
