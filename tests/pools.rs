//! Virtual names end to end: an operator sets members down and up over the
//! CLI (gRPC), `dig` sees the answer move, the serial grows, the zone file
//! is rewritten with the operator's own text intact and passes
//! `named-checkzone`, and a restart serves the same answers.

mod common;

use std::time::Duration;

use common::{Authority, ZONE, eventually, named_checkzone};

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
policy = "priority"
select = "best"
answers = 1
ttl = 5
fallback = "servfail"
members = [ { id = "web1", address = "127.0.10.1" },
            { id = "web2", address = "127.0.10.2" },
            { id = "web3", address = "2001:db8::3" } ]
"#;

fn serial(a: &Authority) -> u32 {
    a.dig("example.test SOA +short").split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn member_changes_move_the_answer_and_the_zone_file() {
    let mut a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    let zone_file = a.zones_dir().join("example.test.zone");

    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");
    let out = a.dig("www.example.test A");
    assert!(out.contains("flags: qr aa") && out.contains("www.example.test.\t5\tIN\tA"), "{out}");
    let first = serial(&a);

    let out = a.cli(&["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
    assert!(serial(&a) > first, "serial bumped");

    // The file follows within a few writes, keeps the operator's text and validates.
    assert!(
        eventually(Duration::from_secs(3), || a.zone_text("example.test.zone").contains("www.example.test. 5 IN A 127.0.10.2")).is_some()
    );
    let text = a.zone_text("example.test.zone");
    assert!(text.starts_with("; operator comment at the top\n$TTL 300\n"), "{text}");
    assert!(text.contains("( ") && text.contains(" 3600 600 86400 30 ) ; keep me"), "{text}");
    assert!(text.contains("; vnamed:member web1 admin=down weight=1"), "{text}");
    named_checkzone("example.test", &zone_file).unwrap();

    // Status and zone show tell the same story.
    let status = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(status.contains("answer: 127.0.10.2"), "{status}");
    assert!(status.contains("web1") && status.contains("down (admin)"), "{status}");
    let shown = String::from_utf8(a.cli(&["zone", "show", "example.test"]).stdout).unwrap();
    assert!(shown.contains("www.example.test. 5 IN A 127.0.10.2") && shown.contains("static.example.test. 300 IN A 192.0.2.10"), "{shown}");

    // AAAA comes from the IPv6 member once it is the preferred one.
    assert!(a.cli(&["member", "www.example.test.", "web2", "--admin", "down"]).status.success());
    assert_eq!(a.dig("www.example.test AAAA +short").trim(), "2001:db8::3");

    // Everyone down with fallback = servfail.
    assert!(a.cli(&["member", "www.example.test.", "web3", "--admin", "down"]).status.success());
    assert!(a.dig("www.example.test A").contains("status: SERVFAIL"));
    // Other names in the zone are unaffected.
    assert!(a.dig("static.example.test A +short").contains("192.0.2.10"));

    // Back up: web2, and unknown members or pools are clear errors.
    assert!(a.cli(&["member", "www.example.test.", "web2", "--admin", "auto"]).status.success());
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
    let bad = a.cli(&["member", "www.example.test.", "web9", "--admin", "down"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("has no member web9"), "{bad:?}");

    // A clean stop leaves the file current; a restart serves the same answer
    // and remembers the operator's overrides.
    let before = serial(&a);
    assert!(a.stop().success(), "{}", a.log());
    named_checkzone("example.test", &zone_file).unwrap();
    a.spawn();
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
    assert!(serial(&a) >= before);
    let status = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(status.contains("down (admin)"), "overrides survive a restart: {status}");
}

#[test]
fn restart_serves_the_last_answer_from_the_state_store_or_else_the_zone_file() {
    let pool = POOL.replace("priority", "least-loaded");
    let mut a = Authority::start(&[("example.test.zone", ZONE)], &pool);
    assert!(a.cli(&["member", "www.example.test.", "web1", "--admin", "down"]).status.success());
    assert!(a.cli(&["member", "www.example.test.", "web1", "--admin", "auto"]).status.success());
    // web1 is back in service, but the last answer written was web2... until
    // policy re-decides, which it just did: web1 leads again.
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");
    a.stop();
    // Hand the file an answer as if the last decision had been web3: the
    // managed block is vnamed's, and the state store says what was served.
    let path = a.zones_dir().join("example.test.zone");
    let text =
        std::fs::read_to_string(&path).unwrap().replace("www.example.test. 5 IN A 127.0.10.1", "www.example.test. 5 IN AAAA 2001:db8::3");
    std::fs::write(&path, &text).unwrap();
    a.spawn();
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1", "the answer served before the stop");
    a.stop();
    // Without the state store (a new state_dir), the zone file's block is the record.
    std::fs::write(&path, &text).unwrap();
    std::fs::remove_dir_all(a.zones_dir().join(".vnamed-state")).unwrap();
    a.spawn();
    assert_eq!(a.dig("www.example.test AAAA +short").trim(), "2001:db8::3", "state comes back from the zone file");
}

#[test]
fn weights_steer_the_weighted_policy() {
    let pool = POOL.replace("priority", "weighted");
    let a = Authority::start(&[("example.test.zone", ZONE)], &pool);
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1", "equal weights: configured order");
    assert!(a.cli(&["member", "www.example.test.", "web2", "--weight", "5"]).status.success());
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
    let status = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(status.contains("weight=5"), "{status}");
    let bad = a.cli(&["member", "www.example.test.", "web2"]);
    assert!(!bad.status.success(), "nothing to set is an error");
}

#[test]
fn rapid_changes_are_coalesced_into_a_few_writes() {
    let a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    let zone_file = a.zones_dir().join("example.test.zone");
    assert!(eventually(Duration::from_secs(3), || a.zone_text("example.test.zone").contains("vnamed:begin")).is_some());
    let writes = |log: &str| log.matches("zone file written").count();
    let before = writes(&a.log());
    let start = std::time::Instant::now();
    for i in 0..20 {
        let state = if i % 2 == 0 { "down" } else { "auto" };
        assert!(a.cli(&["member", "www.example.test.", "web1", "--admin", state]).status.success());
    }
    let elapsed = start.elapsed();
    // The last change is web1 back to auto: the file ends up saying so.
    assert!(
        eventually(Duration::from_secs(2), || a.zone_text("example.test.zone").contains("www.example.test. 5 IN A 127.0.10.1")).is_some()
    );
    std::thread::sleep(Duration::from_millis(400));
    let made = writes(&a.log()) - before;
    // At most one write per 250 ms interval, plus the first and the last.
    let bound = (elapsed.as_millis() / 250) as usize + 2;
    assert!(made >= 1 && made <= bound, "{made} writes for 20 changes in {elapsed:?} (bound {bound})");
    named_checkzone("example.test", &zone_file).unwrap();
}
