//! Which capture thread a frame goes to (pure). The dispatcher's threads
//! form a fanout group, and a classic BPF program run by the kernel on
//! every frame picks the thread: both directions of an L4 connection
//! (client to virtual IP, and in L4/3 server back to client, whose ports
//! are the same pair swapped) go to the same thread, which alone holds
//! that connection. Everything that is not TCP over unfragmented IPv4
//! (ARP above all), and every frame to an L7 address (the relayed
//! connections, whose server side uses other ports), goes to thread 0,
//! which answers ARP, learns MACs and runs the L7 relays. `lane` is the
//! same choice made in user space, for connections restored after a
//! take-over.

use std::net::Ipv4Addr;

/// Mixes the port pair so that consecutive client ports spread evenly
/// (Linux gives `connect` even ports first).
const MIX: u32 = 0x9E37_79B1;

/// The thread, of `lanes`, that owns the connection with this port pair
/// (in either order).
pub fn lane(port_a: u16, port_b: u16, lanes: usize) -> usize {
    (u32::from(port_a ^ port_b).wrapping_mul(MIX) >> 16) as usize % lanes.max(1)
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Classic BPF opcodes (linux/bpf_common.h), and the kernel's special
// load offsets (linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const MSH: u16 = 0xa0;
const MUL: u16 = 0x20;
const RSH: u16 = 0x70;
const XOR: u16 = 0xa0;
const JEQ: u16 = 0x10;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const X: u16 = 0x08;
const A: u16 = 0x10;
/// Loads relative to the network header, wherever the frame starts.
const NET: i32 = -0x10_0000;
/// The frame's protocol (its ethertype), in host order.
const PROTOCOL: i32 = -0x1000;
const ETHERTYPE_IPV4: u32 = 0x0800;
const TCP: u32 = 6;

fn stmt(code: u16, k: i32) -> Insn {
    Insn { code, jt: 0, jf: 0, k: k as u32 }
}

/// The steering program: thread `(A % group size)` with A as `lane`
/// computes it, or 0 (see the module's description). Jumps to the final
/// `ret 0` are patched once its place is known.
pub fn program(l7: &[Ipv4Addr]) -> Vec<Insn> {
    // (index, is the jump taken when true) of each jump to `ret 0`
    let mut to_zero: Vec<(usize, bool)> = Vec::new();
    let mut p = vec![stmt(LD | H | ABS, PROTOCOL)];
    to_zero.push((p.len(), false));
    p.push(Insn { code: JMP | JEQ | K, jt: 0, jf: 0, k: ETHERTYPE_IPV4 });
    p.push(stmt(LD | B | ABS, NET + 9));
    to_zero.push((p.len(), false));
    p.push(Insn { code: JMP | JEQ | K, jt: 0, jf: 0, k: TCP });
    p.push(stmt(LD | H | ABS, NET + 6));
    to_zero.push((p.len(), true));
    p.push(Insn { code: JMP | JSET | K, jt: 0, jf: 0, k: 0x1FFF });
    if !l7.is_empty() {
        p.push(stmt(LD | W | ABS, NET + 16));
        for ip in l7 {
            to_zero.push((p.len(), true));
            p.push(Insn { code: JMP | JEQ | K, jt: 0, jf: 0, k: u32::from(*ip) });
        }
    }
    p.push(stmt(LDX | B | MSH, NET));
    p.push(stmt(LD | H | IND, NET));
    p.push(stmt(ST, 0));
    p.push(stmt(LD | H | IND, NET + 2));
    p.push(stmt(LDX | W | MEM, 0));
    p.push(stmt(ALU | XOR | X, 0));
    p.push(stmt(ALU | MUL | K, MIX as i32));
    p.push(stmt(ALU | RSH | K, 16));
    p.push(stmt(RET | A, 0));
    let zero = p.len();
    p.push(stmt(RET | K, 0));
    for (at, when_true) in to_zero {
        let skip = (zero - at - 1) as u8;
        if when_true {
            p[at].jt = skip;
        } else {
            p[at].jf = skip;
        }
    }
    p
}

/// The program in the kernel's layout.
pub fn to_filters(p: &[Insn]) -> Vec<libc::sock_filter> {
    p.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect()
}

#[cfg(test)]
mod tests {
    use super::super::frame::tests::frame;
    use super::super::frame::{ETH_HEADER, SYN};
    use super::*;

    /// Runs a program the way the kernel does on a received Ethernet frame
    /// (the instructions `program` uses; a load past the end returns 0).
    fn run(p: &[Insn], f: &[u8]) -> u32 {
        let load = |at: i64, size: usize| -> Option<u32> {
            let at = if at == i64::from(PROTOCOL) {
                12
            } else if at >= i64::from(NET) && at < i64::from(NET) + 0x1000 {
                ETH_HEADER as i64 + (at - i64::from(NET))
            } else {
                return None;
            };
            let b = f.get(at as usize..at as usize + size)?;
            Some(b.iter().fold(0u32, |v, x| v << 8 | u32::from(*x)))
        };
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0;
        loop {
            let i = p[pc];
            let k = i.k as i32 as i64;
            pc += 1;
            match i.code {
                c if c == LD | H | ABS => a = load(k, 2).unwrap_or_else(|| panic!("load at {k}")),
                c if c == LD | B | ABS => a = load(k, 1).unwrap_or_else(|| panic!("load at {k}")),
                c if c == LD | W | ABS => a = load(k, 4).unwrap_or_else(|| panic!("load at {k}")),
                c if c == LD | H | IND => match load(i64::from(x) + k, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == LDX | B | MSH => x = 4 * (load(k, 1).unwrap() & 0xF),
                c if c == ST => m[i.k as usize] = a,
                c if c == LDX | W | MEM => x = m[i.k as usize],
                c if c == ALU | XOR | X => a ^= x,
                c if c == ALU | MUL | K => a = a.wrapping_mul(i.k),
                c if c == ALU | RSH | K => a >>= i.k,
                c if c == JMP | JEQ | K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                c if c == JMP | JSET | K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                c if c == RET | A => return a,
                c if c == RET | K => return i.k,
                c => panic!("opcode {c:#x} not modelled"),
            }
        }
    }

    const VIP: [u8; 4] = [10, 0, 0, 200];
    const CLIENT: [u8; 4] = [10, 0, 1, 50];
    const SERVER: [u8; 4] = [10, 0, 0, 21];

    #[test]
    fn both_directions_of_a_connection_go_to_the_thread_lane_names() {
        let p = program(&[]);
        for lanes in [2usize, 3, 4, 8] {
            let mut used = vec![0; lanes];
            for port in 32768..33768u16 {
                let inbound = frame((CLIENT, port), (VIP, 80), SYN, b"");
                let back = frame((SERVER, 80), (CLIENT, port), SYN, b"");
                let l = lane(port, 80, lanes);
                assert_eq!(run(&p, &inbound) as usize % lanes, l, "port {port}");
                assert_eq!(run(&p, &back) as usize % lanes, l, "port {port}, reply");
                used[l] += 1;
            }
            // Consecutive (and even-only) client ports spread over every thread.
            assert!(used.iter().all(|&n| n > 1000 / lanes / 2), "{lanes} lanes: {used:?}");
            let even: Vec<usize> = (0..500u16).map(|i| lane(32768 + 2 * i, 443, lanes)).collect();
            assert!((0..lanes).all(|l| even.iter().filter(|&&e| e == l).count() > 500 / lanes / 2), "{lanes} lanes, even ports");
        }
    }

    #[test]
    fn arp_fragments_other_protocols_and_l7_addresses_go_to_thread_0() {
        let l7 = [Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 0, 1)];
        let p = program(&l7);
        let mut arp = frame((CLIENT, 1), (VIP, 2), SYN, b"");
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&p, &arp), 0);
        let mut udp = frame((CLIENT, 40001), (VIP, 80), SYN, b"");
        udp[ETH_HEADER + 9] = 17;
        assert_eq!(run(&p, &udp), 0);
        let mut later_fragment = frame((CLIENT, 40001), (VIP, 80), SYN, b"");
        later_fragment[ETH_HEADER + 6..ETH_HEADER + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(run(&p, &later_fragment), 0);
        for port in 40000..40100 {
            assert_eq!(run(&p, &frame((CLIENT, port), ([10, 0, 0, 7], 80), SYN, b"")), 0);
            assert_eq!(run(&p, &frame((SERVER, 80), ([10, 0, 0, 1], port), SYN, b"")), 0);
            let l4 = run(&p, &frame((CLIENT, port), (VIP, 80), SYN, b""));
            assert_eq!(l4 as usize % 4, lane(port, 80, 4));
        }
        // Options in the IP header move the ports; the program follows.
        let mut f = frame((CLIENT, 40007), (VIP, 80), SYN, b"");
        f[ETH_HEADER] = 0x46;
        f.splice(ETH_HEADER + 20..ETH_HEADER + 20, [1, 1, 1, 0]);
        assert_eq!(run(&p, &f) as usize % 4, lane(40007, 80, 4));
        // A frame cut short of its ports goes to thread 0.
        let short = &frame((CLIENT, 40007), (VIP, 80), SYN, b"")[..ETH_HEADER + 21];
        assert_eq!(run(&p, short), 0);
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = program(&[Ipv4Addr::new(10, 0, 0, 7); 20]);
        for (i, insn) in p.iter().enumerate() {
            if insn.code & 0x07 == JMP {
                assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < p.len());
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(RET | K));
    }
}
