//! Load-balancing policies: pure functions from the members' latest status
//! to an order of preference. No clock, no I/O.

use crate::config::PolicyName;

use super::MemberState;
use super::formula::Formula;

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
    let mut idx: Vec<usize> = (0..members.len()).collect();
    let key = |f: fn(&MemberState) -> Option<f64>, missing: f64| move |i: &usize| f(members[*i]).unwrap_or(missing);
    let sort_by = |idx: &mut Vec<usize>, k: &dyn Fn(&usize) -> f64| {
        idx.sort_by(|a, b| k(a).total_cmp(&k(b)));
    };
    match policy {
        // Configured order; the DNS path rotates it query by query.
        PolicyName::RoundRobin | PolicyName::Priority => {}
        PolicyName::Formula => sort_by(&mut idx, &|i: &usize| score(policy, formula, members[*i]).unwrap_or(f64::MAX)),
        PolicyName::LeastLoaded => sort_by(&mut idx, &key(|m| m.metrics.load, f64::MAX)),
        PolicyName::FewestConnections => sort_by(&mut idx, &key(|m| m.metrics.connections, f64::MAX)),
        PolicyName::FewestPending => sort_by(&mut idx, &key(|m| m.metrics.pending, f64::MAX)),
        PolicyName::Fastest => sort_by(&mut idx, &key(|m| m.metrics.response_ms, f64::MAX)),
        PolicyName::Closest => sort_by(&mut idx, &key(|m| m.metrics.distance, f64::MAX)),
        PolicyName::Throughput => sort_by(&mut idx, &key(|m| m.metrics.throughput.map(|t| -t), 0.0)),
        PolicyName::Weighted => sort_by(&mut idx, &|i: &usize| -(members[*i].weight as f64)),
    }
    idx
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
            admin: AdminState::Auto,
            health: None,
            metrics: Metrics { load, ..Default::default() },
            custom: Default::default(),
            reported_at: None,
            until: None,
            maintenance: Vec::new(),
            ring_dead: false,
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
}
