//! Captured and encoded states.
//!
//! [`Snapshot`] is what an object hands back when it is captured: an owned value that the
//! framework encodes *after* the object has been released, so the object is blocked only for the
//! time it takes to build the snapshot. [`EncodedState`] is the msgpack form that lives in stable
//! storage, tagged with the type name and schema version it was written with.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::io::Write;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ObjectError;

/// The type name and schema version a state was captured with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateTag {
    /// The object's stable type name (see [`Checkpointable::type_name`](crate::Checkpointable::type_name)).
    pub type_name: Cow<'static, str>,
    /// The schema version of the encoded state.
    pub version: u32,
}

impl StateTag {
    /// A tag for `type_name` at `version`.
    pub fn new(type_name: impl Into<Cow<'static, str>>, version: u32) -> Self {
        Self {
            type_name: type_name.into(),
            version,
        }
    }
}

impl fmt::Display for StateTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.type_name, self.version)
    }
}

/// A captured state that has not been encoded yet.
///
/// Building one should be cheap: clone what is small, and share what is large. A large object
/// keeps its bulk behind an [`Arc`](std::sync::Arc) (or a persistent, copy-on-write collection),
/// so that capturing is a reference-count increment and the object may go on mutating through
/// [`Arc::make_mut`](std::sync::Arc::make_mut), which copies only if the snapshot is still alive.
///
/// ```
/// use std::sync::Arc;
/// use cohort_object_api::Snapshot;
///
/// #[derive(serde::Serialize)]
/// struct Big { rows: Arc<Vec<u64>> }
///
/// let rows = Arc::new(vec![7; 1_000_000]);
/// let snap = Snapshot::new("Big", 1, Big { rows: rows.clone() }); // no copy of the rows
/// let encoded = snap.encode().unwrap(); // happens later, off the object's task
/// assert_eq!(encoded.tag().type_name, "Big");
/// ```
pub struct Snapshot {
    tag: StateTag,
    body: Body,
}

enum Body {
    Value(Box<dyn ErasedValue>),
    Encoded(Bytes),
}

trait ErasedValue: Send + Sync {
    fn encode_into(&self, out: &mut dyn Write) -> Result<(), rmp_serde::encode::Error>;
}

struct Typed<T>(T);

impl<T: Serialize + Send + Sync> ErasedValue for Typed<T> {
    fn encode_into(&self, mut out: &mut dyn Write) -> Result<(), rmp_serde::encode::Error> {
        // Named maps, so that reordered or added `#[serde(default)]` fields stay readable.
        rmp_serde::encode::write_named(&mut out, &self.0)
    }
}

impl Snapshot {
    /// A snapshot of `value`, encoded later as a msgpack map with named fields.
    pub fn new<T>(type_name: impl Into<Cow<'static, str>>, version: u32, value: T) -> Self
    where
        T: Serialize + Send + Sync + 'static,
    {
        Self {
            tag: StateTag::new(type_name, version),
            body: Body::Value(Box::new(Typed(value))),
        }
    }

    /// A snapshot whose msgpack payload is already encoded, for objects that keep their state
    /// serialized (or reuse a previous payload).
    pub fn from_encoded(state: EncodedState) -> Self {
        Self {
            tag: state.tag,
            body: Body::Encoded(state.payload),
        }
    }

    /// The type name and version this snapshot will be written with.
    pub fn tag(&self) -> &StateTag {
        &self.tag
    }

    /// Encodes the snapshot into `out`, appending the msgpack payload.
    ///
    /// `out` may be a buffer or a streaming upload, so a very large state is never held twice.
    pub fn encode_into(&self, out: &mut dyn Write) -> Result<(), ObjectError> {
        match &self.body {
            Body::Value(value) => value
                .encode_into(out)
                .map_err(|source| ObjectError::Encode {
                    type_name: self.tag.type_name.to_string(),
                    source,
                }),
            Body::Encoded(bytes) => out.write_all(bytes).map_err(|e| ObjectError::Encode {
                type_name: self.tag.type_name.to_string(),
                source: rmp_serde::encode::Error::InvalidValueWrite(
                    rmp::encode::ValueWriteError::InvalidDataWrite(e),
                ),
            }),
        }
    }

    /// Encodes the snapshot into a fresh [`EncodedState`].
    pub fn encode(&self) -> Result<EncodedState, ObjectError> {
        let payload = match &self.body {
            Body::Encoded(bytes) => bytes.clone(),
            Body::Value(_) => {
                let mut out = Vec::new();
                self.encode_into(&mut out)?;
                Bytes::from(out)
            }
        };
        Ok(EncodedState {
            tag: self.tag.clone(),
            payload,
        })
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot").field("tag", &self.tag).finish()
    }
}

/// A state as stored: its tag and its msgpack payload.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedState {
    tag: StateTag,
    payload: Bytes,
}

/// How a stored state's version relates to the version the code reading it expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionCheck {
    /// Written by the current schema; decode it directly.
    Current,
    /// Written by an older schema version; it needs a migration.
    Older(u32),
}

impl EncodedState {
    /// Wraps a stored payload with its tag.
    pub fn new(tag: StateTag, payload: Bytes) -> Self {
        Self { tag, payload }
    }

    /// The type name and version the state was written with.
    pub fn tag(&self) -> &StateTag {
        &self.tag
    }

    /// The msgpack payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Checks that this state belongs to `type_name` and that `current_version` can read it.
    ///
    /// Returns [`ObjectError::TypeMismatch`] for another type and [`ObjectError::FutureVersion`]
    /// for a version newer than `current_version`.
    pub fn check(
        &self,
        type_name: &str,
        current_version: u32,
    ) -> Result<VersionCheck, ObjectError> {
        if self.tag.type_name != type_name {
            return Err(ObjectError::TypeMismatch {
                expected: type_name.to_string(),
                found: self.tag.type_name.to_string(),
            });
        }
        match self.tag.version {
            v if v == current_version => Ok(VersionCheck::Current),
            v if v < current_version => Ok(VersionCheck::Older(v)),
            v => Err(ObjectError::FutureVersion {
                type_name: type_name.to_string(),
                found: v,
                supported: current_version,
            }),
        }
    }

    /// Decodes the payload as `T`, without checking the tag.
    ///
    /// Migration functions use this to read an older schema's shape.
    ///
    /// `Bytes` fields marked `#[serde(with = "cohort::shared_bytes")]` share the payload's
    /// buffer instead of copying it (see [`shared_bytes`](crate::shared_bytes)).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ObjectError> {
        let _decoding = Decoding::enter(&self.payload);
        rmp_serde::from_slice(&self.payload).map_err(|source| ObjectError::Decode {
            tag: self.tag.clone(),
            source,
        })
    }
}

thread_local! {
    /// The payload this thread is decoding, for [`shared_bytes`](crate::shared_bytes) to slice.
    static DECODING: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Marks a payload as the one being decoded on this thread until dropped (restoring the one
/// before: decodes may nest, and a panicking `Deserialize` must not leave it set).
struct Decoding(Option<Bytes>);

impl Decoding {
    fn enter(payload: &Bytes) -> Decoding {
        Decoding(DECODING.with(|d| d.replace(Some(payload.clone()))))
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        let previous = self.0.take();
        DECODING.with(|d| *d.borrow_mut() = previous);
    }
}

/// Serde functions for a [`Bytes`] field that a restore decodes **without copying**: the field
/// shares the buffer the store read the state into, as capture shares it by reference count
/// (capture clones a `Bytes` for the price of an increment; restore then costs no copy either).
///
/// Outside [`EncodedState::decode`] (another serde format, a payload not read by cohort), the
/// bytes are copied, as `Bytes`' own `Deserialize` does. A shared field keeps the buffer it
/// came from alive, which may hold neighbouring states read with it: use it for large fields,
/// where a copy would cost, not for small ones.
///
/// ```
/// use bytes::Bytes;
/// use cohort_object_api::Snapshot;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Image {
///     #[serde(with = "cohort_object_api::shared_bytes")]
///     pixels: Bytes,
/// }
///
/// let captured = Snapshot::new("Image", 1, Image { pixels: Bytes::from(vec![7u8; 1 << 20]) });
/// let stored = captured.encode()?;
/// let restored: Image = stored.decode()?;
/// // The pixels point into the stored payload: no copy was made.
/// let payload = stored.payload().as_ptr_range();
/// assert!(payload.contains(&restored.pixels.as_ptr()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub mod shared_bytes {
    use bytes::Bytes;
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;
    use std::fmt;

    /// Writes the bytes as one msgpack byte string.
    ///
    /// # Errors
    ///
    /// The serializer's.
    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Reads a byte string, sharing the buffer being decoded when there is one.
    ///
    /// # Errors
    ///
    /// The deserializer's, or a value that is not a byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(Shared)
    }

    struct Shared;

    impl<'de> Visitor<'de> for Shared {
        type Value = Bytes;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(share(v))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        // A byte string written by another encoder as an array of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            Ok(Bytes::from(bytes))
        }
    }

    /// `v` as a slice of the payload being decoded when it lies inside it, else a copy.
    fn share(v: &[u8]) -> Bytes {
        super::DECODING.with(|decoding| match &*decoding.borrow() {
            Some(payload) if contains(payload, v) => payload.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        })
    }

    fn contains(outer: &[u8], inner: &[u8]) -> bool {
        let outer = outer.as_ptr_range();
        let inner = inner.as_ptr_range();
        outer.start <= inner.start && inner.end <= outer.end
    }
}

impl fmt::Debug for EncodedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedState")
            .field("tag", &self.tag)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Blob {
        #[serde(with = "crate::shared_bytes")]
        data: Bytes,
        name: String,
    }

    fn shares(payload: &Bytes, field: &Bytes) -> bool {
        payload.as_ptr_range().contains(&field.as_ptr())
    }

    #[test]
    fn a_shared_field_points_into_the_payload_and_round_trips() {
        let blob = Blob {
            data: Bytes::from(vec![3u8; 4096]),
            name: "b".into(),
        };
        let stored = Snapshot::new("Blob", 1, blob).encode().unwrap();
        let restored: Blob = stored.decode().unwrap();
        assert_eq!(restored.data, Bytes::from(vec![3u8; 4096]));
        assert!(shares(stored.payload(), &restored.data));
        // Outside a decode of cohort's, the bytes are copied and still right.
        let copied: Blob = rmp_serde::from_slice(stored.payload()).unwrap();
        assert_eq!(copied, restored);
        assert!(!shares(stored.payload(), &copied.data));
    }

    #[test]
    fn a_decode_that_fails_leaves_no_payload_behind() {
        let stored = Snapshot::new("Blob", 1, 7u32).encode().unwrap();
        assert!(stored.decode::<Blob>().is_err());
        DECODING.with(|d| assert!(d.borrow().is_none()));
    }
}
