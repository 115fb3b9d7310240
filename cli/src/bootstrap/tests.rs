use russh::keys::PublicKey;

use super::ssh::*;
use super::*;

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICdmGdxtkJvW8ISvm6ASmJ5fwXo+0EqDV9WOgweCF6Eh";
const KEY_B: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEwMbsByiDoqQiXZV0HHyreiNKP15UwmS8t+INhSgaWp1QS5JJhSjCBWACT/3HeVyttc4PwCosNWJqqfTYtf9uA=";

fn check(known_hosts: &std::path::Path, port: u16, accept_new: bool) -> HostKeyCheck {
    HostKeyCheck {
        host: "web-1".into(),
        port,
        label: "ubuntu@web-1".into(),
        known_hosts: known_hosts.to_path_buf(),
        accept_new,
        lock: Arc::new(Mutex::new(())),
        refusal: Arc::new(Mutex::new(None)),
    }
}

#[test]
fn host_keys_follow_accept_new_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ssh/known_hosts");
    let a = PublicKey::from_openssh(KEY_A).expect("key a");
    let b = PublicKey::from_openssh(KEY_B).expect("key b");

    // Unknown, no --accept-new: refused, nothing written.
    let err = check(&file, 2222, false).verdict(&a).expect_err("unknown");
    assert!(matches!(err, HostError::UnknownHostKey { .. }), "{err}");
    assert!(!file.exists());

    // Unknown with --accept-new: recorded as ssh writes it, then known.
    check(&file, 2222, true).verdict(&a).expect("accepted");
    let text = std::fs::read_to_string(&file).expect("written");
    assert_eq!(text, format!("[web-1]:2222 {KEY_A}\n"));
    check(&file, 2222, false).verdict(&a).expect("known now");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), text, "no duplicate line");

    // Another key for the same host, even of another type: changed, refused
    // with --accept-new too, and the file is left alone.
    let err = check(&file, 2222, true).verdict(&b).expect_err("changed");
    assert!(matches!(err, HostError::ChangedHostKey { line: 1, .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), text);

    // Port 22 is a different entry, written as the bare host name.
    check(&file, 22, true).verdict(&b).expect("accepted on port 22");
    assert!(std::fs::read_to_string(&file)
        .expect("read")
        .ends_with(&format!("\nweb-1 {KEY_B}\n")));
}

#[test]
fn targets_parse() {
    let t = parse_target("ubuntu@web-1", None, 22).expect("parse");
    assert_eq!((t.user.as_str(), t.host.as_str(), t.port), ("ubuntu", "web-1", 22));
    let t = parse_target("web-1:2222", Some("admin"), 22).expect("parse");
    assert_eq!((t.user.as_str(), t.host.as_str(), t.port), ("admin", "web-1", 2222));
    let t = parse_target("root@[::1]:2200", None, 22).expect("parse");
    assert_eq!((t.host.as_str(), t.port), ("::1", 2200));
    let t = parse_target("u@::1", None, 22).expect("parse");
    assert_eq!((t.host.as_str(), t.port), ("::1", 22));
    assert_eq!(t.to_string(), "u@::1");
    for bad in ["web-1", "u@", "u@h:0", "u@h:x", "u@[::1"] {
        let err = parse_target(bad, None, 22).expect_err(bad);
        assert!(err.contains(bad), "{err}");
    }
}

#[test]
fn the_login_is_the_identity_given_else_the_agent_else_the_default_key() {
    let default = std::path::PathBuf::from("/home/u/.ssh/id_ed25519");
    let given = std::path::Path::new("/keys/ci");
    assert_eq!(
        login_source(Some(given), Some("/run/agent.sock"), default.clone()),
        LoginSource::Identity(given.to_path_buf()),
        "--identity wins over an agent"
    );
    assert_eq!(
        login_source(None, Some("/run/agent.sock"), default.clone()),
        LoginSource::Agent {
            socket: "/run/agent.sock".into(),
            fallback: default.clone()
        }
    );
    assert_eq!(
        login_source(None, Some(""), default.clone()),
        LoginSource::DefaultKey(default.clone())
    );
    assert_eq!(
        login_source(None, None, default.clone()),
        LoginSource::DefaultKey(default)
    );
}

#[tokio::test]
async fn an_unusable_agent_falls_back_to_the_key_file_and_says_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = login(LoginSource::Agent {
        socket: dir.path().join("no-agent.sock"),
        fallback: dir.path().join("id_ed25519"),
    })
    .await
    .err()
    .expect("no agent and no key");
    let text = e.to_string();
    assert!(
        text.contains("no-agent.sock cannot be used") && text.contains("id_ed25519") && text.contains("ssh-add"),
        "{text}"
    );
}
