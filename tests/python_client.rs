//! An independent client (Python grpcio, stubs generated from the published
//! .proto files at test time) pushes a report and reads the snapshot; the
//! standard health and reflection services answer it too.

mod common;

use std::process::Command;

use common::{Authority, ZONE};

#[test]
fn python_grpcio_client_reports_and_reads_the_snapshot() {
    let pool = r#"
[[pool]]
name = "www.example.test."
policy = "least-loaded"
select = "best"
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "127.0.10.2" } ]
"#;
    let a = Authority::in_process_with(&[("example.test.zone", ZONE)], pool, "token = \"py-token\"");
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");
    let address = a.grpc.trim_start_matches("http://").to_owned();
    // web1 reports a high load: web2, never reported, has no load and sorts last;
    // so report web2 low as well through a second run.
    for (member, load) in [("web1", "0.9"), ("web2", "0.1")] {
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py"))
            .args([&address, "py-token", "www.example.test.", member, load])
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("\"accepted\": 1"), "{stdout}");
        assert!(stdout.contains("\"without_token\": \"UNAUTHENTICATED\""), "{stdout}");
        assert!(stdout.contains("\"health\": \"SERVING\""), "{stdout}");
        for service in ["grpc.health.v1.Health", "vnamed.v1.Admin", "vnamed.v1.Status"] {
            assert!(stdout.contains(service), "reflection lists {service}: {stdout}");
        }
        if member == "web2" {
            assert!(stdout.contains("\"answer\": [\"127.0.10.2\"]"), "{stdout}");
            assert!(stdout.contains("\"web1\": {\"state\": \"up\", \"load\": 0.9}"), "{stdout}");
        }
    }
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
}

/// `/metrics` read by the Prometheus project's own OpenMetrics parser,
/// which refuses a family whose samples are split or repeated: every
/// family is whole and named once.
#[test]
fn metrics_parse_with_the_prometheus_openmetrics_parser() {
    let pool = r#"
[[pool]]
name = "www.example.test."
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "127.0.10.2" } ]
[[pool]]
name = "db.example.test."
members = [ { id = "db1", address = "127.0.11.1" } ]
"#;
    let a = Authority::in_process(&[("example.test.zone", ZONE)], pool);
    assert_eq!(a.dig("www.example.test A +short").lines().count(), 1);
    // What Prometheus itself sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let text = common::scrape_as((a.ip, a.metrics), Some(accept));
    assert!(text.to_ascii_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(&text).to_owned();
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
names = [f.name for f in text_string_to_metric_families(sys.stdin.read())]
assert len(names) == len(set(names)), names
print(len(names), " ".join(sorted(names)))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}\n{body}");
    for family in ["vnamed_member_up", "vnamed_member_in_answer", "vnamed_dns_responses", "vnamed_rrl_dropped", "vnamed_connections_open"] {
        assert!(said.split_whitespace().any(|n| n == family), "{family}: {said}");
    }
}

/// Replies to every opcode parse in dnspython (which reads an UPDATE's
/// sections as zone, prerequisites, updates and additional), over UDP and
/// TCP: an UPDATE is refused, one without an SOA zone is FORMERR, a
/// NOTIFY from a stranger refused, STATUS not implemented, a query with
/// junk after it FORMERR.
#[test]
fn replies_to_every_opcode_parse_in_dnspython() {
    let a = Authority::in_process(&[("example.test.zone", ZONE)], "");
    let script = r#"
import sys, dns.message, dns.query, dns.update, dns.opcode, dns.rcode, dns.rdatatype
ip, port = sys.argv[1], int(sys.argv[2])
def ask(m):
    return [send(m, ip, port=port, timeout=2) for send in (dns.query.udp, dns.query.tcp)]
u = dns.update.UpdateMessage("example.test.")
u.add("_acme-challenge", 60, "TXT", "x")
for r in ask(u):
    assert r.opcode() == dns.opcode.UPDATE and r.rcode() == dns.rcode.REFUSED, r
    assert r.zone[0].rdtype == dns.rdatatype.SOA, r
print("update", dns.rcode.to_text(r.rcode()))
q = dns.message.make_query("example.test.", "SOA")
q.set_opcode(dns.opcode.NOTIFY)
for r in ask(q):
    assert r.opcode() == dns.opcode.NOTIFY and r.rcode() == dns.rcode.REFUSED, r
print("notify", dns.rcode.to_text(r.rcode()))
q = dns.message.make_query("static.example.test.", "A")
q.set_opcode(dns.opcode.STATUS)
for r in ask(q):
    assert r.rcode() == dns.rcode.NOTIMP, r
print("status", dns.rcode.to_text(r.rcode()))
# An UPDATE whose zone is of type A, and a query with junk after it: raw.
import socket, struct
q = dns.message.make_query("static.example.test.", "A")
bad_update = bytearray(q.to_wire()); bad_update[2] = (bad_update[2] & 0x87) | (5 << 3)
junk = q.to_wire() + b"\xab" * 4000
for wire in (bytes(bad_update), junk):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(wire, (ip, port)); udp = s.recv(65535); s.close()
    t = socket.create_connection((ip, port), timeout=2)
    t.sendall(struct.pack("!H", len(wire)) + wire)
    n = struct.unpack("!H", t.recv(2))[0]; tcp = b""
    while len(tcp) < n: tcp += t.recv(n - len(tcp))
    t.close()
    for reply in (udp, tcp):
        r = dns.message.from_wire(reply)
        assert r.rcode() == dns.rcode.FORMERR, r
print("formerr", len(junk))
"#;
    let out = Command::new("python3").args(["-c", script, &a.ip.to_string(), &a.port.to_string()]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for line in ["update REFUSED", "notify REFUSED", "status NOTIMP", "formerr"] {
        assert!(said.contains(line), "{line}: {said}");
    }
}
