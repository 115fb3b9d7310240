//! The unit manager as the deploy path sees it: a narrow trait (restart,
//! state, journal tail, a oneshot run of a hook unit and whom it runs as),
//! implemented by systemd over D-Bus ([`Dbus`]) and,
//! in the deploy path's unit tests, by an in-memory fake.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::config::Bus;
use crate::systemd::{FullState, OneshotEnd, ServiceUser, Systemd, SystemdError};

/// A boxed future, so the trait can be used as `dyn Units`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the agent asks of the service manager.
pub trait Units: Send + Sync {
    /// Restarts `unit` and waits for its job: the job's result ("done" on
    /// success; "failed", "timeout", ... otherwise).
    fn restart<'a>(&'a self, unit: &'a str, timeout: Duration) -> BoxFuture<'a, Result<String, SystemdError>>;
    /// The unit's state now.
    fn state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<FullState, SystemdError>>;
    /// The last `lines` lines of the unit's journal ("" when unavailable).
    fn journal_tail<'a>(&'a self, unit: &'a str, lines: u32) -> BoxFuture<'a, String>;
    /// Runs the oneshot `unit` to its end, or stops it at `timeout`.
    fn run_oneshot<'a>(&'a self, unit: &'a str, timeout: Duration) -> BoxFuture<'a, Result<OneshotEnd, SystemdError>>;
    /// Whom `unit` runs as.
    fn service_user<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<ServiceUser, SystemdError>>;
}

/// systemd over D-Bus: connected on first use, and again when the bus went
/// away (dbus or systemd restarted), instead of failing every deploy until
/// the agent restarts.
pub struct Dbus {
    bus: Bus,
    conn: Mutex<Option<Systemd>>,
}

impl Dbus {
    /// Not connected yet: the first call connects.
    pub fn new(bus: Bus) -> Dbus {
        Dbus {
            bus,
            conn: Mutex::new(None),
        }
    }

    async fn systemd(&self) -> Result<Systemd, SystemdError> {
        let mut guard = self.conn.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.alive().await {
                return Ok(s.clone());
            }
            tracing::warn!(
                bus = s.bus(),
                "the connection to systemd no longer answers; connecting again"
            );
            *guard = None;
        }
        let s = Systemd::connect(self.bus).await?;
        *guard = Some(s.clone());
        Ok(s)
    }
}

impl Units for Dbus {
    fn restart<'a>(&'a self, unit: &'a str, timeout: Duration) -> BoxFuture<'a, Result<String, SystemdError>> {
        Box::pin(async move { self.systemd().await?.restart(unit, timeout).await })
    }

    fn state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<FullState, SystemdError>> {
        Box::pin(async move { self.systemd().await?.state(unit).await })
    }

    fn journal_tail<'a>(&'a self, unit: &'a str, lines: u32) -> BoxFuture<'a, String> {
        Box::pin(async move {
            match self.systemd().await {
                Ok(sd) => sd.journal_tail(unit, lines).await,
                Err(_) => String::new(),
            }
        })
    }

    fn run_oneshot<'a>(&'a self, unit: &'a str, timeout: Duration) -> BoxFuture<'a, Result<OneshotEnd, SystemdError>> {
        Box::pin(async move { self.systemd().await?.run_oneshot(unit, timeout).await })
    }

    fn service_user<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<ServiceUser, SystemdError>> {
        Box::pin(async move { self.systemd().await?.service_user(unit).await })
    }
}
