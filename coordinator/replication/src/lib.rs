//! Fault-tolerance groups: weighted members that keep `active_goal` of themselves active,
//! failure detection, split-brain fencing, and discovery of the active members.
//!
//! This is the membership half of replication (Rendezvous fault tolerance, with FT-CORBA's
//! pull monitoring and fencing on top); the replication styles are built on it.
//!
//! - [`GroupConfig`], [`GroupName`], [`MemberId`]: who joins which group, with which weight,
//!   goal and intervals.
//! - [`group`]: the decisions as a pure engine ([`GroupEngine`]): heartbeats and time in,
//!   `PrepareToActivate` / `Activate` / `Deactivate` and slot claims out.
//! - [`member`]: [`Member`], the runtime that runs an engine over the wire: it listens for
//!   peers, dials every member it knows (seeds, then gossip), heartbeats, claims fencing slots
//!   and hands the callbacks to the application as [`MemberEvent`]s.
//! - [`fencing`]: per-slot epochs on the checkpoint store, the [`FencedLog`] that only current
//!   holders can extend, and [`current_actives`] for clients.
//! - [`detector`]: push (heartbeat) and pull (`is_alive` polling) failure detectors.
//! - [`monitor`]: a passive [`Monitor`] that counts the active members of a group.
//! - `testing` (feature `testing`): an in-memory network and a partition switch, for tests of
//!   code built on this.
//!
//! ARCHITECTURE.md ("Replication: groups and failure detection") explains the design.
//!
//! # Example
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use cohort_checkpoint::CheckpointStore;
//! use cohort_replication::{GroupConfig, Member, MemberEvent, MemberId, MemberOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = CheckpointStore::open("/var/lib/orders/store", Default::default()).await?;
//! let config = GroupConfig::new("orders", 1)?
//!     .with_weight(100)
//!     .with_heartbeat_interval(Duration::from_millis(50))
//!     .with_activation_interval(Duration::from_millis(150));
//! let mut options = MemberOptions::new(config, MemberId::new("orders-a")?, store);
//! options.listen = "127.0.0.1:7500".parse::<SocketAddr>()?;
//! options.service_addr = "127.0.0.1:8500".to_owned();
//! options.seeds = vec!["127.0.0.1:7501".to_owned(), "127.0.0.1:7502".to_owned()];
//! let mut member = Member::start(options).await?;
//! while let Some(event) = member.next_event().await {
//!     match event {
//!         MemberEvent::Activate(slot_epoch) => { /* serve; commit with member.append(..) */ }
//!         MemberEvent::Deactivate { .. } => { /* stop serving */ }
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod config;
pub mod detector;
mod error;
pub mod fencing;
pub mod group;
pub mod log;
pub mod member;
pub mod monitor;
pub mod protocol;
pub mod replies;
pub mod server;
pub mod styles;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};

pub use config::{GroupConfig, GroupName, MemberId};
pub use fencing::{ActiveRecord, EntryId, FencedLog, LogEntry, SlotEpoch, current_actives};
pub use group::{Command, DeactivateReason, Event, GroupEngine, Heartbeat};
pub use member::{Member, MemberEvent, MemberHandle, MemberOptions, MemberStatus};
pub use monitor::{ActiveCount, Monitor, MonitorOptions};
