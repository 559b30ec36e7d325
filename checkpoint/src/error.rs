//! The one public error type of this crate.

use std::fmt;

use cohort_object_api::{CheckpointId, ErrorKind, ObjectError, ObjectId};

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with stable storage.
///
/// The variants are grouped by what the caller should do about them:
///
/// - **step down**: another coordinator has taken over ([`Fenced`](Self::Fenced));
/// - **re-read and retry at a higher id**: someone committed first
///   ([`Conflict`](Self::Conflict));
/// - **fall back to an older checkpoint or restore from elsewhere**: stored bytes are missing,
///   damaged or unreadable ([`NotFound`](Self::NotFound), [`Damaged`](Self::Damaged),
///   [`Object`](Self::Object));
/// - **upgrade cohort**: a newer cohort wrote blobs this build cannot read
///   ([`FutureFormat`](Self::FutureFormat)). Never fall back past them: the recovery line, fences,
///   rollbacks and GC refuse to run rather than roll back further than the newest committed
///   line;
/// - **retry later**: the store did not answer ([`Unavailable`](Self::Unavailable)), or another
///   process writes the ingress log ([`LogWriterElsewhere`](Self::LogWriterElsewhere));
/// - **fix the configuration or the call**: [`InvalidUrl`](Self::InvalidUrl),
///   [`UnsafeStore`](Self::UnsafeStore), [`ReadOnly`](Self::ReadOnly),
///   [`InvalidInput`](Self::InvalidInput), [`Store`](Self::Store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- step down ----
    /// A newer coordinator (higher epoch) already used this checkpoint id, or GC expired it: this
    /// writer is deposed and must stop writing.
    #[error(
        "fenced: checkpoint {id} in {url} is already taken by {by}; this writer (epoch {epoch}) \
         is deposed and must step down"
    )]
    Fenced {
        /// The checkpoint id the commit tried to create.
        id: CheckpointId,
        /// The epoch of the deposed writer.
        epoch: u64,
        /// Who holds the slot: `epoch N` or `a GC tombstone`.
        by: String,
        /// The store.
        url: String,
    },

    // ---- retry later ----
    /// Another process has ingress log `log` open for writing (on local disk it holds the log's
    /// lock file): a log has one writer. Serve its inputs there, or open it once that process
    /// is gone (the lock goes with the process, however it ends).
    #[error(
        "ingress log {log} in {url} is open for writing by {holder}; a log has one writer: serve its inputs there, or open it once that process is gone"
    )]
    LogWriterElsewhere {
        /// The log's name.
        log: String,
        /// Who holds it, as its lock file says (`pid N on HOST`).
        holder: String,
        /// The store.
        url: String,
    },

    // ---- re-read and retry ----
    /// Someone with an epoch no higher than ours committed this id first, or the id is not the
    /// next one: re-read the newest manifest and retry at a higher id.
    #[error(
        "conflict: cannot commit checkpoint {id} in {url}: {reason}; re-read the newest manifest and retry at the next id"
    )]
    Conflict {
        /// The checkpoint id the commit tried to create.
        id: CheckpointId,
        /// What is in the way.
        reason: String,
        /// The store.
        url: String,
    },

    // ---- fall back or restore from elsewhere ----
    /// A checkpoint, blob or record does not exist.
    #[error("not found: {what} in {url}")]
    NotFound {
        /// What was looked for, with its key.
        what: String,
        /// The store.
        url: String,
    },

    /// Stored bytes are missing, truncated or do not match their checksum or header.
    #[error("damaged data in {url}: {damage}")]
    Damaged {
        /// Exactly what is damaged.
        damage: Box<Damage>,
        /// The store.
        url: String,
    },

    /// A state could not be encoded, or a decoded state did not fit.
    #[error(transparent)]
    Object(#[from] ObjectError),

    // ---- upgrade ----
    /// A blob was written by a newer format version than this build reads: a newer cohort
    /// wrote it. Not damage: falling back past it would roll back further than the newest
    /// committed line, so upgrade to read it.
    #[error(
        "{blob} in {url} has format version {found}, newer than the supported {supported}: upgrade cohort to read it"
    )]
    FutureFormat {
        /// The blob's key, relative to the store's prefix.
        blob: String,
        /// The version found in the blob.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
        /// The store.
        url: String,
    },

    // ---- retry later ----
    /// The store did not answer (after bounded retries with backoff).
    #[error(
        "store unavailable: {operation} failed at {endpoint} after retries: {source}; check that the endpoint is reachable, then retry"
    )]
    Unavailable {
        /// What was being done, with the key.
        operation: String,
        /// The endpoint (or URL) that did not answer.
        endpoint: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    // ---- fix the configuration or the call ----
    /// The store URL cannot be used.
    #[error(
        "invalid store URL {url:?}: {reason}; accepted forms: file:///abs/path, a plain path, s3://bucket/prefix, memory://"
    )]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The store failed the create-if-absent probe: it would let two coordinators commit the
    /// same checkpoint.
    #[error(
        "unsafe store {url}: {reason}. Two writers could then both commit the same checkpoint id, so cohort refuses it. Use a store that honours If-None-Match (AWS S3, MinIO, local disk), or set StoreOptions::allow_unsafe_conditional_put if only one writer ever runs"
    )]
    UnsafeStore {
        /// The store.
        url: String,
        /// What the probe saw.
        reason: String,
    },

    /// A write method was called on a store opened with `open_read_only`.
    #[error(
        "store {url} was opened read-only: cannot {operation}; open it with CheckpointStore::open to write"
    )]
    ReadOnly {
        /// The store.
        url: String,
        /// The refused operation.
        operation: String,
    },

    /// An argument broke a rule (a bad token, `keep` of 0, a manifest that references a blob
    /// outside the store layout, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Any other store error: permissions, a full disk, a misconfigured bucket.
    #[error("store error: {operation} in {url}: {source}")]
    Store {
        /// What was being done, with the key.
        operation: String,
        /// The store.
        url: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

impl Error {
    /// What to do about it, as the groups above say: [`ErrorKind::Fenced`] (step down),
    /// [`ErrorKind::Refused`] (someone committed first: re-read), [`ErrorKind::Data`] (fall
    /// back or restore from elsewhere), [`ErrorKind::Transient`] (the store did not answer:
    /// retry), [`ErrorKind::Invalid`] (fix the configuration or the call, or upgrade cohort for
    /// blobs of a newer format).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Fenced { .. } => ErrorKind::Fenced,
            Self::Conflict { .. } => ErrorKind::Refused,
            Self::Damaged { .. } => ErrorKind::Data,
            Self::Object(e) => e.kind(),
            Self::Unavailable { .. } | Self::LogWriterElsewhere { .. } => ErrorKind::Transient,
            Self::NotFound { .. }
            | Self::FutureFormat { .. }
            | Self::InvalidUrl { .. }
            | Self::UnsafeStore { .. }
            | Self::ReadOnly { .. }
            | Self::InvalidInput(_)
            | Self::Store { .. } => ErrorKind::Invalid,
        }
    }

    /// Whether this error means the writer is deposed ([`Error::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        self.kind() == ErrorKind::Fenced
    }

    /// Whether retrying the same operation later may succeed ([`Error::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// The damage, if this is [`Error::Damaged`].
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            Self::Damaged { damage, .. } => Some(damage),
            _ => None,
        }
    }
}

/// One damaged piece of a checkpoint: which checkpoint, which object, which blob, and what is
/// wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The checkpoint whose manifest references the damaged bytes; [`CheckpointId::ZERO`]
    /// (never a checkpoint's id) for a blob of no checkpoint: an epoch record or lease.
    pub checkpoint: CheckpointId,
    /// The object whose state is damaged; `None` when the manifest itself or a whole segment
    /// header is damaged.
    pub object: Option<ObjectId>,
    /// The blob's key, relative to the store's prefix.
    pub blob: String,
    /// What is wrong.
    pub kind: DamageKind,
}

/// What is wrong with a damaged blob or entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DamageKind {
    /// The blob does not exist.
    Missing,
    /// The blob ends before the entry does.
    Truncated {
        /// The length the entry needs (its end offset).
        needed: u64,
        /// The blob's actual length.
        actual: u64,
    },
    /// The bytes do not match their crc32.
    CrcMismatch {
        /// The crc recorded (in the manifest or the blob).
        expected: u32,
        /// The crc of the bytes read.
        actual: u32,
    },
    /// A header (magic, version, checkpoint id, object id, type name or length) does not match
    /// what the manifest says.
    HeaderMismatch(String),
    /// The bytes pass their checksum but cannot be decoded.
    Undecodable(String),
    /// The blob was written by a newer format version than this build reads (not damaged as
    /// far as this build can tell; a newer cohort reads it). Reported by verification; readers
    /// return [`Error::FutureFormat`].
    FutureFormat {
        /// The version found in the blob.
        found: u16,
        /// The newest version of that kind of blob this build reads.
        supported: u16,
    },
    /// The manifest is stored as a delta, and its base manifest cannot be used (missing,
    /// damaged, expired, or not the bytes the delta was computed from): the delta cannot be
    /// resolved, so the checkpoint is unreadable.
    BaseUnusable {
        /// The base manifest's key, relative to the store's prefix.
        base: String,
        /// What is wrong with the base.
        kind: Box<DamageKind>,
    },
}

impl fmt::Display for DamageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Truncated { needed, actual } => {
                write!(f, "truncated: {actual} bytes, the entry needs {needed}")
            }
            Self::CrcMismatch { expected, actual } => {
                write!(
                    f,
                    "crc mismatch: recorded {expected:#010x}, bytes have {actual:#010x}"
                )
            }
            Self::HeaderMismatch(what) => write!(f, "header mismatch: {what}"),
            Self::Undecodable(what) => write!(f, "undecodable: {what}"),
            Self::FutureFormat { found, supported } => write!(
                f,
                "format version {found}, newer than the supported {supported}: upgrade cohort to read it"
            ),
            Self::BaseUnusable { base, kind } => {
                write!(f, "a delta whose base manifest {base} is unusable: {kind}")
            }
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.checkpoint != CheckpointId::ZERO {
            write!(f, "checkpoint {}, ", self.checkpoint)?;
        }
        if let Some(object) = &self.object {
            write!(f, "object {object}, ")?;
        }
        write!(f, "blob {}: {}", self.blob, self.kind)
    }
}
