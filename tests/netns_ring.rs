//! Runs `scripts/netns/ring.sh`: five hosts and an authority in network
//! namespaces; kill -9, a cut link, its repair, and a healed partition.
//! Network namespaces need root, as CI has.

use std::process::Command;

#[test]
fn ring_across_network_namespaces() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns/ring.sh"))
        .arg(env!("CARGO_BIN_EXE_vnamed"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("netns ring: all checks passed"), "{text}");
}
