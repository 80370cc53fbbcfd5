//! Two and three simulated authorities reconciling through an in-memory
//! model of etcd's revisions (compare-and-swap on a key's revision, a
//! watch from a revision, compaction, an election, being out of reach),
//! on a virtual clock. The authorities' pools are real member tables;
//! what etcd holds is decoded by the same code as the real driver's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::Now;
use crate::cluster::{Batch, Keys, decode, encode, encode_decision};
use crate::config::Config;
use crate::pool::AdminState;
use crate::pool::table::Table;

const FINGERPRINT: &str = "pools-v1";
const POOL: &str = "www.example.";

fn keys() -> Keys {
    Keys::new("/vnamed/")
}

/// etcd as the reconciler sees it: keys with their revisions, a history
/// to watch from (older revisions compacted away), one election key.
struct Model {
    revision: i64,
    kv: BTreeMap<String, (Vec<u8>, i64)>,
    history: Vec<(i64, String, Option<Vec<u8>>)>,
    compacted: i64,
    up: bool,
    leader: Option<Leader>,
}

impl Model {
    fn new() -> Self {
        let mut m = Self { revision: 0, kv: BTreeMap::new(), history: Vec::new(), compacted: 0, up: true, leader: None };
        m.put(&keys().config(), FINGERPRINT.as_bytes().to_vec());
        m
    }

    fn put(&mut self, key: &str, value: Vec<u8>) -> i64 {
        self.revision += 1;
        self.kv.insert(key.to_owned(), (value.clone(), self.revision));
        self.history.push((self.revision, key.to_owned(), Some(value)));
        self.revision
    }

    fn mod_revision(&self, key: &str) -> i64 {
        self.kv.get(key).map_or(0, |(_, r)| *r)
    }

    /// A compare-and-swap on `key`'s revision, while the group's pools are ours.
    fn commit(&mut self, what: &str, key: &str, value: Vec<u8>, base: i64) -> Result<i64, ClusterError> {
        if !self.up {
            return Err(ClusterError::Unavailable("no quorum".into()));
        }
        if self.mod_revision(key) != base {
            return Err(ClusterError::Conflict { what: what.into(), revision: self.mod_revision(key) });
        }
        Ok(self.put(key, value))
    }

    /// Carries out one request as the etcd driver does.
    fn serve(&mut self, name: &str, request: Request) -> Option<Outcome> {
        let k = keys();
        match request {
            Request::Overrides { id, pool, overrides, base } => {
                let result = self.commit(&format!("pool {pool}"), &k.overrides(&pool), encode(&overrides).into_bytes(), base);
                Some(Outcome::Overrides { id, result })
            }
            Request::Ring { id, ring, base } => {
                Some(Outcome::Ring { id, result: self.commit("the ring table", &k.ring(), ring.to_text().into_bytes(), base) })
            }
            Request::Decisions { leader, decisions, serials } => {
                let result = if !self.up {
                    Err(ClusterError::Unavailable("no quorum".into()))
                } else if self.leader.as_ref() != Some(&leader) {
                    Err(ClusterError::Unavailable("this authority is no longer the group's decider".into()))
                } else {
                    for (pool, d) in decisions {
                        self.put(&k.decision(&pool), encode_decision(&d).into_bytes());
                    }
                    for (zone, n) in serials {
                        self.put(&k.serial(&zone), n.to_string().into_bytes());
                    }
                    Ok(self.revision)
                };
                Some(Outcome::Decisions { result })
            }
            Request::RaiseSerial { zone, serial, base } => {
                let _ = self.commit("serial", &k.serial(&zone), serial.to_string().into_bytes(), base);
                Some(Outcome::Raised { zone })
            }
            Request::Views(views) => {
                if !self.up {
                    return Some(Outcome::ViewsLost);
                }
                for (pool, member, seen) in views {
                    let key = k.view(name, &pool, &member);
                    match seen {
                        Some(up) => {
                            self.put(&key, if up { b"up".to_vec() } else { b"down".to_vec() });
                        }
                        None => {
                            self.revision += 1;
                            self.kv.remove(&key);
                            self.history.push((self.revision, key, None));
                        }
                    }
                }
                None
            }
            Request::Adopt { .. } => None,
        }
    }

    /// Everything, as a full read gives it.
    fn read_all(&self) -> (Vec<Event>, i64) {
        let mut batch = Batch::whole();
        for (key, (value, rev)) in &self.kv {
            batch.take(&keys(), FINGERPRINT, key, value, *rev, true).unwrap();
        }
        (batch.events(), self.revision)
    }

    /// The watch from `from`, one response per revision; `None` when
    /// those revisions were compacted away.
    fn watch(&self, from: i64) -> Option<Vec<Event>> {
        if from <= self.compacted {
            return None;
        }
        let mut out = Vec::new();
        for (rev, key, value) in self.history.iter().filter(|(r, _, _)| *r >= from) {
            let mut batch = Batch::default();
            batch.take(&keys(), FINGERPRINT, key, value.as_deref().unwrap_or_default(), *rev, value.is_some()).unwrap();
            out.extend(batch.events());
            out.push(Event::Through(*rev));
        }
        Some(out)
    }

    fn compact(&mut self) {
        self.compacted = self.revision;
    }
}

/// How a simulated authority's proposals are answered: by number.
type Token = u32;

/// One authority: its reconciler, its member table, and what it serves.
struct Node {
    name: String,
    r: Reconcile<Token>,
    table: Table,
    ring: Registry,
    imposed: BTreeMap<String, Decision>,
    serials: HashMap<String, u32>,
    remote: BTreeMap<(String, String), Option<bool>>,
    /// Requests for the driver, the watch's place, and proposals' ends.
    requests: Vec<Request>,
    followed: i64,
    done: BTreeMap<Token, Result<(), ClusterError>>,
    proposals: BTreeMap<Token, PoolChange>,
}

impl Node {
    fn new(name: &str, now: Now) -> Self {
        let config = Config::from_toml(
            "[[pool]]\nname = \"www.example.\"\nmembers = [ { id = \"a\", address = \"127.0.0.1\" }, { id = \"b\", address = \"127.0.0.2\" } ]\n",
        )
        .unwrap();
        let status = ClusterStatus::new();
        status.set_available(true, None);
        Self {
            name: name.into(),
            r: Reconcile::new(name.into(), FINGERPRINT.into(), status),
            table: Table::new(&config.pool, now),
            ring: Registry::default(),
            imposed: BTreeMap::new(),
            serials: HashMap::new(),
            remote: BTreeMap::new(),
            requests: Vec::new(),
            followed: 0,
            done: BTreeMap::new(),
            proposals: BTreeMap::new(),
        }
    }

    fn overrides(&self) -> Vec<String> {
        self.table.get(0).unwrap().overrides.lines()
    }

    /// Stages a change on the table as it is, and proposes it.
    fn propose(&mut self, token: Token, change: PoolChange, attempt: u32, now: Now) {
        self.proposals.insert(token, change.clone());
        match self.table.stage(POOL, change.clone(), now) {
            Ok((_, staged)) => self.r.propose_pool(POOL.into(), POOL.into(), change, staged.overrides.clone(), attempt, token),
            Err(e) => panic!("{e}"),
        }
        self.steps(now);
    }

    /// Does what the reconciler asks, as the catalog and drivers would.
    fn steps(&mut self, now: Now) {
        while let Some(step) = self.r.poll() {
            match step {
                Step::Send(req) => self.requests.push(req),
                Step::ApplyOverrides { pool, overrides } => {
                    let (id, staged) = self.table.stage(&pool, PoolChange::Replace(overrides), now).unwrap();
                    self.table.put(id, staged);
                }
                Step::ApplyRing(ring) => self.ring = ring,
                Step::Impose { decisions, serials } => {
                    self.imposed.extend(decisions);
                    self.serials.extend(serials);
                }
                Step::RemoteViews(words) => {
                    for (p, m, w) in words {
                        self.remote.insert((p, m), w);
                    }
                }
                Step::OfferAll => {}
                Step::Again { proposal: Proposal::Pool { change, .. }, attempt, reply } => {
                    let (_, staged) = self.table.stage(POOL, change.clone(), now).unwrap();
                    self.r.propose_pool(POOL.into(), POOL.into(), change, staged.overrides.clone(), attempt, reply);
                }
                Step::Again { proposal: Proposal::Ring { .. }, reply, .. } => {
                    self.done.insert(reply, Err(ClusterError::Unavailable("ring again".into())));
                }
                Step::Done { reply, result } => {
                    self.done.insert(reply, result);
                }
            }
        }
    }

    /// The driver: hands the requests to etcd and their outcomes back.
    fn deliver(&mut self, etcd: &mut Model, now: Now) {
        for req in std::mem::take(&mut self.requests) {
            if let Some(o) = etcd.serve(&self.name, req) {
                self.r.outcome(o, &self.ring, now.instant);
            }
        }
        self.steps(now);
    }

    /// The follower: the watch from where it was, or a full read when
    /// those revisions are gone (or etcd was out of reach).
    fn follow(&mut self, etcd: &Model, now: Now) {
        self.r.status().set_available(etcd.up, (!etcd.up).then(|| "no quorum".into()));
        if !etcd.up {
            return;
        }
        let events = match etcd.watch(self.followed + 1) {
            Some(events) => events,
            None => {
                let (mut events, revision) = etcd.read_all();
                events.push(Event::Through(revision));
                events
            }
        };
        for e in events {
            if let Event::Through(r) = e {
                self.followed = r;
            }
            self.r.event(e, &self.ring, now.instant);
        }
        self.followed = self.followed.max(etcd.revision);
        self.steps(now);
    }
}

fn member(id: &str, admin: Option<AdminState>, weight: Option<u32>) -> PoolChange {
    PoolChange::Member { id: id.into(), admin, weight }
}

/// Delivers and follows until nothing moves.
fn settle(nodes: &mut [&mut Node], etcd: &mut Model, now: Now) {
    for _ in 0..10 {
        for n in nodes.iter_mut() {
            n.deliver(etcd, now);
        }
        for n in nodes.iter_mut() {
            n.follow(etcd, now);
        }
    }
}

#[test]
fn concurrent_changes_to_one_pool_both_hold_and_every_authority_serves_both() {
    let now = Now::read();
    let mut etcd = Model::new();
    let (mut a, mut b) = (Node::new("a", now), Node::new("b", now));
    a.follow(&etcd, now);
    b.follow(&etcd, now);
    // Both read the pool at the same revision and change different members.
    a.propose(1, member("a", None, Some(5)), 0, now);
    b.propose(2, member("b", Some(AdminState::Down), None), 0, now);
    a.deliver(&mut etcd, now);
    b.deliver(&mut etcd, now);
    assert_eq!(a.done.get(&1), Some(&Ok(())));
    assert!(b.done.is_empty(), "b raced a's change: it waits for it, then stages again");
    settle(&mut [&mut a, &mut b], &mut etcd, now);
    assert_eq!(b.done.get(&2), Some(&Ok(())));
    assert_eq!(a.overrides(), b.overrides(), "both serve the same");
    assert_eq!(a.overrides().len(), 2, "both changes hold: {:?}", a.overrides());
    let stored = decode("k", &etcd.kv[&keys().overrides(POOL)].0).unwrap();
    assert_eq!(stored.lines(), a.overrides());
}

#[test]
fn a_race_whose_winner_never_arrives_is_refused_in_time() {
    let t0 = Now::read();
    let mut etcd = Model::new();
    let (mut a, mut b) = (Node::new("a", t0), Node::new("b", t0));
    a.follow(&etcd, t0);
    b.follow(&etcd, t0);
    a.propose(1, member("a", None, Some(5)), 0, t0);
    a.deliver(&mut etcd, t0);
    // b never hears of a's change (its watch is stuck), and its own raced it.
    b.propose(2, member("b", None, Some(3)), 0, t0);
    b.deliver(&mut etcd, t0);
    assert!(b.done.is_empty());
    let later = t0.after(Duration::from_secs(6));
    b.r.tick(later.instant, &[], Vec::new());
    b.steps(later);
    assert!(matches!(b.done.get(&2), Some(Err(ClusterError::Unavailable(m))) if m.contains("did not arrive here in time")), "{:?}", b.done);
}

#[test]
fn a_deposed_decider_commits_nothing_and_the_new_one_decides_for_all() {
    let now = Now::read();
    let mut etcd = Model::new();
    let (mut a, mut b) = (Node::new("a", now), Node::new("b", now));
    let term = |etcd: &mut Model, n: &str| {
        let revision = etcd.put(&format!("/vnamed/decider/{n}"), n.as_bytes().to_vec());
        let l = Leader { key: format!("/vnamed/decider/{n}").into_bytes(), revision };
        etcd.leader = Some(l.clone());
        l
    };
    let elected = term(&mut etcd, "a");
    a.r.event(Event::Decider(Some(elected)), &a.ring, now.instant);
    a.steps(now);
    let decide = |ip: &str| Decision::plain(vec![ip.parse().unwrap()], false, false, 5);
    let local: HashMap<String, u32> = [("example.".to_owned(), 10)].into();
    a.r.offer(vec![(POOL.into(), "example.".into(), decide("127.0.0.1"))], &local);
    a.steps(now);
    settle(&mut [&mut a, &mut b], &mut etcd, now);
    assert_eq!(b.imposed[POOL], decide("127.0.0.1"), "the decider's decision is the group's");
    assert_eq!(b.serials["example."], 11, "with the zone's next serial");
    // a is paused past its lease: b is elected while a still thinks it decides.
    let elected = term(&mut etcd, "b");
    b.r.event(Event::Decider(Some(elected)), &b.ring, now.instant);
    b.steps(now);
    a.r.offer(vec![(POOL.into(), "example.".into(), decide("127.0.0.2"))], &local);
    a.steps(now);
    let before = etcd.revision;
    a.deliver(&mut etcd, now);
    assert_eq!(etcd.revision, before, "a's decision from its lost term is not committed");
    assert!(a.r.wants_all(), "a offers everything again should it decide again");
    b.r.offer(vec![(POOL.into(), "example.".into(), decide("127.0.0.3"))], &[("example.".to_owned(), 11)].into());
    b.steps(now);
    a.r.event(Event::Decider(None), &a.ring, now.instant);
    a.steps(now);
    settle(&mut [&mut a, &mut b], &mut etcd, now);
    assert_eq!(a.imposed[POOL], decide("127.0.0.3"), "a follows the group");
    assert_eq!(a.serials["example."], 12);
    assert!(!a.r.status().decider() && b.r.status().decider());
}

#[test]
fn a_watch_that_missed_compacted_revisions_reads_again_and_applies_only_the_newest() {
    let now = Now::read();
    let mut etcd = Model::new();
    let (mut a, mut b) = (Node::new("a", now), Node::new("b", now));
    a.follow(&etcd, now);
    b.follow(&etcd, now);
    for (t, w) in [(1, 2), (2, 3), (3, 4)] {
        a.propose(t, member("a", None, Some(w)), 0, now);
        a.deliver(&mut etcd, now);
        a.follow(&etcd, now);
    }
    assert_eq!(a.done.len(), 3);
    etcd.compact();
    assert!(etcd.watch(b.followed + 1).is_none(), "b's place in the watch is gone");
    b.follow(&etcd, now);
    assert_eq!(b.overrides(), a.overrides(), "read again whole: the newest overrides");
    assert_eq!(a.overrides(), ["member a weight 4"]);
    // An older word delivered late changes nothing.
    let old = Event::Overrides { pool: POOL.into(), overrides: Overrides::default(), revision: 2 };
    b.r.event(old, &b.ring, now.instant);
    b.steps(now);
    assert_eq!(b.overrides(), a.overrides());
}

#[test]
fn while_etcd_is_out_of_reach_changes_are_refused_at_once_and_work_again_after() {
    let now = Now::read();
    let mut etcd = Model::new();
    let mut a = Node::new("a", now);
    a.follow(&etcd, now);
    // A change sent just before quorum is lost fails with it.
    a.propose(1, member("a", None, Some(2)), 0, now);
    etcd.up = false;
    a.deliver(&mut etcd, now);
    assert!(matches!(a.done.get(&1), Some(Err(ClusterError::Unavailable(_)))));
    a.follow(&etcd, now);
    a.propose(2, member("a", None, Some(3)), 0, now);
    assert!(matches!(a.done.get(&2), Some(Err(ClusterError::Unavailable(_)))), "refused at once");
    assert!(a.requests.is_empty(), "nothing is sent");
    assert_eq!(a.r.status().refused.get(), 2);
    assert!(a.overrides().is_empty(), "nothing half-applied");
    etcd.up = true;
    a.follow(&etcd, now);
    a.propose(3, member("a", None, Some(4)), 0, now);
    a.deliver(&mut etcd, now);
    assert_eq!(a.done.get(&3), Some(&Ok(())));
    assert_eq!(a.overrides().len(), 1);
}

#[test]
fn a_value_written_by_hand_under_the_prefix_is_ignored_and_the_next_change_replaces_it() {
    let now = Now::read();
    let mut etcd = Model::new();
    let (mut a, mut b) = (Node::new("a", now), Node::new("b", now));
    a.follow(&etcd, now);
    b.follow(&etcd, now);
    etcd.put(&keys().overrides(POOL), b"{not json".to_vec());
    a.follow(&etcd, now);
    b.follow(&etcd, now);
    assert!(b.overrides().is_empty(), "ignored: nothing changes");
    // Its revision is known, so a change commits on top of it at once.
    a.propose(1, member("b", Some(AdminState::Drain), None), 0, now);
    a.deliver(&mut etcd, now);
    assert_eq!(a.done.get(&1), Some(&Ok(())), "no race with a value nobody can read");
    b.follow(&etcd, now);
    assert_eq!(b.overrides(), a.overrides());
    assert_eq!(a.overrides().len(), 1);
}

#[test]
fn three_authorities_fold_views_and_a_restarted_one_raises_the_group_serial() {
    let now = Now::read();
    let mut etcd = Model::new();
    let (mut a, mut b, mut c) = (Node::new("a", now), Node::new("b", now), Node::new("c", now));
    let pool = hickory_proto::rr::LowerName::from(hickory_proto::rr::Name::from_ascii(POOL).unwrap());
    let view = |up: Option<bool>| vec![(pool.clone(), Arc::<str>::from("a"), up)];
    // b sees member a up, c sees it down: any fresh up wins at a.
    b.r.tick(now.instant, &[], view(Some(true)));
    b.steps(now);
    c.r.tick(now.instant, &[], view(Some(false)));
    c.steps(now);
    settle(&mut [&mut a, &mut b, &mut c], &mut etcd, now);
    assert_eq!(a.remote[&(POOL.to_owned(), "a".to_owned())], Some(true));
    // b's view goes stale: c's down is the word.
    b.r.tick(now.instant, &[], view(None));
    b.steps(now);
    settle(&mut [&mut a, &mut b, &mut c], &mut etcd, now);
    assert_eq!(a.remote[&(POOL.to_owned(), "a".to_owned())], Some(false));
    // The group's serial is 7; c restarted after kill -9 and serves 1007.
    etcd.put(&keys().serial("example."), b"7".to_vec());
    settle(&mut [&mut a, &mut b, &mut c], &mut etcd, now);
    c.r.tick(now.instant, &[("example.".to_owned(), 1007)], Vec::new());
    c.steps(now);
    settle(&mut [&mut a, &mut b, &mut c], &mut etcd, now);
    assert_eq!(a.serials["example."], 1007, "every authority moves up to it");
}

#[test]
fn a_death_waits_behind_at_most_one_commit_of_share_moves_and_every_commit_has_its_own_serial() {
    let now = Now::read();
    let status = ClusterStatus::new();
    status.set_available(true, None);
    let mut r: Reconcile<Token> = Reconcile::new("a".into(), FINGERPRINT.into(), status);
    let leader = Leader { key: b"/vnamed/decider/a".to_vec(), revision: 7 };
    r.event(Event::Decider(Some(leader)), &Registry::default(), now.instant);
    while r.poll().is_some() {}
    let ip = |i: u32| std::net::IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + i));
    let d = |i: u32, share: f64| Decision { shares: vec![share, 1.0 - share], ..Decision::plain(vec![ip(i), ip(i + 1)], false, false, 5) };
    let pools = |n: u32, share: f64| (0..n).map(|i| (format!("p{i:04}.example."), "example.".to_owned(), d(i, share))).collect::<Vec<_>>();
    let local: HashMap<String, u32> = [("example.".to_owned(), 1)].into();
    type Commit = (Vec<(String, Decision)>, Vec<(String, u32)>);
    let sent = |r: &mut Reconcile<Token>| -> Vec<Commit> {
        let mut out = Vec::new();
        while let Some(step) = r.poll() {
            if let Step::Send(Request::Decisions { decisions, serials, .. }) = step {
                out.push((decisions, serials));
            }
        }
        out
    };
    // 300 pools' first decisions: one transaction's worth at a time.
    r.offer(pools(300, 0.5), &local);
    let first = sent(&mut r);
    assert_eq!(first.len(), 1, "one commit in flight");
    assert_eq!(first[0].0.len() + first[0].1.len(), 100, "a transaction's worth of puts");
    assert_eq!(first[0].1, vec![("example.".to_owned(), 2)]);
    for _ in 0..3 {
        r.outcome(Outcome::Decisions { result: Ok(1) }, &Registry::default(), now.instant);
        sent(&mut r);
    }
    // Now shares move in all of them, and one member dies in p0299.
    let mut moves = pools(300, 0.6);
    moves[299].2 = Decision::plain(vec![ip(300)], false, false, 5);
    r.offer(moves, &local);
    assert!(sent(&mut r).is_empty(), "the last of the first decisions is still in flight");
    let mut commits = Vec::new();
    while !commits.iter().any(|(d, _): &Commit| d.iter().any(|(p, _)| p == "p0299.example.")) {
        r.outcome(Outcome::Decisions { result: Ok(1) }, &Registry::default(), now.instant);
        commits.extend(sent(&mut r));
        assert!(commits.len() < 10);
    }
    assert_eq!(commits.len(), 1, "the death goes out in the first commit after the one in flight");
    assert_eq!(commits[0].0[0].0, "p0299.example.", "first in it");
    for _ in 0..3 {
        r.outcome(Outcome::Decisions { result: Ok(1) }, &Registry::default(), now.instant);
        commits.extend(sent(&mut r));
    }
    assert_eq!(commits.iter().map(|(d, _)| d.len()).sum::<usize>(), 300, "then the share moves");
    let serials: Vec<u32> = commits.iter().flat_map(|(_, s)| s.iter().map(|(_, n)| *n)).collect();
    assert!(serials.windows(2).all(|w| serial_gt(w[1], w[0])), "each commit its own serial: {serials:?}");
}
