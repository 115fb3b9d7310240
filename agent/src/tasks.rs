//! Work the controller sends. Deploy and rollback arrive with the releases
//! work; until then every task is answered with a clear failure, so a
//! rollout aimed at this agent stops with a reason instead of hanging.

use fleet_proto::{task, FailureCause, Task, TaskProgress, TaskState};

/// The progress report that answers `task`.
pub fn handle_task(task: &Task) -> TaskProgress {
    let kind = match &task.kind {
        Some(task::Kind::Deploy(_)) => "deploy",
        Some(task::Kind::Rollback(_)) => "rollback",
        None => "unknown",
    };
    tracing::warn!(task_id = %task.task_id, rollout_id = %task.rollout_id, kind, "refusing a task this agent cannot run yet");
    TaskProgress {
        task_id: task.task_id.clone(),
        phase: "done".into(),
        state: TaskState::Failed.into(),
        detail: format!(
            "this agent (version {}) cannot run {kind} tasks yet",
            env!("CARGO_PKG_VERSION")
        ),
        duration_ms: 0,
        cause: FailureCause::Unspecified.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_refused_by_name() {
        let t = Task {
            task_id: "t-1".into(),
            rollout_id: "r-1".into(),
            kind: Some(task::Kind::Rollback(Default::default())),
        };
        let p = handle_task(&t);
        assert_eq!(p.task_id, "t-1");
        assert_eq!(p.phase, "done");
        assert_eq!(p.state(), TaskState::Failed);
        assert!(p.detail.contains("cannot run rollback tasks yet"), "{}", p.detail);
    }
}
