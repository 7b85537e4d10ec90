//! Command-line types (clap derive) and the parsers of flag values. No logic: `config` turns
//! these into settings, and each command reads its own argument struct.

use crate::archive::layout::Compression;
use crate::config::{parse_duration, Overrides, TimeSpec};
use crate::output::LogFormat;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Examples:
  batchlayer ingest                     archive new Kafka messages
  batchlayer copy                       load archived objects into the raw table
  batchlayer aggregate                  rebuild and swap in the batch view
  batchlayer -q ingest && batchlayer -q copy    (what a crontab line runs)
  batchlayer ingest --dry-run           show lag and the objects a run would write
  batchlayer ingest --metrics-file /var/lib/node_exporter/textfile/batchlayer_ingest.prom
  batchlayer completions bash           shell completions (also zsh, fish, elvish, powershell)
  batchlayer man > batchlayer.1         the man page (roff)
  batchlayer status --max-lag 10000     the pipeline on one screen; exit 5 past a threshold
  batchlayer audit                      reconcile offsets, manifests, objects and ledger

Environment (each beats the config file; a flag beats both):
  BATCHLAYER_CONFIG, BATCHLAYER_KAFKA_BROKERS, BATCHLAYER_KAFKA_TOPIC, BATCHLAYER_KAFKA_GROUP,
  BATCHLAYER_ARCHIVE_URL, BATCHLAYER_S3_ENDPOINT, BATCHLAYER_WAREHOUSE_URL, AWS_REGION.
Secrets (S3 secret key, PostgreSQL password, SASL password) are read from the environment
(AWS_SECRET_ACCESS_KEY, PGPASSWORD, BATCHLAYER_KAFKA_SASL_PASSWORD) or the config file, never from flags.
Exit codes: 0 ok, 1 failure, 2 usage or configuration error, 3 busy (another run holds the lock),
4 a gate refused the aggregate swap, 5 status: a threshold is exceeded, 6 audit found problems.";

/// The batch layer of a Lambda Architecture: Kafka -> object store -> warehouse -> batch view.
#[derive(Debug, Parser)]
#[command(name = "batchlayer", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file (TOML). Missing is fine when it is the default (./batchlayer.toml).
    /// [env: BATCHLAYER_CONFIG]
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

    /// Log lines on stderr as text or as JSON lines (the error line of a failed run stays
    /// text). [config: log.format; env: BATCHLAYER_LOG_FORMAT]
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The flags that override the environment and the config file (global ones included).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            log_format: self.log_format,
            ..self.command.overrides()
        }
    }

    /// Parses the command line, refusing a secret on it: argv shows in `ps` and in shell
    /// history. (Exits 2, as every usage error.) Flags only: `config` reads the environment.
    pub fn parse_args() -> Cli {
        let matches = Cli::command().get_matches();
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let Some(("copy" | "aggregate" | "status" | "audit" | "publish", sub)) =
            matches.subcommand()
        {
            let url = sub.get_one::<String>("warehouse_url");
            if url.is_some_and(|u| crate::warehouse::conninfo::url_has_password(u)) {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ValueValidation,
                        "--warehouse-url holds a password, and a secret on the command line shows in ps and shell history: \
                         put the password in PGPASSWORD or warehouse.password in the config file (chmod 600)",
                    )
                    .exit();
            }
        }
        cli
    }
}

/// Kafka connection options (ingest and produce-tweets).
#[derive(Debug, Args, Default, Clone)]
pub struct KafkaOpts {
    /// Kafka bootstrap servers. [config: kafka.brokers; env: BATCHLAYER_KAFKA_BROKERS]
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// Kafka topic; repeatable, and `^...` is a regex: with many topics in the config
    /// (kafka.topics, kafka.topics_pattern) only those it names. [config: kafka.topic; env:
    /// BATCHLAYER_KAFKA_TOPIC]
    #[arg(long, value_name = "TOPIC")]
    pub topic: Vec<String>,
    /// Kafka consumer group. [config: kafka.group; env: BATCHLAYER_KAFKA_GROUP]
    #[arg(long)]
    pub group: Option<String>,
}

/// Archive options (ingest and copy).
#[derive(Debug, Args, Default, Clone)]
pub struct ArchiveOpts {
    /// Archive URL: s3://bucket/prefix, file:///dir or a path. [config: archive.url; env:
    /// BATCHLAYER_ARCHIVE_URL]
    #[arg(long, value_name = "URL")]
    pub archive: Option<String>,
    /// S3 endpoint for S3-compatible servers. [config: archive.endpoint; env:
    /// BATCHLAYER_S3_ENDPOINT]
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
}

/// The metrics file of a step (ingest, copy, aggregate).
#[derive(Debug, Args, Default, Clone)]
pub struct MetricsOpts {
    /// Write this run's metrics here in the Prometheus text format (node_exporter's textfile
    /// collector), atomically, on success and on failure (with the exit code).
    #[arg(long, value_name = "PATH", conflicts_with = "dry_run")]
    pub metrics_file: Option<PathBuf>,
}

/// Warehouse options (copy and aggregate).
#[derive(Debug, Args, Default, Clone)]
pub struct WarehouseOpts {
    /// Warehouse URL (postgresql://user@host:port/db). Put no password here; use PGPASSWORD.
    /// [config: warehouse.url; env: BATCHLAYER_WAREHOUSE_URL]
    #[arg(long, value_name = "URL")]
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
    /// Print shell completions (from these very definitions) for a shell on stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout: `batchlayer man > batchlayer.1`.
    Man(ManArgs),
    /// Show the pipeline on one screen: lag, archive, warehouse, views, complete-through.
    Status(StatusArgs),
    /// Reconcile offsets, manifests, archived objects and the ledger; report every mismatch.
    Audit(AuditArgs),
    /// Write the archive's closed hours as Parquet files under {lake}/{topic}/dt=/hour=/.
    Publish(PublishArgs),
    /// Print the table definition of the lake for a query engine.
    Ddl(DdlArgs),
    /// Produce N deterministic synthetic tweets (for the quickstart, tests and benchmarks).
    #[command(hide = true)]
    ProduceTweets(ProduceArgs),
}

impl Command {
    /// The flags that override the environment and the config file.
    pub fn overrides(&self) -> Overrides {
        let (kafka, archive, warehouse, compression) = match self {
            Command::Ingest(a) => (Some(&a.kafka), Some(&a.archive), None, a.compression),
            Command::Copy(a) => (None, Some(&a.archive), Some(&a.warehouse), None),
            Command::Aggregate(a) => (None, None, Some(&a.warehouse), None),
            Command::Status(a) => (Some(&a.kafka), Some(&a.archive), Some(&a.warehouse), None),
            Command::Audit(a) => (Some(&a.kafka), Some(&a.archive), Some(&a.warehouse), None),
            Command::ProduceTweets(a) => (Some(&a.kafka), None, None, None),
            Command::Publish(a) => (Some(&a.kafka), Some(&a.archive), Some(&a.warehouse), None),
            Command::Ddl(a) => (Some(&a.kafka), Some(&a.archive), None, None),
            Command::Completions(_) | Command::Man(_) => (None, None, None, None),
        };
        let (brokers, mut topics, group) = kafka
            .map(|k| (k.brokers.clone(), k.topic.clone(), k.group.clone()))
            .unwrap_or((None, Vec::new(), None));
        if let Command::Copy(a) = self {
            topics = a.topics.clone();
        }
        // One plain topic replaces kafka.topic, as it always did.
        let topic = match topics.as_slice() {
            [t] if !t.starts_with('^') && !matches!(self, Command::Copy(_)) => Some(t.clone()),
            _ => None,
        };
        Overrides {
            brokers,
            topic,
            topics,
            group,
            archive: archive.and_then(|a| a.archive.clone()),
            s3_endpoint: archive.and_then(|a| a.s3_endpoint.clone()),
            warehouse_url: warehouse.and_then(|w| w.warehouse_url.clone()),
            compression,
            log_format: None,
            lake: match self {
                Command::Publish(a) => a.lake.clone(),
                Command::Ddl(a) => a.lake.clone(),
                _ => None,
            },
        }
    }

    /// The step's name and its metrics file, if asked for (clap refuses it with --dry-run).
    pub fn metrics_file(&self) -> Option<(&'static str, &std::path::Path)> {
        let (step, m) = match self {
            Command::Ingest(a) => ("ingest", &a.metrics),
            Command::Copy(a) => ("copy", &a.metrics),
            Command::Aggregate(a) => ("aggregate", &a.metrics),
            Command::Publish(a) => ("publish", &a.metrics),
            _ => return None,
        };
        m.metrics_file.as_deref().map(|p| (step, p))
    }
}

#[derive(Debug, Args, Default)]
pub struct IngestArgs {
    #[command(flatten)]
    pub kafka: KafkaOpts,
    #[command(flatten)]
    pub archive: ArchiveOpts,
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
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub max_duration: Option<Duration>,
    /// Compression of archived objects. [config: archive.compression]
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// The topic was deleted and re-created: start a new epoch, reading every partition from
    /// its beginning into objects named with the new epoch (the old ones stay as they are).
    #[arg(long)]
    pub new_epoch: bool,
    /// Offsets expired before they were archived: record them as a gap in the manifest and
    /// the catalog, and go on from each partition's first offset.
    #[arg(long)]
    pub accept_expired: bool,
    /// The group's committed offsets differ from the archive's next offsets (the group was
    /// renamed, its offsets expired or were reset, or another consumer moved them): commit
    /// the archive's next offsets for the group and go on from there. Refused when the topic
    /// holds other records than the archive at an archived offset (re-created: --new-epoch).
    #[arg(long, conflicts_with = "new_epoch")]
    pub resume_from_archive: bool,
    /// The group's committed offsets are ahead of the archive and the offsets between are to
    /// be skipped on purpose (a reset to latest): record them as a gap in the manifest and the
    /// catalog, as --accept-expired does, and go on from the committed offsets.
    #[arg(long, conflicts_with_all = ["new_epoch", "resume_from_archive"])]
    pub accept_skipped: bool,
    /// Repair: find objects of runs that died by listing the topic's whole archive, not only
    /// the folders their markers name (for archives written before markers existed).
    #[arg(long)]
    pub full_scan: bool,
    /// Re-archive a range of the topic under --prefix (a shadow archive), reading without the
    /// group and committing nothing: the group's offsets and the main archive are untouched.
    /// Needs --from-offset or --from-time.
    #[arg(long, requires = "prefix", conflicts_with_all = ["new_epoch", "accept_expired", "resume_from_archive", "accept_skipped", "dry_run"])]
    pub replay: bool,
    /// Replay: the first offset of every partition.
    #[arg(
        long,
        value_name = "N",
        requires = "replay",
        conflicts_with = "from_time"
    )]
    pub from_offset: Option<i64>,
    /// Replay: from the first message at or after this time: YYYY-MM-DD[THH[:MM[:SS]]] in
    /// UTC, RFC 3339, or a duration before now (2h).
    #[arg(long, value_name = "TIME", requires = "replay", value_parser = TimeSpec::parse)]
    pub from_time: Option<TimeSpec>,
    /// Replay: stop before this offset of every partition (default: the partitions' end).
    #[arg(
        long,
        value_name = "M",
        requires = "replay",
        conflicts_with = "to_time"
    )]
    pub to_offset: Option<i64>,
    /// Replay: stop before the first message at or after this time (as --from-time: a time
    /// without a zone is UTC).
    #[arg(long, value_name = "TIME", requires = "replay", value_parser = TimeSpec::parse)]
    pub to_time: Option<TimeSpec>,
    /// Replay: the folder under the archive the replay writes to.
    #[arg(long, value_name = "PREFIX", requires = "replay")]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub metrics: MetricsOpts,
}

#[derive(Debug, Args, Default)]
pub struct CopyArgs {
    #[command(flatten)]
    pub archive: ArchiveOpts,
    /// Load only this topic (repeatable; `^...` is a regex).
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    #[command(flatten)]
    pub warehouse: WarehouseOpts,
    /// List what would be loaded and the SQL; load nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Load only this object key.
    #[arg(long)]
    pub key: Option<String>,
    /// Load at most N objects.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only objects whose time folder is at or after this: YYYY-MM-DD[THH[:MM]] in the
    /// archive's zone (archive.timezone), RFC 3339, or a duration before now (2h).
    #[arg(long, value_name = "TIME", value_parser = TimeSpec::parse)]
    pub since: Option<TimeSpec>,
    /// Only objects whose time folder is before this (as --since: a time without a zone is
    /// in the archive's zone).
    #[arg(long, value_name = "TIME", value_parser = TimeSpec::parse)]
    pub until: Option<TimeSpec>,
    /// Tolerate up to N bad rows per object (they go to the rejects table). Default: strict.
    #[arg(long, value_name = "N")]
    pub max_errors: Option<u64>,
    /// Exit at once with code 3 when another copy holds the lock (default: wait).
    #[arg(long)]
    pub no_wait: bool,
    /// Find work by listing the whole archive instead of reading the manifests written since
    /// the last load; also loads objects that no manifest lists (verify and repair).
    #[arg(long)]
    pub full_scan: bool,
    /// PostgreSQL COPY format: binary (default: the server parses no text) or text.
    /// Overrides [warehouse] copy_format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub copy_format: Option<crate::records::CopyFormat>,
    /// PostgreSQL: load with N connections at once, each object still one transaction with
    /// its ledger row (one run manifest's objects at a time).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Load the shadow archive under this folder (written by `ingest --replay --prefix`);
    /// needs --raw-table.
    #[arg(long, value_name = "PREFIX", requires = "raw_table")]
    pub prefix: Option<String>,
    /// Load into this raw table, with its own ledger and rejects tables (<T>_loads,
    /// <T>_rejects), instead of the configured ones.
    #[arg(long, value_name = "T")]
    pub raw_table: Option<String>,
    #[command(flatten)]
    pub metrics: MetricsOpts,
}

#[derive(Debug, Args, Default)]
pub struct PublishArgs {
    #[command(flatten)]
    pub kafka: KafkaOpts,
    #[command(flatten)]
    pub archive: ArchiveOpts,
    #[command(flatten)]
    pub warehouse: WarehouseOpts,
    /// The lake: s3://bucket/prefix, file:///dir or a path. [config: lake.url; env:
    /// BATCHLAYER_LAKE_URL; default: the archive's URL with -lake added]
    #[arg(long, value_name = "URL")]
    pub lake: Option<String>,
    /// Also write hours that are not closed yet (tests, backfills); a later run seals them
    /// once closed, adding files for what arrived since.
    #[arg(long)]
    pub open: bool,
    /// Print the files a run would write; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Tolerate up to N bad records per archived object (listed under
    /// _lake/{topic}/rejects/). Default: strict.
    #[arg(long, value_name = "N")]
    pub max_errors: Option<u64>,
    /// Exit at once with code 3 when another publish holds the lock (default: wait).
    #[arg(long)]
    pub no_wait: bool,
    /// Rebuild the lake's head from its commit and hour records, read every manifest of the
    /// topic again, and write the `_SUCCESS` of every sealed hour that lost it.
    #[arg(long)]
    pub repair: bool,
    #[command(flatten)]
    pub metrics: MetricsOpts,
}

#[derive(Debug, Args, Default)]
pub struct DdlArgs {
    #[command(flatten)]
    pub kafka: KafkaOpts,
    #[command(flatten)]
    pub archive: ArchiveOpts,
    /// The engine: spark, trino, athena, duckdb or spectrum.
    #[arg(long, value_name = "ENGINE")]
    pub engine: String,
    /// The lake (as publish's --lake).
    #[arg(long, value_name = "URL")]
    pub lake: Option<String>,
    /// The table's LOCATION, when engines reach the lake by another URL than batchlayer
    /// (s3a:// for Spark); default: the lake's URL and the topic.
    #[arg(long, value_name = "URL")]
    pub location: Option<String>,
    /// Trino's catalog.schema, Spectrum's external schema (default: lake, or
    /// lake.spectrum_schema).
    #[arg(long, value_name = "SCHEMA")]
    pub schema: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct AggregateArgs {
    #[command(flatten)]
    pub warehouse: WarehouseOpts,
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
    pub sql: Option<PathBuf>,
    #[command(flatten)]
    pub metrics: MetricsOpts,
    /// Refuse to build unless every partition is archived and loaded through this time: a
    /// duration before now (2h) or a time (YYYY-MM-DD[THH[:MM]] in the archive's zone, or
    /// RFC 3339). Reads Kafka and the archive from the config. [config:
    /// aggregate.require_complete_through]
    #[arg(long, value_name = "TIME", value_parser = TimeSpec::parse)]
    pub require_complete_through: Option<TimeSpec>,
}

#[derive(Debug, Args, Default)]
pub struct StatusArgs {
    #[command(flatten)]
    pub kafka: KafkaOpts,
    #[command(flatten)]
    pub archive: ArchiveOpts,
    #[command(flatten)]
    pub warehouse: WarehouseOpts,
    /// Exit 5 when the topic's total lag (end offset - committed offset) is above N messages.
    #[arg(long, value_name = "N")]
    pub max_lag: Option<u64>,
    /// Exit 5 when an archived object has waited longer than this to be loaded (90, 15m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_unloaded_age: Option<Duration>,
    /// Exit 5 when a view was last built longer ago than this (or its build time is unknown).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_view_age: Option<Duration>,
    /// How late a message's timestamp may be against the ones before it. [config: status.lateness]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lateness: Option<Duration>,
}

#[derive(Debug, Args, Default)]
pub struct AuditArgs {
    #[command(flatten)]
    pub kafka: KafkaOpts,
    #[command(flatten)]
    pub archive: ArchiveOpts,
    #[command(flatten)]
    pub warehouse: WarehouseOpts,
    /// Re-read every object: check its sha256 and count its records.
    #[arg(long)]
    pub deep: bool,
    /// Do not read the group's committed offsets from Kafka (archive and warehouse only).
    #[arg(long)]
    pub no_kafka: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The page of this subcommand (batchlayer-SUBCOMMAND(1)) instead of batchlayer(1).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaOpts,
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
    /// Long locations (up to 256 characters: multi-byte, backslashes, tabs, line breaks).
    #[arg(long)]
    pub long_locations: bool,
    /// Create the topic with this many partitions first (if it does not exist).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// The messages' format: the delimited records, JSON, or Avro in the Confluent wire format
    /// (the schema registered first under the subject `{topic}-value`; needs [schema_registry]).
    #[arg(long, value_enum, default_value_t = TweetFormat::Delimited)]
    pub format: TweetFormat,
    /// Give the messages Kafka timestamps from this time on (UTC unless it says its zone;
    /// a duration like 3h is before now), spread evenly over --span; default: the time sent.
    #[arg(long, value_name = "TIME", value_parser = TimeSpec::parse)]
    pub start_time: Option<TimeSpec>,
    /// With --start-time: the seconds the messages' timestamps span.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 3600,
        requires = "start_time"
    )]
    pub span: u64,
}

/// How `produce-tweets` writes each tweet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TweetFormat {
    Delimited,
    Json,
    Avro,
}

/// Parses a whole number of seconds.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_names_the_variable_of_every_flag_that_has_one() {
        // Whatever the terminal's width: the words, one space apart.
        let words = |h: clap::builder::StyledStr| {
            h.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut cli = Cli::command();
        let top = words(cli.render_long_help());
        assert!(top.contains("BATCHLAYER_CONFIG"), "{top}");
        for (sub, vars) in [
            (
                "ingest",
                &[
                    "BATCHLAYER_KAFKA_BROKERS",
                    "BATCHLAYER_KAFKA_TOPIC",
                    "BATCHLAYER_KAFKA_GROUP",
                    "BATCHLAYER_ARCHIVE_URL",
                    "BATCHLAYER_S3_ENDPOINT",
                ][..],
            ),
            ("copy", &["BATCHLAYER_WAREHOUSE_URL", "archive's zone"][..]),
            (
                "aggregate",
                &["BATCHLAYER_WAREHOUSE_URL", "archive's zone"][..],
            ),
        ] {
            let help = words(cli.find_subcommand_mut(sub).unwrap().render_long_help());
            for v in vars {
                assert!(help.contains(v), "{sub} --help lacks {v}: {help}");
            }
        }
        let ingest = words(
            cli.find_subcommand_mut("ingest")
                .unwrap()
                .render_long_help(),
        );
        assert!(ingest.contains("[THH[:MM[:SS]]] in UTC"), "{ingest}");
    }

    #[test]
    fn flags_a_subcommand_does_not_use_are_refused() {
        assert!(Cli::try_parse_from(["batchlayer", "copy", "--brokers", "x"]).is_err());
        assert!(Cli::try_parse_from(["batchlayer", "aggregate", "--archive", "x"]).is_err());
        assert!(Cli::try_parse_from(["batchlayer", "ingest", "--warehouse-url", "x"]).is_err());
        let c = Cli::try_parse_from([
            "batchlayer",
            "ingest",
            "--topic",
            "t",
            "--compression",
            "zstd",
        ])
        .unwrap();
        let o = c.command.overrides();
        assert_eq!(o.topic.as_deref(), Some("t"));
        assert_eq!(o.compression, Some(Compression::Zstd));
    }
}
