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
//! The same on a service deployment (`ingress_on_a_node_survives_sigkill_of_the_coordinator_and_of_the_node`):
//! the ingress, its source and its network endpoint live on a node process under two
//! `cohort serve` coordinators, and the test submits deposits as a client over TCP
//! (`IngressClient`). The leading coordinator is SIGKILLed while deposits flow (the standby
//! takes over and the cohort rolls back), then the node itself while more are in flight: the
//! node is started again on the same port, the client reconnects and resends what was not
//! acknowledged, and every deposit is in the final line exactly once.
//!
//! The same with every process of the deployment SIGKILLed at once
//! (`ingress_on_a_node_survives_sigkill_of_every_process_at_once`).
//!
//! And when the node serving the ingress dies for good
//! (`ingress_moves_to_a_surviving_node_when_its_node_dies_for_good`): the coordinator moves
//! its accounts and the source to a standby node that registered factories of both, the
//! client fails over to the standby's endpoint, and the moved source replays the log.
//!
//! Synchronisation is by what the processes print (and the store holds).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
#![allow(
    clippy::disallowed_methods,
    reason = "process-level tests measure real time and name scratch files uniquely"
)]

#[path = "support/bank.rs"]
#[allow(dead_code)]
mod bank;
mod ha_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bank::{Account, BankMsg, account_id, line_money};
use cohort::checkpoint::ingress::{IngressLog, IngressOptions};
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::ingress::endpoint::{IngressClient, IngressClientOptions, listen_config};
use cohort::coordinator::ingress::{Ingress, LogHandle};
use cohort::coordinator::node::Node;
use cohort::coordinator::service::{STATE_TABLE_KEY, StateTable};
use cohort::coordinator::{Address, Cohort, Settings};
use cohort::{CheckpointId, ObjectId};
use ha_support::{Proc, address_in, cohort_bin, poll, quick_node_settings, store_dir};

const ROLE_ENV: &str = "COHORT_INGRESS_BANK";
const NODE_ROLE_ENV: &str = "COHORT_INGRESS_NODE";
const HEALING_ROLE_ENV: &str = "COHORT_INGRESS_HEALING";
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
        let polling = serve_stdin(std::sync::Arc::clone(&ingress), accounts, polling, || {
            let cohort = cohort.clone();
            async move { Some(cohort.trigger().await.unwrap()) }
        })
        .await;
        // Stdin closed: apply everything, then take a line that holds it.
        while polling.next() < ingress.log().get().map_or(0, |log| log.end()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let id = cohort.trigger().await.unwrap();
        println!("line {id}");
    });
}

/// Reads deposits (`seq account amount`) and `next` on stdin: submits each deposit through
/// `ingress` and prints `ack <seq>` once it is durable; answers `next` with the source's read
/// position; `checkpoint` goes to `checkpoint` (when the cohort is in this process).
async fn serve_stdin<C>(
    ingress: std::sync::Arc<Ingress<BankMsg>>,
    accounts: Vec<Address<BankMsg>>,
    polling: cohort::coordinator::ingress::Polling,
    checkpoint: impl Fn() -> C,
) -> cohort::coordinator::ingress::Polling
where
    C: std::future::Future<Output = Option<CheckpointId>>,
{
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
        match line.as_str() {
            "checkpoint" => {
                if let Some(id) = checkpoint().await {
                    println!("line {id}");
                }
                continue;
            }
            "next" => {
                println!("next {}", polling.next());
                continue;
            }
            _ => {}
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
    polling
}

/// Not a test of its own: a node process holding the accounts, the ingress, its source and
/// its endpoint, when `COHORT_INGRESS_NODE` is `store|coordinator,coordinator|endpoint port`.
#[test]
fn ingress_node_role() {
    let Ok(spec) = std::env::var(NODE_ROLE_ENV) else {
        return;
    };
    let [url, coordinators, port] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("{NODE_ROLE_ENV} is {spec:?}, not store|coordinators|port");
    };
    let coordinators: Vec<String> = coordinators.split(',').map(str::to_owned).collect();
    let port: u16 = port.parse().unwrap();
    let url = url.to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&url, StoreOptions::default())
            .await
            .unwrap();
        let settings = quick_node_settings();
        let node = Node::builder(store.clone())
            .name("node-0")
            .coordinators(coordinators)
            .settings(settings)
            .build()
            .await
            .unwrap();
        let accounts: Vec<_> = (0..ACCOUNTS)
            .map(|i| {
                node.spawn(account_id(i), Account::new(i, ACCOUNTS, BALANCE, 7))
                    .unwrap()
            })
            .collect();
        let log = IngressLog::open(&store, "deposits", IngressOptions::default())
            .await
            .unwrap();
        let (source, poller, ingress) = Ingress::<BankMsg>::new(log);
        let poll = node
            .spawn(ObjectId::new("ingress-deposits").unwrap(), source)
            .unwrap();
        let polling = poller.start(poll);
        let ingress = std::sync::Arc::new(ingress);
        let listener = listen_config(([127, 0, 0, 1], port).into())
            .bind()
            .await
            .unwrap();
        let resolver = node.clone();
        tokio::spawn(std::sync::Arc::clone(&ingress).serve(
            listener,
            move |id| resolver.address::<BankMsg>(id),
            cohort::wire::CancellationToken::new(),
        ));
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
        let _polling = serve_stdin(ingress, accounts, polling, || async { None }).await;
        drop(node);
    });
}

/// Not a test of its own: a node process of a cohort whose ingress may move, when
/// `COHORT_INGRESS_HEALING` is `store|coordinators|endpoint port|node name|spawn or standby`.
/// Every such node registers factories of the accounts and of the deposits' source (so the
/// coordinator can move them here when their node dies) and serves an endpoint of the log
/// through one [`LogHandle`], which opens the log where the source runs (node-0 first; a
/// standby once the source is moved to it) and refuses inputs elsewhere.
#[test]
fn ingress_healing_role() {
    let Ok(spec) = std::env::var(HEALING_ROLE_ENV) else {
        return;
    };
    let [url, coordinators, port, name, mode] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("{HEALING_ROLE_ENV} is {spec:?}, not store|coordinators|port|name|mode");
    };
    let coordinators: Vec<String> = coordinators.split(',').map(str::to_owned).collect();
    let port: u16 = port.parse().unwrap();
    let (url, name, spawn) = (url.to_owned(), name.to_owned(), mode == "spawn");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&url, StoreOptions::default())
            .await
            .unwrap();
        let settings = quick_node_settings();
        let deposits = LogHandle::new(&store, "deposits", IngressOptions::default());
        let sources = deposits.clone();
        let node = Node::builder(store.clone())
            .name(name)
            .coordinators(coordinators)
            .settings(settings)
            .host_type(|id: &ObjectId| {
                // "account-<i>" (the factory is also probed once with another id).
                let index = id.as_str().rsplit('-').next().and_then(|i| i.parse().ok());
                let index = index.unwrap_or(0);
                Account::new(index, ACCOUNTS, 0, 7)
            })
            .host_type(move |_: &ObjectId| sources.source::<BankMsg>())
            .build()
            .await
            .unwrap();
        if spawn {
            for i in 0..ACCOUNTS {
                node.spawn(account_id(i), Account::new(i, ACCOUNTS, BALANCE, 7))
                    .unwrap();
            }
            node.spawn(
                ObjectId::new("ingress-deposits").unwrap(),
                deposits.source::<BankMsg>(),
            )
            .unwrap();
        }
        let listener = listen_config(([127, 0, 0, 1], port).into())
            .bind()
            .await
            .unwrap();
        let resolver = node.clone();
        tokio::spawn(std::sync::Arc::new(Ingress::<BankMsg>::on(deposits)).serve(
            listener,
            move |id| resolver.address::<BankMsg>(id),
            cohort::wire::CancellationToken::new(),
        ));
        println!("ready");
        // Runs until its stdin closes (or it is killed).
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count())
            .await
            .unwrap();
        drop(node);
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
        Self::start_role("ingress_bank_role", ROLE_ENV, url)
    }

    fn start_role(role: &str, env: &str, spec: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([role, "--exact", "--nocapture", "--test-threads=1"])
            .env(env, spec)
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
        // The test harness prints `test <role> ... ` before it, on the same line.
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

    /// The source's read position.
    fn ask_next(&mut self) -> u64 {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "next").unwrap();
        stdin.flush().unwrap();
        let line = self.wait_for("the read position", |l| l.starts_with("next "));
        line[5..].parse().unwrap()
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

/// A `cohort serve` on the store (lease 1 s); returns it and the address nodes dial.
fn serve(url: &str, name: &str) -> (Proc, String) {
    serve_on(url, name, "127.0.0.1:0")
}

/// [`serve`] listening on `listen`.
fn serve_on(url: &str, name: &str, listen: &str) -> (Proc, String) {
    let mut cmd = Command::new(cohort_bin());
    cmd.args([
        "serve",
        "--store",
        url,
        "--listen",
        listen,
        "--lease",
        "1s",
        "--heartbeat",
        "100ms",
        "--heartbeat-timeout",
        "800ms",
    ])
    .env("RUST_LOG", "warn");
    let proc = Proc::spawn(name, cmd);
    let line = proc.wait_for_line("nodes connect to", Duration::from_secs(20));
    let addr = address_in(&line, "nodes connect to ");
    (proc, addr)
}

/// `cohort checkpoint --now` against `coordinators`, retried (bounded) while none leads or
/// the attempt aborts (a node restoring after a takeover).
fn checkpoint_now(url: &str, coordinators: &str) -> CheckpointId {
    let id = poll(Duration::from_secs(60), || {
        let out = Command::new(cohort_bin())
            .args(["checkpoint", "--now", "--coordinator", coordinators])
            .env("RUST_LOG", "")
            .env("COHORT_STORE", url)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .flatten()
    });
    CheckpointId::new(id.expect("no checkpoint committed within 60 s"))
}

fn money_at(url: &str, id: CheckpointId) -> i64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = CheckpointStore::open_read_only(url).await.unwrap();
        let manifest = store.read_manifest(id).await.unwrap();
        line_money(&store, &manifest).await.unwrap().total()
    })
}

/// Submits deposits `seqs` through `client`, each to account `seq % ACCOUNTS`, one every
/// 2 ms; the tasks answer in `acks` as they are acknowledged.
fn submit_all(
    rt: &tokio::runtime::Runtime,
    client: &IngressClient<BankMsg>,
    seqs: std::ops::RangeInclusive<u64>,
    acks: &tokio::sync::mpsc::UnboundedSender<u64>,
) {
    let (client, acks) = (client.clone(), acks.clone());
    // Spread over time (one every 2 ms), so that faults hit deposits in flight.
    rt.spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        for seq in seqs {
            pace.tick().await;
            let (client, acks) = (client.clone(), acks.clone());
            tokio::spawn(async move {
                let to = account_id(seq % ACCOUNTS);
                let deposit = BankMsg::Transfer {
                    amount: amount(seq),
                };
                client
                    .submit(seq, &to, &deposit)
                    .await
                    .unwrap_or_else(|e| panic!("deposit {seq}: {e}"));
                let _ = acks.send(seq);
            });
        }
    });
}

/// Waits for `n` acknowledgements (bounded).
fn acked(
    rt: &tokio::runtime::Runtime,
    acks: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
    n: u64,
    what: &str,
) {
    rt.block_on(async {
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(60), acks.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: no acknowledgement within 60 s"))
                .expect("the submitting tasks are gone");
        }
    });
}

#[test]
fn ingress_on_a_node_survives_sigkill_of_the_coordinator_and_of_the_node() {
    let (_dir, url) = store_dir();
    let (leader, a) = serve(&url, "serve-a");
    leader.wait_for_line("leading under epoch 1", Duration::from_secs(20));
    let (_standby, b) = serve(&url, "serve-b");
    let coordinators = format!("{a},{b}");
    // The endpoint's port, fixed so that the restarted node serves where the client dials.
    let port = free_port();
    let spec = format!("{url}|{coordinators}|{port}");
    const ALL_DEPOSITS: u64 = DEPOSITS + DEPOSITS / 2;
    let deposited: i64 = (1..=ALL_DEPOSITS).map(amount).sum();
    let all = ACCOUNTS as i64 * BALANCE + deposited;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Bank::start_role("ingress_node_role", NODE_ROLE_ENV, &spec);
    let client = {
        let _entered = rt.enter();
        let mut options = IngressClientOptions::new("teller", vec![format!("127.0.0.1:{port}")]);
        options.deadline = Duration::from_secs(120);
        IngressClient::<BankMsg>::new(options).unwrap()
    };
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    submit_all(&rt, &client, 1..=DEPOSITS / 2, &acks_tx);
    acked(&rt, &mut acks, DEPOSITS / 2, "the first half");
    checkpoint_now(&url, &coordinators);
    // More deposits, and the leading coordinator SIGKILLed while they flow: the standby takes
    // over and the cohort rolls back to the line, the source with it.
    submit_all(&rt, &client, DEPOSITS / 2 + 1..=DEPOSITS, &acks_tx);
    acked(
        &rt,
        &mut acks,
        DEPOSITS / 4,
        "before the coordinator's SIGKILL",
    );
    leader.signal("KILL");
    acked(&rt, &mut acks, DEPOSITS / 4, "the rest of the second half");
    // The standby's takeover rolls the source back too: lines hold every deposit again once
    // it has sent them all a second time, and none ever holds one twice.
    let so_far = ACCOUNTS as i64 * BALANCE + (1..=DEPOSITS).map(amount).sum::<i64>();
    let after_takeover = line_with_all(&url, &coordinators, so_far);
    let epoch = rt.block_on(async {
        let store = CheckpointStore::open_read_only(&url).await.unwrap();
        store.read_manifest(after_takeover).await.unwrap().epoch
    });
    assert!(
        epoch >= 2,
        "line {after_takeover} was not written by the standby that took over"
    );

    // The node itself, SIGKILLed while the client has deposits in flight, some acknowledged
    // after the last line: it is started again on the same port, the client reconnects and
    // resends whatever has no acknowledgement, and the coordinator restores the node from
    // the newest line (its source replays the log from the line's position).
    submit_all(&rt, &client, DEPOSITS + 1..=ALL_DEPOSITS, &acks_tx);
    acked(&rt, &mut acks, DEPOSITS / 8, "before the node's SIGKILL");
    node.sigkill();
    let mut node = Bank::start_role("ingress_node_role", NODE_ROLE_ENV, &spec);
    acked(
        &rt,
        &mut acks,
        DEPOSITS / 2 - DEPOSITS / 8,
        "after the node's restart",
    );
    let last = line_with_all(&url, &coordinators, all);
    assert!(last > after_takeover);
    assert!(node.ask_next() >= ALL_DEPOSITS);
    let log = rt.block_on(async {
        let store = CheckpointStore::open_read_only(&url).await.unwrap();
        IngressLog::verify(&store, "deposits").await.unwrap()
    });
    assert_eq!(
        log.end, ALL_DEPOSITS,
        "each deposit is stored once, resends included"
    );
}

/// The node serving the ingress (its log's writer, its source and its endpoint) is SIGKILLed
/// for good while deposits are in flight, some acknowledged after the last line. The
/// coordinator declares it dead and moves its accounts and the source to the standby node,
/// whose factories create them; the client fails over to the standby's endpoint and resends
/// what has no acknowledgement; the moved source replays the log from the line's position.
/// Every deposit ends in a line exactly once, and the line places the source on the standby.
#[test]
fn ingress_moves_to_a_surviving_node_when_its_node_dies_for_good() {
    let (_dir, url) = store_dir();
    let (coordinator, addr) = serve(&url, "serve-a");
    coordinator.wait_for_line("leading under epoch 1", Duration::from_secs(20));
    let (port0, port1) = (free_port(), free_port());
    let role = |port: u16, name: &str, mode: &str| {
        let spec = format!("{url}|{addr}|{port}|{name}|{mode}");
        Bank::start_role("ingress_healing_role", HEALING_ROLE_ENV, &spec)
    };
    let node0 = role(port0, "node-0", "spawn");
    let _node1 = role(port1, "node-1", "standby");
    let deposited: i64 = (1..=DEPOSITS).map(amount).sum();
    let all = ACCOUNTS as i64 * BALANCE + deposited;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = {
        let _entered = rt.enter();
        let endpoints = vec![format!("127.0.0.1:{port0}"), format!("127.0.0.1:{port1}")];
        let mut options = IngressClientOptions::new("teller", endpoints);
        options.deadline = Duration::from_secs(120);
        IngressClient::<BankMsg>::new(options).unwrap()
    };
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    submit_all(&rt, &client, 1..=DEPOSITS / 2, &acks_tx);
    acked(&rt, &mut acks, DEPOSITS / 2, "the first half");
    let before = checkpoint_now(&url, &addr);
    submit_all(&rt, &client, DEPOSITS / 2 + 1..=DEPOSITS, &acks_tx);
    acked(&rt, &mut acks, DEPOSITS / 8, "before node-0's SIGKILL");
    node0.sigkill();
    acked(
        &rt,
        &mut acks,
        DEPOSITS / 2 - DEPOSITS / 8,
        "after node-0's SIGKILL, through node-1",
    );
    let last = line_with_all(&url, &addr, all);
    assert!(last > before);
    rt.block_on(async {
        let store = CheckpointStore::open_read_only(&url).await.unwrap();
        let source = ObjectId::new("ingress-deposits").unwrap();
        for (line, node) in [(before, "node-0"), (last, "node-1")] {
            let manifest = store.read_manifest(line).await.unwrap();
            let table = StateTable::decode(&manifest.metadata[STATE_TABLE_KEY]).unwrap();
            assert_eq!(
                table.placement.get(&source).map(String::as_str),
                Some(node),
                "line {line} places the source on {node}"
            );
        }
        let log = IngressLog::verify(&store, "deposits").await.unwrap();
        assert_eq!(
            log.end, DEPOSITS,
            "each deposit is stored once, resends included"
        );
    });
}

/// Every process of a service deployment SIGKILLed at once (the coordinator and the node
/// holding the ingress) while the client has deposits in flight, some acknowledged after the
/// last line: both are started again on the same addresses, the coordinator fences and
/// recovers to the newest line, the node's source replays the log from that line's position,
/// and the client resends what had no acknowledgement. The last line holds every deposit
/// exactly once, and the log each once.
#[test]
fn ingress_on_a_node_survives_sigkill_of_every_process_at_once() {
    let (_dir, url) = store_dir();
    let listen = format!("127.0.0.1:{}", free_port());
    let (coordinator, addr) = serve_on(&url, "serve-a", &listen);
    coordinator.wait_for_line("leading under epoch 1", Duration::from_secs(20));
    let spec = format!("{url}|{addr}|{}", free_port());
    let endpoint = format!("127.0.0.1:{}", spec.rsplit('|').next().unwrap());
    let deposited: i64 = (1..=DEPOSITS).map(amount).sum();
    let all = ACCOUNTS as i64 * BALANCE + deposited;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = Bank::start_role("ingress_node_role", NODE_ROLE_ENV, &spec);
    let client = {
        let _entered = rt.enter();
        let mut options = IngressClientOptions::new("teller", vec![endpoint]);
        options.deadline = Duration::from_secs(120);
        IngressClient::<BankMsg>::new(options).unwrap()
    };
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    submit_all(&rt, &client, 1..=DEPOSITS / 2, &acks_tx);
    acked(&rt, &mut acks, DEPOSITS / 2, "the first half");
    let before = checkpoint_now(&url, &addr);
    submit_all(&rt, &client, DEPOSITS / 2 + 1..=DEPOSITS, &acks_tx);
    acked(&rt, &mut acks, DEPOSITS / 8, "before the SIGKILLs");
    coordinator.signal("KILL");
    node.sigkill();
    drop(coordinator);
    let (coordinator, again) = serve_on(&url, "serve-a2", &listen);
    assert_eq!(again, addr);
    coordinator.wait_for_line("leading under epoch", Duration::from_secs(30));
    let node = Bank::start_role("ingress_node_role", NODE_ROLE_ENV, &spec);
    acked(
        &rt,
        &mut acks,
        DEPOSITS / 2 - DEPOSITS / 8,
        "after every process was restarted",
    );
    let last = line_with_all(&url, &addr, all);
    assert!(last > before);
    let log = rt.block_on(async {
        let store = CheckpointStore::open_read_only(&url).await.unwrap();
        IngressLog::verify(&store, "deposits").await.unwrap()
    });
    assert_eq!(
        log.end, DEPOSITS,
        "each deposit is stored once, resends included"
    );
    drop(node);
}

/// A loopback port free now, for a process to listen on again after a restart.
fn free_port() -> u16 {
    ha_support::free_port("127.0.0.1")
}

/// Takes checkpoints until one holds `all` the money (every deposit), within 60 s; fails if
/// any holds more (a deposit applied twice).
fn line_with_all(url: &str, coordinators: &str, all: i64) -> CheckpointId {
    let found = poll(Duration::from_secs(60), || {
        let id = checkpoint_now(url, coordinators);
        let money = money_at(url, id);
        assert!(
            money <= all,
            "line {id} holds {money}, more than {all}: a deposit twice"
        );
        (money == all).then_some(id)
    });
    found.expect("no line held every deposit within 60 s")
}
