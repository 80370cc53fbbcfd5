//! The catalog driven as its drivers drive it, on a virtual clock, with
//! the store's writer, the zone file thread and NOTIFY played by the test.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name, RecordType};
use tokio::sync::oneshot;

use super::*;
use crate::config::Config;
use crate::state::Loaded;

const ZONE: &str = "$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n";

const POOLS: &str = r#"
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
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn origin(name: &str) -> LowerName {
    LowerName::from(Name::from_ascii(name).unwrap())
}

/// A catalog and what its drivers have been handed, on a virtual clock.
pub(super) struct Driven {
    pub c: Catalog,
    pub now: Now,
    /// Acknowledged writes not yet answered, and every write handed over.
    pub acked: Vec<(Ticket, Vec<Put>)>,
    pub background: Vec<Put>,
    pub jobs: Vec<Job>,
    pub notified: Vec<(Name, u32)>,
    pub published: Vec<Arc<Snapshot>>,
    /// Acknowledged writes are answered at once (a quick disk) unless held.
    pub hold: bool,
}

impl Driven {
    pub fn new(pools: &str) -> Self {
        let config = Config::from_toml(pools).unwrap();
        let files = ["one.example.", "two.example."]
            .into_iter()
            .map(|z| {
                let name = Name::from_ascii(z).unwrap();
                let file = ZoneFile::parse(std::path::Path::new(&format!("/nonexistent/{z}zone")), name.clone(), ZONE.into()).unwrap();
                (LowerName::from(&name), file)
            })
            .collect::<BTreeMap<_, _>>();
        let fresh = Loaded { fresh: true, ..Loaded::default() };
        let now = Now::read();
        let start = bind::Start {
            saved: &fresh,
            ring: Registry::default(),
            counters: Arc::default(),
            state_counters: Arc::default(),
            write_interval: Duration::from_secs(3600),
        };
        let c = Catalog::new(&config, files, start, now).unwrap();
        let mut d = Self {
            c,
            now,
            acked: Vec::new(),
            background: Vec::new(),
            jobs: Vec::new(),
            notified: Vec::new(),
            published: Vec::new(),
            hold: false,
        };
        d.drain();
        assert!(d.c.ready(), "the first publish follows the first reservation");
        d
    }

    /// Hands every output to its stand-in driver; a quick disk answers
    /// acknowledged writes at once.
    pub fn drain(&mut self) {
        loop {
            let mut saved = Vec::new();
            while let Some(o) = self.c.poll() {
                match o {
                    Output::Save(Save::Acked(t, puts)) => {
                        if self.hold {
                            self.acked.push((t, puts));
                        } else {
                            saved.push(Saved { ticket: t, result: Ok(()) });
                        }
                    }
                    Output::Save(Save::Background(puts)) => self.background.extend(puts),
                    Output::Job(j) => self.jobs.push(j),
                    Output::Notify(z, s) => self.notified.push((z, s)),
                    Output::Publish(s) => self.published.push(s),
                    Output::Reply(r) => r.send(),
                    Output::Cluster(r) => panic!("no group here: {r:?}"),
                }
            }
            if saved.is_empty() {
                return;
            }
            for s in saved {
                self.c.handle(self.now, Input::Saved(s));
            }
        }
    }

    /// Answers the held acknowledged writes with `result`.
    pub fn answer_saves(&mut self, result: Result<(), String>) {
        for (ticket, _) in std::mem::take(&mut self.acked) {
            self.c.handle(self.now, Input::Saved(Saved { ticket, result: result.clone() }));
        }
        self.drain();
    }

    pub fn input(&mut self, input: Input) {
        self.c.handle(self.now, input);
        self.drain();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.after(d);
        self.c.handle_timeout(self.now);
        self.drain();
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.last().cloned().expect("published")
    }

    pub fn set_member(&mut self, pool: &str, id: &str, admin: AdminState) -> oneshot::Receiver<Result<(), UpdateError>> {
        let (tx, rx) = oneshot::channel();
        self.input(Input::Command(Command::SetMember { pool: pool.into(), id: id.into(), admin: Some(admin), weight: None, reply: tx }));
        rx
    }

    /// Reports one member; the answer, unless it waits for a publish.
    pub fn report(&mut self, pool: &str, member: &str, up: bool) -> Option<Result<usize, ReportError>> {
        let (tx, mut rx) = oneshot::channel();
        let reports = vec![Report::health(pool, member, up)];
        self.input(Input::Command(Command::Reports { reports, received: self.now.instant, reply: tx }));
        rx.try_recv().ok()
    }

    pub fn answer(&self, pool: &str) -> Vec<IpAddr> {
        let key = LowerName::from(Name::from_ascii(pool).unwrap());
        let snap = self.snapshot();
        snap.zones.values().find_map(|z| z.pools.get(&key)).map(|a| a.addresses.clone()).unwrap_or_default()
    }
}

#[test]
fn an_operator_change_moves_the_answer_and_the_serial_and_tells_secondaries() {
    let mut d = Driven::new(POOLS);
    d.notified.clear();
    let serial = d.snapshot().zones[&origin("one.example.")].serial;
    let mut r = d.set_member("www.one.example.", "a", AdminState::Down);
    assert_eq!(r.try_recv().unwrap().unwrap(), ());
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.2")]);
    let new = d.snapshot().zones[&origin("one.example.")].serial;
    assert_eq!(new, serial.wrapping_add(1));
    assert_eq!(d.notified, vec![(Name::from_ascii("one.example.").unwrap(), new)]);
    let mut r = d.set_member("www.nope.example.", "a", AdminState::Down);
    assert!(matches!(r.try_recv().unwrap(), Err(UpdateError::Pool(TableError::NoPool(_)))));
    // The zone file must follow: a write job is planned when it is due
    // (at once for files not written yet).
    d.c.flush(d.now.instant, true);
    d.drain();
    assert!(d.jobs.iter().any(|j| matches!(j, Job::Write(_))));
    assert!(d.c.io_pending(), "until the write ends");
}

#[test]
fn a_pool_whose_zone_went_missing_is_refused_and_the_rest_keep_working() {
    let mut d = Driven::new(POOLS);
    // Inject an internal inconsistency: pool 0's zone disappears.
    d.c.zones.remove(&origin("one.example."));
    let mut r = d.set_member("www.one.example.", "a", AdminState::Down);
    assert!(matches!(r.try_recv().unwrap(), Err(UpdateError::Internal(_))));
    assert_eq!(d.report("www.one.example.", "b", false), Some(Ok(1)), "stored, answer left alone");
    d.advance(Duration::from_secs(1));
    assert_eq!(d.c.status(d.now.instant).len(), 1, "the broken pools are left out of the status");
    let mut r = d.set_member("www.two.example.", "c", AdminState::Down);
    r.try_recv().unwrap().unwrap();
    assert_eq!(d.c.resolve("www.two.example.", d.now.instant).unwrap(), Vec::<IpAddr>::new());
}

#[test]
fn a_publish_encodes_only_the_pools_that_changed() {
    let mut d = Driven::new(POOLS);
    let key = |name: &str| fast::name_key(&LowerName::from(Name::from_ascii(name).unwrap()), RecordType::A);
    let entry = |d: &Driven, name: &str| d.snapshot().fast.dynamic.get(&key(name)).cloned().expect("pre-encoded");
    let (www, api, two) = (entry(&d, "www.one.example."), entry(&d, "api.one.example."), entry(&d, "www.two.example."));
    let stable = d.snapshot().fast.stable.clone();
    d.set_member("www.one.example.", "a", AdminState::Down).try_recv().unwrap().unwrap();
    assert!(!Arc::ptr_eq(&www, &entry(&d, "www.one.example.")), "the changed pool is encoded anew");
    assert!(Arc::ptr_eq(&api, &entry(&d, "api.one.example.")), "its neighbour in the same zone is not");
    assert!(Arc::ptr_eq(&two, &entry(&d, "www.two.example.")), "nor a pool of another zone");
    assert!(Arc::ptr_eq(&stable, &d.snapshot().fast.stable), "static responses stay");
    let mut out = [0u8; 512];
    let mut q = hickory_proto::op::Message::new(1, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
    q.add_query(hickory_proto::op::Query::query(Name::from_ascii("one.example.").unwrap(), RecordType::SOA));
    let n = d.snapshot().fast.respond(&q.to_vec().unwrap(), &mut out).unwrap();
    let soa = hickory_proto::op::Message::from_vec(&out[..n]).unwrap();
    let serial = d.snapshot().zones[&origin("one.example.")].serial;
    assert!(matches!(&soa.answers[0].data, hickory_proto::rr::RData::SOA(x) if x.serial == serial), "the apex SOA serves the new serial");
}

#[test]
fn watchers_hear_of_a_death_at_once_and_of_a_removed_pool() {
    let mut d = Driven::new(POOLS);
    let now = d.now.instant;
    let mut w = d.c.watch("www.one.example.", now).unwrap();
    assert_eq!(w.borrow_and_update().0, vec![ip("127.0.0.1"), ip("127.0.0.2")]);
    d.c.ring_dead(vec![ip("127.0.0.1")], now);
    assert!(w.has_changed().unwrap());
    assert_eq!(w.borrow_and_update().0, vec![ip("127.0.0.2")]);
    let config =
        Config::from_toml("[[pool]]\nname = \"api.one.example.\"\nmembers = [ { id = \"d\", address = \"127.0.0.4\" } ]\n").unwrap();
    d.c.reconfigure(&config.pool, d.now).unwrap();
    assert!(w.has_changed().is_err(), "the pool is gone: its watchers see the channel close");
}

#[test]
fn a_change_is_answered_and_served_only_once_durable_and_reports_go_on_meanwhile() {
    let mut d = Driven::new(POOLS);
    d.hold = true;
    // www.one: priority, a answers and b stands by.
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.1")]);
    let mut r = d.set_member("www.one.example.", "b", AdminState::Down);
    assert_eq!(d.acked.len(), 1, "the overrides and state go to the disk first");
    assert!(r.try_recv().is_err(), "not answered before it is durable");
    // Meanwhile reports are taken and served at once: a goes down, b leads.
    assert_eq!(d.report("www.one.example.", "a", false), Some(Ok(1)));
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.2")], "the held change is not served yet");
    // A second change waits behind the first, so each builds on the last.
    let mut second = d.set_member("www.one.example.", "a", AdminState::Up);
    assert_eq!(d.acked.len(), 1, "one acknowledged change at a time");
    d.answer_saves(Ok(()));
    r.try_recv().unwrap().unwrap();
    let state = |d: &Driven, id: &str| {
        d.c.status(d.now.instant)[0].members.iter().find(|m| m.id == id).map(|m| (m.state.clone(), m.admin)).unwrap()
    };
    assert_eq!(state(&d, "b").1, AdminState::Down, "b is down by hand now");
    assert!(state(&d, "a").0.contains("down"), "a's report meanwhile is kept: {:?}", state(&d, "a"));
    assert_eq!(d.acked.len(), 1, "now the second is saved");
    let Put::Overrides(_, Some(o)) = &d.acked[0].1[1] else { panic!("{:?}", d.acked) };
    assert_eq!(o.lines().len(), 2, "its overrides include the first change: {:?}", o.lines());
    assert!(second.try_recv().is_err());
    d.answer_saves(Ok(()));
    second.try_recv().unwrap().unwrap();
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.1")], "a is up by hand, whatever it reports");
}

#[test]
fn a_change_the_disk_refuses_is_refused_and_changes_nothing() {
    let mut d = Driven::new(POOLS);
    d.hold = true;
    let serial = d.snapshot().zones[&origin("one.example.")].serial;
    let mut r = d.set_member("www.one.example.", "a", AdminState::Down);
    d.answer_saves(Err("No space left on device".into()));
    assert!(matches!(r.try_recv().unwrap(), Err(UpdateError::State(e)) if e.contains("No space")));
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.1")]);
    assert_eq!(d.snapshot().zones[&origin("one.example.")].serial, serial);
    assert!(d.c.table.get(0).unwrap().overrides.is_empty());
}

#[test]
fn serials_are_reserved_ahead_and_wait_only_when_they_catch_up_with_the_mark() {
    let mut d = Driven::new(POOLS);
    d.hold = true;
    let zone = origin("one.example.");
    let start = d.snapshot().zones[&zone].serial;
    // Up to half the reserve, answer changes need no write of the mark.
    let mut flips = 0u32;
    while d.acked.is_empty() {
        let up = flips % 2 == 1;
        d.report("www.one.example.", "a", up);
        flips += 1;
        assert!(flips <= SERIAL_RESERVE, "a mark was never asked for");
    }
    let asked = d.snapshot().zones[&zone].serial;
    assert_eq!(asked.wrapping_sub(start), SERIAL_RESERVE / 2, "asked for half way to the mark");
    // Its write takes its time; answers keep changing, and are served,
    // until the serial would pass the durable mark.
    while d.snapshot().zones[&zone].serial.wrapping_sub(start) < SERIAL_RESERVE {
        d.report("www.one.example.", "a", flips % 2 == 1);
        flips += 1;
    }
    let at_mark = d.snapshot().zones[&zone].serial;
    assert_eq!(d.report("www.one.example.", "a", flips % 2 == 1), None, "answered once what it changed is served");
    flips += 1;
    assert_eq!(d.snapshot().zones[&zone].serial, at_mark, "not past the mark while it is being saved");
    let waiting = d.published.len();
    d.answer_saves(Ok(()));
    assert_eq!(d.published.len(), waiting + 1, "published once the mark is durable");
    assert_eq!(d.snapshot().zones[&zone].serial, at_mark.wrapping_add(1));
    // A store that refuses: served anyway (answers come first), retried later.
    while d.acked.is_empty() {
        d.report("www.one.example.", "a", flips % 2 == 1);
        flips += 1;
    }
    d.answer_saves(Err("No space left on device".into()));
    assert_eq!(d.c.state_counters.owed_serials.get(), 1);
    let before = d.snapshot().zones[&zone].serial;
    for _ in 0..SERIAL_RESERVE {
        d.report("www.one.example.", "a", flips % 2 == 1);
        flips += 1;
    }
    assert_eq!(d.snapshot().zones[&zone].serial, before.wrapping_add(SERIAL_RESERVE), "never blocked by a failing store");
    let retry = d.c.poll_timeout().unwrap();
    assert!(retry > d.now.instant);
    d.advance(Duration::from_secs(11));
    assert_eq!(d.acked.len(), 1, "retried");
    d.answer_saves(Ok(()));
    assert_eq!(d.c.state_counters.owed_serials.get(), 0);
}

#[test]
fn a_ring_death_is_saved_before_it_is_answered_and_served() {
    let mut d = Driven::new(POOLS);
    d.hold = true;
    let member: std::net::SocketAddr = "127.0.0.1:7946".parse().unwrap();
    let other: std::net::SocketAddr = "127.0.0.9:7946".parse().unwrap();
    for m in [member, other] {
        let (tx, _rx) = oneshot::channel();
        d.input(Input::Command(Command::Ring { op: RingOp::Announce(m), reply: tx }));
        d.answer_saves(Ok(()));
    }
    let (tx, mut rx) = oneshot::channel();
    d.input(Input::Command(Command::Ring { op: RingOp::Delete { dead: member, reporter: other }, reply: tx }));
    assert!(matches!(&d.acked[0].1[0], Put::Ring(text) if text.contains("dead 127.0.0.1:7946")), "{:?}", d.acked);
    assert!(rx.try_recv().is_err());
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.1")]);
    d.answer_saves(Ok(()));
    assert!(rx.try_recv().unwrap().is_ok());
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.2")], "out of the answers once saved");
}

#[test]
fn time_alone_is_handled_at_poll_timeout_on_a_virtual_clock() {
    let config = "[[pool]]\nname = \"www.one.example.\"\nstale_after = \"3s\"\nmembers = [ { id = \"a\", address = \"127.0.0.1\" }, { id = \"b\", address = \"127.0.0.2\" } ]\n";
    let mut d = Driven::new(config);
    // A status page nobody looks at must not wake the loop (it spun once).
    let boards = Boards::new(d.now.instant);
    d.c = std::mem::replace(&mut d.c, Driven::new(POOLS).c).with_board(boards.clone(), d.now.instant);
    d.report("www.one.example.", "a", true);
    d.report("www.one.example.", "b", true);
    let t0 = d.now.instant;
    // Only b keeps reporting; a goes stale after 3 s, found by a tick.
    while d.now.instant < t0 + Duration::from_secs(4) {
        let next = d.c.poll_timeout().expect("a tick is always due");
        assert!(next > d.now.instant && next <= d.now.instant + TICK, "{:?}", next - d.now.instant);
        d.advance(next - d.now.instant);
        d.report("www.one.example.", "b", true);
    }
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.2")], "a went stale");
    assert!(!d.background.is_empty(), "members' state saved in the background");
    assert!(boards.stale.load(std::sync::atomic::Ordering::Relaxed), "nobody looked: the board is behind");
    // Someone looks: the next tick builds the board.
    let mut page = boards.tx.subscribe();
    let next = d.c.poll_timeout().unwrap();
    d.advance(next - d.now.instant);
    assert!(page.has_changed().unwrap(), "a board for the page");
    assert_eq!(page.borrow_and_update().pools.len(), 1);
}

#[test]
fn a_batch_that_changes_many_pools_is_one_serial_one_notify_and_one_journal_step() {
    let pools = r#"
[[pool]]
name = "www.one.example."
policy = "priority"
members = [ { id = "a", address = "127.0.0.1" }, { id = "b", address = "127.0.0.2" } ]

[[pool]]
name = "api.one.example."
members = [ { id = "d", address = "127.0.0.4" }, { id = "e", address = "127.0.0.5" } ]
"#;
    let mut d = Driven::new(pools);
    d.notified.clear();
    let serial = d.c.zones[&origin("one.example.")].serial;
    let (tx, _rx) = oneshot::channel();
    let reports = vec![Report::health("www.one.example.", "a", false), Report::health("api.one.example.", "d", false)];
    d.input(Input::Command(Command::Reports { reports, received: d.now.instant, reply: tx }));
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.2")]);
    assert_eq!(d.answer("api.one.example."), vec![ip("127.0.0.5")]);
    let new = d.snapshot().zones[&origin("one.example.")].serial;
    assert_eq!(new, serial.wrapping_add(1), "two pools changed in one publish: one serial");
    assert_eq!(d.notified, vec![(Name::from_ascii("one.example.").unwrap(), new)], "and one NOTIFY");
    let chain = d.c.zones[&origin("one.example.")].journal.since(serial).expect("journaled");
    assert_eq!(chain.len(), 1, "one IXFR step");
    // The next change is the next serial.
    d.report("www.one.example.", "a", true);
    assert_eq!(d.answer("www.one.example."), vec![ip("127.0.0.1")]);
    assert_eq!(d.snapshot().zones[&origin("one.example.")].serial, new.wrapping_add(1));
}
