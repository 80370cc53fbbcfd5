//! The member table bound to the zones: building the catalog from the
//! configuration, the zone files and what the state store remembers;
//! which zone each pool's name lives in; bringing a pool in (its last
//! answer and the operators' notes); configuration edits; and an
//! operator's change staged on a copy of its pool, then put in place.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name, RecordType};
use tracing::{error, info, warn};

use super::publish::answer_for;
use super::{Catalog, MEMBER_SAVE_INTERVAL, TICK, UpdateError, UpdaterCounters, ZoneState, serials};
use crate::clock::Now;
use crate::config::{Config, PolicyName, PoolConfig};
use crate::dns::snapshot::Snapshot;
use crate::pool::table::{PoolId, Table};
use crate::pool::{AdminState, Decision, PoolState};
use crate::ring::registry::Registry;
use crate::state::{Loaded, Put, StateCounters};
use crate::zone::ZoneFile;

pub use crate::pool::table::Change as PoolChange;

/// A change to a pool, checked and applied to a copy, waiting for its
/// overrides to be saved before it is put in place (`commit`).
pub struct Staged {
    id: PoolId,
    pool: PoolState,
    /// The pool's state with the answer served now (a paused pool keeps
    /// it), and its overrides after the change.
    state: Put,
    overrides: Put,
}

impl Staged {
    /// What the store must hold before the change is applied: the pool's
    /// overrides after it, and its state.
    pub fn saves(&self) -> [&Put; 2] {
        [&self.state, &self.overrides]
    }

    /// The pool's key and its overrides after the change.
    pub fn overrides(&self) -> (String, &crate::pool::Overrides) {
        (self.pool.key.to_string(), &self.pool.overrides)
    }
}

/// Pool `i` and the origin of the zone it is bound to.
fn place<'a>(table: &'a Table, pool_zone: &'a [LowerName], i: PoolId) -> Result<(&'a PoolState, &'a LowerName), UpdateError> {
    let pool = table.get(i).ok_or_else(|| UpdateError::Internal(format!("no pool {i}")))?;
    Ok((pool, pool_zone.get(i).ok_or_else(|| unserved(pool))?))
}

fn unserved(pool: &PoolState) -> UpdateError {
    UpdateError::Internal(format!("pool {}: its zone is not served", pool.name))
}

/// The zone a pool's name lives in, if it may be a pool there.
fn zone_for(zones: &BTreeMap<LowerName, ZoneState>, name: &Name) -> Result<LowerName, String> {
    let lower = LowerName::from(name);
    let Some((origin, zone)) = zones.iter().filter(|(o, _)| o.zone_of(&lower)).max_by_key(|(o, _)| o.num_labels()) else {
        return Err(format!("pool {name}: no zone file in zones_dir holds this name"));
    };
    if zone.file.data.nodes.get(&lower).is_some_and(|n| n.get(RecordType::CNAME).is_some()) {
        return Err(format!("pool {name}: the zone file has a CNAME at this name"));
    }
    if &lower == origin {
        return Err(format!("pool {name}: a pool cannot be the zone apex"));
    }
    if let Some(line) = zone.file.stray_addresses(name).first() {
        return Err(format!(
            "pool {name}: {}:{line}: address records for a virtual name belong in its managed block, which vnamed writes; remove them",
            zone.file.path.display()
        ));
    }
    Ok(origin.clone())
}

/// The zone of every pool, or every pool that has none.
fn zones_of(zones: &BTreeMap<LowerName, ZoneState>, configs: &[PoolConfig]) -> Result<Vec<LowerName>, Vec<String>> {
    let (found, problems): (Vec<_>, Vec<_>) = configs
        .iter()
        .map(|c| match Name::from_ascii(&c.name) {
            Ok(mut name) => {
                name.set_fqdn(true);
                zone_for(zones, &name)
            }
            Err(e) => Err(format!("pool {}: {e}", c.name)),
        })
        .partition(Result::is_ok);
    if problems.is_empty() {
        Ok(found.into_iter().map(Result::unwrap).collect())
    } else {
        Err(problems.into_iter().map(|p| p.unwrap_err()).collect())
    }
}

/// What the catalog starts from besides the configuration and the files.
pub struct Start<'a> {
    /// What the state store held at start-up.
    pub saved: &'a Loaded,
    /// The ring's server table as saved.
    pub ring: Registry,
    pub counters: Arc<UpdaterCounters>,
    pub state_counters: Arc<StateCounters>,
    /// Coalescing of zone file rewrites.
    pub write_interval: Duration,
}

impl Catalog {
    /// Builds what is served from the configuration, the zone files and
    /// what the state store remembers: each pool's overrides and its
    /// members' last known state, each zone's serial high-water mark and
    /// journal, and the ring's table. From a fresh store, the operators'
    /// notes in the zone files are taken as overrides instead. The first
    /// publish comes from `poll`, once the serials it serves are reserved.
    pub fn new(config: &Config, files: BTreeMap<LowerName, ZoneFile>, start: Start<'_>, now: Now) -> Result<Self, Vec<String>> {
        let saved = start.saved;
        let zones: BTreeMap<LowerName, ZoneState> = files
            .into_iter()
            .map(|(origin, file)| {
                let text = file.text.clone();
                (origin, ZoneState::new(file, text))
            })
            .collect();
        let pool_zone = zones_of(&zones, &config.pool)?;
        let mut catalog = Self {
            table: Table::new(&config.pool, now),
            pool_zone,
            zones,
            ring: Registry::default(),
            write_interval: start.write_interval,
            out: VecDeque::new(),
            after_publish: Vec::new(),
            views: HashMap::new(),
            stable: Arc::default(),
            stable_stale: true,
            dynamic: Default::default(),
            dirty_pools: BTreeSet::new(),
            dirty_zones: BTreeSet::new(),
            snapshot: Arc::new(Snapshot::default()),
            changes: VecDeque::new(),
            published: 0,
            serials: HashMap::new(),
            preferred: Arc::default(),
            watchers: HashMap::new(),
            counters: start.counters,
            state_counters: start.state_counters.clone(),
            reading: BTreeSet::new(),
            reread: BTreeSet::new(),
            health: Arc::default(),
            health_due: BTreeSet::new(),
            publish_due: true,
            marks: serials::Marks::new(start.state_counters),
            saves: Vec::new(),
            members_due: BTreeSet::new(),
            next_member_save: now.instant + MEMBER_SAVE_INTERVAL,
            next_tick: now.instant + TICK,
            saving: None,
            waiting: VecDeque::new(),
            tickets: 0,
            clock: now.instant,
            board: None,
            cluster: None,
            group: None,
        };
        catalog.bind_zones();
        for i in 0..catalog.table.pools().len() {
            let Some(key) = catalog.table.get(i).map(|p| p.key.to_string()) else { continue };
            if let Some(o) = saved.overrides.get(&key) {
                for problem in catalog.table.lay(i, o, now) {
                    warn!(pool = %key, %problem, "a saved override no longer applies");
                }
                if catalog.table.get(i).is_some_and(|p| &p.overrides != o) {
                    catalog.save_overrides(i);
                }
            }
            let prior = saved.pools.get(&key);
            if let Some(p) = prior {
                catalog.table.take_saved(i, p, now);
            }
            catalog.restore(i, now, saved.fresh, prior.map(|p| (p.answer.clone(), p.servfail)));
            if saved.fresh && catalog.table.get(i).is_some_and(|p| !p.overrides.is_empty()) {
                catalog.save_overrides(i); // imported from the zone file's notes
            }
        }
        // Forget what the store keeps of pools no longer configured.
        let keys: BTreeSet<String> = catalog.table.pools().iter().map(|p| p.key.to_string()).collect();
        for gone in saved.overrides.keys().chain(saved.pools.keys()).filter(|k| !keys.contains(*k)) {
            catalog.saves.push(Put::Overrides(gone.clone(), None));
            catalog.saves.push(Put::Pool(gone.clone(), None));
        }
        catalog.restore_serials(saved);
        catalog.ring = start.ring;
        catalog.ring_dead(catalog.ring.dead_hosts(), now.instant);
        catalog.settle(now);
        Ok(catalog)
    }

    pub(super) fn save_overrides(&mut self, i: PoolId) {
        if let Some(p) = self.table.get(i) {
            self.saves.push(Put::Overrides(p.key.to_string(), Some(p.overrides.clone())));
        }
    }

    /// Checks `change` to pool `pool` and applies it to a copy; its saves
    /// are made durable, then it is `commit`ted.
    pub fn stage(&self, pool: &str, change: PoolChange, now: Now) -> Result<Staged, UpdateError> {
        let (id, pool) = self.table.stage(pool, change, now)?;
        let key = pool.key.to_string();
        let overrides = Put::Overrides(key.clone(), Some(pool.overrides.clone()));
        let mut saved = self.saved_pool(&pool, now);
        if !pool.paused {
            // The answer once the change is in place (a paused pool keeps today's).
            let d = pool.clone().decide(now.instant);
            (saved.answer, saved.servfail) = (d.addresses, d.servfail);
        }
        let state = Put::Pool(key, Some(saved));
        Ok(Staged { id, pool, state, overrides })
    }

    /// Puts a staged change in place; returns the pool's answer after it.
    pub fn commit(&mut self, staged: Staged, now: Now) -> Result<Vec<IpAddr>, UpdateError> {
        let i = staged.id;
        info!(pool = %staged.pool.name, overrides = ?staged.pool.overrides.lines(), "pool changed by operator");
        self.table.put(i, staged.pool);
        let (_, zone) = self.zone_mut(i)?;
        // The notes in the file change even when the answer does not.
        zone.sync.touch();
        match self.redecide(i, now.instant) {
            Some(origin) => self.changed(vec![origin]),
            None => self.publish(), // the members' state may have moved
        }
        let (pool, zone) = self.zone_mut(i)?;
        let answer = zone.answers.get(&pool.key).ok_or_else(|| UpdateError::Internal(format!("pool {}: no answer", pool.name)))?;
        Ok(answer.addresses.clone())
    }

    /// Lists each zone's pools anew from `pool_zone`.
    fn bind_zones(&mut self) {
        for z in self.zones.values_mut() {
            z.pools.clear();
        }
        for (i, origin) in self.pool_zone.iter().enumerate() {
            match self.zones.get_mut(origin) {
                Some(z) => z.pools.push(i),
                None => error!(zone = %origin, pool = i, "internal: a pool's zone is not served; the pool is left out"),
            }
        }
    }

    /// The zone pool `i` lives in, and the pool, when both are there.
    pub(super) fn zone_mut(&mut self, i: PoolId) -> Result<(&PoolState, &mut ZoneState), UpdateError> {
        let (pool, origin) = place(&self.table, &self.pool_zone, i)?;
        Ok((pool, self.zones.get_mut(origin).ok_or_else(|| unserved(pool))?))
    }

    /// The zone pool `i` lives in, and the pool, when both are there.
    pub(super) fn zone_ref(&self, i: PoolId) -> Result<(&PoolState, &ZoneState), UpdateError> {
        let (pool, origin) = place(&self.table, &self.pool_zone, i)?;
        Ok((pool, self.zones.get(origin).ok_or_else(|| unserved(pool))?))
    }

    /// Brings a pool (new to this catalog) into its zone: the operator's
    /// notes and the last answer come back from the zone file when they
    /// still make sense.
    /// `prior` is the answer the state store says was served (the zone
    /// file's block stands in when there is none): it is served again when
    /// its members are still in service, or whatever they are when the
    /// pool is paused.
    fn restore(&mut self, i: PoolId, clock: Now, import_notes: bool, prior: Option<(Vec<IpAddr>, bool)>) {
        let now = clock.instant;
        let Ok((pool, zone)) = self.zone_mut(i) else { return };
        let name = pool.name.to_string();
        let block = zone.file.block(&pool.name).cloned();
        let (previous, servfail, known) = match prior {
            Some((answer, servfail)) => (answer, servfail, true),
            None => (zone.file.addresses(&pool.name), false, block.is_some()),
        };
        let notes = match &block {
            Some(b) if import_notes => b.members(&zone.file.text),
            _ => Vec::new(),
        };
        for (id, pairs) in notes {
            let admin = pairs.iter().find(|(k, _)| k == "admin").and_then(|(_, v)| AdminState::parse(v));
            let weight = pairs.iter().find(|(k, _)| k == "weight").and_then(|(_, v)| v.parse().ok());
            let _ = self.table.change(&name, PoolChange::Member { id: id.clone(), admin, weight }, clock);
        }
        let Some(pool) = self.table.get(i) else { return };
        let live: Vec<IpAddr> = pool.members.iter().filter(|m| m.eligible(now, pool.stale_after)).map(|m| m.address).collect();
        let restored = known
            && if pool.paused {
                servfail || !previous.is_empty()
            } else {
                !servfail && !previous.is_empty() && previous.iter().all(|a| live.contains(a))
            };
        let decision = if restored {
            let rotate = pool.policy == PolicyName::RoundRobin;
            let ttl = pool.ttl_range.map(|(min, _)| min).unwrap_or(pool.ttl);
            // Shares are not kept: the members served before share equally
            // until the next decision.
            let shared = pool.shares();
            let shares = if shared && !servfail { vec![1.0 / previous.len().max(1) as f64; previous.len()] } else { Vec::new() };
            if !servfail {
                self.table.restore_last_known(i, previous.clone());
            }
            Some(Decision { shares, ..Decision::plain(previous, rotate, servfail, ttl) })
        } else {
            self.table.decide_anyway(i, now)
        };
        let Some(decision) = decision else { return };
        if let Ok((pool, zone)) = self.zone_mut(i) {
            let answer = answer_for(pool, decision);
            if !restored {
                zone.sync.touch();
            }
            let (key, name) = (pool.key.clone(), pool.name.clone());
            if let Some(origin) = self.pool_zone.get(i).cloned() {
                self.put_answer(&origin, &key, &name, Some(Arc::new(answer)));
            }
        }
        self.refresh_health(i, now);
    }

    /// Applies the pools of an edited configuration: new pools join, removed
    /// ones leave (with their managed blocks), and kept ones take the new
    /// policy and members while keeping what was reported about them.
    pub fn reconfigure(&mut self, configs: &[PoolConfig], now: Now) -> Result<(), Vec<String>> {
        let origins = zones_of(&self.zones, configs)?;
        let mut touched: Vec<LowerName> = Vec::new();
        let changes = self.table.reconfigure(configs, now);
        for problem in &changes.dropped {
            warn!(%problem, "an override no longer applies after the configuration edit");
        }
        for &i in &changes.overrides_changed {
            self.save_overrides(i);
        }
        // Pool ids follow the new table.
        self.members_due = (0..self.table.pools().len()).collect();
        for gone in &changes.removed {
            self.saves.push(Put::Overrides(gone.key.to_string(), None));
            self.saves.push(Put::Pool(gone.key.to_string(), None));
            Arc::make_mut(&mut self.health).remove(&gone.name.to_string());
            // Its watchers see the pool close.
            self.watchers.remove(&gone.key);
        }
        for gone in &changes.removed {
            let Some(origin) = self.zones.iter().find(|(_, z)| z.answers.contains_key(&gone.key)).map(|(o, _)| o.clone()) else {
                continue;
            };
            self.put_answer(&origin, &gone.key, &gone.name, None);
            let Some(zone) = self.zones.get_mut(&origin) else { continue };
            // The file's copy of its answer goes too, now rather than at the next write.
            let data = Arc::make_mut(&mut Arc::make_mut(&mut zone.file).data);
            if let Some(node) = data.nodes.get_mut(&gone.key) {
                node.rrsets.retain(|s| !matches!(s.rtype, RecordType::A | RecordType::AAAA));
                if node.rrsets.is_empty() && !data.nodes.keys().any(|n| n != &gone.key && gone.key.zone_of(n)) {
                    data.nodes.swap_remove(&gone.key);
                }
            }
            self.stable_stale = true;
            zone.sync.drop_block(gone.name.to_string());
            self.move_serial(&origin);
            touched.push(origin.clone());
            info!(pool = %gone.name, "pool removed by configuration edit");
        }
        // Pool ids follow the new table; each pool's zone comes from its name.
        let by_key: HashMap<String, LowerName> =
            configs.iter().zip(origins).map(|(c, o)| (c.name.trim_end_matches('.').to_ascii_lowercase(), o)).collect();
        self.pool_zone = self
            .table
            .pools()
            .iter()
            .map(|p| {
                by_key
                    .get(p.name.to_ascii().trim_end_matches('.').to_ascii_lowercase().as_str())
                    .cloned()
                    .unwrap_or_else(LowerName::default)
            })
            .collect();
        self.bind_zones();
        self.health_due = (0..self.table.pools().len()).collect();
        for &i in &changes.reshaped {
            // A new TTL or answer size: the old answer cannot stand, even while paused.
            if let (Ok((pool, _)), Some(origin)) = (self.zone_ref(i), self.pool_zone.get(i).cloned()) {
                let (key, name) = (pool.key.clone(), pool.name.clone());
                self.put_answer(&origin, &key, &name, None);
            }
        }
        for i in 0..self.table.pools().len() {
            let Some(origin) = self.pool_zone.get(i).cloned() else { continue };
            if changes.added.contains(&i) {
                info!(pool = %self.table.pools()[i].name, "pool added by configuration edit");
                self.restore(i, now, true, None);
                self.move_serial(&origin);
            } else if changes.reshaped.contains(&i) {
                if let Some(d) = self.table.decide_anyway(i, now.instant) {
                    self.answer(i, d, now.instant);
                }
                self.touched(i, now.instant);
            } else {
                self.redecide(i, now.instant);
            }
            if let Some(z) = self.zones.get_mut(&origin) {
                z.sync.touch();
            }
            touched.push(origin);
        }
        info!(pools = self.table.pools().len(), "configuration edit applied");
        self.changed(touched);
        Ok(())
    }
}
