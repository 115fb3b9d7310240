//! systemd's service notification protocol (sd_notify(3)), for the units
//! that are `Type=notify` with `WatchdogSec=`: the agent's and the
//! controller's. `READY=1` once, `WATCHDOG=1` from whatever proves the
//! program makes progress, `STOPPING=1` on the way out.
//!
//! Here rather than in each program because both speak it the same way; it
//! is a datagram on a Unix socket, no more.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Mutex;
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
    /// describe; `None` when the program is not run by a service manager,
    /// `Some(Err)` when the socket it names cannot be used.
    pub fn from_env() -> Option<std::io::Result<Notifier>> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let for_us = match std::env::var("WATCHDOG_PID") {
            Ok(pid) => pid.trim().parse::<u32>().ok() == Some(std::process::id()),
            Err(_) => true,
        };
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us);
        Some(Notifier::new(Path::new(&socket), usec.map(Duration::from_micros)))
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
    pub fn ready(&self) -> std::io::Result<()> {
        self.send("READY=1")
    }

    /// Sends `STOPPING=1`.
    pub fn stopping(&self) -> std::io::Result<()> {
        self.send("STOPPING=1")
    }

    /// Sends `WATCHDOG=1`, at most once per [`MIN_SPACING`]; nothing without a watchdog.
    pub fn alive(&self) -> std::io::Result<()> {
        if self.period.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        {
            // A poisoned lock only means another ping panicked; the Option inside is still valid.
            let mut last = self.last_ping.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now.duration_since(t) < MIN_SPACING) {
                return Ok(());
            }
            *last = Some(now);
        }
        self.send("WATCHDOG=1")
    }

    fn send(&self, state: &str) -> std::io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(drop)
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

    fn temp_socket(name: &str) -> (std::path::PathBuf, UnixDatagram) {
        let path = std::env::temp_dir().join(format!("fleet-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind");
        (path, socket)
    }

    #[test]
    fn sends_ready_and_spaced_watchdog_pings() {
        let (path, socket) = temp_socket("spaced");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let n = Notifier::new(&path, Some(Duration::from_secs(4))).expect("notifier");
        assert_eq!(n.period(), Some(Duration::from_secs(2)));

        n.ready().expect("send");
        assert_eq!(receive(&socket), "READY=1");
        n.alive().expect("send");
        n.alive().expect("send"); // within MIN_SPACING: dropped
        assert_eq!(receive(&socket), "WATCHDOG=1");
        socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err(), "a second ping was not spaced");
        n.stopping().expect("send");
        socket.set_nonblocking(false).expect("blocking");
        assert_eq!(receive(&socket), "STOPPING=1");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn no_watchdog_means_no_pings() {
        let (path, socket) = temp_socket("none");
        socket.set_nonblocking(true).expect("nonblocking");
        let n = Notifier::new(&path, None).expect("notifier");
        n.alive().expect("no-op");
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err());
        n.ready().expect("send");
        socket.set_nonblocking(false).expect("blocking");
        assert_eq!(receive(&socket), "READY=1");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn abstract_socket_names_are_understood() {
        let name = format!("fleet-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("addr")).expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let n = Notifier::new(Path::new(&format!("@{name}")), None).expect("notifier");
        n.ready().expect("send");
        assert_eq!(receive(&listener), "READY=1");
    }
}
