//! Untrusted bytes through the server's real read path (`replay_as_server`, the same entry
//! point as the `frame_decoder` fuzz target): it never panics, and it recovers exactly what a
//! well-formed stream holds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use cohort_wire::Error;
use cohort_wire::{ListenConfig, PROTOCOL_VERSION, Replay, Secret, SeededNonces, replay_as_server};
use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Vote { round: u64, yes: bool },
    Objects(Vec<String>),
    Meta(std::collections::BTreeMap<String, Option<i64>>),
}

#[derive(Serialize)]
struct RawHello<'a> {
    magic: &'a str,
    protocol_version: u16,
    role: &'a str,
    name: &'a str,
    software: &'a str,
    nonce: Bytes,
    proof: Option<Bytes>,
    max_frame_len: u64,
}

const MAX_FRAME: usize = 64 * 1024;

fn config(token: Option<Secret>) -> ListenConfig {
    ListenConfig {
        token,
        max_frame_len: MAX_FRAME,
        nonces: Arc::new(SeededNonces::new(0)),
        ..ListenConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn hello(proof: Option<Vec<u8>>) -> Vec<u8> {
    hello_of_version(PROTOCOL_VERSION, proof)
}

fn hello_of_version(protocol_version: u16, proof: Option<Vec<u8>>) -> Vec<u8> {
    frame(
        &rmp_serde::to_vec_named(&RawHello {
            magic: "cohort",
            protocol_version,
            role: "node",
            name: "prop-node",
            software: "proptest",
            nonce: Bytes::from(vec![5u8; 32]),
            proof: proof.map(Bytes::from),
            max_frame_len: MAX_FRAME as u64,
        })
        .unwrap(),
    )
}

fn message_frames(messages: &[Msg]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|msg| frame(&rmp_serde::to_vec_named(msg).unwrap()))
        .collect()
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (any::<u64>(), any::<bool>()).prop_map(|(round, yes)| Msg::Vote { round, yes }),
        prop::collection::vec(".{0,40}", 0..8).prop_map(Msg::Objects),
        prop::collection::btree_map(".{0,12}", any::<Option<i64>>(), 0..8).prop_map(Msg::Meta),
    ]
}

/// A replay ends either in a clean close or in an error, never both nor neither.
fn check_shape<In>(replay: &Replay<In>) {
    if replay.peer.is_none() {
        assert!(replay.error.is_some(), "a failed handshake must say why");
        assert!(replay.messages.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_shape(&replay_as_server::<IgnoredAny>(&input, &config(None)));
        let token = Secret::new("a token for the property tests").unwrap();
        check_shape(&replay_as_server::<Msg>(&input, &config(Some(token))));
    }

    #[test]
    fn anything_after_a_valid_hello_never_panics(
        tail in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut input = hello(None);
        input.extend_from_slice(&tail);
        let replay = replay_as_server::<Msg>(&input, &config(None));
        prop_assert!(replay.peer.is_some(), "{:?}", replay.error);
        let replay = replay_as_server::<IgnoredAny>(&input, &config(None));
        prop_assert!(replay.peer.is_some(), "{:?}", replay.error);
    }

    #[test]
    fn well_formed_streams_round_trip(messages in prop::collection::vec(msg(), 0..16)) {
        let mut input = hello(None);
        for frame in message_frames(&messages) {
            input.extend_from_slice(&frame);
        }
        let replay = replay_as_server::<Msg>(&input, &config(None));
        prop_assert!(replay.error.is_none(), "{:?}", replay.error);
        prop_assert_eq!(replay.peer.map(|peer| peer.name), Some("prop-node".to_owned()));
        prop_assert_eq!(replay.messages, messages);
    }

    #[test]
    fn a_cut_stream_yields_the_whole_frames_then_truncation(
        messages in prop::collection::vec(msg(), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let hello = hello(None);
        let frames = message_frames(&messages);
        let body: Vec<u8> = frames.concat();
        let cut = cut.index(body.len() + 1);
        let mut input = hello.clone();
        input.extend_from_slice(&body[..cut]);

        let replay = replay_as_server::<Msg>(&input, &config(None));
        let mut whole = 0;
        let mut end = 0;
        for frame in &frames {
            if end + frame.len() > cut {
                break;
            }
            end += frame.len();
            whole += 1;
        }
        prop_assert_eq!(&replay.messages[..], &messages[..whole]);
        if end == cut {
            prop_assert!(replay.error.is_none(), "{:?}", replay.error);
        } else {
            let truncated = matches!(
                replay.error,
                Some(Error::Truncated { buffered, .. }) if buffered > 0
            );
            prop_assert!(truncated, "{:?}", replay.error);
        }
    }

    #[test]
    fn flipped_bits_never_panic(
        messages in prop::collection::vec(msg(), 1..8),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
    ) {
        let mut input = hello(None);
        for frame in message_frames(&messages) {
            input.extend_from_slice(&frame);
        }
        for flip in flips {
            let bit = flip.index(input.len() * 8);
            input[bit / 8] ^= 1 << (bit % 8);
        }
        check_shape(&replay_as_server::<Msg>(&input, &config(None)));
    }

    #[test]
    fn a_forged_proof_is_unauthorized(proof in prop::collection::vec(any::<u8>(), 0..64)) {
        let token = Secret::new("a token for the property tests").unwrap();
        let replay = replay_as_server::<Msg>(&hello(Some(proof)), &config(Some(token)));
        prop_assert!(replay.peer.is_none());
        let unauthorized = matches!(replay.error, Some(Error::Unauthorized { .. }));
        prop_assert!(unauthorized, "{:?}", replay.error);
    }
}

#[test]
fn an_oversized_frame_after_the_hello_is_refused() {
    let mut input = hello(None);
    input.extend_from_slice(&u32::MAX.to_be_bytes());
    let replay = replay_as_server::<Msg>(&input, &config(None));
    assert!(replay.peer.is_some());
    match replay.error {
        Some(Error::FrameTooLarge { len, max, .. }) => {
            assert_eq!((len, max), (u64::from(u32::MAX), MAX_FRAME));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[test]
fn a_deeply_nested_frame_is_refused_without_overflowing_the_stack() {
    let mut input = hello(None);
    let mut deep = vec![0x91u8; 60_000];
    deep.push(0xc0);
    input.extend_from_slice(&frame(&deep));
    let replay = replay_as_server::<IgnoredAny>(&input, &config(None));
    assert!(
        matches!(replay.error, Some(Error::Decode { .. })),
        "{:?}",
        replay.error
    );
}

#[test]
fn an_empty_stream_is_a_close_before_the_handshake() {
    let replay = replay_as_server::<Msg>(&[], &config(None));
    assert!(matches!(
        replay.error,
        Some(Error::Closed {
            during: "handshake",
            ..
        })
    ));
}

/// The outcome a seed must reach.
#[derive(Debug, PartialEq)]
enum Outcome {
    Served { messages: usize },
    Refused(&'static str),
}

fn outcome<In>(replay: &Replay<In>) -> Outcome {
    match (&replay.peer, &replay.error) {
        (Some(_), None) => Outcome::Served {
            messages: replay.messages.len(),
        },
        (_, Some(err)) => Outcome::Refused(match err {
            Error::Garbage { .. } => "garbage",
            Error::VersionMismatch { .. } => "version",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Truncated { .. } => "truncated",
            _ => "other",
        }),
        (None, None) => Outcome::Refused("nothing"),
    }
}

/// The `frame_decoder` fuzz target's seed corpus, `fuzz/seeds/frame_decoder/`, is built from the
/// wire format as spelled out in this file, and each seed reaches the branch it is meant for.
/// Run with `COHORT_WRITE_FUZZ_SEEDS=1` to rewrite the seeds after a change of format.
///
/// A seed's first byte is the target's setup byte: bit 0 makes the listener require the token
/// `fuzzing-shared-token`; bit 1 decodes frames as `Msg` rather than as any value.
#[test]
fn the_fuzz_seeds_are_current_and_reach_their_branch() {
    let messages = vec![
        Msg::Vote {
            round: 3,
            yes: true,
        },
        Msg::Objects(vec!["account-1".to_owned(), "account-2".to_owned()]),
        Msg::Meta([("epoch".to_owned(), Some(7)), ("lease".to_owned(), None)].into()),
    ];
    let frames = message_frames(&messages).concat();
    let with_setup = |setup: u8, parts: &[&[u8]]| {
        let mut seed = vec![setup];
        for part in parts {
            seed.extend_from_slice(part);
        }
        seed
    };
    let seeds: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "open-any-frames",
            with_setup(0, &[&hello(None), &frames]),
            Outcome::Served { messages: 3 },
        ),
        (
            "open-typed-frames",
            with_setup(2, &[&hello(None), &frames]),
            Outcome::Served { messages: 3 },
        ),
        (
            "open-typed-truncated",
            with_setup(2, &[&hello(None), &frames[..frames.len() - 3]]),
            Outcome::Refused("truncated"),
        ),
        (
            "guarded-forged-proof",
            with_setup(3, &[&hello(Some(vec![0; 32])), &frames]),
            Outcome::Refused("unauthorized"),
        ),
        (
            "http-request",
            with_setup(0, &[b"GET / HTTP/1.1\r\nHost: coordinator\r\n\r\n"]),
            Outcome::Refused("garbage"),
        ),
        (
            "future-version",
            with_setup(0, &[&hello_of_version(PROTOCOL_VERSION + 1, None)]),
            Outcome::Refused("version"),
        ),
    ];

    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/frame_decoder");
    let write = std::env::var_os("COHORT_WRITE_FUZZ_SEEDS").is_some();
    let token = Secret::new("fuzzing-shared-token").unwrap();
    for (name, seed, expected) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &seed).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_default();
        assert!(
            stored == seed,
            "fuzz seed {name} is stale; rerun with COHORT_WRITE_FUZZ_SEEDS=1"
        );

        let (&setup, input) = seed.split_first().unwrap();
        let config = config((setup & 1 == 1).then(|| token.clone()));
        let reached = if setup & 2 == 0 {
            outcome(&replay_as_server::<IgnoredAny>(input, &config))
        } else {
            let replay = replay_as_server::<Msg>(input, &config);
            if replay.error.is_none() {
                assert_eq!(replay.messages, messages);
            }
            outcome(&replay)
        };
        assert_eq!(reached, expected, "seed {name}");
    }
}
