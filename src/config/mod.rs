//! The TOML configuration shared by every role, one file per section:
//! parsed strictly into typed fields (unknown keys are errors; times,
//! formulas and URLs are checked as they are read), then each section
//! checks its own rules and every problem is reported at once instead of
//! one per restart. Sections compare by value, so a reload can tell what
//! changed.

pub mod authority;
pub mod cluster;
pub mod dispatch;
pub mod farm;
pub mod formula;
pub mod ident;
pub mod limits;
pub mod monitor;
pub mod pool;
pub mod ring;
pub mod rrl;
pub mod srp;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use authority::AuthorityConfig;
pub use cluster::{Backend, ClusterConfig};
pub use dispatch::{DispatchConfig, DispatchMode, L7Route, VipConfig};
pub use farm::{FarmConfig, FarmMode};
pub use limits::Limits;
pub use monitor::{CheckConfig, CheckKind, MonitorConfig};
pub use pool::{Fallback, MemberConfig, PolicyName, PoolConfig, Quorum, Select, Time, Window, parse_time};
pub use ring::RingConfig;
pub use rrl::Rrl;
pub use srp::{SrpCluster, SrpConfig, SrpInstance};
pub use tls::{ClientTls, Credential, Scope, ServerTls};

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Syntax(String),
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub authority: Option<AuthorityConfig>,
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    pub monitor: Option<MonitorConfig>,
    pub farm: Option<FarmConfig>,
    pub ring: Option<RingConfig>,
    pub srp: Option<SrpConfig>,
    pub dispatch: Option<DispatchConfig>,
    pub cluster: Option<ClusterConfig>,
}

/// The largest configuration file read, in bytes.
pub const CONFIG_LIMIT: u64 = 16 << 20;

impl Config {
    /// Reads and validates a configuration file: a regular file (or a link
    /// to one) of at most `CONFIG_LIMIT` bytes.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::files::read_regular(path, CONFIG_LIMIT, crate::files::Links::Follow)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Syntax(msg) => ConfigError::Syntax(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything serde cannot, section by section, collecting every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Some(a) = &self.authority {
            a.check(&mut problems);
        }
        pool::check_pools("pool", &self.pool, &mut problems);
        if let Some(d) = &self.dispatch {
            d.check(&mut problems);
        }
        if let Some(srp) = &self.srp {
            // In a monitor, an instance's pool is one its checks report on.
            let mut known: Vec<&str> = self.pool.iter().map(|p| p.name.as_str()).collect();
            if let Some(m) = &self.monitor {
                known.extend(m.check.iter().map(|c| c.pool.as_str()));
            }
            srp.check(&known, &mut problems);
        }
        if let Some(m) = &self.monitor {
            m.check(&mut problems);
        }
        if let Some(f) = &self.farm {
            f.check(&mut problems);
        }
        if let Some(r) = &self.ring {
            r.check(&mut problems);
        }
        if let Some(c) = &self.cluster {
            c.check(&mut problems);
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The authority section, or an error naming what is missing.
    pub fn authority(&self) -> Result<&AuthorityConfig, ConfigError> {
        self.authority.as_ref().ok_or_else(|| ConfigError::Invalid(vec!["[authority] section is required for this role".into()]))
    }
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// A gRPC URL (`http://` or `https://` and a host), checked as it is read.
fn url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(s),
        _ => Err(serde::de::Error::custom(format!("{s:?} must be a URL like http://127.0.0.1:7443"))),
    }
}

fn urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Url(#[serde(deserialize_with = "url")] String);
    Ok(Vec::<Url>::deserialize(d)?.into_iter().map(|u| u.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[authority]
dns_listen = ["127.0.0.1:5353"]
zones_dir = "zones"
allow_transfer = ["127.0.0.0/8"]

[[pool]]
name = "www.demo.example."
policy = "least-loaded"
fallback = "servfail"
stale_after = "3s"
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "::1", farm = "east" } ]
"#;

    #[test]
    fn parses_the_contract_shape() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.pool[0].members.len(), 2);
        assert_eq!(c.pool[0].fallback, Fallback::Servfail);
        assert_eq!(c.pool[0].stale_after, Duration::from_secs(3));
        assert_eq!(c.authority.unwrap().zone_write_interval, Duration::from_millis(250));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml(&GOOD.replace("zones_dir", "zone_dir")).unwrap_err();
        assert!(e.to_string().contains("zone_dir"), "{e}");
    }

    #[test]
    fn farm_pools_are_checked_like_pools() {
        let text = r#"
[farm]
name = "east"
listen = "127.0.0.1:7460"
report_to = ["http://127.0.0.1:7443"]
[[farm.pool]]
name = "not a name"
members = []
"#;
        let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else { panic!("expected validation problems") };
        assert!(problems.iter().any(|p| p.starts_with("farm.pool[0]") && p.contains("members must not be empty")), "{problems:?}");
    }

    #[test]
    fn identifiers_follow_one_rule_everywhere() {
        let text = r#"
[monitor]
host = "web 1"
report_to = ["http://127.0.0.1:7443"]
[[monitor.check]]
pool = "www.example."
member = "a\nb"
kind = "tcp"
target = "127.0.0.1:80"

[[pool]]
name = "www.example."
members = [ { id = "-a", address = "127.0.0.1" }, { id = "b", address = "127.0.0.1" }, { id = "c", address = "0.0.0.0" },
            { id = "d", farm = "east west" } ]
"#;
        let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else { panic!("expected validation problems") };
        for says in [
            "monitor.host",
            "member id \"-a\" must start",
            "address 127.0.0.1 is another member's",
            "0.0.0.0 cannot be",
            "farm name",
            "monitor.check[0]",
        ] {
            assert!(problems.iter().any(|p| p.contains(says)), "{says}: {problems:#?}");
        }
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[[pool]]
name = "relative.example"
answers = 0
members = [ { id = "a", address = "127.0.0.1" }, { id = "a", address = "127.0.0.2" } ]
"#;
        let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else { panic!("expected validation problems") };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn typed_fields_are_checked_as_they_are_read() {
        for (bad, says) in [
            (r#"members = [ { id = "a", address = "127.0.0.1", until = "next tuesday" } ]"#, "RFC 3339"),
            (
                r#"formula = "load +"
members = [ { id = "a", address = "127.0.0.1" } ]"#,
                "formula",
            ),
        ] {
            let e = Config::from_toml(&format!("[[pool]]\nname = \"www.example.\"\n{bad}\n")).unwrap_err();
            assert!(matches!(&e, ConfigError::Syntax(m) if m.contains(says)), "{e}");
        }
        let e = Config::from_toml("[monitor]\nhost = \"a\"\nreport_to = [\"127.0.0.1:7443\"]\n").unwrap_err();
        assert!(matches!(&e, ConfigError::Syntax(m) if m.contains("must be a URL")), "{e}");
        let c = Config::from_toml(
            "[[pool]]\nname = \"www.example.\"\nmembers = [ { id = \"a\", address = \"127.0.0.1\", maintenance = [ { from = \"2030-01-01T00:00:20Z\", until = \"2030-01-01T00:00:10Z\" } ] } ]\n",
        );
        let Err(ConfigError::Invalid(problems)) = c else { panic!("a window that ends before it starts is a problem") };
        assert!(problems[0].contains("ends before it starts"), "{problems:?}");
    }

    #[test]
    fn sections_compare_by_value() {
        let a = Config::from_toml(GOOD).unwrap();
        let b = Config::from_toml(&GOOD.replace("zones_dir = \"zones\"", "zones_dir   =   \"zones\"  # same")).unwrap();
        assert_eq!(a, b, "layout and comments are not changes");
        let c = Config::from_toml(&GOOD.replace("127.0.0.0/8", "127.0.0.0/16")).unwrap();
        assert_ne!(a.authority, c.authority);
        assert_eq!(a.pool, c.pool);
    }
}
