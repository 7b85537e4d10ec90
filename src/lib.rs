//! batchlayer: the batch layer of a Lambda Architecture as three bounded, chainable steps.
//! `run` resolves the configuration once and hands it to the subcommand's `exec`.

pub mod archive;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod records;
pub mod source;
pub mod tweets;
pub mod util;
pub mod warehouse;

use anyhow::Result;
use cli::{Cli, Command};
use commands::{aggregate, audit, copy, ingest, produce, status};
use config::ProcessEnv;
use output::Output;

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let s = config::load(cli.config.as_deref(), &cli.command.overrides(), &ProcessEnv)?;
    let out = Output::new(cli.quiet, cli.verbose, cli.json, s.ui.no_progress);
    output::init_logs(cli.verbose);
    for w in &s.warnings {
        out.warn(w);
    }
    match &cli.command {
        Command::Ingest(a) => ingest::exec(a, &s, &out),
        Command::Copy(a) => copy::exec(a, &s, &out),
        Command::Aggregate(a) => aggregate::exec(a, &s, &out),
        Command::Status(a) => status::exec(a, &s, &out),
        Command::Audit(a) => audit::exec(a, &s, &out),
        Command::ProduceTweets(a) => produce::exec(a, &s, &out),
    }
}
