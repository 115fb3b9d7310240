//! The deploy worker: one task that runs deploys and rollbacks one at a time,
//! phase by phase, reporting each phase with its duration.
//!
//! Deploy: fetch (resumable) → verify (sha256) → unpack (into a staging dir,
//! fsynced, renamed into `releases/`) → `pre_activate` → swap `current` →
//! restart the unit (D-Bus, waits for JobRemoved) → settle (active, NRestarts
//! unchanged) → `post_activate` → health → `validate` → done. A failure
//! before the swap changes nothing that runs; a failure after it swaps back,
//! restarts and checks the previous release, and the report carries the
//! evidence (journal tail, hook output, health response), redacted.
//!
//! One job per file: `worker` (the queue, a task's start and end), `trusted`
//! (on hosts that pin signing keys: the signature, the spec, rollback
//! targets), `fetch` (download, verify, unpack), `activate` (from the swap to done), `revert`
//! (back to the previous release, and recovery at start), `report` (progress
//! messages). The I/O it waits on is behind narrow traits — the unit
//! manager ([`crate::units::Units`]), the health check
//! ([`crate::health::Checker`]) and the download ([`fetch::Fetch`]) — so
//! every path runs in unit tests against fakes (`tests`). File-system steps
//! that fsync, rename, remove or hash run on the blocking pool, never on the
//! agent's one runtime thread, which must keep heartbeats and watchdog pings
//! on time.
//!
//! The worker outlives streams: its reports queue in the outbox, which each
//! session drains; its downloads use whichever channel the current session
//! published, and resume from the bytes already on disk.

use std::time::Duration;

use fleet_proto::phase::Phase;
use fleet_proto::FailureCause;

use crate::offload::blocking;

mod activate;
mod fetch;
mod report;
mod revert;
mod trusted;
mod worker;

#[cfg(test)]
mod tests;

pub use worker::{start, WorkerHandle};

/// Tasks waiting to run; more are refused as busy.
const QUEUE: usize = 8;
/// Reports waiting for a stream.
const OUTBOX: usize = 256;
/// How long a restart job may take.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// How often settle reads the unit's state.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// Journal lines in a failure report.
const JOURNAL_LINES: u32 = 20;

/// A phase that failed: its cause and what was seen.
#[derive(Debug)]
struct Failed {
    phase: Phase,
    cause: FailureCause,
    detail: String,
}

fn fail(phase: Phase, cause: FailureCause, detail: impl Into<String>) -> Failed {
    Failed {
        phase,
        cause,
        detail: detail.into(),
    }
}

/// What a failed task left running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// It failed before the swap: the release that ran still runs.
    Unchanged,
    /// It failed after the swap and the previous release runs again, checked.
    Reverted,
    /// It failed after the swap and going back failed too (or there was
    /// nothing to go back to): the report says what runs.
    NotReverted,
}

/// How a task ended: `Ok` says what runs now.
type Outcome = Result<String, Failure>;

/// A task that failed: the phase, and what that left running.
#[derive(Debug)]
struct Failure {
    failed: Failed,
    after: After,
}

impl Failed {
    /// A failure before anything changed.
    fn unchanged(self) -> Failure {
        Failure {
            failed: self,
            after: After::Unchanged,
        }
    }
}

fn io_cause(e: &std::io::Error) -> FailureCause {
    if e.raw_os_error() == Some(28) {
        FailureCause::DiskFull
    } else {
        FailureCause::Agent
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
