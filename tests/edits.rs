//! Operator edits of zone files while the authority serves: a valid edit is
//! served within a second (and its serial respected or bumped), an invalid
//! one is refused with a log line naming file and line while the last good
//! zone keeps answering, and new zone files are picked up.

mod common;

use std::time::Duration;

use common::{Authority, ZONE, eventually, named_checkzone};

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
policy = "priority"
members = [ { id = "web1", address = "127.0.10.1" } ]
"#;

#[test]
fn valid_edits_are_served_within_a_second() {
    let a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    let path = a.zones_dir().join("example.test.zone");
    assert!(eventually(Duration::from_secs(3), || a.zone_text("example.test.zone").contains("vnamed:begin")).is_some());

    let text = a.zone_text("example.test.zone").replace("static  IN A   192.0.2.10", "static  IN A   192.0.2.11\nnew     IN TXT \"added\"");
    std::fs::write(&path, text).unwrap();
    let took = eventually(Duration::from_secs(1), || a.dig("new.example.test TXT +short").contains("added"));
    assert!(took.is_some(), "edit not served within 1 s\n{}", a.log());
    assert_eq!(a.dig("static.example.test A +short").trim(), "192.0.2.11");
    // The pool still answers, and the operator's text is kept in the file we write back.
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");
    assert!(
        eventually(Duration::from_secs(2), || {
            let t = a.zone_text("example.test.zone");
            t.contains("new     IN TXT \"added\"") && named_checkzone("example.test", &path).is_ok()
        })
        .is_some()
    );

    // A new zone file is served too.
    std::fs::write(
        a.zones_dir().join("other.test.zone"),
        "@ 60 IN SOA ns1.other.test. h.other.test. 1 60 60 60 60\n@ 60 IN NS ns1.other.test.\nns1 60 IN A 192.0.2.1\n",
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(1), || a.dig("ns1.other.test A +short").contains("192.0.2.1")).is_some());
}

#[test]
fn invalid_edits_are_refused_and_the_last_good_zone_keeps_serving() {
    let a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    let path = a.zones_dir().join("example.test.zone");
    assert!(eventually(Duration::from_secs(3), || a.zone_text("example.test.zone").contains("vnamed:begin")).is_some());
    let good = a.zone_text("example.test.zone");
    let serial_before = a.dig("example.test SOA +short");

    // Line 7 gets a broken MX.
    let broken = good.replace("mail    IN MX  10 ns1", "mail    IN MX  ten ns1");
    let line = broken.lines().position(|l| l.contains("MX  ten")).unwrap() + 1;
    std::fs::write(&path, &broken).unwrap();
    let needle = format!("{}:{line}:", path.display());
    assert!(eventually(Duration::from_secs(2), || a.log().contains(&needle)).is_some(), "log names file and line {needle}:\n{}", a.log());
    assert!(a.log().contains("zone edit refused"));
    assert!(a.dig("mail.example.test MX +short").contains("10 ns1.example.test."), "last good zone still served");
    assert_eq!(a.dig("example.test SOA +short"), serial_before);
    // The broken file is the operator's to fix: vnamed does not overwrite it.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(a.zone_text("example.test.zone"), broken);

    // Fixed: served again.
    std::fs::write(&path, good.replace("mail    IN MX  10 ns1", "mail    IN MX  20 ns1")).unwrap();
    assert!(eventually(Duration::from_secs(1), || a.dig("mail.example.test MX +short").contains("20 ns1")).is_some(), "{}", a.log());
}

#[test]
fn address_records_for_a_virtual_name_outside_its_block_are_refused() {
    let a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    let path = a.zones_dir().join("example.test.zone");
    assert!(eventually(Duration::from_secs(3), || a.zone_text("example.test.zone").contains("vnamed:begin")).is_some());
    let stray =
        a.zone_text("example.test.zone").replace("static  IN A   192.0.2.10", "static  IN A   192.0.2.10\nwww     IN A   192.0.2.77");
    std::fs::write(&path, &stray).unwrap();
    assert!(eventually(Duration::from_secs(2), || a.log().contains("belong in its managed block")).is_some(), "{}", a.log());
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");

    // The same file at start-up is a configuration error naming the line.
    let b = std::process::Command::new(common::VNAMED).args(["zone", "check"]).arg(&path).output().unwrap();
    assert!(b.status.success(), "as a zone file it is valid");
    drop(a);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("zones")).unwrap();
    std::fs::write(dir.path().join("zones/example.test.zone"), &stray).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[authority]\ndns_listen = [\"{}:5300\"]\nzones_dir = \"{}/zones\"\n{POOL}", common::unique_ip(), dir.path().display()),
    )
    .unwrap();
    let out = std::process::Command::new(common::VNAMED).args(["authority", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = stray.lines().position(|l| l.contains("192.0.2.77")).unwrap() + 1;
    assert!(!out.status.success() && err.contains(&format!("example.test.zone:{line}: address records")), "{err}");
}
