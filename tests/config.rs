//! Configuration and start-up errors: all reported at once, with a clear
//! message and a non-zero exit.

mod common;

use std::process::Command;

use common::{VNAMED, unique_ip};

fn run_with(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vnamed.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(VNAMED).args(["authority", "--config"]).arg(&path).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_keys_are_errors() {
    let (ok, err) = run_with("[authority]\ndns_listen = [\"127.0.0.1:1\"]\nzones_dir = \"z\"\nzone_dri = \"y\"\n");
    assert!(!ok);
    assert!(err.contains("unknown field `zone_dri`"), "{err}");
}

#[test]
fn every_problem_is_listed_at_once() {
    let config = r#"
[authority]
dns_listen = []
zones_dir = "/nonexistent"

[[pool]]
name = "no-dot.example"
answers = 0
members = []
"#;
    let (ok, err) = run_with(config);
    assert!(!ok);
    for needle in ["dns_listen: at least one", "must be absolute", "answers must be at least 1", "members must not be empty"] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn broken_zone_files_and_pools_outside_zones_stop_the_start() {
    let ip = unique_ip();
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(zones.join("a.test.zone"), "@ 60 IN SOA ns h 1 1 1 1 1\n@ 60 IN NS ns\nns 60 IN A 999.0.0.1\n").unwrap();
    std::fs::write(zones.join("b.test.zone"), "@ 60 IN SOA ns h 1 1 1 1 1\n").unwrap();
    let config = format!(
        "[authority]\ndns_listen = [\"{ip}:5300\"]\nzones_dir = \"{}\"\n[[pool]]\nname = \"www.c.test.\"\nmembers = [{{ id = \"a\", address = \"127.0.0.1\" }}]\n",
        zones.display()
    );
    let (ok, err) = run_with(&config);
    assert!(!ok);
    assert!(err.contains("a.test.zone:3:"), "{err}");
    assert!(err.contains("b.test.zone: no NS records"), "{err}");
}

#[test]
fn zone_check_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("ok.test.zone");
    std::fs::write(&good, "$TTL 60\n@ IN SOA ns h ( 7 1 1 1 1 )\n  IN NS ns\nns IN A 127.0.0.1\n").unwrap();
    let out = Command::new(VNAMED).args(["zone", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("serial 7"));
    let bad = dir.path().join("bad.test.zone");
    std::fs::write(&bad, "$TTL 60\n@ IN SOA ns h ( 7 1 1 1 1 )\n  IN NS ns\nns IN CNAME x\nns IN A 127.0.0.1\n").unwrap();
    let out = Command::new(VNAMED).args(["zone", "check"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.test.zone:4: ns.bad.test. has a CNAME and other data"), "{text}");
}

#[test]
fn busy_addresses_and_pool_problems_are_reported_together() {
    let ip = unique_ip();
    let _busy = std::net::UdpSocket::bind((ip, 5300)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(zones.join("a.test.zone"), "@ 60 IN SOA ns h 1 1 1 1 1\n@ 60 IN NS ns\nns 60 IN A 127.0.0.1\n").unwrap();
    let config = format!(
        "[authority]\ndns_listen = [\"{ip}:5300\"]\nzones_dir = \"{}\"\n[[pool]]\nname = \"www.c.test.\"\nmembers = [{{ id = \"a\", address = \"127.0.0.1\" }}]\n",
        zones.display()
    );
    let (ok, err) = run_with(&config);
    assert!(!ok);
    assert!(err.contains(&format!("dns_listen {ip}:5300 (UDP): Address already in use")), "{err}");
    assert!(err.contains("pool www.c.test.: no zone file in zones_dir holds this name"), "{err}");
}

#[test]
fn the_sample_configuration_and_zone_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = vnamed::config::Config::read(std::path::Path::new(&format!("{root}/zones/vnamed.toml"))).unwrap();
    assert_eq!(config.pool.len(), 1);
    let out = Command::new(VNAMED).args(["zone", "check"]).arg(format!("{root}/zones/demo.example.zone")).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Every pool the README shows as an example is one the configuration
/// check takes as written.
#[test]
fn the_readme_pool_examples_are_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let starts = |b: &str| b.lines().position(|l| l.starts_with("[[pool]]"));
    let blocks: Vec<&str> =
        readme.split("```toml\n").skip(1).filter_map(|b| b.split("```").next()).filter(|b| starts(b).is_some()).collect();
    assert!(blocks.len() >= 2, "the README shows pools");
    for block in blocks {
        // Only the pools: the sample's [authority] names paths of its own.
        let pools: String = block.lines().skip(starts(block).unwrap_or(0)).map(|l| format!("{l}\n")).collect();
        if let Err(e) = vnamed::config::Config::from_toml(&pools) {
            panic!("{e:?} in\n{pools}");
        }
    }
}
