//! Status reports over gRPC: a token is required when configured, bad
//! reports are refused whole with a status that says why (and counted),
//! good ones move the answer by policy, and reports that stop make a member
//! unknown after `stale_after`.

mod common;

use std::time::Duration;

use tonic::Code;
use vnamed::grpc::Bearer;
use vnamed::grpc::v1::status_client::StatusClient;
use vnamed::grpc::v1::{MemberReport, ReportBatch};

use common::{Authority, ZONE, eventually, member_report};

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
policy = "least-loaded"
select = "best"
stale_after = "1s"
fallback = "servfail"
members = [ { id = "web1", address = "127.0.10.1" },
            { id = "web2", address = "127.0.10.2" },
            { id = "web3", address = "127.0.10.3" } ]
"#;

fn report(member: &str, up: bool, load: f64) -> MemberReport {
    member_report("www.example.test.", member, up, &[("load", load)])
}

fn batch(reports: Vec<MemberReport>) -> ReportBatch {
    ReportBatch { source: "test".into(), reports }
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_steer_the_answer_and_bad_ones_change_nothing() {
    let a = tokio::task::spawn_blocking(|| Authority::in_process_with(&[("example.test.zone", ZONE)], POOL, "token = \"s3cret\""))
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut anonymous = StatusClient::with_interceptor(channel.clone(), Bearer::new(None).unwrap());
    let mut wrong = StatusClient::with_interceptor(channel.clone(), Bearer::new(Some("guess")).unwrap());
    let mut client = StatusClient::with_interceptor(channel, Bearer::new(Some("s3cret")).unwrap());
    let dig = |args: &'static str| {
        let a = &a;
        a.dig(args).trim().to_owned()
    };

    let good = batch(vec![report("web1", true, 0.9), report("web2", true, 0.2), report("web3", true, 0.5)]);
    assert_eq!(anonymous.report(good.clone()).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(wrong.report(good.clone()).await.unwrap_err().code(), Code::Unauthenticated);
    let reply = client.report(good).await.unwrap().into_inner();
    assert_eq!(reply.accepted, 3);
    assert_eq!(dig("www.example.test A +short"), "127.0.10.2");

    // Refused whole: one bad report spoils the batch, and nothing is stored.
    let mut nan = report("web3", true, 0.0);
    nan.metrics.insert("load".into(), f64::NAN);
    let e = client.report(batch(vec![report("web3", true, 0.0), nan])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("report 1: metric \"load\" is NaN"), "{}", e.message());
    let e = client.report(batch(vec![report("web3", true, 0.0), report("web9", true, 0.0)])).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("has no member web9"), "{}", e.message());
    let mut future = report("web3", true, 0.0);
    future.observed_unix_ms = vnamed::clock::unix_ms() + 3_600_000;
    assert_eq!(client.report(batch(vec![future])).await.unwrap_err().code(), Code::InvalidArgument);
    // Oversized: refused by size before anything is decoded.
    let mut big = report("web3", true, 0.0);
    big.check = "x".repeat(17 << 20);
    let e = client.report(batch(vec![big])).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    assert_eq!(dig("www.example.test A +short"), "127.0.10.2", "refused batches changed nothing");

    // Draining takes a member out of new answers.
    assert!(a.cli(&["member", "www.example.test.", "web2", "--admin", "drain", "--token", "s3cret"]).status.success());
    assert_eq!(dig("www.example.test A +short"), "127.0.10.3");
    assert!(String::from_utf8(a.cli(&["status", "--token", "s3cret"]).stdout).unwrap().contains("draining"));
    assert!(a.cli(&["member", "www.example.test.", "web2", "--admin", "auto", "--token", "s3cret"]).status.success());
    assert_eq!(dig("www.example.test A +short"), "127.0.10.2");

    // A member reported down leaves the answer.
    client.report(batch(vec![report("web2", false, 0.2)])).await.unwrap();
    assert_eq!(dig("www.example.test A +short"), "127.0.10.3");

    // Reports stop: everyone becomes unknown after stale_after, and the fallback answers.
    let took = tokio::task::spawn_blocking(move || {
        let r = eventually(Duration::from_secs(3), || a.dig("www.example.test A").contains("status: SERVFAIL"));
        let status = String::from_utf8(a.cli(&["status", "--token", "s3cret"]).stdout).unwrap();
        (r, status, a)
    })
    .await
    .unwrap();
    assert!(took.0.is_some(), "stale members leave the answer");
    assert!(took.1.contains("unknown (stale)"), "{}", took.1);
    let metrics = reqwest_metrics(&took.2);
    assert!(metrics.contains("vnamed_report_batches_refused_total{reason=\"unauthenticated\"} 2"), "{metrics}");
    assert!(metrics.contains("vnamed_report_batches_refused_total{reason=\"bad_metric\"} 1"), "{metrics}");
    assert!(metrics.contains("vnamed_report_batches_refused_total{reason=\"unknown_member\"} 1"), "{metrics}");
    assert!(metrics.contains("vnamed_reports_accepted_total 4"), "{metrics}");
    assert!(metrics.contains("vnamed_report_to_answer_seconds_count 2"), "two reports changed the answer: {metrics}");
    assert!(metrics.contains("vnamed_pool_responses_total{pool=\"www.example.test.\",rcode=\"NOERROR\"}"), "{metrics}");
    assert!(metrics.contains("vnamed_pool_responses_total{pool=\"www.example.test.\",rcode=\"SERVFAIL\"}"), "{metrics}");
}

/// The admin CLI without the token is refused.
#[test]
fn admin_calls_need_the_token_too() {
    let a = Authority::in_process_with(&[("example.test.zone", ZONE)], POOL, "token = \"s3cret\"");
    let out = a.cli(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a valid credential is required"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(a.cli(&["status", "--token", "s3cret"]).status.success());
}

fn reqwest_metrics(a: &Authority) -> String {
    common::scrape((a.ip, a.metrics))
}

/// The streaming form: one reply per batch, a refused batch does not end
/// the stream, and a client that vanishes mid-stream leaves the authority
/// serving.
#[tokio::test(flavor = "multi_thread")]
async fn report_stream_replies_per_batch_and_survives_a_vanishing_client() {
    let a = tokio::task::spawn_blocking(|| Authority::in_process(&[("example.test.zone", ZONE)], POOL)).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut client = StatusClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client.report_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(batch(vec![report("web1", true, 0.9), report("web2", true, 0.1), report("web3", true, 0.5)])).await.unwrap();
    let r = replies.message().await.unwrap().unwrap();
    assert_eq!((r.accepted, r.code), (3, 0));
    let mut nan = report("web2", true, 0.0);
    nan.metrics.insert("load".into(), f64::NAN);
    tx.send(batch(vec![nan])).await.unwrap();
    let r = replies.message().await.unwrap().unwrap();
    assert_eq!(r.code, Code::InvalidArgument as i32);
    assert!(r.error.contains("NaN"), "{r:?}");
    tx.send(batch(vec![report("web2", true, 0.95)])).await.unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().accepted, 1, "the stream goes on after a refusal");
    let a = tokio::task::spawn_blocking(move || {
        assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.3");
        a
    })
    .await
    .unwrap();
    // Vanish mid-stream: a batch sent, the connection dropped without waiting.
    tx.send(batch(vec![report("web1", true, 0.0)])).await.unwrap();
    drop(replies);
    drop(tx);
    drop(client);
    tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(200));
        let out = a.dig("www.example.test A");
        assert!(out.contains("status: NOERROR"), "still serving: {out}");
        assert!(a.cli(&["status"]).status.success(), "still administrable");
    })
    .await
    .unwrap();
}

/// Watch streams a pool's live servers in order: at once, then on each
/// change (the dispatcher follows a pool this way).
#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_the_order_as_it_changes() {
    use vnamed::grpc::v1::PoolRequest;
    use vnamed::grpc::v1::admin_client::AdminClient;
    let a = tokio::task::spawn_blocking(|| Authority::in_process(&[("example.test.zone", ZONE)], POOL)).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut status = StatusClient::new(channel.clone());
    status.report(batch(vec![report("web1", true, 0.5), report("web2", true, 0.1), report("web3", true, 0.9)])).await.unwrap();
    let mut admin = AdminClient::new(channel);
    let mut stream = admin.watch(PoolRequest { pool: "www.example.test.".into() }).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    assert_eq!(first.servers, ["127.0.10.2", "127.0.10.1", "127.0.10.3"]);
    assert_eq!(first.policy, "least-loaded");
    status.report(batch(vec![report("web1", true, 0.5), report("web2", false, 0.1), report("web3", true, 0.9)])).await.unwrap();
    assert_eq!(next(&mut stream).await.servers, ["127.0.10.1", "127.0.10.3"]);
    let unknown = admin.watch(PoolRequest { pool: "nope.example.test.".into() }).await;
    assert_eq!(unknown.err().map(|s| s.code()), Some(tonic::Code::NotFound));
}

async fn next(s: &mut tonic::Streaming<vnamed::grpc::v1::WatchReply>) -> vnamed::grpc::v1::WatchReply {
    tokio::time::timeout(Duration::from_secs(3), s.message()).await.expect("a reply in time").unwrap().unwrap()
}

/// `fallback = "all"`: with every member reported down, each answer
/// carries every member not taken out by hand, whatever `answers` says.
#[tokio::test(flavor = "multi_thread")]
async fn fallback_all_answers_every_member_whatever_answers_says() {
    const ALL: &str = r#"
[[pool]]
name = "www.example.test."
answers = 1
fallback = "all"
members = [ { id = "web1", address = "127.0.10.1" },
            { id = "web2", address = "127.0.10.2" },
            { id = "web3", address = "127.0.10.3" } ]
"#;
    let a = tokio::task::spawn_blocking(|| Authority::in_process(&[("example.test.zone", ZONE)], ALL)).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut client = StatusClient::with_interceptor(channel, Bearer::new(None).unwrap());
    let answer = |a: &Authority| {
        let mut lines: Vec<String> = a.dig("www.example.test A +short").lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    client.report(batch(vec![report("web1", true, 0.1), report("web2", true, 0.2), report("web3", true, 0.3)])).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || answer(&a).len() == 1).is_some(), "{:?}", answer(&a));
    client.report(batch(vec![report("web1", false, 0.1), report("web2", false, 0.2), report("web3", false, 0.3)])).await.unwrap();
    let every = vec!["127.0.10.1".to_owned(), "127.0.10.2".into(), "127.0.10.3".into()];
    assert!(eventually(Duration::from_secs(2), || answer(&a) == every).is_some(), "{:?}", answer(&a));
    assert!(a.cli(&["member", "www.example.test.", "web2", "--admin", "down"]).status.success());
    let without_web2 = vec!["127.0.10.1".to_owned(), "127.0.10.3".into()];
    assert!(eventually(Duration::from_secs(2), || answer(&a) == without_web2).is_some(), "{:?}", answer(&a));
}

/// A batch larger than the gRPC message limit is refused before any
/// handler sees it, and still counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_too_large_to_decode_is_refused_and_counted() {
    let a = tokio::task::spawn_blocking(|| Authority::in_process(&[("example.test.zone", ZONE)], POOL)).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut c = StatusClient::with_interceptor(channel, Bearer::new(None).unwrap()).max_encoding_message_size(64 << 20);
    let mut big = report("web1", true, 0.5);
    big.check = "x".repeat(100);
    // About 20 MB: over the 16 MB limit.
    let e = c.report(batch(vec![big; 150_000])).await.expect_err("refused");
    assert_eq!(e.code(), Code::OutOfRange, "{e}");
    let metrics = reqwest_metrics(&a);
    assert!(metrics.contains("vnamed_report_batches_refused_total{reason=\"too_large\"} 1"), "{metrics}");
}
