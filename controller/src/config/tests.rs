use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: "c.toml".into(),
        detail: e.to_string(),
    })?;
    Config::validate(Path::new("/etc/fleet/c.toml"), raw)
}

#[test]
fn defaults_apply_and_relative_data_dir_follows_the_file() {
    let c = load("data_dir = \"data\"").expect("valid");
    assert_eq!(c.data_dir, PathBuf::from("/etc/fleet/data"));
    assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(c.cert_ttl, Duration::from_secs(7 * 86400));
    assert_eq!(c.metrics_listen.ip().to_string(), "127.0.0.1");
}

#[test]
fn bad_values_name_their_key() {
    let e = load("data_dir = \"d\"\nlisten = \"nope\"").expect_err("bad listen");
    assert!(e.to_string().contains("'listen'"), "{e}");
    let e = load("data_dir = \"d\"\ncert_ttl = \"1s\"").expect_err("short ttl");
    assert!(e.to_string().contains("'cert_ttl'"), "{e}");
    let e = load("data_dir = \"d\"\nbogus = 1").expect_err("unknown key");
    assert!(e.to_string().contains("bogus"), "{e}");
    assert!(load("listen = \"0.0.0.0:1\"").is_err(), "data_dir is required");
}

#[test]
fn connection_limits_default_and_name_their_key() {
    let c = load("data_dir = \"d\"").expect("valid");
    assert_eq!(c.connections.max_total, 50_000);
    assert_eq!(c.connections.first_request_timeout, Duration::from_secs(10));
    let c = load("data_dir = \"d\"\n[connections]\nmax_per_ip = 8\nidle_timeout = \"5s\"").expect("valid");
    assert_eq!(
        (c.connections.max_per_ip, c.connections.idle_timeout),
        (8, Duration::from_secs(5))
    );
    assert_eq!(c.connections.max_total, 50_000, "unset keys keep their default");
    let e = load("data_dir = \"d\"\n[connections]\nmax_total = 0").expect_err("zero");
    assert!(e.to_string().contains("'connections.max_total'"), "{e}");
    let e = load("data_dir = \"d\"\n[connections]\nfirst_request_timeout = \"1ms\"").expect_err("short");
    assert!(e.to_string().contains("'connections.first_request_timeout'"), "{e}");
    let e = load("data_dir = \"d\"\n[connections]\nbogus = 1").expect_err("unknown key");
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn rate_limits_default_and_name_their_key() {
    let c = load("data_dir = \"d\"").expect("valid");
    assert_eq!(c.limits.token_uses, 1);
    assert_eq!(c.limits.renew_min_interval, Duration::from_secs(60));
    assert_eq!(c.limits.enroll_per_source.burst, 50);
    let c = load("data_dir = \"d\"\nlimits = { enroll_per_source = { burst = 3, per_minute = 6 } }").expect("inline");
    assert_eq!(c.limits.enroll_per_source.per_minute, 6);
    assert_eq!(c.limits.token_uses, 1, "unset keys keep their default");
    let e = load("data_dir = \"d\"\n[limits]\ntoken_uses = 0").expect_err("zero");
    assert!(e.to_string().contains("'limits.token_uses'"), "{e}");
    let e =
        load("data_dir = \"d\"\n[limits.auth_failures_per_source]\nburst = 0\nper_minute = 1").expect_err("zero burst");
    assert!(e.to_string().contains("'limits.auth_failures_per_source'"), "{e}");
}

#[test]
fn the_store_is_sled_unless_etcd_is_named_and_etcd_settings_are_checked() {
    assert_eq!(load("data_dir = \"d\"").expect("valid").store, Backend::Sled);
    let c =
        load("data_dir = \"d\"\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]").expect("valid");
    let Backend::Etcd(e) = c.store else {
        panic!("etcd: {:?}", c.store)
    };
    assert_eq!(e.prefix, "fleet/");
    assert_eq!(e.timeout, Duration::from_secs(5));
    assert_eq!(e.tls, None);
    let c = load(
        "data_dir = \"d\"\n[store]\nbackend = \"etcd\"\nendpoints = [\"https://e1:2379\", \"https://e2:2379\"]\n\
         prefix = \"fleet/prod/\"\nca = \"etcd/ca.pem\"\ncert = \"/etc/fleet/etcd.pem\"\nkey = \"etcd.key\"\ntimeout = \"2s\"",
    )
    .expect("valid");
    let Backend::Etcd(e) = c.store else {
        panic!("etcd: {:?}", c.store)
    };
    let tls = e.tls.expect("tls");
    assert_eq!(
        tls.ca,
        PathBuf::from("/etc/fleet/etcd/ca.pem"),
        "relative to the config's dir"
    );
    assert_eq!(tls.cert, PathBuf::from("/etc/fleet/etcd.pem"));
    assert_eq!((e.prefix.as_str(), e.timeout), ("fleet/prod/", Duration::from_secs(2)));
    for (text, key) in [
        ("backend = \"etcd\"", "'store.endpoints'"),
        (
            "backend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]",
            "'store.endpoints'",
        ),
        ("backend = \"etcd\"\nendpoints = [\"https://e:2379\"]", "'store.ca'"),
        (
            "backend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nca = \"ca.pem\"",
            "'store.ca'",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nprefix = \"fleet\"",
            "'store.prefix'",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"http://e:2379\"]\ntimeout = \"1ms\"",
            "'store.timeout'",
        ),
        ("backend = \"sled\"\nendpoints = [\"http://e:2379\"]", "'store.backend'"),
        ("backend = \"postgres\"", "'store.backend'"),
    ] {
        let e = load(&format!("data_dir = \"d\"\n[store]\n{text}")).expect_err(text);
        assert!(e.to_string().contains(key), "{text}: {e}");
    }
    assert!(load("data_dir = \"d\"\n[store]\nbogus = 1").is_err(), "unknown key");
}
