//! The one public error type of this crate.

use crate::{ErrorKind, StateTag};

/// Everything that can go wrong between an object and its stored state.
///
/// The variants are grouped by what the caller should do about them:
///
/// - **fix the input**: [`InvalidObjectId`](Self::InvalidObjectId),
///   [`InvalidCheckpointId`](Self::InvalidCheckpointId);
/// - **restore from elsewhere or migrate**: the stored state does not fit the code that reads it
///   ([`TypeMismatch`](Self::TypeMismatch), [`FutureVersion`](Self::FutureVersion),
///   [`NoMigration`](Self::NoMigration), [`Decode`](Self::Decode));
/// - **fix the object**: its state cannot be encoded ([`Encode`](Self::Encode));
/// - **retry later**: the object declined for now ([`Refused`](Self::Refused));
/// - **look at the application's own error**: [`Application`](Self::Application).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// An object id broke the naming rules; ids become storage keys.
    #[error(
        "invalid object id {id:?}: {reason}; use 1-200 ASCII letters, digits and - _ . : @ + =, without '..' or a leading '.'"
    )]
    InvalidObjectId {
        /// The rejected id, with control characters escaped; its first 64 characters and its
        /// length when it is longer.
        id: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// A checkpoint id was not a non-negative integer.
    #[error("invalid checkpoint id {id:?}: expected a number such as 42 or 00000000000000000042")]
    InvalidCheckpointId {
        /// The rejected text, escaped; its first 64 characters and its length when longer.
        id: String,
    },

    /// The stored state belongs to another type than the object restoring it.
    #[error(
        "cannot restore a {found} state into a {expected}: the checkpoint holds another type under this object id"
    )]
    TypeMismatch {
        /// The type name of the object restoring.
        expected: String,
        /// The type name recorded with the state.
        found: String,
    },

    /// The stored state was written by a newer schema than this build understands.
    #[error(
        "state of {type_name} has schema version {found}, newer than the supported {supported}: upgrade this binary before restoring"
    )]
    FutureVersion {
        /// The type name.
        type_name: String,
        /// The version recorded with the state.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// The stored state is older than the current schema and the type has no migration.
    #[error(
        "state of {type_name} has schema version {found} but the current version is {current} and no migration is defined: add #[checkpoint(migrate = \"path\")]"
    )]
    NoMigration {
        /// The type name.
        type_name: String,
        /// The version recorded with the state.
        found: u32,
        /// The current schema version.
        current: u32,
    },

    /// The payload did not decode into the expected shape.
    #[error("cannot decode state of {tag}: {source}")]
    Decode {
        /// The tag of the state that failed.
        tag: StateTag,
        /// The msgpack decoder's complaint.
        #[source]
        source: rmp_serde::decode::Error,
    },

    /// The object's state could not be encoded.
    #[error("cannot encode state of {type_name}: {source}")]
    Encode {
        /// The type name.
        type_name: String,
        /// The msgpack encoder's complaint.
        #[source]
        source: rmp_serde::encode::Error,
    },

    /// The object declined to take part in a checkpoint; the checkpoint aborts and is retried.
    #[error("object refused the checkpoint: {reason}")]
    Refused {
        /// Why, in the object's words.
        reason: String,
    },

    /// An error of the application's own, raised from one of its hooks.
    #[error(transparent)]
    Application(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl ObjectError {
    /// What to do about it: [`ErrorKind::Invalid`] for a bad id, [`ErrorKind::Data`] for a state
    /// that does not fit or encode, [`ErrorKind::Refused`] when the object declined, and
    /// [`ErrorKind::Refused`] for the application's own errors (its hook said no).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidObjectId { .. } | Self::InvalidCheckpointId { .. } => ErrorKind::Invalid,
            Self::TypeMismatch { .. }
            | Self::FutureVersion { .. }
            | Self::NoMigration { .. }
            | Self::Decode { .. }
            | Self::Encode { .. } => ErrorKind::Data,
            Self::Refused { .. } | Self::Application(_) => ErrorKind::Refused,
        }
    }

    /// Wraps an application error raised in a hook.
    pub fn application(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Application(error.into())
    }
}
