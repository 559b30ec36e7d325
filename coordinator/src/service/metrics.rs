//! What a coordinator service exposes to Prometheus: checkpoint duration, size and pause,
//! counts of committed, aborted and failed checkpoints, recoveries, and the leader epoch; and
//! the minimal HTTP endpoint that serves them (`cohort serve --metrics ADDR`).
//!
//! The exposition is the OpenMetrics text format, written by the `prometheus-client` crate and
//! served as `application/openmetrics-text; version=1.0.0`, which Prometheus negotiates and
//! parses. The endpoint answers `GET /metrics` (and `HEAD`), one request per connection, and
//! nothing else: it has no state to change and needs no authentication beyond where it is bound.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest request head read; a scraper's is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many scrapes are answered at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// The metrics of one coordinator service. Cheap to clone: clones share the values.
#[derive(Clone)]
pub struct ServiceMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    duration: Histogram,
    size: Histogram,
    pause: Histogram,
    committed: Counter,
    aborted: Counter,
    failed: Counter,
    recoveries: Counter,
    leader_epoch: Gauge,
    leading: Gauge,
    /// For [`MetricsSnapshot`]: the histograms do not expose their sums outside tests.
    duration_sum_us: AtomicU64,
    size_sum: AtomicU64,
    pauses: AtomicU64,
}

impl fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceMetrics")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The counters and gauges at one moment, for `cohort status` and summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Checkpoints committed by this process.
    pub committed: u64,
    /// Attempts aborted before the commit point (a no vote, a timeout, a lost node, a change
    /// of leader).
    pub aborted: u64,
    /// Attempts whose commit point failed (the store refused or did not answer).
    pub failed: u64,
    /// Cohort recoveries run.
    pub recoveries: u64,
    /// The epoch this process leads under; 0 when it does not lead.
    pub leader_epoch: u64,
    /// Sum of the committed checkpoints' durations.
    pub duration_sum: Duration,
    /// Sum of the committed checkpoints' sizes, bytes.
    pub size_sum_bytes: u64,
    /// Pause samples recorded.
    pub pauses: u64,
}

impl ServiceMetrics {
    /// Fresh metrics, every value zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 1 ms to ~65 s, doubling.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        // 1 KiB to 64 GiB, times 4.
        let size = Histogram::new(exponential_buckets(1024.0, 4.0, 14));
        // 10 µs to ~20 s, doubling.
        let pause = Histogram::new(exponential_buckets(0.000_01, 2.0, 21));
        let committed = Counter::default();
        let aborted = Counter::default();
        let failed = Counter::default();
        let recoveries = Counter::default();
        let leader_epoch = Gauge::default();
        let leading = Gauge::default();
        registry.register_with_unit(
            "cohort_checkpoint_duration",
            "Time from prepare to the commit point of committed checkpoints",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register_with_unit(
            "cohort_checkpoint_size",
            "Bytes of state written by committed checkpoints (unchanged objects are referenced, not written)",
            Unit::Bytes,
            size.clone(),
        );
        registry.register_with_unit(
            "cohort_checkpoint_pause",
            "Longest time one object of a node was held from handling messages by a committed checkpoint (prepare and capture); one sample per node per checkpoint",
            Unit::Seconds,
            pause.clone(),
        );
        registry.register(
            "cohort_checkpoints_committed",
            "Checkpoints committed",
            committed.clone(),
        );
        registry.register(
            "cohort_checkpoints_aborted",
            "Checkpoint attempts aborted before the commit point",
            aborted.clone(),
        );
        registry.register(
            "cohort_checkpoints_failed",
            "Checkpoint attempts whose commit point failed in the store",
            failed.clone(),
        );
        registry.register(
            "cohort_recoveries",
            "Cohort recoveries to the recovery line",
            recoveries.clone(),
        );
        registry.register(
            "cohort_leader_epoch",
            "The epoch this coordinator leads under, 0 when it is a standby",
            leader_epoch.clone(),
        );
        registry.register(
            "cohort_leader",
            "1 when this coordinator leads, 0 when it is a standby",
            leading.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                duration,
                size,
                pause,
                committed,
                aborted,
                failed,
                recoveries,
                leader_epoch,
                leading,
                duration_sum_us: AtomicU64::new(0),
                size_sum: AtomicU64::new(0),
                pauses: AtomicU64::new(0),
            }),
        }
    }

    /// Records a committed checkpoint, with how long it took and how many bytes it wrote
    /// when they are known (an unknown one is left out of its histogram).
    pub fn record_committed(&self, duration: Option<Duration>, bytes: Option<u64>) {
        let i = &self.inner;
        i.committed.inc();
        if let Some(duration) = duration {
            i.duration.observe(duration.as_secs_f64());
            let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            i.duration_sum_us.fetch_add(us, Ordering::Relaxed);
        }
        if let Some(bytes) = bytes {
            i.size.observe(bytes as f64);
            i.size_sum.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Records a pause: the longest of one node's objects in one committed checkpoint.
    pub fn record_pause(&self, pause: Duration) {
        self.inner.pause.observe(pause.as_secs_f64());
        self.inner.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an attempt aborted before the commit point.
    pub fn record_aborted(&self) {
        self.inner.aborted.inc();
    }

    /// Records an attempt whose commit point failed.
    pub fn record_failed(&self) {
        self.inner.failed.inc();
    }

    /// Records a cohort recovery.
    pub fn record_recovery(&self) {
        self.inner.recoveries.inc();
    }

    /// Sets the epoch led under, or `None` for a standby.
    pub fn set_leader(&self, epoch: Option<u64>) {
        let i = &self.inner;
        i.leader_epoch
            .set(epoch.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)));
        i.leading.set(i64::from(epoch.is_some()));
    }

    /// The values now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let i = &self.inner;
        MetricsSnapshot {
            committed: i.committed.get(),
            aborted: i.aborted.get(),
            failed: i.failed.get(),
            recoveries: i.recoveries.get(),
            leader_epoch: u64::try_from(i.leader_epoch.get()).unwrap_or(0),
            duration_sum: Duration::from_micros(i.duration_sum_us.load(Ordering::Relaxed)),
            size_sum_bytes: i.size_sum.load(Ordering::Relaxed),
            pauses: i.pauses.load(Ordering::Relaxed),
        }
    }

    /// The exposition in the OpenMetrics text format, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail, and every registered metric encodes.
        if let Err(e) = encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// A bound metrics endpoint; [`run`](Self::run) serves it.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsEndpoint {
    /// Binds `addr`.
    ///
    /// # Errors
    ///
    /// When the port cannot be opened; the message names the address.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen for metrics on {addr}: {e}; pick a free port with --metrics"
                ),
            )
        })?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `metrics` until `shutdown` is cancelled.
    pub async fn run(self, metrics: ServiceMetrics, shutdown: CancellationToken) {
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
            match accepted {
                Ok((stream, peer)) => {
                    let metrics = metrics.clone();
                    connections.spawn(async move {
                        if let Err(e) = answer(stream, &metrics).await {
                            tracing::debug!(%peer, error = %e, "metrics request failed");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of descriptors or a reset before accept: keep serving.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept");
                    tokio::task::yield_now().await;
                }
            }
            while connections.try_join_next().is_some() {}
        }
        connections.abort_all();
    }
}

/// A response: status line and body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }
}

/// Reads one request head and answers it; the connection is then closed.
async fn answer(mut stream: TcpStream, metrics: &ServiceMetrics) -> io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    let (response, head_only) = match head {
        Err(_) => (
            Response::text("408 Request Timeout", "request head not received in time\n"),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => (
            Response::text(
                "431 Request Header Fields Too Large",
                "request head too large\n",
            ),
            false,
        ),
        Ok(Ok(Some(head))) => route(&head, metrics),
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads until the blank line that ends a request head; `None` if it is too large. A body
/// (there should be none) is ignored.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the request head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Picks the response for a request head; the flag is true for `HEAD` (no body sent).
fn route(head: &str, metrics: &ServiceMetrics) -> (Response, bool) {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (
            Response::text("400 Bad Request", "malformed request line\n"),
            false,
        );
    };
    if !version.starts_with("HTTP/1.") {
        return (
            Response::text(
                "505 HTTP Version Not Supported",
                "only HTTP/1.x is served\n",
            ),
            false,
        );
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let mut r = Response::text("405 Method Not Allowed", "use GET /metrics\n");
        r.allow = true;
        return (r, false);
    }
    // The query string, if any, selects nothing.
    let path = target.split('?').next().unwrap_or_default();
    let response = match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: metrics.render(),
            allow: false,
        },
        "/" => Response::text("200 OK", "cohort coordinator: metrics at /metrics\n"),
        _ => Response::text("404 Not Found", "not found; metrics are at /metrics\n"),
    };
    (response, head_only)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = ServiceMetrics::new();
        m.record_committed(Some(Duration::from_millis(12)), Some(4096));
        m.record_committed(Some(Duration::from_millis(30)), Some(0));
        m.record_committed(None, None);
        m.record_pause(Duration::from_micros(250));
        m.record_aborted();
        m.record_failed();
        m.record_recovery();
        m.set_leader(Some(7));
        let text = m.render();
        for line in [
            "# TYPE cohort_checkpoint_duration_seconds histogram",
            "cohort_checkpoint_duration_seconds_count 2",
            "cohort_checkpoint_size_bytes_sum 4096.0",
            "cohort_checkpoint_pause_seconds_count 1",
            "cohort_checkpoints_committed_total 3",
            "cohort_checkpoints_aborted_total 1",
            "cohort_checkpoints_failed_total 1",
            "cohort_recoveries_total 1",
            "cohort_leader_epoch 7",
            "cohort_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        let s = m.snapshot();
        assert_eq!(
            (
                s.committed,
                s.aborted,
                s.failed,
                s.recoveries,
                s.leader_epoch
            ),
            (3, 1, 1, 1, 7)
        );
        m.set_leader(None);
        assert!(m.render().lines().any(|l| l == "cohort_leader 0"));
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_endpoint_answers_scrapes_and_refuses_the_rest() {
        let metrics = ServiceMetrics::new();
        metrics.record_committed(Some(Duration::from_millis(5)), Some(10));
        let endpoint = MetricsEndpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let addr = endpoint.local_addr();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(endpoint.run(metrics.clone(), shutdown.clone()));

        let ok = request(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(CONTENT_TYPE));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("cohort_checkpoints_committed_total 1"));

        let head_only = request(addr, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(head_only.starts_with("HTTP/1.1 200 OK"));
        assert!(head_only.ends_with("\r\n\r\n"), "HEAD sent a body");

        let missing = request(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found"));
        let post = request(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed"));
        assert!(post.contains("Allow: GET, HEAD"));
        let garbage = request(addr, b"\x16\x03\x01 hello\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 Bad Request"), "{garbage}");
        // Exactly what the server reads before it gives up, so that nothing is left unread.
        let huge = vec![b'a'; MAX_REQUEST_HEAD + 1024];
        let too_big = request(addr, &huge).await;
        assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");

        // Still serving after all that.
        let again = request(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK"));
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_timed_out() {
        let endpoint = MetricsEndpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let addr = endpoint.local_addr();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(endpoint.run(ServiceMetrics::new(), shutdown.clone()));
        let answer = request(addr, b"GET /metrics HTTP/1.1\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
