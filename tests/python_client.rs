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
