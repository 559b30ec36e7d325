//! A replicated journal and a client load, shared by the replication-style tests: the service
//! (an append-only journal of numbers), writers that write unique numbers until stopped, and
//! the check that every acknowledged write is in the journal exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_object_api::{Checkpointable, ObjectError};
use cohort_replication::client::GroupClient;
use cohort_replication::server::Service;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The replicated service: an append-only journal of numbers.
#[derive(Checkpointable, Default)]
pub(crate) struct Journal {
    writes: Vec<u64>,
}

/// A request to the journal.
#[derive(Serialize, Deserialize)]
pub(crate) enum Op {
    Write(u64),
    Dump,
}

#[async_trait]
impl Service for Journal {
    async fn execute(&mut self, request: &[u8]) -> Result<Bytes, ObjectError> {
        let op: Op =
            rmp_serde::from_slice(request).map_err(|e| ObjectError::Application(Box::new(e)))?;
        let reply = match op {
            Op::Write(v) => {
                self.writes.push(v);
                rmp_serde::to_vec(&(self.writes.len() as u64))
            }
            Op::Dump => rmp_serde::to_vec(&self.writes),
        };
        reply
            .map(Bytes::from)
            .map_err(|e| ObjectError::Application(Box::new(e)))
    }
}

pub(crate) fn encode(op: &Op) -> Bytes {
    Bytes::from(rmp_serde::to_vec(op).unwrap())
}

pub(crate) async fn open_store(dir: &std::path::Path) -> CheckpointStore {
    CheckpointStore::open(dir.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap()
}

/// Waits (up to `patience`) for a line containing `marker` and returns what follows it.
pub(crate) async fn expect_line(
    lines: &mut mpsc::UnboundedReceiver<String>,
    marker: &str,
    patience: Duration,
) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no {marker:?} line in time"))
            .expect("the child exited");
        // libtest may print "test <child role> ... " before it on the same line.
        if let Some((_, rest)) = line.split_once(marker) {
            return rest.trim().to_owned();
        }
    }
}

/// Writers that write unique numbers continuously; every call must succeed.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    /// Writes acknowledged so far.
    pub acked: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u64, Duration)>>>,
}

pub(crate) fn start_load(client: &GroupClient, writers: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let tasks = (0..writers)
        .map(|w| {
            let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let value = w * 1_000_000 + n;
                    n += 1;
                    let started = Instant::now();
                    match client.call(encode(&Op::Write(value))).await {
                        Ok(_) => {
                            done.push((value, started.elapsed()));
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => panic!("write {value} failed: {err}"),
                    }
                }
                done
            })
        })
        .collect();
    Load { stop, acked, tasks }
}

/// Waits (up to `patience`) until the writers have `at_least` acknowledged writes.
pub(crate) async fn wait_acked(load: &Load, at_least: u64, patience: Duration) {
    let deadline = Instant::now() + patience;
    while load.acked.load(Ordering::Relaxed) < at_least {
        assert!(Instant::now() < deadline, "the writers stalled");
        tokio::time::sleep(Duration::from_millis(5)).await; // bounded polling, not synchronisation
    }
}

/// Stops the writers; returns each acknowledged write and how long its call took.
pub(crate) async fn stop(load: Load) -> Vec<(u64, Duration)> {
    load.stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for task in load.tasks {
        acked.extend(task.await.unwrap());
    }
    acked
}

/// Stops the load and checks that the journal holds every acknowledged write exactly once;
/// returns the slowest call.
pub(crate) async fn finish(load: Load, client: &GroupClient) -> Duration {
    let acked = stop(load).await;
    let slowest = acked.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let dump = client.call(encode(&Op::Dump)).await.unwrap();
    let journal: Vec<u64> = rmp_serde::from_slice(&dump).unwrap();
    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    for v in &journal {
        *counts.entry(*v).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(duplicates.is_empty(), "duplicated writes: {duplicates:?}");
    let lost: Vec<u64> = acked
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| !counts.contains_key(v))
        .collect();
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    println!(
        "{} acknowledged writes, journal of {}, slowest call {slowest:?}",
        acked.len(),
        journal.len()
    );
    slowest
}

/// A group member in a child process, and the lines it prints.
pub(crate) struct Child {
    pub(crate) process: tokio::process::Child,
    pub(crate) lines: mpsc::UnboundedReceiver<String>,
    /// Its member address, from its `member <addr>` line.
    pub(crate) addr: String,
}

/// Starts `command` (killed when dropped), forwards its stdout lines, and waits (up to
/// `patience`) for its `member <addr>` line.
pub(crate) async fn spawn_member(
    mut command: tokio::process::Command,
    patience: Duration,
) -> Child {
    let mut process = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(process.stdout.take().unwrap()).lines();
    let (tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let addr = expect_line(&mut lines, "member ", patience).await;
    Child {
        process,
        lines,
        addr,
    }
}
