//! CA rotation, as files in the data dir. `fleet-controller ca rotate`
//! writes the new material into `DATA_DIR/rotation/` and, last, its
//! `plan.json` (the commit point); the running controller takes it up
//! within a second (`authority::Authority::refresh`), and at the end of the
//! overlap copies it over the live files and removes the directory
//! ([`promote`], idempotent: a crash half-way is finished at the next look).
//!
//! During the overlap:
//! - new client certificates come from the new CA, and both CAs are
//!   trusted for client certificates;
//! - the server presents a certificate from the new CA with the chain
//!   new CA, new CA signed by the old one (`cross.pem`), old CA: a client
//!   that trusts only the old CA, or pins either fingerprint, accepts it;
//! - agents renew at once onto the new CA and learn both CAs.
//!
//! After it, only the new CA is trusted and presented.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ca::{sans_of, Ca};

/// The directory of a rotation under way.
pub const DIR: &str = "rotation";
const PLAN: &str = "plan.json";
/// The shortest overlap (tests; days are the norm).
pub const MIN_OVERLAP: Duration = Duration::from_secs(10);

/// A rotation under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// When it began (ms).
    pub started_at_ms: i64,
    /// When the old CA stops being trusted (ms).
    pub ends_at_ms: i64,
    /// `sha256:` of the old CA.
    pub previous_fingerprint: String,
    /// `sha256:` of the new CA.
    pub next_fingerprint: String,
}

/// Where the data dir stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No rotation.
    Idle,
    /// A rotation in its overlap.
    Overlap(Plan),
    /// A rotation whose overlap has ended: to promote.
    Due(Plan),
}

/// Why a rotation cannot begin or be taken up.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A file could not be read or written.
    #[error("{path}: {detail}")]
    Io {
        /// The file.
        path: String,
        /// What failed, and what to do.
        detail: String,
    },
    /// A rotation is already under way.
    #[error("a CA rotation is under way until {until} (new CA {next}); wait for it to end")]
    UnderWay {
        /// When its overlap ends.
        until: String,
        /// Its new CA.
        next: String,
    },
    /// The overlap is too short.
    #[error("--overlap must be at least 10s (days in production: every agent must renew within it)")]
    TooShort,
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RotationError + '_ {
    move |e| RotationError::Io {
        path: path.display().to_string(),
        detail: format!(
            "{e}{}",
            crate::owner::permission_hint(&e, path.parent().unwrap_or(path))
        ),
    }
}

fn read(path: &Path) -> Result<String, RotationError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The rotation directory's files.
pub struct Files {
    /// `rotation/`.
    pub dir: PathBuf,
}

impl Files {
    /// Of `data_dir`.
    pub fn of(data_dir: &Path) -> Files {
        Files {
            dir: data_dir.join(DIR),
        }
    }

    /// A file in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Where `data_dir` stands at `now_ms`.
pub fn state(data_dir: &Path, now_ms: i64) -> Result<State, RotationError> {
    let path = Files::of(data_dir).path(PLAN);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::Idle),
        Err(e) => return Err(io(&path)(e)),
    };
    let plan: Plan = serde_json::from_str(&text).map_err(|e| RotationError::Io {
        path: path.display().to_string(),
        detail: format!("not a rotation plan ({e}); remove the rotation directory to cancel it"),
    })?;
    Ok(if now_ms >= plan.ends_at_ms {
        State::Due(plan)
    } else {
        State::Overlap(plan)
    })
}

/// Writes `text` to `path` through a temp file, fsynced, with `mode`, owned
/// like `owner` (so that root running the command leaves files the service
/// user can read).
fn write(path: &Path, text: &str, mode: u32, owner: &std::fs::Metadata) -> Result<(), RotationError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid())).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), RotationError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Begins a rotation of `data_dir`'s CA with `overlap`: writes the new CA,
/// the cross certificate, a server certificate for the same names and,
/// last, the plan. The running controller takes it up.
pub fn begin(data_dir: &Path, overlap: Duration, now_ms: i64) -> Result<Plan, RotationError> {
    if overlap < MIN_OVERLAP {
        return Err(RotationError::TooShort);
    }
    match state(data_dir, now_ms)? {
        State::Idle => {}
        State::Overlap(p) | State::Due(p) => {
            return Err(RotationError::UnderWay {
                until: crate::store::utc(p.ends_at_ms),
                next: p.next_fingerprint,
            })
        }
    }
    let owner = std::fs::metadata(data_dir).map_err(io(data_dir))?;
    let ca_pem = read(&data_dir.join("ca.pem"))?;
    let old = Ca::load(&ca_pem, &read(&data_dir.join("ca.key"))?)?;
    let server_pem = read(&data_dir.join("server.pem"))?;
    let sans = sans_of(&server_pem)?;
    let name = format!(
        "{} {}",
        data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        crate::store::utc(now_ms)
    );
    let next = old.successor(&name, &sans)?;
    let files = Files::of(data_dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&files.dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(io(&files.dir))?;
    std::os::unix::fs::chown(&files.dir, Some(owner.uid()), Some(owner.gid())).map_err(io(&files.dir))?;
    write(&files.path("ca.pem"), &next.ca.cert_pem, 0o644, &owner)?;
    write(&files.path("ca.key"), &next.ca.key_pem, 0o600, &owner)?;
    write(&files.path("cross.pem"), &next.cross_pem, 0o644, &owner)?;
    // The chain during the overlap: leaf, new CA, new CA by the old, old CA.
    write(
        &files.path("server.pem"),
        &format!("{}{}{}{}", next.server_pem, next.ca.cert_pem, next.cross_pem, ca_pem),
        0o644,
        &owner,
    )?;
    write(&files.path("server.key"), &next.server_key_pem, 0o600, &owner)?;
    let fp = |pem: &str| -> Result<String, RotationError> {
        let der = fleet_proto::transport::certs_from_pem("CA", pem).map_err(|e| RotationError::Io {
            path: "ca.pem".into(),
            detail: e.to_string(),
        })?;
        Ok(fleet_proto::transport::fingerprint(&der[0]))
    };
    let plan = Plan {
        started_at_ms: now_ms,
        ends_at_ms: now_ms.saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX)),
        previous_fingerprint: fp(&ca_pem)?,
        next_fingerprint: fp(&next.ca.cert_pem)?,
    };
    let json = serde_json::to_string_pretty(&plan).map_err(|e| RotationError::Io {
        path: PLAN.into(),
        detail: e.to_string(),
    })?;
    sync_dir(&files.dir)?;
    write(&files.path(PLAN), &json, 0o644, &owner)?;
    sync_dir(&files.dir)?;
    Ok(plan)
}

/// Ends a rotation whose overlap is over: the new CA's files over the live
/// ones (the server chain without the old CA), then the directory removed.
/// Idempotent: run again after a crash, it finishes.
pub fn promote(data_dir: &Path) -> Result<(), RotationError> {
    let files = Files::of(data_dir);
    let owner = std::fs::metadata(data_dir).map_err(io(data_dir))?;
    let ca_pem = read(&files.path("ca.pem"))?;
    let chain = read(&files.path("server.pem"))?;
    let leaf = first_pem(&chain).ok_or_else(|| RotationError::Io {
        path: files.path("server.pem").display().to_string(),
        detail: "holds no certificate".into(),
    })?;
    write(&data_dir.join("ca.key"), &read(&files.path("ca.key"))?, 0o600, &owner)?;
    write(&data_dir.join("ca.pem"), &ca_pem, 0o644, &owner)?;
    write(
        &data_dir.join("server.key"),
        &read(&files.path("server.key"))?,
        0o600,
        &owner,
    )?;
    write(&data_dir.join("server.pem"), &format!("{leaf}{ca_pem}"), 0o644, &owner)?;
    sync_dir(data_dir)?;
    std::fs::remove_dir_all(&files.dir).map_err(io(&files.dir))?;
    sync_dir(data_dir)
}

/// The first PEM block of `text`, with its END line.
fn first_pem(text: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &text[start..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = crate::ca::generate_ca("t").expect("ca");
        let ca = Ca::load(&new.cert_pem, &new.key_pem).expect("load");
        let (server, key) = ca
            .server_certificate(&["localhost".into(), "127.0.0.1".into()])
            .expect("server");
        for (name, text) in [
            ("ca.pem", new.cert_pem.as_str()),
            ("ca.key", new.key_pem.as_str()),
            ("server.pem", &format!("{server}{}", new.cert_pem)),
            ("server.key", key.as_str()),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    #[test]
    fn a_rotation_begins_once_overlaps_then_is_promoted() {
        let dir = data_dir();
        let d = dir.path();
        let old_ca = std::fs::read_to_string(d.join("ca.pem")).expect("ca");
        assert_eq!(state(d, 0).expect("state"), State::Idle);
        assert!(matches!(
            begin(d, Duration::from_secs(1), 0),
            Err(RotationError::TooShort)
        ));
        let plan = begin(d, Duration::from_secs(60), 1_000).expect("begin");
        assert_eq!(plan.ends_at_ms, 61_000);
        assert_ne!(plan.previous_fingerprint, plan.next_fingerprint);
        assert!(matches!(
            begin(d, Duration::from_secs(60), 2_000),
            Err(RotationError::UnderWay { .. })
        ));
        assert_eq!(state(d, 60_999).expect("state"), State::Overlap(plan.clone()));
        assert_eq!(state(d, 61_000).expect("state"), State::Due(plan.clone()));
        // The overlap's chain: leaf, new CA, cross, old CA; same names.
        let chain = std::fs::read_to_string(Files::of(d).path("server.pem")).expect("chain");
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 4);
        assert!(chain.ends_with(&old_ca));
        assert_eq!(sans_of(&chain).expect("sans"), ["localhost", "127.0.0.1"]);
        promote(d).expect("promote");
        promote(d).expect_err("nothing left to promote");
        assert_eq!(state(d, 70_000).expect("state"), State::Idle);
        let ca = std::fs::read_to_string(d.join("ca.pem")).expect("ca");
        assert_ne!(ca, old_ca);
        let live = std::fs::read_to_string(d.join("server.pem")).expect("server");
        assert_eq!(live.matches("BEGIN CERTIFICATE").count(), 2, "leaf and the new CA only");
        assert!(live.ends_with(&ca));
        Ca::load(&ca, &std::fs::read_to_string(d.join("ca.key")).expect("key")).expect("the new CA loads");
    }
}
