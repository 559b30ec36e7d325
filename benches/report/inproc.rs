//! Figures of one in-process cohort: `pause_p99`, `coordination_inproc`, `incremental_1pct`,
//! `scale_1m_incremental`, `idle_object_overhead`;
//! and the object and cohort the storage figures checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use cohort::checkpoint::CheckpointStore;
use cohort::coordinator::{Actor, Address, Cohort, Context, Settings};
use cohort::{Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};

use crate::entry::{Entry, Goal, Samples, ms};

/// The type name of [`Blob`]'s state.
pub(crate) const BLOB: &str = "report.Blob";

/// An object whose state is one byte string, captured by reference count (as the capture
/// guidance recommends), optionally with a generation that its "changed" message bumps (mirrored
/// into `seen` for the bench to wait on).
pub(crate) struct Blob {
    pub(crate) data: Bytes,
    generation: Option<u64>,
    seen: Option<Arc<AtomicU64>>,
}

impl Blob {
    /// An object holding `data` that never changes it: referenced by every checkpoint after
    /// its first, not rewritten.
    pub(crate) fn unchanging(data: Bytes) -> Blob {
        Blob {
            data,
            generation: Some(0),
            seen: None,
        }
    }

    /// An object with empty state, before a restore.
    pub(crate) fn empty() -> Blob {
        Blob {
            data: Bytes::new(),
            generation: None,
            seen: None,
        }
    }
}

#[async_trait]
impl Checkpointable for Blob {
    fn type_name(&self) -> &'static str {
        BLOB
    }
    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new(BLOB, 1, self.data.clone()))
    }
    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        self.data = state.decode::<SharedData>()?.0;
        Ok(())
    }
    fn generation(&self) -> Option<u64> {
        self.generation
    }
}

#[async_trait]
impl Actor for Blob {
    /// "Your state changed."
    type Message = ();

    const MESSAGE_DRIVEN: bool = true;

    async fn handle(&mut self, (): (), _: &mut Context<'_>) -> Result<(), ObjectError> {
        if let (Some(g), Some(seen)) = (self.generation.as_mut(), &self.seen) {
            *g += 1;
            seen.store(*g, Ordering::Release);
        }
        Ok(())
    }
}

/// A blob's state as restore reads it: sharing the buffer the store read, as capture shares
/// the object's by reference count (no copy either way).
#[derive(serde::Deserialize)]
struct SharedData(#[serde(with = "cohort::shared_bytes")] Bytes);

/// A cohort of [`Blob`]s on `store`; with `tracked`, each has a generation, returned in order.
pub(crate) struct Blobs {
    pub(crate) cohort: Cohort,
    /// With `tracked`: each blob's address and the generation it reports.
    tracked: Vec<(Address<()>, Arc<AtomicU64>)>,
}

impl Blobs {
    /// Spawns one blob per state of `states` (`blob-0`, `blob-1`, …).
    pub(crate) async fn spawn(
        store: CheckpointStore,
        states: impl IntoIterator<Item = Bytes>,
        tracked: bool,
    ) -> anyhow::Result<Blobs> {
        let cohort = Cohort::builder(store)
            .settings(Settings::default().timeout(Duration::from_secs(600)))
            .build()
            .await
            .context("starting the cohort")?;
        let mut tracked_blobs = Vec::new();
        for (i, data) in states.into_iter().enumerate() {
            let seen = tracked.then(|| Arc::new(AtomicU64::new(0)));
            let blob = Blob {
                data,
                generation: tracked.then_some(0),
                seen: seen.clone(),
            };
            let address = cohort.spawn(ObjectId::indexed("blob", i as u64)?, blob)?;
            if let Some(seen) = seen {
                tracked_blobs.push((address, seen));
            }
        }
        Ok(Blobs {
            cohort,
            tracked: tracked_blobs,
        })
    }

    /// Takes one checkpoint, timed.
    pub(crate) async fn checkpoint(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.cohort.trigger().await.context("a checkpoint failed")?;
        Ok(started.elapsed())
    }

    /// Changes every `stride`-th object, starting at `from`, by a message each, and waits until
    /// they handled it; returns how many.
    async fn touch(&self, from: usize, stride: usize) -> anyhow::Result<usize> {
        let touched: Vec<_> = self.tracked.iter().skip(from).step_by(stride).collect();
        let mut expected = Vec::with_capacity(touched.len());
        for (address, seen) in &touched {
            expected.push(seen.load(Ordering::Acquire) + 1);
            address.tell(()).context("telling a blob it changed")?;
        }
        for ((_, seen), want) in touched.iter().zip(expected) {
            while seen.load(Ordering::Acquire) < want {
                tokio::task::yield_now().await;
            }
        }
        Ok(touched.len())
    }

    /// What the last committed checkpoint wrote: its new segment bytes and its manifest blob
    /// as stored (whole, or a delta of an earlier full manifest).
    async fn last_written(&self) -> anyhow::Result<Written> {
        use object_store::ObjectStoreExt as _;
        let last = self.cohort.metrics().last_checkpoint();
        let last = last.context("no checkpoint committed")?;
        let store = self.cohort.store();
        let key = format!("manifests/{}.manifest", last.id.padded());
        let (objects, _) = store.object_store();
        let manifest = objects
            .head(&store.path_of(&key))
            .await
            .with_context(|| format!("reading the size of {key}"))?;
        let delta_of = store
            .manifest_base(last.id)
            .await
            .with_context(|| format!("reading {key}"))?;
        Ok(Written {
            segments: last.bytes,
            manifest: manifest.size,
            delta_of,
            states: last.written,
        })
    }
}

/// What one checkpoint wrote.
struct Written {
    /// Bytes of new segments.
    segments: u64,
    /// Bytes of the manifest blob.
    manifest: u64,
    /// The base the manifest is a delta of; `None` when it is stored whole.
    delta_of: Option<cohort::CheckpointId>,
    /// States written.
    states: usize,
}

impl Written {
    fn total(&self) -> u64 {
        self.segments + self.manifest
    }

    fn describe(&self) -> String {
        let manifest = match self.delta_of {
            Some(base) => format!("a delta of checkpoint {base}"),
            None => "whole".to_owned(),
        };
        format!(
            "{} B of segments + {} B of manifest ({manifest})",
            self.segments, self.manifest
        )
    }
}

/// `count` states of `size` bytes, each a different deterministic pattern (not zeros).
pub(crate) fn patterned(count: usize, size: usize) -> impl Iterator<Item = Bytes> {
    (0..count).map(move |i| {
        let seed = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..size as u64)
            .map(|j| (seed.wrapping_add(j.wrapping_mul(31)) >> 3) as u8)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// `pause_p99`: how long an object is blocked by a checkpoint (prepare + capture), 10,000
/// objects of 4 KiB checkpointed durably to local disk, p99 over every object of every round.
pub(crate) async fn pause_p99(store: CheckpointStore) -> anyhow::Result<Entry> {
    const OBJECTS: usize = 10_000;
    const ROUNDS: usize = 8;
    let blobs = Blobs::spawn(store, patterned(OBJECTS, 4 << 10), false).await?;
    blobs.checkpoint().await?; // warm-up: first segment files, first manifest
    blobs.cohort.metrics().reset_pauses();
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        rounds.push(blobs.checkpoint().await?);
    }
    let p = blobs.cohort.metrics().pauses();
    blobs.cohort.shutdown().await;
    let rounds = Samples::new(rounds).context("no rounds")?;
    Ok(Entry::absolute("pause_p99", ms(p.p99), "ms", Goal::AtMost(1.0)).with_note(format!(
        "{OBJECTS} x 4 KiB objects, local disk with fsync, {ROUNDS} rounds, {} pauses: p50 {:.1} us, max {:.0} us; whole checkpoint p50 {:.0} ms",
        p.count,
        p.p50.as_secs_f64() * 1e6,
        p.max.as_secs_f64() * 1e6,
        ms(rounds.quantile(0.5)),
    )))
}

/// `coordination_inproc`: an empty checkpoint of 1,000 in-process objects, median round, on the
/// memory store (coordination alone; on disk a round is bounded below by the manifest fsync).
pub(crate) async fn coordination_inproc() -> anyhow::Result<Entry> {
    const OBJECTS: usize = 1_000;
    const WARMUP: usize = 20;
    const ROUNDS: usize = 300;
    let store = CheckpointStore::memory();
    let blobs = Blobs::spawn(store.clone(), (0..OBJECTS).map(|_| Bytes::new()), false).await?;
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..WARMUP + ROUNDS {
        let took = blobs.checkpoint().await?;
        if round >= WARMUP {
            samples.push(took);
        }
        // Keeps the memory store small; untimed.
        store.gc(1, false).await.context("gc of the memory store")?;
    }
    blobs.cohort.shutdown().await;
    let samples = Samples::new(samples).context("no rounds")?;
    let median = ms(samples.quantile(0.5));
    Ok(
        Entry::absolute("coordination_inproc", median, "ms", Goal::AtMost(2.0)).with_note(format!(
            "median round, {OBJECTS} empty objects, memory store: {}",
            samples.spread()
        )),
    )
}

/// `incremental_1pct`: bytes written (segments and manifest) by a checkpoint after 1% of
/// 100,000 objects changed, against a full checkpoint (every object changed, so its manifest is
/// stored whole) of the same cohort.
pub(crate) async fn incremental_1pct() -> anyhow::Result<Entry> {
    const OBJECTS: usize = 100_000;
    const STATE: usize = 256;
    let blobs = Blobs::spawn(CheckpointStore::memory(), patterned(OBJECTS, STATE), true).await?;
    blobs.checkpoint().await?; // the first line holds everything
    blobs.touch(0, 1).await?;
    let full_time = blobs.checkpoint().await?;
    let full = blobs.last_written().await?;
    // Every hundredth object, spread over the whole cohort, changes before each of three
    // checkpoints (a hot set: the delta manifest stays at 1%); the time is the median of the
    // three (the first one also races the objects' handling of the full checkpoint's decision,
    // before which none of them can be counted in without being woken).
    let mut changed = 0;
    let mut times = Vec::new();
    for _ in 0..3 {
        changed = blobs.touch(17, 100).await?;
        times.push(blobs.checkpoint().await?);
    }
    times.sort();
    let incr_time = times[times.len() / 2];
    let incr = blobs.last_written().await?;
    blobs.cohort.shutdown().await;
    anyhow::ensure!(
        incr.states == changed && full.states == OBJECTS,
        "wrote {} objects for {changed} changed, {} of {OBJECTS} when all changed",
        incr.states,
        full.states
    );
    anyhow::ensure!(
        full.delta_of.is_none(),
        "the full checkpoint's manifest was stored as a delta: not a full baseline"
    );
    Ok(Entry::against(
        "incremental_1pct",
        incr.total() as f64,
        "bytes",
        ("full checkpoint", full.total() as f64),
        Goal::RatioAtMost(0.02),
    )
    .with_note(format!(
        "{changed} of {OBJECTS} objects x {STATE} B changed, memory store; incremental {} in {:.0} ms, full {} in {:.0} ms",
        incr.describe(),
        ms(incr_time),
        full.describe(),
        ms(full_time)
    )))
}

/// The objects of the scale figures, and the bytes of each one's state.
const SCALE_OBJECTS: usize = 1_000_000;
const SCALE_STATE: usize = 64;

/// `scale_1m_incremental`: one checkpoint of 1,000,000 objects of 64-byte state with 1%
/// changed (every hundredth, spread over the cohort), on the memory store; median of 3.
/// Baseline: a full checkpoint of the same cohort (every object changed).
pub(crate) async fn scale_1m_incremental() -> anyhow::Result<Entry> {
    // A smaller cohort for a quick look or a profile; the goal is set at 1,000,000.
    let objects = match std::env::var("COHORT_BENCH_SCALE_OBJECTS") {
        Ok(n) => n.parse().with_context(|| {
            format!("COHORT_BENCH_SCALE_OBJECTS={n:?}: give a whole number of objects")
        })?,
        Err(_) => SCALE_OBJECTS,
    };
    let store = CheckpointStore::memory();
    let blobs = Blobs::spawn(store.clone(), patterned(objects, SCALE_STATE), true).await?;
    blobs.checkpoint().await?; // the first line holds everything
    blobs.touch(0, 1).await?;
    let full = blobs.checkpoint().await?;
    let mut times = Vec::new();
    let mut changed = 0;
    for round in 0..3 {
        changed = blobs.touch(17 + round, 100).await?;
        times.push(blobs.checkpoint().await?);
        store.gc(1, false).await.context("gc of the memory store")?;
    }
    blobs.cohort.shutdown().await;
    let samples = Samples::new(times).context("no rounds")?;
    let median = samples.quantile(0.5);
    Ok(Entry::against(
        "scale_1m_incremental",
        ms(median),
        "ms",
        ("full checkpoint", ms(full)),
        Goal::AtMost(100.0),
    )
    .with_note(format!(
        "{changed} of {objects} objects x {SCALE_STATE} B changed, memory store, median of 3: {}",
        samples.spread()
    )))
}

/// Resident bytes of this process (`/proc/self/statm`).
fn resident_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("/proc/self/statm has no resident count")?;
    Ok(pages * 4096)
}

/// An idle object of the scale figures: its state is a byte string, and it takes 64-byte
/// messages (a message type of a typical size: the mailbox's cost grows with it).
struct Idle {
    data: Bytes,
}

#[async_trait]
impl Checkpointable for Idle {
    fn type_name(&self) -> &'static str {
        BLOB
    }
    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new(BLOB, 1, self.data.clone()))
    }
    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        self.data = state.decode::<SharedData>()?.0;
        Ok(())
    }
    fn generation(&self) -> Option<u64> {
        Some(0)
    }
}

#[async_trait]
impl Actor for Idle {
    type Message = [u64; 8];

    const MESSAGE_DRIVEN: bool = true;

    async fn handle(&mut self, _: [u64; 8], _: &mut Context<'_>) -> Result<(), ObjectError> {
        Ok(())
    }
}

/// `idle_object_overhead`: resident bytes per idle object beyond its 64-byte state, with
/// 1,000,000 objects (taking 64-byte messages) spawned and checkpointed once (their line
/// committed on the memory store), then left idle: read once every object handled the
/// decision and parked. Measured in a process of its own (this
/// binary re-executed with the `idle` role): in the report's process the figures before it
/// leave freed pages that the objects would reuse, and the growth of resident memory would
/// undercount them (951 B against 2,321 B alone, once).
pub(crate) fn idle_object_overhead() -> anyhow::Result<Entry> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let out = std::process::Command::new(exe)
        .env(crate::ROLE_ENV, "idle")
        .env(crate::SPEC_ENV, "-")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the idle-object measurement in its own process")?;
    anyhow::ensure!(
        out.status.success(),
        "the idle-object process failed: {}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let per_object: f64 = stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("the idle-object process printed no figure: {stdout:?}"))?;
    Ok(
        Entry::absolute("idle_object_overhead", per_object, "B", Goal::AtMost(1024.0)).with_note(
            format!(
                "resident bytes added by {SCALE_OBJECTS} idle objects taking 64-byte messages (their {SCALE_STATE}-byte states allocated before, not counted) and one committed line of them on the memory store, per object, in a process of its own"
            ),
        ),
    )
}

/// The `idle` role: measures [`idle_object_overhead`] in this process and prints the bytes
/// per object.
pub(crate) async fn idle_object_role() -> anyhow::Result<()> {
    println!("{}", idle_object_bytes().await?);
    Ok(())
}

/// Resident bytes added per idle object, in this process.
async fn idle_object_bytes() -> anyhow::Result<f64> {
    // The states exist before the cohort does, so that only what the cohort adds is counted.
    let states: Vec<Bytes> = patterned(SCALE_OBJECTS, SCALE_STATE).collect();
    let before = resident_bytes()?;
    let cohort = Cohort::builder(CheckpointStore::memory())
        .settings(Settings::default().timeout(Duration::from_secs(600)))
        .build()
        .await
        .context("starting the cohort")?;
    let runtime = tokio::runtime::Handle::current().metrics();
    let cohort_tasks = runtime.num_alive_tasks();
    for (i, data) in states.into_iter().enumerate() {
        cohort.spawn(ObjectId::indexed("idle", i as u64)?, Idle { data })?;
    }
    cohort.trigger().await.context("a checkpoint failed")?;
    // Idle means done: the checkpoint returns while objects still handle its decision, each
    // on a task of its own until it parks. Measured once they all have.
    let deadline = Instant::now() + Duration::from_secs(120);
    while runtime.num_alive_tasks() > cohort_tasks {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} tasks still alive two minutes after the checkpoint",
            runtime.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = resident_bytes()?;
    cohort.shutdown().await;
    Ok(after.saturating_sub(before) as f64 / SCALE_OBJECTS as f64)
}
