//! What the host runs, for hello and inventory messages: every app's
//! releases, links, unit state and last health, and the tasks in flight.

use std::path::PathBuf;
use std::sync::Arc;

use std::collections::VecDeque;

use fleet_proto::{AppInventory, Inventory, TaskProgress};

use crate::layout;
use crate::units::Units;

/// Ends of tasks remembered, to answer a task sent again.
const ENDS_KEPT: usize = 64;

/// The host's apps and their units; shared by the deploy worker and sessions.
pub struct Host {
    state_dir: PathBuf,
    units: Arc<dyn Units>,
    tasks: std::sync::Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    /// Accepted and not finished (queued or running).
    running: Vec<String>,
    /// The last ends, newest last.
    ended: VecDeque<TaskProgress>,
}

/// What a task the controller sends is to this host. A controller that
/// takes over a rollout, or restarts, may send a task again when it cannot
/// know whether the first sending reached the host; a task id runs once.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// Never seen: it is queued.
    New,
    /// Queued or running already: its reports follow.
    Running,
    /// It ended: its end, to be reported again.
    Ended(TaskProgress),
}

impl Host {
    /// The apps under `state_dir`, their units reached through `units`.
    pub fn new(state_dir: PathBuf, units: Arc<dyn Units>) -> Host {
        Host {
            state_dir,
            units,
            tasks: Default::default(),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a task from the controller: a new one is recorded as running.
    pub fn accept(&self, task_id: &str) -> Taken {
        let mut t = self.tasks();
        if t.running.iter().any(|r| r == task_id) {
            return Taken::Running;
        }
        if let Some(end) = t.ended.iter().find(|p| p.task_id == task_id) {
            return Taken::Ended(end.clone());
        }
        t.running.push(task_id.to_string());
        Taken::New
    }

    /// Forgets a task that was never queued (the queue was full): sent
    /// again, it runs.
    pub fn forget(&self, task_id: &str) {
        self.tasks().running.retain(|t| t != task_id);
    }

    /// Records a task's end (before it is reported, so that the task sent
    /// again at any moment finds it running or ended).
    pub fn ended(&self, end: &TaskProgress) {
        let mut t = self.tasks();
        t.running.retain(|r| *r != end.task_id);
        if t.ended.len() >= ENDS_KEPT {
            t.ended.pop_front();
        }
        t.ended.push_back(end.clone());
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
            running_tasks: self.tasks().running.clone(),
        }
    }
}
