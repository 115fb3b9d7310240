//! Rollouts: an app's hosts moved to a release in batches, health-gated,
//! as a state machine persisted before it is acted on, and the desired
//! release of every (app, host) that follows from them.
//!
//! - [`plan`]: which hosts, batches, from → to (pure).
//! - [`step`]: what the engine does next, and how a change or a report
//!   updates the record (pure; table- and property-tested).
//! - [`engine`]: one task per active rollout: reads the world, asks `step`,
//!   persists, sends, waits, emits.
//! - [`converge`]: one task that turns hosts running something other than
//!   their desired release into convergence runs through the same engine.
//! - `crate::store::rollouts`: the records (rollouts, desired per host,
//!   release for new hosts), inside the store like every sled access.
//! - [`api`]: `RolloutService`; its refusals are `crate::error::Error`s
//!   (`Busy`, `NoHosts`, `UnknownRollout`, ...) like every service's.
//! - `crate::rollout_hub`: the live state `Fleet` holds (records, event
//!   channels, controls, convergence signals), below `fleet` so that this
//!   module depends on `fleet` and not the other way round.

pub mod api;
pub mod converge;
pub mod engine;
pub mod plan;
pub mod step;

use std::sync::Arc;

pub use crate::rollout_hub::{Rollouts, Signal};
pub use crate::store::rollouts::RolloutStore;
pub use api::RolloutsService;

use crate::fleet::Fleet;
use crate::rollout_hub::lock;
use crate::store::StoreError;

/// What the audit log calls the end of a rollout.
pub const ROLLOUT_ENDED: &str = "RolloutEnded";

/// The ids of a rollout's hosts, batch by batch.
pub fn rollout_hosts(r: &fleet_proto::Rollout) -> Vec<String> {
    r.batches
        .iter()
        .flat_map(|b| b.hosts.iter().map(|h| h.host_id.clone()))
        .collect()
}

/// Starts the owned background work: an engine for every rollout a
/// previous controller left unfinished, and the converger.
pub fn start(fleet: &Arc<Fleet>) {
    match fleet.rollouts.records.all() {
        Ok(all) => {
            for r in all.into_iter().filter(|r| !r.state().ended()) {
                tracing::info!(rollout_id = %r.id, app = %r.app, state = r.state().word(), batch = r.current_batch, "resuming rollout");
                engine::spawn(fleet, r, engine::Start::Resumed);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read rollouts to resume"),
    }
    if let Some(rx) = lock(&fleet.rollouts.signals_rx).take() {
        let f = fleet.clone();
        fleet.tracker.spawn(converge::run(f, rx));
    }
}

/// Waits for every owned task (engines, the converger, forwarders) to
/// stop; they stop on the fleet's shutdown token.
pub async fn stopped(fleet: &Fleet) {
    fleet.tracker.close();
    fleet.tracker.wait().await;
}

/// A single-host deploy or rollback ended healthy on `version`: that
/// becomes the host's desired release (durably), and its inventory shows it.
pub async fn settled(fleet: &Fleet, host: &str, app: &str, version: &str) -> Result<(), StoreError> {
    fleet.rollouts.records.set_desired(app, host, version)?;
    crate::store::rollouts::note_current(&fleet.store, host, app, version)?;
    fleet.store.flush().await
}
