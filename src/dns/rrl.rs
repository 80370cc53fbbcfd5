//! Response rate limiting for UDP, as authoritative servers do it against
//! reflection and amplification: responses are counted per client prefix
//! (a /24 or /56 by default) and per kind: answers per name and type,
//! NXDOMAIN and errors per prefix alone. Past the kind's budget in a
//! second, every `slip`-th response goes out empty with TC (a real client
//! retries over TCP, which cannot be spoofed) and the others are dropped.
//!
//! The counts live in one table of atomic words shared by every UDP
//! worker (no lock on the fast path): an entry holds a tag of its key's
//! hash, the second it counts for and the count. A colliding key takes the
//! entry over, which can only let a response through. The hash is seeded
//! per process, so clients cannot aim collisions. Time is passed in.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;

use crate::config::Rrl as RrlConfig;
use crate::metrics::Count;

/// Entries in the table (a power of two).
const ENTRIES: usize = 1 << 17;

/// What kind of response is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NOERROR, with data or without: counted per name and type.
    Answer = 0,
    Nxdomain = 1,
    /// Any other RCODE.
    Error = 2,
}

impl Kind {
    pub fn of_rcode(rcode: u8) -> Kind {
        match rcode & 0xf {
            0 => Kind::Answer,
            3 => Kind::Nxdomain,
            _ => Kind::Error,
        }
    }

    pub const ALL: [Kind; 3] = [Kind::Answer, Kind::Nxdomain, Kind::Error];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Answer => "answer",
            Kind::Nxdomain => "nxdomain",
            Kind::Error => "error",
        }
    }
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it empty, with TC.
    Slip,
    Drop,
}

/// What the limiter counts.
#[derive(Debug, Default)]
pub struct RrlCounters {
    pub dropped: [Count; 3],
    pub slipped: [Count; 3],
}

/// The limiter: its budgets and the shared table.
pub struct Rrl {
    budget: [u32; 3],
    slip: u32,
    v4_prefix: u8,
    v6_prefix: u8,
    exempt: Vec<IpNet>,
    /// foldhash, seeded per process: a few nanoseconds a response,
    /// where SipHash cost the fast path 1-5%.
    hasher: foldhash::fast::RandomState,
    table: Box<[AtomicU64]>,
    epoch: std::time::Instant,
    pub counters: RrlCounters,
}

impl Rrl {
    /// Counting seconds from `epoch`.
    pub fn new(c: &RrlConfig, epoch: std::time::Instant) -> Self {
        Self {
            budget: [c.responses_per_second, c.nxdomains_per_second, c.errors_per_second],
            slip: c.slip,
            v4_prefix: c.ipv4_prefix.min(32),
            v6_prefix: c.ipv6_prefix.min(128),
            exempt: c.exempt.clone(),
            hasher: Default::default(),
            table: (0..ENTRIES).map(|_| AtomicU64::new(0)).collect(),
            epoch,
            counters: RrlCounters::default(),
        }
    }

    /// The second `now` falls in, for `check`.
    pub fn second(&self, now: std::time::Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    /// Whether responses to `client` are limited at all.
    pub fn applies(&self, client: IpAddr) -> bool {
        !self.exempt.iter().any(|n| n.contains(&client))
    }

    /// The verdict for one response of `kind` to `client`, about the
    /// question `qkey` (the lower-cased name and type; unused but for
    /// answers), in second `now`.
    pub fn check(&self, client: IpAddr, kind: Kind, qkey: &[u8], now: u32) -> Verdict {
        let budget = self.budget[kind as usize];
        if budget == 0 || !self.applies(client) {
            return Verdict::Send;
        }
        let mut h = self.hasher.build_hasher();
        match client {
            IpAddr::V4(a) => h.write_u32(u32::from(a) & mask32(self.v4_prefix)),
            IpAddr::V6(a) => h.write_u128(u128::from(a) & mask128(self.v6_prefix)),
        }
        h.write_u8(kind as u8);
        if kind == Kind::Answer {
            h.write(qkey);
        }
        let count = self.count(h.finish(), now);
        if count <= budget {
            return Verdict::Send;
        }
        let over = count - budget;
        if self.slip > 0 && over.is_multiple_of(self.slip) {
            self.counters.slipped[kind as usize].inc();
            Verdict::Slip
        } else {
            self.counters.dropped[kind as usize].inc();
            Verdict::Drop
        }
    }

    /// Counts one response for `hash` in second `now`; returns the count.
    fn count(&self, hash: u64, now: u32) -> u32 {
        // Entry: tag (24 bits) | second (16 bits) | count (24 bits).
        let slot = &self.table[(hash as usize) & (ENTRIES - 1)];
        let tag = hash >> 40;
        let second = u64::from(now & 0xffff);
        let mut current = slot.load(Ordering::Relaxed);
        for _ in 0..4 {
            let (t, s, n) = (current >> 40, (current >> 24) & 0xffff, current & 0xff_ffff);
            let n = if t == tag && s == second { (n + 1).min(0xff_ffff) } else { 1 };
            let next = (tag << 40) | (second << 24) | n;
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return n as u32,
                Err(seen) => current = seen,
            }
        }
        // Heavily contended: count it as over the budget's first step.
        1
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) }
}

impl crate::metrics::Expose for Rrl {
    fn expose(&self, w: &mut crate::metrics::Writer<'_, '_>) -> std::fmt::Result {
        let family = |c: &[Count; 3]| Kind::ALL.iter().map(|k| (vec![("kind", k.label().into())], c[*k as usize].get())).collect();
        w.counters("vnamed_rrl_dropped", "UDP responses dropped by response rate limiting, by kind.", family(&self.counters.dropped))?;
        w.counters(
            "vnamed_rrl_slipped",
            "UDP responses sent empty with TC by response rate limiting, by kind.",
            family(&self.counters.slipped),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrl(exempt: &[&str]) -> Rrl {
        Rrl::new(
            &RrlConfig { exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(), ..Default::default() },
            std::time::Instant::now(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flood_from_one_prefix_is_limited_and_every_second_one_slips() {
        let r = rrl(&[]);
        let budget = RrlConfig::default().responses_per_second;
        let verdicts: Vec<_> = (0..1000).map(|i| r.check(ip(&format!("192.0.2.{}", i % 250)), Kind::Answer, b"www", 7)).collect();
        assert!(verdicts[..budget as usize].iter().all(|v| *v == Verdict::Send));
        let slipped = verdicts.iter().filter(|v| **v == Verdict::Slip).count();
        let dropped = verdicts.iter().filter(|v| **v == Verdict::Drop).count();
        assert_eq!((slipped + dropped) as u32, 1000 - budget);
        assert!(slipped.abs_diff(dropped) <= 1, "slip 2: half and half ({slipped}, {dropped})");
        // The next second has a fresh budget; another name, another prefix, another kind are apart.
        assert_eq!(r.check(ip("192.0.2.1"), Kind::Answer, b"www", 8), Verdict::Send);
        assert_eq!(r.check(ip("192.0.2.1"), Kind::Answer, b"mail", 7), Verdict::Send);
        assert_eq!(r.check(ip("198.51.100.1"), Kind::Answer, b"www", 7), Verdict::Send);
        assert_eq!(r.check(ip("192.0.2.1"), Kind::Nxdomain, b"www", 7), Verdict::Send);
    }

    #[test]
    fn nxdomain_and_errors_count_per_prefix_whatever_the_name() {
        let r = rrl(&[]);
        let c = RrlConfig::default();
        let sent = (0..200).filter(|i| r.check(ip("2001:db8::1"), Kind::Nxdomain, format!("n{i}").as_bytes(), 3) == Verdict::Send).count();
        assert_eq!(sent as u32, c.nxdomains_per_second);
        // Another host in the same /56 shares the budget; one outside it does not.
        assert_ne!(r.check(ip("2001:db8:0:ff::9"), Kind::Nxdomain, b"x", 3), Verdict::Send);
        assert_eq!(r.check(ip("2001:db8:1::1"), Kind::Nxdomain, b"x", 3), Verdict::Send);
    }

    #[test]
    fn exempt_clients_are_never_limited() {
        let r = rrl(&["127.0.0.0/8"]);
        assert!((0..10_000).all(|_| r.check(ip("127.0.0.1"), Kind::Answer, b"www", 1) == Verdict::Send));
    }
}
