//! Scale-out through standard DNS: a real NSD is our secondary on loopback.
//! It transfers the zone, and after a pool change our NOTIFY makes it serve
//! the new address within two seconds; it follows incremental transfers,
//! across restarts, and a group of three authorities listed as its
//! primaries as one.

mod common;

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Authority, ZONE, dig, eventually, unique_ip};

struct Nsd {
    child: Child,
    _dir: tempfile::TempDir,
    ip: std::net::Ipv4Addr,
    port: u16,
}

impl Nsd {
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("nsd.log")).unwrap_or_default()
    }

    /// What NSD answers for the pool's name.
    fn ask(&self) -> String {
        dig(IpAddr::V4(self.ip), self.port, "www.example.test A +short").trim().to_owned()
    }

    fn serial(&self) -> Option<u32> {
        serial_at(IpAddr::V4(self.ip), self.port)
    }
}

/// The pool every test here changes: web1 first, web2 standing by.
const POOLS: &str = r#"
[[pool]]
name = "www.example.test."
policy = "priority"
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "127.0.10.2" } ]
"#;

/// An authority (with `extra` in its `[authority]`) and NSD as its
/// secondary, told of changes by NOTIFY; returned once NSD serves the zone.
fn primary_and_secondary(extra: &str) -> (Authority, Nsd) {
    let (nsd_ip, nsd_port) = (unique_ip(), 5354);
    let a = Authority::start_with(&[("example.test.zone", ZONE)], POOLS, &format!("notify = [\"{nsd_ip}:{nsd_port}\"]\n{extra}"));
    let nsd = start_nsd(nsd_ip, nsd_port, &[&a]);
    assert!(
        eventually(Duration::from_secs(10), || nsd.ask() == "127.0.10.1").is_some(),
        "NSD never served the zone; its log:\n{}",
        nsd.log()
    );
    (a, nsd)
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NSD on `ip`, a secondary of every authority in `primaries`.
fn start_nsd(ip: std::net::Ipv4Addr, port: u16, primaries: &[&Authority]) -> Nsd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let sources: String = primaries
        .iter()
        .map(|p| format!("  request-xfr: {ip}@{port} NOKEY\n  allow-notify: {ip} NOKEY\n", ip = p.ip, port = p.port))
        .collect();
    let conf = format!(
        "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  \
         xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  username: \"\"\n  chroot: \"\"\n  logfile: \"{d}/nsd.log\"\n  \
         xfrd-reload-timeout: 0\n  verbosity: 2\n  server-count: 1\n\nremote-control:\n  control-enable: no\n\n\
         zone:\n  name: example.test\n  zonefile: \"{d}/example.test.zone\"\n{sources}",
    );
    let path = dir.path().join("nsd.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nsd")
        .args(["-d", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsd is installed (the test command installs it)");
    Nsd { child, _dir: dir, ip, port }
}

#[test]
fn nsd_follows_pool_changes_within_two_seconds() {
    let (a, nsd) = primary_and_secondary("");
    assert!(dig(IpAddr::V4(nsd.ip), nsd.port, "static.example.test A +short").contains("192.0.2.10"));

    for (down, expect) in [("web1", "127.0.10.2"), ("web2", "127.0.10.1")] {
        let up = if down == "web1" { "web2" } else { "web1" };
        assert!(a.cli(&["member", "www.example.test.", up, "--admin", "auto"]).status.success());
        assert!(a.cli(&["member", "www.example.test.", down, "--admin", "down"]).status.success());
        let took = eventually(Duration::from_secs(2), || nsd.ask() == expect);
        assert!(
            took.is_some(),
            "secondary did not follow within 2 s (it answers {:?}); NSD log:\n{}\nvnamed log:\n{}",
            nsd.ask(),
            nsd.log(),
            a.log()
        );
        eprintln!("secondary followed {down} down in {:?}", took.unwrap());
    }
    // Same serial on both sides.
    let theirs = dig(IpAddr::V4(nsd.ip), nsd.port, "example.test SOA +short");
    assert_eq!(theirs, a.dig("example.test SOA +short"));
}

/// Zone transfers the authority has sent of `kind` (full or incremental),
/// as its `/metrics` counts them.
fn transfers(a: &Authority, kind: &str) -> u64 {
    let metrics = common::scrape((a.ip, a.metrics));
    let line = format!("vnamed_zone_transfers_total{{kind=\"{kind}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Changes web1's admin state and waits for NSD to serve what the
/// authority serves.
fn change_and_follow(a: &Authority, nsd: &Nsd, admin: &str) {
    let out = a.cli(&["member", "www.example.test.", "web1", "--admin", admin]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = if admin == "down" { "127.0.10.2" } else { "127.0.10.1" };
    let served = serial_at(IpAddr::V4(a.ip), a.port);
    assert!(
        eventually(Duration::from_secs(5), || nsd.ask() == want && nsd.serial() == served).is_some(),
        "NSD answers {:?} at serial {:?}, the authority serves {served:?}\n{}\n{}",
        nsd.ask(),
        nsd.serial(),
        nsd.log(),
        a.log()
    );
}

/// The journal lives in the state store: after a clean restart the
/// authority still serves the differences it journaled, so a secondary
/// behind it, and the next change, go incrementally. After kill -9 the
/// serial moves past the journal; the secondary takes the whole zone once,
/// then incremental transfers resume.
#[test]
fn the_journal_survives_a_clean_restart_and_a_crash_costs_one_whole_transfer() {
    let (mut a, nsd) = primary_and_secondary("");
    let first = serial_at(IpAddr::V4(a.ip), a.port).unwrap();
    for admin in ["down", "auto", "down"] {
        change_and_follow(&a, &nsd, admin);
    }
    assert!(a.stop().success(), "{}", a.log());
    a.spawn();
    let ixfr = dig(IpAddr::V4(a.ip), a.port, &format!("example.test IXFR={first} +tcp +nocmd +nocomments +nostats"));
    assert!(!ixfr.contains("static.example.test."), "after a clean restart the three changes are still incremental:\n{ixfr}");
    assert_eq!(ixfr.lines().filter(|l| l.contains("\tSOA\t")).count(), 8, "{ixfr}");
    assert_eq!((transfers(&a, "full"), transfers(&a, "incremental")), (0, 1), "dig's");
    change_and_follow(&a, &nsd, "auto");
    assert_eq!((transfers(&a, "full"), transfers(&a, "incremental")), (0, 2), "NSD took the change after the restart incrementally");

    change_and_follow(&a, &nsd, "down");
    a.kill();
    a.spawn();
    change_and_follow(&a, &nsd, "auto");
    change_and_follow(&a, &nsd, "down");
    assert_eq!((transfers(&a, "full"), transfers(&a, "incremental")), (1, 1), "after kill -9: one whole zone, then incremental again");
}

/// The serial NSD serves, if any.
fn serial_at(ip: IpAddr, port: u16) -> Option<u32> {
    dig(ip, port, "example.test SOA +short").split_whitespace().nth(2).and_then(|s| s.parse().ok())
}

/// A secondary that saw serial N keeps following after the primary is
/// killed with kill -9 (its zone file behind what it served: file writes
/// are 5 s apart here) and restarted: the next change carries a serial
/// above N, so NSD takes it.
#[test]
fn nsd_follows_a_change_after_the_primary_is_killed_with_its_zone_file_behind() {
    let (mut a, nsd) = primary_and_secondary("zone_write_interval = \"5s\"");

    // Flapping: five changes, each a new serial NSD follows.
    for admin in ["down", "auto", "down", "auto", "down"] {
        assert!(a.cli(&["member", "www.example.test.", "web1", "--admin", admin]).status.success());
    }
    let served = serial_at(IpAddr::V4(a.ip), a.port).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || nsd.serial() == Some(served)).is_some(),
        "NSD never reached serial {served}: {}",
        nsd.log()
    );
    assert!(!a.zone_text("example.test.zone").contains(&format!(" {served} ")), "the zone file is meant to be behind here");

    a.kill();
    a.spawn();
    let restarted = serial_at(IpAddr::V4(a.ip), a.port).unwrap();
    assert!(restarted > served, "served {served} before kill -9, {restarted} after");
    assert!(a.cli(&["member", "www.example.test.", "web1", "--admin", "auto"]).status.success());
    let took = eventually(Duration::from_secs(2), || nsd.ask() == "127.0.10.1");
    assert!(took.is_some(), "NSD did not take the change after the restart (it answers {:?}): {}\n{}", nsd.ask(), nsd.log(), a.log());
    assert_eq!(nsd.serial(), serial_at(IpAddr::V4(a.ip), a.port));
}

#[test]
fn nsd_follows_pool_changes_with_incremental_transfers() {
    let (a, nsd) = primary_and_secondary("");
    let first = serial_at(IpAddr::V4(a.ip), a.port).unwrap();

    // A hundred changes, each followed by the secondary before the next.
    for i in 0..100 {
        let admin = if i % 2 == 0 { "down" } else { "auto" };
        let out = a.cli(&["member", "www.example.test.", "web1", "--admin", admin]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want = if i % 2 == 0 { "127.0.10.2" } else { "127.0.10.1" };
        let served = serial_at(IpAddr::V4(a.ip), a.port);
        assert!(
            eventually(Duration::from_secs(5), || nsd.ask() == want && nsd.serial() == served).is_some(),
            "change {i}: NSD answers {:?}\n{}",
            nsd.ask(),
            nsd.log()
        );
    }
    // NSD took them as incremental transfers: only what changed. (Counted
    // by the authority; its log lines may be throttled.)
    let (full, incremental) = (transfers(&a, "full"), transfers(&a, "incremental"));
    assert_eq!(full, 1, "only the first transfer is the whole zone\n{}", a.log());
    assert!(incremental >= 100, "{incremental} incremental transfers for 100 changes");

    // As dig sees it (RFC 1995 §4): from the first serial, the current SOA,
    // then each change as the SOA before, what went, the SOA after, what came.
    let ixfr = dig(IpAddr::V4(a.ip), a.port, &format!("example.test IXFR={first} +tcp +nocmd +nocomments +nostats"));
    let soas: Vec<u32> =
        ixfr.lines().filter(|l| l.contains("\tSOA\t")).filter_map(|l| l.split_whitespace().nth(6).and_then(|s| s.parse().ok())).collect();
    let now = serial_at(IpAddr::V4(a.ip), a.port).unwrap();
    assert_eq!(soas.first(), Some(&now), "{ixfr}");
    assert_eq!(soas.get(1), Some(&first), "{ixfr}");
    assert_eq!(soas.last(), Some(&now), "{ixfr}");
    assert!(!ixfr.contains("static.example.test."), "an incremental answer holds no unchanged record:\n{ixfr}");
    // From a serial the journal does not reach: the whole zone.
    let full = dig(IpAddr::V4(a.ip), a.port, &format!("example.test IXFR={} +tcp +nocmd +nocomments +nostats", first.wrapping_sub(1000)));
    assert!(full.contains("static.example.test."), "{full}");
}

/// A group of three authorities sharing their state through etcd, all
/// three listed as NSD's primaries: whichever it transfers from, it gets
/// the same zone at the same serial, so it follows changes made at any of
/// them, and goes on when one of them is killed.
#[test]
fn nsd_with_three_primaries_of_one_group_sees_one_zone() {
    let etcd = common::etcd::EtcdCluster::start(3);
    let (nsd_ip, nsd_port) = (unique_ip(), 5354);
    let config = format!("{}\n{POOLS}", etcd.section("/vnamed-nsd/"));
    let extra = format!("notify = [\"{nsd_ip}:{nsd_port}\"]\ntoken = \"t0ken\"");
    let mut g: Vec<Authority> = (0..3).map(|_| Authority::start_with(&[("example.test.zone", ZONE)], &config, &extra)).collect();
    let available = |a: &Authority| common::scrape((a.ip, a.metrics)).lines().any(|l| l == "vnamed_cluster_available 1");
    for a in &g {
        assert!(eventually(Duration::from_secs(10), || available(a)).is_some(), "{}", a.log());
    }
    let nsd = start_nsd(nsd_ip, nsd_port, &g.iter().collect::<Vec<_>>());
    assert!(eventually(Duration::from_secs(10), || nsd.ask() == "127.0.10.1").is_some(), "{}", nsd.log());

    // Changes made at each authority in turn: NSD follows every one, at the
    // serial all three serve.
    let follow = |g: &[Authority], at: usize, admin: &str| {
        let out = g[at].cli(&["member", "www.example.test.", "web1", "--admin", admin, "--token", "t0ken"]);
        assert!(out.status.success(), "{out:?}\n{}", g[at].log());
        let want = if admin == "down" { "127.0.10.2" } else { "127.0.10.1" };
        let agreed = eventually(Duration::from_secs(10), || {
            let serials: Vec<Option<u32>> = g.iter().map(|a| serial_at(IpAddr::V4(a.ip), a.port)).collect();
            nsd.ask() == want && serials.iter().all(|s| *s == serials[0]) && nsd.serial() == serials[0]
        });
        let serials: Vec<Option<u32>> = g.iter().map(|a| serial_at(IpAddr::V4(a.ip), a.port)).collect();
        assert!(agreed.is_some(), "NSD answers {:?} at {:?}; the primaries serve {serials:?}\n{}", nsd.ask(), nsd.serial(), nsd.log());
    };
    for i in 0..6 {
        follow(&g, i % 3, if i % 2 == 0 { "down" } else { "auto" });
    }
    // One primary killed: the others go on, and so does NSD.
    g[0].kill();
    let rest: Vec<Authority> = g.drain(1..).collect();
    for i in 0..2 {
        follow(&rest, i, if i % 2 == 0 { "down" } else { "auto" });
    }
}
