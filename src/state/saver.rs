//! Saving what nobody waits for (the members' last known state, overrides
//! after a configuration edit, serial marks that failed) on a thread of its
//! own, so the updater never waits for the disk for them. A write that
//! fails is kept, merged with newer ones (the latest of each wins), and
//! retried with backoff until it lands; what is owed shows in `/metrics`.
//! Journal rows the journal has since dropped are not kept owed, so a long
//! outage of the disk holds at most a journal's worth of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tracing::{info, warn};

use super::{Put, Store};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(10);

pub struct Saver {
    tx: Option<SyncSender<Vec<Put>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Saver {
    pub fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(4);
        let thread = std::thread::Builder::new().name("vnamed-state".into()).spawn(move || run(&store, rx))?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    /// Hands `puts` over; gives them back when the saver is busy.
    pub fn send(&self, puts: Vec<Put>) -> Result<(), Vec<Put>> {
        if puts.is_empty() {
            return Ok(());
        }
        match &self.tx {
            Some(tx) => tx.try_send(puts).map_err(|e| match e {
                TrySendError::Full(p) | TrySendError::Disconnected(p) => p,
            }),
            None => Err(puts),
        }
    }

    /// Saves what is handed over and owed, once more, and stops.
    pub fn stop(mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &Store, rx: Receiver<Vec<Put>>) {
    let mut owed: BTreeMap<(usize, String), Put> = BTreeMap::new();
    let mut backoff = FIRST_RETRY;
    let mut open = true;
    while open {
        let wait = if owed.is_empty() { Duration::from_secs(3600) } else { backoff };
        match rx.recv_timeout(wait) {
            Ok(puts) => {
                for p in puts.into_iter().chain(rx.try_iter().flatten()) {
                    owed.insert(p.key(), p);
                }
                forget_dropped_rows(&mut owed);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if owed.is_empty() {
            continue;
        }
        match store.write(owed.values()) {
            Ok(()) => {
                if backoff > FIRST_RETRY {
                    info!(writes = owed.len(), "state store written again");
                }
                owed.clear();
                backoff = FIRST_RETRY;
            }
            Err(error) => {
                if backoff == FIRST_RETRY {
                    warn!(%error, owed = owed.len(), "cannot save state; retrying with backoff");
                }
                backoff = (backoff * 2).min(LAST_RETRY);
            }
        }
        store.counters.owed.set(owed.len() as u64);
    }
    if !owed.is_empty() {
        warn!(owed = owed.len(), "stopping with state not saved");
    }
}

/// Drops owed journal rows that a later owed put forgets anyway.
fn forget_dropped_rows(owed: &mut BTreeMap<(usize, String), Put>) {
    let mut keep: BTreeMap<String, u64> = BTreeMap::new();
    for p in owed.values() {
        if let Put::Journal { zone, keep_from, .. } = p {
            let k = keep.entry(zone.clone()).or_default();
            *k = (*k).max(*keep_from);
        }
    }
    owed.retain(|_, p| match p {
        Put::Journal { zone, row: Some((n, _)), .. } => keep.get(zone).is_none_or(|k| *n >= *k),
        _ => true,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_journal_rows_a_later_put_forgets_are_dropped() {
        let row = |n: u64, keep_from: u64| Put::Journal { zone: "a.".into(), row: Some((n, vec![1])), keep_from };
        let mut owed: BTreeMap<(usize, String), Put> = BTreeMap::new();
        for p in (0..300)
            .map(|n| row(n, n.saturating_sub(255)))
            .chain([Put::Serial("a.".into(), 1), Put::Journal { zone: "b.".into(), row: Some((0, vec![])), keep_from: 0 }])
        {
            owed.insert(p.key(), p);
        }
        forget_dropped_rows(&mut owed);
        let rows: Vec<u64> = owed
            .values()
            .filter_map(|p| match p {
                Put::Journal { zone, row: Some((n, _)), .. } if zone == "a." => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(rows, (44..300).collect::<Vec<_>>());
        assert_eq!(owed.len(), 256 + 2, "the serial and the other zone's row stay");
    }
}
