//! The state store's writer: one thread of its own, so no task ever waits
//! for the disk. Two priorities: acknowledged writes (an operator's change,
//! a ring change, a serial reservation), each with a ticket whose outcome
//! goes back to the updater once it is durable, are written first, all
//! those queued in one transaction; background saves (members' state,
//! overrides after a configuration edit, the journal) are coalesced by key
//! (the latest of each wins) and written after, retried with back-off
//! until they land. What is owed shows in `/metrics`.
//!
//! A background value is never written over a newer acknowledged one:
//! every put is numbered as it arrives, and a background batch that failed
//! goes back only where nothing newer came for its key meanwhile.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Put, StateCounters, StateError, Store};
use crate::backoff::Backoff;

/// Acknowledged writes queued at most; more are refused (the disk is far behind).
pub const ACKED_QUEUE: usize = 256;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// Names an acknowledged write; its outcome comes back with it.
pub type Ticket = u64;

/// What can make writes durable: the store, or a stand-in in tests.
pub trait Durable: Send + Sync + 'static {
    fn write_puts(&self, puts: &[&Put]) -> Result<(), StateError>;
    fn counters(&self) -> &Arc<StateCounters>;
}

impl Durable for Store {
    fn write_puts(&self, puts: &[&Put]) -> Result<(), StateError> {
        self.write(puts.iter().copied())
    }

    fn counters(&self) -> &Arc<StateCounters> {
        &self.counters
    }
}

/// An acknowledged write's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub ticket: Ticket,
    pub result: Result<(), String>,
}

type Key = (usize, String);

#[derive(Default)]
struct Queue {
    acked: VecDeque<(Ticket, Vec<Put>)>,
    /// Background puts by key, each with the number it arrived as.
    background: BTreeMap<Key, (u64, Put)>,
    /// The number of the latest put of each key (acknowledged or not).
    latest: HashMap<Key, u64>,
    seq: u64,
    stopping: bool,
}

impl Queue {
    fn number(&mut self, put: &Put) -> u64 {
        self.seq += 1;
        self.latest.insert(put.key(), self.seq);
        self.seq
    }
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

pub struct Writer {
    shared: Shared,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writer {
    /// Starts the thread; outcomes of acknowledged writes go to `done`.
    pub fn start(store: Arc<dyn Durable>, done: mpsc::Sender<Saved>) -> std::io::Result<Self> {
        let shared: Shared = Arc::default();
        let theirs = shared.clone();
        let thread = std::thread::Builder::new().name("vnamed-state".into()).spawn(move || run(&*store, &theirs, &done))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Queues an acknowledged write; refused (given back) while
    /// `ACKED_QUEUE` of them wait already.
    pub fn acked(&self, ticket: Ticket, puts: Vec<Put>) -> Result<(), Vec<Put>> {
        let mut q = lock(&self.shared);
        if q.acked.len() >= ACKED_QUEUE || q.stopping {
            return Err(puts);
        }
        for p in &puts {
            let key = p.key();
            q.number(p);
            // This is newer than whatever waits in the background for its key.
            q.background.remove(&key);
        }
        q.acked.push_back((ticket, puts));
        self.shared.1.notify_one();
        Ok(())
    }

    /// Queues background saves: coalesced with those waiting (one per key).
    pub fn background(&self, puts: Vec<Put>) {
        if puts.is_empty() {
            return;
        }
        let mut q = lock(&self.shared);
        for p in puts {
            let n = q.number(&p);
            q.background.insert(p.key(), (n, p));
        }
        self.shared.1.notify_one();
    }

    /// Writes what is queued once more and stops the thread: blocking, so
    /// called off the async workers (`spawn_blocking`) or at the very end.
    pub fn stop(mut self) {
        lock(&self.shared).stopping = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.shared).stopping = true;
        self.shared.1.notify_one();
    }
}

fn run(store: &dyn Durable, shared: &Shared, done: &mpsc::Sender<Saved>) {
    let mut backoff = Backoff::new(FIRST_RETRY, LAST_RETRY);
    let mut retry_at: Option<Instant> = None;
    loop {
        let mut q = lock(shared);
        // Wait for acknowledged work, or background work whose retry is due.
        loop {
            let background_due = !q.background.is_empty() && retry_at.is_none_or(|t| Instant::now() >= t);
            if !q.acked.is_empty() || background_due || (q.stopping && (q.background.is_empty() || retry_at.is_some())) {
                break;
            }
            q = match retry_at.filter(|_| !q.background.is_empty()) {
                Some(t) => shared.1.wait_timeout(q, t.saturating_duration_since(Instant::now())).unwrap_or_else(|p| p.into_inner()).0,
                None => shared.1.wait(q).unwrap_or_else(|p| p.into_inner()),
            };
        }
        if !q.acked.is_empty() {
            let batch: Vec<(Ticket, Vec<Put>)> = q.acked.drain(..).collect();
            drop(q);
            let puts: Vec<&Put> = batch.iter().flat_map(|(_, p)| p).collect();
            let result = store.write_puts(&puts).map_err(|e| e.to_string());
            for (ticket, _) in &batch {
                let _ = done.blocking_send(Saved { ticket: *ticket, result: result.clone() });
            }
            continue;
        }
        let stopping = q.stopping;
        if q.background.is_empty() {
            if stopping {
                return;
            }
            continue;
        }
        let batch = std::mem::take(&mut q.background);
        drop(q);
        let puts: Vec<&Put> = batch.values().map(|(_, p)| p).collect();
        match store.write_puts(&puts) {
            Ok(()) => {
                if backoff.failures() > 0 {
                    info!(writes = batch.len(), "state store written again");
                }
                backoff.reset();
                retry_at = None;
            }
            Err(error) => {
                if backoff.failures() == 0 {
                    warn!(%error, owed = batch.len(), "cannot save state; retrying with backoff");
                }
                retry_at = Some(Instant::now() + backoff.next_pause());
                let mut q = lock(shared);
                for (key, (n, put)) in batch {
                    if q.latest.get(&key) == Some(&n) && !q.background.contains_key(&key) {
                        q.background.insert(key, (n, put));
                    }
                }
                if stopping {
                    warn!(owed = q.background.len(), "stopping with state not saved");
                    store.counters().owed.set(q.background.len() as u64);
                    return;
                }
            }
        }
        let owed = lock(shared).background.len();
        store.counters().owed.set(if retry_at.is_some() { owed as u64 } else { 0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write; fails while `failing`, and takes `delay` each.
    #[derive(Default)]
    struct Disk {
        writes: Mutex<Vec<Vec<Put>>>,
        failing: std::sync::atomic::AtomicBool,
        delay: Mutex<Duration>,
        counters: Arc<StateCounters>,
    }

    impl Durable for Disk {
        fn write_puts(&self, puts: &[&Put]) -> Result<(), StateError> {
            std::thread::sleep(*self.delay.lock().unwrap());
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StateError::Store { path: "disk".into(), message: "No space left on device".into() });
            }
            self.writes.lock().unwrap().push(puts.iter().map(|p| (*p).clone()).collect());
            Ok(())
        }
        fn counters(&self) -> &Arc<StateCounters> {
            &self.counters
        }
    }

    fn serial(zone: &str, n: u32) -> Put {
        Put::Serial(zone.into(), n)
    }

    fn wait_for(what: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(Instant::now() < until, "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn acknowledged_writes_come_back_with_their_tickets_and_go_before_background_ones() {
        let disk = Arc::new(Disk::default());
        *disk.delay.lock().unwrap() = Duration::from_millis(50);
        let (tx, mut rx) = mpsc::channel(16);
        let w = Writer::start(disk.clone(), tx).unwrap();
        w.background(vec![serial("bg.", 1)]);
        // While the first background write takes its time, both kinds queue.
        std::thread::sleep(Duration::from_millis(10));
        w.background(vec![serial("bg.", 2), serial("bg.", 3)]);
        w.acked(7, vec![serial("a.", 1)]).unwrap();
        w.acked(8, vec![serial("b.", 1)]).unwrap();
        assert_eq!(rx.blocking_recv(), Some(Saved { ticket: 7, result: Ok(()) }));
        assert_eq!(rx.blocking_recv(), Some(Saved { ticket: 8, result: Ok(()) }));
        wait_for(|| disk.writes.lock().unwrap().len() == 3);
        let writes = disk.writes.lock().unwrap().clone();
        assert_eq!(writes[0], vec![serial("bg.", 1)]);
        assert_eq!(writes[1], vec![serial("a.", 1), serial("b.", 1)], "acknowledged first, in one transaction");
        assert_eq!(writes[2], vec![serial("bg.", 3)], "background coalesced: the latest of a key wins");
        w.stop();
    }

    #[test]
    fn a_failed_background_save_is_retried_but_never_over_a_newer_acknowledged_value() {
        let disk = Arc::new(Disk::default());
        disk.failing.store(true, std::sync::atomic::Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(16);
        let w = Writer::start(disk.clone(), tx).unwrap();
        w.background(vec![serial("z.", 1), serial("y.", 1)]);
        wait_for(|| disk.counters.owed.get() == 2);
        // An acknowledged value of z. comes while the old one is owed; it
        // fails too (the disk is full), and is refused to its caller.
        w.acked(1, vec![serial("z.", 2)]).unwrap();
        assert!(rx.blocking_recv().unwrap().result.unwrap_err().contains("No space left"));
        disk.failing.store(false, std::sync::atomic::Ordering::Relaxed);
        w.acked(2, vec![serial("z.", 3)]).unwrap();
        assert_eq!(rx.blocking_recv().unwrap(), Saved { ticket: 2, result: Ok(()) });
        wait_for(|| disk.counters.owed.get() == 0 && disk.writes.lock().unwrap().len() == 2);
        let writes = disk.writes.lock().unwrap().clone();
        assert_eq!(writes, vec![vec![serial("z.", 3)], vec![serial("y.", 1)]], "z.'s old value is not written after its new one");
        w.stop();
    }

    #[test]
    fn stop_writes_what_is_queued_and_a_full_queue_refuses() {
        let disk = Arc::new(Disk::default());
        *disk.delay.lock().unwrap() = Duration::from_millis(200);
        let (tx, _rx) = mpsc::channel(ACKED_QUEUE * 2);
        let w = Writer::start(disk.clone(), tx).unwrap();
        w.background(vec![serial("slow.", 1)]);
        std::thread::sleep(Duration::from_millis(20));
        for t in 0..ACKED_QUEUE as u64 {
            w.acked(t, vec![serial("q.", t as u32)]).unwrap();
        }
        assert!(w.acked(999, vec![serial("q.", 999)]).is_err(), "the disk is far behind: refused, not queued");
        w.background(vec![serial("last.", 1)]);
        w.stop();
        let writes = disk.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert_eq!(writes[2], vec![serial("last.", 1)]);
    }
}
