//! The replicated monitor's member table: every pool, its members, their
//! latest reports, the operator's word on them and the ring's deaths. Pure:
//! time is passed in. The authority's updater and a farm monitor each keep
//! one. Every change says which pools it touched, so only those are
//! decided again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::LowerName;

pub use super::change::{Change, TableError};
use super::change::{apply, carry, lay, mark_dead, superseded};
use super::replay::{self, Recent, Recorded};
use super::{AdminState, Decision, Overrides, PoolState, Report, ReportError, View, policy};
use crate::clock::Now;
use crate::config::PoolConfig;

/// A pool's place in the table; stable until the next `reconfigure`.
pub type PoolId = usize;

/// What a batch of reports touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Absorbed {
    /// Reports stored.
    pub count: usize,
    /// Pools with a new report, each once, in the order first seen.
    pub pools: Vec<PoolId>,
    /// Of those, the pools where a member's reported `tcp_port` moved: its
    /// SRP answer changes even when the DNS answer stays.
    pub ports_moved: Vec<PoolId>,
    /// Of those, the pools where a member came into service or left it
    /// (up, down, stale, or full): decided again at once, whatever else.
    pub urgent: Vec<PoolId>,
}

/// What a new configuration did to the table.
#[derive(Debug, Default)]
pub struct Reconfigured {
    /// Pools no longer configured, as they were.
    pub removed: Vec<PoolState>,
    /// Pools configured for the first time (ids in the new table).
    pub added: Vec<PoolId>,
    /// Kept pools whose answer shape (TTL, addresses per answer) changed.
    pub reshaped: Vec<PoolId>,
    /// Kept pools whose API overrides no longer all apply, and why.
    pub overrides_changed: Vec<PoolId>,
    pub dropped: Vec<String>,
}

/// One member as `vnamed status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    pub id: String,
    pub address: IpAddr,
    pub state: String,
    pub admin: AdminState,
    pub weight: u32,
    pub load: Option<f64>,
    pub in_answer: bool,
    pub metrics: Vec<(String, f64)>,
    pub score: Option<f64>,
    /// 1-based place in the policy's order; 0 when out of service.
    pub rank: u32,
    /// Share of the answers, when the pool draws them by shares.
    pub share: Option<f64>,
    pub report_age: Option<Duration>,
    /// Each vantage point's last word: who, up, how long ago; newest first.
    pub views: Vec<(String, bool, Duration)>,
}

#[derive(Debug, Default)]
pub struct Table {
    pools: Vec<PoolState>,
    /// Each pool's recent reports, for dry runs (by pool id).
    recent: Vec<Recent>,
    /// Pool key (lower case, no final dot) → place in `pools`.
    index: HashMap<String, PoolId>,
    /// Hosts the ring says are dead, by address.
    dead: Vec<IpAddr>,
    /// In a group of authorities: the group's decisions, and ours to offer.
    group: super::group::Group,
    /// When each pool must be decided again for time alone (`None`: only
    /// events change it), by pool id.
    next: Vec<Option<Instant>>,
}

/// How a pool name is looked up: lower case, without the final dot.
fn key_of(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) { name.to_ascii_lowercase().into() } else { name.into() }
}

fn key_of_pool(p: &PoolState) -> String {
    key_of(&p.name.to_ascii()).into_owned()
}

impl Table {
    /// The pools as configured, nothing reported yet.
    pub fn new(configs: &[PoolConfig], now: Now) -> Self {
        let mut t = Self { pools: configs.iter().map(|c| PoolState::from_config(c, now)).collect(), ..Self::default() };
        t.recent = vec![Recent::default(); t.pools.len()];
        t.next = vec![Some(now.instant); t.pools.len()];
        t.reindex();
        t
    }

    fn reindex(&mut self) {
        self.index = self.pools.iter().enumerate().map(|(i, p)| (key_of_pool(p), i)).collect();
    }

    pub fn pools(&self) -> &[PoolState] {
        &self.pools
    }

    pub fn get(&self, id: PoolId) -> Option<&PoolState> {
        self.pools.get(id)
    }

    /// The pool named `name`, in any case, with or without the final dot.
    pub fn find(&self, name: &str) -> Option<PoolId> {
        self.index.get(key_of(name).as_ref()).copied()
    }

    fn resolve(&self, pool: &str) -> Result<PoolId, TableError> {
        self.find(pool).ok_or_else(|| TableError::NoPool(pool.to_owned()))
    }

    /// Stores a batch of reports whole, or refuses it whole (a report names
    /// a pool or member that is not here, or gives addresses for a member
    /// that is not a farm) with nothing stored.
    pub fn absorb(&mut self, reports: Vec<Report>, now: Instant) -> Result<Absorbed, ReportError> {
        let mut targets = Vec::with_capacity(reports.len());
        let mut last: Option<(&str, PoolId)> = None;
        for (index, r) in reports.iter().enumerate() {
            // Batches mostly name one pool: look it up once.
            let i = match last {
                Some((name, i)) if name == r.pool => i,
                _ => {
                    let i = self.find(&r.pool).ok_or_else(|| ReportError::NoPool { index, pool: r.pool.clone() })?;
                    last = Some((&r.pool, i));
                    i
                }
            };
            let pool = &self.pools[i];
            let m =
                pool.position(&r.member).ok_or_else(|| ReportError::NoMember { index, pool: r.pool.clone(), member: r.member.clone() })?;
            if !r.addresses.is_empty() && pool.members[m].farm.is_none() {
                return Err(ReportError::NotFarm { index, pool: r.pool.clone(), member: r.member.clone() });
            }
            targets.push((i, m));
        }
        let mut out = Absorbed { count: reports.len(), ..Absorbed::default() };
        let cap = (replay::KEPT_MAX / self.pools.len().max(1)).max(replay::POOL_FLOOR);
        self.recent.resize_with(self.pools.len(), Recent::default);
        for (r, (i, m)) in reports.into_iter().zip(targets) {
            let (smoothing, quorum, stale_after) = (self.pools[i].smoothing, self.pools[i].quorum, self.pools[i].stale_after);
            let serving = |p: &PoolState| (p.members[m].eligible(now, stale_after), p.is_full(&p.members[m]));
            let before = serving(&self.pools[i]);
            let member = &mut self.pools[i].members[m];
            let port = member.custom.get("tcp_port").copied();
            let at = now.checked_sub(r.age).unwrap_or(now);
            let kept = Recorded {
                at,
                member: member.id.clone(),
                source: r.source.clone(),
                up: r.up,
                metrics: r.metrics,
                custom: r.custom.clone(),
            };
            self.recent[i].keep(kept, cap);
            let health = member.health;
            member.absorb(r.up, r.metrics, r.custom, smoothing, at);
            member.vote(View { source: r.source, up: r.up, at }, health, quorum, stale_after, now);
            if let Some(first) = r.addresses.first() {
                member.address = *first;
                member.ring_dead = self.dead.contains(first);
            }
            if member.custom.get("tcp_port").copied() != port && !out.ports_moved.contains(&i) {
                out.ports_moved.push(i);
            }
            if serving(&self.pools[i]) != before && !out.urgent.contains(&i) {
                out.urgent.push(i);
            }
            // Decided again by time when this report goes stale, and under
            // shares at the next step (its metrics wait for that).
            let pool = &mut self.pools[i];
            pool.metrics_moved = true;
            let step = pool.shares().then(|| pool.spread.next_step(now, pool.shaping.step));
            let stale = Some(at + stale_after + Duration::from_millis(1));
            if let Some(n) = self.next.get_mut(i) {
                *n = [*n, stale, step].into_iter().flatten().min();
            }
            if !out.pools.contains(&i) {
                out.pools.push(i);
            }
        }
        Ok(out)
    }

    /// Pool `pool` with `change` applied, not yet in the table: the
    /// authority saves its overrides before it puts it in place (`put`).
    pub fn stage(&self, pool: &str, change: Change, now: Now) -> Result<(PoolId, PoolState), TableError> {
        let i = self.resolve(pool)?;
        let mut p = self.pools[i].clone();
        apply(&mut p, &self.dead, pool, change, now)?;
        Ok((i, p))
    }

    /// Puts a pool staged with `stage` in place.
    pub fn put(&mut self, id: PoolId, pool: PoolState) {
        if let Some(p) = self.pools.get_mut(id) {
            *p = pool;
        }
    }

    /// Applies an operator's change to pool `pool`, in place: `apply`
    /// checks everything before it touches the pool, so a refused change
    /// leaves it as it was (no copy of a pool of thousands of members per
    /// change, as importing each member's note from a zone file needs).
    pub fn change(&mut self, pool: &str, change: Change, now: Now) -> Result<PoolId, TableError> {
        let i = self.resolve(pool)?;
        apply(&mut self.pools[i], &self.dead, pool, change, now)?;
        Ok(i)
    }

    /// Takes back pool `id`'s members' last known state (see `saved`).
    pub fn take_saved(&mut self, id: PoolId, saved: &super::SavedPool, now: Now) {
        if let Some(p) = self.pools.get_mut(id) {
            p.take_saved(saved, now);
            mark_dead(p, &self.dead);
        }
    }

    /// Lays saved overrides over pool `id` as configured; returns what no
    /// longer applies (and is dropped from its overrides).
    pub fn lay(&mut self, id: PoolId, overrides: &Overrides, now: Now) -> Vec<String> {
        let dead = &self.dead;
        match self.pools.get_mut(id) {
            Some(p) => lay(p, overrides, None, dead, now),
            None => Vec::new(),
        }
    }

    /// Takes the ring's dead hosts; returns the pools where a member's
    /// state changed.
    pub fn set_ring_dead(&mut self, dead: Vec<IpAddr>) -> Vec<PoolId> {
        let mut touched = Vec::new();
        for (i, p) in self.pools.iter_mut().enumerate() {
            let mut changed = false;
            for m in &mut p.members {
                let is_dead = dead.contains(&m.address);
                changed |= m.ring_dead != is_dead;
                m.ring_dead = is_dead;
            }
            if changed {
                touched.push(i);
            }
        }
        self.dead = dead;
        touched
    }

    /// Takes the pools of a new configuration (already checked): new pools
    /// join, removed ones leave, and kept ones take the new policy and
    /// members while keeping what was reported and set about them, their
    /// last answer and whether they are paused.
    pub fn reconfigure(&mut self, configs: &[PoolConfig], now: Now) -> Reconfigured {
        let was: HashMap<String, PoolId> = std::mem::take(&mut self.index);
        let mut recent: HashMap<String, Recent> = self
            .pools
            .iter()
            .map(key_of_pool)
            .zip(std::mem::take(&mut self.recent).into_iter().chain(std::iter::repeat_with(Recent::default)))
            .collect();
        let mut old: HashMap<String, PoolState> = self.pools.drain(..).map(|p| (key_of_pool(&p), p)).collect();
        // (old place, reshaped, pool): kept pools stay in their old order, new ones follow.
        let mut next: Vec<(Option<PoolId>, bool, PoolState)> = Vec::with_capacity(configs.len());
        let mut out = Reconfigured::default();
        let mut changed_overrides: Vec<String> = Vec::new();
        for c in configs {
            let mut fresh = PoolState::from_config(c, now);
            let key = key_of_pool(&fresh);
            let Some(mut known) = old.remove(&key) else {
                mark_dead(&mut fresh, &self.dead);
                next.push((None, false, fresh));
                continue;
            };
            let reshaped = known.ttl != fresh.ttl || known.answers != fresh.answers;
            carry(&mut fresh, &known, &self.dead);
            let before = std::mem::take(&mut known.overrides);
            let taken = superseded(before.clone(), &known.config, c);
            for problem in lay(&mut fresh, &taken, Some(&known), &self.dead, now) {
                out.dropped.push(format!("pool {}: {problem}", fresh.name));
            }
            if fresh.overrides != before {
                changed_overrides.push(key.clone());
            }
            next.push((was.get(&key).copied(), reshaped, fresh));
        }
        next.sort_by_key(|(place, _, _)| place.unwrap_or(PoolId::MAX));
        for (i, (place, reshaped, pool)) in next.into_iter().enumerate() {
            if changed_overrides.contains(&key_of_pool(&pool)) {
                out.overrides_changed.push(i);
            }
            if place.is_none() {
                out.added.push(i);
            } else if reshaped {
                out.reshaped.push(i);
            }
            self.recent.push(recent.remove(&key_of_pool(&pool)).unwrap_or_default());
            self.pools.push(pool);
        }
        // Pool ids follow the new table: every pool is looked at again.
        self.next = vec![Some(now.instant); self.pools.len()];
        let mut removed: Vec<PoolState> = old.into_values().collect();
        removed.sort_by_key(|p| was.get(&key_of_pool(p)).copied());
        // What the group decided for a pool gone or reshaped no longer stands.
        for p in &removed {
            self.group.forget(&p.key);
        }
        for &i in &out.reshaped {
            let key = self.pools[i].key.clone();
            self.group.forget(&key);
        }
        out.removed = removed;
        self.reindex();
        out
    }

    /// Pool `pool` and its recent reports, for a dry run (see `replay`).
    pub fn replayable(&self, pool: &str) -> Result<(PoolState, Recent), TableError> {
        let i = self.resolve(pool)?;
        Ok((self.pools[i].clone(), self.recent.get(i).cloned().unwrap_or_default()))
    }

    /// Takes `addresses` as pool `id`'s last answer (served before a restart).
    pub fn restore_last_known(&mut self, id: PoolId, addresses: Vec<IpAddr>) {
        if let Some(p) = self.pools.get_mut(id) {
            p.last_known = addresses;
        }
    }

    /// Applies pool `id`'s policy; `None` while an operator holds it
    /// paused. In a group, the group's decision where it made one.
    pub fn decide(&mut self, id: PoolId, now: Instant) -> Option<Decision> {
        let p = self.pools.get_mut(id)?;
        if p.paused {
            // Frozen: only resuming it changes its answer.
            if let Some(n) = self.next.get_mut(id) {
                *n = None;
            }
            return None;
        }
        let own = p.decide(now);
        if let Some(n) = self.next.get_mut(id) {
            *n = p.next_change(now);
        }
        Some(self.group.filter(&p.key, own))
    }

    /// Applies pool `id`'s policy even while it is paused (its answer's
    /// shape changed, so the old answer cannot stand).
    pub fn decide_anyway(&mut self, id: PoolId, now: Instant) -> Option<Decision> {
        let p = self.pools.get_mut(id)?;
        let own = p.decide(now);
        if let Some(n) = self.next.get_mut(id) {
            *n = p.next_change(now);
        }
        Some(self.group.filter(&p.key, own))
    }

    /// What the other authorities of a group see of member `member` of
    /// pool `pool` (see `MemberState::remote`); the pool, if that changed.
    pub fn set_remote(&mut self, pool: &str, member: &str, seen: Option<bool>) -> Option<PoolId> {
        let i = self.find(pool)?;
        let m = self.pools[i].member_mut(member)?;
        if m.remote == seen {
            return None;
        }
        m.remote = seen;
        Some(i)
    }

    /// Each reported member's own view (see `MemberState::own_view`): pool
    /// key, member id, view.
    pub fn own_views(&self, now: Instant) -> impl Iterator<Item = (&LowerName, &std::sync::Arc<str>, Option<bool>)> + '_ {
        self.pools.iter().flat_map(move |p| {
            p.members.iter().filter(|m| m.reported_at.is_some()).map(move |m| (&p.key, &m.id, m.own_view(now, p.stale_after)))
        })
    }

    /// Serves the group's decisions from now on (see `group`).
    pub fn join_group(&mut self) {
        self.group.join();
    }

    /// The group decided pool `id`: `decide` answers this from now on.
    pub fn impose(&mut self, id: PoolId, d: Decision) {
        if let Some(p) = self.pools.get(id) {
            self.group.impose(&p.key, d);
        }
    }

    /// This authority's own decisions that changed since the last call,
    /// by pool id (for the group's decider to commit).
    pub fn take_offers(&mut self) -> Vec<(PoolId, Decision)> {
        let offers = self.group.take_due();
        offers.into_iter().filter_map(|(k, d)| self.find(&k.to_string()).map(|i| (i, d))).collect()
    }

    /// Decides every pool not paused, and makes every own decision due
    /// (a new decider offers the group all of them).
    pub fn offer_all(&mut self, now: Instant) {
        for i in 0..self.pools.len() {
            self.decide(i, now);
        }
        self.group.all_due();
    }

    /// Pools that time alone may have changed by `now` (see
    /// `PoolState::next_change`): a member's report gone stale, a
    /// lifetime or maintenance window, shares stepping or ramping, metrics
    /// waiting for their step, an adaptive TTL. Each `decide` says when
    /// its pool is next due, so a tick costs a look per pool, not a
    /// decision per pool.
    pub fn due(&self, now: Instant) -> impl Iterator<Item = PoolId> + '_ {
        self.next.iter().enumerate().filter(move |(_, n)| n.is_some_and(|t| t <= now)).map(|(i, _)| i)
    }

    /// Every server of pool `id` in service, most preferred first.
    pub fn order(&self, id: PoolId, now: Instant) -> Vec<IpAddr> {
        self.pools.get(id).map(|p| p.order(now)).unwrap_or_default()
    }

    /// Pool `id`'s members as operators see them, given the addresses its
    /// answer holds now and their shares (empty unless drawn by shares).
    pub fn members_status(&self, id: PoolId, answer: &[IpAddr], shares: &[f64], now: Instant) -> Vec<MemberStatus> {
        let Some(p) = self.pools.get(id) else { return Vec::new() };
        let shares: HashMap<IpAddr, f64> = answer.iter().copied().zip(shares.iter().copied()).collect();
        let order = p.order(now);
        p.members
            .iter()
            .map(|m| MemberStatus {
                id: m.id.to_string(),
                address: m.address,
                state: m.state(now, p.stale_after).to_owned(),
                admin: m.admin,
                weight: m.weight,
                load: m.metrics.load,
                in_answer: answer.contains(&m.address) && shares.get(&m.address).is_none_or(|s| *s > 0.0),
                metrics: m.metrics.pairs().map(|(k, v)| (k.to_owned(), v)).chain(m.custom.iter().map(|(k, v)| (k.clone(), *v))).collect(),
                score: policy::score(p.policy, p.formula.as_deref(), m),
                rank: if m.eligible(now, p.stale_after) {
                    order.iter().position(|a| *a == m.address).map(|i| i as u32 + 1).unwrap_or(0)
                } else {
                    0
                },
                report_age: m.reported_at.map(|t| now.saturating_duration_since(t)),
                share: p.shares().then(|| shares.get(&m.address).copied().unwrap_or(0.0)),
                views: {
                    let mut v: Vec<_> = m.views.iter().map(|v| (v.source.to_string(), v.up, now.saturating_duration_since(v.at))).collect();
                    v.sort_by_key(|(_, _, age)| *age);
                    v
                },
            })
            .collect()
    }

    /// The operator's notes on pool `id`'s members, to keep with its zone.
    pub fn notes(&self, id: PoolId) -> impl Iterator<Item = (std::sync::Arc<str>, &'static str, u32)> + '_ {
        self.pools.get(id).into_iter().flat_map(|p| p.members.iter().map(|m| (m.id.clone(), m.admin.as_str(), m.weight)))
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
