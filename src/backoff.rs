//! One back-off for every retry loop: the pause before each attempt is
//! drawn at random up to a ceiling that doubles with every failure
//! ("full jitter"), so that thousands of monitors retrying against an
//! authority that restarted come back spread over the window instead of
//! in synchronised waves. Pure: it hands out durations; the caller sleeps.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// The shortest pause handed out: a retry loop never spins.
const FLOOR: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
    failures: u32,
    rng: SmallRng,
}

impl Backoff {
    /// Pauses up to `first` after the first failure, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self::seeded(first, max, rand::random())
    }

    /// The same, drawn from `seed` (tests).
    pub fn seeded(first: Duration, max: Duration, seed: u64) -> Self {
        let max = max.max(first);
        Self { first, max, ceiling: first, failures: 0, rng: SmallRng::seed_from_u64(seed) }
    }

    /// The pause before the next attempt, after one more failure.
    pub fn next_pause(&mut self) -> Duration {
        let ceiling = self.ceiling.max(FLOOR);
        self.ceiling = (self.ceiling * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.rng.random_range(FLOOR..=ceiling)
    }

    /// An attempt succeeded: the next failure starts from `first` again.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
        self.failures = 0;
    }

    /// Failures since the last success (0: the next one is the first).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_stay_under_a_ceiling_that_doubles_to_the_maximum_and_resets() {
        let mut b = Backoff::seeded(100 * MS, 800 * MS, 7);
        for ceiling in [100, 200, 400, 800, 800, 800] {
            let p = b.next_pause();
            assert!(p >= MS && p <= ceiling * MS, "{p:?} over {ceiling} ms");
        }
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_pause() <= 100 * MS);
    }

    #[test]
    fn many_clients_failing_at_once_come_back_spread_out() {
        // A thousand clients with their own draws, at their fourth failure
        // (ceiling 800 ms): their pauses cover the window, not one instant.
        let pauses: Vec<Duration> = (0..1000u64)
            .map(|seed| {
                let mut b = Backoff::seeded(100 * MS, 10_000 * MS, seed);
                for _ in 0..3 {
                    b.next_pause();
                }
                b.next_pause()
            })
            .collect();
        let mut buckets = [0u32; 8];
        for p in &pauses {
            buckets[(p.as_millis() as usize * 8 / 801).min(7)] += 1;
        }
        assert!(buckets.iter().all(|&n| (60..=190).contains(&n)), "{buckets:?}");
    }
}
