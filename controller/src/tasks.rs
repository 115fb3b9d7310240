//! Tasks in flight: which host runs which task, and who is waiting for its
//! progress. The session task of a host feeds progress in; when the host's
//! stream ends, every task it had in flight fails with cause UNREACHABLE, so
//! nobody waits for an answer that cannot come. Sending a task is
//! `dispatch`'s job; this module depends on nothing else in the controller.

use std::collections::HashMap;
use std::sync::Mutex;

use fleet_proto::{FailureCause, TaskProgress, TaskState};
use tokio::sync::mpsc;

struct Pending {
    host_id: String,
    tx: mpsc::Sender<TaskProgress>,
}

/// Tasks sent to agents and not finished yet.
#[derive(Default)]
pub struct Tasks {
    pending: Mutex<HashMap<String, Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a progress report ends its task.
pub fn is_final(p: &TaskProgress) -> bool {
    fleet_proto::phase::Phase::Done.is(&p.phase) && p.state() != TaskState::Running
}

impl Tasks {
    /// Registers a task sent to `host_id`; progress arrives on the receiver.
    pub fn register(&self, task_id: &str, host_id: &str) -> mpsc::Receiver<TaskProgress> {
        let (tx, rx) = mpsc::channel(64);
        lock(&self.pending).insert(
            task_id.to_string(),
            Pending {
                host_id: host_id.to_string(),
                tx,
            },
        );
        rx
    }

    /// Forgets a task (its waiter gave up).
    pub fn forget(&self, task_id: &str) {
        lock(&self.pending).remove(task_id);
    }

    /// Routes a progress report from `host_id`. Reports of unknown tasks, or
    /// of tasks another host runs, are dropped (and logged).
    pub fn progress(&self, host_id: &str, mut p: TaskProgress) {
        p.host_id = host_id.to_string();
        let tx = {
            let mut pending = lock(&self.pending);
            match pending.get(&p.task_id) {
                Some(t) if t.host_id == host_id => {
                    let tx = t.tx.clone();
                    if is_final(&p) {
                        pending.remove(&p.task_id);
                    }
                    tx
                }
                _ => {
                    tracing::debug!(host_id, task_id = %p.task_id, "progress for a task nobody waits for");
                    return;
                }
            }
        };
        // A waiter that stopped reading loses intermediate reports, never blocks
        // the host's session.
        if tx.try_send(p).is_err() {
            tracing::debug!(host_id, "a task waiter is not reading; progress dropped");
        }
    }

    /// Fails every task of a host whose stream ended.
    pub fn host_gone(&self, host_id: &str, why: &str) {
        let gone: Vec<(String, Pending)> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, t)| t.host_id == host_id)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|t| (id, t)))
                .collect()
        };
        for (task_id, t) in gone {
            let _ = t.tx.try_send(TaskProgress {
                task_id,
                phase: "done".into(),
                state: TaskState::Failed.into(),
                detail: format!("host {host_id} went away while the task ran ({why}); what it did last is in its inventory when it is back"),
                cause: FailureCause::Unreachable.into(),
                host_id: host_id.to_string(),
                ..Default::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(task: &str, phase: &str, state: TaskState) -> TaskProgress {
        TaskProgress {
            task_id: task.into(),
            phase: phase.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn progress_reaches_the_waiter_of_the_right_host_only() {
        let tasks = Tasks::default();
        let mut rx = tasks.register("t1", "h1");
        tasks.progress("h2", progress("t1", "fetch", TaskState::Running));
        tasks.progress("h1", progress("t1", "fetch", TaskState::Running));
        let p = rx.try_recv().expect("one report");
        assert_eq!((p.phase.as_str(), p.host_id.as_str()), ("fetch", "h1"));
        assert!(rx.try_recv().is_err(), "the report from h2 must be dropped");
        tasks.progress("h1", progress("t1", "done", TaskState::Succeeded));
        assert!(is_final(&rx.try_recv().expect("final")));
        assert!(lock(&tasks.pending).is_empty());
    }

    #[test]
    fn a_host_going_away_fails_its_tasks_as_unreachable() {
        let tasks = Tasks::default();
        let mut a = tasks.register("t1", "h1");
        let mut b = tasks.register("t2", "h2");
        tasks.host_gone("h1", "stream cut");
        let p = a.try_recv().expect("failure");
        assert_eq!(p.cause(), FailureCause::Unreachable);
        assert_eq!(p.state(), TaskState::Failed);
        assert!(b.try_recv().is_err());
    }
}
