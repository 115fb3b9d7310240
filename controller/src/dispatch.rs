//! Sending a task to a host: register it in `Tasks`, attach the deploy's
//! `FetchGrant`, hand it to the host's stream. Depends only on `registry`,
//! `tasks` and `grants`, so anything above them (the rollout engine, `apps`)
//! can send without the task layer knowing about `Fleet`.

use std::time::Duration;

use fleet_proto::controller_message::Body as ToAgent;
use fleet_proto::{now_ms, task, ControllerMessage, Task, TaskProgress};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::grants::Grants;
use crate::registry::Registry;
use crate::tasks::Tasks;

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

/// The host may take the task later: try again.
impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        Error::Unavailable(e.to_string())
    }
}

/// What sending a task needs: the live streams, the tasks table and the
/// grants. Borrowed from `Fleet` with `Fleet::dispatch`.
#[derive(Clone, Copy)]
pub struct Dispatch<'a> {
    /// Live streams.
    pub registry: &'a Registry,
    /// Tasks in flight.
    pub tasks: &'a Tasks,
    /// Mints the `FetchGrant` of deploy tasks.
    pub grants: &'a Grants,
}

impl Dispatch<'_> {
    /// Sends a task to a connected host; its progress arrives on the receiver.
    /// `task_id` is made here unless given (a restarted controller re-attaches
    /// to a task by its id with [`Tasks::register`] instead).
    pub async fn send(
        self,
        host_id: &str,
        rollout_id: &str,
        kind: task::Kind,
    ) -> Result<(String, mpsc::Receiver<TaskProgress>), SendError> {
        let task_id = format!("t-{}", crate::random_hex(8));
        self.send_as(host_id, rollout_id, &task_id, kind)
            .await
            .map(|rx| (task_id, rx))
    }

    /// [`Dispatch::send`] with a task id chosen (and recorded) by the caller.
    pub async fn send_as(
        self,
        host_id: &str,
        rollout_id: &str,
        task_id: &str,
        kind: task::Kind,
    ) -> Result<mpsc::Receiver<TaskProgress>, SendError> {
        let Some(sender) = self.registry.sender(host_id) else {
            return Err(SendError::NotConnected(host_id.to_string()));
        };
        let progress = self.tasks.register(task_id, host_id);
        // Every deploy carries the host's permission to download its artifact
        // (see `grants`): the one place tasks are sent, so none goes without.
        let fetch_grant = match &kind {
            task::Kind::Deploy(d) => d
                .release
                .as_ref()
                .map(|r| self.grants.mint(host_id, &d.app, &r.version, &r.sha256, now_ms())),
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
                Ok(Box::new(ControllerMessage {
                    body: Some(ToAgent::Task(task)),
                })),
                Duration::from_secs(10),
            )
            .await;
        if sent.is_err() {
            self.tasks.forget(task_id);
            return Err(SendError::Stuck(host_id.to_string()));
        }
        tracing::info!(task_id, host_id, rollout_id, "task sent");
        Ok(progress)
    }
}
