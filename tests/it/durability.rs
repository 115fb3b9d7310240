//! The store as the operator meets it when something is wrong with it: a
//! missing store (an unmounted volume) is refused instead of replaced by an
//! empty one, a locked store names the other controller, a damaged one does
//! not; `/healthz` and `/metrics` say what the flusher sees.

use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{bin, http_get_status, wait_exit, Controller, Fleet};

/// Runs `fleet-controller serve` on `c`'s config and waits for it to exit.
fn serve_exits(c: &Controller) -> Output {
    let mut child = Command::new(bin("fleet-controller"))
        .args(["serve", "--config"])
        .arg(&c.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let status = wait_exit(&mut child, Duration::from_secs(20), "serve to refuse and exit");
    let mut out = child.wait_with_output().expect("output");
    out.status = status;
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_or_empty_store_is_refused_not_recreated() {
    let root = tempfile::tempdir().expect("tmp");
    let c = Controller::init(root.path(), &[]);
    let store = c.data_dir.join("store");
    assert!(store.join("db").is_file(), "init creates the store");

    // The volume is not mounted: the store dir is gone.
    std::fs::rename(&store, c.data_dir.join("store.away")).expect("move the store away");
    let out = serve_exits(&c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&store.display().to_string()), "names the path: {err}");
    assert!(err.contains("mounted"), "names the likely cause: {err}");
    assert!(!err.contains("another fleet-controller"), "{err}");
    assert!(!store.exists(), "serve must not create an empty store in its place");

    // The mount point exists but is empty.
    std::fs::create_dir(&store).expect("empty mount point");
    let out = serve_exits(&c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing or unreadable"), "{err}");
    assert_eq!(
        std::fs::read_dir(&store).expect("ls").count(),
        0,
        "nothing written into it"
    );

    // The volume is back: the controller starts with its hosts.
    std::fs::remove_dir(&store).expect("rmdir");
    std::fs::rename(c.data_dir.join("store.away"), &store).expect("move the store back");
    let mut c = c;
    c.start();
    c.kill9();
}

#[test]
fn a_locked_store_names_the_other_controller_and_a_damaged_one_does_not() {
    let mut fleet = Fleet::controller_only(&[]);
    // Locked: a second controller on the same data dir.
    let out = serve_exits(&fleet.controller);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another fleet-controller"), "{err}");
    fleet.controller.kill9();

    // Damaged: sled's file overwritten, with a pattern and with noise (sled
    // opens the noise as an empty database, so this is the schema check).
    let db = fleet.controller.data_dir.join("store/db");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for garbage in [vec![0xa5u8; 4096], noise] {
        std::fs::write(&db, garbage).expect("damage the store");
        let out = serve_exits(&fleet.controller);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(!err.contains("another fleet-controller"), "the lock is free: {err}");
        assert!(
            err.contains(&db.parent().expect("store").display().to_string()),
            "{err}"
        );
        assert!(err.contains("backup"), "says what to do: {err}");
    }
}

#[test]
fn healthz_and_metrics_show_the_flusher() {
    let fleet = Fleet::controller_only(&[]);
    let (status, body) = http_get_status(fleet.controller.metrics, "/healthz").expect("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    for i in 0..3 {
        fleet.token(&["--description", &format!("t{i}")]);
    }
    let metrics = fleet.controller.metrics_text();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    assert!(value("fleet_store_flush_requests_total ") >= 3, "{metrics}");
    assert!(value("fleet_store_flushes_total ") >= 1, "{metrics}");
    assert_eq!(value("fleet_store_flush_failures_total "), 0, "{metrics}");
    assert_eq!(value("fleet_store_healthy "), 1, "{metrics}");
}
