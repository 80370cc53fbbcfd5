//! Identifiers from outside are data, never zone text: member ids that
//! carry a newline and a record, a space, a managed block's end marker,
//! 10 kB, or another member's address are refused over gRPC with a short
//! INVALID_ARGUMENT; the zone file stays what `named-checkzone` and a
//! restart agree on, and no record of the caller's making is ever served.

mod common;

use tonic::Code;
use vnamed::grpc::Bearer;
use vnamed::grpc::v1::admin_client::AdminClient;
use vnamed::grpc::v1::status_client::StatusClient;
use vnamed::grpc::v1::{AddMemberRequest, ReportBatch, SetMemberRequest};

use common::{Authority, ZONE};

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
policy = "least-loaded"
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "127.0.10.2" } ]
"#;

async fn admin(a: &Authority) -> AdminClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>> {
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    AdminClient::with_interceptor(channel, Bearer::new(None).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_member_ids_never_reach_the_zone_file() {
    let mut a = tokio::task::spawn_blocking(|| Authority::start(&[("example.test.zone", ZONE)], POOL)).await.unwrap();
    let mut c = admin(&a).await;
    let add =
        |id: &str, address: &str| AddMemberRequest { pool: "www.example.test.".into(), id: id.into(), address: address.into(), weight: 1 };
    let hostile = [
        ("web9\nevil 60 IN TXT \"owned\"", "127.0.10.9"),
        ("web 9", "127.0.10.9"),
        ("web9\n; vnamed:end www.example.test.", "127.0.10.9"),
        (&"w".repeat(10_000), "127.0.10.9"),
        ("", "127.0.10.9"),
        ("web9", "127.0.10.1"), // web1's address
        ("web9", "0.0.0.0"),
        ("web9", "224.0.0.1"),
    ];
    for (id, address) in hostile {
        let e = c.add_member(add(id, address)).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{:.80}: {e:.200}", id.escape_debug());
        assert!(e.message().len() < 200 && !e.message().contains('\n'), "short, one line: {:.300}", e.message());
    }
    // Setting or removing a hostile id is refused the same way, never echoed whole.
    let e = c
        .set_member(SetMemberRequest {
            pool: "www.example.test.".into(),
            member: "x".repeat(10_000),
            admin: Some("down".into()),
            weight: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "not RESOURCE_EXHAUSTED: {e:.200}");

    // A report naming a hostile member is refused as malformed.
    let channel = tonic::transport::Endpoint::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut s = StatusClient::with_interceptor(channel, Bearer::new(None).unwrap());
    let bad = common::member_report("www.example.test.", "web1\nevil 60 IN TXT \"x\"", true, &[("load", 0.1)]);
    let e = s.report(ReportBatch { source: "test".into(), reports: vec![bad] }).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // A good change still writes the file; it holds nothing of the above.
    c.add_member(add("web3", "127.0.10.3")).await.unwrap();
    let written = common::eventually(std::time::Duration::from_secs(5), || a.zone_text("example.test.zone").contains("vnamed:member web3"));
    assert!(written.is_some(), "{}", a.zone_text("example.test.zone"));
    let text = a.zone_text("example.test.zone");
    assert!(!text.contains("evil") && !text.contains("owned") && !text.contains("web 9"), "{text}");
    common::named_checkzone("example.test.", &a.zones_dir().join("example.test.zone")).unwrap();

    // After a restart nothing of the caller's making is served.
    let status = tokio::task::spawn_blocking(move || {
        let status = a.stop();
        assert!(a.log().contains("zone files and state are current"), "{}", a.log());
        a.spawn();
        (status, a)
    })
    .await
    .unwrap();
    let (status, a) = status;
    assert!(status.success());
    assert!(a.dig("evil.example.test TXT").contains("status: NXDOMAIN"), "{}", a.dig("evil.example.test TXT"));
    assert_eq!(a.dig("www.example.test A +short").lines().count(), 1);
}
