//! The answer set the DNS hot path reads: every zone's static data plus the
//! current answers of its virtual names and its serial. The updater builds a
//! new snapshot and swaps it in whole; readers never wait for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name, Record};

use crate::zone::{Node, ZoneData, address_records};

/// The current answer for one virtual name.
#[derive(Debug, Clone)]
pub struct PoolAnswer {
    pub name: Name,
    pub ttl: u32,
    /// All addresses in preference order.
    pub addresses: Vec<IpAddr>,
    pub a: Vec<Record>,
    pub aaaa: Vec<Record>,
    /// How many addresses one answer carries.
    pub answers: usize,
    /// Rotate through the addresses query by query (round-robin).
    pub rotate: bool,
    /// No address may be given: answer SERVFAIL for A and AAAA.
    pub servfail: bool,
    /// Responses given for this name; the same counters across answers.
    pub counters: Arc<crate::metrics::PoolCounters>,
    /// The members behind `addresses`, for the SRP responder.
    pub preferred: Arc<[Preferred]>,
}

impl PoolAnswer {
    pub fn new(name: Name, ttl: u32, addresses: Vec<IpAddr>, answers: usize, rotate: bool, servfail: bool) -> Self {
        let (a, aaaa) = address_records(&name, ttl, &addresses);
        Self { name, ttl, addresses, a, aaaa, answers, rotate, servfail, counters: Arc::default(), preferred: Arc::from([]) }
    }
}

/// One zone as served right now.
#[derive(Debug, Clone)]
pub struct ZoneView {
    pub data: Arc<ZoneData>,
    pub serial: u32,
    pub soa: Record,
    pub pools: HashMap<LowerName, Arc<PoolAnswer>>,
}

impl ZoneView {
    /// A view of `data` at `serial` with the given pool answers. Pool names
    /// that the data does not hold yet are made to exist, with their
    /// empty non-terminals, so that they never answer NXDOMAIN.
    pub fn new(mut data: Arc<ZoneData>, serial: u32, pools: HashMap<LowerName, Arc<PoolAnswer>>) -> Self {
        if pools.keys().any(|p| !data.nodes.contains_key(p)) {
            let d = Arc::make_mut(&mut data);
            for name in pools.keys() {
                let mut name = name.clone();
                while d.lower_origin.zone_of(&name) && !d.nodes.contains_key(&name) {
                    d.nodes.insert(name.clone(), Node::default());
                    name = name.base_name();
                }
            }
        }
        let soa = data.soa_record(serial);
        Self { data, serial, soa, pools }
    }
}

/// A member's state as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    pub id: Arc<str>,
    /// In service now.
    pub up: bool,
    /// In the answer served now.
    pub in_answer: bool,
}

/// Every zone served.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Each pool's members, by pool name.
    pub health: Arc<HashMap<String, Arc<[MemberHealth]>>>,
    pub zones: HashMap<LowerName, Arc<ZoneView>>,
    /// Each pool's members in the policy's order, by pool name (lower case,
    /// no final dot): what the SRP responder serves instances from.
    pub preferred: Arc<HashMap<String, Arc<[Preferred]>>>,
    /// Pre-encoded responses for the UDP fast path.
    pub fast: super::fast::FastTable,
}

/// A member in its pool's current preference.
#[derive(Debug, Clone, PartialEq)]
pub struct Preferred {
    pub id: String,
    pub address: IpAddr,
    /// The member's reported `tcp_port` metric, when it has one.
    pub tcp_port: Option<u16>,
}

impl Snapshot {
    /// The zone holding `name`: the one with the longest matching origin.
    pub fn find_zone(&self, name: &LowerName) -> Option<&Arc<ZoneView>> {
        let mut n = name.clone();
        loop {
            if let Some(z) = self.zones.get(&n) {
                return Some(z);
            }
            if n.is_root() {
                return None;
            }
            n = n.base_name();
        }
    }
}

/// Every record a zone serves, in transfer order: SOA, the static records
/// (pool names carrying their current answers instead of the file's), SOA.
pub fn zone_records(zone: &ZoneView) -> Vec<Record> {
    use hickory_proto::rr::RecordType;
    let mut records: Vec<Record> = Vec::with_capacity(zone.data.record_count + 2);
    records.push(zone.soa.clone());
    for r in zone.data.records_sorted() {
        let managed = matches!(r.record_type(), RecordType::A | RecordType::AAAA) && zone.pools.contains_key(&LowerName::from(&r.name));
        if !managed {
            records.push(r.clone());
        }
    }
    let mut pools: Vec<&Arc<PoolAnswer>> = zone.pools.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for pool in pools {
        if !pool.servfail {
            records.extend(pool.a.iter().chain(pool.aaaa.iter()).cloned());
        }
    }
    records.push(zone.soa.clone());
    records
}
