//! The ring across real processes on loopback: three `vnamed monitor`s
//! with a `[ring]` section (tuned timings, a shared key) join, the
//! authority's server table shows them, `kill -9` of one takes its host out
//! of the DNS answers at once (its status reports would not go stale for
//! 30 s), and it comes back when it rejoins.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use std::time::{Duration, Instant};

use common::{Authority, Proc, ZONE, eventually, spawn_role, unique_ip};

fn monitor(dir: &Path, n: usize, hosts: &[Ipv4Addr], grpc: &str) -> Proc {
    let me = hosts[n];
    let peers: Vec<String> = hosts.iter().map(|h| format!("\"{h}:7946\"")).collect();
    spawn_role(
        dir,
        "monitor",
        &format!("m{n}"),
        &format!(
            r#"
[monitor]
host = "web{n}"
report_to = ["{grpc}"]
metrics_listen = "{me}:9400"
refresh = "500ms"
[[monitor.check]]
pool = "www.example.test."
kind = "tcp"
target = "{me}:8080"
interval = "200ms"

[ring]
listen = "{me}:7946"
ping_interval = "100ms"
misses = 3
token_timeout = "400ms"
broadcast_timeout = "300ms"
peers = [{}]
key = "ring-secret"
"#,
            peers.join(", ")
        ),
    )
}

/// `n` hosts with a backend listening on each (it accepts and closes, so
/// checks never fill its backlog however long a test runs), and an
/// authority whose pool has them as members in priority order (reports
/// stay fresh for 30 s).
fn hosts_and_authority(n: usize) -> (Vec<Ipv4Addr>, Vec<TcpListener>, Authority) {
    let hosts: Vec<Ipv4Addr> = (0..n).map(|_| unique_ip()).collect();
    let listeners: Vec<TcpListener> = hosts.iter().map(|h| TcpListener::bind((*h, 8080)).unwrap()).collect();
    for l in &listeners {
        let l = l.try_clone().unwrap();
        std::thread::spawn(move || l.incoming().for_each(drop));
    }
    let members: Vec<String> = hosts.iter().enumerate().map(|(i, h)| format!("{{ id = \"web{i}\", address = \"{h}\" }}")).collect();
    let pool = format!(
        "[[pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\nstale_after = \"30s\"\nmembers = [{}]\n",
        members.join(", ")
    );
    let a = Authority::start(&[("example.test.zone", ZONE)], &pool);
    (hosts, listeners, a)
}

/// The logs of monitors 0..n, one after the other.
fn logs(dir: &Path, n: usize) -> String {
    (0..n).map(|i| std::fs::read_to_string(dir.join(format!("m{i}.log"))).unwrap_or_default()).collect::<Vec<_>>().join("\n---\n")
}

#[test]
fn a_killed_host_leaves_the_answers_at_once_and_returns_when_it_rejoins() {
    let (hosts, _listeners, a) = hosts_and_authority(3);
    let dir = tempfile::tempdir().unwrap();
    let mut procs: Vec<Option<Proc>> = (0..3).map(|n| Some(monitor(dir.path(), n, &hosts, &a.grpc))).collect();
    let logs = || logs(dir.path(), 3);
    let table = || String::from_utf8(a.cli(&["ring", "table"]).stdout).unwrap();
    assert!(eventually(Duration::from_secs(5), || table().contains("ring (3 members)")).is_some(), "{}\n{}", table(), logs());
    assert!(eventually(Duration::from_secs(3), || a.dig("www.example.test A +short").trim() == hosts[0].to_string()).is_some());

    // Its metrics: the check, the ring's view, and datagrams dropped by
    // reason (garbage, unauthenticated, forged, replayed).
    let metric = |n: usize, line: &str| common::scrape((hosts[n], 9400)).lines().any(|l| l == line);
    assert!(metric(1, "vnamed_ring_members 3"), "{}", common::scrape((hosts[1], 9400)));
    assert!(metric(1, &format!("vnamed_monitor_check_up{{pool=\"www.example.test.\",member=\"web1\",check=\"tcp:{}:8080\"}} 1", hosts[1])));
    {
        use vnamed::envelope::Envelope;
        use vnamed::ring::member::Msg;
        use vnamed::ring::wire::encode;
        let s = std::net::UdpSocket::bind((hosts[2], 0)).unwrap();
        let to = (hosts[1], 7946);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let env = Envelope { boot: 1, seq: 1, time_ms: now };
        s.send_to(b"\x00garbage", to).unwrap();
        s.send_to(&encode(&Msg::Ping { seq: 1 }, env, None), to).unwrap();
        s.send_to(&encode(&Msg::Ping { seq: 1 }, env, Some(b"wrong key")), to).unwrap();
        let good = encode(&Msg::Ping { seq: 1 }, env, Some(b"ring-secret"));
        s.send_to(&good, to).unwrap();
        s.send_to(&good, to).unwrap();
    }
    for reason in ["malformed 1", "unauthenticated 2", "replayed 1"] {
        let (r, n) = reason.split_once(' ').unwrap();
        let line = format!("vnamed_ring_datagrams_dropped_total{{reason=\"{r}\"}} {n}");
        assert!(eventually(Duration::from_secs(2), || metric(1, &line)).is_some(), "{line}\n{}", common::scrape((hosts[1], 9400)));
    }
    assert!(metric(0, "vnamed_ring_dispatcher 0"), "no member is dispatch-capable");

    // kill -9: no goodbye; its buddies find it dead.
    let killed_at = Instant::now();
    procs[0] = None;
    let took = eventually(Duration::from_secs(3), || a.dig("www.example.test A +short").trim() == hosts[1].to_string());
    assert!(took.is_some(), "the dead host left the answers; table:\n{}\n{}", table(), logs());
    eprintln!("kill -9 to answer without it: {:?}", killed_at.elapsed());
    assert!(killed_at.elapsed() < Duration::from_secs(2), "well before its reports go stale");
    assert!(table().contains(&format!("{}:7946", hosts[0])) && table().contains("dead"), "{}", table());

    // It comes back: rejoins the ring and the answers.
    procs[0] = Some(monitor(dir.path(), 0, &hosts, &a.grpc));
    assert!(
        eventually(Duration::from_secs(5), || a.dig("www.example.test A +short").trim() == hosts[0].to_string()).is_some(),
        "{}\n{}",
        table(),
        logs()
    );

    // A graceful stop leaves the ring without a death.
    let pid = procs[2].as_ref().unwrap().0.id();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(eventually(Duration::from_secs(3), || table().contains("ring (2 members)")).is_some(), "{}", table());
    assert!(!table().contains(&format!("{}:7946          dead", hosts[2])), "{}", table());
}

#[test]
fn a_paused_member_is_expelled_and_rejoins_by_itself_when_it_resumes() {
    let (hosts, _listeners, a) = hosts_and_authority(5);
    let dir = tempfile::tempdir().unwrap();
    let procs: Vec<Proc> = (0..5).map(|n| monitor(dir.path(), n, &hosts, &a.grpc)).collect();
    let logs = || logs(dir.path(), 5);
    let table = || String::from_utf8(a.cli(&["ring", "table"]).stdout).unwrap();
    let answer = || a.dig("www.example.test A +short").trim().to_owned();
    assert!(eventually(Duration::from_secs(5), || table().contains("ring (5 members)")).is_some(), "{}\n{}", table(), logs());
    assert!(eventually(Duration::from_secs(3), || answer() == hosts[0].to_string()).is_some());

    // The state the authority gives member `k` (e.g. "dead (ring)").
    let state = |k: usize| {
        let status = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
        status.lines().find(|l| l.contains(&format!(" web{k} "))).unwrap_or_default().to_owned()
    };

    // Frozen for longer than the detection time (its reports stay fresh for
    // 30 s): its buddies report it dead and its host leaves the answers. The
    // ring's master first, then members that are not (a frozen member that
    // reads a fresh token after it resumes rejoins without a rebuild).
    for (round, k) in [0, 2, 3, 2].into_iter().enumerate() {
        let pid = procs[k].0.id() as i32;
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let left = eventually(Duration::from_secs(3), || state(k).contains("dead (ring)") && (k != 0 || answer() == hosts[1].to_string()));
        let frozen = Instant::now();
        assert!(
            left.is_some(),
            "round {round}: frozen web{k} stayed in service ({})\n{}\n{}\n{}",
            answer(),
            String::from_utf8_lossy(&a.cli(&["status"]).stdout),
            table(),
            logs()
        );
        // Frozen a while longer: long enough for the ring to settle without it
        // (VNAMED_TEST_PAUSE_MS: longer, e.g. past the datagrams' 30 s freshness).
        let pause =
            std::env::var("VNAMED_TEST_PAUSE_MS").ok().and_then(|v| v.parse().ok()).map_or(Duration::from_secs(1), Duration::from_millis);
        assert!(eventually(pause + Duration::from_secs(3), || table().contains("dead") && frozen.elapsed() > pause).is_some());
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let resumed = Instant::now();
        // It notices it was expelled and comes back: broadcast timeout plus detection, with room for a loaded machine.
        let back = eventually(Duration::from_secs(5), || {
            table().contains("ring (5 members)") && !state(k).contains("dead") && (k != 0 || answer() == hosts[0].to_string())
        });
        assert!(back.is_some(), "round {round}: resumed web{k} never came back ({})\n{}\n{}", state(k), table(), logs());
        eprintln!("round {round}: web{k} SIGCONT to back in service: {:?}", resumed.elapsed());
        assert!(!table().contains("dead"), "{}", table());
    }
}
