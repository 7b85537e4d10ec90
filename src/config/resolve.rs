//! Resolving, one section at a time: the file's values checked and typed, the environment
//! over the file and the flags over both (file < env < flags). Variables are read through
//! [`Env`] (tests give a map); clap reads none.

use super::file::{
    AggregateFile, ArchiveFile, KafkaFile, LakeFile, LogFile, RecordsFile, RetryFile,
    SchemaRegistryFile, StatusFile, WarehouseFile,
};
use super::time::{parse_duration, TimeSpec};
use super::{
    AggregateSettings, ArchiveLocation, ArchiveSettings, AwsChain, Env, KafkaSettings,
    LakeSettings, MskIamSettings, Overrides, PgTls, RedshiftSettings, RegistrySettings, Secret,
    SslMode, StatusSettings, UiSettings, ViewSettings, WarehouseKind, WarehouseSettings,
};
use crate::archive::layout::Compression;
use crate::output::LogFormat;
use crate::records::{Column, ColumnType, Layout, RecordFormat};
use crate::util::RetryPolicy;
use crate::warehouse::conninfo::split_tls_params;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;

fn pick(flag: &Option<String>, env: &dyn Env, key: &str, file: &Option<String>) -> Option<String> {
    flag.clone()
        .or_else(|| env.var(key))
        .or_else(|| file.clone())
}

pub(super) fn required(v: Option<String>, flag: &str, env: &str, file: &str) -> Result<String> {
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

/// Refuses names with upper-case letters for Redshift, naming the key: Redshift folds ASCII
/// letters of identifiers to lower case, quoted ones too (`enable_case_sensitive_identifier` is
/// false by default), so a table created as `Loads` is `loads`, and the catalog lookups that
/// compare names as written (`table_exists`, a view's build record) would never find it.
/// <https://docs.aws.amazon.com/redshift/latest/dg/r_names.html>
pub fn redshift_name(key: &str, name: &str) -> Result<()> {
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        bail!(
            "{key} {name:?} has upper-case letters: Redshift folds identifiers to lower case (quoted ones too), so batchlayer would look for a name the cluster does not keep; write it as {:?}",
            name.to_ascii_lowercase()
        );
    }
    Ok(())
}

/// Redshift's VARCHAR holds at most 65535 bytes.
/// <https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html>
pub const REDSHIFT_VARCHAR_MAX: usize = 65535;

/// The chrono directives [`crate::warehouse::redshift`] turns into TIMEFORMAT dateparts.
const TIMEFORMAT_DIRECTIVES: [&str; 6] = ["%Y", "%m", "%d", "%H", "%M", "%S"];

/// What Redshift's COPY cannot be told of the layout, refused by the key that sets it: a
/// `max_len` over VARCHAR's 65535 bytes (r_Character_types); for delimited records (which COPY
/// reads as archived, with the layout's timestamp format as TIMEFORMAT) a timestamp format with more than the directives TIMEFORMAT is given (%Y %m %d %H %M %S as
/// YYYY MM DD HH24 MI SS) and datetime separators: a letter would be read as a datepart
/// (<https://docs.aws.amazon.com/redshift/latest/dg/r_DATEFORMAT_and_TIMEFORMAT_strings.html>).
/// JSON and Avro records reach COPY as staged JSON lines whose timestamps batchlayer writes in
/// one format of its own, so their layout's timestamp format is batchlayer's alone.
pub(super) fn redshift_layout(layout: &Layout) -> Result<()> {
    for c in &layout.columns {
        if let Some(n) = c.max_len.filter(|&n| n > REDSHIFT_VARCHAR_MAX) {
            bail!(
                "records.columns max_len {n} of column {}: Redshift's VARCHAR holds at most {REDSHIFT_VARCHAR_MAX} bytes",
                c.name
            );
        }
    }
    if layout.format != RecordFormat::Delimited {
        return Ok(());
    }
    let f = &layout.timestamp_format;
    let rest = TIMEFORMAT_DIRECTIVES
        .iter()
        .fold(f.clone(), |s, d| s.replace(d, ""));
    if let Some(c) = rest.chars().find(|c| !" -/:.,".contains(*c)) {
        bail!(
            "records.timestamp_format {f:?}: {c:?} has no Redshift TIMEFORMAT form (only {} and the separators - / : . , and space)",
            TIMEFORMAT_DIRECTIVES.join(" ")
        );
    }
    Ok(())
}

/// Every name batchlayer would create or look up on Redshift, by the key that sets it: each
/// in lower case ([`redshift_name`]).
pub(super) fn redshift_names(
    w: &WarehouseSettings,
    layout: &Layout,
    g: &AggregateSettings,
) -> Result<()> {
    redshift_name("warehouse.schema", &w.schema)?;
    redshift_name("warehouse.raw_table", &w.raw_table)?;
    redshift_name("warehouse.ledger_table", &w.ledger_table)?;
    redshift_name("warehouse.rejects_table", &w.rejects_table)?;
    for c in &layout.columns {
        redshift_name("records.columns name", &c.name)?;
    }
    for (i, v) in g.views.iter().enumerate() {
        let what = match i {
            0 => "aggregate".to_string(),
            n => format!("aggregate.views[{}]", n - 1),
        };
        redshift_name(&format!("{what}.view"), &v.view)?;
        for c in v.max_sum_change.keys() {
            redshift_name(&format!("{what}.max_sum_change column"), c)?;
        }
        for c in &v.non_null_columns {
            redshift_name(&format!("{what}.non_null_columns column"), c)?;
        }
    }
    Ok(())
}

pub(super) fn ui_settings(l: &LogFile, env: &dyn Env, flags: &Overrides) -> Result<UiSettings> {
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

pub(super) fn retry_policy(r: &RetryFile) -> Result<RetryPolicy> {
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

/// The region an MSK broker's host name names: `b-1.NAME.ID.c2.kafka.REGION.amazonaws.com`
/// (provisioned) or `boot-ID.c1.kafka-serverless.REGION.amazonaws.com` (Serverless).
fn region_from_brokers(brokers: &str) -> Option<String> {
    brokers.split(',').find_map(|b| {
        let host = b.trim().rsplit_once(':').map_or(b.trim(), |(h, _)| h);
        let labels: Vec<&str> = host.split('.').collect();
        let n = labels.len();
        (n >= 4
            && labels[n - 2] == "amazonaws"
            && matches!(labels[n - 4], "kafka" | "kafka-serverless"))
        .then(|| labels[n - 3].to_string())
    })
}

/// `sasl_mechanism = "AWS_MSK_IAM"`: the region (kafka.aws_region, else the brokers' host
/// names, else AWS_REGION, else AWS_DEFAULT_REGION; never a guessed default) and the
/// credentials the archive would use (keys from the environment, else `[archive]`'s keys,
/// else the chain: profile, web identity, container, instance metadata).
fn msk_iam_settings(
    k: &KafkaFile,
    a: &ArchiveFile,
    env: &dyn Env,
    brokers: &str,
) -> Result<MskIamSettings> {
    let region = k
        .aws_region
        .clone()
        .or_else(|| region_from_brokers(brokers))
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .ok_or_else(|| {
            anyhow!("kafka.sasl_mechanism = \"AWS_MSK_IAM\" needs a region: set kafka.aws_region (or AWS_REGION); the brokers' host names ({brokers}) do not name one")
        })?;
    let plain = !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !plain {
        bail!("kafka.aws_region {region:?} is not an AWS region name (like eu-west-1)");
    }
    if let Some(p) = &k.security_protocol {
        if !p.to_ascii_lowercase().starts_with("sasl_") {
            bail!("kafka.security_protocol {p:?} cannot carry AWS_MSK_IAM (SASL): use sasl_ssl (the default with AWS_MSK_IAM)");
        }
    }
    let (access_key_id, secret_access_key, session_token) = aws_keys(a, env);
    Ok(MskIamSettings {
        region,
        access_key_id,
        secret_access_key,
        session_token,
        chain: aws_chain(a, env),
    })
}

pub(super) fn kafka_settings(
    k: &KafkaFile,
    a: &ArchiveFile,
    env: &dyn Env,
    flags: &Overrides,
    retry: RetryPolicy,
) -> Result<KafkaSettings> {
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
    let brokers = pick(&flags.brokers, env, "BATCHLAYER_KAFKA_BROKERS", &k.brokers)
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let msk_iam = match &k.sasl_mechanism {
        Some(m) if m.eq_ignore_ascii_case("AWS_MSK_IAM") => {
            Some(msk_iam_settings(k, a, env, &brokers)?)
        }
        _ => {
            if k.aws_region.is_some() {
                bail!("kafka.aws_region is used only with kafka.sasl_mechanism = \"AWS_MSK_IAM\"");
            }
            None
        }
    };
    let (security_protocol, sasl_mechanism) = match &msk_iam {
        // MSK IAM is SASL/OAUTHBEARER over TLS (port 9098; 9198 for public access).
        Some(_) => (
            Some(
                k.security_protocol
                    .clone()
                    .unwrap_or_else(|| "sasl_ssl".into()),
            ),
            Some("OAUTHBEARER".to_string()),
        ),
        None => (k.security_protocol.clone(), k.sasl_mechanism.clone()),
    };
    Ok(KafkaSettings {
        brokers,
        // Only ingest needs a topic: `Settings::require_kafka` names it when missing.
        topic: pick(&flags.topic, env, "BATCHLAYER_KAFKA_TOPIC", &k.topic).unwrap_or_default(),
        group: pick(&flags.group, env, "BATCHLAYER_KAFKA_GROUP", &k.group)
            .unwrap_or_else(|| "batchlayer".into()),
        security_protocol,
        sasl_mechanism,
        sasl_username: env
            .var("BATCHLAYER_KAFKA_SASL_USERNAME")
            .or_else(|| k.sasl_username.clone()),
        sasl_password: env
            .var("BATCHLAYER_KAFKA_SASL_PASSWORD")
            .map(Secret::new)
            .or_else(|| k.sasl_password.clone()),
        stall_timeout_secs: k.stall_timeout_secs.unwrap_or(60).max(1),
        ssl_ca_location: k.ssl_ca_location.clone(),
        ssl_certificate_location: k.ssl_certificate_location.clone(),
        ssl_key_location: k.ssl_key_location.clone(),
        ssl_key_password: env
            .var("BATCHLAYER_KAFKA_SSL_KEY_PASSWORD")
            .map(Secret::new)
            .or_else(|| k.ssl_key_password.clone()),
        ssl_endpoint_identification: k.ssl_endpoint_identification,
        properties: k.properties.clone().unwrap_or_default(),
        session_timeout_secs: k.session_timeout_secs.unwrap_or(10).max(1),
        member_wait_secs: k.member_wait_secs.unwrap_or(30),
        transactional: k.transactional.unwrap_or(false),
        group_instance_id: k.group_instance_id.clone(),
        retry,
        msk_iam,
    })
}

/// `[schema_registry]`, the environment over the file: None when no URL is set anywhere (other
/// keys without a URL are an error). The URL is http or https with no user or password in it
/// (so it can be printed); a password needs a user; basic authentication and a bearer token
/// exclude each other.
pub(super) fn registry_settings(
    r: Option<&SchemaRegistryFile>,
    env: &dyn Env,
    retry: RetryPolicy,
) -> Result<Option<RegistrySettings>> {
    let none = SchemaRegistryFile::default();
    let f = r.unwrap_or(&none);
    let username = env
        .var("BATCHLAYER_SCHEMA_REGISTRY_USERNAME")
        .or_else(|| f.username.clone());
    let password = env
        .var("BATCHLAYER_SCHEMA_REGISTRY_PASSWORD")
        .map(Secret::new)
        .or_else(|| f.password.clone());
    let bearer_token = env
        .var("BATCHLAYER_SCHEMA_REGISTRY_TOKEN")
        .map(Secret::new)
        .or_else(|| f.bearer_token.clone());
    let Some(url) = env
        .var("BATCHLAYER_SCHEMA_REGISTRY_URL")
        .or_else(|| f.url.clone())
    else {
        if r.is_some() || username.is_some() || password.is_some() || bearer_token.is_some() {
            bail!("missing schema_registry.url: set BATCHLAYER_SCHEMA_REGISTRY_URL, or url in [schema_registry]");
        }
        return Ok(None);
    };
    // Nothing of the URL is printed before it is known to hold no credentials.
    let parsed = url::Url::parse(&url)
        .map_err(|e| anyhow!("schema_registry.url is not a URL ({e}): expected http://host[:port][/path] or https://..."))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!("schema_registry.url has credentials in it: give the user as schema_registry.username and the password in BATCHLAYER_SCHEMA_REGISTRY_PASSWORD");
    }
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        bail!("schema_registry.url {url:?}: expected http://host[:port][/path] or https://...");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("schema_registry.url {url:?}: no query or fragment, only the base URL");
    }
    match (&username, &password, &bearer_token) {
        (Some(_), None, _) => bail!(
            "schema_registry.username is set but no password: set BATCHLAYER_SCHEMA_REGISTRY_PASSWORD"
        ),
        (None, Some(_), _) => bail!(
            "a schema registry password is set but no user: set schema_registry.username"
        ),
        (Some(_), Some(_), Some(_)) => bail!(
            "the schema registry has both a password and a bearer token: give one (basic authentication or BATCHLAYER_SCHEMA_REGISTRY_TOKEN)"
        ),
        _ => {}
    }
    if let Some(p) = &f.ca_file {
        if !p.is_file() {
            bail!("schema_registry.ca_file {}: no such file", p.display());
        }
    }
    Ok(Some(RegistrySettings {
        url: url.trim_end_matches('/').to_string(),
        username,
        password,
        bearer_token,
        ca_file: f.ca_file.clone(),
        retry,
    }))
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
            let (access_key_id, secret_access_key, session_token) = aws_keys(a, env);
            Ok(ArchiveLocation::S3 {
                bucket: bucket.to_string(),
                prefix: parsed.path().trim_matches('/').to_string(),
                path_style: a.path_style.unwrap_or(endpoint.is_some()),
                endpoint,
                region: archive_region(a, env).unwrap_or_else(|| "us-east-1".into()),
                access_key_id,
                secret_access_key,
                session_token,
                chain: aws_chain(a, env),
            })
        }
        _ => bail!(
            "archive.url {url:?}: unsupported scheme (use s3://bucket/prefix, file:///dir or a path)"
        ),
    }
}

/// The AWS keys (access key id, secret, session token): the environment's, else the archive
/// section's. The archive and MSK IAM both sign with them.
fn aws_keys(a: &ArchiveFile, env: &dyn Env) -> (Option<String>, Option<Secret>, Option<Secret>) {
    let secret =
        |var: &str, file: &Option<Secret>| env.var(var).map(Secret::new).or_else(|| file.clone());
    (
        env.var("AWS_ACCESS_KEY_ID")
            .or_else(|| a.access_key_id.clone()),
        secret("AWS_SECRET_ACCESS_KEY", &a.secret_access_key),
        secret("AWS_SESSION_TOKEN", &a.session_token),
    )
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

pub(super) fn archive_settings(
    a: &ArchiveFile,
    env: &dyn Env,
    flags: &Overrides,
    retry: RetryPolicy,
) -> Result<ArchiveSettings> {
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
        retry,
    })
}

/// The archive's region when one is given: AWS_REGION, AWS_DEFAULT_REGION, archive.region.
pub(super) fn archive_region(a: &ArchiveFile, env: &dyn Env) -> Option<String> {
    env.var("AWS_REGION")
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .or_else(|| a.region.clone())
}

/// Redshift's COPY reads the archive from S3 with a role or the archive's keys, in the region
/// given (warehouse.region, else the archive's own when given): COPY's REGION is the bucket's
/// (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html), and a
/// guess (us-east-1) would send a bucket elsewhere to the wrong region.
fn redshift_settings(
    w: &WarehouseFile,
    archive: &ArchiveSettings,
    archive_region: Option<String>,
) -> Result<RedshiftSettings> {
    let ArchiveLocation::S3 {
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
    if let Some(role) = &w.iam_role {
        // https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-authorization.html:
        // IAM_ROLE { default | 'arn:aws:iam::<AWS account-id>:role/<role-name>' }
        if role != "default" && !(role.starts_with("arn:") && role.contains(":role/")) {
            bail!("warehouse.iam_role {role:?} is neither \"default\" nor a role ARN (arn:aws:iam::ACCOUNT:role/NAME)");
        }
    }
    Ok(RedshiftSettings {
        iam_role: w.iam_role.clone(),
        serverless: w.redshift_serverless,
        region: w.region.clone().or(archive_region).ok_or_else(|| {
            anyhow!("warehouse.region is not set: Redshift COPY needs the archive bucket's region (REGION); set warehouse.region, or the archive's (archive.region or AWS_REGION)")
        })?,
    })
}

pub(super) fn warehouse_settings(
    w: &WarehouseFile,
    env: &dyn Env,
    flags: &Overrides,
    archive: (&ArchiveSettings, &ArchiveFile),
    retry: RetryPolicy,
) -> Result<WarehouseSettings> {
    let (archive, archive_file) = archive;
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
            WarehouseKind::Redshift => Some(redshift_settings(
                w,
                archive,
                archive_region(archive_file, env),
            )?),
            WarehouseKind::Postgres => None,
        },
        kind,
        url,
        tls: PgTls { mode, root_cert },
        retry,
        copy_format: w.copy_format.unwrap_or_default(),
        password: env
            .var("PGPASSWORD")
            .map(Secret::new)
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

/// The named layouts, `[records.NAME]`: each as `[records]` is read, on top of the tweets'.
pub(super) fn named_layouts(
    r: Option<&RecordsFile>,
) -> Result<std::collections::BTreeMap<String, Layout>> {
    let mut out = std::collections::BTreeMap::new();
    for (name, v) in r.map(|r| &r.named).into_iter().flatten() {
        if !v.is_table() {
            continue; // refused by layout_settings as an unknown key
        }
        validate_ident(&format!("records.{name}"), name)?;
        let f: RecordsFile = v
            .clone()
            .try_into()
            .map_err(|e| anyhow!("records.{name}: {e}"))?;
        if let Some(k) = f.named.keys().next() {
            bail!("records.{name}.{k}: unknown key (named layouts do not nest)");
        }
        out.insert(
            name.clone(),
            layout_settings(Some(&f)).map_err(|e| anyhow!("records.{name}: {e}"))?,
        );
    }
    Ok(out)
}

pub(super) fn layout_settings(r: Option<&RecordsFile>) -> Result<Layout> {
    let mut layout = Layout::tweets();
    if let Some((k, _)) = r.and_then(|r| r.named.iter().find(|(_, v)| !v.is_table())) {
        bail!("records.{k}: unknown key (expected format, delimiter, trailing_delimiter, timestamp_format, columns, or a named layout [records.NAME])");
    }
    let r = r.map(|r| &r.layout);
    if let Some(r) = r {
        if let Some(d) = &r.delimiter {
            let b = d.as_bytes();
            if b.len() != 1 || b[0] == b'\\' || b[0] == b'\n' || b[0] == b'\r' {
                // One byte in UTF-8 is one ASCII character, as Redshift COPY's DELIMITER must be
                // ("the single ASCII character that is used to separate fields"):
                // https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html
                bail!("records.delimiter {d:?} must be one ASCII character other than backslash, CR or LF");
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
    if let Some(f) = r.and_then(|r| r.format) {
        layout.format = f;
    }
    for c in &layout.columns {
        validate_ident("records.columns name", &c.name)?;
        column_source(layout.format, c)?;
    }
    if layout.format != RecordFormat::Delimited {
        if let Some(r) = r.filter(|r| r.delimiter.is_some() || r.trailing_delimiter.is_some()) {
            let key = if r.delimiter.is_some() {
                "delimiter"
            } else {
                "trailing_delimiter"
            };
            bail!(
                "records.{key} applies to delimited records; records.format is {}",
                layout.format.name()
            );
        }
    }
    Ok(layout)
}

/// Where a column's value comes from must suit the record format: `path` (a JSON Pointer)
/// for JSON, `field` for Avro, neither for delimited; `unit` only on timestamps.
fn column_source(format: RecordFormat, c: &Column) -> Result<()> {
    let name = &c.name;
    match format {
        RecordFormat::Json => {
            if let Some(p) = c
                .path
                .as_deref()
                .filter(|p| !p.is_empty() && !p.starts_with('/'))
            {
                bail!("records.columns path {p:?} of column {name}: a JSON Pointer is empty (the whole record) or starts with /");
            }
        }
        RecordFormat::Avro => {
            if let Some(f) = c
                .field
                .as_deref()
                .filter(|f| f.is_empty() || f.split('.').any(str::is_empty))
            {
                bail!("records.columns field {f:?} of column {name}: a dotted path of field names (user.id)");
            }
        }
        RecordFormat::Delimited => {}
    }
    let wrong = match format {
        RecordFormat::Json => c.field.as_ref().map(|_| "field"),
        RecordFormat::Avro => c.path.as_ref().map(|_| "path"),
        RecordFormat::Delimited => c
            .path
            .as_ref()
            .map(|_| "path")
            .or(c.field.as_ref().map(|_| "field")),
    };
    if let Some(key) = wrong {
        bail!(
            "records.columns {key} of column {name} does not apply to records.format {}",
            format.name()
        );
    }
    if c.unit.is_some() && c.ty != ColumnType::Timestamp {
        bail!("records.columns unit of column {name}: only timestamp columns take a unit");
    }
    Ok(())
}

pub(super) fn aggregate_settings(g: &AggregateFile) -> Result<AggregateSettings> {
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

/// `[lake]`: the lake's store is opened as the archive's is (same credentials and retry); its
/// URL is `--lake`, BATCHLAYER_LAKE_URL, `lake.url`, else the archive's with `-lake` added
/// (a directory beside the archive's, or a prefix beside it in the same bucket).
pub(super) fn lake_settings(
    l: &LakeFile,
    a: &ArchiveFile,
    archive: &ArchiveSettings,
    env: &dyn Env,
    flags: &Overrides,
) -> Result<LakeSettings> {
    let given = pick(&flags.lake, env, "BATCHLAYER_LAKE_URL", &l.url);
    let explicit = given.is_some();
    let (location, url) =
        match given {
            Some(url) => {
                let endpoint = pick(&None, env, "BATCHLAYER_LAKE_S3_ENDPOINT", &l.endpoint)
                    .or_else(|| match &archive.location {
                        ArchiveLocation::S3 { endpoint, .. } => endpoint.clone(),
                        ArchiveLocation::Local(_) => None,
                    });
                let loc = archive_location(&url, a, env, endpoint)
                    .map_err(|e| anyhow!("lake.url: {e}"))?;
                (loc, url)
            }
            None => match &archive.location {
                ArchiveLocation::Local(dir) => {
                    let mut name = dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "batchlayer-archive".into());
                    name.push_str("-lake");
                    let d = dir.with_file_name(name);
                    let url = d.display().to_string();
                    (ArchiveLocation::Local(d), url)
                }
                ArchiveLocation::S3 { bucket, prefix, .. } => {
                    let p = if prefix.is_empty() {
                        "batchlayer-lake".to_string()
                    } else {
                        format!("{}-lake", prefix.trim_end_matches('/'))
                    };
                    let mut loc = archive.location.clone();
                    let own = pick(&None, env, "BATCHLAYER_LAKE_S3_ENDPOINT", &l.endpoint);
                    if let ArchiveLocation::S3 {
                        prefix: q,
                        endpoint,
                        ..
                    } = &mut loc
                    {
                        *q = p.clone();
                        if own.is_some() {
                            *endpoint = own;
                        }
                    }
                    (loc, format!("s3://{bucket}/{p}"))
                }
            },
        };
    let compression = match l.compression.as_deref().unwrap_or("snappy") {
        "snappy" => crate::lake::ParquetCompression::Snappy,
        "zstd" => {
            let level = l.zstd_level.unwrap_or(3);
            if !(1..=22).contains(&level) {
                bail!("lake.zstd_level {level}: zstd's levels are 1 to 22");
            }
            crate::lake::ParquetCompression::Zstd(level)
        }
        other => bail!("lake.compression {other:?}: use snappy or zstd"),
    };
    if let Some(t) = &l.table {
        validate_ident("lake.table", t)?;
    }
    if let Some(t) = &l.spectrum_schema {
        validate_ident("lake.spectrum_schema", t)?;
    }
    let positive = |v: Option<u64>, d: u64, what: &str| -> Result<u64> {
        match v {
            Some(0) => bail!("lake.{what} must be above 0"),
            Some(n) => Ok(n),
            None => Ok(d),
        }
    };
    Ok(LakeSettings {
        store: ArchiveSettings {
            location,
            ..archive.clone()
        },
        url,
        compression,
        file_bytes: positive(l.file_bytes, 128 << 20, "file_bytes")?,
        row_group_bytes: positive(l.row_group_bytes, 32 << 20, "row_group_bytes")?,
        row_group_rows: positive(l.row_group_rows, 1_000_000, "row_group_rows")?,
        table: l.table.clone(),
        explicit,
        spectrum_schema: l.spectrum_schema.clone(),
    })
}

pub(super) fn status_settings(f: &StatusFile) -> Result<StatusSettings> {
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
    let topics = g.topics.clone().unwrap_or_default();
    Ok(ViewSettings {
        topics,
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

#[cfg(test)]
mod tests {
    use super::super::{parse_file, resolve, FileConfig};
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MANY: &str = r#"
[kafka]
topics_pattern = '^prod\.'
[archive]
url = "s3://b/p"
compression = "gzip"
[records.orders]
format = "json"
columns = [{ name = "id", type = "bigint" }, { name = "amount", type = "double" }]
[[topics]]
name = "prod.orders"
records = "orders"
compression = "zstd"
key_template = "{topic}/{YYYY}/{MM}"
max_errors = 7
[[topics]]
pattern = '^prod\.tweets\.'
raw_table = "tweets_raw"
topic_column = "topic"
"#;

    #[test]
    fn each_topic_gets_its_routes_table_layout_and_overrides() {
        let s = resolve(parse_file(MANY).unwrap(), &env(&[]), &Overrides::default()).unwrap();
        assert!(s.topics.multi());
        assert!(s.topics.takes("prod.orders") && !s.topics.takes("dev.orders"));
        let o = s.for_topic("prod.orders").unwrap();
        assert_eq!(o.kafka.topic, "prod.orders");
        assert_eq!(o.warehouse.raw_table, "prod_orders");
        assert_eq!(o.warehouse.ledger_table, "prod_orders_loads");
        assert_eq!(o.warehouse.rejects_table, "prod_orders_rejects");
        assert_eq!(o.layout.format, RecordFormat::Json);
        assert_eq!(o.layout.columns.len(), 2);
        assert_eq!(o.archive.compression, Compression::Zstd);
        assert_eq!(o.archive.key_template, "{topic}/{YYYY}/{MM}");
        assert_eq!(o.max_errors, Some(7));
        // A per-topic run of a topic is a single-topic run narrowed to it.
        assert!(!o.topics.multi() && o.topics.takes("prod.orders") && !o.topics.takes("x"));
        let t = s.for_topic("prod.tweets.eu").unwrap();
        assert_eq!(t.warehouse.raw_table, "tweets_raw");
        assert_eq!(t.layout.topic_column.as_deref(), Some("topic"));
        assert_eq!(t.layout.columns, Layout::tweets().columns);
        assert_eq!(t.archive.compression, Compression::Gzip);
        assert_eq!(t.max_errors, None);
        // Archived, but no route: copy refuses it (exit 2), ingest archives it as configured.
        let err = s.for_topic("prod.other").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::USAGE);
        assert!(
            err.to_string()
                .contains("prod.other matches no [[topics]] entry"),
            "{err}"
        );
        let a = s.for_topic_archive("prod.other").unwrap();
        assert_eq!(a.archive.compression, Compression::Gzip);
    }

    #[test]
    fn many_topics_keys_are_checked() {
        let with = |extra: &str| {
            resolve(
                parse_file(&format!("{MANY}{extra}")).unwrap(),
                &env(&[]),
                &Overrides::default(),
            )
        };
        let err = |extra: &str| format!("{:#}", with(extra).unwrap_err());
        assert!(err("[[topics]]\nname = \"x\"\nrecords = \"nope\"\n").contains("no [records.nope]"));
        assert!(err("[[topics]]\nname = \"x\"\npattern = \"y\"\n").contains("one of them"));
        assert!(err("[[topics]]\nname = \"x\"\nraw_table = \"a b\"\n")
            .contains("not a valid identifier"));
        assert!(err("[[topics]]\nname = \"x\"\ncompression = \"lz4\"\n")
            .contains("topics[2].compression"));
        assert!(
            err("[[topics]]\nname = \"x\"\nrecords = \"orders\"\ntopic_column = \"id\"\n")
                .contains("also a column")
        );
        // A key of [records] that is neither a layout key nor a named layout.
        let e = format!(
            "{:#}",
            resolve(
                parse_file("[kafka]\ntopic = \"t\"\n[records]\ndelimter = \";\"\n").unwrap(),
                &env(&[]),
                &Overrides::default()
            )
            .unwrap_err()
        );
        assert!(e.contains("records.delimter: unknown key"), "{e}");
        // One topic and many exclude each other; [[topics]] needs many.
        let e = format!(
            "{:#}",
            resolve(
                parse_file("[kafka]\ntopic = \"t\"\ntopics = [\"a\"]\n").unwrap(),
                &env(&[]),
                &Overrides::default()
            )
            .unwrap_err()
        );
        assert!(e.contains("set one of them"), "{e}");
        let e = format!(
            "{:#}",
            resolve(
                parse_file("[kafka]\ntopic = \"t\"\n[[topics]]\nname = \"t\"\n").unwrap(),
                &env(&[]),
                &Overrides::default()
            )
            .unwrap_err()
        );
        assert!(
            e.contains("[[topics]] routes topics of kafka.topics"),
            "{e}"
        );
    }

    #[test]
    fn the_environment_s_topics_replace_the_file_s() {
        let file = "[kafka]\ntopic = \"t\"\n";
        let s = resolve(
            parse_file(file).unwrap(),
            &env(&[("BATCHLAYER_KAFKA_TOPICS", "a, b")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            s.topics.listed(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        let s = resolve(
            parse_file(MANY).unwrap(),
            &env(&[("BATCHLAYER_KAFKA_TOPICS_PATTERN", "^dev\\.")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(s.topics.takes("dev.x") && !s.topics.takes("prod.orders"));
        // --topic narrows many topics.
        let flags = Overrides {
            topics: vec!["^prod\\.tweets".into()],
            ..Overrides::default()
        };
        let s = resolve(parse_file(MANY).unwrap(), &env(&[]), &flags).unwrap();
        assert!(s.topics.takes("prod.tweets.eu") && !s.topics.takes("prod.orders"));
    }

    #[test]
    fn status_lateness_and_the_completeness_gate_from_the_file() {
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

    /// The variables a flag also sets: each beats the file, and its flag beats it.
    #[test]
    fn every_flag_with_a_variable_is_file_then_env_then_flag() {
        let text = "[kafka]\nbrokers = \"file:1\"\ntopic = \"t_file\"\ngroup = \"g_file\"\n\
                    [archive]\nurl = \"s3://file/p\"\nendpoint = \"http://file:1\"\n\
                    [warehouse]\nurl = \"postgresql://file@h/db\"\n";
        let e = env(&[
            ("BATCHLAYER_KAFKA_BROKERS", "env:1"),
            ("BATCHLAYER_KAFKA_TOPIC", "t_env"),
            ("BATCHLAYER_KAFKA_GROUP", "g_env"),
            ("BATCHLAYER_ARCHIVE_URL", "s3://env/p"),
            ("BATCHLAYER_S3_ENDPOINT", "http://env:1"),
            ("BATCHLAYER_WAREHOUSE_URL", "postgresql://env@h/db"),
        ]);
        let s3 = |s: &super::super::Settings| match &s.archive.location {
            ArchiveLocation::S3 {
                bucket, endpoint, ..
            } => (bucket.clone(), endpoint.clone().unwrap()),
            other => panic!("{other:?}"),
        };
        let s = resolve(parse_file(text).unwrap(), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            (
                s.kafka.brokers.as_str(),
                s.kafka.topic.as_str(),
                s.kafka.group.as_str()
            ),
            ("file:1", "t_file", "g_file")
        );
        assert_eq!(s3(&s), ("file".into(), "http://file:1".into()));
        assert_eq!(s.warehouse.url, "postgresql://file@h/db");
        let s = resolve(parse_file(text).unwrap(), &e, &Overrides::default()).unwrap();
        assert_eq!(
            (
                s.kafka.brokers.as_str(),
                s.kafka.topic.as_str(),
                s.kafka.group.as_str()
            ),
            ("env:1", "t_env", "g_env")
        );
        assert_eq!(s3(&s), ("env".into(), "http://env:1".into()));
        assert_eq!(s.warehouse.url, "postgresql://env@h/db");
        let flags = Overrides {
            brokers: Some("flag:1".into()),
            topic: Some("t_flag".into()),
            group: Some("g_flag".into()),
            archive: Some("s3://flag/p".into()),
            s3_endpoint: Some("http://flag:1".into()),
            warehouse_url: Some("postgresql://flag@h/db".into()),
            ..Default::default()
        };
        let s = resolve(parse_file(text).unwrap(), &e, &flags).unwrap();
        assert_eq!(
            (
                s.kafka.brokers.as_str(),
                s.kafka.topic.as_str(),
                s.kafka.group.as_str()
            ),
            ("flag:1", "t_flag", "g_flag")
        );
        assert_eq!(s3(&s), ("flag".into(), "http://flag:1".into()));
        assert_eq!(s.warehouse.url, "postgresql://flag@h/db");
    }

    #[test]
    fn retry_is_one_policy_for_every_backend() {
        let s = resolve(
            parse_file("[retry]\nattempts = 7\ninitial_backoff_ms = 10\n").unwrap(),
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.retry.attempts, 7);
        assert_eq!(s.retry.initial, std::time::Duration::from_millis(10));
        for r in [s.kafka.retry, s.archive.retry, s.warehouse.retry] {
            assert_eq!(r, s.retry);
        }
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
    fn the_schema_registry_is_file_then_env_and_its_secrets_never_print() {
        let none = resolve(FileConfig::default(), &env(&[]), &Overrides::default()).unwrap();
        assert!(none.schema_registry.is_none());
        let text = "[schema_registry]\nurl = \"http://file:8081/\"\nusername = \"fileuser\"\npassword = \"srfilepass1\"\n";
        let s = resolve(parse_file(text).unwrap(), &env(&[]), &Overrides::default()).unwrap();
        let r = s.schema_registry.as_ref().unwrap();
        assert_eq!(r.url, "http://file:8081", "no trailing slash");
        assert_eq!(r.username.as_deref(), Some("fileuser"));
        assert_eq!(r.password.as_ref().unwrap().expose(), "srfilepass1");
        assert_eq!(r.retry, s.retry);
        let e = env(&[
            ("BATCHLAYER_SCHEMA_REGISTRY_URL", "https://env.example/api"),
            ("BATCHLAYER_SCHEMA_REGISTRY_USERNAME", "envuser"),
            ("BATCHLAYER_SCHEMA_REGISTRY_PASSWORD", "srenvpass2"),
        ]);
        let s = resolve(parse_file(text).unwrap(), &e, &Overrides::default()).unwrap();
        let r = s.schema_registry.as_ref().unwrap();
        assert_eq!(
            (r.url.as_str(), r.username.as_deref()),
            ("https://env.example/api", Some("envuser"))
        );
        assert_eq!(r.password.as_ref().unwrap().expose(), "srenvpass2");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("srenvpass2"), "{dbg}");
        // A token alone, and the URL from the environment without a section.
        let e = env(&[
            ("BATCHLAYER_SCHEMA_REGISTRY_URL", "http://h:1"),
            ("BATCHLAYER_SCHEMA_REGISTRY_TOKEN", "srtoken3"),
        ]);
        let s = resolve(FileConfig::default(), &e, &Overrides::default()).unwrap();
        let r = s.schema_registry.as_ref().unwrap();
        assert_eq!(r.bearer_token.as_ref().unwrap().expose(), "srtoken3");
        assert!(r.username.is_none() && r.password.is_none());
        assert!(!format!("{s:?}").contains("srtoken3"));
    }

    #[test]
    fn schema_registry_settings_that_cannot_work_are_refused() {
        let sr = |body: &str| format!("[schema_registry]\n{body}");
        for (text, vars, want) in [
            (sr("username = \"u\"\n"), vec![], "missing schema_registry.url"),
            (
                String::new(),
                vec![("BATCHLAYER_SCHEMA_REGISTRY_TOKEN", "t")],
                "missing schema_registry.url",
            ),
            (
                sr("url = \"http://u:pw@h:8081\"\n"),
                vec![],
                "credentials in it",
            ),
            (sr("url = \"ftp://h\"\n"), vec![], "expected http"),
            (sr("url = \"h:8081\"\n"), vec![], "expected http"),
            (sr("url = \"127.0.0.1:8081\"\n"), vec![], "not a URL"),
            (sr("url = \"http://h/?x=1\"\n"), vec![], "no query"),
            (
                sr("url = \"http://h\"\nusername = \"u\"\n"),
                vec![],
                "no password",
            ),
            (
                sr("url = \"http://h\"\n"),
                vec![("BATCHLAYER_SCHEMA_REGISTRY_PASSWORD", "p")],
                "no user",
            ),
            (
                sr("url = \"http://h\"\nusername = \"u\"\npassword = \"p\"\nbearer_token = \"t\"\n"),
                vec![],
                "both a password and a bearer token",
            ),
            (
                sr("url = \"https://h\"\nca_file = \"/nonexistent/ca.pem\"\n"),
                vec![],
                "schema_registry.ca_file /nonexistent/ca.pem: no such file",
            ),
        ] {
            let err = resolve(parse_file(&text).unwrap(), &env(&vars), &Overrides::default())
                .map(|_| ())
                .unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(want), "{text:?} {vars:?}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }

    #[test]
    fn bad_table_names_are_refused() {
        let text = "[kafka]\ntopic=\"t\"\n[warehouse]\nraw_table=\"x; drop table y\"\n";
        let err = resolve(parse_file(text).unwrap(), &env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid identifier"), "{err}");
    }

    /// Redshift keeps names in lower case: upper case is refused at config time, naming the
    /// key; PostgreSQL keeps quoted names as written, so there it is accepted.
    #[test]
    fn upper_case_names_are_refused_for_redshift() {
        let base = "[kafka]\ntopic=\"t\"\n[archive]\nurl=\"s3://b/p\"\n";
        let rs = "[warehouse]\nkind=\"redshift\"\niam_role=\"arn:aws:iam::1:role/r\"\nregion=\"eu-west-1\"\n";
        for (extra, key) in [
            ("ledger_table=\"Loads\"\n", "warehouse.ledger_table"),
            ("schema=\"Batch\"\n", "warehouse.schema"),
            ("[aggregate]\nview=\"BatchLayer\"\n", "aggregate.view"),
        ] {
            let text = format!("{base}{rs}{extra}");
            let err =
                resolve(parse_file(&text).unwrap(), &env(&[]), &Overrides::default()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains("lower case"), "{msg}");
        }
        let pg = format!("{base}[warehouse]\nledger_table=\"Loads\"\n");
        assert!(resolve(parse_file(&pg).unwrap(), &env(&[]), &Overrides::default()).is_ok());
        let text = format!("{base}{rs}ledger_table=\"loads\"\n");
        assert!(resolve(parse_file(&text).unwrap(), &env(&[]), &Overrides::default()).is_ok());
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
    fn aws_msk_iam_is_oauthbearer_over_tls_with_the_archive_credentials() {
        let text = "[kafka]\nsasl_mechanism = \"AWS_MSK_IAM\"\n\
                    brokers = \"b-1.demo.abc123.c2.kafka.eu-west-1.amazonaws.com:9098,b-2.demo.abc123.c2.kafka.eu-west-1.amazonaws.com:9098\"\n\
                    [archive]\nprofile = \"msk\"\n";
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret-from-env"),
            ("AWS_SESSION_TOKEN", "token-from-env"),
            ("AWS_REGION", "us-east-1"),
        ]);
        let s = resolve(parse_file(text).unwrap(), &e, &Overrides::default()).unwrap();
        let m = s.kafka.msk_iam.as_ref().expect("msk_iam settings");
        // The brokers' host names beat AWS_REGION (which may be the archive bucket's).
        assert_eq!(m.region, "eu-west-1");
        assert_eq!(m.access_key_id.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(m.session_token.as_ref().unwrap().expose(), "token-from-env");
        assert_eq!(m.chain.profile.as_deref(), Some("msk"));
        assert_eq!(s.kafka.sasl_mechanism.as_deref(), Some("OAUTHBEARER"));
        assert_eq!(s.kafka.security_protocol.as_deref(), Some("sasl_ssl"));
        let dbg = format!("{:?}", s.kafka);
        assert!(
            !dbg.contains("secret-from-env") && !dbg.contains("token-from-env"),
            "{dbg}"
        );

        // kafka.aws_region beats the host names; Serverless host names name theirs too.
        let explicit = "[kafka]\nsasl_mechanism = \"aws_msk_iam\"\naws_region = \"ap-south-1\"\nbrokers = \"b-1.x.kafka.eu-west-1.amazonaws.com:9098\"\n";
        let s = resolve(
            parse_file(explicit).unwrap(),
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.kafka.msk_iam.unwrap().region, "ap-south-1");
        assert_eq!(
            region_from_brokers("boot-abc.c1.kafka-serverless.us-east-2.amazonaws.com:9098"),
            Some("us-east-2".into())
        );
        assert_eq!(region_from_brokers("127.0.0.1:9092,kafka:9092"), None);

        // Elsewhere AWS_REGION, then AWS_DEFAULT_REGION; never a guessed default.
        let local = "[kafka]\nsasl_mechanism = \"AWS_MSK_IAM\"\nbrokers = \"127.0.0.1:9098\"\n";
        let s = resolve(
            parse_file(local).unwrap(),
            &env(&[("AWS_DEFAULT_REGION", "sa-east-1")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.kafka.msk_iam.unwrap().region, "sa-east-1");
        let err = resolve(parse_file(local).unwrap(), &env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.aws_region"), "{err}");
    }

    #[test]
    fn aws_msk_iam_refuses_what_cannot_work() {
        let refused = |text: &str| {
            resolve(
                parse_file(text).unwrap(),
                &env(&[("AWS_REGION", "us-east-1")]),
                &Overrides::default(),
            )
            .unwrap_err()
            .to_string()
        };
        let err =
            refused("[kafka]\nsasl_mechanism = \"AWS_MSK_IAM\"\nsecurity_protocol = \"ssl\"\n");
        assert!(
            err.contains("kafka.security_protocol") && err.contains("sasl_ssl"),
            "{err}"
        );
        let err = refused("[kafka]\nsasl_mechanism = \"AWS_MSK_IAM\"\naws_region = \"EU West\"\n");
        assert!(err.contains("kafka.aws_region"), "{err}");
        let err = refused("[kafka]\nsasl_mechanism = \"PLAIN\"\naws_region = \"us-east-1\"\n");
        assert!(err.contains("AWS_MSK_IAM"), "{err}");
    }

    #[test]
    fn redshift_role_flavour_and_temporary_keys() {
        let text = |extra: &str| {
            format!("[archive]\nurl = \"s3://b/p\"\nregion = \"eu-west-1\"\n[warehouse]\nkind = \"redshift\"\n{extra}")
        };
        let none = Overrides::default();
        let rs = |extra: &str, e: &[(&str, &str)]| {
            resolve(parse_file(&text(extra)).unwrap(), &env(e), &none).map(|s| s.warehouse)
        };
        let w = rs("iam_role = \"default\"\nredshift_serverless = true\n", &[]).unwrap();
        let r = w.redshift.unwrap();
        assert_eq!(
            (r.iam_role.as_deref(), r.serverless),
            (Some("default"), Some(true))
        );
        let w = rs("iam_role = \"arn:aws:iam::1:role/r\"\n", &[]).unwrap();
        assert_eq!(w.redshift.unwrap().serverless, None, "unset: detected");
        let err = format!("{:#}", rs("iam_role = \"Loader\"\n", &[]).unwrap_err());
        assert!(err.contains("warehouse.iam_role"), "{err}");
        // Temporary keys: the session token comes with them to COPY.
        let keys = [
            ("AWS_ACCESS_KEY_ID", "ASIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_SESSION_TOKEN", "tok"),
        ];
        let s = resolve(parse_file(&text("")).unwrap(), &env(&keys), &none).unwrap();
        let ArchiveLocation::S3 { session_token, .. } = &s.archive.location else {
            panic!("s3")
        };
        assert_eq!(session_token.as_ref().map(|t| t.expose()), Some("tok"));
    }

    /// What Redshift's COPY cannot be told is refused at config time (exit 2), naming the
    /// key: max_len over VARCHAR's 65535 bytes, a non-ASCII delimiter, a timestamp format
    /// TIMEFORMAT has no form of, no region (us-east-1 is not assumed).
    #[test]
    fn redshift_limits_are_checked_at_config_time() {
        let base = "[kafka]\ntopic=\"t\"\n[archive]\nurl=\"s3://b/p\"\n";
        let rs = "[warehouse]\nkind=\"redshift\"\niam_role=\"default\"\n";
        let run = |text: &str, e: &[(&str, &str)]| {
            resolve(parse_file(text).unwrap(), &env(e), &Overrides::default())
        };
        let col = |max: usize| {
            format!("[records]\ncolumns = [{{ name = \"id\", type = \"bigint\" }}, {{ name = \"t\", type = \"text\", max_len = {max} }}]\n")
        };
        for (extra, key) in [
            (col(65536), "records.columns max_len"),
            ("[records]\ndelimiter = \"é\"\n".into(), "records.delimiter"),
            (
                "[records]\ntimestamp_format = \"%Y-%m-%dT%H:%M:%S\"\n".into(),
                "records.timestamp_format",
            ),
            (
                "[records]\ntimestamp_format = \"%d %b %Y %H:%M\"\n".into(),
                "records.timestamp_format",
            ),
        ] {
            let text = format!("{base}region=\"eu-west-1\"\n{rs}{extra}");
            let err = run(&text, &[]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        // The same layouts are fine on PostgreSQL.
        let pg = format!("{base}{}", col(65536));
        assert!(run(&pg, &[]).is_ok());
        let ok = format!(
            "{base}{rs}region=\"eu-west-1\"\n{}[records]\ntimestamp_format = \"%d/%m/%Y %H.%M.%S\"\n",
            ""
        );
        assert!(run(&ok, &[]).is_ok());
        assert!(run(
            &format!("{base}{rs}{}", col(65535)),
            &[("AWS_REGION", "eu-west-1")]
        )
        .is_ok());
        // No region anywhere: refused, naming warehouse.region; the archive's region serves.
        let err = run(&format!("{base}{rs}"), &[]).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("warehouse.region"), "{err}");
        // JSON records reach COPY as staged JSON lines: their timestamp format is not COPY's
        // TIMEFORMAT, so it is free; max_len still counts Redshift's bytes.
        let json = "[records]\nformat = \"json\"\ntimestamp_format = \"%Y-%m-%dT%H:%M:%S\"\n";
        let ok = format!("{base}region=\"eu-west-1\"\n{rs}{json}");
        let s = run(&ok, &[]).unwrap();
        assert_eq!(s.layout.format, RecordFormat::Json);
        let err = run(
            &format!(
                "{base}region=\"eu-west-1\"\n{rs}{}format = \"json\"\n",
                col(65536)
            ),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("records.columns max_len"), "{err}");
        let s = run(&format!("{base}region=\"ap-south-1\"\n{rs}"), &[]).unwrap();
        assert_eq!(s.warehouse.redshift.unwrap().region, "ap-south-1");
        let s = run(
            &format!("{base}{rs}region=\"eu-north-1\"\n"),
            &[("AWS_REGION", "us-west-2")],
        )
        .unwrap();
        assert_eq!(s.warehouse.redshift.unwrap().region, "eu-north-1");
    }

    #[test]
    fn timezone_offsets() {
        assert_eq!(parse_tz("UTC").unwrap(), 0);
        assert_eq!(parse_tz("+02:00").unwrap(), 7200);
        assert_eq!(parse_tz("-05:30").unwrap(), -19800);
        assert!(parse_tz("Europe/Paris").is_err());
    }
}
