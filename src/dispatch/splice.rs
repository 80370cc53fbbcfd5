//! L7 (content-based) dispatching as a pure state machine: the dispatcher
//! completes the client's TCP handshake itself, in application space,
//! reads the HTTP request line, picks a server class by path prefix, opens
//! a connection to a server of that class from its own address, and from
//! then on relays the segments of the two connections with layer 3
//! switching: addresses, ports and sequence numbers rewritten, checksums
//! recomputed.
//!
//! Sequence numbers: the connection to the server starts at the client's
//! initial sequence number, so the client's numbers pass unchanged; the
//! server's are shifted by the difference between its initial number and
//! ours. Both handshakes offer only an MSS (no window scaling, SACK or
//! timestamps), so windows and options need no translation.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::frame::{self, ACK, FIN, PROTO_TCP, RST, SYN};

const PSH: u8 = 0x08;
/// The most a request line may take before it is refused.
const MAX_REQUEST_LINE: usize = 8192;
const MSS: u16 = 1460;
const WINDOW: u16 = 65_535;
/// Local ports for connections to servers.
pub const FIRST_PORT: u16 = 20_000;
pub const LAST_PORT: u16 = 60_000;

/// A TCP segment's fields, read from an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
}

impl Segment {
    /// Reads a segment from an IPv4 packet (no Ethernet header).
    pub fn parse(ip: &[u8]) -> Option<Self> {
        let t = frame::parse_tcp4(ip, 0).ok()?;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let tcp = &ip[t.tcp..total];
        let off = usize::from(tcp[12] >> 4) * 4;
        Some(Self {
            src: t.src,
            dst: t.dst,
            sport: t.sport,
            dport: t.dport,
            seq: u32::from_be_bytes(tcp[4..8].try_into().ok()?),
            ack: u32::from_be_bytes(tcp[8..12].try_into().ok()?),
            flags: tcp[13],
            window: u16::from_be_bytes([tcp[14], tcp[15]]),
            payload: tcp[off..].to_vec(),
        })
    }

    /// The IPv4 packet for this segment, with both checksums; SYNs carry
    /// an MSS option.
    pub fn encode(&self) -> Vec<u8> {
        let opts: &[u8] = if self.flags & SYN != 0 { &[2, 4, (MSS >> 8) as u8, MSS as u8] } else { &[] };
        let tcp_len = 20 + opts.len() + self.payload.len();
        let total = 20 + tcp_len;
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        let c = frame::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&self.sport.to_be_bytes());
        p.extend_from_slice(&self.dport.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ack.to_be_bytes());
        p.push((((20 + opts.len()) / 4) << 4) as u8);
        p.push(self.flags);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(opts);
        p.extend_from_slice(&self.payload);
        let seg = frame::parse_tcp4(&p, 0).expect("just built");
        let c = frame::tcp_checksum(&p, &seg);
        p[seg.tcp + 16..seg.tcp + 18].copy_from_slice(&c.to_be_bytes());
        p
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Our SYN-ACK is out; waiting for the request.
    Accepted {
        iss: u32,
        irs: u32,
        request: Vec<u8>,
    },
    /// Connecting to the server; the request waits.
    Connecting {
        iss: u32,
        irs: u32,
        request: Vec<u8>,
        server: Ipv4Addr,
        lport: u16,
    },
    Spliced {
        server: Ipv4Addr,
        lport: u16,
        delta: u32,
    },
}

#[derive(Debug, Clone)]
struct Conn {
    state: State,
    last: Instant,
    fins: u8,
}

/// Where a request goes: the first route whose prefix starts its path,
/// else the default class.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub class: usize,
}

pub struct Splicer {
    vip: Ipv4Addr,
    port: u16,
    /// Our address towards the servers (not the kernel's: a floating
    /// address only this dispatcher answers ARP for).
    local: Ipv4Addr,
    routes: Vec<Route>,
    default_class: usize,
    /// Per class: the servers in the policy's order, and whether to
    /// rotate through them rather than take the first.
    servers: Vec<(Vec<Ipv4Addr>, bool)>,
    next: usize,
    conns: HashMap<(Ipv4Addr, u16), Conn>,
    by_port: HashMap<u16, (Ipv4Addr, u16)>,
    next_port: u16,
    /// The secret of initial sequence numbers (RFC 6528).
    secret: std::collections::hash_map::RandomState,
    epoch: Instant,
    /// Connections accepted whose request has not come, oldest first:
    /// what a SYN flood leaves, evicted first when the table is full.
    half_open: std::collections::VecDeque<(Ipv4Addr, u16)>,
    idle: Duration,
    pub refused: u64,
    pub evicted: u64,
}

/// Connections one splicer holds at most.
pub const MAX_CONNS: usize = 65_536;

/// The first line of an HTTP request, once it is complete: its path.
pub fn request_path(buf: &[u8]) -> Option<Result<String, ()>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ());
    Some(line.and_then(|l| {
        let mut parts = l.split(' ');
        let (_method, path, version) = (parts.next().ok_or(())?, parts.next().ok_or(())?, parts.next().ok_or(())?);
        if !version.starts_with("HTTP/") || parts.next().is_some() {
            return Err(());
        }
        Ok(path.to_owned())
    }))
}

impl Splicer {
    pub fn new(
        vip: Ipv4Addr,
        port: u16,
        local: Ipv4Addr,
        routes: Vec<Route>,
        classes: usize,
        idle: Duration,
        (seed, now): (u32, Instant),
    ) -> Self {
        Self {
            vip,
            port,
            local,
            routes,
            default_class: 0,
            servers: vec![(Vec::new(), false); classes.max(1)],
            next: 0,
            conns: HashMap::new(),
            by_port: HashMap::new(),
            // Start somewhere else each run: a new dispatcher after a fail-over
            // should not reuse the ports its predecessor just closed.
            next_port: FIRST_PORT + (seed % u32::from(LAST_PORT - FIRST_PORT)) as u16,
            secret: Default::default(),
            epoch: now,
            half_open: std::collections::VecDeque::new(),
            idle,
            refused: 0,
            evicted: 0,
        }
    }

    pub fn set_servers(&mut self, class: usize, servers: Vec<Ipv4Addr>, rotate: bool) {
        if let Some(s) = self.servers.get_mut(class) {
            *s = (servers, rotate);
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn to_the_vip(&self, seg: &Segment) -> bool {
        seg.dst == self.vip && seg.dport == self.port
    }

    /// Is this segment for us (to the virtual IP's port, or back from a
    /// server to one of our ports)?
    pub fn is_ours(&self, seg: &Segment) -> bool {
        self.to_the_vip(seg) || (seg.dst == self.local && self.by_port.contains_key(&seg.dport))
    }

    /// A segment `is_ours` said is ours, from whichever side it comes.
    pub fn handle(&mut self, seg: Segment, now: Instant) -> Vec<(Vec<u8>, Ipv4Addr)> {
        if self.to_the_vip(&seg) { self.client_segment(seg, now) } else { self.server_segment(seg, now) }
    }

    /// An initial sequence number as RFC 6528 makes them: a keyed hash of
    /// the connection's addresses and ports, secret per process, plus a
    /// clock ticking every 4 microseconds. Nobody off the path can guess it.
    fn iss(&self, client: (Ipv4Addr, u16), now: Instant) -> u32 {
        use std::hash::BuildHasher;
        let f = self.secret.hash_one((client, self.vip, self.port)) as u32;
        let m = (now.saturating_duration_since(self.epoch).as_micros() / 4) as u32;
        f.wrapping_add(m)
    }

    /// Room for one more connection: the oldest accepted one still waiting
    /// for its request goes if the table is full. False if none can.
    fn make_room(&mut self) -> bool {
        while self.conns.len() >= MAX_CONNS {
            let Some(k) = self.half_open.pop_front() else { return false };
            if matches!(self.conns.get(&k).map(|c| &c.state), Some(State::Accepted { request, .. }) if request.is_empty()) {
                self.remove(k);
                self.evicted += 1;
            }
        }
        if self.half_open.len() > 2 * MAX_CONNS {
            let conns = &self.conns;
            self.half_open
                .retain(|k| matches!(conns.get(k).map(|c| &c.state), Some(State::Accepted { request, .. }) if request.is_empty()));
        }
        true
    }

    fn free_port(&mut self) -> Option<u16> {
        for _ in FIRST_PORT..=LAST_PORT {
            let p = self.next_port;
            self.next_port = if p >= LAST_PORT { FIRST_PORT } else { p + 1 };
            if !self.by_port.contains_key(&p) {
                return Some(p);
            }
        }
        None
    }

    fn to_client(&self, client: (Ipv4Addr, u16), seq: u32, ack: u32, flags: u8, payload: Vec<u8>) -> (Vec<u8>, Ipv4Addr) {
        let s = Segment { src: self.vip, dst: client.0, sport: self.port, dport: client.1, seq, ack, flags, window: WINDOW, payload };
        (s.encode(), client.0)
    }

    /// A packet from a client to the virtual IP; returns packets to send.
    pub fn from_client(&mut self, ip: &[u8], now: Instant) -> Vec<(Vec<u8>, Ipv4Addr)> {
        Segment::parse(ip).map(|seg| self.client_segment(seg, now)).unwrap_or_default()
    }

    fn client_segment(&mut self, seg: Segment, now: Instant) -> Vec<(Vec<u8>, Ipv4Addr)> {
        let client = (seg.src, seg.sport);
        let mut out = Vec::new();
        if seg.flags & SYN != 0 && seg.flags & ACK == 0 {
            let iss = match self.conns.get(&client).map(|c| &c.state) {
                Some(State::Accepted { iss, irs, .. }) if *irs == seg.seq => *iss, // a retransmitted SYN
                _ => {
                    self.remove(client);
                    if !self.make_room() {
                        self.refused += 1;
                        return out; // full of connections under way: no SYN-ACK
                    }
                    let iss = self.iss(client, now);
                    self.conns
                        .insert(client, Conn { state: State::Accepted { iss, irs: seg.seq, request: Vec::new() }, last: now, fins: 0 });
                    self.half_open.push_back(client);
                    iss
                }
            };
            out.push(self.to_client(client, iss, seg.seq.wrapping_add(1), SYN | ACK, Vec::new()));
            return out;
        }
        let Some(conn) = self.conns.get_mut(&client) else {
            // Not ours (or forgotten): tell the client, unless it is a RST.
            if seg.flags & RST == 0 {
                out.push(self.to_client(client, seg.ack, seg.seq.wrapping_add(seg.payload.len() as u32), RST | ACK, Vec::new()));
            }
            return out;
        };
        conn.last = now;
        if seg.flags & RST != 0 {
            let state = conn.state.clone();
            if let State::Spliced { server, lport, delta, .. } = state {
                let s = Segment {
                    src: self.local,
                    dst: server,
                    sport: lport,
                    dport: self.port,
                    seq: seg.seq,
                    ack: seg.ack.wrapping_add(delta),
                    flags: seg.flags,
                    window: seg.window,
                    payload: Vec::new(),
                };
                out.push((s.encode(), server));
            }
            self.remove(client);
            return out;
        }
        match &mut conn.state {
            State::Accepted { iss, irs, request } => {
                let expected = irs.wrapping_add(1).wrapping_add(request.len() as u32);
                if !seg.payload.is_empty() && seg.seq == expected {
                    request.extend_from_slice(&seg.payload);
                }
                let (iss, irs) = (*iss, *irs);
                let verdict = match request_path(request) {
                    None if request.len() > MAX_REQUEST_LINE => Some(Err(())),
                    other => other,
                };
                match verdict {
                    None => {}
                    Some(Err(())) => return self.refuse(client, iss, irs),
                    Some(Ok(path)) => return self.connect(client, iss, irs, &path),
                }
            }
            State::Connecting { irs, server, lport, .. } => {
                // The client retransmits while the server answers: send the SYN again.
                let syn = Segment {
                    src: self.local,
                    dst: *server,
                    sport: *lport,
                    dport: self.port,
                    seq: *irs,
                    ack: 0,
                    flags: SYN,
                    window: WINDOW,
                    payload: Vec::new(),
                };
                out.push((syn.encode(), *server));
            }
            State::Spliced { server, lport, delta, .. } => {
                if seg.flags & FIN != 0 {
                    conn.fins += 1;
                }
                let ack = if seg.flags & ACK != 0 { seg.ack.wrapping_add(*delta) } else { 0 };
                let s = Segment {
                    src: self.local,
                    dst: *server,
                    sport: *lport,
                    dport: self.port,
                    seq: seg.seq,
                    ack,
                    flags: seg.flags,
                    window: seg.window,
                    payload: seg.payload,
                };
                out.push((s.encode(), *server));
            }
        }
        out
    }

    /// A packet from a server to one of our ports.
    pub fn from_server(&mut self, ip: &[u8], now: Instant) -> Vec<(Vec<u8>, Ipv4Addr)> {
        Segment::parse(ip).map(|seg| self.server_segment(seg, now)).unwrap_or_default()
    }

    fn server_segment(&mut self, seg: Segment, now: Instant) -> Vec<(Vec<u8>, Ipv4Addr)> {
        let Some(&client) = self.by_port.get(&seg.dport) else { return Vec::new() };
        let Some(conn) = self.conns.get_mut(&client) else { return Vec::new() };
        conn.last = now;
        let mut out = Vec::new();
        match &mut conn.state {
            State::Connecting { iss, irs, request, server, lport } if seg.flags & (SYN | ACK) == SYN | ACK && seg.src == *server => {
                let (iss, irs, server, lport) = (*iss, *irs, *server, *lport);
                let request = std::mem::take(request);
                let delta = seg.seq.wrapping_sub(iss);
                let ack = seg.seq.wrapping_add(1);
                let hello = Segment {
                    src: self.local,
                    dst: server,
                    sport: lport,
                    dport: self.port,
                    seq: irs.wrapping_add(1),
                    ack,
                    flags: ACK,
                    window: WINDOW,
                    payload: Vec::new(),
                };
                out.push((hello.encode(), server));
                let req = Segment {
                    src: self.local,
                    dst: server,
                    sport: lport,
                    dport: self.port,
                    seq: irs.wrapping_add(1),
                    ack,
                    flags: ACK | PSH,
                    window: WINDOW,
                    payload: request,
                };
                out.push((req.encode(), server));
                conn.state = State::Spliced { server, lport, delta };
            }
            State::Connecting { server, lport, .. } if seg.flags & (SYN | RST) == 0 && seg.flags & ACK != 0 => {
                // An ACK for an older connection on the same ports (the
                // server still holds it in TIME_WAIT): reset that one; our
                // SYN goes again when the client retransmits.
                let rst = Segment {
                    src: self.local,
                    dst: *server,
                    sport: *lport,
                    dport: self.port,
                    seq: seg.ack,
                    ack: 0,
                    flags: RST,
                    window: 0,
                    payload: Vec::new(),
                };
                out.push((rst.encode(), *server));
            }
            State::Connecting { .. } if seg.flags & RST != 0 => {
                let Some(c) = self.conns.get(&client) else { return out };
                if let State::Connecting { iss, irs, .. } = c.state {
                    return self.refuse(client, iss, irs);
                }
            }
            State::Spliced { server, delta, .. } if seg.src == *server => {
                if seg.flags & FIN != 0 {
                    conn.fins += 1;
                }
                let rst = seg.flags & RST != 0;
                let d = *delta;
                out.push(self.to_client(client, seg.seq.wrapping_sub(d), seg.ack, seg.flags, seg.payload));
                if rst {
                    self.remove(client);
                }
            }
            _ => {}
        }
        out
    }

    /// The request line is in: pick a server of its class and open a
    /// connection to it, at the client's initial sequence number.
    fn connect(&mut self, client: (Ipv4Addr, u16), iss: u32, irs: u32, path: &str) -> Vec<(Vec<u8>, Ipv4Addr)> {
        let class = self.routes.iter().find(|r| path.starts_with(&r.prefix)).map_or(self.default_class, |r| r.class);
        let (servers, rotate) = &self.servers[class];
        if servers.is_empty() {
            return self.refuse(client, iss, irs);
        }
        let server = if *rotate {
            self.next = self.next.wrapping_add(1);
            servers[self.next % servers.len()]
        } else {
            servers[0]
        };
        let Some(lport) = self.free_port() else { return self.refuse(client, iss, irs) };
        let Some(conn) = self.conns.get_mut(&client) else { return Vec::new() };
        let State::Accepted { request, .. } = &mut conn.state else { return Vec::new() };
        let request = std::mem::take(request);
        conn.state = State::Connecting { iss, irs, request, server, lport };
        self.by_port.insert(lport, client);
        let syn = Segment {
            src: self.local,
            dst: server,
            sport: lport,
            dport: self.port,
            seq: irs,
            ack: 0,
            flags: SYN,
            window: WINDOW,
            payload: Vec::new(),
        };
        vec![(syn.encode(), server)]
    }

    /// Resets a client connection we will not serve.
    fn refuse(&mut self, client: (Ipv4Addr, u16), iss: u32, irs: u32) -> Vec<(Vec<u8>, Ipv4Addr)> {
        self.refused += 1;
        let len = match self.conns.get(&client).map(|c| &c.state) {
            Some(State::Accepted { request, .. } | State::Connecting { request, .. }) => request.len() as u32,
            _ => 0,
        };
        self.remove(client);
        vec![self.to_client(client, iss.wrapping_add(1), irs.wrapping_add(1).wrapping_add(len), RST | ACK, Vec::new())]
    }

    fn remove(&mut self, client: (Ipv4Addr, u16)) {
        if let Some(c) = self.conns.remove(&client)
            && let State::Connecting { lport, .. } | State::Spliced { lport, .. } = c.state
        {
            self.by_port.remove(&lport);
        }
    }

    /// Forgets idle connections, and closed ones a little after both FINs.
    pub fn expire(&mut self, now: Instant) -> usize {
        let idle = self.idle;
        let gone: Vec<(Ipv4Addr, u16)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let quiet = now.saturating_duration_since(c.last);
                quiet >= idle || (c.fins >= 2 && quiet >= Duration::from_secs(5))
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            self.remove(*k);
        }
        gone.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 200);
    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 50);
    const IMG: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 31);
    const WEB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 21);

    fn splicer() -> Splicer {
        let mut s =
            Splicer::new(VIP, 80, ME, vec![Route { prefix: "/images/".into(), class: 1 }], 2, Duration::from_secs(60), (7, Instant::now()));
        s.set_servers(0, vec![WEB], false);
        s.set_servers(1, vec![IMG], true);
        s
    }

    fn seg(from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (src, sport, dst, dport) = (from.0, from.1, to.0, to.1);
        Segment { src, dst, sport, dport, seq, ack, flags, window: 29_200, payload: payload.to_vec() }.encode()
    }

    fn one(out: Vec<(Vec<u8>, Ipv4Addr)>) -> (Segment, Ipv4Addr) {
        assert_eq!(out.len(), 1, "{out:?}");
        let (p, to) = out.into_iter().next().unwrap();
        (Segment::parse(&p).expect("valid checksums"), to)
    }

    #[test]
    fn initial_sequence_numbers_are_keyed_not_counted() {
        let t = Instant::now();
        let syn = |s: &mut Splicer, port: u16| {
            let p = Segment::parse(&seg((CLIENT, port), (VIP, 80), 1000, 0, SYN, b"")).unwrap();
            one(s.handle(p, t)).0.seq
        };
        let (mut a, mut b) = (splicer(), splicer());
        let from_a: Vec<u32> = (40_000..40_004).map(|p| syn(&mut a, p)).collect();
        let from_b: Vec<u32> = (40_000..40_004).map(|p| syn(&mut b, p)).collect();
        // Same connections, same instant: another process's secret gives
        // other numbers, and consecutive ports show no step to follow.
        assert!(from_a.iter().zip(&from_b).all(|(x, y)| x != y), "{from_a:?} {from_b:?}");
        let steps: Vec<u32> = from_a.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(steps.windows(2).any(|w| w[0] != w[1]), "{steps:?}");
    }

    #[test]
    fn a_syn_flood_is_held_to_the_table_and_evicts_only_half_open_connections() {
        let t = Instant::now();
        let mut s = splicer();
        for i in 0..(MAX_CONNS as u32 + 10_000) {
            let src = Ipv4Addr::from(0x0b00_0000 + i);
            let p = Segment::parse(&seg((src, 40_000), (VIP, 80), 1, 0, SYN, b"")).unwrap();
            assert_eq!(s.handle(p, t).len(), 1, "a SYN-ACK for each, room made");
        }
        assert_eq!(s.len(), MAX_CONNS);
        assert_eq!(s.evicted, 10_000);
    }

    /// A whole exchange: handshake with us, the request picks the image
    /// servers, the server's handshake, the request replayed, the reply
    /// relayed with the sequence numbers shifted, and the close.
    #[test]
    fn a_request_is_spliced_to_its_server_class() {
        let t = Instant::now();
        let mut s = splicer();
        let (synack, to) = one(s.from_client(&seg((CLIENT, 1069), (VIP, 80), 1000, 0, SYN, b""), t));
        assert_eq!((to, synack.src, synack.sport, synack.flags, synack.ack), (CLIENT, VIP, 80, SYN | ACK, 1001));
        let iss = synack.seq;
        assert!(s.from_client(&seg((CLIENT, 1069), (VIP, 80), 1001, iss + 1, ACK, b""), t).is_empty());
        // The request line arrives in two pieces.
        assert!(s.from_client(&seg((CLIENT, 1069), (VIP, 80), 1001, iss + 1, ACK | PSH, b"GET /images/a.png"), t).is_empty());
        let req2 = b" HTTP/1.1\r\nHost: x\r\n\r\n";
        let (syn, to) = one(s.from_client(&seg((CLIENT, 1069), (VIP, 80), 1018, iss + 1, ACK | PSH, req2), t));
        assert_eq!((to, syn.src, syn.flags, syn.seq), (IMG, ME, SYN, 1000), "to the image servers, from our address, at the client's ISN");
        let lport = syn.sport;
        let out = s.from_server(&seg((IMG, 80), (ME, lport), 5_000_000, 1001, SYN | ACK, b""), t);
        assert_eq!(out.len(), 2);
        let ack = Segment::parse(&out[0].0).unwrap();
        let replay = Segment::parse(&out[1].0).unwrap();
        assert_eq!((ack.flags, ack.seq, ack.ack), (ACK, 1001, 5_000_001));
        assert_eq!(replay.payload, [&b"GET /images/a.png"[..], req2].concat());
        assert_eq!((replay.seq, replay.ack), (1001, 5_000_001));
        // The server answers: the client sees it from the virtual IP, in our numbering.
        let body = b"HTTP/1.1 200 OK\r\n\r\npng";
        let (reply, to) = one(s.from_server(&seg((IMG, 80), (ME, lport), 5_000_001, 1040, ACK | PSH, body), t));
        assert_eq!((to, reply.src, reply.sport, reply.dport), (CLIENT, VIP, 80, 1069));
        assert_eq!((reply.seq, reply.ack, reply.payload.as_slice()), (iss + 1, 1040, &body[..]));
        // The client's ACK goes to the server in its numbering.
        let (fwd, to) = one(s.from_client(&seg((CLIENT, 1069), (VIP, 80), 1040, iss + 1 + body.len() as u32, ACK, b""), t));
        assert_eq!((to, fwd.src, fwd.sport, fwd.ack), (IMG, ME, lport, 5_000_001 + body.len() as u32));
        // Both close; the connection goes a little later.
        one(s.from_client(&seg((CLIENT, 1069), (VIP, 80), 1040, iss + 1 + body.len() as u32, FIN | ACK, b""), t));
        one(s.from_server(&seg((IMG, 80), (ME, lport), 5_000_001 + body.len() as u32, 1041, FIN | ACK, b""), t));
        assert_eq!(s.expire(t + Duration::from_secs(6)), 1);
        assert!(s.is_empty());
        assert!(!s.is_ours(&Segment::parse(&seg((IMG, 80), (ME, lport), 1, 1, ACK, b"")).unwrap()), "its port is free again");
    }

    #[test]
    fn other_paths_go_to_the_default_class_and_junk_is_refused() {
        let t = Instant::now();
        let mut s = splicer();
        let (synack, _) = one(s.from_client(&seg((CLIENT, 2000), (VIP, 80), 1, 0, SYN, b""), t));
        let (syn, to) =
            one(s.from_client(&seg((CLIENT, 2000), (VIP, 80), 2, synack.seq + 1, ACK | PSH, b"GET /index.html HTTP/1.0\r\n\r\n"), t));
        assert_eq!((to, syn.flags), (WEB, SYN));
        let (synack, _) = one(s.from_client(&seg((CLIENT, 2001), (VIP, 80), 1, 0, SYN, b""), t));
        let (rst, to) = one(s.from_client(&seg((CLIENT, 2001), (VIP, 80), 2, synack.seq + 1, ACK, b"\x16\x03\x01 not http\r\n"), t));
        assert_eq!((to, rst.flags & RST), (CLIENT, RST));
        assert_eq!(s.refused, 1);
        // A segment for a connection we do not know: reset.
        let (rst, _) = one(s.from_client(&seg((CLIENT, 3000), (VIP, 80), 9, 9, ACK, b"x"), t));
        assert_eq!(rst.flags & RST, RST);
    }

    #[test]
    fn an_old_connection_on_the_same_ports_is_reset() {
        let t = Instant::now();
        let mut s = splicer();
        let (synack, _) = one(s.from_client(&seg((CLIENT, 4000), (VIP, 80), 100, 0, SYN, b""), t));
        let (syn, _) = one(s.from_client(&seg((CLIENT, 4000), (VIP, 80), 101, synack.seq + 1, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"), t));
        // The server still has the ports in TIME_WAIT and answers with an ACK.
        let (rst, to) = one(s.from_server(&seg((WEB, 80), (ME, syn.sport), 777, 555, ACK, b""), t));
        assert_eq!((to, rst.flags, rst.seq), (WEB, RST, 555));
        // The client retransmits: the SYN goes again.
        let (again, _) = one(s.from_client(&seg((CLIENT, 4000), (VIP, 80), 101, synack.seq + 1, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"), t));
        assert_eq!((again.flags, again.seq, again.sport), (SYN, 100, syn.sport));
    }

    #[test]
    fn request_lines() {
        assert_eq!(request_path(b"GET / HTTP/1.1\r\n"), Some(Ok("/".into())));
        assert_eq!(request_path(b"GET / HTTP/1.1"), None);
        assert_eq!(request_path(b"GET /\r\n"), Some(Err(())));
        assert_eq!(request_path(b"\xff\xfe\r\n"), Some(Err(())));
    }
}
