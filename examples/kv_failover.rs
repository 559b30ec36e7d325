//! A replicated key-value service that survives SIGKILL of its primary.
//!
//! ```text
//! cargo run --example kv_failover                    # warm passive: one primary, two warm backups
//! cargo run --example kv_failover -- --style active  # hot: every replica executes, goal 2
//! cargo run --example kv_failover -- --store ./cohort-data/kv
//! ```
//!
//! The example re-executes itself three times with `--role server` (separate processes), then
//! writes continuously through a [`GroupClient`] while it kills the serving process with
//! SIGKILL. It prints the failover time, the requests that were delayed, and checks that every
//! acknowledged write is present exactly once; it exits non-zero on any loss or duplicate.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use clap::Parser;
use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_object_api::{Checkpointable, ObjectError};
use cohort_replication::client::{ClientOptions, GroupClient};
use cohort_replication::server::{ReplicatedServer, ServerOptions, Service};
use cohort_replication::styles::ReplicationStyle;
use cohort_replication::{GroupConfig, GroupName, MemberId, MemberOptions};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

const GROUP: &str = "kv";

#[derive(Parser, Debug)]
#[command(about = "A replicated key-value service that survives SIGKILL of its primary")]
struct Args {
    /// Replication style: warm (one primary, two warm backups) or active (hot, goal 2).
    #[arg(long, default_value = "warm")]
    style: ReplicationStyle,
    /// Store URL or directory; a temporary directory by default.
    #[arg(long)]
    store: Option<String>,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// How long to write before and after the kill.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// Internal: run as a server process.
    #[arg(long, hide = true)]
    role: Option<String>,
    #[arg(long, hide = true, default_value = "")]
    id: String,
    #[arg(long, hide = true, default_value_t = 1)]
    weight: u16,
    #[arg(long, hide = true, default_value = "")]
    seeds: String,
}

/// The service: a map from key to value and the number of times the key was written; a
/// `Put` replies with the previous value. Each demo key is written once, so a count above 1
/// is a duplicated execution.
#[derive(Checkpointable, Default)]
struct Kv {
    entries: BTreeMap<String, (u64, u32)>,
}

#[derive(Serialize, Deserialize)]
enum Op {
    Put(String, u64),
    Dump,
}

#[async_trait]
impl Service for Kv {
    async fn execute(&mut self, request: &[u8]) -> Result<bytes::Bytes, ObjectError> {
        let op: Op =
            rmp_serde::from_slice(request).map_err(|e| ObjectError::Application(Box::new(e)))?;
        let reply = match op {
            Op::Put(k, v) => {
                let entry = self.entries.entry(k).or_default();
                let previous = entry.0;
                *entry = (v, entry.1 + 1);
                rmp_serde::to_vec(&previous)
            }
            Op::Dump => rmp_serde::to_vec(&self.entries),
        };
        reply
            .map(bytes::Bytes::from)
            .map_err(|e| ObjectError::Application(Box::new(e)))
    }
}

fn goal(style: ReplicationStyle) -> u32 {
    if style.sends_to_all() { 2 } else { 1 }
}

fn member(args: &Args, store: &CheckpointStore) -> anyhow::Result<MemberOptions> {
    let config = GroupConfig::new(GROUP, goal(args.style))?
        .with_weight(args.weight)
        .with_heartbeat_interval(Duration::from_millis(50))
        .with_activation_interval(Duration::from_millis(150));
    let mut options = MemberOptions::new(config, MemberId::new(&args.id)?, store.clone());
    options.seeds = args
        .seeds
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(options)
}

async fn serve(args: Args, store: CheckpointStore) -> anyhow::Result<()> {
    let options = ServerOptions::new(args.style, member(&args, &store)?);
    let server = ReplicatedServer::start(options, Kv::default()).await?;
    println!("member {}", server.member_addr());
    let mut status = server.status();
    loop {
        let serving = status.borrow_and_update().serving;
        if let Some(se) = serving {
            println!("serving {} {}", se.slot, se.epoch);
        }
        if status.changed().await.is_err() {
            return Ok(());
        }
    }
}

struct Child {
    process: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    addr: String,
}

async fn line(lines: &mut mpsc::UnboundedReceiver<String>, marker: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Err(_) => bail!("a server did not print {marker:?} within 20 s"),
            Ok(None) => bail!("a server exited before printing {marker:?}"),
            Ok(Some(l)) => {
                if let Some(rest) = l.strip_prefix(marker) {
                    return Ok(rest.to_owned());
                }
            }
        }
    }
}

async fn spawn(
    args: &Args,
    url: &str,
    id: &str,
    weight: u16,
    seeds: &[String],
) -> anyhow::Result<Child> {
    let mut process = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--role", "server", "--id", id, "--store", url])
        .args([
            "--weight",
            &weight.to_string(),
            "--style",
            args.style.as_str(),
        ])
        .args(["--seeds", &seeds.join(",")])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting a server process")?;
    let stdout = process.stdout.take().context("no stdout")?;
    let (tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut out = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = out.next_line().await {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let addr = line(&mut lines, "member ").await?;
    Ok(Child {
        process,
        lines,
        addr,
    })
}

async fn demo(args: Args) -> anyhow::Result<bool> {
    let temp = tempfile::tempdir()?;
    let url = match &args.store {
        Some(url) => url.clone(),
        None => temp.path().join("kv").display().to_string(),
    };
    if !url.contains("://") {
        std::fs::create_dir_all(&url)?;
    }
    let store = CheckpointStore::open(&url, StoreOptions::default()).await?;
    println!("style {}, store {url}", args.style);
    let mut a = spawn(&args, &url, "kv-a", 30, &[]).await?;
    line(&mut a.lines, "serving ").await?;
    let seeds = vec![a.addr.clone()];
    let mut b = spawn(&args, &url, "kv-b", 20, &seeds).await?;
    let _c = spawn(&args, &url, "kv-c", 10, &seeds).await?;
    if goal(args.style) > 1 {
        line(&mut b.lines, "serving ").await?;
    }

    let client = GroupClient::new(ClientOptions::new(
        store.clone(),
        GroupName::new(GROUP)?,
        args.style,
    ))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (client, stop) = (client.clone(), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut done: Vec<(String, u64, Instant, Instant)> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-k{n}");
                let started = Instant::now();
                let put = rmp_serde::to_vec(&Op::Put(key.clone(), n))?;
                client.call(put.into()).await?;
                done.push((key, n, started, Instant::now()));
                n += 1;
            }
            Ok::<_, anyhow::Error>(done)
        }));
    }
    tokio::time::sleep(args.phase).await; // the demo's script: write for a while, then kill
    a.process.start_kill()?; // SIGKILL
    let killed = Instant::now();
    println!("SIGKILL of the primary kv-a");
    tokio::time::sleep(args.phase).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await??);
    }

    let failover = acked
        .iter()
        .filter(|(_, _, _, done)| *done > killed)
        .map(|(_, _, _, done)| *done - killed)
        .min();
    let mut latencies: Vec<Duration> = acked.iter().map(|(_, _, s, d)| *d - *s).collect();
    latencies.sort();
    let median = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let delayed: Vec<Duration> = acked
        .iter()
        .filter(|(_, _, s, d)| *s <= killed && *d >= killed)
        .map(|(_, _, s, d)| *d - *s)
        .collect();
    let dump = client.call(rmp_serde::to_vec(&Op::Dump)?.into()).await?;
    let entries: BTreeMap<String, (u64, u32)> = rmp_serde::from_slice(&dump)?;
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(k, v, _, _)| entries.get(k).map(|e| e.0) != Some(*v))
        .map(|(k, ..)| k)
        .collect();
    let duplicated: Vec<&String> = entries
        .iter()
        .filter(|(_, (_, count))| *count > 1)
        .map(|(k, _)| k)
        .collect();
    println!("acknowledged writes: {}", acked.len());
    match failover {
        Some(f) => println!("failover: first reply {f:?} after SIGKILL"),
        None => println!("failover: no reply after SIGKILL"),
    }
    println!(
        "delayed requests (in flight at the kill): {}, longest {:?}; median latency {median:?}",
        delayed.len(),
        delayed.iter().max().copied().unwrap_or_default()
    );
    println!(
        "resent after faults: {}, duplicate replies dropped: {}",
        client.stats().resent.load(Ordering::Relaxed),
        client.stats().duplicates.load(Ordering::Relaxed)
    );
    let ok = lost.is_empty() && duplicated.is_empty() && failover.is_some();
    if ok {
        println!("check: every acknowledged write is present exactly once: OK");
    } else {
        println!(
            "check FAILED: {} lost ({:?}), {} duplicated ({:?})",
            lost.len(),
            lost.iter().take(5).collect::<Vec<_>>(),
            duplicated.len(),
            duplicated.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.role.as_deref() == Some("server") {
        let url = args.store.clone().unwrap_or_default();
        match CheckpointStore::open(&url, StoreOptions::default()).await {
            Ok(store) => serve(args, store).await.map(|()| true),
            Err(e) => Err(e.into()),
        }
    } else {
        demo(args).await
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
