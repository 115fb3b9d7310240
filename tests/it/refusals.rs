//! Bad input, each refused with a message that names the cause and the fix,
//! and nothing in the store changed.

use std::process::Command;
use std::time::Duration;

use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::transport::{certs_from_pem, client_config, connect, explain, key_from_pem, ClientIdentity, Trust};
use fleet_proto::{agent_message, controller_message, AgentMessage, Hello};

use crate::harness::{bin, free_addr, wait_until, Controller, Fleet};

/// Opens an agent stream to the fleet's controller with `identity_pem`
/// (certificate then key), sends hello for `host_id`, and waits for welcome.
/// Err carries the operator-facing reason.
pub fn raw_stream(fleet: &Fleet, identity_pem: Option<&str>, host_id: &str) -> Result<(), String> {
    let ca_pem = std::fs::read_to_string(fleet.controller.data_dir.join("ca.pem")).expect("ca.pem");
    let ca = certs_from_pem("ca", &ca_pem).expect("ca cert").remove(0);
    let identity = identity_pem.map(|pem| ClientIdentity {
        chain: certs_from_pem("identity", pem).expect("identity cert"),
        key: key_from_pem("identity", pem).expect("identity key"),
    });
    let addr = fleet.controller.addr.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let config = client_config(Trust::Ca(ca), identity).map_err(|e| e.to_string())?;
        let channel = connect(&addr, config).await.map_err(|e| e.to_string())?;
        let hello = AgentMessage {
            body: Some(agent_message::Body::Hello(Hello {
                host_id: host_id.into(),
                ..Default::default()
            })),
        };
        let outbound = tokio_stream::iter(vec![hello]).chain(tokio_stream::pending());
        let mut inbound = AgentServiceClient::new(channel)
            .stream(outbound)
            .await
            .map_err(|s| format!("{}: {}", explain(&s, &addr), s.message()))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(m)) if matches!(m.body, Some(controller_message::Body::Welcome(_))) => Ok(()),
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(s) => Err(format!("{}: {}", explain(&s, &addr), s.message())),
        }
    })
}

use tokio_stream::StreamExt;

/// What must not change when bad input is refused.
fn snapshot(fleet: &Fleet) -> (serde_json::Value, serde_json::Value) {
    let mut hosts = fleet.fleetctl_json(&["hosts", "ls"]);
    // Live fields move with heartbeats; the stored facts must not.
    for h in hosts.as_array_mut().expect("array") {
        for k in [
            "last_seen_ms",
            "last_seen",
            "cpu_percent",
            "load1",
            "memory_used_bytes",
            "disk_free_bytes",
            "uptime_secs",
            "agent_rss_bytes",
        ] {
            h.as_object_mut().expect("object").remove(k);
        }
    }
    (hosts, fleet.fleetctl_json(&["token", "ls", "--all"]))
}

#[test]
fn bad_join_tokens_are_refused_and_change_nothing() {
    let mut fleet = Fleet::start(1);
    let good = fleet.token(&["--uses", "1"]);
    fleet.add_agent("web-2", &good, &[]);
    fleet.wait_connected(2, Duration::from_secs(30));
    // `good` is used up now.
    let revoked = fleet.token(&[]);
    let revoked_id = revoked
        .trim_start_matches("fleet_jt_")
        .split('.')
        .next()
        .expect("id")
        .to_string();
    let out = fleet.fleetctl(&["token", "revoke", &revoked_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expired = fleet.token(&["--ttl", "1s"]);
    let (good_id, _) = good.trim_start_matches("fleet_jt_").split_once('.').expect("token");
    let wrong_secret = format!("fleet_jt_{good_id}.{}", "0".repeat(48));
    std::thread::sleep(Duration::from_millis(1500));
    let before = snapshot(&fleet);

    let cases = [
        ("used-up", good.clone(), "used up"),
        ("revoked", revoked, "revoked"),
        ("expired", expired, "expired"),
        ("wrong-secret", wrong_secret, "does not match"),
        (
            "unknown",
            format!("fleet_jt_{}.{}", "f".repeat(12), "a".repeat(48)),
            "unknown",
        ),
        ("malformed", "not-a-token".to_string(), "is not a join token"),
    ];
    for (name, token, expect) in cases {
        let i = fleet.add_agent(name, &token, &[]);
        let code = fleet.agents[i].wait_exit(Duration::from_secs(20));
        let log = fleet.agents[i].log_text();
        // A malformed token is caught in the config (2); the others by the controller (3).
        let want = if name == "malformed" { 2 } else { 3 };
        assert_eq!(code, Some(want), "agent with a {name} token:\n{log}");
        assert!(
            log.contains(expect),
            "agent with a {name} token must say '{expect}':\n{log}"
        );
        assert!(
            log.contains("fleetctl token create"),
            "the {name} refusal says what to do:\n{log}"
        );
        assert!(
            !log.contains(&token) || name == "malformed",
            "the token never reaches a log line:\n{log}"
        );
    }
    assert_eq!(snapshot(&fleet), before, "refused enrollments changed the store");
}

#[test]
fn certificates_from_another_ca_or_none_are_refused() {
    let fleet = Fleet::start(1);
    let host_id = fleet.agents[0].host_id().expect("host id");

    // A client certificate naming a real host, but signed by another CA.
    let other_ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = rcgen::CertifiedIssuer::self_signed(ca_params, other_ca_key).expect("other CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host_id.as_str());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &other_ca).expect("signed");
    let forged = format!("{}{}", cert.pem(), key.serialize_pem());
    let err = raw_stream(&fleet, Some(&forged), &host_id).expect_err("foreign CA refused");
    assert!(err.contains("refused"), "{err}");

    // No client certificate at all: TLS lets it in (enrollment needs that),
    // the agent stream does not.
    let err = raw_stream(&fleet, None, &host_id).expect_err("no cert refused");
    assert!(err.contains("client certificate"), "{err}");

    // The real identity still works.
    let identity = std::fs::read_to_string(fleet.agents[0].dir.join("state/identity.pem")).expect("identity");
    raw_stream(&fleet, Some(&identity), &host_id).expect("the real identity is accepted");
    // ...but not for another host's id.
    let err = raw_stream(&fleet, Some(&identity), "someone-else").expect_err("hello for another host");
    assert!(err.contains("belongs to host"), "{err}");
    let metrics = fleet.controller.metrics_text();
    assert!(
        metrics.contains("fleet_tls_refused_total{reason=\"unknown_ca\"}"),
        "{metrics}"
    );
}

#[test]
fn an_unreachable_controller_is_named_and_retried() {
    let root = tempfile::tempdir().expect("tmp");
    let dead = free_addr();
    let mut agent = crate::harness::Agent::new(
        root.path(),
        "lonely",
        &dead.to_string(),
        &format!("sha256:{}", "a".repeat(64)),
        "fleet_jt_abc.def",
        &[],
    );
    agent.start();
    wait_until(
        Duration::from_secs(20),
        "the agent to log an unreachable controller twice",
        || (agent.log_text().matches("cannot reach the controller").count() >= 2).then_some(()),
    );
    assert!(
        agent
            .child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "it keeps retrying"
    );
    agent.kill9();

    // fleetctl against the dead address, trusting `ca`.
    let fleetctl_at_dead = |ca: &std::path::Path| {
        Command::new(bin("fleetctl"))
            .args([
                "hosts",
                "ls",
                "--controller",
                &dead.to_string(),
                "--token",
                "fleet_op_a.b",
                "--ca",
            ])
            .arg(ca)
            .env_remove("FLEET_CONFIG")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", root.path())
            .output()
            .expect("fleetctl")
    };
    let out = fleetctl_at_dead(&root.path().join("nope.pem"));
    // A missing CA file is a configuration error (2), named.
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.pem"));

    let ctl = Controller::init(root.path(), &[]);
    let out = fleetctl_at_dead(&ctl.data_dir.join("ca.pem"));
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the controller"));
}

#[test]
fn fleetctl_refuses_a_wrong_token_and_a_wrong_ca() {
    let fleet = Fleet::controller_only(&[]);
    let other = tempfile::tempdir().expect("tmp");
    let other_ctl = Controller::init(other.path(), &[]);
    let addr = fleet.controller.addr.to_string();
    let home = fleet.root.path().to_path_buf();
    let run = |token: &str, ca: &std::path::Path| {
        Command::new(bin("fleetctl"))
            .args(["hosts", "ls", "--controller", &addr, "--token", token, "--ca"])
            .arg(ca)
            .env_remove("FLEET_CONFIG")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", &home)
            .output()
            .expect("fleetctl")
    };
    let good_ca = fleet.controller.data_dir.join("ca.pem");
    let out = run("fleet_op_000000000000.0000", &good_ca);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid on this controller"));

    let admin = std::fs::read_to_string(&fleet.controller.fleetctl_config).expect("fleetctl.toml");
    let token = admin
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .expect("token line")
        .trim_end_matches('"');
    let out = run(token, &other_ctl.data_dir.join("ca.pem"));
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not trust"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(token, &good_ca).status.success());
}

/// Runs `program args…`, asserting it exits `code` and its stderr names every one of `needles`.
fn refused(program: &str, args: &[&std::ffi::OsStr], envs: &[(&str, &std::path::Path)], code: i32, needles: &[&str]) {
    let mut cmd = Command::new(bin(program));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{program} {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{program} {args:?} must say '{n}': {err}");
    }
}

#[test]
fn corrupt_configs_and_foreign_data_dirs_are_refused() {
    let root = tempfile::tempdir().expect("tmp");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    // Agent: a truncated config.
    let agent_cfg = root.path().join("agent.toml");
    std::fs::write(&agent_cfg, "controller = \"127.0.0.1:1\"\nca_fingerprint = \"sha256:ab").expect("write");
    let agent_args = [os("run"), os("--config"), agent_cfg.as_os_str()];
    refused("fleet-agent", &agent_args, &[], 2, &["agent.toml"]);

    // Agent: a valid TOML with a bad fingerprint.
    let state = root.path().join("s");
    let text = format!(
        "controller = \"127.0.0.1:1\"\nca_fingerprint = \"md5:00\"\njoin_token = \"fleet_jt_a.b\"\nstate_dir = \"{}\"\n",
        state.display()
    );
    std::fs::write(&agent_cfg, text).expect("write");
    refused("fleet-agent", &agent_args, &[], 2, &["ca_fingerprint"]);

    // Controller: unknown key.
    let ctl_cfg = root.path().join("controller.toml");
    let serve_args = [os("serve"), os("--config"), ctl_cfg.as_os_str()];
    std::fs::write(&ctl_cfg, "data_dir = \"/tmp\"\nlistn = \"0.0.0.0:1\"\n").expect("write");
    refused("fleet-controller", &serve_args, &[], 2, &["controller.toml", "listn"]);

    // Controller: a data dir that is not one.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let text = format!(
        "data_dir = \"{}\"\nlisten = \"{}\"\nmetrics_listen = \"{}\"\n",
        empty.display(),
        free_addr(),
        free_addr()
    );
    std::fs::write(&ctl_cfg, text).expect("write");
    refused(
        "fleet-controller",
        &serve_args,
        &[],
        2,
        &["not a fleet-controller data dir", "fleet-controller init"],
    );
    assert_eq!(
        std::fs::read_dir(&empty).expect("ls").count(),
        0,
        "serve wrote nothing into a foreign dir"
    );

    // init refuses to overwrite a data dir.
    let ctl = Controller::init(root.path(), &[]);
    let ca_before = std::fs::read(ctl.data_dir.join("ca.pem")).expect("ca");
    let init_args = [os("init"), os("--data-dir"), ctl.data_dir.as_os_str()];
    refused("fleet-controller", &init_args, &[], 2, &["refusing to overwrite"]);
    assert_eq!(std::fs::read(ctl.data_dir.join("ca.pem")).expect("ca"), ca_before);

    // fleetctl: a corrupt config file.
    let bad = root.path().join("fleetctl.toml");
    std::fs::write(&bad, "controller = [1, 2").expect("write");
    refused(
        "fleetctl",
        &[os("hosts"), os("ls")],
        &[("FLEET_CONFIG", &bad)],
        2,
        &["fleetctl.toml"],
    );
}
