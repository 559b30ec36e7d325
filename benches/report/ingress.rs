//! The ingress figures: `ingress_throughput` (acknowledged 100-byte inputs per second into an
//! `IngressLog` on local disk with fsync, 1,000 in flight, against one fsync per input) and
//! `ingress_p99` (the 99th percentile of the acknowledgement latency at half that rate).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use cohort::ObjectId;
use cohort::checkpoint::ingress::{IngressLog, IngressOptions};
use cohort::checkpoint::{CheckpointStore, StoreOptions};

use crate::entry::{Entry, Goal, Samples, ms};

const PAYLOAD: usize = 100;
const IN_FLIGHT: usize = 1_000;
const RUN: Duration = Duration::from_secs(3);

async fn open(dir: &Path, name: &str) -> anyhow::Result<IngressLog> {
    let url = dir.join(name).display().to_string();
    std::fs::create_dir_all(&url)?;
    // fsync on (the default): an acknowledged input is on the disk.
    let store = CheckpointStore::open(&url, StoreOptions::default()).await?;
    Ok(IngressLog::open(&store, "bench", IngressOptions::default()).await?)
}

/// One fsync per input: 100-byte appends to a file, each followed by `fdatasync`, for about
/// a second. Inputs per second.
fn fsync_per_input(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("fsync-per-input.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let record = [7u8; PAYLOAD];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        file.write_all(&record)?;
        file.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `ingress_throughput` and `ingress_p99`.
pub(crate) async fn figures(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let baseline = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || fsync_per_input(&dir)
    })
    .await??;

    // Closed loop: 1,000 clients, each with one input in flight at a time.
    let log = open(dir, "throughput").await?;
    let to = ObjectId::new("target").context("an object id")?;
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..IN_FLIGHT)
        .map(|c| {
            let (log, to, acked) = (log.clone(), to.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                let client = format!("client-{c}");
                let payload = Bytes::from(vec![c as u8; PAYLOAD]);
                let mut seq = 0;
                while start.elapsed() < RUN {
                    seq += 1;
                    log.append(&client, seq, to.clone(), payload.clone())
                        .await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for c in clients {
        c.await??;
    }
    let elapsed = start.elapsed();
    let rate = acked.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    let segments = std::fs::read_dir(dir.join("throughput/ingress/bench"))
        .map(|d| d.count())
        .unwrap_or(0);
    let throughput = Entry::against(
        "ingress_throughput",
        rate,
        "inputs/s",
        ("one fsync per input", baseline),
        Goal::AtLeast(100_000.0),
    )
    .with_note(format!(
        "{} inputs of {PAYLOAD} B acknowledged in {:.2} s by {IN_FLIGHT} clients (one in flight each), local disk with fsync (batches appended to {segments} segment files, one fdatasync per batch)",
        acked.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
    ));

    // Open loop at half that rate: inputs are sent on a schedule, whatever the answers.
    let log = open(dir, "latency").await?;
    let fraction: f64 = std::env::var("COHORT_BENCH_INGRESS_FRACTION")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(0.5);
    let target = (rate * fraction).max(1.0);
    let tick = Duration::from_millis(1);
    let per_tick = (target / 1000.0).ceil() as u64;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // One task sends on the schedule (no task per input, which would cost the machine more
    // than the log does); another collects the answers, so that an answer is timed when it
    // arrives, not when a sender that fell behind its schedule gets round to it.
    let payload = Bytes::from(vec![1u8; PAYLOAD]);
    let clients: Vec<Arc<str>> = (0..IN_FLIGHT)
        .map(|c| Arc::from(format!("client-{c}")))
        .collect();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = tokio::spawn(async move {
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut latencies = Vec::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                next = sent_rx.recv(), if open => match next {
                    Some(append) => in_flight.push(append),
                    None => open = false,
                },
                Some(done) = futures::StreamExt::next(&mut in_flight) => latencies.push(done?),
            }
        }
        anyhow::Ok(latencies)
    });
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < RUN {
        interval.tick().await;
        for _ in 0..per_tick {
            seq += 1;
            // 1,000 clients, each with increasing sequence numbers.
            let client = Arc::clone(&clients[(seq % IN_FLIGHT as u64) as usize]);
            let client_seq = seq / IN_FLIGHT as u64 + 1;
            let sent = Instant::now();
            let (log, to, payload) = (log.clone(), to.clone(), payload.clone());
            let timed: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
                Box::pin(async move {
                    let acked = log.append(&client, client_seq, to, payload).await;
                    acked.map(|_| sent.elapsed())
                });
            if sent_tx.send(timed).is_err() {
                anyhow::bail!("the collector of answers stopped");
            }
        }
    }
    let offered = seq as f64 / started.elapsed().as_secs_f64();
    drop(sent_tx);
    let latencies = collector.await??;
    let samples = Samples::new(latencies).context("no input was sent")?;
    let p99 = samples.quantile(0.99);
    let p50 = samples.quantile(0.5);
    let latency = Entry::absolute("ingress_p99", ms(p99), "ms", Goal::AtMost(20.0)).with_note(
        format!(
            "{seq} inputs offered at {offered:.0}/s (half the measured throughput), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(p50),
            ms(p99),
            ms(samples.quantile(1.0))
        ),
    );
    Ok(vec![throughput, latency])
}
