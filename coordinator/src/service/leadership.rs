//! Leadership: of several coordinators serving one store, exactly one leads, using only the
//! store's create-if-absent (no compare-and-swap, no clock shared between hosts).
//!
//! - **Epochs.** A coordinator leads under epoch `E` once it created `epochs/E` create-only
//!   ([`CheckpointStore::try_claim_epoch`]). Of several standbys that saw `E - 1` as the newest,
//!   exactly one creates `E`.
//! - **Fencing.** Right after the claim the new leader commits a fence manifest at the next
//!   checkpoint id ([`CheckpointStore::fence`]). The deposed leader knows at most the manifest
//!   before it, so its next commit lands on an id the fence took and fails with `Fenced`: it
//!   steps down. Safety rests on this alone.
//! - **The lease** is for liveness. The leader overwrites `epochs/E.lease` with a counter every
//!   `lease / 3` ([`CheckpointStore::renew_epoch`]). A standby reads the newest epoch and its
//!   counter every `lease / 4` and notes, on its *own* monotonic clock, when it last saw either
//!   change; after a full lease without change it claims `E + 1`. A leader that has not
//!   renewed for 95 % of a lease, measured from the *start* of its last successful renewal
//!   (which no standby can have seen earlier), steps down by itself: strictly before a standby
//!   claims, unless it was paused or its clock ran slow. A renewal also re-reads the newest
//!   epoch, so a leader that was paused and resumed finds out at once.
//!
//! [`Machine`] is the pure state machine (events in, commands out, time passed in as
//! milliseconds of a monotonic clock); [`Leadership`] runs it against a [`CheckpointStore`] on
//! tokio and publishes a [`View`] that the service follows: start leading, stop leading, and
//! which address to send nodes to while following.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cohort_checkpoint::{
    CheckpointStore, EpochLease, EpochRecord, Fence, FenceLine, FenceRequest, Manifest,
};
use cohort_object_api::CheckpointId;
use cohort_object_api::Clock;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::error::{Error, Result};

/// The shortest lease accepted. Below a second, store latency (an S3 round trip, an fsync) eats
/// most of it; the floor only keeps the arithmetic meaningful.
pub const MIN_LEASE: Duration = Duration::from_millis(100);

/// The lease used when none is configured.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How leadership is timed. Build with [`LeaseTiming::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseTiming {
    /// How long without a renewal before a standby takes over, and before a leader that cannot
    /// renew steps down.
    pub lease: Duration,
    /// How often the leader renews: `lease / 3`, so that two renewals can fail in a row.
    pub renew_every: Duration,
    /// How often a standby reads the newest epoch and its lease: `lease / 4`.
    pub poll_every: Duration,
}

impl LeaseTiming {
    /// The timing for `lease`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a lease shorter than [`MIN_LEASE`].
    pub fn new(lease: Duration) -> Result<Self> {
        if lease < MIN_LEASE {
            return Err(Error::invalid_settings(format!(
                "the lease is {lease:?}; use at least {MIN_LEASE:?} (1 s or more unless the store answers in a few milliseconds)"
            )));
        }
        Ok(Self {
            lease,
            renew_every: lease / 3,
            poll_every: lease / 4,
        })
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
            renew_every: DEFAULT_LEASE / 3,
            poll_every: DEFAULT_LEASE / 4,
        }
    }
}

/// What a standby read: the newest epoch's record and its lease counter (`None` before the
/// holder's first renewal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The newest epoch record.
    pub record: EpochRecord,
    /// Its lease counter, if it was ever renewed.
    pub renewal: Option<u64>,
}

/// An input to the [`Machine`]. Results carry the epoch they are about, so that a late result
/// of an earlier term is recognised and ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed (a deadline from [`Machine::next_deadline`] came).
    Tick,
    /// [`Command::Observe`] read the store; `None` when no epoch was ever claimed.
    Observed(Option<Observed>),
    /// [`Command::Observe`] failed.
    ObserveFailed {
        /// Why.
        reason: String,
    },
    /// [`Command::Claim`] created the record (`won`), or found the epoch taken.
    Claimed {
        /// The epoch claimed.
        epoch: u64,
        /// Whether this coordinator created it.
        won: bool,
    },
    /// [`Command::Claim`] failed; the record may or may not have been created.
    ClaimFailed {
        /// The epoch claimed.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// [`Command::Fence`] committed the fence, or found no committed line to fence.
    Fenced {
        /// The epoch fenced under.
        epoch: u64,
        /// The fence's checkpoint id, if one was written.
        fence: Option<CheckpointId>,
    },
    /// [`Command::Fence`] failed.
    FenceFailed {
        /// The epoch fenced under.
        epoch: u64,
        /// Why.
        reason: String,
        /// A newer epoch owns the store: this leader is deposed.
        deposed: bool,
    },
    /// [`Command::Renew`] wrote the lease, and then read the newest epoch.
    Renewed {
        /// The epoch renewed.
        epoch: u64,
        /// The newest epoch in the store right after.
        newest: u64,
    },
    /// [`Command::Renew`] failed.
    RenewFailed {
        /// The epoch renewed.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// The service found this leader deposed (its commit was fenced).
    Deposed {
        /// The deposed epoch.
        epoch: u64,
        /// What showed it.
        reason: String,
    },
    /// Stop for good (shutdown).
    Stop,
}

/// An output of the [`Machine`], for the driver to carry out. Every store command must report
/// back with its event, failure included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read the newest epoch record and its lease; report [`Event::Observed`] or
    /// [`Event::ObserveFailed`].
    Observe,
    /// Create the record of exactly `epoch` create-only; report [`Event::Claimed`] or
    /// [`Event::ClaimFailed`].
    Claim {
        /// The epoch to claim.
        epoch: u64,
    },
    /// Commit a fence manifest under `epoch`; report [`Event::Fenced`] or
    /// [`Event::FenceFailed`].
    Fence {
        /// The epoch to fence under.
        epoch: u64,
    },
    /// Overwrite the lease of `epoch` with counter `renewal`, then read the newest epoch;
    /// report [`Event::Renewed`] or [`Event::RenewFailed`].
    Renew {
        /// The epoch renewed.
        epoch: u64,
        /// The new counter.
        renewal: u64,
    },
    /// Start leading under `epoch`: the fence is written.
    Lead {
        /// The epoch.
        epoch: u64,
    },
    /// Stop leading under `epoch`: abort the checkpoint in flight, commit nothing more.
    StepDown {
        /// The epoch given up.
        epoch: u64,
        /// Why.
        reason: String,
    },
}

/// Where a coordinator stands, for the service and for `cohort status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Watching the leader's lease; `leader` is the newest epoch record seen.
    Following {
        /// The newest epoch record seen, if any.
        leader: Option<EpochRecord>,
    },
    /// Creating the record of `epoch`.
    Claiming {
        /// The epoch being claimed.
        epoch: u64,
    },
    /// Holding `epoch`; `serving` once the fence is written.
    Leading {
        /// The epoch held.
        epoch: u64,
        /// Whether the fence is written, so that checkpoints may be committed.
        serving: bool,
    },
    /// Stopped.
    Stopped,
}

#[derive(Clone, Debug)]
enum State {
    Following(Following),
    Claiming { epoch: u64, started: u64 },
    Leading(Leading),
    Stopped,
}

#[derive(Clone, Debug)]
struct Following {
    /// The newest `(epoch, renewal)` seen, and when it was first seen.
    seen: Option<((u64, Option<u64>), u64)>,
    observing: bool,
    next_observe: u64,
    /// An epoch whose claim failed in doubt: if the next read shows our record, it is ours.
    unsure: Option<u64>,
}

#[derive(Clone, Debug)]
struct Leading {
    epoch: u64,
    serving: bool,
    fencing: bool,
    next_fence: u64,
    renewal: u64,
    /// The start of the renewal in flight.
    renewing: Option<u64>,
    next_renew: u64,
    /// Step down at this time unless a renewal started before it succeeds.
    alive_until: u64,
}

/// The leadership state machine. Pure: no IO, no clock; `now` is milliseconds of a monotonic
/// clock, passed in with every call.
#[derive(Clone, Debug)]
pub struct Machine {
    lease: u64,
    /// How long a leader holds after the start of its last successful renewal: the lease less
    /// 5 %, a margin for two monotonic clocks running at slightly different rates, so that a
    /// leader steps down strictly before a standby that saw the same renewal claims.
    hold: u64,
    renew_every: u64,
    poll_every: u64,
    /// The record this coordinator writes when it claims, but for the epoch number and time.
    me: EpochRecord,
    /// The record of the claim in flight or in doubt.
    claiming: Option<EpochRecord>,
    leader: Option<EpochRecord>,
    state: State,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Machine {
    /// A machine that starts following at `now`. `holder` and `address` go into the epoch
    /// records it claims; the holder should be unique to this process, so that a claim whose
    /// answer was lost can recognise its own record.
    pub fn new(timing: LeaseTiming, holder: String, address: Option<String>, now: u64) -> Self {
        let lease = ms(timing.lease);
        Self {
            lease,
            hold: lease - lease / 20,
            renew_every: ms(timing.renew_every).max(1),
            poll_every: ms(timing.poll_every).max(1),
            me: EpochRecord {
                epoch: 0,
                holder,
                created_at_ms: 0,
                address,
            },
            claiming: None,
            leader: None,
            state: State::Following(Following {
                seen: None,
                observing: false,
                next_observe: now,
                unsure: None,
            }),
        }
    }

    /// Where this coordinator stands.
    pub fn role(&self) -> Role {
        match &self.state {
            State::Following(_) => Role::Following {
                leader: self.leader.clone(),
            },
            State::Claiming { epoch, .. } => Role::Claiming { epoch: *epoch },
            State::Leading(l) => Role::Leading {
                epoch: l.epoch,
                serving: l.serving,
            },
            State::Stopped => Role::Stopped,
        }
    }

    /// The record of the claim in flight: the driver writes exactly this. Its wall-clock time
    /// is set by [`set_claim_time`](Self::set_claim_time).
    pub fn claim_record(&self) -> Option<&EpochRecord> {
        self.claiming.as_ref()
    }

    /// Stamps the claim in flight with the wall clock (Unix ms), before the driver writes it.
    pub fn set_claim_time(&mut self, created_at_ms: u64) {
        if let Some(r) = &mut self.claiming {
            r.created_at_ms = created_at_ms;
        }
    }

    /// When the machine next needs a [`Event::Tick`], if ever (it may also be waiting for the
    /// result of a command).
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.state {
            State::Following(f) => (!f.observing).then_some(f.next_observe),
            State::Claiming { .. } | State::Stopped => None,
            State::Leading(l) => {
                let mut at = l.alive_until;
                if l.renewing.is_none() {
                    at = at.min(l.next_renew);
                }
                if !l.serving && !l.fencing {
                    at = at.min(l.next_fence);
                }
                Some(at)
            }
        }
    }

    /// Feeds one event at time `now`; returns the commands to carry out, in order.
    pub fn handle(&mut self, now: u64, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        self.on_event(now, event, &mut out);
        self.on_time(now, &mut out);
        out
    }

    fn on_event(&mut self, now: u64, event: Event, out: &mut Vec<Command>) {
        match event {
            Event::Tick => {}
            Event::Stop => {
                if let State::Leading(l) = &self.state
                    && l.serving
                {
                    out.push(Command::StepDown {
                        epoch: l.epoch,
                        reason: "shutting down".into(),
                    });
                }
                self.state = State::Stopped;
            }
            Event::Observed(observed) => self.on_observed(now, observed, out),
            Event::ObserveFailed { reason } => {
                if let State::Following(f) = &mut self.state {
                    tracing::warn!(%reason, "cannot read the newest epoch and its lease");
                    f.observing = false;
                    f.next_observe = now + self.poll_every;
                }
            }
            Event::Claimed { epoch, won } => {
                let State::Claiming { epoch: e, started } = self.state else {
                    return;
                };
                if e != epoch {
                    return;
                }
                if won {
                    self.start_leading(epoch, started, out);
                } else {
                    tracing::info!(
                        epoch,
                        "another coordinator claimed the epoch first; following it"
                    );
                    self.claiming = None;
                    self.follow(now, None);
                }
            }
            Event::ClaimFailed { epoch, reason } => {
                let State::Claiming { epoch: e, .. } = self.state else {
                    return;
                };
                if e != epoch {
                    return;
                }
                tracing::warn!(epoch, %reason, "claiming the epoch failed; it may have landed, reading it back");
                self.follow(now, Some(epoch));
            }
            Event::Fenced { epoch, fence } => {
                if let State::Leading(l) = &mut self.state
                    && l.epoch == epoch
                    && !l.serving
                {
                    tracing::info!(epoch, fence = ?fence, "fenced the previous epoch; leading");
                    l.fencing = false;
                    l.serving = true;
                    out.push(Command::Lead { epoch });
                }
            }
            Event::FenceFailed {
                epoch,
                reason,
                deposed,
            } => {
                let State::Leading(l) = &mut self.state else {
                    return;
                };
                if l.epoch != epoch {
                    return;
                }
                l.fencing = false;
                if deposed {
                    self.step_down(
                        now,
                        format!("a newer epoch fenced this one first: {reason}"),
                        out,
                    );
                } else {
                    tracing::warn!(epoch, %reason, "writing the fence failed; retrying");
                    l.next_fence = now + self.poll_every;
                }
            }
            Event::Renewed { epoch, newest } => {
                let State::Leading(l) = &mut self.state else {
                    return;
                };
                if l.epoch != epoch {
                    return;
                }
                let started = l.renewing.take().unwrap_or(now);
                if newest > epoch {
                    self.step_down(now, format!("epoch {newest} was claimed after ours"), out);
                    return;
                }
                l.alive_until = l.alive_until.max(started + self.hold);
                l.next_renew = started + self.renew_every;
            }
            Event::RenewFailed { epoch, reason } => {
                let State::Leading(l) = &mut self.state else {
                    return;
                };
                if l.epoch != epoch {
                    return;
                }
                let started = l.renewing.take().unwrap_or(now);
                tracing::warn!(epoch, %reason, "renewing the lease failed");
                l.next_renew = (started + self.renew_every).max(now);
            }
            Event::Deposed { epoch, reason } => {
                if let State::Leading(l) = &self.state
                    && l.epoch == epoch
                {
                    self.step_down(now, reason, out);
                }
            }
        }
    }

    fn on_observed(&mut self, now: u64, observed: Option<Observed>, out: &mut Vec<Command>) {
        let State::Following(f) = &mut self.state else {
            return;
        };
        f.observing = false;
        f.next_observe = now + self.poll_every;
        let Some(observed) = observed else {
            // No coordinator ever led this store: nobody's lease to wait out.
            self.leader = None;
            self.claim(now, 1, out);
            return;
        };
        if let (Some(unsure), Some(mine)) = (f.unsure.take(), &self.claiming)
            && observed.record.epoch == unsure
            && observed.record == *mine
        {
            tracing::info!(epoch = unsure, "the claim whose answer was lost had landed");
            self.start_leading(unsure, now, out);
            return;
        }
        self.claiming = None;
        let key = (observed.record.epoch, observed.renewal);
        let since = match f.seen {
            Some((seen, since)) if seen == key => since,
            _ => {
                f.seen = Some((key, now));
                now
            }
        };
        let epoch = observed.record.epoch;
        self.leader = Some(observed.record);
        if now >= since + self.lease {
            tracing::info!(
                epoch,
                silent_ms = now - since,
                "the leader's lease expired; claiming the next epoch"
            );
            self.claim(now, epoch + 1, out);
        } else {
            // Look again exactly when the lease would run out.
            f.next_observe = f.next_observe.min(since + self.lease);
        }
    }

    fn claim(&mut self, now: u64, epoch: u64, out: &mut Vec<Command>) {
        self.claiming = Some(EpochRecord {
            epoch,
            ..self.me.clone()
        });
        self.state = State::Claiming {
            epoch,
            started: now,
        };
        out.push(Command::Claim { epoch });
    }

    /// `started`: when the claim was sent, the first sign of life standbys can see.
    fn start_leading(&mut self, epoch: u64, started: u64, out: &mut Vec<Command>) {
        self.leader = self.claiming.take();
        self.state = State::Leading(Leading {
            epoch,
            serving: false,
            fencing: true,
            next_fence: started,
            renewal: 0,
            renewing: None,
            next_renew: started,
            alive_until: started + self.hold,
        });
        out.push(Command::Fence { epoch });
    }

    fn follow(&mut self, now: u64, unsure: Option<u64>) {
        self.state = State::Following(Following {
            seen: None,
            observing: false,
            next_observe: now,
            unsure,
        });
    }

    fn step_down(&mut self, now: u64, reason: String, out: &mut Vec<Command>) {
        let State::Leading(l) = &self.state else {
            return;
        };
        tracing::warn!(epoch = l.epoch, %reason, "stepping down");
        if l.serving {
            out.push(Command::StepDown {
                epoch: l.epoch,
                reason,
            });
        }
        self.follow(now, None);
    }

    fn on_time(&mut self, now: u64, out: &mut Vec<Command>) {
        match &mut self.state {
            State::Following(f) => {
                if !f.observing && now >= f.next_observe {
                    f.observing = true;
                    out.push(Command::Observe);
                }
            }
            State::Leading(l) => {
                if now >= l.alive_until {
                    let reason = format!(
                        "the lease was not renewed for {} ms (the store did not answer, or this process was paused)",
                        self.hold
                    );
                    self.step_down(now, reason, out);
                    // Following now: look at the store right away.
                    self.on_time(now, out);
                    return;
                }
                if l.renewing.is_none() && now >= l.next_renew {
                    l.renewal += 1;
                    l.renewing = Some(now);
                    out.push(Command::Renew {
                        epoch: l.epoch,
                        renewal: l.renewal,
                    });
                }
                if !l.serving && !l.fencing && now >= l.next_fence {
                    l.fencing = true;
                    out.push(Command::Fence { epoch: l.epoch });
                }
            }
            State::Claiming { .. } | State::Stopped => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The driver

/// How [`Leadership`] runs.
#[derive(Clone)]
pub struct LeadershipConfig {
    /// Lease timing.
    pub timing: LeaseTiming,
    /// Recorded as the holder of the epochs this coordinator claims; unique to the process.
    pub holder: String,
    /// This coordinator's listen address, recorded with its epochs so that others can find it.
    pub address: Option<String>,
    /// The wall clock stamped into epoch records and leases, for people to read (never compared
    /// across hosts), and the randomness of the holder name.
    pub clock: Clock,
}

impl fmt::Debug for LeadershipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeadershipConfig")
            .field("timing", &self.timing)
            .field("holder", &self.holder)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl LeadershipConfig {
    /// A configuration with `lease`, the system wall clock, and a holder name made unique by
    /// the process id and a random suffix.
    ///
    /// # Errors
    ///
    /// As [`LeaseTiming::new`].
    pub fn new(lease: Duration, address: Option<String>) -> Result<Self> {
        Self::with_clock(lease, address, Clock::system())
    }

    /// [`new`](Self::new) with another clock (tests and simulations).
    ///
    /// # Errors
    ///
    /// As [`LeaseTiming::new`].
    pub fn with_clock(lease: Duration, address: Option<String>, clock: Clock) -> Result<Self> {
        let holder = format!(
            "cohort-serve-{}-{:08x}",
            std::process::id(),
            clock.random_u64() as u32
        );
        Ok(Self {
            timing: LeaseTiming::new(lease)?,
            holder,
            address,
            clock,
        })
    }
}

/// What [`Leadership`] publishes: the [`Role`], and once leading, the fence it wrote (its
/// metadata holds the state table of the recovery line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Where this coordinator stands.
    pub role: Role,
    /// The fence manifest written on taking the current epoch; `None` while not leading, or
    /// when the store had no committed line to fence.
    pub fence: Option<Arc<Manifest>>,
    /// Terms led so far by this process.
    pub terms: u64,
}

impl View {
    /// The epoch held, when leading with the fence written.
    pub fn serving_epoch(&self) -> Option<u64> {
        match self.role {
            Role::Leading {
                epoch,
                serving: true,
            } => Some(epoch),
            _ => None,
        }
    }

    /// While following, the listen address in the newest epoch record: where the leader
    /// (or the coordinator about to be replaced) accepts nodes.
    pub fn leader_address(&self) -> Option<&str> {
        match &self.role {
            Role::Following { leader } => leader.as_ref()?.address.as_deref(),
            _ => None,
        }
    }
}

enum Request {
    Deposed { epoch: u64, reason: String },
    Stop,
}

/// Runs the [`Machine`] against a store on tokio. Cheap to clone; the task stops on
/// [`stop`](Self::stop) or when every clone is dropped.
///
/// Store calls are bounded by the lease, so that a hung store cannot keep a leader from
/// stepping down (the machine's own deadline does that anyway).
#[derive(Clone, Debug)]
pub struct Leadership {
    view: watch::Receiver<View>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Leadership {
    /// Starts following on `store`; leads when no other coordinator holds a live lease. Call
    /// inside a tokio runtime.
    pub fn spawn(store: CheckpointStore, config: LeadershipConfig) -> Self {
        let (tx, view) = watch::channel(View {
            role: Role::Following { leader: None },
            fence: None,
            terms: 0,
        });
        let (requests, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            origin: tokio::time::Instant::now(),
            machine: Machine::new(
                config.timing,
                config.holder.clone(),
                config.address.clone(),
                0,
            ),
            store,
            config,
            view: tx,
            fence: None,
            terms: 0,
            tasks: JoinSet::new(),
        };
        tokio::spawn(driver.run(rx));
        Self { view, requests }
    }

    /// Watches this coordinator's role.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Tells the machine that the service found `epoch` deposed (a commit was fenced): it
    /// steps down at once.
    pub fn deposed(&self, epoch: u64, reason: impl Into<String>) {
        let _ = self.requests.send(Request::Deposed {
            epoch,
            reason: reason.into(),
        });
    }

    /// Stops: steps down if leading (the lease then runs out; a standby takes over after it)
    /// and waits until the driver has stopped.
    pub async fn stop(&self) {
        let _ = self.requests.send(Request::Stop);
        let mut view = self.view.clone();
        let _ = view.wait_for(|v| v.role == Role::Stopped).await;
    }
}

struct Driver {
    origin: tokio::time::Instant,
    machine: Machine,
    store: CheckpointStore,
    config: LeadershipConfig,
    view: watch::Sender<View>,
    fence: Option<Arc<Manifest>>,
    terms: u64,
    tasks: JoinSet<(Event, Option<Manifest>)>,
}

impl Driver {
    fn now(&self) -> u64 {
        ms(self.origin.elapsed())
    }

    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        self.step(Event::Tick);
        loop {
            let deadline = self
                .machine
                .next_deadline()
                .map(|at| self.origin + Duration::from_millis(at));
            let event = tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Deposed { epoch, reason }) => Event::Deposed { epoch, reason },
                    Some(Request::Stop) | None => Event::Stop,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok((event, fence)) => {
                        if fence.is_some() {
                            self.fence = fence.map(Arc::new);
                        }
                        event
                    }
                    // Store tasks do not panic; if one did, the machine's deadlines recover.
                    Err(e) => {
                        tracing::error!(error = %e, "a leadership store task failed");
                        continue;
                    }
                },
                () = sleep_until(deadline) => Event::Tick,
            };
            let stop = event == Event::Stop;
            self.step(event);
            if stop {
                self.tasks.abort_all();
                return;
            }
        }
    }

    fn step(&mut self, event: Event) {
        let now = self.now();
        for command in self.machine.handle(now, event) {
            self.execute(command);
        }
        self.publish();
    }

    fn publish(&self) {
        let role = self.machine.role();
        // A late fence of an earlier term is never shown with this one.
        let fence = match role {
            Role::Leading {
                epoch,
                serving: true,
            } => self.fence.clone().filter(|f| f.epoch == epoch),
            _ => None,
        };
        let terms = self.terms;
        self.view.send_if_modified(|v| {
            let next = View { role, fence, terms };
            let changed = *v != next;
            *v = next;
            changed
        });
    }

    fn execute(&mut self, command: Command) {
        let store = self.store.clone();
        let limit = self.config.timing.lease;
        let clock = self.config.clock.clone();
        match command {
            Command::Observe => {
                self.spawn(
                    limit,
                    async move { (observe(&store).await, None) },
                    |reason| Event::ObserveFailed { reason },
                );
            }
            Command::Claim { epoch } => {
                self.machine.set_claim_time(clock.wall_ms());
                let Some(record) = self.machine.claim_record().cloned() else {
                    return;
                };
                self.spawn(
                    limit,
                    async move {
                        let event = match store.try_claim_epoch(&record).await {
                            Ok(won) => Event::Claimed { epoch, won },
                            Err(e) => Event::ClaimFailed {
                                epoch,
                                reason: e.to_string(),
                            },
                        };
                        (event, None)
                    },
                    move |reason| Event::ClaimFailed { epoch, reason },
                );
            }
            Command::Fence { epoch } => {
                self.fence = None;
                self.spawn(
                    limit,
                    async move { fence(store, epoch, clock.wall_ms()).await },
                    move |reason| Event::FenceFailed {
                        epoch,
                        reason,
                        deposed: false,
                    },
                );
            }
            Command::Renew { epoch, renewal } => {
                let lease = EpochLease {
                    epoch,
                    renewal,
                    renewed_at_ms: clock.wall_ms(),
                };
                self.spawn(
                    limit,
                    async move {
                        let renewed = async {
                            store.renew_epoch(&lease).await?;
                            store.newest_epoch_number().await
                        };
                        let event = match renewed.await {
                            Ok(newest) => Event::Renewed {
                                epoch,
                                newest: newest.unwrap_or(0),
                            },
                            Err(e) => Event::RenewFailed {
                                epoch,
                                reason: e.to_string(),
                            },
                        };
                        (event, None)
                    },
                    move |reason| Event::RenewFailed { epoch, reason },
                );
            }
            Command::Lead { epoch } => {
                self.terms += 1;
                tracing::info!(epoch, store = %self.store, "leading");
            }
            Command::StepDown { epoch, reason } => {
                tracing::warn!(epoch, %reason, "stepped down");
                self.fence = None;
            }
        }
    }

    /// Runs a store call on its own task, bounded by `limit`; a call that overruns reports
    /// `timed_out`.
    fn spawn<F>(
        &mut self,
        limit: Duration,
        call: F,
        timed_out: impl FnOnce(String) -> Event + Send + 'static,
    ) where
        F: Future<Output = (Event, Option<Manifest>)> + Send + 'static,
    {
        self.tasks.spawn(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(done) => done,
                Err(_) => (
                    timed_out(format!("the store did not answer within {limit:?}")),
                    None,
                ),
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Following the driver with a service

/// A change [`drive`] made or saw, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// The service leads under `epoch`; `fence` is the fence's checkpoint id (none on a store
    /// without a committed checkpoint).
    Leading {
        /// The epoch.
        epoch: u64,
        /// The fence written on taking it.
        fence: Option<CheckpointId>,
    },
    /// The service could not start leading under `epoch`: the epoch is given up.
    LeadFailed {
        /// The epoch.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// The first checkpoint after taking over committed (the retry of the one the change of
    /// leader aborted).
    Retried {
        /// The epoch.
        epoch: u64,
        /// The checkpoint.
        id: CheckpointId,
    },
    /// The service stopped leading under `epoch`.
    SteppedDown {
        /// The epoch given up.
        epoch: u64,
    },
    /// Standing by: nodes are sent to the holder of the newest epoch.
    Following {
        /// The newest epoch record seen.
        leader: Option<EpochRecord>,
    },
    /// A commit was refused as fenced: a newer coordinator took over.
    Fenced {
        /// The epoch led when it happened, if still leading.
        leading: Option<u64>,
    },
}

/// Makes `service` (started with [`ServiceConfig::lead_at_start`](super::ServiceConfig) false)
/// follow `leadership`, until the leadership driver stops or `stop` is cancelled:
///
/// - when the driver serves an epoch, [`Service::lead`] under it with its fence (the state
///   table of the line comes with it), then one checkpoint is triggered at once, retried while
///   the nodes find the new leader: the attempt the change of leader aborted is retried;
/// - otherwise [`Service::follow`] the newest epoch's address, so that nodes go there;
/// - a commit refused as fenced deposes the epoch ([`Leadership::deposed`]).
///
/// `on` hears of every change.
///
/// # Errors
///
/// [`Error::Stopped`] when the service or the leadership driver went away unexpectedly.
pub async fn drive(
    service: Service,
    leadership: Leadership,
    stop: CancellationToken,
    mut on: impl FnMut(Transition) + Send,
) -> Result<()> {
    let mut views = leadership.watch();
    let mut status = service.status();
    let (retried_tx, mut retried) = mpsc::unbounded_channel();
    let mut leading: Option<u64> = None;
    let mut following: Option<Option<String>> = None;
    let mut fenced = false;
    let mut view = views.borrow_and_update().clone();
    loop {
        if view.role == Role::Stopped {
            return Ok(());
        }
        match (view.serving_epoch(), leading) {
            (Some(epoch), Some(current)) if epoch == current => {}
            (Some(epoch), _) => {
                let fence = view.fence.clone();
                let fence_id = fence.as_ref().map(|f| f.id);
                match service.lead(epoch, fence).await {
                    Ok(()) => {
                        leading = Some(epoch);
                        following = None;
                        on(Transition::Leading {
                            epoch,
                            fence: fence_id,
                        });
                        tokio::spawn(retry_after_takeover(
                            service.clone(),
                            leadership.watch(),
                            epoch,
                            retried_tx.clone(),
                        ));
                    }
                    Err(e) => {
                        on(Transition::LeadFailed {
                            epoch,
                            reason: e.to_string(),
                        });
                        leadership.deposed(epoch, format!("the service could not lead: {e}"));
                    }
                }
            }
            (None, _) => {
                if let Some(epoch) = leading.take() {
                    on(Transition::SteppedDown { epoch });
                }
                let address = view.leader_address().map(str::to_owned);
                if following.as_ref() != Some(&address) {
                    let leader = match &view.role {
                        Role::Following { leader } => leader.clone(),
                        _ => None,
                    };
                    service.follow(address.clone());
                    following = Some(address);
                    on(Transition::Following { leader });
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            changed = views.changed() => {
                if changed.is_err() {
                    return Err(Error::COHORT_STOPPED);
                }
                view = views.borrow_and_update().clone();
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Err(Error::COHORT_STOPPED);
                }
                let now = status.borrow_and_update().fenced;
                if now && !fenced {
                    on(Transition::Fenced { leading });
                    if let Some(epoch) = leading {
                        leadership.deposed(epoch, "a commit found a newer epoch's manifest (fenced)");
                    }
                }
                fenced = now;
            }
            Some(t) = retried.recv() => on(t),
        }
    }
}

/// Takes one checkpoint right after taking over, retried with backoff while `epoch` is served
/// (the nodes need a moment to find the new leader and register).
async fn retry_after_takeover(
    service: Service,
    views: watch::Receiver<View>,
    epoch: u64,
    done: mpsc::UnboundedSender<Transition>,
) {
    let mut delay = Duration::from_millis(20);
    for _ in 0..64 {
        if views.borrow().serving_epoch() != Some(epoch) {
            return;
        }
        match service.trigger().await {
            Ok(id) => {
                let _ = done.send(Transition::Retried { epoch, id });
                return;
            }
            Err(Error::Fenced { .. } | Error::Stopped { .. }) => return,
            Err(e) => {
                tracing::debug!(epoch, error = %e, "first checkpoint after taking over; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

async fn observe(store: &CheckpointStore) -> Event {
    match store.newest_epoch_state().await {
        Ok(None) => Event::Observed(None),
        Ok(Some(state)) => match observed(state) {
            Ok(observed) => Event::Observed(Some(observed)),
            Err(reason) => Event::ObserveFailed { reason },
        },
        Err(e) => Event::ObserveFailed {
            reason: e.to_string(),
        },
    }
}

/// What a standby makes of the newest epoch as stored. A damaged record or lease is skipped
/// safely: the record's key still takes the epoch's number (the next claim is the one after
/// it), its holder is unknown, and a damaged lease reads as a lease that does not move, so the
/// epoch is waited out like any silent one; a live holder rewrites its lease at its next
/// renewal. A record or lease of a newer format is refused: this build must not take over from
/// a newer cohort.
fn observed(state: cohort_checkpoint::EpochState) -> std::result::Result<Observed, String> {
    let epoch = state.epoch;
    for damage in state.damage() {
        if matches!(
            damage.kind,
            cohort_checkpoint::DamageKind::FutureFormat { .. }
        ) {
            return Err(format!("{damage}"));
        }
        tracing::warn!(epoch, %damage, "the newest epoch's record or lease is damaged: epoch {epoch} stays taken; waiting out its lease, then claiming epoch {} (to end it sooner, stop its leader: a standby then claims the next epoch)", epoch + 1);
    }
    let record = state.record.unwrap_or_else(|damage| EpochRecord {
        epoch,
        holder: format!("an unknown holder (its record {} is damaged)", damage.blob),
        created_at_ms: 0,
        address: None,
    });
    let renewal = state.lease.ok().flatten().map(|l| l.renewal);
    Ok(Observed { record, renewal })
}

async fn fence(store: CheckpointStore, epoch: u64, now_ms: u64) -> (Event, Option<Manifest>) {
    let request = FenceRequest::new(epoch, now_ms, FenceLine::Newest);
    match store.fence(&request).await {
        Ok(Fence::Written(fence)) => (
            Event::Fenced {
                epoch,
                fence: Some(fence.id),
            },
            Some(fence),
        ),
        Ok(Fence::NoLine | Fence::LineMoved { .. }) => (Event::Fenced { epoch, fence: None }, None),
        Err(e) => (
            Event::FenceFailed {
                epoch,
                deposed: e.is_fenced(),
                reason: e.to_string(),
            },
            None,
        ),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test

    use std::collections::BTreeMap;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const LEASE: u64 = 1_000;
    /// The leader's own deadline: the lease less 5 %.
    const HOLD: u64 = 950;

    fn machine(holder: &str) -> Machine {
        let timing = LeaseTiming::new(Duration::from_millis(LEASE)).unwrap();
        Machine::new(timing, holder.into(), Some(format!("{holder}:7411")), 0)
    }

    fn record(epoch: u64, holder: &str) -> EpochRecord {
        EpochRecord {
            epoch,
            holder: holder.into(),
            created_at_ms: 0,
            address: Some(format!("{holder}:7411")),
        }
    }

    fn seen(epoch: u64, holder: &str, renewal: Option<u64>) -> Event {
        Event::Observed(Some(Observed {
            record: record(epoch, holder),
            renewal,
        }))
    }

    /// Takes a fresh machine to serving epoch 1 on an empty store.
    fn leader() -> Machine {
        let mut m = machine("a");
        assert_eq!(m.handle(0, Event::Tick), vec![Command::Observe]);
        assert_eq!(
            m.handle(5, Event::Observed(None)),
            vec![Command::Claim { epoch: 1 }]
        );
        assert_eq!(
            m.handle(
                10,
                Event::Claimed {
                    epoch: 1,
                    won: true
                }
            ),
            vec![
                Command::Fence { epoch: 1 },
                Command::Renew {
                    epoch: 1,
                    renewal: 1
                }
            ]
        );
        assert_eq!(
            m.handle(
                20,
                Event::Fenced {
                    epoch: 1,
                    fence: None
                }
            ),
            vec![Command::Lead { epoch: 1 }]
        );
        assert_eq!(
            m.role(),
            Role::Leading {
                epoch: 1,
                serving: true
            }
        );
        m
    }

    #[test]
    fn an_empty_store_is_claimed_at_once() {
        leader();
    }

    #[test]
    fn timing_refuses_a_tiny_lease() {
        assert!(matches!(
            LeaseTiming::new(Duration::from_millis(10)),
            Err(Error::InvalidConfig { .. })
        ));
        let t = LeaseTiming::new(Duration::from_millis(1_200)).unwrap();
        assert_eq!(
            (t.renew_every, t.poll_every),
            (Duration::from_millis(400), Duration::from_millis(300))
        );
    }

    #[test]
    fn a_standby_claims_only_after_a_full_lease_without_progress() {
        let mut m = machine("b");
        assert_eq!(m.handle(0, Event::Tick), vec![Command::Observe]);
        assert!(m.handle(0, seen(4, "a", Some(7))).is_empty());
        assert_eq!(m.next_deadline(), Some(250));
        assert_eq!(m.handle(250, Event::Tick), vec![Command::Observe]);
        // Progress: the clock starts again.
        assert!(m.handle(260, seen(4, "a", Some(8))).is_empty());
        for t in [510, 760, 1010] {
            assert_eq!(m.handle(t, Event::Tick), vec![Command::Observe]);
            assert!(m.handle(t, seen(4, "a", Some(8))).is_empty(), "at {t}");
        }
        // The next look is exactly when the lease runs out, not a poll later.
        assert_eq!(m.next_deadline(), Some(1260));
        assert_eq!(m.handle(1260, Event::Tick), vec![Command::Observe]);
        assert_eq!(
            m.handle(1261, seen(4, "a", Some(8))),
            vec![Command::Claim { epoch: 5 }]
        );
        assert_eq!(m.claim_record().unwrap().epoch, 5);
        assert_eq!(m.claim_record().unwrap().holder, "b");
        assert_eq!(m.role(), Role::Claiming { epoch: 5 });
    }

    #[test]
    fn a_new_epoch_counts_as_progress_and_names_the_leader() {
        let mut m = machine("c");
        m.handle(0, Event::Tick);
        m.handle(0, seen(1, "a", Some(3)));
        m.handle(900, Event::Tick);
        // Someone else took epoch 2 (no renewal yet): a live leader.
        assert!(m.handle(900, seen(2, "b", None)).is_empty());
        assert_eq!(
            m.role(),
            Role::Following {
                leader: Some(record(2, "b"))
            }
        );
        m.handle(1100, Event::Tick);
        assert!(m.handle(1100, seen(2, "b", None)).is_empty());
    }

    #[test]
    fn a_lost_claim_follows_the_winner() {
        let mut m = machine("b");
        m.handle(0, Event::Tick);
        m.handle(0, seen(1, "a", Some(1)));
        m.handle(1000, Event::Tick);
        assert_eq!(
            m.handle(1000, seen(1, "a", Some(1))),
            vec![Command::Claim { epoch: 2 }]
        );
        assert_eq!(
            m.handle(
                1010,
                Event::Claimed {
                    epoch: 2,
                    won: false
                }
            ),
            vec![Command::Observe]
        );
        // The winner gets a full lease from now.
        assert!(m.handle(1020, seen(2, "c", None)).is_empty());
        assert_eq!(m.next_deadline(), Some(1270));
    }

    #[test]
    fn a_claim_in_doubt_is_read_back() {
        for (found, leads) in [(record(2, "b"), true), (record(2, "z"), false)] {
            let mut m = machine("b");
            m.handle(0, Event::Tick);
            m.handle(0, seen(1, "a", None));
            m.handle(1000, Event::Tick);
            m.handle(1000, seen(1, "a", None));
            assert_eq!(
                m.handle(
                    1010,
                    Event::ClaimFailed {
                        epoch: 2,
                        reason: "timeout".into()
                    }
                ),
                vec![Command::Observe]
            );
            let out = m.handle(
                1020,
                Event::Observed(Some(Observed {
                    record: found,
                    renewal: None,
                })),
            );
            if leads {
                assert_eq!(
                    out,
                    vec![
                        Command::Fence { epoch: 2 },
                        Command::Renew {
                            epoch: 2,
                            renewal: 1
                        }
                    ]
                );
            } else {
                assert!(out.is_empty());
                assert!(matches!(m.role(), Role::Following { .. }));
            }
        }
    }

    #[test]
    fn a_leader_renews_every_third_of_the_lease() {
        let mut m = leader();
        assert!(
            m.handle(
                30,
                Event::Renewed {
                    epoch: 1,
                    newest: 1
                }
            )
            .is_empty()
        );
        // Renewal 1 started at 10: the next at 10 + 333.
        assert_eq!(m.next_deadline(), Some(343));
        assert_eq!(
            m.handle(343, Event::Tick),
            vec![Command::Renew {
                epoch: 1,
                renewal: 2
            }]
        );
        // In flight: no second renewal, only the lease deadline (10 + 1000) remains.
        assert!(m.handle(700, Event::Tick).is_empty());
        assert_eq!(m.next_deadline(), Some(10 + HOLD));
        // Late: the next renewal was due at 676, so it goes out at once.
        assert_eq!(
            m.handle(
                705,
                Event::Renewed {
                    epoch: 1,
                    newest: 1,
                },
            ),
            vec![Command::Renew {
                epoch: 1,
                renewal: 3
            }]
        );
        assert_eq!(m.next_deadline(), Some(343 + HOLD));
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_after_one_lease() {
        let mut m = leader();
        let mut t = 10;
        let stepped_down_at = loop {
            let out = m.handle(
                t,
                Event::RenewFailed {
                    epoch: 1,
                    reason: "store down".into(),
                },
            );
            assert!(out.is_empty(), "{out:?}");
            t = m.next_deadline().unwrap();
            match m.handle(t, Event::Tick).as_slice() {
                [Command::Renew { epoch: 1, .. }] => {}
                [Command::StepDown { epoch: 1, .. }, Command::Observe] => break t,
                other => panic!("{other:?}"),
            }
        };
        // The claim was sent at 5: the first sign of life, so the lease ran from there.
        assert_eq!(stepped_down_at, 5 + HOLD);
        assert!(matches!(m.role(), Role::Following { .. }));
        // Late results of the old term change nothing.
        assert!(
            m.handle(
                1020,
                Event::Renewed {
                    epoch: 1,
                    newest: 1
                }
            )
            .is_empty()
        );
        assert!(matches!(m.role(), Role::Following { .. }));
    }

    #[test]
    fn a_paused_leader_steps_down_on_its_first_tick() {
        let mut m = leader();
        m.handle(
            30,
            Event::Renewed {
                epoch: 1,
                newest: 1,
            },
        );
        // SIGSTOP at 31, SIGCONT at 5000: the deadline passed long ago.
        let out = m.handle(5_000, Event::Tick);
        assert!(matches!(
            out.as_slice(),
            [Command::StepDown { epoch: 1, .. }, Command::Observe]
        ));
    }

    #[test]
    fn a_leader_steps_down_when_it_sees_a_newer_epoch_or_is_fenced() {
        let mut m = leader();
        let out = m.handle(
            40,
            Event::Renewed {
                epoch: 1,
                newest: 2,
            },
        );
        assert!(matches!(
            out.as_slice(),
            [Command::StepDown { epoch: 1, .. }, Command::Observe]
        ));

        let mut m = leader();
        assert!(
            m.handle(
                40,
                Event::Deposed {
                    epoch: 7,
                    reason: "another term".into()
                }
            )
            .is_empty()
        );
        let out = m.handle(
            41,
            Event::Deposed {
                epoch: 1,
                reason: "commit of checkpoint 3 fenced".into(),
            },
        );
        assert!(
            matches!(out.as_slice(), [Command::StepDown { epoch: 1, reason }, Command::Observe] if reason.contains("fenced"))
        );
    }

    #[test]
    fn fencing_is_retried_and_a_fenced_fence_never_leads() {
        let mut m = machine("a");
        m.handle(0, Event::Tick);
        m.handle(0, Event::Observed(None));
        m.handle(
            0,
            Event::Claimed {
                epoch: 1,
                won: true,
            },
        );
        assert!(
            m.handle(
                5,
                Event::FenceFailed {
                    epoch: 1,
                    reason: "unavailable".into(),
                    deposed: false
                }
            )
            .is_empty()
        );
        assert_eq!(
            m.handle(255, Event::Tick),
            vec![Command::Fence { epoch: 1 }]
        );
        // Not serving yet, so there is nothing to step down from: just follow.
        assert_eq!(
            m.handle(
                260,
                Event::FenceFailed {
                    epoch: 1,
                    reason: "fenced".into(),
                    deposed: true
                }
            ),
            vec![Command::Observe]
        );
    }

    #[test]
    fn stop_steps_down_once() {
        let mut m = leader();
        assert!(matches!(
            m.handle(50, Event::Stop).as_slice(),
            [Command::StepDown { epoch: 1, .. }]
        ));
        assert_eq!(m.role(), Role::Stopped);
        assert_eq!(m.next_deadline(), None);
        assert!(m.handle(60, Event::Tick).is_empty());
    }

    /// A seeded simulation: several machines on one modelled store with random latencies,
    /// crashes, pauses and partitions from the store. Checks that no epoch is led twice, that the leader is replaced within
    /// a bounded time of its crash, and, with no pauses, that two machines never serve at once.
    #[test]
    fn simulated_coordinators_elect_one_leader() {
        for seed in 0..40 {
            simulate(seed);
        }
    }

    #[derive(Default)]
    struct Model {
        epochs: BTreeMap<u64, EpochRecord>,
        leases: BTreeMap<u64, u64>,
    }

    struct Node {
        machine: Machine,
        /// Results in flight: (due time, event).
        pending: Vec<(u64, Event)>,
        crashed: bool,
        paused_until: u64,
        cut_off_until: u64,
    }

    #[allow(clippy::needless_range_loop)] // nodes[i] is borrowed anew for every command
    fn simulate(seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let pauses = seed % 2 == 1;
        let mut store = Model::default();
        let mut nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                machine: machine(&format!("n{i}")),
                pending: Vec::new(),
                crashed: false,
                paused_until: 0,
                cut_off_until: 0,
            })
            .collect();
        let mut led: BTreeMap<u64, usize> = BTreeMap::new();
        let mut crash_at = None;
        let mut replaced_at = None;
        for now in 0..20_000u64 {
            for i in 0..nodes.len() {
                if nodes[i].crashed || nodes[i].paused_until > now {
                    continue;
                }
                let (due, rest): (Vec<_>, Vec<_>) =
                    nodes[i].pending.drain(..).partition(|(at, _)| *at <= now);
                nodes[i].pending = rest;
                let mut events: Vec<Event> = due.into_iter().map(|(_, e)| e).collect();
                if nodes[i].machine.next_deadline().is_some_and(|d| d <= now) {
                    events.push(Event::Tick);
                }
                for event in events {
                    let commands = nodes[i].machine.handle(now, event);
                    for command in commands {
                        let latency = rng.random_range(1..40);
                        let cut_off = nodes[i].cut_off_until > now;
                        let result = match command {
                            Command::Observe if cut_off => Some(Event::ObserveFailed {
                                reason: "partitioned".into(),
                            }),
                            Command::Claim { epoch } if cut_off => Some(Event::ClaimFailed {
                                epoch,
                                reason: "partitioned".into(),
                            }),
                            Command::Fence { epoch } if cut_off => Some(Event::FenceFailed {
                                epoch,
                                reason: "partitioned".into(),
                                deposed: false,
                            }),
                            Command::Renew { epoch, .. } if cut_off => Some(Event::RenewFailed {
                                epoch,
                                reason: "partitioned".into(),
                            }),
                            Command::Observe => {
                                let newest = store.epochs.values().next_back().cloned();
                                Some(Event::Observed(newest.map(|record| Observed {
                                    renewal: store.leases.get(&record.epoch).copied(),
                                    record,
                                })))
                            }
                            Command::Claim { epoch } => {
                                let mut record = nodes[i].machine.claim_record().cloned().unwrap();
                                record.epoch = epoch;
                                let won = !store.epochs.contains_key(&epoch);
                                if won {
                                    store.epochs.insert(epoch, record);
                                }
                                Some(Event::Claimed { epoch, won })
                            }
                            Command::Fence { epoch } => {
                                let newest = *store.epochs.keys().next_back().unwrap();
                                Some(if newest > epoch {
                                    Event::FenceFailed {
                                        epoch,
                                        reason: "fenced".into(),
                                        deposed: true,
                                    }
                                } else {
                                    Event::Fenced { epoch, fence: None }
                                })
                            }
                            Command::Renew { epoch, renewal } => {
                                store.leases.insert(epoch, renewal);
                                let newest = *store.epochs.keys().next_back().unwrap();
                                Some(Event::Renewed { epoch, newest })
                            }
                            Command::Lead { epoch } => {
                                assert!(
                                    led.insert(epoch, i).is_none(),
                                    "seed {seed}: epoch {epoch} led twice"
                                );
                                if crash_at.is_some() && replaced_at.is_none() {
                                    replaced_at = Some(now);
                                }
                                None
                            }
                            Command::StepDown { .. } => None,
                        };
                        if let Some(result) = result {
                            nodes[i].pending.push((now + latency, result));
                        }
                    }
                }
            }
            let serving = nodes
                .iter()
                .filter(|n| !n.crashed && n.machine.role().is_serving())
                .count();
            if !pauses {
                assert!(serving <= 1, "seed {seed}: {serving} serve at {now}");
            }
            // Crash the leader once, a while in.
            if now == 5_000
                && let Some(n) = nodes.iter_mut().find(|n| n.machine.role().is_serving())
            {
                n.crashed = true;
                crash_at = Some(now);
            }
            if pauses && now % 3_000 == 1_500 {
                let i = rng.random_range(0..nodes.len());
                nodes[i].paused_until = now + rng.random_range(100..3_000);
            }
            // Cut a node off the store now and then (the leader included): it must step down
            // before anyone else claims.
            if now % 2_000 == 700 {
                let i = rng.random_range(0..nodes.len());
                nodes[i].cut_off_until = now + rng.random_range(100..2_500);
            }
        }
        let crashed = crash_at.unwrap_or_else(|| panic!("seed {seed}: nobody led by 5 s"));
        let replaced = replaced_at.unwrap_or_else(|| panic!("seed {seed}: nobody took over"));
        if !pauses {
            // One lease, a poll, and the latencies of a read, a claim and a fence.
            assert!(
                replaced - crashed <= LEASE + 250 + 4 * 40,
                "seed {seed}: took {} ms",
                replaced - crashed
            );
        }
    }

    impl Role {
        fn is_serving(&self) -> bool {
            matches!(self, Role::Leading { serving: true, .. })
        }
    }
}
