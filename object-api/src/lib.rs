//! The object API of [cohort](https://docs.rs/cohort): the [`Checkpointable`] trait that every
//! application object implements, usually with `#[derive(Checkpointable)]`, and the types it
//! sees.
//!
//! ```
//! use cohort_object_api::{Checkpointable, ObjectId};
//!
//! #[derive(Checkpointable, Default)]
//! struct Account {
//!     balance: i64,
//!     history: Vec<i64>,
//!     #[checkpoint(skip)]
//!     cache_hits: u64,
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut account = Account { balance: 10, history: vec![10], cache_hits: 3 };
//! let encoded = account.capture().await.unwrap().encode().unwrap();
//! account.balance = 0;
//! account.restore(&encoded).await.unwrap();
//! assert_eq!(account.balance, 10);
//! assert_eq!(account.cache_hits, 0); // skipped fields come back as their default
//! # });
//! ```

mod clock;
mod error;
mod id;
mod kind;
mod state;

use async_trait::async_trait;

pub use clock::{Clock, ClockSource};
pub use error::ObjectError;
pub use id::{CheckpointId, ObjectId};
pub use kind::ErrorKind;
pub use state::{EncodedState, Snapshot, StateTag, VersionCheck, shared_bytes};

/// `#[derive(Checkpointable)]`: see the [`Checkpointable`] trait for what it generates.
pub use cohort_derive::Checkpointable;

/// An application object whose state cohort checkpoints and restores.
///
/// Modelled on FT-CORBA's `Checkpointable` (`get_state`/`set_state`); see [`Updateable`] for the
/// `get_update`/`set_update` half. The trait is object-safe: a cohort holds
/// `Box<dyn Checkpointable>` for objects of many types.
///
/// # The derive
///
/// `#[derive(Checkpointable)]` works on structs, tuple structs, enums and generic types. The
/// state is the value's fields, encoded with msgpack as named maps, so adding a field with
/// `#[serde(default)]` or reordering fields keeps old checkpoints readable. Field types need
/// `Clone + Serialize + DeserializeOwned + Send + Sync + 'static` (a generic type gets these as
/// bounds on its field types, as serde's derive infers its bounds). `#[serde(...)]` attributes on
/// fields and variants (`default`, `rename`, `with`, `flatten`, ...) are honoured; container-level
/// `#[serde(...)]` attributes are not, because the derive owns the state's layout. Users need no
/// `serde` or `async-trait` dependency of their own. Attributes:
///
/// | attribute | on | meaning |
/// |---|---|---|
/// | `#[checkpoint(skip)]` | field | not saved; restored as `Default::default()` |
/// | `#[checkpoint(skip, default = "path")]` | field | not saved; restored as `path()` |
/// | `#[checkpoint(version = N)]` | container | schema version (default 1) |
/// | `#[checkpoint(migrate = "path")]` | container | `fn(u32, &EncodedState) -> Result<Self, ObjectError>` for older versions |
/// | `#[checkpoint(type_name = "...")]` | container | stable type name (default: the type's identifier) |
/// | `#[checkpoint(generation)]` | field | a `u64` bumped on every change: enables incremental checkpoints |
/// | `#[checkpoint(bound = "...")]` | container | where-clause replacing the inferred bounds |
/// | `#[checkpoint(crate = "path")]` | container | path of the object API; by default found from Cargo.toml: `::cohort_object_api` if it is a dependency, else `::cohort` |
///
/// # Cheap capture
///
/// [`capture`](Self::capture) runs while the object is blocked from handling messages, so it
/// should only build an owned [`Snapshot`]; encoding and upload happen after the object is
/// released. The derive clones the saved fields: keep large fields behind an `Arc` so that the
/// clone is a reference-count increment (see [`Snapshot`]).
#[async_trait]
pub trait Checkpointable: Send + Sync + 'static {
    /// The stable name of this object's type, recorded with every state.
    ///
    /// It must not change across builds; restoring a state recorded under another name fails
    /// with [`ObjectError::TypeMismatch`].
    fn type_name(&self) -> &'static str;

    /// The current schema version of this object's state.
    fn schema_version(&self) -> u32 {
        1
    }

    /// Phase 1: capture the state as an owned snapshot, cheaply.
    ///
    /// Return [`ObjectError::Refused`] to vote no; the checkpoint then aborts.
    async fn capture(&self) -> Result<Snapshot, ObjectError>;

    /// Replace the whole state with `state`, as recovery does.
    ///
    /// Implementations check the tag with [`EncodedState::check`], migrate an older version or
    /// fail with [`ObjectError::NoMigration`], and reject another type or a future version.
    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError>;

    /// A counter that changes whenever the state changes, or `None` if the object does not
    /// track changes.
    ///
    /// When the generation equals the one recorded at the last committed checkpoint, the object
    /// is unchanged since that checkpoint: its entry is referenced, not rewritten. An object
    /// that tracks its generation and has handled nothing since the last committed checkpoint
    /// is not even woken: its host (the in-process coordinator, or its node) counts it in with
    /// its recorded entry, so idle objects cost neither bytes nor a prepare.
    fn generation(&self) -> Option<u64> {
        None
    }

    /// Phase 1 hook, called before [`capture`](Self::capture): flush or pre-commit external side
    /// effects here (Flink's `preCommit`). An error votes no.
    async fn prepare(&mut self, _checkpoint: CheckpointId) -> Result<(), ObjectError> {
        Ok(())
    }

    /// Phase 2 hook: the checkpoint is durable, so side effects held back for it may be released
    /// (Flink's `commit`). Called at least once per committed checkpoint the object was asked to
    /// prepare for. An idle object counted in without being woken (see
    /// [`generation`](Self::generation)) gets neither `prepare` nor this hook: having handled
    /// nothing since its last committed checkpoint, it has nothing staged.
    async fn on_committed(&mut self, _checkpoint: CheckpointId) {}

    /// Phase 2 hook: the checkpoint was aborted; discard what [`prepare`](Self::prepare) staged.
    async fn on_aborted(&mut self, _checkpoint: CheckpointId) {}
}

/// The incremental half of FT-CORBA's state transfer (`get_update`/`set_update`), used by warm
/// passive replication: a backup applies the updates logged since the last checkpoint on top of
/// the restored state.
#[async_trait]
pub trait Updateable: Checkpointable {
    /// Apply one logged update, in log order.
    async fn apply_update(&mut self, update: &EncodedState) -> Result<(), ObjectError>;
}

#[doc(hidden)]
pub mod __private {
    //! Items the derive macro's generated code refers to. Not public API.
    pub use async_trait::async_trait;
    pub use serde;

    /// `Default`, as the derive asks for it for a `#[checkpoint(skip)]` field: through this
    /// trait, a missing `Default` is reported with what to do about it.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` does not implement `Default`, so a `#[checkpoint(skip)]` field of this type cannot be rebuilt on restore",
        label = "skipped field of type `{Self}`",
        note = "implement `Default` for `{Self}`, or name a function that builds the value: `#[checkpoint(skip, default = \"path\")]`"
    )]
    pub trait SkippedDefault: Sized {
        /// The value a skipped field is restored to.
        fn skipped_default() -> Self;
    }

    impl<T: Default> SkippedDefault for T {
        fn skipped_default() -> Self {
            T::default()
        }
    }

    /// The type a `#[checkpoint(generation)]` field must have, with a message that says so.
    #[diagnostic::on_unimplemented(
        message = "a `#[checkpoint(generation)]` field must be a `u64`, not `{Self}`",
        label = "not a `u64`"
    )]
    pub trait GenerationField {
        /// The generation the field holds.
        fn generation(&self) -> u64;
    }

    impl GenerationField for u64 {
        fn generation(&self) -> u64 {
            *self
        }
    }
}
