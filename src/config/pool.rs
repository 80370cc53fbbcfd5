//! `[[pool]]`: virtual names, their members, policy, answer shape and
//! fallback (also a farm's `[[farm.pool]]`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use hickory_proto::rr::Name;
use serde::Deserialize;

use super::formula::Formula;
use super::ident;

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

/// A value named as the configuration names it (kebab-case).
fn by_name<'de, T: Deserialize<'de>>(s: &'de str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = s.into_deserializer();
    T::deserialize(d).map_err(|e| e.to_string())
}

impl std::str::FromStr for PolicyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(s)
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

/// How a pool's policy turns into answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// Every member in service gets a share of the answers, from the
    /// policy's metric (see `pool::share`).
    #[default]
    Shares,
    /// Only the policy's best `answers` members are answered.
    Best,
}

/// The configuration's name.
impl std::fmt::Display for Select {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shares => "shares",
            Self::Best => "best",
        })
    }
}

impl std::str::FromStr for Select {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(s)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    pub formula: Option<Formula>,
    /// Smoothing of reported metrics, 0 (none) to below 1: each new value
    /// counts for (1 - smoothing), the previous smoothed value for the rest.
    /// Unset: 0.5 where answers are drawn by shares, 0 otherwise.
    pub smoothing: Option<f64>,
    /// Shares of the answers (the default) or only the best members.
    #[serde(default)]
    pub select: Select,
    /// How long a member coming back takes to reach its full share.
    #[serde(default = "default_slow_start", with = "humantime_serde")]
    pub slow_start: Duration,
    /// The most a member's share moves per `step` (0.2 = 20 points),
    /// unless it leaves service.
    #[serde(default = "default_max_shift")]
    pub max_shift: f64,
    /// Shares move only when some member's differs by more than this
    /// fraction of it (0.15: by more than 15%).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// How often shares may move.
    #[serde(default = "default_step", with = "humantime_serde")]
    pub step: Duration,
    /// The metric members' `capacity` is in (default: the policy's).
    pub capacity_metric: Option<String>,
    /// Adaptive TTL: short while shares move, longer while they hold.
    pub ttl_min: Option<u32>,
    pub ttl_max: Option<u32>,
    /// Health by quorum of vantage points: a member is down only when
    /// this many of the monitors reporting on it say so, and up again
    /// only when this many say up. Unset: the last report decides.
    pub quorum: Option<Quorum>,
    pub members: Vec<MemberConfig>,
}

/// How many vantage points must agree on a member's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// This many.
    Count(u32),
    /// More than half of those that have reported.
    Majority,
}

/// The most vantage points a quorum may ask for (and a member keeps).
pub const MAX_VANTAGE: usize = 32;

impl Quorum {
    /// How many agreeing views decide, out of `known` vantage points.
    pub fn needed(self, known: usize) -> usize {
        match self {
            Quorum::Count(n) => n as usize,
            Quorum::Majority => known / 2 + 1,
        }
    }
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quorum::Count(n) => write!(f, "{n}"),
            Quorum::Majority => f.write_str("majority"),
        }
    }
}

impl<'de> Deserialize<'de> for Quorum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) if (1..=MAX_VANTAGE as u32).contains(&n) => Ok(Quorum::Count(n)),
            Raw::Count(n) => Err(serde::de::Error::custom(format!("quorum {n}: a count from 1 to {MAX_VANTAGE}, or \"majority\""))),
            Raw::Word(w) if w == "majority" => Ok(Quorum::Majority),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "quorum {}: a count from 1 to {MAX_VANTAGE}, or \"majority\"",
                super::ident::shown(&w)
            ))),
        }
    }
}

impl PoolConfig {
    /// The smoothing of reported metrics: as configured, or by default
    /// half the past where answers are shares (so they move with the trend,
    /// not each report's noise) and none where the best members are
    /// answered (they follow each report, as they always have).
    pub fn smoothing(&self) -> f64 {
        self.smoothing.unwrap_or(if self.select == Select::Best || self.policy == PolicyName::RoundRobin { 0.0 } else { 0.5 })
    }

    /// The metric `capacity` is compared with: the one configured, or the
    /// policy's own.
    pub fn capacity_metric(&self) -> Option<&str> {
        self.capacity_metric.as_deref().or(match self.policy {
            PolicyName::LeastLoaded => Some("load"),
            PolicyName::FewestConnections => Some("connections"),
            PolicyName::FewestPending => Some("pending"),
            PolicyName::Fastest => Some("response_ms"),
            PolicyName::Throughput => Some("throughput"),
            PolicyName::Closest => Some("distance"),
            _ => None,
        })
    }
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
fn default_slow_start() -> Duration {
    Duration::from_secs(30)
}
fn default_max_shift() -> f64 {
    0.2
}
fn default_margin() -> f64 {
    0.15
}
fn default_step() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: String,
    /// Required, except for a farm reported as one entity: its farm
    /// monitor tells which server to answer with.
    pub address: Option<IpAddr>,
    pub farm: Option<String>,
    /// The member's size relative to the others: its share is
    /// proportional to it (under every policy that shares).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Past this value of the pool's capacity metric the member gets no
    /// new clients until it drops below it.
    pub capacity: Option<f64>,
    /// End of the member's lifetime (RFC 3339, e.g. "2026-12-01T00:00:00Z"):
    /// it leaves the answers at that time.
    pub until: Option<Time>,
    /// Windows during which the member is out of the answers.
    #[serde(default)]
    pub maintenance: Vec<Window>,
}

/// A maintenance window (RFC 3339 times).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub from: Time,
    pub until: Time,
}

/// Parses an RFC 3339 time ("2026-12-01T00:00:00Z"; a space for the T and
/// no zone, meaning UTC, are accepted too).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

/// A wall-clock time, read from RFC 3339 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Time(pub SystemTime);

impl TryFrom<String> for Time {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        parse_time(&s).map(Time)
    }
}

fn default_weight() -> u32 {
    1
}

/// Checks pools (`[[pool]]`, or a farm's `[[farm.pool]]`), collecting problems.
pub(super) fn check_pools(prefix: &str, pools: &[PoolConfig], problems: &mut Vec<String>) {
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
        if pool.formula.is_none() && pool.policy == PolicyName::Formula {
            problems.push(format!("{at}: policy \"formula\" needs a formula"));
        }
        if !(0.0..1.0).contains(&pool.smoothing()) {
            problems.push(format!("{at}: smoothing must be at least 0 and below 1"));
        }
        if !(pool.max_shift > 0.0 && pool.max_shift <= 1.0) {
            problems.push(format!("{at}: max_shift must be above 0 and at most 1"));
        }
        if !(0.0..1.0).contains(&pool.margin) {
            problems.push(format!("{at}: margin must be at least 0 and below 1"));
        }
        if pool.step.is_zero() {
            problems.push(format!("{at}: step must be longer than 0"));
        }
        match (pool.ttl_min, pool.ttl_max) {
            (Some(lo), Some(hi)) if lo == 0 || lo > hi => problems.push(format!("{at}: ttl_min must be at least 1 and at most ttl_max")),
            (Some(_), None) | (None, Some(_)) => problems.push(format!("{at}: ttl_min and ttl_max go together")),
            _ => {}
        }
        if let Some(metric) = &pool.capacity_metric
            && let Err(e) = ident::check_metric(metric)
        {
            problems.push(format!("{at}: capacity_metric {e}"));
        }
        if pool.members.iter().any(|m| m.capacity.is_some()) && pool.capacity_metric().is_none() {
            problems.push(format!("{at}: members have a capacity but policy {} has no metric; set capacity_metric", pool.policy));
        }
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        for m in &pool.members {
            if let Err(e) = ident::check_id(&m.id) {
                problems.push(format!("{at}: member id {e}"));
            }
            if let Some(farm) = &m.farm
                && let Err(e) = ident::check_id(farm)
            {
                problems.push(format!("{at}: member {:?}: farm name {e}", m.id));
            }
            if let Some(a) = m.address {
                if let Err(e) = ident::check_address(a) {
                    problems.push(format!("{at}: member {:?}: {e}", m.id));
                } else if !addresses.insert(a) {
                    problems.push(format!("{at}: member {:?}: address {a} is another member's", m.id));
                }
            }
            if m.capacity.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
                problems.push(format!("{at}: member {:?}: capacity must be a positive number", m.id));
            }
            if m.maintenance.iter().any(|w| w.from >= w.until) {
                problems.push(format!("{at}: member {:?}: maintenance window ends before it starts", m.id));
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
