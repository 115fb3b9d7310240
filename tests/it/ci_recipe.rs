//! The CI recipe (docs/ci/fleet-deploy.sh, which docs/ci/deploy.yml runs)
//! against a fleet of two real hosts: run with `bash -e` and only the
//! environment a CI job gives it, it passes a good rollout and fails one
//! that fails, keeping the record in rollout.json either way.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::harness::bin;
use crate::releases::release;
use crate::rollouts::{Cluster, APP};

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ci/fleet-deploy.sh")
}

/// The token of a deployer limited to the app, as the recipe's header
/// tells an admin to make once.
fn ci_token(cluster: &Cluster) -> String {
    let f = &cluster.fleet;
    f.fleetctl_json(&["operator", "create", "ci-demo", "--role", "deployer", "--app", APP]);
    let t = f.fleetctl_json(&["operator", "token", "create", "ci-demo", "--ttl", "1h"]);
    t["secret"].as_str().expect("secret").to_string()
}

/// Runs the recipe in `dir` as a CI job would: fleetctl on PATH, the
/// controller, token and CA in the environment, no fleetctl config file.
fn run_recipe(cluster: &Cluster, token: &str, dir: &Path, version: &str, artifact: &Path) -> Output {
    let sign_key = cluster.fleet.root.path().join("keys/ci.key");
    let controller = &cluster.fleet.controller;
    let path = format!("{}:/usr/bin:/bin", bin("fleetctl").parent().expect("bin dir").display());
    std::process::Command::new("bash")
        .arg("-e")
        .arg(recipe())
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("FLEET_CONTROLLER", controller.addr.to_string())
        .env("FLEET_TOKEN", token)
        .env("FLEET_CA", controller.data_dir.join("ca.pem"))
        .env("APP", APP)
        .env("VERSION", version)
        .env("ARTIFACT", artifact)
        .env("META", "git=abc123")
        .env("SIGN_KEY", sign_key)
        .env("ROLLOUT_FLAGS", "--batch 1 --max-failures 0")
        .output()
        .expect("run bash")
}

fn state(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("rollout.json")).expect("the recipe leaves rollout.json");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("rollout.json is not JSON ({e}): {text}"));
    v["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_ci_recipe_passes_a_good_rollout_and_fails_a_failed_one() {
    let cluster = Cluster::start(2);
    let token = ci_token(&cluster);
    // The app takes only releases signed by CI's key, which the job holds.
    let keys = cluster.fleet.root.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let f = &cluster.fleet;
    f.fleetctl_json(&["keys", "generate", keys.join("ci").to_str().expect("utf-8")]);
    let public = std::fs::read_to_string(keys.join("ci.pub")).expect("ci.pub");
    f.fleetctl_json(&["app", "update", APP, "--require-signature", public.trim()]);
    let dir = cluster.fleet.root.path().join("ci");
    std::fs::create_dir_all(&dir).expect("CI work dir");

    // The GitHub Actions job runs this very script.
    let yml = std::fs::read_to_string(recipe().with_file_name("deploy.yml")).expect("read deploy.yml");
    assert!(
        yml.contains("bash deploy/fleet-deploy.sh") && yml.contains("shell: bash"),
        "deploy.yml must run the tested script under bash"
    );

    let good = dir.join("good.tar.gz");
    std::fs::write(&good, release("2.0.0", &[]).gz()).expect("write the good release");
    let out = run_recipe(&cluster, &token, &dir, "2.0.0", &good);
    assert!(
        out.status.success(),
        "a good rollout must pass the job: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(&dir), "succeeded");
    let shown = cluster
        .fleet
        .fleetctl(&["release", "show", APP, "2.0.0", "--output", "json"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("abc123"),
        "META is recorded with the release"
    );
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("release JSON");
    assert_eq!(shown["signed_by"], public.trim(), "signed on the runner: {shown}");

    let bad = dir.join("bad.tar.gz");
    std::fs::write(&bad, release("3.0.0", &[("HEALTH", "fail\n", 0o644)]).gz()).expect("write the bad release");
    let out = run_recipe(&cluster, &token, &dir, "3.0.0", &bad);
    assert!(
        !out.status.success(),
        "a failed rollout must fail the job: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Its first host fails health and reverts by itself: the rollout ends
    // failed (rolled_back when a host had already taken the release).
    let ended = state(&dir);
    assert!(ended == "failed" || ended == "rolled_back", "rollout.json says {ended}");

    // A job missing a secret fails at once, naming it.
    let out = std::process::Command::new("bash")
        .arg("-e")
        .arg(recipe())
        .current_dir(&dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run bash");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLEET_CONTROLLER is not set"));
}
