//! Split-brain safety: per-slot fencing epochs, the fenced log, and discovery of the active
//! members, all on the checkpoint store with create-if-absent only.
//!
//! # Layout (under the store's prefix)
//!
//! ```text
//! groups/<group>/config                          the group's active_goal and activation_interval; create-only
//! groups/<group>/slots/<slot>/<epoch:020>        one activation: who, where it serves; create-only
//! groups/<group>/log/<seq:020>                   one fenced log entry (a fence or work); create-only;
//!                                                deleted below a checkpoint (FencedLog::truncate_through)
//! groups/<group>/truncated                       marks a log that was ever truncated; create-only
//! ```
//!
//! Every record is framed as `COHGRP\0\x01`, a crc32 (little-endian) of the body, and the body,
//! a msgpack map with named fields.
//!
//! # The rule
//!
//! A group has `active_goal` slots. Activating takes epoch `newest + 1` of one slot, create-only
//! ([`claim_slot`]), and then appends a **fence** entry for that slot and epoch to the group's
//! log. Work is committed by appending to the log ([`FencedLog::append`]), create-only at the
//! next sequence number; the sequence is contiguous, because every append creates the number
//! after one that exists. A deposed member (an older epoch of the same slot) knows at most the
//! newest entry before the fence, so its next append lands on a number already taken; it then
//! reads forward, finds the fence of a newer epoch of its slot, and fails with
//! [`Error::SlotFenced`]. So an entry of epoch `e` never follows a fence of epoch `> e`
//! of the same slot, and at any moment at most `active_goal` members can commit: the same rule
//! as the manifest fencing in ARCHITECTURE.md. An append that lands also reads the slot's next
//! epoch record, and reports `Fenced` (not committed) if a successor has claimed: so a busy
//! writer stops within one append of a claim, instead of keeping the claimant's fence append
//! walking behind it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use cohort_checkpoint::CheckpointStore;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::config::{GroupConfig, GroupName, MemberId};
use crate::Error;

/// A fencing slot and the epoch that holds it: the identity of one activation. Work committed
/// by an active member carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotEpoch {
    /// The slot, `0..active_goal`.
    pub slot: u32,
    /// The epoch, from 1, increasing with every activation of the slot.
    pub epoch: u64,
}

impl std::fmt::Display for SlotEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slot {} epoch {}", self.slot, self.epoch)
    }
}

const MAGIC: &[u8; 8] = b"COHGRP\0\x01";
const HEADER_LEN: usize = 12;
/// How many log entries [`FencedLog::read_from`] fetches at once.
const READ_CONCURRENCY: usize = 16;
/// How many taken numbers an append steps over one at a time before it lists the log and jumps
/// past its newest entry. Racing a live writer under CPU load took up to 23 steps; many more
/// mean this handle is far behind, where one listing beats a read per entry.
const WALK_BEFORE_LISTING: u32 = 128;

fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    let body = rmp_serde::to_vec_named(value).map_err(|e| e.to_string())?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_slice(MAGIC);
    out.put_u32_le(crc32fast::hash(&body));
    out.put_slice(&body);
    Ok(out.freeze())
}

fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, String> {
    let (header, body) = raw.split_at_checked(HEADER_LEN).ok_or_else(|| {
        format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            raw.len()
        )
    })?;
    if &header[..8] != MAGIC {
        return Err("bad magic".to_owned());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[8..12]);
    if u32::from_le_bytes(crc) != crc32fast::hash(body) {
        return Err("crc mismatch".to_owned());
    }
    rmp_serde::from_slice(body).map_err(|e| e.to_string())
}

fn store_error(
    group: &GroupName,
    operation: impl Into<String>,
) -> impl FnOnce(cohort_checkpoint::Error) -> Error {
    let group = group.clone();
    let operation = operation.into();
    move |source| Error::GroupStore {
        group,
        operation,
        source: Box::new(source),
    }
}

fn damaged(store: &CheckpointStore, key: &str, reason: String) -> Error {
    Error::DamagedRecord {
        key: format!("groups/{key}"),
        url: store.url().to_owned(),
        reason,
    }
}

fn padded(n: u64) -> String {
    format!("{n:020}")
}

fn parse_padded(text: &str) -> Option<u64> {
    (text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn parse_slot(text: &str) -> Option<u32> {
    let canonical = !text.is_empty() && (text == "0" || !text.starts_with('0'));
    (canonical && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// The group record

/// The settings that every member of a group must share, recorded once on the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group.
    pub group: GroupName,
    /// The active goal.
    pub active_goal: u32,
    /// The activation interval, in ms.
    pub activation_interval_ms: u64,
    /// The member that created the record.
    pub created_by: MemberId,
    /// When (Unix ms, informational).
    pub created_at_ms: u64,
}

/// Creates the group's record if it is missing, and checks `config` against it: the first
/// member to join fixes `active_goal` and `activation_interval` for the whole group.
///
/// # Errors
///
/// [`Error::ConfigMismatch`] (naming both values) when the record disagrees;
/// [`Error::GroupStore`] or [`Error::DamagedRecord`].
pub async fn ensure_group_record(
    store: &CheckpointStore,
    config: &GroupConfig,
    member: &MemberId,
    now_unix_ms: u64,
) -> Result<GroupRecord, Error> {
    let group = config.group();
    let key = format!("{group}/config");
    let ours = GroupRecord {
        group: group.clone(),
        active_goal: config.active_goal(),
        activation_interval_ms: config.activation_ms(),
        created_by: member.clone(),
        created_at_ms: now_unix_ms,
    };
    let bytes = encode(&ours).map_err(|e| damaged(store, &key, e))?;
    store
        .create_group_record(&key, bytes)
        .await
        .map_err(store_error(group, "create the group record"))?;
    let raw = store
        .read_group_record(&key)
        .await
        .map_err(store_error(group, "read the group record"))?
        .ok_or_else(|| damaged(store, &key, "it vanished after it was created".to_owned()))?;
    let stored: GroupRecord = decode(&raw).map_err(|e| damaged(store, &key, e))?;
    let mismatch = |field, ours: String, theirs: String| Error::ConfigMismatch {
        group: group.clone(),
        other: format!(
            "the group record on the store (created by {})",
            stored.created_by
        ),
        field,
        ours,
        theirs,
    };
    if stored.group != *group {
        return Err(mismatch(
            "group",
            group.to_string(),
            stored.group.to_string(),
        ));
    }
    if stored.active_goal != ours.active_goal {
        return Err(mismatch(
            "active_goal",
            ours.active_goal.to_string(),
            stored.active_goal.to_string(),
        ));
    }
    if stored.activation_interval_ms != ours.activation_interval_ms {
        return Err(mismatch(
            "activation_interval",
            format!("{} ms", ours.activation_interval_ms),
            format!("{} ms", stored.activation_interval_ms),
        ));
    }
    Ok(stored)
}

// ---------------------------------------------------------------------------------------------
// Slots

/// One activation, as recorded on the store: which member took which slot with which epoch,
/// and where it serves clients. The newest record of each slot names its current (or last)
/// holder; clients find the active members through [`current_actives`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRecord {
    /// The group.
    pub group: GroupName,
    /// The slot and epoch.
    pub slot_epoch: SlotEpoch,
    /// The member that activated.
    pub member: MemberId,
    /// Where it serves clients.
    pub service_addr: String,
    /// Its group listener (heartbeats, `is_alive`).
    pub addr: String,
    /// When (Unix ms, informational).
    pub created_at_ms: u64,
    /// Distinguishes this claim from another by the same member, to recognise a lost response.
    pub nonce: u64,
}

fn slot_dir(group: &GroupName, slot: u32) -> String {
    format!("{group}/slots/{slot}")
}

/// The newest epoch of every slot that was ever claimed, from one listing.
async fn newest_epochs(
    store: &CheckpointStore,
    group: &GroupName,
) -> Result<BTreeMap<u32, u64>, Error> {
    let keys = store
        .list_group_records(&format!("{group}/slots"))
        .await
        .map_err(store_error(group, "list the slots"))?;
    let mut newest = BTreeMap::new();
    for key in keys {
        let mut parts = key.split('/').skip(2);
        let (Some(slot), Some(epoch), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Some(slot), Some(epoch)) = (parse_slot(slot), parse_padded(epoch)) {
            let e = newest.entry(slot).or_insert(epoch);
            *e = (*e).max(epoch);
        }
    }
    Ok(newest)
}

/// The newest epoch of one slot (0 if it was never claimed).
async fn newest_epoch(store: &CheckpointStore, group: &GroupName, slot: u32) -> Result<u64, Error> {
    let keys = store
        .list_group_records(&slot_dir(group, slot))
        .await
        .map_err(store_error(group, format!("list slot {slot}")))?;
    Ok(keys
        .iter()
        .filter_map(|k| k.rsplit('/').next().and_then(parse_padded))
        .max()
        .unwrap_or(0))
}

/// Reads the activation record of one slot and epoch.
async fn read_active(
    store: &CheckpointStore,
    group: &GroupName,
    se: SlotEpoch,
) -> Result<Option<ActiveRecord>, Error> {
    let key = format!("{}/{}", slot_dir(group, se.slot), padded(se.epoch));
    let Some(raw) = store
        .read_group_record(&key)
        .await
        .map_err(store_error(group, format!("read {key}")))?
    else {
        return Ok(None);
    };
    let record: ActiveRecord = decode(&raw).map_err(|e| damaged(store, &key, e))?;
    if record.slot_epoch != se || record.group != *group {
        return Err(damaged(
            store,
            &key,
            format!("it records {} of group {}", record.slot_epoch, record.group),
        ));
    }
    Ok(Some(record))
}

/// The newest activation record of every slot of `group`, by slot: the members that are
/// active now, or were last (a crashed member's record stays the newest until a successor
/// claims its slot, within `activation_interval`). A client proxy reads this to find the
/// primary's service address, and retries when that address does not answer.
///
/// # Errors
///
/// [`Error::GroupStore`] or [`Error::DamagedRecord`].
pub async fn current_actives(
    store: &CheckpointStore,
    group: &GroupName,
) -> Result<Vec<ActiveRecord>, Error> {
    let newest = newest_epochs(store, group).await?;
    let mut out = Vec::with_capacity(newest.len());
    for (slot, epoch) in newest {
        if let Some(record) = read_active(store, group, SlotEpoch { slot, epoch }).await? {
            out.push(record);
        }
    }
    Ok(out)
}

/// Who is claiming a slot, for [`claim_slot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// The member.
    pub member: MemberId,
    /// Where it serves clients.
    pub service_addr: String,
    /// Its group listener.
    pub addr: String,
    /// When (Unix ms, informational).
    pub now_unix_ms: u64,
}

/// How a [`claim_slot`] ended (without a store error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The slot is ours with this epoch, and its fence is in the log.
    Won(SlotEpoch),
    /// A newer epoch than the caller expected exists, or another member created the epoch
    /// first: the caller's view is stale. Nothing was claimed.
    Lost {
        /// The newest epoch of the slot.
        by: u64,
    },
}

/// Claims epoch `newest + 1` of `slot`, create-only, and writes its fence into the group's log.
///
/// - `supersedes` is the newest epoch the caller has seen for the slot (from heartbeats). If
///   the store holds a newer one, someone activated that the caller has not heard of: the
///   claim is [`Claim::Lost`] and nothing is written, so that stale views do not take slots
///   from each other. `None` claims whatever the newest epoch is.
/// - A lost race for the epoch is [`Claim::Lost`]: the claim never moves on to a later epoch,
///   which would fence the winner.
/// - A retried request that finds its own record completes the claim.
///
/// # Errors
///
/// [`Error::GroupStore`] or [`Error::DamagedRecord`]; nothing is known to be
/// claimed (a record may exist without its fence: the next claim of the slot supersedes it).
pub async fn claim_slot(
    store: &CheckpointStore,
    group: &GroupName,
    slot: u32,
    supersedes: Option<u64>,
    claimant: &Claimant,
) -> Result<Claim, Error> {
    let newest = newest_epoch(store, group, slot).await?;
    if supersedes.is_some_and(|seen| newest > seen) {
        return Ok(Claim::Lost { by: newest });
    }
    let se = SlotEpoch {
        slot,
        epoch: newest + 1,
    };
    let record = ActiveRecord {
        group: group.clone(),
        slot_epoch: se,
        member: claimant.member.clone(),
        service_addr: claimant.service_addr.clone(),
        addr: claimant.addr.clone(),
        created_at_ms: claimant.now_unix_ms,
        nonce: next_nonce(),
    };
    let key = format!("{}/{}", slot_dir(group, slot), padded(se.epoch));
    let bytes = encode(&record).map_err(|e| damaged(store, &key, e))?;
    let created = store
        .create_group_record(&key, bytes)
        .await
        .map_err(store_error(group, format!("claim {se}")))?;
    if !created {
        let existing = read_active(store, group, se).await?;
        if existing.as_ref().is_none_or(|r| r.nonce != record.nonce) {
            return Ok(Claim::Lost { by: se.epoch });
        }
    }
    let log = FencedLog::new(store.clone(), group.clone());
    match log
        .append_entry(se, &claimant.member, EntryKind::Fence { supersedes })
        .await
    {
        Ok(_) => Ok(Claim::Won(se)),
        Err(Error::SlotFenced { by, .. }) => Ok(Claim::Lost { by }),
        Err(e) => Err(e),
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "a salt unique across processes; no decision reads it"
)]
fn next_nonce() -> u64 {
    // Unique per process (counter) and across processes (random salt); the value only tells
    // our own records from others'.
    static SALT: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let salt = *SALT.get_or_init(rand::random);
    salt ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The record that marks a log as truncated; created once, never deleted.
#[derive(Serialize, Deserialize)]
struct TruncatedRecord {
    group: GroupName,
}

/// Deletes the group record `key` (relative to `groups/`); a record already gone is fine.
/// Through the store's object store: the checkpoint crate offers group records create-only,
/// and the log's truncation is their only deletion.
async fn delete_record(store: &CheckpointStore, group: &GroupName, key: &str) -> Result<(), Error> {
    use cohort_checkpoint::object_store::ObjectStoreExt;
    let full = format!("groups/{key}");
    if !store.is_writable() {
        return Err(Error::GroupStore {
            group: group.clone(),
            operation: format!("delete {full}"),
            source: Box::new(cohort_checkpoint::Error::ReadOnly {
                url: store.url().to_owned(),
                operation: format!("delete {full}"),
            }),
        });
    }
    let (raw, _) = store.object_store();
    match raw.delete(&store.path_of(&full)).await {
        Ok(()) | Err(cohort_checkpoint::object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(Error::GroupStore {
            group: group.clone(),
            operation: format!("delete {full}"),
            source: Box::new(cohort_checkpoint::Error::Store {
                operation: format!("delete {full}"),
                url: store.url().to_owned(),
                source,
            }),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The fenced log

/// What a log entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An activation's fence: entries of older epochs of the same slot cannot follow it.
    Fence {
        /// The epoch the claimant had seen holding the slot.
        supersedes: Option<u64>,
    },
    /// Work committed by the active member (a request to replay, for instance).
    Data(Bytes),
}

/// One entry of the fenced log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its sequence number, from 1.
    pub seq: u64,
    /// The activation that wrote it.
    pub writer: SlotEpoch,
    /// The member that wrote it.
    pub member: MemberId,
    /// Tells a retried append its own entry.
    pub nonce: u64,
    /// A fence or data.
    pub kind: EntryKind,
}

/// Identifies one entry of the fenced log: its number, and the nonce that tells it from
/// another entry created at the same number after a truncation deleted the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntryId {
    /// The sequence number.
    pub seq: u64,
    /// The entry's nonce ([`LogEntry::nonce`]).
    pub nonce: u64,
}

impl LogEntry {
    /// The entry's [`EntryId`].
    pub fn id(&self) -> EntryId {
        EntryId {
            seq: self.seq,
            nonce: self.nonce,
        }
    }
}

/// A group's fenced log on the store: an append-only sequence of entries, written create-only
/// at contiguous numbers, that only the current holder of a slot can extend (see the module
/// documentation for the rule), and deleted from its oldest end once a checkpoint covers them
/// ([`truncate_through`](Self::truncate_through)). The warm-passive request log is built on it.
///
/// Cheap to clone; clones share the hint of the next sequence number.
#[derive(Clone, Debug)]
pub struct FencedLog {
    store: CheckpointStore,
    group: GroupName,
    /// The next sequence number to try: one past the newest entry this handle saw.
    next: std::sync::Arc<Mutex<u64>>,
}

impl FencedLog {
    /// The log of `group` on `store`.
    pub fn new(store: CheckpointStore, group: GroupName) -> Self {
        Self {
            store,
            group,
            next: std::sync::Arc::new(Mutex::new(0)),
        }
    }

    /// The group.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    fn key(&self, seq: u64) -> String {
        format!("{}/log/{}", self.group, padded(seq))
    }

    fn hint(&self) -> u64 {
        // A poisoned lock only means another append panicked; the hint is still a number.
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn raise_hint(&self, next: u64) {
        let mut hint = self.next.lock().unwrap_or_else(|e| e.into_inner());
        *hint = (*hint).max(next);
    }

    /// Appends `bytes` as work of the activation `writer` (`member` holds it), and returns the
    /// entry's sequence number once it is durable.
    ///
    /// # Errors
    ///
    /// [`Error::SlotFenced`] when a newer epoch of `writer`'s slot exists: the member
    /// must deactivate, and must not report the work as done. Either the newer epoch's fence
    /// came first (nothing was written), or the entry landed before that fence (it stays in the
    /// log, and the successor replays it, since it replays everything up to its fence: so work
    /// must be idempotent, keyed by request id). [`Error::GroupStore`] (the
    /// entry may or may not exist: a retry with the same bytes may write it twice, so make
    /// entries idempotent, e.g. keyed by request id) or [`Error::DamagedRecord`] (an
    /// entry in the way does not decode; appending stops rather than risk skipping a fence).
    pub async fn append(
        &self,
        writer: SlotEpoch,
        member: &MemberId,
        bytes: Bytes,
    ) -> Result<u64, Error> {
        Ok(self.commit(writer, member, bytes).await?.seq)
    }

    /// As [`append`](Self::append), returning the entry's [`EntryId`] (its sequence number
    /// and nonce), which a reader of a truncated log needs to verify its position: see
    /// [`truncate_through`](Self::truncate_through).
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub async fn commit(
        &self,
        writer: SlotEpoch,
        member: &MemberId,
        bytes: Bytes,
    ) -> Result<EntryId, Error> {
        self.append_entry(writer, member, EntryKind::Data(bytes))
            .await
    }

    /// Raises this handle's hint of the next free number to `next` (a reader that applied the
    /// log up to `next - 1` knows no number below it is free).
    pub fn saw(&self, next: u64) {
        self.raise_hint(next);
    }

    async fn append_entry(
        &self,
        writer: SlotEpoch,
        member: &MemberId,
        kind: EntryKind,
    ) -> Result<EntryId, Error> {
        let mut seq = match self.hint() {
            0 => self.newest().await? + 1,
            hint => hint,
        };
        let mut entry = LogEntry {
            seq,
            writer,
            member: member.clone(),
            nonce: next_nonce(),
            kind,
        };
        // Entries stepped over one by one since the last jump.
        let mut walked = 0;
        let (started, mut raced) = (tokio::time::Instant::now(), 0u32);
        loop {
            entry.seq = seq;
            let key = self.key(seq);
            let bytes = encode(&entry).map_err(|e| damaged(&self.store, &key, e))?;
            let created = self
                .store
                .create_group_record(&key, bytes)
                .await
                .map_err(store_error(&self.group, format!("append log entry {seq}")))?;
            if created {
                if raced > 0 {
                    tracing::debug!(group = %self.group, seq, raced, took = ?started.elapsed(), "a log append found numbers taken");
                }
                self.raise_hint(seq + 1);
                self.check_still_current(writer).await?;
                return Ok(EntryId {
                    seq,
                    nonce: entry.nonce,
                });
            }
            let existing = self.read(seq).await?.ok_or_else(|| {
                damaged(
                    &self.store,
                    &key,
                    "it vanished after a create found it".to_owned(),
                )
            })?;
            if existing.writer == writer && existing.nonce == entry.nonce {
                // Our own earlier create, whose response was lost.
                self.raise_hint(seq + 1);
                self.check_still_current(writer).await?;
                return Ok(EntryId {
                    seq,
                    nonce: entry.nonce,
                });
            }
            self.check_not_fenced(writer, &existing)?;
            walked += 1;
            raced += 1;
            if walked < WALK_BEFORE_LISTING {
                // Racing a live writer: step to the next number. Every entry stepped over is
                // read and checked above, so no fence is skipped. Listing here instead would
                // livelock: a listing grows with the log and takes longer than the other
                // writer's next append, so the number after it would always be taken again.
                seq += 1;
                continue;
            }
            // Far behind: jump, the log first, then the slot. A fence at or below `newest` was
            // written after its slot record, so the later slot listing would show that record.
            walked = 0;
            let newest = self.newest().await?.max(seq);
            let slot_newest = newest_epoch(&self.store, &self.group, writer.slot).await?;
            if slot_newest > writer.epoch {
                return Err(self.fenced(writer, slot_newest));
            }
            seq = newest + 1;
        }
    }

    /// After an entry of `writer` landed: fails with `Fenced` if the next epoch of its slot has
    /// been claimed. Its claimant creates that record before it appends its fence, so a writer
    /// that keeps appending stops at its next append once a successor claims, rather than
    /// keeping every number taken while the successor's fence append walks behind it (the
    /// writer needs one create per entry, the walker a create and a read per number).
    async fn check_still_current(&self, writer: SlotEpoch) -> Result<(), Error> {
        let next = writer.epoch.saturating_add(1);
        let key = format!("{}/{}", slot_dir(&self.group, writer.slot), padded(next));
        let claimed = self
            .store
            .read_group_record(&key)
            .await
            .map_err(store_error(&self.group, format!("read {key}")))?
            .is_some();
        if claimed {
            Err(self.fenced(writer, next))
        } else {
            Ok(())
        }
    }

    fn check_not_fenced(&self, writer: SlotEpoch, seen: &LogEntry) -> Result<(), Error> {
        if seen.writer.slot == writer.slot && seen.writer.epoch > writer.epoch {
            Err(self.fenced(writer, seen.writer.epoch))
        } else {
            Ok(())
        }
    }

    fn fenced(&self, ours: SlotEpoch, by: u64) -> Error {
        Error::SlotFenced {
            group: self.group.clone(),
            ours,
            by,
        }
    }

    fn truncated_key(&self) -> String {
        format!("{}/truncated", self.group)
    }

    /// Deletes the entries numbered `through` or below, oldest first, one at a time, but never
    /// the newest entry; returns how many it deleted. Call it only once a checkpoint that
    /// covers entry `through + 1` is committed, and keep that entry (the checkpoint's
    /// position): whoever restores the checkpoint verifies its position against it.
    ///
    /// A deleted number can be created again by a writer with a stale hint (a deposed member,
    /// or a replica that fell behind): such an entry is not part of the log that readers
    /// replay. Readers and writers therefore verify their position after reading or appending:
    /// before the first deletion this creates the record `groups/<group>/truncated`, and
    /// entries are deleted in ascending order, so if an entry someone read (or created) at `n`
    /// had been deleted before, so had every entry below `n`: the entry at the reader's
    /// position (compared by [`EntryId`], nonce included) is then gone, or, at position 0, the
    /// record exists. See ARCHITECTURE.md ("Replication styles": truncation).
    ///
    /// # Errors
    ///
    /// [`Error::GroupStore`]; entries deleted before the error stay deleted (the next
    /// call goes on where this one stopped).
    pub async fn truncate_through(&self, through: u64) -> Result<u64, Error> {
        let seqs = self.sequence_numbers().await?;
        let Some(&newest) = seqs.last() else {
            return Ok(0);
        };
        let limit = through.min(newest.saturating_sub(1));
        let doomed: Vec<u64> = seqs.into_iter().filter(|&s| s <= limit).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let key = self.truncated_key();
        let bytes = encode(&TruncatedRecord {
            group: self.group.clone(),
        })
        .map_err(|e| damaged(&self.store, &key, e))?;
        self.store
            .create_group_record(&key, bytes)
            .await
            .map_err(store_error(&self.group, "mark the log truncated"))?;
        for &seq in &doomed {
            // One at a time, in order: the verification above relies on it.
            delete_record(&self.store, &self.group, &self.key(seq)).await?;
        }
        Ok(doomed.len() as u64)
    }

    /// Whether entries of this log were ever deleted by [`truncate_through`](Self::truncate_through).
    ///
    /// # Errors
    ///
    /// [`Error::GroupStore`].
    pub async fn was_truncated(&self) -> Result<bool, Error> {
        Ok(self
            .store
            .read_group_record(&self.truncated_key())
            .await
            .map_err(store_error(&self.group, "read the log's truncation record"))?
            .is_some())
    }

    /// Whether `anchor` (a reader's position: `None` for the start of the log) still holds the
    /// entry the reader applied, so that nothing at or below it was truncated. Call it after
    /// reading the entries above the anchor: if it holds, none of them is a re-created number.
    ///
    /// # Errors
    ///
    /// [`Error::GroupStore`], or [`Error::DamagedRecord`] for an entry that does not
    /// decode.
    pub async fn holds(&self, anchor: Option<EntryId>) -> Result<bool, Error> {
        match anchor {
            None => Ok(!self.was_truncated().await?),
            Some(id) => Ok(self.read(id.seq).await?.is_some_and(|e| e.id() == id)),
        }
    }

    /// The oldest sequence number in the log (0 when it is empty).
    ///
    /// # Errors
    ///
    /// [`Error::GroupStore`].
    pub async fn oldest(&self) -> Result<u64, Error> {
        Ok(self.sequence_numbers().await?.first().copied().unwrap_or(0))
    }

    /// The newest sequence number in the log (0 when it is empty).
    ///
    /// # Errors
    ///
    /// [`Error::GroupStore`].
    pub async fn newest(&self) -> Result<u64, Error> {
        Ok(self.sequence_numbers().await?.last().copied().unwrap_or(0))
    }

    async fn sequence_numbers(&self) -> Result<Vec<u64>, Error> {
        let keys = self
            .store
            .list_group_records(&format!("{}/log", self.group))
            .await
            .map_err(store_error(&self.group, "list the log"))?;
        let mut seqs: Vec<u64> = keys
            .iter()
            .filter_map(|k| {
                let mut parts = k.split('/').skip(2);
                match (parts.next(), parts.next()) {
                    (Some(seq), None) => parse_padded(seq),
                    _ => None,
                }
            })
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Reads entry `seq`, if it exists.
    ///
    /// # Errors
    ///
    /// [`Error::GroupStore`], or [`Error::DamagedRecord`] if it does not decode or
    /// records another number.
    pub async fn read(&self, seq: u64) -> Result<Option<LogEntry>, Error> {
        let key = self.key(seq);
        let Some(raw) = self
            .store
            .read_group_record(&key)
            .await
            .map_err(store_error(&self.group, format!("read log entry {seq}")))?
        else {
            return Ok(None);
        };
        let entry: LogEntry = decode(&raw).map_err(|e| damaged(&self.store, &key, e))?;
        if entry.seq != seq {
            return Err(damaged(
                &self.store,
                &key,
                format!("it records sequence number {}", entry.seq),
            ));
        }
        Ok(Some(entry))
    }

    /// Every entry numbered `seq` or later, in order (fences included: a reader replaying work
    /// skips them, and may use them to tell activations apart).
    ///
    /// # Errors
    ///
    /// [`Error::GroupStore`] or [`Error::DamagedRecord`].
    pub async fn read_from(&self, seq: u64) -> Result<Vec<LogEntry>, Error> {
        let seqs: Vec<u64> = self
            .sequence_numbers()
            .await?
            .into_iter()
            .filter(|&s| s >= seq)
            .collect();
        let entries: Vec<Option<LogEntry>> = futures::stream::iter(seqs)
            .map(|s| self.read(s))
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(entries.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_detect_damage() {
        let se = SlotEpoch { slot: 2, epoch: 9 };
        let raw = encode(&se).unwrap();
        assert_eq!(decode::<SlotEpoch>(&raw).unwrap(), se);
        for i in 0..raw.len() {
            let mut flipped = raw.to_vec();
            flipped[i] ^= 0x10;
            assert!(decode::<SlotEpoch>(&flipped).is_err(), "flip at {i}");
        }
        assert!(decode::<SlotEpoch>(&raw[..raw.len() - 1]).is_err());
        assert!(decode::<SlotEpoch>(&raw[..5]).is_err());
    }

    #[test]
    fn slot_numbers_are_canonical() {
        assert_eq!(parse_slot("0"), Some(0));
        assert_eq!(parse_slot("17"), Some(17));
        for bad in ["", "01", "-1", "1a", "99999999999"] {
            assert_eq!(parse_slot(bad), None, "{bad}");
        }
    }
}
