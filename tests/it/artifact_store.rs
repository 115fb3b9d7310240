//! The artifact store keeps only verified bytes and heals: a push with a
//! wrong digest or that is not a release leaves nothing; a killed push's temp
//! file is removed at start; a damaged artifact is found by `fleet-controller
//! check` and when it is served, and repaired by pushing the same bytes again;
//! the agent gives up on it at once instead of retrying for 15 minutes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fleet_proto::release_service_client::ReleaseServiceClient;
use fleet_proto::transport::{certs_from_pem, client_config, connect, Trust};
use fleet_proto::{PushReleaseChunk, ReleaseHeader};
use tokio::sync::mpsc;

use crate::harness::{bin, wait_until, Fleet};
use crate::releases::{assert_success, json, release, Host, APP};

const WEB: &str = "web";

fn sha256_hex(bytes: &[u8]) -> String {
    fleet_proto::transport::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}

fn artifacts_dir(fleet: &Fleet) -> PathBuf {
    fleet.controller.data_dir.join("artifacts")
}

/// The names in the artifact directory, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn create_app(fleet: &Fleet) {
    let out = fleet.fleetctl(&[
        "app",
        "create",
        WEB,
        "--unit",
        "fleet-app-web.service",
        "--selector",
        "role=web",
    ]);
    assert_success(&out, "app create");
}

/// `fleetctl release push APP FILE --release V -o json` of `bytes` saved as `name`.
fn push(fleet: &Fleet, app: &str, version: &str, name: &str, bytes: &[u8]) -> Output {
    let path = fleet.root.path().join(name);
    std::fs::write(&path, bytes).expect("write release file");
    fleet.fleetctl(&[
        "release",
        "push",
        app,
        path.to_str().expect("utf-8"),
        "--release",
        version,
        "--output",
        "json",
    ])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Adds the admin's bearer token.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// A gRPC client of the release service as the admin, on its own runtime.
struct Raw {
    rt: tokio::runtime::Runtime,
    client: ReleaseServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>,
}

impl Raw {
    fn new(fleet: &Fleet) -> Raw {
        let token = fleet.controller.admin_token();
        let ca_pem = std::fs::read_to_string(fleet.controller.data_dir.join("ca.pem")).expect("ca.pem");
        let ca = certs_from_pem("ca", &ca_pem).expect("ca cert").remove(0);
        let addr = fleet.controller.addr.to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let channel = rt.block_on(async {
            connect(&addr, client_config(Trust::Ca(ca), None).expect("client config"))
                .await
                .expect("connect")
        });
        let bearer = Bearer(format!("Bearer {token}").parse().expect("header"));
        Raw {
            client: ReleaseServiceClient::with_interceptor(channel, bearer),
            rt,
        }
    }

    /// Pushes `data` under a header announcing `sha256`; the refusal as
    /// (code, message).
    fn push(&mut self, version: &str, sha256: &str, data: &[u8]) -> Result<(), (tonic::Code, String)> {
        let header = header(version, sha256, data.len() as u64);
        let chunks = vec![PushReleaseChunk {
            header: Some(header),
            data: data.to_vec(),
        }];
        let client = &mut self.client;
        self.rt.block_on(async move {
            client
                .push_release(tokio_stream::iter(chunks))
                .await
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_string()))
        })
    }
}

fn header(version: &str, sha256: &str, size: u64) -> ReleaseHeader {
    ReleaseHeader {
        app: WEB.into(),
        version: version.into(),
        sha256: sha256.into(),
        size,
        metadata: Default::default(),
        format: "tar.gz".into(),
        signature: None,
    }
}

#[test]
fn only_verified_archives_are_stored_and_leftovers_are_removed_at_start() {
    let mut fleet = Fleet::controller_only(&[]);
    create_app(&fleet);
    let dir = artifacts_dir(&fleet);
    let good = release("1.0.0", &[]).gz();
    let good_sha = sha256_hex(&good);

    // A wrong digest: refused, and nothing left under any name.
    let mut raw = Raw::new(&fleet);
    let wrong = sha256_hex(b"other bytes");
    let (code, msg) = raw.push("1.0.0", &wrong, &good).expect_err("a wrong digest is refused");
    assert_eq!(code, tonic::Code::DataLoss, "{msg}");
    assert!(msg.contains(&good_sha) && msg.contains(&wrong), "{msg}");
    assert_eq!(files(&dir), Vec::<String>::new(), "a refused push leaves no file");

    // What is not a release is refused by name, and leaves nothing.
    let tar = release("1.0.0", &[]).bytes();
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("empty.tar.gz", Vec::new(), "empty (0 bytes)"),
        (
            "text.tar.gz",
            gz(b"just some text, not a tar archive\n"),
            "is not a tar.gz archive",
        ),
        ("zeros.tar.gz", gz(&[0u8; 1024]), "has no entries"),
        ("gzip.tar.zst", good.clone(), "its bytes are tar.gz"),
        ("plain.tar.zst", tar, "neither gzip nor zstd"),
        ("text.tar.zst", zst(&[b'x'; 4096]), "is not a tar.zst archive"),
    ];
    for (name, bytes, says) in cases {
        let out = push(&fleet, WEB, "1.0.0", name, &bytes);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr(&out).contains(says), "{name}: {}", stderr(&out));
        assert_eq!(files(&dir), Vec::<String>::new(), "{name} left a file");
    }
    assert_eq!(fleet.fleetctl_json(&["release", "ls", WEB]), serde_json::json!([]));

    let out = push(&fleet, WEB, "1.0.0", "v1.tar.gz", &good);
    assert_success(&out, "push v1");
    assert_eq!(json(&out)["outcome"], "stored");

    // A push killed mid-upload leaves its temp file; the next start removes
    // it, and an artifact no release names, and keeps the stored one.
    let big = release("2.0.0", &[("pad", &"p".repeat(1 << 20), 0o644)]).gz();
    let (tx, rx) = mpsc::channel::<PushReleaseChunk>(4);
    let mut client = raw.client.clone();
    let pending = raw.rt.spawn(async move {
        let _ = client
            .push_release(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
    });
    raw.rt.block_on(async {
        let mut h = header("2.0.0", &sha256_hex(&big), big.len() as u64);
        h.format = "tar.gz".into();
        tx.send(PushReleaseChunk {
            header: Some(h),
            data: big[..big.len() / 2].to_vec(),
        })
        .await
        .expect("send the first half");
    });
    wait_until(Duration::from_secs(10), "the upload's temp file", || {
        files(&dir).into_iter().find(|n| n.starts_with(".upload-"))
    });
    fleet.controller.kill9();
    drop(tx);
    pending.abort();
    let orphan = "ab".repeat(32);
    std::fs::write(dir.join(&orphan), b"named by no release").expect("orphan");
    assert_eq!(files(&dir).len(), 3, "{:?}", files(&dir));
    fleet.controller.start();
    assert_eq!(
        files(&dir),
        vec![good_sha.clone()],
        "only the verified, named artifact is kept"
    );
    let log = std::fs::read_to_string(&fleet.controller.log).unwrap_or_default();
    assert!(log.contains("push that never finished"), "{log}");
}

/// Runs `fleet-controller check --config` and returns (exit code, stdout, stderr).
fn check(fleet: &Fleet) -> (Option<i32>, String, String) {
    let out = Command::new(bin("fleet-controller"))
        .args(["check", "--config"])
        .arg(&fleet.controller.config)
        .output()
        .expect("run fleet-controller check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(path, bytes).expect("corrupt artifact");
}

#[test]
fn check_finds_damaged_artifacts_and_pushing_the_same_bytes_repairs_them() {
    let mut fleet = Fleet::controller_only(&[]);
    create_app(&fleet);
    let dir = artifacts_dir(&fleet);
    let v1 = release("1.0.0", &[]).gz();
    let v2 = release("2.0.0", &[]).zst();
    let v3 = release("3.0.0", &[]).gz();
    for (v, name, bytes) in [
        ("1.0.0", "v1.tar.gz", &v1),
        ("2.0.0", "v2.tar.zst", &v2),
        ("3.0.0", "v3.tar.gz", &v3),
    ] {
        assert_success(&push(&fleet, WEB, v, name, bytes), "push");
    }
    let (sha1, sha2, sha3) = (sha256_hex(&v1), sha256_hex(&v2), sha256_hex(&v3));

    // check reads the store itself: refused while the controller holds it.
    let (code, _, err) = check(&fleet);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("stop the controller first"), "{err}");

    fleet.controller.kill9();
    let (code, out, err) = check(&fleet);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("3 releases, every artifact present and intact"), "{out}");

    flip_last_byte(&dir.join(&sha1));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(&sha2))
        .expect("open v2");
    f.set_len(10).expect("truncate v2");
    std::fs::remove_file(dir.join(&sha3)).expect("remove v3");
    let (code, out, err) = check(&fleet);
    assert_eq!(code, Some(1), "{out}{err}");
    for line in [
        format!("corrupt   {WEB} 1.0.0 sha256 {sha1}"),
        format!("truncated {WEB} 2.0.0 sha256 {sha2}"),
        format!("missing   {WEB} 3.0.0 sha256 {sha3}"),
        "3 of 3 releases have a missing or damaged artifact".to_string(),
        format!("fleetctl release push {WEB} FILE --release 2.0.0"),
    ] {
        assert!(out.contains(&line), "no '{line}' in:\n{out}");
    }

    // Pushing the same bytes again puts each back; then it is a no-op.
    // (The start sweeps nothing here: every damaged file is still named.)
    fleet.controller.start();
    for (v, name, bytes) in [
        ("1.0.0", "v1.tar.gz", &v1),
        ("2.0.0", "v2.tar.zst", &v2),
        ("3.0.0", "v3.tar.gz", &v3),
    ] {
        let out = push(&fleet, WEB, v, name, bytes);
        assert_success(&out, "push again");
        assert_eq!(json(&out)["outcome"], "repaired", "{v}");
        let out = push(&fleet, WEB, v, name, bytes);
        assert_success(&out, "push a third time");
        assert_eq!(json(&out)["outcome"], "unchanged", "{v}");
    }
    // Other bytes under the same version stay refused, damaged or not.
    flip_last_byte(&dir.join(&sha1));
    let out = push(&fleet, WEB, "1.0.0", "v1-other.tar.gz", &release("1.0.1", &[]).gz());
    assert!(stderr(&out).contains("immutable"), "{}", stderr(&out));
    assert_success(&push(&fleet, WEB, "1.0.0", "v1.tar.gz", &v1), "repair v1 again");

    fleet.controller.kill9();
    let (code, out, err) = check(&fleet);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(std::fs::read(dir.join(&sha1)).expect("v1"), v1);
    assert_eq!(std::fs::read(dir.join(&sha2)).expect("v2"), v2);
}

#[test]
fn a_damaged_artifact_is_refused_at_download_and_the_agent_gives_up_at_once() {
    let host = Host::start("");
    let v1 = release("1.0.0", &[]).gz();
    let sha = sha256_hex(&v1);
    assert_success(&host.push("1.0.0", "v1.tar.gz", &v1), "push v1");
    let stored = host.fleet.controller.data_dir.join("artifacts").join(&sha);

    // Same size, other bytes; then cut short (which used to make the agent
    // resume for 15 minutes).
    for damage in ["corrupt", "truncate"] {
        match damage {
            "corrupt" => flip_last_byte(&stored),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .open(&stored)
                .and_then(|f| f.set_len(v1.len() as u64 / 2))
                .expect("truncate"),
        }
        let started = Instant::now();
        let out = host.deploy("1.0.0");
        assert!(!out.status.success(), "{damage}: deployed a damaged artifact");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{damage}: took {:?}",
            started.elapsed()
        );
        let v = json(&out);
        assert_eq!(v["cause"], "download failed", "{damage}: {v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&sha), "{damage}: {detail}");
        assert!(
            detail.contains(&format!("fleetctl release push {APP} FILE --release 1.0.0")),
            "{damage}: {detail}"
        );
        assert!(!host.app_dir().join("releases/1.0.0").exists());
        let metrics = host.fleet.controller.metrics_text();
        assert!(
            metrics.lines().any(|l| l.starts_with("fleet_artifacts_corrupt_total ")
                && l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) >= 1),
            "{damage}: {metrics}"
        );
        // Repaired by pushing the same file again.
        let out = host.push("1.0.0", "v1.tar.gz", &v1);
        assert_success(&out, "repair");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("repaired"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(std::fs::read(&stored).expect("stored"), v1);
    }
    let out = host.deploy("1.0.0");
    assert_success(&out, "deploy the repaired release");
    assert_eq!(host.version_served().as_deref(), Some("1.0.0"));
}

#[test]
fn release_rm_is_refused_while_in_use_and_collects_the_artifact_nothing_names() {
    let mut host = Host::start("");
    let v1 = release("1.0.0", &[]).gz();
    let v2 = release("2.0.0", &[]).gz();
    let v3 = release("3.0.0", &[]).zst();
    let (sha1, sha2, sha3) = (sha256_hex(&v1), sha256_hex(&v2), sha256_hex(&v3));
    assert_success(&host.push("1.0.0", "v1.tar.gz", &v1), "push v1");
    // The same bytes under a second version: one file, two names.
    assert_success(&host.push("1.0.0-again", "v1.tar.gz", &v1), "push v1 again");
    assert_success(&host.push("2.0.0", "v2.tar.gz", &v2), "push v2");
    assert_success(&host.push("3.0.0", "v3.tar.zst", &v3), "push v3");
    let dir = host.fleet.controller.data_dir.join("artifacts");
    let rm = |version: &str| {
        host.fleet
            .fleetctl(&["release", "rm", APP, version, "--yes", "--output", "json"])
    };

    assert_success(&host.deploy("1.0.0"), "deploy v1");
    let out = rm("1.0.0");
    assert!(!out.status.success(), "deleted a release a host runs");
    let err = stderr(&out);
    assert!(err.contains("demo 1.0.0 is in use") && err.contains("runs it"), "{err}");
    assert!(dir.join(&sha1).is_file());

    // Once the host moved on, v1 goes; its bytes stay while 1.0.0-again
    // names them, and go with it.
    assert_success(&host.deploy("2.0.0"), "deploy v2");
    let out = rm("1.0.0");
    assert_success(&out, "rm 1.0.0");
    assert_eq!(
        json(&out)["artifact_removed"],
        false,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(dir.join(&sha1).is_file(), "1.0.0-again still names the bytes");
    let out = rm("1.0.0-again");
    assert_success(&out, "rm 1.0.0-again");
    assert_eq!(json(&out)["artifact_removed"], true);
    assert!(!dir.join(&sha1).exists(), "an artifact no release names is removed");

    // The host's running (and desired) release stays.
    let out = rm("2.0.0");
    assert!(!out.status.success(), "deleted the running release");
    assert!(stderr(&out).contains("runs it"), "{}", stderr(&out));

    // Never deployed: deleted at once, file and all.
    assert_success(&rm("3.0.0"), "rm 3.0.0");
    assert!(!dir.join(&sha3).exists());
    let out = rm("3.0.0");
    assert!(stderr(&out).contains("has no release 3.0.0"), "{}", stderr(&out));

    // Audited, refusals included (before the restart: audit entries are
    // durable within sled's flush interval, see `audit`).
    let audit = host.fleet.fleetctl_json(&["audit"]);
    let deletes = audit
        .as_array()
        .expect("audit entries")
        .iter()
        .filter(|e| e["what"] == "ReleaseService/DeleteRelease")
        .count();
    assert_eq!(deletes, 6, "{audit}");

    // Durable: a restarted controller has the same releases and files.
    host.fleet.controller.kill9();
    host.fleet.controller.start();
    let listed: Vec<String> = host
        .fleet
        .fleetctl_json(&["release", "ls", APP])
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| r["version"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, vec!["2.0.0".to_string()]);
    assert_eq!(files(&dir), vec![sha2]);
}
