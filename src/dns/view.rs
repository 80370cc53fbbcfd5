//! Each zone as served: its data, serial, SOA and the answers of its
//! virtual names, and the lookups over all of them (the zone holding a
//! name, every record a transfer carries).

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Record};

use super::answer::PoolAnswer;
use crate::zone::ZoneData;

/// Every zone served, by origin.
pub type Zones = HashMap<LowerName, Arc<ZoneView>>;

/// One zone as served right now.
#[derive(Debug, Clone)]
pub struct ZoneView {
    pub data: Arc<ZoneData>,
    pub serial: u32,
    pub soa: Record,
    /// Shared with the catalog (a zone of 100,000 pools is not copied at
    /// every publish).
    pub pools: Arc<HashMap<LowerName, Arc<PoolAnswer>>>,
    /// What recent serials changed, for incremental transfers.
    pub journal: Arc<crate::zone::journal::Journal>,
}

impl ZoneView {
    /// A view of `data` at `serial` with the given pool answers. Pool names
    /// that the data does not hold yet are made to exist, with their
    /// empty non-terminals, so that they never answer NXDOMAIN.
    pub fn new(mut data: Arc<ZoneData>, serial: u32, pools: impl Into<Arc<HashMap<LowerName, Arc<PoolAnswer>>>>) -> Self {
        let pools = pools.into();
        if pools.keys().any(|p| !data.nodes.contains_key(p)) {
            Arc::make_mut(&mut data).add_names(pools.keys());
        }
        let soa = data.soa_record(serial);
        Self { data, serial, soa, pools, journal: Arc::new(crate::zone::journal::Journal::new(0, 0)) }
    }
}

/// The zone holding `name` among `zones`: the one with the longest matching origin.
pub fn find_zone<'z>(zones: &'z Zones, name: &LowerName) -> Option<&'z Arc<ZoneView>> {
    let mut n = name.clone();
    loop {
        if let Some(z) = zones.get(&n) {
            return Some(z);
        }
        if n.is_root() {
            return None;
        }
        n = n.base_name();
    }
}

/// Whether `r` is a virtual name's address record in the zone data: the
/// pool's answer stands in for it.
pub fn managed(r: &Record, is_pool: impl Fn(&LowerName) -> bool) -> bool {
    use hickory_proto::rr::RecordType;
    matches!(r.record_type(), RecordType::A | RecordType::AAAA) && is_pool(&LowerName::from(&r.name))
}

/// Every record a zone serves, in transfer order: SOA, the static records
/// (pool names carrying their current answers instead of the file's), SOA.
pub fn zone_records(zone: &ZoneView) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::with_capacity(zone.data.record_count + 2);
    records.push(zone.soa.clone());
    records.extend(zone.data.records_sorted().into_iter().filter(|r| !managed(r, |n| zone.pools.contains_key(n))));
    let mut pools: Vec<&Arc<PoolAnswer>> = zone.pools.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for pool in pools {
        records.extend(pool.zone_records());
    }
    records.push(zone.soa.clone());
    records
}
