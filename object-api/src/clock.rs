//! [`Clock`]: time and randomness, injected, so that a run can be made deterministic.

use std::fmt;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Where cohort reads the wall clock and draws random numbers. Every component takes one, so
/// that a simulation (or a test) can replace both and replay a run exactly; nothing in cohort
/// calls `SystemTime::now`, `std::time::Instant::now` or `rand::random` directly (clippy's
/// `disallowed_methods` checks it).
///
/// Monotonic time is tokio's ([`now`](Self::now)): tests pause it and simulators drive it. The
/// wall clock only stamps records for people to read (manifests, epoch records); no decision
/// compares wall clocks.
///
/// ```
/// use cohort_object_api::Clock;
///
/// let clock = Clock::seeded(7, 1_700_000_000_000);
/// let again = Clock::seeded(7, 1_700_000_000_000);
/// assert_eq!(clock.random_u64(), again.random_u64());
/// assert_eq!(Clock::fixed(42).wall_ms(), 42);
/// ```
#[derive(Clone)]
pub struct Clock {
    source: Arc<dyn ClockSource>,
}

/// A source of wall time and randomness behind a [`Clock`].
pub trait ClockSource: Send + Sync + 'static {
    /// The wall clock, Unix milliseconds.
    fn wall_ms(&self) -> u64;
    /// A uniformly random number.
    fn random_u64(&self) -> u64;
}

impl Clock {
    /// The system's wall clock and the operating system's randomness: what production runs on.
    pub fn system() -> Self {
        Self::from_source(Arc::new(System))
    }

    /// A deterministic clock: the wall clock starts at `wall_start_ms` and follows tokio's
    /// clock from the moment this is called; random numbers come from a generator seeded with
    /// `seed`. Two clocks built alike give the same numbers in the same order.
    pub fn seeded(seed: u64, wall_start_ms: u64) -> Self {
        Self::from_source(Arc::new(Seeded {
            wall_start_ms,
            origin: tokio::time::Instant::now(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }))
    }

    /// A wall clock stuck at `wall_ms`, with the system's randomness (tests whose outcome must
    /// not depend on the wall clock).
    pub fn fixed(wall_ms: u64) -> Self {
        Self::from_source(Arc::new(Fixed(wall_ms)))
    }

    /// A clock over a source of your own.
    pub fn from_source(source: Arc<dyn ClockSource>) -> Self {
        Self { source }
    }

    /// The wall clock, Unix milliseconds.
    pub fn wall_ms(&self) -> u64 {
        self.source.wall_ms()
    }

    /// A uniformly random number.
    pub fn random_u64(&self) -> u64 {
        self.source.random_u64()
    }

    /// Monotonic time: tokio's clock.
    pub fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock").finish_non_exhaustive()
    }
}

struct System;

impl ClockSource for System {
    #[allow(clippy::disallowed_methods, reason = "the one production wall clock")]
    fn wall_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the one production source of randomness"
    )]
    fn random_u64(&self) -> u64 {
        rand::random()
    }
}

struct Seeded {
    wall_start_ms: u64,
    origin: tokio::time::Instant,
    rng: Mutex<StdRng>,
}

impl ClockSource for Seeded {
    fn wall_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_start_ms.saturating_add(elapsed)
    }

    fn random_u64(&self) -> u64 {
        // Drawing a number cannot leave the generator half updated.
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        rng.next_u64()
    }
}

struct Fixed(u64);

impl ClockSource for Fixed {
    fn wall_ms(&self) -> u64 {
        self.0
    }

    fn random_u64(&self) -> u64 {
        System.random_u64()
    }
}
