//! Runs `scripts/netns/dispatch.sh`: a client, a dispatcher, three HTTP
//! servers and an authority in network namespaces; curl through L4/2 and
//! L4/3 virtual IPs, round-robin, a killed server, bad frames counted,
//! fail-over. Run twice in a row: with the interface's own MAC, then with
//! a shared virtual MAC. Network namespaces need root: the test is ignored
//! by a plain `cargo test` and run by `scripts/test.sh` (as CI does) when
//! it runs as root.

use std::process::Command;

fn run(vmac: Option<&str>) {
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns/dispatch.sh")).arg(env!("CARGO_BIN_EXE_vnamed"));
    if let Some(m) = vmac {
        cmd.env("VMAC", m);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("netns dispatch: all checks passed"), "{text}");
    if vmac.is_some() {
        assert!(text.contains("virtual MAC: unchanged across the take-over"), "{text}");
    }
}

#[test]
#[ignore = "needs root for network namespaces; scripts/test.sh runs it as root"]
fn dispatcher_across_network_namespaces() {
    run(None);
    run(Some("02:76:6e:00:00:01"));
}
