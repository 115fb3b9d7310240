//! [`Fleet`]: the controller's shared state, the one value every service holds.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{Host, HostStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;
use crate::tasks::Tasks;

/// Settings the services need from `controller.toml`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Heartbeat interval sent to agents.
    pub heartbeat_interval: Duration,
    /// Default agent certificate lifetime.
    pub cert_ttl: Duration,
    /// Default join token lifetime.
    pub token_ttl: Duration,
    /// The data dir (artifacts live in `artifacts/` under it).
    pub data_dir: std::path::PathBuf,
    /// Largest release artifact accepted, bytes.
    pub max_release_bytes: u64,
    /// After a restart, how long a resumed rollout waits for its hosts to
    /// reconnect before it judges any of them offline.
    pub reconnect_grace: Duration,
    /// Uses of a join token created without `--uses`.
    pub token_uses: u32,
}

/// The store, the CA, the live registry and the metrics, shared by every service.
pub struct Fleet {
    /// Durable state.
    pub store: Store,
    /// Signs agent certificates.
    pub authority: Arc<crate::authority::Authority>,
    /// The artifact files and what is known to be verified among them.
    pub artifacts: crate::artifacts::Artifacts,
    /// Mints and checks hosts' permissions to download artifacts.
    pub grants: crate::grants::Grants,
    /// Live streams.
    pub registry: Registry,
    /// Tasks sent to agents and not finished.
    pub tasks: Tasks,
    /// Rollouts (persisted) and their engines' channels.
    pub rollouts: crate::rollout_hub::Rollouts,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: Settings,
    /// Rate limits: enrollment, authentication failures, renewals.
    pub limits: crate::ratelimit::RateLimits,
    /// Cancelled on shutdown; every session's token is a child of it.
    pub shutdown: CancellationToken,
    /// The audit log (operator calls, and the changes the controller makes
    /// by itself: convergence runs).
    pub audit: Arc<crate::audit::AuditLog>,
    /// The fleet's event log (`fleetctl events`, the webhooks).
    pub events: Arc<crate::events::EventLog>,
    /// Owns the background tasks that outlive a request (rollout engines,
    /// the converger, deploy and watch forwarders); waited for on shutdown.
    pub tracker: TaskTracker,
}

impl Fleet {
    /// App `name`: its spec, its release for new hosts, and every host it
    /// selects or that runs it, with what each should run and runs
    /// (`app show`, the dashboard's app page).
    pub fn app_status(&self, name: &str) -> Result<fleet_proto::AppStatus> {
        let spec = self
            .store
            .app(name)
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownApp(name.to_string()))?;
        let records = &self.rollouts.records;
        let app_release = records.app_release(name).map_err(Error::Store)?.unwrap_or_default();
        let desired = records.desired_of_app(name).map_err(Error::Store)?;
        let selector =
            crate::selector::Selector::parse(&spec.selector).map_err(|why| Error::invalid("selector", why))?;
        let mut status = fleet_proto::AppStatus {
            spec: Some(spec),
            desired_version: app_release.clone(),
            ..Default::default()
        };
        for host in self.store.hosts().map_err(Error::Store)? {
            let inv = host.inventory.clone().unwrap_or_default();
            let entry = inv.apps.into_iter().find(|a| a.app == name);
            let selected = selector.matches(&host.labels);
            if !selected && entry.is_none() {
                continue;
            }
            let current = entry.as_ref().map(|a| a.current.clone()).unwrap_or_default();
            let want = desired.get(&host.id).cloned().unwrap_or_default();
            let effective = if want.is_empty() { &app_release } else { &want };
            status.host_states.push(fleet_proto::AppHost {
                host_id: host.id.clone(),
                hostname: host.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default(),
                drift: selected && !effective.is_empty() && *effective != current,
                desired: want,
                current,
                connected: self.registry.sender(&host.id).is_some(),
            });
            if let Some(app) = entry {
                status.hosts.insert(host.id, app);
            }
        }
        status
            .host_states
            .sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.host_id.cmp(&b.host_id)));
        Ok(status)
    }

    /// The hosts matching `selector` as operators see them (`hosts ls`, the
    /// dashboard), sorted by [`host_list_key`], each with the other entries
    /// under its hostname.
    pub fn hosts_listed(&self, selector: &[(String, String)]) -> Result<Vec<Host>> {
        let all = self.store.hosts().map_err(Error::Store)?;
        let mut shared = crate::store::names::same_hostname(&all);
        let mut hosts: Vec<(String, Host)> = all
            .into_iter()
            .filter(|h| selector.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
            .map(|h| {
                let mut h = self.view(h);
                h.same_hostname = shared.remove(&h.id).unwrap_or_default();
                (host_list_key(&h), h)
            })
            .collect();
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(hosts.into_iter().map(|(_, h)| h).collect())
    }

    /// What sending a task needs, borrowed from the fleet.
    pub fn dispatch(&self) -> crate::dispatch::Dispatch<'_> {
        crate::dispatch::Dispatch {
            registry: &self.registry,
            tasks: &self.tasks,
            grants: &self.grants,
        }
    }

    /// A host as operators see it: the stored record with its live state on top.
    pub fn view(&self, mut host: Host) -> Host {
        match self.registry.live(&host.id) {
            Some(live) => {
                host.status = HostStatus::Connected as i32;
                host.last_seen_ms = host.last_seen_ms.max(live.last_seen_ms);
                host.remote_addr = live.remote.to_string();
                if live.metrics.is_some() {
                    host.metrics = live.metrics;
                }
            }
            None if host.uninstalled_at_ms > 0 => host.status = HostStatus::Uninstalled as i32,
            None => host.status = HostStatus::Disconnected as i32,
        }
        host
    }

    /// Finds a host by id, unique id prefix, or unique hostname.
    pub fn resolve_host(&self, key: &str) -> Result<Host> {
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::invalid(
                "host",
                "no host given: pass a host id, id prefix or hostname",
            ));
        }
        fleet_proto::limits::check_host_ref("host", key)?;
        if let Some(h) = self.store.host(key)? {
            return Ok(h);
        }
        let prefixed = self.store.hosts_with_id_prefix(key)?;
        let named = self.store.hosts_named(key)?;
        let by_prefix: Vec<_> = prefixed.iter().collect();
        let by_name: Vec<_> = named.iter().collect();
        match (by_prefix.as_slice(), by_name.as_slice()) {
            ([one], _) | ([], [one]) => Ok((*one).clone()),
            ([], []) => Err(Error::UnknownHost(key.to_string())),
            (many, []) | ([], many) | (many, _) => Err(Error::AmbiguousHost {
                key: key.to_string(),
                ids: many.iter().map(|h| h.id.clone()).collect(),
            }),
        }
    }
}

/// Where a host sorts in lists, and its page token: its hostname, then its
/// id (a NUL between them, which no hostname holds, keeps "web" before
/// "web-1" as comparing the two fields would).
pub fn host_list_key(h: &Host) -> String {
    format!("{}\0{}", crate::store::names::hostname(h), h.id)
}
