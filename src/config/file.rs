//! The config file as written: its sections as serde structs that refuse unknown keys, where
//! the file is, and reading it. Plain values; `resolve` checks them and applies the
//! environment and the flags.

use super::{Env, Secret};
use crate::output::LogFormat;
use crate::records::Column;
use crate::warehouse::conninfo::url_has_password;
use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// A Confluent-compatible Schema Registry (Avro-framed topics).
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryFile>,
    /// `[[topics]]`: where each topic goes (many topics in one config).
    #[serde(default)]
    pub topics: Vec<TopicFile>,
    /// `[lake]`: where `publish` writes the Parquet lake, and how.
    #[serde(default)]
    pub lake: LakeFile,
}

/// `[lake]`: the archive as Parquet (`publish`, `ddl`). Credentials are the archive's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeFile {
    /// s3://bucket/prefix, file:///dir or a path (default: the archive's URL + "-lake").
    pub url: Option<String>,
    /// The lake's S3 endpoint (default: the archive's).
    pub endpoint: Option<String>,
    /// snappy (default) or zstd.
    pub compression: Option<String>,
    /// zstd's level, 1 to 22 (default 3).
    pub zstd_level: Option<i32>,
    /// Target size of a Parquet file in bytes (default 128 MiB).
    pub file_bytes: Option<u64>,
    /// Buffered values of a row group at most, in bytes (default 32 MiB): the writer's memory.
    pub row_group_bytes: Option<u64>,
    /// Rows of a row group at most (default 1,000,000).
    pub row_group_rows: Option<u64>,
    /// The table name `ddl` prints and Spectrum uses (default: the raw table's name).
    pub table: Option<String>,
    /// Redshift Spectrum's external schema: publish adds each hour it writes as a partition.
    pub spectrum_schema: Option<String>,
}

/// One `[[topics]]` entry: the topics it matches and where they go.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicFile {
    /// One topic, by name.
    pub name: Option<String>,
    /// Topics whose names match this regex.
    pub pattern: Option<String>,
    /// The raw table (default: the topic's name made an identifier: prod.orders -> prod_orders).
    pub raw_table: Option<String>,
    /// The record layout by name: `[records.NAME]` (default: `[records]`).
    pub records: Option<String>,
    /// A text column of the raw table that holds each row's topic (needed when several topics
    /// load into one raw table).
    pub topic_column: Option<String>,
    /// The archive's compression for this topic (none, gzip, zstd).
    pub compression: Option<String>,
    /// The archive's key template for this topic.
    pub key_template: Option<String>,
    /// copy's --max-errors for this topic.
    pub max_errors: Option<u64>,
}

/// The Schema Registry ingest reads the schemas of Avro-framed messages from (and
/// `produce-tweets --format avro` registers the example's schema in).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryFile {
    /// Base URL, `http://` or `https://` (no credentials in it); BATCHLAYER_SCHEMA_REGISTRY_URL overrides.
    pub url: Option<String>,
    /// Basic authentication's user (a Confluent Cloud API key);
    /// BATCHLAYER_SCHEMA_REGISTRY_USERNAME overrides.
    pub username: Option<String>,
    /// Secret; BATCHLAYER_SCHEMA_REGISTRY_PASSWORD overrides.
    pub password: Option<Secret>,
    /// Secret: a bearer token instead of basic authentication; BATCHLAYER_SCHEMA_REGISTRY_TOKEN overrides.
    pub bearer_token: Option<Secret>,
    /// CA certificate(s) (PEM) that sign the registry's certificate, trusted besides the system CAs.
    pub ca_file: Option<PathBuf>,
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
    /// Topics to archive, each into its own place (`[[topics]]`).
    pub topics: Option<Vec<String>>,
    /// Every topic whose name matches this regex (new ones are picked up by the next run).
    pub topics_pattern: Option<String>,
    /// Consumer group whose committed offsets mark what is archived.
    pub group: Option<String>,
    /// security.protocol (plaintext, ssl, sasl_plaintext, sasl_ssl).
    pub security_protocol: Option<String>,
    /// sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER), or AWS_MSK_IAM:
    /// Amazon MSK's IAM authentication (OAUTHBEARER with a SigV4-signed token).
    pub sasl_mechanism: Option<String>,
    /// AWS_MSK_IAM: the region the token is signed for (default: from the brokers' host
    /// names, else AWS_REGION, else AWS_DEFAULT_REGION).
    pub aws_region: Option<String>,
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
    /// The topic's producers use transactions: offsets the consumer skips (transaction
    /// markers, aborted records) are holes, not a fault. Default false.
    pub transactional: Option<bool>,
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
    /// Redshift: IAM role COPY assumes to read the archive (preferred over access keys): an
    /// ARN, or "default" for the cluster's default role.
    pub iam_role: Option<String>,
    /// Redshift: whether the warehouse is Redshift Serverless (load errors in the SYS views)
    /// or a provisioned cluster (STL views). Unset: detected.
    pub redshift_serverless: Option<bool>,
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

/// `[records]`, and the named layouts `[records.NAME]` beside its keys (any other key is
/// refused when the settings are resolved: serde cannot refuse unknown keys next to a map).
#[derive(Debug, Default, Deserialize)]
pub struct RecordsFile {
    #[serde(flatten)]
    pub layout: LayoutFile,
    /// `[records.NAME]` tables (and any unknown key, refused by `resolve`).
    #[serde(flatten)]
    pub named: BTreeMap<String, toml::Value>,
}

/// The keys of a record layout (`[records]`, `[records.NAME]`).
#[derive(Debug, Default, Deserialize)]
pub struct LayoutFile {
    /// delimited (default), json or avro.
    pub format: Option<crate::records::RecordFormat>,
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
    /// The topics the view reads (many topics): the completeness gate checks each.
    pub topics: Option<Vec<String>>,
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

/// A warning, as ssh gives for keys, when a config file that holds a secret can be read by
/// group or others.
pub(super) fn secrets_exposed(path: &Path, f: &FileConfig) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let holds_secret = f.kafka.sasl_password.is_some()
        || f.kafka.ssl_key_password.is_some()
        || f.archive.secret_access_key.is_some()
        || f.archive.session_token.is_some()
        || f.warehouse.password.is_some()
        || f.schema_registry
            .as_ref()
            .is_some_and(|r| r.password.is_some() || r.bearer_token.is_some())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_is_the_flag_then_the_variable_then_the_default() {
        use std::collections::HashMap;
        let none = HashMap::<String, String>::new();
        let e = HashMap::from([("BATCHLAYER_CONFIG".to_string(), "/env.toml".to_string())]);
        let flag = Path::new("/flag.toml");
        assert_eq!(
            config_path(Some(flag), &e),
            (PathBuf::from("/flag.toml"), true)
        );
        assert_eq!(config_path(None, &e), (PathBuf::from("/env.toml"), true));
        assert_eq!(
            config_path(None, &none),
            (PathBuf::from("batchlayer.toml"), false)
        );
    }

    #[test]
    fn a_schema_registry_secret_in_a_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("batchlayer.toml");
        let sr = "[schema_registry]\nurl = \"http://h:8081\"\n";
        for (extra, mode, warned) in [
            ("username = \"u\"\npassword = \"p\"\n", 0o644, true),
            ("bearer_token = \"t\"\n", 0o640, true),
            ("bearer_token = \"t\"\n", 0o600, false),
            ("username = \"u\"\n", 0o644, false),
        ] {
            let text = format!("{sr}{extra}");
            std::fs::write(&p, &text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let f = parse_file(&text).unwrap();
            assert_eq!(
                secrets_exposed(&p, &f).is_some(),
                warned,
                "{text} mode {mode:o}"
            );
        }
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
}
