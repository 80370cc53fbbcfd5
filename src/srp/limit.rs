//! Per-source rate limit for the SRP responder: a token bucket per source
//! address (time passed in), bounded in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Sources tracked at most; past that, idle ones are forgotten first.
const MAX_SOURCES: usize = 65_536;

pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { rate: rate as f64, burst: burst.max(1) as f64, buckets: HashMap::new() }
    }

    /// May `source` send one more request at `now`?
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            let (rate, burst) = (self.rate, self.burst);
            // Forget the sources whose buckets are full again: they lose nothing.
            self.buckets.retain(|_, (tokens, at)| *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let mut l = RateLimit::new(10, 5);
        let t = Instant::now();
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        let b: IpAddr = "127.0.0.10".parse().unwrap();
        assert_eq!((0..8).filter(|_| l.allow(a, t)).count(), 5, "the burst");
        assert!(l.allow(b, t), "another source has its own bucket");
        assert!(!l.allow(a, t + Duration::from_millis(50)));
        assert!(l.allow(a, t + Duration::from_millis(110)), "one token per 100 ms");
        assert_eq!((0..20).filter(|_| l.allow(a, t + Duration::from_secs(10))).count(), 5, "never more than the burst");
    }
}
