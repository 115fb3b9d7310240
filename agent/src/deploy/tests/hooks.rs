//! Hooks: run as children, redacted, and as runs of the (fake)
//! `fleet-hook@<app>.service`.

#![allow(clippy::unwrap_used)]

use super::*;

#[tokio::test]
async fn a_rollback_runs_no_hooks() {
    let mut w = world();
    w.with_hook("1", "pre_activate", "#!/bin/sh\nexit 1\n");
    w.running("2");
    w.app().set_previous(Some("1")).unwrap();
    let reports = w.run(rollback_task("")).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", trail(&reports));
    assert!(!trail(&reports).iter().any(|p| p.starts_with("pre_activate")));
    assert_eq!(w.app().current().as_deref(), Some("1"));
}

#[tokio::test]
async fn a_hook_that_prints_the_agents_key_is_redacted() {
    let mut w = world();
    w.running("1");
    w.with_hook("2", "pre_activate", "#!/bin/sh\nprintf -- '-----BEGIN PRIVATE KEY-----\\nMIGHAgEAsecret\\n-----END PRIVATE KEY-----\\n'\necho token fleet_jt_ab12.s3cret\n");
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded);
    let hook = reports
        .iter()
        .find(|p| Phase::PreActivate.is(&p.phase) && p.state() == TaskState::Succeeded)
        .unwrap();
    assert!(hook.detail.contains("[PEM block redacted]"), "{}", hook.detail);
    assert!(hook.detail.contains("fleet_jt_ab12.<redacted>"), "{}", hook.detail);
    for p in &reports {
        assert!(
            !p.detail.contains("MIGHAgEAsecret") && !p.detail.contains("s3cret"),
            "{}",
            p.detail
        );
    }
}

/// A world whose hooks run as the (fake) `fleet-hook@web.service`.
fn with_hook_units(units: FakeUnits) -> World {
    let mut w = world_with(units);
    w.worker.hook_mode = HookMode::Unit;
    w.worker.hook_template_state_dir = w.state.clone();
    w.running("1");
    w
}

#[tokio::test]
async fn a_hook_unit_runs_in_its_release_with_its_environment_and_its_output_is_reported() {
    let mut w = with_hook_units(FakeUnits::default());
    w.with_hook(
        "2",
        "pre_activate",
        "#!/bin/sh\necho \"$FLEET_APP $FLEET_VERSION was $FLEET_PREVIOUS_VERSION in $(pwd)\"\necho warn >&2\n",
    );
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", reports);
    let hook = reports
        .iter()
        .find(|p| Phase::PreActivate.is(&p.phase) && p.state() == TaskState::Succeeded)
        .unwrap();
    let release = w.app().release("2").canonicalize().unwrap();
    for want in [
        "(fleet-hook@web.service, as a dynamic user) exited with status 0",
        &format!("web 2 was 1 in {}", release.display()),
        "warn",
    ] {
        assert!(hook.detail.contains(want), "{want:?} not in {}", hook.detail);
    }
    assert!(w
        .units
        .log
        .lock()
        .unwrap()
        .contains(&"oneshot fleet-hook@web.service".to_string()));
}

#[tokio::test]
async fn a_hook_unit_that_fails_or_outlives_its_timeout_changes_nothing() {
    let mut w = with_hook_units(FakeUnits::default());
    w.with_hook("2", "pre_activate", "#!/bin/sh\necho no migration >&2\nexit 3\n");
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Hook));
    assert!(
        done.detail.contains("exited with status 3") && done.detail.contains("no migration"),
        "{}",
        done.detail
    );
    assert_eq!(w.app().current().as_deref(), Some("1"));

    w.on_disk(
        "3",
        &[
            (
                "fleet.toml",
                "[hooks]\npre_activate = \"hooks/slow.sh\"\ntimeout = \"300ms\"\n",
            ),
            ("hooks/slow.sh", "#!/bin/sh\necho started\nexec sleep 30\n"),
        ],
    );
    let started = std::time::Instant::now();
    let reports = w.run(deploy_task("3", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Hook));
    assert!(
        done.detail.contains("did not finish within 300ms and was stopped") && done.detail.contains("started"),
        "{}",
        done.detail
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(w.app().current().as_deref(), Some("1"));
    assert_eq!(w.units.restarted(), 0);
}

#[tokio::test]
async fn a_run_as_the_hook_unit_does_not_run_as_is_refused_before_anything_runs() {
    let mut w = with_hook_units(FakeUnits::default());
    w.with_hook("2", "pre_activate", "#!/bin/sh\nexit 0\n");
    let mut task = deploy_task("2", b"x", 0);
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        d.spec.as_mut().unwrap().run_as = "web".into();
    }
    let reports = w.run(task.clone()).await;
    let done = end(&reports);
    assert_eq!((done.state(), done.cause()), (TaskState::Failed, FailureCause::Hook));
    assert!(
        done.detail.contains("must run as web")
            && done
                .detail
                .contains("/etc/systemd/system/fleet-hook@web.service.d/run-as.conf"),
        "{}",
        done.detail
    );
    assert!(!w.units.log.lock().unwrap().iter().any(|l| l.starts_with("oneshot")));
    assert_eq!(w.app().current().as_deref(), Some("1"));

    // Once the operator's drop-in names the user, the hook runs as it.
    let mut w = with_hook_units(FakeUnits {
        hook_user: Some(ServiceUser {
            user: "web".into(),
            dynamic: true,
        }),
        ..Default::default()
    });
    w.with_hook("2", "pre_activate", "#!/bin/sh\nexit 0\n");
    let reports = w.run(task).await;
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", reports);
}

#[tokio::test]
async fn hook_units_need_the_state_dir_their_unit_file_reads() {
    let mut w = with_hook_units(FakeUnits::default());
    w.worker.hook_template_state_dir = PathBuf::from("/var/lib/fleet-agent");
    w.with_hook("2", "pre_activate", "#!/bin/sh\nexit 0\n");
    let reports = w.run(deploy_task("2", b"x", 0)).await;
    let done = end(&reports);
    assert_eq!(done.state(), TaskState::Failed);
    assert!(
        done.detail.contains("reads /var/lib/fleet-agent") && done.detail.contains("[hooks] run = \"process\""),
        "{}",
        done.detail
    );
}
