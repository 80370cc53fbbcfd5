//! What is put where a file belongs: a link to /dev/zero, a FIFO or an
//! oversized file swapped in for a zone file while the authority runs is
//! refused at once (the last good version keeps serving, memory stays
//! put, SIGTERM is honoured), and a good file put back is served; the
//! configuration pointed at a device is refused at start.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Authority, ZONE, eventually};

fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap() / 1024
}

#[test]
fn a_device_a_fifo_or_an_oversized_file_swapped_in_for_a_zone_is_refused_and_a_good_one_served_again() {
    let mut a = Authority::start_with(&[("example.test.zone", ZONE)], "", "zone_file_limit = 4096");
    let pid = a.pid().unwrap();
    let zone = a.zones_dir().join("example.test.zone");
    let staged = a.zones_dir().join("z.new");
    assert_eq!(a.dig("static.example.test A +short").trim(), "192.0.2.10");
    let before = rss_mb(pid);
    let swap_in = |make: &dyn Fn(&std::path::Path)| {
        let _ = std::fs::remove_file(&staged);
        make(&staged);
        std::fs::rename(&staged, &zone).unwrap();
    };
    // `ln -s /dev/zero z.new && mv z.new zones/example.test.zone`
    swap_in(&|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
    assert!(eventually(Duration::from_secs(5), || a.log().contains("symbolic link")).is_some(), "{}", a.log());
    // A FIFO nobody writes to, and a file over the limit.
    swap_in(&|p| assert!(Command::new("mkfifo").arg(p).status().unwrap().success()));
    assert!(eventually(Duration::from_secs(5), || a.log().contains("not a regular file")).is_some(), "{}", a.log());
    swap_in(&|p| std::fs::write(p, ZONE.repeat(40)).unwrap());
    assert!(eventually(Duration::from_secs(5), || a.log().contains("over the limit of 4096")).is_some(), "{}", a.log());
    assert_eq!(a.dig("static.example.test A +short").trim(), "192.0.2.10", "the last good version keeps serving");
    assert!(rss_mb(pid) < before + 50, "memory stays put: {} MB, was {before} MB", rss_mb(pid));
    // A good file put back is served.
    let good = ZONE.replace("IP", &a.ip.to_string()).replace("192.0.2.10", "192.0.2.11").replace(" 100 ", " 101 ");
    swap_in(&|p| std::fs::write(p, &good).unwrap());
    assert!(
        eventually(Duration::from_secs(5), || a.dig("static.example.test A +short").trim() == "192.0.2.11").is_some(),
        "the good file is served again:\n{}",
        a.log()
    );
    // And the device once more, then SIGTERM: honoured at once.
    swap_in(&|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert!(a.stop().success(), "{}", a.log());
    assert!(asked.elapsed() < Duration::from_secs(2), "SIGTERM took {:?}", asked.elapsed());
    assert!(std::fs::symlink_metadata(&zone).unwrap().file_type().is_symlink(), "the operator's link is left as it is");
}

#[test]
fn a_configuration_that_is_a_device_is_refused_at_start() {
    let vnamed = env!("CARGO_BIN_EXE_vnamed");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vnamed.toml");
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let started = Instant::now();
    let out = Command::new(vnamed).args(["authority", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not read for ever");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a regular file"), "{err}");
}
