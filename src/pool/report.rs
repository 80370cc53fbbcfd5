//! A member's status report as the member table takes it: checked
//! (finite, non-negative metrics, sane timestamps, bounded sizes) by
//! `grpc::report` before anything is stored, and the reasons one is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Metrics;
use crate::config::ident::IdentError;

/// Most reports one batch may carry.
pub const MAX_BATCH: usize = 100_000;
/// Most custom metrics one report may carry.
pub const MAX_METRICS: usize = 64;
/// How far in the future an observation time may be (clock skew).
pub const MAX_SKEW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("batch of {0} reports is larger than {MAX_BATCH}")]
    TooMany(usize),
    #[error("report {index}: {what} {error}")]
    BadId { index: usize, what: &'static str, error: IdentError },
    #[error("report {index}: metric {name:?} is {value}; metrics must be finite and not negative")]
    BadMetric { index: usize, name: String, value: f64 },
    #[error("report {index}: {count} metrics is more than {MAX_METRICS}")]
    TooManyMetrics { index: usize, count: usize },
    #[error("report {index}: metric name {error}")]
    BadName { index: usize, error: IdentError },
    #[error("report {index}: observed {ahead_ms} ms in the future")]
    Future { index: usize, ahead_ms: i64 },
    #[error("report {index}: pool {pool} is not served here")]
    NoPool { index: usize, pool: String },
    #[error("report {index}: pool {pool} has no member {member}")]
    NoMember { index: usize, pool: String, member: String },
    #[error("batch source {0}")]
    BadSource(IdentError),
    #[error("report {index}: {value} is not a member's IP address")]
    BadAddress { index: usize, value: String },
    #[error("report {index}: member {member} of pool {pool} is not a farm; its address is configured")]
    NotFarm { index: usize, pool: String, member: String },
}

impl ReportError {
    /// A short label for counting refusals by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::TooMany(_) | ReportError::TooManyMetrics { .. } => "too_large",
            ReportError::BadId { .. }
            | ReportError::BadName { .. }
            | ReportError::BadAddress { .. }
            | ReportError::NotFarm { .. }
            | ReportError::BadSource(_) => "malformed",
            ReportError::BadMetric { .. } => "bad_metric",
            ReportError::Future { .. } => "future",
            ReportError::NoPool { .. } | ReportError::NoMember { .. } => "unknown_member",
        }
    }
}

/// One checked report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub pool: String,
    pub member: String,
    pub up: bool,
    pub metrics: Metrics,
    pub custom: BTreeMap<String, f64>,
    /// How long ago it was observed.
    pub age: Duration,
    pub check: String,
    /// A farm's preferred servers, best first (farm entities only).
    pub addresses: Vec<std::net::IpAddr>,
    /// Who saw it: the vantage point (a monitor's host, a farm), as its
    /// batch names it.
    pub source: std::sync::Arc<str>,
}

impl Report {
    /// Member `member` of `pool` up or down, seen just now, with no
    /// metrics (tests of the parts that take reports).
    #[doc(hidden)]
    pub fn health(pool: &str, member: &str, up: bool) -> Self {
        Self {
            pool: pool.into(),
            member: member.into(),
            up,
            metrics: Metrics::default(),
            custom: BTreeMap::new(),
            age: Duration::ZERO,
            check: "test".into(),
            addresses: Vec::new(),
            source: "test".into(),
        }
    }
}
