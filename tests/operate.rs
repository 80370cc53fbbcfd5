//! What an operator installs beside vnamed, checked by the tools that
//! consume it: the Prometheus alerting rules by `promtool` (syntax and
//! their unit tests), the rules' and the Grafana dashboard's metric names
//! against a live authority's and monitor's `/metrics`, and `vnamed init`'s
//! starter files by `named-checkzone`, `vnamed authority --check`, a real
//! start and `dig`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Authority, Proc, VNAMED, ZONE, eventually, named_checkzone, scrape, spawn_role, unique_ip, wait_listening};

const CONTRIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib");

fn promtool(args: &[&str]) -> String {
    promtool_with(args, "")
}

/// `promtool` with `input` on its standard input.
fn promtool_with(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(CONTRIB).join("prometheus"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/setup.sh installs Debian's prometheus)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alerting_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "vnamed.rules.yml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "vnamed.rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `vnamed_...` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("vnamed_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if end > "vnamed_".len() {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The sample names a scrape can carry: each family's, with the suffixes
/// its type adds (`_total` for counters; `_bucket`, `_sum`, `_count` for
/// histograms).
fn exported(scrapes: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrapes.iter().flat_map(|s| s.lines()) {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) = (words.next(), words.next(), words.next(), words.next()) {
            let suffixes: &[&str] = match kind {
                "counter" if name.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    names
}

#[test]
fn the_rules_and_the_dashboard_use_only_metrics_vnamed_exports() {
    let (host, backend) = (unique_ip(), std::net::TcpListener::bind((unique_ip(), 0)).unwrap());
    let pool = format!("[[pool]]\nname = \"www.example.test.\"\nmembers = [{{ id = \"web1\", address = \"{host}\" }}]\n");
    let a = Authority::start(&[("example.test.zone", ZONE)], &pool);
    let dir = tempfile::tempdir().unwrap();
    let _monitor: Proc = spawn_role(
        dir.path(),
        "monitor",
        "web1",
        &format!(
            r#"
[monitor]
host = "web1"
report_to = ["{grpc}"]
metrics_listen = "{host}:9400"
[[monitor.check]]
pool = "www.example.test."
kind = "tcp"
target = "{backend}"
interval = "100ms"
[ring]
listen = "{host}:7946"
"#,
            grpc = a.grpc,
            backend = backend.local_addr().unwrap(),
        ),
    );
    wait_listening((host, 9400).into(), Duration::from_secs(10));
    // The check has run once: its gauge has a sample.
    assert!(eventually(Duration::from_secs(5), || scrape((host, 9400)).contains("vnamed_monitor_check_up{")).is_some());
    let scrapes = [scrape((a.ip, a.metrics)), scrape((host, 9400))];
    // Both roles' scrapes are clean Prometheus text for promtool's linter
    // (every family has HELP text, names and types agree).
    for scraped in &scrapes {
        let (head, body) = scraped.split_once("\r\n\r\n").unwrap();
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
        assert!(!body.contains("# EOF"), "{body}");
        promtool_with(&["check", "metrics"], body);
    }
    let exported = exported(&scrapes);
    assert!(exported.contains("vnamed_member_up") && exported.contains("vnamed_ring_members"), "{exported:?}");

    for file in ["prometheus/vnamed.rules.yml", "prometheus/vnamed.rules.test.yml", "grafana/vnamed.json"] {
        let text = std::fs::read_to_string(Path::new(CONTRIB).join(file)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 6, "{file} names too few metrics to be checked: {used:?}");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(unknown.is_empty(), "{file} uses metrics vnamed does not export: {unknown:?}\nexported: {exported:?}");
    }
    // The fallback gauge the first rule watches follows the pool: its only
    // member's port closes, the monitor says so, and the pool falls back.
    let auth = || scrape((a.ip, a.metrics));
    let line = |name: &str, v: u8| format!("{name}{{pool=\"www.example.test.\"}} {v}");
    assert!(
        eventually(Duration::from_secs(5), || auth().contains("vnamed_member_up{pool=\"www.example.test.\",member=\"web1\"} 1")).is_some()
    );
    assert!(auth().contains(&line("vnamed_pool_fallback", 0)), "{}", auth());
    drop(backend);
    assert!(eventually(Duration::from_secs(5), || auth().contains(&line("vnamed_pool_fallback", 1))).is_some(), "{}", auth());
    // The dashboard is valid JSON with panels whose queries are all checked above.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(CONTRIB).join("grafana/vnamed.json")).unwrap()).unwrap();
    let queries: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(queries.len() >= 20, "{queries:?}");
    assert!(queries.iter().all(|q| q.contains("vnamed_")), "{queries:?}");
}

#[test]
fn vnamed_init_writes_files_that_the_checkers_and_the_authority_accept() {
    let dir = tempfile::tempdir().unwrap();
    let ip = unique_ip();
    let run = |args: &[&str]| Command::new(VNAMED).args(args).output().unwrap();
    let d = dir.path().to_str().unwrap();
    let listen = format!("{ip}:5300");
    let out = run(&[
        "init",
        "--zone",
        "example.com",
        "--pool",
        "www",
        "--backend",
        "192.0.2.10:80",
        "--backend",
        "192.0.2.11:80",
        "--dir",
        d,
        "--listen",
        &listen,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vnamed authority --check --config"));

    let zone = dir.path().join("zones/example.com.zone");
    named_checkzone("example.com", &zone).unwrap();
    // Written again without --force: refused, the files kept.
    let again = run(&["init", "--zone", "example.com", "--backend", "192.0.2.10", "--dir", d]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));

    // Its gRPC address is the same loopback one in every starter file: give
    // this test's authority its own, as an operator would edit it.
    let config = dir.path().join("vnamed.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("grpc_listen = \"127.0.0.1:7443\""), "{text}");
    std::fs::write(&config, text.replace("127.0.0.1:7443", &format!("{ip}:7443")).replace("127.0.0.1:9353", &format!("{ip}:9353")))
        .unwrap();
    let check = run(&["authority", "--check", "--config", config.to_str().unwrap()]);
    assert!(check.status.success(), "{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("valid, 1 pools"));
    let monitor = vnamed::config::Config::read(&dir.path().join("monitor.toml")).unwrap();
    assert_eq!(monitor.monitor.unwrap().check.len(), 2);

    // Started as written, it answers for the pool (no reports yet: both members).
    let _authority = Proc(
        Command::new(VNAMED)
            .args(["authority", "--config", config.to_str().unwrap()])
            .stderr(std::fs::File::create(dir.path().join("authority.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening((ip, 7443).into(), Duration::from_secs(10));
    let answer = || {
        let mut a: Vec<String> = common::dig(ip.into(), 5300, "www.example.com A +short").lines().map(str::to_owned).collect();
        a.sort();
        a
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            // One query per try: the two members' answers alternate.
            let a = answer();
            a == ["192.0.2.10"] || a == ["192.0.2.11"]
        })
        .is_some(),
        "{:?}\n{}",
        answer(),
        std::fs::read_to_string(dir.path().join("authority.log")).unwrap_or_default()
    );
    assert!(common::dig(ip.into(), 5300, "example.com SOA +short").contains("ns1.example.com."));
}
