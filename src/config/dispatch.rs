//! `[dispatch]`: the packet dispatcher's interface, its authority and the
//! virtual IPs it switches.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `vnamed dispatch`: virtual IPs switched at layer 4 over raw sockets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// The network interface clients (and servers) are on.
    pub interface: String,
    /// The authority whose pools choose the servers (gRPC URL).
    #[serde(deserialize_with = "super::url")]
    pub authority: String,
    pub token: Option<String>,
    /// A connection nothing was seen of for this long is forgotten.
    #[serde(default = "dispatch_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// After a FIN, how long the connection's last packets still pass.
    #[serde(default = "dispatch_linger", with = "humantime_serde")]
    pub fin_timeout: Duration,
    /// Prometheus metrics at `GET /metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// The port of the servers' monitors (`monitor.listen`): a dispatcher
    /// that takes over asks them for their connections.
    pub monitor_port: Option<u16>,
    /// An address the active dispatcher answers ARP for, besides the
    /// virtual IPs: the servers' gateway in L4/3, so that it moves with
    /// the dispatcher.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Capture threads, each owning its share of the connections (a
    /// fanout group); default: one per CPU the process may run on.
    pub threads: Option<usize>,
    #[serde(default)]
    pub vip: Vec<VipConfig>,
}

/// L7 virtual IPs at most (the steering program tests each in turn).
pub const MAX_L7: usize = 64;
/// Capture threads at most.
pub const MAX_THREADS: usize = 256;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: std::net::Ipv4Addr,
    /// TCP ports served; empty: all.
    #[serde(default)]
    pub ports: Vec<u16>,
    pub mode: DispatchMode,
    /// The pool whose policy picks the servers (in L7, for requests that
    /// no route matches).
    pub pool: String,
    /// L7: requests whose path starts with a prefix go to that pool.
    #[serde(default)]
    pub route: Vec<L7Route>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Route {
    pub prefix: String,
    pub pool: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DispatchMode {
    #[serde(rename = "l4-2")]
    L42,
    #[serde(rename = "l4-3")]
    L43,
    /// Content-based: the request line picks the server class.
    L7,
}

fn dispatch_idle() -> Duration {
    Duration::from_secs(300)
}
fn dispatch_linger() -> Duration {
    Duration::from_secs(10)
}

impl DispatchConfig {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if self.vip.is_empty() {
            problems.push("dispatch.vip: at least one virtual IP is required".into());
        }
        if self.vip.iter().filter(|v| v.mode == DispatchMode::L7).count() > MAX_L7 {
            problems.push(format!("dispatch.vip: at most {MAX_L7} l7 virtual IPs"));
        }
        if let Some(n) = self.threads
            && !(1..=MAX_THREADS).contains(&n)
        {
            problems.push(format!("dispatch.threads: {n} is not between 1 and {MAX_THREADS}"));
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.vip {
            if !seen.insert(v.address) {
                problems.push(format!("dispatch.vip {}: listed twice", v.address));
            }
            if v.mode == DispatchMode::L7 && (self.gateway.is_none() || v.ports.len() != 1) {
                problems.push(format!(
                    "dispatch.vip {}: l7 needs dispatch.gateway (its address towards the servers) and exactly one port",
                    v.address
                ));
            }
            if v.mode != DispatchMode::L7 && !v.route.is_empty() {
                problems.push(format!("dispatch.vip {}: routes are for l7 only", v.address));
            }
        }
    }
}
