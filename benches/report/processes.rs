//! Figures with real processes on loopback: `coordination_remote` (the coordinator service and
//! 64 node processes) and `coordinator_failover` (two `cohort serve` on one store, SIGKILL of
//! the leader). A node is this bench binary re-executed with [`ROLE_ENV`] set to `node`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use cohort::checkpoint::{CheckpointStore, ManifestKind, StoreOptions};
use cohort::coordinator::node::{Node, NodeSettings};
use cohort::coordinator::service::{Service, ServiceConfig, ServiceStatus};

use crate::entry::{Entry, Goal, Samples, ms};
use crate::ha_support::{Proc, address_in, cohort_bin, poll, store_dir};
use crate::inproc::Blob;
use crate::{ROLE_ENV, SPEC_ENV, exit_with_parent};

/// What a node process is told, through [`SPEC_ENV`].
struct NodeSpec {
    name: String,
    store: String,
    coordinators: Vec<String>,
    objects: usize,
    /// The failover figure's node: durable store and quick heartbeats to follow a new leader;
    /// otherwise no fsync and the default heartbeats, like the service's in the figure.
    ha: bool,
    /// Registers the blob type (`NodeBuilder::host_type`): the node loss figure's nodes take
    /// a dead node's blobs.
    hosts_blobs: bool,
    /// MiB of state per object (`0`: empty), unchanging once spawned (referenced by every
    /// checkpoint after the first, not rewritten).
    mib_each: usize,
}

impl NodeSpec {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.name,
            self.store,
            self.coordinators.join(","),
            self.objects,
            self.ha,
            self.hosts_blobs,
            self.mib_each
        )
    }

    fn decode(spec: &str) -> anyhow::Result<NodeSpec> {
        let parts: Vec<&str> = spec.split('|').collect();
        let [
            name,
            store,
            coordinators,
            objects,
            ha,
            hosts_blobs,
            mib_each,
        ] = parts[..]
        else {
            anyhow::bail!("a node spec has seven |-separated fields, not {spec:?}");
        };
        Ok(NodeSpec {
            name: name.to_owned(),
            store: store.to_owned(),
            coordinators: coordinators.split(',').map(str::to_owned).collect(),
            objects: objects.parse()?,
            ha: ha.parse()?,
            hosts_blobs: hosts_blobs.parse()?,
            mib_each: mib_each.parse()?,
        })
    }

    fn spawn(&self) -> Proc {
        let mut cmd = Command::new(crate::this_exe());
        cmd.env(ROLE_ENV, "node")
            .env(SPEC_ENV, self.encode())
            .env("RUST_LOG", "warn");
        Proc::spawn(&self.name, cmd)
    }
}

/// The body of a node process: hosts `objects` empty blobs and runs until killed (or until the
/// report that started it is gone).
pub(crate) async fn node_role(spec: &str) -> anyhow::Result<()> {
    let spec = NodeSpec::decode(spec)?;
    let options = StoreOptions {
        fsync: spec.ha,
        ..StoreOptions::default()
    };
    let store = CheckpointStore::open(&spec.store, options).await?;
    // Quick to follow a new leader: the coordinator failover figure measures it.
    let settings = if spec.ha {
        crate::ha_support::quick_node_settings()
    } else {
        NodeSettings::default()
    };
    let mut builder = Node::builder(store)
        .name(spec.name.clone())
        .coordinators(spec.coordinators)
        .settings(settings);
    if spec.hosts_blobs {
        builder = builder.host_type(|_| Blob::empty());
    }
    let node = builder.build().await?;
    let states = crate::inproc::patterned(spec.objects, spec.mib_each << 20);
    for (i, data) in states.enumerate() {
        let id = cohort::ObjectId::new(format!("{}-blob-{i}", spec.name))?;
        let blob = if data.is_empty() {
            Blob::empty()
        } else {
            Blob::unchanging(data)
        };
        node.spawn(id, blob)?;
    }
    println!("node {} started", spec.name);
    exit_with_parent().await;
    Ok(())
}

/// `coordination_remote`: an empty checkpoint round across `nodes` node processes on loopback,
/// one tiny object each, median of the rounds. Local disk without fsync: the figure is the
/// protocol's (frames, captures, puts to the page cache, the manifest create), not the disk's.
pub(crate) async fn coordination_remote(nodes: usize) -> anyhow::Result<Entry> {
    const ROUNDS: usize = 200;
    let (_dir, url) = store_dir();
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let store = CheckpointStore::open(&url, options).await?;
    let mut config = ServiceConfig::new(([127, 0, 0, 1], 0).into());
    config.heartbeat_interval = Duration::from_millis(500);
    config.heartbeat_timeout = Duration::from_secs(10);
    let service = Service::start(store, config).await?;
    let coordinator = service.local_addr().to_string();
    let _nodes: Vec<Proc> = (0..nodes)
        .map(|i| {
            NodeSpec {
                name: format!("node-{i}"),
                store: url.clone(),
                coordinators: vec![coordinator.clone()],
                objects: 1,
                ha: false,
                hosts_blobs: false,
                mib_each: 0,
            }
            .spawn()
        })
        .collect();
    let mut status = service.status();
    let all_live = |s: &ServiceStatus| {
        s.table.placement.len() == nodes && s.table.nodes.values().all(|n| n.live)
    };
    tokio::time::timeout(Duration::from_secs(120), status.wait_for(all_live))
        .await
        .context("not every node registered within 120 s")??;
    // Warm up until a round commits (the nodes finish their first restore), then 10 more. A
    // failed attempt is retried after a backoff, not at once: a storm of aborted rounds starves
    // the sessions on two busy cores, and they drop.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0u32;
    while let Err(e) = service.trigger().await {
        attempts += 1;
        ensure!(
            Instant::now() < deadline,
            "no round committed within 60 s ({attempts} attempts); the last one: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        service.trigger().await?;
    }
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        service.trigger().await?;
        samples.push(started.elapsed());
    }
    service.shutdown();
    let samples = Samples::new(samples).context("no rounds")?;
    let median = ms(samples.quantile(0.5));
    Ok(
        Entry::absolute("coordination_remote", median, "ms", Goal::AtMost(10.0)).with_note(
            format!(
                "median round, {nodes} node processes x 1 object, loopback, local disk without fsync: {}",
                samples.spread()
            ),
        ),
    )
}

/// The heartbeat timeout of the node loss figure: the baseline.
const NODE_LOSS_TIMEOUT: Duration = Duration::from_secs(1);
/// Node processes and objects of the node loss figure.
const LOSS_NODES: usize = 4;
const LOSS_OBJECTS: usize = 64;

/// One run of `node_loss_recovery`: 4 node processes registering the blob type, 16 blobs
/// each; SIGKILL of one, no replacement; the time from the kill to the first committed
/// checkpoint that holds all 64 blobs (triggered every 10 ms: an attempt aborts at once while
/// the dead node's blobs have no host).
async fn one_node_loss() -> anyhow::Result<Duration> {
    let (_dir, url) = store_dir();
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let store = CheckpointStore::open(&url, options).await?;
    let mut config = ServiceConfig::new(([127, 0, 0, 1], 0).into());
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_timeout = NODE_LOSS_TIMEOUT;
    let service = Service::start(store.clone(), config).await?;
    let coordinator = service.local_addr().to_string();
    let mut nodes: Vec<Proc> = (0..LOSS_NODES)
        .map(|i| {
            NodeSpec {
                name: format!("node-{i}"),
                store: url.clone(),
                coordinators: vec![coordinator.clone()],
                objects: LOSS_OBJECTS / LOSS_NODES,
                ha: false,
                hosts_blobs: true,
                mib_each: 0,
            }
            .spawn()
        })
        .collect();
    let mut status = service.status();
    let all_live = |s: &ServiceStatus| {
        s.table.placement.len() == LOSS_OBJECTS
            && s.table.nodes.len() == LOSS_NODES
            && s.table.nodes.values().all(|n| n.live)
    };
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(all_live))
        .await
        .context("not every node registered within 60 s")??;
    let deadline = Instant::now() + Duration::from_secs(60);
    while service.trigger().await.is_err() {
        ensure!(Instant::now() < deadline, "no round committed within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = nodes.remove(1);
    victim.signal("KILL");
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    loop {
        if let Ok(id) = service.trigger().await {
            let manifest = store.read_manifest(id).await?;
            if manifest.objects.len() == LOSS_OBJECTS && manifest.kind == ManifestKind::Checkpoint {
                let took = killed.elapsed();
                service.shutdown();
                return Ok(took);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no checkpoint holding every object within 30 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `node_loss_recovery`: SIGKILL of one of 4 node processes holding 64 objects, no
/// replacement, to the next committed checkpoint holding every object; median of `runs`,
/// against the heartbeat timeout.
pub(crate) async fn node_loss_recovery(runs: usize) -> anyhow::Result<Entry> {
    let mut took = Vec::with_capacity(runs);
    for _ in 0..runs {
        took.push(one_node_loss().await?);
    }
    let took = Samples::new(took).context("no runs")?;
    Ok(Entry::against(
        "node_loss_recovery",
        ms(took.quantile(0.5)),
        "ms",
        ("heartbeat_timeout", ms(NODE_LOSS_TIMEOUT)),
        Goal::RatioAtMost(2.0),
    )
    .with_note(format!(
        "median of {runs}, {LOSS_NODES} node processes x {} blobs, SIGKILL of one, no replacement: the survivors create its blobs and restore them from the line; local disk without fsync; {}",
        LOSS_OBJECTS / LOSS_NODES,
        took.spread()
    )))
}

/// The lease of the coordinators in the failover figure: the baseline.
const LEASE: Duration = Duration::from_secs(1);
/// Objects on the node of the failover figure.
const HA_OBJECTS: usize = 4;

fn serve(name: &str, url: &str) -> (Proc, String) {
    let mut cmd = Command::new(cohort_bin());
    cmd.args(["serve", "--store", url, "--listen", "127.0.0.1:0"])
        .args(["--lease", &format!("{}ms", LEASE.as_millis())])
        .args(["--interval", "200ms", "--heartbeat", "100ms"])
        .args(["--heartbeat-timeout", "800ms"])
        .env("RUST_LOG", "warn");
    let proc = Proc::spawn(name, cmd);
    let line = proc.wait_for_line("nodes connect to", Duration::from_secs(20));
    let addr = address_in(&line, "nodes connect to ");
    (proc, addr)
}

/// Reads the store as another process would: the newest epoch claimed, and whether a
/// checkpoint (not a fence) of every object committed under `epoch` or later.
struct StoreWatch {
    rt: tokio::runtime::Runtime,
    store: CheckpointStore,
}

impl StoreWatch {
    fn open(url: &str) -> anyhow::Result<StoreWatch> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = rt.block_on(CheckpointStore::open_read_only(url))?;
        Ok(StoreWatch { rt, store })
    }

    fn newest_epoch(&self) -> Option<u64> {
        let newest = self.rt.block_on(self.store.newest_epoch()).ok()?;
        newest.map(|r| r.epoch)
    }

    fn committed_under(&self, epoch: u64) -> Option<()> {
        self.rt.block_on(async {
            let ids = self.store.committed_ids().await.ok()?;
            for id in ids.into_iter().rev() {
                let m = self.store.read_manifest(id).await.ok()?;
                if m.epoch < epoch {
                    return None;
                }
                if m.kind == ManifestKind::Checkpoint && m.objects.len() == HA_OBJECTS {
                    return Some(());
                }
            }
            None
        })
    }
}

/// One failover: from SIGKILL of the leading `cohort serve` to the next checkpoint committed
/// by the standby, with `mib_each` MiB in each of the node's objects; also returns when the
/// standby claimed the next epoch.
fn one_coordinator_failover(mib_each: usize) -> anyhow::Result<(Duration, Duration)> {
    let (_dir, url) = store_dir();
    let (mut a, a_addr) = serve("serve-a", &url);
    a.wait_for_line("leading under epoch 1", Duration::from_secs(10));
    let (b, b_addr) = serve("serve-b", &url);
    b.wait_for_line("standby: epoch 1", Duration::from_secs(10));
    let _node = NodeSpec {
        name: "node-1".into(),
        store: url.clone(),
        coordinators: vec![a_addr, b_addr],
        objects: HA_OBJECTS,
        ha: true,
        hosts_blobs: false,
        mib_each,
    }
    .spawn();
    let watch = StoreWatch::open(&url)?;
    poll(Duration::from_secs(60), || watch.committed_under(1))
        .context("no checkpoint of the node's objects under epoch 1 within 60 s")?;
    a.child.kill().context("SIGKILL of the leader")?;
    let killed = Instant::now();
    let claimed = poll(Duration::from_secs(30), || {
        watch
            .newest_epoch()
            .filter(|&e| e >= 2)
            .map(|_| killed.elapsed())
    })
    .context("the standby claimed no epoch within 30 s")?;
    poll(Duration::from_secs(30), || watch.committed_under(2))
        .context("no checkpoint under the standby's epoch within 30 s")?;
    Ok((killed.elapsed(), claimed))
}

/// `coordinator_failover`: SIGKILL of the leader → next committed checkpoint, median of
/// `runs`, against the lease.
pub(crate) fn coordinator_failover(runs: usize) -> anyhow::Result<Entry> {
    failover_with_state(runs, "coordinator_failover", 0)
}

/// `coordinator_failover_1gib`: [`coordinator_failover`] with 1 GiB of state in the line
/// (the node's objects of 256 MiB each), median of `runs`, against the lease.
pub(crate) fn coordinator_failover_1gib(runs: usize) -> anyhow::Result<Entry> {
    failover_with_state(runs, "coordinator_failover_1gib", 1024 / HA_OBJECTS)
}

fn failover_with_state(runs: usize, figure: &str, mib_each: usize) -> anyhow::Result<Entry> {
    let mut took = Vec::with_capacity(runs);
    let mut claims = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (t, c) = one_coordinator_failover(mib_each)?;
        took.push(t);
        claims.push(c);
    }
    let took = Samples::new(took).context("no runs")?;
    let claims = Samples::new(claims).context("no runs")?;
    Ok(Entry::against(
        figure,
        ms(took.quantile(0.5)),
        "ms",
        ("lease", ms(LEASE)),
        Goal::RatioAtMost(2.0),
    )
    .with_note(format!(
        "median of {runs}, two `cohort serve` + one node process ({HA_OBJECTS} objects of {mib_each} MiB), local disk with fsync, checkpoint every 200 ms, store polled every 10 ms; epoch claimed after median {:.0} ms; {}",
        ms(claims.quantile(0.5)),
        took.spread()
    )))
}
