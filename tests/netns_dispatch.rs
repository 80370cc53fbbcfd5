//! Runs `scripts/netns/dispatch.sh`: a client, a dispatcher, three HTTP
//! servers and an authority in network namespaces; curl through L4/2 and
//! L4/3 virtual IPs, round-robin, a killed server, bad frames counted.
//! Network namespaces need root: the test is ignored by a plain `cargo
//! test` and run by `scripts/test.sh` (as CI does) when it runs as root.

use std::process::Command;

#[test]
#[ignore = "needs root for network namespaces; scripts/test.sh runs it as root"]
fn dispatcher_across_network_namespaces() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns/dispatch.sh"))
        .arg(env!("CARGO_BIN_EXE_vnamed"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("netns dispatch: all checks passed"), "{text}");
}
