//! Rate limits: token buckets per key (enrollments per join token and per
//! source address, authentication failures per source address) and the
//! renewal gate (one renewal in flight per host, a minimum interval).
//!
//! Pure decisions with time as an argument, behind small types whose
//! methods are the only way in; a refusal becomes RESOURCE_EXHAUSTED (see
//! `crate::error`). Depends on nothing else in the controller.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sustained rate with a burst: `burst` calls at once, then `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls allowed at once (the bucket's size).
    pub burst: u32,
    /// Calls allowed per minute once the burst is spent (the refill).
    pub per_minute: u32,
}

impl Rate {
    fn per_sec(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

/// One key's bucket: tokens left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Refills for the time since `at` (never beyond the burst).
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec()).min(f64::from(rate.burst));
        self.at = now;
    }

    /// How long until one token is there (zero when it is).
    fn wait(&self, rate: Rate) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let per_sec = rate.per_sec().max(f64::MIN_POSITIVE);
        Duration::from_secs_f64(((1.0 - self.tokens) / per_sec).min(86_400.0)).max(Duration::from_secs(1))
    }
}

/// A refused call: which limit, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit {limit} reached ({burst} at once, then {per_minute} per minute); retry in {}s",
    retry_after.as_secs().max(1)
)]
pub struct Limited {
    /// The limit's name as in controller.toml, e.g. "limits.enroll_per_source".
    pub limit: &'static str,
    /// Its burst.
    pub burst: u32,
    /// Its rate.
    pub per_minute: u32,
    /// When a retry may succeed.
    pub retry_after: Duration,
}

/// Keys tracked at most per limiter; beyond it, full buckets (keys that
/// would be allowed anyway) are forgotten, and if none are, new keys are
/// refused: memory stays bounded whatever the number of sources.
const MAX_KEYS: usize = 100_000;

/// Token buckets per key (a join token id, a source address).
pub struct Limiter<K> {
    name: &'static str,
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter called `name` (its controller.toml key) at `rate`.
    pub fn new(name: &'static str, rate: Rate) -> Limiter<K> {
        Limiter {
            name,
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn limited(&self, retry_after: Duration) -> Limited {
        Limited {
            limit: self.name,
            burst: self.rate.burst,
            per_minute: self.rate.per_minute,
            retry_after,
        }
    }

    /// Runs `f` on `key`'s bucket, refilled to `now`; Err when the key is
    /// new and the table is full of keys that are still limited.
    fn with_bucket<T>(&self, key: &K, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> Result<T, Limited> {
        // A poisoned lock only means another caller panicked mid-update of
        // plain numbers; the table is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            let rate = self.rate;
            buckets.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < f64::from(rate.burst)
            });
            if buckets.len() >= MAX_KEYS {
                return Err(self.limited(Duration::from_secs(1)));
            }
        }
        let bucket = buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(self.rate, now));
        bucket.refill(self.rate, now);
        Ok(f(bucket))
    }

    /// Takes one call from `key`'s bucket, or says when to retry.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Limited> {
        let rate = self.rate;
        let wait = self.with_bucket(key, now, |b| {
            let wait = b.wait(rate);
            if wait.is_zero() {
                b.tokens -= 1.0;
            }
            wait
        })?;
        if wait.is_zero() {
            Ok(())
        } else {
            Err(self.limited(wait))
        }
    }

    /// Whether `key` has room for one more call, without taking it (for
    /// failures: check before, take only when the call failed).
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Limited> {
        let rate = self.rate;
        let wait = self.with_bucket(key, now, |b| b.wait(rate))?;
        if wait.is_zero() {
            Ok(())
        } else {
            Err(self.limited(wait))
        }
    }

    /// Spends one call of `key` whatever is left (a failure that happened).
    pub fn spend(&self, key: &K, now: Instant) {
        let _ = self.with_bucket(key, now, |b| b.tokens = (b.tokens - 1.0).max(0.0));
    }
}

/// Why a renewal is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewRefusal {
    /// Another renewal of this host is being answered.
    #[error(
        "host {host_id} already has a certificate renewal in flight (limit: one at a time); retry when it is \
         answered"
    )]
    InFlight {
        /// The host.
        host_id: String,
    },
    /// The last renewal was too recent.
    #[error(
        "host {host_id} renewed its certificate {}s ago; limits.renew_min_interval is {}s, retry in {}s",
        since.as_secs(), min_interval.as_secs(), (*min_interval - *since).as_secs().max(1)
    )]
    TooSoon {
        /// The host.
        host_id: String,
        /// Time since the last renewal was issued.
        since: Duration,
        /// The configured minimum interval.
        min_interval: Duration,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct HostRenewals {
    in_flight: bool,
    last_issued: Option<Instant>,
}

/// The pure rule: one renewal in flight, and `min_interval` since the last
/// certificate issued.
fn may_renew(host_id: &str, state: HostRenewals, now: Instant, min_interval: Duration) -> Result<(), RenewRefusal> {
    if state.in_flight {
        return Err(RenewRefusal::InFlight {
            host_id: host_id.to_string(),
        });
    }
    match state.last_issued {
        Some(last) if now.saturating_duration_since(last) < min_interval => Err(RenewRefusal::TooSoon {
            host_id: host_id.to_string(),
            since: now.saturating_duration_since(last),
            min_interval,
        }),
        _ => Ok(()),
    }
}

/// Renewals per host: one in flight, and a minimum interval between issued
/// certificates.
#[derive(Debug)]
pub struct RenewalGate {
    min_interval: Duration,
    hosts: Mutex<HashMap<String, HostRenewals>>,
}

/// A renewal allowed to proceed; dropping it ends "in flight".
#[derive(Debug)]
pub struct RenewPermit<'a> {
    gate: &'a RenewalGate,
    host_id: String,
}

impl RenewalGate {
    /// A gate with this minimum interval between renewals of one host.
    pub fn new(min_interval: Duration) -> RenewalGate {
        RenewalGate {
            min_interval,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostRenewals>> {
        // Plain flags: usable after a panic elsewhere.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a renewal of `host_id`, whose certificates live `cert_ttl`,
    /// or says why not. The interval is at most a quarter of `cert_ttl`: an
    /// agent renews at half-life, and must get its new certificate (even
    /// after a lost answer) before the old one expires.
    pub fn begin(&self, host_id: &str, cert_ttl: Duration, now: Instant) -> Result<RenewPermit<'_>, RenewRefusal> {
        self.begin_within(host_id, self.min_interval.min(cert_ttl / 4), now)
    }

    /// `begin` for a host asked to renew by a CA rotation: one in flight,
    /// but no minimum interval since its last renewal.
    pub fn begin_rotating(&self, host_id: &str, now: Instant) -> Result<RenewPermit<'_>, RenewRefusal> {
        self.begin_within(host_id, Duration::ZERO, now)
    }

    fn begin_within(&self, host_id: &str, interval: Duration, now: Instant) -> Result<RenewPermit<'_>, RenewRefusal> {
        let mut hosts = self.lock();
        let state = hosts.entry(host_id.to_string()).or_default();
        may_renew(host_id, *state, now, interval)?;
        state.in_flight = true;
        Ok(RenewPermit {
            gate: self,
            host_id: host_id.to_string(),
        })
    }

    /// Forgets a removed host.
    pub fn forget(&self, host_id: &str) {
        self.lock().remove(host_id);
    }
}

impl RenewPermit<'_> {
    /// Records that a certificate was issued at `now` (the interval starts).
    pub fn issued(self, now: Instant) {
        if let Some(s) = self.gate.lock().get_mut(&self.host_id) {
            s.last_issued = Some(now);
        }
    }
}

impl Drop for RenewPermit<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.gate.lock().get_mut(&self.host_id) {
            s.in_flight = false;
        }
    }
}

/// Every rate limit of a running controller (built from `[limits]`).
pub struct RateLimits {
    /// Enrollments per join token id (spent only by callers who hold the secret).
    pub enroll_per_token: Limiter<String>,
    /// Enrollments per source address.
    pub enroll_per_source: Limiter<std::net::IpAddr>,
    /// Failed authentications per source address (shared with the operator
    /// gate).
    pub auth_failures: std::sync::Arc<Limiter<std::net::IpAddr>>,
    /// Renewals per host.
    pub renewals: RenewalGate,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3,
        per_minute: 60,
    };

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new("limits.enroll_per_source", RATE);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take(&"a", t0).expect("within the burst");
        }
        let e = l.take(&"a", t0).expect_err("burst spent");
        assert_eq!(e.limit, "limits.enroll_per_source");
        assert_eq!(e.retry_after, Duration::from_secs(1));
        assert!(e.to_string().contains("retry in 1s"), "{e}");
        l.take(&"b", t0).expect("another key has its own bucket");
        l.take(&"a", t0 + Duration::from_secs(1))
            .expect("one per second refilled");
        assert!(l.take(&"a", t0 + Duration::from_secs(1)).is_err());
        for _ in 0..3 {
            l.take(&"a", t0 + Duration::from_secs(100))
                .expect("refilled up to the burst");
        }
        assert!(
            l.take(&"a", t0 + Duration::from_secs(100)).is_err(),
            "never beyond the burst"
        );
    }

    #[test]
    fn failures_are_checked_before_and_spent_after() {
        let l = Limiter::new("limits.auth_failures_per_source", RATE);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check(&"a", t0).expect("room");
            l.spend(&"a", t0);
        }
        assert!(l.check(&"a", t0).is_err(), "three failures: refused");
        assert!(l.check(&"a", t0).is_err(), "checking spends nothing, and refuses still");
        l.check(&"a", t0 + Duration::from_secs(1)).expect("refilled");
    }

    #[test]
    fn a_refusal_names_the_limit() {
        let l = Limiter::new("limits.enroll_per_token", RATE);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take(&"t", t0).expect("burst");
        }
        let refusal = l.take(&"t", t0).expect_err("limited").to_string();
        assert!(refusal.contains("limits.enroll_per_token"), "{refusal}");
    }

    #[test]
    fn renewals_one_at_a_time_and_not_too_often() {
        let gate = RenewalGate::new(Duration::from_secs(60));
        let ttl = Duration::from_secs(7 * 86_400);
        let t0 = Instant::now();
        let permit = gate.begin("h1", ttl, t0).expect("first");
        assert!(matches!(gate.begin("h1", ttl, t0), Err(RenewRefusal::InFlight { .. })));
        gate.begin("h2", ttl, t0).expect("another host").issued(t0);
        permit.issued(t0);
        let e = gate
            .begin("h1", ttl, t0 + Duration::from_secs(10))
            .expect_err("too soon");
        assert!(matches!(e, RenewRefusal::TooSoon { .. }));
        assert!(e.to_string().contains("retry in 50s"), "{e}");
        drop(
            gate.begin("h1", ttl, t0 + Duration::from_secs(61))
                .expect("after the interval"),
        );
        // A permit dropped without issuing (the renewal failed) does not
        // start the interval.
        gate.begin("h1", ttl, t0 + Duration::from_secs(62))
            .expect("not issued: no interval");
        // Short certificates (tests, 20 s): a quarter of the lifetime at most.
        let short = Duration::from_secs(20);
        gate.begin("h3", short, t0).expect("first").issued(t0);
        assert!(gate.begin("h3", short, t0 + Duration::from_secs(4)).is_err());
        gate.begin("h3", short, t0 + Duration::from_secs(5))
            .expect("a quarter of 20 s");
    }
}
