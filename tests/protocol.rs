//! The protocol end to end in one process: commit, channel state, minimal participation,
//! aborts, timeouts, fencing, failed objects, and a crash at every fail point.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cohort::checkpoint::object_store::ObjectStoreExt as _;
use cohort::checkpoint::{CheckpointStore, ManifestKind};
use cohort::coordinator::engine::{AbortReason, RestartPolicy};
use cohort::coordinator::failpoint::{self, FailPoints};
use cohort::coordinator::{Actor, Cohort, Context, Error, Settings};
use cohort::{CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NodeState {
    value: i64,
    generation: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Msg {
    Add(i64),
    /// Send `n` × `Add(1)` to `to`, taking them from this node's value.
    Give {
        to: String,
        n: u32,
    },
    /// Wait in the handler until the gate opens.
    Block,
    /// Fail the handler.
    Fail,
    /// Panic in the handler.
    Panic,
}

struct Knobs {
    gate: Semaphore,
    refuse: AtomicBool,
    /// Handlers currently waiting at the gate.
    blocked: AtomicUsize,
    /// `prepare` calls, all objects together.
    prepares: AtomicUsize,
    /// `on_committed` calls, all objects together.
    committed: AtomicUsize,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            gate: Semaphore::new(0),
            refuse: AtomicBool::new(false),
            blocked: AtomicUsize::new(0),
            prepares: AtomicUsize::new(0),
            committed: AtomicUsize::new(0),
        }
    }
}

/// A test object; `SLEEPY` declares it message-driven, so that an idle one is counted in
/// without being woken (the other tests expect every object to be asked).
struct Node<const SLEEPY: bool = false> {
    state: NodeState,
    knobs: Arc<Knobs>,
}

impl<const SLEEPY: bool> Node<SLEEPY> {
    fn with(value: i64, knobs: &Arc<Knobs>) -> Self {
        Self {
            state: NodeState {
                value,
                generation: 0,
            },
            knobs: Arc::clone(knobs),
        }
    }
}

impl Node {
    fn new(value: i64, knobs: &Arc<Knobs>) -> Self {
        Self::with(value, knobs)
    }
}

#[async_trait]
impl<const SLEEPY: bool> Checkpointable for Node<SLEEPY> {
    fn type_name(&self) -> &'static str {
        "test.Node"
    }
    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new("test.Node", 1, self.state.clone()))
    }
    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        state.check("test.Node", 1)?;
        self.state = state.decode()?;
        Ok(())
    }
    fn generation(&self) -> Option<u64> {
        Some(self.state.generation)
    }
    async fn prepare(&mut self, _: CheckpointId) -> Result<(), ObjectError> {
        self.knobs.prepares.fetch_add(1, Ordering::SeqCst);
        if self.knobs.refuse.load(Ordering::SeqCst) {
            return Err(ObjectError::Refused {
                reason: "told to refuse".into(),
            });
        }
        Ok(())
    }
    async fn on_committed(&mut self, _: CheckpointId) {
        self.knobs.committed.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<const SLEEPY: bool> Actor for Node<SLEEPY> {
    type Message = Msg;
    const MESSAGE_DRIVEN: bool = SLEEPY;
    async fn handle(&mut self, message: Msg, ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        match message {
            Msg::Add(n) => {
                self.state.value += n;
                self.state.generation += 1;
            }
            Msg::Give { to, n } => {
                let to = ctx
                    .address::<Msg>(&ObjectId::new(to)?)
                    .map_err(ObjectError::application)?;
                for _ in 0..n {
                    self.state.value -= 1;
                    self.state.generation += 1;
                    ctx.send(&to, Msg::Add(1))
                        .map_err(ObjectError::application)?;
                }
            }
            Msg::Block => {
                self.knobs.blocked.fetch_add(1, Ordering::SeqCst);
                let permit = self
                    .knobs
                    .gate
                    .acquire()
                    .await
                    .map_err(ObjectError::application)?;
                permit.forget();
                self.knobs.blocked.fetch_sub(1, Ordering::SeqCst);
            }
            Msg::Fail => return Err(ObjectError::application("told to fail")),
            Msg::Panic => panic!("told to panic"),
        }
        Ok(())
    }
}

fn id(name: &str) -> ObjectId {
    ObjectId::new(name).unwrap()
}

fn settings() -> Settings {
    Settings::default().timeout(Duration::from_secs(5))
}

async fn cohort(store: &CheckpointStore, settings: Settings) -> Cohort {
    Cohort::builder(store.clone())
        .settings(settings)
        .build()
        .await
        .unwrap()
}

async fn sleepy_value(c: &Cohort, name: &str) -> i64 {
    c.inspect(&id(name), |n: &Node<true>| n.state.value)
        .await
        .unwrap()
}

async fn value(c: &Cohort, name: &str) -> i64 {
    c.inspect(&id(name), |n: &Node| n.state.value)
        .await
        .unwrap()
}

/// Sum of the values in a committed manifest plus its in-transit `Add`s.
async fn line_total(store: &CheckpointStore, id: CheckpointId) -> (i64, usize) {
    let m = store.read_manifest(id).await.unwrap();
    let mut total = 0;
    for (_, s) in store.read_states(&m).await.unwrap() {
        total += s.decode::<NodeState>().unwrap().value;
    }
    let msgs = store.read_in_transit(&m).await.unwrap();
    for (_, s) in &msgs {
        match s.decode::<Msg>().unwrap() {
            Msg::Add(n) => total += n,
            other => panic!("unexpected in-transit message {other:?}"),
        }
    }
    (total, msgs.len())
}

/// Waits until `f` holds, yielding to the runtime (no sleeping as synchronisation: the
/// condition is re-checked after other tasks ran).
async fn until(mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100_000 {
        if f().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_commits_and_recover_restores() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let a = c.spawn(id("a"), Node::new(10, &knobs)).unwrap();
    c.spawn(id("b"), Node::new(0, &knobs)).unwrap();
    a.tell(Msg::Give {
        to: "b".into(),
        n: 3,
    })
    .unwrap();
    until(async || value(&c, "b").await == 3).await;

    let first = c.trigger().await.unwrap();
    assert_eq!(first, CheckpointId::new(1));
    assert_eq!(line_total(&store, first).await, (10, 0));

    a.tell(Msg::Give {
        to: "b".into(),
        n: 5,
    })
    .unwrap();
    until(async || value(&c, "b").await == 8).await;
    let report = c.recover().await.unwrap();
    assert_eq!(report.line, Some(first));
    assert_eq!(report.fence, Some(CheckpointId::new(2)));
    assert_eq!((value(&c, "a").await, value(&c, "b").await), (7, 3));
    let fence = store.read_manifest(CheckpointId::new(2)).await.unwrap();
    assert_eq!(fence.kind, ManifestKind::Fence);
    // Under the cohort's own epoch: a coordinator of an older one is fenced by it.
    assert_eq!(fence.epoch, store.read_manifest(first).await.unwrap().epoch);
    assert_eq!(report.epoch, fence.epoch);

    // The cohort goes on after the fence.
    assert_eq!(c.trigger().await.unwrap(), CheckpointId::new(3));
    assert_eq!(c.metrics().committed(), 2);
}

/// A byte of the newest line's state rots, the segment's length and header intact: the
/// coordinator picks the line without reading its states (a failover reads what a line
/// references, not all of it), the restore finds the damage as it reads the entry, and the
/// recovery falls back past the line to the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_whose_restore_finds_damage_is_passed_over() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let a = c.spawn(id("a"), Node::new(10, &knobs)).unwrap();
    c.spawn(id("b"), Node::new(0, &knobs)).unwrap();
    let first = c.trigger().await.unwrap();
    a.tell(Msg::Give {
        to: "b".into(),
        n: 4,
    })
    .unwrap();
    until(async || value(&c, "b").await == 4).await;
    let second = c.trigger().await.unwrap();
    // b changes after the line: the restore reads its entry.
    a.tell(Msg::Give {
        to: "b".into(),
        n: 1,
    })
    .unwrap();
    until(async || value(&c, "b").await == 5).await;
    let location = store.read_manifest(second).await.unwrap().objects[&id("b")]
        .location
        .clone();
    rot(&store, &location).await;

    let report = c.recover().await.unwrap();
    assert_eq!(report.line, Some(first), "{report:?}");
    assert_eq!((value(&c, "a").await, value(&c, "b").await), (10, 0));
    // The damaged line stays skipped: the cohort goes on from the one before.
    assert!(c.trigger().await.unwrap() > second);
    assert_eq!((value(&c, "a").await, value(&c, "b").await), (10, 0));
}

/// A recovery to the line the objects were last committed at reads only the states that
/// changed since: an object whose generation is still its entry's keeps its state. The
/// entries left unread are rotted (length and header intact): a restore that read one would
/// find the damage and fall back past the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_to_the_line_applied_reads_only_what_changed_since() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let a = c.spawn(id("a"), Node::new(10, &knobs)).unwrap();
    c.spawn(id("b"), Node::new(0, &knobs)).unwrap();
    c.spawn(id("c"), Node::new(5, &knobs)).unwrap();
    let first = c.trigger().await.unwrap();
    a.tell(Msg::Give {
        to: "b".into(),
        n: 2,
    })
    .unwrap();
    until(async || value(&c, "b").await == 2).await;
    let second = c.trigger().await.unwrap();
    let line = store.read_manifest(second).await.unwrap();
    let entry = |name: &str| line.objects[&id(name)].location.clone();
    assert!(
        entry("c").segment.contains(&first.padded()),
        "c is unchanged: its entry is the first checkpoint's"
    );
    a.tell(Msg::Give {
        to: "b".into(),
        n: 1,
    })
    .unwrap();
    until(async || value(&c, "b").await == 3).await;

    rot(&store, &entry("c")).await;
    let report = c.recover().await.unwrap();
    assert_eq!(report.line, Some(second), "{report:?}");
    assert_eq!(
        (
            value(&c, "a").await,
            value(&c, "b").await,
            value(&c, "c").await
        ),
        (8, 2, 5)
    );

    // Restored to that line, nothing changed since: a second recovery, to the fence on it
    // (the same entries), reads no state at all.
    let fence = report.fence;
    rot(&store, &entry("a")).await;
    rot(&store, &entry("b")).await;
    let report = c.recover().await.unwrap();
    assert_eq!(report.line, fence, "{report:?}");
    assert_eq!(
        (
            value(&c, "a").await,
            value(&c, "b").await,
            value(&c, "c").await
        ),
        (8, 2, 5)
    );
}

/// Flips a byte in the middle of the entry at `location`: its segment's length and header
/// stay intact, its crc no longer matches.
async fn rot(store: &CheckpointStore, location: &cohort::checkpoint::EntryLocation) {
    let (os, _) = store.object_store();
    let path = store.path_of(&location.segment);
    let mut bytes = os.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
    bytes[(location.offset + location.len / 2) as usize] ^= 0x01;
    os.put(&path, bytes.into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_crossing_the_cut_are_recorded_and_redelivered_once() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let a = c.spawn(id("a"), Node::new(10, &knobs)).unwrap();
    let b = c.spawn(id("b"), Node::new(0, &knobs)).unwrap();
    // b is stuck in a handler; a's five transfers queue behind it.
    b.tell(Msg::Block).unwrap();
    until(async || knobs.blocked.load(Ordering::SeqCst) == 1).await;
    a.tell(Msg::Give {
        to: "b".into(),
        n: 5,
    })
    .unwrap();
    until(async || value(&c, "a").await == 5).await;

    let trigger = tokio::spawn({
        let c = c.clone();
        async move { c.trigger().await }
    });
    // a captures at once (sent 5); b captures when its handler returns, before the five
    // transfers, which it then receives after its cut: in transit.
    until(async || c.metrics().pauses().count >= 1).await;
    knobs.gate.add_permits(1);
    let line = trigger.await.unwrap().unwrap();
    assert_eq!(line_total(&store, line).await, (10, 5));
    let m = store.read_manifest(line).await.unwrap();
    assert!(
        m.in_transit
            .iter()
            .all(|e| e.from == id("a") && e.to == id("b"))
    );
    let seqs: Vec<u64> = m.in_transit.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    until(async || value(&c, "b").await == 5).await;

    // Recovery restores b without the five, then redelivers them exactly once.
    c.pause().await.unwrap();
    let report = c.recover().await.unwrap();
    assert_eq!(report.redelivered, 5);
    assert_eq!((value(&c, "a").await, value(&c, "b").await), (5, 0));
    c.resume().await.unwrap();
    until(async || value(&c, "b").await == 5).await;
    // And the next line is consistent: nothing in transit, nothing lost, nothing twice.
    let next = c.trigger().await.unwrap();
    assert_eq!(line_total(&store, next).await, (10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_objects_are_referenced_not_rewritten() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let nodes: Vec<_> = (0..10)
        .map(|i| c.spawn(id(&format!("n{i}")), Node::new(1, &knobs)).unwrap())
        .collect();
    let first = c.trigger().await.unwrap();
    let full = c.metrics().last_checkpoint().unwrap();
    assert_eq!((full.written, full.unchanged), (10, 0));

    nodes[3].tell(Msg::Add(1)).unwrap();
    until(async || value(&c, "n3").await == 2).await;
    let second = c.trigger().await.unwrap();
    let incr = c.metrics().last_checkpoint().unwrap();
    assert_eq!((incr.written, incr.unchanged), (1, 9));
    assert!(incr.bytes < full.bytes);

    let (m1, m2) = (
        store.read_manifest(first).await.unwrap(),
        store.read_manifest(second).await.unwrap(),
    );
    for (object, entry) in &m2.objects {
        let same = m1.objects[object] == *entry;
        assert_eq!(same, object != &id("n3"), "{object}");
    }
    assert_eq!(line_total(&store, second).await, (11, 0));
}

/// Minimal participation: objects that handled nothing since the last committed line are
/// counted in without being woken (no prepare), and a message reaching one while a checkpoint
/// is in flight is still accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_objects_are_counted_in_without_being_woken() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let nodes: Vec<_> = (0..10)
        .map(|i| {
            let node = Node::<true>::with(1, &knobs);
            c.spawn(id(&format!("n{i}")), node).unwrap()
        })
        .collect();
    let first = c.trigger().await.unwrap();
    assert_eq!(knobs.prepares.load(Ordering::SeqCst), 10);
    // The trigger returns at the commit point; the objects learn the decision after.
    until(async || knobs.committed.load(Ordering::SeqCst) == 10).await;

    nodes[3].tell(Msg::Add(1)).unwrap();
    until(async || sleepy_value(&c, "n3").await == 2).await;
    let second = c.trigger().await.unwrap();
    assert_eq!(
        knobs.prepares.load(Ordering::SeqCst),
        11,
        "only the object that handled a message is asked"
    );
    let incr = c.metrics().last_checkpoint().unwrap();
    assert_eq!((incr.written, incr.unchanged), (1, 9));
    let (m1, m2) = (
        store.read_manifest(first).await.unwrap(),
        store.read_manifest(second).await.unwrap(),
    );
    for (object, entry) in &m2.objects {
        assert_eq!(
            m1.objects[object] == *entry,
            object != &id("n3"),
            "{object}"
        );
    }
    assert_eq!(line_total(&store, second).await, (11, 0));

    // n3 gives to sleeping n7 while the next checkpoint is in flight: whatever the timing, the
    // line holds every unit, in n7's state or in transit to it.
    until(async || knobs.committed.load(Ordering::SeqCst) == 11).await;
    nodes[3]
        .tell(Msg::Give {
            to: "n7".into(),
            n: 2,
        })
        .unwrap();
    let third = c.trigger().await.unwrap();
    assert_eq!(line_total(&store, third).await.0, 11);
    until(async || sleepy_value(&c, "n7").await == 3).await;
    let fourth = c.trigger().await.unwrap();
    assert_eq!(line_total(&store, fourth).await, (11, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_objects_hold_no_task_and_wake_for_their_next_input() {
    const OBJECTS: usize = 1_000;
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let base = alive();
    let nodes: Vec<_> = (0..OBJECTS)
        .map(|i| {
            let node = Node::<true>::with(1, &knobs);
            c.spawn(id(&format!("n{i}")), node).unwrap()
        })
        .collect();
    // A fresh object waits for its first input parked, without a task.
    assert!(
        alive() < base + 20,
        "{} tasks for {OBJECTS} objects that have nothing to do",
        alive() - base
    );
    // Every input wakes its object: a message, the checkpoint's prepare, the decision.
    for node in &nodes {
        node.tell(Msg::Add(1)).unwrap();
    }
    let line = c.trigger().await.unwrap();
    assert_eq!(line_total(&store, line).await, (2 * OBJECTS as i64, 0));
    until(async || knobs.committed.load(Ordering::SeqCst) == OBJECTS).await;
    for i in 0..OBJECTS {
        assert_eq!(sleepy_value(&c, &format!("n{i}")).await, 2);
    }
    // Decided and inspected, each parks again.
    until(async || alive() < base + 20).await;
    // A parked object is counted in the next line without waking; a message wakes just it.
    nodes[5].tell(Msg::Add(5)).unwrap();
    until(async || sleepy_value(&c, "n5").await == 7).await;
    let next = c.trigger().await.unwrap();
    assert_eq!(line_total(&store, next).await, (2 * OBJECTS as i64 + 5, 0));
    assert_eq!(knobs.prepares.load(Ordering::SeqCst), OBJECTS + 1);
    c.shutdown().await;
    assert!(
        nodes[0].tell(Msg::Add(1)).is_err(),
        "a stopped cohort took a message"
    );
}

/// On one thread nothing runs between the shutdown and the sends: an object's task that is
/// being aborted, or an object parked with its own receivers, must refuse at once all the same.
#[tokio::test]
async fn a_stopped_cohort_refuses_every_address_at_once() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let parked = c
        .spawn(id("parked"), Node::<true>::with(1, &knobs))
        .unwrap();
    let busy = c.spawn(id("busy"), Node::<true>::with(1, &knobs)).unwrap();
    let running = c.spawn(id("running"), Node::new(1, &knobs)).unwrap();
    until(async || sleepy_value(&c, "parked").await == 1).await;
    busy.tell(Msg::Add(1)).unwrap();
    c.shutdown().await;
    for address in [&parked, &busy, &running] {
        assert!(
            address.tell(Msg::Add(1)).is_err(),
            "{} took a message after the shutdown",
            address.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_vote_aborts_discards_and_reports_unhealthy_past_the_tolerance() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings().tolerable_failures(1)).await;
    let knobs = Arc::new(Knobs::default());
    c.spawn(id("a"), Node::new(1, &knobs)).unwrap();
    knobs.refuse.store(true, Ordering::SeqCst);
    let mut health = c.health();
    for expect_healthy in [true, false] {
        match c.trigger().await {
            Err(Error::Aborted {
                id: aborted,
                reason: AbortReason::Refused { object, .. },
            }) => {
                assert_eq!((aborted, object), (CheckpointId::new(1), id("a")));
            }
            other => panic!("expected an abort, got {other:?}"),
        }
        health.changed().await.unwrap();
        assert_eq!(health.borrow_and_update().healthy, expect_healthy);
    }
    knobs.refuse.store(false, Ordering::SeqCst);
    // The retry reuses id 1 under a new round.
    assert_eq!(c.trigger().await.unwrap(), CheckpointId::new(1));
    assert!(c.health().borrow().healthy);
    assert_eq!(c.metrics().aborted(), 2);
    assert_eq!(
        store.committed_ids().await.unwrap(),
        vec![CheckpointId::new(1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_votes_times_out() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings().timeout(Duration::from_millis(200))).await;
    let knobs = Arc::new(Knobs::default());
    let a = c.spawn(id("a"), Node::new(1, &knobs)).unwrap();
    a.tell(Msg::Block).unwrap();
    until(async || knobs.blocked.load(Ordering::SeqCst) == 1).await;
    match c.trigger().await {
        Err(Error::Aborted {
            reason: AbortReason::Timeout { missing_votes, .. },
            ..
        }) => assert_eq!(missing_votes, 1),
        other => panic!("expected a timeout, got {other:?}"),
    }
    knobs.gate.add_permits(1);
    assert_eq!(c.trigger().await.unwrap(), CheckpointId::new(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_object_beyond_the_restart_policy_halts_until_recovery_restores_it() {
    let store = CheckpointStore::memory();
    let no_restarts = RestartPolicy {
        max_restarts: 0,
        ..RestartPolicy::default()
    };
    let c = cohort(&store, settings().restart_policy(no_restarts)).await;
    let knobs = Arc::new(Knobs::default());
    let a = c.spawn(id("a"), Node::new(1, &knobs)).unwrap();
    c.trigger().await.unwrap();
    a.tell(Msg::Add(5)).unwrap();
    a.tell(Msg::Fail).unwrap();
    let mut health = c.health();
    health.wait_for(|h| !h.healthy).await.unwrap();
    assert_eq!(health.borrow().failed_objects, vec![id("a")]);
    let halt = health
        .wait_for(|h| h.halted.is_some())
        .await
        .unwrap()
        .halted
        .clone()
        .unwrap();
    assert_eq!(halt.object, id("a"));
    assert!(halt.error.contains("told to fail"), "{halt:?}");
    assert_eq!(halt.policy, no_restarts);
    assert!(matches!(
        c.trigger().await,
        Err(Error::Aborted {
            reason: AbortReason::Halted,
            ..
        })
    ));
    c.recover().await.unwrap();
    assert_eq!(value(&c, "a").await, 1);
    assert!(c.health().borrow().failed_objects.is_empty());
    assert!(c.health().borrow().halted.is_none());
    c.trigger().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_object_restarts_the_cohort_from_the_line_under_the_policy() {
    let store = CheckpointStore::memory();
    let policy = RestartPolicy {
        max_restarts: 2,
        window_ms: 60_000,
        backoff_ms: 20,
        max_backoff_ms: 100,
    };
    let c = cohort(&store, settings().restart_policy(policy)).await;
    let knobs = Arc::new(Knobs::default());
    let a = c.spawn(id("a"), Node::new(1, &knobs)).unwrap();
    c.trigger().await.unwrap();
    let mut health = c.health();
    for failure in [Msg::Panic, Msg::Fail] {
        a.tell(Msg::Add(5)).unwrap();
        until(async || value(&c, "a").await == 6).await;
        a.tell(failure).unwrap();
        // The restart restores the line (1) with no call to recover().
        until(async || value(&c, "a").await == 1).await;
        assert!(health.borrow().failed_objects.is_empty());
        c.trigger().await.unwrap();
    }
    assert!(c.health().borrow().halted.is_none());
    // A third failure within the window is beyond the policy.
    a.tell(Msg::Panic).unwrap();
    let halt = health
        .wait_for(|h| h.halted.is_some())
        .await
        .unwrap()
        .halted
        .clone()
        .unwrap();
    assert_eq!((halt.restarts, halt.policy), (2, policy));
    assert!(halt.error.contains("told to panic"), "{halt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_created_after_the_line_are_dropped_and_missing_ones_refused() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    c.spawn(id("a"), Node::new(1, &knobs)).unwrap();
    c.trigger().await.unwrap();
    let late = c.spawn(id("late"), Node::new(1, &knobs)).unwrap();
    let report = c.recover().await.unwrap();
    assert_eq!(report.dropped, vec![id("late")]);
    assert!(matches!(
        late.tell(Msg::Add(1)),
        Err(Error::UnknownObject(_))
    ));
    assert_eq!(c.members(), vec![id("a")]);

    // A new process that does not spawn "a" cannot restore the line.
    let fresh = cohort(&store, settings()).await;
    fresh.spawn(id("b"), Node::new(1, &knobs)).unwrap();
    match fresh.recover().await {
        Err(Error::MissingObjects { missing, .. }) => assert_eq!(missing, vec![id("a")]),
        other => panic!("expected MissingObjects, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_coordinator_is_fenced() {
    let store = CheckpointStore::memory();
    let knobs = Arc::new(Knobs::default());
    let old = cohort(&store, settings()).await;
    old.spawn(id("a"), Node::new(1, &knobs)).unwrap();
    old.trigger().await.unwrap();

    let new = cohort(&store, settings()).await;
    new.spawn(id("a"), Node::new(1, &knobs)).unwrap();
    let report = new.recover().await.unwrap();
    assert_eq!(report.fence, Some(CheckpointId::new(2)));

    match old.trigger().await {
        Err(Error::Fenced { .. }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(matches!(old.trigger().await, Err(Error::Fenced { .. })));
    assert_eq!(new.trigger().await.unwrap(), CheckpointId::new(3));
}

/// Crash at every fail point: the store alone decides what committed, no half line is ever
/// visible, and a new cohort recovers exactly to the newest committed manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_fail_point_leaves_the_newest_committed_line() {
    for point in failpoint::ALL {
        let store = CheckpointStore::memory();
        let knobs = Arc::new(Knobs::default());
        let points = FailPoints::default();
        let c = Cohort::builder(store.clone())
            .settings(settings())
            .fail_points(points.clone())
            .build()
            .await
            .unwrap();
        let a = c.spawn(id("a"), Node::new(100, &knobs)).unwrap();
        c.spawn(id("b"), Node::new(0, &knobs)).unwrap();
        c.trigger().await.unwrap();
        points.crash_at(point, 1);
        // Drive the protocol through every step until the armed point fires.
        for round in 0..4 {
            let told = a.tell(Msg::Give {
                to: "b".into(),
                n: 2,
            });
            if told.is_err() {
                // A point after the trigger's answer (the announce) crashes the cohort while
                // this loop runs: the mailboxes are gone. The assertions below say whether it
                // was the armed point.
                break;
            }
            if round == 1 {
                knobs.refuse.store(true, Ordering::SeqCst); // an abort, for discard.before
            }
            let _ = c.trigger().await;
            knobs.refuse.store(false, Ordering::SeqCst);
            if round == 2 {
                let _ = c.recover().await; // for the recover.* points
            }
            if c.stopped().is_some() {
                break;
            }
        }
        assert!(
            matches!(c.stopped(), Some(Error::Crashed { point: p }) if p == *point),
            "{point}: did not crash ({:?})",
            c.stopped()
        );
        assert!(matches!(c.trigger().await, Err(Error::Crashed { .. })));

        // Every committed manifest is whole and conserves the 100.
        let ids = store.committed_ids().await.unwrap();
        for &m in &ids {
            assert_eq!(line_total(&store, m).await.0, 100, "{point}: line {m}");
        }
        let newest = *ids.last().unwrap();
        let after = cohort(&store, settings()).await;
        after.spawn(id("a"), Node::new(0, &knobs)).unwrap();
        after.spawn(id("b"), Node::new(0, &knobs)).unwrap();
        let report = after.recover().await.unwrap();
        assert_eq!(report.line, Some(newest), "{point}");
        let total = value(&after, "a").await + value(&after, "b").await;
        assert!(total <= 100, "{point}");
        let line = after.trigger().await.unwrap();
        assert_eq!(line_total(&store, line).await.0, 100, "{point}");
    }
}

/// A message coloured with the active round that reaches an object before its prepare forces
/// it to capture first: its state must not include the receipt of a message sent after the
/// sender's cut (an orphan). On a current-thread runtime the broadcast of prepares yields every
/// 16 objects, so n00 (first batch) captures and sends to n39 (third batch) before n39's
/// prepare is sent.
#[tokio::test(flavor = "current_thread")]
async fn a_message_from_beyond_the_cut_forces_a_capture_first() {
    let store = CheckpointStore::memory();
    let c = cohort(&store, settings()).await;
    let knobs = Arc::new(Knobs::default());
    let nodes: Vec<_> = (0..40)
        .map(|i| {
            c.spawn(id(&format!("n{i:02}")), Node::new(1, &knobs))
                .unwrap()
        })
        .collect();
    nodes[0].tell(Msg::Block).unwrap();
    until(async || knobs.blocked.load(Ordering::SeqCst) == 1).await;
    nodes[0]
        .tell(Msg::Give {
            to: "n39".into(),
            n: 1,
        })
        .unwrap();
    let trigger = tokio::spawn({
        let c = c.clone();
        async move { c.trigger().await }
    });
    tokio::task::yield_now().await; // the trigger reaches the coordinator first
    knobs.gate.add_permits(1);
    let line = trigger.await.unwrap().unwrap();
    assert!(c.metrics().forced_captures() >= 1, "no capture was forced");
    let m = store.read_manifest(line).await.unwrap();
    let states = store.read_states(&m).await.unwrap();
    let value_of = |name: &str| {
        let (_, s) = states.iter().find(|(o, _)| o == &id(name)).unwrap();
        s.decode::<NodeState>().unwrap().value
    };
    // n00 gave after its cut and n39 received after its (forced) cut: neither is in the line.
    assert_eq!((value_of("n00"), value_of("n39")), (1, 1));
    assert_eq!(line_total(&store, line).await, (40, 0));
    until(async || value(&c, "n39").await == 2).await;
}
