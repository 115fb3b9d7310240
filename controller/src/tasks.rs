//! Tasks in flight: which host runs which task, and who is waiting for its
//! progress. The session task of a host feeds progress in; when the host's
//! stream ends, every task it had in flight fails with cause UNREACHABLE, so
//! nobody waits for an answer that cannot come. Sending a task is
//! `dispatch`'s job; this module depends on nothing else in the controller.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use fleet_proto::{FailureCause, TaskProgress, TaskState};
use tokio::sync::mpsc;

struct Pending {
    host_id: String,
    tx: mpsc::Sender<TaskProgress>,
}

/// Final reports kept for a waiter that registers late, at most.
const UNCLAIMED_KEPT: usize = 1024;

/// Tasks sent to agents and not finished yet.
#[derive(Default)]
pub struct Tasks {
    pending: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<String, Pending>,
    /// The last final reports of tasks nobody waited for when they came,
    /// with their hosts: a rollout resumed by another controller (or after
    /// a restart) re-attaches to a task the host's hello said was running,
    /// and the task may end between that hello and the re-attaching.
    unclaimed: VecDeque<(String, TaskProgress)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a progress report ends its task.
pub fn is_final(p: &TaskProgress) -> bool {
    fleet_proto::phase::Phase::Done.is(&p.phase) && p.state() != TaskState::Running
}

/// Whether a report is the end [`Tasks::host_gone`] gives the tasks of a
/// host whose stream ended (no agent reports that cause: it is the
/// controller's own).
pub fn went_away(p: &TaskProgress) -> bool {
    is_final(p) && p.state() == TaskState::Failed && p.cause() == FailureCause::Unreachable
}

impl Tasks {
    /// Registers a task sent to `host_id`; progress arrives on the receiver.
    /// When the task's end already came (see `Inner::unclaimed`), the
    /// receiver holds it at once.
    pub fn register(&self, task_id: &str, host_id: &str) -> mpsc::Receiver<TaskProgress> {
        let (tx, rx) = mpsc::channel(64);
        let mut inner = lock(&self.pending);
        let kept = inner
            .unclaimed
            .iter()
            .position(|(host, p)| host == host_id && p.task_id == task_id);
        if let Some(end) = kept.and_then(|i| inner.unclaimed.remove(i)) {
            // Invariant: the channel was just made with room.
            let _ = tx.try_send(end.1);
            return rx;
        }
        inner.waiting.insert(
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
        lock(&self.pending).waiting.remove(task_id);
    }

    /// Routes a progress report from `host_id`. Reports of unknown tasks, or
    /// of tasks another host runs, are dropped (and logged).
    pub fn progress(&self, host_id: &str, mut p: TaskProgress) {
        p.host_id = host_id.to_string();
        let tx = {
            let mut inner = lock(&self.pending);
            match inner.waiting.get(&p.task_id) {
                Some(t) if t.host_id == host_id => {
                    let tx = t.tx.clone();
                    if is_final(&p) {
                        inner.waiting.remove(&p.task_id);
                    }
                    tx
                }
                Some(_) => {
                    tracing::debug!(host_id, task_id = %p.task_id, "progress for a task of another host");
                    return;
                }
                None => {
                    tracing::debug!(host_id, task_id = %p.task_id, "progress for a task nobody waits for");
                    if is_final(&p) {
                        if inner.unclaimed.len() >= UNCLAIMED_KEPT {
                            inner.unclaimed.pop_front();
                        }
                        inner.unclaimed.push_back((host_id.to_string(), p));
                    }
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
            let mut inner = lock(&self.pending);
            let ids: Vec<String> = inner
                .waiting
                .iter()
                .filter(|(_, t)| t.host_id == host_id)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| inner.waiting.remove(&id).map(|t| (id, t)))
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
        assert!(lock(&tasks.pending).waiting.is_empty());
    }

    #[test]
    fn an_end_that_came_before_its_waiter_reaches_it_when_it_registers() {
        let tasks = Tasks::default();
        // Ends nobody waits for yet: one of h1's task, one of h2's.
        tasks.progress("h1", progress("t1", "activate", TaskState::Succeeded));
        tasks.progress("h1", progress("t1", "done", TaskState::Succeeded));
        tasks.progress("h2", progress("t2", "done", TaskState::Failed));
        // Another host's waiter for t2 does not get h2's end.
        let mut other = tasks.register("t2", "h3");
        assert!(other.try_recv().is_err());
        let mut rx = tasks.register("t1", "h1");
        let p = rx.try_recv().expect("the end kept for t1");
        assert!(is_final(&p) && p.state() == TaskState::Succeeded, "{p:?}");
        assert!(rx.try_recv().is_err(), "only the end is kept, not the phases");
        // Taken once: registering again waits for a report.
        assert!(tasks.register("t1", "h1").try_recv().is_err());
    }

    #[test]
    fn unclaimed_ends_are_bounded() {
        let tasks = Tasks::default();
        for i in 0..UNCLAIMED_KEPT + 10 {
            tasks.progress("h1", progress(&format!("t{i}"), "done", TaskState::Succeeded));
        }
        assert_eq!(lock(&tasks.pending).unclaimed.len(), UNCLAIMED_KEPT);
        assert!(tasks.register("t0", "h1").try_recv().is_err(), "the oldest went first");
        assert!(tasks
            .register(&format!("t{}", UNCLAIMED_KEPT + 9), "h1")
            .try_recv()
            .is_ok());
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
        assert!(went_away(&p));
        assert!(
            !went_away(&progress("t1", "done", TaskState::Failed)),
            "an agent's failure"
        );
        assert!(b.try_recv().is_err());
    }
}
