//! What the dashboard shows from the store: whether it answers, the newest epoch and its lease,
//! the retained checkpoints, the pins and the recovery line.
//!
//! A background task reads it every [`REFRESH`] while someone looks (an API request in the last
//! [`IDLE_AFTER`]), so an unwatched dashboard costs the store nothing. Each read is bounded by
//! [`STORE_TIMEOUT`]; a failed or slow one marks the store unreachable, with the error, and the
//! last good view stays shown with its time. Manifests are immutable, so each retained one is
//! read once. The recovery line (the newest checkpoint whose blobs all verify) reads every
//! blob of the newest checkpoints, so it is verified again only when a newer checkpoint was
//! committed and [`VERIFY_EVERY`] has passed.

use cohort_object_api::Clock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, Error as StoreError};
use cohort_object_api::CheckpointId;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::status::{NewestLine, StoreFacts};

/// How often the store is read while someone looks.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// Reading stops this long after the last API request.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(15);

/// A store read slower than this counts as unreachable.
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The recovery line is verified again at most this often.
pub(crate) const VERIFY_EVERY: Duration = Duration::from_secs(10);

/// How many of the newest retained checkpoints are listed with their details.
pub(crate) const RETAINED_SHOWN: usize = 50;

/// The store as last read: `/api/checkpoints`.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct StoreView {
    /// The store's URL.
    pub(crate) url: String,
    /// `None` until the first read ended.
    pub(crate) reachable: Option<bool>,
    /// Why the last read failed.
    pub(crate) error: Option<String>,
    /// When the store was last read (Unix ms), and when a read last succeeded.
    pub(crate) checked_at_ms: Option<u64>,
    pub(crate) ok_at_ms: Option<u64>,
    /// Committed checkpoints in the store (GC's tombstones left out).
    pub(crate) retained_total: usize,
    /// The newest [`RETAINED_SHOWN`] of them, newest first.
    pub(crate) retained: Vec<Retained>,
    /// Pinned checkpoints (GC keeps them).
    pub(crate) pins: Vec<CheckpointId>,
    /// The recovery line as last verified.
    pub(crate) recovery_line: Option<LineView>,
}

/// One retained checkpoint.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Retained {
    pub(crate) id: CheckpointId,
    /// `checkpoint`, `fence`, `rollback`; `unreadable` when its manifest could not be read.
    pub(crate) kind: &'static str,
    pub(crate) epoch: Option<u64>,
    pub(crate) created_at_ms: Option<u64>,
    pub(crate) objects: Option<usize>,
    pub(crate) in_transit: Option<usize>,
    /// Bytes of the states it references (its own and older segments').
    pub(crate) bytes: Option<u64>,
    pub(crate) pinned: bool,
    /// Why its manifest could not be read.
    pub(crate) problem: Option<String>,
}

/// The recovery line.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LineView {
    /// Its checkpoint; `None` when no committed checkpoint verifies.
    pub(crate) id: Option<CheckpointId>,
    /// When it was verified (Unix ms), and the newest checkpoint then.
    pub(crate) verified_at_ms: u64,
    pub(crate) newest_then: Option<CheckpointId>,
    /// Newer checkpoints skipped as damaged, with what is damaged.
    pub(crate) skipped: Vec<Skipped>,
    /// Why it could not be found (a checkpoint of a newer format, the store failing).
    pub(crate) error: Option<String>,
}

/// A damaged checkpoint skipped on the way to the line.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Skipped {
    pub(crate) id: CheckpointId,
    pub(crate) damage: String,
}

/// Reads the store for the dashboard. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StoreWatch {
    store: CheckpointStore,
    shared: Arc<Shared>,
    clock: Clock,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    read_once: Notify,
}

#[derive(Default)]
struct State {
    view: StoreView,
    facts: Option<StoreFacts>,
    last_request: Option<Instant>,
    /// Summaries of manifests already read, by id.
    summaries: BTreeMap<CheckpointId, Retained>,
    verified_at: Option<Instant>,
}

impl StoreWatch {
    /// A watch of `store`; [`run`](Self::run) reads it.
    pub(crate) fn new(store: CheckpointStore, clock: Clock) -> Self {
        let view = StoreView {
            url: store.url().to_owned(),
            ..StoreView::default()
        };
        Self {
            store,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    view,
                    ..State::default()
                }),
                wake: Notify::new(),
                read_once: Notify::new(),
            }),
            clock,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The view and the `cohort status` facts as last read. Counts as someone looking; the
    /// first call waits (up to [`STORE_TIMEOUT`]) for the first read.
    pub(crate) async fn current(&self) -> (StoreView, Option<StoreFacts>) {
        let first = {
            let mut state = self.state();
            state.last_request = Some(Instant::now());
            state.view.reachable.is_none()
        };
        self.shared.wake.notify_one();
        if first {
            let read = self.shared.read_once.notified();
            let _ = tokio::time::timeout(STORE_TIMEOUT, read).await;
        }
        let state = self.state();
        (state.view.clone(), state.facts.clone())
    }

    /// Reads the store every [`REFRESH`] while someone looks, until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            let looked = self.state().last_request;
            let watched = looked.is_some_and(|at| at.elapsed() < IDLE_AFTER);
            if !watched {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.shared.wake.notified() => continue,
                }
            }
            self.refresh().await;
            self.shared.read_once.notify_waiters();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
        }
    }

    /// One read of the store.
    pub(crate) async fn refresh(&self) {
        let now_ms = self.clock.wall_ms();
        let read = tokio::time::timeout(STORE_TIMEOUT, self.read()).await;
        let outcome = match read {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!(
                "the store did not answer within {}",
                humantime::format_duration(STORE_TIMEOUT)
            )),
        };
        let verify = {
            let mut state = self.state();
            state.view.checked_at_ms = Some(now_ms);
            match outcome {
                Ok(read) => {
                    state.view.reachable = Some(true);
                    state.view.error = None;
                    state.view.ok_at_ms = Some(now_ms);
                    state.view.retained_total = read.ids.len();
                    state.view.pins.clone_from(&read.pins);
                    state.facts = Some(read.facts);
                    let shown: Vec<CheckpointId> = read
                        .ids
                        .iter()
                        .rev()
                        .take(RETAINED_SHOWN)
                        .copied()
                        .collect();
                    state.summaries.retain(|id, _| shown.contains(id));
                    for r in read.summaries {
                        state.summaries.insert(r.id, r);
                    }
                    state.view.retained = shown
                        .iter()
                        .filter_map(|id| state.summaries.get(id).cloned())
                        .map(|mut r| {
                            r.pinned = read.pins.contains(&r.id);
                            r
                        })
                        .collect();
                    let newest = read.ids.last().copied();
                    let stale = state
                        .view
                        .recovery_line
                        .as_ref()
                        .is_none_or(|l| l.newest_then != newest);
                    let due = state
                        .verified_at
                        .is_none_or(|at| at.elapsed() >= VERIFY_EVERY);
                    stale && due
                }
                Err(error) => {
                    tracing::warn!(store = %self.store.url(), %error, "the dashboard cannot read the store");
                    state.view.reachable = Some(false);
                    state.view.error = Some(error);
                    false
                }
            }
        };
        if verify {
            self.verify_line().await;
        }
    }

    async fn verify_line(&self) {
        self.state().verified_at = Some(Instant::now());
        let started_ms = self.clock.wall_ms();
        let newest = self
            .store
            .committed_ids()
            .await
            .ok()
            .and_then(|ids| ids.last().copied());
        let line = tokio::time::timeout(STORE_TIMEOUT * 4, self.store.recovery_line()).await;
        let view = match line {
            Ok(Ok(line)) => LineView {
                id: line.as_ref().map(|l| l.manifest.id),
                verified_at_ms: started_ms,
                newest_then: newest,
                skipped: line
                    .iter()
                    .flat_map(|l| &l.skipped)
                    .map(|r| Skipped {
                        id: r.checkpoint,
                        damage: r
                            .damaged
                            .first()
                            .map(crate::cli::store::damage_text)
                            .unwrap_or_default(),
                    })
                    .collect(),
                error: None,
            },
            Ok(Err(e)) => LineView {
                id: None,
                verified_at_ms: started_ms,
                newest_then: newest,
                skipped: Vec::new(),
                error: Some(e.to_string()),
            },
            Err(_) => LineView {
                id: None,
                verified_at_ms: started_ms,
                newest_then: newest,
                skipped: Vec::new(),
                error: Some("verifying the recovery line took too long".into()),
            },
        };
        self.state().view.recovery_line = Some(view);
    }

    async fn read(&self) -> anyhow::Result<Read> {
        let mut facts = StoreFacts::read_epoch(&self.store).await?;
        let ids = self.store.committed_ids().await?;
        let pins = self.store.pins().await?;
        let (known, newest): (Vec<CheckpointId>, _) = {
            let state = self.state();
            let newest = state.facts.as_ref().and_then(|f| f.newest.clone());
            (state.summaries.keys().copied().collect(), newest)
        };
        // The newest line is read once per new checkpoint, with its summary.
        facts.newest = newest.filter(|n| Some(n.id()) == ids.last().copied());
        let mut summaries = Vec::new();
        for &id in ids.iter().rev().take(RETAINED_SHOWN) {
            let is_newest = Some(id) == ids.last().copied();
            if known.contains(&id) && (!is_newest || facts.newest.is_some()) {
                continue;
            }
            summaries.push(match self.store.read_manifest(id).await {
                Ok(m) => {
                    if is_newest {
                        facts.newest = Some(NewestLine::of(&m));
                    }
                    Retained {
                        id,
                        kind: crate::cli::store::kind_name(&m.kind),
                        epoch: Some(m.epoch),
                        created_at_ms: Some(m.created_at_ms),
                        objects: Some(m.objects.len()),
                        in_transit: Some(m.in_transit.len()),
                        bytes: Some(m.referenced_bytes()),
                        pinned: false,
                        problem: None,
                    }
                }
                // A damaged or newer manifest is shown as such; the store still answers.
                Err(e @ (StoreError::Damaged { .. } | StoreError::FutureFormat { .. })) => {
                    Retained {
                        id,
                        kind: "unreadable",
                        epoch: None,
                        created_at_ms: None,
                        objects: None,
                        in_transit: None,
                        bytes: None,
                        pinned: false,
                        problem: Some(e.to_string()),
                    }
                }
                Err(e) => return Err(e.into()),
            });
        }
        Ok(Read {
            facts,
            ids,
            pins,
            summaries,
        })
    }
}

struct Read {
    facts: StoreFacts,
    ids: Vec<CheckpointId>,
    pins: Vec<CheckpointId>,
    summaries: Vec<Retained>,
}
