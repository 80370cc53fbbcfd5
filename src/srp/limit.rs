//! Per-source rate limit for the SRP responder: the generic cell rate
//! algorithm (a token bucket kept as one time, its theoretical arrival
//! time) per source address, time passed in. The times live in one fixed
//! table of atomic words indexed by a per-process keyed hash: memory is
//! bounded, a new source costs one slot (no scan, whatever the number of
//! sources), and responders on several sockets share it without a lock.
//! Two sources that land on the same slot with the same tag share a
//! bucket; a source that finds another's tag there starts afresh, which
//! can only let a request through.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Slots in the table (a power of two).
const SLOTS: usize = 1 << 16;
/// Bits of the hash kept as a slot's tag; the rest of the word is the
/// theoretical arrival time in microseconds from the limiter's epoch.
const TAG_BITS: u32 = 16;
const TIME_MASK: u64 = (1 << (64 - TAG_BITS)) - 1;

pub struct Limiter {
    /// Microseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a source's arrival time may run: the burst.
    tolerance: u64,
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    slots: Box<[AtomicU64]>,
}

impl Limiter {
    /// `rate` requests a second per source, `burst` at once; time counts from `epoch`.
    pub fn new(rate: u32, burst: u32, epoch: Instant) -> Self {
        let interval = 1_000_000 / u64::from(rate.max(1));
        Self {
            interval,
            tolerance: interval * u64::from(burst.max(1) - 1),
            epoch,
            hasher: Default::default(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// May `source` send one more request at `now`?
    pub fn allow(&self, source: IpAddr, now: Instant) -> bool {
        let hash = self.hasher.hash_one(source);
        let slot = &self.slots[hash as usize & (SLOTS - 1)];
        let tag = hash >> (64 - TAG_BITS);
        // +1: time 0 in a slot means empty.
        let t = (now.saturating_duration_since(self.epoch).as_micros() as u64 + 1) & TIME_MASK;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let tat = if current >> (64 - TAG_BITS) == tag && current & TIME_MASK != 0 { (current & TIME_MASK).max(t) } else { t };
            if tat - t > self.tolerance {
                return false;
            }
            let next = (tag << (64 - TAG_BITS)) | ((tat + self.interval) & TIME_MASK);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new(10, 5, Instant::now());
        let t = Instant::now() + Duration::from_secs(1);
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        let b: IpAddr = "127.0.0.10".parse().unwrap();
        assert_eq!((0..8).filter(|_| l.allow(a, t)).count(), 5, "the burst");
        assert!(l.allow(b, t), "another source has its own bucket");
        assert!(!l.allow(a, t + Duration::from_millis(50)));
        assert!(l.allow(a, t + Duration::from_millis(110)), "one request per 100 ms");
        assert_eq!((0..20).filter(|_| l.allow(a, t + Duration::from_secs(10))).count(), 5, "never more than the burst");
    }

    #[test]
    fn a_flood_of_new_sources_never_shuts_out_the_next_one() {
        let l = Limiter::new(1, 2, Instant::now());
        let t = Instant::now();
        // Far more sources than any table holds, all active at once: each
        // new one still has its first request (a table that keeps every
        // source until it is idle turns them away once it is full).
        // Sources whose slot and tag both match share a bucket (about one
        // in 2^32 pairs), so a handful may find it spent; a table that
        // fills up would refuse nearly all.
        let allowed = (0..1_000_000u32).filter(|i| l.allow(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t)).count();
        assert!(allowed >= 999_990, "a new source has its first request: {allowed} of a million");
        // A source seen before still has its bucket unless another took its slot.
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!((0..5).filter(|_| l.allow(a, t)).count(), 2, "its burst");
    }

    #[test]
    fn the_table_never_grows() {
        let l = Limiter::new(1, 2, Instant::now());
        let t = Instant::now();
        for i in 0..200_000u32 {
            l.allow(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t);
        }
        assert_eq!(l.slots.len(), SLOTS);
    }
}
