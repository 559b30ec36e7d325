//! [`SegmentWriter`]: packs states into segments and uploads them in the background.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use cohort_object_api::{CheckpointId, EncodedState, ObjectError, ObjectId, Snapshot, StateTag};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::format;
use crate::keys;
use crate::local;
use crate::manifest::EntryLocation;
use crate::store::{CheckpointStore, Inner};

/// The writer token under which the writer called `name` records in-transit messages (channel
/// state): `<name>.ch`.
///
/// A host that writes both its objects' states (as `name`) and the messages it recorded in
/// transit needs two writers per attempt; giving the second this name keeps their segment keys
/// apart from every other writer's. A plain token never holds a `.`, so the channel writer of
/// one name can never be the states writer of another (as `<name>-ch` was: node `eu` and a
/// node called `eu-ch` once wrote the same segment).
///
/// ```
/// assert_eq!(cohort_checkpoint::channel_writer("node-1"), "node-1.ch");
/// ```
pub fn channel_writer(name: &str) -> String {
    keys::channel_writer(name)
}

/// What one writer wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Every segment uploaded, in key order.
    pub segments: Vec<SegmentSummary>,
    /// Total bytes uploaded.
    pub bytes: u64,
    /// Total entries written.
    pub entries: u64,
}

/// One uploaded segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment's key, relative to the store's prefix.
    pub key: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many entries it holds.
    pub entries: u64,
}

/// The smallest segment the writer seals early to write a checkpoint as several segments in
/// parallel: below this, per-segment costs (a request, an fsync) outweigh the parallelism.
const MIN_PARALLEL_SEGMENT: usize = 16 << 20;

/// Where the writer seals a segment: at `segment_size / upload_concurrency`, so that a
/// checkpoint of one `segment_size` is written as `upload_concurrency` segments in parallel
/// (overlapping with the encoding of the next ones), but not below [`MIN_PARALLEL_SEGMENT`] and
/// never above `segment_size`.
fn seal_size(segment_size: usize, upload_concurrency: usize) -> usize {
    (segment_size / upload_concurrency.max(1))
        .max(MIN_PARALLEL_SEGMENT)
        .min(segment_size)
}

/// A finished upload: the segment, and the local directories whose new entries still need an
/// fsync before it is durable (empty for other stores).
struct Uploaded {
    summary: SegmentSummary,
    dirty_dirs: Vec<PathBuf>,
}

struct OpenSegment {
    seq: u64,
    buf: Vec<u8>,
    entries: u64,
}

/// Writes the states of one attempt (round) of a checkpoint by one writer into segment blobs.
///
/// States are encoded straight into the open segment's buffer. A segment that reaches
/// [`StoreOptions::segment_size`](crate::StoreOptions::segment_size) is sealed and uploaded in
/// the background while the writer goes on, with at most
/// [`upload_concurrency`](crate::StoreOptions::upload_concurrency) uploads in flight (`add`
/// waits for a slot: backpressure). A state larger than the segment size goes into a segment of
/// its own, uploaded with a multipart upload, without a second copy. A segment is sealed early,
/// at `segment_size / upload_concurrency` but not below 16 MiB, so that a large checkpoint is
/// written as several segments in parallel. On local disk each segment costs one `fdatasync`,
/// and `finish` fsyncs each directory that gained entries once.
///
/// Nothing is committed until [`finish`](Self::finish) returned and the manifest was created.
/// Dropping a writer without `finish` cancels its pending uploads; its blobs are garbage that
/// [`CheckpointStore::discard_round`] or GC removes.
pub struct SegmentWriter {
    store: CheckpointStore,
    id: CheckpointId,
    round: String,
    writer: String,
    /// A bad token or read-only store, reported by the first call.
    invalid: Option<Error>,
    /// An upload failed: every later call fails.
    failed: bool,
    next_seq: u64,
    open: Option<OpenSegment>,
    uploads: JoinSet<Result<Uploaded>>,
    slots: Arc<Semaphore>,
    summary: WriteSummary,
    /// Local directories to fsync in `finish`.
    dirty_dirs: BTreeSet<PathBuf>,
    /// The key of the segment the last entry went to.
    last_key: Option<(u64, Arc<str>)>,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("checkpoint", &self.id)
            .field("round", &self.round)
            .field("writer", &self.writer)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl SegmentWriter {
    pub(crate) fn new(store: CheckpointStore, id: CheckpointId, round: &str, writer: &str) -> Self {
        let invalid = store
            .check_writable("write segments")
            .and_then(|()| keys::validate_token("round", round))
            .and_then(|()| keys::validate_writer(writer))
            .and_then(|()| {
                if id == CheckpointId::ZERO {
                    Err(Error::InvalidInput(
                        "checkpoint id 0 is never used; ids start at 1".into(),
                    ))
                } else {
                    Ok(())
                }
            })
            .err();
        let slots = Arc::new(Semaphore::new(
            store.inner.options.upload_concurrency.max(1),
        ));
        Self {
            store,
            id,
            round: round.to_owned(),
            writer: writer.to_owned(),
            invalid,
            failed: false,
            next_seq: 0,
            open: None,
            uploads: JoinSet::new(),
            slots,
            summary: WriteSummary::default(),
            dirty_dirs: BTreeSet::new(),
            last_key: None,
        }
    }

    fn check(&mut self) -> Result<()> {
        if let Some(e) = self.invalid.take() {
            self.failed = true;
            return Err(e);
        }
        if self.failed {
            return Err(Error::InvalidInput(format!(
                "segment writer {}/{} of checkpoint {} already failed; discard the round and retry with a new one",
                self.round, self.writer, self.id
            )));
        }
        // Report a failed background upload as early as possible.
        while let Some(done) = self.uploads.try_join_next() {
            self.collect(done)?;
        }
        Ok(())
    }

    fn collect(
        &mut self,
        done: std::result::Result<Result<Uploaded>, tokio::task::JoinError>,
    ) -> Result<()> {
        let result = done.unwrap_or_else(|e| {
            Err(Error::InvalidInput(format!(
                "a segment upload task of checkpoint {} did not finish: {e}",
                self.id
            )))
        });
        match result {
            Ok(Uploaded {
                summary: s,
                dirty_dirs,
            }) => {
                self.dirty_dirs.extend(dirty_dirs);
                self.summary.bytes += s.bytes;
                self.summary.entries += s.entries;
                self.summary.segments.push(s);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn key(&self, seq: u64) -> String {
        keys::segment(self.id, &self.round, &self.writer, seq)
    }

    /// The key of segment `seq` for an entry's location: formatted once per segment, as
    /// formatting it per entry was a tenth of an empty checkpoint's cost.
    /// Shared by the segment's entries, in memory as in every line that keeps them.
    fn entry_segment_key(&mut self, seq: u64) -> Arc<str> {
        match &self.last_key {
            Some((cached, key)) if *cached == seq => Arc::clone(key),
            _ => {
                let key: Arc<str> = self.key(seq).into();
                self.last_key = Some((seq, Arc::clone(&key)));
                key
            }
        }
    }

    fn open_segment(&mut self) -> &mut OpenSegment {
        let seq = self.next_seq;
        let id = self.id;
        let options = &self.store.inner.options;
        let seal = seal_size(options.segment_size, options.upload_concurrency);
        // Room for the last entry's overshoot past the seal size, so that a segment of
        // small entries is never reallocated (untouched capacity costs no memory).
        let capacity = seal.saturating_add(seal / 4).min(options.segment_size);
        if self.open.is_none() {
            self.next_seq += 1;
        }
        self.open.get_or_insert_with(|| {
            let mut buf = Vec::with_capacity(capacity + format::SEGMENT_HEADER_LEN);
            buf.extend_from_slice(&format::segment_header(id));
            OpenSegment {
                seq,
                buf,
                entries: 0,
            }
        })
    }

    /// Encodes `snapshot` as the state of `object` into the open segment and returns where it
    /// will live.
    pub async fn add(&mut self, object: &ObjectId, snapshot: &Snapshot) -> Result<EntryLocation> {
        self.check()?;
        check_type_name(snapshot.tag())?;
        let tag = snapshot.tag().clone();
        self.append(object, &tag, |out| snapshot.encode_into(out))
            .await
    }

    /// Writes an already encoded state as the state of `object`; returns where it will live.
    pub async fn add_encoded(
        &mut self,
        object: &ObjectId,
        state: &EncodedState,
    ) -> Result<EntryLocation> {
        self.check()?;
        check_type_name(state.tag())?;
        let payload = state.payload();
        let prefix = format::entry_prefix(object, state.tag(), payload.len() as u64);
        let entry_len = prefix.len() + payload.len() + 4;
        if entry_len + format::SEGMENT_HEADER_LEN > self.store.inner.options.segment_size {
            return self.standalone(prefix, payload.clone()).await;
        }
        let tag = state.tag().clone();
        self.append(object, &tag, |out| {
            out.extend_from_slice(payload);
            Ok(())
        })
        .await
    }

    async fn append(
        &mut self,
        object: &ObjectId,
        tag: &StateTag,
        encode: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), ObjectError>,
    ) -> Result<EntryLocation> {
        let options = &self.store.inner.options;
        let segment_size = options.segment_size;
        let seal = seal_size(segment_size, options.upload_concurrency);
        // The seq a split would move the new entry to.
        let spare_seq = self.next_seq + u64::from(self.open.is_none());
        let open = self.open_segment();
        let had_entries = open.entries > 0;
        let mut written = format::append_entry(&mut open.buf, object, tag, encode)?;
        if had_entries && open.buf.len() > segment_size {
            // The new entry does not fit: seal what was there and move the entry to a fresh
            // segment. The header is the same for every segment of this checkpoint, so the
            // entry's buffer keeps it and only the earlier entries are copied out.
            let sealed = open.buf[..written.offset].to_vec();
            let sealed_seq = open.seq;
            let sealed_entries = open.entries;
            open.buf.drain(format::SEGMENT_HEADER_LEN..written.offset);
            open.entries = 0;
            open.seq = spare_seq;
            self.next_seq = spare_seq + 1;
            written.offset = format::SEGMENT_HEADER_LEN;
            self.upload(sealed_seq, sealed, sealed_entries).await?;
        }
        let Some(open) = self.open.as_mut() else {
            // `open_segment` just opened it.
            return Err(Error::InvalidInput("no open segment".into()));
        };
        open.entries += 1;
        let (seq, full) = (open.seq, open.buf.len() >= seal);
        let location = EntryLocation {
            segment: self.entry_segment_key(seq),
            offset: written.offset as u64,
            len: written.len as u64,
            crc: written.crc,
        };
        if full {
            self.seal().await?;
        }
        Ok(location)
    }

    /// A state too large for a segment: its own segment, streamed from the caller's buffer.
    async fn standalone(&mut self, prefix: Vec<u8>, payload: Bytes) -> Result<EntryLocation> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&prefix);
        hasher.update(&payload);
        let crc = hasher.finalize();
        let mut head = Vec::with_capacity(format::SEGMENT_HEADER_LEN + prefix.len());
        head.extend_from_slice(&format::segment_header(self.id));
        head.extend_from_slice(&prefix);
        let len = prefix.len() + payload.len() + 4;
        let parts = vec![
            Bytes::from(head),
            payload,
            Bytes::copy_from_slice(&crc.to_le_bytes()),
        ];
        self.spawn_upload(seq, parts, 1).await?;
        Ok(EntryLocation {
            segment: self.key(seq).into(),
            offset: format::SEGMENT_HEADER_LEN as u64,
            len: len as u64,
            crc,
        })
    }

    async fn seal(&mut self) -> Result<()> {
        if let Some(open) = self.open.take()
            && open.entries > 0
        {
            self.upload(open.seq, open.buf, open.entries).await?;
        }
        Ok(())
    }

    async fn upload(&mut self, seq: u64, buf: Vec<u8>, entries: u64) -> Result<()> {
        self.spawn_upload(seq, vec![Bytes::from(buf)], entries)
            .await
    }

    async fn spawn_upload(&mut self, seq: u64, parts: Vec<Bytes>, entries: u64) -> Result<()> {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::InvalidInput("segment writer closed".into()))?;
        let inner = Arc::clone(&self.store.inner);
        let key = self.key(seq);
        self.uploads
            .spawn(upload(inner, key, parts, entries, permit));
        // Surface failures of earlier uploads now rather than at finish.
        while let Some(done) = self.uploads.try_join_next() {
            self.collect(done)?;
        }
        Ok(())
    }

    /// Seals the open segment and waits for every upload: when this returns `Ok`, every
    /// location this writer returned is durable and may be committed.
    pub async fn finish(mut self) -> Result<WriteSummary> {
        self.check()?;
        self.seal().await?;
        let mut first_error = None;
        while let Some(done) = self.uploads.join_next().await {
            if let Err(e) = self.collect(done) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.sync_dirs().await?;
        self.summary.segments.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(std::mem::take(&mut self.summary))
    }
}

impl SegmentWriter {
    /// Makes the directory entries of the segments written to local disk durable: one fsync
    /// per directory for all segments, rather than one per segment.
    async fn sync_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirty_dirs);
        let inner = &self.store.inner;
        let Some(disk) = &inner.local else {
            return Ok(());
        };
        if dirs.is_empty() || !disk.fsync() {
            return Ok(());
        }
        let synced = tokio::task::spawn_blocking(move || {
            // Deepest first: a directory's entry in its parent is synced after its own entries.
            let mut failed = None;
            for dir in dirs.iter().rev() {
                if let Err(e) = local::sync_dirs([dir]) {
                    failed = Some(local::store_error(e, dir));
                    break;
                }
            }
            failed
        })
        .await;
        match synced {
            Ok(None) => Ok(()),
            Ok(Some(e)) => {
                self.failed = true;
                Err(inner.map_err(
                    format!("sync the segment directories of checkpoint {}", self.id),
                    e,
                ))
            }
            Err(e) => {
                self.failed = true;
                Err(Error::InvalidInput(format!(
                    "syncing the segment directories of checkpoint {} did not finish: {e}",
                    self.id
                )))
            }
        }
    }
}

fn check_type_name(tag: &StateTag) -> Result<()> {
    if tag.type_name.len() > format::MAX_TYPE_NAME {
        return Err(Error::InvalidInput(format!(
            "type name of {} bytes is longer than the {} an entry can record",
            tag.type_name.len(),
            format::MAX_TYPE_NAME
        )));
    }
    Ok(())
}

async fn upload(
    inner: Arc<Inner>,
    key: String,
    parts: Vec<Bytes>,
    entries: u64,
    _permit: OwnedSemaphorePermit,
) -> Result<Uploaded> {
    let path = inner.path(&key);
    let bytes: u64 = parts.iter().map(|p| p.len() as u64).sum();
    if let Some(disk) = &inner.local {
        // Local disk: one file, one fdatasync, no directory fsync until `finish`.
        let file = disk.file(&path);
        let fsync = disk.fsync();
        let written = tokio::task::spawn_blocking(move || {
            local::write_blob(&file, &parts, fsync).map_err(|e| local::store_error(e, &file))
        })
        .await;
        let dirty_dirs = match written {
            Ok(Ok(dirs)) => dirs,
            Ok(Err(e)) => return Err(inner.map_err(format!("upload {key}"), e)),
            Err(e) => {
                return Err(Error::InvalidInput(format!(
                    "the upload of {key} did not finish: {e}"
                )));
            }
        };
        tracing::trace!(key, bytes, entries, "segment written");
        return Ok(Uploaded {
            summary: SegmentSummary {
                key,
                bytes,
                entries,
            },
            dirty_dirs,
        });
    }
    // Segments are written once under a key unique to (checkpoint, round, writer, seq), so a
    // plain put is idempotent and a lost response can be retried.
    if bytes <= inner.options.segment_size as u64 {
        let payload: PutPayload = parts.into_iter().collect();
        inner
            .store
            .put(&path, payload)
            .await
            .map_err(|e| inner.map_err(format!("upload {key}"), e))?;
    } else {
        let multipart = inner
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| inner.map_err(format!("start multipart upload of {key}"), e))?;
        // S3 needs at least 5 MiB for every part but the last.
        let part_size = inner.options.part_size.max(5 << 20);
        let mut w = WriteMultipart::new_with_chunk_size(multipart, part_size);
        let concurrency = inner.options.upload_concurrency.max(1);
        let mut failed = None;
        // Hand over part-sized slices (no copy), waiting for a free slot before each, so that
        // at most `concurrency` parts are in flight.
        'parts: for mut part in parts {
            while !part.is_empty() {
                if let Err(e) = w.wait_for_capacity(concurrency).await {
                    failed = Some(e);
                    break 'parts;
                }
                let chunk = part.split_to(part.len().min(part_size));
                w.put(chunk);
            }
        }
        let result = match failed {
            Some(e) => {
                if let Err(abort) = w.abort().await {
                    tracing::warn!(key, error = %abort, "could not abort a failed multipart upload");
                }
                Err(e)
            }
            None => w.finish().await,
        };
        if let Err(e) = result {
            return Err(inner.map_err(format!("multipart upload of {key}"), e));
        }
    }
    tracing::trace!(key, bytes, entries, "segment durable");
    Ok(Uploaded {
        summary: SegmentSummary {
            key,
            bytes,
            entries,
        },
        dirty_dirs: Vec::new(),
    })
}
