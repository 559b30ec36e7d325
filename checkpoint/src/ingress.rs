//! Ingress logs: the inputs that enter a cohort from outside, durable before they are
//! acknowledged.
//!
//! An [`IngressLog`] lives in the cohort's store under `ingress/<name>/`. Each input carries a
//! client id and the client's sequence number; [`append`](IngressLog::append) answers once the
//! input is durable, and a retried input (a sequence number the client used already) is
//! acknowledged again without being stored twice. Concurrent appends share one write (and, on
//! local disk, one fsync): a committer task takes every input queued while the previous write
//! ran and writes them as one *batch* blob, create-only, so a second writer of the same log
//! is refused rather than overwriting. On local disk a log has one writer: opening it locks
//! `ingress/<name>/writer.lock` until the log is dropped or the process ends, and a second
//! open is refused ([`Error::LogWriterElsewhere`]) meanwhile.
//!
//! Every input gets a *position*: the log's inputs are numbered from 0 in the order they
//! became durable. A batch blob is named by its first position
//! (`ingress/<name>/<first, 20 digits>.log`) and holds, framed with a crc32:
//!
//! ```text
//! "CIGL" | format version u16 LE | first position u64 LE | msgpack [[client, seq, to, payload], …] | crc32 u32 LE
//! ```
//!
//! A reader (the cohort's ingress source, `cohort_coordinator::ingress`) reads them in order
//! from a position; a checkpoint records the position its objects consumed, and
//! [`truncate_below`](IngressLog::truncate_below) deletes the batches no kept checkpoint
//! needs, after saving the client table (`ingress/<name>/clients-<position>.tbl`) so that
//! deduplication survives it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cohort_object_api::ObjectId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Damage, DamageKind, Error, Result};
use crate::format;
use crate::keys;
use crate::store::CheckpointStore;

const MAGIC: &[u8; 4] = b"CIGL";
const TABLE_MAGIC: &[u8; 4] = b"CIGT";
/// The format version of batch and client-table blobs.
pub const INGRESS_FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 4 + 2 + 8 + 4;

/// The longest client id accepted, in bytes.
pub const MAX_CLIENT_LEN: usize = 256;

/// Tuning of an [`IngressLog`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IngressOptions {
    /// The most inputs one batch (one write) holds.
    pub max_batch: usize,
    /// The most bytes of payload one batch holds (a single larger input is a batch alone).
    pub max_batch_bytes: usize,
    /// How many of the newest batches stay in memory for readers (older ones are read back
    /// from the store).
    pub cached_batches: usize,
}

impl Default for IngressOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            max_batch_bytes: 8 << 20,
            cached_batches: 256,
        }
    }
}

/// One durable input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRecord {
    /// Its place in the log.
    pub position: u64,
    /// The client that sent it.
    pub client: String,
    /// The client's sequence number of it.
    pub seq: u64,
    /// The cohort object it is for.
    pub to: ObjectId,
    /// The encoded input (the target's message, as the writer encoded it).
    pub payload: Bytes,
}

/// The answer to an [`append`](IngressLog::append): the input is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Its position; for a duplicate, the position of the client's newest durable input.
    pub position: u64,
    /// The client had used this sequence number already: nothing was stored this time.
    pub duplicate: bool,
}

/// What [`IngressLog::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressReport {
    /// The log's name.
    pub name: String,
    /// The batch blobs read.
    pub batches: usize,
    /// The inputs they hold.
    pub records: u64,
    /// The first position still stored (the log was truncated below it).
    pub first: u64,
    /// The next position to be assigned.
    pub end: u64,
    /// Clients with a durable input.
    pub clients: usize,
    /// What is wrong, if anything.
    pub damaged: Vec<Damage>,
    /// The newest segment ends in an append that a crash cut off (never acknowledged; the
    /// next open cuts it): its key.
    pub torn_tail: Option<String>,
}

/// How many of a client's durable sequence numbers above its contiguous floor are remembered
/// one by one; beyond it the floor moves up past the oldest gap.
pub const MAX_CLIENT_GAPS: usize = 65_536;

/// What a client has made durable: every sequence number up to `floor`, and the ones in
/// `above` (inputs that overtook others still in flight), with their positions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientMark {
    floor: u64,
    floor_position: u64,
    above: BTreeMap<u64, u64>,
}

impl ClientMark {
    /// The position of durable input `seq`, if it is one (the floor's for an old one).
    fn durable(&self, seq: u64) -> Option<u64> {
        if seq <= self.floor {
            return Some(self.floor_position);
        }
        self.above.get(&seq).copied()
    }

    fn record(&mut self, seq: u64, position: u64) {
        if seq <= self.floor {
            return;
        }
        self.above.insert(seq, position);
        while let Some(p) = self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
            self.floor_position = p;
        }
        while self.above.len() > MAX_CLIENT_GAPS {
            if let Some((s, p)) = self.above.pop_first() {
                (self.floor, self.floor_position) = (s, p);
            }
            while let Some(p) = self.above.remove(&(self.floor + 1)) {
                self.floor += 1;
                self.floor_position = p;
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WireRecord(String, u64, ObjectId, #[serde(with = "bin")] Vec<u8>);

/// [`WireRecord`] as it is written, borrowing the input.
#[derive(Serialize)]
struct WireRecordRef<'a>(&'a str, u64, &'a ObjectId, #[serde(with = "bin")] &'a [u8]);

/// A payload as msgpack `bin` (an array of integers otherwise).
mod bin {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, B: AsRef<[u8]> + ?Sized>(
        v: &B,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v.as_ref())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bin;
        impl<'de> Visitor<'de> for Bin {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bin)
    }
}

struct Pending {
    client: String,
    seq: u64,
    to: ObjectId,
    payload: Bytes,
}

/// Inputs queued or being written, by client and sequence number → the callers waiting.
type InFlight = HashMap<String, HashMap<u64, Vec<oneshot::Sender<Result<Ack>>>>>;

struct State {
    /// The next position to assign (every position below it is durable).
    end: u64,
    /// The first position still stored.
    first: u64,
    clients: HashMap<String, ClientMark>,
    /// (client, seq) queued or being written → the callers waiting for it.
    in_flight: InFlight,
    /// The first position of every stored batch, ascending.
    batches: Vec<u64>,
    /// The newest batches, by first position.
    cache: VecDeque<Arc<Vec<IngressRecord>>>,
    /// Set when a write failed in a way that leaves its outcome unknown: appends are refused
    /// until the log is opened again (which reads what landed).
    in_doubt: Option<String>,
}

struct Inner {
    store: CheckpointStore,
    name: String,
    /// On local disk, the log's lock file, locked while this log is open (released with it,
    /// or by the OS when the process ends).
    _writer_lock: Option<std::fs::File>,
    options: IngressOptions,
    state: Mutex<State>,
    queue: mpsc::UnboundedSender<Pending>,
    durable: watch::Sender<u64>,
}

/// A durable, deduplicated, group-committed log of inputs. See the [module docs](self).
/// Cheap to clone; the clones share one committer.
///
/// ```
/// # async fn demo() -> cohort_checkpoint::Result<()> {
/// use cohort_checkpoint::CheckpointStore;
/// use cohort_checkpoint::ingress::{IngressLog, IngressOptions};
/// use cohort_object_api::ObjectId;
///
/// let store = CheckpointStore::memory();
/// let log = IngressLog::open(&store, "deposits", IngressOptions::default()).await?;
/// let to = ObjectId::new("account-1").unwrap();
/// let ack = log.append("client-7", 1, to.clone(), vec![1, 2, 3].into()).await?;
/// assert_eq!((ack.position, ack.duplicate), (0, false));
/// // A retry of the same input is acknowledged, not stored twice.
/// assert!(log.append("client-7", 1, to, vec![1, 2, 3].into()).await?.duplicate);
/// assert_eq!(log.end(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IngressLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IngressLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressLog")
            .field("store", &self.inner.store.url())
            .field("name", &self.inner.name)
            .field("end", &self.end())
            .finish()
    }
}

/// The name of a local log's lock file, in its directory (not a batch or a table: the log's
/// readers skip it).
const WRITER_LOCK: &str = "writer.lock";

/// On local disk, takes the exclusive lock of log `name`'s lock file and writes who holds it
/// into it; `None` on an object store, whose create-only puts keep writers apart instead.
async fn lock_writer(store: &CheckpointStore, name: &str) -> Result<Option<std::fs::File>> {
    let Some((path, _)) = store.local_file(&format!("{}/{name}/{WRITER_LOCK}", keys::INGRESS))
    else {
        return Ok(None);
    };
    store.check_writable("open an ingress log for writing")?;
    let holder = format!(
        "pid {} on {}",
        std::process::id(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "this host".into())
    );
    let (log, url) = (name.to_owned(), store.url().to_owned());
    let locked = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Seek as _, Write as _};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                file.rewind()?;
                file.write_all(holder.as_bytes())?;
                Ok(Ok(file))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut by = String::new();
                let _ = file.read_to_string(&mut by);
                Ok(Err(by))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    })
    .await
    .map_err(|e| Error::InvalidInput(format!("the ingress lock task failed: {e}")))?;
    match locked {
        Ok(Ok(file)) => Ok(Some(file)),
        Ok(Err(by)) => Err(Error::LogWriterElsewhere {
            log,
            holder: if by.trim().is_empty() {
                "another process".into()
            } else {
                by.trim().to_owned()
            },
            url,
        }),
        Err(e) => Err(Error::Unavailable {
            operation: format!("lock ingress log {log} for writing"),
            endpoint: url,
            source: object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn batch_key(name: &str, first: u64) -> String {
    format!("{}/{name}/{first:020}.log", keys::INGRESS)
}

fn table_key(name: &str, position: u64) -> String {
    format!("{}/{name}/clients-{position:020}.tbl", keys::INGRESS)
}

enum Key {
    Batch(u64),
    Table(u64),
}

fn parse_key(name: &str, key: &str) -> Option<Key> {
    let rest = key.strip_prefix(keys::INGRESS)?.strip_prefix('/')?;
    let file = rest.strip_prefix(name)?.strip_prefix('/')?;
    let digits = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if let Some(n) = file.strip_suffix(".log") {
        return digits(n).map(Key::Batch);
    }
    file.strip_prefix("clients-")?
        .strip_suffix(".tbl")
        .and_then(digits)
        .map(Key::Table)
}

fn frame(magic: &[u8; 4], first: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 4);
    out.extend_from_slice(magic);
    out.extend_from_slice(&INGRESS_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(body);
    let crc = format::crc(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the frame at the start of `bytes`; returns its position field, its body and its
/// whole length.
fn unframe<'a>(
    magic: &[u8; 4],
    bytes: &'a [u8],
) -> std::result::Result<(u64, &'a [u8], usize), DamageKind> {
    let truncated = |needed: usize| DamageKind::Truncated {
        needed: needed as u64,
        actual: bytes.len() as u64,
    };
    if bytes.len() < HEADER_LEN {
        return Err(truncated(HEADER_LEN + 4));
    }
    if &bytes[..4] != magic {
        return Err(DamageKind::HeaderMismatch(
            "not an ingress log frame".into(),
        ));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version > INGRESS_FORMAT_VERSION {
        return Err(DamageKind::FutureFormat {
            found: version,
            supported: INGRESS_FORMAT_VERSION,
        });
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[6..14]);
    let position = u64::from_le_bytes(word);
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[14..18]);
    let body_len = u32::from_le_bytes(len) as usize;
    let total = HEADER_LEN + body_len + 4;
    if bytes.len() < total {
        return Err(truncated(total));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[total - 4..total]);
    let expected = u32::from_le_bytes(crc);
    let actual = format::crc(&bytes[..total - 4]);
    if expected != actual {
        return Err(DamageKind::CrcMismatch { expected, actual });
    }
    Ok((position, &bytes[HEADER_LEN..total - 4], total))
}

/// The batches of a segment blob, in order, and the length of its valid prefix. A frame that
/// does not verify ends the segment: `Err` with the damage and the valid prefix's length
/// (after the last frame of the newest segment, a write that was cut off).
struct Segment {
    batches: Vec<Vec<IngressRecord>>,
    valid: usize,
    damage: Option<DamageKind>,
    /// The frame that does not verify is what an append cut off by a crash leaves: short, or
    /// ending in unwritten (zero) blocks, up to the end of the blob. A flipped byte in a
    /// complete frame is damage.
    damage_at_end: bool,
}

fn decode_segment(bytes: &[u8]) -> Segment {
    let mut segment = Segment {
        batches: Vec::new(),
        valid: 0,
        damage: None,
        damage_at_end: false,
    };
    while segment.valid < bytes.len() {
        match decode_frame(&bytes[segment.valid..]) {
            Ok((batch, len)) => {
                segment.batches.push(batch);
                segment.valid += len;
            }
            Err(kind) => {
                let rest = &bytes[segment.valid..];
                // A crash leaves an append short, or its blocks unwritten (zeros, trailer
                // included); a complete frame whose crc is wrong is damage, not a torn write.
                segment.damage_at_end = match &kind {
                    DamageKind::Truncated { .. } => true,
                    DamageKind::CrcMismatch { .. } | DamageKind::HeaderMismatch(_) => {
                        rest.iter().rev().take(4).all(|b| *b == 0)
                            && frame_len(rest).is_none_or(|len| len >= rest.len())
                    }
                    _ => false,
                };
                segment.damage = Some(kind);
                break;
            }
        }
    }
    if bytes.is_empty() {
        segment.damage = Some(DamageKind::Truncated {
            needed: (HEADER_LEN + 4) as u64,
            actual: 0,
        });
        segment.damage_at_end = true;
    }
    segment
}

/// The whole length the frame at the start of `bytes` claims.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(14..18)?.try_into().ok()?) as usize;
    Some(HEADER_LEN + len + 4)
}

fn decode_frame(bytes: &[u8]) -> std::result::Result<(Vec<IngressRecord>, usize), DamageKind> {
    let (first, body, len) = unframe(MAGIC, bytes)?;
    let wire: Vec<WireRecord> =
        rmp_serde::from_slice(body).map_err(|e| DamageKind::Undecodable(e.to_string()))?;
    let records = wire
        .into_iter()
        .enumerate()
        .map(|(i, WireRecord(client, seq, to, payload))| IngressRecord {
            position: first + i as u64,
            client,
            seq,
            to,
            payload: Bytes::from(payload),
        })
        .collect();
    Ok((records, len))
}

fn validate_name(name: &str) -> Result<()> {
    keys::validate_token("ingress log name", name)
}

impl IngressLog {
    /// Opens (or creates) the log `name` (1 to 64 of `[A-Za-z0-9_-]`) in `store`: reads every
    /// stored batch to learn where the log ends and each client's newest input, then starts
    /// the committer. Call inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad name; [`Error::Damaged`] when a stored batch does not
    /// verify or batches are missing between the first and the last (nothing is appended to
    /// a log whose history is in doubt; `cohort verify` names the blob); the store's errors.
    pub async fn open(
        store: &CheckpointStore,
        name: &str,
        options: IngressOptions,
    ) -> Result<Self> {
        validate_name(name)?;
        let writer_lock = lock_writer(store, name).await?;
        let scan = scan(store, name).await?;
        if let Some(damage) = scan.damaged.into_iter().next() {
            return Err(store.inner_damaged(damage));
        }
        if let Some((key, valid)) = &scan.torn {
            tracing::warn!(log = name, blob = %key, valid, "the ingress log ends in an append that was cut off (never acknowledged); cutting it");
            if *valid == 0 {
                store.delete_keys(std::iter::once(key.clone())).await?;
            } else {
                store.truncate_blob(key, *valid).await?;
            }
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let (durable, _) = watch::channel(scan.end);
        let mut cache = VecDeque::new();
        for batch in scan.tail {
            cache.push_back(Arc::new(batch));
        }
        while cache.len() > options.cached_batches {
            cache.pop_front();
        }
        let inner = Arc::new(Inner {
            store: store.clone(),
            name: name.to_owned(),
            _writer_lock: writer_lock,
            options,
            state: Mutex::new(State {
                end: scan.end,
                first: scan.first,
                clients: scan.clients,
                in_flight: HashMap::new(),
                batches: scan.batches,
                cache,
                in_doubt: None,
            }),
            queue,
            durable,
        });
        tokio::spawn(commit_loop(Arc::downgrade(&inner), rx));
        Ok(Self { inner })
    }

    /// The log's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The store it lives in.
    pub fn store(&self) -> &CheckpointStore {
        &self.inner.store
    }

    /// The next position to be assigned: every input below it is durable.
    pub fn end(&self) -> u64 {
        lock(&self.inner.state).end
    }

    /// The first position still stored.
    pub fn first(&self) -> u64 {
        lock(&self.inner.state).first
    }

    /// Watches [`end`](Self::end).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable.subscribe()
    }

    /// Appends one input for object `to` from `client` (at most [`MAX_CLIENT_LEN`] bytes)
    /// with the client's sequence number `seq`, and answers once it is durable. A `seq` the
    /// client made durable already is answered as a duplicate without storing anything; one
    /// still being written is answered with that write. A client numbers its inputs 1, 2, 3,
    /// … and a retry reuses its number; inputs may be in flight concurrently and overtake
    /// each other (up to [`MAX_CLIENT_GAPS`] ahead of the oldest one not yet durable).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad client id; the store's error when the write failed
    /// (the input is not durable: retry it with the same `seq`); [`Error::Conflict`] when
    /// another writer appended to this log, or an earlier write's outcome is unknown (open the
    /// log again, which reads what landed).
    pub async fn append(
        &self,
        client: &str,
        seq: u64,
        to: ObjectId,
        payload: Bytes,
    ) -> Result<Ack> {
        if client.is_empty() || client.len() > MAX_CLIENT_LEN {
            return Err(Error::InvalidInput(format!(
                "a client id must be 1 to {MAX_CLIENT_LEN} bytes, got {}",
                client.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.inner.state);
            if let Some(reason) = &state.in_doubt {
                return Err(self.in_doubt(reason));
            }
            if let Some(position) = state.clients.get(client).and_then(|m| m.durable(seq)) {
                return Ok(Ack {
                    position,
                    duplicate: true,
                });
            }
            // Looked up by `&str`: a client's first input in flight allocates its key, no other.
            if !state.in_flight.contains_key(client) {
                state.in_flight.insert(client.to_owned(), HashMap::new());
            }
            let Some(waiters) = state
                .in_flight
                .get_mut(client)
                .map(|m| m.entry(seq).or_default())
            else {
                return Err(Error::InvalidInput(
                    "the ingress log lost track of an input in flight".into(),
                ));
            };
            let first = waiters.is_empty();
            waiters.push(tx);
            if first {
                let _ = self.inner.queue.send(Pending {
                    client: client.to_owned(),
                    seq,
                    to,
                    payload,
                });
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::InvalidInput(
                "the ingress log's committer stopped (the runtime is shutting down)".into(),
            ))
        })
    }

    fn in_doubt(&self, reason: &str) -> Error {
        Error::Conflict {
            id: cohort_object_api::CheckpointId::ZERO,
            reason: format!(
                "ingress log {}: {reason}; open the log again to read what landed",
                self.inner.name
            ),
            url: self.inner.store.url().to_owned(),
        }
    }

    /// Up to `max` durable inputs from position `from` on, in order (none when `from` is at
    /// the end).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when `from` is below the first stored position (truncated);
    /// [`Error::Damaged`] or the store's errors when a batch is read back.
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<IngressRecord>> {
        let start = {
            let state = lock(&self.inner.state);
            if from >= state.end || max == 0 {
                return Ok(Vec::new());
            }
            if from < state.first {
                return Err(Error::NotFound {
                    what: format!(
                        "position {from} of ingress log {} (truncated below {})",
                        self.inner.name, state.first
                    ),
                    url: self.inner.store.url().to_owned(),
                });
            }
            if let Some(i) = state.cache.iter().position(|b| {
                b.first().is_some_and(|r| r.position <= from)
                    && b.last().is_some_and(|r| r.position >= from)
            }) {
                return Ok(state
                    .cache
                    .iter()
                    .skip(i)
                    .flat_map(|b| b.iter())
                    .skip_while(|r| r.position < from)
                    .take(max)
                    .cloned()
                    .collect());
            }
            let i = state.batches.partition_point(|&f| f <= from);
            state.batches[i.saturating_sub(1)]
        };
        // Older than the cache: read its segment (and the next ones) back.
        let mut out = Vec::new();
        let mut first = start;
        while out.len() < max {
            let key = batch_key(&self.inner.name, first);
            // What was durable before the read: the read must hold it. A frame the writer was
            // appending meanwhile may be cut short at the end, which is not damage.
            let durable = self.end();
            let bytes = self.inner.store.get_raw(&key).await?;
            let segment = decode_segment(&bytes);
            let next = segment
                .batches
                .last()
                .and_then(|b| b.last())
                .map_or(first, |r| r.position + 1);
            // Damage ends a segment: an error unless its inputs were all read before it.
            if let Some(kind) = segment.damage
                && next < durable
                && self.segment_after(first).is_none_or(|n| n != next)
            {
                return Err(self.inner.store.inner_damaged(Damage {
                    checkpoint: cohort_object_api::CheckpointId::ZERO,
                    object: None,
                    blob: key,
                    kind,
                }));
            }
            out.extend(
                segment
                    .batches
                    .into_iter()
                    .flatten()
                    .filter(|r| r.position >= from)
                    .take(max - out.len()),
            );
            if next >= self.end() || next == first {
                break;
            }
            // The rest may be in this very segment, appended to since it was read (on local
            // disk a segment holds many batches): the next read gets it.
            match self.segment_after(first) {
                Some(after) if after == next => first = after,
                _ => break,
            }
        }
        Ok(out)
    }

    /// The first position of the segment stored after the one starting at `first`.
    fn segment_after(&self, first: u64) -> Option<u64> {
        let state = lock(&self.inner.state);
        let i = state.batches.partition_point(|&f| f <= first);
        state.batches.get(i).copied()
    }

    /// Deletes every batch whose inputs are all below `position` (no kept checkpoint needs
    /// them), after saving the client table so that retried inputs are still recognised.
    /// Returns how many batches were deleted.
    ///
    /// # Errors
    ///
    /// The store's errors; nothing is deleted before the client table is durable.
    pub async fn truncate_below(&self, position: u64) -> Result<usize> {
        let (doomed, table, end) = {
            let state = lock(&self.inner.state);
            let position = position.min(state.end);
            // A batch goes when the next one starts at or below `position`.
            let doomed: Vec<u64> = state
                .batches
                .windows(2)
                .take_while(|w| w[1] <= position)
                .map(|w| w[0])
                .collect();
            let table: BTreeMap<String, ClientMark> = state
                .clients
                .iter()
                .map(|(c, m)| (c.clone(), m.clone()))
                .collect();
            (doomed, table, state.end)
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        let body = rmp_serde::to_vec(&table)
            .map_err(|e| Error::InvalidInput(format!("encoding the client table: {e}")))?;
        let key = table_key(&self.inner.name, end);
        self.inner
            .store
            .put_raw(&key, frame(TABLE_MAGIC, end, &body), false)
            .await?;
        let keys: Vec<String> = doomed
            .iter()
            .map(|f| batch_key(&self.inner.name, *f))
            .collect();
        // Older client tables are superseded by this one.
        let old_tables: Vec<String> = self
            .inner
            .store
            .list_keys(&format!("{}/{}", keys::INGRESS, self.inner.name))
            .await?
            .into_iter()
            .filter(|k| matches!(parse_key(&self.inner.name, k), Some(Key::Table(p)) if p < end))
            .collect();
        {
            let mut state = lock(&self.inner.state);
            let keep_from = doomed.last().map_or(0, |_| {
                state
                    .batches
                    .iter()
                    .copied()
                    .find(|f| !doomed.contains(f))
                    .unwrap_or(state.end)
            });
            state.batches.retain(|f| *f >= keep_from);
            state.first = state.first.max(keep_from);
            state
                .cache
                .retain(|b| b.last().is_some_and(|r| r.position >= keep_from));
        }
        self.inner
            .store
            .delete_keys(keys.into_iter().chain(old_tables))
            .await?;
        Ok(doomed.len())
    }

    /// Reads every blob of log `name` in `store` and checks it: crc, header, order, no batch
    /// missing between the first and the last.
    ///
    /// # Errors
    ///
    /// The store's errors (damage is reported in the report, not as an error).
    pub async fn verify(store: &CheckpointStore, name: &str) -> Result<IngressReport> {
        validate_name(name)?;
        let scan = scan(store, name).await?;
        Ok(IngressReport {
            name: name.to_owned(),
            batches: scan.batches.len(),
            records: scan.end - scan.first,
            first: scan.first,
            end: scan.end,
            clients: scan.clients.len(),
            damaged: scan.damaged,
            torn_tail: scan.torn.map(|(key, _)| key),
        })
    }

    /// The names of the ingress logs in `store`.
    ///
    /// # Errors
    ///
    /// The store's errors.
    pub async fn names(store: &CheckpointStore) -> Result<Vec<String>> {
        let mut names: Vec<String> = store
            .list_keys(keys::INGRESS)
            .await?
            .into_iter()
            .filter_map(|k| {
                let rest = k.strip_prefix(keys::INGRESS)?.strip_prefix('/')?;
                let name = rest.split('/').next()?;
                validate_name(name).is_ok().then(|| name.to_owned())
            })
            .collect();
        names.dedup();
        Ok(names)
    }
}

struct Scan {
    first: u64,
    end: u64,
    clients: HashMap<String, ClientMark>,
    batches: Vec<u64>,
    tail: Vec<Vec<IngressRecord>>,
    damaged: Vec<Damage>,
    /// The newest segment ends in a cut-off append: its key and the length of its valid part.
    torn: Option<(String, u64)>,
}

async fn scan(store: &CheckpointStore, name: &str) -> Result<Scan> {
    let mut batches = Vec::new();
    let mut table = None;
    for key in store
        .list_keys(&format!("{}/{name}", keys::INGRESS))
        .await?
    {
        match parse_key(name, &key) {
            Some(Key::Batch(first)) => batches.push(first),
            Some(Key::Table(p)) => table = table.max(Some(p)),
            None => {}
        }
    }
    batches.sort_unstable();
    let damage = |blob: String, kind: DamageKind| Damage {
        checkpoint: cohort_object_api::CheckpointId::ZERO,
        object: None,
        blob,
        kind,
    };
    let mut damaged = Vec::new();
    let mut clients: HashMap<String, ClientMark> = HashMap::new();
    if let Some(p) = table {
        let key = table_key(name, p);
        let bytes = store.get_raw(&key).await?;
        match unframe(TABLE_MAGIC, &bytes).and_then(|(_, body, _)| {
            rmp_serde::from_slice::<BTreeMap<String, ClientMark>>(body)
                .map_err(|e| DamageKind::Undecodable(e.to_string()))
        }) {
            Ok(t) => clients.extend(t),
            Err(kind) => damaged.push(damage(key, kind)),
        }
    }
    let first = batches.first().copied().unwrap_or(table.unwrap_or(0));
    let mut end = first;
    let mut tail = Vec::new();
    let mut torn = None;
    for (i, &start) in batches.iter().enumerate() {
        let key = batch_key(name, start);
        if start != end {
            damaged.push(damage(
                key.clone(),
                DamageKind::HeaderMismatch(format!(
                    "the segment starts at position {start}, but the one before ends at {end}: inputs are missing"
                )),
            ));
        }
        let bytes = store.get_raw(&key).await?;
        let segment = decode_segment(&bytes);
        let mut at = start;
        for records in segment.batches {
            if records.first().map(|r| r.position) != Some(at) {
                damaged.push(damage(
                    key.clone(),
                    DamageKind::HeaderMismatch(format!(
                        "a batch does not start at position {at}, where the one before ends"
                    )),
                ));
                break;
            }
            for r in &records {
                clients
                    .entry(r.client.clone())
                    .or_default()
                    .record(r.seq, r.position);
            }
            at += records.len() as u64;
            tail.push(records);
        }
        end = at;
        if let Some(kind) = segment.damage {
            // The newest segment may end in an append that was cut off (never acknowledged:
            // its sync did not return); anywhere else, a frame that does not verify is damage.
            // Only a local file is appended to; an object store's put is atomic.
            if i + 1 == batches.len() && segment.damage_at_end && store.local_file(&key).is_some() {
                torn = Some((key, segment.valid as u64));
            } else {
                damaged.push(damage(key, kind));
            }
        }
    }
    if torn.as_ref().is_some_and(|(_, valid)| *valid == 0) {
        // A segment whose first append was cut off: it holds nothing.
        batches.pop();
    }
    while tail.len() > 512 {
        tail.remove(0);
    }
    Ok(Scan {
        first,
        end,
        clients,
        batches,
        tail,
        damaged,
        torn,
    })
}

/// On local disk, the segment file the committer appends batches to.
struct Appender {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// Its length: where the next frame goes (and what a failed append is cut back to).
    len: u64,
}

/// A local segment is closed (the next batch starts a new one) once it holds this much.
const SEGMENT_ROLL: u64 = 64 << 20;

/// The callers waiting for `client`'s input `seq` (forgetting the client once it has none).
fn take_waiters(
    in_flight: &mut InFlight,
    client: &str,
    seq: u64,
) -> Vec<oneshot::Sender<Result<Ack>>> {
    let Some(of_client) = in_flight.get_mut(client) else {
        return Vec::new();
    };
    let waiters = of_client.remove(&seq).unwrap_or_default();
    if of_client.is_empty() {
        in_flight.remove(client);
    }
    waiters
}

/// Takes every queued input, writes them as one batch, answers their callers; repeats.
async fn commit_loop(log: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut appender: Option<Appender> = None;
    while let Some(first) = rx.recv().await {
        let Some(inner) = log.upgrade() else { return };
        let mut pending = vec![first];
        let mut bytes = pending[0].payload.len();
        while pending.len() < inner.options.max_batch && bytes < inner.options.max_batch_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len();
                    pending.push(p);
                }
                Err(_) => break,
            }
        }
        appender = commit_batch(&inner, pending, appender).await;
    }
}

/// Writes `blob` (one framed batch starting at `start`) to the local segment file: appended
/// to the open one, or as a new segment; synced. Returns the appender to use next (none
/// after a failure: the next batch starts a new segment) and whether a new segment was made.
fn append_local(
    dir: &std::path::Path,
    new_path: std::path::PathBuf,
    blob: &[u8],
    fsync: bool,
    appender: Option<Appender>,
) -> (Option<Appender>, std::io::Result<bool>) {
    use std::io::Write as _;
    let (mut app, created) = match appender.filter(|a| a.len < SEGMENT_ROLL) {
        Some(a) => (a, false),
        None => {
            let opened = std::fs::create_dir_all(dir).and_then(|()| {
                std::fs::OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(&new_path)
            });
            match opened {
                Ok(file) => (
                    Appender {
                        file,
                        path: new_path,
                        len: 0,
                    },
                    true,
                ),
                Err(e) => return (None, Err(e)),
            }
        }
    };
    let written = app
        .file
        .write_all(blob)
        .and_then(|()| if fsync { app.file.sync_data() } else { Ok(()) })
        .and_then(|()| {
            // A new file is durable once its directory entry is.
            if created && fsync {
                std::fs::File::open(dir)?.sync_all()
            } else {
                Ok(())
            }
        });
    match written {
        Ok(()) => {
            app.len += blob.len() as u64;
            (Some(app), Ok(created))
        }
        Err(e) => {
            // Cut the partial frame off so that the segment stays readable; if even that
            // fails, the open after a restart cuts it.
            let _ = app.file.set_len(app.len);
            if created && app.len == 0 {
                let _ = std::fs::remove_file(&app.path);
            }
            (None, Err(e))
        }
    }
}

async fn commit_batch(
    inner: &Inner,
    pending: Vec<Pending>,
    appender: Option<Appender>,
) -> Option<Appender> {
    let start = lock(&inner.state).end;
    let records: Vec<IngressRecord> = pending
        .into_iter()
        .enumerate()
        .map(|(i, p)| IngressRecord {
            position: start + i as u64,
            client: p.client,
            seq: p.seq,
            to: p.to,
            payload: p.payload,
        })
        .collect();
    let wire: Vec<WireRecordRef<'_>> = records
        .iter()
        .map(|r| WireRecordRef(&r.client, r.seq, &r.to, &r.payload))
        .collect();
    let key = batch_key(&inner.name, start);
    let mut next_appender = None;
    let mut new_segment = true;
    let written = match rmp_serde::to_vec(&wire) {
        Ok(body) => {
            let blob = frame(MAGIC, start, &body);
            match inner.store.local_file(&key) {
                // Local disk: append to the open segment file, one sync per batch.
                Some((path, fsync)) => {
                    let dir = path
                        .parent()
                        .map(std::path::Path::to_path_buf)
                        .unwrap_or_default();
                    let joined = tokio::task::spawn_blocking(move || {
                        append_local(&dir, path, &blob, fsync, appender)
                    })
                    .await;
                    match joined {
                        Ok((app, Ok(created))) => {
                            next_appender = app;
                            new_segment = created;
                            Ok(())
                        }
                        Ok((_, Err(e))) => Err((
                            Error::Unavailable {
                                operation: format!("append to {key}"),
                                endpoint: inner.store.url().to_owned(),
                                source: object_store::Error::Generic {
                                    store: "LocalFileSystem",
                                    source: Box::new(e),
                                },
                            },
                            None,
                        )),
                        Err(e) => Err((
                            Error::InvalidInput(format!("the ingress append task failed: {e}")),
                            Some("an append may or may not have landed".to_owned()),
                        )),
                    }
                }
                None => {
                    let crc = format::crc(&blob);
                    match inner.store.put_raw(&key, blob, true).await {
                        Ok(()) => Ok(()),
                        // The answer may have been lost after the write landed: the store
                        // decides.
                        Err(e) => match inner.store.get_raw(&key).await {
                            Ok(found) if format::crc(&found) == crc => Ok(()),
                            Ok(_) => Err((
                                e,
                                Some(format!(
                                    "position {start} was written by another writer of this log"
                                )),
                            )),
                            Err(Error::NotFound { .. }) => Err((e, None)),
                            Err(_) => Err((
                                e,
                                Some(format!(
                                    "the write of position {start} may or may not have landed"
                                )),
                            )),
                        },
                    }
                }
            }
        }
        Err(e) => Err((
            Error::InvalidInput(format!("encoding an ingress batch: {e}")),
            None,
        )),
    };
    let mut state = lock(&inner.state);
    match written {
        Ok(()) => {
            state.end = start + records.len() as u64;
            if new_segment {
                state.batches.push(start);
            }
            for r in &records {
                state
                    .clients
                    .entry(r.client.clone())
                    .or_default()
                    .record(r.seq, r.position);
                let ack = Ack {
                    position: r.position,
                    duplicate: false,
                };
                for (i, waiter) in take_waiters(&mut state.in_flight, &r.client, r.seq)
                    .into_iter()
                    .enumerate()
                {
                    let _ = waiter.send(Ok(Ack {
                        duplicate: i > 0,
                        ..ack
                    }));
                }
            }
            state.cache.push_back(Arc::new(records));
            while state.cache.len() > inner.options.cached_batches {
                state.cache.pop_front();
            }
            let end = state.end;
            drop(state);
            inner.durable.send_replace(end);
        }
        Err((error, doubt)) => {
            tracing::warn!(log = %inner.name, position = start, error = %error, "an ingress batch was not written");
            if let Some(reason) = &doubt {
                state.in_doubt = Some(reason.clone());
            }
            let message = error.to_string();
            for r in &records {
                for waiter in take_waiters(&mut state.in_flight, &r.client, r.seq) {
                    let _ = waiter.send(Err(match &doubt {
                        Some(reason) => Error::Conflict {
                            id: cohort_object_api::CheckpointId::ZERO,
                            reason: format!("ingress log {}: {reason}", inner.name),
                            url: inner.store.url().to_owned(),
                        },
                        None => Error::Unavailable {
                            operation: format!(
                                "append to ingress log {} (retry the input with the same sequence number)",
                                inner.name
                            ),
                            endpoint: inner.store.url().to_owned(),
                            source: object_store::Error::Generic {
                                store: "ingress",
                                source: message.clone().into(),
                            },
                        },
                    }));
                }
            }
        }
    }
    next_appender
}
