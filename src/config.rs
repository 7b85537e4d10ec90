//! Configuration: TOML file < environment < flags, resolved once into typed `Settings`.
//! This is the only module that reads the environment; commands take `Settings`. It holds
//! plain data and imports no backend: the backends build their clients from these settings.

use crate::archive::layout::Compression;
use crate::error::{Error, OrConfig};
use crate::output::LogFormat;
use crate::records::{Column, Layout};
use crate::util::RetryPolicy;
use anyhow::{anyhow, bail, Context, Result};
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

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub kafka: KafkaFile,
    #[serde(default)]
    pub archive: ArchiveFile,
    #[serde(default)]
    pub warehouse: WarehouseFile,
    #[serde(default)]
    pub records: Option<RecordsFile>,
    #[serde(default)]
    pub aggregate: AggregateFile,
    #[serde(default)]
    pub retry: RetryFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub status: StatusFile,
}

/// What `status` (and `aggregate`'s completeness gate) assume of the data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusFile {
    /// How much earlier than a message before it in its partition a message's Kafka timestamp
    /// may be (producers' clocks, CreateTime); "complete through" is held back by this much.
    /// Seconds, or a duration like "5m" (default 0).
    pub lateness: Option<toml::Value>,
}

/// How log lines are written on stderr.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// text (default) or json (one JSON object per line); BATCHLAYER_LOG_FORMAT and
    /// --log-format override.
    pub format: Option<LogFormat>,
}

/// How transient failures (S3 5xx and SlowDown, broker transport errors, PostgreSQL refusing
/// connections at start) are retried.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Tries in all, the first included (default 4; 1 = no retry).
    pub attempts: Option<u32>,
    /// First wait in milliseconds, doubled each time (default 200).
    pub initial_backoff_ms: Option<u64>,
    /// Longest wait in milliseconds (default 5000).
    pub max_backoff_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaFile {
    /// Bootstrap servers, comma separated.
    pub brokers: Option<String>,
    /// Topic to archive.
    pub topic: Option<String>,
    /// Consumer group whose committed offsets mark what is archived.
    pub group: Option<String>,
    /// security.protocol (plaintext, ssl, sasl_plaintext, sasl_ssl).
    pub security_protocol: Option<String>,
    /// sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// Secret; BATCHLAYER_KAFKA_SASL_PASSWORD overrides.
    pub sasl_password: Option<Secret>,
    /// Fail a run whose partitions deliver neither data nor end-of-partition for this many seconds (default 60).
    pub stall_timeout_secs: Option<u64>,
    /// ssl.ca.location: CA certificate(s) (PEM) that sign the brokers' certificates.
    pub ssl_ca_location: Option<PathBuf>,
    /// ssl.certificate.location: client certificate (PEM) for mutual TLS.
    pub ssl_certificate_location: Option<PathBuf>,
    /// ssl.key.location: the client certificate's private key (PEM).
    pub ssl_key_location: Option<PathBuf>,
    /// Secret; BATCHLAYER_KAFKA_SSL_KEY_PASSWORD overrides.
    pub ssl_key_password: Option<Secret>,
    /// Check that the broker's certificate names the host (default true).
    pub ssl_endpoint_identification: Option<bool>,
    /// Further librdkafka properties, passed as given (e.g. sasl.oauthbearer.*).
    pub properties: Option<BTreeMap<String, String>>,
    /// A member that stops heartbeating is dead after this many seconds (default 10).
    pub session_timeout_secs: Option<u64>,
    /// How long a run waits for partitions that other members hold while they have lag (a
    /// killed run's member holds them until its session times out). Default 30.
    pub member_wait_secs: Option<u64>,
    /// group.instance.id: static membership, where the broker supports it. Give each
    /// concurrent ingest process its own.
    pub group_instance_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveFile {
    /// s3://bucket/prefix, file:///dir or a plain path.
    pub url: Option<String>,
    /// Endpoint of an S3-compatible server (path-style addressing is then used).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub access_key_id: Option<String>,
    /// Secret; AWS_SECRET_ACCESS_KEY overrides.
    pub secret_access_key: Option<Secret>,
    /// Secret (temporary credentials); AWS_SESSION_TOKEN overrides.
    pub session_token: Option<Secret>,
    /// Profile of the shared AWS files when no keys are given; AWS_PROFILE overrides.
    pub profile: Option<String>,
    /// none, gzip (default) or zstd.
    pub compression: Option<String>,
    /// Rotate objects at this many uncompressed bytes (default 128 MiB).
    pub max_object_bytes: Option<u64>,
    /// Rotate objects at this many records (default: no limit).
    pub max_object_records: Option<u64>,
    /// Time folder template: {topic} {YYYY} {MM} {DD} {HH}.
    pub key_template: Option<String>,
    /// Zone of the time folders: "UTC" or a fixed offset like "+02:00".
    pub timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseFile {
    /// postgres (default) or redshift.
    pub kind: Option<String>,
    /// postgresql://user@host:port/db
    pub url: Option<String>,
    /// Secret; PGPASSWORD overrides.
    pub password: Option<Secret>,
    pub schema: Option<String>,
    pub raw_table: Option<String>,
    pub ledger_table: Option<String>,
    pub rejects_table: Option<String>,
    /// Redshift: IAM role COPY assumes to read the archive (preferred over access keys).
    pub iam_role: Option<String>,
    /// Redshift: region of the archive bucket for COPY (default: the archive's region).
    pub region: Option<String>,
    /// TLS as libpq's sslmode: disable, prefer (default), require, verify-ca, verify-full.
    /// `?sslmode=` in the URL works too.
    pub sslmode: Option<String>,
    /// CA certificate(s) (PEM) for verify-ca and verify-full. `?sslrootcert=` works too.
    pub sslrootcert: Option<PathBuf>,
    /// PostgreSQL: the COPY format copy sends, binary (default; falls back to text when the
    /// raw table's column types differ from the layout's) or text.
    pub copy_format: Option<crate::records::CopyFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsFile {
    pub delimiter: Option<String>,
    pub trailing_delimiter: Option<bool>,
    pub timestamp_format: Option<String>,
    pub columns: Option<Vec<Column>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateFile {
    /// Name of the batch view table.
    pub view: Option<String>,
    /// View SQL file (a SELECT with {schema}/{raw} placeholders); default: sql/batch_view.sql.
    pub sql: Option<PathBuf>,
    /// Refuse the swap when the new view has fewer rows (default 1).
    pub min_rows: Option<i64>,
    /// Refuse the swap when the row count changes by more than this fraction (e.g. 0.5).
    pub max_row_change: Option<f64>,
    /// Refuse the swap when the sum of a column changes by more than this fraction.
    pub max_sum_change: Option<BTreeMap<String, f64>>,
    /// Refuse the swap when any of these columns holds a NULL.
    pub non_null_columns: Option<Vec<String>>,
    /// How many previous versions to keep as <view>__prev, <view>__prev2, ... (default 1).
    pub keep_versions: Option<u32>,
    /// More views, each with its own `view`, `sql` and gates.
    pub views: Option<Vec<AggregateFile>>,
    /// Refuse to build unless every partition is archived and loaded through this time: a
    /// duration before now ("2h") or a time ("2024-01-02T03:00", archive zone; RFC 3339).
    pub require_complete_through: Option<String>,
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
    pub group_instance_id: Option<String>,
    pub retry: RetryPolicy,
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
    /// The IAM role COPY assumes; None: the archive's access keys.
    pub iam_role: Option<String>,
    /// Region of the archive bucket.
    pub region: String,
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
    pub group: Option<String>,
    pub archive: Option<String>,
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
}

/// A point in time as the operator gives it: a duration before now, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// This long before the moment it is resolved.
    Ago(std::time::Duration),
    /// A time without a zone: in the archive's zone (`archive.timezone`).
    Local(chrono::NaiveDateTime),
    /// A time with its zone.
    At(chrono::DateTime<chrono::Utc>),
}

impl TimeSpec {
    /// Parses "2h", "90m", "3600" (before now), "YYYY-MM-DD[THH[:MM[:SS]]]" or RFC 3339.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(d) = parse_duration(s) {
            return Ok(TimeSpec::Ago(d));
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(TimeSpec::At(t.with_timezone(&chrono::Utc)));
        }
        let t = s.replace(' ', "T");
        if let Ok(d) = chrono::NaiveDate::parse_from_str(&t, "%Y-%m-%d") {
            return Ok(TimeSpec::Local(d.and_hms_opt(0, 0, 0).expect("midnight")));
        }
        for (f, suffix) in [
            ("%Y-%m-%dT%H:%M:%S", ""),
            ("%Y-%m-%dT%H:%M", ""),
            ("%Y-%m-%dT%H:%M", ":00"),
        ] {
            if let Ok(v) = chrono::NaiveDateTime::parse_from_str(&format!("{t}{suffix}"), f) {
                return Ok(TimeSpec::Local(v));
            }
        }
        Err(format!(
            "{s:?} is neither a duration (30m, 2h, 1d) nor a time (YYYY-MM-DD[THH[:MM]], RFC 3339)"
        ))
    }

    /// The UTC time it names, `now` being the present and `utc_offset_secs` the archive's zone.
    pub fn resolve(
        self,
        now: chrono::DateTime<chrono::Utc>,
        utc_offset_secs: i32,
    ) -> chrono::DateTime<chrono::Utc> {
        match self {
            TimeSpec::Ago(d) => now - chrono::Duration::from_std(d).unwrap_or_default(),
            TimeSpec::Local(t) => {
                t.and_utc() - chrono::Duration::seconds(i64::from(utc_offset_secs))
            }
            TimeSpec::At(t) => t,
        }
    }
}

/// Parses a duration: whole seconds ("90"), or a number with s, m, h or d ("15m", "2h").
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (90, 90s, 15m, 2h, 1d)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?} is not a duration (90, 90s, 15m, 2h, 1d)")),
    };
    Ok(std::time::Duration::from_secs(n * mult))
}

/// What `status` assumes of the data.
#[derive(Debug, Clone, Default)]
pub struct StatusSettings {
    /// See [`StatusFile::lateness`].
    pub lateness: std::time::Duration,
}

fn status_settings(f: &StatusFile) -> Result<StatusSettings> {
    let lateness = match &f.lateness {
        None => std::time::Duration::ZERO,
        Some(toml::Value::Integer(n)) if *n >= 0 => std::time::Duration::from_secs(*n as u64),
        Some(toml::Value::String(s)) => {
            parse_duration(s).map_err(|e| anyhow!("status.lateness: {e}"))?
        }
        Some(other) => bail!("status.lateness {other}: use seconds or a duration like \"5m\""),
    };
    Ok(StatusSettings { lateness })
}

#[derive(Debug, Clone)]
pub struct AggregateSettings {
    /// The main view first, then `[[aggregate.views]]` in order.
    pub views: Vec<ViewSettings>,
}

fn view_settings(
    g: &AggregateFile,
    what: &str,
    default_view: Option<&str>,
) -> Result<ViewSettings> {
    let name = match (&g.view, default_view) {
        (Some(v), _) => v.clone(),
        (None, Some(d)) => d.to_string(),
        (None, None) => bail!("{what}: every entry of aggregate.views needs a view name"),
    };
    let view = validate_ident(&format!("{what}.view"), &name)?;
    if default_view.is_none() && g.sql.is_none() {
        bail!("{what} {view}: needs sql = \"FILE\"");
    }
    let max_sum_change = g.max_sum_change.clone().unwrap_or_default();
    for c in max_sum_change.keys() {
        validate_ident(&format!("{what}.max_sum_change column"), c)?;
    }
    let non_null_columns = g.non_null_columns.clone().unwrap_or_default();
    for c in &non_null_columns {
        validate_ident(&format!("{what}.non_null_columns column"), c)?;
    }
    let keep_versions = g.keep_versions.unwrap_or(1);
    if !(1..=20).contains(&keep_versions) {
        bail!("{what}.keep_versions must be between 1 and 20");
    }
    let require_complete_through = g
        .require_complete_through
        .as_deref()
        .map(TimeSpec::parse)
        .transpose()
        .map_err(|e| anyhow!("{what}.require_complete_through: {e}"))?;
    Ok(ViewSettings {
        require_complete_through,
        view,
        sql: g.sql.clone(),
        min_rows: g.min_rows.unwrap_or(1),
        max_row_change: g.max_row_change,
        max_sum_change,
        non_null_columns,
        keep_versions,
    })
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
    pub ui: UiSettings,
    pub retry: RetryPolicy,
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
}

/// Finds, reads and resolves the configuration once; every error here exits 2.
pub fn load(flag: Option<&Path>, overrides: &Overrides, env: &dyn Env) -> Result<Settings> {
    let (path, explicit) = config_path(flag, env);
    let file = load_file(&path, explicit).or_config()?;
    let exposed = secrets_exposed(&path, &file);
    let mut s = resolve(file, env, overrides)?;
    s.warnings.extend(exposed);
    Ok(s)
}

/// A warning, as ssh gives for keys, when a config file that holds a secret can be read by
/// group or others.
fn secrets_exposed(path: &Path, f: &FileConfig) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let holds_secret = f.kafka.sasl_password.is_some()
        || f.kafka.ssl_key_password.is_some()
        || f.archive.secret_access_key.is_some()
        || f.archive.session_token.is_some()
        || f.warehouse.password.is_some()
        || f.warehouse.url.as_deref().is_some_and(url_has_password);
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (holds_secret && mode & 0o077 != 0).then(|| {
        format!(
            "config file {} holds a secret and can be read by group or others (mode {mode:o}); run: chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// Reads and parses the config file. A missing file is fine only when it was not asked for.
pub fn load_file(path: &Path, explicit: bool) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_file(&text).with_context(|| format!("config file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => {
            Err(anyhow!(e)).with_context(|| format!("reading config file {}", path.display()))
        }
    }
}

pub fn parse_file(text: &str) -> Result<FileConfig> {
    // toml's error names the unknown key and its line; keep only that, never the file text.
    toml::from_str(text).map_err(|e| anyhow!("{}", e.message().trim()))
}

/// Which config file to read: flag, then BATCHLAYER_CONFIG, then ./batchlayer.toml.
pub fn config_path(flag: Option<&Path>, env: &dyn Env) -> (PathBuf, bool) {
    if let Some(p) = flag {
        return (p.to_path_buf(), true);
    }
    if let Some(p) = env.var("BATCHLAYER_CONFIG") {
        return (PathBuf::from(p), true);
    }
    (PathBuf::from("batchlayer.toml"), false)
}

fn pick(flag: &Option<String>, env: &dyn Env, key: &str, file: &Option<String>) -> Option<String> {
    flag.clone()
        .or_else(|| env.var(key))
        .or_else(|| file.clone())
}

fn required(v: Option<String>, flag: &str, env: &str, file: &str) -> Result<String> {
    v.ok_or_else(|| anyhow!("missing {file}: set --{flag}, {env}, or {file} in the config file"))
}

/// Validates a SQL identifier: letters, digits and underscores, not starting with a digit.
pub fn validate_ident(what: &str, s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(s.to_string())
    } else {
        bail!("{what} {s:?} is not a valid identifier (letters, digits and _, at most 63, not starting with a digit)")
    }
}

/// Turns file, environment and flags into settings, one section at a time. Every error is a
/// configuration error (exit 2).
pub fn resolve(file: FileConfig, env: &dyn Env, flags: &Overrides) -> Result<Settings, Error> {
    let retry = retry_policy(&file.retry).or_config()?;
    let mut kafka = kafka_settings(&file.kafka, env, flags).or_config()?;
    kafka.retry = retry;
    let mut archive = archive_settings(&file.archive, env, flags).or_config()?;
    archive.retry = retry;
    let mut warehouse = warehouse_settings(&file.warehouse, env, flags, &archive).or_config()?;
    warehouse.retry = retry;
    let layout = layout_settings(file.records.as_ref()).or_config()?;
    let aggregate = aggregate_settings(&file.aggregate).or_config()?;
    let status = status_settings(&file.status).or_config()?;
    Ok(Settings {
        kafka,
        archive,
        warehouse,
        layout,
        aggregate,
        status,
        ui: ui_settings(&file.log, env, flags).or_config()?,
        retry,
        #[cfg(feature = "testing")]
        failpoint: env.var("BATCHLAYER_FAILPOINT"),
        warnings: Vec::new(),
    })
}

fn ui_settings(l: &LogFile, env: &dyn Env, flags: &Overrides) -> Result<UiSettings> {
    let log_format = match (flags.log_format, env.var("BATCHLAYER_LOG_FORMAT")) {
        (Some(f), _) => f,
        (None, Some(v)) => match v.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => bail!("BATCHLAYER_LOG_FORMAT {v:?} (expected text or json)"),
        },
        (None, None) => l.format.unwrap_or_default(),
    };
    Ok(UiSettings {
        no_progress: env.var("CI").is_some() || env.var("TERM").as_deref() == Some("dumb"),
        log_format,
        log_filter: env.var("RUST_LOG"),
    })
}

fn retry_policy(r: &RetryFile) -> Result<RetryPolicy> {
    let d = RetryPolicy::default();
    let attempts = r.attempts.unwrap_or(d.attempts);
    if !(1..=100).contains(&attempts) {
        bail!("retry.attempts must be between 1 and 100");
    }
    Ok(RetryPolicy {
        attempts,
        initial: r
            .initial_backoff_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(d.initial),
        max: r
            .max_backoff_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(d.max),
    })
}

fn kafka_settings(k: &KafkaFile, env: &dyn Env, flags: &Overrides) -> Result<KafkaSettings> {
    for (key, p) in [
        ("kafka.ssl_ca_location", &k.ssl_ca_location),
        (
            "kafka.ssl_certificate_location",
            &k.ssl_certificate_location,
        ),
        ("kafka.ssl_key_location", &k.ssl_key_location),
    ] {
        if let Some(p) = p {
            if !p.is_file() {
                bail!("{key} {}: no such file", p.display());
            }
        }
    }
    if let Some(p) = &k.security_protocol {
        let ok = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
        if !ok.contains(&p.to_ascii_lowercase().as_str()) {
            bail!(
                "kafka.security_protocol {p:?} (expected one of {})",
                ok.join(", ")
            );
        }
    }
    Ok(KafkaSettings {
        brokers: pick(&flags.brokers, env, "BATCHLAYER_KAFKA_BROKERS", &k.brokers)
            .unwrap_or_else(|| "127.0.0.1:9092".into()),
        // Only ingest needs a topic: `Settings::require_kafka` names it when missing.
        topic: pick(&flags.topic, env, "BATCHLAYER_KAFKA_TOPIC", &k.topic).unwrap_or_default(),
        group: pick(&flags.group, env, "BATCHLAYER_KAFKA_GROUP", &k.group)
            .unwrap_or_else(|| "batchlayer".into()),
        security_protocol: k.security_protocol.clone(),
        sasl_mechanism: k.sasl_mechanism.clone(),
        sasl_username: env
            .var("BATCHLAYER_KAFKA_SASL_USERNAME")
            .or_else(|| k.sasl_username.clone()),
        sasl_password: env
            .var("BATCHLAYER_KAFKA_SASL_PASSWORD")
            .map(Secret)
            .or_else(|| k.sasl_password.clone()),
        stall_timeout_secs: k.stall_timeout_secs.unwrap_or(60).max(1),
        ssl_ca_location: k.ssl_ca_location.clone(),
        ssl_certificate_location: k.ssl_certificate_location.clone(),
        ssl_key_location: k.ssl_key_location.clone(),
        ssl_key_password: env
            .var("BATCHLAYER_KAFKA_SSL_KEY_PASSWORD")
            .map(Secret)
            .or_else(|| k.ssl_key_password.clone()),
        ssl_endpoint_identification: k.ssl_endpoint_identification,
        properties: k.properties.clone().unwrap_or_default(),
        session_timeout_secs: k.session_timeout_secs.unwrap_or(10).max(1),
        member_wait_secs: k.member_wait_secs.unwrap_or(30),
        group_instance_id: k.group_instance_id.clone(),
        retry: RetryPolicy::default(),
    })
}

/// Parses `archive.url`: `s3://bucket/prefix`, `file:///dir` or a plain path.
fn archive_location(
    url: &str,
    a: &ArchiveFile,
    env: &dyn Env,
    endpoint: Option<String>,
) -> Result<ArchiveLocation> {
    if !url.contains("://") {
        return Ok(ArchiveLocation::Local(PathBuf::from(url)));
    }
    let parsed = url::Url::parse(url).map_err(|e| anyhow!("archive.url {url:?}: {e}"))?;
    match parsed.scheme() {
        "file" => Ok(ArchiveLocation::Local(PathBuf::from(parsed.path()))),
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default();
            if bucket.is_empty() {
                bail!("archive.url {url:?}: no bucket name after s3://");
            }
            Ok(ArchiveLocation::S3 {
                bucket: bucket.to_string(),
                prefix: parsed.path().trim_matches('/').to_string(),
                path_style: a.path_style.unwrap_or(endpoint.is_some()),
                endpoint,
                region: env
                    .var("AWS_REGION")
                    .or_else(|| env.var("AWS_DEFAULT_REGION"))
                    .or_else(|| a.region.clone())
                    .unwrap_or_else(|| "us-east-1".into()),
                access_key_id: env
                    .var("AWS_ACCESS_KEY_ID")
                    .or_else(|| a.access_key_id.clone()),
                secret_access_key: env
                    .var("AWS_SECRET_ACCESS_KEY")
                    .map(Secret)
                    .or_else(|| a.secret_access_key.clone()),
                session_token: env
                    .var("AWS_SESSION_TOKEN")
                    .map(Secret)
                    .or_else(|| a.session_token.clone()),
                chain: aws_chain(a, env),
            })
        }
        _ => bail!(
            "archive.url {url:?}: unsupported scheme (use s3://bucket/prefix, file:///dir or a path)"
        ),
    }
}

fn aws_chain(a: &ArchiveFile, env: &dyn Env) -> AwsChain {
    let aws_dir = PathBuf::from(env.var("HOME").unwrap_or_default()).join(".aws");
    AwsChain {
        profile: env.var("AWS_PROFILE").or_else(|| a.profile.clone()),
        credentials_file: env
            .var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| aws_dir.join("credentials")),
        config_file: env
            .var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| aws_dir.join("config")),
        instance_metadata: !env
            .var("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    }
}

fn archive_settings(a: &ArchiveFile, env: &dyn Env, flags: &Overrides) -> Result<ArchiveSettings> {
    let url = pick(&flags.archive, env, "BATCHLAYER_ARCHIVE_URL", &a.url)
        .unwrap_or_else(|| "./batchlayer-archive".into());
    let endpoint = pick(
        &flags.s3_endpoint,
        env,
        "BATCHLAYER_S3_ENDPOINT",
        &a.endpoint,
    );
    let location = archive_location(&url, a, env, endpoint)?;
    let compression = match flags.compression {
        Some(c) => c,
        None => Compression::parse(a.compression.as_deref().unwrap_or("gzip"))
            .map_err(|e| anyhow!("archive.compression: {e}"))?,
    };
    let key_template = a
        .key_template
        .clone()
        .unwrap_or_else(|| "{topic}/{YYYY}/{MM}/{DD}/{HH}".into());
    if key_template.contains("..") || key_template.starts_with('/') {
        bail!("archive.key_template {key_template:?} must be a relative path");
    }
    Ok(ArchiveSettings {
        location,
        compression,
        max_object_bytes: a.max_object_bytes.unwrap_or(128 << 20).max(1),
        max_object_records: a.max_object_records.unwrap_or(0),
        key_template,
        utc_offset_secs: parse_tz(a.timezone.as_deref().unwrap_or("UTC"))?,
        retry: RetryPolicy::default(),
    })
}

/// Redshift's COPY reads the archive from S3 with a role or the archive's keys.
fn redshift_settings(w: &WarehouseFile, archive: &ArchiveSettings) -> Result<RedshiftSettings> {
    let ArchiveLocation::S3 {
        region,
        access_key_id,
        secret_access_key,
        ..
    } = &archive.location
    else {
        bail!("warehouse.kind = \"redshift\" needs an s3:// archive.url (Redshift COPY reads from S3)");
    };
    if w.iam_role.is_none() && (access_key_id.is_none() || secret_access_key.is_none()) {
        bail!("Redshift COPY needs warehouse.iam_role, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    }
    Ok(RedshiftSettings {
        iam_role: w.iam_role.clone(),
        region: w.region.clone().unwrap_or_else(|| region.clone()),
    })
}

fn warehouse_settings(
    w: &WarehouseFile,
    env: &dyn Env,
    flags: &Overrides,
    archive: &ArchiveSettings,
) -> Result<WarehouseSettings> {
    let kind = match w.kind.as_deref().unwrap_or("postgres") {
        "postgres" | "postgresql" => WarehouseKind::Postgres,
        "redshift" => WarehouseKind::Redshift,
        other => bail!("warehouse.kind {other:?} (expected postgres or redshift)"),
    };
    let url = pick(
        &flags.warehouse_url,
        env,
        "BATCHLAYER_WAREHOUSE_URL",
        &w.url,
    )
    .unwrap_or_else(|| "postgresql://postgres@127.0.0.1:5432/postgres".into());
    let (url, url_mode, url_root) = split_tls_params(&url)?;
    let mode = match url_mode.or_else(|| w.sslmode.clone()) {
        Some(m) => SslMode::parse(&m).context("warehouse sslmode")?,
        None => SslMode::default(),
    };
    let mut root_cert = url_root
        .map(PathBuf::from)
        .or_else(|| w.sslrootcert.clone());
    if root_cert.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        // libpq's default place.
        let home = env.var("HOME").unwrap_or_default();
        root_cert = Some(PathBuf::from(home).join(".postgresql/root.crt"));
    }
    if let Some(p) = &root_cert {
        if mode != SslMode::Disable && !p.is_file() {
            bail!("warehouse sslrootcert {}: no such file", p.display());
        }
    }
    let table = |key: &str, v: &Option<String>, default: &str| {
        validate_ident(&format!("warehouse.{key}"), v.as_deref().unwrap_or(default))
    };
    Ok(WarehouseSettings {
        redshift: match kind {
            WarehouseKind::Redshift => Some(redshift_settings(w, archive)?),
            WarehouseKind::Postgres => None,
        },
        kind,
        url,
        tls: PgTls { mode, root_cert },
        retry: RetryPolicy::default(),
        copy_format: w.copy_format.unwrap_or_default(),
        password: env
            .var("PGPASSWORD")
            .map(Secret)
            .or_else(|| w.password.clone()),
        schema: validate_ident(
            "warehouse.schema",
            &env.var("BATCHLAYER_WAREHOUSE_SCHEMA")
                .or_else(|| w.schema.clone())
                .unwrap_or_else(|| "public".into()),
        )?,
        raw_table: table("raw_table", &w.raw_table, "batch_raw")?,
        ledger_table: table("ledger_table", &w.ledger_table, "batchlayer_loads")?,
        rejects_table: table("rejects_table", &w.rejects_table, "batchlayer_rejects")?,
    })
}

fn layout_settings(r: Option<&RecordsFile>) -> Result<Layout> {
    let mut layout = Layout::tweets();
    if let Some(r) = r {
        if let Some(d) = &r.delimiter {
            let b = d.as_bytes();
            if b.len() != 1 || b[0] == b'\\' || b[0] == b'\n' || b[0] == b'\r' {
                bail!("records.delimiter {d:?} must be one byte other than backslash, CR or LF");
            }
            layout.delimiter = b[0];
        }
        if let Some(t) = r.trailing_delimiter {
            layout.trailing_delimiter = t;
        }
        if let Some(f) = &r.timestamp_format {
            layout.timestamp_format = f.clone();
        }
        if let Some(cols) = &r.columns {
            if cols.is_empty() {
                bail!("records.columns is empty");
            }
            layout.columns = cols.clone();
        }
    }
    for c in &layout.columns {
        validate_ident("records.columns name", &c.name)?;
    }
    Ok(layout)
}

fn aggregate_settings(g: &AggregateFile) -> Result<AggregateSettings> {
    let mut views = vec![view_settings(g, "aggregate", Some("batch_layer"))?];
    for (i, v) in g.views.iter().flatten().enumerate() {
        if v.views.is_some() {
            bail!("aggregate.views[{i}]: views cannot nest");
        }
        views.push(view_settings(v, &format!("aggregate.views[{i}]"), None)?);
    }
    let mut seen = std::collections::HashSet::new();
    for v in &views {
        if !seen.insert(v.view.clone()) {
            bail!("aggregate: view {} is configured twice", v.view);
        }
    }
    Ok(AggregateSettings { views })
}

fn parse_tz(s: &str) -> Result<i32> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(0);
    }
    let sign = match s.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => bail!("archive.timezone {s:?}: use UTC or a fixed offset like +02:00"),
    };
    let (h, m) = s[1..]
        .split_once(':')
        .ok_or_else(|| anyhow!("archive.timezone {s:?}: use UTC or a fixed offset like +02:00"))?;
    let h: i32 = h.parse().context("archive.timezone hours")?;
    let m: i32 = m.parse().context("archive.timezone minutes")?;
    if h > 14 || m > 59 {
        bail!("archive.timezone {s:?} out of range");
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// Takes libpq's `sslmode` and `sslrootcert` out of a warehouse URL or key=value string (the
/// postgres crate knows only some sslmodes and no sslrootcert); returns the rest and both.
pub fn split_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>)> {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut u = url::Url::parse(url).map_err(|_| {
            anyhow!(
                "warehouse.url {} is not a valid PostgreSQL URL",
                redact_url(url)
            )
        })?;
        let mut keep = Vec::new();
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "sslmode" => mode = Some(v.into_owned()),
                "sslrootcert" => root = Some(v.into_owned()),
                _ => keep.push((k.into_owned(), v.into_owned())),
            }
        }
        if keep.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(keep);
        }
        return Ok((u.to_string(), mode, root));
    }
    let mut keep = Vec::new();
    for part in url.split_whitespace() {
        match part.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root = Some(v.to_string()),
            _ => keep.push(part),
        }
    }
    Ok((keep.join(" "), mode, root))
}

/// A URL with any password replaced by `***`, for messages.
/// Every form: `user:pass@` in a URL, `?password=` in its query, and `password=` in a libpq
/// key=value string.
pub fn redact_url(u: &str) -> String {
    if !u.contains("://") {
        return u
            .split_whitespace()
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let Ok(mut p) = url::Url::parse(u) else {
        return "<unparsable url>".to_string();
    };
    if p.password().is_some() {
        let _ = p.set_password(Some("***"));
    }
    if p.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = p
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        p.query_pairs_mut().clear().extend_pairs(pairs);
    }
    p.to_string()
}

fn is_secret_param(k: &str) -> bool {
    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
}

/// Whether a warehouse URL (or key=value string) holds a password in any form.
pub fn url_has_password(u: &str) -> bool {
    redact_url(u) != u || u.contains("<unparsable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn times_and_durations_for_status_and_the_completeness_gate() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(parse_duration("1d").unwrap().as_secs(), 86400);
        assert!(parse_duration("2 weeks").is_err() && parse_duration("h").is_err());
        let now = chrono::DateTime::parse_from_rfc3339("2024-01-02T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let at = |s: &str, tz: i32| TimeSpec::parse(s).unwrap().resolve(now, tz).to_rfc3339();
        assert_eq!(at("2h", 0), "2024-01-02T10:00:00+00:00");
        assert_eq!(at("2024-01-02T05", 0), "2024-01-02T05:00:00+00:00");
        // A time without a zone is in the archive's zone.
        assert_eq!(at("2024-01-02 05:30", 3600), "2024-01-02T04:30:00+00:00");
        assert_eq!(
            at("2024-01-02T05:00:00+02:00", 0),
            "2024-01-02T03:00:00+00:00"
        );
        assert!(TimeSpec::parse("yesterday").is_err());
        let s = resolve(
            parse_file(
                "[status]\nlateness = \"5m\"\n[aggregate]\nrequire_complete_through = \"1h\"\n",
            )
            .unwrap(),
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.status.lateness.as_secs(), 300);
        assert_eq!(
            s.aggregate.views[0].require_complete_through,
            Some(TimeSpec::Ago(std::time::Duration::from_secs(3600)))
        );
        let bad = resolve(
            parse_file("[aggregate]\nrequire_complete_through = \"soon\"\n").unwrap(),
            &env(&[]),
            &Overrides::default(),
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("aggregate.require_complete_through"));
    }

    #[test]
    fn precedence_is_file_then_env_then_flag() {
        let text = "[kafka]\ntopic = \"from_file\"\ngroup = \"g_file\"\nbrokers = \"file:1\"\n";
        let e = env(&[
            ("BATCHLAYER_KAFKA_TOPIC", "from_env"),
            ("BATCHLAYER_KAFKA_GROUP", "g_env"),
        ]);
        let flags = Overrides {
            topic: Some("from_flag".into()),
            ..Default::default()
        };
        let s = resolve(parse_file(text).unwrap(), &e, &flags).unwrap();
        assert_eq!(s.kafka.topic, "from_flag");
        assert_eq!(s.kafka.group, "g_env");
        assert_eq!(s.kafka.brokers, "file:1");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse_file("[kafka]\ntopik = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("topik"), "{err}");
        let err = parse_file("[archives]\n").unwrap_err().to_string();
        assert!(err.contains("archives"), "{err}");
    }

    #[test]
    fn missing_topic_names_flag_and_env() {
        let s = resolve(FileConfig::default(), &env(&[]), &Overrides::default()).unwrap();
        let err = s.require_kafka().unwrap_err().to_string();
        assert!(err.contains("--topic"), "{err}");
        assert!(err.contains("BATCHLAYER_KAFKA_TOPIC"), "{err}");
        assert!(err.contains("kafka.topic"), "{err}");
    }

    #[test]
    fn secrets_come_from_env_over_file_and_never_print() {
        let text = "[kafka]\ntopic=\"t\"\n[archive]\nurl=\"s3://b/p\"\nsecret_access_key=\"filesecret123\"\n[warehouse]\npassword=\"pgfilesecret\"\n";
        let e = env(&[
            ("AWS_SECRET_ACCESS_KEY", "envsecret456"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
        ]);
        let s = resolve(parse_file(text).unwrap(), &e, &Overrides::default()).unwrap();
        match &s.archive.location {
            ArchiveLocation::S3 {
                secret_access_key,
                access_key_id,
                bucket,
                prefix,
                ..
            } => {
                assert_eq!(secret_access_key.as_ref().unwrap().expose(), "envsecret456");
                assert_eq!(access_key_id.as_deref(), Some("AKID"));
                assert_eq!(bucket, "b");
                assert_eq!(prefix, "p");
            }
            other => panic!("{other:?}"),
        }
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("envsecret456") && !dbg.contains("pgfilesecret"),
            "{dbg}"
        );
        assert_eq!(
            s.warehouse.password.as_ref().unwrap().expose(),
            "pgfilesecret"
        );
    }

    #[test]
    fn bad_table_names_are_refused() {
        let text = "[kafka]\ntopic=\"t\"\n[warehouse]\nraw_table=\"x; drop table y\"\n";
        let err = resolve(parse_file(text).unwrap(), &env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid identifier"), "{err}");
    }

    #[test]
    fn redact_hides_password() {
        let r = redact_url("postgresql://u:hunter2@h:5432/db");
        assert!(!r.contains("hunter2"));
        assert!(r.contains("***"));
    }

    #[test]
    fn redact_hides_every_form_of_password() {
        for u in [
            "postgresql://u@h:5432/db?password=hunter2&sslmode=require",
            "postgresql://u:hunter2@h/db?application_name=x",
            "host=h user=u password=hunter2 dbname=db",
        ] {
            let r = redact_url(u);
            assert!(!r.contains("hunter2") && r.contains("***"), "{r}");
            assert!(url_has_password(u), "{u}");
        }
        let plain = "postgresql://u@h:5432/db?sslmode=require";
        assert_eq!(redact_url(plain), plain);
        assert!(!url_has_password(plain));
        assert!(redact_url("postgresql://u@h/db?sslmode=require&password=x")
            .contains("sslmode=require"));
    }

    #[test]
    fn log_format_is_file_then_env_then_flag() {
        let file = || parse_file("[log]\nformat = \"json\"\n").unwrap();
        let none = Overrides::default();
        let s = resolve(file(), &env(&[]), &none).unwrap();
        assert_eq!(s.ui.log_format, LogFormat::Json);
        let e = env(&[("BATCHLAYER_LOG_FORMAT", "text"), ("RUST_LOG", "warn")]);
        let s = resolve(file(), &e, &none).unwrap();
        assert_eq!(s.ui.log_format, LogFormat::Text);
        assert_eq!(s.ui.log_filter.as_deref(), Some("warn"));
        let flag = Overrides {
            log_format: Some(LogFormat::Json),
            ..Default::default()
        };
        assert_eq!(
            resolve(file(), &e, &flag).unwrap().ui.log_format,
            LogFormat::Json
        );
        let bad = env(&[("BATCHLAYER_LOG_FORMAT", "xml")]);
        let err = resolve(file(), &bad, &none).unwrap_err().to_string();
        assert!(err.contains("BATCHLAYER_LOG_FORMAT"), "{err}");
        assert!(parse_file("[log]\nformat = \"xml\"\n").is_err());
    }

    #[test]
    fn timezone_offsets() {
        assert_eq!(parse_tz("UTC").unwrap(), 0);
        assert_eq!(parse_tz("+02:00").unwrap(), 7200);
        assert_eq!(parse_tz("-05:30").unwrap(), -19800);
        assert!(parse_tz("Europe/Paris").is_err());
    }
}
