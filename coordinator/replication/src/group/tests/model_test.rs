//! Property test: whole groups of engines in a simulated network (random delays, FIFO per
//! link, partitions, crashes, rejoins, departures, weight changes) with a simulated store that
//! grants slot epochs create-only and fences commits of older epochs.
//!
//! Checked:
//! - whenever every live member's view agrees with the truth, at most `active_goal` members
//!   are active, on distinct slots;
//! - after the last disturbance (the partition healed), every view converges to the truth, the
//!   active count is `min(goal, eligible members)`, and no inactive member outweighs an active
//!   one;
//! - once converged, nothing activates or deactivates any more (no thrashing);
//! - a higher-weight newcomer causes exactly one handover, no earlier than one activation
//!   interval after it joined.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// The longest one-way delay of a heartbeat or a store request, ms.
const MAX_DELAY: u64 = 3;
/// How often an active member commits work, ms.
const COMMIT_EVERY: u64 = 5;
/// Quiet time after the last disturbance before convergence is checked: the longest fence
/// backoff (8 activation intervals) plus a few more.
const SETTLE: u64 = 12 * ACT;

#[derive(Clone, Debug)]
enum Action {
    Crash(usize),
    Rejoin(usize),
    Leave(usize),
    Weight(usize, u16),
    /// Which side each member is on.
    Partition(Vec<bool>),
    Heal,
}

#[derive(Clone, Debug)]
struct Scenario {
    goal: u32,
    weights: Vec<u16>,
    joins: Vec<u64>,
    actions: Vec<(u64, Action)>,
    seed: u64,
    prepare: bool,
    /// Whether members need to hear a majority of the group to claim.
    quorum: bool,
}

enum Delivery {
    Beat {
        from: usize,
        to: usize,
        hb: Heartbeat,
    },
    Claim {
        to: usize,
        incarnation: u32,
        slot: u32,
        supersedes: Option<u64>,
    },
}

struct Node {
    engine: GroupEngine,
    incarnation: u32,
    /// The engine's next deadline, as of its latest step.
    deadline: Option<u64>,
}

struct Sim {
    now: u64,
    goal: u32,
    prepare: bool,
    quorum: Option<u32>,
    names: Vec<MemberId>,
    nodes: Vec<Option<Node>>,
    incarnations: Vec<u32>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    next_seq: u64,
    /// When the last message on each link is delivered (links are FIFO, like TCP).
    link_clock: BTreeMap<(usize, usize), u64>,
    store: BTreeMap<u32, u64>,
    side: Option<Vec<bool>>,
    rng: StdRng,
    /// Every decision: (time, member, command).
    log: Vec<(u64, usize, Command)>,
}

impl Sim {
    fn new(n: usize, goal: u32, prepare: bool, seed: u64) -> Self {
        Self {
            now: 0,
            goal,
            prepare,
            quorum: None,
            names: (0..n).map(|i| id(&format!("m{i}"))).collect(),
            nodes: (0..n).map(|_| None).collect(),
            incarnations: vec![0; n],
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            next_seq: 0,
            link_clock: BTreeMap::new(),
            store: BTreeMap::new(),
            side: None,
            rng: StdRng::seed_from_u64(seed),
            log: Vec::new(),
        }
    }

    fn join(&mut self, i: usize, weight: u16) {
        let mut cfg = config(self.goal, weight);
        if self.prepare {
            cfg = cfg.with_preparation_interval(Some(std::time::Duration::from_millis(PREP)));
        }
        cfg = cfg.with_quorum(self.quorum);
        let engine =
            GroupEngine::new(cfg, self.names[i].clone(), format!("a{i}"), "", self.now).unwrap();
        self.incarnations[i] += 1;
        self.nodes[i] = Some(Node {
            deadline: engine.next_deadline(),
            engine,
            incarnation: self.incarnations[i],
        });
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.side.as_ref().is_none_or(|s| s[a] == s[b])
    }

    fn push(&mut self, at: u64, delivery: Delivery) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.pending.insert(seq, delivery);
    }

    fn delay(&mut self) -> u64 {
        self.rng.random_range(0..=MAX_DELAY)
    }

    fn step_node(&mut self, i: usize, event: Event) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let commands = node.engine.step(self.now, event);
        node.deadline = node.engine.next_deadline();
        let incarnation = node.incarnation;
        for command in commands {
            match &command {
                Command::Broadcast(hb) => {
                    for j in 0..self.nodes.len() {
                        if j != i && self.nodes[j].is_some() && self.reachable(i, j) {
                            let at = (self.now + self.delay())
                                .max(self.link_clock.get(&(i, j)).copied().unwrap_or(0));
                            self.link_clock.insert((i, j), at);
                            self.push(
                                at,
                                Delivery::Beat {
                                    from: i,
                                    to: j,
                                    hb: hb.clone(),
                                },
                            );
                        }
                    }
                }
                Command::ClaimSlot { slot, supersedes } => {
                    let at = self.now + self.delay();
                    self.push(
                        at,
                        Delivery::Claim {
                            to: i,
                            incarnation,
                            slot: *slot,
                            supersedes: *supersedes,
                        },
                    );
                }
                _ => {}
            }
            if !matches!(
                command,
                Command::Broadcast(_) | Command::Connect(_) | Command::ActiveCount(_)
            ) {
                self.log.push((self.now, i, command));
            }
        }
    }

    /// Runs until `until` (inclusive), applying `actions` at their times.
    fn run(
        &mut self,
        until: u64,
        actions: &mut Vec<(u64, Action)>,
        weights: &mut [u16],
        check: &mut dyn FnMut(&Sim),
    ) {
        while self.now <= until {
            actions.sort_by_key(|(t, _)| *t);
            while actions.first().is_some_and(|(t, _)| *t <= self.now) {
                let (_, action) = actions.remove(0);
                self.apply(action, weights);
            }
            while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                let Some(delivery) = self.pending.remove(&seq) else {
                    continue;
                };
                match delivery {
                    Delivery::Beat { from, to, hb } => {
                        // Cut links drop what was in flight, as a reset TCP connection does.
                        if self.reachable(from, to) {
                            self.step_node(to, Event::Heartbeat(hb));
                        }
                    }
                    Delivery::Claim {
                        to,
                        incarnation,
                        slot,
                        supersedes,
                    } => {
                        let newest = self.store.get(&slot).copied().unwrap_or(0);
                        let outcome = if supersedes.is_some_and(|s| newest > s) {
                            ClaimOutcome::Lost { by: newest }
                        } else {
                            self.store.insert(slot, newest + 1);
                            ClaimOutcome::Won(se(slot, newest + 1))
                        };
                        if self.nodes[to]
                            .as_ref()
                            .is_some_and(|n| n.incarnation == incarnation)
                        {
                            self.step_node(to, Event::ClaimResult { slot, outcome });
                        }
                    }
                }
            }
            for i in 0..self.nodes.len() {
                let due = self.nodes[i]
                    .as_ref()
                    .and_then(|n| n.deadline)
                    .is_some_and(|d| d <= self.now);
                if due {
                    self.step_node(i, Event::Tick);
                }
                // Active members commit; the store fences older epochs.
                if self.now.is_multiple_of(COMMIT_EVERY)
                    && let Some(MemberState::Active(ours)) =
                        self.nodes[i].as_ref().map(|n| n.engine.state())
                {
                    let newest = self.store.get(&ours.slot).copied().unwrap_or(0);
                    if newest > ours.epoch {
                        self.step_node(i, Event::Fenced { ours, by: newest });
                    }
                }
            }
            check(self);
            self.now += 1;
        }
    }

    fn apply(&mut self, action: Action, weights: &mut [u16]) {
        match action {
            Action::Crash(i) => self.nodes[i] = None,
            Action::Rejoin(i) => {
                if self.nodes[i].is_none() {
                    self.join(i, weights[i]);
                }
            }
            Action::Leave(i) => {
                self.step_node(i, Event::Leave);
                self.nodes[i] = None;
            }
            Action::Weight(i, w) => {
                weights[i] = w;
                self.step_node(i, Event::SetWeight(w));
            }
            Action::Partition(side) => self.side = Some(side),
            Action::Heal => self.side = None,
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &GroupEngine)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, &n.engine)))
    }

    fn truth(&self) -> Vec<(MemberId, SlotEpoch)> {
        let mut actives: Vec<_> = self
            .live()
            .filter_map(|(i, e)| match e.state() {
                MemberState::Active(se) => Some((self.names[i].clone(), se)),
                _ => None,
            })
            .collect();
        actives.sort();
        actives
    }

    fn consistent(&self) -> bool {
        let truth = self.truth();
        self.live().all(|(_, e)| e.actives() == truth)
    }
}

fn weight_strategy() -> impl Strategy<Value = u16> {
    prop_oneof![1 => Just(0u16), 6 => 1u16..=4].prop_map(|w| w * 10)
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (2usize..=5)
        .prop_flat_map(|n| {
            let action = prop_oneof![
                (0..n).prop_map(Action::Crash),
                (0..n).prop_map(Action::Rejoin),
                (0..n).prop_map(Action::Leave),
                ((0..n), weight_strategy()).prop_map(|(i, w)| Action::Weight(i, w)),
                prop::collection::vec(any::<bool>(), n).prop_map(Action::Partition),
                Just(Action::Heal),
            ];
            (
                1u32..=3,
                prop::collection::vec(weight_strategy(), n),
                prop::collection::vec(prop_oneof![3 => Just(0u64), 1 => 0u64..200], n),
                prop::collection::vec((0u64..600, action), 0..8),
                any::<u64>(),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(goal, weights, joins, actions, seed, prepare, quorum)| Scenario {
                goal: goal.min(weights.len() as u32),
                weights,
                joins,
                actions,
                seed,
                prepare,
                quorum,
            },
        )
}

fn check_at_most_goal(sim: &Sim) {
    if sim.consistent() {
        let truth = sim.truth();
        assert!(
            truth.len() <= sim.goal as usize,
            "t={}: {} actives in a consistent view, goal {}: {truth:?}",
            sim.now,
            truth.len(),
            sim.goal
        );
        let mut slots: Vec<u32> = truth.iter().map(|(_, se)| se.slot).collect();
        slots.dedup();
        assert_eq!(
            slots.len(),
            truth.len(),
            "t={}: two actives on one slot: {truth:?}",
            sim.now
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn views_converge_with_at_most_goal_actives_and_no_thrashing(s in scenario()) {
        let n = s.weights.len();
        let mut sim = Sim::new(n, s.goal, s.prepare, s.seed);
        sim.quorum = s.quorum.then_some(n as u32 / 2 + 1);
        let mut weights = s.weights.clone();
        let mut actions: Vec<(u64, Action)> = s.actions.clone();
        for (i, at) in s.joins.iter().enumerate() {
            actions.push((*at, Action::Rejoin(i)));
        }
        let last = actions.iter().map(|(t, _)| *t).max().unwrap_or(0);
        actions.push((last + 1, Action::Heal));
        let settled = last + 1 + SETTLE;
        sim.run(settled, &mut actions, &mut weights, &mut check_at_most_goal);

        // Converged: every view is the truth.
        let truth = sim.truth();
        for (i, e) in sim.live() {
            prop_assert_eq!(e.actives(), truth.clone(), "member m{} at t={}", i, sim.now);
        }
        let eligible: Vec<(usize, u16)> = sim.live().filter(|(_, e)| e.weight() > 0).map(|(i, e)| (i, e.weight())).collect();
        let live = sim.live().count() as u32;
        let quorate = sim.quorum.is_none_or(|q| live >= q);
        if quorate {
            prop_assert_eq!(truth.len(), eligible.len().min(s.goal as usize), "truth {:?}", truth);
        } else {
            // Too few members to claim: those active before stay, nobody new activates.
            prop_assert!(truth.len() <= eligible.len().min(s.goal as usize), "truth {:?}", truth);
        }
        let min_active = truth.iter().map(|(m, _)| {
            sim.live().find(|(i, _)| sim.names[*i] == *m).map_or(0, |(_, e)| e.weight())
        }).min();
        // Without a quorum nobody claims, not even to take over.
        if let Some(min_active) = min_active.filter(|_| quorate) {
            for (i, w) in &eligible {
                let active = truth.iter().any(|(m, _)| *m == sim.names[*i]);
                prop_assert!(active || *w <= min_active, "inactive m{} (weight {}) outweighs an active member (weight {})", i, w, min_active);
            }
        }

        // Stable: nothing changes any more.
        let from = sim.now;
        sim.run(from + 10 * ACT, &mut Vec::new(), &mut weights, &mut check_at_most_goal);
        let changes: Vec<_> = sim.log.iter().filter(|(t, _, c)| *t >= from && matches!(c, Command::Activate(_) | Command::Deactivate { .. } | Command::ClaimSlot { .. })).collect();
        prop_assert!(changes.is_empty(), "thrashing after convergence: {:?}", changes);
    }

    #[test]
    fn a_higher_weight_newcomer_causes_exactly_one_handover(
        weights in prop::collection::vec(1u16..=30, 1..=4),
        goal in 1u32..=4,
        seed in any::<u64>(),
        join_at in 200u64..300,
    ) {
        let n = weights.len();
        let goal = goal.min(n as u32);
        let mut sim = Sim::new(n + 1, goal, false, seed);
        let mut all_weights: Vec<u16> = weights.clone();
        let newcomer_weight = weights.iter().max().copied().unwrap_or(1) + 1;
        all_weights.push(newcomer_weight);
        let mut actions: Vec<(u64, Action)> = (0..n).map(|i| (0, Action::Rejoin(i))).collect();
        sim.run(join_at - 1, &mut actions, &mut all_weights, &mut check_at_most_goal);
        prop_assert_eq!(sim.truth().len(), goal as usize);
        let before = sim.log.len();
        let mut actions = vec![(join_at, Action::Rejoin(n))];
        sim.run(join_at + 20 * ACT, &mut actions, &mut all_weights, &mut check_at_most_goal);
        let after = &sim.log[before..];
        let activations: Vec<_> = after.iter().filter(|(_, _, c)| matches!(c, Command::Activate(_))).collect();
        let deactivations: Vec<_> = after.iter().filter(|(_, _, c)| matches!(c, Command::Deactivate { .. })).collect();
        prop_assert_eq!(activations.len(), 1, "{:?}", after);
        prop_assert_eq!(activations[0].1, n, "the newcomer activates");
        prop_assert!(activations[0].0 >= join_at + ACT, "not before a full activation interval: {:?}", activations);
        prop_assert_eq!(deactivations.len(), 1, "{:?}", after);
        // The old holder learns of the handover from the newcomer's heartbeat, or from its own
        // next commit, whichever comes first.
        let superseded = matches!(
            deactivations[0].2,
            Command::Deactivate {
                reason: DeactivateReason::Superseded { .. } | DeactivateReason::Fenced { .. },
                ..
            }
        );
        prop_assert!(superseded, "{:?}", deactivations);
        prop_assert_eq!(sim.truth().len(), goal as usize);
    }
}
