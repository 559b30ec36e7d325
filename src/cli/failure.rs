//! How errors leave the CLI: one line on stderr, a hint where one helps, and an exit code.
//!
//! Commands return `anyhow::Result`; the reporter walks the cause chain to pick the exit code
//! and the hint, so a command only has to attach a [`Failure`] (or let a store error through).

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use cohort_checkpoint::Error as StoreError;
use cohort_object_api::ErrorKind;

use crate::cli::output::Paint;

/// The documented exit codes; `--help` prints [`EXIT_CODES_HELP`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// Everything was fine.
    Ok = 0,
    /// Damage was found, or the operation was refused or declined.
    Failure = 1,
    /// The command line, the configuration or the store could not be used.
    Error = 2,
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> Self {
        ExitCode::from(code as u8)
    }
}

/// The exit-code section of `cohort --help`.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success: the store is readable and everything checked is intact
  1  damage found (a missing, truncated or corrupt blob), or the operation was refused or
     declined (for example a rollback while a coordinator holds the lease)
  2  usage, IO or configuration error: a bad argument or URL, an unknown checkpoint or object,
     an unreachable store";

/// An error that knows its exit code and, where one helps, what to do about it.
#[derive(Debug)]
pub(crate) struct Failure {
    code: Code,
    message: String,
    hint: Option<String>,
}

impl Failure {
    /// Damage found in the store's content: exit 1.
    pub(crate) fn damaged(message: impl Into<String>) -> Self {
        Self {
            code: Code::Failure,
            message: message.into(),
            hint: None,
        }
    }

    /// The operation was refused or declined: exit 1.
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self {
            code: Code::Failure,
            message: message.into(),
            hint: None,
        }
    }

    /// A usage or configuration problem: exit 2.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: Code::Error,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds what the user can do about it.
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Code {
    /// The exit code of an error of `kind`: damage, a refusal and a fence are answers about the
    /// store or the cohort (1); everything else means the command could not do its work (2).
    pub(crate) fn of(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Data | ErrorKind::Refused | ErrorKind::Fenced => Code::Failure,
            _ => Code::Error,
        }
    }
}

/// The exit code and hint for `err`: the first [`Failure`], or the first error of a cohort
/// crate (whose kind decides), in the chain.
pub(crate) fn classify(err: &anyhow::Error) -> (Code, Option<String>) {
    for cause in err.chain() {
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return (failure.code, failure.hint.clone());
        }
        if let Some(kind) = kind_of(cause) {
            let hint = cause
                .downcast_ref::<StoreError>()
                .and_then(crate::cli::store::hint);
            return (Code::of(kind), hint);
        }
    }
    (Code::Error, None)
}

/// The kind of an error of one of cohort's crates.
fn kind_of(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    if let Some(e) = cause.downcast_ref::<StoreError>() {
        return Some(e.kind());
    }
    if let Some(e) = cause.downcast_ref::<cohort_coordinator::Error>() {
        return Some(e.kind());
    }
    if let Some(e) = cause.downcast_ref::<cohort_wire::Error>() {
        return Some(e.kind());
    }
    if let Some(e) = cause.downcast_ref::<cohort_replication::Error>() {
        return Some(e.kind());
    }
    cause
        .downcast_ref::<cohort_object_api::ObjectError>()
        .map(cohort_object_api::ObjectError::kind)
}

/// True when the error is only a closed pipe on stdout (`cohort list | head`): not worth a word.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let kind = match cause.downcast_ref::<io::Error>() {
            Some(e) => Some(e.kind()),
            // JSON output fails inside serde_json, which wraps the io error.
            None => cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind),
        };
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Prints `error: <cause chain>` on one line, then the hint, to stderr.
pub(crate) fn report(err: &anyhow::Error, hint: Option<&str>) {
    let style = crate::cli::output::Styles::stderr();
    // One line, whatever the causes hold: some servers put newlines in their messages.
    let message = one_line(&format!("{err:#}"));
    let mut stderr = anstream::stderr().lock();
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(stderr, "{}: {message}", style.error.paint("error"));
    if let Some(hint) = hint {
        let _ = writeln!(stderr, "{}: {}", style.hint.paint("hint"), one_line(hint));
    }
}

fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_their_code_under_context() {
        let err =
            anyhow::Error::new(Failure::refused("no").hint("say yes")).context("rolling back to 3");
        assert_eq!(classify(&err), (Code::Failure, Some("say yes".into())));
        let err = anyhow::anyhow!("plain");
        assert_eq!(classify(&err), (Code::Error, None));
    }

    #[test]
    fn kinds_pick_the_exit_code() {
        let fenced = anyhow::Error::new(cohort_coordinator::Error::Fenced { epoch: 2 })
            .context("taking a checkpoint");
        assert_eq!(classify(&fenced).0, Code::Failure);
        let unreachable = anyhow::Error::new(cohort_wire::Error::Connect {
            addr: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(classify(&unreachable), (Code::Error, None));
        let missing = anyhow::Error::new(StoreError::NotFound {
            what: "manifest 7".into(),
            url: "memory:///".into(),
        });
        let (code, hint) = classify(&missing);
        assert_eq!(code, Code::Error);
        assert!(hint.is_some_and(|h| h.contains("cohort list")));
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\n  b\r\n\nc"), "a b c");
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("x");
        assert!(is_broken_pipe(&err));
        let json = serde_json::Error::io(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&anyhow::Error::new(json)));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
