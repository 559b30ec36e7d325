//! The bodies of manifest format versions 3 (full) and 4 (delta): msgpack with positional
//! fields (every struct an array), and each distinct segment key and type name stored once, in
//! a table, that entries refer to by index. ARCHITECTURE.md has the layout.
//!
//! Positions carry no names, so a reader cannot skip a field it does not know: adding, removing
//! or reordering a field takes a new format version. The decoder accepts exactly the fields of
//! its version, nothing after the body, and indices inside their tables; anything else is an
//! error that names what is wrong (never a panic). Each table entry is decoded into one shared
//! `Arc<str>`, which every entry of that segment or type clones.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use cohort_object_api::{CheckpointId, ObjectId};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, SerializeMap, SerializeSeq, SerializeTuple};
use serde::{Deserialize, Serialize, Serializer};

use crate::manifest::{
    DeltaBody, DeltaManifest, EntryLocation, InTransitEntry, Manifest, ManifestKind, ObjectEntry,
    bytes_map,
};

/// The fields of a full manifest body (format version 3), in order.
const FULL_FIELDS: usize = 11;
/// The fields of a delta manifest body (format version 4), in order.
const DELTA_FIELDS: usize = 14;

// ---------------------------------------------------------------------------------------------
// Encoding

/// The distinct strings of one column (segment keys or type names) in order of first use.
#[derive(Default)]
struct Table<'a> {
    strings: Vec<&'a str>,
    index: HashMap<&'a str, u32>,
    /// The string looked up last: the entries of one segment and type are mostly adjacent and
    /// share one `Arc`, so most lookups end at a pointer comparison.
    last: Option<(&'a Arc<str>, u32)>,
}

impl<'a> Table<'a> {
    fn index_of(&mut self, s: &'a Arc<str>) -> Option<u32> {
        if let Some((last, i)) = self.last
            && Arc::ptr_eq(last, s)
        {
            return Some(i);
        }
        let i = match self.index.get(&**s) {
            Some(&i) => i,
            None => {
                let i = u32::try_from(self.strings.len()).ok()?;
                self.strings.push(s);
                self.index.insert(s, i);
                i
            }
        };
        self.last = Some((s, i));
        Some(i)
    }
}

/// The tables of a body, and the indices of every entry into them, in the entries' order.
struct Indexed<'a> {
    segments: Table<'a>,
    types: Table<'a>,
    /// Per object entry: its type's index, its segment's index.
    objects: Vec<(u32, u32)>,
    /// Per in-transit entry: its segment's index.
    in_transit: Vec<u32>,
}

impl<'a> Indexed<'a> {
    fn of<E: ser::Error>(
        objects: impl ExactSizeIterator<Item = &'a ObjectEntry>,
        in_transit: &'a [InTransitEntry],
    ) -> Result<Self, E> {
        let full = || E::custom("more than 2^32 distinct segment keys or type names");
        let mut out = Indexed {
            segments: Table::default(),
            types: Table::default(),
            objects: Vec::with_capacity(objects.len()),
            in_transit: Vec::with_capacity(in_transit.len()),
        };
        for e in objects {
            let t = out.types.index_of(&e.type_name).ok_or_else(full)?;
            let s = out
                .segments
                .index_of(&e.location.segment)
                .ok_or_else(full)?;
            out.objects.push((t, s));
        }
        for m in in_transit {
            let s = out
                .segments
                .index_of(&m.location.segment)
                .ok_or_else(full)?;
            out.in_transit.push(s);
        }
        Ok(out)
    }
}

/// Object entries as a map from id to `[type, version, generation, segment, offset, len, crc]`.
struct Objects<'i, I> {
    entries: I,
    index: &'i [(u32, u32)],
}

impl<'a, I> Serialize for Objects<'_, I>
where
    I: Iterator<Item = (&'a ObjectId, &'a ObjectEntry)> + Clone,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.index.len()))?;
        for ((id, e), &(t, segment)) in self.entries.clone().zip(self.index) {
            let l = &e.location;
            let entry = (t, e.version, e.generation, segment, l.offset, l.len, l.crc);
            map.serialize_entry(id, &entry)?;
        }
        map.end()
    }
}

/// In-transit entries as an array of `[from, to, seq, segment, offset, len, crc]`.
struct InTransit<'a> {
    entries: &'a [InTransitEntry],
    index: &'a [u32],
}

impl Serialize for InTransit<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.entries.len()))?;
        for (m, &segment) in self.entries.iter().zip(self.index) {
            let l = &m.location;
            seq.serialize_element(&(&m.from, &m.to, m.seq, segment, l.offset, l.len, l.crc))?;
        }
        seq.end()
    }
}

/// Metadata as a map of string to msgpack `bin`.
struct MetadataRef<'a>(&'a BTreeMap<String, Vec<u8>>);

impl Serialize for MetadataRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        bytes_map::serialize(self.0, s)
    }
}

/// A full manifest, borrowed, as a format-3 body.
struct FullBody<'a>(&'a Manifest);

impl Serialize for FullBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let indexed = Indexed::of::<S::Error>(m.objects.values(), &m.in_transit)?;
        let mut t = s.serialize_tuple(FULL_FIELDS)?;
        t.serialize_element(&m.id)?;
        t.serialize_element(&m.epoch)?;
        t.serialize_element(&m.created_at_ms)?;
        t.serialize_element(&m.parent)?;
        t.serialize_element(&m.kind)?;
        t.serialize_element(&m.round)?;
        t.serialize_element(&indexed.segments.strings)?;
        t.serialize_element(&indexed.types.strings)?;
        t.serialize_element(&Objects {
            entries: m.objects.iter(),
            index: &indexed.objects,
        })?;
        t.serialize_element(&InTransit {
            entries: &m.in_transit,
            index: &indexed.in_transit,
        })?;
        t.serialize_element(&MetadataRef(&m.metadata))?;
        t.end()
    }
}

/// A delta, borrowed, as a format-4 body.
struct DeltaBodyV4<'a, 'b>(&'b DeltaBody<'a>);

impl Serialize for DeltaBodyV4<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let changed = &d.objects.0;
        let indexed = Indexed::of::<S::Error>(changed.iter().map(|(_, e)| *e), d.in_transit)?;
        let mut t = s.serialize_tuple(DELTA_FIELDS)?;
        t.serialize_element(&d.id)?;
        t.serialize_element(&d.epoch)?;
        t.serialize_element(&d.created_at_ms)?;
        t.serialize_element(&d.parent)?;
        t.serialize_element(d.kind)?;
        t.serialize_element(d.round)?;
        t.serialize_element(&d.base)?;
        t.serialize_element(&d.base_crc)?;
        t.serialize_element(&indexed.segments.strings)?;
        t.serialize_element(&indexed.types.strings)?;
        t.serialize_element(&Objects {
            entries: changed.iter().copied(),
            index: &indexed.objects,
        })?;
        t.serialize_element(&d.removed)?;
        t.serialize_element(&InTransit {
            entries: d.in_transit,
            index: &indexed.in_transit,
        })?;
        t.serialize_element(&MetadataRef(d.metadata))?;
        t.end()
    }
}

/// Appends the format-3 body of `m` to `out`.
pub(crate) fn write_full(out: &mut Vec<u8>, m: &Manifest) -> Result<(), rmp_serde::encode::Error> {
    rmp_serde::encode::write(out, &FullBody(m))
}

/// Appends the format-4 body of `d` to `out`.
pub(crate) fn write_delta(
    out: &mut Vec<u8>,
    d: &DeltaBody<'_>,
) -> Result<(), rmp_serde::encode::Error> {
    rmp_serde::encode::write(out, &DeltaBodyV4(d))
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes a format-3 body.
pub(crate) fn decode_full(body: &[u8]) -> Result<Manifest, String> {
    decode(body, FullVisitor)
}

/// Decodes a format-4 body.
pub(crate) fn decode_delta(body: &[u8]) -> Result<DeltaManifest, String> {
    decode(body, DeltaVisitor)
}

fn decode<'de, V: Visitor<'de>>(body: &'de [u8], visitor: V) -> Result<V::Value, String> {
    let mut de = rmp_serde::Deserializer::new(body);
    let value =
        serde::Deserializer::deserialize_seq(&mut de, visitor).map_err(|e| e.to_string())?;
    match de.get_ref().len() {
        0 => Ok(value),
        rest => Err(format!("{rest} unexpected byte(s) after the body")),
    }
}

/// The next field of a body, `what` naming it in errors.
fn field<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    what: &str,
) -> Result<T, A::Error> {
    field_seed(seq, std::marker::PhantomData, what)
}

fn field_seed<'de, T: DeserializeSeed<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    seed: T,
    what: &str,
) -> Result<T::Value, A::Error> {
    seq.next_element_seed(seed)
        .map_err(|e| de::Error::custom(format_args!("{what}: {e}")))?
        .ok_or_else(|| de::Error::custom(format_args!("the body ends before its {what} field")))
}

/// Fails when a body has more fields than its version.
fn end<'de, A: SeqAccess<'de>>(seq: &mut A, version: u16) -> Result<(), A::Error> {
    match seq.next_element::<IgnoredAny>()? {
        None => Ok(()),
        Some(_) => Err(de::Error::custom(format_args!(
            "more fields than a format version {version} body has"
        ))),
    }
}

/// The fields every body starts with.
struct Head {
    id: CheckpointId,
    epoch: u64,
    created_at_ms: u64,
    parent: Option<CheckpointId>,
    kind: ManifestKind,
    round: String,
}

impl Head {
    fn read<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Self, A::Error> {
        Ok(Self {
            id: field(seq, "id")?,
            epoch: field(seq, "epoch")?,
            created_at_ms: field(seq, "created_at_ms")?,
            parent: field(seq, "parent")?,
            kind: field(seq, "kind")?,
            round: field(seq, "round")?,
        })
    }
}

/// The segments and types tables of a body.
struct Tables {
    segments: Vec<Arc<str>>,
    types: Vec<Arc<str>>,
}

impl Tables {
    fn read<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Self, A::Error> {
        Ok(Self {
            segments: field(seq, "segments")?,
            types: field(seq, "types")?,
        })
    }

    fn segment<E: de::Error>(&self, i: u64, whose: Whose<'_>) -> Result<Arc<str>, E> {
        lookup(&self.segments, i, "segment", "segments", whose)
    }

    fn type_name<E: de::Error>(&self, i: u64, whose: Whose<'_>) -> Result<Arc<str>, E> {
        lookup(&self.types, i, "type", "types", whose)
    }
}

/// The entry an error is about.
#[derive(Clone, Copy)]
enum Whose<'a> {
    Object(&'a ObjectId),
    InTransit(usize),
}

impl fmt::Display for Whose<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Object(id) => write!(f, "object {id}"),
            Self::InTransit(n) => write!(f, "in-transit entry {n}"),
        }
    }
}

fn lookup<E: de::Error>(
    table: &[Arc<str>],
    i: u64,
    what: &str,
    name: &str,
    whose: Whose<'_>,
) -> Result<Arc<str>, E> {
    usize::try_from(i)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .ok_or_else(|| {
            E::custom(format_args!(
                "{whose}: {what} index {i} is outside the {name} table of {} entries",
                table.len()
            ))
        })
}

/// An object entry as stored: `[type, version, generation, segment, offset, len, crc]`.
type RawEntry = (u64, u32, Option<u64>, u64, u64, u64, u32);
/// An in-transit entry as stored: `[from, to, seq, segment, offset, len, crc]`.
type RawInTransit = (ObjectId, ObjectId, u64, u64, u64, u64, u32);

/// Decodes the object entries against the tables.
struct ObjectsSeed<'t>(&'t Tables);

impl<'de> DeserializeSeed<'de> for ObjectsSeed<'_> {
    type Value = BTreeMap<ObjectId, ObjectEntry>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectsSeed<'_> {
    type Value = BTreeMap<ObjectId, ObjectEntry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of object ids to entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use std::collections::btree_map::Entry;
        let mut out = BTreeMap::new();
        while let Some(id) = map
            .next_key::<ObjectId>()
            .map_err(|e| de::Error::custom(format_args!("object id: {e}")))?
        {
            let who = Whose::Object(&id);
            let (t, version, generation, segment, offset, len, crc): RawEntry = map
                .next_value()
                .map_err(|e| de::Error::custom(format_args!("{who}: {e}")))?;
            let entry = ObjectEntry {
                type_name: self.0.type_name(t, who)?,
                version,
                generation,
                location: EntryLocation {
                    segment: self.0.segment(segment, who)?,
                    offset,
                    len,
                    crc,
                },
            };
            match out.entry(id) {
                Entry::Vacant(v) => {
                    v.insert(entry);
                }
                Entry::Occupied(o) => {
                    return Err(de::Error::custom(format_args!(
                        "object {} appears twice",
                        o.key()
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// Decodes the in-transit entries against the segments table.
struct InTransitSeed<'t>(&'t Tables);

impl<'de> DeserializeSeed<'de> for InTransitSeed<'_> {
    type Value = Vec<InTransitEntry>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InTransitSeed<'_> {
    type Value = Vec<InTransitEntry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of in-transit entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let n = out.len();
            let raw: Option<RawInTransit> = seq
                .next_element()
                .map_err(|e| de::Error::custom(format_args!("in-transit entry {n}: {e}")))?;
            let Some((from, to, seq_no, segment, offset, len, crc)) = raw else {
                return Ok(out);
            };
            let who = Whose::InTransit(n);
            out.push(InTransitEntry {
                from,
                to,
                seq: seq_no,
                location: EntryLocation {
                    segment: self.0.segment(segment, who)?,
                    offset,
                    len,
                    crc,
                },
            });
        }
    }
}

/// Metadata: a map of string to msgpack `bin`.
struct Metadata(BTreeMap<String, Vec<u8>>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bytes_map::deserialize(d).map(Metadata)
    }
}

struct FullVisitor;

impl<'de> Visitor<'de> for FullVisitor {
    type Value = Manifest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a full manifest body: an array of {FULL_FIELDS} fields")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Manifest, A::Error> {
        let head = Head::read(&mut seq)?;
        let tables = Tables::read(&mut seq)?;
        let objects = field_seed(&mut seq, ObjectsSeed(&tables), "objects")?;
        let in_transit = field_seed(&mut seq, InTransitSeed(&tables), "in_transit")?;
        let Metadata(metadata) = field(&mut seq, "metadata")?;
        end(&mut seq, crate::format::MANIFEST_FULL_VERSION)?;
        Ok(Manifest {
            id: head.id,
            epoch: head.epoch,
            created_at_ms: head.created_at_ms,
            parent: head.parent,
            kind: head.kind,
            round: head.round,
            objects,
            in_transit,
            metadata,
        })
    }
}

struct DeltaVisitor;

impl<'de> Visitor<'de> for DeltaVisitor {
    type Value = DeltaManifest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a delta manifest body: an array of {DELTA_FIELDS} fields"
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DeltaManifest, A::Error> {
        let head = Head::read(&mut seq)?;
        let base = field(&mut seq, "base")?;
        let base_crc = field(&mut seq, "base_crc")?;
        let tables = Tables::read(&mut seq)?;
        let objects = field_seed(&mut seq, ObjectsSeed(&tables), "objects")?;
        let removed = field(&mut seq, "removed")?;
        let in_transit = field_seed(&mut seq, InTransitSeed(&tables), "in_transit")?;
        let Metadata(metadata) = field(&mut seq, "metadata")?;
        end(&mut seq, crate::format::MANIFEST_DELTA_VERSION)?;
        Ok(DeltaManifest {
            id: head.id,
            epoch: head.epoch,
            created_at_ms: head.created_at_ms,
            parent: head.parent,
            kind: head.kind,
            round: head.round,
            base,
            base_crc,
            objects,
            removed,
            in_transit,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use proptest::prelude::*;

    use super::*;
    use crate::DamageKind;
    use crate::format::{self, FrameError};
    use crate::manifest::{EntryMap, StoredManifest};

    const SEGMENTS: [&str; 3] = [
        "segments/00000000000000000001/e1-r1/node-1-000000.seg",
        "segments/00000000000000000002/e1-r2/node-2-000001.seg",
        "segments/00000000000000000002/e1-r2/channel-000000.seg",
    ];
    const TYPES: [&str; 3] = ["Account", "bank.Ledger", "T"];

    fn location() -> impl Strategy<Value = EntryLocation> {
        (0..SEGMENTS.len(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(s, offset, len, crc)| EntryLocation {
                // A string of its own per entry: the encoder must find equal strings by content.
                segment: SEGMENTS[s].into(),
                offset,
                len,
                crc,
            },
        )
    }

    fn entry() -> impl Strategy<Value = ObjectEntry> {
        (
            0..TYPES.len(),
            any::<u32>(),
            any::<Option<u64>>(),
            location(),
        )
            .prop_map(|(t, version, generation, location)| ObjectEntry {
                type_name: TYPES[t].into(),
                version,
                generation,
                location,
            })
    }

    fn object() -> impl Strategy<Value = ObjectId> {
        "[A-Za-z0-9_:@+=-][A-Za-z0-9._:@+=-]{0,20}"
            .prop_filter_map("not an object id", |s| ObjectId::new(s).ok())
    }

    fn kind() -> impl Strategy<Value = ManifestKind> {
        prop_oneof![
            Just(ManifestKind::Checkpoint),
            Just(ManifestKind::Fence),
            any::<u64>().prop_map(|to| ManifestKind::Rollback {
                to: CheckpointId::new(to)
            }),
        ]
    }

    prop_compose! {
        fn manifest()(
            id in 2u64..1_000_000,
            epoch in any::<u64>(),
            created_at_ms in any::<u64>(),
            parent in any::<Option<u64>>(),
            kind in kind(),
            round in "[a-z0-9-]{1,12}",
            objects in proptest::collection::btree_map(object(), entry(), 0..40),
            in_transit in proptest::collection::vec(
                (object(), object(), any::<u64>(), location()), 0..4),
            metadata in proptest::collection::btree_map(
                ".{0,8}", proptest::collection::vec(any::<u8>(), 0..16), 0..4),
        ) -> Manifest {
            Manifest {
                id: CheckpointId::new(id),
                epoch,
                created_at_ms,
                parent: parent.map(CheckpointId::new),
                kind,
                round,
                objects,
                in_transit: in_transit
                    .into_iter()
                    .map(|(from, to, seq, location)| InTransitEntry { from, to, seq, location })
                    .collect(),
                metadata,
            }
        }
    }

    /// Equal strings of a decoded manifest's entries are one shared `Arc`.
    fn assert_shared<'a>(entries: impl Iterator<Item = &'a ObjectEntry>) {
        let mut types: HashMap<&str, &Arc<str>> = HashMap::new();
        let mut segments: HashMap<&str, &Arc<str>> = HashMap::new();
        for e in entries {
            let t = types.entry(&e.type_name).or_insert(&e.type_name);
            assert!(Arc::ptr_eq(t, &e.type_name));
            let s = segments
                .entry(&e.location.segment)
                .or_insert(&e.location.segment);
            assert!(Arc::ptr_eq(s, &e.location.segment));
        }
    }

    proptest! {
        /// Any manifest reads back as itself from format version 3, and as a delta (version 4)
        /// of any entries, removals, in-transit messages and metadata.
        #[test]
        fn any_manifest_round_trips_through_versions_3_and_4(
            m in manifest(),
            removed in proptest::collection::vec(object(), 0..5),
            base_crc in any::<u32>(),
        ) {
            let bytes = format::encode_manifest(&m).unwrap();
            prop_assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 3);
            let StoredManifest::Full(read) = format::decode_manifest(&bytes, m.id).unwrap() else {
                panic!("a full manifest decoded as a delta");
            };
            prop_assert_eq!(&read, &m);
            assert_shared(read.objects.values());

            let body = DeltaBody {
                id: m.id,
                epoch: m.epoch,
                created_at_ms: m.created_at_ms,
                parent: m.parent,
                kind: &m.kind,
                round: &m.round,
                base: CheckpointId::new(m.id.get() - 1),
                base_crc,
                objects: EntryMap(m.objects.iter().collect()),
                removed: removed.iter().collect(),
                in_transit: &m.in_transit,
                metadata: &m.metadata,
            };
            let bytes = format::encode_delta(&body).unwrap();
            prop_assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 4);
            let StoredManifest::Delta(d) = format::decode_manifest(&bytes, m.id).unwrap() else {
                panic!("a delta decoded as a full manifest");
            };
            prop_assert_eq!(
                (d.id, d.epoch, d.created_at_ms, d.parent, d.kind, &d.round),
                (m.id, m.epoch, m.created_at_ms, m.parent, m.kind, &m.round)
            );
            prop_assert_eq!((d.base, d.base_crc), (body.base, base_crc));
            prop_assert_eq!(&d.objects, &m.objects);
            prop_assert_eq!(&d.removed, &removed);
            prop_assert_eq!(&d.in_transit, &m.in_transit);
            prop_assert_eq!(&d.metadata, &m.metadata);
            assert_shared(d.objects.values());
        }
    }

    // Crafted bodies: each field a tuple or a map, so that one of them can be made wrong.

    /// `[type, version, generation, segment, offset, len, crc]`
    type Entry = (u64, u32, Option<u64>, u64, u64, u64, u32);
    /// `[from, to, seq, segment, offset, len, crc]`
    type Msg = (&'static str, &'static str, u64, u64, u64, u64, u32);

    fn sound_entry() -> Entry {
        (0, 2, Some(7), 0, 22, 40, 9)
    }

    /// Object entries in the order given, duplicates included.
    struct Pairs<V>(Vec<(&'static str, V)>);

    impl<V: Serialize> Serialize for Pairs<V> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }

    fn full_body<O: Serialize, I: Serialize>(objects: O, in_transit: I) -> Vec<u8> {
        rmp_serde::to_vec(&(
            1u64,
            1u64,
            0u64,
            None::<u64>,
            ManifestKind::Checkpoint,
            "e1-r1",
            [SEGMENTS[0]],
            [TYPES[0]],
            objects,
            in_transit,
            BTreeMap::<String, Vec<u8>>::new(),
        ))
        .unwrap()
    }

    fn sound_objects() -> Pairs<Entry> {
        Pairs(vec![("account-1", sound_entry())])
    }

    fn no_messages() -> Vec<Msg> {
        Vec::new()
    }

    /// What decoding `body` as format `version` says is wrong with it.
    fn damage(version: u16, body: &[u8]) -> String {
        let blob = format::frame_manifest(version, CheckpointId::new(1), body);
        match format::decode_manifest(&blob, CheckpointId::new(1)) {
            Err(FrameError::Damaged(DamageKind::Undecodable(what))) => what,
            other => panic!("not undecodable: {other:?}"),
        }
    }

    fn assert_damage(version: u16, body: &[u8], expected: &str) {
        let what = damage(version, body);
        assert!(
            what.contains(expected),
            "{what:?} does not say {expected:?}"
        );
        assert!(
            what.contains(&format!("format version {version}")),
            "{what}"
        );
    }

    #[test]
    fn the_crafted_sound_body_decodes() {
        // The control for the cases below: only what each one changes is wrong.
        let messages = vec![("account-1", "account-2", 3, 0, 62, 20, 1)];
        let blob = format::frame_manifest(
            format::MANIFEST_FULL_VERSION,
            CheckpointId::new(1),
            &full_body(sound_objects(), messages),
        );
        let StoredManifest::Full(m) = format::decode_manifest(&blob, CheckpointId::new(1)).unwrap()
        else {
            panic!("decoded as a delta");
        };
        let e = &m.objects[&ObjectId::new("account-1").unwrap()];
        assert_eq!(
            (&*e.type_name, &*e.location.segment, e.location.len),
            (TYPES[0], SEGMENTS[0], 40)
        );
        assert_eq!(m.in_transit[0].location.offset, 62);
    }

    #[test]
    fn an_index_outside_its_table_is_undecodable() {
        let mut bad_type = sound_entry();
        bad_type.0 = 1;
        let body = full_body(Pairs(vec![("account-1", bad_type)]), no_messages());
        assert_damage(
            3,
            &body,
            "object account-1: type index 1 is outside the types table of 1 entries",
        );
        let mut bad_segment = sound_entry();
        bad_segment.3 = u64::MAX;
        let body = full_body(Pairs(vec![("account-1", bad_segment)]), no_messages());
        assert_damage(
            3,
            &body,
            &format!(
                "object account-1: segment index {} is outside the segments table",
                u64::MAX
            ),
        );
        let messages = vec![("account-1", "account-2", 3, 1, 62, 20, 1)];
        let body = full_body(sound_objects(), messages);
        assert_damage(
            3,
            &body,
            "in-transit entry 0: segment index 1 is outside the segments table of 1 entries",
        );
    }

    #[test]
    fn a_delta_with_an_index_outside_its_table_is_undecodable() {
        let mut bad = sound_entry();
        bad.3 = 2;
        let body = rmp_serde::to_vec(&(
            2u64,
            1u64,
            0u64,
            Some(1u64),
            ManifestKind::Checkpoint,
            "e1-r2",
            1u64,
            7u32,
            [SEGMENTS[0], SEGMENTS[1]],
            [TYPES[0]],
            Pairs(vec![("account-1", bad)]),
            ["account-2"],
            no_messages(),
            BTreeMap::<String, Vec<u8>>::new(),
        ))
        .unwrap();
        let blob = format::frame_manifest(4, CheckpointId::new(2), &body);
        let Err(FrameError::Damaged(DamageKind::Undecodable(what))) =
            format::decode_manifest(&blob, CheckpointId::new(2))
        else {
            panic!("decoded");
        };
        assert!(
            what.contains("object account-1: segment index 2 is outside the segments table of 2"),
            "{what}"
        );
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_undecodable() {
        // An entry one field short, one too long, a map instead of an array.
        let (t, v, g, s, o, l, c) = sound_entry();
        let short = full_body(
            Pairs(vec![("account-1", (t, v, g, s, o, l))]),
            no_messages(),
        );
        assert_damage(3, &short, "object account-1");
        let long = full_body(
            Pairs(vec![("account-1", (t, v, g, s, o, l, c, 0u8))]),
            no_messages(),
        );
        assert_damage(3, &long, "object account-1");
        let named = full_body(
            Pairs(vec![("account-1", BTreeMap::from([("type", 0)]))]),
            no_messages(),
        );
        assert_damage(3, &named, "object account-1");
        // A field of the wrong type, an entry whose id is no object id, an id twice.
        let mut wrong = sound_entry();
        wrong.2 = None;
        let not_a_table = rmp_serde::to_vec(&(
            1u64,
            1u64,
            0u64,
            None::<u64>,
            ManifestKind::Checkpoint,
            "e1-r1",
            SEGMENTS[0],
        ))
        .unwrap();
        assert_damage(3, &not_a_table, "segments:");
        assert_damage(
            3,
            &full_body(Pairs(vec![("../x", wrong)]), no_messages()),
            "object id:",
        );
        assert_damage(
            3,
            &full_body(
                Pairs(vec![("account-1", sound_entry()), ("account-1", wrong)]),
                no_messages(),
            ),
            "object account-1 appears twice",
        );
        // Fields missing, one field too many, bytes after the body, a map as the body.
        let mut body = full_body(sound_objects(), no_messages());
        assert_damage(3, &body[..body.len() - 1], "");
        let cut =
            rmp_serde::to_vec(&(1u64, 1u64, 0u64, None::<u64>, ManifestKind::Checkpoint)).unwrap();
        assert_damage(3, &cut, "the body ends before its round field");
        body.push(0xc0);
        assert_damage(3, &body, "1 unexpected byte(s) after the body");
        let extra = rmp_serde::to_vec(&(
            1u64,
            1u64,
            0u64,
            None::<u64>,
            ManifestKind::Checkpoint,
            "e1-r1",
            [SEGMENTS[0]],
            [TYPES[0]],
            sound_objects(),
            no_messages(),
            BTreeMap::<String, Vec<u8>>::new(),
            0u8,
        ))
        .unwrap();
        assert_damage(3, &extra, "more fields than a format version 3 body has");
        let map = rmp_serde::to_vec_named(&Manifest::new(CheckpointId::new(1), 1, 0, "r")).unwrap();
        assert_damage(3, &map, "a full manifest body");
        // A version 3 body is no version 4 body.
        assert_damage(4, &full_body(sound_objects(), no_messages()), "");
    }
}
