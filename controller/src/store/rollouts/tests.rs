use super::*;
use fleet_proto::{AppInventory, Inventory};
use prost::Message;

fn host(id: &str, app: &str, current: &str) -> Host {
    Host {
        id: id.into(),
        inventory: Some(Inventory {
            apps: vec![AppInventory {
                app: app.into(),
                current: current.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn version_1_records_and_the_app_wide_desired_version_are_migrated() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    let old = legacy::RolloutV1 {
        id: "r-1".into(),
        app: "demo".into(),
        version: "2.0.0".into(),
        state: "succeeded".into(),
        batches: vec![legacy::BatchV1 {
            state: "done".into(),
            hosts: vec![
                legacy::HostV1 {
                    host_id: "h1".into(),
                    from_version: "1.0.0".into(),
                    state: "succeeded".into(),
                    ..Default::default()
                },
                legacy::HostV1 {
                    host_id: "h2".into(),
                    state: "skipped".into(),
                    detail: "already runs 2.0.0".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut v = vec![RECORD_V1];
    v.extend(old.encode_to_vec());
    let raw = Txn::new()
        .put(Space::Rollouts, "r-1", v)
        // Earlier releases: one version per app, raw bytes, under the app name.
        .put(Space::Desired, "demo", b"2.0.0".to_vec());
    assert_eq!(
        store.kv().commit(raw).expect("insert"),
        super::super::kv::Committed::Applied
    );

    let hosts = [
        host("h1", "demo", "1.0.0"),
        host("h2", "demo", "2.0.0"),
        host("h3", "other", "9"),
    ];
    let rs = RolloutStore::open(&store, &hosts).expect("open");
    let r = rs.get("r-1").expect("get").expect("kept");
    assert_eq!(r.state(), RolloutState::Succeeded);
    assert_eq!(r.batches[0].state(), BatchState::Done);
    assert_eq!(r.batches[0].hosts[0].state(), HostState::Succeeded);
    assert_eq!(r.batches[0].hosts[0].to_version, "2.0.0");
    assert_eq!(r.batches[0].hosts[1].state(), HostState::Unchanged);
    assert_eq!(
        store.kv().get(Space::Rollouts, b"r-1").expect("get").expect("raw")[0],
        RECORD_V2,
        "rewritten as version 2"
    );
    assert_eq!(rs.app_release("demo").expect("get").as_deref(), Some("2.0.0"));
    // Each host keeps what it runs: the migration changes no host.
    assert_eq!(rs.desired("demo", "h1").expect("get").as_deref(), Some("1.0.0"));
    assert_eq!(rs.desired("demo", "h2").expect("get").as_deref(), Some("2.0.0"));
    assert_eq!(rs.desired("demo", "h3").expect("get"), None);
    assert_eq!(rs.target("demo", "h9").expect("get").as_deref(), Some("2.0.0"));
    // Opening again finds nothing more to migrate.
    let again = RolloutStore::open(&store, &hosts).expect("open again");
    assert_eq!(again.desired_of_app("demo").expect("all").len(), 2);
}

/// The space and key of each write of one commit.
type Txned = Vec<(Space, Vec<u8>)>;

/// A backend that keeps every commit's writes, and allows `max` in one.
struct Counting {
    inner: Arc<dyn Kv>,
    max: usize,
    commits: Mutex<Vec<Txned>>,
}

impl Kv for Counting {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Vec<super::super::kv::Entry>, StoreError> {
        self.inner.scan_prefix(space, prefix)
    }
    fn scan_from(
        &self,
        space: Space,
        from: &[u8],
        limit: usize,
        order: super::super::kv::Order,
    ) -> Result<Vec<super::super::kv::Entry>, StoreError> {
        self.inner.scan_from(space, from, limit, order)
    }
    fn commit(&self, txn: Txn) -> Result<super::super::kv::Committed, StoreError> {
        assert!(
            txn.ops.len() <= self.max,
            "a txn of {} ops over the backend's {}",
            txn.ops.len(),
            self.max
        );
        let keys = txn
            .ops
            .iter()
            .map(|op| match op {
                super::super::kv::Op::Put { space, key, .. } | super::super::kv::Op::Delete { space, key } => {
                    (*space, key.clone())
                }
            })
            .collect();
        self.commits.lock().expect("lock").push(keys);
        self.inner.commit(txn)
    }
    fn flush_sync(&self) -> Result<(), String> {
        self.inner.flush_sync()
    }
    fn max_ops(&self) -> usize {
        self.max
    }
}

fn rollout(id: &str, batches: usize, each: usize) -> Rollout {
    Rollout {
        id: id.into(),
        app: "demo".into(),
        version: "2.0.0".into(),
        plan: "in batches".into(),
        state: RolloutState::Running as i32,
        batches: (0..batches)
            .map(|b| RolloutBatch {
                canary: b == 0,
                hosts: (0..each)
                    .map(|i| RolloutHost {
                        host_id: format!("h{b}-{i}"),
                        hostname: format!("web-{b}-{i}"),
                        to_version: "2.0.0".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn a_record_is_its_head_and_its_hosts_and_a_write_touches_only_what_changed() {
    let dir = tempfile::tempdir().expect("tmp");
    let sled: Arc<dyn Kv> = Arc::new(super::super::kv::SledKv::open(dir.path()).expect("sled"));
    let counting = Arc::new(Counting {
        inner: sled,
        max: 10,
        commits: Mutex::new(Vec::new()),
    });
    let store = Store::on(counting.clone(), dir.path(), super::super::Schema::CreateIfMissing).expect("store");
    let rs = RolloutStore::open(&store, &[]).expect("open");
    let commits = || std::mem::take(&mut *counting.commits.lock().expect("lock"));
    commits();

    let mut r = rollout("r-1", 3, 40);
    rs.put(&r).expect("put");
    let first = commits();
    assert_eq!(
        first.len(),
        13,
        "120 hosts and the head in txns of at most 10: {}",
        first.len()
    );
    let last = first.last().expect("a txn");
    assert_eq!(last.last(), Some(&(Space::Rollouts, b"r-1".to_vec())), "the head last");
    assert_eq!(rs.get("r-1").expect("get"), Some(r.clone()), "read back whole");
    let head = store.kv().get(Space::Rollouts, b"r-1").expect("get").expect("head");
    assert_eq!(head[0], RECORD_V3);
    assert!(head.len() < 200, "the head holds no host: {} bytes", head.len());

    // One host's phase and the batch's state change: one host is written.
    r.batches[1].hosts[7].phase = "unpack".into();
    r.batches[1].state = BatchState::Running as i32;
    r.current_batch = 1;
    rs.put(&r).expect("put");
    let second = commits();
    assert_eq!(
        second,
        vec![vec![
            (Space::RolloutHosts, host_key("r-1", 1, 7)),
            (Space::Rollouts, b"r-1".to_vec())
        ]]
    );
    assert_eq!(rs.get("r-1").expect("get"), Some(r.clone()));
    // Nothing changed: nothing is written.
    rs.put(&r).expect("put");
    assert_eq!(commits(), Vec::<Txned>::new());
    // A host alone changed: the host alone (the head, with its plan
    // naming every host, is not rewritten).
    r.batches[1].hosts[8].phase = "fetch".into();
    rs.put(&r).expect("put");
    assert_eq!(commits(), vec![vec![(Space::RolloutHosts, host_key("r-1", 1, 8))]]);

    // A rollback batch is appended: only its hosts.
    let mut rollback = r.batches[0].clone();
    rollback.canary = false;
    rollback.hosts.truncate(3);
    r.batches.push(rollback);
    rs.put(&r).expect("put");
    assert_eq!(commits().concat().len(), 4, "3 new hosts and the head");

    // Told which batches changed, a write compares only those.
    r.batches[2].hosts[0].phase = "fetch".into();
    r.batches[0].hosts[0].phase = "fetch".into();
    let mut touched = Touched::default();
    touched.batch(2);
    rs.put_touched(&r, &touched).expect("put");
    assert_eq!(
        commits(),
        vec![vec![(Space::RolloutHosts, host_key("r-1", 2, 0))]],
        "batch 0 was not compared: its caller vouched it unchanged"
    );
    touched.clear();
    touched.batch(0);
    rs.put_touched(&r, &touched).expect("put");
    assert_eq!(commits().concat().len(), 1, "batch 0's host");

    // Told which hosts changed, a write compares only those.
    r.batches[1].hosts[3].phase = "unpack".into();
    r.batches[1].hosts[4].phase = "unpack".into();
    touched.clear();
    touched.host(1, 3);
    touched.host(1, 99); // no such host: nothing to write
    rs.put_touched(&r, &touched).expect("put");
    assert_eq!(
        commits(),
        vec![vec![(Space::RolloutHosts, host_key("r-1", 1, 3))]],
        "host 4 was not compared: its caller vouched it unchanged"
    );
    touched.clear();
    touched.batch(1);
    rs.put_touched(&r, &touched).expect("put");
    assert_eq!(commits().concat(), vec![(Space::RolloutHosts, host_key("r-1", 1, 4))]);

    // Another process (a restart) knows nothing it wrote: it writes all.
    let again = RolloutStore::open(&store, &[]).expect("open again");
    assert_eq!(again.get("r-1").expect("get"), Some(r.clone()));
    again.put(&r).expect("put");
    assert_eq!(commits().concat().len(), 124);

    // Lists: heads without hosts; all() whole, newest first.
    let mut r2 = rollout("r-2", 1, 2);
    r2.created_at_ms = 5;
    again.put(&r2).expect("put");
    let heads = again.heads().expect("heads");
    assert_eq!(heads.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["r-2", "r-1"]);
    assert!(heads.iter().all(|h| h.batches.iter().all(|b| b.hosts.is_empty())));
    assert_eq!(heads[1].batches.len(), 4);
    assert_eq!(again.all().expect("all"), vec![r2.clone(), r.clone()]);
    assert_eq!(again.active("demo").expect("active"), Some(r2.clone()));
    assert!(again.has_active("demo").expect("has"));
}

#[test]
fn a_whole_record_of_an_earlier_release_is_read_and_rewritten_as_head_and_hosts() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    let r = rollout("r-9", 2, 3);
    let raw = Txn::new().put(Space::Rollouts, "r-9", encode_rollout(&r));
    let _ = store.kv().commit(raw).expect("insert");
    let rs = RolloutStore::open(&store, &[]).expect("open");
    assert_eq!(rs.get("r-9").expect("get"), Some(r.clone()));
    assert_eq!(rs.all().expect("all"), vec![r.clone()]);
    rs.put(&r).expect("put");
    assert_eq!(
        store.kv().get(Space::Rollouts, b"r-9").expect("get").expect("head")[0],
        RECORD_V3
    );
    assert_eq!(store.kv().count(Space::RolloutHosts).expect("count"), 6);
    assert_eq!(rs.get("r-9").expect("get"), Some(r));
}
