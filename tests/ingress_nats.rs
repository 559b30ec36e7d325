//! A real broker as a source: deposits published to a NATS JetStream stream (the server that
//! `scripts/with-nats.sh` installs and starts) enter a bank cohort through a
//! `Source` over a `JetStreamAdapter`, while the accounts pay each other. The process holding the whole cohort
//! is SIGKILLed after the source sent deposits that no checkpoint holds yet; the broker has
//! them unacknowledged (the source acknowledges only what a committed checkpoint holds), the
//! restarted process recovers and reads again from the line's stream sequence, and the final
//! line holds the initial money plus every deposit exactly once.
//!
//! The bank process is this test binary re-executed in `nats_bank_role`; it answers
//! `checkpoint` (with `line <id>`) and `next` (with `next <sequence>`) on stdin. Without a
//! server (`COHORT_TEST_NATS_URL` unset) the test says it skips, except in CI, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch streams uniquely"
)]

#[path = "support/bank.rs"]
#[allow(dead_code)]
mod bank;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bank::{Account, BankMsg, account_id, line_money};
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::ingress::Source;
use cohort::coordinator::{Cohort, Settings};
use cohort::{CheckpointId, ObjectId};
use cohort_ingress_nats::JetStreamAdapter;

const ROLE_ENV: &str = "COHORT_NATS_BANK";
const ACCOUNTS: u64 = 8;
const BALANCE: i64 = 1_000;
const CONSUMER: &str = "cohort-bank";

fn amount(seq: u64) -> i64 {
    (seq % 5 + 1) as i64
}

/// The server `scripts/with-nats.sh` started, or `None` (with a note) outside CI.
fn nats_url() -> Option<String> {
    match std::env::var("COHORT_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "COHORT_TEST_NATS_URL is not set but CI is: run the tests through scripts/with-nats.sh"
        ),
        _ => {
            eprintln!("skipped: COHORT_TEST_NATS_URL is not set; run through scripts/with-nats.sh");
            None
        }
    }
}

/// Not a test of its own: the bank process when `COHORT_NATS_BANK` is `store|nats|stream`.
#[test]
fn nats_bank_role() {
    let Ok(spec) = std::env::var(ROLE_ENV) else {
        return;
    };
    let parts: Vec<String> = spec.split('|').map(str::to_owned).collect();
    let (url, nats, stream) = (parts[0].clone(), parts[1].clone(), parts[2].clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&url, StoreOptions::default())
            .await
            .unwrap();
        let restarted = !store.committed_ids().await.unwrap().is_empty();
        let cohort = Cohort::builder(store.clone())
            .settings(Settings::default().interval(Duration::from_secs(2)))
            .build()
            .await
            .unwrap();
        let accounts: Vec<_> = (0..ACCOUNTS)
            .map(|i| {
                cohort
                    .spawn(account_id(i), Account::new(i, ACCOUNTS, BALANCE, 7))
                    .unwrap()
            })
            .collect();
        let jetstream = jetstream::new(async_nats::connect(&nats).await.unwrap());
        // `<subjects>.<account index>`, the amount as msgpack.
        let route = Arc::new(|m: &async_nats::Message| {
            let index: u64 = m
                .subject
                .as_str()
                .rsplit('.')
                .next()
                .and_then(|i| i.parse().ok())
                .ok_or("no account index in the subject")?;
            let amount: i64 = rmp_serde::from_slice(&m.payload).map_err(|e| e.to_string())?;
            Ok((account_id(index), BankMsg::Transfer { amount }))
        });
        let (source, poller) =
            Source::new(JetStreamAdapter::new(jetstream, stream, CONSUMER, route));
        let poll = cohort
            .spawn(ObjectId::new("source-deposits").unwrap(), source)
            .unwrap();
        if restarted {
            cohort.recover().await.unwrap();
        }
        let polling = poller.every(Duration::from_millis(20)).start(poll);
        println!("ready");
        let ticking = accounts.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                for a in &ticking {
                    let _ = a.tell(BankMsg::Tick { count: 1 });
                }
            }
        });
        let (lines, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                if lines.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            match line.as_str() {
                "checkpoint" => println!("line {}", cohort.trigger().await.unwrap()),
                "next" => println!("next {}", polling.next()),
                other => panic!("unknown command {other:?}"),
            }
        }
    });
}

struct Bank {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Bank {
    fn start(spec: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "nats_bank_role",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, spec)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        let bank = Self {
            child,
            stdin,
            lines,
        };
        // The test harness prints `test nats_bank_role ... ` before it, on the same line.
        bank.wait_for("ready", |l| l.ends_with("ready"));
        bank
    }

    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("waiting for {what}: nothing for 60 s ({e})"));
            if want(&line) {
                return line;
            }
        }
    }

    fn ask(&mut self, command: &str, answer: &str) -> u64 {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let line = self.wait_for(answer, |l| l.starts_with(answer));
        line[answer.len()..].trim().parse().unwrap()
    }

    /// Waits (bounded) until the source has sent every sequence below `next`.
    fn sent_below(&mut self, next: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ask("next", "next ") < next {
            assert!(Instant::now() < deadline, "the source never reached {next}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn deposits_from_jetstream_survive_a_sigkill_exactly_once_and_are_acked_at_commits() {
    let Some(nats) = nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let stream = format!("BANK{}x{nanos}", std::process::id());
    let subjects = format!("bank{}x{nanos}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&nats).await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subjects}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        js
    });
    let publish = |range: std::ops::RangeInclusive<u64>| {
        rt.block_on(async {
            for seq in range {
                let payload = rmp_serde::to_vec(&amount(seq)).unwrap();
                js.publish(format!("{subjects}.{}", seq % ACCOUNTS), payload.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
    };
    let ack_floor = || {
        rt.block_on(async {
            let s = js.get_stream(&stream).await.unwrap();
            s.consumer_info(CONSUMER)
                .await
                .unwrap()
                .ack_floor
                .stream_sequence
        })
    };
    let wait_ack_floor = |at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let floor = ack_floor();
            if floor >= at_least {
                return floor;
            }
            assert!(
                Instant::now() < deadline,
                "acknowledged only up to {floor}, not {at_least}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let spec = format!("{url}|{nats}|{stream}");

    publish(1..=200);
    let mut first = Bank::start(&spec);
    first.sent_below(201);
    first.ask("checkpoint", "line ");
    // The committed checkpoint holds 1..=200: the broker is told so.
    assert_eq!(wait_ack_floor(200), 200);
    publish(201..=300);
    first.sent_below(301);
    first.child.kill().unwrap(); // SIGKILL, before any checkpoint holds 201..=300
    first.child.wait().unwrap();
    assert_eq!(
        ack_floor(),
        200,
        "only what a committed checkpoint holds is acknowledged"
    );

    let mut second = Bank::start(&spec);
    second.sent_below(301);
    let id = CheckpointId::new(second.ask("checkpoint", "line "));
    assert_eq!(wait_ack_floor(300), 300);
    second.child.kill().unwrap();
    second.child.wait().unwrap();

    let money = rt.block_on(async {
        let store = CheckpointStore::open_read_only(&url).await.unwrap();
        let manifest = store.read_manifest(id).await.unwrap();
        line_money(&store, &manifest).await.unwrap().total()
    });
    let deposited: i64 = (1..=300).map(amount).sum();
    assert_eq!(
        money,
        ACCOUNTS as i64 * BALANCE + deposited,
        "line {id} must hold the initial money and every deposit exactly once"
    );
}
