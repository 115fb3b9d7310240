//! `fleetctl bootstrap` against a real OpenSSH sshd (Debian's
//! openssh-server) on a loopback port, on a throwaway host booted by a real
//! systemd (tests/host-container.sh: an overlay of this machine's root in
//! private namespaces). The package really installs there (dpkg, adduser,
//! the postinst), `systemctl enable --now` really starts the hardened unit
//! as the fleet-agent user, and the agent really enrolls with the test's
//! controller over loopback.
//!
//! Needs root, and the agent package built by `bash packaging/build-debs.sh`
//! (CI does both); fails, never skips, without them.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::container::{deb, is_root, keygen, Boot, Container, USER};
use crate::harness::{free_addr, wait_until, Fleet};

/// A release-signing key bootstrap pins on the host.
const PINNED: &str = "ed25519:abababababababababababababababababababababababababababababababab";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bootstrap_over_ssh_installs_enrolls_and_refuses_untrusted_hosts() {
    assert!(
        is_root(),
        "this test boots a throwaway host (overlay mount, namespaces, systemd) and must run as root, as CI does"
    );
    let deb = deb("fleet-agent");
    let fleet = Fleet::controller_only(&[]);
    let root = fleet.root.path().to_path_buf();
    let user_key = root.join("id_user");
    let user_pub = keygen(&user_key);
    let wrong_key = root.join("id_wrong");
    keygen(&wrong_key);
    let host_key = root.join("host_key");
    let host_pub = keygen(&host_key);
    let other_host_key = root.join("other_host_key");
    let other_host_pub = keygen(&other_host_key);

    let port = free_addr().port();
    let host = Container::start(root.join("host"), port, &user_pub, &host_key, Boot::default());
    let known_hosts = root.join("known_hosts");
    let target = format!("{USER}@127.0.0.1:{port}");
    let bootstrap = |identity: &Path, extra: &[&str]| {
        let mut args = vec![
            "bootstrap".to_string(),
            target.clone(),
            "--identity".into(),
            identity.display().to_string(),
            "--known-hosts".into(),
            known_hosts.display().to_string(),
            "--deb".into(),
            deb.display().to_string(),
            "--label".into(),
            "env=bootstrap".into(),
            "--trusted-key".into(),
            PINNED.into(),
            "--connect-timeout".into(),
            "60s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fleet.fleetctl(&args)
    };
    let known_line = |public: &Path| {
        let key = std::fs::read_to_string(public).expect("read public key");
        let mut fields = key.split_whitespace();
        let (kind, b64) = (fields.next().expect("key type"), fields.next().expect("key"));
        format!("[127.0.0.1]:{port} {kind} {b64}\n")
    };

    // 1. An unknown host key is refused without --accept-new, and not recorded.
    let out = bootstrap(&user_key, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "unknown host key must fail: {err}");
    assert!(
        err.contains("is not in") && err.contains("--accept-new") && err.contains("SHA256:"),
        "the refusal names the fingerprint and the way out: {err}"
    );
    assert!(
        std::fs::read_to_string(&known_hosts).unwrap_or_default().is_empty(),
        "a refused key must not be recorded"
    );

    // 2. A changed host key is refused even with --accept-new, and known_hosts is left alone.
    std::fs::write(&known_hosts, known_line(&other_host_pub)).expect("write known_hosts");
    let out = bootstrap(&user_key, &["--accept-new"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "changed host key must fail: {err}");
    assert!(
        err.contains("CHANGED") && err.contains("line 1") && err.contains("ssh-keygen -R"),
        "the refusal says the key changed, where, and what to do: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&known_hosts).expect("known_hosts"),
        known_line(&other_host_pub),
        "known_hosts must not change on a refusal"
    );

    // 3. A key the host does not know for the user fails with a clear message.
    std::fs::write(&known_hosts, known_line(&host_pub)).expect("write known_hosts");
    let out = bootstrap(&wrong_key, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "wrong user key must fail: {err}");
    assert!(
        err.contains(&format!("refused the key {}", wrong_key.display()))
            && err.contains(&format!("for user {USER}"))
            && err.contains("authorized_keys"),
        "the refusal names the key, the user and the fix: {err}"
    );
    // A user without passwordless sudo: told so, before anything is uploaded.
    let public = std::fs::read_to_string(&user_pub).expect("read user key");
    host.sh(&format!(
        "useradd --create-home --shell /bin/sh nosudo && install -d -o nosudo -m 0700 /home/nosudo/.ssh && \
         echo '{}' >/home/nosudo/.ssh/authorized_keys && chown nosudo /home/nosudo/.ssh/authorized_keys",
        public.trim()
    ));
    let mut args: Vec<String> = vec!["bootstrap".into(), format!("nosudo@127.0.0.1:{port}")];
    for (flag, value) in [
        ("--identity", &user_key),
        ("--known-hosts", &known_hosts),
        ("--deb", &deb),
    ] {
        args.push(flag.into());
        args.push(value.display().to_string());
    }
    let out = fleet.fleetctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "a user without sudo must fail: {err}");
    assert!(
        err.contains("sudo on nosudo@127.0.0.1") && err.contains("passwordless sudo"),
        "the refusal says sudo needs a NOPASSWD rule: {err}"
    );
    assert_eq!(
        host.sh("ls /tmp | grep -c fleet-agent || true"),
        "0",
        "nothing was uploaded"
    );

    // The same login through an ssh-agent holding the key, as ssh does: no
    // --identity and no key file in $HOME, so only the agent can have
    // signed; it gets as far as the sudo check.
    let agent_sock = root.join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start ssh-agent (openssh-client)");
    wait_until(Duration::from_secs(10), "the ssh-agent's socket", || {
        agent_sock.exists().then_some(())
    });
    let ssh_add = |args: &[&str]| {
        let out = std::process::Command::new("ssh-add")
            .args(args)
            .env("SSH_AUTH_SOCK", &agent_sock)
            .output()
            .expect("run ssh-add");
        assert!(out.status.success(), "ssh-add {args:?}: {}", stderr(&out));
    };
    ssh_add(&[&user_key.display().to_string()]);
    let keyless_home = root.join("home-without-keys");
    std::fs::create_dir_all(&keyless_home).expect("home");
    let via_agent = || {
        let args = [
            "bootstrap".to_string(),
            format!("nosudo@127.0.0.1:{port}"),
            "--known-hosts".into(),
            known_hosts.display().to_string(),
            "--deb".into(),
            deb.display().to_string(),
        ];
        fleet
            .fleetctl_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .env("SSH_AUTH_SOCK", &agent_sock)
            .env("HOME", &keyless_home)
            .output()
            .expect("run fleetctl")
    };
    let out = via_agent();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sudo on nosudo@127.0.0.1"),
        "the agent's key logged in (the failure is sudo's): {err}"
    );
    // An agent holding only keys the host refuses: said so, naming the agent.
    ssh_add(&["-D"]);
    ssh_add(&[&wrong_key.display().to_string()]);
    let out = via_agent();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused all 1 keys of the ssh-agent") && err.contains("agent.sock"),
        "{err}"
    );
    let _ = agent.kill();
    let _ = agent.wait();

    // None of the refused attempts got as far as making a join token.
    let tokens = fleet.fleetctl_json(&["token", "ls", "--all"]);
    assert_eq!(tokens.as_array().map(Vec::len), Some(0), "tokens made: {tokens}");

    // 4. Success: a new host key accepted and recorded, the package installed,
    // the agent started by systemd, enrolled, connected.
    std::fs::remove_file(&known_hosts).expect("rm known_hosts");
    let out = bootstrap(&user_key, &["--accept-new", "--output", "json"]);
    assert!(
        out.status.success(),
        "bootstrap failed ({:?}): {}{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out),
        host.journal()
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary[0]["ok"], true, "{summary}");
    assert_eq!(summary[0]["target"], target.as_str(), "{summary}");
    let host_id = summary[0]["host_id"].as_str().expect("host id").to_string();
    assert_eq!(
        std::fs::read_to_string(&known_hosts).expect("known_hosts written"),
        known_line(&host_pub),
        "--accept-new records the host's key as ssh does"
    );
    let listed = fleet.hosts();
    let enrolled = listed
        .iter()
        .find(|h| h["id"] == host_id.as_str())
        .unwrap_or_else(|| panic!("host {host_id} not in hosts ls: {listed:?}"));
    assert_eq!(enrolled["status"], "connected", "{enrolled}");
    assert_eq!(enrolled["labels"]["env"], "bootstrap", "the token's labels: {enrolled}");
    // The token was single-use and is spent.
    let tokens = fleet.fleetctl_json(&["token", "ls", "--all"]);
    assert_eq!(tokens[0]["max_uses"], 1, "{tokens}");
    assert_eq!(tokens[0]["uses"], 1, "{tokens}");

    // What the host looks like: the unit active under systemd (Type=notify:
    // active means the agent sent READY=1), running as fleet-agent, with a
    // watchdog that the agent keeps feeding.
    assert_eq!(
        host.sh("systemctl is-active fleet-agent"),
        "active",
        "{}",
        host.journal()
    );
    assert_eq!(host.sh("systemctl is-enabled fleet-agent"), "enabled");
    let show = host.sh("systemctl show fleet-agent -p Type -p User -p WatchdogUSec -p NRestarts");
    for want in [
        "Type=notify",
        "User=fleet-agent",
        "WatchdogUSec=1min 30s",
        "NRestarts=0",
    ] {
        assert!(show.contains(want), "unit properties lack {want}: {show}");
    }
    assert_eq!(
        host.sh("stat -c %U /proc/$(systemctl show -p MainPID --value fleet-agent)"),
        "fleet-agent",
        "the agent runs unprivileged"
    );
    // The watchdog for real: with WatchdogSec=2s systemd kills an agent that
    // does not ping within 2 s; the agent must stay up, unrestarted, while
    // systemd's last-ping timestamp moves.
    host.sh("mkdir -p /etc/systemd/system/fleet-agent.service.d && \
         printf '[Service]\\nWatchdogSec=2s\\n' >/etc/systemd/system/fleet-agent.service.d/watchdog.conf && \
         systemctl daemon-reload && systemctl restart fleet-agent");
    let ping = || host.sh("systemctl show -p WatchdogTimestampMonotonic --value fleet-agent");
    let first = ping();
    std::thread::sleep(Duration::from_secs(5));
    let later = ping();
    assert_ne!(first, later, "no WATCHDOG=1 reached systemd in 5 s");
    assert_eq!(
        host.sh("systemctl show fleet-agent -p NRestarts -p ActiveState -p WatchdogUSec"),
        "WatchdogUSec=2s\nNRestarts=0\nActiveState=active",
        "the watchdog killed the agent: {}",
        host.journal()
    );
    assert_eq!(
        host.sh("stat -c '%a %U:%G' /etc/fleet/agent.toml"),
        "640 root:fleet-agent"
    );
    // The release-signing key it was given is pinned, and the agent runs with it.
    assert_eq!(
        host.sh("grep trusted_keys /etc/fleet/agent.toml"),
        format!("trusted_keys = [\"{PINNED}\"]")
    );
    assert_eq!(
        host.sh("stat -c '%a %U' /var/lib/fleet-agent/identity.pem"),
        "600 fleet-agent"
    );

    // The polkit rule under the real systemd and polkitd of the host: the
    // agent's user may restart a fleet-app-* unit, and not another unit.
    host.sh(
        "printf '[Service]\\nExecStart=/bin/sleep infinity\\n' >/etc/systemd/system/fleet-app-demo.service && \
         systemctl daemon-reload",
    );
    let as_agent = |unit: &str| {
        host.exec(&[
            "setpriv",
            "--reuid=fleet-agent",
            "--regid=fleet-agent",
            "--clear-groups",
            "busctl",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "RestartUnit",
            "ss",
            unit,
            "replace",
        ])
    };
    let allowed = as_agent("fleet-app-demo.service");
    assert!(
        allowed.status.success(),
        "fleet-agent may restart fleet-app-demo.service: {}",
        stderr(&allowed)
    );
    wait_until(Duration::from_secs(10), "fleet-app-demo.service active", || {
        (host.sh("systemctl is-active fleet-app-demo.service || true") == "active").then_some(())
    });
    let denied = as_agent("ssh.service");
    assert!(!denied.status.success(), "fleet-agent must not restart ssh.service");
    assert!(
        stderr(&denied).contains("Access denied") || stderr(&denied).contains("authentication"),
        "refused by polkit: {}",
        stderr(&denied)
    );

    // 5. Several hosts in parallel from --hosts-file: one that cannot be
    // reached fails with its reason in the summary, the other (this host,
    // bootstrapped again: it keeps its identity) still succeeds.
    let closed = free_addr().port();
    let hosts_file = root.join("hosts.txt");
    std::fs::write(
        &hosts_file,
        format!("# test fleet\n{USER}@127.0.0.1:{closed}\n{target}\n"),
    )
    .expect("write hosts file");
    let out = fleet.fleetctl(&[
        "bootstrap",
        "--hosts-file",
        &hosts_file.display().to_string(),
        "--parallel",
        "2",
        "--identity",
        &user_key.display().to_string(),
        "--known-hosts",
        &known_hosts.display().to_string(),
        "--deb",
        &deb.display().to_string(),
        "--label",
        "env=bootstrap",
        "--wait",
        "60s",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "one host failed: {}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary[0]["target"], format!("{USER}@127.0.0.1:{closed}"), "{summary}");
    assert_eq!(summary[0]["ok"], false, "{summary}");
    assert!(
        summary[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot connect"),
        "{summary}"
    );
    assert_eq!(summary[1]["ok"], true, "{summary}");
    assert_eq!(
        summary[1]["host_id"],
        host_id.as_str(),
        "a host bootstrapped again keeps its identity"
    );
    assert!(
        stderr(&out).contains(&format!(
            "1 of 2 hosts failed:\n  {USER}@127.0.0.1:{closed}: cannot connect"
        )),
        "{}",
        stderr(&out)
    );
    fleet.wait_connected(1, Duration::from_secs(30));
}
