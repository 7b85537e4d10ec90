//! batchlayer: the batch layer of a Lambda Architecture as three bounded, chainable steps.
//! `run` resolves the configuration once and dispatches to the subcommand modules.

pub mod archive;
pub mod cli;
pub mod commands;
pub mod config;
pub mod exit;
pub mod output;
pub mod records;
pub mod source;
pub mod tweets;
pub mod warehouse;

use anyhow::Result;
use cli::{Cli, Command};
use config::{Env, ProcessEnv, Settings};
use output::Output;
use std::time::Duration;

/// Another run holds the lock (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("busy: {0}")]
pub struct Busy(pub String);

/// A gate refused the aggregate swap (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GateRefused(pub String);

/// A configuration problem (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ConfigError(pub anyhow::Error);

fn settings(cli: &Cli, env: &dyn Env) -> Result<Settings> {
    let (path, explicit) = config::config_path(cli.config.as_deref(), env);
    let file = config::load_file(&path, explicit).map_err(ConfigError)?;
    config::resolve(file, env, &cli.common).map_err(|e| ConfigError(e).into())
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let env = ProcessEnv;
    let no_bars = env.var("CI").is_some() || env.var("TERM").as_deref() == Some("dumb");
    let out = Output::new(cli.quiet, cli.verbose, cli.json, no_bars);
    let s = settings(&cli, &env)?;
    let failpoint = env.var("BATCHLAYER_FAILPOINT");
    match &cli.command {
        Command::Ingest(a) => {
            let kafka = s.require_kafka().map_err(ConfigError)?;
            let mut archive = s.archive.clone();
            if let Some(c) = &a.compression {
                archive.compression = config::Compression::parse(c).map_err(ConfigError)?;
            }
            let store = archive::open(&archive)?;
            let mode = if a.dry_run {
                source::Mode::AssignAll
            } else {
                source::Mode::Subscribe
            };
            let mut src = source::KafkaSource::connect(kafka, mode)?;
            let opts = commands::ingest::IngestOptions {
                dry_run: a.dry_run,
                max_messages: a.max_messages,
                max_bytes: a.max_bytes,
                max_duration: a.max_duration.map(Duration::from_secs),
                assignment_timeout: Duration::from_secs(60),
                stall_timeout: Duration::from_secs(s.kafka.stall_timeout_secs),
                group: s.kafka.group.clone(),
                fail_before_commit: failpoint.as_deref() == Some("ingest-before-commit"),
            };
            if a.dry_run {
                let parts = src.partitions()?;
                out.plan("partition  committed  end  lag");
                for l in commands::ingest::describe_lag(&src, &parts)? {
                    let c = l
                        .committed
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into());
                    out.plan(&format!("{}  {c}  {}  {}", l.partition, l.end, l.lag));
                }
            }
            let sum = commands::ingest::run(&mut src, store.as_ref(), &archive, &opts, &out)?;
            if a.dry_run {
                for o in &sum.object_list {
                    out.plan(&format!("would write {} ({} records)", o.key, o.records));
                }
            }
            out.summary(
                &format!(
                    "ingest{}: {} messages ({}), {} partitions, {} objects, {} skipped, {} rejected, {:.1}s",
                    if sum.dry_run { " (dry run)" } else { "" },
                    sum.messages,
                    indicatif::HumanBytes(sum.bytes),
                    sum.partitions,
                    sum.objects,
                    sum.skipped,
                    sum.rejected,
                    sum.seconds
                ),
                &serde_json::to_value(&sum)?,
            );
        }
        Command::Copy(a) => {
            let store = archive::open(&s.archive)?;
            let mut wh = warehouse::connect(&s.warehouse, &out)?;
            let opts = commands::copy::CopyOptions {
                dry_run: a.dry_run,
                key: a.key.clone(),
                limit: a.limit,
                max_errors: a.max_errors,
                wait: !a.no_wait,
                fail_before_commit: failpoint.as_deref() == Some("copy-before-commit"),
                since: a
                    .since
                    .as_deref()
                    .map(commands::copy::parse_time)
                    .transpose()
                    .map_err(ConfigError)?,
                until: a
                    .until
                    .as_deref()
                    .map(commands::copy::parse_time)
                    .transpose()
                    .map_err(ConfigError)?,
                key_template: s.archive.key_template.clone(),
            };
            let sum = commands::copy::run(store.as_ref(), wh.as_mut(), &s.layout, &opts, &out)?;
            if a.dry_run {
                for j in &sum.pending {
                    out.plan(&format!("would load {} ({} bytes)", j.key, j.size));
                }
                for q in &sum.sql {
                    out.plan(&format!("{q};"));
                }
            }
            out.summary(
                &format!(
                    "copy{}: {} objects ({}), {} rows, {} rejects, {:.1}s",
                    if sum.dry_run { " (dry run)" } else { "" },
                    sum.objects,
                    indicatif::HumanBytes(sum.bytes),
                    sum.rows,
                    sum.rejects,
                    sum.seconds
                ),
                &serde_json::to_value(&sum)?,
            );
        }
        Command::Aggregate(a) => {
            let mut views = s.aggregate.views.clone();
            if let Some(name) = &a.view {
                views.retain(|v| &v.view == name);
                if views.is_empty() {
                    return Err(ConfigError(anyhow::anyhow!(
                        "--view {name}: no such view in [aggregate]"
                    ))
                    .into());
                }
            }
            if let Some(sql) = &a.sql {
                if views.len() > 1 {
                    return Err(ConfigError(anyhow::anyhow!(
                        "--sql needs --view when several views are configured"
                    ))
                    .into());
                }
                views[0].sql = Some(sql.clone());
            }
            let mut wh = warehouse::connect(&s.warehouse, &out)?;
            let names = warehouse::Names::from_settings(&s.warehouse);
            for vs in &views {
                let view_sql = match &vs.sql {
                    Some(p) => std::fs::read_to_string(p).map_err(|e| {
                        ConfigError(anyhow::anyhow!("view SQL {}: {e}", p.display()))
                    })?,
                    None => warehouse::BATCH_VIEW.to_string(),
                };
                let opts = commands::aggregate::AggregateOptions {
                    dry_run: a.dry_run,
                    rollback: a.rollback,
                    force: a.force,
                    print: a.print,
                    wait: !a.no_wait,
                    view: vs.view.clone(),
                    view_sql,
                    min_rows: vs.min_rows,
                    max_row_change: vs.max_row_change,
                    max_sum_change: vs.max_sum_change.clone(),
                    non_null_columns: vs.non_null_columns.clone(),
                    keep_versions: vs.keep_versions,
                };
                let sum = commands::aggregate::run(wh.as_mut(), &names, &opts)?;
                if let Some(p) = &sum.plan {
                    for q in &p.build {
                        out.plan(&format!("{q};"));
                    }
                    for g in &p.gates {
                        out.plan(&format!("-- gate {} ({:?})", g.name, g.check));
                        out.plan(&format!("{};", g.new_sql));
                        if let Some(o) = &g.old_sql {
                            out.plan(&format!("{o};"));
                        }
                    }
                    out.plan("BEGIN;");
                    for q in &p.swap {
                        out.plan(&format!("{q};"));
                    }
                    out.plan("COMMIT;");
                }
                if let Some((cols, rows)) = &sum.top {
                    if !cli.json {
                        out.table(&commands::aggregate::format_table(cols, rows));
                    }
                }
                let delta = sum
                    .previous_rows
                    .map(|p| format!("{:+}", sum.rows - p))
                    .unwrap_or_else(|| "new".into());
                out.summary(
                    &format!(
                        "aggregate{}: view {}, {} rows ({delta}){}, {:.1}s",
                        if sum.dry_run { " (dry run)" } else { "" },
                        sum.view,
                        sum.rows,
                        if sum.rolled_back { ", rolled back" } else { "" },
                        sum.seconds
                    ),
                    &serde_json::to_value(&sum)?,
                );
            }
        }
        Command::ProduceTweets(a) => {
            let opts = commands::produce::ProduceOptions {
                count: a.count,
                seed: a.seed,
                locations: a.locations,
                duplicate_every: a.duplicate_every,
                partitions: a.partitions,
            };
            let n = commands::produce::run(s.require_kafka().map_err(ConfigError)?, &opts)?;
            out.summary(
                &format!("produced {n} messages to {}", s.kafka.topic),
                &serde_json::json!({ "produced": n, "topic": s.kafka.topic }),
            );
        }
    }
    Ok(())
}
