//! A node's writer of one attempt: encodes its objects' captured states into segments of its
//! own (writer token = node name), and once they are durable sends every vote in one frame.
//! In-transit messages go to a channel segment, sealed when the coordinator asks.

use std::collections::BTreeSet;

use cohort_checkpoint::{CheckpointStore, InTransitEntry, SegmentWriter};
use cohort_object_api::{CheckpointId, EncodedState, ObjectId, Snapshot};
use tokio::sync::mpsc;

use crate::engine::Round;
use crate::service::protocol::{NodeFrame, WireVote};

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
    Seal,
}

pub(crate) struct Captured {
    pub(crate) object: ObjectId,
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) generation: Option<u64>,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// How long the object was blocked by prepare and capture.
    pub(crate) pause: std::time::Duration,
}

pub(crate) struct NodeWriter {
    pub(crate) id: CheckpointId,
    pub(crate) round: Round,
    pub(crate) token: String,
    pub(crate) node: String,
    pub(crate) participants: BTreeSet<ObjectId>,
    pub(crate) store: CheckpointStore,
    pub(crate) out: mpsc::UnboundedSender<NodeFrame>,
}

impl NodeWriter {
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
        let mut states = Some(self.store.segment_writer(self.id, &self.token, &self.node));
        let mut channel: Option<SegmentWriter> = None;
        let mut votes: Vec<(ObjectId, WireVote)> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut refused = false;
        let mut pause_max = std::time::Duration::ZERO;
        if self.participants.is_empty() {
            self.send_votes(Vec::new(), 0, pause_max);
        }
        while let Some(msg) = rx.recv().await {
            match msg {
                WriterMsg::State(c) => {
                    if refused
                        || !self.participants.contains(&c.object)
                        || !seen.insert(c.object.clone())
                    {
                        continue;
                    }
                    pause_max = pause_max.max(c.pause);
                    let entry = match (&c.snapshot, states.as_mut()) {
                        (None, _) => None,
                        (Some(snapshot), Some(w)) => match w.add(&c.object, snapshot).await {
                            Ok(location) => Some(cohort_checkpoint::ObjectEntry {
                                type_name: snapshot.tag().type_name.to_string(),
                                version: snapshot.tag().version,
                                generation: c.generation,
                                location,
                            }),
                            Err(e) => {
                                refused = true;
                                self.send_votes(
                                    vec![(
                                        c.object,
                                        WireVote::No {
                                            reason: format!("writing its state failed: {e}"),
                                        },
                                    )],
                                    0,
                                    pause_max,
                                );
                                continue;
                            }
                        },
                        (Some(_), None) => continue,
                    };
                    votes.push((
                        c.object,
                        WireVote::Yes {
                            entry,
                            sent: c.sent,
                            received: c.received,
                        },
                    ));
                    if votes.len() == self.participants.len() {
                        let Some(w) = states.take() else { continue };
                        match w.finish().await {
                            Ok(summary) => self.send_votes(
                                std::mem::take(&mut votes),
                                summary.bytes,
                                pause_max,
                            ),
                            Err(e) => {
                                refused = true;
                                let object = votes[0].0.clone();
                                self.send_votes(
                                    vec![(
                                        object,
                                        WireVote::No {
                                            reason: format!(
                                                "finishing the node's segment failed: {e}"
                                            ),
                                        },
                                    )],
                                    0,
                                    pause_max,
                                );
                            }
                        }
                    }
                }
                WriterMsg::No { object, reason } => {
                    if !refused
                        && self.participants.contains(&object)
                        && seen.insert(object.clone())
                    {
                        refused = true;
                        self.send_votes(vec![(object, WireVote::No { reason })], 0, pause_max);
                    }
                }
                WriterMsg::InTransit {
                    from,
                    to,
                    seq,
                    state,
                } => {
                    let w = channel.get_or_insert_with(|| {
                        self.store.segment_writer(
                            self.id,
                            &self.token,
                            &format!("{}-ch", self.node),
                        )
                    });
                    match w.add_encoded(&to, &state).await {
                        Ok(location) => {
                            let _ = self.out.send(NodeFrame::ChannelState {
                                round: self.round,
                                entries: vec![InTransitEntry {
                                    from,
                                    to,
                                    seq,
                                    location,
                                }],
                            });
                        }
                        Err(e) => {
                            tracing::error!(checkpoint = %self.id, round = %self.round, error = %e, "writing an in-transit message failed; the checkpoint will time out");
                        }
                    }
                }
                WriterMsg::Seal => {
                    let result = match channel.take() {
                        None => Ok(()),
                        Some(w) => w.finish().await.map(|_| ()).map_err(|e| e.to_string()),
                    };
                    let _ = self.out.send(NodeFrame::Sealed {
                        round: self.round,
                        result,
                    });
                }
            }
        }
    }

    fn send_votes(
        &self,
        votes: Vec<(ObjectId, WireVote)>,
        bytes: u64,
        pause_max: std::time::Duration,
    ) {
        let _ = self.out.send(NodeFrame::Votes {
            round: self.round,
            votes,
            bytes,
            pause_max_us: u64::try_from(pause_max.as_micros()).unwrap_or(u64::MAX),
        });
    }
}
