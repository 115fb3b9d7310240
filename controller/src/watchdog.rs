//! The controller under systemd (`Type=notify`, `WatchdogSec=`): `READY=1`
//! once it serves, then `WATCHDOG=1` only after a probe proved that the
//! runtime schedules tasks and timers AND that the store takes a durable
//! write (a tiny write and a flush through the flusher). A hung store or a
//! wedged runtime stops the pings, and systemd restarts the controller.
//! A failed probe stops them too: sled 0.34 keeps failing after an I/O
//! error until it is reopened, so a restart is the way back.
//!
//! The probe runs without systemd too (nothing is sent then), every
//! [`PROBE_EVERY`] at most, so `/healthz` notices a store that refuses
//! writes even while nothing else writes.

use std::time::Duration;

use fleet_proto::notify::Notifier;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The notifier systemd gave us, if any (a warning when it is unusable).
pub fn notifier() -> Option<Notifier> {
    match Notifier::from_env()? {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(notify_socket = ?std::env::var_os("NOTIFY_SOCKET"), error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from the controller");
            None
        }
    }
}

/// How often the store is probed at most (more often when the watchdog's
/// period is shorter).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Sends `READY=1` (with a notifier), then probes the store until
/// `shutdown`, pinging the watchdog after every good probe, and sends
/// `STOPPING=1`.
pub async fn run(notifier: Option<Notifier>, store: Store, shutdown: CancellationToken) {
    if let Some(n) = &notifier {
        if let Err(e) = n.ready() {
            tracing::warn!(state = "READY=1", error = %e, "cannot notify systemd");
        }
        tracing::info!(watchdog_period = ?n.period(), "told systemd the controller is ready");
    }
    let period = notifier
        .as_ref()
        .and_then(Notifier::period)
        .map_or(PROBE_EVERY, |p| p.min(PROBE_EVERY));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        // Bounded by the period: a probe that takes longer misses the ping anyway.
        match tokio::time::timeout(period, store.probe(fleet_proto::now_ms())).await {
            Ok(Ok(())) => {
                if let Some(Err(e)) = notifier.as_ref().map(Notifier::alive) {
                    tracing::warn!(state = "WATCHDOG=1", error = %e, "cannot notify systemd");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "store probe failed; not pinging the watchdog (under systemd, the controller is restarted if this goes on)");
            }
            Err(_) => {
                tracing::error!(timeout = ?period, "store probe did not finish; not pinging the watchdog (under systemd, the controller is restarted if this goes on)");
            }
        }
    }
    if let Some(Err(e)) = notifier.as_ref().map(Notifier::stopping) {
        tracing::debug!(state = "STOPPING=1", error = %e, "cannot notify systemd");
    }
}

/// Raises the soft limit on open files to the hard limit: every agent
/// stream is a socket, and systemd's default soft limit (1024) is reached
/// long before the hard one. Returns (before, after).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let (soft, _) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((soft, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_only_after_the_store_took_a_durable_write() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let notifier = Notifier::new(&path, Some(Duration::from_secs(2))).expect("notifier");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Some(notifier), store.clone(), shutdown.clone()));
        let mut buf = [0u8; 64];
        let recv = |buf: &mut [u8]| {
            let n = socket.recv(buf).expect("a notification");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let first = tokio::task::block_in_place(|| recv(&mut buf));
        assert_eq!(first, "READY=1");
        let second = tokio::task::block_in_place(|| recv(&mut buf));
        assert_eq!(second, "WATCHDOG=1");
        assert!(store.health().counts().flushes >= 1, "the ping followed a flush");
        shutdown.cancel();
        task.await.expect("watchdog task");
        let last = tokio::task::block_in_place(|| recv(&mut buf));
        assert_eq!(last, "STOPPING=1");
    }

    #[test]
    fn the_soft_file_limit_reaches_the_hard_one() {
        let (before, after) = raise_nofile_limit().expect("setrlimit");
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        assert!(after >= before);
        assert_eq!((soft, after), (hard, hard));
    }
}
