//! Configuration: TOML file < environment < flags, resolved once into typed `Settings`.
//! This is the only module that reads the environment; commands take `Settings`. It holds
//! plain data and imports no backend: the backends build their clients from these settings
//! (it calls only the warehouse's connection-string helpers, plain functions).
//!
//! Here: the settings types, `load` and `resolve`. `file` reads the config file, `resolve`
//! turns each section into settings (file < env < flags), `time` is the one grammar of times.

mod file;
mod resolve;
mod time;
pub mod topics;

pub use file::{
    config_path, load_file, parse_file, AggregateFile, ArchiveFile, FileConfig, KafkaFile,
    LakeFile, LayoutFile, LogFile, RecordsFile, RetryFile, SchemaRegistryFile, StatusFile,
    TopicFile, WarehouseFile,
};
pub use resolve::validate_ident;
pub use time::{parse_duration, TimeSpec, UTC};

use crate::archive::layout::Compression;
use crate::error::{Error, OrConfig};
use crate::output::LogFormat;
use crate::records::Layout;
use crate::util::RetryPolicy;
use anyhow::{bail, Result};
use resolve::{
    aggregate_settings, archive_settings, kafka_settings, layout_settings, registry_settings,
    required, retry_policy, status_settings, ui_settings, warehouse_settings,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// A secret string: never printed by Debug or Display.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Where environment values come from (the process, or a map in tests).
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub security_protocol: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    pub stall_timeout_secs: u64,
    pub ssl_ca_location: Option<PathBuf>,
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    pub ssl_key_password: Option<Secret>,
    /// None: librdkafka's default (check the host name).
    pub ssl_endpoint_identification: Option<bool>,
    /// Extra librdkafka properties; keys that hold secrets are never printed.
    pub properties: BTreeMap<String, String>,
    pub session_timeout_secs: u64,
    pub member_wait_secs: u64,
    /// Offsets the consumer skips are transaction markers and aborted records (`kafka.transactional`).
    pub transactional: bool,
    pub group_instance_id: Option<String>,
    pub retry: RetryPolicy,
    /// Amazon MSK IAM authentication (`sasl_mechanism = "AWS_MSK_IAM"`): librdkafka then
    /// speaks OAUTHBEARER and the source signs its tokens.
    pub msk_iam: Option<MskIamSettings>,
}

/// What signing MSK IAM tokens needs: the region and the AWS credentials, found as the
/// archive finds its own (keys from the environment or `[archive]`, then the chain).
#[derive(Debug, Clone)]
pub struct MskIamSettings {
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub chain: AwsChain,
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per run; boxing would only add noise
pub enum ArchiveLocation {
    Local(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: String,
        path_style: bool,
        access_key_id: Option<String>,
        secret_access_key: Option<Secret>,
        session_token: Option<Secret>,
        /// Where to look when no keys are given (the AWS credential chain).
        chain: AwsChain,
    },
}

/// The shared AWS files the credential chain reads, resolved from the environment.
#[derive(Debug, Clone, Default)]
pub struct AwsChain {
    /// AWS_PROFILE, archive.profile, else "default".
    pub profile: Option<String>,
    /// AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials.
    pub credentials_file: PathBuf,
    /// AWS_CONFIG_FILE, else ~/.aws/config.
    pub config_file: PathBuf,
    /// Ask EC2 instance metadata (off with AWS_EC2_METADATA_DISABLED=true).
    pub instance_metadata: bool,
}

#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    pub location: ArchiveLocation,
    pub compression: Compression,
    pub max_object_bytes: u64,
    pub max_object_records: u64,
    pub key_template: String,
    /// Offset of the time folders from UTC, in seconds.
    pub utc_offset_secs: i32,
    pub retry: RetryPolicy,
}

impl ArchiveSettings {
    /// The same archive under a sub-prefix: where `ingest --replay` writes and `copy
    /// --prefix` reads a shadow archive. The prefix is one or more plain folder names
    /// (letters, digits, `.`, `-`, `_`), none starting with `_` or `.` (batchlayer's own).
    pub fn under(&self, prefix: &str) -> Result<ArchiveSettings> {
        let prefix = prefix.trim_matches('/');
        let plain = |seg: &str| {
            !seg.is_empty()
                && !seg.starts_with(['_', '.'])
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !prefix.split('/').all(plain) {
            bail!("--prefix {prefix:?} must be folder names of letters, digits, '.', '-' and '_', none starting with '_' or '.'");
        }
        let mut out = self.clone();
        out.location = match &self.location {
            ArchiveLocation::Local(dir) => ArchiveLocation::Local(dir.join(prefix)),
            ArchiveLocation::S3 { prefix: p, .. } => {
                let mut loc = self.location.clone();
                if let ArchiveLocation::S3 { prefix: q, .. } = &mut loc {
                    *q = if p.is_empty() {
                        prefix.to_string()
                    } else {
                        format!("{}/{prefix}", p.trim_end_matches('/'))
                    };
                }
                loc
            }
        };
        Ok(out)
    }
}

impl WarehouseSettings {
    /// Loads into another raw table (`copy --raw-table`), with its own ledger and rejects
    /// tables (`<raw>_loads`, `<raw>_rejects`): the main ledger's offsets never decide what
    /// the other table holds.
    pub fn with_raw_table(&self, raw: &str) -> Result<WarehouseSettings> {
        let mut out = self.clone();
        out.raw_table = validate_ident("--raw-table", raw)?;
        out.ledger_table = validate_ident("--raw-table", &format!("{raw}_loads"))?;
        out.rejects_table = validate_ident("--raw-table", &format!("{raw}_rejects"))?;
        if self.kind == WarehouseKind::Redshift {
            resolve::redshift_name("--raw-table", raw)?;
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarehouseKind {
    Postgres,
    Redshift,
}

#[derive(Debug, Clone)]
pub struct WarehouseSettings {
    pub kind: WarehouseKind,
    pub url: String,
    pub password: Option<Secret>,
    pub schema: String,
    pub raw_table: String,
    pub ledger_table: String,
    pub rejects_table: String,
    /// How Redshift COPY reads the archive (kind = "redshift" only).
    pub redshift: Option<RedshiftSettings>,
    pub tls: PgTls,
    pub retry: RetryPolicy,
    /// The COPY format for PostgreSQL loads.
    pub copy_format: crate::records::CopyFormat,
}

/// libpq's sslmode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, else plain (libpq's default).
    #[default]
    Prefer,
    /// TLS, the certificate not checked.
    Require,
    /// TLS, the certificate's chain checked against the root certificate.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => bail!(
                "sslmode {other:?} (expected disable, prefer, require, verify-ca or verify-full)"
            ),
        })
    }
}

/// TLS to the warehouse.
#[derive(Debug, Clone, Default)]
pub struct PgTls {
    pub mode: SslMode,
    /// Root certificate(s) for verify-ca/verify-full; None: ~/.postgresql/root.crt as libpq.
    pub root_cert: Option<PathBuf>,
}

/// What Redshift's COPY needs beyond the archive's location: plain data; the warehouse builds
/// its statements from it at load time.
#[derive(Debug, Clone)]
pub struct RedshiftSettings {
    /// The IAM role COPY assumes (an ARN, or "default": the cluster's default role); None: the
    /// archive's access keys.
    pub iam_role: Option<String>,
    /// Serverless (true) or provisioned (false); None: detected at connect time.
    pub serverless: Option<bool>,
    /// Region of the archive bucket.
    pub region: String,
}

/// A Confluent-compatible Schema Registry: where it is and how to authenticate.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The base URL, without credentials and without a trailing `/` (safe to print).
    pub url: String,
    /// Basic authentication (a user and its password), or a bearer token, or neither.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub bearer_token: Option<Secret>,
    /// CA certificate(s) (PEM) trusted besides the system CAs.
    pub ca_file: Option<PathBuf>,
    pub retry: RetryPolicy,
}

/// Output decisions the environment makes (progress bars off under CI or TERM=dumb), and
/// how log lines are written.
#[derive(Debug, Clone, Default)]
pub struct UiSettings {
    pub no_progress: bool,
    /// --log-format, else BATCHLAYER_LOG_FORMAT, else log.format, else text.
    pub log_format: LogFormat,
    /// RUST_LOG: which `tracing` events are written (`level` or `target=level,...`).
    pub log_filter: Option<String>,
}

/// Values given on the command line; each beats the environment and the file. Plain data,
/// filled by `cli` from the subcommand's flags.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub brokers: Option<String>,
    pub topic: Option<String>,
    /// Every `--topic` value: narrows many topics (or, several or a pattern, makes one topic
    /// many).
    pub topics: Vec<String>,
    pub group: Option<String>,
    pub archive: Option<String>,
    /// `--lake`: the lake's URL.
    pub lake: Option<String>,
    pub s3_endpoint: Option<String>,
    pub warehouse_url: Option<String>,
    pub compression: Option<Compression>,
    pub log_format: Option<LogFormat>,
}

/// One view to build: its SQL, gates and how many old versions to keep.
#[derive(Debug, Clone)]
pub struct ViewSettings {
    pub view: String,
    /// None: the built-in sql/batch_view.sql.
    pub sql: Option<PathBuf>,
    pub min_rows: i64,
    pub max_row_change: Option<f64>,
    pub max_sum_change: BTreeMap<String, f64>,
    pub non_null_columns: Vec<String>,
    pub keep_versions: u32,
    /// The completeness gate: every partition archived and loaded through this time.
    pub require_complete_through: Option<TimeSpec>,
    /// The topics the view reads (many topics): the gate checks every partition of each.
    pub topics: Vec<String>,
}

/// `[lake]`: where and how `publish` writes the Parquet lake.
#[derive(Debug, Clone)]
pub struct LakeSettings {
    /// The lake's store: the archive's settings (credentials, retry) with the lake's location.
    pub store: ArchiveSettings,
    /// The lake's URL as given or derived, for messages and `ddl`'s LOCATION.
    pub url: String,
    pub compression: crate::lake::ParquetCompression,
    pub file_bytes: u64,
    pub row_group_bytes: u64,
    pub row_group_rows: u64,
    /// `ddl`'s table name and Spectrum's (None: the topic made an identifier).
    pub table: Option<String>,
    /// Whether the lake's URL was given (flag, env or file), not derived from the archive's.
    pub explicit: bool,
    pub spectrum_schema: Option<String>,
}

impl LakeSettings {
    /// A topic's table in the engines (`ddl`, Spectrum): `lake.table`, else the topic made an
    /// identifier.
    pub fn table_for(&self, topic: &str) -> String {
        self.table
            .clone()
            .unwrap_or_else(|| topics::derived_table(topic))
    }

    /// A topic's folder as the engines' LOCATION, ending with `/`: the lake's URL and the
    /// topic; a local lake as an absolute path (what DuckDB and Spark read as it is).
    pub fn topic_location(&self, topic: &str) -> String {
        match &self.store.location {
            ArchiveLocation::Local(dir) => {
                let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                format!(
                    "{}/{topic}/",
                    abs.display().to_string().trim_end_matches('/')
                )
            }
            ArchiveLocation::S3 { .. } => format!("{}/{topic}/", self.url.trim_end_matches('/')),
        }
    }
}

/// What `status` assumes of the data.
#[derive(Debug, Clone, Default)]
pub struct StatusSettings {
    /// See [`StatusFile::lateness`].
    pub lateness: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct AggregateSettings {
    /// The main view first, then `[[aggregate.views]]` in order.
    pub views: Vec<ViewSettings>,
}

/// Everything a command needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub archive: ArchiveSettings,
    pub warehouse: WarehouseSettings,
    pub layout: Layout,
    pub aggregate: AggregateSettings,
    pub status: StatusSettings,
    pub lake: LakeSettings,
    pub ui: UiSettings,
    pub retry: RetryPolicy,
    /// `[schema_registry]` (or BATCHLAYER_SCHEMA_REGISTRY_URL), when set.
    pub schema_registry: Option<RegistrySettings>,
    /// Many topics: which (`kafka.topics`, `kafka.topics_pattern`, `--topic`) and where each
    /// goes (`[[topics]]`). [`Settings::for_topic`] gives one topic's settings.
    pub topics: topics::TopicsSettings,
    /// copy's --max-errors unless given (`[[topics]] max_errors`).
    pub max_errors: Option<u64>,
    /// Test hook (BATCHLAYER_FAILPOINT): where a run stops on purpose (see `failpoint`).
    #[cfg(feature = "testing")]
    pub failpoint: Option<String>,
    /// Warnings found while reading the configuration (printed once, unless -q).
    pub warnings: Vec<String>,
}

impl Settings {
    /// The Kafka settings, for the commands that talk to Kafka (copy and aggregate do not, so
    /// they run without a topic); names flag, env var and key of what is missing.
    pub fn require_kafka(&self) -> Result<&KafkaSettings> {
        if self.kafka.topic.is_empty() {
            required(None, "topic", "BATCHLAYER_KAFKA_TOPIC", "kafka.topic").or_config()?;
        }
        Ok(&self.kafka)
    }

    /// One topic's settings, as a single-topic run takes them: the topic, its route's raw
    /// table (with its own ledger and rejects tables), layout, archive compression and key
    /// template, and copy's max errors. A topic that no `[[topics]]` entry matches is a
    /// configuration error (exit 2) naming it.
    pub fn for_topic(&self, topic: &str) -> Result<Settings, Error> {
        self.topic_settings(topic, true)
    }

    /// A topic's settings for archiving it: as [`Settings::for_topic`], but a topic that no
    /// route matches is archived with the config's archive settings (copy refuses it).
    pub fn for_topic_archive(&self, topic: &str) -> Result<Settings, Error> {
        self.topic_settings(topic, false)
    }

    fn topic_settings(&self, topic: &str, need_route: bool) -> Result<Settings, Error> {
        let mut s = self.clone();
        s.kafka.topic = topic.to_string();
        s.topics = topics::TopicsSettings {
            narrow: vec![topics::Matcher::Name(topic.to_string())],
            ..Default::default()
        };
        if !self.topics.multi() {
            return Ok(s);
        }
        let route = match self.topics.route(topic) {
            Some(r) => Some(r),
            None if self.topics.routes.is_empty() || !need_route => None,
            None => {
                return Err(Error::config(format!(
                    "topic {topic} matches no [[topics]] entry: it is archived, but copy does not know its raw table or layout (add an entry whose name or pattern matches it)"
                )))
            }
        };
        let table = route
            .and_then(|r| r.raw_table.clone())
            .unwrap_or_else(|| topics::derived_table(topic));
        s.warehouse = self
            .warehouse
            .with_raw_table(&table)
            .map_err(|e| Error::config(format!("topic {topic}: {e}")))?;
        if let Some(r) = route {
            s.layout = r.layout.clone();
            s.layout.topic_column = r.topic_column.clone();
            if let Some(c) = r
                .compression
                .filter(|_| self.topics.compression_flag.is_none())
            {
                s.archive.compression = c;
            }
            if let Some(k) = &r.key_template {
                s.archive.key_template = k.clone();
            }
            s.max_errors = r.max_errors;
            if s.warehouse.kind == WarehouseKind::Redshift {
                resolve::redshift_layout(&s.layout)
                    .map_err(|e| Error::config(format!("topic {topic}: {e}")))?;
            }
        }
        Ok(s)
    }
}

/// Finds, reads and resolves the configuration once; every error here exits 2.
pub fn load(flag: Option<&Path>, overrides: &Overrides, env: &dyn Env) -> Result<Settings> {
    let (path, explicit) = config_path(flag, env);
    let file = load_file(&path, explicit).or_config()?;
    let exposed = file::secrets_exposed(&path, &file);
    let mut s = resolve(file, env, overrides)?;
    s.warnings.extend(exposed);
    Ok(s)
}

/// Turns file, environment and flags into settings, one section at a time. Every error is a
/// configuration error (exit 2).
pub fn resolve(file: FileConfig, env: &dyn Env, flags: &Overrides) -> Result<Settings, Error> {
    let retry = retry_policy(&file.retry).or_config()?;
    let kafka = kafka_settings(&file.kafka, &file.archive, env, flags, retry).or_config()?;
    let archive = archive_settings(&file.archive, env, flags, retry).or_config()?;
    let warehouse = warehouse_settings(
        &file.warehouse,
        env,
        flags,
        (&archive, &file.archive),
        retry,
    )
    .or_config()?;
    let layout = layout_settings(file.records.as_ref()).or_config()?;
    let named = resolve::named_layouts(file.records.as_ref()).or_config()?;
    // The environment's topics (a list or a pattern) replace the file's topic or topics.
    let env_list = env.var("BATCHLAYER_KAFKA_TOPICS").map(|v| {
        v.split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
    });
    let env_pattern = env.var("BATCHLAYER_KAFKA_TOPICS_PATTERN");
    let (list, pattern, single) = if env_list.is_some() || env_pattern.is_some() {
        (env_list, env_pattern, None)
    } else {
        (
            file.kafka.topics.clone(),
            file.kafka.topics_pattern.clone(),
            file.kafka.topic.as_deref(),
        )
    };
    let (select, narrow) =
        topics::topic_select(list, pattern, single, &flags.topics).or_config()?;
    let routes = topics::routes(&file.topics, &layout, &named).or_config()?;
    if select.is_none() && !routes.is_empty() {
        return Err(Error::config(
            "[[topics]] routes topics of kafka.topics or kafka.topics_pattern; with one kafka.topic, use warehouse.raw_table and [records]",
        ));
    }
    let aggregate = aggregate_settings(&file.aggregate).or_config()?;
    if warehouse.kind == WarehouseKind::Redshift {
        resolve::redshift_names(&warehouse, &layout, &aggregate).or_config()?;
        resolve::redshift_layout(&layout).or_config()?;
    }
    let status = status_settings(&file.status).or_config()?;
    let lake =
        resolve::lake_settings(&file.lake, &file.archive, &archive, env, flags).or_config()?;
    let schema_registry =
        registry_settings(file.schema_registry.as_ref(), env, retry).or_config()?;
    Ok(Settings {
        kafka,
        archive,
        warehouse,
        layout,
        aggregate,
        status,
        lake,
        ui: ui_settings(&file.log, env, flags).or_config()?,
        retry,
        schema_registry,
        topics: topics::TopicsSettings {
            select,
            routes,
            narrow,
            compression_flag: flags.compression,
        },
        max_errors: None,
        #[cfg(feature = "testing")]
        failpoint: env.var("BATCHLAYER_FAILPOINT"),
        warnings: Vec::new(),
    })
}
