//! What runs one object on either side of the transport: its task ([`object`]) and the writer
//! of one attempt ([`writer`]). The in-process [`Cohort`](crate::Cohort) and a
//! [`Node`](crate::node::Node) run the same code; they differ only in their [`Host`] (where the
//! attempt in flight is found, how a handler resolves addresses, where health goes) and their
//! [`VoteSink`] (a channel to the in-process coordinator, or frames to a remote service).

pub(crate) mod mailbox;
pub(crate) mod metrics;
pub(crate) mod object;
pub(crate) mod restore;
pub(crate) mod writer;

use std::sync::Arc;

use cohort_checkpoint::{InTransitEntry, ObjectEntry};
use cohort_object_api::{CheckpointId, ObjectId};
use tokio::sync::mpsc;

use crate::engine::{Ballot, Round};
use crate::messaging::Directory;
use metrics::Metrics;
use writer::{WriterMsg, Written};

/// What a host may decide for one object without waking its task: minimal participation
/// (Koo–Toueg) under Lai–Yang colouring.
///
/// An object is **clean** when its state and message counters are those recorded for it in the
/// last committed line and it has handled nothing since. A clean object's vote is known
/// without asking it (unchanged, with those counters), so the host votes for it and marks the
/// round here instead of sending a prepare. The object adopts that round as its colour before
/// it next handles anything: its cut is where it stood, a message sent before the sender's cut
/// that reaches it afterwards is recorded as in transit (the Mattern counters make the attempt
/// wait for that record), and what it sends afterwards carries the new colour. The mutex
/// orders the two: either the host marks the round first and the object adopts it, or the
/// object handles a message first and is no longer clean, so it gets a prepare.
#[derive(Debug, Default)]
pub(crate) struct Participation {
    clean: bool,
    sent: u64,
    received: u64,
    /// The newest round the host counted the object in without waking it.
    implicit: Round,
}

/// One object's [`Participation`], shared by its task and its host.
pub(crate) type SharedParticipation = Arc<std::sync::Mutex<Participation>>;

/// Counts a clean object in `round` without waking it: its counters (sent, received), or
/// `None` if it must be asked.
pub(crate) fn vote_unwoken(
    participation: &SharedParticipation,
    round: Round,
) -> Option<(u64, u64)> {
    let mut p = lock(participation);
    if !p.clean {
        return None;
    }
    p.implicit = p.implicit.max(round);
    Some((p.sent, p.received))
}

/// The clean participants a host counted in a round without waking them
/// ([`vote_unwoken`]): reported to the engine in one [`Event::Clean`](crate::engine::Event::Clean)
/// per host, so that idle objects cost it nothing each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CleanCount {
    /// How many.
    pub(crate) objects: usize,
    /// Their messages sent minus received.
    pub(crate) balance: i128,
}

impl CleanCount {
    /// Counts `participation` in `round` if it is clean; `false`: it must be asked.
    pub(crate) fn count(&mut self, participation: &SharedParticipation, round: Round) -> bool {
        match vote_unwoken(participation, round) {
            Some((sent, received)) => {
                self.objects += 1;
                self.balance += i128::from(sent) - i128::from(received);
                true
            }
            None => false,
        }
    }
}

/// The attempt in flight, as objects see it.
#[derive(Clone)]
pub(crate) struct ActiveRound {
    pub(crate) id: CheckpointId,
    pub(crate) round: Round,
    /// The attempt's writer: captured states, no votes and in-transit messages go there.
    pub(crate) writer: mpsc::UnboundedSender<WriterMsg>,
}

/// Where object tasks live: the in-process cohort or a node. Its [`Directory`] is where
/// handlers find the other members.
pub(crate) trait Host: Directory + Send + Sync + 'static {
    /// The attempt in flight.
    fn active(&self) -> Option<ActiveRound>;

    /// Pause, forced-capture and in-transit counts.
    fn metrics(&self) -> &Metrics;

    /// An object's handler failed with `error` (`Some`), or a restore healed it (`None`).
    fn object_failed(&self, object: &ObjectId, error: Option<&str>);

    /// An object's task started (or resumed from parking): a host that stops its tasks by
    /// aborting them keeps the handle.
    fn track(&self, _task: tokio::task::AbortHandle) {}
}

/// Where a writer's results go.
pub(crate) trait VoteSink: Send + Sync + 'static {
    /// Every participant voted yes and their states are durable.
    fn votes(&self, round: Round, ballots: Vec<(ObjectId, Ballot<ObjectEntry>)>, written: Written);

    /// One participant votes no: the attempt cannot commit.
    fn refused(&self, round: Round, object: ObjectId, reason: String);

    /// An in-transit message was written as channel state.
    fn in_transit(&self, round: Round, entry: InTransitEntry);

    /// A named fail point: `true` means the host crashed there and the writer must stop.
    fn crash_at(&self, _point: &str) -> bool {
        false
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a plain assignment or collection update).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks an `RwLock` whose data stays consistent even if a holder panicked.
pub(crate) fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks an `RwLock` whose data stays consistent even if a holder panicked.
pub(crate) fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// For each key of `keys` (ascending), the value of `map` under it: one merge of two sorted
/// sequences, instead of a tree search per key (100,000 string comparisons chains add up).
/// A few keys in a large map are searched instead: the merge would walk the whole map.
pub(crate) fn sorted_lookup<'k, 'm, K: Ord, V>(
    keys: &'k [K],
    map: &'m std::collections::BTreeMap<K, V>,
) -> impl Iterator<Item = (&'k K, Option<&'m V>)> {
    let search = keys.len().saturating_mul(map.len().max(2).ilog2() as usize) < map.len();
    let mut entries = map.iter().peekable();
    let mut last: Option<&'k K> = None;
    keys.iter().map(move |k| {
        if search || last.is_some_and(|l| l > k) {
            // Not ascending (never the case for ids from the engine): search.
            return (k, map.get(k));
        }
        last = Some(k);
        while entries.next_if(|(m, _)| *m < k).is_some() {}
        match entries.peek() {
            Some((m, v)) if *m == k => (k, Some(*v)),
            _ => (k, None),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn sorted_lookup_matches_get() {
        let map: BTreeMap<u32, u32> = [(1, 10), (3, 30), (4, 40), (9, 90)].into();
        let keys = [0, 1, 2, 3, 4, 5, 9, 10];
        let merged: Vec<_> = sorted_lookup(&keys, &map)
            .map(|(k, v)| (*k, v.copied()))
            .collect();
        let searched: Vec<_> = keys.iter().map(|k| (*k, map.get(k).copied())).collect();
        assert_eq!(merged, searched);
        // Keys out of order still find their values.
        let keys = [9, 1, 4];
        let merged: Vec<_> = sorted_lookup(&keys, &map)
            .map(|(_, v)| v.copied())
            .collect();
        assert_eq!(merged, vec![Some(90), Some(10), Some(40)]);
        // A few keys in a large map: searched, same answers.
        let map: BTreeMap<u32, u32> = (0..1000).map(|k| (k * 2, k)).collect();
        let keys = [3, 500, 1998, 2000];
        let found: Vec<_> = sorted_lookup(&keys, &map)
            .map(|(_, v)| v.copied())
            .collect();
        assert_eq!(found, vec![None, Some(250), Some(999), None]);
    }
}
