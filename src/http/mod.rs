//! The HTTP port of `cohort serve --http ADDR`: a dashboard for people, the JSON it reads, and
//! the Prometheus exposition.
//!
//! | path | what |
//! |---|---|
//! | `/` | the dashboard: one page whose script, style and icon are embedded in the binary (`assets/`, no build step, nothing fetched from elsewhere) |
//! | `/api/status` | the leader, its epoch, the standbys, the lease, the nodes: what `cohort status --json` prints, assembled by the same code, plus this coordinator's role, the store's health and the counters |
//! | `/api/history?after=SEQ` | the checkpoint attempts and the timeline of recoveries and leadership changes recorded after `SEQ` ([`History`](cohort_coordinator::service::history::History)), and the pause percentiles per node |
//! | `/api/checkpoints` | the retained checkpoints, the pins and the recovery line, read from the store |
//! | `/api/nodes/{name}` | the objects placed on a node |
//! | `/metrics` | the OpenMetrics exposition, from the same [`ServiceMetrics`] |
//!
//! ARCHITECTURE.md ("The dashboard") documents every field.
//!
//! Why it lives in the CLI crate rather than in `cohort-coordinator`: it is what `cohort serve`
//! shows, and it joins what only meets here: the service's metrics and history, the leadership
//! driver (through the control [`Responder`]), the store, and `cohort status`'s own document.
//! The library records (`service::metrics`, `service::history`); this module only serves.
//!
//! The server is axum's router on hyper's HTTP/1.1 connections, accepted by our own loop so
//! that the limits hold: at most [`MAX_CONNECTIONS`] at once, [`REQUEST_HEAD_TIMEOUT`] for a
//! request head (idle keep-alive connections included), [`MAX_REQUEST_HEAD`] bytes of it.
//! Every request first passes [`guard`]: DNS-rebinding protection (`Host`, `Origin`), the token
//! off loopback, and a strict Content-Security-Policy on every answer.

mod api;
pub(crate) mod guard;
pub(crate) mod store_view;

use cohort_object_api::Clock;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cohort_coordinator::service::control::Responder;
use cohort_coordinator::service::metrics::ServiceMetrics;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) use guard::Guard;
pub(crate) use store_view::StoreWatch;

/// At most this many connections are served at once; more wait to be accepted.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long a client has to send a request head, and how long a kept-alive connection may
/// stay idle.
pub(crate) const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head read (hyper answers 431 past it); a browser's is under 2 KiB.
pub(crate) const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long open connections get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What the handlers read. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Dashboard {
    /// This coordinator's status, and the leader's when standing by.
    pub(crate) responder: Responder,
    /// The counters and the history.
    pub(crate) metrics: ServiceMetrics,
    /// The store's view.
    pub(crate) store: StoreWatch,
    /// The settings shown on the page.
    pub(crate) settings: Settings,
    /// The wall clock.
    pub(crate) clock: Clock,
}

/// Settings of the coordinator that the page shows.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Settings {
    /// The lease, ms.
    pub(crate) lease_ms: u64,
    /// The checkpoint interval, ms, if any.
    pub(crate) interval_ms: Option<u64>,
    /// The heartbeat timeout, ms.
    pub(crate) heartbeat_timeout_ms: u64,
}

/// The router: every path, behind the guard.
pub(crate) fn router(dashboard: Dashboard, guard: Guard) -> Router {
    api::routes(dashboard).layer(axum::middleware::from_fn_with_state(guard, guard::check))
}

/// A bound HTTP port; [`serve`](Self::serve) answers on it.
#[derive(Debug)]
pub(crate) struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpListener {
    /// Binds `addr`.
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen for HTTP on {addr}: {e}; pick a free port with --http"),
            )
        })?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `shutdown` is cancelled; then open connections get
    /// [`SHUTDOWN_GRACE`] to finish.
    pub(crate) async fn serve(self, router: Router, shutdown: CancellationToken) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a reset before accept: keep serving.
                    tracing::warn!(error = %e, "the HTTP port cannot accept");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(router.clone());
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                    .max_buf_size(MAX_REQUEST_HEAD);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut())
                            .await
                            .unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                drop(permit);
            });
            while connections.try_join_next().is_some() {}
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.abort_all();
    }
}

/// The URL others should open for the dashboard bound at `addr`: an unspecified address
/// (`0.0.0.0`) is replaced by the host of `advertise` (`HOST:PORT`, where nodes reach this
/// coordinator).
pub(crate) fn dashboard_url(addr: SocketAddr, advertise: &str) -> String {
    if !addr.ip().is_unspecified() {
        return format!("http://{addr}/");
    }
    match advertise.rsplit_once(':') {
        Some((host, _)) => format!("http://{host}:{}/", addr.port()),
        None => format!("http://{addr}/"),
    }
}

#[cfg(test)]
mod tests;
