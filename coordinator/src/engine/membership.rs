//! Membership changes of a running cohort: a node drained of its objects, objects rebalanced
//! onto nodes that joined, and objects removed. All take effect at a checkpoint boundary, by
//! the one mechanism node loss uses: right after a commit, the engine re-places (or drops)
//! them and recovers the cohort to the line just committed, with the new hosts creating them
//! from their factories and the old ones disowning them.
//!
//! A removed object's message counters outlive it. The cut balances when Σ sent − Σ received
//! over the participants equals the in-transit messages recorded, and the messages it sent or
//! received are in its peers' counters: so its own (sent, received), with the messages in
//! transit to it in the line it left counted as received (they are discarded), are added to
//! every later attempt's balance and recorded in every later line.

use std::collections::{BTreeMap, BTreeSet};

use cohort_object_api::ObjectId;

use super::{Command, Engine, EngineTypes, HostId, Hosting, RecoveryCause, Status};

impl<T: EngineTypes> Engine<T> {
    /// An operator drains `host`: it gets no new objects, and its objects move to the other
    /// nodes at the next checkpoint boundary. Returns false when `host` is not an up node.
    pub(super) fn on_drain(&mut self, host: &HostId) -> bool {
        match self.hosts.get_mut(host) {
            Some(state) if state.up => {
                state.draining = true;
                self.rebalance_due = true;
                true
            }
            _ => false,
        }
    }

    /// An operator removes `object` at the next commit.
    pub(super) fn on_remove(&mut self, object: ObjectId, out: &mut Vec<Command<T>>) {
        let refuse = |reason: String| Command::RemoveRefused {
            object: object.clone(),
            reason,
        };
        if self.config.hosting != Hosting::Hosted {
            out.push(refuse(
                "objects are removed from cohorts of nodes only; in process, stop sending to it and let it idle".into(),
            ));
        } else if self.status == Status::Deposed {
            out.push(refuse(
                "this coordinator no longer leads; ask the leader".into(),
            ));
        } else if !self.members.contains(&object) {
            out.push(refuse(format!(
                "{object} is not a member; `cohort status --json` lists the placement"
            )));
        } else {
            self.removing.insert(object);
        }
    }

    /// Whether `object` is to be removed at the next commit.
    pub fn removing(&self, object: &ObjectId) -> bool {
        self.removing.contains(object)
    }

    /// Removed objects' message counters, (sent, received), which every line records.
    pub fn retired(&self) -> &BTreeMap<ObjectId, (u64, u64)> {
        &self.retired
    }

    /// After a commit: the removals asked for, if any, as a recovery to the line just
    /// committed, whose restore leaves them out. Their hosts disown them first.
    pub(super) fn remove_after_commit(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        if self.removing.is_empty() || self.status != Status::Running || self.recovery.is_some() {
            return;
        }
        let mut disowned: BTreeMap<HostId, Vec<ObjectId>> = BTreeMap::new();
        let mut removed = 0;
        for object in std::mem::take(&mut self.removing) {
            if !self.members.remove(&object) {
                continue;
            }
            self.object_types.remove(&object);
            if let Some(host) = self.unplace(&object) {
                disowned.entry(host).or_default().push(object);
            }
            removed += 1;
        }
        if removed == 0 {
            return;
        }
        self.roster = None;
        for (host, objects) in disowned {
            out.push(Command::Disown { host, objects });
        }
        self.start_recovery(now_ms, RecoveryCause::Removed { objects: removed }, out);
    }

    /// The counters that objects of `line` that are no longer members add to every cut.
    pub(super) fn settle_retired(&mut self, line: Option<&super::LineInfo>) {
        self.retired = line
            .map(|l| {
                l.settled
                    .iter()
                    .filter(|(o, _)| !self.members.contains(*o))
                    .map(|(o, c)| (o.clone(), *c))
                    .collect()
            })
            .unwrap_or_default();
    }

    /// After a commit: the moves that drains and joins call for, if any, as a recovery to the
    /// line just committed (consistent, and it loses only what ran since that commit).
    pub(super) fn rebalance_after_commit(&mut self, now_ms: u64, out: &mut Vec<Command<T>>) {
        if !self.rebalance_due
            || self.config.hosting != Hosting::Hosted
            || self.status != Status::Running
            || self.recovery.is_some()
        {
            return;
        }
        self.rebalance_due = false;
        let moves = self.plan_moves();
        if moves.is_empty() {
            return;
        }
        let mut disowned: BTreeMap<HostId, Vec<ObjectId>> = BTreeMap::new();
        for (object, from, to) in &moves {
            let Some(type_name) = self.object_types.get(object).cloned() else {
                continue;
            };
            self.place(object.clone(), to.clone());
            self.creating.insert(object.clone(), type_name);
            disowned
                .entry(from.clone())
                .or_default()
                .push(object.clone());
        }
        self.roster = None;
        // The old hosts drop their copies before they restore: frames to a host keep their
        // order, so each removes them before the recovery's restore reaches it.
        for (host, objects) in disowned {
            out.push(Command::Disown { host, objects });
        }
        self.start_recovery(now_ms, RecoveryCause::Rebalance { moved: moves.len() }, out);
    }

    /// The moves, as (object, from, to): every object of a draining host to the least loaded
    /// ready host that declared its type; then, while some ready host holds at least two more
    /// objects than another that declared the type of one of them, one of those moves over.
    fn plan_moves(&self) -> Vec<(ObjectId, HostId, HostId)> {
        let mut on: BTreeMap<HostId, BTreeSet<ObjectId>> = BTreeMap::new();
        for (object, host) in &self.placement {
            if self.hosts.get(host).is_some_and(|s| s.up) && !self.creating.contains_key(object) {
                on.entry(host.clone()).or_default().insert(object.clone());
            }
        }
        let mut counts: BTreeMap<HostId, usize> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.is_ready() && !s.draining)
            .map(|(h, s)| (h.clone(), s.objects))
            .collect();
        let type_of = |o: &ObjectId| self.object_types.get(o).map(String::as_str);
        let target = |counts: &BTreeMap<HostId, usize>, type_name: &str, except: &HostId| {
            counts
                .iter()
                .filter(|(h, _)| {
                    *h != except
                        && self
                            .hosts
                            .get(*h)
                            .is_some_and(|s| s.types.contains(type_name))
                })
                .min_by_key(|(h, n)| (**n, (*h).clone()))
                .map(|(h, n)| (h.clone(), *n))
        };
        let mut moves = Vec::new();
        for (host, state) in &self.hosts {
            if !(state.up && state.draining) {
                continue;
            }
            for object in on.get(host).into_iter().flatten() {
                let Some(type_name) = type_of(object) else {
                    continue;
                };
                if let Some((to, _)) = target(&counts, type_name, host) {
                    *counts.entry(to.clone()).or_default() += 1;
                    moves.push((object.clone(), host.clone(), to));
                }
            }
        }
        // Each move narrows the spread, so this ends; the bound is a guard.
        for _ in 0..self.members.len() {
            let mut by_load: Vec<(HostId, usize)> =
                counts.iter().map(|(h, n)| (h.clone(), *n)).collect();
            by_load.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let found = by_load.iter().find_map(|(from, n)| {
                on.get(from)?.iter().find_map(|object| {
                    let (to, m) = target(&counts, type_of(object)?, from)?;
                    (m + 2 <= *n).then(|| (object.clone(), from.clone(), to))
                })
            });
            let Some((object, from, to)) = found else {
                break;
            };
            if let Some(objects) = on.get_mut(&from) {
                objects.remove(&object);
            }
            *counts.entry(from.clone()).or_default() -= 1;
            *counts.entry(to.clone()).or_default() += 1;
            moves.push((object, from, to));
        }
        moves
    }

    /// Whether `host` is draining (it gets no new objects; its objects move away).
    pub fn draining(&self, host: &HostId) -> bool {
        self.hosts.get(host).is_some_and(|s| s.draining)
    }
}
