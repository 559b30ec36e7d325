//! Hostile peers and damaged stores (issue 14): every probe of the bad-input review as a test.
//!
//! - node names chosen to collide with another node's segments;
//! - crafted stores for every CLI command (in `tests/hostile_cli.rs`, which runs the binary);
//! - damaged epoch records and leases against the leadership driver;
//! - frames after the handshake, connection floods and hostile registrations against a
//!   coordinator.
//!
//! Tests marked `#[ignore = "issue 14: fixed by the core rewrite"]` show defects that the
//! coordinator core rewrite (issue 12) fixes; they fail on today's core.

// A panic in a test (or its helpers) is a failed test, not a crash a user sees.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::node::{Node, NodeStatus};
use cohort::coordinator::service::{Service, ServiceConfig};
use cohort::coordinator::{Actor, Context, Error};
use cohort::{Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// A small bank, in process: accounts that pass money to accounts on the other node.

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Kick,
    Credit(i64),
}

struct Account {
    balance: i64,
    hops: u64,
    peers: Vec<ObjectId>,
}

#[async_trait]
impl Checkpointable for Account {
    fn type_name(&self) -> &'static str {
        "Account"
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new("Account", 1, (self.balance, self.hops)))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        (self.balance, self.hops) = state.decode()?;
        Ok(())
    }
}

#[async_trait]
impl Actor for Account {
    type Message = Msg;

    async fn handle(&mut self, message: Msg, ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        if let Msg::Credit(x) = message {
            self.balance += x;
        }
        self.hops += 1;
        // Keep some messages in flight across every cut without spinning two cores.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let to = &self.peers[self.hops as usize % self.peers.len()];
        let to = ctx.address::<Msg>(to).map_err(|e| ObjectError::Refused {
            reason: e.to_string(),
        })?;
        let send = (self.balance / 10).clamp(0, 1);
        self.balance -= send;
        ctx.send(&to, Msg::Credit(send))
            .map_err(|e| ObjectError::Refused {
                reason: e.to_string(),
            })
    }
}

fn oid(s: &str) -> ObjectId {
    ObjectId::new(s).unwrap()
}

async fn open(url: &str) -> CheckpointStore {
    CheckpointStore::open(
        url,
        StoreOptions {
            fsync: false,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Triggers until a checkpoint commits (attempts abort while nodes register).
async fn checkpoint(service: &Service, deadline: Instant) -> cohort::CheckpointId {
    loop {
        match service.trigger().await {
            Ok(id) => return id,
            Err(Error::Aborted { .. }) if Instant::now() < deadline => {
                let mut status = service.status();
                let _ = tokio::time::timeout(Duration::from_millis(50), status.changed()).await;
            }
            Err(e) => panic!("no checkpoint committed in time: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Writer names: node `X`'s channel state and node `X-ch`'s states.

/// Node `eu` records in-transit messages as channel state while a node named `eu-ch` writes
/// its states in the same round. Before the fix both wrote `segments/<id>/<round>/eu-ch-000000.seg`:
/// the checkpoints committed, and then failed verification with crc mismatches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_named_like_another_nodes_channel_writer_damages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("store").display().to_string();
    let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
    config.heartbeat_interval = Duration::from_millis(50);
    config.timeout = Duration::from_secs(5);
    let service = Service::start(open(&url).await, config).await.unwrap();
    let coordinator = service.local_addr().to_string();

    let names = ["eu", "eu-ch"];
    // Node `eu` hosts `a0-*`, node `eu-ch` hosts `a1-*`.
    let accounts: Vec<ObjectId> = (0..2)
        .flat_map(|n| (0..2).map(move |i| oid(&format!("a{n}-{i}"))))
        .collect();
    let mut nodes = Vec::new();
    for (n, name) in names.into_iter().enumerate() {
        let node = Node::builder(open(&url).await)
            .name(name)
            .coordinators(vec![coordinator.clone()])
            .build()
            .await
            .unwrap();
        for i in 0..2 {
            let id = oid(&format!("a{n}-{i}"));
            // Every account sends to the accounts of the other node only.
            let peers = accounts
                .iter()
                .filter(|a| !a.as_str().starts_with(&format!("a{n}-")))
                .cloned()
                .collect();
            node.spawn(
                id,
                Account {
                    balance: 1_000,
                    hops: 0,
                    peers,
                },
            )
            .unwrap();
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
        .expect("the node never ran")
        .unwrap();
        while !accounts.iter().all(|a| node.address::<Msg>(a).is_ok()) {
            assert!(
                Instant::now() < deadline,
                "the placement never listed every account"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for a in &accounts {
        let host = &nodes[usize::from(a.as_str().starts_with("a1-"))];
        for _ in 0..4 {
            host.address::<Msg>(a).unwrap().tell(Msg::Kick).unwrap();
        }
    }

    // Checkpoint until node `eu` recorded channel state in a committed checkpoint in which
    // node `eu-ch` wrote its states too: the round in which their keys used to meet.
    let reader = CheckpointStore::open_read_only(&url).await.unwrap();
    let mut met = 0;
    while met < 3 {
        let id = checkpoint(&service, deadline).await;
        let manifest = reader.read_manifest(id).await.unwrap();
        // Receivers record in-transit messages: those to `a0-*` are node `eu`'s.
        let eu_channel = manifest
            .in_transit
            .iter()
            .any(|m| m.to.as_str().starts_with("a0-"));
        let round = format!("/{}/", manifest.round);
        let eu_ch_states = manifest
            .objects
            .iter()
            .any(|(o, e)| o.as_str().starts_with("a1-") && e.location.segment.contains(&round));
        if eu_channel && eu_ch_states {
            met += 1;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint recorded node eu's channel state beside node eu-ch's states"
        );
    }
    for report in reader.verify_all().await.unwrap() {
        assert!(report.is_ok(), "{report}");
    }
    for node in &nodes {
        node.shutdown();
    }
    service.shutdown();
}
