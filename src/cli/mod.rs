//! The `cohort` CLI: one module per command, plus the store opener, output and error helpers.
//!
//! `main` parses, sets up logging and colour, and calls [`run`], which returns the exit code or
//! an error; errors are printed once, on one line, by [`failure::report`].

mod certs;
mod checkpoint;
mod control;
mod decode;
mod diff;
mod drain;
mod export;
mod failure;
mod gc;
mod inspect;
mod jsondiff;
mod list;
mod output;
mod pin;
mod recover;
mod remove;
mod rollback;
mod serve;
mod show;
pub(crate) mod status;
pub(crate) mod store;
mod tls;
mod verify;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use failure::{Code, EXIT_CODES_HELP};

const ROOT_EXAMPLES: &str = "\
Examples:
  cohort list --store file:///var/lib/bank/checkpoints
  export COHORT_STORE=s3://bank-checkpoints/prod
  cohort verify
  cohort diff 41 42
  cohort rollback --to 41";

/// Inspect, verify, diff and roll back the checkpoints of a cohort store, and run its
/// coordinators.
///
/// A store is a URL: file:///abs/path (or a plain path), s3://bucket/prefix (configured by the
/// usual AWS_* variables, such as AWS_ENDPOINT_URL and AWS_REGION), or memory://. Every command
/// takes --store, or reads COHORT_STORE.
#[derive(Debug, Parser)]
#[command(
    name = "cohort",
    version,
    after_help = format!("{ROOT_EXAMPLES}\n\n{EXIT_CODES_HELP}"),
    max_term_width = 100,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Log more to stderr: -v for progress, -vv for detail, -vvv for everything. RUST_LOG, when
    /// set, takes precedence.
    #[arg(short, long, action = ArgAction::Count, global = true, help_heading = "Global options")]
    verbose: u8,

    /// When to colour output: auto colours only on a terminal, and never when NO_COLOR is set.
    #[arg(
        long,
        value_enum,
        default_value_t = ColorWhen::Auto,
        global = true,
        value_name = "WHEN",
        help_heading = "Global options"
    )]
    color: ColorWhen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    List(list::Args),
    Show(show::Args),
    Inspect(inspect::Args),
    Export(export::Args),
    Verify(verify::Args),
    Diff(diff::Args),
    Rollback(rollback::Args),
    Gc(gc::Args),
    Pin(pin::PinArgs),
    Unpin(pin::UnpinArgs),
    Serve(Box<serve::Args>),
    Status(status::Args),
    Checkpoint(checkpoint::Args),
    Drain(drain::Args),
    Remove(remove::Args),
    Recover(recover::Args),
    Certs(certs::Args),
}

/// The `--store` option of every command.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// The checkpoint store: file:///abs/path or a plain path, s3://bucket/prefix, or memory://.
    #[arg(long, env = "COHORT_STORE", hide_env_values = true, value_name = "URL")]
    pub(crate) store: String,
}

/// Parses an argument with its `FromStr`, and when that fails reports the error without
/// quoting the whole value: clap's own parsers quote it, so a 100,000-character object id made
/// a 200 KB error line. The ids' own errors quote a bounded part of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parsed<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Parsed<T> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T> clap::builder::TypedValueParser for Parsed<T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let arg = arg.map_or_else(|| "an argument".to_owned(), |a| format!("'{a}'"));
        let invalid = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {arg}: {reason}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid("it is not valid UTF-8".to_owned()))?;
        text.parse().map_err(|e: T::Err| invalid(e.to_string()))
    }
}

/// Parses the command line, runs the command and turns the outcome into an exit code.
pub(crate) fn main() -> ExitCode {
    quiet_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let code = if err.use_stderr() {
                Code::Error
            } else {
                Code::Ok
            };
            if let Err(io) = err.print()
                && io.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Code::Error.into();
            }
            return code.into();
        }
    };
    set_colour(cli.global.color);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)));
    match outcome {
        Ok(Ok(code)) => code.into(),
        Ok(Err(err)) if failure::is_broken_pipe(&err) => Code::Ok.into(),
        Ok(Err(err)) => {
            let (code, hint) = failure::classify(&err);
            failure::report(&err, hint.as_deref());
            code.into()
        }
        // The panic hook has already said what happened.
        Err(_) => Code::Error.into(),
    }
}

/// Runs the parsed command.
fn run(cli: Cli) -> anyhow::Result<Code> {
    init_logging(cli.global.verbose, matches!(cli.command, Command::Serve(_)))?;
    // A coordinator serves many nodes at once; every other command is one client.
    let runtime = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::List(args) => list::run(args).await,
            Command::Show(args) => show::run(args).await,
            Command::Inspect(args) => inspect::run(args).await,
            Command::Export(args) => export::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Diff(args) => diff::run(args).await,
            Command::Rollback(args) => rollback::run(args).await,
            Command::Gc(args) => gc::run(args).await,
            Command::Pin(args) => pin::pin(args).await,
            Command::Unpin(args) => pin::unpin(args).await,
            Command::Serve(args) => serve::run(*args).await,
            Command::Status(args) => status::run(args).await,
            Command::Checkpoint(args) => checkpoint::run(args).await,
            Command::Drain(args) => drain::run(args).await,
            Command::Remove(args) => remove::run(args).await,
            Command::Recover(args) => recover::run(args).await,
            Command::Certs(args) => certs::run(args).await,
        }
    })
}

fn set_colour(when: ColorWhen) {
    let choice = match when {
        // anstream's auto checks for a terminal, NO_COLOR and CLICOLOR(_FORCE).
        ColorWhen::Auto => anstream::ColorChoice::Auto,
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
    };
    choice.write_global();
}

/// `serve`: a coordinator runs unattended, so its log is where the operator learns what went
/// wrong.
fn init_logging(verbose: u8, serve: bool) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).map_err(|e| {
            failure::Failure::usage(format!("RUST_LOG={spec:?} is not a valid filter: {e}"))
                .hint("use a level such as info, or targets such as cohort_checkpoint=debug")
        })?,
        // A coordinator shows the libraries' warnings: a fallback past a damaged checkpoint, a
        // refused connection, a lost node, an aborted checkpoint.
        _ if serve && verbose == 0 => EnvFilter::new("warn"),
        // Without -v the other commands keep the library's warnings quiet: they report damage
        // themselves, in their own output.
        _ => EnvFilter::new(match verbose {
            0 => "warn,cohort_checkpoint=error,cohort_coordinator=error",
            1 => "warn,cohort=info,cohort_checkpoint=info,cohort_coordinator=info",
            2 => "info,cohort=debug,cohort_checkpoint=debug,cohort_coordinator=debug",
            3 => "debug,cohort=trace,cohort_checkpoint=trace,cohort_coordinator=trace",
            _ => "trace",
        }),
    };
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(verbose >= 2);
    // Timestamps only help when following a long run in detail.
    let result = if verbose >= 2 {
        builder.try_init()
    } else {
        builder.without_time().try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// A panic is a bug, but it still gets one line and no backtrace, whatever RUST_BACKTRACE says.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{at}: {what}");
        eprintln!("hint: this is a bug in cohort; please report it with the command you ran");
    }));
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_help_has_an_example() {
        let root = Cli::command();
        let help = root.clone().render_long_help().to_string();
        assert!(
            help.contains("Examples:") && help.contains("Exit codes:"),
            "{help}"
        );
        for sub in root.get_subcommands() {
            let mut sub = sub.clone();
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains("Example") && help.contains("cohort "),
                "`cohort {} --help` has no example:\n{help}",
                sub.get_name()
            );
        }
    }
}
