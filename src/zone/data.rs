//! The records of one zone as the authority holds them: one entry per owner
//! name, and each RRset's data in uncompressed wire form (an address takes
//! its 4 or 16 bytes and a length, where a decoded record takes 272). Sets
//! are decoded into records only when a slow-path answer or a transfer
//! needs them; what cannot be decoded again is refused when it is stored.

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncodable, BinEncoder, NameEncoding, Restrict};
use indexmap::IndexMap;

/// Owner names to their nodes. An index map: its entries are one vector
/// (no power-of-two table of whole entries, which at a million names is
/// mostly empty) and its table holds only their positions.
pub type Nodes = IndexMap<LowerName, Node, foldhash::fast::RandomState>;

/// One RRset at a node: its type, its TTL (one per set, RFC 2181 §5.2) and
/// each record's RDATA after its length (u16, big-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrSet {
    pub rtype: RecordType,
    pub ttl: u32,
    wire: Box<[u8]>,
}

impl RrSet {
    /// An empty set of `rtype` whose records live `ttl` seconds.
    pub fn new(rtype: RecordType, ttl: u32) -> Self {
        Self { rtype, ttl, wire: Box::default() }
    }

    /// How many records the set holds.
    pub fn len(&self) -> usize {
        self.rdatas().count()
    }

    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }

    /// Each record's RDATA in wire form, uncompressed.
    pub fn rdatas(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest: &[u8] = &self.wire;
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (one, tail) = tail.split_at(usize::from(u16::from_be_bytes(*len)));
            rest = tail;
            Some(one)
        })
    }

    /// Each record's data, decoded.
    pub fn data(&self) -> impl Iterator<Item = RData> + '_ {
        // Every stored RDATA decoded once already (`insert` checks it).
        self.rdatas().filter_map(|w| decode(self.rtype, w).ok())
    }

    /// The set's records, owned by `owner`.
    pub fn records<'a>(&'a self, owner: &'a Name) -> impl Iterator<Item = Record> + 'a {
        self.data().map(move |d| Record::from_rdata(owner.clone(), self.ttl, d))
    }

    /// Adds one record's data: `Ok(false)` when the set holds it already
    /// (names inside the data compare without regard to case), an error
    /// when it cannot be stored and read back.
    pub fn insert(&mut self, data: &RData) -> Result<bool, String> {
        let wire = encode(data)?;
        let names = carries_names(self.rtype);
        let same = |w: &[u8]| w == wire.as_slice() || (names && w.len() == wire.len() && decode(self.rtype, w).is_ok_and(|d| d == *data));
        if self.rdatas().any(same) {
            return Ok(false);
        }
        if decode(self.rtype, &wire).is_err() {
            return Err(format!("{} data that vnamed cannot store", self.rtype));
        }
        let len = u16::try_from(wire.len()).map_err(|_| format!("{} data longer than 65,535 bytes", self.rtype))?;
        let mut all = std::mem::take(&mut self.wire).into_vec();
        all.reserve_exact(2 + wire.len());
        all.extend_from_slice(&len.to_be_bytes());
        all.extend_from_slice(&wire);
        self.wire = all.into_boxed_slice();
        Ok(true)
    }
}

/// Whether a type's data holds domain names, which compare without case.
fn carries_names(rtype: RecordType) -> bool {
    use RecordType::*;
    matches!(rtype, NS | CNAME | PTR | MX | SRV | SOA | NAPTR | SVCB | HTTPS | ANAME | NSEC)
}

/// RDATA in uncompressed wire form.
fn encode(data: &RData) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(16);
    let mut encoder = BinEncoder::new(&mut out);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    data.emit(&mut encoder).map_err(|e| format!("cannot encode {} data: {e}", data.record_type()))?;
    Ok(out)
}

fn decode(rtype: RecordType, wire: &[u8]) -> Result<RData, String> {
    let len = u16::try_from(wire.len()).map_err(|_| "too long".to_owned())?;
    RData::read(&mut BinDecoder::new(wire), rtype, Restrict::new(len)).map_err(|e| e.to_string())
}

/// Everything stored at one owner name. An empty node is an empty
/// non-terminal: the name exists (NODATA, not NXDOMAIN) but holds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub rrsets: Vec<RrSet>,
}

impl Node {
    pub fn get(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|s| s.rtype == rtype)
    }
}

/// The records of one zone, indexed for answering.
#[derive(Debug, Clone)]
pub struct ZoneData {
    pub origin: Name,
    pub lower_origin: LowerName,
    pub soa: SOA,
    pub soa_ttl: u32,
    pub nodes: Nodes,
    pub record_count: usize,
}

impl ZoneData {
    /// Every record but the SOA in zone-transfer order (by name).
    pub fn records_sorted(&self) -> Vec<Record> {
        let mut names: Vec<(&LowerName, &Node)> = self.nodes.iter().collect();
        names.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::with_capacity(self.record_count);
        for (name, node) in names {
            let owner = Name::from(name);
            for set in node.rrsets.iter().filter(|s| s.rtype != RecordType::SOA) {
                out.extend(set.records(&owner));
            }
        }
        out
    }

    /// Makes `names` (the zone's virtual names) exist, with the empty
    /// non-terminals above them, so that they never answer NXDOMAIN.
    pub fn add_names<'a>(&mut self, names: impl Iterator<Item = &'a LowerName>) {
        for name in names {
            let mut name = name.clone();
            while self.lower_origin.zone_of(&name) && !self.nodes.contains_key(&name) {
                self.nodes.insert(name.clone(), Node::default());
                name = name.base_name();
            }
        }
    }

    /// The SOA record with the given serial.
    pub fn soa_record(&self, serial: u32) -> Record {
        let mut soa = self.soa.clone();
        soa.serial = serial;
        Record::from_rdata(self.origin.clone(), self.soa_ttl, RData::SOA(soa))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, CNAME, TXT};

    use super::*;

    #[test]
    fn sets_keep_data_in_wire_form_and_give_it_back() {
        let mut set = RrSet::new(RecordType::A, 60);
        assert!(set.insert(&RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))).unwrap());
        assert!(set.insert(&RData::A(A(Ipv4Addr::new(192, 0, 2, 2)))).unwrap());
        assert!(!set.insert(&RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))).unwrap(), "a duplicate is not stored twice");
        assert_eq!(set.len(), 2);
        let owner = Name::from_ascii("www.example.").unwrap();
        let records: Vec<Record> = set.records(&owner).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 2))));
        assert!(records.iter().all(|r| r.ttl == 60 && r.name == owner));

        let mut txt = RrSet::new(RecordType::TXT, 60);
        txt.insert(&RData::TXT(TXT::new(vec!["a b".into(), "c".into()]))).unwrap();
        assert_eq!(txt.data().next(), Some(RData::TXT(TXT::new(vec!["a b".into(), "c".into()]))));
    }

    #[test]
    fn names_inside_data_compare_without_case() {
        let mut set = RrSet::new(RecordType::CNAME, 60);
        set.insert(&RData::CNAME(CNAME(Name::from_ascii("Target.example.").unwrap()))).unwrap();
        assert!(!set.insert(&RData::CNAME(CNAME(Name::from_ascii("target.EXAMPLE.").unwrap()))).unwrap());
        // Stored as written: not lower-cased, not compressed.
        assert_eq!(set.data().next().unwrap().to_string(), "Target.example.");
    }
}
