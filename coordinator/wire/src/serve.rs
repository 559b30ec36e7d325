//! The accept loop: one task per connection, a handshake deadline, graceful shutdown.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::codec::FrameBudget;
use super::config::{Accept, Listener};
use super::handshake::{Admission, Seats};
use super::{Connection, handshake};

/// How long the loop waits before accepting again after the system ran out of a resource
/// (descriptors, memory), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `shutdown` is cancelled, runs the handshake on each in its own
/// task, and hands every connection that passes it to `handler`.
///
/// - A connection that fails the handshake (garbage, an oversized frame, a wrong magic,
///   version or token, a refused role, a timeout) gets a `rejected` verdict when possible, is
///   closed, and is logged as a `warn` line naming the peer's address and the
///   [`Error`](crate::Error); a peer that connects and closes without a byte is logged at `debug` only
///   (port scanners, TCP health checks). The loop goes on serving others.
/// - At most [`max_pending_handshakes`](super::ListenConfig::max_pending_handshakes)
///   handshakes run at once. Accepting never waits for one to finish: beyond the limit, the
///   handshake that has waited longest is closed (code `busy`), so that a flood of silent
///   connections cannot delay a new peer.
/// - A peer that passes the handshake takes one of the
///   [`max_connections`](super::RoleLimits::max_connections) of its role until its handler
///   returns; none left, it is refused with code `busy`. Its frames are limited to its role's
///   [`max_frame_len`](super::RoleLimits::max_frame_len), and charged to the listener's
///   [`max_frame_bytes_in_flight`](super::ListenConfig::max_frame_bytes_in_flight).
/// - `handler` gets the connection and a child of `shutdown`. An error it returns is logged as
///   a `warn` line with the peer's address.
/// - On shutdown the listener closes, pending handshakes are rejected with code `shutdown`,
///   and the loop waits up to [`shutdown_grace`](super::ListenConfig::shutdown_grace) for the
///   handlers to return before aborting them. Then `serve` returns.
pub async fn serve<A, In, Out, H, Fut, E>(
    listener: Listener<A>,
    handler: H,
    shutdown: CancellationToken,
) where
    A: Accept,
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
    H: Fn(Connection<In, Out, A::Stream>, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let Listener {
        mut acceptor,
        local_addr,
        config,
    } = listener;
    let config = Arc::new(config);
    let handler = Arc::new(handler);
    let seats = Seats::new(config.limits);
    let budget = FrameBudget::new(config.max_frame_bytes_in_flight);
    // The handshakes in progress, oldest first, each with the token that evicts it.
    let pending: Arc<Mutex<VecDeque<(u64, CancellationToken)>>> = Arc::default();
    let mut next_handshake = 0u64;
    let mut tasks = JoinSet::new();
    tracing::info!(addr = %local_addr, role = %config.role, token = config.token.is_some(), tls = config.tls.is_some(), "listening");

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => report_join(joined),
            accepted = acceptor.accept() => match accepted {
                Ok((stream, addr)) => {
                    let id = next_handshake;
                    next_handshake += 1;
                    let evict = CancellationToken::new();
                    {
                        let mut pending = lock(&pending);
                        while pending.len() >= config.max_pending_handshakes {
                            if let Some((_, oldest)) = pending.pop_front() {
                                oldest.cancel();
                            }
                        }
                        pending.push_back((id, evict.clone()));
                    }
                    let peer = addr.to_string();
                    let span = tracing::info_span!("connection", %peer);
                    let config = Arc::clone(&config);
                    let handler = Arc::clone(&handler);
                    let shutdown = shutdown.clone();
                    let seats = Arc::clone(&seats);
                    let budget = Arc::clone(&budget);
                    let pending = Arc::clone(&pending);
                    tasks.spawn(
                        async move {
                            let local = config.local();
                            let admission = Admission {
                                seats: &seats,
                                budget: &budget,
                                evict: &evict,
                            };
                            let accepted =
                                handshake::accept(stream, &peer, &local, &shutdown, admission)
                                    .await;
                            lock(&pending).retain(|(i, _)| *i != id);
                            match accepted {
                                Ok(Some((wire, info, seat))) => {
                                    tracing::debug!(
                                        role = %info.role,
                                        name = %info.name,
                                        "connection established"
                                    );
                                    let connection =
                                        Connection::new(wire, info, config.max_frame_len);
                                    if let Err(err) =
                                        handler(connection, shutdown.child_token()).await
                                    {
                                        tracing::warn!(%peer, "connection ended with an error: {err}");
                                    }
                                    // The role's seat is free again once its handler is done.
                                    drop(seat);
                                }
                                Ok(None) => {
                                    tracing::debug!("handshake cut short by shutdown or eviction");
                                }
                                // Already logged, with the peer and the reason.
                                Err(_refused) => {}
                            }
                        }
                        .instrument(span),
                    );
                }
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!("a connection failed before it was accepted: {err}");
                }
                Err(err) => {
                    tracing::warn!(
                        addr = %local_addr,
                        "cannot accept connections: {err}; retrying in {ACCEPT_BACKOFF:?}"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }

    drop(acceptor);
    tracing::info!(addr = %local_addr, open = tasks.len(), "shutting down");
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while let Some(joined) = tasks.join_next().await {
            report_join(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            addr = %local_addr,
            open = tasks.len(),
            "connections still open {:?} after shutdown; aborting them",
            config.shutdown_grace
        );
        tasks.shutdown().await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing holding it can panic half-way through an update that matters.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Errors that concern one connection, not the listener.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

fn report_join(joined: Result<(), JoinError>) {
    if let Err(err) = joined
        && err.is_panic()
    {
        tracing::error!("a connection task panicked: {err}");
    }
}
