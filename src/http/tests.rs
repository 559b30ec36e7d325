//! The HTTP port against a real socket: routes, headers, the guard, the limits, and a store
//! that stops answering.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use cohort_object_api::Clock;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cohort_checkpoint::testing::{Fault, FaultRule, FaultyStore, Op};
use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_coordinator::service::control::Responder;
use cohort_coordinator::service::metrics::{CONTENT_TYPE, ServiceMetrics};
use cohort_object_api::CheckpointId;
use object_store::memory::InMemory;
use object_store::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::*;

struct Running {
    addr: SocketAddr,
    metrics: ServiceMetrics,
    stop: CancellationToken,
    faulty: Arc<FaultyStore>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(token: Option<&[u8]>) -> Running {
    let faulty = Arc::new(FaultyStore::new(Arc::new(InMemory::new())));
    let store = CheckpointStore::from_object_store(
        faulty.clone(),
        Path::from("dashboard"),
        StoreOptions::default(),
    );
    let clock = Clock::fixed(1_700_000_000_000);
    let metrics = ServiceMetrics::new();
    let stop = CancellationToken::new();
    let watch = StoreWatch::new(store, clock.clone());
    tokio::spawn(watch.clone().run(stop.clone()));
    let dashboard = Dashboard {
        responder: Responder::new(),
        metrics: metrics.clone(),
        store: watch,
        settings: Settings {
            lease_ms: 10_000,
            interval_ms: Some(1_000),
            heartbeat_timeout_ms: 2_000,
        },
        clock,
    };
    let listener = HttpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr();
    let guard = Guard::new(&["dash.example".to_owned()], token);
    tokio::spawn(listener.serve(router(dashboard, guard), stop.clone()));
    Running {
        addr,
        metrics,
        stop,
        faulty,
    }
}

/// One request on its own connection; the whole answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let answer = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n")
            .as_bytes(),
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn the_page_its_assets_the_api_and_the_metrics_are_served_under_a_strict_policy() {
    let r = start(None).await;
    let (status, head, body) = get(r.addr, "/", "").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains(&format!(
            "content-security-policy: {}",
            guard::CONTENT_SECURITY_POLICY.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    // No inline script or style: everything comes from this origin.
    assert!(body.contains(r#"<script src="/app.js" defer></script>"#));
    assert!(
        !body.contains("<style") && !body.contains("style="),
        "inline style"
    );
    assert!(!body.contains("<script>"), "inline script");
    for (path, kind) in [
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let (status, head, body) = get(r.addr, path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(head.contains(kind), "{path}: {head}");
        assert!(!body.is_empty());
    }

    r.metrics.record_committed(
        CheckpointId::new(1),
        Some(Duration::from_millis(3)),
        Some(512),
        &BTreeMap::from([("n1".to_owned(), Duration::from_micros(40))]),
    );
    r.metrics.record_aborted(
        CheckpointId::new(2),
        &"node n1 was lost",
        None,
        0,
        &BTreeMap::new(),
    );
    let (status, head, body) = get(r.addr, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(head.contains(&CONTENT_TYPE.to_ascii_lowercase()), "{head}");
    assert!(
        body.contains("cohort_checkpoints_committed_total 1"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));

    let (status, head, body) = get(r.addr, "/api/history", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("cache-control: no-store"), "{head}");
    let h = json(&body);
    assert_eq!(h["attempts"][0]["outcome"], "committed", "{h}");
    assert_eq!(h["attempts"][0]["pauses_us"]["n1"], 40, "{h}");
    assert_eq!(h["attempts"][1]["reason"], "node n1 was lost", "{h}");
    assert_eq!(h["pauses"]["n1"]["p99_us"], 40, "{h}");
    let seq = h["seq"].as_u64().unwrap();
    let (_, _, body) = get(r.addr, &format!("/api/history?after={seq}"), "").await;
    assert_eq!(json(&body)["attempts"], serde_json::json!([]));
    let (status, _, body) = get(r.addr, "/api/history?after=soon", "").await;
    assert_eq!(status, 400, "{body}");

    // Before the leadership driver is attached the coordinator says it is starting; the store
    // was read.
    let (status, _, body) = get(r.addr, "/api/status", "").await;
    assert_eq!(status, 200);
    let s = json(&body);
    assert_eq!(s["this"]["role"], "starting", "{s}");
    assert_eq!(s["store"]["reachable"], true, "{s}");
    assert_eq!(s["counters"]["committed"], 1, "{s}");
    assert_eq!(s["counters"]["aborted"], 1, "{s}");
    assert_eq!(
        s["cohort"]["unreachable"], "the coordinator is starting",
        "{s}"
    );
    let (status, _, body) = get(r.addr, "/api/checkpoints", "").await;
    assert_eq!(status, 200);
    let c = json(&body);
    assert_eq!(c["retained_total"], 0, "{c}");
    assert_eq!(c["reachable"], true, "{c}");

    let (status, _, _) = get(r.addr, "/api/nodes/nobody", "").await;
    assert_eq!(status, 404);
    let (status, _, body) = get(r.addr, "/nope", "").await;
    assert_eq!(status, 404);
    assert!(body.contains("dashboard is at /"));

    let head_only = raw(
        r.addr,
        format!(
            "HEAD /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            r.addr
        )
        .as_bytes(),
    )
    .await;
    assert!(head_only.starts_with("HTTP/1.1 200"), "{head_only}");
    assert!(
        head_only.ends_with("\r\n\r\n"),
        "HEAD sent a body: {head_only}"
    );
    let post = raw(
        r.addr,
        format!(
            "POST /metrics HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            r.addr
        )
        .as_bytes(),
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused_and_the_token_is_required_off_loopback() {
    let r = start(None).await;
    let (status, _, body) = get(r.addr, "/api/status", "").await;
    assert_eq!(status, 200, "{body}");
    let rebound = raw(
        r.addr,
        b"GET /api/status HTTP/1.1\r\nHost: evil.example:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(rebound.contains("--http-host evil.example"), "{rebound}");
    let named = raw(
        r.addr,
        b"GET /metrics HTTP/1.1\r\nHost: dash.example:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");
    let (status, _, _) = get(r.addr, "/api/history", "Origin: http://evil.example\r\n").await;
    assert_eq!(status, 403);
    let (status, _, _) = get(
        r.addr,
        "/api/history",
        &format!("Origin: http://{}\r\n", r.addr),
    )
    .await;
    assert_eq!(status, 200);

    let token = b"0123456789abcdef0123";
    let t = start(Some(token)).await;
    let (status, head, _) = get(t.addr, "/api/status", "").await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let (status, _, _) = get(t.addr, "/metrics", "").await;
    assert_eq!(status, 401);
    let (status, _, _) = get(t.addr, "/", "").await;
    assert_eq!(status, 200, "the page itself holds no data");
    let (status, _, body) = get(
        t.addr,
        "/metrics",
        "Authorization: Bearer 0123456789abcdef0123\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("cohort_leader 0"));
    let (status, _, _) = get(
        t.addr,
        "/metrics",
        "Authorization: Bearer wrong-token-wrong-token\r\n",
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_and_serving_goes_on() {
    let r = start(None).await;
    let mut huge = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n", r.addr).into_bytes();
    huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD + 1024));
    let too_big = raw(r.addr, &huge).await;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");
    let garbage = raw(r.addr, b"\x16\x03\x01 hello\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let (status, _, _) = get(r.addr, "/metrics", "").await;
    assert_eq!(status, 200, "still serving");
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_after_the_head_timeout() {
    let r = start(None).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let mut out = Vec::new();
    // Ends (the server closes) once the head timeout passed; paused time gets there at once.
    tokio::time::timeout(REQUEST_HEAD_TIMEOUT * 2, s.read_to_end(&mut out))
        .await
        .expect("the server closed the connection")
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_store_is_reported_with_its_error_and_comes_back() {
    let r = start(None).await;
    let (_, _, body) = get(r.addr, "/api/checkpoints", "").await;
    assert_eq!(json(&body)["reachable"], true, "{body}");

    r.faulty
        .inject(FaultRule::on(Op::List).or(Op::Get).fault(Fault::Error));
    let down = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, _, body) = get(r.addr, "/api/status", "").await;
            let s = json(&body);
            if s["store"]["reachable"] == false {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the store is reported unreachable");
    assert!(
        down["store"]["error"]
            .as_str()
            .unwrap()
            .contains("injected"),
        "{down}"
    );
    assert!(
        down["store"]["ok_at_ms"].is_u64(),
        "the last good read is kept: {down}"
    );

    r.faulty.clear();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, _, body) = get(r.addr, "/api/checkpoints", "").await;
            if json(&body)["reachable"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the store is reported reachable again");
}

#[test]
fn the_dashboard_url_names_a_reachable_address() {
    let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    assert_eq!(dashboard_url(any, "10.0.0.5:7411"), "http://10.0.0.5:8080/");
    // The advertised address may be a name (or a bracketed IPv6 address).
    assert_eq!(
        dashboard_url(any, "coord-1.example.com:7411"),
        "http://coord-1.example.com:8080/"
    );
    assert_eq!(
        dashboard_url(any, "[fd00::5]:7411"),
        "http://[fd00::5]:8080/"
    );
    let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(
        dashboard_url(local, "10.0.0.5:7411"),
        "http://127.0.0.1:8080/"
    );
}
