//! Command-vector tests: one per rule.

use std::time::Duration;

use super::*;
use crate::Error;

/// A heartbeat as peer `name` would send it.
fn hb(name: &str, goal: u32, weight: u16, active: Option<SlotEpoch>) -> Heartbeat {
    let mut peer = engine(name, goal, weight, 0);
    if let Some(se) = active {
        peer.state_for_tests(MemberState::Active(se));
    }
    peer.heartbeat(0)
}

/// Runs `engine` from `from` to `to` (inclusive), delivering `beats` from the given peers every
/// heartbeat interval, and returns the decisions with their times.
fn run(engine: &mut GroupEngine, from: u64, to: u64, beats: &[Heartbeat]) -> Vec<(u64, Command)> {
    let mut out = Vec::new();
    for now in from..=to {
        let mut commands = Vec::new();
        if now.is_multiple_of(HB) {
            for beat in beats {
                commands.extend(engine.step(now, Event::Heartbeat(beat.clone())));
            }
        }
        commands.extend(engine.step(now, Event::Tick));
        out.extend(decisions(commands).into_iter().map(|c| (now, c)));
    }
    out
}

fn won(engine: &mut GroupEngine, now: u64, slot: u32, epoch: u64) -> Vec<Command> {
    decisions(engine.step(
        now,
        Event::ClaimResult {
            slot,
            outcome: ClaimOutcome::Won(se(slot, epoch)),
        },
    ))
}

#[test]
fn a_lone_member_activates_after_one_activation_interval() {
    let mut a = engine("a", 1, 10, 0);
    let first = a.step(0, Event::Tick);
    assert!(
        matches!(first.as_slice(), [Command::ActiveCount(0), Command::Broadcast(hb)] if hb.member == id("a") && hb.active.is_none())
    );
    let decided = run(&mut a, 1, ACT, &[]);
    assert_eq!(
        decided,
        vec![(
            ACT,
            Command::ClaimSlot {
                slot: 0,
                supersedes: None
            }
        )]
    );
    assert_eq!(a.state(), MemberState::Claiming { slot: 0 });
    let activated = a.step(
        ACT + 1,
        Event::ClaimResult {
            slot: 0,
            outcome: ClaimOutcome::Won(se(0, 1)),
        },
    );
    assert_eq!(
        activated,
        vec![
            Command::Activate(se(0, 1)),
            Command::ActiveCount(1),
            Command::Broadcast(a.heartbeat(ACT + 1)),
        ]
    );
    assert_eq!(a.heartbeat(ACT + 1).active, Some(se(0, 1)));
    // Heartbeats every interval after that, and no other decision.
    let later: Vec<_> = (ACT + 2..=ACT + 50)
        .flat_map(|now| a.step(now, Event::Tick))
        .collect();
    let beats = later
        .iter()
        .filter(|c| matches!(c, Command::Broadcast(_)))
        .count();
    assert_eq!(beats, 4, "{later:?}");
    assert_eq!(beats, later.len());
}

#[test]
fn invalid_settings_and_mismatched_peers_are_rejected() {
    let bad = config(1, 1).with_heartbeat_interval(Duration::from_millis(ACT));
    let err = GroupEngine::new(bad, id("a"), "x", "y", 0).unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig { scope: "group", .. }),
        "{err}"
    );

    let mut a = engine("a", 1, 10, 0);
    a.step(0, Event::Tick);
    let other_goal = hb("b", 2, 10, None);
    let rejected = decisions(a.step(1, Event::Heartbeat(other_goal.clone())));
    let [Command::Rejected { member, error }] = rejected.as_slice() else {
        panic!("{rejected:?}");
    };
    assert_eq!(member, &id("b"));
    let message = error.to_error(member).to_string();
    assert!(
        message.contains("member b has active_goal 2")
            && message.contains("this member has 1")
            && message.contains("activation_interval"),
        "{message}"
    );
    // Reported once, and the peer is not counted.
    assert!(decisions(a.step(2, Event::Heartbeat(other_goal))).is_empty());
    assert!(a.peers().is_empty());

    let mut slow = engine("c", 1, 10, 0);
    slow.config = slow
        .config
        .clone()
        .with_activation_interval(Duration::from_millis(ACT + 1));
    let rejected = decisions(a.step(3, Event::Heartbeat(slow.heartbeat(3))));
    let [Command::Rejected { error, .. }] = rejected.as_slice() else {
        panic!("{rejected:?}");
    };
    assert_eq!(error.field, "activation_interval");
    assert_eq!(
        (error.ours.as_str(), error.theirs.as_str()),
        ("30 ms", "31 ms")
    );

    let mut stranger = hb("d", 1, 10, None);
    stranger.group = crate::config::GroupName::new("h").unwrap();
    let rejected = decisions(a.step(4, Event::Heartbeat(stranger)));
    assert!(
        matches!(rejected.as_slice(), [Command::Rejected { error, .. }] if error.field == "group")
    );
    // The lone member activates regardless: the refused peers are not in its view.
    let decided = run(&mut a, 5, ACT, &[]);
    assert_eq!(decided.len(), 1);
}

#[test]
fn ties_are_broken_by_member_id_ascending() {
    for (me, expect_claim) in [("a", true), ("b", false)] {
        let other = if me == "a" { "b" } else { "a" };
        let mut e = engine(me, 1, 10, 0);
        let decided = run(&mut e, 0, ACT + 5, &[hb(other, 1, 10, None)]);
        let claimed = decided
            .iter()
            .any(|(_, c)| matches!(c, Command::ClaimSlot { slot: 0, .. }));
        assert_eq!(claimed, expect_claim, "{me}: {decided:?}");
    }
}

#[test]
fn the_highest_weight_activates_and_others_wait() {
    // b outweighs a: a waits, even though it ties with nobody.
    let mut a = engine("a", 1, 10, 0);
    let decided = run(&mut a, 0, 3 * ACT, &[hb("b", 1, 20, None)]);
    assert!(decided.is_empty(), "{decided:?}");
    // Two slots: a takes the second free slot, b (ranked first) the first.
    let mut a = engine("a", 2, 10, 0);
    let decided = run(&mut a, 0, ACT, &[hb("b", 2, 20, None)]);
    assert_eq!(
        decided,
        vec![(
            ACT,
            Command::ClaimSlot {
                slot: 1,
                supersedes: None
            }
        )]
    );
}

#[test]
fn a_lost_active_is_replaced_by_the_next_in_line() {
    // a (weight 10) and c (weight 5) are inactive; b (weight 30) is active with slot 0 epoch 4.
    let mut a = engine("a", 1, 10, 0);
    let b = hb("b", 1, 30, Some(se(0, 4)));
    let c = hb("c", 1, 5, None);
    assert!(run(&mut a, 0, 100, &[b.clone(), c.clone()]).is_empty());
    assert_eq!(a.actives(), vec![(id("b"), se(0, 4))]);
    // b falls silent after its heartbeat at 100; c goes on.
    let decided = run(&mut a, 101, 200, &[c]);
    assert_eq!(
        decided,
        vec![(
            100 + ACT,
            Command::ClaimSlot {
                slot: 0,
                supersedes: Some(4)
            }
        )]
    );
    assert!(!a.peers().contains_key(&id("b")));
    assert_eq!(won(&mut a, 201, 0, 5), vec![Command::Activate(se(0, 5))]);
}

#[test]
fn prepare_to_activate_comes_once_after_the_preparation_interval() {
    let cfg = config(1, 10).with_preparation_interval(Some(Duration::from_millis(PREP)));
    let mut a = GroupEngine::new(cfg, id("a"), "x", "y", 0).unwrap();
    let b = hb("b", 1, 30, Some(se(0, 1)));
    assert!(run(&mut a, 0, 100, std::slice::from_ref(&b)).is_empty());
    let decided = run(&mut a, 101, 200, &[]);
    assert_eq!(
        decided,
        vec![
            (100 + PREP, Command::PrepareToActivate),
            (
                100 + ACT,
                Command::ClaimSlot {
                    slot: 0,
                    supersedes: Some(1)
                }
            ),
        ]
    );
    // A member that is not next in line is not told to prepare.
    let cfg = config(1, 1).with_preparation_interval(Some(Duration::from_millis(PREP)));
    let mut low = GroupEngine::new(cfg, id("z"), "x", "y", 0).unwrap();
    let high = hb("m", 1, 20, None);
    run(&mut low, 0, 100, &[b, high.clone()]);
    assert!(run(&mut low, 101, 100 + ACT - 1, &[high]).is_empty());
}

#[test]
fn a_higher_weight_newcomer_takes_over_once_after_a_full_activation_interval() {
    // a is active (weight 10); n (weight 50) joins at 100.
    let mut a = engine("a", 1, 10, 0);
    run(&mut a, 0, ACT, &[]);
    won(&mut a, ACT, 0, 1);
    let mut n = engine("n", 1, 50, 100);
    let mut log = Vec::new();
    // Carries out the decisions, answering claims as the store would (no race here).
    fn apply(
        e: &mut GroupEngine,
        name: &'static str,
        now: u64,
        commands: Vec<Command>,
        log: &mut Vec<(u64, &'static str, Command)>,
    ) {
        for c in decisions(commands) {
            log.push((now, name, c.clone()));
            if let Command::ClaimSlot { slot, supersedes } = c {
                let epoch = supersedes.unwrap_or(0) + 1;
                let next = won(e, now, slot, epoch);
                apply(e, name, now, next, log);
            }
        }
    }
    for now in 100u64..=300 {
        if now.is_multiple_of(HB) {
            let from_a = a.heartbeat(now);
            let commands = n.step(now, Event::Heartbeat(from_a));
            apply(&mut n, "n", now, commands, &mut log);
            let from_n = n.heartbeat(now);
            let commands = a.step(now, Event::Heartbeat(from_n));
            apply(&mut a, "a", now, commands, &mut log);
        }
        let commands = a.step(now, Event::Tick);
        apply(&mut a, "a", now, commands, &mut log);
        let commands = n.step(now, Event::Tick);
        apply(&mut n, "n", now, commands, &mut log);
    }
    assert_eq!(
        log,
        vec![
            (
                100 + ACT,
                "n",
                Command::ClaimSlot {
                    slot: 0,
                    supersedes: Some(1)
                }
            ),
            (100 + ACT, "n", Command::Activate(se(0, 2))),
            // a hears n's next heartbeat in the same millisecond.
            (
                100 + ACT,
                "a",
                Command::Deactivate {
                    slot_epoch: se(0, 1),
                    reason: DeactivateReason::Superseded {
                        by: id("n"),
                        epoch: 2
                    }
                }
            ),
        ]
    );
}

#[test]
fn equal_weights_never_hand_over() {
    let mut z = engine("z", 1, 10, 0);
    run(&mut z, 0, ACT, &[]);
    won(&mut z, ACT, 0, 1);
    // "a" ranks above "z" at equal weight, but never takes an active slot for it.
    let mut a = engine("a", 1, 10, 100);
    let decided = run(&mut a, 100, 400, &[z.heartbeat(0)]);
    assert!(decided.is_empty(), "{decided:?}");
}

#[test]
fn weights_change_at_run_time() {
    // Active a disables itself.
    let mut a = engine("a", 1, 10, 0);
    run(&mut a, 0, ACT, &[]);
    won(&mut a, ACT, 0, 1);
    assert_eq!(
        decisions(a.step(ACT + 1, Event::SetWeight(0))),
        vec![Command::Deactivate {
            slot_epoch: se(0, 1),
            reason: DeactivateReason::Disabled
        }]
    );
    assert!(!a.heartbeat(ACT + 1).candidate);
    assert!(
        run(&mut a, ACT + 2, 200, &[]).is_empty(),
        "weight 0 never activates"
    );

    // Inactive b raises its weight above the active one's: one takeover.
    let mut b = engine("b", 1, 5, 0);
    let holder = hb("h", 1, 10, Some(se(0, 3)));
    assert!(run(&mut b, 0, 100, std::slice::from_ref(&holder)).is_empty());
    assert_eq!(
        decisions(b.step(101, Event::SetWeight(11))),
        vec![Command::ClaimSlot {
            slot: 0,
            supersedes: Some(3)
        }]
    );
    assert_eq!(b.heartbeat(101).weight, 11);
}

#[test]
fn a_fenced_member_deactivates_and_stands_by_with_a_growing_backoff() {
    let mut a = engine("a", 1, 10, 0);
    run(&mut a, 0, ACT, &[]);
    won(&mut a, ACT, 0, 1);
    // Another event for an activation it does not hold is ignored.
    assert!(
        decisions(a.step(
            40,
            Event::Fenced {
                ours: se(0, 9),
                by: 10
            }
        ))
        .is_empty()
    );
    let fenced = decisions(a.step(
        40,
        Event::Fenced {
            ours: se(0, 1),
            by: 2,
        },
    ));
    assert_eq!(
        fenced,
        vec![Command::Deactivate {
            slot_epoch: se(0, 1),
            reason: DeactivateReason::Fenced { by: 2 }
        }]
    );
    assert_eq!(a.state(), MemberState::Inactive);
    assert!(!a.heartbeat(41).candidate, "stands by");
    // Alone (the other side of a partition), it retries after one activation interval, and
    // claims with the epoch it learned, so that the store refuses it if newer ones exist.
    let decided = run(&mut a, 41, 40 + ACT, &[]);
    assert_eq!(
        decided,
        vec![(
            40 + ACT,
            Command::ClaimSlot {
                slot: 0,
                supersedes: Some(2)
            }
        )]
    );
    won(&mut a, 40 + ACT, 0, 3);
    let t = 40 + ACT + 1;
    decisions(a.step(
        t,
        Event::Fenced {
            ours: se(0, 3),
            by: 4,
        },
    ));
    // The second fence in a row doubles the stand-by.
    let decided = run(&mut a, t + 1, t + 2 * ACT, &[]);
    assert_eq!(
        decided.first().map(|(at, _)| *at),
        Some(t + 2 * ACT),
        "{decided:?}"
    );
}

#[test]
fn lost_and_failed_claims_wait_before_trying_again() {
    let mut a = engine("a", 1, 10, 0);
    run(&mut a, 0, ACT, &[]);
    let lost = decisions(a.step(
        ACT,
        Event::ClaimResult {
            slot: 0,
            outcome: ClaimOutcome::Lost { by: 7 },
        },
    ));
    assert!(lost.is_empty());
    assert!(a.heartbeat(ACT).candidate);
    let decided = run(&mut a, ACT + 1, ACT + HB, &[]);
    assert_eq!(
        decided,
        vec![(
            ACT + HB,
            Command::ClaimSlot {
                slot: 0,
                supersedes: Some(7)
            }
        )]
    );
    a.step(
        ACT + HB,
        Event::ClaimResult {
            slot: 0,
            outcome: ClaimOutcome::Failed {
                reason: "store down".into(),
            },
        },
    );
    assert!(!a.heartbeat(ACT + HB).candidate, "a failed claim stands by");
    let decided = run(&mut a, ACT + HB + 1, 2 * ACT + HB, &[]);
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].0, 2 * ACT + HB);
}

#[test]
fn leaving_deactivates_says_goodbye_and_is_forgotten_at_once() {
    let mut a = engine("a", 1, 10, 0);
    run(&mut a, 0, ACT, &[]);
    won(&mut a, ACT, 0, 1);
    let active_beat = a.heartbeat(49);
    let bye = a.step(50, Event::Leave);
    let [
        Command::Deactivate {
            slot_epoch,
            reason: DeactivateReason::Leaving,
        },
        Command::Broadcast(goodbye),
    ] = bye.as_slice()
    else {
        panic!("{bye:?}");
    };
    assert_eq!(*slot_epoch, se(0, 1));
    assert!(goodbye.leaving && goodbye.active.is_none() && !goodbye.candidate);
    assert!(
        a.step(51, Event::Tick).is_empty(),
        "a left member is silent"
    );
    assert_eq!(a.next_deadline(), None);

    let mut b = engine("b", 1, 5, 0);
    run(&mut b, 0, 40, &[active_beat]);
    let seen = b.step(50, Event::Heartbeat(goodbye.clone()));
    assert!(seen.contains(&Command::Lost(id("a"))), "{seen:?}");
    // b is established and alone now: it claims at once, not after activation_interval.
    assert!(
        seen.iter()
            .any(|c| matches!(c, Command::ClaimSlot { slot: 0, .. })),
        "{seen:?}"
    );
}

#[test]
fn superseded_actives_step_down_and_counts_are_reported() {
    let mut a = engine("a", 1, 10, 0);
    run(&mut a, 0, ACT, &[]);
    won(&mut a, ACT, 0, 3);
    // The other side of a healed partition holds the same slot with an older epoch: a stays.
    let older = a.step(40, Event::Heartbeat(hb("b", 1, 50, Some(se(0, 2)))));
    assert!(older.contains(&Command::ActiveCount(2)), "{older:?}");
    assert!(decisions(older).is_empty());
    // A newer epoch: a steps down.
    let newer = a.step(41, Event::Heartbeat(hb("c", 1, 1, Some(se(0, 4)))));
    assert_eq!(
        decisions(newer.clone()),
        vec![Command::Deactivate {
            slot_epoch: se(0, 3),
            reason: DeactivateReason::Superseded {
                by: id("c"),
                epoch: 4
            }
        }]
    );
    assert_eq!(a.actives(), vec![(id("b"), se(0, 2)), (id("c"), se(0, 4))]);
}

#[test]
fn gossip_announces_each_new_address_once() {
    let mut a = engine("a", 2, 10, 0);
    let mut beat = hb("b", 2, 10, None);
    beat.peers = vec![
        PeerAddr {
            member: id("c"),
            addr: "addr-c".into(),
        },
        PeerAddr {
            member: id("a"),
            addr: "addr-a".into(),
        },
        PeerAddr {
            member: id("d"),
            addr: "x".repeat(MAX_ADDR_LEN + 1),
        },
    ];
    let connects: Vec<_> = a
        .step(0, Event::Heartbeat(beat.clone()))
        .into_iter()
        .filter(|c| matches!(c, Command::Connect(_)))
        .collect();
    assert_eq!(
        connects,
        vec![
            Command::Connect(PeerAddr {
                member: id("b"),
                addr: "addr-b".into()
            }),
            Command::Connect(PeerAddr {
                member: id("c"),
                addr: "addr-c".into()
            }),
        ]
    );
    assert!(
        !a.step(1, Event::Heartbeat(beat))
            .iter()
            .any(|c| matches!(c, Command::Connect(_)))
    );
    // b is lost, then comes back at the same address: it is announced again, so that the
    // runtime dials it again (its old dialer may have given up).
    let back = a.step(2 + ACT, Event::Tick);
    assert!(back.contains(&Command::Lost(id("b"))), "{back:?}");
    let again = a.step(3 + ACT, Event::Heartbeat(hb("b", 2, 10, None)));
    assert!(
        again.contains(&Command::Connect(PeerAddr {
            member: id("b"),
            addr: "addr-b".into()
        })),
        "{again:?}"
    );
    let gossip = a.heartbeat(2).peers;
    assert_eq!(
        gossip,
        vec![PeerAddr {
            member: id("b"),
            addr: "addr-b".into()
        }]
    );
}

#[test]
fn deadlines_cover_every_timer() {
    let mut a = engine("a", 1, 10, 0);
    assert_eq!(
        a.next_deadline(),
        Some(0),
        "the first heartbeat is due at once"
    );
    a.step(0, Event::Tick);
    assert_eq!(a.next_deadline(), Some(HB));
    a.step(5, Event::Heartbeat(hb("b", 1, 50, Some(se(0, 1)))));
    // b is lost at 35; a's own heartbeat at 10 comes first.
    assert_eq!(a.next_deadline(), Some(HB));
    a.step(HB, Event::Tick);
    assert_eq!(a.next_deadline(), Some(2 * HB));
    a.step(30, Event::Tick);
    assert_eq!(a.next_deadline(), Some(5 + ACT));
}

#[test]
fn with_a_quorum_a_member_claims_only_while_it_hears_enough_members() {
    let cfg = config(1, 10).with_quorum(Some(2));
    let mut a = GroupEngine::new(cfg, id("a"), "x", "y", 0).unwrap();
    assert!(run(&mut a, 0, 3 * ACT, &[]).is_empty(), "alone: 1 of 2");
    let decided = run(&mut a, 3 * ACT + 1, 4 * ACT, &[hb("b", 1, 5, None)]);
    assert_eq!(
        decided.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
        vec![Command::ClaimSlot {
            slot: 0,
            supersedes: None
        }]
    );
    let zero = config(1, 1).with_quorum(Some(0));
    assert!(zero.validate().unwrap_err().to_string().contains("quorum"));
}
