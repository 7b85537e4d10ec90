//! A Redshift stand-in for the integration tests: a [`SqlSession`] over PostgreSQL, set up
//! to behave like Redshift wherever batchlayer's Redshift dialect depends on it, with the
//! server-side `COPY ... FROM 's3://.../manifest' MANIFEST ...` carried out by this double.
//!
//! What it models:
//! * `standard_conforming_strings = off`: a backslash is an escape inside string literals.
//! * Keys are not enforced: `PRIMARY KEY`, a column's or the table's, is dropped from `CREATE
//!   TABLE` (Redshift accepts it as information and never enforces it:
//!   https://docs.aws.amazon.com/redshift/latest/dg/t_Defining_constraints.html). So there is
//!   no key for `ALTER TABLE ... DROP CONSTRAINT` (which Redshift has:
//!   https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html) to find here.
//! * No advisory locks: any statement naming one fails; `LOCK` is PostgreSQL's (ACCESS
//!   EXCLUSIVE until the transaction ends, as Redshift's).
//! * `COPY`: parses the exact statement (anything it does not understand is an error), reads the
//!   manifest and the objects it lists from the S3 server, decodes them with the options named
//!   (GZIP/ZSTD, DELIMITER, ESCAPE, NULL AS, TIMEFORMAT), counts the fields strictly (one more
//!   than the column list, an empty one after a final delimiter included, is an error), converts
//!   as COPY's data-conversion page says (an empty INT/TIMESTAMP field is NULL, `SS` takes
//!   fractions, a NUL byte fails the line), checks each field against the target
//!   column (integers, timestamps, valid UTF-8, varchar(n) counted in bytes), records each bad
//!   line in an `stl_load_errors` look-alike written outside the transaction (it survives a
//!   rollback, as Redshift's system tables do), applies MAXERROR to the whole COPY, and inserts
//!   the good rows into the target in the session's transaction. A failed COPY aborts the
//!   transaction. `pg_last_copy_id()` and `pg_last_copy_count()` answer for this session;
//!   the id moves when a COPY begins loading, not when it fails before (the manifest or an
//!   object unreadable, credentials refused): PG_LAST_COPY_ID.html.
//! * `COPY ... FORMAT [AS] JSON 's3://jsonpaths_file'` (or `'auto'`), in `standin_json.rs`,
//!   each rule with its page: the JSONPaths file's documented shape (one object, one
//!   "jsonpaths" key, an array of non-empty strings; another key name means 'auto'), bracket
//!   and dot notation (not mixed, no wildcards or filters, array indices >= 0), as many
//!   expressions as columns; the data's objects and arrays one row each, anything else between
//!   them a load error, an object over 4 MB failing the COPY; a missing element NULL, an array
//!   index out of range failing the COPY; objects and arrays into VARCHAR as their JSON text,
//!   into SUPER (jsonb here) as SUPER values within SUPER's size, string and nesting limits;
//!   strings converted by the column's type as delimited fields are (TIMEFORMAT, DATEFORMAT,
//!   varchar bytes), an empty string NULL except in VARCHAR; DELIMITER, ESCAPE or NULL AS
//!   with JSON refused. SUPER columns are jsonb, `JSON_TYPEOF` is jsonb_typeof.
//! * Serializable isolation error 1023 can be injected at the COMMIT of a transaction that ran
//!   a COPY ([`StandInCluster::serial_violations`]); sessions otherwise run read committed.
//! * Statements Redshift has no form of that PostgreSQL would accept (`CREATE INDEX`,
//!   `ON CONFLICT`, `ADD COLUMN IF NOT EXISTS`) are refused.
//! * Every statement is checked by [`redshift_sql`] against Redshift's documented rules, each
//!   with its page: reserved words unquoted in an identifier's place refused; quoted
//!   identifiers folded to lower case; leader-node-only functions refused in statements on
//!   user or system tables; `SYSDATE`/`GETDATE()` answered in UTC; TEXT as VARCHAR(256) bytes.
//! * Two flavours ([`StandInCluster::serverless`]). Provisioned: COPY's errors go to
//!   `stl_load_errors` and `pg_last_copy_id()` names its STL query id; the SYS monitoring views
//!   are served too, with their own query ids (SYS views exist on both flavours:
//!   https://docs.aws.amazon.com/redshift/latest/dg/serverless_views-monitoring.html).
//!   Serverless: any STL/STV/SVL/SVCS view is refused
//!   (https://docs.aws.amazon.com/redshift/latest/mgmt/serverless-monitoring.html;
//!   https://docs.aws.amazon.com/redshift/latest/dg/c_intro_system_views.html, "provisioned
//!   only"), COPY's errors are in `sys_load_error_detail` and `pg_last_copy_id()` names their
//!   `query_id` (as SYS_LOAD_DETAIL's example joins them). Both record each COPY in
//!   `sys_load_history`. The SYS views have their documented columns
//!   (https://docs.aws.amazon.com/redshift/latest/dg/SYS_LOAD_ERROR_DETAIL.html,
//!   https://docs.aws.amazon.com/redshift/latest/dg/SYS_LOAD_HISTORY.html): no raw line.
//! * COPY's credentials as
//!   https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-authorization.html gives
//!   them: `IAM_ROLE default` (the keyword) or `IAM_ROLE '<role ARN>'`, or `ACCESS_KEY_ID`
//!   with `SECRET_ACCESS_KEY` and an optional `SESSION_TOKEN`; IAM_ROLE with keys, a token
//!   without keys, or a quoted non-ARN role is refused.
//!
//! * Redshift Spectrum, in `standin_spectrum.rs`, each rule with its page: `CREATE EXTERNAL
//!   SCHEMA ... FROM DATA CATALOG`, `CREATE EXTERNAL TABLE schema.table (...) PARTITIONED BY
//!   (...) STORED AS PARQUET LOCATION 's3://...'` in an external schema, and `ALTER TABLE
//!   schema.table ADD [IF NOT EXISTS] PARTITION (...) LOCATION 's3://...' ...` on such a table
//!   (the table's partition columns, a repeat a no-op only with IF NOT EXISTS); neither of the
//!   last two inside a transaction block. The catalog is in the system schema
//!   (`standin_external_schemas`, `standin_external_tables`, `standin_spectrum_partitions`).
//! * A PostgreSQL wire-protocol server in front of it, in `standin_wire.rs`
//!   ([`StandInCluster::serve`]): each connection a session of the cluster, so the real binary
//!   (`warehouse.kind = "redshift"`, `warehouse.url` the server's) runs against the stand-in.
//!
//! What it cannot model: a cluster's parallel COPY over slices, IAM roles (a COPY naming
//! IAM_ROLE reads with the keys configured here), when `stl_*` rows become visible on a real
//! cluster, and Redshift's serializable isolation (sessions here run read committed).

#[path = "standin_json.rs"]
pub mod json;
#[path = "standin_spectrum.rs"]
pub mod spectrum;
#[path = "standin_wire.rs"]
pub mod wire;

use anyhow::{anyhow, bail, Context, Result};
use batchlayer::archive::s3::S3Store;
use batchlayer::archive::ObjectStore;
use batchlayer::config::{ArchiveLocation, AwsChain, Secret};
use batchlayer::records::pg_escape_into;
use batchlayer::warehouse::conninfo::redact_url;
use batchlayer::warehouse::session::{first_line, PgSession, SqlSession};
use batchlayer::warehouse::{quote_ident, Names};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Where the stand-in runs: a PostgreSQL database, a schema for its system tables, and the S3
/// server the COPYs read from.
#[derive(Debug, Clone)]
pub struct StandInCluster {
    pub pg_url: String,
    /// Holds `stl_load_errors` and the query-id sequence (the cluster's "system tables").
    pub system_schema: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    /// The keys a COPY naming IAM_ROLE reads with (IAM cannot be modelled here).
    pub role_keys: (String, String),
    /// Redshift Serverless (no STL views; errors in the SYS views), else a provisioned cluster.
    pub serverless: bool,
    /// How many of the next COMMITs of a transaction that ran a COPY fail with Redshift's
    /// serializable isolation violation (shared by every session of this cluster).
    pub serial_violations: Arc<AtomicU32>,
}

/// The STL query ids and the SYS query ids are numbered apart: a SYS view's query_id is its
/// own (https://docs.aws.amazon.com/redshift/latest/dg/cm_chap_system-tables.html, "Improving
/// query identifier tracking using the SYS monitoring views").
const SYS_QUERY_IDS_FROM: i64 = 900_001;

/// Prefixes of the system views Serverless does not have.
const PROVISIONED_ONLY: [&str; 4] = ["stl_", "stv_", "svl_", "svcs_"];

impl StandInCluster {
    /// Creates (afresh) the system schema: `stl_load_errors`, `sys_load_error_detail` and
    /// `sys_load_history` with Redshift's column types, and the sequences query ids come from.
    pub fn install(&self) -> Result<()> {
        let sys = quote_ident(&self.system_schema);
        let mut c = Client::connect(&self.pg_url, NoTls).context("connecting the stand-in")?;
        c.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {sys} CASCADE; CREATE SCHEMA {sys};
             CREATE SEQUENCE {sys}.query_ids;
             CREATE TABLE {sys}.stl_load_errors (
                 userid integer, slice integer, tbl integer, starttime timestamp DEFAULT now(),
                 session integer, query integer, filename char(256), line_number bigint,
                 colname char(127), type char(10), col_length char(10), position integer,
                 raw_line char(1024), raw_field_value char(1024), err_code integer,
                 err_reason char(100), is_partial integer, start_offset bigint);
             -- TEXT is converted to VARCHAR(256), in bytes: a longer value cast to it is refused.
             -- https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html
             CREATE DOMAIN {sys}.{text} AS text
                 CONSTRAINT text_is_varchar_256_on_redshift CHECK (octet_length(VALUE) <= 256);
             -- GETDATE(): the current date and time in the session's zone.
             -- https://docs.aws.amazon.com/redshift/latest/dg/r_GETDATE.html
             CREATE FUNCTION {sys}.getdate() RETURNS timestamp
                 AS 'SELECT CAST(statement_timestamp() AS timestamp)' LANGUAGE sql STABLE;
             -- The locks of open transactions, granted or pending, with the table id in
             -- relation (https://docs.aws.amazon.com/redshift/latest/dg/r_SVV_TRANSACTIONS.html);
             -- an SVV view, served on both flavours.
             CREATE VIEW {sys}.svv_transactions AS
                 SELECT a.usename::text AS txn_owner, a.datname::text AS txn_db,
                        a.backend_xid::text::bigint AS xid, l.pid,
                        a.xact_start::timestamp AS txn_start, l.mode AS lock_mode,
                        l.locktype AS lockable_object_type,
                        l.relation::bigint::integer AS relation, l.granted
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype IN ('relation', 'transactionid');
             -- JSON_TYPEOF(super): 'boolean', 'number', 'string', 'object', 'array' or 'null'
             -- (https://docs.aws.amazon.com/redshift/latest/dg/r_json_typeof.html); SUPER is
             -- jsonb here, whose jsonb_typeof answers the same names.
             CREATE FUNCTION {sys}.json_typeof(jsonb) RETURNS text
                 AS 'SELECT jsonb_typeof($1)' LANGUAGE sql IMMUTABLE;
             CREATE SEQUENCE {sys}.sys_query_ids START {SYS_QUERY_IDS_FROM};
             CREATE TABLE {sys}.sys_load_error_detail (
                 user_id integer, query_id bigint, transaction_id bigint, session_id integer,
                 database_name char(64), table_id integer, start_time timestamp DEFAULT now(),
                 file_name char(256), line_number bigint, column_name char(127),
                 column_type char(10), column_length char(10), position integer,
                 error_code integer, error_message char(512));
             CREATE TABLE {sys}.sys_load_history (
                 user_id integer, query_id bigint, transaction_id bigint, session_id integer,
                 database_name text, status text, table_name text,
                 start_time timestamp DEFAULT now(), end_time timestamp, duration bigint,
                 data_source text, file_format text, loaded_rows bigint, loaded_bytes bigint,
                 source_file_count integer, source_file_bytes bigint,
                 file_count_scanned integer, file_bytes_scanned bigint, error_count bigint,
                 copy_job_id bigint);
             -- Redshift Spectrum's external catalog (standin_spectrum.rs): what
             -- SVV_EXTERNAL_SCHEMAS, SVV_EXTERNAL_TABLES and SVV_EXTERNAL_PARTITIONS show on
             -- Redshift, in the stand-in's own tables. Columns and partition columns as JSON
             -- arrays of [name, type]; a partition's values as a JSON array of the values.
             CREATE TABLE {sys}.standin_external_schemas (
                 schemaname text PRIMARY KEY, databasename text NOT NULL, iam_role text,
                 created timestamp DEFAULT now());
             CREATE TABLE {sys}.standin_external_tables (
                 schemaname text NOT NULL, tablename text NOT NULL, columns text NOT NULL,
                 partition_columns text NOT NULL, location text NOT NULL,
                 created timestamp DEFAULT now(), PRIMARY KEY (schemaname, tablename));
             CREATE TABLE {sys}.standin_spectrum_partitions (
                 schemaname text NOT NULL, tablename text NOT NULL,
                 partition_values text NOT NULL, location text NOT NULL,
                 added timestamp DEFAULT clock_timestamp(),
                 PRIMARY KEY (schemaname, tablename, partition_values));",
            text = TEXT_DOMAIN
        ))?;
        Ok(())
    }

    /// A new session with the dialect's table names.
    pub fn session(&self, names: Names) -> Result<StandIn> {
        let connect = || Client::connect(&self.pg_url, NoTls).context("connecting the stand-in");
        let mut client = connect()?;
        client.batch_execute(&format!(
            // The session's zone is UTC, Redshift's default (SYSDATE and GETDATE answer in it).
            // https://docs.aws.amazon.com/redshift/latest/dg/r_SYSDATE.html
            "SET standard_conforming_strings = off; SET escape_string_warning = off; SET timezone TO 'UTC'; SET search_path TO {}",
            quote_ident(&self.system_schema)
        ))?;
        let pg = PgSession {
            client,
            names,
            url: format!("stand-in on {}", redact_url(&self.pg_url)),
        };
        Ok(StandIn {
            pg,
            log: connect()?,
            cluster: self.clone(),
            stl_id: -1,
            sys_id: -1,
            last_copy_id: -1,
            last_copy_count: -1,
            copied_in_transaction: false,
            copies: Vec::new(),
        })
    }
}

/// A CREATE TABLE without its table-level `PRIMARY KEY (...)` element (and the comma before
/// it): Redshift accepts and ignores keys, PostgreSQL would enforce them
/// (https://docs.aws.amazon.com/redshift/latest/dg/t_Defining_constraints.html).
fn drop_table_key(sql: &str) -> String {
    let upper = sql.to_ascii_uppercase();
    let Some(at) = upper.find("PRIMARY KEY (") else {
        return sql.to_string();
    };
    let Some(close) = sql[at..].find(')').map(|i| at + i) else {
        return sql.to_string();
    };
    let Some(comma) = sql[..at].rfind(',') else {
        return sql.to_string();
    };
    format!("{}{}", &sql[..comma], &sql[close + 1..])
}

/// One session on the stand-in.
pub struct StandIn {
    pg: PgSession,
    /// Autocommit connection for the system tables (not part of the session's transaction).
    log: Client,
    cluster: StandInCluster,
    /// The running COPY's STL query id (provisioned) and SYS query_id.
    stl_id: i64,
    sys_id: i64,
    last_copy_id: i64,
    last_copy_count: i64,
    /// Whether the open transaction ran a COPY (a COMMIT may then be cancelled with 1023).
    copied_in_transaction: bool,
    /// The COPY statements this session carried out, in order (for tests).
    pub copies: Vec<String>,
}

/// PostgreSQL forms Redshift does not have: refused so the dialect cannot come to rely on them.
const REFUSED: [(&str, &str); 6] = [
    ("pg_advisory", "Redshift has no advisory lock functions"),
    ("pg_try_advisory", "Redshift has no advisory lock functions"),
    ("create index", "Redshift has no indexes"),
    ("create unique index", "Redshift has no indexes"),
    ("on conflict", "Redshift has no INSERT ... ON CONFLICT"),
    (
        "add column if not exists",
        "Redshift has no ADD COLUMN IF NOT EXISTS",
    ),
];

impl StandIn {
    /// Refusals and rewrites that make PostgreSQL answer as Redshift would.
    fn prepare(&self, sql: &str) -> Result<String> {
        let lower = sql.to_lowercase();
        for (what, why) in REFUSED {
            if lower.contains(what) {
                bail!("Redshift stand-in: {why}: {}", first_line(sql));
            }
        }
        if self.cluster.serverless {
            // https://docs.aws.amazon.com/redshift/latest/mgmt/serverless-monitoring.html:
            // Serverless has no STL, STV, SVL or SVCS views (the SYS views replace them).
            let words = lower.split(|c: char| !(c.is_alphanumeric() || c == '_'));
            if let Some(view) = words
                .into_iter()
                .find(|w| PROVISIONED_ONLY.iter().any(|p| w.starts_with(p)))
            {
                bail!(
                    "Redshift stand-in (Serverless): {view} is a provisioned-only system view; Serverless has the SYS monitoring views: {}",
                    first_line(sql)
                );
            }
        }
        let mut s = redshift_sql(sql)?
            .replace("pg_last_copy_id()", &self.last_copy_id.to_string())
            .replace("PG_LAST_COPY_ID()", &self.last_copy_id.to_string())
            .replace("pg_last_copy_count()", &self.last_copy_count.to_string())
            .replace("PG_LAST_COPY_COUNT()", &self.last_copy_count.to_string());
        if lower.trim_start().starts_with("create table") {
            s = drop_table_key(&s)
                .replace(" PRIMARY KEY", "")
                .replace(" primary key", "");
        }
        Ok(s)
    }

    /// One statement: a COPY and Redshift Spectrum's statements are carried out here, anything
    /// else goes to PostgreSQL.
    fn statement(&mut self, sql: &str) -> Result<()> {
        if sql.trim_start().to_lowercase().starts_with("copy") {
            self.copies.push(sql.to_string());
            let r = self.copy(sql);
            if r.is_err() {
                // As on Redshift, a failed statement aborts the transaction it is in.
                let _ = self
                    .pg
                    .client
                    .batch_execute("DO $$ BEGIN RAISE EXCEPTION 'COPY failed'; END $$");
            }
            return r;
        }
        if spectrum::is_spectrum(sql) {
            let r = self.spectrum(sql);
            if r.is_err() {
                // As a COPY's, its failure aborts the transaction it is in.
                let _ = self.pg.client.batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'Spectrum statement failed'; END $$",
                );
            }
            return r;
        }
        let s = self.prepare(sql)?;
        let word = sql.trim().to_ascii_uppercase();
        if ["BEGIN", "COMMIT", "END", "ROLLBACK"].contains(&word.as_str()) {
            let copied = std::mem::take(&mut self.copied_in_transaction);
            if word != "BEGIN" && word != "ROLLBACK" && copied && self.take_serial_violation() {
                // Redshift cancels a transaction that cannot be serialised, at any statement
                // or at COMMIT: "ERROR: 1023 DETAIL: Serializable isolation violation on table"
                // https://docs.aws.amazon.com/redshift/latest/dg/c_serial_isolation-serializable-isolation-troubleshooting.html
                // https://docs.aws.amazon.com/redshift/latest/dg/c_serial_isolation.html
                return self.pg.execute(
                    "DO $$ BEGIN RAISE EXCEPTION '1023' USING DETAIL = 'Serializable isolation violation on table - 100001, transactions forming the cycle are: 1, 2 (pid:1)'; END $$",
                );
            }
        }
        self.pg.execute(&s)
    }

    /// Whether an injected serializable isolation violation is due (one used up when so).
    fn take_serial_violation(&self) -> bool {
        self.cluster
            .serial_violations
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn next_id(&mut self, sequence: &str) -> Result<i64> {
        Ok(self
            .log
            .query_one(
                &format!(
                    "SELECT nextval('{}.{sequence}')",
                    quote_ident(&self.cluster.system_schema)
                ),
                &[],
            )?
            .get::<_, i64>(0))
    }

    /// A COPY, recorded in `sys_load_history` (running, then completed or aborted).
    fn copy(&mut self, sql: &str) -> Result<()> {
        let stmt = parse_copy(sql)?;
        self.stl_id = self.next_id("query_ids")?;
        self.sys_id = self.next_id("sys_query_ids")?;
        self.copied_in_transaction = true;
        let sys = quote_ident(&self.cluster.system_schema);
        self.log.execute(
            &format!(
                "INSERT INTO {sys}.sys_load_history (query_id, status, table_name, data_source, file_format, copy_job_id) \
                 VALUES ($1, 'running', $2, $3, $4, 0)"
            ),
            &[
                &self.sys_id,
                &stmt.table,
                &stmt.from,
                &if stmt.json.is_some() { "json" } else { "txt" },
            ],
        )?;
        let (errors, r) = self.copy_rows(&stmt);
        let status = if r.is_ok() { "completed" } else { "aborted" };
        self.log.execute(
            &format!(
                "UPDATE {sys}.sys_load_history SET status = $2, end_time = now(), \
                 duration = (extract(epoch FROM now() - start_time) * 1000000)::bigint, \
                 loaded_rows = $3, error_count = $4 WHERE query_id = $1"
            ),
            &[
                &self.sys_id,
                &status,
                &self.last_copy_count,
                &(errors as i64),
            ],
        )?;
        r
    }

    /// The rows of a COPY: checked, bad lines logged, good ones inserted. Returns the errors
    /// logged with the outcome.
    fn copy_rows(&mut self, stmt: &CopyStatement) -> (u64, Result<()>) {
        let mut errors = 0u64;
        let r = self.copy_checked(stmt, &mut errors);
        (errors, r)
    }

    fn copy_checked(&mut self, stmt: &CopyStatement, errors: &mut u64) -> Result<()> {
        let stmt = stmt.clone();
        let cols = self.target_columns(&stmt)?;
        let files = self.fetch(&stmt)?;
        let paths = self.json_paths(&stmt, &cols)?;
        // pg_last_copy_id() moves when the COPY begins loading, not when it fails before (a
        // syntax, access or credentials error): "The COPY ID is not updated if the COPY
        // command fails because of an error that occurs before the load process begins".
        // https://docs.aws.amazon.com/redshift/latest/dg/PG_LAST_COPY_ID.html
        self.last_copy_id = if self.cluster.serverless {
            self.sys_id
        } else {
            self.stl_id
        };
        self.last_copy_count = 0;
        let mut good = Vec::new();
        let fail_at = stmt.max_error.max(1);
        let mut rows = 0u64;
        for (url, data) in &files {
            for (rec, row) in rows_of(data, &cols, &stmt, paths.as_deref())? {
                match row {
                    Ok(encoded) => {
                        rows += 1;
                        good.extend_from_slice(&encoded);
                    }
                    Err(e) => {
                        *errors += 1;
                        self.log_error(url, &rec, &e, &cols)?;
                        if *errors >= fail_at {
                            bail!(
                                "Load into table '{}' failed. Check '{}' system table for details.",
                                stmt.table,
                                self.cluster.error_view()
                            );
                        }
                    }
                }
            }
        }
        let names: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
        let mut w = self.pg.client.copy_in(&format!(
            "COPY {} ({}) FROM STDIN",
            stmt.table,
            names.join(", ")
        ))?;
        w.write_all(&good)?;
        w.finish()?;
        self.last_copy_count = rows as i64;
        Ok(())
    }

    /// A COPY from JSON: each column's JSONPath, from the JSONPaths file or 'auto' (None for
    /// delimited data). Read before the load begins, and not subject to MAXERROR ("MAXERROR
    /// does not apply to the JSONPaths file", copy-parameters-data-format.html#copy-json).
    /// "Each JSONPath expression corresponds to one column in the Amazon Redshift target
    /// table" (copy-usage_notes-copy-from-json.html): another count fails the COPY.
    fn json_paths(
        &self,
        stmt: &CopyStatement,
        cols: &[Col],
    ) -> Result<Option<Vec<Vec<json::Step>>>> {
        let Some(source) = &stmt.json else {
            return Ok(None);
        };
        let paths = match source {
            json::JsonSource::Auto => None,
            json::JsonSource::Paths(url) => {
                let body = self
                    .get(stmt, url)
                    .with_context(|| format!("reading the JSONPaths file {url}"))?;
                json::parse_jsonpaths(&body).with_context(|| format!("JSONPaths file {url}"))?
            }
        };
        let paths = paths.unwrap_or_else(|| json::auto_paths(cols));
        if paths.len() != cols.len() {
            bail!(
                "the JSONPaths file has {} expressions for {} columns: each JSONPath expression corresponds to one column of the table or column list",
                paths.len(),
                cols.len()
            );
        }
        Ok(Some(paths))
    }

    /// The target's columns in the statement's order, with their PostgreSQL types.
    fn target_columns(&mut self, stmt: &CopyStatement) -> Result<Vec<Col>> {
        let rows = self.pg.client.query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&stmt.table],
        )?;
        if rows.is_empty() {
            bail!("relation {} does not exist", stmt.table);
        }
        let all: Vec<Col> = rows
            .iter()
            .map(|r| Col::new(r.get(0), r.get::<_, String>(1)))
            .collect::<Result<_>>()?;
        if stmt.columns.is_empty() {
            return Ok(all);
        }
        stmt.columns
            .iter()
            .map(|n| {
                all.iter()
                    .find(|c| &c.name == n)
                    .cloned()
                    .ok_or_else(|| anyhow!("column {n} of {} does not exist", stmt.table))
            })
            .collect()
    }

    /// The manifest and the objects it lists, decompressed, with their URLs.
    fn fetch(&self, stmt: &CopyStatement) -> Result<Vec<(String, Vec<u8>)>> {
        let manifest = self.get(stmt, &stmt.from)?;
        let m: Manifest = serde_json::from_slice(&manifest)
            .with_context(|| format!("manifest {} is not a COPY manifest", stmt.from))?;
        let mut out = Vec::new();
        for e in m.entries {
            let body = match self.get(stmt, &e.url) {
                Ok(b) => b,
                Err(_) if !e.mandatory => continue,
                Err(err) => {
                    return Err(err.context(format!("mandatory file {} of the manifest", e.url)))
                }
            };
            let plain = decompress(&body, stmt.compression)
                .with_context(|| format!("decompressing {}", e.url))?;
            out.push((e.url, plain));
        }
        Ok(out)
    }

    /// Reads `s3://bucket/key` with the statement's credentials.
    fn get(&self, stmt: &CopyStatement, url: &str) -> Result<Vec<u8>> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow!("{url} is not an s3:// URL"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| anyhow!("{url} names no object"))?;
        let (id, secret) = match &stmt.keys {
            Some(k) => k.clone(),
            None => self.cluster.role_keys.clone(),
        };
        let session_token = stmt
            .keys
            .as_ref()
            .and(stmt.session_token.clone())
            .map(Secret::new);
        let store = S3Store::new(&ArchiveLocation::S3 {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: Some(self.cluster.s3_endpoint.clone()),
            region: self.cluster.s3_region.clone(),
            path_style: true,
            access_key_id: Some(id),
            secret_access_key: Some(Secret::new(secret)),
            session_token,
            chain: AwsChain::default(),
        })?;
        let mut body = Vec::new();
        store.get_into(key, &mut body)?;
        Ok(body)
    }

    /// One bad line, committed at once (outside the session's transaction): a row of
    /// `sys_load_error_detail`, and on a provisioned cluster one of `stl_load_errors`.
    fn log_error(&mut self, url: &str, rec: &Record, e: &LineError, cols: &[Col]) -> Result<()> {
        let sys = quote_ident(&self.cluster.system_schema);
        let col = cols.iter().find(|c| c.name == e.column);
        self.log.execute(
            &format!(
                "INSERT INTO {sys}.sys_load_error_detail (query_id, file_name, line_number, column_name, column_type, column_length, error_code, error_message) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &self.sys_id,
                &cut(url, 256),
                &(rec.line as i64),
                &cut(&e.column, 127),
                &col.map(|c| c.ty.redshift_name()).unwrap_or_default(),
                &col.and_then(|c| c.ty.length()).unwrap_or_default(),
                &e.code,
                &cut(&e.reason, 512),
            ],
        )?;
        if self.cluster.serverless {
            return Ok(());
        }
        self.log.execute(
            &format!(
                "INSERT INTO {sys}.stl_load_errors (query, filename, line_number, colname, raw_line, raw_field_value, err_code, err_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &(self.stl_id as i32),
                &cut(url, 256),
                &(rec.line as i64),
                &cut(&e.column, 127),
                // raw_line is character(1024), "Multibyte characters in the load data are
                // replaced with a period": https://docs.aws.amazon.com/redshift/latest/dg/r_STL_LOAD_ERRORS.html
                &cut(&single_byte(&rec.raw), 1024),
                &cut(&printable(&e.value), 1024),
                &e.code,
                &cut(&e.reason, 100),
            ],
        )?;
        Ok(())
    }
}

impl SqlSession for StandIn {
    fn describe(&self) -> String {
        self.pg.describe()
    }
    fn run_in_transaction(&mut self, stmts: &[String]) -> Result<()> {
        self.statement("BEGIN")?;
        let r = stmts.iter().try_for_each(|s| self.statement(s));
        match r {
            Ok(()) => self.statement("COMMIT"),
            Err(e) => {
                let _ = self.statement("ROLLBACK");
                Err(e)
            }
        }
    }
    fn execute(&mut self, sql: &str) -> Result<()> {
        self.statement(sql)
    }
    fn query_i64(&mut self, sql: &str) -> Result<Option<i64>> {
        let s = self.prepare(sql)?;
        self.pg.query_i64(&s)
    }
    fn table_exists(&mut self, table: &str) -> Result<bool> {
        self.pg.table_exists(table)
    }
    fn query_text(&mut self, sql: &str) -> Result<(Vec<String>, Vec<Vec<Option<String>>>)> {
        let s = self.prepare(sql)?;
        self.pg.query_text(&s)
    }
}

/// A string cut to at most `n` bytes (at a character boundary), as Redshift's char(n) keeps it.
fn cut(s: &str, n: usize) -> String {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Bytes as `stl_load_errors.raw_line` shows them: each multibyte character (and each byte
/// that is not UTF-8, or NUL) as one `.`.
fn single_byte(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_ascii() && c != '\0' { c } else { '.' })
        .collect()
}

/// Bytes as text PostgreSQL can store (invalid UTF-8 and NUL replaced).
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\0', "\u{fffd}")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    entries: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    url: String,
    #[serde(default)]
    mandatory: bool,
    /// Read and not checked: Redshift needs content_length for columnar formats only.
    #[serde(default)]
    #[allow(dead_code)]
    meta: Option<serde_json::Value>,
}

fn decompress(body: &[u8], c: Option<&'static str>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match c {
        None => out.extend_from_slice(body),
        Some("GZIP") => {
            flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out)?;
        }
        Some("ZSTD") => {
            zstd::stream::read::Decoder::new(body)?.read_to_end(&mut out)?;
        }
        Some(other) => bail!("compression {other} is not modelled"),
    }
    Ok(out)
}

/// A target column as the stand-in checks it.
#[derive(Debug, Clone)]
struct Col {
    name: String,
    ty: ColType,
}

#[derive(Debug, Clone, Copy)]
enum ColType {
    Bigint,
    Integer,
    Timestamp,
    /// varchar(n): n bytes.
    Varchar(usize),
    Double,
    Boolean,
    Date,
    /// SUPER, kept as jsonb (https://docs.aws.amazon.com/redshift/latest/dg/r_SUPER_type.html).
    Super,
}

impl ColType {
    /// The type's name as the error views show it.
    fn redshift_name(self) -> String {
        match self {
            ColType::Bigint => "int8",
            ColType::Integer => "int4",
            ColType::Timestamp => "timestamp",
            ColType::Varchar(_) => "varchar",
            ColType::Double => "float8",
            ColType::Boolean => "bool",
            ColType::Date => "date",
            ColType::Super => "super",
        }
        .into()
    }

    fn length(self) -> Option<String> {
        match self {
            ColType::Varchar(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

impl StandInCluster {
    /// The view COPY's failure message points to.
    pub fn error_view(&self) -> &'static str {
        if self.serverless {
            "sys_load_error_detail"
        } else {
            "stl_load_errors"
        }
    }
}

impl Col {
    fn new(name: String, ty: String) -> Result<Col> {
        let t = match ty.as_str() {
            "bigint" => ColType::Bigint,
            "integer" => ColType::Integer,
            "timestamp without time zone" => ColType::Timestamp,
            "double precision" => ColType::Double,
            "boolean" => ColType::Boolean,
            "date" => ColType::Date,
            "jsonb" => ColType::Super,
            v if v.starts_with("character varying(") => ColType::Varchar(
                v["character varying(".len()..v.len() - 1]
                    .parse()
                    .with_context(|| format!("column type {v}"))?,
            ),
            other => {
                bail!("Redshift stand-in: column {name} has type {other}, which it does not model")
            }
        };
        Ok(Col { name, ty: t })
    }
}

/// The parts of a COPY statement the stand-in understands.
#[derive(Debug, Default, Clone)]
pub struct CopyStatement {
    /// As written (quoted identifiers kept), for PostgreSQL.
    pub table: String,
    pub columns: Vec<String>,
    pub from: String,
    /// ACCESS_KEY_ID and SECRET_ACCESS_KEY; None with IAM_ROLE.
    pub keys: Option<(String, String)>,
    /// SESSION_TOKEN, with temporary keys.
    pub session_token: Option<String>,
    /// The role's ARN, or `default` (the keyword).
    pub iam_role: Option<String>,
    pub manifest: bool,
    pub delimiter: u8,
    pub escape: bool,
    pub compression: Option<&'static str>,
    pub region: Option<String>,
    /// A chrono format converted from TIMEFORMAT.
    pub timeformat: Option<String>,
    pub null_as: Option<String>,
    pub max_error: u64,
    /// `FORMAT [AS] JSON '...'`: the data is JSON, its columns found as this says.
    pub json: Option<json::JsonSource>,
    /// A chrono format converted from DATEFORMAT.
    pub dateformat: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Str(String),
    Num(u64),
    Punct(char),
}

/// Tokens of a statement, string literals read as Redshift does (`''` and backslash escapes).
fn tokenize(sql: &str) -> Result<Vec<Tok>> {
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => bail!("unterminated string literal"),
                    Some('\'') if b.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        let n = *b.get(i + 1).ok_or_else(|| anyhow!("unterminated escape"))?;
                        s.push(match n {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            other => other,
                        });
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => bail!("unterminated quoted identifier"),
                    Some('"') if b.get(i + 1) == Some(&'"') => {
                        s.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Quoted(s));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Tok::Num(b[start..i].iter().collect::<String>().parse()?));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(Tok::Word(b[start..i].iter().collect()));
        } else if "(),.;=".contains(c) {
            out.push(Tok::Punct(c));
            i += 1;
        } else {
            bail!("unexpected character {c:?}");
        }
    }
    Ok(out)
}

/// Parses the COPY statements the Redshift dialect sends; anything else is an error.
pub fn parse_copy(sql: &str) -> Result<CopyStatement> {
    parse_tokens(tokenize(sql)?).with_context(|| {
        format!(
            "Redshift stand-in: COPY it does not understand: {}",
            first_line(sql)
        )
    })
}

type Toks = std::iter::Peekable<std::vec::IntoIter<Tok>>;

fn word(tok: Option<Tok>) -> Result<String> {
    match tok {
        Some(Tok::Word(w)) => Ok(w.to_uppercase()),
        other => Err(anyhow!("expected a keyword, found {other:?}")),
    }
}

/// An identifier: (as PostgreSQL is to be given it, its name). A reserved word is one only
/// quoted (https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html); quoted or not,
/// ASCII letters fold to lower case (https://docs.aws.amazon.com/redshift/latest/dg/r_names.html).
fn ident(tok: Option<Tok>) -> Result<(String, String)> {
    match tok {
        Some(Tok::Word(w)) if RESERVED.contains(&w.to_ascii_uppercase().as_str()) => {
            Err(reserved_error(&w, &w))
        }
        Some(Tok::Word(w)) => Ok((w.to_lowercase(), w.to_lowercase())),
        Some(Tok::Quoted(q)) => {
            let q = q.to_ascii_lowercase();
            Ok((quote_ident(&q), q))
        }
        other => Err(anyhow!("expected an identifier, found {other:?}")),
    }
}

fn string(tok: Option<Tok>) -> Result<String> {
    match tok {
        Some(Tok::Str(s)) => Ok(s),
        other => Err(anyhow!("expected a string literal, found {other:?}")),
    }
}

/// `COPY table [(columns)] FROM 'url'`.
fn parse_head(t: &mut Toks, st: &mut CopyStatement) -> Result<()> {
    if word(t.next())? != "COPY" {
        bail!("not a COPY");
    }
    st.table = ident(t.next())?.0;
    if t.peek() == Some(&Tok::Punct('.')) {
        t.next();
        st.table = format!("{}.{}", st.table, ident(t.next())?.0);
    }
    if t.peek() == Some(&Tok::Punct('(')) {
        t.next();
        loop {
            st.columns.push(ident(t.next())?.1);
            match t.next() {
                Some(Tok::Punct(',')) => continue,
                Some(Tok::Punct(')')) => break,
                other => bail!("column list: unexpected {other:?}"),
            }
        }
    }
    if word(t.next())? != "FROM" {
        bail!("expected FROM");
    }
    st.from = string(t.next())?;
    Ok(())
}

/// One option and its value; an option the stand-in does not model is an error.
fn parse_option(
    kw: &str,
    t: &mut Toks,
    st: &mut CopyStatement,
    keys: &mut BTreeMap<&'static str, String>,
) -> Result<()> {
    // `[AS]` is optional before these options' values.
    if matches!(
        kw,
        "DELIMITER"
            | "REGION"
            | "TIMEFORMAT"
            | "DATEFORMAT"
            | "NULL"
            | "MAXERROR"
            | "FORMAT"
            | "JSON"
    ) && matches!(t.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("AS"))
    {
        t.next();
    }
    match kw {
        // https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-authorization.html:
        // IAM_ROLE { default | 'arn:aws:iam::<AWS account-id>:role/<role-name>' }
        "IAM_ROLE" => {
            st.iam_role = Some(match t.next() {
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("default") => "default".into(),
                Some(Tok::Str(arn)) if is_role_arn(&arn) => arn,
                other => bail!("IAM_ROLE takes default or a role ARN 'arn:aws:iam::<account>:role/<name>', not {other:?}"),
            })
        }
        "ACCESS_KEY_ID" => {
            keys.insert("id", string(t.next())?);
        }
        "SECRET_ACCESS_KEY" => {
            keys.insert("secret", string(t.next())?);
        }
        "SESSION_TOKEN" => {
            keys.insert("token", string(t.next())?);
        }
        "MANIFEST" => st.manifest = true,
        "ESCAPE" => st.escape = true,
        "GZIP" => st.compression = Some("GZIP"),
        "ZSTD" => st.compression = Some("ZSTD"),
        "DELIMITER" => {
            let d = string(t.next())?;
            if d.len() != 1 {
                bail!("DELIMITER must be one single-byte character, not {d:?}");
            }
            st.delimiter = d.as_bytes()[0];
        }
        "REGION" => st.region = Some(string(t.next())?),
        "TIMEFORMAT" => st.timeformat = Some(timeformat(&string(t.next())?)?),
        "DATEFORMAT" => st.dateformat = Some(timeformat(&string(t.next())?)?),
        // https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html:
        // FORMAT [AS] JSON [AS] 'json_option' (the FORMAT keyword is optional); CSV, AVRO,
        // FIXEDWIDTH, PARQUET and ORC are not modelled.
        "FORMAT" => match word(t.next())?.as_str() {
            "JSON" => parse_option("JSON", t, st, keys)?,
            other => bail!("FORMAT {other} is not modelled by the stand-in"),
        },
        "JSON" => st.json = Some(json::json_option(&string(t.next())?)?),
        "NULL" => st.null_as = Some(string(t.next())?),
        "MAXERROR" => match t.next() {
            Some(Tok::Num(n)) if n <= 100_000 => st.max_error = n,
            other => bail!("MAXERROR takes a number up to 100000, not {other:?}"),
        },
        // Performance options with no effect on what is loaded.
        "COMPUPDATE" | "STATUPDATE" => match word(t.next())?.as_str() {
            "OFF" | "ON" | "TRUE" | "FALSE" => {}
            other => bail!("{kw} {other}"),
        },
        other => bail!("option {other} is not modelled by the stand-in"),
    }
    Ok(())
}

fn parse_tokens(toks: Vec<Tok>) -> Result<CopyStatement> {
    let mut t = toks.into_iter().peekable();
    let mut st = CopyStatement {
        delimiter: b'|',
        ..Default::default()
    };
    parse_head(&mut t, &mut st)?;
    let mut seen = std::collections::HashSet::new();
    let mut keys = BTreeMap::new();
    while let Some(tok) = t.next() {
        if tok == Tok::Punct(';') {
            if let Some(more) = t.next() {
                bail!("text after the statement: {more:?}");
            }
            break;
        }
        let kw = word(Some(tok))?;
        if !seen.insert(kw.clone()) {
            bail!("option {kw} given twice");
        }
        parse_option(&kw, &mut t, &mut st, &mut keys)?;
    }
    if seen.contains("GZIP") && seen.contains("ZSTD") {
        bail!("GZIP and ZSTD together");
    }
    if seen.contains("FORMAT") && seen.contains("JSON") {
        bail!("JSON given twice (FORMAT AS JSON and JSON)");
    }
    // "The following options aren't supported with JSON: CSV, DELIMITER, ESCAPE, FILLRECORD,
    // FIXEDWIDTH, IGNOREBLANKLINES, NULL AS, READRATIO, REMOVEQUOTES"
    // (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json);
    // the others are refused as unmodelled options already.
    if st.json.is_some() {
        if let Some(o) = ["DELIMITER", "ESCAPE", "NULL"]
            .iter()
            .find(|o| seen.contains(**o))
        {
            bail!("{o} is not supported with JSON");
        }
    }
    if !st.manifest {
        bail!("the stand-in loads only from a manifest (MANIFEST missing)");
    }
    // The same page: with IAM_ROLE, no ACCESS_KEY_ID, SECRET_ACCESS_KEY or SESSION_TOKEN; a
    // SESSION_TOKEN needs ACCESS_KEY_ID and SECRET_ACCESS_KEY.
    st.session_token = keys.remove("token");
    st.keys = match (keys.remove("id"), keys.remove("secret"), &st.iam_role) {
        (Some(i), Some(s), None) => Some((i, s)),
        (None, None, Some(_)) if st.session_token.is_none() => None,
        _ => bail!("credentials: IAM_ROLE, or ACCESS_KEY_ID with SECRET_ACCESS_KEY (and SESSION_TOKEN for temporary keys)"),
    };
    Ok(st)
}

/// `arn:<partition>:iam::<account id>:role/<name>`.
fn is_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && !account.is_empty()
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|n| !n.is_empty()))
}

/// Redshift TIMEFORMAT to a chrono format, for the tokens the dialect writes.
fn timeformat(f: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = f;
    let tokens = [
        ("YYYY", "%Y"),
        ("HH24", "%H"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("MI", "%M"),
        ("SS", "%S"),
    ];
    'outer: while !rest.is_empty() {
        for (rs, ch) in tokens {
            if let Some(r) = rest.strip_prefix(rs) {
                out += ch;
                rest = r;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        if c.is_ascii_alphanumeric() {
            bail!("TIMEFORMAT {f:?}: {rest:?} is not modelled by the stand-in");
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

/// One input record: its line number, its raw bytes and its fields (escapes removed).
struct Record {
    line: u64,
    raw: Vec<u8>,
    fields: Vec<Vec<u8>>,
}

/// Splits input into records at unescaped newlines and fields at unescaped delimiters; with
/// ESCAPE a backslash makes the next byte literal (newline, delimiter and backslash included).
fn split_records(data: &[u8], delim: u8, escape: bool) -> Vec<Record> {
    let mut out = Vec::new();
    let (mut line, mut start_line) = (1u64, 1u64);
    let mut raw = Vec::new();
    let mut fields = vec![Vec::new()];
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if escape && b == b'\\' && i + 1 < data.len() {
            let n = data[i + 1];
            raw.extend_from_slice(&[b, n]);
            fields.last_mut().expect("one").push(n);
            if n == b'\n' {
                line += 1;
            }
            i += 2;
            continue;
        }
        i += 1;
        if b == b'\n' {
            out.push(Record {
                line: start_line,
                raw: std::mem::take(&mut raw),
                fields: std::mem::replace(&mut fields, vec![Vec::new()]),
            });
            line += 1;
            start_line = line;
            continue;
        }
        raw.push(b);
        if b == delim {
            fields.push(Vec::new());
        } else {
            fields.last_mut().expect("one").push(b);
        }
    }
    if !raw.is_empty() {
        out.push(Record {
            line: start_line,
            raw,
            fields,
        });
    }
    out
}

/// Why a line was not loaded, as `stl_load_errors` says it.
struct LineError {
    column: String,
    value: Vec<u8>,
    code: i32,
    reason: String,
}

/// Checks a record against the columns: the field count, then each field by its column's type.
fn check_record(rec: &Record, cols: &[Col], st: &CopyStatement) -> Result<(), LineError> {
    let n = rec.fields.len();
    if n < cols.len() {
        return Err(LineError {
            column: cols[n.min(cols.len() - 1)].name.clone(),
            value: Vec::new(),
            code: 1214,
            reason: "Delimiter not found".into(),
        });
    }
    // The strict reading: a field with no column in the column list fails, an empty one after
    // a final delimiter included, unless COPY is told about it (a column for it).
    // https://docs.aws.amazon.com/redshift/latest/dg/c_loading_default_values.html ("If a field
    // in the data file does not have a corresponding column in the column list, the COPY
    // command fails"); 1202: https://docs.aws.amazon.com/redshift/latest/dg/r_Load_Error_Reference.html
    if n > cols.len() {
        return Err(LineError {
            column: String::new(),
            value: Vec::new(),
            code: 1202,
            reason: "Extra column(s) found".into(),
        });
    }
    for (c, f) in cols.iter().zip(&rec.fields) {
        check_field(c, f, st).map_err(|(code, reason)| LineError {
            column: c.name.clone(),
            value: f.clone(),
            code,
            reason,
        })?;
    }
    Ok(())
}

/// Whether COPY loads this field as NULL: the NULL AS string, or an empty field of a column
/// that is not CHAR/VARCHAR. https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-conversion.html
/// (BLANKSASNULL: "Empty fields for other data types, such as INT, are always loaded with
/// NULL"; EMPTYASNULL applies to CHAR and VARCHAR only, and is not given).
fn loads_as_null(c: &Col, f: &[u8], st: &CopyStatement) -> bool {
    st.null_as.as_deref().map(str::as_bytes) == Some(f)
        || (f.is_empty() && !matches!(c.ty, ColType::Varchar(_)))
}

fn check_field(c: &Col, f: &[u8], st: &CopyStatement) -> Result<(), (i32, String)> {
    if loads_as_null(c, f, st) {
        return Ok(());
    }
    let text = std::str::from_utf8(f).map_err(|_| {
        (
            1220,
            "String contains invalid or unsupported UTF8 codepoints".to_string(),
        )
    });
    match c.ty {
        ColType::Bigint => text?
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| (1207, "Invalid digit, Value, Type: Long".into())),
        ColType::Integer => text?
            .parse::<i32>()
            .map(|_| ())
            .map_err(|_| (1207, "Invalid digit, Value, Type: Integer".into())),
        ColType::Timestamp => {
            let fmt = st.timeformat.as_deref().unwrap_or("%Y-%m-%d %H:%M:%S");
            // "The seconds (SS) field also supports fractional seconds up to a microsecond
            // level of detail." https://docs.aws.amazon.com/redshift/latest/dg/r_DATEFORMAT_and_TIMEFORMAT_strings.html
            let fmt = fmt.replace("%S", "%S%.f");
            let t = text?;
            let frac = t.rsplit_once('.').map_or(0, |(_, f)| f.len());
            if frac > 6 {
                return Err((1206, "Invalid timestamp format or value".into()));
            }
            chrono::NaiveDateTime::parse_from_str(t, &fmt)
                .map(|_| ())
                .map_err(|_| (1206, "Invalid timestamp format or value".into()))
        }
        ColType::Varchar(n) => {
            let t = text?;
            // Without NULL AS '\0', a null terminator makes COPY fail:
            // https://docs.aws.amazon.com/redshift/latest/dg/t_preparing-input-data.html
            if t.contains('\0') {
                return Err((
                    1220,
                    "NUL byte (null terminator) without NULL AS '\\0'".into(),
                ));
            }
            if t.len() > n {
                return Err((1204, "String length exceeds DDL length".into()));
            }
            Ok(())
        }
        ColType::Double => text?
            .parse::<f64>()
            .map(|_| ())
            .map_err(|_| (1208, "Invalid float value, Type: Double".into())),
        // A part of the input literals the Boolean type page lists
        // (https://docs.aws.amazon.com/redshift/latest/dg/r_Boolean_type.html); others refused.
        ColType::Boolean => match text?.to_ascii_lowercase().as_str() {
            "true" | "t" | "false" | "f" => Ok(()),
            _ => Err((1210, "Invalid boolean value".into())),
        },
        // The default date format is YYYY-MM-DD (r_DATEFORMAT_and_TIMEFORMAT_strings).
        ColType::Date => {
            let fmt = st.dateformat.as_deref().unwrap_or("%Y-%m-%d");
            chrono::NaiveDate::parse_from_str(text?, fmt)
                .map(|_| ())
                .map_err(|_| {
                    (
                        1205,
                        "Invalid Date Format - length must be 10 or more".into(),
                    )
                })
        }
        // A SUPER field of text data: "Amazon Redshift represents SUPER columns in text and
        // CSV formats as single-line JSON objects" (https://docs.aws.amazon.com/redshift/latest/dg/copy_json.html).
        ColType::Super => serde_json::from_str::<serde_json::Value>(text?)
            .map(|_| ())
            .map_err(|_| (1224, "Invalid JSON for the SUPER data type".into())),
    }
}

/// A data file's rows, each a PostgreSQL text-COPY row or its load error, with the record the
/// error views show: delimited lines, or (with `paths`) JSON objects and arrays. Err: the COPY
/// fails (an object over 4 MB, an array index out of range).
type Rows = Vec<(Record, std::result::Result<Vec<u8>, LineError>)>;

fn rows_of(
    data: &[u8],
    cols: &[Col],
    st: &CopyStatement,
    paths: Option<&[Vec<json::Step>]>,
) -> Result<Rows> {
    let Some(paths) = paths else {
        return Ok(split_records(data, st.delimiter, st.escape)
            .into_iter()
            .map(|rec| {
                let row = check_record(&rec, cols, st).map(|()| {
                    let mut out = Vec::new();
                    encode_row(&rec, cols, st, &mut out);
                    out
                });
                (rec, row)
            })
            .collect());
    };
    let mut out = Vec::new();
    for item in json::items(data)? {
        let row = json::row(&item, paths, cols, st)?.map(|cells| {
            let mut row = Vec::new();
            for (i, c) in cells.iter().enumerate() {
                if i > 0 {
                    row.push(b'\t');
                }
                match c {
                    None => row.extend_from_slice(b"\\N"),
                    Some(v) => pg_escape_into(v.as_bytes(), &mut row),
                }
            }
            row.push(b'\n');
            row
        });
        out.push((json::record_of(&item), row));
    }
    Ok(out)
}

/// Appends a checked record as a PostgreSQL text-COPY row.
fn encode_row(rec: &Record, cols: &[Col], st: &CopyStatement, out: &mut Vec<u8>) {
    for (i, (c, f)) in cols.iter().zip(&rec.fields).enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        if loads_as_null(c, f, st) {
            out.extend_from_slice(b"\\N");
        } else {
            pg_escape_into(f, out);
        }
    }
    out.push(b'\n');
}

// ---------------------------------------------------------------------------------------------
// The statement checker: Redshift's rules for identifiers, leader-node-only functions and
// TEXT, applied to every statement before PostgreSQL sees it, each with the page it models.
// ---------------------------------------------------------------------------------------------

/// Amazon Redshift's reserved words, the whole list as the page gives it: usable as identifiers
/// only quoted. <https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html>
pub const RESERVED: &[&str] = &[
    "AES128",
    "AES256",
    "ALL",
    "ALLOWOVERWRITE",
    "ANALYSE",
    "ANALYZE",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "AUTHORIZATION",
    "AZ64",
    "BACKUP",
    "BETWEEN",
    "BINARY",
    "BLANKSASNULL",
    "BOTH",
    "BYTEDICT",
    "BZIP2",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "CONSTRAINT",
    "CREATE",
    "CREDENTIALS",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "CURRENT_USER_ID",
    "DEFAULT",
    "DEFERRABLE",
    "DEFLATE",
    "DEFRAG",
    "DELTA",
    "DELTA32K",
    "DESC",
    "DISABLE",
    "DISTINCT",
    "DO",
    "ELSE",
    "EMPTYASNULL",
    "ENABLE",
    "ENCODE",
    "ENCRYPT",
    "ENCRYPTION",
    "END",
    "EXCEPT",
    "EXPLICIT",
    "FALSE",
    "FOR",
    "FOREIGN",
    "FREEZE",
    "FROM",
    "FULL",
    "GLOBALDICT256",
    "GLOBALDICT64K",
    "GRANT",
    "GROUP",
    "GZIP",
    "HAVING",
    "IDENTITY",
    "IGNORE",
    "ILIKE",
    "IN",
    "INITIALLY",
    "INNER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "LEADING",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "LUN",
    "LUNS",
    "LZO",
    "LZOP",
    "MINUS",
    "MOSTLY16",
    "MOSTLY32",
    "MOSTLY8",
    "NATURAL",
    "NEW",
    "NOT",
    "NOTNULL",
    "NULL",
    "NULLS",
    "OFF",
    "OFFLINE",
    "OFFSET",
    "OID",
    "OLD",
    "ON",
    "ONLY",
    "OPEN",
    "OR",
    "ORDER",
    "OUTER",
    "OVERLAPS",
    "PARALLEL",
    "PARTITION",
    "PERCENT",
    "PERMISSIONS",
    "PIVOT",
    "PLACING",
    "PRIMARY",
    "RAW",
    "READRATIO",
    "RECOVER",
    "REFERENCES",
    "REJECTLOG",
    "RESORT",
    "RESPECT",
    "RESTORE",
    "RIGHT",
    "SELECT",
    "SESSION_USER",
    "SIMILAR",
    "SNAPSHOT",
    "SOME",
    "SYSDATE",
    "SYSTEM",
    "TABLE",
    "TAG",
    "TDES",
    "TEXT255",
    "TEXT32K",
    "THEN",
    "TIMESTAMP",
    "TO",
    "TOP",
    "TRAILING",
    "TRUE",
    "TRUNCATECOLUMNS",
    "UNION",
    "UNIQUE",
    "UNNEST",
    "UNPIVOT",
    "USER",
    "USING",
    "VERBOSE",
    "WALLET",
    "WHEN",
    "WHERE",
    "WITH",
    "WITHOUT",
];

/// The reserved words the stand-in reads as SQL syntax (keywords, type names, niladic
/// functions) where they stand outside an identifier's place. Any other reserved word written
/// unquoted can only be an identifier, and is refused wherever it stands; these are refused in
/// an identifier's place: next to a `.`, as an alias after `AS`, as a column of a column list.
const SYNTAX: &[&str] = &[
    "ALL",
    "AND",
    "ANY",
    "AS",
    "ASC",
    "BETWEEN",
    "BOTH",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "CONSTRAINT",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "DEFAULT",
    "DEFERRABLE",
    "DESC",
    "DISTINCT",
    "ELSE",
    "END",
    "EXCEPT",
    "FALSE",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "GRANT",
    "GROUP",
    "HAVING",
    "ILIKE",
    "IN",
    "INITIALLY",
    "INNER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "LEADING",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "MINUS",
    "NATURAL",
    "NOT",
    "NOTNULL",
    "NULL",
    "NULLS",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVERLAPS",
    "PARTITION",
    "PRIMARY",
    "REFERENCES",
    "RIGHT",
    "SELECT",
    "SESSION_USER",
    "SIMILAR",
    "SOME",
    "SYSDATE",
    "TABLE",
    "THEN",
    "TIMESTAMP",
    "TO",
    "TOP",
    "TRAILING",
    "TRUE",
    "UNION",
    "UNIQUE",
    "USING",
    "WHEN",
    "WHERE",
    "WITH",
    "WITHOUT",
];

/// Words that open an element of a CREATE TABLE list other than a column definition.
const TABLE_ELEMENT: &[&str] = &[
    "LIKE",
    "PRIMARY",
    "UNIQUE",
    "CONSTRAINT",
    "CHECK",
    "FOREIGN",
];

/// Leader-node-only functions: an error in a statement that references user-created tables or
/// system tables (STL/STV/SVL/SVV); allowed where only catalog tables (PG_ prefix) or no
/// tables are referenced. The page's list, the deprecated date and string functions included.
/// <https://docs.aws.amazon.com/redshift/latest/dg/c_SQL_functions_leader_node_only.html>
pub const LEADER_ONLY: &[&str] = &[
    "CURRENT_SCHEMA",
    "CURRENT_SCHEMAS",
    "HAS_DATABASE_PRIVILEGE",
    "HAS_SCHEMA_PRIVILEGE",
    "HAS_TABLE_PRIVILEGE",
    "SUBSTR",
    "FACTORIAL",
    "LOG",
    "AGE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "LOCALTIME",
    "ISFINITE",
    "NOW",
    "GETBIT",
    "GET_BYTE",
    "SET_BIT",
    "SET_BYTE",
    "TO_ASCII",
];

/// The PostgreSQL domain a Redshift TEXT becomes here: TEXT is converted to VARCHAR(256), and
/// VARCHAR lengths are bytes. <https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html>
pub const TEXT_DOMAIN: &str = "redshift_text";

/// One lexical piece of a statement, with its text as written (the pieces put back together
/// are the statement).
#[derive(Debug, Clone, PartialEq)]
enum Lex {
    Space(String),
    Word(String),
    Quoted(String),
    Str(String),
    Other(String),
}

impl Lex {
    fn text(&self) -> &str {
        match self {
            Lex::Space(s) | Lex::Word(s) | Lex::Quoted(s) | Lex::Str(s) | Lex::Other(s) => s,
        }
    }
    fn is(&self, kw: &str) -> bool {
        matches!(self, Lex::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// Splits a statement into pieces; string literals are read as Redshift reads them (a
/// backslash escapes the next character, `''` is a quote).
fn lex(sql: &str) -> Result<Vec<Lex>> {
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let take = |from: usize, to: usize| b[from..to].iter().collect::<String>();
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_whitespace() {
            while i < b.len() && b[i].is_whitespace() {
                i += 1;
            }
            out.push(Lex::Space(take(start, i)));
        } else if c == '-' && b.get(i + 1) == Some(&'-') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            out.push(Lex::Space(take(start, i)));
        } else if c == '\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => bail!("unterminated string literal"),
                    Some('\'') if b.get(i + 1) == Some(&'\'') => i += 2,
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => i += 2,
                    Some(_) => i += 1,
                }
            }
            out.push(Lex::Str(take(start, i)));
        } else if c == '"' {
            i += 1;
            loop {
                match b.get(i) {
                    None => bail!("unterminated quoted identifier"),
                    Some('"') if b.get(i + 1) == Some(&'"') => i += 2,
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            out.push(Lex::Quoted(take(start, i)));
        } else if c.is_alphabetic() || c == '_' {
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(Lex::Word(take(start, i)));
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
            out.push(Lex::Other(take(start, i)));
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            i += 2;
            out.push(Lex::Other("::".into()));
        } else {
            i += 1;
            out.push(Lex::Other(c.to_string()));
        }
    }
    Ok(out)
}

/// Redshift's refusal of a reserved word written as an identifier, as its parser says it.
fn reserved_error(word: &str, sql: &str) -> anyhow::Error {
    anyhow!(
        "Redshift stand-in: syntax error at or near \"{}\" (42601): {} is a Redshift reserved word, an identifier only when quoted (https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html): {}",
        word.to_lowercase(),
        word.to_uppercase(),
        first_line(sql)
    )
}

/// Where a statement's column list would open: the piece after the table name that follows
/// `CREATE [TEMP] TABLE [IF NOT EXISTS]` or `INSERT INTO`.
fn column_list_at(toks: &[Lex], sig: &[usize]) -> Option<usize> {
    let at = |k: usize| sig.get(k).map(|&i| &toks[i]);
    let mut k = match (at(0), at(1)) {
        (Some(a), Some(b)) if a.is("INSERT") && b.is("INTO") => 2,
        (Some(a), Some(b)) if a.is("CREATE") && b.is("TABLE") => 2,
        (Some(a), Some(b)) if a.is("CREATE") && (b.is("TEMP") || b.is("TEMPORARY")) => {
            if !at(2)?.is("TABLE") {
                return None;
            }
            3
        }
        _ => return None,
    };
    while at(k)?.is("IF") || at(k)?.is("NOT") || at(k)?.is("EXISTS") {
        k += 1;
    }
    loop {
        if !matches!(at(k)?, Lex::Word(_) | Lex::Quoted(_)) {
            return None;
        }
        if at(k + 1)?.text() != "." {
            return Some(k + 1);
        }
        k += 2;
    }
}

/// Checks a statement against Redshift's rules and rewrites it for PostgreSQL: quoted
/// identifiers folded to lower case, GETDATE()/SYSDATE as PostgreSQL writes them, TEXT as
/// VARCHAR(256) in bytes.
pub fn redshift_sql(sql: &str) -> Result<String> {
    let toks = lex(sql)?;
    // Indices of the pieces that are not blanks or comments.
    let sig: Vec<usize> = (0..toks.len())
        .filter(|&i| !matches!(toks[i], Lex::Space(_)))
        .collect();
    let at = |k: usize| sig.get(k).map(|&i| &toks[i]);
    let upper = |k: usize| match at(k) {
        Some(Lex::Word(w)) => w.to_ascii_uppercase(),
        _ => String::new(),
    };
    let list_at = column_list_at(&toks, &sig);
    let insert = at(0).is_some_and(|t| t.is("INSERT"));
    // For each open parenthesis: the word before it (CAST, ...), and whether it is the
    // statement's column list.
    let mut parens: Vec<(String, bool)> = Vec::new();
    let mut element_start = false;
    let mut leader = None;
    for k in 0..sig.len() {
        let t = at(k).expect("in range");
        match t {
            Lex::Other(p) if p == "(" => {
                let before = if k > 0 { upper(k - 1) } else { String::new() };
                let list = list_at == Some(k);
                parens.push((before, list));
                element_start = list;
                continue;
            }
            Lex::Other(p) if p == ")" => {
                parens.pop();
            }
            Lex::Other(p) if p == "," => {
                element_start = parens.last().is_some_and(|p| p.1);
                continue;
            }
            Lex::Word(w) => {
                let up = w.to_ascii_uppercase();
                if LEADER_ONLY.contains(&up.as_str()) {
                    leader.get_or_insert(up.clone());
                }
                if RESERVED.contains(&up.as_str()) {
                    let syntax = SYNTAX.contains(&up.as_str());
                    let dotted = at(k + 1).is_some_and(|t| t.text() == ".")
                        || (k > 0 && at(k - 1).is_some_and(|t| t.text() == "."));
                    let in_cast = parens.last().is_some_and(|p| p.0 == "CAST");
                    let alias = k > 0
                        && upper(k - 1) == "AS"
                        && !in_cast
                        && !matches!(up.as_str(), "SELECT" | "WITH");
                    let column = element_start && (insert || !TABLE_ELEMENT.contains(&up.as_str()));
                    if !syntax || dotted || alias || column {
                        return Err(reserved_error(w, sql));
                    }
                }
            }
            _ => {}
        }
        element_start = false;
    }
    if let Some(f) = leader {
        if let Some(table) = user_table(&toks, &sig) {
            // https://docs.aws.amazon.com/redshift/latest/dg/c_SQL_functions_leader_node_only.html
            bail!(
                "Redshift stand-in: Specified types or functions (one per INFO message) not supported on Redshift tables. INFO: Function {f} is leader-node only, and the statement references table {table} (https://docs.aws.amazon.com/redshift/latest/dg/c_SQL_functions_leader_node_only.html): {}",
                first_line(sql)
            );
        }
    }
    let mut out = String::with_capacity(sql.len());
    for (k, &i) in sig.iter().enumerate() {
        // The blanks before this piece, as written.
        let from = if k == 0 { 0 } else { sig[k - 1] + 1 };
        toks[from..i].iter().for_each(|t| out.push_str(t.text()));
        let t = &toks[i];
        let prev = if k > 0 { at(k - 1) } else { None };
        let next = at(k + 1);
        match t {
            // Names and identifiers: ASCII letters in standard and delimited identifiers are
            // folded to lower case (enable_case_sensitive_identifier is false by default).
            // https://docs.aws.amazon.com/redshift/latest/dg/r_names.html
            // https://docs.aws.amazon.com/redshift/latest/dg/r_enable_case_sensitive_identifier.html
            Lex::Quoted(q) => out.push_str(&q.to_ascii_lowercase()),
            // SYSDATE: the start of the transaction in the session's zone (UTC by default).
            // https://docs.aws.amazon.com/redshift/latest/dg/r_SYSDATE.html
            Lex::Word(w) if w.eq_ignore_ascii_case("SYSDATE") => out.push_str("LOCALTIMESTAMP"),
            // SUPER, Redshift's type for semistructured data, is jsonb here: a JSON value as
            // it came, objects, arrays, scalars and null alike.
            // https://docs.aws.amazon.com/redshift/latest/dg/r_SUPER_type.html
            Lex::Word(w) if w.eq_ignore_ascii_case("SUPER") => out.push_str("jsonb"),
            // GETDATE() is a function of the system schema (`StandInCluster::install`).
            // TEXT is converted to VARCHAR(256), and VARCHAR lengths count bytes: a value cast
            // to TEXT holds at most 256 bytes.
            // https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html
            Lex::Word(w)
                if w.eq_ignore_ascii_case("TEXT")
                    && (prev.is_some_and(|p| p.text() == "::")
                        || prev.is_some_and(|p| p.is("AS"))
                            && next.is_some_and(|n| n.text() == ")")) =>
            {
                out.push_str(TEXT_DOMAIN)
            }
            _ => out.push_str(t.text()),
        }
    }
    if let Some(&last) = sig.last() {
        toks[last + 1..].iter().for_each(|t| out.push_str(t.text()));
    } else {
        toks.iter().for_each(|t| out.push_str(t.text()));
    }
    Ok(out)
}

/// The first table the statement references that is not a catalog table (`pg_*`,
/// `information_schema`): a user-created or system table.
fn user_table(toks: &[Lex], sig: &[usize]) -> Option<String> {
    let at = |k: usize| sig.get(k).map(|&i| &toks[i]);
    let mut parens: Vec<String> = Vec::new();
    for k in 0..sig.len() {
        let t = at(k)?;
        if t.text() == "(" {
            parens.push(if k > 0 {
                at(k - 1)?.text().to_ascii_uppercase()
            } else {
                String::new()
            });
            continue;
        }
        if t.text() == ")" {
            parens.pop();
            continue;
        }
        let names_table = ["FROM", "JOIN", "INTO", "TABLE", "LOCK", "UPDATE"]
            .iter()
            .any(|kw| t.is(kw));
        // FROM inside EXTRACT(... FROM ...) or TRIM(... FROM ...) names no table.
        let in_function = parens
            .last()
            .is_some_and(|f| matches!(f.as_str(), "EXTRACT" | "TRIM" | "SUBSTRING" | "POSITION"));
        if !names_table || in_function {
            continue;
        }
        let mut j = k + 1;
        while at(j).is_some_and(|t| t.is("IF") || t.is("NOT") || t.is("EXISTS") || t.is("ONLY")) {
            j += 1;
        }
        let mut parts = Vec::new();
        while let Some(Lex::Word(_) | Lex::Quoted(_)) = at(j) {
            parts.push(at(j)?.text().trim_matches('"').to_ascii_lowercase());
            if at(j + 1).map(Lex::text) != Some(".") {
                break;
            }
            j += 2;
        }
        let Some(name) = parts.last() else { continue };
        let catalog = name.starts_with("pg_")
            || parts.len() > 1 && matches!(parts[0].as_str(), "pg_catalog" | "information_schema");
        if !catalog {
            return Some(parts.join("."));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchlayer::archive::Compression;
    use batchlayer::records::{frame_into, Layout, RecordFormat};
    use batchlayer::warehouse::redshift::{copy_sql, jsonpaths_file, CopyGroup, CopySpec, S3Auth};

    #[test]
    fn parses_the_dialects_copy_exactly() {
        let spec = CopySpec {
            archive_url: "s3://b/p".into(),
            region: "eu-west-1".into(),
            auth: S3Auth::Keys {
                access_key_id: "id\\'x".into(),
                secret_access_key: Secret::new("se'cret"),
                session_token: Some(Secret::new("to'ken")),
            },
        };
        let g = CopyGroup {
            compression: Compression::Zstd,
            jobs: vec![0],
            manifest_key: "_copy_manifests/m.json".into(),
            max_error: Some(7),
        };
        let sql = copy_sql(
            "\"batchlayer_staging\"",
            &Layout::tweets(),
            &spec,
            &g,
            false,
        )
        .unwrap();
        let st = parse_copy(&sql).unwrap();
        assert_eq!(st.table, "\"batchlayer_staging\"");
        // The layout's six columns and the trailing field's.
        assert_eq!(st.columns.len(), 7);
        assert_eq!(st.columns[6], "batchlayer_trailing");
        assert_eq!(st.from, "s3://b/p/_copy_manifests/m.json");
        assert_eq!(st.keys, Some(("id\\'x".into(), "se'cret".into())));
        assert_eq!(st.session_token.as_deref(), Some("to'ken"));
        assert_eq!(
            (st.delimiter, st.escape, st.compression, st.max_error),
            (b';', true, Some("ZSTD"), 7)
        );
        assert_eq!(st.timeformat.as_deref(), Some("%Y-%m-%d %H:%M:%S"));
        assert_eq!(st.null_as.as_deref(), Some("None"));
        // One word it does not know, and the statement is refused.
        assert!(parse_copy(&format!("{sql}\nTRUNCATECOLUMNS")).is_err());
        assert!(parse_copy(&sql.replace("MANIFEST\n", "")).is_err());
    }

    /// What PostgreSQL is given: quoted names folded, SYSDATE as LOCALTIMESTAMP, TEXT as the
    /// 256-byte domain; literals, blanks and everything else as written.
    #[test]
    fn statements_are_rewritten_as_redshift_reads_them() {
        let sql = "SELECT \"Key\", 'A\\'\"B\"' AS \"Out\", x::text, CAST(y AS TEXT)\n  FROM \"S\".\"T\" WHERE \"at\" < SYSDATE";
        assert_eq!(
            redshift_sql(sql).unwrap(),
            "SELECT \"key\", 'A\\'\"B\"' AS \"out\", x::redshift_text, CAST(y AS redshift_text)\n  FROM \"s\".\"t\" WHERE \"at\" < LOCALTIMESTAMP"
        );
        for bad in [
            "CREATE TABLE \"s\".\"r\" (\"key\" int, raw int)",
            "INSERT INTO \"s\".\"r\" (\"key\", line, raw) VALUES (1, 2, 3)",
            "SELECT \"x\" AS user FROM \"t\"",
            "SELECT t.partition FROM t",
            "CREATE TABLE t (\"a\" int, offset int)",
        ] {
            let err = redshift_sql(bad).unwrap_err().to_string();
            assert!(err.contains("reserved word"), "{bad}: {err}");
        }
        for good in [
            "CREATE TEMP TABLE \"s\" (LIKE \"x\".\"y\")",
            "CREATE TABLE \"t\" AS\nWITH \"d\" AS (SELECT DISTINCT \"a\" FROM \"x\") SELECT \"a\" FROM \"d\" GROUP BY \"a\"",
            "SELECT CAST(count(*) AS BIGINT) FROM \"t\" ORDER BY 1 DESC LIMIT 5",
            "SELECT max(\"x\") OVER (PARTITION BY \"p\" ORDER BY \"o\" ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) FROM \"t\"",
            "SET statement_timeout TO 0",
        ] {
            assert!(redshift_sql(good).is_ok(), "{good}");
        }
        let err = redshift_sql("INSERT INTO \"t\" (\"at\") SELECT now()").unwrap_err();
        assert!(err.to_string().contains("leader-node only"), "{err}");
        assert!(redshift_sql("SELECT now(), CURRENT_SCHEMA").is_ok());
        assert!(
            redshift_sql("SELECT CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) AS BIGINT)").is_ok()
        );
    }

    /// The authorization forms of copy-parameters-authorization, and what it rules out.
    #[test]
    fn copy_credentials_as_the_authorization_page_gives_them() {
        let head = "COPY t FROM 's3://b/m' MANIFEST ";
        let ok = |creds: &str| parse_copy(&format!("{head}{creds}"));
        let st = ok("IAM_ROLE default").unwrap();
        assert_eq!((st.iam_role.as_deref(), st.keys), (Some("default"), None));
        let st = ok("IAM_ROLE 'arn:aws:iam::123456789012:role/Loader'").unwrap();
        assert_eq!(
            st.iam_role.as_deref(),
            Some("arn:aws:iam::123456789012:role/Loader")
        );
        let st = ok("ACCESS_KEY_ID 'ASIA' SECRET_ACCESS_KEY 's' SESSION_TOKEN 't'").unwrap();
        assert_eq!(
            (st.keys, st.session_token.as_deref()),
            (Some(("ASIA".into(), "s".into())), Some("t"))
        );
        for bad in [
            // The keyword quoted is a string, and not an ARN.
            "IAM_ROLE 'default'",
            "IAM_ROLE 'Loader'",
            "IAM_ROLE 'arn:aws:iam::123456789012:user/Bob'",
            "IAM_ROLE default SESSION_TOKEN 't'",
            "IAM_ROLE default ACCESS_KEY_ID 'a' SECRET_ACCESS_KEY 's'",
            "SESSION_TOKEN 't'",
            "ACCESS_KEY_ID 'a' SESSION_TOKEN 't'",
        ] {
            let err = format!("{:#}", ok(bad).unwrap_err());
            assert!(err.contains("does not understand"), "{bad}: {err}");
        }
    }

    /// The dialect's COPY of staged JSON lines: FORMAT AS JSON with the JSONPaths file, the
    /// TIMEFORMAT and DATEFORMAT of what it stages, no trailing column; the JSONPaths file it
    /// writes is one the stand-in reads. DELIMITER, ESCAPE or NULL AS with JSON are refused.
    #[test]
    fn parses_the_dialects_json_copy_and_jsonpaths_file() {
        let spec = CopySpec {
            archive_url: "s3://b/p".into(),
            region: "eu-west-1".into(),
            auth: S3Auth::IamRole("default".into()),
        };
        let g = CopyGroup {
            compression: Compression::None,
            jobs: vec![0],
            manifest_key: "_copy_manifests/m.json".into(),
            max_error: Some(3),
        };
        let mut l = Layout::tweets();
        l.format = RecordFormat::Json;
        let sql = copy_sql("\"batchlayer_staging\"", &l, &spec, &g, false).unwrap();
        let st = parse_copy(&sql).unwrap();
        assert_eq!(st.columns.len(), 6, "no trailing field");
        assert_eq!(
            st.json,
            Some(json::JsonSource::Paths(
                "s3://b/p/_copy_manifests/m-jsonpaths.json".into()
            ))
        );
        assert_eq!(st.timeformat.as_deref(), Some("%Y-%m-%d %H:%M:%S"));
        assert_eq!(st.dateformat.as_deref(), Some("%Y-%m-%d"));
        assert!(!st.escape && st.null_as.is_none() && st.compression.is_none());
        let paths = json::parse_jsonpaths(jsonpaths_file(&l).as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(paths.len(), 6);
        assert_eq!(paths[1], vec![json::Step::Key("created_at".into())]);
        for extra in ["DELIMITER ';'", "ESCAPE", "NULL AS 'None'"] {
            let err = format!("{:#}", parse_copy(&format!("{sql}\n{extra}")).unwrap_err());
            assert!(err.contains("not supported with JSON"), "{extra}: {err}");
        }
        for other in ["'noshred'", "'auto ignorecase'", "'s4://x'"] {
            let bad = sql.replace("'s3://b/p/_copy_manifests/m-jsonpaths.json'", other);
            assert!(parse_copy(&bad).is_err(), "{other}");
        }
        let auto = sql.replace("'s3://b/p/_copy_manifests/m-jsonpaths.json'", "'auto'");
        assert_eq!(
            parse_copy(&auto).unwrap().json,
            Some(json::JsonSource::Auto)
        );
        let short = sql.replace("FORMAT AS JSON", "JSON");
        assert!(
            parse_copy(&short).unwrap().json.is_some(),
            "JSON without FORMAT"
        );
    }

    /// JSONPaths files and expressions: the documented shape, bracket and dot notation, and
    /// what makes COPY fail.
    #[test]
    fn jsonpaths_files_and_expressions_as_documented() {
        use json::Step::{Index, Key};
        let read = |s: &str| json::parse_jsonpaths(s.as_bytes());
        let bracket = read(r#"{"jsonpaths": ["$['a']['b c'][0]", "$[2]"]}"#)
            .unwrap()
            .unwrap();
        let dot = read(r#" {"jsonpaths": ["$.a.b c[0]", "$[2]"]} "#)
            .unwrap()
            .unwrap();
        let want = vec![
            vec![Key("a".into()), Key("b c".into()), Index(0)],
            vec![Index(2)],
        ];
        assert_eq!((&bracket, &dot), (&want, &want));
        assert_eq!(read(r#"{"paths": ["$.a"]}"#).unwrap(), None, "'auto'");
        for bad in [
            r#"{"jsonpaths": ["$.a", "$['b']"]}"#,
            r#"{"jsonpaths": ["$.a['b']"]}"#,
            r#"{"jsonpaths": ["$.a[*]"]}"#,
            r#"{"jsonpaths": ["$.a[-1]"]}"#,
            r#"{"jsonpaths": ["$..a"]}"#,
            r#"{"jsonpaths": ["$.*"]}"#,
            r#"{"jsonpaths": ["$.a[?(@.b)]"]}"#,
            r#"{"jsonpaths": ["a.b"]}"#,
            r#"{"jsonpaths": ["$['a"]}"#,
            r#"{"jsonpaths": [""]}"#,
            r#"{"jsonpaths": [1]}"#,
            r#"{"jsonpaths": "$.a"}"#,
            r#"{"jsonpaths": ["$.a"], "more": 1}"#,
            r#"["$.a"]"#,
            r#"{"jsonpaths": ["$.a"]} x"#,
            r#"{"jsonpaths": ["$.a"]}{"jsonpaths": ["$.a"]}"#,
            r#"{"jsonpaths": ["$.a"]"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    /// The data's objects and arrays, each numbered by its last line; white space between
    /// them is skipped, anything else is one error; an object over 4 MB fails the COPY.
    #[test]
    fn json_data_is_read_object_by_object() {
        let data = b"{\"a\":1}\n\n{\n \"b\": 2\n}\ngarbage here\n[1, 2] 7\n{\"c\":";
        let items = json::items(data).unwrap();
        let got: Vec<(u64, bool)> = items.iter().map(|i| (i.line, i.value.is_ok())).collect();
        assert_eq!(
            got,
            vec![
                (1, true),
                (5, true),
                (6, false),
                (7, true),
                (7, false),
                (8, false)
            ]
        );
        assert_eq!(items[1].raw, b"{\n \"b\": 2\n}");
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(json::JSON_OBJECT_MAX));
        assert!(json::items(big.as_bytes()).is_err());
    }

    #[test]
    fn records_split_as_copy_escape_reads_them() {
        let mut data = Vec::new();
        for r in [&b"a;b\nc;"[..], b"x\\;y;", b"last"] {
            frame_into(r, &mut data);
        }
        data.extend_from_slice(b"a\\;b;c");
        let recs = split_records(&data, b';', true);
        let fields: Vec<Vec<&[u8]>> = recs
            .iter()
            .map(|r| r.fields.iter().map(|f| &f[..]).collect())
            .collect();
        assert_eq!(
            fields,
            vec![
                vec![&b"a"[..], b"b\nc", b""],
                vec![&b"x\\"[..], b"y", b""],
                vec![&b"last"[..]],
                vec![&b"a;b"[..], b"c"],
            ]
        );
        assert_eq!(
            recs.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 3, 4, 5]
        );
    }

    #[test]
    fn fields_are_checked_as_redshift_types() {
        let st = CopyStatement {
            null_as: Some("None".into()),
            timeformat: Some("%Y-%m-%d %H:%M:%S".into()),
            ..Default::default()
        };
        let v = |n| Col {
            name: "v".into(),
            ty: ColType::Varchar(n),
        };
        assert!(check_field(&v(4), "éé".as_bytes(), &st).is_ok());
        assert_eq!(
            check_field(&v(3), "éé".as_bytes(), &st).unwrap_err().0,
            1204
        );
        assert_eq!(check_field(&v(9), &[0xff], &st).unwrap_err().0, 1220);
        assert!(check_field(&v(1), b"None", &st).is_ok(), "NULL AS");
        let int = Col {
            name: "i".into(),
            ty: ColType::Integer,
        };
        assert!(check_field(&int, b"12", &st).is_ok());
        // An empty INT field is NULL (BLANKSASNULL's paragraph), where PostgreSQL refuses it.
        assert!(check_field(&int, b"", &st).is_ok());
        assert!(loads_as_null(&int, b"", &st));
        assert!(!loads_as_null(&v(3), b"", &st), "an empty VARCHAR is ''");
        let ts = Col {
            name: "t".into(),
            ty: ColType::Timestamp,
        };
        assert!(check_field(&ts, b"", &st).is_ok(), "empty timestamp: NULL");
        assert!(
            check_field(&ts, b"2024-01-01 00:00:00.25", &st).is_ok(),
            "SS takes fractions"
        );
        assert!(check_field(&ts, b"2024-01-01 00:00:00.1234567", &st).is_err());
        assert_eq!(check_field(&v(9), b"a\0b", &st).unwrap_err().0, 1220, "NUL");
        assert_eq!(single_byte("aé\0b".as_bytes()), "a..b");
        assert!(check_field(&int, b"99999999999", &st).is_err());
        let cols = vec![int.clone(), v(5)];
        let rec = |s: &[u8]| split_records(s, b';', true).remove(0);
        // The strict reading: the empty field after a final delimiter needs a column.
        assert_eq!(
            check_record(&rec(b"1;ab;\n"), &cols, &st).unwrap_err().code,
            1202,
            "trailing delimiter without a column for it"
        );
        let with_trailing = vec![int.clone(), v(5), v(1)];
        assert!(check_record(&rec(b"1;ab;\n"), &with_trailing, &st).is_ok());
        assert!(check_record(&rec(b"1;ab\n"), &cols, &st).is_ok());
        assert!(check_record(&rec(b"1;ab;x\n"), &cols, &st).is_err());
        assert!(check_record(&rec(b"1\n"), &cols, &st).is_err());
    }
}
