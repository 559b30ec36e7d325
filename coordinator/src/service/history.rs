//! What a coordinator remembers of its recent past, for people to look at: the last checkpoint
//! attempts (committed, aborted or failed, with the abort's reason, duration, bytes written and
//! the pause of every node) and a timeline of recoveries and leadership changes.
//!
//! [`ServiceMetrics`](super::metrics::ServiceMetrics) owns one [`History`] and feeds it from the
//! same calls that count for Prometheus, so the exposition and the history always describe the
//! same attempts. The dashboard of `cohort serve --http` reads it incrementally:
//! [`History::since`] returns what changed after a sequence number.
//!
//! Memory is bounded: two rings of fixed capacity ([`DEFAULT_ATTEMPTS`], [`DEFAULT_TIMELINE`]);
//! the oldest record goes when a new one comes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cohort_object_api::CheckpointId;
use serde::Serialize;

use super::leadership::Transition;
use cohort_object_api::Clock;

/// Checkpoint attempts kept by default: a few hundred, enough for a chart of the last minutes
/// at a checkpoint a second.
pub const DEFAULT_ATTEMPTS: usize = 500;

/// Timeline entries (recoveries, leadership changes) kept by default.
pub const DEFAULT_TIMELINE: usize = 200;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Its manifest was created: the checkpoint is committed.
    Committed,
    /// Aborted before the commit point (a no vote, a timeout, a lost node, a change of leader).
    Aborted,
    /// The commit point itself failed: the store refused or failed the manifest create, or a
    /// seal failed.
    Failed,
}

/// One checkpoint attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// When this record was written, in the history's sequence (see [`History::since`]).
    pub seq: u64,
    /// The checkpoint id; the retry of an aborted attempt has the same id.
    pub id: CheckpointId,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was aborted or failed.
    pub reason: Option<String>,
    /// When it ended, Unix milliseconds (the history's clock).
    pub ended_at_ms: u64,
    /// From the prepare to the decision, microseconds; unknown if no prepare was sent.
    pub duration_us: Option<u64>,
    /// Bytes the nodes wrote for it (states and in-transit messages).
    pub bytes: u64,
    /// The longest pause of any node, microseconds; `None` when no node reported one.
    pub longest_pause_us: Option<u64>,
    /// Per node that voted: the longest time one of its objects was held, microseconds.
    pub pauses_us: BTreeMap<String, u64>,
}

/// The first checkpoint committed after a recovery: the cohort is taking checkpoints again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NextCommit {
    /// Its id.
    pub id: CheckpointId,
    /// When it committed, Unix milliseconds.
    pub at_ms: u64,
}

/// What a timeline entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimelineKind {
    /// A cohort recovery started: every node rolls back to `line`.
    Recovery {
        /// Why, in words (the engine's [`RecoveryCause`](crate::engine::RecoveryCause)).
        cause: String,
        /// The recovery line (none: nothing was committed yet).
        line: Option<CheckpointId>,
        /// The nodes told to restore (or, on a takeover, expected to).
        restoring: Vec<String>,
        /// Filled in when the next checkpoint commits.
        next_commit: Option<NextCommit>,
    },
    /// This coordinator leads under `epoch`, having written `fence`.
    Leading {
        /// The epoch.
        epoch: u64,
        /// The fence's checkpoint id (none on a store without a committed line).
        fence: Option<CheckpointId>,
    },
    /// It could not start leading under `epoch`.
    LeadFailed {
        /// The epoch given up.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// It stopped leading under `epoch`.
    SteppedDown {
        /// The epoch given up.
        epoch: u64,
    },
    /// It stands by; the newest epoch is held by `holder` at `address`.
    Following {
        /// The newest epoch seen, if any.
        epoch: Option<u64>,
        /// Its holder.
        holder: Option<String>,
        /// Where its holder accepts nodes.
        address: Option<String>,
    },
    /// A commit was refused as fenced: a newer coordinator took over.
    Fenced {
        /// The epoch led when it happened, if still leading.
        leading: Option<u64>,
    },
    /// Objects failed more often than the restart policy allows: the cohort halted.
    Halted {
        /// The object whose failure went beyond the policy.
        object: String,
        /// Its error.
        error: String,
        /// The policy, in words.
        policy: String,
    },
}

/// One entry of the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TimelineEntry {
    /// Stable for the entry's life: a later change (a recovery's next commit) keeps it.
    pub id: u64,
    /// When it was written or last changed, in the history's sequence.
    pub seq: u64,
    /// When it happened, Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub what: TimelineKind,
}

/// Pause statistics of one node over the attempts kept, microseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PauseSummary {
    /// Samples: committed attempts the node voted in.
    pub samples: usize,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Longest.
    pub max_us: u64,
    /// The newest sample.
    pub last_us: u64,
}

/// What changed after a sequence number: see [`History::since`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct HistoryPage {
    /// When this history started, Unix milliseconds: a reader that sees it change (the process
    /// restarted) starts over.
    pub started_at_ms: u64,
    /// The newest sequence number; pass it to the next [`History::since`].
    pub seq: u64,
    /// How many attempts and timeline entries are kept: older ones are gone.
    pub capacity: Capacity,
    /// Attempts recorded after the asked sequence number, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Timeline entries written or changed after it, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// The sizes of the rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Attempts kept.
    pub attempts: usize,
    /// Timeline entries kept.
    pub timeline: usize,
}

/// The bounded history of one coordinator. Cheap to clone: clones share the records.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Rings>>,
    clock: Clock,
    started_at_ms: u64,
    capacity: Capacity,
}

#[derive(Default)]
struct Rings {
    seq: u64,
    next_entry: u64,
    attempts: VecDeque<AttemptRecord>,
    timeline: VecDeque<TimelineEntry>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rings = self.rings();
        f.debug_struct("History")
            .field("seq", &rings.seq)
            .field("attempts", &rings.attempts.len())
            .field("timeline", &rings.timeline.len())
            .finish()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl History {
    /// An empty history that keeps `attempts` attempts and `timeline` timeline entries (each at
    /// least 1), stamped by `clock` (Unix milliseconds).
    pub fn new(clock: Clock, attempts: usize, timeline: usize) -> Self {
        let started_at_ms = clock.wall_ms();
        Self {
            inner: Arc::new(Mutex::new(Rings::default())),
            clock,
            started_at_ms,
            capacity: Capacity {
                attempts: attempts.max(1),
                timeline: timeline.max(1),
            },
        }
    }

    fn rings(&self) -> MutexGuard<'_, Rings> {
        // A panic while holding the lock leaves whole records behind: keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an attempt that ended now. A commit also completes the newest recovery that has
    /// not seen one yet.
    pub fn record_attempt(
        &self,
        id: CheckpointId,
        outcome: Outcome,
        reason: Option<String>,
        duration: Option<Duration>,
        bytes: u64,
        pauses: &BTreeMap<String, Duration>,
    ) {
        let now = self.clock.wall_ms();
        let pauses_us: BTreeMap<String, u64> = pauses
            .iter()
            .map(|(node, pause)| (node.clone(), micros(*pause)))
            .collect();
        let mut rings = self.rings();
        rings.seq += 1;
        let seq = rings.seq;
        if outcome == Outcome::Committed {
            let newest_recovery = rings
                .timeline
                .iter_mut()
                .rev()
                .find(|e| matches!(e.what, TimelineKind::Recovery { .. }));
            if let Some(entry) = newest_recovery
                && let TimelineKind::Recovery { next_commit, .. } = &mut entry.what
                && next_commit.is_none()
            {
                *next_commit = Some(NextCommit { id, at_ms: now });
                entry.seq = seq;
            }
        }
        if rings.attempts.len() == self.capacity.attempts {
            rings.attempts.pop_front();
        }
        rings.attempts.push_back(AttemptRecord {
            seq,
            id,
            outcome,
            reason,
            ended_at_ms: now,
            duration_us: duration.map(micros),
            bytes,
            longest_pause_us: pauses_us.values().copied().max(),
            pauses_us,
        });
    }

    /// Records a cohort recovery that starts now.
    pub fn record_recovery(
        &self,
        cause: String,
        line: Option<CheckpointId>,
        restoring: Vec<String>,
    ) {
        self.push(TimelineKind::Recovery {
            cause,
            line,
            restoring,
            next_commit: None,
        });
    }

    /// Records that the cohort halted beyond its restart policy.
    pub fn record_halt(&self, halt: &crate::engine::Halt) {
        self.push(TimelineKind::Halted {
            object: halt.object.to_string(),
            error: halt.error.clone(),
            policy: halt.policy.to_string(),
        });
    }

    /// Records a leadership change reported by the driver (`leadership::drive`). A
    /// [`Transition::Retried`] is an attempt, recorded as such; it adds nothing here.
    pub fn record_transition(&self, transition: &Transition) {
        let what = match transition {
            Transition::Leading { epoch, fence } => TimelineKind::Leading {
                epoch: *epoch,
                fence: *fence,
            },
            Transition::LeadFailed { epoch, reason } => TimelineKind::LeadFailed {
                epoch: *epoch,
                reason: reason.clone(),
            },
            Transition::SteppedDown { epoch } => TimelineKind::SteppedDown { epoch: *epoch },
            Transition::Following { leader } => TimelineKind::Following {
                epoch: leader.as_ref().map(|r| r.epoch),
                holder: leader.as_ref().map(|r| r.holder.clone()),
                address: leader.as_ref().and_then(|r| r.address.clone()),
            },
            Transition::Fenced { leading } => TimelineKind::Fenced { leading: *leading },
            Transition::Retried { .. } => return,
        };
        self.push(what);
    }

    fn push(&self, what: TimelineKind) {
        let at_ms = self.clock.wall_ms();
        let mut rings = self.rings();
        rings.seq += 1;
        rings.next_entry += 1;
        let entry = TimelineEntry {
            id: rings.next_entry,
            seq: rings.seq,
            at_ms,
            what,
        };
        if rings.timeline.len() == self.capacity.timeline {
            rings.timeline.pop_front();
        }
        rings.timeline.push_back(entry);
    }

    /// Everything recorded or changed after sequence number `after` (0: everything kept).
    pub fn since(&self, after: u64) -> HistoryPage {
        let rings = self.rings();
        let mut timeline: Vec<TimelineEntry> = rings
            .timeline
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        timeline.sort_by_key(|e| e.seq);
        HistoryPage {
            started_at_ms: self.started_at_ms,
            seq: rings.seq,
            capacity: self.capacity,
            // Attempts are never changed once written, so they are in sequence order.
            attempts: rings
                .attempts
                .iter()
                .skip_while(|a| a.seq <= after)
                .cloned()
                .collect(),
            timeline,
        }
    }

    /// Per node, its pauses over the committed attempts kept.
    pub fn pauses(&self) -> BTreeMap<String, PauseSummary> {
        let rings = self.rings();
        let mut samples: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for attempt in rings
            .attempts
            .iter()
            .filter(|a| a.outcome == Outcome::Committed)
        {
            for (node, pause) in &attempt.pauses_us {
                samples.entry(node).or_default().push(*pause);
            }
        }
        samples
            .into_iter()
            .map(|(node, mut values)| {
                let last_us = values.last().copied().unwrap_or_default();
                values.sort_unstable();
                let rank = |q: f64| {
                    // Nearest rank: the smallest value with at least q of the samples at or
                    // below it.
                    let n = values.len();
                    let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
                    values[index]
                };
                let summary = PauseSummary {
                    samples: values.len(),
                    p50_us: rank(0.50),
                    p90_us: rank(0.90),
                    p99_us: rank(0.99),
                    max_us: values.last().copied().unwrap_or_default(),
                    last_us,
                };
                (node.to_owned(), summary)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use std::sync::atomic::{AtomicU64, Ordering};

    use cohort_checkpoint::EpochRecord;

    use super::*;

    /// A wall clock the test moves by hand.
    struct Hand(Arc<AtomicU64>);

    impl cohort_object_api::ClockSource for Hand {
        fn wall_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }

        fn random_u64(&self) -> u64 {
            4
        }
    }

    fn clock() -> (Clock, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_000));
        let hand = Hand(Arc::clone(&now));
        (Clock::from_source(Arc::new(hand)), now)
    }

    fn pauses(of: &[(&str, u64)]) -> BTreeMap<String, Duration> {
        of.iter()
            .map(|(n, us)| ((*n).to_owned(), Duration::from_micros(*us)))
            .collect()
    }

    #[test]
    fn attempts_keep_their_outcome_reason_and_pauses_and_the_ring_is_bounded() {
        let (clock, now) = clock();
        let history = History::new(clock, 3, 2);
        for i in 1..=4u64 {
            now.store(1_000 + i, Ordering::SeqCst);
            history.record_attempt(
                CheckpointId::new(i),
                Outcome::Committed,
                None,
                Some(Duration::from_millis(i)),
                i * 100,
                &pauses(&[("a", i * 10), ("b", 5)]),
            );
        }
        history.record_attempt(
            CheckpointId::new(5),
            Outcome::Aborted,
            Some("node b was lost".into()),
            None,
            0,
            &BTreeMap::new(),
        );
        let page = history.since(0);
        let ids: Vec<u64> = page.attempts.iter().map(|a| a.id.get()).collect();
        assert_eq!(ids, [3, 4, 5], "only the newest three are kept");
        let four = &page.attempts[1];
        assert_eq!(four.outcome, Outcome::Committed);
        assert_eq!(four.duration_us, Some(4_000));
        assert_eq!(four.bytes, 400);
        assert_eq!(four.ended_at_ms, 1_004);
        assert_eq!(four.longest_pause_us, Some(40));
        assert_eq!(four.pauses_us["b"], 5);
        let aborted = &page.attempts[2];
        assert_eq!(aborted.reason.as_deref(), Some("node b was lost"));
        assert_eq!(aborted.longest_pause_us, None);

        // Incremental reads return only what is newer.
        let after = history.since(page.seq);
        assert!(after.attempts.is_empty() && after.timeline.is_empty());
        let mid = history.since(page.attempts[0].seq);
        assert_eq!(mid.attempts.len(), 2);
    }

    #[test]
    fn a_recovery_is_completed_by_the_next_commit_and_read_again() {
        let (clock, now) = clock();
        let history = History::new(clock, 10, 10);
        history.record_recovery(
            "node n1 was lost".into(),
            Some(CheckpointId::new(7)),
            vec!["n2".into()],
        );
        let first = history.since(0);
        assert_eq!(first.timeline.len(), 1);
        let entry = first.timeline[0].clone();
        now.store(1_500, Ordering::SeqCst);
        history.record_attempt(
            CheckpointId::new(9),
            Outcome::Aborted,
            Some("x".into()),
            None,
            0,
            &BTreeMap::new(),
        );
        assert!(
            history.since(first.seq).timeline.is_empty(),
            "an abort completes nothing"
        );
        history.record_attempt(
            CheckpointId::new(9),
            Outcome::Committed,
            None,
            None,
            0,
            &BTreeMap::new(),
        );
        let second = history.since(first.seq);
        assert_eq!(second.timeline.len(), 1, "the changed entry is read again");
        let changed = &second.timeline[0];
        assert_eq!(changed.id, entry.id);
        assert!(changed.seq > entry.seq);
        let TimelineKind::Recovery { next_commit, .. } = &changed.what else {
            panic!("{changed:?}");
        };
        assert_eq!(
            *next_commit,
            Some(NextCommit {
                id: CheckpointId::new(9),
                at_ms: 1_500
            })
        );
        // A later commit leaves it as it was.
        history.record_attempt(
            CheckpointId::new(10),
            Outcome::Committed,
            None,
            None,
            0,
            &BTreeMap::new(),
        );
        assert!(history.since(second.seq).timeline.is_empty());
    }

    #[test]
    fn leadership_transitions_go_on_the_timeline_as_json() {
        let (clock, _) = clock();
        let history = History::new(clock, 10, 2);
        history.record_transition(&Transition::Following {
            leader: Some(EpochRecord {
                epoch: 3,
                holder: "a".into(),
                created_at_ms: 0,
                address: Some("10.0.0.1:7411".into()),
            }),
        });
        history.record_transition(&Transition::Retried {
            epoch: 4,
            id: CheckpointId::new(2),
        });
        history.record_transition(&Transition::Leading {
            epoch: 4,
            fence: Some(CheckpointId::new(2)),
        });
        history.record_transition(&Transition::SteppedDown { epoch: 4 });
        let page = history.since(0);
        assert_eq!(
            page.timeline.len(),
            2,
            "bounded, and Retried is not an entry"
        );
        let json = serde_json::to_value(&page.timeline).unwrap();
        assert_eq!(json[0]["kind"], "leading");
        assert_eq!(json[0]["epoch"], 4);
        assert_eq!(json[0]["fence"], 2);
        assert_eq!(json[1]["kind"], "stepped_down");
        let recovery = History::new(Clock::fixed(5), 1, 1);
        recovery.record_recovery("a coordinator took over".into(), None, vec![]);
        let json = serde_json::to_value(&recovery.since(0).timeline[0]).unwrap();
        assert_eq!(json["kind"], "recovery");
        assert_eq!(json["cause"], "a coordinator took over");
        assert!(json["next_commit"].is_null());
    }

    #[test]
    fn pause_percentiles_are_per_node_over_committed_attempts() {
        let (clock, _) = clock();
        let history = History::new(clock, 1_000, 1);
        for us in 1..=100u64 {
            history.record_attempt(
                CheckpointId::new(us),
                Outcome::Committed,
                None,
                None,
                0,
                &pauses(&[("a", us), ("b", 1_000)]),
            );
        }
        // An aborted attempt's pauses do not count.
        history.record_attempt(
            CheckpointId::new(101),
            Outcome::Aborted,
            None,
            None,
            0,
            &pauses(&[("a", 1_000_000)]),
        );
        let p = history.pauses();
        assert_eq!(
            p["a"],
            PauseSummary {
                samples: 100,
                p50_us: 50,
                p90_us: 90,
                p99_us: 99,
                max_us: 100,
                last_us: 100,
            }
        );
        assert_eq!(p["b"].p50_us, 1_000);
        assert_eq!(p["b"].samples, 100);
    }
}
