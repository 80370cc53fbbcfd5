//! Decisions served: re-applying a pool's policy when its members change
//! (reports, the ring's deaths, time alone), serving a decision as the
//! pool's answer (the serial moves only when the records do), the group's
//! decisions and the views shared with it, and what the state store keeps
//! of each pool's members.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::rr::{LowerName, Name};
use tracing::{debug, error, info, warn};

use super::publish::{answer_for, preferred, same, same_records};
use super::{Catalog, RECENT_CHANGES, serial_gt};
use crate::clock::Now;
use crate::pool::table::PoolId;
use crate::pool::{Decision, PoolState, Report, ReportError, SavedPool};
use crate::state::Put;

impl Catalog {
    /// Re-applies a pool's policy (unless it is paused); returns its zone
    /// when its answer changed.
    pub(super) fn redecide(&mut self, i: PoolId, now: Instant) -> Option<LowerName> {
        let changed = self.table.decide(i, now).and_then(|d| self.answer(i, d, now));
        self.touched(i, now);
        changed
    }

    /// Serves `decision` as pool `i`'s answer; returns its zone when the
    /// answer changed.
    pub(super) fn answer(&mut self, i: PoolId, decision: Decision, now: Instant) -> Option<LowerName> {
        let published = self.pool_zone.get(i).and_then(|o| self.published_serial(o));
        let (pool, zone) = match self.zone_mut(i) {
            Ok(found) => found,
            Err(e) => {
                error!(error = %e, "answer not changed");
                return None;
            }
        };
        let served = zone.answers.get(&pool.key);
        if served.is_some_and(|a| same(a, &decision, pool.answers)) {
            return None;
        }
        let records_moved = !served.is_some_and(|a| same_records(a, &decision, pool.answers));
        let answer = answer_for(pool, decision);
        if records_moved {
            info!(pool = %pool.name, answer = ?answer.addresses, shares = ?answer.shares, ttl = answer.ttl, servfail = answer.servfail, "answer changed");
            zone.serial = next_serial(zone.serial, published);
            zone.sync.touch();
        } else {
            debug!(pool = %pool.name, shares = ?answer.shares, "shares moved");
        }
        let (key, name) = (pool.key.clone(), pool.name.clone());
        if records_moved {
            if self.changes.len() == RECENT_CHANGES {
                self.changes.pop_front();
            }
            self.changes.push_back((now, name.to_string(), answer.addresses.clone()));
        }
        let origin = self.pool_zone.get(i).cloned()?;
        self.put_answer(&origin, &key, &name, Some(Arc::new(answer)));
        self.counters.answer_changes.inc();
        self.members_due.insert(i);
        // Only a change of the records moves the serial and tells secondaries.
        if records_moved {
            Some(origin)
        } else {
            self.publish();
            None
        }
    }

    /// The serial of zone `origin` in the last snapshot published.
    pub(super) fn published_serial(&self, origin: &LowerName) -> Option<u32> {
        self.views.get(origin).map(|(_, v)| v.serial)
    }

    /// Moves zone `origin`'s serial for a change of its records: once per
    /// publish, however many pools change before it.
    pub(super) fn move_serial(&mut self, origin: &LowerName) {
        let published = self.published_serial(origin);
        if let Some(z) = self.zones.get_mut(origin) {
            z.serial = next_serial(z.serial, published);
        }
    }

    /// Publishes and tells secondaries about the zones whose serial moved.
    pub(super) fn changed(&mut self, mut zones: Vec<LowerName>) {
        if zones.is_empty() {
            return;
        }
        zones.sort();
        zones.dedup();
        self.publish();
        for origin in zones {
            let Some(z) = self.zones.get(&origin) else { continue };
            self.after_publish.push(super::Output::Notify(z.file.data.origin.clone(), z.serial));
        }
    }

    /// A batch of reports, stored whole or refused whole; pools whose
    /// members changed are decided again. `received`: when the batch
    /// arrived, for the report-to-answer histogram.
    pub fn reports(&mut self, reports: Vec<Report>, received: Instant, now: Instant) -> Result<usize, ReportError> {
        let absorbed = self.table.absorb(reports, now)?;
        self.members_due.extend(absorbed.pools.iter().copied());
        let mut zones = Vec::new();
        let mut republish = false;
        for &i in &absorbed.pools {
            // Under shares, metrics move the answers once per step (a tick
            // decides the pool again); a member in or out of service at once.
            let defer = !absorbed.urgent.contains(&i) && self.table.get(i).is_some_and(|p| p.defers_metrics());
            if let Some(z) = if defer { None } else { self.redecide(i, now) } {
                zones.push(z);
            } else if absorbed.ports_moved.contains(&i)
                && let Ok((pool, zone)) = self.zone_ref(i)
                && let Some(a) = zone.answers.get(&pool.key)
                && let Some(origin) = self.pool_zone.get(i).cloned()
            {
                // Same answer, a member's port moved: only its members change.
                let mut fresh = (**a).clone();
                fresh.preferred = preferred(pool, &fresh.addresses);
                let (key, name) = (pool.key.clone(), pool.name.clone());
                self.put_answer(&origin, &key, &name, Some(Arc::new(fresh)));
                republish = true;
            }
        }
        if !zones.is_empty() {
            self.changed(zones);
            self.counters.report_to_answer.observe(now.saturating_duration_since(received).as_secs_f64());
        } else if republish {
            self.publish();
        }
        Ok(absorbed.count)
    }

    /// Takes every pool member whose host the ring says is dead out of the
    /// answers, and brings back those it no longer lists.
    pub(super) fn ring_dead(&mut self, dead: Vec<IpAddr>, now: Instant) {
        let zones = self.table.set_ring_dead(dead).into_iter().filter_map(|i| self.redecide(i, now)).collect();
        self.changed(zones);
    }

    /// Serves `ring` as the ring's server table (the group's, applied).
    pub fn set_ring(&mut self, ring: crate::ring::registry::Registry, now: Instant) {
        self.ring = ring;
        self.ring_dead(self.ring.dead_hosts(), now);
    }

    /// Re-decides pools whose members report, so stale reports take
    /// effect, and brings what `/metrics` shows up to date.
    pub(super) fn tick(&mut self, now: Instant) {
        let timed: Vec<PoolId> = self.table.due(now).collect();
        let zones: Vec<LowerName> = timed.into_iter().filter_map(|i| self.redecide(i, now)).collect();
        let health = !self.health_due.is_empty();
        for i in std::mem::take(&mut self.health_due) {
            self.refresh_health(i, now);
        }
        if zones.is_empty() && health {
            self.publish();
        }
        self.changed(zones);
    }

    /// This authority's own decisions that changed since the last call:
    /// pool key, its zone, the decision.
    pub fn take_offers(&mut self) -> Vec<(String, String, Decision)> {
        let offers = self.table.take_offers();
        offers
            .into_iter()
            .filter_map(|(i, d)| {
                let key = self.table.get(i)?.key.to_string();
                let zone = self.pool_zone.get(i)?.to_string();
                Some((key, zone, d))
            })
            .collect()
    }

    /// Every own decision offered again (this authority became the decider).
    pub fn offer_all(&mut self, now: Instant) {
        self.table.offer_all(now);
    }

    /// Each reported member's own view, to share with the group: pool
    /// key, member id, up/down while fresh (`None`: stale).
    pub fn own_views(&self, now: Instant) -> Vec<(LowerName, Arc<str>, Option<bool>)> {
        self.table.own_views(now).map(|(p, m, v)| (p.clone(), m.clone(), v)).collect()
    }

    /// What the other authorities see of members (pool key, member id,
    /// seen); re-decides the pools where that changed.
    pub fn remote_views(&mut self, seen: Vec<(String, String, Option<bool>)>, now: Instant) {
        let mut pools = BTreeSet::new();
        for (pool, member, v) in seen {
            pools.extend(self.table.set_remote(&pool, &member, v));
        }
        let zones = pools.into_iter().filter_map(|i| self.redecide(i, now)).collect();
        self.changed(zones);
    }

    /// Each zone's serial as served now, by origin.
    pub fn zone_serials(&self) -> Vec<(String, u32)> {
        self.zones.iter().map(|(o, z)| (o.to_string(), z.serial)).collect()
    }

    /// The group's decisions (pool key, decision) and zone serials, served
    /// from now on. A serial is taken only forward: one not newer than
    /// what this authority served stays its own.
    pub fn impose(&mut self, decisions: Vec<(String, Decision)>, serials: Vec<(String, u32)>, now: Instant) {
        let mut zones = Vec::new();
        for (pool, d) in decisions {
            let Some(i) = self.table.find(&pool) else {
                warn!(pool, "the group decided a pool this authority does not serve");
                continue;
            };
            self.table.impose(i, d);
            zones.extend(self.redecide(i, now));
        }
        for (zone, serial) in serials {
            let Ok(name) = Name::from_ascii(&zone) else { continue };
            let origin = LowerName::from(name);
            if let Some(z) = self.zones.get_mut(&origin)
                && serial_gt(serial, z.serial)
            {
                z.serial = serial;
                z.sync.touch();
                zones.push(origin);
            }
        }
        self.changed(zones);
    }

    /// The last known state of the pools whose members or answer changed
    /// since this was last called.
    pub(super) fn member_saves(&mut self, now: Now) -> Vec<Put> {
        std::mem::take(&mut self.members_due)
            .into_iter()
            .filter_map(|i| self.table.get(i))
            .map(|p| Put::Pool(p.key.to_string(), Some(self.saved_pool(p, now))))
            .collect()
    }

    /// Pool `p`'s state to save, with the answer its zone serves now.
    pub(super) fn saved_pool(&self, p: &PoolState, now: Now) -> SavedPool {
        let mut saved = p.saved(now);
        if let Some(a) = self.zones.values().find_map(|z| z.answers.get(&p.key)) {
            saved.answer = a.addresses.clone();
            saved.servfail = a.servfail;
        }
        saved
    }
}

/// The serial a zone serving `serial` serves after a change of its
/// records: one past the last published (`published`), so a batch of
/// changes between two snapshots is one serial, one NOTIFY and one IXFR
/// step; the same serial when the zone is ahead of it already.
fn next_serial(serial: u32, published: Option<u32>) -> u32 {
    match published {
        Some(p) if p != serial => serial,
        _ => serial.wrapping_add(1),
    }
}
