//! Log lines that cannot be flooded: each place in the code that logs (a
//! callsite, ours or a library's) may write `PER_SECOND` lines a second;
//! the rest are dropped and counted, and the next line that passes is
//! preceded by one saying how many were suppressed. A packet flood thus
//! costs a few lines a second, and `/metrics` counts everything.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines one callsite may write in a second.
pub const PER_SECOND: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

/// Lines suppressed since start, by every throttle in the process.
pub static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// One callsite's budget. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct Budget {
    start: Instant,
    passed: u32,
    suppressed: u64,
}

/// What to do with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Write,
    /// Write it, after a line saying this many were suppressed before it.
    WriteAfter(u64),
    Drop,
}

impl Budget {
    pub fn new(now: Instant) -> Self {
        Self { start: now, passed: 0, suppressed: 0 }
    }

    pub fn admit(&mut self, now: Instant, per_window: u32) -> Admit {
        if now.saturating_duration_since(self.start) >= WINDOW {
            self.start = now;
            self.passed = 0;
        }
        if self.passed >= per_window {
            self.suppressed += 1;
            return Admit::Drop;
        }
        self.passed += 1;
        match std::mem::take(&mut self.suppressed) {
            0 => Admit::Write,
            n => Admit::WriteAfter(n),
        }
    }
}

/// The layer that applies a budget to every callsite.
#[derive(Debug, Default)]
pub struct Throttle {
    budgets: Mutex<HashMap<Identifier, Budget>>,
}

impl<S: Subscriber> Layer<S> for Throttle {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if meta.target() == module_path!() {
            return true; // our own summaries
        }
        let now = Instant::now();
        let admit = {
            let Ok(mut budgets) = self.budgets.lock() else { return true };
            budgets.entry(meta.callsite()).or_insert_with(|| Budget::new(now)).admit(now, PER_SECOND)
        };
        match admit {
            Admit::Write => true,
            Admit::WriteAfter(n) => {
                tracing::warn!(suppressed = n, like = meta.name(), from = meta.target(), "log lines suppressed (flood)");
                true
            }
            Admit::Drop => {
                SUPPRESSED.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Lines suppressed so far.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_few_lines_a_second_and_says_how_many_it_dropped() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let mut written = 0;
        for i in 0..20_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100); // 2 s of 10,000 lines a second
            match b.admit(now, PER_SECOND) {
                Admit::Write => written += 1,
                Admit::WriteAfter(n) => {
                    written += 1;
                    assert_eq!(n, 10_000 - u64::from(PER_SECOND), "the summary counts the second's drops");
                }
                Admit::Drop => {}
            }
        }
        assert_eq!(written, 2 * PER_SECOND);
        assert_eq!(b.admit(t0 + Duration::from_secs(3), PER_SECOND), Admit::WriteAfter(10_000 - u64::from(PER_SECOND)));
    }

    #[test]
    fn quiet_callsites_are_never_held_back() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        for s in 0..10 {
            assert_eq!(b.admit(t0 + Duration::from_secs(s), PER_SECOND), Admit::Write);
        }
    }
}
