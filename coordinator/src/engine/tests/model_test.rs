//! Property test: random event sequences (duplicates, stale and future rounds, strangers,
//! timeouts, store answers, hosts lost, restarted and back, recoveries asked for and caused,
//! damaged and moved lines, deposition, object types and the types hosts can create, objects
//! moved off dead hosts and disowned by hosts that come back) never break the protocol's invariants.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Trigger,
    Join(u8, u8),
    /// Object `.0` is of type `.1` (0 or 1).
    Typed(u8, u8),
    /// Application code asks to create object `.0` of type `.1`.
    Create(u8, u8),
    /// Host `.0` can create the types in bit mask `.1`.
    HostTypes(u8, u8),
    /// `round_delta`: -1 stale, 0 current, 1 future.
    Vote {
        round_delta: i8,
        object: u8,
        yes: bool,
        sent: u8,
        received: u8,
    },
    /// Host `host` counts `objects` of its participants clean, with `balance`.
    Clean {
        round_delta: i8,
        host: u8,
        objects: u8,
        balance: i8,
    },
    Records {
        round_delta: i8,
        host: u8,
        count: u8,
    },
    Sealed {
        round_delta: i8,
        host: u8,
        ok: bool,
    },
    Result {
        round_delta: i8,
        outcome: u8,
    },
    HostLost(u8),
    /// An operator drains a host.
    Drain(u8),
    HostUp {
        host: u8,
        resumed: bool,
    },
    Recover,
    /// Answers the newest `ReadLine`: `line` 0 none, else an id; `fail` the store failed.
    LineRead {
        line: u8,
        fail: bool,
    },
    Restored {
        host: u8,
        outcome: u8,
    },
    Fence {
        outcome: u8,
    },
    Deposed,
    /// Object `.0` failed in the current incarnation, or in the one before (`stale`).
    Failed {
        object: u8,
        stale: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..700).prop_map(Op::Advance),
        2 => Just(Op::Trigger),
        1 => (0u8..6, 0u8..3).prop_map(|(o, h)| Op::Join(o, h)),
        1 => (0u8..6, 0u8..2).prop_map(|(o, t)| Op::Typed(o, t)),
        1 => (0u8..3, 0u8..4).prop_map(|(h, mask)| Op::HostTypes(h, mask)),
        1 => (0u8..8, 0u8..3).prop_map(|(o, t)| Op::Create(o, t)),
        8 => (-1i8..=1, 0u8..6, prop::bool::weighted(0.9), 0u8..4, 0u8..4)
            .prop_map(|(round_delta, object, yes, sent, received)| Op::Vote { round_delta, object, yes, sent, received }),
        3 => (-1i8..=1, 0u8..3, 0u8..3, -2i8..=2).prop_map(|(round_delta, host, objects, balance)| Op::Clean { round_delta, host, objects, balance }),
        3 => (-1i8..=1, 0u8..3, 0u8..3).prop_map(|(round_delta, host, count)| Op::Records { round_delta, host, count }),
        2 => (-1i8..=1, 0u8..3, prop::bool::weighted(0.9)).prop_map(|(round_delta, host, ok)| Op::Sealed { round_delta, host, ok }),
        3 => (-1i8..=1, 0u8..6).prop_map(|(round_delta, outcome)| Op::Result { round_delta, outcome }),
        1 => (0u8..3).prop_map(Op::HostLost),
        1 => (0u8..3).prop_map(Op::Drain),
        1 => (0u8..3, any::<bool>()).prop_map(|(host, resumed)| Op::HostUp { host, resumed }),
        1 => Just(Op::Recover),
        2 => (0u8..4, prop::bool::weighted(0.1)).prop_map(|(line, fail)| Op::LineRead { line, fail }),
        3 => (0u8..3, 0u8..11).prop_map(|(host, outcome)| Op::Restored { host, outcome }),
        2 => (0u8..8).prop_map(|outcome| Op::Fence { outcome }),
        1 => prop::bool::weighted(0.05).prop_map(|_| Op::Deposed),
        1 => (0u8..6, prop::bool::weighted(0.2)).prop_map(|(object, stale)| Op::Failed { object, stale }),
    ]
}

fn host_of(i: u8) -> HostId {
    host(["a", "b", "c"][usize::from(i % 3)])
}

/// One attempt as the model sees it.
struct ModelAttempt {
    id: u64,
    round: u64,
    participants: BTreeSet<ObjectId>,
    /// Each host's participants.
    hosted: BTreeMap<HostId, usize>,
    first_votes: BTreeMap<ObjectId, (u64, u64)>,
    /// Per host: how many of its participants voted, and the clean count it gave, if any.
    tallies: BTreeMap<HostId, (usize, Option<usize>)>,
    /// The clean counts' balances.
    clean_balance: i128,
    records: usize,
    /// The seal was asked for: records and votes no longer count.
    sealing: bool,
    commit_requested: bool,
}

/// What the test knows independently of the engine, from the events it fed and the commands
/// it saw.
#[derive(Default)]
struct Model {
    known_last: u64,
    last_round: u64,
    attempt: Option<ModelAttempt>,
    answered: BTreeSet<u64>,
    committed: Vec<u64>,
    /// The recovery in progress: its number, and the line read for it.
    recovery: Option<(u64, Option<u64>)>,
    recovered: BTreeSet<u64>,
    incarnation: u64,
    /// Per host, the incarnation of a restore ordered and not answered yet.
    restoring: BTreeMap<HostId, u64>,
    deposed: bool,
    /// Halted beyond the restart policy, until a recovery starts.
    halted: bool,
    /// The newest `ReadLine` and `WriteFence` asked for, to answer.
    read_line: Option<u64>,
    write_fence: Option<(u64, u64)>,
}

fn type_of(t: u8) -> &'static str {
    ["X", "Y", "Z"][usize::from(t % 3)]
}

/// Placement decisions: objects move off a dead host only to hosts that are up and declared
/// their type, as many as the recovery says, none is left behind that a survivor could take;
/// a restore creates only objects placed on its host; a disowned object lives on another host
/// that is up.
fn check_placement(
    e: &Engine<T>,
    before: &HashMap<ObjectId, HostId>,
    out: &[Command<T>],
) -> Result<(), TestCaseError> {
    let up: BTreeMap<&HostId, Liveness> = e.hosts().collect();
    let is_up = |h: &HostId| up.get(h) == Some(&Liveness::Up);
    let can_host = |h: &HostId, o: &ObjectId| {
        is_up(h)
            && e.object_type(o)
                .is_some_and(|t| e.host_types(h).is_some_and(|ts| ts.contains(t)))
    };
    let mut dead = Vec::new();
    let mut moved_total = 0;
    for command in out {
        match command {
            Command::Recovering {
                cause: RecoveryCause::HostDead { host, moved },
                ..
            } => {
                dead.push(host.clone());
                moved_total += moved;
            }
            Command::Restore { host, create, .. } => {
                for (o, t) in create {
                    prop_assert_eq!(
                        e.placement().get(o),
                        Some(host),
                        "a restore creates an object placed elsewhere"
                    );
                    prop_assert_eq!(e.object_type(o), Some(t.as_str()));
                }
            }
            Command::Create {
                host,
                object,
                type_name,
            } => {
                prop_assert_eq!(before.get(object), None, "{} created twice", object);
                prop_assert_eq!(e.placement().get(object), Some(host));
                prop_assert!(
                    can_host(host, object),
                    "{object} of {type_name} created on {host}, which cannot host it"
                );
            }
            Command::CreateRefused { object, .. } => {
                prop_assert_eq!(
                    before.get(object),
                    e.placement().get(object),
                    "a refused create moved {}",
                    object
                );
            }
            Command::Disown { host, objects } => {
                for o in objects {
                    let owner = e.placement().get(o);
                    let alive = |h: &HostId| up.get(h).is_some_and(|l| *l != Liveness::Down);
                    prop_assert!(
                        owner.is_some_and(|h| h != host && alive(h)),
                        "{o} disowned by {host} but placed on {owner:?}"
                    );
                }
            }
            _ => {}
        }
    }
    if dead.is_empty() {
        return Ok(());
    }
    let mut moved = 0;
    for (o, h) in e.placement() {
        let was = before.get(o);
        if was.is_some_and(|w| dead.contains(w)) && was != Some(h) {
            moved += 1;
            prop_assert!(can_host(h, o), "{o} moved to {h}, which cannot host it");
        }
        if dead.contains(h) {
            for other in up.keys() {
                prop_assert!(
                    !can_host(other, o),
                    "{o} left on dead {h} although {other} can host it"
                );
            }
        }
    }
    prop_assert_eq!(moved, moved_total, "the recovery counts the objects moved");
    Ok(())
}

fn round_of(engine: &Engine<T>, delta: i8) -> Round {
    Round(
        engine
            .last_round()
            .0
            .saturating_add_signed(i64::from(delta)),
    )
}

fn check(model: &mut Model, epoch: u64, out: &[Command<T>]) -> Result<(), TestCaseError> {
    let mut i = 0;
    while i < out.len() {
        let command = &out[i];
        if model.deposed {
            prop_assert!(
                !matches!(
                    command,
                    Command::Commit { .. } | Command::WriteFence { .. } | Command::Discard { .. }
                ),
                "a deposed engine wrote to the store: {:?}",
                command
            );
        }
        match command {
            Command::Prepare { id, round, hosts } => {
                prop_assert!(
                    model.attempt.is_none(),
                    "a second attempt started while one is in flight"
                );
                prop_assert!(
                    model.recovery.is_none(),
                    "an attempt started during a recovery"
                );
                prop_assert!(!model.halted, "an attempt started while halted");
                prop_assert_eq!(id.get(), model.known_last + 1, "ids must be contiguous");
                prop_assert!(round.0 > model.last_round, "rounds are never reused");
                model.last_round = round.0;
                model.attempt = Some(ModelAttempt {
                    id: id.get(),
                    round: round.0,
                    participants: hosts.values().flatten().cloned().collect(),
                    hosted: hosts.iter().map(|(h, o)| (h.clone(), o.len())).collect(),
                    first_votes: BTreeMap::new(),
                    tallies: BTreeMap::new(),
                    clean_balance: 0,
                    records: 0,
                    sealing: false,
                    commit_requested: false,
                });
            }
            Command::Seal { round, .. } => {
                let a = model
                    .attempt
                    .as_mut()
                    .ok_or_else(|| TestCaseError::fail("seal without attempt"))?;
                prop_assert_eq!(round.0, a.round);
                prop_assert!(!a.sealing, "sealed twice");
                a.sealing = true;
            }
            Command::Commit {
                id,
                round,
                participants: commit_participants,
                ballots,
                in_transit,
                ..
            } => {
                let a = model
                    .attempt
                    .as_mut()
                    .ok_or_else(|| TestCaseError::fail("commit without attempt"))?;
                prop_assert_eq!((id.get(), round.0), (a.id, a.round));
                prop_assert!(!a.commit_requested, "commit requested twice");
                let keys: BTreeSet<_> = ballots.iter().map(|(k, _)| k.clone()).collect();
                prop_assert_eq!(keys.len(), ballots.len(), "one ballot per object");
                prop_assert!(
                    ballots.windows(2).all(|w| w[0].0 < w[1].0),
                    "ballots ascending by id"
                );
                prop_assert!(
                    keys.is_subset(&a.participants),
                    "ballots of objects that are not participants"
                );
                let clean: usize = a.tallies.values().filter_map(|(_, c)| *c).sum();
                prop_assert_eq!(
                    keys.len() + clean,
                    a.participants.len(),
                    "commit needs a yes vote from every participant, itself or counted clean"
                );
                let participants: Vec<ObjectId> = a.participants.iter().cloned().collect();
                prop_assert_eq!(&participants[..], &commit_participants[..]);
                let expected: i128 = a
                    .first_votes
                    .values()
                    .map(|(s, r)| i128::from(*s) - i128::from(*r))
                    .sum::<i128>()
                    + a.clean_balance;
                prop_assert_eq!(
                    in_transit.len() as i128,
                    expected,
                    "commit needs complete channel state"
                );
                prop_assert_eq!(in_transit.len(), a.records);
                for (k, b) in ballots {
                    prop_assert_eq!(
                        Some(&(b.sent, b.received)),
                        a.first_votes.get(k),
                        "the first vote counts"
                    );
                }
                a.commit_requested = true;
            }
            Command::Decided {
                id,
                round,
                decision,
                hosts,
            } => {
                let Some(a) = model.attempt.take() else {
                    // An attempt whose host was away aborts before its prepare: nobody is
                    // told, nothing is discarded.
                    prop_assert!(
                        matches!(decision, Decision::Aborted(AbortReason::HostAway { .. }))
                            && hosts.is_empty(),
                        "decision without attempt: {:?}",
                        command
                    );
                    prop_assert_eq!(id.get(), model.known_last + 1, "ids must be contiguous");
                    prop_assert!(round.0 > model.last_round, "rounds are never reused");
                    model.last_round = round.0;
                    i += 1;
                    continue;
                };
                prop_assert_eq!((id.get(), round.0), (a.id, a.round));
                match decision {
                    Decision::Committed => {
                        prop_assert!(a.commit_requested, "committed without a commit request");
                        prop_assert_eq!(id.get(), model.known_last + 1);
                        model.known_last = id.get();
                        model.committed.push(id.get());
                    }
                    Decision::Aborted(reason) => {
                        let discard = Command::Discard {
                            id: *id,
                            round: *round,
                        };
                        let discards = out.get(i + 1) == Some(&discard);
                        let must =
                            !hosts.is_empty() && !model.deposed && *reason != AbortReason::Fenced;
                        prop_assert_eq!(
                            discards,
                            must,
                            "an abort discards its round exactly when something was prepared and it may still write"
                        );
                        if discards {
                            i += 1;
                        }
                    }
                }
            }
            Command::Discard { .. } => prop_assert!(false, "discard without an abort"),
            Command::Reply { request, .. } => {
                prop_assert!(model.answered.insert(request.0), "a trigger answered twice");
            }
            Command::Health(h) => prop_assert_eq!(h.healthy, h.consecutive_failures <= 1),
            Command::Recovering { recovery, .. } => {
                model.halted = false;
                model.recovery = Some((*recovery, None));
            }
            Command::ReadLine { recovery, .. } => {
                prop_assert_eq!(model.recovery.map(|r| r.0), Some(*recovery));
                prop_assert!(
                    model.attempt.is_none(),
                    "the line is read while a create is in flight"
                );
                model.read_line = Some(*recovery);
            }
            Command::Restore {
                recovery,
                incarnation,
                line,
                host,
                ..
            } => {
                model.restoring.insert(host.clone(), *incarnation);
                if *recovery == 0 {
                    prop_assert!(model.recovery.is_none());
                } else {
                    let (seq, read) = model
                        .recovery
                        .ok_or_else(|| TestCaseError::fail("restore without a recovery"))?;
                    prop_assert_eq!(seq, *recovery);
                    prop_assert_eq!(read, line.map(CheckpointId::get));
                    prop_assert!(*incarnation >= model.incarnation, "incarnations go back");
                }
                model.incarnation = model.incarnation.max(*incarnation);
            }
            Command::WriteFence {
                recovery,
                epoch: e,
                line,
                ..
            } => {
                prop_assert_eq!(*e, epoch, "a fence of another epoch");
                let (seq, read) = model
                    .recovery
                    .ok_or_else(|| TestCaseError::fail("fence without a recovery"))?;
                prop_assert_eq!(seq, *recovery);
                prop_assert_eq!(
                    read,
                    Some(line.get()),
                    "the fence points at the line restored"
                );
                model.write_fence = Some((*recovery, line.get()));
            }
            Command::Release {
                incarnation, hosts, ..
            } => {
                prop_assert_eq!(*incarnation, model.incarnation);
                for host in hosts {
                    prop_assert!(
                        model.restoring.get(host) != Some(incarnation),
                        "released {host:?} while its restore of this incarnation runs"
                    );
                }
            }
            Command::Recovered {
                recovery, requests, ..
            } => {
                for r in requests {
                    prop_assert!(model.recovered.insert(r.0), "a recovery answered twice");
                }
                if *recovery != 0 {
                    prop_assert_eq!(model.recovery.map(|r| r.0), Some(*recovery));
                }
                model.recovery = None;
            }
            Command::Deposed { .. } => model.deposed = true,
            Command::Halted(_) => {
                prop_assert!(model.recovery.is_none(), "halted during a recovery");
                model.halted = true;
            }
            Command::Disown { objects, .. } => {
                prop_assert!(!objects.is_empty(), "an empty disown");
            }
            Command::Create { .. }
            | Command::CreateRefused { .. }
            | Command::DrainRefused { .. }
            | Command::RemoveRefused { .. } => {}
        }
        i += 1;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(ops in prop::collection::vec(op(), 1..160), hosted in any::<bool>()) {
        let hosting = if hosted { Hosting::Hosted } else { Hosting::InProcess };
        let mut e = Engine::<T>::new(
            Config {
                interval_ms: Some(300),
                min_pause_ms: 50,
                hosting,
                restart: RestartPolicy { max_restarts: 2, window_ms: 2_000, backoff_ms: 100, max_backoff_ms: 400 },
                ..config()
            },
            Start {
                now_ms: 0,
                epoch: 1,
                last_committed: cid(0),
                round_floor: Round::ZERO,
                incarnation_floor: 0,
                ready_hosts: vec![host("a"), host("b"), host("c")],
            },
        );
        let mut m = Model::default();
        let mut now = 0;
        let (mut next_trigger, mut next_recover) = (0, 0);
        for op in ops {
            let event = match op {
                Op::Advance(d) => { now += d; Event::Tick }
                Op::Trigger => { next_trigger += 1; Event::Trigger { request: TriggerId(next_trigger) } }
                Op::Join(o, h) => Event::Join { object: obj(o), host: host_of(h) },
                Op::Create(o, t) => Event::Create { object: obj(o), type_name: type_of(t).into() },
                Op::Typed(o, t) => Event::ObjectType { object: obj(o), type_name: type_of(t).into() },
                Op::HostTypes(h, mask) => Event::HostTypes {
                    host: host_of(h),
                    types: (0..2).filter(|t| mask & (1 << t) != 0).map(|t| type_of(t).to_owned()).collect(),
                },
                Op::Vote { round_delta, object, yes: y, sent, received } => {
                    let round = round_of(&e, round_delta);
                    let vote = if y { yes(1, sent.into(), received.into()) } else { Vote::No { reason: "no".into() } };
                    let placed = e.placement().get(&obj(object)).cloned();
                    if let Some(a) = m.attempt.as_mut().filter(|a| y && a.round == round.0 && !a.sealing && !a.commit_requested && a.participants.contains(&obj(object)))
                        && let Some(host) = placed
                        && !a.first_votes.contains_key(&obj(object))
                    {
                        // A host's votes never exceed its participants: a ballot on top of a
                        // clean count is ignored.
                        let hosted = a.hosted.get(&host).copied().unwrap_or(0);
                        let (voted, clean) = a.tallies.entry(host).or_default();
                        if *voted + clean.unwrap_or(0) < hosted {
                            *voted += 1;
                            a.first_votes.insert(obj(object), (sent.into(), received.into()));
                        }
                    }
                    Event::Vote { round, object: obj(object), vote }
                }
                Op::Clean { round_delta, host, objects, balance } => {
                    let round = round_of(&e, round_delta);
                    if let Some(a) = m.attempt.as_mut().filter(|a| a.round == round.0 && !a.sealing && !a.commit_requested) {
                        let hosted = a.hosted.get(&host_of(host)).copied().unwrap_or(0);
                        let (voted, clean) = a.tallies.entry(host_of(host)).or_default();
                        if clean.is_none() && *voted + usize::from(objects) <= hosted && hosted > 0 {
                            *clean = Some(usize::from(objects));
                            a.clean_balance += i128::from(balance);
                        }
                    }
                    Event::Clean { round, host: host_of(host), objects: objects.into(), balance: balance.into() }
                }
                Op::Records { round_delta, host, count } => {
                    let round = round_of(&e, round_delta);
                    if let Some(a) = m.attempt.as_mut().filter(|a| a.round == round.0 && !a.sealing && !a.commit_requested) {
                        a.records += usize::from(count);
                    }
                    Event::ChannelState { round, host: host_of(host), records: (0..count).map(|c| (0, 0, u64::from(c))).collect() }
                }
                Op::Sealed { round_delta, host, ok } => Event::Sealed {
                    round: round_of(&e, round_delta),
                    host: host_of(host),
                    result: if ok { Ok(()) } else { Err("io".into()) },
                },
                Op::Result { round_delta, outcome } => {
                    let round = round_of(&e, round_delta);
                    let newest = cid(m.known_last + 2);
                    let outcome = match outcome {
                        0..=2 => CommitOutcome::Committed,
                        3 => CommitOutcome::Failed { reason: "io".into() },
                        4 => CommitOutcome::Conflict { newest },
                        _ => CommitOutcome::Fenced,
                    };
                    if let CommitOutcome::Conflict { newest } = &outcome
                        && m.attempt.as_ref().is_some_and(|a| a.round == round.0 && a.commit_requested)
                    {
                        m.known_last = m.known_last.max(newest.get());
                    }
                    Event::CommitResult { round, outcome }
                }
                Op::HostLost(h) => Event::HostLost { host: host_of(h) },
                Op::Drain(h) => Event::Drain { host: host_of(h) },
                Op::HostUp { host, resumed } => Event::HostUp { host: host_of(host), resumed },
                Op::Recover => { next_recover += 1; Event::Recover { request: RecoverId(next_recover) } }
                Op::LineRead { line, fail } => {
                    let recovery = m.read_line.unwrap_or_else(|| m.recovery.map_or(0, |r| r.0));
                    let result = if fail {
                        Err("io".into())
                    } else if line == 0 {
                        Ok(None)
                    } else {
                        let id = m.known_last.saturating_sub(u64::from(line) - 1).max(1);
                        let objects = e.members().iter().map(|o| (o.clone(), e.placement().get(o).cloned())).collect();
                        Ok(Some(LineInfo {
                            id: cid(id),
                            objects,
                            types: Default::default(),
                            settled: Default::default(),
                        }))
                    };
                    // Only the answer to the read in progress counts.
                    if let (Ok(line), Some((seq, _)), Some(read)) = (&result, m.recovery, m.read_line)
                        && seq == recovery
                        && read == recovery
                    {
                        m.recovery = Some((seq, line.as_ref().map(|l| l.id.get())));
                        m.read_line = None;
                    }
                    Event::LineRead { recovery, result }
                }
                Op::Restored { host, outcome } => Event::Restored {
                    recovery: if outcome == 9 { 0 } else { m.recovery.map_or(0, |r| r.0) },
                    // 6: a late answer to an order of an earlier incarnation.
                    incarnation: {
                        let incarnation = if outcome == 6 { e.incarnation().saturating_sub(1) } else { e.incarnation() };
                        if (outcome < 7 || outcome == 9)
                            && m.restoring.get(&host_of(host)) == Some(&incarnation)
                        {
                            m.restoring.remove(&host_of(host));
                        }
                        incarnation
                    },
                    host: host_of(host),
                    result: match outcome {
                        7 => Err(RestoreFailure::Damaged { reason: "x".into() }),
                        8 => Err(RestoreFailure::Refused { reason: "x".into() }),
                        // The store did not answer: ordered again later, still outstanding.
                        10 => Err(RestoreFailure::Unavailable { reason: "x".into() }),
                        _ => Ok(()),
                    },
                },
                Op::Fence { outcome } => {
                    let (recovery, _) = m.write_fence.unwrap_or((0, 0));
                    let outcome = match outcome {
                        0..=3 => {
                            let id = m.known_last + 1;
                            FenceOutcome::Written { id: cid(id) }
                        }
                        4 => FenceOutcome::LineMoved,
                        5 => FenceOutcome::Failed { reason: "io".into() },
                        _ => FenceOutcome::Fenced,
                    };
                    let fencing = m.write_fence.is_some()
                        && m.write_fence.map(|w| w.0) == m.recovery.map(|r| r.0);
                    if let FenceOutcome::Written { id } = &outcome
                        && fencing
                    {
                        m.known_last = m.known_last.max(id.get());
                    }
                    Event::FenceResult { recovery, outcome }
                }
                Op::Deposed => { m.deposed = true; Event::Deposed }
                Op::Failed { object, stale } => Event::ObjectFailed {
                    object: obj(object),
                    incarnation: e.incarnation().saturating_sub(u64::from(stale)),
                    error: "boom".into(),
                },
            };
            let before = e.placement().clone();
            let out = e.handle(now, event);
            check(&mut m, e.epoch(), &out)?;
            check_placement(&e, &before, &out)?;
            prop_assert_eq!(e.in_flight().map(|(id, r)| (id.get(), r.0)), m.attempt.as_ref().map(|a| (a.id, a.round)));
            prop_assert!(e.next_deadline_ms().is_none_or(|d| d >= now || e.in_flight().is_none()));
            prop_assert_eq!(e.last_committed().get(), m.known_last);
        }
        prop_assert!(m.committed.windows(2).all(|w| w[0] < w[1]));
    }
}
