//! Tasks in flight: which host runs which task, and who is waiting for its
//! progress. The session task of a host feeds progress in; when the host's
//! stream ends, every task it had in flight fails with cause UNREACHABLE, so
//! nobody waits for an answer that cannot come.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use fleet_proto::controller_message::Body as ToAgent;
use fleet_proto::{now_ms, task, ControllerMessage, FailureCause, Task, TaskProgress, TaskState};
use tokio::sync::mpsc;
use tonic::Status;

use crate::fleet::Fleet;

/// Why a task could not be handed to a host.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No stream is open.
    #[error("host {0} is not connected; try again when it is back")]
    NotConnected(String),
    /// The stream did not take the task in time.
    #[error("host {0} did not take the task (its stream is closed or stuck); try again")]
    Stuck(String),
}

impl From<SendError> for Status {
    fn from(e: SendError) -> Status {
        Status::unavailable(e.to_string())
    }
}

/// Sends a task to a connected host; its progress arrives on the receiver.
/// `task_id` is made here unless given (a restarted controller re-attaches
/// to a task by its id with [`Tasks::register`] instead).
pub async fn send(
    fleet: &Fleet,
    host_id: &str,
    rollout_id: &str,
    kind: task::Kind,
) -> Result<(String, mpsc::Receiver<TaskProgress>), SendError> {
    let task_id = format!("t-{}", crate::random_hex(8));
    send_as(fleet, host_id, rollout_id, &task_id, kind)
        .await
        .map(|rx| (task_id, rx))
}

/// [`send`] with a task id chosen (and recorded) by the caller.
pub async fn send_as(
    fleet: &Fleet,
    host_id: &str,
    rollout_id: &str,
    task_id: &str,
    kind: task::Kind,
) -> Result<mpsc::Receiver<TaskProgress>, SendError> {
    let Some(sender) = fleet.registry.sender(host_id) else {
        return Err(SendError::NotConnected(host_id.to_string()));
    };
    let progress = fleet.tasks.register(task_id, host_id);
    // Every deploy carries the host's permission to download its artifact
    // (see `grants`): the one place tasks are sent, so none goes without.
    let fetch_grant = match &kind {
        task::Kind::Deploy(d) => d
            .release
            .as_ref()
            .map(|r| fleet.grants.mint(host_id, &d.app, &r.version, &r.sha256, now_ms())),
        task::Kind::Rollback(_) => None,
    };
    let task = Task {
        task_id: task_id.to_string(),
        rollout_id: rollout_id.to_string(),
        kind: Some(kind),
        fetch_grant,
    };
    let sent = sender
        .send_timeout(
            Ok(ControllerMessage {
                body: Some(ToAgent::Task(task)),
            }),
            Duration::from_secs(10),
        )
        .await;
    if sent.is_err() {
        fleet.tasks.forget(task_id);
        return Err(SendError::Stuck(host_id.to_string()));
    }
    tracing::info!(task_id, host_id, rollout_id, "task sent");
    Ok(progress)
}

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
    p.phase == "done" && p.state() != TaskState::Running
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
