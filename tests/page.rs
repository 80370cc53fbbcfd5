//! The live status page, driven in a real browser: `vnamed demo`, Debian's
//! Chromium headless through chromedriver (WebDriver, plain HTTP and JSON),
//! a phone-sized window. The page shows the pool and its three members, a
//! member taken down through the CLI shows as down within 2 s without a
//! reload, and the page fits the phone's width. Without script, `/` is the
//! same tables. A screenshot goes to target/status-page.png (not committed).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Proc, VNAMED, eventually, unique_ip, wait_listening};

/// One WebDriver call: `method path` with a JSON body; its `value`.
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Headers, then as many bytes as content-length says (chromedriver
    // keeps the connection open whatever the request asks).
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).unwrap();
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    let json = String::from_utf8_lossy(&body);
    let text = format!("{head}{json}");
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
    assert!(v["value"].get("error").is_none(), "{method} {path}: {v}");
    v["value"].clone()
}

/// chromedriver in a process group of its own, killed whole when the test
/// ends, pass or fail: the browser it starts goes with it.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.wait();
    }
}

/// A free port for chromedriver, which cannot take port 0.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

/// What the page shows: pools and each member's state and admin cells.
const READ_PAGE: &str = r#"
return {
  live: (document.getElementById('live') || {}).textContent,
  pools: [...document.querySelectorAll('[data-pool]')].map(e => e.getAttribute('data-pool')),
  members: [...document.querySelectorAll('tr[data-member]')].map(r => ({
    id: r.getAttribute('data-member'),
    state: r.querySelector('.state').textContent,
    admin: r.children[3].textContent })),
  overflow: document.documentElement.scrollWidth - window.innerWidth
};"#;

#[test]
fn the_status_page_shows_the_demo_and_follows_a_member_taken_down() {
    let ip = unique_ip();
    let backends: Vec<Ipv4Addr> = (0..3).map(|_| unique_ip()).collect();
    let list = backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
    let _demo = Proc(
        Command::new(VNAMED)
            .args(["demo", "--dns", &format!("{ip}:5353"), "--grpc", &format!("{ip}:7443"), "--metrics", &format!("{ip}:9353")])
            .args(["--backends", &list, "--srp", &format!("{ip}:1434"), "--duration", "120s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening((ip, 9353).into(), Duration::from_secs(10));
    let url = format!("http://{ip}:9353/");

    // Without script: the same tables, served whole.
    let plain = {
        let mut c = TcpStream::connect((ip, 9353)).unwrap();
        write!(c, "GET / HTTP/1.0\r\nhost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    };
    assert!(plain.contains("data-pool=\"www.demo.example.\"") && plain.matches("<tr class=\"member").count() == 3, "{plain}");
    assert!(plain.contains("name=\"viewport\""), "readable on a phone");

    let port = free_port();
    let profile = tempfile::tempdir().unwrap();
    let _driver = Group(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/setup.sh installs chromium-driver)"),
    );
    wait_listening(("127.0.0.1".parse::<Ipv4Addr>().unwrap(), port).into(), Duration::from_secs(10));
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=412,915",
        &format!("--user-data-dir={}", profile.path().display()),
    ];
    let session = wd(
        port,
        "POST",
        "/session",
        Some(
            json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}}),
        ),
    );
    let id = session["sessionId"].as_str().unwrap().to_owned();
    let s = |p: &str| format!("/session/{id}{p}");
    wd(port, "POST", &s("/url"), Some(json!({ "url": url })));
    let read = || wd(port, "POST", &s("/execute/sync"), Some(json!({"script": READ_PAGE, "args": []})));

    // The pool, its three members, and the live stream connected.
    let ready = eventually(Duration::from_secs(10), || {
        let v = read();
        v["live"] == "live" && v["pools"] == json!(["www.demo.example."]) && v["members"].as_array().map_or(0, Vec::len) == 3
    });
    assert!(ready.is_some(), "{}", read());
    let ids: Vec<String> = read()["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["web1", "web2", "web3"]);
    assert!(read()["overflow"].as_i64().unwrap() <= 0, "the page is wider than a phone: {}", read());

    // web2 taken down by the operator: the page says so within 2 s, by itself.
    let out = Command::new(VNAMED)
        .args(["member", "www.demo.example.", "web2", "--admin", "down", "--server", &format!("http://{ip}:7443")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let taken = Instant::now();
    let down = |v: &Value| v["members"].as_array().unwrap().iter().any(|m| m["id"] == "web2" && m["admin"] == "down");
    let shown = eventually(Duration::from_secs(5), || down(&read()));
    assert!(shown.is_some(), "{}", read());
    let took = taken.elapsed();
    eprintln!("member down through the CLI to the page showing it: {took:?}");
    assert!(took < Duration::from_secs(2), "the page took {took:?}");
    let web2 = read()["members"].as_array().unwrap().iter().find(|m| m["id"] == "web2").unwrap().clone();
    assert!(web2["state"].as_str().unwrap().contains("down"), "{web2}");

    let png = wd(port, "GET", &s("/screenshot"), None);
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, png.as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    wd(port, "DELETE", &s(""), None);
}
