//! The TOML configuration shared by every role: parsed strictly (unknown keys
//! are errors), then validated as a whole so that every mistake is reported
//! at once instead of one per restart.

pub mod formula;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use ipnet::IpNet;
use serde::Deserialize;

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Syntax(String),
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub authority: Option<AuthorityConfig>,
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    pub monitor: Option<MonitorConfig>,
    pub farm: Option<FarmConfig>,
    pub ring: Option<RingConfig>,
    pub srp: Option<SrpConfig>,
    pub dispatch: Option<DispatchConfig>,
}

/// `vnamed dispatch`: virtual IPs switched at layer 4 over raw sockets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// The network interface clients (and servers) are on.
    pub interface: String,
    /// The authority whose pools choose the servers (gRPC URL).
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
    #[serde(default)]
    pub vip: Vec<VipConfig>,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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

/// The SRP responder: `CLUSTER\INSTANCE` resolved to endpoints on UDP 1434.
#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrpCluster {
    pub name: String,
    /// The cluster's addresses: requests that arrive at them are about it.
    pub addresses: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub instance: Vec<SrpInstance>,
}

#[derive(Debug, Clone, Deserialize)]
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

/// A farm monitor: collects its farm's monitors and reports upward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmConfig {
    pub name: String,
    /// gRPC address the farm's monitors report to.
    pub listen: SocketAddr,
    pub report_to: Vec<String>,
    /// Token sent upstream.
    pub token: Option<String>,
    /// Token the farm's monitors must present.
    pub accept_token: Option<String>,
    #[serde(default)]
    pub mode: FarmMode,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// The farm's pools; each one's `policy` is the farm's local policy.
    pub pool: Vec<PoolConfig>,
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

#[derive(Debug, Clone, Deserialize)]
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
    /// Where the ring's server table is kept (default: `.vnamed-ring` in zones_dir).
    pub ring_table: Option<PathBuf>,
    /// Shared secret: when set, gRPC calls (reports and administration)
    /// must carry `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Minimum time between two rewrites of the same zone file.
    #[serde(default = "default_write_interval", with = "humantime_serde")]
    pub zone_write_interval: Duration,
}

fn default_write_interval() -> Duration {
    Duration::from_millis(250)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    RoundRobin,
    Priority,
    LeastLoaded,
    FewestConnections,
    FewestPending,
    Fastest,
    Throughput,
    Closest,
    Weighted,
    Formula,
}

/// The configuration's (kebab-case) name.
impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::Priority => "priority",
            Self::LeastLoaded => "least-loaded",
            Self::FewestConnections => "fewest-connections",
            Self::FewestPending => "fewest-pending",
            Self::Fastest => "fastest",
            Self::Throughput => "throughput",
            Self::Closest => "closest",
            Self::Weighted => "weighted",
            Self::Formula => "formula",
        })
    }
}

impl std::str::FromStr for PolicyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use serde::de::IntoDeserializer;
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = s.into_deserializer();
        Self::deserialize(d).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Keep answering with the last non-empty answer.
    #[default]
    LastKnown,
    /// Answer with every member, whatever its state.
    All,
    /// Answer SERVFAIL.
    Servfail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    #[serde(default = "default_policy")]
    pub policy: PolicyName,
    #[serde(default = "one")]
    pub answers: usize,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub fallback: Fallback,
    #[serde(default = "default_stale", with = "humantime_serde")]
    pub stale_after: Duration,
    /// For `policy = "formula"`: an expression over named metrics; lower wins.
    pub formula: Option<String>,
    /// Smoothing of reported metrics, 0 (none) to below 1: each new value
    /// counts for (1 - smoothing), the previous smoothed value for the rest.
    #[serde(default)]
    pub smoothing: f64,
    pub members: Vec<MemberConfig>,
}

fn default_policy() -> PolicyName {
    PolicyName::LeastLoaded
}
fn one() -> usize {
    1
}
fn default_ttl() -> u32 {
    5
}
fn default_stale() -> Duration {
    Duration::from_secs(3)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: String,
    /// Required, except for a farm reported as one entity: its farm
    /// monitor tells which server to answer with.
    pub address: Option<IpAddr>,
    pub farm: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// End of the member's lifetime (RFC 3339, e.g. "2026-12-01T00:00:00Z"):
    /// it leaves the answers at that time.
    pub until: Option<String>,
    /// Windows during which the member is out of the answers.
    #[serde(default)]
    pub maintenance: Vec<Window>,
}

/// A maintenance window (RFC 3339 times).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub from: String,
    pub until: String,
}

/// Parses an RFC 3339 time ("2026-12-01T00:00:00Z"; a space for the T and
/// no zone, meaning UTC, are accepted too).
pub fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub host: String,
    #[serde(default)]
    pub report_to: Vec<String>,
    /// Token sent to the upstreams (`authorization: Bearer <token>`).
    pub token: Option<String>,
    /// gRPC address where applications push their own metrics.
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics of this monitor (checks, ring) at `GET /metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Reports are re-sent this often even when nothing changed.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    #[serde(default)]
    pub check: Vec<CheckConfig>,
}

#[derive(Debug, Clone, Deserialize)]
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
fn default_refresh() -> Duration {
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

#[derive(Debug, Clone, Deserialize)]
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

/// Checks pools (`[[pool]]`, or a farm's `[[farm.pool]]`), collecting problems.
fn check_pools(prefix: &str, pools: &[PoolConfig], problems: &mut Vec<String>) {
    let mut names = HashSet::new();
    for (i, pool) in pools.iter().enumerate() {
        let at = format!("{prefix}[{i}] ({})", pool.name);
        match Name::from_ascii(&pool.name) {
            Ok(name) if name.is_fqdn() => {
                if !names.insert(name.to_lowercase()) {
                    problems.push(format!("{at}: the same name is configured twice"));
                }
            }
            Ok(_) => problems.push(format!("{at}: name must be absolute (end with '.')")),
            Err(e) => problems.push(format!("{at}: bad name: {e}")),
        }
        if pool.answers == 0 {
            problems.push(format!("{at}: answers must be at least 1"));
        }
        if pool.members.is_empty() {
            problems.push(format!("{at}: members must not be empty"));
        }
        match (&pool.formula, pool.policy) {
            (None, PolicyName::Formula) => problems.push(format!("{at}: policy \"formula\" needs a formula")),
            (Some(f), _) => {
                if let Err(e) = formula::Formula::parse(f) {
                    problems.push(format!("{at}: {e}"));
                }
            }
            _ => {}
        }
        if !(0.0..1.0).contains(&pool.smoothing) {
            problems.push(format!("{at}: smoothing must be at least 0 and below 1"));
        }
        let mut ids = HashSet::new();
        for m in &pool.members {
            if m.id.is_empty() {
                problems.push(format!("{at}: a member has an empty id"));
            }
            if let Some(u) = &m.until
                && let Err(e) = parse_time(u)
            {
                problems.push(format!("{at}: member {:?} until: {e}", m.id));
            }
            for w in &m.maintenance {
                match (parse_time(&w.from), parse_time(&w.until)) {
                    (Ok(f), Ok(u)) if f < u => {}
                    (Ok(_), Ok(_)) => problems.push(format!("{at}: member {:?}: maintenance window ends before it starts", m.id)),
                    (Err(e), _) | (_, Err(e)) => problems.push(format!("{at}: member {:?} maintenance: {e}", m.id)),
                }
            }
            if m.address.is_none() && m.farm.is_none() {
                problems.push(format!("{at}: member {:?} needs an address (only a farm entity may omit it)", m.id));
            }
            if !ids.insert(m.id.as_str()) {
                problems.push(format!("{at}: member id {:?} appears twice", m.id));
            }
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Syntax(msg) => ConfigError::Syntax(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything serde cannot, collecting every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Some(auth) = &self.authority
            && auth.dns_listen.is_empty()
        {
            problems.push("authority.dns_listen: at least one address is required".into());
        }
        check_pools("pool", &self.pool, &mut problems);
        if let Some(d) = &self.dispatch {
            if d.vip.is_empty() {
                problems.push("dispatch.vip: at least one virtual IP is required".into());
            }
            if !(d.authority.starts_with("http://") || d.authority.starts_with("https://")) {
                problems.push(format!("dispatch.authority: {:?} must be a URL like http://127.0.0.1:7443", d.authority));
            }
            let mut seen = std::collections::HashSet::new();
            for v in &d.vip {
                if !seen.insert(v.address) {
                    problems.push(format!("dispatch.vip {}: listed twice", v.address));
                }
                if v.mode == DispatchMode::L7 && (d.gateway.is_none() || v.ports.len() != 1) {
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
        if let Some(srp) = &self.srp {
            // In a monitor, an instance's pool is one its checks report on.
            let mut known: Vec<&str> = self.pool.iter().map(|p| p.name.as_str()).collect();
            if let Some(m) = &self.monitor {
                known.extend(m.check.iter().map(|c| c.pool.as_str()));
            }
            check_srp(srp, &known, &mut problems);
        }
        if let Some(m) = &self.monitor {
            if m.host.is_empty() {
                problems.push("monitor.host: must name this host (the member id it reports as)".into());
            }
            if m.report_to.is_empty() {
                problems.push("monitor.report_to: at least one authority or farm monitor is required".into());
            }
            for u in &m.report_to {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    problems.push(format!("monitor.report_to: {u:?} must be a URL like http://127.0.0.1:7443"));
                }
            }
            for (i, c) in m.check.iter().enumerate() {
                let at = format!("monitor.check[{i}] ({:?} for {})", c.kind, c.pool);
                match (c.kind, c.target.as_deref()) {
                    (CheckKind::Push, _) if m.listen.is_none() => {
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
        if let Some(f) = &self.farm {
            if f.name.is_empty() {
                problems.push("farm.name: must not be empty".into());
            }
            if f.report_to.is_empty() {
                problems.push("farm.report_to: at least one authority is required".into());
            }
            check_pools("farm.pool", &f.pool, &mut problems);
            for (i, p) in f.pool.iter().enumerate() {
                if p.members.iter().any(|m| m.address.is_none()) {
                    problems.push(format!("farm.pool[{i}] ({}): every farm member needs an address", p.name));
                }
            }
        }
        if let Some(ring) = &self.ring {
            if ring.misses == 0 {
                problems.push("ring.misses: must be at least 1".into());
            }
            for (key, d) in [
                ("ring.ping_interval", ring.ping_interval),
                ("ring.token_timeout", ring.token_timeout),
                ("ring.broadcast_timeout", ring.broadcast_timeout),
            ] {
                if d < Duration::from_millis(10) {
                    problems.push(format!("{key}: {d:?} is too short (minimum 10ms)"));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The authority section, or an error naming what is missing.
    pub fn authority(&self) -> Result<&AuthorityConfig, ConfigError> {
        self.authority.as_ref().ok_or_else(|| ConfigError::Invalid(vec!["[authority] section is required for this role".into()]))
    }
}

/// The `[srp]` section's own rules.
fn check_srp(srp: &SrpConfig, pools: &[&str], problems: &mut Vec<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[authority]
dns_listen = ["127.0.0.1:5353"]
zones_dir = "zones"
allow_transfer = ["127.0.0.0/8"]

[[pool]]
name = "www.demo.example."
policy = "least-loaded"
fallback = "servfail"
stale_after = "3s"
members = [ { id = "web1", address = "127.0.10.1" }, { id = "web2", address = "::1", farm = "east" } ]
"#;

    #[test]
    fn parses_the_contract_shape() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.pool[0].members.len(), 2);
        assert_eq!(c.pool[0].fallback, Fallback::Servfail);
        assert_eq!(c.pool[0].stale_after, Duration::from_secs(3));
        assert_eq!(c.authority.unwrap().zone_write_interval, Duration::from_millis(250));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml(&GOOD.replace("zones_dir", "zone_dir")).unwrap_err();
        assert!(e.to_string().contains("zone_dir"), "{e}");
    }

    #[test]
    fn farm_pools_are_checked_like_pools() {
        let text = r#"
[farm]
name = "east"
listen = "127.0.0.1:7460"
report_to = ["http://127.0.0.1:7443"]
[[farm.pool]]
name = "not a name"
members = []
"#;
        let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else { panic!("expected validation problems") };
        assert!(problems.iter().any(|p| p.starts_with("farm.pool[0]") && p.contains("members must not be empty")), "{problems:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[[pool]]
name = "relative.example"
answers = 0
members = [ { id = "a", address = "127.0.0.1" }, { id = "a", address = "127.0.0.2" } ]
"#;
        let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else { panic!("expected validation problems") };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
