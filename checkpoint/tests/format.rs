//! The byte formats are pinned: insta snapshots (hex) of an encoded segment and manifest, and a
//! checked-in v1 store that every later build must still read.

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
        "manifest_v1",
        hex(&raw(&store, "manifests/00000000000000000001.manifest").await)
    );
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// Reads the checked-in store written by format version 1.
#[tokio::test]
async fn reads_the_checked_in_v1_store() {
    let dir = fixture_dir();
    if std::env::var_os("COHORT_REGENERATE_V1_FIXTURE").is_some() {
        // Only for the first release of a format: a fixture is never rewritten afterwards.
        let _ = std::fs::remove_dir_all(&dir);
        let store = CheckpointStore::open(dir.to_str().unwrap(), StoreOptions::default())
            .await
            .unwrap();
        write_sample(&store).await;
    }
    let store = CheckpointStore::open_read_only(dir.to_str().unwrap())
        .await
        .unwrap();
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
