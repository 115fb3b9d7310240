//! CA rotation under live agents: `fleet-controller ca rotate` while three
//! agents hold their streams. Not one stream drops; every agent renews onto
//! the new CA and learns both; during the overlap fleetctl trusting the old
//! CA (by file or fingerprint) or the new one works, and a host enrolling
//! with the old fingerprint joins; after it only the new CA is accepted;
//! and after a restart every agent comes back on its new certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{bin, sigterm, wait_exit, wait_until, Fleet};

/// fleetctl with the admin's token and controller, trusting `trust` only
/// (a CA file, or a fingerprint through a config file of its own).
fn fleetctl_trusting(f: &Fleet, dir: &Path, trust: &str) -> Output {
    let admin = std::fs::read_to_string(&f.controller.fleetctl_config).expect("fleetctl.toml");
    let keep: Vec<&str> = admin
        .lines()
        .filter(|l| l.starts_with("controller") || l.starts_with("token"))
        .collect();
    let line = if trust.starts_with("sha256:") {
        format!("ca_fingerprint = \"{trust}\"")
    } else {
        format!("ca = \"{trust}\"")
    };
    let cfg = dir.join(format!("fleetctl-{}.toml", trust.len() + keep.len() + rand_suffix()));
    std::fs::write(&cfg, format!("{}\n{line}\n", keep.join("\n"))).expect("config");
    Command::new(bin("fleetctl"))
        .args(["hosts", "ls", "-o", "json"])
        .env("FLEET_CONFIG", &cfg)
        .env_remove("FLEET_CONTROLLER")
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_CA")
        .output()
        .expect("fleetctl")
}

fn rand_suffix() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn certs_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.matches("BEGIN CERTIFICATE").count())
        .unwrap_or(0)
}

#[test]
fn the_ca_rotates_under_live_agents_without_a_disconnect() {
    let mut f = Fleet::start(3);
    let root: PathBuf = f.root.path().to_path_buf();
    let data = f.controller.data_dir.clone();
    let old_ca = root.join("old-ca.pem");
    std::fs::copy(data.join("ca.pem"), &old_ca).expect("keep the old CA");
    let old_fp = f.controller.ca_fingerprint.clone();
    let disconnects = |f: &Fleet| f.controller.log_text().matches("agent disconnected").count();
    let before = disconnects(&f);

    let out = Command::new(bin("fleet-controller"))
        .args(["ca", "rotate", "--overlap", "25s", "--config"])
        .arg(&f.controller.config)
        .output()
        .expect("ca rotate");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let new_fp = said
        .split_whitespace()
        .find(|w| w.starts_with("sha256:") && *w != old_fp)
        .expect("the new fingerprint is printed")
        .trim_end_matches(['.', ','])
        .to_string();
    assert!(said.contains("fleetctl login --ca-fingerprint"), "{said}");
    let again = Command::new(bin("fleet-controller"))
        .args(["ca", "rotate", "--config"])
        .arg(&f.controller.config)
        .output()
        .expect("ca rotate");
    assert_eq!(again.status.code(), Some(2), "one rotation at a time");

    // Every agent renews onto the new CA at once and learns both CAs.
    wait_until(Duration::from_secs(20), "every agent trusting both CAs", || {
        f.agents
            .iter()
            .all(|a| certs_in(&a.dir.join("state/ca.pem")) == 2)
            .then_some(())
    });

    // The overlap: the old CA (file or fingerprint) and the new one work,
    // and a host enrolling with the old fingerprint joins.
    for trust in [old_ca.to_str().expect("utf-8"), &old_fp, &new_fp] {
        let out = fleetctl_trusting(&f, &root, trust);
        assert!(
            out.status.success(),
            "trusting {trust}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = f.token(&["--label", "env=test"]);
    f.add_agent("late-1", &token, &[]);
    f.wait_connected(4, Duration::from_secs(30));

    // The end of the overlap: only the new CA.
    wait_until(Duration::from_secs(40), "the rotation to finish", || {
        (!data.join("rotation").exists()).then_some(())
    });
    assert_eq!(certs_in(&data.join("server.pem")), 2, "leaf and the new CA");
    for trust in [old_ca.to_str().expect("utf-8"), old_fp.as_str()] {
        let out = fleetctl_trusting(&f, &root, trust);
        assert_eq!(
            out.status.code(),
            Some(5),
            "trusting the old CA {trust} after the overlap"
        );
    }
    let out = fleetctl_trusting(&f, &root, &new_fp);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(disconnects(&f), before, "no stream dropped during the rotation");
    assert_eq!(f.wait_connected(4, Duration::from_secs(5)).len(), 4);

    // A restart: every agent comes back, on its new certificate and the new CA.
    let mut child = f.controller.child.take().expect("running");
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(20), "controller stops");
    f.controller.start();
    f.wait_connected(4, Duration::from_secs(60));
    let log = f.controller.log_text();
    assert!(
        log.contains("CA rotation begun") && log.contains("CA rotation finished"),
        "{log}"
    );
}
