//! The SRP responder with real clients: FreeTDS `tsql` resolves
//! `ADDRESS\INSTANCE` through it on UDP 1434 and connects to the port it
//! returns, follows the instance when it moves, and lists the instances;
//! `vnamed resolve` verifies the server it reaches and re-resolves a stale
//! cached endpoint; malformed requests get no reply and are counted; and a
//! passive responder takes over from a killed active one, or from one that
//! stops gracefully without a gap.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Authority, VNAMED, ZONE, eventually, scrape, unique_ip};
use vnamed::grpc::v1::status_client::StatusClient;
use vnamed::grpc::v1::{MemberReport, ReportBatch};
use vnamed::srp::tds;

/// A TCP server at `addr` that answers a TDS PRELOGIN, accepting only the
/// instance `serves`, then closes; counts connections until dropped.
struct FakeInstance {
    seen: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeInstance {
    fn start(addr: SocketAddr, serves: &'static str) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        s.fetch_add(1, Ordering::Relaxed);
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 512];
                        let n = c.read(&mut buf).unwrap_or(0);
                        let ok = tds::requested_instance(&buf[..n]).is_some_and(|i| i.eq_ignore_ascii_case(serves));
                        let _ = c.write_all(&tds::response(ok));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { seen, stop }
    }
    fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Drop for FakeInstance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30)); // let the listener close
    }
}

fn config(cluster: Ipv4Addr, extra: &str) -> String {
    format!(
        r#"
[[pool]]
name = "sql.example.test."
stale_after = "60s"
members = [ {{ id = "db1", address = "{cluster}" }} ]

[srp]
rate = 1000
burst = 1000
{extra}
[[srp.cluster]]
name = "prod"
addresses = ["{cluster}"]
[[srp.cluster.instance]]
name = "SALES"
tcp = 14330
pool = "sql.example.test."
[[srp.cluster.instance]]
name = "HR"
server_name = "PROD"
tcp = 14340
np = '\\PROD\pipe\sql\query'
"#
    )
}

fn report(grpc: &str, tcp_port: Option<u16>) {
    report_member(grpc, "db1", tcp_port)
}

fn report_member(grpc: &str, member: &str, tcp_port: Option<u16>) {
    let (grpc, member) = (grpc.to_owned(), member.to_owned());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut c = StatusClient::connect(grpc).await.unwrap();
        let metrics = tcp_port.map(|p| ("tcp_port".to_string(), p as f64)).into_iter().collect();
        let r = MemberReport { pool: "sql.example.test.".into(), member, up: true, metrics, ..Default::default() };
        c.report(ReportBatch { source: "test".into(), reports: vec![r] }).await.unwrap();
    });
}

fn resolve(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(VNAMED).arg("resolve").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tsql(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["20", "tsql"])
        .args(args)
        .env("TDSVER", "7.4")
        .output()
        .expect("tsql is installed (freetds-bin, by the test command)");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn tsql_resolves_through_the_responder_and_follows_the_instance() {
    let cluster = unique_ip();
    let first = FakeInstance::start((cluster, 14330).into(), "SALES");
    let a = Authority::start(&[("example.test.zone", ZONE)], &config(cluster, ""));
    report(&a.grpc, None);
    let name = format!("{cluster}\\SALES");

    // FreeTDS asks UDP 1434 for the instance and connects to the port given.
    let out = tsql(&["-S", &name, "-U", "sa", "-P", "x"]);
    assert_eq!(first.seen(), 1, "tsql reached the instance's port:\n{out}\n{}", a.log());

    // The instance moves to another port: the next run goes there.
    let moved = FakeInstance::start((cluster, 15000).into(), "SALES");
    report(&a.grpc, Some(15000));
    assert!(eventually(Duration::from_secs(2), || resolve(&[&name]).1.contains(&format!("tcp  {cluster}:15000"))).is_some());
    let out = tsql(&["-S", &name, "-U", "sa", "-P", "x"]);
    assert_eq!(moved.seen(), 1, "tsql followed the move:\n{out}");
    assert_eq!(first.seen(), 1);

    // tsql -L lists the instances; names are case-insensitive.
    let list = tsql(&["-L", "-H", &cluster.to_string()]);
    for want in ["InstanceName SALES", "InstanceName HR", "tcp 15000", "tcp 14340", r"np \\PROD\pipe\sql\query"] {
        let squeezed = list.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(squeezed.contains(want), "{want:?} in:\n{list}");
    }
    let (ok, out, _) = resolve(&[&format!("{cluster}\\sales")]);
    assert!(ok && out.contains("server db1"), "{out}");
    let (ok, out, _) = resolve(&["--enumerate", &cluster.to_string()]);
    assert!(ok && out.contains("\\SALES") && out.contains("\\HR"), "{out}");

    // Bad input: no reply, each counted; the responder keeps answering.
    let s = UdpSocket::bind((cluster, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let to = (cluster, 1434);
    let mut buf = [0u8; 2048];
    for (bytes, what) in [
        (&b""[..], "zero-length"),
        (&b"\x04"[..], "truncated"),
        (&[4u8; 400][..], "oversized"),
        (&b"\x04NOSUCH\x00"[..], "unknown instance"),
        (&b"\x05\x00\x00"[..], "a response posing as a request"),
        (&b"\x0f\x02SALES\x00"[..], "a DAC request of another version"),
    ] {
        s.send_to(bytes, to).unwrap();
        assert!(s.recv_from(&mut buf).is_err(), "no reply to {what}");
    }
    let metrics = scrape((a.ip, a.metrics));
    for line in [
        "vnamed_srp_dropped_total{reason=\"malformed\"} 4",
        "vnamed_srp_dropped_total{reason=\"oversized\"} 1",
        "vnamed_srp_dropped_total{reason=\"unknown_instance\"} 1",
        "vnamed_srp_active 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    s.send_to(b"\x04SALES\x00", to).unwrap();
    let (n, from) = s.recv_from(&mut buf).expect("still answering");
    assert_eq!(from, SocketAddr::from((cluster, 1434)), "the reply comes from the address asked");
    assert!(vnamed::srp::codec::decode_response(&buf[..n]).is_ok());
}

#[test]
fn resolve_verifies_the_server_and_re_resolves_a_stale_cached_endpoint() {
    let cluster = unique_ip();
    let a = Authority::start(&[("example.test.zone", ZONE)], &config(cluster, ""));
    report(&a.grpc, None);
    let cache = a.dir.path().join("srp-cache");
    let cache = cache.to_str().unwrap();
    let name = format!("{cluster}\\SALES");
    let sales = FakeInstance::start((cluster, 14330).into(), "SALES");
    let (ok, out, err) = resolve(&["--connect", "--cache", cache, &name]);
    assert!(ok && out.contains(&format!("tcp  {cluster}:14330")) && err.contains("resolved"), "{out}{err}");
    let (ok, _, err) = resolve(&["--connect", "--cache", cache, &name]);
    assert!(ok && err.starts_with("cached"), "the second run needs no SRP exchange: {err}");

    // The instance moves; another instance takes its old port. The cached
    // endpoint no longer answers to SALES: purged, resolved again.
    drop(sales);
    let _impostor = FakeInstance::start((cluster, 14330).into(), "OTHER");
    let moved = FakeInstance::start((cluster, 15001).into(), "SALES");
    report(&a.grpc, Some(15001));
    assert!(eventually(Duration::from_secs(2), || resolve(&[&name]).1.contains("15001")).is_some());
    let (ok, out, err) = resolve(&["--connect", "--cache", cache, &name]);
    assert!(ok && out.contains(&format!("tcp  {cluster}:15001")), "{out}{err}");
    assert!(err.contains("resolved") && err.contains("verified"), "{err}");
    assert_eq!(moved.seen(), 1);
    // An instance nobody answers for: a clear error, non-zero exit.
    let (ok, _, err) = resolve(&["--timeout", "100ms", &format!("{cluster}\\NOSUCH")]);
    assert!(!ok && err.contains("no SRP reply"), "{err}");
}

/// One request, one try; answered?
fn asks(s: &UdpSocket, to: (Ipv4Addr, u16)) -> bool {
    let mut buf = [0u8; 2048];
    s.send_to(b"\x04SALES\x00", to).unwrap();
    matches!(s.recv_from(&mut buf), Ok((n, _)) if vnamed::srp::codec::decode_response(&buf[..n]).is_ok())
}

#[test]
fn a_passive_responder_takes_over_from_a_killed_or_stopping_active_one() {
    let cluster = unique_ip();
    let (c1, c2) = (unique_ip(), unique_ip());
    let peers = |me: Ipv4Addr| {
        format!(
            "control = \"{me}:1435\"\npeers = [\"{c1}:1435\", \"{c2}:1435\"]\nkey = \"srp-secret\"\nkeepalive_interval = \"200ms\"\nkeepalive_timeout = \"800ms\""
        )
    };
    let mut first = Authority::start(&[("example.test.zone", ZONE)], &config(cluster, &peers(c1)));
    report(&first.grpc, None);
    let s = UdpSocket::bind((cluster, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let to = (cluster, 1434);
    assert!(eventually(Duration::from_secs(3), || asks(&s, to)).is_some(), "{}", first.log());
    let mut second = Authority::start(&[("example.test.zone", ZONE)], &config(cluster, &peers(c2)));
    report(&second.grpc, None);
    let active = |a: &Authority| scrape((a.ip, a.metrics)).lines().any(|l| l == "vnamed_srp_active 1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(active(&first) && !active(&second), "the first is active, the second passive");

    // kill -9 of the active one: the passive one answers within the timeout.
    first.kill();
    let killed = Instant::now();
    let took = eventually(Duration::from_secs(3), || asks(&s, to));
    assert!(took.is_some(), "{}", second.log());
    eprintln!("kill -9 of the active responder to an answer: {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_millis(800 + 200 * 2 + 600), "within the keep-alive timeout (plus a reply wait)");
    assert!(active(&second));

    // The first comes back as passive; the second stops gracefully while
    // requests keep coming: every one is answered.
    first.spawn();
    std::thread::sleep(Duration::from_millis(600));
    assert!(!active(&first), "a returning responder joins as passive");
    let done = Arc::new(AtomicBool::new(false));
    let (d, sock) = (done.clone(), s.try_clone().unwrap());
    // A busy machine may be slow to answer; only silence is a miss.
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let asker = std::thread::spawn(move || {
        let (mut asked, mut missed) = (0, 0);
        while !d.load(Ordering::Relaxed) {
            asked += 1;
            if !asks(&sock, to) {
                missed += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (asked, missed)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(second.stop().success());
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    let (asked, missed) = asker.join().unwrap();
    assert!(asked > 50, "{asked}");
    assert_eq!(missed, 0, "a graceful stop hands over with no gap ({asked} asked):\n{}", first.log());
    assert!(active(&first));
}

#[test]
fn a_monitor_answers_for_its_own_instance_from_its_checks() {
    let cluster = unique_ip();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sales.state");
    std::fs::write(&state, "tcp_port=15500\n").unwrap();
    let config = dir.path().join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[monitor]
host = "db7"
report_to = ["http://127.0.0.1:1"]
[[monitor.check]]
pool = "sql.local."
kind = "exec"
target = "cat {}"
interval = "100ms"
rise = 1

[srp]
[[srp.cluster]]
name = "local"
addresses = ["{cluster}"]
[[srp.cluster.instance]]
name = "SALES"
tcp = 14330
pool = "sql.local."
"#,
            state.display()
        ),
    )
    .unwrap();
    let _m =
        common::Proc(Command::new(VNAMED).args(["monitor", "--config"]).arg(&config).stderr(std::process::Stdio::null()).spawn().unwrap());
    let name = format!("{cluster}\\SALES");
    let answer = || resolve(&["--timeout", "100ms", &name]);
    assert!(eventually(Duration::from_secs(5), || answer().1.contains(&format!("tcp  {cluster}:15500"))).is_some(), "{:?}", answer());
    assert!(answer().1.contains("server db7"));
    // Its check fails: the instance is not served from here any more.
    std::fs::remove_file(&state).unwrap();
    assert!(eventually(Duration::from_secs(3), || !answer().0).is_some(), "{:?}", answer());
}

#[test]
fn clients_that_find_the_cluster_by_dns_follow_the_instance_to_another_server() {
    let (m1, m2) = (unique_ip(), unique_ip());
    let config = format!(
        r#"
[[pool]]
name = "sql.example.test."
policy = "priority"
stale_after = "60s"
members = [ {{ id = "db1", address = "{m1}" }}, {{ id = "db2", address = "{m2}" }} ]

[srp]
[[srp.cluster]]
name = "prod"
addresses = ["{m1}", "{m2}"]
[[srp.cluster.instance]]
name = "SALES"
tcp = 14330
pool = "sql.example.test."
"#
    );
    let _i1 = FakeInstance::start((m1, 14330).into(), "SALES");
    let i2 = FakeInstance::start((m2, 14330).into(), "SALES");
    let a = Authority::start(&[("example.test.zone", ZONE)], &config);
    report_member(&a.grpc, "db1", None);
    report_member(&a.grpc, "db2", None);
    let dns = format!("{}:{}", a.ip, a.port);
    let by_dns = || resolve(&["--dns", &dns, "--timeout", "200ms", "sql.example.test\\SALES"]);
    assert!(
        eventually(Duration::from_secs(3), || by_dns().1.contains(&format!("tcp  {m1}:14330"))).is_some(),
        "{:?}\n{}",
        by_dns(),
        a.log()
    );
    assert!(by_dns().1.contains("server db1"));
    // Only the serving member's address answers for the instance.
    assert!(!resolve(&["--timeout", "100ms", &format!("{m2}\\SALES")]).0);

    // db1 goes out: DNS now sends clients to db2, and db2's address answers.
    assert!(a.cli(&["member", "sql.example.test.", "db1", "--admin", "down"]).status.success());
    assert!(eventually(Duration::from_secs(3), || by_dns().1.contains(&format!("tcp  {m2}:14330"))).is_some(), "{:?}", by_dns());
    let (ok, out, err) = resolve(&["--dns", &dns, "--connect", "sql.example.test\\SALES"]);
    assert!(ok && out.contains("server db2"), "{out}{err}");
    assert_eq!(i2.seen(), 1, "the client reached the instance on its new server");
    assert!(!resolve(&["--timeout", "100ms", &format!("{m1}\\SALES")]).0, "the old server's address no longer answers for it");
}
