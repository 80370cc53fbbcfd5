//! Every reply that does not fit the client's UDP payload size is a
//! well-formed message with TC set: swept over every advertised size from
//! 512 to 1500 (and no EDNS) for big TXT sets and a long pool answer, on
//! the fast and the slow path, and parsed by strict parsers (dnspython,
//! which refuses trailing bytes, and kdig).

mod common;

use std::process::Command;

use common::Authority;

fn zone() -> String {
    let words =
        |n: usize, c: char| -> String { (0..n).map(|i| format!("\"{}\"", c.to_string().repeat(200 + i))).collect::<Vec<_>>().join(" ") };
    let mut z = String::from("$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 30 )\n  IN NS ns1\nns1 IN A IP\n");
    // One 862-byte TXT record, and a set of six that passes 1,232 bytes.
    z.push_str(&format!("big IN TXT {}\n", words(4, 'a')));
    for i in 0..6 {
        z.push_str(&format!("set IN TXT \"{}\"\n", char::from(b'b' + i).to_string().repeat(230)));
    }
    z
}

fn pool() -> String {
    let members: Vec<String> = (1..=60).map(|i| format!("{{ id = \"web{i}\", address = \"127.0.20.{i}\" }}")).collect();
    format!("[[pool]]\nname = \"www.example.test.\"\npolicy = \"round-robin\"\nanswers = 60\nmembers = [ {} ]\n", members.join(", "))
}

#[test]
fn truncated_replies_are_well_formed_at_every_payload_size() {
    let a = Authority::in_process(&[("example.test.zone", &zone())], &pool());
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/truncation.py"))
        .args([&a.ip.to_string(), &a.port.to_string()])
        .args(["big.example.test./TXT", "set.example.test./TXT", "www.example.test./A", "ns1.example.test./A"])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(seen["malformed"], serde_json::json!([]), "{stdout}");
    assert_eq!(seen["silent"], serde_json::json!([]), "{stdout}");
    assert_eq!(seen["replies"], 4 * 990, "{stdout}");
    // Both outcomes occur, so the sweep crosses the sizes that matter.
    assert!(seen["truncated"].as_u64().unwrap() > 1000 && seen["complete"].as_u64().unwrap() > 1000, "{stdout}");

    for (name, size) in [("big", None), ("big", Some(697)), ("set", Some(700)), ("set", Some(1232)), ("www", None), ("www", Some(600))] {
        let mut kdig = Command::new("kdig");
        kdig.arg(format!("@{}", a.ip)).args(["-p", &a.port.to_string(), "+notcp", "+ignore"]);
        match size {
            Some(s) => kdig.arg(format!("+bufsize={s}")),
            None => kdig.arg("+noedns"),
        };
        let out = kdig.arg(format!("{name}.example.test.")).arg(if name == "www" { "A" } else { "TXT" }).output().expect("kdig runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("status: NOERROR") && text.contains(" tc"), "{name} at {size:?}: {text}");
        assert!(!text.contains("malformed") && !text.contains("WARNING"), "{name} at {size:?}: {text}");
    }
}
