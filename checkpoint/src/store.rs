//! [`CheckpointStore`]: opening a store from a URL, the probe, the commit point and reading.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cohort_object_api::{CheckpointId, EncodedState, ObjectId};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use url::Url;

use crate::delta::{Encoded, ManifestCache};
use crate::error::{Damage, DamageKind, Error, Result};
use crate::format::{self, Expected};
use crate::keys;
use crate::local::{self, LocalDisk};
use crate::manifest::{EntryLocation, InTransitEntry, Manifest};
use crate::writer::SegmentWriter;

/// How a store is opened and written. Build it with struct update syntax:
/// `StoreOptions { fsync: false, ..StoreOptions::default() }`.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Make every local write durable (file and directory fsync) before it returns. Default
    /// `true`; turning it off voids the power-loss guarantee of `commit`.
    pub fsync: bool,
    /// Segments are sealed and uploaded once they reach this many bytes. Default 64 MiB.
    pub segment_size: usize,
    /// How many segment uploads (or multipart parts) one writer keeps in flight. Default 4.
    pub upload_concurrency: usize,
    /// Part size of the multipart upload of a state larger than `segment_size`. Default 16 MiB;
    /// S3 needs at least 5 MiB.
    pub part_size: usize,
    /// How many segments a reader fetches at once. Default 8.
    pub read_concurrency: usize,
    /// Accept a store that failed the create-if-absent probe. Default `false`: only safe when a
    /// single writer ever commits to the store.
    pub allow_unsafe_conditional_put: bool,
    /// Extra object store settings for `s3://` URLs, applied over the `AWS_*` environment
    /// variables: keys as object_store's `AmazonS3ConfigKey` parses them, for example
    /// `aws_endpoint`, `aws_allow_http`, `aws_region`.
    pub config: std::collections::BTreeMap<String, String>,
    /// Retries of transient S3 errors: short and bounded, so that an unreachable endpoint is
    /// reported within seconds.
    pub retry: RetryConfig,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            fsync: true,
            segment_size: 64 << 20,
            upload_concurrency: 4,
            part_size: 16 << 20,
            read_concurrency: 8,
            allow_unsafe_conditional_put: false,
            config: Default::default(),
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
            },
        }
    }
}

/// A checkpoint store: segments, manifests, epochs and pins under one prefix of an
/// [`ObjectStore`]. Cheap to clone.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cohort_checkpoint::{CheckpointStore, Manifest, ObjectEntry};
/// use cohort_object_api::{CheckpointId, ObjectId, Snapshot};
///
/// let store = CheckpointStore::memory();
/// let id = CheckpointId::new(1);
/// let account = ObjectId::new("account-1").unwrap();
///
/// // Phase 1: write the tentative states.
/// let mut writer = store.segment_writer(id, "e1-r1", "node-1");
/// let location = writer.add(&account, &Snapshot::new("Account", 1, 10_i64)).await.unwrap();
/// writer.finish().await.unwrap();
///
/// // Phase 2: commit by creating the manifest.
/// let mut manifest = Manifest::new(id, 1, 0, "e1-r1");
/// manifest.objects.insert(account.clone(), ObjectEntry {
///     type_name: "Account".into(), version: 1, generation: None, location,
/// });
/// store.commit(&manifest).await.unwrap();
///
/// let line = store.recovery_line().await.unwrap().unwrap();
/// let states = store.read_states(&line.manifest).await.unwrap();
/// assert_eq!(states[0].1.decode::<i64>().unwrap(), 10);
/// # });
/// ```
#[derive(Clone)]
pub struct CheckpointStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: Path,
    pub(crate) options: StoreOptions,
    pub(crate) url: String,
    /// Named in `Unavailable` errors: the S3 endpoint, or the URL.
    pub(crate) endpoint: String,
    /// A remote store's generic errors are connection trouble; a local one's are IO errors.
    pub(crate) remote: bool,
    pub(crate) writable: bool,
    /// Set for a store on local disk opened from a path or `file://` URL: segments are written
    /// and read with direct file IO (see `local.rs`).
    pub(crate) local: Option<LocalDisk>,
    /// The newest base manifest known, for delta manifests (see `delta.rs`).
    pub(crate) cache: Arc<ManifestCache>,
}

impl fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("url", &self.inner.url)
            .field("writable", &self.inner.writable)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for CheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.url)
    }
}

/// The newest committed checkpoint whose blobs all verify, and the newer ones skipped because
/// they did not.
#[derive(Clone, Debug)]
pub struct RecoveryLine {
    /// The manifest to recover to.
    pub manifest: Manifest,
    /// Reports of the newer, damaged checkpoints that were skipped, newest first.
    pub skipped: Vec<VerifyReport>,
}

/// How much of a candidate recovery line is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineCheck {
    /// Every entry read and its crc checked (`cohort verify`, `cohort list`, the dashboard).
    Full,
    /// The manifest, and each referenced segment's presence, length and header: what a
    /// coordinator needs, since the hosts check the entries they restore.
    Referenced,
}

/// The result of verifying one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The checkpoint verified.
    pub checkpoint: CheckpointId,
    /// Entries checked (object states and in-transit messages).
    pub entries: usize,
    /// Bytes of entries checked.
    pub bytes: u64,
    /// Everything found damaged; empty when the checkpoint is sound.
    pub damaged: Vec<Damage>,
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(
                f,
                "checkpoint {}: ok ({} entries, {} bytes)",
                self.checkpoint, self.entries, self.bytes
            );
        }
        write!(
            f,
            "checkpoint {}: {} damaged of {} entries",
            self.checkpoint,
            self.damaged.len(),
            self.entries
        )?;
        for d in &self.damaged {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Progress of [`CheckpointStore::verify_all_with_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyProgress {
    /// The checkpoint just verified.
    pub checkpoint: CheckpointId,
    /// Checkpoints verified so far, this one included.
    pub done: usize,
    /// Checkpoints to verify in all.
    pub total: usize,
}

static PROBE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl CheckpointStore {
    /// Opens a store for writing.
    ///
    /// `url` is `file:///abs/path` or a plain path (a directory, created if missing),
    /// `s3://bucket/prefix` (configured by the `AWS_*` variables: `AWS_ENDPOINT_URL` or
    /// `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`), or `memory://` (a fresh, empty store).
    ///
    /// Runs the create-if-absent probe once and refuses a store that fails it with
    /// [`Error::UnsafeStore`], unless [`StoreOptions::allow_unsafe_conditional_put`] is set.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        let store = Self::resolve(url, options, true)?;
        store.probe_create_if_absent().await?;
        Ok(store)
    }

    /// Opens a store for reading only: no probe, and every write method returns
    /// [`Error::ReadOnly`]. A local directory must exist.
    pub async fn open_read_only(url: &str) -> Result<Self> {
        Self::resolve(url, StoreOptions::default(), false)
    }

    /// A fresh, empty in-memory store, for tests.
    pub fn memory() -> Self {
        Self::from_object_store(
            Arc::new(InMemory::new()),
            Path::default(),
            StoreOptions::default(),
        )
        .with_url("memory://")
    }

    /// Wraps any object store (for example a fault-injecting one), writable, without a probe.
    pub fn from_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        options: StoreOptions,
    ) -> Self {
        let url = format!("{store}/{prefix}");
        Self {
            inner: Arc::new(Inner {
                store,
                prefix,
                options,
                endpoint: url.clone(),
                url,
                remote: false,
                writable: true,
                local: None,
                cache: Arc::default(),
            }),
        }
    }

    /// Treats the wrapped store's generic errors as a remote store's: connection trouble,
    /// [`Error::Unavailable`] and retryable, as they are from S3. For a wrapper that models a
    /// remote store (a fault-injecting one in a simulation) built by
    /// [`from_object_store`](Self::from_object_store), whose generic errors are otherwise
    /// taken for a local disk's.
    #[must_use]
    pub fn as_remote(self) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            // Call it on a store just built, which nothing else holds yet.
            Err(shared) => return Self { inner: shared },
        };
        inner.remote = true;
        Self {
            inner: Arc::new(inner),
        }
    }

    fn with_url(self, url: &str) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            // Only called on a store built a line earlier, which nothing else holds yet.
            Err(shared) => return Self { inner: shared },
        };
        inner.url = url.to_owned();
        inner.endpoint = url.to_owned();
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The store's URL, for messages.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Whether write methods are allowed.
    pub fn is_writable(&self) -> bool {
        self.inner.writable
    }

    /// The full path in the underlying object store of `key`, a key relative to this store's
    /// prefix (as [`EntryLocation::segment`] is).
    pub fn path_of(&self, key: &str) -> Path {
        self.inner.path(key)
    }

    /// The underlying object store and the prefix this store lives under.
    pub fn object_store(&self) -> (&Arc<dyn ObjectStore>, &Path) {
        (&self.inner.store, &self.inner.prefix)
    }

    fn resolve(url: &str, options: StoreOptions, for_writing: bool) -> Result<Self> {
        let given = url.trim();
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if given.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        let parsed = match Url::parse(given) {
            // A one-letter scheme is a Windows drive, so a path.
            Ok(u) if u.scheme().len() > 1 => Some(u),
            Ok(_) | Err(url::ParseError::RelativeUrlWithoutBase) => None,
            Err(e) => return Err(invalid(e.to_string())),
        };
        let Some(parsed) = parsed else {
            return Self::local(url, std::path::PathBuf::from(given), options, for_writing);
        };
        if parsed.scheme() == "memory" {
            let inner = Inner {
                store: Arc::new(InMemory::new()),
                prefix: Path::default(),
                options,
                url: given.to_owned(),
                endpoint: given.to_owned(),
                remote: false,
                writable: for_writing,
                local: None,
                cache: Arc::default(),
            };
            return Ok(Self {
                inner: Arc::new(inner),
            });
        }
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(e.to_string()))?;
        match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute local path".into()))?;
                Self::local(url, dir, options, for_writing)
            }
            ObjectStoreScheme::AmazonS3 => {
                // object_store panics on the first request to an endpoint it cannot parse.
                check_endpoints(&options.config).map_err(Error::InvalidInput)?;
                let mut builder = AmazonS3Builder::from_env().with_url(given);
                for (key, value) in &options.config {
                    let parsed = key.to_ascii_lowercase().parse().map_err(|e| {
                        invalid(format!(
                            "unknown S3 setting {key:?} in StoreOptions::config: {e}"
                        ))
                    })?;
                    builder = builder.with_config(parsed, value);
                }
                let s3 = builder
                    .with_retry(options.retry.clone())
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                let endpoint = ["aws_endpoint_url_s3", "aws_endpoint_url", "aws_endpoint"]
                    .iter()
                    .find_map(|k| options.config.get(*k).cloned())
                    .or_else(|| {
                        ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                            .iter()
                            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
                    })
                    .unwrap_or_else(|| format!("AWS S3 ({given})"));
                let inner = Inner {
                    store: Arc::new(s3),
                    prefix,
                    options,
                    url: given.to_owned(),
                    endpoint,
                    remote: true,
                    writable: for_writing,
                    local: None,
                    cache: Arc::default(),
                };
                Ok(Self {
                    inner: Arc::new(inner),
                })
            }
            other => Err(invalid(format!("the {other:?} scheme is not supported"))),
        }
    }

    fn local(
        url: &str,
        dir: std::path::PathBuf,
        options: StoreOptions,
        for_writing: bool,
    ) -> Result<Self> {
        if for_writing {
            std::fs::create_dir_all(&dir).map_err(|e| Error::InvalidUrl {
                url: url.to_owned(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        } else if !dir.is_dir() {
            return Err(Error::NotFound {
                what: format!("store directory {}", dir.display()),
                url: url.to_owned(),
            });
        }
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| Error::InvalidUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?
            .with_fsync(options.fsync)
            .with_automatic_cleanup(true);
        // The same root LocalFileSystem resolved (it canonicalises too).
        let root = std::fs::canonicalize(&dir).map_err(|e| Error::InvalidUrl {
            url: url.to_owned(),
            reason: format!("cannot resolve directory {}: {e}", dir.display()),
        })?;
        let local = Some(LocalDisk::new(root, options.fsync));
        let inner = Inner {
            store: Arc::new(fs),
            prefix: Path::default(),
            options,
            url: url.to_owned(),
            endpoint: url.to_owned(),
            remote: false,
            writable: for_writing,
            local,
            cache: Arc::default(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The same store with other options (for example a smaller segment size).
    pub fn with_options(&self, options: StoreOptions) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                store: Arc::clone(&i.store),
                prefix: i.prefix.clone(),
                options,
                url: i.url.clone(),
                endpoint: i.endpoint.clone(),
                remote: i.remote,
                writable: i.writable,
                local: i.local.clone(),
                cache: Arc::clone(&i.cache),
            }),
        }
    }

    /// A store under `<prefix>/<name>` of the same object store, with the same options: an
    /// independent checkpoint store (tests use one per case). `name` is a token of
    /// `[A-Za-z0-9_-]`.
    pub fn child(&self, name: &str) -> Result<Self> {
        keys::validate_token("child store", name)?;
        let i = &self.inner;
        let prefix = i.path(name);
        Ok(Self {
            inner: Arc::new(Inner {
                store: Arc::clone(&i.store),
                url: format!("{}/{name}", i.url.trim_end_matches('/')),
                prefix,
                options: i.options.clone(),
                endpoint: i.endpoint.clone(),
                remote: i.remote,
                writable: i.writable,
                local: i.local.clone(),
                cache: Arc::default(),
            }),
        })
    }

    /// Runs the create-if-absent probe: two creates of one scratch key, of which the second
    /// must be refused. [`open`](Self::open) runs it; call it yourself on a store built with
    /// [`from_object_store`](Self::from_object_store). Returns [`Error::UnsafeStore`] for a
    /// store that accepts both, unless the options allow it.
    #[allow(
        clippy::disallowed_methods,
        reason = "the probe's scratch key must be unique across processes; no decision reads the time"
    )]
    pub async fn probe_create_if_absent(&self) -> Result<()> {
        let token = format!(
            "{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
            PROBE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let key = keys::probe(&token);
        let path = self.inner.path(&key);
        let create = PutOptions::from(PutMode::Create);
        let first = self
            .inner
            .store
            .put_opts(&path, PutPayload::from_static(b"probe 1"), create.clone())
            .await;
        let verdict = match first {
            Err(object_store::Error::NotImplemented { .. }) => {
                Some("it does not implement create-if-absent".to_owned())
            }
            Err(e) => return Err(self.inner.map_err(format!("probe create of {key}"), e)),
            Ok(_) => {
                let second = self
                    .inner
                    .store
                    .put_opts(&path, PutPayload::from_static(b"probe 2"), create)
                    .await;
                match second {
                    Err(object_store::Error::AlreadyExists { .. }) => None,
                    Ok(_) => Some(format!(
                        "it accepted two create-if-absent writes of the scratch key {key}: it ignores If-None-Match"
                    )),
                    Err(e) => {
                        return Err(self
                            .inner
                            .map_err(format!("second probe create of {key}"), e));
                    }
                }
            }
        };
        if let Err(e) = self.inner.store.delete(&path).await {
            tracing::warn!(store = %self.inner.url, key, error = %e, "could not delete the probe's scratch key");
        }
        match verdict {
            None => Ok(()),
            Some(reason) if self.inner.options.allow_unsafe_conditional_put => {
                tracing::warn!(store = %self.inner.url, %reason, "store failed the create-if-absent probe; accepted because allow_unsafe_conditional_put is set: never run two writers against it");
                Ok(())
            }
            Some(reason) => Err(Error::UnsafeStore {
                url: self.inner.url.clone(),
                reason,
            }),
        }
    }

    pub(crate) fn check_writable(&self, operation: &str) -> Result<()> {
        if self.inner.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                url: self.inner.url.clone(),
                operation: operation.to_owned(),
            })
        }
    }

    // -----------------------------------------------------------------------------------------
    // Writing

    /// A writer for one attempt (`round`) of checkpoint `id` by `writer`. Round and writer are
    /// tokens of 1-64 `[A-Za-z0-9_-]`, and a writer may also be the
    /// [`channel_writer`](crate::channel_writer) of such a token; a bad token or a read-only
    /// store is reported by the writer's first method call. Every (id, round, writer) must be
    /// used by one writer only.
    pub fn segment_writer(&self, id: CheckpointId, round: &str, writer: &str) -> SegmentWriter {
        SegmentWriter::new(self.clone(), id, round, writer)
    }

    /// Commits a checkpoint by creating its manifest, create-only. The segments it references
    /// must be durable already ([`SegmentWriter::finish`] returned).
    ///
    /// The manifest is stored whole, or, when fewer than a quarter of its entries differ from
    /// the full manifest that `id - 1` uses as base (itself when whole), as a delta of that
    /// base: only the differing entries are written, so an idle object costs nothing. Readers
    /// always get the full manifest back ([`read_manifest`](Self::read_manifest)).
    ///
    /// - Ok: committed (also when a retried request finds its own earlier create, or a create
    ///   whose answer was lost is read back as ours).
    /// - [`Error::Fenced`]: a higher epoch holds this id, or GC tombstoned it: step down.
    /// - [`Error::Conflict`]: a writer of no higher epoch committed this id first, or manifest
    ///   `id - 1` does not exist (ids are contiguous): re-read and retry at a higher id.
    /// - [`Error::Fenced`] too when manifest `id - 1` is of a newer epoch: epochs never go down
    ///   along the ids.
    /// - Any other error: the manifest is not there (it was read back); retry or give up.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        self.commit_inner(manifest, None, None).await
    }

    /// [`commit`](Self::commit) of a manifest the caller keeps behind an `Arc` (a coordinator
    /// keeps its last line to build the next one): the store keeps a reference to it, as the
    /// base of the next deltas, instead of a copy of every entry.
    ///
    /// ```
    /// # async fn demo(store: cohort_checkpoint::CheckpointStore, manifest: cohort_checkpoint::Manifest) -> cohort_checkpoint::Result<()> {
    /// let line = std::sync::Arc::new(manifest);
    /// store.commit_shared(&line).await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit_shared(&self, manifest: &Arc<Manifest>) -> Result<()> {
        self.commit_inner(manifest, Some(manifest), None).await
    }

    /// [`commit_shared`](Self::commit_shared) of a manifest that holds the same objects as
    /// manifest `id - 1`, whose entries differ from that one's only for the objects in
    /// `changed`: a coordinator that updated its last line in place knows them. The store
    /// then checks and compares only those entries (and those its delta already held), in time
    /// that follows the changes rather than the cohort.
    ///
    /// `changed` must name every object whose entry differs (naming more is harmless): a
    /// debug build compares every entry and refuses the commit with [`Error::InvalidInput`]
    /// if one is missing. When manifest `id - 1` is not one this store handle (or a clone of
    /// it) committed, this is [`commit_shared`](Self::commit_shared).
    pub async fn commit_changed(
        &self,
        manifest: &Arc<Manifest>,
        changed: &[ObjectId],
    ) -> Result<()> {
        self.commit_inner(manifest, Some(manifest), Some(changed))
            .await
    }

    async fn commit_inner(
        &self,
        manifest: &Manifest,
        shared: Option<&Arc<Manifest>>,
        changed: Option<&[ObjectId]>,
    ) -> Result<()> {
        self.check_writable("commit")?;
        let id = manifest.id;
        // Checks the manifest and that manifest `id - 1` exists, and stores the manifest whole
        // or as a delta.
        let Encoded {
            bytes,
            base,
            differs,
        } = self.encode_for_commit(manifest, changed).await?;
        let key = keys::manifest(id);
        let crc = format::frame_crc(&bytes);
        let delta_of = base.as_ref().map(|b| b.id);
        let put = self
            .inner
            .store
            .put_opts(
                &self.inner.path(&key),
                PutPayload::from(bytes),
                PutMode::Create.into(),
            )
            .await;
        match put {
            Ok(_) => {
                tracing::debug!(store = %self.inner.url, %id, epoch = manifest.epoch, round = %manifest.round, ?delta_of, "committed");
                self.note_committed(manifest, shared, base, differs, crc);
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                self.resolve_taken(manifest, &key).await
            }
            Err(e) => {
                let failed = self.inner.map_err(format!("create {key}"), e);
                // In doubt: the create may have landed and only its answer been lost. The
                // store decides: our own manifest there means committed.
                match self.resolve_taken(manifest, &key).await {
                    Ok(()) => {
                        tracing::debug!(%id, "a create whose answer was lost had landed");
                        Ok(())
                    }
                    Err(taken @ (Error::Fenced { .. } | Error::Conflict { .. })) => Err(taken),
                    Err(_) => Err(failed),
                }
            }
        }
    }

    /// Manifest `key` already exists: is it ours, a newer leader's, or a rival's? Decided by
    /// its header fields (epoch and round), so a delta whose base is unusable is judged alike.
    async fn resolve_taken(&self, manifest: &Manifest, key: &str) -> Result<()> {
        let id = manifest.id;
        let raw = self.inner.get(key).await?;
        let url = self.inner.url.clone();
        match format::decode_manifest(&raw, id) {
            Ok(existing)
                if existing.round() == manifest.round && existing.epoch() == manifest.epoch =>
            {
                tracing::debug!(%id, round = %manifest.round, "commit found its own earlier create");
                self.forget_newest_base();
                Ok(())
            }
            Ok(existing) if existing.epoch() > manifest.epoch => Err(Error::Fenced {
                id,
                epoch: manifest.epoch,
                by: format!("epoch {} (round {})", existing.epoch(), existing.round()),
                url,
            }),
            Ok(existing) => Err(Error::Conflict {
                id,
                reason: format!(
                    "it was committed first by epoch {} (round {})",
                    existing.epoch(),
                    existing.round()
                ),
                url,
            }),
            Err(format::FrameError::Tombstone) => Err(Error::Fenced {
                id,
                epoch: manifest.epoch,
                by: "a GC tombstone (the id expired long ago)".into(),
                url,
            }),
            Err(format::FrameError::Future { found, .. }) => Err(Error::Conflict {
                id,
                reason: format!("it holds a manifest of a newer format version {found}"),
                url,
            }),
            Err(format::FrameError::Damaged(kind)) => Err(Error::Conflict {
                id,
                reason: format!("it holds a damaged manifest ({kind})"),
                url,
            }),
        }
    }

    /// Deletes the blobs of one uncommitted attempt of checkpoint `id`. Refuses the round that
    /// committed `id`. Returns how many blobs were deleted.
    pub async fn discard_round(&self, id: CheckpointId, round: &str) -> Result<u64> {
        self.check_writable("discard a round")?;
        keys::validate_token("round", round)?;
        match self.read_stored(id).await {
            Ok((m, _)) if m.round() == round => {
                return Err(Error::InvalidInput(format!(
                    "round {round} of checkpoint {id} is committed; its blobs are live"
                )));
            }
            Ok(_) | Err(Error::NotFound { .. }) => {}
            // A damaged or newer-format manifest might be this round's: leave its blobs alone.
            Err(e) => return Err(e),
        }
        let below = keys::round_dir(id, round);
        let own: Vec<String> = self
            .inner
            .list_segment_blobs(&below)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| {
                keys::parse_segment_blob(key)
                    .is_some_and(|s| s.checkpoint == id && s.round == round)
            })
            .collect();
        self.inner.delete_segment_blobs(&own).await?;
        Ok(own.len() as u64)
    }

    // -----------------------------------------------------------------------------------------
    // Reading

    /// The ids of every committed checkpoint, ascending; checkpoints that GC expired are left
    /// out.
    pub async fn committed_ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self
            .manifest_slots()
            .await?
            .into_iter()
            .filter(|(_, tomb)| !tomb)
            .map(|(id, _)| id)
            .collect())
    }

    /// Every used manifest slot, ascending, with whether it is a GC tombstone.
    pub(crate) async fn manifest_slots(&self) -> Result<Vec<(CheckpointId, bool)>> {
        self.inner
            .list_parsed(keys::MANIFESTS, |key, size| {
                keys::parse_manifest(key).map(|id| (id, size == format::TOMBSTONE_LEN as u64))
            })
            .await
    }

    /// Reads and checks the manifest of checkpoint `id`. A manifest stored as a delta is
    /// resolved against its base: the result is always the full manifest, and an unusable base
    /// makes it [`Error::Damaged`] ([`DamageKind::BaseUnusable`]). A manifest or base written
    /// by a newer format version is [`Error::FutureFormat`].
    pub async fn read_manifest(&self, id: CheckpointId) -> Result<Manifest> {
        let (stored, _) = self.read_stored(id).await?;
        self.resolve_stored(stored, false).await
    }

    /// The newest committed checkpoint whose blobs all verify (present, right length, right
    /// crc). Newer, damaged ones are skipped with a warning that names what is damaged, and
    /// reported in [`RecoveryLine::skipped`]. `None` when no checkpoint verifies.
    ///
    /// [`Error::FutureFormat`] when the newest checkpoint that is not damaged (its manifest, a
    /// delta's base, or a segment) was written by a newer format version than this build
    /// reads: it is not damaged, so falling back past it would roll back further than the
    /// newest committed line. Upgrade cohort to recover.
    pub async fn recovery_line(&self) -> Result<Option<RecoveryLine>> {
        let ids = self.committed_ids().await?;
        self.line_among(&ids, LineCheck::Full).await
    }

    /// [`recovery_line`](Self::recovery_line), treating the checkpoints in `skip` as damaged: a
    /// coordinator whose nodes could not decode a line that verifies (its entries have valid
    /// crcs but content that does not decode) falls back past it this way.
    pub async fn recovery_line_skipping(
        &self,
        skip: &[CheckpointId],
    ) -> Result<Option<RecoveryLine>> {
        let ids = self.committed_skipping(skip).await?;
        self.line_among(&ids, LineCheck::Full).await
    }

    /// The recovery line a coordinator restores, checked without reading the states: the
    /// newest committed checkpoint, not in `skip`, whose manifest (and a delta's base) verifies
    /// and whose every referenced segment is present, long enough for its entries, and
    /// headed for its checkpoint. The entries' bytes are not read here: each host checks the
    /// crc of every entry it restores as it reads it ([`read_states_of`](Self::read_states_of)),
    /// and a coordinator whose hosts found damage falls back past the line (it passes it in
    /// `skip`). So a failover or a recovery reads what the line references, not every byte of
    /// it, and each byte is checked once, where it is used.
    ///
    /// Newer checkpoints that fail these checks are skipped and reported as
    /// [`recovery_line`](Self::recovery_line) does, and [`Error::FutureFormat`] is returned
    /// likewise.
    pub async fn recovery_line_referenced(
        &self,
        skip: &[CheckpointId],
    ) -> Result<Option<RecoveryLine>> {
        let ids = self.committed_skipping(skip).await?;
        self.line_among(&ids, LineCheck::Referenced).await
    }

    /// The committed ids but those in `skip`: lines whose restore found damage.
    async fn committed_skipping(&self, skip: &[CheckpointId]) -> Result<Vec<CheckpointId>> {
        let mut ids = self.committed_ids().await?;
        if !skip.is_empty() {
            tracing::warn!(store = %self.inner.url, ?skip, "skipping lines whose restore found damage");
            ids.retain(|id| !skip.contains(id));
        }
        Ok(ids)
    }

    /// [`recovery_line`](Self::recovery_line) among `ids` (ascending), checked as `check` says.
    pub(crate) async fn line_among(
        &self,
        ids: &[CheckpointId],
        check: LineCheck,
    ) -> Result<Option<RecoveryLine>> {
        let mut skipped = Vec::new();
        for &id in ids.iter().rev() {
            let (manifest, report) = match check {
                LineCheck::Full => self.verify_inner(id).await?,
                LineCheck::Referenced => self.verify_referenced(id).await?,
            };
            if let Some(newer) = report.damaged.iter().find(|d| is_future(&d.kind)) {
                tracing::error!(store = %self.inner.url, checkpoint = %id, blob = %newer.blob, "refusing to recover past a checkpoint written by a newer cohort");
                return Err(self.damaged(newer.clone()));
            }
            match manifest {
                Some(manifest) if report.is_ok() => {
                    if !skipped.is_empty() {
                        tracing::warn!(store = %self.inner.url, recovery_line = %id, skipped = skipped.len(), "recovering to an older checkpoint because newer ones are damaged");
                    }
                    return Ok(Some(RecoveryLine { manifest, skipped }));
                }
                _ => {
                    tracing::warn!(store = %self.inner.url, checkpoint = %id, report = %report, "skipping a damaged checkpoint");
                    skipped.push(report);
                }
            }
        }
        if !skipped.is_empty() {
            tracing::error!(store = %self.inner.url, damaged = skipped.len(), "no committed checkpoint verifies");
        }
        Ok(None)
    }

    /// Reads one entry: a ranged read, then its crc and headers are checked.
    pub async fn read_state(&self, location: &EntryLocation) -> Result<EncodedState> {
        let seg = keys::parse_segment(&location.segment).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{:?} is not a segment key of this store's layout",
                location.segment
            ))
        })?;
        let checkpoint = seg.checkpoint;
        let wanted = [Wanted {
            location,
            expected: Expected::default(),
            object: None,
        }];
        let mut got = self
            .fetch_segment(checkpoint, &location.segment, &wanted)
            .await?;
        match got.pop() {
            Some(Ok((_, state))) => Ok(state),
            Some(Err(damage)) => Err(self.damaged(damage)),
            // `fetch_segment` returns one result per wanted entry.
            None => Err(Error::InvalidInput("no entry was read".into())),
        }
    }

    /// Reads every object's state of a manifest, checked, in object id order. Entries are
    /// fetched with one coalesced ranged read per segment, several segments at once.
    pub async fn read_states(&self, manifest: &Manifest) -> Result<Vec<(ObjectId, EncodedState)>> {
        self.read_states_of(manifest, |_| true).await
    }

    /// [`read_states`](Self::read_states) of the objects `wanted` picks (a node reads those it
    /// hosts).
    pub async fn read_states_of(
        &self,
        manifest: &Manifest,
        wanted: impl Fn(&ObjectId) -> bool,
    ) -> Result<Vec<(ObjectId, EncodedState)>> {
        let wanted: Vec<Wanted<'_>> = manifest
            .objects
            .iter()
            .filter(|(object, _)| wanted(object))
            .map(|(object, e)| Wanted {
                location: &e.location,
                expected: Expected {
                    object: Some(object),
                    type_name: Some(&e.type_name),
                    version: Some(e.version),
                },
                object: Some(object),
            })
            .collect();
        let results = self.fetch_all(manifest.id, &wanted).await?;
        let mut states = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(state) => states.push(state),
                Err(damage) => return Err(self.read_failed(manifest.id, damage).await),
            }
        }
        Ok(states)
    }

    /// Reads the recorded in-transit messages of a manifest, checked, in manifest order.
    pub async fn read_in_transit(
        &self,
        manifest: &Manifest,
    ) -> Result<Vec<(InTransitEntry, EncodedState)>> {
        self.read_in_transit_to(manifest, |_| true).await
    }

    /// [`read_in_transit`](Self::read_in_transit) of the messages to the receivers `wanted`
    /// picks.
    pub async fn read_in_transit_to(
        &self,
        manifest: &Manifest,
        wanted: impl Fn(&ObjectId) -> bool,
    ) -> Result<Vec<(InTransitEntry, EncodedState)>> {
        let messages: Vec<&InTransitEntry> = manifest
            .in_transit
            .iter()
            .filter(|m| wanted(&m.to))
            .collect();
        let wanted: Vec<Wanted<'_>> = messages
            .iter()
            .map(|m| Wanted {
                location: &m.location,
                expected: Expected {
                    object: Some(&m.to),
                    ..Expected::default()
                },
                object: Some(&m.to),
            })
            .collect();
        let results = self.fetch_all(manifest.id, &wanted).await?;
        let mut read = Vec::with_capacity(results.len());
        for (m, result) in messages.into_iter().zip(results) {
            match result {
                Ok((_, state)) => read.push((m.clone(), state)),
                Err(damage) => return Err(self.read_failed(manifest.id, damage).await),
            }
        }
        Ok(read)
    }

    /// The error of a read of checkpoint `id` that found `damage`. A blob missing because GC
    /// collected the checkpoint after its manifest was read (GC tombstones the manifest before
    /// it deletes blobs) is that: [`Error::NotFound`], not damage.
    async fn read_failed(&self, id: CheckpointId, damage: Damage) -> Error {
        if matches!(damage.kind, DamageKind::Missing) && self.collected(id).await {
            return Error::NotFound {
                what: format!("checkpoint {id} (expired by GC while it was being read)"),
                url: self.inner.url.clone(),
            };
        }
        self.damaged(damage)
    }

    /// [`damaged`](Self::damaged), for other modules of this crate.
    pub(crate) fn inner_damaged(&self, damage: Damage) -> Error {
        self.damaged(damage)
    }

    /// Reads blob `key` whole.
    pub(crate) async fn get_raw(&self, key: &str) -> Result<Bytes> {
        self.inner.get(key).await
    }

    /// Writes blob `key`; `create_only` refuses to replace an existing one
    /// ([`Error::Conflict`]). Durable on return (on local disk, when the store fsyncs).
    pub(crate) async fn put_raw(&self, key: &str, bytes: Vec<u8>, create_only: bool) -> Result<()> {
        self.check_writable("write")?;
        let mode = if create_only {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        match self
            .inner
            .store
            .put_opts(&self.inner.path(key), PutPayload::from(bytes), mode.into())
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict {
                id: CheckpointId::ZERO,
                reason: format!("{key} exists already"),
                url: self.inner.url.clone(),
            }),
            Err(e) => Err(self.inner.map_err(format!("write {key}"), e)),
        }
    }

    /// The file behind blob `key` and whether writes must be synced, for a store on local
    /// disk opened from a path (`None` for other stores).
    pub(crate) fn local_file(&self, key: &str) -> Option<(std::path::PathBuf, bool)> {
        self.inner
            .local
            .as_ref()
            .map(|l| (l.file(&self.inner.path(key)), l.fsync()))
    }

    /// Cuts blob `key` to its first `len` bytes (a cut-off append at its end).
    pub(crate) async fn truncate_blob(&self, key: &str, len: u64) -> Result<()> {
        self.check_writable("truncate")?;
        if let Some((file, fsync)) = self.local_file(key) {
            let cut = || -> std::io::Result<()> {
                let f = std::fs::OpenOptions::new().write(true).open(&file)?;
                f.set_len(len)?;
                if fsync {
                    f.sync_data()?;
                }
                Ok(())
            };
            return cut().map_err(|e| {
                self.inner
                    .map_err(format!("truncate {key}"), local::store_error(e, &file))
            });
        }
        let bytes = self.get_raw(key).await?;
        let keep = usize::try_from(len).unwrap_or(usize::MAX).min(bytes.len());
        self.put_raw(key, bytes[..keep].to_vec(), false).await
    }

    /// The keys under `dir`, sorted.
    pub(crate) async fn list_keys(&self, dir: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .inner
            .list(dir)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// Deletes blobs; one already gone is fine.
    pub(crate) async fn delete_keys(&self, keys: impl Iterator<Item = String>) -> Result<()> {
        self.check_writable("delete")?;
        self.inner.delete_all(keys).await
    }

    /// The error of a read that found `damage`: [`Error::FutureFormat`] for a blob of a newer
    /// format, else [`Error::Damaged`].
    pub(crate) fn damaged(&self, damage: Damage) -> Error {
        let url = self.inner.url.clone();
        match damage.kind {
            DamageKind::FutureFormat { found, supported } => Error::FutureFormat {
                blob: damage.blob,
                found,
                supported,
                url,
            },
            _ => Error::Damaged {
                damage: Box::new(damage),
                url,
            },
        }
    }

    /// Verifies every blob checkpoint `id` references.
    pub async fn verify(&self, id: CheckpointId) -> Result<VerifyReport> {
        Ok(self.verify_inner(id).await?.1)
    }

    /// Verifies every committed checkpoint, oldest first. A checkpoint a running GC collects
    /// while this runs (listed, then gone) is left out, not reported damaged.
    pub async fn verify_all(&self) -> Result<Vec<VerifyReport>> {
        self.verify_all_with_progress(|_| {}).await
    }

    /// [`verify_all`](Self::verify_all), calling `progress` after each checkpoint.
    pub async fn verify_all_with_progress(
        &self,
        mut progress: impl FnMut(VerifyProgress) + Send,
    ) -> Result<Vec<VerifyReport>> {
        let ids = self.committed_ids().await?;
        let total = ids.len();
        let mut out = Vec::with_capacity(total);
        for (i, id) in ids.into_iter().enumerate() {
            match self.verify_inner(id).await {
                // Collected since it was listed (its manifest is a tombstone now, or gone).
                Err(Error::NotFound { .. }) => {}
                // GC tombstones before it deletes blobs: damage found in a checkpoint that is
                // gone now is its collection, seen half way.
                Ok((_, report)) if !report.is_ok() && self.collected(id).await => {}
                Ok((_, report)) => out.push(report),
                Err(e) => return Err(e),
            }
            progress(VerifyProgress {
                checkpoint: id,
                done: i + 1,
                total,
            });
        }
        Ok(out)
    }

    /// Whether checkpoint `id` is no longer committed (GC tombstoned or removed it).
    async fn collected(&self, id: CheckpointId) -> bool {
        matches!(self.read_stored(id).await, Err(Error::NotFound { .. }))
    }

    /// Verifies checkpoint `id`; also returns its manifest when that could be read.
    pub(crate) async fn verify_inner(
        &self,
        id: CheckpointId,
    ) -> Result<(Option<Manifest>, VerifyReport)> {
        let mut report = VerifyReport {
            checkpoint: id,
            entries: 0,
            bytes: 0,
            damaged: Vec::new(),
        };
        let Some(manifest) = self.manifest_for_check(id, &mut report).await? else {
            return Ok((None, report));
        };
        let wanted: Vec<Wanted<'_>> = manifest
            .objects
            .iter()
            .map(|(object, e)| Wanted {
                location: &e.location,
                expected: Expected {
                    object: Some(object),
                    type_name: Some(&e.type_name),
                    version: Some(e.version),
                },
                object: Some(object),
            })
            .chain(manifest.in_transit.iter().map(|m| Wanted {
                location: &m.location,
                expected: Expected {
                    object: Some(&m.to),
                    ..Expected::default()
                },
                object: Some(&m.to),
            }))
            .collect();
        report.entries = wanted.len();
        report.bytes = manifest.referenced_bytes();
        for r in self.fetch_all(id, &wanted).await? {
            if let Err(d) = r {
                report.damaged.push(d);
            }
        }
        drop(wanted);
        Ok((Some(manifest), report))
    }

    /// Reads and checks checkpoint `id`'s manifest (and a delta's base, from the store) for a
    /// check: `None` with what is wrong in `report` when it is damaged or of a newer format.
    async fn manifest_for_check(
        &self,
        id: CheckpointId,
        report: &mut VerifyReport,
    ) -> Result<Option<Manifest>> {
        // A delta's base is read from the store, not the cache: this checks the stored bytes.
        let read = match self.read_stored(id).await {
            Ok((stored, _)) => self.resolve_stored(stored, true).await,
            Err(e) => Err(e),
        };
        let manifest = match read {
            Ok(m) => m,
            Err(Error::Damaged { damage, .. }) => {
                report.damaged.push(*damage);
                return Ok(None);
            }
            // The manifest's, or a delta's base's (named by `blob`).
            Err(Error::FutureFormat {
                blob,
                found,
                supported,
                ..
            }) => {
                report.damaged.push(Damage {
                    checkpoint: id,
                    object: None,
                    blob,
                    kind: DamageKind::FutureFormat { found, supported },
                });
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(Some(manifest))
    }

    /// Checks checkpoint `id` as [`recovery_line_referenced`](Self::recovery_line_referenced)
    /// does: its manifest, and each segment it references (present, long enough, its header).
    async fn verify_referenced(
        &self,
        id: CheckpointId,
    ) -> Result<(Option<Manifest>, VerifyReport)> {
        let mut report = VerifyReport {
            checkpoint: id,
            entries: 0,
            bytes: 0,
            damaged: Vec::new(),
        };
        let Some(manifest) = self.manifest_for_check(id, &mut report).await? else {
            return Ok((None, report));
        };
        // Each segment: the furthest end an entry needs, and an object to name in a report.
        let mut segments: std::collections::BTreeMap<&str, (u64, &ObjectId)> = Default::default();
        let locations = manifest
            .objects
            .iter()
            .map(|(o, e)| (o, &e.location))
            .chain(manifest.in_transit.iter().map(|m| (&m.to, &m.location)));
        for (object, location) in locations {
            report.entries += 1;
            let end = location.range().end;
            let slot = segments.entry(&*location.segment).or_insert((end, object));
            slot.0 = slot.0.max(end);
        }
        report.bytes = manifest.referenced_bytes();
        let concurrency = self.inner.options.read_concurrency.max(1);
        // Owned items: see `fetch_all` on borrowed stream items and `Send`.
        let segments: Vec<(String, u64, ObjectId)> = segments
            .into_iter()
            .map(|(segment, (end, object))| (segment.to_owned(), end, object.clone()))
            .collect();
        let checked: Vec<Option<Damage>> = futures::stream::iter(segments)
            .map(|(segment, end, object)| async move {
                let kind = self.check_referenced_segment(&segment, end).await?;
                Ok::<_, Error>(kind.map(|kind| Damage {
                    checkpoint: id,
                    object: Some(object),
                    blob: segment,
                    kind,
                }))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        report.damaged.extend(checked.into_iter().flatten());
        report.damaged.sort_by(|a, b| a.blob.cmp(&b.blob));
        Ok((Some(manifest), report))
    }

    /// What is wrong with `segment` for entries ending at `end`, without reading them: missing,
    /// shorter than that, or headed for another checkpoint.
    async fn check_referenced_segment(
        &self,
        segment: &str,
        end: u64,
    ) -> Result<Option<DamageKind>> {
        let Some(seg) = keys::parse_segment(segment) else {
            return Ok(Some(DamageKind::HeaderMismatch(
                "the manifest names a blob outside the segment layout".into(),
            )));
        };
        let path = self.inner.path(segment);
        let header_len = format::SEGMENT_HEADER_LEN as u64;
        let size = match self.inner.store.head(&path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(Some(DamageKind::Missing)),
            Err(e) => return Err(self.inner.map_err(format!("head {segment}"), e)),
        };
        let needed = end.max(header_len);
        if size < needed {
            return Ok(Some(DamageKind::Truncated {
                needed,
                actual: size,
            }));
        }
        let header = match self.inner.store.get_range(&path, 0..header_len).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Ok(Some(DamageKind::Missing)),
            Err(e) => return Err(self.inner.map_err(format!("read {segment}"), e)),
        };
        Ok(format::check_segment_header(&header, seg.checkpoint).err())
    }

    /// Fetches and checks `wanted`, segment by segment, several segments at once; one result per
    /// wanted entry, in order.
    async fn fetch_all(
        &self,
        checkpoint: CheckpointId,
        wanted: &[Wanted<'_>],
    ) -> Result<Vec<EntryResult>> {
        let mut by_segment: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, w) in wanted.iter().enumerate() {
            by_segment.entry(&w.location.segment).or_default().push(i);
        }
        // The stream's items are owned index lists, its segment key is looked up inside: a
        // closure taking a borrowed item (`(&str, _)`) makes every future holding this stream
        // fail rustc's higher-ranked `Send` check (rust-lang/rust#102211), so that callers
        // could not `tokio::spawn` a read.
        let groups: Vec<Vec<usize>> = by_segment.into_values().collect();
        let concurrency = self.inner.options.read_concurrency.max(1);
        let fetched: Vec<(Vec<usize>, Vec<EntryResult>)> = futures::stream::iter(groups)
            .map(|idx| async move {
                let group: Vec<Wanted<'_>> = idx.iter().map(|&i| wanted[i]).collect();
                // Every group holds at least one index, each of an entry of `wanted`.
                let Some(first) = group.first() else {
                    return Ok((idx, Vec::new()));
                };
                let segment = &*first.location.segment;
                let got = self.fetch_segment(checkpoint, segment, &group).await?;
                Ok::<_, Error>((idx, got))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let mut out: Vec<Option<EntryResult>> = (0..wanted.len()).map(|_| None).collect();
        for (idx, got) in fetched {
            for (i, r) in idx.into_iter().zip(got) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .zip(wanted)
            .map(|(r, w)| {
                // Every index belongs to exactly one segment group, so each slot is filled.
                r.unwrap_or_else(|| {
                    Err(Damage {
                        checkpoint,
                        object: w.object.cloned(),
                        blob: w.location.segment.to_string(),
                        kind: DamageKind::Missing,
                    })
                })
            })
            .collect())
    }

    /// Fetches the entries of one segment with one coalesced ranged read, after checking the
    /// segment's length and header. Store errors other than "not found" abort.
    async fn fetch_segment(
        &self,
        checkpoint: CheckpointId,
        segment: &str,
        wanted: &[Wanted<'_>],
    ) -> Result<Vec<EntryResult>> {
        let damage = |w: &Wanted<'_>, kind: DamageKind| Damage {
            checkpoint,
            object: w.object.cloned(),
            blob: segment.to_owned(),
            kind,
        };
        let all = |kind: DamageKind| {
            Ok(wanted
                .iter()
                .map(|w| Err(damage(w, kind.clone())))
                .collect())
        };
        let Some(seg) = keys::parse_segment(segment) else {
            return all(DamageKind::HeaderMismatch(
                "the manifest names a blob outside the segment layout".into(),
            ));
        };
        let path = self.inner.path(segment);
        let header_len = format::SEGMENT_HEADER_LEN as u64;
        // Local disk: one sequential read of the segment, crcs computed on the blocking thread.
        let local_read = match &self.inner.local {
            Some(disk) => {
                let file = disk.file(&path);
                let entries: Vec<_> = wanted.iter().map(|w| w.location.range()).collect();
                let read = tokio::task::spawn_blocking(move || {
                    local::read_segment(&file, header_len, &entries)
                        .map_err(|e| local::store_error(e, &file))
                })
                .await
                .map_err(|e| {
                    Error::InvalidInput(format!("the read of {segment} did not finish: {e}"))
                })?;
                match read {
                    Ok(r) => Some(r),
                    Err(object_store::Error::NotFound { .. }) => return all(DamageKind::Missing),
                    Err(e) => return Err(self.inner.map_err(format!("read {segment}"), e)),
                }
            }
            None => None,
        };
        let size = match &local_read {
            Some(r) => r.size,
            None => match self.inner.store.head(&path).await {
                Ok(meta) => meta.size,
                Err(object_store::Error::NotFound { .. }) => return all(DamageKind::Missing),
                Err(e) => return Err(self.inner.map_err(format!("head {segment}"), e)),
            },
        };
        if size < header_len {
            return all(DamageKind::Truncated {
                needed: header_len,
                actual: size,
            });
        }
        let mut ranges = Vec::with_capacity(wanted.len() + 1);
        ranges.push(0..header_len);
        let mut slots = Vec::with_capacity(wanted.len());
        // The precomputed crc of each range (none for the header).
        let mut crcs = vec![None];
        for (k, w) in wanted.iter().enumerate() {
            let r = w.location.range();
            if w.location.offset < header_len || w.location.len < 4 {
                slots.push(Err(DamageKind::HeaderMismatch(format!(
                    "the manifest locates the entry at {}..{}, which is not an entry",
                    r.start, r.end
                ))));
            } else if r.end > size {
                slots.push(Err(DamageKind::Truncated {
                    needed: r.end,
                    actual: size,
                }));
            } else {
                slots.push(Ok(ranges.len()));
                crcs.push(
                    local_read
                        .as_ref()
                        .and_then(|l| l.crcs.get(k).copied().flatten()),
                );
                ranges.push(r);
            }
        }
        let bytes = match &local_read {
            // Every range ends within the file, and the span reaches the end of the last one
            // (or the file's end), so these slices are in bounds; `get` keeps it so if not.
            Some(l) => ranges
                .iter()
                .map(|r| {
                    let r = usize::try_from(r.start).unwrap_or(usize::MAX)
                        ..usize::try_from(r.end).unwrap_or(usize::MAX);
                    if l.span.get(r.clone()).is_some() {
                        l.span.slice(r)
                    } else {
                        Bytes::new()
                    }
                })
                .collect(),
            None => match self.inner.store.get_ranges(&path, &ranges).await {
                Ok(b) => b,
                Err(object_store::Error::NotFound { .. }) => return all(DamageKind::Missing),
                Err(e) => return Err(self.inner.map_err(format!("read {segment}"), e)),
            },
        };
        let header = bytes.first().cloned().unwrap_or_default();
        if let Err(kind) = format::check_segment_header(&header, seg.checkpoint) {
            return all(kind);
        }
        Ok(wanted
            .iter()
            .zip(slots)
            .map(|(w, slot)| {
                let i = slot.map_err(|k| damage(w, k))?;
                let b: &Bytes = bytes.get(i).ok_or_else(|| damage(w, DamageKind::Missing))?;
                if b.len() as u64 != w.location.len {
                    return Err(damage(
                        w,
                        DamageKind::Truncated {
                            needed: w.location.range().end,
                            actual: w.location.offset.saturating_add(b.len() as u64),
                        },
                    ));
                }
                let computed = crcs.get(i).copied().flatten();
                format::decode_entry(b, w.location.crc, computed, w.expected)
                    .map_err(|k| damage(w, k))
            })
            .collect())
    }
}

/// The settings that name an S3 endpoint: as `StoreOptions::config` keys, and as variables.
const ENDPOINT_KEYS: [&str; 3] = ["aws_endpoint_url_s3", "aws_endpoint_url", "aws_endpoint"];
const ENDPOINT_VARS: [&str; 3] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"];

/// Checks every S3 endpoint setting given (in `config`, else in the environment): an absolute
/// `http` or `https` URL with a host. object_store takes any text there and panics on the
/// first request to one it cannot parse.
fn check_endpoints(config: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    let given = ENDPOINT_KEYS
        .iter()
        .filter_map(|k| {
            config
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| (format!("StoreOptions::config {k}"), v.clone()))
        })
        .chain(ENDPOINT_VARS.iter().filter_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| ((*k).to_owned(), v))
        }));
    for (name, value) in given {
        let shown: String = value.escape_debug().take(80).collect();
        let bad = |why: String| {
            format!(
                "{name} is \"{shown}\", which is not an endpoint URL ({why}); set it to the S3 endpoint's URL, such as http://127.0.0.1:9000 or https://s3.eu-west-1.amazonaws.com"
            )
        };
        let url = Url::parse(&value).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "the scheme is {:?}, not http or https",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no host".into()));
        }
    }
    Ok(())
}

/// Whether `kind` says a newer cohort wrote the blob.
fn is_future(kind: &DamageKind) -> bool {
    matches!(kind, DamageKind::FutureFormat { .. })
}

/// One checked entry, or what is wrong with it.
type EntryResult = std::result::Result<(ObjectId, EncodedState), Damage>;

/// One entry a reader wants, and what it must hold.
#[derive(Clone, Copy)]
struct Wanted<'a> {
    location: &'a EntryLocation,
    expected: Expected<'a>,
    object: Option<&'a ObjectId>,
}

/// Rules a manifest must follow beyond its types: tokens and segment keys in the layout.
pub(crate) fn validate_manifest(m: &Manifest) -> Result<()> {
    validate_parts(m.id, &m.round, m.locations())
}

/// [`validate_manifest`] on the parts of one: its id, round token and entry locations (a
/// delta's own entries, when its base's were checked as the base was read).
pub(crate) fn validate_parts<'a>(
    id: CheckpointId,
    round: &str,
    locations: impl Iterator<Item = &'a EntryLocation>,
) -> Result<()> {
    if id == CheckpointId::ZERO {
        return Err(Error::InvalidInput(
            "checkpoint id 0 is never used; ids start at 1".into(),
        ));
    }
    keys::validate_token("round", round)?;
    // Entries of one segment are mostly adjacent: each key is parsed once per run of them.
    let mut checked: Option<&str> = None;
    let mut total = 0u64;
    for loc in locations {
        if checked != Some(&*loc.segment) && keys::parse_segment(&loc.segment).is_none() {
            return Err(Error::InvalidInput(format!(
                "manifest of checkpoint {id} references {:?}, which is not a segment key of the store layout",
                loc.segment
            )));
        }
        if loc.offset < format::SEGMENT_HEADER_LEN as u64
            || loc.len < 4
            || loc.offset.checked_add(loc.len).is_none()
        {
            return Err(Error::InvalidInput(format!(
                "manifest of checkpoint {id} locates an entry at offset {} length {} in {}, which cannot hold an entry",
                loc.offset, loc.len, loc.segment
            )));
        }
        total = total.checked_add(loc.len).ok_or_else(|| too_large(id))?;
        checked = Some(&*loc.segment);
    }
    Ok(())
}

/// Checks that the entries of a whole (resolved) manifest add up to a byte count: lengths a
/// store or peer supplied are summed with checked arithmetic, and a manifest whose entries
/// overflow a u64 (crafted: no store holds 16 EiB) is refused rather than reported with a
/// wrapped size.
pub(crate) fn validate_total<'a>(
    id: CheckpointId,
    mut locations: impl Iterator<Item = &'a EntryLocation>,
) -> Result<()> {
    locations
        .try_fold(0u64, |total, loc| total.checked_add(loc.len))
        .map(|_| ())
        .ok_or_else(|| too_large(id))
}

fn too_large(id: CheckpointId) -> Error {
    Error::InvalidInput(format!(
        "the entries of the manifest of checkpoint {id} add up to more than 2^64 bytes"
    ))
}

impl Inner {
    /// The first bytes of manifest `id`, up to its format version: enough to tell a whole
    /// manifest from a delta, or one of a newer format, without reading a large body.
    pub(crate) async fn manifest_header(&self, id: CheckpointId) -> object_store::Result<Bytes> {
        let head = 0..format::MANIFEST_VERSION_END as u64;
        self.store
            .get_range(&self.path(&keys::manifest(id)), head)
            .await
    }

    /// The full path of a key relative to the prefix. Keys are built from validated parts.
    pub(crate) fn path(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The key relative to the prefix of a listed path.
    pub(crate) fn relative(&self, path: &Path) -> Option<String> {
        let p = path.as_ref();
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            return Some(p.to_owned());
        }
        p.strip_prefix(prefix)?.strip_prefix('/').map(str::to_owned)
    }

    /// Maps an object store error to ours, naming the operation.
    pub(crate) fn map_err(&self, operation: String, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound {
                what: operation,
                url: self.url.clone(),
            },
            object_store::Error::Generic { .. } if self.remote => Error::Unavailable {
                operation,
                endpoint: self.endpoint.clone(),
                source: e,
            },
            e => Error::Store {
                operation,
                url: self.url.clone(),
                source: e,
            },
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let got = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.map_err(format!("read {key}"), e))?;
        got.bytes()
            .await
            .map_err(|e| self.map_err(format!("read {key}"), e))
    }

    /// Lists every key under `dir` with its size.
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(dir);
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&path))
            .try_collect()
            .await
            .map_err(|e| self.map_err(format!("list {dir}/"), e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| Some((self.relative(&m.location)?, m.size)))
            .collect())
    }

    /// The keys under `dir` that `parse` accepts (given each key and its size), parsed and
    /// sorted ascending.
    pub(crate) async fn list_parsed<T: Ord>(
        &self,
        dir: &str,
        parse: impl Fn(&str, u64) -> Option<T>,
    ) -> Result<Vec<T>> {
        let mut out: Vec<T> = self
            .list(dir)
            .await?
            .into_iter()
            .filter_map(|(key, size)| parse(&key, size))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The blobs under `segments/<below>` (`below` empty or `<id>/<round>`) that are cohort's
    /// own ([`keys::parse_segment_blob`]: segments, and on local disk the staging files of
    /// crashed writes), with their sizes. Nothing else is listed, so nothing else is ever
    /// deleted. On local disk no symbolic link below `segments/` is followed: object_store's
    /// listing follows them, and GC then deleted files outside the store.
    pub(crate) async fn list_segment_blobs(&self, below: &str) -> Result<Vec<(String, u64)>> {
        let dir = if below.is_empty() {
            keys::SEGMENTS.to_owned()
        } else {
            format!("{}/{below}", keys::SEGMENTS)
        };
        let listed = match &self.local {
            None => self.list(&dir).await?,
            Some(disk) => {
                let top = disk.file(&self.path(keys::SEGMENTS));
                let below = below.to_owned();
                let walked = tokio::task::spawn_blocking(move || {
                    local::list_files(&top, &below).map_err(|e| local::store_error(e, &top))
                })
                .await
                .map_err(|e| {
                    Error::InvalidInput(format!("the listing of {dir}/ did not finish: {e}"))
                })?
                .map_err(|e| self.map_err(format!("list {dir}/"), e))?;
                for link in &walked.links {
                    tracing::warn!(store = %self.url, link = %format!("{}/{link}", keys::SEGMENTS), "a symbolic link in the segment folders: not followed, and left alone with what it points to");
                }
                walked
                    .files
                    .into_iter()
                    .map(|(relative, size)| (format!("{}/{relative}", keys::SEGMENTS), size))
                    .collect()
            }
        };
        Ok(listed
            .into_iter()
            .filter(|(key, _)| keys::parse_segment_blob(key).is_some())
            .collect())
    }

    /// Deletes blobs [`list_segment_blobs`](Self::list_segment_blobs) listed. Staging files
    /// (local disk only) are named in a way object_store's paths cannot express, so they are
    /// removed directly.
    pub(crate) async fn delete_segment_blobs(&self, keys: &[String]) -> Result<()> {
        let (staging, segments): (Vec<&String>, Vec<&String>) =
            keys.iter().partition(|k| k.contains('#'));
        self.delete_all(segments.into_iter().cloned()).await?;
        let Some(disk) = &self.local else {
            return Ok(());
        };
        for key in staging {
            let (segment, n) = key.rsplit_once('#').unwrap_or((key, ""));
            let mut file = disk.file(&self.path(segment)).into_os_string();
            file.push(format!("#{n}"));
            let file = std::path::PathBuf::from(file);
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self.map_err(format!("delete {key}"), local::store_error(e, &file)));
                }
            }
        }
        Ok(())
    }

    /// Deletes keys; a key that is already gone is fine.
    pub(crate) async fn delete_all(&self, keys: impl Iterator<Item = String>) -> Result<()> {
        let paths: Vec<(String, Path)> = keys
            .map(|k| {
                let path = self.path(&k);
                (k, path)
            })
            .collect();
        futures::stream::iter(paths)
            .map(|(key, path)| async move {
                match self.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.map_err(format!("delete {key}"), e)),
                }
            })
            .buffer_unordered(self.options.upload_concurrency.max(1) * 2)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}
