//! A farm of two backends behind `vnamed farm`, next to a standalone
//! backend: the farm's local policy (priority) picks the server inside the
//! farm while the global policy (least-loaded) picks between the farm and
//! the standalone server. Real listeners, real monitors, real `dig`.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use common::{Authority, Proc, ZONE, eventually, spawn_role, unique_ip};

/// A monitor for `host` with a tcp check and a load file it reads.
fn monitor(dir: &Path, host: &str, backend: Ipv4Addr, upstream: &str) -> Proc {
    let load = dir.join(format!("{host}.load"));
    spawn_role(
        dir,
        "monitor",
        host,
        &format!(
            r#"
[monitor]
host = "{host}"
report_to = ["{upstream}"]
refresh = "300ms"
[[monitor.check]]
pool = "www.example.test."
kind = "tcp"
target = "{backend}:8080"
interval = "100ms"
fall = 1
[[monitor.check]]
pool = "www.example.test."
kind = "file"
target = "{}"
interval = "100ms"
"#,
            load.display()
        ),
    )
}

fn set_load(dir: &Path, host: &str, load: f64) {
    let tmp = dir.join(format!("{host}.load.tmp"));
    std::fs::write(&tmp, format!("load={load}\n")).unwrap();
    std::fs::rename(tmp, dir.join(format!("{host}.load"))).unwrap();
}

#[test]
fn local_policy_inside_the_farm_global_policy_across() {
    let (web1, b1, b2, farm_ip) = (unique_ip(), unique_ip(), unique_ip(), unique_ip());
    let _l1 = TcpListener::bind((web1, 8080)).unwrap();
    let _lb1 = TcpListener::bind((b1, 8080)).unwrap();
    let lb2 = TcpListener::bind((b2, 8080)).unwrap();
    let pool = format!(
        "[[pool]]\nname = \"www.example.test.\"\npolicy = \"least-loaded\"\nselect = \"best\"\nstale_after = \"2s\"\n\
         members = [ {{ id = \"web1\", address = \"{web1}\" }}, {{ id = \"east\", farm = \"east\" }} ]\n"
    );
    let a = Authority::start(&[("example.test.zone", ZONE)], &pool);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (host, load) in [("web1", 0.5), ("b1", 0.1), ("b2", 0.7)] {
        set_load(d, host, load);
    }
    let _farm = spawn_role(
        d,
        "farm",
        "east",
        &format!(
            r#"
[farm]
name = "east"
listen = "{farm_ip}:7460"
report_to = ["{grpc}"]
mode = "entity"
refresh = "300ms"
[[farm.pool]]
name = "www.example.test."
policy = "priority"
stale_after = "2s"
members = [ {{ id = "b2", address = "{b2}" }}, {{ id = "b1", address = "{b1}" }} ]
"#,
            grpc = a.grpc
        ),
    );
    let farm_url = format!("http://{farm_ip}:7460");
    let _monitors = [monitor(d, "web1", web1, &a.grpc), monitor(d, "b1", b1, &farm_url), monitor(d, "b2", b2, &farm_url)];
    let answer = || a.dig("www.example.test A +short").trim().to_owned();
    let logs = || {
        ["east", "web1", "b1", "b2"]
            .iter()
            .map(|n| format!("--- {n}\n{}", std::fs::read_to_string(d.join(format!("{n}.log"))).unwrap_or_default()))
            .collect::<String>()
            + &a.log()
    };

    // Global least-loaded: web1 (0.5) beats the farm, whose figure is its preferred b2's (0.7).
    assert!(
        eventually(Duration::from_secs(5), || answer() == web1.to_string() && a.dig("example.test SOA").contains("NOERROR")).is_some(),
        "{}",
        logs()
    );
    let status = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || String::from_utf8(a.cli(&["status"]).stdout).unwrap().contains(&b2.to_string())).is_some(),
        "the farm entity takes its preferred server's address: {status}"
    );

    // web1 gets busy: the farm wins, and inside it the local policy (priority) picks b2,
    // although b1 is less loaded.
    set_load(d, "web1", 0.9);
    assert!(eventually(Duration::from_secs(3), || answer() == b2.to_string()).is_some(), "answer {}\n{}", answer(), logs());

    // b2 dies: the farm's local policy falls back to b1.
    drop(lb2);
    assert!(eventually(Duration::from_secs(3), || answer() == b1.to_string()).is_some(), "answer {}\n{}", answer(), logs());
}

#[test]
fn a_farm_at_capacity_spills_over_to_the_next_in_line() {
    let (web1, b1, b2, farm_ip) = (unique_ip(), unique_ip(), unique_ip(), unique_ip());
    let _listeners = [web1, b1, b2].map(|ip| TcpListener::bind((ip, 8080)).unwrap());
    // Global priority: the farm first while it has room (its figure is its
    // preferred member's load), web1 next.
    let pool = format!(
        "[[pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\ncapacity_metric = \"load\"\nstale_after = \"2s\"\n\
         members = [ {{ id = \"east\", farm = \"east\", capacity = 0.8 }}, {{ id = \"web1\", address = \"{web1}\" }} ]\n"
    );
    let a = Authority::start(&[("example.test.zone", ZONE)], &pool);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (host, load) in [("web1", 0.1), ("b1", 0.3), ("b2", 0.5)] {
        set_load(d, host, load);
    }
    let _farm = spawn_role(
        d,
        "farm",
        "east",
        &format!(
            r#"
[farm]
name = "east"
listen = "{farm_ip}:7460"
report_to = ["{grpc}"]
mode = "entity"
refresh = "300ms"
[[farm.pool]]
name = "www.example.test."
policy = "least-loaded"
stale_after = "2s"
members = [ {{ id = "b1", address = "{b1}" }}, {{ id = "b2", address = "{b2}" }} ]
"#,
            grpc = a.grpc
        ),
    );
    let farm_url = format!("http://{farm_ip}:7460");
    let _monitors = [monitor(d, "web1", web1, &a.grpc), monitor(d, "b1", b1, &farm_url), monitor(d, "b2", b2, &farm_url)];
    let answer = || a.dig("www.example.test A +short").trim().to_owned();
    let in_farm = |s: &str| s == b1.to_string() || s == b2.to_string();
    let logs = || {
        ["east", "web1", "b1", "b2"]
            .iter()
            .map(|n| format!("--- {n}\n{}", std::fs::read_to_string(d.join(format!("{n}.log"))).unwrap_or_default()))
            .collect::<String>()
            + &a.log()
    };

    // The farm has room: it answers (with a member of its own), though web1 is idler.
    assert!(eventually(Duration::from_secs(5), || in_farm(&answer())).is_some(), "answer {}\n{}", answer(), logs());
    // Every member of the farm full: the global policy spills over to web1.
    set_load(d, "b1", 0.9);
    set_load(d, "b2", 0.95);
    assert!(eventually(Duration::from_secs(5), || answer() == web1.to_string()).is_some(), "answer {}\n{}", answer(), logs());
    // One of them has room again: the farm takes its clients back.
    set_load(d, "b2", 0.2);
    assert!(eventually(Duration::from_secs(5), || answer() == b2.to_string()).is_some(), "answer {}\n{}", answer(), logs());
}
