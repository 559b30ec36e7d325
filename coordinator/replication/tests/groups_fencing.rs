//! Split-brain safety on the store: the group record, per-slot epochs, the fenced log and
//! discovery, on memory and local-disk stores, with racing claimants and injected faults.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::sync::Arc;

use bytes::Bytes;
use cohort_checkpoint::object_store::path::Path;
use cohort_checkpoint::object_store::{ObjectStore, ObjectStoreExt};
use cohort_checkpoint::testing::{Fault, FaultRule, FaultyStore, Op};
use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_replication::Error;
use cohort_replication::fencing::{Claim, Claimant, EntryKind, claim_slot, ensure_group_record};
use cohort_replication::{FencedLog, GroupConfig, GroupName, MemberId, SlotEpoch, current_actives};

fn group() -> GroupName {
    GroupName::new("orders").unwrap()
}

fn claimant(name: &str) -> Claimant {
    Claimant {
        member: MemberId::new(name).unwrap(),
        service_addr: format!("svc-{name}:8000"),
        addr: format!("grp-{name}:7000"),
        now_unix_ms: 1,
    }
}

fn member(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

async fn won(store: &CheckpointStore, slot: u32, supersedes: Option<u64>, who: &str) -> SlotEpoch {
    match claim_slot(store, &group(), slot, supersedes, &claimant(who))
        .await
        .unwrap()
    {
        Claim::Won(se) => se,
        lost => panic!("{who} lost slot {slot}: {lost:?}"),
    }
}

fn data(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[tokio::test]
async fn the_first_member_fixes_the_goal_and_activation_interval() {
    let store = CheckpointStore::memory();
    let config = GroupConfig::new("orders", 2).unwrap();
    let record = ensure_group_record(&store, &config, &member("a"), 5)
        .await
        .unwrap();
    assert_eq!((record.active_goal, record.created_by.as_str()), (2, "a"));
    // The same settings join; the record keeps its creator.
    let again = ensure_group_record(&store, &config, &member("b"), 6)
        .await
        .unwrap();
    assert_eq!(again.created_by.as_str(), "a");

    let err = ensure_group_record(&store, &config.clone().with_active_goal(3), &member("c"), 7)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(
        err,
        Error::ConfigMismatch {
            field: "active_goal",
            ..
        }
    ));
    assert!(
        message.contains("has active_goal 2") && message.contains("this member has 3"),
        "{message}"
    );
    let slower = config.with_activation_interval(std::time::Duration::from_secs(9));
    let err = ensure_group_record(&store, &slower, &member("c"), 7)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("4800 ms") && err.to_string().contains("9000 ms"),
        "{err}"
    );
}

#[tokio::test]
async fn claims_take_the_next_epoch_once_and_name_the_holder_for_clients() {
    let store = CheckpointStore::memory();
    assert!(current_actives(&store, &group()).await.unwrap().is_empty());
    assert_eq!(
        won(&store, 0, None, "a").await,
        SlotEpoch { slot: 0, epoch: 1 }
    );
    assert_eq!(
        won(&store, 1, None, "b").await,
        SlotEpoch { slot: 1, epoch: 1 }
    );
    assert_eq!(
        won(&store, 0, Some(1), "c").await,
        SlotEpoch { slot: 0, epoch: 2 }
    );
    // A claim from a stale view (it saw epoch 1) is refused, and writes nothing.
    let stale = claim_slot(&store, &group(), 0, Some(1), &claimant("d"))
        .await
        .unwrap();
    assert_eq!(stale, Claim::Lost { by: 2 });

    let actives = current_actives(&store, &group()).await.unwrap();
    let summary: Vec<_> = actives
        .iter()
        .map(|r| (r.slot_epoch, r.member.as_str(), r.service_addr.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (SlotEpoch { slot: 0, epoch: 2 }, "c", "svc-c:8000"),
            (SlotEpoch { slot: 1, epoch: 1 }, "b", "svc-b:8000"),
        ]
    );
}

#[tokio::test]
async fn a_deposed_member_cannot_append_after_the_new_fence() {
    let store = CheckpointStore::memory();
    let log_a = FencedLog::new(store.clone(), group());
    let a = won(&store, 0, None, "a").await;
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(
            log_a
                .append(a, &member("a"), data(&format!("a{i}")))
                .await
                .unwrap(),
        );
    }
    assert_eq!(seqs, vec![2, 3, 4], "entry 1 is a's fence");

    // b takes the slot over (a was partitioned away, say).
    let b = won(&store, 0, Some(1), "b").await;
    let log_b = FencedLog::new(store.clone(), group());
    let err = log_a
        .append(a, &member("a"), data("late"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SlotFenced { ours, by: 2, .. } if ours == a),
        "{err}"
    );
    assert!(err.is_fenced() && !err.is_retryable());
    assert_eq!(log_b.append(b, &member("b"), data("b0")).await.unwrap(), 6);
    // Still fenced, however often it tries.
    assert!(
        log_a
            .append(a, &member("a"), data("again"))
            .await
            .unwrap_err()
            .is_fenced()
    );

    let entries = log_b.read_from(1).await.unwrap();
    let shape: Vec<_> = entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::Fence { supersedes } => {
                format!("{}:fence{}>{:?}", e.seq, e.writer.epoch, supersedes)
            }
            EntryKind::Data(bytes) => format!("{}:{}", e.seq, String::from_utf8_lossy(bytes)),
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            "1:fence1>None",
            "2:a0",
            "3:a1",
            "4:a2",
            "5:fence2>Some(1)",
            "6:b0"
        ]
    );
    assert_eq!(log_b.read_from(5).await.unwrap().len(), 2);
}

#[tokio::test]
async fn two_slots_commit_side_by_side_and_only_the_deposed_one_stops() {
    let store = CheckpointStore::memory();
    let a = won(&store, 0, None, "a").await;
    let c = won(&store, 1, None, "c").await;
    let (log_a, log_c) = (
        FencedLog::new(store.clone(), group()),
        FencedLog::new(store.clone(), group()),
    );
    // Interleaved appends collide on numbers and move on; none is lost or doubled.
    let mut tasks = Vec::new();
    for (log, se, who) in [(log_a.clone(), a, "a"), (log_c.clone(), c, "c")] {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                seqs.push(
                    log.append(se, &member(who), data(&format!("{who}{i}")))
                        .await
                        .unwrap(),
                );
            }
            seqs
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (3..=42).collect::<Vec<_>>());

    won(&store, 0, Some(1), "b").await;
    assert!(
        log_a
            .append(a, &member("a"), data("x"))
            .await
            .unwrap_err()
            .is_fenced()
    );
    assert!(log_c.append(c, &member("c"), data("y")).await.is_ok());
}

/// Racing claimants on a store with atomic create-if-absent: exactly one wins each epoch.
async fn racing_claims(store: CheckpointStore) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            claim_slot(&store, &group(), 0, Some(0), &claimant(&format!("m{i}")))
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Won(se) => {
                assert_eq!(se, SlotEpoch { slot: 0, epoch: 1 });
                winners += 1;
            }
            Claim::Lost { by } => assert_eq!(by, 1),
        }
    }
    assert_eq!(winners, 1);
    let log = FencedLog::new(store.clone(), group());
    let fences = log.read_from(1).await.unwrap();
    assert_eq!(fences.len(), 1, "only the winner wrote a fence: {fences:?}");
}

#[tokio::test]
async fn racing_claims_have_one_winner_in_memory() {
    racing_claims(CheckpointStore::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_have_one_winner_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), options)
        .await
        .unwrap();
    racing_claims(store).await;
}

fn is_store_error(err: &Error) -> bool {
    matches!(err, Error::GroupStore { .. })
}

fn faulty() -> (Arc<FaultyStore>, CheckpointStore) {
    let faulty = Arc::new(FaultyStore::new(Arc::new(
        cohort_checkpoint::object_store::memory::InMemory::new(),
    )));
    let store = CheckpointStore::from_object_store(
        Arc::clone(&faulty) as Arc<dyn ObjectStore>,
        Path::default(),
        StoreOptions::default(),
    );
    (faulty, store)
}

#[tokio::test]
async fn store_failures_are_reported_and_nothing_unfenced_slips_through() {
    let (faulty, store) = faulty();
    let a = won(&store, 0, None, "a").await;
    let log = FencedLog::new(store.clone(), group());

    // The store fails: an error naming the operation, nothing written. (A generic failure of
    // a local or wrapped store is `Store`; on S3 it would be the retryable `Unavailable`.)
    faulty.inject(FaultRule::on(Op::PutCreate).key_contains("/log/").times(1));
    let err = log.append(a, &member("a"), data("x")).await.unwrap_err();
    assert!(is_store_error(&err), "{err}");
    assert!(err.to_string().contains("append log entry 2"), "{err}");
    assert_eq!(log.newest().await.unwrap(), 1);

    // The entry landed but the answer was lost: an error, and the retry writes a second
    // entry; work must be idempotent, as FencedLog::append documents.
    faulty.inject(
        FaultRule::on(Op::PutCreate)
            .key_contains("/log/")
            .fault(Fault::ErrorAfterWrite)
            .times(1),
    );
    let err = log.append(a, &member("a"), data("y")).await.unwrap_err();
    assert!(is_store_error(&err), "{err}");
    assert_eq!(log.append(a, &member("a"), data("y")).await.unwrap(), 3);

    // A claim whose slot record landed without an answer leaves an unfenced record: the next
    // claim supersedes it, and the deposed holder is still fenced.
    faulty.inject(
        FaultRule::on(Op::PutCreate)
            .key_contains("/slots/")
            .fault(Fault::ErrorAfterWrite)
            .times(1),
    );
    let err = claim_slot(&store, &group(), 0, None, &claimant("b"))
        .await
        .unwrap_err();
    assert!(is_store_error(&err), "{err}");
    let c = won(&store, 0, None, "c").await;
    assert_eq!(c.epoch, 3);
    let err = log.append(a, &member("a"), data("z")).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");

    // Listing fails: claims and discovery report it.
    faulty.inject(FaultRule::on(Op::List).times(2));
    let err = claim_slot(&store, &group(), 1, None, &claimant("d"))
        .await
        .unwrap_err();
    assert!(is_store_error(&err), "{err}");
    let err = current_actives(&store, &group()).await.unwrap_err();
    assert!(is_store_error(&err), "{err}");
}

#[tokio::test]
async fn damaged_entries_stop_appends_rather_than_risk_skipping_a_fence() {
    let store = CheckpointStore::memory();
    let a = won(&store, 0, None, "a").await;
    let log = FencedLog::new(store.clone(), group());
    assert_eq!(log.append(a, &member("a"), data("ok")).await.unwrap(), 2);
    // Flip a bit in entry 2.
    let (raw, _) = store.object_store();
    let path = store.path_of("groups/orders/log/00000000000000000002");
    let mut bytes = raw
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    raw.put(&path, bytes.into()).await.unwrap();

    let stale = FencedLog::new(store.clone(), group());
    // A fresh handle lists the log and appends after it...
    assert_eq!(
        stale.append(a, &member("a"), data("next")).await.unwrap(),
        3
    );
    // ...but reading, or colliding with, the damaged entry is an error naming it.
    let err = log.read_from(1).await.unwrap_err();
    assert!(
        matches!(&err, Error::DamagedRecord { key, reason, .. } if key.ends_with("log/00000000000000000002") && reason.contains("crc")),
        "{err}"
    );
}

#[tokio::test]
async fn an_append_after_a_successor_claimed_is_refused_even_before_its_fence() {
    let (faulty, store) = faulty();
    let a = won(&store, 0, None, "a").await;
    let log = FencedLog::new(store.clone(), group());
    assert_eq!(log.append(a, &member("a"), data("a0")).await.unwrap(), 2);

    // b claims epoch 2, but its fence does not land (the store fails it): the slot record
    // exists, the log shows no fence.
    faulty.inject(FaultRule::on(Op::PutCreate).key_contains("/log/").times(1));
    let err = claim_slot(&store, &group(), 0, Some(1), &claimant("b"))
        .await
        .unwrap_err();
    assert!(is_store_error(&err), "{err}");

    // a's next append lands (no fence is in the way) but is refused: a successor holds the
    // next epoch, so a must stop and not report the work done. The entry stays in the log,
    // before any fence of epoch 2, where the successor replays it.
    let err = log.append(a, &member("a"), data("a1")).await.unwrap_err();
    assert!(
        matches!(err, Error::SlotFenced { ours, by: 2, .. } if ours == a),
        "{err}"
    );
    let entries = log.read_from(1).await.unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2].kind, EntryKind::Data(data("a1")));
    // Every later attempt is refused too; b's retried claim fences the log after it.
    assert!(
        log.append(a, &member("a"), data("a2"))
            .await
            .unwrap_err()
            .is_fenced()
    );
    let b = won(&store, 0, None, "b").await;
    assert_eq!(b.epoch, 3);
}

/// Appends `n` entries under `se` and returns their ids.
async fn fill(log: &FencedLog, se: SlotEpoch, n: usize) -> Vec<cohort_replication::EntryId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            log.commit(se, &member("a"), data(&format!("w{i}")))
                .await
                .unwrap(),
        );
    }
    ids
}

async fn seqs(log: &FencedLog) -> Vec<u64> {
    log.read_from(1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

async fn truncation(store: CheckpointStore) {
    let a = won(&store, 0, None, "a").await;
    let log = FencedLog::new(store.clone(), group());
    let ids = fill(&log, a, 10).await; // entries 2..=11; entry 1 is a's fence
    assert_eq!(ids[2].seq, 4);
    let reader_at_4 = Some(ids[2]);
    assert!(log.holds(None).await.unwrap(), "nothing truncated yet");
    assert!(log.holds(reader_at_4).await.unwrap());

    assert_eq!(log.truncate_through(6).await.unwrap(), 6);
    assert_eq!(seqs(&log).await, (7..=11).collect::<Vec<_>>());
    assert!(log.was_truncated().await.unwrap());
    // A reader positioned at or below the truncation learns that it must load a newer line.
    assert!(!log.holds(None).await.unwrap());
    assert!(!log.holds(reader_at_4).await.unwrap());
    assert!(log.holds(Some(ids[9])).await.unwrap());
    // Again through the same number: nothing left to do.
    assert_eq!(log.truncate_through(6).await.unwrap(), 0);
    // The newest entry always stays, so appends go on after it.
    assert_eq!(log.truncate_through(100).await.unwrap(), 4);
    assert_eq!(seqs(&log).await, vec![11]);
    assert_eq!(log.append(a, &member("a"), data("next")).await.unwrap(), 12);

    // A writer with a stale hint (one that last saw entry 4) creates a freed number again:
    // the create succeeds, and its entry is not part of the log anyone replays. A reader that
    // reads it from position 4 finds its position gone; one past the truncation never reads it.
    let stale = FencedLog::new(store.clone(), group());
    stale.saw(5);
    let ghost = stale.commit(a, &member("a"), data("ghost")).await.unwrap();
    assert_eq!(ghost.seq, 5);
    assert!(!log.holds(reader_at_4).await.unwrap());
    assert!(log.holds(Some(ids[9])).await.unwrap());
    // The next truncation removes it with the rest.
    log.truncate_through(11).await.unwrap();
    assert_eq!(seqs(&log).await, vec![12]);
}

#[tokio::test]
async fn truncation_deletes_below_a_position_in_order_and_readers_can_tell_in_memory() {
    truncation(CheckpointStore::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_deletes_below_a_position_in_order_and_readers_can_tell_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    truncation(store).await;
}

#[tokio::test]
async fn a_truncation_that_fails_midway_resumes_and_never_leaves_a_hole() {
    let (faulty, store) = faulty();
    let a = won(&store, 0, None, "a").await;
    let log = FencedLog::new(store.clone(), group());
    fill(&log, a, 9).await; // entries 1..=10
    // The third delete fails: entries 1 and 2 are gone, 3 and above remain (oldest first, so
    // what is left is still contiguous).
    faulty.inject(FaultRule::on(Op::Delete).nth(3).times(1));
    let err = log.truncate_through(8).await.unwrap_err();
    assert!(is_store_error(&err), "{err}");
    assert!(
        err.to_string().contains("log/00000000000000000003"),
        "{err}"
    );
    assert_eq!(seqs(&log).await, (3..=10).collect::<Vec<_>>());
    assert!(log.was_truncated().await.unwrap());
    assert_eq!(log.truncate_through(8).await.unwrap(), 6);
    assert_eq!(seqs(&log).await, vec![9, 10]);
}
