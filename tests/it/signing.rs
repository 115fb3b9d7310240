//! Signed releases, verified on the host: two real agents pin CI's public
//! key; every release that key did not sign for this app, this version and
//! these bytes, or that is older than what the host accepted, is refused
//! on the host before a byte is fetched, the running release untouched and
//! the cause reported. The refusals that an honest controller would stop
//! at push are made by rewriting the controller's store while it is down,
//! as an attacker holding its disk would; the hosts still refuse.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::wait_until;
use crate::releases::{assert_success, release};
use crate::rollouts::{Cluster, APP};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Pushes `version`, signed with `key` (and `sequence`) when given.
fn push(c: &Cluster, version: &str, key: Option<&Path>, sequence: u64) -> Output {
    let tar = c.fleet.root.path().join(format!("{version}.tar.gz"));
    std::fs::write(&tar, release(version, &[]).gz()).expect("write release");
    let seq = sequence.to_string();
    let mut args = vec![
        "release",
        "push",
        APP,
        tar.to_str().expect("utf-8"),
        "--release",
        version,
    ];
    if let Some(k) = key {
        args.extend(["--sign-key", k.to_str().expect("utf-8"), "--sequence", &seq]);
    }
    c.fleet.fleetctl(&args)
}

/// Deploys `version` to host 0; asserts it is refused on the host for its
/// signature with `says` in the message, and that host 0 still serves 1.0.0.
fn refused_on_host(c: &Cluster, host: &str, version: &str, says: &str) {
    let out = c.fleet.fleetctl(&["deploy", APP, "--release", version, "--host", host]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "deploy {version} must fail: {err}");
    assert!(err.contains("signature"), "{version}: the phase is named: {err}");
    assert!(err.contains(says), "{version}: '{says}' not in: {err}");
    assert_eq!(
        c.served(0).as_deref(),
        Some("1.0.0"),
        "{version}: the running release is untouched"
    );
}

/// Rewrites the stored signature of `version` (the controller must be down).
fn forge(data_dir: &Path, version: &str, f: impl FnOnce(&mut fleet_proto::ReleaseSignature)) {
    let store = fleet_controller::store::Store::open_existing(&data_dir.join("store")).expect("open the store");
    let mut rel = store.release(APP, version).expect("read").expect("the release");
    let art = rel.artifact.as_mut().expect("artifact");
    f(art.signature.as_mut().expect("signed"));
    store.delete_release(APP, version).expect("delete");
    store.put_release(&rel).expect("put").expect("stored");
    store.flush_blocking().expect("flush");
}

#[test]
fn hosts_run_only_what_their_pinned_key_signed() {
    let mut c = Cluster::start(2);
    let keys = c.fleet.root.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let ci: PathBuf = keys.join("ci");
    let rogue: PathBuf = keys.join("rogue");
    for k in [&ci, &rogue] {
        assert_success(
            &c.fleet.fleetctl(&["keys", "generate", k.to_str().expect("utf-8")]),
            "keys generate",
        );
    }
    let ci_key = keys.join("ci.key");
    let rogue_key = keys.join("rogue.key");
    let public = std::fs::read_to_string(keys.join("ci.pub")).expect("ci.pub");
    let host0 = c.fleet.agents[0].host_id().expect("host id");

    // Before the hosts pin anything, host 0 runs an unsigned release.
    assert_success(&push(&c, "0.5.0", None, 0), "push unsigned 0.5.0");
    assert_success(
        &c.fleet
            .fleetctl(&["deploy", APP, "--release", "0.5.0", "--host", &host0]),
        "deploy unsigned 0.5.0 before pinning",
    );

    // The hosts pin CI's key (agent.toml), and restart with it.
    for a in &mut c.fleet.agents {
        let mut text = std::fs::read_to_string(&a.config).expect("agent.toml");
        text.push_str(&format!("\n[releases]\ntrusted_keys = [\"{}\"]\n", public.trim()));
        std::fs::write(&a.config, text).expect("agent.toml");
        a.kill9();
        a.start();
    }
    c.fleet.wait_connected(2, Duration::from_secs(30));

    assert_success(&push(&c, "1.0.0", Some(&ci_key), 10), "push 1.0.0 signed");
    // The app's health check is a command the controller sends, which no
    // key signed: refused on pinned hosts before anything changes.
    let out = c
        .fleet
        .fleetctl(&["deploy", APP, "--release", "1.0.0", "--host", &host0]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("health check is a command"), "{}", stderr(&out));
    assert_eq!(c.served(0).as_deref(), Some("0.5.0"), "untouched");
    assert_success(
        &c.fleet.fleetctl(&["app", "update", APP, "--no-health"]),
        "app update --no-health",
    );
    assert_success(
        &c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]),
        "rollout 1.0.0",
    );
    c.wait_all_serve("1.0.0");

    // The app does not require signatures on the controller: what a
    // controller lets through, the hosts still judge.
    assert_success(&push(&c, "2.0.0", None, 0), "push unsigned");
    refused_on_host(&c, &host0, "2.0.0", "not signed");
    assert_success(&push(&c, "2.0.1", Some(&rogue_key), 30), "push signed by another key");
    refused_on_host(&c, &host0, "2.0.1", "does not trust");
    assert_success(&push(&c, "0.9.0", Some(&ci_key), 5), "push an old signed release");
    refused_on_host(&c, &host0, "0.9.0", "replay");

    // Signatures for another app, or altered, written into the store of a
    // stopped controller.
    assert_success(&push(&c, "3.0.0", Some(&ci_key), 40), "push 3.0.0");
    assert_success(&push(&c, "3.0.1", Some(&ci_key), 41), "push 3.0.1");
    c.fleet.controller.kill9();
    let pkcs8 = fleetctl_private_key(&ci_key);
    let data_dir = c.fleet.controller.data_dir.clone();
    forge(&data_dir, "3.0.0", |s| {
        let sha = sha_of(&c, "3.0.0");
        *s = fleet_proto::signing::sign(&pkcs8, "other-app", "3.0.0", &sha, 40).expect("sign");
    });
    forge(&data_dir, "3.0.1", |s| s.signature[7] ^= 0x40);
    c.fleet.controller.start();
    c.fleet.wait_connected(2, Duration::from_secs(30));
    refused_on_host(&c, &host0, "3.0.0", "does not verify");
    refused_on_host(&c, &host0, "3.0.1", "does not verify");

    // What CI signed deploys; a rollback to a release the host ran is allowed.
    assert_success(&push(&c, "2.1.0", Some(&ci_key), 50), "push 2.1.0 signed");
    let out = c
        .fleet
        .fleetctl(&["deploy", APP, "--release", "2.1.0", "--host", &host0]);
    assert_success(&out, "deploy signed 2.1.0");
    wait_until(Duration::from_secs(20), "host 0 serving 2.1.0", || {
        (c.served(0).as_deref() == Some("2.1.0")).then_some(())
    });
    let out = c.fleet.fleetctl(&["rollback", APP, "--host", &host0, "--to", "1.0.0"]);
    assert_success(&out, "back to 1.0.0, which the host accepted");
    // 0.5.0 is still on host 0's disk, but came before the keys.
    let out = c.fleet.fleetctl(&["rollback", APP, "--host", &host0, "--to", "0.5.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("never accepted"), "{}", stderr(&out));
    assert_eq!(c.served(0).as_deref(), Some("1.0.0"));

    // The controller refuses at push once the app requires the key.
    assert_success(
        &c.fleet.fleetctl(&[
            "app",
            "update",
            APP,
            "--require-signature",
            keys.join("ci.pub").to_str().expect("utf-8"),
        ]),
        "app update --require-signature",
    );
    for (version, key, says) in [
        ("4.0.0", None, "not signed"),
        ("4.0.1", Some(rogue_key.as_path()), "does not trust"),
    ] {
        let out = push(&c, version, key, 60);
        assert_eq!(out.status.code(), Some(1), "{version}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{version}: {}", stderr(&out));
    }
    assert_success(&push(&c, "4.0.2", Some(&ci_key), 61), "a signed push");
    // The private key never reached the controller.
    let key_text = std::fs::read_to_string(&ci_key).expect("key");
    let body: String = key_text.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!c.fleet.controller.log_text().contains(&body));
}

/// The PKCS#8 bytes of a key `fleetctl keys generate` wrote.
fn fleetctl_private_key(path: &Path) -> Vec<u8> {
    fleetctl::keys::read_private(path).expect("read the key")
}

/// The sha256 the controller recorded for `version`.
fn sha_of(c: &Cluster, version: &str) -> String {
    let tar = c.fleet.root.path().join(format!("{version}.tar.gz"));
    let bytes = std::fs::read(tar).expect("tarball");
    fleet_proto::transport::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}
