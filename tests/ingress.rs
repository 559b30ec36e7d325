//! No acknowledged input is lost, none applied twice: deposits enter a bank cohort through an
//! ingress (durable log, group commit, deduplication) while the accounts also pay each other,
//! and the process holding the whole cohort (coordinator and objects alike) is SIGKILLed
//! after some deposits were acknowledged and before the next checkpoint held them.
//!
//! The bank process is this test binary re-executed in `ingress_bank_role`: it reads deposits
//! (`seq account amount`) on stdin, submits each through the ingress as client `teller`, and
//! prints `ack <seq>` once it is durable. The test sends every deposit, kills the process with
//! SIGKILL once some are acknowledged, starts it again on the same store (it recovers to the
//! newest line), and sends every deposit again: the acknowledged ones are retries, answered as
//! duplicates. At the end the line holds exactly the initial money plus every deposit once.
//!
//! Synchronisation is by what the process prints.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]

#[path = "support/bank.rs"]
#[allow(dead_code)]
mod bank;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bank::{Account, BankMsg, account_id, line_money};
use cohort::checkpoint::ingress::{IngressLog, IngressOptions};
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::ingress::Ingress;
use cohort::coordinator::{Cohort, Settings};
use cohort::{CheckpointId, ObjectId};

const ROLE_ENV: &str = "COHORT_INGRESS_BANK";
const ACCOUNTS: u64 = 8;
const BALANCE: i64 = 1_000;
const DEPOSITS: u64 = 400;

fn amount(seq: u64) -> i64 {
    (seq % 7 + 1) as i64
}

/// Not a test of its own: the bank process when `COHORT_INGRESS_BANK` names its store.
#[test]
fn ingress_bank_role() {
    let Ok(url) = std::env::var(ROLE_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&url, StoreOptions::default())
            .await
            .unwrap();
        let settings = Settings::default().interval(Duration::from_secs(1));
        let restarted = !store.committed_ids().await.unwrap().is_empty();
        let cohort = Cohort::builder(store.clone())
            .settings(settings)
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
        let log = IngressLog::open(&store, "deposits", IngressOptions::default())
            .await
            .unwrap();
        let (source, poller, ingress) = Ingress::<BankMsg>::new(log);
        let poll = cohort
            .spawn(ObjectId::new("ingress-deposits").unwrap(), source)
            .unwrap();
        if restarted {
            cohort.recover().await.unwrap();
        }
        let polling = poller.start(poll);
        let ingress = std::sync::Arc::new(ingress);
        println!("ready");
        // The accounts pay each other too, so messages cross every cut.
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
        let mut pending = Vec::new();
        while let Some(line) = rx.recv().await {
            if line == "checkpoint" {
                println!("line {}", cohort.trigger().await.unwrap());
                continue;
            }
            let parts: Vec<u64> = line.split(' ').map(|p| p.parse().unwrap()).collect();
            let (seq, to, amount) = (parts[0], parts[1], parts[2] as i64);
            let (ingress, to) = (
                std::sync::Arc::clone(&ingress),
                accounts[to as usize].clone(),
            );
            pending.push(tokio::spawn(async move {
                ingress
                    .submit("teller", seq, &to, &BankMsg::Transfer { amount })
                    .await
                    .unwrap();
                println!("ack {seq}");
            }));
        }
        for p in pending {
            p.await.unwrap();
        }
        // Stdin closed: apply everything, then take a line that holds it.
        while polling.next() < ingress.log().end() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let id = cohort.trigger().await.unwrap();
        println!("line {id}");
    });
}

/// A bank process and the lines it prints.
struct Bank {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Bank {
    fn start(url: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "ingress_bank_role",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, url)
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
        let stdin = child.stdin.take();
        let bank = Self {
            child,
            stdin,
            lines,
        };
        // The test harness prints `test ingress_bank_role ... ` before it, on the same line.
        bank.wait_for("ready", |l| l.ends_with("ready"));
        bank
    }

    /// The next line `want` accepts (bounded wait), waiting for `what`.
    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| {
                    panic!("waiting for {what}: the bank process printed nothing for 60 s ({e})")
                });
            if want(&line) {
                return line;
            }
        }
    }

    fn send(&mut self, deposits: std::ops::RangeInclusive<u64>) {
        let stdin = self.stdin.as_mut().unwrap();
        for seq in deposits {
            writeln!(stdin, "{seq} {} {}", seq % ACCOUNTS, amount(seq)).unwrap();
        }
        stdin.flush().unwrap();
    }

    fn acks(&self, n: u64, what: &str) {
        for _ in 0..n {
            self.wait_for(what, |l| l.starts_with("ack "));
        }
    }

    /// Asks for a checkpoint and returns its id once committed.
    fn checkpoint(&mut self) -> CheckpointId {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "checkpoint").unwrap();
        stdin.flush().unwrap();
        let line = self.wait_for("a checkpoint", |l| l.starts_with("line "));
        CheckpointId::new(line[5..].parse().unwrap())
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

#[test]
fn acknowledged_deposits_survive_a_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_owned();

    // A line holding the first half (applied or in transit to the accounts), then more
    // deposits acknowledged, then SIGKILL before the next periodic checkpoint.
    let mut first = Bank::start(&url);
    first.send(1..=DEPOSITS / 2);
    first.acks(DEPOSITS / 2, "an ack of the first half");
    let before = first.checkpoint();
    first.send(DEPOSITS / 2 + 1..=DEPOSITS);
    first.acks(DEPOSITS / 4, "an ack after the checkpoint");
    first.sigkill();

    // Everything again: what was acknowledged (or stored unacknowledged) is a retry now.
    let mut second = Bank::start(&url);
    second.send(1..=DEPOSITS);
    second.acks(DEPOSITS, "an ack after the restart");
    drop(second.stdin.take());
    let line = second.wait_for("the final line", |l| l.starts_with("line "));
    let id = CheckpointId::new(line[5..].parse().unwrap());
    assert!(id > before);
    let _ = second.child.wait();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (money, log_end) = rt.block_on(async {
        let store = CheckpointStore::open_read_only(&url).await.unwrap();
        let manifest = store.read_manifest(id).await.unwrap();
        let money = line_money(&store, &manifest).await.unwrap().total();
        let report = IngressLog::verify(&store, "deposits").await.unwrap();
        assert!(report.damaged.is_empty(), "{report:?}");
        (money, report.end)
    });
    assert_eq!(log_end, DEPOSITS, "each deposit is stored once");
    // `cohort verify` checks the log; `cohort show` says where the source had read to.
    let cohort = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "cohort {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let verified = cohort(&["verify", "--store", &url]);
    assert!(
        verified.contains(&format!("ingress log deposits: ok ({DEPOSITS} inputs)")),
        "{verified}"
    );
    let shown = cohort(&["show", "--store", &url, &id.to_string()]);
    assert!(
        shown.contains(&format!(
            "ingress-deposits has read ingress log deposits to position {DEPOSITS}"
        )),
        "{shown}"
    );
    let deposited: i64 = (1..=DEPOSITS).map(amount).sum();
    assert_eq!(
        money,
        ACCOUNTS as i64 * BALANCE + deposited,
        "line {id} must hold the initial money and every deposit exactly once"
    );
}
