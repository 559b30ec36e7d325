//! Drains and joins: objects move at a checkpoint boundary, by a recovery to the line just
//! committed.

use std::collections::BTreeSet;

use super::*;

const ACCOUNT: &str = "account";

/// A hosted engine with `hosts` up and ready, each declaring the account type, and objects
/// `o-i` of that type placed as `placed` says.
fn cohort(hosts: &[&str], placed: &[(u8, &str)]) -> Engine<T> {
    let mut e = Engine::new(
        Config {
            hosting: Hosting::Hosted,
            ..config()
        },
        Start {
            now_ms: 0,
            epoch: 1,
            last_committed: cid(5),
            round_floor: Round(1 << 32),
            incarnation_floor: 1 << 32,
            ready_hosts: hosts.iter().map(|h| host(h)).collect(),
        },
    );
    for h in hosts {
        e.handle(
            0,
            Event::HostTypes {
                host: host(h),
                types: BTreeSet::from([ACCOUNT.to_owned()]),
            },
        );
    }
    for (o, h) in placed {
        e.handle(
            0,
            Event::ObjectType {
                object: obj(*o),
                type_name: ACCOUNT.into(),
            },
        );
        e.handle(
            0,
            Event::Join {
                object: obj(*o),
                host: host(h),
            },
        );
    }
    e
}

/// Runs one attempt to its commit and returns what the commit's answer made the engine do.
fn commit_one(e: &mut Engine<T>, now: u64) -> Vec<Command<T>> {
    // Each attempt its own trigger: the engine answers a trigger id once.
    let out = trigger(e, now, now);
    let round = out
        .iter()
        .find_map(|c| match c {
            Command::Prepare { round, .. } => Some(*round),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no prepare in {out:?}"));
    let members: Vec<ObjectId> = e.members().iter().cloned().collect();
    let mut last = Vec::new();
    for object in members {
        last = e.handle(
            now,
            Event::Vote {
                round,
                object,
                vote: yes(1, 0, 0),
            },
        );
    }
    assert!(
        last.iter().any(|c| matches!(c, Command::Commit { .. })),
        "{last:?}"
    );
    e.handle(
        now,
        Event::CommitResult {
            round,
            outcome: CommitOutcome::Committed,
        },
    )
}

fn placed_on(e: &Engine<T>, o: u8) -> HostId {
    e.placement()[&obj(o)].clone()
}

fn account(o: u8) -> (ObjectId, String) {
    (obj(o), ACCOUNT.into())
}

#[test]
fn a_drained_node_hands_its_objects_over_at_the_next_commit() {
    let mut e = cohort(
        &["a", "b", "c"],
        &[(0, "a"), (3, "a"), (1, "b"), (4, "b"), (2, "c"), (5, "c")],
    );
    assert_eq!(e.handle(10, Event::Drain { host: host("c") }), vec![]);
    assert!(e.draining(&host("c")));
    // Nothing moves before the commit.
    assert_eq!(placed_on(&e, 2), host("c"));
    let out = commit_one(&mut e, 20);
    let tail: Vec<&Command<T>> = out
        .iter()
        .skip_while(|c| !matches!(c, Command::Decided { .. }))
        .skip(1)
        .collect();
    assert_eq!(
        tail,
        vec![
            &Command::Disown {
                host: host("c"),
                objects: vec![obj(2), obj(5)]
            },
            &Command::Recovering {
                recovery: 1,
                cause: RecoveryCause::Rebalance { moved: 2 }
            },
            &Command::ReadLine {
                recovery: 1,
                skip: vec![]
            },
        ]
    );
    // Balanced over the others, ties by name.
    assert_eq!(placed_on(&e, 2), host("a"));
    assert_eq!(placed_on(&e, 5), host("b"));
    // The line just committed is restored; the new hosts create what they take.
    let line = LineInfo {
        id: cid(6),
        objects: [(0, "a"), (3, "a"), (1, "b"), (4, "b"), (2, "c"), (5, "c")]
            .into_iter()
            .map(|(o, h)| (obj(o), Some(host(h))))
            .collect(),
        types: Default::default(),
        settled: Default::default(),
    };
    let out = e.handle(
        21,
        Event::LineRead {
            recovery: 1,
            result: Ok(Some(line)),
        },
    );
    let creates: Vec<(HostId, Vec<(ObjectId, String)>)> = out
        .iter()
        .filter_map(|c| match c {
            Command::Restore { host, create, .. } => Some((host.clone(), create.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        creates,
        vec![
            (host("a"), vec![account(2)]),
            (host("b"), vec![account(5)]),
            (host("c"), vec![]),
        ]
    );
    // A draining node gets nothing new.
    let out = e.handle(
        22,
        Event::Create {
            object: obj(9),
            type_name: ACCOUNT.into(),
        },
    );
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Create { host, .. } if *host != host_c())),
        "{out:?}"
    );
}

fn host_c() -> HostId {
    host("c")
}

#[test]
fn a_node_that_joins_takes_objects_from_the_fullest_at_the_next_commit() {
    let mut e = cohort(
        &["a", "b"],
        &[(0, "a"), (2, "a"), (3, "a"), (4, "a"), (1, "b")],
    );
    // Balanced enough as it is? No: a holds 4, b 1. The first commit evens it out.
    let out = commit_one(&mut e, 10);
    assert!(
        out.contains(&Command::Recovering {
            recovery: 1,
            cause: RecoveryCause::Rebalance { moved: 1 }
        }),
        "{out:?}"
    );
    assert_eq!(placed_on(&e, 0), host("b"));
    // Finish that recovery.
    e.handle(
        11,
        Event::LineRead {
            recovery: 1,
            result: Ok(None),
        },
    );
    let inc = e.incarnation();
    for h in ["a", "b"] {
        e.handle(
            12,
            Event::Restored {
                recovery: 1,
                incarnation: inc,
                host: host(h),
                result: Ok(()),
            },
        );
    }
    assert_eq!(e.status(), Status::Running);
    // d joins with the type and no objects: restored on its own, released, then given some.
    e.handle(
        100,
        Event::HostUp {
            host: host("d"),
            resumed: false,
        },
    );
    e.handle(
        100,
        Event::HostTypes {
            host: host("d"),
            types: BTreeSet::from([ACCOUNT.to_owned()]),
        },
    );
    e.handle(
        101,
        Event::Restored {
            recovery: 0,
            incarnation: inc,
            host: host("d"),
            result: Ok(()),
        },
    );
    let out = commit_one(&mut e, 200);
    assert!(
        out.contains(&Command::Recovering {
            recovery: 2,
            cause: RecoveryCause::Rebalance { moved: 1 }
        }),
        "{out:?}"
    );
    let on_d: Vec<&ObjectId> = e
        .placement()
        .iter()
        .filter(|(_, h)| **h == host("d"))
        .map(|(o, _)| o)
        .collect();
    assert_eq!(on_d.len(), 1, "{:?}", e.placement());
    // Even now (2, 2, 1): the next commit moves nothing.
    e.handle(
        201,
        Event::LineRead {
            recovery: 2,
            result: Ok(None),
        },
    );
    let inc = e.incarnation();
    for h in ["a", "b", "d"] {
        e.handle(
            202,
            Event::Restored {
                recovery: 2,
                incarnation: inc,
                host: host(h),
                result: Ok(()),
            },
        );
    }
    let out = commit_one(&mut e, 300);
    assert!(
        !out.iter().any(|c| matches!(c, Command::Recovering { .. })),
        "{out:?}"
    );
}

#[test]
fn draining_a_node_that_is_not_up_is_refused() {
    let mut e = cohort(&["a"], &[(0, "a")]);
    let out = e.handle(1, Event::Drain { host: host("zz") });
    assert!(
        matches!(&out[..], [Command::DrainRefused { host, .. }] if *host == host_zz()),
        "{out:?}"
    );
}

fn host_zz() -> HostId {
    host("zz")
}

#[test]
fn in_process_cohorts_never_rebalance() {
    let mut e = engine_with(config(), 3, 1);
    e.handle(1, Event::Drain { host: local() });
    let out = commit_one(&mut e, 10);
    assert!(
        !out.iter().any(|c| matches!(c, Command::Recovering { .. })),
        "{out:?}"
    );
}

/// The `create` of each restore in `out`, by host.
fn creates_in(out: &[Command<T>]) -> Vec<(HostId, Vec<(ObjectId, String)>)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Restore { host, create, .. } => Some((host.clone(), create.clone())),
            _ => None,
        })
        .collect()
}

fn register(h: &str, types: &[&str], objects: &[u8]) -> Event<T> {
    Event::Register(Registration {
        host: host(h),
        resumed: false,
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        objects: objects.iter().map(|o| obj(*o)).collect(),
        object_types: objects.iter().map(|o| account(*o)).collect(),
    })
}

#[test]
fn a_restarted_node_creates_again_the_objects_that_had_moved_to_it() {
    let mut e = cohort(&["a", "b"], &[(0, "a"), (1, "b"), (2, "b"), (3, "b")]);
    // The first commit moves one of b's to a; the recovery creates it there.
    commit_one(&mut e, 10);
    let moved = *[1u8, 2, 3]
        .iter()
        .find(|o| placed_on(&e, **o) == host("a"))
        .expect("one object moved to a");
    let out = e.handle(
        11,
        Event::LineRead {
            recovery: 1,
            result: Ok(None),
        },
    );
    assert!(creates_in(&out).contains(&(host("a"), vec![account(moved)])));
    let inc = e.incarnation();
    for h in ["a", "b"] {
        e.handle(
            12,
            Event::Restored {
                recovery: 1,
                incarnation: inc,
                host: host(h),
                result: Ok(()),
            },
        );
    }
    assert_eq!(e.status(), Status::Running);
    // a's process restarts: the new one holds only its own object, which it announces.
    let out = e.handle(100, register("a", &[ACCOUNT], &[0]));
    assert!(
        out.contains(&Command::Recovering {
            recovery: 2,
            cause: RecoveryCause::HostRestarted { host: host("a") }
        }),
        "{out:?}"
    );
    let out = e.handle(
        101,
        Event::LineRead {
            recovery: 2,
            result: Ok(None),
        },
    );
    // Its restore creates the moved object again, and only that one.
    assert_eq!(
        creates_in(&out),
        vec![(host("a"), vec![account(moved)]), (host("b"), vec![])]
    );
}

#[test]
fn after_a_takeover_a_node_creates_what_the_line_placed_on_it_and_it_lacks() {
    let mut e = Engine::<T>::new(
        Config {
            hosting: Hosting::Hosted,
            ..config()
        },
        Start {
            now_ms: 0,
            epoch: 2,
            last_committed: cid(7),
            round_floor: Round(2 << 32),
            incarnation_floor: 2 << 32,
            ready_hosts: vec![],
        },
    );
    // The line says 0 and 2 live on a (2 moved there), 1 on b; the new leader knows their
    // types from the line only.
    let line = LineInfo {
        id: cid(7),
        objects: [(0, "a"), (2, "a"), (1, "b")]
            .into_iter()
            .map(|(o, h)| (obj(o), Some(host(h))))
            .collect(),
        types: [0, 1, 2].into_iter().map(account).collect(),
        settled: Default::default(),
    };
    e.handle(0, Event::TakeOver { line: Some(line) });
    // a restarted meanwhile: it announces 0 only.
    let out = e.handle(100, register("a", &[ACCOUNT], &[0]));
    assert_eq!(creates_in(&out), vec![(host("a"), vec![account(2)])]);
    // b cannot create accounts: nothing is ordered that it could not do.
    let out = e.handle(101, register("b", &[], &[]));
    assert_eq!(creates_in(&out), vec![(host("b"), vec![])]);
}

#[test]
fn a_removed_object_leaves_at_the_next_commit_and_its_counters_stay_in_the_balance() {
    let mut e = cohort(&["a", "b"], &[(0, "a"), (1, "b"), (2, "b")]);
    // Not a member: refused, with what to do.
    let out = e.handle(5, Event::Remove { object: obj(7) });
    assert!(
        matches!(&out[..], [Command::RemoveRefused { object, reason }] if *object == obj(7) && reason.contains("not a member")),
        "{out:?}"
    );
    assert_eq!(e.handle(6, Event::Remove { object: obj(1) }), vec![]);
    assert!(e.removing(&obj(1)));
    // Nothing happens before the commit, which still holds it.
    assert!(e.members().contains(&obj(1)));
    let out = commit_one(&mut e, 10);
    let tail: Vec<&Command<T>> = out
        .iter()
        .skip_while(|c| !matches!(c, Command::Decided { .. }))
        .skip(1)
        .collect();
    assert_eq!(
        tail,
        vec![
            &Command::Disown {
                host: host("b"),
                objects: vec![obj(1)]
            },
            &Command::Recovering {
                recovery: 1,
                cause: RecoveryCause::Removed { objects: 1 }
            },
            &Command::ReadLine {
                recovery: 1,
                skip: vec![]
            },
        ]
    );
    assert!(!e.members().contains(&obj(1)));
    assert!(!e.placement().contains_key(&obj(1)));
    // The line it left: it sent 5 messages and received 2, and one was in transit to it.
    let line = LineInfo {
        id: cid(6),
        objects: [(0, "a"), (1, "b"), (2, "b")]
            .into_iter()
            .map(|(o, h)| (obj(o), Some(host(h))))
            .collect(),
        types: Default::default(),
        settled: [(obj(0), (3, 4)), (obj(1), (5, 3)), (obj(2), (1, 2))].into(),
    };
    let out = e.handle(
        11,
        Event::LineRead {
            recovery: 1,
            result: Ok(Some(line)),
        },
    );
    // Nobody creates or restores it.
    assert_eq!(
        creates_in(&out),
        vec![(host("a"), vec![]), (host("b"), vec![])]
    );
    assert_eq!(e.retired(), &[(obj(1), (5, 3))].into());
    let inc = e.incarnation();
    for h in ["a", "b"] {
        e.handle(
            12,
            Event::Restored {
                recovery: 1,
                incarnation: inc,
                host: host(h),
                result: Ok(()),
            },
        );
    }
    e.handle(
        13,
        Event::FenceResult {
            recovery: 1,
            outcome: FenceOutcome::Written { id: cid(7) },
        },
    );
    assert_eq!(e.status(), Status::Running);
    // The others' counters are off by what it sent and received: with its own added the cut
    // balances with nothing in transit, and the line records them.
    let out = trigger(&mut e, 100, 100);
    let round = out
        .iter()
        .find_map(|c| match c {
            Command::Prepare { round, .. } => Some(*round),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no prepare in {out:?}"));
    e.handle(
        101,
        Event::Vote {
            round,
            object: obj(0),
            vote: yes(1, 3, 4),
        },
    );
    let out = e.handle(
        101,
        Event::Vote {
            round,
            object: obj(2),
            vote: yes(1, 1, 2),
        },
    );
    let retired = out.iter().find_map(|c| match c {
        Command::Commit { retired, .. } => Some(retired.clone()),
        _ => None,
    });
    assert_eq!(retired, Some([(obj(1), (5, 3))].into()), "{out:?}");
}
