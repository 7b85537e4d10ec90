//! batchlayer: the batch layer of a Lambda Architecture as three bounded, chainable steps.
//! `run` resolves the configuration once, hands it to the subcommand's `exec`, and hands the
//! report `exec` returns to the output and to the metrics file.

pub mod archive;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod lake;
pub mod metrics;
pub mod output;
pub mod progress;
pub mod records;
pub mod registry;
pub mod report;
pub mod source;
pub mod tweets;
pub mod util;
pub mod warehouse;

use anyhow::Result;
use cli::{Cli, Command};
use commands::{aggregate, audit, completions, copy, ddl, ingest, produce, publish, status};
use config::ProcessEnv;
use output::Output;
use report::{Part, Report};

/// Runs one parsed command line and returns its report; a step given `--metrics-file` writes
/// it at the end, whether it succeeded or not.
pub fn run(cli: Cli) -> Result<Report> {
    let mut out = Output::new(cli.quiet, cli.verbose, cli.json, false);
    match &cli.command {
        Command::Completions(a) => return completions::exec(a, &out).map(|()| Report::None),
        Command::Man(a) => return completions::man(a, &out).map(|()| Report::None),
        _ => {}
    }
    let started = std::time::Instant::now();
    let result = run_step(&cli, &mut out);
    let result = match cli.command.metrics_file() {
        Some((step, path)) => metrics::finish(step, path, started, &out, result),
        None => result,
    };
    // A run over many topics is judged once its report and metrics are out.
    if let Ok(r @ Report::Many(_)) = &result {
        r.outcome()?;
    }
    result
}

/// Resolves the settings, sets up output and logs, runs the subcommand, and prints its report.
fn run_step(cli: &Cli, out: &mut Output) -> Result<Report> {
    let s = config::load(cli.config.as_deref(), &cli.overrides(), &ProcessEnv)?;
    *out = Output::new(cli.quiet, cli.verbose, cli.json, s.ui.no_progress)
        .with_log_format(s.ui.log_format);
    output::init_logs(
        cli.verbose,
        cli.quiet,
        s.ui.log_format,
        s.ui.log_filter.as_deref(),
    )
    .map_err(error::Error::config)?;
    for w in &s.warnings {
        out.warn(w);
    }
    failpoint::arm(&s);
    let out = &*out;
    let report = match &cli.command {
        Command::Ingest(a) => ingest::exec(a, &s, out)?,
        Command::Copy(a) => copy::exec(a, &s, out)?,
        // Views are built in turn, and each is printed as soon as it is built: a later view's
        // failure leaves the earlier ones built, and reported.
        Command::Aggregate(a) => {
            return aggregate::exec(a, &s, out, &mut |view| out.summary(&Part::View(view)))
        }
        Command::Status(a) => status::exec(a, &s)?,
        Command::Audit(a) => audit::exec(a, &s, out)?,
        Command::ProduceTweets(a) => produce::exec(a, &s)?,
        Command::Publish(a) => publish::exec(a, &s, out)?,
        Command::Ddl(a) => ddl::exec(a, &s, out)?,
        // Answered in `run`, before any configuration is read.
        Command::Completions(_) | Command::Man(_) => Report::None,
    };
    if let Report::Many(m) = &report {
        if m.topics.is_empty() && m.idle.is_empty() && m.failed.is_empty() {
            // Nothing was asked of no topic, but a pattern that matches nothing is worth saying.
            out.warn(&format!(
                "no topic of {} to {}",
                s.topics.describe(),
                m.step
            ));
        }
    }
    for part in report.parts() {
        out.summary(&part)?;
    }
    // Status and audit fail on what they found (exit 5, 6), once it is printed; a run over
    // many topics, in `run`, once its metrics are written too.
    if !matches!(report, Report::Many(_)) {
        report.outcome()?;
    }
    Ok(report)
}
