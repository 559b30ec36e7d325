//! The behaviour suite every backend runs (memory, local disk, S3-compatible), modelled on
//! object_store's `src/integration.rs`: each function takes a [`CheckpointStore`] and checks one
//! behaviour, panicking on a violation like an assertion does. Each works in a
//! [child](CheckpointStore::child) store of its own, so they may share one bucket.
//!
//! [`run`] calls them all; a backend's [`Capabilities`] choose the ones that need more than
//! create-if-absent on a single writer.

// These functions are assertions: a panic is the failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_object_api::{CheckpointId, EncodedState, ObjectId, Snapshot, StateTag};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use super::FaultyStore;
use crate::{
    CheckpointStore, DamageKind, Error, Fence, FenceLine, FenceRequest, Manifest, ManifestKind,
    ObjectEntry, Retention, StoreOptions,
};

/// What a backend guarantees beyond single-writer create-if-absent.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Two *concurrent* creates of one key: exactly one wins. Local disk, memory and AWS S3 do;
    /// s3s-fs (and the other S3-compatible servers available here) check then write, so a race
    /// can let both through.
    pub atomic_concurrent_create: bool,
}

impl Capabilities {
    /// A backend whose concurrent creates are atomic.
    pub fn atomic() -> Self {
        Self {
            atomic_concurrent_create: true,
        }
    }

    /// A backend that honours create-if-absent only for one writer at a time.
    pub fn single_writer() -> Self {
        Self {
            atomic_concurrent_create: false,
        }
    }
}

/// Runs the whole suite against `store`.
pub async fn run(store: &CheckpointStore, caps: Capabilities) {
    put_get_list(&store.child("put-get-list").unwrap()).await;
    multipart(&store.child("multipart").unwrap()).await;
    create_if_absent(&store.child("create-if-absent").unwrap()).await;
    if caps.atomic_concurrent_create {
        racing_writers(&store.child("racing-writers").unwrap()).await;
    }
    corruption_detection(&store.child("corruption").unwrap()).await;
    bad_manifests(&store.child("bad-manifests").unwrap()).await;
    gc_safety(&store.child("gc-safety").unwrap()).await;
    gc_leaves_strays(&store.child("gc-strays").unwrap()).await;
    gc_retention_window(&store.child("gc-window").unwrap()).await;
    probe(&store.child("probe").unwrap()).await;
    delta_round_trip(&store.child("delta-round-trip").unwrap()).await;
    delta_base_rewritten(&store.child("delta-rebase").unwrap()).await;
    delta_unusable_base(&store.child("delta-unusable-base").unwrap()).await;
    delta_gc_keeps_bases(&store.child("delta-gc").unwrap()).await;
    delta_fencing(&store.child("delta-fencing").unwrap()).await;
    future_format(&store.child("future-format").unwrap()).await;
    ingress_log(&store.child("ingress").unwrap()).await;
}

fn oid(s: &str) -> ObjectId {
    ObjectId::new(s).unwrap()
}

fn cid(n: u64) -> CheckpointId {
    CheckpointId::new(n)
}

fn written(fence: Result<Fence, Error>) -> Manifest {
    match fence {
        Ok(Fence::Written(m)) => m,
        other => panic!("expected a written fence, got {other:?}"),
    }
}

fn entry(type_name: &str, location: crate::EntryLocation) -> ObjectEntry {
    ObjectEntry {
        type_name: type_name.into(),
        version: 1,
        generation: None,
        location,
    }
}

/// Writes each `(object, value)` with its own writer (so each gets its own segment), reuses
/// every other object of `base` (an incremental checkpoint), and commits.
async fn commit_incremental(
    store: &CheckpointStore,
    id: u64,
    base: Option<&Manifest>,
    changed: &[(&str, u64)],
) -> Manifest {
    let round = format!("e1-r{id}");
    let mut m = Manifest::new(cid(id), 1, 1_000 * id, &round);
    if let Some(base) = base {
        m.parent = Some(base.id);
        m.objects = base.objects.clone();
    }
    for (name, value) in changed {
        let mut w = store.segment_writer(cid(id), &round, &format!("w-{name}"));
        let location = w
            .add(&oid(name), &Snapshot::new("Value", 1, *value))
            .await
            .unwrap();
        w.finish().await.unwrap();
        m.objects.insert(oid(name), entry("Value", location));
    }
    store.commit(&m).await.unwrap();
    m
}

async fn values(store: &CheckpointStore, m: &Manifest) -> BTreeMap<String, u64> {
    store
        .read_states(m)
        .await
        .unwrap_or_else(|e| panic!("checkpoint {} does not read back: {e}", m.id))
        .into_iter()
        .map(|(o, s)| (o.to_string(), s.decode::<u64>().unwrap()))
        .collect()
}

/// Every key under the store's prefix with its bytes, to prove that a failing read touched
/// nothing.
async fn snapshot_keys(store: &CheckpointStore) -> BTreeMap<String, Bytes> {
    let (os, prefix) = store.object_store();
    let metas: Vec<_> = os.list(Some(prefix)).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in metas {
        let bytes = os.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.insert(m.location.to_string(), bytes);
    }
    out
}

/// Raw object store operations under the prefix, then a checkpoint written, committed and read
/// back.
pub async fn put_get_list(store: &CheckpointStore) {
    let (os, _) = store.object_store();
    let a = store.path_of("scratch/a");
    let b = store.path_of("scratch/b");
    os.put(&a, PutPayload::from_static(b"hello world"))
        .await
        .unwrap();
    os.put(&b, PutPayload::from_static(b"b")).await.unwrap();
    let got = os.get(&a).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"hello world");
    assert_eq!(&os.get_range(&a, 6..11).await.unwrap()[..], b"world");
    let ranges = os.get_ranges(&a, &[0..5, 6..11]).await.unwrap();
    assert_eq!(
        (&ranges[0][..], &ranges[1][..]),
        (&b"hello"[..], &b"world"[..])
    );
    assert_eq!(os.head(&a).await.unwrap().size, 11);
    let mut listed: Vec<_> = os
        .list(Some(&store.path_of("scratch")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, vec![a.to_string(), b.to_string()]);
    os.delete(&a).await.unwrap();
    os.delete(&b).await.unwrap();
    assert!(matches!(
        os.get(&a).await,
        Err(object_store::Error::NotFound { .. })
    ));

    assert_eq!(store.committed_ids().await.unwrap(), vec![]);
    assert!(store.recovery_line().await.unwrap().is_none());
    let m1 = commit_incremental(store, 1, None, &[("a", 1), ("b", 2)]).await;
    let m2 = commit_incremental(store, 2, Some(&m1), &[("b", 3)]).await;
    assert_eq!(store.committed_ids().await.unwrap(), vec![cid(1), cid(2)]);
    assert_eq!(store.read_manifest(cid(2)).await.unwrap(), m2);
    let line = store.recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest, m2);
    assert_eq!(
        values(store, &m2).await,
        BTreeMap::from([("a".into(), 1), ("b".into(), 3)])
    );
    let state = store
        .read_state(&m2.objects[&oid("a")].location)
        .await
        .unwrap();
    assert_eq!(state.decode::<u64>().unwrap(), 1);
    assert!(store.verify_all().await.unwrap().iter().all(|r| r.is_ok()));
}

/// States larger than a segment go through multipart uploads into segments of their own,
/// next to small states packed together.
pub async fn multipart(store: &CheckpointStore) {
    let options = StoreOptions {
        segment_size: 1 << 20,
        part_size: 5 << 20,
        upload_concurrency: 2,
        ..store.options().clone()
    };
    let store = store.with_options(options);
    let id = cid(1);
    let mut w = store.segment_writer(id, "e1-r1", "node-1");
    let mut m = Manifest::new(id, 1, 0, "e1-r1");
    let big: Vec<u8> = (0..11 << 20).map(|i: u32| (i % 251) as u8).collect();
    let big_encoded = EncodedState::new(
        StateTag::new("Raw", 1),
        Bytes::from(
            (0..(6 << 20))
                .map(|i: u32| (i % 241) as u8)
                .collect::<Vec<u8>>(),
        ),
    );
    for i in 0..20u32 {
        let name = format!("small-{i}");
        let loc = w
            .add(&oid(&name), &Snapshot::new("Value", 1, u64::from(i)))
            .await
            .unwrap();
        m.objects.insert(oid(&name), entry("Value", loc));
        if i == 5 {
            let loc = w
                .add(&oid("big"), &Snapshot::new("Big", 1, serde_bytes(&big)))
                .await
                .unwrap();
            m.objects.insert(oid("big"), entry("Big", loc));
        }
        if i == 10 {
            let loc = w.add_encoded(&oid("raw"), &big_encoded).await.unwrap();
            m.objects.insert(oid("raw"), entry("Raw", loc));
        }
    }
    let summary = w.finish().await.unwrap();
    assert_eq!(summary.entries, 22);
    assert!(
        summary.segments.iter().filter(|s| s.entries == 1).count() >= 2,
        "the large states got no segments of their own: {summary:?}"
    );
    store.commit(&m).await.unwrap();
    assert!(store.verify(id).await.unwrap().is_ok());
    let states: BTreeMap<_, _> = store.read_states(&m).await.unwrap().into_iter().collect();
    let got: serde_bytes_de::ByteBuf = states[&oid("big")].decode().unwrap();
    assert!(got.0 == big, "the large state did not read back");
    assert_eq!(states[&oid("raw")], big_encoded);
    assert_eq!(states[&oid("small-7")].decode::<u64>().unwrap(), 7);
}

/// Encodes a byte slice as msgpack `bin`, not an array of integers.
fn serde_bytes(b: &[u8]) -> serde_bytes_de::ByteBuf {
    serde_bytes_de::ByteBuf(b.to_vec())
}

mod serde_bytes_de {
    use serde::{Deserializer, Serializer};

    pub(super) struct ByteBuf(pub(super) Vec<u8>);

    impl serde::Serialize for ByteBuf {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

/// Create-if-absent by one writer at a time: the raw store refuses a second create, and
/// `commit` tells its own retried create from a rival's and from a newer epoch's.
pub async fn create_if_absent(store: &CheckpointStore) {
    let (os, _) = store.object_store();
    let key = store.path_of("scratch/create");
    os.put_opts(&key, PutPayload::from_static(b"1"), PutMode::Create.into())
        .await
        .unwrap();
    let second = os
        .put_opts(&key, PutPayload::from_static(b"2"), PutMode::Create.into())
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "a second create was not refused: {second:?}"
    );
    assert_eq!(
        &os.get(&key).await.unwrap().bytes().await.unwrap()[..],
        b"1"
    );
    os.delete(&key).await.unwrap();

    let m1 = commit_incremental(store, 1, None, &[("a", 1)]).await;
    store
        .commit(&m1)
        .await
        .expect("a retried commit must find its own create");
    let mut rival = m1.clone();
    rival.round = "e1-rival".into();
    assert!(matches!(
        store.commit(&rival).await,
        Err(Error::Conflict { .. })
    ));
    let mut skip = m1.clone();
    skip.id = cid(3);
    assert!(matches!(
        store.commit(&skip).await,
        Err(Error::Conflict { .. })
    ));

    // A new leader claims epoch 2 and fences at the next id; the old leader is then fenced.
    assert_eq!(store.claim_epoch("old", 1).await.unwrap().epoch, 1);
    assert_eq!(store.claim_epoch("new", 2).await.unwrap().epoch, 2);
    let mut fence = m1.clone();
    fence.id = cid(2);
    fence.epoch = 2;
    fence.parent = Some(cid(1));
    fence.kind = ManifestKind::Fence;
    fence.round = "e2-fence".into();
    store.commit(&fence).await.unwrap();
    let mut stale = m1.clone();
    stale.id = cid(2);
    stale.round = "e1-r2".into();
    let err = store.commit(&stale).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert_eq!(store.newest_epoch().await.unwrap().unwrap().holder, "new");
}

/// Concurrent writers race for one checkpoint id and for epochs: exactly one wins each slot.
/// Only for backends whose concurrent creates are atomic.
pub async fn racing_writers(store: &CheckpointStore) {
    let base = commit_incremental(store, 1, None, &[("a", 1)]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        let mut m = base.clone();
        m.id = cid(2);
        m.parent = Some(cid(1));
        m.round = format!("e1-racer-{i}");
        tasks.spawn(async move { store.commit(&m).await });
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(()) => won += 1,
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("unexpected commit error: {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one racing commit must win");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.claim_epoch(&format!("node-{i}"), 0).await });
    }
    let mut epochs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        epochs.push(r.unwrap().unwrap().epoch);
    }
    epochs.sort_unstable();
    assert_eq!(epochs, (1..=8).collect::<Vec<_>>());
}

/// Damaged segments are found, named and skipped; nothing else is touched.
pub async fn corruption_detection(store: &CheckpointStore) {
    let (os, _) = store.object_store();
    let m1 = commit_incremental(store, 1, None, &[("a", 1), ("b", 2), ("c", 3)]).await;
    let m2 = commit_incremental(store, 2, Some(&m1), &[("a", 10), ("b", 20), ("c", 30)]).await;
    let original = snapshot_keys(store).await;

    // (object, damage to apply to its segment of checkpoint 2, what the report must say)
    type Corrupt = fn(Bytes, &crate::EntryLocation) -> Option<Bytes>;
    type Expect = fn(&DamageKind) -> bool;
    let cases: [(&str, Corrupt, Expect); 3] = [
        (
            "a",
            |b, loc| {
                let mut v = b.to_vec();
                v[(loc.offset + loc.len / 2) as usize] ^= 0x01;
                Some(v.into())
            },
            |k| matches!(k, DamageKind::CrcMismatch { .. }),
        ),
        (
            "b",
            |b, loc| Some(b.slice(..(loc.offset + loc.len - 3) as usize)),
            |k| matches!(k, DamageKind::Truncated { .. }),
        ),
        ("c", |_, _| None, |k| matches!(k, DamageKind::Missing)),
    ];
    for (name, corrupt, expect) in cases {
        let loc = m2.objects[&oid(name)].location.clone();
        let path = store.path_of(&loc.segment);
        let good = os.get(&path).await.unwrap().bytes().await.unwrap();
        match corrupt(good.clone(), &loc) {
            Some(bad) => {
                os.put(&path, bad.into()).await.unwrap();
            }
            None => os.delete(&path).await.unwrap(),
        }
        let report = store.verify(cid(2)).await.unwrap();
        assert_eq!(report.damaged.len(), 1, "{report}");
        let d = &report.damaged[0];
        assert_eq!(
            (d.checkpoint, d.object.as_ref(), d.blob.as_str()),
            (cid(2), Some(&oid(name)), &*loc.segment)
        );
        assert!(expect(&d.kind), "{name}: {d}");
        let err = store.read_states(&m2).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("object {name}"))
                && msg.contains(&*loc.segment)
                && msg.contains("checkpoint 2"),
            "{msg}"
        );
        assert!(store.read_state(&loc).await.is_err());
        let line = store.recovery_line().await.unwrap().unwrap();
        assert_eq!(line.manifest.id, cid(1));
        assert_eq!(line.skipped.len(), 1);
        assert_eq!(line.skipped[0].damaged, report.damaged);
        // A coordinator's check reads no entry: a cut or missing segment fails it, a flipped
        // byte in an entry is found by the host that restores it, which reports the line
        // (`skip`) so that the coordinator falls back past it.
        let referenced = store.recovery_line_referenced(&[]).await.unwrap().unwrap();
        if name == "a" {
            assert_eq!(referenced.manifest.id, cid(2));
            let skipping = store.recovery_line_referenced(&[cid(2)]).await.unwrap();
            assert_eq!(skipping.unwrap().manifest.id, cid(1));
        } else {
            assert_eq!(referenced.manifest.id, cid(1), "{name}");
            assert_eq!(referenced.skipped.len(), 1, "{name}");
            let d = &referenced.skipped[0].damaged[0];
            assert_eq!((d.blob.as_str(), d.checkpoint), (&*loc.segment, cid(2)));
            assert!(expect(&d.kind), "{name}: {d}");
        }
        assert_eq!(
            values(store, &line.manifest).await,
            BTreeMap::from([("a".into(), 1), ("b".into(), 2), ("c".into(), 3)])
        );
        // Put it back: the store is as before, and nothing else was touched.
        os.put(&path, good.into()).await.unwrap();
        assert_eq!(snapshot_keys(store).await, original);
        assert!(store.verify(cid(2)).await.unwrap().is_ok());
    }
}

fn frame(magic: &[u8; 8], version: u16, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Damaged and crafted manifests: precise errors, recovery falls back, nothing else is
/// touched. (A manifest of a newer format is not damaged: see [`future_format`].)
pub async fn bad_manifests(store: &CheckpointStore) {
    let (os, _) = store.object_store();
    let m1 = commit_incremental(store, 1, None, &[("a", 1)]).await;
    let m2 = commit_incremental(store, 2, Some(&m1), &[("a", 2)]).await;
    let key = "manifests/00000000000000000002.manifest";
    let path = store.path_of(key);
    let good = os.get(&path).await.unwrap().bytes().await.unwrap();
    let body: Vec<u8> = rmp_serde::to_vec_named(&m2).unwrap();

    #[derive(serde::Serialize)]
    struct Crafted<'a> {
        id: u64,
        epoch: u64,
        created_at_ms: u64,
        parent: Option<u64>,
        kind: &'a ManifestKind,
        round: &'a str,
        objects: BTreeMap<&'a str, &'a ObjectEntry>,
    }
    let a = &m2.objects[&oid("a")];
    let escaping_object = rmp_serde::to_vec_named(&Crafted {
        id: 2,
        epoch: 1,
        created_at_ms: 0,
        parent: None,
        kind: &m2.kind,
        round: "e1-r2",
        objects: BTreeMap::from([("../../etc/passwd", a)]),
    })
    .unwrap();
    let mut escaping_segment = m2.clone();
    escaping_segment
        .objects
        .get_mut(&oid("a"))
        .unwrap()
        .location
        .segment = "../../../etc/passwd".into();
    let escaping_segment = rmp_serde::to_vec_named(&escaping_segment).unwrap();

    let mut flipped = good.to_vec();
    flipped[30] ^= 0x40;
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("bad crc", flipped, |e| {
            matches!(
                e.damage().map(|d| &d.kind),
                Some(DamageKind::CrcMismatch { .. })
            )
        }),
        ("truncated", good[..good.len() - 7].to_vec(), |e| {
            matches!(
                e.damage().map(|d| &d.kind),
                Some(DamageKind::Truncated { .. })
            )
        }),
        (
            "escaping object id",
            frame(b"COHMAN\0\x01", 1, 2, &escaping_object),
            |e| matches!(e.damage().map(|d| &d.kind), Some(DamageKind::Undecodable(m)) if m.contains("path separator")),
        ),
        (
            "escaping segment key",
            frame(b"COHMAN\0\x01", 1, 2, &escaping_segment),
            |e| matches!(e.damage().map(|d| &d.kind), Some(DamageKind::HeaderMismatch(m)) if m.contains("etc/passwd")),
        ),
        (
            "another checkpoint's manifest",
            frame(b"COHMAN\0\x01", 1, 1, &body),
            |e| {
                matches!(
                    e.damage().map(|d| &d.kind),
                    Some(DamageKind::HeaderMismatch(_))
                )
            },
        ),
    ];
    for (what, bytes, expect) in cases {
        os.put(&path, bytes.into()).await.unwrap();
        let before = snapshot_keys(store).await;
        let err = store.read_manifest(cid(2)).await.unwrap_err();
        assert!(expect(&err), "{what}: {err}");
        if let Some(d) = err.damage() {
            assert_eq!((d.checkpoint, d.blob.as_str()), (cid(2), key), "{what}");
        }
        assert!(err.to_string().contains(key), "{what}: {err}");
        let report = store.verify(cid(2)).await.unwrap();
        assert!(!report.is_ok(), "{what}");
        let line = store.recovery_line().await.unwrap().unwrap();
        assert_eq!(line.manifest.id, cid(1), "{what}");
        assert_eq!(
            snapshot_keys(store).await,
            before,
            "{what}: a read changed the store"
        );
    }
    os.put(&path, good.into()).await.unwrap();
    assert_eq!(
        store.recovery_line().await.unwrap().unwrap().manifest.id,
        cid(2)
    );
}

/// GC keeps what retained manifests reference (incremental references included), deletes
/// aborted and expired blobs, and leaves in-flight checkpoints alone.
pub async fn gc_safety(store: &CheckpointStore) {
    let m1 = commit_incremental(store, 1, None, &[("a", 1), ("b", 2), ("c", 3)]).await;
    // An aborted attempt of checkpoint 2.
    let mut w = store.segment_writer(cid(2), "e1-aborted", "w-a");
    w.add(&oid("a"), &Snapshot::new("Value", 1, 99u64))
        .await
        .unwrap();
    w.finish().await.unwrap();
    let m2 = commit_incremental(store, 2, Some(&m1), &[("a", 10)]).await;
    let m3 = commit_incremental(store, 3, Some(&m2), &[("b", 20)]).await;
    // Checkpoint 4 is being written.
    let mut w4 = store.segment_writer(cid(4), "e1-r4", "w-c");
    let c4 = w4
        .add(&oid("c"), &Snapshot::new("Value", 1, 30u64))
        .await
        .unwrap();
    w4.finish().await.unwrap();

    let dry = store.gc(1, true).await.unwrap();
    assert!(dry.dry_run);
    let deleted: Vec<&str> = dry.deleted.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        deleted,
        vec![
            &*m1.objects[&oid("a")].location.segment,
            &*m1.objects[&oid("b")].location.segment,
            "segments/00000000000000000002/e1-aborted/w-a-000000.seg",
        ]
    );
    assert_eq!(dry.expired, vec![cid(1), cid(2)]);
    assert_eq!(dry.retained, vec![cid(3)]);
    assert_eq!(
        store.committed_ids().await.unwrap(),
        vec![cid(1), cid(2), cid(3)]
    );

    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.deleted, dry.deleted);
    assert_eq!(
        report.bytes_freed,
        dry.deleted.iter().map(|d| d.bytes).sum::<u64>()
    );
    assert_eq!(store.committed_ids().await.unwrap(), vec![cid(3)]);
    assert_eq!(
        values(store, &m3).await,
        BTreeMap::from([("a".into(), 10), ("b".into(), 20), ("c".into(), 3)])
    );
    assert!(store.verify(cid(3)).await.unwrap().is_ok());
    // An expired id is a tombstone: a stale writer is fenced there.
    let err = store.commit(&m2).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(matches!(
        store.read_manifest(cid(1)).await,
        Err(Error::NotFound { .. })
    ));

    // The in-flight checkpoint commits after GC, incrementally on top of checkpoint 3.
    let mut m4 = m3.clone();
    m4.id = cid(4);
    m4.parent = Some(cid(3));
    m4.round = "e1-r4".into();
    m4.objects.insert(oid("c"), entry("Value", c4));
    store.commit(&m4).await.unwrap();
    assert!(store.verify(cid(4)).await.unwrap().is_ok());

    // Pins outlive `keep`.
    store.pin(cid(3)).await.unwrap();
    let m5 = commit_incremental(store, 5, Some(&m4), &[("a", 100), ("b", 200), ("c", 300)]).await;
    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.retained, vec![cid(3), cid(5)]);
    assert_eq!(report.expired, vec![cid(4)]);
    assert!(store.verify(cid(3)).await.unwrap().is_ok());
    assert!(store.verify(cid(5)).await.unwrap().is_ok());
    assert_eq!(values(store, &m5).await["c"], 300);
    store.unpin(cid(3)).await.unwrap();
    assert!(matches!(
        store.gc(0, false).await,
        Err(Error::InvalidInput(_))
    ));
}

/// GC and `discard_round` delete only the keys they parse as segments of the layout: a
/// stray file under `segments/<id>/` (a README, an editor's backup, a key of another form)
/// is not theirs, however old its directory.
pub async fn gc_leaves_strays(store: &CheckpointStore) {
    let m1 = commit_incremental(store, 1, None, &[("a", 1)]).await;
    let mut w = store.segment_writer(cid(2), "e1-aborted", "w");
    w.add(&oid("a"), &Snapshot::new("Value", 1, 2u64))
        .await
        .unwrap();
    let aborted = w.finish().await.unwrap().segments[0].key.clone();
    let strays = [
        "segments/00000000000000000001/README.txt",
        "segments/00000000000000000001/e1-r1/notes.txt",
        "segments/00000000000000000001/e1-r1/w-a-000000.seg.bak",
        "segments/00000000000000000001/e1-r1/deeper/w-000000.seg",
        "segments/00000000000000000002/e1-aborted/w.c-000000.seg",
        "segments/00000000000000000002/e1-aborted/w-00000x.seg",
        "segments/1/e1-r1/w-000000.seg",
    ];
    let (os, _) = store.object_store();
    for key in strays {
        os.put(
            &store.path_of(key),
            PutPayload::from_static(b"not a segment"),
        )
        .await
        .unwrap();
    }
    commit_incremental(store, 2, Some(&m1), &[("a", 3)]).await;
    commit_incremental(store, 3, None, &[("a", 4)]).await;

    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.expired, vec![cid(1), cid(2)]);
    let deleted: Vec<&str> = report.deleted.iter().map(|d| d.key.as_str()).collect();
    assert!(deleted.contains(&aborted.as_str()), "{deleted:?}");
    assert!(
        deleted.contains(&&*m1.objects[&oid("a")].location.segment),
        "{deleted:?}"
    );
    for key in strays {
        assert!(!deleted.contains(&key), "gc deleted the stray {key}");
        assert!(
            os.head(&store.path_of(key)).await.is_ok(),
            "gc deleted the stray {key}"
        );
    }
    // A second run finds nothing more of its own to delete.
    assert!(store.gc(1, false).await.unwrap().deleted.is_empty());

    // discard_round likewise.
    let mut w = store.segment_writer(cid(4), "e1-r4a", "w");
    w.add(&oid("a"), &Snapshot::new("Value", 1, 5u64))
        .await
        .unwrap();
    w.finish().await.unwrap();
    let stray = "segments/00000000000000000004/e1-r4a/README.txt";
    os.put(&store.path_of(stray), PutPayload::from_static(b"mine"))
        .await
        .unwrap();
    assert_eq!(store.discard_round(cid(4), "e1-r4a").await.unwrap(), 1);
    assert!(os.head(&store.path_of(stray)).await.is_ok());
}

/// A retention window keeps every checkpoint created within it besides the newest `keep`,
/// and what they reference; the walk ends at the first older one.
pub async fn gc_retention_window(store: &CheckpointStore) {
    // Created at 1 s, 2 s, ... 6 s (Unix ms 1000 * id).
    let mut previous: Option<Manifest> = None;
    for id in 1..=6 {
        let changed = if id == 1 {
            vec![("a", 1), ("b", 1)]
        } else {
            vec![("b", id)]
        };
        previous = Some(commit_incremental(store, id, previous.as_ref(), &changed).await);
    }
    let six = previous.unwrap();
    // At 6.0 s, a 2.5 s window reaches back to 3.5 s: checkpoint 4, besides the newest 2.
    let policy = Retention::newest(2).within(Duration::from_millis(2_500));
    let dry = store.gc_with(policy, 6_000, true).await.unwrap();
    assert_eq!(dry.retained, vec![cid(4), cid(5), cid(6)]);
    assert_eq!(dry.expired, vec![cid(1), cid(2), cid(3)]);
    let report = store.gc_with(policy, 6_000, false).await.unwrap();
    assert_eq!(report.expired, dry.expired);
    assert_eq!(
        store.committed_ids().await.unwrap(),
        vec![cid(4), cid(5), cid(6)]
    );
    // Checkpoint 4 still reads `a` from checkpoint 1's segment.
    let four = store.read_manifest(cid(4)).await.unwrap();
    assert_eq!(
        values(store, &four).await,
        BTreeMap::from([("a".into(), 1), ("b".into(), 4)])
    );
    assert!(store.verify(cid(4)).await.unwrap().is_ok());
    assert_eq!(values(store, &six).await["b"], 6);
    // Later, the window holds only the newest: `keep` alone decides.
    let report = store.gc_with(policy, 60_000, false).await.unwrap();
    assert_eq!(report.retained, vec![cid(5), cid(6)]);
    assert_eq!(report.expired, vec![cid(4)]);
}

/// The create-if-absent probe passes on the backend, and refuses the same backend when it is
/// made to ignore create-if-absent, unless the user opts out.
pub async fn probe(store: &CheckpointStore) {
    store.probe_create_if_absent().await.unwrap();
    let (os, prefix) = store.object_store();
    let faulty = FaultyStore::new(Arc::clone(os));
    faulty.ignore_create_if_absent(true);
    let faulty: Arc<dyn ObjectStore> = Arc::new(faulty);
    let unsafe_store = CheckpointStore::from_object_store(
        Arc::clone(&faulty),
        prefix.clone(),
        StoreOptions::default(),
    );
    let err = unsafe_store.probe_create_if_absent().await.unwrap_err();
    assert!(matches!(err, Error::UnsafeStore { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("If-None-Match") && msg.contains("allow_unsafe_conditional_put"),
        "{msg}"
    );
    let opted_out = CheckpointStore::from_object_store(
        faulty,
        prefix.clone(),
        StoreOptions {
            allow_unsafe_conditional_put: true,
            ..StoreOptions::default()
        },
    );
    opted_out.probe_create_if_absent().await.unwrap();
    // The probe leaves no scratch key behind.
    let left: Vec<_> = os
        .list(Some(&store.path_of("probe")))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------------------------------
// Delta manifests

/// Objects of the delta cases: enough that one changed object is well under a quarter.
const WIDE: usize = 16;

fn wide(i: usize) -> ObjectId {
    oid(&format!("o{i:02}"))
}

/// Commits checkpoint `id` at epoch 1: without `prev`, all `WIDE` objects with value 1;
/// otherwise `prev`'s entries with the objects of `changed` rewritten (one segment).
async fn commit_wide(
    store: &CheckpointStore,
    id: u64,
    prev: Option<&Manifest>,
    changed: &[(usize, u64)],
) -> Manifest {
    let round = format!("e1-r{id}");
    let mut m = Manifest::new(cid(id), 1, 1_000 * id, &round);
    let all: Vec<(usize, u64)> = (0..WIDE).map(|i| (i, 1)).collect();
    let changed = match prev {
        Some(prev) => {
            m.parent = Some(prev.id);
            m.objects = prev.objects.clone();
            changed
        }
        None => &all,
    };
    let mut w = store.segment_writer(cid(id), &round, "w");
    for &(i, value) in changed {
        let location = w
            .add(&wide(i), &Snapshot::new("Value", 1, value))
            .await
            .unwrap();
        m.objects.insert(wide(i), entry("Value", location));
    }
    w.finish().await.unwrap();
    store.commit(&m).await.unwrap();
    m
}

/// Another handle on the same store: nothing cached, as after a restart.
fn cold(store: &CheckpointStore) -> CheckpointStore {
    let (os, prefix) = store.object_store();
    CheckpointStore::from_object_store(Arc::clone(os), prefix.clone(), store.options().clone())
}

fn manifest_key(id: u64) -> String {
    format!("manifests/{}.manifest", cid(id).padded())
}

async fn raw_manifest(store: &CheckpointStore, id: u64) -> Bytes {
    let (os, _) = store.object_store();
    let path = store.path_of(&manifest_key(id));
    os.get(&path).await.unwrap().bytes().await.unwrap()
}

/// A manifest of few changes is stored as a delta of the newest full manifest, and reads back
/// as the full manifest that was committed, also through a handle with nothing cached, which
/// also commits deltas (reading the previous manifest and its base once).
pub async fn delta_round_trip(store: &CheckpointStore) {
    let m1 = commit_wide(store, 1, None, &[]).await;
    assert_eq!(store.manifest_base(cid(1)).await.unwrap(), None);
    let m2 = commit_wide(store, 2, Some(&m1), &[(3, 30)]).await;
    assert_eq!(store.manifest_base(cid(2)).await.unwrap(), Some(cid(1)));
    let (full, delta) = (raw_manifest(store, 1).await, raw_manifest(store, 2).await);
    // Both carry the header fields and the segments table (one 55-byte key here), which is most
    // of a compact manifest of 16 objects: the delta is under half of it, not a sixteenth.
    assert!(
        delta.len() * 2 < full.len(),
        "a delta of one changed object of {WIDE} takes {} bytes, the full manifest {}",
        delta.len(),
        full.len()
    );
    // Format version 4 for a delta, so that a build that reads only version 3 or older refuses
    // it; a full manifest is version 3.
    assert_eq!((&full[8..10], &delta[8..10]), (&[3, 0][..], &[4, 0][..]));
    assert_eq!(store.read_manifest(cid(2)).await.unwrap(), m2);

    // One object removed, one added.
    let mut m3 = m2.clone();
    m3.id = cid(3);
    m3.parent = Some(cid(2));
    m3.round = "e1-r3".into();
    m3.objects.remove(&wide(5));
    let mut w = store.segment_writer(cid(3), "e1-r3", "w");
    let location = w
        .add(&oid("extra"), &Snapshot::new("Value", 1, 7u64))
        .await
        .unwrap();
    w.finish().await.unwrap();
    m3.objects.insert(oid("extra"), entry("Value", location));
    store.commit(&m3).await.unwrap();
    assert_eq!(store.manifest_base(cid(3)).await.unwrap(), Some(cid(1)));
    assert_eq!(store.read_manifest(cid(3)).await.unwrap(), m3);

    let fresh = cold(store);
    assert_eq!(fresh.read_manifest(cid(3)).await.unwrap(), m3);
    let line = fresh.recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest, m3);
    let got = values(&fresh, &m3).await;
    assert_eq!((got.len(), got["o03"], got["extra"]), (WIDE, 30, 7));
    assert!(!got.contains_key("o05"));
    let m4 = commit_wide(&cold(store), 4, Some(&m3), &[(3, 31)]).await;
    assert_eq!(fresh.manifest_base(cid(4)).await.unwrap(), Some(cid(1)));
    assert_eq!(store.read_manifest(cid(4)).await.unwrap(), m4);
    let reports = store.verify_all().await.unwrap();
    assert!(reports.iter().all(|r| r.is_ok()), "{reports:?}");
    assert_eq!(reports[3].entries, WIDE);

    // Crafted deltas: one that escapes the layout, one whose base is not earlier, one that
    // removes what its base does not hold. Each is damaged; recovery stays on checkpoint 4.
    let (os, _) = store.object_store();
    let base_crc = crate::format::frame_crc(&raw_manifest(store, 1).await);
    let mut escaping = m1.objects[&wide(0)].clone();
    escaping.location.segment = "../../../etc/passwd".into();
    let (o00, stranger) = (wide(0), oid("stranger"));
    for (what, expect) in [
        ("escaping segment key", "etc/passwd"),
        ("base not earlier", "not an earlier checkpoint"),
        ("removes a stranger", "stranger"),
    ] {
        let mut body = crate::manifest::DeltaBody {
            id: cid(5),
            epoch: 1,
            created_at_ms: 5_000,
            parent: Some(cid(4)),
            kind: &ManifestKind::Checkpoint,
            round: "e1-r5",
            base: cid(1),
            base_crc,
            objects: crate::manifest::EntryMap(Vec::new()),
            removed: Vec::new(),
            in_transit: &[],
            metadata: &m4.metadata,
        };
        match what {
            "escaping segment key" => body.objects.0.push((&o00, &escaping)),
            "base not earlier" => body.base = cid(5),
            _ => body.removed.push(&stranger),
        }
        let bytes = crate::format::encode_delta(&body).unwrap();
        os.put(&store.path_of(&manifest_key(5)), bytes.into())
            .await
            .unwrap();
        let err = cold(store).read_manifest(cid(5)).await.unwrap_err();
        let d = err.damage().unwrap_or_else(|| panic!("{what}: {err}"));
        assert_eq!(d.blob, manifest_key(5), "{what}");
        assert!(err.to_string().contains(expect), "{what}: {err}");
        let line = store.recovery_line().await.unwrap().unwrap();
        assert_eq!(
            (line.manifest.id, line.skipped.len()),
            (cid(4), 1),
            "{what}"
        );
        os.delete(&store.path_of(&manifest_key(5))).await.unwrap();
    }
}

/// Deltas grow as changes accumulate against their base; at a quarter of the manifest the
/// manifest is written whole and becomes the base of the next ones.
pub async fn delta_base_rewritten(store: &CheckpointStore) {
    let m1 = commit_wide(store, 1, None, &[]).await;
    let m2 = commit_wide(store, 2, Some(&m1), &[(0, 2)]).await;
    let m3 = commit_wide(store, 3, Some(&m2), &[(1, 3)]).await;
    // Four of sixteen differ from checkpoint 1: not fewer than a quarter.
    let m4 = commit_wide(store, 4, Some(&m3), &[(2, 4), (3, 4)]).await;
    let m5 = commit_wide(store, 5, Some(&m4), &[(4, 5)]).await;
    // Nothing changed at all: an empty delta.
    let mut m6 = m5.clone();
    m6.id = cid(6);
    m6.parent = Some(cid(5));
    m6.round = "e1-r6".into();
    store.commit(&m6).await.unwrap();
    let mut bases = Vec::new();
    for id in 1..=6 {
        bases.push(store.manifest_base(cid(id)).await.unwrap().map(|b| b.get()));
    }
    assert_eq!(bases, [None, Some(1), Some(1), None, Some(4), Some(4)]);
    let fresh = cold(store);
    for m in [&m1, &m2, &m3, &m4, &m5, &m6] {
        assert_eq!(&fresh.read_manifest(m.id).await.unwrap(), m);
    }
    let got = values(&fresh, &m6).await;
    assert_eq!(
        (got["o00"], got["o01"], got["o03"], got["o04"], got["o05"]),
        (2, 3, 4, 5, 1)
    );
}

/// A delta whose base is damaged, missing, expired or replaced is unreadable, named with both
/// manifests' keys, and the recovery line falls back past it as past any damaged manifest.
/// Only the manifest read is affected: nothing is changed in the store.
pub async fn delta_unusable_base(store: &CheckpointStore) {
    let (os, _) = store.object_store();
    let m1 = commit_wide(store, 1, None, &[]).await;
    let all: Vec<(usize, u64)> = (0..WIDE).map(|i| (i, 2)).collect();
    let m2 = commit_wide(store, 2, Some(&m1), &all).await;
    let m3 = commit_wide(store, 3, Some(&m2), &[(0, 3)]).await;
    commit_wide(store, 4, Some(&m3), &[(1, 4)]).await;
    assert_eq!(store.manifest_base(cid(4)).await.unwrap(), Some(cid(2)));
    let base_key = manifest_key(2);
    let path = store.path_of(&base_key);
    let good = raw_manifest(store, 2).await;
    let mut flipped = good.to_vec();
    flipped[40] ^= 0x01;
    let mut other = m2.clone();
    other.created_at_ms += 1;
    let other = crate::format::encode_manifest(&other).unwrap();
    let tombstone = crate::format::tombstone(cid(2)).to_vec();

    struct Case {
        what: &'static str,
        /// The base's bytes, or `None` to delete it.
        bytes: Option<Vec<u8>>,
        /// The base's damage.
        expect: fn(&DamageKind) -> bool,
        /// The recovery line then, and the checkpoints skipped on the way.
        line: u64,
        skipped: Vec<u64>,
    }
    let cases = [
        Case {
            what: "flipped bit",
            bytes: Some(flipped),
            expect: |k| matches!(k, DamageKind::CrcMismatch { .. }),
            line: 1,
            skipped: vec![4, 3, 2],
        },
        Case {
            what: "another manifest in its slot",
            bytes: Some(other),
            expect: |k| matches!(k, DamageKind::CrcMismatch { .. }),
            line: 2,
            skipped: vec![4, 3],
        },
        Case {
            what: "deleted",
            bytes: None,
            expect: |k| matches!(k, DamageKind::Missing),
            line: 1,
            skipped: vec![4, 3],
        },
        Case {
            what: "tombstone",
            bytes: Some(tombstone),
            expect: |k| matches!(k, DamageKind::HeaderMismatch(m) if m.contains("tombstone")),
            line: 1,
            skipped: vec![4, 3],
        },
    ];
    for Case {
        what,
        bytes,
        expect,
        line: line_id,
        skipped,
    } in cases
    {
        match bytes {
            Some(b) => os.put(&path, b.into()).await.map(|_| ()).unwrap(),
            None => os.delete(&path).await.unwrap(),
        }
        let before = snapshot_keys(store).await;
        let err = cold(store).read_manifest(cid(4)).await.unwrap_err();
        let d = err.damage().unwrap_or_else(|| panic!("{what}: {err}"));
        assert_eq!(
            (d.checkpoint, d.blob.as_str()),
            (cid(4), manifest_key(4).as_str())
        );
        match &d.kind {
            DamageKind::BaseUnusable { base, kind } => {
                assert_eq!(base, &base_key, "{what}");
                assert!(expect(kind), "{what}: {kind}");
            }
            other => panic!("{what}: {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&base_key) && msg.contains(&manifest_key(4)),
            "{what}: {msg}"
        );
        // `store` has the base cached, yet verification reads what is stored.
        let report = store.verify(cid(4)).await.unwrap();
        assert_eq!(report.damaged.len(), 1, "{what}: {report}");
        assert!(
            matches!(report.damaged[0].kind, DamageKind::BaseUnusable { .. }),
            "{what}"
        );
        let line = store.recovery_line().await.unwrap().unwrap();
        assert_eq!(line.manifest.id, cid(line_id), "{what}");
        let skipped_ids: Vec<u64> = line.skipped.iter().map(|r| r.checkpoint.get()).collect();
        assert_eq!(skipped_ids, skipped, "{what}");
        assert!(line.skipped[0].to_string().contains(&base_key), "{what}");
        assert_eq!(
            snapshot_keys(store).await,
            before,
            "{what}: a read changed the store"
        );
        os.put(&path, good.clone().into()).await.unwrap();
        assert_eq!(
            store.recovery_line().await.unwrap().unwrap().manifest.id,
            cid(4)
        );
    }
}

/// GC never expires the full manifest a kept delta is stored against, and keeps every blob
/// the resolved delta references; once no kept delta uses a base, it expires like any other.
pub async fn delta_gc_keeps_bases(store: &CheckpointStore) {
    let m1 = commit_wide(store, 1, None, &[]).await;
    let m2 = commit_wide(store, 2, Some(&m1), &[(0, 2)]).await;
    let m3 = commit_wide(store, 3, Some(&m2), &[(0, 3)]).await;
    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.retained, vec![cid(1), cid(3)]);
    assert_eq!(report.expired, vec![cid(2)]);
    let deleted: Vec<&str> = report.deleted.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(deleted, vec![&*m2.objects[&wide(0)].location.segment]);
    let fresh = cold(store);
    assert!(fresh.verify(cid(3)).await.unwrap().is_ok());
    assert!(fresh.verify(cid(1)).await.unwrap().is_ok());
    assert_eq!(values(&fresh, &m3).await["o00"], 3);

    // A pinned delta keeps its base however old both get.
    store.pin(cid(3)).await.unwrap();
    let all: Vec<(usize, u64)> = (0..WIDE).map(|i| (i, 4)).collect();
    let m4 = commit_wide(store, 4, Some(&m3), &all).await;
    let m5 = commit_wide(store, 5, Some(&m4), &[(1, 5)]).await;
    assert_eq!(store.manifest_base(cid(5)).await.unwrap(), Some(cid(4)));
    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.retained, vec![cid(1), cid(3), cid(4), cid(5)]);
    assert!(report.expired.is_empty(), "{report:?}");
    store.unpin(cid(3)).await.unwrap();
    let report = store.gc(1, false).await.unwrap();
    assert_eq!(report.retained, vec![cid(4), cid(5)]);
    assert_eq!(report.expired, vec![cid(1), cid(3)]);
    let fresh = cold(store);
    assert!(fresh.verify(cid(5)).await.unwrap().is_ok());
    assert_eq!(values(&fresh, &m5).await["o01"], 5);
}

/// Deltas obey the commit rules of any manifest: create-only, a retried commit finds its own
/// create, a rival is refused, and a stale epoch is fenced; fences and rollbacks are stored as
/// deltas when little differs, and read back whole.
pub async fn delta_fencing(store: &CheckpointStore) {
    let m1 = commit_wide(store, 1, None, &[]).await;
    let m2 = commit_wide(store, 2, Some(&m1), &[(0, 2)]).await;
    assert_eq!(store.manifest_base(cid(2)).await.unwrap(), Some(cid(1)));
    store
        .commit(&m2)
        .await
        .expect("a retried delta commit must find its own create");
    let mut rival = m2.clone();
    rival.round = "e1-rival".into();
    assert!(matches!(
        store.commit(&rival).await,
        Err(Error::Conflict { .. })
    ));

    let old_leader = cold(store);
    assert_eq!(store.claim_epoch("old", 1).await.unwrap().epoch, 1);
    assert_eq!(store.claim_epoch("new", 2).await.unwrap().epoch, 2);
    let fence = written(
        store
            .fence(&FenceRequest::new(2, 3_000, FenceLine::Newest))
            .await,
    );
    assert_eq!((fence.id, fence.kind), (cid(3), ManifestKind::Fence));
    assert_eq!(store.manifest_base(cid(3)).await.unwrap(), Some(cid(1)));
    assert_eq!(store.read_manifest(cid(3)).await.unwrap(), fence);
    assert_eq!(fence.objects, m2.objects);

    // The deposed leader's next checkpoint (a delta) lands on the fence's id.
    let mut stale = m2.clone();
    stale.id = cid(3);
    stale.parent = Some(cid(2));
    stale.round = "e1-r3".into();
    stale.objects.remove(&wide(9));
    let err = old_leader.commit(&stale).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    let err = store.commit(&stale).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");

    let id = store.rollback(cid(1), 2, 4_000).await.unwrap();
    assert_eq!(store.manifest_base(id).await.unwrap(), Some(cid(1)));
    let rollback = cold(store).read_manifest(id).await.unwrap();
    assert_eq!(rollback.kind, ManifestKind::Rollback { to: cid(1) });
    assert_eq!(rollback.objects, m1.objects);
    assert_eq!(values(store, &rollback).await["o00"], 1);
}

/// A manifest, a delta's base or a segment written by a newer format version is not damage:
/// the recovery line, fences, rollbacks and GC refuse with [`Error::FutureFormat`] (naming the
/// blob and its version, and saying to upgrade) rather than fall back past it, and change
/// nothing. Damaged manifests still fall back, also when they are newer than the future one.
pub async fn future_format(store: &CheckpointStore) {
    let (os, _) = store.object_store();
    let newer = crate::FORMAT_VERSION + 1;
    let m1 = commit_wide(store, 1, None, &[]).await;
    let m2 = commit_wide(store, 2, Some(&m1), &[(1, 2)]).await;
    let m3 = commit_wide(store, 3, Some(&m2), &[(2, 3)]).await;
    assert_eq!(store.manifest_base(cid(3)).await.unwrap(), Some(cid(1)));

    // Checkpoint 4, as a later cohort might write it: a header of the next format version
    // around a body this build has never seen.
    let key4 = manifest_key(4);
    let future = frame(b"COHMAN\0\x01", newer, 4, b"\x81\xa7unknown\xc0");
    os.put(&store.path_of(&key4), future.into()).await.unwrap();
    let is_newer = |e: &Error, blob: &str| {
        matches!(e, Error::FutureFormat { blob: b, found, supported, .. }
            if b == blob && *found == newer && *supported == crate::FORMAT_VERSION)
            && e.to_string().contains(blob)
            && e.to_string().contains(&format!("format version {newer}"))
            && e.to_string().contains("upgrade cohort to read it")
    };
    let before = snapshot_keys(store).await;
    for reader in [store.clone(), cold(store)] {
        let err = reader.read_manifest(cid(4)).await.unwrap_err();
        assert!(is_newer(&err, &key4), "{err}");
        // Not checkpoint 3: that would roll back past a committed line.
        let err = reader.recovery_line().await.unwrap_err();
        assert!(is_newer(&err, &key4), "recovery line: {err}");
        let err = reader
            .fence(&FenceRequest::new(2, 9_000, FenceLine::Newest))
            .await
            .unwrap_err();
        assert!(is_newer(&err, &key4), "fence: {err}");
        let err = reader.rollback(cid(2), 2, 9_000).await.unwrap_err();
        assert!(is_newer(&err, &key4), "rollback: {err}");
        for dry_run in [true, false] {
            let err = reader.gc(1, dry_run).await.unwrap_err();
            assert!(is_newer(&err, &key4), "gc: {err}");
        }
        // Verification reports it without failing, with its own kind.
        let report = reader.verify(cid(4)).await.unwrap();
        assert_eq!(report.damaged.len(), 1, "{report}");
        assert_eq!(report.damaged[0].blob, key4);
        assert_eq!(
            report.damaged[0].kind,
            DamageKind::FutureFormat {
                found: newer,
                supported: crate::FORMAT_VERSION
            }
        );
        assert_eq!(reader.verify_all().await.unwrap().len(), 4);
        assert_eq!(
            snapshot_keys(store).await,
            before,
            "a refusal changed the store"
        );
    }
    // A rollback to a line after it is fine: it moves past nothing this build cannot read.
    let m5 = commit_wide(store, 5, Some(&m3), &[(3, 5)]).await;
    assert_eq!(store.recovery_line().await.unwrap().unwrap().manifest, m5);
    let id = store.rollback(cid(5), 2, 9_000).await.unwrap();
    assert_eq!(
        store.recovery_line().await.unwrap().unwrap().manifest.id,
        id
    );
    // Damaged manifests newer than it are skipped, and recovery stops at the future one.
    for id in [5, 6] {
        let mut flipped = raw_manifest(store, id).await.to_vec();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x10;
        os.put(&store.path_of(&manifest_key(id)), flipped.into())
            .await
            .unwrap();
    }
    let err = store.recovery_line().await.unwrap_err();
    assert!(is_newer(&err, &key4), "{err}");

    // Damage still falls back: a truncated checkpoint 4 is skipped like the others.
    let truncated = frame(b"COHMAN\0\x01", newer, 4, b"\x81\xa7unknown\xc0");
    os.put(
        &store.path_of(&key4),
        truncated[..truncated.len() - 3].to_vec().into(),
    )
    .await
    .unwrap();
    let line = store.recovery_line().await.unwrap().unwrap();
    assert_eq!(line.manifest, m3);
    let skipped: Vec<u64> = line.skipped.iter().map(|r| r.checkpoint.get()).collect();
    assert_eq!(skipped, [6, 5, 4]);
    assert!(matches!(
        line.skipped[2].damaged[0].kind,
        DamageKind::Truncated { .. }
    ));

    // The base of the newest delta, rewritten by a newer cohort: named, not skipped.
    let key1 = manifest_key(1);
    let base = raw_manifest(store, 1).await;
    let body = rmp_serde::to_vec_named(&m1).unwrap();
    os.put(
        &store.path_of(&key1),
        frame(b"COHMAN\0\x01", newer, 1, &body).into(),
    )
    .await
    .unwrap();
    let err = cold(store).read_manifest(cid(3)).await.unwrap_err();
    assert!(is_newer(&err, &key1), "{err}");
    let err = cold(store).recovery_line().await.unwrap_err();
    assert!(is_newer(&err, &key1), "{err}");
    let report = cold(store).verify(cid(3)).await.unwrap();
    assert_eq!(report.damaged[0].blob, key1, "{report}");
    assert!(matches!(
        report.damaged[0].kind,
        DamageKind::FutureFormat { .. }
    ));
    os.put(&store.path_of(&key1), base.into()).await.unwrap();

    // A segment of the newest line, of a newer segment format: the same.
    let segment = m3.objects[&wide(2)].location.segment.clone();
    let seg_path = store.path_of(&segment);
    let good = os.get(&seg_path).await.unwrap().bytes().await.unwrap();
    let mut bumped = good.to_vec();
    bumped[8..10].copy_from_slice(&2u16.to_le_bytes());
    let header_crc = crc32fast::hash(&bumped[0..18]);
    bumped[18..22].copy_from_slice(&header_crc.to_le_bytes());
    os.put(&seg_path, bumped.into()).await.unwrap();
    let err = store.recovery_line().await.unwrap_err();
    assert!(
        matches!(&err, Error::FutureFormat { blob, found: 2, supported: 1, .. } if **blob == *segment),
        "{err}"
    );
    let err = store.read_states(&m3).await.unwrap_err();
    assert!(matches!(err, Error::FutureFormat { .. }), "{err}");
    os.put(&seg_path, good.into()).await.unwrap();
    assert_eq!(store.recovery_line().await.unwrap().unwrap().manifest, m3);
}

/// The ingress log: acknowledgements only once durable, one write for concurrent inputs,
/// retries deduplicated (across a reopen and a truncation too), reads in order from any
/// position still stored, truncation of what no one needs, damage refused at open, and GC
/// of checkpoints leaves the log alone.
pub async fn ingress_log(store: &CheckpointStore) {
    use crate::ingress::{IngressLog, IngressOptions};
    // One batch in memory: reads of older ones go to the store.
    let options = IngressOptions {
        cached_batches: 1,
        ..IngressOptions::default()
    };
    let log = IngressLog::open(store, "deposits", options.clone())
        .await
        .unwrap();
    assert_eq!((log.first(), log.end()), (0, 0));
    // One writer: on local disk a second open, in this process or another, is refused while
    // this one is open (an object store keeps writers apart by create-only puts instead).
    if store.local_file("ingress").is_some() {
        let refused = IngressLog::open(store, "deposits", options.clone())
            .await
            .unwrap_err();
        let me = format!("pid {} ", std::process::id());
        assert!(
            matches!(&refused, Error::LogWriterElsewhere { log, holder, .. }
                if log == "deposits" && holder.starts_with(&me)),
            "{refused}"
        );
        assert!(refused.is_retryable(), "{refused}");
    }
    let to = oid("account-1");
    let one = log
        .append("c1", 1, to.clone(), Bytes::from_static(b"a"))
        .await
        .unwrap();
    assert_eq!((one.position, one.duplicate), (0, false));
    // 200 concurrent inputs of two clients: all durable, in fewer writes than inputs.
    let appends = (2..=101u64).flat_map(|seq| {
        ["c1", "c2"].into_iter().map({
            let (log, to) = (log.clone(), to.clone());
            move |client| {
                let (log, to) = (log.clone(), to.clone());
                async move {
                    log.append(client, seq, to, Bytes::from(format!("{client}-{seq}")))
                        .await
                        .unwrap()
                }
            }
        })
    });
    let acks = futures::future::join_all(appends).await;
    assert!(acks.iter().all(|a| !a.duplicate));
    assert_eq!(log.end(), 201);
    let blobs = store.list_keys("ingress/deposits").await.unwrap();
    assert!(
        blobs.len() < 100,
        "no group commit: {} batches for 201 inputs",
        blobs.len()
    );
    // A retry is acknowledged as a duplicate with its position, and stores nothing.
    let again = log
        .append("c2", 101, to.clone(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(log.end(), 201);
    // Reads in order from any position, across batches.
    let all = log.read(0, 1000).await.unwrap();
    assert_eq!(all.len(), 201);
    assert!(all.iter().enumerate().all(|(i, r)| r.position == i as u64));
    assert_eq!(&all[0].payload[..], b"a");
    let c1: Vec<u64> = all
        .iter()
        .filter(|r| r.client == "c1")
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        c1,
        (1..=101).collect::<Vec<_>>(),
        "a client's inputs keep their order"
    );
    assert_eq!(log.read(150, 10).await.unwrap()[0].position, 150);
    assert!(log.read(201, 10).await.unwrap().is_empty());

    // Reopened: the end and every client's newest input are read back.
    drop(log);
    let log = IngressLog::open(store, "deposits", options.clone())
        .await
        .unwrap();
    assert_eq!(log.end(), 201);
    assert!(
        log.append("c1", 50, to.clone(), Bytes::new())
            .await
            .unwrap()
            .duplicate
    );
    let next = log
        .append("c1", 102, to.clone(), Bytes::from_static(b"z"))
        .await
        .unwrap();
    assert_eq!((next.position, next.duplicate), (201, false));

    // Truncation keeps every batch (or segment) holding a position at or above the one
    // asked for. Since the reopen, the inputs from 201 on are in a segment of their own.
    let deleted = log.truncate_below(201).await.unwrap();
    assert!(deleted > 0);
    assert_eq!(log.first(), 201);
    assert_eq!(log.read(201, 1).await.unwrap()[0].position, 201);
    assert!(matches!(log.read(0, 1).await, Err(Error::NotFound { .. })));
    drop(log);
    let log = IngressLog::open(store, "deposits", options.clone())
        .await
        .unwrap();
    assert_eq!(log.end(), 202);
    // Dedupe survives the truncation (the client table was saved first).
    assert!(
        log.append("c2", 3, to.clone(), Bytes::new())
            .await
            .unwrap()
            .duplicate
    );
    let report = IngressLog::verify(store, "deposits").await.unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!((report.end, report.clients), (202, 2));
    assert_eq!(
        IngressLog::names(store).await.unwrap(),
        vec!["deposits".to_owned()]
    );

    // GC of checkpoints does not touch the log.
    let m = commit_incremental(store, 1, None, &[("a", 1)]).await;
    commit_incremental(store, 2, Some(&m), &[("a", 2)]).await;
    store.gc(1, false).await.unwrap();
    assert_eq!(
        IngressLog::verify(store, "deposits").await.unwrap().end,
        202
    );

    // A flipped byte in a batch: verify names the blob, open refuses the log.
    drop(log);
    let newest = store.list_keys("ingress/deposits").await.unwrap();
    let batch = newest
        .iter()
        .rev()
        .find(|k| k.ends_with(".log"))
        .unwrap()
        .clone();
    let mut bytes = store.get_raw(&batch).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    store.put_raw(&batch, bytes, false).await.unwrap();
    let report = IngressLog::verify(store, "deposits").await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].blob, batch);
    let refused = IngressLog::open(store, "deposits", options)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Damaged { .. }), "{refused}");
}
