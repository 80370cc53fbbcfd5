//! Authoritative lookup (RFC 1034 §4.3.2, RFC 2308, RFC 4592) over a
//! snapshot: pure, no I/O. Gives the rcode, the AA bit and the three record
//! sections; the handler turns that into a wire message.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use super::answer::Turn;
use super::view::{ZoneView, Zones, find_zone};
use crate::zone::Node;

/// Longest CNAME chain followed inside our own zones.
const MAX_CHAIN: usize = 8;

/// What to answer.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Answer {
    fn code(rcode: ResponseCode) -> Self {
        Self { rcode, ..Default::default() }
    }
}

/// Answers one question. `turn` picks the rotation of round-robin pools
/// and the slot of pools drawn by shares.
pub fn lookup(zones: &Zones, qname: &LowerName, qtype: RecordType, qclass: DNSClass, turn: usize) -> Answer {
    lookup_turn(zones, qname, qtype, qclass, Turn::Query(turn))
}

/// `lookup`, with the pool answer to give said exactly.
pub fn lookup_turn(zones: &Zones, qname: &LowerName, qtype: RecordType, qclass: DNSClass, turn: Turn) -> Answer {
    if qclass != DNSClass::IN {
        return Answer::code(ResponseCode::Refused);
    }
    match qtype {
        RecordType::ANY | RecordType::AXFR | RecordType::IXFR => return Answer::code(ResponseCode::NotImp),
        RecordType::OPT | RecordType::TSIG | RecordType::SIG | RecordType::Unknown(128..=254) => {
            return Answer::code(ResponseCode::FormErr);
        }
        _ => {}
    }
    let Some(zone) = find_zone(zones, qname) else {
        return Answer::code(ResponseCode::Refused);
    };
    let mut out = Answer { authoritative: true, ..Default::default() };
    let mut name = qname.clone();
    let mut zone = zone.clone();
    for _ in 0..MAX_CHAIN {
        match step(&zone, &name, qtype, turn, &mut out) {
            Step::Done => return out,
            Step::Follow(target) => {
                let target = LowerName::from(&target);
                match find_zone(zones, &target) {
                    Some(z) => {
                        zone = z.clone();
                        name = target;
                    }
                    // The chain leaves our zones: the resolver follows it.
                    None => return out,
                }
            }
        }
    }
    out
}

enum Step {
    Done,
    Follow(Name),
}

fn step(zone: &ZoneView, qname: &LowerName, qtype: RecordType, turn: Turn, out: &mut Answer) -> Step {
    let data = &zone.data;
    // A delegation between the apex and the name makes this a referral.
    if let Some(cut) = delegation(zone, qname, qtype) {
        let ns = data.nodes[&cut].get(RecordType::NS).expect("delegation has NS");
        if out.answers.is_empty() {
            out.authoritative = false;
        }
        let ns: Vec<Record> = ns.records(&Name::from(&cut)).collect();
        glue(zone, ns.iter(), out);
        out.authority.extend(ns);
        return Step::Done;
    }
    if let Some(pool) = zone.pools.get(qname)
        && matches!(qtype, RecordType::A | RecordType::AAAA)
    {
        if pool.servfail {
            out.rcode = ResponseCode::ServFail;
            out.authoritative = false;
            return Step::Done;
        }
        let aaaa = qtype == RecordType::AAAA;
        if pool.family(aaaa).is_empty() {
            negative(zone, out, ResponseCode::NoError);
        } else {
            out.answers.extend(pool.records(aaaa, turn));
        }
        return Step::Done;
    }
    let node = match data.nodes.get(qname) {
        Some(node) => node,
        None => match wildcard(zone, qname) {
            Some(node) => return answer_node(zone, node, qname, qtype, out),
            None => {
                negative(zone, out, ResponseCode::NXDomain);
                return Step::Done;
            }
        },
    };
    answer_node(zone, node, qname, qtype, out)
}

/// Answers `qname` from a node: its own, or the wildcard that stands for it.
fn answer_node(zone: &ZoneView, node: &Node, qname: &LowerName, qtype: RecordType, out: &mut Answer) -> Step {
    let owner = Name::from(qname);
    if qtype != RecordType::CNAME
        && let Some(cname) = node.get(RecordType::CNAME)
        && let Some(record) = cname.records(&owner).next()
    {
        let target = match &record.data {
            RData::CNAME(c) => c.0.clone(),
            _ => unreachable!("CNAME set holds CNAME data"),
        };
        if out.answers.iter().any(|r| r.name == record.name && r.record_type() == RecordType::CNAME) {
            // A loop: stop here with what we have.
            return Step::Done;
        }
        out.answers.push(record);
        return Step::Follow(target);
    }
    let rtype = if qtype == RecordType::SOA { RecordType::SOA } else { qtype };
    if rtype == RecordType::SOA && node.get(RecordType::SOA).is_some() {
        out.answers.push(zone.soa.clone());
        return Step::Done;
    }
    match node.get(rtype) {
        Some(set) => {
            let records: Vec<Record> = set.records(&owner).collect();
            glue(zone, records.iter(), out);
            out.answers.extend(records);
        }
        None => negative(zone, out, ResponseCode::NoError),
    }
    Step::Done
}

/// The closest zone cut strictly below the apex at or above `qname`.
pub(super) fn delegation(zone: &ZoneView, qname: &LowerName, qtype: RecordType) -> Option<LowerName> {
    let origin = &zone.data.lower_origin;
    let depth = qname.num_labels().saturating_sub(origin.num_labels());
    let mut chain = Vec::with_capacity(depth as usize);
    let mut n = qname.clone();
    while &n != origin && origin.zone_of(&n) {
        chain.push(n.clone());
        n = n.base_name();
    }
    // From the top down: the highest cut wins.
    for name in chain.iter().rev() {
        if let Some(node) = zone.data.nodes.get(name)
            && node.get(RecordType::NS).is_some()
        {
            // DS lives on the parent side of the cut.
            if qtype == RecordType::DS && name == qname {
                return None;
            }
            return Some(name.clone());
        }
    }
    None
}

/// The wildcard node matching a name that does not exist (RFC 4592).
fn wildcard<'a>(zone: &'a ZoneView, qname: &LowerName) -> Option<&'a Node> {
    let nodes = &zone.data.nodes;
    let mut encloser = qname.base_name();
    while !nodes.contains_key(&encloser) {
        if encloser == zone.data.lower_origin || encloser.is_root() {
            break;
        }
        encloser = encloser.base_name();
    }
    let star = Name::from(&encloser).prepend_label("*").ok()?;
    nodes.get(&LowerName::from(star))
}

/// NXDOMAIN or NODATA: the SOA in the authority section with the negative TTL.
fn negative(zone: &ZoneView, out: &mut Answer, rcode: ResponseCode) {
    out.rcode = rcode;
    let mut soa = zone.soa.clone();
    soa.ttl = soa.ttl.min(zone.data.soa.minimum);
    out.authority.push(soa);
}

/// Addresses of the names that NS, MX and SRV records point at, when we hold them.
fn glue<'a>(zone: &ZoneView, records: impl Iterator<Item = &'a Record>, out: &mut Answer) {
    for r in records {
        let target = match &r.data {
            RData::NS(ns) => &ns.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        let target = LowerName::from(target);
        if !zone.data.lower_origin.zone_of(&target) {
            continue;
        }
        if let Some(pool) = zone.pools.get(&target) {
            out.additional.extend(pool.v4.iter().chain(pool.v6.iter()).take(pool.answers).map(|a| pool.record(*a)));
        } else if let Some(node) = zone.data.nodes.get(&target) {
            for t in [RecordType::A, RecordType::AAAA] {
                if let Some(set) = node.get(t) {
                    out.additional.extend(set.records(&Name::from(&target)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::dns::snapshot::{PoolAnswer, Snapshot};
    use crate::zone::ZoneFile;

    const ZONE: &str = "\
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 60
  IN NS ns1
ns1 IN A 127.0.0.1
mail IN MX 10 ns1
alias IN CNAME static
static IN A 192.0.2.1
static IN TXT \"hello\"
out IN CNAME www.elsewhere.test.
loop1 IN CNAME loop2
loop2 IN CNAME loop1
*.wild IN A 192.0.2.7
a.b IN A 192.0.2.8
sub IN NS ns.sub
ns.sub IN A 192.0.2.53
";

    fn snap() -> Snapshot {
        let z = ZoneFile::parse(Path::new("x.zone"), Name::from_ascii("example.").unwrap(), ZONE.into()).unwrap();
        let www = Name::from_ascii("www.example.").unwrap();
        let pool = PoolAnswer::new(www.clone(), 5, vec!["127.0.10.1".parse().unwrap(), "127.0.10.2".parse().unwrap()], 1, true, false);
        let mut pools = HashMap::new();
        pools.insert(LowerName::from(&www), Arc::new(pool));
        let view = ZoneView::new(z.data.clone(), 9, pools);
        let mut s = Snapshot::default();
        s.zones.insert(view.data.lower_origin.clone(), Arc::new(view));
        s
    }

    fn q(s: &Snapshot, name: &str, t: RecordType) -> Answer {
        lookup(&s.zones, &LowerName::from(Name::from_ascii(name).unwrap()), t, DNSClass::IN, 0)
    }

    #[test]
    fn positive_negative_and_refused() {
        let s = snap();
        let a = q(&s, "STATIC.example.", RecordType::A);
        assert_eq!((a.rcode, a.authoritative, a.answers.len()), (ResponseCode::NoError, true, 1));
        let a = q(&s, "static.example.", RecordType::AAAA);
        assert_eq!((a.rcode, a.answers.len(), a.authority[0].record_type()), (ResponseCode::NoError, 0, RecordType::SOA));
        assert_eq!(a.authority[0].ttl, 60, "negative TTL is the SOA minimum");
        let a = q(&s, "nope.example.", RecordType::A);
        assert_eq!((a.rcode, a.authority.len()), (ResponseCode::NXDomain, 1));
        let a = q(&s, "b.example.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError, "empty non-terminal is NODATA");
        assert_eq!(q(&s, "example.org.", RecordType::A).rcode, ResponseCode::Refused);
        assert_eq!(q(&s, "example.", RecordType::ANY).rcode, ResponseCode::NotImp);
        let soa = q(&s, "example.", RecordType::SOA);
        assert!(matches!(&soa.answers[0].data, RData::SOA(x) if x.serial == 9));
    }

    #[test]
    fn cname_wildcard_and_referral() {
        let s = snap();
        let a = q(&s, "alias.example.", RecordType::A);
        assert_eq!(a.answers.len(), 2);
        let a = q(&s, "out.example.", RecordType::A);
        assert_eq!((a.answers.len(), a.rcode), (1, ResponseCode::NoError));
        let a = q(&s, "loop1.example.", RecordType::A);
        assert_eq!(a.answers.len(), 2);
        let a = q(&s, "x.y.wild.example.", RecordType::A);
        assert_eq!(a.answers[0].name, Name::from_ascii("x.y.wild.example.").unwrap());
        let a = q(&s, "host.sub.example.", RecordType::A);
        assert!(!a.authoritative);
        assert_eq!((a.answers.len(), a.authority.len(), a.additional.len()), (0, 1, 1));
        let a = q(&s, "mail.example.", RecordType::MX);
        assert_eq!(a.additional.len(), 1, "MX target address in additional");
    }

    #[test]
    fn pools_answer_and_rotate() {
        let s = snap();
        let name = LowerName::from(Name::from_ascii("www.example.").unwrap());
        let first = lookup(&s.zones, &name, RecordType::A, DNSClass::IN, 0);
        let second = lookup(&s.zones, &name, RecordType::A, DNSClass::IN, 1);
        assert_eq!(first.answers.len(), 1);
        assert_ne!(first.answers[0].data, second.answers[0].data);
        let v6 = lookup(&s.zones, &name, RecordType::AAAA, DNSClass::IN, 0);
        assert_eq!((v6.rcode, v6.answers.len()), (ResponseCode::NoError, 0));
        assert_eq!(lookup(&s.zones, &name, RecordType::A, DNSClass::CH, 0).rcode, ResponseCode::Refused);
    }
}
