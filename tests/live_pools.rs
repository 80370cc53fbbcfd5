//! Pools changed while they serve: a `dig` loop during repeated policy
//! switches sees no SERVFAIL and no empty answer; pausing freezes the
//! answer; members are added and removed live; `pool servers` lists the
//! policy's order.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vnamed::grpc::Bearer;
use vnamed::grpc::v1::ReportBatch;
use vnamed::grpc::v1::status_client::StatusClient;

use common::{Authority, ZONE};

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
policy = "least-loaded"
select = "best"
answers = 1
members = [ { id = "web1", address = "127.0.10.1", weight = 1 },
            { id = "web2", address = "127.0.10.2", weight = 3 },
            { id = "web3", address = "127.0.10.3", weight = 2 } ]
"#;

async fn report(a: &Authority, loads: &[(&str, f64)]) {
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut c = StatusClient::with_interceptor(channel, Bearer::new(None).unwrap());
    let reports = loads
        .iter()
        .map(|(m, l)| common::member_report("www.example.test.", m, true, &[("load", *l), ("connections", 10.0 * l)]))
        .collect();
    c.report(ReportBatch { source: "test".into(), reports }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_switches_never_give_an_empty_or_failed_answer() {
    let a = Arc::new(tokio::task::spawn_blocking(|| Authority::in_process(&[("example.test.zone", ZONE)], POOL)).await.unwrap());
    report(&a, &[("web1", 0.3), ("web2", 0.6), ("web3", 0.9)]).await;
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");

    // A bounded dig loop runs while the policy flips back and forth.
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                let out = a.dig("www.example.test A");
                n += 1;
                if !out.contains("status: NOERROR") || !out.contains("ANSWER: 1,") {
                    bad.push(out);
                }
            }
            (n, bad)
        })
    };
    let policies = ["priority", "weighted", "round-robin", "fewest-connections", "least-loaded", "closest", "fastest"];
    for i in 0..28 {
        let p = policies[i % policies.len()];
        let out = tokio::task::spawn_blocking({
            let a = a.clone();
            move || a.cli(&["policy", "www.example.test.", p])
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let (n, bad) = looper.join().unwrap();
    assert!(n >= 20, "the loop ran ({n} queries)");
    assert!(bad.is_empty(), "{} of {n} answers were failed or empty, e.g.:\n{}", bad.len(), bad[0]);

    // weighted prefers web2 (weight 3); the order of all servers follows the policy.
    assert!(a.cli(&["policy", "www.example.test.", "weighted"]).status.success());
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
    let servers = String::from_utf8(a.cli(&["pool", "servers", "www.example.test."]).stdout).unwrap();
    assert_eq!(servers, "127.0.10.2\n127.0.10.3\n127.0.10.1\n");
    let bad = a.cli(&["policy", "www.example.test.", "fastest-please"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown variant"), "{bad:?}");

    // Paused: reports are taken but the answer stays; resumed: it moves.
    assert!(a.cli(&["policy", "www.example.test.", "least-loaded"]).status.success());
    assert!(a.cli(&["pool", "pause", "www.example.test."]).status.success());
    report(&a, &[("web1", 0.9), ("web2", 0.6), ("web3", 0.1)]).await;
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");
    assert!(a.cli(&["pool", "resume", "www.example.test."]).status.success());
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.3");
    let explain = String::from_utf8(a.cli(&["status", "--explain", "www.example.test"]).stdout).unwrap();
    let rows: Vec<&str> = explain.lines().filter(|l| l.contains("web")).collect();
    assert!(rows[0].trim_start().starts_with("1    web3") && rows[0].contains("0.100") && rows[0].contains("load=0.1"), "{explain}");
    assert!(rows[2].trim_start().starts_with("3    web1") && rows[2].contains("0.900"), "{explain}");

    // Members added and removed while serving.
    assert!(a.cli(&["pool", "add-member", "www.example.test.", "web4", "127.0.10.4"]).status.success());
    assert!(a.cli(&["policy", "www.example.test.", "priority"]).status.success());
    assert!(a.cli(&["pool", "remove-member", "www.example.test.", "web1"]).status.success());
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
    let servers = String::from_utf8(a.cli(&["pool", "servers", "www.example.test."]).stdout).unwrap();
    assert_eq!(servers, "127.0.10.2\n127.0.10.3\n127.0.10.4\n");
    // A formula over named metrics, given live: connections are 10 x load here.
    report(&a, &[("web2", 0.8), ("web3", 0.2), ("web4", 0.5)]).await;
    let out = a.cli(&["policy", "www.example.test.", "formula", "--formula", "1 - load + connections / 100"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2", "1 - 0.8 + 0.08 is the lowest score");
    let bad = a.cli(&["policy", "www.example.test.", "formula", "--formula", "load +"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("formula \"load +\""), "{bad:?}");
    let dup = a.cli(&["pool", "add-member", "www.example.test.", "web4", "127.0.10.5"]);
    assert!(!dup.status.success() && String::from_utf8_lossy(&dup.stderr).contains("already has a member web4"));
}
