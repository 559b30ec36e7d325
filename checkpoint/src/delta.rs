//! Delta manifests: a manifest stored as the object entries that differ from one full base
//! manifest, so that a checkpoint of a mostly idle cohort writes a manifest the size of what
//! changed, not of the cohort.
//!
//! The encoding is a storage concern only: [`CheckpointStore::commit`] takes a full logical
//! manifest and decides how to store it, and every reader gets the resolved full manifest.
//!
//! - **One hop.** A delta's base is always a full manifest, never another delta: reading any
//!   manifest costs at most two blobs, and GC only has to keep each kept delta's one base.
//! - **Which base.** Checkpoint `K` is diffed against the base of `K - 1` (`K - 1` itself when
//!   it is full). The newest manifest's base is therefore the only one a writer ever uses, which
//!   is what lets GC run beside a writer: it keeps the newest manifest and its base.
//! - **When.** A delta is written when it holds fewer than a quarter of the manifest's entries
//!   (changed, added and removed objects counted); otherwise the manifest is written whole and
//!   becomes the base of the next ones. See [`DELTA_SHARE`].
//! - **Cache.** The store keeps the newest base it wrote or resolved, and which base the newest
//!   manifest it knows uses, so that a steady writer neither re-reads nor re-diffs more than the
//!   manifest it commits. On a miss, `commit` reads manifest `K - 1` (and its base) once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cohort_object_api::{CheckpointId, ObjectId};

use crate::error::{Damage, DamageKind, Error, Result};
use crate::format::{self, FrameError};
use crate::keys;
use crate::manifest::{DeltaBody, DeltaManifest, EntryMap, Manifest, ObjectEntry, StoredManifest};
use crate::store::{CheckpointStore, validate_manifest, validate_parts, validate_total};

/// A delta is written only while it holds fewer than `1 / DELTA_SHARE` of the manifest's
/// entries.
///
/// The bound trades bytes written against bytes read. Reading a delta costs its base too, so a
/// reader reads at most `1 + 1/4` of a full manifest. Writing: when the same objects keep
/// changing (a hot set of `c` of the cohort), every delta holds `c` and a manifest costs `c`
/// of a full one forever. When changes are spread evenly, a delta against a fixed base grows by
/// `c` per checkpoint, a full manifest is rewritten about every `1 / (4c)` checkpoints, and a
/// manifest costs on average `1/8 + 4c` of a full one (0.165 at c = 1%) instead of 1: bounded,
/// the price of one hop instead of a chain.
pub(crate) const DELTA_SHARE: usize = 4;

/// The entries of a target manifest that differ from a base: what a delta stores.
#[derive(Debug, Default)]
pub(crate) struct Changes<'t, 'b> {
    /// Entries the target adds or changes, ascending.
    pub(crate) changed: Vec<(&'t ObjectId, &'t ObjectEntry)>,
    /// Objects the base holds and the target does not, ascending.
    pub(crate) removed: Vec<&'b ObjectId>,
}

/// Compares two manifests' entries in one merge pass over the sorted maps. `None` as soon as
/// more than `limit` entries differ.
pub(crate) fn diff<'t, 'b>(
    base: &'b BTreeMap<ObjectId, ObjectEntry>,
    target: &'t BTreeMap<ObjectId, ObjectEntry>,
    limit: usize,
) -> Option<Changes<'t, 'b>> {
    use std::cmp::Ordering;
    let mut out = Changes::default();
    let mut b = base.iter().peekable();
    let mut t = target.iter().peekable();
    loop {
        match (b.peek(), t.peek()) {
            (None, None) => return Some(out),
            (Some(&(bk, _)), None) => {
                out.removed.push(bk);
                b.next();
            }
            (None, Some(&entry)) => {
                out.changed.push(entry);
                t.next();
            }
            (Some(&(bk, bv)), Some(&(tk, tv))) => match bk.cmp(tk) {
                Ordering::Less => {
                    out.removed.push(bk);
                    b.next();
                }
                Ordering::Greater => {
                    out.changed.push((tk, tv));
                    t.next();
                }
                Ordering::Equal => {
                    if bv != tv {
                        out.changed.push((tk, tv));
                    }
                    b.next();
                    t.next();
                }
            },
        }
        if out.changed.len() + out.removed.len() > limit {
            return None;
        }
    }
}

/// The entries of a delta, owned: what the store keeps of the newest one it wrote, so that
/// the next one is found from it and the objects that changed since.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct DeltaEntries {
    /// Entries added or changed since the base, ascending.
    changed: Vec<(ObjectId, ObjectEntry)>,
    /// Objects the base holds and the manifest does not, ascending.
    removed: Vec<ObjectId>,
}

impl DeltaEntries {
    fn of(changes: &Changes<'_, '_>) -> Self {
        Self {
            changed: (changes.changed.iter())
                .map(|(o, e)| ((*o).clone(), (*e).clone()))
                .collect(),
            removed: changes.removed.iter().map(|o| (*o).clone()).collect(),
        }
    }

    fn changes(&self) -> Changes<'_, '_> {
        Changes {
            changed: self.changed.iter().map(|(o, e)| (o, e)).collect(),
            removed: self.removed.iter().collect(),
        }
    }
}

/// An object named as changed, and its entry in the manifest being committed (`None`: removed).
type Named<'t> = (&'t ObjectId, Option<(&'t ObjectId, &'t ObjectEntry)>);

/// The delta of `target` against `base`, from the delta of the manifest before it (`prev`)
/// and the objects whose entries changed since (`changed`): only those are compared. `None`
/// as soon as more than `limit` entries differ.
fn delta_named<'t>(
    base: &Manifest,
    prev: &'t DeltaEntries,
    changed: &[Named<'t>],
    limit: usize,
) -> Option<DeltaEntries> {
    // Each object's entry in the delta: `None` for one removed.
    let mut delta: BTreeMap<&ObjectId, Option<&ObjectEntry>> = BTreeMap::new();
    delta.extend(prev.changed.iter().map(|(o, e)| (o, Some(e))));
    delta.extend(prev.removed.iter().map(|o| (o, None)));
    for (object, in_target) in changed {
        // A changed entry stays in the delta even if it went back to the base's: a delta may
        // repeat a base entry, and comparing would cost a search of the base per change.
        match in_target {
            Some((o, t)) => {
                delta.insert(o, Some(t));
            }
            None if base.objects.contains_key(*object) => {
                delta.insert(object, None);
            }
            None => {
                delta.remove(*object);
            }
        }
        if delta.len() > limit.saturating_add(changed.len()) {
            return None;
        }
    }
    if delta.len() > limit {
        return None;
    }
    let mut out = DeltaEntries::default();
    for (object, entry) in delta {
        match entry {
            Some(entry) => out.changed.push((object.clone(), entry.clone())),
            None => out.removed.push(object.clone()),
        }
    }
    Some(out)
}

/// In debug builds, the delta found from the named changes must resolve to the manifest: a
/// caller that named too few would otherwise commit a delta that silently loses entries.
#[cfg(debug_assertions)]
fn check_named(base: &Manifest, target: &Manifest, named: Option<&DeltaEntries>) -> Result<()> {
    let same = match named {
        // What a reader resolves must be the manifest itself.
        Some(named) => {
            let mut objects = base.objects.clone();
            for object in &named.removed {
                objects.remove(object);
            }
            objects.extend(named.changed.iter().cloned());
            objects == target.objects
        }
        None => true, // too many: written whole, nothing lost
    };
    if same {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "the objects named as changed in checkpoint {} are not all that differ from checkpoint {}: name every object whose entry changed",
            target.id,
            target.id.get().saturating_sub(1)
        )))
    }
}

/// Applies a delta to its base: the full manifest the delta stands for.
pub(crate) fn resolve(
    base: &Manifest,
    delta: DeltaManifest,
) -> std::result::Result<Manifest, String> {
    let mut objects = base.objects.clone();
    for id in &delta.removed {
        if objects.remove(id).is_none() {
            return Err(format!(
                "the delta removes object {id}, which its base does not hold"
            ));
        }
        if delta.objects.contains_key(id) {
            return Err(format!("the delta both removes and changes object {id}"));
        }
    }
    objects.extend(delta.objects);
    Ok(Manifest {
        id: delta.id,
        epoch: delta.epoch,
        created_at_ms: delta.created_at_ms,
        parent: delta.parent,
        kind: delta.kind,
        round: delta.round,
        objects,
        in_transit: delta.in_transit,
        metadata: delta.metadata,
    })
}

/// A full manifest that deltas are computed against.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    /// Its checkpoint.
    pub(crate) id: CheckpointId,
    /// The crc32 trailer of its blob.
    pub(crate) crc: u32,
    /// Its content.
    pub(crate) manifest: Arc<Manifest>,
}

/// What a store knows about the newest base, in memory. Shared by every clone of a store (and
/// by [`CheckpointStore::with_options`]); a [child](CheckpointStore::child) store has its own.
/// It holds one full manifest: for 100,000 objects, tens of MB.
#[derive(Debug, Default)]
pub(crate) struct ManifestCache {
    state: Mutex<CacheState>,
}

#[derive(Clone, Debug)]
struct Head {
    id: CheckpointId,
    base: CheckpointId,
    epoch: u64,
    /// The entries that differ from the base's (changed, added or removed), when this store
    /// wrote it: none for a full manifest, a delta's own. With the objects that changed since
    /// (the caller's word, [`CheckpointStore::commit_changed`]), they make the next delta.
    differs: Option<Arc<DeltaEntries>>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// The newest manifest known (written or resolved): its id, the id of the base it uses
    /// (its own when it is full) and its epoch. Manifest slots are create-only, so what is
    /// known of an id stays true.
    head: Option<Head>,
    /// The newest base known.
    base: Option<Base>,
}

impl ManifestCache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // Every update is a plain assignment, so a panic elsewhere cannot leave it half done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The base `id` if it is cached with that crc.
    fn base(&self, id: CheckpointId, crc: u32) -> Option<Base> {
        let state = self.lock();
        state
            .base
            .as_ref()
            .filter(|b| b.id == id && b.crc == crc)
            .cloned()
    }

    /// The base that manifest `prev` uses, and `prev`'s epoch, if that is known.
    fn base_of(&self, prev: CheckpointId) -> Option<(Base, u64, Option<Arc<DeltaEntries>>)> {
        let state = self.lock();
        let head = state.head.as_ref()?;
        let cached = state.base.as_ref()?;
        (head.id == prev && cached.id == head.base)
            .then(|| (cached.clone(), head.epoch, head.differs.clone()))
    }

    /// Records that manifest `id`, of `epoch`, uses `base` (itself when full), unless a newer
    /// one is known.
    fn note(&self, id: CheckpointId, epoch: u64, base: &Base, differs: Option<Arc<DeltaEntries>>) {
        let mut state = self.lock();
        if state.head.as_ref().is_some_and(|head| head.id > id) {
            return;
        }
        // A reader of the newest manifest learns less of it than its writer did.
        let differs = differs.or_else(|| {
            (state.head.as_ref())
                .filter(|h| h.id == id && h.base == base.id)
                .and_then(|h| h.differs.clone())
        });
        state.head = Some(Head {
            id,
            base: base.id,
            epoch,
            differs,
        });
        if state
            .base
            .as_ref()
            .is_none_or(|b| b.id != base.id || b.crc != base.crc)
        {
            state.base = Some(base.clone());
        }
    }

    /// Forgets what the newest manifest uses (after a commit that found an earlier create).
    fn forget_head(&self) {
        self.lock().head = None;
    }
}

/// A manifest encoded for its commit.
pub(crate) struct Encoded {
    /// The blob.
    pub(crate) bytes: Vec<u8>,
    /// The base the manifest is a delta of; `None` when it is stored whole.
    pub(crate) base: Option<Base>,
    /// The objects whose entries differ from the base's: the delta's.
    pub(crate) differs: Arc<DeltaEntries>,
}

impl CheckpointStore {
    /// Reads manifest `id` as it is stored, with its blob's crc, unresolved.
    pub(crate) async fn read_stored(&self, id: CheckpointId) -> Result<(StoredManifest, u32)> {
        let key = keys::manifest(id);
        let raw = match self.inner.get(&key).await {
            Err(Error::NotFound { url, .. }) => {
                return Err(Error::NotFound {
                    what: format!("checkpoint {id} (no manifest {key})"),
                    url,
                });
            }
            other => other?,
        };
        let stored = format::decode_manifest(&raw, id).map_err(|e| self.manifest_error(id, e))?;
        Ok((stored, format::frame_crc(&raw)))
    }

    /// Maps a manifest blob's decoding error to ours.
    pub(crate) fn manifest_error(&self, id: CheckpointId, e: FrameError) -> Error {
        let key = keys::manifest(id);
        let url = self.inner.url.clone();
        match e {
            FrameError::Tombstone => Error::NotFound {
                what: format!("checkpoint {id} (expired by GC; {key} is a tombstone)"),
                url,
            },
            FrameError::Future { found, supported } => Error::FutureFormat {
                blob: key,
                found,
                supported,
                url,
            },
            FrameError::Damaged(kind) => self.manifest_damaged(id, kind),
        }
    }

    fn manifest_damaged(&self, id: CheckpointId, kind: DamageKind) -> Error {
        Error::Damaged {
            damage: Box::new(Damage {
                checkpoint: id,
                object: None,
                blob: keys::manifest(id),
                kind,
            }),
            url: self.inner.url.clone(),
        }
    }

    /// The full manifest a stored one stands for: a delta is applied to its base, taken from
    /// the cache unless `fresh` (verification checks the stored bytes, which may have rotted
    /// since they were cached). Every entry is checked against the store layout.
    pub(crate) async fn resolve_stored(
        &self,
        stored: StoredManifest,
        fresh: bool,
    ) -> Result<Manifest> {
        let id = stored.id();
        let invalid =
            |e: Error| self.manifest_damaged(id, DamageKind::HeaderMismatch(e.to_string()));
        match stored {
            StoredManifest::Full(m) => {
                validate_manifest(&m).map_err(invalid)?;
                Ok(m)
            }
            StoredManifest::Delta(d) => {
                // The base's entries were checked when it was read (or committed).
                let own = d.objects.values().map(|e| &e.location);
                let own = own.chain(d.in_transit.iter().map(|m| &m.location));
                validate_parts(d.id, &d.round, own).map_err(invalid)?;
                let base = self.load_base(&d, fresh).await?;
                let epoch = d.epoch;
                let m = resolve(&base.manifest, d)
                    .map_err(|e| self.manifest_damaged(id, DamageKind::HeaderMismatch(e)))?;
                // The base's entries and the delta's each add up; together they must too.
                validate_total(id, m.locations()).map_err(invalid)?;
                self.inner.cache.note(id, epoch, &base, None);
                Ok(m)
            }
        }
    }

    /// The base of delta `d`, checked: a full manifest, the very blob the delta was computed
    /// from (its crc), of no newer epoch than the delta. Anything else makes the delta
    /// [damaged](DamageKind::BaseUnusable), except a base of a newer format version
    /// ([`Error::FutureFormat`], naming the base); store errors are returned as they are.
    async fn load_base(&self, d: &DeltaManifest, fresh: bool) -> Result<Base> {
        let cached = (!fresh).then(|| self.inner.cache.base(d.base, d.base_crc));
        let base = match cached.flatten() {
            Some(base) => base,
            None => self.read_base(d).await?,
        };
        if base.manifest.epoch > d.epoch {
            return Err(self.base_unusable(
                d,
                DamageKind::HeaderMismatch(format!(
                    "it was written by epoch {}, newer than the delta's {}",
                    base.manifest.epoch, d.epoch
                )),
            ));
        }
        Ok(base)
    }

    async fn read_base(&self, d: &DeltaManifest) -> Result<Base> {
        let key = keys::manifest(d.base);
        let raw = match self.inner.get(&key).await {
            Ok(raw) => raw,
            Err(Error::NotFound { .. }) => {
                return Err(self.base_unusable(d, DamageKind::Missing));
            }
            Err(e) => return Err(e),
        };
        let crc = format::frame_crc(&raw);
        let manifest = match format::decode_manifest(&raw, d.base) {
            Ok(StoredManifest::Full(m)) if crc == d.base_crc => m,
            Ok(StoredManifest::Full(_)) => {
                return Err(self.base_unusable(
                    d,
                    DamageKind::CrcMismatch {
                        expected: d.base_crc,
                        actual: crc,
                    },
                ));
            }
            Ok(StoredManifest::Delta(b)) => {
                return Err(self.base_unusable(
                    d,
                    DamageKind::HeaderMismatch(format!(
                        "it is itself a delta (of checkpoint {}), and a delta's base must be a full manifest",
                        b.base
                    )),
                ));
            }
            Err(FrameError::Tombstone) => {
                return Err(self.base_unusable(
                    d,
                    DamageKind::HeaderMismatch(
                        "it is a GC tombstone: the base expired while a delta still used it".into(),
                    ),
                ));
            }
            // Not damage: a newer cohort wrote the base, and reads the delta.
            Err(FrameError::Future { found, supported }) => {
                return Err(Error::FutureFormat {
                    blob: key,
                    found,
                    supported,
                    url: self.inner.url.clone(),
                });
            }
            Err(FrameError::Damaged(kind)) => return Err(self.base_unusable(d, kind)),
        };
        if let Err(e) = validate_manifest(&manifest) {
            return Err(self.base_unusable(d, DamageKind::HeaderMismatch(e.to_string())));
        }
        Ok(Base {
            id: d.base,
            crc,
            manifest: Arc::new(manifest),
        })
    }

    fn base_unusable(&self, d: &DeltaManifest, kind: DamageKind) -> Error {
        self.manifest_damaged(
            d.id,
            DamageKind::BaseUnusable {
                base: keys::manifest(d.base),
                kind: Box::new(kind),
            },
        )
    }

    /// Encodes `manifest` for its commit: as a delta against the base of manifest `id - 1` when
    /// that base is known and the delta is small enough (see [`DELTA_SHARE`]), else whole.
    ///
    /// Also checks that manifest `id - 1` exists (ids are contiguous), [`Error::Conflict`] if
    /// not: a manifest the cache knows exists for good (slots are create-only); otherwise it
    /// is read.
    ///
    /// `changed`, when given, names every object whose entry differs from manifest `id - 1`'s
    /// (which holds the same objects): the delta is then found from those and what the
    /// previous one held, not by comparing every entry with the base's.
    pub(crate) async fn encode_for_commit(
        &self,
        manifest: &Manifest,
        changed: Option<&[ObjectId]>,
    ) -> Result<Encoded> {
        let id = manifest.id;
        let prev =
            (id.get().checked_sub(1).map(CheckpointId::new)).filter(|p| *p != CheckpointId::ZERO);
        let cached = prev.and_then(|p| self.inner.cache.base_of(p));
        // The names are used only against a manifest `id - 1` this store wrote (it knows what
        // its delta held); the entries not named were checked when that one was committed.
        // Each named object is looked up once, for the check and the delta alike.
        let named: Option<Vec<Named<'_>>> = changed
            .filter(|_| cached.as_ref().is_some_and(|(_, _, d)| d.is_some()))
            .map(|named| {
                (named.iter())
                    .map(|o| (o, manifest.objects.get_key_value(o)))
                    .collect()
            });
        match &named {
            Some(named) => {
                let own = (named
                    .iter()
                    .filter_map(|(_, e)| e.map(|(_, e)| &e.location)))
                .chain(manifest.in_transit.iter().map(|m| &m.location));
                validate_parts(id, &manifest.round, own)?;
            }
            None => validate_manifest(manifest)?,
        }
        let (base, prev_epoch, differs) = match (prev, cached) {
            (Some(_), Some((base, epoch, differs))) => (Some(base), Some(epoch), differs),
            (Some(prev), None) => {
                let (base, epoch) = self.base_for_next(prev, id).await?;
                (base, epoch, None)
            }
            (None, _) => (None, None, None),
        };
        // Epochs never go down along the ids: a writer that knows a newer epoch's manifest
        // (it read it after a conflict, say) must not commit on top of it. Together with the
        // create at `id` this makes "no manifest of an older epoch follows a newer one" a rule
        // of the store, whoever calls it.
        if let Some(prev_epoch) = prev_epoch.filter(|e| *e > manifest.epoch) {
            return Err(Error::Fenced {
                id,
                epoch: manifest.epoch,
                by: format!(
                    "epoch {prev_epoch} (checkpoint {}, the one before)",
                    id.get() - 1
                ),
                url: self.inner.url.clone(),
            });
        }
        let encode_error = |e: rmp_serde::encode::Error| {
            Error::InvalidInput(format!(
                "manifest of checkpoint {id} cannot be encoded: {e}"
            ))
        };
        if let Some(base) = base.filter(|b| b.id < id && b.manifest.epoch <= manifest.epoch) {
            let limit = manifest.objects.len().saturating_sub(1) / DELTA_SHARE;
            let delta = match (&named, differs) {
                (Some(changed), Some(prev)) => {
                    let delta = delta_named(&base.manifest, &prev, changed, limit);
                    #[cfg(debug_assertions)]
                    check_named(&base.manifest, manifest, delta.as_ref())?;
                    delta
                }
                _ => diff(&base.manifest.objects, &manifest.objects, limit)
                    .map(|changes| DeltaEntries::of(&changes)),
            };
            if let Some(delta) = delta {
                let differs = Arc::new(delta);
                let changes = differs.changes();
                let body = DeltaBody {
                    id,
                    epoch: manifest.epoch,
                    created_at_ms: manifest.created_at_ms,
                    parent: manifest.parent,
                    kind: &manifest.kind,
                    round: &manifest.round,
                    base: base.id,
                    base_crc: base.crc,
                    objects: EntryMap(changes.changed),
                    removed: changes.removed,
                    in_transit: &manifest.in_transit,
                    metadata: &manifest.metadata,
                };
                let bytes = format::encode_delta(&body).map_err(encode_error)?;
                return Ok(Encoded {
                    bytes,
                    base: Some(base),
                    differs,
                });
            }
        }
        Ok(Encoded {
            bytes: format::encode_manifest(manifest).map_err(encode_error)?,
            base: None,
            differs: Arc::default(),
        })
    }

    /// Reads manifest `prev` to learn the base the next manifest is diffed against, and its
    /// epoch. The base is `None` when `prev` cannot serve (a tombstone, damaged, of a newer
    /// format, or a delta whose base is unusable): the next manifest is then written whole, and
    /// its create decides the rest. The epoch is `None` when the header cannot be read.
    async fn base_for_next(
        &self,
        prev: CheckpointId,
        next: CheckpointId,
    ) -> Result<(Option<Base>, Option<u64>)> {
        let key = keys::manifest(prev);
        let raw = match self.inner.get(&key).await {
            Ok(raw) => raw,
            Err(Error::NotFound { .. }) => {
                return Err(Error::Conflict {
                    id: next,
                    reason: format!(
                        "manifest {key} does not exist, and checkpoint ids are contiguous"
                    ),
                    url: self.inner.url.clone(),
                });
            }
            Err(e) => return Err(e),
        };
        let crc = format::frame_crc(&raw);
        let (base, epoch) = match format::decode_manifest(&raw, prev) {
            Ok(StoredManifest::Full(m)) if validate_manifest(&m).is_ok() => {
                let epoch = m.epoch;
                let base = Base {
                    id: prev,
                    crc,
                    manifest: Arc::new(m),
                };
                (base, epoch)
            }
            Ok(StoredManifest::Delta(d)) => {
                let epoch = d.epoch;
                match self.load_base(&d, false).await {
                    Ok(base) => (base, epoch),
                    Err(e @ (Error::Damaged { .. } | Error::FutureFormat { .. })) => {
                        tracing::warn!(store = %self.inner.url, error = %e, "the previous manifest is unreadable; writing the next one whole");
                        return Ok((None, Some(epoch)));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(StoredManifest::Full(m)) => return Ok((None, Some(m.epoch))),
            Err(_) => return Ok((None, None)),
        };
        self.inner.cache.note(prev, epoch, &base, None);
        Ok((Some(base), Some(epoch)))
    }

    /// Records a committed manifest in the cache: the base it uses, or itself when whole.
    pub(crate) fn note_committed(
        &self,
        manifest: &Manifest,
        shared: Option<&Arc<Manifest>>,
        base: Option<Base>,
        differs: Arc<DeltaEntries>,
        crc: u32,
    ) {
        let base = base.unwrap_or_else(|| Base {
            id: manifest.id,
            crc,
            manifest: shared.map_or_else(|| Arc::new(manifest.clone()), Arc::clone),
        });
        self.inner
            .cache
            .note(manifest.id, manifest.epoch, &base, Some(differs));
    }

    /// Forgets which base the newest manifest uses: a commit found an earlier create of its
    /// own, whose encoding it did not choose this time.
    pub(crate) fn forget_newest_base(&self) {
        self.inner.cache.forget_head();
    }

    /// The checkpoint whose full manifest checkpoint `id`'s manifest is stored as a delta of;
    /// `None` when it is stored whole. Reads only `id`'s manifest, so it answers even when the
    /// base is unusable (which [`read_manifest`](Self::read_manifest) then reports); of a
    /// whole manifest, which can be large, only the 10-byte header that says so. Damage in a
    /// whole manifest's body is therefore left to `read_manifest` and `verify`.
    pub async fn manifest_base(&self, id: CheckpointId) -> Result<Option<CheckpointId>> {
        match self.inner.manifest_header(id).await {
            Ok(head) if format::is_full_manifest_header(&head) => return Ok(None),
            // Not found, a tombstone, a delta, damaged: the whole read says which.
            _ => {}
        }
        Ok(self.read_stored(id).await?.0.base())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use proptest::prelude::*;

    use super::*;
    use crate::manifest::EntryLocation;

    fn entry(v: u8) -> ObjectEntry {
        ObjectEntry {
            type_name: "T".into(),
            version: 1,
            generation: Some(u64::from(v)),
            location: EntryLocation {
                segment: "segments/00000000000000000001/r/w-000000.seg".into(),
                offset: 22,
                len: 40 + u64::from(v),
                crc: u32::from(v),
            },
        }
    }

    fn objects(spec: &BTreeMap<u8, u8>) -> BTreeMap<ObjectId, ObjectEntry> {
        spec.iter()
            .map(|(k, v)| (ObjectId::indexed("o", u64::from(*k)).unwrap(), entry(*v)))
            .collect()
    }

    /// Encodes `target` as a delta of `base` and decodes it back as a reader would.
    fn round_trip(base: &Manifest, target: &Manifest, limit: usize) -> Option<Manifest> {
        let changes = diff(&base.objects, &target.objects, limit)?;
        let body = DeltaBody {
            id: target.id,
            epoch: target.epoch,
            created_at_ms: target.created_at_ms,
            parent: target.parent,
            kind: &target.kind,
            round: &target.round,
            base: base.id,
            base_crc: 7,
            objects: EntryMap(changes.changed),
            removed: changes.removed,
            in_transit: &target.in_transit,
            metadata: &target.metadata,
        };
        let bytes = format::encode_delta(&body).unwrap();
        let StoredManifest::Delta(d) = format::decode_manifest(&bytes, target.id).unwrap() else {
            panic!("a delta decoded as a full manifest");
        };
        assert_eq!((d.base, d.base_crc), (base.id, 7));
        Some(resolve(base, d).unwrap())
    }

    proptest! {
        /// Resolving the delta of any two manifests gives the target back, and the delta holds
        /// exactly the entries that differ.
        #[test]
        fn delta_resolves_to_the_target(
            a in proptest::collection::btree_map(0u8..40, 0u8..4, 0..30),
            b in proptest::collection::btree_map(0u8..40, 0u8..4, 0..30),
        ) {
            let mut base = Manifest::new(CheckpointId::new(3), 1, 10, "r3");
            base.objects = objects(&a);
            let mut target = Manifest::new(CheckpointId::new(5), 2, 20, "r5");
            target.parent = Some(CheckpointId::new(4));
            target.objects = objects(&b);
            target.metadata.insert("k".into(), vec![1, 2, 3]);
            let differing = a.keys().chain(b.keys()).collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| a.get(k) != b.get(k))
                .count();
            prop_assert_eq!(round_trip(&base, &target, usize::MAX), Some(target.clone()));
            prop_assert!(round_trip(&base, &target, differing).is_some());
            if differing > 0 {
                prop_assert!(round_trip(&base, &target, differing - 1).is_none());
            }
        }
    }

    async fn put(store: &CheckpointStore, key: String, bytes: Vec<u8>) {
        use object_store::ObjectStoreExt;
        let (os, _) = store.object_store();
        os.put(&store.path_of(&key), bytes.into()).await.unwrap();
    }

    /// A crafted manifest whose entry lengths add up past a u64 is damaged, whether whole or a
    /// delta whose entries overflow only together with its base's. Before, it read back, and
    /// `referenced_bytes` (so `cohort list`, `show`, `verify`) panicked with "attempt to add with
    /// overflow" in a debug build and printed a wrapped size in a release build.
    #[tokio::test]
    async fn entry_lengths_that_overflow_a_u64_are_damage() {
        let store = CheckpointStore::memory();
        let huge = |v: u8| {
            let mut e = entry(v);
            e.location.len = u64::MAX / 2 + 1;
            e
        };
        let mut whole = Manifest::new(CheckpointId::new(1), 1, 0, "r1");
        whole.objects.insert(ObjectId::new("a").unwrap(), huge(1));
        whole.objects.insert(ObjectId::new("b").unwrap(), huge(2));
        let bytes = format::encode_manifest(&whole).unwrap();
        put(&store, keys::manifest(whole.id), bytes).await;
        let err = store.read_manifest(whole.id).await.unwrap_err();
        assert!(err.to_string().contains("2^64"), "{err}");
        let report = store.verify(whole.id).await.unwrap();
        assert!(!report.is_ok());
        assert_eq!(whole.referenced_bytes(), u64::MAX);

        // A base that adds up, and a delta of it that adds up, but not together.
        let mut base = Manifest::new(CheckpointId::new(2), 1, 0, "r2");
        base.objects.insert(ObjectId::new("a").unwrap(), huge(1));
        let base_bytes = format::encode_manifest(&base).unwrap();
        let base_crc = format::frame_crc(&base_bytes);
        put(&store, keys::manifest(base.id), base_bytes).await;
        store.read_manifest(base.id).await.unwrap();
        let b = ObjectId::new("b").unwrap();
        let added = huge(2);
        let delta = DeltaBody {
            id: CheckpointId::new(3),
            epoch: 1,
            created_at_ms: 0,
            parent: Some(base.id),
            kind: &crate::ManifestKind::Checkpoint,
            round: "r3",
            base: base.id,
            base_crc,
            objects: EntryMap(vec![(&b, &added)]),
            removed: Vec::new(),
            in_transit: &[],
            metadata: &BTreeMap::new(),
        };
        put(
            &store,
            keys::manifest(delta.id),
            format::encode_delta(&delta).unwrap(),
        )
        .await;
        let err = store.read_manifest(delta.id).await.unwrap_err();
        assert!(err.to_string().contains("2^64"), "{err}");
    }

    #[test]
    fn a_delta_that_does_not_fit_its_base_is_refused() {
        let base = Manifest::new(CheckpointId::new(1), 1, 0, "r1");
        let delta = DeltaManifest {
            id: CheckpointId::new(2),
            epoch: 1,
            created_at_ms: 0,
            parent: Some(CheckpointId::new(1)),
            kind: crate::ManifestKind::Checkpoint,
            round: "r2".into(),
            base: CheckpointId::new(1),
            base_crc: 0,
            objects: BTreeMap::new(),
            removed: vec![ObjectId::new("gone").unwrap()],
            in_transit: Vec::new(),
            metadata: BTreeMap::new(),
        };
        let err = resolve(&base, delta).unwrap_err();
        assert!(err.contains("gone"), "{err}");
    }
}
