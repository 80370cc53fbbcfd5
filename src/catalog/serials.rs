//! Serials that never go backwards, and the journal kept across a clean
//! restart. Each zone's high-water mark is moved `SERIAL_RESERVE` ahead
//! of the served serial, ahead of need (once the serial is half way
//! there), so an answer change waits for the disk only when serials run
//! faster than a write; a serial past the durable mark is not published
//! while its mark is being saved. When the store cannot save marks the
//! catalog serves anyway (answers come first), says so, and retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::LowerName;
use tracing::{error, info, warn};

use super::publish::journal_put;
use super::{Catalog, JOURNAL_DELTAS, JOURNAL_RECORDS, Output, Save, ZoneState};
use crate::backoff::Backoff;
use crate::clock::Now;
use crate::state::{Loaded, Put, Saved, StateCounters, Ticket};
use crate::zone::journal::{Journal, Kept};

/// How far ahead of the served serial the store's high-water mark is put,
/// so a change needs a write to the store only once in this many.
pub const SERIAL_RESERVE: u32 = 1000;
/// Backoff bounds for a serial mark the store refused.
const RESERVE_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

pub use crate::zone::serial_gt;

/// Each zone's high-water mark as the store holds it, and the marks being saved.
pub(super) struct Marks {
    durable: HashMap<LowerName, u32>,
    saving: Option<(Ticket, Vec<(LowerName, u32)>)>,
    /// After a failed save: when to try again.
    retry: Option<Instant>,
    backoff: Backoff,
    counters: Arc<StateCounters>,
}

impl Marks {
    pub(super) fn new(counters: Arc<StateCounters>) -> Self {
        Self { durable: HashMap::new(), saving: None, retry: None, backoff: Backoff::new(RESERVE_RETRY.0, RESERVE_RETRY.1), counters }
    }

    /// The marks to save now: zones with none, or whose serial is half way to it.
    fn due(&self, zones: &std::collections::BTreeMap<LowerName, ZoneState>) -> Vec<(LowerName, u32)> {
        zones
            .iter()
            .filter(|(o, z)| self.durable.get(*o).is_none_or(|m| !serial_gt(m.wrapping_sub(SERIAL_RESERVE / 2), z.serial)))
            .map(|(o, z)| (o.clone(), z.serial.wrapping_add(SERIAL_RESERVE)))
            .collect()
    }

    /// Whether publishing must wait: a zone serves a serial past its
    /// durable mark while the mark is being saved (after a failure it
    /// serves anyway).
    pub(super) fn blocks(&self, zones: &std::collections::BTreeMap<LowerName, ZoneState>) -> bool {
        self.retry.is_none()
            && self.saving.is_some()
            && zones.iter().any(|(o, z)| self.durable.get(o).is_none_or(|m| serial_gt(z.serial, *m)))
    }

    /// Takes a write's outcome if it was this one's: `true` when it was.
    pub(super) fn saved(&mut self, s: &Saved, now: Instant) -> bool {
        let Some((_, marks)) = self.saving.take_if(|(t, _)| *t == s.ticket) else { return false };
        match &s.result {
            Ok(()) => {
                if self.retry.take().is_some() {
                    info!("serial marks saved again");
                }
                self.backoff.reset();
                self.durable.extend(marks);
                self.counters.owed_serials.set(0);
            }
            Err(error) => {
                if self.retry.is_none() {
                    error!(%error, "cannot save the zones' serial marks; serving anyway, retrying with backoff");
                }
                self.retry = Some(now + self.backoff.next_pause());
                self.counters.owed_serials.set(marks.len() as u64);
            }
        }
        true
    }

    /// When a failed save is tried again.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry.filter(|_| self.saving.is_none())
    }
}

impl Catalog {
    /// Moves the store's serial marks ahead of what is about to be served.
    pub(super) fn reserve(&mut self, now: Instant) {
        if self.marks.saving.is_some() || self.marks.retry.is_some_and(|t| now < t) {
            return;
        }
        let due = self.marks.due(&self.zones);
        if due.is_empty() {
            return;
        }
        let ticket = self.ticket();
        let puts = due.iter().map(|(o, high)| Put::Serial(o.to_string(), *high)).collect();
        self.out.push_back(Output::Save(Save::Acked(ticket, puts)));
        self.marks.saving = Some((ticket, due));
    }

    /// Serials and journals as the store keeps them, taken back at
    /// start-up: a serial at or below the mark may have been served with
    /// other content, so the zone goes past it; a journal is kept only
    /// where its chain ends at the served serial.
    pub(super) fn restore_serials(&mut self, saved: &Loaded) {
        for (origin, zone) in self.zones.iter_mut() {
            let dirty = zone.sync.is_dirty();
            let mut serial = if dirty { zone.serial.wrapping_add(1) } else { zone.serial };
            if let Some(&high) = saved.serials.get(&origin.to_string()) {
                if (dirty || serial != high) && !serial_gt(serial, high) {
                    serial = high.wrapping_add(1);
                    zone.sync.touch();
                }
                self.marks.durable.insert(origin.clone(), high);
            }
            zone.serial = serial;
            if let Some(rows) = saved.journals.get(&origin.to_string()) {
                // After a crash the serial moved past the rows, and
                // secondaries take the whole zone once.
                let rows = rows.iter().filter_map(|(n, bytes)| match crate::zone::journal::decode(bytes) {
                    Ok(d) => Some((*n, d)),
                    Err(error) => {
                        warn!(zone = %origin, row = n, %error, "a journal row does not read; the journal starts after it");
                        None
                    }
                });
                let journal = Journal::restore(JOURNAL_DELTAS, JOURNAL_RECORDS, rows.collect(), serial);
                let keep_from = journal.first();
                zone.journal = Arc::new(journal);
                self.saves.push(journal_put(origin, Kept { added: None, keep_from }));
            }
        }
        let served: std::collections::BTreeSet<String> = self.zones.keys().map(|o| o.to_string()).collect();
        for gone in saved.journals.keys().filter(|z| !served.contains(*z)) {
            self.saves.push(Put::Journal { zone: gone.clone(), row: None, keep_from: u64::MAX });
        }
    }

    /// What a clean stop leaves in the store, once the zone files are
    /// written: the members' state of every pool that changed since the
    /// last background save (the others are in the store, or queued with
    /// the writer, which writes what it holds once more as it stops),
    /// whatever is owed, and when the files are current the marks put back
    /// to the serials served (so a restart keeps them) with each zone's
    /// journal. A stop costs what changed, not the number of pools.
    pub fn final_saves(&mut self, now: Now) -> Vec<Put> {
        let mut last = std::mem::take(&mut self.saves);
        last.extend(self.member_saves(now));
        if self.files_behind().is_empty() {
            last.extend(self.zones.iter().map(|(o, z)| Put::Serial(o.to_string(), z.serial)));
            last.extend(self.zones.iter().flat_map(|(o, z)| z.journal.rows().into_iter().map(move |kept| journal_put(o, kept))));
        }
        last
    }
}
