//! The updater: the authority's one writer. A loop that takes commands
//! (reports, operator changes, ring events, configuration edits) and zone
//! file edits, hands them to the catalog (pure: the member table, answers,
//! serials, the published snapshot), and passes what the catalog asks for
//! to its drivers: the zone file thread, NOTIFY to secondaries, the ring
//! registry's file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use crate::catalog::{Catalog, MemberStatus, PoolChange, PoolStatus, Servers, UpdateError, UpdaterCounters, Watched};
use crate::clock::Now;
use crate::config::{Config, PoolConfig};
use crate::dns::snapshot::Snapshot;
use crate::pool::{AdminState, Report, ReportError};
use crate::ring::registry::Registry;
use crate::zone::ZoneFile;
use crate::zone::io::{Done, ZoneIo};

/// Requests to the updater.
pub enum Command {
    /// Operator override of a member's state or weight.
    SetMember { pool: String, id: String, admin: Option<AdminState>, weight: Option<u32>, reply: oneshot::Sender<Result<(), UpdateError>> },
    /// A checked batch of reports: stored whole, or refused whole when a
    /// report names a pool or member that is not served.
    Reports { reports: Vec<Report>, received: Instant, reply: oneshot::Sender<Result<usize, ReportError>> },
    /// Pools, members and answers as they are now.
    Status { reply: oneshot::Sender<Vec<PoolStatus>> },
    /// A zone as served, in master-file format.
    ShowZone { zone: String, reply: oneshot::Sender<Result<String, UpdateError>> },
    /// A change to a pool itself; replies with its answer afterwards.
    Pool { pool: String, change: PoolChange, reply: oneshot::Sender<Result<Vec<IpAddr>, UpdateError>> },
    /// Every server of a pool in the policy's order.
    Resolve { pool: String, reply: oneshot::Sender<Result<Vec<IpAddr>, UpdateError>> },
    /// A pool's live servers in order and its policy, as they change.
    Watch { pool: String, reply: oneshot::Sender<Result<Watched, UpdateError>> },
    /// The ring's server table.
    Ring { op: RingOp, reply: oneshot::Sender<Result<RingReply, UpdateError>> },
    /// The pools of an edited configuration file: applied whole, or
    /// refused whole with every problem.
    Reconfigure { pools: Vec<PoolConfig>, reply: oneshot::Sender<Result<(), Vec<String>>> },
}

/// Operations on the ring's server table.
#[derive(Debug, Clone)]
pub enum RingOp {
    Announce(SocketAddr),
    /// `reporter` is the member itself on a normal shutdown.
    Delete {
        dead: SocketAddr,
        reporter: SocketAddr,
    },
    Table,
}

#[derive(Debug, Clone)]
pub enum RingReply {
    Buddies([SocketAddr; 2]),
    Table(Registry),
}

pub struct Updater {
    catalog: Catalog,
    /// The zone file thread and what it reports back.
    io: ZoneIo,
    io_results: mpsc::Receiver<Done>,
    /// Secondaries to tell of new serials.
    notify: mpsc::Sender<(Name, u32)>,
    /// The ring's server table, and where it is kept.
    ring: Registry,
    ring_file: Option<PathBuf>,
}

impl Updater {
    /// Builds the updater from the configuration and the zone files,
    /// restoring each pool's last answer and member notes from its zone file.
    pub fn new(
        config: &Config,
        files: BTreeMap<LowerName, ZoneFile>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        notify: mpsc::Sender<(Name, u32)>,
        counters: Arc<UpdaterCounters>,
        write_interval: Duration,
        now: Now,
    ) -> Result<Self, Vec<String>> {
        let catalog = Catalog::new(config, files, snapshot, counters, write_interval, now)?;
        let (io, io_results) = ZoneIo::start();
        let mut u = Self { catalog, io, io_results, notify, ring: Registry::default(), ring_file: None };
        u.drive();
        Ok(u)
    }

    /// Takes the ring registry (loaded from `file`) and applies its deaths.
    pub fn with_ring(mut self, ring: Registry, file: Option<PathBuf>, now: Instant) -> Self {
        self.ring = ring;
        self.ring_file = file;
        self.catalog.ring_dead(self.ring.dead.iter().map(|a| a.ip()).collect(), now);
        self.drive();
        self
    }

    pub fn handle(&mut self, cmd: Command, now: Now) {
        let c = &mut self.catalog;
        match cmd {
            Command::SetMember { pool, id, admin, weight, reply } => {
                let _ = reply.send(c.change_pool(&pool, PoolChange::Member { id, admin, weight }, now).map(drop));
            }
            Command::Reports { reports, received, reply } => {
                let _ = reply.send(c.reports(reports, received, now.instant));
            }
            Command::Status { reply } => {
                let _ = reply.send(c.status(now.instant));
            }
            Command::ShowZone { zone, reply } => {
                let _ = reply.send(c.show_zone(&zone));
            }
            Command::Pool { pool, change, reply } => {
                let _ = reply.send(c.change_pool(&pool, change, now));
            }
            Command::Ring { op, reply } => {
                let _ = reply.send(self.ring_op(op, now.instant));
            }
            Command::Reconfigure { pools, reply } => {
                let _ = reply.send(c.reconfigure(&pools, now));
            }
            Command::Resolve { pool, reply } => {
                let _ = reply.send(c.resolve(&pool, now.instant));
            }
            Command::Watch { pool, reply } => {
                let _ = reply.send(c.watch(&pool, now.instant));
            }
        }
        self.drive();
    }

    /// Hands what the catalog asks for to the drivers.
    fn drive(&mut self) {
        while let Some(job) = self.catalog.poll_job() {
            if let Err(job) = self.io.submit(job) {
                self.catalog.refused(job);
            }
        }
        while let Some((zone, serial)) = self.catalog.poll_notice() {
            if self.notify.try_send((zone.clone(), serial)).is_err() {
                warn!(%zone, "notify queue full; secondaries will catch up on refresh");
            }
        }
    }

    fn ring_op(&mut self, op: RingOp, now: Instant) -> Result<RingReply, UpdateError> {
        let reply = match op {
            RingOp::Table => return Ok(RingReply::Table(self.ring.clone())),
            RingOp::Announce(member) => {
                let b = self.ring.announce(member)?;
                info!(%member, buddy_a = %b[0], buddy_b = %b[1], "ring member joined");
                RingReply::Buddies(b)
            }
            RingOp::Delete { dead, reporter } => {
                let left = dead == reporter;
                let b = self.ring.delete(dead, !left)?;
                if left {
                    info!(member = %dead, "ring member left");
                } else {
                    warn!(member = %dead, %reporter, "ring member dead; out of every answer");
                }
                RingReply::Buddies(b)
            }
        };
        if let Some(file) = &self.ring_file
            && let Err(e) = crate::ring::store::save(file, &self.ring)
        {
            error!(error = %e, "cannot save the ring table");
        }
        self.catalog.ring_dead(self.ring.dead.iter().map(|a| a.ip()).collect(), now);
        Ok(reply)
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
        loop {
            let next = self.catalog.next_write(Instant::now());
            let write_due = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(cmd) = commands.recv() => self.handle(cmd, Now::read()),
                Some(path) = edits.recv() => self.edited(&path),
                Some(done) = self.io_results.recv() => self.catalog.io_done(done),
                _ = write_due => self.catalog.flush(Instant::now(), false),
                _ = tick.tick() => self.catalog.tick(Instant::now()),
                _ = shutdown.cancelled() => break,
            }
            self.drive();
        }
        // Writes under way finish first, then whatever is still pending.
        self.settle().await;
        self.catalog.flush(Instant::now(), true);
        self.drive();
        self.settle().await;
        let behind = self.catalog.files_behind();
        if behind.is_empty() {
            info!("updater stopped; zone files are current");
        } else {
            error!(files = ?behind, "updater stopped; these zone files could not be brought up to date");
        }
    }
}
