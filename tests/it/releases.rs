//! Releases reach hosts: real controller, real agent, real `systemd --user`
//! manager (see `sandbox`), and the sample app serving its version over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fleet_agent::testkit::{attacks, Tar};
use serde_json::Value;

use crate::harness::{bin, free_addr, http_get, wait_until, Fleet};
use crate::sandbox::Sandbox;

pub(crate) const APP: &str = "demo";
const UNIT: &str = "fleet-app-demo.service";

/// One host with a systemd sandbox and the demo app defined.
pub(crate) struct Host {
    pub(crate) fleet: Fleet,
    sandbox: Sandbox,
    port: u16,
    host_id: String,
    /// Where the test sees the agent's files: through /proc/PID/root when
    /// they live on a mount inside the sandbox's namespace.
    view: PathBuf,
}

impl Host {
    /// `agent_extra` is appended to agent.toml (e.g. a `[releases]` table).
    pub(crate) fn start(agent_extra: &str) -> Host {
        Host::start_with(agent_extra, None)
    }

    /// Like `start`, with the agent's state dir on a tmpfs of `state_size`
    /// (in a private mount namespace): a small disk that can fill up.
    fn start_with(agent_extra: &str, state_size: Option<&str>) -> Host {
        let mut fleet = Fleet::controller_only(&[]);
        let sandbox = Sandbox::start(&fleet.root.path().join("systemd"));
        // Two uses: the agent may be restarted with more config (below)
        // before it stored the identity of its first enrollment.
        let token = fleet.token(&["--label", "role=web", "--uses", "2"]);
        let i = fleet.add_agent_with("app-1", &token, &[], Some(&sandbox), &[]);
        if !agent_extra.is_empty() || state_size.is_some() {
            let token = fleet_token(&fleet);
            let agent = &mut fleet.agents[i];
            agent.kill9();
            let mut text = std::fs::read_to_string(&agent.config).expect("agent.toml");
            text.push_str(agent_extra);
            if let Some(size) = state_size {
                // A fresh, small state dir (the agent enrolls again on it),
                // seen alike by the agent and by the units systemd runs.
                let state = agent.dir.join("state");
                // It may not have written anything yet.
                let _ = std::fs::remove_dir_all(&state);
                sandbox.mount_tmpfs(&state, size);
                agent.mount_namespace_of = Some(sandbox.pid());
                text = text
                    .lines()
                    .map(|l| {
                        if l.starts_with("join_token") {
                            format!("join_token = \"{token}\"")
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n";
            }
            std::fs::write(&agent.config, text).expect("agent.toml");
            agent.start();
        }
        let hosts = wait_until(Duration::from_secs(30), "the agent connected", || {
            let hosts = fleet.hosts();
            hosts
                .iter()
                .find(|h| h["status"] == "connected")
                .map(|h| h["id"].as_str().unwrap_or_default().to_string())
        });
        let host_id = hosts;
        let port = free_addr().port();
        let current = fleet.agents[0].dir.join("state/apps").join(APP).join("current");
        sandbox.install_sample_app(UNIT, &current, port);
        let created = fleet.fleetctl(&[
            "app",
            "create",
            APP,
            "--unit",
            UNIT,
            "--health-http",
            &format!("http://127.0.0.1:{port}/health"),
            "--health-timeout",
            "3s",
            "--settle",
            "1s",
            "--keep",
            "3",
            "--selector",
            "role=web",
        ]);
        assert_success(&created, "app create");
        let view = match state_size {
            Some(_) => Path::new(&format!("/proc/{}/root", sandbox.pid()))
                .join(fleet.agents[0].dir.strip_prefix("/").expect("absolute agent dir")),
            None => fleet.agents[0].dir.clone(),
        };
        Host {
            fleet,
            sandbox,
            port,
            host_id,
            view,
        }
    }

    pub(crate) fn app_dir(&self) -> PathBuf {
        self.view.join("state/apps").join(APP)
    }

    /// Writes `bytes` as a release file and pushes it as `version`.
    pub(crate) fn push(&self, version: &str, name: &str, bytes: &[u8]) -> Output {
        let path = self.fleet.root.path().join(name);
        std::fs::write(&path, bytes).expect("write release");
        self.fleet.fleetctl(&[
            "release",
            "push",
            APP,
            path.to_str().expect("utf-8"),
            "--release",
            version,
        ])
    }

    pub(crate) fn deploy(&self, version: &str) -> Output {
        self.fleet.fleetctl(&[
            "deploy",
            APP,
            "--release",
            version,
            "--host",
            &self.host_id,
            "--output",
            "json",
        ])
    }

    pub(crate) fn version_served(&self) -> Option<String> {
        http_get(([127, 0, 0, 1], self.port).into(), "/version").map(|b| b.trim().to_string())
    }

    fn main_pid(&self) -> String {
        self.sandbox.unit_property(UNIT, "Service", "MainPID")
    }

    fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.app_dir().join("current")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    fn fetches(&self) -> u64 {
        self.fleet
            .controller
            .metrics_text()
            .lines()
            .filter(|l| l.starts_with("fleet_rpc_requests_total") && l.contains("AgentService/FetchArtifact"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn fleet_token(fleet: &Fleet) -> String {
    fleet.token(&["--label", "role=web"])
}

/// A release of the sample app.
pub fn release(version: &str, extra: &[(&str, &str, u32)]) -> Tar {
    let mut tar = Tar::new().file("VERSION", 0o644, format!("{version}\n").as_bytes());
    for (name, body, mode) in extra {
        tar = tar.file(name, *mode, body.as_bytes());
    }
    tar
}

fn phases(v: &Value) -> Vec<String> {
    v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["phase"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn deploy_health_revert_hooks_rollback_and_inventory() {
    let host = Host::start("");
    let f = &host.fleet;

    // Push: gzip and zstd; the same bytes again are a no-op; other bytes under
    // the same version are refused.
    let v1 = release("1.0.0", &[]).gz();
    assert_success(&host.push("1.0.0", "v1.tar.gz", &v1), "push v1");
    assert_success(&host.push("1.0.0", "v1-again.tar.gz", &v1), "push v1 again");
    let other = host.push("1.0.0", "v1-other.tar.gz", &release("1.0.0-other", &[]).gz());
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("immutable"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let v2 = release(
        "2.0.0",
        &[
            (
                "fleet.toml",
                "[hooks]\npre_activate = \"hooks/pre.sh\"\npost_activate = \"hooks/post.sh\"\n",
                0o644,
            ),
            (
                "hooks/pre.sh",
                "#!/bin/sh\necho \"$FLEET_PREVIOUS_VERSION\" > saw-previous\necho pre ok\n",
                0o755,
            ),
            ("hooks/post.sh", "#!/bin/sh\necho post ok\n", 0o755),
        ],
    )
    .zst();
    assert_success(&host.push("2.0.0", "v2.tar.zst", &v2), "push v2");
    let v3 = release("3.0.0", &[("HEALTH", "fail\n", 0o644)]).gz();
    assert_success(&host.push("3.0.0", "v3.tar.gz", &v3), "push v3");
    let v4 = release(
        "4.0.0",
        &[
            ("fleet.toml", "[hooks]\npre_activate = \"migrate.sh\"\n", 0o644),
            (
                "migrate.sh",
                "#!/bin/sh\necho 'migration refused: schema 12 expected' >&2\nexit 4\n",
                0o755,
            ),
        ],
    )
    .gz();
    assert_success(&host.push("4.0.0", "v4.tar.gz", &v4), "push v4");
    // The same bytes under another version are stored once.
    let artifacts = f.controller.data_dir.join("artifacts");
    let stored = entries(&artifacts, "").len();
    assert_success(
        &host.push("1.0.0-copy", "v1-copy.tar.gz", &v1),
        "push v1 as another version",
    );
    assert_eq!(
        entries(&artifacts, "").len(),
        stored,
        "content-addressed: no second copy"
    );
    let releases = f.fleetctl_json(&["release", "ls", APP]);
    assert_eq!(releases.as_array().expect("array").len(), 5, "{releases}");
    let shown = f.fleetctl_json(&["release", "show", APP, "2.0.0"]);
    assert_eq!(shown["format"], "tar.zst", "{shown}");

    // app update changes only what it is given.
    let updated = f.fleetctl_json(&["app", "update", APP, "--settle", "2s"]);
    assert_eq!(updated["settle_ms"], 2000, "{updated}");
    assert_eq!(updated["unit"], UNIT, "{updated}");
    assert_eq!(updated["keep"], 3, "{updated}");

    // v1, then v2: seen through HTTP.
    let out = host.deploy("1.0.0");
    assert_success(&out, "deploy v1");
    assert_eq!(host.version_served().as_deref(), Some("1.0.0"));
    let out = host.deploy("2.0.0");
    assert_success(&out, "deploy v2");
    let v = json(&out);
    assert_eq!(v["current"], "2.0.0");
    for p in [
        "fetch",
        "verify",
        "unpack",
        "pre_activate",
        "swap",
        "restart",
        "settle",
        "post_activate",
        "health",
    ] {
        assert!(phases(&v).iter().any(|x| x == p), "phase {p} missing in {v}");
    }
    assert!(
        v["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .all(|p| p["duration_ms"].is_u64()),
        "every phase reports its duration: {v}"
    );
    assert_eq!(host.version_served().as_deref(), Some("2.0.0"));
    let saw = std::fs::read_to_string(host.app_dir().join("releases/2.0.0/saw-previous")).expect("hook ran");
    assert_eq!(saw.trim(), "1.0.0", "pre_activate sees the previous version");

    // v3 fails its health check: reverted to v2 by the agent itself.
    let out = host.deploy("3.0.0");
    assert!(!out.status.success(), "a failing health check must fail the deploy");
    let v = json(&out);
    assert_eq!(v["cause"], "health check failed", "{v}");
    assert_eq!(v["reverted"], true, "{v}");
    assert_eq!(v["current"], "2.0.0", "{v}");
    let detail = v["detail"].as_str().expect("detail");
    assert!(
        detail.contains("503") && detail.contains("HEALTH says fail"),
        "the report says why: {detail}"
    );
    assert!(detail.contains("reverted to 2.0.0"), "{detail}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("health check failed"));
    assert_eq!(host.version_served().as_deref(), Some("2.0.0"));
    assert_eq!(host.current().as_deref(), Some("2.0.0"));

    // A failing pre_activate hook leaves v2 untouched: same process, same link.
    let pid = host.main_pid();
    let out = host.deploy("4.0.0");
    assert!(!out.status.success());
    let v = json(&out);
    assert_eq!(v["cause"], "hook failed", "{v}");
    assert_eq!(v["reverted"], false, "nothing to revert: {v}");
    let detail = v["detail"].as_str().expect("detail");
    assert!(
        detail.contains("pre_activate") && detail.contains("exit status: 4") && detail.contains("schema 12 expected"),
        "{detail}"
    );
    assert!(!phases(&v).iter().any(|p| p == "swap"), "{v}");
    assert_eq!(host.main_pid(), pid, "the unit was not restarted");
    assert_eq!(host.current().as_deref(), Some("2.0.0"));
    assert_eq!(host.version_served().as_deref(), Some("2.0.0"));

    // Rollback: back to the previous release on disk, without a download.
    let fetches = host.fetches();
    assert!(fetches >= 4, "four releases were downloaded ({fetches})");
    let out = f.fleetctl(&["rollback", APP, "--host", &host.host_id, "--output", "json"]);
    assert_success(&out, "rollback");
    let v = json(&out);
    assert_eq!(v["current"], "1.0.0", "{v}");
    assert!(!phases(&v).iter().any(|p| p == "fetch" || p == "unpack"), "{v}");
    assert_eq!(host.fetches(), fetches, "rollback must not download");
    assert_eq!(host.version_served().as_deref(), Some("1.0.0"));

    // Inventory, in `app show` and `hosts show`; keep 3 pruned the oldest
    // release that is neither current nor previous.
    let shown = wait_until(Duration::from_secs(10), "inventory after rollback", || {
        let v = f.fleetctl_json(&["app", "show", APP]);
        (v["hosts"][0]["current"] == "1.0.0").then_some(v)
    });
    let h = &shown["hosts"][0];
    assert_eq!(h["host_id"], host.host_id.as_str());
    assert_eq!(h["previous"], "2.0.0", "{h}");
    assert_eq!(h["unit"]["active_state"], "active", "{h}");
    assert_eq!(h["unit"]["sub_state"], "running", "{h}");
    assert!(h["unit"]["main_pid"].as_u64().unwrap_or(0) > 0, "{h}");
    assert_eq!(h["last_health"]["ok"], true, "{h}");
    let on_disk: Vec<&str> = h["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(on_disk.len(), 3, "keep 3: {on_disk:?}");
    assert!(on_disk.contains(&"1.0.0") && on_disk.contains(&"2.0.0"), "{on_disk:?}");
    let hs = f.fleetctl_json(&["hosts", "show", &host.host_id]);
    assert_eq!(hs["inventory"][0]["app"], APP);
    assert_eq!(hs["inventory"][0]["current"], "1.0.0");
    let table = f.fleetctl(&["app", "show", APP]);
    assert_success(&table, "app show");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("active/running") && text.contains("1.0.0"), "{text}");

    // The table output follows the deploy phase by phase; a release still
    // on disk is not downloaded again.
    let out = f.fleetctl(&["deploy", APP, "--release", "2.0.0", "--host", &host.host_id]);
    assert_success(&out, "deploy v2 again");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "fetch",
        "already on disk",
        "swap",
        "restart",
        "settle",
        "health",
        "done in",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    assert_eq!(host.fetches(), fetches, "no download for a release on disk");
    assert_eq!(host.version_served().as_deref(), Some("2.0.0"));
}

#[test]
fn hostile_archives_and_bad_downloads_are_refused_and_current_stays() {
    let host = Host::start("[releases]\nmax_unpacked_size = \"1MiB\"\n");
    assert_success(&host.push("1.0.0", "v1.tar.gz", &release("1.0.0", &[]).gz()), "push v1");
    assert_success(&host.deploy("1.0.0"), "deploy v1");
    let pid = host.main_pid();
    let _ = std::fs::remove_file("/tmp/fleet-evil");

    for (i, (name, bytes)) in attacks(4 << 20).into_iter().enumerate() {
        let version = format!("bad-{i}");
        let pushed = host.push(&version, &format!("bad-{i}.tar.gz"), &bytes);
        if name == "not-an-archive" {
            // The controller refuses it at push (its first bytes decompress
            // to no tar header); the unpacker's own refusal is unit-tested.
            assert!(!pushed.status.success(), "{name}: pushed");
            let err = String::from_utf8_lossy(&pushed.stderr);
            assert!(err.contains("is not a tar.gz archive"), "{name}: {err}");
            continue;
        }
        assert_success(&pushed, name);
        let out = host.deploy(&version);
        assert!(!out.status.success(), "{name}: the deploy must fail");
        let v = json(&out);
        assert_eq!(v["cause"], "archive refused", "{name}: {v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("unpack failed") && detail.contains("current release stays"),
            "{name}: {detail}"
        );
        assert_eq!(host.current().as_deref(), Some("1.0.0"), "{name}");
        assert!(
            !host.app_dir().join("releases").join(&version).exists(),
            "{name}: nothing unpacked stays"
        );
    }
    assert!(
        !Path::new("/tmp/fleet-evil").exists(),
        "an archive wrote outside its release"
    );
    let leftovers: Vec<_> = std::fs::read_dir(host.app_dir())
        .expect("app dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    // A digest mismatch: the artifact changed on the controller's disk after
    // the push. Refused before anything is unpacked.
    let good = release("2.0.0", &[]).gz();
    let pushed = host.push("2.0.0", "v2.tar.gz", &good);
    assert_success(&pushed, "push v2");
    let sha = host.fleet.fleetctl_json(&["release", "show", APP, "2.0.0"])["sha256"]
        .as_str()
        .expect("sha256")
        .to_string();
    let stored = host.fleet.controller.data_dir.join("artifacts").join(&sha);
    let mut bytes = std::fs::read(&stored).unwrap_or_else(|e| panic!("{}: {e}", stored.display()));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes).expect("corrupt artifact");
    let out = host.deploy("2.0.0");
    assert!(!out.status.success());
    let v = json(&out);
    assert_eq!(v["cause"], "download failed", "{v}");
    // The controller notices before sending anything (see `artifact_store`).
    let detail = v["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&sha) && detail.contains("damaged"), "{v}");
    assert!(!host.app_dir().join("releases/2.0.0").exists());

    // Through all of it the app kept running, untouched.
    assert_eq!(host.main_pid(), pid);
    assert_eq!(host.version_served().as_deref(), Some("1.0.0"));
}

/// Starts `fleetctl deploy` without waiting for it.
fn deploy_in_background(host: &Host, version: &str) -> std::process::Child {
    Command::new(bin("fleetctl"))
        .args([
            "deploy",
            APP,
            "--release",
            version,
            "--host",
            &host.host_id,
            "--output",
            "json",
        ])
        .env("FLEET_CONFIG", &host.fleet.controller.fleetctl_config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fleetctl")
}

fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkill_during_unpack_and_after_the_swap_recovers_on_restart() {
    let mut host = Host::start("");
    assert_success(&host.push("1.0.0", "v1.tar.gz", &release("1.0.0", &[]).gz()), "push v1");
    assert_success(&host.deploy("1.0.0"), "deploy v1");

    // A release big enough (many fsynced files) that unpacking takes a while.
    let mut big = release("2.0.0", &[]);
    let blob: Vec<u8> = (0..16 * 1024).map(|i| (i * 31 % 253) as u8).collect();
    for i in 0..3000 {
        big = big.file(&format!("data/{i:05}.bin"), 0o644, &blob);
    }
    assert_success(&host.push("2.0.0", "v2.tar.gz", &big.gz()), "push v2");

    // 1. SIGKILL while unpacking.
    let app_dir = host.app_dir();
    let deploy = deploy_in_background(&host, "2.0.0");
    wait_until(Duration::from_secs(60), "the agent to start unpacking", || {
        (!entries(&app_dir, ".staging-").is_empty()).then_some(())
    });
    host.fleet.agents[0].kill9();
    let out = deploy.wait_with_output().expect("fleetctl");
    assert!(!out.status.success());
    let v = json(&out);
    assert_eq!(v["cause"], "host unreachable", "{v}");
    assert_eq!(host.current().as_deref(), Some("1.0.0"), "current is untouched");
    assert!(
        app_dir.join("releases/1.0.0/VERSION").is_file(),
        "current points at a complete release"
    );
    assert_eq!(host.version_served().as_deref(), Some("1.0.0"));

    host.fleet.agents[0].start();
    host.fleet.wait_connected(1, Duration::from_secs(30));
    assert!(
        entries(&app_dir, ".staging-").is_empty(),
        "the restarted agent removed the partial unpack"
    );
    assert!(!app_dir.join("releases/2.0.0").exists());
    let out = host.deploy("2.0.0");
    assert_success(&out, "deploy v2 after the restart");
    assert_eq!(host.version_served().as_deref(), Some("2.0.0"));

    // 2. SIGKILL after the swap, before the change is verified (the intent
    // record exists from just before the swap until the health check passed).
    assert_success(&host.push("3.0.0", "v3.tar.gz", &release("3.0.0", &[]).gz()), "push v3");
    let deploy = deploy_in_background(&host, "3.0.0");
    wait_until(Duration::from_secs(60), "the agent to swap to 3.0.0", || {
        (app_dir.join("intent.json").exists() && host.current().as_deref() == Some("3.0.0")).then_some(())
    });
    host.fleet.agents[0].kill9();
    let _ = deploy.wait_with_output();
    let current = host.current().expect("exactly one current link, pointing at a release");
    assert!(app_dir.join("releases").join(&current).join("VERSION").is_file());

    host.fleet.agents[0].start();
    host.fleet.wait_connected(1, Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "recovery back to 2.0.0", || {
        (host.current().as_deref() == Some("2.0.0")
            && !app_dir.join("intent.json").exists()
            && host.version_served().as_deref() == Some("2.0.0"))
        .then_some(())
    });
    assert!(entries(&app_dir, ".link-").is_empty(), "no stray links");
    let log = host.fleet.agents[0].log_text();
    assert!(
        log.contains("stopped during a deploy"),
        "the agent says what it recovered from"
    );
    assert_eq!(host.sandbox.unit_property(UNIT, "Unit", "ActiveState"), "active");
}

#[test]
fn a_disk_that_fills_up_while_unpacking_is_refused_and_current_stays() {
    // 8 MiB of state: v1 fits; v2 unpacks to 12 MiB (from a few KiB of gzip).
    let host = Host::start_with("", Some("8m"));
    assert_success(&host.push("1.0.0", "v1.tar.gz", &release("1.0.0", &[]).gz()), "push v1");
    assert_success(&host.deploy("1.0.0"), "deploy v1");
    let pid = host.main_pid();
    let v2 = release("2.0.0", &[]).file("zeros", 0o644, &vec![0u8; 12 << 20]).gz();
    assert_success(&host.push("2.0.0", "v2.tar.gz", &v2), "push v2");
    let out = host.deploy("2.0.0");
    assert!(!out.status.success());
    let v = json(&out);
    assert_eq!(v["cause"], "disk full", "{v}");
    let detail = v["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("disk full") && detail.contains("free space"),
        "{detail}"
    );
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    assert!(!host.app_dir().join("releases/2.0.0").exists());
    assert!(
        entries(&host.app_dir(), ".staging-").is_empty(),
        "the partial unpack was removed"
    );
    assert_eq!(host.main_pid(), pid);
    assert_eq!(host.version_served().as_deref(), Some("1.0.0"));
}

#[test]
fn a_download_cut_by_a_controller_crash_resumes_from_its_offset() {
    let mut host = Host::start("");
    assert_success(&host.push("1.0.0", "v1.tar.gz", &release("1.0.0", &[]).gz()), "push v1");
    assert_success(&host.deploy("1.0.0"), "deploy v1");

    // 128 MiB that gzip cannot shrink, so the download takes a moment.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..128 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let v2 = release("2.0.0", &[]).file("noise.bin", 0o644, &noise).gz();
    let size = v2.len() as u64;
    assert_success(&host.push("2.0.0", "v2.tar.gz", &v2), "push v2");

    let deploy = deploy_in_background(&host, "2.0.0");
    let downloads = host.view.join("state/downloads");
    wait_until(Duration::from_secs(60), "the download to be under way", || {
        let part = entries(&downloads, "").into_iter().find(|n| n.ends_with(".part"))?;
        let len = std::fs::metadata(downloads.join(part)).ok()?.len();
        (len > 0 && len < size).then_some(())
    });
    host.fleet.controller.kill9();
    let out = deploy.wait_with_output().expect("fleetctl");
    assert!(!out.status.success(), "the deploy call ends with the controller");
    host.fleet.controller.start();

    // The agent carries on by itself: resumes the download where it broke,
    // verifies, and activates 2.0.0.
    wait_until(
        Duration::from_secs(120),
        "2.0.0 served after the resumed download",
        || (host.version_served().as_deref() == Some("2.0.0")).then_some(()),
    );
    let log = host.fleet.agents[0].log_text();
    let resumed = log
        .lines()
        .filter(|l| l.contains("resuming the download"))
        .filter_map(|l| {
            l.split("offset=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or_else(|| panic!("no resumed download in the agent's log:\n{log}"));
    assert!(resumed > 0 && resumed < size, "resumed at {resumed} of {size}");
    assert!(log.contains("sha256") && !log.contains("not as the release says"));
    let shown = wait_until(Duration::from_secs(20), "inventory at 2.0.0", || {
        let v = host.fleet.fleetctl_json(&["app", "show", APP]);
        (v["hosts"][0]["current"] == "2.0.0").then_some(v)
    });
    assert_eq!(shown["hosts"][0]["previous"], "1.0.0");
}
