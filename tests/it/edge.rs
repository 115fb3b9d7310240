//! Errors at the edge, as CI sees them: exit codes of fleetctl when the
//! controller goes away in the middle of a call.

use std::time::Duration;

use crate::harness::{wait_until, Fleet};

/// A controller killed while `release push` streams a large artifact: the
/// push exits 5 (the controller cannot be reached), not 1, and says what to do.
#[test]
fn a_push_cut_by_a_controller_crash_exits_unreachable() {
    let mut fleet = Fleet::controller_only(&[]);
    let created = fleet.fleetctl(&["app", "create", "big", "--unit", "fleet-app-big.service", "--no-health"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // A real release first (the controller judges an upload by its first
    // bytes), then zeros up to 512 MiB the controller must receive and hash
    // before it could answer: it is killed long before that.
    let path = fleet.root.path().join("big.tar.gz");
    std::fs::write(&path, crate::releases::release("1.0.0", &[]).gz()).expect("write release");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(512 << 20))
        .expect("grow the file");
    let path_arg = path.to_str().expect("utf-8 path");
    let push = fleet
        .fleetctl_command(&["release", "push", "big", path_arg, "--release", "1.0.0"])
        .spawn()
        .expect("spawn fleetctl release push");
    let artifacts = fleet.controller.data_dir.join("artifacts");
    wait_until(Duration::from_secs(60), "the upload to be under way", || {
        std::fs::read_dir(&artifacts)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
            .then_some(())
    });
    fleet.controller.kill9();
    let out = push.wait_with_output().expect("wait for fleetctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(5),
        "exit 5 when the controller went away: {stderr}"
    );
    assert!(
        stderr.contains("fleetctl whoami") || stderr.contains("reach"),
        "{stderr}"
    );
}
