//! Storage benchmark: durable checkpoints to local disk against baselines measured in the same
//! run on the same disk, printed as ratios.
//!
//! - write 1,000 × 64 KiB objects, and 1 GiB in total (× `COHORT_BENCH_SCALE`, default 0.25),
//!   as a committed, fsynced checkpoint; against `dd if=/dev/zero bs=8M conv=fsync` of the same
//!   size, and against a naive serde_json file per object with an fsync each;
//! - restore (read, verify, decode) of those states, against a sequential read of the same
//!   bytes.
//!
//! `cargo bench --bench storage`; `COHORT_BENCH_DIR` picks the disk (default: the system temp
//! dir), `COHORT_BENCH_SCALE=1` runs the full 1 GiB case, `COHORT_BENCH_REPEATS` (default 5)
//! sets how many interleaved runs each figure is the median of.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that fails should stop loudly
#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cohort_checkpoint::{CheckpointStore, Manifest, ObjectEntry, StoreOptions};
use cohort_object_api::{CheckpointId, ObjectId, Snapshot};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A state whose bulk is one byte string (msgpack `bin`), shared with the object through an
/// `Arc`, as the capture guidance recommends.
#[derive(Clone)]
struct Blob(std::sync::Arc<Vec<u8>>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(std::sync::Arc::new(v.to_vec())))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct State {
    id: u64,
    data: Blob,
}

fn states(count: usize, size: usize) -> Vec<(ObjectId, State)> {
    (0..count)
        .map(|i| {
            // Not zeros: a deterministic pattern per object.
            let data: Vec<u8> = (0..size)
                .map(|j| (j as u64 * 31 + i as u64) as u8)
                .collect();
            (
                ObjectId::indexed("obj", i as u64).unwrap(),
                State {
                    id: i as u64,
                    data: Blob(std::sync::Arc::new(data)),
                },
            )
        })
        .collect()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Writes the states as checkpoint 1 of a fresh store under `dir`, durably, and commits.
async fn cohort_write(
    dir: &Path,
    states: &[(ObjectId, State)],
    options: StoreOptions,
) -> (Duration, Manifest) {
    let store = CheckpointStore::open(dir.to_str().unwrap(), options)
        .await
        .unwrap();
    let start = Instant::now();
    let id = CheckpointId::new(1);
    let mut w = store.segment_writer(id, "e1-r1", "bench");
    let mut m = Manifest::new(id, 1, 0, "e1-r1");
    for (object, state) in states {
        let location = w
            .add(object, &Snapshot::new("State", 1, state.clone()))
            .await
            .unwrap();
        m.objects.insert(
            object.clone(),
            ObjectEntry {
                type_name: "State".into(),
                version: 1,
                generation: None,
                location,
            },
        );
    }
    w.finish().await.unwrap();
    store.commit(&m).await.unwrap();
    (start.elapsed(), m)
}

async fn cohort_restore(dir: &Path, m: &Manifest) -> Duration {
    let store = CheckpointStore::open_read_only(dir.to_str().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    let read = store.read_states(m).await.unwrap();
    let read_time = start.elapsed();
    let mut total = 0usize;
    for (_, s) in &read {
        let state: State = s.decode().unwrap();
        total += state.data.0.len();
    }
    assert!(total > 0);
    let all = start.elapsed();
    println!(
        "  (restore: read + verify {:.3} s, decode {:.3} s)",
        read_time.as_secs_f64(),
        (all - read_time).as_secs_f64()
    );
    all
}

/// Reads every file under `dir` sequentially: the floor for reading the same bytes.
fn sequential_read(dir: &Path) -> (Duration, u64) {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&dir.join("segments"), &mut all);
    let start = Instant::now();
    let mut bytes = 0u64;
    for f in all {
        bytes += std::fs::read(f).unwrap().len() as u64;
    }
    (start.elapsed(), bytes)
}

fn dd(dir: &Path, bytes: u64) -> Duration {
    let count = bytes.div_ceil(8 << 20);
    let out = dir.join("dd.bin");
    let start = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .arg("bs=8M")
        .arg(format!("count={count}"))
        .arg("conv=fsync")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("dd runs");
    assert!(status.success());
    let d = start.elapsed();
    std::fs::remove_file(out).unwrap();
    d
}

fn naive_json(dir: &Path, states: &[(ObjectId, State)]) -> Duration {
    #[derive(Serialize)]
    struct Json<'a> {
        id: u64,
        data: &'a [u8],
    }
    std::fs::create_dir_all(dir).unwrap();
    let start = Instant::now();
    for (object, state) in states {
        let bytes = serde_json::to_vec(&Json {
            id: state.id,
            data: &state.data.0,
        })
        .unwrap();
        let mut f = std::fs::File::create(dir.join(format!("{object}.json"))).unwrap();
        f.write_all(&bytes).unwrap();
        f.sync_all().unwrap();
    }
    start.elapsed()
}

/// The median of `runs` (sorted in place).
fn median(runs: &mut [Duration]) -> Duration {
    runs.sort_unstable();
    runs[runs.len() / 2]
}

async fn case(name: &str, base: &Path, count: usize, size: usize, naive: bool, repeats: usize) {
    let states = states(count, size);
    let bytes = (count * size) as u64;
    println!(
        "\n== {name}: {count} objects x {} KiB = {} MiB (median of {repeats} runs, interleaved)",
        size >> 10,
        bytes >> 20
    );

    // The disk is shared and noisy: every configuration runs `repeats` times, interleaved with
    // the dd baseline, and each is reported by its median.
    let configs = [
        ("cohort 64 MiB segments", 64 << 20, 4),
        ("cohort 16 MiB segments", 16 << 20, 4),
    ];
    let mut dd_runs = Vec::new();
    let mut cohort_runs: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    let mut kept: Vec<Option<(PathBuf, Manifest)>> = vec![None; configs.len()];
    for run in 0..repeats {
        dd_runs.push(dd(base, bytes));
        for (i, (_, segment_size, concurrency)) in configs.iter().enumerate() {
            let dir = base.join(format!("{name}-{}-{run}", segment_size >> 20));
            let options = StoreOptions {
                segment_size: *segment_size,
                upload_concurrency: *concurrency,
                ..StoreOptions::default()
            };
            let (t, m) = cohort_write(&dir, &states, options).await;
            cohort_runs[i].push(t);
            if let Some((old, _)) = kept[i].replace((dir, m)) {
                std::fs::remove_dir_all(old).unwrap();
            }
        }
    }
    let dd_time = median(&mut dd_runs);
    println!(
        "dd bs=8M conv=fsync      {:>8.3} s  {:>8.1} MiB/s",
        dd_time.as_secs_f64(),
        mib_s(bytes, dd_time)
    );
    let mut best: Option<(Duration, usize)> = None;
    for (i, (label, _, _)) in configs.iter().enumerate() {
        let t = median(&mut cohort_runs[i]);
        println!(
            "{label:<24} {:>8.3} s  {:>8.1} MiB/s  = {:.2} x dd bandwidth",
            t.as_secs_f64(),
            mib_s(bytes, t),
            dd_time.as_secs_f64() / t.as_secs_f64()
        );
        if best.is_none_or(|(b, _)| t < b) {
            best = Some((t, i));
        }
    }
    let (write_time, best_index) = best.unwrap();
    let (dir, manifest) = kept[best_index].take().unwrap();

    if naive {
        let t = naive_json(&base.join(format!("{name}-json")), &states);
        println!(
            "naive json file + fsync  {:>8.3} s  {:>8.1} MiB/s  -> cohort is {:.1}x faster",
            t.as_secs_f64(),
            mib_s(bytes, t),
            t.as_secs_f64() / write_time.as_secs_f64()
        );
    }

    let mut seq_runs = Vec::new();
    let mut restore_runs = Vec::new();
    let mut seq_bytes = 0;
    for _ in 0..repeats {
        let (seq, b) = sequential_read(&dir);
        seq_bytes = b;
        seq_runs.push(seq);
        restore_runs.push(cohort_restore(&dir, &manifest).await);
    }
    let seq = median(&mut seq_runs);
    let restore = median(&mut restore_runs);
    println!(
        "sequential read          {:>8.3} s  {:>8.1} MiB/s",
        seq.as_secs_f64(),
        mib_s(seq_bytes, seq)
    );
    println!(
        "cohort restore           {:>8.3} s  {:>8.1} MiB/s  = {:.2} x sequential read (read + verify + decode)",
        restore.as_secs_f64(),
        mib_s(bytes, restore),
        seq.as_secs_f64() / restore.as_secs_f64()
    );
}

fn main() {
    let scale: f64 = std::env::var("COHORT_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.25);
    let repeats: usize = std::env::var("COHORT_BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let base = std::env::var_os("COHORT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("cohort-bench-")
        .tempdir_in(base)
        .unwrap();
    println!(
        "storage bench in {} (scale {scale}; warm page cache for reads)",
        dir.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        case("small", dir.path(), 1000, 64 << 10, true, repeats).await;
        let big_count = ((1024.0 * scale).round() as usize).max(1);
        case("large", dir.path(), big_count, 1 << 20, false, repeats).await;
    });
}
