//! Decisions made once for a group of authorities (`[cluster]` on etcd):
//! every authority still applies each pool's policy to the reports it
//! gets, but serves the decision the group recorded (`imposed`) instead
//! of its own; its own decisions, when they change, wait here (`due`) to
//! be offered to the group (only the elected decider's are committed).
//! A pool the group has not decided yet is answered with the authority's
//! own decision. Pure: keyed by pool key, so a configuration edit that
//! renumbers the pools keeps what belongs to each.

use std::collections::{BTreeSet, HashMap};

use hickory_proto::rr::LowerName;

use super::Decision;

#[derive(Debug, Default, Clone)]
pub struct Group {
    on: bool,
    imposed: HashMap<LowerName, Decision>,
    /// This authority's latest decision per pool, and the pools whose
    /// decision changed since they were last taken.
    own: HashMap<LowerName, Decision>,
    due: BTreeSet<LowerName>,
}

impl Group {
    /// Serve the group's decisions from now on.
    pub fn join(&mut self) {
        self.on = true;
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// What pool `key` answers, given this authority's own decision.
    pub fn filter(&mut self, key: &LowerName, own: Decision) -> Decision {
        if !self.on {
            return own;
        }
        if self.own.get(key) != Some(&own) {
            self.own.insert(key.clone(), own.clone());
            self.due.insert(key.clone());
        }
        self.imposed.get(key).cloned().unwrap_or(own)
    }

    /// The group decided pool `key`.
    pub fn impose(&mut self, key: &LowerName, d: Decision) {
        self.imposed.insert(key.clone(), d);
    }

    /// Whether the group has decided pool `key`.
    pub fn imposed(&self, key: &LowerName) -> Option<&Decision> {
        self.imposed.get(key)
    }

    /// This authority's own decisions that changed since the last call.
    pub fn take_due(&mut self) -> Vec<(LowerName, Decision)> {
        std::mem::take(&mut self.due).into_iter().filter_map(|k| self.own.get(&k).map(|d| (k, d.clone()))).collect()
    }

    /// Every own decision becomes due again (a new decider offers all).
    pub fn all_due(&mut self) {
        self.due = self.own.keys().cloned().collect();
    }

    /// Pool `key` is gone or took a new shape: what was decided for it no
    /// longer stands.
    pub fn forget(&mut self, key: &LowerName) {
        self.imposed.remove(key);
        self.own.remove(key);
        self.due.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn d(last: u8) -> Decision {
        Decision::plain(vec![IpAddr::from([127, 0, 0, last])], false, false, 5)
    }

    #[test]
    fn alone_an_authority_serves_its_own_decisions() {
        let mut g = Group::default();
        let k = LowerName::from(hickory_proto::rr::Name::from_ascii("www.example.").unwrap());
        assert_eq!(g.filter(&k, d(1)), d(1));
        assert!(g.take_due().is_empty(), "nothing is offered outside a group");
    }

    #[test]
    fn in_a_group_the_groups_decision_is_served_and_changes_of_its_own_are_offered_once() {
        let mut g = Group::default();
        g.join();
        let k = LowerName::from(hickory_proto::rr::Name::from_ascii("www.example.").unwrap());
        assert_eq!(g.filter(&k, d(1)), d(1), "undecided by the group: its own");
        assert_eq!(g.take_due(), vec![(k.clone(), d(1))]);
        g.impose(&k, d(2));
        assert_eq!(g.filter(&k, d(1)), d(2), "the group's word wins");
        assert!(g.take_due().is_empty(), "the same decision again is not offered again");
        assert_eq!(g.filter(&k, d(3)), d(2));
        assert_eq!(g.take_due(), vec![(k.clone(), d(3))]);
        g.all_due();
        assert_eq!(g.take_due(), vec![(k.clone(), d(3))], "a new decider offers everything");
        g.forget(&k);
        assert_eq!(g.filter(&k, d(4)), d(4));
    }
}
