//! One attempt: prepare, votes, channel state, seal, commit, decide, abort.

use super::*;

#[test]
fn trigger_prepare_vote_commit_decide_reply() {
    let mut e = engine_with(config(), 2, 6);
    assert_eq!(trigger(&mut e, 10, 1), vec![prepare(7, 1, 2)]);

    assert_eq!(vote(&mut e, 11, 1, 0, yes(100, 0, 0)), vec![]);
    let out = vote(&mut e, 12, 1, 1, yes(101, 0, 0));
    let ballots = vec![
        (
            obj(0),
            Ballot {
                state: VotedState::Written(100),
                sent: 0,
                received: 0,
            },
        ),
        (
            obj(1),
            Ballot {
                state: VotedState::Written(101),
                sent: 0,
                received: 0,
            },
        ),
    ];
    assert_eq!(
        out,
        vec![Command::Commit {
            id: cid(7),
            round: Round(1),
            participants: vec![obj(0), obj(1)].into(),
            ballots,
            in_transit: vec![],
            retired: Default::default(),
        }]
    );

    let out = e.handle(
        13,
        Event::CommitResult {
            round: Round(1),
            outcome: CommitOutcome::Committed,
        },
    );
    assert_eq!(
        out,
        vec![
            Command::Reply {
                request: TriggerId(1),
                result: Ok(cid(7)),
            },
            decided(7, 1, Decision::Committed, vec![local()]),
        ]
    );
    assert_eq!(e.last_committed(), cid(7));
    assert_eq!(e.in_flight(), None);
}

#[test]
fn commit_waits_for_in_transit_messages_then_seals_their_host() {
    let mut e = engine_with(config(), 2, 0);
    trigger(&mut e, 0, 1);
    // o-0 sent 3 before its cut, o-1 received 1 of them before its own: 2 crossed the cut.
    assert_eq!(vote(&mut e, 1, 1, 0, yes(1, 3, 0)), vec![]);
    assert_eq!(vote(&mut e, 1, 1, 1, yes(2, 0, 1)), vec![]);
    let records = |v: Vec<(u8, u8, u64)>| Event::<T>::ChannelState {
        round: Round(1),
        host: local(),
        records: v,
    };
    assert_eq!(e.handle(2, records(vec![(0, 1, 2)])), vec![]);
    let out = e.handle(3, records(vec![(0, 1, 3)]));
    assert_eq!(
        out,
        vec![Command::Seal {
            round: Round(1),
            hosts: vec![local()]
        }]
    );
    // Votes and records after the seal was asked for change nothing.
    assert_eq!(e.handle(3, records(vec![(0, 1, 4)])), vec![]);
    let out = e.handle(
        4,
        Event::Sealed {
            round: Round(1),
            host: local(),
            result: Ok(()),
        },
    );
    assert!(
        matches!(&out[..], [Command::Commit { in_transit, .. }] if in_transit == &vec![(0, 1, 2), (0, 1, 3)]),
        "{out:?}"
    );
}

#[test]
fn a_failed_seal_aborts_as_a_failed_commit_point() {
    let mut e = engine_with(config(), 2, 0);
    trigger(&mut e, 0, 1);
    e.handle(
        0,
        Event::ChannelState {
            round: Round(1),
            host: local(),
            records: vec![(1, 0, 1)],
        },
    );
    vote(&mut e, 1, 1, 0, yes(1, 0, 0));
    vote(&mut e, 1, 1, 1, yes(2, 1, 0));
    let out = e.handle(
        2,
        Event::Sealed {
            round: Round(1),
            host: local(),
            result: Err("disk full".into()),
        },
    );
    let reason = AbortReason::SealFailed {
        host: local(),
        reason: "disk full".into(),
    };
    assert!(reason.is_commit_failure());
    assert_eq!(
        out[0],
        decided(1, 1, Decision::Aborted(reason), vec![local()])
    );
}

#[test]
fn channel_state_may_arrive_before_the_votes() {
    let mut e = engine_with(config(), 2, 0);
    trigger(&mut e, 0, 1);
    e.handle(
        1,
        Event::ChannelState {
            round: Round(1),
            host: local(),
            records: vec![(1, 0, 1)],
        },
    );
    assert_eq!(vote(&mut e, 2, 1, 0, yes(1, 0, 0)), vec![]);
    let out = vote(&mut e, 3, 1, 1, yes(2, 1, 0));
    assert!(matches!(&out[..], [Command::Seal { .. }]), "{out:?}");
}

#[test]
fn no_vote_aborts_discards_and_the_retry_reuses_the_id() {
    let mut e = engine_with(config(), 2, 4);
    trigger(&mut e, 0, 1);
    let reason = AbortReason::Refused {
        object: obj(1),
        reason: "busy".into(),
    };
    let no = Vote::No {
        reason: "busy".into(),
    };
    assert_eq!(
        vote(&mut e, 5, 1, 1, no),
        vec![
            decided(5, 1, Decision::Aborted(reason.clone()), vec![local()]),
            Command::Discard {
                id: cid(5),
                round: Round(1)
            },
            Command::Health(Health {
                healthy: true,
                consecutive_failures: 1,
                last_failure: Some(reason.clone()),
            }),
            Command::Reply {
                request: TriggerId(1),
                result: Err(TriggerFailure::Aborted(reason)),
            },
        ]
    );
    // Late votes of the aborted round change nothing.
    assert_eq!(vote(&mut e, 6, 1, 0, yes(1, 0, 0)), vec![]);
    assert_eq!(trigger(&mut e, 7, 2), vec![prepare(5, 2, 2)]);
}

#[test]
fn timeout_aborts_and_reports_what_was_missing() {
    let mut e = engine_with(config(), 3, 0);
    trigger(&mut e, 0, 1);
    vote(&mut e, 1, 1, 0, yes(1, 2, 0));
    assert_eq!(e.next_deadline_ms(), Some(1_000));
    assert_eq!(e.handle(999, Event::Tick), vec![]);
    let out = e.handle(1_000, Event::Tick);
    let reason = AbortReason::Timeout {
        missing_votes: 2,
        missing_messages: 2,
    };
    assert_eq!(
        out[0],
        decided(1, 1, Decision::Aborted(reason), vec![local()])
    );
    assert_eq!(
        out[1],
        Command::Discard {
            id: cid(1),
            round: Round(1)
        }
    );
}

#[test]
fn unhealthy_after_more_than_the_tolerated_failures_and_healthy_after_a_commit() {
    let mut e = engine_with(config(), 1, 0);
    let health = |out: &[Command<T>]| {
        out.iter().find_map(|c| match c {
            Command::Health(h) => Some(h.healthy),
            _ => None,
        })
    };
    for (round, expect_healthy) in [(1, true), (2, false)] {
        trigger(&mut e, 0, round);
        let out = vote(&mut e, 0, round, 0, Vote::No { reason: "x".into() });
        assert_eq!(health(&out), Some(expect_healthy));
    }
    assert!(!e.health().healthy);
    trigger(&mut e, 0, 9);
    vote(&mut e, 0, 3, 0, yes(1, 0, 0));
    let out = e.handle(
        0,
        Event::CommitResult {
            round: Round(3),
            outcome: CommitOutcome::Committed,
        },
    );
    assert_eq!(health(&out), Some(true));
}

#[test]
fn periodic_interval_and_min_pause() {
    let cfg = Config {
        interval_ms: Some(100),
        min_pause_ms: 80,
        ..config()
    };
    let mut e = engine_with(cfg, 1, 0);
    assert_eq!(e.next_deadline_ms(), Some(100));
    assert_eq!(e.handle(99, Event::Tick), vec![]);
    assert_eq!(e.handle(100, Event::Tick), vec![prepare(1, 1, 1)]);
    // At most one in flight: a due period and a trigger wait for the attempt to end.
    assert_eq!(trigger(&mut e, 250, 1), vec![]);
    vote(&mut e, 260, 1, 0, yes(1, 0, 0));
    e.handle(
        260,
        Event::CommitResult {
            round: Round(1),
            outcome: CommitOutcome::Committed,
        },
    );
    // The trigger is served only after the minimum pause.
    assert_eq!(e.next_deadline_ms(), Some(340));
    assert_eq!(e.handle(339, Event::Tick), vec![]);
    assert_eq!(e.handle(340, Event::Tick), vec![prepare(2, 2, 1)]);
}

#[test]
fn join_aborts_the_attempt_in_flight_without_counting_a_failure() {
    let mut e = engine_with(config(), 1, 0);
    trigger(&mut e, 0, 1);
    let out = e.handle(
        1,
        Event::Join {
            object: obj(1),
            host: local(),
        },
    );
    assert_eq!(
        out,
        vec![
            decided(
                1,
                1,
                Decision::Aborted(AbortReason::MembershipChanged),
                vec![local()]
            ),
            Command::Discard {
                id: cid(1),
                round: Round(1)
            },
            Command::Reply {
                request: TriggerId(1),
                result: Err(TriggerFailure::Aborted(AbortReason::MembershipChanged)),
            },
        ]
    );
    assert_eq!(e.health().consecutive_failures, 0);
}

#[test]
fn conflict_moves_past_the_newest_id() {
    let mut e = engine_with(config(), 1, 2);
    trigger(&mut e, 0, 1);
    vote(&mut e, 0, 1, 0, yes(1, 0, 0));
    e.handle(
        0,
        Event::CommitResult {
            round: Round(1),
            outcome: CommitOutcome::Conflict { newest: cid(5) },
        },
    );
    assert_eq!(trigger(&mut e, 1, 2), vec![prepare(6, 2, 1)]);
}

#[test]
fn fenced_stops_everything_and_writes_nothing_more() {
    let mut e = engine_with(config(), 1, 0);
    trigger(&mut e, 0, 1);
    trigger(&mut e, 0, 2);
    vote(&mut e, 0, 1, 0, yes(1, 0, 0));
    let out = e.handle(
        0,
        Event::CommitResult {
            round: Round(1),
            outcome: CommitOutcome::Fenced,
        },
    );
    // Nothing is discarded: the store belongs to a newer epoch now.
    assert!(
        !out.iter().any(|c| matches!(c, Command::Discard { .. })),
        "{out:?}"
    );
    assert!(out.contains(&Command::Reply {
        request: TriggerId(2),
        result: Err(TriggerFailure::Fenced)
    }));
    assert!(
        out.iter().any(|c| matches!(c, Command::Deposed { .. })),
        "{out:?}"
    );
    assert_eq!(e.status(), Status::Deposed);
    assert_eq!(
        trigger(&mut e, 5, 3),
        vec![Command::Reply {
            request: TriggerId(3),
            result: Err(TriggerFailure::Fenced)
        }]
    );
}

#[test]
fn empty_cohort_commits_at_once() {
    let mut e = engine_with(config(), 0, 0);
    let out = trigger(&mut e, 0, 1);
    assert!(
        matches!(&out[..], [Command::Prepare { .. }, Command::Commit { .. }]),
        "{out:?}"
    );
}

#[test]
fn too_many_records_abort() {
    let mut e = engine_with(config(), 1, 0);
    trigger(&mut e, 0, 1);
    e.handle(
        0,
        Event::ChannelState {
            round: Round(1),
            host: local(),
            records: vec![(0, 0, 1)],
        },
    );
    let out = vote(&mut e, 0, 1, 0, yes(1, 0, 0));
    assert_eq!(
        out[0],
        decided(
            1,
            1,
            Decision::Aborted(AbortReason::ChannelStateMismatch {
                expected: 0,
                recorded: 1
            }),
            vec![local()]
        )
    );
}

#[test]
fn leave_aborts_an_attempt_it_takes_part_in_and_shrinks_the_next() {
    let mut e = engine_with(config(), 2, 0);
    trigger(&mut e, 0, 1);
    let out = e.handle(1, Event::Leave { object: obj(1) });
    assert_eq!(
        out[0],
        decided(
            1,
            1,
            Decision::Aborted(AbortReason::MembershipChanged),
            vec![local()]
        )
    );
    assert_eq!(trigger(&mut e, 2, 2), vec![prepare(1, 2, 1)]);
    // A stranger leaving changes nothing.
    assert_eq!(e.handle(3, Event::Leave { object: obj(9) }), vec![]);
}

#[test]
fn an_attempt_with_a_host_away_aborts_before_its_prepare() {
    let mut e = Engine::<T>::new(
        Config {
            hosting: Hosting::Hosted,
            ..config()
        },
        Start {
            now_ms: 0,
            epoch: 1,
            last_committed: cid(0),
            round_floor: Round::ZERO,
            incarnation_floor: 0,
            ready_hosts: vec![host("a")],
        },
    );
    e.handle(
        0,
        Event::Join {
            object: obj(0),
            host: host("a"),
        },
    );
    // o-1's host never registered.
    e.handle(
        0,
        Event::Join {
            object: obj(1),
            host: host("b"),
        },
    );
    let out = trigger(&mut e, 1, 1);
    let reason = AbortReason::HostAway {
        host: host("b"),
        object: obj(1),
    };
    // Nobody was asked to prepare: nobody hears the decision, nothing is discarded.
    assert_eq!(out[0], decided(1, 1, Decision::Aborted(reason), vec![]));
    assert!(!out.iter().any(|c| matches!(c, Command::Discard { .. })));
}

#[test]
fn a_host_lost_during_the_attempt_aborts_it_unless_the_manifest_create_is_in_flight() {
    let mut e = engine_with(config(), 1, 0);
    trigger(&mut e, 0, 1);
    let out = e.handle(1, Event::HostLost { host: local() });
    assert_eq!(
        out[0],
        decided(
            1,
            1,
            Decision::Aborted(AbortReason::HostLost { host: local() }),
            vec![local()]
        )
    );
    // Back before the timeout: the next attempt runs; lost during its create, it stands.
    e.handle(
        2,
        Event::HostUp {
            host: local(),
            resumed: true,
        },
    );
    assert_eq!(trigger(&mut e, 3, 2), vec![prepare(1, 2, 1)]);
    let out = vote(&mut e, 3, 2, 0, yes(7, 0, 0));
    assert!(matches!(&out[..], [Command::Commit { .. }]), "{out:?}");
    assert_eq!(e.handle(4, Event::HostLost { host: local() }), vec![]);
    let out = e.handle(
        5,
        Event::CommitResult {
            round: Round(2),
            outcome: CommitOutcome::Committed,
        },
    );
    assert!(out.contains(&decided(1, 2, Decision::Committed, vec![local()])));
}

#[test]
fn messages_missing_in_three_timeouts_in_a_row_are_taken_for_lost_and_the_cohort_recovers() {
    let mut e = engine_with(config(), 2, 0);
    let recovering = |out: &[Command<T>]| {
        out.iter().any(|c| {
            matches!(
                c,
                Command::Recovering {
                    cause: RecoveryCause::MessagesLost { missing: 1 },
                    ..
                }
            )
        })
    };
    let mut now = 0;
    for attempt in 1..=LOST_MESSAGE_TIMEOUTS {
        trigger(&mut e, now, u64::from(attempt));
        let round = u64::from(attempt);
        // Every vote is in, and one message sent was never received nor recorded.
        vote(&mut e, now + 1, round, 0, yes(1, 1, 0));
        vote(&mut e, now + 1, round, 1, yes(1, 0, 0));
        now = e.next_deadline_ms().expect("the attempt's timeout");
        let out = e.handle(now, Event::Tick);
        assert_eq!(
            recovering(&out),
            attempt == LOST_MESSAGE_TIMEOUTS,
            "attempt {attempt}: {out:?}"
        );
    }
}

fn clean(
    e: &mut Engine<T>,
    now: u64,
    round: u64,
    host: HostId,
    objects: usize,
    balance: i128,
) -> Vec<Command<T>> {
    e.handle(
        now,
        Event::Clean {
            round: Round(round),
            host,
            objects,
            balance,
        },
    )
}

/// A host counts its clean participants in one event: they vote without a ballot each, and the
/// commit carries the ballots of the others only, with every participant.
#[test]
fn clean_participants_are_counted_in_one_event_per_host() {
    let mut e = engine_with(config(), 3, 6);
    assert_eq!(trigger(&mut e, 10, 1), vec![prepare(7, 1, 3)]);
    assert_eq!(clean(&mut e, 11, 1, local(), 2, 0), vec![]);
    let out = vote(&mut e, 12, 1, 1, yes(101, 0, 0));
    let ballots = vec![(
        obj(1),
        Ballot {
            state: VotedState::Written(101),
            sent: 0,
            received: 0,
        },
    )];
    assert_eq!(
        out,
        vec![Command::Commit {
            id: cid(7),
            round: Round(1),
            participants: vec![obj(0), obj(1), obj(2)].into(),
            ballots,
            in_transit: vec![],
            retired: Default::default(),
        }]
    );
}

/// A host cannot count more objects than it holds, count twice, or vote for an object it also
/// counted clean: what goes beyond its participants is ignored, and the attempt waits.
#[test]
fn a_host_never_counts_more_than_its_participants() {
    let mut e = engine_with(config(), 2, 6);
    trigger(&mut e, 10, 1);
    // More than it holds, or a host that holds none of them: ignored.
    assert_eq!(clean(&mut e, 11, 1, local(), 3, 0), vec![]);
    assert_eq!(clean(&mut e, 11, 1, host("elsewhere"), 1, 0), vec![]);
    assert_eq!(clean(&mut e, 12, 1, local(), 1, 0), vec![]);
    // Counted once per round.
    assert_eq!(clean(&mut e, 13, 1, local(), 1, 0), vec![]);
    // One of its two objects is counted: the other's vote completes the attempt.
    let out = vote(&mut e, 14, 1, 0, yes(100, 0, 0));
    assert!(
        matches!(&out[..], [Command::Commit { ballots, .. }] if ballots.len() == 1),
        "{out:?}"
    );

    // Both counted clean: a vote on top of that is ignored.
    let mut e = engine_with(config(), 2, 6);
    trigger(&mut e, 10, 1);
    let out = vote(&mut e, 11, 1, 0, yes(100, 0, 0));
    assert_eq!(out, vec![]);
    assert_eq!(clean(&mut e, 12, 1, local(), 2, 0), vec![], "one too many");
    let out = clean(&mut e, 13, 1, local(), 1, 0);
    assert!(matches!(&out[..], [Command::Commit { .. }]), "{out:?}");
}

/// The clean objects' counters enter the cut's balance: the attempt waits for the messages
/// they sent that nobody received yet.
#[test]
fn the_clean_objects_balance_waits_for_their_messages_in_transit() {
    let mut e = engine_with(config(), 2, 6);
    trigger(&mut e, 10, 1);
    assert_eq!(clean(&mut e, 11, 1, local(), 1, 1), vec![]);
    assert_eq!(vote(&mut e, 12, 1, 1, yes(101, 0, 0)), vec![]);
    let out = e.handle(
        13,
        Event::ChannelState {
            round: Round(1),
            host: local(),
            records: vec![(0, 1, 1)],
        },
    );
    assert!(
        matches!(&out[..], [Command::Seal { .. }]),
        "the record completes the cut: {out:?}"
    );
}
