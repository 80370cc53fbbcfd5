//! The status pipeline end to end with real parts: three TCP backends on
//! their own loopback addresses, one `vnamed monitor` per backend (a tcp
//! check and pushed load), an authority, and `dig`. The answer follows the
//! least-loaded backend as pushed loads change; a killed backend leaves the
//! answers; brought back, it returns after the rise threshold.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use vnamed::grpc::Bearer;
use vnamed::grpc::v1::ReportBatch;
use vnamed::grpc::v1::status_client::StatusClient;

use common::{Authority, Proc, ZONE, eventually, member_report, spawn_role, unique_ip, wait_listening};

fn start_monitor(dir: &std::path::Path, host: &str, backend: Ipv4Addr, push: Ipv4Addr, authority: &Authority) -> Proc {
    spawn_role(
        dir,
        "monitor",
        host,
        &format!(
            r#"
[monitor]
host = "{host}"
report_to = ["{grpc}"]
token = "t0ken"
listen = "{push}:7500"
refresh = "500ms"

[[monitor.check]]
pool = "www.example.test."
kind = "tcp"
target = "{backend}:8080"
interval = "100ms"
timeout = "200ms"
rise = 3
fall = 1

[[monitor.check]]
pool = "www.example.test."
kind = "push"
interval = "2s"
"#,
            grpc = authority.grpc
        ),
    )
}

async fn push(ip: Ipv4Addr, load: f64) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ip}:7500")).unwrap().connect().await.unwrap();
    let mut c = StatusClient::with_interceptor(channel, Bearer::new(None).unwrap());
    let report = member_report("www.example.test.", "", true, &[("load", load), ("mailbox_size", 7.0)]);
    c.report(ReportBatch { source: "app".into(), reports: vec![report] }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_follow_monitored_backends() {
    let backends: Vec<Ipv4Addr> = (0..3).map(|_| unique_ip()).collect();
    let pushes: Vec<Ipv4Addr> = (0..3).map(|_| unique_ip()).collect();
    let mut listeners: Vec<Option<TcpListener>> = backends.iter().map(|ip| Some(TcpListener::bind((*ip, 8080)).unwrap())).collect();
    let members: Vec<String> =
        backends.iter().enumerate().map(|(i, ip)| format!("{{ id = \"web{}\", address = \"{ip}\" }}", i + 1)).collect();
    let pool = format!(
        "[[pool]]\nname = \"www.example.test.\"\npolicy = \"least-loaded\"\nselect = \"best\"\nstale_after = \"3s\"\nfallback = \"servfail\"\nmembers = [{}]\n",
        members.join(", ")
    );
    let a = tokio::task::spawn_blocking(move || Authority::start_with(&[("example.test.zone", ZONE)], &pool, "token = \"t0ken\""))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _monitors: Vec<Proc> = (0..3).map(|i| start_monitor(dir.path(), &format!("web{}", i + 1), backends[i], pushes[i], &a)).collect();
    let a = std::sync::Arc::new(a);
    let answer = {
        let a = a.clone();
        move || a.dig("www.example.test A +short").trim().to_owned()
    };
    let wait_for = |want: Ipv4Addr, within: Duration| {
        let answer = answer.clone();
        async move { tokio::task::spawn_blocking(move || eventually(within, || answer() == want.to_string())).await.unwrap() }
    };

    // Monitors come up and the pushed loads decide.
    for ip in pushes.clone() {
        tokio::task::spawn_blocking(move || wait_listening((ip, 7500).into(), Duration::from_secs(20))).await.unwrap();
    }
    for (ip, load) in pushes.iter().zip([0.9, 0.2, 0.5]) {
        push(*ip, load).await;
    }
    assert!(wait_for(backends[1], Duration::from_secs(5)).await.is_some(), "least loaded is web2; answer {:?}\n{}", answer(), a.log());

    // web2 gets busy: web3 is now the least loaded.
    push(pushes[1], 0.95).await;
    let took = wait_for(backends[2], Duration::from_secs(2)).await;
    assert!(took.is_some(), "answer follows pushed load; answer {:?}", answer());
    eprintln!("pushed load to answer: {:?}", took.unwrap());

    // Kill web3's listener: it leaves the answer (fall = 1).
    for (ip, load) in pushes.iter().zip([0.9, 0.95, 0.5]) {
        push(*ip, load).await;
    }
    listeners[2] = None;
    let took = wait_for(backends[0], Duration::from_secs(2)).await;
    assert!(took.is_some(), "killed backend leaves the answers; answer {:?}", answer());
    eprintln!("listener killed to answer: {:?}", took.unwrap());

    // Bring it back: it returns, but only after rise = 3 good probes.
    for (ip, load) in pushes.iter().zip([0.9, 0.95, 0.5]) {
        push(*ip, load).await;
    }
    listeners[2] = Some(TcpListener::bind((backends[2], 8080)).unwrap());
    let took = wait_for(backends[2], Duration::from_secs(2)).await.expect("returns after the rise threshold");
    assert!(took >= Duration::from_millis(200), "not before three probes at 100 ms ({took:?})");
    eprintln!("listener back to answer: {took:?}");

    let status = String::from_utf8(a.cli(&["status", "--token", "t0ken"]).stdout).unwrap();
    assert!(status.contains("web3") && status.contains("load=0.50"), "{status}");
}

/// The monitor as proxy pool element: it probes a legacy server that runs
/// no monitor (a check naming another member) and reports for it; it keeps
/// trying while the authority is down and catches up when it comes back.
#[test]
fn proxy_checks_and_an_authority_that_restarts() {
    let (legacy, own) = (unique_ip(), unique_ip());
    let _legacy = TcpListener::bind((legacy, 8080)).unwrap();
    let own_listener = TcpListener::bind((own, 8080)).unwrap();
    let pool = format!(
        "[[pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\nstale_after = \"2s\"\nfallback = \"servfail\"\n\
         members = [ {{ id = \"proxyhost\", address = \"{own}\" }}, {{ id = \"legacy\", address = \"{legacy}\" }} ]\n"
    );
    let mut a = Authority::start(&[("example.test.zone", ZONE)], &pool);
    let dir = tempfile::tempdir().unwrap();
    let _m = spawn_role(
        dir.path(),
        "monitor",
        "m",
        &format!(
            r#"
[monitor]
host = "proxyhost"
report_to = ["{grpc}"]
refresh = "200ms"
[[monitor.check]]
pool = "www.example.test."
kind = "tcp"
target = "{own}:8080"
interval = "100ms"
[[monitor.check]]
pool = "www.example.test."
member = "legacy"
kind = "tcp"
target = "{legacy}:8080"
interval = "100ms"
"#,
            grpc = a.grpc
        ),
    );
    let log = dir.path().join("m.log");
    let answer = |a: &Authority| a.dig("www.example.test A +short").trim().to_owned();
    let reported_up = |a: &Authority| String::from_utf8(a.cli(&["status"]).stdout).unwrap().lines().filter(|l| l.contains(" up ")).count();
    assert!(eventually(Duration::from_secs(3), || reported_up(&a) == 2).is_some(), "both reported up");
    assert_eq!(answer(&a), own.to_string());

    // The monitor's own host dies; the legacy server it probes from outside takes over.
    drop(own_listener);
    assert!(eventually(Duration::from_secs(2), || answer(&a) == legacy.to_string()).is_some(), "{}", answer(&a));

    // The authority goes away and comes back: it serves what it served
    // before at once (the members' state is kept in its state store), and
    // the monitor keeps retrying until it reports again.
    assert!(a.stop().success());
    std::thread::sleep(Duration::from_millis(700));
    a.spawn();
    assert_eq!(answer(&a), legacy.to_string(), "the answer from before the restart");
    assert!(String::from_utf8(a.cli(&["status"]).stdout).unwrap().contains("down"), "the member down before is down still");
    let reporting = || std::fs::read_to_string(&log).unwrap().contains("reporting again");
    assert!(eventually(Duration::from_secs(4), reporting).is_some(), "reports resume:\n{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(answer(&a), legacy.to_string());
    let monitor_log = std::fs::read_to_string(&log).unwrap();
    assert!(monitor_log.contains("retrying with backoff") && monitor_log.contains("reporting again"), "{monitor_log}");
}
