//! The per-client rate limit of forwarded events: a token bucket per socket. Pure: every call
//! takes `now`, so the tests run on simulated time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One client's bucket: `burst` tokens at most, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(burst: u32, now: Instant) -> Self {
        Self { tokens: f64::from(burst), last: now }
    }

    /// Takes one token if there is one (after refilling up to `now`).
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Every client's bucket for one rule, by socket id.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    burst: u32,
    buckets: HashMap<String, TokenBucket>,
}

impl RateLimiter {
    /// `rate` events per second on average, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { rate, burst, buckets: HashMap::new() }
    }

    /// Whether client `sid` may forward one more event at `now`.
    pub fn allow(&mut self, sid: &str, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        match self.buckets.get_mut(sid) {
            Some(bucket) => bucket.take(rate, burst, now),
            None => {
                let mut bucket = TokenBucket::full(burst, now);
                let ok = bucket.take(rate, burst, now);
                self.buckets.insert(sid.to_owned(), bucket);
                ok
            }
        }
    }

    /// Forgets a client (on disconnect).
    pub fn remove(&mut self, sid: &str) {
        self.buckets.remove(sid);
    }

    /// Clients tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// How long until a refused client gets a token again (for logs and tests).
    pub fn refill_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(20, 40);
        let allowed = (0..100).filter(|_| limiter.allow("a", t0)).count();
        assert_eq!(allowed, 40, "the burst");
        assert!(!limiter.allow("a", t0));
        // Another client has its own bucket.
        assert!(limiter.allow("b", t0));
        // 20 per second: one token every 50 ms.
        assert!(!limiter.allow("a", t0 + Duration::from_millis(40)));
        assert!(limiter.allow("a", t0 + Duration::from_millis(50)));
        assert!(!limiter.allow("a", t0 + Duration::from_millis(60)));
        let t1 = t0 + Duration::from_secs(1) + Duration::from_millis(50);
        let allowed = (0..100).filter(|_| limiter.allow("a", t1)).count();
        assert_eq!(allowed, 20, "one second refills 20");
        // A long pause refills the burst, not more.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| limiter.allow("a", t2)).count(), 40);
        assert_eq!(limiter.refill_period(), Duration::from_millis(50));
    }

    #[test]
    fn time_going_backwards_adds_nothing_and_removed_clients_are_forgotten() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut limiter = RateLimiter::new(1, 1);
        assert!(limiter.allow("a", t0));
        assert!(!limiter.allow("a", t0 - Duration::from_secs(5)));
        assert!(!limiter.allow("a", t0));
        assert_eq!(limiter.len(), 1);
        limiter.remove("a");
        assert!(limiter.is_empty());
        assert!(limiter.allow("a", t0));
    }
}
