//! Connections that finish the TLS handshake and then say nothing must not
//! lock operators and agents out: the controller runs at a 1024 file
//! descriptor limit (systemd's default soft limit), 1,100 such connections
//! come from several loopback addresses, and while they are held
//! `fleetctl whoami` answers and an agent reconnects; the idle connections
//! are closed once the first-request deadline passes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::transport::{certs_from_pem, client_config, Trust};
use tokio::io::AsyncReadExt;

use crate::harness::{wait_until, Controller, Fleet};

/// Idle connections the attacker opens.
const IDLE: usize = 1100;
/// Loopback source addresses they come from (127.0.0.2 …).
const SOURCES: u8 = 4;
/// The first-request deadline the controller runs with in this test.
const FIRST_REQUEST: Duration = Duration::from_secs(15);

/// What the attacker saw, shared with its tasks.
#[derive(Default)]
struct Attack {
    handshakes: AtomicUsize,
    refused: AtomicUsize,
    open: AtomicUsize,
    /// How long each connection that completed its handshake stayed open.
    lifetimes: Mutex<Vec<Duration>>,
}

/// Runs `fleetctl ARGS` as the admin, killed after `timeout` (today's
/// failure mode is a call that hangs).
fn fleetctl_within(fleet: &Fleet, args: &[&str], timeout: Duration) -> (Option<Output>, Duration) {
    let start = Instant::now();
    let mut child = fleet.fleetctl_command(args).spawn().expect("run fleetctl");
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let out = child.wait_with_output().expect("fleetctl output");
            return (Some(out), start.elapsed());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return (None, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens one TLS connection from `source`, completes the handshake, and then
/// only reads (never sending the HTTP/2 preface) until the controller closes it.
async fn hold_idle(addr: SocketAddr, source: IpAddr, config: Arc<rustls::ClientConfig>, attack: Arc<Attack>) {
    let connected = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    };
    let mut tls = match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok(tls)) => tls,
        _ => {
            attack.refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let opened = Instant::now();
    attack.handshakes.fetch_add(1, Ordering::SeqCst);
    attack.open.fetch_add(1, Ordering::SeqCst);
    let mut buf = [0u8; 4096];
    // The server's own HTTP/2 settings may arrive; anything but EOF or an
    // error means the connection is still held.
    while let Ok(n) = tls.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    attack.open.fetch_sub(1, Ordering::SeqCst);
    attack.lifetimes.lock().expect("lifetimes").push(opened.elapsed());
}

#[test]
fn idle_tls_connections_do_not_lock_out_operators_or_agents() {
    let root = tempfile::Builder::new().prefix("fleet-it-").tempdir().expect("tempdir");
    let mut controller = Controller::init(root.path(), &[]);
    let mut text = std::fs::read_to_string(&controller.config).expect("controller.toml");
    text.push_str(&format!(
        "[connections]\nfirst_request_timeout = \"{}s\"\nidle_timeout = \"60s\"\n",
        FIRST_REQUEST.as_secs()
    ));
    std::fs::write(&controller.config, text).expect("controller.toml");
    controller.start_with_nofile(1024);
    let mut fleet = Fleet {
        root,
        controller,
        agents: Vec::new(),
        agent_controllers: None,
        logs_shown: false,
    };
    let token = fleet.token(&["--uses", "2"]);
    fleet.add_agent("web-1", &token, &[]);
    fleet.wait_connected(1, Duration::from_secs(30));

    let (out, baseline) = fleetctl_within(&fleet, &["whoami"], Duration::from_secs(20));
    assert!(out.is_some_and(|o| o.status.success()), "whoami before the attack");
    eprintln!("whoami with no idle connections: {baseline:?}");

    let ca_pem = std::fs::read_to_string(fleet.controller.data_dir.join("ca.pem")).expect("ca.pem");
    let ca = certs_from_pem("ca", &ca_pem).expect("ca").remove(0);
    let config = client_config(Trust::Ca(ca), None).expect("client config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let attack = Arc::new(Attack::default());
    let addr = fleet.controller.addr;
    let started = Instant::now();
    let attackers: Vec<_> = (0..IDLE)
        .map(|i| {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES as usize) as u8));
            rt.spawn(hold_idle(addr, source, config.clone(), attack.clone()))
        })
        .collect();
    wait_until(
        Duration::from_secs(60),
        "every idle connection to finish its handshake or be refused",
        || {
            let done = attack.handshakes.load(Ordering::SeqCst) + attack.refused.load(Ordering::SeqCst);
            (done == IDLE).then_some(())
        },
    );
    let opened_in = started.elapsed();
    let held = attack.open.load(Ordering::SeqCst);
    eprintln!(
        "{IDLE} idle connections in {opened_in:?}: {} handshakes, {} refused, {held} held",
        attack.handshakes.load(Ordering::SeqCst),
        attack.refused.load(Ordering::SeqCst)
    );
    assert!(
        held >= 500,
        "the controller should hold idle connections up to its cap until their deadline, holds {held}\n{}",
        fleet.logs()
    );

    // An operator gets through while they are held.
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let (out, took) = fleetctl_within(&fleet, &["whoami"], Duration::from_secs(20));
        let out = out.unwrap_or_else(|| {
            panic!(
                "fleetctl whoami hung for {took:?} while {} idle connections were held\n{}",
                attack.open.load(Ordering::SeqCst),
                fleet.logs()
            )
        });
        assert!(
            out.status.success(),
            "fleetctl whoami failed while idle connections were held: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fleet.logs()
        );
        latencies.push(took);
    }
    eprintln!(
        "whoami while {} idle connections held: {latencies:?}",
        attack.open.load(Ordering::SeqCst)
    );

    // An agent reconnects while they are held.
    let reconnect = Instant::now();
    fleet.agents[0].kill9();
    fleet.agents[0].start();
    fleet.wait_connected(1, Duration::from_secs(30));
    let still_held = attack.open.load(Ordering::SeqCst);
    eprintln!(
        "agent reconnected in {:?} with {still_held} idle connections held",
        reconnect.elapsed()
    );
    assert!(
        still_held > 0,
        "the test must show the agent reconnecting while idle connections are held; \
         it took too long ({:?} since the attack started)",
        started.elapsed()
    );

    // Every idle connection is closed by the first-request deadline.
    wait_until(
        FIRST_REQUEST + Duration::from_secs(15),
        "the controller to close every idle connection",
        || (attack.open.load(Ordering::SeqCst) == 0).then_some(()),
    );
    let longest = attack
        .lifetimes
        .lock()
        .expect("lifetimes")
        .iter()
        .max()
        .copied()
        .unwrap_or_default();
    eprintln!("longest idle connection lived {longest:?}");
    assert!(
        longest <= FIRST_REQUEST + Duration::from_secs(5),
        "an idle connection lived {longest:?}, past the {FIRST_REQUEST:?} deadline"
    );
    for a in attackers {
        rt.block_on(a).expect("attacker task");
    }

    // Afterwards: the controller still answers, logged failures stayed few,
    // and the metrics count what happened.
    let (out, _) = fleetctl_within(&fleet, &["whoami"], Duration::from_secs(20));
    assert!(out.is_some_and(|o| o.status.success()), "whoami after the attack");
    let log = fleet.controller.log_text();
    let accept_failed = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        accept_failed <= 20,
        "'accept failed' logged {accept_failed} times; it must be rate-limited"
    );
    let metrics = fleet.controller.metrics_text();
    assert!(
        metrics.contains("fleet_connections_closed_total{reason=\"first_request_timeout\"}"),
        "{metrics}"
    );
}
