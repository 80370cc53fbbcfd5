//! A pool member: what an operator said of it, what its reports say
//! (health, smoothed metrics, each vantage point's last word and the
//! quorum over them), its schedule (lifetime, maintenance windows), and
//! from all that whether it is in service at a given moment and when time
//! alone next changes that.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::clock::Now;
use crate::config::pool::MAX_VANTAGE;
use crate::config::{MemberConfig, Quorum};

/// What an operator said about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    /// Follow the reported status.
    #[default]
    Auto,
    /// In the answers whatever is reported.
    Up,
    /// Out of the answers whatever is reported.
    Down,
    /// Being taken out of service: no longer given to new clients, while
    /// the ones holding a cached answer finish (it reports on as usual).
    Drain,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Auto => "auto",
            AdminState::Up => "up",
            AdminState::Down => "down",
            AdminState::Drain => "drain",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "up" => Some(Self::Up),
            "down" => Some(Self::Down),
            "drain" => Some(Self::Drain),
            _ => None,
        }
    }
}

/// The metrics a member's status reports carry.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub load: Option<f64>,
    pub connections: Option<f64>,
    pub pending: Option<f64>,
    pub response_ms: Option<f64>,
    pub throughput: Option<f64>,
    pub distance: Option<f64>,
}

impl Metrics {
    /// The metrics that are set, by their wire names.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("load", self.load),
            ("connections", self.connections),
            ("pending", self.pending),
            ("response_ms", self.response_ms),
            ("throughput", self.throughput),
            ("distance", self.distance),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

#[derive(Debug, Clone)]
pub struct MemberState {
    /// Shared, so the lists built from members copy no text.
    pub id: std::sync::Arc<str>,
    pub address: IpAddr,
    pub farm: Option<String>,
    pub weight: u32,
    /// Past this value of the pool's capacity metric: no new clients.
    pub capacity: Option<f64>,
    pub admin: AdminState,
    /// Last reported health; `None` until a report arrives.
    pub health: Option<bool>,
    pub metrics: Metrics,
    /// Named metrics beyond the well-known ones.
    pub custom: std::collections::BTreeMap<String, f64>,
    pub reported_at: Option<Instant>,
    /// When the member's lifetime ends, and its maintenance windows.
    pub until: Option<Instant>,
    pub maintenance: Vec<(Instant, Instant)>,
    /// The ring reported its host dead and it has not rejoined.
    pub ring_dead: bool,
    /// Each vantage point's last word on it, at most `MAX_VANTAGE`.
    pub views: Vec<View>,
    /// In a group: what the other authorities see of it (`Some(true)`:
    /// one of them has a fresh report saying up; `Some(false)`: those with
    /// fresh reports say down; `None`: none has a fresh report). Counts
    /// only while this authority's own reports are stale or missing.
    pub remote: Option<bool>,
}

/// One vantage point's last word on a member.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub source: std::sync::Arc<str>,
    pub up: bool,
    pub at: Instant,
}

/// A vantage point silent this many times `stale_after` is forgotten
/// (a monitor retired), so it no longer counts towards a majority.
const FORGET_AFTER: u32 = 10;

impl MemberState {
    /// A member as configured, with nothing reported yet. Configured
    /// wall-clock times become instants seen from `now`.
    pub fn from_config(m: &MemberConfig, now: Now) -> Self {
        let at = |t: &crate::config::Time| now.instant_at(t.0);
        Self {
            id: m.id.as_str().into(),
            address: m.address.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            farm: m.farm.clone(),
            weight: m.weight,
            capacity: m.capacity,
            admin: AdminState::Auto,
            health: None,
            metrics: Metrics::default(),
            custom: Default::default(),
            reported_at: None,
            ring_dead: false,
            views: Vec::new(),
            remote: None,
            until: m.until.as_ref().map(at),
            maintenance: m.maintenance.iter().map(|w| (at(&w.from), at(&w.until))).collect(),
        }
    }

    /// This member with the configured identity and schedule of `other`
    /// (farm, weight, lifetime, maintenance), keeping what was reported.
    pub fn with_schedule_of(mut self, other: &MemberState) -> Self {
        self.farm = other.farm.clone();
        self.weight = other.weight;
        self.capacity = other.capacity;
        self.until = other.until;
        self.maintenance = other.maintenance.clone();
        self
    }

    /// A metric by name, well-known or custom.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.pairs().find(|(k, _)| *k == name).map(|(_, v)| v).or_else(|| self.custom.get(name).copied())
    }

    /// Takes a report: its health, and its metrics smoothed with the
    /// previous ones (`smoothing` is the weight of the past, 0 for none).
    /// Metrics named `*_port` are identifiers, taken as reported.
    pub fn absorb(&mut self, up: bool, metrics: Metrics, custom: std::collections::BTreeMap<String, f64>, smoothing: f64, at: Instant) {
        let blend = |old: Option<f64>, new: Option<f64>| match (old, new) {
            (Some(o), Some(n)) if smoothing > 0.0 => Some(smoothing * o + (1.0 - smoothing) * n),
            (_, n) => n,
        };
        let old = self.metrics;
        self.metrics = Metrics {
            load: blend(old.load, metrics.load),
            connections: blend(old.connections, metrics.connections),
            pending: blend(old.pending, metrics.pending),
            response_ms: blend(old.response_ms, metrics.response_ms),
            throughput: blend(old.throughput, metrics.throughput),
            distance: blend(old.distance, metrics.distance),
        };
        self.custom = custom
            .into_iter()
            .map(|(k, v)| {
                let v = if k.ends_with("_port") { v } else { blend(self.custom.get(&k).copied(), Some(v)).unwrap_or(v) };
                (k, v)
            })
            .collect();
        self.health = Some(up);
        self.reported_at = Some(at);
    }

    /// Takes vantage point `source`'s word on the member's health: alone,
    /// the last word decides; with a quorum, the member goes down only
    /// when `quorum` fresh views say down and comes back only when as many
    /// say up, and otherwise stays as it was. `health` is what `absorb`
    /// had before this report.
    pub fn vote(&mut self, view: View, health: Option<bool>, quorum: Option<Quorum>, stale_after: Duration, now: Instant) {
        let forget = stale_after.saturating_mul(FORGET_AFTER);
        self.views.retain(|v| now.saturating_duration_since(v.at) <= forget);
        match self.views.iter_mut().find(|v| v.source == view.source) {
            Some(v) if v.at > view.at => {} // an older word than we have
            Some(v) => *v = view,
            None => {
                if self.views.len() == MAX_VANTAGE
                    && let Some(oldest) = self.views.iter().enumerate().min_by_key(|(_, v)| v.at).map(|(i, _)| i)
                {
                    self.views.swap_remove(oldest);
                }
                self.views.push(view);
            }
        }
        let Some(quorum) = quorum else { return };
        let needed = quorum.needed(self.views.len()).max(1);
        let fresh = self.views.iter().filter(|v| now.saturating_duration_since(v.at) <= stale_after);
        let (up, down) = fresh.fold((0, 0), |(u, d), v| if v.up { (u + 1, d) } else { (u, d + 1) });
        self.health = if down >= needed {
            Some(false)
        } else if up >= needed {
            Some(true)
        } else {
            health
        };
    }

    /// Out of service by its schedule (lifetime over, or in maintenance).
    pub fn scheduled_out(&self, now: Instant) -> Option<&'static str> {
        if self.until.is_some_and(|u| now >= u) {
            return Some("expired");
        }
        self.maintenance.iter().any(|(f, u)| (*f..*u).contains(&now)).then_some("maintenance")
    }

    /// In service right now: the operator's word first, then the reports.
    /// A member nobody reports on counts as up; one whose reports stopped
    /// for `stale_after` does not.
    pub fn eligible(&self, now: Instant, stale_after: Duration) -> bool {
        if self.address.is_unspecified() {
            return false; // a farm entity whose farm has not said where yet
        }
        if self.ring_dead || self.scheduled_out(now).is_some() {
            return false;
        }
        match self.admin {
            AdminState::Up => true,
            AdminState::Down | AdminState::Drain => false,
            AdminState::Auto => match (self.health, self.reported_at) {
                (None, _) => self.remote.unwrap_or(true),
                (Some(up), Some(at)) if now.saturating_duration_since(at) <= stale_after => up,
                // Stale here: another authority's fresh word, if any.
                (Some(_), Some(_)) => self.remote == Some(true),
                (Some(up), None) => up,
            },
        }
    }

    /// The next moment after `now` at which time alone changes whether
    /// this member is in service: its reports going stale, its lifetime
    /// ending, a maintenance window opening or closing.
    pub fn next_change(&self, now: Instant, stale_after: Duration) -> Option<Instant> {
        let stale = self.reported_at.map(|at| at + stale_after + Duration::from_millis(1));
        let windows = self.maintenance.iter().flat_map(|(f, u)| [*f, *u]);
        [stale, self.until].into_iter().flatten().chain(windows).filter(|t| *t > now).min()
    }

    /// Reported, but not within `stale_after`.
    pub fn stale(&self, now: Instant, stale_after: Duration) -> bool {
        self.reported_at.is_some_and(|at| now.saturating_duration_since(at) > stale_after)
    }

    /// This authority's own view, to share with a group: up or down while
    /// its reports are fresh, `None` while they are stale or missing.
    pub fn own_view(&self, now: Instant, stale_after: Duration) -> Option<bool> {
        let at = self.reported_at?;
        (now.saturating_duration_since(at) <= stale_after).then(|| self.health.unwrap_or(true))
    }

    /// The state word shown by `vnamed status`.
    pub fn state(&self, now: Instant, stale_after: Duration) -> &'static str {
        if self.ring_dead {
            return "dead (ring)";
        }
        if let Some(why) = self.scheduled_out(now) {
            return why;
        }
        match (self.admin, self.health) {
            (AdminState::Down, _) => "down (admin)",
            (AdminState::Drain, _) => "draining",
            (AdminState::Up, _) => "up (admin)",
            (AdminState::Auto, None) if self.remote == Some(false) => "down (seen by another authority)",
            (AdminState::Auto, None) if self.views.is_empty() => "up (no reports)",
            (AdminState::Auto, None) => "up (no quorum yet)",
            (AdminState::Auto, Some(_)) if self.stale(now, stale_after) && self.remote == Some(true) => "up (seen by another authority)",
            (AdminState::Auto, Some(_)) if !self.eligible(now, stale_after) && self.health == Some(true) => "unknown (stale)",
            (AdminState::Auto, Some(true)) => "up",
            (AdminState::Auto, Some(false)) => "down",
        }
    }
}
