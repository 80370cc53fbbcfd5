//! Saving what nobody waits for (the members' last known state, overrides
//! after a configuration edit, serial marks that failed) on a thread of its
//! own, so the updater never waits for the disk for them. A write that
//! fails is kept, merged with newer ones (the latest of each wins), and
//! retried with backoff until it lands; what is owed shows in `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tracing::{info, warn};

use super::{Put, Store};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(10);
use crate::backoff::Backoff;

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
    let mut backoff = Backoff::new(FIRST_RETRY, LAST_RETRY);
    let mut pause = FIRST_RETRY;
    let mut open = true;
    while open {
        let wait = if owed.is_empty() { Duration::from_secs(3600) } else { pause };
        match rx.recv_timeout(wait) {
            Ok(puts) => {
                for p in puts.into_iter().chain(rx.try_iter().flatten()) {
                    owed.insert(p.key(), p);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if owed.is_empty() {
            continue;
        }
        match store.write(owed.values()) {
            Ok(()) => {
                if backoff.failures() > 0 {
                    info!(writes = owed.len(), "state store written again");
                }
                owed.clear();
                backoff.reset();
            }
            Err(error) => {
                if backoff.failures() == 0 {
                    warn!(%error, owed = owed.len(), "cannot save state; retrying with backoff");
                }
                pause = backoff.next_pause();
            }
        }
        store.counters.owed.set(owed.len() as u64);
    }
    if !owed.is_empty() {
        warn!(owed = owed.len(), "stopping with state not saved");
    }
}
