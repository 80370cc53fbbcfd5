//! Dry runs: the recent reports each pool received, kept in a bounded
//! buffer, and their replay against a pool as it is or with another
//! policy, second by second on the reports' own clock. Pure: nothing here
//! touches what is served.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Decision, Metrics, PoolState};
use crate::config::formula::Formula;
use crate::config::{PolicyName, Select};

/// How far back the buffer reaches at most.
pub const KEPT_FOR: Duration = Duration::from_secs(600);
/// Reports kept across all pools; each pool keeps at least `POOL_FLOOR`.
pub const KEPT_MAX: usize = 100_000;
pub const POOL_FLOOR: usize = 600;

/// One report as the pool took it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub at: Instant,
    pub member: Arc<str>,
    /// The vantage point that saw it.
    pub source: Arc<str>,
    pub up: bool,
    pub metrics: Metrics,
    pub custom: BTreeMap<String, f64>,
}

/// A pool's recent reports, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    reports: VecDeque<Recorded>,
}

impl Recent {
    /// Keeps `r`, dropping reports older than `KEPT_FOR` and the oldest
    /// beyond `cap`.
    pub fn keep(&mut self, r: Recorded, cap: usize) {
        let now = r.at;
        self.reports.push_back(r);
        while self.reports.front().is_some_and(|o| now.saturating_duration_since(o.at) > KEPT_FOR) || self.reports.len() > cap.max(1) {
            self.reports.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Recorded> {
        self.reports.iter()
    }
}

/// What a policy would have done with the recent reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub policy: PolicyName,
    /// How the answers were chosen in effect (see `PoolState::selects`).
    pub select: Select,
    /// Each second's share of the answers per member (in the pool's
    /// member order), from the first report on.
    pub seconds: Vec<Vec<f64>>,
    /// How many times the answer (or its shares) changed.
    pub changes: usize,
    /// The largest share any member had, and whose.
    pub peak: Option<(Arc<str>, f64)>,
}

/// The policy to try: `None` fields keep the pool's own.
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    pub policy: Option<PolicyName>,
    pub formula: Option<Arc<Formula>>,
    pub select: Option<Select>,
}

/// What pool `pool` did with its `recent` reports, and what it would have
/// done with `proposal`: both replayed from scratch, so they compare on
/// equal terms. Changes nothing.
pub fn dry_run(pool: &PoolState, recent: &Recent, proposal: &Proposal) -> Result<(Timeline, Timeline), String> {
    if proposal.policy == Some(PolicyName::Formula) && proposal.formula.is_none() && pool.formula.is_none() {
        return Err(format!("pool {} has no formula; give one with the proposal", pool.name));
    }
    Ok((replay(pool, recent, &Proposal::default()), replay(pool, recent, proposal)))
}

/// Each member's share of the answers decision `d` gives.
fn shares_of(pool: &PoolState, d: &Decision) -> Vec<f64> {
    let given: Vec<(std::net::IpAddr, f64)> = if d.servfail {
        Vec::new()
    } else if !d.shares.is_empty() {
        d.addresses.iter().copied().zip(d.shares.iter().copied()).collect()
    } else {
        // Rotated answers share equally; otherwise the first ones lead.
        let lead = if d.rotate || d.every { d.addresses.len() } else { 1 };
        d.addresses.iter().take(lead.max(1)).map(|a| (*a, 1.0 / lead.max(1) as f64)).collect()
    };
    // A fold from 0.0: an empty f64 sum is -0.0, which prints as such.
    pool.members.iter().map(|m| given.iter().filter(|(a, _)| *a == m.address).fold(0.0, |t, (_, s)| t + s)).collect()
}

/// Replays `recent` against `pool` as configured now, with `proposal`
/// applied: a fresh copy of the pool (nothing reported, nothing served)
/// takes the reports in order and decides once per second.
pub fn replay(pool: &PoolState, recent: &Recent, proposal: &Proposal) -> Timeline {
    let mut p = pool.clone();
    p.reset_reports();
    if let Some(f) = &proposal.formula {
        p.formula = Some(f.clone());
    }
    p.policy = proposal.policy.unwrap_or(p.policy);
    p.select = proposal.select.unwrap_or(p.select);
    let mut out = Timeline { policy: p.policy, select: p.selects(), seconds: Vec::new(), changes: 0, peak: None };
    // In the order observed (monitors' reports may arrive out of it).
    let mut ordered: Vec<&Recorded> = recent.iter().collect();
    ordered.sort_by_key(|r| r.at);
    let (Some(start), Some(end)) = (ordered.first().map(|r| r.at), ordered.last().map(|r| r.at)) else { return out };
    let mut reports = ordered.into_iter().peekable();
    let mut last: Option<Decision> = None;
    let mut t = start;
    loop {
        while let Some(r) = reports.next_if(|r| r.at <= t) {
            let (smoothing, quorum, stale_after) = (p.smoothing, p.quorum, p.stale_after);
            if let Some(m) = p.member_mut(&r.member) {
                let health = m.health;
                m.absorb(r.up, r.metrics, r.custom.clone(), smoothing, r.at);
                m.vote(super::View { source: r.source.clone(), up: r.up, at: r.at }, health, quorum, stale_after, r.at);
            }
        }
        let d = p.decide(t);
        let shares = shares_of(&p, &d);
        for (m, s) in p.members.iter().zip(&shares) {
            if out.peak.as_ref().is_none_or(|(_, peak)| s > peak) {
                out.peak = Some((m.id.clone(), *s));
            }
        }
        if last.as_ref().is_some_and(|l| *l != d) {
            out.changes += 1;
        }
        last = Some(d);
        out.seconds.push(shares);
        if t >= end {
            break;
        }
        t += Duration::from_secs(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Now;
    use crate::config::Config;

    fn pool(extra: &str) -> PoolState {
        let c = Config::from_toml(&format!(
            "[[pool]]\nname = \"www.example.\"\n{extra}\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }}, {{ id = \"b\", address = \"127.0.0.2\", weight = 3 }} ]\n"
        ))
        .unwrap();
        PoolState::from_config(&c.pool[0], Now::read())
    }

    fn recorded(at: Instant, member: &str, load: f64) -> Recorded {
        Recorded {
            at,
            member: member.into(),
            source: "m".into(),
            up: true,
            metrics: Metrics { load: Some(load), ..Metrics::default() },
            custom: BTreeMap::new(),
        }
    }

    /// Loads that swap every second between a and b, for `secs` seconds.
    fn seesaw(t0: Instant, secs: u64) -> Recent {
        let mut r = Recent::default();
        for s in 0..secs {
            let at = t0 + Duration::from_secs(s);
            let (la, lb) = if s % 2 == 0 { (0.2, 0.8) } else { (0.8, 0.2) };
            r.keep(recorded(at, "a", la), 1000);
            r.keep(recorded(at, "b", lb), 1000);
        }
        r
    }

    #[test]
    fn a_seesawing_load_flips_the_best_answer_every_second_and_weights_hold_still() {
        let t0 = Instant::now();
        let recent = seesaw(t0, 10);
        let live = pool("policy = \"least-loaded\"\nselect = \"best\"");
        let as_is = replay(&live, &recent, &Proposal::default());
        assert_eq!((as_is.policy, as_is.select, as_is.seconds.len()), (PolicyName::LeastLoaded, Select::Best, 10));
        assert_eq!(as_is.changes, 9, "the winner flips each second");
        assert_eq!(as_is.peak.as_ref().map(|(_, s)| *s), Some(1.0));
        let weighted =
            replay(&live, &recent, &Proposal { policy: Some(PolicyName::Weighted), select: Some(Select::Shares), ..Proposal::default() });
        assert_eq!(weighted.changes, 0);
        assert_eq!(weighted.seconds[5], vec![0.25, 0.75]);
        assert_eq!(weighted.peak, Some((Arc::from("b"), 0.75)));
        assert_eq!(live.policy, PolicyName::LeastLoaded, "the pool itself is untouched");
        assert!(live.members[0].reported_at.is_none());
    }

    #[test]
    fn the_buffer_keeps_ten_minutes_and_at_most_its_cap() {
        let t0 = Instant::now();
        let mut r = Recent::default();
        for s in 0..700 {
            r.keep(recorded(t0 + Duration::from_secs(s), "a", 0.1), 10_000);
        }
        assert_eq!(r.len(), 601, "ten minutes, both ends in");
        for s in 700..720 {
            r.keep(recorded(t0 + Duration::from_secs(s), "a", 0.1), 5);
        }
        assert_eq!(r.len(), 5);
        assert!(replay(&pool(""), &Recent::default(), &Proposal::default()).seconds.is_empty());
    }
}
