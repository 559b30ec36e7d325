//! Engine tests in openraft's style: drive the engine with events and compare the command
//! vectors it emits.

mod model_test;
mod protocol_test;

use cohort_object_api::{CheckpointId, ObjectId};

use super::*;

/// Test types: an entry is a number, an in-transit record is `(from, to, seq)` by index.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct T;

impl EngineTypes for T {
    type Entry = u32;
    type InTransit = (u8, u8, u64);
}

pub(super) fn obj(i: u8) -> ObjectId {
    ObjectId::indexed("o", u64::from(i)).unwrap()
}

pub(super) fn cid(i: u64) -> CheckpointId {
    CheckpointId::new(i)
}

pub(super) fn yes(entry: u32, sent: u64, received: u64) -> Vote<u32> {
    Vote::Yes(Ballot {
        state: VotedState::Written(entry),
        sent,
        received,
    })
}

pub(super) fn config() -> Config {
    Config {
        interval_ms: None,
        timeout_ms: 1_000,
        min_pause_ms: 0,
        tolerable_failures: 1,
    }
}

/// An engine at t=0 with members `o-0 .. o-{n-1}` and `last` committed.
pub(super) fn engine_with(config: Config, n: u8, last: u64) -> Engine<T> {
    let mut e = Engine::new(
        config,
        Start {
            now_ms: 0,
            epoch: 1,
            last_committed: cid(last),
            round_floor: Round::ZERO,
        },
    );
    for i in 0..n {
        assert!(e.handle(0, Event::Join { object: obj(i) }).is_empty());
    }
    e
}
