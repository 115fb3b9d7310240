//! Stress: an enrollment burst (an autoscaling group coming up with one join
//! token), operator writes and certificate renewals at once, three rounds in
//! a row, against the real controller binary. Issue 11: with sled 0.34's
//! concurrent `flush_async` this froze the controller after a few dozen
//! answers, and left token uses spent without a host.
//!
//! The enrollment client is the agent's protocol without the agent: a fresh
//! key and CSR per call (rcgen), `Enrollment/Enroll` over TLS that pins the
//! CA's fingerprint, one new connection per call as real hosts make.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::enrollment_client::EnrollmentClient;
use fleet_proto::transport::{certs_from_pem, client_config, connect, key_from_pem, ClientIdentity, Trust};
use fleet_proto::{
    agent_message, controller_message, AgentMessage, EnrollRequest, FetchArtifactRequest, Hello, HostFacts,
    RenewRequest,
};
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::{http_get_status, Fleet};

/// Rounds in a row, each a full burst.
const ROUNDS: usize = 3;
/// Enrollments per round (before the flusher, the controller froze after
/// about 165 of the first round).
const ENROLLMENTS_PER_ROUND: usize = 500;
/// Concurrent enrollment callers.
const PARALLEL: usize = 32;
/// Hosts renewing their certificate in a loop on their stream during each burst.
const RENEWERS: usize = 4;
/// One call's deadline: a healthy controller answers in well under a second.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// A round's deadline: past it the controller is frozen.
const ROUND_DEADLINE: Duration = Duration::from_secs(60);
/// How long `whoami` may take while the burst runs.
const WHOAMI_TIMEOUT: Duration = Duration::from_secs(10);

/// An answered enrollment: the identity a host would store.
#[derive(Clone)]
pub struct Enrolled {
    /// The host id.
    pub host_id: String,
    /// Expiry of its certificate.
    pub not_after_ms: i64,
    /// Certificate then private key (PEM), as the agent's identity.pem.
    pub identity_pem: String,
}

/// A fresh P-256 key and a CSR for it.
pub fn key_and_csr(name: &str) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("generate key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key).expect("CSR");
    (key, csr.der().to_vec())
}

/// One enrollment over a new connection; `Err` says what went wrong.
pub async fn enroll_one(addr: &str, ca_fingerprint: &str, token: &str, n: usize) -> Result<Enrolled, String> {
    let name = format!("stress-{n}");
    let (key, csr_der) = key_and_csr(&name);
    let tls = client_config(Trust::PinnedFingerprint(ca_fingerprint.to_string()), None).map_err(|e| e.to_string())?;
    let call = async {
        let channel = connect(addr, tls).await.map_err(|e| format!("connect: {e}"))?;
        EnrollmentClient::new(channel)
            .enroll(EnrollRequest {
                token: token.to_string(),
                csr_der,
                facts: Some(HostFacts {
                    hostname: name.clone(),
                    ..Default::default()
                }),
                labels: Default::default(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))??
        .into_inner();
    if response.host_id.is_empty() || !response.certificate_pem.contains("BEGIN CERTIFICATE") {
        return Err(format!("answer without a host id or certificate: {response:?}"));
    }
    Ok(Enrolled {
        host_id: response.host_id,
        not_after_ms: response.not_after_ms,
        identity_pem: format!("{}{}", response.certificate_pem, key.serialize_pem()),
    })
}

/// The mTLS client configuration of an enrolled host.
pub fn host_tls(ca_pem: &str, host: &Enrolled) -> Arc<rustls::ClientConfig> {
    let ca = certs_from_pem("ca", ca_pem).expect("ca.pem").remove(0);
    let identity = ClientIdentity {
        chain: certs_from_pem("identity", &host.identity_pem).expect("identity cert"),
        key: key_from_pem("identity", &host.identity_pem).expect("identity key"),
    };
    client_config(Trust::Ca(ca), Some(identity)).expect("client config")
}

/// Opens `host`'s agent stream and renews its certificate in a loop until
/// `stop`; returns how many renewals were answered.
async fn renew_loop(addr: String, ca_pem: String, host: Enrolled, stop: Arc<AtomicBool>) -> Result<usize, String> {
    let channel = connect(&addr, host_tls(&ca_pem, &host))
        .await
        .map_err(|e| format!("host {} connect: {e}", host.host_id))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            host_id: host.host_id.clone(),
            ..Default::default()
        })),
    };
    tx.send(hello).await.map_err(|_| "stream closed".to_string())?;
    let mut inbound = tokio::time::timeout(
        CALL_TIMEOUT,
        AgentServiceClient::new(channel).stream(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| format!("host {}: no stream within {CALL_TIMEOUT:?}", host.host_id))?
    .map_err(|s| format!("host {} stream: {s}", host.host_id))?
    .into_inner();
    let mut renewed = 0;
    let mut welcomed = false;
    while !stop.load(Ordering::Relaxed) || !welcomed {
        if welcomed {
            let (_, csr_der) = key_and_csr(&host.host_id);
            let renew = AgentMessage {
                body: Some(agent_message::Body::Renew(RenewRequest { csr_der })),
            };
            tx.send(renew).await.map_err(|_| "stream closed".to_string())?;
        }
        // Heartbeats are not sent: the burst is shorter than three intervals.
        let msg = tokio::time::timeout(CALL_TIMEOUT, inbound.message())
            .await
            .map_err(|_| format!("host {}: no answer within {CALL_TIMEOUT:?}", host.host_id))?
            .map_err(|s| format!("host {}: {s}", host.host_id))?
            .ok_or_else(|| format!("host {}: the controller ended the stream", host.host_id))?;
        match msg.body {
            Some(controller_message::Body::Welcome(_)) => welcomed = true,
            Some(controller_message::Body::Renewed(r)) => {
                if !r.certificate_pem.contains("BEGIN CERTIFICATE") || r.not_after_ms <= 0 {
                    return Err(format!("host {}: renewal without a certificate", host.host_id));
                }
                renewed += 1;
            }
            other => return Err(format!("host {}: unexpected message {other:?}", host.host_id)),
        }
    }
    Ok(renewed)
}

/// Whether the controller honours `host`'s certificate: an mTLS call that
/// needs it gets past authentication, to the download grant check (a host
/// whose certificate is not honoured fails at TLS or is told it was removed).
async fn certificate_honoured(addr: &str, ca_pem: &str, host: &Enrolled) -> Result<(), String> {
    let channel = connect(addr, host_tls(ca_pem, host))
        .await
        .map_err(|e| format!("host {} connect: {e}", host.host_id))?;
    let r = AgentServiceClient::new(channel)
        .fetch_artifact(FetchArtifactRequest {
            sha256: "0".repeat(64),
            offset: 0,
            grant: None,
        })
        .await;
    match r {
        Err(s)
            if s.code() == tonic::Code::PermissionDenied
                && s.message().contains(&format!("host {} may not download", host.host_id)) =>
        {
            Ok(())
        }
        Err(s) => Err(format!("host {}: {:?} {}", host.host_id, s.code(), s.message())),
        Ok(_) => Err(format!("host {}: an artifact of zeros exists?", host.host_id)),
    }
}

/// What the watchers saw while a round ran.
#[derive(Default)]
struct Watch {
    failures: Vec<String>,
    healthz_checks: usize,
    healthz_max: Duration,
    whoami_checks: usize,
    whoami_max: Duration,
    operator_writes: usize,
}

/// Polls `/healthz` and `fleetctl whoami`, and makes operator writes
/// (`token create`, `hosts label`), until `stop`.
fn watch_and_write(fleet: &Fleet, label_host: &str, stop: &AtomicBool) -> Watch {
    let watch = Mutex::new(Watch::default());
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = http_get_status(fleet.controller.metrics, "/healthz");
                let took = t.elapsed();
                let mut w = watch.lock().expect("watch");
                w.healthz_checks += 1;
                w.healthz_max = w.healthz_max.max(took);
                match r {
                    Some((200, _)) => {}
                    other => w.failures.push(format!("/healthz answered {other:?} after {took:?}")),
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = fleet.fleetctl_within(&["whoami"], WHOAMI_TIMEOUT);
                let took = t.elapsed();
                let mut w = watch.lock().expect("watch");
                w.whoami_checks += 1;
                w.whoami_max = w.whoami_max.max(took);
                match r {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => w.failures.push(format!(
                        "whoami failed ({:?}): {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr)
                    )),
                    Err(e) => w.failures.push(e),
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let label = format!("stress={i}");
                let args: Vec<&str> = if i % 2 == 0 {
                    vec!["token", "create", "--ttl", "1h", "--description", "stress writer"]
                } else {
                    vec!["hosts", "label", label_host, &label]
                };
                let r = fleet.fleetctl_within(&args, Duration::from_secs(20));
                let mut w = watch.lock().expect("watch");
                match r {
                    Ok(out) if out.status.success() => w.operator_writes += 1,
                    Ok(out) => w.failures.push(format!(
                        "fleetctl {args:?} failed ({:?}): {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr)
                    )),
                    Err(e) => w.failures.push(e),
                }
            }
        });
    });
    watch.into_inner().expect("watch")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[test]
fn enrollment_burst_with_operator_writes_and_renewals() {
    // This test is about the store under load, not the rate limits: one
    // source with one token enrolls 1,500 hosts as fast as it can, and 4
    // hosts renew in a loop on their streams. With the default limits
    // (config::defaults) most of the burst would be refused with
    // RESOURCE_EXHAUSTED (real agents retry later; tests/it/quotas.rs
    // shows that), so the limits are lifted here.
    let fleet = Fleet::controller_only(&[(
        "limits",
        "{ enroll_per_source = { burst = 100000, per_minute = 1000000 }, \
         enroll_per_token = { burst = 100000, per_minute = 1000000 }, renew_min_interval = \"0s\" }",
    )]);
    let addr = fleet.controller.addr.to_string();
    let fp = fleet.controller.ca_fingerprint.clone();
    let ca_pem = std::fs::read_to_string(fleet.controller.data_dir.join("ca.pem")).expect("ca.pem");
    let total = RENEWERS + ROUNDS * ENROLLMENTS_PER_ROUND;
    let token = fleet.token(&["--label", "stress=yes", "--uses", &total.to_string(), "--ttl", "1h"]);
    let token_id = token
        .strip_prefix("fleet_jt_")
        .and_then(|t| t.split_once('.'))
        .map(|(id, _)| id.to_string())
        .expect("token id");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // The hosts that renew during the bursts enroll first, one by one.
    let renewers: Vec<Enrolled> = (0..RENEWERS)
        .map(|i| {
            rt.block_on(enroll_one(&addr, &fp, &token, 100_000 + i))
                .unwrap_or_else(|e| panic!("seed enrollment {i}: {e}\n{}", fleet.logs()))
        })
        .collect();
    let mut answered: Vec<Enrolled> = renewers.clone();

    for round in 1..=ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (burst, watch) = std::thread::scope(|s| {
            let watcher = s.spawn(|| watch_and_write(&fleet, &renewers[0].host_id, &stop));
            let burst = rt.block_on(async {
                let next = Arc::new(AtomicUsize::new(0));
                let mut workers = tokio::task::JoinSet::new();
                for _ in 0..PARALLEL {
                    let (next, addr, fp, token) = (next.clone(), addr.clone(), fp.clone(), token.clone());
                    workers.spawn(async move {
                        let mut results = Vec::new();
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= ENROLLMENTS_PER_ROUND {
                                return results;
                            }
                            let t = Instant::now();
                            let r = enroll_one(&addr, &fp, &token, round * 10_000 + n).await;
                            results.push((t.elapsed(), r));
                        }
                    });
                }
                let mut renewing = tokio::task::JoinSet::new();
                for host in &renewers {
                    renewing.spawn(renew_loop(addr.clone(), ca_pem.clone(), host.clone(), stop.clone()));
                }
                let all = tokio::time::timeout(ROUND_DEADLINE, workers.join_all()).await;
                stop.store(true, Ordering::Relaxed);
                let renewals = tokio::time::timeout(CALL_TIMEOUT * 2, renewing.join_all()).await;
                (all, renewals)
            });
            stop.store(true, Ordering::Relaxed);
            (burst, watcher.join().expect("watcher thread"))
        });
        let elapsed = started.elapsed();
        let (enrollments, renewals) = burst;
        let Ok(enrollments) = enrollments else {
            panic!(
                "round {round}: {ENROLLMENTS_PER_ROUND} enrollments ({PARALLEL} in parallel) did not finish \
                 within {ROUND_DEADLINE:?}: the controller froze; watchers saw {:?}\n{}",
                watch.failures,
                fleet.logs()
            );
        };
        let results: Vec<_> = enrollments.into_iter().flatten().collect();
        let errors: Vec<&String> = results.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
        assert!(
            errors.is_empty(),
            "round {round}: {} of {} enrollments failed, e.g. {:?}\n{}",
            errors.len(),
            results.len(),
            &errors[..errors.len().min(5)],
            fleet.logs()
        );
        let renewals = renewals
            .unwrap_or_else(|_| panic!("round {round}: renewing hosts did not stop\n{}", fleet.logs()))
            .into_iter()
            .collect::<Result<Vec<usize>, String>>()
            .unwrap_or_else(|e| panic!("round {round}: renewal failed: {e}\n{}", fleet.logs()));
        assert!(
            watch.failures.is_empty(),
            "round {round}: the controller did not answer throughout: {:?}\n{}",
            watch.failures,
            fleet.logs()
        );
        assert!(watch.whoami_checks > 0 && watch.healthz_checks > 0 && watch.operator_writes > 0);
        assert!(
            renewals.iter().all(|&n| n > 0),
            "every renewing host renewed: {renewals:?}"
        );

        let mut latencies: Vec<Duration> = results.iter().map(|(t, _)| *t).collect();
        latencies.sort();
        let round_hosts: Vec<Enrolled> = results.into_iter().filter_map(|(_, r)| r.ok()).collect();
        eprintln!(
            "stress round {round}: {} enrollments ({PARALLEL} parallel) in {elapsed:.1?} ({:.0}/s), \
             latency p50 {:?} p99 {:?} max {:?}; {} renewals; {} operator writes; \
             whoami max {:?} ({} checks); /healthz max {:?} ({} checks)",
            round_hosts.len(),
            round_hosts.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
            renewals.iter().sum::<usize>(),
            watch.operator_writes,
            watch.whoami_max,
            watch.whoami_checks,
            watch.healthz_max,
            watch.healthz_checks,
        );
        answered.extend(round_hosts.iter().cloned());

        // Every answered enrollment is a stored host with a certificate ...
        let out = fleet
            .fleetctl_within(&["hosts", "ls", "--output", "json"], Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", fleet.logs()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("hosts JSON");
        let hosts = hosts.as_array().expect("hosts array");
        let stored: HashMap<&str, &serde_json::Value> =
            hosts.iter().map(|h| (h["id"].as_str().expect("id"), h)).collect();
        for e in &answered {
            let h = stored
                .get(e.host_id.as_str())
                .unwrap_or_else(|| panic!("round {round}: host {} got a certificate but is not stored", e.host_id));
            let not_after = h["cert_not_after_ms"].as_i64().unwrap_or(0);
            assert!(
                not_after >= e.not_after_ms,
                "round {round}: host {} is stored with certificate expiry {not_after}, \
                 but its enrollment answered {}",
                e.host_id,
                e.not_after_ms
            );
        }
        // ... and every spent use of the token has a host.
        let tokens = fleet.fleetctl_json(&["token", "ls", "--all"]);
        let uses = tokens
            .as_array()
            .expect("tokens")
            .iter()
            .find(|t| t["id"] == token_id.as_str())
            .and_then(|t| t["uses"].as_u64())
            .expect("the stress token is listed");
        let with_token = hosts.iter().filter(|h| h["token_id"] == token_id.as_str()).count();
        assert_eq!(
            uses as usize, with_token,
            "round {round}: spent uses vs hosts of the token"
        );
        assert_eq!(
            with_token,
            answered.len(),
            "round {round}: hosts vs answered enrollments"
        );

        // The certificates handed out are honoured (a sample: each check is a handshake).
        for e in round_hosts.iter().step_by(ENROLLMENTS_PER_ROUND / 4) {
            rt.block_on(certificate_honoured(&addr, &ca_pem, e))
                .unwrap_or_else(|err| panic!("round {round}: {err}\n{}", fleet.logs()));
        }
    }

    // Still answering after the last round.
    let out = fleet
        .fleetctl_within(&["whoami"], WHOAMI_TIMEOUT)
        .unwrap_or_else(|e| panic!("after the bursts: {e}\n{}", fleet.logs()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let health = http_get_status(fleet.controller.metrics, "/healthz");
    assert!(
        matches!(health, Some((200, _))),
        "/healthz after the bursts: {health:?}"
    );
    let metrics = fleet.controller.metrics_text();
    let figure = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "stress: {} durable-write requests shared {} flushes",
        figure("fleet_store_flush_requests_total "),
        figure("fleet_store_flushes_total ")
    );
}
