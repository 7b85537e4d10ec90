//! Command-line types (clap derive). No logic: `config` turns these into settings.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  batchlayer ingest                     archive new Kafka messages
  batchlayer copy                       load archived objects into the raw table
  batchlayer aggregate                  rebuild and swap in the batch view
  batchlayer -q ingest && batchlayer -q copy    (what a crontab line runs)
  batchlayer ingest --dry-run           show lag and the objects a run would write

Secrets (S3 secret key, PostgreSQL password, SASL password) are read from the environment
(AWS_SECRET_ACCESS_KEY, PGPASSWORD, BATCHLAYER_KAFKA_SASL_PASSWORD) or the config file, never from flags.
Exit codes: 0 ok, 1 failure, 2 usage or configuration error, 3 busy (another run holds the lock),
4 a gate refused the aggregate swap.";

/// The batch layer of a Lambda Architecture: Kafka -> object store -> warehouse -> batch view.
#[derive(Debug, Parser)]
#[command(name = "batchlayer", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file (TOML). Missing is fine when it is the default. [env: BATCHLAYER_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print nothing but errors, even on a terminal.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print progress details and the summary line even when not on a terminal.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Print the run summary as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub common: CommonOpts,

    #[command(subcommand)]
    pub command: Command,
}

/// Connection options shared by every subcommand; each overrides the config file and env.
#[derive(Debug, Args, Default, Clone)]
pub struct CommonOpts {
    /// Kafka bootstrap servers. [env: BATCHLAYER_KAFKA_BROKERS] [config: kafka.brokers]
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// Kafka topic. [env: BATCHLAYER_KAFKA_TOPIC] [config: kafka.topic]
    #[arg(long, global = true)]
    pub topic: Option<String>,
    /// Kafka consumer group. [env: BATCHLAYER_KAFKA_GROUP] [config: kafka.group]
    #[arg(long, global = true)]
    pub group: Option<String>,
    /// Archive URL: s3://bucket/prefix, file:///dir or a path. [env: BATCHLAYER_ARCHIVE_URL] [config: archive.url]
    #[arg(long, global = true, value_name = "URL")]
    pub archive: Option<String>,
    /// S3 endpoint for S3-compatible servers. [env: BATCHLAYER_S3_ENDPOINT] [config: archive.endpoint]
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Warehouse URL (postgresql://user@host:port/db). Put no password here; use PGPASSWORD.
    /// [env: BATCHLAYER_WAREHOUSE_URL] [config: warehouse.url]
    #[arg(long, global = true, value_name = "URL")]
    pub warehouse_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive every message the consumer group has not archived yet, then commit offsets.
    Ingest(IngestArgs),
    /// Load archived objects that are not loaded yet into the raw table.
    Copy(CopyArgs),
    /// Rebuild the batch view and swap it in atomically.
    Aggregate(AggregateArgs),
    /// Produce N deterministic synthetic tweets (for the quickstart, tests and benchmarks).
    #[command(hide = true)]
    ProduceTweets(ProduceArgs),
}

#[derive(Debug, Args, Default)]
pub struct IngestArgs {
    /// Show committed offsets, lag and the objects a run would write; write and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after this many messages.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Stop after this many payload bytes.
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub max_duration: Option<u64>,
    /// Compression of archived objects: none, gzip or zstd. [config: archive.compression]
    #[arg(long)]
    pub compression: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct CopyArgs {
    /// List what would be loaded and the SQL; load nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Load only this object key.
    #[arg(long)]
    pub key: Option<String>,
    /// Load at most N objects.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only objects whose time folder is at or after this (YYYY-MM-DD[THH[:MM]], archive zone).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only objects whose time folder is before this.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Tolerate up to N bad rows per object (they go to the rejects table). Default: strict.
    #[arg(long, value_name = "N")]
    pub max_errors: Option<u64>,
    /// Exit at once with code 3 when another copy holds the lock (default: wait).
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args, Default)]
pub struct AggregateArgs {
    /// Print the SQL it would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Swap the previous view back in.
    #[arg(long)]
    pub rollback: bool,
    /// Swap even when a gate fails.
    #[arg(long)]
    pub force: bool,
    /// Print the top N rows of the view after the swap.
    #[arg(long, value_name = "N")]
    pub print: Option<usize>,
    /// Exit at once with code 3 when another aggregate holds the lock (default: wait).
    #[arg(long)]
    pub no_wait: bool,
    /// Rebuild only this configured view (default: every configured view).
    #[arg(long, value_name = "NAME")]
    pub view: Option<String>,
    /// Use this view SQL file instead of the configured one ({schema}/{raw} placeholders).
    #[arg(long, value_name = "FILE")]
    pub sql: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// How many tweets.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Seed of the deterministic generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of distinct locations.
    #[arg(long, default_value_t = 50)]
    pub locations: u64,
    /// Every Nth tweet is sent twice (duplicates), 0 for none.
    #[arg(long, default_value_t = 0)]
    pub duplicate_every: u64,
    /// Create the topic with this many partitions first (if it does not exist).
    #[arg(long)]
    pub partitions: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
