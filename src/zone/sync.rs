//! Keeping one zone file true to what is served, as a pure planner: it
//! says when a write is due, tells our own writes from operator edits, and
//! decides what follows a write. It reads and writes nothing itself; the
//! updater hands its decisions to `zone::io`, which does the file work off
//! the updater's task.
//!
//! The rules: an operator edit always wins over our write (we write again
//! from it); a failed write is retried with everything it carried; a file
//! that does not parse is never overwritten until the operator fixes it;
//! writes to one file are at least `interval` apart and one at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sync state of one zone file.
#[derive(Debug, Clone)]
pub struct FileSync {
    /// What we believe the file on disk holds; anything else is an edit.
    disk: Arc<str>,
    /// A write is under way. Its text is known only when it ends: the
    /// driver does the file work in order, so a read it makes after our
    /// write sees the write's end first.
    writing: bool,
    /// What is served differs from the file.
    dirty: bool,
    /// The file on disk does not parse; writes wait until it is fixed.
    broken: bool,
    /// Our last rendering would not load: the file lags what is served.
    unwritable: bool,
    last_write: Option<Instant>,
    /// Managed blocks of pools that were removed, to take out at the next write.
    drop_blocks: Vec<String>,
}

/// What a write carries besides its text, handed back when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTicket {
    /// What was on disk when the write was planned: the file is replaced
    /// only if it still holds this.
    pub based_on: Arc<str>,
    /// Blocks of removed pools this write takes out.
    pub dropped: Vec<String>,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// This text is on disk now.
    Done(Arc<str>),
    /// The file held something other than `based_on`: an edit we had not
    /// read. Nothing was written.
    Edited,
    /// The disk refused it (full, read-only, gone); nothing was replaced.
    Failed,
    /// The text would not load; nothing was written.
    Invalid,
}

/// What follows the end of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Take the written file as the one served from.
    Adopt,
    /// Nothing to take; a write is due again (after an edit, or to retry).
    Again,
    /// Nothing to take and nothing to retry.
    Drop,
}

/// Where text read from the file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// What we believe is on disk, or what we are writing: not an edit.
    Ours,
    /// An operator's edit.
    Edit,
}

impl FileSync {
    /// A file as read at start-up.
    pub fn new(disk: impl Into<Arc<str>>) -> Self {
        Self {
            disk: disk.into(),
            writing: false,
            dirty: false,
            broken: false,
            unwritable: false,
            last_write: None,
            drop_blocks: Vec::new(),
        }
    }

    /// What is served changed: the file must follow.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The last rendering would not load, so the file lags what is served.
    pub fn is_unwritable(&self) -> bool {
        self.unwritable
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn is_writing(&self) -> bool {
        self.writing
    }

    /// A pool left: its managed block goes at the next write.
    pub fn drop_block(&mut self, pool: String) {
        self.drop_blocks.push(pool);
        self.dirty = true;
    }

    /// The blocks of removed pools still to take out.
    pub fn dropped_blocks(&self) -> &[String] {
        &self.drop_blocks
    }

    /// When the next write is due (`None`: none is), at the earliest `now`
    /// for a file never written.
    pub fn due_at(&self, interval: Duration, now: Instant) -> Option<Instant> {
        (self.dirty && !self.broken && !self.writing).then(|| self.last_write.map_or(now, |t| t + interval))
    }

    /// Whether a write should start now (`force`: whatever the interval).
    pub fn is_due(&self, now: Instant, interval: Duration, force: bool) -> bool {
        self.due_at(interval, now).is_some_and(|t| force || now >= t)
    }

    /// Starts a write of what is served now: until it ends, the file is
    /// not written again.
    pub fn begin_write(&mut self, now: Instant) -> WriteTicket {
        self.dirty = false;
        self.last_write = Some(now);
        self.writing = true;
        WriteTicket { based_on: self.disk.clone(), dropped: std::mem::take(&mut self.drop_blocks) }
    }

    /// Ends the write `ticket` started.
    pub fn end_write(&mut self, ticket: WriteTicket, outcome: &Written) -> After {
        self.writing = false;
        match outcome {
            Written::Done(text) if *ticket.based_on == *self.disk => {
                self.disk = text.clone();
                self.unwritable = false;
                After::Adopt
            }
            // An edit was read while we wrote over it: write again from it.
            Written::Done(_) | Written::Edited => {
                self.drop_blocks.extend(ticket.dropped);
                self.dirty = true;
                After::Again
            }
            Written::Failed => {
                self.drop_blocks.extend(ticket.dropped);
                self.dirty = true;
                After::Again
            }
            // What we render does not load: writing it again will not help.
            Written::Invalid => {
                self.drop_blocks.extend(ticket.dropped);
                self.unwritable = true;
                After::Drop
            }
        }
    }

    /// Whether `text` read from the file is ours or an edit.
    pub fn origin_of(&self, text: &str) -> Origin {
        if *self.disk == *text { Origin::Ours } else { Origin::Edit }
    }

    /// An edit that does not load: keep serving the last good version, and
    /// write nothing until the operator fixes the file.
    pub fn refuse(&mut self, text: &str) {
        self.broken = true;
        self.disk = text.into();
    }

    /// An edit that loads and is now served; `rewrite` when the file must
    /// change to match what is served (serial, managed blocks).
    pub fn accept(&mut self, text: &str, rewrite: bool) {
        self.broken = false;
        self.disk = text.into();
        self.dirty |= rewrite;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn writes_wait_for_the_interval_and_for_each_other() {
        let t0 = Instant::now();
        let mut f = FileSync::new("v1");
        assert_eq!(f.due_at(SEC, t0), None, "clean");
        f.touch();
        assert!(f.is_due(t0, SEC, false), "never written: at once");
        let ticket = f.begin_write(t0);
        f.touch();
        assert_eq!(f.due_at(SEC, t0), None, "one write at a time");
        assert_eq!(f.end_write(ticket, &Written::Done("v2".into())), After::Adopt);
        assert_eq!(f.origin_of("v2"), Origin::Ours);
        assert!(!f.is_due(t0 + SEC / 2, SEC, false));
        assert!(f.is_due(t0 + SEC / 2, SEC, true), "forced at shutdown");
        assert!(f.is_due(t0 + SEC, SEC, false));
    }

    #[test]
    fn our_own_write_read_back_is_not_an_edit() {
        let t0 = Instant::now();
        let mut f = FileSync::new("v1");
        f.touch();
        let ticket = f.begin_write(t0);
        assert_eq!(f.origin_of("v1"), Origin::Ours);
        assert_eq!(f.origin_of("edited"), Origin::Edit);
        f.end_write(ticket, &Written::Done("v2".into()));
        assert_eq!(f.origin_of("v2"), Origin::Ours, "the watcher sees our write land");
        assert_eq!(f.origin_of("v1"), Origin::Edit, "after our write, the old text is someone else's");
    }

    #[test]
    fn an_edit_wins_over_a_write_under_way() {
        let t0 = Instant::now();
        let mut f = FileSync::new("v1");
        f.touch();
        f.drop_block("gone.example.".into());
        let ticket = f.begin_write(t0);
        assert!(f.dropped_blocks().is_empty());
        // The operator's edit is read while the write is under way.
        f.accept("edited", false);
        assert_eq!(f.end_write(ticket, &Written::Done("v2".into())), After::Again, "written over an edit: write again from the edit");
        assert!(f.is_dirty());
        assert_eq!(f.dropped_blocks(), ["gone.example."], "the removed pool's block still goes");
        assert_eq!(f.origin_of("edited"), Origin::Ours);
        // Found on disk by the write itself: nothing written, write again.
        let ticket = f.begin_write(t0 + SEC);
        assert_eq!(f.end_write(ticket, &Written::Edited), After::Again);
    }

    #[test]
    fn a_failed_write_is_retried_with_all_it_carried() {
        let t0 = Instant::now();
        let mut f = FileSync::new("v1");
        f.drop_block("gone.example.".into());
        let ticket = f.begin_write(t0);
        assert_eq!(f.end_write(ticket, &Written::Failed), After::Again);
        assert!(f.is_due(t0 + SEC, SEC, false));
        assert_eq!(f.dropped_blocks(), ["gone.example."]);
        assert_eq!(f.origin_of("v1"), Origin::Ours, "the old file is still there");
        let ticket = f.begin_write(t0 + SEC);
        assert_eq!(f.end_write(ticket, &Written::Invalid), After::Drop);
        assert!(!f.is_dirty(), "an invalid rendering is not retried");
        assert!(f.is_unwritable(), "but the file is known to lag");
    }

    #[test]
    fn a_broken_file_is_not_written_until_fixed() {
        let t0 = Instant::now();
        let mut f = FileSync::new("v1");
        f.refuse("garbage");
        f.touch();
        assert!(f.is_broken());
        assert_eq!(f.due_at(SEC, t0), None);
        assert_eq!(f.origin_of("garbage"), Origin::Ours, "the same broken text again is not a new edit");
        f.accept("fixed", true);
        assert!(f.is_due(t0, SEC, false));
    }
}
