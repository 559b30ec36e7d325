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
///
/// // What `cohort serve` reads from COHORT_FAIL_POINTS:
/// let points = FailPoints::parse("commit.before-manifest=stop@5,decided.after=crash").unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct FailPoints {
    inner: Arc<Mutex<HashMap<String, Point>>>,
}

/// What an armed fail point does when it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The coordinator stops at once, as a killed process would.
    Crash,
    /// The whole process stops itself (SIGSTOP), as a paused one would, and goes on from the
    /// point when it is continued (SIGCONT): a leader paused past its lease.
    Stop,
}

#[derive(Debug, Default)]
struct Point {
    hits: u64,
    armed: Option<(u64, Action)>,
}

/// The coordinator reached an armed fail point.
#[derive(Debug)]
pub(crate) struct Crash(pub(crate) String);

/// The variable `cohort serve` arms its fail points from: [`FailPoints::parse`]'s syntax. For
/// fault-injection tests and drills only.
pub const FAIL_POINTS_ENV: &str = "COHORT_FAIL_POINTS";

impl FailPoints {
    /// Arms `name` to crash on its `nth` hit from now (1 = the next one).
    pub fn crash_at(&self, name: &str, nth: u64) {
        self.arm(name, nth, Action::Crash);
    }

    /// Arms `name` to do `action` on its `nth` hit from now (1 = the next one).
    pub fn arm(&self, name: &str, nth: u64, action: Action) {
        let mut points = self.lock();
        let p = points.entry(name.to_owned()).or_default();
        p.armed = Some((p.hits + nth.max(1), action));
    }

    /// Fail points from a spec: comma-separated `point=action[@n]`, where `point` is one of
    /// [`ALL`], `action` is `crash` or `stop`, and `n` (default 1) is the hit it fires on.
    ///
    /// # Errors
    ///
    /// What is wrong with the spec, naming the valid points and actions.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let points = Self::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, rest) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: expected point=action[@n], e.g. commit.before-manifest=stop@3")
            })?;
            if !ALL.contains(&name) {
                return Err(format!(
                    "{name:?} is not a fail point; the points are: {}",
                    ALL.join(", ")
                ));
            }
            let (action, nth) = match rest.split_once('@') {
                Some((action, nth)) => (
                    action,
                    nth.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("{part:?}: the hit after @ must be a number from 1")
                    })?,
                ),
                None => (rest, 1),
            };
            let action = match action {
                "crash" => Action::Crash,
                "stop" => Action::Stop,
                other => return Err(format!("{other:?} is not an action; use crash or stop")),
            };
            points.arm(name, nth, action);
        }
        Ok(points)
    }

    /// Disarms every point (hit counts stay).
    pub fn clear(&self) {
        for p in self.lock().values_mut() {
            p.armed = None;
        }
    }

    /// How often `name` was reached.
    pub fn hits(&self, name: &str) -> u64 {
        self.lock().get(name).map_or(0, |p| p.hits)
    }

    pub(crate) fn hit(&self, name: &str) -> Result<(), Crash> {
        let action = {
            let mut points = self.lock();
            let p = points.entry(name.to_owned()).or_default();
            p.hits += 1;
            match p.armed {
                Some((on, action)) if on == p.hits => {
                    p.armed = None;
                    action
                }
                _ => return Ok(()),
            }
        };
        match action {
            Action::Crash => {
                tracing::warn!(fail_point = name, "crashing at fail point");
                Err(Crash(name.to_owned()))
            }
            Action::Stop => {
                tracing::warn!(
                    fail_point = name,
                    "stopping this process (SIGSTOP) at fail point"
                );
                stop_process();
                tracing::warn!(fail_point = name, "continued after the fail point");
                Ok(())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Point>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stops the whole process until it is continued.
#[cfg(unix)]
fn stop_process() {
    if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP) {
        tracing::error!(error = %e, "cannot stop this process at a fail point");
    }
}

#[cfg(not(unix))]
fn stop_process() {
    tracing::error!("stopping at a fail point needs a unix system");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_arms_points_and_names_its_mistakes() {
        let points =
            FailPoints::parse("commit.before-manifest=crash@2, decided.after=crash").unwrap();
        assert!(points.hit(COMMIT_BEFORE_MANIFEST).is_ok());
        assert!(points.hit(COMMIT_BEFORE_MANIFEST).is_err());
        assert!(points.hit(COMMIT_BEFORE_MANIFEST).is_ok(), "fires once");
        assert!(points.hit(DECIDED_AFTER).is_err());
        for (spec, says) in [
            ("nowhere=crash", "is not a fail point"),
            ("decided.after=explode", "is not an action"),
            ("decided.after=crash@0", "from 1"),
            ("decided.after", "expected point=action"),
        ] {
            let err = FailPoints::parse(spec).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
        assert!(FailPoints::parse("").is_ok());
    }
}
