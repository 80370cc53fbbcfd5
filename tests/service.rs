//! vnamed under a service manager, as its systemd units run it: readiness,
//! stopping and reloading said over `NOTIFY_SOCKET` (a datagram socket the
//! test holds, as systemd does), and SIGHUP (`ExecReload`) re-reading the
//! configuration instead of ending the process.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Authority, Proc, VNAMED, ZONE, eventually, wait_listening};

/// Every notification received within `within`, joined.
fn notifications(socket: &UnixDatagram, within: Duration, until: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let start = std::time::Instant::now();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while start.elapsed() < within && !seen.contains(until) {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    seen
}

#[test]
fn the_authority_says_ready_once_serving_reloads_on_sighup_and_says_stopping() {
    let pool = "[[pool]]\nname = \"www.example.test.\"\nmembers = [{ id = \"web1\", address = \"192.0.2.1\" }]\n";
    let a = Authority::prepared(&[("example.test.zone", ZONE)], pool, "");
    let socket_path = a.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let log = a.dir.path().join("service.log");
    let child = Command::new(VNAMED)
        .args(["authority", "--config"])
        .arg(&a.config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _child = Proc(child);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // READY=1 only once DNS answers: it came after the listeners were up.
    let ready = notifications(&socket, Duration::from_secs(10), "READY=1");
    assert!(ready.contains("READY=1") && ready.contains("STATUS=serving DNS"), "{ready:?}\n{}", read_log());
    assert!(a.dig("www.example.test A +short").contains("192.0.2.1"), "{}", read_log());
    wait_listening((a.ip, a.metrics).into(), Duration::from_secs(2));

    // SIGHUP: the configuration is read again; the process lives on.
    let applied = |log: &str| log.matches("configuration edit applied").count();
    let before = applied(&read_log());
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(5), || {
            let l = read_log();
            l.contains("SIGHUP: reading again") && applied(&l) > before
        })
        .is_some(),
        "{}",
        read_log()
    );
    assert!(a.dig("www.example.test A +short").contains("192.0.2.1"), "still serving after SIGHUP\n{}", read_log());

    // A member added to the file and a SIGHUP: it is in the answer.
    let text = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        text.replace("address = \"192.0.2.1\" }]", "address = \"192.0.2.1\" }, { id = \"web2\", address = \"192.0.2.2\" }]"),
    )
    .unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let both = || {
        let out = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
        out.contains("web2")
    };
    assert!(eventually(Duration::from_secs(5), both).is_some(), "{}", read_log());

    // SIGTERM: STOPPING=1, then a clean exit.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopping = notifications(&socket, Duration::from_secs(10), "STOPPING=1");
    assert!(stopping.contains("STOPPING=1"), "{stopping:?}\n{}", read_log());
}

#[test]
fn roles_that_reload_nothing_survive_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ip = common::unique_ip();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.path().join("monitor.toml");
    std::fs::write(
        &config,
        format!("[monitor]\nhost = \"web1\"\nreport_to = [\"http://{ip}:7443\"]\nmetrics_listen = \"{ip}:9400\"\n[[monitor.check]]\npool = \"www.example.test.\"\nkind = \"tcp\"\ntarget = \"{ip}:1\"\n"),
    )
    .unwrap();
    let log = dir.path().join("monitor.log");
    let mut child = Proc(
        Command::new(VNAMED)
            .args(["monitor", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let ready = notifications(&socket, Duration::from_secs(10), "READY=1");
    assert!(ready.contains("READY=1"), "{ready:?}");
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(eventually(Duration::from_secs(5), || read_log().contains("restart it to apply changes")).is_some(), "{}", read_log());
    assert!(child.0.try_wait().unwrap().is_none(), "SIGHUP ended the monitor\n{}", read_log());
    wait_listening((ip, 9400).into(), Duration::from_secs(2));
}

#[test]
fn sighup_reloads_the_tls_material_too() {
    let pool = "[[pool]]\nname = \"www.example.test.\"\nmembers = [{ id = \"web1\", address = \"192.0.2.1\" }]\n";
    let pki = tempfile::tempdir().unwrap();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/make-pki.sh")).arg(pki.path()).arg("ops").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let extra = format!(
        "token = \"admin-token-0123456789ab\"\n[authority.tls]\ncert = \"{0}/server.crt\"\nkey = \"{0}/server.key\"\n",
        pki.path().display()
    );
    let a = Authority::prepared(&[("example.test.zone", ZONE)], pool, &extra);
    let log = a.dir.path().join("service.log");
    let child = Proc(
        Command::new(VNAMED)
            .args(["authority", "--config"])
            .arg(&a.config)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(eventually(Duration::from_secs(10), || read_log().contains("gRPC API serving")).is_some(), "{}", read_log());
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(5), || {
            let l = read_log();
            l.contains("what=\"TLS material\"") && l.contains("TLS material reloaded")
        })
        .is_some(),
        "{}",
        read_log()
    );
    assert!(a.dig("www.example.test A +short").contains("192.0.2.1"), "{}", read_log());
}
