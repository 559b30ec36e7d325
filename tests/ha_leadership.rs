//! The leadership driver against real stores (memory, and a fault-injecting wrapper), on
//! tokio's paused clock: one of several coordinators leads, a standby takes over after the
//! lease, a leader cut off from the store steps down before anyone else claims, and a fenced
//! leader never serves again under its epoch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::sync::Arc;
use std::time::Duration;

use cohort::checkpoint::object_store::ObjectStore;
use cohort::checkpoint::object_store::memory::InMemory;
use cohort::checkpoint::object_store::path::Path;
use cohort::checkpoint::testing::{Fault, FaultRule, FaultyStore, Op};
use cohort::checkpoint::{CheckpointStore, Manifest, ManifestKind, ObjectEntry, StoreOptions};
use cohort::coordinator::service::leadership::{
    Leadership, LeadershipConfig, LeaseTiming, Role, View,
};
use cohort::{CheckpointId, ObjectId, Snapshot};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(1);

fn config(name: &str) -> LeadershipConfig {
    LeadershipConfig {
        timing: LeaseTiming::new(LEASE).unwrap(),
        holder: name.to_owned(),
        address: Some(format!("{name}.test:7411")),
        // A fixed wall clock: nothing in leadership may depend on it.
        clock: cohort::Clock::fixed(1_700_000_000_000),
    }
}

fn store_on(os: Arc<dyn ObjectStore>) -> CheckpointStore {
    CheckpointStore::from_object_store(os, Path::default(), StoreOptions::default())
}

/// Claims epoch 1 and commits checkpoint 1 (one object) under it, as a coordinator that then
/// went away would have.
async fn commit_one(store: &CheckpointStore) -> Manifest {
    let epoch = store.claim_epoch("gone", 0).await.unwrap().epoch;
    let id = CheckpointId::new(1);
    let round = format!("e{epoch}-r1");
    let object = ObjectId::new("account-0").unwrap();
    let mut w = store.segment_writer(id, &round, "node-1");
    let location = w
        .add(&object, &Snapshot::new("Account", 1, 100_i64))
        .await
        .unwrap();
    w.finish().await.unwrap();
    let mut m = Manifest::new(id, epoch, 0, &round);
    m.objects.insert(
        object,
        ObjectEntry {
            type_name: "Account".into(),
            version: 1,
            generation: None,
            location,
        },
    );
    m.metadata.insert("cohort.table".into(), b"table".to_vec());
    store.commit(&m).await.unwrap();
    m
}

/// Waits (on the paused clock, bounded) until `leadership`'s view satisfies `pred`.
async fn until(leadership: &Leadership, what: &str, pred: impl Fn(&View) -> bool) -> View {
    let mut rx = leadership.watch();
    let waited = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|v| pred(v))).await;
    match waited {
        Ok(Ok(view)) => view.clone(),
        _ => panic!("{what}: not within 60 s; view {:?}", leadership.view()),
    }
}

fn serving(v: &View) -> bool {
    v.serving_epoch().is_some()
}

#[tokio::test(start_paused = true)]
async fn one_leads_and_a_standby_takes_over_one_lease_after_it_stops() {
    let os: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let line = commit_one(&store_on(os.clone())).await;

    let a = Leadership::spawn(store_on(os.clone()), config("a"));
    // Epoch 1's holder never renews: a waits out one lease, then claims epoch 2 and fences.
    let started = Instant::now();
    let view = until(&a, "a leads", serving).await;
    assert!(
        started.elapsed() >= LEASE,
        "a did not wait out epoch 1's lease"
    );
    let epoch_a = view.serving_epoch().unwrap();
    assert_eq!(epoch_a, 2);
    let fence = view.fence.clone().expect("a fence over checkpoint 1");
    assert_eq!(
        (fence.id, fence.kind),
        (CheckpointId::new(2), ManifestKind::Fence)
    );
    assert_eq!(fence.objects, line.objects);
    assert_eq!(fence.metadata, line.metadata);

    let b = Leadership::spawn(store_on(os.clone()), config("b"));
    let view = until(&b, "b follows a", |v| v.leader_address().is_some()).await;
    assert_eq!(view.leader_address(), Some("a.test:7411"));

    // Five leases later a still leads and b still follows: the renewals keep b waiting.
    tokio::time::sleep(LEASE * 5).await;
    assert_eq!(a.view().serving_epoch(), Some(epoch_a));
    assert!(matches!(b.view().role, Role::Following { .. }));

    a.stop().await;
    let stopped = Instant::now();
    let view = until(&b, "b takes over", serving).await;
    let took = stopped.elapsed();
    assert!(took >= LEASE - LEASE / 3, "b took over after only {took:?}");
    assert!(
        took <= LEASE + LEASE / 4 + Duration::from_millis(50),
        "b took {took:?}"
    );
    assert_eq!(view.serving_epoch(), Some(epoch_a + 1));
    let fence = view.fence.expect("b's fence");
    assert_eq!((fence.id, fence.epoch), (CheckpointId::new(3), epoch_a + 1));
    assert_eq!(fence.objects, line.objects);
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn racing_standbys_elect_exactly_one() {
    let os: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let all: Vec<Leadership> = (0..4)
        .map(|i| Leadership::spawn(store_on(os.clone()), config(&format!("c{i}"))))
        .collect();
    tokio::time::sleep(LEASE * 3).await;
    let leaders: Vec<u64> = all
        .iter()
        .filter_map(|l| l.view().serving_epoch())
        .collect();
    assert_eq!(
        leaders,
        vec![1],
        "{:?}",
        all.iter().map(Leadership::view).collect::<Vec<_>>()
    );
    for l in &all {
        l.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_store_steps_down_before_a_standby_claims() {
    let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = Arc::new(FaultyStore::new(shared.clone()));
    let a = Leadership::spawn(store_on(faulty.clone()), config("a"));
    until(&a, "a leads", serving).await;
    let b = Leadership::spawn(store_on(shared.clone()), config("b"));
    until(&b, "b follows", |v| v.leader_address().is_some()).await;

    // a can no longer write its lease, nor read: a store outage seen only by a.
    faulty.inject(FaultRule::on(Op::Put).or(Op::List).or(Op::Get));
    let cut = Instant::now();
    let mut a_rx = a.watch();
    let mut b_rx = b.watch();
    let a_down = tokio::spawn(async move {
        a_rx.wait_for(|v| !serving(v)).await.unwrap();
        Instant::now()
    });
    let b_up = tokio::spawn(async move {
        b_rx.wait_for(serving).await.unwrap();
        Instant::now()
    });
    let a_down = tokio::time::timeout(LEASE * 10, a_down)
        .await
        .unwrap()
        .unwrap();
    let b_up = tokio::time::timeout(LEASE * 10, b_up)
        .await
        .unwrap()
        .unwrap();
    assert!(
        a_down <= cut + LEASE,
        "a served {:?} past the cut",
        a_down - cut
    );
    assert!(
        a_down < b_up,
        "b served at {:?}, a stopped at {:?}",
        b_up - cut,
        a_down - cut
    );
    assert_eq!(b.view().serving_epoch(), Some(2));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_cannot_keep_a_leader_serving() {
    let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = Arc::new(FaultyStore::new(shared.clone()));
    let a = Leadership::spawn(store_on(faulty.clone()), config("a"));
    until(&a, "a leads", serving).await;
    faulty.inject(FaultRule::on(Op::Put).fault(Fault::Hang));
    let hung = Instant::now();
    until(&a, "a steps down", |v| !serving(v)).await;
    assert!(
        hung.elapsed() <= LEASE,
        "stepped down after {:?}",
        hung.elapsed()
    );
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leader_steps_down_and_a_newer_epoch_is_never_fenced_by_it() {
    let os: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = store_on(os.clone());
    commit_one(&store).await;
    let a = Leadership::spawn(store_on(os.clone()), config("a"));
    let epoch = until(&a, "a leads", serving).await.serving_epoch().unwrap();
    // A deposition of another epoch is ignored; of ours, obeyed.
    a.deposed(epoch + 7, "not ours");
    tokio::time::sleep(LEASE / 10).await;
    assert_eq!(a.view().serving_epoch(), Some(epoch));
    a.deposed(epoch, "commit of checkpoint 3 fenced");
    until(&a, "a steps down", |v| !serving(v)).await;
    // With nobody else around, a takes the store back one lease later under a new epoch.
    let back = until(&a, "a leads again", serving).await;
    assert_eq!(back.serving_epoch(), Some(epoch + 1));
    assert_eq!(back.terms, 2);
    let ids = store.committed_ids().await.unwrap();
    assert_eq!(ids.len(), 3, "checkpoint, then one fence per term: {ids:?}");
    for (id, e) in [(2, epoch), (3, epoch + 1)] {
        let m = store.read_manifest(CheckpointId::new(id)).await.unwrap();
        assert_eq!((m.kind, m.epoch), (ManifestKind::Fence, e));
    }
    a.stop().await;
}
