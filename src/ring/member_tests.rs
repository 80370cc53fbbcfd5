//! Ring members on a simulated network with a virtual clock: messages are
//! delivered at once unless a host is down or a partition is in the way.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 168, 1, last], 7946))
}

struct Net {
    now: Instant,
    start: Instant,
    timing: Timing,
    nodes: BTreeMap<SocketAddr, Member>,
    down: BTreeSet<SocketAddr>,
    /// One side of a partition: no message crosses its border.
    side: Option<BTreeSet<SocketAddr>>,
    drop_tokens: bool,
    /// Lose every Dead and Leave broadcast (the out-of-band messages).
    drop_out_of_band: bool,
    /// Every ServerReplace sent: (from, to, message).
    replaces: Vec<(SocketAddr, SocketAddr, Msg)>,
    events: Vec<(Duration, SocketAddr, Event)>,
}

impl Net {
    fn new(timing: Timing) -> Self {
        let now = Instant::now();
        Self {
            now,
            start: now,
            timing,
            nodes: BTreeMap::new(),
            down: BTreeSet::new(),
            side: None,
            drop_tokens: false,
            drop_out_of_band: false,
            replaces: Vec::new(),
            events: Vec::new(),
        }
    }

    fn reachable(&self, a: SocketAddr, b: SocketAddr) -> bool {
        !self.down.contains(&a) && !self.down.contains(&b) && self.side.as_ref().is_none_or(|s| s.contains(&a) == s.contains(&b))
    }

    fn join(&mut self, last: u8, capable: bool) {
        let m = Member::join(addr(last), capable, self.timing, self.now);
        self.nodes.insert(addr(last), m);
        self.deliver();
    }

    fn deliver(&mut self) {
        for _ in 0..10_000 {
            let mut queue = Vec::new();
            for (a, m) in self.nodes.iter_mut() {
                if self.down.contains(a) {
                    while m.poll_transmit().is_some() {}
                    continue;
                }
                while let Some((to, msg)) = m.poll_transmit() {
                    queue.push((*a, to, msg));
                }
            }
            if queue.is_empty() {
                return;
            }
            for (from, to, msg) in queue {
                if self.drop_tokens && matches!(msg, Msg::Token { .. }) {
                    continue;
                }
                if self.drop_out_of_band && matches!(msg, Msg::Dead { .. } | Msg::Leave) {
                    continue;
                }
                if let (Msg::Replace { .. }, To::One(t)) = (&msg, to) {
                    self.replaces.push((from, t, msg.clone()));
                }
                let targets: Vec<SocketAddr> = match to {
                    To::One(t) => vec![t],
                    To::All => self.nodes.keys().copied().filter(|t| *t != from).collect(),
                };
                for t in targets {
                    if !self.reachable(from, t) {
                        continue;
                    }
                    if let Some(node) = self.nodes.get_mut(&t) {
                        node.handle(self.now, from, msg.clone());
                    }
                }
            }
            self.collect();
        }
        panic!("message storm");
    }

    fn collect(&mut self) {
        let at = self.now - self.start;
        for (a, m) in self.nodes.iter_mut() {
            while let Some(e) = m.poll_event() {
                self.events.push((at, *a, e));
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.deliver();
            let next = self.nodes.iter().filter(|(a, _)| !self.down.contains(a)).filter_map(|(_, m)| m.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for (a, m) in self.nodes.iter_mut() {
                        if !self.down.contains(a) && m.poll_timeout().is_some_and(|t| t <= now) {
                            m.handle_timeout(now);
                        }
                    }
                    self.collect();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = (&SocketAddr, &Member)> {
        self.nodes.iter().filter(|(a, _)| !self.down.contains(a))
    }

    fn first(&self, pred: impl Fn(&Event) -> bool) -> Option<Duration> {
        self.events.iter().find(|(_, _, e)| pred(e)).map(|(t, _, _)| *t)
    }
}

fn settled(capable: &[(u8, bool)]) -> Net {
    let mut net = Net::new(Timing::default());
    for &(last, c) in capable {
        net.join(last, c);
        net.run(Duration::from_secs(3));
    }
    net.run(Duration::from_secs(3));
    net.events.clear();
    net
}

#[test]
fn the_seed_ring_192_168_1_2_5_6_is_joined_by_4() {
    let mut net = settled(&[(2, true), (5, true), (6, true)]);
    assert_eq!(net.nodes[&addr(2)].buddies(), Some((addr(5), addr(6))), ".5 is the NDN of .2");
    net.join(4, true);
    net.run(Duration::from_secs(3));
    assert_eq!(net.nodes[&addr(2)].buddies(), Some((addr(4), addr(6))), ".4 is now the NDN of .2");
    assert_eq!(net.nodes[&addr(5)].buddies(), Some((addr(6), addr(4))), ".4 is now the NUN of .5");
    assert_eq!(net.nodes[&addr(4)].buddies(), Some((addr(5), addr(2))), ".4: NDN .5, NUN .2");
    for (_, m) in net.live() {
        assert!(m.is_member());
        assert_eq!(m.members().len(), 4);
        assert_eq!(m.dispatcher(), Some(addr(2)));
    }
    // The token keeps circulating: no purge in a quiet ring.
    net.run(Duration::from_secs(20));
    assert!(net.first(|e| matches!(e, Event::Rebuilt(_))).is_none(), "{:?}", net.events);
}

#[test]
fn a_dead_member_is_found_by_its_buddies_and_everyone_learns_at_once() {
    let mut net = settled(&[(1, true), (2, true), (3, true), (4, true)]);
    let t0 = net.now - net.start;
    net.down.insert(addr(3));
    net.run(Duration::from_secs(5));
    let found = net.first(|e| matches!(e, Event::Dead { dead, .. } if *dead == addr(3))).expect("found dead") - t0;
    // `misses` unanswered pings at `ping_interval`, plus the one in flight.
    assert!(found <= Duration::from_millis(500) * 4, "found after {found:?}");
    for (a, m) in net.live() {
        assert!(!m.members().contains(&addr(3)), "{a} still has .3");
    }
    // Table 3 -> Table 4: .2 and .4 are now buddies.
    assert_eq!(net.nodes[&addr(4)].buddies(), Some((addr(1), addr(2))));
    assert_eq!(net.nodes[&addr(2)].buddies(), Some((addr(4), addr(1))));
    assert!(net.first(|e| matches!(e, Event::Rebuilt(_))).is_none(), "a death found by its buddies needs no purge: {:#?}", net.events);
    net.run(Duration::from_secs(5));
    for (_, m) in net.live() {
        assert!(m.is_member());
        assert_eq!(m.members(), vec![addr(1), addr(2), addr(4)]);
    }
}

#[test]
fn tuned_timings_find_a_death_in_well_under_a_second() {
    let timing = Timing {
        ping_interval: Duration::from_millis(100),
        misses: 3,
        token_timeout: Duration::from_millis(400),
        broadcast_timeout: Duration::from_millis(300),
    };
    let mut net = Net::new(timing);
    for last in 1..=5 {
        net.join(last, true);
        net.run(Duration::from_millis(500));
    }
    net.run(Duration::from_secs(1));
    net.events.clear();
    let t0 = net.now - net.start;
    net.down.insert(addr(5));
    net.run(Duration::from_secs(2));
    let found = net.first(|e| matches!(e, Event::Dead { dead, .. } if *dead == addr(5))).expect("found") - t0;
    assert!(found <= Duration::from_millis(500), "{found:?}");
}

#[test]
fn a_lost_token_forces_a_purge_and_the_ring_rebuilds() {
    let mut net = settled(&[(1, true), (2, true), (3, true)]);
    let t0 = net.now - net.start;
    net.drop_tokens = true;
    // Communications timeout, plus the buddies' detection time (3 x 500 ms).
    net.run(Duration::from_millis(3600));
    let purged = net.events.iter().any(|(_, _, e)| matches!(e, Event::Rebuilt(_))) || net.nodes.values().any(|m| !m.is_member());
    assert!(purged, "no token for the communications timeout forces a purge");
    net.drop_tokens = false;
    net.run(Duration::from_secs(6));
    let rebuilt = net.first(|e| matches!(e, Event::Rebuilt(m) if m.len() == 3)).expect("rebuilt with everyone") - t0;
    assert!(rebuilt >= Duration::from_millis(2000 + 1500 + 2500), "token timeout, then broadcast timeout: {rebuilt:?}");
    for (_, m) in net.live() {
        assert!(m.is_member());
        assert_eq!(m.members().len(), 3);
        assert_eq!(m.dispatcher(), Some(addr(1)));
    }
}

#[test]
fn a_graceful_leave_is_not_a_death() {
    let mut net = settled(&[(1, true), (2, true), (3, true)]);
    net.nodes.get_mut(&addr(2)).unwrap().leave();
    net.deliver();
    net.down.insert(addr(2));
    net.run(Duration::from_secs(5));
    assert!(net.first(|e| matches!(e, Event::Left(a) if *a == addr(2))).is_some());
    assert!(net.first(|e| matches!(e, Event::Dead { .. })).is_none(), "{:?}", net.events);
    assert_eq!(net.nodes[&addr(1)].buddies(), Some((addr(3), addr(3))));
}

#[test]
fn election_skips_incapable_members_and_a_lone_survivor_is_a_plain_server() {
    let mut net = settled(&[(1, false), (2, true), (3, true)]);
    for (_, m) in net.live() {
        assert_eq!(m.dispatcher(), Some(addr(2)), "the smallest capable address");
    }
    net.down.insert(addr(2));
    net.run(Duration::from_secs(4));
    for (_, m) in net.live() {
        assert_eq!(m.dispatcher(), Some(addr(3)), "the next eligible member");
    }
    net.down.insert(addr(3));
    net.run(Duration::from_secs(4));
    assert_eq!(net.nodes[&addr(1)].members(), vec![addr(1)]);
    assert_eq!(net.nodes[&addr(1)].dispatcher(), None, "alone: no dispatcher");
}

#[test]
fn a_healed_partition_ends_with_exactly_one_dispatcher() {
    let mut net = settled(&[(1, true), (2, true), (5, true), (6, true)]);
    net.side = Some(BTreeSet::from([addr(1), addr(2)]));
    net.run(Duration::from_secs(8));
    assert_eq!(net.nodes[&addr(1)].dispatcher(), Some(addr(1)));
    assert_eq!(net.nodes[&addr(5)].dispatcher(), Some(addr(5)), "the other side elects its own");
    net.side = None;
    net.run(Duration::from_secs(10));
    let dispatchers: BTreeSet<Option<SocketAddr>> = net.live().map(|(_, m)| m.dispatcher()).collect();
    assert_eq!(dispatchers, BTreeSet::from([Some(addr(1))]), "the higher address abdicated");
    for (a, m) in net.live() {
        assert_eq!(m.members().len(), 4, "{a}: {:?}\n{:#?}", m.members(), net.events);
    }
}

#[test]
fn token_messages_reach_their_addressee_and_stop_there() {
    let mut net = settled(&[(1, true), (2, true), (3, true), (4, true)]);
    net.nodes.get_mut(&addr(2)).unwrap().send_carried(Some(addr(4)), b"hi 4".to_vec());
    net.nodes.get_mut(&addr(3)).unwrap().send_carried(None, b"all".to_vec());
    net.run(Duration::from_secs(3));
    let delivered = |to: u8, body: &[u8]| {
        net.events.iter().filter(|(_, a, e)| *a == addr(to) && matches!(e, Event::Delivered(c) if c.body == body)).count()
    };
    assert_eq!(delivered(4, b"hi 4"), 1);
    assert_eq!(delivered(1, b"hi 4") + delivered(3, b"hi 4"), 0);
    for to in [1, 2, 4] {
        assert_eq!(delivered(to, b"all"), 1, "broadcast reaches {to} once");
    }
    assert_eq!(delivered(3, b"all"), 0, "removed when back at its sender");
}

fn replace(replace: u8, with: u8, gone: bool) -> Msg {
    Msg::Replace { replace: addr(replace), with: addr(with), with_capable: true, gone }
}

#[test]
fn a_joiner_tells_its_new_buddies_with_server_replace() {
    // The seed: new server 4 tells server 2 (ServerToReplace=3,
    // ReplacementServer=4) and server 3 (ServerToReplace=2, ...=4). Here
    // the ring is ordered by address: .4 joins between .2 and .5.
    let mut net = settled(&[(2, true), (5, true), (6, true)]);
    net.replaces.clear();
    net.join(4, true);
    net.run(Duration::from_secs(3));
    assert_eq!(net.replaces, vec![(addr(4), addr(5), replace(2, 4, false)), (addr(4), addr(2), replace(5, 4, false))],);
    // Nobody left: every member still knows all four.
    assert!(net.live().all(|(_, m)| m.members().len() == 4));
}

#[test]
fn server_replace_alone_relinks_the_ring_when_the_broadcasts_are_lost() {
    let mut net = settled(&[(1, true), (2, true), (3, true), (4, true)]);
    net.drop_out_of_band = true;
    net.replaces.clear();
    // A death: .3's buddies find it and tell each other (ServerToReplace is
    // the dead server, ReplacementServer the one that found it).
    net.down.insert(addr(3));
    net.run(Duration::from_secs(3));
    assert!(net.replaces.contains(&(addr(2), addr(4), replace(3, 2, true))), "{:?}", net.replaces);
    assert!(net.replaces.contains(&(addr(4), addr(2), replace(3, 4, true))), "{:?}", net.replaces);
    assert_eq!(net.nodes[&addr(2)].buddies(), Some((addr(4), addr(1))));
    assert_eq!(net.nodes[&addr(4)].buddies(), Some((addr(1), addr(2))));
    // A normal shutdown of .2 (the seed's Table 4 example): it tells .4 to
    // replace it with .1 and .1 to replace it with .4.
    net.replaces.clear();
    net.events.clear();
    net.nodes.get_mut(&addr(2)).unwrap().leave();
    net.deliver();
    net.down.insert(addr(2));
    assert_eq!(net.replaces, vec![(addr(2), addr(4), replace(2, 1, true)), (addr(2), addr(1), replace(2, 4, true))],);
    for a in [1, 4] {
        assert!(net.events.iter().any(|(_, at, e)| *at == addr(a) && *e == Event::Left(addr(2))), "{:?}", net.events);
    }
    assert!(!net.events.iter().any(|(_, _, e)| *e == Event::Dead { dead: addr(2), reporter: addr(1) }), "a shutdown is not a death");
    // .1 never heard of .3's death (the broadcast was lost): now its buddy,
    // .3 is found dead by .1's own pings, and the two survivors watch each other.
    net.run(Duration::from_secs(10));
    assert_eq!(net.nodes[&addr(1)].buddies(), Some((addr(4), addr(4))));
    assert_eq!(net.nodes[&addr(4)].buddies(), Some((addr(1), addr(1))));
    assert!(net.first(|e| matches!(e, Event::Rebuilt(_))).is_none(), "no purge: {:?}", net.events);
}

#[test]
fn a_member_reported_dead_while_alive_asks_back_in_and_says_so() {
    let t0 = Instant::now();
    let me: SocketAddr = "127.0.0.1:7946".parse().unwrap();
    let buddy: SocketAddr = "127.0.0.2:7946".parse().unwrap();
    let mut m = Member::formed(me, &BTreeMap::from([(me, false), (buddy, false)]), Timing::default(), t0);
    while m.poll_transmit().is_some() {}
    m.handle(t0, buddy, Msg::Dead { dead: me });
    assert_eq!(m.poll_event(), Some(Event::Expelled), "the driver must tell the authorities it is back");
    assert!(matches!(m.poll_transmit(), Some((To::All, Msg::Join { .. }))));
}

#[test]
fn a_member_frozen_in_a_rebuild_asks_everyone_again_instead_of_counting_them_out() {
    let t0 = Instant::now();
    let timing = Timing::default();
    let all: BTreeMap<SocketAddr, bool> = [1, 3, 5, 7, 8].into_iter().map(|n| (addr(n), false)).collect();
    let mut m = Member::formed(addr(5), &all, timing, t0);
    while m.poll_transmit().is_some() {}
    // A purge; only two Hellos arrive before the process is frozen.
    m.handle(t0, addr(7), Msg::Purge { epoch: 1 });
    m.handle(t0, addr(7), Msg::Hello { capable: false });
    m.handle(t0, addr(8), Msg::Hello { capable: false });
    while m.poll_transmit().is_some() {}
    while m.poll_event().is_some() {}
    // Resumed seconds after the rebuild was due: no partial ring.
    let resumed = t0 + timing.broadcast_timeout * 3;
    m.handle_timeout(resumed);
    assert_eq!(m.poll_event(), None, "a stale rebuild must not conclude");
    assert!(!m.is_member());
    assert!(matches!(m.poll_transmit(), Some((To::All, Msg::Join { .. }))), "it asks everyone again");
    for n in [1, 3, 7, 8] {
        m.handle(resumed, addr(n), Msg::Hello { capable: false });
    }
    m.handle_timeout(resumed + timing.broadcast_timeout);
    assert!(m.is_member());
    assert_eq!(m.members(), all.keys().copied().collect::<Vec<_>>());

    // On time, a rebuild concludes with whom it heard from, as always.
    let mut m = Member::formed(addr(5), &all, timing, t0);
    m.handle(t0, addr(7), Msg::Purge { epoch: 1 });
    m.handle(t0, addr(7), Msg::Hello { capable: false });
    m.handle_timeout(t0 + timing.broadcast_timeout);
    assert_eq!(m.members(), vec![addr(5), addr(7)]);
}

#[test]
fn views_that_disagree_while_the_token_still_circles_are_rebuilt() {
    // What a healed partition can leave: .2 knows everyone, .1 only .2, and
    // .4 and .5 do not know .2. The token still comes round (.1 .2 .4 .5),
    // nobody is missing a ping, and .1 is the master in every view: nothing
    // but the token's length tells that the views differ.
    let mut net = Net::new(Timing::default());
    let view = |ns: &[u8]| -> BTreeMap<SocketAddr, bool> { ns.iter().map(|&n| (addr(n), n != 1)).collect() };
    for (me, ns) in [(1, &[1, 2][..]), (2, &[1, 2, 4, 5]), (4, &[1, 4, 5]), (5, &[1, 4, 5])] {
        net.nodes.insert(addr(me), Member::formed(addr(me), &view(ns), net.timing, net.now));
    }
    net.run(Duration::from_secs(15));
    let dispatchers: BTreeSet<Option<SocketAddr>> = net.live().map(|(_, m)| m.dispatcher()).collect();
    assert_eq!(dispatchers, BTreeSet::from([Some(addr(2))]), "{:#?}", net.events);
    for (a, m) in net.live() {
        assert_eq!(m.members().len(), 4, "{a}: {:?}", m.members());
    }
}

#[test]
fn a_death_reported_by_someone_outside_the_ring_is_stale_and_ignored() {
    let t0 = Instant::now();
    let ring: BTreeMap<SocketAddr, bool> = [1, 2, 5].into_iter().map(|n| (addr(n), true)).collect();
    let mut m = Member::formed(addr(2), &ring, Timing::default(), t0);
    while m.poll_transmit().is_some() {}
    while m.poll_event().is_some() {}
    // .4 was counted out while its link was cut; what it said then arrives now.
    m.handle(t0, addr(4), Msg::Dead { dead: addr(5) });
    m.handle(t0, addr(4), Msg::Dead { dead: addr(2) });
    assert_eq!(m.members().len(), 3);
    assert_eq!(m.poll_event(), None);
    assert!(m.poll_transmit().is_none(), "no rejoin for a stale report");
    // A member's report still counts.
    m.handle(t0, addr(1), Msg::Dead { dead: addr(5) });
    assert_eq!(m.members(), vec![addr(1), addr(2)]);
}

#[test]
fn a_member_some_views_lack_is_found_by_the_buddy_whose_view_differs() {
    // .4 and .5 never heard .2's Hello (it waited on ARP while they rebuilt);
    // the token still goes .1 .2 .4 .5, as many hops as the master's view
    // has members, so only a buddy comparing views can tell.
    let mut net = Net::new(Timing::default());
    let view = |ns: &[u8]| -> BTreeMap<SocketAddr, bool> { ns.iter().map(|&n| (addr(n), n != 1)).collect() };
    for (me, ns) in [(1, &[1, 2, 4, 5][..]), (2, &[1, 2, 4, 5]), (4, &[1, 4, 5]), (5, &[1, 4, 5])] {
        net.nodes.insert(addr(me), Member::formed(addr(me), &view(ns), net.timing, net.now));
    }
    net.run(Duration::from_secs(10));
    for (a, m) in net.live() {
        assert_eq!(m.members().len(), 4, "{a}: {:?}", m.members());
        assert_eq!(m.dispatcher(), Some(addr(2)), "{a}");
    }
}

#[test]
fn the_view_digest_is_kept_as_members_come_and_go_and_does_not_depend_on_their_order() {
    let all: Vec<SocketAddr> = (1..=200).map(addr).chain([SocketAddr::from(([0u16, 0, 0, 0, 0, 0xffff, 0xc0a8, 0x0101], 7946))]).collect();
    let mut up = Members::of(all[0], false);
    let mut down = Members::of(all[all.len() - 1], true);
    for &a in &all[1..] {
        up.insert(a, false);
    }
    for &a in all.iter().rev().skip(1) {
        down.insert(a, true);
    }
    assert_eq!(up.digest, down.digest, "the same members in any order, whatever their capability");
    let whole = up.digest;
    up.remove(&addr(77));
    assert_ne!(up.digest, whole);
    assert_eq!(up.insert(addr(77), true), None);
    assert_eq!(up.insert(addr(77), false), Some(true), "a change of capability is not a change of view");
    assert_eq!(up.digest, whole);
    // Our place is kept too: buddies, master and the first member agree
    // with a search over the members after every change.
    let mut m = Members::of(addr(100), true);
    for (i, a) in (1..=200u8).map(|i| addr(i.wrapping_mul(37))).enumerate() {
        if i % 3 == 2 {
            m.remove(&a)
        } else {
            m.insert(a, i % 2 == 0)
        };
        let keys: Vec<SocketAddr> = m.keys().copied().collect();
        let at = keys.iter().position(|k| *k == addr(100)).unwrap();
        let n = keys.len();
        let expect = (n >= 2).then(|| (keys[(at + 1) % n], keys[(at + n - 1) % n]));
        assert_eq!(m.buddies, expect);
        assert_eq!(m.master, at == 0);
        assert_eq!(m.first, (keys[0], m[&keys[0]]));
    }
    // An IPv4 address and its IPv6-mapped form are different members.
    let mut v4 = Members::of(addr(1), false);
    v4.remove(&addr(1));
    assert_eq!(v4.digest, 0);
    assert_ne!(address_hash(addr(1)), address_hash(all[all.len() - 1]));
}
