//! What a cohort measures about itself: checkpoints committed and aborted, how long objects
//! were paused, and what the last checkpoint cost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cohort_object_api::CheckpointId;

use super::lock;

/// Pause samples kept (the newest win), enough for p99 over 100 checkpoints of 10,000 objects.
const MAX_SAMPLES: usize = 1 << 20;

/// Counters and pause times of a cohort's participants. Read with
/// [`Cohort::metrics`](crate::Cohort::metrics) or [`Node::metrics`](crate::node::Node::metrics).
#[derive(Debug, Default)]
pub struct Metrics {
    committed: AtomicU64,
    aborted: AtomicU64,
    redelivered: AtomicU64,
    forced: AtomicU64,
    recorded: AtomicU64,
    pauses_ns: Mutex<Samples>,
    last: Mutex<Option<CheckpointStats>>,
}

#[derive(Debug, Default)]
struct Samples {
    values: Vec<u32>,
    next: usize,
}

/// Pause times: how long objects were blocked from handling messages by a checkpoint
/// (prepare + capture).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PauseStats {
    /// Samples (one per object per checkpoint).
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Longest.
    pub max: Duration,
}

/// What one committed checkpoint cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Its id.
    pub id: CheckpointId,
    /// From prepare to the manifest's creation.
    pub duration: Duration,
    /// Of which creating the manifest (the commit point, including the store's fsync).
    pub commit: Duration,
    /// Objects whose state was written.
    pub written: usize,
    /// Objects unchanged since the previous line (referenced, not written).
    pub unchanged: usize,
    /// Bytes of state segments uploaded.
    pub bytes: u64,
    /// In-transit messages recorded.
    pub in_transit: usize,
}

impl Metrics {
    /// Checkpoints committed.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Attempts aborted.
    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Relaxed)
    }

    /// In-transit messages redelivered by recoveries.
    pub fn redelivered(&self) -> u64 {
        self.redelivered.load(Ordering::Relaxed)
    }

    /// Captures forced by a message coloured with the active round arriving before the
    /// prepare did.
    pub fn forced_captures(&self) -> u64 {
        self.forced.load(Ordering::Relaxed)
    }

    /// Messages recorded as channel state (in transit across a cut), in any attempt.
    pub fn recorded_in_transit(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// The last committed checkpoint's cost.
    pub fn last_checkpoint(&self) -> Option<CheckpointStats> {
        lock(&self.last).clone()
    }

    /// Pause percentiles over the kept samples.
    pub fn pauses(&self) -> PauseStats {
        let mut v = lock(&self.pauses_ns).values.clone();
        if v.is_empty() {
            return PauseStats::default();
        }
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            Duration::from_nanos(u64::from(v[i]))
        };
        PauseStats {
            count: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    /// Forgets the pause samples (to measure one phase of a run).
    pub fn reset_pauses(&self) {
        *lock(&self.pauses_ns) = Samples::default();
    }

    pub(crate) fn record_pause(&self, pause: Duration) {
        // Nanoseconds in a u32: pauses past 4.29 s are recorded as 4.29 s.
        let ns = u32::try_from(pause.as_nanos()).unwrap_or(u32::MAX);
        let mut s = lock(&self.pauses_ns);
        if s.values.len() < MAX_SAMPLES {
            s.values.push(ns);
        } else {
            let i = s.next;
            s.values[i] = ns;
            s.next = (i + 1) % MAX_SAMPLES;
        }
    }

    pub(crate) fn record_commit(&self, stats: CheckpointStats) {
        self.committed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last) = Some(stats);
    }

    pub(crate) fn record_abort(&self) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_forced(&self) {
        self.forced.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_in_transit(&self) {
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_redelivered(&self, n: usize) {
        self.redelivered.fetch_add(n as u64, Ordering::Relaxed);
    }
}
