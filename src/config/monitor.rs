//! `[monitor]`: one host's monitor, its checks and where it reports.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::ident;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub host: String,
    #[serde(default, deserialize_with = "super::urls")]
    pub report_to: Vec<String>,
    /// Token sent to the upstreams (`authorization: Bearer <token>`).
    pub token: Option<String>,
    /// gRPC address where applications push their own metrics.
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics of this monitor (checks, ring) at `GET /metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Reports are re-sent this often even when nothing changed.
    #[serde(default = "super::one_second", with = "humantime_serde")]
    pub refresh: Duration,
    #[serde(default)]
    pub check: Vec<CheckConfig>,
    /// Connection caps and timeouts of the push and metrics listeners.
    #[serde(default)]
    pub limits: super::Limits,
    /// TLS on the push listener (`listen`); with `client_ca`, mutual TLS.
    pub tls: Option<super::ServerTls>,
    /// TLS towards `https://` upstreams.
    #[serde(default)]
    pub client_tls: super::ClientTls,
    /// Push listener off loopback without mutual TLS.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub pool: String,
    /// The member reported on; the monitor's own host when absent (set it
    /// to probe a legacy server that runs no monitor of its own).
    pub member: Option<String>,
    pub kind: CheckKind,
    /// tcp: host:port; http: URL; exec: command line; file: path;
    /// process: name, `cmdline:PATTERN` or `pidfile:PATH`; push: unused.
    pub target: Option<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Give up on one probe after this long.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes before a down member is up again.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures before an up member is down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    Process,
    Tcp,
    Http,
    Exec,
    File,
    Push,
}

impl MonitorConfig {
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        if let Err(e) = ident::check_id(&self.host) {
            problems.push(format!("monitor.host: must name this host (the member id it reports as): {e}"));
        }
        self.limits.check("monitor.limits", problems);
        if let Some(addr) = self.listen {
            super::tls::check_listener("monitor.listen", addr, self.tls.as_ref(), false, self.insecure, problems);
        }
        if self.report_to.is_empty() {
            problems.push("monitor.report_to: at least one authority or farm monitor is required".into());
        }
        for (i, c) in self.check.iter().enumerate() {
            let at = format!("monitor.check[{i}] ({:?} for {})", c.kind, ident::shown(&c.pool));
            if let Some(Err(e)) = c.member.as_deref().map(ident::check_id) {
                problems.push(format!("{at}: member {e}"));
            }
            match (c.kind, c.target.as_deref()) {
                (CheckKind::Push, _) if self.listen.is_none() => {
                    problems.push(format!("{at}: push checks need monitor.listen for applications to push to"))
                }
                (CheckKind::Push, _) => {}
                (_, None | Some("")) => problems.push(format!("{at}: target is required")),
                (CheckKind::Tcp, Some(t)) if t.parse::<SocketAddr>().is_err() && !t.contains(':') => {
                    problems.push(format!("{at}: target {t:?} must be host:port"))
                }
                (CheckKind::Http, Some(t)) if !t.starts_with("http://") => {
                    problems.push(format!("{at}: target {t:?} must be an http:// URL"))
                }
                _ => {}
            }
            if c.rise == 0 || c.fall == 0 {
                problems.push(format!("{at}: rise and fall must be at least 1"));
            }
            if c.interval < Duration::from_millis(10) || c.timeout < Duration::from_millis(1) {
                problems.push(format!("{at}: interval must be at least 10ms and timeout at least 1ms"));
            }
        }
    }
}
