//! The connection map: which server each client connection (address and
//! port) was given. Made on a SYN, kept while packets flow, let go shortly
//! after a FIN (so the last ACKs still pass), at once on a RST, and after
//! an idle timeout. Small entries, so that a million fit in well under
//! 200 MB. Kept in shards, so that expiry walks one shard per step and never
//! holds up the packets behind it for a whole pass. Pure: time is passed in.
//!
//! Bounded: a full shard makes room by evicting its oldest half-open
//! entry (a SYN never followed by another packet, what a SYN flood
//! leaves), never an established connection; with no half-open entry to
//! evict, the new connection is refused. Times are milliseconds that wrap
//! (every 49.7 days) and are compared by their wrapping difference, so
//! expiry works however long the dispatcher runs.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// One connection: 12 bytes, with an 8-byte key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    server: u32,
    /// Milliseconds since the map's epoch when a packet was last seen.
    last: u32,
    /// Which virtual IP it came to (an index the engine gives).
    pub vip: u16,
    closing: bool,
    /// Seen a packet after its SYN: never evicted to make room.
    established: bool,
}

impl Conn {
    pub fn server(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.server)
    }
}

/// Shards of the map: an expiry step walks one.
pub const SHARDS: usize = 16;

/// Milliseconds from `last` to `now`, both wrapping: a `last` up to 24
/// days ahead (a caller's clock read late) counts as now.
fn age(now: u32, last: u32) -> u32 {
    let d = now.wrapping_sub(last);
    if d > i32::MAX as u32 { 0 } else { d }
}

fn shard(client: (Ipv4Addr, u16)) -> usize {
    let h = (u32::from(client.0) ^ u32::from(client.1).rotate_left(16)).wrapping_mul(0x9e37_79b9);
    (h >> 28) as usize % SHARDS
}

/// Connections a map holds at most, unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

pub struct ConnMap {
    shards: Box<[HashMap<(u32, u16), Conn>]>,
    /// Per shard, half-open entries oldest first (some may have been
    /// established or removed since: skipped when met).
    half_open: Box<[VecDeque<(u32, u16)>]>,
    /// Entries one shard holds at most.
    per_shard: usize,
    evicted: u64,
    /// The shard the next expiry step walks.
    next: usize,
    epoch: Instant,
    idle: Duration,
    linger: Duration,
}

impl ConnMap {
    pub fn new(idle: Duration, linger: Duration, now: Instant) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            half_open: (0..SHARDS).map(|_| VecDeque::new()).collect(),
            per_shard: DEFAULT_CAPACITY / SHARDS,
            evicted: 0,
            next: 0,
            epoch: now,
            idle,
            linger,
        }
    }

    /// At most `capacity` connections.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.set_capacity(capacity);
        self
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.per_shard = (capacity / SHARDS).max(1);
    }

    /// Half-open entries evicted to make room, so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Milliseconds since the epoch, wrapping: compare with `wrapping_sub`.
    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    /// The connection of `client`, marked as seen now; `established`
    /// when the packet is not a SYN.
    pub fn touch(&mut self, client: (Ipv4Addr, u16), established: bool, now: Instant) -> Option<Conn> {
        let ms = self.ms(now);
        let c = self.shard_mut(client).get_mut(&(u32::from(client.0), client.1))?;
        c.last = ms;
        c.established |= established;
        Some(*c)
    }

    pub fn get(&self, client: (Ipv4Addr, u16)) -> Option<Conn> {
        self.shards[shard(client)].get(&(u32::from(client.0), client.1)).copied()
    }

    /// Makes (or remakes) the connection of `client`; `established` for
    /// one learnt from a server rather than from a SYN. False when the map
    /// is full of established connections and it is refused.
    pub fn insert(&mut self, client: (Ipv4Addr, u16), server: Ipv4Addr, vip: u16, established: bool, now: Instant) -> bool {
        let last = self.ms(now);
        let key = (u32::from(client.0), client.1);
        let i = shard(client);
        if !self.shards[i].contains_key(&key) && self.shards[i].len() >= self.per_shard && !self.evict_half_open(i) {
            return false;
        }
        self.shards[i].insert(key, Conn { server: u32::from(server), last, vip, closing: false, established });
        if !established {
            self.half_open[i].push_back(key);
        }
        true
    }

    /// Evicts shard `i`'s oldest half-open entry; false when it has none.
    fn evict_half_open(&mut self, i: usize) -> bool {
        while let Some(key) = self.half_open[i].pop_front() {
            if self.shards[i].get(&key).is_some_and(|c| !c.established) {
                self.shards[i].remove(&key);
                self.evicted += 1;
                return true;
            }
        }
        false
    }

    /// A FIN: the entry goes after the linger time unless used again by a
    /// new connection (a SYN replaces it).
    pub fn closing(&mut self, client: (Ipv4Addr, u16), now: Instant) {
        let ms = self.ms(now);
        if let Some(c) = self.shard_mut(client).get_mut(&(u32::from(client.0), client.1)) {
            c.closing = true;
            c.last = ms;
        }
    }

    pub fn remove(&mut self, client: (Ipv4Addr, u16)) -> Option<Conn> {
        self.shard_mut(client).remove(&(u32::from(client.0), client.1))
    }

    /// Forgets every connection to `server` (it is gone).
    pub fn drop_server(&mut self, server: Ipv4Addr) -> usize {
        let s = u32::from(server);
        let before = self.len();
        for m in self.shards.iter_mut() {
            m.retain(|_, c| c.server != s);
        }
        before - self.len()
    }

    /// Removes idle and finished connections; returns how many.
    /// Forgets every connection past its time; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        (0..SHARDS).map(|_| self.expire_step(now)).sum()
    }

    /// One bounded step of expiry: walks the next shard only. `SHARDS`
    /// steps make a whole pass.
    pub fn expire_step(&mut self, now: Instant) -> usize {
        let ms = self.ms(now);
        let (idle, linger) = (self.idle.as_millis() as u32, self.linger.as_millis() as u32);
        let i = self.next;
        self.next = (self.next + 1) % SHARDS;
        let m = &mut self.shards[i];
        let before = m.len();
        m.retain(|_, c| age(ms, c.last) < if c.closing { linger } else { idle });
        let gone = before - m.len();
        // Keys of entries that left stay queued until met; keep the queue
        // from outgrowing the shard.
        let q = &mut self.half_open[i];
        if q.len() > 2 * m.len() + 64 {
            q.retain(|k| m.get(k).is_some_and(|c| !c.established));
        }
        gone
    }

    fn shard_mut(&mut self, client: (Ipv4Addr, u16)) -> &mut HashMap<(u32, u16), Conn> {
        &mut self.shards[shard(client)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8, port: u16) -> (Ipv4Addr, u16) {
        (Ipv4Addr::new(10, 0, 0, n), port)
    }

    #[test]
    fn made_touched_closed_and_expired() {
        let t = Instant::now();
        let mut m = ConnMap::new(Duration::from_secs(60), Duration::from_secs(2), t);
        let s1 = Ipv4Addr::new(10, 1, 0, 1);
        m.insert(c(1, 1000), s1, 0, false, t);
        m.insert(c(2, 1000), s1, 0, false, t);
        m.insert(c(3, 1000), Ipv4Addr::new(10, 1, 0, 2), 0, false, t);
        assert_eq!(m.touch(c(1, 1000), true, t + Duration::from_secs(50)).map(|c| c.server()), Some(s1));
        m.closing(c(2, 1000), t + Duration::from_secs(1));
        assert_eq!(m.expire(t + Duration::from_secs(2)), 0);
        assert_eq!(m.expire(t + Duration::from_secs(4)), 1, "the closed one after its linger");
        assert_eq!(m.expire(t + Duration::from_secs(61)), 1, "the idle one");
        assert!(m.get(c(1, 1000)).is_some(), "the busy one stays");
        assert_eq!(m.drop_server(s1), 1);
        assert!(m.is_empty());
    }

    #[test]
    fn expiry_walks_one_shard_per_step() {
        let t = Instant::now();
        let mut m = ConnMap::new(Duration::from_secs(1), Duration::from_secs(1), t);
        for i in 0..2_000u16 {
            m.insert((Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 40_000 + i), Ipv4Addr::new(10, 1, 0, 1), 0, false, t);
        }
        let later = t + Duration::from_secs(5);
        let steps: Vec<usize> = (0..SHARDS).map(|_| m.expire_step(later)).collect();
        assert!(steps.iter().all(|n| *n < 2_000 / 4), "each step a part: {steps:?}");
        assert!(steps.iter().filter(|n| **n > 0).count() > SHARDS / 2, "connections spread over the shards: {steps:?}");
        assert_eq!(steps.iter().sum::<usize>(), 2_000, "a whole pass forgets them all");
        assert!(m.is_empty());
    }

    #[test]
    fn expiry_works_past_the_49_days_a_millisecond_u32_holds() {
        let t0 = Instant::now();
        let mut m = ConnMap::new(Duration::from_secs(60), Duration::from_secs(2), t0);
        let later = t0 + Duration::from_secs(50 * 86_400);
        m.insert(c(1, 1000), Ipv4Addr::new(10, 1, 0, 1), 0, true, later);
        assert_eq!(m.expire(later + Duration::from_secs(30)), 0, "not yet idle");
        assert_eq!(m.expire(later + Duration::from_secs(61)), 1, "idle after 50 days of uptime too");
        // Across the wrap itself.
        let wrap = t0 + Duration::from_millis(u64::from(u32::MAX) - 10_000);
        m.insert(c(2, 1000), Ipv4Addr::new(10, 1, 0, 1), 0, true, wrap);
        assert_eq!(m.expire(wrap + Duration::from_secs(30)), 0);
        assert_eq!(m.expire(wrap + Duration::from_secs(61)), 1);
    }

    #[test]
    fn a_syn_flood_evicts_half_open_entries_only() {
        let t = Instant::now();
        let mut m = ConnMap::new(Duration::from_secs(60), Duration::from_secs(2), t).with_capacity(SHARDS * 100);
        let server = Ipv4Addr::new(10, 1, 0, 1);
        // Established connections, then a flood of SYNs from everywhere.
        for p in 0..(SHARDS as u16 * 50) {
            m.insert(c(1, 10_000 + p), server, 0, false, t);
            m.touch(c(1, 10_000 + p), true, t);
        }
        for i in 0..100_000u32 {
            let spoofed = (Ipv4Addr::from(0x0a00_0000 + i), 40_000);
            assert!(m.insert(spoofed, server, 0, false, t), "room is made for a new SYN");
        }
        assert!(m.len() <= SHARDS * 100, "bounded: {}", m.len());
        assert!((0..(SHARDS as u16 * 50)).all(|p| m.get(c(1, 10_000 + p)).is_some()), "no established connection evicted");
        assert!(m.evicted() >= 100_000 - (SHARDS as u64 * 100), "{}", m.evicted());
        // A shard full of established connections refuses the next one.
        let mut full = ConnMap::new(Duration::from_secs(60), Duration::from_secs(2), t).with_capacity(SHARDS);
        let mut refused = 0;
        for p in 0..1_000u16 {
            if full.insert(c(2, p), server, 0, true, t) {
                continue;
            }
            refused += 1;
        }
        assert!(refused > 0 && full.len() <= SHARDS, "{refused} refused, {} held", full.len());
    }

    #[test]
    fn an_entry_is_small() {
        assert_eq!(std::mem::size_of::<Conn>(), 12);
        assert_eq!(std::mem::size_of::<((u32, u16), Conn)>(), 20);
    }
}
