//! systemd's service notification protocol (sd_notify(3)) for the agent's
//! unit, which is `Type=notify` with `WatchdogSec=`: [`ready`] once the
//! agent runs, then [`alive`] from the loops that do the agent's work (the
//! session's select loop, the reconnect and enrollment backoff), so that
//! systemd kills and restarts an agent that hangs.
//!
//! Everything is a no-op when `NOTIFY_SOCKET` is unset (the agent run by
//! hand, or in tests). The environment is read once, on first use.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Pings closer together than this are dropped: a tight loop must not
/// flood the manager.
const MIN_SPACING: Duration = Duration::from_millis(500);

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// How often to ping: half of `WATCHDOG_USEC`; `None` without a watchdog.
    period: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`
    /// describe, or `None` when the agent is not run by a service manager.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let for_us = match std::env::var("WATCHDOG_PID") {
            Ok(pid) => pid.trim().parse::<u32>().ok() == Some(std::process::id()),
            Err(_) => true,
        };
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us);
        match Notifier::new(Path::new(&socket), usec.map(Duration::from_micros)) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(notify_socket = ?socket, error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from the agent");
                None
            }
        }
    }

    /// A notifier for the socket at `path` (a leading `@` names an abstract
    /// socket) whose watchdog fires after `watchdog` without a ping.
    pub fn new(path: &Path, watchdog: Option<Duration>) -> std::io::Result<Notifier> {
        let bytes = path.as_os_str().as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
            period: watchdog.map(|w| (w / 2).max(MIN_SPACING)),
            last_ping: Mutex::new(None),
        })
    }

    /// How often the watchdog wants a ping; `None` when there is no watchdog.
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// Sends `READY=1`.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// Sends `WATCHDOG=1`, at most once per [`MIN_SPACING`].
    pub fn alive(&self) {
        if self.period.is_none() {
            return;
        }
        let now = Instant::now();
        {
            // A poisoned lock only means another ping panicked; the Option inside is still valid.
            let mut last = self.last_ping.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now.duration_since(t) < MIN_SPACING) {
                return;
            }
            *last = Some(now);
        }
        self.send("WATCHDOG=1");
    }

    fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(state, error = %e, "cannot notify systemd");
        }
    }
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

fn notifier() -> Option<&'static Notifier> {
    NOTIFIER.get_or_init(Notifier::from_env).as_ref()
}

/// Tells systemd the agent has started (`READY=1`).
pub fn ready() {
    if let Some(n) = notifier() {
        n.ready();
        tracing::info!(watchdog_period = ?n.period(), "told systemd the agent is ready");
    }
}

/// Tells systemd the agent is not stuck (`WATCHDOG=1`). Call it only from a
/// loop whose progress shows the agent works.
pub fn alive() {
    if let Some(n) = notifier() {
        n.alive();
    }
}

/// A timer for a `select!` loop to ping from: ticks at the watchdog's period,
/// or (without a watchdog) so rarely that it never matters.
pub fn ticker() -> tokio::time::Interval {
    let period = notifier()
        .and_then(Notifier::period)
        .unwrap_or(Duration::from_secs(24 * 3600));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// Sleeps for `delay` (a backoff), pinging the watchdog meanwhile: waiting
/// out a backoff is the reconnect loop's work.
pub async fn sleep(delay: Duration) {
    let deadline = tokio::time::Instant::now() + delay;
    let mut ticks = ticker();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = ticks.tick() => alive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_ready_and_spaced_watchdog_pings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let n = Notifier::new(&path, Some(Duration::from_secs(4))).expect("notifier");
        assert_eq!(n.period(), Some(Duration::from_secs(2)));

        n.ready();
        assert_eq!(receive(&socket), "READY=1");
        n.alive();
        n.alive(); // within MIN_SPACING: dropped
        assert_eq!(receive(&socket), "WATCHDOG=1");
        socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err(), "a second ping was not spaced");
    }

    #[test]
    fn no_watchdog_means_no_pings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let n = Notifier::new(&path, None).expect("notifier");
        n.alive();
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err());
        n.ready();
        socket.set_nonblocking(false).expect("blocking");
        assert_eq!(receive(&socket), "READY=1");
    }

    #[test]
    fn abstract_socket_names_are_understood() {
        let name = format!("fleet-agent-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("addr")).expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let n = Notifier::new(Path::new(&format!("@{name}")), None).expect("notifier");
        n.ready();
        assert_eq!(receive(&listener), "READY=1");
    }
}
