//! Convergence: hosts that run something other than their desired release
//! (they were offline during a rollout, reconnected after a controller
//! restart, or joined the fleet) are moved to it by a convergence run — a
//! rollout record of kind `converge`, under the same engine, batch limit,
//! health gate and events as any rollout, visible in `rollout ls`.
//!
//! One task (this one) turns signals into runs: a host connected, or an
//! app's rollout ended. Signals are gathered for a moment first, so a
//! reconnect storm after a restart becomes one run per app, not one per
//! host; while an app has an active rollout nothing starts, and hosts that
//! connect meanwhile are swept when it ends. Since an app has at most one
//! active rollout, no more than its batch size of hosts change at once,
//! however many reconnect. A host whose convergence to a release failed is
//! not tried again until it connects again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::rollout::BatchSpec;
use fleet_proto::{now_ms, Host, HostState, RolloutKind};
use tokio::sync::mpsc;

use super::{api, plan, Signal};
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::selector::Selector;
use crate::store::rollouts::current_of;

/// Quiet time that ends a gathering of signals.
const SETTLE: Duration = Duration::from_millis(1000);
/// The longest a gathering lasts.
const GATHER_MAX: Duration = Duration::from_secs(5);

/// The converger's loop; ends on shutdown.
pub async fn run(fleet: Arc<Fleet>, mut rx: mpsc::Receiver<Signal>) {
    // (app, host, version) convergences that failed, until the host reconnects.
    let mut given_up: HashSet<(String, String, String)> = HashSet::new();
    let shutdown = fleet.shutdown.clone();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = rx.recv() => match s { Some(s) => s, None => return },
        };
        let mut signals = vec![first];
        let until = tokio::time::Instant::now() + GATHER_MAX;
        loop {
            let quiet = tokio::time::Instant::now() + SETTLE;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(quiet.min(until)) => break,
                s = rx.recv() => match s {
                    Some(s) => signals.push(s),
                    None => return,
                },
            }
        }
        for s in &signals {
            match s {
                Signal::HostConnected(host) => given_up.retain(|(_, h, _)| h != host),
                Signal::AppFree(app) => remember_failures(&fleet, app, &mut given_up),
            }
        }
        if let Err(e) = sweep(&fleet, &given_up).await {
            tracing::error!(error = %e, "convergence sweep failed; it runs again at the next connection");
        }
    }
}

/// Hosts of the app's latest convergence run that failed are given up on
/// (for that release) until they connect again.
fn remember_failures(fleet: &Fleet, app: &str, given_up: &mut HashSet<(String, String, String)>) {
    let Ok(heads) = fleet.rollouts.records.heads() else {
        return;
    };
    let Some(head) = heads
        .into_iter()
        .find(|r| r.app == app && r.kind() == RolloutKind::Converge && r.state().ended())
    else {
        return;
    };
    let Ok(Some(last)) = fleet.rollouts.records.get(&head.id) else {
        return;
    };
    for h in last.batches.iter().flat_map(|b| &b.hosts) {
        if h.state() == HostState::Failed {
            given_up.insert((app.to_string(), h.host_id.clone(), h.to_version.clone()));
        }
    }
}

async fn sweep(fleet: &Arc<Fleet>, given_up: &HashSet<(String, String, String)>) -> Result<()> {
    let hosts = fleet.store.hosts()?;
    for spec in fleet.store.apps()? {
        let app = spec.name.clone();
        if fleet.rollouts.records.has_active(&app)? {
            continue;
        }
        let Ok(selector) = Selector::parse(&spec.selector) else {
            continue;
        };
        let selection: Vec<&Host> = hosts.iter().filter(|h| selector.matches(&h.labels)).collect();
        let mut targets: Vec<(&Host, String)> = Vec::new();
        for h in &selection {
            let connected = fleet.registry.sender(&h.id).is_some();
            let busy = h.inventory.as_ref().is_some_and(|i| !i.running_tasks.is_empty());
            if !connected || busy {
                continue;
            }
            let Some(target) = fleet.rollouts.records.target(&app, &h.id)? else {
                continue;
            };
            if target == current_of(h, &app) || given_up.contains(&(app.clone(), h.id.clone(), target.clone())) {
                continue;
            }
            if fleet.store.release(&app, &target)?.is_none() {
                tracing::warn!(app, host_id = %h.id, version = %target, "the desired release is gone; the host is left as it is");
                continue;
            }
            targets.push((h, target));
        }
        if targets.is_empty() {
            continue;
        }
        targets.sort_by(|a, b| plan::hostname(a.0).cmp(&plan::hostname(b.0)).then(a.0.id.cmp(&b.0.id)));
        let batch = batch_of(fleet, &app)?;
        let size = batch.hosts(selection.len());
        let r = plan::converge(&app, &targets, size, format!("r-{}", crate::random_hex(6)), now_ms());
        match api::store_and_run(fleet, r).await {
            Ok(r) => {
                fleet.metrics.convergence_started(targets.len() as u64);
                let moves: Vec<String> = targets
                    .iter()
                    .map(|(h, to)| format!("{} {} → {to}", plan::hostname(h), current_of(h, &app)))
                    .collect();
                fleet.audit.write(&crate::audit::Record {
                    at_ms: now_ms(),
                    who: "controller".into(),
                    what: "Convergence".into(),
                    outcome: "ok".into(),
                    target: moves.join(", "),
                    app: app.clone(),
                    rollout_id: r.id.clone(),
                    hosts: crate::audit::layer::listed(targets.iter().map(|(h, _)| h.id.clone()).collect()),
                    ..Default::default()
                });
                tracing::info!(rollout_id = %r.id, app, hosts = targets.len(), batch = size, "convergence run started");
            }
            // An operator's rollout started in between: its end sweeps again.
            Err(Error::Busy { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The batch size of the app's last operator rollout, or the default.
fn batch_of(fleet: &Fleet, app: &str) -> Result<BatchSpec> {
    let last = fleet
        .rollouts
        .records
        .all()?
        .into_iter()
        .find(|r| r.app == app && r.kind() != RolloutKind::Converge);
    Ok(last
        .and_then(|r| r.params)
        .and_then(|p| BatchSpec::of_request(&p.batch).ok())
        .unwrap_or(fleet_proto::rollout::DEFAULT_BATCH))
}
