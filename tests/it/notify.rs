//! Webhooks against real local HTTP receivers: a signed JSON endpoint that
//! fails twice before it takes deliveries, a Slack-compatible one, one that
//! refuses (404), and one that never answers while a rollout runs.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::wait_until;
use crate::releases::assert_success;
use crate::rollouts::{Cluster, APP};

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// The status it was answered with.
    status: u16,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON: {e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A real HTTP/1.1 endpoint on loopback that records what it gets and
/// answers with scripted statuses (then 200), or never answers at all.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn start(script: &[u16]) -> Receiver {
        Receiver::start_with(script.iter().copied().collect(), false)
    }

    /// Accepts connections and never answers.
    fn silent() -> Receiver {
        Receiver::start_with(VecDeque::new(), true)
    }

    fn start_with(script: VecDeque<u16>, silent: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if silent {
                    // Keep the connection open, say nothing.
                    held.push(stream);
                    continue;
                }
                let (g, script) = (g.clone(), script.clone());
                std::thread::spawn(move || serve(stream, &g, &script));
            }
        });
        Receiver { port, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits for a request answered 2xx whose body matches `want`.
    fn wait_for(&self, what: &str, want: impl Fn(&Got) -> bool) -> Got {
        wait_until(Duration::from_secs(60), what, || {
            self.got()
                .into_iter()
                .find(|g| (200..300).contains(&g.status) && want(g))
        })
    }
}

fn serve(stream: TcpStream, got: &Mutex<Vec<Got>>, script: &Mutex<VecDeque<u16>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let status = script.lock().expect("lock").pop_front().unwrap_or(200);
    got.lock().expect("lock").push(Got {
        path,
        headers,
        body,
        status,
    });
    let reason = if status < 300 { "OK" } else { "Nope" };
    let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope");
    let mut stream = stream;
    let _ = stream.write_all(answer.as_bytes());
}

/// The receiver's check of a signed delivery, written from the README's
/// description: HMAC-SHA256 under the secret of "<timestamp>.<body>".
fn signed_by(g: &Got, secret: &str) -> bool {
    let (Some(ts), Some(sig)) = (g.headers.get("x-fleet-timestamp"), g.headers.get("x-fleet-signature")) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut data = format!("{ts}.").into_bytes();
    data.extend_from_slice(&g.body);
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    ring::hmac::verify(&key, &data, &bytes).is_ok()
}

fn kind(g: &Got) -> String {
    g.json()["kind"].as_str().unwrap_or_default().to_string()
}

#[test]
fn webhooks_hear_of_rollouts_retry_refuse_and_never_hold_a_rollout_up() {
    let c = Cluster::start(2);
    let f = &c.fleet;
    // Fails twice, then takes everything.
    let signed = Receiver::start(&[500, 503]);
    let chat = Receiver::start(&[]);
    let gone = Receiver::start(&[404, 404, 404, 404, 404, 404, 404, 404]);
    let stuck = Receiver::silent();

    let added = f.fleetctl_json(&[
        "notify",
        "add",
        "hooks",
        "--url",
        &signed.url("/fleet?src=ci"),
        "--app",
        APP,
    ]);
    let secret = added["secret"].as_str().expect("a json webhook's secret").to_string();
    assert!(secret.len() >= 32, "{added}");
    let slack_url = chat.url("/services/T000/B000/very-secret");
    let slack = f.fleetctl(&["notify", "add", "chat", "--url", &slack_url, "--format", "slack"]);
    assert_success(&slack, "notify add chat");
    assert_success(
        &f.fleetctl(&[
            "notify",
            "add",
            "gone",
            "--url",
            &gone.url("/x"),
            "--kind",
            "rollout_started",
        ]),
        "notify add gone",
    );
    assert_success(
        &f.fleetctl(&["notify", "add", "stuck", "--url", &stuck.url("/x")]),
        "notify add stuck",
    );
    // Bad input names what is wrong.
    let bad = f.fleetctl(&["notify", "add", "bad", "--url", "ftp://example.com/"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("http"), "{bad:?}");
    let dup = f.fleetctl(&["notify", "add", "chat", "--url", &slack_url]);
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("notify rm chat"),
        "{dup:?}"
    );
    let no_app = f.fleetctl(&["notify", "add", "x", "--url", &chat.url("/"), "--app", "no-such-app"]);
    assert_eq!(no_app.status.code(), Some(3), "{no_app:?}");

    // Lists never show a URL's path: Slack's carry the secret.
    let listed = f.fleetctl(&["notify", "ls", "--output", "json"]);
    assert_success(&listed, "notify ls");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(!text.contains("very-secret") && !text.contains(&secret), "{text}");
    assert!(text.contains(&format!("http://127.0.0.1:{}/…", chat.port)), "{text}");

    // A test reaches the endpoint at once.
    let test = f.fleetctl(&["notify", "test", "chat"]);
    assert_success(&test, "notify test chat");
    let t = chat.wait_for("the test message", |g| {
        g.json()["text"].as_str().is_some_and(|t| t.contains("webhook test"))
    });
    assert_eq!(t.path, "/services/T000/B000/very-secret");
    let refused = f.fleetctl(&["notify", "test", "gone"]);
    assert_eq!(refused.status.code(), Some(1), "a 404 fails the test");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("HTTP 404"),
        "{refused:?}"
    );

    // A rollout that succeeds: the signed endpoint gets its start and end
    // once each, after its two failures, and the signature holds.
    c.push("1.0.0", &[]);
    let started = Instant::now();
    let ok = f.fleetctl_within(
        &["rollout", APP, "--release", "1.0.0", "--wait"],
        Duration::from_secs(120),
    );
    let ok = ok.expect("the rollout is not held up by a webhook that never answers");
    assert_success(&ok, "rollout 1.0.0");
    let took = started.elapsed();
    let end = signed.wait_for("rollout_ended", |g| kind(g) == "rollout_ended");
    assert_eq!(end.json()["outcome"], "succeeded", "{:?}", end.json());
    assert_eq!(end.path, "/fleet?src=ci");
    assert!(signed_by(&end, &secret), "the signature checks out: {:?}", end.headers);
    assert!(!signed_by(&end, "whsec_not-the-secret"), "and depends on the secret");
    assert_eq!(
        end.headers.get("x-fleet-event").map(String::as_str),
        Some("rollout_ended")
    );
    let start = signed.wait_for("rollout_started", |g| kind(g) == "rollout_started");
    let got = signed.got();
    let failures = got.iter().filter(|g| g.status >= 500).count();
    assert_eq!(failures, 2, "two failed attempts first: {got:#?}");
    assert_eq!(
        got.iter().filter(|g| g.status >= 500).map(kind).collect::<Vec<_>>(),
        ["rollout_started", "rollout_started"],
        "the first event was retried until it was taken"
    );
    let taken: Vec<u64> = got
        .iter()
        .filter(|g| g.status == 200)
        .map(|g| g.json()["seq"].as_u64().expect("seq"))
        .collect();
    let mut unique = taken.clone();
    unique.dedup();
    assert_eq!(taken, unique, "each event taken once, in order");
    assert!(
        start.json()["seq"].as_u64() < end.json()["seq"].as_u64(),
        "started before ended"
    );
    // Successful hosts are not announced by default.
    assert!(got.iter().all(|g| kind(g) != "rollout_host_done"), "{got:#?}");

    // A rollout that is rolled back: chat hears of the failing host and the end.
    c.push("2.0.0", &[c.ports[0]]);
    let bad = f
        .fleetctl_within(
            &["rollout", APP, "--release", "2.0.0", "--batch", "100%", "--wait"],
            Duration::from_secs(180),
        )
        .expect("the rollout ends");
    assert!(!bad.status.success());
    let line = chat.wait_for("the rolled-back message", |g| {
        g.json()["text"]
            .as_str()
            .is_some_and(|t| t.contains("rolled back") && t.contains("2.0.0"))
    });
    let text = line.json()["text"].as_str().expect("text").to_string();
    assert!(text.starts_with("fleet: rollout r-"), "{text}");
    chat.wait_for("the failing host", |g| {
        g.json()["text"]
            .as_str()
            .is_some_and(|t| t.contains("host app-1 reverted"))
    });

    // The refusing endpoint is given up on at once (404 is not retried),
    // and `notify ls` says so.
    wait_until(Duration::from_secs(30), "gone's failures counted", || {
        let list = f.fleetctl_json(&["notify", "ls"]);
        let gone = list.as_array()?.iter().find(|n| n["name"] == "gone")?.clone();
        (gone["failed"].as_u64() >= Some(2)).then_some(gone)
    });
    let list = f.fleetctl_json(&["notify", "ls"]);
    let gone_row = list
        .as_array()
        .expect("list")
        .iter()
        .find(|n| n["name"] == "gone")
        .expect("gone")
        .clone();
    assert!(
        gone_row["last_error"].as_str().unwrap_or_default().contains("HTTP 404"),
        "{gone_row}"
    );
    assert_eq!(gone_row["delivered"], 0, "{gone_row}");
    assert_eq!(
        gone.got().len(),
        3,
        "1 test + 2 rollout starts, each tried once: {:#?}",
        gone.got()
    );
    let hooks_row = list
        .as_array()
        .expect("list")
        .iter()
        .find(|n| n["name"] == "hooks")
        .expect("hooks")
        .clone();
    assert!(hooks_row["delivered"].as_u64() >= Some(4), "{hooks_row}");
    let metrics = f.controller.metrics_text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "fleet_notifications_total{webhook=\"hooks\",result=\"retried\"} 2"),
        "{metrics}"
    );
    eprintln!("rollout with a silent webhook took {took:?}");

    // Removed: no more deliveries.
    assert_success(&f.fleetctl(&["notify", "rm", "chat"]), "notify rm");
    let before = chat.got().len();
    c.push("3.0.0", &[]);
    assert_success(
        &f.fleetctl(&["rollout", APP, "--release", "3.0.0", "--batch", "100%", "--wait"]),
        "rollout 3.0.0",
    );
    signed.wait_for("the third rollout's end", |g| {
        kind(g) == "rollout_ended" && g.json()["version"] == "3.0.0"
    });
    assert_eq!(chat.got().len(), before, "a removed webhook hears nothing more");
}
