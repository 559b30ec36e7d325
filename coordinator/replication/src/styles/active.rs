//! ACTIVE (hot): every replica executes every request, in the same order.
//!
//! **How the order is fixed: the log is the sequencer.** A client proxy sends each request to
//! every active replica. A replica appends the request (in a batch) to the group's fenced log;
//! the log's create-only, contiguous sequence numbers put every batch of every replica in one
//! total order. Every replica, active or standing by, executes the log's batches in sequence
//! order: its own right after its append returns (after the entries before it), the others'
//! as it reads them (every `poll_interval`, and before each of its own). A request that several
//! replicas logged is executed once, at its first position: later copies find it in the reply
//! cache, which is itself part of the replicated state, so all replicas decide alike.
//!
//! Each replica answers the requests it received once it has executed them; the proxy keeps the
//! first reply by request id and drops the others (duplicate suppression), so a replica's
//! failure costs the client nothing.
//!
//! **Joining.** A new replica restores the newest checkpoint (written by the holder of slot 0)
//! and then replays the log from the checkpoint's position before it serves.

use super::{Between, ReplicationStyle};
use crate::member::MemberOptions;
use crate::server::ServerOptions;

/// Server options for the active style.
pub fn options(member: MemberOptions) -> ServerOptions {
    ServerOptions::new(ReplicationStyle::Active, member)
}

/// Every replica, serving or standing by, executes the others' batches as it reads them.
pub(crate) fn between_requests(_serving: bool) -> Between {
    Between::FollowLog
}
