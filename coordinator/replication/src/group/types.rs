//! The engine's vocabulary: the heartbeat that members exchange, the events it takes and the
//! commands it returns.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::{GroupName, MemberId};
use crate::fencing::SlotEpoch;

/// The most peer addresses one heartbeat's gossip carries; more are ignored.
pub const MAX_GOSSIP: usize = 256;

/// The longest address accepted from a peer, in bytes.
pub const MAX_ADDR_LEN: usize = 256;

/// What every member sends to every other member (and to subscribed monitors) each heartbeat
/// interval, and at once when its state changes. Encoded as a msgpack map with named fields;
/// unknown fields are ignored, so that a later version can add some.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's group.
    pub group: GroupName,
    /// The sender.
    pub member: MemberId,
    /// The sender's weight (0: disabled).
    pub weight: u16,
    /// Whether the sender may activate now: false while it backs off after being fenced, or
    /// while it leaves.
    #[serde(default = "yes")]
    pub candidate: bool,
    /// The sender's active goal (must equal the receiver's).
    pub active_goal: u32,
    /// The sender's activation interval in ms (must equal the receiver's).
    pub activation_interval_ms: u64,
    /// The sender's own heartbeat interval in ms (may differ between members).
    pub heartbeat_interval_ms: u64,
    /// The slot and epoch the sender is active with, if it is active.
    #[serde(default)]
    pub active: Option<SlotEpoch>,
    /// The sender is leaving the group: forget it now rather than after `activation_interval`.
    #[serde(default)]
    pub leaving: bool,
    /// Where the sender's group listener is reachable (heartbeats, `is_alive` polls).
    #[serde(default)]
    pub addr: String,
    /// Where the sender serves its clients (recorded with its activations, for discovery).
    #[serde(default)]
    pub service_addr: String,
    /// Gossip: the other members the sender hears, and where to reach them.
    #[serde(default)]
    pub peers: Vec<PeerAddr>,
}

fn yes() -> bool {
    true
}

/// A member and the address of its group listener, as gossip carries them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The member.
    pub member: MemberId,
    /// Its group listener's address.
    pub addr: String,
}

/// What happened, for [`GroupEngine::step`](super::GroupEngine::step). Each event comes with
/// the current time (ms, any monotonic origin).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Time passed; the engine re-evaluates timeouts and sends a heartbeat when one is due.
    /// Call it at [`next_deadline`](super::GroupEngine::next_deadline) at the latest.
    Tick,
    /// A peer's heartbeat arrived.
    Heartbeat(Heartbeat),
    /// The application changed this member's weight (0 disables it).
    SetWeight(u16),
    /// This member leaves the group: it deactivates, says goodbye, and ignores everything after.
    Leave,
    /// The outcome of a [`Command::ClaimSlot`].
    ClaimResult {
        /// The slot that was claimed.
        slot: u32,
        /// What the store said.
        outcome: ClaimOutcome,
    },
    /// Committing work under `ours` failed because a newer epoch `by` holds the slot: this
    /// member was deposed.
    Fenced {
        /// The activation that was fenced.
        ours: SlotEpoch,
        /// The newer epoch holding the slot.
        by: u64,
    },
}

/// How a slot claim ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// This member now holds the slot with this epoch, and the fence is in the log.
    Won(SlotEpoch),
    /// Another member created that epoch first (the views disagreed for a moment).
    Lost {
        /// The epoch that beat ours.
        by: u64,
    },
    /// The store did not answer or failed; nothing is known to be claimed.
    Failed {
        /// The error, for the log.
        reason: String,
    },
}

/// Why a member is told to deactivate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeactivateReason {
    /// More than `active_goal` members were active, and another member holds this member's slot
    /// with a newer epoch: a higher-weight member took over, or the other side of a healed
    /// partition activated later.
    Superseded {
        /// The member that holds the slot now.
        by: MemberId,
        /// Its epoch.
        epoch: u64,
    },
    /// Committing work failed: a newer epoch holds the slot (it may be on the other side of a
    /// partition this member cannot see).
    Fenced {
        /// The newer epoch.
        by: u64,
    },
    /// The weight was set to 0.
    Disabled,
    /// The member is leaving the group.
    Leaving,
}

/// What the runtime must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Send this heartbeat to every known member and every subscribed monitor.
    Broadcast(Heartbeat),
    /// A member was learned (from gossip, or because it connected to us): connect to its group
    /// listener so that it receives our heartbeats.
    Connect(PeerAddr),
    /// A member fell silent for `activation_interval` (or said goodbye) and is forgotten.
    Lost(MemberId),
    /// Callback hint: this member is next in line and an active member has been silent for
    /// `preparation_interval`. Get ready (open files, warm caches); activation may follow.
    PrepareToActivate,
    /// Claim fencing epoch `newest + 1` of `slot` on the store (create-only; exactly that epoch,
    /// never a later one on a lost race), write the fence into the group's log, and report
    /// [`Event::ClaimResult`].
    ClaimSlot {
        /// The slot to take: a free one, or the one held by the member this one supersedes.
        slot: u32,
        /// The epoch this member saw holding the slot, if any (for the log).
        supersedes: Option<u64>,
    },
    /// Callback: this member is active with this slot and epoch. Serve, and tag every commit
    /// with this [`SlotEpoch`].
    Activate(SlotEpoch),
    /// Callback: stop serving.
    Deactivate {
        /// The activation that ends.
        slot_epoch: SlotEpoch,
        /// Why.
        reason: DeactivateReason,
    },
    /// The number of active members in this member's view changed (itself included).
    ActiveCount(usize),
    /// A peer's heartbeat was refused because its settings disagree with ours; reported once
    /// per peer and value. The peer is ignored until it agrees.
    Rejected {
        /// The peer.
        member: MemberId,
        /// The mismatch ([`Error::ConfigMismatch`]), with both values.
        error: RejectedPeer,
    },
}

/// A peer refused for a settings mismatch: a cloneable, comparable form of
/// [`Error::ConfigMismatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedPeer {
    /// The group.
    pub group: GroupName,
    /// The setting that differs.
    pub field: &'static str,
    /// This member's value.
    pub ours: String,
    /// The peer's value.
    pub theirs: String,
}

impl RejectedPeer {
    /// The error to show a person.
    pub fn to_error(&self, member: &MemberId) -> Error {
        Error::ConfigMismatch {
            group: self.group.clone(),
            other: format!("member {member}"),
            field: self.field,
            ours: self.ours.clone(),
            theirs: self.theirs.clone(),
        }
    }
}
