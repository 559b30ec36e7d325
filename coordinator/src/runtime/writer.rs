//! The writer of one attempt: encodes the captured states into segments after the objects were
//! released, reports the votes once the segments are durable, and writes the in-transit
//! messages as channel state.
//!
//! In-process, one writer serves every local object. A remote node would run the same writer
//! for its objects and send the resulting votes (entry locations and counters, never state
//! bytes) to the coordinator.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cohort_checkpoint::{CheckpointStore, InTransitEntry, ObjectEntry, SegmentWriter};
use cohort_object_api::{CheckpointId, EncodedState, ObjectId, Snapshot};
use tokio::sync::{mpsc, oneshot};

use super::coordinator::Input;
use super::{Shared, failpoint};
use crate::engine::{Ballot, Round, Vote, VotedState};

/// What a participant hands the writer.
pub(crate) enum WriterMsg {
    State(Captured),
    No {
        object: ObjectId,
        reason: String,
    },
    InTransit {
        from: ObjectId,
        to: ObjectId,
        seq: u64,
        state: EncodedState,
    },
    /// Make the channel state durable; answers with its byte count.
    Seal(oneshot::Sender<Result<u64, String>>),
}

pub(crate) struct Captured {
    pub(crate) object: ObjectId,
    /// `None`: unchanged since the last committed line.
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) generation: Option<u64>,
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

/// What the writer reports with the votes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Written {
    pub(crate) bytes: u64,
    pub(crate) written: usize,
    pub(crate) unchanged: usize,
}

pub(crate) struct RoundWriter {
    pub(crate) id: CheckpointId,
    pub(crate) round: Round,
    pub(crate) token: String,
    pub(crate) participants: HashSet<ObjectId>,
    pub(crate) store: CheckpointStore,
    pub(crate) shared: Arc<Shared>,
}

impl RoundWriter {
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
        let mut states = Some(self.store.segment_writer(self.id, &self.token, "states"));
        let mut channel: Option<SegmentWriter> = None;
        let mut ballots: HashMap<ObjectId, Ballot<ObjectEntry>> = HashMap::new();
        let mut stats = Written::default();
        let mut failed = false;
        let mut voted = self.participants.is_empty();
        while let Some(msg) = rx.recv().await {
            match msg {
                WriterMsg::State(c) => {
                    if failed
                        || !self.participants.contains(&c.object)
                        || ballots.contains_key(&c.object)
                    {
                        continue; // a non-participant forced to capture, or a duplicate
                    }
                    let state = match (&c.snapshot, states.as_mut()) {
                        (None, _) => {
                            stats.unchanged += 1;
                            VotedState::Unchanged
                        }
                        (Some(snapshot), Some(w)) => match w.add(&c.object, snapshot).await {
                            Ok(location) => {
                                stats.written += 1;
                                VotedState::Written(ObjectEntry {
                                    type_name: snapshot.tag().type_name.to_string(),
                                    version: snapshot.tag().version,
                                    generation: c.generation,
                                    location,
                                })
                            }
                            Err(e) => {
                                failed = true;
                                self.vote_no(c.object, format!("writing its state failed: {e}"));
                                continue;
                            }
                        },
                        (Some(_), None) => continue,
                    };
                    ballots.insert(
                        c.object,
                        Ballot {
                            state,
                            sent: c.sent,
                            received: c.received,
                        },
                    );
                    if ballots.len() == self.participants.len() {
                        let Some(w) = states.take() else { continue };
                        if self.crash_at(failpoint::STATES_BEFORE_FINISH) {
                            return;
                        }
                        match w.finish().await {
                            Ok(summary) => {
                                stats.bytes = summary.bytes;
                                if self.crash_at(failpoint::STATES_AFTER_FINISH) {
                                    return;
                                }
                                let votes =
                                    ballots.drain().map(|(o, b)| (o, Vote::Yes(b))).collect();
                                voted = true;
                                let _ = self.shared.input.send(Input::Votes {
                                    round: self.round,
                                    votes,
                                    written: stats,
                                });
                            }
                            Err(e) => {
                                failed = true;
                                let (object, _) = ballots.drain().next().unzip();
                                if let Some(object) = object {
                                    self.vote_no(
                                        object,
                                        format!("finishing its segment failed: {e}"),
                                    );
                                }
                            }
                        }
                    }
                }
                WriterMsg::No { object, reason } => {
                    if !voted && self.participants.contains(&object) {
                        failed = true;
                        self.vote_no(object, reason);
                    }
                }
                WriterMsg::InTransit {
                    from,
                    to,
                    seq,
                    state,
                } => {
                    let w = channel.get_or_insert_with(|| {
                        self.store.segment_writer(self.id, &self.token, "channel")
                    });
                    match w.add_encoded(&to, &state).await {
                        Ok(location) => {
                            let _ = self.shared.input.send(Input::ChannelState {
                                round: self.round,
                                entry: InTransitEntry {
                                    from,
                                    to,
                                    seq,
                                    location,
                                },
                            });
                        }
                        Err(e) => {
                            // Missing records keep the counts unbalanced: the attempt times
                            // out and aborts, which is correct if slow.
                            tracing::error!(checkpoint = %self.id, round = %self.round, error = %e, "writing an in-transit message failed");
                        }
                    }
                }
                WriterMsg::Seal(reply) => {
                    let result = match channel.take() {
                        None => Ok(0),
                        Some(w) => w.finish().await.map(|s| s.bytes).map_err(|e| e.to_string()),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }

    fn vote_no(&self, object: ObjectId, reason: String) {
        let _ = self.shared.input.send(Input::Votes {
            round: self.round,
            votes: vec![(object, Vote::No { reason })],
            written: Written::default(),
        });
    }

    /// True if the fail point crashed the cohort (this task must stop at once).
    fn crash_at(&self, point: &str) -> bool {
        match self.shared.fail_points.hit(point) {
            Ok(()) => false,
            Err(crash) => {
                self.shared.stop(Some(crash.0));
                true
            }
        }
    }
}
