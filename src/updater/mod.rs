//! The updater: the authority's one writer. A loop that takes commands
//! (reports, operator changes, ring events, configuration edits) and zone
//! file edits, hands them to the catalog (pure: the member table, answers,
//! serials, the published snapshot), and passes what the catalog asks for
//! to its drivers: the state store, the zone file thread, NOTIFY to
//! secondaries. Nothing is acknowledged before the store holds it: an
//! operator's change is saved, then applied; a ring change likewise; a
//! new serial is published only below the store's high-water mark.

mod shared;

pub use shared::{Back, Committed, Reply, Shared};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::{Loaded, Put, Saver, Store};

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How often the members' last known state is saved, at most.
const MEMBER_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// Backoff bounds for a serial mark the store refused.
const RESERVE_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

pub use crate::catalog::{Board, Boards, Catalog, MemberStatus, PoolChange, PoolStatus, Servers, UpdateError, UpdaterCounters, Watched};
use crate::clock::Now;
use crate::config::{Config, PoolConfig};
use crate::dns::snapshot::Snapshot;
use crate::pool::replay::Recent;
use crate::pool::{AdminState, PoolState, Report, ReportError};
pub use crate::ring::registry::{Registry, RingOp, RingReply};
use crate::zone::ZoneFile;
use crate::zone::io::{Done, ZoneIo};

/// Writes the state store owes (failed, waiting for a retry), and the last error.
pub type StateTrouble = (u64, String);
/// In a cluster: why the group's state is unavailable (`None`: it is
/// available), the revision applied here, and whether this authority is
/// the group's decider.
pub type ClusterState = (Option<String>, i64, bool);

/// Requests to the updater.
pub enum Command {
    /// Operator override of a member's state or weight.
    SetMember { pool: String, id: String, admin: Option<AdminState>, weight: Option<u32>, reply: oneshot::Sender<Result<(), UpdateError>> },
    /// A checked batch of reports: stored whole, or refused whole when a
    /// report names a pool or member that is not served.
    Reports { reports: Vec<Report>, received: Instant, reply: oneshot::Sender<Result<usize, ReportError>> },
    /// Pools, members and answers as they are now, and the state store's
    /// trouble: writes owed and the last error, if any.
    Status { reply: oneshot::Sender<(Vec<PoolStatus>, Option<StateTrouble>, Option<ClusterState>)> },
    /// A zone as served, in master-file format.
    ShowZone { zone: String, reply: oneshot::Sender<Result<String, UpdateError>> },
    /// A change to a pool itself; replies with its answer afterwards.
    Pool { pool: String, change: PoolChange, reply: oneshot::Sender<Result<Vec<IpAddr>, UpdateError>> },
    /// Every server of a pool in the policy's order.
    Resolve { pool: String, reply: oneshot::Sender<Result<Vec<IpAddr>, UpdateError>> },
    /// A pool as it is and its recent reports, for a dry run.
    Replayable { pool: String, reply: oneshot::Sender<Result<(PoolState, Recent), UpdateError>> },
    /// A pool's live servers in order and its policy, as they change.
    Watch { pool: String, reply: oneshot::Sender<Result<Watched, UpdateError>> },
    /// The ring's server table.
    Ring { op: RingOp, reply: oneshot::Sender<Result<RingReply, UpdateError>> },
    /// The pools of an edited configuration file: applied whole, or
    /// refused whole with every problem.
    Reconfigure { pools: Vec<PoolConfig>, reply: oneshot::Sender<Result<(), Vec<String>>> },
}

pub struct Updater {
    catalog: Catalog,
    /// The zone file thread and what it reports back.
    io: ZoneIo,
    io_results: mpsc::Receiver<Done>,
    /// Secondaries to tell of new serials.
    notify: mpsc::Sender<(Name, u32)>,
    /// The ring's server table.
    ring: Registry,
    /// The durable state, written here for what is acknowledged, and by
    /// the saver for the rest.
    store: Arc<Store>,
    saver: Saver,
    /// Saves the saver could not take yet.
    unsent: Vec<Put>,
    next_member_save: Instant,
    /// When a serial mark the store refused is tried again, and the backoff.
    reserve_retry: Option<Instant>,
    reserve_backoff: crate::backoff::Backoff,
    /// The status page's board, when there is a page: built anew only
    /// while someone looks, when what is served or the ring changed, at
    /// most every BOARD_INTERVAL.
    board: Option<BoardPost>,
    /// In a cluster: the group's shared state, and what its driver and
    /// commit tasks send back (taken by `run`).
    shared: Option<Shared>,
    shared_rx: Option<(mpsc::Receiver<crate::cluster::Event>, mpsc::Receiver<Back>)>,
}

/// How often the status page's board is rebuilt, at most.
const BOARD_INTERVAL: Duration = Duration::from_millis(200);

struct BoardPost {
    boards: Arc<Boards>,
    /// What the last board was built from: the catalog's publish count
    /// and the ring.
    published: u64,
    ring: Option<Registry>,
    next: Instant,
}

impl Updater {
    /// Builds the updater from the configuration, the zone files and the
    /// state store (`saved` is what it held at start-up).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        files: BTreeMap<LowerName, ZoneFile>,
        store: Arc<Store>,
        saved: &Loaded,
        snapshot: Arc<ArcSwap<Snapshot>>,
        notify: mpsc::Sender<(Name, u32)>,
        counters: Arc<UpdaterCounters>,
        write_interval: Duration,
        now: Now,
    ) -> Result<Self, Vec<String>> {
        let catalog = Catalog::new(config, files, saved, snapshot, counters, write_interval, now)?;
        let (io, io_results) = ZoneIo::start();
        let saver = Saver::start(store.clone()).map_err(|e| vec![format!("cannot start the state saver: {e}")])?;
        let mut u = Self {
            catalog,
            io,
            io_results,
            notify,
            ring: Registry::default(),
            store,
            saver,
            unsent: Vec::new(),
            next_member_save: now.instant + MEMBER_SAVE_INTERVAL,
            reserve_retry: None,
            reserve_backoff: crate::backoff::Backoff::new(RESERVE_RETRY.0, RESERVE_RETRY.1),
            board: None,
            shared: None,
            shared_rx: None,
        };
        u.drive();
        Ok(u)
    }

    /// Keeps `boards` supplied with the status page's board.
    pub fn with_board(mut self, boards: Arc<Boards>, now: Instant) -> Self {
        self.board = Some(BoardPost { boards, published: u64::MAX, ring: None, next: now });
        self.post_board(now);
        self
    }

    /// A new board, if anyone watches and something changed since the last.
    fn post_board(&mut self, now: Instant) {
        let Some(post) = self.board.as_mut() else { return };
        let fresh = post.published == self.catalog.published() && post.ring.as_ref() == Some(&self.ring);
        if fresh || now < post.next {
            return;
        }
        if post.boards.tx.receiver_count() == 0 {
            post.boards.stale.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let board = Board {
            pools: self.catalog.status(now),
            ring: self.ring.clone(),
            changes: self.catalog.recent_changes().cloned().collect(),
            built: now,
        };
        post.published = self.catalog.published();
        post.ring = Some(self.ring.clone());
        post.next = now + BOARD_INTERVAL;
        post.boards.stale.store(false, std::sync::atomic::Ordering::Relaxed);
        post.boards.tx.send_replace(Arc::new(board));
    }

    /// Shares operators' changes with a group of authorities: they are
    /// committed to its etcd, and its changes (`events`) applied here.
    pub fn with_cluster(
        mut self,
        etcd: crate::cluster::etcd::Etcd,
        status: Arc<crate::cluster::ClusterStatus>,
        events: mpsc::Receiver<crate::cluster::Event>,
        name: String,
        shutdown: CancellationToken,
    ) -> Self {
        let (shared, committed) = Shared::new(etcd, status, name, shutdown);
        self.catalog.join_group();
        self.shared = Some(shared);
        self.shared_rx = Some((events, committed));
        self
    }

    /// What the group's state driver read, applied.
    pub fn cluster_event(&mut self, event: crate::cluster::Event, now: Now) {
        if let Some(s) = self.shared.as_mut() {
            s.event(&mut self.catalog, &mut self.ring, &mut self.unsent, event, now);
        }
        self.drive();
    }

    /// What a cluster task brought back (a commit's outcome), applied.
    pub fn back(&mut self, back: Back, now: Now) {
        if let Some(s) = self.shared.as_mut() {
            s.back(&mut self.catalog, &mut self.ring, &mut self.unsent, back, now);
        }
        self.drive();
    }

    /// The group's state: available or the reason not, and the revision applied.
    pub fn cluster_status(&self) -> Option<ClusterState> {
        self.shared.as_ref().map(|s| (s.status.trouble(), s.status.revision(), s.status.decider()))
    }

    /// Takes the ring registry (from the store) and applies its deaths.
    pub fn with_ring(mut self, ring: Registry, now: Instant) -> Self {
        self.ring = ring;
        self.catalog.ring_dead(self.ring.dead_hosts(), now);
        self.drive();
        self
    }

    /// Checks an operator's change, saves it, then applies it: a change
    /// the store cannot hold is refused and nothing changes.
    fn operator_change(&mut self, pool: &str, change: PoolChange, now: Now) -> Result<Vec<IpAddr>, UpdateError> {
        let staged = self.catalog.stage(pool, change, now)?;
        self.store.write(staged.saves()).map_err(|e| UpdateError::State(e.to_string()))?;
        self.catalog.commit(staged, now)
    }

    pub fn handle(&mut self, cmd: Command, now: Now) {
        match cmd {
            Command::SetMember { pool, id, admin, weight, reply } => {
                let change = PoolChange::Member { id, admin, weight };
                if let Some(s) = self.shared.as_mut() {
                    return s.propose(&self.catalog, pool, change, 0, Reply::Done(reply), now);
                }
                let r = self.operator_change(&pool, change, now).map(drop);
                self.done(reply, r);
            }
            Command::Reports { reports, received, reply } => {
                let r = self.catalog.reports(reports, received, now.instant);
                self.done(reply, r);
            }
            Command::Status { reply } => {
                let _ = reply.send((self.catalog.status(now.instant), self.store.counters.trouble(), self.cluster_status()));
            }
            Command::ShowZone { zone, reply } => {
                let _ = reply.send(self.catalog.show_zone(&zone));
            }
            Command::Pool { pool, change, reply } => {
                if let Some(s) = self.shared.as_mut() {
                    return s.propose(&self.catalog, pool, change, 0, Reply::Answer(reply), now);
                }
                let r = self.operator_change(&pool, change, now);
                self.done(reply, r);
            }
            Command::Ring { op, reply } => {
                if let (Some(s), false) = (self.shared.as_mut(), matches!(op, RingOp::Table)) {
                    return s.propose_ring(&self.ring, op, 0, reply);
                }
                let r = self.ring_op(op, now.instant);
                self.done(reply, r);
            }
            Command::Reconfigure { pools, reply } => {
                let r = self.catalog.reconfigure(&pools, now);
                if let (Ok(()), Some(s)) = (&r, self.shared.as_mut()) {
                    s.reconfigured(&pools);
                }
                self.done(reply, r);
            }
            Command::Resolve { pool, reply } => {
                let _ = reply.send(self.catalog.resolve(&pool, now.instant));
            }
            Command::Watch { pool, reply } => {
                let _ = reply.send(self.catalog.watch(&pool, now.instant));
            }
            Command::Replayable { pool, reply } => {
                let _ = reply.send(self.catalog.replayable(&pool));
            }
        }
    }

    /// Replies once what the reply says is published (and saved).
    fn done<T>(&mut self, reply: oneshot::Sender<T>, r: T) {
        self.drive();
        let _ = reply.send(r);
    }

    /// Moves the store's serial marks ahead of what is about to be served;
    /// when the store refuses, serves anyway (answers come first), says so
    /// and retries with backoff.
    fn reserve(&mut self, now: Instant) {
        let due = self.catalog.reservations_due();
        if due.is_empty() || self.reserve_retry.is_some_and(|at| now < at) {
            return;
        }
        match self.store.write(&due) {
            Ok(()) => {
                self.catalog.reserved();
                if self.reserve_retry.take().is_some() {
                    info!("serial marks saved again");
                }
                self.reserve_backoff.reset();
                self.store.counters.owed_serials.set(0);
            }
            Err(error) => {
                if self.reserve_retry.is_none() {
                    error!(%error, "cannot save the zones' serial marks; serving anyway, retrying with backoff");
                }
                self.reserve_retry = Some(now + self.reserve_backoff.next_pause());
                self.store.counters.owed_serials.set(due.len() as u64);
            }
        }
    }

    /// Hands what the catalog asks for to the drivers.
    fn drive(&mut self) {
        if let Some(s) = self.shared.as_mut() {
            s.offer(&mut self.catalog, Now::read());
        }
        let now = Instant::now();
        self.reserve(now);
        self.catalog.publish_pending();
        let mut saves = std::mem::take(&mut self.unsent);
        saves.extend(std::iter::from_fn(|| self.catalog.poll_save()));
        if now >= self.next_member_save {
            self.next_member_save = now + MEMBER_SAVE_INTERVAL;
            saves.extend(self.catalog.member_saves(Now::read()));
        }
        if let Err(back) = self.saver.send(saves) {
            self.unsent = back;
        }
        while let Some(job) = self.catalog.poll_job() {
            if let Err(job) = self.io.submit(job) {
                self.catalog.refused(job);
            }
        }
        while let Some((zone, serial)) = self.catalog.poll_notice() {
            match self.notify.try_send((zone.clone(), serial)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => warn!(%zone, "notify queue full; secondaries will catch up on refresh"),
                // Stopping: the NOTIFY task is gone; secondaries refresh.
                Err(mpsc::error::TrySendError::Closed(_)) => debug!(%zone, serial, "no NOTIFY sent: stopping"),
            }
        }
    }

    fn ring_op(&mut self, op: RingOp, now: Instant) -> Result<RingReply, UpdateError> {
        let step = self.ring.step(&op)?;
        let Some(next) = step.next else { return Ok(step.reply) };
        if let Err(e) = self.store.write([&Put::Ring(next.to_text())]) {
            error!(error = %e, "cannot save the ring table; the ring change is refused");
            return Err(UpdateError::State(e.to_string()));
        }
        info!("{}", step.said);
        self.ring = next;
        self.catalog.ring_dead(self.ring.dead_hosts(), now);
        Ok(step.reply)
    }

    /// An operator may have changed a zone file.
    pub fn edited(&mut self, path: &Path) {
        self.catalog.edited(path);
        self.drive();
    }

    /// Waits for the zone file work under way (at shutdown, and in tests).
    pub async fn settle(&mut self) {
        while self.catalog.io_pending() {
            match self.io_results.recv().await {
                Some(done) => {
                    self.catalog.io_done(done);
                    self.drive();
                }
                None => break,
            }
        }
    }

    /// Runs the updater until shutdown, then writes what is pending.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut edits: mpsc::Receiver<PathBuf>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut cluster_events, mut commits) = match self.shared_rx.take() {
            Some((e, c)) => (Some(e), Some(c)),
            None => (None, None),
        };
        loop {
            let next = self.catalog.next_write(Instant::now());
            let write_due = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(cmd) = commands.recv() => {
                    self.handle(cmd, Now::read());
                    continue;
                }
                Some(path) = edits.recv() => self.edited(&path),
                Some(event) = recv(&mut cluster_events) => {
                    self.cluster_event(event, Now::read());
                    continue;
                }
                Some(c) = recv(&mut commits) => {
                    self.back(c, Now::read());
                    continue;
                }
                Some(done) = self.io_results.recv() => self.catalog.io_done(done),
                _ = write_due => self.catalog.flush(Instant::now(), false),
                _ = tick.tick() => {
                    self.catalog.tick(Instant::now());
                    if let Some(s) = self.shared.as_mut() {
                        s.tick(&self.catalog, &self.ring, Now::read());
                    }
                }
                _ = shutdown.cancelled() => break,
            }
            self.drive();
            self.post_board(Instant::now());
        }
        // Writes under way finish first, then whatever is still pending.
        self.settle().await;
        self.catalog.flush(Instant::now(), true);
        self.drive();
        self.settle().await;
        let behind = self.catalog.files_behind();
        // With the zone files written, the marks can fall back to the
        // serials served, so a clean restart keeps them.
        let mut last = self.catalog.all_member_saves(Now::read());
        if behind.is_empty() {
            last.extend(self.catalog.served_serials());
            last.extend(self.catalog.journal_saves());
        }
        last.append(&mut self.unsent);
        last.extend(std::iter::from_fn(|| self.catalog.poll_save()));
        self.saver.stop();
        let saved = self.store.write(&last);
        match (&saved, behind.is_empty()) {
            (Ok(()), true) => info!("updater stopped; zone files and state are current"),
            (Err(error), _) => error!(%error, "updater stopped; the last state could not be saved"),
            (Ok(()), false) => error!(files = ?behind, "updater stopped; these zone files could not be brought up to date"),
        }
    }
}

/// The next message of a channel there may not be.
async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
