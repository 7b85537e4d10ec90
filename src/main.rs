//! Thin binary: parse, run, map the result to an exit code and one stderr line.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = batchlayer::cli::Cli::parse();
    match batchlayer::run(cli) {
        Ok(()) => batchlayer::exit::to_exit(batchlayer::exit::OK),
        Err(err) => {
            batchlayer::output::Output::error(&err);
            batchlayer::exit::to_exit(batchlayer::exit::code_for(&err))
        }
    }
}
