//! Thin binary: parse, run, map the result to an exit code and one stderr line.

use batchlayer::error::{code_for, to_exit, OK};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = batchlayer::cli::Cli::parse_args();
    match batchlayer::run(cli) {
        Ok(_report) => to_exit(OK),
        Err(err) => {
            batchlayer::output::Output::error(&err);
            to_exit(code_for(&err))
        }
    }
}
