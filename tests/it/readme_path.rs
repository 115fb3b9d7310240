//! README.md's "From packages to a first rollout", run literally: every
//! fenced block under a `<!-- readme-path: ROLE -->` marker, in order, as
//! the user `ubuntu` (passwordless sudo) in a login shell, on throwaway hosts
//! booted by a real systemd (tests/host-container.sh): `controller` blocks
//! on a controller host, `laptop` blocks on an operator's machine, `hosts`
//! blocks on each of two app hosts, each in a network namespace of its own.
//!
//! What the test provides, as the README's reader would: the three .deb
//! files in the home directory of the machine each is for, the name
//! `controller.example.com` in /etc/hosts, and the values the README says to
//! set (`CA_FINGERPRINT`, `ADMIN_TOKEN`, `JOIN_TOKEN`), read from what the
//! earlier blocks printed. It also waits, as a person would, until `fleetctl
//! hosts ls` shows the hosts before the next laptop block.
//!
//! Needs root and the packages built by `bash packaging/build-debs.sh`
//! (CI does both); fails, never skips, without them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::container::{deb, is_root, keygen, Boot, Container, USER};
use crate::harness::{free_addr, wait_until};

/// Where a README block runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Controller,
    Laptop,
    Hosts,
}

/// A block of the README path.
#[derive(Debug)]
struct Block {
    role: Role,
    /// 1-based line of its marker in README.md.
    line: usize,
    code: String,
}

/// The marked blocks of `readme`, in order. A marker not followed by a
/// fenced block, or naming an unknown role, is an error.
fn blocks(readme: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut lines = readme.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("<!-- readme-path:") else {
            continue;
        };
        let role = match rest.trim_end_matches("-->").trim() {
            "controller" => Role::Controller,
            "laptop" => Role::Laptop,
            "hosts" => Role::Hosts,
            other => return Err(format!("README.md:{}: unknown readme-path role '{other}'", i + 1)),
        };
        match lines.next() {
            Some((_, fence)) if fence.trim_start().starts_with("```") => {}
            _ => {
                return Err(format!(
                    "README.md:{}: the marker must be followed by a ``` block",
                    i + 1
                ))
            }
        }
        let mut code = String::new();
        loop {
            match lines.next() {
                Some((_, l)) if l.trim_start().starts_with("```") => break,
                Some((_, l)) => {
                    code.push_str(l);
                    code.push('\n');
                }
                None => return Err(format!("README.md:{}: the block never ends", i + 1)),
            }
        }
        out.push(Block {
            role,
            line: i + 1,
            code,
        });
    }
    Ok(out)
}

/// The first `prefix` + run of `allowed` characters in `text`, at least
/// `min` of them after the prefix.
fn find_value(text: &str, prefix: &str, min: usize, allowed: impl Fn(char) -> bool) -> Option<String> {
    let mut from = 0;
    while let Some(at) = text[from..].find(prefix) {
        let start = from + at;
        let tail = &text[start + prefix.len()..];
        let len: usize = tail.chars().take_while(|c| allowed(*c)).map(char::len_utf8).sum();
        if len >= min {
            return Some(text[start..start + prefix.len() + len].to_string());
        }
        from = start + prefix.len();
    }
    None
}

/// The values the README tells its reader to set, from a block's output.
fn capture(output: &str, env: &mut BTreeMap<&'static str, String>) {
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '.';
    if let Some(fp) = find_value(output, "sha256:", 64, |c| c.is_ascii_hexdigit()) {
        env.entry("CA_FINGERPRINT").or_insert(fp);
    }
    if let Some(t) = find_value(output, "fleet_op_", 3, token_char) {
        env.insert("ADMIN_TOKEN", t);
    }
    if let Some(t) = find_value(output, "fleet_jt_", 3, token_char) {
        env.insert("JOIN_TOKEN", t);
    }
}

/// A host of the path: its container and the name blocks report it by.
struct Machine {
    name: &'static str,
    host: Container,
}

impl Machine {
    /// Runs `code` as [`USER`] in a login shell (`bash -euo pipefail`), the
    /// `env` values set first; returns stdout, stderr and success.
    fn run_as_user(&self, code: &str, env: &BTreeMap<&'static str, String>) -> (String, String, bool) {
        let mut script = String::new();
        for (k, v) in env {
            script.push_str(&format!("{k}='{v}'\n"));
        }
        script.push_str(code);
        let put = self.host.exec_with_input(
            &[
                "sh",
                "-c",
                "cat >/tmp/readme-block.sh && chmod 0644 /tmp/readme-block.sh",
            ],
            script.as_bytes(),
        );
        assert!(put.status.success(), "cannot write the block on {}", self.name);
        let out = self.host.exec(&[
            "runuser",
            "-l",
            USER,
            "-c",
            "bash -euo pipefail /tmp/readme-block.sh </dev/null",
        ]);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        )
    }

    /// Puts `file` into the user's home directory.
    fn give(&self, file: &Path) {
        let name = file.file_name().expect("file name").to_string_lossy().into_owned();
        let bytes = std::fs::read(file).expect("read the package");
        let target = format!("/home/{USER}/{name}");
        let out = self.host.exec_with_input(
            &["install", "-o", USER, "-g", USER, "-m", "0644", "/dev/stdin", &target],
            &bytes,
        );
        assert!(out.status.success(), "copy {name} to {}", self.name);
    }
}

#[test]
fn the_readme_blocks_are_parsed_with_their_roles() {
    let readme = "x\n<!-- readme-path: laptop -->\n```sh\nfleetctl a\nfleetctl b\n```\n\
                  <!-- readme-path: hosts -->\n```\ncurl x\n```\n";
    let got = blocks(readme).expect("parse");
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].role, got[0].line, got[0].code.as_str()),
        (Role::Laptop, 2, "fleetctl a\nfleetctl b\n")
    );
    assert_eq!((got[1].role, got[1].code.as_str()), (Role::Hosts, "curl x\n"));
    assert!(blocks("<!-- readme-path: moon -->\n```\nx\n```\n").is_err());
    assert!(blocks("<!-- readme-path: hosts -->\nno fence\n").is_err());
    assert!(blocks("<!-- readme-path: hosts -->\n```\nnever ends\n").is_err());

    let mut env = BTreeMap::new();
    capture(
        &format!(
            "  CA fingerprint:  sha256:{}\ntoken = \"fleet_op_ab12.cd34\"\n",
            "a1".repeat(32)
        ),
        &mut env,
    );
    capture("fleet_jt_x1.y2\n", &mut env);
    assert_eq!(env["CA_FINGERPRINT"], format!("sha256:{}", "a1".repeat(32)));
    assert_eq!(env["ADMIN_TOKEN"], "fleet_op_ab12.cd34");
    assert_eq!(env["JOIN_TOKEN"], "fleet_jt_x1.y2");
}

#[test]
fn the_readme_path_from_packages_to_a_rollout_works_on_real_hosts() {
    assert!(
        is_root(),
        "this test boots throwaway hosts (overlay mounts, namespaces, systemd) and must run as root, as CI does"
    );
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let path = blocks(&readme).unwrap_or_else(|e| panic!("{e}"));
    for role in [Role::Controller, Role::Laptop, Role::Hosts] {
        assert!(
            path.iter().any(|b| b.role == role),
            "README.md has no readme-path block for {role:?}: the path from packages to a rollout is incomplete"
        );
    }
    let debs = [deb("fleet-controller"), deb("fleet-agent"), deb("fleetctl")];

    let root = tempfile::tempdir().expect("temp dir");
    let user_pub = keygen(&root.path().join("id_user"));
    let host_key = root.path().join("host_key");
    keygen(&host_key);
    let boot = |name: &'static str, net: Option<u8>, units: &[&str]| Machine {
        name,
        host: Container::start(
            root.path().join(name),
            free_addr().port(),
            &user_pub,
            &host_key,
            Boot { name: Some(name), net },
        )
        .journal_of(units),
    };
    let controller = boot("controller", None, &["fleet-controller"]);
    let laptop = boot("laptop", None, &[]);
    let hosts = [
        boot("web-1", Some(1), &["fleet-agent", "fleet-app-hello"]),
        boot("web-2", Some(2), &["fleet-agent", "fleet-app-hello"]),
    ];

    // The reader's environment: the name of the controller, the packages.
    controller
        .host
        .sh("echo '127.0.0.1 controller.example.com' >>/etc/hosts");
    laptop.host.sh("echo '127.0.0.1 controller.example.com' >>/etc/hosts");
    for (n, m) in hosts.iter().enumerate() {
        m.host
            .sh(&format!("echo '10.88.{}.1 controller.example.com' >>/etc/hosts", n + 1));
    }
    controller.give(&debs[0]);
    laptop.give(&debs[2]);
    for m in &hosts {
        m.give(&debs[1]);
    }

    let mut env: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut hosts_installed = false;
    let mut last_host_output: Vec<String> = vec![String::new(); hosts.len()];
    for block in &path {
        let targets: Vec<&Machine> = match block.role {
            Role::Controller => vec![&controller],
            Role::Laptop => vec![&laptop],
            Role::Hosts => hosts.iter().collect(),
        };
        if block.role == Role::Laptop && hosts_installed {
            // A person looks at `fleetctl hosts ls` before going on.
            wait_until(
                Duration::from_secs(90),
                "both hosts connected in fleetctl hosts ls",
                || {
                    let (out, _, ok) = laptop.run_as_user("fleetctl hosts ls --output json\n", &env);
                    let hosts: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
                    let connected = hosts.as_array()?.iter().filter(|h| h["status"] == "connected").count();
                    (connected == 2).then_some(())
                },
            );
        }
        for (i, m) in targets.iter().enumerate() {
            let started = std::time::Instant::now();
            let (out, err, ok) = m.run_as_user(&block.code, &env);
            eprintln!(
                "readme-path: README.md:{} on {}: {:?}",
                block.line,
                m.name,
                started.elapsed()
            );
            assert!(
                ok,
                "README.md:{} failed on {} (as {USER}):\n{}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
                block.line, m.name, block.code
            );
            capture(&out, &mut env);
            if block.role == Role::Hosts {
                hosts_installed = true;
                last_host_output[i] = out;
            }
        }
    }
    for key in ["CA_FINGERPRINT", "ADMIN_TOKEN", "JOIN_TOKEN"] {
        assert!(env.contains_key(key), "no block of the README path printed {key}");
    }

    // What a person sees: each host serves the second version, the app's
    // unit runs as its own user, and fleetctl knows both hosts by name.
    for (m, out) in hosts.iter().zip(&last_host_output) {
        assert!(
            out.contains("hello, version 2"),
            "{} does not serve version 2 after the README's rollouts: {out}",
            m.name
        );
        let user = m
            .host
            .sh("stat -c %U /proc/$(systemctl show -p MainPID --value fleet-app-hello.service)");
        assert_ne!(user, "fleet-agent", "the app must not run as the agent's user");
        assert_ne!(user, "root", "the app must not run as root");
    }
    let (out, err, ok) = laptop.run_as_user("fleetctl hosts ls --output json\n", &env);
    assert!(ok, "fleetctl hosts ls: {err}");
    for name in ["web-1", "web-2"] {
        assert!(
            out.contains(&format!("\"{name}\"")),
            "hosts ls does not list {name}: {out}"
        );
    }

    // An app whose unit the agent's polkit rule does not cover (opted out of
    // the naming rule): the deploy fails naming the rule, not a raw D-Bus error.
    // (With the old spelling of --release, still accepted with a note.)
    let (out, err, ok) = laptop.run_as_user(
        "fleetctl app create sshd --unit ssh.service --allow-any-unit --no-health\n\
         fleetctl release push sshd ./hello-1.tar.gz --version 1\n\
         fleetctl deploy sshd --version 1 --host web-1\n",
        &env,
    );
    let said = format!("{out}{err}");
    assert!(!ok, "a deploy that restarts ssh.service must fail: {said}");
    assert!(
        err.contains("--version V is now --release V"),
        "the old spelling is noted: {said}"
    );
    assert!(
        said.contains("systemd refused to restart ssh.service: access denied")
            && said.contains("fleet-app-<app>.service")
            && said.contains("50-fleet-agent.rules"),
        "the failed restart must name the polkit rule and the unit naming: {said}"
    );

    // A host taken out: purging the agent says goodbye to the controller,
    // and stops the app whose releases it deletes instead of leaving it
    // running from a deleted directory.
    let started = std::time::Instant::now();
    let (out, err, ok) = hosts[1].run_as_user("sudo apt-get purge -y fleet-agent\n", &env);
    eprintln!("readme-path: purge on web-2: {:?}", started.elapsed());
    let said = format!("{out}{err}");
    assert!(ok, "purging fleet-agent failed: {said}");
    assert!(
        said.contains("told the controller at controller.example.com:7443 that host"),
        "the purge must tell the controller the host leaves: {said}"
    );
    assert!(
        said.contains("stopped fleet-app-hello.service"),
        "the purge must stop the app whose releases it deletes, and say so: {said}"
    );
    assert_eq!(
        hosts[1].host.sh("systemctl is-active fleet-app-hello.service || true"),
        "inactive"
    );
    let status_of = |hosts: &Value, name: &str| {
        hosts
            .as_array()
            .and_then(|a| a.iter().find(|h| h["hostname"] == name))
            .map(|h| h["status"].as_str().unwrap_or_default().to_string())
    };
    let (out, err, ok) = laptop.run_as_user("fleetctl hosts ls --output json\n", &env);
    assert!(ok, "fleetctl hosts ls: {err}");
    let listed: Value = serde_json::from_str(&out).expect("hosts ls JSON");
    assert_eq!(status_of(&listed, "web-2").as_deref(), Some("uninstalled"), "{out}");
    assert_eq!(status_of(&listed, "web-1").as_deref(), Some("connected"), "{out}");

    // The controller the package runs: the data dir that root's init made
    // is the service user's; a key it cannot read stops it after one try,
    // with the reason and the fix in `systemctl status`.
    assert_eq!(
        controller
            .host
            .sh("find /var/lib/fleet-controller ! -user fleet-controller | wc -l"),
        "0",
        "init as root must leave the data dir to fleet-controller"
    );
    controller
        .host
        .sh("chown root:root /var/lib/fleet-controller/ca.key && (systemctl restart fleet-controller || true)");
    let show = wait_until(Duration::from_secs(30), "the controller to fail", || {
        let show = controller
            .host
            .sh("systemctl show fleet-controller -p ActiveState -p ExecMainStatus -p NRestarts");
        show.contains("ActiveState=failed").then_some(show)
    });
    // RestartSec is 5 s: a restart would have come by now.
    std::thread::sleep(Duration::from_secs(7));
    let show_later = controller
        .host
        .sh("systemctl show fleet-controller -p ActiveState -p ExecMainStatus -p NRestarts");
    assert!(
        show.contains("ExecMainStatus=2")
            && show_later.contains("NRestarts=0")
            && show_later.contains("ActiveState=failed"),
        "a controller that cannot read its key must stop after one try (exit 2): {show} / {show_later}"
    );
    let status = controller.host.exec(&[
        "systemctl",
        "status",
        "--no-pager",
        "-n",
        "20",
        "-l",
        "fleet-controller",
    ]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("cannot read /var/lib/fleet-controller/ca.key: Permission denied")
            && status.contains("sudo chown -R fleet-controller: /var/lib/fleet-controller"),
        "systemctl status must say what is wrong and how to fix it: {status}"
    );
}
