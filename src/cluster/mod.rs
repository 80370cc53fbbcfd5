//! The control state a group of authorities shares (`[cluster] backend =
//! "etcd"`): what the operators changed through the API, committed to etcd
//! before it is acknowledged and applied by every authority from its watch
//! in revision order. This file holds the vocabulary: where each thing
//! lives under the group's prefix, the fingerprint that tells whether two
//! authorities serve the same pools, how a read or watch response becomes
//! events (`Batch`), and the events themselves. `reconcile` is the pure
//! state machine over them, `etcd` the client, `driver` the task that
//! runs both ends.

pub mod driver;
pub mod etcd;
pub mod reconcile;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::config::PoolConfig;
use crate::metrics::{Count, Expose, Writer};
use crate::pool::{Decision, Overrides};
use crate::ring::registry::Registry;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    /// etcd cannot be reached, has no quorum, or did not answer in time.
    #[error("cluster state unavailable: {0}")]
    Unavailable(String),
    /// This authority's pools are not the group's.
    #[error(
        "this authority's pools differ from the group's under {prefix} (fingerprint {ours}, the group's {theirs}): every authority of a group must configure the same pools; it does not join"
    )]
    Disagree { prefix: String, ours: String, theirs: String },
    /// A pool's overrides, or the ring table, changed since they were
    /// read (at another authority): `revision` is theirs now.
    #[error("{what} was changed at another authority meanwhile")]
    Conflict { what: String, revision: i64 },
    /// What etcd holds under the prefix is not what vnamed writes.
    #[error("cluster state {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("cluster configuration: {0}")]
    Config(String),
    /// etcd refused this authority's credentials (or its role's rights).
    #[error("etcd refused this authority: {0}; check [cluster] user, password_file and the user's role")]
    Refused(String),
}

/// Where the group's state lives under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` starts and ends with '/' (the configuration checks it).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The fingerprint of the pools every member of the group serves.
    pub fn config(&self) -> String {
        format!("{}config", self.prefix)
    }

    /// Pool `key`'s overrides (`key` is the pool's lower-case name).
    pub fn overrides(&self, pool: &str) -> String {
        format!("{}overrides/{pool}", self.prefix)
    }

    /// Pool `key`'s decision, as the group's decider committed it.
    pub fn decision(&self, pool: &str) -> String {
        format!("{}decision/{pool}", self.prefix)
    }

    /// Zone `origin`'s serial, as of the decisions committed with it.
    pub fn serial(&self, zone: &str) -> String {
        format!("{}serial/{zone}", self.prefix)
    }

    /// The ring's server table, as the group's authorities share it.
    pub fn ring(&self) -> String {
        format!("{}ring", self.prefix)
    }

    /// The election of the group's decider.
    pub fn decider(&self) -> String {
        format!("{}decider", self.prefix)
    }

    /// Authority `authority`'s own view of member `member` of `pool`.
    pub fn view(&self, authority: &str, pool: &str, member: &str) -> String {
        format!("{}view/{authority}/{pool}/{member}", self.prefix)
    }

    /// What a key under the prefix holds.
    pub fn kind<'k>(&self, key: &'k str) -> Option<Kind<'k>> {
        if key == self.config() {
            return Some(Kind::Config);
        }
        if key == self.ring() {
            return Some(Kind::Ring);
        }
        if let Some(p) = self.under(key, "overrides/") {
            return Some(Kind::Overrides(p));
        }
        if let Some(p) = self.under(key, "decision/") {
            return Some(Kind::Decision(p));
        }
        if let Some(rest) = self.under(key, "view/") {
            let mut parts = rest.splitn(3, '/');
            return match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(p), Some(m)) if !a.is_empty() && !p.is_empty() && !m.is_empty() => Some(Kind::View(a, p, m)),
                _ => None,
            };
        }
        self.under(key, "serial/").map(Kind::Serial)
    }

    fn under<'k>(&self, key: &'k str, what: &str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(what).filter(|p| !p.is_empty())
    }
}

/// The kinds of keys under the group's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'k> {
    Config,
    Ring,
    Overrides(&'k str),
    Decision(&'k str),
    Serial(&'k str),
    /// Authority, pool, member.
    View(&'k str, &'k str, &'k str),
}

/// A digest of the pools as configured: authorities whose pools differ
/// in anything (names, members, policies, timings) have different ones.
pub fn fingerprint(pools: &[PoolConfig]) -> String {
    let digest = Sha256::digest(format!("{pools:?}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Overrides as stored: JSON, the same words as the embedded store's.
pub fn encode(o: &Overrides) -> String {
    serde_json::to_string(o).unwrap_or_else(|_| "{}".into())
}

pub fn decode(key: &str, value: &[u8]) -> Result<Overrides, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt { key: key.to_owned(), message: e.to_string() })
}

/// A shared value that did not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// A pool's overrides.
    Overrides(String),
    /// The ring's server table.
    Ring,
}

/// What the driver tells the updater, in the group's revision order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Pool `pool`'s overrides as of `revision` (empty: none).
    Overrides { pool: String, overrides: Overrides, revision: i64 },
    /// Decisions (pool, decision, revision) and zone serials (zone,
    /// serial, revision) the decider committed, applied together.
    Decided { decisions: Vec<(String, Decision, i64)>, serials: Vec<(String, u32, i64)> },
    /// Other authorities' views of members (authority, pool, member, up
    /// or down; `None`: gone stale there or the authority is gone); with
    /// `whole`, every view there is (after a full read).
    Views { views: Vec<(String, String, String, Option<bool>)>, whole: bool },
    /// The ring's server table as of `revision` (`None`: the group has
    /// none yet, after a full read; or it was deleted).
    Ring { ring: Option<Registry>, revision: i64 },
    /// A value that does not read (not written by vnamed): ignored, but
    /// known as of `revision`, so that a change on top of it can be
    /// committed (and replaces it).
    Unreadable { what: Unreadable, revision: i64 },
    /// Everything up to `revision` has been told (after a resync, or a
    /// progress notice): changes committed at or below it are in.
    Through(i64),
    /// This authority was elected the group's decider (with the election
    /// key's revision, which its commits require), or is no longer.
    Decider(Option<Leader>),
}

/// The decider's election key: commits hold only while it exists with
/// this creation revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub key: Vec<u8>,
    pub revision: i64,
}

/// A decision as stored: JSON.
pub fn encode_decision(d: &Decision) -> String {
    serde_json::to_string(d).unwrap_or_else(|_| "{}".into())
}

pub fn decode_decision(key: &str, value: &[u8]) -> Result<Decision, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt { key: key.to_owned(), message: e.to_string() })
}

pub fn decode_serial(key: &str, value: &[u8]) -> Result<u32, ClusterError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClusterError::Corrupt { key: key.to_owned(), message: "not a serial".into() })
}

/// What one read or one watch response brought, in the order the
/// updater applies it: overrides first, then the ring, views, and the
/// decisions with their serials.
#[derive(Default)]
pub struct Batch {
    overrides: Vec<Event>,
    decisions: Vec<(String, Decision, i64)>,
    serials: Vec<(String, u32, i64)>,
    views: Vec<(String, String, String, Option<bool>)>,
    ring: Option<Event>,
    /// A full read: the views are all there are, and no ring table means
    /// the group has none.
    whole: bool,
}

impl Batch {
    /// For a full read of everything under the prefix.
    pub fn whole() -> Self {
        Self { whole: true, ..Self::default() }
    }

    /// Sorts one key's value (`put`: written; else deleted) at
    /// `revision` into the batch. A value that does not read is logged
    /// and known as unreadable; a group fingerprint that is not
    /// `fingerprint` is an error: this authority must not follow a group
    /// whose pools differ.
    pub fn take(&mut self, keys: &Keys, fingerprint: &str, key: &str, value: &[u8], revision: i64, put: bool) -> Result<(), ClusterError> {
        let bad = |e: ClusterError| tracing::error!(error = %e, "ignored");
        match keys.kind(key) {
            Some(Kind::Config) => {
                let theirs = String::from_utf8_lossy(value).into_owned();
                if put && theirs != fingerprint {
                    return Err(ClusterError::Disagree { prefix: keys.prefix().to_owned(), ours: fingerprint.to_owned(), theirs });
                }
            }
            Some(Kind::Overrides(pool)) => {
                let overrides = if put { decode(key, value) } else { Ok(Overrides::default()) };
                match overrides {
                    Ok(overrides) => self.overrides.push(Event::Overrides { pool: pool.to_owned(), overrides, revision }),
                    Err(e) => {
                        bad(e);
                        self.overrides.push(Event::Unreadable { what: Unreadable::Overrides(pool.to_owned()), revision });
                    }
                }
            }
            Some(Kind::Decision(pool)) if put => match decode_decision(key, value) {
                Ok(d) => self.decisions.push((pool.to_owned(), d, revision)),
                Err(e) => bad(e),
            },
            Some(Kind::Serial(zone)) if put => match decode_serial(key, value) {
                Ok(n) => self.serials.push((zone.to_owned(), n, revision)),
                Err(e) => bad(e),
            },
            Some(Kind::Ring) => {
                let ring = if put { Registry::from_text(&String::from_utf8_lossy(value)).map(Some) } else { Ok(None) };
                match ring {
                    Ok(ring) => self.ring = Some(Event::Ring { ring, revision }),
                    Err(e) => {
                        bad(ClusterError::Corrupt { key: key.to_owned(), message: e.to_string() });
                        self.ring = Some(Event::Unreadable { what: Unreadable::Ring, revision });
                    }
                }
            }
            Some(Kind::View(authority, pool, member)) => {
                let seen = put.then(|| value == b"up");
                self.views.push((authority.to_owned(), pool.to_owned(), member.to_owned(), seen));
            }
            _ => {}
        }
        Ok(())
    }

    /// The events, in the order they are applied.
    pub fn events(self) -> Vec<Event> {
        let mut out = self.overrides;
        match self.ring {
            Some(ring) => out.push(ring),
            None if self.whole => out.push(Event::Ring { ring: None, revision: 0 }),
            None => {}
        }
        if !self.views.is_empty() || self.whole {
            out.push(Event::Views { views: self.views, whole: self.whole });
        }
        if !self.decisions.is_empty() || !self.serials.is_empty() {
            out.push(Event::Decided { decisions: self.decisions, serials: self.serials });
        }
        out
    }
}

/// How the shared state is doing, for `/metrics` and `vnamed status`.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    available: AtomicBool,
    decider: AtomicBool,
    revision: AtomicI64,
    error: Mutex<Option<String>>,
    /// Times the authority lost and regained etcd.
    pub lost: Count,
    pub resyncs: Count,
    /// API changes refused because etcd could not commit them.
    pub refused: Count,
}

impl ClusterStatus {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Reachable again, or not: returns whether that is news.
    pub fn set_available(&self, up: bool, error: Option<String>) -> bool {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
        let was = self.available.swap(up, Ordering::Relaxed);
        if was && !up {
            self.lost.inc();
        }
        was != up
    }

    /// Whether this authority is the group's decider.
    pub fn decider(&self) -> bool {
        self.decider.load(Ordering::Relaxed)
    }

    pub fn set_decider(&self, yes: bool) {
        self.decider.store(yes, Ordering::Relaxed);
    }

    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }

    pub fn set_revision(&self, revision: i64) {
        self.revision.fetch_max(revision, Ordering::Relaxed);
    }

    /// `None` while all is well; the reason while etcd is out of reach.
    pub fn trouble(&self) -> Option<String> {
        if self.available() {
            return None;
        }
        Some(self.error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "not connected yet".into()))
    }
}

impl Expose for ClusterStatus {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        w.gauge(
            "vnamed_cluster_available",
            "1 while the group's shared state (etcd) can commit changes; 0 while the authority serves its last state alone.",
            self.available() as i64,
        )?;
        w.gauge(
            "vnamed_cluster_decider",
            "1 while this authority is the group's decider: its decisions are the group's.",
            self.decider() as i64,
        )?;
        w.gauge("vnamed_cluster_revision", "The group's state revision this authority has applied.", self.revision())?;
        w.counter("vnamed_cluster_lost", "Times the shared state became unavailable.", self.lost.get())?;
        w.counter("vnamed_cluster_resyncs", "Times the authority read the shared state whole (start, reconnection).", self.resyncs.get())?;
        w.counter("vnamed_cluster_refused", "API changes refused because the shared state could not commit them.", self.refused.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix_and_name_their_pool() {
        let k = Keys::new("/vnamed/");
        assert_eq!(k.overrides("www.example."), "/vnamed/overrides/www.example.");
        assert_eq!(k.kind("/vnamed/overrides/www.example."), Some(Kind::Overrides("www.example.")));
        assert_eq!(k.kind("/vnamed/overrides/"), None);
        assert_eq!(k.kind("/other/overrides/www.example."), None);
        assert_eq!(k.kind("/vnamed/config"), Some(Kind::Config));
        assert_eq!(k.kind(&k.decision("www.example.")), Some(Kind::Decision("www.example.")));
        assert_eq!(k.kind(&k.serial("example.")), Some(Kind::Serial("example.")));
        assert_eq!(k.kind("/vnamed/decider/1234"), None, "election keys are not state");
        assert_eq!(
            k.kind(&k.view("ns1@127.0.0.1:53", "www.example.", "web1")),
            Some(Kind::View("ns1@127.0.0.1:53", "www.example.", "web1"))
        );
        assert_eq!(k.kind("/vnamed/view/ns1/www.example."), None);
    }

    #[test]
    fn the_fingerprint_changes_with_any_pool_setting() {
        let pools = |ttl: u32| {
            let text = format!("[[pool]]\nname = \"w.example.\"\nttl = {ttl}\nmembers = [ {{ id = \"a\", address = \"127.0.0.1\" }} ]\n");
            crate::config::Config::from_toml(&text).unwrap().pool
        };
        assert_eq!(fingerprint(&pools(5)), fingerprint(&pools(5)));
        assert_ne!(fingerprint(&pools(5)), fingerprint(&pools(6)));
        assert_eq!(fingerprint(&pools(5)).len(), 32);
    }

    #[test]
    fn overrides_round_trip_and_garbage_is_named() {
        let mut o = Overrides::default();
        o.set_paused(true);
        assert_eq!(decode("k", encode(&o).as_bytes()).unwrap(), o);
        assert!(matches!(decode("k", b"{not json"), Err(ClusterError::Corrupt { .. })));
        let d = Decision {
            shares: vec![0.25, 0.75],
            ..Decision::plain(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()], false, false, 7)
        };
        assert_eq!(decode_decision("k", encode_decision(&d).as_bytes()).unwrap(), d);
        assert_eq!(decode_serial("k", b"2026120501").unwrap(), 2026120501);
        assert!(decode_serial("k", b"-1").is_err());
    }

    #[test]
    fn status_counts_each_loss_once() {
        let s = ClusterStatus::new();
        assert!(s.trouble().is_some(), "not connected yet");
        assert!(s.set_available(true, None));
        assert!(!s.set_available(true, None));
        assert!(s.set_available(false, Some("timeout".into())));
        assert_eq!(s.trouble().as_deref(), Some("timeout"));
        assert_eq!(s.lost.get(), 1);
    }
}
