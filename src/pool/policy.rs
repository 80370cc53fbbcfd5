//! Load-balancing policies: pure functions from the members' latest status
//! to an order of preference. No clock, no I/O.

use crate::config::PolicyName;

use super::MemberState;
use crate::config::formula::Formula;

/// The value a policy ranks a member by, as shown to operators: lower is
/// better except for throughput and weight. `None` when not reported.
pub fn score(policy: PolicyName, formula: Option<&Formula>, m: &MemberState) -> Option<f64> {
    match policy {
        PolicyName::Formula => formula.and_then(|f| f.eval(|n| m.metric(n))),
        PolicyName::RoundRobin | PolicyName::Priority => None,
        PolicyName::LeastLoaded => m.metrics.load,
        PolicyName::FewestConnections => m.metrics.connections,
        PolicyName::FewestPending => m.metrics.pending,
        PolicyName::Fastest => m.metrics.response_ms,
        PolicyName::Closest => m.metrics.distance,
        PolicyName::Throughput => m.metrics.throughput,
        PolicyName::Weighted => Some(m.weight as f64),
    }
}

/// Orders eligible members from most to least preferred. Ties keep the
/// configured order, so answers are stable and deterministic: several
/// authorities fed the same reports give the same answer.
pub fn order(policy: PolicyName, formula: Option<&Formula>, members: &[&MemberState]) -> Vec<usize> {
    best(policy, formula, members, members.len())
}

/// The `k` most preferred eligible members, in `order`'s order, without
/// ranking the rest: a pool of thousands answered with one address costs
/// one pass over its members, not a sort.
pub fn best(policy: PolicyName, formula: Option<&Formula>, members: &[&MemberState], k: usize) -> Vec<usize> {
    let k = k.min(members.len());
    // Lower sorts first; each member's key is computed once.
    let key: Option<fn(&MemberState) -> Option<f64>> = match policy {
        // Configured order; the DNS path rotates it query by query.
        PolicyName::RoundRobin | PolicyName::Priority => return (0..k).collect(),
        PolicyName::Formula => None,
        PolicyName::LeastLoaded => Some(|m| m.metrics.load),
        PolicyName::FewestConnections => Some(|m| m.metrics.connections),
        PolicyName::FewestPending => Some(|m| m.metrics.pending),
        PolicyName::Fastest => Some(|m| m.metrics.response_ms),
        PolicyName::Closest => Some(|m| m.metrics.distance),
        PolicyName::Throughput => Some(|m| m.metrics.throughput.map(|t| -t).or(Some(0.0))),
        PolicyName::Weighted => Some(|m| Some(-(m.weight as f64))),
    };
    let mut keyed: Vec<(f64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let v = match key {
                Some(f) => f(m),
                None => score(policy, formula, m),
            };
            (v.unwrap_or(f64::MAX), i)
        })
        .collect();
    // (key, place) is a total order, so the selection is deterministic.
    let cmp = |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if k == 0 {
        return Vec::new();
    }
    if k < keyed.len() {
        keyed.select_nth_unstable_by(k - 1, cmp);
        keyed.truncate(k);
    }
    keyed.sort_unstable_by(cmp);
    keyed.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{AdminState, Metrics};

    fn member(id: &str, load: Option<f64>, weight: u32) -> MemberState {
        MemberState {
            id: id.into(),
            address: "127.0.0.1".parse().unwrap(),
            farm: None,
            weight,
            capacity: None,
            admin: AdminState::Auto,
            health: None,
            metrics: Metrics { load, ..Default::default() },
            custom: Default::default(),
            reported_at: None,
            until: None,
            maintenance: Vec::new(),
            ring_dead: false,
            views: Vec::new(),
            remote: None,
        }
    }

    #[test]
    fn least_loaded_prefers_low_load_and_puts_unknown_last() {
        let ms = [member("a", Some(0.9), 1), member("b", None, 1), member("c", Some(0.1), 1)];
        let refs: Vec<&MemberState> = ms.iter().collect();
        assert_eq!(order(PolicyName::LeastLoaded, None, &refs), vec![2, 0, 1]);
    }

    #[test]
    fn priority_keeps_configured_order_and_weighted_prefers_heavy() {
        let ms = [member("a", Some(0.9), 1), member("b", Some(0.1), 5)];
        let refs: Vec<&MemberState> = ms.iter().collect();
        assert_eq!(order(PolicyName::Priority, None, &refs), vec![0, 1]);
        assert_eq!(order(PolicyName::Weighted, None, &refs), vec![1, 0]);
    }

    #[test]
    fn formula_ranks_by_its_score_and_unscored_members_last() {
        let mut ms = [member("a", Some(0.1), 1), member("b", Some(0.5), 1), member("c", None, 1)];
        ms[0].custom.insert("queue".into(), 90.0);
        ms[1].custom.insert("queue".into(), 10.0);
        let f = Formula::parse("load * 100 + queue").unwrap();
        let refs: Vec<&MemberState> = ms.iter().collect();
        assert_eq!(score(PolicyName::Formula, Some(&f), refs[0]), Some(100.0));
        assert_eq!(order(PolicyName::Formula, Some(&f), &refs), vec![1, 0, 2]);
    }

    #[test]
    fn the_best_few_are_the_head_of_the_full_order() {
        let loads = [0.5, 0.1, 0.9, 0.1, 0.3, 0.7, 0.5, 0.2];
        let ms: Vec<MemberState> = loads.iter().enumerate().map(|(i, l)| member(&i.to_string(), Some(*l), (i % 3) as u32)).collect();
        let refs: Vec<&MemberState> = ms.iter().collect();
        for policy in [PolicyName::LeastLoaded, PolicyName::Weighted, PolicyName::Throughput, PolicyName::Priority] {
            let full = order(policy, None, &refs);
            assert_eq!(full.len(), ms.len());
            for k in 0..=ms.len() + 1 {
                assert_eq!(best(policy, None, &refs, k), full[..k.min(ms.len())], "{policy} k={k}");
            }
        }
        assert_eq!(order(PolicyName::LeastLoaded, None, &refs)[..2], [1, 3], "ties keep the configured order");
    }
}
