//! Encoding answers as the fast path keeps them: the response to a
//! canonical query (ID 0, RD and CD clear) in one of three EDNS shapes,
//! the key a query is looked up by, and where a response carries its
//! zone's serial. Pure.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, RecordType};

use super::lookup::Answer;
use super::wire::UDP_PAYLOAD;

/// How the query carried EDNS, which decides the shape of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Plain = 0,
    Edns = 1,
    EdnsDo = 2,
}

/// Where a pre-encoded response carries its zone's SOA serial, and the
/// zone's serial now: the serial moves with every answer change, so it is
/// written in when answering instead of re-encoding every response that
/// holds it (the apex SOA, NODATA answers of virtual names).
#[derive(Debug, Clone)]
pub struct SerialPatch {
    pub at: usize,
    pub serial: Arc<AtomicU32>,
}

/// An OPT record as `encode` writes it last: root owner, type, payload,
/// extended RCODE, version, flags, no options.
pub const OPT_LEN: usize = 11;

/// The key of a name and type (the lower-cased wire name, then the type:
/// the key a query parses to, without its shape byte): what the tables
/// keep responses by, each in the EDNS shape, and how the slow path keys a
/// question it answers, so rate limiting counts both paths alike.
pub fn name_key(name: &LowerName, qtype: RecordType) -> Box<[u8]> {
    let name = Name::from(name);
    let mut key = Vec::with_capacity(name.len() + 3);
    for label in name.iter() {
        key.push(label.len() as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    key.push(0);
    key.extend_from_slice(&u16::from(qtype).to_be_bytes());
    key.into_boxed_slice()
}

/// Whether an encoded response ends in its OPT record, alone at its place
/// (root owner, no options): then cutting it off gives the response
/// without EDNS, and setting one bit the response with DO.
pub fn opt_last(response: &[u8]) -> bool {
    let Some(opt) = response.len().checked_sub(OPT_LEN).filter(|&at| at >= 12).map(|at| &response[at..]) else { return false };
    opt[..3] == [0, 0, 41] && opt[9..] == [0, 0] && u16::from_be_bytes([response[10], response[11]]) > 0
}

/// Copies `full` (a response in the EDNS shape, `opt_last`) into `out` in
/// the shape `shape` (a `Shape` as a byte): without the OPT record for a
/// query without EDNS, with DO set for one with it. `None` when it is
/// larger than `max_size` or `out`.
pub fn shaped(full: &[u8], shape: u8, max_size: usize, out: &mut [u8]) -> Option<usize> {
    let plain = shape == Shape::Plain as u8;
    let len = if plain { full.len().checked_sub(OPT_LEN)? } else { full.len() };
    if len > max_size || len > out.len() {
        return None;
    }
    let out = &mut out[..len];
    out.copy_from_slice(&full[..len]);
    if plain {
        let additional = u16::from_be_bytes([out[10], out[11]]).saturating_sub(1);
        out[10..12].copy_from_slice(&additional.to_be_bytes());
    } else if shape == Shape::EdnsDo as u8 {
        out[len - 4] |= 0x80; // DO, in the OPT record's flags
    }
    Some(len)
}

/// Encodes an answer as the slow path would send it to a canonical query
/// (ID 0, RD and CD clear).
pub fn encode(answer: &Answer, name: &LowerName, qtype: RecordType, shape: Shape) -> Option<Box<[u8]>> {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = answer.authoritative;
    m.metadata.response_code = answer.rcode;
    let mut q = Query::query(Name::from(name), qtype);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    m.insert_answers(answer.answers.clone());
    m.insert_authorities(answer.authority.clone());
    m.insert_additionals(answer.additional.clone());
    if shape != Shape::Plain {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        edns.set_version(0);
        edns.set_dnssec_ok(shape == Shape::EdnsDo);
        m.set_edns(edns);
    }
    let bytes = m.to_vec().ok()?;
    (bytes.len() <= UDP_PAYLOAD as usize).then(|| bytes.into_boxed_slice())
}

/// Where the one SOA serial in `answer`'s encoding is: found by encoding it
/// again with every serial bit flipped. `None` when it holds no single SOA.
pub fn serial_offset(answer: &Answer, name: &LowerName, qtype: RecordType, shape: Shape, encoded: &[u8]) -> Option<usize> {
    let mut flipped = answer.clone();
    let mut soas = 0;
    for r in flipped.answers.iter_mut().chain(flipped.authority.iter_mut()) {
        if let RData::SOA(soa) = &mut r.data {
            soa.serial = !soa.serial;
            soas += 1;
        }
    }
    if soas != 1 {
        return None;
    }
    let other = encode(&flipped, name, qtype, shape)?;
    let first = encoded.iter().zip(other.iter()).position(|(a, b)| a != b)?;
    let last = encoded.iter().zip(other.iter()).rposition(|(a, b)| a != b)?;
    (other.len() == encoded.len() && last == first + 3).then_some(first)
}

pub fn has_soa(answer: &Answer) -> bool {
    answer.authority.iter().chain(&answer.answers).any(|r| r.record_type() == RecordType::SOA)
}
