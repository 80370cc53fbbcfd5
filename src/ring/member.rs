//! One ring member as a pure state machine (no sockets, no clock of its
//! own): it pings its two buddies, passes the heartbeat token on, notices
//! a dead buddy after `misses` unanswered pings, forces a ring purge and
//! rebuild when the token stops, joins by broadcast, leaves gracefully,
//! and elects the dispatcher.
//!
//! Calling order, as for any sans-I/O protocol: feed `handle(now, from,
//! msg)` with every message received and `handle_timeout(now)` when
//! `poll_timeout()` says; after each call drain `poll_transmit()` (what to
//! send, to one member or to all) and `poll_event()` (what happened).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Timings, from the `[ring]` section (seed defaults: communications
/// timeout 2,000 ms, broadcast timeout 2,500 ms).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping_interval: Duration,
    pub misses: u32,
    pub token_timeout: Duration,
    pub broadcast_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_millis(500),
            misses: 3,
            token_timeout: Duration::from_millis(2000),
            broadcast_timeout: Duration::from_millis(2500),
        }
    }
}

/// A message carried in the token, removed by its addressee, when it
/// expires, or when it comes back to its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub origin: SocketAddr,
    pub to: Option<SocketAddr>,
    /// Hops left before it expires.
    pub ttl: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
        /// A digest of the responder's view of the ring (its members).
        view: u64,
    },
    /// The heartbeat token, circulating from each member to the next;
    /// `hops` bounds its life while views disagree (say, after a partition).
    Token {
        round: u64,
        hops: u16,
        carried: Vec<Carried>,
    },
    /// Broadcast by a member that wants in.
    Join {
        capable: bool,
    },
    /// Who I am, in answer to a Join or during a rebuild.
    Hello {
        capable: bool,
    },
    /// Broadcast by a member leaving gracefully.
    Leave,
    /// Out of band: `dead` stopped answering its buddy `from`.
    Dead {
        dead: SocketAddr,
    },
    /// Out of band: the token was lost; everyone leaves and re-enters.
    Purge {
        epoch: u64,
    },
    /// The seeds' ServerReplace, member to member: in your buddy list,
    /// replace `replace` with `with` (dispatch-capable or not). `gone`:
    /// `replace` left the ring (a death or a shutdown), rather than just
    /// moved away from you because `with` joined between you.
    Replace {
        replace: SocketAddr,
        with: SocketAddr,
        with_capable: bool,
        gone: bool,
    },
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    One(SocketAddr),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined (or was found again during a rebuild).
    Joined(SocketAddr),
    /// A member left gracefully.
    Left(SocketAddr),
    /// A member died: found by a buddy (possibly us).
    Dead { dead: SocketAddr, reporter: SocketAddr },
    /// The ring was purged and rebuilt with these members.
    Rebuilt(Vec<SocketAddr>),
    /// The dispatcher changed (`None`: there is none, e.g. a lone survivor).
    Dispatcher(Option<SocketAddr>),
    /// A message carried by the token reached us.
    Delivered(Carried),
    /// We were reported dead while alive (frozen, cut off): we asked to
    /// come back in, and whoever counted us out must count us in again.
    Expelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Broadcast a Join; collecting Hellos until the deadline.
    Joining {
        until: Instant,
    },
    Member,
    /// Purged: collecting Hellos until the deadline.
    Rebuilding {
        until: Instant,
    },
    Left,
}

#[derive(Debug, Clone, Copy)]
struct Watch {
    /// Unanswered pings in a row.
    missed: u32,
    outstanding: Option<u64>,
}

/// The members known, with their dispatch capability, and a digest of
/// their addresses kept as they change: the XOR of a hash of each, which
/// does not depend on the order they came in. Read as the map it derefs
/// to; changed only through `insert` and `remove`, which keep the digest.
/// Our place in the ring (the buddies and whether we are the master) is
/// kept the same way: what every message asks costs the same at any size.
#[derive(Debug, Clone)]
struct Members {
    me: SocketAddr,
    map: BTreeMap<SocketAddr, bool>,
    digest: u64,
    /// The next member up the ring and the previous one; `None` when alone.
    buddies: Option<(SocketAddr, SocketAddr)>,
    /// We have the smallest address.
    master: bool,
    /// The member with the smallest address (the master) and its
    /// capability: its beacon reaches every member, and each knows it
    /// without a search.
    first: (SocketAddr, bool),
}

impl Members {
    fn of(me: SocketAddr, capable: bool) -> Self {
        let mut m = Self { me, map: BTreeMap::new(), digest: 0, buddies: None, master: true, first: (me, capable) };
        m.insert(me, capable);
        m
    }

    /// Inserts or updates `addr`; its old capability, if it was known.
    fn insert(&mut self, addr: SocketAddr, capable: bool) -> Option<bool> {
        let old = self.map.insert(addr, capable);
        if old.is_none() {
            self.digest ^= address_hash(addr);
            self.placed();
        } else if self.first.0 == addr {
            self.first.1 = capable;
        }
        old
    }

    fn remove(&mut self, addr: &SocketAddr) -> Option<bool> {
        let old = self.map.remove(addr);
        if old.is_some() {
            self.digest ^= address_hash(*addr);
            self.placed();
        }
        old
    }

    /// Finds our place again after a change of members.
    fn placed(&mut self) {
        let me = self.me;
        self.first = self.map.iter().next().map_or((me, false), |(a, c)| (*a, *c));
        self.master = self.first.0 == me;
        self.buddies = (self.map.len() >= 2).then(|| {
            let first = || self.map.keys().next().copied().unwrap_or(me);
            let last = || self.map.keys().next_back().copied().unwrap_or(me);
            let next = self.map.range(me..).nth(1).map(|(a, _)| *a).unwrap_or_else(first);
            let prev = self.map.range(..me).next_back().map(|(a, _)| *a).unwrap_or_else(last);
            (next, prev)
        });
    }
}

impl std::ops::Deref for Members {
    type Target = BTreeMap<SocketAddr, bool>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// A member's address hashed (FNV-1a over its bytes and port, then
/// mixed), the same on every host.
fn address_hash(a: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let (family, ip) = match a.ip() {
        std::net::IpAddr::V4(ip) => (4, ip.to_ipv6_mapped().octets()),
        std::net::IpAddr::V6(ip) => (6, ip.octets()),
    };
    for b in std::iter::once(family).chain(ip).chain(a.port().to_be_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: each bit of the address moves every bit of
    // the hash, so XORs of different sets do not cancel by accident.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub struct Member {
    me: SocketAddr,
    capable: bool,
    timing: Timing,
    phase: Phase,
    /// Every member known, with its dispatch capability (us included).
    members: Members,
    watch: BTreeMap<SocketAddr, Watch>,
    next_ping: Instant,
    last_token: Instant,
    next_token: Option<Instant>,
    /// When the master next broadcasts a Hello, so that parts of a ring
    /// split by a partition find each other again when it heals.
    next_beacon: Instant,
    round: u64,
    epoch: u64,
    seq: u64,
    dispatcher: Option<SocketAddr>,
    outbox: VecDeque<(To, Msg)>,
    events: VecDeque<Event>,
    /// Messages waiting to ride the next token we pass on.
    to_carry: Vec<Carried>,
    /// Rounds in a row whose token came back after as many hops as there
    /// are members in no view of ours.
    disagreed: u32,
    /// When a differing view may next make us ask everyone who is there.
    next_ask: Instant,
}

impl Member {
    /// A member about to join: it broadcasts a Join at once.
    pub fn join(me: SocketAddr, capable: bool, timing: Timing, now: Instant) -> Self {
        let mut m = Self {
            me,
            capable,
            timing,
            phase: Phase::Joining { until: now + timing.broadcast_timeout },
            members: Members::of(me, capable),
            watch: BTreeMap::new(),
            next_ping: now + timing.ping_interval,
            last_token: now,
            next_token: None,
            next_beacon: now + timing.broadcast_timeout,
            round: 0,
            epoch: 0,
            seq: 0,
            dispatcher: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            to_carry: Vec::new(),
            disagreed: 0,
            next_ask: now,
        };
        m.outbox.push_back((To::All, Msg::Join { capable }));
        m
    }

    /// A member of an already formed ring whose members it knows (each
    /// with its dispatch capability), as after a rebuild.
    pub fn formed(me: SocketAddr, members: &BTreeMap<SocketAddr, bool>, timing: Timing, now: Instant) -> Self {
        let capable = members.get(&me).copied().unwrap_or(false);
        let mut m = Self::join(me, capable, timing, now);
        m.outbox.clear();
        m.members = Members::of(me, capable);
        for (&a, &c) in members {
            m.members.insert(a, c);
        }
        m.become_member(now);
        m.events.clear();
        m
    }

    pub fn addr(&self) -> SocketAddr {
        self.me
    }

    pub fn members(&self) -> Vec<SocketAddr> {
        self.members.keys().copied().collect()
    }

    /// A digest of the members we know: equal views give equal digests
    /// on every member. Kept as members come and go, so a Pong costs the
    /// same in a ring of 10 as of 1,000.
    fn view(&self) -> u64 {
        self.members.digest
    }

    pub fn dispatcher(&self) -> Option<SocketAddr> {
        self.dispatcher
    }

    pub fn is_member(&self) -> bool {
        self.phase == Phase::Member
    }

    /// The next member up the ring (NDN) and the previous one (NUN); `None`
    /// when alone.
    pub fn buddies(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.members.buddies
    }

    /// The ring master (smallest address) circulates the heartbeat token.
    /// When a silent ring is purged: the communications timeout after the
    /// last token, plus the time the buddies of a dead member need to find
    /// it, so that a death is handled by its buddies (at once, no rebuild)
    /// and the purge stays the remedy for a token lost any other way.
    fn purge_at(&self) -> Instant {
        self.last_token + self.timing.token_timeout + self.timing.ping_interval * self.timing.misses
    }

    fn is_master(&self) -> bool {
        self.members.master
    }

    /// Leaves gracefully: tells each buddy to replace us with the other
    /// one, and everyone that we left.
    pub fn leave(&mut self) {
        if let Some((next, prev)) = self.buddies()
            && next != prev
        {
            let cap = |a| self.members.get(&a).copied().unwrap_or(false);
            let (cap_next, cap_prev) = (cap(next), cap(prev));
            self.outbox.push_back((To::One(next), Msg::Replace { replace: self.me, with: prev, with_capable: cap_prev, gone: true }));
            self.outbox.push_back((To::One(prev), Msg::Replace { replace: self.me, with: next, with_capable: cap_next, gone: true }));
        }
        self.outbox.push_back((To::All, Msg::Leave));
        self.phase = Phase::Left;
    }

    /// Queues a message to ride the token to `to` (everyone when `None`).
    pub fn send_carried(&mut self, to: Option<SocketAddr>, body: Vec<u8>) {
        let ttl = (self.members.len() as u16).saturating_mul(2).max(2);
        self.to_carry.push(Carried { origin: self.me, to, ttl, body });
    }

    pub fn poll_transmit(&mut self) -> Option<(To, Msg)> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = match self.phase {
            Phase::Left => return None,
            Phase::Joining { until } | Phase::Rebuilding { until } => until,
            Phase::Member => self.next_ping.min(self.purge_at()).min(self.next_beacon),
        };
        if let Some(nt) = self.next_token {
            t = t.min(nt);
        }
        Some(t)
    }

    fn add(&mut self, addr: SocketAddr, capable: bool) -> bool {
        let new = self.members.insert(addr, capable).is_none();
        if new && addr != self.me {
            self.events.push_back(Event::Joined(addr));
        }
        new
    }

    fn remove(&mut self, addr: SocketAddr) -> bool {
        self.watch.remove(&addr);
        addr != self.me && self.members.remove(&addr).is_some()
    }

    /// Elects the smallest dispatch-capable address; a lone member stays a
    /// plain server. A higher-addressed dispatcher that meets a lower one
    /// simply stops being elected: it abdicates.
    fn elect(&mut self) {
        let chosen = if self.members.len() < 2 { None } else { self.members.iter().find(|(_, c)| **c).map(|(a, _)| *a) };
        if chosen != self.dispatcher {
            self.dispatcher = chosen;
            self.events.push_back(Event::Dispatcher(chosen));
        }
    }

    /// The membership changed: elect again, and the master starts a new
    /// token round through the new ring at once.
    fn ring_changed(&mut self, now: Instant) {
        self.elect();
        // The master starts a new round through the new ring: wait for it
        // afresh rather than purge for the round that was lost.
        self.last_token = now;
        if self.phase == Phase::Member && self.is_master() {
            self.next_token = Some(now);
        }
    }

    fn become_member(&mut self, now: Instant) {
        self.phase = Phase::Member;
        self.last_token = now;
        self.watch.clear();
        self.next_ping = now;
        self.elect();
        if self.is_master() {
            self.next_token = Some(now);
        }
    }

    pub fn handle(&mut self, now: Instant, from: SocketAddr, msg: Msg) {
        if self.phase == Phase::Left || from == self.me {
            return;
        }
        match msg {
            Msg::Ping { seq } => self.outbox.push_back((To::One(from), Msg::Pong { seq, view: self.view() })),
            Msg::Pong { seq, view } => {
                // A buddy whose view differs from ours: someone is missing
                // from one of them, and nothing else may ever tell (the token
                // can circle a ring that views disagree on). Ask everyone: a
                // Join is answered by every member with a Hello, and teaches
                // them about us; at most once per broadcast timeout.
                if view != self.view() && self.phase == Phase::Member && now >= self.next_ask {
                    self.next_ask = now + self.timing.broadcast_timeout;
                    self.outbox.push_back((To::All, Msg::Join { capable: self.capable }));
                }
                if let Some(w) = self.watch.get_mut(&from)
                    && w.outstanding == Some(seq)
                {
                    w.missed = 0;
                    w.outstanding = None;
                }
            }
            Msg::Join { capable } => {
                // A member we know asking again (its view differs) changes
                // nothing here: it only needs our Hello.
                let recapable = self.members.get(&from).is_some_and(|c| *c != capable);
                if self.add(from, capable) || recapable {
                    self.ring_changed(now);
                }
                self.outbox.push_back((To::One(from), Msg::Hello { capable: self.capable }));
            }
            // The master's beacon, as we know it: nothing to learn.
            Msg::Hello { capable } if self.members.first == (from, capable) => {}
            Msg::Hello { capable } => {
                // A stranger saying hello (a healed partition): say hello to
                // everyone, so that its side learns all of ours, not just us.
                if self.add(from, capable) {
                    if self.phase == Phase::Member {
                        self.outbox.push_back((To::All, Msg::Hello { capable: self.capable }));
                    }
                    self.ring_changed(now);
                }
            }
            Msg::Leave => {
                if self.remove(from) {
                    self.events.push_back(Event::Left(from));
                    self.ring_changed(now);
                }
            }
            Msg::Dead { dead } => {
                // Only a member of our ring speaks for it. A report from one we
                // count out is stale: say, sent from behind a cut link, kept
                // in a queue and delivered once the link came back.
                if !self.members.contains_key(&from) {
                    return;
                }
                if dead == self.me {
                    // Reported dead while alive: come back in.
                    self.outbox.push_back((To::All, Msg::Join { capable: self.capable }));
                    self.events.push_back(Event::Expelled);
                    return;
                }
                if self.remove(dead) {
                    self.events.push_back(Event::Dead { dead, reporter: from });
                    self.ring_changed(now);
                }
            }
            Msg::Replace { replace, with, with_capable, gone } => {
                let mut changed = with != self.me && self.add(with, with_capable);
                if gone && replace != self.me && self.remove(replace) {
                    changed = true;
                    let event = if replace == from { Event::Left(from) } else { Event::Dead { dead: replace, reporter: from } };
                    self.events.push_back(event);
                }
                if changed {
                    self.ring_changed(now);
                }
            }
            Msg::Purge { epoch } => {
                if epoch > self.epoch || !matches!(self.phase, Phase::Rebuilding { .. }) {
                    self.start_rebuild(now, epoch.max(self.epoch + 1), false);
                }
            }
            Msg::Token { round, hops, mut carried } => {
                // A joiner is already in its neighbours' ring: it passes tokens on.
                if !matches!(self.phase, Phase::Member | Phase::Joining { .. }) {
                    return;
                }
                self.last_token = now;
                self.round = self.round.max(round);
                let me = self.me;
                let mut delivered = Vec::new();
                carried.retain_mut(|c| {
                    if c.origin == me {
                        return false; // back at its sender
                    }
                    if c.to.is_none_or(|t| t == me) {
                        delivered.push(c.clone());
                        if c.to == Some(me) {
                            return false; // removed by its addressee
                        }
                    }
                    c.ttl = c.ttl.saturating_sub(1);
                    c.ttl > 0
                });
                self.events.extend(delivered.into_iter().map(Event::Delivered));
                if self.phase == Phase::Member && self.is_master() {
                    // A full circle: the master sends the next round on the next
                    // beat. Older rounds still about are dropped here.
                    if round == self.round {
                        // In a ring whose members agree, the token visits each
                        // once. Another length twice in a row (once may be a
                        // join on its way) means the views differ in a way
                        // nobody else can see: purge, so all rebuild as one.
                        self.disagreed = if usize::from(hops) == self.members.len() { 0 } else { self.disagreed + 1 };
                        if self.disagreed >= 2 {
                            self.disagreed = 0;
                            self.start_rebuild(now, self.epoch + 1, true);
                            return;
                        }
                        self.to_carry.extend(carried);
                        self.next_token = Some(now + self.timing.ping_interval);
                    }
                } else if let Some((next, _)) = self.buddies() {
                    if usize::from(hops) > 2 * self.members.len() + 2 {
                        return; // circling among members that disagree: let it go
                    }
                    carried.append(&mut self.to_carry);
                    self.outbox.push_back((To::One(next), Msg::Token { round, hops: hops + 1, carried }));
                }
            }
        }
    }

    fn start_rebuild(&mut self, now: Instant, epoch: u64, initiator: bool) {
        self.epoch = epoch;
        if initiator {
            self.outbox.push_back((To::All, Msg::Purge { epoch }));
        }
        let capable = self.capable;
        self.members = Members::of(self.me, capable);
        self.watch.clear();
        self.next_token = None;
        self.phase = Phase::Rebuilding { until: now + self.timing.broadcast_timeout };
        self.outbox.push_back((To::All, Msg::Hello { capable }));
    }

    /// Joins afresh: what this member collected is no longer to be trusted.
    fn rejoin(&mut self, now: Instant) {
        self.watch.clear();
        self.next_token = None;
        self.phase = Phase::Joining { until: now + self.timing.broadcast_timeout };
        self.outbox.push_back((To::All, Msg::Join { capable: self.capable }));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Left => {}
            // Woken long after the Hellos were due (the process was frozen or
            // starved): the ring moved on meanwhile, and what was collected
            // before is a stale part of it. Concluding from it would count
            // live members out; ask everyone again instead.
            Phase::Joining { until } | Phase::Rebuilding { until } if now >= until + self.timing.broadcast_timeout => {
                self.rejoin(now);
            }
            Phase::Joining { until } => {
                if now >= until {
                    self.become_member(now);
                    // Tell the new buddies that we now stand between them.
                    if let Some((next, prev)) = self.buddies()
                        && next != prev
                    {
                        let with = self.me;
                        let with_capable = self.capable;
                        self.outbox.push_back((To::One(next), Msg::Replace { replace: prev, with, with_capable, gone: false }));
                        self.outbox.push_back((To::One(prev), Msg::Replace { replace: next, with, with_capable, gone: false }));
                    }
                }
            }
            Phase::Rebuilding { until } => {
                if now >= until {
                    self.become_member(now);
                    self.events.push_back(Event::Rebuilt(self.members()));
                }
            }
            Phase::Member => {
                if now >= self.purge_at() && self.members.len() > 1 {
                    // No token for the communications timeout: purge and rebuild.
                    self.start_rebuild(now, self.epoch + 1, true);
                    return;
                }
                if let Some(t) = self.next_token
                    && now >= t
                    && self.is_master()
                {
                    self.next_token = None;
                    self.round += 1;
                    self.last_token = now;
                    match self.buddies() {
                        Some((next, _)) => {
                            let carried = std::mem::take(&mut self.to_carry);
                            self.outbox.push_back((To::One(next), Msg::Token { round: self.round, hops: 1, carried }));
                        }
                        None => self.next_token = Some(now + self.timing.ping_interval),
                    }
                }
                if self.members.len() < 2 {
                    self.last_token = now; // alone: nothing to miss
                }
                if now >= self.next_beacon {
                    self.next_beacon = now + self.timing.broadcast_timeout;
                    if self.is_master() {
                        self.outbox.push_back((To::All, Msg::Hello { capable: self.capable }));
                    }
                }
                if now >= self.next_ping {
                    self.next_ping = now + self.timing.ping_interval;
                    self.ping_buddies(now);
                }
            }
        }
    }

    fn ping_buddies(&mut self, now: Instant) {
        let Some((next, prev)) = self.buddies() else { return };
        let mut dead = Vec::new();
        for b in [next, prev] {
            let w = self.watch.entry(b).or_insert(Watch { missed: 0, outstanding: None });
            if w.outstanding.is_some() {
                w.missed += 1;
            }
            if w.missed >= self.timing.misses {
                dead.push(b);
                continue;
            }
            self.seq += 1;
            w.outstanding = Some(self.seq);
            self.outbox.push_back((To::One(b), Msg::Ping { seq: self.seq }));
            if next == prev {
                break;
            }
        }
        for d in dead {
            if !self.members.contains_key(&d) {
                continue;
            }
            // The dead member's other buddy: it now watches us instead.
            let other = {
                let before: Vec<SocketAddr> = self.members.keys().copied().collect();
                let i = before.iter().position(|a| *a == d).expect("checked above");
                let n = before.len();
                let (up, down) = (before[(i + 1) % n], before[(i + n - 1) % n]);
                if up == self.me { down } else { up }
            };
            if self.remove(d) {
                self.events.push_back(Event::Dead { dead: d, reporter: self.me });
                if other != self.me && other != d {
                    let with_capable = self.capable;
                    self.outbox.push_back((To::One(other), Msg::Replace { replace: d, with: self.me, with_capable, gone: true }));
                }
                self.outbox.push_back((To::All, Msg::Dead { dead: d }));
                self.ring_changed(now);
            }
        }
    }
}

#[cfg(test)]
#[path = "member_tests.rs"]
mod tests;
