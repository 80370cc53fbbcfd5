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
    /// TLS towards an `https://` authority and the monitors.
    #[serde(default)]
    pub client_tls: super::ClientTls,
    /// A connection nothing was seen of for this long is forgotten.
    #[serde(default = "dispatch_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections the map holds at most (all capture threads together);
    /// past it, half-open ones are evicted, then new ones refused.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
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
    /// The MAC the virtual IPs (and the gateway) are answered with,
    /// instead of the interface's: shared by every dispatcher of the
    /// cluster, like a VRRP MAC, so that a take-over moves only the
    /// switch's entry. The host's IP stack sees frames to it as not its
    /// own and drops them at once rather than route them.
    pub virtual_mac: Option<MacAddr>,
    #[serde(default)]
    pub vip: Vec<VipConfig>,
}

/// A unicast MAC address, written `02:00:5e:10:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MacAddr(pub [u8; 6]);

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut mac = [0u8; 6];
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (six hex octets with colons)"));
        }
        for (o, p) in mac.iter_mut().zip(&parts) {
            *o = match u8::from_str_radix(p, 16) {
                Ok(v) if p.len() == 2 => v,
                _ => return Err(format!("{s:?} is not a MAC address (six hex octets with colons)")),
            };
        }
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(format!("{s:?} is not a unicast MAC address"));
        }
        Ok(MacAddr(mac))
    }
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
fn max_connections() -> usize {
    1_000_000
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

#[cfg(test)]
mod tests {
    use super::MacAddr;

    #[test]
    fn a_virtual_mac_is_six_hex_octets_and_unicast() {
        assert_eq!(MacAddr::try_from("02:00:5e:10:00:01".to_string()), Ok(MacAddr([2, 0, 0x5e, 0x10, 0, 1])));
        for bad in [
            "02:00:5e:10:00",
            "02:00:5e:10:00:01:02",
            "02-00-5e-10-00-01",
            "0g:00:5e:10:00:01",
            "2:0:5e:10:0:1",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(MacAddr::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
