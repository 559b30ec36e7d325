//! The writer of one attempt: encodes the captured states into a segment after the objects
//! were released, reports the votes once the segment is durable, and writes the in-transit
//! messages as channel state. One writer serves every participant of its host.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cohort_checkpoint::{CheckpointStore, InTransitEntry, ObjectEntry, SegmentWriter};
use cohort_object_api::{CheckpointId, EncodedState, ObjectId, Snapshot};
use tokio::sync::{mpsc, oneshot};

use super::VoteSink;
use crate::engine::{Ballot, Round, VotedState};
use crate::failpoint;

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
    /// How long the object was blocked by prepare and capture.
    pub(crate) pause: Duration,
}

/// What the writer reports with the votes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Written {
    pub(crate) bytes: u64,
    pub(crate) written: usize,
    pub(crate) unchanged: usize,
    /// The longest pause of the participants.
    pub(crate) pause_max: Duration,
}

pub(crate) struct RoundWriter<S: VoteSink> {
    pub(crate) id: CheckpointId,
    pub(crate) round: Round,
    /// The attempt's round token (the segments' folder).
    pub(crate) token: String,
    /// Writer tokens of the states' and the channel state's segments.
    pub(crate) states_writer: String,
    pub(crate) channel_writer: String,
    pub(crate) participants: HashSet<ObjectId>,
    pub(crate) store: CheckpointStore,
    pub(crate) sink: S,
}

impl<S: VoteSink> RoundWriter<S> {
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
        let mut states = Some(
            self.store
                .segment_writer(self.id, &self.token, &self.states_writer),
        );
        let mut channel: Option<SegmentWriter> = None;
        let mut ballots: HashMap<ObjectId, Ballot<ObjectEntry>> = HashMap::new();
        let mut stats = Written::default();
        // Type names, shared by the entries of each type.
        let mut types: Vec<Arc<str>> = Vec::new();
        let mut failed = false;
        let mut voted = self.participants.is_empty();
        if voted {
            self.sink.votes(self.round, Vec::new(), stats);
        }
        while let Some(msg) = rx.recv().await {
            match msg {
                WriterMsg::State(c) => {
                    if failed
                        || voted
                        || !self.participants.contains(&c.object)
                        || ballots.contains_key(&c.object)
                    {
                        continue; // a non-participant forced to capture, or a duplicate
                    }
                    stats.pause_max = stats.pause_max.max(c.pause);
                    let state = match (&c.snapshot, states.as_mut()) {
                        (None, _) => {
                            stats.unchanged += 1;
                            VotedState::Unchanged
                        }
                        (Some(snapshot), Some(w)) => match w.add(&c.object, snapshot).await {
                            Ok(location) => {
                                stats.written += 1;
                                let name = snapshot.tag().type_name.as_ref();
                                let type_name = match types.iter().find(|t| &***t == name) {
                                    Some(t) => Arc::clone(t),
                                    None => {
                                        types.push(name.into());
                                        Arc::clone(&types[types.len() - 1])
                                    }
                                };
                                VotedState::Written(ObjectEntry {
                                    type_name,
                                    version: snapshot.tag().version,
                                    generation: c.generation,
                                    location,
                                })
                            }
                            Err(e) => {
                                failed = true;
                                self.sink.refused(
                                    self.round,
                                    c.object,
                                    format!("writing its state failed: {e}"),
                                );
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
                        if self.sink.crash_at(failpoint::STATES_BEFORE_FINISH) {
                            return;
                        }
                        match w.finish().await {
                            Ok(summary) => {
                                stats.bytes = summary.bytes;
                                if self.sink.crash_at(failpoint::STATES_AFTER_FINISH) {
                                    return;
                                }
                                voted = true;
                                self.sink
                                    .votes(self.round, ballots.drain().collect(), stats);
                            }
                            Err(e) => {
                                failed = true;
                                let (object, _) = ballots.drain().next().unzip();
                                if let Some(object) = object {
                                    self.sink.refused(
                                        self.round,
                                        object,
                                        format!("finishing its segment failed: {e}"),
                                    );
                                }
                            }
                        }
                    }
                }
                WriterMsg::No { object, reason } => {
                    // One no decides the attempt; later ones add nothing.
                    if !voted && !failed && self.participants.contains(&object) {
                        failed = true;
                        self.sink.refused(self.round, object, reason);
                    }
                }
                WriterMsg::InTransit {
                    from,
                    to,
                    seq,
                    state,
                } => {
                    let w = channel.get_or_insert_with(|| {
                        self.store
                            .segment_writer(self.id, &self.token, &self.channel_writer)
                    });
                    match w.add_encoded(&to, &state).await {
                        Ok(location) => self.sink.in_transit(
                            self.round,
                            InTransitEntry {
                                from,
                                to,
                                seq,
                                location,
                            },
                        ),
                        Err(e) => {
                            // Missing records keep the counts unbalanced: the attempt times
                            // out and aborts, which is correct if slow.
                            tracing::error!(checkpoint = %self.id, round = %self.round, error = %e, "writing an in-transit message failed; the checkpoint will time out");
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
}
