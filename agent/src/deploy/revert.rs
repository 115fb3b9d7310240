//! Going back: after a failure past the swap, to the release that ran
//! before (swap, restart, a short settle, health); and at start, for a
//! change an agent was killed in the middle of (its intent record).

use std::time::Duration;

use fleet_proto::phase::Phase;
use fleet_proto::{AppSpec, FailureCause};

use super::report::Run;
use super::worker::Worker;
use super::{blocking, fail, RESTART_TIMEOUT};
use crate::layout;

impl Worker {
    /// Swaps back to `from`, restarts and checks; `Ok` says what it did,
    /// `Err` what runs instead.
    pub(super) async fn revert(&self, run: &Run<'_>, spec: &AppSpec, from: Option<&str>) -> Result<String, String> {
        let Some(from) = from else {
            return Err("no earlier release on this host to go back to; the unit is left as it is".into());
        };
        let t = run.started(Phase::Revert);
        let outcome: Result<String, String> = async {
            let (app, to) = (run.app.clone(), from.to_string());
            blocking(move || app.swap(&to))
                .await
                .map_err(|e| format!("cannot swap back to {from}: {e}"))?;
            match self.units.restart(&spec.unit, RESTART_TIMEOUT).await {
                Ok(r) if r == "done" => {}
                Ok(r) => return Err(format!("swapped back to {from} but its restart job ended '{r}'")),
                Err(e) => return Err(format!("swapped back to {from} but could not restart: {e}")),
            }
            // A short settle: the previous release was verified before.
            tokio::time::sleep(Duration::from_millis(spec.settle_ms.min(2_000))).await;
            let s = self.units.state(&spec.unit).await.map_err(|e| e.to_string())?;
            if s.unit.active_state != "active" {
                return Err(format!(
                    "swapped back to {from} but {} is {} ({})",
                    spec.unit, s.unit.active_state, s.unit.sub_state
                ));
            }
            let health = self.check_health(run, spec).await;
            if !health.ok {
                return Err(format!(
                    "swapped back to {from}, but it is not healthy either: {}",
                    health.detail
                ));
            }
            Ok(format!(
                "reverted to {from}: {} active, MainPID {}, healthy",
                spec.unit, s.unit.main_pid
            ))
        }
        .await;
        match &outcome {
            Ok(d) => run.succeeded(Phase::Revert, t, d),
            Err(d) => run.phase_failed(&fail(Phase::Revert, FailureCause::Unit, d.clone()), t),
        }
        outcome
    }

    /// Undoes a change an agent was killed in the middle of: the swap back
    /// to the release that was verified before, and a restart onto it.
    pub(super) async fn recover(&self) {
        for app in layout::apps(&self.state_dir) {
            let cleaning = app.clone();
            let leftovers = blocking(move || cleaning.clean_leftovers()).await;
            if !leftovers.is_empty() {
                tracing::warn!(app = %app.app, ?leftovers, "removed what an interrupted deploy left behind");
            }
            let Some(intent) = app.intent() else { continue };
            let current = app.current();
            tracing::warn!(app = %app.app, from = ?intent.from, to = %intent.to, current = ?current, "the agent stopped during a deploy; going back to the release that was verified");
            match &intent.from {
                Some(from) if current.as_deref() != Some(from.as_str()) => {
                    let (swapping, to) = (app.clone(), from.clone());
                    if let Err(e) = blocking(move || swapping.swap(&to)).await {
                        tracing::error!(app = %app.app, error = %e, "cannot swap back; leaving the intent for the next start");
                        continue;
                    }
                }
                Some(_) => {}
                None => tracing::warn!(app = %app.app, "no earlier release to go back to; current stays as it is"),
            }
            if intent.from.is_some() {
                match self.units.restart(&intent.unit, RESTART_TIMEOUT).await {
                    Ok(r) => {
                        tracing::info!(app = %app.app, unit = %intent.unit, job = %r, "restarted on the release that was verified")
                    }
                    Err(e) => tracing::error!(app = %app.app, error = %e, "restart after recovery failed"),
                }
            }
            let clearing = app.clone();
            if let Err(e) = blocking(move || clearing.clear_intent()).await {
                tracing::error!(app = %app.app, error = %e, "cannot remove the intent file");
            }
        }
    }
}
