//! What the authority serves, as one state machine with no I/O of its own:
//! the member table, the zones each pool's name lives in, each pool's
//! answer through its policy, serials, the published snapshot the DNS path
//! reads (redone only where something changed), what `/metrics` and
//! watchers see, and the zone files' sync. Time is passed in; what must
//! reach disk or secondaries comes out as jobs and notices (`poll_job`,
//! `poll_notice`) for the updater's loop to hand to its drivers.
//!
//! `publish` keeps the snapshot and what watchers and `/metrics` see;
//! `files` keeps the zone files true to what is served.

mod files;
mod publish;

use publish::{answer_for, preferred, same, same_records};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name, RecordType};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::clock::Now;
use crate::config::{Config, PolicyName, PoolConfig};
use crate::dns::fast;
use crate::dns::snapshot::{MemberHealth, PoolAnswer, Preferred, Snapshot, ZoneView, zone_records};
use crate::metrics::{Count, Expose, Histogram, Writer, latency_histogram};
use crate::pool::table::{PoolId, Table, TableError};
use crate::pool::{AdminState, Decision, PoolState, Report, ReportError, SavedPool};
use crate::state::{Loaded, Put};
use crate::zone::io::Job;
use crate::zone::journal::{Journal, Kept};
use crate::zone::sync::FileSync;
use crate::zone::{self, MemberNote, ZoneFile};

pub use crate::pool::table::{Change as PoolChange, MemberStatus};

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Pool(#[from] TableError),
    #[error("no zone named {0}")]
    NoZone(String),
    #[error("ring: {0}")]
    Ring(#[from] crate::ring::table::TableError),
    /// The updater's own state disagrees with itself; the request is
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

/// How far ahead of the served serial the store's high-water mark is put,
/// so a change needs a write to the store only once in this many.
pub const SERIAL_RESERVE: u32 = 1000;
/// Serial changes kept for incremental transfers, and the records they may
/// hold in all, per zone.
const JOURNAL_DELTAS: usize = 256;
const JOURNAL_RECORDS: usize = 100_000;
/// Answer changes kept for the status page.
const RECENT_CHANGES: usize = 20;

/// A change to a pool, checked and applied to a copy, waiting for its
/// overrides to be saved before it is put in place (`commit`).
pub struct Staged {
    id: PoolId,
    pool: PoolState,
    /// The pool's state with the answer served now (a paused pool keeps
    /// it), and its overrides after the change.
    state: Put,
    overrides: Put,
}

impl Staged {
    /// What the store must hold before the change is applied: the pool's
    /// overrides after it, and its state.
    pub fn saves(&self) -> [&Put; 2] {
        [&self.state, &self.overrides]
    }

    /// The pool's key and its overrides after the change.
    pub fn overrides(&self) -> (String, &crate::pool::Overrides) {
        (self.pool.key.to_string(), &self.pool.overrides)
    }
}

/// A pool's live servers in the policy's order, and its policy.
pub type Servers = (Vec<IpAddr>, PolicyName);

/// A pool's servers as they change; closed when the pool goes away.
pub type Watched = watch::Receiver<Servers>;

/// What the updater counts.
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

/// What the status page shows, built by the updater when what is served
/// changed and someone is looking.
#[derive(Debug, Clone)]
pub struct Board {
    pub pools: Vec<PoolStatus>,
    pub ring: crate::ring::registry::Registry,
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

/// Where the updater posts boards and the page takes them. Boards are
/// built only while someone holds a receiver (a live page, or a page load
/// waiting for a fresh one); `stale` says the last one is behind what is
/// served, because nobody was looking when it changed.
#[derive(Debug)]
pub struct Boards {
    pub tx: watch::Sender<Arc<Board>>,
    pub stale: std::sync::atomic::AtomicBool,
}

impl Boards {
    pub fn new(now: Instant) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(Board::empty(now)));
        Arc::new(Self { tx, stale: std::sync::atomic::AtomicBool::new(true) })
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

struct ZoneState {
    /// The last good version read from (or written to) disk.
    file: Arc<ZoneFile>,
    serial: u32,
    /// Each pool's answer, by the pool's key.
    answers: HashMap<LowerName, Arc<PoolAnswer>>,
    /// The pools whose names live in this zone.
    pools: Vec<PoolId>,
    /// Keeping the file true to what is served.
    sync: FileSync,
    /// What each served serial changed, for IXFR.
    journal: Arc<Journal>,
}

impl ZoneState {
    fn new(file: ZoneFile, disk_text: String) -> Self {
        Self {
            serial: file.serial,
            file: Arc::new(file),
            answers: HashMap::new(),
            pools: Vec::new(),
            sync: FileSync::new(disk_text),
            journal: Arc::new(Journal::new(JOURNAL_DELTAS, JOURNAL_RECORDS)),
        }
    }
}

pub struct Catalog {
    table: Table,
    /// The zone each pool's name lives in, by pool id.
    pool_zone: Vec<LowerName>,
    zones: BTreeMap<LowerName, ZoneState>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    write_interval: Duration,
    /// Work for the zone file thread, and NOTIFYs for secondaries, not yet taken.
    jobs: VecDeque<Job>,
    notices: VecDeque<(Name, u32)>,
    /// What the last publish served, kept so the next one redoes only
    /// what changed: each zone's view (with the data it was built from),
    /// the pre-encoded static responses (stale when some zone's data
    /// changed), the virtual names' entries and which keys each pool owns.
    views: HashMap<LowerName, (Arc<zone::ZoneData>, Arc<ZoneView>)>,
    stable: Arc<HashMap<Box<[u8]>, fast::Entry>>,
    stable_stale: bool,
    dynamic: fast::Dynamic,
    pool_keys: HashMap<LowerName, Vec<Box<[u8]>>>,
    /// Pools (by zone and key) whose entries must be encoded anew, and
    /// zones whose views must be rebuilt.
    dirty_pools: BTreeSet<(LowerName, LowerName)>,
    dirty_zones: BTreeSet<LowerName>,
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
    /// Zones whose file is being read, and those to read again after.
    reading: BTreeSet<LowerName>,
    reread: BTreeSet<LowerName>,
    /// What `/metrics` shows of each pool's members, by pool name, and
    /// the pools to bring up to date at the next tick.
    health: Arc<HashMap<String, Arc<[MemberHealth]>>>,
    health_due: BTreeSet<PoolId>,
    /// Each pool's member notes as last rendered, by pool id.
    notes: Vec<Option<Arc<[MemberNote]>>>,
    /// Something changed since the last publish.
    publish_due: bool,
    /// Each zone's serial high-water mark as the state store has it.
    reserved: HashMap<LowerName, u32>,
    /// Writes the state store is owed (not acknowledged to anyone), and
    /// the pools whose members' state changed since it last saved them.
    saves: VecDeque<Put>,
    members_due: BTreeSet<PoolId>,
}

/// Pool `i` and the origin of the zone it is bound to.
fn place<'a>(table: &'a Table, pool_zone: &'a [LowerName], i: PoolId) -> Result<(&'a PoolState, &'a LowerName), UpdateError> {
    let pool = table.get(i).ok_or_else(|| UpdateError::Internal(format!("no pool {i}")))?;
    Ok((pool, pool_zone.get(i).ok_or_else(|| unserved(pool))?))
}

fn unserved(pool: &PoolState) -> UpdateError {
    UpdateError::Internal(format!("pool {}: its zone is not served", pool.name))
}

/// The zone a pool's name lives in, if it may be a pool there.
fn zone_for(zones: &BTreeMap<LowerName, ZoneState>, name: &Name) -> Result<LowerName, String> {
    let lower = LowerName::from(name);
    let Some((origin, zone)) = zones.iter().filter(|(o, _)| o.zone_of(&lower)).max_by_key(|(o, _)| o.num_labels()) else {
        return Err(format!("pool {name}: no zone file in zones_dir holds this name"));
    };
    if zone.file.data.nodes.get(&lower).is_some_and(|n| n.get(RecordType::CNAME).is_some()) {
        return Err(format!("pool {name}: the zone file has a CNAME at this name"));
    }
    if &lower == origin {
        return Err(format!("pool {name}: a pool cannot be the zone apex"));
    }
    if let Some(line) = zone.file.stray_addresses(name).first() {
        return Err(format!(
            "pool {name}: {}:{line}: address records for a virtual name belong in its managed block, which vnamed writes; remove them",
            zone.file.path.display()
        ));
    }
    Ok(origin.clone())
}

/// The zone of every pool, or every pool that has none.
fn zones_of(zones: &BTreeMap<LowerName, ZoneState>, configs: &[PoolConfig]) -> Result<Vec<LowerName>, Vec<String>> {
    let (found, problems): (Vec<_>, Vec<_>) = configs
        .iter()
        .map(|c| match Name::from_ascii(&c.name) {
            Ok(mut name) => {
                name.set_fqdn(true);
                zone_for(zones, &name)
            }
            Err(e) => Err(format!("pool {}: {e}", c.name)),
        })
        .partition(Result::is_ok);
    if problems.is_empty() {
        Ok(found.into_iter().map(Result::unwrap).collect())
    } else {
        Err(problems.into_iter().map(|p| p.unwrap_err()).collect())
    }
}

/// Is `a` newer than `b` in serial-number arithmetic (RFC 1982)?
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

impl Catalog {
    /// Builds what is served from the configuration, the zone files and
    /// what the state store remembers (`saved`): each pool's overrides and
    /// its members' last known state, and each zone's serial high-water
    /// mark. From a fresh store, the operators' notes in the zone files
    /// are taken as overrides instead. Nothing is published until the
    /// first `publish_pending`.
    pub fn new(
        config: &Config,
        files: BTreeMap<LowerName, ZoneFile>,
        saved: &Loaded,
        snapshot: Arc<ArcSwap<Snapshot>>,
        counters: Arc<UpdaterCounters>,
        write_interval: Duration,
        now: Now,
    ) -> Result<Self, Vec<String>> {
        let zones: BTreeMap<LowerName, ZoneState> = files
            .into_iter()
            .map(|(origin, file)| {
                let text = file.text.clone();
                (origin, ZoneState::new(file, text))
            })
            .collect();
        let pool_zone = zones_of(&zones, &config.pool)?;
        let mut catalog = Self {
            table: Table::new(&config.pool, now),
            pool_zone,
            zones,
            snapshot,
            write_interval,
            jobs: VecDeque::new(),
            notices: VecDeque::new(),
            views: HashMap::new(),
            stable: Arc::default(),
            stable_stale: true,
            dynamic: fast::Dynamic::default(),
            pool_keys: HashMap::new(),
            dirty_pools: BTreeSet::new(),
            dirty_zones: BTreeSet::new(),
            changes: VecDeque::new(),
            published: 0,
            serials: HashMap::new(),
            preferred: Arc::default(),
            watchers: HashMap::new(),
            counters,
            reading: BTreeSet::new(),
            reread: BTreeSet::new(),
            notes: Vec::new(),
            health: Arc::default(),
            health_due: BTreeSet::new(),
            publish_due: true,
            reserved: HashMap::new(),
            saves: VecDeque::new(),
            members_due: BTreeSet::new(),
        };
        catalog.bind_zones();
        for i in 0..catalog.table.pools().len() {
            let Some(key) = catalog.table.get(i).map(|p| p.key.to_string()) else { continue };
            if let Some(o) = saved.overrides.get(&key) {
                for problem in catalog.table.lay(i, o, now) {
                    warn!(pool = %key, %problem, "a saved override no longer applies");
                }
                if catalog.table.get(i).is_some_and(|p| &p.overrides != o) {
                    catalog.save_overrides(i);
                }
            }
            let prior = saved.pools.get(&key);
            if let Some(p) = prior {
                catalog.table.take_saved(i, p, now);
            }
            catalog.restore(i, now, saved.fresh, prior.map(|p| (p.answer.clone(), p.servfail)));
            if saved.fresh && catalog.table.get(i).is_some_and(|p| !p.overrides.is_empty()) {
                catalog.save_overrides(i); // imported from the zone file's notes
            }
        }
        // Forget what the store keeps of pools no longer configured.
        let keys: BTreeSet<String> = catalog.table.pools().iter().map(|p| p.key.to_string()).collect();
        for gone in saved.overrides.keys().chain(saved.pools.keys()).filter(|k| !keys.contains(*k)) {
            catalog.saves.push_back(Put::Overrides(gone.clone(), None));
            catalog.saves.push_back(Put::Pool(gone.clone(), None));
        }
        for (origin, zone) in catalog.zones.iter_mut() {
            let dirty = zone.sync.is_dirty();
            let mut serial = if dirty { zone.serial.wrapping_add(1) } else { zone.serial };
            if let Some(&high) = saved.serials.get(&origin.to_string()) {
                // Serial `high` may have been served with other content: go past it.
                if (dirty || serial != high) && !serial_gt(serial, high) {
                    serial = high.wrapping_add(1);
                    zone.sync.touch();
                }
                catalog.reserved.insert(origin.clone(), high);
            }
            zone.serial = serial;
            if let Some(rows) = saved.journals.get(&origin.to_string()) {
                // Kept only where the zone still is: after a crash the serial
                // moved past the rows, and secondaries take the whole zone once.
                let rows = rows.iter().filter_map(|(n, bytes)| match crate::zone::journal::decode(bytes) {
                    Ok(d) => Some((*n, d)),
                    Err(error) => {
                        warn!(zone = %origin, row = n, %error, "a journal row does not read; the journal starts after it");
                        None
                    }
                });
                let journal = Journal::restore(JOURNAL_DELTAS, JOURNAL_RECORDS, rows.collect(), serial);
                let keep_from = journal.first();
                zone.journal = Arc::new(journal);
                catalog.saves.push_back(publish::journal_put(origin, Kept { added: None, keep_from }));
            }
        }
        let served: BTreeSet<String> = catalog.zones.keys().map(|o| o.to_string()).collect();
        for gone in saved.journals.keys().filter(|z| !served.contains(*z)) {
            catalog.saves.push_back(Put::Journal { zone: gone.clone(), row: None, keep_from: u64::MAX });
        }
        Ok(catalog)
    }

    /// Zones whose served serial has reached the store's high-water mark,
    /// each with the mark to write before the next publish.
    fn marks_due(&self) -> impl Iterator<Item = (&LowerName, u32)> + '_ {
        self.zones
            .iter()
            .filter(|(o, z)| self.reserved.get(*o).is_none_or(|r| serial_gt(z.serial, *r)))
            .map(|(o, z)| (o, z.serial.wrapping_add(SERIAL_RESERVE)))
    }

    /// The marks to write before the next publish.
    pub fn reservations_due(&self) -> Vec<Put> {
        self.marks_due().map(|(o, high)| Put::Serial(o.to_string(), high)).collect()
    }

    /// The store now holds the marks `reservations_due` gave.
    pub fn reserved(&mut self) {
        let marks: Vec<(LowerName, u32)> = self.marks_due().map(|(o, high)| (o.clone(), high)).collect();
        self.reserved.extend(marks);
    }

    /// Each zone's serial as served now (the high-water marks to leave at
    /// a clean stop, so a restart need not move them).
    pub fn served_serials(&self) -> Vec<Put> {
        self.zones.iter().map(|(o, z)| Put::Serial(o.to_string(), z.serial)).collect()
    }

    /// Each zone's journal as the state store keeps it, to leave at a
    /// clean stop with the served serials: a restart that serves the same
    /// serial goes on with it. (Saved only then: after a crash the serial
    /// moves past whatever the journal reached.)
    pub fn journal_saves(&self) -> Vec<Put> {
        self.zones.iter().flat_map(|(o, z)| z.journal.rows().into_iter().map(move |kept| publish::journal_put(o, kept))).collect()
    }

    /// The next write the state store is owed, if any.
    pub fn poll_save(&mut self) -> Option<Put> {
        self.saves.pop_front()
    }

    /// The last known state of the pools whose members or answer changed
    /// since this was last called.
    pub fn member_saves(&mut self, now: Now) -> Vec<Put> {
        std::mem::take(&mut self.members_due)
            .into_iter()
            .filter_map(|i| self.table.get(i))
            .map(|p| Put::Pool(p.key.to_string(), Some(self.saved_pool(p, now))))
            .collect()
    }

    /// Pool `p`'s state to save, with the answer its zone serves now.
    fn saved_pool(&self, p: &PoolState, now: Now) -> SavedPool {
        let mut saved = p.saved(now);
        if let Some(a) = self.zones.values().find_map(|z| z.answers.get(&p.key)) {
            saved.answer = a.addresses.clone();
            saved.servfail = a.servfail;
        }
        saved
    }

    /// Every pool's members' state, whatever changed (at a clean stop).
    pub fn all_member_saves(&mut self, now: Now) -> Vec<Put> {
        self.members_due = (0..self.table.pools().len()).collect();
        self.member_saves(now)
    }

    fn save_overrides(&mut self, i: PoolId) {
        if let Some(p) = self.table.get(i) {
            self.saves.push_back(Put::Overrides(p.key.to_string(), Some(p.overrides.clone())));
        }
    }

    /// Checks `change` to pool `pool` and applies it to a copy; the
    /// updater saves its overrides, then `commit`s it.
    pub fn stage(&self, pool: &str, change: PoolChange, now: Now) -> Result<Staged, UpdateError> {
        let (id, pool) = self.table.stage(pool, change, now)?;
        let key = pool.key.to_string();
        let overrides = Put::Overrides(key.clone(), Some(pool.overrides.clone()));
        let mut saved = self.saved_pool(&pool, now);
        if !pool.paused {
            // The answer once the change is in place (a paused pool keeps today's).
            let d = pool.clone().decide(now.instant);
            (saved.answer, saved.servfail) = (d.addresses, d.servfail);
        }
        let state = Put::Pool(key, Some(saved));
        Ok(Staged { id, pool, state, overrides })
    }

    /// Puts a staged change in place; returns the pool's answer after it.
    pub fn commit(&mut self, staged: Staged, now: Now) -> Result<Vec<IpAddr>, UpdateError> {
        let i = staged.id;
        info!(pool = %staged.pool.name, overrides = ?staged.pool.overrides.lines(), "pool changed by operator");
        self.table.put(i, staged.pool);
        if let Some(n) = self.notes.get_mut(i) {
            *n = None;
        }
        let (_, zone) = self.zone_mut(i)?;
        // The notes in the file change even when the answer does not.
        zone.sync.touch();
        match self.redecide(i, now.instant) {
            Some(origin) => self.changed(vec![origin]),
            None => self.publish(), // the members' state may have moved
        }
        let (pool, zone) = self.zone_mut(i)?;
        let answer = zone.answers.get(&pool.key).ok_or_else(|| UpdateError::Internal(format!("pool {}: no answer", pool.name)))?;
        Ok(answer.addresses.clone())
    }

    /// Lists each zone's pools anew from `pool_zone`.
    fn bind_zones(&mut self) {
        for z in self.zones.values_mut() {
            z.pools.clear();
        }
        for (i, origin) in self.pool_zone.iter().enumerate() {
            match self.zones.get_mut(origin) {
                Some(z) => z.pools.push(i),
                None => error!(zone = %origin, pool = i, "internal: a pool's zone is not served; the pool is left out"),
            }
        }
    }

    /// The zone pool `i` lives in, and the pool, when both are there.
    fn zone_mut(&mut self, i: PoolId) -> Result<(&PoolState, &mut ZoneState), UpdateError> {
        let (pool, origin) = place(&self.table, &self.pool_zone, i)?;
        Ok((pool, self.zones.get_mut(origin).ok_or_else(|| unserved(pool))?))
    }

    /// The zone pool `i` lives in, and the pool, when both are there.
    fn zone_ref(&self, i: PoolId) -> Result<(&PoolState, &ZoneState), UpdateError> {
        let (pool, origin) = place(&self.table, &self.pool_zone, i)?;
        Ok((pool, self.zones.get(origin).ok_or_else(|| unserved(pool))?))
    }

    /// Brings a pool (new to this updater) into its zone: the operator's
    /// notes and the last answer come back from the zone file when they
    /// still make sense.
    /// `prior` is the answer the state store says was served (the zone
    /// file's block stands in when there is none): it is served again when
    /// its members are still in service, or whatever they are when the
    /// pool is paused.
    fn restore(&mut self, i: PoolId, clock: Now, import_notes: bool, prior: Option<(Vec<IpAddr>, bool)>) {
        let now = clock.instant;
        if let Some(n) = self.notes.get_mut(i) {
            *n = None;
        }
        let Ok((pool, zone)) = self.zone_mut(i) else { return };
        let name = pool.name.to_string();
        let block = zone.file.block(&pool.name).cloned();
        let (previous, servfail, known) = match prior {
            Some((answer, servfail)) => (answer, servfail, true),
            None => (zone.file.addresses(&pool.name), false, block.is_some()),
        };
        let notes = if import_notes { block.as_ref().map(|b| b.members.as_slice()).unwrap_or_default() } else { &[] };
        for (id, pairs) in notes {
            let admin = pairs.iter().find(|(k, _)| k == "admin").and_then(|(_, v)| AdminState::parse(v));
            let weight = pairs.iter().find(|(k, _)| k == "weight").and_then(|(_, v)| v.parse().ok());
            let _ = self.table.change(&name, PoolChange::Member { id: id.clone(), admin, weight }, clock);
        }
        let Some(pool) = self.table.get(i) else { return };
        let live: Vec<IpAddr> = pool.members.iter().filter(|m| m.eligible(now, pool.stale_after)).map(|m| m.address).collect();
        let restored = known
            && if pool.paused {
                servfail || !previous.is_empty()
            } else {
                !servfail && !previous.is_empty() && previous.iter().all(|a| live.contains(a))
            };
        let decision = if restored {
            let rotate = pool.policy == PolicyName::RoundRobin;
            let ttl = pool.ttl_range.map(|(min, _)| min).unwrap_or(pool.ttl);
            // Shares are not kept: the members served before share equally
            // until the next decision.
            let shared = pool.shares();
            let shares = if shared && !servfail { vec![1.0 / previous.len().max(1) as f64; previous.len()] } else { Vec::new() };
            if !servfail {
                self.table.restore_last_known(i, previous.clone());
            }
            Some(Decision { shares, ..Decision::plain(previous, rotate, servfail, ttl) })
        } else {
            self.table.decide_anyway(i, now)
        };
        let Some(decision) = decision else { return };
        if let Ok((pool, zone)) = self.zone_mut(i) {
            let answer = answer_for(pool, decision);
            if !restored {
                zone.sync.touch();
            }
            let (key, name) = (pool.key.clone(), pool.name.clone());
            if let Some(origin) = self.pool_zone.get(i).cloned() {
                self.put_answer(&origin, &key, &name, Some(Arc::new(answer)));
            }
        }
        self.refresh_health(i, now);
    }

    /// A receiver of pool `pool`'s servers as they change.
    pub fn watch(&mut self, pool: &str, now: Instant) -> Result<Watched, UpdateError> {
        let i = self.find_pool(pool)?;
        let p = self.table.get(i).ok_or_else(|| UpdateError::Internal(format!("no pool {i}")))?;
        let servers = (self.table.order(i, now), p.policy);
        let tx = self.watchers.entry(p.key.clone()).or_insert_with(|| watch::channel(servers.clone()).0);
        tx.send_if_modified(|w| std::mem::replace(w, servers.clone()) != servers);
        Ok(tx.subscribe())
    }

    /// Pool `pool` as it is and its recent reports, for a dry run.
    pub fn replayable(&self, pool: &str) -> Result<(PoolState, crate::pool::replay::Recent), UpdateError> {
        Ok(self.table.replayable(pool)?)
    }

    pub fn find_pool(&self, name: &str) -> Result<PoolId, UpdateError> {
        Ok(self.table.find(name).ok_or_else(|| TableError::NoPool(name.to_owned()))?)
    }

    /// Re-applies a pool's policy (unless it is paused); returns its zone
    /// when its answer changed.
    fn redecide(&mut self, i: PoolId, now: Instant) -> Option<LowerName> {
        let changed = self.table.decide(i, now).and_then(|d| self.answer(i, d, now));
        self.touched(i, now);
        changed
    }

    /// Serves `decision` as pool `i`'s answer; returns its zone when the
    /// answer changed.
    fn answer(&mut self, i: PoolId, decision: Decision, now: Instant) -> Option<LowerName> {
        let (pool, zone) = match self.zone_mut(i) {
            Ok(found) => found,
            Err(e) => {
                error!(error = %e, "answer not changed");
                return None;
            }
        };
        let served = zone.answers.get(&pool.key);
        if served.is_some_and(|a| same(a, &decision, pool.answers)) {
            return None;
        }
        let records_moved = !served.is_some_and(|a| same_records(a, &decision, pool.answers));
        let answer = answer_for(pool, decision);
        if records_moved {
            info!(pool = %pool.name, answer = ?answer.addresses, shares = ?answer.shares, ttl = answer.ttl, servfail = answer.servfail, "answer changed");
            zone.serial = zone.serial.wrapping_add(1);
            zone.sync.touch();
        } else {
            debug!(pool = %pool.name, shares = ?answer.shares, "shares moved");
        }
        let (key, name) = (pool.key.clone(), pool.name.clone());
        if records_moved {
            if self.changes.len() == RECENT_CHANGES {
                self.changes.pop_front();
            }
            self.changes.push_back((now, name.to_string(), answer.addresses.clone()));
        }
        let origin = self.pool_zone.get(i).cloned()?;
        self.put_answer(&origin, &key, &name, Some(Arc::new(answer)));
        self.counters.answer_changes.inc();
        self.members_due.insert(i);
        // Only a change of the records moves the serial and tells secondaries.
        if records_moved {
            Some(origin)
        } else {
            self.publish();
            None
        }
    }

    /// Publishes and tells secondaries about the zones whose serial moved.
    fn changed(&mut self, mut zones: Vec<LowerName>) {
        if zones.is_empty() {
            return;
        }
        zones.sort();
        zones.dedup();
        self.publish();
        for origin in zones {
            let Some(z) = self.zones.get(&origin) else { continue };
            self.notices.push_back((z.file.data.origin.clone(), z.serial));
        }
    }

    pub fn reports(&mut self, reports: Vec<Report>, received: Instant, now: Instant) -> Result<usize, ReportError> {
        let absorbed = self.table.absorb(reports, now)?;
        self.members_due.extend(absorbed.pools.iter().copied());
        let mut zones = Vec::new();
        let mut republish = false;
        for &i in &absorbed.pools {
            if let Some(z) = self.redecide(i, now) {
                zones.push(z);
            } else if absorbed.ports_moved.contains(&i)
                && let Ok((pool, zone)) = self.zone_ref(i)
                && let Some(a) = zone.answers.get(&pool.key)
                && let Some(origin) = self.pool_zone.get(i).cloned()
            {
                // Same answer, a member's port moved: only its members change.
                let mut fresh = (**a).clone();
                fresh.preferred = preferred(pool, &fresh.addresses);
                let (key, name) = (pool.key.clone(), pool.name.clone());
                self.put_answer(&origin, &key, &name, Some(Arc::new(fresh)));
                republish = true;
            }
        }
        if !zones.is_empty() {
            self.changed(zones);
            self.counters.report_to_answer.observe(received.elapsed().as_secs_f64());
        } else if republish {
            self.publish();
        }
        Ok(absorbed.count)
    }

    /// Takes every pool member whose host the ring says is dead out of the
    /// answers, and brings back those it no longer lists.
    pub fn ring_dead(&mut self, dead: Vec<IpAddr>, now: Instant) {
        let zones = self.table.set_ring_dead(dead).into_iter().filter_map(|i| self.redecide(i, now)).collect();
        self.changed(zones);
    }

    /// Every server of pool `pool` in the policy's order.
    pub fn resolve(&self, pool: &str, now: Instant) -> Result<Vec<IpAddr>, UpdateError> {
        self.find_pool(pool).map(|i| self.table.order(i, now))
    }

    /// Applies the pools of an edited configuration: new pools join, removed
    /// ones leave (with their managed blocks), and kept ones take the new
    /// policy and members while keeping what was reported about them.
    pub fn reconfigure(&mut self, configs: &[PoolConfig], now: Now) -> Result<(), Vec<String>> {
        let origins = zones_of(&self.zones, configs)?;
        let mut touched: Vec<LowerName> = Vec::new();
        let changes = self.table.reconfigure(configs, now);
        for problem in &changes.dropped {
            warn!(%problem, "an override no longer applies after the configuration edit");
        }
        for &i in &changes.overrides_changed {
            self.save_overrides(i);
        }
        // Pool ids follow the new table.
        self.members_due = (0..self.table.pools().len()).collect();
        for gone in &changes.removed {
            self.saves.push_back(Put::Overrides(gone.key.to_string(), None));
            self.saves.push_back(Put::Pool(gone.key.to_string(), None));
            Arc::make_mut(&mut self.health).remove(&gone.name.to_string());
            // Its watchers see the pool close.
            self.watchers.remove(&gone.key);
        }
        for gone in &changes.removed {
            let Some(origin) = self.zones.iter().find(|(_, z)| z.answers.contains_key(&gone.key)).map(|(o, _)| o.clone()) else {
                continue;
            };
            self.put_answer(&origin, &gone.key, &gone.name, None);
            let Some(zone) = self.zones.get_mut(&origin) else { continue };
            // The file's copy of its answer goes too, now rather than at the next write.
            let data = Arc::make_mut(&mut Arc::make_mut(&mut zone.file).data);
            if let Some(node) = data.nodes.get_mut(&gone.key) {
                node.rrsets.retain(|s| !matches!(s.rtype, RecordType::A | RecordType::AAAA));
                if node.rrsets.is_empty() && !data.nodes.keys().any(|n| n != &gone.key && gone.key.zone_of(n)) {
                    data.nodes.remove(&gone.key);
                }
            }
            self.stable_stale = true;
            zone.sync.drop_block(gone.name.to_string());
            zone.serial = zone.serial.wrapping_add(1);
            touched.push(origin.clone());
            info!(pool = %gone.name, "pool removed by configuration edit");
        }
        // Pool ids follow the new table; each pool's zone comes from its name.
        let by_key: HashMap<String, LowerName> =
            configs.iter().zip(origins).map(|(c, o)| (c.name.trim_end_matches('.').to_ascii_lowercase(), o)).collect();
        self.pool_zone = self
            .table
            .pools()
            .iter()
            .map(|p| {
                by_key
                    .get(p.name.to_ascii().trim_end_matches('.').to_ascii_lowercase().as_str())
                    .cloned()
                    .unwrap_or_else(LowerName::default)
            })
            .collect();
        self.bind_zones();
        self.notes.clear();
        self.health_due = (0..self.table.pools().len()).collect();
        for &i in &changes.reshaped {
            // A new TTL or answer size: the old answer cannot stand, even while paused.
            if let (Ok((pool, _)), Some(origin)) = (self.zone_ref(i), self.pool_zone.get(i).cloned()) {
                let (key, name) = (pool.key.clone(), pool.name.clone());
                self.put_answer(&origin, &key, &name, None);
            }
        }
        for i in 0..self.table.pools().len() {
            let Some(origin) = self.pool_zone.get(i).cloned() else { continue };
            if changes.added.contains(&i) {
                info!(pool = %self.table.pools()[i].name, "pool added by configuration edit");
                self.restore(i, now, true, None);
                if let Some(z) = self.zones.get_mut(&origin) {
                    z.serial = z.serial.wrapping_add(1);
                }
            } else if changes.reshaped.contains(&i) {
                if let Some(d) = self.table.decide_anyway(i, now.instant) {
                    self.answer(i, d, now.instant);
                }
                self.touched(i, now.instant);
            } else {
                self.redecide(i, now.instant);
            }
            if let Some(z) = self.zones.get_mut(&origin) {
                z.sync.touch();
            }
            touched.push(origin);
        }
        info!(pools = self.table.pools().len(), "configuration edit applied");
        self.changed(touched);
        Ok(())
    }

    /// Serves the group's decisions from now on (`[cluster]` on etcd).
    pub fn join_group(&mut self) {
        self.table.join_group();
    }

    /// This authority's own decisions that changed since the last call:
    /// pool key, its zone, the decision.
    pub fn take_offers(&mut self) -> Vec<(String, String, Decision)> {
        let offers = self.table.take_offers();
        offers
            .into_iter()
            .filter_map(|(i, d)| {
                let key = self.table.get(i)?.key.to_string();
                let zone = self.pool_zone.get(i)?.to_string();
                Some((key, zone, d))
            })
            .collect()
    }

    /// Every own decision offered again (this authority became the decider).
    pub fn offer_all(&mut self, now: Instant) {
        self.table.offer_all(now);
    }

    /// Each reported member's own view, to share with the group: pool
    /// key, member id, up/down while fresh (`None`: stale).
    pub fn own_views(&self, now: Instant) -> Vec<(LowerName, Arc<str>, Option<bool>)> {
        self.table.own_views(now).map(|(p, m, v)| (p.clone(), m.clone(), v)).collect()
    }

    /// What the other authorities see of members (pool key, member id,
    /// seen); re-decides the pools where that changed.
    pub fn remote_views(&mut self, seen: Vec<(String, String, Option<bool>)>, now: Instant) {
        let mut pools = BTreeSet::new();
        for (pool, member, v) in seen {
            pools.extend(self.table.set_remote(&pool, &member, v));
        }
        let zones = pools.into_iter().filter_map(|i| self.redecide(i, now)).collect();
        self.changed(zones);
    }

    /// Each zone's serial as served now, by origin.
    pub fn zone_serials(&self) -> Vec<(String, u32)> {
        self.zones.iter().map(|(o, z)| (o.to_string(), z.serial)).collect()
    }

    /// The group's decisions (pool key, decision) and zone serials, served
    /// from now on. A serial is taken only forward: one not newer than
    /// what this authority served stays its own.
    pub fn impose(&mut self, decisions: Vec<(String, Decision)>, serials: Vec<(String, u32)>, now: Instant) {
        let mut zones = Vec::new();
        for (pool, d) in decisions {
            let Some(i) = self.table.find(&pool) else {
                warn!(pool, "the group decided a pool this authority does not serve");
                continue;
            };
            self.table.impose(i, d);
            zones.extend(self.redecide(i, now));
        }
        for (zone, serial) in serials {
            let Ok(name) = Name::from_ascii(&zone) else { continue };
            let origin = LowerName::from(name);
            if let Some(z) = self.zones.get_mut(&origin)
                && serial_gt(serial, z.serial)
            {
                z.serial = serial;
                z.sync.touch();
                zones.push(origin);
            }
        }
        self.changed(zones);
    }

    /// Pool `pool`'s answer as served now.
    pub fn served(&self, pool: &str) -> Result<Vec<IpAddr>, UpdateError> {
        let i = self.table.find(pool).ok_or_else(|| UpdateError::Pool(crate::pool::table::TableError::NoPool(pool.to_owned())))?;
        let key = self.table.get(i).map(|p| p.key.clone()).ok_or_else(|| UpdateError::Internal(format!("pool {pool}: gone")))?;
        let zone =
            self.pool_zone.get(i).and_then(|o| self.zones.get(o)).ok_or_else(|| UpdateError::Internal(format!("pool {pool}: no zone")))?;
        Ok(zone.answers.get(&key).map(|a| a.addresses.clone()).unwrap_or_default())
    }

    /// Applies an operator's change at once (the updater saves overrides
    /// between `stage` and `commit` instead).
    pub fn change_pool(&mut self, pool: &str, change: PoolChange, now: Now) -> Result<Vec<IpAddr>, UpdateError> {
        let staged = self.stage(pool, change, now)?;
        self.commit(staged, now)
    }

    /// Re-decides pools whose members report, so stale reports take
    /// effect, and brings what `/metrics` shows up to date.
    pub fn tick(&mut self, now: Instant) {
        let timed: Vec<PoolId> = self.table.timed().collect();
        let zones: Vec<LowerName> = timed.into_iter().filter_map(|i| self.redecide(i, now)).collect();
        let health = !self.health_due.is_empty();
        for i in std::mem::take(&mut self.health_due) {
            self.refresh_health(i, now);
        }
        if zones.is_empty() && health {
            self.publish();
        }
        self.changed(zones);
    }

    /// The last answer changes, oldest first: when, pool, answer.
    pub fn recent_changes(&self) -> impl Iterator<Item = &(Instant, String, Vec<IpAddr>)> {
        self.changes.iter()
    }

    /// Grows with every publish: what is served may have changed.
    pub fn published(&self) -> u64 {
        self.published
    }

    pub fn status(&self, now: Instant) -> Vec<PoolStatus> {
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

    pub fn show_zone(&self, zone: &str) -> Result<String, UpdateError> {
        let mut name = Name::from_ascii(zone).map_err(|_| UpdateError::NoZone(zone.to_owned()))?;
        name.set_fqdn(true);
        let snap = self.snapshot.load();
        let view = snap.zones.get(&LowerName::from(&name)).ok_or_else(|| UpdateError::NoZone(zone.to_owned()))?;
        let mut out = format!("; zone {} serial {} as served by vnamed\n", view.data.origin, view.serial);
        for r in zone_records(view) {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n";

    fn catalog() -> Catalog {
        let config = Config::from_toml(
            r#"
[[pool]]
name = "www.one.example."
policy = "priority"
members = [ { id = "a", address = "127.0.0.1" }, { id = "b", address = "127.0.0.2" } ]

[[pool]]
name = "www.two.example."
members = [ { id = "c", address = "127.0.0.3" } ]

[[pool]]
name = "api.one.example."
members = [ { id = "d", address = "127.0.0.4" } ]
"#,
        )
        .unwrap();
        let files = ["one.example.", "two.example."]
            .into_iter()
            .map(|z| {
                let name = Name::from_ascii(z).unwrap();
                let file = ZoneFile::parse(std::path::Path::new(&format!("/nonexistent/{z}zone")), name.clone(), ZONE.into()).unwrap();
                (LowerName::from(&name), file)
            })
            .collect();
        let fresh = Loaded { fresh: true, ..Loaded::default() };
        let mut c = Catalog::new(&config, files, &fresh, Arc::default(), Arc::default(), Duration::from_secs(3600), Now::read()).unwrap();
        c.publish_pending();
        c
    }

    fn set_down(c: &mut Catalog, pool: &str, id: &str) -> Result<Vec<IpAddr>, UpdateError> {
        let r = c.change_pool(pool, PoolChange::Member { id: id.into(), admin: Some(AdminState::Down), weight: None }, Now::read());
        c.publish_pending();
        r
    }

    fn origin(name: &str) -> LowerName {
        LowerName::from(Name::from_ascii(name).unwrap())
    }

    #[test]
    fn an_operator_change_moves_the_answer_and_the_serial_and_tells_secondaries() {
        let mut c = catalog();
        while c.poll_notice().is_some() {}
        let serial = c.snapshot.load().zones[&origin("one.example.")].serial;
        assert_eq!(set_down(&mut c, "www.one.example.", "a").unwrap(), vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        let new = c.snapshot.load().zones[&origin("one.example.")].serial;
        assert_eq!(new, serial.wrapping_add(1));
        assert_eq!(c.poll_notice(), Some((Name::from_ascii("one.example.").unwrap(), new)));
        assert_eq!(c.status(Instant::now())[0].answer, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert!(matches!(set_down(&mut c, "www.nope.example.", "a"), Err(UpdateError::Pool(TableError::NoPool(_)))));
        // The zone file must follow: a write job is planned when it is due.
        c.flush(Instant::now(), true);
        assert!(matches!(c.poll_job(), Some(Job::Write(_))));
        assert!(c.io_pending(), "until the write ends");
    }

    #[test]
    fn a_pool_whose_zone_went_missing_is_refused_and_the_rest_keep_working() {
        let mut c = catalog();
        // Inject an internal inconsistency: pool 0's zone disappears.
        c.zones.remove(&origin("one.example."));
        assert!(matches!(set_down(&mut c, "www.one.example.", "a"), Err(UpdateError::Internal(_))));
        let reports = vec![Report {
            pool: "www.one.example.".into(),
            member: "b".into(),
            up: false,
            metrics: Default::default(),
            custom: Default::default(),
            age: Duration::ZERO,
            check: "test".into(),
            addresses: Vec::new(),
            source: "test".into(),
        }];
        assert_eq!(c.reports(reports, Instant::now(), Instant::now()), Ok(1), "stored, answer left alone");
        c.tick(Instant::now());
        assert_eq!(c.status(Instant::now()).len(), 1, "the broken pool is left out of the status");
        set_down(&mut c, "www.two.example.", "c").unwrap();
        assert_eq!(c.resolve("www.two.example.", Instant::now()).unwrap(), Vec::<IpAddr>::new());
        c.flush(Instant::now(), true);
    }

    #[test]
    fn a_publish_encodes_only_the_pools_that_changed() {
        let mut c = catalog();
        let key = |name: &str| fast::key_of(&LowerName::from(Name::from_ascii(name).unwrap()), RecordType::A, fast::Shape::Plain);
        let entry = |c: &Catalog, name: &str| c.snapshot.load().fast.dynamic.get(&key(name)).cloned().expect("pre-encoded");
        let (www, api, two) = (entry(&c, "www.one.example."), entry(&c, "api.one.example."), entry(&c, "www.two.example."));
        let stable = c.snapshot.load().fast.stable.clone();
        set_down(&mut c, "www.one.example.", "a").unwrap();
        assert!(!Arc::ptr_eq(&www, &entry(&c, "www.one.example.")), "the changed pool is encoded anew");
        assert!(Arc::ptr_eq(&api, &entry(&c, "api.one.example.")), "its neighbour in the same zone is not");
        assert!(Arc::ptr_eq(&two, &entry(&c, "www.two.example.")), "nor a pool of another zone");
        assert!(Arc::ptr_eq(&stable, &c.snapshot.load().fast.stable), "static responses stay");
        let mut out = [0u8; 512];
        let mut q = hickory_proto::op::Message::new(1, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
        q.add_query(hickory_proto::op::Query::query(Name::from_ascii("one.example.").unwrap(), RecordType::SOA));
        let n = c.snapshot.load().fast.respond(&q.to_vec().unwrap(), &mut out).unwrap();
        let soa = hickory_proto::op::Message::from_vec(&out[..n]).unwrap();
        let serial = c.snapshot.load().zones[&origin("one.example.")].serial;
        assert!(
            matches!(&soa.answers[0].data, hickory_proto::rr::RData::SOA(x) if x.serial == serial),
            "the apex SOA serves the new serial"
        );
    }

    #[test]
    fn watchers_hear_of_a_death_at_once_and_of_a_removed_pool() {
        let mut c = catalog();
        let now = Instant::now();
        let mut w = c.watch("www.one.example.", now).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(w.borrow_and_update().0, vec![ip("127.0.0.1"), ip("127.0.0.2")]);
        c.ring_dead(vec![ip("127.0.0.1")], now);
        assert!(w.has_changed().unwrap());
        assert_eq!(w.borrow_and_update().0, vec![ip("127.0.0.2")]);
        let config =
            Config::from_toml("[[pool]]\nname = \"api.one.example.\"\nmembers = [ { id = \"d\", address = \"127.0.0.4\" } ]\n").unwrap();
        c.reconfigure(&config.pool, Now::read()).unwrap();
        assert!(w.has_changed().is_err(), "the pool is gone: its watchers see the channel close");
    }
}
