//! The warehouse: SQL templates from `sql/`, identifier quoting, and the `Warehouse` trait
//! each dialect (PostgreSQL, Redshift) implements over a shared [`session::SqlSession`]; the
//! ledger's questions are [`Ledger`]'s. Backends return data; the commands print it.

pub mod conninfo;
pub mod ledger;
pub mod postgres;
pub mod redshift;
pub mod session;
pub mod tls;
pub mod views;

pub use ledger::Ledger;
pub use session::{SqlError, SqlSession};

use crate::archive::layout::OffsetSpan;
use crate::archive::{Compression, ObjectStore};
use crate::config::{ArchiveSettings, WarehouseKind, WarehouseSettings};
use crate::records::{Codec, ColumnType, Layout};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

pub const CREATE_RAW: &str = include_str!("../../sql/create_raw.sql");
pub const CREATE_LEDGER: &str = include_str!("../../sql/create_ledger.sql");
pub const CREATE_CURSOR: &str = include_str!("../../sql/create_cursor.sql");
pub const CREATE_REJECTS: &str = include_str!("../../sql/create_rejects.sql");
pub const BATCH_VIEW: &str = include_str!("../../sql/batch_view.sql");

/// Quotes a (validated) identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Identifiers, each quoted, comma-separated (column lists). Every identifier batchlayer
/// emits is quoted, in every dialect: Redshift reserves words PostgreSQL does not (`raw`,
/// `partition`, `open`, `tag`, ... <https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html>).
pub fn quote_idents(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What differs between the SQL dialects in the statements the ledger and the DDL share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Redshift,
}

impl Dialect {
    /// The current time, as a `timestamp` in the session's zone. On Redshift `CURRENT_TIMESTAMP`
    /// is a leader-node-only function, an error in a statement on a user table
    /// (<https://docs.aws.amazon.com/redshift/latest/dg/c_SQL_functions_leader_node_only.html>);
    /// `SYSDATE` is the transaction's start in the session's zone, UTC by default
    /// (<https://docs.aws.amazon.com/redshift/latest/dg/r_SYSDATE.html>).
    pub fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "CURRENT_TIMESTAMP",
            Dialect::Redshift => "SYSDATE",
        }
    }

    /// The true epoch seconds of a `timestamp` column written with [`Dialect::now`] (the
    /// session's zone): its nominal value less the session's offset from UTC. On Redshift the
    /// session's zone is UTC (the default; batchlayer's sessions set it), so none is taken off:
    /// the offset would need a leader-node-only function.
    pub fn epoch(self, col: &str) -> String {
        match self {
            Dialect::Postgres => format!(
                "CAST(EXTRACT(EPOCH FROM {col}) - (EXTRACT(EPOCH FROM LOCALTIMESTAMP) - EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)) AS BIGINT)"
            ),
            Dialect::Redshift => format!("CAST(EXTRACT(EPOCH FROM {col}) AS BIGINT)"),
        }
    }
}

/// Quotes a string literal for SQL.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Table names, validated by config, rendered quoted into SQL templates.
#[derive(Debug, Clone)]
pub struct Names {
    pub schema: String,
    pub raw: String,
    pub ledger: String,
    pub rejects: String,
}

impl Names {
    pub fn from_settings(w: &WarehouseSettings) -> Self {
        Names {
            schema: w.schema.clone(),
            raw: w.raw_table.clone(),
            ledger: w.ledger_table.clone(),
            rejects: w.rejects_table.clone(),
        }
    }

    /// Replaces `{schema}`, `{raw}`, `{ledger}`, `{rejects}` and the extra pairs with quoted identifiers.
    pub fn render(&self, template: &str, extra: &[(&str, &str)]) -> String {
        let mut s = template
            .replace("{schema}", &quote_ident(&self.schema))
            .replace("{raw}", &quote_ident(&self.raw))
            .replace("{ledger}", &quote_ident(&self.ledger))
            .replace("{rejects}", &quote_ident(&self.rejects));
        for (k, v) in extra {
            s = s.replace(&format!("{{{k}}}"), &quote_ident(v));
        }
        s
    }

    pub fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }
}

/// The layout's columns, quoted and comma-separated (COPY and INSERT column lists).
pub fn column_list(layout: &Layout) -> String {
    let cols: Vec<String> = layout
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    cols.join(", ")
}

/// The raw table's columns as loads write them: the layout's, then its topic column if any.
pub fn table_column_list(layout: &Layout) -> String {
    match &layout.topic_column {
        Some(t) => format!("{}, {}", column_list(layout), quote_ident(t)),
        None => column_list(layout),
    }
}

/// The DDL that creates the raw, ledger and rejects tables, idempotently, in this dialect.
pub fn create_statements(names: &Names, layout: &Layout, dialect: Dialect) -> Vec<String> {
    let mut cols: Vec<String> = layout
        .columns
        .iter()
        .map(|c| {
            let ty = match c.ty {
                ColumnType::Bigint => "bigint".to_string(),
                ColumnType::Int => "integer".to_string(),
                ColumnType::Timestamp => "timestamp".to_string(),
                ColumnType::Text => format!("varchar({})", c.max_len.unwrap_or(65535)),
                ColumnType::Double => "double precision".to_string(),
                ColumnType::Boolean => "boolean".to_string(),
                ColumnType::Date => "date".to_string(),
                // Redshift's semistructured type: https://docs.aws.amazon.com/redshift/latest/dg/r_SUPER_type.html
                ColumnType::Json => match dialect {
                    Dialect::Postgres => "jsonb".to_string(),
                    Dialect::Redshift => "super".to_string(),
                },
            };
            format!("    {} {ty}", quote_ident(&c.name))
        })
        .collect();
    if let Some(t) = &layout.topic_column {
        // Kafka's longest topic name.
        cols.push(format!("    {} varchar(249)", quote_ident(t)));
    }
    let raw =
        strip_comments(&names.render(CREATE_RAW, &[])).replace("{columns}", &cols.join(",\n"));
    vec![
        format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&names.schema)),
        strip_comments(&raw),
        strip_comments(&names.render(CREATE_LEDGER, &[])).replace("{now}", dialect.now()),
        strip_comments(&names.render(CREATE_CURSOR, &[("cursor", &ledger::cursor_table(names))]))
            .replace("{now}", dialect.now()),
        strip_comments(&names.render(CREATE_REJECTS, &[])).replace("{now}", dialect.now()),
    ]
}

/// Removes `--` comment lines and the trailing `;` so a statement can be embedded.
pub fn strip_comments(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .trim_end_matches(';')
        .trim()
        .to_string()
}

/// One object to load.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadJob {
    pub key: String,
    pub size: u64,
    pub compression: Compression,
    /// From the ingest manifest, when one lists the object.
    pub expected_sha256: Option<String>,
    pub expected_records: Option<u64>,
    /// The records' identity: topic, partition, epoch and offset range (from the manifest or
    /// the key).
    pub range: Option<OffsetRange>,
    /// Offsets inside the range that the object does not hold (tombstones, transaction
    /// markers, compacted or expired offsets), as merged spans in order, when known.
    pub gaps: Option<Vec<OffsetSpan>>,
    /// The name of the run manifest that lists the object (recorded in the ledger: copy's
    /// cursor), and how many objects that manifest lists.
    pub manifest: Option<String>,
    pub manifest_objects: Option<u32>,
    /// Offsets loaded already by other objects: their records are skipped, not loaded again.
    pub skip: Vec<OffsetSpan>,
}

/// Loaded offset ranges (inclusive) per (topic, partition, epoch).
pub type LoadedRanges = BTreeMap<(String, i32, i32), Vec<OffsetSpan>>;

/// Where an object's records come from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OffsetRange {
    pub topic: String,
    pub partition: i32,
    pub epoch: i32,
    pub first: i64,
    pub last: i64,
}

impl OffsetRange {
    /// Its offsets, without the partition they belong to.
    pub fn span(&self) -> OffsetSpan {
        OffsetSpan::new(self.first, self.last)
    }
}

impl LoadJob {
    /// The offset of each record, in order, when it can be known: the range without its gaps.
    /// None when the range is unknown, or the range without its gaps holds another number of
    /// offsets than the object records.
    pub fn record_offsets(&self, records: Option<u64>) -> Option<Vec<i64>> {
        let r = self.range.as_ref()?;
        let gaps = self.gaps.as_deref().unwrap_or_default();
        let held: u64 = crate::archive::layout::subtract_spans(r.span(), gaps)
            .iter()
            .map(|s| s.count())
            .sum();
        // Offsets are mapped only when the holes account for every offset the records do not
        // hold (an object adopted from a crashed run lists its tombstones, not its markers).
        if records.is_some_and(|n| n != held) {
            return None;
        }
        // Spans, not offsets, are walked: a hole may span a million offsets.
        let mut offsets = Vec::with_capacity(held.min(1 << 24) as usize);
        for s in crate::archive::layout::subtract_spans(r.span(), gaps) {
            offsets.extend(s.first..=s.last);
        }
        Some(offsets)
    }

    /// Whether a record at this offset was loaded by another object.
    pub fn skipped(&self, offset: i64) -> bool {
        self.skip.iter().any(|s| s.contains(offset))
    }
}

/// How to treat bad rows.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// None: strict (first bad row fails the object). Some(n): up to n rejects per object.
    pub max_errors: Option<u64>,
    /// PostgreSQL: the COPY format asked for (binary falls back to text when the raw table's
    /// column types are not the layout's).
    pub format: crate::records::CopyFormat,
    /// PostgreSQL: how many connections load objects at once (0 and 1: one).
    pub jobs: usize,
}

/// What loading one object did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LoadResult {
    pub key: String,
    pub bytes: u64,
    pub records: u64,
    pub loaded: u64,
    pub rejected: u64,
    /// Records whose offsets another object had loaded already.
    pub skipped: u64,
}

/// What a dialect does: its tables, its locks, and how it loads objects (each load's
/// transaction writes the [`Ledger`]'s INSERT). The ledger's questions are the [`Ledger`]'s;
/// the plain SQL plumbing is the session's ([`Warehouse::session`]).
pub trait Warehouse {
    /// Statements, queries and transactions on this warehouse.
    fn session(&mut self) -> &mut dyn SqlSession;
    /// The configured table names.
    fn names(&self) -> &Names;
    /// Where it points (no secrets).
    fn describe(&self) -> String;
    /// A string literal as this warehouse reads it (Redshift reads a backslash as an escape):
    /// what the [`Ledger`] writes its values with.
    fn literal(&self, s: &str) -> String {
        quote_literal(s)
    }
    /// Its SQL dialect (the current time, epoch seconds).
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    /// Takes the named lock for this session if it is free; Ok(false) when another holds it.
    fn try_lock(&mut self, name: &str) -> Result<bool>;
    /// Waits for the named lock and takes it.
    fn lock_wait(&mut self, name: &str) -> Result<()>;
    /// Loads these objects, each recorded in the ledger in the same transaction as its rows.
    /// Results come back in order; the first failure stops the batch with an error.
    fn load(
        &mut self,
        jobs: &[LoadJob],
        store: &dyn ObjectStore,
        layout: &Codec,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadResult),
    ) -> Result<Vec<LoadResult>>;
    /// Records that an object needs no load: every offset it holds is loaded already by other
    /// objects. A ledger row with no rows loaded, in a transaction of its own, so the object is
    /// not considered again.
    fn record_skipped(&mut self, job: &LoadJob, records: u64) -> Result<()>;
    /// The SQL `load` would run for these jobs (for --dry-run; secrets masked).
    fn load_sql(&self, jobs: &[LoadJob], layout: &Layout) -> Vec<String>;

    /// Takes the named lock; Ok(false) when busy and `wait` is false.
    fn lock(&mut self, name: &str, wait: bool) -> Result<bool> {
        if self.try_lock(name)? {
            return Ok(true);
        }
        if !wait {
            return Ok(false);
        }
        self.lock_wait(name)?;
        Ok(true)
    }

    /// Statements that bring tables made by an older batchlayer up to date (idempotent).
    fn upgrade_statements(&self) -> Vec<String> {
        Vec::new()
    }

    /// Creates schema, raw, ledger, cursor and rejects tables if missing, upgrades old ones
    /// (the ledger's key), and refuses a raw table whose text columns are narrower than the
    /// layout lets a record's fields be.
    fn ensure_tables(&mut self, layout: &Layout) -> Result<()> {
        let where_ = self.describe();
        let mut stmts = create_statements(self.names(), layout, self.dialect());
        stmts.extend(self.upgrade_statements());
        for s in stmts {
            self.session()
                .execute(&s)
                .with_context(|| format!("creating tables in {where_}"))?;
        }
        let (names, dialect) = (self.names().clone(), self.dialect());
        for s in ledger_key_upgrade(self.session(), &names, dialect)? {
            self.session()
                .execute(&s)
                .with_context(|| format!("upgrading the ledger's key in {where_}"))?;
        }
        check_raw_widths(self.session(), &names, layout)
    }
}

/// A ledger made before several raw tables could share one has the key `"key"` alone; it
/// becomes `("key", "target_table")`. PostgreSQL: the old constraint is dropped and the new
/// one added in one statement (each key is unique already, so each pair is). Redshift accepts
/// `DROP CONSTRAINT constraint_name` and `ADD table_constraint` in ALTER TABLE, but refuses a
/// primary key on a nullable column
/// (<https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html>), and its keys are
/// informational only, never enforced, though the planner trusts them
/// (<https://docs.aws.amazon.com/redshift/latest/dg/t_Defining_constraints.html>): the old key,
/// false once two raw tables load one object, is dropped, and no key is added. Nothing is done
/// when the key is not `"key"` alone (new ledgers, upgraded ones).
fn ledger_key_upgrade(
    s: &mut dyn SqlSession,
    names: &Names,
    dialect: Dialect,
) -> Result<Vec<String>> {
    let sql = format!(
        r#"SELECT "tc"."constraint_name", CAST(count(*) AS BIGINT), max("k"."column_name") FROM "information_schema"."table_constraints" "tc" JOIN "information_schema"."key_column_usage" "k" ON "k"."constraint_name" = "tc"."constraint_name" AND "k"."table_schema" = "tc"."table_schema" AND "k"."table_name" = "tc"."table_name" WHERE "tc"."table_schema" = {} AND "tc"."table_name" = {} AND "tc"."constraint_type" = 'PRIMARY KEY' GROUP BY "tc"."constraint_name""#,
        quote_literal(&names.schema),
        quote_literal(&names.ledger)
    );
    let (_, rows) = s
        .query_text(&sql)
        .context("reading the ledger's primary key")?;
    let mut out = Vec::new();
    let table = names.qualified(&names.ledger);
    for r in rows {
        let (Some(name), Some(n), Some(col)) = (&r[0], &r[1], &r[2]) else {
            continue;
        };
        if n != "1" || col != "key" {
            continue;
        }
        out.push(match dialect {
            Dialect::Postgres => format!(
                r#"ALTER TABLE {table} DROP CONSTRAINT {}, ADD PRIMARY KEY ("key", "target_table")"#,
                quote_ident(name)
            ),
            Dialect::Redshift => {
                format!(r#"ALTER TABLE {table} DROP CONSTRAINT {}"#, quote_ident(name))
            }
        });
    }
    Ok(out)
}

/// The raw table's text columns must hold what the layout accepts: a record whose field passes
/// the layout's `max_len` (none: 65535, the column the DDL makes) would otherwise fail the COPY
/// of its whole object. A table made by hand, or by a layout with a smaller `max_len`, is
/// refused here with the table, the column and both widths (a configuration error).
fn check_raw_widths(s: &mut dyn SqlSession, names: &Names, layout: &Layout) -> Result<()> {
    let sql = format!(
        r#"SELECT "column_name", CAST("character_maximum_length" AS BIGINT) FROM "information_schema"."columns" WHERE "table_schema" = {} AND "table_name" = {} AND "character_maximum_length" IS NOT NULL"#,
        quote_literal(&names.schema),
        quote_literal(&names.raw)
    );
    let (_, rows) = s
        .query_text(&sql)
        .context("reading the raw table's column widths")?;
    let widths: BTreeMap<String, i64> = rows
        .into_iter()
        .filter_map(|r| {
            let name = r.first().cloned().flatten()?;
            let n = r.get(1).cloned().flatten()?.parse().ok()?;
            Some((name, n))
        })
        .collect();
    for c in layout.columns.iter().filter(|c| c.ty == ColumnType::Text) {
        let want = c.max_len.unwrap_or(65535);
        if let Some(&have) = widths.get(&c.name) {
            if (have as usize) < want {
                let why = match c.max_len {
                    Some(n) => format!("the layout's max_len {n}"),
                    None => "65535, what the layout allows without a max_len".into(),
                };
                return Err(crate::error::Error::config(format!(
                    "raw table {}.{}: column {} is varchar({have}), narrower than {why} (records.columns): a record the layout accepts could fail the COPY of its whole object. Widen the column (ALTER TABLE ... ALTER COLUMN {} TYPE varchar({want})) or set its max_len to {have}",
                    names.schema, names.raw, c.name, quote_ident(&c.name)
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Connects to the configured warehouse (Redshift also needs the archive it COPYs from).
pub fn connect(w: &WarehouseSettings, archive: &ArchiveSettings) -> Result<Box<dyn Warehouse>> {
    let names = Names::from_settings(w);
    Ok(match w.kind {
        WarehouseKind::Postgres => Box::new(postgres::Pg::connect(w, names)?),
        WarehouseKind::Redshift => Box::new(redshift::Redshift::connect(w, archive, names)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            schema: "s".into(),
            raw: "batch_raw".into(),
            ledger: "l".into(),
            rejects: "r".into(),
        }
    }

    #[test]
    fn templates_render_quoted_identifiers() {
        let stmts = create_statements(&names(), &Layout::tweets(), Dialect::Postgres);
        assert_eq!(stmts[0], "CREATE SCHEMA IF NOT EXISTS \"s\"");
        assert!(
            stmts[1].starts_with(
                "CREATE TABLE IF NOT EXISTS \"s\".\"batch_raw\" (\n    \"id\" bigint,"
            ),
            "{}",
            stmts[1]
        );
        assert!(stmts[1].contains("\"location\" varchar(256)"));
        assert!(stmts.iter().all(|s| !s.contains('{') && !s.contains("--")));
    }

    /// A session whose every query answers these rows.
    struct Answers(Vec<Vec<Option<String>>>);

    impl SqlSession for Answers {
        fn describe(&self) -> String {
            "answers".into()
        }
        fn run_in_transaction(&mut self, _: &[String]) -> Result<()> {
            unimplemented!()
        }
        fn execute(&mut self, _: &str) -> Result<()> {
            unimplemented!()
        }
        fn query_i64(&mut self, _: &str) -> Result<Option<i64>> {
            unimplemented!()
        }
        fn table_exists(&mut self, _: &str) -> Result<bool> {
            unimplemented!()
        }
        fn query_text(&mut self, _: &str) -> Result<(Vec<String>, session::Rows)> {
            Ok((Vec::new(), self.0.clone()))
        }
    }

    fn answers(rows: &[&[&str]]) -> Answers {
        Answers(
            rows.iter()
                .map(|r| r.iter().map(|v| Some(v.to_string())).collect())
                .collect(),
        )
    }

    #[test]
    fn an_old_ledger_key_is_replaced_on_postgresql_and_dropped_on_redshift() {
        let n = names();
        let mut old = answers(&[&["l_pkey", "1", "key"]]);
        assert_eq!(
            ledger_key_upgrade(&mut old, &n, Dialect::Postgres).unwrap(),
            vec![
                r#"ALTER TABLE "s"."l" DROP CONSTRAINT "l_pkey", ADD PRIMARY KEY ("key", "target_table")"#
            ]
        );
        assert_eq!(
            ledger_key_upgrade(&mut old, &n, Dialect::Redshift).unwrap(),
            vec![r#"ALTER TABLE "s"."l" DROP CONSTRAINT "l_pkey""#]
        );
        for rows in [&[][..], &[&["l_pkey", "2", "target_table"][..]][..]] {
            let mut new = answers(rows);
            for d in [Dialect::Postgres, Dialect::Redshift] {
                assert!(ledger_key_upgrade(&mut new, &n, d).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn a_raw_table_narrower_than_the_layout_is_a_configuration_error() {
        let n = names();
        let layout = Layout::tweets();
        assert!(check_raw_widths(&mut answers(&[&["location", "256"]]), &n, &layout).is_ok());
        assert!(
            check_raw_widths(&mut answers(&[]), &n, &layout).is_ok(),
            "text: no limit"
        );
        let e = check_raw_widths(&mut answers(&[&["location", "100"]]), &n, &layout).unwrap_err();
        assert_eq!(crate::error::code_for(&e), crate::error::USAGE);
        let msg = format!("{e:#}");
        assert!(
            msg.contains("s.batch_raw")
                && msg.contains("location")
                && msg.contains("varchar(100)")
                && msg.contains("max_len 256"),
            "{msg}"
        );
    }

    #[test]
    fn hostile_names_stay_inside_quotes() {
        assert_eq!(
            quote_ident("x\"; drop table y; --"),
            "\"x\"\"; drop table y; --\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}

/// The suite every `Warehouse` impl must pass. Run by the integration tests against PostgreSQL,
/// and against the Redshift dialect on the Redshift stand-in (`tests/common/standin.rs`).
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    use super::*;
    use crate::records::frame_into;
    use std::collections::HashSet;
    use std::io::Write;

    /// Stores `records` (framed, gzip or plain) under `key`; returns its job with the checksum
    /// and record count a manifest would give.
    fn put_object(store: &dyn ObjectStore, key: &str, records: &[&[u8]], gzip: bool) -> LoadJob {
        let mut plain = Vec::new();
        for r in records {
            frame_into(r, &mut plain);
        }
        let body = if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        } else {
            plain
        };
        store.put_bytes_if_absent(key, &body).unwrap();
        LoadJob {
            key: key.into(),
            size: body.len() as u64,
            compression: if gzip {
                Compression::Gzip
            } else {
                Compression::None
            },
            expected_sha256: Some(crate::util::sha256_hex(&body)),
            expected_records: Some(records.len() as u64),
            ..Default::default()
        }
    }

    /// The job with the records' identity a manifest gives: topic `t`, partition `p`, epoch 0,
    /// offsets `first..=last`, listed by `manifest` (of two objects) when named.
    fn ranged(mut j: LoadJob, p: i32, first: i64, last: i64, manifest: Option<&str>) -> LoadJob {
        j.range = Some(OffsetRange {
            topic: "t".into(),
            partition: p,
            epoch: 0,
            first,
            last,
        });
        j.manifest = manifest.map(String::from);
        j.manifest_objects = manifest.map(|_| 2);
        j
    }

    /// Every question to a ledger that holds nothing (no table yet, or an empty one) has the
    /// empty answer; the raw table against it: None without the tables, (0, 0) with them.
    fn ledger_is_empty(wh: &mut dyn Warehouse, tables: bool) {
        let probe = ranged(LoadJob::default(), 0, 0, 9, Some("m1"));
        let mut l = Ledger::new(wh);
        assert!(l.loaded_keys().unwrap().is_empty(), "no keys");
        assert!(l.keys_loaded(&["k".into()]).unwrap().is_empty());
        assert_eq!(l.copy_cursor("t").unwrap(), None, "no cursor");
        assert!(l.manifests_loaded("t", &["m1".into()]).unwrap().is_empty());
        assert!(l.loaded_ranges(&[probe]).unwrap().is_empty());
        assert_eq!(l.summary("t").unwrap(), ledger::LedgerSummary::default());
        assert!(l.loaded_prefixes("t", 0).unwrap().is_empty());
        assert!(l.rows().unwrap().is_empty());
        let want = tables.then_some((0, 0));
        assert_eq!(l.raw_against_ledger().unwrap(), want);
    }

    /// The ledger's answers once `a` (partition 0, offsets 0..=2) and `b` (partition 1, 0..=1),
    /// both of manifest m1, are loaded: 5 rows. NULLs come back as None.
    fn ledger_holds(wh: &mut dyn Warehouse, a: &LoadJob, b: &LoadJob) {
        let mut l = Ledger::new(wh);
        let got = l
            .keys_loaded(&[a.key.clone(), "wconf/none".into(), b.key.clone()])
            .unwrap();
        assert_eq!(got, HashSet::from([a.key.clone(), b.key.clone()]));
        // Copy's cursor: a row per raw table and topic, replaced whole.
        assert_eq!(l.copy_cursor("t").unwrap(), None);
        let mut c = ledger::CopyCursor {
            manifest: "m1".into(),
            checked: None,
        };
        l.store_copy_cursor("t", &c).unwrap();
        assert_eq!(l.copy_cursor("t").unwrap().as_ref(), Some(&c));
        c.checked = Some(ledger::CheckedHead {
            epoch: 1,
            next: [(0, 5), (3, 7)].into(),
            index: vec!["_topics/t+m2".into()],
        });
        c.manifest = "m2".into();
        l.store_copy_cursor("t", &c).unwrap();
        assert_eq!(l.copy_cursor("t").unwrap().as_ref(), Some(&c));
        assert_eq!(l.copy_cursor("other").unwrap(), None);
        let got = l
            .manifests_loaded("t", &["m0".into(), "m1".into()])
            .unwrap();
        assert_eq!(got, HashSet::from(["m1".to_string()]));
        let probe = ranged(LoadJob::default(), 0, 1, 9, None);
        let got = l.loaded_ranges(&[probe]).unwrap();
        assert_eq!(
            got,
            LoadedRanges::from([(("t".into(), 0, 0), vec![OffsetSpan::new(0, 2)])])
        );
        let sum = l.summary("t").unwrap();
        assert_eq!(
            (sum.objects, sum.bytes, sum.rows_loaded, sum.rows_rejected),
            (2, (a.size + b.size) as i64, 5, 0)
        );
        assert!(sum.last_load_at.is_some());
        let mut p0 = ledger::Prefix::new(0, 2, 2);
        p0.key = Some(a.key.clone());
        p0.manifest = Some("m1".into());
        p0.top_key = p0.key.clone();
        p0.top_manifest = p0.manifest.clone();
        let prefixes = l.loaded_prefixes("t", 0).unwrap();
        assert_eq!(prefixes.get(&0), Some(&p0));
        assert_eq!(prefixes.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert!(l.loaded_prefixes("t", 1).unwrap().is_empty());
        let rows = l.rows().unwrap();
        assert_eq!(rows.len(), 2);
        let r = rows.iter().find(|r| r.key == a.key).unwrap();
        assert_eq!(
            (
                r.topic.as_deref(),
                r.partition,
                r.epoch,
                r.first_offset,
                r.last_offset
            ),
            (Some("t"), Some(0), Some(0), Some(0), Some(2))
        );
        assert_eq!(
            (r.size, r.rows_loaded, r.rows_skipped),
            (a.size as i64, 3, 0)
        );
        assert_eq!(Some(&r.sha256), a.expected_sha256.as_ref());
        assert_eq!(r.manifest.as_deref(), Some("m1"));
        assert_eq!(l.raw_against_ledger().unwrap(), Some((5, 5)));
    }

    /// An object whose offsets are all loaded by `a` is recorded as skipped: in the ledger,
    /// with its records counted as skipped and none loaded; never twice.
    fn ledger_records_a_skip(wh: &mut dyn Warehouse, store: &dyn ObjectStore, good: &[&[u8]]) {
        let before = Ledger::new(wh).summary("t").unwrap();
        let d = put_object(
            store,
            "wconf/t+0+00000000000000000000+00000000000000000001.log",
            &good[..2],
            false,
        );
        let d = ranged(d, 0, 0, 1, None);
        wh.record_skipped(&d, 2).unwrap();
        assert!(wh.record_skipped(&d, 2).is_err(), "recorded twice");
        let mut l = Ledger::new(wh);
        let sum = l.summary("t").unwrap();
        assert_eq!(
            (sum.objects, sum.rows_loaded, sum.rows_skipped),
            (
                before.objects + 1,
                before.rows_loaded,
                before.rows_skipped + 2
            )
        );
        let r = l
            .rows()
            .unwrap()
            .into_iter()
            .find(|r| r.key == d.key)
            .unwrap();
        assert_eq!((r.rows_loaded, r.rows_skipped, r.manifest), (0, 2, None));
        let prefixes = l.loaded_prefixes("t", 0).unwrap();
        assert_eq!((prefixes[&0].through, prefixes[&0].top), (2, 2));
    }

    /// `open` connects to a fresh, empty schema (each call a new session); `raw` is the raw
    /// table's bare name and `qualified_raw` its schema-qualified name; `good` are valid records
    /// of `layout` and `bad` one that is not.
    ///
    /// Long on purpose: one story in order, each step asserting on the state the previous
    /// steps left (the ledger, the row count), which split functions would hide.
    pub fn run(
        open: &dyn Fn() -> Box<dyn Warehouse>,
        store: &dyn ObjectStore,
        layout: &Codec,
        raw: &str,
        qualified_raw: &str,
        good: &[&[u8]],
        bad: &[u8],
    ) {
        let count = |wh: &mut dyn Warehouse| {
            wh.session()
                .query_i64(&format!("SELECT count(*) FROM {qualified_raw}"))
                .unwrap()
                .unwrap()
        };
        let mut wh = open();
        assert!(
            !wh.session().table_exists(raw).unwrap(),
            "schema must start empty"
        );
        ledger_is_empty(wh.as_mut(), false);
        wh.ensure_tables(layout).unwrap();
        wh.ensure_tables(layout).expect("ensure_tables twice");
        assert!(wh.session().table_exists(raw).unwrap());
        ledger_is_empty(wh.as_mut(), true);

        // The lock is per session: a second session is refused until the first ends.
        assert!(wh.lock("conformance", false).unwrap());
        let mut other = open();
        assert!(
            !other.lock("conformance", false).unwrap(),
            "lock not exclusive"
        );
        drop(wh);
        let t0 = std::time::Instant::now();
        while !other.lock("conformance", false).unwrap() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "lock not released with its session"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut wh = other;

        // Two objects load in order, each into the ledger.
        let a = put_object(
            store,
            "wconf/t+0+00000000000000000000+00000000000000000002.log.gz",
            &good[..3],
            true,
        );
        let a = ranged(a, 0, 0, 2, Some("m1"));
        let b = put_object(
            store,
            "wconf/t+1+00000000000000000000+00000000000000000001.log",
            &good[3..5],
            false,
        );
        let b = ranged(b, 1, 0, 1, Some("m1"));
        let opts = LoadOptions::default();
        let mut seen = Vec::new();
        let results = wh
            .load(&[a.clone(), b.clone()], store, layout, &opts, &mut |r| {
                seen.push(r.key.clone())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![a.key.clone(), b.key.clone()],
            "progress per object, in order"
        );
        assert_eq!(
            results
                .iter()
                .map(|r| (r.records, r.loaded, r.rejected))
                .collect::<Vec<_>>(),
            vec![(3, 3, 0), (2, 2, 0)]
        );
        assert_eq!(count(wh.as_mut()), 5);
        let keys = Ledger::new(wh.as_mut()).loaded_keys().unwrap();
        assert!(keys.contains(&a.key) && keys.contains(&b.key) && keys.len() == 2);
        ledger_holds(wh.as_mut(), &a, &b);

        // The ledger refuses a key twice, and the refused load leaves no rows.
        assert!(wh
            .load(std::slice::from_ref(&a), store, layout, &opts, &mut |_| {})
            .is_err());
        assert_eq!(count(wh.as_mut()), 5, "a refused load left rows");

        // Strict: a bad record fails its object, naming it; nothing of it is loaded.
        let mut recs: Vec<&[u8]> = good[..2].to_vec();
        recs.push(bad);
        let c = put_object(
            store,
            "wconf/t+2+00000000000000000000+00000000000000000002.log.gz",
            &recs,
            true,
        );
        let c = ranged(c, 2, 0, 2, None);
        let err = format!(
            "{:#}",
            wh.load(std::slice::from_ref(&c), store, layout, &opts, &mut |_| {})
                .unwrap_err()
        );
        assert!(err.contains(&c.key), "{err}");
        assert_eq!(count(wh.as_mut()), 5);
        assert!(!Ledger::new(wh.as_mut())
            .loaded_keys()
            .unwrap()
            .contains(&c.key));

        // A checksum or record count that differs from the manifest's: refused, nothing loaded.
        let mut wrong_sha = c.clone();
        wrong_sha.expected_sha256 = Some("0".repeat(64));
        let mut wrong_count = c.clone();
        wrong_count.expected_records = Some(4);
        let tolerant = LoadOptions {
            max_errors: Some(1),
            ..Default::default()
        };
        for j in [wrong_sha, wrong_count] {
            assert!(wh
                .load(&[j], store, layout, &tolerant, &mut |_| {})
                .is_err());
            assert_eq!(count(wh.as_mut()), 5);
        }

        // Tolerant: the bad record is rejected and counted; loaded + rejected = records.
        let r = wh
            .load(
                std::slice::from_ref(&c),
                store,
                layout,
                &tolerant,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!((r[0].records, r[0].loaded, r[0].rejected), (3, 2, 1));
        assert_eq!(count(wh.as_mut()), 7);
        let mut l = Ledger::new(wh.as_mut());
        assert_eq!(l.raw_against_ledger().unwrap(), Some((7, 7)));
        assert_eq!(l.summary("t").unwrap().rows_rejected, 1);
        ledger_records_a_skip(wh.as_mut(), store, good);

        // Statements in one transaction apply together or not at all.
        let t = format!("{qualified_raw}_conformance_tx");
        let stmts = [
            format!("CREATE TABLE {t} (x int)"),
            "SELECT 1/0".to_string(),
        ];
        assert!(wh.session().run_in_transaction(&stmts).is_err());
        assert!(!wh
            .session()
            .table_exists(&format!("{raw}_conformance_tx"))
            .unwrap());

        let (cols, rows) = wh.session().query_text("SELECT 1 AS a, 'x' AS b").unwrap();
        assert_eq!(cols, vec!["a", "b"]);
        assert_eq!(
            rows,
            vec![vec![Some("1".to_string()), Some("x".to_string())]]
        );
        let (_, rows) = wh.session().query_text("SELECT NULL AS n").unwrap();
        assert_eq!(rows, vec![vec![None]], "NULL comes back as None");
        // Values come back whole (no cast: Redshift's TEXT is VARCHAR(256)) and in the
        // query's order (no wrapper around it).
        let long = format!("t/{}", "k".repeat(400));
        let quoted = wh.literal(&long);
        let (_, rows) = wh
            .session()
            .query_text(&format!(
                "SELECT 'a' AS v UNION ALL SELECT {} UNION ALL SELECT 'z' ORDER BY 1 DESC",
                quoted
            ))
            .unwrap();
        let got: Vec<Option<String>> = rows.into_iter().map(|mut r| r.remove(0)).collect();
        assert_eq!(got, vec![Some("z".into()), Some(long), Some("a".into())]);
        assert!(wh.load_sql(&[a], layout).iter().any(|s| s.contains(raw)));
    }
}
