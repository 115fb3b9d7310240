//! The agent speaks systemd's notify protocol for `Type=notify` and
//! `WatchdogSec=`: a test socket in the place of systemd's sees READY=1 once,
//! then WATCHDOG=1 again and again while the agent holds its stream.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{bin, Agent, Fleet};

#[test]
fn agent_tells_systemd_it_is_ready_and_alive() {
    let mut fleet = Fleet::controller_only(&[]);
    let token = fleet.token(&["--uses", "1"]);
    let socket_path = fleet.root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");

    let addr = fleet.controller.addr.to_string();
    let mut agent = Agent::new(
        fleet.root.path(),
        "notify-1",
        &addr,
        &fleet.controller.ca_fingerprint,
        &token,
        &[],
    );
    let log = std::fs::File::create(&agent.log).expect("agent log");
    // What systemd sets for a Type=notify unit with WatchdogSec=2s.
    let child = Command::new(bin("fleet-agent"))
        .args(["run", "--config"])
        .arg(&agent.config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn fleet-agent");
    agent.child = Some(child);
    fleet.agents.push(agent);

    // Every datagram for 6 s: the agent connects within it and then pings
    // once a second (half of WATCHDOG_USEC).
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(6) {
        let mut buf = [0u8; 256];
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push((start.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    fleet.wait_connected(1, Duration::from_secs(10));

    let ready: Vec<_> = seen.iter().filter(|(_, s)| s == "READY=1").collect();
    assert_eq!(ready.len(), 1, "READY=1 exactly once; got {seen:?}\n{}", fleet.logs());
    let pings: Vec<_> = seen.iter().filter(|(_, s)| s == "WATCHDOG=1").collect();
    assert!(
        pings.len() >= 3,
        "WATCHDOG=1 about once a second for 6 s; got {seen:?}\n{}",
        fleet.logs()
    );
    let unknown: Vec<_> = seen
        .iter()
        .filter(|(_, s)| s != "READY=1" && s != "WATCHDOG=1")
        .collect();
    assert!(unknown.is_empty(), "unexpected notifications {unknown:?}");
    // Pings keep coming: none of the gaps reaches the 2 s watchdog.
    let mut last = ready[0].0;
    for (at, _) in &pings {
        assert!(
            *at - last < Duration::from_secs(2),
            "a {:?} gap between notifications would have let systemd's watchdog fire: {seen:?}",
            *at - last
        );
        last = *at;
    }
}
