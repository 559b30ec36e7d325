//! Hostile peers and damaged stores (issue 14): every probe of the bad-input review as a test.
//!
//! - node names chosen to collide with another node's segments;
//! - crafted stores for every CLI command (in `tests/hostile_cli.rs`, which runs the binary);
//! - damaged epoch records and leases against the leadership driver;
//! - frames after the handshake, connection floods and hostile registrations against a
//!   coordinator;
//! - a coordinator's frames against a node.
//!
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time"
)]
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

// ---------------------------------------------------------------------------------------------
// 7. A floor on the checkpoint interval.

/// An interval of 0 wrote a thousand manifests a second and grew the coordinator by 200 MB/s:
/// the in-process cohort and the service refuse intervals below `MIN_INTERVAL`.
#[tokio::test]
async fn the_checkpoint_interval_has_a_floor() {
    use cohort::coordinator::runtime::MIN_INTERVAL;
    use cohort::coordinator::{Cohort, Settings};

    for interval in [Duration::ZERO, Duration::from_millis(1), MIN_INTERVAL / 2] {
        let err = Cohort::builder(CheckpointStore::memory())
            .settings(Settings::default().interval(interval))
            .build()
            .await
            .err()
            .expect("an interval below the floor was accepted");
        assert!(err.to_string().contains("at least 100ms"), "{err}");

        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
        config.interval = Some(interval);
        let err = Service::start(CheckpointStore::memory(), config)
            .await
            .err()
            .expect("an interval below the floor was accepted");
        assert!(err.to_string().contains("at least 100ms"), "{err}");
    }
    let cohort = Cohort::builder(CheckpointStore::memory())
        .settings(Settings::default().interval(MIN_INTERVAL))
        .build()
        .await
        .unwrap();
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. A damaged newest epoch record or lease: leadership goes on, and never reuses a number.

mod leadership {
    use std::sync::Arc;
    use std::time::Duration;

    use cohort::checkpoint::object_store::memory::InMemory;
    use cohort::checkpoint::object_store::path::Path;
    use cohort::checkpoint::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use cohort::checkpoint::{CheckpointStore, EpochLease, StoreOptions};
    use cohort::coordinator::service::leadership::{
        Leadership, LeadershipConfig, LeaseTiming, Role, View,
    };
    use tokio::time::Instant;

    const LEASE: Duration = Duration::from_secs(1);

    fn config(name: &str) -> LeadershipConfig {
        LeadershipConfig {
            timing: LeaseTiming::new(LEASE).unwrap(),
            holder: name.to_owned(),
            address: Some(format!("{name}.test:7411")),
            clock: cohort::Clock::fixed(1_700_000_000_000),
        }
    }

    fn store_on(os: &Arc<dyn ObjectStore>) -> CheckpointStore {
        CheckpointStore::from_object_store(Arc::clone(os), Path::default(), StoreOptions::default())
    }

    async fn until(leadership: &Leadership, what: &str, pred: impl Fn(&View) -> bool) -> View {
        let mut rx = leadership.watch();
        match tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|v| pred(v))).await {
            Ok(Ok(view)) => view.clone(),
            _ => panic!("{what}: not within 60 s; view {:?}", leadership.view()),
        }
    }

    async fn damage(os: &Arc<dyn ObjectStore>, key: &str) {
        let path = Path::from(key);
        let mut bytes = os.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        os.put(&path, PutPayload::from(bytes)).await.unwrap();
    }

    /// The holder of epoch 1 is gone and its record rotted: a standby waits out the lease
    /// and takes epoch 2, never epoch 1 again. Before the fix every standby logged "cannot
    /// read the newest epoch" forever and nobody led.
    #[tokio::test(start_paused = true)]
    async fn a_damaged_record_of_a_gone_leader_is_skipped_with_the_next_epoch() {
        let os: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = store_on(&os);
        store.claim_epoch("gone", 0).await.unwrap();
        damage(&os, "epochs/00000000000000000001.epoch").await;

        let standby = Leadership::spawn(store_on(&os), config("a"));
        let started = Instant::now();
        let view = until(&standby, "a leads", |v| v.serving_epoch().is_some()).await;
        assert_eq!(view.serving_epoch(), Some(2));
        assert!(
            started.elapsed() >= LEASE,
            "it did not wait out epoch 1's lease"
        );
        let state = store.newest_epoch_state().await.unwrap().unwrap();
        assert_eq!(state.epoch, 2);
        assert_eq!(state.record.unwrap().holder, "a");
        standby.stop().await;
    }

    /// The lease of a gone leader rotted: a standby treats it as a lease that no longer moves.
    #[tokio::test(start_paused = true)]
    async fn a_damaged_lease_of_a_gone_leader_is_waited_out() {
        let os: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = store_on(&os);
        store.claim_epoch("gone", 0).await.unwrap();
        store
            .renew_epoch(&EpochLease {
                epoch: 1,
                renewal: 5,
                renewed_at_ms: 0,
            })
            .await
            .unwrap();
        damage(&os, "epochs/00000000000000000001.lease").await;

        let standby = Leadership::spawn(store_on(&os), config("a"));
        let view = until(&standby, "a leads", |v| v.serving_epoch().is_some()).await;
        assert_eq!(view.serving_epoch(), Some(2));
        standby.stop().await;
    }

    /// A live leader whose own epoch record rotted keeps leading (its renewals read the
    /// newest epoch's number only), a standby keeps following while the lease moves, and
    /// takes over with the next epoch once the leader stops.
    #[tokio::test(start_paused = true)]
    async fn a_live_leader_with_a_damaged_record_keeps_leading() {
        let os: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let leader = Leadership::spawn(store_on(&os), config("a"));
        let epoch = until(&leader, "a leads", |v| v.serving_epoch().is_some())
            .await
            .serving_epoch()
            .unwrap();
        damage(&os, &format!("epochs/{epoch:020}.epoch")).await;

        let standby = Leadership::spawn(store_on(&os), config("b"));
        tokio::time::sleep(LEASE * 5).await;
        assert_eq!(
            leader.view().serving_epoch(),
            Some(epoch),
            "the leader stepped down"
        );
        assert!(
            matches!(standby.view().role, Role::Following { .. }),
            "{:?}",
            standby.view()
        );

        leader.stop().await;
        let view = until(&standby, "b takes over", |v| v.serving_epoch().is_some()).await;
        assert_eq!(view.serving_epoch(), Some(epoch + 1));
        standby.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Crafted stores and arguments against every CLI command.

mod cli {
    use std::process::{Command, Output, Stdio};

    use cohort::checkpoint::object_store::path::Path;
    use cohort::checkpoint::object_store::{ObjectStoreExt, PutPayload};
    use cohort::checkpoint::{
        CheckpointStore, EntryLocation, EpochLease, Manifest, ObjectEntry, StoreOptions,
    };
    use cohort::{CheckpointId, ObjectId, Snapshot};

    /// The binary under test: this build's, or the one `COHORT_HOSTILE_BIN` names (an older
    /// build, to show that a test fails on it).
    pub(super) fn bin() -> String {
        std::env::var("COHORT_HOSTILE_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cohort").to_owned())
    }

    pub(super) fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env_remove("COHORT_STORE")
            .env_remove("COHORT_COORDINATOR")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    pub(super) fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Exit `code`, nothing on stdout, one short `error:` line and at most a hint; no panic.
    #[track_caller]
    pub(super) fn one_line_error(out: &Output, code: i32, needle: &str) {
        // At most 2,000 characters of it in a failure message.
        let stderr: String = text(&out.stderr).chars().take(2_000).collect();
        assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
        assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            !lines.is_empty() && lines.len() <= 2,
            "expected one error line and at most a hint:\n{stderr}"
        );
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
        assert!(
            lines[0].len() < 1_000,
            "a {} byte error line",
            lines[0].len()
        );
        no_panic(out);
    }

    #[track_caller]
    pub(super) fn no_panic(out: &Output) {
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("panicked")
                && !stderr.contains("internal error")
                && !stderr.contains("overflow"),
            "{stderr}"
        );
    }

    /// A store on local disk with checkpoints 1 and 2 (two accounts each, written through the
    /// library) under epoch 1, whose lease was renewed.
    pub(super) struct Crafted {
        /// Holds the store's directory until the test ends.
        _dir: tempfile::TempDir,
        pub(super) url: String,
        pub(super) store: CheckpointStore,
        pub(super) rt: tokio::runtime::Runtime,
        pub(super) manifests: Vec<Manifest>,
    }

    impl Crafted {
        pub(super) fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let url = dir.path().join("store").display().to_string();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let store = rt
                .block_on(CheckpointStore::open(&url, StoreOptions::default()))
                .unwrap();
            let mut manifests = Vec::new();
            rt.block_on(async {
                store.claim_epoch("fixture", 0).await.unwrap();
                store
                    .renew_epoch(&EpochLease {
                        epoch: 1,
                        renewal: 4,
                        renewed_at_ms: 0,
                    })
                    .await
                    .unwrap();
                for id in 1..=2u64 {
                    let cid = CheckpointId::new(id);
                    let round = format!("e1-r{id}");
                    let mut w = store.segment_writer(cid, &round, "node-1");
                    let mut m = Manifest::new(cid, 1, 1_700_000_000_000 + id, &round);
                    m.parent = (id > 1).then(|| CheckpointId::new(id - 1));
                    for a in ["account-1", "account-2"] {
                        let object = ObjectId::new(a).unwrap();
                        let location = w
                            .add(&object, &Snapshot::new("Account", 1, id as i64 * 10))
                            .await
                            .unwrap();
                        m.objects.insert(
                            object,
                            ObjectEntry {
                                type_name: "Account".into(),
                                version: 1,
                                generation: None,
                                location,
                            },
                        );
                    }
                    w.finish().await.unwrap();
                    store.commit(&m).await.unwrap();
                    manifests.push(m);
                }
            });
            Self {
                _dir: dir,
                url,
                store,
                rt,
                manifests,
            }
        }

        pub(super) fn cohort(&self, args: &[&str]) -> Output {
            run(args, &[("COHORT_STORE", self.url.as_str())])
        }

        pub(super) fn put(&self, key: &str, bytes: Vec<u8>) {
            let (os, _) = self.store.object_store();
            self.rt
                .block_on(os.put(&Path::from(key), PutPayload::from(bytes)))
                .unwrap();
        }

        pub(super) fn get(&self, key: &str) -> Vec<u8> {
            let (os, _) = self.store.object_store();
            self.rt
                .block_on(async { os.get(&Path::from(key)).await.unwrap().bytes().await })
                .unwrap()
                .to_vec()
        }

        /// Flips a byte in the middle of blob `key`.
        pub(super) fn flip(&self, key: &str) {
            let mut bytes = self.get(key);
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x10;
            self.put(key, bytes);
        }
    }

    /// A framed blob (manifest, epoch record) as the format describes it, crc and all.
    pub(super) fn frame(magic: &[u8; 8], version: u16, id: u64, body: &[u8]) -> Vec<u8> {
        let mut blob = magic.to_vec();
        blob.extend_from_slice(&version.to_le_bytes());
        blob.extend_from_slice(&id.to_le_bytes());
        blob.extend_from_slice(&(body.len() as u64).to_le_bytes());
        blob.extend_from_slice(body);
        let crc = crc32fast::hash(&blob);
        blob.extend_from_slice(&crc.to_le_bytes());
        blob
    }

    // -----------------------------------------------------------------------------------------
    // 3. A damaged newest epoch record or lease.

    /// `list`, `verify` and `status --store` name the damaged epoch record and lease instead of
    /// saying nothing (list, verify) or failing with "checkpoint 0" (status); `rollback` and
    /// `checkpoint --now` go on past them.
    #[test]
    fn a_damaged_epoch_record_and_lease_are_named_by_every_command() {
        let f = Crafted::new();
        let record = "epochs/00000000000000000001.epoch";
        let lease = "epochs/00000000000000000001.lease";
        f.flip(record);
        f.flip(lease);

        let out = f.cohort(&["list"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let listed = text(&out.stdout);
        assert!(listed.contains(&format!("{record} is damaged")), "{listed}");
        assert!(listed.contains(&format!("{lease} is damaged")), "{listed}");
        assert!(listed.contains("claims epoch 2"), "{listed}");
        let out = f.cohort(&["list", "--json"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stderr).contains(record), "{}", text(&out.stderr));

        let out = f.cohort(&["verify"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let verified = text(&out.stdout);
        assert!(verified.contains("checkpoint 2: ok"), "{verified}");
        assert!(verified.contains("epoch 1: DAMAGED"), "{verified}");
        assert!(verified.contains(&format!("blob {record}:")), "{verified}");
        let out = f.cohort(&["verify", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let epoch = &report[2];
        assert_eq!(epoch["epoch"], 1);
        assert!(epoch["checkpoint"].is_null());
        assert_eq!(epoch["ok"], false);
        assert_eq!(epoch["damaged"].as_array().unwrap().len(), 2);

        // No coordinator answers: shown from the store.
        let out = f.cohort(&["status", "--store", &f.url, "--coordinator", "127.0.0.1:9"]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let status = text(&out.stdout);
        assert!(!status.contains("checkpoint 0"), "{status}");
        assert!(status.contains("epoch 1: unknown"), "{status}");
        assert!(status.contains(&format!("{record} is damaged")), "{status}");
        assert!(status.contains("checkpoint 2"), "{status}");
        let out = f.cohort(&["status", "--coordinator", "127.0.0.1:9", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["damaged"].as_array().unwrap().len(), 2, "{json}");

        // `checkpoint --now` finds no address in the record: it says why it cannot reach a
        // coordinator, not "checkpoint 0".
        let out = run(
            &["checkpoint", "--now"],
            &[("COHORT_STORE", f.url.as_str())],
        );
        no_panic(&out);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("cannot reach a coordinator"),
            "{}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("checkpoint 0"));

        // A rollback claims epoch 2, after the damaged one, and commits under it.
        let out = f.cohort(&["rollback", "--to", "1", "--yes", "--force"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let state =
            f.rt.block_on(f.store.newest_epoch_state())
                .unwrap()
                .unwrap();
        assert_eq!(state.epoch, 2);
        assert!(state.record.is_ok());
        let out = f.cohort(&["verify"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    }

    // -----------------------------------------------------------------------------------------
    // 6. Lengths that overflow a u64.

    /// Checkpoint 3's manifest (crc and all correct) locates two entries whose lengths add up
    /// past a u64. Before the fix `list`, `show` and `verify` panicked with "attempt to add with
    /// overflow" (debug) or printed a wrapped size (release).
    #[test]
    fn lengths_that_overflow_are_damage_to_every_command() {
        let f = Crafted::new();
        let mut m = f.manifests[1].clone();
        m.id = CheckpointId::new(3);
        m.parent = Some(CheckpointId::new(2));
        m.round = "e1-r3".into();
        for entry in m.objects.values_mut() {
            entry.location = EntryLocation {
                segment: "segments/00000000000000000003/e1-r3/node-1-000000.seg".into(),
                offset: 22,
                len: u64::MAX / 2 + 1,
                crc: 1,
            };
        }
        let body = rmp_serde::to_vec_named(&m).unwrap();
        f.put(
            "manifests/00000000000000000003.manifest",
            frame(b"COHMAN\0\x01", 1, 3, &body),
        );

        let out = f.cohort(&["list"]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let listed = text(&out.stdout);
        assert!(listed.contains("checkpoint 3 is damaged"), "{listed}");
        assert!(listed.contains("2^64"), "{listed}");
        one_line_error(&f.cohort(&["show", "3"]), 1, "2^64");
        one_line_error(&f.cohort(&["inspect", "3", "account-1"]), 1, "2^64");
        one_line_error(&f.cohort(&["diff", "2", "3"]), 1, "2^64");
        let out = f.cohort(&["verify", "3"]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stdout).contains("2^64"), "{}", text(&out.stdout));
        let out = f.cohort(&["verify", "--json"]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(1));
        // A rollback to it is refused, and GC keeps its directory.
        let out = f.cohort(&["rollback", "--to", "3", "--yes", "--force"]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let out = f.cohort(&["gc", "--keep", "1"]);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let out = f.cohort(&["verify", "2"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    }

    // -----------------------------------------------------------------------------------------
    // 7. The smaller defects.

    /// A manifest of a newer format verifies as what it is, not as "DAMAGED (1 of 0 entries
    /// damaged)".
    #[test]
    fn a_newer_format_manifest_verifies_as_newer_format() {
        let f = Crafted::new();
        let newer = cohort::checkpoint::FORMAT_VERSION + 1;
        f.put(
            "manifests/00000000000000000003.manifest",
            frame(b"COHMAN\0\x01", newer, 3, b"\x80"),
        );
        let out = f.cohort(&["verify"]);
        assert_eq!(out.status.code(), Some(1));
        let verified = text(&out.stdout);
        assert!(!verified.contains("DAMAGED"), "{verified}");
        assert!(!verified.contains("of 0 entries"), "{verified}");
        assert!(
            verified.contains("checkpoint 3: NEWER FORMAT (written by a newer cohort; upgrade cohort to verify it)"),
            "{verified}"
        );
        assert!(
            verified.contains("3 checkpoints verified: 2 intact, 0 damaged, 1 of a newer format"),
            "{verified}"
        );
        let out = f.cohort(&["verify", "3", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report[0]["newer_format"], true);
    }

    /// A 100,000-character object or checkpoint id is refused with a short line.
    #[test]
    fn a_huge_id_gets_a_short_error_line() {
        let f = Crafted::new();
        let huge = "x".repeat(100_000);
        let out = f.cohort(&["inspect", "1", &huge]);
        one_line_error(&out, 2, "invalid object id");
        assert!(
            text(&out.stderr).contains("(100000 bytes)"),
            "{}",
            text(&out.stderr)
        );
        let digits = "9".repeat(100_000);
        for args in [
            vec!["show", digits.as_str()],
            vec!["verify", digits.as_str()],
            vec!["diff", "1", digits.as_str()],
            vec!["rollback", "--to", digits.as_str(), "--yes"],
        ] {
            let out = f.cohort(&args);
            one_line_error(&out, 2, "invalid checkpoint id");
        }
    }

    /// An invalid `AWS_ENDPOINT_URL` is a one-line error naming the variable. Before the fix
    /// object_store panicked on the first request ("internal error").
    #[test]
    fn an_invalid_endpoint_url_is_a_one_line_error() {
        for endpoint in ["not a url", "http://", "ftp://example.com", "http://[::1"] {
            let out = run(
                &["list", "--store", "s3://bucket/prefix"],
                &[
                    ("AWS_ENDPOINT_URL", endpoint),
                    ("AWS_ACCESS_KEY_ID", "k"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                    ("AWS_REGION", "us-east-1"),
                    ("AWS_EC2_METADATA_DISABLED", "true"),
                ],
            );
            one_line_error(&out, 2, "AWS_ENDPOINT_URL");
        }
    }

    /// `--interval` has a floor; below it `serve` refuses before it touches the store.
    #[test]
    fn serve_refuses_an_interval_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("store").display().to_string();
        for interval in ["0s", "1ms", "99ms"] {
            let out = run(&["serve", "--store", &url, "--interval", interval], &[]);
            one_line_error(&out, 2, "--interval");
        }
        assert!(!dir.path().join("store").exists());
    }
}

/// `cohort serve` at its default log level shows the operator's warnings: the fallback past a
/// damaged newest checkpoint and a refused connection. Before the fix its filter kept the
/// libraries at `error`, so both were silent without `-v`.
#[test]
fn serve_logs_the_operators_warnings_by_default() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let f = cli::Crafted::new();
    // Checkpoint 2's segment is cut short (damage a coordinator sees without reading the
    // states; rot inside an entry is found by the node that restores it): the recovery line
    // falls back to checkpoint 1.
    let segment = f.manifests[1].objects[&oid("account-1")]
        .location
        .segment
        .clone();
    let mut bytes = f.get(&segment);
    bytes.truncate(bytes.len() - 1);
    f.put(&segment, bytes);
    let mut child = Command::new(cli::bin())
        .args([
            "serve",
            "--store",
            &f.url,
            "--listen",
            "127.0.0.1:0",
            "--lease",
            "1s",
        ])
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _child = Kill(child);
    for (is_err, pipe) in [
        (false, Box::new(stdout) as Box<dyn std::io::Read + Send>),
        (true, Box::new(stderr)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send((is_err, line));
            }
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let next = |seen: &mut Vec<String>| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (is_err, line) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("timed out; output so far:\n{}", seen.join("\n")));
        seen.push(line.clone());
        (is_err, line)
    };
    // The listen address, from the first line on stdout.
    let addr = loop {
        let (is_err, line) = next(&mut seen);
        if !is_err && let Some(rest) = line.split("nodes connect to ").nth(1) {
            break rest.split(';').next().unwrap().to_owned();
        }
    };
    let mut warned_fallback = false;
    let mut warned_refusal = false;
    let mut probed = false;
    while !(warned_fallback && warned_refusal) {
        let (is_err, line) = next(&mut seen);
        if !is_err && line.contains("leading under epoch") && !probed {
            // Not a cohort peer: refused, and the operator should hear of it.
            let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
            tcp.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
            probed = true;
        }
        warned_fallback |= is_err && line.contains("WARN") && line.contains("damaged");
        warned_refusal |= is_err && line.contains("WARN") && line.contains("refused a connection");
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile registrations: limits on what a node registers, sessions that cannot be guessed, and
// nodes that leave without a trace when they held nothing.

mod registrations {
    use std::time::Duration;

    use cohort::ObjectId;
    use cohort::checkpoint::CheckpointStore;
    use cohort::coordinator::node::{Node, NodeStatus};
    use cohort::coordinator::service::protocol::{CoordinatorFrame, NodeFrame};
    use cohort::coordinator::service::{Service, ServiceConfig};
    use cohort::wire::{ConnectConfig, Role};
    use tokio::time::Instant;

    async fn service() -> Service {
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap());
        config.heartbeat_interval = Duration::from_millis(50);
        config.heartbeat_timeout = Duration::from_millis(500);
        Service::start(CheckpointStore::memory(), config)
            .await
            .unwrap()
    }

    /// Registers as node `name` over a raw connection; returns the coordinator's answer.
    async fn register(service: &Service, name: &str, peer_addr: String) -> CoordinatorFrame {
        let mut conn = ConnectConfig::new(Role::Node, name)
            .connect::<CoordinatorFrame, NodeFrame>(service.local_addr())
            .await
            .unwrap();
        conn.send(&NodeFrame::Register {
            session: None,
            peer_addr,
            objects: vec![ObjectId::new(format!("{name}-object")).unwrap()],
            types: Default::default(),
            factories: Vec::new(),
        })
        .await
        .unwrap();
        loop {
            match conn.recv().await.unwrap() {
                Some(CoordinatorFrame::Heartbeat) => {}
                Some(frame) => return frame,
                None => panic!("the coordinator closed the connection without answering"),
            }
        }
    }

    /// One registration with a 4 MiB peer address made every later manifest 4.2 MB (the
    /// state table records it): a peer address longer than a socket address is refused.
    #[tokio::test]
    async fn a_huge_peer_address_is_refused() {
        let service = service().await;
        let answer = register(&service, "huge", "1".repeat(4 << 20)).await;
        assert!(
            matches!(answer, CoordinatorFrame::Refused { .. }),
            "a 4 MiB peer address was accepted: {answer:?}"
        );
        service.shutdown();
    }

    /// Session ids were sequential from a random start: on a tokenless loopback coordinator
    /// another process could resume a node's session by guessing the next one.
    #[tokio::test]
    async fn session_ids_cannot_be_guessed() {
        let service = service().await;
        let mut sessions = Vec::new();
        for name in ["a", "b", "c"] {
            match register(&service, name, "127.0.0.1:1".into()).await {
                CoordinatorFrame::Welcome { session, .. } => sessions.push(session),
                other => panic!("{other:?}"),
            }
        }
        for pair in sessions.windows(2) {
            let gap = pair[0].abs_diff(pair[1]);
            assert!(gap > 1 << 20, "successive sessions {pair:?} are guessable");
        }
        service.shutdown();
    }

    /// A node with no objects that drops must neither stay in the state table for good nor
    /// trigger a cohort-wide recovery: it holds nothing to restore.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_node_without_objects_leaves_quietly() {
        let service = service().await;
        let node = Node::builder(CheckpointStore::memory())
            .name("empty")
            .coordinators(vec![service.local_addr().to_string()])
            .build()
            .await
            .unwrap();
        let mut status = node.status();
        tokio::time::timeout(
            Duration::from_secs(20),
            status.wait_for(|s| matches!(s, NodeStatus::Registered { .. })),
        )
        .await
        .unwrap()
        .unwrap();
        node.shutdown();
        // Lost after the heartbeat timeout, dead after another: then it must be gone.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut status = service.status();
        loop {
            let now = status.borrow().clone();
            assert_eq!(
                now.recoveries, 0,
                "an empty node's loss recovered the cohort"
            );
            if !now.table.nodes.contains_key("empty") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the lost node stayed in the state table: {:?}",
                now.table.nodes
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
        }
        service.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// A hostile coordinator: frames a node must refuse without acting on them.

mod coordinator_frames {
    use std::time::Duration;

    use cohort::CheckpointId;
    use cohort::checkpoint::CheckpointStore;
    use cohort::coordinator::engine::Round;
    use cohort::coordinator::node::{Node, NodeStatus};
    use cohort::coordinator::service::protocol::{CoordinatorFrame, NodeFrame};
    use cohort::wire::{Connection, ListenConfig, Role};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    type FromNode = Connection<NodeFrame, CoordinatorFrame>;

    /// The next frame from the node other than a heartbeat; `None` once the node closed the
    /// connection (or broke it).
    async fn next(conn: &mut FromNode) -> Option<NodeFrame> {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), conn.recv()).await {
                Err(_) => panic!("the node neither sent a frame nor closed the connection"),
                Ok(Ok(Some(NodeFrame::Heartbeat))) => {}
                Ok(Ok(frame)) => return frame,
                Ok(Err(_)) => return None,
            }
        }
    }

    /// Accepts the node's next connection and answers its registration.
    async fn welcome(accepted: &mut mpsc::UnboundedReceiver<FromNode>) -> FromNode {
        let mut conn = tokio::time::timeout(Duration::from_secs(20), accepted.recv())
            .await
            .expect("the node did not connect")
            .expect("the listener stopped");
        match next(&mut conn).await {
            Some(NodeFrame::Register { .. }) => {}
            other => panic!("the node's first frame was not a registration: {other:?}"),
        }
        conn.send(&CoordinatorFrame::Welcome {
            session: 7,
            resumed: false,
            heartbeat_ms: 50,
            timeout_ms: 20_000,
        })
        .await
        .unwrap();
        conn
    }

    fn prepare(objects: Option<Vec<cohort::ObjectId>>) -> CoordinatorFrame {
        CoordinatorFrame::Prepare {
            id: CheckpointId::new(1),
            round: Round(1),
            token: "hostile".into(),
            objects,
        }
    }

    /// A `Prepare` that says "the same participants as last time" on a connection that never
    /// listed any is a protocol error: the node must drop the connection and register again,
    /// not prepare a guessed list (an empty one would vote for none of its objects).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prepare_referring_to_a_list_never_sent_ends_the_connection() {
        let mut listen = ListenConfig::new("127.0.0.1:0".parse().unwrap());
        listen.role = Role::Coordinator;
        listen.accept_roles = vec![Role::Node];
        let listener = listen.bind().await.unwrap();
        let addr = listener.local_addr();
        let (tx, mut accepted) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(cohort::wire::serve(
            listener,
            move |conn: FromNode, _stop| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(conn);
                    Ok::<(), String>(())
                }
            },
            stop.clone(),
        ));
        let node = Node::builder(CheckpointStore::memory())
            .name("target")
            .coordinators(vec![addr.to_string()])
            .build()
            .await
            .unwrap();

        // First, a list: the node prepares it (and says so) and keeps the connection.
        let mut conn = welcome(&mut accepted).await;
        conn.send(&prepare(Some(Vec::new()))).await.unwrap();
        match next(&mut conn).await {
            Some(NodeFrame::Votes { .. }) => {}
            other => panic!("a listed prepare was not answered with votes: {other:?}"),
        }
        drop(conn);

        // A new connection: "the same list" refers to nothing it carried.
        let mut conn = welcome(&mut accepted).await;
        let mut status = node.status();
        status
            .wait_for(|s| matches!(s, NodeStatus::Registered { sessions: 2, .. }))
            .await
            .unwrap();
        conn.send(&prepare(None)).await.unwrap();
        if let Some(frame) = next(&mut conn).await {
            panic!(
                "the node acted on a prepare without a list instead of dropping the connection: {frame:?}"
            );
        }
        // And it comes back, registering again.
        drop(welcome(&mut accepted).await);
        node.shutdown();
        stop.cancel();
    }
}
