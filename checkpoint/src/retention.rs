//! Pins, garbage collection, rollback and coordinator epochs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use cohort_object_api::CheckpointId;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutMode, PutPayload};

use crate::error::{Damage, DamageKind, Error, Result};
use crate::format::{self, FrameError};
use crate::keys;
use crate::manifest::{EpochLease, EpochRecord, EpochState, Manifest, ManifestKind};
use crate::store::CheckpointStore;

/// What [`CheckpointStore::gc`] did (or, for a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether this was a dry run: nothing was changed.
    pub dry_run: bool,
    /// Committed checkpoints kept: the newest `keep`, the pinned ones, the recovery line, and
    /// the base of every kept checkpoint stored as a delta.
    pub retained: Vec<CheckpointId>,
    /// Committed checkpoints expired: their manifests are replaced by tombstones.
    pub expired: Vec<CheckpointId>,
    /// Every blob deleted, with its size.
    pub deleted: Vec<DeletedBlob>,
    /// The bytes of the deleted blobs.
    pub bytes_freed: u64,
}

/// What [`CheckpointStore::gc_with`] keeps besides the pinned checkpoints and the recovery
/// line: the newest [`keep`](Self::keep), and with [`keep_for`](Self::keep_for) also every
/// checkpoint created within that window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// How many of the newest committed checkpoints to keep; at least 1.
    pub keep: usize,
    /// Also keep every checkpoint whose manifest was created less than this long before the
    /// collection's `now_ms`. Creation times are their writers' clocks: across hosts, allow
    /// for the clocks' disagreement.
    pub keep_for: Option<Duration>,
}

impl Retention {
    /// Keeps the newest `keep` checkpoints (and the pinned ones, and the recovery line).
    pub fn newest(keep: usize) -> Self {
        Self {
            keep,
            keep_for: None,
        }
    }

    /// Also keeps every checkpoint created within `window` of the collection's time.
    #[must_use]
    pub fn within(self, window: Duration) -> Self {
        Self {
            keep_for: Some(window),
            ..self
        }
    }
}

/// One blob GC deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedBlob {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// How many times a create-only write retries after losing a race.
const CREATE_RACE_RETRIES: usize = 64;

impl CheckpointStore {
    /// Pins committed checkpoint `id`: GC keeps it however old it gets.
    pub async fn pin(&self, id: CheckpointId) -> Result<()> {
        self.check_writable("pin")?;
        match self.read_stored(id).await {
            // A damaged manifest may still be worth keeping for inspection.
            Ok(_) | Err(Error::Damaged { .. }) | Err(Error::FutureFormat { .. }) => {}
            Err(e) => return Err(e),
        }
        let key = keys::pin(id);
        self.inner
            .store
            .put(&self.inner.path(&key), PutPayload::from_static(b""))
            .await
            .map_err(|e| self.inner.map_err(format!("create {key}"), e))?;
        Ok(())
    }

    /// Removes the pin of `id`, if any.
    pub async fn unpin(&self, id: CheckpointId) -> Result<()> {
        self.check_writable("unpin")?;
        self.inner.delete_all(std::iter::once(keys::pin(id))).await
    }

    /// The pinned checkpoints, ascending.
    pub async fn pins(&self) -> Result<Vec<CheckpointId>> {
        self.inner
            .list_parsed(keys::PINS, |key, _| keys::parse_pin(key))
            .await
    }

    /// Garbage collection: keeps the newest `keep` (at least 1) committed checkpoints, the
    /// pinned ones, the recovery line (the newest one that verifies), and the full manifest each
    /// kept delta manifest is stored against; expires the others by
    /// tombstoning their manifests; deletes every segment that no kept manifest references
    /// (blobs of aborted and uncommitted attempts, and of expired checkpoints).
    ///
    /// Safe to run while a coordinator writes: segment directories of ids above the newest
    /// committed id seen at the start are never touched, manifests that appear while GC runs
    /// are read and their references kept, and pins are re-read before anything is deleted.
    /// A `dry_run` reports without changing anything.
    ///
    /// [`Error::FutureFormat`], before anything is changed, when a kept manifest or the
    /// recovery line was written by a newer format version: this build cannot tell what it
    /// references. Run GC with the newer cohort.
    pub async fn gc(&self, keep: usize, dry_run: bool) -> Result<GcReport> {
        self.gc_with(Retention::newest(keep), 0, dry_run).await
    }

    /// [`gc`](Self::gc) under a [`Retention`] policy: with
    /// [`keep_for`](Retention::keep_for), checkpoints created less than that long before
    /// `now_ms` (Unix milliseconds, the caller's clock) are kept too, however many there are.
    /// The window is walked from the newest checkpoint back and ends at the first one created
    /// before it.
    ///
    /// # Errors
    ///
    /// As [`gc`](Self::gc).
    pub async fn gc_with(
        &self,
        retention: Retention,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<GcReport> {
        let keep = retention.keep;
        if keep == 0 {
            return Err(Error::InvalidInput(
                "gc keep must be at least 1: the newest checkpoint is always kept".into(),
            ));
        }
        if !dry_run {
            self.check_writable("gc")?;
        }
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        let committed = self.committed_ids().await?;
        let Some(&newest) = committed.last() else {
            return Ok(report);
        };
        let pins: BTreeSet<CheckpointId> = self.pins().await?.into_iter().collect();
        let mut retained: BTreeSet<CheckpointId> =
            committed.iter().rev().take(keep).copied().collect();
        retained.extend(committed.iter().filter(|id| pins.contains(id)));
        if let Some(window) = retention.keep_for {
            let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
            let since = now_ms.saturating_sub(window_ms);
            let older = &committed[..committed.len().saturating_sub(keep)];
            retained.extend(self.created_since(older, since).await?);
        }

        let mut refs = References::default();
        for &id in &retained {
            self.reference(id, &mut refs).await?;
        }
        // Keep the recovery line, even when it is older than the newest `keep`: a recovering
        // coordinator is about to point a fence manifest at it. A line this build cannot
        // determine (a newer format) stops GC before it changes anything.
        if let Some(line) = self
            .line_among(&committed, crate::store::LineCheck::Full)
            .await?
        {
            let id = line.manifest.id;
            if retained.insert(id) {
                self.reference(id, &mut refs).await?;
            }
        }

        // Re-read what may have changed meanwhile: new manifests (which may reference older
        // segments incrementally) and new pins.
        for id in self.committed_ids().await? {
            if id > newest && !refs.read.contains(&id) {
                self.reference(id, &mut refs).await?;
            }
        }
        for id in self.pins().await? {
            if committed.contains(&id) && retained.insert(id) {
                self.reference(id, &mut refs).await?;
            }
        }

        // Never expire a base that a kept delta (or one written meanwhile) resolves against.
        retained.extend(refs.bases.iter().filter(|b| committed.contains(b)));
        let expired: Vec<CheckpointId> = committed
            .iter()
            .filter(|id| !retained.contains(id))
            .copied()
            .collect();
        let mut doomed = Vec::new();
        // Only blobs GC parses as its own; on local disk, never through a symbolic link.
        for (key, size) in self.inner.list_segment_blobs("").await? {
            let Some(dir) = keys::parse_segment_blob(&key).map(|s| s.checkpoint) else {
                continue;
            };
            if dir > newest || refs.protected_dirs.contains(&dir) || refs.segments.contains(&key) {
                continue;
            }
            doomed.push(DeletedBlob { key, bytes: size });
        }
        doomed.sort_by(|a, b| a.key.cmp(&b.key));

        if !dry_run {
            // Tombstones first: a crash after them leaves only unreferenced blobs, which the
            // next run deletes; never a live manifest pointing at deleted blobs.
            for &id in &expired {
                let key = keys::manifest(id);
                self.inner
                    .store
                    .put(
                        &self.inner.path(&key),
                        PutPayload::from(format::tombstone(id).to_vec()),
                    )
                    .await
                    .map_err(|e| self.inner.map_err(format!("tombstone {key}"), e))?;
            }
            let keys: Vec<String> = doomed.iter().map(|d| d.key.clone()).collect();
            self.inner.delete_segment_blobs(&keys).await?;
            if !doomed.is_empty() || !expired.is_empty() {
                tracing::info!(store = %self.inner.url, expired = expired.len(), deleted = doomed.len(), "gc");
            }
        }
        report.bytes_freed = doomed
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.bytes));
        report.deleted = doomed;
        report.expired = expired;
        report.retained = retained.into_iter().collect();
        Ok(report)
    }

    /// The checkpoints of `older` (ascending) created at or after `since_ms`, walking back from
    /// the newest until the first one created before it. A manifest that cannot be read does
    /// not end the walk (GC decides about it as about any other).
    async fn created_since(
        &self,
        older: &[CheckpointId],
        since_ms: u64,
    ) -> Result<Vec<CheckpointId>> {
        let mut within = Vec::new();
        for &id in older.iter().rev() {
            match self.read_manifest(id).await {
                Ok(m) if m.created_at_ms >= since_ms => within.push(id),
                Ok(_) => break,
                // Tombstoned meanwhile (nothing to keep), or damaged (GC keeps what it may
                // reference anyway).
                Err(Error::NotFound { .. } | Error::Damaged { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(within)
    }

    /// Adds the segments manifest `id` references to `refs` (resolved: a delta's entries and
    /// its base's), and, when it is a delta, its base and what the base references: a kept
    /// delta keeps its base.
    async fn reference(&self, id: CheckpointId, refs: &mut References) -> Result<()> {
        if !refs.read.insert(id) {
            return Ok(());
        }
        let stored = match self.read_stored(id).await {
            Ok((stored, _)) => stored,
            Err(e) => return self.unreadable(id, None, e, refs),
        };
        let base = stored.base();
        match self.resolve_stored(stored, false).await {
            Ok(m) => refs
                .segments
                .extend(m.locations().map(|l| l.segment.to_string())),
            Err(e) => self.unreadable(id, base, e, refs)?,
        }
        let Some(base) = base else {
            return Ok(());
        };
        refs.bases.insert(base);
        if !refs.read.insert(base) {
            return Ok(());
        }
        // A base is a full manifest: no further hop.
        match self.read_manifest(base).await {
            Ok(m) => {
                refs.segments
                    .extend(m.locations().map(|l| l.segment.to_string()));
                Ok(())
            }
            Err(e) => self.unreadable(base, None, e, refs),
        }
    }

    /// What GC does about a kept manifest it cannot read: `e` is why, `base` the base it names
    /// if it is a delta whose header was read.
    fn unreadable(
        &self,
        id: CheckpointId,
        base: Option<CheckpointId>,
        e: Error,
        refs: &mut References,
    ) -> Result<()> {
        match e {
            // Tombstoned by a concurrent GC: nothing to keep.
            Error::NotFound { .. } => Ok(()),
            // It cannot tell which blobs that checkpoint needs: refuse, and say to upgrade.
            e @ Error::FutureFormat { .. } => Err(e),
            Error::Damaged { damage, .. } => {
                // Unknown references: keep its whole directory (and its base's), touch nothing
                // else it might use.
                tracing::warn!(store = %self.inner.url, %damage, "gc keeps the segments of a damaged manifest");
                refs.protected_dirs.insert(id);
                refs.protected_dirs.extend(base);
                Ok(())
            }
            e => Err(e),
        }
    }

    /// Rolls back to checkpoint `to`: verifies it, then commits a new manifest of kind
    /// [`ManifestKind::Rollback`] at the next id that points at `to`'s states, so that the
    /// recovery line moves without rewriting history. `to` is pinned while this runs so that a
    /// concurrent GC keeps it. Returns the new checkpoint's id.
    ///
    /// [`Error::FutureFormat`] when `to`, or any committed manifest after it, was written by a
    /// newer format version than this build reads: roll back with the newer cohort instead.
    pub async fn rollback(
        &self,
        to: CheckpointId,
        epoch: u64,
        created_at_ms: u64,
    ) -> Result<CheckpointId> {
        self.check_writable("roll back")?;
        let already_pinned = self.pins().await?.contains(&to);
        if !already_pinned {
            self.pin(to).await?;
        }
        let result = self.rollback_pinned(to, epoch, created_at_ms).await;
        if !already_pinned && let Err(e) = self.unpin(to).await {
            tracing::warn!(store = %self.inner.url, checkpoint = %to, error = %e, "could not remove the rollback's temporary pin");
        }
        result
    }

    async fn rollback_pinned(
        &self,
        to: CheckpointId,
        epoch: u64,
        created_at_ms: u64,
    ) -> Result<CheckpointId> {
        let (target, report) = self.verify_inner(to).await?;
        let target = match (target, report.damaged.into_iter().next()) {
            (Some(m), None) => m,
            (_, Some(damage)) => return Err(self.damaged(damage)),
            (None, None) => {
                return Err(Error::NotFound {
                    what: format!("checkpoint {to}"),
                    url: self.inner.url.clone(),
                });
            }
        };
        for _ in 0..CREATE_RACE_RETRIES {
            // What the rollback moves past must be what this build can read.
            self.refuse_newer_format_after(to).await?;
            let newest = self
                .manifest_slots()
                .await?
                .last()
                .map(|(id, _)| *id)
                .unwrap_or(CheckpointId::ZERO);
            let id = newest.next();
            let manifest = Manifest {
                id,
                epoch,
                created_at_ms,
                parent: (newest != CheckpointId::ZERO).then_some(newest),
                kind: ManifestKind::Rollback { to },
                round: format!("rollback-{}-to-{}", id.get(), to.get()),
                objects: target.objects.clone(),
                in_transit: target.in_transit.clone(),
                metadata: target.metadata.clone(),
            };
            match self.commit(&manifest).await {
                Ok(()) => return Ok(id),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            id: to,
            reason: format!("rollback lost {CREATE_RACE_RETRIES} races for the next id"),
            url: self.inner.url.clone(),
        })
    }

    /// [`Error::FutureFormat`] if a manifest newer than `to` was written by a newer format
    /// version than this build reads. Reads each one's 10-byte header only, then the whole blob
    /// of one that claims a newer version (its crc tells a newer manifest from a flipped bit).
    async fn refuse_newer_format_after(&self, to: CheckpointId) -> Result<()> {
        let after = self
            .inner
            .list_parsed(keys::MANIFESTS, |key, size| {
                // Tombstones and blobs too short for a header are not newer manifests.
                keys::parse_manifest(key)
                    .filter(|id| *id > to && size >= format::MIN_MANIFEST_LEN as u64)
            })
            .await?;
        let concurrency = self.inner.options.read_concurrency.max(1);
        let mut headers = futures::stream::iter(after)
            .map(|id| async move {
                match self.inner.manifest_header(id).await {
                    Ok(head) => Ok((id, format::claims_newer_manifest(&head))),
                    // Expired by a concurrent GC meanwhile: not newer.
                    Err(object_store::Error::NotFound { .. }) => Ok((id, false)),
                    Err(e) => Err(self
                        .inner
                        .map_err(format!("read {}", keys::manifest(id)), e)),
                }
            })
            .buffer_unordered(concurrency);
        while let Some(read) = headers.next().await {
            let (id, newer) = read?;
            if !newer {
                continue;
            }
            match self.read_stored(id).await {
                Err(e @ Error::FutureFormat { .. }) => return Err(e),
                // Damaged (the version field rotted), or expired meanwhile: no newer line.
                Ok(_) | Err(Error::Damaged { .. }) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes the next coordinator epoch by creating `epochs/<newest + 1>` create-only, retrying
    /// if another claimant wins the race.
    pub async fn claim_epoch(&self, holder: &str, created_at_ms: u64) -> Result<EpochRecord> {
        self.check_writable("claim an epoch")?;
        if holder.len() > 256 {
            return Err(Error::InvalidInput(
                "epoch holder names are at most 256 bytes".into(),
            ));
        }
        for _ in 0..CREATE_RACE_RETRIES {
            let epoch = self.epoch_numbers().await?.last().copied().unwrap_or(0) + 1;
            let record = EpochRecord {
                epoch,
                holder: holder.to_owned(),
                created_at_ms,
                address: None,
            };
            if self.try_claim_epoch(&record).await? {
                return Ok(record);
            }
        }
        Err(Error::Conflict {
            id: CheckpointId::ZERO,
            reason: format!("claiming an epoch lost {CREATE_RACE_RETRIES} races"),
            url: self.inner.url.clone(),
        })
    }

    /// Takes exactly epoch `record.epoch` by creating its record create-only. `Ok(false)` when
    /// that epoch is taken already: someone else claimed it first. Unlike
    /// [`claim_epoch`](Self::claim_epoch) it never moves on to a later epoch, so that of
    /// several standbys that saw the same newest epoch, exactly one takes the next.
    pub async fn try_claim_epoch(&self, record: &EpochRecord) -> Result<bool> {
        self.check_writable("claim an epoch")?;
        if record.holder.len() > 256 || record.address.as_ref().is_some_and(|a| a.len() > 256) {
            return Err(Error::InvalidInput(
                "epoch holder names and addresses are at most 256 bytes".into(),
            ));
        }
        if record.epoch == 0 {
            return Err(Error::InvalidInput(
                "epoch 0 is never claimed; epochs start at 1".into(),
            ));
        }
        let bytes = format::encode_epoch(record)
            .map_err(|e| Error::InvalidInput(format!("epoch record cannot be encoded: {e}")))?;
        let key = keys::epoch(record.epoch);
        match self
            .inner
            .store
            .put_opts(
                &self.inner.path(&key),
                PutPayload::from(bytes),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.inner.map_err(format!("create {key}"), e)),
        }
    }

    /// The newest epoch record, if any epoch was claimed.
    pub async fn newest_epoch(&self) -> Result<Option<EpochRecord>> {
        let Some(&epoch) = self.epoch_numbers().await?.last() else {
            return Ok(None);
        };
        let key = keys::epoch(epoch);
        let raw = self.inner.get(&key).await?;
        format::decode_epoch(&raw, epoch)
            .map(Some)
            .map_err(|e| self.epoch_blob_error(&key, e))
    }

    /// The newest claimed epoch number, whatever its record holds: the record's key exists, so
    /// the number is taken for good and can never be claimed again. `None` when no epoch was
    /// ever claimed. A leader checking that no newer epoch exists needs nothing more, and a
    /// damaged record of its own epoch must not stop it.
    pub async fn newest_epoch_number(&self) -> Result<Option<u64>> {
        Ok(self.epoch_numbers().await?.last().copied())
    }

    /// The newest claimed epoch as the store holds it: its number, its record and its lease,
    /// each read on its own so that a damaged record or lease is reported rather than hiding
    /// the others. `None` when no epoch was ever claimed.
    ///
    /// Unlike [`newest_epoch`](Self::newest_epoch) this fails only when the store cannot be
    /// read: what is wrong with the record or the lease (damage, or a newer format:
    /// [`DamageKind::FutureFormat`]) is in [`EpochState`]. A damaged record still takes its
    /// number: a coordinator must claim the next one, never that one again.
    pub async fn newest_epoch_state(&self) -> Result<Option<EpochState>> {
        let Some(epoch) = self.newest_epoch_number().await? else {
            return Ok(None);
        };
        let key = keys::epoch(epoch);
        let record = match self.inner.get(&key).await {
            Ok(raw) => format::decode_epoch(&raw, epoch).map_err(|e| self.epoch_damage(&key, e)),
            // Listed a moment ago: deleted since, which cohort never does.
            Err(Error::NotFound { .. }) => Err(Damage {
                checkpoint: CheckpointId::ZERO,
                object: None,
                blob: key.clone(),
                kind: DamageKind::Missing,
            }),
            Err(e) => return Err(e),
        };
        let lease_key = keys::epoch_lease(epoch);
        let lease = match self.inner.get(&lease_key).await {
            Ok(raw) => format::decode_lease(&raw, epoch)
                .map(Some)
                .map_err(|e| self.epoch_damage(&lease_key, e)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(EpochState {
            epoch,
            record,
            lease,
        }))
    }

    /// Writes the lease of `lease.epoch` (an overwrite). Only that epoch's holder may call it:
    /// the lease tells standbys that the holder is alive, and nothing else reads it.
    pub async fn renew_epoch(&self, lease: &EpochLease) -> Result<()> {
        self.check_writable("renew an epoch's lease")?;
        let bytes = format::encode_lease(lease)
            .map_err(|e| Error::InvalidInput(format!("epoch lease cannot be encoded: {e}")))?;
        let key = keys::epoch_lease(lease.epoch);
        self.inner
            .store
            .put_opts(
                &self.inner.path(&key),
                PutPayload::from(bytes),
                PutMode::Overwrite.into(),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.inner.map_err(format!("write {key}"), e))
    }

    /// The lease of `epoch`, or `None` if its holder never renewed it.
    pub async fn epoch_lease(&self, epoch: u64) -> Result<Option<EpochLease>> {
        let key = keys::epoch_lease(epoch);
        let raw = match self.inner.get(&key).await {
            Ok(raw) => raw,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        format::decode_lease(&raw, epoch)
            .map(Some)
            .map_err(|e| self.epoch_blob_error(&key, e))
    }

    /// What is wrong with an epoch record or lease that did not decode, as a [`Damage`] of no
    /// checkpoint.
    fn epoch_damage(&self, key: &str, e: FrameError) -> Damage {
        let kind = match e {
            FrameError::Future { found, supported } => {
                DamageKind::FutureFormat { found, supported }
            }
            FrameError::Tombstone => {
                DamageKind::HeaderMismatch("an epoch record or lease cannot be a tombstone".into())
            }
            FrameError::Damaged(kind) => kind,
        };
        Damage {
            checkpoint: CheckpointId::ZERO,
            object: None,
            blob: key.to_owned(),
            kind,
        }
    }

    fn epoch_blob_error(&self, key: &str, e: FrameError) -> Error {
        self.damaged(self.epoch_damage(key, e))
    }

    /// Fences every writer of an older epoch: commits a manifest of kind
    /// [`ManifestKind::Fence`] under `request.epoch` at the next id, pointing at the recovery
    /// line's states (objects, in-transit messages and metadata). A writer of an older epoch
    /// knows at most the manifest before it, so its next commit lands on the fence's id (or
    /// after it) and is [`Error::Fenced`]. This is the one fence: a coordinator taking over,
    /// a cohort recovery and a rollback's successor all write it.
    ///
    /// The line is read again on every try, and checked as
    /// [`recovery_line_referenced`](Self::recovery_line_referenced) checks it: its manifest
    /// and what it references, not every byte of its states (the hosts check the entries they
    /// restore, and a line whose restore found damage is passed in `request.skip`). So a
    /// coordinator taking over does not read the whole line, and the fence agrees with the
    /// line a coordinator picked to restore. Then:
    /// - with [`FenceLine::Expect`], when the recovery line is not (or no longer) the one the
    ///   caller restored its objects to, nothing is written: [`Fence::LineMoved`], restore again;
    /// - when the store holds no committed checkpoint that passes, nothing is written:
    ///   [`Fence::NoLine`] (a fence of nothing would read as "no objects").
    ///
    /// [`Error::Fenced`] when the newest manifest is of a newer epoch, or a newer epoch took the
    /// id first: the caller is deposed and must write nothing more. [`Error::FutureFormat`] when
    /// the recovery line cannot be determined by this build (see
    /// [`recovery_line`](Self::recovery_line)): a fence must never point further back than the
    /// newest committed line. A create whose answer was lost is settled by reading it back.
    ///
    /// ```
    /// # async fn demo(store: cohort_checkpoint::CheckpointStore) -> cohort_checkpoint::Result<()> {
    /// use cohort_checkpoint::{Fence, FenceLine, FenceRequest};
    ///
    /// let request = FenceRequest::new(7, 1_700_000_000_000, FenceLine::Newest);
    /// match store.fence(&request).await? {
    ///     Fence::Written(fence) => println!("fenced at {}", fence.id),
    ///     Fence::NoLine => println!("nothing committed yet: nothing to fence"),
    ///     Fence::LineMoved { .. } => unreachable!("only with FenceLine::Expect"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn fence(&self, request: &FenceRequest) -> Result<Fence> {
        self.check_writable("write a fence")?;
        keys::validate_token("round", &request.round)?;
        let epoch = request.epoch;
        let mut last_conflict = None;
        for _ in 0..CREATE_RACE_RETRIES {
            // Read again on every try: what took the id may be a newer line to point at. Checked
            // as a coordinator picks the line it restores (what the line references, not every
            // byte: each host checks the entries it reads), so that both agree on the line.
            let line = self.recovery_line_referenced(&request.skip).await?;
            let line_id = line.as_ref().map(|l| l.manifest.id);
            if let FenceLine::Expect(expected) = request.line
                && line_id != expected
            {
                return Ok(Fence::LineMoved { line: line_id });
            }
            let newest = self
                .manifest_slots()
                .await?
                .last()
                .map(|(id, _)| *id)
                .unwrap_or(CheckpointId::ZERO);
            // A newer epoch wrote the newest manifest: we are the deposed one. (`commit`
            // refuses to follow a newer epoch too; this check also covers a damaged or
            // unreadable line below it.)
            if newest != CheckpointId::ZERO
                && let Ok((m, _)) = self.read_stored(newest).await
                && m.epoch() > epoch
            {
                return Err(Error::Fenced {
                    id: newest.next(),
                    epoch,
                    by: format!(
                        "epoch {} (checkpoint {newest}, round {})",
                        m.epoch(),
                        m.round()
                    ),
                    url: self.inner.url.clone(),
                });
            }
            let Some(line) = line else {
                return Ok(Fence::NoLine);
            };
            let id = newest.next();
            let mut metadata = line.manifest.metadata;
            metadata.extend(request.metadata.clone());
            let fence = Manifest {
                id,
                epoch,
                created_at_ms: request.created_at_ms,
                parent: (newest != CheckpointId::ZERO).then_some(newest),
                kind: ManifestKind::Fence,
                round: request.round.clone(),
                objects: line.manifest.objects,
                in_transit: line.manifest.in_transit,
                metadata,
            };
            match self.commit(&fence).await {
                Ok(()) => return Ok(Fence::Written(fence)),
                Err(e @ Error::Conflict { .. }) => last_conflict = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_conflict.unwrap_or_else(|| Error::Conflict {
            id: CheckpointId::ZERO,
            reason: format!("the fence lost {CREATE_RACE_RETRIES} races for the next id"),
            url: self.inner.url.clone(),
        }))
    }

    async fn epoch_numbers(&self) -> Result<Vec<u64>> {
        self.inner
            .list_parsed(keys::EPOCHS, |key, _| keys::parse_epoch(key))
            .await
    }
}

/// Which line a [fence](CheckpointStore::fence) may point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceLine {
    /// Whatever the recovery line is when the fence is written (a coordinator taking over,
    /// before it restores anything).
    Newest,
    /// Only this line (`None`: no line at all), the one the caller restored its objects to;
    /// anything else is [`Fence::LineMoved`].
    Expect(Option<CheckpointId>),
}

/// What to fence with: the epoch, the fence manifest's round token, its time, and its line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FenceRequest {
    /// The fencing writer's epoch.
    pub epoch: u64,
    /// The fence manifest's round token (1-64 of `[A-Za-z0-9_-]`): unique per fence of an
    /// epoch, so that a create whose answer was lost is recognised as this fence's.
    pub round: String,
    /// The fence manifest's creation time, Unix ms.
    pub created_at_ms: u64,
    /// Which line it may point at.
    pub line: FenceLine,
    /// Checkpoints to treat as damaged although they verify (their content did not decode
    /// where it was restored): the line is looked for below them.
    pub skip: Vec<CheckpointId>,
    /// Metadata set over the line's in the fence: what the fencing writer knows now that the
    /// line could not (a coordinator's state table, after a recovery moved objects).
    pub metadata: BTreeMap<String, Vec<u8>>,
}

impl FenceRequest {
    /// A fence under `epoch` at `created_at_ms`, with the round token `e<epoch>-fence`.
    pub fn new(epoch: u64, created_at_ms: u64, line: FenceLine) -> Self {
        Self {
            epoch,
            round: format!("e{epoch}-fence"),
            created_at_ms,
            line,
            skip: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// The same request, setting `metadata` over the line's in the fence.
    pub fn with_metadata(mut self, metadata: BTreeMap<String, Vec<u8>>) -> Self {
        self.metadata = metadata;
        self
    }

    /// The same request, treating `skip` as damaged.
    pub fn skipping(mut self, skip: Vec<CheckpointId>) -> Self {
        self.skip = skip;
        self
    }

    /// The same request with another round token (a second fence of the same epoch).
    pub fn with_round(mut self, round: impl Into<String>) -> Self {
        self.round = round.into();
        self
    }
}

/// What [`CheckpointStore::fence`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Fence {
    /// The fence is committed: the newest manifest, pointing at the line.
    Written(Manifest),
    /// The store holds no committed checkpoint that verifies: nothing to point at, nothing
    /// written.
    NoLine,
    /// The recovery line is not the one expected ([`FenceLine::Expect`]): nothing written.
    LineMoved {
        /// The recovery line now.
        line: Option<CheckpointId>,
    },
}

/// What the kept manifests reference.
#[derive(Default)]
struct References {
    /// Segment keys referenced.
    segments: HashSet<String>,
    /// Checkpoint ids whose whole segment directory is kept (their manifest is unreadable).
    protected_dirs: BTreeSet<CheckpointId>,
    /// Manifests already read.
    read: BTreeSet<CheckpointId>,
    /// The bases of the delta manifests read: kept with them.
    bases: BTreeSet<CheckpointId>,
}
