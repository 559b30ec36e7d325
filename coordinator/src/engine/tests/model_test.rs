//! Property test: random event sequences (duplicates, stale and future rounds, strangers,
//! timeouts, halts, store answers) never break the protocol's invariants.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Trigger,
    Join(u8),
    Leave(u8),
    /// `round_delta`: -1 stale, 0 current, 1 future.
    Vote {
        round_delta: i8,
        object: u8,
        yes: bool,
        sent: u8,
        received: u8,
    },
    Records {
        round_delta: i8,
        count: u8,
    },
    Result {
        round_delta: i8,
        outcome: u8,
    },
    Halt,
    Resume {
        bump: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..700).prop_map(Op::Advance),
        2 => Just(Op::Trigger),
        1 => (0u8..6).prop_map(Op::Join),
        1 => (0u8..6).prop_map(Op::Leave),
        8 => (-1i8..=1, 0u8..6, prop::bool::weighted(0.9), 0u8..4, 0u8..4)
            .prop_map(|(round_delta, object, yes, sent, received)| Op::Vote { round_delta, object, yes, sent, received }),
        3 => (-1i8..=1, 0u8..3).prop_map(|(round_delta, count)| Op::Records { round_delta, count }),
        3 => (-1i8..=1, 0u8..6).prop_map(|(round_delta, outcome)| Op::Result { round_delta, outcome }),
        1 => Just(Op::Halt),
        1 => (0u8..3).prop_map(|bump| Op::Resume { bump }),
    ]
}

/// (id, round, participants, first yes ballots, records, commit requested)
type ModelAttempt = (
    u64,
    u64,
    BTreeSet<ObjectId>,
    BTreeMap<ObjectId, (u64, u64)>,
    usize,
    bool,
);

/// What the test knows independently of the engine, from the events it fed and the commands
/// it saw.
#[derive(Default)]
struct Model {
    known_last: u64,
    last_round: u64,
    epoch: u64,
    attempt: Option<ModelAttempt>,
    answered: BTreeSet<u64>,
    committed: Vec<u64>,
}

fn round_of(engine: &Engine<T>, delta: i8) -> Round {
    Round(
        engine
            .last_round()
            .0
            .saturating_add_signed(i64::from(delta)),
    )
}

fn check(model: &mut Model, out: &[Command<T>]) -> Result<(), TestCaseError> {
    let mut i = 0;
    while i < out.len() {
        match &out[i] {
            Command::Prepare {
                id,
                round,
                participants,
            } => {
                prop_assert!(
                    model.attempt.is_none(),
                    "a second attempt started while one is in flight"
                );
                prop_assert_eq!(id.get(), model.known_last + 1, "ids must be contiguous");
                prop_assert!(round.0 > model.last_round, "rounds are never reused");
                model.last_round = round.0;
                model.attempt = Some((
                    id.get(),
                    round.0,
                    participants.iter().cloned().collect(),
                    BTreeMap::new(),
                    0,
                    false,
                ));
            }
            Command::Commit {
                id,
                round,
                ballots,
                in_transit,
            } => {
                let a = model
                    .attempt
                    .as_mut()
                    .ok_or_else(|| TestCaseError::fail("commit without attempt"))?;
                prop_assert_eq!((id.get(), round.0), (a.0, a.1));
                prop_assert!(!a.5, "commit requested twice");
                let keys: BTreeSet<_> = ballots.keys().cloned().collect();
                prop_assert_eq!(
                    &keys,
                    &a.2,
                    "commit needs a yes vote from every participant"
                );
                let expected: i128 =
                    a.3.values()
                        .map(|(s, r)| i128::from(*s) - i128::from(*r))
                        .sum();
                prop_assert_eq!(
                    in_transit.len() as i128,
                    expected,
                    "commit needs complete channel state"
                );
                prop_assert_eq!(in_transit.len(), a.4);
                for (k, b) in ballots {
                    prop_assert_eq!(
                        Some(&(b.sent, b.received)),
                        a.3.get(k),
                        "the first vote counts"
                    );
                }
                a.5 = true;
            }
            Command::Decided {
                id,
                round,
                decision,
                ..
            } => {
                let a = model
                    .attempt
                    .take()
                    .ok_or_else(|| TestCaseError::fail("decision without attempt"))?;
                prop_assert_eq!((id.get(), round.0), (a.0, a.1));
                match decision {
                    Decision::Committed => {
                        prop_assert!(a.5, "committed without a commit request");
                        prop_assert_eq!(id.get(), model.known_last + 1);
                        model.known_last = id.get();
                        model.committed.push(id.get());
                    }
                    Decision::Aborted(_) => {
                        prop_assert_eq!(
                            out.get(i + 1),
                            Some(&Command::Discard {
                                id: *id,
                                round: *round
                            }),
                            "every abort discards its round"
                        );
                        i += 1;
                    }
                }
            }
            Command::Discard { .. } => prop_assert!(false, "discard without an abort"),
            Command::Reply { request, .. } => {
                prop_assert!(model.answered.insert(request.0), "a trigger answered twice");
            }
            Command::Health(h) => prop_assert_eq!(h.healthy, h.consecutive_failures <= 1),
        }
        i += 1;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(ops in prop::collection::vec(op(), 1..120), members in 0u8..4) {
        let mut e = engine_with(Config { interval_ms: Some(300), min_pause_ms: 50, ..config() }, members, 0);
        let mut m = Model { epoch: 1, ..Model::default() };
        let mut now = 0;
        let mut next_trigger = 0;
        for op in ops {
            let event = match op {
                Op::Advance(d) => { now += d; Event::Tick }
                Op::Trigger => { next_trigger += 1; Event::Trigger { request: TriggerId(next_trigger) } }
                Op::Join(i) => Event::Join { object: obj(i) },
                Op::Leave(i) => Event::Leave { object: obj(i) },
                Op::Vote { round_delta, object, yes: y, sent, received } => {
                    let round = round_of(&e, round_delta);
                    let vote = if y { yes(1, sent.into(), received.into()) } else { Vote::No { reason: "no".into() } };
                    if let Some(a) = m.attempt.as_mut().filter(|a| y && a.1 == round.0 && !a.5 && a.2.contains(&obj(object))) {
                        a.3.entry(obj(object)).or_insert((sent.into(), received.into()));
                    }
                    Event::Vote { round, object: obj(object), vote }
                }
                Op::Records { round_delta, count } => {
                    let round = round_of(&e, round_delta);
                    if let Some(a) = m.attempt.as_mut().filter(|a| a.1 == round.0 && !a.5) {
                        a.4 += usize::from(count);
                    }
                    Event::ChannelState { round, records: (0..count).map(|c| (0, 0, u64::from(c))).collect() }
                }
                Op::Result { round_delta, outcome } => {
                    let round = round_of(&e, round_delta);
                    let newest = cid(m.known_last + 2);
                    let outcome = match outcome {
                        0..=2 => CommitOutcome::Committed,
                        3 => CommitOutcome::Failed { reason: "io".into() },
                        4 => CommitOutcome::Conflict { newest },
                        _ => CommitOutcome::Fenced,
                    };
                    if let (CommitOutcome::Conflict { newest }, Some(a)) = (&outcome, m.attempt.as_ref().filter(|a| a.1 == round.0 && a.5)) {
                        m.known_last = m.known_last.max(newest.get());
                        let _ = a;
                    }
                    Event::CommitResult { round, outcome }
                }
                Op::Halt => Event::Halt,
                Op::Resume { bump } => {
                    let epoch = m.epoch + u64::from(bump);
                    let last = cid(m.known_last + 1);
                    if m.attempt.is_none() && epoch >= e.epoch() {
                        m.epoch = epoch;
                        m.known_last = m.known_last.max(last.get());
                    }
                    Event::Resume { epoch, last_committed: last }
                }
            };
            let out = e.handle(now, event);
            check(&mut m, &out)?;
            prop_assert_eq!(e.in_flight().map(|(id, r)| (id.get(), r.0)), m.attempt.as_ref().map(|a| (a.0, a.1)));
            prop_assert!(e.next_deadline_ms().is_none_or(|d| d >= now || e.in_flight().is_none()));
        }
        prop_assert!(m.committed.windows(2).all(|w| w[0] < w[1]));
    }
}
