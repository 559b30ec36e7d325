//! Framing (tokio-util's length-delimited codec) and the msgpack payload of each frame.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Bytes of the big-endian length prefix of every frame.
pub(crate) const LENGTH_PREFIX_LEN: usize = 4;

/// The deepest nesting of arrays and maps a frame may hold. Messages are votes and metadata, a
/// few levels deep; the limit keeps a hostile frame from exhausting the decoder's stack.
pub(crate) const MAX_NESTING: usize = 64;

/// Why a frame could not be read. Converted into [`Error`](crate::Error), with the peer's
/// address, by the connection.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// The length prefix exceeds the limit; nothing was allocated for the frame.
    TooLarge {
        len: u64,
        max: usize,
        /// The four prefix bytes, to recognise other protocols in the error message.
        prefix: [u8; LENGTH_PREFIX_LEN],
    },
    /// The stream ended in the middle of a frame.
    Truncated { buffered: usize },
    /// Receiving the frame would take the listener past its in-flight frame budget.
    OverBudget {
        len: usize,
        in_flight: usize,
        max: usize,
    },
    /// The transport failed.
    Io(io::Error),
}

impl From<io::Error> for CodecError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// Frames up to this long are received without charging the [`FrameBudget`]: every handshake
/// frame, and the votes, heartbeats and acknowledgements of normal operation.
pub(crate) const FREE_FRAME_LEN: usize = 64 * 1024;

/// The bytes a listener reserves for frames being received, over all its connections, and its
/// limit. The length-delimited codec reserves buffer space for a whole frame as soon as its
/// length prefix arrives, so without it many peers announcing large frames could make a
/// listener reserve gigabytes (sixty CLI connections announcing 16 MiB took 976 MiB).
#[derive(Debug)]
pub(crate) struct FrameBudget {
    max: usize,
    used: AtomicUsize,
}

impl FrameBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `n` bytes of the budget; `Err` with what is in use when they do not fit.
    fn charge(&self, n: usize) -> Result<(), usize> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .map(|_| ())
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes in use.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// tokio-util's [`LengthDelimitedCodec`] with a 4-byte big-endian prefix, reporting an oversized
/// or truncated frame precisely.
///
/// The inner codec checks the announced length against the limit before it reserves buffer
/// space, so an oversized prefix never allocates. A frame longer than [`FREE_FRAME_LEN`] is
/// charged to the listener's [`FrameBudget`] (when one is set) before the inner codec reserves
/// room for it, and released once it is received or the connection drops.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
    /// The inner codec consumed a length prefix and waits for the frame's bytes, which the
    /// buffer alone does not show.
    in_frame: bool,
    budget: Option<Arc<FrameBudget>>,
    /// What the frame being received holds of the budget.
    charged: usize,
}

impl Drop for FrameCodec {
    fn drop(&mut self) {
        self.release();
    }
}

impl FrameCodec {
    pub(crate) fn new(max: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(LENGTH_PREFIX_LEN)
            .big_endian()
            .max_frame_length(max)
            .new_codec();
        Self {
            inner,
            max,
            in_frame: false,
            budget: None,
            charged: 0,
        }
    }

    /// Changes the largest frame accepted from now on (the handshake uses a small limit).
    pub(crate) fn set_max(&mut self, max: usize) {
        self.inner.set_max_frame_length(max);
        self.max = max;
    }

    /// Charges frames longer than [`FREE_FRAME_LEN`] to `budget` from now on.
    pub(crate) fn set_budget(&mut self, budget: Arc<FrameBudget>) {
        self.release();
        self.budget = Some(budget);
    }

    fn release(&mut self) {
        if let Some(budget) = &self.budget
            && self.charged > 0
        {
            budget.release(self.charged);
        }
        self.charged = 0;
    }

    /// Before the inner codec reads a length prefix (and reserves room for the frame), charges
    /// the frame to the budget. The prefix stays in `src` when it does not fit.
    fn charge_next(&mut self, src: &BytesMut) -> Result<(), CodecError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if self.in_frame || self.charged > 0 {
            return Ok(());
        }
        let Some(prefix) = src.get(..LENGTH_PREFIX_LEN) else {
            return Ok(());
        };
        let mut len = [0u8; LENGTH_PREFIX_LEN];
        len.copy_from_slice(prefix);
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        // Over the limit: the inner codec refuses it without reserving anything.
        if len <= FREE_FRAME_LEN || len > self.max {
            return Ok(());
        }
        budget
            .charge(len)
            .map_err(|in_flight| CodecError::OverBudget {
                len,
                in_flight,
                max: budget.max,
            })?;
        self.charged = len;
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        self.charge_next(src)?;
        let before = src.len();
        match self.inner.decode(src) {
            Ok(Some(frame)) => {
                self.in_frame = false;
                self.release();
                Ok(Some(frame))
            }
            Ok(None) => {
                self.in_frame |= src.len() < before;
                Ok(None)
            }
            Err(err) if is_too_large(&err) => {
                // The inner codec fails before consuming the prefix, so it is still at the front.
                let mut prefix = [0u8; LENGTH_PREFIX_LEN];
                let head = src.get(..LENGTH_PREFIX_LEN).unwrap_or_default();
                prefix[..head.len()].copy_from_slice(head);
                Err(CodecError::TooLarge {
                    len: u64::from(u32::from_be_bytes(prefix)),
                    max: self.max,
                    prefix,
                })
            }
            Err(err) => Err(CodecError::Io(err)),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && !self.in_frame => Ok(None),
            None => Err(CodecError::Truncated {
                buffered: buf.len() + if self.in_frame { LENGTH_PREFIX_LEN } else { 0 },
            }),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        // Callers check the length first; the inner codec's own check is a backstop.
        self.inner.encode(frame, dst).map_err(CodecError::Io)
    }
}

fn is_too_large(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

/// Encodes a message as msgpack with named fields, so that a reader can tell fields apart and
/// skip ones it does not know.
pub(crate) fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Bytes, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(msg).map(Bytes::from)
}

/// Decodes one frame's msgpack payload, refusing trailing bytes and deep nesting.
pub(crate) fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut rest = frame;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_NESTING);
    let msg = T::deserialize(&mut de)?;
    drop(de);
    if !rest.is_empty() {
        return Err(rmp_serde::decode::Error::Syntax(format!(
            "{} unexpected bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Describes bytes that were not a cohort frame, for an error message: printable text is shown
/// as text, and well-known protocols are named.
pub(crate) fn describe_foreign(prefix: &[u8]) -> String {
    let guess = if prefix.starts_with(b"GET ")
        || prefix.starts_with(b"POST")
        || prefix.starts_with(b"PUT ")
        || prefix.starts_with(b"HEAD")
        || prefix.starts_with(b"HTTP")
        || prefix.starts_with(b"PRI ")
    {
        " (an HTTP client?)"
    } else if prefix.first() == Some(&0x16) && prefix.get(1) == Some(&0x03) {
        " (a TLS client?)"
    } else if prefix.starts_with(b"SSH-") {
        " (an SSH client?)"
    } else {
        ""
    };
    format!("first bytes {}{guess}", escape_bytes(prefix))
}

/// Shows bytes as an escaped string literal, such as `"GET "` or `"\x16\x03\x01\x02"`.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let mut codec = FrameCodec::new(1024);
        let mut src = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        let capacity = src.capacity();
        match codec.decode(&mut src) {
            Err(CodecError::TooLarge { len, max, prefix }) => {
                assert_eq!(len, 0x4745_5420);
                assert_eq!(max, 1024);
                assert_eq!(&prefix, b"GET ");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(
            src.capacity(),
            capacity,
            "the buffer grew for a refused frame"
        );
    }

    #[test]
    fn a_frame_split_anywhere_is_reassembled() {
        let mut wire = BytesMut::new();
        let mut codec = FrameCodec::new(1024);
        codec
            .encode(Bytes::from_static(b"hello"), &mut wire)
            .unwrap();
        for split in 0..wire.len() {
            let mut codec = FrameCodec::new(1024);
            let mut src = BytesMut::from(&wire[..split]);
            assert!(codec.decode(&mut src).unwrap().is_none());
            src.extend_from_slice(&wire[split..]);
            assert_eq!(&codec.decode(&mut src).unwrap().unwrap()[..], b"hello");
        }
    }

    #[test]
    fn large_frames_are_charged_to_the_budget_until_received() {
        let budget = FrameBudget::new(3 * FREE_FRAME_LEN);
        let big = 2 * FREE_FRAME_LEN;
        let mut a = FrameCodec::new(1 << 24);
        a.set_budget(Arc::clone(&budget));
        let mut b = FrameCodec::new(1 << 24);
        b.set_budget(Arc::clone(&budget));
        let announce = |len: usize| BytesMut::from(&(len as u32).to_be_bytes()[..]);

        // A announces a large frame: charged at once, before a byte of it arrives.
        let mut src_a = announce(big);
        assert!(a.decode(&mut src_a).unwrap().is_none());
        assert_eq!(budget.in_use(), big);
        // B's large frame does not fit beside it: refused, the prefix left in place.
        let mut src_b = announce(big);
        match b.decode(&mut src_b) {
            Err(CodecError::OverBudget {
                len,
                in_flight,
                max,
            }) => assert_eq!((len, in_flight, max), (big, big, 3 * FREE_FRAME_LEN)),
            other => panic!("expected OverBudget, got {other:?}"),
        }
        assert_eq!(src_b.len(), LENGTH_PREFIX_LEN);
        // Small frames are free.
        let mut small = announce(10);
        small.extend_from_slice(&[0u8; 10]);
        assert_eq!(b.decode(&mut small).unwrap().unwrap().len(), 10);
        // A's frame arrives: released.
        src_a.extend_from_slice(&vec![7u8; big]);
        assert_eq!(a.decode(&mut src_a).unwrap().unwrap().len(), big);
        assert_eq!(budget.in_use(), 0);
        // A connection dropped in the middle of a frame gives its charge back.
        let mut src_b = announce(big);
        assert!(b.decode(&mut src_b).unwrap().is_none());
        assert_eq!(budget.in_use(), big);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let mut codec = FrameCodec::new(1024);
        let mut src = BytesMut::from(&[0u8, 0, 0, 10, 1, 2, 3][..]);
        assert!(matches!(
            codec.decode_eof(&mut src),
            Err(CodecError::Truncated { buffered: 7 })
        ));
        let mut codec = FrameCodec::new(1024);
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());

        // The prefix alone: the inner codec consumed it, and the buffer is empty.
        let mut codec = FrameCodec::new(1024);
        let mut src = BytesMut::from(&[0u8, 0, 0, 10][..]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(src.is_empty());
        assert!(matches!(
            codec.decode_eof(&mut src),
            Err(CodecError::Truncated { buffered: 4 })
        ));
    }

    #[test]
    fn trailing_bytes_and_deep_nesting_are_refused() {
        let mut frame = encode(&7u32).unwrap().to_vec();
        assert_eq!(decode::<u32>(&frame).unwrap(), 7);
        frame.push(0xc0);
        assert!(decode::<u32>(&frame).is_err());

        // 100 000 nested one-element arrays: must fail cleanly, not overflow the stack.
        let mut deep = vec![0x91u8; 100_000];
        deep.push(0xc0);
        assert!(decode::<serde::de::IgnoredAny>(&deep).is_err());
    }

    #[test]
    fn foreign_protocols_are_named() {
        assert!(describe_foreign(b"GET ").contains("HTTP"));
        assert!(describe_foreign(&[0x16, 0x03, 0x01, 0x02]).contains("TLS"));
        assert_eq!(
            describe_foreign(b"\x00\x01ab"),
            "first bytes \"\\x00\\x01ab\""
        );
    }
}
