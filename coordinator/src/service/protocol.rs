//! The frames between the coordinator service and its nodes (wire role `node`), and between
//! nodes (wire role `peer`). Each is one msgpack value per wire frame (see [`cohort_wire`]).
//!
//! Votes carry entry metadata (segment key, offset, length, crc) and counters, never state
//! bytes: nodes write their states to the store themselves, with writer token = node name.

use std::collections::BTreeMap;

use cohort_checkpoint::{InTransitEntry, ObjectEntry};
use cohort_object_api::{CheckpointId, ObjectId};
use serde::{Deserialize, Serialize};

use crate::engine::Round;

/// A node's vote for one of its objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireVote {
    /// Captured and written (`entry`), or unchanged since the last line (`None`).
    Yes {
        /// Where the state was written; `None`: unchanged, reference the previous entry.
        entry: Option<ObjectEntry>,
        /// Messages sent to cohort members before the cut.
        sent: u64,
        /// Messages received from cohort members before the cut.
        received: u64,
    },
    /// Could not take part.
    No {
        /// Why.
        reason: String,
    },
}

/// Node → coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeFrame {
    /// The first frame on a connection: who this node is and what it hosts. `session` is the
    /// session the coordinator handed out earlier, when this is a reconnection after a blip.
    Register {
        /// The session to resume, if any.
        session: Option<u64>,
        /// Where other nodes reach this node's objects (wire role `peer`).
        peer_addr: String,
        /// The objects hosted, sorted.
        objects: Vec<ObjectId>,
        /// The type name of each object hosted (its `Checkpointable::type_name`), so that the
        /// coordinator can move it to another node that hosts the type if this one dies.
        /// Absent from nodes that predate it.
        #[serde(default)]
        types: BTreeMap<ObjectId, String>,
        /// The object types this node can create (it has a factory for each): the coordinator
        /// may place objects of these types here. Absent from nodes that predate it.
        #[serde(default)]
        factories: Vec<String>,
    },
    /// Objects spawned after registration.
    Spawned {
        /// The new objects.
        objects: Vec<ObjectId>,
        /// Their type names. Absent from nodes that predate it.
        #[serde(default)]
        types: BTreeMap<ObjectId, String>,
    },
    /// Participants this node counted in `round` without waking them: clean (unchanged since
    /// the line, nothing handled since), so each votes yes, unchanged, with its counters of
    /// the line ([`Event::Clean`](crate::engine::Event::Clean)). Sent once per round, before
    /// the [`Votes`](Self::Votes) of the objects it asked.
    Clean {
        /// The round counted in.
        #[serde(with = "round_u64")]
        round: Round,
        /// How many of its participants.
        objects: u64,
        /// Their messages sent minus received (their counters summed).
        balance: i128,
    },
    /// The votes for `round` of the participants this node asked, in one frame.
    Votes {
        /// The round voted in.
        #[serde(with = "round_u64")]
        round: Round,
        /// One vote per participant asked here.
        votes: Vec<(ObjectId, WireVote)>,
        /// Bytes of state this node wrote for the round.
        bytes: u64,
        /// The longest time one of this node's objects was blocked by the round (prepare and
        /// capture), microseconds. Absent from nodes that predate it.
        #[serde(default)]
        pause_max_us: u64,
    },
    /// In-transit messages recorded (and written) for `round`.
    ChannelState {
        /// The round.
        #[serde(with = "round_u64")]
        round: Round,
        /// Where each message's bytes were written.
        entries: Vec<InTransitEntry>,
    },
    /// Sealing the channel state of `round` is done (durable), or failed.
    Sealed {
        /// The round.
        #[serde(with = "round_u64")]
        round: Round,
        /// `Err`: why the channel state is not durable.
        result: Result<(), String>,
    },
    /// The answer to [`CoordinatorFrame::Restore`].
    Restored {
        /// The recovery sequence number being answered.
        recovery: u64,
        /// The incarnation of the order answered: an answer that waited in the node's queue
        /// while it had no coordinator (a previous leader's order) must not pass for the
        /// answer to this leader's order, whose recovery numbers start again at 1.
        incarnation: u64,
        /// `Err`: why an object could not be restored.
        result: Result<(), String>,
        /// With an `Err`: the line's bytes are damaged (an entry that does not decode), so the
        /// cohort falls back past it; otherwise the node cannot take the line (a newer schema,
        /// a missing migration) and stays held. Absent from nodes that predate it.
        #[serde(default)]
        damaged: bool,
        /// With an `Err`: the store did not answer the node, so the coordinator orders the
        /// restore again after a backoff. Absent from nodes that predate it.
        #[serde(default)]
        unavailable: bool,
    },
    /// Application code on this node asks the cohort to create an object of a type some node
    /// registered a factory for; answered with [`CoordinatorFrame::Created`].
    Create {
        /// The new object's id.
        object: ObjectId,
        /// Its type's stable name (`Checkpointable::type_name`).
        type_name: String,
    },
    /// An object's handler failed (returned an error or panicked) while this node ran in
    /// `incarnation`: the object votes no until a recovery restores it, and the coordinator
    /// restarts the cohort under its restart policy, or halts it.
    ObjectFailed {
        /// The object.
        object: ObjectId,
        /// The incarnation the node ran in.
        incarnation: u64,
        /// The handler's error, or the panic's message.
        error: String,
    },
    /// A sign of life.
    Heartbeat,
    /// From the CLI (wire role `cli`): a control request (`cohort status`, `cohort checkpoint`).
    Control(super::control::ControlRequest),
}

/// Coordinator → node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorFrame {
    /// Registration accepted: `session` identifies this node's session for a reconnection.
    Welcome {
        /// Resume with this session after a blip.
        session: u64,
        /// Whether the session was resumed (false: new, the node must wait for orders).
        resumed: bool,
        /// Heartbeat interval, ms: send one at least this often.
        heartbeat_ms: u64,
        /// After this long without a frame from the coordinator, reconnect.
        timeout_ms: u64,
    },
    /// This coordinator does not lead; try `leader` if known.
    NotLeader {
        /// The leader's address, if this coordinator knows it.
        leader: Option<String>,
    },
    /// Registration refused (for example, an object id hosted by another live node).
    Refused {
        /// Why, and what to do.
        reason: String,
    },
    /// Where objects live: object → node name, node name → peer address.
    Placement {
        /// Object → hosting node.
        objects: BTreeMap<ObjectId, String>,
        /// Node → peer address.
        nodes: BTreeMap<String, String>,
    },
    /// Phase 1 for the listed objects hosted by this node.
    Prepare {
        /// The checkpoint id attempted.
        id: CheckpointId,
        /// The attempt.
        #[serde(with = "round_u64")]
        round: Round,
        /// The round token for segment keys.
        token: String,
        /// The participants hosted by this node; `None`: the list of the last `Prepare` on
        /// this connection that carried one, unchanged (a node sent `None` before any list
        /// drops the connection). An unchanged roster costs the frame nothing per object, and
        /// lets the node visit only its objects that changed.
        objects: Option<Vec<ObjectId>>,
    },
    /// Make the channel state of `round` durable and answer [`NodeFrame::Sealed`].
    Seal {
        /// The round.
        #[serde(with = "round_u64")]
        round: Round,
    },
    /// Phase 2.
    Decided {
        /// The checkpoint id.
        id: CheckpointId,
        /// The attempt.
        #[serde(with = "round_u64")]
        round: Round,
        /// Committed (true) or aborted.
        committed: bool,
    },
    /// Recovery: hold every object, drop messages sent after the line, restore the hosted
    /// objects of `line` from the store (read by the node itself), queue their in-transit
    /// messages, and answer [`NodeFrame::Restored`]. Objects stay held until
    /// [`CoordinatorFrame::Release`].
    Restore {
        /// Numbers this recovery; answered in [`NodeFrame::Restored`].
        recovery: u64,
        /// The line to restore; `None`: nothing was ever committed, keep the state.
        line: Option<CheckpointId>,
        /// The colour objects take (the newest round started).
        #[serde(with = "round_u64")]
        colour: Round,
        /// The incarnation after the recovery: peer messages of older ones are dropped.
        incarnation: u64,
        /// Objects to create from this node's factories (by type name) before restoring: the
        /// coordinator moved them here from a node that died.
        #[serde(default)]
        create: Vec<(ObjectId, String)>,
    },
    /// Create `object` from this node's factory for `type_name`: the coordinator placed it
    /// here.
    Create {
        /// The new member.
        object: ObjectId,
        /// Its type.
        type_name: String,
    },
    /// The answer to [`NodeFrame::Create`]: the node the object was placed on, or why not.
    Created {
        /// The object asked for.
        object: ObjectId,
        /// The node hosting it, or the reason it was refused.
        result: Result<String, String>,
    },
    /// Drop these objects at once, without handling, voting or sending for them again: they
    /// live on another node now (this node was declared dead and its objects were moved).
    Disown {
        /// The objects to drop.
        objects: Vec<ObjectId>,
    },
    /// Handle messages again.
    Release {
        /// The current incarnation.
        incarnation: u64,
        /// The manifest whose entries the node's objects were restored to, when this release
        /// ends their restore (see [`Command::Release`](crate::engine::Command::Release)).
        #[serde(default)]
        line: Option<CheckpointId>,
    },
    /// A sign of life.
    Heartbeat,
    /// To the CLI: the answer to a [`NodeFrame::Control`] request.
    Control(super::control::ControlReply),
}

/// Node → node (wire role `peer`): one object-to-object message with what the cut needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerFrame {
    /// The sender.
    pub from: ObjectId,
    /// The receiver.
    pub to: ObjectId,
    /// The sender's colour when it sent.
    #[serde(with = "round_u64")]
    pub colour: Round,
    /// The sender's sequence number.
    pub seq: u64,
    /// The recovery incarnation the sender lived in: a receiver drops older ones.
    pub incarnation: u64,
    /// The message, msgpack with named fields.
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
}

/// `Vec<u8>` as msgpack `bin` rather than an array of integers.
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let b = bytes::Bytes::deserialize(d)?;
        Ok(b.to_vec())
    }
}

/// A [`Round`] as its number.
mod round_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::Round;

    pub(super) fn serialize<S: Serializer>(r: &Round, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(r.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Round, D::Error> {
        u64::deserialize(d).map(Round)
    }
}
