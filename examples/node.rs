//! Your own node: a participant process hosting an application's own actor type, run under
//! `cohort serve` coordinators. This is the shape of a real deployment: the coordinators are the
//! stock `cohort serve`, and every node is a binary of yours that links cohort and spawns your
//! objects. README.md ("Run it across hosts") runs three of these on three hosts.
//!
//! The application is a small payment network: every node hosts `--wallets` wallets
//! (`<node>-wallet-<i>`), each told every `--pay-every` to make a payment to a random wallet,
//! on this node or on one of `--peers`. Coins only move, so the coins held by the wallets plus
//! the coins recorded in transit are the same in every committed checkpoint: `cohort export ID`
//! shows both.
//!
//! ```text
//! mkdir -p ./cohort-data/wallets
//! cohort serve --store ./cohort-data/wallets --interval 1s &
//! cargo run --example node -- --name node-1 --store ./cohort-data/wallets --peers node-2 &
//! cargo run --example node -- --name node-2 --store ./cohort-data/wallets --peers node-1 &
//! cohort status --store ./cohort-data/wallets
//! ```
//!
//! The node prints one line per change of its link to the coordinators (registered with which
//! one, reconnecting, refused) and stops on SIGINT or SIGTERM, exiting 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Parser;
use cohort::checkpoint::{CheckpointStore, StoreOptions};
use cohort::coordinator::node::{Node, NodeSettings, NodeStatus};
use cohort::coordinator::{Actor, Context};
use cohort::wire::{Secret, TOKEN_ENV, TlsConfig};
use cohort::{Checkpointable, ObjectError, ObjectId};
use serde::{Deserialize, Serialize};

/// A node of the wallets example: hosts wallets that pay wallets on this node and its peers,
/// checkpointed by `cohort serve` coordinators.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This node's name, unique in the cohort: 1-48 of [A-Za-z0-9_-].
    #[arg(long)]
    name: String,

    /// The checkpoint store, the same as the coordinators': a path, file:///abs/path or
    /// s3://bucket/prefix (configured by the AWS_* variables).
    #[arg(long, env = "COHORT_STORE", hide_env_values = true, value_name = "URL")]
    store: String,

    /// The coordinators, in order (repeat it, or separate with commas): a standby points at
    /// the leader.
    #[arg(
        long = "coordinator",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        default_value = "127.0.0.1:7411"
    )]
    coordinators: Vec<String>,

    /// Where other nodes' messages arrive.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// The address other nodes dial to reach this one (HOST:PORT); required with --listen on
    /// every interface (0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,

    /// The shared token of the coordinators, if they use one.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,

    /// This node's certificate (PEM): with --tls-key and --tls-ca, mutual TLS with the
    /// coordinators and the other nodes. It must name the --advertise host.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,

    /// This node's private key (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,

    /// The authority that signs every certificate of the cohort (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,

    /// The other nodes whose wallets this node's wallets pay (their --name); every node hosts
    /// the same number of wallets.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    peers: Vec<String>,

    /// How many wallets this node hosts.
    #[arg(long, default_value_t = 4)]
    wallets: u32,

    /// Every wallet's opening balance.
    #[arg(long, default_value_t = 1_000)]
    coins: i64,

    /// How often each wallet is told to make a payment.
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = humantime::parse_duration)]
    pay_every: Duration,

    /// The node and the coordinator exchange heartbeats this often (the coordinator's
    /// --heartbeat overrides it once connected).
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,

    /// Reconnect, to the next coordinator, after this long without a word from the current one.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
}

/// Every wallet id of the cohort, in order: whom a wallet may pay. Configuration, the same after
/// a restart, so it is not part of any checkpoint.
static EVERYONE: OnceLock<Vec<ObjectId>> = OnceLock::new();

/// The application's own checkpointed type: what a wallet holds.
#[derive(Clone, Debug, Default, Checkpointable)]
#[checkpoint(type_name = "example.Wallet")]
struct Wallet {
    /// Coins held.
    coins: i64,
    /// Payments made and received.
    paid: u64,
    received: u64,
    /// The wallet's own random stream (xorshift), checkpointed so that a restored wallet makes
    /// the same choices again.
    rng: u64,
    /// Bumped on every change, so that a wallet that did nothing is not written again.
    #[checkpoint(generation)]
    generation: u64,
}

/// What wallets are told.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum WalletMsg {
    /// An input from outside the cohort: pay a random wallet.
    Pay,
    /// Coins from another wallet.
    Coins(i64),
}

impl Wallet {
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[async_trait]
impl Actor for Wallet {
    type Message = WalletMsg;

    // Only messages change a wallet: an idle one is counted in a checkpoint without waking it.
    const MESSAGE_DRIVEN: bool = true;

    async fn handle(
        &mut self,
        message: WalletMsg,
        ctx: &mut Context<'_>,
    ) -> Result<(), ObjectError> {
        match message {
            WalletMsg::Coins(amount) => {
                self.coins += amount;
                self.received += 1;
                self.generation += 1;
            }
            WalletMsg::Pay => {
                let everyone = EVERYONE.get().map_or(&[][..], Vec::as_slice);
                if self.coins <= 0 || everyone.len() < 2 {
                    return Ok(());
                }
                let pick = self.next();
                let mut to = &everyone[(pick % everyone.len() as u64) as usize];
                if to == ctx.id() {
                    to = &everyone[((pick + 1) % everyone.len() as u64) as usize];
                }
                let amount = 1 + (self.next() % (self.coins.unsigned_abs() / 8 + 1)) as i64;
                let amount = amount.min(self.coins);
                let address = match ctx.address::<WalletMsg>(to) {
                    Ok(address) => address,
                    // The payee's node has not registered yet: no payment this time. (An
                    // error here would fail the wallet until the next recovery.)
                    Err(cohort::coordinator::Error::UnknownObject(_)) => return Ok(()),
                    Err(e) => return Err(ObjectError::application(e)),
                };
                self.coins -= amount;
                self.paid += 1;
                self.generation += 1;
                ctx.send(&address, WalletMsg::Coins(amount))
                    .map_err(ObjectError::application)?;
            }
        }
        Ok(())
    }
}

fn wallet_id(node: &str, index: u32) -> anyhow::Result<ObjectId> {
    ObjectId::new(format!("{node}-wallet-{index}"))
        .with_context(|| format!("node name {node:?} does not make a valid object id"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let store = CheckpointStore::open(&args.store, StoreOptions::default())
        .await
        .with_context(|| format!("cannot open the store {}", args.store))?;
    let mut settings = NodeSettings::default();
    settings.heartbeat_interval = args.heartbeat;
    settings.heartbeat_timeout = args.heartbeat_timeout;
    settings.max_backoff = Duration::from_millis(500);
    let mut builder = Node::builder(store)
        .name(args.name.clone())
        .coordinators(args.coordinators.clone())
        .listen(args.listen)
        .settings(settings);
    if let Some(advertise) = &args.advertise {
        builder = builder.advertise(advertise.clone());
    }
    if let Some(token) = &args.token {
        builder = builder
            .token(Secret::new(token.as_bytes().to_vec()).context("the token is not usable")?);
    }
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        builder = builder.tls(TlsConfig::from_pem_files(cert, key, ca)?);
    }
    let node = builder.build().await.context("cannot start the node")?;

    let mut names = vec![args.name.clone()];
    names.extend(args.peers.iter().cloned());
    names.sort();
    names.dedup();
    let mut everyone = Vec::new();
    for name in &names {
        for i in 0..args.wallets {
            everyone.push(wallet_id(name, i)?);
        }
    }
    let _ = EVERYONE.set(everyone);
    let mut mine = Vec::new();
    for i in 0..args.wallets {
        let id = wallet_id(&args.name, i)?;
        // Seeded by id, so that every wallet has its own stream.
        let seed = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
        }) | 1;
        let wallet = Wallet {
            coins: args.coins,
            rng: seed,
            ..Wallet::default()
        };
        mine.push(node.spawn(id, wallet)?);
    }
    println!(
        "node {}: {} wallets; other nodes reach it at {}; coordinators {}",
        args.name,
        mine.len(),
        node.peer_addr(),
        args.coordinators.join(", ")
    );

    let mut status = node.status();
    let mut pay = tokio::time::interval(args.pay_every);
    pay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    report(&status.borrow_and_update());
    loop {
        tokio::select! {
            signal = &mut stop => {
                signal?;
                println!("node {}: stopping", args.name);
                break;
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = status.borrow_and_update().clone();
                report(&now);
                if let NodeStatus::Refused(reason) = now {
                    node.shutdown();
                    anyhow::bail!("the coordinator refused this node: {reason}");
                }
            }
            _ = pay.tick() => {
                for wallet in &mine {
                    // A held (restoring) wallet queues its inputs; a recovery drops them.
                    let _ = wallet.tell(WalletMsg::Pay);
                }
            }
        }
    }
    node.shutdown();
    Ok(())
}

/// One line per change of the node's link to its coordinators.
fn report(status: &NodeStatus) {
    match status {
        NodeStatus::Connecting => println!("connecting to a coordinator"),
        NodeStatus::Registered {
            coordinator,
            session,
            recoveries,
            ..
        } => println!(
            "registered with {coordinator} (session {session}, {recoveries} recoveries so far)"
        ),
        NodeStatus::Refused(reason) => println!("refused: {reason}"),
        other => println!("{other:?}"),
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT"),
        _ = term.recv() => Ok(()),
    }
}
