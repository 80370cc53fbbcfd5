//! Pools (virtual names): their members, each member's administrative and
//! reported state, and the decision of what the name answers now.

mod change;
pub mod group;
mod member;
pub mod overrides;
pub mod policy;
pub mod replay;
pub mod report;
pub mod saved;
pub mod share;
pub mod table;

pub use member::{AdminState, MemberState, Metrics, View};
pub use overrides::Overrides;
pub use report::{Report, ReportError};
pub use saved::SavedPool;
pub use table::{Table, TableError};

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::{LowerName, Name};

use crate::clock::Now;
use crate::config::formula::Formula;

use crate::config::{Fallback, PolicyName, PoolConfig, Quorum, Select};
use share::{Shaping, Spread};

/// How soon a pool whose answers move continuously with time (shares
/// ramping or on their way, an adaptive TTL) is decided again.
const SOON: Duration = Duration::from_millis(250);

/// Pools with more members than this keep a map of them by id.
const INDEXED_FROM: usize = 16;

/// What a pool answers now.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub addresses: Vec<IpAddr>,
    pub rotate: bool,
    pub servfail: bool,
    /// Every address in each answer, whatever the pool's `answers`
    /// (`fallback = "all"`).
    pub every: bool,
    /// Each address's share of the answers, in `addresses`' order; empty
    /// when the first `answers` addresses are answered (or rotated).
    pub shares: Vec<f64>,
    pub ttl: u32,
}

impl Decision {
    /// An answer of `addresses` without shares.
    pub fn plain(addresses: Vec<IpAddr>, rotate: bool, servfail: bool, ttl: u32) -> Self {
        Self { addresses, rotate, servfail, every: false, shares: Vec::new(), ttl }
    }
}

#[derive(Debug, Clone)]
pub struct PoolState {
    pub name: Name,
    /// The name as DNS compares it (lower case), the pool's key everywhere.
    pub key: LowerName,
    pub policy: PolicyName,
    pub answers: usize,
    pub ttl: u32,
    pub fallback: Fallback,
    pub stale_after: Duration,
    pub members: Vec<MemberState>,
    /// The last non-empty answer, for `fallback = "last-known"`.
    pub last_known: Vec<IpAddr>,
    /// Paused by an operator: the answer stays as it is.
    pub paused: bool,
    /// What the API changed, apart from the configuration.
    pub overrides: Overrides,
    /// The pool as configured, for when the overrides are cleared.
    pub config: std::sync::Arc<PoolConfig>,
    pub formula: Option<std::sync::Arc<Formula>>,
    pub smoothing: f64,
    pub select: Select,
    pub shaping: Shaping,
    /// The metric members' capacity is in.
    pub capacity_metric: Option<String>,
    /// Adaptive TTL bounds.
    pub ttl_range: Option<(u32, u32)>,
    /// How many vantage points decide a member's health.
    pub quorum: Option<Quorum>,
    /// The shares served and what moves them.
    pub spread: Spread,
    /// The addresses of the last answer, to tell when it moved (adaptive TTL).
    moved: Option<(Vec<IpAddr>, Instant)>,
    /// Metrics were reported since the last decision (under shares they
    /// are taken at the next step).
    pub metrics_moved: bool,
    /// Responses given for the pool's name, kept across answers.
    pub counters: std::sync::Arc<crate::metrics::PoolCounters>,
    /// Member id → index in `members`; a hint, checked on every use.
    index: std::collections::HashMap<std::sync::Arc<str>, usize>,
}

impl PoolState {
    /// A pool as configured, with nothing reported yet. A name the
    /// configuration check let through always parses; the root stands in
    /// for one that does not, so no input panics here.
    pub fn from_config(c: &PoolConfig, now: Now) -> Self {
        let mut name = Name::from_ascii(&c.name).unwrap_or_else(|_| Name::root());
        name.set_fqdn(true);
        Self {
            key: LowerName::from(&name),
            name,
            policy: c.policy,
            answers: c.answers,
            ttl: c.ttl,
            fallback: c.fallback,
            stale_after: c.stale_after,
            members: c.members.iter().map(|m| MemberState::from_config(m, now)).collect(),
            last_known: Vec::new(),
            paused: false,
            overrides: Overrides::default(),
            config: std::sync::Arc::new(c.clone()),
            formula: c.formula.clone().map(std::sync::Arc::new),
            smoothing: c.smoothing(),
            select: c.select,
            shaping: Shaping { slow_start: c.slow_start, max_shift: c.max_shift, margin: c.margin, step: c.step },
            capacity_metric: c.capacity_metric().map(str::to_owned),
            ttl_range: c.ttl_min.zip(c.ttl_max),
            quorum: c.quorum,
            spread: Spread::default(),
            moved: None,
            metrics_moved: false,
            counters: Default::default(),
            index: Default::default(),
        }
        .reindexed()
    }

    /// Rebuilds the member index after members were added or removed.
    pub fn reindexed(mut self) -> Self {
        self.reindex();
        self
    }

    /// A pool of a few members is searched instead: a map for each of
    /// 100,000 small pools costs more than looking through two members.
    pub fn reindex(&mut self) {
        self.index = if self.members.len() > INDEXED_FROM {
            self.members.iter().enumerate().map(|(i, m)| (m.id.clone(), i)).collect()
        } else {
            Default::default()
        };
    }

    /// Where member `id` is in `members`.
    pub fn position(&self, id: &str) -> Option<usize> {
        match self.index.get(id) {
            Some(&i) if self.members.get(i).is_some_and(|m| &*m.id == id) => Some(i),
            _ => self.members.iter().position(|m| &*m.id == id),
        }
    }

    /// Every member in service, most preferred first (empty when none is).
    pub fn order(&self, now: Instant) -> Vec<IpAddr> {
        let live: Vec<&MemberState> = self.members.iter().filter(|m| m.eligible(now, self.stale_after)).collect();
        policy::order(self.policy, self.formula.as_deref(), &live).into_iter().map(|i| live[i].address).collect()
    }

    /// This pool as if nothing had been reported or served yet (what a
    /// dry run replays reports into).
    pub fn reset_reports(&mut self) {
        for m in &mut self.members {
            m.health = None;
            m.metrics = Metrics::default();
            m.custom.clear();
            m.reported_at = None;
        }
        self.spread = Spread::default();
        self.last_known.clear();
        self.moved = None;
        self.paused = false;
    }

    /// Takes the member at `at` out, and out of the last answer.
    pub fn remove_at(&mut self, at: usize) {
        let gone = self.members.remove(at);
        self.reindex();
        self.last_known.retain(|a| *a != gone.address);
    }

    pub fn member_mut(&mut self, id: &str) -> Option<&mut MemberState> {
        let i = self.position(id)?;
        Some(&mut self.members[i])
    }

    /// Whether the pool's answers are drawn by shares.
    pub fn shares(&self) -> bool {
        self.selects() == Select::Shares
    }

    /// How the answers are chosen in effect: round-robin rotates, so it
    /// never draws by shares whatever `select` says.
    pub fn selects(&self) -> Select {
        if self.policy == PolicyName::RoundRobin { Select::Best } else { self.select }
    }

    /// Whether member `m` is at or above its capacity: it gets no new clients.
    pub fn is_full(&self, m: &MemberState) -> bool {
        match (m.capacity, &self.capacity_metric) {
            (Some(c), Some(metric)) => m.metric(metric).is_some_and(|v| v >= c),
            // A load is a fraction of the member's capacity.
            _ => self.policy == PolicyName::LeastLoaded && m.metrics.load.is_some_and(|l| l >= 1.0),
        }
    }

    /// Whether a member's metrics alone can wait for the next decision:
    /// under shares they move the answers only once per `step`, so a pool
    /// is decided again for them by time (`Table::timed`), not per report.
    pub fn defers_metrics(&self) -> bool {
        self.shares()
    }

    /// When time alone may next change this pool's decision: a member's
    /// schedule or staleness, the next step of shares on their way or of
    /// metrics waiting for it, an adaptive TTL (`None`: only events do).
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let members = self.members.iter().filter_map(|m| m.next_change(now, self.stale_after)).min();
        let moving = (self.ttl_range.is_some() || (self.shares() && self.spread.unsettled())).then_some(now + SOON);
        let waiting = (self.shares() && self.metrics_moved).then(|| self.spread.next_step(now, self.shaping.step));
        [members, moving, waiting].into_iter().flatten().min()
    }

    /// Applies the policy to the members in service.
    pub fn decide(&mut self, now: Instant) -> Decision {
        self.metrics_moved = false;
        let mut d = self.decide_members(now);
        d.ttl = self.ttl_now(&d, now);
        d
    }

    /// The TTL to answer `d` with: the pool's, or with `ttl_min`/`ttl_max`
    /// the adaptive one (short while the answer or its shares move).
    fn ttl_now(&mut self, d: &Decision, now: Instant) -> u32 {
        let Some((min, max)) = self.ttl_range else { return self.ttl };
        if self.moved.as_ref().is_none_or(|(a, _)| *a != d.addresses) {
            self.moved = Some((d.addresses.clone(), now));
        }
        let answer_held = self.moved.as_ref().map(|(_, t)| now.saturating_duration_since(*t)).unwrap_or_default();
        let held = if d.shares.is_empty() { answer_held } else { answer_held.min(self.spread.stable_for(now)) };
        share::adaptive_ttl(min, max, held)
    }

    fn decide_members(&mut self, now: Instant) -> Decision {
        let live: Vec<&MemberState> = self.members.iter().filter(|m| m.eligible(now, self.stale_after)).collect();
        let rotate = self.policy == PolicyName::RoundRobin;
        if live.is_empty() {
            return match self.fallback {
                Fallback::Servfail => Decision::plain(Vec::new(), false, true, self.ttl),
                // Every member the operator has not taken out, all at once.
                Fallback::All => Decision {
                    every: true,
                    ..Decision::plain(
                        self.members
                            .iter()
                            .filter(|m| !matches!(m.admin, AdminState::Down | AdminState::Drain))
                            .map(|m| m.address)
                            .filter(|a| !a.is_unspecified())
                            .collect(),
                        false,
                        false,
                        self.ttl,
                    )
                },
                Fallback::LastKnown if !self.last_known.is_empty() => Decision::plain(self.last_known.clone(), rotate, false, self.ttl),
                Fallback::LastKnown => Decision::plain(
                    self.members.iter().map(|m| m.address).filter(|a| !a.is_unspecified()).take(self.answers).collect(),
                    rotate,
                    false,
                    self.ttl,
                ),
            };
        }
        if self.shares() {
            let ids: Vec<std::sync::Arc<str>> = live.iter().map(|m| m.id.clone()).collect();
            // Priority is active/standby: it never splits, so nothing ramps
            // or steps; the first member in service that is not full takes all.
            let shaping = if self.policy == PolicyName::Priority {
                Shaping { slow_start: Duration::ZERO, max_shift: 1.0, step: Duration::ZERO, ..self.shaping }
            } else {
                self.shaping
            };
            let ramp = self.spread.ramp(now, &ids, shaping.slow_start);
            let (policy, known) = share::shares_known(self.policy, self.formula.as_deref(), &live);
            let held = self.spread.hold(&ids, &policy, &known, self.shaping.margin);
            let full: Vec<bool> = live.iter().map(|m| self.is_full(m)).collect();
            let target = share::ramped(self.policy, &held, &share::gates(&ramp, &full));
            let served = self.spread.step(now, &ids, &target, &full, &shaping);
            // Members with a share lead answers; with answers > 1 the rest
            // (a priority pool's standbys, full members) follow them.
            let follow = self.answers > 1;
            let (addresses, shares): (Vec<IpAddr>, Vec<f64>) =
                live.iter().zip(served).filter(|(_, s)| *s > 0.0 || follow).map(|(m, s)| (m.address, s)).unzip();
            self.last_known = addresses.clone();
            return Decision { shares, ..Decision::plain(addresses, false, false, self.ttl) };
        }
        let take = if rotate { live.len() } else { self.answers };
        let best = policy::best(self.policy, self.formula.as_deref(), &live, take);
        let addresses: Vec<IpAddr> = best.iter().map(|&i| live[i].address).collect();
        self.last_known = addresses.clone();
        Decision::plain(addresses, rotate, false, self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool(fallback: &str) -> PoolState {
        let c = Config::from_toml(&format!(
            "[[pool]]\nname = \"www.example.\"\nselect = \"best\"\nfallback = \"{fallback}\"\nmembers = [{{ id = \"a\", address = \"127.0.0.1\" }}, {{ id = \"b\", address = \"127.0.0.2\" }}]\n"
        ))
        .unwrap();
        PoolState::from_config(&c.pool[0], Now::read())
    }

    #[test]
    fn admin_down_leaves_and_fallback_decides_when_all_are_down() {
        let now = Instant::now();
        let mut p = pool("servfail");
        assert_eq!(p.decide(now).addresses, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        p.member_mut("a").unwrap().admin = AdminState::Down;
        assert_eq!(p.decide(now).addresses, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        p.member_mut("b").unwrap().admin = AdminState::Down;
        assert!(p.decide(now).servfail);

        let mut p = pool("last-known");
        p.decide(now);
        p.member_mut("a").unwrap().admin = AdminState::Down;
        p.member_mut("b").unwrap().admin = AdminState::Down;
        assert_eq!(p.decide(now).addresses, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn fallback_all_gives_every_member_not_taken_out_by_hand_in_each_answer() {
        let now = Instant::now();
        let c = Config::from_toml(
            "[[pool]]\nname = \"www.example.\"\nfallback = \"all\"\nanswers = 1\npolicy = \"round-robin\"\nmembers = [\n\
             { id = \"a\", address = \"127.0.0.1\" }, { id = \"b\", address = \"127.0.0.2\" }, { id = \"c\", address = \"127.0.0.3\" } ]\n",
        )
        .unwrap();
        let mut p = PoolState::from_config(&c.pool[0], Now::read());
        let live = p.decide(now);
        assert!(!live.every && live.rotate, "{live:?}");
        for m in &mut p.members {
            m.health = Some(false);
            m.reported_at = Some(now);
        }
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let all = p.decide(now);
        assert_eq!(all.addresses, vec![ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")]);
        assert!(all.every && !all.rotate && !all.servfail, "{all:?}");
        // Taken out by hand (down, or draining): not given even then.
        p.member_mut("b").unwrap().admin = AdminState::Down;
        p.member_mut("c").unwrap().admin = AdminState::Drain;
        assert_eq!(p.decide(now).addresses, vec![ip("127.0.0.1")]);
    }

    #[test]
    fn lifetimes_and_maintenance_windows_take_members_out_on_time() {
        let c = Config::from_toml(
            "[[pool]]\nname = \"www.example.\"\nmembers = [\n\
             { id = \"a\", address = \"127.0.0.1\", until = \"2030-01-01T00:00:10Z\" },\n\
             { id = \"b\", address = \"127.0.0.2\", maintenance = [ { from = \"2030-01-01T00:00:05Z\", until = \"2030-01-01T00:00:20Z\" } ] } ]\n",
        )
        .unwrap();
        let wall = crate::config::parse_time("2030-01-01T00:00:00Z").unwrap();
        let t0 = Instant::now();
        let mut p = PoolState::from_config(&c.pool[0], Now { instant: t0, wall });
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(p.order(at(1)).len(), 2);
        assert_eq!(p.members[1].state(at(6), p.stale_after), "maintenance");
        assert_eq!(p.order(at(6)), vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.members[0].state(at(11), p.stale_after), "expired");
        assert!(p.order(at(11)).is_empty());
        assert_eq!(p.order(at(21)), vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.decide(at(21)).addresses, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn smoothing_blends_new_metrics_with_the_past() {
        let now = Instant::now();
        let mut p = pool("all");
        let m = &mut p.members[0];
        let load = |l| Metrics { load: Some(l), ..Default::default() };
        m.absorb(true, load(1.0), Default::default(), 0.75, now);
        assert_eq!(m.metrics.load, Some(1.0), "the first value is taken as it is");
        m.absorb(true, load(0.0), [("queue".to_owned(), 8.0)].into(), 0.75, now);
        assert_eq!(m.metrics.load, Some(0.75));
        m.absorb(true, load(0.0), [("queue".to_owned(), 0.0)].into(), 0.75, now);
        assert_eq!((m.metrics.load, m.metric("queue")), (Some(0.5625), Some(6.0)));
        m.absorb(false, load(0.2), Default::default(), 0.0, now);
        assert_eq!((m.metrics.load, m.health), (Some(0.2), Some(false)), "no smoothing: the new value");
    }

    #[test]
    fn stale_reports_make_a_member_unknown() {
        let t0 = Instant::now();
        let mut p = pool("all");
        let m = p.member_mut("a").unwrap();
        m.health = Some(true);
        m.reported_at = Some(t0);
        assert!(p.members[0].eligible(t0 + Duration::from_secs(1), p.stale_after));
        assert!(!p.members[0].eligible(t0 + Duration::from_secs(4), p.stale_after));
        assert_eq!(p.members[0].state(t0 + Duration::from_secs(4), p.stale_after), "unknown (stale)");
    }

    fn shared(extra: &str, members: &str) -> PoolState {
        let c = Config::from_toml(&format!("[[pool]]\nname = \"www.example.\"\n{extra}\nmembers = [ {members} ]\n")).unwrap();
        PoolState::from_config(&c.pool[0], Now::read())
    }

    fn report(p: &mut PoolState, id: &str, up: bool, metrics: Metrics, at: Instant) {
        p.member_mut(id).unwrap().absorb(up, metrics, Default::default(), 0.0, at);
    }

    fn share_of(d: &Decision, addr: &str) -> f64 {
        let a: IpAddr = addr.parse().unwrap();
        d.addresses.iter().position(|x| *x == a).map(|i| d.shares[i]).unwrap_or(0.0)
    }

    const THREE: &str = "{ id = \"a\", address = \"127.0.0.1\", weight = 2 }, { id = \"b\", address = \"127.0.0.2\" }, { id = \"c\", address = \"127.0.0.3\", weight = 1 }";

    #[test]
    fn weighted_members_share_the_answers_in_proportion() {
        let mut p = shared("policy = \"weighted\"", THREE);
        let d = p.decide(Instant::now());
        assert_eq!(d.addresses.len(), 3, "every member in service is in the answer");
        assert!((share_of(&d, "127.0.0.1") - 0.5).abs() < 1e-9, "{d:?}");
        assert!((share_of(&d, "127.0.0.2") - 0.25).abs() < 1e-9, "{d:?}");
        let mut best = shared("policy = \"weighted\"\nselect = \"best\"", THREE);
        let d = best.decide(Instant::now());
        assert_eq!((d.addresses.len(), d.shares.len()), (1, 0), "best: the heaviest only");
    }

    #[test]
    fn a_member_back_from_down_ramps_to_its_share_within_slow_start_and_two_steps() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = shared("policy = \"weighted\"\nslow_start = \"10s\"\nstale_after = \"1h\"", THREE);
        let up = Metrics::default();
        for id in ["a", "b", "c"] {
            report(&mut p, id, true, up, at(0));
        }
        assert!((share_of(&p.decide(at(0)), "127.0.0.1") - 0.5).abs() < 1e-9);
        report(&mut p, "a", false, up, at(1));
        let d = p.decide(at(1));
        assert_eq!(share_of(&d, "127.0.0.1"), 0.0, "down: out at once");
        assert!((share_of(&d, "127.0.0.2") - 0.5).abs() < 1e-9, "{d:?}");
        report(&mut p, "a", true, up, at(5));
        let mut seen = Vec::new();
        for s in 5..=17 {
            seen.push(share_of(&p.decide(at(s)), "127.0.0.1"));
        }
        assert!(seen[0] < 0.1, "it starts small: {seen:?}");
        assert!(seen.windows(2).all(|w| w[1] >= w[0] - 1e-9), "and only grows: {seen:?}");
        assert!(seen.windows(2).all(|w| w[1] - w[0] <= 0.2 + 1e-9), "by at most max_shift a step: {seen:?}");
        assert!((seen[12] - 0.5).abs() < 1e-9, "full share by slow_start + 2 steps: {seen:?}");
    }

    #[test]
    fn a_member_at_capacity_gets_no_new_clients_and_the_rest_take_them() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let members =
            "{ id = \"a\", address = \"127.0.0.1\", capacity = 100.0 }, { id = \"b\", address = \"127.0.0.2\", capacity = 100.0 }";
        let no_metric = format!("[[pool]]\nname = \"www.example.\"\npolicy = \"priority\"\nmembers = [ {members} ]\n");
        assert!(Config::from_toml(&no_metric).is_err(), "priority has no metric of its own to be full in");
        let mut p2 = shared("policy = \"priority\"\ncapacity_metric = \"connections\"\nstale_after = \"1h\"", members);
        let conns = |n: f64| Metrics { connections: Some(n), ..Default::default() };
        report(&mut p2, "a", true, conns(100.0), at(0));
        report(&mut p2, "b", true, conns(10.0), at(0));
        let d = p2.decide(at(0));
        assert_eq!(share_of(&d, "127.0.0.2"), 1.0, "the first is full: it spills over to the next: {d:?}");
        // Below capacity again: the first in line takes back over, all at
        // once (priority is active/standby: it never splits).
        report(&mut p2, "a", true, conns(50.0), at(1));
        assert_eq!(share_of(&p2.decide(at(1)), "127.0.0.1"), 1.0);
        // Everyone full: the policy shares as if nobody were.
        report(&mut p2, "b", true, conns(150.0), at(7));
        report(&mut p2, "a", true, conns(150.0), at(7));
        assert_eq!(share_of(&p2.decide(at(7)), "127.0.0.1"), 1.0);
    }

    #[test]
    fn least_loaded_shares_follow_spare_capacity_and_a_noisy_metric_moves_nothing() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let two = "{ id = \"a\", address = \"127.0.0.1\" }, { id = \"b\", address = \"127.0.0.2\" }";
        let mut p = shared("stale_after = \"1h\"", two);
        assert_eq!(p.smoothing, 0.5, "shares smooth by default");
        let load = |l: f64| Metrics { load: Some(l), ..Default::default() };
        report(&mut p, "a", true, load(0.2), at(0));
        report(&mut p, "b", true, load(0.6), at(0));
        let d = p.decide(at(0));
        assert!((share_of(&d, "127.0.0.1") - 2.0 / 3.0).abs() < 1e-9, "spare capacity 0.8 against 0.4: {d:?}");
        report(&mut p, "a", true, load(0.25), at(1));
        assert_eq!(p.decide(at(1)), d, "within the margin: the same answer");
        report(&mut p, "b", true, load(0.9), at(2));
        let moved = p.decide(at(2));
        assert!((share_of(&moved, "127.0.0.2") - (1.0 / 3.0 - 0.2)).abs() < 1e-9, "capped at max_shift: {moved:?}");
        let there = p.decide(at(3));
        assert!((share_of(&there, "127.0.0.2") - 0.1 / 0.85).abs() < 1e-9, "then the rest: {there:?}");
        assert_eq!(shared("select = \"best\"", two).smoothing, 0.0, "best follows each report");
    }

    #[test]
    fn the_ttl_is_short_while_shares_move_and_grows_while_they_hold() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = shared("policy = \"weighted\"\nttl_min = 5\nttl_max = 40", THREE);
        assert_eq!(p.decide(at(0)).ttl, 5);
        assert_eq!(p.decide(at(5)).ttl, 10);
        assert_eq!(p.decide(at(15)).ttl, 20);
        assert_eq!(p.decide(at(100)).ttl, 40);
        p.member_mut("c").unwrap().admin = AdminState::Down;
        assert_eq!(p.decide(at(101)).ttl, 5, "the answer moved");
        let mut fixed = shared("policy = \"weighted\"\nttl = 7", THREE);
        assert_eq!(fixed.decide(at(100)).ttl, 7);
    }
}
