//! Quorum health with real parts: one member watched from three vantage
//! points (three `vnamed monitor`s, each with its own TCP check on the
//! member), an authority whose pool wants `quorum = 2`, and `dig`. One
//! vantage point losing the member changes no answer (and `vnamed status
//! --explain` says who sees what); two take it out; when they see it
//! again it comes back.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use common::{Authority, Proc, ZONE, eventually, tcp_monitor, unique_ip};

/// The `seen by:` line of web1 in `vnamed status --explain`.
fn seen_by(a: &Authority) -> String {
    let out = a.cli(&["status", "--explain", "www.example.test.", "--token", "t0ken"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().skip_while(|l| !l.contains(" web1 "));
    lines.nth(1).filter(|l| l.contains("seen by:")).unwrap_or_default().to_owned()
}

/// The address each of ten answers leads with.
fn answers(a: &Authority) -> Vec<String> {
    a.dig(&"www.example.test A +short ".repeat(10)).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn one_vantage_point_cannot_take_a_member_out_and_two_can() {
    let web1 = unique_ip();
    let web2 = unique_ip();
    // Each vantage point checks web1 through a listener of its own, so the
    // test can make one of them lose it while the others still see it.
    let views: Vec<Ipv4Addr> = (0..3).map(|_| unique_ip()).collect();
    let mut listeners: Vec<Option<TcpListener>> = views.iter().map(|ip| Some(TcpListener::bind((*ip, 8080)).unwrap())).collect();
    let pool = format!(
        "[[pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\nquorum = 2\nstale_after = \"3s\"\n\
         members = [ {{ id = \"web1\", address = \"{web1}\" }}, {{ id = \"web2\", address = \"{web2}\" }} ]\n"
    );
    let a = Authority::start_with(&[("example.test.zone", ZONE)], &pool, "token = \"t0ken\"");
    let dir = tempfile::tempdir().unwrap();
    let _monitors: Vec<Proc> = (0..3).map(|i| tcp_monitor(dir.path(), &format!("m{}", i + 1), &a, views[i], Some("web1"), 1)).collect();
    let only = |who: Ipv4Addr| move |got: &[String]| got.len() == 10 && got.iter().all(|g| *g == who.to_string());

    let all_up = |s: &str| ["\"m1\" up", "\"m2\" up", "\"m3\" up"].iter().all(|v| s.contains(v));
    assert!(eventually(Duration::from_secs(20), || all_up(&seen_by(&a))).is_some(), "{}\n{}", seen_by(&a), a.log());
    assert!(only(web1)(&answers(&a)), "{:?}", answers(&a));
    let status = String::from_utf8(a.cli(&["status", "--explain", "www.example.test.", "--token", "t0ken"]).stdout).unwrap();
    assert!(status.contains("quorum=2"), "{status}");

    // m1 loses web1: its view says so, and the answers do not move.
    listeners[0] = None;
    assert!(eventually(Duration::from_secs(10), || seen_by(&a).contains("\"m1\" down")).is_some(), "{}", seen_by(&a));
    for _ in 0..5 {
        assert!(only(web1)(&answers(&a)), "one vantage point is no quorum: {:?}\n{}", answers(&a), seen_by(&a));
    }

    // m2 loses it too: two of three, web1 is out and web2 answers.
    listeners[1] = None;
    assert!(eventually(Duration::from_secs(10), || only(web2)(&answers(&a))).is_some(), "{:?}\n{}", answers(&a), seen_by(&a));
    let seen = seen_by(&a);
    assert!(seen.contains("\"m1\" down") && seen.contains("\"m2\" down") && seen.contains("\"m3\" up"), "{seen}");

    // m1 sees it again: with m3, two say up, and it is back.
    listeners[0] = Some(TcpListener::bind((views[0], 8080)).unwrap());
    assert!(eventually(Duration::from_secs(10), || only(web1)(&answers(&a))).is_some(), "{:?}\n{}", answers(&a), seen_by(&a));
}
