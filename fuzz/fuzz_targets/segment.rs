//! Arbitrary bytes as a segment, read through a manifest that locates entries in it as an
//! honest writer would have: `verify`, `read_states`, `read_in_transit` and `read_state`, which
//! check the header, each entry's crc against the manifest and its trailer, and decode each
//! entry's header (object id, type name, schema version, payload length) and payload.
//!
//! The harness walks the bytes as the entry layout says (ARCHITECTURE.md, "Segment blob") to
//! find where entries would be, and commits a manifest of checkpoint 1 locating them (at most
//! 32). The first input byte picks the repairs: bit 0 sets the header's crc, bit 1 its
//! checkpoint id (1), bit 2 records each entry's actual crc in the manifest (else the one in
//! its trailer), bit 3 also records the first entry as an in-transit message. Seeds:
//! `fuzz/seeds/segment/`.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use cohort_checkpoint::{EntryLocation, InTransitEntry, Manifest, ObjectEntry};
use cohort_object_api::{CheckpointId, ObjectId};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "segments/00000000000000000001/e1-r1/node-1-000000.seg";
const HEADER_LEN: usize = 22;
const MAX_ENTRIES: usize = 32;

/// An entry where the layout puts one: its range, and the header fields that parse.
struct Found {
    offset: usize,
    len: usize,
    object: Option<String>,
    type_name: Option<String>,
    version: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

/// Walks the entries back to back from the header on; the last one may run past the end.
fn walk(bytes: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut at = HEADER_LEN;
    while at + 4 <= bytes.len() && found.len() < MAX_ENTRIES {
        let entry = &bytes[at..];
        let parsed = (|| {
            let n = u16_at(entry, 0)?;
            let object = std::str::from_utf8(entry.get(2..2 + n)?)
                .ok()
                .map(str::to_owned);
            let t = u16_at(entry, 2 + n)?;
            let type_name = std::str::from_utf8(entry.get(4 + n..4 + n + t)?)
                .ok()
                .map(str::to_owned);
            let fixed = 4 + n + t;
            let version = u32::from_le_bytes(entry.get(fixed..fixed + 4)?.try_into().ok()?);
            let payload = u64::from_le_bytes(entry.get(fixed + 4..fixed + 12)?.try_into().ok()?);
            let len = usize::try_from(payload).ok()?.checked_add(fixed + 16)?;
            Some((object, type_name, version, len))
        })();
        let (object, type_name, version, len) = match parsed {
            Some((o, t, v, len)) => (o, t, v, len.min(entry.len())),
            None => (None, None, 0, entry.len()),
        };
        found.push(Found {
            offset: at,
            len,
            object,
            type_name,
            version,
        });
        at += len.max(4);
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, segment)) = data.split_first() else {
        return;
    };
    let mut segment = segment.to_vec();
    if mode & 2 != 0 && segment.len() >= 18 {
        segment[10..18].copy_from_slice(&1u64.to_le_bytes());
    }
    if mode & 1 != 0 && segment.len() >= HEADER_LEN {
        let crc = crc32fast::hash(&segment[..18]);
        segment[18..22].copy_from_slice(&crc.to_le_bytes());
    }
    let id = CheckpointId::new(1);
    let mut manifest = Manifest::new(id, 1, 0, "e1-r1");
    for (i, f) in walk(&segment).into_iter().enumerate() {
        let body = &segment[f.offset..f.offset + f.len - 4];
        let crc = if mode & 4 != 0 {
            crc32fast::hash(body)
        } else {
            u32::from_le_bytes(
                segment[f.offset + f.len - 4..f.offset + f.len]
                    .try_into()
                    .unwrap(),
            )
        };
        let location = EntryLocation {
            segment: KEY.into(),
            offset: f.offset as u64,
            len: f.len as u64,
            crc,
        };
        let object = f
            .object
            .and_then(|o| ObjectId::new(o).ok())
            .filter(|o| !manifest.objects.contains_key(o))
            .unwrap_or_else(|| ObjectId::indexed("entry", i as u64).expect("a valid id"));
        if mode & 8 != 0 && manifest.in_transit.is_empty() {
            manifest.in_transit.push(InTransitEntry {
                from: ObjectId::new("sender").expect("a valid id"),
                to: object.clone(),
                seq: 1,
                location: location.clone(),
            });
        }
        manifest.objects.insert(
            object,
            ObjectEntry {
                type_name: f.type_name.unwrap_or_else(|| "T".to_owned()).into(),
                version: f.version,
                generation: None,
                location,
            },
        );
    }
    common::block_on(async {
        let store = common::store();
        common::put(&store, KEY, segment).await;
        store
            .commit(&manifest)
            .await
            .expect("an honest manifest commits");
        let report = store
            .verify(id)
            .await
            .expect("verify reports damage, it does not fail");
        assert_eq!(
            report.entries,
            manifest.objects.len() + manifest.in_transit.len()
        );
        match store.read_states(&manifest).await {
            Ok(states) => {
                assert!(
                    report.is_ok(),
                    "verify found damage where read_states found none: {report}"
                );
                assert_eq!(states.len(), manifest.objects.len());
                for (object, state) in states {
                    let entry = &manifest.objects[&object];
                    assert_eq!(state.tag().type_name, &*entry.type_name);
                    assert_eq!(state.tag().version, entry.version);
                    let _ = state.decode::<serde::de::IgnoredAny>();
                }
            }
            Err(e) => assert!(
                !report.is_ok(),
                "read_states failed ({e}) where verify passed"
            ),
        }
        let _ = store.read_in_transit(&manifest).await;
        if let Some(entry) = manifest.objects.values().next() {
            let _ = store.read_state(&entry.location).await;
        }
    });
});
