//! The controller's store on a real etcd (Debian's `etcd-server`, installed
//! by tests/deps.sh): a rollout whose controller is killed mid-way resumes
//! from what etcd holds; an etcd that goes away refuses writes with an error
//! naming it and loses nothing; `init` checks etcd before it writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{bin, free_addr, http_get, http_get_status, wait_exit, wait_until, Fleet};
use crate::rollouts::{rollout_id, Cluster};

/// An etcd cluster of one or more members on loopback; a member killed and
/// started again keeps its data and ports.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    client: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    child: Option<Child>,
}

impl Etcd {
    /// One member.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// `n` members, all up and with a leader.
    pub fn cluster(n: usize) -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::Builder::new().prefix("fleet-etcd-").tempdir().expect("tmp"),
            members: (0..n)
                .map(|_| Member {
                    client: free_addr(),
                    peer: free_addr(),
                    child: None,
                })
                .collect(),
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        etcd
    }

    /// Member `i`'s client URL, `http://127.0.0.1:PORT`.
    pub fn member_url(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    /// The first member's client URL.
    pub fn url(&self) -> String {
        self.member_url(0)
    }

    fn spawn(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "etcd member {i} already runs");
        let cluster = self
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| format!("m{j}=http://{}", m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let (url, peer) = (self.member_url(i), format!("http://{}", self.members[i].peer));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("etcd-{i}.log")))
            .expect("log");
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(self.dir.path().join(format!("data-{i}")))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster, "--initial-cluster-token", "fleet-it"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd ({e}): install etcd-server with `bash tests/deps.sh`"));
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let client = self.members[i].client;
        wait_until(Duration::from_secs(30), "etcd /health", || {
            http_get(client, "/health").filter(|b| b.contains("true")).map(drop)
        });
    }

    /// kill -9 of every member.
    pub fn kill9(&mut self) {
        for i in 0..self.members.len() {
            self.kill9_member(i);
        }
    }

    /// kill -9 of member `i`.
    pub fn kill9_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().expect("SIGKILL etcd");
            c.wait().expect("reap etcd");
        }
    }

    /// Starts every member that is down again, on its data and ports.
    pub fn restart(&mut self) {
        let down: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_none())
            .collect();
        for i in &down {
            self.spawn(*i);
        }
        for i in down {
            self.wait_healthy(i);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn init_args(etcd: &Etcd, prefix: &str) -> Vec<String> {
    let mut args = Vec::new();
    for i in 0..etcd.members.len() {
        args.extend(["--etcd".to_string(), etcd.member_url(i)]);
    }
    args.extend(["--etcd-prefix".to_string(), prefix.to_string()]);
    args
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Rolls 1.0.0 out to every host, then starts 2.0.0 one host at a time;
/// the second rollout's id.
fn v1_everywhere_then_v2_one_host_at_a_time(c: &Cluster) -> String {
    c.push("1.0.0", &[]);
    let out = c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]);
    assert!(out.status.success(), "rollout 1.0.0: {}", stderr(&out));
    c.push("2.0.0", &[]);
    let out = c.rollout(&["--release", "2.0.0", "--batch", "1", "--output", "json"]);
    assert!(out.status.success(), "rollout 2.0.0: {}", stderr(&out));
    rollout_id(&out)
}

#[test]
fn a_controller_on_etcd_killed_mid_rollout_resumes_from_etcd_without_deploying_a_host_twice() {
    let etcd = Etcd::start();
    let args = init_args(&etcd, "fleet/it/");
    let mut c = Cluster::start_full(&[""; 3], &strs(&args), &[], "info");
    let data_dir = c.fleet.controller.data_dir.clone();
    assert!(
        !data_dir.join("store").exists(),
        "the state is in etcd, not in the data dir"
    );
    let config = std::fs::read_to_string(&c.fleet.controller.config).expect("controller.toml");
    assert!(
        config.contains("backend = \"etcd\"") && config.contains(&etcd.url()),
        "{config}"
    );
    let id = v1_everywhere_then_v2_one_host_at_a_time(&c);
    wait_until(Duration::from_secs(60), "the second batch to start", || {
        (c.spans("2.0.0").len() >= 2).then_some(())
    });
    c.fleet.controller.kill9();
    c.fleet.controller.start();
    let r = c.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    c.assert_each_host_activated_once("2.0.0");
    c.wait_all_serve("2.0.0");
    assert!(!data_dir.join("store").exists());
}

#[test]
fn while_etcd_is_down_writes_are_refused_naming_it_and_everything_is_there_when_it_returns() {
    let mut etcd = Etcd::start();
    let args = init_args(&etcd, "fleet/down/");
    let mut fleet = Fleet::controller_only_with(&strs(&args), &[], "info");
    let before = fleet.token(&["--label", "env=test", "--uses", "1"]);

    etcd.kill9();
    let out = fleet.fleetctl(&["token", "create", "--label", "env=test", "--output", "json"]);
    assert!(!out.status.success(), "a write with etcd down must fail");
    let err = stderr(&out);
    assert!(
        err.contains(&etcd.url()) && err.contains("etcd"),
        "the error names etcd: {err}"
    );

    // The watchdog's probe (a write every 5 s) finds it: /healthz says so.
    let metrics = fleet.controller.metrics;
    let unhealthy = wait_until(Duration::from_secs(30), "/healthz to report etcd", || {
        http_get_status(metrics, "/healthz").filter(|(code, _)| *code == 503)
    });
    assert!(unhealthy.1.contains(&etcd.url()), "{unhealthy:?}");

    // A controller started while etcd is down says so and exits.
    fleet.controller.kill9();
    let mut serve = Command::new(bin("fleet-controller"))
        .args(["serve", "--config"])
        .arg(&fleet.controller.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let status = wait_exit(&mut serve, Duration::from_secs(60), "serve with etcd down");
    assert!(!status.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().expect("stderr"), &mut text).expect("read");
    assert!(
        text.contains(&etcd.url()) && text.contains("no member answered"),
        "serve names etcd and what happened: {text}"
    );

    etcd.restart();
    fleet.controller.start();
    // The token made before the outage still enrolls, beside a new one.
    let after = fleet.token(&["--label", "env=test", "--uses", "1"]);
    let i = fleet.add_agent("web-1", &after, &[]);
    let j = fleet.add_agent("web-2", &before, &[]);
    assert_eq!((i, j), (0, 1));
    fleet.wait_connected(2, Duration::from_secs(60));
}

#[test]
fn init_checks_etcd_before_it_writes_and_never_takes_a_prefix_that_holds_a_fleet() {
    let etcd = Etcd::start();
    let root = tempfile::Builder::new().prefix("fleet-it-").tempdir().expect("tmp");
    let init = |dir: &Path, args: &[String]| {
        Command::new(bin("fleet-controller"))
            .args(["init", "--data-dir"])
            .arg(dir)
            .args(args)
            .output()
            .expect("run init")
    };
    let first: PathBuf = root.path().join("first");
    let out = init(&first, &init_args(&etcd, "fleet/taken/"));
    assert!(out.status.success(), "first init: {}", stderr(&out));

    let second = root.path().join("second");
    let out = init(&second, &init_args(&etcd, "fleet/taken/"));
    assert!(!out.status.success(), "a prefix holding a fleet is refused");
    assert!(stderr(&out).contains("already holds a fleet"), "{}", stderr(&out));
    assert!(!second.exists(), "nothing was written");

    let dead = format!("http://{}", free_addr());
    let third = root.path().join("third");
    let out = init(&third, &["--etcd".into(), dead.clone()]);
    assert!(!out.status.success(), "an etcd that does not answer is refused");
    assert!(stderr(&out).contains(&dead), "{}", stderr(&out));
    assert!(!third.exists(), "nothing was written");

    let out = init(&third, &init_args(&etcd, "fleet/no-slash"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("store.prefix"), "{}", stderr(&out));
}

#[test]
fn a_second_controller_follows_forwarding_to_the_first_listed_among_the_members_and_serves_once_the_first_is_gone() {
    let etcd = Etcd::start();
    let args = init_args(&etcd, "fleet/pair/");
    let mut fleet = Fleet::controller_only_with(&strs(&args), &[], "info");
    let token = fleet.token(&["--label", "env=test", "--uses", "2"]);
    fleet.add_agent("web-1", &token, &[]);
    fleet.wait_connected(1, Duration::from_secs(60));

    // A controller of another fleet (its own init, its own CA) pointed at
    // this fleet's prefix is refused, naming both CAs, and writes nothing.
    let stranger = crate::harness::Controller::init(&fleet.root.path().join("stranger"), &[]);
    let config = std::fs::read_to_string(&fleet.controller.config).expect("config");
    let store_table = &config[config.find("[store]").expect("[store] in controller.toml")..];
    let mut text = std::fs::read_to_string(&stranger.config).expect("stranger config");
    text.push('\n');
    text.push_str(store_table);
    std::fs::write(&stranger.config, text).expect("write");
    let out = Command::new(bin("fleet-controller"))
        .args(["serve", "--config"])
        .arg(&stranger.config)
        .output()
        .expect("serve");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&stranger.ca_fingerprint) && stderr(&out).contains(&fleet.controller.ca_fingerprint),
        "{}",
        stderr(&out)
    );

    // A copy of the data dir (the same CA and keys) on other ports follows:
    // it forwards what it is asked to the serving controller.
    let mut second = fleet.controller.copy(fleet.root.path(), "second");
    second.spawn();
    wait_until(Duration::from_secs(60), "the second controller to follow", || {
        second
            .log_text()
            .contains("forwarding to the controller that serves")
            .then_some(())
    });
    assert!(
        second
            .child
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("wait")
            .is_none(),
        "a follower keeps running: {}",
        second.log_text()
    );
    assert!(!second.log_text().contains("fleet-controller serving"));
    // Probes see a follower for what it is.
    let (code, body) = http_get_status(second.metrics, "/healthz").expect("the follower's /healthz");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("follower") && body.contains(&fleet.controller.addr.to_string()),
        "{body}"
    );
    let text = http_get(second.metrics, "/metrics").expect("the follower's /metrics");
    assert!(text.contains("fleet_controller_follower 1"), "{text}");
    // An operator who knows only the follower is answered by the serving
    // controller through it.
    let through = fleet.fleetctl_with_controller(&second.addr.to_string(), &["hosts", "ls", "--output", "json"]);
    assert!(
        through.status.success(),
        "hosts ls through the follower: {}",
        stderr(&through)
    );
    let text = http_get(second.metrics, "/metrics").expect("the follower's /metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("fleet_controller_forwarded_requests_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    let listed = members(&fleet.controller.config);
    let roles: Vec<(&str, &str)> = listed
        .iter()
        .map(|m| (m["role"].as_str().unwrap_or(""), m["dir"].as_str().unwrap_or("")))
        .collect();
    let (first_dir, second_dir) = (
        fleet.controller.data_dir.display().to_string(),
        second.data_dir.display().to_string(),
    );
    let mut want = vec![("serving", first_dir.as_str()), ("follower", second_dir.as_str())];
    let mut got = roles.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{listed:?}");

    // The first dies; the second serves within the lock's lease.
    fleet.controller.kill9();
    wait_until(Duration::from_secs(30), "the second controller to serve", || {
        second.log_text().contains("fleet-controller serving").then_some(())
    });
    wait_until(Duration::from_secs(10), "the new serving controller's /healthz", || {
        http_get_status(second.metrics, "/healthz").filter(|(code, _)| *code == 200)
    });
    let listed = wait_until(Duration::from_secs(15), "the dead one to leave the members", || {
        Some(members(&second.config)).filter(|m| m.len() == 1)
    });
    assert_eq!(listed[0]["role"], "serving", "{listed:?}");
    assert_eq!(listed[0]["dir"].as_str(), Some(second_dir.as_str()), "{listed:?}");
    second.kill9();
}

/// With etcd's majority lost: a write through fleetctl is refused naming
/// etcd, and the serving controller's `/healthz` (at `metrics`) says so.
pub fn writes_refused_naming_etcd(fleet: &crate::harness::Fleet, metrics: std::net::SocketAddr) {
    let out = fleet.fleetctl(&["token", "create", "--label", "env=test", "--output", "json"]);
    assert!(!out.status.success(), "no majority, no write");
    assert!(stderr(&out).contains("etcd"), "{}", stderr(&out));
    wait_until(Duration::from_secs(60), "/healthz to report etcd", || {
        http_get_status(metrics, "/healthz").filter(|(code, body)| *code == 503 && body.contains("etcd"))
    });
}

/// `fleet-controller members --json` with `config`.
pub fn members(config: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(bin("fleet-controller"))
        .args(["members", "--json", "--config"])
        .arg(config)
        .output()
        .expect("members");
    assert!(out.status.success(), "members: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn a_rollout_on_a_three_member_etcd_rides_out_a_lost_member_and_two_lost_refuse_writes_until_they_return() {
    let mut etcd = Etcd::cluster(3);
    let args = init_args(&etcd, "fleet/ha/");
    let c = Cluster::start_full(&[""; 3], &strs(&args), &[], "info");
    // The member the controller talks to first dies mid-rollout.
    let id = v1_everywhere_then_v2_one_host_at_a_time(&c);
    wait_until(Duration::from_secs(60), "the first batch to start", || {
        (!c.spans("2.0.0").is_empty()).then_some(())
    });
    etcd.kill9_member(0);
    let r = c.wait_state(&id, &["succeeded", "failed", "rolled_back", "aborted"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    c.assert_each_host_activated_once("2.0.0");

    // A second member dies: no majority. Writes are refused, naming etcd,
    // and /healthz says so; nothing half-done is left.
    etcd.kill9_member(1);
    let metrics = c.fleet.controller.metrics;
    writes_refused_naming_etcd(&c.fleet, metrics);

    // Both return: the fleet goes on where it was.
    etcd.restart();
    wait_until(Duration::from_secs(60), "/healthz to recover", || {
        http_get_status(metrics, "/healthz").filter(|(code, _)| *code == 200)
    });
    let token = c.fleet.token(&["--label", "env=test", "--uses", "1"]);
    assert!(token.starts_with("fleet_jt_"), "{token}");
    let shown = c.fleet.fleetctl_json(&["rollout", "show", &id]);
    assert_eq!(shown["state"], "succeeded", "{shown}");
    c.wait_all_serve("2.0.0");
}
