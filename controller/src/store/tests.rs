use std::collections::BTreeMap;

use super::*;

fn token(max_uses: u32) -> TokenRecord {
    TokenRecord {
        id: "t1".into(),
        secret_sha256: secret_hash("s"),
        labels: BTreeMap::new(),
        created_at_ms: 0,
        expires_at_ms: 1000,
        max_uses,
        uses: 0,
        revoked_at_ms: 0,
        created_by: "admin".into(),
        description: String::new(),
        cert_ttl_ms: 3_600_000,
        allowed_label_keys: Vec::new(),
    }
}

fn host(id: &str) -> Host {
    Host {
        id: id.into(),
        ..Default::default()
    }
}

fn cert(host_id: &str) -> CertRecord {
    CertRecord {
        replaces: None,
        host_id: host_id.into(),
        issued_at_ms: 1,
        not_after_ms: 2,
    }
}

/// A new store with one host, `h1`, enrolled with certificate `fp`.
fn with_host_h1(fp: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    store.put_token(&token(0)).expect("put");
    store
        .enroll("t1", &secret_hash("s"), 10, &host("h1"), fp, &cert("h1"))
        .expect("enroll");
    (dir, store)
}

#[test]
fn token_checks_in_order() {
    let t = token(1);
    assert_eq!(t.check(Some(&secret_hash("s")), 10), Ok(()));
    assert!(matches!(
        t.check(Some(&secret_hash("x")), 10),
        Err(TokenRefusal::WrongSecret(_))
    ));
    assert!(matches!(t.check(None, 1000), Err(TokenRefusal::Expired { .. })));
    assert_eq!(t.state(2000), fleet_proto::TokenState::Expired);
    let used = TokenRecord { uses: 1, ..token(1) };
    assert_eq!(used.state(10), fleet_proto::TokenState::UsedUp);
    let revoked = TokenRecord {
        revoked_at_ms: 5,
        ..token(0)
    };
    assert_eq!(revoked.state(10), fleet_proto::TokenState::Revoked);
}

#[test]
fn enrollment_is_all_or_nothing_and_spends_uses() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    store.put_token(&token(1)).expect("put");
    store
        .enroll("t1", &secret_hash("s"), 10, &host("h1"), "fp1", &cert("h1"))
        .expect("first use");
    let err = store
        .enroll("t1", &secret_hash("s"), 10, &host("h2"), "fp2", &cert("h2"))
        .expect_err("used up");
    assert!(matches!(err, EnrollError::Token(TokenRefusal::UsedUp { .. })), "{err}");
    assert!(store.host("h2").expect("get").is_none(), "nothing stored on refusal");
    assert!(store.cert_host("fp2").expect("get").is_none());
    assert_eq!(store.token("t1").expect("get").map(|t| t.uses), Some(1));
}

#[test]
fn a_renewal_revokes_what_it_replaces_only_once_used() {
    let (_dir, store) = with_host_h1("fp0");
    let renewal = CertRecord {
        replaces: Some("fp0".into()),
        ..cert("h1")
    };
    // Two renewals on the stream of fp0; nothing is revoked yet.
    assert!(store.add_cert("fp1", &renewal).expect("renew"));
    assert!(store.add_cert("fp2", &renewal).expect("renew again"));
    assert_eq!(store.confirm_cert("fp0").expect("no renewal"), None);
    for fp in ["fp0", "fp1", "fp2"] {
        assert!(
            store.cert_host(fp).expect("get").is_some(),
            "{fp} honoured before the switch"
        );
    }
    // The host authenticates with fp2: fp0 and the unused sibling go.
    assert_eq!(store.confirm_cert("fp2").expect("confirm"), Some("fp0".into()));
    assert!(store.cert_host("fp0").expect("get").is_none());
    assert!(store.cert_host("fp1").expect("get").is_none());
    let kept = store.cert_host("fp2").expect("get").expect("the new one stays");
    assert_eq!(kept.replaces, None, "confirmed");
    assert_eq!(store.confirm_cert("fp2").expect("again"), None, "idempotent");
}

#[test]
fn removing_a_host_revokes_all_its_certs() {
    let (_dir, store) = with_host_h1("fp1");
    assert!(store.add_cert("fp1b", &cert("h1")).expect("renew"));
    let (_, n) = store.remove_host("h1").expect("rm").expect("existed");
    assert_eq!(n, 2);
    assert!(store.cert_host("fp1").expect("get").is_none());
    assert!(
        !store.add_cert("fp1c", &cert("h1")).expect("renew after rm"),
        "no cert for a removed host"
    );
    assert!(store.cert_host("fp1c").expect("get").is_none());
}

fn named(id: &str, hostname: &str) -> Host {
    Host {
        id: id.into(),
        facts: Some(fleet_proto::HostFacts {
            hostname: hostname.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ids_named(store: &Store, name: &str) -> Vec<String> {
    let mut ids: Vec<String> = store
        .hosts_named(name)
        .expect("named")
        .into_iter()
        .map(|h| h.id)
        .collect();
    ids.sort();
    ids
}

/// The hostname index answers what a scan of every host would, whether it
/// was built before or after the writes: enrollments, a host renamed, a
/// host removed, and a store opened again.
#[test]
fn hosts_by_hostname_follow_enrollments_renames_and_removals() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    store.put_token(&token(0)).expect("put");
    let enroll = |h: Host| {
        let fp = format!("fp-{}", h.id);
        store
            .enroll("t1", &secret_hash("s"), 10, &h, &fp, &cert(&h.id))
            .expect("enroll");
    };
    enroll(named("a1", "web-1"));
    // The index is built here, at its first use.
    assert_eq!(ids_named(&store, "web-1"), ["a1"]);
    enroll(named("a2", "web-1"));
    enroll(named("b1", "web-2"));
    enroll(host("c1"));
    assert_eq!(ids_named(&store, "web-1"), ["a1", "a2"]);
    assert_eq!(ids_named(&store, "web-2"), ["b1"]);
    assert!(ids_named(&store, "").is_empty());
    store
        .update_host("a2", |h| h.facts.as_mut().expect("facts").hostname = "web-2".into())
        .expect("update")
        .expect("known");
    assert_eq!(ids_named(&store, "web-1"), ["a1"], "renamed away");
    assert_eq!(ids_named(&store, "web-2"), ["a2", "b1"], "renamed to");
    store.remove_host("b1").expect("rm").expect("existed");
    assert_eq!(ids_named(&store, "web-2"), ["a2"]);
    assert!(ids_named(&store, "db-1").is_empty());
    drop(store);
    let store = Store::open(dir.path()).expect("open again");
    assert_eq!(ids_named(&store, "web-1"), ["a1"]);
    assert_eq!(ids_named(&store, "web-2"), ["a2"]);
}

/// N threads enrolling with one token of K uses: exactly K enroll, the
/// token records K uses, and every enrolled host has its certificate.
#[test]
fn concurrent_enrollments_never_spend_more_uses_than_the_token_has() {
    const THREADS: usize = 16;
    const EACH: usize = 12;
    const USES: u32 = 50;
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    store.put_token(&token(USES)).expect("put");
    let enrolled: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..EACH {
                        let id = format!("h{t}-{i}");
                        let fp = format!("fp-{id}");
                        match store.enroll("t1", &secret_hash("s"), 10, &host(&id), &fp, &cert(&id)) {
                            Ok(()) => mine.push(id),
                            Err(EnrollError::Token(TokenRefusal::UsedUp { max, .. })) => assert_eq!(max, USES),
                            Err(e) => panic!("enrollment failed: {e}"),
                        }
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert_eq!(enrolled.len(), USES as usize, "exactly the token's uses enrolled");
    assert_eq!(store.token("t1").expect("get").map(|t| t.uses), Some(USES));
    assert_eq!(store.host_count(), USES as usize);
    for id in &enrolled {
        let rec = store.cert_host(&format!("fp-{id}")).expect("get").expect("cert stored");
        assert_eq!(&rec.host_id, id);
    }
}

/// Concurrent read-modify-writes of one host lose no update.
#[test]
fn concurrent_host_updates_lose_nothing() {
    let (_dir, store) = with_host_h1("fp1");
    std::thread::scope(|s| {
        for _ in 0..8 {
            let store = store.clone();
            s.spawn(move || {
                for _ in 0..50 {
                    store
                        .update_host("h1", |h| h.cert_not_after_ms += 1)
                        .expect("update")
                        .expect("exists");
                }
            });
        }
    });
    let h = store.host("h1").expect("get").expect("exists");
    assert_eq!(h.cert_not_after_ms, 400);
}

#[test]
fn corrupt_values_are_reported_not_guessed() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    store.put(Space::Tokens, b"bad", vec![9, 1, 2]).expect("raw insert");
    let err = store.token("bad").expect_err("corrupt");
    assert!(err.to_string().contains("version byte 9"), "{err}");
}
