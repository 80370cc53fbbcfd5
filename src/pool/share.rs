//! Shares instead of winners: what fraction of new clients each member of
//! a pool should get, from its policy's metric, and the steps that keep
//! shares from stampeding: a slow start for a member that comes back, a
//! cap on how far a share moves per interval, a margin a metric must beat
//! before shares move at all, and a schedule that turns shares into the
//! order answers are cycled in. Pure: no clock (elapsed times are passed
//! in), no I/O. Not yet used by the table; `select = "best"` is still how
//! every pool answers.
//!
//! How each policy's metric becomes a weight (then normalised to sum 1):
//!
//! | policy | weight of a member |
//! |---|---|
//! | least-loaded | spare capacity, `max(0, 1 - load)` |
//! | fewest-connections, fewest-pending | `1 / (1 + count)` |
//! | fastest | `1 / max(1, response_ms)` |
//! | closest | `1 / (1 + distance)` |
//! | throughput | `throughput` (more is better) |
//! | formula | `1 / (1 + max(0, value))` (lower is better) |
//! | weighted | the configured weight |
//! | priority | all on the first eligible member |
//! | round-robin | equal |
//!
//! A member whose metric is not reported gets the mean weight of those
//! that are, so that silence neither wins nor loses; with none reported,
//! shares are equal.

use std::time::Duration;

use super::MemberState;
use crate::config::PolicyName;
use crate::config::formula::Formula;

/// The share of a member coming back when its slow start begins.
pub const SLOW_START_FLOOR: f64 = 0.1;

/// Each eligible member's share (summing to 1; empty for no members).
pub fn shares(policy: PolicyName, formula: Option<&Formula>, members: &[&MemberState]) -> Vec<f64> {
    if members.is_empty() {
        return Vec::new();
    }
    let weight = |m: &MemberState| -> Option<f64> {
        let w = match policy {
            PolicyName::LeastLoaded => (1.0 - m.metrics.load?).max(0.0),
            PolicyName::FewestConnections => 1.0 / (1.0 + m.metrics.connections?),
            PolicyName::FewestPending => 1.0 / (1.0 + m.metrics.pending?),
            PolicyName::Fastest => 1.0 / m.metrics.response_ms?.max(1.0),
            PolicyName::Closest => 1.0 / (1.0 + m.metrics.distance?),
            PolicyName::Throughput => m.metrics.throughput?,
            PolicyName::Formula => 1.0 / (1.0 + formula?.eval(|n| m.metric(n))?.max(0.0)),
            PolicyName::Weighted => f64::from(m.weight),
            PolicyName::RoundRobin | PolicyName::Priority => 1.0,
        };
        w.is_finite().then_some(w.max(0.0))
    };
    if policy == PolicyName::Priority {
        let mut s = vec![0.0; members.len()];
        s[0] = 1.0;
        return s;
    }
    let raw: Vec<Option<f64>> = members.iter().map(|m| weight(m)).collect();
    let known: Vec<f64> = raw.iter().flatten().copied().collect();
    let mean = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    normalised(raw.into_iter().map(|w| w.unwrap_or(mean)).collect())
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
/// `max_shift` (a fraction, 0.2 = 20 points), except that a member whose
/// share falls to 0 (down, out) loses it at once. The result sums to 1:
/// what the cap holds back goes to the members in proportion to their
/// target. `prev` and `next` are for the same members, in the same order.
pub fn capped(prev: &[f64], next: &[f64], max_shift: f64) -> Vec<f64> {
    if prev.len() != next.len() || max_shift >= 1.0 {
        return next.to_vec();
    }
    let mut out: Vec<f64> =
        prev.iter().zip(next).map(|(&p, &n)| if n == 0.0 { 0.0 } else { n.clamp(p - max_shift, p + max_shift).max(0.0) }).collect();
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
            .zip(next)
            .map(|((&o, &p), &n)| {
                if n == 0.0 {
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
/// more than `margin` (a fraction): a noisy metric does not move shares.
pub fn damped(prev: &[f64], next: &[f64], margin: f64) -> Vec<f64> {
    let moved = prev.len() != next.len() || prev.iter().zip(next).any(|(p, n)| (p - n).abs() > margin || (*n == 0.0) != (*p == 0.0));
    if moved { next.to_vec() } else { prev.to_vec() }
}

/// A cycle of `slots` member indices in which each member appears in
/// proportion to its share, spread out (smooth weighted round-robin): the
/// order pre-encoded answers are cycled in, query by query.
pub fn schedule(shares: &[f64], slots: usize) -> Vec<usize> {
    let mut current = vec![0.0; shares.len()];
    let total: f64 = shares.iter().sum();
    let mut out = Vec::with_capacity(slots);
    if total <= 0.0 {
        return out;
    }
    for _ in 0..slots {
        for (c, s) in current.iter_mut().zip(shares) {
            *c += s;
        }
        let Some(best) = (0..shares.len()).max_by(|&a, &b| current[a].total_cmp(&current[b]).then(b.cmp(&a))) else { break };
        current[best] -= total;
        out.push(best);
    }
    out
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
    fn shares_move_at_most_max_shift_per_step_but_a_dead_member_loses_all() {
        let prev = [0.5, 0.5, 0.0];
        let next = [0.0 + 0.1, 0.1, 0.8];
        let step = capped(&prev, &next, 0.2);
        assert!((step.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{step:?}");
        assert!(step.iter().zip(&prev).all(|(s, p)| (s - p).abs() <= 0.2 + 1e-9), "{step:?}");
        // Steps converge on the target.
        let mut s = prev.to_vec();
        for _ in 0..10 {
            s = capped(&s, &next, 0.2);
        }
        assert!(close(&s, &next), "{s:?}");
        // A member that went down is out at once; the others take its share.
        let down = capped(&[0.6, 0.4], &[0.0, 1.0], 0.2);
        assert!(close(&down, &[0.0, 1.0]), "{down:?}");
    }

    #[test]
    fn a_noisy_metric_does_not_move_shares() {
        let prev = [0.5, 0.5];
        assert_eq!(damped(&prev, &[0.52, 0.48], 0.05), prev.to_vec());
        assert_eq!(damped(&prev, &[0.6, 0.4], 0.05), vec![0.6, 0.4]);
        assert_eq!(damped(&prev, &[1.0, 0.0], 0.9), vec![1.0, 0.0], "a member leaving always moves");
    }

    #[test]
    fn the_schedule_follows_the_shares_and_spreads_each_member_out() {
        let s = schedule(&[0.5, 0.3, 0.2], 10);
        let count = |i| s.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (5, 3, 2), "{s:?}");
        assert!(s.windows(2).filter(|w| w[0] == w[1]).count() <= 1, "spread, not bunched: {s:?}");
        let big = schedule(&[0.7, 0.2, 0.1], 1000);
        assert_eq!(big.iter().filter(|&&x| x == 2).count(), 100);
        assert!(schedule(&[0.0, 0.0], 5).is_empty());
    }
}
