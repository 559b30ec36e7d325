//! The manifest: the single commit point of a checkpoint, and the types it holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use cohort_object_api::{CheckpointId, ObjectId};
use serde::{Deserialize, Serialize};

use crate::error::Damage;

/// The manifest of one committed checkpoint: where every object's state lives, plus what the
/// protocol needs to resume from it.
///
/// Creating it (create-only) is the commit point; see [`CheckpointStore::commit`](crate::CheckpointStore::commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checkpoint id; equals the id in the manifest's key and header.
    pub id: CheckpointId,
    /// The epoch of the coordinator that wrote it.
    pub epoch: u64,
    /// Creation time, Unix milliseconds (from the writer's injected clock).
    pub created_at_ms: u64,
    /// The id of the manifest this one follows, if any.
    pub parent: Option<CheckpointId>,
    /// Why this manifest exists.
    pub kind: ManifestKind,
    /// The round token of the attempt that wrote it; a retried commit recognises itself by it.
    pub round: String,
    /// Every object's state.
    pub objects: BTreeMap<ObjectId, ObjectEntry>,
    /// The in-transit messages recorded with this cut.
    #[serde(default)]
    pub in_transit: Vec<InTransitEntry>,
    /// Free metadata, for example the coordinator's state table.
    #[serde(default, with = "bytes_map")]
    pub metadata: BTreeMap<String, Vec<u8>>,
}

impl Manifest {
    /// An empty manifest of kind [`ManifestKind::Checkpoint`]; fill in `parent`, `objects`,
    /// `in_transit` and `metadata`.
    pub fn new(id: CheckpointId, epoch: u64, created_at_ms: u64, round: impl Into<String>) -> Self {
        Self {
            id,
            epoch,
            created_at_ms,
            parent: None,
            kind: ManifestKind::Checkpoint,
            round: round.into(),
            objects: BTreeMap::new(),
            in_transit: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Every entry location this manifest references: its objects' states and its in-transit
    /// messages.
    pub fn locations(&self) -> impl Iterator<Item = &EntryLocation> {
        self.objects
            .values()
            .map(|e| &e.location)
            .chain(self.in_transit.iter().map(|m| &m.location))
    }

    /// The total size in bytes of the entries this manifest references.
    ///
    /// Never wraps: a manifest read from a store is refused when its entries add up to more
    /// than a u64, and for one built in memory the sum saturates at `u64::MAX`.
    pub fn referenced_bytes(&self) -> u64 {
        self.locations()
            .fold(0u64, |total, l| total.saturating_add(l.len))
    }
}

/// Why a manifest exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ManifestKind {
    /// A checkpoint taken by the two-phase protocol.
    Checkpoint,
    /// A rollback to checkpoint `to`: the manifest points at `to`'s states.
    Rollback {
        /// The checkpoint rolled back to.
        to: CheckpointId,
    },
    /// Written by a new leader to fence the old one; points at the recovery line it found.
    Fence,
}

/// Makes equal type names and segment keys of `entries` one shared string each: a manifest
/// decoded from format version 1 or 2 allocates them per entry (versions 3 and 4 share them
/// through their tables), and a million entries of a few segments and types would
/// hold a million copies.
pub(crate) fn share_strings<'a>(entries: impl Iterator<Item = &'a mut ObjectEntry>) {
    let mut seen: std::collections::HashSet<Arc<str>> = std::collections::HashSet::new();
    let mut share = |s: &mut Arc<str>| match seen.get(&**s) {
        Some(shared) => *s = Arc::clone(shared),
        None => {
            seen.insert(Arc::clone(s));
        }
    };
    let mut last: Option<(Arc<str>, Arc<str>)> = None;
    for entry in entries {
        // Entries of one segment and type are mostly adjacent: most find the last ones.
        if let Some((segment, type_name)) = &last
            && **segment == *entry.location.segment
            && **type_name == *entry.type_name
        {
            entry.location.segment = Arc::clone(segment);
            entry.type_name = Arc::clone(type_name);
            continue;
        }
        share(&mut entry.location.segment);
        share(&mut entry.type_name);
        last = Some((
            Arc::clone(&entry.location.segment),
            Arc::clone(&entry.type_name),
        ));
    }
}

/// Where one object's state lives, and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// The stable type name recorded with the state. Shared: a cohort has few types and many
    /// entries, and an entry is copied into every line that keeps it.
    pub type_name: Arc<str>,
    /// The schema version of the state.
    pub version: u32,
    /// The object's generation at capture, if it tracks one (enables incremental checkpoints).
    pub generation: Option<u64>,
    /// The entry in a segment.
    pub location: EntryLocation,
}

/// The position of one entry in a segment blob.
///
/// A manifest may point into a segment of an older checkpoint: that is an incremental reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryLocation {
    /// The segment's key, relative to the store's prefix. Shared by the entries of one segment.
    pub segment: Arc<str>,
    /// Byte offset of the entry's first byte.
    pub offset: u64,
    /// Length of the whole entry, including its trailing crc.
    pub len: u64,
    /// The entry's crc32, as stored in its last four bytes.
    pub crc: u32,
}

impl EntryLocation {
    /// The byte range of the entry in its segment.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset.saturating_add(self.len)
    }
}

/// A message that was in transit when the cut was taken; its bytes are stored as a segment entry
/// whose object id is the receiver and whose type name is the message type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InTransitEntry {
    /// The sender.
    pub from: ObjectId,
    /// The receiver.
    pub to: ObjectId,
    /// The sender's sequence number of the message on that channel.
    pub seq: u64,
    /// The message's bytes.
    pub location: EntryLocation,
}

/// A manifest as it is stored: whole, or as a delta against a full base manifest (format
/// version 2 or 4; see `delta.rs`). Readers resolve a delta before anyone else sees it.
#[derive(Debug)]
pub(crate) enum StoredManifest {
    /// A full manifest (format version 1 or 3).
    Full(Manifest),
    /// A delta against the full manifest of checkpoint `base`.
    Delta(DeltaManifest),
}

impl StoredManifest {
    /// The checkpoint id.
    pub(crate) fn id(&self) -> CheckpointId {
        match self {
            Self::Full(m) => m.id,
            Self::Delta(d) => d.id,
        }
    }

    /// The epoch of its writer.
    pub(crate) fn epoch(&self) -> u64 {
        match self {
            Self::Full(m) => m.epoch,
            Self::Delta(d) => d.epoch,
        }
    }

    /// The round token of the attempt that wrote it.
    pub(crate) fn round(&self) -> &str {
        match self {
            Self::Full(m) => &m.round,
            Self::Delta(d) => &d.round,
        }
    }

    /// The full manifest this one is a delta of, if it is one.
    pub(crate) fn base(&self) -> Option<CheckpointId> {
        match self {
            Self::Full(_) => None,
            Self::Delta(d) => Some(d.base),
        }
    }
}

/// The body of a delta manifest, decoded: the header fields of [`Manifest`], the base, and the
/// object entries that differ from the base's. In-transit messages and metadata belong to one
/// cut and are stored whole.
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaManifest {
    pub(crate) id: CheckpointId,
    pub(crate) epoch: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) parent: Option<CheckpointId>,
    pub(crate) kind: ManifestKind,
    pub(crate) round: String,
    /// The full manifest this delta applies to; always an earlier checkpoint.
    pub(crate) base: CheckpointId,
    /// The crc32 trailer of the base's blob, so that a delta never resolves against other bytes
    /// than those it was computed from.
    pub(crate) base_crc: u32,
    /// Entries added or changed since the base.
    #[serde(default)]
    pub(crate) objects: BTreeMap<ObjectId, ObjectEntry>,
    /// Objects the base holds and this checkpoint does not.
    #[serde(default)]
    pub(crate) removed: Vec<ObjectId>,
    #[serde(default)]
    pub(crate) in_transit: Vec<InTransitEntry>,
    #[serde(default, deserialize_with = "bytes_map::deserialize")]
    pub(crate) metadata: BTreeMap<String, Vec<u8>>,
}

/// The body of a delta manifest, to encode: [`DeltaManifest`]'s fields, borrowed from the full
/// manifest being committed and its base, so that encoding copies nothing.
pub(crate) struct DeltaBody<'a> {
    pub(crate) id: CheckpointId,
    pub(crate) epoch: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) parent: Option<CheckpointId>,
    pub(crate) kind: &'a ManifestKind,
    pub(crate) round: &'a str,
    pub(crate) base: CheckpointId,
    pub(crate) base_crc: u32,
    pub(crate) objects: EntryMap<'a>,
    pub(crate) removed: Vec<&'a ObjectId>,
    pub(crate) in_transit: &'a [InTransitEntry],
    pub(crate) metadata: &'a BTreeMap<String, Vec<u8>>,
}

/// Object entries in ascending id order.
pub(crate) struct EntryMap<'a>(pub(crate) Vec<(&'a ObjectId, &'a ObjectEntry)>);

/// The record of one coordinator epoch, created create-only at `epochs/<epoch>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch number, from 1.
    pub epoch: u64,
    /// Who took it (a node or process name).
    pub holder: String,
    /// When, Unix milliseconds (from the caller's injected clock).
    pub created_at_ms: u64,
    /// Where the holder accepts connections (a coordinator's listen address), so that
    /// standbys and nodes can point others at the leader. Absent in records written before it
    /// existed, and left out of the encoding when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The lease of one coordinator epoch, overwritten at `epochs/<epoch>.lease` by that epoch's
/// holder only, every few hundred milliseconds, as a sign of life.
///
/// Standbys compare successive reads of the newest epoch's lease on their own monotonic clock:
/// `renewal` stopped changing for a lease duration means the holder is gone. Safety never
/// depends on it (fencing does that); `renewed_at_ms` is for people, never compared across
/// hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochLease {
    /// The epoch renewed.
    pub epoch: u64,
    /// Counts up with every renewal of this epoch.
    pub renewal: u64,
    /// The holder's wall clock at the renewal, Unix milliseconds (for display only).
    pub renewed_at_ms: u64,
}

/// The newest claimed epoch as the store holds it ([`CheckpointStore::newest_epoch_state`]):
/// its number, and its record and lease or what is wrong with each.
///
/// [`CheckpointStore::newest_epoch_state`]: crate::CheckpointStore::newest_epoch_state
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EpochState {
    /// The epoch number. Its record's key exists, so the number is taken whatever the record
    /// holds: the next claim is `epoch + 1`.
    pub epoch: u64,
    /// Its record, or what is wrong with it (damaged, or written by a newer format:
    /// [`DamageKind::FutureFormat`](crate::DamageKind::FutureFormat)).
    pub record: Result<EpochRecord, Damage>,
    /// Its lease (`None` before the holder's first renewal), or what is wrong with it.
    pub lease: Result<Option<EpochLease>, Damage>,
}

impl EpochState {
    /// What is wrong with the record and the lease, record first; empty when both read.
    pub fn damage(&self) -> impl Iterator<Item = &Damage> {
        self.record
            .as_ref()
            .err()
            .into_iter()
            .chain(self.lease.as_ref().err())
    }
}

/// Serializes `BTreeMap<String, Vec<u8>>` with msgpack `bin` values rather than arrays of
/// integers.
pub(crate) mod bytes_map {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{MapAccess, SeqAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    struct AsBytes<'a>(&'a [u8]);

    impl serde::Serialize for AsBytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            out.serialize_entry(k, &AsBytes(v))?;
        }
        out.end()
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_bytes(V)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        struct M;
        impl<'de> Visitor<'de> for M {
            type Value = BTreeMap<String, Vec<u8>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of byte strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, ByteBuf(v))) = map.next_entry::<String, ByteBuf>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(M)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use super::*;
    use crate::format;

    #[test]
    fn a_decoded_manifest_shares_its_segment_keys_and_type_names() {
        let mut m = Manifest::new(CheckpointId::new(1), 1, 0, "r");
        for i in 0..6u64 {
            let entry = ObjectEntry {
                type_name: ["A", "B"][i as usize % 2].into(),
                version: 1,
                generation: None,
                location: EntryLocation {
                    segment: format!("segments/00000000000000000001/r/w-00000{}.seg", i % 3).into(),
                    offset: 22,
                    len: 10,
                    crc: 0,
                },
            };
            m.objects.insert(ObjectId::indexed("o", i).unwrap(), entry);
        }
        // Format version 1 through `share_strings`, 3 through its tables.
        for encode in [format::encode_manifest_v1, format::encode_manifest] {
            let bytes = encode(&m).unwrap();
            let Ok(StoredManifest::Full(read)) = format::decode_manifest(&bytes, m.id) else {
                panic!("not decoded as a full manifest");
            };
            assert_eq!(read, m);
            assert_shared(&read);
        }
    }

    fn assert_shared(read: &Manifest) {
        let entries: Vec<_> = read.objects.values().collect();
        for (i, a) in entries.iter().enumerate() {
            for b in &entries[i + 1..] {
                assert_eq!(
                    Arc::ptr_eq(&a.type_name, &b.type_name),
                    a.type_name == b.type_name
                );
                assert_eq!(
                    Arc::ptr_eq(&a.location.segment, &b.location.segment),
                    a.location.segment == b.location.segment
                );
            }
        }
    }
}
