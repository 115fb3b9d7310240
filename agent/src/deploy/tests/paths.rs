//! A deploy and a rollback through each phase: success, each phase failing,
//! the revert and its failure, recovery at start, the report order.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::inventory::Taken;

#[tokio::test]
async fn a_deploy_goes_through_every_phase_and_swaps() {
    let mut w = world();
    w.running("1");
    let artifact = release_tarball("2");
    w.fetch.0.lock().unwrap().push_back(Ok(artifact.clone()));
    let reports = w.run(deploy_task("2", &artifact, 0)).await;
    assert_eq!(
        trail(&reports),
        [
            "fetch:ok",
            "verify:ok",
            "unpack:ok",
            "swap:ok",
            "restart:ok",
            "settle:ok",
            "health:ok",
            "done:ok"
        ]
    );
    assert_eq!(end(&reports).state(), TaskState::Succeeded);
    assert_eq!(w.app().current().as_deref(), Some("2"));
    assert_eq!(w.app().previous().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 1);
    assert!(
        w.app().intent().is_none(),
        "the intent record must be gone after success"
    );
    assert!(
        !crate::layout::downloads(&w.state)
            .join(format!("{}.part", sha256(&artifact)))
            .exists(),
        "the download must be removed once unpacked"
    );
}

#[tokio::test]
async fn a_failed_download_changes_nothing() {
    let mut w = world();
    w.running("1");
    w.fetch
        .0
        .lock()
        .unwrap()
        .push_back(Err("NotFound: no such artifact".into()));
    let reports = w.run(deploy_task("2", b"whatever", 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause(), done.reverted),
        (TaskState::Failed, FailureCause::Download, false)
    );
    assert_eq!(trail(&reports), ["fetch:failed", "done:failed"]);
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 0);
}

#[tokio::test]
async fn bytes_that_never_match_the_digest_are_refused_at_verify() {
    let mut w = world();
    w.running("1");
    let artifact = release_tarball("2");
    let task = deploy_task("2", &artifact, 0);
    // The controller's copy is damaged: every download has other bytes.
    w.fetch.0.lock().unwrap().push_back(Ok(b"damaged".to_vec()));
    let reports = w.run(task).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause()),
        (TaskState::Failed, FailureCause::Download)
    );
    assert!(done.detail.starts_with("verify failed:"), "{}", done.detail);
    assert!(done.detail.contains("3 fresh downloads"), "{}", done.detail);
    assert!(!w.app().release("2").exists(), "nothing may be unpacked");
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn a_hostile_archive_is_refused_at_unpack() {
    let mut w = world();
    w.running("1");
    let hostile = Tar::new().file("../escape", 0o644, b"x").gz();
    w.fetch.0.lock().unwrap().push_back(Ok(hostile.clone()));
    let reports = w.run(deploy_task("2", &hostile, 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause()),
        (TaskState::Failed, FailureCause::ArchiveRefused)
    );
    assert_eq!(
        trail(&reports),
        ["fetch:ok", "verify:ok", "unpack:failed", "done:failed"]
    );
    assert!(!w.app().release("2").exists());
    assert!(!w.state.join("apps/escape").exists() && !w.state.join("apps/web/escape").exists());
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn a_failing_pre_activate_hook_changes_nothing() {
    let mut w = world();
    w.running("1");
    w.with_hook("2", "pre_activate", "#!/bin/sh\necho migration refused >&2\nexit 3\n");
    let reports = w.run(deploy_task("2", b"on disk already", 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause(), done.reverted),
        (TaskState::Failed, FailureCause::Hook, false)
    );
    assert_eq!(trail(&reports), ["fetch:ok", "pre_activate:failed", "done:failed"]);
    assert!(done.detail.contains("migration refused"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 0, "nothing may be restarted before the swap");
}

#[tokio::test]
async fn a_failed_restart_reverts_with_the_journal_as_evidence() {
    let mut w = upgrading();
    w.units.restarts.lock().unwrap().push_back(Ok("failed".into()));
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!(
        (done.state(), done.cause(), done.reverted),
        (TaskState::Failed, FailureCause::Unit, true)
    );
    assert_eq!(
        trail(&reports),
        ["fetch:ok", "swap:ok", "restart:failed", "revert:ok", "done:failed"]
    );
    assert!(done.detail.contains("ended 'failed'"), "{}", done.detail);
    assert!(done
        .detail
        .contains("--- journal of fleet-app-web.service ---\nDec 01 web[42]: listening"));
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 2, "the new release, then the previous one");
    assert!(w.app().intent().is_none());
}

#[tokio::test]
async fn a_restart_refused_by_polkit_names_the_rule() {
    let mut w = upgrading();
    w.units.restarts.lock().unwrap().push_back(Err(SystemdError::Denied {
        what: "restart",
        unit: UNIT.into(),
    }));
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert!(done.detail.contains("50-fleet-agent.rules"), "{}", done.detail);
    assert!(done.reverted);
}

#[tokio::test]
async fn settle_fails_when_the_unit_restarts_by_itself() {
    let mut w = upgrading();
    w.units
        .states
        .lock()
        .unwrap()
        .extend([Ok(unit("active", 0)), Ok(unit("active", 0)), Ok(unit("active", 1))]);
    let reports = w.run(deploy_task("2", b"x", 30)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Unit, true));
    assert!(done.detail.contains("NRestarts 0→1"), "{}", done.detail);
    assert!(trail(&reports).contains(&"settle:failed".to_string()));
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn settle_fails_when_the_unit_is_not_active() {
    let mut w = upgrading();
    // The reachability check, then settle's first read.
    w.units
        .states
        .lock()
        .unwrap()
        .extend([Ok(unit("active", 0)), Ok(unit("failed", 0))]);
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Unit, true));
    assert!(done.detail.contains("ActiveState=failed"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn an_unhealthy_release_is_reverted() {
    let mut w = upgrading();
    w.health.0.lock().unwrap().push_back(false);
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Health, true));
    assert!(done.detail.contains("503: not ready"), "{}", done.detail);
    assert!(done.detail.contains("reverted to 1"), "{}", done.detail);
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert!(
        w.app().health().unwrap().ok,
        "the last health recorded is the reverted release's"
    );
}

#[tokio::test]
async fn hooks_failing_after_the_swap_are_reverted() {
    for hook in ["post_activate", "validate"] {
        let mut w = world();
        w.running("1");
        w.with_hook(
            "2",
            hook,
            "#!/bin/sh\necho \"$FLEET_VERSION was $FLEET_PREVIOUS_VERSION\"\nexit 1\n",
        );
        let reports = w.run(deploy_task("2", b"x", 0)).await;
        let done = end(&reports);
        assert_eq!((done.cause(), done.reverted), (FailureCause::Hook, true), "{hook}");
        assert!(trail(&reports).contains(&format!("{hook}:failed")), "{hook}");
        assert!(done.detail.contains("2 was 1"), "{hook}: {}", done.detail);
        assert_eq!(w.app().current().as_deref(), Some("1"), "{hook}");
    }
}

#[tokio::test]
async fn a_failed_revert_is_reported_as_not_reverted() {
    let mut w = upgrading();
    w.units
        .restarts
        .lock()
        .unwrap()
        .extend([Ok("failed".to_string()), Ok("failed".to_string())]);
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.reverted), (TaskState::Failed, false));
    assert!(trail(&reports).contains(&"revert:failed".to_string()));
    assert!(
        done.detail
            .contains("--- revert ---\nswapped back to 1 but its restart job ended 'failed'"),
        "{}",
        done.detail
    );
}

#[tokio::test]
async fn a_first_release_that_fails_has_nothing_to_go_back_to() {
    let mut w = world();
    w.on_disk("1", &[]);
    w.health.0.lock().unwrap().push_back(false);
    let reports = w.run(deploy_task("1", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.reverted), (TaskState::Failed, false));
    assert!(
        done.detail.contains("no earlier release on this host"),
        "{}",
        done.detail
    );
}

#[tokio::test]
async fn an_unreachable_systemd_stops_the_deploy_before_the_swap() {
    let mut w = upgrading();
    w.units.states.lock().unwrap().push_back(Err(SystemdError::Connect {
        bus: "system",
        detail: "no bus".into(),
    }));
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.cause(), done.reverted), (FailureCause::Agent, false));
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert!(w.app().intent().is_none());
}

#[tokio::test]
async fn an_agent_killed_after_the_swap_goes_back_at_start() {
    let w = world();
    w.running("1");
    w.on_disk("2", &[]);
    w.app()
        .write_intent(&Intent {
            from: Some("1".into()),
            to: "2".into(),
            unit: UNIT.into(),
        })
        .unwrap();
    w.app().swap("2").unwrap();
    w.worker.recover().await;
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.log.lock().unwrap().as_slice(), [format!("restart {UNIT}")]);
    assert!(w.app().intent().is_none());
}

#[tokio::test]
async fn a_rollback_without_a_previous_release_is_refused() {
    let mut w = world();
    w.running("1");
    let reports = w.run(rollback_task("")).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Invalid));
    assert!(
        done.detail.contains("has no previous release on this host"),
        "{}",
        done.detail
    );
    assert_eq!(w.units.restarted(), 0);
}

#[tokio::test]
async fn a_task_sent_again_runs_once_and_its_end_is_answered_again() {
    let mut w = upgrading();
    let task = deploy_task("2", b"x", 0);
    assert_eq!(w.worker.host.accept(&task.task_id), Taken::New);
    // Sent again while it is queued or running (a controller took over).
    assert_eq!(w.worker.host.accept(&task.task_id), Taken::Running);
    let reports = w.run(task.clone()).await;
    let first = end(&reports).clone();
    assert_eq!(first.state(), TaskState::Succeeded, "{first:?}");
    // Sent again after it ended: its end, not a second run.
    assert_eq!(w.worker.host.accept(&task.task_id), Taken::Ended(first));
    assert_eq!(w.units.restarted(), 1, "the unit restarted once");
    assert!(w.worker.host.inventory().await.running_tasks.is_empty());
    // A task that was never queued (the queue was full) runs when sent again.
    assert_eq!(w.worker.host.accept("t-other"), Taken::New);
    w.worker.host.forget("t-other");
    assert_eq!(w.worker.host.accept("t-other"), Taken::New);
}

#[tokio::test]
async fn the_inventory_is_sent_before_the_task_ends() {
    let mut w = upgrading();
    w.worker.handle(deploy_task("2", b"x", 0)).await;
    let mut order = Vec::new();
    while let Ok(m) = w.reports.try_recv() {
        match m.body {
            Some(Out::Inventory(inv)) => order.push(format!("inventory current={}", inv.apps[0].current)),
            Some(Out::TaskProgress(p)) if Phase::Done.is(&p.phase) => order.push("done".into()),
            _ => {}
        }
    }
    assert_eq!(order, ["inventory current=2", "done"]);
}
