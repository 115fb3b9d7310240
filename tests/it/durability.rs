//! The store as the operator meets it when something is wrong with it: a
//! missing store (an unmounted volume) is refused instead of replaced by an
//! empty one, a locked store names the other controller, a damaged one does
//! not; `/healthz` and `/metrics` say what the flusher sees.

use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{bin, http_get_status, wait_exit, wait_until, Controller, Fleet};

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

/// A small tmpfs mounted over a controller's `DATA_DIR/store` in a mount
/// namespace of its own, held open by a sleeping process: the controller
/// runs in it (nsenter) and the test reaches its files through
/// `/proc/<holder>/root`. The store's contents are copied in first.
struct SmallDisk {
    holder: std::process::Child,
    store: std::path::PathBuf,
}

impl SmallDisk {
    fn over(store: &std::path::Path, size: &str) -> SmallDisk {
        use std::io::BufRead;
        let stash = store.with_extension("stash");
        let script = format!(
            "set -e; cp -a '{s}' '{stash}'; mount -t tmpfs -o size={size},mode=0700 tmpfs '{s}'; \
             cp -a '{stash}/.' '{s}/'; echo ready; exec sleep 600",
            s = store.display(),
            stash = stash.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) to hold a mount namespace");
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(
            line.trim(),
            "ready",
            "mounting a tmpfs over the store failed (needs root)"
        );
        SmallDisk {
            holder,
            store: store.to_path_buf(),
        }
    }

    /// A path under the store as the namespace sees it, reachable from here.
    fn inside(&self, name: &str) -> std::path::PathBuf {
        let rel = self.store.strip_prefix("/").expect("absolute store path");
        std::path::Path::new(&format!("/proc/{}/root", self.holder.id()))
            .join(rel)
            .join(name)
    }

    /// Starts `serve` in the namespace, with systemd's notify environment.
    fn serve(&self, c: &mut Controller, notify: &std::path::Path, watchdog: Duration) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)
            .expect("log");
        let child = Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .arg(bin("fleet-controller"))
            .args(["serve", "--config"])
            .arg(&c.config)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nsenter + fleet-controller serve");
        c.child = Some(child);
        let metrics = c.metrics;
        wait_until(Duration::from_secs(20), "controller /healthz", || {
            http_get_status(metrics, "/healthz")
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        });
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The notifications received so far (non-blocking).
fn notifications(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn a_full_disk_fails_writes_clearly_turns_healthz_and_the_watchdog_and_a_restart_recovers() {
    let root = tempfile::Builder::new().prefix("fleet-it-").tempdir().expect("tmp");
    let mut c = Controller::init(root.path(), &[]);
    let store = c.data_dir.join("store");
    let disk = SmallDisk::over(&store, "1m");
    let notify_path = root.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_nonblocking(true).expect("nonblocking");
    let fleet = Fleet {
        root,
        controller: {
            disk.serve(&mut c, &notify_path, Duration::from_secs(2));
            c
        },
        agents: Vec::new(),
        agent_controllers: None,
        logs_shown: false,
    };
    wait_until(Duration::from_secs(10), "READY=1 and a watchdog ping", || {
        let got = notifications(&notify);
        (got.iter().any(|m| m == "READY=1") || got.iter().any(|m| m == "WATCHDOG=1")).then_some(())
    });
    wait_until(Duration::from_secs(10), "a watchdog ping after a store probe", || {
        notifications(&notify).iter().any(|m| m == "WATCHDOG=1").then_some(())
    });

    // Fill the disk, then write until the store refuses.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(disk.inside("filler")).expect("filler");
        while filler.write_all(&[0u8; 65536]).is_ok() {}
    }
    // The longest description the edge accepts: each write is as large as it can be.
    let description = "x".repeat(fleet_proto::limits::MAX_DESCRIPTION);
    let mut created = 0;
    let refusal = (0..1000)
        .find_map(|_| {
            let out = fleet
                .fleetctl_within(
                    &["token", "create", "--description", &description],
                    Duration::from_secs(20),
                )
                .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
            if out.status.success() {
                created += 1;
                None
            } else {
                Some(stderr(&out))
            }
        })
        .unwrap_or_else(|| panic!("1000 writes to a full disk succeeded\n{}", fleet.logs()));
    assert!(
        refusal.contains(&store.display().to_string()) && refusal.contains("free space"),
        "the refusal names the store and the fix: {refusal}"
    );
    let (status, body) = wait_until(Duration::from_secs(10), "/healthz to turn 503", || {
        http_get_status(fleet.controller.metrics, "/healthz").filter(|(s, _)| *s == 503)
    });
    assert!(
        body.contains("unhealthy") && body.contains(&store.display().to_string()) && body.contains("free space"),
        "{status}: {body}"
    );
    eprintln!("full disk after {created} writes: fleetctl said: {refusal}/healthz said {status}: {body}");
    // grpc.health.v1 says the same, for load balancers and probes.
    wait_until(Duration::from_secs(5), "grpc.health.v1 to say NOT_SERVING", || {
        (crate::introspection::grpc_health(&fleet)
            == tonic_health::pb::health_check_response::ServingStatus::NotServing)
            .then_some(())
    });
    // Reads still work; the watchdog is no longer pinged.
    let out = fleet
        .fleetctl_within(&["whoami"], Duration::from_secs(10))
        .expect("whoami");
    assert!(out.status.success(), "{}", stderr(&out));
    notifications(&notify);
    std::thread::sleep(Duration::from_secs(3));
    let after = notifications(&notify);
    assert!(
        !after.iter().any(|m| m == "WATCHDOG=1"),
        "no watchdog ping while the store refuses writes: {after:?}"
    );

    // Space is freed and the controller restarted (systemd's watchdog would):
    // healthy, writable, and what was written before is there.
    std::fs::remove_file(disk.inside("filler")).expect("free space");
    let mut fleet = fleet;
    fleet.controller.kill9();
    disk.serve(&mut fleet.controller, &notify_path, Duration::from_secs(2));
    let (status, body) = http_get_status(fleet.controller.metrics, "/healthz").expect("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let out = fleet
        .fleetctl_within(&["token", "create", "--description", "after"], Duration::from_secs(20))
        .expect("token create");
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens = fleet.fleetctl_json(&["token", "ls", "--all"]);
    assert!(
        tokens.as_array().expect("tokens").len() > created,
        "the {created} tokens created before the disk filled are kept: {tokens}"
    );
    fleet.controller.kill9();
}

/// The shipped unit's supervision settings (`systemd/fleet-controller.service`),
/// with the test's own `WatchdogSec`, `RestartSec`, command and log: the
/// hardening and `User=` need a system manager, the rest is what is tested.
fn controller_unit(c: &Controller, watchdog: &str) -> String {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/fleet-controller.service");
    let text = std::fs::read_to_string(&shipped).expect("systemd/fleet-controller.service");
    let mut unit =
        String::from("[Unit]\nDescription=fleet-controller under test\nStartLimitIntervalSec=0\n\n[Service]\n");
    for key in [
        "Type=",
        "NotifyAccess=",
        "Restart=",
        "RestartPreventExitStatus=",
        "LimitNOFILE=",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("the shipped unit has no {key}"));
        unit.push_str(line);
        unit.push('\n');
    }
    assert!(
        text.lines().any(|l| l.starts_with("WatchdogSec=")),
        "the shipped unit has a watchdog"
    );
    unit.push_str(&format!(
        "WatchdogSec={watchdog}\nRestartSec=500ms\nExecStart={} serve --config {}\nEnvironment=RUST_LOG=info\n\
         StandardError=append:{}\n",
        bin("fleet-controller").display(),
        c.config.display(),
        c.log.display()
    ));
    unit
}

#[test]
fn under_systemd_a_store_refusing_writes_gets_the_controller_restarted_and_a_missing_store_stops_it() {
    let root = tempfile::Builder::new().prefix("fleet-it-").tempdir().expect("tmp");
    let c = Controller::init(root.path(), &[]);
    let sandbox = crate::sandbox::Sandbox::start(&root.path().join("systemd"));
    // The store on a 1 MiB disk that only the manager's namespace sees.
    let store = c.data_dir.join("store");
    let saved = c.data_dir.join("store.init");
    std::fs::rename(&store, &saved).expect("move the store aside");
    sandbox.mount_tmpfs(&store, "1m");
    let inside = |p: &std::path::Path| {
        std::path::Path::new(&format!("/proc/{}/root", sandbox.pid())).join(p.strip_prefix("/").expect("absolute"))
    };
    let ok = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(inside(&store))
        .status()
        .expect("cp")
        .success();
    assert!(ok, "copying the store onto the small disk");
    const UNIT: &str = "fleet-controller.service";
    sandbox.install_unit(UNIT, &controller_unit(&c, "2s"));
    let prop = |p: &str| sandbox.unit_property(UNIT, "Service", p);
    let active = || sandbox.unit_property(UNIT, "Unit", "ActiveState");
    let fleet = Fleet {
        root,
        controller: c,
        agents: Vec::new(),
        agent_controllers: None,
        logs_shown: false,
    };
    sandbox.busctl(&[
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartUnit",
        "ss",
        UNIT,
        "replace",
    ]);
    // Type=notify: active only once the controller said READY=1.
    wait_until(Duration::from_secs(20), "the unit to be active (READY=1)", || {
        (active() == "active").then_some(())
    });
    let pid = prop("MainPID");
    // Three watchdog periods: the probe keeps it pinged.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        (active(), prop("MainPID"), prop("NRestarts")),
        ("active".to_string(), pid.clone(), "0".to_string()),
        "a healthy controller is not restarted\n{}",
        fleet.logs()
    );

    // The disk fills: writes are refused, the pings stop, systemd restarts it.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(inside(&store.join("filler"))).expect("filler");
        while filler.write_all(&[0u8; 65536]).is_ok() {}
    }
    // The longest description the edge accepts: each write is as large as it can be.
    let description = "x".repeat(fleet_proto::limits::MAX_DESCRIPTION);
    let refused = (0..1000).any(|_| {
        fleet
            .fleetctl_within(
                &["token", "create", "--description", &description],
                Duration::from_secs(20),
            )
            .map(|out| !out.status.success())
            .unwrap_or(false)
    });
    assert!(refused, "a write to the full disk was refused\n{}", fleet.logs());
    wait_until(
        Duration::from_secs(20),
        "systemd to restart the controller (watchdog)",
        || (prop("NRestarts") != "0").then_some(()),
    );
    assert!(
        fleet.controller.log_text().contains("not pinging the watchdog"),
        "{}",
        fleet.logs()
    );
    // Restarted on the full disk, the controller cannot open its store (sled
    // tries to write a snapshot and leaves an unfinished one): it exits, and
    // systemd tries again. This must not damage the store.
    wait_until(
        Duration::from_secs(30),
        "a restart on the full disk to fail opening the store",
        || {
            let log = fleet.controller.log_text();
            log.contains("cannot open the store").then_some(())
        },
    );

    // Space is freed: the restarted controller is healthy and takes writes.
    std::fs::remove_file(inside(&store.join("filler"))).expect("free space");
    wait_until(
        Duration::from_secs(30),
        "a healthy, active controller after the restart",
        || {
            let healthy = http_get_status(fleet.controller.metrics, "/healthz").is_some_and(|(s, _)| s == 200);
            (healthy && active() == "active").then_some(())
        },
    );
    let out = fleet
        .fleetctl_within(&["token", "create", "--description", "after"], Duration::from_secs(20))
        .expect("token create");
    assert!(out.status.success(), "{}\n{}", stderr(&out), fleet.logs());

    // The store disappears (an unmounted volume): exit 2, and no restart.
    let ok = Command::new("nsenter")
        .args(["-t", &sandbox.pid().to_string(), "-m", "--", "umount", "-l"])
        .arg(&store)
        .status()
        .expect("nsenter umount")
        .success();
    assert!(ok, "unmounting the small disk");
    std::fs::create_dir_all(inside(&store)).expect("empty mount point");
    let restarts = prop("NRestarts");
    let killed = Command::new("kill")
        .args(["-KILL", &prop("MainPID")])
        .status()
        .expect("kill")
        .success();
    assert!(killed, "kill -9 the controller");
    wait_until(Duration::from_secs(20), "the unit to fail on the missing store", || {
        (active() == "failed" && prop("ExecMainStatus") == "2").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let restarts_after: u32 = prop("NRestarts").parse().expect("NRestarts");
    let restarts: u32 = restarts.parse().expect("NRestarts");
    assert_eq!(
        restarts_after,
        restarts + 1,
        "one restart after the kill, none after exit 2\n{}",
        fleet.logs()
    );
    assert_eq!(active(), "failed");
    assert!(fleet.controller.log_text().contains("mounted"), "{}", fleet.logs());
    drop(sandbox);
}
