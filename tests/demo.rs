//! `vnamed demo`: the answer for www.demo.example moves between the
//! simulated backends as their load changes, each backend really answers
//! HTTP, and the demo stops cleanly on SIGTERM.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{VNAMED, dig, unique_ip};

#[test]
fn answers_move_between_live_backends() {
    let ip = unique_ip();
    let backends: Vec<_> = (0..3).map(|_| unique_ip()).collect();
    let list = backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
    let mut child = Command::new(VNAMED)
        .args([
            "demo",
            "--dns",
            &format!("{ip}:5353"),
            "--grpc",
            &format!("{ip}:7443"),
            "--metrics",
            &format!("{ip}:9353"),
            "--backends",
            &list,
        ])
        .args(["--period", "3", "--duration", "60s", "--srp", &format!("{ip}:1434")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = HashSet::new();
    let start = Instant::now();
    let mut asked = 0;
    while start.elapsed() < Duration::from_secs(10) && seen.len() < 3 {
        let answer = dig(IpAddr::V4(ip), 5353, "www.demo.example A +short");
        if let Ok(addr) = answer.trim().parse::<IpAddr>() {
            asked += 1;
            assert!(backends.iter().any(|b| IpAddr::V4(*b) == addr), "answer {addr} is a backend");
            seen.insert(addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.len() >= 2, "the answer should move between backends, saw {seen:?}");

    // Whatever DNS says, that backend answers HTTP.
    let addr: IpAddr = dig(IpAddr::V4(ip), 5353, "www.demo.example A +short").trim().parse().unwrap();
    asked += 1;
    let mut c = std::net::TcpStream::connect((addr, 8080)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("hello from web"), "{body}");

    // The metrics tell the same story in Prometheus format.
    dig(IpAddr::V4(ip), 5353, "www.demo.example A +tcp");
    let scrape = || {
        let mut c = std::net::TcpStream::connect((ip, 9353)).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\nhost: x\r\n\r\n").unwrap();
        let mut metrics = String::new();
        c.read_to_string(&mut metrics).unwrap();
        metrics
    };
    let all_up = |m: &str| m.lines().filter(|l| l.starts_with("vnamed_member_up{pool=\"www.demo.example.\"") && l.ends_with(" 1")).count();
    let changes = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("vnamed_answer_changes_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Members' state follows their checks (rise and fall) on a busy machine
    // too, and the shares follow the first loads reported: wait, bounded,
    // until all three are seen up and the answer has moved.
    let mut metrics = scrape();
    let start = Instant::now();
    while (all_up(&metrics) != 3 || changes(&metrics) < 1.0) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        metrics = scrape();
    }
    let value = |prefix: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    let over_udp: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("vnamed_dns_responses_total{path=\"udp") && l.contains("rcode=\"NOERROR\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(over_udp >= asked as f64, "{asked} answered: {metrics}");
    assert!(value("vnamed_dns_responses_total{path=\"tcp\",rcode=\"NOERROR\"}") >= 1.0, "{metrics}");
    assert!(value("vnamed_answer_changes_total") >= 1.0, "{metrics}");
    assert!(value("vnamed_zone_serial{zone=\"demo.example.\"}") >= 2.0, "{metrics}");
    assert_eq!(all_up(&metrics), 3, "{metrics}");

    // SRP: the demo's instance DEMO resolves, and the server at the port
    // returned answers to that name; tsql lists it.
    let out = Command::new(VNAMED).args(["resolve", "--connect", &format!("{ip}\\demo")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("tcp  {ip}:14330")), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("tsql").args(["-L", "-H", &ip.to_string()]).output().expect("tsql is installed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.split_whitespace().collect::<Vec<_>>().join(" ").contains("InstanceName DEMO"), "{text}");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.contains("dig @") && out.contains("www.demo.example"), "the demo says how to query it:\n{out}");
}
