//! One core, two transports: the in-process runtime and the coordinator service (with a node)
//! carry out the same engine, so the same decisions come out of both. Each test runs against
//! both, for the drifts the two copies of the coordinator once had:
//!
//! - message counters of zero are left out of the manifest;
//! - a line's in-transit messages are redelivered counted when the line records counters, and
//!   as inputs (outside any cut) when it records none;
//! - `tolerable_failures` decides the cohort's health;
//! - `min_pause` separates attempts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cohort::checkpoint::{CheckpointStore, InTransitEntry, Manifest, ObjectEntry};
use cohort::coordinator::node::{Node, NodeSettings};
use cohort::coordinator::service::{Service, ServiceConfig, StateTable};
use cohort::coordinator::{Actor, COUNTERS_KEY, Cohort, Context, Settings};
use cohort::{
    CheckpointId, Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot, StateTag,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    InProcess,
    Service,
}

const BOTH: [Transport; 2] = [Transport::InProcess, Transport::Service];

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Msg {
    /// Add to the value.
    Add(i64),
    /// Send `Add(1)` to `to`.
    Poke { to: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    value: i64,
}

/// An object whose `prepare` refuses while `refuse` is set.
struct Cell {
    state: State,
    refuse: Arc<AtomicBool>,
}

#[async_trait]
impl Checkpointable for Cell {
    fn type_name(&self) -> &'static str {
        "Cell"
    }

    async fn prepare(&mut self, _id: CheckpointId) -> Result<(), ObjectError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(ObjectError::Refused {
                reason: "told to refuse".into(),
            });
        }
        Ok(())
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new("Cell", 1, self.state.clone()))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        self.state = state.decode()?;
        Ok(())
    }
}

#[async_trait]
impl Actor for Cell {
    type Message = Msg;

    async fn handle(&mut self, message: Msg, ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        match message {
            Msg::Add(n) => self.state.value += n,
            Msg::Poke { to } => {
                let to = ctx
                    .address::<Msg>(&ObjectId::new(to).map_err(ObjectError::application)?)
                    .map_err(ObjectError::application)?;
                ctx.send(&to, Msg::Add(1))
                    .map_err(ObjectError::application)?;
            }
        }
        Ok(())
    }
}

fn oid(s: &str) -> ObjectId {
    ObjectId::new(s).unwrap()
}

/// A cohort of `Cell`s on one transport.
struct Harness {
    transport: Transport,
    store: CheckpointStore,
    cohort: Option<Cohort>,
    service: Option<Service>,
    node: Option<Node>,
    refuse: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Default)]
struct Knobs {
    tolerable_failures: u32,
    min_pause: Duration,
}

impl Harness {
    async fn start(transport: Transport, store: CheckpointStore, knobs: Knobs) -> Self {
        let refuse = Arc::new(AtomicBool::new(false));
        let mut h = Self {
            transport,
            store: store.clone(),
            cohort: None,
            service: None,
            node: None,
            refuse,
        };
        match transport {
            Transport::InProcess => {
                let settings = Settings::default()
                    .tolerable_failures(knobs.tolerable_failures)
                    .min_pause(knobs.min_pause)
                    .timeout(Duration::from_secs(10));
                h.cohort = Some(
                    Cohort::builder(store)
                        .settings(settings)
                        .build()
                        .await
                        .unwrap(),
                );
            }
            Transport::Service => {
                let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
                config.tolerable_failures = knobs.tolerable_failures;
                config.min_pause = knobs.min_pause;
                config.heartbeat_interval = Duration::from_millis(50);
                config.heartbeat_timeout = Duration::from_millis(1_000);
                h.service = Some(Service::start(store.clone(), config).await.unwrap());
                let mut settings = NodeSettings::default();
                settings.heartbeat_interval = Duration::from_millis(50);
                settings.heartbeat_timeout = Duration::from_millis(1_000);
                let node = Node::builder(store)
                    .name("node-1")
                    .coordinators(vec![h.service.as_ref().unwrap().local_addr().to_string()])
                    .settings(settings)
                    .build()
                    .await
                    .unwrap();
                h.node = Some(node);
            }
        }
        h
    }

    fn spawn(&self, id: &str, value: i64) {
        let cell = Cell {
            state: State { value },
            refuse: Arc::clone(&self.refuse),
        };
        match self.transport {
            Transport::InProcess => {
                self.cohort.as_ref().unwrap().spawn(oid(id), cell).unwrap();
            }
            Transport::Service => {
                self.node.as_ref().unwrap().spawn(oid(id), cell).unwrap();
            }
        }
    }

    /// Waits until the service places `ids` (the node tells it of each spawn), or a checkpoint
    /// taken meanwhile would not hold them.
    async fn placed(&self, ids: &[&str]) {
        if let Some(service) = &self.service {
            let mut status = service.status();
            let placed = tokio::time::timeout(
                Duration::from_secs(10),
                status.wait_for(|s| {
                    ids.iter()
                        .all(|id| s.table.placement.contains_key(&oid(id)))
                }),
            );
            assert!(
                matches!(placed.await, Ok(Ok(_))),
                "the service never placed {ids:?}"
            );
        }
    }

    fn tell(&self, id: &str, message: Msg) {
        match self.transport {
            Transport::InProcess => self.cohort.as_ref().unwrap().address(&oid(id)),
            Transport::Service => self.node.as_ref().unwrap().address(&oid(id)),
        }
        .unwrap()
        .tell(message)
        .unwrap();
    }

    /// A checkpoint, retried (with a short backoff) while the service's node registers and is
    /// restored: its first attempts abort, its node away.
    async fn checkpoint(&self) -> CheckpointId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.attempt().await {
                Ok(id) => return id,
                Err(e) if tokio::time::Instant::now() < deadline && e.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{:?}: no checkpoint: {e}", self.transport),
            }
        }
    }

    /// Checkpoints until a line's values satisfy `done` (messages are handled concurrently with
    /// checkpoints, so a line may precede them); that line.
    async fn line_where(&self, done: impl Fn(&BTreeMap<ObjectId, i64>) -> bool) -> Manifest {
        for _ in 0..200 {
            let line = manifest(&self.store, self.checkpoint().await).await;
            if done(&values(&self.store, &line).await) {
                return line;
            }
        }
        let mut lines = Vec::new();
        for id in self.store.committed_ids().await.unwrap() {
            let m = manifest(&self.store, id).await;
            lines.push(format!(
                "{id} {:?} epoch {} {:?}, {} in transit",
                m.kind,
                m.epoch,
                values(&self.store, &m).await,
                m.in_transit.len()
            ));
        }
        panic!(
            "{:?}: no line in 200 checkpoints met the condition; the lines:\n{}",
            self.transport,
            lines.join("\n")
        );
    }

    /// One attempt; its result.
    async fn attempt(&self) -> cohort::coordinator::Result<CheckpointId> {
        match self.transport {
            Transport::InProcess => self.cohort.as_ref().unwrap().trigger().await,
            Transport::Service => self.service.as_ref().unwrap().trigger().await,
        }
    }

    /// Whether the cohort is reported healthy, and its failures in a row, once it says
    /// `expected` (the service publishes its status after it answered the trigger).
    async fn health(&self, expected: (bool, u32)) -> (bool, u32) {
        match self.transport {
            Transport::InProcess => {
                let h = self.cohort.as_ref().unwrap().health().borrow().clone();
                (h.healthy, h.consecutive_failures)
            }
            Transport::Service => {
                let mut status = self.service.as_ref().unwrap().status();
                // The service publishes its status right after it answered the trigger.
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    status.wait_for(|s| (s.healthy, s.consecutive_failures) == expected),
                )
                .await;
                let s = status.borrow().clone();
                (s.healthy, s.consecutive_failures)
            }
        }
    }

    /// Rolls the cohort back to the newest line: in process, `recover()`; with the service, the
    /// node restores its objects from the line as it registers (the service took over the
    /// store, and the line names the node).
    async fn recover(&mut self) {
        if self.transport == Transport::InProcess {
            self.cohort.as_ref().unwrap().recover().await.unwrap();
        }
    }

    async fn shutdown(self) {
        if let Some(c) = self.cohort {
            c.shutdown().await;
        }
        if let Some(n) = self.node {
            n.shutdown();
        }
        if let Some(s) = self.service {
            s.shutdown();
        }
    }
}

async fn manifest(store: &CheckpointStore, id: CheckpointId) -> Manifest {
    store.read_manifest(id).await.unwrap()
}

fn counters(m: &Manifest) -> BTreeMap<ObjectId, (u64, u64)> {
    rmp_serde::from_slice(m.metadata.get(COUNTERS_KEY).expect("counters recorded")).unwrap()
}

/// The values of the cells in `m`, read from the store.
async fn values(store: &CheckpointStore, m: &Manifest) -> BTreeMap<ObjectId, i64> {
    store
        .read_states(m)
        .await
        .unwrap()
        .into_iter()
        .map(|(o, s)| (o, s.decode::<State>().unwrap().value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_counters_are_left_out_of_the_manifest() {
    for transport in BOTH {
        let store = CheckpointStore::memory();
        let h = Harness::start(transport, store.clone(), Knobs::default()).await;
        for id in ["a", "b", "idle"] {
            h.spawn(id, 0);
        }
        h.placed(&["a", "b", "idle"]).await;
        h.tell("a", Msg::Poke { to: "b".into() });
        // The line in which b has handled a's message.
        let line = h.line_where(|v| v.get(&oid("b")) == Some(&1)).await;
        let counted = counters(&line);
        assert_eq!(
            counted.keys().map(ObjectId::as_str).collect::<Vec<_>>(),
            ["a", "b"],
            "{transport:?}: the idle object's zero counters are left out"
        );
        assert_eq!(counted[&oid("a")], (1, 0), "{transport:?}");
        assert_eq!(counted[&oid("b")], (0, 1), "{transport:?}");
        h.shutdown().await;
    }
}

/// Writes checkpoint 1 by hand: `a` (sent one message) and `b` (has not received it), the
/// message in transit from a to b, placed on node-1; with or without counters.
async fn line_with_a_message_in_transit(store: &CheckpointStore, with_counters: bool) {
    let id = CheckpointId::new(1);
    let round = "e1-r1";
    let mut w = store.segment_writer(id, round, "hand");
    let mut m = Manifest::new(id, 1, 1_000, round);
    for (object, value) in [("a", 9), ("b", 10)] {
        let location = w
            .add(&oid(object), &Snapshot::new("Cell", 1, State { value }))
            .await
            .unwrap();
        m.objects.insert(
            oid(object),
            ObjectEntry {
                type_name: "Cell".into(),
                version: 1,
                generation: None,
                location,
            },
        );
    }
    let message = rmp_serde::to_vec_named(&Msg::Add(1)).unwrap();
    let state = EncodedState::new(StateTag::new("cohort.message", 1), message.into());
    let location = w.add_encoded(&oid("b"), &state).await.unwrap();
    w.finish().await.unwrap();
    m.in_transit.push(InTransitEntry {
        from: oid("a"),
        to: oid("b"),
        seq: 1,
        location,
    });
    if with_counters {
        let counters: BTreeMap<ObjectId, (u64, u64)> = [(oid("a"), (1, 0))].into();
        m.metadata
            .insert(COUNTERS_KEY.into(), rmp_serde::to_vec(&counters).unwrap());
    }
    let table = StateTable {
        placement: [("a", "node-1"), ("b", "node-1")]
            .into_iter()
            .map(|(o, n)| (oid(o), n.to_owned()))
            .collect(),
        ..StateTable::default()
    };
    m.metadata
        .insert("cohort.state_table".into(), table.encode().unwrap());
    store.commit(&m).await.unwrap();
}

/// A line's in-transit message is redelivered exactly once, counted when the line records
/// counters (the receiver's count takes it in, and the next checkpoint balances) and as an
/// input when it records none (then no count may take it in: a node that counted it anyway
/// could never commit again, its counts off by one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lines_in_transit_messages_are_redelivered_by_the_lines_own_rule() {
    for with_counters in [true, false] {
        for transport in BOTH {
            eprintln!("case: {transport:?}, counters {with_counters}");
            let store = CheckpointStore::memory();
            line_with_a_message_in_transit(&store, with_counters).await;
            let mut h = Harness::start(transport, store.clone(), Knobs::default()).await;
            // Both before the node registers and restores the line: an object the line holds
            // that a node spawns after its restore runs from its initial state (see
            // ARCHITECTURE.md, "The service").
            h.spawn("a", 0);
            h.spawn("b", 0);
            h.placed(&["a", "b"]).await;
            h.recover().await;
            // Once b handled the redelivered message (a line taken before holds it in transit
            // again), and never twice: no line shows 12.
            let line = h
                .line_where(|v| {
                    assert!(
                        v.get(&oid("b")) < Some(&12),
                        "{transport:?}: delivered twice"
                    );
                    v.get(&oid("b")) == Some(&11)
                })
                .await;
            let values = values(&store, &line).await;
            assert_eq!(
                (values[&oid("a")], values[&oid("b")]),
                (9, 11),
                "{transport:?}, counters {with_counters}: the message is redelivered once"
            );
            let counted = counters(&line);
            let expected: BTreeMap<ObjectId, (u64, u64)> = if with_counters {
                [(oid("a"), (1, 0)), (oid("b"), (0, 1))].into()
            } else {
                BTreeMap::new()
            };
            assert_eq!(counted, expected, "{transport:?}, counters {with_counters}");
            h.shutdown().await;
        }
    }
}

/// A node that spawns an object of the line after the node restored (its objects are spawned
/// after `build`, and the registration and the restore can come first) restores that object
/// from the line before it runs: its state and its in-transit messages. Otherwise it ran from
/// its initial state and, its in-transit message never recorded, no checkpoint could commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_spawned_after_its_nodes_restore_is_restored_from_the_line() {
    use cohort::coordinator::node::NodeStatus;
    let store = CheckpointStore::memory();
    line_with_a_message_in_transit(&store, true).await;
    let h = Harness::start(Transport::Service, store.clone(), Knobs::default()).await;
    // The node registers with no object, and the service's takeover restores it.
    let mut status = h.node.as_ref().unwrap().status();
    let restored = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(
            |s| matches!(s, NodeStatus::Registered { recoveries, .. } if *recoveries >= 1),
        ),
    )
    .await;
    assert!(matches!(restored, Ok(Ok(_))), "the node never restored");
    h.spawn("a", 0);
    h.spawn("b", 0);
    h.placed(&["a", "b"]).await;
    let line = h
        .line_where(|v| {
            assert!(v.get(&oid("b")) < Some(&12), "delivered twice: {v:?}");
            v.get(&oid("b")) == Some(&11)
        })
        .await;
    let values = values(&store, &line).await;
    assert_eq!(values[&oid("a")], 9, "a restored from the line");
    let expected: BTreeMap<ObjectId, (u64, u64)> = [(oid("a"), (1, 0)), (oid("b"), (0, 1))].into();
    assert_eq!(counters(&line), expected);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolerable_failures_decide_the_health() {
    for transport in BOTH {
        let store = CheckpointStore::memory();
        let knobs = Knobs {
            tolerable_failures: 1,
            ..Knobs::default()
        };
        let h = Harness::start(transport, store.clone(), knobs).await;
        h.spawn("a", 0);
        h.placed(&["a"]).await;
        h.checkpoint().await;
        assert_eq!(h.health((true, 0)).await, (true, 0), "{transport:?}");
        h.refuse.store(true, Ordering::SeqCst);
        let refused = h.attempt().await;
        assert!(refused.is_err(), "{transport:?}: {refused:?}");
        assert_eq!(
            h.health((true, 1)).await,
            (true, 1),
            "{transport:?}: one failure is tolerated"
        );
        let refused = h.attempt().await;
        assert!(refused.is_err(), "{transport:?}: {refused:?}");
        assert_eq!(
            h.health((false, 2)).await,
            (false, 2),
            "{transport:?}: two are not"
        );
        h.refuse.store(false, Ordering::SeqCst);
        h.checkpoint().await;
        assert_eq!(
            h.health((true, 0)).await,
            (true, 0),
            "{transport:?}: a commit heals"
        );
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pause_separates_attempts() {
    let pause = Duration::from_millis(300);
    for transport in BOTH {
        let store = CheckpointStore::memory();
        let knobs = Knobs {
            min_pause: pause,
            ..Knobs::default()
        };
        let h = Harness::start(transport, store.clone(), knobs).await;
        h.spawn("a", 0);
        h.placed(&["a"]).await;
        // Each trigger waits for the minimum pause after the attempt before it.
        let first = h.checkpoint().await;
        for _ in 0..3 {
            h.checkpoint().await;
        }
        let times: Vec<u64> = {
            let mut out = Vec::new();
            for id in first.get()..=first.get() + 3 {
                out.push(manifest(&store, CheckpointId::new(id)).await.created_at_ms);
            }
            out
        };
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= u64::try_from(pause.as_millis()).unwrap(),
                "{transport:?}: checkpoints {times:?} closer than the minimum pause"
            );
        }
        h.shutdown().await;
    }
}
