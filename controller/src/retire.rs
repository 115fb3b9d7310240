//! Retiring host entries no machine stands behind any more: an agent that
//! enrolls again under the same hostname (a rebuilt instance, a wiped state
//! dir) replaces its old, disconnected entry, and `fleetctl hosts prune`
//! removes hosts gone for longer than a duration. Either way the entry is
//! removed with its certificates, so it no longer counts in `--batch 25%`
//! or shows in `hosts ls`.

use fleet_proto::{Host, HostStatus};

use crate::error::Error;
use crate::fleet::Fleet;
use crate::store::StoreError;

/// The shortest `--disconnected-for` prune accepts: shorter would remove
/// hosts that are only reconnecting.
pub const MIN_PRUNE_MS: u64 = 60_000;

fn hostname(h: &Host) -> &str {
    h.facts.as_ref().map(|f| f.hostname.as_str()).unwrap_or_default()
}

/// Removes one host entry (durable before its stream, if any, is cut)
/// because of `who`.
async fn remove(fleet: &Fleet, h: &Host, why: &str, who: &str) -> Result<bool, StoreError> {
    let removed = fleet.store.remove_host(&h.id)?.is_some();
    fleet.store.flush().await?;
    fleet.registry.cut(&h.id, Error::Denied(why.to_string()));
    if removed {
        fleet.events.note(fleet_proto::FleetEventKind::HostRemoved, who, |e| {
            e.host_id = h.id.clone();
            e.hostname = hostname(h).to_string();
            e.detail = why.to_string();
        });
    }
    Ok(removed)
}

/// After `new_id` enrolled as `name`: removes other entries with that
/// hostname whose stream is closed (a connected one is another live machine
/// and stays). Their desired releases pass to the new entry, so it converges
/// to what the old one should run rather than to the app's default.
pub async fn replaced_by(fleet: &Fleet, new_id: &str, name: &str) -> Result<Vec<String>, StoreError> {
    if name.is_empty() {
        return Ok(Vec::new());
    }
    let old: Vec<Host> = fleet
        .store
        .hosts_named(name)?
        .into_iter()
        .filter(|h| h.id != new_id && fleet.registry.sender(&h.id).is_none())
        .collect();
    let apps = fleet.store.apps()?;
    let mut replaced = Vec::new();
    for h in old {
        for app in &apps {
            let records = &fleet.rollouts.records;
            if let (Some(v), None) = (records.desired(&app.name, &h.id)?, records.desired(&app.name, new_id)?) {
                records.set_desired(&app.name, new_id, &v)?;
            }
        }
        let why = format!("host {} was replaced by {new_id}, which enrolled as {name}", h.id);
        if remove(fleet, &h, &why, "controller").await? {
            tracing::info!(host_id = %h.id, replaced_by = new_id, hostname = name, "host entry replaced by a new enrollment");
            replaced.push(h.id);
        }
    }
    // What is left under this name is another live machine: both entries
    // stay, `hosts ls` marks them, and `--host NAME` lists both ids.
    let others: Vec<String> = fleet
        .store
        .hosts_named(name)?
        .into_iter()
        .map(|h| h.id)
        .filter(|id| id != new_id)
        .collect();
    if !others.is_empty() {
        tracing::warn!(
            host_id = new_id,
            hostname = name,
            others = %others.join(", "),
            "a connected host already uses this hostname; both are kept and marked (address them by id)"
        );
    }
    Ok(replaced)
}

/// Hosts not connected and last seen at least `for_ms` before `now_ms`.
pub fn stale(fleet: &Fleet, for_ms: u64, now_ms: i64) -> Result<Vec<Host>, StoreError> {
    let cutoff = now_ms.saturating_sub(i64::try_from(for_ms).unwrap_or(i64::MAX));
    Ok(fleet
        .store
        .hosts()?
        .into_iter()
        .map(|h| fleet.view(h))
        .filter(|h| h.status() != HostStatus::Connected && h.last_seen_ms <= cutoff)
        .collect())
}

/// Removes the hosts [`stale`] names; returns them.
pub async fn prune(fleet: &Fleet, for_ms: u64, now_ms: i64, operator: &str) -> Result<Vec<Host>, StoreError> {
    let mut removed = Vec::new();
    for h in stale(fleet, for_ms, now_ms)? {
        let why = format!("host {} was pruned by operator {operator} (gone too long)", h.id);
        if remove(fleet, &h, &why, operator).await? {
            tracing::info!(host_id = %h.id, hostname = hostname(&h), operator, "stale host pruned");
            removed.push(h);
        }
    }
    Ok(removed)
}
