//! Encoding answers as the fast path keeps them: the response to a
//! canonical query (ID 0, RD and CD clear) in one of three EDNS shapes,
//! the key a query is looked up by, and where a response carries its
//! zone's serial. Pure.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

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

pub fn key_of(name: &LowerName, qtype: RecordType, shape: Shape) -> Box<[u8]> {
    let mut key = Name::from(name).to_lowercase().to_bytes().unwrap_or_default();
    key.extend_from_slice(&u16::from(qtype).to_be_bytes());
    key.push(shape as u8);
    key.into_boxed_slice()
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
