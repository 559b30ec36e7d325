//! Typed object-to-object messaging.
//!
//! Objects of a cohort collaborate by sending each other messages, and cohort must see every
//! one of them to guarantee a consistent cut. An object that handles messages implements
//! [`Actor`]; it is spawned into a [`Cohort`](crate::Cohort) or onto a
//! [`Node`](crate::node::Node), which returns an [`Address`].
//! Inside a handler, [`Context::send`] sends to another member: the runtime stamps the message
//! with the sender's colour and counts it (see ARCHITECTURE.md, "Protocol"). From outside the
//! cohort, [`Address::tell`] delivers a message that is not part of any cut: an input.
//!
//! Mailboxes are unbounded: a bounded mailbox could deadlock two objects sending to each other,
//! and the protocol never waits on a full one.

use std::any::{Any, type_name};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use cohort_object_api::{Checkpointable, ObjectError, ObjectId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{CutState, Round};
use crate::error::{Error, Result};
use crate::participant::mailbox;

/// An object that handles messages.
///
/// Messages must be serializable: one that crosses a cut (sent before its sender's checkpoint,
/// received after its receiver's) is recorded in the checkpoint and redelivered on recovery.
#[async_trait]
pub trait Actor: Checkpointable {
    /// The messages this object accepts.
    type Message: Serialize + DeserializeOwned + Send + 'static;

    /// Whether this object's state changes only while it handles a message (or is restored),
    /// never behind its back (another task writing shared memory it holds, say).
    ///
    /// When true and the object tracks its [`generation`](Checkpointable::generation), an
    /// object that has handled nothing since the last committed checkpoint is counted in the
    /// next one without being woken: no prepare, no capture, no bytes (minimal participation).
    /// Left false, every checkpoint asks it, and its generation decides whether it is rewritten.
    const MESSAGE_DRIVEN: bool = false;

    /// Called once where the object is spawned or created (in a cohort, on a node, or on the
    /// node the cohort moved it to), after the host registered it and before its first input,
    /// with its own address: an object that wakes itself (a timer, a source polling its log)
    /// starts doing so here, and stops when it is dropped. It must not block: start a task for
    /// anything that waits. Default: nothing.
    fn on_start(&mut self, me: &Address<Self::Message>) {
        let _ = me;
    }

    /// Handles one message. An error marks the object failed: it stops handling messages, votes
    /// no in checkpoints, and the cohort reports it unhealthy until
    /// [`Cohort::recover`](crate::Cohort::recover) restores it.
    async fn handle(
        &mut self,
        message: Self::Message,
        ctx: &mut Context<'_>,
    ) -> Result<(), ObjectError>;
}

/// A message in a mailbox, with what the cut needs to know about it.
pub(crate) struct Envelope<M> {
    /// The sending member; `None` for an input from outside the cohort (not counted).
    pub(crate) from: Option<ObjectId>,
    /// The sender's colour when it sent.
    pub(crate) colour: Round,
    /// The sender's sequence number (its sent count).
    pub(crate) seq: u64,
    pub(crate) message: M,
}

/// The names of `A` and of its message type, which an object's cell gives for errors and
/// typed lookups (from its type, rather than stored in every cell).
pub(crate) fn type_names<A: Actor>() -> mailbox::TypeNames {
    mailbox::TypeNames {
        object: type_name::<A>(),
        message: type_name::<A::Message>(),
    }
}

/// Where to send messages of type `M`: a member of a cohort. Cheap to clone.
pub struct Address<M> {
    pub(crate) to: ObjectId,
    pub(crate) tx: Route<M>,
}

/// How an envelope reaches its receiver: the receiver's mailbox in this process, or a sender
/// that encodes it for another node (see [`crate::node`]).
pub(crate) enum Route<M> {
    Local(mailbox::Sender<Envelope<M>>),
    Remote(Arc<dyn Fn(Envelope<M>) -> Result<()> + Send + Sync>),
}

impl<M> Clone for Route<M> {
    fn clone(&self) -> Self {
        match self {
            Route::Local(tx) => Route::Local(tx.clone()),
            Route::Remote(f) => Route::Remote(Arc::clone(f)),
        }
    }
}

impl<M> Route<M> {
    /// Hands the envelope on; an error means it was not sent.
    pub(crate) fn send(&self, to: &ObjectId, envelope: Envelope<M>) -> Result<()> {
        match self {
            Route::Local(tx) => tx
                .send(envelope)
                .map_err(|_refused| Error::UnknownObject(to.clone())),
            Route::Remote(f) => f(envelope),
        }
    }
}

impl<M> From<mailbox::Sender<Envelope<M>>> for Route<M> {
    fn from(tx: mailbox::Sender<Envelope<M>>) -> Self {
        Route::Local(tx)
    }
}

impl<M> Clone for Address<M> {
    fn clone(&self) -> Self {
        Self {
            to: self.to.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<M> fmt::Debug for Address<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Address")
            .field("to", &self.to)
            .field("message", &type_name::<M>())
            .finish()
    }
}

impl<M: Send + 'static> Address<M> {
    /// The receiving object's id.
    pub fn id(&self) -> &ObjectId {
        &self.to
    }

    /// Delivers an input from outside the cohort. Inputs are not part of any cut: a message
    /// told but not yet handled when a failure happens is lost with the future the recovery
    /// discards. Send from inside a handler with [`Context::send`] instead.
    pub fn tell(&self, message: M) -> Result<()> {
        self.tx.send(
            &self.to,
            Envelope {
                from: None,
                colour: Round::ZERO,
                seq: 0,
                message,
            },
        )
    }
}

/// Where a handler's [`Context`] finds the other members: the host of its object (the
/// in-process cohort, or a node, which reaches objects on other nodes).
pub(crate) trait Directory: Send + Sync {
    /// Where `id` lives.
    fn locate(&self, id: &ObjectId) -> Result<Location>;

    /// The host itself, for what only some hosts offer handlers (the in-process cohort, to
    /// spawn members).
    fn as_any(&self) -> &dyn Any;
}

/// Where a member lives, as a [`Directory`] says.
pub(crate) enum Location {
    /// An object in this process: its cell, whose inbox takes envelopes of its message type.
    Local(mailbox::Reference),
    /// Another process: the message's bytes go through this.
    Remote(RemoteSend),
}

/// Sends one encoded message to a member in another process.
pub(crate) type RemoteSend = Arc<dyn Fn(RemoteEnvelope) -> Result<()> + Send + Sync>;

/// A message to a member in another process, encoded, with what the cut needs.
pub(crate) struct RemoteEnvelope {
    pub(crate) from: ObjectId,
    pub(crate) to: ObjectId,
    pub(crate) colour: Round,
    pub(crate) seq: u64,
    /// The message, msgpack with named fields.
    pub(crate) payload: Vec<u8>,
}

/// The address of `to`, an object in this process, if it takes messages of type `M`.
pub(crate) fn local_address<M: Send + 'static>(
    to: &ObjectId,
    cell: &mailbox::Reference,
) -> Result<Address<M>> {
    match cell.inbox::<Envelope<M>>() {
        Some(tx) => Ok(Address {
            to: to.clone(),
            tx: Route::Local(tx),
        }),
        None => Err(Error::WrongType {
            object: to.clone(),
            requested: type_name::<M>(),
            actual: cell.message_type(),
        }),
    }
}

/// The address of `to`, of message type `M`, where `location` says it lives.
pub(crate) fn address_at<M: Serialize + Send + 'static>(
    to: &ObjectId,
    location: Location,
) -> Result<Address<M>> {
    match location {
        Location::Local(cell) => local_address(to, &cell),
        Location::Remote(send) => {
            let to = to.clone();
            let receiver = to.clone();
            let encode = move |envelope: Envelope<M>| -> Result<()> {
                let payload =
                    rmp_serde::to_vec_named(&envelope.message).map_err(|e| Error::Message {
                        from: envelope.from.clone().unwrap_or_else(|| receiver.clone()),
                        to: receiver.clone(),
                        reason: e.to_string(),
                    })?;
                let Some(from) = envelope.from else {
                    return Err(Error::invalid_settings(
                        "inputs (Address::tell) can only be sent to objects of this node",
                    ));
                };
                send(RemoteEnvelope {
                    from,
                    to: receiver.clone(),
                    colour: envelope.colour,
                    seq: envelope.seq,
                    payload,
                })
            };
            Ok(Address {
                to,
                tx: Route::Remote(Arc::new(encode)),
            })
        }
    }
}

/// What a handler can do besides changing its own state: send to other members, look them up,
/// and, in process, spawn new ones ([`Context::cohort`]).
pub struct Context<'a> {
    pub(crate) me: &'a ObjectId,
    pub(crate) from: Option<&'a ObjectId>,
    pub(crate) cut: &'a mut CutState,
    pub(crate) directory: &'a dyn Directory,
    /// Only the runtime builds contexts.
    pub(crate) _private: PhantomData<()>,
}

impl Context<'_> {
    /// The id of the object handling the message.
    pub fn id(&self) -> &ObjectId {
        self.me
    }

    /// The member that sent the message being handled; `None` for an input from outside.
    pub fn sender(&self) -> Option<&ObjectId> {
        self.from
    }

    /// Sends `message` to a member, as this object: stamped with its colour and counted.
    pub fn send<M: Send + 'static>(&mut self, to: &Address<M>, message: M) -> Result<()> {
        let (colour, seq) = self.cut.on_send();
        let sent = to.tx.send(
            &to.to,
            Envelope {
                from: Some(self.me.clone()),
                colour,
                seq,
                message,
            },
        );
        if let Err(e) = sent {
            // Not delivered: take the count back, or Σ sent − Σ received would wait forever
            // for a message no one will receive.
            self.cut.sent -= 1;
            return Err(e);
        }
        Ok(())
    }

    /// The address of member `id`, which takes messages of type `M`. On a
    /// [`Node`](crate::node::Node), `id` may live on another node: the placement table the
    /// coordinator pushes resolves it.
    pub fn address<M: Serialize + Send + 'static>(&self, id: &ObjectId) -> Result<Address<M>> {
        address_at(id, self.directory.locate(id)?)
    }
}
