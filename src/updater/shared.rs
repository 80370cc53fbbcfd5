//! The updater's side of a cluster (`[cluster] backend = "etcd"`): an
//! operator's change is checked here, committed to the group's etcd by a
//! task (the updater never waits on the network), and applied when the
//! commit holds; every authority applies the group's changes from its
//! watch, in revision order, each pool at most once per revision, so an
//! older change never replaces a newer one. A change that raced another
//! authority's is tried again once the newer overrides are in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, PoolChange, UpdateError};
use crate::clock::Now;
use crate::cluster::etcd::Etcd;
use crate::cluster::{ClusterError, ClusterStatus, Event};
use crate::pool::Overrides;
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

/// A change that raced another authority's, waiting for its overrides
/// (pool `key` at `revision`) before it is tried again.
struct Retry {
    key: String,
    revision: i64,
    pool: String,
    change: PoolChange,
    attempt: u32,
    until: Instant,
    reply: Reply,
}

pub struct Shared {
    etcd: Etcd,
    pub status: Arc<ClusterStatus>,
    committed: mpsc::Sender<Committed>,
    /// Each pool's overrides revision applied here.
    applied: HashMap<String, i64>,
    retries: Vec<Retry>,
}

impl Shared {
    /// The updater's end, and the receiver of commit outcomes it selects on.
    pub fn new(etcd: Etcd, status: Arc<ClusterStatus>) -> (Self, mpsc::Receiver<Committed>) {
        let (committed, rx) = mpsc::channel(256);
        (Self { etcd, status, committed, applied: HashMap::new(), retries: Vec::new() }, rx)
    }

    /// Checks an operator's change and hands it to a task that commits
    /// it; refused at once while the group's state is unavailable.
    pub fn propose(&mut self, catalog: &Catalog, pool: String, change: PoolChange, attempt: u32, reply: Reply, now: Now) {
        if let Some(why) = self.status.trouble() {
            self.status.refused.inc();
            reply.send(Err(UpdateError::Cluster(ClusterError::Unavailable(why).to_string())));
            return;
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
            let _ = tx.send(Committed { pool, key, overrides, change, attempt, result, reply }).await;
        });
    }

    /// A commit's outcome: applied here at once (the watch brings it to
    /// the others), tried again after a race, or refused.
    pub fn committed(&mut self, catalog: &mut Catalog, saves: &mut Vec<Put>, c: Committed, now: Now) {
        match c.result {
            Ok(revision) => {
                info!(pool = %c.pool, revision, overrides = ?c.overrides.lines(), "pool changed by operator, committed to the group");
                self.apply(catalog, saves, &c.key, c.overrides, revision, now);
                self.status.set_revision(revision);
                c.reply.send(catalog.served(&c.pool));
            }
            Err(ClusterError::Conflict { revision, .. }) if c.attempt < ATTEMPTS => {
                debug!(pool = %c.pool, revision, "raced another authority's change; tried again once it is in");
                let retry = Retry {
                    key: c.key,
                    revision,
                    pool: c.pool,
                    change: c.change,
                    attempt: c.attempt + 1,
                    until: now.instant + WAIT,
                    reply: c.reply,
                };
                self.retries.push(retry);
                self.retry_due(catalog, now);
            }
            Err(e) => {
                if matches!(e, ClusterError::Unavailable(_)) {
                    self.status.refused.inc();
                }
                warn!(pool = %c.pool, error = %e, "operator change refused");
                c.reply.send(Err(UpdateError::Cluster(e.to_string())));
            }
        }
    }

    /// What the driver read from the group.
    pub fn event(&mut self, catalog: &mut Catalog, saves: &mut Vec<Put>, event: Event, now: Now) {
        match event {
            Event::Overrides { pool, overrides, revision } => {
                self.apply(catalog, saves, &pool, overrides, revision, now);
            }
            Event::Through(revision) => self.status.set_revision(revision),
        }
        self.retry_due(catalog, now);
    }

    /// Pool `key`'s overrides as of `revision`, unless a newer word is in.
    fn apply(&mut self, catalog: &mut Catalog, saves: &mut Vec<Put>, key: &str, overrides: Overrides, revision: i64, now: Now) {
        let known = self.applied.entry(key.to_owned()).or_insert(0);
        if *known >= revision {
            return;
        }
        *known = revision;
        match catalog.stage(key, PoolChange::Replace(overrides), now) {
            Ok(staged) => {
                // Kept in the embedded store too: with etcd out of reach at
                // the next start, the last state is served.
                saves.extend(staged.saves().into_iter().cloned());
                if let Err(e) = catalog.commit(staged, now) {
                    warn!(pool = key, error = %e, "the group's overrides could not be applied");
                }
            }
            Err(e) => warn!(pool = key, revision, error = %e, "the group's overrides name a pool this authority does not serve"),
        }
    }

    /// Changes whose race is over (the newer overrides are in), tried
    /// again; those that waited too long, refused.
    fn retry_due(&mut self, catalog: &Catalog, now: Now) {
        let (due, waiting): (Vec<Retry>, Vec<Retry>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|r| self.applied.get(&r.key).copied().unwrap_or(0) >= r.revision || now.instant >= r.until);
        self.retries = waiting;
        for r in due {
            if now.instant >= r.until && self.applied.get(&r.key).copied().unwrap_or(0) < r.revision {
                let e = ClusterError::Unavailable(format!(
                    "pool {} changed at another authority, and that change did not arrive here in time",
                    r.pool
                ));
                r.reply.send(Err(UpdateError::Cluster(e.to_string())));
                continue;
            }
            self.propose(catalog, r.pool, r.change, r.attempt, r.reply, now);
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

    /// Called on the updater's tick: expires retries that waited too long.
    pub fn tick(&mut self, catalog: &Catalog, now: Now) {
        if !self.retries.is_empty() {
            self.retry_due(catalog, now);
        }
    }
}
