//! Publishing what is served: each pool's answer (built from a decision),
//! the snapshot the DNS path reads, redone only where something changed,
//! and what watchers and `/metrics` see of each pool's members.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use hickory_proto::rr::{LowerName, Name, RecordType};

use super::Catalog;
use crate::dns::fast;
use crate::dns::snapshot::{MemberHealth, PoolAnswer, Preferred, Snapshot, ZoneView};
use crate::pool::table::PoolId;
use crate::pool::{Decision, PoolState};
use crate::zone::ZoneData;

/// The answer a pool gives for a decision, counted with the pool's counters.
pub(super) fn answer_for(pool: &PoolState, d: Decision) -> PoolAnswer {
    let per_answer = per_answer(&d, pool.answers);
    let mut a = PoolAnswer::new(pool.name.clone(), d.ttl, d.addresses, per_answer, d.rotate, d.servfail).with_shares(d.shares);
    a.counters = pool.counters.clone();
    a.preferred = preferred(pool, &a.addresses);
    a
}

/// The members behind an answer's addresses, in its order, with the port
/// each reports (`tcp_port`).
pub(super) fn preferred(pool: &PoolState, addresses: &[IpAddr]) -> Arc<[Preferred]> {
    // An answer is mostly a few addresses: look each up. Round-robin
    // answers carry every member: index them first, or this is quadratic.
    let by_address: Option<HashMap<IpAddr, &crate::pool::MemberState>> =
        (addresses.len() > 8).then(|| pool.members.iter().rev().map(|m| (m.address, m)).collect());
    addresses
        .iter()
        .filter_map(|a| match &by_address {
            Some(index) => index.get(a).copied(),
            None => pool.members.iter().find(|m| m.address == *a),
        })
        .map(|m| Preferred {
            id: m.id.clone(),
            address: m.address,
            tcp_port: m.custom.get("tcp_port").filter(|p| **p >= 1.0 && **p <= 65535.0).map(|p| *p as u16),
        })
        .collect()
}

/// How many addresses one answer carries: the pool's `answers`, or every
/// one when the decision says so.
fn per_answer(d: &Decision, answers: usize) -> usize {
    if d.every { d.addresses.len().max(1) } else { answers }
}

/// Whether `a` already serves decision `d` (of a pool answering `answers`).
pub(super) fn same(a: &PoolAnswer, d: &Decision, answers: usize) -> bool {
    same_records(a, d, answers) && a.shares == d.shares
}

/// Whether `a` holds the records decision `d` gives (the zone's content:
/// the shares they are drawn by are not in it).
pub(super) fn same_records(a: &PoolAnswer, d: &Decision, answers: usize) -> bool {
    a.addresses == d.addresses && a.rotate == d.rotate && a.servfail == d.servfail && a.answers == per_answer(d, answers) && a.ttl == d.ttl
}

impl Catalog {
    /// Serves `answer` (or nothing) as the answer of the pool keyed `key`
    /// in zone `origin`; its entries are encoded anew at the next publish.
    pub(super) fn put_answer(&mut self, origin: &LowerName, key: &LowerName, name: &Name, answer: Option<Arc<PoolAnswer>>) {
        let Some(zone) = self.zones.get_mut(origin) else { return };
        let srp_key = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        match answer {
            Some(a) => {
                Arc::make_mut(&mut self.preferred).insert(srp_key, a.preferred.clone());
                Arc::make_mut(&mut zone.answers).insert(key.clone(), a);
            }
            None => {
                Arc::make_mut(&mut self.preferred).remove(&srp_key);
                Arc::make_mut(&mut zone.answers).remove(key);
            }
        }
        self.dirty_pools.insert((origin.clone(), key.clone()));
        self.dirty_zones.insert(origin.clone());
    }

    /// Something served changed: a snapshot is published when the input
    /// has been taken (`settle`), once the serials it serves are reserved.
    pub(super) fn publish(&mut self) {
        self.publish_due = true;
        self.published += 1;
    }

    /// Journals what each zone's new serial changed since the view last
    /// served: the records of the pools whose answers moved. A change of
    /// the zone's own data (an operator's edit) is not journaled; the
    /// journal starts over, and older secondaries take the whole zone.
    fn journal_serials(&mut self) {
        let mut deltas = Vec::new();
        for (origin, z) in &self.zones {
            let Some((data, old)) = self.views.get(origin) else { continue };
            if old.serial == z.serial {
                continue;
            }
            if !Arc::ptr_eq(data, &z.file.data) && !same_static(data, &z.file.data, old.pools.keys().chain(z.answers.keys())) {
                deltas.push((origin.clone(), None));
                continue;
            }
            let keys: Vec<&LowerName> = self.dirty_pools.iter().filter(|(o, _)| o == origin).map(|(_, k)| k).collect();
            let records = |answers: &HashMap<LowerName, Arc<PoolAnswer>>| {
                keys.iter().filter_map(|k| answers.get(*k)).flat_map(|p| p.zone_records()).collect::<Vec<_>>()
            };
            let delta = crate::zone::journal::diff(old.serial, z.serial, &records(&old.pools), &records(&z.answers));
            deltas.push((origin.clone(), Some(delta)));
        }
        for (origin, delta) in deltas {
            let Some(z) = self.zones.get_mut(&origin) else { continue };
            let journal = Arc::make_mut(&mut z.journal);
            match delta {
                Some(d) => journal.push(d),
                None => journal.clear(),
            }
        }
    }

    /// Builds the snapshot of what is served now, redoing only what changed
    /// since the last one: the views of changed zones, the static
    /// responses when some zone's data changed, and the entries of pools
    /// whose answer changed. The serial in pre-encoded responses is a cell
    /// per zone, set here.
    pub(super) fn render(&mut self) {
        // Pool names the zone's data lacks are made to exist there once (a
        // copy of the data, then never again), not in each view built.
        for z in self.zones.values_mut() {
            if z.answers.keys().any(|p| !z.file.data.nodes.contains_key(p)) {
                let file = Arc::make_mut(&mut z.file);
                crate::zone::ZoneData::add_names(Arc::make_mut(&mut file.data), z.answers.keys());
            }
        }
        self.journal_serials();
        for (origin, z) in &self.zones {
            let data_changed = self.views.get(origin).is_none_or(|(data, _)| !Arc::ptr_eq(data, &z.file.data));
            let stale =
                data_changed || self.dirty_zones.contains(origin) || self.views.get(origin).is_some_and(|(_, v)| v.serial != z.serial);
            if !stale {
                continue;
            }
            if data_changed {
                // Answers that carry zone data (the SOA of NODATA) change with it.
                self.stable_stale = true;
                self.dirty_pools.extend(z.answers.keys().map(|k| (origin.clone(), k.clone())));
            }
            let mut view = ZoneView::new(z.file.data.clone(), z.serial, z.answers.clone());
            view.journal = z.journal.clone();
            let view = Arc::new(view);
            self.views.insert(origin.clone(), (z.file.data.clone(), view));
            self.serials.entry(origin.clone()).or_insert_with(|| Arc::new(AtomicU32::new(z.serial)));
        }
        self.dirty_zones.clear();
        let mut snap = Snapshot {
            zones: self.views.iter().map(|(o, (_, v))| (o.clone(), v.clone())).collect(),
            preferred: self.preferred.clone(),
            health: self.health.clone(),
            ..Snapshot::default()
        };
        if self.stable_stale {
            self.stable = Arc::new(fast::build_stable(&snap.zones, &self.serials));
            self.stable_stale = false;
        }
        for (origin, key) in std::mem::take(&mut self.dirty_pools) {
            for t in [RecordType::A, RecordType::AAAA] {
                self.dynamic.remove(&fast::name_key(&key, t));
            }
            let (Some(answer), Some(serial)) = (self.zones.get(&origin).and_then(|z| z.answers.get(&key)), self.serials.get(&origin))
            else {
                continue;
            };
            let entries = fast::pool_entries(&snap.zones, &key, answer, serial);
            for (k, e) in entries {
                self.dynamic.insert(k, e);
            }
        }
        snap.fast = fast::FastTable { stable: self.stable.clone(), dynamic: self.dynamic.clone() };
        for (origin, z) in &self.zones {
            if let Some(cell) = self.serials.get(origin) {
                cell.store(z.serial, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.snapshot = Arc::new(snap);
    }

    /// Pool `i`'s members may have changed state: its watchers hear at
    /// once; what `/metrics` shows follows at the next tick, so a stream of
    /// reports does not redo a large pool's member list for every batch.
    pub(super) fn touched(&mut self, i: PoolId, now: Instant) {
        self.health_due.insert(i);
        let Some(pool) = self.table.get(i) else { return };
        let (key, policy) = (pool.key.clone(), pool.policy);
        if let Some(tx) = self.watchers.get(&key) {
            if tx.receiver_count() == 0 {
                self.watchers.remove(&key);
            } else {
                let servers = (self.table.order(i, now), policy);
                tx.send_if_modified(|w| std::mem::replace(w, servers.clone()) != servers);
            }
        }
    }

    /// Recomputes what `/metrics` shows of pool `i`'s members.
    pub(super) fn refresh_health(&mut self, i: PoolId, now: Instant) {
        let Ok((pool, zone)) = self.zone_ref(i) else { return };
        let Some(answer) = zone.answers.get(&pool.key) else { return };
        let shown = answer.shown();
        let shown: &[IpAddr] = if answer.servfail { &[] } else { &shown };
        let index: Option<std::collections::HashSet<IpAddr>> = (shown.len() > 8).then(|| shown.iter().copied().collect());
        let members: Arc<[MemberHealth]> = pool
            .members
            .iter()
            .map(|m| MemberHealth {
                id: m.id.clone(),
                up: m.eligible(now, pool.stale_after),
                stale: m.state(now, pool.stale_after) == "unknown (stale)",
                ring_dead: m.ring_dead,
                in_answer: index.as_ref().map_or_else(|| shown.contains(&m.address), |ix| ix.contains(&m.address)),
            })
            .collect();
        let name = pool.name.to_string();
        Arc::make_mut(&mut self.health).insert(name, members);
    }
}

/// Whether two versions of a zone's data hold the same records, leaving out
/// the SOA and the address records of virtual names (the answers stand in
/// for those): our own zone file writes change only those.
fn same_static<'a>(a: &ZoneData, b: &ZoneData, pools: impl Iterator<Item = &'a LowerName>) -> bool {
    use crate::zone::{Node, RrSet};
    /// A node's sets that are the zone's own: not the SOA (its serial
    /// moves), not a pool's addresses (its answer stands in for them).
    fn own(node: &Node, pool: bool) -> impl Iterator<Item = &RrSet> {
        node.rrsets.iter().filter(move |s| s.rtype != RecordType::SOA && !(pool && matches!(s.rtype, RecordType::A | RecordType::AAAA)))
    }
    let pools: std::collections::HashSet<&LowerName> = pools.collect();
    let covers = |x: &ZoneData, y: &ZoneData| {
        x.nodes.iter().all(|(name, node)| {
            let pool = pools.contains(name);
            let theirs = y.nodes.get(name);
            let count = theirs.map_or(0, |n| own(n, pool).count());
            own(node, pool).count() == count && own(node, pool).all(|s| theirs.is_some_and(|n| own(n, pool).any(|t| t == s)))
        })
    };
    covers(a, b) && covers(b, a)
}

/// What the state store keeps of a change to a zone's journal.
pub(super) fn journal_put(origin: &LowerName, kept: crate::zone::journal::Kept) -> crate::state::Put {
    crate::state::Put::Journal {
        zone: origin.to_string(),
        row: kept.added.map(|(n, d)| (n, crate::zone::journal::encode(&d))),
        keep_from: kept.keep_from,
    }
}
