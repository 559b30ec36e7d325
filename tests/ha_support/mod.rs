//! Helpers of the high-availability tests: real `cohort serve` processes on loopback, node
//! processes (the test binary re-executed), signals, and bounded polling with deadlines (never
//! a sleep as synchronisation).

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cohort::checkpoint::CheckpointStore;
use cohort::coordinator::node::{Node, NodeSettings};
use cohort::coordinator::{Actor, Context};
use cohort::{Checkpointable, ObjectError, ObjectId};

/// Node settings quick to notice a lost peer and to follow a new leader: heartbeats every
/// 100 ms, a coordinator silent for 800 ms is lost, reconnects back off at most 100 ms. The
/// `cohort serve` processes of these tests use the same heartbeats.
pub(crate) fn quick_node_settings() -> NodeSettings {
    let mut settings = NodeSettings::default();
    settings.heartbeat_interval = Duration::from_millis(100);
    settings.heartbeat_timeout = Duration::from_millis(800);
    settings.max_backoff = Duration::from_millis(100);
    settings
}

/// A child process that is SIGKILLed when dropped, whose stderr is collected line by line.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns `command` with stderr captured (and echoed to ours with a prefix when
    /// `COHORT_TEST_ECHO` is set).
    pub(crate) fn spawn(name: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os("COHORT_TEST_ECHO").is_some();
        let collect =
            |stream: Box<dyn Read + Send>, lines: Arc<Mutex<Vec<String>>>, tag: String| {
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        if echo {
                            eprintln!("[{tag}] {line}");
                        }
                        lines.lock().unwrap().push(line);
                    }
                });
            };
        if let Some(err) = child.stderr.take() {
            collect(Box::new(err), lines.clone(), name.to_owned());
        }
        if let Some(out) = child.stdout.take() {
            collect(Box::new(out), lines.clone(), name.to_owned());
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far (stdout and stderr, interleaved as read).
    pub(crate) fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first printed line containing `needle`, waiting up to `within`.
    pub(crate) fn wait_for_line(&self, needle: &str, within: Duration) -> String {
        let found = poll(within, || {
            self.output().into_iter().find(|l| l.contains(needle))
        });
        found.unwrap_or_else(|| {
            panic!(
                "{} printed no line with {needle:?} within {within:?}; it printed:\n{}",
                self.name,
                self.output().join("\n")
            )
        })
    }

    /// Sends `signal` (KILL, STOP, CONT, TERM, INT) with the `kill` command.
    pub(crate) fn signal(&self, signal: &str) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for the process to exit, up to `within`.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let status = poll(within, || self.child.try_wait().ok().flatten());
        status.unwrap_or_else(|| {
            panic!(
                "{} did not exit within {within:?}; it printed:\n{}",
                self.name,
                self.output().join("\n")
            )
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be resumed to die promptly on some kernels' accounting.
        let _ = self.child.kill();
        signal_pid(self.pid(), "CONT");
        let _ = self.child.wait();
    }
}

/// Sends `signal` to `pid` with the `kill` command (no unsafe code).
pub(crate) fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Calls `f` every 10 ms until it returns `Some`, for at most `within`.
pub(crate) fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `cohort` binary under test.
pub(crate) fn cohort_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cohort"))
}

/// The address printed by a line like `... listening on 127.0.0.1:40123 ...`.
pub(crate) fn address_in(line: &str, after: &str) -> String {
    let rest = &line[line
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} not in {line:?}"))
        + after.len()..];
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches([',', ';', ')'])
        .to_owned()
}

/// A port on `ip` free now, for a process this test starts to listen on (or one that restarts
/// to listen on again). Chosen below Linux's ephemeral range (32768 up), from which the kernel
/// hands out the ports of every `:0` bind and outbound connection of the tests running
/// alongside: a port freed there and bound again later could be taken in between (a
/// coordinator once failed to start with "Address already in use" that way).
pub(crate) fn free_port(ip: &str) -> u16 {
    use std::hash::BuildHasher as _;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let random = std::hash::RandomState::new();
    for _ in 0..1000 {
        let pick = random.hash_one(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = 20_000 + (pick % 12_000) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} between 20000 and 32000");
}

/// A fresh store directory.
pub(crate) fn store_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("store").display().to_string();
    std::fs::create_dir_all(Path::new(&url)).unwrap();
    (dir, url)
}

/// A node's object: counts what it is told.
#[derive(Checkpointable, Default)]
struct Counter {
    value: u64,
}

#[async_trait]
impl Actor for Counter {
    type Message = u64;

    async fn handle(&mut self, message: u64, _ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        self.value += message;
        Ok(())
    }
}

/// The body of a node process, run by a test named `node_role` in the test binary when the
/// variable `env` is set to `name|store|coordinator,coordinator` (see [`spawn_node`]). It
/// hosts four counters, feeds them, and runs until killed (or for two minutes at most).
pub(crate) fn node_role(env: &str) {
    let Ok(spec) = std::env::var(env) else {
        return;
    };
    let mut parts = spec.split('|');
    let (name, url, coordinators) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts
            .next()
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = CheckpointStore::open(&url, Default::default())
            .await
            .unwrap();
        let settings = quick_node_settings();
        let node = Node::builder(store)
            .name(name.clone())
            .coordinators(coordinators)
            .settings(settings)
            .build()
            .await
            .unwrap();
        let counters: Vec<_> = (0..4)
            .map(|i| {
                let id = ObjectId::new(format!("{name}-counter-{i}")).unwrap();
                node.spawn(id, Counter::default()).unwrap()
            })
            .collect();
        println!("node {name} started");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while tokio::time::Instant::now() < deadline {
            tick.tick().await;
            for c in &counters {
                // Held objects queue their inputs; a full stop is what the test is after.
                let _ = c.tell(1);
            }
        }
    });
}

/// Starts a node process: this test binary re-executed to run its `node_role` test with `env`
/// set (see [`node_role`]).
pub(crate) fn spawn_node(env: &str, name: &str, store: &str, coordinators: &[&str]) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["node_role", "--exact", "--nocapture", "--test-threads=1"])
        .env(env, format!("{name}|{store}|{}", coordinators.join(",")))
        .env("RUST_LOG", "warn");
    Proc::spawn(name, cmd)
}
