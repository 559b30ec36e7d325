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
/// without asking it (unchanged, with those counters), so the host counts it in a round
/// instead of sending a prepare. The object adopts that round as its colour before it next
/// handles anything: its cut is where it stood, a message sent before the sender's cut that
/// reaches it afterwards is recorded as in transit (the Mattern counters make the attempt wait
/// for that record), and what it sends afterwards carries the new colour. The host's
/// [`Tally`] lock orders the two: either the host counts the round first and the object adopts
/// it, or the object stops being clean first, so it gets a prepare.
#[derive(Debug, Default)]
pub(crate) struct Participation {
    clean: bool,
    sent: u64,
    received: u64,
    /// The host's [`Tally`] scan count when the object last became clean (or was restored):
    /// the scans after it counted the object in without waking it.
    clean_since: u64,
    /// The [`Tally::scan_all`] that last saw the object among the participants: only then do
    /// its changes count in the tally (a task dropped from the table may still run a while).
    tallied: u64,
    /// The newest round a scan of an earlier [`Tally::scan_all`] counted the object in, kept
    /// here when a newer `scan_all` no longer saw it among the participants.
    counted_before: Round,
}

/// An object as its host's [`Tally`] reaches it: its [`Participation`], and a reference to
/// its cell to keep among the dirty ones. Its task and its host's table both reach it.
pub(crate) trait Reach {
    /// The object's participation.
    fn participation(&self) -> &std::sync::Mutex<Participation>;
    /// A reference to the object's cell.
    fn reference(&self) -> mailbox::Reference;
}

impl Reach for mailbox::Reference {
    fn participation(&self) -> &std::sync::Mutex<Participation> {
        mailbox::Reference::participation(self)
    }

    fn reference(&self) -> mailbox::Reference {
        self.clone()
    }
}

impl<T: Send + 'static> Reach for mailbox::Receiver<T> {
    fn participation(&self) -> &std::sync::Mutex<Participation> {
        mailbox::Receiver::participation(self)
    }

    fn reference(&self) -> mailbox::Reference {
        mailbox::Receiver::reference(self)
    }
}

/// A host's clean objects, counted as they change, so that a prepare costs the host its
/// objects that are not clean, not all of them: Flink pays nothing per idle key, and a
/// million idle objects should not cost a million lock and cache misses per checkpoint.
///
/// Lock order: the tally, then an object's [`Participation`].
#[derive(Debug, Default)]
pub(crate) struct Tally {
    state: std::sync::Mutex<TallyState>,
    /// Bumped by every change of the host's table of objects: a [`Tally::scan_dirty`] is
    /// exact only while the table is the one [`Tally::scan_all`] found equal to the
    /// participants.
    table_version: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct TallyState {
    /// Scans so far; the newest counted clean objects in `last_round`.
    scans: u64,
    /// [`Tally::scan_all`]s so far: the tally counts the objects the newest one saw.
    rebuilds: u64,
    last_round: Round,
    /// Clean objects of the host and their messages sent minus received. Kept exactly for
    /// the table the last [`Tally::scan_all`] saw; approximate otherwise (hence signed), and
    /// then unused until the next one.
    clean: i64,
    balance: i128,
    /// The host's objects that are not clean, since the last [`Tally::scan_all`] (may name
    /// objects no longer hosted).
    dirty: std::collections::HashMap<ObjectId, mailbox::Reference>,
    /// The objects the last [`Tally::scan_all`] saw: the next one keeps the round the scans
    /// counted them in for those it no longer sees.
    members: Vec<mailbox::Reference>,
    /// The table version at which the last [`Tally::scan_all`] found the table holding exactly
    /// the participants: while it stands, and the participants are the same, [`Tally::scan`]
    /// needs no full scan.
    exact_at: Option<u64>,
}

impl TallyState {
    /// After a checkpoint that changed every object, their decisions empty the dirty set: its
    /// room (24 bytes an object: its id and its control queue) is given back as it empties.
    fn give_back_room(&mut self) {
        if self.dirty.capacity() > 64 && self.dirty.len() < self.dirty.capacity() / 8 {
            self.dirty.shrink_to(self.dirty.len() * 2);
        }
    }
}

impl Tally {
    /// The host's table of objects changed (an object joined or left).
    pub(crate) fn table_changed(&self) {
        self.table_version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The version [`table_changed`](Self::table_changed) bumps.
    pub(crate) fn table_version(&self) -> u64 {
        self.table_version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Before `object` handles anything: it stops being clean. Returns the round it must
    /// adopt as its colour, if the host counted it in one without waking it.
    pub(crate) fn begin_handling(&self, object: &ObjectId, cell: &impl Reach) -> Option<Round> {
        if !lock(cell.participation()).clean {
            return None; // the common case, without the host's lock
        }
        let mut t = lock(&self.state);
        let mut p = lock(cell.participation());
        if !p.clean {
            return None;
        }
        p.clean = false;
        let mut counted = p.counted_before;
        p.counted_before = Round::default();
        if p.tallied == t.rebuilds {
            t.clean -= 1;
            t.balance -= i128::from(p.sent) - i128::from(p.received);
            t.dirty.insert(object.clone(), cell.reference());
            // Every scan since the last scan_all counted it while it was clean.
            if t.scans > p.clean_since {
                counted = counted.max(t.last_round);
            }
        }
        (counted > Round::default()).then_some(counted)
    }

    /// A committed decision of `object`'s vote: its state and counters are now its line's.
    /// The rounds it was counted in while it was already clean still stand: a decision that
    /// reaches an object after the next scan counted it must not erase that count, or the
    /// object would handle a message sent before its sender's cut as if sent after it.
    pub(crate) fn committed(&self, object: &ObjectId, cell: &impl Reach, sent: u64, received: u64) {
        self.set(object, cell, true, sent, received, false);
    }

    /// `object` was restored to its entry in a line (`clean`), or not: as its colour is the
    /// line's, no round it was counted in before stands.
    pub(crate) fn restored(
        &self,
        object: &ObjectId,
        cell: &impl Reach,
        clean: bool,
        sent: u64,
        received: u64,
    ) {
        self.set(object, cell, clean, sent, received, true);
    }

    fn set(
        &self,
        object: &ObjectId,
        cell: &impl Reach,
        clean: bool,
        sent: u64,
        received: u64,
        forget_counts: bool,
    ) {
        let mut t = lock(&self.state);
        let mut p = lock(cell.participation());
        if p.tallied == t.rebuilds {
            if p.clean {
                t.clean -= 1;
                t.balance -= i128::from(p.sent) - i128::from(p.received);
            }
            if clean {
                t.clean += 1;
                t.balance += i128::from(sent) - i128::from(received);
                if t.dirty.remove(object).is_some() {
                    t.give_back_room();
                }
            } else {
                t.dirty.insert(object.clone(), cell.reference());
            }
        }
        let keep = p.clean && clean && !forget_counts;
        *p = Participation {
            clean,
            sent,
            received,
            clean_since: if keep { p.clean_since } else { t.scans },
            tallied: p.tallied,
            counted_before: if keep {
                p.counted_before
            } else {
                Round::default()
            },
        };
    }

    /// Counts `round` over the host's participants, as a host's prepare does: from the tally
    /// alone ([`scan_dirty`](Self::scan_dirty)) when they are the same as the last scan's
    /// (`same_participants`, which the caller knows: the same roster, or a frame saying so) and
    /// the last full scan found the table, unchanged since, holding exactly them; otherwise by
    /// a full scan of `slots()` ([`scan_all`](Self::scan_all)), which notes whether the table
    /// (of `table_len` objects) holds exactly the participants it found. Call with the table
    /// locked, so that it cannot change meanwhile.
    pub(crate) fn scan<'a, I>(
        &self,
        round: Round,
        same_participants: bool,
        table_len: usize,
        slots: impl FnOnce() -> I,
    ) -> Scan
    where
        I: Iterator<Item = (&'a ObjectId, Option<&'a mailbox::Reference>)>,
    {
        let version = self.table_version();
        if same_participants && lock(&self.state).exact_at == Some(version) {
            return self.scan_dirty(round);
        }
        let scan = self.scan_all(round, slots());
        let mut t = lock(&self.state);
        t.exact_at = (scan.missing.is_empty() && t.members.len() == table_len).then_some(version);
        scan
    }

    /// Counts `round` over every participant of the host (`slots`: each with its
    /// participation, `None` when the host holds no such object): the clean ones without
    /// waking them; returns the others. Rebuilds the tally from what it finds, exact for a
    /// table that holds exactly these participants.
    pub(crate) fn scan_all<'a>(
        &self,
        round: Round,
        slots: impl Iterator<Item = (&'a ObjectId, Option<&'a mailbox::Reference>)>,
    ) -> Scan {
        let mut t = lock(&self.state);
        let before = (t.scans, t.rebuilds, t.last_round);
        let old_members = std::mem::take(&mut t.members);
        t.scans += 1;
        t.rebuilds += 1;
        t.last_round = round;
        t.dirty.clear();
        let mut scan = Scan::default();
        let mut members_seen = 0;
        for (object, cell) in slots {
            let Some(cell) = cell else {
                scan.missing.push(object.clone());
                continue;
            };
            t.members.push(cell.clone());
            let mut p = lock(cell.participation());
            // A clean member seen again is counted in this round, newer than any before.
            members_seen += usize::from(p.tallied == before.1);
            p.tallied = t.rebuilds;
            if p.clean {
                scan.clean.objects += 1;
                scan.clean.balance += i128::from(p.sent) - i128::from(p.received);
            } else {
                t.dirty.insert(object.clone(), cell.clone());
                scan.asked.push(Asked {
                    object: object.clone(),
                    control: cell.clone(),
                });
            }
        }
        // The scans since the last scan_all counted its clean members: those this one did not
        // see keep the newest of those rounds (a pass only when some left the participants).
        if members_seen < old_members.len() {
            let (scans, rebuilds, last_round) = before;
            for cell in &old_members {
                let mut p = lock(cell.participation());
                if p.tallied == rebuilds && p.clean && scans > p.clean_since {
                    p.counted_before = p.counted_before.max(last_round);
                }
            }
        }
        t.clean = i64::try_from(scan.clean.objects).unwrap_or(i64::MAX);
        t.balance = scan.clean.balance;
        scan
    }

    /// [`scan_all`](Self::scan_all) from the tally alone, for a host whose table has not
    /// changed since a `scan_all` found it equal to the participants: the clean ones are
    /// counted, the dirty ones returned, in time that follows the dirty ones.
    pub(crate) fn scan_dirty(&self, round: Round) -> Scan {
        let mut t = lock(&self.state);
        t.scans += 1;
        t.last_round = round;
        // The table is the participants, and only its objects are tallied: every dirty one
        // is a participant.
        let mut asked: Vec<Asked> = (t.dirty.iter())
            .map(|(object, control)| Asked {
                object: object.clone(),
                control: control.clone(),
            })
            .collect();
        asked.sort_unstable_by(|a, b| a.object.cmp(&b.object));
        Scan {
            clean: CleanCount {
                objects: usize::try_from(t.clean).unwrap_or(0),
                balance: t.balance,
            },
            asked,
            missing: Vec::new(),
        }
    }
}

/// What a host's scan of a round found among its participants.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The clean ones, counted without waking them.
    pub(crate) clean: CleanCount,
    /// The others, ascending: each must be asked to prepare.
    pub(crate) asked: Vec<Asked>,
    /// Participants the host does not hold.
    pub(crate) missing: Vec<ObjectId>,
}

/// A participant a scan found not clean: it must be asked to prepare.
#[derive(Debug)]
pub(crate) struct Asked {
    /// Its id.
    pub(crate) object: ObjectId,
    /// Where its prepare, and the decision of the round, go.
    pub(crate) control: mailbox::Reference,
}

/// The clean participants a host counted in a round without waking them: reported to the
/// engine in one [`Event::Clean`](crate::engine::Event::Clean) per host, so that idle objects
/// cost it nothing each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CleanCount {
    /// How many.
    pub(crate) objects: usize,
    /// Their messages sent minus received.
    pub(crate) balance: i128,
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

    /// Which of the host's objects are clean.
    fn tally(&self) -> &Tally;

    /// The runtime the host's object tasks run on (and resume on from parking): the host's,
    /// kept once rather than by every object.
    fn runtime(&self) -> &tokio::runtime::Handle;

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

    fn objects(n: usize) -> (Vec<ObjectId>, Vec<mailbox::Reference>) {
        let ids: Vec<_> = (0..n)
            .map(|i| ObjectId::new(format!("o{i:03}")).unwrap())
            .collect();
        let cells = (0..n)
            .map(|_| {
                let names = || mailbox::TypeNames {
                    object: "test",
                    message: "()",
                };
                mailbox::cell::<()>(names).0.reference()
            })
            .collect();
        (ids, cells)
    }

    fn asked(scan: &Scan) -> Vec<ObjectId> {
        scan.asked.iter().map(|a| a.object.clone()).collect()
    }

    fn scan_all(tally: &Tally, round: u64, ids: &[ObjectId], ps: &[mailbox::Reference]) -> Scan {
        tally.scan_all(Round(round), ids.iter().zip(ps.iter().map(Some)))
    }

    proptest::proptest! {
        /// While the table stays the participants, the tally's own count is what a scan of
        /// every object finds: changes of objects count as they happen.
        #[test]
        fn the_dirty_scan_finds_what_a_full_scan_finds(
            ops in proptest::collection::vec((0..8usize, 0..4u8, 0..4u64, 0..4u64), 0..60),
        ) {
            let (ids, ps) = objects(8);
            let tally = Tally::default();
            scan_all(&tally, 1, &ids, &ps);
            for (round, (i, op, sent, received)) in (2..).zip(ops) {
                match op {
                    0 => {
                        tally.begin_handling(&ids[i], &ps[i]);
                    }
                    1 => tally.committed(&ids[i], &ps[i], sent, received),
                    2 => tally.restored(&ids[i], &ps[i], true, sent, received),
                    _ => tally.restored(&ids[i], &ps[i], false, sent, received),
                }
                let dirty = tally.scan_dirty(Round(round));
                let all = scan_all(&Tally::default(), round, &ids, &ps);
                proptest::prop_assert_eq!(dirty.clean, all.clean);
                proptest::prop_assert_eq!(asked(&dirty), asked(&all));
            }
        }
    }

    /// One object as the tally stands for it: a mark of the newest round a scan counted it
    /// in while clean, written on the object itself (as each object was once locked and
    /// marked by every prepare).
    #[derive(Clone, Debug, Default)]
    struct Marked {
        clean: bool,
        mark: Round,
        colour: Round,
    }

    /// What a host does to its objects, in any order its threads allow.
    #[derive(Clone, Debug)]
    enum Op {
        Handle(usize),
        Committed(usize),
        Restored(usize, bool),
        /// A full scan of the participants in the mask.
        ScanAll(u8),
        /// A scan from the tally alone (the participants of the last full scan).
        ScanDirty,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..6usize).prop_map(Op::Handle),
            3 => (0..6usize).prop_map(Op::Committed),
            1 => (0..6usize, any::<bool>()).prop_map(|(i, c)| Op::Restored(i, c)),
            1 => any::<u8>().prop_map(Op::ScanAll),
            3 => Just(Op::ScanDirty),
        ]
    }

    proptest::proptest! {
        /// The tally's scan numbers give every object the colour a mark on each object would:
        /// an object adopts, before it handles anything, the newest round it was counted in
        /// while clean. Fails with the bug that lost money (a decision reaching an object that
        /// a scan had counted since it became clean forgot that count).
        #[test]
        fn objects_adopt_the_rounds_a_mark_on_each_would_give(
            ops in proptest::collection::vec(op(), 0..80),
        ) {
            const N: usize = 6;
            let (ids, ps) = objects(N);
            let tally = Tally::default();
            let mut model = vec![Marked::default(); N];
            let mut colours = [Round::default(); N];
            let mut members: Vec<usize> = (0..N).collect();
            let mut round = 0;
            scan_all(&tally, 0, &ids, &ps);
            for op in ops {
                match op {
                    Op::Handle(i) => {
                        let m = &mut model[i];
                        if m.clean {
                            m.colour = m.colour.max(m.mark);
                        }
                        m.clean = false;
                        if let Some(r) = tally.begin_handling(&ids[i], &ps[i]) {
                            colours[i] = colours[i].max(r);
                        }
                    }
                    Op::Committed(i) => {
                        model[i].clean = true;
                        tally.committed(&ids[i], &ps[i], 0, 0);
                    }
                    Op::Restored(i, clean) => {
                        model[i] = Marked { clean, mark: model[i].colour, colour: model[i].colour };
                        tally.restored(&ids[i], &ps[i], clean, 0, 0);
                    }
                    Op::ScanAll(mask) => {
                        round += 1;
                        members = (0..N).filter(|i| mask & (1 << i) != 0).collect();
                        let chosen: Vec<_> = members.iter().map(|&i| ids[i].clone()).collect();
                        let slots: Vec<_> = members.iter().map(|&i| Some(&ps[i])).collect();
                        let scan = tally.scan_all(Round(round), chosen.iter().zip(slots));
                        let clean = members.iter().filter(|&&i| model[i].clean).count();
                        proptest::prop_assert_eq!(scan.clean.objects, clean);
                        for &i in &members {
                            if model[i].clean {
                                model[i].mark = Round(round);
                            }
                        }
                    }
                    Op::ScanDirty => {
                        round += 1;
                        let scan = tally.scan_dirty(Round(round));
                        let clean = members.iter().filter(|&&i| model[i].clean).count();
                        proptest::prop_assert_eq!(scan.clean.objects, clean);
                        for &i in &members {
                            if model[i].clean {
                                model[i].mark = Round(round);
                            }
                        }
                    }
                }
                for i in 0..N {
                    proptest::prop_assert_eq!(colours[i], model[i].colour, "object {}", i);
                }
            }
        }
    }

    #[test]
    fn an_object_adopts_the_newest_round_it_was_counted_in_while_clean() {
        let (ids, ps) = objects(2);
        let tally = Tally::default();
        tally.restored(&ids[0], &ps[0], true, 1, 0);
        // Clean, and no scan since: nothing to adopt.
        assert_eq!(tally.begin_handling(&ids[0], &ps[0]), None);
        tally.restored(&ids[0], &ps[0], true, 1, 0);
        let scan = scan_all(&tally, 3, &ids, &ps);
        assert_eq!((scan.clean.objects, scan.clean.balance), (1, 1));
        assert_eq!(asked(&scan), vec![ids[1].clone()]);
        tally.scan_dirty(Round(4));
        assert_eq!(tally.begin_handling(&ids[0], &ps[0]), Some(Round(4)));
        // No longer clean: the next scan asks it, and a second handling adopts nothing.
        assert_eq!(tally.begin_handling(&ids[0], &ps[0]), None);
        assert_eq!(asked(&tally.scan_dirty(Round(5))), ids);
        // A restore (or decision) after the scans: they counted it in nothing.
        tally.restored(&ids[1], &ps[1], true, 0, 0);
        assert_eq!(tally.begin_handling(&ids[1], &ps[1]), None);
    }

    #[test]
    fn a_scan_skips_the_full_scan_only_for_the_same_participants_in_an_unchanged_exact_table() {
        let (ids, ps) = objects(2);
        let tally = Tally::default();
        let full_scans = std::cell::Cell::new(0);
        let scan = |round, same, table_len| {
            tally.scan(Round(round), same, table_len, || {
                full_scans.set(full_scans.get() + 1);
                ids.iter().zip(ps.iter().map(Some))
            })
        };
        scan(1, false, 2);
        scan(2, true, 2);
        assert_eq!(
            full_scans.get(),
            1,
            "the same participants, the same table: none"
        );
        scan(3, false, 2);
        assert_eq!(full_scans.get(), 2, "other participants: a full scan");
        tally.table_changed();
        scan(4, true, 2);
        assert_eq!(full_scans.get(), 3, "a changed table: a full scan");
        // A table that holds an object besides the participants is never exact.
        tally.table_changed();
        scan(5, true, 3);
        scan(6, true, 3);
        assert_eq!(full_scans.get(), 5);
    }

    #[test]
    fn a_decision_reaching_a_counted_object_keeps_the_count() {
        let (ids, ps) = objects(1);
        let tally = Tally::default();
        tally.restored(&ids[0], &ps[0], true, 0, 0);
        scan_all(&tally, 1, &ids, &ps);
        // Asked in round 2 while it was handling something, the object voted; the next scan
        // (round 3) counts it clean before it gets round 2's decision.
        tally.begin_handling(&ids[0], &ps[0]);
        tally.committed(&ids[0], &ps[0], 1, 1);
        tally.scan_dirty(Round(3));
        tally.committed(&ids[0], &ps[0], 1, 1);
        assert_eq!(tally.begin_handling(&ids[0], &ps[0]), Some(Round(3)));
        // A restore forgets the counts.
        tally.restored(&ids[0], &ps[0], true, 0, 0);
        tally.scan_dirty(Round(4));
        tally.restored(&ids[0], &ps[0], true, 0, 0);
        assert_eq!(tally.begin_handling(&ids[0], &ps[0]), None);
    }

    #[test]
    fn an_object_no_longer_among_the_participants_adopts_the_round_it_was_counted_in() {
        let (ids, ps) = objects(2);
        let tally = Tally::default();
        for (id, p) in ids.iter().zip(&ps) {
            tally.restored(id, p, true, 0, 0);
        }
        scan_all(&tally, 1, &ids, &ps);
        tally.scan_dirty(Round(2));
        // ids[1] leaves the participants: rounds 3 and 4 do not count it.
        scan_all(&tally, 3, &ids[..1], &ps[..1]);
        scan_all(&tally, 4, &ids[..1], &ps[..1]);
        assert_eq!(tally.begin_handling(&ids[1], &ps[1]), Some(Round(2)));
        assert_eq!(tally.begin_handling(&ids[0], &ps[0]), Some(Round(4)));
    }

    #[test]
    fn a_dropped_objects_changes_do_not_count_after_the_next_full_scan() {
        let (ids, ps) = objects(3);
        let tally = Tally::default();
        for (id, p) in ids.iter().zip(&ps) {
            tally.restored(id, p, true, 0, 0);
        }
        scan_all(&tally, 1, &ids, &ps);
        // ids[2] leaves the table; its task still runs and handles a message.
        let scan = scan_all(&tally, 2, &ids[..2], &ps[..2]);
        assert_eq!(scan.clean.objects, 2);
        tally.begin_handling(&ids[2], &ps[2]);
        let dirty = tally.scan_dirty(Round(3));
        assert_eq!((dirty.clean.objects, dirty.asked.len()), (2, 0));
    }

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
