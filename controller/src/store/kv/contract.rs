//! The contract every backend must meet, run against `SledKv` (in
//! `sled_kv`) and against `EtcdKv` (in `store::etcd`).

use super::*;
use std::sync::Arc;

/// Compares decide; nothing of a failed txn is written.
pub fn compare_and_commit(kv: &dyn Kv) {
    assert_eq!(kv.get(Space::Tokens, b"a").expect("get"), None);
    let create = Txn::new()
        .when(Space::Tokens, b"a", None)
        .put(Space::Tokens, b"a", b"1".to_vec())
        .put(Space::Hosts, b"h", b"x".to_vec());
    assert_eq!(kv.commit(create.clone()).expect("commit"), Committed::Applied);
    assert_eq!(kv.get(Space::Tokens, b"a").expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(
        kv.commit(create).expect("commit"),
        Committed::Conflict,
        "the key exists now"
    );
    // A failed compare anywhere leaves every space as it was.
    let stale = Txn::new()
        .when(Space::Hosts, b"h", Some(b"x"))
        .when(Space::Tokens, b"a", Some(b"0"))
        .put(Space::Hosts, b"h", b"y".to_vec())
        .delete(Space::Tokens, b"a");
    assert_eq!(kv.commit(stale).expect("commit"), Committed::Conflict);
    assert_eq!(kv.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"x"[..]));
    assert_eq!(kv.get(Space::Tokens, b"a").expect("get").as_deref(), Some(&b"1"[..]));
    // Every compare holds: every op applies.
    let fresh = Txn::new()
        .when(Space::Hosts, b"h", Some(b"x"))
        .when(Space::Tokens, b"a", Some(b"1"))
        .when(Space::Certs, b"c", None)
        .put(Space::Hosts, b"h", b"y".to_vec())
        .delete(Space::Tokens, b"a");
    assert_eq!(kv.commit(fresh).expect("commit"), Committed::Applied);
    assert_eq!(kv.get(Space::Hosts, b"h").expect("get").as_deref(), Some(&b"y"[..]));
    assert_eq!(kv.get(Space::Tokens, b"a").expect("get"), None);
    // Unconditional writes always apply; deleting an absent key is no error.
    let blind = Txn::new().delete(Space::Tokens, b"a").put(Space::Certs, b"c", vec![]);
    assert_eq!(kv.commit(blind).expect("commit"), Committed::Applied);
    assert_eq!(
        kv.get(Space::Certs, b"c").expect("get"),
        Some(vec![]),
        "empty is not absent"
    );
    assert_eq!(
        kv.commit(Txn::new().when(Space::Certs, b"c", None)).expect("commit"),
        Committed::Conflict
    );
    assert_eq!(kv.commit(Txn::new()).expect("commit"), Committed::Applied);
    // Spaces are apart: the same key elsewhere is another key.
    assert_eq!(kv.get(Space::Operators, b"h").expect("get"), None);
}

/// Prefix scans and scans from a key, in key order, within one space.
pub fn scans(kv: &dyn Kv) {
    let mut txn = Txn::new();
    for k in ["app\0b", "app\0a", "ap", "app", "apq\0a", "b"] {
        txn = txn.put(Space::Releases, k, k.as_bytes().to_vec());
    }
    txn = txn.put(Space::Desired, "app\0z", b"other space".to_vec());
    assert_eq!(kv.commit(txn).expect("commit"), Committed::Applied);
    let keys = |v: Vec<Entry>| {
        v.into_iter()
            .map(|(k, v)| {
                assert_eq!(k, v, "each value is its key");
                String::from_utf8(k).expect("utf8")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(kv.scan_prefix(Space::Releases, b"app\0").expect("scan")),
        ["app\0a", "app\0b"]
    );
    assert_eq!(kv.scan_prefix(Space::Releases, b"").expect("scan").len(), 6);
    assert_eq!(kv.count(Space::Releases).expect("count"), 6);
    assert_eq!(kv.count(Space::Audit).expect("count"), 0);
    assert!(kv.scan_prefix(Space::Releases, b"c").expect("scan").is_empty());
    assert_eq!(
        keys(
            kv.scan_from(Space::Releases, b"app", 3, Order::Ascending)
                .expect("scan")
        ),
        ["app", "app\0a", "app\0b"]
    );
    assert_eq!(
        keys(
            kv.scan_from(Space::Releases, b"app", 2, Order::Descending)
                .expect("scan")
        ),
        ["b", "apq\0a"]
    );
    assert_eq!(
        keys(
            kv.scan_from(Space::Releases, b"apq", 10, Order::Descending)
                .expect("scan")
        ),
        ["b", "apq\0a"]
    );
    assert!(kv
        .scan_from(Space::Releases, b"c", 10, Order::Descending)
        .expect("scan")
        .is_empty());
    assert!(kv
        .scan_from(Space::Releases, b"", 0, Order::Ascending)
        .expect("scan")
        .is_empty());
}

/// Threads incrementing one counter by compare-and-commit lose no
/// increment, and conflicts are reported (not applied).
pub fn concurrent_committers(kv: Arc<dyn Kv>) {
    const THREADS: u64 = 8;
    const EACH: u64 = 200;
    let conflicts: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let kv = kv.clone();
                s.spawn(move || {
                    let mut conflicts = 0;
                    let mut done = 0;
                    while done < EACH {
                        let was = kv.get(Space::Meta, b"n").expect("get");
                        let n = was
                            .as_deref()
                            .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                        let txn = Txn::new()
                            .when(Space::Meta, b"n", was.as_deref())
                            .put(Space::Meta, b"n", (n + 1).to_be_bytes().to_vec())
                            .put(Space::Audit, format!("{t}/{done}"), n.to_be_bytes().to_vec());
                        match kv.commit(txn).expect("commit") {
                            Committed::Applied => done += 1,
                            Committed::Conflict => conflicts += 1,
                        }
                    }
                    conflicts
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    let n = kv.get(Space::Meta, b"n").expect("get").expect("set");
    assert_eq!(u64::from_be_bytes(n.try_into().expect("8 bytes")), THREADS * EACH);
    // Each applied txn saw a distinct counter value.
    let mut seen: Vec<Vec<u8>> = kv
        .scan_prefix(Space::Audit, b"")
        .expect("scan")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len() as u64, THREADS * EACH, "no two increments from one value");
    tracing::debug!(conflicts, "concurrent committers");
}

/// The optimistic loop retries conflicts and gives up with Contended.
pub fn optimistic_retries_then_gives_up(kv: &dyn Kv) {
    let mut tries = 0;
    let r = optimistic::<(), StoreError>(kv, "a test update", |kv| {
        tries += 1;
        // Someone else always wins between the read and the commit.
        let was = kv.get(Space::Meta, b"x")?;
        let next = was.clone().unwrap_or_default().len() + 1;
        let _ = kv.commit(Txn::new().put(Space::Meta, b"x", vec![0; next]))?;
        Ok(Attempt::Commit(
            Txn::new()
                .when(Space::Meta, b"x", was.as_deref())
                .put(Space::Meta, b"y", vec![1]),
            (),
        ))
    });
    let err = r.expect_err("always conflicting");
    assert_eq!(tries, MAX_TRIES);
    assert!(err.to_string().contains("a test update"), "{err}");
    assert_eq!(kv.get(Space::Meta, b"y").expect("get"), None);
    let got = optimistic::<u32, StoreError>(kv, "a test read", |_| Ok(Attempt::Done(7))).expect("done");
    assert_eq!(got, 7);
}
