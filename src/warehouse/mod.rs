//! The warehouse: SQL templates from `sql/`, identifier quoting, and the `Warehouse` trait
//! each dialect (PostgreSQL, Redshift) implements over a shared [`session::SqlSession`].
//! Backends return data; the commands print it.

pub mod ledger;
pub mod postgres;
pub mod redshift;
pub mod session;
#[cfg(feature = "testing")]
pub mod standin;
pub mod tls;
pub mod views;

pub use session::{SqlError, SqlSession};

use crate::archive::layout::OffsetSpan;
use crate::archive::{Compression, ObjectStore};
use crate::config::{ArchiveSettings, WarehouseKind, WarehouseSettings};
use crate::records::{ColumnType, Layout};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

pub const CREATE_RAW: &str = include_str!("../../sql/create_raw.sql");
pub const CREATE_LEDGER: &str = include_str!("../../sql/create_ledger.sql");
pub const CREATE_REJECTS: &str = include_str!("../../sql/create_rejects.sql");
pub const BATCH_VIEW: &str = include_str!("../../sql/batch_view.sql");

/// Quotes a (validated) identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
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

/// The DDL that creates the raw, ledger and rejects tables, idempotently.
pub fn create_statements(names: &Names, layout: &Layout) -> Vec<String> {
    let cols: Vec<String> = layout
        .columns
        .iter()
        .map(|c| {
            let ty = match c.ty {
                ColumnType::Bigint => "bigint".to_string(),
                ColumnType::Int => "integer".to_string(),
                ColumnType::Timestamp => "timestamp".to_string(),
                ColumnType::Text => format!("varchar({})", c.max_len.unwrap_or(65535)),
            };
            format!("    {} {ty}", quote_ident(&c.name))
        })
        .collect();
    let raw =
        strip_comments(&names.render(CREATE_RAW, &[])).replace("{columns}", &cols.join(",\n"));
    vec![
        format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&names.schema)),
        strip_comments(&raw),
        strip_comments(&names.render(CREATE_LEDGER, &[])),
        strip_comments(&names.render(CREATE_REJECTS, &[])),
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
    /// Offsets inside the range that the object does not hold (tombstones), when known.
    pub gaps: Option<Vec<i64>>,
    /// The name of the run manifest that lists the object (recorded in the ledger: copy's
    /// cursor), and how many objects that manifest lists.
    pub manifest: Option<String>,
    pub manifest_objects: Option<u32>,
    /// Offsets loaded already by other objects: their records are skipped, not loaded again.
    pub skip: Vec<OffsetSpan>,
}

/// Loaded offset ranges (inclusive) per (topic, partition, epoch).
pub type LoadedRanges = BTreeMap<(String, i32, i32), Vec<(i64, i64)>>;

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
    /// None when the range is unknown, or holds more offsets than records and the gaps are not
    /// listed.
    pub fn record_offsets(&self, records: Option<u64>) -> Option<Vec<i64>> {
        let r = self.range.as_ref()?;
        let gaps = self.gaps.clone().unwrap_or_default();
        let offsets: Vec<i64> = (r.first..=r.last).filter(|o| !gaps.contains(o)).collect();
        match (records, &self.gaps) {
            (Some(n), None) if n != offsets.len() as u64 => None,
            _ => Some(offsets),
        }
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
    /// Test hook: fail after the COPY, before the commit.
    pub fail_before_commit: bool,
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

/// What a dialect does: its tables, its lock, its ledger and how it loads objects. The plain
/// SQL plumbing is the session's ([`Warehouse::session`]).
pub trait Warehouse {
    /// Statements, queries and transactions on this warehouse.
    fn session(&mut self) -> &mut dyn SqlSession;
    /// The configured table names.
    fn names(&self) -> &Names;
    /// Where it points (no secrets).
    fn describe(&self) -> String;
    /// A string literal as this warehouse reads it (Redshift reads a backslash as an escape).
    fn literal(&self, s: &str) -> String {
        quote_literal(s)
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
        layout: &Layout,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadResult),
    ) -> Result<Vec<LoadResult>>;
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

    /// Creates schema, raw, ledger and rejects tables if missing, and upgrades old ones.
    fn ensure_tables(&mut self, layout: &Layout) -> Result<()> {
        let where_ = self.describe();
        let mut stmts = create_statements(self.names(), layout);
        stmts.extend(self.upgrade_statements());
        for s in stmts {
            self.session()
                .execute(&s)
                .with_context(|| format!("creating tables in {where_}"))?;
        }
        Ok(())
    }

    /// Offset ranges (inclusive) the ledger records as loaded that touch these jobs' ranges,
    /// per (topic, partition, epoch). Reads only the rows near the jobs, not the history.
    fn loaded_ranges(&mut self, jobs: &[LoadJob]) -> Result<LoadedRanges> {
        let ledger = self.names().ledger.clone();
        let mut bounds: BTreeMap<(String, i32, i32), (i64, i64)> = BTreeMap::new();
        for r in jobs.iter().filter_map(|j| j.range.as_ref()) {
            let b = bounds
                .entry((r.topic.clone(), r.partition, r.epoch))
                .or_insert((r.first, r.last));
            *b = (b.0.min(r.first), b.1.max(r.last));
        }
        if bounds.is_empty() {
            return Ok(LoadedRanges::new());
        }
        let conds: Vec<String> = bounds
            .iter()
            .map(|((t, p, e), (f, l))| {
                format!(
                    "(topic = {} AND partition_id = {p} AND epoch = {e} AND last_offset >= {f} AND first_offset <= {l})",
                    self.literal(t)
                )
            })
            .collect();
        let sql = format!(
            "SELECT topic, partition_id, epoch, first_offset, last_offset FROM {} WHERE first_offset IS NOT NULL AND ({})",
            self.names().qualified(&ledger),
            conds.join(" OR ")
        );
        let s = self.session();
        let mut out = LoadedRanges::new();
        if !s.table_exists(&ledger)? {
            return Ok(out);
        }
        let (_, rows) = s
            .query_text(&sql)
            .context("reading the ledger's offset ranges")?;
        for r in rows {
            let num = |i: usize| -> Result<i64> {
                r[i].parse()
                    .with_context(|| format!("ledger offset value {:?}", r[i]))
            };
            out.entry((r[0].clone(), num(1)? as i32, num(2)? as i32))
                .or_default()
                .push((num(3)?, num(4)?));
        }
        Ok(out)
    }

    /// Records that an object needs no load: every offset it holds is loaded already by other
    /// objects. A ledger row with no rows loaded, so the object is not considered again.
    fn record_skipped(&mut self, job: &LoadJob, records: u64) -> Result<()>;

    /// Copy's cursor for a topic: the newest manifest whose objects the ledger records.
    fn manifest_cursor(&mut self, topic: &str) -> Result<Option<String>> {
        let ledger = self.names().ledger.clone();
        let sql = format!(
            "SELECT max(manifest) FROM {} WHERE topic = {}",
            self.names().qualified(&ledger),
            self.literal(topic)
        );
        let s = self.session();
        if !s.table_exists(&ledger)? {
            return Ok(None);
        }
        let (_, rows) = s
            .query_text(&sql)
            .context("reading copy's cursor from the ledger")?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .filter(|v| v != "NULL"))
    }

    /// Which of these manifests (names) of a topic have every object they list in the ledger.
    fn manifests_loaded(&mut self, topic: &str, names: &[String]) -> Result<HashSet<String>> {
        let topic = self.literal(topic);
        self.ledger_select(names, &|table, list| {
            format!(
                "SELECT manifest FROM {table} WHERE topic = {topic} AND manifest IN ({list}) GROUP BY manifest HAVING count(*) >= max(manifest_objects)"
            )
        })
    }

    /// Which of these keys are in the ledger.
    fn keys_loaded(&mut self, keys: &[String]) -> Result<HashSet<String>> {
        self.in_ledger("key", keys)
    }

    /// The values of a ledger column among these, queried in batches.
    fn in_ledger(&mut self, column: &str, values: &[String]) -> Result<HashSet<String>> {
        self.ledger_select(values, &|table, list| {
            format!("SELECT DISTINCT {column} FROM {table} WHERE {column} IN ({list})")
        })
    }

    /// Runs a one-column query on the ledger for these values, 500 (quoted) at a time;
    /// `sql(table, list)` writes it. Nothing when there is no ledger yet.
    fn ledger_select(
        &mut self,
        values: &[String],
        sql: &dyn Fn(&str, &str) -> String,
    ) -> Result<HashSet<String>> {
        let ledger = self.names().ledger.clone();
        let table = self.names().qualified(&ledger);
        let quoted: Vec<String> = values.iter().map(|v| self.literal(v)).collect();
        let s = self.session();
        let mut out = HashSet::new();
        if values.is_empty() || !s.table_exists(&ledger)? {
            return Ok(out);
        }
        for chunk in quoted.chunks(500) {
            let sql = sql(&table, &chunk.join(", "));
            let (_, rows) = s.query_text(&sql).context("reading the ledger")?;
            out.extend(rows.into_iter().filter_map(|r| r.into_iter().next()));
        }
        Ok(out)
    }

    /// Keys already in the ledger (none when the ledger does not exist yet).
    fn loaded_keys(&mut self) -> Result<HashSet<String>> {
        let ledger = self.names().ledger.clone();
        let sql = format!("SELECT key FROM {}", self.names().qualified(&ledger));
        let s = self.session();
        if !s.table_exists(&ledger)? {
            return Ok(HashSet::new());
        }
        let (_, rows) = s.query_text(&sql).context("reading the ledger")?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }
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
        let stmts = create_statements(&names(), &Layout::tweets());
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
/// and against the Redshift dialect on the Redshift stand-in (`standin`).
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    use super::*;
    use crate::records::frame_into;
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

    /// `open` connects to a fresh, empty schema (each call a new session); `raw` is the raw
    /// table's bare name and `qualified_raw` its schema-qualified name; `good` are valid records
    /// of `layout` and `bad` one that is not.
    ///
    /// Long on purpose: one story in order, each step asserting on the state the previous
    /// steps left (the ledger, the row count), which split functions would hide.
    pub fn run(
        open: &dyn Fn() -> Box<dyn Warehouse>,
        store: &dyn ObjectStore,
        layout: &Layout,
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
        assert!(
            wh.loaded_keys().unwrap().is_empty(),
            "no ledger yet: no keys"
        );
        wh.ensure_tables(layout).unwrap();
        wh.ensure_tables(layout).expect("ensure_tables twice");
        assert!(wh.session().table_exists(raw).unwrap());
        assert!(wh.loaded_keys().unwrap().is_empty());

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
        let b = put_object(
            store,
            "wconf/t+1+00000000000000000000+00000000000000000001.log",
            &good[3..5],
            false,
        );
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
        let keys = wh.loaded_keys().unwrap();
        assert!(keys.contains(&a.key) && keys.contains(&b.key) && keys.len() == 2);

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
        let err = format!(
            "{:#}",
            wh.load(std::slice::from_ref(&c), store, layout, &opts, &mut |_| {})
                .unwrap_err()
        );
        assert!(err.contains(&c.key), "{err}");
        assert_eq!(count(wh.as_mut()), 5);
        assert!(!wh.loaded_keys().unwrap().contains(&c.key));

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
        assert_eq!(rows, vec![vec!["1".to_string(), "x".to_string()]]);
        assert!(wh.load_sql(&[a], layout).iter().any(|s| s.contains(raw)));
    }
}
