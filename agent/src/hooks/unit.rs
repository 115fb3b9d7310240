//! Hooks as runs of the installed template unit `fleet-hook@<app>.service`
//! (`systemd/fleet-hook@.service`, shipped by the package next to the polkit
//! rule that lets the agent start and stop exactly these units).
//!
//! The agent cannot choose whom a hook runs as, nor its sandbox: both are in
//! the root-owned unit file (a dynamic user per app, or the `User=` of an
//! operator's drop-in for the app's `run_as`). What the agent chooses is
//! written under `apps/<app>/hook/`, where the template reads it:
//!
//! - `release` → the release the hook belongs to (its working directory);
//! - `run` → the hook's executable inside that release;
//! - `env` → the `FLEET_*` variables (read by systemd, as an `EnvironmentFile=`);
//! - `output` ← what the hook printed (opened by systemd, `StandardOutput=truncate:`).
//!
//! The agent starts the unit, waits for the run to end and stops it at the
//! manifest's timeout (systemd kills every process of it), then reads the
//! run's result and the tail of its output.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{HookRun, KEPT_OUTPUT};
use crate::health::tail;
use crate::layout::AppDir;
use crate::systemd::{OneshotEnd, ServiceUser};
use crate::units::Units;

/// Every hook unit's name starts so; the rest is `<app>.service`.
pub const TEMPLATE_PREFIX: &str = "fleet-hook@";

/// The hook unit of `app`.
pub fn unit_name(app: &str) -> String {
    format!("{TEMPLATE_PREFIX}{app}.service")
}

/// What one hook run is.
pub struct Request<'a> {
    /// The agent's state directory.
    pub state_dir: &'a Path,
    /// The state directory the template unit reads (`%S/fleet-agent`:
    /// `/var/lib/fleet-agent` on the system manager).
    pub template_state_dir: &'a Path,
    /// The app's directory in it.
    pub app: &'a AppDir,
    /// The hook's executable, inside `release`.
    pub hook: &'a Path,
    /// The release the hook belongs to.
    pub release: &'a Path,
    /// The `FLEET_*` variables.
    pub env: &'a [(&'static str, String)],
    /// The app's `run_as` ("" when it names none).
    pub run_as: &'a str,
    /// When the run is stopped.
    pub timeout: Duration,
}

/// Runs one hook as `fleet-hook@<app>.service`.
pub async fn run(units: &dyn Units, req: &Request<'_>) -> HookRun {
    let started = Instant::now();
    let unit = unit_name(&req.app.app);
    let refused = |detail: String| HookRun {
        code: None,
        ok: false,
        detail,
    };
    if req.state_dir != req.template_state_dir {
        return refused(format!(
            "hooks run as {unit}, whose unit file reads {}, but this agent's state_dir is {}: \
             use the default state_dir, or set [hooks] run = \"process\" in agent.toml (hooks then run as the \
             agent's own user and can read its key)",
            req.template_state_dir.display(),
            req.state_dir.display()
        ));
    }
    let user = match units.service_user(&unit).await {
        Ok(u) => u,
        Err(e) => return refused(format!("cannot run the hook as {unit}: {e}")),
    };
    if let Err(e) = check_user(&unit, req.run_as, &user) {
        return refused(e);
    }
    let dir = req.app.root().join("hook");
    let (hook, release, env) = (req.hook.to_path_buf(), req.release.to_path_buf(), env_file(req.env));
    let prepared = {
        let dir = dir.clone();
        crate::offload::blocking(move || prepare(&dir, &hook, &release, &env)).await
    };
    if let Err(e) = prepared {
        return refused(format!("cannot prepare {} for {unit}: {e}", dir.display()));
    }
    let end = units.run_oneshot(&unit, req.timeout).await;
    let output = {
        let path = dir.join("output");
        crate::offload::blocking(move || read_tail(&path)).await
    };
    let took = started.elapsed().as_secs_f64();
    let what = format!("{} ({unit}, as {})", req.hook.display(), whom(&user));
    match end {
        Ok(OneshotEnd::Finished { result, status }) => {
            let ok = result == "success";
            HookRun {
                code: (result == "exit-code" || ok).then_some(status),
                ok,
                detail: format!(
                    "{what} {} after {took:.1}s; output: {}",
                    how_it_ended(&result, status),
                    tail(&output, crate::health::TAIL)
                ),
            }
        }
        Ok(OneshotEnd::Stopped) => HookRun {
            code: None,
            ok: false,
            detail: format!(
                "{what} did not finish within {:?} and was stopped; output: {}",
                req.timeout,
                tail(&output, crate::health::TAIL)
            ),
        },
        Err(e) => refused(format!("{what} could not run: {e}")),
    }
}

/// The app's `run_as` must be the user the hook unit runs as: the agent
/// cannot change it, only an operator's drop-in can.
pub fn check_user(unit: &str, run_as: &str, found: &ServiceUser) -> Result<(), String> {
    if run_as.is_empty() || found.user == run_as {
        return Ok(());
    }
    Err(format!(
        "the app's hooks must run as {run_as} (its run_as), but {unit} runs as {}; as root on this host, \
         create /etc/systemd/system/{unit}.d/run-as.conf holding \"[Service]\" and \"User={run_as}\", then \
         run 'systemctl daemon-reload' (or clear the app's run_as)",
        whom(found)
    ))
}

fn whom(u: &ServiceUser) -> String {
    match (u.user.as_str(), u.dynamic) {
        ("", true) => "a dynamic user".into(),
        ("", false) => "root".into(),
        (name, _) => name.to_string(),
    }
}

/// Words for systemd's `Result` and `ExecMainStatus`.
fn how_it_ended(result: &str, status: i32) -> String {
    match result {
        "success" => "exited with status 0".into(),
        "exit-code" => match exec_step(status) {
            Some(step) => {
                format!("could not be started by systemd (status {status}/{step}; 'journalctl -u' the unit for why)")
            }
            None => format!("exited with status {status}"),
        },
        "signal" | "core-dump" => format!("was killed by signal {status}"),
        "timeout" => "ran past the unit's own TimeoutStartSec and was stopped".into(),
        other => format!("failed ({other}, status {status})"),
    }
}

/// The step of starting a service that failed, for systemd's own exit
/// statuses (systemd.exec(5), "Process Exit Codes").
fn exec_step(status: i32) -> Option<&'static str> {
    Some(match status {
        200 => "CHDIR",
        203 => "EXEC",
        205 => "LIMITS",
        209 => "STDOUT",
        210 => "CHROOT",
        214 => "SETSCHEDULER",
        216 => "GROUP",
        217 => "USER",
        218 => "CAPABILITIES",
        226 => "NAMESPACE",
        228 => "SECCOMP",
        236 => "RUNTIME_DIRECTORY",
        _ => return None,
    })
}

/// `KEY="value"` lines, as `EnvironmentFile=` reads them.
fn env_file(env: &[(&'static str, String)]) -> String {
    let mut out = String::new();
    for (k, v) in env {
        let v: String = v
            .chars()
            .filter(|c| !c.is_control())
            .flat_map(|c| match c {
                '\\' | '"' | '$' | '`' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        out.push_str(&format!("{k}=\"{v}\"\n"));
    }
    out
}

/// Points `hook/release` and `hook/run` at this run's release and hook
/// (each replaced atomically), writes `hook/env` and empties `hook/output`
/// (both the agent's alone, 0600: systemd opens them as root).
fn prepare(dir: &Path, hook: &Path, release: &Path, env: &str) -> std::io::Result<()> {
    crate::offload::blocking_step("preparing a hook unit");
    std::fs::create_dir_all(dir)?;
    replace_link(dir, "release", release)?;
    replace_link(dir, "run", hook)?;
    for (name, bytes) in [("env", env.as_bytes()), ("output", b"".as_slice())] {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        // A file left by an older agent may have other permissions.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
    }
    Ok(())
}

fn replace_link(dir: &Path, name: &str, target: &Path) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The last [`KEPT_OUTPUT`] bytes of what the run printed ("" when nothing).
fn read_tail(path: &Path) -> String {
    crate::offload::blocking_step("reading a hook's output");
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(KEPT_OUTPUT as u64);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::with_capacity((len - from) as usize);
    let _ = f.take(KEPT_OUTPUT as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_must_be_the_units_user_and_the_refusal_says_how() {
        let dynamic = ServiceUser {
            user: String::new(),
            dynamic: true,
        };
        assert!(check_user("fleet-hook@web.service", "", &dynamic).is_ok());
        let e = check_user("fleet-hook@web.service", "web", &dynamic).expect_err("dynamic is not web");
        assert!(
            e.contains("runs as a dynamic user")
                && e.contains("/etc/systemd/system/fleet-hook@web.service.d/run-as.conf")
                && e.contains("User=web")
                && e.contains("daemon-reload"),
            "{e}"
        );
        let web = ServiceUser {
            user: "web".into(),
            dynamic: true,
        };
        assert!(check_user("fleet-hook@web.service", "web", &web).is_ok());
        let e = check_user("fleet-hook@web.service", "api", &web).expect_err("web is not api");
        assert!(e.contains("runs as web"), "{e}");
    }

    #[test]
    fn the_environment_file_quotes_what_systemd_would_expand() {
        let env = [
            ("FLEET_APP", "web".to_string()),
            ("FLEET_VERSION", "1.0 \"x\" $HOME\\n\nnext".to_string()),
        ];
        assert_eq!(
            env_file(&env),
            "FLEET_APP=\"web\"\nFLEET_VERSION=\"1.0 \\\"x\\\" \\$HOME\\\\nnext\"\n"
        );
    }

    #[test]
    fn how_a_run_ended_is_said_in_words() {
        assert_eq!(how_it_ended("exit-code", 7), "exited with status 7");
        assert!(how_it_ended("exit-code", 200).contains("200/CHDIR"));
        assert!(how_it_ended("signal", 9).contains("signal 9"));
    }

    #[test]
    fn prepare_points_the_links_and_read_tail_keeps_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hook_dir = dir.path().join("hook");
        prepare(&hook_dir, Path::new("/r/1/pre.sh"), Path::new("/r/1"), "A=\"1\"\n").expect("prepare");
        std::fs::write(hook_dir.join("output"), "old").expect("output");
        prepare(&hook_dir, Path::new("/r/2/pre.sh"), Path::new("/r/2"), "A=\"2\"\n").expect("again");
        for name in ["env", "output"] {
            let mode = std::fs::metadata(hook_dir.join(name)).expect(name).permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(
            std::fs::read_link(hook_dir.join("run")).expect("run"),
            Path::new("/r/2/pre.sh")
        );
        assert_eq!(
            std::fs::read_link(hook_dir.join("release")).expect("release"),
            Path::new("/r/2")
        );
        assert_eq!(std::fs::read_to_string(hook_dir.join("env")).expect("env"), "A=\"2\"\n");
        assert_eq!(
            std::fs::read_to_string(hook_dir.join("output")).expect("output"),
            "",
            "the last run's output is gone"
        );
        let mut long = vec![b'x'; 3 * KEPT_OUTPUT];
        long.extend_from_slice(b"the end");
        std::fs::write(hook_dir.join("output"), &long).expect("output");
        let kept = read_tail(&hook_dir.join("output"));
        assert!(kept.len() == KEPT_OUTPUT && kept.ends_with("the end"), "{}", kept.len());
    }
}
