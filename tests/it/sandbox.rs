//! A real systemd manager for tests: `systemd --user` on a private D-Bus
//! session bus, in a private mount namespace (../shared/notes/real-systemd-in-tests.md).
//! Agents reach it with `[systemd] bus = "session"`; units go in its own
//! XDG_CONFIG_HOME. Everything it started is ended in `Drop`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::wait_until;

/// Each manager gets cgroups of its own: two user managers sharing one
/// cgroup would stop each other's units (the same unit name maps to the
/// same cgroup path) when one of them stops.
const SCRIPT: &str = r#"set -e
moved=0
for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ -f "$h/cgroup.procs" ] && [ -w "$h" ]; then
        mkdir -p "$h/$FLEET_CGROUP" && echo $$ > "$h/$FLEET_CGROUP/cgroup.procs" && moved=1
    fi
done
[ "$moved" = 1 ] || { echo "no writable cgroup hierarchy to isolate this systemd in" >&2; exit 1; }
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system
dbus-daemon --session --address="unix:path=$XDG_RUNTIME_DIR/bus" --fork --nopidfile --print-pid=3 3>"$XDG_RUNTIME_DIR/dbus.pid"
export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
exec /lib/systemd/systemd --user
"#;

/// One systemd user manager with its bus.
pub struct Sandbox {
    /// Its directory.
    pub dir: PathBuf,
    runtime: PathBuf,
    units: PathBuf,
    cgroup: String,
    systemd: Option<Child>,
    dbus_pid: Option<String>,
}

impl Sandbox {
    /// Starts dbus-daemon and systemd --user under `dir`; waits until the
    /// manager is running.
    pub fn start(dir: &Path) -> Sandbox {
        let runtime = dir.join("run");
        let config = dir.join("config");
        let units = config.join("systemd/user");
        std::fs::create_dir_all(&runtime).expect("runtime dir");
        std::fs::create_dir_all(&units).expect("unit dir");
        let ok = Command::new("chmod")
            .arg("700")
            .arg(&runtime)
            .status()
            .expect("chmod")
            .success();
        assert!(ok, "chmod 700 {}", runtime.display());
        for need in [
            "/lib/systemd/systemd",
            "/usr/bin/dbus-daemon",
            "/usr/bin/unshare",
            "/usr/bin/busctl",
        ] {
            assert!(
                Path::new(need).exists(),
                "{need} is missing: the systemd tests need Debian's systemd, dbus and util-linux \
                 (apt-get install -y systemd dbus util-linux; .ci/run does)"
            );
        }
        let log = std::fs::File::create(dir.join("systemd.log")).expect("systemd log");
        // Unique: the fleet's temp dir name and the sandbox's own.
        let name = |p: Option<&Path>| p.and_then(Path::file_name).and_then(|n| n.to_str()).map(String::from);
        let cgroup = format!(
            "{}-{}",
            name(dir.parent()).expect("sandbox dir inside a named temp dir"),
            name(Some(dir)).expect("named sandbox dir")
        );
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", SCRIPT])
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", &config)
            .env("FLEET_CGROUP", &cgroup)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start unshare + systemd --user");
        let mut sandbox = Sandbox {
            dir: dir.to_path_buf(),
            runtime,
            units,
            cgroup,
            systemd: Some(child),
            dbus_pid: None,
        };
        wait_until(Duration::from_secs(20), "systemd --user to be running", || {
            let state = sandbox.busctl_opt(&[
                "get-property",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "SystemState",
            ])?;
            (state.contains("running") || state.contains("degraded")).then_some(())
        });
        // Kept in memory: the directory may be gone by the time of Drop.
        sandbox.dbus_pid = std::fs::read_to_string(sandbox.runtime.join("dbus.pid"))
            .ok()
            .map(|p| p.trim().to_string());
        sandbox
    }

    /// The manager's pid: its mount namespace is the sandbox's.
    pub fn pid(&self) -> u32 {
        self.systemd.as_ref().expect("running").id()
    }

    /// Mounts a tmpfs of `size` (e.g. "8m") on `path`, inside the sandbox's
    /// mount namespace only: a small disk for its units and for an agent
    /// started in that namespace.
    pub fn mount_tmpfs(&self, path: &Path, size: &str) {
        std::fs::create_dir_all(path).expect("mount point");
        let ok = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "--", "mount", "-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(path)
            .status()
            .expect("nsenter mount")
            .success();
        assert!(ok, "mounting a tmpfs on {} in the sandbox failed", path.display());
    }

    /// The environment a process needs to reach this manager.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.bus_address()),
            ("XDG_RUNTIME_DIR".into(), self.runtime.display().to_string()),
        ]
    }

    fn bus_address(&self) -> String {
        format!("unix:path={}", self.runtime.join("bus").display())
    }

    fn busctl_opt(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("busctl")
            .arg("--user")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus_address())
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs busctl against the manager; panics with its stderr on failure.
    pub fn busctl(&self, args: &[&str]) -> String {
        self.busctl_opt(args).unwrap_or_else(|| {
            panic!(
                "busctl --user {args:?} failed; see {}",
                self.dir.join("systemd.log").display()
            )
        })
    }

    /// Installs (or replaces) a unit file and reloads the manager.
    pub fn install_unit(&self, name: &str, text: &str) {
        std::fs::write(self.units.join(name), text).expect("write unit");
        self.busctl(&[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Reload",
        ]);
    }

    /// A property of a unit, e.g. ("Unit", "ActiveState") or ("Service", "MainPID").
    pub fn unit_property(&self, unit: &str, iface: &str, prop: &str) -> String {
        let path = self.busctl(&[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "LoadUnit",
            "s",
            unit,
        ]);
        let path = path.trim_start_matches("o ").trim_matches('"').to_string();
        let v = self.busctl(&[
            "get-property",
            "org.freedesktop.systemd1",
            &path,
            &format!("org.freedesktop.systemd1.{iface}"),
            prop,
        ]);
        // "s \"active\"" or "u 1234"
        v.split_once(' ')
            .map(|(_, v)| v.trim_matches('"').to_string())
            .unwrap_or(v)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.systemd.take() {
            // SIGTERM: the manager stops its units, then exits.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let ended = (0..50).any(|_| {
                std::thread::sleep(Duration::from_millis(100));
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !ended {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let pid = self.dbus_pid.clone().or_else(|| {
            std::fs::read_to_string(self.runtime.join("dbus.pid"))
                .ok()
                .map(|p| p.trim().to_string())
        });
        if let Some(pid) = &pid {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        // Empty now; systemd removed its own sub-cgroups when it stopped.
        // The killed processes leave their cgroups a moment after the signal.
        for _ in 0..50 {
            let mut left = false;
            for h in ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                let dir = Path::new(h).join(&self.cgroup);
                remove_cgroup(&dir);
                left |= dir.exists();
            }
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Removes a cgroup and its children, deepest first (a cgroup directory
/// goes with rmdir once it has no processes and no children).
fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
