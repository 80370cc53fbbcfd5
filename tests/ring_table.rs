//! The ring's server table at the authority: members announce themselves
//! and learn their buddies, a death reported by a buddy takes the host out
//! of every pool's answers at once (no waiting for its reports to go
//! stale), a rejoin brings it back, and the table survives a restart.

mod common;

use std::time::Duration;

use common::{Authority, ZONE, eventually};

const POOLS: &str = r#"
[[pool]]
name = "www.example.test."
policy = "priority"
select = "best"
stale_after = "60s"
members = [ { id = "h2", address = "127.0.20.2" }, { id = "h5", address = "127.0.20.5" }, { id = "h6", address = "127.0.20.6" } ]

[[pool]]
name = "api.example.test."
policy = "priority"
select = "best"
members = [ { id = "h2", address = "127.0.20.2" }, { id = "h6", address = "127.0.20.6" } ]
"#;

fn run(a: &Authority, args: &[&str]) -> String {
    let out = a.cli(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn deaths_leave_every_answer_at_once_and_the_table_survives_restarts() {
    let mut a = Authority::start(&[("example.test.zone", ZONE)], POOLS);
    for h in ["127.0.20.2:7946", "127.0.20.5:7946", "127.0.20.6:7946"] {
        run(&a, &["ring", "announce", h]);
    }
    // The seed's example: .4 joins between .2 and .5.
    let out = run(&a, &["ring", "announce", "127.0.20.4:7946"]);
    assert_eq!(out.trim(), "127.0.20.4:7946: buddies 127.0.20.5:7946 127.0.20.2:7946");
    let table = run(&a, &["ring", "table"]);
    assert!(table.contains("127.0.20.2:7946          buddies 127.0.20.4:7946 127.0.20.6:7946"), "{table}");

    // .2 dies, found by its buddy .4: out of both pools at once.
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.20.2");
    let out = run(&a, &["ring", "delete", "127.0.20.2:7946", "--reporter", "127.0.20.4:7946"]);
    assert!(out.contains("its buddies 127.0.20.4:7946 127.0.20.6:7946"), "{out}");
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.20.5");
    assert_eq!(a.dig("api.example.test A +short").trim(), "127.0.20.6");
    let status = run(&a, &["status"]);
    assert!(status.contains("dead (ring)") && status.contains("127.0.20.2:7946          dead"), "{status}");
    assert!(!a.cli(&["ring", "delete", "127.0.20.2:7946"]).status.success(), "not in the ring any more");

    // The authority restarts: the table and the death come back with it.
    assert!(a.stop().success());
    a.spawn();
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.20.5");
    let table = run(&a, &["ring", "table"]);
    assert!(
        table.contains("ring (3 members)") && table.contains("127.0.20.4:7946          buddies 127.0.20.5:7946 127.0.20.6:7946"),
        "{table}"
    );

    // .2 rejoins: back in the answers.
    run(&a, &["ring", "announce", "127.0.20.2:7946"]);
    assert!(eventually(Duration::from_secs(1), || a.dig("www.example.test A +short").trim() == "127.0.20.2").is_some());

    // A normal shutdown of .5 (it reports itself): it leaves the ring but is not dead.
    run(&a, &["ring", "delete", "127.0.20.5:7946"]);
    assert!(!run(&a, &["ring", "table"]).contains("127.0.20.5:7946          dead"));
}
