//! Inputs from other processes: an [`Ingress`] served on the network, and the
//! [`IngressClient`] that submits to it.
//!
//! An application process outside the cohort (a web front end, a teller, a feed handler)
//! holds an [`IngressClient`]; the process that holds the ingress log (a node, or an
//! in-process cohort) serves its [`Ingress`] with [`Ingress::serve`]. They speak the cohort
//! wire (handshake, token, TLS: see `cohort_wire`): the client connects as a
//! [`Role::Client`] whose handshake name is its *client id*, so the id an input is
//! deduplicated under is the one the connection authenticated.
//!
//! ```text
//! client → endpoint  Submit  { seq, to, payload }     payload: the target's message, msgpack
//! endpoint → client  Acked   { seq, position, duplicate }   durable in the log
//!                 or Refused { seq, reason, retry }
//! ```
//!
//! Many inputs are in flight on one connection, and they share the log's group commit. The
//! endpoint checks each before it is stored: its target must be a member that takes the
//! ingress's message type, and its payload must decode as one; otherwise it is refused
//! (`retry: false`) and never stored, so that nothing the source cannot apply enters the log.
//! A store failure is refused with `retry: true`.
//!
//! The client keeps every input until its acknowledgement. When its connection breaks, or
//! the endpoint refuses with `retry: true`, it reconnects (to the next endpoint listed, with
//! exponential backoff) and sends every unacknowledged input again with the same sequence
//! number; the log stores each once and acknowledges a retry as a duplicate. So an input is
//! stored at most once, and every input [`submit`](IngressClient::submit) acknowledged is
//! applied exactly once by the cohort, across crashes of either side.
//!
//! ```no_run
//! # async fn demo() -> cohort_coordinator::Result<()> {
//! use cohort_coordinator::ingress::endpoint::{IngressClient, IngressClientOptions};
//! use cohort_object_api::ObjectId;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Deposit(i64);
//!
//! let options = IngressClientOptions::new("teller-7", vec!["10.0.0.5:7420".into()]);
//! let client = IngressClient::<Deposit>::new(options)?;
//! let ack = client.submit(1, &ObjectId::new("account-1").unwrap(), &Deposit(100)).await?;
//! # let _ = ack; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_checkpoint::ingress::{Ack, MAX_CLIENT_LEN};
use cohort_object_api::ObjectId;
use cohort_wire::{
    Accept, CancellationToken, ConnectConfig, Connection, Inbound, ListenConfig, Listener, Role,
    Secret, SendHalf, TlsConfig,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Ingress;
use crate::error::{Error, Result};
use crate::messaging::Address;

/// The most inputs one connection has being stored at once; the endpoint reads no more from
/// it until one is answered (backpressure on a client that sends faster than the log syncs).
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// A client's frame to an ingress endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum IngressRequest {
    /// Store `payload` for member `to` under the connection's client id and `seq`.
    Submit {
        /// The client's sequence number of the input (a retry reuses it).
        seq: u64,
        /// The member it is for.
        to: String,
        /// The member's message, msgpack-encoded.
        payload: Bytes,
    },
}

/// An ingress endpoint's answer to one [`IngressRequest::Submit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum IngressReply {
    /// The input is durable in the log (or was already: `duplicate`).
    Acked {
        /// The input's sequence number.
        seq: u64,
        /// Its position in the log.
        position: u64,
        /// The client had used `seq` already; nothing was stored this time.
        duplicate: bool,
    },
    /// The input was not stored.
    Refused {
        /// The input's sequence number.
        seq: u64,
        /// What is wrong, and what to do.
        reason: String,
        /// Sending it again may succeed (the store failed); otherwise the input itself is
        /// wrong.
        retry: bool,
    },
}

/// The listener settings of an ingress endpoint on `addr`: it answers as a [`Role::Node`]
/// named `ingress` and talks only to [`Role::Client`]s. Set a token or TLS on it before
/// binding a non-loopback address.
pub fn listen_config(addr: SocketAddr) -> ListenConfig {
    let mut config = ListenConfig::new(addr);
    config.role = Role::Node;
    config.name = "ingress".into();
    config.accept_roles = vec![Role::Client];
    config
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Ingress<M> {
    /// Serves this ingress to [`IngressClient`]s on `listener` (see [`listen_config`]) until
    /// `shutdown` is cancelled. `resolve` gives the address of an input's target (for a node,
    /// `|id| node.address(id)`); an input whose target it refuses is refused, not stored.
    pub async fn serve<A, R>(
        self: Arc<Self>,
        listener: Listener<A>,
        resolve: R,
        shutdown: CancellationToken,
    ) where
        A: Accept,
        R: Fn(&ObjectId) -> Result<Address<M>> + Send + Sync + 'static,
    {
        let resolve = Arc::new(resolve);
        cohort_wire::serve(
            listener,
            move |connection, stop| {
                let (ingress, resolve) = (Arc::clone(&self), Arc::clone(&resolve));
                async move { serve_client(ingress, resolve, connection, stop).await }
            },
            shutdown,
        )
        .await;
    }
}

async fn serve_client<M, R, S>(
    ingress: Arc<Ingress<M>>,
    resolve: Arc<R>,
    connection: Connection<IngressRequest, IngressReply, S>,
    stop: CancellationToken,
) -> std::result::Result<(), cohort_wire::Error>
where
    M: Serialize + DeserializeOwned + Send + 'static,
    R: Fn(&ObjectId) -> Result<Address<M>> + Send + Sync + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if connection.peer().role != Role::Client {
        return Ok(());
    }
    let client: Arc<str> = Arc::from(connection.peer().name.as_str());
    let (mut requests, mut replies) = connection.split();
    let mut storing = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            Some(done) = storing.join_next() => {
                if let Ok(reply) = done {
                    replies.send(&reply).await?;
                }
            }
            request = requests.recv(), if storing.len() < MAX_IN_FLIGHT_PER_CONNECTION => {
                let Some(IngressRequest::Submit { seq, to, payload }) = request? else {
                    return Ok(()); // the client closed
                };
                match check::<M, R>(&resolve, &to, &payload) {
                    Ok(address) => {
                        let (ingress, client) = (Arc::clone(&ingress), Arc::clone(&client));
                        storing.spawn(async move {
                            match ingress.submit_encoded(&client, seq, &address, payload).await {
                                Ok(ack) => IngressReply::Acked {
                                    seq,
                                    position: ack.position,
                                    duplicate: ack.duplicate,
                                },
                                Err(e) => {
                                    tracing::warn!(log = %ingress.log().name(), %client, seq, error = %e, "an input could not be stored; the client retries");
                                    IngressReply::Refused { seq, reason: e.to_string(), retry: true }
                                }
                            }
                        });
                    }
                    Err(reason) => {
                        replies
                            .send(&IngressReply::Refused { seq, reason, retry: false })
                            .await?;
                    }
                }
            }
        }
    }
}

/// The address of a submitted input's target, if it is a member that can apply the payload.
fn check<M, R>(resolve: &R, to: &str, payload: &[u8]) -> std::result::Result<Address<M>, String>
where
    M: DeserializeOwned,
    R: Fn(&ObjectId) -> Result<Address<M>>,
{
    let id =
        ObjectId::new(to).map_err(|e| format!("the target {to:?} is not an object id: {e}"))?;
    let address = resolve(&id).map_err(|e| format!("the target cannot take this input: {e}"))?;
    rmp_serde::from_slice::<M>(payload).map_err(|e| {
        format!(
            "the payload is not a {} in msgpack: {e}",
            std::any::type_name::<M>()
        )
    })?;
    Ok(address)
}

/// How an [`IngressClient`] connects and retries. Build it with
/// [`IngressClientOptions::new`] and set the public fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IngressClientOptions {
    /// The client id its inputs are deduplicated under (its handshake name): 1 to 128 bytes,
    /// no control characters; the same after a restart of the client.
    pub client: String,
    /// The endpoints serving the ingress, tried in turn (`HOST:PORT`).
    pub endpoints: Vec<String>,
    /// The wire's shared token.
    pub token: Option<Secret>,
    /// TLS towards the endpoints (mutual).
    pub tls: Option<TlsConfig>,
    /// How long one input may wait for its acknowledgement, reconnections included; 30 s by
    /// default.
    pub deadline: Duration,
    /// The first pause after a fault; doubled up to `max_backoff`. 10 ms by default.
    pub backoff: Duration,
    /// The longest pause between attempts; 500 ms by default.
    pub max_backoff: Duration,
    /// How long opening one connection (handshake included) may take; 2 s by default.
    pub connect_timeout: Duration,
}

impl IngressClientOptions {
    /// A client called `client` of the ingress served at `endpoints`.
    pub fn new(client: impl Into<String>, endpoints: Vec<String>) -> Self {
        Self {
            client: client.into(),
            endpoints,
            token: None,
            tls: None,
            deadline: Duration::from_secs(30),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Submits inputs of type `M` to an [`Ingress`] served in another process, and waits until
/// each is durable; reconnects and resends across the endpoint's crashes. Cheap to clone;
/// see the [module docs](self).
pub struct IngressClient<M> {
    client: Arc<str>,
    calls: mpsc::UnboundedSender<Call>,
    _message: PhantomData<fn(M)>,
}

impl<M> Clone for IngressClient<M> {
    fn clone(&self) -> Self {
        Self {
            client: Arc::clone(&self.client),
            calls: self.calls.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for IngressClient<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressClient")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl<M: Serialize + Send + 'static> IngressClient<M> {
    /// A client with `options`; it connects on its first input. Call inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] without endpoints, or with a bad client id.
    pub fn new(options: IngressClientOptions) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(Error::invalid_settings(
                "an ingress client needs at least one endpoint (HOST:PORT)",
            ));
        }
        if options.client.is_empty() || options.client.len() > MAX_CLIENT_LEN {
            return Err(Error::invalid_settings(format!(
                "an ingress client id must be 1 to {MAX_CLIENT_LEN} bytes"
            )));
        }
        let mut connect = ConnectConfig::new(Role::Client, options.client.clone());
        connect.accept_roles = vec![Role::Node];
        connect.token = options.token.clone();
        connect.tls = options.tls.clone();
        connect.handshake_timeout = options.connect_timeout;
        connect
            .validate()
            .map_err(|e| Error::invalid_settings(format!("the ingress client's settings: {e}")))?;
        let (calls, rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let proxy = Proxy {
            backoff: options.backoff,
            options,
            connect,
            pending: BTreeMap::new(),
            conn: None,
            generation: 0,
            next_endpoint: 0,
            retry_at: None,
            last_fault: "not connected yet".into(),
            events,
            readers: JoinSet::new(),
        };
        let client = Arc::from(proxy.options.client.as_str());
        tokio::spawn(proxy.run(rx, events_rx));
        Ok(Self {
            client,
            calls,
            _message: PhantomData,
        })
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.client
    }

    /// Submits `message` for member `to` as this client's input `seq` (number inputs 1, 2,
    /// 3, …; a retry reuses the number), and answers once it is durable in the ingress log:
    /// the cohort then applies it exactly once. Inputs may be submitted concurrently.
    ///
    /// # Errors
    ///
    /// [`Error::InputRefused`] when the endpoint refused the input itself (no such member, a
    /// message it does not take): it is not stored. [`Error::Unacknowledged`] when no
    /// endpoint acknowledged it within the deadline: it may or may not be stored; submit it
    /// again with the same `seq`. [`Error::Stopped`] when the runtime is shutting down.
    pub async fn submit(&self, seq: u64, to: &ObjectId, message: &M) -> Result<Ack> {
        let payload = rmp_serde::to_vec(message).map_err(|e| Error::InputRefused {
            client: self.client.to_string(),
            seq,
            reason: format!("the input does not encode: {e}"),
        })?;
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call {
                seq,
                to: to.as_str().to_owned(),
                payload: Bytes::from(payload),
                reply,
            })
            .map_err(|_| Error::Stopped {
                what: "ingress client",
            })?;
        answer.await.unwrap_or(Err(Error::Stopped {
            what: "ingress client",
        }))
    }
}

struct Call {
    seq: u64,
    to: String,
    payload: Bytes,
    reply: oneshot::Sender<Result<Ack>>,
}

/// An input waiting for its acknowledgement.
struct Pending {
    to: String,
    payload: Bytes,
    deadline: Instant,
    waiters: Vec<oneshot::Sender<Result<Ack>>>,
}

enum FromConn {
    Reply(u64, IngressReply),
    Closed(u64, String),
}

/// The task behind an [`IngressClient`]: owns the connection and every unacknowledged input.
struct Proxy {
    options: IngressClientOptions,
    connect: ConnectConfig,
    pending: BTreeMap<u64, Pending>,
    conn: Option<(u64, SendHalf<IngressRequest>)>,
    generation: u64,
    next_endpoint: usize,
    backoff: Duration,
    /// No connection before this (backing off after a fault).
    retry_at: Option<Instant>,
    last_fault: String,
    events: mpsc::UnboundedSender<FromConn>,
    readers: JoinSet<()>,
}

impl Proxy {
    async fn run(
        mut self,
        mut calls: mpsc::UnboundedReceiver<Call>,
        mut events: mpsc::UnboundedReceiver<FromConn>,
    ) {
        loop {
            if self.conn.is_none()
                && !self.pending.is_empty()
                && self.retry_at.is_none_or(|at| at <= Instant::now())
            {
                self.connect().await;
            }
            let wake = self.next_wake();
            tokio::select! {
                call = calls.recv() => match call {
                    Some(call) => self.add(call).await,
                    None => return, // every handle dropped, so nobody waits for an answer
                },
                Some(event) = events.recv() => self.on_event(event),
                () = sleep_until(wake) => self.expire(),
                Some(_) = self.readers.join_next(), if !self.readers.is_empty() => {}
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let deadline = self.pending.values().map(|p| p.deadline).min();
        let retry = self
            .retry_at
            .filter(|_| self.conn.is_none() && !self.pending.is_empty());
        deadline.into_iter().chain(retry).min()
    }

    async fn add(&mut self, call: Call) {
        let Call {
            seq,
            to,
            payload,
            reply,
        } = call;
        if let Some(p) = self.pending.get_mut(&seq) {
            // The same input submitted twice concurrently: one answer for both.
            p.waiters.push(reply);
            return;
        }
        self.pending.insert(
            seq,
            Pending {
                to,
                payload,
                deadline: Instant::now() + self.options.deadline,
                waiters: vec![reply],
            },
        );
        self.send(seq).await;
    }

    async fn send(&mut self, seq: u64) {
        let (Some((n, conn)), Some(p)) = (&mut self.conn, self.pending.get(&seq)) else {
            return;
        };
        let request = IngressRequest::Submit {
            seq,
            to: p.to.clone(),
            payload: p.payload.clone(),
        };
        if let Err(e) = conn.send(&request).await {
            let n = *n;
            self.fault(n, format!("sending: {e}"));
        }
    }

    async fn connect(&mut self) {
        let endpoints = &self.options.endpoints;
        let addr = endpoints[self.next_endpoint % endpoints.len()].clone();
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        match self
            .connect
            .connect::<IngressReply, IngressRequest>(addr.as_str())
            .await
        {
            Ok(connection) => {
                self.generation += 1;
                let n = self.generation;
                let (replies, requests) = connection.split();
                self.readers.spawn(replies.forward(
                    self.events.clone(),
                    move |inbound| match inbound {
                        Inbound::Message(reply) => FromConn::Reply(n, reply),
                        Inbound::Closed(why) => FromConn::Closed(n, why),
                    },
                ));
                tracing::debug!(%addr, resend = self.pending.len(), "ingress client connected");
                self.conn = Some((n, requests));
                let seqs: Vec<u64> = self.pending.keys().copied().collect();
                for seq in seqs {
                    self.send(seq).await;
                }
            }
            Err(e) => {
                self.last_fault = format!("connecting to {addr}: {e}");
                self.back_off();
            }
        }
    }

    fn back_off(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.options.max_backoff);
    }

    /// Connection `n` failed: drop it (its unanswered inputs go again on the next one).
    fn fault(&mut self, n: u64, why: String) {
        if self.conn.as_ref().is_some_and(|(c, _)| *c == n) {
            tracing::debug!(reason = %why, "ingress connection lost; reconnecting");
            self.conn = None;
            self.last_fault = why;
            self.back_off();
        }
    }

    fn on_event(&mut self, event: FromConn) {
        match event {
            FromConn::Closed(n, why) => self.fault(n, format!("connection: {why}")),
            FromConn::Reply(n, reply) => match reply {
                IngressReply::Acked {
                    seq,
                    position,
                    duplicate,
                } => {
                    self.backoff = self.options.backoff;
                    self.answer_with(seq, || {
                        Ok(Ack {
                            position,
                            duplicate,
                        })
                    });
                }
                IngressReply::Refused {
                    seq,
                    reason,
                    retry: false,
                } => {
                    let client = self.options.client.clone();
                    self.answer_with(seq, || {
                        Err(Error::InputRefused {
                            client: client.clone(),
                            seq,
                            reason: reason.clone(),
                        })
                    });
                }
                IngressReply::Refused {
                    seq,
                    reason,
                    retry: true,
                } => self.fault(n, format!("input {seq} was not stored: {reason}")),
            },
        }
    }

    /// Answers every waiter of input `seq` (an error is made once per waiter: errors do not
    /// clone).
    fn answer_with(&mut self, seq: u64, result: impl Fn() -> Result<Ack>) {
        if let Some(p) = self.pending.remove(&seq) {
            for waiter in p.waiters {
                let _ = waiter.send(result());
            }
        }
    }

    /// Fails the inputs whose deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            let (client, deadline, last) = (
                self.options.client.clone(),
                self.options.deadline,
                self.last_fault.clone(),
            );
            self.answer_with(seq, || {
                Err(Error::Unacknowledged {
                    client: client.clone(),
                    seq,
                    deadline,
                    last: last.clone(),
                })
            });
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
