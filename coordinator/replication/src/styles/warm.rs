//! WARM_PASSIVE: one primary executes; backups hold the newest committed line; the elected
//! backup replays the log since that line.
//!
//! - **Primary.** For each batch of requests it appends the batch to the group's fenced log
//!   and waits for the append to be durable *before* executing and replying: no acknowledged
//!   request can be lost, because every acknowledged request is in the log. Every
//!   `checkpoint_interval` it writes a checkpoint of the [`Replica`](crate::server::Replica)
//!   (service state, reply cache, log position) to `replicas/<group>/` on the store.
//! - **Backups** poll the committed lines every `poll_interval` and load each new one
//!   ([`Checkpointable::restore`](cohort_object_api::Checkpointable::restore), FT-CORBA
//!   `set_state`).
//! - **Failover.** When the primary is lost, the group activates the highest-ranked backup
//!   (claiming the slot's next fencing epoch, whose fence entry enters the log). The backup
//!   loads the newest line if it has not yet, then replays every batch logged after the line's
//!   position ([`Updateable::apply_update`](cohort_object_api::Updateable::apply_update),
//!   FT-CORBA `set_update`), and only then serves. The deposed primary's entries all precede the
//!   fence, so the replay sees every acknowledged request.
//! - **A deposed primary** (partitioned, paused) that appends after the fence fails with
//!   [`Error::SlotFenced`](crate::Error::SlotFenced): it executes
//!   nothing, tells its clients to go elsewhere, and deactivates. It cannot acknowledge.

use super::{Between, ReplicationStyle};
use crate::member::MemberOptions;
use crate::server::ServerOptions;

/// Server options for the warm passive style.
pub fn options(member: MemberOptions) -> ServerOptions {
    ServerOptions::new(ReplicationStyle::WarmPassive, member)
}

/// A backup loads each committed line as it lands; the primary only serves.
pub(crate) fn between_requests(serving: bool) -> Between {
    if serving {
        Between::Nothing
    } else {
        Between::LoadNewestLine
    }
}
