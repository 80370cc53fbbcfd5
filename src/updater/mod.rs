//! The updater: a pump around the catalog. Each turn of its loop waits
//! for one event (a command, a zone file edit or job done, a durable
//! write, the group's news, or the catalog's next timeout), reads the
//! clock once, hands the event to the catalog and its outputs to their
//! drivers: the state store's writer, the zone file thread, NOTIFY, the
//! snapshot DNS reads, and the repliers. It holds no decision of its own.

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
use crate::catalog::{GroupInput, Input, Output, Save};
use crate::clock::Now;
use crate::cluster::reconcile::{Outcome, Request};
use crate::cluster::{ClusterError, Event};
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
    /// In a group: the etcd driver's queue, and what it brings back.
    group: Option<Group>,
}

/// The updater's ends of the etcd driver's channels.
pub struct Group {
    pub requests: mpsc::Sender<Request>,
    pub events: Option<mpsc::Receiver<Event>>,
    pub outcomes: Option<mpsc::Receiver<Outcome>>,
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
    /// The largest zone file read, in bytes.
    pub zone_file_limit: u64,
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
        let (io, io_results) = ZoneIo::start(parts.zone_file_limit);
        let (saved_tx, saved) = mpsc::channel(ACKED_QUEUE + 16);
        let writer = Writer::start(parts.store, saved_tx).map_err(|e| vec![format!("cannot start the state writer: {e}")])?;
        let mut u = Self { catalog, io, io_results, writer, saved, notify: parts.notify, snapshot: parts.snapshot, group: None };
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
        self.catalog = self.catalog.with_board(boards, crate::clock::instant());
        self
    }

    /// Shares this authority's changes with a group of authorities
    /// through the etcd driver at the other ends of `group` (`name`: this
    /// authority's in the group; `fingerprint`: its pools').
    pub fn with_group(mut self, group: Group, name: String, fingerprint: String, status: Arc<crate::cluster::ClusterStatus>) -> Self {
        self.catalog.join_group(name, fingerprint, status);
        self.group = Some(group);
        self
    }

    /// One event in: the clock read once, the catalog told, its outputs out.
    fn turn(&mut self, input: Input) {
        let now = Now::read();
        self.catalog.handle(now, input);
        self.pump(now);
    }

    /// Hands every output of the catalog to its driver; what a driver
    /// refuses (a full queue) goes back to the catalog.
    fn pump(&mut self, now: Now) {
        loop {
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
                    // Full, or stopping (the NOTIFY task is gone): secondaries catch up at their refresh.
                    Output::Notify(zone, serial) => match self.notify.try_send((zone.clone(), serial)) {
                        Err(mpsc::error::TrySendError::Full(_)) => warn!(%zone, "notify queue full; secondaries will catch up on refresh"),
                        Err(mpsc::error::TrySendError::Closed(_)) => debug!(%zone, serial, "no NOTIFY sent: stopping"),
                        Ok(()) => {}
                    },
                    Output::Publish(snapshot) => self.snapshot.store(snapshot),
                    Output::Reply(reply) => reply.send(),
                    Output::Cluster(request) => {
                        let Some(g) = self.group.as_ref() else { continue };
                        if let Err(e) = g.requests.try_send(request) {
                            let request = e.into_inner();
                            let why = ClusterError::Unavailable("the etcd driver is far behind".into());
                            back.extend(request.failed(why).map(|o| Input::Group(GroupInput::Outcome(o))));
                        }
                    }
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
        // The group's news is taken here; its request queue stays with the pump.
        let (mut events, mut outcomes) =
            (self.group.as_mut().and_then(|g| g.events.take()), self.group.as_mut().and_then(|g| g.outcomes.take()));
        loop {
            let timeout = self.catalog.poll_timeout();
            let due = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(cmd) = commands.recv() => self.turn(Input::Command(cmd)),
                Some(path) = edits.recv() => self.turn(Input::Edited(path)),
                Some(done) = self.io_results.recv() => self.turn(Input::Io(done)),
                Some(saved) = self.saved.recv() => self.turn(Input::Saved(saved)),
                Some(event) = recv(&mut events) => self.turn(Input::Group(GroupInput::Event(event))),
                Some(outcome) = recv(&mut outcomes) => self.turn(Input::Group(GroupInput::Outcome(outcome))),
                _ = due => {
                    let now = Now::read();
                    self.catalog.handle_timeout(now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Report;
    use std::net::IpAddr;

    const ZONE: &str = "$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n";
    const POOLS: &str = "[[pool]]\nname = \"www.example.\"\nstale_after = \"3s\"\n\
                         members = [ { id = \"a\", address = \"127.0.0.1\" }, { id = \"b\", address = \"127.0.0.2\" } ]\n";

    fn report(member: &str) -> Report {
        Report::health("www.example.", member, true)
    }

    fn answer(snapshot: &ArcSwap<Snapshot>) -> Vec<IpAddr> {
        let key = LowerName::from(Name::from_ascii("www.example.").unwrap());
        snapshot.load().zones.values().find_map(|z| z.pools.get(&key)).map(|a| a.shown()).unwrap_or_default()
    }

    /// The whole loop on a paused clock: a member whose reports stop leaves
    /// the answers once they are `stale_after` old (found by a tick, not by
    /// a report), on virtual time; the zone file follows, and the clean
    /// stop saves the state.
    #[tokio::test(start_paused = true)]
    async fn time_alone_moves_answers_and_zone_writes_on_a_virtual_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.zone");
        std::fs::write(&path, ZONE).unwrap();
        let name = Name::from_ascii("example.").unwrap();
        let files = [(LowerName::from(&name), ZoneFile::parse(&path, name, ZONE.into()).unwrap())].into_iter().collect();
        let (store, saved) = crate::state::Store::open(&dir.path().join("state")).unwrap();
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let (notify, _notified) = mpsc::channel(16);
        let parts = Parts {
            store: Arc::new(store),
            saved,
            ring: Registry::default(),
            snapshot: snapshot.clone(),
            notify,
            counters: Arc::default(),
            write_interval: Duration::from_secs(2),
            zone_file_limit: 1 << 30,
        };
        let config = Config::from_toml(POOLS).unwrap();
        let updater = Updater::start(&config, files, parts).await.unwrap();
        let (commands, rx) = mpsc::channel(16);
        let (_edits, edits) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let task = tokio::spawn(updater.run(rx, edits, stop.clone()));
        let send = |members: &'static [&'static str]| {
            let commands = commands.clone();
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let reports = members.iter().map(|m| report(m)).collect();
                commands.send(Command::Reports { reports, received: crate::clock::instant(), reply: tx }).await.unwrap();
                rx.await.unwrap().unwrap();
            }
        };
        send(&["a", "b"]).await;
        let both: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        assert_eq!(answer(&snapshot), both);
        let last_a = tokio::time::Instant::now();
        // Only b goes on reporting, every half second.
        let gone = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if answer(&snapshot) == both[1..] {
                break last_a.elapsed();
            }
            if last_a.elapsed().as_millis() % 500 < 50 {
                send(&["b"]).await;
            }
            assert!(last_a.elapsed() < Duration::from_secs(10), "a never went stale");
        };
        assert!(gone >= Duration::from_secs(3) && gone <= Duration::from_millis(3300), "a left {gone:?} after its last report");
        // The file follows, holding b only. It is written on a thread of its
        // own, in real time: waited for with blocking sleeps, which hold
        // the virtual clock still meanwhile.
        let mut tries = 0;
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("www.example. 5 IN A 127.0.0.2") && !text.contains("www.example. 5 IN A 127.0.0.1") {
                break;
            }
            tries += 1;
            assert!(tries < 500, "the zone file was not rewritten:\n{text}");
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10))).await.unwrap();
        }
        stop.cancel();
        task.await.unwrap();
        drop(commands);
        let (_, saved) = crate::state::Store::open(&dir.path().join("state")).unwrap();
        assert_eq!(saved.pools["www.example."].answer, both[1..], "the clean stop saved the answer served");
    }
}
