//! Storage keys, relative to a store's prefix. Every key is built only from validated parts, and
//! every key read back (from a listing or a manifest) is parsed before it is used, so that no
//! input can address a blob outside the layout.

use cohort_object_api::CheckpointId;

use crate::error::{Error, Result};

pub(crate) const MANIFESTS: &str = "manifests";
pub(crate) const SEGMENTS: &str = "segments";
pub(crate) const EPOCHS: &str = "epochs";
pub(crate) const PINS: &str = "pins";
pub(crate) const PROBE: &str = "probe";
/// Ingress logs: `ingress/<name>/…` (see `ingress.rs`).
pub(crate) const INGRESS: &str = "ingress";

const MANIFEST_EXT: &str = ".manifest";
const SEGMENT_EXT: &str = ".seg";
const EPOCH_EXT: &str = ".epoch";
const LEASE_EXT: &str = ".lease";

/// The longest round or writer token accepted.
pub(crate) const MAX_TOKEN_LEN: usize = 64;

/// What a channel writer's token ends with: a writer named `<name>` writes the states of its
/// objects, and `<name>.ch` the in-transit messages it recorded. No token holds a `.`, so the
/// two writers of any two names can never produce the same key.
pub(crate) const CHANNEL_SUFFIX: &str = ".ch";

/// Checks a round or writer token: 1 to 64 of `[A-Za-z0-9_-]`.
pub(crate) fn validate_token(what: &str, token: &str) -> Result<()> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Error::InvalidInput(format!(
            "{what} token {:?} must be 1 to {MAX_TOKEN_LEN} characters",
            token.escape_debug().to_string()
        )));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::InvalidInput(format!(
            "{what} token {:?} may hold only A-Z a-z 0-9 _ -",
            token.escape_debug().to_string()
        )));
    }
    Ok(())
}

fn is_token(token: &str) -> bool {
    validate_token("", token).is_ok()
}

/// The writer token of the channel-state segments of the writer called `name`; see
/// [`CHANNEL_SUFFIX`].
pub(crate) fn channel_writer(name: &str) -> String {
    format!("{name}{CHANNEL_SUFFIX}")
}

/// Checks a writer token: a token (`[A-Za-z0-9_-]`, 1 to 64), optionally followed by
/// [`CHANNEL_SUFFIX`].
pub(crate) fn validate_writer(writer: &str) -> Result<()> {
    validate_token(
        "writer",
        writer.strip_suffix(CHANNEL_SUFFIX).unwrap_or(writer),
    )
}

fn is_writer(writer: &str) -> bool {
    validate_writer(writer).is_ok()
}

fn parse_padded(digits: &str) -> Option<u64> {
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub(crate) fn manifest(id: CheckpointId) -> String {
    format!("{MANIFESTS}/{}{MANIFEST_EXT}", id.padded())
}

pub(crate) fn parse_manifest(key: &str) -> Option<CheckpointId> {
    let name = key.strip_prefix(MANIFESTS)?.strip_prefix('/')?;
    parse_padded(name.strip_suffix(MANIFEST_EXT)?).map(CheckpointId::new)
}

/// The folder of one attempt's segments, relative to `segments/`: `<id>/<round>`.
pub(crate) fn round_dir(id: CheckpointId, round: &str) -> String {
    format!("{}/{round}", id.padded())
}

pub(crate) fn segment(id: CheckpointId, round: &str, writer: &str, seq: u64) -> String {
    format!(
        "{SEGMENTS}/{}/{round}/{writer}-{seq:06}{SEGMENT_EXT}",
        id.padded()
    )
}

/// The parts of a segment key `segments/<id>/<round>/<writer>-<seq>.seg`, where `<writer>` is
/// a token, or a token followed by [`CHANNEL_SUFFIX`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentKey<'a> {
    pub(crate) checkpoint: CheckpointId,
    pub(crate) round: &'a str,
}

pub(crate) fn parse_segment(key: &str) -> Option<SegmentKey<'_>> {
    let rest = key.strip_prefix(SEGMENTS)?.strip_prefix('/')?;
    let (id, rest) = rest.split_once('/')?;
    let (round, name) = rest.split_once('/')?;
    let stem = name.strip_suffix(SEGMENT_EXT)?;
    let (writer, seq) = stem.rsplit_once('-')?;
    let ok = is_token(round)
        && is_writer(writer)
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(())?;
    Some(SegmentKey {
        checkpoint: CheckpointId::new(parse_padded(id)?),
        round,
    })
}

/// A segment key, or the staging file `<segment key>#<n>` that a crashed write of one left on
/// local disk: the blobs under `segments/` that are cohort's own. Anything else there (a
/// README, an editor's backup) is not, and GC leaves it alone.
pub(crate) fn parse_segment_blob(key: &str) -> Option<SegmentKey<'_>> {
    let key = match key.rsplit_once('#') {
        Some((segment, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => segment,
        Some(_) => return None,
        None => key,
    };
    parse_segment(key)
}

pub(crate) fn epoch(epoch: u64) -> String {
    format!("{EPOCHS}/{epoch:020}{EPOCH_EXT}")
}

/// The lease of an epoch: beside its record, so that listing `epochs/` still finds only
/// records (`parse_epoch` refuses the extension).
pub(crate) fn epoch_lease(epoch: u64) -> String {
    format!("{EPOCHS}/{epoch:020}{LEASE_EXT}")
}

pub(crate) fn parse_epoch(key: &str) -> Option<u64> {
    let name = key.strip_prefix(EPOCHS)?.strip_prefix('/')?;
    parse_padded(name.strip_suffix(EPOCH_EXT)?)
}

pub(crate) fn pin(id: CheckpointId) -> String {
    format!("{PINS}/{}", id.padded())
}

pub(crate) fn parse_pin(key: &str) -> Option<CheckpointId> {
    parse_padded(key.strip_prefix(PINS)?.strip_prefix('/')?).map(CheckpointId::new)
}

pub(crate) fn probe(token: &str) -> String {
    format!("{PROBE}/{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let id = CheckpointId::new(42);
        assert_eq!(
            manifest(id),
            "manifests/00000000000000000042.manifest".to_string()
        );
        assert_eq!(parse_manifest(&manifest(id)), Some(id));
        let seg = segment(id, "e3-r17", "node-2", 5);
        assert_eq!(
            seg,
            "segments/00000000000000000042/e3-r17/node-2-000005.seg"
        );
        let parsed = parse_segment(&seg).unwrap();
        assert_eq!(parsed.checkpoint, id);
        assert_eq!(parsed.round, "e3-r17");
        assert_eq!(parse_epoch(&epoch(7)), Some(7));
        assert_eq!(epoch_lease(7), "epochs/00000000000000000007.lease");
        assert_eq!(parse_epoch(&epoch_lease(7)), None);
        assert_eq!(parse_pin(&pin(id)), Some(id));
    }

    #[test]
    fn rejects_keys_outside_the_layout() {
        for bad in [
            "segments/00000000000000000042/../x-1.seg",
            "segments/00000000000000000042/r/../../etc-1.seg",
            "../segments/00000000000000000042/r/w-1.seg",
            "segments/42/r/w-1.seg",
            "segments/00000000000000000042/r/w-1.seg/x",
            "segments/00000000000000000042/r/w.seg",
            "segments/00000000000000000042/r/w-1.txt",
            "/etc/passwd",
            "",
        ] {
            assert!(parse_segment(bad).is_none(), "{bad}");
        }
        assert!(parse_manifest("manifests/42.manifest").is_none());
        assert!(parse_manifest("manifests/0000000000000000004x.manifest").is_none());
    }

    #[test]
    fn channel_writers_parse_and_stay_apart_from_states_writers() {
        let id = CheckpointId::new(7);
        let channel = segment(id, "e1-r1", &channel_writer("eu"), 0);
        assert_eq!(
            channel,
            "segments/00000000000000000007/e1-r1/eu.ch-000000.seg"
        );
        assert_eq!(parse_segment(&channel).unwrap().checkpoint, id);
        // The key that node `eu`'s channel writer used to share with node `eu-ch`.
        assert_ne!(channel, segment(id, "e1-r1", "eu-ch", 0));
        assert!(validate_writer(&channel_writer("eu")).is_ok());
        for bad in ["eu.ch.ch", ".ch", "eu.c", "eu.chx", "e.u"] {
            assert!(validate_writer(bad).is_err(), "{bad}");
            assert!(
                parse_segment(&format!("segments/00000000000000000007/r/{bad}-000000.seg"))
                    .is_none(),
                "{bad}"
            );
        }
        // Old stores keep their keys: a channel writer called `<node>-ch` is a plain token.
        assert!(parse_segment("segments/00000000000000000007/r/node-0-ch-000000.seg").is_some());
    }

    proptest::proptest! {
        /// Any two writer tokens and sequence numbers, states or channel, give the same key only
        /// when they are the same writer of the same kind and the same sequence number.
        #[test]
        fn segment_keys_never_collide(
            a in "[A-Za-z0-9_-]{1,48}",
            b in "[A-Za-z0-9_-]{1,48}",
            a_channel: bool,
            b_channel: bool,
            a_seq in 0u64..2_000_000,
            b_seq in 0u64..2_000_000,
        ) {
            let writer = |name: &str, channel: bool| {
                if channel { channel_writer(name) } else { name.to_owned() }
            };
            let id = CheckpointId::new(3);
            let ka = segment(id, "e1-r1", &writer(&a, a_channel), a_seq);
            let kb = segment(id, "e1-r1", &writer(&b, b_channel), b_seq);
            let same = a == b && a_channel == b_channel && a_seq == b_seq;
            proptest::prop_assert_eq!(ka == kb, same, "{} {}", ka, kb);
            proptest::prop_assert!(parse_segment(&ka).is_some(), "{}", ka);
        }

        /// The collision of issue 14 in particular: `X`'s channel writer against any states
        /// writer whose name starts with `X`.
        #[test]
        fn a_channel_writer_never_meets_a_states_writer(
            name in "[A-Za-z0-9_-]{1,45}",
            tail in "[A-Za-z0-9_-]{0,3}",
            seq in 0u64..1_000,
        ) {
            let id = CheckpointId::new(3);
            let channel = segment(id, "r", &channel_writer(&name), seq);
            for other_seq in [0, seq, seq + 1] {
                let states = segment(id, "r", &format!("{name}{tail}"), other_seq);
                proptest::prop_assert_ne!(&channel, &states);
                let states = segment(id, "r", &format!("{name}-ch{tail}"), other_seq);
                proptest::prop_assert_ne!(&channel, &states);
            }
        }
    }

    #[test]
    fn segment_blobs_are_segments_and_their_staging_files() {
        let seg = "segments/00000000000000000042/e1-r1/w-000000.seg";
        assert!(parse_segment_blob(seg).is_some());
        assert!(parse_segment_blob(&format!("{seg}#1")).is_some());
        for stray in [
            format!("{seg}#"),
            format!("{seg}#x"),
            format!("{seg}.bak"),
            "segments/00000000000000000042/README.txt".to_owned(),
            "segments/00000000000000000042/e1-r1/notes.txt".to_owned(),
            "segments/00000000000000000042/e1-r1/link/w-000000.seg".to_owned(),
        ] {
            assert!(parse_segment_blob(&stray).is_none(), "{stray}");
        }
    }

    #[test]
    fn tokens() {
        assert!(validate_token("round", "e3-r17").is_ok());
        for bad in ["", "a/b", "a.b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_token("round", bad).is_err(), "{bad}");
        }
    }
}
