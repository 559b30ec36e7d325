//! The request log: batches of client requests in the group's [`FencedLog`](super::FencedLog).
//!
//! The passive styles log every request before executing it, and acknowledge the append
//! before the reply; the active style's replicas execute the log in sequence order (the log
//! is the sequencer). One log entry holds one batch: the requests a server received while its
//! previous append was in flight (group commit), so that appends do not limit throughput.
//!
//! An entry's data is a msgpack map with named fields, `{ requests: [{ client, id, acked,
//! body }] }`, inside the fenced log's framed, crc-checked record. Fence entries are skipped.
//!
//! Readers go through the [`ReplicatedServer`](super::server::ReplicatedServer)'s driver,
//! which verifies its position after each read ([`FencedLog::holds`](super::FencedLog::holds)),
//! because the log is truncated below each checkpoint.

use bytes::Bytes;
use cohort_object_api::{EncodedState, StateTag};
use serde::{Deserialize, Serialize};

use super::replies::ClientId;
use crate::Error;

/// The type name of a logged batch when it is handed to
/// [`Updateable::apply_update`](cohort_object_api::Updateable::apply_update).
pub const BATCH_TYPE: &str = "cohort.replication.batch";

/// One client request, as logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// The client proxy.
    pub client: ClientId,
    /// The request's number under that client, from 1.
    pub id: u64,
    /// The client's acknowledged watermark when it sent the request.
    pub acked: u64,
    /// The request, for the service.
    pub body: Bytes,
}

/// The requests of one log entry, in execution order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests.
    pub requests: Vec<LoggedRequest>,
}

impl Batch {
    /// Encodes the batch as a log entry's data.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] if it cannot be encoded (it always can).
    pub fn encode(&self) -> Result<Bytes, Error> {
        rmp_serde::to_vec_named(self)
            .map(Bytes::from)
            .map_err(|e| Error::InvalidRequest {
                reason: format!("a batch of requests cannot be encoded: {e}"),
            })
    }

    /// Decodes a log entry's data.
    ///
    /// # Errors
    ///
    /// [`Error::DamagedLog`] naming the entry.
    pub fn decode(seq: u64, data: &[u8]) -> Result<Self, Error> {
        rmp_serde::from_slice(data).map_err(|e| Error::DamagedLog {
            seq,
            reason: e.to_string(),
        })
    }

    /// The batch logged at `seq` as the update that
    /// [`Updateable::apply_update`](cohort_object_api::Updateable::apply_update) takes (FT-CORBA
    /// `set_update`): tagged [`BATCH_TYPE`], version 1; the payload is the sequence number
    /// (8 bytes, big-endian) followed by the logged data.
    pub fn to_update(seq: u64, data: Bytes) -> EncodedState {
        let mut payload = Vec::with_capacity(data.len() + 9);
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.extend_from_slice(&data);
        EncodedState::new(StateTag::new(BATCH_TYPE, 1), Bytes::from(payload))
    }

    /// The inverse of [`to_update`](Self::to_update): the sequence number and the batch.
    ///
    /// # Errors
    ///
    /// [`Error::DamagedLog`] for another tag or undecodable bytes.
    pub fn from_update(update: &EncodedState) -> Result<(u64, Self), Error> {
        let payload = update.payload();
        if update.tag().type_name != BATCH_TYPE || payload.len() < 8 {
            return Err(Error::DamagedLog {
                seq: 0,
                reason: format!(
                    "an update of type {} ({} bytes) is not a logged batch",
                    update.tag().type_name,
                    payload.len()
                ),
            });
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&payload[..8]);
        let seq = u64::from_be_bytes(seq);
        Ok((seq, Self::decode(seq, &payload[8..])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_as_updates() {
        let batch = Batch {
            requests: vec![LoggedRequest {
                client: ClientId::new("c").unwrap(),
                id: 7,
                acked: 5,
                body: Bytes::from_static(b"put"),
            }],
        };
        let update = Batch::to_update(42, batch.encode().unwrap());
        assert_eq!(Batch::from_update(&update).unwrap(), (42, batch));
        let other = EncodedState::new(StateTag::new("other", 1), Bytes::new());
        assert!(Batch::from_update(&other).is_err());
        let cut = Batch::to_update(1, Bytes::from_static(b"\x91"));
        assert!(Batch::from_update(&cut).is_err());
    }
}
