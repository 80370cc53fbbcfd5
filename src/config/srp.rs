//! `[srp]`: the SQL Server Resolution Protocol responder, its clusters and
//! instances, and its active/passive peers.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The SRP responder: `CLUSTER\INSTANCE` resolved to endpoints on UDP 1434.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrpConfig {
    /// The UDP port on every cluster address (1434, the SQL Server Browser's).
    #[serde(default = "srp_port")]
    pub port: u16,
    /// Requests per second allowed from one source address (and the burst).
    #[serde(default = "srp_rate")]
    pub rate: u32,
    #[serde(default = "srp_burst")]
    pub burst: u32,
    /// Who may enumerate instances (CLNT_BCAST_EX, CLNT_UCAST_EX); default:
    /// loopback and each cluster address's own network (/24, /64).
    #[serde(default)]
    pub enumerate_from: Vec<ipnet::IpNet>,
    /// Active and passive responders of the same clusters: this responder's
    /// control address (UDP) and its peers'.
    pub control: Option<SocketAddr>,
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Shared key: peer messages are authenticated (HMAC-SHA256).
    pub key: Option<String>,
    /// A passive responder sends a KeepAlive this often, and takes over when
    /// the active one has not answered for `keepalive_timeout`.
    #[serde(default = "srp_keepalive_interval", with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(default = "srp_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    #[serde(default)]
    pub cluster: Vec<SrpCluster>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrpCluster {
    pub name: String,
    /// The cluster's addresses: requests that arrive at them are about it.
    pub addresses: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub instance: Vec<SrpInstance>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrpInstance {
    pub name: String,
    /// ServerName in replies; default: the preferred member's id (with a
    /// pool), else the cluster's name.
    pub server_name: Option<String>,
    #[serde(default = "srp_version")]
    pub version: String,
    /// Endpoints per protocol. With a pool, the member the pool's policy
    /// prefers right now serves the instance: its reported `tcp_port`
    /// metric, when it has one, replaces `tcp`.
    pub tcp: Option<u16>,
    pub np: Option<String>,
    pub via: Option<String>,
    /// The dedicated administrator connection's TCP port.
    pub dac: Option<u16>,
    pub pool: Option<String>,
}

fn srp_port() -> u16 {
    1434
}
fn srp_rate() -> u32 {
    50
}
fn srp_burst() -> u32 {
    100
}
fn srp_keepalive_interval() -> Duration {
    Duration::from_millis(500)
}
fn srp_keepalive_timeout() -> Duration {
    Duration::from_millis(1500)
}
fn srp_version() -> String {
    "16.0.1000.6".into()
}

impl SrpConfig {
    /// `pools`: the pools an instance may follow.
    pub(super) fn check(&self, pools: &[&str], problems: &mut Vec<String>) {
        let srp = self;
        let mut addresses = std::collections::HashSet::new();
        if srp.rate == 0 || srp.burst == 0 {
            problems.push("srp: rate and burst must be at least 1".into());
        }
        if !srp.peers.is_empty() && srp.control.is_none() {
            problems.push("srp.peers: set srp.control, this responder's own control address".into());
        }
        if srp.keepalive_timeout <= srp.keepalive_interval {
            problems.push("srp.keepalive_timeout must be longer than srp.keepalive_interval".into());
        }
        for c in &srp.cluster {
            if c.addresses.is_empty() {
                problems.push(format!("srp.cluster {}: at least one address is required", c.name));
            }
            for a in &c.addresses {
                if !addresses.insert(*a) {
                    problems.push(format!("srp.cluster {}: address {a} belongs to another cluster too", c.name));
                }
            }
            let mut names = std::collections::HashSet::new();
            for i in &c.instance {
                let at = format!("srp.cluster {} instance {:?}", c.name, i.name);
                if i.name.is_empty() || i.name.len() > 32 || i.name.contains(';') || i.name.contains(char::is_control) {
                    problems.push(format!("{at}: a name of 1 to 32 bytes without ';' is required"));
                }
                if !names.insert(i.name.to_uppercase()) {
                    problems.push(format!("{at}: two instances of this name (names are case-insensitive)"));
                }
                if i.version.is_empty() || i.version.len() > 16 || !i.version.chars().all(|c| c.is_ascii_digit() || c == '.') {
                    problems.push(format!("{at}: version must be digits and dots, at most 16"));
                }
                if i.tcp.is_none() && i.np.is_none() && i.via.is_none() && i.pool.is_none() {
                    problems.push(format!("{at}: give at least one endpoint (tcp, np, via) or a pool"));
                }
                for v in [&i.server_name, &i.np, &i.via].into_iter().flatten() {
                    if v.contains(';') || v.contains(char::is_control) {
                        problems.push(format!("{at}: {v:?} may not contain ';'"));
                    }
                }
                if let Some(p) = &i.pool {
                    let want = p.trim_end_matches('.').to_ascii_lowercase();
                    if !pools.iter().any(|q| q.trim_end_matches('.').eq_ignore_ascii_case(&want)) {
                        problems.push(format!("{at}: no [[pool]] (or, in a monitor, no check) for {p:?}"));
                    }
                }
            }
        }
    }
}
