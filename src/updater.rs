//! The updater: owns the pools and the zones, turns member changes into new
//! answers through each pool's policy, swaps the snapshot the DNS path
//! reads, bumps serials, tells secondaries (NOTIFY) and keeps the zone files
//! true (coalesced atomic rewrites that keep the operator's text).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name, RecordType};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::PolicyName;
use crate::config::{Config, PoolConfig};
use crate::dns::fast;
use crate::dns::snapshot::{PoolAnswer, Preferred, Snapshot, ZoneView, zone_records};
use crate::metrics::Counters;
use crate::pool::{AdminState, Decision, MemberState, PoolState};
use crate::report::{Report, ReportError};
use crate::ring::registry::Registry;
use crate::zone::{MemberNote, ZoneFile, render_block, text, writer};

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpdateError {
    #[error("no pool named {0}")]
    NoPool(String),
    #[error("pool {pool} has no member {id}")]
    NoMember { pool: String, id: String },
    #[error("no zone named {0}")]
    NoZone(String),
    #[error("pool {pool} already has a member {id}")]
    MemberExists { pool: String, id: String },
    #[error("pool {0} cannot lose its last member")]
    LastMember(String),
    #[error("{0}")]
    Invalid(String),
    #[error("ring: {0}")]
    Ring(#[from] crate::ring::table::TableError),
    #[error("{0}")]
    Setup(String),
}

/// A pool's live servers in order, its policy, and a receiver that
/// changes at every publish.
pub type Watched = (Vec<IpAddr>, PolicyName, watch::Receiver<u64>);

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
    /// A pool's live servers in order and its policy, with a receiver that
    /// changes whenever a new snapshot is published.
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

/// Operator changes to a pool while it serves.
#[derive(Debug, Clone)]
pub enum PoolChange {
    Policy(PolicyName),
    /// A formula for the formula policy.
    Formula(String),
    Pause(bool),
    AddMember {
        id: String,
        address: IpAddr,
        weight: u32,
    },
    RemoveMember {
        id: String,
    },
}

#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub id: String,
    pub address: IpAddr,
    pub state: String,
    pub admin: AdminState,
    pub weight: u32,
    pub load: Option<f64>,
    pub in_answer: bool,
    pub metrics: Vec<(String, f64)>,
    pub score: Option<f64>,
    /// 1-based place in the policy's order; 0 when out of service.
    pub rank: u32,
    pub report_age: Option<Duration>,
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
}

struct ZoneState {
    /// The last good version read from (or written to) disk.
    file: ZoneFile,
    /// What we believe the file on disk holds; anything else is an operator edit.
    disk_text: String,
    serial: u32,
    answers: HashMap<LowerName, Arc<PoolAnswer>>,
    /// Pool indexes whose names live in this zone.
    pools: Vec<usize>,
    dirty: bool,
    last_write: Option<Instant>,
    /// The file on disk does not parse; writes wait until the operator fixes it.
    broken: bool,
    /// Managed blocks of pools that were removed, to take out at the next write.
    drop_blocks: Vec<String>,
    /// A write of the file is under way.
    writing: bool,
    /// The text being written, so its arrival on disk is not taken for an edit.
    writing_text: Option<String>,
}

/// The outcome of a zone file write done off the updater's task.
struct WriteDone {
    origin: LowerName,
    /// What was on disk when the write was prepared.
    based_on: String,
    dropped: Vec<String>,
    serial: u32,
    file: ZoneFile,
    result: std::io::Result<()>,
}

pub struct Updater {
    pools: Vec<PoolState>,
    pool_zone: Vec<LowerName>,
    zones: BTreeMap<LowerName, ZoneState>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    notify: mpsc::Sender<(Name, u32)>,
    write_interval: Duration,
    /// The pre-encoded static responses, and whether some zone's data
    /// changed since they were built.
    stable: Arc<HashMap<Box<[u8]>, fast::Entry>>,
    stable_stale: bool,
    counters: Arc<Counters>,
    written: mpsc::Sender<WriteDone>,
    written_rx: Option<mpsc::Receiver<WriteDone>>,
    ring: Registry,
    ring_file: Option<PathBuf>,
    /// Bumped at every publish, for watchers.
    published: watch::Sender<u64>,
}

/// The zone a pool's name lives in, if it may be a pool there.
fn zone_for(zones: &BTreeMap<LowerName, ZoneState>, name: &Name) -> Result<LowerName, String> {
    let lower = LowerName::from(name);
    let Some(origin) = zones.keys().filter(|o| o.zone_of(&lower)).max_by_key(|o| o.num_labels()).cloned() else {
        return Err(format!("pool {name}: no zone file in zones_dir holds this name"));
    };
    let zone = &zones[&origin];
    if zone.file.data.nodes.get(&lower).is_some_and(|n| n.get(RecordType::CNAME).is_some()) {
        return Err(format!("pool {name}: the zone file has a CNAME at this name"));
    }
    if lower == origin {
        return Err(format!("pool {name}: a pool cannot be the zone apex"));
    }
    if let Some(line) = zone.file.stray_addresses(name).first() {
        return Err(format!(
            "pool {name}: {}:{line}: address records for a virtual name belong in its managed block, which vnamed writes; remove them",
            zone.file.path.display()
        ));
    }
    Ok(origin)
}

/// Brings a new pool into its zone: the operator's notes and the last
/// answer come back from the zone file when they still make sense.
fn restore(zone: &mut ZoneState, mut pool: PoolState, now: Instant) -> PoolState {
    if let Some(block) = zone.file.block(&pool.name) {
        for (id, pairs) in &block.members {
            let Some(m) = pool.member_mut(id) else { continue };
            for (k, v) in pairs {
                match k.as_str() {
                    "admin" => m.admin = AdminState::parse(v).unwrap_or(m.admin),
                    "weight" => m.weight = v.parse().unwrap_or(m.weight),
                    _ => {}
                }
            }
        }
    }
    let previous = zone.file.addresses(&pool.name);
    let live: Vec<IpAddr> = pool.members.iter().filter(|m| m.eligible(now, pool.stale_after)).map(|m| m.address).collect();
    let restored = zone.file.block(&pool.name).is_some() && !previous.is_empty() && previous.iter().all(|a| live.contains(a));
    let decision = if restored {
        pool.last_known = previous.clone();
        Decision { addresses: previous, rotate: pool.policy == PolicyName::RoundRobin, servfail: false }
    } else {
        zone.dirty = true;
        pool.decide(now)
    };
    let answer = answer_for(&pool, decision);
    zone.answers.insert(LowerName::from(&pool.name), Arc::new(answer));
    pool
}

/// The answer a pool gives for a decision, counted with the pool's counters.
fn answer_for(pool: &PoolState, d: Decision) -> PoolAnswer {
    let mut a = PoolAnswer::new(pool.name.clone(), pool.ttl, d.addresses, pool.answers, d.rotate, d.servfail);
    a.counters = pool.counters.clone();
    a.preferred = preferred(pool, &a.addresses);
    a
}

/// The members behind an answer's addresses, in its order, with the port
/// each reports (`tcp_port`).
fn preferred(pool: &PoolState, addresses: &[IpAddr]) -> Arc<[Preferred]> {
    // An answer is mostly a few addresses: look each up. Round-robin
    // answers carry every member: index them first, or this is quadratic.
    let by_address: Option<HashMap<IpAddr, &crate::pool::MemberState>> =
        (addresses.len() > 8).then(|| pool.members.iter().rev().map(|m| (m.address, m)).collect());
    addresses
        .iter()
        .filter_map(|a| match &by_address {
            Some(index) => index.get(a).copied(),
            None => pool.members.iter().find(|m| m.address == *a),
        })
        .map(|m| Preferred {
            id: m.id.clone(),
            address: m.address,
            tcp_port: m.custom.get("tcp_port").filter(|p| **p >= 1.0 && **p <= 65535.0).map(|p| *p as u16),
        })
        .collect()
}

fn same(a: &PoolAnswer, d: &Decision) -> bool {
    a.addresses == d.addresses && a.rotate == d.rotate && a.servfail == d.servfail
}

/// Is `a` newer than `b` in serial-number arithmetic (RFC 1982)?
fn serial_gt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

impl Updater {
    /// Builds the updater from the configuration and the zone files,
    /// restoring each pool's last answer and member notes from its zone file.
    pub fn new(
        config: &Config,
        files: BTreeMap<LowerName, ZoneFile>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        notify: mpsc::Sender<(Name, u32)>,
        counters: Arc<Counters>,
        write_interval: Duration,
        now: Instant,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let (written, written_rx) = mpsc::channel(64);
        let mut zones: BTreeMap<LowerName, ZoneState> = files
            .into_iter()
            .map(|(origin, file)| {
                let state = ZoneState {
                    disk_text: file.text.clone(),
                    serial: file.serial,
                    file,
                    answers: HashMap::new(),
                    pools: Vec::new(),
                    dirty: false,
                    last_write: None,
                    broken: false,
                    drop_blocks: Vec::new(),
                    writing: false,
                    writing_text: None,
                };
                (origin, state)
            })
            .collect();
        let wall = SystemTime::now();
        let mut pools = Vec::new();
        let mut pool_zone = Vec::new();
        for c in &config.pool {
            let pool = PoolState::from_config(c, now, wall);
            let origin = match zone_for(&zones, &pool.name) {
                Ok(o) => o,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            let zone = zones.get_mut(&origin).expect("found above");
            let pool = restore(zone, pool, now);
            zone.pools.push(pools.len());
            pool_zone.push(origin);
            pools.push(pool);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut updater = Self {
            pools,
            pool_zone,
            zones,
            snapshot,
            notify,
            write_interval,
            stable: Arc::default(),
            stable_stale: true,
            counters,
            written,
            written_rx: Some(written_rx),
            ring: Registry::default(),
            ring_file: None,
            published: watch::channel(0).0,
        };
        for zone in updater.zones.values_mut() {
            if zone.dirty {
                zone.serial = zone.serial.wrapping_add(1);
            }
        }
        updater.publish();
        Ok(updater)
    }

    /// Swaps in a snapshot of every zone as it is now, with its
    /// pre-encoded responses: the static ones are rebuilt only when a zone's
    /// data changed, the virtual names' every time.
    fn publish(&mut self) {
        let mut snap = Snapshot::default();
        for (origin, z) in &self.zones {
            snap.zones.insert(origin.clone(), Arc::new(ZoneView::new(z.file.data.clone(), z.serial, z.answers.clone())));
        }
        for (pool, origin) in self.pools.iter().zip(&self.pool_zone) {
            let Some(answer) = self.zones.get(origin).and_then(|z| z.answers.get(&LowerName::from(&pool.name))) else { continue };
            let key = pool.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
            snap.preferred.insert(key, answer.preferred.clone());
        }
        if self.stable_stale {
            self.stable = Arc::new(fast::build_stable(&snap));
            self.stable_stale = false;
        }
        snap.fast.stable = self.stable.clone();
        snap.fast.dynamic = fast::build_dynamic(&snap);
        self.snapshot.store(Arc::new(snap));
        self.published.send_modify(|v| *v += 1);
    }

    fn find_pool(&self, name: &str) -> Result<usize, UpdateError> {
        let lower = Name::from_ascii(name)
            .map(|mut n| {
                n.set_fqdn(true);
                LowerName::from(n)
            })
            .map_err(|_| UpdateError::NoPool(name.to_owned()))?;
        self.pools.iter().position(|p| LowerName::from(&p.name) == lower).ok_or_else(|| UpdateError::NoPool(name.to_owned()))
    }

    /// Re-applies a pool's policy; returns whether its answer changed.
    fn redecide(&mut self, i: usize, now: Instant) -> bool {
        if self.pools[i].paused {
            return false;
        }
        let decision = self.pools[i].decide(now);
        let pool = &self.pools[i];
        let zone = self.zones.get_mut(&self.pool_zone[i]).expect("pool zone exists");
        let lower = LowerName::from(&pool.name);
        if zone.answers.get(&lower).is_some_and(|a| same(a, &decision)) {
            return false;
        }
        info!(pool = %pool.name, answer = ?decision.addresses, servfail = decision.servfail, "answer changed");
        self.counters.answer_changes.fetch_add(1, Ordering::Relaxed);
        let answer = answer_for(pool, decision);
        zone.answers.insert(lower, Arc::new(answer));
        zone.serial = zone.serial.wrapping_add(1);
        zone.dirty = true;
        true
    }

    /// Publishes and tells secondaries about the zones whose serial moved.
    fn changed(&mut self, zones: &[LowerName]) {
        if zones.is_empty() {
            return;
        }
        self.publish();
        for origin in zones {
            let z = &self.zones[origin];
            if self.notify.try_send((z.file.data.origin.clone(), z.serial)).is_err() {
                warn!(zone = %z.file.data.origin, "notify queue full; secondaries will catch up on refresh");
            }
        }
    }

    pub fn handle(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::SetMember { pool, id, admin, weight, reply } => {
                let result = self.set_member(&pool, &id, admin, weight, now);
                let _ = reply.send(result);
            }
            Command::Reports { reports, received, reply } => {
                let _ = reply.send(self.reports(reports, received, now));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status(now));
            }
            Command::ShowZone { zone, reply } => {
                let _ = reply.send(self.show_zone(&zone));
            }
            Command::Pool { pool, change, reply } => {
                let _ = reply.send(self.change_pool(&pool, change, now));
            }
            Command::Ring { op, reply } => {
                let _ = reply.send(self.ring_op(op, now));
            }
            Command::Reconfigure { pools, reply } => {
                let _ = reply.send(self.reconfigure(&pools, now));
            }
            Command::Resolve { pool, reply } => {
                let _ = reply.send(self.find_pool(&pool).map(|i| self.pools[i].order(now)));
            }
            Command::Watch { pool, reply } => {
                let _ =
                    reply.send(self.find_pool(&pool).map(|i| (self.pools[i].order(now), self.pools[i].policy, self.published.subscribe())));
            }
        }
    }

    fn reports(&mut self, reports: Vec<Report>, received: Instant, now: Instant) -> Result<usize, ReportError> {
        // Resolve every report first, so nothing is stored from a batch that is refused.
        let mut targets = Vec::with_capacity(reports.len());
        let mut last: Option<(&str, usize)> = None;
        for (index, r) in reports.iter().enumerate() {
            // Batches mostly name one pool: look it up once.
            let i = match last {
                Some((name, i)) if name == r.pool => i,
                _ => {
                    let i = self.find_pool(&r.pool).map_err(|_| ReportError::NoPool { index, pool: r.pool.clone() })?;
                    last = Some((&r.pool, i));
                    i
                }
            };
            let m = self.pools[i].position(&r.member).ok_or_else(|| ReportError::NoMember {
                index,
                pool: r.pool.clone(),
                member: r.member.clone(),
            })?;
            if !r.addresses.is_empty() && self.pools[i].members[m].farm.is_none() {
                return Err(ReportError::NotFarm { index, pool: r.pool.clone(), member: r.member.clone() });
            }
            targets.push((i, m));
        }
        let n = reports.len();
        let mut touched = Vec::new();
        // A member's reported port is served by SRP even when the DNS
        // answer stays the same.
        let mut ports_moved = Vec::new();
        for (r, (i, m)) in reports.into_iter().zip(targets) {
            let smoothing = self.pools[i].smoothing;
            let member = &mut self.pools[i].members[m];
            let port = member.custom.get("tcp_port").copied();
            member.absorb(r.up, r.metrics, r.custom, smoothing, now.checked_sub(r.age).unwrap_or(now));
            if member.custom.get("tcp_port").copied() != port && !ports_moved.contains(&i) {
                ports_moved.push(i);
            }
            if let Some(first) = r.addresses.first() {
                member.address = *first;
            }
            if !touched.contains(&i) {
                touched.push(i);
            }
        }
        let mut zones = Vec::new();
        let mut republish = false;
        for i in touched {
            if self.redecide(i, now) {
                if !zones.contains(&self.pool_zone[i]) {
                    zones.push(self.pool_zone[i].clone());
                }
            } else if ports_moved.contains(&i) {
                // Same answer, a member's port moved: only its members change.
                let pool = &self.pools[i];
                let zone = self.zones.get_mut(&self.pool_zone[i]).expect("pool zone exists");
                if let Some(a) = zone.answers.get_mut(&LowerName::from(&pool.name)) {
                    let mut fresh = (**a).clone();
                    fresh.preferred = preferred(pool, &fresh.addresses);
                    *a = Arc::new(fresh);
                    republish = true;
                }
            }
        }
        if !zones.is_empty() {
            self.changed(&zones);
            self.counters.report_to_answer.observe(received.elapsed());
        } else if republish {
            self.publish();
        }
        Ok(n)
    }

    /// Takes the ring registry (loaded from `file`) and applies its deaths.
    pub fn with_ring(mut self, ring: Registry, file: Option<PathBuf>, now: Instant) -> Self {
        self.ring = ring;
        self.ring_file = file;
        self.apply_ring(now);
        self
    }

    /// Marks every pool member whose host the ring says is dead; returns
    /// the zones whose answers changed.
    fn apply_ring(&mut self, now: Instant) {
        let dead: Vec<IpAddr> = self.ring.dead.iter().map(|a| a.ip()).collect();
        let mut zones = Vec::new();
        for i in 0..self.pools.len() {
            let mut touched = false;
            for m in &mut self.pools[i].members {
                let is_dead = dead.contains(&m.address);
                touched |= m.ring_dead != is_dead;
                m.ring_dead = is_dead;
            }
            if touched && self.redecide(i, now) {
                zones.push(self.pool_zone[i].clone());
            }
        }
        zones.dedup();
        self.changed(&zones);
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
            && let Err(e) = writer::write_atomic(file, &self.ring.to_text())
        {
            error!(file = %file.display(), error = %e, "cannot save the ring table");
        }
        self.apply_ring(now);
        Ok(reply)
    }

    /// Applies the pools of an edited configuration: new pools join, removed
    /// ones leave (with their managed blocks), and kept ones take the new
    /// policy and members while keeping what was reported about them.
    fn reconfigure(&mut self, configs: &[PoolConfig], now: Instant) -> Result<(), Vec<String>> {
        let wall = SystemTime::now();
        let mut problems = Vec::new();
        let mut planned = Vec::new();
        for c in configs {
            let pool = PoolState::from_config(c, now, wall);
            match zone_for(&self.zones, &pool.name) {
                Ok(origin) => planned.push((pool, origin)),
                Err(p) => problems.push(p),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let named = |p: &PoolState, q: &PoolState| LowerName::from(&p.name) == LowerName::from(&q.name);
        let mut touched: Vec<LowerName> = Vec::new();
        // Pools that are gone.
        let keep: Vec<bool> = self.pools.iter().map(|p| planned.iter().any(|(q, _)| named(p, q))).collect();
        for (i, kept) in keep.iter().enumerate() {
            if !kept {
                let name = self.pools[i].name.clone();
                let zone = self.zones.get_mut(&self.pool_zone[i]).expect("pool zone exists");
                let lower = LowerName::from(&name);
                zone.answers.remove(&lower);
                // The file's copy of its answer goes too, now rather than at the next write.
                let data = Arc::make_mut(&mut zone.file.data);
                if let Some(node) = data.nodes.get_mut(&lower) {
                    node.rrsets.retain(|s| !matches!(s.rtype, RecordType::A | RecordType::AAAA));
                    if node.rrsets.is_empty() && !data.nodes.keys().any(|n| n != &lower && lower.zone_of(n)) {
                        data.nodes.remove(&lower);
                    }
                }
                self.stable_stale = true;
                zone.drop_blocks.push(name.to_string());
                zone.serial = zone.serial.wrapping_add(1);
                zone.dirty = true;
                touched.push(self.pool_zone[i].clone());
                info!(pool = %name, "pool removed by configuration edit");
            }
        }
        let mut k = keep.iter();
        self.pools.retain(|_| *k.next().expect("one flag per pool"));
        let mut k = keep.iter();
        self.pool_zone.retain(|_| *k.next().expect("one flag per pool"));
        // Pools that stay or come.
        for (fresh, origin) in planned {
            match self.pools.iter().position(|p| named(p, &fresh)) {
                Some(i) => {
                    let old = &mut self.pools[i];
                    let reshaped = old.ttl != fresh.ttl || old.answers != fresh.answers;
                    let members = fresh
                        .members
                        .iter()
                        .map(|new| match old.members.iter().find(|m| m.id == new.id) {
                            Some(known) => MemberState {
                                // A farm entity's address comes from its farm's reports.
                                address: if new.address.is_unspecified() { known.address } else { new.address },
                                ..known.clone()
                            }
                            .with_schedule_of(new),
                            None => new.clone(),
                        })
                        .collect();
                    let mut fresh = fresh;
                    fresh.members = members;
                    fresh.last_known = std::mem::take(&mut old.last_known);
                    fresh.paused = old.paused;
                    fresh.counters = old.counters.clone();
                    *old = fresh.reindexed();
                    let zone = self.zones.get_mut(&origin).expect("zone exists");
                    if reshaped {
                        zone.answers.remove(&LowerName::from(&self.pools[i].name));
                    }
                    zone.dirty = true;
                }
                None => {
                    info!(pool = %fresh.name, "pool added by configuration edit");
                    let zone = self.zones.get_mut(&origin).expect("zone exists");
                    let pool = restore(zone, fresh, now);
                    zone.serial = zone.serial.wrapping_add(1);
                    self.pools.push(pool);
                    self.pool_zone.push(origin.clone());
                }
            }
            touched.push(origin);
        }
        for z in self.zones.values_mut() {
            z.pools.clear();
        }
        for (i, origin) in self.pool_zone.iter().enumerate() {
            self.zones.get_mut(origin).expect("zone exists").pools.push(i);
        }
        for i in 0..self.pools.len() {
            let origin = self.pool_zone[i].clone();
            let lower = LowerName::from(&self.pools[i].name);
            if self.zones[&origin].answers.contains_key(&lower) {
                self.redecide(i, now);
                continue;
            }
            // Reshaped (new TTL or answer size): answer anew, even while paused.
            let p = &mut self.pools[i];
            let paused = std::mem::replace(&mut p.paused, false);
            let decision = p.decide(now);
            p.paused = paused;
            let answer = answer_for(p, decision);
            let zone = self.zones.get_mut(&origin).expect("zone exists");
            zone.answers.insert(lower, Arc::new(answer));
            zone.serial = zone.serial.wrapping_add(1);
        }
        touched.sort();
        touched.dedup();
        info!(pools = self.pools.len(), "configuration edit applied");
        self.changed(&touched);
        self.apply_ring(now);
        Ok(())
    }

    fn change_pool(&mut self, pool: &str, change: PoolChange, now: Instant) -> Result<Vec<IpAddr>, UpdateError> {
        let i = self.find_pool(pool)?;
        let p = &mut self.pools[i];
        match change {
            PoolChange::Policy(PolicyName::Formula) if p.formula.is_none() => {
                return Err(UpdateError::Invalid(format!("pool {pool} has no formula; give one first")));
            }
            PoolChange::Policy(policy) => p.policy = policy,
            PoolChange::Formula(text) => {
                let f = crate::pool::formula::Formula::parse(&text).map_err(UpdateError::Invalid)?;
                p.formula = Some(Arc::new(f));
            }
            PoolChange::Pause(paused) => p.paused = paused,
            PoolChange::AddMember { id, address, weight } => {
                if p.members.iter().any(|m| m.id == id) {
                    return Err(UpdateError::MemberExists { pool: pool.to_owned(), id });
                }
                let config =
                    crate::config::MemberConfig { id, address: Some(address), farm: None, weight, until: None, maintenance: Vec::new() };
                p.members.push(MemberState::from_config(&config, now, SystemTime::now()));
                p.reindex();
            }
            PoolChange::RemoveMember { id } => {
                let at = p
                    .members
                    .iter()
                    .position(|m| m.id == id)
                    .ok_or_else(|| UpdateError::NoMember { pool: pool.to_owned(), id: id.clone() })?;
                if p.members.len() == 1 {
                    return Err(UpdateError::LastMember(pool.to_owned()));
                }
                let gone = p.members.remove(at);
                p.reindex();
                p.last_known.retain(|a| *a != gone.address);
            }
        }
        info!(pool, policy = ?p.policy, paused = p.paused, members = p.members.len(), "pool changed by operator");
        let origin = self.pool_zone[i].clone();
        self.zones.get_mut(&origin).expect("pool zone exists").dirty = true;
        if self.redecide(i, now) {
            self.changed(&[origin]);
        }
        let zone = &self.zones[&self.pool_zone[i]];
        Ok(zone.answers[&LowerName::from(&self.pools[i].name)].addresses.clone())
    }

    fn set_member(
        &mut self,
        pool: &str,
        id: &str,
        admin: Option<AdminState>,
        weight: Option<u32>,
        now: Instant,
    ) -> Result<(), UpdateError> {
        let i = self.find_pool(pool)?;
        let m = self.pools[i].member_mut(id).ok_or_else(|| UpdateError::NoMember { pool: pool.to_owned(), id: id.to_owned() })?;
        if let Some(a) = admin {
            m.admin = a;
        }
        if let Some(w) = weight {
            m.weight = w;
        }
        info!(pool, member = id, admin = ?admin, weight = ?weight, "member set by operator");
        let origin = self.pool_zone[i].clone();
        // The notes in the file change even when the answer does not.
        self.zones.get_mut(&origin).expect("pool zone exists").dirty = true;
        if self.redecide(i, now) {
            self.changed(&[origin]);
        }
        Ok(())
    }

    /// Re-decides pools whose members report, so stale reports take effect.
    pub fn tick(&mut self, now: Instant) {
        let mut zones = Vec::new();
        for i in 0..self.pools.len() {
            let timed = self.pools[i].members.iter().any(|m| m.reported_at.is_some() || m.until.is_some() || !m.maintenance.is_empty());
            if timed && self.redecide(i, now) {
                zones.push(self.pool_zone[i].clone());
            }
        }
        self.changed(&zones);
    }

    pub fn status(&self, now: Instant) -> Vec<PoolStatus> {
        self.pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let zone = &self.zones[&self.pool_zone[i]];
                let answer = &zone.answers[&LowerName::from(&p.name)];
                let shown: Vec<IpAddr> =
                    if answer.rotate { answer.addresses.clone() } else { answer.addresses.iter().take(p.answers).cloned().collect() };
                let order = p.order(now);
                PoolStatus {
                    name: p.name.to_string(),
                    policy: format!("{:?}", p.policy),
                    zone: zone.file.data.origin.to_string(),
                    serial: zone.serial,
                    servfail: answer.servfail,
                    members: p
                        .members
                        .iter()
                        .map(|m| MemberStatus {
                            id: m.id.clone(),
                            address: m.address,
                            state: m.state(now, p.stale_after).to_owned(),
                            admin: m.admin,
                            weight: m.weight,
                            load: m.metrics.load,
                            in_answer: shown.contains(&m.address),
                            metrics: m
                                .metrics
                                .pairs()
                                .map(|(k, v)| (k.to_owned(), v))
                                .chain(m.custom.iter().map(|(k, v)| (k.clone(), *v)))
                                .collect(),
                            score: crate::pool::policy::score(p.policy, p.formula.as_deref(), m),
                            rank: if m.eligible(now, p.stale_after) {
                                order.iter().position(|a| *a == m.address).map(|i| i as u32 + 1).unwrap_or(0)
                            } else {
                                0
                            },
                            report_age: m.reported_at.map(|t| now.saturating_duration_since(t)),
                        })
                        .collect(),
                    answer: shown,
                }
            })
            .collect()
    }

    fn show_zone(&self, zone: &str) -> Result<String, UpdateError> {
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

    /// When the next coalesced write is due, if any.
    pub fn next_write(&self) -> Option<Instant> {
        self.zones
            .values()
            .filter(|z| z.dirty && !z.broken && !z.writing)
            .map(|z| z.last_write.map(|t| t + self.write_interval).unwrap_or_else(Instant::now))
            .min()
    }

    /// Writes every dirty zone whose interval has passed (all of them when `force`).
    pub fn flush(&mut self, now: Instant, force: bool) {
        let due: Vec<LowerName> = self
            .zones
            .iter()
            .filter(|(_, z)| z.dirty && !z.broken && !z.writing && (force || z.last_write.is_none_or(|t| now >= t + self.write_interval)))
            .map(|(o, _)| o.clone())
            .collect();
        for origin in due {
            let path = self.zones[&origin].file.path.clone();
            // An operator edit we have not seen yet wins over our write.
            if let Ok(disk) = std::fs::read_to_string(&path)
                && disk != self.zones[&origin].disk_text
            {
                self.reload(&path);
                if self.zones.get(&origin).is_none_or(|z| z.broken || !z.dirty) {
                    continue;
                }
            }
            self.write(&origin, now, force);
        }
    }

    fn render(&self, origin: &LowerName) -> String {
        let z = &self.zones[origin];
        let mut blocks = BTreeMap::new();
        for &i in &z.pools {
            let p = &self.pools[i];
            let answer = &z.answers[&LowerName::from(&p.name)];
            let notes: Vec<MemberNote> = p
                .members
                .iter()
                .map(|m| MemberNote {
                    id: m.id.clone(),
                    pairs: vec![("admin".into(), m.admin.as_str().into()), ("weight".into(), m.weight.to_string())],
                })
                .collect();
            let addresses: &[IpAddr] = if answer.servfail { &[] } else { &answer.addresses };
            blocks.insert(p.name.to_string(), render_block(&p.name, p.ttl, addresses, &notes));
        }
        for gone in &z.drop_blocks {
            blocks.entry(gone.clone()).or_default();
        }
        text::rewrite(&z.file.text, &z.file.blocks, z.file.serial_span.clone(), z.serial, &blocks)
    }

    /// Writes a zone's file: rendered and validated here, written (with
    /// its fsyncs) on a blocking thread so answers keep moving meanwhile,
    /// unless `wait` (at shutdown).
    fn write(&mut self, origin: &LowerName, now: Instant, wait: bool) {
        let text = self.render(origin);
        let z = self.zones.get_mut(origin).expect("zone exists");
        let path = z.file.path.clone();
        let parsed = match ZoneFile::parse(&path, z.file.data.origin.clone(), text) {
            Ok(f) => f,
            Err(e) => {
                // Never put a file on disk that we would refuse to load.
                error!(error = %e, "refusing to write a zone file that does not validate");
                z.dirty = false;
                return;
            }
        };
        z.dirty = false;
        z.writing = true;
        z.writing_text = Some(parsed.text.clone());
        z.last_write = Some(now);
        let done = WriteDone {
            origin: origin.clone(),
            based_on: z.disk_text.clone(),
            dropped: std::mem::take(&mut z.drop_blocks),
            serial: z.serial,
            result: Ok(()),
            file: parsed,
        };
        if wait || tokio::runtime::Handle::try_current().is_err() {
            let mut done = done;
            done.result = writer::write_atomic(&path, &done.file.text);
            self.finish_write(done);
            return;
        }
        let tx = self.written.clone();
        tokio::task::spawn_blocking(move || {
            let mut done = done;
            done.result = writer::write_atomic(&path, &done.file.text);
            let _ = tx.blocking_send(done);
        });
    }

    /// Takes the outcome of a zone file write.
    fn finish_write(&mut self, done: WriteDone) {
        let Some(z) = self.zones.get_mut(&done.origin) else { return };
        z.writing = false;
        z.writing_text = None;
        let path = done.file.path.clone();
        if let Err(e) = done.result {
            error!(file = %path.display(), error = %e, "cannot write zone file; will retry");
            z.dirty = true;
            z.drop_blocks.extend(done.dropped);
            return;
        }
        info!(file = %path.display(), serial = done.serial, "zone file written");
        self.counters.zone_writes.fetch_add(1, Ordering::Relaxed);
        if z.disk_text != done.based_on {
            // The operator's edit was read while we wrote: write again from it.
            z.dirty = true;
            return;
        }
        let mut parsed = done.file;
        // Our own write changes only pool records, which the answers
        // override anyway: keep serving (and the pre-encoded table built
        // from) the same data unless it lacked a pool's name.
        if z.answers.keys().all(|p| z.file.data.nodes.contains_key(p)) {
            parsed.data = z.file.data.clone();
        } else {
            self.stable_stale = true;
        }
        z.disk_text = parsed.text.clone();
        z.file = parsed;
    }

    /// An operator changed a zone file: serve the new version if it is
    /// valid, otherwise keep the last good one and say why.
    pub fn reload(&mut self, path: &Path) {
        let Some(origin) = crate::zone::origin_for(path).map(LowerName::from) else { return };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                if self.zones.contains_key(&origin) {
                    warn!(file = %path.display(), error = %e, "zone file unreadable; still serving the last good version");
                }
                return;
            }
        };
        if self.zones.get(&origin).is_some_and(|z| z.disk_text == text || z.writing_text.as_deref() == Some(text.as_str())) {
            return;
        }
        let name = Name::from(&origin);
        let file = match ZoneFile::parse(path, name, text.clone()) {
            Ok(f) => f,
            Err(e) => {
                error!(error = %e, "zone edit refused; still serving the last good version");
                self.counters.zone_edits_refused.fetch_add(1, Ordering::Relaxed);
                if let Some(z) = self.zones.get_mut(&origin) {
                    z.broken = true;
                    z.disk_text = text;
                }
                return;
            }
        };
        let stray = self
            .zones
            .get(&origin)
            .and_then(|z| z.pools.iter().find_map(|&i| file.stray_addresses(&self.pools[i].name).first().map(|l| (i, *l))));
        if let Some((i, line)) = stray {
            error!(
                file = %path.display(),
                line,
                pool = %self.pools[i].name,
                "zone edit refused: address records for a virtual name belong in its managed block; still serving the last good version"
            );
            self.counters.zone_edits_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(z) = self.zones.get_mut(&origin) {
                z.broken = true;
                z.disk_text = text;
            }
            return;
        }
        match self.zones.get_mut(&origin) {
            Some(z) => {
                let served = z.serial;
                z.serial = if serial_gt(file.serial, served) { file.serial } else { served.wrapping_add(1) };
                // Write back when the serial had to move or the managed blocks differ from what we answer.
                let blocks_differ = z.pools.iter().any(|&i| {
                    let p = &self.pools[i];
                    let a = &z.answers[&LowerName::from(&p.name)];
                    let want: &[IpAddr] = if a.servfail { &[] } else { &a.addresses };
                    file.addresses(&p.name) != want || file.block(&p.name).is_none()
                });
                z.dirty |= z.serial != file.serial || blocks_differ;
                z.broken = false;
                z.disk_text = text;
                z.file = file;
                self.stable_stale = true;
                info!(file = %path.display(), serial = z.serial, "zone file reloaded");
            }
            None => {
                info!(file = %path.display(), serial = file.serial, "new zone file served");
                self.stable_stale = true;
                self.zones.insert(
                    origin.clone(),
                    ZoneState {
                        disk_text: text,
                        serial: file.serial,
                        file,
                        answers: HashMap::new(),
                        pools: Vec::new(),
                        dirty: false,
                        last_write: None,
                        broken: false,
                        drop_blocks: Vec::new(),
                        writing: false,
                        writing_text: None,
                    },
                );
            }
        }
        self.changed(&[origin]);
    }

    /// Runs the updater until shutdown, then writes what is pending.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut edits: mpsc::Receiver<PathBuf>, shutdown: CancellationToken) {
        let mut written = self.written_rx.take().expect("run once");
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.next_write();
            let write_due = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(cmd) = commands.recv() => self.handle(cmd, Instant::now()),
                Some(path) = edits.recv() => self.reload(&path),
                Some(done) = written.recv() => self.finish_write(done),
                _ = write_due => self.flush(Instant::now(), false),
                _ = tick.tick() => self.tick(Instant::now()),
                _ = shutdown.cancelled() => break,
            }
        }
        // Writes under way finish first, then whatever is still pending.
        while self.zones.values().any(|z| z.writing) {
            match written.recv().await {
                Some(done) => self.finish_write(done),
                None => break,
            }
        }
        self.flush(Instant::now(), true);
        info!("updater stopped; zone files are current");
    }
}
