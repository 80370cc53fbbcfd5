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
    let a = Authority::start(&[("example.test.zone", &big_zone())], "");

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
    let a = Authority::start(&[("example.test.zone", &big_zone())], "");
    let udp = a.dig("big.example.test TXT +ignore +noedns");
    assert!(udp.contains("flags: qr aa tc"), "TC set over UDP: {udp}");
    let retried = a.dig("big.example.test TXT +noedns");
    assert!(retried.contains("ANSWER: 40") && retried.contains("(TCP)"), "dig retried over TCP: {retried}");
}
