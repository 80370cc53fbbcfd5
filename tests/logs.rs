//! Logs for machines and people: `--log-format json` writes one JSON
//! object per line with each line's fields; under systemd (the journal
//! stamps lines itself) text lines carry no timestamp of their own.

mod common;

use std::process::Command;

use common::{VNAMED, unique_ip};

/// The stderr of a two-second demo on addresses of its own.
fn demo_log(log_format: &str, journal: bool) -> String {
    let ip = unique_ip();
    let backends: Vec<String> = (0..3).map(|_| unique_ip().to_string()).collect();
    let mut cmd = Command::new(VNAMED);
    cmd.args(["--log-format", log_format, "demo", "--duration", "2s", "--backends", &backends.join(",")])
        .args(["--dns", &format!("{ip}:5353"), "--grpc", &format!("{ip}:7443"), "--metrics", &format!("{ip}:9353")])
        .args(["--srp", &format!("{ip}:1434")])
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM");
    if journal {
        cmd.env("JOURNAL_STREAM", "8:12345");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn json_logs_are_one_object_per_line_with_their_fields() {
    let log = demo_log("json", false);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "the demo logs: {log}");
    let mut with_fields = 0;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(), "{line}");
        let fields = v["fields"].as_object().unwrap_or_else(|| panic!("fields: {line}"));
        assert!(fields.contains_key("message"), "{line}");
        with_fields += usize::from(fields.len() > 1);
    }
    assert!(with_fields > 0, "structured fields stay fields, not text: {log}");
    let bad = Command::new(VNAMED).args(["--log-format", "xml", "status"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("possible values: text, json"), "{bad:?}");
}

#[test]
fn under_systemd_text_lines_leave_the_timestamp_to_the_journal() {
    let stamped = |l: &str| l.split_whitespace().next().is_some_and(|w| w.len() > 15 && w.starts_with("20") && w.contains('T'));
    let plain = demo_log("text", false);
    assert!(plain.lines().any(|l| l.contains("INFO")) && plain.lines().filter(|l| l.contains("INFO")).all(stamped), "{plain}");
    let journal = demo_log("text", true);
    let info: Vec<&str> = journal.lines().filter(|l| l.contains("INFO")).collect();
    assert!(!info.is_empty() && info.iter().all(|l| !stamped(l)), "{journal}");
}
