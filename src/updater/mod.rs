//! The updater: a pump around the catalog. Each turn of its loop waits
//! for one event (a command, a zone file edit or job done, a durable
//! write, the group's news, or the catalog's next timeout), reads the
//! clock once, hands the event to the catalog and its outputs to their
//! drivers: the state store's writer, the zone file thread, NOTIFY, the
//! snapshot DNS reads, and the repliers. It holds no decision of its own.

mod shared;

pub use shared::{Back, Committed, Reply as GroupReply, Shared};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use crate::catalog::{
    Board, Boards, Catalog, ClusterState, Command, MemberStatus, PoolChange, PoolStatus, Servers, StateTrouble, UpdateError,
    UpdaterCounters, Watched,
};
use crate::catalog::{Input, Output, Save};
use crate::clock::Now;
use crate::config::Config;
use crate::dns::snapshot::Snapshot;
pub use crate::ring::registry::{Registry, RingOp, RingReply};
use crate::state::{ACKED_QUEUE, Durable, Loaded, Saved, Writer};
use crate::zone::ZoneFile;
use crate::zone::io::{Done, ZoneIo};

/// How long a clean stop waits for the last state to be saved.
const LAST_SAVE: Duration = Duration::from_secs(10);

pub struct Updater {
    catalog: Catalog,
    io: ZoneIo,
    io_results: mpsc::Receiver<Done>,
    writer: Writer,
    saved: mpsc::Receiver<Saved>,
    notify: mpsc::Sender<(Name, u32)>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// In a cluster: the group's shared state, and what its tasks bring back.
    shared: Option<Shared>,
    shared_rx: Option<(mpsc::Receiver<crate::cluster::Event>, mpsc::Receiver<Back>)>,
}

/// What the updater starts from.
pub struct Parts {
    pub store: Arc<dyn Durable>,
    pub saved: Loaded,
    pub ring: Registry,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub notify: mpsc::Sender<(Name, u32)>,
    pub counters: Arc<UpdaterCounters>,
    pub write_interval: Duration,
}

impl Updater {
    /// Builds the catalog and starts the drivers; returns once the zones
    /// are published (after the serial reservations they need are saved).
    pub async fn start(config: &Config, files: BTreeMap<LowerName, ZoneFile>, parts: Parts) -> Result<Self, Vec<String>> {
        let start = crate::catalog::Start {
            saved: &parts.saved,
            ring: parts.ring,
            counters: parts.counters,
            state_counters: parts.store.counters().clone(),
            write_interval: parts.write_interval,
        };
        let catalog = Catalog::new(config, files, start, Now::read())?;
        let (io, io_results) = ZoneIo::start();
        let (saved_tx, saved) = mpsc::channel(ACKED_QUEUE + 16);
        let writer = Writer::start(parts.store, saved_tx).map_err(|e| vec![format!("cannot start the state writer: {e}")])?;
        let mut u =
            Self { catalog, io, io_results, writer, saved, notify: parts.notify, snapshot: parts.snapshot, shared: None, shared_rx: None };
        u.pump(Now::read());
        while !u.catalog.ready() {
            match u.saved.recv().await {
                Some(s) => u.turn(Input::Saved(s)),
                None => return Err(vec!["the state writer stopped".into()]),
            }
        }
        Ok(u)
    }

    /// Keeps `boards` supplied with the status page's board.
    pub fn with_board(mut self, boards: Arc<Boards>) -> Self {
        self.catalog = self.catalog.with_board(boards, std::time::Instant::now());
        self
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
        let (shared, committed) = Shared::new(etcd, status.clone(), name, shutdown);
        self.catalog.join_group(status);
        self.shared = Some(shared);
        self.shared_rx = Some((events, committed));
        self
    }

    /// One event in: the clock read once, the catalog told, its outputs out.
    fn turn(&mut self, input: Input) {
        let now = Now::read();
        self.catalog.handle(now, input);
        self.pump(now);
    }

    /// A command; in a group, the changes the group must commit go there.
    fn command(&mut self, cmd: Command) {
        let now = Now::read();
        let cmd = match (self.shared.as_mut(), cmd) {
            (Some(s), Command::SetMember { pool, id, admin, weight, reply }) => {
                s.propose(&self.catalog, pool, PoolChange::Member { id, admin, weight }, 0, GroupReply::Done(reply), now);
                return self.pump(now);
            }
            (Some(s), Command::Pool { pool, change, reply }) => {
                s.propose(&self.catalog, pool, change, 0, GroupReply::Answer(reply), now);
                return self.pump(now);
            }
            (Some(s), Command::Ring { op, reply }) if op != RingOp::Table => {
                s.propose_ring(self.catalog.ring(), op, 0, reply);
                return self.pump(now);
            }
            (Some(_), Command::Reconfigure { pools, reply }) => {
                let (tx, mut rx) = tokio::sync::oneshot::channel();
                self.catalog.handle(now, Input::Command(Command::Reconfigure { pools: pools.clone(), reply: tx }));
                self.pump(now);
                let r = rx.try_recv().ok();
                if let (Some(Ok(())), Some(s)) = (&r, self.shared.as_mut()) {
                    s.reconfigured(&pools);
                }
                let _ = reply.send(r.unwrap_or_else(|| Err(vec!["internal: the configuration edit was not answered".into()])));
                return;
            }
            (_, cmd) => cmd,
        };
        self.turn(Input::Command(cmd));
    }

    /// Hands every output of the catalog to its driver; what a driver
    /// refuses (a full queue) goes back to the catalog.
    fn pump(&mut self, now: Now) {
        loop {
            if let Some(s) = self.shared.as_mut() {
                s.offer(&mut self.catalog, now);
                self.catalog.settle(now);
            }
            let mut back = Vec::new();
            while let Some(out) = self.catalog.poll() {
                match out {
                    Output::Save(Save::Acked(ticket, puts)) => {
                        if self.writer.acked(ticket, puts).is_err() {
                            back.push(Input::Saved(Saved { ticket, result: Err("the state store is far behind".into()) }));
                        }
                    }
                    Output::Save(Save::Background(puts)) => self.writer.background(puts),
                    Output::Job(job) => {
                        if let Err(job) = self.io.submit(job) {
                            back.push(Input::Refused(job));
                        }
                    }
                    Output::Notify(zone, serial) => match self.notify.try_send((zone.clone(), serial)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => warn!(%zone, "notify queue full; secondaries will catch up on refresh"),
                        // Stopping: the NOTIFY task is gone; secondaries refresh.
                        Err(mpsc::error::TrySendError::Closed(_)) => debug!(%zone, serial, "no NOTIFY sent: stopping"),
                    },
                    Output::Publish(snapshot) => self.snapshot.store(snapshot),
                    Output::Reply(reply) => reply.send(),
                }
            }
            if back.is_empty() {
                return;
            }
            for input in back {
                self.catalog.handle(now, input);
            }
        }
    }

    /// Runs the updater until shutdown, then writes what is pending.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut edits: mpsc::Receiver<PathBuf>, shutdown: CancellationToken) {
        let (mut cluster_events, mut commits) = match self.shared_rx.take() {
            Some((e, c)) => (Some(e), Some(c)),
            None => (None, None),
        };
        loop {
            let timeout = self.catalog.poll_timeout();
            let due = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(cmd) = commands.recv() => self.command(cmd),
                Some(path) = edits.recv() => self.turn(Input::Edited(path)),
                Some(done) = self.io_results.recv() => self.turn(Input::Io(done)),
                Some(saved) = self.saved.recv() => self.turn(Input::Saved(saved)),
                Some(event) = recv(&mut cluster_events) => {
                    let now = Now::read();
                    if let Some(s) = self.shared.as_mut() {
                        s.event(&mut self.catalog, event, now);
                    }
                    self.catalog.settle(now);
                    self.pump(now);
                }
                Some(back) = recv(&mut commits) => {
                    let now = Now::read();
                    if let Some(s) = self.shared.as_mut() {
                        s.back(&mut self.catalog, back, now);
                    }
                    self.catalog.settle(now);
                    self.pump(now);
                }
                _ = due => {
                    let now = Now::read();
                    self.catalog.handle_timeout(now);
                    if let Some(s) = self.shared.as_mut() {
                        s.tick(&mut self.catalog, now);
                        self.catalog.settle(now);
                    }
                    self.pump(now);
                }
                _ = shutdown.cancelled() => break,
            }
        }
        self.stop().await;
    }

    /// Waits for the zone file work under way.
    async fn settle_files(&mut self) {
        while self.catalog.io_pending() {
            match self.io_results.recv().await {
                Some(done) => self.turn(Input::Io(done)),
                None => break,
            }
        }
    }

    /// A clean stop: zone file writes under way finish, whatever is still
    /// owed is written, then the last state is saved (durably) and the
    /// writer stops.
    async fn stop(mut self) {
        self.settle_files().await;
        let now = Now::read();
        self.catalog.flush(now.instant, true);
        self.pump(now);
        self.settle_files().await;
        let behind = self.catalog.files_behind();
        let last = self.catalog.final_saves(Now::read());
        const LAST: u64 = u64::MAX;
        let saved = match self.writer.acked(LAST, last) {
            Ok(()) => {
                let wait = async {
                    while let Some(s) = self.saved.recv().await {
                        if s.ticket == LAST {
                            return s.result;
                        }
                        self.turn(Input::Saved(s));
                    }
                    Err("the state writer stopped".to_owned())
                };
                tokio::time::timeout(LAST_SAVE, wait).await.unwrap_or_else(|_| Err("the state store did not answer in time".into()))
            }
            Err(_) => Err("the state store is far behind".into()),
        };
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.stop()).await;
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
