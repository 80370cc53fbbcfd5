//! Operator changes to a pool while it serves, applied to a copy of the
//! pool: a member's admin state or weight, the policy, pausing, members
//! added and removed, the API's overrides laid over a pool as configured
//! (and taken back where a configuration edit changed the same setting).
//! Pure; the table stages and puts them in place.

use std::net::IpAddr;
use std::sync::Arc;

use super::{AdminState, MemberState, Overrides, PoolState};
use crate::clock::Now;
use crate::config::formula::Formula;
use crate::config::{MemberConfig, PolicyName, PoolConfig};

/// Why a change to the table is refused.
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
pub(super) fn apply(p: &mut PoolState, dead: &[IpAddr], name: &str, change: Change, now: Now) -> Result<(), TableError> {
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
pub(super) fn carry(fresh: &mut PoolState, known: &PoolState, dead: &[IpAddr]) {
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
pub(super) fn mark_dead(pool: &mut PoolState, dead: &[IpAddr]) {
    for m in &mut pool.members {
        m.ring_dead = dead.contains(&m.address);
    }
}

/// The overrides `o` without the settings an edit of the configuration
/// changed from `was` to `now`: the latest word on a setting wins.
pub(super) fn superseded(mut o: Overrides, was: &PoolConfig, now: &PoolConfig) -> Overrides {
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
pub(super) fn lay(p: &mut PoolState, o: &Overrides, known: Option<&PoolState>, dead: &[IpAddr], now: Now) -> Vec<String> {
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
