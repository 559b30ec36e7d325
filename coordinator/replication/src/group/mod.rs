//! The group logic as a pure engine: heartbeats, timeouts and fencing results in, Rendezvous
//! callbacks and claims out. See [`GroupEngine`] for the rules.

mod engine;
mod types;

#[cfg(test)]
mod tests;

pub use engine::{GroupEngine, MemberState, PeerView};
pub use types::{
    ClaimOutcome, Command, DeactivateReason, Event, Heartbeat, MAX_ADDR_LEN, MAX_GOSSIP, PeerAddr,
    RejectedPeer,
};
