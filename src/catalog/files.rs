//! Keeping the zone files true to what is served: planning writes (each
//! zone's `FileSync` says when), taking their outcomes, and taking
//! operators' edits. The file work itself is done by `zone::io`; this side
//! only plans jobs and takes results.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::rr::LowerName;
use tracing::{error, info, warn};

use super::{Catalog, Output, ZoneState, serial_gt};
use crate::pool::table::PoolId;
use crate::zone::io::{Done, Job, WriteJob};
use crate::zone::sync::{After, Origin as SyncOrigin, Written};
use crate::zone::{self, MemberNote, ZoneFile};

impl Catalog {
    /// A job the zone file thread could not take (its queue was full):
    /// a write is retried later, a read at the next change.
    pub(super) fn refused(&mut self, job: Job) {
        match job {
            Job::Write(job) => {
                warn!(zone = %job.origin, "zone file queue full; the write will be retried");
                if let Some(z) = self.zones.get_mut(&job.origin) {
                    z.sync.end_write(job.ticket, &Written::Failed);
                }
            }
            Job::Read { origin, path, .. } => {
                warn!(file = %path.display(), "zone file queue full; the edit is read at the next change");
                self.reading.remove(&origin);
            }
            Job::Release(_) => {}
        }
    }

    /// Whether zone file work is under way.
    pub fn io_pending(&self) -> bool {
        self.zones.values().any(|z| z.sync.is_writing()) || !self.reading.is_empty()
    }

    /// Zone files that are behind what is served.
    pub fn files_behind(&self) -> Vec<String> {
        self.zones.values().filter(|z| z.sync.is_dirty() || z.sync.is_unwritable()).map(|z| z.file.path.display().to_string()).collect()
    }

    /// When the next coalesced write is due, if any (as of the last input).
    pub(super) fn next_write(&self) -> Option<Instant> {
        self.zones.values().filter_map(|z| z.sync.due_at(self.write_interval, self.clock)).min()
    }

    /// Starts a write of every zone whose turn has come (every changed one
    /// when `force`).
    pub fn flush(&mut self, now: Instant, force: bool) {
        let due: Vec<LowerName> =
            self.zones.iter().filter(|(_, z)| z.sync.is_due(now, self.write_interval, force)).map(|(o, _)| o.clone()).collect();
        for origin in due {
            self.write(&origin, now);
        }
    }

    /// The member notes of pool `i`, as its managed block keeps them.
    fn notes(&self, i: PoolId) -> Arc<[MemberNote]> {
        self.table.notes(i).map(|(id, admin, weight)| MemberNote { id, admin, weight }).collect()
    }

    /// Hands a zone's file to the I/O thread to be rewritten from what is served.
    fn write(&mut self, origin: &LowerName, now: Instant) {
        let pools = self.zones.get(origin).map(|z| z.pools.clone()).unwrap_or_default();
        let mut blocks = Vec::with_capacity(pools.len());
        for i in pools {
            let notes = self.notes(i);
            let (Some(p), Some(z)) = (self.table.get(i), self.zones.get(origin)) else { continue };
            let Some(answer) = z.answers.get(&p.key) else {
                error!(pool = %p.name, "internal: a pool without an answer keeps its block as it is");
                continue;
            };
            let addresses = if answer.servfail { Vec::new() } else { answer.addresses.clone() };
            blocks.push(zone::io::Block { name: p.name.clone(), ttl: p.ttl, addresses, notes });
        }
        let Some(z) = self.zones.get_mut(origin) else { return };
        let ticket = z.sync.begin_write(now);
        let job = WriteJob { origin: origin.clone(), base: z.file.clone(), serial: z.serial, blocks, ticket };
        self.out.push_back(Output::Job(Job::Write(Box::new(job))));
    }

    /// Takes the outcome of a zone file write.
    fn written(&mut self, done: zone::io::WriteDone) {
        let origin = done.origin.clone();
        let Some(z) = self.zones.get_mut(&origin) else { return };
        let path = z.file.path.clone();
        match (&done.outcome, &done.error) {
            (Written::Done(_), _) => {
                info!(file = %path.display(), serial = done.file.as_ref().map(|f| f.serial), "zone file written");
                self.counters.zone_writes.inc();
            }
            (Written::Invalid, e) => {
                self.counters.zone_write_failures.inc();
                error!(file = %path.display(), error = ?e, "refusing to write a zone file that does not validate")
            }
            (Written::Failed, e) => {
                self.counters.zone_write_failures.inc();
                error!(file = %path.display(), error = ?e, "cannot write zone file; will retry")
            }
            (Written::Edited, _) => info!(file = %path.display(), "zone file edited meanwhile; written again from the edit"),
        }
        if z.sync.end_write(done.ticket, &done.outcome) == After::Adopt
            && let Some(mut file) = done.file
        {
            // Our own write changes only pool records, which the answers
            // override anyway, and carries the data it was based on: keep
            // serving (and the pre-encoded table built from) the data held
            // now, which may have gained pool names since.
            file.data = z.file.data.clone();
            let old = std::mem::replace(&mut z.file, Arc::new(file));
            self.out.push_back(Output::Job(Job::Release(old)));
        }
        if let Some((text, parsed)) = done.edit {
            self.edit(origin, path, text, parsed);
        }
    }

    /// An operator may have changed a zone file: have it read.
    pub(super) fn edited(&mut self, path: &Path) {
        let Some(origin) = zone::origin_for(path).map(LowerName::from) else { return };
        if !self.reading.insert(origin.clone()) {
            self.reread.insert(origin); // read again once the read under way ends
            return;
        }
        self.out.push_back(Output::Job(Job::Read { origin, path: path.to_owned(), force: false }));
    }

    /// Takes the result of a zone file job.
    pub(super) fn io_done(&mut self, done: Done) {
        match done {
            Done::Write(w) => self.written(*w),
            Done::Read { origin, path, read } => {
                self.reading.remove(&origin);
                if self.reread.remove(&origin) {
                    self.edited(&path);
                }
                match *read {
                    Ok((text, parsed)) => self.edit(origin, path, text, parsed),
                    Err(e) if self.zones.contains_key(&origin) => {
                        warn!(file = %path.display(), error = %e, "zone file unreadable; still serving the last good version")
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// Text read from a zone file: if it is an operator's edit, serve it
    /// when valid, otherwise keep the last good version and say why.
    fn edit(&mut self, origin: LowerName, path: PathBuf, text: String, parsed: Option<Result<ZoneFile, zone::ZoneError>>) {
        if self.zones.get(&origin).is_some_and(|z| z.sync.origin_of(&text) == SyncOrigin::Ours) {
            return;
        }
        let Some(parsed) = parsed else {
            // Text we wrote once but no longer believe is there: read it whole.
            if self.reading.insert(origin.clone()) {
                self.out.push_back(Output::Job(Job::Read { origin, path, force: true }));
            }
            return;
        };
        let refused = match parsed {
            Err(e) => Err(e.to_string()),
            Ok(file) => {
                let stray = self.zones.get(&origin).and_then(|z| {
                    z.pools.iter().filter_map(|&i| self.table.get(i)).find_map(|p| file.stray_addresses(&p.name).first().map(|l| (p, *l)))
                });
                match stray {
                    Some((p, line)) => {
                        Err(format!("{}:{line}: address records for virtual name {} belong in its managed block", path.display(), p.name))
                    }
                    None => Ok(file),
                }
            }
        };
        let file = match refused {
            Ok(file) => file,
            Err(error) => {
                error!(%error, "zone edit refused; still serving the last good version");
                self.counters.zone_edits_refused.inc();
                if let Some(z) = self.zones.get_mut(&origin) {
                    z.sync.refuse(&text);
                }
                return;
            }
        };
        match self.zones.get_mut(&origin) {
            Some(z) => {
                let served = z.serial;
                z.serial = if serial_gt(file.serial, served) { file.serial } else { served.wrapping_add(1) };
                // Write back when the serial had to move or the managed blocks differ from what we answer.
                let blocks_differ = z.pools.iter().filter_map(|&i| self.table.get(i)).any(|p| {
                    let want: &[IpAddr] = match z.answers.get(&p.key) {
                        Some(a) if !a.servfail => &a.addresses,
                        _ => &[],
                    };
                    file.addresses(&p.name) != want || file.block(&p.name).is_none()
                });
                z.sync.accept(&text, z.serial != file.serial || blocks_differ);
                let old = std::mem::replace(&mut z.file, Arc::new(file));
                self.out.push_back(Output::Job(Job::Release(old)));
                self.stable_stale = true;
                info!(file = %path.display(), serial = z.serial, "zone file reloaded");
            }
            None => {
                info!(file = %path.display(), serial = file.serial, "new zone file served");
                self.stable_stale = true;
                self.zones.insert(origin.clone(), ZoneState::new(file, text));
            }
        }
        self.changed(vec![origin]);
    }
}
