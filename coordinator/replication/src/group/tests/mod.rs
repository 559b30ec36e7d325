//! Engine tests: command vectors for every rule, and a property test over simulated runs.

mod engine_test;
mod model_test;

use std::time::Duration;

use super::*;
use crate::config::{GroupConfig, MemberId};
use crate::fencing::SlotEpoch;

pub(super) const HB: u64 = 10;
pub(super) const PREP: u64 = 20;
pub(super) const ACT: u64 = 30;

pub(super) fn config(goal: u32, weight: u16) -> GroupConfig {
    GroupConfig::new("g", goal)
        .unwrap()
        .with_weight(weight)
        .with_heartbeat_interval(Duration::from_millis(HB))
        .with_activation_interval(Duration::from_millis(ACT))
}

pub(super) fn id(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

pub(super) fn se(slot: u32, epoch: u64) -> SlotEpoch {
    SlotEpoch { slot, epoch }
}

pub(super) fn engine(name: &str, goal: u32, weight: u16, now: u64) -> GroupEngine {
    GroupEngine::new(
        config(goal, weight),
        id(name),
        format!("addr-{name}"),
        format!("svc-{name}"),
        now,
    )
    .unwrap()
}

/// The decisions among the commands: without heartbeats, counts, connects and losses.
pub(super) fn decisions(commands: Vec<Command>) -> Vec<Command> {
    commands
        .into_iter()
        .filter(|c| {
            !matches!(
                c,
                Command::Broadcast(_)
                    | Command::ActiveCount(_)
                    | Command::Connect(_)
                    | Command::Lost(_)
            )
        })
        .collect()
}
