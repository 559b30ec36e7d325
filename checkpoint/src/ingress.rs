//! Ingress logs: the inputs that enter a cohort from outside, durable before they are
//! acknowledged.
//!
//! An [`IngressLog`] lives in the cohort's store under `ingress/<name>/`. Each input carries a
//! client id and the client's sequence number; [`append`](IngressLog::append) answers once the
//! input is durable, and a retried input (a sequence number the client used already) is
//! acknowledged again without being stored twice. Concurrent appends share one write (and, on
//! local disk, one fsync): a committer task takes every input queued while the previous write
//! ran and writes them as one *batch* blob, create-only, so a second writer of the same log
//! is refused rather than overwriting.
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
const HEADER_LEN: usize = 4 + 2 + 8;

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
}

/// A client's newest durable input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientMark {
    seq: u64,
    position: u64,
}

#[derive(Serialize, Deserialize)]
struct WireRecord(String, u64, ObjectId, #[serde(with = "bin")] Vec<u8>);

/// A payload as msgpack `bin` (an array of integers otherwise).
mod bin {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
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

struct State {
    /// The next position to assign (every position below it is durable).
    end: u64,
    /// The first position still stored.
    first: u64,
    clients: HashMap<String, ClientMark>,
    /// (client, seq) queued or being written → the callers waiting for it.
    in_flight: HashMap<(String, u64), Vec<oneshot::Sender<Result<Ack>>>>,
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
    out.extend_from_slice(body);
    let crc = format::crc(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a framed blob and returns its position field and body.
fn unframe<'a>(
    magic: &[u8; 4],
    bytes: &'a [u8],
) -> std::result::Result<(u64, &'a [u8]), DamageKind> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err(DamageKind::Truncated {
            needed: (HEADER_LEN + 4) as u64,
            actual: bytes.len() as u64,
        });
    }
    let (framed, trailer) = bytes.split_at(bytes.len() - 4);
    let expected = u32::from_le_bytes(trailer.try_into().unwrap_or_default());
    let actual = format::crc(framed);
    if expected != actual {
        return Err(DamageKind::CrcMismatch { expected, actual });
    }
    if &framed[..4] != magic {
        return Err(DamageKind::HeaderMismatch("not an ingress log blob".into()));
    }
    let version = u16::from_le_bytes([framed[4], framed[5]]);
    if version > INGRESS_FORMAT_VERSION {
        return Err(DamageKind::FutureFormat {
            found: version,
            supported: INGRESS_FORMAT_VERSION,
        });
    }
    let mut position = [0u8; 8];
    position.copy_from_slice(&framed[6..14]);
    Ok((u64::from_le_bytes(position), &framed[HEADER_LEN..]))
}

fn decode_batch(bytes: &[u8]) -> std::result::Result<Vec<IngressRecord>, DamageKind> {
    let (first, body) = unframe(MAGIC, bytes)?;
    let wire: Vec<WireRecord> =
        rmp_serde::from_slice(body).map_err(|e| DamageKind::Undecodable(e.to_string()))?;
    Ok(wire
        .into_iter()
        .enumerate()
        .map(|(i, WireRecord(client, seq, to, payload))| IngressRecord {
            position: first + i as u64,
            client,
            seq,
            to,
            payload: Bytes::from(payload),
        })
        .collect())
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
        let scan = scan(store, name).await?;
        if let Some(damage) = scan.damaged.into_iter().next() {
            return Err(store.inner_damaged(damage));
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
    /// client used already (at most its newest durable one) is answered as a duplicate
    /// without storing anything; one still being written is answered with that write.
    /// Sequence numbers of one client must grow: a retry reuses its number.
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
            if let Some(mark) = state.clients.get(client)
                && seq <= mark.seq
            {
                return Ok(Ack {
                    position: mark.position,
                    duplicate: true,
                });
            }
            let waiters = state.in_flight.entry((client.to_owned(), seq)).or_default();
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
        // Older than the cache: read its batch (and the next ones) back.
        let mut out = Vec::new();
        let mut first = start;
        while out.len() < max {
            let key = batch_key(&self.inner.name, first);
            let bytes = self.inner.store.get_raw(&key).await?;
            let batch = decode_batch(&bytes).map_err(|kind| {
                self.inner.store.inner_damaged(Damage {
                    checkpoint: cohort_object_api::CheckpointId::ZERO,
                    object: None,
                    blob: key.clone(),
                    kind,
                })
            })?;
            let next = batch.last().map_or(first, |r| r.position + 1);
            out.extend(
                batch
                    .into_iter()
                    .filter(|r| r.position >= from)
                    .take(max - out.len()),
            );
            if next >= self.end() || next == first {
                break;
            }
            first = next;
        }
        Ok(out)
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
            let table: BTreeMap<String, ClientMark> =
                state.clients.iter().map(|(c, m)| (c.clone(), *m)).collect();
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
        match unframe(TABLE_MAGIC, &bytes).and_then(|(_, body)| {
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
    for &start in &batches {
        let key = batch_key(name, start);
        if start != end {
            damaged.push(damage(
                key.clone(),
                DamageKind::HeaderMismatch(format!(
                    "the batch starts at position {start}, but the one before ends at {end}: batches are missing"
                )),
            ));
        }
        let bytes = store.get_raw(&key).await?;
        match decode_batch(&bytes) {
            Ok(records) if records.first().is_some_and(|r| r.position == start) => {
                for r in &records {
                    let mark = clients.entry(r.client.clone()).or_default();
                    if r.seq >= mark.seq {
                        *mark = ClientMark {
                            seq: r.seq,
                            position: r.position,
                        };
                    }
                }
                end = start + records.len() as u64;
                tail.push(records);
            }
            Ok(_) => damaged.push(damage(
                key,
                DamageKind::HeaderMismatch(format!(
                    "the batch's first position is not {start}, its name"
                )),
            )),
            Err(kind) => damaged.push(damage(key, kind)),
        }
    }
    Ok(Scan {
        first,
        end,
        clients,
        batches,
        tail,
        damaged,
    })
}

/// Takes every queued input, writes them as one batch, answers their callers; repeats.
async fn commit_loop(log: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Pending>) {
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
        commit_batch(&inner, pending).await;
    }
}

async fn commit_batch(inner: &Inner, pending: Vec<Pending>) {
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
    let wire: Vec<WireRecord> = records
        .iter()
        .map(|r| WireRecord(r.client.clone(), r.seq, r.to.clone(), r.payload.to_vec()))
        .collect();
    let key = batch_key(&inner.name, start);
    let written = match rmp_serde::to_vec(&wire) {
        Ok(body) => {
            let blob = frame(MAGIC, start, &body);
            let crc = format::crc(&blob);
            match inner.store.put_raw(&key, blob, true).await {
                Ok(()) => Ok(()),
                // The answer may have been lost after the write landed: the store decides.
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
        Err(e) => Err((
            Error::InvalidInput(format!("encoding an ingress batch: {e}")),
            None,
        )),
    };
    let mut state = lock(&inner.state);
    match written {
        Ok(()) => {
            state.end = start + records.len() as u64;
            state.batches.push(start);
            for r in &records {
                let mark = state.clients.entry(r.client.clone()).or_default();
                if r.seq >= mark.seq {
                    *mark = ClientMark {
                        seq: r.seq,
                        position: r.position,
                    };
                }
                let ack = Ack {
                    position: r.position,
                    duplicate: false,
                };
                for (i, waiter) in state
                    .in_flight
                    .remove(&(r.client.clone(), r.seq))
                    .into_iter()
                    .flatten()
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
                for waiter in state
                    .in_flight
                    .remove(&(r.client.clone(), r.seq))
                    .into_iter()
                    .flatten()
                {
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
}
