//! Authoritative behaviour seen through `dig`: AA, negative answers with the
//! SOA, referrals with glue, CNAME, REFUSED outside our zones, EDNS0, and
//! truncation followed by dig's retry over TCP.

mod common;

use common::{Authority, ZONE};

fn big_zone() -> String {
    let mut z = ZONE.to_owned();
    for i in 0..40 {
        z.push_str(&format!("big IN TXT \"record {i:02} padding padding padding padding padding\"\n"));
    }
    z
}

#[test]
fn answers_like_an_authority() {
    let a = Authority::in_process(&[("example.test.zone", &big_zone())], "");

    let out = a.dig("static.example.test A");
    assert!(out.contains("status: NOERROR") && out.contains("flags: qr aa"), "{out}");
    assert!(out.contains("192.0.2.10"), "{out}");

    let out = a.dig("nothere.example.test A");
    assert!(out.contains("status: NXDOMAIN") && out.contains("flags: qr aa"), "{out}");
    assert!(out.contains("AUTHORITY: 1") && out.contains("IN\tSOA"), "{out}");

    let out = a.dig("static.example.test AAAA");
    assert!(out.contains("status: NOERROR") && out.contains("ANSWER: 0") && out.contains("IN\tSOA"), "{out}");

    let out = a.dig("alias.example.test A");
    assert!(out.contains("CNAME\tstatic.example.test.") && out.contains("192.0.2.10"), "{out}");

    let out = a.dig("host.sub.example.test A +norecurse");
    assert!(out.contains("status: NOERROR") && !out.contains("flags: qr aa"), "referral is not authoritative: {out}");
    assert!(out.contains("AUTHORITY: 1") && out.contains("ns.sub.example.test.\t300\tIN\tA\t192.0.2.53"), "glue: {out}");

    let out = a.dig("mail.example.test MX");
    assert!(out.contains("ADDITIONAL: 2") && out.contains(&format!("ns1.example.test.\t300\tIN\tA\t{}", a.ip)), "{out}");

    let out = a.dig("www.example.org A");
    assert!(out.contains("status: REFUSED"), "not a resolver: {out}");

    let out = a.dig("example.test SOA +edns=0");
    assert!(out.contains("EDNS: version: 0") && out.contains("udp: 1232"), "{out}");
    let out = a.dig("example.test SOA +edns=1 +noednsnegotiation");
    assert!(out.contains("status: BADVERS"), "{out}");
}

#[test]
fn large_answers_truncate_and_retry_over_tcp() {
    let a = Authority::in_process(&[("example.test.zone", &big_zone())], "");
    let udp = a.dig("big.example.test TXT +ignore +noedns");
    assert!(udp.contains("flags: qr aa tc"), "TC set over UDP: {udp}");
    let retried = a.dig("big.example.test TXT +noedns");
    assert!(retried.contains("ANSWER: 40") && retried.contains("(TCP)"), "dig retried over TCP: {retried}");
}

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
policy = "priority"
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "127.0.10.2" } ]
"#;

#[test]
fn zone_transfers_carry_the_live_answers_to_allowed_clients_only() {
    let a = Authority::in_process(&[("example.test.zone", ZONE)], POOL);
    assert!(a.cli(&["member", "www.example.test.", "web1", "--admin", "down"]).status.success());
    let axfr = a.dig("example.test AXFR");
    let soa_lines = axfr.lines().filter(|l| l.contains("\tSOA\t")).count();
    assert_eq!(soa_lines, 2, "SOA first and last: {axfr}");
    assert!(axfr.contains("www.example.test.\t5\tIN\tA\t127.0.10.2") && !axfr.contains("127.0.10.1"), "{axfr}");
    assert!(axfr.contains("static.example.test.\t300\tIN\tA\t192.0.2.10"), "{axfr}");

    // IXFR from an old serial gets the whole zone; from the current one, the SOA alone.
    let serial: u32 = a.dig("example.test SOA +short").split_whitespace().nth(2).unwrap().parse().unwrap();
    let ixfr = a.dig(&format!("example.test IXFR={}", serial - 1));
    assert!(ixfr.contains("www.example.test.\t5\tIN\tA\t127.0.10.2"), "{ixfr}");
    let current = a.dig(&format!("example.test IXFR={serial}"));
    assert_eq!(current.lines().filter(|l| l.contains("\tSOA\t")).count(), 1, "{current}");

    let closed = Authority::start_with(&[("example.test.zone", ZONE)], "", "allow_transfer = []");
    let refused = closed.dig("example.test AXFR");
    assert!(refused.contains("Transfer failed") && !refused.contains("192.0.2.10"), "{refused}");
    assert!(closed.log().contains("zone transfer refused"), "{}", closed.log());
}
