//! `[authority.rrl]`: response rate limiting for DNS over UDP (on by
//! default): budgets per client prefix and second, by kind of response.

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rrl {
    /// Identical answers (same name and type) a prefix gets per second; 0 = no limit.
    pub responses_per_second: u32,
    /// NXDOMAIN answers a prefix gets per second, whatever the names.
    pub nxdomains_per_second: u32,
    /// Other errors (REFUSED, FORMERR, SERVFAIL, ...) per prefix and second.
    pub errors_per_second: u32,
    /// Of the responses over budget, every `slip`-th goes out empty with
    /// TC (the client retries over TCP) and the rest are dropped; 0 drops all.
    pub slip: u32,
    /// Clients are counted by prefix: a /24 for IPv4...
    pub ipv4_prefix: u8,
    /// ...and a /56 for IPv6.
    pub ipv6_prefix: u8,
    /// Never limited. Loopback by default: it cannot be spoofed from outside.
    pub exempt: Vec<IpNet>,
}

impl Default for Rrl {
    fn default() -> Self {
        Self {
            responses_per_second: 50,
            nxdomains_per_second: 20,
            errors_per_second: 10,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            exempt: vec!["127.0.0.0/8".parse().expect("a prefix"), "::1/128".parse().expect("a prefix")],
        }
    }
}

impl Rrl {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if self.ipv4_prefix > 32 || self.ipv6_prefix > 128 {
            problems.push("authority.rrl: ipv4_prefix is at most 32 and ipv6_prefix at most 128".into());
        }
        if self.slip > 10 {
            problems.push("authority.rrl.slip: at most 10".into());
        }
    }
}
