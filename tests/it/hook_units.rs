//! A release's hooks under the packaged agent: each runs as
//! `fleet-hook@<app>.service`, an instance of the package's template unit,
//! on a throwaway host booted by a real systemd as PID 1 with the real
//! polkitd (tests/host-container.sh). The agent (user fleet-agent) is
//! installed and enrolled by `fleetctl bootstrap`, as an operator would.
//!
//! A hook cannot read the agent's key, cannot write its state directory,
//! is stopped at its timeout, and runs as the app's `run_as` user once a
//! drop-in says so; the agent may start and stop hook units but neither
//! restart them nor make transient units of any name.
//!
//! Needs root and the agent package (`bash packaging/build-debs.sh`); fails,
//! never skips, without them.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::container::{deb, is_root, keygen, Boot, Container, USER};
use crate::harness::{free_addr, wait_until, Fleet};
use crate::releases::release;

const APP: &str = "hooked";
const HOST: &str = "hooks-1";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A release whose `pre_activate` hook is `script`, stopped after `timeout`.
fn with_pre_activate(version: &str, script: &str, timeout: &str) -> Vec<u8> {
    release(
        version,
        &[
            (
                "fleet.toml",
                &format!("[hooks]\npre_activate = \"hooks/pre.sh\"\ntimeout = \"{timeout}\"\n"),
                0o644,
            ),
            ("hooks/pre.sh", script, 0o755),
        ],
    )
    .gz()
}

struct Deploys<'a> {
    fleet: &'a Fleet,
    host: &'a Container,
}

impl Deploys<'_> {
    /// Pushes and deploys `bytes` as `version`; the deploy's JSON and whether it succeeded.
    fn deploy(&self, version: &str, bytes: &[u8]) -> (Value, bool) {
        let pushed = self.fleet.push_release(APP, version, bytes);
        assert!(pushed.status.success(), "push {version}: {}", text(&pushed));
        let out = self
            .fleet
            .fleetctl(&["deploy", APP, "--release", version, "--host", HOST, "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("deploy {version}: no JSON ({e}): {}", text(&out)));
        (v, out.status.success())
    }

    /// Deploys a release whose hook must fail; returns the failure's detail.
    fn refused(&self, version: &str, bytes: &[u8]) -> String {
        let (v, ok) = self.deploy(version, bytes);
        assert!(!ok, "deploy {version} must fail: {v}\n{}", self.host.journal());
        assert_eq!(v["cause"], "hook failed", "{v}");
        assert_eq!(v["reverted"], false, "a pre_activate hook fails before the swap: {v}");
        v["detail"].as_str().expect("detail").to_string()
    }
}

#[test]
fn hooks_run_as_their_own_unit_away_from_the_agents_key_and_state() {
    assert!(
        is_root(),
        "this test boots a throwaway host (overlay mount, namespaces, systemd) and must run as root, as CI does"
    );
    let deb = deb("fleet-agent");
    let fleet = Fleet::controller_only(&[]);
    let root = fleet.root.path().to_path_buf();
    let user_key = root.join("id_user");
    let user_pub = keygen(&user_key);
    let host_key = root.join("host_key");
    keygen(&host_key);
    let port = free_addr().port();
    let host = Container::start(
        root.join("host"),
        port,
        &user_pub,
        &host_key,
        Boot {
            name: Some(HOST),
            net: None,
        },
    )
    .journal_of(&["fleet-agent", "fleet-hook@hooked"]);
    let out = fleet.fleetctl(&[
        "bootstrap",
        &format!("{USER}@127.0.0.1:{port}"),
        "--identity",
        user_key.to_str().expect("utf-8"),
        "--known-hosts",
        root.join("known_hosts").to_str().expect("utf-8"),
        "--accept-new",
        "--deb",
        deb.to_str().expect("utf-8"),
        "--connect-timeout",
        "60s",
    ]);
    assert!(out.status.success(), "bootstrap: {}\n{}", text(&out), host.journal());
    wait_until(Duration::from_secs(30), "the host connected", || {
        fleet
            .hosts()
            .iter()
            .any(|h| h["hostname"] == HOST && h["status"] == "connected")
            .then_some(())
    });
    assert_eq!(
        host.sh("systemctl show -p FragmentPath fleet-hook@hooked.service"),
        "FragmentPath=/lib/systemd/system/fleet-hook@.service",
        "the package installs the hook template"
    );
    // The app's own unit, as an operator installs it.
    host.sh(&format!(
        "printf '[Service]\\nDynamicUser=yes\\nWorkingDirectory=/var/lib/fleet-agent/apps/{APP}/current\\n\
         ExecStart=/bin/sleep infinity\\n' >/etc/systemd/system/fleet-app-{APP}.service && systemctl daemon-reload"
    ));
    let created = fleet.fleetctl(&[
        "app",
        "create",
        APP,
        "--unit",
        &format!("fleet-app-{APP}.service"),
        "--no-health",
        "--settle",
        "1s",
    ]);
    assert!(created.status.success(), "app create: {}", text(&created));
    let d = Deploys {
        fleet: &fleet,
        host: &host,
    };

    // A good hook: its own user, the release as working directory, the
    // environment, its output in the deploy's report.
    let (v, ok) = d.deploy(
        "1",
        &with_pre_activate(
            "1",
            "#!/bin/sh\necho \"as=$(id -un) in=$(pwd) app=$FLEET_APP version=$FLEET_VERSION\"\n",
            "30s",
        ),
    );
    let said = v.to_string();
    assert!(ok, "deploy 1: {said}\n{}", host.journal());
    assert!(
        said.contains("as=fleet-hook in=/var/lib/fleet-agent/apps/hooked/releases/1 app=hooked version=1")
            && said.contains("fleet-hook@hooked.service"),
        "the hook's report: {said}"
    );

    // It cannot read the agent's key: the state dir is hidden but for the releases.
    let key = "#!/bin/sh\nset -e\ncat /var/lib/fleet-agent/identity.pem\n";
    let detail = d.refused("2", &with_pre_activate("2", key, "30s"));
    assert!(
        detail.contains("/var/lib/fleet-agent/identity.pem: No such file or directory")
            && detail.contains("exited with status 1"),
        "{detail}"
    );
    assert!(!detail.contains("PRIVATE KEY"), "{detail}");
    assert_eq!(
        host.sh("stat -c '%a %U' /var/lib/fleet-agent/identity.pem"),
        "600 fleet-agent",
        "the key is still the agent's alone"
    );

    // Nor write into the agent's state directory, releases included.
    let write = "#!/bin/sh\nset -e\ntouch /var/lib/fleet-agent/apps/hooked/planted\n";
    let detail = d.refused("3", &with_pre_activate("3", write, "30s"));
    assert!(detail.contains("Read-only file system"), "{detail}");
    assert_eq!(
        host.sh("test -e /var/lib/fleet-agent/apps/hooked/planted && echo planted || echo absent"),
        "absent"
    );

    // A hook that outlives its timeout is stopped, its processes with it.
    let slow = "#!/bin/sh\necho waiting\nsleep 600 &\nsleep 600\n";
    let detail = d.refused("4", &with_pre_activate("4", slow, "2s"));
    assert!(
        detail.contains("did not finish within 2s and was stopped") && detail.contains("waiting"),
        "{detail}"
    );
    let state = host.sh("systemctl show -p ActiveState --value fleet-hook@hooked.service");
    assert!(
        state == "failed" || state == "inactive",
        "the stopped hook's unit is {state}"
    );
    assert_eq!(
        host.sh("pgrep -c -f '^sleep 600$' || true"),
        "0",
        "the hook's processes outlived it"
    );

    // run_as: refused until root's drop-in sets the user, then run as it.
    host.sh("useradd --system --no-create-home hookuser");
    let updated = fleet.fleetctl(&["app", "update", APP, "--run-as", "hookuser"]);
    assert!(updated.status.success(), "app update: {}", text(&updated));
    let good = "#!/bin/sh\necho \"as=$(id -un)\"\n";
    let detail = d.refused("5", &with_pre_activate("5", good, "30s"));
    assert!(
        detail.contains("must run as hookuser")
            && detail.contains("/etc/systemd/system/fleet-hook@hooked.service.d/run-as.conf"),
        "{detail}"
    );
    host.sh("mkdir -p /etc/systemd/system/fleet-hook@hooked.service.d && \
         printf '[Service]\\nUser=hookuser\\n' >/etc/systemd/system/fleet-hook@hooked.service.d/run-as.conf && \
         systemctl daemon-reload");
    let (v, ok) = d.deploy("6", &with_pre_activate("6", good, "30s"));
    assert!(ok, "deploy 6 with the drop-in: {v}\n{}", host.journal());
    assert!(v.to_string().contains("as=hookuser"), "{v}");
    assert_eq!(
        host.sh(&format!("readlink /var/lib/fleet-agent/apps/{APP}/current")),
        "releases/6"
    );

    // polkit, both ways, under this real systemd: the agent's user may start
    // and stop hook units, but not restart one, nor make a transient unit
    // (which could name its own User=) under a hook's or an app's name.
    let as_agent = |args: &str| {
        let out = host.exec(&[
            "sh",
            "-c",
            &format!("cd / && setpriv --reuid fleet-agent --regid fleet-agent --clear-groups {args}"),
        ]);
        (out.status.success(), text(&out))
    };
    let (ok, said) = as_agent("systemctl --no-ask-password start fleet-hook@hooked.service");
    assert!(ok, "the agent may start a hook unit: {said}");
    let (ok, said) = as_agent("systemctl --no-ask-password stop fleet-hook@hooked.service");
    assert!(ok, "the agent may stop a hook unit: {said}");
    for refused in [
        "systemctl --no-ask-password restart fleet-hook@hooked.service",
        "systemctl --no-ask-password start ssh.service",
        "systemd-run --no-ask-password --unit=fleet-hook@other.service -p User=root /bin/true",
        "systemd-run --no-ask-password --unit=fleet-app-nofile.service -p User=root /bin/true",
        "systemd-run --no-ask-password -p User=root /bin/true",
    ] {
        let (ok, said) = as_agent(refused);
        assert!(!ok, "the agent must not: {refused}: {said}");
        assert!(
            said.contains("Access denied") || said.contains("already loaded or has a fragment file"),
            "{refused}: {said}"
        );
    }
}
