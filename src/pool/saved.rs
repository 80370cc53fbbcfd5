//! The last known state of a pool's members, as the authority keeps it
//! across restarts: each member's last reported health and metrics with
//! the wall-clock time of the report, and the pool's last answer. Taken
//! back at start-up aged by the time that passed, so a member reported
//! down stays down and one whose report is now older than `stale_after`
//! is stale, exactly as if the authority had never stopped. Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Metrics, PoolState};
use crate::clock::Now;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedPool {
    #[serde(default)]
    pub last_known: Vec<IpAddr>,
    /// The answer served when it was saved (filled in by the catalog).
    #[serde(default)]
    pub answer: Vec<IpAddr>,
    #[serde(default)]
    pub servfail: bool,
    #[serde(default)]
    pub members: BTreeMap<String, SavedMember>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedMember {
    /// Where it was answered (a farm entity's address comes from reports).
    pub address: IpAddr,
    pub health: Option<bool>,
    /// When the last report was made, in Unix milliseconds.
    pub reported_ms: Option<i64>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub custom: BTreeMap<String, f64>,
}

impl PoolState {
    /// What must outlive a restart of this pool's reported state.
    pub fn saved(&self, now: Now) -> SavedPool {
        let members = self
            .members
            .iter()
            .map(|m| {
                let reported_ms = m.reported_at.map(|at| now.unix_ms() - now.instant.saturating_duration_since(at).as_millis() as i64);
                let saved = SavedMember { address: m.address, health: m.health, reported_ms, metrics: m.metrics, custom: m.custom.clone() };
                (m.id.to_string(), saved)
            })
            .collect();
        SavedPool { last_known: self.last_known.clone(), members, ..SavedPool::default() }
    }

    /// Takes back what was saved, for the members still in the pool, aged
    /// by the time that passed since. A report older than this host's
    /// monotonic clock reaches is taken as older than `stale_after`.
    pub fn take_saved(&mut self, saved: &SavedPool, now: Now) {
        let live = |a: &IpAddr| self.members.iter().any(|m| m.address == *a);
        if saved.last_known.iter().all(live) {
            self.last_known = saved.last_known.clone();
        }
        for m in &mut self.members {
            let Some(s) = saved.members.get(&*m.id) else { continue };
            if m.farm.is_some() && m.address.is_unspecified() {
                m.address = s.address;
            }
            m.health = s.health;
            m.metrics = s.metrics;
            m.custom = s.custom.clone();
            m.reported_at = s.reported_ms.map(|ms| {
                let wall = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
                let age = now.wall.duration_since(wall).unwrap_or_default();
                now.instant
                    .checked_sub(age)
                    .or_else(|| now.instant.checked_sub(self.stale_after + Duration::from_secs(1)))
                    .unwrap_or(now.instant)
            });
            if m.reported_at == Some(now.instant) && s.reported_ms.is_some() && m.health == Some(true) {
                // Too old to place on this clock, and fresh cannot be assumed.
                m.health = Some(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool() -> PoolState {
        let c = Config::from_toml(
            "[[pool]]\nname = \"www.example.\"\nfallback = \"servfail\"\nstale_after = \"3s\"\n\
             members = [{ id = \"a\", address = \"127.0.0.1\" }, { id = \"b\", address = \"127.0.0.2\" }]\n",
        )
        .unwrap();
        PoolState::from_config(&c.pool[0], Now::read())
    }

    #[test]
    fn a_pool_saved_and_taken_back_decides_as_before_aged_by_the_time_that_passed() {
        let t0 = Now::read();
        let mut p = pool();
        p.members[0].absorb(false, Metrics { load: Some(0.5), ..Metrics::default() }, Default::default(), 0.0, t0.instant);
        p.members[1].absorb(true, Metrics::default(), [("tcp_port".to_owned(), 1433.0)].into(), 0.0, t0.instant);
        p.decide(t0.instant);
        let text = serde_json::to_string(&p.saved(t0)).unwrap();
        let saved: SavedPool = serde_json::from_str(&text).unwrap();

        // A second later: b is still up, a still down, metrics kept.
        let t1 = t0.after(Duration::from_secs(1));
        let mut q = pool();
        q.take_saved(&saved, t1);
        assert_eq!(q.decide(t1.instant).addresses, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(q.members[0].metrics.load, Some(0.5));
        assert_eq!(q.members[1].custom.get("tcp_port"), Some(&1433.0));
        assert_eq!(q.members[0].state(t1.instant, q.stale_after), "down");

        // Ten seconds later: b's report is stale, a is still down: SERVFAIL.
        let t10 = t0.after(Duration::from_secs(10));
        let mut r = pool();
        r.take_saved(&saved, t10);
        assert_eq!(r.members[1].state(t10.instant, r.stale_after), "unknown (stale)");
        assert!(r.decide(t10.instant).servfail);
    }

    #[test]
    fn saved_members_no_longer_in_the_pool_are_ignored() {
        let now = Now::read();
        let mut saved = SavedPool::default();
        saved.members.insert(
            "gone".into(),
            SavedMember {
                address: "127.0.0.9".parse().unwrap(),
                health: Some(false),
                reported_ms: Some(now.unix_ms()),
                metrics: Metrics::default(),
                custom: BTreeMap::new(),
            },
        );
        saved.last_known = vec!["127.0.0.9".parse().unwrap()];
        let mut p = pool();
        p.take_saved(&saved, now);
        assert!(p.last_known.is_empty(), "a last answer naming a member that left is not taken");
        assert!(p.members.iter().all(|m| m.health.is_none()));
    }
}
