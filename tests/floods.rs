//! Floods meant to knock the authority over: per-packet events (malformed
//! EDNS options, UDP zone transfers from refused addresses) write a few
//! log lines a second, not one per packet, and every packet is counted in
//! `/metrics`; answers go on meanwhile.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Authority, ZONE};

/// A query as raw bytes: header (RD off), one IN question for `name` and
/// `qtype`, and `opt`, the OPT record's bytes if any.
fn query(id: u16, name: &str, qtype: u8, opt: &[u8]) -> Vec<u8> {
    let mut b = vec![(id >> 8) as u8, id as u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(!opt.is_empty())];
    for label in name.trim_end_matches('.').split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.extend_from_slice(&[0, 0, qtype, 0, 1]);
    b.extend_from_slice(opt);
    b
}

/// A query for `name` A whose OPT record carries a COOKIE cut short
/// (the option's header without its length).
fn cut_short_cookie(id: u16, name: &str) -> Vec<u8> {
    query(id, name, 1, &[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 2, 0, 10])
}

/// An AXFR over UDP.
fn axfr(id: u16) -> Vec<u8> {
    query(id, "example.test.", 252, &[])
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn a_packet_flood_writes_a_few_log_lines_a_second_and_counts_every_packet() {
    // Transfers only to an address that is not ours: every AXFR is refused.
    let a = Authority::start_with(&[("example.test.zone", ZONE)], "", "allow_transfer = [\"192.0.2.0/24\"]");
    let before = a.log().lines().count();
    let s = UdpSocket::bind((a.ip, 0)).unwrap();
    s.connect((a.ip, a.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let started = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut buf = [0u8; 512];
    // 20,000 packets, each answered before the next: nothing is lost to
    // a full socket buffer, so every one must be counted.
    for i in 0..10_000u16 {
        for packet in [cut_short_cookie(i, "nosuch.example.test."), axfr(i)] {
            s.send(&packet).unwrap();
            sent += 1;
            if s.recv(&mut buf).is_ok() {
                answered += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(answered, sent, "every packet gets its error reply");
    assert!(a.dig("static.example.test A +short").contains("192.0.2.10"), "still answering");

    let metrics = common::scrape((a.ip, a.metrics));
    let formerr = metric(&metrics, "vnamed_dns_responses_total{path=\"udp\",rcode=\"FORMERR\"}");
    let refused = metric(&metrics, "vnamed_dns_responses_total{path=\"udp\",rcode=\"REFUSED\"}");
    assert_eq!((formerr, refused), (10_000, 10_000), "{metrics}");
    let suppressed = metric(&metrics, "vnamed_log_lines_suppressed_total");
    // Nothing but the flood logs meanwhile; the budget is 5 lines a
    // second per callsite, plus one summary line per second that drops.
    let lines = a.log().lines().count() - before;
    let per_second = lines as f64 / seconds.max(1.0);
    eprintln!("flood: {sent} packets in {seconds:.1} s; {lines} log lines ({per_second:.1}/s), {suppressed} suppressed");
    assert!(per_second <= 20.0, "{lines} lines in {seconds:.1} s:\n{}", a.log());
    assert!(suppressed >= 9_000, "the refused transfers were logged {suppressed} times fewer");
    // The next line of the kind, once its second has passed, says how many
    // were dropped (the log is polled, a refused transfer sent each time).
    let said = common::eventually(Duration::from_secs(5), || {
        let _ = s.send(&axfr(1));
        let _ = s.recv(&mut buf);
        a.log().contains("log lines suppressed")
    });
    assert!(said.is_some(), "the log says lines were dropped:\n{}", a.log());
}

/// Raises this process's open-files limit to its hard limit: the test
/// holds thousands of sockets.
fn raise_own_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    assert!(l.rlim_cur >= 4096, "the test needs 4096 descriptors; the hard limit is {}", l.rlim_cur);
}

/// Opens `n` TCP connections to `addr` (twenty at a time, each given 50 ms
/// to connect) and keeps them silent; returns those that connected.
fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(move || {
                    (0..n / 20)
                        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    })
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / 100) // USER_HZ is 100 on Linux
}

fn answers(a: &Authority, tcp: bool) -> bool {
    let out = a.dig(&format!("static.example.test A +short +tries=1 +time=3{}", if tcp { " +tcp" } else { "" }));
    out.trim() == "192.0.2.10"
}

#[test]
fn idle_connections_on_any_port_do_not_stop_dns_or_spin() {
    raise_own_limit();
    let mut a = Authority::prepared(&[("example.test.zone", ZONE)], "", "");
    a.nofile = Some(1024);
    a.spawn();
    let pid = a.pid().unwrap();
    let ports = [("metrics", a.metrics), ("grpc", common::GRPC_PORT), ("dns_tcp", a.port)];
    for (name, port) in ports {
        let held = idle_connections((a.ip, port).into(), 1100);
        // Held by the listener (up to its cap) or queued in the kernel;
        // either way no descriptor runs out.
        std::thread::sleep(Duration::from_millis(500));
        let cpu = cpu_time(pid);
        let window = Instant::now();
        let mut tried = 0;
        while window.elapsed() < Duration::from_secs(2) {
            assert!(answers(&a, false), "{name}: DNS over UDP stopped:\n{}", a.log());
            assert!(answers(&a, true), "{name}: DNS over TCP stopped:\n{}", a.log());
            tried += 1;
        }
        let busy = (cpu_time(pid) - cpu).as_secs_f64() / window.elapsed().as_secs_f64();
        eprintln!("{name}: {} idle connections; {tried} UDP+TCP query pairs answered; authority CPU {:.0}%", held.len(), busy * 100.0);
        assert!(busy < 0.5, "{name}: the authority spins at {:.0}% CPU", busy * 100.0);
        drop(held);
        // The listener held to its cap (DNS TCP closed the silent ones to
        // make room), and /metrics says so once it is free again.
        let counted = if name == "dns_tcp" { "vnamed_connections_evicted_total" } else { "vnamed_listener_full_total" };
        let line = format!("{counted}{{listener=\"{name}\"}}");
        let seen = common::eventually(Duration::from_secs(20), || metric(&common::scrape((a.ip, a.metrics)), &line) > 0);
        assert!(seen.is_some(), "{line}:\n{}", common::scrape((a.ip, a.metrics)));
    }
    assert!(!a.log().contains("out of file descriptors"), "the caps keep descriptors from running out:\n{}", a.log());
}

/// A query for `name` TXT with EDNS (payload 1232), as an amplifier would send it.
fn txt_query(id: u16, name: &str) -> Vec<u8> {
    query(id, name, 16, &[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0])
}

#[test]
fn a_spoofed_amplification_flood_is_rate_limited_and_others_are_served() {
    let big = (0..4).map(|i| format!("\"{}\"", "a".repeat(200 + i))).collect::<Vec<_>>().join(" ");
    let zone = format!("{ZONE}big IN TXT {big}\n");
    // Loopback is exempt by default; here it stands for the Internet.
    let a = Authority::in_process_with(&[("example.test.zone", &zone)], "", "[authority.rrl]\nexempt = []\n");
    let victim = UdpSocket::bind("127.0.66.1:0").unwrap();
    victim.connect((a.ip, a.port)).unwrap();
    victim.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let (mut sent_bytes, mut got_bytes, mut full, mut tc) = (0usize, 0usize, 0u32, 0u32);
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    let drain = |buf: &mut [u8], full: &mut u32, tc: &mut u32, got: &mut usize| {
        while let Ok(n) = victim.recv(buf) {
            *got += n;
            if buf[2] & 0x02 != 0 { *tc += 1 } else { *full += 1 }
        }
    };
    for i in 0..10_000u16 {
        let q = txt_query(i, "big.example.test.");
        sent_bytes += q.len();
        victim.send(&q).unwrap();
        if i % 100 == 99 {
            drain(&mut buf, &mut full, &mut tc, &mut got_bytes);
        }
    }
    drain(&mut buf, &mut full, &mut tc, &mut got_bytes);
    let seconds = started.elapsed().as_secs_f64();
    let ratio = got_bytes as f64 / sent_bytes as f64;
    eprintln!("amplification flood: 10000 queries in {seconds:.1} s: {full} full answers, {tc} TC slips, bytes out/in {ratio:.2}");
    // 50 identical answers a second per /24, at most one more second counted.
    assert!(full > 0 && f64::from(full) <= 50.0 * (seconds.ceil() + 1.0), "{full} full answers in {seconds:.1} s");
    assert!(tc > 1000, "every second limited response slips with TC: {tc}");
    assert!(ratio < 1.0, "no amplification: {ratio:.2}");

    // Meanwhile another network is answered in full, and so is the
    // flooded one for other names.
    let other = UdpSocket::bind("127.0.67.1:0").unwrap();
    other.connect((a.ip, a.port)).unwrap();
    other.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for i in 0..20u16 {
        other.send(&txt_query(i, "big.example.test.")).unwrap();
        let n = other.recv(&mut buf).expect("answered");
        assert!(n > 800 && buf[2] & 0x02 == 0, "a full answer");
    }
    assert!(common::dig(std::net::IpAddr::V4(a.ip), a.port, "-b 127.0.66.2 static.example.test A +short").contains("192.0.2.10"));
    let metrics = common::scrape((a.ip, a.metrics));
    assert!(metric(&metrics, "vnamed_rrl_dropped_total{kind=\"answer\"}") > 1000, "{metrics}");
    assert!(metric(&metrics, "vnamed_rrl_slipped_total{kind=\"answer\"}") > 1000, "{metrics}");
}

/// `GET /metrics` at `addr` within `within`: whether a whole response came.
fn scraped_within(addr: std::net::SocketAddr, within: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, within) else { return false };
    let _ = c.set_read_timeout(Some(within));
    let _ = c.write_all(b"GET /metrics HTTP/1.0\r\nhost: x\r\n\r\n");
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body.starts_with("HTTP/1.0 200 OK\r\n") && body.contains("vnamed_connections_open")
}

/// Slowloris: 500 connections to `/metrics` trickling a request header in,
/// and 500 to DNS over TCP trickling a query in, a byte a second each (a
/// closed one is opened again at once). Each is closed at its deadline
/// and counted, and meanwhile scrapes and TCP queries are answered.
#[test]
fn slow_clients_are_cut_off_and_scrapes_and_tcp_queries_go_on() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    raise_own_limit();
    let limits = "[authority.limits]\nhandshake_timeout = \"1s\"\ndns_tcp_message = \"1s\"\n";
    let a = Authority::start_with(&[("example.test.zone", ZONE)], "", limits);
    let (metrics, dns) = (std::net::SocketAddr::from((a.ip, a.metrics)), std::net::SocketAddr::from((a.ip, a.port)));
    let header = b"GET /metrics HTTP/1.1\r\nhost: x\r\nuser-agent: slow\r\naccept: */*\r\n\r\n".to_vec();
    let mut message = query(7, "static.example.test.", 1, &[]);
    message.splice(0..0, (message.len() as u16).to_be_bytes());
    let stop = AtomicBool::new(false);
    let reopened = AtomicUsize::new(0);
    let (mut scrapes, mut queries, mut slowest) = (0, 0, Duration::ZERO);
    std::thread::scope(|scope| {
        for (addr, bytes) in [(metrics, &header), (dns, &message)] {
            let (stop, reopened) = (&stop, &reopened);
            scope.spawn(move || {
                let open = || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok();
                let mut held: Vec<(Option<std::net::TcpStream>, usize)> = (0..500).map(|_| (open(), 0)).collect();
                let start = Instant::now();
                // Bounded: a byte a second for at most 10 s.
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(10) {
                    for (c, at) in held.iter_mut() {
                        let sent = c.as_mut().is_some_and(|s| s.write_all(&bytes[*at % bytes.len()..][..1]).is_ok());
                        if sent {
                            *at += 1;
                        } else {
                            reopened.fetch_add(1, Ordering::Relaxed);
                            (*c, *at) = (open(), 0);
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
        // The attackers hold their connections; the operator's scrapes
        // and the resolvers' TCP queries still get through.
        std::thread::sleep(Duration::from_secs(2));
        let window = Instant::now();
        while window.elapsed() < Duration::from_secs(6) {
            let asked = Instant::now();
            let ok = scraped_within(metrics, Duration::from_secs(3));
            slowest = slowest.max(asked.elapsed());
            assert!(ok, "a scrape went unanswered during the slowloris:\n{}", common::scrape((a.ip, a.metrics)));
            scrapes += 1;
            assert!(answers(&a, true), "DNS over TCP stopped during the slowloris:\n{}", a.log());
            queries += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let text = common::scrape((a.ip, a.metrics));
    let slow = |listener: &str| metric(&text, &format!("vnamed_connections_slow_total{{listener=\"{listener}\"}}"));
    eprintln!(
        "{scrapes} scrapes (slowest {slowest:?}) and {queries} TCP queries answered; {} slow connections reopened; slow closed: metrics {}, dns_tcp {}",
        reopened.load(Ordering::Relaxed),
        slow("metrics"),
        slow("dns_tcp")
    );
    assert!(slow("dns_tcp") > 0, "slow DNS connections are counted:\n{text}");
    // While full, the trickling scrapers were closed to make room...
    let evicted = metric(&text, "vnamed_connections_evicted_total{listener=\"metrics\"}");
    assert!(evicted > 0, "{text}");
    // ...and alone, one is closed at its header deadline and counted.
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(metrics).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let opened = Instant::now();
    c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let closed = opened.elapsed();
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(4), "closed after {closed:?}");
    let text = common::scrape((a.ip, a.metrics));
    assert!(slow("metrics") < metric(&text, "vnamed_connections_slow_total{listener=\"metrics\"}"), "{text}");
}
