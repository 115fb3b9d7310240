//! Hosts that pin signing keys.

#![allow(clippy::unwrap_used)]

use super::*;

/// A worker pinning one key, and that key's PKCS#8.
fn pinning(w: &mut World) -> Vec<u8> {
    let pkcs8 = fleet_proto::signing::new_key().unwrap();
    let probe = fleet_proto::signing::sign(&pkcs8, "x", "x", "x", 0).unwrap();
    w.worker.trusted_keys = vec![fleet_proto::signing::PublicKey::parse(&probe.key).unwrap()];
    pkcs8
}

fn signed(mut task: Task, pkcs8: &[u8], app: &str, sequence: u64) -> Task {
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        let rel = d.release.as_mut().unwrap();
        rel.signature = Some(fleet_proto::signing::sign(pkcs8, app, &rel.version, &rel.sha256, sequence).unwrap());
    }
    task
}

#[tokio::test]
async fn a_host_that_pins_keys_refuses_unsigned_and_foreign_releases_before_fetching() {
    let mut w = world();
    w.running("1");
    let key = pinning(&mut w);
    let artifact = release_tarball("2");
    w.fetch.0.lock().unwrap().push_back(Ok(artifact.clone()));
    for (task, says) in [
        (deploy_task("2", &artifact, 0), "not signed"),
        (
            signed(deploy_task("2", &artifact, 0), &key, "other-app", 5),
            "does not verify",
        ),
    ] {
        let reports = w.run(task).await;
        let done = end(&reports);
        assert_eq!(
            (done.state(), done.cause(), done.reverted),
            (TaskState::Failed, FailureCause::Signature, false)
        );
        assert_eq!(trail(&reports), ["signature:failed", "done:failed"]);
        assert!(done.detail.contains(says), "{says}: {}", done.detail);
    }
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert!(!w.app().release("2").exists(), "nothing fetched or unpacked");
    assert_eq!(w.units.restarted(), 0);

    // Signed by the pinned key: deployed, with the signature phase first.
    let reports = w.run(signed(deploy_task("2", &artifact, 0), &key, APP, 5)).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{reports:#?}");
    assert_eq!(trail(&reports)[0], "signature:ok");
    assert_eq!(w.app().current().as_deref(), Some("2"));

    // An older signed release this host never ran: a replay.
    let old = release_tarball("0");
    let reports = w.run(signed(deploy_task("0", &old, 0), &key, APP, 4)).await;
    let done = end(&reports);
    assert_eq!(done.cause(), FailureCause::Signature);
    assert!(done.detail.contains("replay"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("2"));
}
