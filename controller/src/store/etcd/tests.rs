//! The backend against a real etcd (Debian's `etcd-server`, which
//! `tests/deps.sh` installs): the same contract as sled's, then what only a
//! networked store has (pages, prefixes, members that do not answer).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::store::kv::contract;

/// One etcd member on loopback, with its own data dir; killed on drop.
pub(crate) struct EtcdServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl EtcdServer {
    /// Starts etcd with `extra` flags and waits until it answers.
    pub(crate) fn start(extra: &[&str]) -> EtcdServer {
        let dir = tempfile::tempdir().expect("tmp");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run etcd ({e}): the etcd tests need Debian's etcd-server; run `bash tests/deps.sh`")
            });
        let server = EtcdServer { child, url, _dir: dir };
        let kv = EtcdKv::connect(&server.settings("probe/")).expect("client");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match kv.check() {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => panic!("etcd at {} did not come up: {e}", server.url),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        server
    }

    pub(crate) fn settings(&self, prefix: &str) -> EtcdSettings {
        EtcdSettings {
            endpoints: vec![self.url.clone()],
            prefix: prefix.into(),
            tls: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn kv(&self, prefix: &str) -> Arc<dyn Kv> {
        Arc::new(EtcdKv::connect(&self.settings(prefix)).expect("client"))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcd_compare_and_commit() {
    let etcd = EtcdServer::start(&[]);
    contract::compare_and_commit(etcd.kv("fleet/").as_ref());
}

#[test]
fn etcd_scans() {
    let etcd = EtcdServer::start(&[]);
    contract::scans(etcd.kv("fleet/").as_ref());
}

#[test]
fn etcd_concurrent_committers() {
    let etcd = EtcdServer::start(&[]);
    contract::concurrent_committers(etcd.kv("fleet/"));
}

#[test]
fn etcd_optimistic_retries_then_gives_up() {
    let etcd = EtcdServer::start(&[]);
    contract::optimistic_retries_then_gives_up(etcd.kv("fleet/").as_ref());
}

#[test]
fn the_end_of_a_prefix_is_the_key_after_all_of_its_keys() {
    assert_eq!(prefix_end(b"fleet/hosts/"), b"fleet/hosts0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"a\xff\xff"), b"b");
    assert_eq!(prefix_end(b"\xff"), b"\0", "no successor: to the end");
    assert_eq!(prefix_end(b""), b"\0");
}

#[test]
fn a_txn_compares_values_and_absence_under_the_spaces_keys() {
    let bases: Vec<Vec<u8>> = Space::ALL
        .iter()
        .map(|s| format!("p/{}/", s.name()).into_bytes())
        .collect();
    let txn = Txn::new()
        .when_equals(Space::Hosts, b"h", b"v")
        .when_absent(Space::Tokens, b"t")
        .put(Space::Hosts, b"h", b"w".to_vec())
        .delete(Space::Tokens, b"t");
    let req = txn_request(&bases, &txn);
    assert_eq!(req.compare.len(), 2);
    assert_eq!(req.compare[0].key, b"p/hosts/h");
    assert_eq!(req.compare[0].target, CompareTarget::Value as i32);
    assert_eq!(req.compare[0].target_union, Some(TargetUnion::Value(b"v".to_vec())));
    assert_eq!(req.compare[1].key, b"p/tokens/t");
    assert_eq!(req.compare[1].target, CompareTarget::Version as i32);
    assert_eq!(req.compare[1].target_union, Some(TargetUnion::Version(0)));
    assert!(req.failure.is_empty(), "a failed compare writes nothing");
    let keys: Vec<Vec<u8>> = req
        .success
        .iter()
        .map(|op| match &op.request {
            Some(Request::RequestPut(p)) => p.key.clone(),
            Some(Request::RequestDeleteRange(d)) => {
                assert!(d.range_end.is_empty(), "a delete removes one key, never a range");
                d.key.clone()
            }
            other => panic!("unexpected op {other:?}"),
        })
        .collect();
    assert_eq!(keys, [b"p/hosts/h".to_vec(), b"p/tokens/t".to_vec()]);
}

#[test]
fn scans_longer_than_a_page_are_whole_and_in_order() {
    let etcd = EtcdServer::start(&[]);
    let kv = etcd.kv("fleet/");
    let n = 2 * PAGE as usize + 345;
    let key = |i: usize| format!("h{i:06}");
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let txn = chunk
            .iter()
            .fold(Txn::new(), |t, i| t.put(Space::Hosts, key(*i), key(*i).into_bytes()));
        assert_eq!(kv.commit(txn).expect("commit"), Committed::Applied);
    }
    let all = kv.scan_prefix(Space::Hosts, b"").expect("scan");
    assert_eq!(all.len(), n);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, (k, v))| *k == key(i).as_bytes() && k == v));
    assert_eq!(kv.count(Space::Hosts).expect("count"), n);
    let up = kv
        .scan_from(Space::Hosts, key(500).as_bytes(), 1500, Order::Ascending)
        .expect("scan");
    assert_eq!(up.len(), 1500);
    assert_eq!(up[0].0, key(500).as_bytes());
    assert_eq!(up[1499].0, key(1999).as_bytes());
    let down = kv
        .scan_from(Space::Hosts, key(100).as_bytes(), 1500, Order::Descending)
        .expect("scan");
    assert_eq!(down.len(), 1500);
    assert_eq!(down[0].0, key(n - 1).as_bytes(), "the last key first");
    assert_eq!(down[1499].0, key(n - 1500).as_bytes());
    assert!(
        down.windows(2).all(|w| w[0].0 > w[1].0),
        "strictly descending across pages"
    );
    let floor = kv
        .scan_from(Space::Hosts, key(n - 10).as_bytes(), 1500, Order::Descending)
        .expect("scan");
    assert_eq!(floor.len(), 10, "a descending scan stops at its start key");
}

#[test]
fn fleets_under_other_prefixes_share_a_cluster_without_seeing_each_other() {
    let etcd = EtcdServer::start(&[]);
    let (a, b) = (etcd.kv("fleet/a/"), etcd.kv("fleet/ab/"));
    assert_eq!(
        a.commit(Txn::new().put(Space::Hosts, b"h", b"a".to_vec()))
            .expect("commit"),
        Committed::Applied
    );
    assert_eq!(b.get(Space::Hosts, b"h").expect("get"), None);
    assert!(b.scan_prefix(Space::Hosts, b"").expect("scan").is_empty());
    assert_eq!(b.count(Space::Hosts).expect("count"), 0);
    assert_eq!(
        b.commit(
            Txn::new()
                .when_absent(Space::Hosts, b"h")
                .put(Space::Hosts, b"h", b"b".to_vec())
        )
        .expect("commit"),
        Committed::Applied
    );
    assert_eq!(a.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"a"[..]));
}

#[test]
fn a_member_that_cannot_be_reached_is_passed_over_and_a_write_that_was_sent_is_never_sent_twice() {
    let etcd = EtcdServer::start(&[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut settings = etcd.settings("fleet/");
    settings.endpoints = vec![dead.clone(), etcd.url.clone()];
    let kv = EtcdKv::connect(&settings).expect("client");
    // Nothing listens on the first member's port: the write never left, so
    // it goes to the next member.
    assert_eq!(
        kv.commit(Txn::new().put(Space::Hosts, b"h", b"v".to_vec()))
            .expect("commit"),
        Committed::Applied
    );
    assert_eq!(kv.get(Space::Hosts, b"h").expect("read").as_deref(), Some(&b"v"[..]));

    settings.endpoints = vec![dead.clone()];
    let lone = EtcdKv::connect(&settings).expect("client");
    let err = lone
        .commit(Txn::new().put(Space::Hosts, b"h", b"w".to_vec()))
        .expect_err("nobody answers")
        .to_string();
    assert!(err.contains(&dead) && err.contains("nothing was written"), "{err}");
    assert!(err.contains("etcdctl endpoint health"), "{err}");
    let err = lone.get(Space::Hosts, b"h").expect_err("nobody answers").to_string();
    assert!(err.contains(&dead) && err.contains("no member answered"), "{err}");

    // A member that takes the connection and never answers: the write was
    // sent, so it is not sent again elsewhere, and the error says its
    // outcome is unknown; the next write goes to the next member.
    let hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_url = format!("http://{}", hole.local_addr().expect("addr"));
    let held = std::thread::spawn(move || {
        let conns: Vec<_> = hole.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(3));
        drop(conns);
    });
    settings.endpoints = vec![hole_url.clone(), etcd.url.clone()];
    settings.timeout = Duration::from_millis(500);
    let kv = EtcdKv::connect(&settings).expect("client");
    let err = kv
        .commit(Txn::new().put(Space::Hosts, b"h", b"x".to_vec()))
        .expect_err("no answer")
        .to_string();
    assert!(
        err.contains(&hole_url) && err.contains("may or may not have been applied"),
        "{err}"
    );
    assert_eq!(
        kv.get(Space::Hosts, b"h").expect("read").as_deref(),
        Some(&b"v"[..]),
        "not sent to another member"
    );
    assert_eq!(
        kv.commit(Txn::new().put(Space::Hosts, b"h", b"y".to_vec()))
            .expect("commit"),
        Committed::Applied
    );
    held.join().expect("hole");
}

#[test]
fn a_value_over_etcds_request_limit_is_refused_with_the_flag_to_raise() {
    let etcd = EtcdServer::start(&["--max-request-bytes", "65536"]);
    let kv = etcd.kv("fleet/");
    let err = kv
        .commit(Txn::new().put(Space::Rollouts, b"r", vec![7; 100_000]))
        .expect_err("too large")
        .to_string();
    assert!(err.contains("--max-request-bytes"), "{err}");
    assert_eq!(kv.get(Space::Rollouts, b"r").expect("get"), None, "nothing was written");
}

fn holder(host: &str, pid: u32) -> Holder {
    Holder {
        host: host.into(),
        dir: "/var/lib/fleet-controller".into(),
        pid,
        addr: format!("{host}:7443"),
    }
}

#[test]
fn a_standby_is_listed_among_the_members_and_serves_once_the_holder_is_gone() {
    let etcd = EtcdServer::start(&[]);
    let a = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let b = std::sync::Arc::new(EtcdKv::connect(&etcd.settings("fleet/")).expect("client"));
    let _a_member = a.join_members(&holder("ctl-a", 10), 1).expect("join a");
    let lock_a = a.take_lock(&holder("ctl-a", 10), None).expect("free lock");
    let b_member = b.join_members(&holder("ctl-b", 20), 2).expect("join b");
    let peers = a.members().expect("members");
    let listed: Vec<(&str, bool)> = peers.iter().map(|p| (p.field("host"), p.serving)).collect();
    assert_eq!(listed, [("ctl-a", true), ("ctl-b", false)], "{peers:?}");
    assert_eq!(peers[1].field("addr"), "ctl-b:7443");
    assert_eq!(peers[1].field("since"), "2");

    // b stands by (no deadline) and takes the lock once a gives it up.
    let standby = {
        let b = b.clone();
        std::thread::spawn(move || b.take_lock(&holder("ctl-b", 20), None).map(drop))
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!standby.is_finished(), "b waits while a holds the lock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(lock_a.release());
    standby.join().expect("thread").expect("b takes the lock");
    let peers = b.members().expect("members");
    let serving: Vec<&str> = peers.iter().filter(|p| p.serving).map(|p| p.field("host")).collect();
    assert_eq!(serving, ["ctl-b"], "{peers:?}");

    // A member that leaves is gone from the list at once.
    rt.block_on(b_member.leave());
    let hosts: Vec<String> = b
        .members()
        .expect("members")
        .iter()
        .map(|p| p.field("host").to_string())
        .collect();
    assert_eq!(hosts, ["ctl-a"]);
}

#[test]
fn one_controller_holds_a_fleets_lock_and_the_next_gets_it_once_it_is_given_up() {
    let etcd = EtcdServer::start(&[]);
    let a = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let b = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let lock_a = a
        .take_lock(&holder("ctl-a", 10), Some(Duration::ZERO))
        .expect("free lock");
    let t0 = Instant::now();
    let err = b
        .take_lock(&holder("ctl-b", 20), Some(Duration::from_millis(1200)))
        .err()
        .expect("held by a")
        .to_string();
    assert!(t0.elapsed() >= Duration::from_millis(1200), "it waited for the lock");
    assert!(
        err.contains("another controller serves this fleet") && err.contains("host=ctl-a"),
        "{err}"
    );
    // Another fleet's prefix has a lock of its own.
    let other = EtcdKv::connect(&etcd.settings("fleet/other/")).expect("client");
    other
        .take_lock(&holder("ctl-b", 20), Some(Duration::ZERO))
        .expect("another prefix");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(lock_a.release());
    b.take_lock(&holder("ctl-b", 20), Some(Duration::from_secs(5)))
        .expect("free once given up");
    // a wrote nothing after b took the lock.
    let err = a
        .commit(Txn::new().put(Space::Hosts, b"h", b"from a".to_vec()))
        .expect_err("fenced")
        .to_string();
    assert!(err.contains("no longer holds") && err.contains("host=ctl-b"), "{err}");
    assert_eq!(b.get(Space::Hosts, b"h").expect("get"), None);
    let lost = rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), lock_a.lost()).await });
    assert!(lost.expect("told at once").contains("no longer holds"));
}

#[test]
fn a_restart_on_the_same_host_and_data_dir_takes_over_at_once_and_fences_the_old_run() {
    let etcd = EtcdServer::start(&[]);
    let old = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let new = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let _old_lock = old.take_lock(&holder("ctl", 10), Some(Duration::ZERO)).expect("free");
    assert_eq!(
        old.commit(Txn::new().put(Space::Hosts, b"h", b"old".to_vec()))
            .expect("commit"),
        Committed::Applied
    );
    let t0 = Instant::now();
    let new_lock = new
        .take_lock(&holder("ctl", 11), Some(Duration::ZERO))
        .expect("same place");
    assert!(t0.elapsed() < LOCK_TTL / 2, "no wait for the lease");
    // The new run's own conflicts are conflicts, not a lost lock.
    assert_eq!(
        new.commit(
            Txn::new()
                .when_absent(Space::Hosts, b"h")
                .put(Space::Hosts, b"h", b"new".to_vec())
        )
        .expect("commit"),
        Committed::Conflict
    );
    let err = old
        .commit(
            Txn::new()
                .when_equals(Space::Hosts, b"h", b"old")
                .put(Space::Hosts, b"h", b"stale".to_vec()),
        )
        .expect_err("fenced")
        .to_string();
    assert!(err.contains("no longer holds") && err.contains("pid=11"), "{err}");
    assert_eq!(new.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"old"[..]));
    drop(new_lock);
}

#[test]
fn a_holder_whose_keep_alives_stop_loses_its_lock_to_the_next_within_the_lease() {
    let etcd = EtcdServer::start(&[]);
    let a = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let lock_a = a.take_lock(&holder("ctl-a", 10), Some(Duration::ZERO)).expect("free");
    // a's keep-alives stop reaching etcd: its runtime is gone, as in a
    // controller frozen or cut off for longer than the lease.
    drop(a);
    let b = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let t0 = Instant::now();
    b.take_lock(&holder("ctl-b", 20), Some(2 * LOCK_TTL)).expect("expired");
    let waited = t0.elapsed();
    assert!(
        waited > Duration::from_secs(2) && waited <= LOCK_TTL + Duration::from_secs(3),
        "{waited:?}"
    );
    drop(lock_a);
}

#[test]
fn history_older_than_the_last_round_is_compacted_and_values_stay() {
    let etcd = EtcdServer::start(&[]);
    let kv = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let members = kv.members.clone();
    let probe = b"fleet/meta/schema".to_vec();
    let put = |v: &str| {
        assert_eq!(
            kv.commit(Txn::new().put(Space::Rollouts, b"r", v.as_bytes().to_vec()))
                .expect("commit"),
            Committed::Applied
        );
    };
    put("v1");
    let first = kv.run({
        let (m, p) = (members.clone(), probe.clone());
        async move { m.revision(&p).await }
    });
    let first = first.expect("revision");
    put("v2");
    let old_read = |revision: i64| {
        let m = members.clone();
        kv.run(async move {
            m.read(|c| {
                range_on(
                    c,
                    wire::RangeRequest {
                        key: b"fleet/rollouts/r".to_vec(),
                        revision,
                        ..Default::default()
                    },
                )
            })
            .await
        })
    };
    assert_eq!(old_read(first).expect("history is there").kvs[0].value, b"v1");
    // Two rounds: the first notes the revision, the second compacts to it.
    let task = kv.handle.spawn(compact::keep_compacting(
        members.clone(),
        probe,
        Duration::from_millis(300),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match old_read(first) {
            Err(e) if e.to_string().contains("compacted") => break,
            _ if Instant::now() > deadline => panic!("history at {first} was never compacted"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    task.abort();
    assert_eq!(kv.get(Space::Rollouts, b"r").expect("get").as_deref(), Some(&b"v2"[..]));
}

/// Polls `read` until it gives `want` (a watch is quick, not instant).
fn eventually(what: &str, want: Option<&[u8]>, read: impl Fn() -> Result<Option<Vec<u8>>, StoreError>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = read().expect("read");
        if got.as_deref() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {got:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn usable(kv: &EtcdKv, space: Space) -> bool {
    kv.in_memory(space, |_| ()).is_some()
}

#[test]
fn certificates_and_hosts_are_read_from_memory_kept_current_by_a_watch() {
    let mut etcd = EtcdServer::start(&[]);
    let watcher = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let other = EtcdKv::connect(&etcd.settings("fleet/")).expect("client");
    let put = |kv: &EtcdKv, space: Space, key: &[u8], v: &[u8]| {
        assert_eq!(
            kv.commit(Txn::new().put(space, key, v.to_vec())).expect("commit"),
            Committed::Applied
        );
    };
    put(&other, Space::Certs, b"sha256:aa", b"one");
    put(&other, Space::Hosts, b"h1", b"first");
    assert!(!usable(&watcher, Space::Certs), "nothing read yet: reads go to etcd");
    watcher.watch_hot();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(usable(&watcher, Space::Certs) && usable(&watcher, Space::Hosts)) {
        assert!(Instant::now() < deadline, "the watches were not made within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!usable(&watcher, Space::Tokens), "other spaces are never kept");
    // What was there before the watch, and what another client writes after.
    let cert = || watcher.get(Space::Certs, b"sha256:aa");
    eventually("the loaded certificate", Some(b"one"), cert);
    put(&other, Space::Certs, b"sha256:aa", b"two");
    eventually("another client's put", Some(b"two"), cert);
    put(&other, Space::Hosts, b"h2", b"second");
    eventually("another client's new host", Some(b"second"), || {
        watcher.get(Space::Hosts, b"h2")
    });
    assert_eq!(
        other.commit(Txn::new().delete(Space::Hosts, b"h1")).expect("commit"),
        Committed::Applied
    );
    eventually("another client's delete", None, || watcher.get(Space::Hosts, b"h1"));
    // Its own writes are read at once, whatever the watch has brought.
    put(&watcher, Space::Hosts, b"h3", b"own");
    assert_eq!(
        watcher.get(Space::Hosts, b"h3").expect("get").as_deref(),
        Some(&b"own"[..])
    );
    let hosts = watcher.scan_prefix(Space::Hosts, b"").expect("scan");
    assert_eq!(
        hosts,
        vec![(b"h2".to_vec(), b"second".to_vec()), (b"h3".to_vec(), b"own".to_vec())]
    );
    assert_eq!(watcher.count(Space::Hosts).expect("count"), 2);
    // Served from memory: with etcd paused (its watch open, silent), the
    // hot spaces still answer; a round trip would wait and fail.
    let pid = etcd.child.id().to_string();
    let signal = |s: &str| {
        let ok = Command::new("kill").args([s, &pid]).status().expect("kill").success();
        assert!(ok, "kill {s} {pid}");
    };
    signal("-STOP");
    let t = Instant::now();
    assert_eq!(cert().expect("get while etcd is paused").as_deref(), Some(&b"two"[..]));
    assert_eq!(
        watcher.scan_prefix(Space::Hosts, b"").expect("scan while paused").len(),
        2
    );
    assert!(t.elapsed() < Duration::from_secs(1), "answered from memory, not etcd");
    signal("-CONT");
    // While it holds the serving lock this controller is the one writer:
    // with etcd gone it still answers; another controller, whose watch
    // broke, goes to etcd and says it cannot.
    let _lock = watcher
        .take_lock(&holder("ctl", 1), Some(Duration::ZERO))
        .expect("lock");
    other.watch_hot();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !usable(&other, Space::Certs) {
        assert!(Instant::now() < deadline, "the other's watch was not made within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    etcd.child.kill().expect("kill etcd");
    etcd.child.wait().expect("wait");
    let deadline = Instant::now() + Duration::from_secs(10);
    while usable(&other, Space::Certs) {
        assert!(Instant::now() < deadline, "a broken watch still counted as live");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        other.get(Space::Certs, b"sha256:aa").is_err(),
        "no copy and no etcd: an error"
    );
    assert_eq!(cert().expect("the one writer, etcd gone").as_deref(), Some(&b"two"[..]));
}
