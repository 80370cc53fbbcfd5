//! A group of authorities sharing their control state through a real
//! three-node etcd cluster on loopback: an operator's change at any
//! authority is answered by all three; changes made at the same time at
//! different authorities both hold; an authority whose pools differ from
//! the group's refuses to join; with one etcd node gone everything goes on;
//! with two gone every authority keeps answering its last state and API
//! changes fail cleanly, saying why; back, they converge and nothing
//! acknowledged is lost. Over TLS with authentication on, credentials
//! etcd refuses stop an authority at start, saying so.

mod common;

use std::time::Duration;

use common::etcd::EtcdCluster;
use common::{Authority, ZONE, eventually};

const POOL: &str = "[[pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\n\
                    members = [ { id = \"web1\", address = \"127.0.10.1\" }, { id = \"web2\", address = \"127.0.10.2\" }, { id = \"web3\", address = \"127.0.10.3\" } ]\n";

fn group(etcd: &EtcdCluster, n: usize) -> Vec<Authority> {
    group_with(etcd, n, POOL)
}

/// `n` authorities sharing `pools` through `etcd`, once all follow it.
fn group_with(etcd: &EtcdCluster, n: usize, pools: &str) -> Vec<Authority> {
    let config = format!("{}\n{pools}", etcd.section("/vnamed-test/"));
    let all: Vec<Authority> = (0..n).map(|_| Authority::start_with(&[("example.test.zone", ZONE)], &config, "token = \"t0ken\"")).collect();
    for a in &all {
        assert!(eventually(Duration::from_secs(10), || available(a) == Some(true)).is_some(), "not following the group:\n{}", a.log());
    }
    all
}

/// `vnamed_cluster_available` as the authority's `/metrics` says.
fn available(a: &Authority) -> Option<bool> {
    let text = common::scrape((a.ip, a.metrics));
    text.lines().find_map(|l| l.strip_prefix("vnamed_cluster_available ")).map(|v| v.trim() == "1")
}

fn cli(a: &Authority, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--token", "t0ken"]);
    a.cli(&all)
}

fn answer(a: &Authority) -> String {
    a.dig("www.example.test A +short").trim().to_owned()
}

/// Every authority answers `want`, within a bound; panics with the log
/// of one that does not.
fn all_answer(group: &[Authority], want: &str) -> bool {
    // A decider lost with etcd's quorum is replaced once etcd is back.
    if eventually(Duration::from_secs(10), || group.iter().all(|a| answer(a) == want)).is_some() {
        return true;
    }
    let odd = group.iter().find(|a| answer(a) != want).unwrap();
    panic!("{} answers {}, not {want}:\n{}", odd.ip, answer(odd), odd.log());
}

#[test]
fn a_change_at_one_authority_is_answered_by_all_and_concurrent_changes_both_hold() {
    let etcd = EtcdCluster::start(3);
    let g = group(&etcd, 3);
    assert!(all_answer(&g, "127.0.10.1"));

    // Taken out at the first authority: acknowledged there once etcd holds
    // it, answered there at once, and by the others from their watch.
    let out = cli(&g[0], &["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}\n{}", g[0].log());
    assert_eq!(answer(&g[0]), "127.0.10.2", "the authority that acknowledged it answers it");
    assert!(all_answer(&g, "127.0.10.2"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());

    // Back in, at another authority.
    assert!(cli(&g[2], &["member", "www.example.test.", "web1", "--admin", "auto"]).status.success());
    assert!(all_answer(&g, "127.0.10.1"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());

    // Two authorities change the same pool at the same moment, each a
    // different member: both changes hold, everywhere.
    let (a, b) = (&g[0], &g[1]);
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| cli(a, &["member", "www.example.test.", "web1", "--admin", "down"]));
        let tb = s.spawn(|| cli(b, &["member", "www.example.test.", "web2", "--admin", "drain"]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(ra.status.success() && rb.status.success(), "{ra:?}\n{rb:?}");
    assert!(all_answer(&g, "127.0.10.3"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());
    for x in &g {
        let listed = String::from_utf8(cli(x, &["pool", "overrides", "www.example.test."]).stdout).unwrap();
        assert!(listed.contains("web1 admin down") && listed.contains("web2 admin drain"), "{listed}");
    }
    let status = String::from_utf8(cli(&g[1], &["status"]).stdout).unwrap();
    assert!(status.contains("cluster: following the group's shared state at revision"), "{status}");

    // An authority whose pools differ refuses to join the group.
    let other = format!("{}\n{}", etcd.section("/vnamed-test/"), POOL.replace("priority", "round-robin"));
    let stray = Authority::prepared(&[("example.test.zone", ZONE)], &other, "");
    let out = std::process::Command::new(common::VNAMED).args(["authority", "--config"]).arg(&stray.config).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("differ from the group's"), "{}\n{said}", out.status);
}

#[test]
fn without_an_etcd_quorum_answers_stay_and_changes_fail_cleanly_then_converge() {
    let mut etcd = EtcdCluster::start(3);
    let g = group(&etcd, 3);

    // One etcd node gone: changes go on.
    etcd.kill_node(2);
    let out = cli(&g[0], &["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}\n{}", g[0].log());
    assert!(all_answer(&g, "127.0.10.2"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());

    // Two gone: no quorum. Every authority says so and keeps answering.
    etcd.kill_node(1);
    for a in &g {
        assert!(eventually(Duration::from_secs(10), || available(a) == Some(false)).is_some(), "{}", a.log());
    }
    let out = cli(&g[1], &["member", "www.example.test.", "web2", "--admin", "down"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("cluster state unavailable"), "{out:?}");
    let status = String::from_utf8(cli(&g[1], &["status"]).stdout).unwrap();
    assert!(status.contains("CLUSTER STATE UNAVAILABLE"), "{status}");
    let out = cli(&g[2], &["ring", "announce", "127.0.10.9:7946"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("cluster state unavailable"), "a ring change is refused too: {out:?}");
    for a in &g {
        assert_eq!(answer(a), "127.0.10.2", "the last state is served");
    }
    let metrics = common::scrape((g[1].ip, g[1].metrics));
    assert!(metrics.lines().any(|l| l.starts_with("vnamed_cluster_refused_total ") && !l.ends_with(" 0")), "{metrics}");

    // Back: every authority follows again, what was acknowledged holds,
    // and a new change reaches all.
    etcd.start_node(1);
    etcd.start_node(2);
    for a in &g {
        assert!(eventually(Duration::from_secs(20), || available(a) == Some(true)).is_some(), "{}\n{}", a.log(), etcd.logs());
    }
    assert!(all_answer(&g, "127.0.10.2"), "the change made with one node gone holds");
    let out = cli(&g[2], &["member", "www.example.test.", "web2", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(all_answer(&g, "127.0.10.3"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());
}

/// Rewrites an authority's configuration with its pools edited (as an
/// operator would: a new file renamed over the old).
fn edit_pools(a: &Authority, from: &str, to: &str) {
    let text = std::fs::read_to_string(&a.config).unwrap();
    assert!(text.contains(from), "{text}");
    let tmp = a.config.with_extension("new");
    std::fs::write(&tmp, text.replace(from, to)).unwrap();
    std::fs::rename(&tmp, &a.config).unwrap();
}

#[test]
fn an_edit_of_the_pools_becomes_the_groups_and_the_others_wait_for_theirs() {
    let etcd = EtcdCluster::start(3);
    let g = group(&etcd, 3);
    let ttl = |a: &Authority| a.dig("www.example.test A +noall +answer").split_whitespace().nth(1).map(str::to_owned);

    // The first authority's pools are edited: they are the group's now, and
    // the others, whose pools are the old ones, take no changes and say so.
    edit_pools(&g[0], "policy = \"priority\"", "policy = \"priority\"\nttl = 7");
    assert!(eventually(Duration::from_secs(10), || ttl(&g[0]).as_deref() == Some("7")).is_some(), "{}", g[0].log());
    for a in &g[1..] {
        assert!(eventually(Duration::from_secs(10), || available(a) == Some(false)).is_some(), "{}", a.log());
    }
    let out = cli(&g[1], &["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("differ from the group's"), "{out:?}");
    assert!(cli(&g[0], &["member", "www.example.test.", "web1", "--admin", "down"]).status.success(), "the edited one goes on");

    // Edited alike, they follow the group again and take its changes.
    for a in &g[1..] {
        edit_pools(a, "policy = \"priority\"", "policy = \"priority\"\nttl = 7");
    }
    for a in &g {
        assert!(eventually(Duration::from_secs(15), || available(a) == Some(true)).is_some(), "{}", a.log());
    }
    assert!(all_answer(&g, "127.0.10.2"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());
    assert!(cli(&g[2], &["member", "www.example.test.", "web2", "--admin", "down"]).status.success());
    assert!(all_answer(&g, "127.0.10.3"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());
}

/// Tells authority `a`, as monitor `source`, that web1 is `up` or not.
fn report(a: &Authority, source: &str, up: bool) {
    use vnamed::grpc::Bearer;
    use vnamed::grpc::v1::ReportBatch;
    use vnamed::grpc::v1::status_client::StatusClient;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
        let mut c = StatusClient::with_interceptor(channel, Bearer::new(Some("t0ken")).unwrap());
        let reports = vec![common::member_report("www.example.test.", "web1", up, &[])];
        c.report(ReportBatch { source: source.into(), reports }).await.unwrap();
    });
}

fn decider(a: &Authority) -> bool {
    let text = common::scrape((a.ip, a.metrics));
    text.lines().any(|l| l.trim() == "vnamed_cluster_decider 1")
}

fn serial(a: &Authority) -> String {
    a.dig("example.test SOA +short").split_whitespace().nth(2).unwrap_or_default().to_owned()
}

/// The one authority of the group that decides, once there is exactly one.
fn the_decider(g: &[Authority]) -> usize {
    let mut found = None;
    let one = eventually(Duration::from_secs(10), || {
        let deciders: Vec<usize> = (0..g.len()).filter(|&i| g[i].pid().is_some() && decider(&g[i])).collect();
        found = deciders.first().copied();
        deciders.len() == 1
    });
    assert!(one.is_some(), "no single decider: {:?}", g.iter().map(|a| a.pid().is_some() && decider(a)).collect::<Vec<_>>());
    found.unwrap()
}

/// Every running authority answers `want` with one and the same serial.
fn agree(g: &[Authority], want: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        let up: Vec<&Authority> = g.iter().filter(|a| a.pid().is_some()).collect();
        let s = serial(up[0]);
        up.iter().all(|a| answer(a) == want && serial(a) == s && !s.is_empty())
    })
    .is_some()
}

#[test]
fn answers_are_decided_once_for_the_group_with_one_serial_and_a_dead_decider_is_replaced() {
    let etcd = EtcdCluster::start(3);
    let mut g = group_with(&etcd, 3, &POOL.replace("policy = \"priority\"", "policy = \"priority\"\nstale_after = \"1h\""));
    let d = the_decider(&g);
    let follower = (d + 1) % 3;
    let serials = |g: &[Authority]| g.iter().filter(|a| a.pid().is_some()).map(serial).collect::<Vec<_>>();
    assert!(agree(&g, "127.0.10.1"), "{:?} {:?}", g.iter().map(answer).collect::<Vec<_>>(), serials(&g));

    // Monitor m1 sees web1 up from everywhere; monitor m2, which reaches
    // only a follower, says it is down: that follower sees it (its own
    // view), but the group's answer stands.
    for a in &g {
        report(a, "m1", true);
    }
    report(&g[follower], "m2", false);
    let seen = || String::from_utf8(cli(&g[follower], &["status", "--explain", "www.example.test."]).stdout).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || seen().lines().any(|l| l.contains(" web1 ") && l.contains(" down "))).is_some(),
        "{}",
        seen()
    );
    for _ in 0..5 {
        assert_eq!(answer(&g[follower]), "127.0.10.1", "one authority's view does not change its answer");
    }

    // The decider hears it: every authority answers web2, same serial.
    report(&g[d], "m2", false);
    assert!(agree(&g, "127.0.10.2"), "{:?} {:?}\n{}", g.iter().map(answer).collect::<Vec<_>>(), serials(&g), g[d].log());

    // The decider is killed: another takes over (its lease runs out) and
    // decides from what reaches it.
    g[d].kill();
    let next = the_decider(&g);
    assert_ne!(next, d);
    for a in g.iter().filter(|a| a.pid().is_some()) {
        report(a, "m1", true);
    }
    assert!(agree(&g, "127.0.10.1"), "{:?}", g.iter().filter(|a| a.pid().is_some()).map(answer).collect::<Vec<_>>());

    // Back after kill -9, its serial jumped ahead (nothing it served may
    // repeat): the group's serial moves up to it, and all agree again.
    let before: u32 = serial(&g[next]).parse().unwrap();
    g[d].spawn();
    assert!(eventually(Duration::from_secs(10), || available(&g[d]) == Some(true)).is_some(), "{}", g[d].log());
    assert!(agree(&g, "127.0.10.1"), "{:?} {:?}", g.iter().map(answer).collect::<Vec<_>>(), serials(&g));
    let after: u32 = serial(&g[next]).parse().unwrap();
    assert!(after > before, "the group's serial went up to the restarted authority's: {before} -> {after}");
}

#[test]
fn a_monitor_cut_off_from_the_decider_does_not_take_a_member_out() {
    let etcd = EtcdCluster::start(3);
    let g = group_with(&etcd, 3, &POOL.replace("policy = \"priority\"", "policy = \"priority\"\nstale_after = \"2s\""));
    let d = the_decider(&g);
    for a in &g {
        report(a, "m1", true);
    }
    assert!(agree(&g, "127.0.10.1"));

    // The monitor reaches only the two others from now on: at the decider
    // web1's reports go stale, but the others still see it up.
    let others: Vec<&Authority> = (0..3).filter(|&i| i != d).map(|i| &g[i]).collect();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut checked = 0;
    while std::time::Instant::now() < until {
        for a in &others {
            report(a, "m1", true);
        }
        std::thread::sleep(Duration::from_millis(300));
        let stale_at_decider = String::from_utf8(cli(&g[d], &["status", "--explain", "www.example.test."]).stdout).unwrap();
        if stale_at_decider.contains("up (seen by another authority)") {
            assert!(g.iter().all(|a| answer(a) == "127.0.10.1"), "{:?}\n{stale_at_decider}", g.iter().map(answer).collect::<Vec<_>>());
            checked += 1;
        }
    }
    assert!(g.iter().all(|a| answer(a) == "127.0.10.1"), "five seconds on: {:?}", g.iter().map(answer).collect::<Vec<_>>());
    assert!(checked >= 3, "the decider's own reports never went stale while the others saw web1 ({checked} checks)\n{}", g[d].log());

    // Nobody hears from web1 any more: stale everywhere, out everywhere.
    assert!(agree(&g, "127.0.10.2"), "{:?}", g.iter().map(answer).collect::<Vec<_>>());
}

fn ring_table(a: &Authority) -> String {
    String::from_utf8(cli(a, &["ring", "table"]).stdout).unwrap()
}

#[test]
fn the_ring_table_is_the_groups_and_a_death_told_to_all_is_applied_once() {
    let etcd = EtcdCluster::start(3);
    let g = group(&etcd, 3);
    // Members announce themselves at one authority; all three know them.
    for (i, m) in ["127.0.10.1:7946", "127.0.10.2:7946", "127.0.10.3:7946"].iter().enumerate() {
        let out = cli(&g[i % 3], &["ring", "announce", m]);
        assert!(out.status.success(), "{out:?}\n{}", g[i % 3].log());
    }
    for a in &g {
        assert!(eventually(Duration::from_secs(10), || ring_table(a).contains("ring (3 members)")).is_some(), "{}", ring_table(a));
    }

    // Ring members tell every authority of a death: all three hear it at
    // once, the group applies it once, and every authority answers without it.
    let told: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> =
            g.iter().map(|a| s.spawn(move || cli(a, &["ring", "delete", "127.0.10.1:7946", "--reporter", "127.0.10.2:7946"]))).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let applied = told.iter().filter(|o| o.status.success()).count();
    assert_eq!(applied, 1, "{told:?}");
    for o in told.iter().filter(|o| !o.status.success()) {
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(said.contains("not in the ring"), "the others find it done already: {said}");
    }
    assert!(all_answer(&g, "127.0.10.2"));
    for a in &g {
        let table = ring_table(a);
        assert!(table.contains("ring (2 members)") && table.contains("127.0.10.1:7946          dead"), "{table}");
    }

    // A rejoin told to one authority brings it back at all.
    assert!(cli(&g[2], &["ring", "announce", "127.0.10.1:7946"]).status.success());
    assert!(all_answer(&g, "127.0.10.1"));
}

/// Starts `vnamed authority` with `config` and expects it to exit, bounded;
/// gives what it said.
fn refused_at_start(config: &std::path::Path) -> String {
    let mut child = std::process::Command::new(common::VNAMED)
        .args(["authority", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(20), || child.try_wait().unwrap().is_some());
    if exited.is_none() {
        let _ = child.kill();
    }
    let mut said = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(exited.is_some(), "the authority started although it should have been refused:\n{said}");
    assert!(!child.wait().unwrap().success(), "{said}");
    said
}

/// etcd as it runs in production: clients over TLS with certificates of
/// the group's CA, authentication on, each user allowed its prefix, tokens
/// short-lived. The group follows it (and renews its tokens); a wrong
/// password, or a prefix the user may not touch, stops an authority at
/// start saying why; a certificate etcd does not trust leaves an
/// authority serving and saying the state is unavailable; one started
/// while etcd is down serves, and joins once it is back.
#[test]
fn over_tls_with_a_password_the_group_follows_and_refused_credentials_are_said() {
    let pki = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/make-pki.sh"))
        .arg(pki.path())
        .arg("vnamed")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut etcd = EtcdCluster::start_tls(3, pki.path());
    etcd.secure("vnamed", "/vnamed-tls/", "vnamed", "s3cret");
    let (right, wrong) = (pki.path().join("password"), pki.path().join("wrong"));
    std::fs::write(&right, "s3cret\n").unwrap();
    std::fs::write(&wrong, "guess\n").unwrap();
    let config = |prefix: &str, client: &str, password: &std::path::Path| {
        format!("{}\n{POOL}", etcd.tls_section(prefix, client, "vnamed", password))
    };
    let start = |config: &str| Authority::start_with(&[("example.test.zone", ZONE)], config, "token = \"t0ken\"");

    let g: Vec<Authority> = (0..2).map(|_| start(&config("/vnamed-tls/", "vnamed", &right))).collect();
    for a in &g {
        assert!(eventually(Duration::from_secs(10), || available(a) == Some(true)).is_some(), "{}", a.log());
    }
    let out = cli(&g[0], &["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}\n{}", g[0].log());
    assert!(all_answer(&g, "127.0.10.2"));
    // Past the tokens' two seconds (a wait for time itself): renewed.
    std::thread::sleep(Duration::from_secs(3));
    let out = cli(&g[1], &["member", "www.example.test.", "web1", "--admin", "auto"]);
    assert!(out.status.success(), "{out:?}\n{}", g[1].log());
    assert!(all_answer(&g, "127.0.10.1"));

    // Refused credentials: the authority does not start, and says why.
    for (prefix, password, why) in [("/vnamed-tls/", &wrong, "authentication failed"), ("/elsewhere/", &right, "permission denied")] {
        let a = Authority::prepared(&[("example.test.zone", ZONE)], &config(prefix, "vnamed", password), "token = \"t0ken\"");
        let said = refused_at_start(&a.config);
        assert!(said.contains("etcd refused this authority") && said.contains(why), "{said}");
    }

    // A certificate of a CA etcd does not trust: serving, unavailable.
    let rogue = start(&config("/vnamed-tls/", "rogue", &right));
    assert!(eventually(Duration::from_secs(10), || available(&rogue) == Some(false)).is_some(), "{}", rogue.log());
    assert_eq!(answer(&rogue), "127.0.10.1", "it serves its zone file");
    let out = cli(&rogue, &["member", "www.example.test.", "web2", "--admin", "down"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cluster state unavailable"), "{out:?}");

    // Started while etcd is down: it serves; once etcd is back it joins
    // and answers the group's state.
    let out = cli(&g[0], &["member", "www.example.test.", "web3", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}");
    let late_config = config("/vnamed-tls/", "vnamed", &right);
    for i in 0..3 {
        etcd.kill_node(i);
    }
    let late = start(&late_config);
    assert_eq!(available(&late), Some(false), "{}", late.log());
    assert_eq!(answer(&late), "127.0.10.1");
    for i in 0..3 {
        etcd.start_node(i);
    }
    etcd.wait_healthy(0);
    assert!(eventually(Duration::from_secs(15), || available(&late) == Some(true)).is_some(), "{}", late.log());
    let listed = String::from_utf8(cli(&late, &["pool", "overrides", "www.example.test."]).stdout).unwrap();
    assert!(listed.contains("web3 admin down"), "{listed}\n{}", late.log());
    // etcd forgot every token when it stopped: the others sign in again.
    for a in &g {
        assert!(eventually(Duration::from_secs(15), || available(a) == Some(true)).is_some(), "{}", a.log());
    }
    let out = cli(&g[1], &["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}\n{}", g[1].log());
    let mut g = g;
    g.push(late);
    assert!(all_answer(&g, "127.0.10.2"));
}

/// An etcd node paused (SIGSTOP) holds its connections open and answers
/// nothing: unlike a node that is gone, nothing tells the clients. The
/// group goes on through the other two: every change is acknowledged and
/// answered everywhere.
#[test]
fn a_paused_etcd_node_does_not_stop_the_group() {
    let etcd = EtcdCluster::start(3);
    let g = group(&etcd, 3);
    for paused in 0..3 {
        etcd.pause_node(paused, true);
        for (i, admin) in ["down", "auto", "down", "auto", "down", "auto"].iter().enumerate() {
            let started = std::time::Instant::now();
            let out = cli(&g[i % 3], &["member", "www.example.test.", "web1", "--admin", admin]);
            assert!(out.status.success(), "etcd node {paused} paused: {out:?}\n{}", g[i % 3].log());
            eprintln!("node {paused} paused: change {i} took {:?}", started.elapsed());
            assert!(all_answer(&g, if *admin == "down" { "127.0.10.2" } else { "127.0.10.1" }));
        }
        etcd.pause_node(paused, false);
        etcd.wait_healthy(paused);
    }
}

/// SIGSTOP or SIGCONT to an authority.
fn pause(a: &Authority, paused: bool) {
    let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: signalling a child process of this test.
    assert_eq!(unsafe { libc::kill(a.pid().expect("running") as i32, signal) }, 0);
}

/// The decider paused (SIGSTOP) past its lease: another authority takes
/// over and decides; when the paused one resumes it has lost the term,
/// commits nothing of what it thought before, and follows the group.
#[test]
fn a_paused_decider_is_replaced_and_follows_the_group_when_it_resumes() {
    let etcd = EtcdCluster::start(3);
    let mut g = group_with(&etcd, 3, &POOL.replace("policy = \"priority\"", "policy = \"priority\"\nstale_after = \"1h\""));
    for a in &g {
        report(a, "m1", true);
    }
    assert!(agree(&g, "127.0.10.1"));
    let d = the_decider(&g);
    g.swap(d, 2);

    // Paused, it still believes web1 up (m1 told it so, an hour's worth).
    pause(&g[2], true);
    let others = &g[..2];
    assert!(
        eventually(Duration::from_secs(10), || others.iter().filter(|a| decider(a)).count() == 1).is_some(),
        "nobody took over from the paused decider"
    );
    for a in others {
        report(a, "m1", false);
    }
    assert!(agree(others, "127.0.10.2"), "{:?}", others.iter().map(answer).collect::<Vec<_>>());

    // Resumed: it follows the group's decision, and nothing it believed
    // is committed; for three seconds every authority answers web2 with
    // one serial.
    pause(&g[2], false);
    assert!(agree(&g, "127.0.10.2"), "{:?}\n{}", g.iter().map(answer).collect::<Vec<_>>(), g[2].log());
    assert!(eventually(Duration::from_secs(10), || !decider(&g[2])).is_some(), "{}", g[2].log());
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let serials: Vec<String> = g.iter().map(serial).collect();
        assert!(
            g.iter().all(|a| answer(a) == "127.0.10.2") && serials.iter().all(|s| *s == serials[0]),
            "{:?} {serials:?}\n{}",
            g.iter().map(answer).collect::<Vec<_>>(),
            g[2].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What etcd holds under the prefix is written by vnamed, but anyone with
/// access to etcd can write there. Values that do not read (a pool's
/// overrides, a decision, a serial, the ring table) are ignored with an
/// error: every authority goes on answering what it answered, and the next
/// change through the API replaces the bad value.
#[test]
fn values_in_etcd_that_do_not_read_change_no_answer_and_the_next_change_replaces_them() {
    let etcd = EtcdCluster::start(3);
    let g = group(&etcd, 2);
    let out = cli(&g[0], &["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(all_answer(&g, "127.0.10.2"));
    let before: Vec<String> = g.iter().map(serial).collect();
    for (key, value) in [
        ("overrides/www.example.test.", &b"{not json"[..]),
        ("decision/www.example.test.", b"\xff\xfe"),
        ("serial/example.test.", b"-1"),
        ("ring", b"garbage that is no table\n"),
    ] {
        etcd.put(&format!("/vnamed-test/{key}"), value);
    }
    // Written after them all: once it is in, every bad value was seen.
    etcd.put("/vnamed-test/view/x/www.example.test./web3", b"up");
    for a in &g {
        assert!(eventually(Duration::from_secs(10), || a.log().matches("ignored").count() >= 4).is_some(), "{}", a.log());
        assert_eq!(answer(a), "127.0.10.2", "{}", a.log());
        assert_eq!(available(a), Some(true), "{}", a.log());
    }
    assert_eq!(g.iter().map(serial).collect::<Vec<_>>(), before);
    let table = ring_table(&g[1]);
    assert!(!table.contains("garbage"), "{table}");

    // The next change through the API replaces the bad overrides.
    let out = cli(&g[1], &["member", "www.example.test.", "web1", "--admin", "auto"]);
    assert!(out.status.success(), "{out:?}\n{}", g[1].log());
    assert!(all_answer(&g, "127.0.10.1"));
    let out = cli(&g[0], &["ring", "announce", "127.0.10.1:7946"]);
    assert!(out.status.success(), "{out:?}\n{}", g[0].log());
    assert!(eventually(Duration::from_secs(10), || ring_table(&g[1]).contains("127.0.10.1:7946")).is_some(), "{}", ring_table(&g[1]));
}

/// An authority that ran alone, with a ring table of its own, joins a
/// group that has none: it offers its table, which becomes the group's,
/// and an authority that joins next takes it from the group.
#[test]
fn an_authority_joining_a_group_without_a_ring_table_offers_its_own() {
    let etcd = EtcdCluster::start(3);
    let mut alone = Authority::start_with(&[("example.test.zone", ZONE)], POOL, "token = \"t0ken\"");
    for m in ["127.0.10.1:7946", "127.0.10.2:7946"] {
        let out = cli(&alone, &["ring", "announce", m]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(alone.stop().success());
    let mut text = std::fs::read_to_string(&alone.config).unwrap();
    text.push_str(&format!("\n{}", etcd.section("/vnamed-test/")));
    std::fs::write(&alone.config, text).unwrap();
    alone.spawn();
    assert!(eventually(Duration::from_secs(10), || available(&alone) == Some(true)).is_some(), "{}", alone.log());

    let config = format!("{}\n{POOL}", etcd.section("/vnamed-test/"));
    let next = Authority::start_with(&[("example.test.zone", ZONE)], &config, "token = \"t0ken\"");
    let has_both = |a: &Authority| {
        let t = ring_table(a);
        t.contains("ring (2 members)") && t.contains("127.0.10.1:7946") && t.contains("127.0.10.2:7946")
    };
    assert!(eventually(Duration::from_secs(10), || has_both(&next)).is_some(), "{}\n{}", ring_table(&next), next.log());
    assert!(has_both(&alone), "{}", ring_table(&alone));
    // And it is the group's: a death told to the newcomer is applied at both.
    let out = cli(&next, &["ring", "delete", "127.0.10.1:7946", "--reporter", "127.0.10.2:7946"]);
    assert!(out.status.success(), "{out:?}\n{}", next.log());
    assert!(all_answer(&[alone, next], "127.0.10.2"));
}
