//! Floods meant to knock the authority over: per-packet events (malformed
//! EDNS options, UDP zone transfers from refused addresses) write a few
//! log lines a second, not one per packet, and every packet is counted in
//! `/metrics`; answers go on meanwhile.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Authority, ZONE};

/// A query for `name` A whose OPT record carries a COOKIE cut short.
fn cut_short_cookie(id: u16, name: &str) -> Vec<u8> {
    let mut b = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    b.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 2, 0, 10]); // option header without its length
    b
}

/// An AXFR over UDP.
fn axfr(id: u16) -> Vec<u8> {
    let mut b = vec![(id >> 8) as u8, id as u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["example", "test"] {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 252, 0, 1]);
    b
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn a_packet_flood_writes_a_few_log_lines_a_second_and_counts_every_packet() {
    // Transfers only to an address that is not ours: every AXFR is refused.
    let a = Authority::start_with(&[("example.test.zone", ZONE)], "", "allow_transfer = [\"192.0.2.0/24\"]");
    let before = a.log().lines().count();
    let s = UdpSocket::bind((a.ip, 0)).unwrap();
    s.connect((a.ip, a.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let started = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut buf = [0u8; 512];
    // 20,000 packets, each answered before the next: nothing is lost to
    // a full socket buffer, so every one must be counted.
    for i in 0..10_000u16 {
        for packet in [cut_short_cookie(i, "nosuch.example.test."), axfr(i)] {
            s.send(&packet).unwrap();
            sent += 1;
            if s.recv(&mut buf).is_ok() {
                answered += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(answered, sent, "every packet gets its error reply");
    assert!(a.dig("static.example.test A +short").contains("192.0.2.10"), "still answering");

    let metrics = common::scrape((a.ip, a.metrics));
    let formerr = metric(&metrics, "vnamed_dns_responses_total{path=\"udp\",rcode=\"FORMERR\"}");
    let refused = metric(&metrics, "vnamed_dns_responses_total{path=\"udp\",rcode=\"REFUSED\"}");
    assert_eq!((formerr, refused), (10_000, 10_000), "{metrics}");
    let suppressed = metric(&metrics, "vnamed_log_lines_suppressed_total");
    // Nothing but the flood logs meanwhile; the budget is 5 lines a
    // second per callsite, plus one summary line per second that drops.
    let lines = a.log().lines().count() - before;
    let per_second = lines as f64 / seconds.max(1.0);
    eprintln!("flood: {sent} packets in {seconds:.1} s; {lines} log lines ({per_second:.1}/s), {suppressed} suppressed");
    assert!(per_second <= 20.0, "{lines} lines in {seconds:.1} s:\n{}", a.log());
    assert!(suppressed >= 9_000, "the refused transfers were logged {suppressed} times fewer");
    assert!(a.log().contains("log lines suppressed"), "the log says lines were dropped");
}
