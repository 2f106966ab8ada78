//! Per-principal request rates, as token buckets kept in GCRA form: one atomic number per
//! principal, the "theoretical arrival time" at which its bucket is full again. Checking a
//! request is a map read and a compare-and-swap; no lock is held across requests and nothing
//! is allocated after a principal's first request.
//!
//! The limiter outlives configuration reloads (its rates are swapped in place), so a reload
//! does not hand every principal a fresh burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::LimitsConfig;

/// Beyond this many tracked principals, the ones whose bucket is full again are forgotten
/// (forgetting a full bucket changes nothing).
const FORGET_ABOVE: usize = 65_536;

/// The rate and burst in GCRA terms, in nanoseconds. `period == 0`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time one request "costs": 1 / rate.
    pub period: u64,
    /// How far ahead of now the arrival time may run: (burst - 1) × period.
    pub tolerance: u64,
}

impl Rate {
    pub fn from_config(limits: &LimitsConfig) -> Rate {
        match limits.per_principal_rps {
            None => Rate {
                period: 0,
                tolerance: 0,
            },
            Some(rps) => {
                let period = 1_000_000_000 / u64::from(rps.max(1));
                Rate {
                    period: period.max(1),
                    tolerance: period.max(1) * u64::from(limits.burst.max(1) - 1),
                }
            }
        }
    }
}

/// One GCRA step. `tat` is the principal's current arrival time, `now` the request's time.
/// `Ok(new_tat)` admits the request; `Err(wait)` refuses it, with the nanoseconds until a
/// request would be admitted. Pure.
pub fn admit(tat: u64, now: u64, rate: Rate) -> Result<u64, u64> {
    let start = tat.max(now);
    let ahead = start - now;
    if ahead > rate.tolerance {
        return Err(ahead - rate.tolerance);
    }
    Ok(start + rate.period)
}

/// Whole seconds for `Retry-After`: rounded up, at least 1 (0 would invite an immediate retry
/// that is refused again).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

pub struct RateLimiter {
    epoch: Instant,
    period: AtomicU64,
    tolerance: AtomicU64,
    arrivals: DashMap<Box<str>, AtomicU64>,
}

impl RateLimiter {
    pub fn new(limits: &LimitsConfig) -> RateLimiter {
        let limiter = RateLimiter {
            epoch: Instant::now(),
            period: AtomicU64::new(0),
            tolerance: AtomicU64::new(0),
            arrivals: DashMap::new(),
        };
        limiter.configure(limits);
        limiter
    }

    /// Takes new rates (a reload); principals keep what they have used.
    pub fn configure(&self, limits: &LimitsConfig) {
        let rate = Rate::from_config(limits);
        self.period.store(rate.period, Ordering::Relaxed);
        self.tolerance.store(rate.tolerance, Ordering::Relaxed);
    }

    fn rate(&self) -> Rate {
        Rate {
            period: self.period.load(Ordering::Relaxed),
            tolerance: self.tolerance.load(Ordering::Relaxed),
        }
    }

    /// Admits one request of `principal` at `now`, or says how long to wait.
    pub fn check(&self, principal: &str, now: Instant) -> Result<(), Duration> {
        let rate = self.rate();
        if rate.period == 0 {
            return Ok(());
        }
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        if let Some(tat) = self.arrivals.get(principal) {
            return step(&tat, now, rate);
        }
        if self.arrivals.len() >= FORGET_ABOVE {
            self.arrivals
                .retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        }
        let entry = self
            .arrivals
            .entry(Box::from(principal))
            .or_insert_with(|| AtomicU64::new(0));
        step(&entry, now, rate)
    }

    /// How many principals are tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.arrivals.len()
    }
}

fn step(tat: &AtomicU64, now: u64, rate: Rate) -> Result<(), Duration> {
    let mut current = tat.load(Ordering::Relaxed);
    loop {
        match admit(current, now, rate) {
            Err(wait) => return Err(Duration::from_nanos(wait)),
            Ok(next) => {
                match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => return Ok(()),
                    Err(seen) => current = seen,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rps: u32, burst: u32) -> LimitsConfig {
        LimitsConfig {
            per_principal_rps: Some(rps),
            burst,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_one_request_per_period() {
        let rate = Rate::from_config(&limits(10, 3));
        assert_eq!(rate.period, 100_000_000);
        let mut tat = 0;
        let now = 5_000_000_000;
        for _ in 0..3 {
            tat = admit(tat, now, rate).unwrap();
        }
        assert_eq!(admit(tat, now, rate), Err(100_000_000));
        // Half a period later: still refused, for the other half.
        assert_eq!(admit(tat, now + 50_000_000, rate), Err(50_000_000));
        // One period later: exactly one more.
        let tat = admit(tat, now + 100_000_000, rate).unwrap();
        assert!(admit(tat, now + 100_000_000, rate).is_err());
        // A long pause refills the bucket, but never beyond the burst.
        let mut tat = tat;
        let later = now + 60_000_000_000;
        for _ in 0..3 {
            tat = admit(tat, later, rate).unwrap();
        }
        assert!(admit(tat, later, rate).is_err());
    }

    #[test]
    fn principals_are_limited_separately_and_reloads_keep_their_state() {
        let limiter = RateLimiter::new(&limits(1, 2));
        let t = Instant::now();
        assert!(limiter.check("alice", t).is_ok());
        assert!(limiter.check("alice", t).is_ok());
        let wait = limiter.check("alice", t).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert_eq!(retry_after_secs(wait), 1);
        assert!(limiter.check("bob", t).is_ok());
        // A reload to the same rate does not refill alice's bucket.
        limiter.configure(&limits(1, 2));
        assert!(limiter.check("alice", t).is_err());
        // Removing the limit admits everyone.
        limiter.configure(&LimitsConfig::default());
        assert!(limiter.check("alice", t).is_ok());
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn concurrent_requests_never_exceed_the_burst() {
        let limiter = std::sync::Arc::new(RateLimiter::new(&limits(1, 50)));
        let t = Instant::now();
        let admitted: usize = (0..8)
            .map(|_| {
                let l = limiter.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.check("sp", t).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
