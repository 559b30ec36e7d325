//! Warm-passive failover time and the cost of request logging.
//!
//! ```text
//! cargo bench --bench failover_warm                        # 5 runs
//! COHORT_FAILOVER_RUNS=20 cargo bench --bench failover_warm
//! ```
//!
//! - **Failover**: a primary and a warm backup run as separate processes (heartbeat 50 ms,
//!   activation 150 ms, local-disk store); one client writes continuously; the primary is
//!   killed with SIGKILL. Measured: from the kill to the first successful reply (necessarily from
//!   the new primary). Reported: median, the baseline heartbeat + activation, and the ratio.
//! - **Logging overhead**: sequential write latency against a warm-passive server (every
//!   request logged to the store before the reply) and against a stateless one (no log), in
//!   process, over loopback TCP.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_object_api::{Checkpointable, ObjectError};
use cohort_replication::client::{ClientOptions, GroupClient};
use cohort_replication::server::{ReplicatedServer, ServerOptions, Service};
use cohort_replication::styles::ReplicationStyle;
use cohort_replication::{GroupConfig, GroupName, MemberId, MemberOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

const CHILD_ENV: &str = "COHORT_FAILOVER_CHILD";
const HB: Duration = Duration::from_millis(50);
const ACT: Duration = Duration::from_millis(150);

#[derive(Checkpointable, Default)]
struct Counter {
    total: u64,
}

#[async_trait]
impl Service for Counter {
    async fn execute(&mut self, request: &[u8]) -> Result<Bytes, ObjectError> {
        self.total += request.len() as u64;
        Ok(Bytes::from(self.total.to_be_bytes().to_vec()))
    }
}

fn member(
    group: &str,
    id: &str,
    weight: u16,
    store: &CheckpointStore,
    seeds: Vec<String>,
) -> MemberOptions {
    let config = GroupConfig::new(group, 1)
        .unwrap()
        .with_weight(weight)
        .with_heartbeat_interval(HB)
        .with_activation_interval(ACT);
    let mut options = MemberOptions::new(config, MemberId::new(id).unwrap(), store.clone());
    options.seeds = seeds;
    options
}

async fn child(spec: String) {
    let [dir, id, weight, seeds]: [&str; 4] =
        spec.splitn(4, ';').collect::<Vec<_>>().try_into().unwrap();
    let store = CheckpointStore::open(dir, StoreOptions::default())
        .await
        .unwrap();
    let seeds = seeds
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let options = ServerOptions::new(
        ReplicationStyle::WarmPassive,
        member("bench", id, weight.parse().unwrap(), &store, seeds),
    );
    let server = ReplicatedServer::start(options, Counter::default())
        .await
        .unwrap();
    println!("member {}", server.member_addr());
    let mut status = server.status();
    while status.changed().await.is_ok() {
        if status.borrow_and_update().serving.is_some() {
            println!("serving");
        }
    }
}

struct Child {
    process: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn spawn(dir: &str, id: &str, weight: u16, seeds: &[String]) -> Child {
    let mut process = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env(
            CHILD_ENV,
            format!("{dir};{id};{weight};{}", seeds.join(",")),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(process.stdout.take().unwrap()).lines();
    Child { process, lines }
}

async fn expect(child: &mut Child, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = tokio::time::timeout_at(deadline, child.lines.next_line())
            .await
            .expect("a child said nothing in time")
            .unwrap()
            .expect("a child exited");
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

async fn one_failover() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let store = CheckpointStore::open(&path, StoreOptions::default())
        .await
        .unwrap();
    let mut a = spawn(&path, "a", 30, &[]).await;
    let addr = expect(&mut a, "member ").await;
    expect(&mut a, "serving").await;
    let mut b = spawn(&path, "b", 20, &[addr]).await;
    expect(&mut b, "member ").await;
    let client = GroupClient::new(ClientOptions::new(
        store,
        GroupName::new("bench").unwrap(),
        ReplicationStyle::WarmPassive,
    ))
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.call(Bytes::from_static(b"w")).await.unwrap();
                let _ = tx.send(Instant::now());
            }
        })
    };
    // Let the backup load a committed line, as it would in steady state.
    for _ in 0..200 {
        done.recv().await.unwrap();
    }
    a.process.start_kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let first = loop {
        let at = done.recv().await.unwrap();
        if at > killed {
            break at - killed;
        }
    };
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    first
}

async fn write_latency(style: ReplicationStyle, calls: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(&dir.path().display().to_string(), StoreOptions::default())
        .await
        .unwrap();
    let options = ServerOptions::new(style, member("overhead", "solo", 1, &store, vec![]));
    let server = ReplicatedServer::start(options, Counter::default())
        .await
        .unwrap();
    let mut status = server.status();
    status.wait_for(|s| s.serving.is_some()).await.unwrap();
    let client = GroupClient::new(ClientOptions::new(
        store,
        GroupName::new("overhead").unwrap(),
        style,
    ))
    .unwrap();
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        client.call(Bytes::from_static(b"w")).await.unwrap();
        samples.push(started.elapsed());
    }
    median(samples)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(spec).await;
        return;
    }
    let runs: usize = std::env::var("COHORT_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut samples = Vec::new();
    for run in 0..runs {
        let took = one_failover().await;
        println!("run {run}: failover {took:?}");
        samples.push(took);
    }
    let baseline = HB + ACT;
    let med = median(samples.clone());
    println!(
        "warm failover (SIGKILL -> first reply from the new primary), n={runs}: median {med:?}, min {:?}, max {:?}; baseline heartbeat+activation {baseline:?}; ratio {:.2}; target median <= 250ms: {}",
        samples.iter().min().unwrap(),
        samples.iter().max().unwrap(),
        med.as_secs_f64() / baseline.as_secs_f64(),
        if med <= Duration::from_millis(250) {
            "met"
        } else {
            "MISSED"
        }
    );
    let plain = write_latency(ReplicationStyle::Stateless, 500).await;
    let logged = write_latency(ReplicationStyle::WarmPassive, 500).await;
    println!(
        "sequential write latency, median of 500: unreplicated (stateless, no log) {plain:?}, warm passive (logged before reply) {logged:?}; logging adds {:?} ({:.1}x)",
        logged.saturating_sub(plain),
        logged.as_secs_f64() / plain.as_secs_f64()
    );
}
