//! The connection map: which server each client connection (address and
//! port) was given. Made on a SYN, kept while packets flow, let go shortly
//! after a FIN (so the last ACKs still pass), at once on a RST, and after
//! an idle timeout. Small entries, so that a million fit in well under
//! 200 MB. Kept in shards, so that expiry walks one shard per step and never
//! holds up the packets behind it for a whole pass. Pure: time is passed in.

use std::collections::HashMap;
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
}

impl Conn {
    pub fn server(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.server)
    }
}

/// Shards of the map: an expiry step walks one.
pub const SHARDS: usize = 16;

fn shard(client: (Ipv4Addr, u16)) -> usize {
    let h = (u32::from(client.0) ^ u32::from(client.1).rotate_left(16)).wrapping_mul(0x9e37_79b9);
    (h >> 28) as usize % SHARDS
}

pub struct ConnMap {
    shards: Box<[HashMap<(u32, u16), Conn>]>,
    /// The shard the next expiry step walks.
    next: usize,
    epoch: Instant,
    idle: Duration,
    linger: Duration,
}

impl ConnMap {
    pub fn new(idle: Duration, linger: Duration, now: Instant) -> Self {
        Self { shards: (0..SHARDS).map(|_| HashMap::new()).collect(), next: 0, epoch: now, idle, linger }
    }

    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis().min(u128::from(u32::MAX)) as u32
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    /// The connection of `client`, marked as seen now.
    pub fn touch(&mut self, client: (Ipv4Addr, u16), now: Instant) -> Option<Conn> {
        let ms = self.ms(now);
        let c = self.shard_mut(client).get_mut(&(u32::from(client.0), client.1))?;
        c.last = ms;
        Some(*c)
    }

    pub fn get(&self, client: (Ipv4Addr, u16)) -> Option<Conn> {
        self.shards[shard(client)].get(&(u32::from(client.0), client.1)).copied()
    }

    pub fn insert(&mut self, client: (Ipv4Addr, u16), server: Ipv4Addr, vip: u16, now: Instant) {
        let last = self.ms(now);
        self.shard_mut(client).insert((u32::from(client.0), client.1), Conn { server: u32::from(server), last, vip, closing: false });
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
        let m = &mut self.shards[self.next];
        self.next = (self.next + 1) % SHARDS;
        let before = m.len();
        m.retain(|_, c| ms.saturating_sub(c.last) < if c.closing { linger } else { idle });
        before - m.len()
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
        m.insert(c(1, 1000), s1, 0, t);
        m.insert(c(2, 1000), s1, 0, t);
        m.insert(c(3, 1000), Ipv4Addr::new(10, 1, 0, 2), 0, t);
        assert_eq!(m.touch(c(1, 1000), t + Duration::from_secs(50)).map(|c| c.server()), Some(s1));
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
            m.insert((Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 40_000 + i), Ipv4Addr::new(10, 1, 0, 1), 0, t);
        }
        let later = t + Duration::from_secs(5);
        let steps: Vec<usize> = (0..SHARDS).map(|_| m.expire_step(later)).collect();
        assert!(steps.iter().all(|n| *n < 2_000 / 4), "each step a part: {steps:?}");
        assert!(steps.iter().filter(|n| **n > 0).count() > SHARDS / 2, "connections spread over the shards: {steps:?}");
        assert_eq!(steps.iter().sum::<usize>(), 2_000, "a whole pass forgets them all");
        assert!(m.is_empty());
    }

    #[test]
    fn an_entry_is_small() {
        assert_eq!(std::mem::size_of::<Conn>(), 12);
        assert_eq!(std::mem::size_of::<((u32, u16), Conn)>(), 20);
    }
}
