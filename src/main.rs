//! The `cohort` command-line tool: inspect, verify, diff, roll back and collect a checkpoint
//! store. See `cohort --help`.

mod cli;
mod http;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
