//! GC can never delete what a kept checkpoint needs: random interleavings of incremental
//! commits, aborted attempts, GC runs (also while a checkpoint is being written), pins and
//! rollbacks, checked after every step against a model of what each checkpoint must read back.
//! Few changed objects make delta manifests, many make full ones, so GC also meets kept deltas
//! whose bases are old, pinned or rolled back to.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::collections::{BTreeMap, BTreeSet};

use cohort_checkpoint::{CheckpointStore, Manifest, ObjectEntry};
use cohort_object_api::{CheckpointId, ObjectId, Snapshot};
use proptest::prelude::*;

/// Sixteen objects: fewer than four changed is a delta manifest, more is a full one.
const OBJECTS: usize = 16;

#[derive(Clone, Debug)]
enum Step {
    /// Write the next checkpoint's changed objects, without committing yet.
    Write(BTreeSet<usize>),
    /// Commit what `Write` wrote, reusing every unchanged object's entry (incremental).
    Commit,
    /// Write an attempt that is then abandoned.
    Abort(BTreeSet<usize>),
    /// Run GC keeping the newest `n`.
    Gc(usize),
    /// Pin or unpin the `i`th committed checkpoint (modulo how many there are).
    Pin(usize),
    Unpin(usize),
    /// Roll back to the `i`th committed checkpoint.
    Rollback(usize),
}

/// One to six changed objects: deltas and full manifests about equally often.
fn changed() -> impl Strategy<Value = BTreeSet<usize>> {
    proptest::collection::btree_set(0..OBJECTS, 1..=6)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => changed().prop_map(Step::Write),
        3 => Just(Step::Commit),
        1 => changed().prop_map(Step::Abort),
        3 => (1usize..4).prop_map(Step::Gc),
        1 => any::<usize>().prop_map(Step::Pin),
        1 => any::<usize>().prop_map(Step::Unpin),
        1 => any::<usize>().prop_map(Step::Rollback),
    ]
}

struct Model {
    store: CheckpointStore,
    /// What each live committed checkpoint must read back.
    expected: BTreeMap<CheckpointId, BTreeMap<String, u64>>,
    /// The newest committed manifest (the base of the next incremental one).
    newest: Option<Manifest>,
    /// A checkpoint being written: its manifest so far.
    pending: Option<Manifest>,
    pins: BTreeSet<CheckpointId>,
    next_value: u64,
    rounds: u64,
}

impl Model {
    fn next_id(&self) -> CheckpointId {
        self.newest
            .as_ref()
            .map_or(CheckpointId::new(1), |m| m.id.next())
    }

    async fn write(&mut self, changed: &BTreeSet<usize>) -> Manifest {
        self.rounds += 1;
        let id = self.next_id();
        let round = format!("r{}", self.rounds);
        let mut m = Manifest::new(id, 1, 0, &round);
        if let Some(base) = &self.newest {
            m.parent = Some(base.id);
            m.objects = base.objects.clone();
        }
        let mut w = self.store.segment_writer(id, &round, "w");
        for i in 0..OBJECTS {
            if changed.contains(&i) || self.newest.is_none() {
                self.next_value += 1;
                let object = ObjectId::indexed("o", i as u64).unwrap();
                let location = w
                    .add(&object, &Snapshot::new("V", 1, self.next_value))
                    .await
                    .unwrap();
                m.objects.insert(
                    object,
                    ObjectEntry {
                        type_name: "V".into(),
                        version: 1,
                        generation: None,
                        location,
                    },
                );
            }
        }
        w.finish().await.unwrap();
        m
    }

    async fn values(&self, m: &Manifest) -> BTreeMap<String, u64> {
        self.store
            .read_states(m)
            .await
            .unwrap_or_else(|e| panic!("checkpoint {} no longer reads back: {e}", m.id))
            .into_iter()
            .map(|(o, s)| (o.to_string(), s.decode().unwrap()))
            .collect()
    }

    async fn commit(&mut self, m: Manifest) {
        self.store.commit(&m).await.unwrap();
        let values = self.values(&m).await;
        self.expected.insert(m.id, values);
        self.newest = Some(m);
    }

    fn nth_committed(&self, i: usize) -> Option<CheckpointId> {
        let ids: Vec<_> = self.expected.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    async fn apply(&mut self, step: Step) {
        match step {
            Step::Write(changed) => {
                if self.pending.is_none() {
                    self.pending = Some(self.write(&changed).await);
                }
            }
            Step::Commit => {
                if let Some(m) = self.pending.take() {
                    self.commit(m).await;
                }
            }
            Step::Abort(changed) => {
                if self.pending.is_none() {
                    self.write(&changed).await;
                }
            }
            Step::Gc(keep) => {
                let report = self.store.gc(keep, false).await.unwrap();
                for id in &report.expired {
                    self.expected.remove(id);
                }
                let newest = self.newest.as_ref().map(|m| m.id);
                assert!(
                    newest.is_none_or(|n| report.retained.contains(&n)),
                    "{report:?}"
                );
                for pin in &self.pins {
                    assert!(
                        report.retained.contains(pin),
                        "pinned {pin} expired: {report:?}"
                    );
                }
            }
            Step::Pin(i) => {
                if let Some(id) = self.nth_committed(i) {
                    self.store.pin(id).await.unwrap();
                    self.pins.insert(id);
                }
            }
            Step::Unpin(i) => {
                if let Some(id) = self.nth_committed(i) {
                    self.store.unpin(id).await.unwrap();
                    self.pins.remove(&id);
                }
            }
            Step::Rollback(i) => {
                // A rollback takes the next id, so it cannot run while a write is pending.
                if self.pending.is_none()
                    && let Some(to) = self.nth_committed(i)
                {
                    let id = self.store.rollback(to, 1, 0).await.unwrap();
                    let m = self.store.read_manifest(id).await.unwrap();
                    let values = self.values(&m).await;
                    assert_eq!(values, self.expected[&to]);
                    self.expected.insert(id, values);
                    self.newest = Some(m);
                }
            }
        }
        self.check().await;
    }

    /// Every live checkpoint verifies and reads back what it held when it was committed, and
    /// every live delta's base is live.
    async fn check(&self) {
        let committed = self.store.committed_ids().await.unwrap();
        assert_eq!(committed, self.expected.keys().copied().collect::<Vec<_>>());
        for id in &committed {
            if let Some(base) = self.store.manifest_base(*id).await.unwrap() {
                assert!(
                    committed.contains(&base),
                    "checkpoint {id} is kept but its base {base} was collected"
                );
            }
        }
        for (id, values) in &self.expected {
            let report = self.store.verify(*id).await.unwrap();
            assert!(report.is_ok(), "{report}");
            let m = self.store.read_manifest(*id).await.unwrap();
            assert_eq!(&self.values(&m).await, values, "checkpoint {id}");
        }
        if let Some(pending) = &self.pending {
            // The checkpoint being written lost nothing either.
            self.values(pending).await;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn gc_never_deletes_what_a_kept_checkpoint_needs(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut model = Model {
                store: CheckpointStore::memory(),
                expected: BTreeMap::new(),
                newest: None,
                pending: None,
                pins: BTreeSet::new(),
                next_value: 0,
                rounds: 0,
            };
            for step in steps {
                model.apply(step).await;
            }
            // Finally commit what is pending, collect everything, and check again.
            if let Some(m) = model.pending.take() {
                model.commit(m).await;
            }
            model.apply(Step::Gc(1)).await;
        });
    }
}
