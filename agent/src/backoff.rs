//! Jittered exponential backoff between connection attempts.
//!
//! Full jitter (a uniform delay between zero and the current ceiling) spreads
//! thousands of agents over the whole window after a controller restart,
//! instead of having them all return in synchronized waves.

use std::time::Duration;

/// The first ceiling.
pub const INITIAL: Duration = Duration::from_millis(500);
/// The ceiling never grows past this (with one controller address).
pub const CAP: Duration = Duration::from_secs(30);

/// Delays for successive failures; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            ceiling: INITIAL,
            cap: CAP,
        }
    }
}

impl Backoff {
    /// A backoff at its initial ceiling.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// The delay before the next attempt, uniformly random in [0, ceiling];
    /// the ceiling then doubles, up to [`CAP`].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling.as_millis()).unwrap_or(u64::MAX);
        self.ceiling = (self.ceiling * 2).min(self.cap);
        Duration::from_millis(fastrand::u64(0..=ceiling_ms))
    }

    /// A backoff whose ceiling never grows past `cap` (at least [`INITIAL`]).
    pub fn capped(cap: Duration) -> Backoff {
        Backoff {
            ceiling: INITIAL,
            cap: cap.max(INITIAL),
        }
    }

    /// Back to the initial ceiling, after a connection that worked.
    pub fn reset(&mut self) {
        self.ceiling = INITIAL;
    }

    /// The current ceiling (the most the next delay can be).
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling();
            ceilings.push(ceiling.as_millis());
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
        }
        assert_eq!(
            ceilings,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]
        );
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new();
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.ceiling(), INITIAL);
        assert!(b.next_delay() <= INITIAL);
    }

    #[test]
    fn delays_are_spread() {
        let mut b = Backoff::new();
        for _ in 0..8 {
            b.next_delay();
        }
        let delays: std::collections::HashSet<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "full jitter should spread delays: {delays:?}");
    }
}
