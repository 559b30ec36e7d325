//! An established, typed connection.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::codec::{self, CodecError};
use super::handshake::{PeerInfo, Wire, codec_error};
use crate::Error;

/// A connection that has passed the handshake: it receives `In` messages and sends `Out`
/// messages, one msgpack value per length-delimited frame.
///
/// Every error from [`recv`](Self::recv) or [`send`](Self::send) that involves the transport or
/// the peer leaves the connection unusable: later calls return [`Error::Unusable`]. Only
/// [`Error::Encode`] and [`Error::MessageTooLarge`] (nothing was sent) leave it usable.
/// Use [`split`](Self::split) to receive and send from different tasks.
pub struct Connection<In, Out, S = TcpStream> {
    wire: Wire<S>,
    peer: Arc<PeerInfo>,
    send_max: usize,
    recv_failed: bool,
    send_failed: bool,
    // `fn` keeps the connection Send and Sync whatever the message types are.
    _messages: PhantomData<fn(Out) -> In>,
}

impl<In, Out, S> fmt::Debug for Connection<In, Out, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("send_max", &self.send_max)
            .finish_non_exhaustive()
    }
}

impl<In, Out, S> Connection<In, Out, S>
where
    In: DeserializeOwned,
    Out: Serialize,
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(wire: Wire<S>, peer: PeerInfo, local_max: usize) -> Self {
        Self {
            wire,
            send_max: local_max.min(peer.max_frame_len),
            peer: Arc::new(peer),
            recv_failed: false,
            send_failed: false,
            _messages: PhantomData,
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Receives the next message; `Ok(None)` when the peer closed the connection cleanly
    /// between two frames.
    ///
    /// Cancel-safe: a partly received frame stays buffered, so this can race a timer in
    /// `tokio::select!` (the session layer's heartbeats do) without losing data.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`], [`Error::Decode`], [`Error::Truncated`] or
    /// [`Error::Io`]; each leaves the connection unusable.
    pub async fn recv(&mut self) -> Result<Option<In>, Error> {
        recv_on(&mut self.wire, &self.peer, &mut self.recv_failed).await
    }

    /// Sends one message and flushes it.
    ///
    /// If the future is dropped before it completes, the message may still go out with the
    /// next send or on [`close`](Self::close); the framing stays intact either way.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] or [`Error::Encode`] when the message cannot be sent
    /// (the connection stays usable); [`Error::Io`] when the transport failed.
    pub async fn send(&mut self, msg: &Out) -> Result<(), Error> {
        send_on(
            &mut self.wire,
            msg,
            &self.peer,
            self.send_max,
            &mut self.send_failed,
        )
        .await
    }

    /// Sends one message as [`send`](Self::send) does, but gives up after `limit`: a peer that
    /// stopped reading (a paused process, a host behind a network that drops everything)
    /// fills its receive window, and a plain send would then wait for as long as the peer
    /// does, deaf to every timer of the caller's loop.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`Error::SendTimeout`] once `limit` passed; the connection
    /// is then unusable (part of the frame may be out).
    pub async fn send_within(&mut self, msg: &Out, limit: Duration) -> Result<(), Error> {
        let sent = tokio::time::timeout(limit, self.send(msg)).await;
        timed_out(sent, limit, &self.peer, &mut self.send_failed)
    }

    /// Flushes what is pending and closes the sending direction, so that the peer's
    /// [`recv`](Self::recv) returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the transport failed.
    pub async fn close(mut self) -> Result<(), Error> {
        self.wire
            .close()
            .await
            .map_err(|err| codec_error(err, &self.peer.addr))
    }

    /// Splits the connection into a receiving and a sending half, to be used from different
    /// tasks.
    pub fn split(self) -> (RecvHalf<In, S>, SendHalf<Out, S>) {
        let (sink, stream) = self.wire.split();
        (
            RecvHalf {
                stream,
                peer: Arc::clone(&self.peer),
                failed: self.recv_failed,
                _messages: PhantomData,
            },
            SendHalf {
                sink,
                peer: self.peer,
                send_max: self.send_max,
                failed: self.send_failed,
                _messages: PhantomData,
            },
        )
    }
}

/// The receiving half of a [`Connection`].
pub struct RecvHalf<In, S = TcpStream> {
    stream: SplitStream<Wire<S>>,
    peer: Arc<PeerInfo>,
    failed: bool,
    _messages: PhantomData<fn() -> In>,
}

impl<In, S> fmt::Debug for RecvHalf<In, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvHalf")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<In, S> RecvHalf<In, S>
where
    In: DeserializeOwned,
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Receives the next message, as [`Connection::recv`] does; cancel-safe.
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`].
    pub async fn recv(&mut self) -> Result<Option<In>, Error> {
        recv_on(&mut self.stream, &self.peer, &mut self.failed).await
    }

    /// Forwards every message into `to`, as `wrap(Inbound::Message(msg))`, then how the
    /// connection ended as `wrap(Inbound::Closed(why))`; stops at once when `to`'s receiver is
    /// gone. For a task that serves several connections (or one that is replaced on each
    /// reconnect) from one loop: spawn this per connection, with `wrap` tagging its frames
    /// with the connection they came on.
    pub async fn forward<E>(
        mut self,
        to: tokio::sync::mpsc::UnboundedSender<E>,
        wrap: impl Fn(Inbound<In>) -> E,
    ) {
        let ended = loop {
            match self.recv().await {
                Ok(Some(msg)) => {
                    if to.send(wrap(Inbound::Message(msg))).is_err() {
                        return;
                    }
                }
                Ok(None) => break "closed".to_owned(),
                Err(e) => break e.to_string(),
            }
        };
        let _ = to.send(wrap(Inbound::Closed(ended)));
    }
}

/// What [`RecvHalf::forward`] passes on: a message, or how the connection ended (the last
/// thing it passes on).
#[derive(Debug)]
pub enum Inbound<In> {
    /// The next message.
    Message(In),
    /// The connection ended: closed by the peer, or why it failed.
    Closed(String),
}

/// The sending half of a [`Connection`].
pub struct SendHalf<Out, S = TcpStream> {
    sink: SplitSink<Wire<S>, Bytes>,
    peer: Arc<PeerInfo>,
    send_max: usize,
    failed: bool,
    _messages: PhantomData<fn(Out)>,
}

impl<Out, S> fmt::Debug for SendHalf<Out, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendHalf")
            .field("peer", &self.peer)
            .field("send_max", &self.send_max)
            .finish_non_exhaustive()
    }
}

impl<Out, S> SendHalf<Out, S>
where
    Out: Serialize,
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Sends one message, as [`Connection::send`] does.
    ///
    /// # Errors
    ///
    /// As [`Connection::send`].
    pub async fn send(&mut self, msg: &Out) -> Result<(), Error> {
        send_on(
            &mut self.sink,
            msg,
            &self.peer,
            self.send_max,
            &mut self.failed,
        )
        .await
    }

    /// Sends one message, giving up after `limit`, as [`Connection::send_within`] does.
    ///
    /// # Errors
    ///
    /// As [`Connection::send_within`].
    pub async fn send_within(&mut self, msg: &Out, limit: Duration) -> Result<(), Error> {
        let sent = tokio::time::timeout(limit, self.send(msg)).await;
        timed_out(sent, limit, &self.peer, &mut self.failed)
    }

    /// Flushes and closes the sending direction, as [`Connection::close`] does.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the transport failed.
    pub async fn close(mut self) -> Result<(), Error> {
        self.sink
            .close()
            .await
            .map_err(|err| codec_error(err, &self.peer.addr))
    }
}

async fn recv_on<T, In>(
    stream: &mut T,
    peer: &PeerInfo,
    failed: &mut bool,
) -> Result<Option<In>, Error>
where
    T: Stream<Item = Result<BytesMut, CodecError>> + Unpin,
    In: DeserializeOwned,
{
    if *failed {
        return Err(Error::Unusable {
            peer: peer.addr.clone(),
        });
    }
    // `next` is cancel-safe, and nothing after it awaits.
    let result = match stream.next().await {
        None => Ok(None),
        Some(Ok(frame)) => codec::decode(&frame)
            .map(Some)
            .map_err(|source| Error::Decode {
                peer: peer.addr.clone(),
                expected: std::any::type_name::<In>(),
                source,
            }),
        Some(Err(err)) => Err(codec_error(err, &peer.addr)),
    };
    *failed = result.is_err();
    result
}

/// The outcome of a send bounded by `limit`: past it, the connection is unusable.
fn timed_out(
    sent: Result<Result<(), Error>, tokio::time::error::Elapsed>,
    limit: Duration,
    peer: &PeerInfo,
    failed: &mut bool,
) -> Result<(), Error> {
    sent.unwrap_or_else(|_| {
        *failed = true;
        Err(Error::SendTimeout {
            peer: peer.addr.clone(),
            after: limit,
        })
    })
}

async fn send_on<T, Out>(
    sink: &mut T,
    msg: &Out,
    peer: &PeerInfo,
    send_max: usize,
    failed: &mut bool,
) -> Result<(), Error>
where
    T: Sink<Bytes, Error = CodecError> + Unpin,
    Out: Serialize,
{
    if *failed {
        return Err(Error::Unusable {
            peer: peer.addr.clone(),
        });
    }
    let frame = codec::encode(msg).map_err(|source| Error::Encode {
        peer: peer.addr.clone(),
        source,
    })?;
    if frame.len() > send_max {
        return Err(Error::MessageTooLarge {
            peer: peer.addr.clone(),
            len: frame.len(),
            max: send_max,
        });
    }
    sink.send(frame).await.map_err(|err| {
        *failed = true;
        codec_error(err, &peer.addr)
    })
}
