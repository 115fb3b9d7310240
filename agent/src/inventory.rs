//! What the host runs, for hello and inventory messages: every app's
//! releases, links, unit state and last health, and the tasks in flight.

use std::path::PathBuf;
use std::sync::Arc;

use fleet_proto::{AppInventory, Inventory};

use crate::layout;
use crate::units::Units;

/// The host's apps and their units; shared by the deploy worker and sessions.
pub struct Host {
    state_dir: PathBuf,
    units: Arc<dyn Units>,
    /// Tasks accepted and not finished (queued or running).
    running: std::sync::Mutex<Vec<String>>,
}

impl Host {
    /// The apps under `state_dir`, their units reached through `units`.
    pub fn new(state_dir: PathBuf, units: Arc<dyn Units>) -> Host {
        Host {
            state_dir,
            units,
            running: Default::default(),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a task taken from the controller.
    pub fn accept(&self, task_id: &str) {
        self.running().push(task_id.to_string());
    }

    /// Forgets a task: finished, or never queued.
    pub fn finish(&self, task_id: &str) {
        self.running().retain(|t| t != task_id);
    }

    /// What the host runs: every app's releases, links, unit and last health.
    pub async fn inventory(&self) -> Inventory {
        let mut apps = Vec::new();
        for dir in layout::apps(&self.state_dir) {
            let unit = match dir.spec() {
                Some(spec) => self.units.state(&spec.unit).await.ok().map(|s| s.unit),
                None => None,
            };
            apps.push(AppInventory {
                app: dir.app.clone(),
                releases: dir.releases(),
                current: dir.current().unwrap_or_default(),
                previous: dir.previous().unwrap_or_default(),
                unit,
                last_health: dir.health(),
            });
        }
        Inventory {
            apps,
            running_tasks: self.running().clone(),
        }
    }
}
