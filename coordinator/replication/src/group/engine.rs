//! [`GroupEngine`]: one member's view of its group, and the Rendezvous decisions taken on it.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::types::{
    ClaimOutcome, Command, DeactivateReason, Event, Heartbeat, MAX_ADDR_LEN, MAX_GOSSIP, PeerAddr,
    RejectedPeer,
};
use crate::Error;
use crate::config::{GroupConfig, MemberId};
use crate::fencing::SlotEpoch;

/// The longest a fenced member stands by, as a multiple of `activation_interval` (the backoff
/// doubles with each consecutive fence: 1, 2, 4, 8).
const MAX_FENCE_BACKOFF_SHIFT: u32 = 3;

/// Where this member stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Not active; a candidate when its weight is above 0.
    Inactive,
    /// A [`Command::ClaimSlot`] for this slot is in flight.
    Claiming {
        /// The slot being claimed.
        slot: u32,
    },
    /// Active with this slot and epoch.
    Active(SlotEpoch),
    /// Left the group; the engine ignores every event.
    Left,
}

/// What this member knows of a peer, from its heartbeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's weight.
    pub weight: u16,
    /// Whether the peer says it may activate now.
    pub candidate: bool,
    /// The slot and epoch the peer is active with.
    pub active: Option<SlotEpoch>,
    /// When its first heartbeat (since it was last lost) arrived.
    pub first_heard_ms: u64,
    /// When its latest heartbeat arrived.
    pub last_heard_ms: u64,
    /// From when it counts in the ranking (hysteresis: a newcomer only after it was heard for a
    /// full activation interval; an active member at once).
    pub established_at_ms: u64,
    /// Its group listener.
    pub addr: String,
    /// Where it serves clients.
    pub service_addr: String,
    /// Its heartbeat interval, in ms.
    pub heartbeat_interval_ms: u64,
}

/// One member's group logic, as a pure state machine: [`step`](Self::step) takes the time and
/// an [`Event`] and returns the [`Command`]s to carry out. No IO, no clock, no randomness: the
/// same inputs give the same commands on every member.
///
/// # Rules (Rendezvous, plus fencing)
///
/// - **Liveness.** A peer is lost once silent for `activation_interval` (or at once when it
///   says it leaves). This member itself only decides after it has run for one
///   `activation_interval`, so that it has heard every live member first.
/// - **Ranking.** Weight descending, then member id ascending (byte order): deterministic, with
///   no state beyond what heartbeats carry, and predictable for operators (`a-1` goes before
///   `a-2` at equal weight). Members of weight 0, and members that say they are not
///   candidates (standing by after a fence or a failed claim), never activate.
/// - **Hysteresis.** A newcomer counts in the ranking once it has been heard for a full
///   `activation_interval` (members heard during this member's own start-up count from the end
///   of it). So a higher-weight member that joins causes one handover, after that interval.
/// - **Activate.** While fewer than `active_goal` slots are held, the `k`-th ranked inactive
///   candidate claims the `k`-th free slot, if `k` is below the number of free slots. When all
///   slots are held, the `k`-th ranked inactive candidate takes over the slot of the `k`-th
///   weakest active member if its weight is *strictly* higher (equal weights never hand over).
///   Every activation claims a fencing epoch first ([`Command::ClaimSlot`]); only a won claim
///   leads to [`Command::Activate`].
/// - **Deactivate.** When more members are active than there are slots, some hold the same
///   slot: each slot belongs to its newest epoch, and an active member that sees its slot held
///   with a newer epoch deactivates ([`DeactivateReason::Superseded`]). Also on weight 0 and
///   when committing work was fenced.
/// - **Prepare.** With a `preparation_interval`, when an active peer has been silent that long
///   and this member would take its slot, [`Command::PrepareToActivate`] once.
/// - **Quorum** (optional, beyond Rendezvous): a member claims only while it hears at least
///   `quorum` members, itself included, each within two of its heartbeat intervals, so that
///   only the majority side of a partition activates.
/// - **After a fence** the member stands by (not a candidate) for `activation_interval`, doubled
///   on each consecutive fence up to 8 times, so that two sides of a partition do not take a
///   slot from each other on every heartbeat; hearing an active peer resets the streak.
#[derive(Clone, Debug)]
pub struct GroupEngine {
    pub(super) config: GroupConfig,
    me: MemberId,
    weight: u16,
    addr: String,
    service_addr: String,
    started_ms: u64,
    state: MemberState,
    peers: BTreeMap<MemberId, PeerView>,
    /// Every address learned, so that [`Command::Connect`] is emitted once per address.
    known: BTreeMap<MemberId, String>,
    rejected: BTreeMap<MemberId, RejectedPeer>,
    /// The newest epoch seen per slot, reported as `supersedes` in claims.
    seen_epochs: BTreeMap<u32, u64>,
    last_broadcast_ms: Option<u64>,
    prepared: bool,
    fence_streak: u32,
    /// No claim before this (after a lost or failed claim, or a fence).
    hold_until_ms: u64,
    /// Not a candidate before this (after a failed claim or a fence).
    standby_until_ms: u64,
    reported_count: Option<usize>,
    /// The time of the latest step: every deadline up to it has been handled.
    last_step_ms: u64,
}

impl GroupEngine {
    /// A member `me` that joins at `now_ms`, reachable for peers at `addr` and for clients at
    /// `service_addr`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if the configuration is invalid.
    pub fn new(
        config: GroupConfig,
        me: MemberId,
        addr: impl Into<String>,
        service_addr: impl Into<String>,
        now_ms: u64,
    ) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            weight: config.weight(),
            config,
            me,
            addr: addr.into(),
            service_addr: service_addr.into(),
            started_ms: now_ms,
            state: MemberState::Inactive,
            peers: BTreeMap::new(),
            known: BTreeMap::new(),
            rejected: BTreeMap::new(),
            seen_epochs: BTreeMap::new(),
            last_broadcast_ms: None,
            prepared: false,
            fence_streak: 0,
            hold_until_ms: 0,
            standby_until_ms: 0,
            reported_count: None,
            last_step_ms: now_ms,
        })
    }

    /// This member's id.
    pub fn me(&self) -> &MemberId {
        &self.me
    }

    /// The configuration (with the weight it started with).
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The current weight.
    pub fn weight(&self) -> u16 {
        self.weight
    }

    /// Where this member stands.
    pub fn state(&self) -> MemberState {
        self.state
    }

    /// The live peers, as this member sees them.
    pub fn peers(&self) -> &BTreeMap<MemberId, PeerView> {
        &self.peers
    }

    /// The active members in this member's view, with their slots and epochs (itself
    /// included), in member id order.
    pub fn actives(&self) -> Vec<(MemberId, SlotEpoch)> {
        let mut out: Vec<_> = self
            .peers
            .iter()
            .filter_map(|(id, p)| p.active.map(|se| (id.clone(), se)))
            .collect();
        if let MemberState::Active(se) = self.state {
            out.push((self.me.clone(), se));
        }
        out.sort();
        out
    }

    /// The latest time at which [`Event::Tick`] must be delivered (a heartbeat falls due, a
    /// peer may be lost, a newcomer becomes established, a hold ends): the earliest timer after
    /// the latest [`step`](Self::step), which handled every timer up to its own time; `None`
    /// after leaving. A deadline already past means: tick now.
    pub fn next_deadline(&self) -> Option<u64> {
        let now_ms = self.last_step_ms;
        if self.state == MemberState::Left {
            return None;
        }
        let activation = self.config.activation_ms();
        let mut deadlines = vec![
            self.last_broadcast_ms
                .map_or(now_ms, |t| t.saturating_add(self.config.heartbeat_ms())),
            self.started_ms.saturating_add(activation),
            self.hold_until_ms,
            self.standby_until_ms,
        ];
        for peer in self.peers.values() {
            deadlines.push(peer.last_heard_ms.saturating_add(activation));
            deadlines.push(peer.established_at_ms);
            if let (Some(prep), Some(_), false) =
                (self.config.preparation_ms(), peer.active, self.prepared)
            {
                deadlines.push(peer.last_heard_ms.saturating_add(prep));
            }
        }
        let future = deadlines.into_iter().filter(|&t| t > now_ms).min();
        // A heartbeat that is due now is the one deadline that may lie in the past.
        match self.last_broadcast_ms {
            None => Some(now_ms),
            Some(_) => future,
        }
    }

    /// Handles one event at `now_ms` and returns the commands to carry out, in order.
    pub fn step(&mut self, now_ms: u64, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        if self.state == MemberState::Left {
            return out;
        }
        self.last_step_ms = self.last_step_ms.max(now_ms);
        let mut changed = false;
        match event {
            Event::Tick => {}
            Event::Heartbeat(hb) => self.on_heartbeat(now_ms, hb, &mut out),
            Event::SetWeight(weight) => {
                changed = weight != self.weight;
                self.weight = weight;
            }
            Event::Leave => {
                if let MemberState::Active(slot_epoch) = self.state {
                    out.push(Command::Deactivate {
                        slot_epoch,
                        reason: DeactivateReason::Leaving,
                    });
                }
                self.state = MemberState::Left;
                let goodbye = self.heartbeat(now_ms);
                self.last_broadcast_ms = Some(now_ms);
                out.push(Command::Broadcast(goodbye));
                return out;
            }
            Event::ClaimResult { slot, outcome } => {
                if self.state == (MemberState::Claiming { slot }) {
                    changed = true;
                    match outcome {
                        ClaimOutcome::Won(se) if se.slot == slot => {
                            self.state = MemberState::Active(se);
                            self.note_epoch(se);
                            self.prepared = false;
                            out.push(Command::Activate(se));
                        }
                        ClaimOutcome::Won(_) | ClaimOutcome::Lost { .. } => {
                            if let ClaimOutcome::Lost { by } = outcome {
                                self.note_epoch(SlotEpoch { slot, epoch: by });
                            }
                            // The winner's heartbeat is on its way: wait for it.
                            self.state = MemberState::Inactive;
                            self.hold_until_ms = now_ms.saturating_add(self.config.heartbeat_ms());
                        }
                        ClaimOutcome::Failed { .. } => {
                            // This member cannot reach the store: let the others go first.
                            self.state = MemberState::Inactive;
                            let until = now_ms.saturating_add(self.config.activation_ms());
                            self.hold_until_ms = until;
                            self.standby_until_ms = until;
                        }
                    }
                }
            }
            Event::Fenced { ours, by } => {
                if self.state == MemberState::Active(ours) {
                    changed = true;
                    out.push(Command::Deactivate {
                        slot_epoch: ours,
                        reason: DeactivateReason::Fenced { by },
                    });
                    self.state = MemberState::Inactive;
                    self.note_epoch(SlotEpoch {
                        slot: ours.slot,
                        epoch: by,
                    });
                    let shift = self.fence_streak.min(MAX_FENCE_BACKOFF_SHIFT);
                    self.fence_streak = self.fence_streak.saturating_add(1);
                    let backoff = self.config.activation_ms().saturating_mul(1 << shift);
                    let until = now_ms.saturating_add(backoff);
                    self.hold_until_ms = until;
                    self.standby_until_ms = until;
                }
            }
        }
        self.evaluate(now_ms, changed, &mut out);
        out
    }

    fn on_heartbeat(&mut self, now_ms: u64, hb: Heartbeat, out: &mut Vec<Command>) {
        if hb.member == self.me {
            return;
        }
        if let Some(mismatch) = self.mismatch(&hb) {
            if self.rejected.get(&hb.member) != Some(&mismatch) {
                self.rejected.insert(hb.member.clone(), mismatch.clone());
                out.push(Command::Rejected {
                    member: hb.member.clone(),
                    error: mismatch,
                });
            }
            if self.peers.remove(&hb.member).is_some() {
                self.known.remove(&hb.member);
                out.push(Command::Lost(hb.member));
            }
            return;
        }
        self.rejected.remove(&hb.member);
        if hb.leaving {
            if self.peers.remove(&hb.member).is_some() {
                self.known.remove(&hb.member);
                out.push(Command::Lost(hb.member));
            }
            return;
        }
        let goal = self.config.active_goal();
        // A slot outside the goal cannot come from a peer that agrees on the goal: ignore it.
        let active = hb.active.filter(|se| se.slot < goal);
        if let Some(se) = active {
            self.note_epoch(se);
            self.fence_streak = 0;
        }
        let grace_end = self.started_ms.saturating_add(self.config.activation_ms());
        let addr = sane_addr(&hb.addr);
        let service_addr = sane_addr(&hb.service_addr);
        let peer = self
            .peers
            .entry(hb.member.clone())
            .or_insert_with(|| PeerView {
                weight: hb.weight,
                candidate: hb.candidate,
                active: None,
                first_heard_ms: now_ms,
                last_heard_ms: now_ms,
                established_at_ms: if now_ms < grace_end {
                    grace_end
                } else {
                    now_ms.saturating_add(self.config.activation_ms())
                },
                addr: String::new(),
                service_addr: String::new(),
                heartbeat_interval_ms: hb.heartbeat_interval_ms,
            });
        peer.heartbeat_interval_ms = hb.heartbeat_interval_ms;
        peer.weight = hb.weight;
        peer.candidate = hb.candidate;
        peer.active = active;
        peer.last_heard_ms = now_ms;
        if active.is_some() {
            peer.established_at_ms = peer.established_at_ms.min(now_ms);
        }
        if !addr.is_empty() {
            peer.addr = addr.to_owned();
        }
        if !service_addr.is_empty() {
            peer.service_addr = service_addr.to_owned();
        }
        let mut learned = Vec::new();
        if !addr.is_empty() {
            learned.push(PeerAddr {
                member: hb.member.clone(),
                addr: addr.to_owned(),
            });
        }
        learned.extend(hb.peers.into_iter().take(MAX_GOSSIP).filter_map(|p| {
            let addr = sane_addr(&p.addr);
            (p.member != self.me && !addr.is_empty()).then(|| PeerAddr {
                member: p.member,
                addr: addr.to_owned(),
            })
        }));
        for peer in learned {
            if self.known.get(&peer.member) != Some(&peer.addr) {
                self.known.insert(peer.member.clone(), peer.addr.clone());
                out.push(Command::Connect(peer));
            }
        }
    }

    fn mismatch(&self, hb: &Heartbeat) -> Option<RejectedPeer> {
        let group = self.config.group().clone();
        let reject = |field, ours: String, theirs: String| {
            Some(RejectedPeer {
                group: group.clone(),
                field,
                ours,
                theirs,
            })
        };
        if hb.group != *self.config.group() {
            return reject(
                "group",
                self.config.group().to_string(),
                hb.group.to_string(),
            );
        }
        if hb.active_goal != self.config.active_goal() {
            return reject(
                "active_goal",
                self.config.active_goal().to_string(),
                hb.active_goal.to_string(),
            );
        }
        if hb.activation_interval_ms != self.config.activation_ms() {
            return reject(
                "activation_interval",
                format!("{} ms", self.config.activation_ms()),
                format!("{} ms", hb.activation_interval_ms),
            );
        }
        None
    }

    fn note_epoch(&mut self, se: SlotEpoch) {
        let seen = self.seen_epochs.entry(se.slot).or_insert(se.epoch);
        *seen = (*seen).max(se.epoch);
    }

    fn evaluate(&mut self, now_ms: u64, mut changed: bool, out: &mut Vec<Command>) {
        let activation = self.config.activation_ms();
        let lost: Vec<MemberId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.last_heard_ms.saturating_add(activation) <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            // Forget its address too: if it comes back (a restart at the same address), its
            // heartbeat announces it again and the runtime dials it again.
            self.peers.remove(&id);
            self.known.remove(&id);
            out.push(Command::Lost(id));
        }

        let holders = self.holders();
        match self.state {
            MemberState::Active(mine) => {
                let reason = if self.weight == 0 {
                    Some(DeactivateReason::Disabled)
                } else {
                    holders
                        .get(&mine.slot)
                        .filter(|h| h.epoch > mine.epoch)
                        .map(|h| DeactivateReason::Superseded {
                            by: h.member.clone(),
                            epoch: h.epoch,
                        })
                };
                if let Some(reason) = reason {
                    out.push(Command::Deactivate {
                        slot_epoch: mine,
                        reason,
                    });
                    self.state = MemberState::Inactive;
                    changed = true;
                }
            }
            MemberState::Inactive => {
                if let Some(claim) = self.decide_claim(now_ms, &holders) {
                    self.state = MemberState::Claiming { slot: claim.0 };
                    out.push(Command::ClaimSlot {
                        slot: claim.0,
                        supersedes: claim.1,
                    });
                } else {
                    self.decide_prepare(now_ms, &holders, out);
                }
            }
            MemberState::Claiming { .. } | MemberState::Left => {}
        }

        let count = self.peers.values().filter(|p| p.active.is_some()).count()
            + usize::from(matches!(self.state, MemberState::Active(_)));
        if self.reported_count != Some(count) {
            self.reported_count = Some(count);
            out.push(Command::ActiveCount(count));
        }

        let due = self
            .last_broadcast_ms
            .is_none_or(|t| t.saturating_add(self.config.heartbeat_ms()) <= now_ms);
        if changed || due {
            let hb = self.heartbeat(now_ms);
            self.last_broadcast_ms = Some(now_ms);
            out.push(Command::Broadcast(hb));
        }
    }

    /// Each held slot's newest epoch and its holder (this member included).
    fn holders(&self) -> BTreeMap<u32, Holder> {
        let mut holders: BTreeMap<u32, Holder> = BTreeMap::new();
        let mine = match self.state {
            MemberState::Active(se) => Some((&self.me, self.weight, se)),
            _ => None,
        };
        let peers = self
            .peers
            .iter()
            .filter_map(|(id, p)| p.active.map(|se| (id, p.weight, se)));
        for (member, weight, se) in peers.chain(mine) {
            let newer = holders.get(&se.slot).is_none_or(|h| se.epoch > h.epoch);
            if newer {
                holders.insert(
                    se.slot,
                    Holder {
                        member: member.clone(),
                        weight,
                        epoch: se.epoch,
                    },
                );
            }
        }
        holders
    }

    /// Whether this member may take part in the ranking now.
    fn is_candidate(&self, now_ms: u64) -> bool {
        self.weight > 0 && now_ms >= self.standby_until_ms && self.state != MemberState::Left
    }

    /// The established inactive candidates (this member included if it is one), best first.
    fn inactive_candidates(&self, now_ms: u64) -> Vec<(u16, &MemberId)> {
        let mut ranked: Vec<(u16, &MemberId)> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.weight > 0 && p.candidate && p.active.is_none() && p.established_at_ms <= now_ms
            })
            .map(|(id, p)| (p.weight, id))
            .collect();
        ranked.push((self.weight, &self.me));
        ranked.sort_by_key(|&(weight, id)| (Reverse(weight), id));
        ranked
    }

    fn decide_claim(
        &self,
        now_ms: u64,
        holders: &BTreeMap<u32, Holder>,
    ) -> Option<(u32, Option<u64>)> {
        let established = now_ms >= self.started_ms.saturating_add(self.config.activation_ms());
        if !established || !self.is_candidate(now_ms) || now_ms < self.hold_until_ms {
            return None;
        }
        if let Some(quorum) = self.config.quorum() {
            // Only peers heard within two of their heartbeat intervals count: a peer that has
            // gone silent but is not yet lost must not make up a majority.
            let activation = self.config.activation_ms();
            let fresh = self
                .peers
                .values()
                .filter(|p| {
                    let window = p.heartbeat_interval_ms.saturating_mul(2).min(activation);
                    p.last_heard_ms.saturating_add(window) >= now_ms
                })
                .count() as u64;
            if fresh + 1 < u64::from(quorum) {
                return None;
            }
        }
        let ranked = self.inactive_candidates(now_ms);
        let position = ranked.iter().position(|(_, id)| **id == self.me)?;
        let goal = self.config.active_goal();
        let free: Vec<u32> = (0..goal).filter(|s| !holders.contains_key(s)).collect();
        if !free.is_empty() {
            let slot = *free.get(position)?;
            return Some((slot, self.seen_epochs.get(&slot).copied()));
        }
        // Every slot is held: pair the best inactive candidates with the weakest actives.
        let mut weakest: Vec<(u32, &Holder)> = holders.iter().map(|(s, h)| (*s, h)).collect();
        weakest.sort_by_key(|(_, h)| (h.weight, Reverse(&h.member)));
        let handovers = ranked
            .iter()
            .zip(&weakest)
            .take_while(|((weight, _), (_, holder))| *weight > holder.weight)
            .count();
        if position < handovers {
            let (slot, holder) = weakest.get(position)?;
            return Some((*slot, Some(holder.epoch)));
        }
        None
    }

    fn decide_prepare(
        &mut self,
        now_ms: u64,
        holders: &BTreeMap<u32, Holder>,
        out: &mut Vec<Command>,
    ) {
        let Some(prep) = self.config.preparation_ms() else {
            return;
        };
        let silent = holders
            .values()
            .filter(|h| {
                self.peers
                    .get(&h.member)
                    .is_some_and(|p| p.last_heard_ms.saturating_add(prep) <= now_ms)
            })
            .count();
        if silent == 0 {
            self.prepared = false;
            return;
        }
        if self.prepared || !self.is_candidate(now_ms) {
            return;
        }
        let free = self.config.active_goal() as usize - holders.len();
        let ranked = self.inactive_candidates(now_ms);
        let Some(position) = ranked.iter().position(|(_, id)| **id == self.me) else {
            return;
        };
        if position < free + silent {
            self.prepared = true;
            out.push(Command::PrepareToActivate);
        }
    }

    #[cfg(test)]
    pub(crate) fn state_for_tests(&mut self, state: MemberState) {
        self.state = state;
    }

    /// The heartbeat this member sends now.
    pub fn heartbeat(&self, now_ms: u64) -> Heartbeat {
        let left = self.state == MemberState::Left;
        Heartbeat {
            group: self.config.group().clone(),
            member: self.me.clone(),
            weight: self.weight,
            candidate: !left && self.is_candidate(now_ms),
            active_goal: self.config.active_goal(),
            activation_interval_ms: self.config.activation_ms(),
            heartbeat_interval_ms: self.config.heartbeat_ms(),
            active: match self.state {
                MemberState::Active(se) => Some(se),
                _ => None,
            },
            leaving: left,
            addr: self.addr.clone(),
            service_addr: self.service_addr.clone(),
            peers: self
                .peers
                .iter()
                .filter(|(_, p)| !p.addr.is_empty())
                .take(MAX_GOSSIP)
                .map(|(id, p)| PeerAddr {
                    member: id.clone(),
                    addr: p.addr.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug)]
struct Holder {
    member: MemberId,
    weight: u16,
    epoch: u64,
}

/// A peer-supplied address, or empty if it is too long or holds control characters.
fn sane_addr(addr: &str) -> &str {
    if addr.len() <= MAX_ADDR_LEN && !addr.chars().any(char::is_control) {
        addr
    } else {
        ""
    }
}
