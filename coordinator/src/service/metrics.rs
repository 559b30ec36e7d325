//! What a coordinator service exposes to Prometheus: checkpoint duration, size and pause,
//! counts of committed, aborted and failed checkpoints, recoveries, and the leader epoch; and
//! the [`History`] of its recent attempts and recoveries, fed by the same calls.
//!
//! The exposition is the OpenMetrics text format, written by the `prometheus-client` crate
//! ([`ServiceMetrics::render`]); `cohort serve --http` serves it at `/metrics` as
//! [`CONTENT_TYPE`], which Prometheus negotiates and parses.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cohort_object_api::CheckpointId;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::history::{self, History, Outcome};
use super::leadership::Transition;
use cohort_object_api::Clock;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics of one coordinator service. Cheap to clone: clones share the values.
#[derive(Clone)]
pub struct ServiceMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    duration: Histogram,
    size: Histogram,
    pause: Histogram,
    committed: Counter,
    aborted: Counter,
    failed: Counter,
    recoveries: Counter,
    restarts: Counter,
    halted: Family<Vec<(String, String)>, Gauge>,
    leader_epoch: Gauge,
    leading: Gauge,
    /// For [`MetricsSnapshot`]: the histograms do not expose their sums outside tests.
    duration_sum_us: AtomicU64,
    size_sum: AtomicU64,
    pauses: AtomicU64,
    history: History,
}

impl fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceMetrics")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The counters and gauges at one moment, for `cohort status` and summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Checkpoints committed by this process.
    pub committed: u64,
    /// Attempts aborted before the commit point (a no vote, a timeout, a lost node, a change
    /// of leader).
    pub aborted: u64,
    /// Attempts whose commit point failed (the store refused or did not answer).
    pub failed: u64,
    /// Cohort recoveries run.
    pub recoveries: u64,
    /// The epoch this process leads under; 0 when it does not lead.
    pub leader_epoch: u64,
    /// Sum of the committed checkpoints' durations.
    pub duration_sum: Duration,
    /// Sum of the committed checkpoints' sizes, bytes.
    pub size_sum_bytes: u64,
    /// Pause samples recorded.
    pub pauses: u64,
}

impl ServiceMetrics {
    /// Fresh metrics, every value zero, with a history of the default size stamped by the
    /// system clock.
    pub fn new() -> Self {
        Self::with_history(History::new(
            Clock::system(),
            history::DEFAULT_ATTEMPTS,
            history::DEFAULT_TIMELINE,
        ))
    }

    /// Fresh metrics that feed `history`.
    pub fn with_history(history: History) -> Self {
        let mut registry = Registry::default();
        // 1 ms to ~65 s, doubling.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        // 1 KiB to 64 GiB, times 4.
        let size = Histogram::new(exponential_buckets(1024.0, 4.0, 14));
        // 10 µs to ~20 s, doubling.
        let pause = Histogram::new(exponential_buckets(0.000_01, 2.0, 21));
        let committed = Counter::default();
        let aborted = Counter::default();
        let failed = Counter::default();
        let recoveries = Counter::default();
        let restarts = Counter::default();
        let halted = Family::<Vec<(String, String)>, Gauge>::default();
        let leader_epoch = Gauge::default();
        let leading = Gauge::default();
        registry.register_with_unit(
            "cohort_checkpoint_duration",
            "Time from prepare to the commit point of committed checkpoints",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register_with_unit(
            "cohort_checkpoint_size",
            "Bytes of state written by committed checkpoints (unchanged objects are referenced, not written)",
            Unit::Bytes,
            size.clone(),
        );
        registry.register_with_unit(
            "cohort_checkpoint_pause",
            "Longest time one object of a node was held from handling messages by a committed checkpoint (prepare and capture); one sample per node per checkpoint",
            Unit::Seconds,
            pause.clone(),
        );
        registry.register(
            "cohort_checkpoints_committed",
            "Checkpoints committed",
            committed.clone(),
        );
        registry.register(
            "cohort_checkpoints_aborted",
            "Checkpoint attempts aborted before the commit point",
            aborted.clone(),
        );
        registry.register(
            "cohort_checkpoints_failed",
            "Checkpoint attempts whose commit point failed in the store",
            failed.clone(),
        );
        registry.register(
            "cohort_recoveries",
            "Cohort recoveries to the recovery line",
            recoveries.clone(),
        );
        registry.register(
            "cohort_object_restarts",
            "Cohort recoveries started by the restart policy after an object failed",
            restarts.clone(),
        );
        registry.register(
            "cohort_halted",
            "1 while the cohort is halted beyond its restart policy, labelled with the failed object, its error and the policy",
            halted.clone(),
        );
        registry.register(
            "cohort_leader_epoch",
            "The epoch this coordinator leads under, 0 when it is a standby",
            leader_epoch.clone(),
        );
        registry.register(
            "cohort_leader",
            "1 when this coordinator leads, 0 when it is a standby",
            leading.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                duration,
                size,
                pause,
                committed,
                aborted,
                failed,
                recoveries,
                restarts,
                halted,
                leader_epoch,
                leading,
                duration_sum_us: AtomicU64::new(0),
                size_sum: AtomicU64::new(0),
                pauses: AtomicU64::new(0),
                history,
            }),
        }
    }

    /// Records checkpoint `id` committed, with how long it took and how many bytes it wrote
    /// when they are known (an unknown one is left out of its histogram), and the pause of
    /// every node that voted (one sample each: the longest of its objects).
    pub fn record_committed(
        &self,
        id: CheckpointId,
        duration: Option<Duration>,
        bytes: Option<u64>,
        pauses: &BTreeMap<String, Duration>,
    ) {
        let i = &self.inner;
        i.committed.inc();
        if let Some(duration) = duration {
            i.duration.observe(duration.as_secs_f64());
            let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            i.duration_sum_us.fetch_add(us, Ordering::Relaxed);
        }
        if let Some(bytes) = bytes {
            i.size.observe(bytes as f64);
            i.size_sum.fetch_add(bytes, Ordering::Relaxed);
        }
        for pause in pauses.values() {
            i.pause.observe(pause.as_secs_f64());
            i.pauses.fetch_add(1, Ordering::Relaxed);
        }
        i.history.record_attempt(
            id,
            Outcome::Committed,
            None,
            duration,
            bytes.unwrap_or(0),
            pauses,
        );
    }

    /// Records an attempt at checkpoint `id` aborted before the commit point, and why. Its
    /// duration, bytes and pauses go to the history only.
    pub fn record_aborted(
        &self,
        id: CheckpointId,
        reason: &impl fmt::Display,
        duration: Option<Duration>,
        bytes: u64,
        pauses: &BTreeMap<String, Duration>,
    ) {
        self.inner.aborted.inc();
        self.inner.history.record_attempt(
            id,
            Outcome::Aborted,
            Some(reason.to_string()),
            duration,
            bytes,
            pauses,
        );
    }

    /// Records an attempt at checkpoint `id` whose commit point failed, and why.
    pub fn record_failed(
        &self,
        id: CheckpointId,
        reason: &impl fmt::Display,
        duration: Option<Duration>,
        bytes: u64,
        pauses: &BTreeMap<String, Duration>,
    ) {
        self.inner.failed.inc();
        self.inner.history.record_attempt(
            id,
            Outcome::Failed,
            Some(reason.to_string()),
            duration,
            bytes,
            pauses,
        );
    }

    /// Records a cohort recovery that starts now: why, to which line, and the nodes that
    /// restore.
    pub fn record_recovery(
        &self,
        cause: &crate::engine::RecoveryCause,
        line: Option<CheckpointId>,
        restoring: impl IntoIterator<Item = impl Into<String>>,
    ) {
        self.inner.recoveries.inc();
        if matches!(cause, crate::engine::RecoveryCause::ObjectFailed { .. }) {
            self.inner.restarts.inc();
        }
        // A recovery ends a halt.
        self.inner.halted.clear();
        self.inner.history.record_recovery(
            cause.to_string(),
            line,
            restoring.into_iter().map(Into::into).collect(),
        );
    }

    /// Records that the cohort halted beyond its restart policy: `cohort_halted` names the
    /// object, its error and the policy until the next recovery.
    pub fn record_halt(&self, halt: &crate::engine::Halt) {
        self.inner.halted.clear();
        self.inner
            .halted
            .get_or_create(&vec![
                ("object".to_owned(), halt.object.to_string()),
                ("error".to_owned(), halt.error.clone()),
                ("policy".to_owned(), halt.policy.to_string()),
            ])
            .set(1);
        self.inner.history.record_halt(halt);
    }

    /// Records a leadership change: the leader gauges follow it, and it goes on the
    /// history's timeline.
    pub fn record_transition(&self, transition: &Transition) {
        match transition {
            Transition::Leading { epoch, .. } => self.set_leader(Some(*epoch)),
            Transition::SteppedDown { .. } => self.set_leader(None),
            _ => {}
        }
        self.inner.history.record_transition(transition);
    }

    /// The history these metrics feed.
    pub fn history(&self) -> &History {
        &self.inner.history
    }

    /// Sets the epoch led under, or `None` for a standby.
    pub fn set_leader(&self, epoch: Option<u64>) {
        let i = &self.inner;
        i.leader_epoch
            .set(epoch.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)));
        i.leading.set(i64::from(epoch.is_some()));
    }

    /// The values now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let i = &self.inner;
        MetricsSnapshot {
            committed: i.committed.get(),
            aborted: i.aborted.get(),
            failed: i.failed.get(),
            recoveries: i.recoveries.get(),
            leader_epoch: u64::try_from(i.leader_epoch.get()).unwrap_or(0),
            duration_sum: Duration::from_micros(i.duration_sum_us.load(Ordering::Relaxed)),
            size_sum_bytes: i.size_sum.load(Ordering::Relaxed),
            pauses: i.pauses.load(Ordering::Relaxed),
        }
    }

    /// The exposition in the OpenMetrics text format, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail, and every registered metric encodes.
        if let Err(e) = encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = ServiceMetrics::new();
        let none = BTreeMap::new();
        let one_pause = BTreeMap::from([("n1".to_owned(), Duration::from_micros(250))]);
        let id = CheckpointId::new(1);
        m.record_committed(id, Some(Duration::from_millis(12)), Some(4096), &one_pause);
        m.record_committed(id, Some(Duration::from_millis(30)), Some(0), &none);
        m.record_committed(id, None, None, &none);
        m.record_aborted(id, &"a no vote", None, 0, &none);
        m.record_failed(id, &"the store failed", None, 0, &none);
        m.record_recovery(
            &crate::engine::RecoveryCause::HostDead {
                host: crate::engine::HostId::new("n1"),
                moved: 0,
            },
            Some(id),
            ["n2"],
        );
        m.set_leader(Some(7));
        let text = m.render();
        for line in [
            "# TYPE cohort_checkpoint_duration_seconds histogram",
            "cohort_checkpoint_duration_seconds_count 2",
            "cohort_checkpoint_size_bytes_sum 4096.0",
            "cohort_checkpoint_pause_seconds_count 1",
            "cohort_checkpoints_committed_total 3",
            "cohort_checkpoints_aborted_total 1",
            "cohort_checkpoints_failed_total 1",
            "cohort_recoveries_total 1",
            "cohort_leader_epoch 7",
            "cohort_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        let s = m.snapshot();
        assert_eq!(
            (
                s.committed,
                s.aborted,
                s.failed,
                s.recoveries,
                s.leader_epoch
            ),
            (3, 1, 1, 1, 7)
        );
        m.set_leader(None);
        assert!(m.render().lines().any(|l| l == "cohort_leader 0"));

        // The history saw the same attempts, in order, with the reasons.
        let page = m.history().since(0);
        let outcomes: Vec<Outcome> = page.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Committed,
                Outcome::Committed,
                Outcome::Committed,
                Outcome::Aborted,
                Outcome::Failed
            ]
        );
        assert_eq!(page.attempts[0].pauses_us["n1"], 250);
        assert_eq!(page.attempts[4].reason.as_deref(), Some("the store failed"));
        assert_eq!(page.timeline.len(), 1);

        // A leadership change moves the gauges and goes on the timeline.
        m.record_transition(&Transition::Leading {
            epoch: 9,
            fence: None,
        });
        assert!(m.render().lines().any(|l| l == "cohort_leader_epoch 9"));
        m.record_transition(&Transition::SteppedDown { epoch: 9 });
        assert!(m.render().lines().any(|l| l == "cohort_leader 0"));
        assert_eq!(m.history().since(page.seq).timeline.len(), 2);
    }
}
