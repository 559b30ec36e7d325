//! One object's task: handles its mailbox, takes part in the protocol, and applies the cut
//! rules of [`CutState`] to every message it receives. The same task runs in the in-process
//! cohort and on a node; its [`Host`] is the difference.

use std::any::Any;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use cohort_object_api::{CheckpointId, EncodedState, ObjectId, StateTag};
use futures::FutureExt;
use tokio::sync::oneshot;

use super::mailbox;
use super::writer::{Captured, WriterMsg};
use super::{ActiveRound, Host};
use crate::engine::{CutState, Receipt, Round};
use crate::error::{Error, Result};
use crate::messaging::Address;
use crate::messaging::{Actor, Context, Envelope};

/// Control messages, handled before any mailbox message.
pub(crate) enum Control {
    /// Phase 1 for `round` (ignored if it is no longer active or was already captured).
    Prepare { id: CheckpointId, round: Round },
    /// Phase 2.
    Decided {
        id: CheckpointId,
        round: Round,
        committed: bool,
    },
    /// Stop handling messages; answer once the current handler returned, with the
    /// generation of the committed entry its state still equals (see [`Held`]).
    Hold(oneshot::Sender<Held>),
    /// Handle messages again.
    Release,
    /// Recovery: discard the mailbox, restore, queue the redeliveries. Sent while held.
    Restore(Box<RestoreOrder>, oneshot::Sender<Result<()>>),
    /// Run a closure on the object.
    Inspect(Inspector),
    /// The object leaves (recovery dropped it): close the mailbox, answer, end the task.
    Stop(oneshot::Sender<()>),
}

/// What a held object says about its state: `unchanged_at` is the generation of its entry in
/// the last line its host applied (committed or restored), when its state still is that
/// entry (it reports that generation, did not fail, and the entry was its own). A restore to
/// that same line may then keep the state instead of reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) unchanged_at: Option<u64>,
}

/// An object's state in a restore order.
#[derive(Debug)]
pub(crate) enum LineState {
    /// The line does not hold the object: it keeps its own state.
    NotInLine,
    /// The line's entry is the object's state now (same line its host applied, same
    /// generation): nothing was read, and nothing is restored.
    Unchanged { generation: u64 },
    /// The state to restore, with its generation.
    Restore {
        state: EncodedState,
        generation: Option<u64>,
    },
}

impl LineState {
    /// Whether the line holds the object.
    pub(crate) fn in_line(&self) -> bool {
        !matches!(self, Self::NotInLine)
    }

    /// The generation the line recorded for the object.
    pub(crate) fn generation(&self) -> Option<u64> {
        match self {
            Self::NotInLine => None,
            Self::Unchanged { generation } => Some(*generation),
            Self::Restore { generation, .. } => *generation,
        }
    }
}

/// A closure run on an object by [`Cohort::inspect`](crate::Cohort::inspect).
pub(crate) type Inspector = Box<dyn FnOnce(&dyn Any) + Send>;

pub(crate) struct RestoreOrder {
    /// The object's state in the line.
    pub(crate) state: LineState,
    pub(crate) cut: CutState,
    /// Sender, sequence number and bytes of each message to redeliver, in recorded order.
    pub(crate) redeliver: Vec<(ObjectId, u64, EncodedState)>,
    /// Whether the redelivered messages are counted (the line recorded counters).
    pub(crate) counted: bool,
    /// Drop the mailbox: it holds messages of the discarded future. False when a joining
    /// object keeps its own state (it has no past to roll back, and its inputs are kept).
    pub(crate) discard: bool,
}

impl<A: Actor, H: Host> mailbox::Parked for ObjectTask<A, H> {
    fn resume(self: Box<Self>) {
        self.start();
    }
}

pub(crate) struct ObjectTask<A: Actor, H: Host> {
    id: ObjectId,
    object: A,
    cut: CutState,
    /// The generation recorded for this object in the last committed line, when this task
    /// knows it: equal means unchanged, so the previous entry is referenced.
    committed_generation: Option<u64>,
    /// The round this object captured in and the generation it voted, until decided.
    voted: Option<(Round, Option<u64>)>,
    held: bool,
    failed: bool,
    /// Messages a restore redelivers, handled before the mailbox; `None` when there are none
    /// (boxed: most objects never replay, and a parked object carries this field).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes in every parked object rather than a VecDeque's 32; the box exists only while replaying"
    )]
    replay: Option<Box<VecDeque<Envelope<A::Message>>>>,
    /// Its queues, its parking place, and what the host decides without waking it.
    queues: mailbox::Receiver<Envelope<A::Message>>,
    host: Arc<H>,
    /// A message was handled since the last capture (the capture's state is no longer current).
    handled_since_capture: bool,
    /// Nothing woke it yet.
    fresh: bool,
    /// Told to stop: the task ends.
    stopped: bool,
}

impl<A: Actor, H: Host> ObjectTask<A, H> {
    /// A task for `object`, coloured `colour`, starting held if `held`.
    pub(crate) fn new(
        id: ObjectId,
        object: A,
        colour: Round,
        held: bool,
        queues: mailbox::Receiver<Envelope<A::Message>>,
        host: Arc<H>,
    ) -> Self {
        Self {
            id,
            object,
            cut: CutState {
                colour,
                ..CutState::default()
            },
            committed_generation: None,
            voted: None,
            held,
            failed: false,
            replay: None,
            queues,
            host,
            handled_since_capture: true,
            fresh: true,
            stopped: false,
        }
    }

    /// Starts the object at `me`, its own address ([`Actor::on_start`]), then parks it until its
    /// first input, so that an object that has nothing to do costs no tokio task. Call inside a
    /// tokio runtime, after the host registered it.
    pub(crate) fn launch(mut self, me: &Address<A::Message>) {
        self.object.on_start(me);
        let wants_messages = self.wants_messages();
        if let Some(task) = self.queues.parking().park(Box::new(self), wants_messages) {
            task.start();
        }
    }

    /// Runs the task on a tokio task until it ends, or until it has nothing to do and parks.
    /// The task stays in the one box it was launched in, parked or running.
    fn start(self: Box<Self>) {
        let host = Arc::clone(&self.host);
        let task = host.runtime().spawn(async move {
            let mut task = self;
            while task.run().await {
                task.queues.release_room();
                let wants_messages = task.wants_messages();
                match task.queues.parking().park(task, wants_messages) {
                    Some(again) => task = again,
                    None => return,
                }
            }
        });
        host.track(task.abort_handle());
    }

    /// Whether a message gives the task something to do (a held or failed object waits for
    /// control only): what resumes it when it parks, besides control.
    fn wants_messages(&self) -> bool {
        !self.held && !self.failed
    }

    /// Whether the task may park once it waits for input. A held or failed object only waits
    /// for control. Otherwise an object nothing woke yet parks, and so does one that the host
    /// will count in without waking it (message-driven, tracking a generation, nothing handled
    /// since its capture): any other is woken by every prepare, and parking it would cost a
    /// task's spawn per checkpoint (a third of a round of 1,000 objects), so it keeps its task.
    fn may_park(&self) -> bool {
        self.held
            || self.failed
            || (self.replay.is_none()
                && (self.fresh
                    || (A::MESSAGE_DRIVEN
                        && !self.handled_since_capture
                        && self.object.generation().is_some())))
    }

    /// Before handling anything: adopt a round the host counted this object in while it slept
    /// (its cut is its state now), and stop being clean.
    fn begin_handling(&mut self) {
        let adopt = self.host.tally().begin_handling(&self.id, &self.queues);
        if let Some(round) = adopt.filter(|r| *r > self.cut.colour) {
            self.cut.captured(round);
        }
    }

    /// Handles control and messages until the task ends (`false`) or it waits for input and
    /// [may park](Self::may_park) (`true`).
    async fn run(&mut self) -> bool {
        while !self.stopped {
            // Control first: a prepare must not wait behind a long mailbox.
            match self.queues.try_recv_control() {
                Ok(c) => {
                    self.on_control(c).await;
                    continue;
                }
                Err(mailbox::TryRecvError::Disconnected) => return false,
                Err(mailbox::TryRecvError::Empty) => {}
            }
            if self.held || self.failed {
                if !self.queues.control_ready() {
                    return true;
                }
                match self.queues.recv_control().await {
                    Some(c) => self.on_control(c).await,
                    None => return false,
                }
                continue;
            }
            if let Some(envelope) = self.next_replayed() {
                self.receive(envelope).await;
                continue;
            }
            if self.may_park() && !self.queues.ready() {
                return true;
            }
            match self.queues.recv_any().await {
                mailbox::Input::Control(Some(c)) => self.on_control(c).await,
                mailbox::Input::Message(Some(envelope)) => self.receive(envelope).await,
                mailbox::Input::Control(None) | mailbox::Input::Message(None) => return false,
            }
        }
        false
    }

    async fn on_control(&mut self, control: Control) {
        self.fresh = false;
        match control {
            Control::Prepare { id, round } => {
                let active = self.host.active();
                if let Some(active) = active.filter(|a| a.round == round && a.id == id)
                    && self.cut.colour < round
                {
                    self.capture(active).await;
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
                    // Its state and counters are now the line's: the host may count it in the
                    // next rounds without waking it, until it handles something.
                    if A::MESSAGE_DRIVEN && generation.is_some() && !self.handled_since_capture {
                        let (sent, received) = (self.cut.sent, self.cut.received);
                        (self.host.tally()).committed(&self.id, &self.queues, sent, received);
                    }
                    self.object.on_committed(id).await;
                } else {
                    self.object.on_aborted(id).await;
                }
            }
            Control::Hold(ack) => {
                self.held = true;
                let unchanged_at = self
                    .committed_generation
                    .filter(|g| !self.failed && self.object.generation() == Some(*g));
                let _ = ack.send(Held { unchanged_at });
            }
            Control::Release => self.held = false,
            Control::Restore(order, ack) => {
                let _ = ack.send(self.restore(*order).await);
            }
            Control::Inspect(f) => f(&self.object),
            Control::Stop(ack) => {
                self.queues.close();
                self.stopped = true;
                let _ = ack.send(());
            }
        }
    }

    /// Phase 1: prepare, capture (unless unchanged), take the colour, hand the snapshot to the
    /// round's writer. The object is blocked only for this; encoding and upload happen on the
    /// writer's task.
    async fn capture(&mut self, active: ActiveRound) {
        let (id, round) = (active.id, active.round);
        let started = tokio::time::Instant::now();
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
        // The cut is taken whatever the vote: messages sent from now on carry this colour.
        self.cut.captured(round);
        self.handled_since_capture = false;
        let pause = started.elapsed();
        self.host.metrics().record_pause(pause);
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
        // The writer is gone only if the round ended meanwhile; the vote no longer matters.
        let _ = active.writer.send(msg);
    }

    /// The next redelivered message, if any; drops the replay queue once it is drained.
    fn next_replayed(&mut self) -> Option<Envelope<A::Message>> {
        let replay = self.replay.as_mut()?;
        let next = replay.pop_front();
        if replay.is_empty() {
            self.replay = None;
        }
        next
    }

    async fn receive(&mut self, envelope: Envelope<A::Message>) {
        self.fresh = false;
        self.begin_handling();
        if let Some(from) = &envelope.from {
            let receipt = if envelope.colour == self.cut.colour {
                Receipt::Deliver
            } else {
                let active = self.host.active().map(|a| a.round);
                self.cut.classify(envelope.colour, active)
            };
            match receipt {
                Receipt::Deliver => {}
                Receipt::CaptureFirst { round } => {
                    if let Some(active) = self.host.active().filter(|a| a.round == round) {
                        self.host.metrics().record_forced();
                        self.capture(active).await;
                    }
                }
                Receipt::InTransit { round } => self.record(from, envelope.seq, &envelope, round),
            }
            self.cut.received();
        }
        // After any capture the receipt forced: the state now moves past it.
        self.handled_since_capture = true;
        let mut ctx = Context {
            me: &self.id,
            from: envelope.from.as_ref(),
            cut: &mut self.cut,
            directory: &*self.host,
            _private: PhantomData,
        };
        // A panic is a failure like an error: the task lives on, held, and the recovery the
        // restart policy starts overwrites whatever state the handler left.
        let handled = AssertUnwindSafe(self.object.handle(envelope.message, &mut ctx))
            .catch_unwind()
            .await;
        let error = match handled {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        tracing::error!(object = %self.id, %error, "handler failed; the object is held until a recovery restores it");
        self.failed = true;
        self.host.object_failed(&self.id, Some(&error));
    }

    /// Records a message that crossed the cut of `round` as channel state.
    fn record(&self, from: &ObjectId, seq: u64, envelope: &Envelope<A::Message>, round: Round) {
        let Some(active) = self.host.active().filter(|a| a.round == round) else {
            return;
        };
        match rmp_serde::to_vec_named(&envelope.message) {
            Ok(bytes) => {
                self.host.metrics().record_in_transit();
                let state = EncodedState::new(StateTag::new(MESSAGE_TYPE, 1), Bytes::from(bytes));
                let _ = active.writer.send(WriterMsg::InTransit {
                    from: from.clone(),
                    to: self.id.clone(),
                    seq,
                    state,
                });
            }
            Err(e) => {
                // Without its record the counts never balance and the attempt times out.
                tracing::error!(object = %self.id, %from, error = %e, "cannot encode an in-transit message; the checkpoint will time out");
            }
        }
    }

    async fn restore(&mut self, order: RestoreOrder) -> Result<()> {
        if order.discard {
            // Every message sent after the line is discarded.
            while self.queues.try_recv().is_ok() {}
            self.replay = None;
        }
        if let LineState::Restore { state, .. } = &order.state {
            self.object
                .restore(state)
                .await
                .map_err(|source| Error::Restore {
                    object: self.id.clone(),
                    source: Box::new(source),
                })?;
        }
        let mut replay = VecDeque::with_capacity(order.redeliver.len());
        for (from, seq, state) in order.redeliver {
            let message = state.decode::<A::Message>().map_err(|e| Error::Message {
                from: from.clone(),
                to: self.id.clone(),
                reason: e.to_string(),
            })?;
            replay.push_back(Envelope {
                from: order.counted.then_some(from),
                colour: order.cut.colour,
                seq,
                message,
            });
        }
        self.replay = (!replay.is_empty()).then(|| Box::new(replay));
        self.cut = order.cut;
        self.voted = None;
        // Trust "unchanged" only if the restored object reports the recorded generation.
        self.committed_generation = order
            .state
            .generation()
            .filter(|g| self.object.generation() == Some(*g));
        // Restored to its entry in the line, with the line's counters: clean if the generation
        // proves it (the redelivered messages, handled next, end that).
        let clean =
            A::MESSAGE_DRIVEN && order.state.in_line() && self.committed_generation.is_some();
        let (sent, received) = (self.cut.sent, self.cut.received);
        (self.host.tally()).restored(&self.id, &self.queues, clean, sent, received);
        self.handled_since_capture = self.replay.is_some();
        if self.failed {
            self.failed = false;
            self.host.object_failed(&self.id, None);
        }
        Ok(())
    }
}

/// The message a panic carried (`panic!` with a literal or with formatting), for the report.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// The type name recorded with in-transit messages (the receiver decodes them as its own
/// message type).
pub(crate) const MESSAGE_TYPE: &str = "cohort.message";
