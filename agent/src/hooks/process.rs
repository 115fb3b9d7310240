//! Hooks as children of the agent (`[hooks] run = "process"`): under the
//! agent's user (or the app's `run_as` when the agent is root), in a
//! process group of their own that is killed at the timeout. Used under a
//! `systemd --user` manager, where the agent is the only user there is.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::{HookRun, KEPT_OUTPUT};
use crate::health::tail;

/// The user a hook runs as: `Some((uid, gid))` to switch to, `None` to stay.
pub fn resolve_user(run_as: &str) -> Result<Option<(u32, u32)>, String> {
    if run_as.is_empty() {
        return Ok(None);
    }
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    let line = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd to find user {run_as}: {e}"))?
        .lines()
        .find(|l| l.split(':').next() == Some(run_as))
        .map(str::to_string)
        .ok_or_else(|| format!("user '{run_as}' (the app's run_as) does not exist on this host"))?;
    let fields: Vec<&str> = line.split(':').collect();
    let (uid, gid) = match (
        fields.get(2).and_then(|u| u.parse().ok()),
        fields.get(3).and_then(|g| g.parse().ok()),
    ) {
        (Some(u), Some(g)) => (u, g),
        _ => return Err(format!("/etc/passwd has a malformed entry for {run_as}")),
    };
    if uid == me {
        return Ok(None);
    }
    if me != 0 {
        return Err(format!(
            "hooks should run as {run_as} (uid {uid}) but the agent runs as uid {me} and cannot switch users; \
             clear the app's run_as or make the agent's user the app's user"
        ));
    }
    Ok(Some((uid, gid)))
}

/// Runs one hook to completion or until `timeout`.
pub async fn run(
    path: &Path,
    release: &Path,
    env: &[(&str, String)],
    user: Option<(u32, u32)>,
    timeout: Duration,
) -> HookRun {
    let started = Instant::now();
    let mut cmd = std::process::Command::new(path);
    cmd.current_dir(release)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = match tokio::process::Command::from(cmd).kill_on_drop(true).spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookRun {
                code: None,
                ok: false,
                detail: format!("cannot start {}: {e}", path.display()),
            }
        }
    };
    let pgid = child.id();
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let read_out = async {
            if let Some(o) = out.as_mut() {
                read_tail(o, &mut a).await;
            }
        };
        let read_err = async {
            if let Some(e) = err.as_mut() {
                read_tail(e, &mut b).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, a, b)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok((status, a, b)) => {
            let mut text = String::from_utf8_lossy(&a).into_owned();
            text.push_str(&String::from_utf8_lossy(&b));
            let (code, ok, how) = match status {
                Ok(s) => (s.code(), s.success(), s.to_string()),
                Err(e) => (None, false, format!("could not be waited for: {e}")),
            };
            HookRun {
                code,
                ok,
                detail: format!(
                    "{} {how} after {:.1}s; output: {}",
                    path.display(),
                    started.elapsed().as_secs_f64(),
                    tail(&text, crate::health::TAIL)
                ),
            }
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                // The whole group: a hook's children must not outlive it.
                let _ = tokio::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .status()
                    .await;
            }
            HookRun {
                code: None,
                ok: false,
                detail: format!("{} did not finish within {timeout:?} and was killed", path.display()),
            }
        }
    }
}

/// Reads `r` to its end, keeping only its last [`KEPT_OUTPUT`] bytes, so a
/// hook that prints gigabytes costs the agent no more than that.
pub(super) async fn read_tail<R: tokio::io::AsyncRead + Unpin>(r: &mut R, kept: &mut Vec<u8>) {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * KEPT_OUTPUT {
                    kept.drain(..kept.len() - KEPT_OUTPUT);
                }
            }
        }
    }
}
