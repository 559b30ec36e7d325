//! STATELESS: any active member serves, nothing is logged or checkpointed.
//!
//! The server executes each request at once ([`ReplicationStyle::Stateless`]). A client proxy
//! connects to an active member; when that member fails, the proxy reconnects to another
//! active member and re-sends what was in flight. The reply cache is per process, so a
//! request re-sent to another member runs again there: stateless services must make their
//! requests idempotent (reads, or writes to an external system keyed by request id).
//!
//! Run it with `active_goal` above 1 for capacity: every active member serves.

use super::ReplicationStyle;
use crate::member::MemberOptions;
use crate::server::ServerOptions;

/// Server options for the stateless style.
pub fn options(member: MemberOptions) -> ServerOptions {
    ServerOptions::new(ReplicationStyle::Stateless, member)
}
