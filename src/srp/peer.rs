//! Active and passive SRP responders of the same clusters, as a pure state
//! machine (time passed in). The first responder is active and serves the
//! cluster addresses; later ones Join and are passive; a passive one sends
//! Leave when it stops; a stopping active one hands over with Activate (and
//! the passive list) and serves until the new one says it serves; passive
//! ones send KeepAlive and the first of them takes over when the active one
//! stops answering. A KeepAlive is answered with a KeepAliveAck, never with
//! a KeepAlive, so no two responders can keep each other talking.
//!
//! The wire form: the authenticated envelope the ring uses (`b"VS"`), with
//! kinds of our own, distinct from the [MC-SQLR] opcodes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::envelope::{self, Envelope, EnvelopeError, Reader, put_addr};

const MAGIC: &[u8; 2] = b"VS";
/// Passive responders listed in one message, at most.
const MAX_PASSIVES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMsg {
    Join,
    /// From the active responder: you are passive; here is the list.
    JoinAck {
        passives: Vec<SocketAddr>,
    },
    Leave,
    /// From a stopping active responder: you are active now.
    Activate {
        passives: Vec<SocketAddr>,
    },
    /// From the new active responder: I serve now; you may stop.
    ActivateAck,
    KeepAlive {
        seq: u64,
    },
    KeepAliveAck {
        seq: u64,
        passives: Vec<SocketAddr>,
    },
    /// From a responder that just became active.
    Active,
}

impl PeerMsg {
    fn kind(&self) -> u8 {
        match self {
            Self::Join => 0x41,
            Self::JoinAck { .. } => 0x42,
            Self::Leave => 0x43,
            Self::Activate { .. } => 0x44,
            Self::ActivateAck => 0x45,
            Self::KeepAlive { .. } => 0x46,
            Self::KeepAliveAck { .. } => 0x47,
            Self::Active => 0x48,
        }
    }

    pub fn encode(&self, env: Envelope, key: Option<&[u8]>) -> Vec<u8> {
        let mut body = Vec::new();
        let list = |body: &mut Vec<u8>, l: &[SocketAddr]| {
            let l = &l[..l.len().min(MAX_PASSIVES)];
            body.push(l.len() as u8);
            for a in l {
                put_addr(body, a);
            }
        };
        match self {
            Self::Join | Self::Leave | Self::ActivateAck | Self::Active => {}
            Self::JoinAck { passives } | Self::Activate { passives } => list(&mut body, passives),
            Self::KeepAlive { seq } => body.extend_from_slice(&seq.to_be_bytes()),
            Self::KeepAliveAck { seq, passives } => {
                body.extend_from_slice(&seq.to_be_bytes());
                list(&mut body, passives);
            }
        }
        envelope::seal(MAGIC, self.kind(), env, &body, key)
    }

    pub fn decode(data: &[u8], key: Option<&[u8]>) -> Result<(Self, Envelope), EnvelopeError> {
        let (kind, env, body) = envelope::open(MAGIC, data, key)?;
        let mut r = Reader { b: body };
        let list = |r: &mut Reader| -> Result<Vec<SocketAddr>, EnvelopeError> {
            let n = r.u8("passive list")? as usize;
            if n > MAX_PASSIVES {
                return Err(EnvelopeError::Malformed("passive list too long"));
            }
            (0..n).map(|_| r.addr("passive")).collect()
        };
        let msg = match kind {
            0x41 => Self::Join,
            0x42 => Self::JoinAck { passives: list(&mut r)? },
            0x43 => Self::Leave,
            0x44 => Self::Activate { passives: list(&mut r)? },
            0x45 => Self::ActivateAck,
            0x46 => Self::KeepAlive { seq: r.u64("keepalive")? },
            0x47 => {
                let seq = r.u64("keepalive ack")?;
                Self::KeepAliveAck { seq, passives: list(&mut r)? }
            }
            0x48 => Self::Active,
            k => return Err(EnvelopeError::Kind(k)),
        };
        if !r.b.is_empty() {
            return Err(EnvelopeError::Malformed("trailing bytes"));
        }
        Ok((msg, env))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Asked the peers who is active; waiting for an answer.
    Starting {
        until: Instant,
    },
    Active {
        passives: Vec<SocketAddr>,
    },
    Passive {
        active: SocketAddr,
        passives: Vec<SocketAddr>,
        last_ack: Instant,
        next_keepalive: Instant,
    },
    /// Handed over; serving until the new active one acknowledges.
    Stopping {
        until: Instant,
    },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// Start (true) or stop (false) serving the cluster addresses.
    Serve(bool),
}

pub struct Peer {
    me: SocketAddr,
    peers: Vec<SocketAddr>,
    interval: Duration,
    timeout: Duration,
    role: Role,
    serving: bool,
    seq: u64,
    outbox: VecDeque<(SocketAddr, PeerMsg)>,
    events: VecDeque<PeerEvent>,
}

impl Peer {
    /// Starts by asking every peer who is active; with no peers at all,
    /// this responder is active at once.
    pub fn start(me: SocketAddr, peers: Vec<SocketAddr>, interval: Duration, timeout: Duration, now: Instant) -> Self {
        let peers: Vec<SocketAddr> = peers.into_iter().filter(|p| *p != me).collect();
        let mut p = Self {
            me,
            peers,
            interval,
            timeout,
            role: Role::Starting { until: now + timeout },
            serving: false,
            seq: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        };
        if p.peers.is_empty() {
            p.become_active(Vec::new(), false);
        } else {
            for &peer in &p.peers {
                p.outbox.push_back((peer, PeerMsg::Join));
            }
        }
        p
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn is_peer(&self, addr: SocketAddr) -> bool {
        self.peers.contains(&addr)
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, PeerMsg)> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.role {
            Role::Starting { until } | Role::Stopping { until } => Some(*until),
            Role::Passive { next_keepalive, .. } => Some((*next_keepalive).min(self.takeover_at().expect("passive"))),
            Role::Active { .. } | Role::Stopped => None,
        }
    }

    fn serve(&mut self, on: bool) {
        if self.serving != on {
            self.serving = on;
            self.events.push_back(PeerEvent::Serve(on));
        }
    }

    fn become_active(&mut self, passives: Vec<SocketAddr>, announce: bool) {
        let passives = passives.into_iter().filter(|p| *p != self.me).collect();
        self.role = Role::Active { passives };
        self.serve(true);
        if announce {
            for &peer in &self.peers {
                self.outbox.push_back((peer, PeerMsg::Active));
            }
        }
    }

    fn become_passive(&mut self, active: SocketAddr, passives: Vec<SocketAddr>, now: Instant) {
        self.serve(false);
        self.role = Role::Passive { active, passives, last_ack: now, next_keepalive: now + self.interval };
    }

    /// When a passive responder takes over: the keep-alive timeout after
    /// the last answer, later for each passive listed before it, so that
    /// the first on the list goes first.
    fn takeover_at(&self) -> Option<Instant> {
        let Role::Passive { passives, last_ack, .. } = &self.role else { return None };
        let rank = passives.iter().position(|p| *p == self.me).unwrap_or(passives.len()) as u32;
        Some(*last_ack + self.timeout + self.interval * 2 * rank)
    }

    pub fn handle(&mut self, now: Instant, from: SocketAddr, msg: PeerMsg) {
        if !self.is_peer(from) {
            return;
        }
        match (&mut self.role, msg) {
            (Role::Stopped, _) => {}
            (Role::Active { passives }, PeerMsg::Join) => {
                if !passives.contains(&from) {
                    passives.push(from);
                }
                let passives = passives.clone();
                self.outbox.push_back((from, PeerMsg::JoinAck { passives }));
            }
            (Role::Active { passives }, PeerMsg::KeepAlive { seq }) => {
                if !passives.contains(&from) {
                    passives.push(from);
                }
                let passives = passives.clone();
                self.outbox.push_back((from, PeerMsg::KeepAliveAck { seq, passives }));
            }
            (Role::Active { passives }, PeerMsg::Leave) => passives.retain(|p| *p != from),
            (Role::Active { passives }, PeerMsg::Active) => {
                // Two active responders (both started alone, or a healed
                // split): the lower control address stays active.
                if from < self.me {
                    let passives = std::mem::take(passives);
                    self.become_passive(from, passives, now);
                    self.outbox.push_back((from, PeerMsg::Join));
                } else {
                    self.outbox.push_back((from, PeerMsg::Active));
                }
            }
            (Role::Starting { .. }, PeerMsg::JoinAck { passives }) => self.become_passive(from, passives, now),
            (Role::Starting { .. } | Role::Passive { .. }, PeerMsg::Active) => {
                let passives = match &self.role {
                    Role::Passive { passives, .. } => passives.clone(),
                    _ => Vec::new(),
                };
                self.become_passive(from, passives, now);
                self.outbox.push_back((from, PeerMsg::Join));
            }
            (
                Role::Passive { active, passives, last_ack, .. },
                PeerMsg::KeepAliveAck { passives: list, .. } | PeerMsg::JoinAck { passives: list },
            ) if *active == from => {
                *last_ack = now;
                *passives = list;
            }
            (Role::Passive { .. } | Role::Starting { .. }, PeerMsg::Activate { passives }) => {
                self.become_active(passives, true);
                self.outbox.push_back((from, PeerMsg::ActivateAck));
            }
            (Role::Stopping { .. }, PeerMsg::ActivateAck) => {
                self.role = Role::Stopped;
                self.serve(false);
            }
            // Everything else, keep-alives at anyone but the active one
            // included, gets no answer.
            _ => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.role {
            Role::Starting { until } if now >= *until => self.become_active(Vec::new(), true),
            Role::Stopping { until } if now >= *until => {
                self.role = Role::Stopped;
                self.serve(false);
            }
            Role::Passive { active, next_keepalive, .. } => {
                let active = *active;
                if now >= *next_keepalive {
                    *next_keepalive = now + self.interval;
                    self.seq += 1;
                    self.outbox.push_back((active, PeerMsg::KeepAlive { seq: self.seq }));
                }
                if self.takeover_at().is_some_and(|t| now >= t) {
                    let Role::Passive { passives, .. } = &self.role else { unreachable!() };
                    let passives = passives.iter().copied().filter(|p| *p != active).collect();
                    self.become_active(passives, true);
                }
            }
            _ => {}
        }
    }

    /// A graceful stop: an active responder hands over to the first passive
    /// one and keeps serving until it answers; a passive one says Leave.
    pub fn stop(&mut self, now: Instant) {
        match &self.role {
            Role::Active { passives } if !passives.is_empty() => {
                let next = passives[0];
                let rest = passives[1..].to_vec();
                self.outbox.push_back((next, PeerMsg::Activate { passives: rest }));
                self.role = Role::Stopping { until: now + self.timeout };
            }
            Role::Passive { active, .. } => {
                self.outbox.push_back((*active, PeerMsg::Leave));
                self.role = Role::Stopped;
            }
            Role::Stopping { .. } | Role::Stopped => {}
            _ => {
                self.role = Role::Stopped;
                self.serve(false);
            }
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.role == Role::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn a(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 1435))
    }

    const IV: Duration = Duration::from_millis(500);
    const TO: Duration = Duration::from_millis(1500);

    /// Responders on a simulated network with a virtual clock.
    struct Net {
        now: Instant,
        nodes: BTreeMap<SocketAddr, Peer>,
        down: Vec<SocketAddr>,
        /// Every message lost, timers running.
        cut: bool,
        sent: Vec<(SocketAddr, SocketAddr, PeerMsg)>,
    }

    impl Net {
        fn new() -> Self {
            Self { now: Instant::now(), nodes: BTreeMap::new(), down: Vec::new(), cut: false, sent: Vec::new() }
        }
        fn start(&mut self, n: u8, all: &[u8]) {
            let peers = all.iter().map(|&x| a(x)).collect();
            self.nodes.insert(a(n), Peer::start(a(n), peers, IV, TO, self.now));
            self.deliver();
        }
        fn deliver(&mut self) {
            for _ in 0..1000 {
                let mut q = Vec::new();
                for (from, p) in self.nodes.iter_mut() {
                    while let Some((to, m)) = p.poll_transmit() {
                        q.push((*from, to, m));
                    }
                }
                if q.is_empty() {
                    return;
                }
                for (from, to, m) in q {
                    self.sent.push((from, to, m.clone()));
                    if self.cut || self.down.contains(&from) || self.down.contains(&to) {
                        continue;
                    }
                    if let Some(p) = self.nodes.get_mut(&to) {
                        p.handle(self.now, from, m);
                    }
                }
            }
            panic!("message storm");
        }
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                self.deliver();
                let next = self.nodes.iter().filter(|(k, _)| !self.down.contains(k)).filter_map(|(_, p)| p.poll_timeout()).min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        let now = self.now;
                        for (k, p) in self.nodes.iter_mut() {
                            if !self.down.contains(k) && p.poll_timeout().is_some_and(|t| t <= now) {
                                p.handle_timeout(now);
                            }
                        }
                    }
                    _ => {
                        self.now = end;
                        return;
                    }
                }
            }
        }
        fn active(&self) -> Vec<SocketAddr> {
            self.nodes
                .iter()
                .filter(|(k, p)| !self.down.contains(k) && matches!(p.role(), Role::Active { .. } | Role::Stopping { .. }))
                .map(|(k, _)| *k)
                .collect()
        }
    }

    #[test]
    fn the_first_is_active_and_later_ones_join_as_passive() {
        let mut net = Net::new();
        let all = [1, 2, 3];
        net.start(1, &all);
        net.run(TO * 2);
        assert_eq!(net.active(), vec![a(1)]);
        net.start(2, &all);
        net.start(3, &all);
        net.run(Duration::from_secs(5));
        assert_eq!(net.active(), vec![a(1)]);
        assert_eq!(net.nodes[&a(1)].role(), &Role::Active { passives: vec![a(2), a(3)] });
        // A passive one stops: it says Leave.
        net.nodes.get_mut(&a(3)).unwrap().stop(net.now);
        net.run(Duration::from_secs(1));
        assert_eq!(net.nodes[&a(1)].role(), &Role::Active { passives: vec![a(2)] });
    }

    #[test]
    fn a_crashed_active_is_replaced_by_the_first_passive_within_the_timeout() {
        let mut net = Net::new();
        let all = [1, 2, 3];
        for n in all {
            net.start(n, &all);
            net.run(TO * 2);
        }
        assert_eq!(net.active(), vec![a(1)]);
        let crashed = net.now;
        net.down.push(a(1));
        net.run(TO + IV * 2);
        assert_eq!(net.active(), vec![a(2)], "the first passive took over");
        assert!(net.now - crashed <= TO + IV * 2);
        net.run(Duration::from_secs(10));
        assert_eq!(net.active(), vec![a(2)], "and only it");
        assert_eq!(net.nodes[&a(3)].role().clone(), {
            let Role::Passive { last_ack, next_keepalive, .. } = net.nodes[&a(3)].role().clone() else { panic!() };
            Role::Passive { active: a(2), passives: vec![a(3)], last_ack, next_keepalive }
        });
    }

    #[test]
    fn a_graceful_stop_hands_over_before_it_stops_serving() {
        let mut net = Net::new();
        let all = [1, 2, 3];
        for n in all {
            net.start(n, &all);
            net.run(TO * 2);
        }
        // Drain events so far.
        for p in net.nodes.values_mut() {
            while p.poll_event().is_some() {}
        }
        net.nodes.get_mut(&a(1)).unwrap().stop(net.now);
        // Handed over: the new one serves before the old one stops.
        net.deliver();
        assert_eq!(net.nodes.get_mut(&a(2)).unwrap().poll_event(), Some(PeerEvent::Serve(true)));
        assert_eq!(net.nodes.get_mut(&a(1)).unwrap().poll_event(), Some(PeerEvent::Serve(false)));
        assert!(net.nodes[&a(1)].is_stopped());
        net.down.push(a(1));
        net.run(Duration::from_secs(10));
        assert_eq!(net.active(), vec![a(2)]);
    }

    #[test]
    fn two_actives_meeting_leave_one_and_keepalives_are_never_answered_with_keepalives() {
        let mut net = Net::new();
        let all = [1, 2];
        // Both start while cut off from each other.
        net.cut = true;
        net.start(1, &all);
        net.start(2, &all);
        net.run(TO * 2);
        net.cut = false;
        assert_eq!(net.active().len(), 2);
        // The split heals: the next Active announcement settles it. Here the
        // higher one learns of the lower one when it hears from it.
        net.nodes.get_mut(&a(1)).unwrap().outbox.push_back((a(2), PeerMsg::Active));
        net.run(Duration::from_secs(10));
        assert_eq!(net.active(), vec![a(1)]);
        for (from, to, m) in &net.sent {
            if matches!(m, PeerMsg::KeepAlive { .. }) {
                let answered_with_keepalive =
                    net.sent.iter().any(|(f, t, m2)| f == to && t == from && matches!(m2, PeerMsg::KeepAlive { .. }));
                assert!(!answered_with_keepalive, "{from} and {to} exchanged keep-alives");
            }
        }
    }

    #[test]
    fn strangers_are_ignored_and_the_codec_refuses_forgeries() {
        let mut p = Peer::start(a(1), vec![a(2)], IV, TO, Instant::now());
        while p.poll_transmit().is_some() {}
        p.handle(Instant::now(), a(9), PeerMsg::Activate { passives: vec![] });
        assert!(matches!(p.role(), Role::Starting { .. }), "only configured peers are heard");
        let env = Envelope { boot: 1, seq: 1, time_ms: 1 };
        for m in [
            PeerMsg::Join,
            PeerMsg::JoinAck { passives: vec![a(2), "[::1]:9".parse().unwrap()] },
            PeerMsg::Leave,
            PeerMsg::Activate { passives: vec![] },
            PeerMsg::ActivateAck,
            PeerMsg::KeepAlive { seq: 4 },
            PeerMsg::KeepAliveAck { seq: 4, passives: vec![a(3)] },
            PeerMsg::Active,
        ] {
            let bytes = m.encode(env, Some(b"k"));
            assert_eq!(PeerMsg::decode(&bytes, Some(b"k")), Ok((m.clone(), env)));
            assert_eq!(PeerMsg::decode(&bytes, Some(b"other")), Err(EnvelopeError::Forged));
            assert_eq!(PeerMsg::decode(&m.encode(env, None), Some(b"k")), Err(EnvelopeError::Untagged));
            // An SRP request is never mistaken for a peer message.
            assert!(PeerMsg::decode(b"\x04SALES\x00", None).is_err());
        }
    }
}
