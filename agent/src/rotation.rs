//! Which controller to dial next, when the agent is given several.
//!
//! The agent starts at a random one of its controller addresses (so a
//! fleet spreads over them) and stays with whichever welcomes it. After a
//! failure it moves on to the next address at once (after a short jitter),
//! and only when every address failed in a row does it back off. So a host
//! whose controller died tries the others within a fraction of a second,
//! yet a fleet that can reach no controller at all backs off as before.

use std::time::Duration;

use crate::backoff::Backoff;

/// The most a host waits before trying the next address in a round: a
/// little spread, so the hosts of a dead controller do not all reach the
/// next one in the same millisecond.
pub const NEXT_ADDRESS_JITTER: Duration = Duration::from_millis(250);

/// The most a host with several controllers waits between rounds: a
/// follower takes over within the serving lock's lease (6 s) of its
/// controller's death, and the hosts should follow within seconds. Still
/// jittered: a fleet of 20,000 arrives over up to this many seconds.
pub const FAILOVER_CAP: Duration = Duration::from_secs(3);

/// The agent's controller addresses and where it is among them.
#[derive(Debug, Clone)]
pub struct Rotation {
    addrs: Vec<String>,
    at: usize,
    failed_in_row: usize,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Another address has not been tried since the last success: try it
    /// after at most [`NEXT_ADDRESS_JITTER`].
    NextAddress,
    /// Every address failed in a row: back off.
    BackOff,
}

impl Rotation {
    /// A rotation over `addrs` (not empty) starting at `start` (modulo
    /// their number; callers pass a random number to spread the fleet).
    pub fn new(addrs: Vec<String>, start: usize) -> Rotation {
        assert!(!addrs.is_empty(), "a rotation needs an address");
        let at = start % addrs.len();
        Rotation {
            addrs,
            at,
            failed_in_row: 0,
        }
    }

    /// The backoff between failed rounds: capped at [`FAILOVER_CAP`] with
    /// several controllers, as usual with one.
    pub fn backoff(&self) -> Backoff {
        if self.addrs.len() > 1 {
            Backoff::capped(FAILOVER_CAP)
        } else {
            Backoff::new()
        }
    }

    /// The address to dial now.
    pub fn current(&self) -> &str {
        &self.addrs[self.at]
    }

    /// The current address worked (the controller welcomed the host).
    pub fn succeeded(&mut self) {
        self.failed_in_row = 0;
    }

    /// The current address failed (could not be reached, or its stream
    /// broke): moves to the next one and says whether to back off.
    pub fn failed(&mut self) -> After {
        self.at = (self.at + 1) % self.addrs.len();
        self.failed_in_row += 1;
        if self.failed_in_row >= self.addrs.len() {
            self.failed_in_row = 0;
            After::BackOff
        } else {
            After::NextAddress
        }
    }

    /// The delay before the next attempt after a failure, with `backoff`
    /// advanced only when a whole round failed.
    pub fn delay_after_failure(&mut self, backoff: &mut Backoff) -> Duration {
        match self.failed() {
            After::NextAddress => {
                let ceiling = u64::try_from(NEXT_ADDRESS_JITTER.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(fastrand::u64(0..=ceiling))
            }
            After::BackOff => backoff.next_delay(),
        }
    }

    /// Every address, for messages.
    pub fn describe(&self) -> String {
        self.addrs.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}:7443")).collect()
    }

    #[test]
    fn one_address_backs_off_after_every_failure() {
        let mut r = Rotation::new(addrs(1), 7);
        assert_eq!(r.current(), "c0:7443");
        for _ in 0..3 {
            assert_eq!(r.failed(), After::BackOff);
            assert_eq!(r.current(), "c0:7443");
        }
    }

    #[test]
    fn several_addresses_are_tried_in_turn_before_backing_off() {
        let mut r = Rotation::new(addrs(3), 4);
        assert_eq!(r.current(), "c1:7443", "the start is taken modulo the count");
        assert_eq!(r.failed(), After::NextAddress);
        assert_eq!(r.current(), "c2:7443");
        assert_eq!(r.failed(), After::NextAddress);
        assert_eq!(r.current(), "c0:7443");
        assert_eq!(r.failed(), After::BackOff, "all three failed in a row");
        assert_eq!(r.current(), "c1:7443");
        assert_eq!(r.failed(), After::NextAddress, "a new round");
    }

    #[test]
    fn a_success_starts_the_round_again() {
        let mut r = Rotation::new(addrs(3), 0);
        assert_eq!(r.failed(), After::NextAddress);
        r.succeeded();
        // The host was welcomed by c1; when c1 dies it tries c2 and c0
        // before it backs off.
        assert_eq!(r.failed(), After::NextAddress);
        assert_eq!(r.current(), "c2:7443");
        assert_eq!(r.failed(), After::NextAddress);
        assert_eq!(r.failed(), After::BackOff);
    }

    #[test]
    fn several_controllers_cap_the_backoff_lower() {
        let mut b = Rotation::new(addrs(3), 0).backoff();
        for _ in 0..10 {
            assert!(b.next_delay() <= FAILOVER_CAP);
        }
        assert_eq!(b.ceiling(), FAILOVER_CAP);
        let mut one = Rotation::new(addrs(1), 0).backoff();
        for _ in 0..10 {
            one.next_delay();
        }
        assert_eq!(one.ceiling(), crate::backoff::CAP);
    }

    #[test]
    fn the_backoff_grows_only_per_round() {
        let mut b = Backoff::new();
        let mut r = Rotation::new(addrs(2), 0);
        let first = b.ceiling();
        assert!(r.delay_after_failure(&mut b) <= NEXT_ADDRESS_JITTER);
        assert_eq!(
            b.ceiling(),
            first,
            "moving to the next address does not grow the backoff"
        );
        assert!(r.delay_after_failure(&mut b) <= first);
        assert_eq!(b.ceiling(), first * 2, "a failed round does");
    }
}
