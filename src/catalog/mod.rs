//! What the authority serves, as one state machine with no I/O and no
//! clock of its own: the member table bound to the zones, each pool's
//! answer through its policy, the ring's server table, serials and the
//! journal, the published snapshot, what watchers, the status page and
//! `/metrics` see, and the zone files' sync.
//!
//! The calling order, as in quinn's connections:
//! 1. `Catalog::new`, then drain `poll` (the first publish waits for the
//!    serial reservations it asks for: feed their `Input::Saved`);
//! 2. for every event, `handle(now, input)`; when `poll_timeout` passes,
//!    `handle_timeout(now)`; `now` is read once by the caller per event;
//! 3. after each of those, drain `poll` until `None`, handing every
//!    `Output` to its driver (the store's writer, the zone file thread,
//!    NOTIFY, the DNS snapshot, repliers) in the order given.
//!
//! Nothing is acknowledged before it is durable: an operator's change or
//! a ring change goes out as an acknowledged `Save` and is applied and
//! answered only when its `Saved` comes back; a new serial is published
//! only below the store's high-water mark. Replies to changes follow the
//! publish that serves them.
//!
//! The parts: `bind` (building the catalog, pools bound to zones, config
//! edits), `answers` (decisions served, reports, the ring), `serials`
//! (high-water marks, the journal kept in the store), `publish` (the
//! snapshot), `files` (zone files), `status` (what people see).

mod answers;
mod bind;
pub use bind::{Staged, Start};
pub use group::GroupInput;
mod files;
mod group;
mod publish;
mod serials;
mod status;

pub use serials::{SERIAL_RESERVE, serial_gt};
pub use status::{Board, Boards, PoolStatus, Servers, Watched};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use hickory_proto::rr::{LowerName, Name};
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

use crate::clock::Now;
use crate::dns::fast;
use crate::dns::snapshot::{MemberHealth, PoolAnswer, Preferred, Snapshot, ZoneView};
use crate::metrics::{Count, Expose, Histogram, Writer, latency_histogram};
use crate::pool::replay::Recent;
use crate::pool::table::{PoolId, Table, TableError};
use crate::pool::{AdminState, PoolState, Report, ReportError};
use crate::ring::registry::{Registry, RingOp, RingReply};
use crate::state::{Put, Saved, StateCounters, Ticket};
use crate::zone::ZoneFile;
use crate::zone::io::{Done, Job};
use crate::zone::journal::Journal;
use crate::zone::sync::FileSync;

pub use crate::pool::table::{Change as PoolChange, MemberStatus};

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Pool(#[from] TableError),
    #[error("no zone named {0}")]
    NoZone(String),
    #[error("ring: {0}")]
    Ring(#[from] crate::ring::table::TableError),
    /// The catalog's own state disagrees with itself; the request is
    /// refused and logged, and everything else keeps working.
    #[error("internal error: {0}")]
    Internal(String),
    /// The change could not be made durable, so it was not made.
    #[error("state store: {0}; nothing changed")]
    State(String),
    /// The group's shared state could not take the change, so it was not
    /// made anywhere.
    #[error("{0}; nothing changed")]
    Cluster(String),
}

/// Writes the state store is owed (failed, waiting for a retry), and the last error.
pub type StateTrouble = (u64, String);
/// In a cluster: why the group's state is unavailable (`None`: it is
/// available), the revision applied here, and whether this authority is
/// the group's decider.
pub type ClusterState = (Option<String>, i64, bool);

/// Requests to the catalog, each with where its answer goes.
pub enum Command {
    /// Operator override of a member's state or weight.
    SetMember { pool: String, id: String, admin: Option<AdminState>, weight: Option<u32>, reply: oneshot::Sender<Result<(), UpdateError>> },
    /// A checked batch of reports: stored whole, or refused whole when a
    /// report names a pool or member that is not served. `received`: when
    /// it arrived, for the report-to-answer histogram.
    Reports { reports: Vec<Report>, received: Instant, reply: oneshot::Sender<Result<usize, ReportError>> },
    /// Pools, members and answers as they are now, the state store's
    /// trouble (writes owed and the last error), and the group's state.
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
    Reconfigure { pools: Vec<crate::config::PoolConfig>, reply: oneshot::Sender<Result<(), Vec<String>>> },
}

/// What the catalog is told.
pub enum Input {
    Command(Command),
    /// An operator may have changed this zone file.
    Edited(PathBuf),
    /// The zone file thread finished a job.
    Io(Done),
    /// A job the zone file thread could not take (its queue was full).
    Refused(Job),
    /// The store's writer made an acknowledged write durable, or could not.
    Saved(Saved),
    /// The group's news, from the etcd driver.
    Group(GroupInput),
}

/// Writes for the state store's writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Save {
    /// Durable before anything waits on it: its `Saved` comes back.
    Acked(Ticket, Vec<Put>),
    /// Coalesced and retried by the writer; nobody waits.
    Background(Vec<Put>),
}

/// What the catalog asks of its drivers.
pub enum Output {
    Save(Save),
    /// Work for the zone file thread.
    Job(Job),
    /// Tell secondaries of a zone's new serial.
    Notify(Name, u32),
    /// The snapshot DNS, SRP and the dispatcher read from now on.
    Publish(Arc<Snapshot>),
    /// An answer to a command, ready to send.
    Reply(Reply),
    /// A request for the group's etcd driver.
    Cluster(crate::cluster::reconcile::Request),
}

/// An answer and where it goes; `send` hands it over.
pub struct Reply(Box<dyn FnOnce() + Send>);

impl Reply {
    pub fn new<T: Send + 'static>(to: oneshot::Sender<T>, value: T) -> Self {
        Self(Box::new(move || {
            let _ = to.send(value);
        }))
    }

    pub fn send(self) {
        (self.0)()
    }
}

/// What the catalog counts.
#[derive(Debug)]
pub struct UpdaterCounters {
    pub answer_changes: Count,
    pub zone_writes: Count,
    /// Zone file writes that failed (disk full, permissions) or were refused
    /// as invalid; each is retried.
    pub zone_write_failures: Count,
    pub zone_edits_refused: Count,
    /// From a report's arrival to the answer it changed being served.
    pub report_to_answer: Histogram,
}

impl Default for UpdaterCounters {
    fn default() -> Self {
        Self {
            answer_changes: Count::default(),
            zone_writes: Count::default(),
            zone_write_failures: Count::default(),
            zone_edits_refused: Count::default(),
            report_to_answer: latency_histogram(),
        }
    }
}

impl Expose for UpdaterCounters {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        w.counter("vnamed_answer_changes", "Times a virtual name's answer changed.", self.answer_changes.get())?;
        w.counter("vnamed_zone_writes", "Zone file rewrites.", self.zone_writes.get())?;
        w.counter(
            "vnamed_zone_write_failures",
            "Zone file writes that failed or were refused; each is retried.",
            self.zone_write_failures.get(),
        )?;
        w.counter("vnamed_zone_edits_refused", "Operator zone edits refused as invalid.", self.zone_edits_refused.get())?;
        w.histogram(
            "vnamed_report_to_answer_seconds",
            "Time from a report's arrival to the answer it changed being served.",
            &self.report_to_answer,
        )
    }
}

/// Serial changes kept for incremental transfers, and the records they may
/// hold in all, per zone.
const JOURNAL_DELTAS: usize = 256;
const JOURNAL_RECORDS: usize = 100_000;
/// Answer changes kept for the status page.
const RECENT_CHANGES: usize = 20;
/// How often pools whose answers move with time alone are decided again.
const TICK: Duration = Duration::from_millis(250);
/// How often the members' last known state is saved, at most.
const MEMBER_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// Acknowledged changes waiting behind the one being saved, at most.
const WAITING: usize = 1024;

struct ZoneState {
    /// The last good version read from (or written to) disk.
    file: Arc<ZoneFile>,
    serial: u32,
    /// Each pool's answer, by the pool's key.
    /// Shared with the view last published until one changes.
    answers: Arc<HashMap<LowerName, Arc<PoolAnswer>>>,
    /// The pools whose names live in this zone.
    pools: Vec<PoolId>,
    /// Keeping the file true to what is served.
    sync: FileSync,
    /// What each served serial changed, for IXFR.
    journal: Arc<Journal>,
}

impl ZoneState {
    fn new(file: ZoneFile, disk_text: impl Into<Arc<str>>) -> Self {
        Self {
            serial: file.serial,
            file: Arc::new(file),
            answers: Arc::default(),
            pools: Vec::new(),
            sync: FileSync::new(disk_text),
            journal: Arc::new(Journal::new(JOURNAL_DELTAS, JOURNAL_RECORDS)),
        }
    }
}

/// An acknowledged change waiting for its write to be durable.
enum Pending {
    /// An operator's change: applied again to the pool as it is then
    /// (reports may have come meanwhile), with the overrides it saved.
    Change { pool: String, change: PoolChange, overrides: crate::pool::Overrides, reply: Answer },
    /// A ring change: the table after it, what to answer and log.
    Ring { next: Registry, answer: RingReply, said: String, reply: oneshot::Sender<Result<RingReply, UpdateError>> },
}

/// Where an operator's change is answered.
pub enum Answer {
    /// With the pool's answer after the change.
    Addresses(oneshot::Sender<Result<Vec<IpAddr>, UpdateError>>),
    Done(oneshot::Sender<Result<(), UpdateError>>),
}

impl Answer {
    pub fn reply(self, r: Result<Vec<IpAddr>, UpdateError>) -> Reply {
        match self {
            Answer::Addresses(tx) => Reply::new(tx, r),
            Answer::Done(tx) => Reply::new(tx, r.map(drop)),
        }
    }
}

pub struct Catalog {
    table: Table,
    /// The zone each pool's name lives in, by pool id.
    pool_zone: Vec<LowerName>,
    zones: BTreeMap<LowerName, ZoneState>,
    /// The ring's server table, as saved.
    ring: Registry,
    write_interval: Duration,
    /// What the drivers are owed, in order; replies and NOTIFYs that wait
    /// for the next publish (they speak of what it serves).
    out: VecDeque<Output>,
    after_publish: Vec<Output>,
    /// What the last publish served, kept so the next one redoes only
    /// what changed: each zone's view (with the data it was built from),
    /// the pre-encoded static responses (stale when some zone's data
    /// changed), the virtual names' entries (under each pool's name and type).
    views: HashMap<LowerName, (Arc<crate::zone::ZoneData>, Arc<ZoneView>)>,
    stable: Arc<fast::StaticTable>,
    stable_stale: bool,
    dynamic: fast::Dynamic,
    /// Pools (by zone and key) whose entries must be encoded anew, and
    /// zones whose views must be rebuilt.
    dirty_pools: BTreeSet<(LowerName, LowerName)>,
    dirty_zones: BTreeSet<LowerName>,
    /// The snapshot last published.
    snapshot: Arc<Snapshot>,
    /// The last answer changes (when, pool, answer), newest last, for the
    /// status page; and a count of publishes, to tell when it is stale.
    changes: VecDeque<(Instant, String, Vec<IpAddr>)>,
    published: u64,
    /// Each zone's serial as the pre-encoded responses carry it.
    serials: HashMap<LowerName, Arc<AtomicU32>>,
    /// Each pool's members in the policy's order, for SRP, by pool name.
    preferred: Arc<HashMap<String, Arc<[Preferred]>>>,
    /// Pools' servers for watchers, by pool key.
    watchers: HashMap<LowerName, watch::Sender<Servers>>,
    counters: Arc<UpdaterCounters>,
    state_counters: Arc<StateCounters>,
    /// Zones whose file is being read, and those to read again after.
    reading: BTreeSet<LowerName>,
    reread: BTreeSet<LowerName>,
    /// What `/metrics` shows of each pool's members, by pool name, and
    /// the pools to bring up to date at the next tick.
    health: Arc<HashMap<String, Arc<[MemberHealth]>>>,
    health_due: BTreeSet<PoolId>,
    /// Something changed since the last publish.
    publish_due: bool,
    /// Serial high-water marks: durable, and being saved.
    marks: serials::Marks,
    /// Writes the state store is owed in the background, and the pools
    /// whose members' state changed since they were last saved.
    saves: Vec<Put>,
    members_due: BTreeSet<PoolId>,
    next_member_save: Instant,
    next_tick: Instant,
    /// The acknowledged change being saved, and those waiting behind it.
    saving: Option<(Ticket, Pending)>,
    waiting: VecDeque<Command>,
    tickets: Ticket,
    /// The time of the last input (what `poll_timeout` reckons from).
    clock: Instant,
    /// The status page's board, when there is a page.
    board: Option<status::BoardPost>,
    /// In a group, how the shared state is doing (for `Status`), and
    /// the reconciliation with it.
    cluster: Option<Arc<crate::cluster::ClusterStatus>>,
    group: Option<crate::cluster::reconcile::Reconcile<group::GroupReply>>,
}

impl Catalog {
    /// Takes an input; what it brings about is then in `poll`.
    pub fn handle(&mut self, now: Now, input: Input) {
        self.clock = now.instant;
        match input {
            Input::Command(cmd) => self.command(cmd, now),
            Input::Edited(path) => self.edited(&path),
            Input::Io(done) => self.io_done(done),
            Input::Refused(job) => self.refused(job),
            Input::Saved(saved) => self.saved(saved, now),
            Input::Group(input) => self.group_input(input, now),
        }
        self.settle(now);
    }

    /// When `handle_timeout` is next due (a tick, a zone file write, a save).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let members = (!self.members_due.is_empty()).then_some(self.next_member_save);
        let board = self.board.as_ref().and_then(|b| b.wanted(self.published, &self.ring));
        [Some(self.next_tick), self.next_write(), members, self.marks.retry_at(), board].into_iter().flatten().min()
    }

    /// Does what time alone brings about by `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        self.clock = now.instant;
        if now.instant >= self.next_tick {
            self.next_tick = now.instant + TICK;
            self.tick(now.instant);
            self.group_tick(now);
        }
        self.settle(now);
    }

    /// The next thing for a driver, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether the catalog has published a snapshot (start-up waits for it).
    pub fn ready(&self) -> bool {
        self.views.len() == self.zones.len()
    }

    /// After every input: reserves serials ahead, publishes what changed
    /// (once the serials it carries are reserved), then releases what
    /// waited for that publish, and hands over background saves.
    pub(super) fn settle(&mut self, now: Now) {
        self.group_offer(now);
        self.flush(now.instant, false);
        self.reserve(now.instant);
        if self.publish_due && !self.marks.blocks(&self.zones) {
            self.publish_due = false;
            self.render();
            self.out.push_back(Output::Publish(self.snapshot.clone()));
        }
        if !self.publish_due {
            self.out.extend(self.after_publish.drain(..));
        }
        if now.instant >= self.next_member_save && !self.members_due.is_empty() {
            self.next_member_save = now.instant + MEMBER_SAVE_INTERVAL;
            let saves = self.member_saves(now);
            self.saves.extend(saves);
        }
        if !self.saves.is_empty() {
            self.out.push_back(Output::Save(Save::Background(std::mem::take(&mut self.saves))));
        }
        self.post_board(now.instant);
    }

    /// An answer to send once what it speaks of is published.
    fn reply(&mut self, r: Reply) {
        self.after_publish.push(Output::Reply(r));
    }

    fn ticket(&mut self) -> Ticket {
        self.tickets += 1;
        self.tickets
    }

    fn command(&mut self, cmd: Command, now: Now) {
        let Some(cmd) = self.group_command(cmd, now) else { return };
        // Acknowledged changes go one at a time, each on top of the last.
        let acked = matches!(cmd, Command::SetMember { .. } | Command::Pool { .. })
            || matches!(&cmd, Command::Ring { op, .. } if *op != RingOp::Table);
        if acked && self.saving.is_some() {
            if self.waiting.len() < WAITING {
                self.waiting.push_back(cmd);
            } else {
                self.refuse_busy(cmd);
            }
            return;
        }
        match cmd {
            Command::SetMember { pool, id, admin, weight, reply } => {
                self.operator_change(pool, PoolChange::Member { id, admin, weight }, Answer::Done(reply), now)
            }
            Command::Pool { pool, change, reply } => self.operator_change(pool, change, Answer::Addresses(reply), now),
            Command::Ring { op, reply } => self.ring_op(op, reply),
            Command::Reports { reports, received, reply } => {
                let r = self.reports(reports, received, now.instant);
                self.reply(Reply::new(reply, r));
            }
            Command::Reconfigure { pools, reply } => {
                let r = self.reconfigure(&pools, now);
                self.reply(Reply::new(reply, r));
            }
            Command::Status { reply } => {
                let cluster = self.cluster.as_ref().map(|s| (s.trouble(), s.revision(), s.decider()));
                let r = (self.status(now.instant), self.state_counters.trouble(), cluster);
                self.out.push_back(Output::Reply(Reply::new(reply, r)));
            }
            Command::ShowZone { zone, reply } => {
                let r = self.show_zone(&zone);
                self.out.push_back(Output::Reply(Reply::new(reply, r)));
            }
            Command::Resolve { pool, reply } => {
                let r = self.resolve(&pool, now.instant);
                self.out.push_back(Output::Reply(Reply::new(reply, r)));
            }
            Command::Watch { pool, reply } => {
                let r = self.watch(&pool, now.instant);
                self.out.push_back(Output::Reply(Reply::new(reply, r)));
            }
            Command::Replayable { pool, reply } => {
                let r = self.replayable(&pool);
                self.out.push_back(Output::Reply(Reply::new(reply, r)));
            }
        }
    }

    /// An acknowledged change that cannot wait: the disk is far behind.
    fn refuse_busy(&mut self, cmd: Command) {
        let e = || UpdateError::State("the state store is far behind; try again".into());
        let r = match cmd {
            Command::SetMember { reply, .. } => Reply::new(reply, Err(e())),
            Command::Pool { reply, .. } => Reply::new(reply, Err(e())),
            Command::Ring { reply, .. } => Reply::new(reply, Err(e())),
            _ => return,
        };
        self.out.push_back(Output::Reply(r));
    }

    /// Checks an operator's change against the pool as it is, and saves
    /// the overrides and state it gives; applied when that is durable.
    fn operator_change(&mut self, pool: String, change: PoolChange, reply: Answer, now: Now) {
        match self.stage(&pool, change.clone(), now) {
            Ok(staged) => {
                let ticket = self.ticket();
                let overrides = staged.overrides().1.clone();
                self.out.push_back(Output::Save(Save::Acked(ticket, staged.saves().into_iter().cloned().collect())));
                self.saving = Some((ticket, Pending::Change { pool, change, overrides, reply }));
            }
            Err(e) => self.out.push_back(Output::Reply(reply.reply(Err(e)))),
        }
    }

    /// A ring member's report: the table after it is saved, then served.
    fn ring_op(&mut self, op: RingOp, reply: oneshot::Sender<Result<RingReply, UpdateError>>) {
        let step = match self.ring.step(&op) {
            Ok(s) => s,
            Err(e) => return self.out.push_back(Output::Reply(Reply::new(reply, Err(e.into())))),
        };
        let Some(next) = step.next else {
            return self.out.push_back(Output::Reply(Reply::new(reply, Ok(step.reply))));
        };
        let ticket = self.ticket();
        self.out.push_back(Output::Save(Save::Acked(ticket, vec![Put::Ring(next.to_text())])));
        self.saving = Some((ticket, Pending::Ring { next, answer: step.reply, said: step.said, reply }));
    }

    /// An acknowledged write is durable (or not): the change waiting for
    /// it is applied and answered (or refused), and the next one goes.
    fn saved(&mut self, saved: Saved, now: Now) {
        if self.marks.saved(&saved, now.instant) {
            return;
        }
        let Some((ticket, pending)) = self.saving.take() else { return };
        if ticket != saved.ticket {
            error!(ticket = saved.ticket, waiting = ticket, "internal: a write came back that nothing waits for");
            self.saving = Some((ticket, pending));
            return;
        }
        match (pending, saved.result) {
            (Pending::Change { pool, change, overrides, reply }, Ok(())) => {
                // Reports or a configuration edit that came meanwhile are
                // kept: the change is applied to the pool as it is now, and
                // should that give other overrides (an edit took a setting
                // back), they are saved too.
                let r = self.stage(&pool, change, now).and_then(|staged| {
                    if *staged.overrides().1 != overrides {
                        self.saves.extend(staged.saves().into_iter().cloned());
                    }
                    self.commit(staged, now)
                });
                self.reply(reply.reply(r));
            }
            (Pending::Change { pool, reply, .. }, Err(e)) => {
                tracing::warn!(%pool, error = %e, "operator change refused: the state store cannot save it");
                self.out.push_back(Output::Reply(reply.reply(Err(UpdateError::State(e)))));
            }
            (Pending::Ring { next, answer, said, reply }, Ok(())) => {
                info!("{said}");
                self.ring = next;
                self.ring_dead(self.ring.dead_hosts(), now.instant);
                self.reply(Reply::new(reply, Ok(answer)));
            }
            (Pending::Ring { reply, .. }, Err(e)) => {
                error!(error = %e, "cannot save the ring table; the ring change is refused");
                self.out.push_back(Output::Reply(Reply::new(reply, Err(UpdateError::State(e)))));
            }
        }
        while self.saving.is_none() {
            let Some(next) = self.waiting.pop_front() else { break };
            self.command(next, now);
        }
    }

    /// The ring's server table as served.
    pub fn ring(&self) -> &Registry {
        &self.ring
    }

    /// Pool `pool`'s answer as served now.
    pub fn served(&self, pool: &str) -> Result<Vec<IpAddr>, UpdateError> {
        let i = self.table.find(pool).ok_or_else(|| UpdateError::Pool(TableError::NoPool(pool.to_owned())))?;
        let key = self.table.get(i).map(|p| p.key.clone()).ok_or_else(|| UpdateError::Internal(format!("pool {pool}: gone")))?;
        let zone =
            self.pool_zone.get(i).and_then(|o| self.zones.get(o)).ok_or_else(|| UpdateError::Internal(format!("pool {pool}: no zone")))?;
        Ok(zone.answers.get(&key).map(|a| a.addresses.clone()).unwrap_or_default())
    }

    /// Every server of pool `pool` in the policy's order.
    pub fn resolve(&self, pool: &str, now: Instant) -> Result<Vec<IpAddr>, UpdateError> {
        self.find_pool(pool).map(|i| self.table.order(i, now))
    }

    /// Pool `pool` as it is and its recent reports, for a dry run.
    pub fn replayable(&self, pool: &str) -> Result<(PoolState, Recent), UpdateError> {
        Ok(self.table.replayable(pool)?)
    }

    pub fn find_pool(&self, name: &str) -> Result<PoolId, UpdateError> {
        Ok(self.table.find(name).ok_or_else(|| TableError::NoPool(name.to_owned()))?)
    }
}

#[cfg(test)]
mod tests;
