//! Named fail points: places in the protocol where a test can make the coordinator crash (or,
//! in `cohort serve`, stop).
//!
//! The in-process runtime and the coordinator service hit the same points (the core carries out
//! both). A crash stops every task of the coordinator at once, as a killed process would:
//! nothing after the fail point runs, nothing is cleaned up. The store then decides what the
//! crash left: a manifest exists, so the checkpoint committed; none does, so it aborted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Before phase 1 is sent to any object.
pub const PREPARE_BEFORE: &str = "prepare.before";
/// After phase 1 was sent to every participant.
pub const PREPARE_AFTER: &str = "prepare.after";
/// The states of a round are written but their segment is not finished (not durable).
pub const STATES_BEFORE_FINISH: &str = "states.before-finish";
/// The states' segment is durable but the votes are not reported.
pub const STATES_AFTER_FINISH: &str = "states.after-finish";
/// Every vote is in; the channel state is not sealed.
pub const COMMIT_BEFORE_SEAL: &str = "commit.before-seal";
/// Everything is durable; the manifest is not created.
pub const COMMIT_BEFORE_MANIFEST: &str = "commit.before-manifest";
/// The manifest exists (committed) but no participant was told.
pub const COMMIT_AFTER_MANIFEST: &str = "commit.after-manifest";
/// Participants were told the outcome.
pub const DECIDED_AFTER: &str = "decided.after";
/// An attempt aborted; its blobs are not discarded yet.
pub const DISCARD_BEFORE: &str = "discard.before";
/// Recovery read the line; nothing is restored yet.
pub const RECOVER_BEFORE_RESTORE: &str = "recover.before-restore";
/// Objects are restored; no fence manifest yet.
pub const RECOVER_BEFORE_FENCE: &str = "recover.before-fence";
/// The fence manifest exists; objects are not released yet.
pub const RECOVER_AFTER_FENCE: &str = "recover.after-fence";

/// Every fail point, in protocol order.
pub const ALL: &[&str] = &[
    PREPARE_BEFORE,
    PREPARE_AFTER,
    STATES_BEFORE_FINISH,
    STATES_AFTER_FINISH,
    COMMIT_BEFORE_SEAL,
    COMMIT_BEFORE_MANIFEST,
    COMMIT_AFTER_MANIFEST,
    DECIDED_AFTER,
    DISCARD_BEFORE,
    RECOVER_BEFORE_RESTORE,
    RECOVER_BEFORE_FENCE,
    RECOVER_AFTER_FENCE,
];

/// A set of armed fail points, shared with the cohort that was built with it. Cheap to clone.
///
/// ```
/// use cohort_coordinator::failpoint::{self, FailPoints};
///
/// let points = FailPoints::default();
/// points.crash_at(failpoint::COMMIT_BEFORE_MANIFEST, 2); // on its second hit
/// ```
#[derive(Clone, Debug, Default)]
pub struct FailPoints {
    inner: Arc<Mutex<HashMap<String, Point>>>,
}

#[derive(Debug, Default)]
struct Point {
    hits: u64,
    crash_on: Option<u64>,
}

/// The coordinator reached an armed fail point.
#[derive(Debug)]
pub(crate) struct Crash(pub(crate) String);

impl FailPoints {
    /// Arms `name` to crash on its `nth` hit from now (1 = the next one).
    pub fn crash_at(&self, name: &str, nth: u64) {
        let mut points = self.lock();
        let p = points.entry(name.to_owned()).or_default();
        p.crash_on = Some(p.hits + nth.max(1));
    }

    /// Disarms every point (hit counts stay).
    pub fn clear(&self) {
        for p in self.lock().values_mut() {
            p.crash_on = None;
        }
    }

    /// How often `name` was reached.
    pub fn hits(&self, name: &str) -> u64 {
        self.lock().get(name).map_or(0, |p| p.hits)
    }

    pub(crate) fn hit(&self, name: &str) -> Result<(), Crash> {
        let mut points = self.lock();
        let p = points.entry(name.to_owned()).or_default();
        p.hits += 1;
        if p.crash_on == Some(p.hits) {
            p.crash_on = None;
            tracing::warn!(fail_point = name, "crashing at fail point");
            return Err(Crash(name.to_owned()));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Point>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
