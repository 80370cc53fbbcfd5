//! Wire-level facts and checks that the fast path and the handler share:
//! the UDP payload vnamed advertises, and the malformations (compressed
//! questions, broken EDNS options) that are answered FORMERR whichever
//! path sees them first.

/// The UDP payload size vnamed advertises and never exceeds (DNS flag day 2020).
pub const UDP_PAYLOAD: u16 = 1232;

/// Whether an OPT record's options are whole (each header and value
/// inside the record) and a COOKIE is 8 or 16-40 bytes (RFC 7873).
pub(super) fn options_ok(mut rdata: &[u8]) -> bool {
    const COOKIE: u16 = 10;
    while !rdata.is_empty() {
        let Some(head) = rdata.get(..4) else { return false };
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        if rdata.len() < 4 + len || (code == COOKIE && !(len == 8 || (16..=40).contains(&len))) {
            return false;
        }
        rdata = &rdata[4 + len..];
    }
    true
}

/// Whether a question's name is compressed or uses a label type other
/// than a plain label. Only the header precedes the first question, so a
/// pointer there can only be malformed, and a response that echoed it
/// would point into its own header; vnamed answers one question, so a
/// pointer in a later one is refused as well.
pub fn question_malformed(msg: &[u8]) -> bool {
    let Some(qd) = msg.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return false };
    let mut pos = 12;
    for _ in 0..qd {
        loop {
            let Some(&len) = msg.get(pos) else { return false };
            if len & 0xc0 != 0 {
                return true;
            }
            pos += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        pos += 4; // type and class
    }
    false
}

/// Whether a request carries an OPT record with malformed options, which
/// RFC 6891 and RFC 7873 answer with FORMERR (hickory would skip them).
/// A message that does not parse this far says no: the decoder decides.
pub fn edns_malformed(msg: &[u8]) -> bool {
    fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
        loop {
            let len = *msg.get(pos)?;
            match len {
                0 => return Some(pos + 1),
                l if l & 0xc0 == 0xc0 => return Some(pos + 2),
                l if l > 63 => return None,
                l => pos += 1 + usize::from(l),
            }
        }
    }
    let count = |i: usize| msg.get(i..i + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let (Some(qd), Some(an), Some(ns), Some(ar)) = (count(4), count(6), count(8), count(10)) else { return false };
    let mut pos = 12;
    for _ in 0..qd {
        let Some(end) = skip_name(msg, pos) else { return false };
        pos = end + 4;
    }
    for n in 0..an + ns + ar {
        let Some(end) = skip_name(msg, pos) else { return false };
        let Some(fixed) = msg.get(end..end + 10) else { return false };
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let Some(rdata) = msg.get(end + 10..end + 10 + rdlen) else { return false };
        if n >= an + ns && fixed[0..2] == [0, 41] && !options_ok(rdata) {
            return true;
        }
        pos = end + 10 + rdlen;
    }
    false
}
