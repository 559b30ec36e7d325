//! `failover_warm`: a warm-passive primary and backup as separate processes (heartbeat 50 ms,
//! activation 150 ms, local-disk store); one client writes continuously; the primary is
//! SIGKILLed; measured from the kill to the first successful reply, which only the new primary
//! can give. A member is this bench binary re-executed with [`ROLE_ENV`] set to `warm`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::replication::client::{ClientOptions, GroupClient};
use cohort::replication::server::{ReplicatedServer, ServerOptions, Service};
use cohort::replication::styles::ReplicationStyle;
use cohort::replication::{GroupConfig, GroupName, MemberId, MemberOptions};
use cohort::{Checkpointable, ObjectError};

use crate::entry::{Entry, Goal, Samples, ms};
use crate::ha_support::{Proc, address_in, store_dir};
use crate::{ROLE_ENV, SPEC_ENV, exit_with_parent};

const HEARTBEAT: Duration = Duration::from_millis(50);
const ACTIVATION: Duration = Duration::from_millis(150);
const GROUP: &str = "report";

/// The replicated service: a running sum of request lengths.
#[derive(Checkpointable, Default)]
struct Sum {
    total: u64,
}

#[async_trait]
impl Service for Sum {
    async fn execute(&mut self, request: &[u8]) -> Result<Bytes, ObjectError> {
        self.total += request.len() as u64;
        Ok(Bytes::copy_from_slice(&self.total.to_be_bytes()))
    }
}

/// The body of a member process; the spec is `store;member id;weight;seed,seed`. Prints
/// `member <addr>` once listening and `serving` whenever it becomes the primary.
pub(crate) async fn member_role(spec: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = spec.split(';').collect();
    let [url, id, weight, seeds] = parts[..] else {
        anyhow::bail!("a member spec has four ;-separated fields, not {spec:?}");
    };
    let store = CheckpointStore::open(url, StoreOptions::default()).await?;
    let config = GroupConfig::new(GROUP, 1)?
        .with_weight(weight.parse()?)
        .with_heartbeat_interval(HEARTBEAT)
        .with_activation_interval(ACTIVATION);
    let mut member = MemberOptions::new(config, MemberId::new(id)?, store);
    member.seeds = seeds
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let options = ServerOptions::new(ReplicationStyle::WarmPassive, member);
    let server = ReplicatedServer::start(options, Sum::default()).await?;
    println!("member {}", server.member_addr());
    let mut status = server.status();
    let announce = async {
        while status.changed().await.is_ok() {
            if status.borrow_and_update().serving.is_some() {
                println!("serving");
            }
        }
    };
    tokio::select! {
        () = announce => {}
        () = exit_with_parent() => {}
    }
    Ok(())
}

fn member(url: &str, id: &str, weight: u16, seed: Option<&str>) -> Proc {
    let mut cmd = Command::new(crate::this_exe());
    cmd.env(ROLE_ENV, "warm")
        .env(
            SPEC_ENV,
            format!("{url};{id};{weight};{}", seed.unwrap_or("")),
        )
        .env("RUST_LOG", "warn");
    Proc::spawn(id, cmd)
}

async fn one_failover() -> anyhow::Result<Duration> {
    let (_dir, url) = store_dir();
    let store = CheckpointStore::open(&url, StoreOptions::default()).await?;
    // The heavier member becomes the primary.
    let mut a = member(&url, "a", 30, None);
    let a_addr = address_in(
        &a.wait_for_line("member ", Duration::from_secs(20)),
        "member ",
    );
    a.wait_for_line("serving", Duration::from_secs(20));
    let b = member(&url, "b", 20, Some(&a_addr));
    b.wait_for_line("member ", Duration::from_secs(20));
    let client = GroupClient::new(ClientOptions::new(
        store,
        GroupName::new(GROUP)?,
        ReplicationStyle::WarmPassive,
    ))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (replied, mut replies) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                client.call(Bytes::from_static(b"w")).await?;
                let _ = replied.send(Instant::now());
            }
            anyhow::Ok(())
        }
    });
    // Steady state first: the backup has followed a committed line.
    for _ in 0..200 {
        replies.recv().await.context("the writer stopped")?;
    }
    a.child.kill().context("SIGKILL of the primary")?;
    let killed = Instant::now();
    let first = loop {
        let at = replies.recv().await.context("the writer stopped")?;
        if at > killed {
            break at - killed;
        }
    };
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    Ok(first)
}

/// `failover_warm`: median of `runs` failovers, against heartbeat + activation.
pub(crate) async fn failover_warm(runs: usize) -> anyhow::Result<Entry> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        samples.push(one_failover().await?);
    }
    let samples = Samples::new(samples).context("no runs")?;
    Ok(Entry::against(
        "failover_warm",
        ms(samples.quantile(0.5)),
        "ms",
        ("heartbeat + activation", ms(HEARTBEAT + ACTIVATION)),
        Goal::AtMost(250.0),
    )
    .with_note(format!(
        "median of {runs}, primary + warm backup processes, local disk with fsync: {}",
        samples.spread()
    )))
}
