//! The updater's side of a cluster (`[cluster] backend = "etcd"`): an
//! operator's change is checked here, committed to the group's etcd by a
//! task (the updater never waits on the network), and applied when the
//! commit holds; every authority applies the group's changes from its
//! watch, in revision order, each pool at most once per revision, so an
//! older change never replaces a newer one. A change that raced another
//! authority's is tried again once the newer overrides are in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::rr::LowerName;
use tokio_util::sync::CancellationToken;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, PoolChange, UpdateError, serial_gt};
use crate::clock::Now;
use crate::cluster::etcd::Etcd;
use crate::cluster::{ClusterError, ClusterStatus, Event, Leader, Unreadable};
use crate::pool::{Decision, Overrides};
use crate::ring::registry::{Registry, RingOp, RingReply};
use crate::state::Put;

/// Attempts at a change that keeps racing other authorities' changes.
const ATTEMPTS: u32 = 5;
/// How long a change that raced another waits for the newer overrides.
const WAIT: Duration = Duration::from_secs(5);

/// Where an operator's change is answered.
pub enum Reply {
    /// With the pool's answer after the change.
    Answer(oneshot::Sender<Result<Vec<IpAddr>, UpdateError>>),
    Done(oneshot::Sender<Result<(), UpdateError>>),
}

impl Reply {
    pub fn send(self, r: Result<Vec<IpAddr>, UpdateError>) {
        match self {
            Reply::Answer(tx) => {
                let _ = tx.send(r);
            }
            Reply::Done(tx) => {
                let _ = tx.send(r.map(drop));
            }
        }
    }
}

/// Where a ring member's report is answered.
pub type RingTx = oneshot::Sender<Result<RingReply, UpdateError>>;

/// What the updater's tasks bring back.
pub enum Back {
    /// An operator's change, committed or not.
    Change(Box<Committed>),
    /// A ring table change, committed or not.
    Ring(Box<RingCommitted>),
    /// The decider's decisions and serials, committed (at a revision) or not.
    Decisions { decisions: Vec<(String, Decision)>, serials: Vec<(String, u32)>, result: Result<i64, ClusterError> },
    /// A zone's group serial was moved up (or another change came first).
    Raised { zone: String },
}

/// Decisions waiting for the decider's commit task.
type Offer = (Leader, Vec<(String, Decision)>, Vec<(String, u32)>);

/// A commit's outcome, back from its task.
pub struct Committed {
    pool: String,
    key: String,
    overrides: Overrides,
    change: PoolChange,
    attempt: u32,
    result: Result<i64, ClusterError>,
    reply: Reply,
}

/// A ring table change's outcome: `op` as a ring member reported it
/// (`None`: this authority offered its own table to a group without
/// one), the table after it, and what to answer and log.
pub struct RingCommitted {
    op: Option<(RingOp, RingTx)>,
    next: Registry,
    answer: RingReply,
    said: String,
    attempt: u32,
    result: Result<i64, ClusterError>,
}

/// A change that raced another authority's, waiting for the newer state
/// (at `revision`) before it is tried again.
struct Retry {
    revision: i64,
    attempt: u32,
    until: Instant,
    pending: Pending,
}

enum Pending {
    Pool { key: String, pool: String, change: PoolChange, reply: Reply },
    Ring { op: RingOp, reply: RingTx },
}

impl Pending {
    fn refuse(self, e: ClusterError) {
        let e = UpdateError::Cluster(e.to_string());
        match self {
            Pending::Pool { reply, .. } => reply.send(Err(e)),
            Pending::Ring { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

pub struct Shared {
    etcd: Etcd,
    pub status: Arc<ClusterStatus>,
    committed: mpsc::Sender<Back>,
    /// Each pool's overrides revision applied here, and the ring table's.
    applied: HashMap<String, i64>,
    ring_revision: i64,
    retries: Vec<Retry>,
    /// Each pool's decision revision applied here.
    decided: HashMap<String, i64>,
    /// Each zone's group serial and its revision.
    serials: HashMap<String, (u32, i64)>,
    /// While this authority is the decider: its election key, the queue of
    /// its commit task, and the last serial it offered per zone.
    leader: Option<Leader>,
    offers: mpsc::Sender<Offer>,
    offered: HashMap<String, u32>,
    /// An offer was lost (queue full, commit failed): offer everything again.
    reoffer: bool,
    /// Zones whose group serial is being moved up.
    raising: HashSet<String>,
    /// This authority's name in the group, the own views it published,
    /// the queue to the task that publishes them, and its word that they
    /// must all be published again (a new lease).
    name: String,
    published: HashMap<(LowerName, Arc<str>), Option<bool>>,
    views: mpsc::Sender<Vec<(String, String, Option<bool>)>>,
    views_lost: Arc<AtomicBool>,
    /// The other authorities' views: (pool, member) → authority → up.
    remote: HashMap<(String, String), HashMap<String, bool>>,
}

/// Offers the commit task may hold before the decider offers all again.
const OFFER_QUEUE: usize = 64;

impl Shared {
    /// The updater's end, and the receiver of what its tasks bring back.
    pub fn new(etcd: Etcd, status: Arc<ClusterStatus>, name: String, shutdown: CancellationToken) -> (Self, mpsc::Receiver<Back>) {
        let (committed, rx) = mpsc::channel(256);
        let (offers, queue) = mpsc::channel(OFFER_QUEUE);
        tokio::spawn(commit_decisions(etcd.clone(), queue, committed.clone()));
        let (views, views_rx) = mpsc::channel(OFFER_QUEUE);
        let views_lost = Arc::new(AtomicBool::new(false));
        tokio::spawn(etcd.clone().publish_views(name.clone(), views_rx, views_lost.clone(), shutdown));
        let shared = Self {
            etcd,
            status,
            committed,
            applied: HashMap::new(),
            ring_revision: 0,
            retries: Vec::new(),
            decided: HashMap::new(),
            serials: HashMap::new(),
            leader: None,
            offers,
            offered: HashMap::new(),
            reoffer: false,
            raising: HashSet::new(),
            name,
            published: HashMap::new(),
            views,
            views_lost,
            remote: HashMap::new(),
        };
        (shared, rx)
    }

    /// Why a change cannot be committed now (the group's state is
    /// unavailable), counted as refused; `None`: it can.
    fn unavailable(&self) -> Option<UpdateError> {
        let why = self.status.trouble()?;
        self.status.refused.inc();
        Some(UpdateError::Cluster(ClusterError::Unavailable(why).to_string()))
    }

    /// Checks an operator's change and hands it to a task that commits
    /// it; refused at once while the group's state is unavailable.
    pub fn propose(&mut self, catalog: &Catalog, pool: String, change: PoolChange, attempt: u32, reply: Reply, now: Now) {
        if let Some(e) = self.unavailable() {
            return reply.send(Err(e));
        }
        let staged = match catalog.stage(&pool, change.clone(), now) {
            Ok(s) => s,
            Err(e) => return reply.send(Err(e)),
        };
        let (key, overrides) = staged.overrides();
        let overrides = overrides.clone();
        let base = self.applied.get(&key).copied().unwrap_or(0);
        let (etcd, tx) = (self.etcd.clone(), self.committed.clone());
        tokio::spawn(async move {
            let result = etcd.commit(&key, &overrides, base).await;
            let _ = tx.send(Back::Change(Box::new(Committed { pool, key, overrides, change, attempt, result, reply }))).await;
        });
    }

    /// Checks a ring member's report against the group's ring table and
    /// hands the table after it to a task that commits it; a report that
    /// changes nothing is answered at once.
    pub fn propose_ring(&mut self, ring: &Registry, op: RingOp, attempt: u32, reply: RingTx) {
        if let Some(e) = self.unavailable() {
            let _ = reply.send(Err(e));
            return;
        }
        let step = match ring.step(&op) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        let Some(next) = step.next else {
            let _ = reply.send(Ok(step.reply));
            return;
        };
        self.commit_ring(Some((op, reply)), next, step.reply, step.said, attempt);
    }

    fn commit_ring(&self, op: Option<(RingOp, RingTx)>, next: Registry, answer: RingReply, said: String, attempt: u32) {
        let (etcd, tx, base) = (self.etcd.clone(), self.committed.clone(), self.ring_revision);
        tokio::spawn(async move {
            let result = etcd.commit_ring(&next, base).await;
            let _ = tx.send(Back::Ring(Box::new(RingCommitted { op, next, answer, said, attempt, result }))).await;
        });
    }

    /// The ring table as of `revision`, unless a newer one is in.
    fn apply_ring(&mut self, catalog: &mut Catalog, next: Registry, revision: i64, now: Now) {
        if self.ring_revision >= revision {
            return;
        }
        self.ring_revision = revision;
        if *catalog.ring() == next {
            return;
        }
        // Kept in the embedded store too, for a start with etcd out of reach.
        catalog.save_background([Put::Ring(next.to_text())]);
        catalog.set_ring(next, now.instant);
    }

    /// A ring table commit's outcome.
    fn ring_committed(&mut self, catalog: &mut Catalog, c: RingCommitted, now: Now) {
        match (c.result, c.op) {
            (Ok(revision), op) => {
                if op.is_some() {
                    info!(revision, "{}, committed to the group", c.said);
                } else {
                    info!(revision, "this authority's ring table is now the group's");
                }
                self.apply_ring(catalog, c.next, revision, now);
                self.status.set_revision(revision);
                if let Some((_, reply)) = op {
                    let _ = reply.send(Ok(c.answer));
                }
            }
            // An offered table that lost the race: the group's comes by the watch.
            (Err(_), None) => {}
            (Err(ClusterError::Conflict { revision, .. }), Some((op, reply))) if c.attempt < ATTEMPTS => {
                debug!(revision, "a ring change raced another authority's; tried again once it is in");
                let pending = Pending::Ring { op, reply };
                self.retries.push(Retry { revision, attempt: c.attempt + 1, until: now.instant + WAIT, pending });
                self.retry_due(catalog, now);
            }
            (Err(e), Some((_, reply))) => {
                if matches!(e, ClusterError::Unavailable(_) | ClusterError::Refused(_)) {
                    self.status.refused.inc();
                }
                warn!(error = %e, "ring change refused");
                let _ = reply.send(Err(UpdateError::Cluster(e.to_string())));
            }
        }
    }

    /// What a task brought back.
    pub fn back(&mut self, catalog: &mut Catalog, back: Back, now: Now) {
        match back {
            Back::Change(c) => self.committed(catalog, *c, now),
            Back::Ring(c) => self.ring_committed(catalog, *c, now),
            Back::Decisions { decisions, serials, result: Ok(revision) } => {
                let decisions = decisions.into_iter().map(|(p, d)| (p, d, revision)).collect();
                let serials = serials.into_iter().map(|(z, n)| (z, n, revision)).collect();
                self.decided(catalog, decisions, serials, now);
                self.status.set_revision(revision);
            }
            Back::Decisions { result: Err(e), .. } => {
                if !self.reoffer {
                    warn!(error = %e, "the decider's decisions could not be committed; serving the group's last ones, offering all again");
                }
                self.reoffer = true;
            }
            Back::Raised { zone } => {
                self.raising.remove(&zone);
            }
        }
    }

    /// The group's decisions and serials, where newer than what is served.
    fn decided(&mut self, catalog: &mut Catalog, decisions: Vec<(String, Decision, i64)>, serials: Vec<(String, u32, i64)>, now: Now) {
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
            catalog.impose(take, zones, now.instant);
        }
    }

    /// This authority's own decisions that changed: committed for the
    /// group while it is the decider (each zone with its next serial),
    /// dropped otherwise (a new decider offers all of its own).
    pub fn offer(&mut self, catalog: &mut Catalog, now: Now) {
        let mut offers = catalog.take_offers();
        let Some(leader) = self.leader.clone() else { return };
        if self.reoffer && self.status.available() {
            self.reoffer = false;
            catalog.offer_all(now.instant);
            offers.extend(catalog.take_offers());
        }
        if offers.is_empty() {
            return;
        }
        let local: HashMap<String, u32> = catalog.zone_serials().into_iter().collect();
        let mut serials = BTreeMap::new();
        for (_, zone, _) in &offers {
            if serials.contains_key(zone) {
                continue;
            }
            let known = [local.get(zone).copied(), self.serials.get(zone).map(|(n, _)| *n), self.offered.get(zone).copied()];
            let next = known.into_iter().flatten().reduce(|a, b| if serial_gt(b, a) { b } else { a }).unwrap_or(0).wrapping_add(1);
            self.offered.insert(zone.clone(), next);
            serials.insert(zone.clone(), next);
        }
        let decisions = offers.into_iter().map(|(pool, _, d)| (pool, d)).collect();
        if self.offers.try_send((leader, decisions, serials.into_iter().collect())).is_err() {
            self.reoffer = true;
        }
    }

    /// Moves each zone's group serial up to the one served here when this
    /// authority served a higher one (a restart jumps serials ahead).
    fn raise(&mut self, catalog: &Catalog) {
        if !self.status.available() {
            return;
        }
        for (zone, local) in catalog.zone_serials() {
            let Some(&(group, revision)) = self.serials.get(&zone) else { continue };
            if !serial_gt(local, group) || self.raising.contains(&zone) || self.leader.is_some() {
                continue;
            }
            self.raising.insert(zone.clone());
            let (etcd, back) = (self.etcd.clone(), self.committed.clone());
            tokio::spawn(async move {
                match etcd.raise_serial(&zone, local, revision).await {
                    Ok(true) => info!(zone, serial = local, "the group's serial moved up to the one served here"),
                    Ok(false) => debug!(zone, "the group's serial moved meanwhile"),
                    Err(e) => debug!(zone, error = %e, "the group's serial could not be moved up"),
                }
                let _ = back.send(Back::Raised { zone }).await;
            });
        }
    }

    /// A commit's outcome: applied here at once (the watch brings it to
    /// the others), tried again after a race, or refused.
    fn committed(&mut self, catalog: &mut Catalog, c: Committed, now: Now) {
        match c.result {
            Ok(revision) => {
                info!(pool = %c.pool, revision, overrides = ?c.overrides.lines(), "pool changed by operator, committed to the group");
                self.apply(catalog, &c.key, c.overrides, revision, now);
                self.status.set_revision(revision);
                c.reply.send(catalog.served(&c.pool));
            }
            Err(ClusterError::Conflict { revision, .. }) if c.attempt < ATTEMPTS => {
                debug!(pool = %c.pool, revision, "raced another authority's change; tried again once it is in");
                let pending = Pending::Pool { key: c.key, pool: c.pool, change: c.change, reply: c.reply };
                self.retries.push(Retry { revision, attempt: c.attempt + 1, until: now.instant + WAIT, pending });
                self.retry_due(catalog, now);
            }
            Err(e) => {
                if matches!(e, ClusterError::Unavailable(_) | ClusterError::Refused(_)) {
                    self.status.refused.inc();
                }
                warn!(pool = %c.pool, error = %e, "operator change refused");
                c.reply.send(Err(UpdateError::Cluster(e.to_string())));
            }
        }
    }

    /// What the driver read from the group.
    pub fn event(&mut self, catalog: &mut Catalog, event: Event, now: Now) {
        match event {
            Event::Ring { ring: Some(next), revision } => self.apply_ring(catalog, next, revision, now),
            // The group has no ring table yet: this authority offers its own.
            Event::Ring { ring: None, revision: 0 } => {
                if self.ring_revision == 0 && *catalog.ring() != Registry::default() {
                    self.commit_ring(None, catalog.ring().clone(), RingReply::Done, String::new(), 0);
                }
            }
            // An operator deleted the group's ring table.
            Event::Ring { ring: None, revision } => self.apply_ring(catalog, Registry::default(), revision, now),
            Event::Overrides { pool, overrides, revision } => {
                self.apply(catalog, &pool, overrides, revision, now);
            }
            Event::Decided { decisions, serials } => self.decided(catalog, decisions, serials, now),
            Event::Views { views, whole } => self.seen(catalog, views, whole, now),
            Event::Unreadable { what: Unreadable::Overrides(pool), revision } => {
                let known = self.applied.entry(pool).or_insert(0);
                *known = (*known).max(revision);
            }
            Event::Unreadable { what: Unreadable::Ring, revision } => self.ring_revision = self.ring_revision.max(revision),
            Event::Through(revision) => self.status.set_revision(revision),
            Event::Decider(leader) => {
                self.status.set_decider(leader.is_some());
                if leader.is_some() {
                    // A new decider offers the group every decision of its own.
                    catalog.offer_all(now.instant);
                }
                self.leader = leader;
            }
        }
        self.retry_due(catalog, now);
    }

    /// Pool `key`'s overrides as of `revision`, unless a newer word is in.
    fn apply(&mut self, catalog: &mut Catalog, key: &str, overrides: Overrides, revision: i64, now: Now) {
        let known = self.applied.entry(key.to_owned()).or_insert(0);
        if *known >= revision {
            return;
        }
        *known = revision;
        match catalog.stage(key, PoolChange::Replace(overrides), now) {
            Ok(staged) => {
                // Kept in the embedded store too: with etcd out of reach at
                // the next start, the last state is served.
                catalog.save_background(staged.saves().into_iter().cloned());
                if let Err(e) = catalog.commit(staged, now) {
                    warn!(pool = key, error = %e, "the group's overrides could not be applied");
                }
            }
            Err(e) => warn!(pool = key, revision, error = %e, "the group's overrides name a pool this authority does not serve"),
        }
    }

    /// What this authority applied of the state a retry waits for.
    fn reached(&self, pending: &Pending) -> i64 {
        match pending {
            Pending::Pool { key, .. } => self.applied.get(key).copied().unwrap_or(0),
            Pending::Ring { .. } => self.ring_revision,
        }
    }

    /// Changes whose race is over (the newer state is in), tried again;
    /// those that waited too long, refused.
    fn retry_due(&mut self, catalog: &Catalog, now: Now) {
        let (due, waiting): (Vec<Retry>, Vec<Retry>) =
            std::mem::take(&mut self.retries).into_iter().partition(|r| self.reached(&r.pending) >= r.revision || now.instant >= r.until);
        self.retries = waiting;
        for r in due {
            if self.reached(&r.pending) < r.revision {
                let what = match &r.pending {
                    Pending::Pool { pool, .. } => format!("pool {pool}"),
                    Pending::Ring { .. } => "the ring table".to_owned(),
                };
                r.pending.refuse(ClusterError::Unavailable(format!(
                    "{what} changed at another authority, and that change did not arrive here in time"
                )));
                continue;
            }
            match r.pending {
                Pending::Pool { pool, change, reply, .. } => self.propose(catalog, pool, change, r.attempt, reply, now),
                Pending::Ring { op, reply } => self.propose_ring(catalog.ring(), op, r.attempt, reply),
            }
        }
    }

    /// The pools were edited: they become the group's.
    pub fn reconfigured(&mut self, pools: &[crate::config::PoolConfig]) {
        let (was, now) = (self.etcd.fingerprint(), crate::cluster::fingerprint(pools));
        if was == now {
            return;
        }
        let etcd = self.etcd.clone();
        tokio::spawn(async move {
            if let Err(e) = etcd.adopt(&was, now).await {
                warn!(error = %e, "the edited pools could not be recorded as the group's; the next resync tries again");
            }
        });
    }

    /// Called on the updater's tick: expires retries that waited too
    /// long, moves the group's serials up where needed, and publishes
    /// this authority's own views of members that changed.
    pub fn tick(&mut self, catalog: &mut Catalog, now: Now) {
        if !self.retries.is_empty() {
            self.retry_due(catalog, now);
        }
        self.raise(catalog);
        self.publish_views(catalog, now);
    }

    /// This authority's own views that changed since they were published.
    fn publish_views(&mut self, catalog: &Catalog, now: Now) {
        if self.views_lost.swap(false, Ordering::Relaxed) {
            self.published.clear();
        }
        let mut changed = Vec::new();
        let mut keys = Vec::new();
        for (pool, member, seen) in catalog.own_views(now.instant) {
            let key = (pool, member);
            // Never published counts as stale: a stale view never published says nothing.
            if self.published.get(&key).copied().flatten() != seen {
                changed.push((key.0.to_string(), key.1.to_string(), seen));
                keys.push((key, seen));
            }
        }
        if changed.is_empty() {
            return;
        }
        if self.views.try_send(changed).is_ok() {
            self.published.extend(keys);
        }
    }

    /// Other authorities' views: what they see of each member, folded into
    /// one word per member for the table (any fresh up wins; else any
    /// fresh down; else nothing).
    fn seen(&mut self, catalog: &mut Catalog, views: Vec<(String, String, String, Option<bool>)>, whole: bool, now: Now) {
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
        let words = touched
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
        catalog.remote_views(words, now.instant);
    }
}

/// The decider's commit task: one offer at a time, in order, with what
/// queued meanwhile folded in (the latest decision per pool, the highest
/// serial per zone).
async fn commit_decisions(etcd: Etcd, mut queue: mpsc::Receiver<Offer>, back: mpsc::Sender<Back>) {
    while let Some((mut leader, decisions, serials)) = queue.recv().await {
        let mut decisions: BTreeMap<String, Decision> = decisions.into_iter().collect();
        let mut serials: BTreeMap<String, u32> = serials.into_iter().collect();
        while let Ok((l, d, s)) = queue.try_recv() {
            leader = l;
            decisions.extend(d);
            for (zone, n) in s {
                let e = serials.entry(zone).or_insert(n);
                if serial_gt(n, *e) {
                    *e = n;
                }
            }
        }
        let (decisions, serials): (Vec<_>, Vec<_>) = (decisions.into_iter().collect(), serials.into_iter().collect());
        let result = etcd.commit_decisions(&leader, &decisions, &serials).await;
        if back.send(Back::Decisions { decisions, serials, result }).await.is_err() {
            return;
        }
    }
}
