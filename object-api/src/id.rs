//! Stable identities: [`ObjectId`] names an object within its cohort, [`CheckpointId`] names a
//! checkpoint.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ObjectError;

/// The stable identity of an object within its cohort.
///
/// Ids are chosen by the application (for example `account-17`), because they must stay the same
/// across restarts: recovery finds an object's state by its id. They become storage keys, so they
/// are validated on construction *and* when decoded from a manifest:
///
/// - 1 to [`ObjectId::MAX_LEN`] bytes;
/// - only ASCII letters, digits and `-` `_` `.` `:` `@` `+` `=`;
/// - no `..` anywhere, and no leading `.` (so neither `.` nor `..` nor a hidden name).
///
/// In particular an id can never contain `/`, a control character or a path traversal.
///
/// ```
/// use cohort_object_api::ObjectId;
///
/// let id = ObjectId::new("account-17").unwrap();
/// assert_eq!(id.as_str(), "account-17");
/// assert_eq!(ObjectId::indexed("account", 17).unwrap(), id);
///
/// assert!(ObjectId::new("../etc/passwd").is_err());
/// assert!(ObjectId::new("a/b").is_err());
/// assert!(ObjectId::new("tab\there").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(Arc<str>);

impl ObjectId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Validates `id` and wraps it.
    pub fn new(id: impl AsRef<str>) -> Result<Self, ObjectError> {
        let id = id.as_ref();
        validate(id).map_err(|reason| ObjectError::InvalidObjectId {
            id: shown(id),
            reason,
        })?;
        Ok(Self(Arc::from(id)))
    }

    /// `{prefix}-{index}`, the usual way to name the members of a family of objects.
    pub fn indexed(prefix: &str, index: u64) -> Result<Self, ObjectError> {
        Self::new(format!("{prefix}-{index}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > ObjectId::MAX_LEN {
        return Err("it is longer than 200 bytes");
    }
    if let Some(bad) = id.chars().find(|c| !is_allowed(*c)) {
        return Err(match bad {
            '/' | '\\' => "it contains a path separator",
            c if c.is_control() => "it contains a control character",
            _ => "it contains a character outside A-Z a-z 0-9 - _ . : @ + =",
        });
    }
    if id.starts_with('.') {
        return Err("it starts with '.'");
    }
    if id.contains("..") {
        return Err("it contains '..'");
    }
    Ok(())
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=')
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({:?})", &*self.0)
    }
}

impl FromStr for ObjectId {
    type Err = ObjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for ObjectId {
    type Error = ObjectError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for ObjectId {
    type Error = ObjectError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for ObjectId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ObjectId::new(&*raw).map_err(serde::de::Error::custom)
    }
}

/// The id of a checkpoint: a number that grows by one with every checkpoint the coordinator
/// starts, committed or not.
///
/// Its storage key form is 20 zero-padded digits, so that keys sort the way ids do.
///
/// ```
/// use cohort_object_api::CheckpointId;
///
/// let id = CheckpointId::new(42);
/// assert_eq!(id.to_string(), "42");
/// assert_eq!(id.padded(), "00000000000000000042");
/// assert_eq!(id.next(), CheckpointId::new(43));
/// assert_eq!("00000000000000000042".parse::<CheckpointId>().unwrap(), id);
/// ```
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, Debug,
)]
#[serde(transparent)]
pub struct CheckpointId(u64);

impl CheckpointId {
    /// The id before any checkpoint; no checkpoint is ever given it.
    pub const ZERO: CheckpointId = CheckpointId(0);

    /// Wraps a raw id.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id after this one.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The 20-digit zero-padded form used in storage keys.
    pub fn padded(self) -> String {
        format!("{:020}", self.0)
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for CheckpointId {
    type Err = ObjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .map(Self)
            .map_err(|_| ObjectError::InvalidCheckpointId { id: shown(s) })
    }
}

/// The longest part of a rejected id quoted in an error, in characters.
const SHOWN_LEN: usize = 64;

/// A rejected id as an error quotes it: control characters escaped, and cut to its first
/// [`SHOWN_LEN`] characters with its length in bytes when longer, so that a 100,000-character
/// id makes a one-line error, not a 200 KB one.
fn shown(id: &str) -> String {
    let escaped: String = id.escape_debug().take(SHOWN_LEN + 1).collect();
    if escaped.chars().count() <= SHOWN_LEN {
        return escaped;
    }
    let head: String = escaped.chars().take(SHOWN_LEN).collect();
    format!("{head}... ({} bytes)", id.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_rejected_id_is_quoted_short() {
        let long = "x".repeat(100_000);
        let message = ObjectId::new(&long).unwrap_err().to_string();
        assert!(message.len() < 400, "{} bytes: {message}", message.len());
        assert!(message.contains("(100000 bytes)"), "{message}");
        let message = long.parse::<CheckpointId>().unwrap_err().to_string();
        assert!(message.len() < 400, "{} bytes", message.len());
        // Short ones are quoted whole, escaped.
        let message = ObjectId::new("a\nb/c").unwrap_err().to_string();
        assert!(message.contains(r#""a\\nb/c""#), "{message}");
    }

    #[test]
    fn rejects_everything_that_could_escape_a_prefix() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../b",
            "a/b",
            "a\\b",
            "x..y",
            ".hidden",
            "nul\0",
            "new\nline",
            "tab\t",
            "spa ce",
            "é",
            "%2e%2e",
        ] {
            assert!(ObjectId::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(ObjectId::new("a".repeat(201)).is_err());
    }

    #[test]
    fn accepts_ordinary_names() {
        for good in [
            "a",
            "account-17",
            "shard_3.replica:1",
            "user@host",
            "k=v+w",
            "x.y",
        ] {
            assert!(ObjectId::new(good).is_ok(), "{good:?} was rejected");
        }
        assert!(ObjectId::new("a".repeat(200)).is_ok());
    }

    #[test]
    fn error_names_the_id_and_the_reason() {
        let err = ObjectId::new("a/b").unwrap_err().to_string();
        assert!(
            err.contains("a/b") && err.contains("path separator"),
            "{err}"
        );
    }

    #[test]
    fn decoding_validates() {
        let bytes = rmp_serde::to_vec(&"../../etc").unwrap();
        assert!(rmp_serde::from_slice::<ObjectId>(&bytes).is_err());
        let bytes = rmp_serde::to_vec(&"ok-1").unwrap();
        assert_eq!(
            rmp_serde::from_slice::<ObjectId>(&bytes).unwrap().as_str(),
            "ok-1"
        );
    }
}
