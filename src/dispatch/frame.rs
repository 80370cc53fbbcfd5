//! Ethernet, ARP, IPv4 and TCP as the dispatcher needs them: checked views
//! over a frame's bytes, rewriting in place, and checksums kept right
//! incrementally (RFC 1624) rather than recomputed. Pure.

use std::net::Ipv4Addr;

pub const ETH_HEADER: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const PROTO_TCP: u8 = 6;

pub type Mac = [u8; 6];

/// Why a frame is not one the dispatcher forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Too short or inconsistent lengths.
    Malformed,
    /// IPv4 with a bad header checksum.
    BadChecksum,
    /// A fragment (more fragments, or an offset).
    Fragment,
    /// IPv4 but not TCP.
    NotTcp,
    /// Not IPv4 (nor ARP).
    NotIpv4,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn ethertype(frame: &[u8]) -> Option<u16> {
    (frame.len() >= ETH_HEADER).then(|| be16(frame, 12))
}

pub fn dst_mac(frame: &[u8]) -> Mac {
    frame[0..6].try_into().expect("6 bytes")
}

pub fn src_mac(frame: &[u8]) -> Mac {
    frame[6..12].try_into().expect("6 bytes")
}

/// L4/2: the frame goes to `to` from `from`; nothing else changes.
pub fn set_macs(frame: &mut [u8], to: Mac, from: Mac) {
    frame[0..6].copy_from_slice(&to);
    frame[6..12].copy_from_slice(&from);
}

/// The ones' complement sum of `data` as 16-bit words, not folded.
fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

/// A full Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// RFC 1624, eqn. 3: the checksum `hc` after 16-bit-aligned bytes `old`
/// become `new` (same length).
pub fn adjust(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    let (o, n) = (fold(sum(old)), fold(sum(new)));
    !fold(u32::from(!hc) + u32::from(!o) + u32::from(n))
}

/// A TCP segment in an IPv4 packet in an Ethernet frame, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp4 {
    /// Where the IPv4 header starts (after the Ethernet header).
    pub ip: usize,
    /// Where the TCP header starts.
    pub tcp: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

impl Tcp4 {
    pub fn syn(&self) -> bool {
        self.flags & SYN != 0 && self.flags & ACK == 0
    }
    pub fn fin(&self) -> bool {
        self.flags & FIN != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & RST != 0
    }
}

/// Parses an IPv4/TCP packet starting at `ip` in `buf` (an Ethernet frame
/// with `ip` = 14, or a bare IP packet with `ip` = 0).
pub fn parse_tcp4(buf: &[u8], ip: usize) -> Result<Tcp4, Refusal> {
    let p = buf.get(ip..).ok_or(Refusal::Malformed)?;
    if p.len() < 20 {
        return Err(Refusal::Malformed);
    }
    if p[0] >> 4 != 4 {
        return Err(Refusal::NotIpv4);
    }
    let ihl = usize::from(p[0] & 0x0F) * 4;
    let total = usize::from(be16(p, 2));
    if ihl < 20 || total < ihl || total > p.len() {
        return Err(Refusal::Malformed);
    }
    if checksum(&p[..ihl]) != 0 {
        return Err(Refusal::BadChecksum);
    }
    let frag = be16(p, 6);
    if frag & 0x2000 != 0 || frag & 0x1FFF != 0 {
        return Err(Refusal::Fragment);
    }
    if p[9] != PROTO_TCP {
        return Err(Refusal::NotTcp);
    }
    let t = &p[ihl..total];
    if t.len() < 20 {
        return Err(Refusal::Malformed);
    }
    let off = usize::from(t[12] >> 4) * 4;
    if off < 20 || off > t.len() {
        return Err(Refusal::Malformed);
    }
    Ok(Tcp4 {
        ip,
        tcp: ip + ihl,
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        sport: be16(t, 0),
        dport: be16(t, 2),
        flags: t[13],
    })
}

/// Rewrites the IPv4 source (`at` = 12) or destination (`at` = 16) address,
/// adjusting the IP header checksum and the TCP checksum (whose
/// pseudo-header holds both addresses).
fn set_addr(buf: &mut [u8], seg: &Tcp4, at: usize, to: Ipv4Addr) {
    let ip = seg.ip;
    let old: [u8; 4] = buf[ip + at..ip + at + 4].try_into().expect("4 bytes");
    let new = to.octets();
    buf[ip + at..ip + at + 4].copy_from_slice(&new);
    let hc = be16(buf, ip + 10);
    buf[ip + 10..ip + 12].copy_from_slice(&adjust(hc, &old, &new).to_be_bytes());
    let tc = be16(buf, seg.tcp + 16);
    buf[seg.tcp + 16..seg.tcp + 18].copy_from_slice(&adjust(tc, &old, &new).to_be_bytes());
}

/// L4/3 inbound: the packet goes to the server.
pub fn set_dst(buf: &mut [u8], seg: &Tcp4, to: Ipv4Addr) {
    set_addr(buf, seg, 16, to)
}

/// L4/3 outbound: the reply seems to come from the virtual IP.
pub fn set_src(buf: &mut [u8], seg: &Tcp4, to: Ipv4Addr) {
    set_addr(buf, seg, 12, to)
}

/// The TCP checksum of the segment, computed in full (for tests and for
/// checking the incremental one).
pub fn tcp_checksum(buf: &[u8], seg: &Tcp4) -> u16 {
    let total = usize::from(be16(buf, seg.ip + 2));
    let t = &buf[seg.tcp..seg.ip + total];
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&buf[seg.ip + 12..seg.ip + 20]);
    pseudo.extend_from_slice(&[0, PROTO_TCP]);
    pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
    !fold(sum(&pseudo) + sum(t))
}

/// An ARP request "who has `target`?", if the frame is one.
pub fn arp_request(frame: &[u8]) -> Option<(Mac, Ipv4Addr, Ipv4Addr)> {
    let a = frame.get(ETH_HEADER..ETH_HEADER + 28)?;
    // Ethernet, IPv4, 6 and 4 byte addresses, request.
    if ethertype(frame)? != ETHERTYPE_ARP || a[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    let sender_mac: Mac = a[8..14].try_into().ok()?;
    let sender_ip = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
    let target_ip = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
    Some((sender_mac, sender_ip, target_ip))
}

fn arp(op: u16, dst: Mac, src: Mac, sender_ip: Ipv4Addr, target_mac: Mac, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// Who sent an ARP packet (request or reply): its MAC and IPv4 address.
pub fn arp_sender(frame: &[u8]) -> Option<(Mac, Ipv4Addr)> {
    let a = frame.get(ETH_HEADER..ETH_HEADER + 28)?;
    if ethertype(frame)? != ETHERTYPE_ARP || a[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    Some((a[8..14].try_into().ok()?, Ipv4Addr::new(a[14], a[15], a[16], a[17])))
}

/// "Who has `target`? Tell `ip`", broadcast.
pub fn arp_who_has(mac: Mac, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp(1, [0xFF; 6], mac, ip, [0; 6], target)
}

/// The ARP reply "`ip` is at `mac`" to a requester.
pub fn arp_reply(mac: Mac, ip: Ipv4Addr, to_mac: Mac, to_ip: Ipv4Addr) -> Vec<u8> {
    arp(2, to_mac, mac, ip, to_mac, to_ip)
}

/// A gratuitous ARP: everyone on the link learns that `ip` is at `mac`.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp(1, [0xFF; 6], mac, ip, [0; 6], ip)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A captured-shape frame: Ethernet II, IPv4 (DF, TTL 64, no options),
    /// TCP with the options a Linux SYN carries, and a payload.
    pub fn frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x00, 0x90, 0x27, 0x8F, 0x07, 0xEB]); // the dispatcher (the seed's example)
        f.extend_from_slice(&[0x00, 0xB2, 0x68, 0xF1, 0x23, 0x5C]); // the previous hop
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let opts: &[u8] = if flags & SYN != 0 { &[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7] } else { &[] };
        let tcp_len = 20 + opts.len() + payload.len();
        let total = 20 + tcp_len;
        let ip = f.len();
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0x12, 0x34, 0x40, 0, 64, PROTO_TCP, 0, 0]);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&dst.0);
        let c = checksum(&f[ip..ip + 20]);
        f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        let tcp = f.len();
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        f.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0]);
        f.push((((20 + opts.len()) / 4) << 4) as u8);
        f.push(flags);
        f.extend_from_slice(&[0xFA, 0xF0, 0, 0, 0, 0]);
        f.extend_from_slice(opts);
        f.extend_from_slice(payload);
        let seg = parse_tcp4(&f, ip).unwrap();
        let c = tcp_checksum(&f, &seg);
        f[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn rewriting_keeps_both_checksums_right() {
        let mut f = frame(([192, 168, 2, 14], 1069), ([192, 168, 6, 2], 80), SYN, b"");
        let seg = parse_tcp4(&f, ETH_HEADER).unwrap();
        assert!(seg.syn() && seg.sport == 1069 && seg.dport == 80);
        assert_eq!(tcp_checksum(&f, &seg), 0, "a valid segment sums to zero");
        // The seed's L4/3 example: the destination becomes 192.168.3.22.
        set_dst(&mut f, &seg, Ipv4Addr::new(192, 168, 3, 22));
        let seg = parse_tcp4(&f, ETH_HEADER).expect("the IP checksum is still right");
        assert_eq!(seg.dst, Ipv4Addr::new(192, 168, 3, 22));
        assert_eq!(tcp_checksum(&f, &seg), 0, "and the TCP one");
        set_src(&mut f, &seg, Ipv4Addr::new(10, 255, 0, 1));
        let seg = parse_tcp4(&f, ETH_HEADER).unwrap();
        assert_eq!(tcp_checksum(&f, &seg), 0);
        let mut odd = frame(([10, 0, 0, 1], 5000), ([10, 0, 0, 2], 80), ACK, b"GET / HTTP/1.0\r\n\r\nx");
        let seg = parse_tcp4(&odd, ETH_HEADER).unwrap();
        set_dst(&mut odd, &seg, Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(tcp_checksum(&odd, &parse_tcp4(&odd, ETH_HEADER).unwrap()), 0, "odd payload, carries");
    }

    #[test]
    fn l4_2_changes_the_macs_and_nothing_else() {
        let f = frame(([192, 168, 2, 14], 1069), ([192, 168, 6, 2], 80), SYN, b"");
        let mut g = f.clone();
        // The seed's example: to the server's 0:60:EA:34:9:6A, from the output NIC 0:C0:95:E0:31:1D.
        set_macs(&mut g, [0x00, 0x60, 0xEA, 0x34, 0x09, 0x6A], [0x00, 0xC0, 0x95, 0xE0, 0x31, 0x1D]);
        assert_eq!(dst_mac(&g), [0x00, 0x60, 0xEA, 0x34, 0x09, 0x6A]);
        assert_eq!(src_mac(&g), [0x00, 0xC0, 0x95, 0xE0, 0x31, 0x1D]);
        assert_eq!(f[12..], g[12..]);
    }

    #[test]
    fn fragments_other_protocols_and_broken_headers_are_refused() {
        let f = frame(([1, 2, 3, 4], 1), ([5, 6, 7, 8], 80), ACK, b"data");
        let mut mf = f.clone();
        mf[ETH_HEADER + 6] |= 0x20;
        let c = checksum(&{
            let mut h = mf[ETH_HEADER..ETH_HEADER + 20].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        mf[ETH_HEADER + 10..ETH_HEADER + 12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse_tcp4(&mf, ETH_HEADER), Err(Refusal::Fragment));
        let mut bad = f.clone();
        bad[ETH_HEADER + 8] = 1; // TTL changed, checksum not
        assert_eq!(parse_tcp4(&bad, ETH_HEADER), Err(Refusal::BadChecksum));
        let mut udp = f.clone();
        udp[ETH_HEADER + 9] = 17;
        udp[ETH_HEADER + 10] = 0;
        udp[ETH_HEADER + 11] = 0;
        let c = checksum(&udp[ETH_HEADER..ETH_HEADER + 20]);
        udp[ETH_HEADER + 10..ETH_HEADER + 12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse_tcp4(&udp, ETH_HEADER), Err(Refusal::NotTcp));
        for n in 0..f.len() - 4 {
            assert!(parse_tcp4(&f[..n], ETH_HEADER).is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn arp_for_the_virtual_ip() {
        let vip = Ipv4Addr::new(10, 9, 0, 100);
        let me = [2, 0, 0, 0, 0, 1];
        let asker = [2, 0, 0, 0, 0, 9];
        let mut req = arp(1, [0xFF; 6], asker, Ipv4Addr::new(10, 9, 0, 9), [0; 6], vip);
        req[6..12].copy_from_slice(&asker);
        assert_eq!(arp_request(&req), Some((asker, Ipv4Addr::new(10, 9, 0, 9), vip)));
        let reply = arp_reply(me, vip, asker, Ipv4Addr::new(10, 9, 0, 9));
        assert_eq!(reply.len(), 42);
        assert_eq!(dst_mac(&reply), asker);
        assert_eq!(&reply[ETH_HEADER + 14..ETH_HEADER + 18], &vip.octets());
        assert_eq!(arp_request(&reply), None, "a reply is not a request");
        let g = gratuitous_arp(me, vip);
        assert_eq!(dst_mac(&g), [0xFF; 6]);
        assert_eq!(arp_request(&g).map(|r| r.2), Some(vip), "a gratuitous ARP asks for its own address");
    }
}
