//! Wire-level facts and checks that the fast path and the handler share:
//! the UDP payload vnamed advertises, and the malformations (compressed
//! questions, broken EDNS options, trailing bytes, an UPDATE without its
//! zone) that are answered FORMERR whichever path sees them first, and
//! the encoding of the handler's responses.

use hickory_proto::ProtoError;
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::server::ResponseInfo;
use hickory_server::zone_handler::MessageResponse;

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

/// What a walk over a whole message found: where its records end, and
/// whether an OPT record among the additional ones has malformed options.
/// `None` when a record does not fit: the decoder decides.
fn walk(msg: &[u8]) -> Option<(usize, bool)> {
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
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut bad_options = false;
    for n in 0..an + ns + ar {
        let end = skip_name(msg, pos)?;
        let fixed = msg.get(end..end + 10)?;
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata = msg.get(end + 10..end + 10 + rdlen)?;
        bad_options |= n >= an + ns && fixed[0..2] == [0, 41] && !options_ok(rdata);
        pos = end + 10 + rdlen;
    }
    (pos <= msg.len()).then_some((pos, bad_options))
}

/// Whether a request carries an OPT record with malformed options, which
/// RFC 6891 and RFC 7873 answer with FORMERR (hickory would skip them).
/// A message that does not parse this far says no: the decoder decides.
pub fn edns_malformed(msg: &[u8]) -> bool {
    walk(msg).is_some_and(|(_, bad)| bad)
}

/// Whether bytes follow the last record the header counts: a message
/// with junk after it is malformed (FORMERR), not a query to answer.
pub fn trailing_bytes(msg: &[u8]) -> bool {
    walk(msg).is_some_and(|(end, _)| end < msg.len())
}

/// Whether an UPDATE lacks the one zone of type SOA its zone section must
/// hold (RFC 2136 §3.1.1): such a message is FORMERR, and its "question"
/// must not be echoed (a reply whose zone section is not an SOA does not
/// parse as an UPDATE).
pub fn update_without_zone(msg: &[u8]) -> bool {
    const UPDATE: u8 = 5;
    if msg.len() < 12 || (msg[2] >> 3) & 0xf != UPDATE {
        return false;
    }
    if u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return true;
    }
    let mut pos = 12;
    while let Some(&len) = msg.get(pos) {
        match len {
            0 => return msg.get(pos + 1..pos + 3) != Some(&[0, 6]),
            l if l & 0xc0 != 0 => return true,
            l => pos += 1 + usize::from(l),
        }
    }
    true
}

/// Encodes one of the handler's responses to a request whose question
/// section is `question` (as the client wrote it, which the response
/// echoes byte for byte): the names in the records are compressed
/// against the question's name as the fast path's answers are. The
/// response emits the question as raw bytes, which leaves the encoder
/// nothing to point at; so the question is written first, its labels
/// noted, and the response written over it.
pub fn emit<'a, A, N, S, D>(response: MessageResponse<'_, 'a, A, N, S, D>, question: &[u8]) -> Result<(Vec<u8>, ResponseInfo), ProtoError>
where
    A: Iterator<Item = &'a Record> + Send + 'a,
    N: Iterator<Item = &'a Record> + Send + 'a,
    S: Iterator<Item = &'a Record> + Send + 'a,
    D: Iterator<Item = &'a Record> + Send + 'a,
{
    const HEADER: usize = 12;
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    let mut starts = Vec::new();
    let mut pos = 0;
    while let Some(&len) = question.get(pos).filter(|&&l| l != 0 && l & 0xc0 == 0) {
        starts.push(HEADER + pos);
        pos += 1 + usize::from(len);
    }
    if question.get(pos) == Some(&0) && HEADER + pos < 0x3fff {
        encoder.emit_vec(&[0; HEADER])?;
        encoder.emit_vec(question)?;
        for start in starts {
            encoder.store_label_pointer(start, HEADER + pos);
        }
        encoder.set_offset(0);
    }
    let info = response.destructive_emit(&mut encoder)?;
    encoder.trim();
    if bytes.get(HEADER..HEADER + question.len()) != Some(question) {
        return Err(ProtoError::from("a response that does not echo its question"));
    }
    Ok((bytes, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `www.example.test. A` with RD, and `extra` after it.
    fn query(extra: &[u8]) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["www", "example", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q.extend_from_slice(extra);
        q
    }

    #[test]
    fn bytes_after_the_last_record_are_found() {
        assert!(!trailing_bytes(&query(&[])));
        assert!(trailing_bytes(&query(&[0])));
        assert!(trailing_bytes(&query(&[0xab; 4000])));
        // An OPT record the header counts is a record, not junk.
        let mut with_opt = query(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        with_opt[11] = 1;
        assert!(!trailing_bytes(&with_opt) && !edns_malformed(&with_opt));
        with_opt.push(7);
        assert!(trailing_bytes(&with_opt));
        // Cut short: the decoder decides (it will refuse it).
        assert!(!trailing_bytes(&query(&[])[..20]));
    }

    #[test]
    fn an_update_names_one_zone_of_type_soa() {
        let mut update = query(&[]);
        update[2] = 5 << 3;
        assert!(update_without_zone(&update), "type A");
        let n = update.len();
        update[n - 3] = 6;
        assert!(!update_without_zone(&update), "type SOA");
        update[5] = 2;
        assert!(update_without_zone(&update), "two zones");
        update[5] = 0;
        assert!(update_without_zone(&update), "none");
        assert!(!update_without_zone(&query(&[])), "a query is not an update");
    }
}
