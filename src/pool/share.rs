//! Shares instead of winners: what fraction of new clients each member of
//! a pool should get, from its policy's metric, and the steps that keep
//! shares from stampeding: a slow start for a member that comes back, a
//! cap on how far a share moves per interval, a margin a metric must beat
//! before shares move at all, and a schedule that turns shares into the
//! order answers are cycled in. Pure: time is passed in, no I/O.
//!
//! How each policy's metric becomes a weight (then normalised to sum 1);
//! `weight` is the member's configured weight, its size relative to the
//! others:
//!
//! | policy | weight of a member |
//! |---|---|
//! | least-loaded | spare capacity, `weight × max(0, 1 - load)` |
//! | fewest-connections, fewest-pending | `weight / (1 + count)` |
//! | fastest | `weight / max(1, response_ms)` |
//! | closest | `weight / (1 + distance)` |
//! | throughput | `weight × throughput` (more is better) |
//! | formula | `weight / (1 + max(0, value))` (lower is better) |
//! | weighted | `weight` |
//! | priority | all on the first member in service that is not full (it never splits) |
//! | round-robin | equal |
//!
//! A member whose metric is not reported gets the mean weight of those
//! that are, so that silence neither wins nor loses; with none reported,
//! shares follow the weights.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MemberState;
use crate::config::PolicyName;
use crate::config::formula::Formula;

/// The share of a member coming back when its slow start begins.
pub const SLOW_START_FLOOR: f64 = 0.1;

/// Each eligible member's share (summing to 1; empty for no members).
pub fn shares(policy: PolicyName, formula: Option<&Formula>, members: &[&MemberState]) -> Vec<f64> {
    shares_known(policy, formula, members).0
}

/// `shares`, and which members' metric the policy had (the others were
/// given the mean): shares taken from unknown metrics, as at start-up,
/// are a placeholder, not the policy's word (see `Spread::hold`).
pub fn shares_known(policy: PolicyName, formula: Option<&Formula>, members: &[&MemberState]) -> (Vec<f64>, Vec<bool>) {
    if members.is_empty() {
        return (Vec::new(), Vec::new());
    }
    if policy == PolicyName::Priority {
        let mut s = vec![0.0; members.len()];
        s[0] = 1.0;
        return (s, vec![true; members.len()]);
    }
    let size = |m: &MemberState| if policy == PolicyName::RoundRobin { 1.0 } else { f64::from(m.weight) };
    let metric = |m: &MemberState| -> Option<f64> {
        let w = match policy {
            PolicyName::LeastLoaded => (1.0 - m.metrics.load?).max(0.0),
            PolicyName::FewestConnections => 1.0 / (1.0 + m.metrics.connections?),
            PolicyName::FewestPending => 1.0 / (1.0 + m.metrics.pending?),
            PolicyName::Fastest => 1.0 / m.metrics.response_ms?.max(1.0),
            PolicyName::Closest => 1.0 / (1.0 + m.metrics.distance?),
            PolicyName::Throughput => m.metrics.throughput?,
            PolicyName::Formula => 1.0 / (1.0 + formula?.eval(|n| m.metric(n))?.max(0.0)),
            PolicyName::Weighted | PolicyName::RoundRobin | PolicyName::Priority => 1.0,
        };
        w.is_finite().then_some(w.max(0.0))
    };
    let raw: Vec<Option<f64>> = members.iter().map(|m| metric(m)).collect();
    let known: Vec<f64> = raw.iter().flatten().copied().collect();
    let mean = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    let reported = raw.iter().map(Option::is_some).collect();
    (normalised(raw.into_iter().zip(members).map(|(w, m)| w.unwrap_or(mean) * size(m)).collect()), reported)
}

/// `shares` with each member's factor applied: its slow start (from
/// `Spread::ramp`), or 0 for a member at capacity (see `gates`). A member
/// ramping up gets that fraction of its share, and the rest goes to the
/// others (under `priority`, down the line: a full member spills over to
/// the next).
pub fn ramped(policy: PolicyName, shares: &[f64], ramp: &[f64]) -> Vec<f64> {
    let factor = |i: usize| ramp.get(i).copied().unwrap_or(1.0);
    if policy == PolicyName::Priority {
        let mut s = vec![0.0; shares.len()];
        let mut left = 1.0;
        for (i, share) in s.iter_mut().enumerate() {
            let f = if i + 1 == shares.len() { 1.0 } else { factor(i) };
            *share = left * f;
            left -= *share;
            if left <= 0.0 {
                break;
            }
        }
        return s;
    }
    let r: Vec<f64> = shares.iter().enumerate().map(|(i, s)| s * factor(i)).collect();
    // Members that all ramp still share.
    if r.iter().sum::<f64>() > 0.0 { normalised(r) } else { shares.to_vec() }
}

/// `w` scaled to sum 1; equal shares when it sums to nothing.
pub fn normalised(w: Vec<f64>) -> Vec<f64> {
    let total: f64 = w.iter().sum();
    if total > 0.0 && total.is_finite() {
        w.into_iter().map(|x| x / total).collect()
    } else {
        let n = w.len().max(1) as f64;
        vec![1.0 / n; w.len()]
    }
}

/// How much of its share a member that came back `since` ago may have:
/// from `SLOW_START_FLOOR` up to all of it, linearly over `ramp`.
pub fn slow_start(since: Duration, ramp: Duration) -> f64 {
    if ramp.is_zero() || since >= ramp {
        return 1.0;
    }
    SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * since.as_secs_f64() / ramp.as_secs_f64()
}

/// Moves shares from `prev` towards `next`, no member's by more than
/// `max_shift` (a fraction, 0.2 = 20 points), except that a member marked
/// `out` (full: it must get no new clients) goes to its target at once.
/// The result sums to 1: what the cap holds back goes to the members in
/// proportion to their room. `prev`, `next` and `out` are for the same
/// members, in the same order.
pub fn capped(prev: &[f64], next: &[f64], max_shift: f64, out: &[bool]) -> Vec<f64> {
    if prev.len() != next.len() || max_shift >= 1.0 {
        return next.to_vec();
    }
    let fixed = |i: usize| out.get(i).copied().unwrap_or(false);
    let next: Vec<f64> = next.iter().enumerate().map(|(i, n)| if fixed(i) { 0.0 } else { *n }).collect();
    let mut out: Vec<f64> = prev
        .iter()
        .zip(&next)
        .enumerate()
        .map(|(i, (&p, &n))| if fixed(i) { 0.0 } else { n.clamp(p - max_shift, p + max_shift).max(0.0) })
        .collect();
    // Renormalise without undoing the cap more than it must: scale the
    // members that may still move towards their target.
    for _ in 0..8 {
        let total: f64 = out.iter().sum();
        let gap = 1.0 - total;
        if gap.abs() < 1e-12 {
            break;
        }
        let room: Vec<f64> = out
            .iter()
            .zip(prev)
            .enumerate()
            .map(|(i, (&o, &p))| {
                if fixed(i) {
                    0.0
                } else if gap > 0.0 {
                    (p + max_shift - o).max(0.0)
                } else {
                    (o - (p - max_shift).max(0.0)).max(0.0)
                }
            })
            .collect();
        let free: f64 = room.iter().sum();
        if free <= 0.0 {
            return normalised(out);
        }
        let take = (gap.abs() / free).min(1.0);
        for (o, r) in out.iter_mut().zip(&room) {
            *o += gap.signum() * r * take;
        }
    }
    normalised(out)
}

/// Keeps `prev` unless some member's share in `next` differs from it by
/// more than `margin` of it (relative: 0.1 = a tenth of the share): a
/// noisy metric does not move shares.
pub fn damped(prev: &[f64], next: &[f64], margin: f64) -> Vec<f64> {
    let moved =
        prev.len() != next.len() || prev.iter().zip(next).any(|(p, n)| (p - n).abs() > margin * p.max(*n) || (*n == 0.0) != (*p == 0.0));
    if moved { next.to_vec() } else { prev.to_vec() }
}

/// A cycle of `slots` member indices in which each member appears in
/// proportion to its share, spread out: stride scheduling, each member
/// next due one stride (`total / share`) after its last turn, the
/// earliest due first (ties to the lower index). Each member's first turn
/// falls at its own point of its first stride (a golden-ratio sequence),
/// so members with the same share take turns across the cycle instead of
/// all at once. O(slots log members): a pool of ten thousand members is
/// scheduled in milliseconds.
pub fn schedule(shares: &[f64], slots: usize) -> Vec<usize> {
    use std::cmp::{Ordering, Reverse};
    use std::collections::BinaryHeap;

    /// When a member is next due, and which.
    #[derive(PartialEq)]
    struct Due(f64, usize);
    impl Eq for Due {}
    impl Ord for Due {
        fn cmp(&self, other: &Self) -> Ordering {
            self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    let total: f64 = shares.iter().filter(|s| **s > 0.0).sum();
    let mut out = Vec::with_capacity(slots);
    if total <= 0.0 {
        return out;
    }
    let stride = |i: usize| total / shares[i];
    // Spread evenly over (0, 1) for any number of members.
    let phase = |i: usize| ((i as f64 + 1.0) * 0.618_033_988_749_894_9).fract();
    let mut due: BinaryHeap<Reverse<Due>> =
        shares.iter().enumerate().filter(|(_, s)| **s > 0.0).map(|(i, _)| Reverse(Due(stride(i) * phase(i), i))).collect();
    for _ in 0..slots {
        let Some(Reverse(Due(at, i))) = due.pop() else { break };
        out.push(i);
        due.push(Reverse(Due(at + stride(i), i)));
    }
    out
}

/// Each member's factor for `ramped`: its slow start, or 0 when it is at
/// or above its capacity (`full`) and it gets no new clients until it
/// drops below. When every member is full, capacity is set aside: the
/// load has to go somewhere.
pub fn gates(ramp: &[f64], full: &[bool]) -> Vec<f64> {
    if full.iter().all(|f| *f) {
        return ramp.to_vec();
    }
    ramp.iter().zip(full).map(|(r, f)| if *f { 0.0 } else { *r }).collect()
}

/// What shapes how a pool's shares move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shaping {
    pub slow_start: Duration,
    pub max_shift: f64,
    pub margin: f64,
    /// Shares move at most once per step.
    pub step: Duration,
}

/// A pool's shares as served, and what moves them: who came back when,
/// when they last moved. Members are known by id.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    /// The shares served now, of the members in service then.
    served: Vec<(Arc<str>, f64)>,
    /// The policy's shares as last taken (see `hold`), and whether each
    /// member's metric was known then.
    held: Vec<(Arc<str>, f64)>,
    held_known: Vec<bool>,
    /// When each member in service came (back) into service.
    since: HashMap<Arc<str>, Instant>,
    /// When shares last stepped towards their target.
    stepped: Option<Instant>,
    /// When shares last moved, or were still on their way.
    moving: Option<Instant>,
    /// Shares are not yet where they are going, or a member still ramps:
    /// time alone moves them on.
    unsettled: bool,
    started: bool,
}

impl Spread {
    /// Each of the `live` members' slow-start factor at `now` (see
    /// `slow_start`). Members first seen here are coming back, except at
    /// the very first call: a pool starts with everyone fully in.
    pub fn ramp(&mut self, now: Instant, live: &[Arc<str>], ramp: Duration) -> Vec<f64> {
        let first = !self.started;
        self.started = true;
        let alive: std::collections::HashSet<&str> = live.iter().map(|id| &**id).collect();
        self.since.retain(|id, _| alive.contains(&**id));
        live.iter()
            .map(|id| {
                let since = *self.since.entry(id.clone()).or_insert(if first { now.checked_sub(ramp).unwrap_or(now) } else { now });
                slow_start(now.saturating_duration_since(since), ramp)
            })
            .collect()
    }

    /// The policy's shares for the `live` members as the pool takes them:
    /// the ones last taken unless some member's differs by more than
    /// `margin`, so a noisy metric moves nothing. New shares are taken as
    /// they are when the members changed, or when a member's metric became
    /// known (`known`, from `shares_known`) or unknown: the split before a
    /// pool's first reports is no baseline to hold against.
    pub fn hold(&mut self, live: &[Arc<str>], shares: &[f64], known: &[bool], margin: f64) -> Vec<f64> {
        let same = self.held.len() == live.len() && self.held.iter().zip(live).all(|((k, _), id)| k == id) && self.held_known == known;
        self.held_known = known.to_vec();
        let prev: Vec<f64> = self.held.iter().map(|(_, v)| *v).collect();
        let kept = if same { damped(&prev, shares, margin) } else { shares.to_vec() };
        self.held = live.iter().cloned().zip(kept.iter().copied()).collect();
        kept
    }

    /// The shares to serve at `now` for the `live` members, given their
    /// `target`: members that left are out at once, as are members that
    /// are `full`; otherwise shares move once per step, by at most
    /// `max_shift`.
    pub fn step(&mut self, now: Instant, live: &[Arc<str>], target: &[f64], full: &[bool], s: &Shaping) -> Vec<f64> {
        // Looked up once per member: linear searches made this quadratic
        // in the pool's size.
        let index: std::collections::HashMap<&str, f64> = self.served.iter().map(|(k, v)| (&**k, *v)).collect();
        let served = |id: &Arc<str>| index.get(&**id).copied();
        let prev: Vec<f64> = live.iter().map(|id| served(id).unwrap_or(0.0)).collect();
        let same_members = self.served.len() == live.len() && live.iter().all(|id| served(id).is_some());
        let had: f64 = prev.iter().sum();
        let next = if had <= 0.0 || prev.len() != target.len() {
            self.stepped = Some(now);
            target.to_vec()
        } else {
            // Those who left are out at once; the rest keep their proportions.
            let prev = if same_members { prev } else { normalised(prev) };
            let due = self.stepped.is_none_or(|t| now.saturating_duration_since(t) >= s.step);
            let is_full = |i: usize| full.get(i).copied().unwrap_or(false);
            let next = if due && target != prev {
                self.stepped = Some(now);
                capped(&prev, target, s.max_shift, full)
            } else if prev.iter().enumerate().any(|(i, p)| is_full(i) && *p > 0.0 && target[i] == 0.0) {
                // Full: no new clients, whatever the step.
                normalised(prev.iter().enumerate().map(|(i, p)| if is_full(i) && target[i] == 0.0 { 0.0 } else { *p }).collect())
            } else {
                prev.clone()
            };
            // Float noise is no movement.
            if next.iter().zip(&prev).all(|(a, b)| (a - b).abs() < 1e-9) { prev } else { next }
        };
        let was: Vec<f64> = live.iter().map(|id| served(id).unwrap_or(-1.0)).collect();
        let ramping = self.since.values().any(|t| now.saturating_duration_since(*t) < s.slow_start);
        let off_target = next.iter().zip(target).any(|(n, t)| (n - t).abs() > 1e-9);
        self.unsettled = off_target || ramping;
        let settling = next != was || !same_members || off_target || ramping;
        if settling {
            self.moving = Some(now);
        }
        self.served = live.iter().cloned().zip(next.iter().copied()).collect();
        next
    }

    /// Whether time alone will move the shares on (a step still to take, a
    /// member still ramping up): the pool must be decided again as time
    /// passes.
    pub fn unsettled(&self) -> bool {
        self.unsettled
    }

    /// When shares may next step (at `now` if they never did).
    pub fn next_step(&self, now: Instant, step: Duration) -> Instant {
        self.stepped.map_or(now, |t| (t + step).max(now))
    }

    /// How long shares have held still (zero while they move).
    pub fn stable_for(&self, now: Instant) -> Duration {
        self.moving.map(|t| now.saturating_duration_since(t)).unwrap_or(Duration::MAX)
    }

    /// The share served now of member `id`.
    pub fn share_of(&self, id: &str) -> Option<f64> {
        self.served.iter().find(|(k, _)| &**k == id).map(|(_, v)| *v)
    }
}

/// The adaptive TTL after shares have been stable for `stable`: `min`
/// while they move, doubling each time they have held for as long as the
/// current TTL, up to `max`.
pub fn adaptive_ttl(min: u32, max: u32, stable: Duration) -> u32 {
    let (mut ttl, mut held) = (u64::from(min.max(1)), 0u64);
    let stable = stable.as_secs();
    while ttl < u64::from(max) && held + ttl <= stable {
        held += ttl;
        ttl = (ttl * 2).min(u64::from(max));
    }
    ttl.min(u64::from(max.max(min))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Now;
    use crate::config::MemberConfig;

    fn member(id: &str, weight: u32, load: Option<f64>) -> MemberState {
        let c = MemberConfig {
            id: id.into(),
            address: Some("192.0.2.1".parse().unwrap()),
            farm: None,
            weight,
            capacity: None,
            until: None,
            maintenance: Vec::new(),
        };
        let mut m = MemberState::from_config(&c, Now::read());
        m.metrics.load = load;
        m
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn least_loaded_shares_spare_capacity_and_silence_is_neutral() {
        let (a, b, c) = (member("a", 1, Some(0.2)), member("b", 1, Some(0.6)), member("c", 1, None));
        let s = shares(PolicyName::LeastLoaded, None, &[&a, &b]);
        assert!(close(&s, &[2.0 / 3.0, 1.0 / 3.0]), "{s:?}");
        let s = shares(PolicyName::LeastLoaded, None, &[&a, &b, &c]);
        assert!(close(&s, &[0.8 / 1.8, 0.4 / 1.8, 0.6 / 1.8]), "the unreported one gets the mean: {s:?}");
        let full = member("f", 1, Some(1.5));
        assert_eq!(shares(PolicyName::LeastLoaded, None, &[&a, &full])[1], 0.0, "over capacity: no new clients");
    }

    #[test]
    fn weighted_is_proportional_and_priority_takes_all() {
        let (a, b) = (member("a", 3, None), member("b", 1, None));
        assert!(close(&shares(PolicyName::Weighted, None, &[&a, &b]), &[0.75, 0.25]));
        assert!(close(&shares(PolicyName::Priority, None, &[&b, &a]), &[1.0, 0.0]));
        assert!(close(&shares(PolicyName::RoundRobin, None, &[&a, &b]), &[0.5, 0.5]));
        assert!(shares(PolicyName::Weighted, None, &[]).is_empty());
    }

    #[test]
    fn a_member_coming_back_ramps_up() {
        let ramp = Duration::from_secs(30);
        assert_eq!(slow_start(Duration::ZERO, ramp), SLOW_START_FLOOR);
        assert!((slow_start(Duration::from_secs(15), ramp) - 0.55).abs() < 1e-9);
        assert_eq!(slow_start(Duration::from_secs(31), ramp), 1.0);
        assert_eq!(slow_start(Duration::ZERO, Duration::ZERO), 1.0, "no slow start configured");
    }

    #[test]
    fn shares_move_at_most_max_shift_per_step_but_a_full_member_loses_all() {
        let prev = [0.5, 0.5, 0.0];
        let next = [0.0 + 0.1, 0.1, 0.8];
        let step = capped(&prev, &next, 0.2, &[]);
        assert!((step.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{step:?}");
        assert!(step.iter().zip(&prev).all(|(s, p)| (s - p).abs() <= 0.2 + 1e-9), "{step:?}");
        // Steps converge on the target.
        let mut s = prev.to_vec();
        for _ in 0..10 {
            s = capped(&s, &next, 0.2, &[]);
        }
        assert!(close(&s, &next), "{s:?}");
        // A member that is full is out at once; the others take its share.
        let full = capped(&[0.6, 0.4], &[0.0, 1.0], 0.2, &[true, false]);
        assert!(close(&full, &[0.0, 1.0]), "{full:?}");
        let backup = capped(&[0.6, 0.4], &[0.0, 1.0], 0.2, &[]);
        assert!(close(&backup, &[0.4, 0.6]), "a member the policy wants nothing of steps down: {backup:?}");
    }

    #[test]
    fn a_noisy_metric_does_not_move_shares() {
        let prev = [0.5, 0.5];
        assert_eq!(damped(&prev, &[0.52, 0.48], 0.1), prev.to_vec());
        assert_eq!(damped(&prev, &[0.6, 0.4], 0.1), vec![0.6, 0.4]);
        assert_eq!(damped(&[0.9, 0.05, 0.05], &[0.86, 0.07, 0.07], 0.1), vec![0.86, 0.07, 0.07], "small shares move on their own scale");
        assert_eq!(damped(&prev, &[1.0, 0.0], 0.9), vec![1.0, 0.0], "a member leaving always moves");
    }

    #[test]
    fn the_schedule_follows_the_shares_and_spreads_each_member_out() {
        let s = schedule(&[0.5, 0.3, 0.2], 10);
        let count = |i| s.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (5, 3, 2), "{s:?}");
        // Spread, not bunched: no member waits much longer than its stride.
        for (i, share) in [0.5, 0.3, 0.2].iter().enumerate() {
            let at: Vec<usize> = s.iter().enumerate().filter(|(_, x)| **x == i).map(|(k, _)| k).collect();
            assert!(at.windows(2).all(|w| (w[1] - w[0]) as f64 <= 2.0 / share), "{i}: {s:?}");
        }
        let big = schedule(&[0.7, 0.2, 0.1], 1000);
        assert_eq!(big.iter().filter(|&&x| x == 2).count(), 100);
        assert!(schedule(&[0.0, 0.0], 5).is_empty());
        // Ten thousand members, one with a tenth of the traffic.
        let mut many = vec![0.9 / 9_999.0; 10_000];
        many[42] = 0.1;
        let cycle = schedule(&many, 65_535);
        let share = cycle.iter().filter(|&&i| i == 42).count() as f64 / cycle.len() as f64;
        assert!((share - 0.1).abs() < 0.001, "{share}");
        assert!(cycle.windows(2).all(|w| w[0] != 42 || w[1] != 42), "spread out");
    }

    fn ids(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    const SHAPING: Shaping = Shaping { slow_start: Duration::from_secs(30), max_shift: 0.2, margin: 0.05, step: Duration::from_secs(1) };

    #[test]
    fn a_pool_starts_with_everyone_fully_in_and_a_member_coming_back_ramps() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut sp = Spread::default();
        let abc = ids(&["a", "b", "c"]);
        assert_eq!(sp.ramp(at(0), &abc, SHAPING.slow_start), vec![1.0; 3], "no slow start at start-up");
        assert_eq!(sp.ramp(at(1), &abc[..2], SHAPING.slow_start), vec![1.0; 2]);
        let back = sp.ramp(at(2), &abc, SHAPING.slow_start);
        assert_eq!(back, vec![1.0, 1.0, SLOW_START_FLOOR], "c came back");
        let half = sp.ramp(at(17), &abc, SHAPING.slow_start);
        assert!((half[2] - 0.55).abs() < 1e-9, "{half:?}");
        assert_eq!(sp.ramp(at(32), &abc, SHAPING.slow_start)[2], 1.0);
    }

    #[test]
    fn shares_step_once_per_interval_by_at_most_max_shift() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut sp = Spread::default();
        let ab = ids(&["a", "b"]);
        assert_eq!(sp.step(at(0), &ab, &[0.5, 0.5], &[], &SHAPING), vec![0.5, 0.5], "the first target is taken as it is");
        let s = sp.step(at(1000), &ab, &[0.9, 0.1], &[], &SHAPING);
        assert!(close(&s, &[0.7, 0.3]), "{s:?}");
        assert!(close(&sp.step(at(1500), &ab, &[0.9, 0.1], &[], &SHAPING), &[0.7, 0.3]), "not yet a step later");
        assert!(close(&sp.step(at(2000), &ab, &[0.9, 0.1], &[], &SHAPING), &[0.9, 0.1]));
        assert!(sp.stable_for(at(2000)).is_zero(), "moving");
        assert!(close(&sp.step(at(4000), &ab, &[0.9, 0.1], &[], &SHAPING), &[0.9, 0.1]));
        assert_eq!(sp.stable_for(at(9000)), Duration::from_secs(7), "still since the last move");
        assert!(close(&sp.step(at(10_000), &ab, &[0.8, 0.2], &[], &SHAPING), &[0.8, 0.2]));
        assert!(sp.stable_for(at(10_000)).is_zero());
        assert!((sp.share_of("b").unwrap() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn a_member_leaving_or_full_is_out_at_once_and_its_share_goes_to_the_rest() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut sp = Spread::default();
        let abc = ids(&["a", "b", "c"]);
        sp.step(at(0), &abc, &[0.5, 0.25, 0.25], &[], &SHAPING);
        let s = sp.step(at(100), &abc[1..], &[0.5, 0.5], &[], &SHAPING);
        assert!(close(&s, &[0.5, 0.5]), "a left between steps: out now: {s:?}");
        let s = sp.step(at(200), &abc[1..], &[0.0, 1.0], &[true, false], &SHAPING);
        assert!(close(&s, &[0.0, 1.0]), "b is full: no new clients, whatever the step: {s:?}");
        // a comes back: it has nothing yet, and moves in at the next step.
        assert!(close(&sp.step(at(300), &abc, &[0.1, 0.4, 0.5], &[], &SHAPING), &[0.0, 0.0, 1.0]));
        let s = sp.step(at(1300), &abc, &[0.1, 0.4, 0.5], &[], &SHAPING);
        assert!(close(&s, &[1.0 / 15.0, 2.0 / 15.0, 0.8]), "c gives up no more than max_shift: {s:?}");
    }

    #[test]
    fn the_policy_shares_are_held_until_a_member_moves_by_more_than_the_margin() {
        let mut sp = Spread::default();
        let ab = ids(&["a", "b"]);
        let k = [true; 3];
        assert_eq!(sp.hold(&ab, &[0.5, 0.5], &k[..2], 0.1), vec![0.5, 0.5]);
        assert_eq!(sp.hold(&ab, &[0.53, 0.47], &k[..2], 0.1), vec![0.5, 0.5], "noise");
        assert_eq!(sp.hold(&ab, &[0.58, 0.42], &k[..2], 0.1), vec![0.58, 0.42]);
        assert_eq!(sp.hold(&ab, &[0.0, 1.0], &k[..2], 0.99), vec![0.0, 1.0], "a member at nothing always moves");
        let abc = ids(&["a", "b", "c"]);
        assert_eq!(sp.hold(&abc, &[0.3, 0.3, 0.4], &k, 0.5), vec![0.3, 0.3, 0.4], "new members: taken as they are");
    }

    #[test]
    fn the_first_reports_replace_the_start_up_split_however_close_to_it() {
        // No metric yet: equal shares. Then loads 0.2 / 0.3 / 0.4: spare
        // capacity 0.8 / 0.7 / 0.6, within the margin of a third each.
        let abc = ids(&["a", "b", "c"]);
        let (a, b, c) = (member("a", 1, None), member("b", 1, None), member("c", 1, None));
        let (blind, unknown) = shares_known(PolicyName::LeastLoaded, None, &[&a, &b, &c]);
        assert_eq!(unknown, vec![false; 3]);
        let mut sp = Spread::default();
        assert!(close(&sp.hold(&abc, &blind, &unknown, 0.15), &[1.0 / 3.0; 3]));
        let (a, b, c) = (member("a", 1, Some(0.2)), member("b", 1, Some(0.3)), member("c", 1, Some(0.4)));
        let (policy, known) = shares_known(PolicyName::LeastLoaded, None, &[&a, &b, &c]);
        assert!(close(&sp.hold(&abc, &policy, &known, 0.15), &[0.8 / 2.1, 0.7 / 2.1, 0.6 / 2.1]), "taken at once");
        // Once known, the margin holds as before.
        let (a, b, c) = (member("a", 1, Some(0.21)), member("b", 1, Some(0.3)), member("c", 1, Some(0.4)));
        let (noisy, known) = shares_known(PolicyName::LeastLoaded, None, &[&a, &b, &c]);
        assert!(close(&sp.hold(&abc, &noisy, &known, 0.15), &policy), "noise after that moves nothing");
    }

    #[test]
    fn capacity_gates_members_and_spills_over_unless_all_are_full() {
        let g = gates(&[1.0, 1.0, 0.5], &[true, false, false]);
        assert_eq!(g, vec![0.0, 1.0, 0.5]);
        assert!(close(&ramped(PolicyName::Weighted, &[0.5, 0.3, 0.2], &gates(&[1.0; 3], &[true, false, false])), &[0.0, 0.6, 0.4]));
        let spill = ramped(PolicyName::Priority, &[1.0, 0.0, 0.0], &gates(&[1.0; 3], &[true, false, false]));
        assert!(close(&spill, &[0.0, 1.0, 0.0]), "priority: the next in line: {spill:?}");
        let stands = ramped(PolicyName::Weighted, &[1.0, 0.0], &gates(&[1.0; 2], &[true, false]));
        assert!(close(&stands, &[1.0, 0.0]), "nobody else has a share: it stands");
        assert_eq!(gates(&[1.0, 0.5], &[true, true]), vec![1.0, 0.5], "all full: the load goes somewhere");
    }

    #[test]
    fn priority_sends_what_a_ramping_first_member_does_not_take_down_the_line() {
        let (a, b, c) = (member("a", 1, None), member("b", 1, None), member("c", 1, None));
        let base = shares(PolicyName::Priority, None, &[&a, &b, &c]);
        let s = ramped(PolicyName::Priority, &base, &[0.25, 0.5, 1.0]);
        assert!(close(&s, &[0.25, 0.375, 0.375]), "{s:?}");
        let s = ramped(PolicyName::Priority, &base[..2], &[1.0, 1.0]);
        assert!(close(&s, &[1.0, 0.0]), "{s:?}");
        let s = ramped(PolicyName::Weighted, &shares(PolicyName::Weighted, None, &[&a, &b]), &[0.1, 1.0]);
        assert!(close(&s, &[0.1 / 1.1, 1.0 / 1.1]), "{s:?}");
    }

    #[test]
    fn weights_size_every_metric_policy() {
        let (a, b) = (member("a", 3, Some(0.5)), member("b", 1, Some(0.5)));
        assert!(close(&shares(PolicyName::LeastLoaded, None, &[&a, &b]), &[0.75, 0.25]));
        assert!(close(&shares(PolicyName::RoundRobin, None, &[&a, &b]), &[0.5, 0.5]), "round-robin is equal whatever the weight");
    }

    #[test]
    fn the_ttl_lengthens_while_shares_hold_and_is_short_while_they_move() {
        assert_eq!(adaptive_ttl(5, 300, Duration::ZERO), 5);
        assert_eq!(adaptive_ttl(5, 300, Duration::from_secs(4)), 5);
        assert_eq!(adaptive_ttl(5, 300, Duration::from_secs(5)), 10);
        assert_eq!(adaptive_ttl(5, 300, Duration::from_secs(15)), 20);
        assert_eq!(adaptive_ttl(5, 300, Duration::from_secs(10_000)), 300);
        assert_eq!(adaptive_ttl(5, 300, Duration::MAX), 300);
        assert_eq!(adaptive_ttl(30, 30, Duration::MAX), 30);
    }
}
