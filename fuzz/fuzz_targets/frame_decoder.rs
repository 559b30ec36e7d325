//! Arbitrary bytes, as a peer would send them to a listener, through the length-delimited
//! codec, the handshake (hello parsing, version and role checks, token proof) and the typed
//! decoding of the frames after it: the server's real read path, via `replay_as_server`.
//!
//! The first input byte picks the setup, so one target covers every branch:
//! bit 0 set: the listener requires a token; bit 1 set: frames decode as a typed `Sample`
//! rather than as any msgpack value.

#![no_main]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use cohort_wire::{ListenConfig, Secret, SeededNonces, replay_as_server};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// A message shaped like the coordinator's: an enum with struct, sequence and map variants.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // only decoded
enum Sample {
    Vote { round: u64, yes: bool },
    Objects(Vec<String>),
    Meta(BTreeMap<String, Option<i64>>),
}

fn config(token: Option<&str>) -> ListenConfig {
    ListenConfig {
        token: token.map(|token| Secret::new(token).expect("the fuzz token is long enough")),
        max_frame_len: 64 * 1024,
        // Seeded, so that a crash replays exactly.
        nonces: Arc::new(SeededNonces::new(0)),
        ..ListenConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

static OPEN: LazyLock<ListenConfig> = LazyLock::new(|| config(None));
static GUARDED: LazyLock<ListenConfig> = LazyLock::new(|| config(Some("fuzzing-shared-token")));

fuzz_target!(|data: &[u8]| {
    let Some((&setup, input)) = data.split_first() else {
        return;
    };
    let config = if setup & 1 == 0 { &*OPEN } else { &*GUARDED };
    let replay_ok = if setup & 2 == 0 {
        let replay = replay_as_server::<IgnoredAny>(input, config);
        replay.peer.is_some() || replay.error.is_some()
    } else {
        let replay = replay_as_server::<Sample>(input, config);
        replay.peer.is_some() || replay.error.is_some()
    };
    // A failed handshake must always say why.
    assert!(replay_ok);
});
