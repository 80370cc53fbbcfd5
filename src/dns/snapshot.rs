//! The answer set the DNS hot path reads: every zone's static data plus the
//! current answers of its virtual names and its serial. The updater builds a
//! new snapshot and swaps it in whole; readers never wait for it.

use std::collections::HashMap;
use std::sync::Arc;

pub use super::answer::{Drawn, PoolAnswer, Preferred, Turn};
use super::fast::FastTable;
pub use super::view::{ZoneView, Zones, managed, zone_records};

/// A member's state as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    pub id: Arc<str>,
    /// In service now.
    pub up: bool,
    /// In the answer served now.
    pub in_answer: bool,
    /// Reported up, but its reports stopped for longer than `stale_after`.
    pub stale: bool,
    /// The ring reported its host dead and it has not rejoined.
    pub ring_dead: bool,
}

/// Every zone served.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Each pool's members, by pool name.
    pub health: Arc<HashMap<String, Arc<[MemberHealth]>>>,
    pub zones: Zones,
    /// Each pool's members in the policy's order, by pool name (lower case,
    /// no final dot): what the SRP responder serves instances from.
    pub preferred: Arc<HashMap<String, Arc<[Preferred]>>>,
    /// Pre-encoded responses for the UDP fast path.
    pub fast: FastTable,
}

impl Snapshot {
    /// The zone holding `name`: the one with the longest matching origin.
    pub fn find_zone(&self, name: &hickory_proto::rr::LowerName) -> Option<&Arc<ZoneView>> {
        super::view::find_zone(&self.zones, name)
    }
}
