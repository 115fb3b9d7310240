//! The rollout contract's rules, shared by `fleetctl` (clap parses flags with
//! these `FromStr`s, so a bad `--batch` is a usage error before dialling) and
//! the controller (which parses the same strings of a `StartRolloutRequest`
//! once, when it plans): batch sizes, failure budgets, the offline policy,
//! their defaults, and the words people read for each typed state.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::v1::{BatchState, EventKind, HostCounts, HostState, RolloutBatch, RolloutKind, RolloutState, TokenState};

/// The batch size when a rollout names none.
pub const DEFAULT_BATCH: BatchSpec = BatchSpec::Percent(25);
/// The batch size of a fleet-wide rollback when it names none: fast, but
/// never the whole fleet at once.
pub const DEFAULT_ROLLBACK_BATCH: BatchSpec = BatchSpec::Percent(50);
/// The failure budget when a rollout names none: the first failure stops it.
pub const DEFAULT_MAX_FAILURES: FailureBudget = FailureBudget::Count(0);
/// Offline hosts are skipped by default: they converge when they return.
pub const DEFAULT_OFFLINE: OfflinePolicy = OfflinePolicy::Skip;

/// How many hosts a batch changes at once: a share of the hosts or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSpec {
    /// 1–100 % of the hosts, rounded up, at least one.
    Percent(u8),
    /// This many hosts (at least one).
    Count(u32),
}

impl BatchSpec {
    /// The batch size in hosts for `n` hosts: at least 1.
    pub fn hosts(self, n: usize) -> usize {
        let size = match self {
            BatchSpec::Percent(p) => (n * p as usize).div_ceil(100),
            BatchSpec::Count(k) => k as usize,
        };
        size.max(1)
    }

    /// The spec of a request field: empty means the default.
    pub fn of_request(field: &str) -> Result<BatchSpec, String> {
        if field.trim().is_empty() {
            Ok(DEFAULT_BATCH)
        } else {
            field.parse()
        }
    }
}

impl FromStr for BatchSpec {
    type Err = String;
    fn from_str(spec: &str) -> Result<BatchSpec, String> {
        let spec = spec.trim();
        if let Some(p) = spec.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| format!("batch '{spec}' is not N or N%"))?;
            if p == 0 || p > 100 {
                return Err(format!("batch '{spec}' must be between 1% and 100%"));
            }
            return Ok(BatchSpec::Percent(p));
        }
        let k: u32 = spec.parse().map_err(|_| format!("batch '{spec}' is not N or N%"))?;
        if k == 0 {
            return Err("batch must be at least 1 host".into());
        }
        Ok(BatchSpec::Count(k))
    }
}

impl fmt::Display for BatchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSpec::Percent(p) => write!(f, "{p}%"),
            BatchSpec::Count(k) => write!(f, "{k}"),
        }
    }
}

/// How many failed hosts a rollout tolerates before it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureBudget {
    /// This many hosts.
    Count(u32),
    /// This share of the hosts, rounded down.
    Percent(u8),
}

impl FailureBudget {
    /// The budget in hosts for `n` hosts.
    pub fn hosts(self, n: usize) -> u32 {
        match self {
            FailureBudget::Count(k) => k,
            FailureBudget::Percent(p) => (n * p as usize / 100) as u32,
        }
    }

    /// The budget of a request field: empty means the default.
    pub fn of_request(field: &str) -> Result<FailureBudget, String> {
        if field.trim().is_empty() {
            Ok(DEFAULT_MAX_FAILURES)
        } else {
            field.parse()
        }
    }
}

impl FromStr for FailureBudget {
    type Err = String;
    fn from_str(spec: &str) -> Result<FailureBudget, String> {
        let spec = spec.trim();
        if let Some(p) = spec.strip_suffix('%') {
            let p: u8 = p
                .trim()
                .parse()
                .map_err(|_| format!("max-failures '{spec}' is not N or N%"))?;
            if p > 100 {
                return Err(format!("max-failures '{spec}' is above 100%"));
            }
            return Ok(FailureBudget::Percent(p));
        }
        spec.parse()
            .map(FailureBudget::Count)
            .map_err(|_| format!("max-failures '{spec}' is not N or N%"))
    }
}

impl fmt::Display for FailureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureBudget::Percent(p) => write!(f, "{p}%"),
            FailureBudget::Count(k) => write!(f, "{k}"),
        }
    }
}

/// What a rollout does with a host that is not connected when its batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflinePolicy {
    /// Skip it now; it converges to its desired release when it connects.
    Skip,
    /// Wait for it this long after its batch started, then count it failed.
    Wait(Duration),
}

/// The longest `--offline wait:D` a rollout accepts.
pub const MAX_OFFLINE_WAIT: Duration = Duration::from_secs(24 * 3600);

impl OfflinePolicy {
    /// The policy of a request field: empty means the default.
    pub fn of_request(field: &str) -> Result<OfflinePolicy, String> {
        if field.trim().is_empty() {
            Ok(DEFAULT_OFFLINE)
        } else {
            field.parse()
        }
    }
}

impl fmt::Display for OfflinePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfflinePolicy::Skip => write!(f, "skip"),
            OfflinePolicy::Wait(d) => write!(f, "wait:{}", humantime::format_duration(*d)),
        }
    }
}

impl FromStr for OfflinePolicy {
    type Err = String;
    fn from_str(spec: &str) -> Result<OfflinePolicy, String> {
        match spec.trim() {
            "skip" => Ok(OfflinePolicy::Skip),
            s => {
                let d = s
                    .strip_prefix("wait:")
                    .and_then(|d| humantime::parse_duration(d.trim()).ok())
                    .ok_or_else(|| format!("offline '{s}' is neither 'skip' nor 'wait:DURATION' (e.g. wait:5m)"))?;
                if d > MAX_OFFLINE_WAIT {
                    return Err(format!("offline '{s}' waits longer than 24h"));
                }
                Ok(OfflinePolicy::Wait(d))
            }
        }
    }
}

impl RolloutState {
    /// Whether the rollout is over.
    pub fn ended(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded | RolloutState::Failed | RolloutState::RolledBack | RolloutState::Aborted
        )
    }

    /// The word people and JSON read.
    pub fn word(self) -> &'static str {
        match self {
            RolloutState::Unspecified => "unknown",
            RolloutState::Planned => "planned",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }
}

impl BatchState {
    /// The word people and JSON read.
    pub fn word(self) -> &'static str {
        match self {
            BatchState::Unspecified => "unknown",
            BatchState::Pending => "pending",
            BatchState::Running => "running",
            BatchState::Done => "done",
            BatchState::Failed => "failed",
        }
    }

    /// Whether every host of the batch ended.
    pub fn ended(self) -> bool {
        matches!(self, BatchState::Done | BatchState::Failed)
    }
}

impl HostState {
    /// The word people and JSON read.
    pub fn word(self) -> &'static str {
        match self {
            HostState::Unspecified => "unknown",
            HostState::Pending => "pending",
            HostState::Running => "running",
            HostState::Succeeded => "succeeded",
            HostState::Unchanged => "unchanged",
            HostState::Skipped => "skipped",
            HostState::Failed => "failed",
            HostState::RollingBack => "rolling_back",
            HostState::RolledBack => "rolled_back",
            HostState::RollbackFailed => "rollback_failed",
        }
    }

    /// Whether the host's part in the rollout is over (nothing in flight).
    pub fn ended(self) -> bool {
        matches!(
            self,
            HostState::Succeeded
                | HostState::Unchanged
                | HostState::Skipped
                | HostState::Failed
                | HostState::RolledBack
                | HostState::RollbackFailed
        )
    }

    /// Whether a task is in flight on the host.
    pub fn in_flight(self) -> bool {
        matches!(self, HostState::Running | HostState::RollingBack)
    }
}

impl HostCounts {
    /// A batch's hosts by state: its `counts` when it is a summary (no
    /// hosts), else counted from its hosts.
    pub fn of(b: &RolloutBatch) -> HostCounts {
        if b.hosts.is_empty() {
            return b.counts.unwrap_or_default();
        }
        let mut c = HostCounts::default();
        for h in &b.hosts {
            let n = match h.state() {
                HostState::Succeeded | HostState::Unchanged => &mut c.done,
                HostState::Failed | HostState::RollbackFailed => &mut c.failed,
                HostState::RolledBack => &mut c.rolled_back,
                HostState::Skipped => &mut c.skipped,
                HostState::Running | HostState::RollingBack => &mut c.running,
                HostState::Pending | HostState::Unspecified => &mut c.pending,
            };
            *n += 1;
        }
        c
    }

    /// `b` as a summary: no hosts, their counts instead.
    pub fn summarize(b: &mut RolloutBatch) {
        b.counts = Some(HostCounts::of(b));
        b.hosts = Vec::new();
    }
}

impl RolloutKind {
    /// The word people and JSON read.
    pub fn word(self) -> &'static str {
        match self {
            RolloutKind::Unspecified | RolloutKind::Rollout => "rollout",
            RolloutKind::Rollback => "rollback",
            RolloutKind::Converge => "converge",
        }
    }
}

impl EventKind {
    /// The word people and JSON read.
    pub fn word(self) -> &'static str {
        match self {
            EventKind::Unspecified => "unknown",
            EventKind::Snapshot => "snapshot",
            EventKind::RolloutStarted => "rollout_started",
            EventKind::BatchStarted => "batch_started",
            EventKind::HostPhase => "host_phase",
            EventKind::HostDone => "host_done",
            EventKind::BatchDone => "batch_done",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::RollingBack => "rolling_back",
            EventKind::RolloutEnded => "rollout_ended",
        }
    }
}

impl TokenState {
    /// The word people and JSON read.
    pub fn word(self) -> &'static str {
        match self {
            TokenState::Unspecified => "unknown",
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
            TokenState::UsedUp => "used_up",
        }
    }
}

/// The short form of a host id people read (`hosts ls` shows the same).
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_keeps_the_counts_of_the_hosts_it_drops() {
        let host = |state: HostState| {
            let mut h = crate::v1::RolloutHost::default();
            h.set_state(state);
            h
        };
        let mut b = RolloutBatch {
            hosts: [
                HostState::Succeeded,
                HostState::Unchanged,
                HostState::Failed,
                HostState::RollbackFailed,
                HostState::RolledBack,
                HostState::Skipped,
                HostState::Running,
                HostState::RollingBack,
                HostState::Pending,
            ]
            .into_iter()
            .map(host)
            .collect(),
            ..Default::default()
        };
        let counted = HostCounts::of(&b);
        assert_eq!(
            counted,
            HostCounts {
                done: 2,
                failed: 2,
                rolled_back: 1,
                skipped: 1,
                running: 2,
                pending: 1,
            }
        );
        HostCounts::summarize(&mut b);
        assert!(b.hosts.is_empty());
        assert_eq!(HostCounts::of(&b), counted, "a summary counts the same");
    }

    #[test]
    fn batch_sizes() {
        let b = |s: &str, n| s.parse::<BatchSpec>().map(|b| b.hosts(n));
        assert_eq!(b("25%", 4), Ok(1));
        assert_eq!(b("25%", 5), Ok(2));
        assert_eq!(b("100%", 5), Ok(5));
        assert_eq!(b("2", 5), Ok(2));
        assert_eq!(b("1%", 3), Ok(1));
        assert!(b("0", 3).is_err());
        assert!(b("0%", 3).is_err());
        assert!(b("101%", 3).is_err());
        assert!(b("lots", 3).is_err());
        assert_eq!(BatchSpec::of_request(""), Ok(DEFAULT_BATCH));
        assert_eq!(BatchSpec::Percent(25).to_string(), "25%");
    }

    #[test]
    fn failure_budgets() {
        let f = |s: &str, n| FailureBudget::of_request(s).map(|b| b.hosts(n));
        assert_eq!(f("0", 10), Ok(0));
        assert_eq!(f("", 10), Ok(0));
        assert_eq!(f("2", 10), Ok(2));
        assert_eq!(f("10%", 10), Ok(1));
        assert_eq!(f("10%", 9), Ok(0));
        assert!(f("x", 3).is_err());
        assert!(f("101%", 3).is_err());
    }

    #[test]
    fn offline_policies() {
        assert_eq!("skip".parse(), Ok(OfflinePolicy::Skip));
        assert_eq!(OfflinePolicy::of_request(""), Ok(OfflinePolicy::Skip));
        assert!("".parse::<OfflinePolicy>().is_err(), "clap never gives an empty flag");
        assert_eq!(OfflinePolicy::Wait(Duration::from_secs(300)).to_string(), "wait:5m");
        assert_eq!("wait:5m".parse(), Ok(OfflinePolicy::Wait(Duration::from_secs(300))));
        assert_eq!("wait:90s".parse(), Ok(OfflinePolicy::Wait(Duration::from_secs(90))));
        assert!("wait".parse::<OfflinePolicy>().is_err());
        assert!("wait:2d".parse::<OfflinePolicy>().is_err(), "over 24h");
        assert!("later".parse::<OfflinePolicy>().is_err());
    }

    #[test]
    fn state_words_and_rules() {
        assert!(RolloutState::RolledBack.ended() && !RolloutState::RollingBack.ended());
        assert_eq!(RolloutState::RolledBack.word(), "rolled_back");
        assert!(HostState::Skipped.ended() && HostState::RollingBack.in_flight());
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
