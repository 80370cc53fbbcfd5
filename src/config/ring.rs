//! `[ring]`: this host as a ring member: its address, timings and key.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingConfig {
    pub listen: SocketAddr,
    #[serde(default = "ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(default = "misses")]
    pub misses: u32,
    #[serde(default = "token_timeout", with = "humantime_serde")]
    pub token_timeout: Duration,
    #[serde(default = "broadcast_timeout", with = "humantime_serde")]
    pub broadcast_timeout: Duration,
    #[serde(default)]
    pub dispatch_capable: bool,
    /// Where broadcasts (join, purge, deaths) go besides the members known:
    /// the other hosts' ring addresses, or a broadcast address of a network
    /// the ring owns.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Shared key: ring messages are authenticated (HMAC-SHA256) and
    /// anything unauthenticated is dropped.
    pub key: Option<String>,
}

fn ping_interval() -> Duration {
    Duration::from_millis(500)
}
fn misses() -> u32 {
    3
}
fn token_timeout() -> Duration {
    Duration::from_millis(2000)
}
fn broadcast_timeout() -> Duration {
    Duration::from_millis(2500)
}

impl RingConfig {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if self.misses == 0 {
            problems.push("ring.misses: must be at least 1".into());
        }
        for (key, d) in [
            ("ring.ping_interval", self.ping_interval),
            ("ring.token_timeout", self.token_timeout),
            ("ring.broadcast_timeout", self.broadcast_timeout),
        ] {
            if d < Duration::from_millis(10) {
                problems.push(format!("{key}: {d:?} is too short (minimum 10ms)"));
            }
        }
    }
}
