//! Shares end to end with real parts: three TCP backends, one `vnamed
//! monitor` per backend (a tcp check), an authority with a weighted pool,
//! and `dig`. Over a thousand queries each member leads its share of the
//! answers (as `vnamed status --explain` computes it) to within two
//! points; a backend that dies leaves at once and the others share its
//! part; back, it ramps up again over its slow start.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use common::{Authority, Proc, ZONE, eventually, tcp_monitor, unique_ip};

/// Each member's share as `vnamed status --explain` shows it, by address.
fn explained(a: &Authority) -> HashMap<String, f64> {
    let out = a.cli(&["status", "--explain", "www.example.test.", "--token", "t0ken"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(" web"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let share = cols.iter().find(|c| c.ends_with('%'))?.trim_end_matches('%').parse::<f64>().ok()?;
            Some((cols[2].to_owned(), share / 100.0))
        })
        .collect()
}

/// The address leading each of `n` answers, counted: `dig` asks a hundred
/// questions per run.
fn draw(a: &Authority, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n / 100 {
        let out = a.dig(&"www.example.test A +short ".repeat(100));
        let firsts: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(firsts.len(), 100, "one address per answer (answers = 1):\n{out}");
        for f in firsts {
            *counts.entry(f.trim().to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

fn assert_close(counts: &HashMap<String, usize>, shares: &HashMap<String, f64>, n: usize) {
    for (address, share) in shares {
        let got = *counts.get(address).unwrap_or(&0) as f64 / n as f64;
        assert!((got - share).abs() <= 0.02, "{address}: {got:.3} of {n} answers, its share {share:.3}\n{counts:?} {shares:?}");
    }
    let unknown: Vec<&String> = counts.keys().filter(|a| !shares.contains_key(*a)).collect();
    assert!(unknown.is_empty(), "answered with members that have no share: {unknown:?}");
}

#[test]
fn each_member_leads_its_share_of_a_thousand_answers() {
    let backends: Vec<Ipv4Addr> = (0..3).map(|_| unique_ip()).collect();
    let mut listeners: Vec<Option<TcpListener>> = backends.iter().map(|ip| Some(TcpListener::bind((*ip, 8080)).unwrap())).collect();
    let members: Vec<String> = backends
        .iter()
        .zip([1, 2, 5])
        .enumerate()
        .map(|(i, (ip, w))| format!("{{ id = \"web{}\", address = \"{ip}\", weight = {w} }}", i + 1))
        .collect();
    let pool = format!(
        "[[pool]]\nname = \"www.example.test.\"\npolicy = \"weighted\"\nstale_after = \"3s\"\nslow_start = \"3s\"\nmembers = [{}]\n",
        members.join(", ")
    );
    let a = Authority::start_with(&[("example.test.zone", ZONE)], &pool, "token = \"t0ken\"");
    let dir = tempfile::tempdir().unwrap();
    let _monitors: Vec<Proc> = (0..3).map(|i| tcp_monitor(dir.path(), &format!("web{}", i + 1), &a, backends[i], None, 2)).collect();
    let ip = |i: usize| backends[i].to_string();

    // Every monitor reporting, the shares are the weights': 1/8, 2/8, 5/8.
    let want = |s: &HashMap<String, f64>, w: [f64; 3]| (0..3).all(|i| s.get(&ip(i)).is_some_and(|x| (x - w[i]).abs() < 0.001));
    let steady = [0.125, 0.25, 0.625];
    assert!(eventually(Duration::from_secs(20), || want(&explained(&a), steady)).is_some(), "shares {:?}\n{}", explained(&a), a.log());
    let shares = explained(&a);
    assert_close(&draw(&a, 1000), &shares, 1000);

    // web3 dies: out at once, and web1 and web2 share its part, 1:2.
    listeners[2] = None;
    assert!(eventually(Duration::from_secs(5), || want(&explained(&a), [1.0 / 3.0, 2.0 / 3.0, 0.0])).is_some(), "{:?}", explained(&a));
    let mut without = explained(&a);
    without.remove(&ip(2));
    assert_close(&draw(&a, 600), &without, 600);

    // Back: it starts small and ramps to its share over the slow start.
    listeners[2] = Some(TcpListener::bind((backends[2], 8080)).unwrap());
    let first = eventually(Duration::from_secs(5), || explained(&a).get(&ip(2)).is_some_and(|s| *s > 0.0));
    assert!(first.is_some(), "web3 back in: {:?}", explained(&a));
    let ramping = explained(&a)[&ip(2)];
    assert!(ramping < 0.5, "it starts below its share of 0.625: {ramping}");
    assert!(eventually(Duration::from_secs(10), || want(&explained(&a), steady)).is_some(), "ramped: {:?}", explained(&a));
    let status = String::from_utf8(a.cli(&["status", "--token", "t0ken"]).stdout).unwrap();
    assert!(status.contains("share=62.5%"), "{status}");
}

/// Reports for web1 and web2 whose loads swap every second, observed over
/// the last `secs` seconds.
async fn seesaw(a: &Authority, secs: i64) {
    use vnamed::grpc::Bearer;
    use vnamed::grpc::v1::ReportBatch;
    use vnamed::grpc::v1::status_client::StatusClient;
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut c = StatusClient::with_interceptor(channel, Bearer::new(Some("t0ken")).unwrap());
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for s in 0..secs {
        let (l1, l2) = if s % 2 == 0 { (0.2, 0.8) } else { (0.8, 0.2) };
        let mut reports = vec![
            common::member_report("www.example.test.", "web1", true, &[("load", l1)]),
            common::member_report("www.example.test.", "web2", true, &[("load", l2)]),
        ];
        for r in &mut reports {
            r.observed_unix_ms = now_ms - (secs - s) * 1000;
        }
        c.report(ReportBatch { source: "test".into(), reports }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_replays_recent_reports_against_another_policy_and_changes_nothing() {
    let pool = "[[pool]]\nname = \"www.example.test.\"\npolicy = \"least-loaded\"\nselect = \"best\"\nstale_after = \"1h\"\n\
                members = [ { id = \"web1\", address = \"127.0.10.1\" }, { id = \"web2\", address = \"127.0.10.2\", weight = 3 } ]\n";
    let a = tokio::task::spawn_blocking(move || Authority::in_process_with(&[("example.test.zone", ZONE)], pool, "token = \"t0ken\""))
        .await
        .unwrap();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--token", "t0ken"]);
        a.cli(&all)
    };
    let empty = cli(&["policy", "www.example.test.", "weighted", "--dry-run"]);
    assert!(String::from_utf8_lossy(&empty.stdout).contains("nothing to replay"), "{empty:?}");

    seesaw(&a, 20).await;
    let out = cli(&["policy", "www.example.test.", "weighted", "--dry-run", "--select", "shares"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("(40 reports)") && text.contains("nothing changes"), "{text}");
    let row = |label: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row:\n{text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (live, proposed) = (row("live "), row("proposed "));
    assert_eq!(&live[1..4], ["least-loaded", "(select", "best)"], "{text}");
    let live_changes: u32 = live[4].parse().unwrap();
    assert!(live_changes >= 4, "the best answer flips with the loads (reports straddling a second may hold it one more): {text}");
    assert_eq!(&proposed[1..5], ["weighted", "(select", "shares)", "0"], "weights hold still: {text}");
    assert_eq!(&proposed[5..], ["75.0%", "web2"], "{text}");
    assert!(text.contains("100.0% -> 25.0%") || text.contains("0.0% -> 25.0%"), "the timeline, side by side: {text}");

    // Nothing changed: the live policy is still the pool's.
    let status = String::from_utf8(cli(&["status", "--explain", "www.example.test."]).stdout).unwrap();
    assert!(status.contains("policy=LeastLoaded select=best") || status.contains("select=best"), "{status}");
    assert!(!status.contains("Weighted"), "{status}");
    // A formula without one is refused, and so is a policy that does not exist.
    let bad = cli(&["policy", "www.example.test.", "formula", "--dry-run"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no formula"), "{bad:?}");
    let bad = cli(&["policy", "www.example.test.", "fastest-please", "--dry-run"]);
    assert!(!bad.status.success(), "{bad:?}");
}

/// The TTL an answer carries, as `dig` prints it.
fn ttl(a: &Authority) -> Option<u32> {
    a.dig("www.example.test A +noall +answer").split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_ttl_adapts_and_a_member_back_by_hand_ramps_up_with_time_alone() {
    let pool = "[[pool]]\nname = \"www.example.test.\"\npolicy = \"weighted\"\nttl_min = 1\nttl_max = 8\nslow_start = \"4s\"\n\
                members = [ { id = \"web1\", address = \"127.0.10.1\" }, { id = \"web2\", address = \"127.0.10.2\" } ]\n";
    let a = Authority::start_with(&[("example.test.zone", ZONE)], pool, "token = \"t0ken\"");
    // Nothing moves: the TTL doubles each time it has held that long, to ttl_max.
    let mut seen = Vec::new();
    let grew = eventually(Duration::from_secs(20), || {
        let t = ttl(&a);
        if seen.last() != Some(&t) {
            seen.push(t);
        }
        t == Some(8)
    });
    assert!(grew.is_some(), "TTLs seen: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "it only grew: {seen:?}");
    // An operator takes web1 out: the answer moves, the TTL is short again.
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--token", "t0ken"]);
        assert!(a.cli(&all).status.success(), "{all:?}");
    };
    cli(&["member", "www.example.test.", "web1", "--admin", "down"]);
    assert_eq!(ttl(&a), Some(1), "a moving answer carries ttl_min");
    // Back by hand, with no monitor reporting: it ramps with time alone.
    cli(&["member", "www.example.test.", "web1", "--admin", "auto"]);
    let web1 = || explained(&a).get("127.0.10.1").copied().unwrap_or(0.0);
    let first = web1();
    assert!(first > 0.0 && first < 0.2, "it starts small: {first}");
    let ramped = eventually(Duration::from_secs(10), || (web1() - 0.5).abs() < 1e-3);
    assert!(ramped.is_some_and(|d| d >= Duration::from_secs(2)), "full share after its slow start, not at once: {ramped:?} {}", web1());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_reports_set_the_shares_even_when_they_are_close_to_an_equal_split() {
    use vnamed::grpc::Bearer;
    use vnamed::grpc::v1::ReportBatch;
    use vnamed::grpc::v1::status_client::StatusClient;
    let pool = "[[pool]]\nname = \"www.example.test.\"\npolicy = \"least-loaded\"\nstale_after = \"1h\"\nmembers = [ \
                { id = \"web1\", address = \"127.0.10.1\" }, { id = \"web2\", address = \"127.0.10.2\" }, { id = \"web3\", address = \"127.0.10.3\" } ]\n";
    let a = tokio::task::spawn_blocking(move || Authority::in_process_with(&[("example.test.zone", ZONE)], pool, "token = \"t0ken\""))
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut c = StatusClient::with_interceptor(channel, Bearer::new(Some("t0ken")).unwrap());
    let reports = [("web1", 0.2), ("web2", 0.3), ("web3", 0.4)]
        .iter()
        .map(|(id, load)| common::member_report("www.example.test.", id, true, &[("load", *load)]))
        .collect();
    c.report(ReportBatch { source: "test".into(), reports }).await.unwrap();
    // Spare capacity 0.8 / 0.7 / 0.6 of 2.1: 38.1%, 33.3%, 28.6%.
    let want = [("127.0.10.1", 0.8 / 2.1), ("127.0.10.2", 0.7 / 2.1), ("127.0.10.3", 0.6 / 2.1)];
    let a = tokio::task::spawn_blocking(move || {
        let settled = eventually(Duration::from_secs(10), || {
            let s = explained(&a);
            want.iter().all(|(ip, w)| s.get(*ip).is_some_and(|x| (x - w).abs() < 0.001))
        });
        assert!(settled.is_some(), "shares {:?}, want {want:?}", explained(&a));
        assert_close(&draw(&a, 2000), &explained(&a), 2000);
        a
    })
    .await
    .unwrap();
    drop(a);
}
