//! Failure detectors, both styles (compare FT-CORBA's fault monitoring):
//!
//! - **push**: the monitored process sends heartbeats; [`PushDetector`] suspects it after
//!   `timeout` of silence. Group members run this on each other (with `activation_interval`),
//!   and so does the [`Monitor`](super::Monitor) (with `lost_interval`).
//! - **pull**: a monitor asks `is_alive` every `interval` and suspects the process when an
//!   answer does not come within `timeout` (FT-CORBA `PullMonitorable`); [`PullDetector`] is the
//!   pure logic and [`PullMonitor`] runs it over the wire against a [`Member`](super::Member).
//!
//! Neither can tell a dead process from a slow network: that is why activations are fenced
//! (see [`fencing`](super::fencing)). The worst-case detection latency is `timeout` plus the
//! heartbeat interval for push (the last heartbeat may have left just before the crash), and
//! `interval + timeout` for pull.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::duration_ms;
use cohort_wire::{BoxStream, Connector, TcpConnector};

use super::protocol::GroupMessage;
use crate::Error;
use cohort_wire::{ConnectConfig, Connection, Role, Secret, TlsConfig};

/// Push-style detection: remembers when each key was last heard, and suspects the ones silent
/// for `timeout`. Pure: time is passed in (ms, any monotonic origin).
#[derive(Clone, Debug)]
pub struct PushDetector<K> {
    timeout_ms: u64,
    last_heard: BTreeMap<K, u64>,
}

impl<K: Ord + Clone> PushDetector<K> {
    /// A detector that suspects after `timeout` of silence.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout_ms: duration_ms(timeout),
            last_heard: BTreeMap::new(),
        }
    }

    /// Records a heartbeat from `key` at `now_ms`; returns whether `key` was not tracked before.
    pub fn heard(&mut self, key: K, now_ms: u64) -> bool {
        self.last_heard.insert(key, now_ms).is_none()
    }

    /// Stops tracking `key` (it said goodbye).
    pub fn forget(&mut self, key: &K) -> bool {
        self.last_heard.remove(key).is_some()
    }

    /// Removes and returns the keys silent for `timeout` or longer at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<K> {
        let timeout = self.timeout_ms;
        let lost: Vec<K> = self
            .last_heard
            .iter()
            .filter(|(_, t)| t.saturating_add(timeout) <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &lost {
            self.last_heard.remove(k);
        }
        lost
    }

    /// The keys tracked, with when each was last heard.
    pub fn tracked(&self) -> &BTreeMap<K, u64> {
        &self.last_heard
    }

    /// When the next key would be suspected, if any is tracked.
    pub fn next_deadline(&self) -> Option<u64> {
        self.last_heard
            .values()
            .map(|t| t.saturating_add(self.timeout_ms))
            .min()
    }
}

/// What a pull detector believes about the polled process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// No poll answered or timed out yet.
    Unknown,
    /// The last poll was answered `true`.
    Alive,
    /// The last poll was answered `false`: the process runs but says it is not healthy.
    NotAlive,
    /// The last poll got no answer within the timeout.
    Unreachable,
}

/// What the pull detector asks its runtime to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullCommand {
    /// Send `is_alive` with this number.
    Poll {
        /// The poll's number, echoed in the answer.
        seq: u64,
    },
    /// The belief changed.
    Changed {
        /// The new belief.
        liveness: Liveness,
        /// For an answer, how long it took (ms); for a timeout, `None`.
        rtt_ms: Option<u64>,
    },
}

/// Pull-style detection as a pure state machine: one poll outstanding at a time, a new one
/// every `interval`, and a poll unanswered after `timeout` makes the process
/// [`Unreachable`](Liveness::Unreachable).
#[derive(Clone, Debug)]
pub struct PullDetector {
    interval_ms: u64,
    timeout_ms: u64,
    next_seq: u64,
    outstanding: Option<(u64, u64)>,
    next_poll_ms: u64,
    liveness: Liveness,
}

impl PullDetector {
    /// A detector that polls every `interval` and waits `timeout` for each answer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when either is zero.
    pub fn new(interval: Duration, timeout: Duration) -> Result<Self, Error> {
        let (interval_ms, timeout_ms) = (duration_ms(interval), duration_ms(timeout));
        if interval_ms == 0 || timeout_ms == 0 {
            return Err(Error::InvalidConfig {
                scope: "group",
                reason: format!(
                    "pull interval ({interval:?}) and timeout ({timeout:?}) must be at least 1 ms"
                ),
            });
        }
        Ok(Self {
            interval_ms,
            timeout_ms,
            next_seq: 1,
            outstanding: None,
            next_poll_ms: 0,
            liveness: Liveness::Unknown,
        })
    }

    /// The current belief.
    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    fn change(&mut self, liveness: Liveness, rtt_ms: Option<u64>, out: &mut Vec<PullCommand>) {
        if self.liveness != liveness {
            self.liveness = liveness;
            out.push(PullCommand::Changed { liveness, rtt_ms });
        }
    }

    /// Times out the outstanding poll and starts the next one when due.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PullCommand> {
        let mut out = Vec::new();
        if let Some((_, sent)) = self.outstanding
            && sent.saturating_add(self.timeout_ms) <= now_ms
        {
            self.outstanding = None;
            self.change(Liveness::Unreachable, None, &mut out);
        }
        if self.outstanding.is_none() && self.next_poll_ms <= now_ms {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.outstanding = Some((seq, now_ms));
            self.next_poll_ms = now_ms.saturating_add(self.interval_ms);
            out.push(PullCommand::Poll { seq });
        }
        out
    }

    /// An answer arrived; stale answers (of timed-out polls) are ignored.
    pub fn answer(&mut self, seq: u64, alive: bool, now_ms: u64) -> Vec<PullCommand> {
        let mut out = Vec::new();
        if let Some((outstanding, sent)) = self.outstanding
            && outstanding == seq
        {
            self.outstanding = None;
            let liveness = if alive {
                Liveness::Alive
            } else {
                Liveness::NotAlive
            };
            let rtt = now_ms.saturating_sub(sent);
            self.change(liveness, Some(rtt), &mut out);
        }
        out
    }

    /// When [`tick`](Self::tick) must run next.
    pub fn next_deadline(&self) -> u64 {
        match self.outstanding {
            Some((_, sent)) => sent.saturating_add(self.timeout_ms),
            None => self.next_poll_ms,
        }
    }
}

/// How to run a [`PullMonitor`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PullOptions {
    /// The member's group listener.
    pub addr: String,
    /// Poll this often.
    pub interval: Duration,
    /// Wait this long for each answer.
    pub timeout: Duration,
    /// This monitor's wire name.
    pub name: String,
    /// The shared token of the wire handshake.
    pub token: Option<Secret>,
    /// TLS towards the member polled (mutual).
    pub tls: Option<TlsConfig>,
    /// How connections are opened; TCP by default.
    pub connector: Arc<dyn Connector>,
}

impl PullOptions {
    /// Polls `addr` every `interval`, waiting `timeout` for each answer, over TCP.
    pub fn new(addr: impl Into<String>, interval: Duration, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            interval,
            timeout,
            name: "pull-monitor".to_owned(),
            token: None,
            tls: None,
            connector: Arc::new(TcpConnector),
        }
    }
}

/// What a [`PullMonitor`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullStatus {
    /// The current belief.
    pub liveness: Liveness,
    /// When it last changed.
    pub since: Instant,
    /// The round trip of the last answered poll.
    pub last_rtt: Option<Duration>,
}

/// Polls one member's `is_alive` over the wire, as a FT-CORBA fault monitor polls a
/// `PullMonitorable` object. Stops when dropped.
#[derive(Debug)]
pub struct PullMonitor {
    status: watch::Receiver<PullStatus>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for PullMonitor {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

impl PullMonitor {
    /// Starts polling.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero interval or timeout, or a bad name.
    pub fn start(options: PullOptions) -> Result<Self, Error> {
        let detector = PullDetector::new(options.interval, options.timeout)?;
        let connect = ConnectConfig {
            token: options.token.clone(),
            tls: options.tls.clone(),
            handshake_timeout: options.timeout,
            accept_roles: vec![Role::Peer],
            ..ConnectConfig::new(Role::Peer, options.name.clone())
        };
        if options.name.is_empty()
            || options.name.len() > 128
            || options.name.chars().any(char::is_control)
        {
            return Err(Error::InvalidConfig {
                scope: "group",
                reason: format!(
                    "pull monitor name {:?}: use 1-128 printable characters",
                    options.name.escape_debug().to_string()
                ),
            });
        }
        let (tx, status) = watch::channel(PullStatus {
            liveness: Liveness::Unknown,
            since: Instant::now(),
            last_rtt: None,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(poll_loop(options, connect, detector, tx, stop.clone()));
        Ok(Self { status, stop, task })
    }

    /// A receiver of the status, updated on every change of belief.
    pub fn status(&self) -> watch::Receiver<PullStatus> {
        self.status.clone()
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Unknown => "unknown",
            Liveness::Alive => "alive",
            Liveness::NotAlive => "not alive",
            Liveness::Unreachable => "unreachable",
        })
    }
}

async fn open(
    options: &PullOptions,
    connect: &ConnectConfig,
) -> Result<Connection<GroupMessage, GroupMessage, BoxStream>, Error> {
    let stream = tokio::time::timeout(options.timeout, options.connector.connect(&options.addr))
        .await
        .map_err(|_elapsed| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
        .and_then(|r| r)
        .map_err(|source| cohort_wire::Error::Connect {
            addr: options.addr.clone(),
            source,
        })?;
    Ok(connect.handshake(stream, options.addr.clone()).await?)
}

async fn poll_loop(
    options: PullOptions,
    connect: ConnectConfig,
    mut detector: PullDetector,
    status: watch::Sender<PullStatus>,
    stop: CancellationToken,
) {
    let origin = Instant::now();
    let now_ms = || duration_ms(origin.elapsed());
    let mut conn: Option<Connection<GroupMessage, GroupMessage, BoxStream>> = None;
    let apply = |commands: Vec<PullCommand>, polls: &mut Vec<u64>| {
        for command in commands {
            match command {
                PullCommand::Poll { seq } => polls.push(seq),
                PullCommand::Changed { liveness, rtt_ms } => {
                    tracing::debug!(addr = %options.addr, %liveness, "is_alive changed");
                    status.send_modify(|s| {
                        s.liveness = liveness;
                        s.since = Instant::now();
                        if let Some(rtt) = rtt_ms {
                            s.last_rtt = Some(Duration::from_millis(rtt));
                        }
                    });
                }
            }
        }
    };
    loop {
        let mut polls = Vec::new();
        apply(detector.tick(now_ms()), &mut polls);
        for seq in polls {
            if conn.is_none() {
                // Connecting counts against the poll's timeout: an unreachable member is
                // reported after `timeout`, like a silent one.
                let opened = tokio::select! {
                    () = stop.cancelled() => return,
                    opened = open(&options, &connect) => opened,
                };
                match opened {
                    Ok(c) => conn = Some(c),
                    Err(err) => tracing::debug!(addr = %options.addr, "cannot poll: {err}"),
                }
            }
            if let Some(c) = conn.as_mut()
                && c.send(&GroupMessage::IsAlive { seq }).await.is_err()
            {
                conn = None;
            }
        }
        let deadline = origin + Duration::from_millis(detector.next_deadline());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
            received = async {
                match conn.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => match received {
                Ok(Some(GroupMessage::Alive { seq, alive })) => {
                    let mut none = Vec::new();
                    apply(detector.answer(seq, alive, now_ms()), &mut none);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => conn = None,
            },
        }
    }
}
