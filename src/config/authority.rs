//! `[authority]`: where the DNS authority listens, its zones and who may
//! transfer them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    pub dns_listen: Vec<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub zones_dir: PathBuf,
    #[serde(default)]
    pub notify: Vec<SocketAddr>,
    #[serde(default)]
    pub allow_transfer: Vec<IpNet>,
    /// UDP workers for the pre-encoded fast path; 0 = one per core.
    #[serde(default)]
    pub udp_workers: usize,
    /// Where the durable state is kept (default: `.vnamed-state` in zones_dir).
    pub state_dir: Option<PathBuf>,
    /// Where earlier versions kept the ring's server table (default:
    /// `.vnamed-ring` in zones_dir); read once into a fresh state store.
    pub ring_table: Option<PathBuf>,
    /// Shared secret: when set, gRPC calls must carry `authorization:
    /// Bearer <token>`. It may call everything; prefer `credential`.
    pub token: Option<String>,
    /// Scoped credentials: tokens or client certificate names, each
    /// allowed some of report, ring and admin.
    #[serde(default)]
    pub credential: Vec<super::Credential>,
    /// TLS on the gRPC listener; with `client_ca`, mutual TLS.
    pub tls: Option<super::ServerTls>,
    /// Serve gRPC off loopback with neither mutual TLS nor a token.
    #[serde(default)]
    pub insecure: bool,
    /// Minimum time between two rewrites of the same zone file.
    #[serde(default = "default_write_interval", with = "humantime_serde")]
    pub zone_write_interval: Duration,
    /// The largest zone file read, in bytes; a larger one is refused.
    #[serde(default = "default_zone_file_limit")]
    pub zone_file_limit: u64,
    /// Connection caps and timeouts of the TCP listeners.
    #[serde(default)]
    pub limits: super::Limits,
    /// Response rate limiting for DNS over UDP.
    #[serde(default)]
    pub rrl: super::Rrl,
}

fn default_write_interval() -> Duration {
    Duration::from_millis(250)
}

fn default_zone_file_limit() -> u64 {
    1 << 30
}

impl AuthorityConfig {
    /// The directory of the state store.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| self.zones_dir.join(".vnamed-state"))
    }

    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if self.dns_listen.is_empty() {
            problems.push("authority.dns_listen: at least one address is required".into());
        }
        self.limits.check("authority.limits", problems);
        self.rrl.check(problems);
        super::tls::check_credentials("authority.credential", &self.credential, problems);
        if let Some(addr) = self.grpc_listen {
            let has_token = self.token.is_some() || self.credential.iter().any(|c| c.token.is_some());
            super::tls::check_listener("authority.grpc_listen", addr, self.tls.as_ref(), has_token, self.insecure, problems);
        }
        if self.credential.iter().any(|c| c.client.is_some()) && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
            problems.push("authority.credential: a client certificate name needs tls.client_ca".into());
        }
    }
}
