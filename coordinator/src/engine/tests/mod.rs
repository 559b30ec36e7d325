//! Engine tests in openraft's style: drive the engine with events and compare the command
//! vectors it emits.

mod membership_test;
mod model_test;
mod protocol_test;
mod recovery_test;
mod restart_test;

use std::collections::BTreeMap;
use std::sync::Arc;

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

pub(super) fn host(name: &str) -> HostId {
    HostId::new(name)
}

pub(super) fn local() -> HostId {
    HostId::local()
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
        host_timeout_ms: 500,
        retry_ms: 100,
        hosting: Hosting::InProcess,
        restart: RestartPolicy::default(),
    }
}

/// An in-process engine at t=0 with members `o-0 .. o-{n-1}` on the local host and `last`
/// committed.
pub(super) fn engine_with(config: Config, n: u8, last: u64) -> Engine<T> {
    let mut e = Engine::new(
        config,
        Start {
            now_ms: 0,
            epoch: 1,
            last_committed: cid(last),
            round_floor: Round::ZERO,
            incarnation_floor: 0,
            ready_hosts: vec![local()],
        },
    );
    for i in 0..n {
        let join = Event::Join {
            object: obj(i),
            host: local(),
        };
        assert!(e.handle(0, join).is_empty());
    }
    e
}

/// The participants `objects` all on one host, as the engine announces them.
pub(super) fn on(host: HostId, objects: impl IntoIterator<Item = u8>) -> ByHost {
    let objects: Vec<ObjectId> = objects.into_iter().map(obj).collect();
    if objects.is_empty() {
        return Arc::new(BTreeMap::new());
    }
    Arc::new([(host, objects)].into())
}

pub(super) fn prepare(id: u64, round: u64, n: u8) -> Command<T> {
    Command::Prepare {
        id: cid(id),
        round: Round(round),
        hosts: on(local(), 0..n),
    }
}

pub(super) fn decided(id: u64, round: u64, decision: Decision, hosts: Vec<HostId>) -> Command<T> {
    Command::Decided {
        id: cid(id),
        round: Round(round),
        decision,
        hosts,
    }
}

pub(super) fn vote(
    e: &mut Engine<T>,
    now: u64,
    round: u64,
    i: u8,
    v: Vote<u32>,
) -> Vec<Command<T>> {
    e.handle(
        now,
        Event::Vote {
            round: Round(round),
            object: obj(i),
            vote: v,
        },
    )
}

pub(super) fn trigger(e: &mut Engine<T>, now: u64, request: u64) -> Vec<Command<T>> {
    e.handle(
        now,
        Event::Trigger {
            request: TriggerId(request),
        },
    )
}
