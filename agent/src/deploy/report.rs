//! A task's progress messages: each phase's start, success or failure with
//! its duration, and the task's end. Every detail is redacted before it is
//! logged or queued for the controller.

use std::time::Instant;

use fleet_proto::agent_message::Body as Out;
use fleet_proto::phase::Phase;
use fleet_proto::{AgentMessage, TaskProgress, TaskState};
use tokio::sync::mpsc;

use super::{After, Failed, Outcome};
use crate::layout::AppDir;
use crate::redact::redact;

/// One task's reporting context.
pub(super) struct Run<'a> {
    pub outbox: &'a mpsc::Sender<AgentMessage>,
    pub task_id: String,
    pub app: AppDir,
}

impl Run<'_> {
    fn send(&self, p: TaskProgress) {
        let msg = AgentMessage {
            body: Some(Out::TaskProgress(p)),
        };
        if self.outbox.try_send(msg).is_err() {
            tracing::warn!(task_id = %self.task_id, "report queue full; a progress report was dropped");
        }
    }

    fn progress(&self, phase: Phase, state: TaskState) -> TaskProgress {
        TaskProgress {
            task_id: self.task_id.clone(),
            phase: phase.as_str().into(),
            state: state.into(),
            current: self.app.current().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// A phase starts; the returned instant times it.
    pub fn started(&self, phase: Phase) -> Instant {
        tracing::info!(task_id = %self.task_id, app = %self.app.app, %phase, "phase started");
        self.send(self.progress(phase, TaskState::Running));
        Instant::now()
    }

    /// A phase succeeded.
    pub fn succeeded(&self, phase: Phase, since: Instant, detail: impl AsRef<str>) {
        let duration_ms = since.elapsed().as_millis() as u64;
        let detail = redact(detail.as_ref());
        tracing::info!(task_id = %self.task_id, app = %self.app.app, %phase, duration_ms, %detail, "phase succeeded");
        self.send(TaskProgress {
            detail,
            duration_ms,
            ..self.progress(phase, TaskState::Succeeded)
        });
    }

    /// A phase failed.
    pub fn phase_failed(&self, f: &Failed, since: Instant) {
        let duration_ms = since.elapsed().as_millis() as u64;
        let detail = redact(&f.detail);
        tracing::warn!(task_id = %self.task_id, app = %self.app.app, phase = %f.phase, duration_ms, %detail, "phase failed");
        self.send(TaskProgress {
            detail,
            duration_ms,
            cause: f.cause.into(),
            ..self.progress(f.phase, TaskState::Failed)
        });
    }

    /// The task ended.
    /// The task's end, logged; [`Run::report_end`] sends it.
    pub fn end(&self, since: Instant, outcome: Outcome) -> TaskProgress {
        let duration_ms = since.elapsed().as_millis() as u64;
        let p = match outcome {
            Ok(detail) => TaskProgress {
                detail: redact(&detail),
                duration_ms,
                ..self.progress(Phase::Done, TaskState::Succeeded)
            },
            Err(failure) => TaskProgress {
                detail: redact(&format!("{} failed: {}", failure.failed.phase, failure.failed.detail)),
                duration_ms,
                cause: failure.failed.cause.into(),
                reverted: failure.after == After::Reverted,
                ..self.progress(Phase::Done, TaskState::Failed)
            },
        };
        tracing::info!(task_id = %self.task_id, app = %self.app.app, state = p.state, current = %p.current, reverted = p.reverted, "task finished");
        p
    }

    /// Reports the task's end.
    pub fn report_end(&self, end: TaskProgress) {
        self.send(end);
    }
}
