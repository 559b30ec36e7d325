//! Bounded memory (issue 14): 10,000 checkpoints as fast as the coordinator takes them, and the
//! live heap of the process (coordinator, two nodes and the store's handles) stays flat.
//!
//! With `--interval 0s` a coordinator once wrote a thousand manifests a second and grew by
//! 200 MB/s. Here checkpoints follow each other back to back (each `trigger` starts the next
//! as soon as the previous one committed, faster than the 100 ms floor allows an interval to),
//! across two nodes on loopback, with one object changed per checkpoint, on a memory store that
//! GC keeps to the newest few checkpoints, so that the store itself stays small.
//!
//! Memory is counted by a global allocator that tracks the bytes live (not resident memory,
//! which the allocator's caching blurs): its own binary, with this one test, so that nothing
//! else allocates meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::time::Duration;

use async_trait::async_trait;
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::node::{Node, NodeStatus};
use cohort::coordinator::runtime::MIN_INTERVAL;
use cohort::coordinator::service::{Service, ServiceConfig};
use cohort::coordinator::{Actor, Context, Error};
use cohort::{Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};
use serde::{Deserialize, Serialize};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::time::Instant;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The bytes live on the heap now.
fn live() -> usize {
    let s = ALLOCATOR.stats();
    // A realloc is counted in both (its growth as allocated, its shrinking as deallocated).
    s.bytes_allocated.saturating_sub(s.bytes_deallocated)
}

const CHECKPOINTS: u64 = 10_000;
/// When the baseline is taken: every cache and buffer has reached its working size.
const WARM_UP: u64 = 1_000;
/// GC keeps the store to this many checkpoints, every this many.
const KEEP: usize = 4;
const GC_EVERY: u64 = 500;

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Bump,
}

struct Counter(u64);

#[async_trait]
impl Checkpointable for Counter {
    fn type_name(&self) -> &'static str {
        "Counter"
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new("Counter", 1, self.0))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        self.0 = state.decode()?;
        Ok(())
    }
}

#[async_trait]
impl Actor for Counter {
    type Message = Msg;

    async fn handle(&mut self, _: Msg, _: &mut Context<'_>) -> Result<(), ObjectError> {
        self.0 += 1;
        Ok(())
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_checkpoints_leave_the_heap_flat() {
    // Small segments: the memory store keeps each segment's buffer, with the capacity the
    // writer reserved for it (a fraction of the segment size), and 16 MiB buffers would drown
    // the measurement.
    let store = CheckpointStore::memory().with_options(StoreOptions {
        segment_size: 64 * 1024,
        ..StoreOptions::default()
    });
    let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
    config.interval = Some(MIN_INTERVAL);
    config.heartbeat_interval = Duration::from_millis(100);
    config.timeout = Duration::from_secs(10);
    let service = Service::start(store.clone(), config).await.unwrap();
    let coordinator = service.local_addr().to_string();

    let mut nodes = Vec::new();
    let mut counters = Vec::new();
    for n in 0..2 {
        let node = Node::builder(store.clone())
            .name(format!("node-{n}"))
            .coordinators(vec![coordinator.clone()])
            .build()
            .await
            .unwrap();
        for i in 0..1 {
            let id = ObjectId::new(format!("counter-{n}-{i}")).unwrap();
            counters.push(node.spawn(id, Counter(0)).unwrap());
        }
        nodes.push(node);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in &nodes {
        let mut status = node.status();
        tokio::time::timeout_at(
            deadline,
            status.wait_for(|s| matches!(s, NodeStatus::Registered { .. })),
        )
        .await
        .expect("a node never registered")
        .unwrap();
    }

    let started = Instant::now();
    // The smallest sample of each phase: an attempt the interval started may hold its buffers
    // at any one sample.
    let mut baseline = usize::MAX;
    let mut end = usize::MAX;
    let mut committed = 0u64;
    let mut last = cohort::CheckpointId::ZERO;
    while committed < CHECKPOINTS {
        // One object changes per checkpoint: its state is written, the others' are copied.
        counters[committed as usize % counters.len()]
            .tell(Msg::Bump)
            .unwrap();
        match service.trigger().await {
            Ok(id) => {
                assert!(id > last, "checkpoint {id} after {last}");
                last = id;
                committed += 1;
            }
            // An interval tick may have started the attempt this trigger joined, or nodes are
            // still being placed: take the next.
            Err(Error::Aborted { .. }) => {}
            Err(e) => panic!("checkpoint {committed}: {e}"),
        }
        assert!(
            Instant::now() < started + Duration::from_secs(600),
            "only {committed} checkpoints in 10 minutes"
        );
        if committed.is_multiple_of(GC_EVERY) && committed > 0 {
            store.gc(KEEP, false).await.unwrap();
            let now = live();
            if (WARM_UP..2 * WARM_UP).contains(&committed) {
                baseline = baseline.min(now);
            } else if committed > CHECKPOINTS - 2 * WARM_UP {
                end = end.min(now);
            }
        }
    }
    let elapsed = started.elapsed();
    let growth = end.saturating_sub(baseline);
    let per_checkpoint = growth as f64 / (CHECKPOINTS - 2 * WARM_UP) as f64;
    eprintln!(
        "{CHECKPOINTS} checkpoints in {elapsed:?} ({:.0}/s): live heap {:.2} MiB after {WARM_UP}, \
         {:.2} MiB at the end ({per_checkpoint:.1} bytes per checkpoint)",
        CHECKPOINTS as f64 / elapsed.as_secs_f64(),
        mib(baseline),
        mib(end)
    );
    // The leak that --interval 0s showed was about 200 KB per checkpoint. What may grow: the
    // memory store's tombstones (a 16-byte blob, its key and metadata per expired checkpoint:
    // about 300 bytes; on disk or S3 they are not on the heap) and the nodes' pause samples (4
    // bytes per changed object per checkpoint, bounded at a million).
    assert!(
        per_checkpoint < 1024.0,
        "the live heap grew by {growth} bytes over {} checkpoints ({per_checkpoint:.1} per \
         checkpoint)",
        CHECKPOINTS - 2 * WARM_UP
    );
    for node in &nodes {
        node.shutdown();
    }
    service.shutdown();
}
