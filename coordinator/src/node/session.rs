//! The node's session with the coordinator: connect (following "not leader"), register,
//! heartbeats both ways, carry out orders, reconnect with backoff and resume the session.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::NodeSink;
use super::{ActiveRound, NodeShared, NodeStatus, Placement};
use crate::engine::{RestoreFailure, Round};
use crate::participant::writer::{RoundWriter, WriterMsg};
use crate::participant::{lock, read, write};
use crate::service::protocol::{CoordinatorFrame, NodeFrame};
use cohort_wire::{ConnectConfig, Connection, Role};

type Conn = Connection<CoordinatorFrame, NodeFrame, cohort_wire::BoxStream>;

pub(super) async fn run(
    node: Weak<NodeShared>,
    coordinators: Vec<String>,
    mut outbox: mpsc::UnboundedReceiver<NodeFrame>,
) {
    let mut session: Option<u64> = None;
    let mut sessions = 0u64;
    let mut backoff = Duration::ZERO;
    let mut candidates: VecDeque<String> = coordinators.iter().cloned().collect();
    loop {
        let Some(shared) = node.upgrade() else { return };
        let shutdown = shared.shutdown.clone();
        // A stopped node connects no more (it would register again and again).
        if shutdown.is_cancelled() {
            return;
        }
        if !backoff.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
        }
        let next_backoff = |b: Duration| {
            (b * 2)
                .max(shared.settings.min_backoff)
                .min(shared.settings.max_backoff)
        };
        let addr = match candidates.pop_front() {
            Some(a) => a,
            None => {
                candidates = coordinators.iter().cloned().collect();
                backoff = next_backoff(backoff);
                continue;
            }
        };
        let mut config = ConnectConfig::new(Role::Node, shared.name.clone());
        config.token = shared.token.clone();
        config.tls = shared.tls.clone();
        config.accept_roles = vec![Role::Coordinator];
        config.handshake_timeout = shared.settings.heartbeat_timeout;
        let mut conn: Conn = match config
            .connect_via(shared.network.as_ref(), addr.as_str())
            .await
        {
            Ok(c) => c,
            // A peer that refused this node's credentials (or ours its) is a misconfiguration
            // to tell the operator; an unreachable one is routine while coordinators come and go.
            Err(e) if e.kind() == cohort_object_api::ErrorKind::Peer => {
                tracing::warn!(%addr, error = %e, "a coordinator refused the connection");
                if candidates.is_empty() {
                    backoff = next_backoff(backoff);
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "cannot reach a coordinator");
                if candidates.is_empty() {
                    backoff = next_backoff(backoff);
                }
                continue;
            }
        };
        let (objects, types) = {
            let slots = read(&shared.objects);
            let objects: Vec<_> = slots.keys().cloned().collect();
            let types = slots
                .iter()
                .map(|(id, slot)| (id.clone(), slot.type_name.to_owned()))
                .collect();
            (objects, types)
        };
        let register = NodeFrame::Register {
            session,
            peer_addr: shared.peer_addr.clone(),
            objects,
            types,
            factories: shared.factories.keys().cloned().collect(),
        };
        if conn
            .send_within(&register, shared.settings.heartbeat_timeout)
            .await
            .is_err()
        {
            backoff = next_backoff(backoff);
            continue;
        }
        let first = tokio::time::timeout(shared.settings.heartbeat_timeout, conn.recv()).await;
        let (heartbeat, timeout) = match first {
            Ok(Ok(Some(CoordinatorFrame::Welcome {
                session: s,
                resumed,
                heartbeat_ms,
                timeout_ms,
            }))) => {
                // Frames queued for an earlier session are still sent: the coordinator ignores
                // the stale ones (votes of old rounds), and `Spawned` must not be lost.
                if !resumed {
                    sessions += 1;
                }
                session = Some(s);
                tracing::info!(%addr, session = s, resumed, "registered with the coordinator");
                (
                    Duration::from_millis(heartbeat_ms.max(1)),
                    Duration::from_millis(timeout_ms.max(1)),
                )
            }
            Ok(Ok(Some(CoordinatorFrame::NotLeader { leader }))) => {
                tracing::debug!(%addr, ?leader, "not the leader");
                match leader {
                    Some(l) if l != addr => candidates.push_front(l),
                    _ => backoff = next_backoff(backoff),
                }
                continue;
            }
            Ok(Ok(Some(CoordinatorFrame::Refused { reason }))) => {
                tracing::error!(%addr, %reason, "the coordinator refused this node");
                shared.status.send_replace(NodeStatus::Refused(reason));
                shared.shutdown.cancel();
                return;
            }
            _ => {
                backoff = next_backoff(backoff);
                continue;
            }
        };
        backoff = Duration::ZERO;
        candidates = std::iter::once(addr.clone())
            .chain(coordinators.iter().filter(|a| **a != addr).cloned())
            .collect();
        shared.status.send_replace(NodeStatus::Registered {
            coordinator: addr.clone(),
            session: session.unwrap_or(0),
            sessions,
            recoveries: shared.restores.load(Ordering::SeqCst),
        });
        drop(shared);
        let ended = serve(&node, &mut conn, &mut outbox, heartbeat, timeout).await;
        tracing::warn!(%addr, reason = %ended, "lost the coordinator; reconnecting");
        if let Some(shared) = node.upgrade() {
            shared.status.send_replace(NodeStatus::Connecting);
        }
    }
}

async fn serve(
    node: &Weak<NodeShared>,
    conn: &mut Conn,
    outbox: &mut mpsc::UnboundedReceiver<NodeFrame>,
    heartbeat: Duration,
    timeout: Duration,
) -> String {
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut roster = Roster::default();
    let shutdown = match node.upgrade() {
        Some(n) => n.shutdown.clone(),
        None => return "the node stopped".into(),
    };
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return "the node stopped".into(),
            frame = conn.recv() => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => return "the coordinator closed the connection".into(),
                    Err(e) => return e.to_string(),
                };
                deadline = tokio::time::Instant::now() + timeout;
                let Some(shared) = node.upgrade() else { return "the node stopped".into() };
                if let CoordinatorFrame::NotLeader { .. } = frame {
                    return "the coordinator stepped down".into();
                }
                if let Err(reason) = on_frame(&shared, frame, &mut roster) {
                    return reason;
                }
            }
            out = outbox.recv() => {
                let Some(mut out) = out else { return "the node stopped".into() };
                // An announcement is a claim the coordinator acts on: one queued before a
                // disown (or sent to an earlier leader) must not claim dropped objects back.
                if let NodeFrame::Spawned { objects, types } = &mut out {
                    let Some(shared) = node.upgrade() else { return "the node stopped".into() };
                    {
                        let slots = read(&shared.objects);
                        objects.retain(|o| slots.contains_key(o));
                        types.retain(|o, _| slots.contains_key(o));
                    }
                    if objects.is_empty() {
                        continue;
                    }
                }
                // Bounded: a coordinator that stopped reading must not hold this loop past
                // the timeout that declares it gone.
                if let Err(e) = conn.send_within(&out, timeout).await {
                    return e.to_string();
                }
            }
            _ = beat.tick() => {
                if let Err(e) = conn.send_within(&NodeFrame::Heartbeat, timeout).await {
                    return e.to_string();
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return format!("no frame from the coordinator for {timeout:?}");
            }
        }
    }
}

/// The participants the `Prepare` frames of one connection listed last.
type Roster = Option<Vec<cohort_object_api::ObjectId>>;

/// Acts on one frame of the coordinator; `Err`: the connection must end, for the reason given.
fn on_frame(
    shared: &Arc<NodeShared>,
    frame: CoordinatorFrame,
    roster: &mut Roster,
) -> Result<(), String> {
    match frame {
        CoordinatorFrame::Heartbeat
        | CoordinatorFrame::Control(_)
        | CoordinatorFrame::Welcome { .. }
        | CoordinatorFrame::NotLeader { .. }
        | CoordinatorFrame::Refused { .. } => {}
        CoordinatorFrame::Placement { objects, nodes } => {
            *write(&shared.placement) = Placement { objects, nodes };
        }
        CoordinatorFrame::Prepare {
            id,
            round,
            token,
            objects,
        } => {
            let span = tracing::debug_span!("checkpoint", checkpoint = %id, %round);
            let _guard = span.enter();
            let same_participants = objects.is_none();
            if let Some(list) = objects {
                *roster = Some(list);
            }
            let Some(participants) = roster.as_ref() else {
                return Err(
                    "the coordinator sent a Prepare that refers to a participant list this connection never carried (a protocol error): reconnecting".into(),
                );
            };
            // The round is active before any object is counted in it (one counted without
            // being woken may record an in-transit message at once) and before the parked
            // frames of its colour are let through (their receivers capture first).
            let (tx, rx) = mpsc::unbounded_channel();
            *lock(&shared.active) = Some(ActiveRound {
                id,
                round,
                writer: tx,
            });
            shared.raise_floor(round);
            // Clean objects (unchanged since the line, nothing handled) are counted without
            // being woken; the others are asked.
            let slots = read(&shared.objects);
            let mut awaiting = Vec::new();
            // An object awaiting its restore is not scanned, so a table holding one is never
            // found exact: every prepare then scans whole.
            let scan = shared
                .tally
                .scan(round, same_participants, slots.len(), || {
                    let (slots, awaiting) = (&slots, &mut awaiting);
                    participants.iter().filter_map(move |object| {
                        let slot = slots.get(object);
                        if slot.is_some_and(|slot| slot.awaiting_restore.load(Ordering::SeqCst)) {
                            awaiting.push(object.clone());
                            return None;
                        }
                        Some((object, slot.map(|slot| &*slot.cell)))
                    })
                });
            let clean = scan.clean;
            let asked = scan.asked;
            tracing::debug!(asked = asked.len(), clean = clean.objects, "prepare");
            let writer = RoundWriter {
                id,
                round,
                token,
                states_writer: shared.name.clone(),
                channel_writer: cohort_checkpoint::channel_writer(&shared.name),
                participants: (asked.iter().map(|a| a.object.clone()))
                    .chain(scan.missing.iter().cloned())
                    .collect(),
                store: shared.store.clone(),
                sink: NodeSink(shared.to_coordinator.clone()),
            };
            tokio::spawn(writer.run(rx));
            if clean.objects > 0 {
                let _ = shared.to_coordinator.send(NodeFrame::Clean {
                    round,
                    objects: clean.objects as u64,
                    balance: clean.balance,
                });
            }
            if let Some(w) = shared.writer_for(round) {
                for object in awaiting {
                    let _ = w.send(WriterMsg::No {
                        object,
                        reason:
                            "spawned after this node's restore, and not restored from the line yet"
                                .into(),
                    });
                }
            }
            for asked in &asked {
                let _ = asked
                    .control
                    .send_control(super::Control::Prepare { id, round });
            }
            if let Some(w) = shared.writer_for(round) {
                for object in scan.missing {
                    let _ = w.send(WriterMsg::No {
                        object,
                        reason: "this node does not host it".into(),
                    });
                }
            }
        }
        CoordinatorFrame::Seal { round } => match shared.writer_for(round) {
            Some(w) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = w.send(WriterMsg::Seal(tx));
                let out = shared.to_coordinator.clone();
                tokio::spawn(async move {
                    let result = rx
                        .await
                        .unwrap_or_else(|_| Err("the round's writer is gone".to_owned()))
                        .map(|_| ());
                    let _ = out.send(NodeFrame::Sealed { round, result });
                });
            }
            None => {
                let _ = shared.to_coordinator.send(NodeFrame::Sealed {
                    round,
                    result: Err("the round is no longer active on this node".into()),
                });
            }
        },
        CoordinatorFrame::Decided {
            id,
            round,
            committed,
        } => {
            {
                let mut active = lock(&shared.active);
                if active.as_ref().is_some_and(|a| a.round == round) {
                    *active = None; // ends the writer
                }
            }
            // Frames coloured with an aborted round this node never started would otherwise
            // wait for the next round; with no round active they are plain deliveries.
            shared.raise_floor(round);
            if committed {
                // Queued behind this decision, a restore's hold finds each object knowing it.
                shared.applied.set(Some(id));
            }
            for slot in read(&shared.objects).values() {
                let _ = slot.cell.send_control(super::Control::Decided {
                    id,
                    round,
                    committed,
                });
            }
        }
        CoordinatorFrame::Restore {
            recovery,
            line,
            colour,
            incarnation,
            create,
        } => {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let order = super::RecoveryOrder {
                    cohort_recovery: recovery != 0,
                    line,
                    colour,
                    incarnation,
                    create,
                };
                let result = super::restore(&shared, order).await;
                let (result, damaged, unavailable) = match result {
                    Ok(()) => {
                        tracing::debug!(incarnation, recovery, "restored");
                        let done = shared.restores.fetch_add(1, Ordering::SeqCst) + 1;
                        shared.status.send_modify(|status| {
                            if let NodeStatus::Registered { recoveries, .. } = status {
                                *recoveries = done;
                            }
                        });
                        (Ok(()), false, false)
                    }
                    Err(failure) => {
                        tracing::error!(error = %failure, "recovery failed on this node");
                        let damaged = matches!(failure, RestoreFailure::Damaged { .. });
                        let unavailable = matches!(failure, RestoreFailure::Unavailable { .. });
                        (Err(failure.reason().to_owned()), damaged, unavailable)
                    }
                };
                let _ = shared.to_coordinator.send(NodeFrame::Restored {
                    recovery,
                    incarnation,
                    result,
                    damaged,
                    unavailable,
                });
            });
        }
        CoordinatorFrame::Create { object, type_name } => {
            match shared.factories.get(&type_name) {
                Some(factory) => {
                    // Announced once created: the coordinator then answers the caller.
                    if let Err(e) = factory(shared, object.clone(), true) {
                        tracing::error!(%object, %type_name, error = %e, "cannot create an object the coordinator placed here");
                    }
                }
                None => {
                    tracing::error!(%object, %type_name, "the coordinator placed an object here whose type this node has no factory for")
                }
            }
        }
        CoordinatorFrame::Created { object, result } => {
            if let Ok(node) = &result {
                // Addressable at once, before the next placement push.
                write(&shared.placement)
                    .objects
                    .insert(object.clone(), node.clone());
            }
            if let Some(waiter) = lock(&shared.create_waiters).remove(&object) {
                let _ = waiter.send(result.map(|_| ()));
            }
        }
        CoordinatorFrame::Disown { objects } => {
            tracing::warn!(
                node = %shared.name,
                objects = objects.len(),
                first = ?objects.first(),
                "the coordinator took objects off this node (moved while it was declared dead, moved by a drain or a rebalance, or removed); dropping them"
            );
            shared.disown(&objects);
        }
        CoordinatorFrame::Release { incarnation, line } => {
            tracing::debug!(incarnation, ?line, "released");
            shared.applied.released_at(line);
            shared.incarnation.fetch_max(incarnation, Ordering::SeqCst);
            // Frames of this incarnation that waited for it.
            shared.raise_floor(Round::ZERO);
            shared.release_all();
        }
    }
    Ok(())
}
