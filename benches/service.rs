//! A checkpoint round of the coordinator service across 64 node processes on loopback, each
//! hosting one object with a tiny state. The store is a local disk without fsync, so the figure
//! is the protocol's (frames, captures, segment puts to the page cache, the manifest create),
//! not the disk's.
//!
//! `cargo bench --bench service` (env `COHORT_BENCH_NODES`, `COHORT_BENCH_ROUNDS` override the
//! 64 nodes and 200 rounds). A node is this binary re-executed with `COHORT_BENCH_NODE` set.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_coordinator::node::Node;
use cohort_coordinator::service::{Service, ServiceConfig};
use cohort_coordinator::{Actor, Context};
use cohort_object_api::{Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};

struct Idle(u64);

#[async_trait]
impl Checkpointable for Idle {
    fn type_name(&self) -> &'static str {
        "Idle"
    }
    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new("Idle", 1, self.0))
    }
    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        self.0 = state.decode()?;
        Ok(())
    }
}

#[async_trait]
impl Actor for Idle {
    type Message = ();
    async fn handle(&mut self, _: (), _: &mut Context<'_>) -> Result<(), ObjectError> {
        Ok(())
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    }
}

fn node_main(index: String) {
    // The bench holds our stdin: when it ends, however it ends, so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&std::env::var("COHORT_STORE").unwrap(), options())
            .await
            .unwrap();
        let node = Node::builder(store)
            .name(format!("bench-{index}"))
            .coordinators(vec![std::env::var("COHORT_COORDINATOR").unwrap()])
            .build()
            .await
            .unwrap();
        node.spawn(ObjectId::new(format!("obj-{index}")).unwrap(), Idle(0))
            .unwrap();
        // Runs until the bench kills it.
        std::future::pending::<()>().await;
    });
}

fn main() {
    // RUST_LOG=info shows what the service and the nodes do (quiet by default).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Ok(index) = std::env::var("COHORT_BENCH_NODE") {
        return node_main(index);
    }
    let nodes: usize = std::env::var("COHORT_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rounds: usize = std::env::var("COHORT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("store").to_str().unwrap().to_owned();
        let store = CheckpointStore::open(&url, options()).await.unwrap();
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
        config.heartbeat_interval = Duration::from_millis(500);
        config.heartbeat_timeout = Duration::from_secs(10);
        let service = Service::start(store, config).await.unwrap();
        let mut children: Vec<Child> = (0..nodes)
            .map(|i| {
                Command::new(std::env::current_exe().unwrap())
                    .env("COHORT_BENCH_NODE", i.to_string())
                    .env("COHORT_STORE", &url)
                    .env("COHORT_COORDINATOR", service.local_addr().to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut status = service.status();
        tokio::time::timeout(
            Duration::from_secs(60),
            status.wait_for(|s| s.table.placement.len() == nodes && s.table.nodes.values().all(|n| n.live)),
        )
        .await
        .expect("every node registered within 60 s")
        .unwrap();
        // Warm up until a round commits (nodes finish restoring), backing off between tries
        // rather than spinning aborted attempts against 64 processes on two cores.
        let end = Instant::now() + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(5);
        while service.trigger().await.is_err() {
            assert!(Instant::now() < end, "no checkpoint committed");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            service.trigger().await.unwrap();
            samples.push(started.elapsed());
        }
        samples.sort();
        let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
        println!(
            "service round, {nodes} node processes, local disk without fsync, {rounds} rounds: median {:?}, p90 {:?}, p99 {:?}, max {:?}",
            pct(50),
            pct(90),
            pct(99),
            samples[samples.len() - 1]
        );
        service.shutdown();
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
    });
}
