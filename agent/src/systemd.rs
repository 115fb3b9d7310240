//! The service manager over D-Bus (zbus): restart a unit and wait for its
//! job, read its state. The same code talks to the system manager in
//! production and to a `systemd --user` manager in tests; only the bus
//! differs (`[systemd] bus` in agent.toml).

use std::time::Duration;

use fleet_proto::UnitState;
use tokio_stream::StreamExt;
use zbus::zvariant::OwnedObjectPath;

use crate::config::Bus;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// Restarts a unit (starts it when stopped); returns the job.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Starts a unit; returns the job (for a oneshot, it ends with the run).
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Stops a unit, killing what it runs; returns the job.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// The object of a unit, loading it when needed.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Asks the manager to send its signals to us.
    fn subscribe(&self) -> zbus::Result<()>;
    /// A job finished: id, job path, unit, result ("done", "failed", ...).
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    /// "active", "failed", "activating", ...
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    /// "running", "dead", "auto-restart", ...
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    /// "loaded", "not-found", ...
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    /// How often systemd restarted the service by itself.
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    /// The main process, 0 when none.
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    /// How the last run ended: "success", "exit-code", "signal", "timeout", ...
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    /// The main process's exit status (or signal number) of the last run.
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
    /// `User=` of the unit ("" when none is set).
    #[zbus(property)]
    fn user(&self) -> zbus::Result<String>;
    /// `DynamicUser=` of the unit.
    #[zbus(property)]
    fn dynamic_user(&self) -> zbus::Result<bool>;
}

/// How a oneshot unit's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneshotEnd {
    /// It ran to its end: systemd's `Result` ("success", "exit-code",
    /// "signal", ...) and `ExecMainStatus`.
    Finished { result: String, status: i32 },
    /// It still ran at the deadline and was stopped (every process of it killed).
    Stopped,
}

/// Whose a service runs as, as systemd will start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUser {
    /// `User=` ("" when none is set: root, or a name made up for a dynamic user).
    pub user: String,
    /// `DynamicUser=`.
    pub dynamic: bool,
}

/// Why talking to systemd failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// No bus, or no systemd on it.
    #[error("cannot reach systemd on the {bus} bus: {detail}; check [systemd] bus in agent.toml")]
    Connect { bus: &'static str, detail: String },
    /// The unit file does not exist.
    #[error("unit {unit} is not installed (LoadState {load_state}); install its unit file on the host")]
    NotFound { unit: String, load_state: String },
    /// A D-Bus call failed.
    #[error("systemd: {what} {unit}: {detail}")]
    Call {
        what: &'static str,
        unit: String,
        detail: String,
    },
    /// A job did not finish in time.
    #[error("the {what} job of {unit} did not finish within {secs}s")]
    JobTimeout {
        what: &'static str,
        unit: String,
        secs: f64,
    },
    /// systemd (polkit) refused the agent.
    #[error("systemd refused to {what} {unit}: access denied. {}", denied_hint(unit))]
    Denied { what: &'static str, unit: String },
}

/// What to do about a refusal by polkit, for this unit.
fn denied_hint(unit: &str) -> &'static str {
    if unit.starts_with(crate::hooks::unit::TEMPLATE_PREFIX) {
        "The packaged agent may start and stop the hook units fleet-hook@<app>.service (polkit rule \
         /usr/share/polkit-1/rules.d/50-fleet-agent.rules, shipped with the unit \
         /lib/systemd/system/fleet-hook@.service): reinstall or upgrade the fleet-agent package so both are \
         present; see /usr/share/doc/fleet-agent/README.Debian"
    } else {
        "The packaged agent may only start, stop, restart and reload units named fleet-app-<app>.service \
         (polkit rule /usr/share/polkit-1/rules.d/50-fleet-agent.rules): name the app's unit \
         fleet-app-<app>.service ('fleetctl app update APP --unit fleet-app-APP.service'), or widen the rule \
         for this unit; see /usr/share/doc/fleet-agent/README.Debian"
    }
}

/// Whether systemd refused the call for want of privilege (polkit said no).
fn is_denied(e: &zbus::Error) -> bool {
    const DENIED: [&str; 2] = [
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    ];
    match e {
        zbus::Error::MethodError(name, _, _) => DENIED.contains(&name.as_str()),
        zbus::Error::FDO(e) => matches!(
            **e,
            zbus::fdo::Error::AccessDenied(_) | zbus::fdo::Error::InteractiveAuthorizationRequired(_)
        ),
        _ => false,
    }
}

/// How long stopping a unit may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The jobs the agent asks systemd for.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Restart,
    Start,
    Stop,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Restart => "restart",
            Verb::Start => "start",
            Verb::Stop => "stop",
        }
    }
}

/// A connection to the service manager.
#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
    bus: &'static str,
}

fn bus_name(bus: Bus) -> &'static str {
    match bus {
        Bus::System => "system",
        Bus::Session => "session",
    }
}

impl Systemd {
    /// Connects to the bus the config names.
    pub async fn connect(bus: Bus) -> Result<Systemd, SystemdError> {
        let name = bus_name(bus);
        let err = |e: zbus::Error| SystemdError::Connect {
            bus: name,
            detail: e.to_string(),
        };
        let conn = match bus {
            Bus::System => zbus::Connection::system().await.map_err(err)?,
            Bus::Session => zbus::Connection::session().await.map_err(err)?,
        };
        let sd = Systemd { conn, bus: name };
        // Once per connection: systemd sends JobRemoved only to subscribers,
        // and refuses a second Subscribe from the same client.
        sd.manager()
            .await?
            .subscribe()
            .await
            .map_err(|e| SystemdError::Connect {
                bus: name,
                detail: format!("Subscribe: {e}"),
            })?;
        Ok(sd)
    }

    /// Whether the bus connection still reaches systemd (a D-Bus ping).
    pub async fn alive(&self) -> bool {
        let proxy = async {
            zbus::fdo::PeerProxy::builder(&self.conn)
                .destination("org.freedesktop.systemd1")?
                .path("/org/freedesktop/systemd1")?
                .build()
                .await
        };
        match proxy.await {
            Ok(p) => tokio::time::timeout(Duration::from_secs(5), p.ping())
                .await
                .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        }
    }

    /// Which bus this is ("system" or "session").
    pub fn bus(&self) -> &'static str {
        self.bus
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        ManagerProxy::new(&self.conn).await.map_err(|e| SystemdError::Connect {
            bus: self.bus,
            detail: e.to_string(),
        })
    }

    async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        self.manager()
            .await?
            .load_unit(unit)
            .await
            .map_err(|e| call("load", unit, e))
    }

    /// Restarts `unit` and waits for its job to end; returns the job result
    /// ("done" on success; "failed", "timeout", "dependency", ... otherwise).
    pub async fn restart(&self, unit: &str, timeout: Duration) -> Result<String, SystemdError> {
        self.loaded(unit).await?;
        self.job(Verb::Restart, unit, timeout).await
    }

    /// Runs the oneshot `unit` once to its end, or stops it at `timeout`.
    /// A run left over from a killed agent is stopped first.
    pub async fn run_oneshot(&self, unit: &str, timeout: Duration) -> Result<OneshotEnd, SystemdError> {
        let state = self.loaded(unit).await?;
        if matches!(
            state.unit.active_state.as_str(),
            "active" | "activating" | "deactivating" | "reloading"
        ) {
            self.job(Verb::Stop, unit, STOP_TIMEOUT).await?;
        }
        match self.job(Verb::Start, unit, timeout).await {
            Ok(_) => {}
            Err(SystemdError::JobTimeout { .. }) => {
                self.job(Verb::Stop, unit, STOP_TIMEOUT).await?;
                return Ok(OneshotEnd::Stopped);
            }
            Err(e) => return Err(e),
        }
        let s = self.service(unit).await?;
        Ok(OneshotEnd::Finished {
            result: s.result().await.map_err(|e| call("read", unit, e))?,
            status: s.exec_main_status().await.map_err(|e| call("read", unit, e))?,
        })
    }

    /// Whom `unit` runs as (`User=`, `DynamicUser=`).
    pub async fn service_user(&self, unit: &str) -> Result<ServiceUser, SystemdError> {
        self.loaded(unit).await?;
        let s = self.service(unit).await?;
        Ok(ServiceUser {
            user: s.user().await.map_err(|e| call("read", unit, e))?,
            dynamic: s.dynamic_user().await.map_err(|e| call("read", unit, e))?,
        })
    }

    /// The unit's state, or [`SystemdError::NotFound`] when it has no unit file.
    async fn loaded(&self, unit: &str) -> Result<FullState, SystemdError> {
        let state = self.state(unit).await?;
        if state.load_state != "loaded" {
            return Err(SystemdError::NotFound {
                unit: unit.into(),
                load_state: state.load_state,
            });
        }
        Ok(state)
    }

    async fn service(&self, unit: &str) -> Result<ServiceProxy<'static>, SystemdError> {
        let path = self.unit_path(unit).await?;
        ServiceProxy::builder(&self.conn)
            .path(path)
            .map_err(|e| call("read", unit, e))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| call("read", unit, e))
    }

    /// Asks for a job on `unit` and waits for it to end; returns its result.
    async fn job(&self, verb: Verb, unit: &str, timeout: Duration) -> Result<String, SystemdError> {
        let what = verb.word();
        let manager = self.manager().await?;
        // Listen before asking, so the signal cannot slip by in between.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| call("watch jobs of", unit, e))?;
        let ask = async {
            match verb {
                Verb::Restart => manager.restart_unit(unit, "replace").await,
                Verb::Start => manager.start_unit(unit, "replace").await,
                Verb::Stop => manager.stop_unit(unit, "replace").await,
            }
        };
        let job = tokio::time::timeout(Duration::from_secs(30), ask)
            .await
            .map_err(|_| SystemdError::Call {
                what,
                unit: unit.into(),
                detail: format!("systemd did not take the {what} within 30s"),
            })?
            .map_err(|e| call(what, unit, e))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job == job {
                    return Ok(args.result.clone());
                }
            }
            Err(SystemdError::Call {
                what: "wait for a job of",
                unit: unit.into(),
                detail: "the bus connection closed".into(),
            })
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| SystemdError::JobTimeout {
                what,
                unit: unit.into(),
                secs: timeout.as_secs_f64(),
            })?
    }

    /// The unit's state now, read fresh (no property cache); a manager that
    /// does not answer within 10 s is an error, never a hang.
    pub async fn state(&self, unit: &str) -> Result<FullState, SystemdError> {
        tokio::time::timeout(Duration::from_secs(10), self.read_state(unit))
            .await
            .map_err(|_| SystemdError::Call {
                what: "read",
                unit: unit.into(),
                detail: "systemd did not answer within 10s".into(),
            })?
    }

    async fn read_state(&self, unit: &str) -> Result<FullState, SystemdError> {
        let path = self.unit_path(unit).await?;
        let u = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .map_err(|e| call("read", unit, e))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| call("read", unit, e))?;
        let load_state = u.load_state().await.map_err(|e| call("read", unit, e))?;
        let active_state = u.active_state().await.map_err(|e| call("read", unit, e))?;
        let sub_state = u.sub_state().await.map_err(|e| call("read", unit, e))?;
        let (n_restarts, main_pid) = if load_state == "loaded" {
            let s = ServiceProxy::builder(&self.conn)
                .path(path)
                .map_err(|e| call("read", unit, e))?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .map_err(|e| call("read", unit, e))?;
            (
                s.n_restarts().await.map_err(|e| call("read", unit, e))?,
                s.main_pid().await.map_err(|e| call("read", unit, e))?,
            )
        } else {
            (0, 0)
        };
        Ok(FullState {
            unit: UnitState {
                name: unit.into(),
                active_state,
                sub_state,
                n_restarts,
                main_pid,
            },
            load_state,
        })
    }

    /// The unit's last journal lines, when a journal exists; empty otherwise.
    pub async fn journal_tail(&self, unit: &str, lines: u32) -> String {
        let mut cmd = tokio::process::Command::new("journalctl");
        if self.bus == "session" {
            cmd.arg("--user");
        }
        cmd.args(["--no-pager", "-o", "short-iso", "-n"])
            .arg(lines.to_string())
            .arg("-u")
            .arg(unit)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(5), cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if text.is_empty() || text == "-- No entries --" {
                    String::new()
                } else {
                    text
                }
            }
            _ => String::new(),
        }
    }
}

/// A unit's state with its LoadState.
#[derive(Debug, Clone)]
pub struct FullState {
    /// What goes into the inventory.
    pub unit: UnitState,
    /// "loaded", "not-found", ...
    pub load_state: String,
}

fn call(what: &'static str, unit: &str, e: zbus::Error) -> SystemdError {
    if is_denied(&e) {
        return SystemdError::Denied {
            what,
            unit: unit.into(),
        };
    }
    SystemdError::Call {
        what,
        unit: unit.into(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_by_polkit_names_the_rule_and_the_unit_naming() {
        let refused = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("Permission denied".into())));
        let e = call("restart", "ssh.service", refused);
        assert!(matches!(e, SystemdError::Denied { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("systemd refused to restart ssh.service: access denied"),
            "{text}"
        );
        assert!(text.contains("fleet-app-<app>.service"), "{text}");
        assert!(
            text.contains("/usr/share/polkit-1/rules.d/50-fleet-agent.rules"),
            "{text}"
        );

        let other = zbus::Error::FDO(Box::new(zbus::fdo::Error::Failed("boom".into())));
        assert!(matches!(call("restart", "x.service", other), SystemdError::Call { .. }));
    }
}
