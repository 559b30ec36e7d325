//! The byte formats of segment, manifest, tombstone and epoch blobs (ARCHITECTURE.md has the
//! tables). All integers are little-endian. Decoders never panic: every length is checked
//! against the bytes at hand before it is used.

use bytes::Bytes;
use cohort_object_api::{CheckpointId, EncodedState, ObjectId, StateTag};

use crate::compact;
use crate::error::DamageKind;
use crate::manifest::{
    DeltaBody, DeltaManifest, EpochLease, EpochRecord, Manifest, StoredManifest,
};

/// The newest format version this build reads.
///
/// Version 2 added delta manifests; versions 3 (full) and 4 (delta) are the compact manifest
/// encoding (positional fields, segment keys and type names stored once in tables). Manifests
/// are written as 3 or 4 and versions 1 and 2 are still read. Segments, epoch records and
/// leases are still written with version 1 (byte for byte as before). A build reads every
/// version up to its own and refuses a newer one as written by a newer cohort, so readers must
/// be upgraded before writers.
pub const FORMAT_VERSION: u16 = 4;

/// The version segments are written with, and the newest segment version read.
pub(crate) const SEGMENT_VERSION: u16 = 1;
/// The version full manifests are written with (compact, `compact.rs`).
pub(crate) const MANIFEST_FULL_VERSION: u16 = 3;
/// The version delta manifests are written with (compact, `compact.rs`).
pub(crate) const MANIFEST_DELTA_VERSION: u16 = 4;
/// The first version of a full manifest: a msgpack named map, still read.
const NAMED_FULL_VERSION: u16 = 1;
/// The first version of a delta manifest: a msgpack named map, still read.
const NAMED_DELTA_VERSION: u16 = 2;
/// The version epoch records and leases are written with, and the newest read.
pub(crate) const RECORD_VERSION: u16 = 1;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"COHSEG\0\x01";
pub(crate) const MANIFEST_MAGIC: &[u8; 8] = b"COHMAN\0\x01";
pub(crate) const EPOCH_MAGIC: &[u8; 8] = b"COHEPO\0\x01";
pub(crate) const LEASE_MAGIC: &[u8; 8] = b"COHLEA\0\x01";
pub(crate) const TOMBSTONE_MAGIC: &[u8; 8] = b"COHTOMB\0";

/// Length of a segment header: magic, version, checkpoint id, crc.
pub(crate) const SEGMENT_HEADER_LEN: usize = 22;
/// Length of a tombstone: magic and checkpoint id.
pub(crate) const TOMBSTONE_LEN: usize = 16;
/// Bytes of a framed blob (manifest, epoch) besides its body.
const FRAME_OVERHEAD: usize = 26 + 4;

pub(crate) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Segments

/// The 22-byte header every segment starts with.
pub(crate) fn segment_header(id: CheckpointId) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[10..18].copy_from_slice(&id.get().to_le_bytes());
    let c = crc(&h[0..18]);
    h[18..22].copy_from_slice(&c.to_le_bytes());
    h
}

/// Checks a segment header against the checkpoint id in the segment's key.
pub(crate) fn check_segment_header(bytes: &[u8], expected: CheckpointId) -> Result<(), DamageKind> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(DamageKind::Truncated {
            needed: SEGMENT_HEADER_LEN as u64,
            actual: bytes.len() as u64,
        });
    }
    let stored = u32_at(bytes, 18).unwrap_or_default();
    let actual = crc(&bytes[0..18]);
    if &bytes[0..8] != SEGMENT_MAGIC {
        return Err(DamageKind::HeaderMismatch(
            "not a cohort segment (bad magic)".into(),
        ));
    }
    if stored != actual {
        return Err(DamageKind::CrcMismatch {
            expected: stored,
            actual,
        });
    }
    let version = u16_at(bytes, 8).unwrap_or_default();
    if version > SEGMENT_VERSION {
        return Err(DamageKind::FutureFormat {
            found: version,
            supported: SEGMENT_VERSION,
        });
    }
    let id = u64_at(bytes, 10).unwrap_or_default();
    if id != expected.get() {
        return Err(DamageKind::HeaderMismatch(format!(
            "segment header says checkpoint {id}, its key says {expected}"
        )));
    }
    Ok(())
}

/// Where an entry ended up in a buffer, and its crc.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WrittenEntry {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) crc: u32,
}

/// The bytes of an entry before its payload.
pub(crate) fn entry_prefix(object: &ObjectId, tag: &StateTag, payload_len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + object.as_str().len() + tag.type_name.len());
    push_prefix(&mut out, object, tag, payload_len);
    out
}

fn push_prefix(out: &mut Vec<u8>, object: &ObjectId, tag: &StateTag, payload_len: u64) {
    let id = object.as_str().as_bytes();
    let type_name = tag.type_name.as_bytes();
    // ObjectId is at most 200 bytes; the type name is checked by `check_type_name`.
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&(type_name.len() as u16).to_le_bytes());
    out.extend_from_slice(type_name);
    out.extend_from_slice(&tag.version.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
}

/// The longest type name an entry can record.
pub(crate) const MAX_TYPE_NAME: usize = u16::MAX as usize;

/// Appends one entry to `out`, encoding the payload with `encode` straight into the buffer (no
/// intermediate copy). On error the buffer is left as it was.
pub(crate) fn append_entry<E>(
    out: &mut Vec<u8>,
    object: &ObjectId,
    tag: &StateTag,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<WrittenEntry, E> {
    let start = out.len();
    push_prefix(out, object, tag, 0);
    let payload_start = out.len();
    if let Err(e) = encode(out) {
        out.truncate(start);
        return Err(e);
    }
    let payload_len = (out.len() - payload_start) as u64;
    out[payload_start - 8..payload_start].copy_from_slice(&payload_len.to_le_bytes());
    let c = crc(&out[start..]);
    out.extend_from_slice(&c.to_le_bytes());
    Ok(WrittenEntry {
        offset: start,
        len: out.len() - start,
        crc: c,
    })
}

/// What a reader expects an entry to hold; `None` fields are not checked.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expected<'a> {
    pub(crate) object: Option<&'a ObjectId>,
    pub(crate) type_name: Option<&'a str>,
    pub(crate) version: Option<u32>,
}

/// Decodes and checks one entry, given exactly its bytes and the crc the manifest recorded.
/// `computed_crc` is the crc of the entry without its trailer when the caller already computed
/// it (on another thread, say); `None` computes it here.
pub(crate) fn decode_entry(
    bytes: &Bytes,
    recorded_crc: u32,
    computed_crc: Option<u32>,
    expected: Expected<'_>,
) -> Result<(ObjectId, EncodedState), DamageKind> {
    let b = &bytes[..];
    if b.len() < 4 {
        return Err(DamageKind::Truncated {
            needed: 4,
            actual: b.len() as u64,
        });
    }
    let body = &b[..b.len() - 4];
    let stored = u32_at(b, b.len() - 4).unwrap_or_default();
    let actual = computed_crc.unwrap_or_else(|| crc(body));
    if actual != recorded_crc || stored != recorded_crc {
        // Name the crc the bytes disagree with: the manifest's, unless only the trailer differs.
        let expected = if actual != recorded_crc {
            recorded_crc
        } else {
            stored
        };
        return Err(DamageKind::CrcMismatch { expected, actual });
    }
    let bad = |what: &str| DamageKind::HeaderMismatch(format!("entry header: {what}"));
    let n = usize::from(u16_at(body, 0).ok_or_else(|| bad("too short for the object id length"))?);
    let id = body
        .get(2..2 + n)
        .ok_or_else(|| bad("object id runs past the entry"))?;
    let id = std::str::from_utf8(id).map_err(|_| bad("object id is not UTF-8"))?;
    let object = ObjectId::new(id).map_err(|e| bad(&e.to_string()))?;
    let at = 2 + n;
    let t = usize::from(u16_at(body, at).ok_or_else(|| bad("too short for the type name length"))?);
    let type_name = body
        .get(at + 2..at + 2 + t)
        .ok_or_else(|| bad("type name runs past the entry"))?;
    let type_name = std::str::from_utf8(type_name).map_err(|_| bad("type name is not UTF-8"))?;
    let at = at + 2 + t;
    let version = u32_at(body, at).ok_or_else(|| bad("too short for the schema version"))?;
    let payload_len =
        u64_at(body, at + 4).ok_or_else(|| bad("too short for the payload length"))?;
    let payload_start = at + 12;
    if payload_len != (body.len() - payload_start.min(body.len())) as u64 {
        return Err(bad(&format!(
            "payload length {payload_len} does not fit the entry's {} bytes",
            b.len()
        )));
    }
    if let Some(want) = expected.object
        && *want != object
    {
        return Err(bad(&format!(
            "holds object {object}, the manifest says {want}"
        )));
    }
    if let Some(want) = expected.type_name
        && want != type_name
    {
        return Err(bad(&format!(
            "holds type {type_name}, the manifest says {want}"
        )));
    }
    if let Some(want) = expected.version
        && want != version
    {
        return Err(bad(&format!(
            "holds schema version {version}, the manifest says {want}"
        )));
    }
    let tag = StateTag::new(type_name.to_owned(), version);
    let payload = bytes.slice(payload_start..body.len());
    Ok((object, EncodedState::new(tag, payload)))
}

// ---------------------------------------------------------------------------------------------
// Framed blobs: manifests and epoch records

/// Why a framed blob could not be decoded.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The blob is a GC tombstone.
    Tombstone,
    /// The blob has a newer format version than this build reads.
    Future {
        /// The version in the blob.
        found: u16,
        /// The newest version of this kind of blob that this build reads.
        supported: u16,
    },
    /// The blob is damaged.
    Damaged(DamageKind),
}

fn encode_framed(magic: &[u8; 8], version: u16, id: u64, body: &[u8]) -> Vec<u8> {
    let framed = encode_framed_with(magic, version, id, body.len(), |out| {
        out.extend_from_slice(body);
        Ok::<_, std::convert::Infallible>(())
    });
    match framed {
        Ok(out) => out,
        Err(never) => match never {},
    }
}

/// Frames the body `write_body` appends, written straight into the blob (no copy of the body).
/// `body_hint` is the expected body length.
fn encode_framed_with<E>(
    magic: &[u8; 8],
    version: u16,
    id: u64,
    body_hint: usize,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    const BODY_START: usize = 26;
    let mut out = Vec::with_capacity(FRAME_OVERHEAD.saturating_add(body_hint));
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // the body's length, once known
    write_body(&mut out)?;
    let body_len = (out.len() - BODY_START) as u64;
    out[18..BODY_START].copy_from_slice(&body_len.to_le_bytes());
    let c = crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    Ok(out)
}

/// Checks a framed blob; returns its format version and body. `supported` is the newest version
/// of this kind of blob that this build reads.
fn decode_framed<'a>(
    magic: &[u8; 8],
    supported: u16,
    bytes: &'a [u8],
    expected_id: u64,
) -> Result<(u16, &'a [u8]), FrameError> {
    if bytes.len() == TOMBSTONE_LEN && &bytes[0..8] == TOMBSTONE_MAGIC {
        return Err(FrameError::Tombstone);
    }
    let damaged = |k| Err(FrameError::Damaged(k));
    if bytes.len() < FRAME_OVERHEAD {
        return damaged(DamageKind::Truncated {
            needed: FRAME_OVERHEAD as u64,
            actual: bytes.len() as u64,
        });
    }
    if &bytes[0..8] != magic {
        return damaged(DamageKind::HeaderMismatch("bad magic".into()));
    }
    let body_len = u64_at(bytes, 18).unwrap_or_default();
    let needed = body_len.saturating_add(FRAME_OVERHEAD as u64);
    if needed != bytes.len() as u64 {
        return damaged(if needed > bytes.len() as u64 {
            DamageKind::Truncated {
                needed,
                actual: bytes.len() as u64,
            }
        } else {
            DamageKind::HeaderMismatch(format!("{} bytes, the header says {needed}", bytes.len()))
        });
    }
    let end = bytes.len() - 4;
    let stored = u32_at(bytes, end).unwrap_or_default();
    let actual = crc(&bytes[..end]);
    if stored != actual {
        return damaged(DamageKind::CrcMismatch {
            expected: stored,
            actual,
        });
    }
    let version = u16_at(bytes, 8).unwrap_or_default();
    if version > supported {
        return Err(FrameError::Future {
            found: version,
            supported,
        });
    }
    let id = u64_at(bytes, 10).unwrap_or_default();
    if id != expected_id {
        return damaged(DamageKind::HeaderMismatch(format!(
            "header says {id}, the key says {expected_id}"
        )));
    }
    Ok((version, &bytes[26..end]))
}

/// Where a framed blob's format version ends: the magic, then the version.
pub(crate) const MANIFEST_VERSION_END: usize = 10;
/// The shortest manifest blob: a frame with an empty body.
pub(crate) const MIN_MANIFEST_LEN: usize = FRAME_OVERHEAD;

/// Whether the first bytes of a blob (at least [`MANIFEST_VERSION_END`]) are a manifest's
/// header naming a format version newer than this build reads. Unchecked by any crc: a `true`
/// is confirmed by decoding the whole blob.
pub(crate) fn claims_newer_manifest(head: &[u8]) -> bool {
    head.get(0..8) == Some(&MANIFEST_MAGIC[..])
        && u16_at(head, 8).is_some_and(|v| v > FORMAT_VERSION)
}

/// Whether the first bytes of a blob are a whole manifest's header (format version 1 or 3).
/// Unchecked by any crc.
pub(crate) fn is_full_manifest_header(head: &[u8]) -> bool {
    head.get(0..8) == Some(&MANIFEST_MAGIC[..])
        && u16_at(head, 8).is_some_and(|v| v == NAMED_FULL_VERSION || v == MANIFEST_FULL_VERSION)
}

/// The crc32 trailer of a framed blob (valid once the blob decoded).
pub(crate) fn frame_crc(bytes: &[u8]) -> u32 {
    bytes
        .len()
        .checked_sub(4)
        .and_then(|at| u32_at(bytes, at))
        .unwrap_or_default()
}

/// The expected encoded size of an entry, to size a manifest blob up front.
const ENTRY_HINT: usize = 48;

/// The expected body length of a manifest of `entries` entries and `metadata`.
fn body_hint(entries: usize, metadata: &std::collections::BTreeMap<String, Vec<u8>>) -> usize {
    (metadata.iter())
        .map(|(k, v)| k.len().saturating_add(v.len()))
        .fold(entries.saturating_mul(ENTRY_HINT), usize::saturating_add)
}

/// Encodes a full manifest blob (format version 3).
pub(crate) fn encode_manifest(m: &Manifest) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let hint = body_hint(m.objects.len() + m.in_transit.len(), &m.metadata);
    encode_framed_with(
        MANIFEST_MAGIC,
        MANIFEST_FULL_VERSION,
        m.id.get(),
        hint,
        |out| compact::write_full(out, m),
    )
}

/// Encodes a delta manifest blob (format version 4).
pub(crate) fn encode_delta(d: &DeltaBody<'_>) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let hint = body_hint(d.objects.0.len() + d.in_transit.len(), d.metadata);
    encode_framed_with(
        MANIFEST_MAGIC,
        MANIFEST_DELTA_VERSION,
        d.id.get(),
        hint,
        |out| compact::write_delta(out, d),
    )
}

/// Encodes a full manifest blob as format version 1 wrote it, for tests of the old reader.
#[cfg(test)]
pub(crate) fn encode_manifest_v1(m: &Manifest) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let body = rmp_serde::to_vec_named(m)?;
    Ok(encode_framed(
        MANIFEST_MAGIC,
        NAMED_FULL_VERSION,
        m.id.get(),
        &body,
    ))
}

/// Frames `body` as a manifest blob of format `version`, for tests of crafted bodies.
#[cfg(test)]
pub(crate) fn frame_manifest(version: u16, id: CheckpointId, body: &[u8]) -> Vec<u8> {
    encode_framed(MANIFEST_MAGIC, version, id.get(), body)
}

/// Decodes a manifest blob read from the key of checkpoint `id`, as it is stored: whole, or as a
/// delta against a base (which the caller resolves).
pub(crate) fn decode_manifest(
    bytes: &[u8],
    id: CheckpointId,
) -> Result<StoredManifest, FrameError> {
    let (version, body) = decode_framed(MANIFEST_MAGIC, FORMAT_VERSION, bytes, id.get())?;
    let undecodable = |e: rmp_serde::decode::Error| {
        FrameError::Damaged(DamageKind::Undecodable(format!("manifest body: {e}")))
    };
    let compact_undecodable = |e: String| {
        FrameError::Damaged(DamageKind::Undecodable(format!(
            "manifest body (format version {version}): {e}"
        )))
    };
    let stored = match version {
        MANIFEST_FULL_VERSION => {
            StoredManifest::Full(compact::decode_full(body).map_err(compact_undecodable)?)
        }
        MANIFEST_DELTA_VERSION => {
            StoredManifest::Delta(compact::decode_delta(body).map_err(compact_undecodable)?)
        }
        NAMED_DELTA_VERSION => {
            let mut d: DeltaManifest = rmp_serde::from_slice(body).map_err(undecodable)?;
            crate::manifest::share_strings(d.objects.values_mut());
            StoredManifest::Delta(d)
        }
        // Version 1, and 0 (never written) as version 1 always read it.
        _ => {
            let mut m: Manifest = rmp_serde::from_slice(body).map_err(undecodable)?;
            crate::manifest::share_strings(m.objects.values_mut());
            StoredManifest::Full(m)
        }
    };
    if let StoredManifest::Delta(d) = &stored
        && (d.base == CheckpointId::ZERO || d.base >= d.id)
    {
        return Err(FrameError::Damaged(DamageKind::HeaderMismatch(format!(
            "delta manifest of checkpoint {} names base {}, which is not an earlier checkpoint",
            d.id, d.base
        ))));
    }
    if stored.id() != id {
        return Err(FrameError::Damaged(DamageKind::HeaderMismatch(format!(
            "manifest body says checkpoint {}, its key says {id}",
            stored.id()
        ))));
    }
    Ok(stored)
}

/// The 16-byte tombstone GC writes over an expired manifest.
pub(crate) fn tombstone(id: CheckpointId) -> [u8; TOMBSTONE_LEN] {
    let mut t = [0u8; TOMBSTONE_LEN];
    t[0..8].copy_from_slice(TOMBSTONE_MAGIC);
    t[8..16].copy_from_slice(&id.get().to_le_bytes());
    t
}

/// Encodes an epoch record blob.
pub(crate) fn encode_epoch(r: &EpochRecord) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let body = rmp_serde::to_vec_named(r)?;
    Ok(encode_framed(EPOCH_MAGIC, RECORD_VERSION, r.epoch, &body))
}

/// Decodes an epoch record blob read from the key of `epoch`.
pub(crate) fn decode_epoch(bytes: &[u8], epoch: u64) -> Result<EpochRecord, FrameError> {
    let (_, body) = decode_framed(EPOCH_MAGIC, RECORD_VERSION, bytes, epoch)?;
    let r: EpochRecord = rmp_serde::from_slice(body)
        .map_err(|e| FrameError::Damaged(DamageKind::Undecodable(format!("epoch record: {e}"))))?;
    if r.epoch != epoch {
        return Err(FrameError::Damaged(DamageKind::HeaderMismatch(format!(
            "epoch record says {}, its key says {epoch}",
            r.epoch
        ))));
    }
    Ok(r)
}

/// Encodes an epoch lease blob.
pub(crate) fn encode_lease(l: &EpochLease) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let body = rmp_serde::to_vec_named(l)?;
    Ok(encode_framed(LEASE_MAGIC, RECORD_VERSION, l.epoch, &body))
}

/// Decodes an epoch lease blob read from the lease key of `epoch`.
pub(crate) fn decode_lease(bytes: &[u8], epoch: u64) -> Result<EpochLease, FrameError> {
    let (_, body) = decode_framed(LEASE_MAGIC, RECORD_VERSION, bytes, epoch)?;
    let l: EpochLease = rmp_serde::from_slice(body)
        .map_err(|e| FrameError::Damaged(DamageKind::Undecodable(format!("epoch lease: {e}"))))?;
    if l.epoch != epoch {
        return Err(FrameError::Damaged(DamageKind::HeaderMismatch(format!(
            "epoch lease says {}, its key says {epoch}",
            l.epoch
        ))));
    }
    Ok(l)
}
