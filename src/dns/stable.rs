//! The static half of the fast path: one pre-encoded response per static
//! name and type of every zone (and each apex SOA, whose serial is patched
//! in when answering). Rebuilt only when a zone's own records change.
//!
//! Memory is what bounds it in a zone of a million names, so each entry is
//! its response alone: the key a query is looked up by (lower-cased name
//! and type) is the response's own question, and the table holds nothing
//! but the responses. Simple answers (a set of data without names, at a
//! name with no CNAME and no zone cut above it) are written directly;
//! everything else is answered by the slow path's lookup and encoded as it
//! would send it, which a test holds the direct writing to.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, RecordType};

use super::answer::Turn;
use super::encode::{OPT_LEN, SerialPatch, Shape, encode, has_soa, name_key, opt_last, serial_offset};
use super::lookup::{delegation, lookup_turn};
use super::view::{ZoneView, Zones};
use super::wire::UDP_PAYLOAD;
use crate::zone::{Node, RrSet};

/// Static entries per snapshot, to bound memory on huge zones.
const MAX_STATIC: usize = 1_000_000;

/// One static name and type's response: the EDNS shape alone (OPT last,
/// DO clear). The other two are made from it when answering: without
/// EDNS it is the same message up to its OPT record; with DO set it is
/// the same with the DO bit set.
#[derive(Debug, Clone)]
struct Response(Box<[u8]>);

impl Response {
    /// The lower-cased wire name and type of its question: its key.
    fn key(&self) -> &[u8] {
        let b = &self.0;
        let mut at = 12;
        while let Some(&len) = b.get(at)
            && len != 0
        {
            at += 1 + usize::from(len);
        }
        b.get(12..at + 3).unwrap_or_default()
    }
}

impl Borrow<[u8]> for Response {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl Hash for Response {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Response {}

/// A response that carries its zone's serial, and where.
type Patched = (Box<[u8]>, SerialPatch);

/// The static responses, looked up by lower-cased wire name and type.
#[derive(Debug, Clone, Default)]
pub struct StaticTable {
    responses: HashSet<Response, foldhash::fast::RandomState>,
    /// The few that carry their zone's serial (each apex SOA).
    patched: HashMap<Box<[u8]>, Patched>,
}

impl StaticTable {
    /// The response for a name and type, and where its serial goes.
    pub fn get(&self, name_and_type: &[u8]) -> Option<(&[u8], Option<&SerialPatch>)> {
        if let Some(r) = self.responses.get(name_and_type) {
            return Some((&r.0, None));
        }
        self.patched.get(name_and_type).map(|(r, p)| (&r[..], Some(p)))
    }

    pub fn len(&self) -> usize {
        self.responses.len() + self.patched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, key: Box<[u8]>, response: Box<[u8]>, serial: Option<SerialPatch>) {
        match serial {
            Some(p) => {
                self.patched.insert(key, (response, p));
            }
            None => {
                self.responses.replace(Response(response));
            }
        }
    }
}

/// One static name and type's response (the EDNS shape) by the slow path's
/// lookup, or `None` when the fast path leaves it to the slow one: not a
/// positive answer (unless `any`), too big, or a serial it cannot patch.
fn looked_up(
    zones: &Zones,
    name: &LowerName,
    qtype: RecordType,
    any: bool,
    serial: Option<&Arc<AtomicU32>>,
) -> Option<(Box<[u8]>, Option<SerialPatch>)> {
    let answer = lookup_turn(zones, name, qtype, DNSClass::IN, Turn::Lead(0));
    if !any && (answer.rcode != ResponseCode::NoError || answer.answers.is_empty() || !answer.authoritative) {
        return None;
    }
    let response = encode(&answer, name, qtype, Shape::Edns)?;
    if !opt_last(&response) {
        return None;
    }
    let serial = match (has_soa(&answer), serial) {
        (false, _) => None,
        (true, Some(cell)) => Some(SerialPatch { at: serial_offset(&answer, name, qtype, Shape::Edns, &response)?, serial: cell.clone() }),
        (true, None) => return None,
    };
    Some((response, serial))
}

/// Whether a name's answers need more than its own set: a CNAME to follow,
/// a zone cut at or above it (a referral), or data naming other names
/// (compression, glue).
fn simple(zone: &ZoneView, name: &LowerName, node: &Node, set: &RrSet) -> bool {
    use RecordType::*;
    if node.get(CNAME).is_some() || matches!(set.rtype, SOA | NS | CNAME | MX | SRV | PTR | NAPTR | SVCB | HTTPS | ANAME | DNAME | NSEC) {
        return false;
    }
    delegation(zone, name, set.rtype).is_none()
}

/// A simple answer written directly, exactly as `encode` writes the slow
/// path's answer: header (QR, AA; one question, the set, one OPT), the
/// question, each record with its owner pointing at the question, OPT.
fn direct(key: &[u8], set: &RrSet) -> Option<Box<[u8]>> {
    let count = u16::try_from(set.len()).ok().filter(|&c| c > 0)?;
    let mut out = Vec::with_capacity(12 + key.len() + 2 + set.rdatas().map(|r| 12 + r.len()).sum::<usize>() + OPT_LEN);
    out.extend_from_slice(&[0, 0, 0x84, 0, 0, 1]);
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(key);
    out.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
    for rdata in set.rdatas() {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&u16::from(set.rtype).to_be_bytes());
        out.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
        out.extend_from_slice(&set.ttl.to_be_bytes());
        out.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        out.extend_from_slice(rdata);
    }
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    (out.len() <= usize::from(UDP_PAYLOAD)).then(|| out.into_boxed_slice())
}

/// The response for one static name and type, directly when it is simple.
fn entry(zones: &Zones, zone: &ZoneView, name: &LowerName, node: &Node, rtype: RecordType) -> Option<Box<[u8]>> {
    if let Some(set) = node.get(rtype)
        && simple(zone, name, node, set)
    {
        return direct(&name_key(name, rtype), set);
    }
    looked_up(zones, name, rtype, false, None).map(|(r, _)| r)
}

/// The types a static name is pre-encoded for.
fn types(node: &Node) -> impl Iterator<Item = RecordType> + '_ {
    let cname = node.get(RecordType::CNAME).is_some();
    node.rrsets
        .iter()
        .map(|s| s.rtype)
        .filter(|t| *t != RecordType::SOA)
        .chain(cname.then_some([RecordType::A, RecordType::AAAA]).into_iter().flatten())
}

/// Zones with fewer names than this are encoded on one thread.
const PARALLEL_FROM: usize = 20_000;

/// Pre-encodes every static name and type the zones hold (positive answers
/// without a serial only), and each apex SOA with its zone's serial cell.
/// A large zone's names are encoded on every core, in slices of its names.
pub fn build_stable(zones: &Zones, serials: &HashMap<LowerName, Arc<AtomicU32>>) -> StaticTable {
    let mut table = StaticTable::default();
    let total: usize = zones.values().map(|z| z.data.nodes.len()).sum();
    table.responses.reserve(total.min(MAX_STATIC));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    for zone in zones.values() {
        let origin = &zone.data.lower_origin;
        if let Some((r, serial)) = looked_up(zones, origin, RecordType::SOA, true, serials.get(origin)) {
            table.insert(name_key(origin, RecordType::SOA), r, serial);
        }
        let names = zone.data.nodes.len();
        let slices = if names < PARALLEL_FROM { 1 } else { cores };
        let each = names.div_ceil(slices.max(1));
        let encoded: Vec<Vec<Box<[u8]>>> = std::thread::scope(|s| {
            let workers: Vec<_> =
                (0..slices).map(|i| s.spawn(move || encode_slice(zones, zone, i * each..((i + 1) * each).min(names)))).collect();
            workers.into_iter().map(|w| w.join().unwrap_or_default()).collect()
        });
        for r in encoded.into_iter().flatten() {
            if table.len() >= MAX_STATIC {
                break;
            }
            table.responses.replace(Response(r));
        }
    }
    table.responses.shrink_to_fit();
    table
}

/// The responses of the static names at positions `range` of a zone's names.
fn encode_slice(zones: &Zones, zone: &ZoneView, range: std::ops::Range<usize>) -> Vec<Box<[u8]>> {
    let mut out = Vec::with_capacity(range.len());
    for i in range {
        let Some((name, node)) = zone.data.nodes.get_index(i) else { break };
        if zone.pools.contains_key(name) || name.is_wildcard() {
            continue;
        }
        out.extend(types(node).filter_map(|t| entry(zones, zone, name, node, t)));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::zone::ZoneFile;
    use hickory_proto::rr::Name;

    /// Every response written directly is byte for byte what the slow
    /// path's lookup gives, and the rest fall back to it.
    #[test]
    fn direct_responses_are_the_slow_paths() {
        let text = "\
$TTL 300
@ IN SOA ns1 hostmaster ( 1 3600 600 86400 30 )
  IN NS ns1
  IN TXT \"apex\"
ns1 IN A 127.0.0.1
many 60 IN A 10.0.0.1
many 60 IN A 10.0.0.2
many IN AAAA 2001:db8::1
Mixed IN A 10.0.0.3
txt IN TXT \"one\" \"two\"
txt IN TXT \"three\"
alias IN CNAME many
mail IN MX 10 ns1
sub IN NS ns.elsewhere.
a.sub IN A 10.9.9.9
deep.er.name IN A 10.0.0.4
big IN TXT \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"
";
        let file = ZoneFile::parse(Path::new("example.zone"), Name::from_ascii("example.").unwrap(), text.into()).unwrap();
        let origin = file.data.lower_origin.clone();
        let view = Arc::new(ZoneView::new(file.data.clone(), 1, HashMap::new()));
        let zones: Zones = [(origin, view.clone())].into_iter().collect();
        let mut direct_count = 0;
        for (name, node) in &view.data.nodes {
            for t in types(node) {
                let slow = looked_up(&zones, name, t, false, None).map(|(r, _)| r);
                if let Some(set) = node.get(t)
                    && simple(&view, name, node, set)
                {
                    direct_count += 1;
                    assert_eq!(direct(&name_key(name, t), set), slow, "{name} {t}");
                }
                assert_eq!(entry(&zones, &view, name, node, t), slow, "{name} {t}");
            }
        }
        assert!(direct_count >= 7, "the simple sets are written directly: {direct_count}");
        let table = build_stable(&zones, &HashMap::new());
        let key = name_key(&LowerName::from(Name::from_ascii("mixed.example.").unwrap()), RecordType::A);
        let (response, serial) = table.get(&key).expect("a static name");
        assert!(serial.is_none());
        assert_eq!(&response[12..12 + key.len()], &key[..], "the key is the response's question");
        let referral = name_key(&LowerName::from(Name::from_ascii("a.sub.example.").unwrap()), RecordType::A);
        assert!(table.get(&referral).is_none(), "below a zone cut is the slow path's");
    }
}
