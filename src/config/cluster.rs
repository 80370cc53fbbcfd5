//! `[cluster]`: where the authority keeps its control state. The embedded
//! store (the default) serves one authority; `backend = "etcd"` shares the
//! operators' changes among a group of authorities through an etcd
//! cluster: its endpoints, a key prefix, TLS and credentials.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ClientTls;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// This authority's own state store: one authority.
    #[default]
    Embedded,
    /// An etcd cluster shared by every authority of the group.
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub backend: Backend,
    /// etcd client URLs (`http://` or, with `tls`, `https://`).
    #[serde(default, deserialize_with = "super::urls")]
    pub endpoints: Vec<String>,
    /// Every key the group uses starts with this.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// etcd credentials (user and a file holding the password), when its
    /// authentication is on.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// TLS to etcd: its CA, and this authority's certificate for etcd's
    /// client certificate authentication.
    pub tls: Option<ClientTls>,
    /// How long one request to etcd may take before the cluster state
    /// counts as unavailable.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_prefix() -> String {
    "/vnamed/".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ClusterConfig {
    /// Whether the group's state lives in etcd.
    pub fn shared(&self) -> bool {
        self.backend == Backend::Etcd
    }

    pub fn check(&self, problems: &mut Vec<String>) {
        if !self.shared() {
            return;
        }
        if self.endpoints.is_empty() {
            problems.push("cluster.endpoints: backend \"etcd\" needs at least one endpoint".into());
        }
        for e in &self.endpoints {
            if e.starts_with("https://") && self.tls.is_none() {
                problems.push(format!("cluster.endpoints: {e:?} is https but [cluster.tls] is not set"));
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            problems.push(format!("cluster.prefix: {:?} must start and end with '/', like \"/vnamed/\"", self.prefix));
        }
        if self.user.is_some() != self.password_file.is_some() {
            problems.push("cluster: user and password_file go together".into());
        }
        if self.timeout.is_zero() {
            problems.push("cluster.timeout: must be above zero".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(section: &str) -> Vec<String> {
        match Config::from_toml(section) {
            Ok(_) => Vec::new(),
            Err(crate::config::ConfigError::Invalid(p)) => p,
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn an_etcd_cluster_needs_endpoints_and_a_prefix_that_is_a_folder() {
        assert!(problems("[cluster]\n").is_empty(), "the embedded store needs nothing");
        let ok = Config::from_toml("[cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n").unwrap();
        let c = ok.cluster.unwrap();
        assert!(c.shared());
        assert_eq!(c.prefix, "/vnamed/");
        assert!(problems("[cluster]\nbackend = \"etcd\"\n")[0].contains("at least one endpoint"));
        assert!(problems("[cluster]\nbackend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n")[0].contains("must be a URL"));
        assert!(problems("[cluster]\nbackend = \"etcd\"\nendpoints = [\"https://e:2379\"]\n")[0].contains("[cluster.tls]"));
        assert!(problems("[cluster]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nprefix = \"vn\"\n")[0].contains("prefix"));
        assert!(problems("[cluster]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nuser = \"u\"\n")[0].contains("go together"));
        assert!(!problems("[cluster]\nbackend = \"raft\"\n").is_empty());
    }
}
