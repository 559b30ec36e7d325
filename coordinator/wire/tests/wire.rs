//! The wire layer over real TCP on 127.0.0.1 (and, for virtual time, in-memory pipes): round
//! trips, and every kind of bad peer refused with a precise error, a closed connection and a
//! warn line, while the server keeps serving well-behaved clients.
//!
//! No test sleeps to synchronise: they wait for the server's close, for a log event, or on
//! tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_object_api::ErrorKind;
use cohort_wire::Error;
use cohort_wire::{
    self as wire, Accept, CancellationToken, ConnectConfig, Connection, ListenConfig,
    PROTOCOL_VERSION, Role, Secret, SeededNonces,
};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tracing::Level;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// The application messages of these tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Vote { round: u64, yes: bool },
    Blob(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    WhoAmI,
    Text(String),
}

/// Blobs as msgpack bin, as real state-free metadata would be.
mod serde_bytes_compat {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Bytes::deserialize(d).map(|b| b.to_vec())
    }
}

// ---- the wire format, written out independently of the implementation ----

#[derive(Debug, Serialize, Deserialize)]
struct RawHello {
    magic: String,
    protocol_version: u16,
    role: String,
    name: String,
    software: String,
    nonce: Bytes,
    proof: Option<Bytes>,
    max_frame_len: u64,
}

impl RawHello {
    fn new(role: &str, version: u16) -> Self {
        Self {
            magic: "cohort".to_owned(),
            protocol_version: version,
            role: role.to_owned(),
            name: format!("raw-{role}"),
            software: "raw test peer".to_owned(),
            nonce: Bytes::from(vec![9u8; 32]),
            proof: None,
            max_frame_len: 1 << 20,
        }
    }

    fn frame(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec_named(self).unwrap())
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawVerdict {
    Welcome { proof: Option<Bytes> },
    Rejected { code: String, reason: String },
}

impl RawVerdict {
    fn frame(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec_named(self).unwrap())
    }
}

type Raw<S> = Framed<S, LengthDelimitedCodec>;

fn frames_of<S: AsyncRead + AsyncWrite>(stream: S) -> Raw<S> {
    Framed::new(stream, LengthDelimitedCodec::new())
}

/// Reads frames until the server closes; fails on a reset or a framing error.
async fn frames_until_close<S: AsyncRead + AsyncWrite + Unpin>(raw: &mut Raw<S>) -> Vec<BytesMut> {
    let mut frames = Vec::new();
    while let Some(frame) = raw.next().await {
        frames.push(frame.expect("the server closes cleanly, after its verdict"));
    }
    frames
}

/// The server's hello, then its rejection; returns the rejection code and reason.
fn expect_rejection(frames: &[BytesMut]) -> (String, String) {
    assert_eq!(
        frames.len(),
        2,
        "expected a hello and a verdict: {frames:?}"
    );
    let hello: RawHello = rmp_serde::from_slice(&frames[0]).unwrap();
    assert_eq!(
        (hello.magic.as_str(), hello.protocol_version),
        ("cohort", PROTOCOL_VERSION)
    );
    assert_eq!(hello.nonce.len(), 32);
    match rmp_serde::from_slice(&frames[1]).unwrap() {
        RawVerdict::Rejected { code, reason } => (code, reason),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

// ---- log capture: each event goes down a channel, so a test can wait for a warn line ----

struct Capture(mpsc::UnboundedSender<(Level, String)>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let _ = self.0.send((*event.metadata().level(), fields.0));
    }
}

struct Logs {
    rx: mpsc::UnboundedReceiver<(Level, String)>,
    _guard: tracing::subscriber::DefaultGuard,
}

/// Captures this thread's events; the tests run on a current-thread runtime, so the server's
/// tasks log here too.
fn capture_logs() -> Logs {
    let (tx, rx) = mpsc::unbounded_channel();
    let subscriber = tracing_subscriber::registry().with(Capture(tx));
    Logs {
        rx,
        _guard: tracing::subscriber::set_default(subscriber),
    }
}

impl Logs {
    /// The next warn line. The timeout only turns a hang into a failure.
    async fn next_warn(&mut self) -> String {
        let wait = async {
            loop {
                match self.rx.recv().await {
                    Some((Level::WARN, line)) => return line,
                    Some(_) => {}
                    None => panic!("log channel closed"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("no warn line was logged")
    }
}

// ---- a server under test ----

fn token() -> Secret {
    Secret::new("shared-token-for-the-wire-tests").unwrap()
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn listen_config() -> ListenConfig {
    ListenConfig {
        token: Some(token()),
        nonces: Arc::new(SeededNonces::new(1)),
        ..ListenConfig::new(loopback())
    }
}

fn client_config() -> ConnectConfig {
    ConnectConfig {
        token: Some(token()),
        nonces: Arc::new(SeededNonces::new(2)),
        ..ConnectConfig::new(Role::Node, "node-1")
    }
}

/// Echoes every message; answers `WhoAmI` with what the handshake told about the client.
async fn echo(
    mut conn: Connection<Msg, Msg, impl AsyncRead + AsyncWrite + Unpin>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return conn.close().await,
            msg = conn.recv() => match msg? {
                None => return Ok(()),
                Some(Msg::WhoAmI) => {
                    let peer = conn.peer();
                    let text = format!("{} {} {}", peer.role, peer.name, peer.authenticated);
                    conn.send(&Msg::Text(text)).await?;
                }
                Some(msg) => conn.send(&msg).await?,
            },
        }
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(config: ListenConfig) -> Server {
    let listener = config.bind().await.unwrap();
    let addr = listener.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(wire::serve(listener, echo, shutdown.clone()));
    Server {
        addr,
        shutdown,
        task,
    }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// A well-behaved client gets its messages echoed.
async fn assert_serves(addr: SocketAddr) {
    let mut conn = client_config().connect::<Msg, Msg>(addr).await.unwrap();
    let vote = Msg::Vote {
        round: 7,
        yes: true,
    };
    conn.send(&vote).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), Some(vote));
    conn.close().await.unwrap();
}

// ---- the tests ----

#[tokio::test]
async fn messages_round_trip_over_tcp() {
    let server = start(listen_config()).await;
    let mut conn = client_config()
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap();
    assert_eq!(conn.peer().role, Role::Coordinator);
    assert_eq!(conn.peer().name, "coordinator");
    assert!(conn.peer().authenticated);
    assert_eq!(conn.peer().protocol_version, PROTOCOL_VERSION);

    conn.send(&Msg::WhoAmI).await.unwrap();
    assert_eq!(
        conn.recv().await.unwrap(),
        Some(Msg::Text("node node-1 true".to_owned()))
    );
    let messages = vec![
        Msg::Vote {
            round: u64::MAX,
            yes: false,
        },
        Msg::Blob(vec![0xff; 60_000]),
        Msg::Text("ünïcödé ✓".to_owned()),
    ];
    for msg in &messages {
        conn.send(msg).await.unwrap();
    }
    for msg in &messages {
        assert_eq!(conn.recv().await.unwrap().as_ref(), Some(msg));
    }

    // The halves work from different tasks.
    let (mut rx, mut tx) = conn.split();
    let sender = tokio::spawn(async move {
        for round in 0..100 {
            tx.send(&Msg::Vote { round, yes: true }).await.unwrap();
        }
        tx.close().await.unwrap();
    });
    for round in 0..100 {
        assert_eq!(
            rx.recv().await.unwrap(),
            Some(Msg::Vote { round, yes: true })
        );
    }
    assert_eq!(rx.recv().await.unwrap(), None, "the server closes after us");
    sender.await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn garbage_is_refused_and_the_server_keeps_serving() {
    let mut logs = capture_logs();
    let server = start(listen_config()).await;
    let cases: [(&[u8], &str); 3] = [
        (b"GET / HTTP/1.1\r\nHost: coordinator\r\n\r\n", "HTTP"),
        (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], "TLS"),
        // A well-framed frame whose content is not msgpack (0xc1 is never used).
        (&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1], "not a cohort hello"),
    ];
    for (garbage, hint) in cases {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let client = stream.local_addr().unwrap().to_string();
        stream.write_all(garbage).await.unwrap();
        let mut raw = frames_of(stream);
        let (code, _reason) = expect_rejection(&frames_until_close(&mut raw).await);
        assert_eq!(code, "garbage");

        let line = logs.next_warn().await;
        assert!(
            line.contains(&client),
            "the warn line names the peer: {line}"
        );
        assert!(line.contains("not speaking the cohort protocol"), "{line}");
        assert!(line.contains(hint), "{line}");
        assert_serves(server.addr).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_before_allocating() {
    let mut logs = capture_logs();
    let server = start(ListenConfig {
        max_frame_len: 64 * 1024,
        ..listen_config()
    })
    .await;

    // A message over the peer's limit is refused locally, and the connection stays usable.
    let mut conn = client_config()
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap();
    let err = conn.send(&Msg::Blob(vec![1; 100_000])).await.unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { max: 65_536, .. }),
        "{err}"
    );
    assert_serves(server.addr).await;
    conn.send(&Msg::WhoAmI).await.unwrap();
    assert!(matches!(conn.recv().await.unwrap(), Some(Msg::Text(_))));
    drop(conn);

    // A peer that passes the handshake and then announces a 2 GiB frame.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let client = stream.local_addr().unwrap().to_string();
    let conn = client_config()
        .handshake::<Msg, Msg, _>(&mut stream, server.addr.to_string())
        .await
        .unwrap();
    drop(conn);
    stream
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let mut raw = frames_of(stream);
    assert!(
        raw.next().await.is_none(),
        "the server closes the connection"
    );

    let line = logs.next_warn().await;
    assert!(line.contains(&client), "{line}");
    assert!(
        line.contains("announced a 2147483647-byte frame, over this side's 65536-byte limit"),
        "{line}"
    );
    assert_serves(server.addr).await;
    server.stop().await;
}

// ---- limits (issue 14): connections per role, frame bytes in flight, silent floods ----

/// The CLI gets 16 connections and frames of 64 KiB: an authenticated CLI can no longer make
/// the listener reserve 16 MiB per connection (sixty of them took 976 MiB).
#[tokio::test]
async fn cli_connections_are_capped_and_their_frames_are_small() {
    let mut logs = capture_logs();
    let server = start(listen_config()).await;
    let cli = ConnectConfig {
        role: Role::Cli,
        name: "cohort-cli".to_owned(),
        ..client_config()
    };
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(cli.connect::<Msg, Msg>(server.addr).await.unwrap());
    }
    // The 17th is refused, and may retry later.
    let err = cli.connect::<Msg, Msg>(server.addr).await.unwrap_err();
    match &err {
        Error::Rejected { code, reason, .. } => {
            assert_eq!(code, "busy");
            assert!(reason.contains("16 cli connections"), "{reason}");
        }
        other => panic!("expected a busy rejection, got {other}"),
    }
    assert!(err.is_retryable(), "{err}");
    let line = logs.next_warn().await;
    assert!(line.contains("already serves 16"), "{line}");
    // Nodes are counted apart.
    assert_serves(server.addr).await;

    // A CLI frame over 64 KiB closes that connection; its seat is free again.
    let mut big = open.pop().unwrap();
    big.send(&Msg::Blob(vec![7; 100_000])).await.unwrap();
    assert!(
        big.recv().await.is_err(),
        "the server closes the connection"
    );
    let line = logs.next_warn().await;
    assert!(line.contains("over this side's 65536-byte limit"), "{line}");
    let mut again = None;
    for _ in 0..100 {
        // The seat is given back when the handler returns, just after the close.
        match cli.connect::<Msg, Msg>(server.addr).await {
            Ok(conn) => {
                again = Some(conn);
                break;
            }
            Err(Error::Rejected { code, .. }) if code == "busy" => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    }
    let mut again = again.expect("the freed seat was never given back");
    again.send(&Msg::WhoAmI).await.unwrap();
    assert_eq!(
        again.recv().await.unwrap(),
        Some(Msg::Text("cli cohort-cli true".to_owned()))
    );
    drop(open);
    server.stop().await;
}

/// A connection that hands its own framing to the test after the handshake.
async fn raw_node(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let conn = client_config()
        .handshake::<Msg, Msg, _>(&mut stream, addr.to_string())
        .await
        .unwrap();
    drop(conn);
    stream
}

/// Frames over 64 KiB are charged to the listener's budget from their length prefix until
/// they are received: a frame that does not fit closes its connection (the peer may
/// reconnect), and a received frame gives its bytes back.
#[tokio::test]
async fn the_frame_budget_bounds_the_bytes_reserved_for_frames_in_flight() {
    let mut logs = capture_logs();
    let server = start(ListenConfig {
        max_frame_len: 1 << 20,
        max_frame_bytes_in_flight: 1 << 20,
        ..listen_config()
    })
    .await;
    let blob = Msg::Blob(vec![3; 600_000]);
    let frame = rmp_serde::to_vec_named(&blob).unwrap();
    let prefix = (frame.len() as u32).to_be_bytes();

    // The first node announces 600 KB and sends half of it: the budget holds it.
    let mut first = raw_node(server.addr).await;
    first.write_all(&prefix).await.unwrap();
    first.write_all(&frame[..300_000]).await.unwrap();
    // A well-behaved node with small frames is not affected.
    assert_serves(server.addr).await;
    // A second 600 KB frame does not fit beside it: that connection is closed.
    let mut second = raw_node(server.addr).await;
    let client = second.local_addr().unwrap().to_string();
    second.write_all(&prefix).await.unwrap();
    let mut raw = frames_of(second);
    assert!(
        raw.next().await.is_none(),
        "the server closes the connection"
    );
    let line = logs.next_warn().await;
    assert!(line.contains(&client), "{line}");
    assert!(line.contains("already reserves"), "{line}");

    // The first frame completes and is echoed; its bytes are given back, so another node's
    // large frame is received now.
    first.write_all(&frame[300_000..]).await.unwrap();
    let mut raw = frames_of(first);
    let echoed = raw.next().await.unwrap().unwrap();
    assert_eq!(echoed.len(), frame.len());
    let mut third = client_config()
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap();
    third.send(&blob).await.unwrap();
    assert_eq!(third.recv().await.unwrap(), Some(blob));
    drop(raw);
    server.stop().await;
}

/// Silent connections beyond `max_pending_handshakes` evict the oldest pending handshake
/// instead of making new ones wait: before, with the handshakes of silent peers filling the
/// slots, a new client waited until one timed out (500 idle connections delayed a client by
/// 5 s).
#[tokio::test]
async fn silent_connections_never_delay_a_new_client() {
    let server = start(ListenConfig {
        max_pending_handshakes: 8,
        // Far longer than the client waits: only eviction lets it in.
        handshake_timeout: Duration::from_secs(120),
        ..listen_config()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let client = ConnectConfig {
        handshake_timeout: Duration::from_secs(10),
        ..client_config()
    };
    let mut conn = client.connect::<Msg, Msg>(server.addr).await.unwrap();
    conn.send(&Msg::WhoAmI).await.unwrap();
    assert!(matches!(conn.recv().await.unwrap(), Some(Msg::Text(_))));
    // The first silent connection was evicted with a busy verdict after the server's hello.
    let mut raw = frames_of(silent.remove(0));
    let (code, reason) = expect_rejection(&frames_until_close(&mut raw).await);
    assert_eq!(code, "busy");
    assert!(reason.contains("waited longest"), "{reason}");
    drop(silent);
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_version_is_named_on_both_sides() {
    let mut logs = capture_logs();
    let server = start(listen_config()).await;

    // A client of version 99 against this server.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let client = stream.local_addr().unwrap().to_string();
    let mut raw = frames_of(stream);
    let _server_hello = raw.next().await.unwrap().unwrap();
    raw.send(RawHello::new("node", 99).frame()).await.unwrap();
    let mut frames = vec![_server_hello];
    frames.extend(frames_until_close(&mut raw).await);
    let (code, reason) = expect_rejection(&frames);
    assert_eq!(code, "version");
    assert!(
        reason.contains(&format!("version {PROTOCOL_VERSION}")) && reason.contains("version 99"),
        "{reason}"
    );
    let line = logs.next_warn().await;
    assert!(line.contains(&client), "{line}");
    assert!(
        line.contains(&format!("speaks version {PROTOCOL_VERSION}"))
            && line.contains("speaks version 99"),
        "{line}"
    );
    assert!(
        line.contains("raw test peer"),
        "names the peer's software: {line}"
    );
    drop(raw);
    assert_serves(server.addr).await;
    server.stop().await;

    // This client against a server of the next version: the client names both versions, and still
    // introduces itself so that the server can log the mismatch.
    let fake = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let fake_server = tokio::spawn(async move {
        let (stream, _) = fake.accept().await.unwrap();
        let mut raw = frames_of(stream);
        raw.send(RawHello::new("coordinator", PROTOCOL_VERSION + 1).frame())
            .await
            .unwrap();
        let hello: RawHello = rmp_serde::from_slice(&raw.next().await.unwrap().unwrap()).unwrap();
        hello.protocol_version
    });
    let err = client_config()
        .connect::<Msg, Msg>(fake_addr)
        .await
        .unwrap_err();
    match &err {
        Error::VersionMismatch { ours, theirs, .. }
            if *ours == PROTOCOL_VERSION && *theirs == PROTOCOL_VERSION + 1 => {}
        other => panic!("expected a version mismatch, got {other}"),
    }
    assert!(
        err.to_string().contains("run the same cohort release"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(fake_server.await.unwrap(), PROTOCOL_VERSION);
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_on_both_sides() {
    let mut logs = capture_logs();
    let server = start(listen_config()).await;
    let other = Secret::new("another-token-of-enough-length").unwrap();
    let clients = [
        (Some(other), "does not match this server's token"),
        (None, "sent no token proof"),
    ];
    for (client_token, server_says) in clients {
        let config = ConnectConfig {
            token: client_token,
            ..client_config()
        };
        let err = config.connect::<Msg, Msg>(server.addr).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
        assert!(err.to_string().contains("--token"), "{err}");
        let line = logs.next_warn().await;
        assert!(line.contains("127.0.0.1:"), "{line}");
        assert!(line.contains(server_says), "{line}");
    }
    assert_serves(server.addr).await;
    server.stop().await;

    // A client with a token refuses a server that has none (on loopback, where that is
    // allowed): both sides must agree.
    let open = start(ListenConfig {
        token: None,
        ..listen_config()
    })
    .await;
    let err = client_config()
        .connect::<Msg, Msg>(open.addr)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    let line = logs.next_warn().await;
    assert!(line.contains("this server has none"), "{line}");
    let plain = ConnectConfig {
        token: None,
        ..client_config()
    };
    let mut conn = plain.connect::<Msg, Msg>(open.addr).await.unwrap();
    assert!(!conn.peer().authenticated);
    conn.send(&Msg::WhoAmI).await.unwrap();
    assert_eq!(
        conn.recv().await.unwrap(),
        Some(Msg::Text("node node-1 false".to_owned()))
    );
    open.stop().await;
}

#[tokio::test]
async fn a_server_that_cannot_prove_the_token_is_refused() {
    // An impostor welcomes everyone with a made-up proof.
    let fake = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = fake.accept().await.unwrap();
        let mut raw = frames_of(stream);
        raw.send(RawHello::new("coordinator", PROTOCOL_VERSION).frame())
            .await
            .unwrap();
        let _client_hello = raw.next().await;
        let welcome = RawVerdict::Welcome {
            proof: Some(Bytes::from(vec![0u8; 32])),
        };
        raw.send(welcome.frame()).await.unwrap();
        let _ = raw.next().await;
    });
    let err = client_config().connect::<Msg, Msg>(addr).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains("could not prove it holds"),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_client_times_out_and_the_server_keeps_serving() {
    let mut logs = capture_logs();
    let server = start(ListenConfig {
        handshake_timeout: Duration::from_millis(300),
        ..listen_config()
    })
    .await;
    // A slowloris: two bytes of a length prefix, then nothing.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let client = stream.local_addr().unwrap().to_string();
    stream.write_all(&[0, 0]).await.unwrap();
    // Meanwhile a well-behaved client is served: the silent one blocks nobody.
    assert_serves(server.addr).await;

    let mut raw = frames_of(stream);
    let (code, reason) = expect_rejection(&frames_until_close(&mut raw).await);
    assert_eq!(code, "timeout");
    assert!(reason.contains("300ms"), "{reason}");
    let line = logs.next_warn().await;
    assert!(line.contains(&client), "{line}");
    assert!(
        line.contains("did not complete the handshake within 300ms"),
        "{line}"
    );
    drop(raw);
    assert_serves(server.addr).await;
    server.stop().await;
}

#[tokio::test]
async fn a_non_loopback_bind_without_a_token_is_refused() {
    let open = ListenConfig::new(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let err = open.clone().bind().await.unwrap_err();
    assert!(matches!(err, Error::TokenRequired { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("refusing to listen on 0.0.0.0:0"),
        "{message}"
    );
    assert!(
        message.contains("--token") && message.contains("COHORT_TOKEN"),
        "{message}"
    );
    assert!(
        message.contains("127.0.0.1"),
        "says how to fix it: {message}"
    );

    let listener = ListenConfig {
        token: Some(token()),
        ..open
    }
    .bind()
    .await
    .unwrap();
    assert!(listener.local_addr().ip().is_unspecified());
}

#[tokio::test]
async fn shutdown_closes_connections_and_rejects_pending_handshakes() {
    let server = start(listen_config()).await;
    let mut conn = client_config()
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap();
    conn.send(&Msg::WhoAmI).await.unwrap();
    assert!(conn.recv().await.unwrap().is_some());
    // A connection that has not said hello yet.
    let mut pending = frames_of(TcpStream::connect(server.addr).await.unwrap());
    let _hello = pending.next().await.unwrap().unwrap();

    server.shutdown.cancel();
    assert_eq!(
        conn.recv().await.unwrap(),
        None,
        "the handler closed on shutdown"
    );
    let verdict: RawVerdict =
        rmp_serde::from_slice(&pending.next().await.unwrap().unwrap()).unwrap();
    assert!(
        matches!(&verdict, RawVerdict::Rejected { code, .. } if code == "shutdown"),
        "{verdict:?}"
    );
    assert!(pending.next().await.is_none(), "then the server closes");
    drop(pending);
    let addr = server.addr;
    server.task.await.unwrap();
    let err = client_config().connect::<Msg, Msg>(addr).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.is_retryable());
}

// ---- virtual time, over in-memory pipes ----

/// An acceptor over in-memory pipes, as a simulated network would provide.
struct Pipes(mpsc::Receiver<DuplexStream>);

impl Accept for Pipes {
    type Stream = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        match self.0.recv().await {
            Some(stream) => Ok((stream, SocketAddr::from((Ipv4Addr::LOCALHOST, 4242)))),
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))
    }
}

#[tokio::test(start_paused = true)]
async fn the_handshake_deadline_holds_on_virtual_time() {
    let (connect, incoming) = mpsc::channel(4);
    let listener = ListenConfig {
        handshake_timeout: Duration::from_secs(10),
        ..listen_config()
    }
    .listen_on(Pipes(incoming))
    .unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(wire::serve(listener, echo, shutdown.clone()));

    let (silent, server_end) = tokio::io::duplex(1 << 16);
    connect.send(server_end).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut raw = frames_of(silent);
    let (code, _) = expect_rejection(&frames_until_close(&mut raw).await);
    assert_eq!(code, "timeout");
    assert_eq!(started.elapsed(), Duration::from_secs(10));

    // A client whose server never speaks gives up after its own deadline.
    let (client_end, _mute) = tokio::io::duplex(1 << 16);
    let started = tokio::time::Instant::now();
    let err = ConnectConfig {
        handshake_timeout: Duration::from_secs(3),
        ..client_config()
    }
    .handshake::<Msg, Msg, _>(client_end, "mute")
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::HandshakeTimeout { after, .. } if after == Duration::from_secs(3)),
        "{err}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));

    // A well-behaved client over a pipe is served.
    let (client_end, server_end) = tokio::io::duplex(1 << 16);
    connect.send(server_end).await.unwrap();
    let mut conn = client_config()
        .handshake::<Msg, Msg, _>(client_end, "pipe")
        .await
        .unwrap();
    conn.send(&Msg::WhoAmI).await.unwrap();
    assert!(matches!(conn.recv().await.unwrap(), Some(Msg::Text(_))));
    shutdown.cancel();
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn recv_is_cancel_safe_against_a_timer() {
    let (client_end, server_end) = tokio::io::duplex(1 << 16);
    let (go_on, resume) = tokio::sync::oneshot::channel::<()>();
    // A bare server that completes the handshake, then sends one frame in two halves.
    let server = tokio::spawn(async move {
        let mut raw = frames_of(server_end);
        raw.send(RawHello::new("coordinator", PROTOCOL_VERSION).frame())
            .await
            .unwrap();
        let _client_hello = raw.next().await.unwrap().unwrap();
        raw.send(RawVerdict::Welcome { proof: None }.frame())
            .await
            .unwrap();
        let payload = rmp_serde::to_vec_named(&Msg::Text("x".repeat(1000))).unwrap();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let stream = raw.get_mut();
        stream.write_all(&frame[..500]).await.unwrap();
        resume.await.unwrap();
        stream.write_all(&frame[500..]).await.unwrap();
        raw
    });
    let mut conn = ConnectConfig {
        token: None,
        ..client_config()
    }
    .handshake::<Msg, Msg, _>(client_end, "pipe")
    .await
    .unwrap();

    let mut go_on = Some(go_on);
    let mut ticks = 0;
    let received = loop {
        tokio::select! {
            msg = conn.recv() => break msg.unwrap(),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                ticks += 1;
                // Only after a recv holding half a frame was cancelled does the rest come.
                if let Some(go_on) = go_on.take() {
                    go_on.send(()).unwrap();
                }
            }
        }
    };
    assert!(ticks >= 1);
    assert_eq!(received, Some(Msg::Text("x".repeat(1000))));
    drop(server.await.unwrap());
    assert_eq!(conn.recv().await.unwrap(), None);
}

/// A peer that stops reading (a paused process) fills its window; a plain send would then wait
/// as long as the peer does. `send_within` gives up, names the stall, and the connection is
/// unusable from then on (part of the frame may be out).
#[tokio::test(start_paused = true)]
async fn a_send_to_a_peer_that_stopped_reading_gives_up_in_time() {
    let (client_end, server_end) = tokio::io::duplex(4096);
    let (stop_reading, stopped) = tokio::sync::oneshot::channel::<()>();
    // A bare server that completes the handshake, then reads nothing more.
    let server = tokio::spawn(async move {
        let mut raw = frames_of(server_end);
        raw.send(RawHello::new("coordinator", PROTOCOL_VERSION).frame())
            .await
            .unwrap();
        let _client_hello = raw.next().await.unwrap().unwrap();
        raw.send(RawVerdict::Welcome { proof: None }.frame())
            .await
            .unwrap();
        let _ = stopped.await;
        raw
    });
    let mut conn = ConnectConfig {
        token: None,
        ..client_config()
    }
    .handshake::<Msg, Msg, _>(client_end, "pipe")
    .await
    .unwrap();
    // Small frames fit the window and go at once.
    conn.send_within(&Msg::Text("x".into()), Duration::from_secs(1))
        .await
        .unwrap();
    let big = Msg::Text("x".repeat(64 * 1024));
    let err = conn
        .send_within(&big, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SendTimeout { after, .. } if after == Duration::from_secs(2)),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.to_string().contains("stalled"), "{err}");
    let again = conn
        .send_within(&Msg::Text("y".into()), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(again, Error::Unusable { .. }), "{again}");
    stop_reading.send(()).unwrap();
    drop(server.await.unwrap());
}
