//! Per-source rate limit for the SRP responder: a token bucket per source
//! address (time passed in), bounded in memory. `Limiter` shards the
//! buckets by source, so responders on several sockets rarely meet on a lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Sources tracked at most; past that, idle ones are forgotten first.
const MAX_SOURCES: usize = 65_536;
/// Independent shards of buckets.
const SHARDS: usize = 64;

pub struct RateLimit {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// Buckets for many sources, each shard behind its own lock.
pub struct Limiter {
    shards: Box<[Mutex<RateLimit>]>,
}

impl Limiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(RateLimit::with_capacity(rate, burst, MAX_SOURCES / SHARDS))).collect() }
    }

    /// May `source` send one more request at `now`?
    pub fn allow(&self, source: IpAddr, now: Instant) -> bool {
        let octets = match source {
            IpAddr::V4(a) => a.to_bits() as u128,
            IpAddr::V6(a) => a.to_bits(),
        };
        // Spread neighbouring addresses across shards.
        let h = (octets as u64 ^ (octets >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let shard = &self.shards[(h >> 58) as usize % SHARDS];
        // A bucket update cannot panic halfway; a poisoned lock still guards sound data.
        shard.lock().unwrap_or_else(|e| e.into_inner()).allow(source, now)
    }
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_capacity(rate, burst, MAX_SOURCES)
    }

    /// A limit tracking at most `capacity` sources.
    pub fn with_capacity(rate: u32, burst: u32, capacity: usize) -> Self {
        Self { rate: rate as f64, burst: burst.max(1) as f64, capacity, buckets: HashMap::new() }
    }

    /// May `source` send one more request at `now`?
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= self.capacity && !self.buckets.contains_key(&source) {
            let (rate, burst) = (self.rate, self.burst);
            // Forget the sources whose buckets are full again: they lose nothing.
            self.buckets.retain(|_, (tokens, at)| *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst);
            if self.buckets.len() >= self.capacity {
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

    #[test]
    fn the_sharded_limiter_keeps_one_bucket_per_source_and_a_bound() {
        let l = Limiter::new(1, 2);
        let t = Instant::now();
        let sources: Vec<IpAddr> = (0..200u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + i))).collect();
        for s in &sources {
            assert_eq!((0..5).filter(|_| l.allow(*s, t)).count(), 2, "{s}: its own burst");
        }
        let used = l.shards.iter().filter(|s| !s.lock().unwrap().buckets.is_empty()).count();
        assert!(used > SHARDS / 2, "neighbouring sources spread over the shards ({used} used)");
        // A flood of new sources: each shard stays within its share.
        let flood = Limiter::new(1, 1);
        for i in 0..(MAX_SOURCES as u32 * 2) {
            flood.allow(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t);
        }
        assert!(flood.shards.iter().all(|s| s.lock().unwrap().buckets.len() <= MAX_SOURCES / SHARDS));
    }
}
