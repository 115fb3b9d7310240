//! `fleet-controller check`: every release against its stored artifact.
//!
//! It reads the store directly, so it runs while the controller is stopped
//! (sled allows one process per store). While the controller runs, a damaged
//! artifact is caught when it is served instead (see `releases::fetch`).

use std::path::PathBuf;

use crate::artifacts::{ArtifactError, Artifacts, Condition};
use crate::config::Config;
use crate::init::MARKER;
use crate::store::{Store, StoreError};

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The config names a directory `init` did not make.
    #[error("{0} is not a fleet controller data dir (no {MARKER}); pass the controller.toml that init wrote")]
    NotADataDir(String),
    /// The store is held by a running controller.
    #[error("{0}. check reads the store directly: stop the controller first (systemctl stop fleet-controller), run check, then start it again; while it runs, a damaged artifact is refused at download and counted in fleet_artifacts_corrupt_total")]
    Locked(StoreError),
    /// The store could not be read.
    #[error(transparent)]
    Store(StoreError),
    /// An artifact could not be read.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

impl From<StoreError> for CheckError {
    fn from(e: StoreError) -> CheckError {
        match e {
            StoreError::Locked { .. } => CheckError::Locked(e),
            other => CheckError::Store(other),
        }
    }
}

/// One release and what its artifact looks like.
#[derive(Debug, Clone)]
pub struct Checked {
    /// App name.
    pub app: String,
    /// Version.
    pub version: String,
    /// The artifact's digest.
    pub sha256: String,
    /// The size the release says.
    pub size: u64,
    /// What is on disk.
    pub condition: Condition,
}

/// Every release, checked.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// One per release, in app then version order.
    pub releases: Vec<Checked>,
}

impl CheckReport {
    /// Releases whose artifact cannot be served.
    pub fn damaged(&self) -> impl Iterator<Item = &Checked> {
        self.releases.iter().filter(|c| !c.condition.is_intact())
    }

    /// The report as an operator reads it: one line per release, then what
    /// to do about the damaged ones.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.releases {
            out.push_str(&format!(
                "{:<9} {} {} sha256 {} ({})\n",
                c.condition.word(),
                c.app,
                c.version,
                c.sha256,
                c.condition.describe(c.size)
            ));
        }
        let damaged: Vec<_> = self.damaged().collect();
        if self.releases.is_empty() {
            out.push_str("no releases\n");
        } else if damaged.is_empty() {
            out.push_str(&format!(
                "{} releases, every artifact present and intact\n",
                self.releases.len()
            ));
        } else {
            out.push_str(&format!(
                "{} of {} releases have a missing or damaged artifact; repair each by pushing the same file again:\n",
                damaged.len(),
                self.releases.len()
            ));
            for c in damaged {
                out.push_str(&format!(
                    "  fleetctl release push {} FILE --release {}   # FILE with sha256 {}\n",
                    c.app, c.version, c.sha256
                ));
            }
        }
        out
    }
}

/// Blocking. Checks every release of the data dir `config` names: present,
/// the right size, and hashing to its digest.
pub fn check(config: &Config) -> Result<CheckReport, CheckError> {
    let dir: PathBuf = config.data_dir.clone();
    if !dir.join(MARKER).is_file() {
        return Err(CheckError::NotADataDir(dir.display().to_string()));
    }
    let store = Store::open_existing_on(&config.store, &dir)?;
    let artifacts = Artifacts::new(&dir);
    let mut report = CheckReport::default();
    for rel in store.all_releases()? {
        let a = rel.artifact.unwrap_or_default();
        let condition = artifacts.examine(&a.sha256, a.size)?;
        report.releases.push(Checked {
            app: rel.app,
            version: a.version,
            sha256: a.sha256,
            size: a.size,
            condition,
        });
    }
    Ok(report)
}
