//! TLS on the wire, over real TCP on 127.0.0.1: mutual authentication with certificates of one
//! authority (made here with rcgen), refusal of every peer without a valid certificate,
//! tampering after the handshake, and the token proof bound to the TLS session so that a relay
//! cannot forward it.
//!
//! No test sleeps to synchronise: they wait for connections, closes and channel messages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cohort_wire::{
    self as wire, CancellationToken, ConnectConfig, Connection, Error, ListenConfig, Role, Secret,
    TlsConfig,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Text(String),
}

// ---- certificates ----

/// A certificate authority, and certificates it signs as PEM (certificate, key).
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `name`, valid for `hosts`, for both server and client use.
    fn issue(&self, name: &str, hosts: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A [`TlsConfig`] for `name` on `hosts`, trusting this authority.
    fn config(&self, name: &str, hosts: &[&str]) -> TlsConfig {
        let (cert, key) = self.issue(name, hosts);
        TlsConfig::from_pem(cert.as_bytes(), key.as_bytes(), self.pem.as_bytes()).unwrap()
    }
}

// ---- a server under test ----

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// What the server's connections saw: each message received, and how each connection ended.
#[derive(Debug)]
enum Event {
    Received(Msg),
    Ended(Result<(), String>),
}

struct Server {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a server that echoes every message and reports what it saw.
async fn start(tls: Option<TlsConfig>, token: Option<Secret>) -> Server {
    let config = ListenConfig {
        tls,
        token,
        handshake_timeout: Duration::from_secs(2),
        ..ListenConfig::new(loopback())
    };
    let listener = config.bind().await.unwrap();
    let addr = listener.local_addr();
    let shutdown = CancellationToken::new();
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(wire::serve(
        listener,
        move |mut conn: Connection<Msg, Msg>, stop: CancellationToken| {
            let tx = tx.clone();
            async move {
                let ended = async {
                    loop {
                        let msg = tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            msg = conn.recv() => msg?,
                        };
                        let Some(msg) = msg else { return Ok(()) };
                        let _ = tx.send(Event::Received(msg.clone()));
                        conn.send(&msg).await?;
                    }
                }
                .await;
                let _ = tx.send(Event::Ended(ended.map_err(|e: Error| e.to_string())));
                Ok::<(), Error>(())
            }
        },
        shutdown.clone(),
    ));
    Server {
        addr,
        events,
        shutdown,
    }
}

impl Server {
    async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("the server saw nothing")
            .expect("the server is gone")
    }
}

fn client(tls: Option<TlsConfig>, token: Option<Secret>) -> ConnectConfig {
    ConnectConfig {
        tls,
        token,
        handshake_timeout: Duration::from_secs(2),
        ..ConnectConfig::new(Role::Node, "node-1")
    }
}

fn token() -> Secret {
    Secret::new("a shared token for the tls tests").unwrap()
}

fn text(s: &str) -> Msg {
    Msg::Text(s.to_owned())
}

// ---- the tests ----

#[tokio::test]
async fn mutual_tls_carries_messages_and_authenticates_both_sides() {
    let ca = Authority::new("test authority");
    for token in [None, Some(token())] {
        let mut server = start(
            Some(ca.config("coordinator", &["127.0.0.1"])),
            token.clone(),
        )
        .await;
        let mut conn = client(Some(ca.config("node-1", &[])), token.clone())
            .connect::<Msg, Msg>(server.addr)
            .await
            .unwrap();
        assert!(conn.peer().encrypted && conn.peer().authenticated);
        assert_eq!(conn.peer().role, Role::Coordinator);
        for message in ["vote yes", &"x".repeat(100_000)] {
            conn.send(&text(message)).await.unwrap();
            assert_eq!(conn.recv().await.unwrap(), Some(text(message)));
            assert!(matches!(server.next().await, Event::Received(m) if m == text(message)));
        }
        conn.close().await.unwrap();
        assert!(matches!(server.next().await, Event::Ended(Ok(()))));
    }
}

#[tokio::test]
async fn a_node_without_a_valid_certificate_is_refused() {
    let ca = Authority::new("test authority");
    let other = Authority::new("another authority");
    let mut server = start(Some(ca.config("coordinator", &["127.0.0.1"])), None).await;

    // A certificate of another authority: both sides say so.
    let err = client(Some(other.config("intruder", &[])), None)
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("not signed by this side's authority"), "{err}");

    // A client that trusts the server, but presents the other authority's certificate: TLS 1.3
    // finishes the client's side first, and the server's refusal arrives as an alert, still
    // reported as a TLS failure.
    let mixed = {
        let (cert, key) = other.issue("intruder", &[]);
        TlsConfig::from_pem(cert.as_bytes(), key.as_bytes(), ca.pem.as_bytes()).unwrap()
    };
    let err = client(Some(mixed), None)
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("refused this side's certificate"),
        "{err}"
    );

    // No TLS at all: the TLS server waits for a TLS hello and the handshake times out.
    let err = client(None, None)
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HandshakeTimeout { .. }), "{err}");

    // A server whose certificate does not name the address dialled.
    let misnamed = start(Some(ca.config("coordinator", &["10.9.9.9"])), None).await;
    let err = client(Some(ca.config("node-1", &[])), None)
        .connect::<Msg, Msg>(misnamed.addr)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not valid for 127.0.0.1") && err.contains("--host 127.0.0.1"),
        "{err}"
    );

    // A TLS client at a plain server: told at once that the peer does not speak TLS.
    let plain = start(None, None).await;
    let err = client(Some(ca.config("node-1", &[])), None)
        .connect::<Msg, Msg>(plain.addr)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not speak TLS"), "{err}");

    // None of them got a message through, and the server still serves a valid node.
    let mut conn = client(Some(ca.config("node-1", &[])), None)
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap();
    conn.send(&text("hello")).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), Some(text("hello")));
    // A refused peer never reaches the handler: the first thing it sees is the valid node.
    match server.next().await {
        Event::Received(m) => assert_eq!(m, text("hello")),
        other => panic!("a refused peer reached the handler: {other:?}"),
    }
}

/// A TCP relay that flips one bit of the next chunk going client → server when told to.
struct Tamperer {
    addr: SocketAddr,
    flip: Arc<AtomicBool>,
}

async fn tamperer(upstream: SocketAddr) -> Tamperer {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flip = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&flip);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let flag = Arc::clone(&flag);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if flag.swap(false, Ordering::SeqCst) {
                        // A bit in the last byte: inside a TLS record's tag, or a frame's text.
                        buf[n - 1] ^= 0x01;
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    Tamperer { addr, flip }
}

#[tokio::test]
async fn a_connection_whose_bytes_are_tampered_with_after_the_handshake_is_dropped() {
    let ca = Authority::new("test authority");
    let mut server = start(Some(ca.config("coordinator", &["127.0.0.1"])), None).await;
    let relay = tamperer(server.addr).await;
    let mut conn = client(Some(ca.config("node-1", &[])), None)
        .handshake::<Msg, Msg, _>(
            TcpStream::connect(relay.addr).await.unwrap(),
            format!("127.0.0.1:{}", relay.addr.port()),
        )
        .await
        .unwrap();
    conn.send(&text("before")).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), Some(text("before")));
    assert!(matches!(server.next().await, Event::Received(m) if m == text("before")));

    relay.flip.store(true, Ordering::SeqCst);
    conn.send(&text("tampered")).await.unwrap();
    // The server's TLS layer refuses the record and the connection ends with an error; the
    // message never reaches the application.
    match server.next().await {
        Event::Ended(Err(why)) => assert!(why.contains("connection with"), "{why}"),
        other => panic!("the tampered message was not refused: {other:?}"),
    }
    assert!(
        !matches!(conn.recv().await, Ok(Some(_))),
        "the connection is dropped"
    );

    // Without TLS the same flipped bit is delivered as a different message: what TLS prevents.
    let mut plain = start(None, None).await;
    let relay = tamperer(plain.addr).await;
    let mut conn = client(None, None)
        .connect::<Msg, Msg>(relay.addr)
        .await
        .unwrap();
    relay.flip.store(true, Ordering::SeqCst);
    conn.send(&text("abc")).await.unwrap();
    match plain.next().await {
        Event::Received(m) => assert_eq!(m, text("abb"), "plain TCP has no integrity check"),
        other => panic!("{other:?}"),
    }
}

/// A relay that terminates TLS on both sides with a certificate of the cohort's own authority
/// (an insider without the token), forwarding the cohort bytes in between.
async fn insider_relay(ca: &Authority, upstream: SocketAddr) -> SocketAddr {
    let (cert, key) = ca.issue("insider", &["127.0.0.1"]);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder(Arc::clone(&roots))
        .build()
        .unwrap();
    let mut server_side = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .unwrap();
    server_side.alpn_protocols = vec![b"cohort/1".to_vec()];
    let mut client_side = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    client_side.alpn_protocols = vec![b"cohort/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_side));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_side));

    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(from_client) = acceptor.accept(stream).await else {
                continue;
            };
            let to_server = TcpStream::connect(upstream).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let Ok(to_server) = connector.connect(name, to_server).await else {
                continue;
            };
            let (mut a, mut b) = (from_client, to_server);
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_token_proof_cannot_be_relayed_into_another_tls_session() {
    // rustls picks its process-wide provider for the relay's plain builders.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = Authority::new("test authority");
    let mut server = start(
        Some(ca.config("coordinator", &["127.0.0.1"])),
        Some(token()),
    )
    .await;
    let relay = insider_relay(&ca, server.addr).await;

    // The relay's certificates pass TLS on both sides, but the client's proof covers its own
    // session with the relay, not the relay's session with the server.
    let err = client(Some(ca.config("node-1", &[])), Some(token()))
        .connect::<Msg, Msg>(relay)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

    // Directly, the same client and token pass.
    let mut conn = client(Some(ca.config("node-1", &[])), Some(token()))
        .connect::<Msg, Msg>(server.addr)
        .await
        .unwrap();
    conn.send(&text("direct")).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), Some(text("direct")));
    assert!(matches!(server.next().await, Event::Received(m) if m == text("direct")));
}

#[tokio::test]
async fn a_wildcard_listener_needs_tls_or_a_token() {
    let ca = Authority::new("test authority");
    let anywhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let err = ListenConfig::new(anywhere).bind().await.unwrap_err();
    assert!(matches!(err, Error::TokenRequired { .. }), "{err}");
    assert!(err.to_string().contains("--tls-cert"), "{err}");
    let listener = ListenConfig {
        tls: Some(ca.config("coordinator", &["127.0.0.1"])),
        ..ListenConfig::new(anywhere)
    }
    .bind()
    .await
    .unwrap();
    assert_ne!(listener.local_addr().port(), 0);
}
