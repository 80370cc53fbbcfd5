//! `[authority.limits]` (and `[monitor.limits]`, `[farm.limits]`): how many
//! connections each TCP listener holds at once and how long a connection
//! may stay silent, so idle or slow clients cannot take every descriptor.
//! DNS over TCP has slots of its own that the other listeners cannot use.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// DNS over TCP connections held at once.
    pub dns_tcp_connections: usize,
    /// gRPC connections held at once.
    pub grpc_connections: usize,
    /// `/metrics` connections held at once.
    pub metrics_connections: usize,
    /// A new connection must send its first bytes within this time.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A DNS over TCP connection with no query for this long is closed.
    #[serde(with = "humantime_serde")]
    pub dns_tcp_idle: Duration,
    /// A DNS message over TCP, once its first byte is in, must be whole
    /// within this time, or the connection is closed (a query trickled in
    /// a byte at a time holds nothing for long).
    #[serde(with = "humantime_serde")]
    pub dns_tcp_message: Duration,
    /// A gRPC connection silent this long is closed (the server pings
    /// every third of it, so a live client never is).
    #[serde(with = "humantime_serde")]
    pub grpc_idle: Duration,
    /// A `/metrics` connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub metrics_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            dns_tcp_connections: 512,
            grpc_connections: 256,
            metrics_connections: 32,
            handshake_timeout: Duration::from_secs(10),
            dns_tcp_idle: Duration::from_secs(10),
            dns_tcp_message: Duration::from_secs(2),
            grpc_idle: Duration::from_secs(180),
            metrics_idle: Duration::from_secs(60),
        }
    }
}

impl Limits {
    pub(super) fn check(&self, at: &str, problems: &mut Vec<String>) {
        for (key, n) in [
            ("dns_tcp_connections", self.dns_tcp_connections),
            ("grpc_connections", self.grpc_connections),
            ("metrics_connections", self.metrics_connections),
        ] {
            if n == 0 {
                problems.push(format!("{at}.{key}: must be at least 1"));
            }
        }
        for (key, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("dns_tcp_idle", self.dns_tcp_idle),
            ("dns_tcp_message", self.dns_tcp_message),
            ("grpc_idle", self.grpc_idle),
            ("metrics_idle", self.metrics_idle),
        ] {
            if d < Duration::from_millis(100) {
                problems.push(format!("{at}.{key}: {d:?} is too short (minimum 100ms)"));
            }
        }
    }

    /// Scales the connection caps down so that, with `reserve` descriptors
    /// kept for everything else, they fit in `nofile`; says what it did.
    pub fn fit(&mut self, nofile: u64, reserve: u64) -> Option<String> {
        let room = nofile.saturating_sub(reserve).max(3) as usize;
        let total = self.dns_tcp_connections + self.grpc_connections + self.metrics_connections;
        if total <= room {
            return None;
        }
        let scale = |n: usize| (n * room / total).max(1);
        let before = (self.dns_tcp_connections, self.grpc_connections, self.metrics_connections);
        self.dns_tcp_connections = scale(self.dns_tcp_connections);
        self.grpc_connections = scale(self.grpc_connections);
        self.metrics_connections = scale(self.metrics_connections);
        Some(format!(
            "descriptor limit {nofile}: connection caps lowered from {before:?} to ({}, {}, {}) (DNS TCP, gRPC, metrics)",
            self.dns_tcp_connections, self.grpc_connections, self.metrics_connections
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_the_descriptor_limit_with_a_reserve() {
        let mut l = Limits::default();
        assert_eq!(l.fit(1_048_576, 128), None);
        let said = l.fit(512, 128).expect("lowered");
        assert!(said.contains("512"), "{said}");
        assert!(l.dns_tcp_connections + l.grpc_connections + l.metrics_connections <= 384, "{l:?}");
        assert!(l.dns_tcp_connections > l.grpc_connections && l.metrics_connections >= 1, "proportions kept: {l:?}");
    }
}
