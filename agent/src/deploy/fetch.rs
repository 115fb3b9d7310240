//! Getting a release onto the host: download (resumable, behind the
//! [`Fetch`] trait), verify its sha256, unpack it into a staging directory
//! and rename it into `releases/<version>/`. Nothing that runs changes here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::phase::Phase;
use fleet_proto::{FailureCause, FetchArtifactRequest, FetchGrant, ReleaseRef};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::report::Run;
use super::worker::Worker;
use super::{blocking, fail, io_cause, Failed};
use crate::layout;
use crate::units::BoxFuture;
use crate::unpack::{self, Format, UnpackError};

/// How long a download may take in all, across reconnects.
const FETCH_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Fresh downloads of an artifact (the `.part` deleted, from byte 0) whose
/// bytes do not match the release's digest, or that the controller ends
/// short, before the task fails: a transfer error is not repeated, a damaged
/// copy on the controller always is, so retrying longer only delays the report.
pub(super) const FRESH_ATTEMPTS: u32 = 3;

/// Where a release's bytes come from.
pub(super) trait Fetch: Send + Sync {
    /// Makes `part` hold the whole artifact (`rel.size` bytes), resuming
    /// from what it holds, or fails the fetch phase.
    fn fetch<'a>(
        &'a self,
        app: &'a str,
        rel: &'a ReleaseRef,
        grant: Option<&'a FetchGrant>,
        part: &'a Path,
    ) -> BoxFuture<'a, Result<(), Failed>>;
}

impl Worker {
    /// Fetch, verify and unpack `rel` unless it is already on disk.
    pub(super) async fn obtain(
        &self,
        run: &Run<'_>,
        app: &str,
        rel: &ReleaseRef,
        grant: Option<&FetchGrant>,
    ) -> Result<(), Failed> {
        let format = Format::from_name(&rel.format).ok_or_else(|| {
            fail(
                Phase::Start,
                FailureCause::Invalid,
                format!("release format '{}' is not tar.gz or tar.zst", rel.format),
            )
        })?;
        if run.app.release(&rel.version).is_dir() {
            let t = run.started(Phase::Fetch);
            run.succeeded(
                Phase::Fetch,
                t,
                format!("{} is already on disk; nothing to download", rel.version),
            );
            return Ok(());
        }
        let part = self.download(run, app, rel, grant).await?;
        self.unpack(run, rel, format, part).await
    }

    /// The fetch and verify phases: a download whose bytes match the digest.
    async fn download(
        &self,
        run: &Run<'_>,
        app: &str,
        rel: &ReleaseRef,
        grant: Option<&FetchGrant>,
    ) -> Result<PathBuf, Failed> {
        let t = run.started(Phase::Fetch);
        let dir = layout::downloads(&self.state_dir);
        let part = dir.join(format!("{}.part", rel.sha256));
        let failed = |f: Failed| {
            run.phase_failed(&f, t);
            f
        };
        let made = dir.clone();
        blocking(move || std::fs::create_dir_all(&made))
            .await
            .map_err(|e| failed(fail(Phase::Fetch, io_cause(&e), format!("{}: {e}", dir.display()))))?;
        let mut mismatches: Vec<String> = Vec::new();
        loop {
            self.fetch.fetch(app, rel, grant, &part).await.map_err(failed)?;
            let hashed = part.clone();
            match blocking(move || sha256_file(&hashed)).await {
                Ok(d) if d == rel.sha256 => break,
                Ok(d) => {
                    let _ = remove_file(&part).await;
                    tracing::warn!(
                        sha256 = %rel.sha256,
                        got = %d,
                        attempt = mismatches.len() + 1,
                        "downloaded bytes do not match the release's digest; downloading again from the start"
                    );
                    mismatches.push(d);
                    if mismatches.len() as u32 >= FRESH_ATTEMPTS {
                        run.succeeded(
                            Phase::Fetch,
                            t,
                            format!("{} bytes, {} times", rel.size, mismatches.len()),
                        );
                        let tv = run.started(Phase::Verify);
                        let f = fail(
                            Phase::Verify,
                            FailureCause::Download,
                            digest_mismatch(app, rel, &mismatches),
                        );
                        run.phase_failed(&f, tv);
                        return Err(f);
                    }
                }
                Err(e) => {
                    let _ = remove_file(&part).await;
                    return Err(failed(fail(
                        Phase::Verify,
                        io_cause(&e),
                        format!("cannot read the download {}: {e}", part.display()),
                    )));
                }
            }
        }
        let fetched = match mismatches.len() {
            0 => format!("{} bytes", rel.size),
            n => format!(
                "{} bytes, after {n} download(s) that did not match the digest",
                rel.size
            ),
        };
        run.succeeded(Phase::Fetch, t, fetched);
        let t = run.started(Phase::Verify);
        run.succeeded(Phase::Verify, t, format!("sha256 {}", rel.sha256));
        Ok(part)
    }

    /// The unpack phase: into staging, then renamed into `releases/`.
    async fn unpack(&self, run: &Run<'_>, rel: &ReleaseRef, format: Format, part: PathBuf) -> Result<(), Failed> {
        let t = run.started(Phase::Unpack);
        let failed = |f: Failed| {
            run.phase_failed(&f, t);
            f
        };
        let staging = run.app.staging(&rel.version);
        let limits = self.limits.clone();
        let (staged, archive) = (staging.clone(), part.clone());
        let unpacked = tokio::task::spawn_blocking(move || unpack::unpack(&archive, format, &staged, &limits))
            .await
            .unwrap_or_else(|e| {
                Err(UnpackError::Corrupt {
                    detail: format!("the unpacker panicked: {e}"),
                })
            });
        let summary = unpacked.map_err(|e| {
            let cause = match e {
                UnpackError::DiskFull { .. } => FailureCause::DiskFull,
                UnpackError::Io { .. } | UnpackError::DestExists { .. } => FailureCause::Agent,
                _ => FailureCause::ArchiveRefused,
            };
            failed(fail(
                Phase::Unpack,
                cause,
                format!("{e}; the current release stays active"),
            ))
        })?;
        let (app, version, staged) = (run.app.clone(), rel.version.clone(), staging.clone());
        if let Err(e) = blocking(move || app.commit(&staged, &version)).await {
            let _ = blocking(move || std::fs::remove_dir_all(&staging)).await;
            return Err(failed(fail(
                Phase::Unpack,
                io_cause(&e),
                format!("cannot move the release into place: {e}"),
            )));
        }
        let _ = remove_file(&part).await;
        run.succeeded(
            Phase::Unpack,
            t,
            format!("{} entries, {} bytes", summary.entries, summary.bytes),
        );
        Ok(())
    }
}

async fn remove_file(path: &Path) -> std::io::Result<()> {
    let path = path.to_path_buf();
    blocking(move || std::fs::remove_file(path)).await
}

/// Downloads over the agent's connection to the controller.
pub(super) struct Grpc {
    channel: watch::Receiver<Option<Channel>>,
}

impl Grpc {
    /// Uses whichever channel the current session publishes.
    pub fn new(channel: watch::Receiver<Option<Channel>>) -> Grpc {
        Grpc { channel }
    }
}

impl Fetch for Grpc {
    /// Downloads into `part`, resuming from what is there, across broken
    /// connections, until it is complete. `grant` is the task's permission
    /// to download it, shown on every attempt (a restarted controller
    /// honours it too).
    fn fetch<'a>(
        &'a self,
        app: &'a str,
        rel: &'a ReleaseRef,
        grant: Option<&'a FetchGrant>,
        part: &'a Path,
    ) -> BoxFuture<'a, Result<(), Failed>> {
        Box::pin(async move {
            let deadline = Instant::now() + FETCH_DEADLINE;
            let mut channel = self.channel.clone();
            let mut last_error = String::from("no connection to the controller");
            let mut attempt = 0u32;
            let mut short_ends = 0u32;
            loop {
                let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
                if have == rel.size {
                    return Ok(());
                }
                if have > rel.size {
                    let _ = remove_file(part).await;
                    continue;
                }
                if Instant::now() >= deadline {
                    return Err(fail(
                        Phase::Fetch,
                        FailureCause::Download,
                        format!(
                            "download of {} stopped at {have} of {} bytes: {last_error}",
                            rel.sha256, rel.size
                        ),
                    ));
                }
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(10)))).await;
                }
                attempt += 1;
                let current = channel.borrow_and_update().clone();
                if attempt > 1 {
                    tracing::info!(sha256 = %rel.sha256, offset = have, size = rel.size, "resuming the download");
                }
                let Some(ch) = current else {
                    // Wait for a session to publish a channel.
                    let _ = tokio::time::timeout(Duration::from_secs(5), channel.changed()).await;
                    continue;
                };
                match fetch_from(ch, rel, grant, part, have).await {
                    Ok(()) => {}
                    Err(FetchError::Fatal(f)) => return Err(f),
                    Err(FetchError::Short(at)) => {
                        // The controller answered and ended the stream early:
                        // its copy is shorter than the release (a broken
                        // connection ends with an error instead). Start over,
                        // a few times.
                        short_ends += 1;
                        let _ = remove_file(part).await;
                        if short_ends >= FRESH_ATTEMPTS {
                            return Err(fail(
                                Phase::Fetch,
                                FailureCause::Download,
                                short_artifact(app, rel, at, short_ends),
                            ));
                        }
                        tracing::warn!(sha256 = %rel.sha256, at, size = rel.size, "the controller ended the download early; downloading again from the start");
                        last_error = format!("the controller ended the download at {at} of {} bytes", rel.size);
                    }
                    Err(FetchError::Retry(e)) => {
                        tracing::warn!(sha256 = %rel.sha256, offset = have, error = %e, "download interrupted; resuming");
                        last_error = e;
                    }
                }
            }
        })
    }
}

async fn fetch_from(
    ch: Channel,
    rel: &ReleaseRef,
    grant: Option<&FetchGrant>,
    part: &Path,
    offset: u64,
) -> Result<(), FetchError> {
    let mut client = AgentServiceClient::new(ch).max_decoding_message_size(4 << 20);
    let mut stream = client
        .fetch_artifact(FetchArtifactRequest {
            sha256: rel.sha256.clone(),
            offset,
            grant: grant.cloned(),
        })
        .await
        .map_err(|s| classify_fetch(&s))?
        .into_inner();
    let io_failed =
        |e: std::io::Error| FetchError::Fatal(fail(Phase::Fetch, io_cause(&e), format!("{}: {e}", part.display())));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .await
        .map_err(io_failed)?;
    let mut at = offset;
    let result = loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if chunk.offset != at {
                    break Err(FetchError::Retry(format!(
                        "the controller sent bytes at offset {} when {at} was next",
                        chunk.offset
                    )));
                }
                if at + chunk.data.len() as u64 > rel.size {
                    break Err(FetchError::Fatal(fail(
                        Phase::Fetch,
                        FailureCause::Download,
                        format!("the artifact is longer than the {} bytes the release says", rel.size),
                    )));
                }
                if let Err(e) = file.write_all(&chunk.data).await {
                    break Err(io_failed(e));
                }
                at += chunk.data.len() as u64;
            }
            Ok(None) if at == rel.size => break Ok(()),
            Ok(None) => break Err(FetchError::Short(at)),
            Err(s) => break Err(classify_fetch(&s)),
        }
    };
    // tokio's file fsyncs on the blocking pool.
    file.sync_all().await.map_err(io_failed)?;
    result
}

enum FetchError {
    /// A transfer error: resume from the offset reached.
    Retry(String),
    /// The controller ended the stream cleanly at this offset, before the
    /// end of the artifact.
    Short(u64),
    /// Retrying cannot help.
    Fatal(Failed),
}

/// The fix for an artifact whose copy on the controller is damaged.
fn controller_fix(app: &str, version: &str) -> String {
    format!(
        "the controller's copy is damaged: repair it on the controller by pushing the same file again \
         ('fleetctl release push {app} FILE --release {version}'; 'fleet-controller check' lists damaged releases)"
    )
}

/// The failure of a download whose bytes never matched the digest.
fn digest_mismatch(app: &str, rel: &ReleaseRef, got: &[String]) -> String {
    format!(
        "the downloaded bytes of {app} {} have sha256 {}, not {} as the release says, in {} fresh downloads; \
         nothing was unpacked. {}",
        rel.version,
        got.last().map(String::as_str).unwrap_or_default(),
        rel.sha256,
        got.len(),
        controller_fix(app, &rel.version)
    )
}

/// The failure of a download the controller keeps ending short.
fn short_artifact(app: &str, rel: &ReleaseRef, at: u64, times: u32) -> String {
    format!(
        "the controller ended the download of {app} {} (artifact sha256 {}) at {at} of {} bytes, {times} times \
         from the start; nothing was unpacked. {}",
        rel.version,
        rel.sha256,
        rel.size,
        controller_fix(app, &rel.version)
    )
}

fn classify_fetch(s: &tonic::Status) -> FetchError {
    use tonic::Code;
    match s.code() {
        // DATA_LOSS: the controller found its copy damaged and says how to fix it.
        Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::InvalidArgument
        | Code::OutOfRange
        | Code::DataLoss => FetchError::Fatal(fail(Phase::Fetch, FailureCause::Download, s.message().to_string())),
        _ => FetchError::Retry(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// The sha256 of a file, hex; blocking.
pub(super) fn sha256_file(path: &Path) -> std::io::Result<String> {
    crate::offload::blocking_step("hashing a download");
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(fleet_proto::transport::hex(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_artifact_on_the_controller_is_not_retried() {
        let damaged = tonic::Status::data_loss("the controller's copy of web 1.0 is damaged");
        assert!(matches!(classify_fetch(&damaged), FetchError::Fatal(f) if f.cause == FailureCause::Download));
        let cut = tonic::Status::unavailable("connection reset");
        assert!(matches!(classify_fetch(&cut), FetchError::Retry(_)));
    }

    #[test]
    fn give_up_messages_name_the_digest_and_the_controller_side_fix() {
        let rel = ReleaseRef {
            signature: None,
            version: "1.2.0".into(),
            sha256: "a".repeat(64),
            size: 10,
            format: "tar.gz".into(),
        };
        let m = digest_mismatch("web", &rel, &["b".repeat(64), "c".repeat(64)]);
        assert!(m.contains(&"a".repeat(64)) && m.contains(&"c".repeat(64)), "{m}");
        assert!(m.contains("2 fresh downloads"), "{m}");
        assert!(m.contains("fleetctl release push web FILE --release 1.2.0"), "{m}");
        let m = short_artifact("web", &rel, 4, FRESH_ATTEMPTS);
        assert!(m.contains(&"a".repeat(64)) && m.contains("at 4 of 10 bytes"), "{m}");
        assert!(m.contains("fleetctl release push web FILE --release 1.2.0"), "{m}");
    }
}
