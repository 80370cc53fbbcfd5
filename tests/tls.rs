//! The control plane closed to strangers, checked by independent clients
//! (Python grpcio, `openssl s_client`) against a PKI made by the test:
//! with mutual TLS, no certificate or one from another CA never gets a
//! handshake; a certificate or token is held to its scopes (report, ring,
//! admin); the server's certificate is reloaded when its file changes;
//! and a listener off loopback with neither mutual TLS nor a token does
//! not start unless `insecure = true` says so.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Authority, ZONE};

const POOL: &str = r#"
[[pool]]
name = "www.example.test."
select = "best"
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "127.0.10.2" } ]
"#;

const REPORT_TOKEN: &str = "report-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789ab";

fn pki(dir: &Path) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/make-pki.sh"))
        .arg(dir)
        .args(["monitor-a", "ops", "stranger"])
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// One call by the Python client: the gRPC status code's name.
fn call(address: &str, tls: Option<(&Path, &str)>, token: Option<&str>, what: &[&str]) -> String {
    let (ca, cert, key) = match tls {
        Some((dir, who)) => (
            dir.join("ca.crt").display().to_string(),
            dir.join(format!("{who}.crt")).display().to_string(),
            dir.join(format!("{who}.key")).display().to_string(),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tls_client.py"))
        .args([address, &ca, &cert, &key, token.unwrap_or("-")])
        .args(what)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `openssl s_client` with an optional client identity: its output. With
/// TLS 1.3 a refused client certificate is told after the client's side
/// of the handshake, so `wait` reads on until the server closes.
fn s_client_as(addr: &str, dir: &Path, who: Option<&str>, wait: bool) -> String {
    let mut c = Command::new("timeout");
    c.args(["10", "openssl", "s_client", "-connect", addr, "-alpn", "h2", "-CAfile"]).arg(dir.join("ca.crt"));
    if wait {
        c.arg("-ign_eof");
    }
    if let Some(who) = who {
        c.arg("-cert").arg(dir.join(format!("{who}.crt"))).arg("-key").arg(dir.join(format!("{who}.key")));
    }
    let out = c.stdin(std::process::Stdio::null()).output().expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn s_client(addr: &str, dir: &Path, who: Option<&str>) -> String {
    s_client_as(addr, dir, who, false)
}

#[test]
fn mutual_tls_and_scopes_keep_strangers_out() {
    let pki_dir = tempfile::tempdir().unwrap();
    let dir = pki_dir.path();
    pki(dir);
    let extra = format!(
        "[authority.tls]\ncert = \"{0}/server.crt\"\nkey = \"{0}/server.key\"\nclient_ca = \"{0}/ca.crt\"\n\
         [[authority.credential]]\nclient = \"monitor-a\"\nscopes = [\"report\"]\n\
         [[authority.credential]]\nclient = \"ops\"\nscopes = [\"admin\"]\n\
         [[authority.credential]]\ntoken = \"{REPORT_TOKEN}\"\nscopes = [\"report\"]\n",
        dir.display()
    );
    let a = Authority::in_process_with(&[("example.test.zone", ZONE)], POOL, &extra);
    let addr = a.grpc.trim_start_matches("http://").to_owned();
    let report = ["report", "www.example.test.", "web1"];
    let set_down = ["set-member", "www.example.test.", "web2", "down"];
    // Who calls, with which certificate and token, what, and the answer.
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        // No certificate, or one from a CA nobody trusts: no handshake.
        ("no certificate", None, None, &report, "UNAVAILABLE"),
        ("rogue CA", Some("rogue"), None, &report, "UNAVAILABLE"),
        ("no certificate, a token", None, Some(REPORT_TOKEN), &report, "UNAVAILABLE"),
        // A trusted certificate with no credential: not authenticated.
        ("stranger", Some("stranger"), None, &report, "UNAUTHENTICATED"),
        ("stranger", Some("stranger"), None, &["status"], "UNAUTHENTICATED"),
        // A monitor's certificate: reports and reads, nothing else.
        ("monitor", Some("monitor-a"), None, &report, "OK"),
        ("monitor", Some("monitor-a"), None, &["status"], "OK"),
        ("monitor", Some("monitor-a"), None, &set_down, "PERMISSION_DENIED"),
        ("monitor", Some("monitor-a"), None, &["ring-table"], "PERMISSION_DENIED"),
        // A report token is a report credential, whoever holds it.
        ("stranger with a report token", Some("stranger"), Some(REPORT_TOKEN), &report, "OK"),
        ("stranger with a report token", Some("stranger"), Some(REPORT_TOKEN), &set_down, "PERMISSION_DENIED"),
        ("stranger with a wrong token", Some("stranger"), Some("not-a-token-at-all-0000"), &report, "UNAUTHENTICATED"),
        // The operator's certificate administers.
        ("ops", Some("ops"), None, &set_down, "OK"),
        ("ops", Some("ops"), None, &report, "PERMISSION_DENIED"),
    ];
    for (who, cert, token, what, expected) in cases {
        let got = call(&addr, cert.map(|c| (dir, c)), *token, what);
        assert_eq!(&got, expected, "{who}: {what:?}");
    }
    // Only the admin's call changed anything.
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");

    // openssl: refused without a certificate, h2 with one.
    let without = s_client_as(&addr, dir, None, true);
    assert!(without.contains("alert certificate required"), "{without}");
    let with = s_client(&addr, dir, Some("ops"));
    assert!(with.contains("Verify return code: 0 (ok)") && with.contains("ALPN protocol: h2"), "{with}");
    let rogue = s_client_as(&addr, dir, Some("rogue"), true);
    assert!(rogue.contains("alert unknown ca") || rogue.contains("alert bad certificate"), "{rogue}");

    // A new certificate is served once its file is replaced; a broken one
    // is refused and the last good one stays.
    let subject = |out: &str| out.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().to_owned();
    assert!(subject(&with).contains("CN=server") || subject(&with).contains("CN = server"), "{with}");
    let renewed = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("ca.crt"), renewed.path().join("ca.crt")).unwrap();
    std::fs::copy(dir.join("ca.key"), renewed.path().join("ca.key")).unwrap();
    let out = Command::new("openssl")
        .current_dir(renewed.path())
        .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=server-renewed"])
        .args(["-keyout", "new.key", "-out", "new.csr"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(renewed.path().join("ext"), "subjectAltName=DNS:vnamed.test\nextendedKeyUsage=serverAuth\n").unwrap();
    let out = Command::new("openssl")
        .current_dir(renewed.path())
        .args(["x509", "-req", "-in", "new.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"])
        .args(["-extfile", "ext", "-out", "new.crt"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // The key first, then the certificate, each replaced atomically.
    std::fs::copy(renewed.path().join("new.key"), dir.join("server.key.tmp")).unwrap();
    std::fs::rename(dir.join("server.key.tmp"), dir.join("server.key")).unwrap();
    std::fs::copy(renewed.path().join("new.crt"), dir.join("server.crt.tmp")).unwrap();
    std::fs::rename(dir.join("server.crt.tmp"), dir.join("server.crt")).unwrap();
    let reloaded = common::eventually(Duration::from_secs(5), || subject(&s_client(&addr, dir, Some("ops"))).contains("server-renewed"));
    assert!(reloaded.is_some(), "the renewed certificate is served: {}", s_client(&addr, dir, Some("ops")));
    std::fs::write(dir.join("server.crt"), "not a certificate\n").unwrap();
    std::thread::sleep(Duration::from_millis(500)); // a reload would have happened by now
    let still = s_client(&addr, dir, Some("ops"));
    assert!(subject(&still).contains("server-renewed") && still.contains("Verify return code: 0 (ok)"), "{still}");
    assert_eq!(call(&addr, Some((dir, "monitor-a")), None, &report), "OK");
}

#[test]
fn scoped_tokens_over_plain_grpc_on_loopback() {
    let extra = format!(
        "[[authority.credential]]\ntoken = \"{REPORT_TOKEN}\"\nscopes = [\"report\"]\n\
         [[authority.credential]]\ntoken = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\", \"ring\"]\n"
    );
    let a = Authority::in_process_with(&[("example.test.zone", ZONE)], POOL, &extra);
    let addr = a.grpc.trim_start_matches("http://").to_owned();
    let report = ["report", "www.example.test.", "web1"];
    let set_down = ["set-member", "www.example.test.", "web1", "down"];
    assert_eq!(call(&addr, None, None, &report), "UNAUTHENTICATED");
    assert_eq!(call(&addr, None, Some(REPORT_TOKEN), &report), "OK");
    assert_eq!(call(&addr, None, Some(REPORT_TOKEN), &set_down), "PERMISSION_DENIED");
    assert_eq!(call(&addr, None, Some(REPORT_TOKEN), &["ring-table"]), "PERMISSION_DENIED");
    assert_eq!(call(&addr, None, Some(ADMIN_TOKEN), &report), "PERMISSION_DENIED");
    assert_eq!(call(&addr, None, Some(ADMIN_TOKEN), &["ring-table"]), "OK");
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");
    assert_eq!(call(&addr, None, Some(ADMIN_TOKEN), &set_down), "OK");
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.2");
    // The vnamed CLI with the admin token.
    let out = a.cli(&["status", "--token", ADMIN_TOKEN]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = a.cli(&["status", "--token", REPORT_TOKEN]);
    assert!(out.status.success(), "a report credential may read: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_open_listener_off_loopback_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("zones")).unwrap();
    std::fs::write(dir.path().join("zones/example.test.zone"), ZONE.replace("IP", "127.0.0.1")).unwrap();
    let run = |grpc: &str, extra: &str| {
        let config = dir.path().join("v.toml");
        std::fs::write(
            &config,
            format!(
                "[authority]\ndns_listen = [\"127.0.0.1:0\"]\ngrpc_listen = \"{grpc}\"\nzones_dir = \"{}\"\n{extra}\n",
                dir.path().join("zones").display()
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_vnamed")).args(["authority", "--config"]).arg(&config).arg("--check").output().unwrap()
    };
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7443"] {
        let out = run(addr, "");
        let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && said.contains("not on loopback"), "{addr}: {said}");
        let out = run(addr, "insecure = true");
        let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("not on loopback"), "{addr} with insecure = true: {said}");
        let out = run(addr, &format!("[[authority.credential]]\ntoken = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\"]"));
        let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("not on loopback"), "{addr} with a token: {said}");
    }
    let out = run("127.0.0.1:0", "");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not on loopback"));
}

/// vnamed's own clients over mutual TLS: a monitor reports to an
/// `https://` authority with its certificate, and the CLI administers
/// with the operator's; with another's certificate the CLI is refused.
#[test]
fn monitors_and_the_cli_speak_mutual_tls() {
    let pki_dir = tempfile::tempdir().unwrap();
    let dir = pki_dir.path();
    pki(dir);
    let pools = "[[pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\nstale_after = \"2s\"\nfallback = \"servfail\"\n\
                 members = [ { id = \"monitor-a\", address = \"127.0.10.1\" }, { id = \"web2\", address = \"127.0.10.2\" } ]\n";
    let extra = format!(
        "[authority.tls]\ncert = \"{0}/server.crt\"\nkey = \"{0}/server.key\"\nclient_ca = \"{0}/ca.crt\"\n\
         [[authority.credential]]\nclient = \"monitor-a\"\nscopes = [\"report\"]\n\
         [[authority.credential]]\nclient = \"ops\"\nscopes = [\"admin\"]\n",
        dir.display()
    );
    let a = Authority::in_process_with(&[("example.test.zone", ZONE)], pools, &extra);
    let url = a.grpc.replace("http://", "https://");
    let backend = std::net::TcpListener::bind((common::unique_ip(), 0)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let _monitor = common::spawn_role(
        work.path(),
        "monitor",
        "m",
        &format!(
            "[monitor]\nhost = \"monitor-a\"\nreport_to = [\"{url}\"]\nrefresh = \"200ms\"\n\
             [monitor.client_tls]\nca = \"{0}/ca.crt\"\ncert = \"{0}/monitor-a.crt\"\nkey = \"{0}/monitor-a.key\"\nserver_name = \"vnamed.test\"\n\
             [[monitor.check]]\npool = \"www.example.test.\"\nkind = \"tcp\"\ntarget = \"{1}\"\ninterval = \"100ms\"\nrise = 1\n",
            dir.display(),
            backend.local_addr().unwrap()
        ),
    );
    let accepted = |a: &Authority| {
        common::scrape((a.ip, a.metrics))
            .lines()
            .find_map(|l| l.strip_prefix("vnamed_reports_accepted_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let up = common::eventually(Duration::from_secs(10), || accepted(&a) >= 2);
    let log = std::fs::read_to_string(work.path().join("m.log")).unwrap_or_default();
    assert!(up.is_some(), "the monitor's reports arrive over mutual TLS:\n{log}");

    let cli = |who: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vnamed"))
            .args(args)
            .args(["--server", &url, "--server-name", "vnamed.test", "--ca"])
            .arg(dir.join("ca.crt"))
            .arg("--cert")
            .arg(dir.join(format!("{who}.crt")))
            .arg("--key")
            .arg(dir.join(format!("{who}.key")))
            .output()
            .unwrap()
    };
    let set_down = ["member", "www.example.test.", "monitor-a", "--admin", "down"];
    let refused = cli("monitor-a", &set_down);
    assert!(!refused.status.success(), "a report certificate cannot administer");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("may not call admin"), "{}", String::from_utf8_lossy(&refused.stderr));
    let done = cli("ops", &set_down);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_ne!(a.dig("www.example.test A +short").trim(), "127.0.10.1", "monitor-a is down by the operator's word");
    let status = cli("monitor-a", &["status"]);
    assert!(status.status.success() && String::from_utf8_lossy(&status.stdout).contains("monitor-a"), "a report certificate may read");
}

/// A farm listens with mutual TLS: its monitor reports over https with a
/// client certificate and the farm's pick reaches the authority; a
/// monitor without a certificate gets nothing through.
#[test]
fn a_farm_listens_with_mutual_tls() {
    let pki_dir = tempfile::tempdir().unwrap();
    let dir = pki_dir.path();
    pki(dir);
    let (b1, stray, farm_ip) = (common::unique_ip(), common::unique_ip(), common::unique_ip());
    let _l1 = std::net::TcpListener::bind((b1, 8080)).unwrap();
    let _l2 = std::net::TcpListener::bind((stray, 8080)).unwrap();
    let pool = "[[pool]]\nname = \"www.example.test.\"\nstale_after = \"2s\"\nmembers = [ { id = \"east\", farm = \"east\" } ]\n";
    let a = Authority::in_process(&[("example.test.zone", ZONE)], pool);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let _farm = common::spawn_role(
        w,
        "farm",
        "east",
        &format!(
            "[farm]\nname = \"east\"\nlisten = \"{farm_ip}:7460\"\nreport_to = [\"{grpc}\"]\nmode = \"entity\"\nrefresh = \"300ms\"\n\
             [farm.tls]\ncert = \"{0}/server.crt\"\nkey = \"{0}/server.key\"\nclient_ca = \"{0}/ca.crt\"\n\
             [[farm.pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\nstale_after = \"2s\"\n\
             members = [ {{ id = \"b1\", address = \"{b1}\" }}, {{ id = \"stray\", address = \"{stray}\" }} ]\n",
            dir.display(),
            grpc = a.grpc
        ),
    );
    let monitor = |host: &str, backend: std::net::Ipv4Addr, tls: &str| {
        common::spawn_role(
            w,
            "monitor",
            host,
            &format!(
                "[monitor]\nhost = \"{host}\"\nreport_to = [\"https://{farm_ip}:7460\"]\nrefresh = \"200ms\"\n{tls}\n\
                 [[monitor.check]]\npool = \"www.example.test.\"\nkind = \"tcp\"\ntarget = \"{backend}:8080\"\ninterval = \"100ms\"\nrise = 1\n"
            ),
        )
    };
    let client_tls = |who: &str| {
        format!(
            "[monitor.client_tls]\nca = \"{0}/ca.crt\"\ncert = \"{0}/{who}.crt\"\nkey = \"{0}/{who}.key\"\nserver_name = \"vnamed.test\"",
            dir.display()
        )
    };
    // Only the stray server's monitor, without a certificate: nothing gets through.
    let _stray =
        monitor("stray", stray, &format!("[monitor.client_tls]\nca = \"{}/ca.crt\"\nserver_name = \"vnamed.test\"", dir.display()));
    std::thread::sleep(Duration::from_millis(1500)); // several refused report rounds
    assert_eq!(a.dig("www.example.test A +short").trim(), "", "no farm server is known yet");
    let _b1 = monitor("b1", b1, &client_tls("monitor-a"));
    let log = || std::fs::read_to_string(w.join("east.log")).unwrap_or_default();
    let got = common::eventually(Duration::from_secs(10), || a.dig("www.example.test A +short").trim() == b1.to_string());
    assert!(got.is_some(), "the farm's pick arrives through its TLS listener:\n{}", log());
}
