//! The kernel's table of TCP sockets (`/proc/net/tcp`), read for the
//! connections on a local address that still carry packets: what a new
//! dispatcher needs to rebuild its connection map. Pure parsing.

use std::net::{Ipv4Addr, SocketAddrV4};

/// States, in the kernel's numbering, in which packets still flow from the
/// client: ESTABLISHED, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT,
/// LAST_ACK, CLOSING. A server that has written its whole reply and
/// closed is in FIN_WAIT1 while the client still reads (and acknowledges)
/// the rest; leaving it out would strand that download at a take-over.
const LIVE: [u8; 7] = [0x01, 0x03, 0x04, 0x05, 0x08, 0x09, 0x0B];

fn addr(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    // The address is the kernel's 32-bit word, printed in host (little-endian) order.
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_le_bytes()), port))
}

/// Connections that still carry packets, as (local, remote), from the
/// text of `/proc/net/tcp`; lines that do not parse are skipped.
pub fn live(text: &str) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1);
            let local = addr(f.next()?)?;
            let remote = addr(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            LIVE.contains(&state).then_some((local, remote))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: C8004E0A:0050 32004E0A:D6D8 01 00000000:00000000 02:000A7214 00000000     0        0 2 2 0000000000000000 20 4 30 10 -1
   2: broken line
   3: C8004E0A:0050 33004E0A:D6D8 04 0001A000:00000000 01:00000014 00000000     0        0 0 3 0000000000000000 20 4 30 10 -1
   4: C8004E0A:0050 34004E0A:D6D8 06 00000000:00000000 03:00000014 00000000     0        0 0 3 0000000000000000 20 4 30 10 -1
";
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 200), 80);
        assert_eq!(
            live(text),
            vec![
                (vip, SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 50), 55000)),
                (vip, SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 51), 55000)),
            ],
            "established and closing-but-still-sending (FIN_WAIT1) count; LISTEN and TIME_WAIT do not"
        );
    }
}
