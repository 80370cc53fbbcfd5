//! What people and watchers see of the catalog: each pool's status (for
//! `vnamed status` and the page), the board the status page is drawn
//! from (built only while someone looks, at most every `BOARD_INTERVAL`),
//! a zone as served in master-file format, and a pool's servers as they
//! change for watchers (the dispatcher).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::rr::{LowerName, Name};
use tokio::sync::watch;
use tracing::error;

use super::{Catalog, MemberStatus, UpdateError};
use crate::config::PolicyName;
use crate::dns::snapshot::zone_records;
use crate::ring::registry::Registry;

/// A pool's live servers in the policy's order, and its policy.
pub type Servers = (Vec<IpAddr>, PolicyName);

/// A pool's servers as they change; closed when the pool goes away.
pub type Watched = watch::Receiver<Servers>;

/// How often the status page's board is rebuilt, at most.
const BOARD_INTERVAL: Duration = Duration::from_millis(200);

/// What the status page shows, built when what is served changed and
/// someone is looking.
#[derive(Debug, Clone)]
pub struct Board {
    pub pools: Vec<PoolStatus>,
    pub ring: Registry,
    /// The last answer changes, oldest first: when, pool, answer.
    pub changes: Vec<(Instant, String, Vec<IpAddr>)>,
    /// When it was built: the ages in it are as of then.
    pub built: Instant,
}

impl Board {
    pub fn empty(now: Instant) -> Self {
        Self { pools: Vec::new(), ring: Default::default(), changes: Vec::new(), built: now }
    }
}

/// Where the catalog posts boards and the page takes them. Boards are
/// built only while someone holds a receiver (a live page, or a page load
/// waiting for a fresh one); `stale` says the last one is behind what is
/// served, because nobody was looking when it changed.
#[derive(Debug)]
pub struct Boards {
    pub tx: watch::Sender<Arc<Board>>,
    pub stale: AtomicBool,
}

impl Boards {
    pub fn new(now: Instant) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(Board::empty(now)));
        Arc::new(Self { tx, stale: AtomicBool::new(true) })
    }
}

#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub name: String,
    pub policy: String,
    pub zone: String,
    pub serial: u32,
    pub answer: Vec<IpAddr>,
    pub servfail: bool,
    pub members: Vec<MemberStatus>,
    /// Settings from the API rather than the configuration, one per line.
    pub overrides: Vec<String>,
    /// How the answers are chosen in effect.
    pub select: crate::config::Select,
    pub ttl: u32,
    /// How many vantage points decide a member's health, if not the last report.
    pub quorum: Option<crate::config::Quorum>,
}

/// The page's boards, and what the last one was built from.
pub(super) struct BoardPost {
    boards: Arc<Boards>,
    published: u64,
    ring: Option<Registry>,
    next: Instant,
}

impl BoardPost {
    /// When a board is next due: what is served moved since the last one.
    pub(super) fn due(&self, published: u64, ring: &Registry) -> Option<Instant> {
        let fresh = self.published == published && self.ring.as_ref() == Some(ring);
        (!fresh).then_some(self.next)
    }

    /// `due`, while someone looks (nobody: the next tick looks again).
    pub(super) fn wanted(&self, published: u64, ring: &Registry) -> Option<Instant> {
        self.due(published, ring).filter(|_| self.boards.tx.receiver_count() > 0)
    }
}

impl Catalog {
    /// Keeps `boards` supplied with the status page's board.
    pub fn with_board(mut self, boards: Arc<Boards>, now: Instant) -> Self {
        self.board = Some(BoardPost { boards, published: u64::MAX, ring: None, next: now });
        self.post_board(now);
        self
    }

    /// A new board, if anyone watches and something changed since the last.
    pub(super) fn post_board(&mut self, now: Instant) {
        let Some(post) = self.board.as_ref() else { return };
        if post.due(self.published, &self.ring).is_none_or(|at| now < at) {
            return;
        }
        if post.boards.tx.receiver_count() == 0 {
            post.boards.stale.store(true, Ordering::Relaxed);
            return;
        }
        let board = Board { pools: self.status(now), ring: self.ring.clone(), changes: self.changes.iter().cloned().collect(), built: now };
        let (published, ring) = (self.published, self.ring.clone());
        let Some(post) = self.board.as_mut() else { return };
        post.published = published;
        post.ring = Some(ring);
        post.next = now + BOARD_INTERVAL;
        post.boards.stale.store(false, Ordering::Relaxed);
        post.boards.tx.send_replace(Arc::new(board));
    }

    pub(super) fn status(&self, now: Instant) -> Vec<PoolStatus> {
        let mut out = Vec::with_capacity(self.table.pools().len());
        for (i, p) in self.table.pools().iter().enumerate() {
            let Some(zone) = self.pool_zone.get(i).and_then(|o| self.zones.get(o)) else { continue };
            let Some(answer) = zone.answers.get(&p.key) else {
                error!(pool = %p.name, "internal: a pool without an answer is left out of the status");
                continue;
            };
            let shown = answer.shown();
            out.push(PoolStatus {
                name: p.name.to_string(),
                policy: format!("{:?}", p.policy),
                zone: zone.file.data.origin.to_string(),
                serial: zone.serial,
                servfail: answer.servfail,
                members: self.table.members_status(i, &answer.addresses, &answer.shares, now),
                overrides: p.overrides.lines(),
                select: p.selects(),
                ttl: answer.ttl,
                quorum: p.quorum,
                answer: shown,
            });
        }
        out
    }

    /// A zone as served, in master-file format.
    pub(super) fn show_zone(&self, zone: &str) -> Result<String, UpdateError> {
        let mut name = Name::from_ascii(zone).map_err(|_| UpdateError::NoZone(zone.to_owned()))?;
        name.set_fqdn(true);
        let view = self.snapshot.zones.get(&LowerName::from(&name)).ok_or_else(|| UpdateError::NoZone(zone.to_owned()))?;
        let mut out = format!("; zone {} serial {} as served by vnamed\n", view.data.origin, view.serial);
        for r in zone_records(view) {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        Ok(out)
    }

    /// A receiver of pool `pool`'s servers as they change.
    pub(super) fn watch(&mut self, pool: &str, now: Instant) -> Result<Watched, UpdateError> {
        let i = self.find_pool(pool)?;
        let p = self.table.get(i).ok_or_else(|| UpdateError::Internal(format!("no pool {i}")))?;
        let servers = (self.table.order(i, now), p.policy);
        let tx = self.watchers.entry(p.key.clone()).or_insert_with(|| watch::channel(servers.clone()).0);
        tx.send_if_modified(|w| std::mem::replace(w, servers.clone()) != servers);
        Ok(tx.subscribe())
    }
}
