//! The `cohort` CLI, end to end: transcripts (trycmd, `tests/cli/**/*.md`) and behaviour tests
//! that run the real binary against stores written by the fixture generator below, through the
//! checkpoint store's own `SegmentWriter` and `commit`.
//!
//! Every test runs on local disk. The `s3_*` tests run the same transcripts on the
//! S3-compatible test server when `COHORT_TEST_S3_URL` is set (`scripts/with-s3.sh` sets it);
//! in CI (`CI` set) a missing URL fails them instead of skipping them.
//!
//! To rewrite the transcripts after an intended output change:
//! `TRYCMD=overwrite cargo test -p cohort --test cli`, then review the diff.
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]
// A panic in a test (or its helpers) is a failed test, not a crash a user sees.
#![allow(clippy::unwrap_used)]

#[path = "support/examples.rs"]
mod examples;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cohort::checkpoint::object_store::path::Path as StorePath;
use cohort::checkpoint::object_store::{ObjectStoreExt, PutPayload};
use cohort::checkpoint::{
    CheckpointStore, EpochLease, InTransitEntry, Manifest, ManifestKind, ObjectEntry, StoreOptions,
};
use cohort::{CheckpointId, Checkpointable, ObjectId, Snapshot};
use serde::{Deserialize, Serialize};

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// Creation time of checkpoint 1; each next one is a minute later. Fixed, so transcripts are
/// stable.
const T0: u64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------------
// The fixture: a small bank.

#[derive(Checkpointable, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
    history: Vec<i64>,
}

#[derive(Checkpointable, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[checkpoint(version = 2)]
struct Ledger {
    /// Integer keys: the generic decoder turns them into text keys. (A BTreeMap, so that the
    /// encoded bytes and their crc are the same on every run.)
    entries: BTreeMap<u64, i64>,
    closed: bool,
}

#[derive(Serialize)]
struct Transfer {
    amount: i64,
}

fn account(owner: &str, history: &[i64]) -> Account {
    Account {
        owner: owner.into(),
        balance: history.iter().sum(),
        history: history.to_vec(),
    }
}

fn oid(s: &str) -> ObjectId {
    ObjectId::new(s).unwrap()
}

/// One object of a checkpoint: a new state, or the previous checkpoint's entry (incremental).
enum Obj<'a> {
    New(&'a dyn Checkpointable),
    Same,
}

/// Where a test's store lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
}

/// A store written by [`Fixture::bank`], and what it holds.
struct Fixture {
    url: String,
    store: CheckpointStore,
    rt: tokio::runtime::Runtime,
    /// The manifests committed, in id order.
    manifests: Vec<Manifest>,
    /// The accounts of checkpoint 1, for the rollback test.
    first: BTreeMap<ObjectId, Account>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// An empty store of `backend`, or `None` when S3 is not configured outside CI.
    fn empty(backend: Backend, name: &str) -> Option<Self> {
        let (url, dir) = match backend {
            Backend::Local => {
                let dir = tempfile::tempdir().unwrap();
                (dir.path().join("store").display().to_string(), Some(dir))
            }
            Backend::S3 => (s3_url(name)?, None),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt
            .block_on(CheckpointStore::open(&url, StoreOptions::default()))
            .unwrap();
        Some(Self {
            url,
            store,
            rt,
            manifests: Vec::new(),
            first: BTreeMap::new(),
            _dir: dir,
        })
    }

    /// Three checkpoints of a bank, by a coordinator whose epoch is an hour old:
    ///
    /// 1. account-1..3 and the ledger, all new;
    /// 2. account-1 and the ledger change, account-2 is shared with 1, account-3 is removed,
    ///    account-4 is added, and a transfer to account-1 is in transit;
    /// 3. account-2 changes, everything else is shared with 2.
    ///
    /// Plus the blobs of an aborted attempt at checkpoint 3, for GC to find.
    fn bank(backend: Backend, name: &str) -> Option<Self> {
        let mut f = Self::empty(backend, name)?;
        let store = f.store.clone();
        f.rt.block_on(async {
            store
                .claim_epoch("fixture-coordinator", T0 - 3_600_000)
                .await
                .unwrap();
        });
        let a1 = account("alice", &[100]);
        let a2 = account("bob", &[50]);
        let a3 = account("carol", &[]);
        let ledger = Ledger {
            entries: BTreeMap::from([(1, 100), (2, 50)]),
            closed: false,
        };
        f.first = BTreeMap::from([
            (oid("account-1"), a1.clone()),
            (oid("account-2"), a2.clone()),
            (oid("account-3"), a3.clone()),
        ]);
        f.commit(
            &[
                ("account-1", Obj::New(&a1)),
                ("account-2", Obj::New(&a2)),
                ("account-3", Obj::New(&a3)),
                ("ledger", Obj::New(&ledger)),
            ],
            &[],
        );

        let a1 = account("alice", &[100, -25]);
        let a4 = account("dave", &[25]);
        let ledger = Ledger {
            entries: BTreeMap::from([(1, 75), (2, 50), (4, 25)]),
            closed: false,
        };
        f.commit(
            &[
                ("account-1", Obj::New(&a1)),
                ("account-2", Obj::Same),
                ("account-4", Obj::New(&a4)),
                ("ledger", Obj::New(&ledger)),
            ],
            &[("account-2", "account-1", 7, 10)],
        );

        // An attempt at checkpoint 3 that aborted: its blobs are garbage.
        f.rt.block_on(async {
            let mut w = store.segment_writer(CheckpointId::new(3), "e1-r3a", "node-1");
            let lost = account("bob", &[50, 999]);
            w.add(&oid("account-2"), &lost.capture().await.unwrap())
                .await
                .unwrap();
            w.finish().await.unwrap();
        });

        let a2 = account("bob", &[50, 10]);
        f.commit(
            &[
                ("account-1", Obj::Same),
                ("account-2", Obj::New(&a2)),
                ("account-4", Obj::Same),
                ("ledger", Obj::Same),
            ],
            &[],
        );
        Some(f)
    }

    /// Five checkpoints of eight accounts with one account changed in each, committed through
    /// `CheckpointStore::commit`, which stores a manifest as a delta of the last full one while
    /// fewer than a quarter of the entries (here: at most one) differ from it:
    ///
    /// 1. all new: whole;
    /// 2. account-1 changes: a delta of 1;
    /// 3. account-1 changes again, still the one difference from 1: a delta of 1;
    /// 4. account-2 changes, two differences from 1: whole;
    /// 5. account-3 changes: a delta of 4.
    fn deltas(backend: Backend, name: &str) -> Option<Self> {
        let mut f = Self::empty(backend, name)?;
        let names: Vec<String> = (1..=8).map(|i| format!("account-{i}")).collect();
        let first: Vec<Account> = (1..=8).map(|i| account("owner", &[i * 10])).collect();
        let all_new: Vec<(&str, Obj<'_>)> = names
            .iter()
            .zip(&first)
            .map(|(n, a)| (n.as_str(), Obj::New(a)))
            .collect();
        f.commit(&all_new, &[]);
        for (i, changed) in [(2, 1), (3, 1), (4, 2), (5, 3)] {
            let new = account("owner", &[changed * 10, i]);
            let objects: Vec<(&str, Obj<'_>)> = names
                .iter()
                .enumerate()
                .map(|(k, n)| match k + 1 == changed as usize {
                    true => (n.as_str(), Obj::New(&new)),
                    false => (n.as_str(), Obj::Same),
                })
                .collect();
            f.commit(&objects, &[]);
        }
        Some(f)
    }

    /// Writes and commits the next checkpoint.
    fn commit(&mut self, objects: &[(&str, Obj<'_>)], in_transit: &[(&str, &str, u64, i64)]) {
        let id = CheckpointId::new(self.manifests.len() as u64 + 1);
        let prev = self.manifests.last().cloned();
        let round = format!("e1-r{id}");
        let store = self.store.clone();
        let manifest = self.rt.block_on(async {
            let mut writer = store.segment_writer(id, &round, "node-1");
            let created = T0 + (id.get() - 1) * 60_000;
            let mut m = Manifest::new(id, 1, created, round.clone());
            m.parent = prev.as_ref().map(|p| p.id);
            for (name, obj) in objects {
                let object = oid(name);
                let entry = match obj {
                    Obj::New(o) => {
                        let snapshot = o.capture().await.unwrap();
                        ObjectEntry {
                            type_name: o.type_name().into(),
                            version: o.schema_version(),
                            generation: None,
                            location: writer.add(&object, &snapshot).await.unwrap(),
                        }
                    }
                    Obj::Same => prev.as_ref().unwrap().objects[&object].clone(),
                };
                m.objects.insert(object, entry);
            }
            for (from, to, seq, amount) in in_transit {
                let message = Snapshot::new("Transfer", 1, Transfer { amount: *amount });
                let location = writer.add(&oid(to), &message).await.unwrap();
                m.in_transit.push(InTransitEntry {
                    from: oid(from),
                    to: oid(to),
                    seq: *seq,
                    location,
                });
            }
            writer.finish().await.unwrap();
            store.commit(&m).await.unwrap();
            m
        });
        self.manifests.push(manifest);
    }

    /// Runs the binary against this store.
    fn cohort(&self, args: &[&str]) -> Output {
        run(args, &[("COHORT_STORE", self.url.as_str())])
    }

    /// Runs the transcripts of `tests/cli/<group>/` against this store.
    fn transcripts(&self, group: &str) {
        let cases = trycmd::TestCases::new();
        cases
            .register_bin("cohort", std::path::PathBuf::from(BIN))
            .env("COHORT_STORE", &self.url)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "")
            .env("COLUMNS", "100")
            .case(format!("tests/cli/{group}/*.md"));
        cases.insert_var("[STORE]", self.url.clone()).unwrap();
        cases.run();
    }

    /// Flips one byte inside account-2's state in checkpoint 3. Returns the blob's key.
    fn flip_account_2_of_checkpoint_3(&self) -> String {
        let location = self.manifests[2].objects[&oid("account-2")]
            .location
            .clone();
        // A byte of the payload, just before the entry's trailing crc.
        let at = usize::try_from(location.offset + location.len - 5).unwrap();
        tamper(
            self,
            &location.segment,
            Some(&|b: &mut Vec<u8>| b[at] ^= 0x01),
        );
        location.segment.to_string()
    }
}

/// A fresh prefix on the S3 test server, or `None` (skip) outside CI when it is not configured.
fn s3_url(name: &str) -> Option<String> {
    match std::env::var("COHORT_TEST_S3_URL") {
        Ok(base) if !base.is_empty() => {
            // Unique per run, so reruns against a long-lived server start empty.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            Some(format!(
                "{}/cli-{name}-{}-{nanos}",
                base.trim_end_matches('/'),
                std::process::id()
            ))
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!("COHORT_TEST_S3_URL is not set in CI: run the tests under scripts/with-s3.sh")
        }
        _ => {
            eprintln!("skipping: COHORT_TEST_S3_URL is not set (run under scripts/with-s3.sh)");
            None
        }
    }
}

/// Runs the binary with `env` on top of a clean, deterministic environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("COHORT_STORE")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "")
        // Backtraces must never reach the user, whatever this says.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The error contract: exit `code`, nothing on stdout, one `error:` line on stderr and at most
/// a `hint:` line after it; no panic, no backtrace.
#[track_caller]
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "expected one error line and at most a hint:\n{stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines.get(1).is_none_or(|l| l.starts_with("hint: ")),
        "{stderr}"
    );
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

fn decode_accounts(f: &Fixture, manifest: &Manifest) -> BTreeMap<ObjectId, Account> {
    let states = f.rt.block_on(f.store.read_states(manifest)).unwrap();
    states
        .into_iter()
        .filter(|(_, s)| s.tag().type_name == "Account")
        .map(|(id, s)| (id, s.decode::<Account>().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Transcripts

#[test]
fn help_transcripts() {
    let f = Fixture::empty(Backend::Local, "help").unwrap();
    f.transcripts("help");
}

#[test]
fn read_transcripts_local() {
    let f = Fixture::bank(Backend::Local, "read").unwrap();
    f.transcripts("read");
}

#[test]
fn s3_read_transcripts() {
    if let Some(f) = Fixture::bank(Backend::S3, "read") {
        f.transcripts("read");
    }
}

fn damage(backend: Backend) {
    let Some(f) = Fixture::bank(backend, "damage") else {
        return;
    };
    let blob = f.flip_account_2_of_checkpoint_3();

    let out = f.cohort(&["verify"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.contains("crc mismatch"))
        .unwrap_or_else(|| panic!("no damage line in:\n{stdout}"));
    assert!(
        line.contains("checkpoint 3") && line.contains("object account-2") && line.contains(&blob),
        "{line}"
    );
    // Checkpoint 2 shares nothing damaged.
    assert_eq!(f.cohort(&["verify", "2"]).status.code(), Some(0));
    f.transcripts("damage");
}

#[test]
fn flipped_byte_makes_verify_exit_1_naming_object_and_blob() {
    damage(Backend::Local);
}

#[test]
fn s3_flipped_byte_makes_verify_exit_1_naming_object_and_blob() {
    damage(Backend::S3);
}

/// An in-place change to a blob's bytes.
type Edit<'a> = &'a dyn Fn(&mut Vec<u8>);

/// Applies `change` to the blob at `key` (relative to the store's prefix), or deletes it,
/// through the object store, so that the same code damages local and S3 stores.
fn tamper(f: &Fixture, key: &str, change: Option<Edit<'_>>) {
    let (inner, prefix) = f.store.object_store();
    let path = if prefix.as_ref().is_empty() {
        StorePath::from(key)
    } else {
        StorePath::from(format!("{prefix}/{key}"))
    };
    f.rt.block_on(async {
        match change {
            None => inner.delete(&path).await.unwrap(),
            Some(change) => {
                let mut bytes = inner
                    .get(&path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .to_vec();
                change(&mut bytes);
                inner.put(&path, PutPayload::from(bytes)).await.unwrap();
            }
        }
    });
}

#[test]
fn a_damaged_message_in_transit_is_shown_as_such_and_export_refuses() {
    let f = Fixture::bank(Backend::Local, "message-damage").unwrap();
    let message = f.manifests[1].in_transit[0].location.clone();
    let at = usize::try_from(message.offset + message.len - 5).unwrap();
    tamper(&f, &message.segment, Some(&|b: &mut Vec<u8>| b[at] ^= 0x01));

    // show still shows the checkpoint, and says which message is damaged.
    let out = f.cohort(&["show", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("the message account-2 -> account-1 #7 is damaged: ")
            && shown.contains("crc"),
        "{shown}"
    );
    let json = json(&f.cohort(&["show", "2", "--json"]));
    assert_eq!(json["in_transit"][0]["message"], serde_json::Value::Null);
    assert!(
        json["in_transit"][0]["damage"]
            .as_str()
            .unwrap()
            .contains(&*message.segment)
    );
    // The objects are intact: export refuses anyway, and writes nothing.
    let out = f.cohort(&["export", "2"]);
    assert_one_line_error(&out, 1, &message.segment);
}

#[test]
fn missing_truncated_and_corrupt_manifest_blobs_are_named() {
    let f = Fixture::bank(Backend::Local, "faults").unwrap();
    // Checkpoint 1's segment is missing (2 still shares account-2 from it), 3's is truncated,
    // and 2's manifest has a flipped byte.
    let seg1 = f.manifests[0].objects[&oid("account-1")]
        .location
        .segment
        .clone();
    let seg3 = f.manifests[2].objects[&oid("account-2")]
        .location
        .segment
        .clone();
    tamper(&f, &seg1, None);
    tamper(&f, &seg3, Some(&|b: &mut Vec<u8>| b.truncate(b.len() - 3)));
    let manifest2 = "manifests/00000000000000000002.manifest";
    tamper(&f, manifest2, Some(&|b: &mut Vec<u8>| b[30] ^= 0x80));

    let out = f.cohort(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds = |i: usize| -> Vec<(String, String)> {
        reports[i]["damaged"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_owned(),
                    d["blob"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert!(
        kinds(0).iter().all(|(k, b)| k == "missing" && **b == *seg1),
        "{reports}"
    );
    assert_eq!(kinds(0).len(), 4, "{reports}");
    assert!(
        kinds(1).iter().any(|(_, b)| b == manifest2),
        "the damaged manifest is named: {reports}"
    );
    assert_eq!(
        kinds(2),
        vec![("truncated".to_owned(), seg3.to_string())],
        "{reports}"
    );

    // No checkpoint verifies, so there is no recovery line; every row says what is wrong.
    let out = f.cohort(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(!listed.contains("recovery line"), "{listed}");
    for (id, why) in [
        (
            3,
            format!("is damaged: object account-2, blob {seg3}: truncated"),
        ),
        (2, format!("is damaged: blob {manifest2}: crc mismatch")),
        (
            1,
            format!("is damaged: object account-1, blob {seg1}: missing"),
        ),
    ] {
        let line = format!("checkpoint {id} {why}");
        assert!(listed.contains(&line), "{line:?} not in:\n{listed}");
    }
    // Reading the damaged manifest is damage found (1), not a usage error.
    assert_one_line_error(&f.cohort(&["show", "2"]), 1, manifest2);
}

fn deltas(backend: Backend) {
    let Some(f) = Fixture::deltas(backend, "delta") else {
        return;
    };
    let stored: Vec<Option<u64>> = (1..=5)
        .map(|id| {
            f.rt.block_on(f.store.manifest_base(CheckpointId::new(id)))
                .unwrap()
                .map(|b| b.get())
        })
        .collect();
    assert_eq!(stored, [None, Some(1), Some(1), None, Some(4)]);
    f.transcripts("delta");

    let list: serde_json::Value =
        serde_json::from_slice(&f.cohort(&["list", "--json"]).stdout).unwrap();
    let rows: Vec<(u64, &str, Option<u64>)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap(),
                e["stored"].as_str().unwrap(),
                e["delta_of"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (5, "delta", Some(4)),
            (4, "whole", None),
            (3, "delta", Some(1)),
            (2, "delta", Some(1)),
            (1, "whole", None)
        ]
    );
    // `show` gives the resolved manifest: every object, not only the delta's one.
    let show: serde_json::Value =
        serde_json::from_slice(&f.cohort(&["show", "3", "--json"]).stdout).unwrap();
    assert_eq!(
        (&show["stored"], &show["delta_of"]),
        (&"delta".into(), &1.into())
    );
    assert_eq!(show["objects"].as_array().unwrap().len(), 8);
}

#[test]
fn deltas_are_listed_and_shown_with_their_base() {
    deltas(Backend::Local);
}

#[test]
fn s3_deltas_are_listed_and_shown_with_their_base() {
    deltas(Backend::S3);
}

#[test]
fn a_delta_whose_base_is_damaged_is_reported_as_base_unusable() {
    let f = Fixture::deltas(Backend::Local, "base").unwrap();
    let base = "manifests/00000000000000000001.manifest";
    tamper(&f, base, Some(&|b: &mut Vec<u8>| b[40] ^= 0x01));

    let out = f.cohort(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = |id: usize| &reports[id - 1]["damaged"][0];
    assert_eq!(first(1)["kind"], "crc_mismatch", "{reports}");
    assert_eq!(first(1)["blob"], base);
    assert!(first(1).get("base").is_none(), "{reports}");
    for id in [2, 3] {
        let d = first(id);
        assert_eq!(d["kind"], "base_unusable", "{reports}");
        assert_eq!(d["base"], base, "{reports}");
        assert_eq!(d["blob"], format!("manifests/{:020}.manifest", id));
        assert!(d["problem"].as_str().unwrap().contains(base), "{d}");
    }
    assert_eq!(reports[3]["ok"], true);
    assert_eq!(reports[4]["ok"], true);

    // `list` still says how the unreadable deltas are stored, and that they are damaged.
    let out = f.cohort(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let row = |id: u64| {
        listed
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row {id} in:\n{listed}"))
            .to_owned()
    };
    for id in [2, 3] {
        assert!(
            row(id).contains("delta of 1") && row(id).ends_with("damaged"),
            "{listed}"
        );
    }
    assert!(
        row(5).contains("delta of 4") && row(5).ends_with("recovery line"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("checkpoint 2 is damaged: blob manifests/00000000000000000002.manifest: a delta whose base manifest {base} is unusable")),
        "{listed}"
    );
    assert_one_line_error(&f.cohort(&["show", "3"]), 1, base);
}

/// CRC-32 (IEEE, as crc32fast computes it), bit by bit: the frame's trailer.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Checkpoint `id` as a newer cohort would write it: a manifest header of a format version this
/// build does not know.
fn write_future_manifest(f: &Fixture, id: u64) -> String {
    let key = format!("manifests/{id:020}.manifest");
    let body = b"\x81\xa7unknown\xc0";
    let mut blob = b"COHMAN\0\x01".to_vec();
    blob.extend_from_slice(&(cohort::checkpoint::FORMAT_VERSION + 1).to_le_bytes());
    blob.extend_from_slice(&id.to_le_bytes());
    blob.extend_from_slice(&(body.len() as u64).to_le_bytes());
    blob.extend_from_slice(body);
    let crc = crc32(&blob);
    blob.extend_from_slice(&crc.to_le_bytes());
    let (inner, prefix) = f.store.object_store();
    let path = if prefix.as_ref().is_empty() {
        StorePath::from(key.as_str())
    } else {
        StorePath::from(format!("{prefix}/{key}"))
    };
    f.rt.block_on(inner.put(&path, PutPayload::from(blob)))
        .unwrap();
    key
}

#[test]
fn a_manifest_of_a_newer_format_stops_the_recovery_line_and_is_not_damage() {
    let f = Fixture::deltas(Backend::Local, "future").unwrap();
    let key = write_future_manifest(&f, 6);
    let newer = cohort::checkpoint::FORMAT_VERSION + 1;

    let out = f.cohort(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(!listed.contains("recovery line "), "{listed}");
    assert!(listed.contains("newer format"), "{listed}");
    assert!(
        listed.contains(&format!(
            "checkpoint 6 was written by a newer cohort: {key}"
        )),
        "{listed}"
    );
    assert!(
        listed.contains("no recovery line: this build cannot read a newer checkpoint"),
        "{listed}"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&f.cohort(&["list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["id"], 6);
    assert_eq!(list[0]["newer_format"], true);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|e| e["recovery_line"] == false)
    );
    assert!(list[1]["damage"].is_null(), "{list}");

    let out = f.cohort(&["verify", "6", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["damaged"][0]["kind"], "future_format");
    assert_eq!(report[0]["damaged"][0]["blob"], key.as_str());

    let out = f.cohort(&["show", "6"]);
    assert_one_line_error(&out, 2, &format!("format version {newer}"));
    assert!(
        text(&out.stderr).contains("upgrade cohort"),
        "{}",
        text(&out.stderr)
    );
    // A rollback would move past it: refused, nothing written.
    let before = f.rt.block_on(f.store.committed_ids()).unwrap();
    let out = f.cohort(&["rollback", "--to", "5", "--yes", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&key), "{}", text(&out.stderr));
    assert_eq!(f.rt.block_on(f.store.committed_ids()).unwrap(), before);
}

fn rollback(backend: Backend) {
    let Some(f) = Fixture::bank(backend, "rollback") else {
        return;
    };
    let before = f.rt.block_on(f.store.committed_ids()).unwrap();

    // Off a terminal, without --yes: refused, nothing written.
    let out = f.cohort(&["rollback", "--to", "1"]);
    assert_one_line_error(&out, 1, "without confirmation");
    assert_eq!(f.rt.block_on(f.store.committed_ids()).unwrap(), before);

    // The transcript rolls back to 1 with --yes, then lists and diffs.
    f.transcripts("rollback");

    // What recovery reads now is checkpoint 1's state, and history is kept.
    let line = f.rt.block_on(f.store.recovery_line()).unwrap().unwrap();
    assert_eq!(line.manifest.id, CheckpointId::new(4));
    assert_eq!(
        line.manifest.kind,
        ManifestKind::Rollback {
            to: CheckpointId::new(1)
        }
    );
    assert_eq!(decode_accounts(&f, &line.manifest), f.first);
    assert_eq!(
        f.rt.block_on(f.store.committed_ids()).unwrap().len(),
        before.len() + 1
    );
}

#[test]
fn rollback_then_recovery_holds_the_target_state() {
    rollback(Backend::Local);
}

#[test]
fn s3_rollback_then_recovery_holds_the_target_state() {
    rollback(Backend::S3);
}

/// A coordinator's lease renewals, from another thread, until dropped.
struct Renewing {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Renewing {
    fn start(store: CheckpointStore, epoch: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut renewal = 0;
                while !flag.load(Ordering::Relaxed) {
                    renewal += 1;
                    let lease = EpochLease {
                        epoch,
                        renewal,
                        renewed_at_ms: T0,
                    };
                    store.renew_epoch(&lease).await.unwrap();
                    // The coordinator's renewal timer (lease / 3), not a synchronisation.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Renewing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[test]
fn rollback_refuses_while_a_coordinator_holds_the_lease() {
    let f = Fixture::bank(Backend::Local, "lease").unwrap();
    let claimed = f.rt.block_on(f.store.claim_epoch("node-7", T0)).unwrap();
    let before = f.rt.block_on(f.store.committed_ids()).unwrap();

    // A live coordinator renews its lease: refused, and nothing written.
    let renewing = Renewing::start(f.store.clone(), claimed.epoch);
    let out = f.cohort(&["rollback", "--to", "2", "--yes", "--lease", "5s"]);
    assert_one_line_error(
        &out,
        1,
        "coordinator \"node-7\" renewed the lease of epoch 2 while we watched",
    );
    assert!(text(&out.stderr).contains("--force"));
    assert!(text(&out.stderr).contains("--live"));
    assert_eq!(f.rt.block_on(f.store.committed_ids()).unwrap(), before);

    // --live needs a leader that answers: none does here, so nothing is written.
    let out = f.cohort(&[
        "rollback",
        "--to",
        "2",
        "--yes",
        "--live",
        "--coordinator",
        "127.0.0.1:1",
    ]);
    assert_one_line_error(&out, 1, "--live: no coordinator leads at 127.0.0.1:1");
    assert_eq!(f.rt.block_on(f.store.committed_ids()).unwrap(), before);

    // A rollback to a damaged checkpoint is refused even with --force.
    f.flip_account_2_of_checkpoint_3();
    let out = f.cohort(&["rollback", "--to", "3", "--yes", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("damaged checkpoint 3"),
        "{}",
        text(&out.stderr)
    );

    // --force rolls back under the live coordinator, with a newer epoch that fences it.
    let out = f.cohort(&["rollback", "--to", "2", "--yes", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("warning: not checking the lease"));
    let line = f.rt.block_on(f.store.recovery_line()).unwrap().unwrap();
    assert_eq!(line.manifest.epoch, claimed.epoch + 1);
    assert_eq!(
        line.manifest.kind,
        ManifestKind::Rollback {
            to: CheckpointId::new(2)
        }
    );

    // Once the coordinator is gone its lease stops moving, and the rollback goes ahead after
    // watching for the lease duration.
    drop(renewing);
    let out = f.cohort(&["rollback", "--to", "1", "--yes", "--lease", "300ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = f.rt.block_on(f.store.recovery_line()).unwrap().unwrap();
    assert_eq!(decode_accounts(&f, &line.manifest), f.first);
}

fn gc(backend: Backend) {
    let Some(f) = Fixture::bank(backend, "gc") else {
        return;
    };
    // The rollback manifest (4) references checkpoint 1's segments: GC must keep them although
    // checkpoint 1 itself expires.
    let out = f.cohort(&["rollback", "--to", "1", "--yes", "--lease", "100ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    f.transcripts("gc");

    let store = &f.store;
    let ids = f.rt.block_on(store.committed_ids()).unwrap();
    assert_eq!(ids, vec![CheckpointId::new(4)]);
    let (inner, prefix) = store.object_store();
    for id in ids {
        let m = f.rt.block_on(store.read_manifest(id)).unwrap();
        for l in m.locations() {
            let path = if prefix.as_ref().is_empty() {
                StorePath::from(&*l.segment)
            } else {
                StorePath::from(format!("{prefix}/{}", l.segment))
            };
            f.rt.block_on(inner.head(&path)).unwrap_or_else(|e| {
                panic!("gc deleted {} that checkpoint {id} needs: {e}", l.segment)
            });
        }
        assert!(f.rt.block_on(store.verify(id)).unwrap().is_ok());
    }
    let line = f.rt.block_on(store.recovery_line()).unwrap().unwrap();
    assert_eq!(decode_accounts(&f, &line.manifest), f.first);
}

#[test]
fn gc_never_deletes_what_a_retained_checkpoint_references() {
    gc(Backend::Local);
}

#[test]
fn s3_gc_never_deletes_what_a_retained_checkpoint_references() {
    gc(Backend::S3);
}

#[test]
fn pins_through_the_cli_outlive_gc() {
    let f = Fixture::bank(Backend::Local, "pins-cli").unwrap();
    f.transcripts("pins");
    // Checkpoint 1 was pinned through GC, then unpinned; checkpoint 2 was expired.
    assert_eq!(
        f.rt.block_on(f.store.committed_ids()).unwrap(),
        vec![CheckpointId::new(1), CheckpointId::new(3)]
    );
    assert!(f.rt.block_on(f.store.pins()).unwrap().is_empty());
    for id in [1, 3] {
        assert!(
            f.rt.block_on(f.store.verify(CheckpointId::new(id)))
                .unwrap()
                .is_ok()
        );
    }
}

#[test]
fn gc_keeps_pinned_checkpoints() {
    let f = Fixture::bank(Backend::Local, "pins").unwrap();
    f.rt.block_on(f.store.pin(CheckpointId::new(1))).unwrap();
    let out = f.cohort(&["gc", "--keep", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["retained"], serde_json::json!([1, 3]));
    assert_eq!(report["expired"], serde_json::json!([2]));
    assert!(report["bytes_freed"].as_u64().unwrap() > 0);
    for id in [1, 3] {
        assert!(
            f.rt.block_on(f.store.verify(CheckpointId::new(id)))
                .unwrap()
                .is_ok()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Errors: one line, exit 2

#[test]
fn bad_url_is_a_one_line_error() {
    let out = run(&["list", "--store", "ftp://example.invalid/x"], &[]);
    assert_one_line_error(&out, 2, "invalid store URL");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here").display().to_string();
    let out = run(&["verify", "--store", &missing], &[]);
    assert_one_line_error(&out, 2, "not found");
    // Writing commands do not create a mistyped store.
    let out = run(&["gc", "--keep", "1", "--store", &missing], &[]);
    assert_one_line_error(&out, 2, "not found");
    let out = run(
        &["rollback", "--to", "1", "--yes", "--store", &missing],
        &[],
    );
    assert_one_line_error(&out, 2, "not found");
    assert!(!std::path::Path::new(&missing).exists());
}

#[test]
fn missing_store_and_bad_arguments_are_usage_errors() {
    let out = run(&["list"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--store <URL>"));
    let out = run(&["show", "not-a-number", "--store", "/tmp"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid checkpoint id"));
    let out = run(&["gc", "--keep", "0", "--store", "/tmp"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_ids_are_one_line_errors() {
    let f = Fixture::bank(Backend::Local, "unknown").unwrap();
    assert_one_line_error(&f.cohort(&["show", "99"]), 2, "checkpoint 99");
    assert_one_line_error(
        &f.cohort(&["inspect", "2", "account-3"]),
        2,
        "no object account-3",
    );
    assert_one_line_error(&f.cohort(&["diff", "1", "42"]), 2, "checkpoint 42");
    assert_one_line_error(
        &f.cohort(&["rollback", "--to", "9", "--yes"]),
        2,
        "checkpoint 9",
    );
}

#[test]
fn unreachable_endpoint_is_a_one_line_error() {
    // Port 9 (discard) on loopback: connection refused. Explicit dummy credentials, so that the
    // client never looks for instance metadata.
    let env = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "cohort-test"),
        ("AWS_SECRET_ACCESS_KEY", "cohort-test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"),
    ];
    let out = run(&["list", "--store", "s3://nowhere/prefix"], &env);
    assert_one_line_error(&out, 2, "127.0.0.1:9");
}

// ---------------------------------------------------------------------------------------------
// Output conventions

#[test]
fn colour_only_when_asked_off_a_terminal() {
    let f = Fixture::bank(Backend::Local, "colour").unwrap();
    let plain = f.cohort(&["list"]);
    assert!(!plain.stdout.contains(&0x1b), "{}", text(&plain.stdout));
    let coloured = f.cohort(&["list", "--color", "always"]);
    assert!(coloured.stdout.contains(&0x1b));
    let never = f.cohort(&["verify", "--color", "never"]);
    assert!(!never.stdout.contains(&0x1b));
}

#[test]
fn json_outputs_have_the_documented_fields() {
    let f = Fixture::bank(Backend::Local, "json").unwrap();
    let list: serde_json::Value =
        serde_json::from_slice(&f.cohort(&["list", "--json"]).stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for (entry, id) in list.iter().zip([3, 2, 1]) {
        assert_eq!(entry["id"], id);
        for field in ["objects", "bytes", "created_at"] {
            assert!(!entry[field].is_null(), "{field} missing in {entry}");
        }
    }
    assert_eq!(list[0]["recovery_line"], true);
    assert_eq!(list[0]["incremental"], true);
    assert_eq!(list[2]["incremental"], false);

    let show: serde_json::Value =
        serde_json::from_slice(&f.cohort(&["show", "2", "--json"]).stdout).unwrap();
    let objects = show["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 4);
    for o in objects {
        for field in ["id", "type", "version", "bytes"] {
            assert!(!o[field].is_null(), "{field} missing in {o}");
        }
    }
    assert_eq!(show["in_transit"][0]["to"], "account-1");

    let state: serde_json::Value =
        serde_json::from_slice(&f.cohort(&["inspect", "2", "ledger"]).stdout).unwrap();
    assert_eq!(
        state,
        serde_json::json!({"entries": {"1": 75, "2": 50, "4": 25}, "closed": false})
    );
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let f = Fixture::bank(Backend::Local, "pipe").unwrap();
    let mut child = Command::new(BIN)
        .args(["show", "2", "--json"])
        .env("COHORT_STORE", &f.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the binary writes: its writes fail with a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// On a terminal: `script` (util-linux) runs the binary on a pseudo-terminal.

/// Runs the binary on a pseudo-terminal with `input` typed in; `None` (skip) outside CI when
/// `script` is missing. Output is what the terminal showed: stdout and stderr together.
fn on_terminal(args: &[&str], store: &str, env: &[(&str, &str)], input: &str) -> Option<Output> {
    let have_script = Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_script {
        assert!(
            std::env::var_os("CI").is_none(),
            "`script` (util-linux) is needed in CI"
        );
        eprintln!("skipping: `script` (util-linux) is not installed");
        return None;
    }
    let quoted: Vec<String> = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("COHORT_STORE", store)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("RUST_LOG", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn on_a_terminal_output_is_coloured_unless_no_color() {
    let f = Fixture::bank(Backend::Local, "tty-colour").unwrap();
    let Some(coloured) = on_terminal(&["list"], &f.url, &[], "") else {
        return;
    };
    assert!(
        coloured.stdout.contains(&0x1b),
        "{}",
        text(&coloured.stdout)
    );
    let plain = on_terminal(&["list"], &f.url, &[("NO_COLOR", "1")], "").unwrap();
    assert!(!plain.stdout.contains(&0x1b), "{}", text(&plain.stdout));
    assert!(text(&plain.stdout).contains("recovery line"));
}

#[test]
fn on_a_terminal_verify_shows_a_progress_bar() {
    let f = Fixture::bank(Backend::Local, "tty-bar").unwrap();
    let Some(out) = on_terminal(&["verify"], &f.url, &[("NO_COLOR", "1")], "") else {
        return;
    };
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("verifying") && shown.contains("3/3"),
        "{shown}"
    );
    // Off a terminal there is no bar at all.
    let piped = f.cohort(&["verify"]);
    assert!(!text(&piped.stdout).contains("verifying"));
    assert!(piped.stderr.is_empty(), "{}", text(&piped.stderr));
}

#[test]
fn on_a_terminal_rollback_asks_and_honours_the_answer() {
    let f = Fixture::bank(Backend::Local, "tty-rollback").unwrap();
    let Some(declined) = on_terminal(
        &["rollback", "--to", "1", "--lease", "100ms"],
        &f.url,
        &[],
        "n\n",
    ) else {
        return;
    };
    let shown = text(&declined.stdout);
    assert_eq!(declined.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("[y/N]") && shown.contains("rollback cancelled"),
        "{shown}"
    );
    assert_eq!(f.rt.block_on(f.store.committed_ids()).unwrap().len(), 3);

    let accepted = on_terminal(
        &["rollback", "--to", "1", "--lease", "100ms"],
        &f.url,
        &[],
        "y\n",
    )
    .unwrap();
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{}",
        text(&accepted.stdout)
    );
    let line = f.rt.block_on(f.store.recovery_line()).unwrap().unwrap();
    assert_eq!(
        line.manifest.kind,
        ManifestKind::Rollback {
            to: CheckpointId::new(1)
        }
    );
}

// ---------------------------------------------------------------------------------------------
// A store the bank example produced: real coordinator output, with its crash and recovery.

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn bank_store(backend: Backend) {
    let Some(exe) = examples::example("bank_inprocess") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Local => dir.path().join("bank").display().to_string(),
        Backend::S3 => match s3_url("bank") {
            Some(url) => url,
            None => return,
        },
    };
    let args = ["--store", url.as_str(), "--accounts", "8", "--seconds", "2"];
    let out = Command::new(exe)
        .args(args)
        .args(["--interval-ms", "100"])
        .env("RUST_LOG", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "bank: {}", text(&out.stderr));
    let cohort = |args: &[&str]| run(args, &[("COHORT_STORE", url.as_str())]);

    let list = json(&cohort(&["list", "--json"]));
    let list = list.as_array().unwrap();
    assert!(list.len() >= 2, "{list:?}");
    let lines: Vec<u64> = list
        .iter()
        .filter(|e| e["recovery_line"] == true)
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "one recovery line: {list:?}");
    let line = lines[0].to_string();
    let oldest = list.last().unwrap()["id"].to_string();

    assert_eq!(cohort(&["verify"]).status.code(), Some(0));
    let shown = json(&cohort(&["show", &line, "--json"]));
    let objects = shown["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 8, "{shown}");
    let first = objects[0]["id"].as_str().unwrap();
    assert!(json(&cohort(&["inspect", &line, first])).is_object());
    let diff = json(&cohort(&["diff", &oldest, &line, "--json"]));
    assert!(diff["changed"].is_array(), "{diff}");

    let gc = json(&cohort(&["gc", "--keep", "2", "--json"]));
    assert!(
        gc["retained"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(lines[0])),
        "{gc}"
    );
    assert_eq!(cohort(&["verify"]).status.code(), Some(0));
    let after = json(&cohort(&["list", "--json"]));
    assert_eq!(after[0]["recovery_line"], true, "{after}");
    assert_eq!(after[0]["id"].as_u64(), Some(lines[0]));
}

#[test]
fn a_store_the_bank_example_produced() {
    bank_store(Backend::Local);
}

#[test]
fn s3_a_store_the_bank_example_produced() {
    bank_store(Backend::S3);
}

// ---------------------------------------------------------------------------------------------
// Certificates

#[test]
fn certs_make_one_authority_and_certificates_signed_by_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let out = run(
        &[
            "certs",
            "--dir",
            certs_arg,
            "coordinator-1",
            "--host",
            "10.0.0.5",
            "--host",
            "coord-1.example.com",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.starts_with("created the certificate authority"),
        "{said}"
    );
    assert!(
        said.contains("--tls-cert") && said.contains("--tls-ca"),
        "{said}"
    );
    // A second certificate reuses the authority.
    let out = run(&["certs", "--dir", certs_arg, "operator"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("created the certificate authority"));
    for key in ["ca.key", "coordinator-1.key", "operator.key"] {
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    for pem in ["ca.pem", "coordinator-1.pem", "operator.pem"] {
        let text = std::fs::read_to_string(certs.join(pem)).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
    // Nothing is overwritten without --force; bad input is a one-line error.
    let out = run(&["certs", "--dir", certs_arg, "operator"], &[]);
    assert_one_line_error(&out, 2, "operator.pem exists");
    let out = run(
        &["certs", "--dir", certs_arg, "x", "--host", "not a host"],
        &[],
    );
    assert_one_line_error(&out, 2, "is neither an IP address nor a DNS name");
    let out = run(&["certs", "--dir", certs_arg, "../escape"], &[]);
    assert_one_line_error(&out, 2, "certificate name");
    std::fs::remove_file(certs.join("ca.key")).unwrap();
    let out = run(&["certs", "--dir", certs_arg, "node-1"], &[]);
    assert_one_line_error(&out, 2, "holds one of ca.pem and ca.key but not the other");
}
