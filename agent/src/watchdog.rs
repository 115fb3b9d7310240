//! The agent's side of systemd's service notification protocol
//! (`fleet_proto::notify`, sd_notify(3)) for its unit, which is `Type=notify` with `WatchdogSec=`: [`ready`] once the
//! agent runs, then [`alive`] from the loops that do the agent's work (the
//! session's select loop, the reconnect and enrollment backoff), so that
//! systemd kills and restarts an agent that hangs.
//!
//! Everything is a no-op when `NOTIFY_SOCKET` is unset (the agent run by
//! hand, or in tests). The environment is read once, on first use.

use std::time::Duration;

use fleet_proto::notify::Notifier;

static NOTIFIER: std::sync::OnceLock<Option<Notifier>> = std::sync::OnceLock::new();

fn notifier() -> Option<&'static Notifier> {
    NOTIFIER
        .get_or_init(|| match Notifier::from_env()? {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(notify_socket = ?std::env::var_os("NOTIFY_SOCKET"), error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from the agent");
                None
            }
        })
        .as_ref()
}

/// Tells systemd the agent has started (`READY=1`).
pub fn ready() {
    if let Some(n) = notifier() {
        if let Err(e) = n.ready() {
            tracing::warn!(state = "READY=1", error = %e, "cannot notify systemd");
        }
        tracing::info!(watchdog_period = ?n.period(), "told systemd the agent is ready");
    }
}

/// Tells systemd the agent is not stuck (`WATCHDOG=1`). Call it only from a
/// loop whose progress shows the agent works.
pub fn alive() {
    if let Some(n) = notifier() {
        if let Err(e) = n.alive() {
            tracing::warn!(state = "WATCHDOG=1", error = %e, "cannot notify systemd");
        }
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
