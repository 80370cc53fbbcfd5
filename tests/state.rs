//! What the authority must not forget, tried the way an unlucky operator
//! would: changes the API acknowledged survive SIGTERM and kill -9 right
//! after the reply until they are cleared; the SOA serial never goes
//! backwards across kill -9 while answers flap; members reported down are
//! still down after a restart, before any report arrives; a slow disk
//! delays only the change that waits for it.

mod common;

use std::time::Duration;

use vnamed::grpc::Bearer;
use vnamed::grpc::v1::admin_client::AdminClient;
use vnamed::grpc::v1::status_client::StatusClient;
use vnamed::grpc::v1::{MemberReport, ReportBatch, SetMemberRequest};

use common::{Authority, ZONE, eventually, member_report, named_checkzone, scrape};

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
policy = "priority"
stale_after = "60s"
fallback = "servfail"
members = [ { id = "web1", address = "127.0.10.1" },
            { id = "web2", address = "127.0.10.2" },
            { id = "web3", address = "127.0.10.3" } ]
"#;

fn run(a: &Authority, args: &[&str]) -> String {
    let out = a.cli(args);
    assert!(out.status.success(), "{args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), a.log());
    String::from_utf8(out.stdout).unwrap()
}

fn short(a: &Authority, q: &str) -> String {
    let mut lines: Vec<String> = a.dig(&format!("{q} +short")).lines().map(str::to_owned).collect();
    lines.sort();
    lines.join(" ")
}

fn serial(a: &Authority) -> Option<u32> {
    a.dig("example.test SOA +short").split_whitespace().nth(2).and_then(|s| s.parse().ok())
}

/// Sends one batch of status reports, as a monitor does, and waits for the reply.
fn report(a: &Authority, reports: Vec<MemberReport>) {
    let grpc = a.grpc.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(grpc).unwrap().connect().await.unwrap();
        let mut client = StatusClient::with_interceptor(channel, Bearer::new(None).unwrap());
        client.report(ReportBatch { source: "test".into(), reports }).await.unwrap();
    });
}

/// The value of a counter sample, e.g. `vnamed_state_writes_total{what="members"}`.
fn counter(a: &Authority, sample: &str) -> u64 {
    scrape((a.ip, a.metrics))
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

#[test]
fn api_changes_survive_restarts_and_kill_9_until_cleared() {
    let mut a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.1");
    run(&a, &["pool", "add-member", "www.example.test.", "web4", "127.0.10.4", "--weight", "3"]);
    run(&a, &["pool", "remove-member", "www.example.test.", "web2"]);
    run(&a, &["member", "www.example.test.", "web1", "--admin", "down"]);
    run(&a, &["member", "www.example.test.", "web3", "--weight", "7"]);
    run(&a, &["policy", "www.example.test.", "weighted"]);
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.3", "weighted: web3 (7) before web4 (3); web1 down");

    // A clean stop and start: every change is still there, marked as the API's.
    assert!(a.stop().success());
    a.spawn();
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.3");
    let status = run(&a, &["status"]);
    for line in [
        "[api] policy weighted",
        "[api] member web2 removed",
        "[api] member web4 added at 127.0.10.4 weight 3",
        "[api] member web1 admin down",
        "[api] member web3 weight 7",
    ] {
        assert!(status.contains(line), "{line} missing from:\n{status}");
    }
    let member = |status: &str, id: &str| status.lines().any(|l| l.trim_start_matches([' ', '*']).starts_with(&format!("{id} ")));
    assert!(!member(&status, "web2"), "removed for good:\n{status}");
    let listed = run(&a, &["pool", "overrides", "www.example.test."]);
    assert_eq!(listed.lines().count(), 5, "{listed}");

    // kill -9 right after the reply: still there.
    run(&a, &["pool", "pause", "www.example.test."]);
    run(&a, &["member", "www.example.test.", "web3", "--admin", "drain"]);
    a.kill();
    a.spawn();
    let listed = run(&a, &["pool", "overrides"]);
    assert!(listed.contains("www.example.test. paused") && listed.contains("member web3 admin drain"), "{listed}");
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.3", "paused: the answer from before stays");

    // Cleared: back to the configuration file, and it stays so.
    run(&a, &["pool", "overrides", "www.example.test.", "--clear"]);
    assert_eq!(run(&a, &["pool", "overrides", "www.example.test."]), "");
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.1", "{}", run(&a, &["status"]));
    a.kill();
    a.spawn();
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.1");
    let status = run(&a, &["status"]);
    assert!(!status.contains("[api]") && member(&status, "web2") && !member(&status, "web4"), "{status}");
    assert!(a.stop().success());
    let zone = a.zones_dir().join("example.test.zone");
    named_checkzone("example.test", &zone).unwrap();
    assert!(!a.zone_text("example.test.zone").contains("web4"), "no orphaned member note");
}

#[test]
fn the_serial_never_goes_backwards_across_kill_9_while_answers_flap() {
    let mut a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut highest = serial(&a).expect("a serial");
    for round in 0..6u32 {
        // Flap web1 down and up; every change moves the serial.
        let grpc = a.grpc.clone();
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(grpc).unwrap().connect().await.unwrap();
            let mut admin = AdminClient::with_interceptor(channel, Bearer::new(None).unwrap());
            for i in 0..(20 + round * 7) {
                let admin_state = if i % 2 == 0 { "down" } else { "auto" };
                let req = SetMemberRequest {
                    pool: "www.example.test.".into(),
                    member: "web1".into(),
                    admin: Some(admin_state.into()),
                    weight: None,
                };
                admin.set_member(req).await.unwrap();
            }
        });
        let before = serial(&a).expect("a serial");
        assert!(before >= highest, "round {round}: {before} < {highest}");
        highest = before;
        // No clean stop: the zone file is behind what was served.
        a.kill();
        a.spawn();
        let after = serial(&a).expect("a serial");
        assert!(
            after > highest || (after == highest && a.dig("www.example.test A +short").trim() == "127.0.10.1"),
            "round {round}: served {highest} before kill -9, {after} after"
        );
        highest = after;
        // A change after the restart goes further still.
        let flip = if a.dig("www.example.test A +short").trim() == "127.0.10.1" { "down" } else { "up" };
        run(&a, &["member", "www.example.test.", "web1", "--admin", flip]);
        let next = serial(&a).unwrap();
        assert!(next > highest, "round {round}: {next} after a change, {highest} before");
        run(&a, &["pool", "overrides", "www.example.test.", "--clear"]);
        let cleared = serial(&a).unwrap();
        assert!(cleared >= next, "round {round}: {cleared} after clearing, {next} before");
        highest = cleared;
    }
    // A clean stop leaves the serial where it was: no jump on a calm restart.
    let calm = serial(&a).unwrap();
    assert!(a.stop().success());
    a.spawn();
    assert_eq!(serial(&a), Some(calm));
}

#[test]
fn members_reported_down_are_still_down_after_kill_9() {
    let mut a = Authority::start(&[("example.test.zone", ZONE)], POOL);
    let saved = counter(&a, "vnamed_state_writes_total{what=\"members\"}");
    report(&a, ["web1", "web2", "web3"].iter().map(|m| member_report("www.example.test.", m, false, &[("load", 0.5)])).collect());
    assert!(a.dig("www.example.test A").contains("SERVFAIL"));
    // Saved within a second of the reports.
    assert!(
        eventually(Duration::from_secs(5), || counter(&a, "vnamed_state_writes_total{what=\"members\"}") > saved).is_some(),
        "the members' state was never saved"
    );
    a.kill();
    a.spawn();
    // No report since the restart: the members are down as they were.
    let answer = a.dig("www.example.test A");
    assert!(answer.contains("SERVFAIL"), "{answer}");
    let status = run(&a, &["status"]);
    assert_eq!(status.matches(" down ").count(), 3, "{status}");
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs (needs root)");
        Self(dir)
    }

    /// Fills the filesystem to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.path().join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
#[ignore = "needs root to mount a small tmpfs; scripts/test.sh runs it as root"]
fn a_full_disk_refuses_changes_it_cannot_keep_and_saves_the_rest_once_space_returns() {
    let disk = Tmpfs::mount("3m");
    let extra = format!("state_dir = \"{}\"", disk.0.path().join("state").display());
    let mut a = Authority::start_with(&[("example.test.zone", ZONE)], POOL, &extra);
    disk.fill();

    // Acknowledged changes the store cannot hold are refused, and change nothing.
    let announce = a.cli(&["ring", "announce", "127.0.20.9:7946"]);
    let said = String::from_utf8_lossy(&announce.stderr).into_owned();
    assert!(!announce.status.success() && said.contains("No space left"), "{said}\n{}", a.log());
    let down = a.cli(&["member", "www.example.test.", "web1", "--admin", "down"]);
    assert!(!down.status.success(), "{}", String::from_utf8_lossy(&down.stdout));
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.1", "nothing changed");
    assert!(!run(&a, &["ring", "table"]).contains("127.0.20.9"));

    // Reports still count; saving their state fails, is counted, shown, and retried.
    let failed = counter(&a, "vnamed_state_write_failures_total{what=\"members\"}");
    report(&a, vec![member_report("www.example.test.", "web3", false, &[])]);
    let owed = || counter(&a, "vnamed_state_writes_owed") > 0;
    assert!(
        eventually(Duration::from_secs(5), || owed() && counter(&a, "vnamed_state_write_failures_total{what=\"members\"}") > failed)
            .is_some(),
        "{}",
        scrape((a.ip, a.metrics))
    );
    assert!(run(&a, &["status"]).contains("STATE NOT SAVED"));

    // Space again: what was owed lands by itself, and changes are taken.
    disk.free();
    assert!(
        eventually(Duration::from_secs(15), || counter(&a, "vnamed_state_writes_owed") == 0).is_some(),
        "owed writes never landed: {}",
        a.log()
    );
    assert!(!run(&a, &["status"]).contains("STATE NOT SAVED"));
    run(&a, &["ring", "announce", "127.0.20.9:7946"]);
    run(&a, &["member", "www.example.test.", "web1", "--admin", "down"]);

    // kill -9: all of it is still there.
    a.kill();
    a.spawn();
    assert!(run(&a, &["ring", "table"]).contains("127.0.20.9:7946"));
    assert_eq!(short(&a, "www.example.test A"), "127.0.10.2");
    let status = run(&a, &["status"]);
    assert!(status.contains("[api] member web1 admin down"), "{status}");
    let web3 = status.lines().find(|l| l.contains("web3 ")).unwrap_or_default().to_owned();
    assert!(web3.contains(" down "), "the report made while the disk was full was saved once it had room: {status}");
    drop(a);
}

/// The real store behind a disk whose every durable write takes 500 ms.
struct SlowDisk(std::sync::Arc<vnamed::state::Store>);

impl vnamed::state::Durable for SlowDisk {
    fn write_puts(&self, puts: &[&vnamed::state::Put]) -> Result<(), vnamed::state::StateError> {
        std::thread::sleep(Duration::from_millis(500));
        self.0.write(puts.iter().copied())
    }
    fn counters(&self) -> &std::sync::Arc<vnamed::state::StateCounters> {
        &self.0.counters
    }
}

#[test]
fn a_slow_disk_delays_the_change_that_waits_for_it_and_nothing_else() {
    let a = Authority::in_process_on(&[("example.test.zone", ZONE)], POOL, "", |store| std::sync::Arc::new(SlowDisk(store)));
    assert_eq!(short(&a, "www.example.test"), "127.0.10.1");
    // An operator takes web1 out: acknowledged only once it is on disk.
    let change = {
        let (grpc, started) = (a.grpc.clone(), std::time::Instant::now());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let channel = tonic::transport::Endpoint::from_shared(grpc).unwrap().connect().await.unwrap();
                let mut admin = AdminClient::with_interceptor(channel, Bearer::new(None).unwrap());
                let request =
                    SetMemberRequest { pool: "www.example.test.".into(), member: "web1".into(), admin: Some("down".into()), weight: None };
                admin.set_member(request).await.unwrap();
            });
            started.elapsed()
        })
    };
    // Meanwhile answers and reports go on as if the disk were fast: web2
    // reported down and back leaves and rejoins the standbys at once.
    std::thread::sleep(Duration::from_millis(50));
    let window = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    while window.elapsed() < Duration::from_millis(400) {
        let t = std::time::Instant::now();
        assert_eq!(short(&a, "www.example.test"), "127.0.10.1", "the change is not served before it is durable");
        report(&a, vec![member_report("www.example.test.", "web2", rounds % 2 == 1, &[])]);
        let status = run(&a, &["status", "--explain", "www.example.test."]);
        let web2 = status.lines().find(|l| l.contains("web2")).unwrap_or_default().to_owned();
        assert!(web2.contains(if rounds % 2 == 1 { " up" } else { "down" }), "report {rounds} taken at once: {web2}");
        slowest = slowest.max(t.elapsed());
        rounds += 1;
    }
    let took = change.join().unwrap();
    eprintln!("the change took {took:?}; {rounds} rounds of query, report and status, the slowest {slowest:?}");
    assert!(took >= Duration::from_millis(500), "the change waited for the disk: {took:?}");
    assert!(slowest < Duration::from_millis(250), "a query, a report and a status took {slowest:?} while the change waited");
    assert!(rounds >= 2, "{rounds}");
    report(&a, vec![member_report("www.example.test.", "web2", true, &[])]);
    assert_eq!(short(&a, "www.example.test"), "127.0.10.2", "served once durable");
}
