//! The replicated monitor's member table: every pool, its members, their
//! latest reports, the operator's word on them and the ring's deaths. Pure:
//! time is passed in. The authority's updater and a farm monitor each keep
//! one. Every change says which pools it touched, so only those are
//! decided again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::LowerName;

use super::replay::{self, Recent, Recorded};
use super::{AdminState, Decision, MemberState, Overrides, PoolState, Report, ReportError, View, policy};
use crate::clock::Now;
use crate::config::formula::Formula;
use crate::config::{MemberConfig, PolicyName, PoolConfig};

/// A pool's place in the table; stable until the next `reconfigure`.
pub type PoolId = usize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no pool named {0}")]
    NoPool(String),
    #[error("pool {pool} has no member {id}")]
    NoMember { pool: String, id: String },
    #[error("pool {pool} already has a member {id}")]
    MemberExists { pool: String, id: String },
    #[error("pool {0} cannot lose its last member")]
    LastMember(String),
    #[error("{0}")]
    Invalid(String),
}

/// Operator changes to a pool while it serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Policy(PolicyName),
    /// A formula for the formula policy.
    Formula(String),
    Pause(bool),
    AddMember {
        id: String,
        address: IpAddr,
        weight: u32,
    },
    RemoveMember {
        id: String,
    },
    /// An override of a member's state or weight.
    Member {
        id: String,
        admin: Option<AdminState>,
        weight: Option<u32>,
    },
    /// Every override the API made: back to the configuration.
    Clear,
    /// The pool as configured with exactly these overrides (the group's,
    /// from the shared state): what no longer applies is dropped.
    Replace(Overrides),
}

/// Applies `change` to pool `p` (named `name` by the caller), recording it
/// in the pool's overrides.
fn apply(p: &mut PoolState, dead: &[IpAddr], name: &str, change: Change, now: Now) -> Result<(), TableError> {
    let no_member = |id: &str| TableError::NoMember { pool: name.to_owned(), id: id.to_owned() };
    match change {
        Change::Policy(PolicyName::Formula) if p.formula.is_none() => {
            return Err(TableError::Invalid(format!("pool {name} has no formula; give one first")));
        }
        Change::Policy(policy) => {
            p.policy = policy;
            p.overrides.set_policy(policy);
        }
        Change::Formula(text) => {
            p.formula = Some(Arc::new(Formula::parse(&text).map_err(TableError::Invalid)?));
            p.overrides.set_formula(text);
        }
        Change::Pause(paused) => {
            p.paused = paused;
            p.overrides.set_paused(paused);
        }
        Change::AddMember { id, address, weight } => {
            if p.position(&id).is_some() {
                return Err(TableError::MemberExists { pool: name.to_owned(), id });
            }
            if let Some(other) = p.members.iter().find(|m| m.address == address) {
                return Err(TableError::Invalid(format!("address {address} is already member {}'s in pool {name}", other.id)));
            }
            add_member(p, dead, &id, address, weight, None, now);
            p.overrides.add(&id, address, weight);
        }
        Change::RemoveMember { id } => {
            let at = p.position(&id).ok_or_else(|| no_member(&id))?;
            if p.members.len() == 1 {
                return Err(TableError::LastMember(name.to_owned()));
            }
            p.remove_at(at);
            p.overrides.remove(&id);
        }
        Change::Member { id, admin, weight } => {
            let m = p.member_mut(&id).ok_or_else(|| no_member(&id))?;
            m.admin = admin.unwrap_or(m.admin);
            m.weight = weight.unwrap_or(m.weight);
            let configured = p.config.members.iter().find(|c| c.id == id).map(|c| c.weight);
            p.overrides.set_member(&id, admin, weight, configured);
        }
        Change::Clear => {
            let mut fresh = PoolState::from_config(&p.config, now);
            carry(&mut fresh, p, dead);
            *p = fresh;
        }
        Change::Replace(o) => {
            let mut fresh = PoolState::from_config(&p.config, now);
            carry(&mut fresh, p, dead);
            // What no longer applies is dropped from the pool's overrides;
            // the authority that made the change said so when it was made.
            let _dropped = lay(&mut fresh, &o, Some(p), dead, now);
            *p = fresh;
        }
    }
    Ok(())
}

/// Adds member `id`, with what `known` knew of it when it had it.
fn add_member(p: &mut PoolState, dead: &[IpAddr], id: &str, address: IpAddr, weight: u32, known: Option<&PoolState>, now: Now) {
    let config = MemberConfig {
        id: id.to_owned(),
        address: Some(address),
        farm: None,
        weight,
        capacity: None,
        until: None,
        maintenance: Vec::new(),
    };
    let mut member = MemberState::from_config(&config, now);
    if let Some(k) = known.and_then(|k| k.members.iter().find(|m| &*m.id == id)) {
        member = MemberState { address, weight, admin: AdminState::Auto, ..k.clone() };
    }
    member.ring_dead = dead.contains(&address);
    p.members.push(member);
    p.reindex();
}

/// Gives `fresh` (a pool as configured) what was reported about the
/// members it shares with `known`, its last answer and its counters; the
/// operator's word is not carried (the overrides bring it back).
fn carry(fresh: &mut PoolState, known: &PoolState, dead: &[IpAddr]) {
    for new in &mut fresh.members {
        if let Some(k) = known.members.iter().find(|m| m.id == new.id) {
            let address = if new.address.is_unspecified() { k.address } else { new.address };
            // A farm entity's address comes from its farm's reports.
            *new = MemberState { address, admin: AdminState::Auto, ..k.clone() }.with_schedule_of(new);
        }
    }
    mark_dead(fresh, dead);
    fresh.last_known = known.last_known.clone();
    fresh.counters = known.counters.clone();
    fresh.reindex();
}

/// Marks the members of `pool` whose host the ring says is dead.
fn mark_dead(pool: &mut PoolState, dead: &[IpAddr]) {
    for m in &mut pool.members {
        m.ring_dead = dead.contains(&m.address);
    }
}

/// The overrides `o` without the settings an edit of the configuration
/// changed from `was` to `now`: the latest word on a setting wins.
fn superseded(mut o: Overrides, was: &PoolConfig, now: &PoolConfig) -> Overrides {
    if was.policy != now.policy {
        o.policy = None;
    }
    if was.formula != now.formula {
        o.formula = None;
    }
    let weight = |c: &PoolConfig, id: &str| c.members.iter().find(|m| m.id == id).map(|m| m.weight);
    for (id, m) in &mut o.members {
        if weight(was, id) != weight(now, id) {
            m.weight = None;
        }
    }
    o.members.retain(|_, m| m.admin.is_some() || m.weight.is_some());
    o
}

/// Replays `o` over pool `p` as configured; what no longer applies is
/// dropped from the pool's overrides and said.
fn lay(p: &mut PoolState, o: &Overrides, known: Option<&PoolState>, dead: &[IpAddr], now: Now) -> Vec<String> {
    let mut kept = Overrides::default();
    let mut problems = Vec::new();
    for id in &o.removed {
        match p.position(id) {
            Some(at) if p.members.len() > 1 => {
                p.remove_at(at);
                kept.removed.insert(id.clone());
            }
            Some(_) => problems.push(format!("member {id} is its last member and stays (its removal is dropped)")),
            None => {} // no longer configured: nothing to remove
        }
    }
    for (id, a) in &o.added {
        if p.position(id).is_some() {
            problems.push(format!("member {id} is now configured; the copy the API added is dropped"));
            continue;
        }
        add_member(p, dead, id, a.address, a.weight, known, now);
        kept.added.insert(id.clone(), a.clone());
    }
    if let Some(text) = &o.formula {
        match Formula::parse(text) {
            Ok(f) => {
                p.formula = Some(Arc::new(f));
                kept.formula = Some(text.clone());
            }
            Err(e) => problems.push(format!("formula {text}: {e} (dropped)")),
        }
    }
    match o.policy {
        Some(PolicyName::Formula) if p.formula.is_none() => problems.push("policy formula without a formula (dropped)".into()),
        Some(policy) => {
            p.policy = policy;
            kept.policy = Some(policy);
        }
        None => {}
    }
    p.paused = o.paused;
    kept.paused = o.paused;
    for (id, mo) in &o.members {
        match p.member_mut(id) {
            Some(m) => {
                m.admin = mo.admin.unwrap_or(AdminState::Auto);
                if let Some(w) = mo.weight {
                    m.weight = w;
                }
                kept.members.insert(id.clone(), mo.clone());
            }
            None => problems.push(format!("member {id} is gone; its override is dropped")),
        }
    }
    p.overrides = kept;
    problems
}

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
    pub fn notes(&self, id: PoolId) -> Vec<(String, BTreeMap<&'static str, String>)> {
        let Some(p) = self.pools.get(id) else { return Vec::new() };
        p.members
            .iter()
            .map(|m| (m.id.to_string(), BTreeMap::from([("admin", m.admin.as_str().into()), ("weight", m.weight.to_string())])))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pool::Metrics;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn configs(text: &str) -> Vec<PoolConfig> {
        Config::from_toml(text).unwrap().pool
    }

    const TWO: &str = r#"
[[pool]]
name = "www.example."
policy = "least-loaded"
select = "best"
stale_after = "3s"
members = [ { id = "a", address = "127.0.0.1" }, { id = "b", address = "127.0.0.2" } ]

[[pool]]
name = "db.example."
policy = "priority"
fallback = "servfail"
members = [ { id = "p", address = "127.0.1.1" }, { id = "farm1", farm = "east" } ]
"#;

    fn report(pool: &str, member: &str, up: bool, load: f64) -> Report {
        Report {
            pool: pool.into(),
            member: member.into(),
            up,
            metrics: Metrics { load: Some(load), ..Metrics::default() },
            custom: BTreeMap::new(),
            age: Duration::ZERO,
            check: "test".into(),
            addresses: Vec::new(),
            source: "test".into(),
        }
    }

    fn start() -> (Table, Now) {
        let now = Now::read();
        (Table::new(&configs(TWO), now), now)
    }

    #[test]
    fn a_refused_change_leaves_the_pool_as_it_was() {
        let (mut t, now) = start();
        let before = format!("{:?}", t.pools()[0]);
        for change in [
            Change::Policy(PolicyName::Formula),
            Change::Formula("load +* 2".into()),
            Change::Member { id: "nobody".into(), admin: Some(AdminState::Down), weight: None },
            Change::AddMember { id: "a".into(), address: ip("127.0.0.9"), weight: 1 },
            Change::AddMember { id: "c".into(), address: ip("127.0.0.2"), weight: 1 },
            Change::RemoveMember { id: "nobody".into() },
        ] {
            assert!(t.change("www.example.", change.clone(), now).is_err(), "{change:?}");
            assert_eq!(format!("{:?}", t.pools()[0]), before, "{change:?} changed the pool");
        }
        t.change("www.example.", Change::Member { id: "a".into(), admin: Some(AdminState::Down), weight: None }, now).unwrap();
        assert_eq!(t.pools()[0].members[0].admin, AdminState::Down);
    }

    #[test]
    fn pools_are_found_in_any_case_with_or_without_the_final_dot() {
        let (t, _) = start();
        assert_eq!(t.find("www.example."), Some(0));
        assert_eq!(t.find("WWW.Example"), Some(0));
        assert_eq!(t.find("db.example"), Some(1));
        assert_eq!(t.find("example."), None);
    }

    #[test]
    fn a_batch_is_stored_whole_or_refused_whole() {
        let (mut t, now) = start();
        let bad = vec![report("www.example.", "a", true, 0.9), report("www.example.", "nobody", true, 0.1)];
        assert_eq!(
            t.absorb(bad, now.instant),
            Err(ReportError::NoMember { index: 1, pool: "www.example.".into(), member: "nobody".into() })
        );
        assert!(t.pools()[0].members[0].health.is_none(), "nothing from a refused batch is stored");
        let bad = vec![report("www.example.", "a", true, 0.9), report("nope.example.", "a", true, 0.1)];
        assert!(matches!(t.absorb(bad, now.instant), Err(ReportError::NoPool { index: 1, .. })));
        let mut with_address = report("www.example.", "a", true, 0.1);
        with_address.addresses = vec![ip("127.0.9.9")];
        assert!(matches!(t.absorb(vec![with_address], now.instant), Err(ReportError::NotFarm { index: 0, .. })));

        let good =
            vec![report("WWW.example", "a", true, 0.9), report("www.example.", "b", true, 0.1), report("db.example.", "p", true, 0.5)];
        let got = t.absorb(good, now.instant).unwrap();
        assert_eq!(got, Absorbed { count: 3, pools: vec![0, 1], ports_moved: vec![], urgent: vec![] });
        assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.2")], "least loaded first");
        // Metrics alone are not urgent; a member leaving service or full is.
        let urgent = |t: &mut Table, r| t.absorb(vec![r], now.instant).unwrap().urgent;
        assert_eq!(urgent(&mut t, report("www.example.", "b", true, 0.3)), Vec::<PoolId>::new());
        assert_eq!(urgent(&mut t, report("www.example.", "b", false, 0.3)), vec![0], "down");
        assert_eq!(urgent(&mut t, report("www.example.", "b", true, 0.3)), vec![0], "back up");
        assert_eq!(urgent(&mut t, report("www.example.", "b", true, 1.5)), vec![0], "full");
    }

    #[test]
    fn reports_go_stale_and_the_member_leaves_until_the_next_one() {
        let (mut t, now) = start();
        t.absorb(vec![report("www.example.", "a", true, 0.1), report("www.example.", "b", true, 0.5)], now.instant).unwrap();
        for i in 0..t.pools().len() {
            t.decide(i, now.instant);
        }
        assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.1")]);
        let later = now.after(Duration::from_secs(2));
        t.absorb(vec![report("www.example.", "b", true, 0.5)], later.instant).unwrap();
        let stale = now.instant + Duration::from_millis(3_001);
        assert_eq!(t.due(now.instant + Duration::from_millis(2_900)).count(), 0, "nothing changes before a's report goes stale");
        assert_eq!(t.due(stale).collect::<Vec<_>>(), vec![0], "only pools with reports change with time");
        assert_eq!(t.decide(0, stale).unwrap().addresses, vec![ip("127.0.0.2")], "a's report is older than stale_after");
        assert_eq!(t.members_status(0, &[], &[], stale)[0].state, "unknown (stale)");
        t.absorb(vec![report("www.example.", "a", true, 0.1)], stale).unwrap();
        assert_eq!(t.decide(0, stale).unwrap().addresses, vec![ip("127.0.0.1")]);
        // A report observed long ago counts from when it was observed.
        let mut old = report("www.example.", "b", true, 0.0);
        old.age = Duration::from_secs(10);
        t.absorb(vec![old], stale).unwrap();
        assert!(!t.pools()[0].members[1].eligible(stale, Duration::from_secs(3)));
    }

    /// A pool of one member `a` with `quorum` (TOML, or "" for none), and
    /// a way to hear vantage point `from` say `up` at `at` seconds.
    fn quorum_pool(quorum: &str) -> (Table, impl Fn(&mut Table, &str, bool, u64) -> String) {
        let now = Now::read();
        let text = format!(
            "[[pool]]\nname = \"q.example.\"\npolicy = \"priority\"\n{quorum}\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }} ]\n"
        );
        let t0 = now.instant;
        let hear = move |t: &mut Table, from: &str, up: bool, at: u64| {
            let mut r = report("q.example.", "a", up, 0.0);
            r.source = from.into();
            let at = t0 + Duration::from_secs(at);
            t.absorb(vec![r], at).unwrap();
            t.members_status(0, &[], &[], at)[0].state.clone()
        };
        (Table::new(&configs(&text), now), hear)
    }

    #[test]
    fn without_a_quorum_the_last_word_decides() {
        let (mut t, hear) = quorum_pool("");
        assert_eq!(hear(&mut t, "m1", true, 0), "up");
        assert_eq!(hear(&mut t, "m2", false, 0), "down");
        assert_eq!(hear(&mut t, "m1", true, 1), "up");
        let s = t.members_status(0, &[], &[], t.pools()[0].members[0].reported_at.unwrap());
        assert_eq!(s[0].views.iter().map(|(who, up, _)| (who.as_str(), *up)).collect::<Vec<_>>(), [("m1", true), ("m2", false)]);
    }

    #[test]
    fn a_quorum_of_vantage_points_takes_a_member_out_and_brings_it_back() {
        let (mut t, hear) = quorum_pool("quorum = 2");
        assert_eq!(hear(&mut t, "m1", false, 0), "up (no quorum yet)", "one word is not a quorum");
        assert_eq!(hear(&mut t, "m2", true, 0), "up (no quorum yet)");
        assert_eq!(hear(&mut t, "m3", true, 0), "up");
        // One vantage point loses it: its partial view changes nothing.
        assert_eq!(hear(&mut t, "m1", false, 1), "up");
        assert!(t.pools()[0].members[0].eligible(t.pools()[0].members[0].reported_at.unwrap(), t.pools()[0].stale_after));
        // A second one does: down.
        assert_eq!(hear(&mut t, "m2", false, 1), "down");
        // One says up again: two of three see it (m3 is still fresh).
        assert_eq!(hear(&mut t, "m1", true, 2), "up");
        // Views older than stale_after (3 s) do not vote: m2's down and
        // m1's up from before are gone by second 6, so m3's lone word
        // cannot move it.
        assert_eq!(hear(&mut t, "m3", false, 6), "up");
        assert_eq!(hear(&mut t, "m2", false, 6), "down");
    }

    #[test]
    fn a_majority_counts_the_vantage_points_heard_and_forgets_retired_ones() {
        let (mut t, hear) = quorum_pool("quorum = \"majority\"");
        for m in ["m1", "m2", "m3", "m4", "m5"] {
            hear(&mut t, m, true, 0);
        }
        assert_eq!(hear(&mut t, "m1", false, 1), "up");
        assert_eq!(hear(&mut t, "m2", false, 1), "up", "two of five is no majority");
        assert_eq!(hear(&mut t, "m3", false, 1), "down", "three of five is");
        // m3, m4 and m5 retire: silent for ten times stale_after, they are
        // forgotten, and m1 and m2 make a majority of two.
        hear(&mut t, "m1", true, 32);
        assert_eq!(hear(&mut t, "m2", true, 32), "up");
        assert_eq!(t.pools()[0].members[0].views.len(), 2);
    }

    #[test]
    fn quorum_is_a_count_or_majority() {
        let parse = |q: &str| {
            Config::from_toml(&format!(
                "[[pool]]\nname = \"q.example.\"\nquorum = {q}\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }} ]\n"
            ))
            .map(|c| c.pool[0].quorum)
        };
        assert_eq!(parse("2").unwrap(), Some(crate::config::Quorum::Count(2)));
        assert_eq!(parse("\"majority\"").unwrap(), Some(crate::config::Quorum::Majority));
        for bad in ["0", "33", "\"most\"", "-1", "1.5"] {
            assert!(parse(bad).is_err(), "quorum = {bad}");
        }
    }

    #[test]
    fn fallbacks_decide_when_every_member_is_out() {
        let text = |fallback: &str, answers: u32| {
            format!(
                "[[pool]]\nname = \"x.example.\"\npolicy = \"priority\"\nanswers = {answers}\nfallback = \"{fallback}\"\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }}, {{ id = \"b\", address = \"127.0.0.2\" }} ]\n"
            )
        };
        let now = Now::read();
        let all_down = |t: &mut Table| {
            t.absorb(vec![report("x.example.", "a", false, 0.0), report("x.example.", "b", false, 0.0)], now.instant).unwrap();
            t.decide(0, now.instant).unwrap()
        };
        let mut t = Table::new(&configs(&text("servfail", 1)), now);
        assert_eq!(all_down(&mut t), Decision::plain(vec![], false, true, 5));
        let mut t = Table::new(&configs(&text("all", 1)), now);
        assert_eq!(all_down(&mut t).addresses, vec![ip("127.0.0.1"), ip("127.0.0.2")], "all means every member");
        let mut t = Table::new(&configs(&text("last-known", 1)), now);
        t.absorb(vec![report("x.example.", "a", false, 0.0)], now.instant).unwrap();
        assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.2")]);
        assert_eq!(all_down(&mut t).addresses, vec![ip("127.0.0.2")], "the last answer given");
        let mut t = Table::new(&configs(&text("last-known", 1)), now);
        assert_eq!(all_down(&mut t).addresses, vec![ip("127.0.0.1")], "never answered: the first members");
    }

    #[test]
    fn lifetimes_and_maintenance_windows_follow_the_virtual_clock() {
        let text = r#"
[[pool]]
name = "x.example."
policy = "priority"
members = [ { id = "a", address = "127.0.0.1", until = "2030-01-01T00:00:10Z" },
            { id = "b", address = "127.0.0.2", maintenance = [ { from = "2030-01-01T00:00:00Z", until = "2030-01-01T00:00:20Z" } ] } ]
"#;
        let wall = crate::config::parse_time("2030-01-01T00:00:00Z").unwrap();
        let now = Now { instant: Instant::now(), wall };
        let mut t = Table::new(&configs(text), now);
        assert_eq!(t.due(now.instant).count(), 1, "every pool is looked at once");
        t.decide(0, now.instant);
        let next: Vec<Instant> = (0..25).map(|s| now.after(Duration::from_secs(s)).instant).filter(|&at| t.due(at).count() > 0).collect();
        assert_eq!(
            next.first().copied(),
            Some(now.after(Duration::from_secs(10)).instant),
            "due when a's lifetime ends (b's window opened at once)"
        );
        let at = |s| now.after(Duration::from_secs(s)).instant;
        assert_eq!(t.decide(0, at(1)).unwrap().addresses, vec![ip("127.0.0.1")], "b is in maintenance");
        assert_eq!(t.decide(0, at(15)).unwrap().addresses, vec![ip("127.0.0.1")], "a expired; nobody left: last known");
        assert_eq!(t.members_status(0, &[], &[], at(15))[0].state, "expired");
        assert_eq!(t.decide(0, at(21)).unwrap().addresses, vec![ip("127.0.0.2")], "b's window is over");
    }

    #[test]
    fn a_farm_entity_answers_where_its_farm_says() {
        let (mut t, now) = start();
        t.absorb(vec![report("db.example.", "p", false, 0.0)], now.instant).unwrap();
        assert!(t.decide(1, now.instant).unwrap().servfail, "the entity has no address yet");
        let mut farm = report("db.example.", "farm1", true, 0.2);
        farm.addresses = vec![ip("10.9.0.1"), ip("10.9.0.2")];
        t.absorb(vec![farm], now.instant).unwrap();
        assert_eq!(t.decide(1, now.instant).unwrap().addresses, vec![ip("10.9.0.1")]);
    }

    #[test]
    fn ring_deaths_take_members_out_at_once_and_stick_to_new_members() {
        let (mut t, now) = start();
        assert_eq!(t.set_ring_dead(vec![ip("127.0.0.1")]), vec![0]);
        assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.2")]);
        assert_eq!(t.members_status(0, &[], &[], now.instant)[0].state, "dead (ring)");
        assert_eq!(t.set_ring_dead(vec![ip("127.0.0.1")]), Vec::<PoolId>::new(), "nothing new");
        t.change("www.example.", Change::AddMember { id: "c".into(), address: ip("127.0.1.1"), weight: 1 }, now).unwrap();
        t.set_ring_dead(vec![ip("127.0.0.1"), ip("127.0.1.1")]);
        t.change("db.example.", Change::Member { id: "p".into(), admin: Some(AdminState::Up), weight: None }, now).unwrap();
        assert!(t.decide(1, now.instant).unwrap().servfail, "admin up does not raise the dead");
        assert_eq!(t.set_ring_dead(vec![]), vec![0, 1]);
        assert_eq!(t.decide(1, now.instant).unwrap().addresses, vec![ip("127.0.1.1")]);
    }

    #[test]
    fn operator_changes_are_checked() {
        let (mut t, now) = start();
        let add = |id: &str| Change::AddMember { id: id.into(), address: ip("127.0.0.9"), weight: 3 };
        assert_eq!(t.change("nope.", Change::Pause(true), now), Err(TableError::NoPool("nope.".into())));
        assert_eq!(t.change("www.example.", add("a"), now), Err(TableError::MemberExists { pool: "www.example.".into(), id: "a".into() }));
        assert_eq!(t.change("www.example.", add("c"), now), Ok(0));
        assert_eq!(t.pools()[0].members[2].weight, 3);
        let again = t.change("www.example.", add("d"), now);
        assert!(matches!(&again, Err(TableError::Invalid(m)) if m.contains("already member c's")), "{again:?}");
        assert!(matches!(t.change("www.example.", Change::Policy(PolicyName::Formula), now), Err(TableError::Invalid(_))));
        assert!(matches!(t.change("www.example.", Change::Formula("load +".into()), now), Err(TableError::Invalid(_))));
        t.change("www.example.", Change::Formula("load * 2".into()), now).unwrap();
        t.change("www.example.", Change::Policy(PolicyName::Formula), now).unwrap();
        for id in ["a", "b"] {
            t.change("www.example.", Change::RemoveMember { id: id.into() }, now).unwrap();
        }
        assert_eq!(
            t.change("www.example.", Change::RemoveMember { id: "c".into() }, now),
            Err(TableError::LastMember("www.example.".into()))
        );
        assert_eq!(
            t.change("www.example.", Change::RemoveMember { id: "a".into() }, now),
            Err(TableError::NoMember { pool: "www.example.".into(), id: "a".into() })
        );
        t.change("www.example.", Change::Pause(true), now).unwrap();
        assert_eq!(t.decide(0, now.instant), None, "a paused pool keeps its answer");
        assert_eq!(t.decide_anyway(0, now.instant).unwrap().addresses, vec![ip("127.0.0.9")]);
        assert_eq!(t.notes(0), vec![("c".to_owned(), BTreeMap::from([("admin", "auto".to_owned()), ("weight", "3".to_owned())]))]);
    }

    #[test]
    fn a_moved_port_is_told_even_when_nothing_else_changes() {
        let (mut t, now) = start();
        let with_port = |port: f64| {
            let mut r = report("www.example.", "a", true, 0.1);
            r.custom.insert("tcp_port".into(), port);
            r
        };
        assert_eq!(t.absorb(vec![with_port(1433.0)], now.instant).unwrap().ports_moved, vec![0]);
        assert_eq!(t.absorb(vec![with_port(1433.0)], now.instant).unwrap().ports_moved, Vec::<PoolId>::new());
        assert_eq!(t.absorb(vec![with_port(1434.0)], now.instant).unwrap().ports_moved, vec![0]);
    }

    #[test]
    fn reconfiguration_keeps_what_was_reported_and_set() {
        let (mut t, now) = start();
        t.absorb(vec![report("www.example.", "a", true, 0.7), report("www.example.", "b", true, 0.2)], now.instant).unwrap();
        t.change("www.example.", Change::Member { id: "a".into(), admin: Some(AdminState::Drain), weight: Some(5) }, now).unwrap();
        t.change("www.example.", Change::Pause(true), now).unwrap();
        t.set_ring_dead(vec![ip("127.0.0.3")]);
        let edited = r#"
[[pool]]
name = "new.example."
members = [ { id = "n", address = "127.0.2.1" } ]

[[pool]]
name = "www.example."
policy = "priority"
answers = 2
members = [ { id = "a", address = "127.0.0.1", weight = 9 }, { id = "c", address = "127.0.0.3" } ]
"#;
        let r = t.reconfigure(&configs(edited), now);
        assert_eq!(r.removed.iter().map(|p| p.name.to_string()).collect::<Vec<_>>(), vec!["db.example."]);
        assert_eq!((r.added.clone(), r.reshaped.clone()), (vec![1], vec![0]), "kept pools first, then new ones");
        assert_eq!(t.find("www.example."), Some(0));
        assert_eq!(t.find("new.example."), Some(1));
        assert_eq!(t.find("db.example."), None);
        let www = &t.pools()[0];
        assert_eq!(www.policy, PolicyName::Priority);
        assert!(www.paused, "still paused");
        let a = &www.members[0];
        assert_eq!(
            (a.admin, a.weight, a.metrics.load),
            (AdminState::Drain, 9, Some(0.7)),
            "override and reports kept, weight from the file (edited there after the API set it)"
        );
        assert_eq!(www.overrides.members["a"].weight, None, "the edit took the weight back from the API");
        assert!(www.members[1].ring_dead, "a new member the ring knows is dead starts dead");
        assert!(t.find("WWW.EXAMPLE").is_some());
        let r = t.reconfigure(&configs(edited), now);
        assert!(r.removed.is_empty() && r.added.is_empty() && r.reshaped.is_empty(), "the same file changes nothing");
    }
}
