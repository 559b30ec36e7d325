//! One object's task on a node: the same cut rules as the in-process runtime ([`CutState`]),
//! with prepares and decisions coming from the coordinator service and captures going to the
//! node's writer of the round.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use cohort_object_api::{CheckpointId, EncodedState, ObjectId, StateTag};
use tokio::sync::{mpsc, oneshot};

use super::NodeShared;
use super::writer::{Captured, WriterMsg};
use crate::engine::{CutState, Receipt, Round};
use crate::messaging::{Actor, Context, Envelope};

/// The type name recorded with in-transit messages, as the in-process runtime records them.
pub(crate) const MESSAGE_TYPE: &str = "cohort.message";

pub(crate) enum Control {
    Prepare {
        id: CheckpointId,
        round: Round,
    },
    Decided {
        id: CheckpointId,
        round: Round,
        committed: bool,
    },
    Hold(oneshot::Sender<()>),
    Release,
    Restore(Box<RestoreOrder>, oneshot::Sender<Result<(), String>>),
}

pub(crate) struct RestoreOrder {
    /// `None`: the object is not in the line (or there is no line): keep its state, reset its
    /// colour only.
    pub(crate) state: Option<EncodedState>,
    pub(crate) generation: Option<u64>,
    pub(crate) cut: CutState,
    pub(crate) redeliver: Vec<(ObjectId, u64, EncodedState)>,
    /// Drop the mailbox: it holds messages of the discarded future. False when a joining
    /// object keeps its own state (it has no past to roll back, and its inputs are kept).
    pub(crate) discard: bool,
}

pub(crate) struct ObjectTask<A: Actor> {
    pub(crate) id: ObjectId,
    pub(crate) object: A,
    pub(crate) cut: CutState,
    pub(crate) committed_generation: Option<u64>,
    pub(crate) voted: Option<(Round, Option<u64>)>,
    pub(crate) held: bool,
    pub(crate) failed: bool,
    pub(crate) replay: VecDeque<Envelope<A::Message>>,
    pub(crate) mailbox: mpsc::UnboundedReceiver<Envelope<A::Message>>,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    pub(crate) node: Arc<NodeShared>,
}

impl<A: Actor> ObjectTask<A> {
    pub(crate) async fn run(mut self) {
        loop {
            match self.control.try_recv() {
                Ok(c) => {
                    self.on_control(c).await;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if self.held || self.failed {
                match self.control.recv().await {
                    Some(c) => self.on_control(c).await,
                    None => return,
                }
                continue;
            }
            if let Some(envelope) = self.replay.pop_front() {
                self.receive(envelope).await;
                continue;
            }
            tokio::select! {
                biased;
                c = self.control.recv() => match c {
                    Some(c) => self.on_control(c).await,
                    None => return,
                },
                m = self.mailbox.recv() => match m {
                    Some(envelope) => self.receive(envelope).await,
                    None => return,
                },
            }
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Prepare { id, round } => {
                if self.node.active_round() == Some((id, round)) && self.cut.colour < round {
                    self.capture(id, round).await;
                }
            }
            Control::Decided {
                id,
                round,
                committed,
            } => {
                let Some((voted_round, generation)) = self.voted else {
                    return;
                };
                if voted_round != round {
                    return;
                }
                self.voted = None;
                if committed {
                    self.committed_generation = generation;
                    self.object.on_committed(id).await;
                } else {
                    self.object.on_aborted(id).await;
                }
            }
            Control::Hold(ack) => {
                self.held = true;
                let _ = ack.send(());
            }
            Control::Release => self.held = false,
            Control::Restore(order, ack) => {
                let _ = ack.send(self.restore(*order).await);
            }
        }
    }

    async fn capture(&mut self, id: CheckpointId, round: Round) {
        let Some(writer) = self.node.writer_for(round) else {
            return;
        };
        let started = std::time::Instant::now();
        let captured = if self.failed {
            Err("the object failed and waits for recovery".to_owned())
        } else {
            match self.object.prepare(id).await {
                Err(e) => Err(e.to_string()),
                Ok(()) => {
                    let generation = self.object.generation();
                    if generation.is_some() && generation == self.committed_generation {
                        Ok((None, generation))
                    } else {
                        match self.object.capture().await {
                            Ok(snapshot) => Ok((Some(snapshot), generation)),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                }
            }
        };
        self.cut.captured(round);
        let pause = started.elapsed();
        self.node.metrics.record_pause(pause);
        let msg = match captured {
            Ok((snapshot, generation)) => {
                self.voted = Some((round, generation));
                WriterMsg::State(Captured {
                    object: self.id.clone(),
                    snapshot,
                    generation,
                    sent: self.cut.sent,
                    received: self.cut.received,
                    pause,
                })
            }
            Err(reason) => {
                self.voted = Some((round, None));
                WriterMsg::No {
                    object: self.id.clone(),
                    reason,
                }
            }
        };
        let _ = writer.send(msg);
    }

    async fn receive(&mut self, envelope: Envelope<A::Message>) {
        if let Some(from) = &envelope.from {
            let receipt = if envelope.colour == self.cut.colour {
                Receipt::Deliver
            } else {
                let active = self.node.active_round().map(|(_, r)| r);
                self.cut.classify(envelope.colour, active)
            };
            match receipt {
                Receipt::Deliver => {}
                Receipt::CaptureFirst { round } => {
                    if let Some((id, r)) = self.node.active_round().filter(|(_, r)| *r == round) {
                        self.capture(id, r).await;
                    }
                }
                Receipt::InTransit { round } => self.record(from, envelope.seq, &envelope, round),
            }
            self.cut.received();
        }
        // A node's objects have no in-process cohort: `Context::address` resolves through the
        // node (NODE_SCOPE), `Context::cohort` reports `Stopped`.
        let no_cohort = Weak::new();
        let mut ctx = Context {
            me: &self.id,
            from: envelope.from.as_ref(),
            cut: &mut self.cut,
            cohort: &no_cohort,
            _private: PhantomData,
        };
        let node = Arc::clone(&self.node);
        let handled = super::NODE_SCOPE
            .scope(node, self.object.handle(envelope.message, &mut ctx))
            .await;
        if let Err(e) = handled {
            tracing::error!(object = %self.id, error = %e, "handler failed; the object is held until recovery");
            self.failed = true;
        }
    }

    fn record(&self, from: &ObjectId, seq: u64, envelope: &Envelope<A::Message>, round: Round) {
        let Some(writer) = self.node.writer_for(round) else {
            return;
        };
        match rmp_serde::to_vec_named(&envelope.message) {
            Ok(bytes) => {
                let state = EncodedState::new(StateTag::new(MESSAGE_TYPE, 1), Bytes::from(bytes));
                let _ = writer.send(WriterMsg::InTransit {
                    from: from.clone(),
                    to: self.id.clone(),
                    seq,
                    state,
                });
            }
            Err(e) => {
                tracing::error!(object = %self.id, %from, error = %e, "cannot encode an in-transit message; the checkpoint will time out");
            }
        }
    }

    async fn restore(&mut self, order: RestoreOrder) -> Result<(), String> {
        if order.discard {
            // Every message sent after the line is discarded.
            while self.mailbox.try_recv().is_ok() {}
            self.replay.clear();
        }
        if let Some(state) = &order.state {
            self.object
                .restore(state)
                .await
                .map_err(|e| format!("cannot restore {}: {e}", self.id))?;
        }
        let mut replay = VecDeque::with_capacity(order.redeliver.len());
        for (from, seq, state) in order.redeliver {
            let message = state.decode::<A::Message>().map_err(|e| {
                format!(
                    "cannot decode an in-transit message from {from} to {}: {e}",
                    self.id
                )
            })?;
            replay.push_back(Envelope {
                from: Some(from),
                colour: order.cut.colour,
                seq,
                message,
            });
        }
        self.replay = replay;
        self.cut = order.cut;
        self.voted = None;
        self.committed_generation = order
            .generation
            .filter(|g| self.object.generation() == Some(*g));
        self.failed = false;
        Ok(())
    }
}
