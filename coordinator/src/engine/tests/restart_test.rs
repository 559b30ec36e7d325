//! Failed objects under the restart policy: a restart after a backoff that doubles within the
//! window, failures a restart already covers, and a halt beyond the policy that only a
//! requested recovery ends.

use super::*;

const POLICY: RestartPolicy = RestartPolicy {
    max_restarts: 2,
    window_ms: 10_000,
    backoff_ms: 100,
    max_backoff_ms: 1_000,
};

/// Hosts a, b and c up and ready, o-0 on a, o-1 on b, o-2 on c, checkpoint 3 committed.
fn engine() -> Engine<T> {
    let mut e = Engine::new(
        Config {
            hosting: Hosting::Hosted,
            restart: POLICY,
            ..config()
        },
        Start {
            now_ms: 0,
            epoch: 1,
            last_committed: cid(3),
            round_floor: Round(1 << 32),
            incarnation_floor: 1 << 32,
            ready_hosts: vec![host("a"), host("b"), host("c")],
        },
    );
    for (o, h) in [(0, "a"), (1, "b"), (2, "c")] {
        e.handle(
            0,
            Event::Join {
                object: obj(o),
                host: host(h),
            },
        );
    }
    e
}

fn failed(e: &mut Engine<T>, now: u64, object: u8, incarnation: u64) -> Vec<Command<T>> {
    e.handle(
        now,
        Event::ObjectFailed {
            object: obj(object),
            incarnation,
            error: "boom".into(),
        },
    )
}

/// Runs recovery `seq` (started at `now`) to its release.
fn finish_recovery(e: &mut Engine<T>, now: u64, seq: u64) -> Vec<Command<T>> {
    let line = LineInfo {
        id: cid(3),
        objects: [(0, "a"), (1, "b"), (2, "c")]
            .into_iter()
            .map(|(o, h)| (obj(o), Some(host(h))))
            .collect(),
        types: Default::default(),
        settled: Default::default(),
    };
    let restores = e.handle(
        now,
        Event::LineRead {
            recovery: seq,
            result: Ok(Some(line)),
        },
    );
    assert_eq!(
        restores
            .iter()
            .filter(|c| matches!(c, Command::Restore { .. }))
            .count(),
        3,
        "{restores:?}"
    );
    for h in ["a", "b", "c"] {
        let incarnation = e.incarnation();
        e.handle(
            now,
            Event::Restored {
                recovery: seq,
                incarnation,
                host: host(h),
                result: Ok(()),
            },
        );
    }
    e.handle(
        now,
        Event::FenceResult {
            recovery: seq,
            outcome: FenceOutcome::Written {
                id: e.last_committed().next(),
            },
        },
    )
}

fn restart_cause(commands: &[Command<T>]) -> Option<RecoveryCause> {
    commands.iter().find_map(|c| match c {
        Command::Recovering { cause, .. } => Some(cause.clone()),
        _ => None,
    })
}

#[test]
fn a_failed_object_restarts_the_cohort_after_a_backoff_and_halts_beyond_the_policy() {
    let mut e = engine();
    let first = e.incarnation();

    // The first failure waits out the backoff; no attempt starts meanwhile.
    assert_eq!(failed(&mut e, 1_000, 1, first), vec![]);
    assert_eq!(e.next_deadline_ms(), Some(1_100));
    assert_eq!(
        e.handle(
            1_050,
            Event::Trigger {
                request: TriggerId(1)
            }
        ),
        vec![]
    );
    // Another object failing in the same incarnation is covered by the same restart.
    assert_eq!(failed(&mut e, 1_060, 2, first), vec![]);
    assert_eq!(restart_cause(&e.handle(1_099, Event::Tick)), None);
    let out = e.handle(1_100, Event::Tick);
    assert_eq!(
        restart_cause(&out),
        Some(RecoveryCause::ObjectFailed {
            object: obj(1),
            error: "boom".into(),
            restart: 1,
        })
    );
    assert!(out.contains(&Command::ReadLine {
        recovery: 1,
        skip: vec![]
    }));
    let out = finish_recovery(&mut e, 1_200, 1);
    assert!(
        out.iter().any(|c| matches!(c, Command::Release { .. })),
        "{out:?}"
    );
    // The trigger that waited runs now.
    assert!(
        out.iter().any(|c| matches!(c, Command::Prepare { .. })),
        "{out:?}"
    );
    let second = e.incarnation();
    assert!(second > first);

    // A failure reported from the incarnation the restart rolled back changes nothing.
    assert_eq!(failed(&mut e, 1_300, 1, first), vec![]);
    // (The deadline is the timeout of the attempt that started at 1 200, not a restart.)
    assert_eq!(e.next_deadline_ms(), Some(2_200));

    // The second restart within the window waits twice as long.
    failed(&mut e, 2_000, 0, second);
    assert_eq!(e.next_deadline_ms(), Some(2_200));
    let out = e.handle(2_200, Event::Tick);
    assert_eq!(
        restart_cause(&out),
        Some(RecoveryCause::ObjectFailed {
            object: obj(0),
            error: "boom".into(),
            restart: 2,
        })
    );
    finish_recovery(&mut e, 2_300, 2);
    assert_eq!(e.status(), Status::Running);

    // A third failure within the window is beyond the policy: the cohort halts and says why.
    let now = e.incarnation();
    let out = failed(&mut e, 3_000, 2, now);
    let halt = Halt {
        object: obj(2),
        error: "boom".into(),
        restarts: 2,
        policy: POLICY,
    };
    assert!(out.contains(&Command::Halted(halt.clone())), "{out:?}");
    assert_eq!(e.status(), Status::Halted);
    assert_eq!(e.halt(), Some(&halt));
    // Nothing restarts it, and triggers are answered at once.
    assert_eq!(restart_cause(&e.handle(20_000, Event::Tick)), None);
    assert_eq!(
        e.handle(
            20_000,
            Event::Trigger {
                request: TriggerId(2)
            }
        ),
        vec![Command::Reply {
            request: TriggerId(2),
            result: Err(TriggerFailure::Aborted(AbortReason::Halted)),
        }]
    );

    // A requested recovery ends the halt and forgives the failures counted.
    let out = e.handle(
        20_000,
        Event::Recover {
            request: RecoverId(1),
        },
    );
    assert_eq!(restart_cause(&out), Some(RecoveryCause::Requested));
    assert_eq!(e.halt(), None);
    finish_recovery(&mut e, 20_100, 3);
    assert_eq!(e.status(), Status::Running);
    let now = e.incarnation();
    failed(&mut e, 21_000, 1, now);
    assert_eq!(e.next_deadline_ms(), Some(21_100));
}

#[test]
fn restarts_older_than_the_window_are_forgotten() {
    let mut e = engine();
    for (n, at) in [(1u32, 1_000), (2, 5_000), (3, 11_500)] {
        let now = e.incarnation();
        failed(&mut e, at, 1, now);
        let deadline = e.next_deadline_ms().expect("a restart is pending");
        let out = e.handle(deadline, Event::Tick);
        // The third failure comes after the first restart left the window: one restart in it.
        let restart = if n == 3 { 2 } else { n };
        assert_eq!(
            restart_cause(&out),
            Some(RecoveryCause::ObjectFailed {
                object: obj(1),
                error: "boom".into(),
                restart,
            }),
            "failure {n}"
        );
        finish_recovery(&mut e, deadline, u64::from(n));
    }
    assert_eq!(e.status(), Status::Running);
}
