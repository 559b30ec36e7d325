//! Storage figures on local disk, each beside a baseline on the same filesystem in the same
//! run: `write_1gib` (against `dd bs=8M conv=fsync`), `write_small_objects` (against one fsynced
//! serde_json file per object) and `restore_1gib` (against a sequential read of the same
//! segment files, cold cache where the machine allows it).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use cohort::checkpoint::{CheckpointStore, Manifest, StoreOptions};
use cohort::{Checkpointable, ObjectId};

use crate::entry::{Entry, Goal, Samples, mib_s};
use crate::inproc::{Blob, Blobs, patterned};

/// Objects in the write figures.
const OBJECTS: usize = 1_000;

/// The median of `runs` timings, and all of them in order for the note.
struct Timed {
    median: Duration,
    runs: Vec<Duration>,
}

impl Timed {
    fn new(runs: Vec<Duration>) -> anyhow::Result<Timed> {
        let median = Samples::new(runs.clone())
            .context("no run was timed")?
            .quantile(0.5);
        Ok(Timed { median, runs })
    }

    /// `0.63/0.64/0.66 s`, in the order run.
    fn listed(&self) -> String {
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        format!("{} s", runs.join("/"))
    }
}

/// A committed, durable checkpoint of [`OBJECTS`] blobs in a store under `dir`.
struct Written {
    url: String,
    manifest: Manifest,
    /// The timed checkpoints.
    time: Timed,
    bytes: u64,
}

/// Untimed checkpoints before the timed ones. On a thin-provisioned virtual disk (this build
/// machine's) the first write to blocks never written costs several times a write to blocks
/// written before (dd of 1 GiB: 3.1 s against 0.5 s), and with the newest checkpoint kept while
/// the next is written, the store settles on two checkpoints' worth of blocks only after two
/// checkpoints: timed from the start, the second of three took 1.9 s against 0.6 s for the
/// others (best-of-3 hid it). A store with retention runs in that steady state, reusing the
/// blocks GC freed; the warm-up measures it, and dd gets the same.
const WARMUP: usize = 2;

/// Checkpoints `OBJECTS` blobs of `size` bytes to a fresh local store (fsync on) [`WARMUP`] +
/// `runs` times, each a full checkpoint; keeps the newest and the times of the last `runs`.
async fn cohort_write(dir: &Path, size: usize, runs: usize) -> anyhow::Result<Written> {
    let url = dir
        .to_str()
        .context("a bench dir that is not UTF-8")?
        .to_owned();
    let store = CheckpointStore::open(&url, StoreOptions::default()).await?;
    let blobs = Blobs::spawn(store.clone(), patterned(OBJECTS, size), false).await?;
    let mut times = Vec::with_capacity(WARMUP + runs);
    for _ in 0..WARMUP + runs {
        times.push(blobs.checkpoint().await?);
        // Only the newest checkpoint stays on disk; untimed.
        store.gc(1, false).await?;
    }
    blobs.cohort.shutdown().await;
    let id = *store
        .committed_ids()
        .await?
        .last()
        .context("nothing committed")?;
    Ok(Written {
        manifest: store.read_manifest(id).await?,
        url,
        time: Timed::new(times.split_off(WARMUP))?,
        bytes: (OBJECTS * size) as u64,
    })
}

/// `dd if=/dev/zero bs=8M conv=fsync` of at least `bytes` into `dir`, [`WARMUP`] + `runs`
/// times; returns the bytes dd wrote and the times of the last `runs`.
fn dd(dir: &Path, bytes: u64, runs: usize) -> anyhow::Result<(u64, Timed)> {
    let count = bytes.div_ceil(8 << 20);
    let out = dir.join("dd.bin");
    let mut times = Vec::with_capacity(WARMUP + runs);
    for _ in 0..WARMUP + runs {
        let started = Instant::now();
        let status = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", out.display()))
            .args(["bs=8M", &format!("count={count}"), "conv=fsync"])
            .stderr(Stdio::null())
            .status()
            .context("running dd (is coreutils installed?)")?;
        ensure!(status.success(), "dd failed: {status}");
        times.push(started.elapsed());
        std::fs::remove_file(&out)?;
    }
    Ok((count * (8 << 20), Timed::new(times.split_off(WARMUP))?))
}

/// The naive way: one serde_json file per object, fsynced, [`WARMUP`] + `runs` times; the
/// times of the last `runs`.
fn naive_json(dir: &Path, size: usize, runs: usize) -> anyhow::Result<Timed> {
    let states: Vec<Bytes> = patterned(OBJECTS, size).collect();
    let mut times = Vec::with_capacity(WARMUP + runs);
    for run in 0..WARMUP + runs {
        let dir = dir.join(format!("json-{run}"));
        std::fs::create_dir_all(&dir)?;
        let started = Instant::now();
        for (i, data) in states.iter().enumerate() {
            let json = serde_json::to_vec(&(i, data))?;
            let mut f = std::fs::File::create(dir.join(format!("blob-{i}.json")))?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        times.push(started.elapsed());
        std::fs::remove_dir_all(&dir)?;
    }
    Timed::new(times.split_off(WARMUP))
}

/// How the page cache was emptied before a cold read; ordered from cold to warm, so that the
/// warmest of several reads is their `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cache {
    /// `echo 3 > /proc/sys/vm/drop_caches`.
    Dropped,
    /// `posix_fadvise(DONTNEED)` on each file (drop_caches was refused).
    Advised,
    /// Neither worked: the read is from the page cache.
    Warm,
}

impl Cache {
    fn describe(self) -> &'static str {
        match self {
            Cache::Dropped => "cold cache (drop_caches)",
            Cache::Advised => "cold cache (posix_fadvise DONTNEED)",
            Cache::Warm => "warm cache (drop_caches and fadvise refused)",
        }
    }
}

/// Evicts `files` from the page cache as well as this machine allows.
fn evict(files: &[PathBuf]) -> Cache {
    // Only clean pages are dropped: write back anything dirty first.
    let _ = Command::new("sync").status();
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
        return Cache::Dropped;
    }
    let advised = files.iter().all(|f| {
        std::fs::File::open(f).is_ok_and(|file| {
            use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
            posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).is_ok()
        })
    });
    if advised { Cache::Advised } else { Cache::Warm }
}

/// The segment files `manifest` references, in order.
fn segment_files(dir: &Path, manifest: &Manifest) -> anyhow::Result<Vec<PathBuf>> {
    let keys: BTreeSet<&str> = manifest
        .objects
        .values()
        .map(|e| &*e.location.segment)
        .collect();
    let files: Vec<PathBuf> = keys.into_iter().map(|k| dir.join(k)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        bail!("segment file {} is not on disk", missing.display());
    }
    Ok(files)
}

/// Reads `files` one after another with 8 MiB reads: the floor for reading the same bytes.
fn sequential_read(files: &[PathBuf]) -> anyhow::Result<(u64, Duration)> {
    let mut buf = vec![0u8; 8 << 20];
    let started = Instant::now();
    let mut total = 0u64;
    for f in files {
        let mut file = std::fs::File::open(f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok((total, started.elapsed()))
}

/// Reads, verifies (crc, headers) and decodes every state of `w`'s checkpoint into fresh
/// objects, through a fresh read-only store handle, as a restarting process would; returns the
/// whole time and the part spent reading and verifying.
async fn cohort_restore(w: &Written) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let store = CheckpointStore::open_read_only(&w.url).await?;
    let states = store.read_states(&w.manifest).await?;
    let read = started.elapsed();
    let mut restored: Vec<(ObjectId, Blob)> = Vec::with_capacity(states.len());
    for (id, state) in states {
        let mut blob = Blob::empty();
        blob.restore(&state).await?;
        restored.push((id, blob));
    }
    let took = started.elapsed();
    let bytes: usize = restored.iter().map(|(_, b)| b.data.len()).sum();
    ensure!(
        bytes as u64 == w.bytes,
        "restored {bytes} of {} bytes",
        w.bytes
    );
    Ok((took, read))
}

fn size_label(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// `write_1gib` and `restore_1gib`: 1 GiB × `scale` in 1,000 objects, medians of [`RUNS`].
pub(crate) async fn large(base: &Path, scale: f64) -> anyhow::Result<Vec<Entry>> {
    let size = (f64::from(1u32 << 30) * scale / OBJECTS as f64).round() as usize;
    let size = size.max(1 << 10);
    let bytes = (OBJECTS * size) as u64;
    let label = size_label(bytes);
    let dir = base.join("large");
    let (dd_bytes, dd_time) = dd(base, bytes, RUNS)?;
    let w = cohort_write(&dir, size, RUNS).await?;
    let write = Entry::against(
        "write_1gib",
        mib_s(w.bytes, w.time.median),
        "MiB/s",
        ("dd bs=8M conv=fsync", mib_s(dd_bytes, dd_time.median)),
        Goal::RatioAtLeast(0.8),
    )
    .with_note(format!(
        "{label} in {OBJECTS} objects, local disk with fsync, median of {RUNS} after {WARMUP} untimed: {} (dd {})",
        w.time.listed(),
        dd_time.listed(),
    ));

    let files = segment_files(&dir, &w.manifest)?;
    let (mut seq, mut restores, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seq_bytes, mut cache) = (0, Cache::Dropped);
    for _ in 0..RUNS {
        cache = cache.max(evict(&files));
        let (n, took) = sequential_read(&files)?;
        seq_bytes = n;
        seq.push(took);
        cache = cache.max(evict(&files));
        let (took, reading) = cohort_restore(&w).await?;
        restores.push(took);
        reads.push(reading);
    }
    let (seq, restores, reads) = (Timed::new(seq)?, Timed::new(restores)?, Timed::new(reads)?);
    let restore = Entry::against(
        "restore_1gib",
        mib_s(w.bytes, restores.median),
        "MiB/s",
        ("sequential read", mib_s(seq_bytes, seq.median)),
        Goal::RatioAtLeast(0.8),
    )
    .with_note(format!(
        "{label} read + verified + decoded into objects, {}, median of {RUNS}: {}, of which read + verify {:.2} s (sequential read of the {} segment files, {} MiB: {})",
        cache.describe(),
        restores.listed(),
        reads.median.as_secs_f64(),
        files.len(),
        seq_bytes >> 20,
        seq.listed()
    ));
    std::fs::remove_dir_all(&dir)?;
    Ok(vec![write, restore])
}

/// Timed repetitions of each storage figure and of its baseline.
const RUNS: usize = 3;

/// `write_small_objects`: 1,000 × 64 KiB, against one fsynced serde_json file per object,
/// medians of [`RUNS`].
pub(crate) async fn small(base: &Path) -> anyhow::Result<Entry> {
    const SIZE: usize = 64 << 10;
    let dir = base.join("small");
    let naive = naive_json(base, SIZE, RUNS)?;
    let w = cohort_write(&dir, SIZE, RUNS).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(Entry::against(
        "write_small_objects",
        mib_s(w.bytes, w.time.median),
        "MiB/s",
        ("serde_json file per object + fsync", mib_s(w.bytes, naive.median)),
        Goal::RatioAtLeast(20.0),
    )
    .with_note(format!(
        "{OBJECTS} x 64 KiB, local disk with fsync, median of {RUNS} after {WARMUP} untimed: {} (naive {})",
        w.time.listed(),
        naive.listed()
    )))
}
