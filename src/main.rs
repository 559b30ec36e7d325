//! The `cohort` command-line tool: inspect, verify, diff, roll back and collect a checkpoint
//! store. See `cohort --help`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
