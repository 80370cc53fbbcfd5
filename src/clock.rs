//! Time, read in one place. Pure code never reads a clock: drivers read
//! `Now` once per event and pass it down, so tests drive the same code with
//! a virtual clock. The monotonic clock is tokio's, so that a test runtime
//! started paused (`start_paused`) moves the drivers' time with its timers;
//! outside such a runtime it is the system's.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One moment on both clocks: the monotonic one for intervals and the
/// wall clock for what people and other hosts say (lifetimes, reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    /// Reads both clocks. Under a paused test runtime, the wall clock
    /// runs ahead by as much as the virtual clock has been advanced.
    pub fn read() -> Self {
        let (virtual_now, real) = (instant(), Instant::now());
        Self { instant: virtual_now, wall: SystemTime::now() + virtual_now.saturating_duration_since(real) }
    }

    /// The instant at which wall-clock time `t` falls, seen from this moment.
    pub fn instant_at(&self, t: SystemTime) -> Instant {
        match t.duration_since(self.wall) {
            Ok(ahead) => self.instant + ahead,
            Err(e) => self.instant.checked_sub(e.duration()).unwrap_or(self.instant),
        }
    }

    /// This moment plus `d` on both clocks (for virtual clocks in tests).
    pub fn after(&self, d: Duration) -> Self {
        Self { instant: self.instant + d, wall: self.wall + d }
    }

    /// The wall clock in Unix milliseconds.
    pub fn unix_ms(&self) -> i64 {
        unix_ms_of(self.wall)
    }
}

/// The monotonic clock, as tokio's timers see it.
pub fn instant() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// `t` in Unix milliseconds (0 before 1970).
pub fn unix_ms_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The wall clock now, in Unix milliseconds.
pub fn unix_ms() -> i64 {
    unix_ms_of(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times_map_to_instants_both_ways() {
        let now = Now::read();
        let ahead = now.wall + Duration::from_secs(5);
        assert_eq!(now.instant_at(ahead), now.instant + Duration::from_secs(5));
        let behind = now.wall - Duration::from_millis(10);
        assert_eq!(now.instant_at(behind), now.instant - Duration::from_millis(10));
        let later = now.after(Duration::from_secs(1));
        assert_eq!(later.unix_ms() - now.unix_ms(), 1_000);
        assert_eq!(unix_ms_of(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
