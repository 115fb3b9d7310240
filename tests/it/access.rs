//! Operator identities, roles and scopes, against a real controller and real
//! agents: each role is allowed what the permission table gives it and
//! refused the rest (exit 4, naming the permission); a deployer limited to
//! one app and to hosts labelled `group=staging` changes nothing else; a
//! revoked or expired token is refused at once, on a connection already
//! open too; the recovery token works only with the CA key.

use std::process::{Command, Output};
use std::time::Duration;

use fleet_proto::session_client::SessionClient;
use fleet_proto::WhoAmIRequest;
use serde_json::Value;

use crate::harness::{bin, wait_until, Fleet};
use crate::limits::operator_channel;
use crate::releases::assert_success;
use crate::rollouts::{Cluster, APP};

/// fleetctl as the holder of `token` (the fleet's config for the rest).
fn as_op(fleet: &Fleet, token: &str, args: &[&str]) -> Output {
    let mut all = vec!["--token", token];
    all.extend(args);
    fleet.fleetctl(&all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 4 and that stderr holds every needle.
fn denied(o: &Output, what: &str, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(4), "{what} must be refused (exit 4): {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: '{n}' not in: {err}");
    }
}

/// Creates an identity and a token for it; returns the secret.
fn identity(fleet: &Fleet, name: &str, args: &[&str]) -> String {
    let mut create = vec!["operator", "create", name];
    create.extend(args);
    fleet.fleetctl_json(&create);
    let t = fleet.fleetctl_json(&["operator", "token", "create", name, "--ttl", "1h"]);
    t["secret"].as_str().expect("secret").to_string()
}

#[test]
fn roles_and_scopes_hold_on_every_call() {
    // Host 0 is group=staging, host 1 group=prod; both run app demo.
    let c = Cluster::start_groups(&["staging", "prod"]);
    let f = &c.fleet;
    let created = f.fleetctl(&["app", "create", "other", "--unit", "fleet-app-other.service"]);
    assert_success(&created, "app create other");
    c.push("1.0.0", &[]);
    let hosts = f.hosts();
    let prod_host = hosts
        .iter()
        .find(|h| h["labels"]["group"] == "prod")
        .and_then(|h| h["id"].as_str())
        .expect("the prod host")
        .to_string();

    let viewer = identity(f, "vera", &["--role", "viewer"]);
    let ci = identity(
        f,
        "ci-demo",
        &["--role", "deployer", "--app", APP, "--selector", "group=staging"],
    );

    // A viewer reads everything and changes nothing.
    for read in [
        &["hosts", "ls"][..],
        &["app", "ls"],
        &["rollout", "ls"],
        &["audit"],
        &["token", "ls"],
    ] {
        assert_success(&as_op(f, &viewer, read), &format!("viewer {read:?}"));
    }
    denied(
        &as_op(f, &viewer, &["rollout", APP, "--release", "1.0.0", "--dry-run"]),
        "a viewer's rollout",
        &["'vera' is a viewer", "'deploy'"],
    );
    denied(
        &as_op(f, &viewer, &["token", "create"]),
        "a viewer's join token",
        &["'token.write'"],
    );
    denied(
        &as_op(f, &viewer, &["hosts", "label", &prod_host, "x=y"]),
        "a viewer's label",
        &["'host.write'"],
    );
    denied(
        &as_op(f, &viewer, &["operator", "ls"]),
        "a viewer listing operators",
        &["'operator.admin'"],
    );

    // The scoped deployer: its app, its hosts, nothing more.
    let me = serde_json::from_slice::<Value>(&as_op(f, &ci, &["whoami", "-o", "json"]).stdout).expect("whoami json");
    assert_eq!(me["role"], "deployer", "{me}");
    assert_eq!(me["scope"]["apps"], serde_json::json!([APP]), "{me}");
    assert_eq!(me["scope"]["selector"], "group=staging", "{me}");
    let perms = me["permissions"].as_array().expect("permissions");
    assert!(
        perms.contains(&"deploy".into()) && !perms.contains(&"host.write".into()),
        "{me}"
    );
    assert!(me["token_expires_at_ms"].as_i64().unwrap_or(0) > 0, "{me}");

    let tar = f.root.path().join("1.0.0.tar.gz");
    let tar = tar.to_str().expect("utf-8");
    denied(
        &as_op(f, &ci, &["release", "push", "other", tar, "--release", "1.0.0"]),
        "a push to another app",
        &["may not change app 'other'"],
    );
    denied(
        &as_op(f, &ci, &["rollout", APP, "--release", "1.0.0", "--wait"]),
        "a rollout reaching a prod host",
        &["may not change host", "--selector group=staging"],
    );
    denied(
        &as_op(f, &ci, &["deploy", APP, "--host", &prod_host, "--release", "1.0.0"]),
        "a deploy to the prod host",
        &["may not change host"],
    );
    denied(
        &as_op(f, &ci, &["app", "update", APP, "--settle", "2s"]),
        "an app change",
        &["'app.write'"],
    );
    denied(
        &as_op(f, &ci, &["operator", "token", "create", "ci-demo"]),
        "minting its own token",
        &["'operator.admin'"],
    );
    assert_eq!(c.served(0), None, "nothing was deployed by the refusals");
    assert_eq!(c.served(1), None);
    let out = as_op(
        f,
        &ci,
        &[
            "rollout",
            APP,
            "--release",
            "1.0.0",
            "--selector",
            "group=staging",
            "--wait",
        ],
    );
    assert_success(&out, "the deployer's rollout inside its scope");
    wait_until(Duration::from_secs(30), "the staging host serving 1.0.0", || {
        (c.served(0).as_deref() == Some("1.0.0")).then_some(())
    });
    assert_eq!(c.served(1), None, "the prod host was left alone");

    // A watch that is already running ends when its token is revoked.
    c.push("2.0.0", &[]);
    let started = f.fleetctl_json(&[
        "rollout",
        APP,
        "--release",
        "2.0.0",
        "--canary",
        "1",
        "--canary-approve",
    ]);
    let rollout_id = started["id"].as_str().expect("rollout id").to_string();
    // The scoped deployer cannot steer a rollout that reaches outside its
    // scope, nor delete another app's release, nor roll a prod host back,
    // nor even plan outside its scope.
    denied(
        &as_op(f, &ci, &["rollout", "pause", &rollout_id]),
        "pausing a rollout over a prod host",
        &["may not change host"],
    );
    denied(
        &as_op(f, &ci, &["release", "rm", "other", "1.0.0", "--yes"]),
        "deleting another app's release",
        &["may not change app 'other'"],
    );
    denied(
        &as_op(f, &ci, &["rollback", APP, "--host", &prod_host, "--to", "1.0.0"]),
        "rolling a prod host back",
        &["may not change host"],
    );
    denied(
        &as_op(f, &ci, &["rollout", APP, "--release", "2.0.0", "--dry-run"]),
        "planning over a prod host",
        &["may not change host"],
    );
    let mut watch = f
        .fleetctl_command(&["--token", &viewer, "rollout", "status", &rollout_id, "--watch"])
        .spawn()
        .expect("watch");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        watch.try_wait().expect("poll").is_none(),
        "the watch runs while the canary waits"
    );
    let vera = f.fleetctl_json(&["operator", "show", "vera"]);
    let vera_token = vera["tokens"][0]["id"].as_str().expect("token id").to_string();
    f.fleetctl_json(&["operator", "token", "revoke", &vera_token]);
    let ended = wait_until(Duration::from_secs(15), "the watch to end after the revocation", || {
        watch.try_wait().expect("poll")
    });
    let mut err = String::new();
    std::io::Read::read_to_string(watch.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
    assert_eq!(ended.code(), Some(4), "{err}");
    assert!(err.contains("revoked"), "{err}");
    f.fleetctl_json(&["rollout", "abort", &rollout_id]);

    // The audit log names who did each change, and records the refusals.
    let audit = f.fleetctl_json(&["audit"]);
    let rows: Vec<(String, String, String)> = audit
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            let kind = e["outcome"]
                .as_str()
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default();
            (
                e["who"].as_str().unwrap_or_default().to_string(),
                e["what"].as_str().unwrap_or_default().to_string(),
                kind.to_string(),
            )
        })
        .collect();
    for want in [
        ("vera", "RolloutService/StartRollout", "PermissionDenied"),
        ("ci-demo", "ReleaseService/PushRelease", "PermissionDenied"),
        ("ci-demo", "RolloutService/StartRollout", "accepted"),
        ("ci-demo", "RolloutEnded", "succeeded"),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(rows.contains(&want), "{want:?} not in the audit log: {rows:#?}");
    }
}

#[test]
fn tokens_are_revoked_one_by_one_at_once_and_expire() {
    let f = Fleet::controller_only(&[]);
    let first = identity(&f, "ci", &["--role", "viewer"]);
    let second = f.fleetctl_json(&["operator", "token", "create", "ci", "--ttl", "never"]);
    let second_secret = second["secret"].as_str().expect("secret").to_string();
    assert_eq!(second["expires_at_ms"], 0, "--ttl never: {second}");

    // A connection opened with the first token, which stays open.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (channel, _) = operator_channel(&f, &rt);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {first}").parse().expect("header");
    let whoami = |channel: tonic::transport::Channel| {
        let bearer = bearer.clone();
        rt.block_on(async move {
            let mut req = tonic::Request::new(WhoAmIRequest {});
            req.metadata_mut().insert("authorization", bearer);
            SessionClient::new(channel).who_am_i(req).await
        })
    };
    assert_eq!(whoami(channel.clone()).expect("before").into_inner().name, "ci");

    // Rotation: revoke the first; the second keeps working.
    let show = f.fleetctl_json(&["operator", "show", "ci"]);
    let tokens = show["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2, "{show}");
    let first_id = first
        .trim_start_matches("fleet_op_")
        .split('.')
        .next()
        .expect("id")
        .to_string();
    f.fleetctl_json(&["operator", "token", "revoke", &first_id]);
    let refused = whoami(channel.clone()).expect_err("revoked, same connection");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    denied(&as_op(&f, &first, &["hosts", "ls"]), "the revoked token", &["revoked"]);
    assert_success(&as_op(&f, &second_secret, &["hosts", "ls"]), "the other token");
    let show = f.fleetctl_json(&["operator", "show", "ci"]);
    let states: Vec<&str> = show["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "revoked").count(), 1, "{show}");

    // Expiry: a token made to last one second is refused after it.
    let short = f.fleetctl_json(&["operator", "token", "create", "ci", "--ttl", "1s"]);
    let short = short["secret"].as_str().expect("secret").to_string();
    std::thread::sleep(Duration::from_millis(1500));
    denied(&as_op(&f, &short, &["hosts", "ls"]), "the expired token", &["expired"]);

    // A token pasted whole to revoke it: revoked by its id, and its secret
    // reaches no audit record.
    let pasted = f.fleetctl_json(&["operator", "token", "create", "ci", "--ttl", "1h"]);
    let pasted = pasted["secret"].as_str().expect("secret").to_string();
    f.fleetctl_json(&["operator", "token", "revoke", &pasted]);
    denied(&as_op(&f, &pasted, &["hosts", "ls"]), "the pasted token", &["revoked"]);
    let audit = String::from_utf8(f.fleetctl(&["audit", "-o", "json"]).stdout).expect("utf-8");
    let pasted_secret = pasted.split('.').nth(1).expect("secret part");
    assert!(!audit.contains(pasted_secret), "a token secret reached the audit log");

    // Removing the identity removes every token it has.
    f.fleetctl_json(&["operator", "rm", "ci", "--yes"]);
    denied(
        &as_op(&f, &second_secret, &["hosts", "ls"]),
        "a removed identity's token",
        &["not valid"],
    );
    // The last admin stays.
    let last = f.fleetctl(&["operator", "rm", "admin", "--yes"]);
    assert_eq!(last.status.code(), Some(1), "{}", stderr(&last));
    assert!(stderr(&last).contains("last admin"), "{}", stderr(&last));

    // No token secret reached the controller's log.
    let log = f.controller.log_text();
    for secret in [&first, &second_secret, &short] {
        let hidden = secret.split('.').nth(1).expect("secret part");
        assert!(!log.contains(hidden), "a token secret is in the controller log");
    }
}

#[test]
fn the_recovery_token_needs_the_ca_key_and_makes_lasting_admins() {
    let f = Fleet::controller_only(&[]);
    let out = Command::new(bin("fleet-controller"))
        .args(["admin-token", "--config"])
        .arg(&f.controller.config)
        .output()
        .expect("admin-token");
    assert!(out.status.success(), "admin-token: {}", stderr(&out));
    let recovery = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert!(recovery.starts_with("fleet_op_recovery-"), "{recovery}");
    let me = serde_json::from_slice::<Value>(&as_op(&f, &recovery, &["whoami", "-o", "json"]).stdout).expect("json");
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("recovery"), Some("admin"))
    );
    // With it, a lasting token for the admin identity.
    let made = as_op(&f, &recovery, &["operator", "token", "create", "admin", "--ttl", "90d"]);
    assert_success(&made, "a new admin token from the recovery token");
    let fresh = String::from_utf8(made.stdout).expect("utf-8").trim().to_string();
    assert_success(&as_op(&f, &fresh, &["operator", "ls"]), "the new admin token");
    // Its MAC is bound to the expiry: a later expiry is not valid.
    let (head, mac) = recovery.rsplit_once('.').expect("dot");
    let forged = format!("{head}0.{mac}");
    denied(&as_op(&f, &forged, &["hosts", "ls"]), "a moved expiry", &["not valid"]);
    // Without the data dir's CA files there is no token (as root, CI cannot
    // show a permission refusal; the message names the file either way).
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("controller.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&f.controller.config).expect("config").replace(
            f.controller.data_dir.to_str().expect("utf-8"),
            dir.path().to_str().expect("utf-8"),
        ),
    )
    .expect("config");
    let out = Command::new(bin("fleet-controller"))
        .args(["admin-token", "--config"])
        .arg(&cfg)
        .output()
        .expect("admin-token");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("ca.pem"), "{}", stderr(&out));
}
