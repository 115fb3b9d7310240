//! Where an app lives on the host, and the file-system steps of a deploy.
//!
//! ```text
//! <state_dir>/apps/<app>/
//!     releases/<version>/     one unpacked release each; renamed into place whole
//!     current  -> releases/<version>   swapped by renaming a new symlink over it
//!     previous -> releases/<version>   what was current before the last change
//!     spec.pb                 the app's definition as last received (unit, health)
//!     health.pb               the last health result
//!     intent.json             written before a swap, removed when the change is verified
//!     .staging-*/ .link-*     work in progress; removed at start-up
//! <state_dir>/downloads/<sha256>.part    downloads, resumed from their length
//! ```
//!
//! Invariant: `current` is always either absent or a symlink to a complete
//! release, because a release directory appears only by rename after its
//! contents are fsynced, and `current` changes only by rename.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use fleet_proto::{AppSpec, HealthResult};
use prost::Message;
use serde::{Deserialize, Serialize};

/// Checks a name that becomes a directory (app or version).
pub fn check_name(kind: &str, v: &str) -> Result<(), String> {
    if fleet_proto::is_safe_name(v) {
        Ok(())
    } else {
        Err(format!("{kind} '{v}' is not a valid directory name"))
    }
}

/// A change in progress, recorded before the swap so that an agent killed
/// half-way knows what to undo.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Intent {
    /// The release that was current (and verified) before.
    pub from: Option<String>,
    /// The release being activated.
    pub to: String,
    /// The unit to restart when undoing.
    pub unit: String,
}

/// One app's directory.
#[derive(Debug, Clone)]
pub struct AppDir {
    /// App name.
    pub app: String,
    root: PathBuf,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    crate::offload::blocking_step("fsync of a directory");
    std::fs::File::open(dir)?.sync_all()
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::offload::blocking_step("an atomic file write");
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".link-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        fastrand::u64(..)
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Every app directory under the state dir.
pub fn apps(state_dir: &Path) -> Vec<AppDir> {
    let mut out: Vec<AppDir> = std::fs::read_dir(state_dir.join("apps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_name("app", n).is_ok())
        .map(|n| AppDir::new(state_dir, &n))
        .collect();
    out.sort_by(|a, b| a.app.cmp(&b.app));
    out
}

/// The download directory.
pub fn downloads(state_dir: &Path) -> PathBuf {
    state_dir.join("downloads")
}

impl AppDir {
    /// The directory of `app` (not created).
    pub fn new(state_dir: &Path, app: &str) -> AppDir {
        AppDir {
            app: app.to_string(),
            root: state_dir.join("apps").join(app),
        }
    }

    /// The app's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directories.
    pub fn ensure(&self) -> std::io::Result<()> {
        crate::offload::blocking_step("making an app's directories");
        std::fs::create_dir_all(self.root.join("releases"))
    }

    /// The directory of one release.
    pub fn release(&self, version: &str) -> PathBuf {
        self.root.join("releases").join(version)
    }

    /// A fresh staging path beside `releases/`, on the same file system.
    pub fn staging(&self, version: &str) -> PathBuf {
        self.root.join(format!(".staging-{version}-{:016x}", fastrand::u64(..)))
    }

    /// Moves a staged release into `releases/<version>` and makes that durable.
    pub fn commit(&self, staging: &Path, version: &str) -> std::io::Result<()> {
        std::fs::rename(staging, self.release(version))?;
        fsync_dir(&self.root.join("releases"))
    }

    fn link(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.root.join(name)).ok()?;
        let version = target.file_name()?.to_str()?.to_string();
        self.release(&version).is_dir().then_some(version)
    }

    /// The version `current` points at.
    pub fn current(&self) -> Option<String> {
        self.link("current")
    }

    /// The version `previous` points at.
    pub fn previous(&self) -> Option<String> {
        self.link("previous")
    }

    fn point(&self, name: &str, version: &str) -> std::io::Result<()> {
        let tmp = self.root.join(format!(".link-{name}-{:016x}", fastrand::u64(..)));
        symlink(Path::new("releases").join(version), &tmp)?;
        if let Err(e) = std::fs::rename(&tmp, self.root.join(name)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        fsync_dir(&self.root)
    }

    /// Points `current` at `version` by renaming a new symlink over it.
    pub fn swap(&self, version: &str) -> std::io::Result<()> {
        if !self.release(version).is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("release {version} of {} is not on disk", self.app),
            ));
        }
        self.point("current", version)
    }

    /// Points `previous` at `version`, or removes it.
    pub fn set_previous(&self, version: Option<&str>) -> std::io::Result<()> {
        match version {
            Some(v) => self.point("previous", v),
            None => match std::fs::remove_file(self.root.join("previous")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Releases on disk, oldest first (by the time they were unpacked).
    pub fn releases(&self) -> Vec<String> {
        let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(self.root.join("releases"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let meta = e.metadata().ok()?;
                meta.is_dir()
                    .then(|| (meta.modified().unwrap_or(std::time::UNIX_EPOCH), name))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, n)| n).collect()
    }

    /// Removes the oldest releases so that at most `keep` stay; never the
    /// current or the previous one. Returns what was removed.
    pub fn prune(&self, keep: usize) -> Vec<String> {
        crate::offload::blocking_step("pruning releases");
        let protected = [self.current(), self.previous()];
        let all = self.releases();
        let mut excess = all.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for v in all {
            if excess == 0 {
                break;
            }
            if protected.iter().any(|p| p.as_deref() == Some(v.as_str())) {
                continue;
            }
            match std::fs::remove_dir_all(self.release(&v)) {
                Ok(()) => {
                    removed.push(v);
                    excess -= 1;
                }
                Err(e) => tracing::warn!(app = %self.app, version = %v, error = %e, "cannot prune an old release"),
            }
        }
        removed
    }

    /// Removes what an interrupted unpack or swap left; returns their names.
    pub fn clean_leftovers(&self) -> Vec<String> {
        crate::offload::blocking_step("removing leftovers");
        let mut removed = Vec::new();
        for e in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let r = if name.starts_with(".staging-") {
                std::fs::remove_dir_all(&path)
            } else if name.starts_with(".link-") {
                std::fs::remove_file(&path)
            } else {
                continue;
            };
            match r {
                Ok(()) => removed.push(name),
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot remove a leftover"),
            }
        }
        removed
    }

    /// Records a change about to happen.
    pub fn write_intent(&self, intent: &Intent) -> std::io::Result<()> {
        // Invariant: a struct of strings always serializes.
        let bytes = serde_json::to_vec(intent).expect("intent serializes");
        write_atomic(&self.root.join("intent.json"), &bytes)
    }

    /// The change in progress, if an agent was stopped during one.
    pub fn intent(&self) -> Option<Intent> {
        let bytes = std::fs::read(self.root.join("intent.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The change is over (verified, or undone).
    pub fn clear_intent(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.root.join("intent.json")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => fsync_dir(&self.root),
        }
    }

    /// Stores the app's definition.
    pub fn save_spec(&self, spec: &AppSpec) -> std::io::Result<()> {
        write_atomic(&self.root.join("spec.pb"), &spec.encode_to_vec())
    }

    /// The app's definition as last received.
    pub fn spec(&self) -> Option<AppSpec> {
        AppSpec::decode(std::fs::read(self.root.join("spec.pb")).ok()?.as_slice()).ok()
    }

    /// Stores the last health result.
    pub fn save_health(&self, h: &HealthResult) -> std::io::Result<()> {
        write_atomic(&self.root.join("health.pb"), &h.encode_to_vec())
    }

    /// The last health result.
    pub fn health(&self) -> Option<HealthResult> {
        HealthResult::decode(std::fs::read(self.root.join("health.pb")).ok()?.as_slice()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_with(versions: &[&str]) -> (tempfile::TempDir, AppDir) {
        let state = tempfile::tempdir().expect("tempdir");
        let app = AppDir::new(state.path(), "api");
        app.ensure().expect("ensure");
        for v in versions {
            std::fs::create_dir(app.release(v)).expect("mkdir");
            // Distinct mtimes, so that "oldest" is well defined.
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        (state, app)
    }

    #[test]
    fn swap_replaces_current_atomically_and_leaves_nothing_behind() {
        let (_s, app) = app_with(&["1", "2"]);
        assert_eq!(app.current(), None);
        app.swap("1").expect("swap");
        app.swap("2").expect("swap");
        assert_eq!(app.current().as_deref(), Some("2"));
        assert!(app.swap("9").is_err(), "a release that is not on disk");
        assert_eq!(app.current().as_deref(), Some("2"));
        assert!(app.clean_leftovers().is_empty());
        let target = std::fs::read_link(app.root().join("current")).expect("link");
        assert_eq!(target, Path::new("releases/2"), "relative, so the state dir can move");
    }

    #[test]
    fn prune_keeps_n_and_never_current_or_previous() {
        let (_s, app) = app_with(&["1", "2", "3", "4", "5"]);
        app.swap("1").expect("swap");
        app.set_previous(Some("2")).expect("previous");
        let removed = app.prune(3);
        assert_eq!(removed, vec!["3", "4"]);
        assert_eq!(app.releases(), vec!["1", "2", "5"]);
    }

    #[test]
    fn leftovers_and_intents() {
        let (_s, app) = app_with(&["1"]);
        std::fs::create_dir(app.staging("2")).expect("staging");
        symlink("releases/1", app.root().join(".link-current-1")).expect("link");
        let mut removed = app.clean_leftovers();
        removed.sort();
        assert_eq!(removed.len(), 2, "{removed:?}");
        let intent = Intent {
            from: Some("1".into()),
            to: "2".into(),
            unit: "api.service".into(),
        };
        app.write_intent(&intent).expect("write");
        assert_eq!(app.intent(), Some(intent));
        app.clear_intent().expect("clear");
        assert_eq!(app.intent(), None);
        assert!(check_name("version", "../x").is_err());
    }
}
