//! The byte formats are pinned: insta snapshots (hex) of an encoded segment, a full manifest
//! and a delta manifest (format versions 3 and 4), and checked-in stores written by format
//! versions 1, 2 and 3/4 that every later build must still read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use cohort_checkpoint::object_store::ObjectStoreExt;
use cohort_checkpoint::{
    CheckpointStore, InTransitEntry, Manifest, ManifestKind, ObjectEntry, StoreOptions,
};
use cohort_object_api::{CheckpointId, ObjectId, Snapshot};

#[derive(serde::Serialize)]
struct Account {
    balance: i64,
    history: Vec<i64>,
}

/// The fixed checkpoint behind both the snapshots and the fixture.
async fn write_sample(store: &CheckpointStore) -> Manifest {
    let id = CheckpointId::new(1);
    let mut w = store.segment_writer(id, "e1-r1", "node-1");
    let mut m = Manifest::new(id, 1, 1_700_000_000_000, "e1-r1");
    for (name, balance) in [("account-1", 10), ("account-2", -3)] {
        let object = ObjectId::new(name).unwrap();
        let snap = Snapshot::new(
            "Account",
            2,
            Account {
                balance,
                history: vec![balance],
            },
        );
        let location = w.add(&object, &snap).await.unwrap();
        m.objects.insert(
            object,
            ObjectEntry {
                type_name: "Account".into(),
                version: 2,
                generation: Some(7),
                location,
            },
        );
    }
    let msg = w
        .add(
            &ObjectId::new("account-2").unwrap(),
            &Snapshot::new("Transfer", 1, 5_i64),
        )
        .await
        .unwrap();
    m.in_transit.push(InTransitEntry {
        from: ObjectId::new("account-1").unwrap(),
        to: ObjectId::new("account-2").unwrap(),
        seq: 3,
        location: msg,
    });
    m.metadata.insert("coordinator".into(), b"state".to_vec());
    w.finish().await.unwrap();
    store.commit(&m).await.unwrap();
    m
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        writeln!(out, "{:06x}  {:<47}  {ascii}", i * 16, hex.join(" ")).unwrap();
    }
    out
}

async fn raw(store: &CheckpointStore, key: &str) -> Vec<u8> {
    let (os, _) = store.object_store();
    os.get(&store.path_of(key))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn encoded_segment_and_manifest_are_pinned() {
    let store = CheckpointStore::memory();
    let m = write_sample(&store).await;
    let segment = &m.objects[&ObjectId::new("account-1").unwrap()]
        .location
        .segment;
    insta::assert_snapshot!("segment_v1", hex(&raw(&store, segment).await));
    insta::assert_snapshot!(
        "manifest_v3",
        hex(&raw(&store, "manifests/00000000000000000001.manifest").await)
    );
}

/// What the v2 and v3 fixtures hold besides their states: one in-transit message (sequence 9,
/// an `i64` 5) in `line`, and every checkpoint verifying.
async fn assert_one_message_in_transit_and_all_verified(store: &CheckpointStore, line: &Manifest) {
    let msgs = store.read_in_transit(line).await.unwrap();
    assert_eq!(
        (
            msgs.len(),
            msgs[0].0.seq,
            msgs[0].1.decode::<i64>().unwrap()
        ),
        (1, 9, 5)
    );
    assert!(store.verify_all().await.unwrap().iter().all(|r| r.is_ok()));
}

/// The checked-in store `tests/fixtures/<name>`, opened read-only.
async fn fixture_store(name: &str) -> CheckpointStore {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    CheckpointStore::open_read_only(dir.to_str().unwrap())
        .await
        .unwrap()
}

/// Writes the checked-in store of the format this build writes (`v3`) again with `write`, when
/// `COHORT_REGENERATE_V3_FIXTURE` is set. Only for the first release of a format: a fixture is
/// never rewritten afterwards, and the stores of older formats cannot be (this build writes
/// only the newest).
async fn regenerate_newest_fixture<F: Future>(write: impl FnOnce(CheckpointStore) -> F) {
    if std::env::var_os("COHORT_REGENERATE_V3_FIXTURE").is_none() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v3");
    let _ = std::fs::remove_dir_all(&dir);
    let store = CheckpointStore::open(dir.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    write(store).await;
}

/// Accounts of the delta sample: one changed, one removed and one added is three of sixteen,
/// under a quarter, so checkpoint 2 is stored as a delta of checkpoint 1.
const DELTA_ACCOUNTS: u64 = 16;

fn account(i: u64) -> ObjectId {
    ObjectId::indexed("account", i).unwrap()
}

/// Writes `(object, balance)` with one writer of checkpoint `id` into `m`.
async fn write_accounts(
    store: &CheckpointStore,
    m: &mut Manifest,
    accounts: impl IntoIterator<Item = (ObjectId, i64)>,
) {
    let mut w = store.segment_writer(m.id, &m.round.clone(), "node-1");
    for (object, balance) in accounts {
        let snap = Snapshot::new(
            "Account",
            2,
            Account {
                balance,
                history: vec![balance],
            },
        );
        let location = w.add(&object, &snap).await.unwrap();
        m.objects.insert(
            object,
            ObjectEntry {
                type_name: "Account".into(),
                version: 2,
                generation: Some(1),
                location,
            },
        );
    }
    w.finish().await.unwrap();
}

/// The fixed pair behind the delta snapshot and the v2 fixture: checkpoint 1 of sixteen
/// accounts, and checkpoint 2 (a delta of it) where account 3 changed, account 15 is gone,
/// `account-new` appeared, with an in-transit message and metadata.
async fn write_delta_sample(store: &CheckpointStore) -> (Manifest, Manifest) {
    let mut m1 = Manifest::new(CheckpointId::new(1), 1, 1_700_000_000_000, "e1-r1");
    write_accounts(
        store,
        &mut m1,
        (0..DELTA_ACCOUNTS).map(|i| (account(i), 100 + i as i64)),
    )
    .await;
    store.commit(&m1).await.unwrap();
    let mut m2 = Manifest::new(CheckpointId::new(2), 1, 1_700_000_060_000, "e1-r2");
    m2.parent = Some(m1.id);
    m2.objects = m1.objects.clone();
    m2.objects.remove(&account(15));
    write_accounts(
        store,
        &mut m2,
        [(account(3), 42), (ObjectId::new("account-new").unwrap(), 7)],
    )
    .await;
    let mut w = store.segment_writer(m2.id, "e1-r2", "channel");
    let msg = w
        .add(&account(4), &Snapshot::new("Transfer", 1, 5_i64))
        .await
        .unwrap();
    w.finish().await.unwrap();
    m2.in_transit.push(InTransitEntry {
        from: account(3),
        to: account(4),
        seq: 9,
        location: msg,
    });
    m2.metadata
        .insert("coordinator".into(), b"state 2".to_vec());
    store.commit(&m2).await.unwrap();
    (m1, m2)
}

#[tokio::test]
async fn encoded_delta_manifest_is_pinned() {
    let store = CheckpointStore::memory();
    write_delta_sample(&store).await;
    assert_eq!(
        store.manifest_base(CheckpointId::new(2)).await.unwrap(),
        Some(CheckpointId::new(1))
    );
    insta::assert_snapshot!(
        "manifest_delta_v4",
        hex(&raw(&store, "manifests/00000000000000000002.manifest").await)
    );
}

/// `commit_shared` stores the same blobs as `commit`, and the next commit still diffs against
/// the manifest it kept a reference to.
#[tokio::test]
async fn commit_shared_stores_what_commit_stores() {
    let plain = CheckpointStore::memory();
    let (m1, m2) = write_delta_sample(&plain).await;
    let shared = CheckpointStore::memory();
    for m in [m1, m2] {
        shared.commit_shared(&std::sync::Arc::new(m)).await.unwrap();
    }
    assert_eq!(
        shared.manifest_base(CheckpointId::new(2)).await.unwrap(),
        Some(CheckpointId::new(1))
    );
    for key in [
        "manifests/00000000000000000001.manifest",
        "manifests/00000000000000000002.manifest",
    ] {
        assert_eq!(raw(&plain, key).await, raw(&shared, key).await, "{key}");
    }
}

/// Reads the checked-in store written by format versions 3 and 4 (the compact manifests): a
/// full manifest and a delta of it, the same checkpoints as the v2 store.
#[tokio::test]
async fn reads_the_checked_in_v3_store() {
    regenerate_newest_fixture(|store| async move {
        write_delta_sample(&store).await;
    })
    .await;
    let store = fixture_store("v3").await;
    let (one, two) = (CheckpointId::new(1), CheckpointId::new(2));
    for (id, version) in [(one, 3u16), (two, 4)] {
        let blob = raw(&store, &format!("manifests/{}.manifest", id.padded())).await;
        assert_eq!(blob[8..10], version.to_le_bytes(), "checkpoint {id}");
    }
    assert_eq!(store.manifest_base(one).await.unwrap(), None);
    assert_eq!(store.manifest_base(two).await.unwrap(), Some(one));
    // What was written then is what the sample writes now.
    let (m1, m2) = write_delta_sample(&CheckpointStore::memory()).await;
    assert_eq!(store.read_manifest(one).await.unwrap(), m1);
    let line = store.recovery_line().await.unwrap().unwrap();
    assert!(line.skipped.is_empty());
    assert_eq!(line.manifest, m2);
    #[derive(serde::Deserialize)]
    struct AccountV2 {
        balance: i64,
    }
    for (m, changed) in [(&m1, None), (&m2, Some(42))] {
        let balances: BTreeMap<String, i64> = (store.read_states(m).await.unwrap().into_iter())
            .map(|(o, s)| (o.to_string(), s.decode::<AccountV2>().unwrap().balance))
            .collect();
        let mut expected: BTreeMap<String, i64> = (0..DELTA_ACCOUNTS)
            .map(|i| (account(i).to_string(), 100 + i as i64))
            .collect();
        if let Some(balance) = changed {
            expected.remove(&account(15).to_string());
            expected.insert(account(3).to_string(), balance);
            expected.insert("account-new".into(), 7);
        }
        assert_eq!(balances, expected, "checkpoint {}", m.id);
    }
    assert_one_message_in_transit_and_all_verified(&store, &m2).await;
}

/// Reads the checked-in store written by format version 2: a full manifest and a delta of it.
#[tokio::test]
async fn reads_the_checked_in_v2_store() {
    let store = fixture_store("v2").await;
    let two = CheckpointId::new(2);
    assert_eq!(
        store.manifest_base(two).await.unwrap(),
        Some(CheckpointId::new(1))
    );
    let line = store.recovery_line().await.unwrap().unwrap();
    assert!(line.skipped.is_empty());
    let m = line.manifest;
    assert_eq!(
        (m.id, m.parent, m.created_at_ms),
        (two, Some(CheckpointId::new(1)), 1_700_000_060_000)
    );
    assert_eq!(
        m.metadata,
        BTreeMap::from([("coordinator".into(), b"state 2".to_vec())])
    );
    #[derive(serde::Deserialize)]
    struct AccountV2 {
        balance: i64,
    }
    let balances: BTreeMap<String, i64> = store
        .read_states(&m)
        .await
        .unwrap()
        .into_iter()
        .map(|(o, s)| (o.to_string(), s.decode::<AccountV2>().unwrap().balance))
        .collect();
    let mut expected: BTreeMap<String, i64> = (0..15)
        .map(|i| (account(i).to_string(), 100 + i as i64))
        .collect();
    expected.insert(account(3).to_string(), 42);
    expected.insert("account-new".into(), 7);
    assert_eq!(balances, expected);
    assert_one_message_in_transit_and_all_verified(&store, &m).await;
}

/// Reads the checked-in store written by format version 1.
#[tokio::test]
async fn reads_the_checked_in_v1_store() {
    let store = fixture_store("v1").await;
    assert_eq!(
        store.committed_ids().await.unwrap(),
        vec![CheckpointId::new(1)]
    );
    let line = store.recovery_line().await.unwrap().unwrap();
    let m = line.manifest;
    assert_eq!(
        (m.id.get(), m.epoch, m.created_at_ms),
        (1, 1, 1_700_000_000_000)
    );
    assert_eq!(m.kind, ManifestKind::Checkpoint);
    assert_eq!(
        m.metadata,
        BTreeMap::from([("coordinator".into(), b"state".to_vec())])
    );
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct AccountV2 {
        balance: i64,
        history: Vec<i64>,
    }
    let states = store.read_states(&m).await.unwrap();
    let decoded: Vec<(String, u32, AccountV2)> = states
        .iter()
        .map(|(o, s)| (o.to_string(), s.tag().version, s.decode().unwrap()))
        .collect();
    assert_eq!(
        decoded,
        vec![
            (
                "account-1".into(),
                2,
                AccountV2 {
                    balance: 10,
                    history: vec![10]
                }
            ),
            (
                "account-2".into(),
                2,
                AccountV2 {
                    balance: -3,
                    history: vec![-3]
                }
            ),
        ]
    );
    let msgs = store.read_in_transit(&m).await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0.seq, 3);
    assert_eq!(msgs[0].1.tag().type_name, "Transfer");
    assert_eq!(msgs[0].1.decode::<i64>().unwrap(), 5);
}
