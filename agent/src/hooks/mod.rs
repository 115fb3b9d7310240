//! `fleet.toml`, the optional manifest at the root of a release, and its
//! hooks: `pre_activate` (before the swap), `post_activate` (after the
//! restart) and `validate` (after the health check). Each runs with the
//! release directory as its working directory and stops at the manifest's
//! timeout, in one of two ways (`[hooks] run` in agent.toml):
//!
//! - [`unit`] (the default on the system bus, so for the packaged agent): as
//!   a run of the installed template unit `fleet-hook@<app>.service`, under
//!   its own user (a dynamic one, or the `User=` an operator's drop-in sets
//!   for the app's `run_as`) in a sandbox that cannot read the agent's key
//!   nor write its state directory;
//! - [`process`] (the default under a `systemd --user` manager, where no
//!   other user exists): as a child of the agent, in its own process group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod process;
pub mod unit;

/// The manifest's file name.
pub const MANIFEST: &str = "fleet.toml";
/// A hook's deadline when the manifest names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How hooks run (`[hooks] run` in agent.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// As runs of `fleet-hook@<app>.service`, isolated from the agent.
    Unit,
    /// As children of the agent, under its user.
    Process,
}

/// Output a hook may leave in the agent's memory: the report keeps a tail
/// of [`crate::health::TAIL`] bytes of it.
pub(crate) const KEPT_OUTPUT: usize = 64 * 1024;

/// The three hook points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before `current` is swapped; failing leaves everything untouched.
    PreActivate,
    /// After the unit restarted on the new release.
    PostActivate,
    /// After the health check passed.
    Validate,
}

impl Hook {
    /// Its name in the manifest and in progress reports.
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreActivate => "pre_activate",
            Hook::PostActivate => "post_activate",
            Hook::Validate => "validate",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    hooks: RawHooks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    pre_activate: Option<String>,
    post_activate: Option<String>,
    validate: Option<String>,
    timeout: Option<String>,
}

/// A release's manifest, checked.
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    pre_activate: Option<PathBuf>,
    post_activate: Option<PathBuf>,
    validate: Option<PathBuf>,
    /// Deadline of each hook.
    pub timeout: Duration,
}

/// What a hook did.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// Exit code, or `None` when it was killed or could not start.
    pub code: Option<i32>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Exit status and the tail of its output, for the report.
    pub detail: String,
}

impl Manifest {
    /// Reads `<release>/fleet.toml`; a release without one has no hooks.
    pub fn load(release: &Path) -> Result<Manifest, String> {
        let path = release.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Manifest {
                    timeout: DEFAULT_TIMEOUT,
                    ..Default::default()
                })
            }
            Err(e) => return Err(format!("cannot read {MANIFEST}: {e}")),
        };
        let raw: RawManifest =
            toml::from_str(&text).map_err(|e| format!("{MANIFEST} is not valid: {}", e.message().trim()))?;
        let timeout = match raw.hooks.timeout.as_deref() {
            None => DEFAULT_TIMEOUT,
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| format!("{MANIFEST}: hooks.timeout '{t}' is not a duration such as 60s ({e})"))?,
        };
        let check = |name: &str, v: Option<String>| -> Result<Option<PathBuf>, String> {
            let Some(v) = v else { return Ok(None) };
            hook_path(release, &v)
                .map(Some)
                .map_err(|e| format!("{MANIFEST}: hooks.{name} = '{v}': {e}"))
        };
        Ok(Manifest {
            pre_activate: check("pre_activate", raw.hooks.pre_activate)?,
            post_activate: check("post_activate", raw.hooks.post_activate)?,
            validate: check("validate", raw.hooks.validate)?,
            timeout,
        })
    }

    /// The hook's path inside the release, when the manifest names one.
    pub fn hook(&self, hook: Hook) -> Option<&Path> {
        match hook {
            Hook::PreActivate => self.pre_activate.as_deref(),
            Hook::PostActivate => self.post_activate.as_deref(),
            Hook::Validate => self.validate.as_deref(),
        }
    }
}

/// A hook path must be relative, stay inside the release (also through
/// symlinks) and name an executable regular file.
fn hook_path(release: &Path, v: &str) -> Result<PathBuf, String> {
    let rel = Path::new(v);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err("must be a relative path inside the release, without '..'".into());
    }
    let root = release.canonicalize().map_err(|e| e.to_string())?;
    let full = root
        .join(rel)
        .canonicalize()
        .map_err(|e| format!("does not exist in the release ({e})"))?;
    if !full.starts_with(&root) {
        return Err("resolves outside the release".into());
    }
    let meta = std::fs::metadata(&full).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable; set its x bit in the archive".into());
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::process::{read_tail, resolve_user, run};
    use super::*;
    use std::time::Instant;

    fn release(files: &[(&str, &str, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, body, mode) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, body).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        dir
    }

    #[test]
    fn no_manifest_means_no_hooks() {
        let r = release(&[]);
        let m = Manifest::load(r.path()).expect("ok");
        assert!(m.hook(Hook::PreActivate).is_none());
        assert_eq!(m.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn hook_paths_must_stay_inside_and_be_executable() {
        for (manifest, needle) in [
            ("[hooks]\npre_activate = \"../x\"", "without '..'"),
            ("[hooks]\npre_activate = \"/bin/true\"", "relative"),
            ("[hooks]\npre_activate = \"missing.sh\"", "does not exist"),
            ("[hooks]\npre_activate = \"plain.sh\"", "not executable"),
            ("[hooks]\npre_activate = \"run.sh\"\ntimeout = \"soon\"", "timeout"),
            ("[hook]\npre_activate = \"run.sh\"", "not valid"),
        ] {
            let r = release(&[
                (MANIFEST, manifest, 0o644),
                ("plain.sh", "#!/bin/sh\n", 0o644),
                ("run.sh", "#!/bin/sh\n", 0o755),
            ]);
            let e = Manifest::load(r.path()).expect_err(manifest);
            assert!(e.contains(needle), "{manifest}: {e}");
        }
        let r = release(&[(MANIFEST, "[hooks]\npre_activate = \"link.sh\"", 0o644)]);
        std::os::unix::fs::symlink("/bin/true", r.path().join("link.sh")).expect("symlink");
        let e = Manifest::load(r.path()).expect_err("escaping symlink");
        assert!(e.contains("outside"), "{e}");
    }

    #[tokio::test]
    async fn a_hook_reports_its_code_and_output_and_is_killed_on_timeout() {
        let r = release(&[
            (
                MANIFEST,
                "[hooks]\npre_activate = \"hooks/pre.sh\"\nvalidate = \"slow.sh\"\ntimeout = \"300ms\"",
                0o644,
            ),
            (
                "hooks/pre.sh",
                "#!/bin/sh\necho \"checking $FLEET_VERSION\"; echo migration failed >&2; exit 7\n",
                0o755,
            ),
            ("slow.sh", "#!/bin/sh\nsleep 30\n", 0o755),
        ]);
        let m = Manifest::load(r.path()).expect("valid");
        let env = [("FLEET_VERSION", "1.2.3".to_string())];
        let pre = m.hook(Hook::PreActivate).expect("pre");
        let run1 = run(pre, r.path(), &env, None, m.timeout).await;
        assert_eq!(run1.code, Some(7));
        assert!(!run1.ok);
        assert!(
            run1.detail.contains("checking 1.2.3") && run1.detail.contains("migration failed"),
            "{}",
            run1.detail
        );
        let started = Instant::now();
        let slow = run(
            m.hook(Hook::Validate).expect("validate"),
            r.path(),
            &env,
            None,
            m.timeout,
        )
        .await;
        assert!(!slow.ok && slow.detail.contains("killed"), "{}", slow.detail);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn an_unknown_run_as_user_is_named() {
        let e = resolve_user("no-such-user-fleet").expect_err("unknown");
        assert!(e.contains("no-such-user-fleet"), "{e}");
        assert_eq!(resolve_user("").expect("empty"), None);
    }

    #[tokio::test]
    async fn a_hook_that_prints_without_end_costs_a_bounded_buffer() {
        let mut r: &[u8] = &vec![b'x'; 10 * KEPT_OUTPUT];
        let mut kept = Vec::new();
        let mut tail_of = b"...the end".to_vec();
        read_tail(&mut r, &mut kept).await;
        assert!(kept.len() <= 2 * KEPT_OUTPUT, "{} bytes kept", kept.len());
        let mut with_end = vec![b'x'; 10 * KEPT_OUTPUT];
        with_end.append(&mut tail_of);
        let mut r: &[u8] = &with_end;
        let mut kept = Vec::new();
        read_tail(&mut r, &mut kept).await;
        assert!(kept.ends_with(b"...the end") && kept.len() <= 2 * KEPT_OUTPUT);
    }
}
