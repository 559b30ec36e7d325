//! Untrusted bytes through the server's real read path, for fuzzing and property tests.

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::codec::FrameBudget;
use super::handshake::{self, Admission, PeerInfo, Seats};
use super::{Connection, ListenConfig};
use crate::Error;

/// The address that [`replay_as_server`] reports for its imaginary peer.
pub const REPLAY_PEER: &str = "replay";

/// What a server made of the bytes a peer sent, from [`replay_as_server`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Replay<In> {
    /// The peer, if the bytes passed the handshake.
    pub peer: Option<PeerInfo>,
    /// The messages received after the handshake, in order.
    pub messages: Vec<In>,
    /// Why the server stopped reading, if not at a clean end of the stream.
    pub error: Option<Error>,
}

/// Plays `input` to a server as if a peer had sent it and then closed the connection, through
/// the same handshake and receive code a live listener runs, and reports how the server
/// reacted. What the server writes back is discarded.
///
/// This is the entry point of the `frame_decoder` fuzz target and of the property test that
/// feeds arbitrary bytes: it must return, never panic, for every input.
pub fn replay_as_server<In: DeserializeOwned>(input: &[u8], config: &ListenConfig) -> Replay<In> {
    let mut replay = Replay {
        peer: None,
        messages: Vec::new(),
        error: None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            replay.error = Some(Error::Io {
                peer: REPLAY_PEER.to_owned(),
                source,
            });
            return replay;
        }
    };
    runtime.block_on(async {
        let stream = tokio::io::join(input, tokio::io::sink());
        let local = config.local();
        let never = CancellationToken::new();
        let seats = Seats::new(config.limits);
        let budget = FrameBudget::new(config.max_frame_bytes_in_flight);
        let admission = Admission {
            seats: &seats,
            budget: &budget,
            evict: &never,
        };
        match handshake::accept(stream, REPLAY_PEER, &local, &never, admission).await {
            Ok(Some((wire, info, _seat))) => {
                replay.peer = Some(info.clone());
                let mut connection = Connection::<In, (), _>::new(wire, info, config.max_frame_len);
                loop {
                    match connection.recv().await {
                        Ok(Some(message)) => replay.messages.push(message),
                        Ok(None) => break,
                        Err(err) => {
                            replay.error = Some(err);
                            break;
                        }
                    }
                }
            }
            // Only a cancelled token stops a handshake this way, and `never` is not cancelled.
            Ok(None) => {}
            Err(err) => replay.error = Some(err),
        }
    });
    replay
}
