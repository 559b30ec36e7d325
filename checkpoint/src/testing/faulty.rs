//! [`FaultyStore`]: an [`ObjectStore`] wrapper that fails chosen operations, modelled on
//! slatedb's `slatedb-dst` failing object store, but deterministic: a fault fires on the nth
//! matching call or for keys that match a predicate, never at random.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    UploadPart,
};
use tokio::sync::{Notify, watch};

/// The operations a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// `put_opts` with `PutMode::Overwrite` (segments, pins, tombstones).
    Put,
    /// `put_opts` with `PutMode::Create` (manifests, epochs, the probe).
    PutCreate,
    /// `get_opts` (not head), `get_range`, `get_ranges`.
    Get,
    /// `head`.
    Head,
    /// `list`, `list_with_offset`, `list_with_delimiter`.
    List,
    /// Deletes.
    Delete,
    /// Completing a multipart upload (the moment its object appears).
    Multipart,
    /// Copies and renames.
    Copy,
}

/// What happens when a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail before the operation happens, with a generic (connection-like) error.
    Error,
    /// Never return: the process "crashes" in the middle of the request. Nothing is written.
    /// The caller sees a future that stays pending; drop it (abort the task) to model the crash.
    /// [`FaultyStore::wait_for_hang`] tells when it happened.
    Hang,
    /// Perform the operation, then fail: the write happened but its response was lost.
    ErrorAfterWrite,
    /// Perform the operation, then never return: a crash right after the write landed.
    HangAfterWrite,
}

type KeyPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How long each call waits before it reaches the wrapped store (see
/// [`FaultyStore::set_latency`]).
pub type Latency = Arc<dyn Fn(Op) -> Duration + Send + Sync>;

/// When a fault fires, and what it does. Build with [`FaultRule::on`].
#[derive(Clone)]
pub struct FaultRule {
    ops: Vec<Op>,
    key: Option<KeyPredicate>,
    nth: Option<usize>,
    times: Option<usize>,
    fault: Fault,
}

impl fmt::Debug for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultRule")
            .field("ops", &self.ops)
            .field("key", &self.key.as_ref().map(|_| "<predicate>"))
            .field("nth", &self.nth)
            .field("times", &self.times)
            .field("fault", &self.fault)
            .finish()
    }
}

impl FaultRule {
    /// A rule for `op` that fails every matching call with [`Fault::Error`]; narrow it with
    /// the other methods.
    pub fn on(op: Op) -> Self {
        Self {
            ops: vec![op],
            key: None,
            nth: None,
            times: None,
            fault: Fault::Error,
        }
    }

    /// Also match `op`.
    pub fn or(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Only calls whose key (the full path in the wrapped store) satisfies `predicate`.
    pub fn when_key(mut self, predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(predicate));
        self
    }

    /// Only calls whose key contains `part`.
    pub fn key_contains(self, part: impl Into<String>) -> Self {
        let part = part.into();
        self.when_key(move |k| k.contains(&part))
    }

    /// Fire on the `n`th matching call only (1-based).
    pub fn nth(mut self, n: usize) -> Self {
        self.nth = Some(n);
        self
    }

    /// Fire at most `n` times (from the first matching call, or from the `nth`).
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// What to do when the rule fires.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }
}

struct RuleState {
    rule: FaultRule,
    seen: usize,
    fired: usize,
}

impl RuleState {
    /// Counts a call; returns the fault if the rule fires for it.
    fn check(&mut self, op: Op, key: &str) -> Option<Fault> {
        if !self.rule.ops.contains(&op) {
            return None;
        }
        if let Some(p) = &self.rule.key
            && !p(key)
        {
            return None;
        }
        self.seen += 1;
        if let Some(n) = self.rule.nth
            && self.seen < n
        {
            return None;
        }
        let limit = self.rule.times.unwrap_or(if self.rule.nth.is_some() {
            1
        } else {
            usize::MAX
        });
        if self.fired >= limit {
            return None;
        }
        self.fired += 1;
        Some(self.rule.fault)
    }
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<RuleState>>,
    calls: Mutex<std::collections::HashMap<Op, usize>>,
    hangs: AtomicUsize,
    hang_notify: Notify,
    ignore_create: std::sync::atomic::AtomicBool,
    latency: Mutex<Option<Latency>>,
    paused: watch::Sender<bool>,
}

/// An [`ObjectStore`] that forwards to another and injects the faults of its rules.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use cohort_checkpoint::testing::{Fault, FaultRule, FaultyStore, Op};
/// use cohort_checkpoint::{CheckpointStore, StoreOptions};
///
/// let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
/// // The manifest create lands, but its response is lost.
/// faulty.inject(FaultRule::on(Op::PutCreate).key_contains("manifests/").fault(Fault::ErrorAfterWrite).times(1));
/// let store = CheckpointStore::from_object_store(Arc::new(faulty.clone()), Default::default(), StoreOptions::default());
/// # });
/// ```
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
}

impl FaultyStore {
    /// Wraps `inner`, with no rules yet.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            shared: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Adds a rule; rules are checked in the order they were added, and the first that fires
    /// wins.
    pub fn inject(&self, rule: FaultRule) {
        self.lock_rules().push(RuleState {
            rule,
            seen: 0,
            fired: 0,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock_rules().clear();
    }

    /// Makes `PutMode::Create` behave like an overwrite, as S3-compatible servers that ignore
    /// `If-None-Match` do.
    pub fn ignore_create_if_absent(&self, ignore: bool) {
        self.shared.ignore_create.store(ignore, Ordering::SeqCst);
    }

    /// Delays every call by what `latency` says for its operation, on tokio's clock (a
    /// simulation's clock under a simulator); `None` removes the delay. The delay comes after
    /// the rules are checked, before the wrapped store is called.
    pub fn set_latency(&self, latency: Option<Latency>) {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = latency;
    }

    /// Pauses the caller as a stopped process is paused: calls wait before they reach the
    /// wrapped store, and calls under way wait before they return (a write may land, its
    /// answer waits), until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Lets paused calls go on.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Waits while paused, then for the latency of `op`.
    async fn gate(&self, op: Op) {
        self.wait_resumed().await;
        let latency = self
            .shared
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(delay) = latency.map(|l| l(op)).filter(|d| !d.is_zero()) {
            tokio::time::sleep(delay).await;
        }
    }

    async fn wait_resumed(&self) {
        let mut paused = self.shared.paused.subscribe();
        // The sender lives in `shared`, as long as `self`.
        let _ = paused.wait_for(|p| !*p).await;
    }

    /// How many calls of `op` were made so far (faulted ones included).
    pub fn calls(&self, op: Op) -> usize {
        *self
            .shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&op)
            .unwrap_or(&0)
    }

    /// How many [`Fault::Hang`] or [`Fault::HangAfterWrite`] faults fired so far.
    pub fn hangs(&self) -> usize {
        self.shared.hangs.load(Ordering::SeqCst)
    }

    /// Resolves once at least `n` hang faults have fired.
    pub async fn wait_for_hang(&self, n: usize) {
        loop {
            let notified = self.shared.hang_notify.notified();
            if self.hangs() >= n {
                return;
            }
            notified.await;
        }
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, Vec<RuleState>> {
        // A panicking test thread must not hide the rules from the others.
        self.shared
            .rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, op: Op, key: &Path) -> Option<Fault> {
        *self
            .shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(op)
            .or_default() += 1;
        let key = key.as_ref();
        self.lock_rules().iter_mut().find_map(|r| r.check(op, key))
    }

    async fn hang(&self) -> ! {
        self.shared.hangs.fetch_add(1, Ordering::SeqCst);
        self.shared.hang_notify.notify_waiters();
        futures::future::pending::<()>().await;
        unreachable!("pending() never completes")
    }

    /// Runs `f` under the faults for (`op`, `key`).
    async fn run<T, F>(&self, op: Op, key: &Path, f: F) -> object_store::Result<T>
    where
        F: Future<Output = object_store::Result<T>>,
    {
        let fault = self.check(op, key);
        self.gate(op).await;
        let result = match fault {
            None => f.await,
            Some(Fault::Error) => Err(injected(op, key, false)),
            Some(Fault::Hang) => self.hang().await,
            Some(Fault::ErrorAfterWrite) => {
                f.await?;
                Err(injected(op, key, true))
            }
            Some(Fault::HangAfterWrite) => {
                let _ = f.await;
                self.hang().await
            }
        };
        self.wait_resumed().await;
        result
    }
}

/// The error an injected fault returns.
#[derive(Debug, thiserror::Error)]
#[error("injected fault: {op:?} of {key} failed{}", if *.after_write { " after the write happened (lost response)" } else { "" })]
pub struct InjectedFault {
    /// The operation.
    pub op: Op,
    /// The key.
    pub key: String,
    /// Whether the operation had happened.
    pub after_write: bool,
}

fn injected(op: Op, key: &Path, after_write: bool) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: Box::new(InjectedFault {
            op,
            key: key.to_string(),
            after_write,
        }),
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let op = match opts.mode {
            PutMode::Create => Op::PutCreate,
            _ => Op::Put,
        };
        if op == Op::PutCreate && self.shared.ignore_create.load(Ordering::SeqCst) {
            opts.mode = PutMode::Overwrite;
        }
        self.run(op, location, self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            store: self.clone(),
            location: location.clone(),
            upload,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        self.run(op, location, self.inner.get_opts(location, options))
            .await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.run(Op::Get, location, self.inner.get_ranges(location, ranges))
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .and_then(move |path| {
                let this = this.clone();
                async move {
                    let inner = Arc::clone(&this.inner);
                    this.run(Op::Delete, &path, async { inner.delete(&path).await })
                        .await?;
                    Ok(path)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.cloned().unwrap_or_default();
        match self.check(Op::List, &key) {
            None => {
                let this = self.clone();
                let prefix = prefix.cloned();
                futures::stream::once(async move {
                    this.gate(Op::List).await;
                    this.inner.list(prefix.as_ref())
                })
                .flatten()
                .boxed()
            }
            Some(Fault::Error | Fault::ErrorAfterWrite) => {
                futures::stream::once(async move { Err(injected(Op::List, &key, false)) }).boxed()
            }
            Some(Fault::Hang | Fault::HangAfterWrite) => {
                let this = self.clone();
                futures::stream::once(async move { this.hang().await }).boxed()
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.cloned().unwrap_or_default();
        self.run(Op::List, &key, self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.run(Op::Copy, to, self.inner.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.run(Op::Copy, to, self.inner.rename_opts(from, to, options))
            .await
    }
}

/// A multipart upload whose completion is subject to [`Op::Multipart`] faults.
#[derive(Debug)]
struct FaultyUpload {
    store: FaultyStore,
    location: Path,
    upload: Box<dyn MultipartUpload>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let store = self.store.clone();
        let location = self.location.clone();
        store
            .run(Op::Multipart, &location, self.upload.complete())
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}
