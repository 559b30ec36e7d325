//! Benchmarks of the checkpoint protocol (issue 4's Performance targets):
//!
//! - `pause/*`: how long objects are blocked by a checkpoint (prepare + capture), with
//!   10,000 objects of 4 KiB, and 1,000 objects of 256 KiB to show that it does not grow with
//!   state size. Criterion times the whole checkpoint; the pause percentiles are printed.
//! - `overhead/*`: a checkpoint of 1,000 in-process objects with empty state, on the memory
//!   store (coordination only) and on local disk with and without fsync (the difference is the
//!   store's fsync latency).
//! - `idle/*`: 100,000 objects, a full checkpoint against one where 1% changed; the bytes
//!   written are printed.
//!
//! `cargo bench --bench protocol` runs them all; `-- overhead` picks a group.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a benchmark is a failed run
#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cohort::checkpoint::object_store::ObjectStoreExt;
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::{Actor, Cohort, Context, Settings};
use cohort::{Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

/// An object whose state is `payload` (shared, so capture is a reference-count increment) and
/// whose generation is bumped from outside, as if its owner had changed it.
struct Blob {
    payload: Arc<String>,
    generation: Arc<AtomicU64>,
    track: bool,
}

#[async_trait]
impl Checkpointable for Blob {
    fn type_name(&self) -> &'static str {
        "bench.Blob"
    }
    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        let generation = self.generation.load(Ordering::Relaxed);
        Ok(Snapshot::new(
            "bench.Blob",
            1,
            (generation, Arc::clone(&self.payload)),
        ))
    }
    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        let (generation, payload): (u64, String) = state.decode()?;
        self.generation.store(generation, Ordering::Relaxed);
        self.payload = Arc::new(payload);
        Ok(())
    }
    fn generation(&self) -> Option<u64> {
        self.track.then(|| self.generation.load(Ordering::Relaxed))
    }
}

#[async_trait]
impl Actor for Blob {
    type Message = ();
    async fn handle(&mut self, (): (), _: &mut Context<'_>) -> Result<(), ObjectError> {
        Ok(())
    }
}

struct Setup {
    cohort: Cohort,
    store: CheckpointStore,
    generations: Vec<Arc<AtomicU64>>,
    _dir: Option<tempfile::TempDir>,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn setup(store: CheckpointStore, objects: usize, state_bytes: usize, track: bool) -> Setup {
    let cohort = Cohort::builder(store.clone())
        .settings(Settings::default().timeout(Duration::from_secs(600)))
        .build()
        .await
        .unwrap();
    let payload = Arc::new("x".repeat(state_bytes));
    let mut generations = Vec::with_capacity(objects);
    for i in 0..objects {
        let generation = Arc::new(AtomicU64::new(0));
        generations.push(Arc::clone(&generation));
        let blob = Blob {
            payload: Arc::clone(&payload),
            generation,
            track,
        };
        cohort
            .spawn(ObjectId::indexed("o", i as u64).unwrap(), blob)
            .unwrap();
    }
    Setup {
        cohort,
        store,
        generations,
        _dir: None,
    }
}

/// Times `iters` checkpoints; `between` runs untimed before each one. Old checkpoints are
/// collected (untimed) so that the memory store does not grow without bound.
async fn checkpoints(s: &Setup, iters: u64, mut between: impl FnMut(&Setup)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        between(s);
        let started = Instant::now();
        s.cohort.trigger().await.unwrap();
        total += started.elapsed();
        s.store.gc(1, false).await.unwrap();
    }
    total
}

fn print_pauses(name: &str, s: &Setup) {
    let p = s.cohort.metrics().pauses();
    eprintln!(
        "{name}: pause p50 {:?}, p99 {:?}, max {:?} ({} captures)",
        p.p50, p.p99, p.max, p.count
    );
}

/// Benchmarks checkpoints of the cohort `make` builds (only if the benchmark is selected), with
/// `between` run untimed before each; returns the cohort, if it was built.
fn bench_checkpoints(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    make: impl FnOnce() -> Setup,
    mut between: impl FnMut(&Setup),
) -> Option<Setup> {
    let mut make = Some(make);
    let mut setup_once: Option<Setup> = None;
    group.bench_function(name, |b| {
        if setup_once.is_none() {
            setup_once = make.take().map(|make| make());
        }
        let Some(s) = setup_once.as_ref() else { return };
        b.iter_custom(|iters| rt.block_on(checkpoints(s, iters, &mut between)));
    });
    setup_once
}

fn pause(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("pause");
    group.sample_size(10);
    for (name, objects, bytes) in [
        ("10k_objects_4KiB", 10_000, 4 << 10),
        ("1k_objects_256KiB", 1_000, 256 << 10),
    ] {
        let make = || rt.block_on(setup(CheckpointStore::memory(), objects, bytes, false));
        if let Some(s) = bench_checkpoints(&mut group, &rt, name, make, |_| {}) {
            print_pauses(&format!("pause/{name}"), &s);
        }
    }
    group.finish();
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("overhead");
    let name = "1k_empty_objects_memory";
    let make = || rt.block_on(setup(CheckpointStore::memory(), 1_000, 0, false));
    if let Some(s) = bench_checkpoints(&mut group, &rt, name, make, |_| {}) {
        print_pauses(&format!("overhead/{name}"), &s);
    }
    for (name, fsync) in [
        ("1k_empty_objects_local_no_fsync", false),
        ("1k_empty_objects_local_fsync", true),
    ] {
        let make = || {
            let dir = tempfile::tempdir().unwrap();
            // StoreOptions is non-exhaustive: no struct literal outside its crate.
            #[allow(clippy::field_reassign_with_default)]
            let options = {
                let mut options = StoreOptions::default();
                options.fsync = fsync;
                options
            };
            let store = rt
                .block_on(CheckpointStore::open(dir.path().to_str().unwrap(), options))
                .unwrap();
            let mut s = rt.block_on(setup(store, 1_000, 0, false));
            s._dir = Some(dir);
            s
        };
        let last = bench_checkpoints(&mut group, &rt, name, make, |_| {})
            .and_then(|s| s.cohort.metrics().last_checkpoint());
        if let Some(last) = last {
            eprintln!(
                "overhead/{name}: last checkpoint {:?}, of which the manifest create {:?}",
                last.duration, last.commit
            );
        }
    }
    group.finish();
}

fn idle(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("idle");
    group.sample_size(10);
    let make = || rt.block_on(setup(CheckpointStore::memory(), 100_000, 256, true));
    let bump_all = |s: &Setup| {
        for g in &s.generations {
            g.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut next = 0;
    let bump_1pct = |s: &Setup| {
        for _ in 0..s.generations.len() / 100 {
            s.generations[next % s.generations.len()].fetch_add(1, Ordering::Relaxed);
            next += 7919; // a prime stride spreads the changes
        }
    };
    let report = |name: &str, s: &Setup| {
        if let Some(last) = s.cohort.metrics().last_checkpoint() {
            // The manifest lists every object, changed or not: its size counts too.
            let (objects, prefix) = s.store.object_store();
            let key = prefix
                .clone()
                .join("manifests")
                .join(format!("{}.manifest", last.id.padded()));
            let manifest = rt.block_on(objects.head(&key)).map_or(0, |meta| meta.size);
            eprintln!(
                "idle/{name}: {} objects written ({} unchanged), {} bytes of segments + {manifest} bytes of manifest, {:?}",
                last.written, last.unchanged, last.bytes, last.duration
            );
        }
    };
    // One cohort serves both benchmarks: built by the first one selected.
    let full = bench_checkpoints(&mut group, &rt, "100k_objects_full", make, bump_all);
    if let Some(s) = &full {
        report("100k_objects_full", s);
    }
    let name = "100k_objects_1pct_changed";
    let make = || full.unwrap_or_else(make);
    if let Some(s) = bench_checkpoints(&mut group, &rt, name, make, bump_1pct) {
        report(name, &s);
        print_pauses("idle/100k", &s);
    }
    group.finish();
}

criterion_group!(benches, pause, overhead, idle);
criterion_main!(benches);
