//! `fleetctl release push|ls|show|rm`: an app's releases (`ReleaseService`).
//! A push hashes the file, then streams it in chunks, with a progress bar
//! on a terminal.

use std::path::Path;

use fleet_proto::{
    DeleteReleaseRequest, GetReleaseRequest, ListReleasesRequest, PushReleaseChunk, Release, ReleaseHeader,
};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::args::{label_map, PushArgs};
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Block, Format, Report, Table};

/// Upload chunk size.
const CHUNK: usize = 1 << 20;

fn format_of(path: &Path) -> Result<&'static str, Error> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok("tar.gz")
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Ok("tar.zst")
    } else {
        Err(Error::Usage(format!(
            "{} is neither .tar.gz nor .tar.zst; releases are gzip or zstd tarballs",
            path.display()
        )))
    }
}

async fn sha256_of(path: &Path, bar: &indicatif::ProgressBar) -> Result<(String, u64), Error> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| Error::Failed(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
        bar.inc(n as u64);
    }
    Ok((fleet_proto::transport::hex(ctx.finish().as_ref()), size))
}

/// The progress of `release push` on stderr: hashing, then uploading, in
/// bytes; drawn only on a terminal (scripts and CI logs get none).
fn push_bar(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `release push`: hashes the file, then streams it in chunks.
pub async fn push(client: &Client, args: &PushArgs, format: Format) -> Result<Report, Error> {
    let fmt = format_of(&args.file)?;
    let len = tokio::fs::metadata(&args.file).await.map(|m| m.len()).unwrap_or(0);
    let bar = push_bar(len);
    bar.set_message("hashing");
    let (sha256, size) = sha256_of(&args.file, &bar).await?;
    bar.set_position(0);
    bar.set_message("uploading");
    let version = args.release.get().filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::Usage(format!(
            "say which release this is: --release V (e.g. {} FILE --release 1.4.2)",
            args.app
        ))
    })?;
    let header = ReleaseHeader {
        app: args.app.clone(),
        version: version.clone(),
        sha256: sha256.clone(),
        size,
        metadata: label_map(&args.meta).map_err(Error::Usage)?,
        format: fmt.into(),
        signature: match &args.sign_key {
            Some(key) => Some(crate::keys::sign(key, &args.app, &version, &sha256, args.sequence)?),
            None => None,
        },
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<PushReleaseChunk>(4);
    let path = args.file.clone();
    let sent = bar.clone();
    let reader = tokio::spawn(async move {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut first = Some(header);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            buf.truncate(n);
            if n == 0 && first.is_none() {
                return Ok::<(), String>(());
            }
            let chunk = PushReleaseChunk {
                header: first.take(),
                data: buf,
            };
            if tx.send(chunk).await.is_err() || n == 0 {
                // The controller answered early (e.g. the same bytes again).
                return Ok(());
            }
            sent.inc(n as u64);
        }
    });
    let pushed = client
        .releases()
        .push_release(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.abort();
    bar.finish_and_clear();
    let pushed = pushed.map_err(|s| client.fail(s))?;
    // The controller says what it did with the bytes (see
    // `fleet_controller::releases::PUSH_OUTCOME`); an older one says nothing.
    let outcome = pushed
        .metadata()
        .get("fleet-push-outcome")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("stored")
        .to_string();
    let release = pushed.into_inner();
    Ok(match format {
        Format::Json => {
            let mut v = release_json(&release);
            v["outcome"] = json!(outcome);
            Report::json(&v)
        }
        Format::Table => {
            let a = release.artifact.clone().unwrap_or_default();
            let what = match outcome.as_str() {
                "unchanged" => "already stored with these bytes",
                "repaired" => {
                    "repaired: the controller's copy was missing or damaged and was replaced with these bytes"
                }
                _ => "stored",
            };
            Report::out(format!(
                "{} {} {what}: {} ({}), sha256 {}\n",
                release.app,
                a.version,
                output::bytes(a.size),
                a.format,
                a.sha256
            ))
        }
    })
}

fn release_json(r: &Release) -> Value {
    let a = r.artifact.clone().unwrap_or_default();
    json!({
        "app": r.app,
        "version": a.version,
        "sha256": a.sha256,
        "size": a.size,
        "format": a.format,
        "pushed_by": r.pushed_by,
        "pushed_at_ms": r.pushed_at_ms,
        "metadata": output::sorted(&r.metadata),
        "signed_by": a.signature.as_ref().map(|s| s.key.clone()),
        "sequence": a.signature.as_ref().map(|s| s.sequence),
    })
}

/// `release ls APP`.
pub async fn list(client: &Client, app: &str, format: Format) -> Result<Report, Error> {
    let list = client
        .releases()
        .list_releases(ListReleasesRequest { app: app.to_string() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .releases;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(list.iter().map(release_json).collect())),
        Format::Table => {
            let now = fleet_proto::now_ms();
            let mut t = Table::new(vec!["VERSION", "SIZE", "FORMAT", "SHA256", "PUSHED", "BY", "META"]);
            for r in &list {
                let a = r.artifact.clone().unwrap_or_default();
                t.row(vec![
                    a.version,
                    output::bytes(a.size),
                    a.format,
                    a.sha256.chars().take(12).collect(),
                    output::relative(r.pushed_at_ms, now),
                    r.pushed_by.clone(),
                    output::labels(&r.metadata),
                ]);
            }
            let mut rep = Report::out(t.render());
            if list.is_empty() {
                rep.stderr =
                    format!("{app} has no releases; push one with 'fleetctl release push {app} FILE --release V'\n");
            }
            rep
        }
    })
}

/// `release rm`: deletes a release the controller finds unused.
pub async fn delete(client: &Client, app: &str, version: &str, format: Format) -> Result<Report, Error> {
    let r = client
        .releases()
        .delete_release(DeleteReleaseRequest {
            app: app.to_string(),
            version: version.to_string(),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let release = r.release.unwrap_or_default();
    let a = release.artifact.clone().unwrap_or_default();
    Ok(match format {
        Format::Json => {
            let mut v = release_json(&release);
            v["artifact_removed"] = json!(r.artifact_removed);
            Report::json(&v)
        }
        Format::Table => {
            let artifact = if r.artifact_removed {
                format!("its artifact sha256 {} was removed", a.sha256)
            } else {
                format!(
                    "its artifact sha256 {} stays: another release has the same bytes",
                    a.sha256
                )
            };
            Report::out(format!(
                "{} {} deleted; {artifact}\n",
                output::escape(&release.app),
                output::escape(&a.version)
            ))
        }
    })
}

/// `release show APP VERSION`.
pub async fn show(client: &Client, app: &str, version: &str, format: Format) -> Result<Report, Error> {
    let r = client
        .releases()
        .get_release(GetReleaseRequest {
            app: app.to_string(),
            version: version.to_string(),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&release_json(&r)),
        Format::Table => {
            let a = r.artifact.clone().unwrap_or_default();
            let mut b = Block::default();
            b.line("app", r.app.clone());
            b.line("version", a.version);
            b.line("sha256", a.sha256);
            b.line("size", output::bytes(a.size));
            b.line("format", a.format);
            b.line("pushed", output::timestamp(r.pushed_at_ms));
            b.line("pushed by", r.pushed_by.clone());
            b.line(
                "signed by",
                match &a.signature {
                    Some(s) => format!("{} (sequence {})", s.key, s.sequence),
                    None => "nobody (unsigned)".into(),
                },
            );
            for (k, v) in output::sorted(&r.metadata) {
                b.line(format!("meta {k}"), v);
            }
            Report::out(b.render())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_file_name() {
        assert_eq!(format_of(Path::new("api.tar.gz")).expect("gz"), "tar.gz");
        assert_eq!(format_of(Path::new("/x/api-1.2.tgz")).expect("tgz"), "tar.gz");
        assert_eq!(format_of(Path::new("api.tar.zst")).expect("zst"), "tar.zst");
        assert!(format_of(Path::new("api.zip")).is_err());
    }
}
