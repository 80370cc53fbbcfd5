//! The dispatcher's packet logic (pure, time passed in): frames to a
//! virtual IP are given to a server on their connection's SYN, and every
//! later packet of that connection follows it; in L4/2 only the MAC
//! addresses change, in L4/3 the destination (and, for the replies that
//! come back through us, the source) address. ARP requests for a virtual
//! IP are answered with our MAC. Everything else is dropped and counted.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::conntrack::ConnMap;
use super::frame::{self, ETH_HEADER, ETHERTYPE_ARP, ETHERTYPE_IPV4, Mac, Refusal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Layer 4 switching, layer 2 translation: the servers hold the
    /// virtual IP too (on loopback), replies go straight to the client.
    L42,
    /// Layer 4 switching, layer 3 translation: the servers have their own
    /// addresses and route replies through the dispatcher.
    L43,
}

#[derive(Debug, Clone)]
pub struct Vip {
    pub ip: Ipv4Addr,
    /// Ports served; empty: every port.
    pub ports: Vec<u16>,
    pub mode: Mode,
}

/// A server as the policy ranks it; L4/2 needs its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    Malformed,
    BadChecksum,
    Fragment,
    NotTcp,
    NotIpv4,
    /// Not a SYN, and not part of a connection we know.
    UnknownConnection,
    /// A port the virtual IP does not serve.
    Port,
    /// No live server (or, in L4/2, none whose MAC we know).
    NoServer,
    /// A SYN, with the connection map full of established connections.
    Full,
}

impl Dropped {
    pub const ALL: [Dropped; 9] = [
        Dropped::Malformed,
        Dropped::BadChecksum,
        Dropped::Fragment,
        Dropped::NotTcp,
        Dropped::NotIpv4,
        Dropped::UnknownConnection,
        Dropped::Port,
        Dropped::NoServer,
        Dropped::Full,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::BadChecksum => "bad_checksum",
            Dropped::Fragment => "fragment",
            Dropped::NotTcp => "not_tcp",
            Dropped::NotIpv4 => "not_ipv4",
            Dropped::UnknownConnection => "unknown_connection",
            Dropped::Port => "port",
            Dropped::NoServer => "no_server",
            Dropped::Full => "map_full",
        }
    }
}

impl From<Refusal> for Dropped {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Malformed => Dropped::Malformed,
            Refusal::BadChecksum => Dropped::BadChecksum,
            Refusal::Fragment => Dropped::Fragment,
            Refusal::NotTcp => Dropped::NotTcp,
            Refusal::NotIpv4 => Dropped::NotIpv4,
        }
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// L4/2: the frame, rewritten in place, goes out on the link as it is.
    Switch,
    /// L4/3: the IP packet (the frame from byte 14, rewritten in place)
    /// goes out through a raw IP socket to `to`.
    Route {
        to: Ipv4Addr,
    },
    /// Send this frame (an ARP reply).
    Reply(Vec<u8>),
    Drop(Dropped),
    /// Not about a virtual IP of ours: leave it to the kernel.
    Pass,
}

pub struct Engine {
    vips: Vec<Vip>,
    mac: Mac,
    /// Per virtual IP: its servers in the policy's order, and whether to
    /// rotate through them connection by connection rather than always
    /// take the first.
    servers: Vec<(Vec<Server>, bool)>,
    next: usize,
    conns: ConnMap,
    dropped: [u64; Dropped::ALL.len()],
    pub switched: u64,
    /// Addresses we answer ARP for besides the virtual IPs (a gateway).
    arp_also: Vec<Ipv4Addr>,
}

impl Engine {
    pub fn new(vips: Vec<Vip>, mac: Mac, idle: Duration, linger: Duration, now: Instant) -> Self {
        let servers = vec![(Vec::new(), false); vips.len()];
        Self {
            vips,
            mac,
            servers,
            next: 0,
            conns: ConnMap::new(idle, linger, now),
            dropped: [0; Dropped::ALL.len()],
            switched: 0,
            arp_also: Vec::new(),
        }
    }

    /// A virtual IP's servers in the policy's order, as the authority says
    /// now. A server no longer listed gets no new connections; its
    /// established ones are forgotten only when `forget` says it is dead.
    pub fn set_servers(&mut self, vip: usize, servers: Vec<Server>, rotate: bool) {
        if let Some(s) = self.servers.get_mut(vip) {
            *s = (servers, rotate);
        }
    }

    /// Answers ARP for `ip` too.
    pub fn answer_arp_for(&mut self, ip: Ipv4Addr) {
        self.arp_also.push(ip);
    }

    /// A server is dead: its connections go.
    pub fn forget(&mut self, server: Ipv4Addr) -> usize {
        self.conns.drop_server(server)
    }

    /// At most `capacity` connections in the map.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.conns.set_capacity(capacity);
        self
    }

    pub fn conns(&self) -> &ConnMap {
        &self.conns
    }

    /// Connections learnt from the servers after a fail-over (state
    /// reconstruction): each client keeps its server.
    pub fn restore(&mut self, vip: Ipv4Addr, entries: impl IntoIterator<Item = ((Ipv4Addr, u16), Ipv4Addr)>, now: Instant) -> usize {
        let Some(v) = self.vips.iter().position(|x| x.ip == vip) else { return 0 };
        let mut n = 0;
        for (client, server) in entries {
            if self.conns.get(client).is_none() && self.conns.insert(client, server, v as u16, true, now) {
                n += 1;
            }
        }
        n
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        self.conns.expire(now)
    }

    /// One bounded step of expiry (one shard of the connection map).
    pub fn expire_step(&mut self, now: Instant) -> usize {
        self.conns.expire_step(now)
    }

    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why as usize]
    }

    fn drop(&mut self, why: Dropped) -> Verdict {
        self.dropped[why as usize] += 1;
        Verdict::Drop(why)
    }

    fn pick(&mut self, v: usize, mode: Mode) -> Option<Server> {
        let (servers, rotate) = &self.servers[v];
        let usable = |s: &&Server| mode == Mode::L43 || s.mac.is_some();
        let n = servers.iter().filter(usable).count();
        if n == 0 {
            return None;
        }
        let i = if *rotate {
            self.next = self.next.wrapping_add(1);
            self.next % n
        } else {
            0
        };
        servers.iter().filter(usable).nth(i).copied()
    }

    fn server_mac(&self, v: usize, ip: Ipv4Addr) -> Option<Mac> {
        self.servers[v].0.iter().find(|s| s.ip == ip).and_then(|s| s.mac)
    }

    /// A frame that arrived on the client side.
    pub fn inbound(&mut self, f: &mut [u8], now: Instant) -> Verdict {
        match frame::ethertype(f) {
            Some(ETHERTYPE_ARP) => {
                return match frame::arp_request(f) {
                    Some((mac, ip, target)) if self.vips.iter().any(|v| v.ip == target) || self.arp_also.contains(&target) => {
                        Verdict::Reply(frame::arp_reply(self.mac, target, mac, ip))
                    }
                    _ => Verdict::Pass,
                };
            }
            Some(ETHERTYPE_IPV4) => {}
            Some(_) => return Verdict::Pass,
            None => return self.drop(Dropped::Malformed),
        }
        // Only traffic to a virtual IP is ours; look at the destination first.
        let Some(dst) = f.get(ETH_HEADER + 16..ETH_HEADER + 20).map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3])) else {
            return self.drop(Dropped::Malformed);
        };
        let Some(v) = self.vips.iter().position(|x| x.ip == dst) else { return Verdict::Pass };
        let seg = match frame::parse_tcp4(f, ETH_HEADER) {
            Ok(s) => s,
            Err(r) => return self.drop(r.into()),
        };
        let vip = &self.vips[v];
        let mode = vip.mode;
        if !vip.ports.is_empty() && !vip.ports.contains(&seg.dport) {
            return self.drop(Dropped::Port);
        }
        let client = (seg.src, seg.sport);
        let server = if seg.syn() {
            // A SYN makes (or, for a reused port, remakes) the connection.
            match self.conns.touch(client, false, now) {
                Some(c) if c.vip as usize == v && self.servers[v].0.iter().any(|s| s.ip == c.server()) => c.server(),
                _ => {
                    let Some(s) = self.pick(v, mode) else { return self.drop(Dropped::NoServer) };
                    if !self.conns.insert(client, s.ip, v as u16, false, now) {
                        return self.drop(Dropped::Full);
                    }
                    s.ip
                }
            }
        } else {
            match self.conns.touch(client, true, now) {
                Some(c) if c.vip as usize == v => {
                    if seg.rst() {
                        self.conns.remove(client);
                    } else if seg.fin() {
                        self.conns.closing(client, now);
                    }
                    c.server()
                }
                _ => return self.drop(Dropped::UnknownConnection),
            }
        };
        self.switched += 1;
        match mode {
            Mode::L42 => {
                let Some(mac) = self.server_mac(v, server) else { return self.drop(Dropped::NoServer) };
                frame::set_macs(f, mac, self.mac);
                Verdict::Switch
            }
            Mode::L43 => {
                frame::set_dst(f, &seg, server);
                Verdict::Route { to: server }
            }
        }
    }

    /// L4/3: a frame from a server on its way back to a client. If it
    /// belongs to a connection we gave that server, its source becomes
    /// the virtual IP again.
    pub fn outbound(&mut self, f: &mut [u8], now: Instant) -> Verdict {
        if frame::ethertype(f) != Some(ETHERTYPE_IPV4) {
            return Verdict::Pass;
        }
        let Ok(seg) = frame::parse_tcp4(f, ETH_HEADER) else { return Verdict::Pass };
        let Some(c) = self.conns.touch((seg.dst, seg.dport), false, now) else { return Verdict::Pass };
        let Some(vip) = self.vips.get(c.vip as usize) else { return Verdict::Pass };
        if c.server() != seg.src || vip.mode != Mode::L43 {
            return Verdict::Pass;
        }
        if seg.rst() {
            self.conns.remove((seg.dst, seg.dport));
        } else if seg.fin() {
            self.conns.closing((seg.dst, seg.dport), now);
        }
        let vip = vip.ip;
        frame::set_src(f, &seg, vip);
        Verdict::Route { to: seg.dst }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::tests::frame;
    use super::super::frame::{ACK, FIN, RST, SYN, parse_tcp4, tcp_checksum};
    use super::*;

    const VIP: [u8; 4] = [192, 168, 6, 2];
    const CLIENT: [u8; 4] = [192, 168, 2, 14];
    const ME: Mac = [0x00, 0xC0, 0x95, 0xE0, 0x31, 0x1D];
    const S1: Server = Server { ip: Ipv4Addr::new(192, 168, 3, 22), mac: Some([0x00, 0x60, 0xEA, 0x34, 0x09, 0x6A]) };
    const S2: Server = Server { ip: Ipv4Addr::new(192, 168, 3, 23), mac: Some([0x00, 0x60, 0xEA, 0x34, 0x09, 0x6B]) };

    fn engine(mode: Mode, now: Instant) -> Engine {
        let mut e =
            Engine::new(vec![Vip { ip: VIP.into(), ports: vec![80], mode }], ME, Duration::from_secs(300), Duration::from_secs(10), now);
        e.set_servers(0, vec![S1, S2], true);
        e
    }

    #[test]
    fn l4_2_a_connection_sticks_to_its_server_and_new_ones_rotate() {
        let t = Instant::now();
        let mut e = engine(Mode::L42, t);
        let mut syn = frame((CLIENT, 1069), (VIP, 80), SYN, b"");
        let before = syn.clone();
        assert_eq!(e.inbound(&mut syn, t), Verdict::Switch);
        let first = frame::dst_mac(&syn);
        assert_eq!(frame::src_mac(&syn), ME);
        assert_eq!(syn[12..], before[12..], "L4/2 changes nothing above layer 2");
        for flags in [ACK, ACK, ACK | FIN] {
            let mut f = frame((CLIENT, 1069), (VIP, 80), flags, b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(e.inbound(&mut f, t), Verdict::Switch);
            assert_eq!(frame::dst_mac(&f), first, "same connection, same server");
        }
        // The last ACK after our FIN still passes while the entry lingers.
        let mut last = frame((CLIENT, 1069), (VIP, 80), ACK, b"");
        assert_eq!(e.inbound(&mut last, t + Duration::from_secs(1)), Verdict::Switch);
        e.expire(t + Duration::from_secs(20));
        let mut late = frame((CLIENT, 1069), (VIP, 80), ACK, b"");
        assert_eq!(e.inbound(&mut late, t + Duration::from_secs(20)), Verdict::Drop(Dropped::UnknownConnection));
        let mut other = frame((CLIENT, 1070), (VIP, 80), SYN, b"");
        assert_eq!(e.inbound(&mut other, t), Verdict::Switch);
        assert_ne!(frame::dst_mac(&other), first, "round-robin: the next connection, the next server");
    }

    #[test]
    fn l4_3_rewrites_addresses_both_ways_with_valid_checksums() {
        let t = Instant::now();
        let mut e = engine(Mode::L43, t);
        e.set_servers(0, vec![S1], false);
        let mut syn = frame((CLIENT, 1069), (VIP, 80), SYN, b"");
        assert_eq!(e.inbound(&mut syn, t), Verdict::Route { to: S1.ip });
        let seg = parse_tcp4(&syn, ETH_HEADER).expect("valid IP checksum");
        assert_eq!((seg.src, seg.dst), (Ipv4Addr::from(CLIENT), S1.ip), "the client's address stays");
        assert_eq!(tcp_checksum(&syn, &seg), 0);
        // The server's SYN-ACK comes back through us, from the virtual IP.
        let mut reply = frame((S1.ip.octets(), 80), (CLIENT, 1069), SYN | ACK, b"");
        assert_eq!(e.outbound(&mut reply, t), Verdict::Route { to: CLIENT.into() });
        let seg = parse_tcp4(&reply, ETH_HEADER).unwrap();
        assert_eq!(seg.src, Ipv4Addr::from(VIP));
        assert_eq!(tcp_checksum(&reply, &seg), 0);
        // Not ours: another server's traffic, or an unknown client.
        let mut stray = frame((S2.ip.octets(), 80), (CLIENT, 1069), ACK, b"");
        assert_eq!(e.outbound(&mut stray, t), Verdict::Pass);
        let mut rst = frame((CLIENT, 1069), (VIP, 80), RST, b"");
        assert_eq!(e.inbound(&mut rst, t), Verdict::Route { to: S1.ip });
        assert!(e.conns().is_empty(), "a RST ends it at once");
    }

    #[test]
    fn unknown_non_syn_fragments_other_protocols_and_ports_are_dropped_and_counted() {
        let t = Instant::now();
        let mut e = engine(Mode::L42, t);
        let mut ack = frame((CLIENT, 5000), (VIP, 80), ACK, b"x");
        assert_eq!(e.inbound(&mut ack, t), Verdict::Drop(Dropped::UnknownConnection));
        let mut port = frame((CLIENT, 5000), (VIP, 22), SYN, b"");
        assert_eq!(e.inbound(&mut port, t), Verdict::Drop(Dropped::Port));
        let mut frag = frame((CLIENT, 5000), (VIP, 80), SYN, b"");
        frag[ETH_HEADER + 6] |= 0x20;
        frag[ETH_HEADER + 10] = 0;
        frag[ETH_HEADER + 11] = 0;
        let c = frame::checksum(&frag[ETH_HEADER..ETH_HEADER + 20]);
        frag[ETH_HEADER + 10..ETH_HEADER + 12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(e.inbound(&mut frag, t), Verdict::Drop(Dropped::Fragment));
        let mut short = frame((CLIENT, 5000), (VIP, 80), SYN, b"")[..40].to_vec();
        assert_eq!(e.inbound(&mut short, t), Verdict::Drop(Dropped::Malformed));
        let mut elsewhere = frame((CLIENT, 5000), ([10, 0, 0, 1], 80), SYN, b"");
        assert_eq!(e.inbound(&mut elsewhere, t), Verdict::Pass, "not a virtual IP: the kernel's");
        for (why, n) in [(Dropped::UnknownConnection, 1), (Dropped::Port, 1), (Dropped::Fragment, 1), (Dropped::Malformed, 1)] {
            assert_eq!(e.dropped(why), n, "{why:?}");
        }
        e.set_servers(0, vec![], true);
        let mut syn = frame((CLIENT, 5001), (VIP, 80), SYN, b"");
        assert_eq!(e.inbound(&mut syn, t), Verdict::Drop(Dropped::NoServer));
    }

    #[test]
    fn a_dead_server_gets_no_new_connections_and_restored_ones_continue() {
        let t = Instant::now();
        let mut e = engine(Mode::L42, t);
        e.set_servers(0, vec![S2], true);
        for port in 2000..2010 {
            let mut syn = frame((CLIENT, port), (VIP, 80), SYN, b"");
            assert_eq!(e.inbound(&mut syn, t), Verdict::Switch);
            assert_eq!(frame::dst_mac(&syn), S2.mac.unwrap());
        }
        // A new dispatcher learns the servers' connections and carries on.
        let mut fresh = engine(Mode::L42, t);
        let n = fresh.restore(VIP.into(), [((Ipv4Addr::from(CLIENT), 3000), S1.ip)], t);
        assert_eq!(n, 1);
        let mut mid = frame((CLIENT, 3000), (VIP, 80), ACK, b"more data");
        assert_eq!(fresh.inbound(&mut mid, t), Verdict::Switch);
        assert_eq!(frame::dst_mac(&mid), S1.mac.unwrap());
        assert_eq!(fresh.forget(S1.ip), 1);
    }

    #[test]
    fn arp_for_a_virtual_ip_is_answered_with_our_mac() {
        let t = Instant::now();
        let mut e = engine(Mode::L42, t);
        let asker = [2, 0, 0, 0, 0, 9];
        let mut req = frame::gratuitous_arp(asker, Ipv4Addr::new(192, 168, 6, 9));
        // Turn the gratuitous ARP into a request for the virtual IP.
        req[ETH_HEADER + 24..ETH_HEADER + 28].copy_from_slice(&VIP);
        match e.inbound(&mut req, t) {
            Verdict::Reply(r) => {
                assert_eq!(frame::dst_mac(&r), asker);
                assert_eq!(&r[ETH_HEADER + 8..ETH_HEADER + 14], &ME);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn arbitrary_frames_never_panic() {
        let t = Instant::now();
        let mut e = engine(Mode::L43, t);
        let base = frame((CLIENT, 1069), (VIP, 80), SYN, b"abc");
        let mut x = 0x9E3779B97F4A7C15u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut f = base.clone();
            let i = (x as usize) % f.len();
            f[i] ^= (x >> 8) as u8;
            f.truncate(((x >> 16) as usize) % (base.len() + 1));
            let _ = e.inbound(&mut f, t);
            let _ = e.outbound(&mut f, t);
        }
    }
}
