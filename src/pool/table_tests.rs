//! The member table's tests: batches, staleness, operator changes,
//! configuration edits, the ring, the group.

use super::*;
use crate::config::Config;
use crate::config::PolicyName;
use crate::pool::Metrics;
use std::collections::BTreeMap;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn configs(text: &str) -> Vec<PoolConfig> {
    Config::from_toml(text).unwrap().pool
}

const TWO: &str = r#"
[[pool]]
name = "www.example."
policy = "least-loaded"
select = "best"
stale_after = "3s"
members = [ { id = "a", address = "127.0.0.1" }, { id = "b", address = "127.0.0.2" } ]

[[pool]]
name = "db.example."
policy = "priority"
fallback = "servfail"
members = [ { id = "p", address = "127.0.1.1" }, { id = "farm1", farm = "east" } ]
"#;

fn report(pool: &str, member: &str, up: bool, load: f64) -> Report {
    Report {
        pool: pool.into(),
        member: member.into(),
        up,
        metrics: Metrics { load: Some(load), ..Metrics::default() },
        custom: BTreeMap::new(),
        age: Duration::ZERO,
        check: "test".into(),
        addresses: Vec::new(),
        source: "test".into(),
    }
}

fn start() -> (Table, Now) {
    let now = Now::read();
    (Table::new(&configs(TWO), now), now)
}

#[test]
fn a_refused_change_leaves_the_pool_as_it_was() {
    let (mut t, now) = start();
    let before = format!("{:?}", t.pools()[0]);
    for change in [
        Change::Policy(PolicyName::Formula),
        Change::Formula("load +* 2".into()),
        Change::Member { id: "nobody".into(), admin: Some(AdminState::Down), weight: None },
        Change::AddMember { id: "a".into(), address: ip("127.0.0.9"), weight: 1 },
        Change::AddMember { id: "c".into(), address: ip("127.0.0.2"), weight: 1 },
        Change::RemoveMember { id: "nobody".into() },
    ] {
        assert!(t.change("www.example.", change.clone(), now).is_err(), "{change:?}");
        assert_eq!(format!("{:?}", t.pools()[0]), before, "{change:?} changed the pool");
    }
    t.change("www.example.", Change::Member { id: "a".into(), admin: Some(AdminState::Down), weight: None }, now).unwrap();
    assert_eq!(t.pools()[0].members[0].admin, AdminState::Down);
}

#[test]
fn pools_are_found_in_any_case_with_or_without_the_final_dot() {
    let (t, _) = start();
    assert_eq!(t.find("www.example."), Some(0));
    assert_eq!(t.find("WWW.Example"), Some(0));
    assert_eq!(t.find("db.example"), Some(1));
    assert_eq!(t.find("example."), None);
}

#[test]
fn a_batch_is_stored_whole_or_refused_whole() {
    let (mut t, now) = start();
    let bad = vec![report("www.example.", "a", true, 0.9), report("www.example.", "nobody", true, 0.1)];
    assert_eq!(t.absorb(bad, now.instant), Err(ReportError::NoMember { index: 1, pool: "www.example.".into(), member: "nobody".into() }));
    assert!(t.pools()[0].members[0].health.is_none(), "nothing from a refused batch is stored");
    let bad = vec![report("www.example.", "a", true, 0.9), report("nope.example.", "a", true, 0.1)];
    assert!(matches!(t.absorb(bad, now.instant), Err(ReportError::NoPool { index: 1, .. })));
    let mut with_address = report("www.example.", "a", true, 0.1);
    with_address.addresses = vec![ip("127.0.9.9")];
    assert!(matches!(t.absorb(vec![with_address], now.instant), Err(ReportError::NotFarm { index: 0, .. })));

    let good = vec![report("WWW.example", "a", true, 0.9), report("www.example.", "b", true, 0.1), report("db.example.", "p", true, 0.5)];
    let got = t.absorb(good, now.instant).unwrap();
    assert_eq!(got, Absorbed { count: 3, pools: vec![0, 1], ports_moved: vec![], urgent: vec![] });
    assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.2")], "least loaded first");
    // Metrics alone are not urgent; a member leaving service or full is.
    let urgent = |t: &mut Table, r| t.absorb(vec![r], now.instant).unwrap().urgent;
    assert_eq!(urgent(&mut t, report("www.example.", "b", true, 0.3)), Vec::<PoolId>::new());
    assert_eq!(urgent(&mut t, report("www.example.", "b", false, 0.3)), vec![0], "down");
    assert_eq!(urgent(&mut t, report("www.example.", "b", true, 0.3)), vec![0], "back up");
    assert_eq!(urgent(&mut t, report("www.example.", "b", true, 1.5)), vec![0], "full");
}

#[test]
fn reports_go_stale_and_the_member_leaves_until_the_next_one() {
    let (mut t, now) = start();
    t.absorb(vec![report("www.example.", "a", true, 0.1), report("www.example.", "b", true, 0.5)], now.instant).unwrap();
    for i in 0..t.pools().len() {
        t.decide(i, now.instant);
    }
    assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.1")]);
    let later = now.after(Duration::from_secs(2));
    t.absorb(vec![report("www.example.", "b", true, 0.5)], later.instant).unwrap();
    let stale = now.instant + Duration::from_millis(3_001);
    assert_eq!(t.due(now.instant + Duration::from_millis(2_900)).count(), 0, "nothing changes before a's report goes stale");
    assert_eq!(t.due(stale).collect::<Vec<_>>(), vec![0], "only pools with reports change with time");
    assert_eq!(t.decide(0, stale).unwrap().addresses, vec![ip("127.0.0.2")], "a's report is older than stale_after");
    assert_eq!(t.members_status(0, &[], &[], stale)[0].state, "unknown (stale)");
    t.absorb(vec![report("www.example.", "a", true, 0.1)], stale).unwrap();
    assert_eq!(t.decide(0, stale).unwrap().addresses, vec![ip("127.0.0.1")]);
    // A report observed long ago counts from when it was observed.
    let mut old = report("www.example.", "b", true, 0.0);
    old.age = Duration::from_secs(10);
    t.absorb(vec![old], stale).unwrap();
    assert!(!t.pools()[0].members[1].eligible(stale, Duration::from_secs(3)));
}

/// A pool of one member `a` with `quorum` (TOML, or "" for none), and
/// a way to hear vantage point `from` say `up` at `at` seconds.
fn quorum_pool(quorum: &str) -> (Table, impl Fn(&mut Table, &str, bool, u64) -> String) {
    let now = Now::read();
    let text = format!(
        "[[pool]]\nname = \"q.example.\"\npolicy = \"priority\"\n{quorum}\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }} ]\n"
    );
    let t0 = now.instant;
    let hear = move |t: &mut Table, from: &str, up: bool, at: u64| {
        let mut r = report("q.example.", "a", up, 0.0);
        r.source = from.into();
        let at = t0 + Duration::from_secs(at);
        t.absorb(vec![r], at).unwrap();
        t.members_status(0, &[], &[], at)[0].state.clone()
    };
    (Table::new(&configs(&text), now), hear)
}

#[test]
fn without_a_quorum_the_last_word_decides() {
    let (mut t, hear) = quorum_pool("");
    assert_eq!(hear(&mut t, "m1", true, 0), "up");
    assert_eq!(hear(&mut t, "m2", false, 0), "down");
    assert_eq!(hear(&mut t, "m1", true, 1), "up");
    let s = t.members_status(0, &[], &[], t.pools()[0].members[0].reported_at.unwrap());
    assert_eq!(s[0].views.iter().map(|(who, up, _)| (who.as_str(), *up)).collect::<Vec<_>>(), [("m1", true), ("m2", false)]);
}

#[test]
fn a_quorum_of_vantage_points_takes_a_member_out_and_brings_it_back() {
    let (mut t, hear) = quorum_pool("quorum = 2");
    assert_eq!(hear(&mut t, "m1", false, 0), "up (no quorum yet)", "one word is not a quorum");
    assert_eq!(hear(&mut t, "m2", true, 0), "up (no quorum yet)");
    assert_eq!(hear(&mut t, "m3", true, 0), "up");
    // One vantage point loses it: its partial view changes nothing.
    assert_eq!(hear(&mut t, "m1", false, 1), "up");
    assert!(t.pools()[0].members[0].eligible(t.pools()[0].members[0].reported_at.unwrap(), t.pools()[0].stale_after));
    // A second one does: down.
    assert_eq!(hear(&mut t, "m2", false, 1), "down");
    // One says up again: two of three see it (m3 is still fresh).
    assert_eq!(hear(&mut t, "m1", true, 2), "up");
    // Views older than stale_after (3 s) do not vote: m2's down and
    // m1's up from before are gone by second 6, so m3's lone word
    // cannot move it.
    assert_eq!(hear(&mut t, "m3", false, 6), "up");
    assert_eq!(hear(&mut t, "m2", false, 6), "down");
}

#[test]
fn a_majority_counts_the_vantage_points_heard_and_forgets_retired_ones() {
    let (mut t, hear) = quorum_pool("quorum = \"majority\"");
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        hear(&mut t, m, true, 0);
    }
    assert_eq!(hear(&mut t, "m1", false, 1), "up");
    assert_eq!(hear(&mut t, "m2", false, 1), "up", "two of five is no majority");
    assert_eq!(hear(&mut t, "m3", false, 1), "down", "three of five is");
    // m3, m4 and m5 retire: silent for ten times stale_after, they are
    // forgotten, and m1 and m2 make a majority of two.
    hear(&mut t, "m1", true, 32);
    assert_eq!(hear(&mut t, "m2", true, 32), "up");
    assert_eq!(t.pools()[0].members[0].views.len(), 2);
}

#[test]
fn quorum_is_a_count_or_majority() {
    let parse = |q: &str| {
        Config::from_toml(&format!(
            "[[pool]]\nname = \"q.example.\"\nquorum = {q}\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }} ]\n"
        ))
        .map(|c| c.pool[0].quorum)
    };
    assert_eq!(parse("2").unwrap(), Some(crate::config::Quorum::Count(2)));
    assert_eq!(parse("\"majority\"").unwrap(), Some(crate::config::Quorum::Majority));
    for bad in ["0", "33", "\"most\"", "-1", "1.5"] {
        assert!(parse(bad).is_err(), "quorum = {bad}");
    }
}

#[test]
fn fallbacks_decide_when_every_member_is_out() {
    let text = |fallback: &str, answers: u32| {
        format!(
            "[[pool]]\nname = \"x.example.\"\npolicy = \"priority\"\nanswers = {answers}\nfallback = \"{fallback}\"\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }}, {{ id = \"b\", address = \"127.0.0.2\" }} ]\n"
        )
    };
    let now = Now::read();
    let all_down = |t: &mut Table| {
        t.absorb(vec![report("x.example.", "a", false, 0.0), report("x.example.", "b", false, 0.0)], now.instant).unwrap();
        t.decide(0, now.instant).unwrap()
    };
    let mut t = Table::new(&configs(&text("servfail", 1)), now);
    assert_eq!(all_down(&mut t), Decision::plain(vec![], false, true, 5));
    let mut t = Table::new(&configs(&text("all", 1)), now);
    assert_eq!(all_down(&mut t).addresses, vec![ip("127.0.0.1"), ip("127.0.0.2")], "all means every member");
    let mut t = Table::new(&configs(&text("last-known", 1)), now);
    t.absorb(vec![report("x.example.", "a", false, 0.0)], now.instant).unwrap();
    assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.2")]);
    assert_eq!(all_down(&mut t).addresses, vec![ip("127.0.0.2")], "the last answer given");
    let mut t = Table::new(&configs(&text("last-known", 1)), now);
    assert_eq!(all_down(&mut t).addresses, vec![ip("127.0.0.1")], "never answered: the first members");
}

#[test]
fn lifetimes_and_maintenance_windows_follow_the_virtual_clock() {
    let text = r#"
[[pool]]
name = "x.example."
policy = "priority"
members = [ { id = "a", address = "127.0.0.1", until = "2030-01-01T00:00:10Z" },
        { id = "b", address = "127.0.0.2", maintenance = [ { from = "2030-01-01T00:00:00Z", until = "2030-01-01T00:00:20Z" } ] } ]
"#;
    let wall = crate::config::parse_time("2030-01-01T00:00:00Z").unwrap();
    let now = Now { instant: Instant::now(), wall };
    let mut t = Table::new(&configs(text), now);
    assert_eq!(t.due(now.instant).count(), 1, "every pool is looked at once");
    t.decide(0, now.instant);
    let next: Vec<Instant> = (0..25).map(|s| now.after(Duration::from_secs(s)).instant).filter(|&at| t.due(at).count() > 0).collect();
    assert_eq!(
        next.first().copied(),
        Some(now.after(Duration::from_secs(10)).instant),
        "due when a's lifetime ends (b's window opened at once)"
    );
    let at = |s| now.after(Duration::from_secs(s)).instant;
    assert_eq!(t.decide(0, at(1)).unwrap().addresses, vec![ip("127.0.0.1")], "b is in maintenance");
    assert_eq!(t.decide(0, at(15)).unwrap().addresses, vec![ip("127.0.0.1")], "a expired; nobody left: last known");
    assert_eq!(t.members_status(0, &[], &[], at(15))[0].state, "expired");
    assert_eq!(t.decide(0, at(21)).unwrap().addresses, vec![ip("127.0.0.2")], "b's window is over");
}

#[test]
fn a_farm_entity_answers_where_its_farm_says() {
    let (mut t, now) = start();
    t.absorb(vec![report("db.example.", "p", false, 0.0)], now.instant).unwrap();
    assert!(t.decide(1, now.instant).unwrap().servfail, "the entity has no address yet");
    let mut farm = report("db.example.", "farm1", true, 0.2);
    farm.addresses = vec![ip("10.9.0.1"), ip("10.9.0.2")];
    t.absorb(vec![farm], now.instant).unwrap();
    assert_eq!(t.decide(1, now.instant).unwrap().addresses, vec![ip("10.9.0.1")]);
}

#[test]
fn ring_deaths_take_members_out_at_once_and_stick_to_new_members() {
    let (mut t, now) = start();
    assert_eq!(t.set_ring_dead(vec![ip("127.0.0.1")]), vec![0]);
    assert_eq!(t.decide(0, now.instant).unwrap().addresses, vec![ip("127.0.0.2")]);
    assert_eq!(t.members_status(0, &[], &[], now.instant)[0].state, "dead (ring)");
    assert_eq!(t.set_ring_dead(vec![ip("127.0.0.1")]), Vec::<PoolId>::new(), "nothing new");
    t.change("www.example.", Change::AddMember { id: "c".into(), address: ip("127.0.1.1"), weight: 1 }, now).unwrap();
    t.set_ring_dead(vec![ip("127.0.0.1"), ip("127.0.1.1")]);
    t.change("db.example.", Change::Member { id: "p".into(), admin: Some(AdminState::Up), weight: None }, now).unwrap();
    assert!(t.decide(1, now.instant).unwrap().servfail, "admin up does not raise the dead");
    assert_eq!(t.set_ring_dead(vec![]), vec![0, 1]);
    assert_eq!(t.decide(1, now.instant).unwrap().addresses, vec![ip("127.0.1.1")]);
}

#[test]
fn operator_changes_are_checked() {
    let (mut t, now) = start();
    let add = |id: &str| Change::AddMember { id: id.into(), address: ip("127.0.0.9"), weight: 3 };
    assert_eq!(t.change("nope.", Change::Pause(true), now), Err(TableError::NoPool("nope.".into())));
    assert_eq!(t.change("www.example.", add("a"), now), Err(TableError::MemberExists { pool: "www.example.".into(), id: "a".into() }));
    assert_eq!(t.change("www.example.", add("c"), now), Ok(0));
    assert_eq!(t.pools()[0].members[2].weight, 3);
    let again = t.change("www.example.", add("d"), now);
    assert!(matches!(&again, Err(TableError::Invalid(m)) if m.contains("already member c's")), "{again:?}");
    assert!(matches!(t.change("www.example.", Change::Policy(PolicyName::Formula), now), Err(TableError::Invalid(_))));
    assert!(matches!(t.change("www.example.", Change::Formula("load +".into()), now), Err(TableError::Invalid(_))));
    t.change("www.example.", Change::Formula("load * 2".into()), now).unwrap();
    t.change("www.example.", Change::Policy(PolicyName::Formula), now).unwrap();
    for id in ["a", "b"] {
        t.change("www.example.", Change::RemoveMember { id: id.into() }, now).unwrap();
    }
    assert_eq!(t.change("www.example.", Change::RemoveMember { id: "c".into() }, now), Err(TableError::LastMember("www.example.".into())));
    assert_eq!(
        t.change("www.example.", Change::RemoveMember { id: "a".into() }, now),
        Err(TableError::NoMember { pool: "www.example.".into(), id: "a".into() })
    );
    t.change("www.example.", Change::Pause(true), now).unwrap();
    assert_eq!(t.decide(0, now.instant), None, "a paused pool keeps its answer");
    assert_eq!(t.decide_anyway(0, now.instant).unwrap().addresses, vec![ip("127.0.0.9")]);
    assert_eq!(t.notes(0).collect::<Vec<_>>(), vec![("c".into(), "auto", 3)]);
}

#[test]
fn a_moved_port_is_told_even_when_nothing_else_changes() {
    let (mut t, now) = start();
    let with_port = |port: f64| {
        let mut r = report("www.example.", "a", true, 0.1);
        r.custom.insert("tcp_port".into(), port);
        r
    };
    assert_eq!(t.absorb(vec![with_port(1433.0)], now.instant).unwrap().ports_moved, vec![0]);
    assert_eq!(t.absorb(vec![with_port(1433.0)], now.instant).unwrap().ports_moved, Vec::<PoolId>::new());
    assert_eq!(t.absorb(vec![with_port(1434.0)], now.instant).unwrap().ports_moved, vec![0]);
}

#[test]
fn reconfiguration_keeps_what_was_reported_and_set() {
    let (mut t, now) = start();
    t.absorb(vec![report("www.example.", "a", true, 0.7), report("www.example.", "b", true, 0.2)], now.instant).unwrap();
    t.change("www.example.", Change::Member { id: "a".into(), admin: Some(AdminState::Drain), weight: Some(5) }, now).unwrap();
    t.change("www.example.", Change::Pause(true), now).unwrap();
    t.set_ring_dead(vec![ip("127.0.0.3")]);
    let edited = r#"
[[pool]]
name = "new.example."
members = [ { id = "n", address = "127.0.2.1" } ]

[[pool]]
name = "www.example."
policy = "priority"
answers = 2
members = [ { id = "a", address = "127.0.0.1", weight = 9 }, { id = "c", address = "127.0.0.3" } ]
"#;
    let r = t.reconfigure(&configs(edited), now);
    assert_eq!(r.removed.iter().map(|p| p.name.to_string()).collect::<Vec<_>>(), vec!["db.example."]);
    assert_eq!((r.added.clone(), r.reshaped.clone()), (vec![1], vec![0]), "kept pools first, then new ones");
    assert_eq!(t.find("www.example."), Some(0));
    assert_eq!(t.find("new.example."), Some(1));
    assert_eq!(t.find("db.example."), None);
    let www = &t.pools()[0];
    assert_eq!(www.policy, PolicyName::Priority);
    assert!(www.paused, "still paused");
    let a = &www.members[0];
    assert_eq!(
        (a.admin, a.weight, a.metrics.load),
        (AdminState::Drain, 9, Some(0.7)),
        "override and reports kept, weight from the file (edited there after the API set it)"
    );
    assert_eq!(www.overrides.members["a"].weight, None, "the edit took the weight back from the API");
    assert!(www.members[1].ring_dead, "a new member the ring knows is dead starts dead");
    assert!(t.find("WWW.EXAMPLE").is_some());
    let r = t.reconfigure(&configs(edited), now);
    assert!(r.removed.is_empty() && r.added.is_empty() && r.reshaped.is_empty(), "the same file changes nothing");
}
