//! cohort across hosts: every process on its own "host", a Linux network namespace with its own
//! address on one bridge (`support/netlab.rs`), and the store an S3-compatible server on a host
//! of its own, so that a host cut off the network loses the store too, as in a real partition.
//!
//! Two `cohort serve` (a and b) and three `examples/node` processes, each on its own host,
//! listening on every interface and advertising their host's address. Coordinator a is reached
//! through a raw proxy on a "wan" host that adds latency each way (the project's
//! fault-injecting proxy: this kernel has no `netem`); a advertises the proxy's address, so
//! every node, the standby and the CLI take the slow path to it.
//!
//! 1. With the latency, a leads and checkpoints of every wallet commit.
//! 2. a's host is cut off (`ip link set down` on its bridge port): a steps down (its lease
//!    cannot be renewed), b takes over, and the nodes follow b.
//! 3. a's host comes back: a follows b as a standby.
//!
//! Money is conserved in every committed checkpoint of every wallet (`cohort export`). Runs as
//! root (CI); skipped with the reason otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]

mod ha_support;

#[path = "support/examples.rs"]
mod examples;

#[path = "support/netlab.rs"]
mod netlab;

#[path = "../coordinator/tests/support/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ha_support::{cohort_bin, poll};
use netlab::Lab;

const PROXY_ENV: &str = "COHORT_LAB_PROXY";
const WALLETS: u32 = 4;
const COINS: i64 = 1_000;
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// One way, on the path to coordinator a.
const LATENCY: Duration = Duration::from_millis(25);
const BUCKET: &str = "cohort-lab";
const ACCESS_KEY: &str = "cohort-lab-key";
const SECRET_KEY: &str = "cohort-lab-secret";

/// Not a test of its own: the body of the latency proxy when `COHORT_LAB_PROXY` is
/// `listen|upstream|latency-ms`. Runs until killed (five minutes at most).
#[test]
fn proxy_role() {
    let Ok(spec) = std::env::var(PROXY_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let options = proxy::Options {
        listen: parts[0].parse().unwrap(),
        raw: true,
        latency: Duration::from_millis(parts[2].parse().unwrap()),
    };
    let upstream = parts[1].parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let proxy = proxy::Proxy::start_with(upstream, options).await;
        println!("proxy listening on {}", proxy.addr());
        tokio::time::sleep(Duration::from_secs(300)).await;
    });
}

/// The S3-compatible server's binary: `COHORT_TEST_S3S_BIN` (scripts/with-s3.sh), else where
/// that script installs it; `None` (skip) outside CI when neither exists.
fn s3s_bin() -> Option<PathBuf> {
    let path = std::env::var_os("COHORT_TEST_S3S_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| Path::new(&home).join(".cache/cohort/s3s-fs-0.14.1/bin/s3s-fs"))
        })
        .filter(|p| p.is_file());
    if path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no s3s-fs binary in CI: run the tests under scripts/with-s3.sh"
        );
        eprintln!("skipping: no s3s-fs binary (run under scripts/with-s3.sh)");
    }
    path
}

/// Where this run's certificates are.
static CERTS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// What every process of the lab needs to reach the store, and the CLI's certificate.
fn store_env(lab: &Lab) -> Vec<(String, String)> {
    let certs = CERTS.get().expect("the certificates are made first");
    let cert = |file: &str| certs.join(file).display().to_string();
    [
        ("COHORT_TLS_CERT", cert("operator.pem")),
        ("COHORT_TLS_KEY", cert("operator.key")),
        ("COHORT_TLS_CA", cert("ca.pem")),
        (
            "AWS_ENDPOINT_URL",
            format!("http://{}:9000", lab.ip("store")),
        ),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("COHORT_STORE", format!("s3://{BUCKET}/lab")),
        ("RUST_LOG", "warn".to_owned()),
        ("NO_COLOR", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs the CLI on the store's host and returns its stdout; panics on failure.
fn cli(lab: &Lab, args: &[&str]) -> String {
    let out = lab.run("store", &cohort_bin(), args, &store_env(lab));
    assert!(
        out.status.success(),
        "cohort {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The committed checkpoints, newest first, as `cohort list --json` shows them.
fn list(lab: &Lab) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&cli(lab, &["list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The newest checkpoint (not a fence) of `epoch` holding every wallet.
fn full_checkpoint_of(lab: &Lab, epoch: u64) -> Option<u64> {
    list(lab).iter().find_map(|row| {
        (row["epoch"] == epoch
            && row["kind"] == "checkpoint"
            && row["objects"] == u64::from(WALLETS) * NODES.len() as u64)
            .then(|| row["id"].as_u64().unwrap())
    })
}

/// Coins held plus coins in transit in checkpoint `id`, from `cohort export`; `None` when
/// retention expired it meanwhile.
fn money(lab: &Lab, id: u64) -> Option<i64> {
    let out = lab.run(
        "store",
        &cohort_bin(),
        &["export", &id.to_string()],
        &store_env(lab),
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("expired by GC"), "cohort export {id}: {err}");
        return None;
    }
    let sum = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            match record["kind"].as_str() {
                Some("object") => record["state"]["coins"].as_i64().unwrap(),
                Some("in_transit") => record["message"]["Coins"].as_i64().unwrap_or(0),
                other => panic!("unexpected record kind {other:?}: {line}"),
            }
        })
        .sum();
    Some(sum)
}

#[test]
fn a_partitioned_leader_steps_down_and_the_cluster_follows_the_standby() {
    if std::env::var_os(PROXY_ENV).is_some() {
        return;
    }
    let Some(node_bin) = examples::example("node") else {
        return;
    };
    let Some(s3s) = s3s_bin() else {
        return;
    };
    let hosts = [
        ("store", 2),
        ("a", 11),
        ("b", 12),
        ("n1", 21),
        ("n2", 22),
        ("n3", 23),
        ("wan", 30),
    ];
    let mut lab = match Lab::start(&hosts) {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("skipping the multi-host test: {why}");
            return;
        }
    };
    let work = tempfile::tempdir().unwrap();
    // Certificates for every host, as a reader of the README makes them: each names the
    // addresses others dial (a is dialled through the wan proxy).
    let certs = work.path().join("certs");
    let issue = |name: &str, hosts: &[String]| {
        let mut args = vec![
            "certs".to_owned(),
            "--dir".to_owned(),
            certs.display().to_string(),
            name.to_owned(),
        ];
        for host in hosts {
            args.extend(["--host".to_owned(), host.clone()]);
        }
        let out = std::process::Command::new(cohort_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    issue("coordinator-a", &[lab.ip("a"), lab.ip("wan")]);
    issue("coordinator-b", &[lab.ip("b")]);
    for name in NODES {
        issue(&format!("node-{name}"), &[lab.ip(name)]);
    }
    issue("operator", &[]);
    CERTS.set(certs.clone()).unwrap();
    let tls = |name: &str| -> Vec<String> {
        let cert = |file: String| certs.join(file).display().to_string();
        vec![
            "--tls-cert".to_owned(),
            cert(format!("{name}.pem")),
            "--tls-key".to_owned(),
            cert(format!("{name}.key")),
            "--tls-ca".to_owned(),
            cert("ca.pem".to_owned()),
        ]
    };
    let env = store_env(&lab);

    // The store's host.
    std::fs::create_dir_all(work.path().join("s3").join(BUCKET)).unwrap();
    let store_ip = lab.ip("store");
    let root = work.path().join("s3").display().to_string();
    lab.spawn(
        "store",
        "s3s-fs",
        &s3s,
        &[
            "--host",
            &store_ip,
            "--port",
            "9000",
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
            &root,
        ],
        &[],
    );
    poll(Duration::from_secs(20), || {
        lab.run("store", &cohort_bin(), &["list"], &env)
            .status
            .success()
            .then_some(())
    })
    .expect("the store answers");

    // The slow path to a.
    let a_ip = lab.ip("a");
    let wan = format!("{}:7411", lab.ip("wan"));
    let test_bin = std::env::current_exe().unwrap();
    let mut proxy_env = env.clone();
    proxy_env.push((
        PROXY_ENV.to_owned(),
        format!("{wan}|{a_ip}:7411|{}", LATENCY.as_millis()),
    ));
    let proxy = lab.spawn(
        "wan",
        "proxy",
        &test_bin,
        &["proxy_role", "--exact", "--nocapture", "--test-threads=1"],
        &proxy_env,
    );
    lab.proc(proxy)
        .wait_for_line("proxy listening", Duration::from_secs(20));

    // Two coordinators on every interface, each advertising where it is reached.
    let b_addr = format!("{}:7411", lab.ip("b"));
    let serve = |name: &str, advertise: &str| -> Vec<String> {
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            "0.0.0.0:7411",
            "--advertise",
            advertise,
            "--lease",
            "1s",
            "--interval",
            "200ms",
            "--heartbeat",
            "100ms",
            "--heartbeat-timeout",
            "1s",
            "--keep",
            "8",
            "--gc-interval",
            "1s",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(tls(name));
        args
    };
    let args = serve("coordinator-a", &wan);
    let a = lab.spawn(
        "a",
        "serve-a",
        &cohort_bin(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    lab.proc(a)
        .wait_for_line("leading under epoch 1", Duration::from_secs(20));
    let args = serve("coordinator-b", &b_addr);
    let b = lab.spawn(
        "b",
        "serve-b",
        &cohort_bin(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    lab.proc(b)
        .wait_for_line("standby: epoch 1 is held by ", Duration::from_secs(20));

    // Three nodes, each on its own host.
    let coordinators = format!("{wan},{b_addr}");
    let mut nodes = Vec::new();
    for name in NODES {
        let advertise = format!("{}:7500", lab.ip(name));
        let node_name = format!("node-{name}");
        let peers: Vec<String> = NODES
            .iter()
            .filter(|n| **n != name)
            .map(|n| format!("node-{n}"))
            .collect();
        let peers = peers.join(",");
        let wallets = WALLETS.to_string();
        let coins = COINS.to_string();
        let tls = tls(&node_name);
        let mut args = vec![
            "--name",
            &node_name,
            "--coordinator",
            &coordinators,
            "--listen",
            "0.0.0.0:7500",
            "--advertise",
            &advertise,
            "--peers",
            &peers,
            "--wallets",
            &wallets,
            "--coins",
            &coins,
            "--heartbeat",
            "100ms",
            "--heartbeat-timeout",
            "1s",
        ];
        args.extend(tls.iter().map(String::as_str));
        nodes.push(lab.spawn(name, &node_name, &node_bin, &args, &env));
    }
    for &n in &nodes {
        lab.proc(n)
            .wait_for_line(&format!("registered with {wan}"), Duration::from_secs(20));
    }

    // 1. Through the slow path, checkpoints of every wallet commit under a.
    let slow = poll(Duration::from_secs(30), || full_checkpoint_of(&lab, 1))
        .expect("a checkpoint of every wallet under epoch 1, through the latency");
    // Kept through the retention the coordinators run, for the money check at the end.
    cli(&lab, &["pin", &slow.to_string()]);
    // The latency is on the path: a checkpoint asked through it takes the CLI's connection and
    // handshake and the round's prepare, votes and decision, each at least a round trip.
    let asked = Instant::now();
    cli(&lab, &["checkpoint", "--now"]);
    let round_trip = 2 * LATENCY;
    assert!(
        asked.elapsed() >= 2 * round_trip,
        "a checkpoint through the slow path took only {:?}",
        asked.elapsed()
    );
    eprintln!(
        "checkpoint --now through {round_trip:?} of round-trip latency: {:?}",
        asked.elapsed()
    );
    let status: serde_json::Value =
        serde_json::from_str(&cli(&lab, &["status", "--json"])).unwrap();
    assert_eq!(status["leader"]["address"], wan.as_str(), "{status}");
    // The standby announced itself to the leader, over TLS, at its advertised address.
    let announced = poll(Duration::from_secs(10), || {
        let status: serde_json::Value =
            serde_json::from_str(&cli(&lab, &["status", "--json"])).unwrap();
        status["standbys"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["address"] == b_addr.as_str()))
            .then_some(())
    });
    assert!(
        announced.is_some(),
        "the leader never heard from the standby at {b_addr}"
    );
    assert_eq!(
        status["nodes"].as_array().unwrap().len(),
        NODES.len(),
        "{status}"
    );
    for node in status["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap().trim_start_matches("node-");
        assert_eq!(
            node["peer_addr"],
            format!("{}:7500", lab.ip(name)),
            "{status}"
        );
        assert_eq!(node["live"], true, "{status}");
    }

    // 2. a's host is cut off: a steps down, b leads, the nodes follow b.
    lab.cut("a");
    let cut = Instant::now();
    lab.proc(a)
        .wait_for_line("stepped down from epoch 1", Duration::from_secs(10));
    let stepped_down = cut.elapsed();
    lab.proc(b)
        .wait_for_line("leading under epoch 2", Duration::from_secs(10));
    let took_over = cut.elapsed();
    for &n in &nodes {
        // One session with a through the latency: heartbeats kept it alive.
        let sessions: std::collections::BTreeSet<String> = lab
            .proc(n)
            .output()
            .iter()
            .filter(|l| l.starts_with(&format!("registered with {wan}")))
            .filter_map(|l| {
                l.split("(session ")
                    .nth(1)?
                    .split(',')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(sessions.len(), 1, "{:?}", lab.proc(n).output());
        lab.proc(n).wait_for_line(
            &format!("registered with {b_addr}"),
            Duration::from_secs(20),
        );
    }
    let after = poll(Duration::from_secs(30), || full_checkpoint_of(&lab, 2))
        .expect("a checkpoint of every wallet under epoch 2");
    let failover = cut.elapsed();
    eprintln!(
        "partition of the leader's host: it stepped down after {stepped_down:?}, the standby led after {took_over:?}, the first checkpoint of every wallet under it ({after}) after {failover:?}"
    );
    assert!(after > slow);
    cli(&lab, &["pin", &after.to_string()]);

    // 3. a's host comes back: a follows b.
    lab.heal("a");
    lab.proc(a)
        .wait_for_line("standby: epoch 2 is held by ", Duration::from_secs(20));
    let again = poll(Duration::from_secs(10), || {
        let status: serde_json::Value =
            serde_json::from_str(&cli(&lab, &["status", "--json"])).unwrap();
        (status["leader"]["epoch"] == 2
            && status["leader"]["address"] == b_addr.as_str()
            && status["coordinator"]["leading"] == true)
            .then_some(status)
    })
    .expect("b leads, as the status says");
    assert_eq!(again["source"], "coordinator");

    // Money is conserved in every checkpoint of every wallet, fences included.
    let total = COINS * i64::from(WALLETS) * NODES.len() as i64;
    let full: Vec<u64> = list(&lab)
        .iter()
        .filter(|row| row["objects"] == u64::from(WALLETS) * NODES.len() as u64)
        .map(|row| row["id"].as_u64().unwrap())
        .collect();
    assert!(full.contains(&slow) && full.contains(&after), "{full:?}");
    let mut checked = Vec::new();
    for id in full {
        if let Some(sum) = money(&lab, id) {
            assert_eq!(sum, total, "checkpoint {id}");
            checked.push(id);
        }
    }
    assert!(
        checked.contains(&slow) && checked.contains(&after),
        "the pinned checkpoints were checked: {checked:?}"
    );
}
