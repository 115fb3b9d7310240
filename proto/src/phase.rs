//! The phases of a deploy, as the agent reports them in
//! `TaskProgress.phase` and the controller and fleetctl read them. The wire
//! carries the word (`as_str`), so an older reader shows a phase it does not
//! know instead of failing.

use std::fmt;
use std::str::FromStr;

/// One phase of a deploy or rollback on a host, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The task is checked before anything changes.
    Start,
    /// The release's signature is checked against the host's pinned keys,
    /// before a byte is fetched (only on hosts that pin keys).
    Signature,
    /// The artifact is downloaded (resumable).
    Fetch,
    /// Its sha256 is checked.
    Verify,
    /// It is unpacked into `releases/<version>/`.
    Unpack,
    /// The release's `pre_activate` hook, before the swap.
    PreActivate,
    /// `current` is swapped to the release.
    Swap,
    /// The unit is restarted.
    Restart,
    /// The unit must stay active, without restarts, for the settle time.
    Settle,
    /// The release's `post_activate` hook.
    PostActivate,
    /// The app's health check.
    Health,
    /// The release's `validate` hook.
    Validate,
    /// A failure after the swap: back to the previous release.
    Revert,
    /// The task's end: its state is the outcome.
    Done,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 14] = [
        Phase::Start,
        Phase::Signature,
        Phase::Fetch,
        Phase::Verify,
        Phase::Unpack,
        Phase::PreActivate,
        Phase::Swap,
        Phase::Restart,
        Phase::Settle,
        Phase::PostActivate,
        Phase::Health,
        Phase::Validate,
        Phase::Revert,
        Phase::Done,
    ];

    /// The word on the wire and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Signature => "signature",
            Phase::Fetch => "fetch",
            Phase::Verify => "verify",
            Phase::Unpack => "unpack",
            Phase::PreActivate => "pre_activate",
            Phase::Swap => "swap",
            Phase::Restart => "restart",
            Phase::Settle => "settle",
            Phase::PostActivate => "post_activate",
            Phase::Health => "health",
            Phase::Validate => "validate",
            Phase::Revert => "revert",
            Phase::Done => "done",
        }
    }

    /// Whether `word` (a `TaskProgress.phase`) is this phase.
    pub fn is(self, word: &str) -> bool {
        word == self.as_str()
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Phase, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.is(s))
            .ok_or_else(|| format!("'{s}' is not a deploy phase"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_reads_back_from_its_word() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
        }
        assert!("queued".parse::<Phase>().is_err());
        let words: std::collections::HashSet<_> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(words.len(), Phase::ALL.len(), "two phases share a word");
    }
}
