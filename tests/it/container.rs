//! Throwaway hosts for tests: tests/host-container.sh boots a real systemd
//! as PID 1 over an overlay of this machine's root, in private namespaces,
//! with sshd on a loopback port. And what such tests need around them: ssh
//! keys, the packages built by packaging/build-debs.sh, root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::bin;

/// The user each host gets, with passwordless sudo (as on EC2 Ubuntu).
pub const USER: &str = "ubuntu";

/// How a host is booted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Boot<'a> {
    /// The host's name (default `fleet-host`).
    pub name: Option<&'a str>,
    /// A network namespace of its own, `10.88.N.2`, the machine `10.88.N.1`
    /// (default: the machine's network).
    pub net: Option<u8>,
}

/// A booted host; stopped (every process in it killed) on drop.
pub struct Container {
    dir: PathBuf,
    /// Units whose journal is printed when the test fails.
    journal_units: Vec<String>,
}

impl Container {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("host-container.sh")
    }

    /// Boots a host in `dir` with sshd on `port`, `authorized_key` for
    /// [`USER`] and `host_key` as sshd's key.
    pub fn start(dir: PathBuf, port: u16, authorized_key: &Path, host_key: &Path, boot: Boot) -> Container {
        let mut cmd = Command::new("bash");
        cmd.arg(Container::script())
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .arg(USER)
            .arg(authorized_key)
            .arg(host_key);
        if let Some(name) = boot.name {
            cmd.env("FLEET_HOST_NAME", name);
        }
        if let Some(net) = boot.net {
            cmd.env("FLEET_HOST_NET", net.to_string());
        }
        let out = cmd.output().expect("run host-container.sh");
        let host = Container {
            dir,
            journal_units: vec!["fleet-agent".into(), "ssh".into()],
        };
        assert!(
            out.status.success(),
            "the throwaway host did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        host
    }

    /// The units whose journal a failing test prints.
    pub fn journal_of(mut self, units: &[&str]) -> Container {
        self.journal_units = units.iter().map(|u| u.to_string()).collect();
        self
    }

    /// Runs a command inside the host as root.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_with_input(args, b"")
    }

    /// Runs a command inside the host as root, `input` on its stdin.
    pub fn exec_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new("bash")
            .arg(Container::script())
            .arg("exec")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run host-container.sh exec");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write the command's input");
        drop(stdin);
        child.wait_with_output().expect("wait for host-container.sh exec")
    }

    /// Runs a command inside the host and returns its trimmed stdout, asserting success.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "'{script}' failed on the host: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The last lines of the journal of the units it was given.
    pub fn journal(&self) -> String {
        let mut args = vec!["journalctl", "--no-pager", "-n", "80"];
        for unit in &self.journal_units {
            args.extend(["-u", unit.as_str()]);
        }
        let out = self.exec(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the journal of {} ---\n{}", self.dir.display(), self.journal());
        }
        let _ = Command::new("bash")
            .arg(Container::script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// An ed25519 key pair made by ssh-keygen at `path` (+ `.pub`); returns the
/// public key's path.
pub fn keygen(path: &Path) -> PathBuf {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen is missing: install openssh-client (.ci/run does)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.with_extension("pub")
}

/// The package `name` (fleet-agent, fleet-controller, fleetctl) built by
/// packaging/build-debs.sh.
pub fn deb(name: &str) -> PathBuf {
    let debian = bin("fleetctl")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("debian");
    let prefix = format!("{name}_");
    let deb = std::fs::read_dir(&debian)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            file.starts_with(&prefix) && file.ends_with(".deb")
        });
    deb.unwrap_or_else(|| {
        panic!(
            "no {name}_*.deb in {}: build it first with 'bash packaging/build-debs.sh' (.ci/run does)",
            debian.display()
        )
    })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}
