//! The configuration file is live: members added, a policy changed, a
//! lifetime or a maintenance window given, a pool added or removed all
//! take effect without a restart; an invalid edit is refused with a clear
//! message and changes nothing.

mod common;

use std::time::{Duration, SystemTime};

use common::{Authority, ZONE, eventually, named_checkzone};

fn at(from_now: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + from_now).to_string()
}

#[test]
fn pool_edits_take_effect_while_serving() {
    let pool = |members: &str, policy: &str, extra: &str| {
        format!("[[pool]]\nname = \"www.example.test.\"\npolicy = \"{policy}\"\nselect = \"best\"\nmembers = [ {members} ]\n{extra}")
    };
    let web1 = r#"{ id = "web1", address = "127.0.10.1" }"#;
    let web2 = r#"{ id = "web2", address = "127.0.10.2" }"#;
    let a = Authority::start(&[("example.test.zone", ZONE)], &pool(&format!("{web1}, {web2}"), "priority", ""));
    let base = std::fs::read_to_string(&a.config).unwrap();
    let base = &base[..base.find("[[pool]]").unwrap()];
    let write = |pools: &str| std::fs::write(&a.config, format!("{base}{pools}")).unwrap();
    let answer = || a.dig("www.example.test A +short").trim().to_owned();
    let within = |want: &str, d: Duration| eventually(d, || answer() == want).is_some();
    assert_eq!(answer(), "127.0.10.1");

    // A new member first in priority order.
    let web0 = r#"{ id = "web0", address = "127.0.10.9" }"#;
    write(&pool(&format!("{web0}, {web1}, {web2}"), "priority", ""));
    assert!(within("127.0.10.9", Duration::from_secs(1)), "member added: {}\n{}", answer(), a.log());

    // Policy changed, weights given.
    let heavy = r#"{ id = "web2", address = "127.0.10.2", weight = 5 }"#;
    write(&pool(&format!("{web0}, {web1}, {heavy}"), "weighted", ""));
    assert!(within("127.0.10.2", Duration::from_secs(1)), "policy changed: {}", answer());

    // A lifetime: web2 leaves at its time, not before.
    let mortal = format!(r#"{{ id = "web2", address = "127.0.10.2", weight = 5, until = "{}" }}"#, at(Duration::from_secs(3)));
    write(&pool(&format!("{web0}, {web1}, {mortal}"), "weighted", ""));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(answer(), "127.0.10.2", "still alive before its time");
    assert!(within("127.0.10.9", Duration::from_secs(4)), "expired member left: {}", answer());
    let status = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(status.contains("expired"), "{status}");

    // A maintenance window for web0, starting now.
    let resting = format!(
        r#"{{ id = "web0", address = "127.0.10.9", maintenance = [ {{ from = "{}", until = "{}" }} ] }}"#,
        at(Duration::ZERO),
        at(Duration::from_secs(3600))
    );
    write(&pool(&format!("{resting}, {web1}, {mortal}"), "weighted", ""));
    assert!(within("127.0.10.1", Duration::from_secs(1)), "member in maintenance left: {}", answer());

    // Invalid edits change nothing and say why.
    write(&pool(&format!("{web0}, {web1}"), "weighted", "ttl = \"five\"\n"));
    assert!(eventually(Duration::from_secs(2), || a.log().contains("configuration edit refused")).is_some(), "{}", a.log());
    write(&format!(
        "{}\n[[pool]]\nname = \"www.elsewhere.test.\"\nmembers = [ {web1} ]\n",
        pool(&format!("{web0}, {web1}"), "priority", "")
    ));
    assert!(eventually(Duration::from_secs(2), || a.log().contains("www.elsewhere.test.: no zone file")).is_some(), "{}", a.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(answer(), "127.0.10.1", "refused edits changed nothing");

    // A pool added, then removed with its managed block.
    let api = "[[pool]]\nname = \"api.example.test.\"\nmembers = [ { id = \"api1\", address = \"127.0.10.7\" } ]\n";
    write(&format!("{}\n{api}", pool(&format!("{web1}, {web2}"), "priority", "")));
    assert!(eventually(Duration::from_secs(1), || a.dig("api.example.test A +short").trim() == "127.0.10.7").is_some(), "{}", a.log());
    assert!(eventually(Duration::from_secs(2), || a.zone_text("example.test.zone").contains("vnamed:begin api.example.test.")).is_some());
    write(&pool(&format!("{web1}, {web2}"), "priority", ""));
    assert!(eventually(Duration::from_secs(1), || a.dig("api.example.test A").contains("status: NXDOMAIN")).is_some(), "{}", a.log());
    assert!(
        eventually(Duration::from_secs(2), || !a.zone_text("example.test.zone").contains("api.example.test.")).is_some(),
        "{}",
        a.zone_text("example.test.zone")
    );
    named_checkzone("example.test", &a.zones_dir().join("example.test.zone")).unwrap();
    assert_eq!(answer(), "127.0.10.1");
}

/// A configuration file caught empty (an editor or a deployment tool in
/// the middle of writing it), or left with no pools, is refused: every
/// name keeps answering, the managed blocks and hand overrides stay.
#[test]
fn an_emptied_or_pool_less_config_file_is_refused() {
    let pool = "[[pool]]\nname = \"www.example.test.\"\nmembers = [ { id = \"web1\", address = \"127.0.10.1\" }, { id = \"web2\", address = \"127.0.10.2\" } ]\n";
    let a = Authority::start(&[("example.test.zone", ZONE)], pool);
    let full = std::fs::read_to_string(&a.config).unwrap();
    let answer = || a.dig("www.example.test A +short").trim().to_owned();
    assert!(a.cli(&["member", "www.example.test.", "web1", "--admin", "down"]).status.success());
    assert!(eventually(Duration::from_secs(1), || answer() == "127.0.10.2").is_some(), "{}", answer());

    std::fs::write(&a.config, "").unwrap();
    assert!(eventually(Duration::from_secs(2), || a.log().contains("no [authority] section")).is_some(), "{}", a.log());
    let authority_only = &full[..full.find("[[pool]]").unwrap()];
    std::fs::write(&a.config, authority_only).unwrap();
    assert!(eventually(Duration::from_secs(2), || a.log().contains("would remove every pool")).is_some(), "{}", a.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(answer(), "127.0.10.2", "the pool still answers, web1 still down by hand");
    assert!(a.zone_text("example.test.zone").contains("vnamed:begin www.example.test."), "{}", a.zone_text("example.test.zone"));

    // The whole file back: nothing was lost, the override included.
    std::fs::write(&a.config, &full).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(answer(), "127.0.10.2");
}

/// `vnamed authority --config F --check` says what reloading F would do to
/// the running authority, and does nothing; a file a reload would refuse
/// fails the check.
#[test]
fn check_prints_what_a_reload_would_change_and_applies_nothing() {
    let pool = "[[pool]]\nname = \"www.example.test.\"\npolicy = \"priority\"\nmembers = [ { id = \"web1\", address = \"127.0.10.1\" }, { id = \"web2\", address = \"127.0.10.2\" } ]\n";
    let a = Authority::start(&[("example.test.zone", ZONE)], pool);
    assert!(a.cli(&["member", "www.example.test.", "web2", "--weight", "4"]).status.success());
    let full = std::fs::read_to_string(&a.config).unwrap();
    let check = |text: &str| {
        let path = a.dir.path().join("candidate.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(common::VNAMED).args(["authority", "--check", "--config"]).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = check(&full);
    assert!(ok && out.contains("would change nothing"), "{out}");

    let edited = full
        .replace("policy = \"priority\"", "policy = \"round-robin\"")
        .replace("{ id = \"web2\", address = \"127.0.10.2\" }", "{ id = \"web3\", address = \"127.0.10.3\" }")
        + "[[pool]]\nname = \"api.example.test.\"\nmembers = [ { id = \"a1\", address = \"127.0.10.7\" } ]\n";
    let (ok, out) = check(&edited);
    assert!(ok, "{out}");
    for line in [
        "pool www.example.test.: policy Priority -> round-robin",
        "pool www.example.test.: member web2 removed",
        "pool www.example.test.: member web3 added",
        "pool api.example.test. added with 1 members",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    let (ok, out) = check("");
    assert!(!ok && out.contains("refused"), "{out}");
    let (ok, out) = check(&full[..full.find("[[pool]]").unwrap()]);
    assert!(!ok && out.contains("every pool"), "{out}");
    // Nothing was applied.
    assert_eq!(a.dig("www.example.test A +short").trim(), "127.0.10.1");
    assert!(a.dig("api.example.test A").contains("NXDOMAIN"));
}
