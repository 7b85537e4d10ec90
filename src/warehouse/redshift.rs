//! Amazon Redshift: server-side `COPY ... MANIFEST` into a staging table, measured against the
//! manifests, then moved into the raw table with the ledger rows, all in one transaction that
//! starts with `LOCK` on the ledger. Runs (copy, aggregate) are serialised by a lock held in an
//! open transaction on a second session, because Redshift has no advisory locks.
//!
//! Tested against a Redshift stand-in (`tests/common/standin.rs`, PostgreSQL set up to behave
//! like Redshift where this code depends on it); no Redshift cluster is reachable from the test
//! machines. The SQL snapshot tests below show the exact statements sent.

use super::postgres::Reject;
use super::session::{shown, PgSession, Rows, SqlError, SqlSession};
use super::{quote_ident, Ledger, LoadJob, LoadOptions, LoadResult, Names, Warehouse};
use crate::archive::layout::COPY_MANIFESTS;
use crate::archive::{Compression, ObjectStore, PutOutcome};
use crate::config::{ArchiveLocation, ArchiveSettings, Secret, WarehouseSettings};
use crate::records::{frame_into, Codec, ColumnType, FrameReader, Layout, RecordFormat, RowError};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::io::{Seek, SeekFrom};
use std::sync::atomic::{AtomicU32, Ordering};

/// How Redshift authenticates to S3
/// (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-authorization.html).
#[derive(Debug, Clone)]
pub enum S3Auth {
    /// A role ARN, or "default": the role set as the cluster's default (`IAM_ROLE default`).
    IamRole(String),
    /// Access keys; with a session token when they are temporary (STS, SSO).
    Keys {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
}

/// Which Redshift: a provisioned cluster keeps COPY's errors in the STL views; Serverless has
/// no STL views and keeps them in the SYS monitoring views.
/// https://docs.aws.amazon.com/redshift/latest/dg/c_intro_system_views.html ("System monitoring
/// (provisioned only)"), https://docs.aws.amazon.com/redshift/latest/mgmt/serverless-monitoring.html,
/// https://docs.aws.amazon.com/redshift/latest/dg/serverless_views-monitoring.html
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Provisioned,
    Serverless,
}

/// Where a flavour's COPY errors are, by column. `raw` and `value` are None where the view has
/// no such column (SYS_LOAD_ERROR_DETAIL keeps neither the raw line nor the field's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadErrorView {
    pub table: &'static str,
    /// The query id `pg_last_copy_id()` names.
    pub query: &'static str,
    pub file: &'static str,
    pub line: &'static str,
    pub column: &'static str,
    pub reason: &'static str,
    pub raw: Option<&'static str>,
    pub value: Option<&'static str>,
}

/// https://docs.aws.amazon.com/redshift/latest/dg/r_STL_LOAD_ERRORS.html
pub const STL_LOAD_ERRORS: LoadErrorView = LoadErrorView {
    table: "\"stl_load_errors\"",
    query: "\"query\"",
    file: "\"filename\"",
    line: "\"line_number\"",
    column: "\"colname\"",
    reason: "\"err_reason\"",
    raw: Some("\"raw_line\""),
    value: Some("\"raw_field_value\""),
};

/// https://docs.aws.amazon.com/redshift/latest/dg/SYS_LOAD_ERROR_DETAIL.html: query_id,
/// file_name char(256), line_number, column_name, error_message char(512); no raw line. Its
/// query_id is what `pg_last_copy_id()` returns: SYS_LOAD_DETAIL's own example selects
/// `where query_id = pg_last_copy_id()`
/// (https://docs.aws.amazon.com/redshift/latest/dg/SYS_LOAD_DETAIL.html).
pub const SYS_LOAD_ERROR_DETAIL: LoadErrorView = LoadErrorView {
    table: "\"sys_load_error_detail\"",
    query: "\"query_id\"",
    file: "\"file_name\"",
    line: "\"line_number\"",
    column: "\"column_name\"",
    reason: "\"error_message\"",
    raw: None,
    value: None,
};

impl Flavour {
    pub fn errors(self) -> &'static LoadErrorView {
        match self {
            Flavour::Provisioned => &STL_LOAD_ERRORS,
            Flavour::Serverless => &SYS_LOAD_ERROR_DETAIL,
        }
    }

    /// The flavour the settings give: `warehouse.redshift_serverless` when set, else Serverless
    /// when the endpoint is a Serverless workgroup's
    /// (`<workgroup>.<account>.<region>.redshift-serverless.amazonaws.com`), else unknown (then
    /// [`Redshift`] probes for the STL views before its first load).
    pub fn from_settings(serverless: Option<bool>, url: &str) -> Option<Flavour> {
        match serverless {
            Some(true) => Some(Flavour::Serverless),
            Some(false) => Some(Flavour::Provisioned),
            None => url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                .filter(|h| h.ends_with(".redshift-serverless.amazonaws.com"))
                .map(|_| Flavour::Serverless),
        }
    }
}

/// The probe for the STL views: answered on a provisioned cluster, refused on Serverless.
pub const STL_PROBE_SQL: &str = r#"SELECT count(*) FROM "stl_load_errors" WHERE "query" = -1"#;

/// The fixed parts of every COPY statement.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// s3://bucket/prefix of the archive (objects' keys are relative to it).
    pub archive_url: String,
    pub region: String,
    pub auth: S3Auth,
}

/// The staging table each load COPYs into (a temporary table, gone with the transaction).
pub const STAGING: &str = "batchlayer_staging";

/// The staging table's extra column that takes the empty field after a layout's trailing
/// delimiter. Whether COPY counts that field as a column is not clear in the documentation
/// ([t_preparing-input-data](https://docs.aws.amazon.com/redshift/latest/dg/t_preparing-input-data.html):
/// "This field can be a delimiter"), while
/// [c_loading_default_values](https://docs.aws.amazon.com/redshift/latest/dg/c_loading_default_values.html)
/// says a field with no column in the column list fails the COPY. So COPY is told about the
/// field: it is a column of the list, and is never moved into the raw table.
pub const TRAILING: &str = "batchlayer_trailing";

/// The statements that create the staging table: the raw table's columns, and the trailing
/// field's column when the layout ends its records with a delimiter. ADD COLUMN runs inside the
/// load's transaction: only an external table's ALTER TABLE may not
/// (https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html).
pub fn staging_sql(names: &Names, layout: &Layout) -> Vec<String> {
    let mut v = vec![format!(
        "CREATE TEMP TABLE {} (LIKE {})",
        quote_ident(STAGING),
        names.qualified(&names.raw)
    )];
    if has_trailing_field(layout) {
        v.push(format!(
            "ALTER TABLE {} ADD COLUMN {} VARCHAR(1)",
            quote_ident(STAGING),
            quote_ident(TRAILING)
        ));
    }
    v
}

/// Whether COPY reads a field after the layout's last delimiter: delimited records only (a
/// JSON or Avro layout is staged as JSON lines, [`staged_json`]).
fn has_trailing_field(layout: &Layout) -> bool {
    layout.format == RecordFormat::Delimited && layout.trailing_delimiter
}

/// Redshift's largest MAXERROR.
pub const MAXERROR_LIMIT: u64 = 100_000;
/// `stl_load_errors.filename` is char(256): longer URLs are cut, so such an object gets a COPY
/// of its own (its errors are then its own whatever the filename says).
pub const STL_FILENAME_BYTES: usize = 256;
/// How long `try_lock` waits for a lock another session holds before calling it busy.
pub const TRY_LOCK_MS: u64 = 1000;

/// A string literal as Redshift reads it: a backslash is an escape character inside literals
/// there, so both `\` and `'` are doubled.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Refuses keys Redshift cannot take safely: control characters (a literal cannot hold NUL, and
/// `stl_load_errors` keeps file names one per line), and leading or trailing blanks (Redshift's
/// `trim` of the char(256) filename would lose them).
pub fn check_key(key: &str) -> Result<()> {
    if key.chars().any(|c| c.is_control()) || key.trim() != key || key.is_empty() {
        bail!("object key {key:?} is not plain (control characters or leading/trailing blanks): not loaded into Redshift");
    }
    Ok(())
}

/// The Redshift COPY manifest (JSON) listing exactly these objects.
pub fn copy_manifest(archive_url: &str, jobs: &[&LoadJob]) -> String {
    let entries: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "url": object_url(archive_url, &j.key),
                "mandatory": true,
                "meta": { "content_length": j.size }
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "entries": entries })).unwrap_or_default()
}

fn object_url(archive_url: &str, key: &str) -> String {
    format!("{}/{key}", archive_url.trim_end_matches('/'))
}

/// Converts a chrono format to Redshift's TIMEFORMAT, for the formats the layout supports.
fn redshift_timeformat(chrono_fmt: &str) -> String {
    chrono_fmt
        .replace("%Y", "YYYY")
        .replace("%m", "MM")
        .replace("%d", "DD")
        .replace("%H", "HH24")
        .replace("%M", "MI")
        .replace("%S", "SS")
}

/// One COPY of a load: objects of one compression, listed by one COPY manifest.
#[derive(Debug, Clone)]
pub struct CopyGroup {
    pub compression: Compression,
    /// Indices into the load's jobs.
    pub jobs: Vec<usize>,
    pub manifest_key: String,
    /// MAXERROR for the whole COPY: enough for every object to have its allowance; each
    /// object's own count is checked afterwards. None: strict (Redshift's default, 0).
    pub max_error: Option<u64>,
}

impl CopyGroup {
    /// One object alone: every error of this COPY is its own.
    pub fn alone(&self) -> bool {
        self.jobs.len() == 1
    }
}

/// Splits a load into COPYs: one per compression (a COPY takes one), at most as many objects
/// as keep MAXERROR within Redshift's limit; an object no manifest lists, or whose URL is
/// longer than `stl_load_errors` keeps, gets a COPY of its own so that what it loaded is
/// measured alone. `tag` makes the manifest keys unique to this load.
pub fn plan_copies(
    archive_url: &str,
    jobs: &[LoadJob],
    max_errors: Option<u64>,
    tag: &str,
) -> Vec<CopyGroup> {
    let per_copy = match max_errors {
        Some(n) if n > 0 => ((MAXERROR_LIMIT - 1) / n).max(1) as usize,
        _ => usize::MAX,
    };
    let mut groups: Vec<(Compression, Vec<usize>)> = Vec::new();
    // The group still taking objects, per compression.
    let mut open: Vec<(Compression, usize)> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let alone = j.expected_records.is_none()
            || object_url(archive_url, &j.key).len() > STL_FILENAME_BYTES;
        if alone {
            groups.push((j.compression, vec![i]));
            continue;
        }
        match open.iter_mut().find(|(c, _)| *c == j.compression) {
            Some((_, g)) if groups[*g].1.len() < per_copy => groups[*g].1.push(i),
            Some((_, g)) => {
                *g = groups.len();
                groups.push((j.compression, vec![i]));
            }
            None => {
                open.push((j.compression, groups.len()));
                groups.push((j.compression, vec![i]));
            }
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(n, (compression, idx))| CopyGroup {
            compression,
            max_error: max_errors.map(|m| {
                (m.saturating_mul(idx.len() as u64).saturating_add(1)).min(MAXERROR_LIMIT)
            }),
            jobs: idx,
            manifest_key: format!("{COPY_MANIFESTS}{tag}-{n}.json"),
        })
        .collect()
}

/// The COPY statement of one group into `table`. With `mask`, secrets are replaced by `***`.
/// Delimited records are read as archived (DELIMITER, ESCAPE, NULL AS); JSON and Avro records
/// from the staged JSON lines ([`staged_json`]) through the group's JSONPaths file
/// ([`jsonpaths_key`]).
pub fn copy_sql(
    table: &str,
    layout: &Layout,
    spec: &CopySpec,
    group: &CopyGroup,
    mask: bool,
) -> Result<String> {
    let mut cols = super::column_list(layout);
    if has_trailing_field(layout) {
        cols += &format!(", {}", quote_ident(TRAILING));
    }
    let manifest_url = object_url(&spec.archive_url, &group.manifest_key);
    let mut s = format!("COPY {table} ({})\nFROM {}\n", cols, literal(&manifest_url));
    s += &copy_auth(spec, mask)?;
    s += "MANIFEST\n";
    match layout.format {
        RecordFormat::Delimited => s += &delimited_options(layout, spec, group)?,
        RecordFormat::Json | RecordFormat::Avro => s += &json_options(spec, group),
    }
    // A staging table: no compression analysis, no statistics.
    s += "COMPUPDATE OFF\nSTATUPDATE OFF\n";
    if let Some(n) = group.max_error {
        s += &format!("MAXERROR {n}\n");
    }
    Ok(s.trim_end().to_string())
}

/// COPY's credentials, one per line.
/// https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-authorization.html:
/// IAM_ROLE { default | 'arn:aws:iam::<AWS account-id>:role/<role-name>' }, or
/// ACCESS_KEY_ID '..' SECRET_ACCESS_KEY '..' [SESSION_TOKEN '..'] for temporary keys.
/// The keys are on lines of their own: errors quote a statement's first line only.
fn copy_auth(spec: &CopySpec, mask: bool) -> Result<String> {
    let hide = |v: &Secret| -> String {
        if mask {
            literal("***")
        } else {
            literal(v.expose())
        }
    };
    let mut s = String::new();
    match &spec.auth {
        S3Auth::IamRole(role) if role == "default" => s += "IAM_ROLE default\n",
        S3Auth::IamRole(arn) => {
            if !arn.starts_with("arn:") {
                bail!("warehouse.iam_role {arn:?} is neither \"default\" nor an ARN (arn:aws:iam::ACCOUNT:role/NAME)");
            }
            s += &format!("IAM_ROLE {}\n", literal(arn));
        }
        S3Auth::Keys {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            s += &format!(
                "ACCESS_KEY_ID {}\nSECRET_ACCESS_KEY {}\n",
                literal(access_key_id),
                hide(secret_access_key)
            );
            if let Some(token) = session_token {
                s += &format!("SESSION_TOKEN {}\n", hide(token));
            }
        }
    }
    Ok(s)
}

fn compression_option(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "GZIP\n",
        Compression::Zstd => "ZSTD\n",
        Compression::None => "",
    }
}

/// The options of a COPY of archived delimited records.
fn delimited_options(layout: &Layout, spec: &CopySpec, group: &CopyGroup) -> Result<String> {
    let mut s = format!(
        "DELIMITER {}\n",
        literal(&(layout.delimiter as char).to_string())
    );
    s += "ESCAPE\n";
    s += compression_option(group.compression);
    s += &format!("REGION {}\n", literal(&spec.region));
    s += &format!(
        "TIMEFORMAT {}\n",
        literal(&redshift_timeformat(&layout.timestamp_format))
    );
    let markers: HashSet<&str> = layout
        .columns
        .iter()
        .filter_map(|c| c.null_marker.as_deref())
        .collect();
    match markers.len() {
        0 => {}
        1 => s += &format!("NULL AS {}\n", literal(markers.iter().next().expect("one"))),
        _ => bail!("Redshift COPY takes one NULL AS string for all columns; the layout has several null markers"),
    }
    Ok(s)
}

/// The TIMEFORMAT and DATEFORMAT of staged JSON lines: [`Codec::to_json_row`] writes
/// timestamps as `YYYY-MM-DD HH:MM:SS.ffffff` and dates as `YYYY-MM-DD`. "The seconds (SS)
/// field also supports fractional seconds up to a microsecond level of detail"
/// (https://docs.aws.amazon.com/redshift/latest/dg/r_DATEFORMAT_and_TIMEFORMAT_strings.html).
pub const JSON_TIMEFORMAT: &str = "YYYY-MM-DD HH24:MI:SS";
pub const JSON_DATEFORMAT: &str = "YYYY-MM-DD";

/// The options of a COPY of staged JSON lines: `FORMAT AS JSON 's3://jsonpaths_file'`, and
/// none of the options COPY refuses with JSON (CSV, DELIMITER, ESCAPE, FILLRECORD,
/// FIXEDWIDTH, IGNOREBLANKLINES, NULL AS, READRATIO, REMOVEQUOTES:
/// https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json).
/// TIMEFORMAT and DATEFORMAT apply to JSON too (they are not in that list).
fn json_options(spec: &CopySpec, group: &CopyGroup) -> String {
    let paths = object_url(&spec.archive_url, &jsonpaths_key(&group.manifest_key));
    let mut s = format!("FORMAT AS JSON {}\n", literal(&paths));
    s += compression_option(group.compression);
    s += &format!("REGION {}\n", literal(&spec.region));
    s += &format!("TIMEFORMAT {}\n", literal(JSON_TIMEFORMAT));
    s += &format!("DATEFORMAT {}\n", literal(JSON_DATEFORMAT));
    s
}

/// The JSONPaths file of a group's COPY, beside its manifest. Its key does not start with the
/// manifest's (COPY would take a JSONPaths file under the data's prefix for a data file:
/// https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json).
pub fn jsonpaths_key(manifest_key: &str) -> String {
    let base = manifest_key.strip_suffix(".json").unwrap_or(manifest_key);
    format!("{base}-jsonpaths.json")
}

/// The JSONPaths file for a layout's staged JSON lines: one expression per column, in the
/// column list's order, each naming the column's key at the root in bracket notation.
/// https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json-jsonpaths:
/// a single JSON object whose one key is "jsonpaths", its value an array of JSONPath
/// expressions, "Each JSONPath expression corresponds to one column"; bracket notation
/// `$['name']` (https://docs.aws.amazon.com/redshift/latest/dg/copy-usage_notes-copy-from-json.html).
/// Column names are identifiers (letters, digits and `_`: validated at config time), so a
/// name never holds the `'` or `]` that would end its bracket.
pub fn jsonpaths_file(layout: &Layout) -> String {
    let paths: Vec<String> = layout
        .columns
        .iter()
        .map(|c| format!("$['{}']", c.name))
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "jsonpaths": paths })).unwrap_or_default()
}

/// The query that explains a failed COPY: the error view's first rows for query `id` (the
/// COPY's own id, never `pg_last_copy_id()` read later: that does not move when a COPY fails
/// before loading, https://docs.aws.amazon.com/redshift/latest/dg/PG_LAST_COPY_ID.html).
/// Every column has its own name: `SqlSession::query_text` selects them by name.
pub fn load_errors_sql(v: &LoadErrorView, id: i64) -> String {
    let value = v
        .value
        .map(|c| format!("trim({c}) AS \"value\", "))
        .unwrap_or_default();
    format!(
        "SELECT trim({}) AS \"filename\", {}, trim({}) AS \"colname\", {value}trim({}) AS \"reason\" \
FROM {} WHERE {} = {id} ORDER BY {} LIMIT 5",
        v.file, v.line, v.column, v.reason, v.table, v.query, v.line
    )
}

/// Builds the COPY statement's fixed parts from the settings.
pub fn copy_spec(w: &WarehouseSettings, archive: &ArchiveSettings) -> Result<CopySpec> {
    let rs = w
        .redshift
        .as_ref()
        .ok_or_else(|| anyhow!("warehouse.kind is not redshift"))?;
    let ArchiveLocation::S3 {
        bucket,
        prefix,
        access_key_id,
        secret_access_key,
        session_token,
        ..
    } = &archive.location
    else {
        bail!("Redshift COPY reads from S3: archive.url must be s3://");
    };
    let auth = match (&rs.iam_role, access_key_id, secret_access_key) {
        (Some(role), _, _) => S3Auth::IamRole(role.clone()),
        (None, Some(id), Some(secret)) => S3Auth::Keys {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: session_token.clone(),
        },
        _ => bail!("Redshift COPY needs warehouse.iam_role, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    };
    let archive_url = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    Ok(CopySpec {
        archive_url,
        region: rs.region.clone(),
        auth,
    })
}

/// Opens another session on the same warehouse (the lock holders use their own).
pub type SessionOpener = Box<dyn Fn() -> Result<Box<dyn SqlSession>>>;

pub struct Redshift {
    s: Box<dyn SqlSession>,
    names: Names,
    spec: CopySpec,
    open: SessionOpener,
    /// Run locks taken, each held by an open transaction on its own session until dropped.
    held: BTreeMap<String, Box<dyn SqlSession>>,
    /// The last COPY the current load sent (its errors then explain a failure).
    last_copy: Option<LastCopy>,
    /// Whether the ledger's write-lock table is known to exist ([`Redshift::ledger_lock`]).
    ledger_lock_ready: bool,
    /// Provisioned or Serverless; None: probed before the first load.
    flavour: Option<Flavour>,
}

/// The last COPY of a load: `pg_last_copy_id()` before it, and its own id once it succeeded.
/// A COPY that fails before loading (S3, credentials, syntax) leaves `pg_last_copy_id()`
/// where it was, so only an id that moved names this COPY's errors
/// (https://docs.aws.amazon.com/redshift/latest/dg/PG_LAST_COPY_ID.html).
#[derive(Debug, Clone, Copy)]
struct LastCopy {
    before: i64,
    id: Option<i64>,
}

/// How often a load whose transaction Redshift cancelled with a serializable isolation
/// violation (error 1023) is tried again, and the wait before the first retry (doubled each
/// time). https://docs.aws.amazon.com/redshift/latest/dg/c_serial_isolation-serializable-isolation-troubleshooting.html:
/// "Retry the canceled transaction."
pub const SERIALIZABLE_RETRIES: u32 = 3;
pub const SERIALIZABLE_BACKOFF_MS: u64 = 200;

/// The id query: `pg_last_copy_id()` as a BIGINT.
const LAST_COPY_ID_SQL: &str = "SELECT CAST(pg_last_copy_id() AS BIGINT)";

/// An offset range of an object in the load: first, last, key.
type Claimed = (i64, i64, String);

/// What one object's COPY measured.
#[derive(Debug, Clone, Default)]
struct Measured {
    loaded: u64,
    rejected: u64,
}

impl Redshift {
    pub fn connect(w: &WarehouseSettings, archive: &ArchiveSettings, names: Names) -> Result<Self> {
        let spec = copy_spec(w, archive)?;
        let flavour =
            Flavour::from_settings(w.redshift.as_ref().and_then(|r| r.serverless), &w.url);
        let (w, n) = (w.clone(), names.clone());
        let open: SessionOpener = Box::new(move || {
            Ok(Box::new(PgSession::connect(&w, n.clone())?) as Box<dyn SqlSession>)
        });
        Ok(Self::over(names, spec, open)?.with_flavour(flavour))
    }

    /// The dialect over sessions `open` makes (a real cluster, or a stand-in in tests). The
    /// flavour is probed before the first load unless [`Redshift::with_flavour`] sets it.
    pub fn over(names: Names, spec: CopySpec, open: SessionOpener) -> Result<Self> {
        Ok(Redshift {
            s: open()?,
            names,
            spec,
            open,
            held: BTreeMap::new(),
            last_copy: None,
            ledger_lock_ready: false,
            flavour: None,
        })
    }

    /// Sets the flavour (None: probe for it).
    pub fn with_flavour(mut self, flavour: Option<Flavour>) -> Self {
        self.flavour = flavour;
        self
    }

    /// The flavour, probed once when not set: a session of its own asks for the STL views
    /// ([`STL_PROBE_SQL`]); an answer means a provisioned cluster, a refusal Serverless (which
    /// has none). A session of its own, outside any transaction: a refused statement would
    /// abort the load's transaction.
    pub fn flavour(&mut self) -> Result<Flavour> {
        if let Some(f) = self.flavour {
            return Ok(f);
        }
        let mut s = (self.open)().context("opening a session to probe for the STL views")?;
        let f = match s.query_i64(STL_PROBE_SQL) {
            Ok(_) => Flavour::Provisioned,
            Err(e) => {
                tracing::info!("stl_load_errors refused ({e:#}): taking the warehouse for Redshift Serverless (set warehouse.redshift_serverless to say)");
                Flavour::Serverless
            }
        };
        self.flavour = Some(f);
        Ok(f)
    }

    /// The view COPY's errors are in (the flavour is known once a load has begun).
    fn errors_view(&self) -> &'static LoadErrorView {
        self.flavour.unwrap_or(Flavour::Provisioned).errors()
    }

    /// Runs `f` inside BEGIN ... COMMIT on the main session; ROLLBACK when it fails.
    fn in_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.s.execute("BEGIN")?;
        let r = f(self).and_then(|v| self.s.execute("COMMIT").map(|_| v));
        if r.is_err() {
            let _ = self.s.execute("ROLLBACK");
        }
        r
    }

    /// The table whose `LOCK` is the run lock `name` (one table per lock: a LOCK takes all of it).
    fn lock_table(&self, name: &str) -> String {
        lock_table_name(&self.names.raw, name)
    }

    /// The ledger's write lock: a table of its own whose `LOCK` serialises the transactions
    /// that write the ledger (loads, skipped objects), so that the ledger itself is never
    /// LOCKed (ACCESS EXCLUSIVE would make `status` and `audit` wait for a whole batch; a
    /// reader of a table another transaction writes reads the committed snapshot:
    /// https://docs.aws.amazon.com/redshift/latest/dg/r_LOCK.html). Created before the first
    /// transaction that takes it.
    fn ledger_lock(&mut self) -> Result<String> {
        let table = ledger_lock_table(&self.names);
        let qualified = self.names.qualified(&table);
        if !self.ledger_lock_ready {
            create_lock_table(self.s.as_mut(), &self.names.schema, &table, &qualified)?;
            self.ledger_lock_ready = true;
        }
        Ok(qualified)
    }
}

/// The ledger's write-lock table ([`Redshift`] LOCKs it, never the ledger).
pub fn ledger_lock_table(names: &Names) -> String {
    lock_table_name(&names.ledger, "writers")
}

/// `<base>__lock_<name>` in at most 63 bytes (a hash of the name when longer).
fn lock_table_name(base: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let t = format!("{base}__lock_{clean}");
    if t.len() <= 63 {
        return t;
    }
    // The first 4 bytes of the name's sha256, in hex.
    let h = &crate::util::sha256_hex(name.as_bytes())[..8];
    format!("{}_{h}", &t[..54])
}

impl Redshift {
    /// Takes a run lock: a session of its own opens a transaction and `LOCK`s the lock table,
    /// and keeps both until this warehouse is dropped (or the process dies: the server then
    /// ends the session and its transaction). `wait` false: busy at once when another session
    /// holds or waits for the lock table's LOCK, as SVV_TRANSACTIONS shows it ([`lock_probe_sql`]):
    /// Redshift's LOCK waits ("waiting if necessary for any conflicting locks to be released",
    /// https://docs.aws.amazon.com/redshift/latest/dg/r_LOCK.html) and has no NOWAIT, and
    /// whether `statement_timeout` cancels a LOCK wait is not documented. `statement_timeout`
    /// ([`TRY_LOCK_MS`]) stays as a second guard for the moment between the probe and the LOCK.
    fn take_run_lock(&mut self, name: &str, wait: bool) -> Result<bool> {
        if self.held.contains_key(name) {
            return Ok(true);
        }
        let table = self.lock_table(name);
        let qualified = self.names.qualified(&table);
        let mut s = (self.open)()?;
        create_lock_table(s.as_mut(), &self.names.schema, &table, &qualified)?;
        if !wait {
            let others = s
                .query_i64(&lock_probe_sql(&self.names.schema, &table))
                .with_context(|| format!("asking svv_transactions who holds the {name} lock"))?
                .unwrap_or(0);
            if others > 0 {
                return Ok(false);
            }
        }
        let timeout = if wait { 0 } else { TRY_LOCK_MS };
        s.execute(&format!("SET statement_timeout TO {timeout}"))?;
        s.execute("BEGIN")?;
        if let Err(e) = s.execute(&format!("LOCK {qualified}")) {
            if !wait && timed_out(&e) {
                return Ok(false);
            }
            return Err(e.context(format!("taking the {name} lock ({qualified})")));
        }
        s.execute("SET statement_timeout TO 0")?;
        self.held.insert(name.to_string(), s);
        Ok(true)
    }

    /// Inside the load's transaction, after the LOCK: refuses objects whose key or offsets
    /// the ledger holds now (another run may have loaded them since this one planned), and
    /// objects of the load whose offsets overlap each other. Never loads an offset twice.
    fn recheck(&mut self, jobs: &[LoadJob]) -> Result<()> {
        let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
        let mut ledger = Ledger::new(self);
        let loaded = ledger.keys_loaded(&keys)?;
        if let Some(k) = keys.iter().find(|k| loaded.contains(*k)) {
            bail!("object {k} is in the ledger already (loaded by another run since this one planned); nothing loaded");
        }
        let ranges = ledger.loaded_ranges(jobs)?;
        // Offset ranges (and their keys) of this load's objects, per topic, partition, epoch.
        let mut seen: BTreeMap<(String, i32, i32), Vec<Claimed>> = BTreeMap::new();
        for j in jobs {
            let Some(r) = &j.range else { continue };
            let id = (r.topic.clone(), r.partition, r.epoch);
            if let Some(s) = ranges
                .get(&id)
                .and_then(|v| v.iter().find(|s| s.intersect(r.span()).is_some()))
            {
                let (f, l) = (s.first, s.last);
                bail!(
                    "object {}: offsets {f}..{l} of topic {} partition {} epoch {} are loaded already (by another run since this one planned); nothing loaded",
                    j.key, r.topic, r.partition, r.epoch
                );
            }
            let mine = seen.entry(id).or_default();
            if let Some((_, _, other)) = mine.iter().find(|(f, l, _)| *l >= r.first && *f <= r.last)
            {
                bail!("objects {other} and {} hold the same offsets; loading both would load them twice", j.key);
            }
            mine.push((r.first, r.last, j.key.clone()));
        }
        Ok(())
    }

    /// Runs one COPY into the staging table and measures it: rows it added, errors per object
    /// (from the flavour's error view), each object's count against its manifest. Records the
    /// rejects.
    fn run_copy(
        &mut self,
        st: &Staged<'_>,
        group: &CopyGroup,
        layout: &Layout,
        opts: &LoadOptions,
        staged_before: i64,
    ) -> Result<(i64, Vec<(usize, Measured)>)> {
        let copy = copy_sql(&quote_ident(STAGING), layout, &self.spec, group, false)?;
        let before = self.s.query_i64(LAST_COPY_ID_SQL)?.unwrap_or(-1);
        self.last_copy = Some(LastCopy { before, id: None });
        self.s.execute(&copy)?;
        let id = self
            .s
            .query_i64(LAST_COPY_ID_SQL)?
            .context("pg_last_copy_id() is NULL after a COPY")?;
        if id == before {
            bail!("pg_last_copy_id() is still {id} after a COPY that succeeded: cannot tell its errors from an earlier COPY's");
        }
        self.last_copy = Some(LastCopy {
            before,
            id: Some(id),
        });
        let staged = self
            .s
            .query_i64(&format!("SELECT count(*) FROM {}", quote_ident(STAGING)))?
            .unwrap_or(0);
        let v = self.errors_view();
        let (_, rows) = self.s.query_text(&format!(
            "SELECT trim({}), CAST(count(*) AS BIGINT) FROM {} WHERE {} = {id} GROUP BY 1",
            v.file, v.table, v.query
        ))?;
        let (jobs, copy_jobs) = (st.jobs, st.copy_jobs);
        let errors = attribute_errors(v, &self.spec.archive_url, copy_jobs, group, &rows)?;
        let mut out = Vec::new();
        let mut want = 0i64;
        for (&i, &bad) in group.jobs.iter().zip(&errors) {
            let (j, cj) = (&jobs[i], &copy_jobs[i]);
            let checked = st.pre[i].len() as u64;
            match (opts.max_errors, bad) {
                (_, 0) => {}
                // The cleaned object holds only records the loader's check accepted: a line
                // Redshift refuses there is a conversion the check does not model, and its
                // line number is not the archived object's. (Staged JSON lines keep the
                // archived record numbers: `staged_json`.)
                _ if cj.key != j.key && layout.format == RecordFormat::Delimited => bail!(
                    "object {}: Redshift refused {bad} records that batchlayer's record check accepted; first: {}",
                    j.key,
                    self.first_error(id, group, &cj.key)
                ),
                (None, n) => bail!("object {}: {n} bad rows in a strict load", j.key),
                (Some(max), n) if n + checked > max => bail!(
                    "object {}: {} bad rows, more than {max} (--max-errors); first: {}",
                    j.key,
                    n + checked,
                    self.first_error(id, group, &cj.key)
                ),
                _ => {}
            }
            let loaded = match cj.expected_records {
                Some(n) => n.checked_sub(bad).with_context(|| {
                    format!(
                        "object {}: {bad} bad rows but its manifest lists {n} records",
                        j.key
                    )
                })?,
                // Alone in its COPY: what the COPY added is this object's.
                None => (staged - staged_before).max(0) as u64,
            };
            want += loaded as i64;
            out.push((
                i,
                Measured {
                    loaded,
                    rejected: bad + checked,
                },
            ));
            if bad > 0 {
                self.s.execute(&rejects_sql(
                    v,
                    &self.names,
                    &self.spec,
                    &j.key,
                    cj,
                    group,
                    id,
                ))?;
            }
        }
        if staged - staged_before != want {
            let keys: Vec<&str> = group.jobs.iter().map(|&i| jobs[i].key.as_str()).collect();
            bail!(
                "COPY of {} loaded {} rows, but their manifests' record counts less the rejected rows make {want}: the objects do not hold what their manifests say; nothing loaded",
                keys.join(", "),
                staged - staged_before
            );
        }
        Ok((staged, out))
    }

    /// The first error of a COPY for an object, one line (for messages).
    fn first_error(&mut self, id: i64, group: &CopyGroup, key: &str) -> String {
        let v = self.errors_view();
        let filter = filename_filter(v, &self.spec, group, key);
        let value = v
            .value
            .map(|c| format!("trim({c}) AS \"value\", "))
            .unwrap_or_default();
        self.s
            .query_text(&format!(
                "SELECT {}, trim({}) AS \"colname\", {value}trim({}) AS \"reason\" FROM {} WHERE {} = {id}{filter} ORDER BY {} LIMIT 1",
                v.line, v.column, v.reason, v.table, v.query, v.line
            ))
            .map(|(_, rows)| shown(rows).iter().map(|r| r.join(" | ")).collect::<Vec<_>>().join("; "))
            .unwrap_or_default()
    }

    /// The whole load, inside its transaction.
    fn load_in_transaction(
        &mut self,
        st: &Staged<'_>,
        groups: &[CopyGroup],
        layout: &Codec,
        opts: &LoadOptions,
    ) -> Result<Vec<LoadResult>> {
        let jobs = st.jobs;
        let lock = self.ledger_lock()?;
        self.s.execute(&format!("LOCK {lock}"))?;
        self.recheck(jobs)?;
        for stmt in staging_sql(&self.names, layout) {
            self.s.execute(&stmt)?;
        }
        let mut measured: Vec<Measured> = vec![Measured::default(); jobs.len()];
        let mut staged = 0;
        for g in groups {
            let (now, per) = self.run_copy(st, g, layout, opts, staged)?;
            staged = now;
            for (i, m) in per {
                measured[i] = m;
            }
        }
        let topic = jobs
            .first()
            .and_then(|j| j.range.as_ref())
            .map(|r| r.topic.as_str());
        self.s.execute(&move_sql(&self.names, layout, topic))?;
        for (j, rejects) in jobs.iter().zip(st.pre) {
            for r in rejects {
                self.s.execute(&pre_reject_sql(&self.names, &j.key, r))?;
            }
        }
        for (j, m) in jobs.iter().zip(&measured) {
            self.s.execute(&Ledger::insert_sql(
                &self.names,
                j,
                m.loaded,
                m.rejected,
                0,
                &literal,
            ))?;
        }
        self.s
            .execute(&format!("DROP TABLE {}", quote_ident(STAGING)))?;
        if crate::failpoint::hit("copy-before-commit") {
            bail!("failpoint: stopping after the COPY, before commit");
        }
        Ok(jobs
            .iter()
            .zip(measured)
            .map(|(j, m)| LoadResult {
                key: j.key.clone(),
                bytes: j.size,
                records: m.loaded + m.rejected,
                loaded: m.loaded,
                rejected: m.rejected,
                skipped: 0,
            })
            .collect())
    }

    /// The first rows of the error view for COPY `id`, one line.
    fn load_errors(&mut self, id: i64) -> Result<String> {
        self.s
            .query_text(&load_errors_sql(self.errors_view(), id))
            .map(|(_, rows)| {
                shown(rows)
                    .iter()
                    .map(|r| r.join(" | "))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
    }

    /// Ends a failed load's transaction and says what the error view holds for the COPY that
    /// failed, and only for it. A COPY that succeeded has its id: its errors are read in the
    /// session before the ROLLBACK (they are written outside the transaction), or after it
    /// when a failed statement has aborted the transaction (an aborted transaction refuses
    /// every statement until it ends). A COPY that failed has an id only when
    /// `pg_last_copy_id()` moved past the one read before it: a COPY failing before loading
    /// (S3, credentials) does not move it, and then no view rows are quoted (they would be an
    /// earlier COPY's). https://docs.aws.amazon.com/redshift/latest/dg/PG_LAST_COPY_ID.html
    fn rollback_explained(&mut self) -> String {
        let last = self.last_copy.take();
        if let Some(id) = last.and_then(|c| c.id) {
            if let Ok(d) = self.load_errors(id) {
                let _ = self.s.execute("ROLLBACK");
                return d;
            }
        }
        let _ = self.s.execute("ROLLBACK");
        let Some(c) = last else {
            return String::new();
        };
        let id = c.id.or_else(|| {
            self.s
                .query_i64(LAST_COPY_ID_SQL)
                .ok()
                .flatten()
                .filter(|&n| n != c.before)
        });
        match id {
            Some(id) => self.load_errors(id).unwrap_or_default(),
            None => "none (the COPY failed before loading: pg_last_copy_id() did not move)".into(),
        }
    }

    /// One try of a load: its transaction, committed, or rolled back with the failed COPY's
    /// errors in the error.
    fn load_once(
        &mut self,
        st: &Staged<'_>,
        groups: &[CopyGroup],
        layout: &Codec,
        opts: &LoadOptions,
    ) -> Result<Vec<LoadResult>> {
        let jobs = st.jobs;
        self.last_copy = None;
        self.ledger_lock()?;
        self.s.execute("BEGIN")?;
        let r = self
            .load_in_transaction(st, groups, layout, opts)
            .and_then(|v| self.s.execute("COMMIT").map(|_| v));
        let Err(e) = r else { return r };
        let detail = self.rollback_explained();
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        Err(e.context(format!(
            "loading {} into {} ({}); load errors of the last COPY: {}",
            keys.join(", "),
            self.names.raw,
            self.describe(),
            if detail.is_empty() { "none" } else { &detail }
        )))
    }
}

/// Creates the schema and a lock table if missing; concurrent creators may race (PostgreSQL
/// can refuse the second `CREATE ... IF NOT EXISTS`), so it tries again while it is missing.
fn create_lock_table(
    s: &mut dyn SqlSession,
    schema: &str,
    table: &str,
    qualified: &str,
) -> Result<()> {
    let stmts = [
        format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)),
        format!(r#"CREATE TABLE IF NOT EXISTS {qualified} ("held" boolean)"#),
    ];
    let mut last = None;
    for _ in 0..5 {
        match stmts.iter().try_for_each(|st| s.execute(st)) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if s.table_exists(table).unwrap_or(false) {
                    return Ok(());
                }
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no attempt"))
        .context(format!("creating the lock table {qualified}")))
}

/// Whether Redshift cancelled the transaction with a serializable isolation violation:
/// "ERROR: 1023 DETAIL: Serializable isolation violation on table ..."
/// (https://docs.aws.amazon.com/redshift/latest/dg/c_serial_isolation-serializable-isolation-troubleshooting.html).
/// The server's message is `1023`, the violation in its detail.
pub fn serialization_violation(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(db) = c.downcast_ref::<SqlError>().and_then(|s| s.0.as_db_error()) {
            db.message().trim() == "1023"
                || db.detail().is_some_and(|d| {
                    d.to_lowercase()
                        .contains("serializable isolation violation")
                })
        } else {
            c.to_string()
                .to_lowercase()
                .contains("serializable isolation violation")
        }
    })
}

/// How many locks other sessions hold or wait for in ACCESS EXCLUSIVE mode (LOCK's) on the
/// lock table `schema.table`. SVV_TRANSACTIONS lists the locks of open transactions, granted
/// or pending, with the table id in `relation`; it is visible to all users (each sees their own
/// sessions', and every run lock is taken by batchlayer's user).
/// https://docs.aws.amazon.com/redshift/latest/dg/r_SVV_TRANSACTIONS.html
pub fn lock_probe_sql(schema: &str, table: &str) -> String {
    format!(
        "SELECT count(*) FROM \"svv_transactions\" WHERE \"lockable_object_type\" = 'relation' \
AND \"lock_mode\" = 'AccessExclusiveLock' AND \"pid\" <> pg_backend_pid() AND \"relation\" = \
(SELECT CAST(c.\"oid\" AS INTEGER) FROM \"pg_class\" c JOIN \"pg_namespace\" n ON n.\"oid\" = c.\"relnamespace\" \
WHERE n.\"nspname\" = {} AND c.\"relname\" = {})",
        literal(schema),
        literal(table)
    )
}

/// Whether a statement was cancelled by `statement_timeout` (SQLSTATE 57014).
fn timed_out(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<SqlError>())
        .any(|s| s.code() == Some(&postgres::error::SqlState::QUERY_CANCELED))
}

/// The `AND trim(filename) = ...` condition that picks one object's errors out of a COPY's
/// (none when the object is alone in its COPY).
fn filename_filter(v: &LoadErrorView, spec: &CopySpec, group: &CopyGroup, key: &str) -> String {
    if group.alone() {
        String::new()
    } else {
        format!(
            " AND trim({}) = {}",
            v.file,
            literal(&object_url(&spec.archive_url, key))
        )
    }
}

/// Errors per object of a group (in the group's order), from `(filename, count)` rows of
/// the error view. An error naming a file outside the group fails the load.
fn attribute_errors(
    v: &LoadErrorView,
    archive_url: &str,
    jobs: &[LoadJob],
    group: &CopyGroup,
    rows: &Rows,
) -> Result<Vec<u64>> {
    let mut out = vec![0u64; group.jobs.len()];
    for r in rows {
        let (file, count) = (r[0].as_deref(), r[1].as_deref().unwrap_or_default());
        let n: u64 = count
            .parse()
            .with_context(|| format!("{} count {count:?}", v.table))?;
        let pos = if group.alone() {
            Some(0)
        } else {
            group
                .jobs
                .iter()
                .position(|&i| Some(object_url(archive_url, &jobs[i].key).as_str()) == file)
        };
        match pos {
            Some(p) => out[p] += n,
            None => bail!(
                "{} names file {:?}, which this COPY did not list",
                v.table,
                file.unwrap_or_default()
            ),
        }
    }
    Ok(out)
}

/// Copies one object's rejected lines from the error view into the rejects table (the raw
/// line NULL where the view does not keep it: Serverless).
fn rejects_sql(
    v: &LoadErrorView,
    names: &Names,
    spec: &CopySpec,
    key: &str,
    j: &LoadJob,
    group: &CopyGroup,
    id: i64,
) -> String {
    let raw = v.raw.map_or("NULL".to_string(), |c| format!("trim({c})"));
    format!(
        "INSERT INTO {} (\"key\", \"line\", \"raw\", \"reason\")\nSELECT {}, {}, {raw}, trim({}) || ': ' || trim({})\nFROM {} WHERE {} = {id}{}",
        names.qualified(&names.rejects),
        literal(key),
        v.line,
        v.column,
        v.reason,
        v.table,
        v.query,
        filename_filter(v, spec, group, &j.key)
    )
}

/// Moves the staged rows into the raw table. From staged JSON lines, a SUPER column's JSON
/// null becomes NULL: [`Codec::to_json_row`] writes a NULL cell as `null`, and what COPY loads
/// from a JSON null into a SUPER column is not documented (an element a JSONPath does not find
/// loads NULL; a JSON null is a SUPER value of its own, which JSON_TYPEOF names 'null':
/// https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json-jsonpaths,
/// https://docs.aws.amazon.com/redshift/latest/dg/r_json_typeof.html). Archived delimited
/// records keep a field `null` as the JSON null, as the PostgreSQL path does.
fn move_sql(names: &Names, layout: &Layout, topic: Option<&str>) -> String {
    let cols = super::table_column_list(layout);
    let from_json = layout.format != RecordFormat::Delimited;
    let mut select: Vec<String> = layout
        .columns
        .iter()
        .map(|c| {
            let q = quote_ident(&c.name);
            if from_json && c.ty == ColumnType::Json {
                format!("CASE WHEN JSON_TYPEOF({q}) = 'null' THEN NULL ELSE {q} END")
            } else {
                q
            }
        })
        .collect();
    if layout.topic_column.is_some() {
        // The staging table has the column (LIKE the raw table); COPY leaves it NULL.
        select.push(super::quote_literal(topic.unwrap_or_default()));
    }
    format!(
        "INSERT INTO {} ({cols})\nSELECT {} FROM {}",
        names.qualified(&names.raw),
        select.join(", "),
        quote_ident(STAGING),
    )
}

/// One load's objects: as archived (`jobs`: the ledger's and the rejects' keys), as COPY reads
/// them (`copy_jobs`: the object itself, or its cleaned copy), and the records the loader's
/// own check rejected (`pre`), per object.
struct Staged<'a> {
    jobs: &'a [LoadJob],
    copy_jobs: &'a [LoadJob],
    pre: &'a [Vec<Reject>],
}

/// What the loader's check of one object found before any COPY.
struct Checked {
    rejects: Vec<Reject>,
    /// What COPY reads: the object itself when all its records are good, else a cleaned
    /// copy of its good records (uncompressed, in `_copy_manifests/`).
    copy_job: LoadJob,
}

/// Reads an object once, before COPY: streams it through sha256 (Redshift's COPY cannot check
/// a checksum) and checks every record with the PostgreSQL path's record validation, so that
/// both warehouses load the same rows and reject the same records, for the same reasons.
/// Delimited records: [`check_delimited`]; JSON and Avro records: [`staged_json`].
fn check_object(
    store: &dyn ObjectStore,
    j: &LoadJob,
    layout: &Codec,
    opts: &LoadOptions,
    tag: &str,
) -> Result<Checked> {
    let mut file = tempfile::tempfile().context("creating a temporary file")?;
    let mut h = crate::util::Tally::hashing(&mut file);
    store.get_into(&j.key, &mut h)?;
    let (got, _) = h.finish();
    if let Some(want) = &j.expected_sha256 {
        if &got != want {
            bail!(
                "object {} is corrupt: sha256 {got} does not match the manifest's {want}",
                j.key
            );
        }
    }
    match layout.format {
        RecordFormat::Delimited => check_delimited(store, file, j, layout, opts, tag),
        RecordFormat::Json | RecordFormat::Avro => staged_json(store, file, j, layout, opts, tag),
    }
}

/// Counts a record the check refused: a strict load fails naming it, and so does one past
/// `--max-errors`; otherwise it joins the object's rejects.
fn refuse(
    rejects: &mut Vec<Reject>,
    j: &LoadJob,
    opts: &LoadOptions,
    line: u64,
    rec: &[u8],
    e: &RowError,
) -> Result<()> {
    let Some(max) = opts.max_errors else {
        bail!("object {} record {line}: {e}", j.key);
    };
    if rejects.len() as u64 >= max {
        bail!(
            "object {}: more than {max} bad rows (--max-errors); record {line}: {e}",
            j.key
        );
    }
    rejects.push(Reject::new(line, rec, e.to_string()));
    Ok(())
}

/// Archived delimited records, checked with `Layout::to_pg_copy_row`. Redshift's COPY
/// converts differently: an empty INT or TIMESTAMP field loads as NULL, `SS` takes fractions,
/// and its error views keep a record's first 1024 bytes with multibyte characters as `.`
/// ([copy-parameters-data-conversion](https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-conversion.html),
/// [r_DATEFORMAT_and_TIMEFORMAT_strings](https://docs.aws.amazon.com/redshift/latest/dg/r_DATEFORMAT_and_TIMEFORMAT_strings.html),
/// [r_STL_LOAD_ERRORS](https://docs.aws.amazon.com/redshift/latest/dg/r_STL_LOAD_ERRORS.html)).
/// When all records are good COPY reads the object itself; otherwise the good records are
/// written to `{tag}.clean` and COPY reads that object instead.
fn check_delimited(
    store: &dyn ObjectStore,
    mut file: std::fs::File,
    j: &LoadJob,
    layout: &Codec,
    opts: &LoadOptions,
    tag: &str,
) -> Result<Checked> {
    let mut rejects = Vec::new();
    let mut records = 0u64;
    let mut clean: Option<Vec<u8>> = None;
    // Two passes at most: the second, when the first found bad records, writes the good ones.
    for pass in 0..2 {
        file.seek(SeekFrom::Start(0))?;
        let input = file.try_clone()?;
        let mut reader = FrameReader::new(crate::archive::decoder(input, j.compression)?);
        let (mut rec, mut row) = (Vec::with_capacity(1024), Vec::new());
        let mut out = Vec::new();
        while reader
            .next_into(&mut rec)
            .with_context(|| format!("reading object {}", j.key))?
        {
            row.clear();
            let ok = layout.to_pg_copy_row(&rec, &mut row);
            if pass == 1 {
                if ok.is_ok() {
                    frame_into(&rec, &mut out);
                }
                continue;
            }
            records += 1;
            if let Err(e) = ok {
                refuse(&mut rejects, j, opts, reader.record_no, &rec, &e)?;
            }
        }
        if pass == 1 {
            clean = Some(out);
        } else if rejects.is_empty() {
            break;
        }
    }
    check_count(j, records)?;
    let mut copy_job = j.clone();
    if let Some(body) = clean {
        let key = format!("{COPY_MANIFESTS}{tag}.clean");
        copy_job = put_staged(store, j, key, &body, records - rejects.len() as u64)?;
    }
    Ok(Checked { rejects, copy_job })
}

/// The most a JSON object COPY reads may hold: "The maximum size of a single JSON object or
/// array, including braces or brackets, is 4 MB. [...] the COPY command fails"
/// (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json;
/// copy_json.html: "The maximum size for a JSON object before shredding is 4 MB"). Taken as
/// the smaller reading of "4 MB": a staged line longer than this is refused by the check
/// rather than failing the whole COPY.
pub const JSON_OBJECT_MAX: usize = 4_000_000;

/// JSON and Avro records: Redshift's COPY cannot read them as archived (escaped framing,
/// Confluent-framed Avro), so each record is checked and decoded by [`Codec::to_json_row`] (the
/// PostgreSQL path's validation, so the same records are refused for the same reasons) and
/// written as one JSON object per line to `{tag}.staged.json`, which COPY reads with a
/// JSONPaths file ([`jsonpaths_file`]). A refused record leaves an empty line: COPY skips
/// white space between JSON objects and numbers an object by its last line
/// (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json),
/// so line N of the staged object is record N of the archived one, and an error COPY records
/// for a line names the archived record.
fn staged_json(
    store: &dyn ObjectStore,
    mut file: std::fs::File,
    j: &LoadJob,
    layout: &Codec,
    opts: &LoadOptions,
    tag: &str,
) -> Result<Checked> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = FrameReader::new(crate::archive::decoder(file, j.compression)?);
    let (mut rec, mut out) = (Vec::with_capacity(1024), Vec::new());
    let mut rejects = Vec::new();
    let mut records = 0u64;
    while reader
        .next_into(&mut rec)
        .with_context(|| format!("reading object {}", j.key))?
    {
        records += 1;
        let start = out.len();
        let row = layout.to_json_row(&rec, &mut out).and_then(|()| {
            // The line without its newline.
            let n = out.len() - start - 1;
            if n > JSON_OBJECT_MAX {
                out.truncate(start);
                return Err(RowError {
                    column: None,
                    value: None,
                    reason: format!("as a JSON object for Redshift's COPY it has {n} bytes, more than COPY reads in one JSON object ({JSON_OBJECT_MAX})"),
                });
            }
            Ok(())
        });
        if let Err(e) = row {
            refuse(&mut rejects, j, opts, reader.record_no, &rec, &e)?;
            out.push(b'\n');
        }
    }
    check_count(j, records)?;
    let key = format!("{COPY_MANIFESTS}{tag}.staged.json");
    let copy_job = put_staged(store, j, key, &out, records - rejects.len() as u64)?;
    Ok(Checked { rejects, copy_job })
}

/// Fails when the object does not hold the records its manifest lists.
fn check_count(j: &LoadJob, records: u64) -> Result<()> {
    if let Some(n) = j.expected_records.filter(|&n| n != records) {
        bail!(
            "object {} holds {records} records, but its manifest lists {n}: nothing loaded",
            j.key
        );
    }
    Ok(())
}

/// Writes an object COPY reads instead of `j` (uncompressed, under `_copy_manifests/`) and
/// gives the job that loads it.
fn put_staged(
    store: &dyn ObjectStore,
    j: &LoadJob,
    key: String,
    body: &[u8],
    records: u64,
) -> Result<LoadJob> {
    if store.put_bytes_if_absent(&key, body)? != PutOutcome::Created {
        bail!("staged object {key} exists already");
    }
    let mut copy_job = j.clone();
    copy_job.key = key;
    copy_job.size = body.len() as u64;
    copy_job.compression = Compression::None;
    copy_job.expected_sha256 = None;
    copy_job.expected_records = Some(records);
    Ok(copy_job)
}

/// One record the loader's check rejected, for the rejects table (the PostgreSQL path's
/// columns and values: a prefix of the record, its length and sha256).
fn pre_reject_sql(names: &Names, key: &str, r: &Reject) -> String {
    // varchar(1024) counts bytes on Redshift.
    let mut end = r.reason.len().min(1024);
    while !r.reason.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "INSERT INTO {} (\"key\", \"line\", \"raw\", \"reason\", \"raw_bytes\", \"raw_sha256\") VALUES ({}, {}, {}, {}, {}, {})",
        names.qualified(&names.rejects),
        literal(key),
        r.line,
        literal(&r.raw),
        literal(&r.reason[..end]),
        r.bytes,
        literal(&r.sha256)
    )
}

/// A tag unique to one load (manifest keys): time, process and a counter.
fn load_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

impl Warehouse for Redshift {
    fn session(&mut self) -> &mut dyn SqlSession {
        self.s.as_mut()
    }
    fn names(&self) -> &Names {
        &self.names
    }
    fn describe(&self) -> String {
        format!("redshift {}", self.s.describe())
    }
    fn literal(&self, s: &str) -> String {
        literal(s)
    }
    fn dialect(&self) -> super::Dialect {
        super::Dialect::Redshift
    }
    fn try_lock(&mut self, name: &str) -> Result<bool> {
        self.take_run_lock(name, false)
    }
    fn lock_wait(&mut self, name: &str) -> Result<()> {
        self.take_run_lock(name, true).map(|_| ())
    }
    fn record_skipped(&mut self, job: &LoadJob, records: u64) -> Result<()> {
        check_key(&job.key)?;
        if job.range.is_none() {
            bail!("object {}: an object without an offset range", job.key);
        }
        let lock = self.ledger_lock()?;
        let insert = Ledger::insert_sql(&self.names, job, 0, 0, records, &literal);
        self.in_transaction(|this| {
            this.s.execute(&format!("LOCK {lock}"))?;
            if Ledger::new(this)
                .keys_loaded(std::slice::from_ref(&job.key))?
                .contains(&job.key)
            {
                bail!("object {} is in the ledger already", job.key);
            }
            this.s.execute(&insert)
        })
        .with_context(|| format!("recording {} as loaded by other objects", job.key))
    }
    fn load(
        &mut self,
        jobs: &[LoadJob],
        store: &dyn ObjectStore,
        layout: &Codec,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadResult),
    ) -> Result<Vec<LoadResult>> {
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        for j in jobs {
            check_key(&j.key)?;
            if !j.skip.is_empty() {
                bail!(
                    "object {} overlaps offsets loaded already; loading part of an object is not supported on Redshift",
                    j.key
                );
            }
        }
        let tag = load_tag();
        let mut checked = Vec::with_capacity(jobs.len());
        for (i, j) in jobs.iter().enumerate() {
            checked.push(check_object(store, j, layout, opts, &format!("{tag}-{i}"))?);
        }
        let copy_jobs: Vec<LoadJob> = checked.iter().map(|c| c.copy_job.clone()).collect();
        let pre: Vec<Vec<Reject>> = checked.into_iter().map(|c| c.rejects).collect();
        self.flavour()?;
        let groups = plan_copies(&self.spec.archive_url, &copy_jobs, opts.max_errors, &tag);
        for g in &groups {
            let listed: Vec<&LoadJob> = g.jobs.iter().map(|&i| &copy_jobs[i]).collect();
            let body = copy_manifest(&self.spec.archive_url, &listed);
            if store.put_bytes_if_absent(&g.manifest_key, body.as_bytes())? != PutOutcome::Created {
                bail!("COPY manifest {} exists already", g.manifest_key);
            }
            if layout.format != RecordFormat::Delimited {
                let key = jsonpaths_key(&g.manifest_key);
                let body = jsonpaths_file(layout);
                if store.put_bytes_if_absent(&key, body.as_bytes())? != PutOutcome::Created {
                    bail!("JSONPaths file {key} exists already");
                }
            }
        }
        let mut retries = 0;
        let results = loop {
            match self.load_once(
                &Staged {
                    jobs,
                    copy_jobs: &copy_jobs,
                    pre: &pre,
                },
                &groups,
                layout,
                opts,
            ) {
                Ok(r) => break r,
                Err(e) if serialization_violation(&e) && retries < SERIALIZABLE_RETRIES => {
                    let wait = SERIALIZABLE_BACKOFF_MS << retries;
                    retries += 1;
                    tracing::warn!("{e:#}: Redshift cancelled the load's transaction (serializable isolation violation); trying it again in {wait} ms ({retries} of {SERIALIZABLE_RETRIES})");
                    std::thread::sleep(std::time::Duration::from_millis(wait));
                }
                Err(e) => return Err(e),
            }
        };
        for r in &results {
            progress(r);
        }
        Ok(results)
    }
    fn load_sql(&self, jobs: &[LoadJob], layout: &Layout) -> Vec<String> {
        load_plan(&self.names, layout, &self.spec, jobs)
            .unwrap_or_else(|e| vec![format!("-- {e:#}")])
    }
}

/// The statements of one load, for --dry-run (secrets masked; measured values as `{...}`).
pub fn load_plan(
    names: &Names,
    layout: &Layout,
    spec: &CopySpec,
    jobs: &[LoadJob],
) -> Result<Vec<String>> {
    let groups = plan_copies(&spec.archive_url, jobs, None, "{load}");
    let mut v = vec![
        "BEGIN".to_string(),
        format!("LOCK {}", names.qualified(&ledger_lock_table(names))),
        "-- re-check the objects' keys and offset ranges in the ledger".to_string(),
    ];
    v.extend(staging_sql(names, layout));
    if layout.format != RecordFormat::Delimited {
        v.push(format!(
            "-- each object's records decoded and checked, written as JSON lines to {COPY_MANIFESTS}{{load}}-N.staged.json; each COPY's JSONPaths file beside its manifest: {}",
            jsonpaths_file(layout).split_whitespace().collect::<String>()
        ));
    }
    for g in &groups {
        v.push(copy_sql(&quote_ident(STAGING), layout, spec, g, true)?);
        v.push("-- count the staged rows and the errors per object in stl_load_errors (sys_load_error_detail on Serverless); check them against the manifests".into());
    }
    let topic = jobs
        .first()
        .and_then(|j| j.range.as_ref())
        .map(|r| r.topic.as_str());
    v.push(move_sql(names, layout, topic));
    for j in jobs {
        v.push(Ledger::insert_sql(
            names,
            j,
            "{loaded}",
            "{rejected}",
            0,
            &literal,
        ));
    }
    v.push(format!("DROP TABLE {}", quote_ident(STAGING)));
    v.push("COMMIT".into());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::LocalStore;
    use crate::warehouse::OffsetRange;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    fn names() -> Names {
        Names {
            schema: "public".into(),
            raw: "batch_raw".into(),
            ledger: "batchlayer_loads".into(),
            rejects: "batchlayer_rejects".into(),
        }
    }

    fn spec(auth: S3Auth) -> CopySpec {
        CopySpec {
            archive_url: "s3://arch/tweets".into(),
            region: "eu-west-1".into(),
            auth,
        }
    }

    fn role() -> S3Auth {
        S3Auth::IamRole("arn:aws:iam::123456789012:role/Loader".into())
    }

    fn group(c: Compression, n: usize, max_error: Option<u64>) -> CopyGroup {
        CopyGroup {
            compression: c,
            jobs: (0..n).collect(),
            manifest_key: "_copy_manifests/run1-0.json".into(),
            max_error,
        }
    }

    /// `plain` gzip-compressed, as an archived `.log.gz` object holds it.
    fn gzip(plain: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    }

    /// An archived object of `n` good tweet records, framed and compressed as `c` says.
    fn object(c: Compression, n: u64) -> Vec<u8> {
        let mut plain = Vec::new();
        for i in 0..n {
            crate::records::frame_into(
                crate::tweets::tweet(7, i, 3).record().as_bytes(),
                &mut plain,
            );
        }
        match c {
            Compression::None => plain,
            Compression::Gzip => gzip(&plain),
            Compression::Zstd => zstd::encode_all(&plain[..], 1).unwrap(),
        }
    }

    fn job(key: &str, c: Compression, records: Option<u64>, p: i32) -> LoadJob {
        LoadJob {
            key: key.into(),
            size: 123,
            compression: c,
            expected_sha256: records.map(|_| "ab".into()),
            expected_records: records,
            range: Some(OffsetRange {
                topic: "t".into(),
                partition: p,
                epoch: 0,
                first: 0,
                last: 9,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn copy_with_iam_role_gzip_snapshot() {
        let sql = copy_sql(
            "\"batchlayer_staging\"",
            &Layout::tweets(),
            &spec(role()),
            &group(Compression::Gzip, 2, None),
            false,
        )
        .unwrap();
        assert_eq!(
            sql,
            "COPY \"batchlayer_staging\" (\"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\", \"batchlayer_trailing\")\n\
FROM 's3://arch/tweets/_copy_manifests/run1-0.json'\n\
IAM_ROLE 'arn:aws:iam::123456789012:role/Loader'\n\
MANIFEST\n\
DELIMITER ';'\n\
ESCAPE\n\
GZIP\n\
REGION 'eu-west-1'\n\
TIMEFORMAT 'YYYY-MM-DD HH24:MI:SS'\n\
NULL AS 'None'\n\
COMPUPDATE OFF\n\
STATUPDATE OFF"
        );
    }

    #[test]
    fn copy_with_keys_zstd_maxerror_masks_secret() {
        let auth = S3Auth::Keys {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Secret::new("s3cr3t/key\\'"),
            session_token: None,
        };
        let s = spec(auth);
        let g = group(Compression::Zstd, 2, Some(11));
        let masked = copy_sql("x", &Layout::tweets(), &s, &g, true).unwrap();
        assert!(
            masked.contains("ACCESS_KEY_ID 'AKIAEXAMPLE'\nSECRET_ACCESS_KEY '***'\n"),
            "{masked}"
        );
        assert!(!masked.contains("s3cr3t"));
        assert!(
            masked.contains("\nZSTD\n") && masked.ends_with("MAXERROR 11"),
            "{masked}"
        );
        let real = copy_sql("x", &Layout::tweets(), &s, &g, false).unwrap();
        assert!(
            real.contains("SECRET_ACCESS_KEY 's3cr3t/key\\\\'''"),
            "{real}"
        );
    }

    #[test]
    fn literals_are_escaped_the_redshift_way() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\'b"), "'a\\\\''b'");
        assert_eq!(literal("\\"), "'\\\\'");
        assert!(check_key("t/x\\'y/t+0+1+2.log").is_ok());
        assert!(check_key("t/x\ny").is_err());
        assert!(check_key("t/x\0y").is_err());
        assert!(check_key(" t").is_err());
    }

    #[test]
    fn copies_split_by_compression_and_measurability() {
        let long = format!("t/{}/t+0+0+9.log.gz", "x".repeat(240));
        let jobs = vec![
            job("a.log.gz", Compression::Gzip, Some(10), 0),
            job("b.log.zst", Compression::Zstd, Some(10), 1),
            job("c.log.gz", Compression::Gzip, Some(10), 2),
            job("d.log.gz", Compression::Gzip, None, 3),
            job(&long, Compression::Gzip, Some(10), 4),
            job("e.log", Compression::None, Some(10), 5),
        ];
        let g = plan_copies("s3://arch/tweets", &jobs, Some(2), "tag");
        let got: Vec<(Compression, Vec<usize>, Option<u64>)> = g
            .iter()
            .map(|g| (g.compression, g.jobs.clone(), g.max_error))
            .collect();
        assert_eq!(
            got,
            vec![
                (Compression::Gzip, vec![0, 2], Some(5)),
                (Compression::Zstd, vec![1], Some(3)),
                (Compression::Gzip, vec![3], Some(3)),
                (Compression::Gzip, vec![4], Some(3)),
                (Compression::None, vec![5], Some(3)),
            ]
        );
        assert_eq!(g[0].manifest_key, "_copy_manifests/tag-0.json");
        // MAXERROR stays within Redshift's limit: more COPYs instead.
        let many: Vec<LoadJob> = (0..5)
            .map(|i| job(&format!("{i}.log.gz"), Compression::Gzip, Some(1), i))
            .collect();
        let g = plan_copies("s3://a", &many, Some(40_000), "t");
        assert_eq!(g.len(), 3);
        assert!(g.iter().all(|g| g.max_error.unwrap() <= MAXERROR_LIMIT));
        assert!(plan_copies("s3://a", &many, None, "t")
            .iter()
            .all(|g| g.max_error.is_none()));
    }

    #[test]
    fn manifest_lists_exactly_the_objects() {
        let a = job(
            "t/2024/01/01/00/t+0+00000000000000000000+00000000000000000009.log.gz",
            Compression::Gzip,
            Some(1),
            0,
        );
        let b = job("t/x/t+1+1+1.log.gz", Compression::Gzip, Some(1), 1);
        let m = copy_manifest("s3://arch/tweets/", &[&a, &b]);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        let urls: Vec<&str> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            vec![
            "s3://arch/tweets/t/2024/01/01/00/t+0+00000000000000000000+00000000000000000009.log.gz",
            "s3://arch/tweets/t/x/t+1+1+1.log.gz"
        ]
        );
        assert!(v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["mandatory"] == true && e["meta"]["content_length"] == 123));
    }

    #[test]
    fn bad_iam_role_is_refused() {
        let s = spec(S3Auth::IamRole("Loader".into()));
        let g = group(Compression::Gzip, 1, None);
        assert!(copy_sql("x", &Layout::tweets(), &s, &g, true).is_err());
    }

    /// Temporary keys (STS, SSO): SESSION_TOKEN goes with them; masked, neither secret shows,
    /// and the first line (all an error quotes of a statement) holds no credential.
    #[test]
    fn copy_with_temporary_keys_snapshot() {
        let auth = S3Auth::Keys {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("tmpsecret"),
            session_token: Some(Secret::new("FwoGZXIvYXdz'token")),
        };
        let s = spec(auth);
        let g = group(Compression::Gzip, 1, None);
        let real = copy_sql("\"batchlayer_staging\"", &Layout::tweets(), &s, &g, false).unwrap();
        assert_eq!(
            real,
            "COPY \"batchlayer_staging\" (\"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\", \"batchlayer_trailing\")\n\
FROM 's3://arch/tweets/_copy_manifests/run1-0.json'\n\
ACCESS_KEY_ID 'ASIAEXAMPLE'\n\
SECRET_ACCESS_KEY 'tmpsecret'\n\
SESSION_TOKEN 'FwoGZXIvYXdz''token'\n\
MANIFEST\n\
DELIMITER ';'\n\
ESCAPE\n\
GZIP\n\
REGION 'eu-west-1'\n\
TIMEFORMAT 'YYYY-MM-DD HH24:MI:SS'\n\
NULL AS 'None'\n\
COMPUPDATE OFF\n\
STATUPDATE OFF"
        );
        let shown = super::super::session::first_line(&real);
        assert!(
            !shown.contains("tmpsecret") && !shown.contains("token"),
            "{shown}"
        );
        let masked = copy_sql("x", &Layout::tweets(), &s, &g, true).unwrap();
        assert!(
            masked.contains("SECRET_ACCESS_KEY '***'\nSESSION_TOKEN '***'\n"),
            "{masked}"
        );
        assert!(!masked.contains("tmpsecret") && !masked.contains("FwoG"));
    }

    /// `iam_role = "default"`: the keyword, unquoted (a quoted 'default' is not an ARN).
    #[test]
    fn copy_with_the_default_role_snapshot() {
        let s = spec(S3Auth::IamRole("default".into()));
        let g = group(Compression::None, 1, Some(3));
        let sql = copy_sql("\"batchlayer_staging\"", &Layout::tweets(), &s, &g, false).unwrap();
        assert_eq!(
            sql,
            "COPY \"batchlayer_staging\" (\"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\", \"batchlayer_trailing\")\n\
FROM 's3://arch/tweets/_copy_manifests/run1-0.json'\n\
IAM_ROLE default\n\
MANIFEST\n\
DELIMITER ';'\n\
ESCAPE\n\
REGION 'eu-west-1'\n\
TIMEFORMAT 'YYYY-MM-DD HH24:MI:SS'\n\
NULL AS 'None'\n\
COMPUPDATE OFF\n\
STATUPDATE OFF\n\
MAXERROR 3"
        );
    }

    #[test]
    fn the_flavour_is_the_setting_else_the_serverless_endpoint_else_probed() {
        let sl =
            "postgresql://u@wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com:5439/dev";
        let prov = "postgresql://u@c.abc123.eu-west-1.redshift.amazonaws.com:5439/dev";
        assert_eq!(Flavour::from_settings(None, sl), Some(Flavour::Serverless));
        assert_eq!(Flavour::from_settings(None, prov), None, "probed");
        assert_eq!(
            Flavour::from_settings(Some(false), sl),
            Some(Flavour::Provisioned)
        );
        assert_eq!(
            Flavour::from_settings(Some(true), prov),
            Some(Flavour::Serverless)
        );
        assert_eq!(
            load_errors_sql(Flavour::Serverless.errors(), 900007),
            r#"SELECT trim("file_name") AS "filename", "line_number", trim("column_name") AS "colname", trim("error_message") AS "reason" FROM "sys_load_error_detail" WHERE "query_id" = 900007 ORDER BY "line_number" LIMIT 5"#
        );
        assert_eq!(
            load_errors_sql(Flavour::Provisioned.errors(), 7),
            r#"SELECT trim("filename") AS "filename", "line_number", trim("colname") AS "colname", trim("raw_field_value") AS "value", trim("err_reason") AS "reason" FROM "stl_load_errors" WHERE "query" = 7 ORDER BY "line_number" LIMIT 5"#
        );
    }

    /// `pg_last_copy_id()` as a cluster answers it around COPYs that load: asked before and
    /// after each COPY, it gives `first - 1`, `first`, `first`, `first + 1`, ...
    fn copy_ids(first: i64) -> impl Fn() -> i64 {
        let asked = Cell::new(0i64);
        move || {
            let n = asked.get();
            asked.set(n + 1);
            first - 1 + (n + 1) / 2
        }
    }

    /// Answers a query with rows of text.
    type Answer = Rc<dyn Fn(&str) -> Vec<Vec<String>>>;

    /// Records every statement each session sends (`[n] sql`) and answers queries by script.
    struct Recorder {
        n: usize,
        log: Rc<RefCell<Vec<String>>>,
        answer: Answer,
    }

    impl Recorder {
        fn note(&self, s: &str) {
            // The load's tag (time, pid, counter) varies: shown as TAG.
            let s = match (s.find("_copy_manifests/"), s.find(".json")) {
                (Some(a), Some(b)) => {
                    let start = a + "_copy_manifests/".len();
                    let dash = s[..b].rfind('-').unwrap();
                    format!("{}TAG{}", &s[..start], &s[dash..])
                }
                _ => s.to_string(),
            };
            self.log.borrow_mut().push(format!("[{}] {s}", self.n));
        }
    }

    impl SqlSession for Recorder {
        fn describe(&self) -> String {
            "recorder".into()
        }
        fn run_in_transaction(&mut self, stmts: &[String]) -> Result<()> {
            stmts.iter().for_each(|s| self.note(s));
            Ok(())
        }
        fn execute(&mut self, sql: &str) -> Result<()> {
            self.note(sql);
            Ok(())
        }
        fn query_i64(&mut self, sql: &str) -> Result<Option<i64>> {
            self.note(sql);
            Ok((self.answer)(sql).first().and_then(|r| r[0].parse().ok()))
        }
        fn table_exists(&mut self, table: &str) -> Result<bool> {
            self.note(&format!("-- table_exists({table})"));
            Ok(true)
        }
        fn query_text(&mut self, sql: &str) -> Result<(Vec<String>, Rows)> {
            self.note(sql);
            let rows = (self.answer)(sql);
            Ok((
                vec![],
                rows.into_iter()
                    .map(|r| r.into_iter().map(Some).collect())
                    .collect(),
            ))
        }
    }

    /// A Redshift over recorders: session 0 is the main one, then one per lock.
    fn recorded(answer: Answer) -> (Redshift, Rc<RefCell<Vec<String>>>) {
        let log = Rc::new(RefCell::new(Vec::new()));
        let n = Rc::new(Cell::new(0));
        let l = log.clone();
        let open: SessionOpener = Box::new(move || {
            let s = Recorder {
                n: n.get(),
                log: l.clone(),
                answer: answer.clone(),
            };
            n.set(n.get() + 1);
            Ok(Box::new(s) as Box<dyn SqlSession>)
        });
        let wh = Redshift::over(names(), spec(role()), open).unwrap();
        (wh.with_flavour(Some(Flavour::Provisioned)), log)
    }

    /// The exact statements one load sends to Redshift: LOCK first, the re-check inside it,
    /// one COPY per compression into the staging table (an unlisted object alone), each
    /// measured, rejects copied per object, then the move into raw and the ledger rows.
    #[test]
    fn load_sends_these_statements_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let mut jobs = Vec::new();
        for (key, c, recs, p) in [
            ("t/a.log.gz", Compression::Gzip, Some(4), 0),
            ("t/x\\'y/b.log.gz", Compression::Gzip, Some(2), 1),
            ("t/c.log.zst", Compression::Zstd, Some(2), 2),
            ("t/d.log", Compression::None, None, 3),
        ] {
            let body = object(c, recs.unwrap_or(7));
            store.put_bytes_if_absent(key, &body).unwrap();
            let mut j = job(key, c, recs, p);
            j.expected_sha256 = recs.map(|_| crate::util::sha256_hex(&body));
            j.manifest = Some("m1".into());
            j.manifest_objects = Some(4);
            jobs.push(j);
        }
        let copies = Rc::new(Cell::new(10));
        let next_id = copy_ids(11);
        let answer: Answer = Rc::new(move |sql: &str| {
            let one = |v: i64| vec![vec![v.to_string()]];
            if sql.contains("pg_last_copy_id") {
                copies.set(next_id());
                return one(copies.get());
            }
            if sql.starts_with("SELECT count(*) FROM \"batchlayer_staging\"") {
                // a: 3 of 4 loaded, b: 2; c: 2; d: 5.
                return one([0, 5, 7, 12][(copies.get() - 10) as usize]);
            }
            if sql.contains("FROM \"stl_load_errors\" WHERE \"query\" = 11 GROUP BY 1") {
                return vec![vec!["s3://arch/tweets/t/a.log.gz".into(), "1".into()]];
            }
            if sql.contains("FROM \"stl_load_errors\" WHERE \"query\" = 13 GROUP BY 1") {
                return vec![vec!["s3://arch/tweets/t/d.log".into(), "2".into()]];
            }
            vec![]
        });
        let (mut wh, log) = recorded(answer);
        let opts = LoadOptions {
            max_errors: Some(2),
            ..Default::default()
        };
        let r = wh
            .load(
                &jobs,
                &store,
                &Codec::new(Layout::tweets()),
                &opts,
                &mut |_| {},
            )
            .unwrap();
        let got: Vec<(u64, u64, u64)> = r
            .iter()
            .map(|r| (r.records, r.loaded, r.rejected))
            .collect();
        assert_eq!(got, vec![(4, 3, 1), (2, 2, 0), (2, 2, 0), (7, 5, 2)]);
        let cols = "\"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\"";
        let copy = |n: usize, c: &str, max: u64| {
            format!(
                "[0] COPY \"batchlayer_staging\" ({cols}, \"batchlayer_trailing\")\nFROM 's3://arch/tweets/_copy_manifests/TAG-{n}.json'\nIAM_ROLE 'arn:aws:iam::123456789012:role/Loader'\nMANIFEST\nDELIMITER ';'\nESCAPE\n{c}REGION 'eu-west-1'\nTIMEFORMAT 'YYYY-MM-DD HH24:MI:SS'\nNULL AS 'None'\nCOMPUPDATE OFF\nSTATUPDATE OFF\nMAXERROR {max}"
            )
        };
        let ledger = |key: &str, loaded: u64, rejected: u64, p: i32| {
            format!(
                "[0] INSERT INTO \"public\".\"batchlayer_loads\" (\"key\", \"size\", \"sha256\", \"rows_loaded\", \"rows_rejected\", \"target_table\", \"topic\", \"partition_id\", \"epoch\", \"first_offset\", \"last_offset\", \"rows_skipped\", \"manifest\", \"manifest_objects\")\nVALUES ({}, 123, {}, {loaded}, {rejected}, 'public.batch_raw', 't', {p}, 0, 0, 9, 0, 'm1', 4)",
                literal(key),
                literal(jobs[p as usize].expected_sha256.as_deref().unwrap_or(""))
            )
        };
        let staged = "[0] SELECT count(*) FROM \"batchlayer_staging\"".to_string();
        let errors = |id: i64| {
            format!("[0] SELECT trim(\"filename\"), CAST(count(*) AS BIGINT) FROM \"stl_load_errors\" WHERE \"query\" = {id} GROUP BY 1")
        };
        let last_id = "[0] SELECT CAST(pg_last_copy_id() AS BIGINT)".to_string();
        let expected = vec![
            "[0] CREATE SCHEMA IF NOT EXISTS \"public\"".to_string(),
            "[0] CREATE TABLE IF NOT EXISTS \"public\".\"batchlayer_loads__lock_writers\" (\"held\" boolean)".into(),
            "[0] BEGIN".into(),
            "[0] LOCK \"public\".\"batchlayer_loads__lock_writers\"".into(),
            "[0] -- table_exists(batchlayer_loads)".into(),
            "[0] SELECT DISTINCT \"key\" FROM \"public\".\"batchlayer_loads\" WHERE \"target_table\" = 'public.batch_raw' AND \"key\" IN ('t/a.log.gz', 't/x\\\\''y/b.log.gz', 't/c.log.zst', 't/d.log')".into(),
            "[0] -- table_exists(batchlayer_loads)".into(),
            "[0] SELECT \"topic\", \"partition_id\", \"epoch\", \"first_offset\", \"last_offset\" FROM \"public\".\"batchlayer_loads\" WHERE \"target_table\" = 'public.batch_raw' AND \"first_offset\" IS NOT NULL AND ((\"topic\" = 't' AND \"partition_id\" = 0 AND \"epoch\" = 0 AND \"last_offset\" >= 0 AND \"first_offset\" <= 9) OR (\"topic\" = 't' AND \"partition_id\" = 1 AND \"epoch\" = 0 AND \"last_offset\" >= 0 AND \"first_offset\" <= 9) OR (\"topic\" = 't' AND \"partition_id\" = 2 AND \"epoch\" = 0 AND \"last_offset\" >= 0 AND \"first_offset\" <= 9) OR (\"topic\" = 't' AND \"partition_id\" = 3 AND \"epoch\" = 0 AND \"last_offset\" >= 0 AND \"first_offset\" <= 9))".into(),
            "[0] CREATE TEMP TABLE \"batchlayer_staging\" (LIKE \"public\".\"batch_raw\")".into(),
            "[0] ALTER TABLE \"batchlayer_staging\" ADD COLUMN \"batchlayer_trailing\" VARCHAR(1)".into(),
            last_id.clone(),
            copy(0, "GZIP\n", 5),
            last_id.clone(),
            staged.clone(),
            errors(11),
            "[0] INSERT INTO \"public\".\"batchlayer_rejects\" (\"key\", \"line\", \"raw\", \"reason\")\nSELECT 't/a.log.gz', \"line_number\", trim(\"raw_line\"), trim(\"colname\") || ': ' || trim(\"err_reason\")\nFROM \"stl_load_errors\" WHERE \"query\" = 11 AND trim(\"filename\") = 's3://arch/tweets/t/a.log.gz'".into(),
            last_id.clone(),
            copy(1, "ZSTD\n", 3),
            last_id.clone(),
            staged.clone(),
            errors(12),
            last_id.clone(),
            copy(2, "", 3),
            last_id,
            staged,
            errors(13),
            "[0] INSERT INTO \"public\".\"batchlayer_rejects\" (\"key\", \"line\", \"raw\", \"reason\")\nSELECT 't/d.log', \"line_number\", trim(\"raw_line\"), trim(\"colname\") || ': ' || trim(\"err_reason\")\nFROM \"stl_load_errors\" WHERE \"query\" = 13".into(),
            format!("[0] INSERT INTO \"public\".\"batch_raw\" ({cols})\nSELECT {cols} FROM \"batchlayer_staging\""),
            ledger("t/a.log.gz", 3, 1, 0),
            ledger("t/x\\'y/b.log.gz", 2, 0, 1),
            ledger("t/c.log.zst", 2, 0, 2),
            ledger("t/d.log", 5, 2, 3),
            "[0] DROP TABLE \"batchlayer_staging\"".into(),
            "[0] COMMIT".into(),
        ];
        let got = log.borrow().clone();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "statement {i}");
        }
        assert_eq!(got.len(), expected.len(), "{got:#?}");
    }

    /// Records the PostgreSQL path refuses never reach COPY: a strict load fails naming the
    /// record; a tolerant one COPYs a cleaned object (good records only, uncompressed) and
    /// records the rejects with the PostgreSQL path's line, raw prefix, reason, length and sha256.
    #[test]
    fn bad_records_are_rejected_before_copy_as_on_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let mut plain = Vec::new();
        let bad: &[u8] = b"1;;5;Oslo;1;2;";
        let records: &[&[u8]] = &[
            b"1;2024-01-01 00:00:00;5;Oslo;1;2;",
            bad,
            b"2;2024-01-01 00:00:00;5;None;1;2;",
        ];
        for r in records {
            crate::records::frame_into(r, &mut plain);
        }
        store
            .put_bytes_if_absent("t/a.log.gz", &gzip(&plain))
            .unwrap();
        let mut j = job("t/a.log.gz", Compression::Gzip, Some(3), 0);
        j.expected_sha256 = None;
        let jobs = vec![j];
        let next_id = copy_ids(5);
        let answer: Answer = Rc::new(move |sql: &str| {
            if sql.contains("pg_last_copy_id") {
                vec![vec![next_id().to_string()]]
            } else if sql.starts_with("SELECT count(*)") {
                vec![vec!["2".into()]]
            } else {
                vec![]
            }
        });
        // Strict: the record is named, nothing is sent.
        let (mut wh, log) = recorded(answer.clone());
        let err = wh
            .load(
                &jobs,
                &store,
                &Codec::new(Layout::tweets()),
                &LoadOptions::default(),
                &mut |_| {},
            )
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("object t/a.log.gz record 2: column created_at"),
            "{err}"
        );
        assert!(log.borrow().iter().all(|s| !s.contains("COPY")));
        // Tolerant: COPY reads the cleaned object.
        let (mut wh, log) = recorded(answer);
        let opts = LoadOptions {
            max_errors: Some(1),
            ..Default::default()
        };
        let r = wh
            .load(
                &jobs,
                &store,
                &Codec::new(Layout::tweets()),
                &opts,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!((r[0].records, r[0].loaded, r[0].rejected), (3, 2, 1));
        let manifests = store.list(COPY_MANIFESTS).unwrap();
        let clean = manifests
            .iter()
            .find(|m| m.key.ends_with(".clean"))
            .expect("a cleaned object");
        let mut body = Vec::new();
        store.get_into(&clean.key, &mut body).unwrap();
        assert_eq!(body, [&plain[..34], &plain[34 + 15..]].concat());
        let manifest = manifests.iter().find(|m| m.key.ends_with(".json")).unwrap();
        let mut m = Vec::new();
        store.get_into(&manifest.key, &mut m).unwrap();
        let m = String::from_utf8(m).unwrap();
        assert!(m.contains(&clean.key) && !m.contains("t/a.log.gz"), "{m}");
        let log = log.borrow();
        assert!(
            log.iter()
                .any(|s| s.contains("COPY") && !s.contains("GZIP")),
            "{log:#?}"
        );
        let want = format!(
            "[0] INSERT INTO \"public\".\"batchlayer_rejects\" (\"key\", \"line\", \"raw\", \"reason\", \"raw_bytes\", \"raw_sha256\") VALUES ('t/a.log.gz', 2, '1;;5;Oslo;1;2;', 'column created_at: value \"\": not a timestamp in format %Y-%m-%d %H:%M:%S (premature end of input)', 14, '{}')",
            crate::util::sha256_hex(bad)
        );
        assert!(log.contains(&want), "{want}\n{log:#?}");
    }

    /// On Serverless the errors are read from sys_load_error_detail (its own columns, no raw
    /// line), never from an STL view.
    #[test]
    fn serverless_loads_read_errors_from_the_sys_views() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let mut jobs = Vec::new();
        for (key, p) in [("t/a.log.gz", 0), ("t/b.log.gz", 1)] {
            store
                .put_bytes_if_absent(key, &object(Compression::Gzip, 4))
                .unwrap();
            let mut j = job(key, Compression::Gzip, Some(4), p);
            j.expected_sha256 = None;
            jobs.push(j);
        }
        let next_id = copy_ids(900001);
        let answer: Answer = Rc::new(move |sql: &str| {
            if sql.contains("pg_last_copy_id") {
                vec![vec![next_id().to_string()]]
            } else if sql.starts_with("SELECT count(*)") {
                vec![vec!["7".into()]]
            } else if sql.contains("GROUP BY 1") {
                vec![vec!["s3://arch/tweets/t/b.log.gz".into(), "1".into()]]
            } else {
                vec![]
            }
        });
        let (wh, log) = recorded(answer);
        let mut wh = wh.with_flavour(Some(Flavour::Serverless));
        let opts = LoadOptions {
            max_errors: Some(1),
            ..Default::default()
        };
        let r = wh
            .load(
                &jobs,
                &store,
                &Codec::new(Layout::tweets()),
                &opts,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!((r[1].loaded, r[1].rejected), (3, 1));
        let log = log.borrow();
        assert!(log.iter().all(|s| !s.contains("stl_")), "{log:#?}");
        assert!(log.iter().any(|s| s == r#"[0] SELECT trim("file_name"), CAST(count(*) AS BIGINT) FROM "sys_load_error_detail" WHERE "query_id" = 900001 GROUP BY 1"#), "{log:#?}");
        assert!(log.iter().any(|s| s == r#"[0] INSERT INTO "public"."batchlayer_rejects" ("key", "line", "raw", "reason")
SELECT 't/b.log.gz', "line_number", NULL, trim("column_name") || ': ' || trim("error_message")
FROM "sys_load_error_detail" WHERE "query_id" = 900001 AND trim("file_name") = 's3://arch/tweets/t/b.log.gz'"#), "{log:#?}");
    }

    /// A count that differs from the manifests fails the load (rolled back), and so does an
    /// object over its own allowance even when the COPY's MAXERROR let it through.
    #[test]
    fn measured_counts_must_match_and_maxerror_is_per_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        for key in ["a.log.gz", "b.log.gz"] {
            store
                .put_bytes_if_absent(key, &object(Compression::Gzip, 4))
                .unwrap();
        }
        let jobs = vec![
            job("a.log.gz", Compression::Gzip, Some(4), 0),
            job("b.log.gz", Compression::Gzip, Some(4), 1),
        ]
        .into_iter()
        .map(|mut j| {
            j.expected_sha256 = None;
            j
        })
        .collect::<Vec<_>>();
        for (staged, errors, want) in [
            ("7", vec![], "do not hold what their manifests say"),
            (
                "6",
                vec![("s3://arch/tweets/a.log.gz", "2")],
                "2 bad rows, more than 1",
            ),
            ("7", vec![("s3://elsewhere/z.log.gz", "1")], "did not list"),
        ] {
            let errors: Vec<Vec<String>> = errors
                .iter()
                .map(|(f, n)| vec![f.to_string(), n.to_string()])
                .collect();
            let next_id = copy_ids(5);
            let answer: Answer = Rc::new(move |sql: &str| {
                if sql.contains("pg_last_copy_id") {
                    vec![vec![next_id().to_string()]]
                } else if sql.starts_with("SELECT count(*)") {
                    vec![vec![staged.into()]]
                } else if sql.contains("GROUP BY 1") {
                    errors.clone()
                } else {
                    vec![]
                }
            });
            let (mut wh, log) = recorded(answer);
            let opts = LoadOptions {
                max_errors: Some(1),
                ..Default::default()
            };
            let err = wh
                .load(
                    &jobs,
                    &store,
                    &Codec::new(Layout::tweets()),
                    &opts,
                    &mut |_| {},
                )
                .unwrap_err();
            assert!(format!("{err:#}").contains(want), "{err:#}");
            let log = log.borrow();
            assert!(log.iter().any(|s| s == "[0] ROLLBACK"), "{log:#?}");
            assert!(!log.iter().any(|s| s.contains("COMMIT")));
            assert!(log.iter().any(|s| s.ends_with("MAXERROR 3")), "{log:#?}");
        }
    }

    /// The run lock: a session of its own, a lock table per name, LOCK inside an open
    /// transaction; `try_lock` first asks svv_transactions whether another session has it.
    #[test]
    fn run_locks_hold_a_table_lock_on_their_own_session() {
        let (mut wh, log) = recorded(Rc::new(|_: &str| vec![]));
        assert!(wh.try_lock("aggregate:batch_layer").unwrap());
        assert!(
            wh.try_lock("aggregate:batch_layer").unwrap(),
            "held: true at once"
        );
        wh.lock_wait("copy").unwrap();
        assert_eq!(
            *log.borrow(),
            vec![
                "[1] CREATE SCHEMA IF NOT EXISTS \"public\"",
                "[1] CREATE TABLE IF NOT EXISTS \"public\".\"batch_raw__lock_aggregate_batch_layer\" (\"held\" boolean)",
                &format!("[1] {}", lock_probe_sql("public", "batch_raw__lock_aggregate_batch_layer")),
                "[1] SET statement_timeout TO 1000",
                "[1] BEGIN",
                "[1] LOCK \"public\".\"batch_raw__lock_aggregate_batch_layer\"",
                "[1] SET statement_timeout TO 0",
                "[2] CREATE SCHEMA IF NOT EXISTS \"public\"",
                "[2] CREATE TABLE IF NOT EXISTS \"public\".\"batch_raw__lock_copy\" (\"held\" boolean)",
                "[2] SET statement_timeout TO 0",
                "[2] BEGIN",
                "[2] LOCK \"public\".\"batch_raw__lock_copy\"",
                "[2] SET statement_timeout TO 0",
            ]
        );
        let long = wh.lock_table(&"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
    }

    /// The tweets as JSON records, with a json column (SUPER) of the whole user; the layout
    /// keeps the tweets' trailing delimiter, which JSON records do not have.
    fn json_layout() -> Layout {
        let mut l = Layout::tweets_json();
        let mut user = crate::records::Column::new("user_doc", ColumnType::Json);
        user.path = Some("/user".into());
        l.columns.push(user);
        l
    }

    const JSON_COLS: &str = "\"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\", \"user_doc\"";

    /// JSON and Avro layouts: COPY reads staged JSON lines through a JSONPaths file beside
    /// the manifest, with the TIMEFORMAT and DATEFORMAT of what `to_json_row` writes, and none
    /// of DELIMITER, ESCAPE, NULL AS; no trailing field.
    #[test]
    fn copy_of_staged_json_lines_snapshot() {
        let g = group(Compression::None, 2, Some(4));
        for format in [RecordFormat::Json, RecordFormat::Avro] {
            let mut l = json_layout();
            l.format = format;
            let sql = copy_sql("\"batchlayer_staging\"", &l, &spec(role()), &g, false).unwrap();
            assert_eq!(
                sql,
                format!(
                    "COPY \"batchlayer_staging\" ({JSON_COLS})\n\
FROM 's3://arch/tweets/_copy_manifests/run1-0.json'\n\
IAM_ROLE 'arn:aws:iam::123456789012:role/Loader'\n\
MANIFEST\n\
FORMAT AS JSON 's3://arch/tweets/_copy_manifests/run1-0-jsonpaths.json'\n\
REGION 'eu-west-1'\n\
TIMEFORMAT 'YYYY-MM-DD HH24:MI:SS'\n\
DATEFORMAT 'YYYY-MM-DD'\n\
COMPUPDATE OFF\n\
STATUPDATE OFF\n\
MAXERROR 4"
                )
            );
        }
        // The delimited layout's statement is as it was (its snapshots above).
        let d = copy_sql("x", &Layout::tweets(), &spec(role()), &g, false).unwrap();
        assert!(
            d.contains("DELIMITER ';'\nESCAPE\n") && !d.contains("JSON"),
            "{d}"
        );
        // Compressed groups say so.
        let gz = group(Compression::Gzip, 1, None);
        let sql = copy_sql("x", &json_layout(), &spec(role()), &gz, true).unwrap();
        assert!(sql.contains("-jsonpaths.json'\nGZIP\nREGION"), "{sql}");
    }

    /// The JSONPaths file: one object, one "jsonpaths" key, one bracket-notation expression
    /// per column in column order; its key never starts with the manifest's.
    #[test]
    fn the_jsonpaths_file_names_each_column_in_order() {
        let body = jsonpaths_file(&json_layout());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), 1);
        let paths: Vec<&str> = m["jsonpaths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "$['id']",
                "$['created_at']",
                "$['followers_count']",
                "$['location']",
                "$['favorite_count']",
                "$['retweet_count']",
                "$['user_doc']"
            ]
        );
        let manifest = "_copy_manifests/T-1.json";
        let key = jsonpaths_key(manifest);
        assert_eq!(key, "_copy_manifests/T-1-jsonpaths.json");
        assert!(!key.starts_with(manifest));
    }

    /// JSON layouts: no trailing column in staging; the move turns a SUPER column's JSON null
    /// into NULL. Delimited layouts move as they did.
    #[test]
    fn staging_and_move_for_json_layouts() {
        let l = json_layout();
        assert!(l.trailing_delimiter, "kept from the tweets' layout");
        assert_eq!(staging_sql(&names(), &l).len(), 1);
        assert_eq!(staging_sql(&names(), &Layout::tweets()).len(), 2);
        assert_eq!(
            move_sql(&names(), &l, None),
            format!("INSERT INTO \"public\".\"batch_raw\" ({JSON_COLS})\nSELECT \"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\", CASE WHEN JSON_TYPEOF(\"user_doc\") = 'null' THEN NULL ELSE \"user_doc\" END FROM \"batchlayer_staging\"")
        );
        let mut d = Layout::tweets();
        d.columns
            .push(crate::records::Column::new("doc", ColumnType::Json));
        assert!(!move_sql(&names(), &d, None).contains("CASE"));
    }

    /// `t/a.log.gz`: a good JSON tweet, a truncated one, an empty message, the good one again.
    fn json_object(store: &LocalStore) -> LoadJob {
        let good = br#"{"id":"7","created_at":"2024-01-01T00:00:01Z","user":{"followers_count":5,"location":"Tab\tTown"},"favorite_count":1,"retweet_count":2}"#;
        let records: &[&[u8]] = &[good, b"{\"id\":", b"", good];
        let mut plain = Vec::new();
        for r in records {
            crate::records::frame_into(r, &mut plain);
        }
        store
            .put_bytes_if_absent("t/a.log.gz", &gzip(&plain))
            .unwrap();
        let mut j = job("t/a.log.gz", Compression::Gzip, Some(4), 0);
        j.expected_sha256 = None;
        j
    }

    /// A JSON load: each object's records checked and staged as JSON lines (an empty line for
    /// each refused record, so line N is record N), the JSONPaths file written beside the
    /// manifest, COPY reading the staged objects, the rejects the PostgreSQL path's.
    #[test]
    fn a_json_load_stages_json_lines_and_copies_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let j = json_object(&store);
        let next_id = copy_ids(5);
        let answer: Answer = Rc::new(move |sql: &str| {
            if sql.contains("pg_last_copy_id") {
                vec![vec![next_id().to_string()]]
            } else if sql.starts_with("SELECT count(*)") {
                vec![vec!["2".into()]]
            } else {
                vec![]
            }
        });
        let codec = Codec::new(json_layout());
        let (mut wh, _) = recorded(answer.clone());
        let err = wh
            .load(
                std::slice::from_ref(&j),
                &store,
                &codec,
                &LoadOptions::default(),
                &mut |_| {},
            )
            .unwrap_err();
        assert!(format!("{err:#}").contains("record 2: not JSON"), "{err:#}");
        let (mut wh, log) = recorded(answer);
        let opts = LoadOptions {
            max_errors: Some(2),
            ..Default::default()
        };
        let r = wh.load(&[j], &store, &codec, &opts, &mut |_| {}).unwrap();
        assert_eq!((r[0].records, r[0].loaded, r[0].rejected), (4, 2, 2));
        let listed = store.list(COPY_MANIFESTS).unwrap();
        let staged = listed
            .iter()
            .find(|o| o.key.ends_with(".staged.json"))
            .expect("a staged object");
        let mut body = Vec::new();
        store.get_into(&staged.key, &mut body).unwrap();
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 5, "four lines and the end");
        assert!(lines[1].is_empty() && lines[2].is_empty() && lines[4].is_empty());
        let row: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
        assert_eq!(row["id"], 7);
        assert_eq!(row["created_at"], "2024-01-01 00:00:01.000000");
        assert_eq!(row["location"], "Tab\tTown");
        assert_eq!(row["user_doc"]["followers_count"], 5);
        assert_eq!(lines[3], lines[0]);
        let paths = listed
            .iter()
            .find(|o| o.key.ends_with("-jsonpaths.json"))
            .expect("a JSONPaths file");
        let mut p = Vec::new();
        store.get_into(&paths.key, &mut p).unwrap();
        assert_eq!(p, jsonpaths_file(&codec).into_bytes());
        let manifest = listed
            .iter()
            .find(|o| {
                o.key.ends_with(".json")
                    && !o.key.ends_with("-jsonpaths.json")
                    && !o.key.ends_with(".staged.json")
            })
            .unwrap();
        let mut m = Vec::new();
        store.get_into(&manifest.key, &mut m).unwrap();
        let m = String::from_utf8(m).unwrap();
        assert!(m.contains(&staged.key) && !m.contains("t/a.log.gz"), "{m}");
        let log = log.borrow();
        let copy = log.iter().find(|s| s.contains("COPY")).unwrap();
        assert!(
            copy.contains("FORMAT AS JSON") && !copy.contains("GZIP"),
            "{copy}"
        );
        let rejects: Vec<&String> = log
            .iter()
            .filter(|s| s.contains("batchlayer_rejects"))
            .collect();
        assert_eq!(rejects.len(), 2, "{log:#?}");
        assert!(
            rejects[0].contains("VALUES ('t/a.log.gz', 2, '{\"id\":', 'not JSON"),
            "{}",
            rejects[0]
        );
        assert!(
            rejects[1].contains("VALUES ('t/a.log.gz', 3, '', 'not JSON"),
            "{}",
            rejects[1]
        );
    }

    /// A staged JSON line over what COPY reads in one JSON object is refused by the check
    /// (COPY would fail whole), counted like any bad record.
    #[test]
    fn a_json_line_over_four_mb_is_refused_before_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let mut l = json_layout();
        l.columns[3].max_len = None;
        let rec = format!(
            r#"{{"id":1,"created_at":"2024-01-01T00:00:01Z","user":{{"followers_count":5,"location":"{}"}},"favorite_count":1,"retweet_count":2}}"#,
            "x".repeat(JSON_OBJECT_MAX / 2)
        );
        let mut plain = Vec::new();
        crate::records::frame_into(rec.as_bytes(), &mut plain);
        store.put_bytes_if_absent("t/big.log", &plain).unwrap();
        let mut j = job("t/big.log", Compression::None, Some(1), 0);
        j.expected_sha256 = None;
        let err = check_object(&store, &j, &Codec::new(l), &LoadOptions::default(), "tag")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("more than COPY reads in one JSON object"),
            "{err:#}"
        );
    }

    #[test]
    fn dry_run_plan_masks_secrets_and_names_measured_values() {
        let auth = S3Auth::Keys {
            access_key_id: "AKIA".into(),
            secret_access_key: Secret::new("topsecret"),
            session_token: Some(Secret::new("tokensecret")),
        };
        let jobs = vec![
            job("a.log.gz", Compression::Gzip, Some(1), 0),
            job("b.log", Compression::None, Some(1), 1),
        ];
        let plan = load_plan(&names(), &Layout::tweets(), &spec(auth), &jobs).unwrap();
        assert_eq!(plan[0], "BEGIN");
        assert_eq!(
            plan[1],
            "LOCK \"public\".\"batchlayer_loads__lock_writers\""
        );
        assert_eq!(plan.iter().filter(|s| s.starts_with("COPY ")).count(), 2);
        assert!(plan
            .iter()
            .all(|s| !s.contains("topsecret") && !s.contains("tokensecret")));
        assert!(
            plan.iter().any(|s| s.contains("SESSION_TOKEN '***'")),
            "{plan:#?}"
        );
        assert!(plan.iter().any(|s| s.contains("{loaded}, {rejected}")));
        assert_eq!(plan.last().unwrap(), "COMMIT");
    }
}
