//! Runs `scripts/netns/ring.sh`: five hosts and an authority in network
//! namespaces; kill -9, a cut link, its repair, and a healed partition.
//! Network namespaces need root: the test is ignored by a plain `cargo
//! test` and run by `scripts/test.sh` (as CI does) when it runs as root.

use std::process::Command;

#[test]
#[ignore = "needs root for network namespaces; scripts/test.sh runs it as root"]
fn ring_across_network_namespaces() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns/ring.sh"))
        .arg(env!("CARGO_BIN_EXE_vnamed"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("netns ring: all checks passed"), "{text}");
}
