//! Reconciling one authority with its group, as a state machine with no
//! I/O: the group's news (watch events, in revision order) and the
//! outcomes of this authority's requests come in; requests for the etcd
//! driver, what the catalog must apply, and the end of each proposal come
//! out (`poll`). Time is passed in.
//!
//! What it keeps: each pool's overrides revision applied here and the
//! ring table's, so an older change never replaces a newer one; changes
//! that raced another authority's, waiting for the newer state before
//! they are staged again; the group's decisions and serials applied;
//! while this authority decides, its election key and the one commit of
//! decisions in flight (offers meanwhile are folded into the next); the
//! views of members it published and those of the others, folded into
//! one word per member.
//!
//! Calling order: `propose*` for an operator's or ring member's change
//! (refused at once while the group's state is unavailable), `event` for
//! the watch, `outcome` for a request's result, `offer` after the catalog
//! decided, `tick` now and then; after each, drain `poll`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::LowerName;
use tracing::{debug, info, warn};

use super::{ClusterError, ClusterStatus, Event, Leader, Unreadable};
use crate::pool::table::Change as PoolChange;
use crate::pool::{Decision, Overrides};
use crate::ring::registry::{Registry, RingOp};
use crate::zone::serial_gt;

/// Attempts at a change that keeps racing other authorities' changes.
const ATTEMPTS: u32 = 5;
/// How long a change that raced another waits for the newer state.
const WAIT: Duration = Duration::from_secs(5);
/// Puts in one commit of decisions and serials: one etcd transaction
/// (etcd's default limit is 128 operations).
const DECISION_PUTS: usize = 100;

/// Names a request whose outcome a proposal waits for.
pub type Id = u64;

/// What the etcd driver is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Pool `pool`'s overrides, read at revision `base` (0: none).
    Overrides { id: Id, pool: String, overrides: Overrides, base: i64 },
    /// The ring's server table, read at revision `base`.
    Ring { id: Id, ring: Registry, base: i64 },
    /// The decider's decisions and serials, while `leader` decides.
    Decisions { leader: Leader, decisions: Vec<(String, Decision)>, serials: Vec<(String, u32)> },
    /// Zone `zone`'s group serial up to `serial`, unless it moved since `base`.
    RaiseSerial { zone: String, serial: u32, base: i64 },
    /// This authority's own views that changed (pool, member, up/down; `None`: stale).
    Views(Vec<(String, String, Option<bool>)>),
    /// The pools were edited here: they become the group's.
    Adopt { was: String, now: String },
}

impl Request {
    /// The outcome of this request when it never reached etcd (the
    /// driver's queue was full, or it is gone).
    pub fn failed(&self, e: ClusterError) -> Option<Outcome> {
        match self {
            Request::Overrides { id, .. } => Some(Outcome::Overrides { id: *id, result: Err(e) }),
            Request::Ring { id, .. } => Some(Outcome::Ring { id: *id, result: Err(e) }),
            Request::Decisions { .. } => Some(Outcome::Decisions { result: Err(e) }),
            Request::RaiseSerial { zone, .. } => Some(Outcome::Raised { zone: zone.clone() }),
            Request::Views(_) => Some(Outcome::ViewsLost),
            Request::Adopt { .. } => None,
        }
    }
}

/// What came of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Overrides {
        id: Id,
        result: Result<i64, ClusterError>,
    },
    Ring {
        id: Id,
        result: Result<i64, ClusterError>,
    },
    /// The decisions in flight: committed at a revision, or not.
    Decisions {
        result: Result<i64, ClusterError>,
    },
    /// A zone's serial raise ended (whatever came of it).
    Raised {
        zone: String,
    },
    /// Views were not all published (a write failed, a new lease): every
    /// view is published again.
    ViewsLost,
}

/// A change proposed to the group: staged again when it raced.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    Pool { pool: String, change: PoolChange },
    Ring { op: RingOp },
}

/// What reconciling asks of the catalog and the drivers.
#[derive(Debug)]
pub enum Step<R> {
    /// For the etcd driver.
    Send(Request),
    /// The group's overrides of a pool, to serve (and keep in the
    /// embedded store, for a start with etcd out of reach).
    ApplyOverrides { pool: String, overrides: Overrides },
    /// The group's ring table, likewise.
    ApplyRing(Registry),
    /// The group's decisions and zone serials, to serve.
    Impose { decisions: Vec<(String, Decision)>, serials: Vec<(String, u32)> },
    /// What the other authorities see of members, one word per member.
    RemoteViews(Vec<(String, String, Option<bool>)>),
    /// This authority decides now: every own decision is offered again.
    OfferAll,
    /// A change that raced another authority's, whose newer state is in:
    /// stage it on the state now and propose it again.
    Again { proposal: Proposal, attempt: u32, reply: R },
    /// A proposal's end: committed (and applied here) or refused.
    Done { reply: R, result: Result<(), ClusterError> },
}

/// A proposal whose commit is under way.
struct InFlight<R> {
    proposal: Proposal,
    key: Key,
    attempt: u32,
    reply: R,
    /// A pool change: the overrides it commits. A ring change: the
    /// table it commits, and what its log says.
    overrides: Option<Overrides>,
    ring: Option<(Registry, String)>,
}

/// What a proposal's revision is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Pool(String),
    Ring,
}

/// A change that raced another authority's, waiting for the state at `revision`.
struct Retry<R> {
    revision: i64,
    key: Key,
    attempt: u32,
    until: Instant,
    proposal: Proposal,
    reply: R,
}

pub struct Reconcile<R> {
    status: Arc<ClusterStatus>,
    out: VecDeque<Step<R>>,
    ids: Id,
    in_flight: HashMap<Id, InFlight<R>>,
    retries: Vec<Retry<R>>,
    /// Each pool's overrides revision applied here, and the ring table's.
    applied: HashMap<String, i64>,
    ring_revision: i64,
    /// Whether the ring table this authority serves came from the group.
    ring_offered: bool,
    /// Each pool's decision revision applied here; each zone's group
    /// serial and its revision.
    decided: HashMap<String, i64>,
    serials: HashMap<String, (u32, i64)>,
    /// While this authority decides: its election key, whether a commit
    /// of decisions is in flight, what waits for the next (the latest
    /// decision per pool, with its zone), the last decision sent per pool,
    /// the last serial offered per zone, and the zones' serials here.
    leader: Option<Leader>,
    committing: bool,
    next_offer: BTreeMap<String, (String, Decision)>,
    sent: HashMap<String, Decision>,
    offered: HashMap<String, u32>,
    local: HashMap<String, u32>,
    /// An offer was lost (a commit failed): offer everything again.
    reoffer: bool,
    /// Zones whose group serial is being raised.
    raising: HashSet<String>,
    /// This authority's name, the views it published, and the others'
    /// views: (pool, member) → authority → up.
    name: String,
    published: HashMap<(LowerName, Arc<str>), Option<bool>>,
    remote: HashMap<(String, String), HashMap<String, bool>>,
    /// The pools' fingerprint this authority serves.
    fingerprint: String,
}

impl<R> Reconcile<R> {
    pub fn new(name: String, fingerprint: String, status: Arc<ClusterStatus>) -> Self {
        Self {
            status,
            out: VecDeque::new(),
            ids: 0,
            in_flight: HashMap::new(),
            retries: Vec::new(),
            applied: HashMap::new(),
            ring_revision: 0,
            ring_offered: false,
            decided: HashMap::new(),
            serials: HashMap::new(),
            leader: None,
            committing: false,
            next_offer: BTreeMap::new(),
            sent: HashMap::new(),
            offered: HashMap::new(),
            local: HashMap::new(),
            reoffer: false,
            raising: HashSet::new(),
            name,
            published: HashMap::new(),
            remote: HashMap::new(),
            fingerprint,
        }
    }

    pub fn poll(&mut self) -> Option<Step<R>> {
        self.out.pop_front()
    }

    pub fn status(&self) -> &Arc<ClusterStatus> {
        &self.status
    }

    /// Why a change cannot be committed now, counted as refused.
    fn unavailable(&self) -> Option<ClusterError> {
        let why = self.status.trouble()?;
        self.status.refused.inc();
        Some(ClusterError::Unavailable(why))
    }

    fn id(&mut self) -> Id {
        self.ids += 1;
        self.ids
    }

    /// An operator's change to pool `key` (`pool` as named), staged by
    /// the catalog into `overrides`: committed on top of the revision
    /// applied here.
    pub fn propose_pool(&mut self, key: String, pool: String, change: PoolChange, overrides: Overrides, attempt: u32, reply: R) {
        if let Some(e) = self.unavailable() {
            return self.out.push_back(Step::Done { reply, result: Err(e) });
        }
        let id = self.id();
        let base = self.applied.get(&key).copied().unwrap_or(0);
        self.out.push_back(Step::Send(Request::Overrides { id, pool: key.clone(), overrides: overrides.clone(), base }));
        let proposal = Proposal::Pool { pool, change };
        self.in_flight.insert(id, InFlight { proposal, key: Key::Pool(key), attempt, reply, overrides: Some(overrides), ring: None });
    }

    /// A ring member's report, stepped by the catalog on the table it
    /// serves into `next` (`None`: it changes nothing, answered at once).
    pub fn propose_ring(&mut self, op: RingOp, next: Option<(Registry, String)>, attempt: u32, reply: R) {
        if let Some(e) = self.unavailable() {
            return self.out.push_back(Step::Done { reply, result: Err(e) });
        }
        let Some((next, said)) = next else {
            return self.out.push_back(Step::Done { reply, result: Ok(()) });
        };
        let id = self.id();
        self.out.push_back(Step::Send(Request::Ring { id, ring: next.clone(), base: self.ring_revision }));
        let f = InFlight { proposal: Proposal::Ring { op }, key: Key::Ring, attempt, reply, overrides: None, ring: Some((next, said)) };
        self.in_flight.insert(id, f);
    }

    /// The pools were edited here (to fingerprint `now`): they become the group's.
    pub fn reconfigured(&mut self, now: String) {
        if now != self.fingerprint {
            let was = std::mem::replace(&mut self.fingerprint, now.clone());
            self.out.push_back(Step::Send(Request::Adopt { was, now }));
        }
    }

    /// What the driver read from the group. `ring` is the table served
    /// here (offered to a group that has none).
    pub fn event(&mut self, event: Event, ring: &Registry, now: Instant) {
        match event {
            Event::Ring { ring: Some(next), revision } => self.apply_ring(next, revision, ring),
            // The group has no ring table yet: this authority offers its own.
            Event::Ring { ring: None, revision: 0 } => {
                if self.ring_revision == 0 && *ring != Registry::default() && !self.ring_offered {
                    self.ring_offered = true;
                    let id = self.id();
                    self.out.push_back(Step::Send(Request::Ring { id, ring: ring.clone(), base: 0 }));
                }
            }
            // An operator deleted the group's ring table.
            Event::Ring { ring: None, revision } => self.apply_ring(Registry::default(), revision, ring),
            Event::Overrides { pool, overrides, revision } => self.apply(pool, overrides, revision),
            Event::Decided { decisions, serials } => self.decided(decisions, serials),
            Event::Views { views, whole } => self.seen(views, whole),
            Event::Unreadable { what: Unreadable::Overrides(pool), revision } => {
                let known = self.applied.entry(pool).or_insert(0);
                *known = (*known).max(revision);
            }
            Event::Unreadable { what: Unreadable::Ring, revision } => self.ring_revision = self.ring_revision.max(revision),
            Event::Through(revision) => self.status.set_revision(revision),
            Event::Decider(leader) => {
                self.status.set_decider(leader.is_some());
                self.sent.clear();
                if leader.is_some() {
                    // A new decider offers the group every decision of its own.
                    self.out.push_back(Step::OfferAll);
                }
                self.leader = leader;
            }
        }
        self.retry_due(now);
    }

    /// The ring table as of `revision`, unless a newer one is in.
    fn apply_ring(&mut self, next: Registry, revision: i64, served: &Registry) {
        if self.ring_revision >= revision {
            return;
        }
        self.ring_revision = revision;
        if *served != next {
            self.out.push_back(Step::ApplyRing(next));
        }
    }

    /// Pool `pool`'s overrides as of `revision`, unless a newer word is in.
    fn apply(&mut self, pool: String, overrides: Overrides, revision: i64) {
        let known = self.applied.entry(pool.clone()).or_insert(0);
        if *known >= revision {
            return;
        }
        *known = revision;
        self.out.push_back(Step::ApplyOverrides { pool, overrides });
    }

    /// The group's decisions and serials, where newer than what is served.
    fn decided(&mut self, decisions: Vec<(String, Decision, i64)>, serials: Vec<(String, u32, i64)>) {
        let mut take = Vec::new();
        for (pool, d, revision) in decisions {
            let known = self.decided.entry(pool.clone()).or_insert(0);
            if *known < revision {
                *known = revision;
                take.push((pool, d));
            }
        }
        let mut zones = Vec::new();
        for (zone, n, revision) in serials {
            if self.serials.get(&zone).is_none_or(|(_, r)| *r < revision) {
                self.serials.insert(zone.clone(), (n, revision));
                zones.push((zone, n));
            }
        }
        if !take.is_empty() || !zones.is_empty() {
            self.out.push_back(Step::Impose { decisions: take, serials: zones });
        }
    }

    /// What a request brought back.
    pub fn outcome(&mut self, outcome: Outcome, ring: &Registry, now: Instant) {
        match outcome {
            Outcome::Overrides { id, result } | Outcome::Ring { id, result } => match self.in_flight.remove(&id) {
                Some(f) => self.committed(f, result, ring, now),
                // This authority's own table offered to a group without one:
                // lost the race or not, the group's comes by the watch.
                None => {
                    if let Ok(revision) = result {
                        info!(revision, "this authority's ring table is now the group's");
                        self.ring_revision = self.ring_revision.max(revision);
                        self.status.set_revision(revision);
                    }
                    self.ring_offered = false;
                }
            },
            Outcome::Decisions { result } => {
                self.committing = false;
                match result {
                    Ok(revision) => self.status.set_revision(revision),
                    Err(e) => {
                        if !self.reoffer {
                            warn!(error = %e, "the decider's decisions could not be committed; serving the group's last ones, offering all again");
                        }
                        self.reoffer = true;
                        self.sent.clear();
                    }
                }
                self.send_offer();
            }
            Outcome::Raised { zone } => {
                self.raising.remove(&zone);
            }
            Outcome::ViewsLost => self.published.clear(),
        }
        self.retry_due(now);
    }

    /// A proposal's commit: applied here at once (the watch brings it to
    /// the others), tried again after a race, or refused.
    fn committed(&mut self, f: InFlight<R>, result: Result<i64, ClusterError>, ring: &Registry, now: Instant) {
        match result {
            Ok(revision) => {
                // Applied here at once; `Done` follows the apply.
                match (f.key, f.overrides, f.ring) {
                    (Key::Pool(key), Some(overrides), _) => {
                        info!(pool = %key, revision, overrides = ?overrides.lines(), "pool changed by operator, committed to the group");
                        self.apply(key, overrides, revision);
                    }
                    (_, _, Some((next, said))) => {
                        info!(revision, "{said}, committed to the group");
                        self.apply_ring(next, revision, ring);
                    }
                    _ => {}
                }
                self.status.set_revision(revision);
                self.out.push_back(Step::Done { reply: f.reply, result: Ok(()) });
            }
            Err(ClusterError::Conflict { revision, .. }) if f.attempt < ATTEMPTS => {
                debug!(revision, "raced another authority's change; tried again once it is in");
                let (key, attempt, proposal, reply) = (f.key, f.attempt + 1, f.proposal, f.reply);
                self.retries.push(Retry { revision, key, attempt, until: now + WAIT, proposal, reply });
            }
            Err(e) => {
                if matches!(e, ClusterError::Unavailable(_) | ClusterError::Refused(_)) {
                    self.status.refused.inc();
                }
                warn!(error = %e, "change refused by the group");
                self.out.push_back(Step::Done { reply: f.reply, result: Err(e) });
            }
        }
    }

    /// The revision applied here of what a proposal changes.
    fn reached(&self, key: &Key) -> i64 {
        match key {
            Key::Pool(pool) => self.applied.get(pool).copied().unwrap_or(0),
            Key::Ring => self.ring_revision,
        }
    }

    /// Changes whose race is over (the newer state is in), staged again;
    /// those that waited too long, refused.
    fn retry_due(&mut self, now: Instant) {
        if self.retries.is_empty() {
            return;
        }
        let (due, waiting): (Vec<Retry<R>>, Vec<Retry<R>>) =
            std::mem::take(&mut self.retries).into_iter().partition(|r| self.reached(&r.key) >= r.revision || now >= r.until);
        self.retries = waiting;
        for r in due {
            if self.reached(&r.key) < r.revision {
                let what = match &r.proposal {
                    Proposal::Pool { pool, .. } => format!("pool {pool}"),
                    Proposal::Ring { .. } => "the ring table".to_owned(),
                };
                let e =
                    ClusterError::Unavailable(format!("{what} changed at another authority, and that change did not arrive here in time"));
                self.out.push_back(Step::Done { reply: r.reply, result: Err(e) });
                continue;
            }
            self.out.push_back(Step::Again { proposal: r.proposal, attempt: r.attempt, reply: r.reply });
        }
    }

    /// Whether every own decision must be offered again (a commit of
    /// them was lost) before `offer`; says so once.
    pub fn wants_all(&mut self) -> bool {
        if self.leader.is_some() && self.reoffer && self.status.available() {
            self.reoffer = false;
            return true;
        }
        false
    }

    /// This authority's own decisions that changed (pool key, zone,
    /// decision), with the zones' serials served here: committed for the
    /// group while it decides; dropped otherwise (a new decider offers all
    /// of its own).
    pub fn offer(&mut self, offers: Vec<(String, String, Decision)>, local: &HashMap<String, u32>) {
        if self.leader.is_none() || offers.is_empty() {
            return;
        }
        self.local.clone_from(local);
        for (pool, zone, d) in offers {
            self.next_offer.insert(pool, (zone, d));
        }
        self.send_offer();
    }

    /// The next commit of decisions, when none is in flight: one etcd
    /// transaction's worth, decisions whose addresses changed first (a
    /// death waits behind at most one commit of share moves), each zone
    /// they touch with its next serial.
    fn send_offer(&mut self) {
        let Some(leader) = self.leader.clone() else {
            self.next_offer.clear();
            return;
        };
        if self.committing || self.next_offer.is_empty() {
            return;
        }
        let moved =
            |pool: &String, d: &Decision, sent: &HashMap<String, Decision>| sent.get(pool).is_none_or(|s| s.addresses != d.addresses);
        let (mut first, mut rest): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for (pool, (_, d)) in &self.next_offer {
            if moved(pool, d, &self.sent) { first.push(pool.clone()) } else { rest.push(pool.clone()) }
        }
        let mut decisions = Vec::new();
        let mut zones: BTreeMap<String, u32> = BTreeMap::new();
        for pool in first.into_iter().chain(rest) {
            let zone = &self.next_offer[&pool].0;
            let puts = decisions.len() + zones.len() + 1 + usize::from(!zones.contains_key(zone));
            if puts > DECISION_PUTS && !decisions.is_empty() {
                break;
            }
            if !zones.contains_key(zone) {
                let known = [self.local.get(zone).copied(), self.serials.get(zone).map(|(n, _)| *n), self.offered.get(zone).copied()];
                let next = known.into_iter().flatten().reduce(|a, b| if serial_gt(b, a) { b } else { a }).unwrap_or(0).wrapping_add(1);
                self.offered.insert(zone.clone(), next);
                zones.insert(zone.clone(), next);
            }
            let (_, d) = self.next_offer.remove(&pool).expect("listed above");
            self.sent.insert(pool.clone(), d.clone());
            decisions.push((pool, d));
        }
        self.committing = true;
        self.out.push_back(Step::Send(Request::Decisions { leader, decisions, serials: zones.into_iter().collect() }));
    }

    /// Now and then: expires retries that waited too long, moves the
    /// group's serials up to those served here where they are higher (a
    /// restart jumps them ahead), and publishes own views that changed.
    pub fn tick(&mut self, now: Instant, local: &[(String, u32)], views: Vec<(LowerName, Arc<str>, Option<bool>)>) {
        self.retry_due(now);
        if self.status.available() && self.leader.is_none() {
            for (zone, serial) in local {
                let Some(&(group, revision)) = self.serials.get(zone) else { continue };
                if serial_gt(*serial, group) && self.raising.insert(zone.clone()) {
                    self.out.push_back(Step::Send(Request::RaiseSerial { zone: zone.clone(), serial: *serial, base: revision }));
                }
            }
        }
        self.publish_views(views);
    }

    /// This authority's own views that changed since they were published.
    fn publish_views(&mut self, views: Vec<(LowerName, Arc<str>, Option<bool>)>) {
        let mut changed = Vec::new();
        for (pool, member, seen) in views {
            let key = (pool, member);
            // Never published counts as stale: a stale view never published says nothing.
            if self.published.get(&key).copied().flatten() != seen {
                changed.push((key.0.to_string(), key.1.to_string(), seen));
                self.published.insert(key, seen);
            }
        }
        if !changed.is_empty() {
            self.out.push_back(Step::Send(Request::Views(changed)));
        }
    }

    /// Other authorities' views: what they see of each member, folded into
    /// one word per member (any fresh up wins; else any fresh down; else
    /// nothing).
    fn seen(&mut self, views: Vec<(String, String, String, Option<bool>)>, whole: bool) {
        let mut touched: HashSet<(String, String)> = HashSet::new();
        if whole {
            touched.extend(self.remote.drain().map(|(k, _)| k));
        }
        for (authority, pool, member, seen) in views {
            if authority == self.name {
                continue;
            }
            let key = (pool, member);
            let by = self.remote.entry(key.clone()).or_default();
            match seen {
                Some(up) => by.insert(authority, up),
                None => by.remove(&authority),
            };
            touched.insert(key);
        }
        let words: Vec<_> = touched
            .into_iter()
            .map(|key| {
                let by = self.remote.get(&key);
                let word = by.and_then(|by| if by.values().any(|&u| u) { Some(true) } else { by.values().next().map(|_| false) });
                if by.is_some_and(|b| b.is_empty()) {
                    self.remote.remove(&key);
                }
                (key.0, key.1, word)
            })
            .collect();
        if !words.is_empty() {
            self.out.push_back(Step::RemoteViews(words));
        }
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
