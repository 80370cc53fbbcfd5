//! `[farm]`: a farm monitor, its pools (each with the farm's local
//! policy) and where it reports.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::pool::PoolConfig;

/// A farm monitor: collects its farm's monitors and reports upward.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmConfig {
    pub name: String,
    /// gRPC address the farm's monitors report to.
    pub listen: SocketAddr,
    #[serde(deserialize_with = "super::urls")]
    pub report_to: Vec<String>,
    /// Token sent upstream.
    pub token: Option<String>,
    /// Token the farm's monitors must present.
    pub accept_token: Option<String>,
    #[serde(default)]
    pub mode: FarmMode,
    #[serde(default = "super::one_second", with = "humantime_serde")]
    pub refresh: Duration,
    /// The farm's pools; each one's `policy` is the farm's local policy.
    pub pool: Vec<PoolConfig>,
    /// Connection caps and timeouts of the gRPC listener.
    #[serde(default)]
    pub limits: super::Limits,
    /// TLS on the listener; with `client_ca`, mutual TLS.
    pub tls: Option<super::ServerTls>,
    /// TLS towards `https://` upstreams.
    #[serde(default)]
    pub client_tls: super::ClientTls,
    /// Listen off loopback with neither mutual TLS nor accept_token.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FarmMode {
    /// Report the farm as one member, answered by the local policy's choice.
    #[default]
    Entity,
    /// Pass each member's state upward.
    Members,
}

impl FarmConfig {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if let Err(e) = super::ident::check_id(&self.name) {
            problems.push(format!("farm.name: {e}"));
        }
        if self.report_to.is_empty() {
            problems.push("farm.report_to: at least one authority is required".into());
        }
        super::pool::check_pools("farm.pool", &self.pool, problems);
        self.limits.check("farm.limits", problems);
        super::tls::check_listener("farm.listen", self.listen, self.tls.as_ref(), self.accept_token.is_some(), self.insecure, problems);
        for (i, p) in self.pool.iter().enumerate() {
            if p.members.iter().any(|m| m.address.is_none()) {
                problems.push(format!("farm.pool[{i}] ({}): every farm member needs an address", p.name));
            }
        }
    }
}
