//! The ledger: one row per loaded object. [`Ledger`] owns every statement that reads or writes
//! it (the dialects run its INSERT inside their load transactions), the one "no ledger yet"
//! check, and the typed rows it answers with (NULL as None). Its SQL is what PostgreSQL and
//! Redshift both accept; the dialect gives only its string literals.

use super::session::SqlContext;
use super::{quote_idents, LoadJob, LoadResult, LoadedRanges, Names, Warehouse};
use crate::archive::layout::OffsetSpan;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::str::FromStr;

/// The columns an object's ledger row is written with, in the order of its values.
/// Each is quoted where it is used (Redshift reserves words PostgreSQL does not).
const COLUMNS: [&str; 14] = [
    "key",
    "size",
    "sha256",
    "rows_loaded",
    "rows_rejected",
    "target_table",
    "topic",
    "partition_id",
    "epoch",
    "first_offset",
    "last_offset",
    "rows_skipped",
    "manifest",
    "manifest_objects",
];

/// How many values one `IN (...)` list holds.
const IN_LIST: usize = 500;

/// The ledger of a warehouse: its questions, answered by one query or a few, and the SQL
/// that records a load.
pub struct Ledger<'a> {
    wh: &'a mut dyn Warehouse,
}

/// One row of a ledger query: each value as text, NULL as None.
struct Row(Vec<Option<String>>);

impl Row {
    /// Value `i`, parsed; None when NULL.
    fn get<T>(&self, i: usize) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.0
            .get(i)
            .and_then(Option::as_deref)
            .map(|v| {
                v.parse()
                    .with_context(|| format!("ledger value {v:?} is not a number"))
            })
            .transpose()
    }

    /// Value `i`, a number that NULL counts as 0 (sums, counts, `rows_skipped` of old rows).
    fn count(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?.unwrap_or(0))
    }

    /// Value `i` as text; None when NULL.
    fn text(&self, i: usize) -> Option<String> {
        self.0.get(i).cloned().flatten()
    }
}

/// What the ledger holds of one topic.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LedgerSummary {
    pub objects: i64,
    pub bytes: i64,
    pub rows_loaded: i64,
    pub rows_rejected: i64,
    pub rows_skipped: i64,
    pub last_load_at: Option<DateTime<Utc>>,
}

/// A partition's loaded offsets from their start: `start..=through` is loaded without a hole
/// (`top` is the highest loaded offset, above `through` when there is a hole). Offsets that
/// hold no record are loaded with the object whose range holds them (its holes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prefix {
    pub start: i64,
    pub through: i64,
    pub top: i64,
    /// The loaded object with records whose last offset is the highest at or below
    /// `through` (its newest record is the prefix's), and the manifest that listed it.
    pub key: Option<String>,
    pub manifest: Option<String>,
    /// The same at or below `top`.
    pub top_key: Option<String>,
    pub top_manifest: Option<String>,
}

impl Prefix {
    /// A prefix with no object or manifest named yet.
    pub fn new(start: i64, through: i64, top: i64) -> Prefix {
        Prefix {
            start,
            through,
            top,
            key: None,
            manifest: None,
            top_key: None,
            top_manifest: None,
        }
    }
}

/// Copy's cursor for one topic and raw table: every manifest of the topic named before
/// `manifest` has each object it lists in the ledger (loaded, or skipped as loaded by others),
/// whatever filter the runs that loaded them used. Copy moves it only over manifests it found
/// loaded in full, and back before one it finds is not (one that landed late). `checked` is
/// the catalog head (epoch and next offsets) as it was when copy last read every manifest of
/// the topic: offsets the head says are archived up to there need no second full listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCursor {
    pub manifest: String,
    pub checked: Option<CheckedHead>,
}

/// The head's positions a full listing of the manifests accounted for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CheckedHead {
    pub epoch: i32,
    pub next: BTreeMap<i32, i64>,
    /// The topic's keys in the index of change (`_topics/`) when copy last left nothing of it
    /// to load: while they are the same, no manifest was stored since, and copy passes the
    /// topic by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index: Vec<String>,
}

/// The name of the cursor table beside a ledger: `<ledger>__cursor`, in at most 63 bytes
/// (PostgreSQL's and Redshift's identifier limit; a hash of the ledger's name when longer).
pub fn cursor_table(names: &Names) -> String {
    let t = format!("{}__cursor", names.ledger);
    if t.len() <= 63 {
        return t;
    }
    let h = &crate::util::sha256_hex(names.ledger.as_bytes())[..8];
    let mut cut = 54;
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{h}", &t[..cut])
}

/// One ledger row, as the audit reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    pub key: String,
    pub size: i64,
    pub sha256: String,
    pub rows_loaded: i64,
    pub rows_rejected: i64,
    pub rows_skipped: i64,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub epoch: Option<i32>,
    pub first_offset: Option<i64>,
    pub last_offset: Option<i64>,
    pub manifest: Option<String>,
}

impl<'a> Ledger<'a> {
    /// The ledger of this warehouse (its configured ledger table).
    pub fn new(wh: &'a mut dyn Warehouse) -> Self {
        Ledger { wh }
    }

    /// The ledger table, schema-qualified and quoted.
    fn table(&self) -> String {
        let n = self.wh.names();
        n.qualified(&n.ledger)
    }

    /// A string literal as the warehouse reads it.
    fn literal(&self, s: &str) -> String {
        self.wh.literal(s)
    }

    /// `target_table` of the configured raw table's rows.
    fn target(&self) -> String {
        let n = self.wh.names();
        self.literal(&format!("{}.{}", n.schema, n.raw))
    }

    /// What the read-only questions say when a query fails: the ledger, by name.
    fn reading(&self) -> String {
        format!("reading the ledger {}", self.wh.names().ledger)
    }

    /// Runs these queries in order and returns all their rows. The one place that knows "no
    /// ledger yet": when the table does not exist, nothing is asked and there are no rows.
    fn read(&mut self, queries: Vec<String>, what: &str) -> Result<Vec<Row>> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let ledger = self.wh.names().ledger.clone();
        let s = self.wh.session();
        if !s.table_exists(&ledger)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for q in queries {
            let (_, rows) = s.query_text(&q).with_context(|| what.to_string())?;
            out.extend(rows.into_iter().map(Row));
        }
        Ok(out)
    }

    /// The first column of a one-column query over these values, IN_LIST (quoted) at a time;
    /// `sql(table, list)` writes it.
    fn select_in(
        &mut self,
        values: &[String],
        sql: &dyn Fn(&str, &str) -> String,
    ) -> Result<HashSet<String>> {
        let table = self.table();
        let quoted: Vec<String> = values.iter().map(|v| self.literal(v)).collect();
        let queries = quoted
            .chunks(IN_LIST)
            .map(|c| sql(&table, &c.join(", ")))
            .collect();
        let rows = self.read(queries, "reading the ledger")?;
        Ok(rows.iter().filter_map(|r| r.text(0)).collect())
    }

    /// Which of these keys the ledger holds for the configured raw table.
    pub fn keys_loaded(&mut self, keys: &[String]) -> Result<HashSet<String>> {
        let target = self.target();
        self.select_in(keys, &|table, list| {
            format!(
                r#"SELECT DISTINCT "key" FROM {table} WHERE "target_table" = {target} AND "key" IN ({list})"#
            )
        })
    }

    /// Every key the ledger holds for the configured raw table (none when the ledger does not
    /// exist yet).
    pub fn loaded_keys(&mut self) -> Result<HashSet<String>> {
        let sql = format!(
            r#"SELECT "key" FROM {} WHERE "target_table" = {}"#,
            self.table(),
            self.target()
        );
        let rows = self.read(vec![sql], "reading the ledger")?;
        Ok(rows.iter().filter_map(|r| r.text(0)).collect())
    }

    /// The cursor table, schema-qualified and quoted.
    fn cursor_table(&self) -> String {
        let n = self.wh.names();
        n.qualified(&cursor_table(n))
    }

    /// Copy's cursor for a topic and the configured raw table ([`CopyCursor`]); None when copy
    /// has not stored one yet (no cursor table, or no row: copy then reads every manifest).
    pub fn copy_cursor(&mut self, topic: &str) -> Result<Option<CopyCursor>> {
        let table = cursor_table(self.wh.names());
        if !self.wh.session().table_exists(&table)? {
            return Ok(None);
        }
        let sql = format!(
            r#"SELECT "manifest", "checked_head" FROM {} WHERE "target_table" = {} AND "topic" = {}"#,
            self.cursor_table(),
            self.target(),
            self.literal(topic)
        );
        let (_, rows) = self
            .wh
            .session()
            .query_text(&sql)
            .context("reading copy's cursor")?;
        let Some(r) = rows.into_iter().next().map(Row) else {
            return Ok(None);
        };
        let checked = match r.text(1) {
            Some(t) => Some(
                serde_json::from_str(&t)
                    .with_context(|| format!("copy's cursor: checked_head {t:?} is not JSON"))?,
            ),
            None => None,
        };
        Ok(r.text(0).map(|manifest| CopyCursor { manifest, checked }))
    }

    /// What copy's cursors recorded of many (raw table, topic) pairs at once (a run over many
    /// topics asks before it takes any table's lock): one query for the schema's tables, and
    /// one per 200 pairs whose cursor table exists. Keyed by (raw table, topic); a pair copy
    /// has no cursor for is absent.
    pub fn checked_heads(
        &mut self,
        pairs: &[(Names, String)],
    ) -> Result<HashMap<(String, String), CheckedHead>> {
        let mut out = HashMap::new();
        let Some((first, _)) = pairs.first() else {
            return Ok(out);
        };
        let sql = format!(
            r#"SELECT "table_name" FROM "information_schema"."tables" WHERE "table_schema" = {}"#,
            self.literal(&first.schema)
        );
        let (_, rows) = self
            .wh
            .session()
            .query_text(&sql)
            .context("listing the warehouse's tables")?;
        let tables: HashSet<String> = rows.into_iter().filter_map(|r| Row(r).text(0)).collect();
        let asked: Vec<String> = pairs
            .iter()
            .filter(|(n, _)| n.schema == first.schema && tables.contains(&cursor_table(n)))
            .map(|(n, topic)| {
                format!(
                    r#"SELECT {raw} AS "raw", {t} AS "topic", "checked_head" FROM {} WHERE "target_table" = {} AND "topic" = {t}"#,
                    n.qualified(&cursor_table(n)),
                    self.literal(&format!("{}.{}", n.schema, n.raw)),
                    raw = self.literal(&n.raw),
                    t = self.literal(topic),
                )
            })
            .collect();
        for chunk in asked.chunks(200) {
            let (_, rows) = self
                .wh
                .session()
                .query_text(&chunk.join("\nUNION ALL\n"))
                .context("reading copy's cursors")?;
            for r in rows.into_iter().map(Row) {
                let (Some(raw), Some(topic), Some(t)) = (r.text(0), r.text(1), r.text(2)) else {
                    continue;
                };
                let c: CheckedHead = serde_json::from_str(&t)
                    .with_context(|| format!("copy's cursor: checked_head {t:?} is not JSON"))?;
                out.insert((raw, topic), c);
            }
        }
        Ok(out)
    }

    /// Stores copy's cursor for a topic and the configured raw table (replacing the row, in one
    /// transaction: both dialects have DELETE and INSERT, not an upsert).
    pub fn store_copy_cursor(&mut self, topic: &str, c: &CopyCursor) -> Result<()> {
        let table = self.cursor_table();
        let (target, topic_l) = (self.target(), self.literal(topic));
        let checked = match &c.checked {
            Some(h) => self.literal(&serde_json::to_string(h)?),
            None => "NULL".into(),
        };
        let now = self.wh.dialect().now();
        let stmts = [
            format!(
                r#"DELETE FROM {table} WHERE "target_table" = {target} AND "topic" = {topic_l}"#
            ),
            format!(
                r#"INSERT INTO {table} ("target_table", "topic", "manifest", "checked_head", "updated_at") VALUES ({target}, {topic_l}, {}, {checked}, {now})"#,
                self.literal(&c.manifest)
            ),
        ];
        self.wh
            .session()
            .run_in_transaction(&stmts)
            .with_context(|| format!("storing copy's cursor for topic {topic}"))
    }

    /// Which of these manifests (names) of a topic have every object they list in the ledger
    /// of the configured raw table, counted by the rows that name the manifest. A manifest
    /// whose objects are recorded under another manifest's name (listed twice) is not among
    /// them: the caller reads it and asks by key.
    pub fn manifests_loaded(&mut self, topic: &str, names: &[String]) -> Result<HashSet<String>> {
        let topic = self.literal(topic);
        let target = self.target();
        self.select_in(names, &|table, list| {
            format!(
                r#"SELECT "manifest" FROM {table} WHERE "target_table" = {target} AND "topic" = {topic} AND "manifest" IN ({list}) GROUP BY "manifest" HAVING count(*) >= max("manifest_objects")"#
            )
        })
    }

    /// Offset ranges (inclusive) the ledger records as loaded that touch these jobs' ranges,
    /// per (topic, partition, epoch). Reads only the rows near the jobs, not the history.
    pub fn loaded_ranges(&mut self, jobs: &[LoadJob]) -> Result<LoadedRanges> {
        let mut bounds: BTreeMap<(String, i32, i32), (i64, i64)> = BTreeMap::new();
        for r in jobs.iter().filter_map(|j| j.range.as_ref()) {
            let b = bounds
                .entry((r.topic.clone(), r.partition, r.epoch))
                .or_insert((r.first, r.last));
            *b = (b.0.min(r.first), b.1.max(r.last));
        }
        let conds: Vec<String> = bounds
            .iter()
            .map(|((t, p, e), (f, l))| {
                format!(
                    r#"("topic" = {} AND "partition_id" = {p} AND "epoch" = {e} AND "last_offset" >= {f} AND "first_offset" <= {l})"#,
                    self.literal(t)
                )
            })
            .collect();
        let queries = if conds.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                r#"SELECT "topic", "partition_id", "epoch", "first_offset", "last_offset" FROM {} WHERE "target_table" = {} AND "first_offset" IS NOT NULL AND ({})"#,
                self.table(),
                self.target(),
                conds.join(" OR ")
            )]
        };
        let mut out = LoadedRanges::new();
        for r in self.read(queries, "reading the ledger's offset ranges")? {
            let need = |i: usize| -> Result<i64> {
                r.get(i)?
                    .with_context(|| format!("ledger offset value {:?}", r.text(i)))
            };
            let id = (
                r.text(0).unwrap_or_default(),
                need(1)? as i32,
                need(2)? as i32,
            );
            out.entry(id)
                .or_default()
                .push(OffsetSpan::new(need(3)?, need(4)?));
        }
        Ok(out)
    }

    /// Totals of the ledger's rows for a topic (one aggregate query).
    pub fn summary(&mut self, topic: &str) -> Result<LedgerSummary> {
        let sql = format!(
            r#"SELECT CAST(count(*) AS BIGINT) AS "objects", CAST(coalesce(sum("size"), 0) AS BIGINT) AS "bytes", CAST(coalesce(sum("rows_loaded"), 0) AS BIGINT) AS "loaded", CAST(coalesce(sum("rows_rejected"), 0) AS BIGINT) AS "rejected", CAST(coalesce(sum("rows_skipped"), 0) AS BIGINT) AS "skipped", {} AS "last_load" FROM {} WHERE "target_table" = {} AND "topic" = {}"#,
            self.wh.dialect().epoch(r#"max("loaded_at")"#),
            self.table(),
            self.target(),
            self.literal(topic)
        );
        let what = self.reading();
        let Some(r) = self.read(vec![sql], &what)?.into_iter().next() else {
            return Ok(LedgerSummary::default());
        };
        Ok(LedgerSummary {
            objects: r.count(0)?,
            bytes: r.count(1)?,
            rows_loaded: r.count(2)?,
            rows_rejected: r.count(3)?,
            rows_skipped: r.count(4)?,
            last_load_at: r.get(5)?.and_then(|s| DateTime::from_timestamp(s, 0)),
        })
    }

    /// Per partition of a topic's epoch, how far its offsets are loaded without a hole. Two
    /// queries; the holes are found by the database (a window over each partition's ranges).
    pub fn loaded_prefixes(&mut self, topic: &str, epoch: i32) -> Result<BTreeMap<i32, Prefix>> {
        let table = self.table();
        let filter = format!(
            r#""target_table" = {} AND "topic" = {} AND "epoch" = {epoch} AND "first_offset" IS NOT NULL"#,
            self.target(),
            self.literal(topic)
        );
        let sql = format!(
            r#"SELECT "partition_id", CAST(min("first_offset") AS BIGINT) AS "start", CAST(coalesce(min(CASE WHEN "first_offset" > "prev_max" + 1 THEN "prev_max" END), max("last_offset")) AS BIGINT) AS "through", CAST(max("last_offset") AS BIGINT) AS "top" FROM ( SELECT "partition_id", "first_offset", "last_offset", max("last_offset") OVER (PARTITION BY "partition_id" ORDER BY "first_offset", "last_offset" ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS "prev_max" FROM {table} WHERE {filter}) "x" GROUP BY "partition_id""#
        );
        let what = self.reading();
        let mut out = BTreeMap::new();
        for r in self.read(vec![sql], &what)? {
            let (Some(p), Some(start), Some(through), Some(top)) =
                (r.get::<i32>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)
            else {
                continue;
            };
            out.insert(p, Prefix::new(start, through, top));
        }
        if out.is_empty() {
            return Ok(out);
        }
        // The objects that name the times: the newest holding records at or below `through`
        // and `top` (an object of holes only, such as an aborted transaction's, has no time).
        let holds = r#"("rows_loaded" + "rows_rejected" + coalesce("rows_skipped", 0)) > 0"#;
        let upto = |f: &dyn Fn(&Prefix) -> i64| -> String {
            let conds: Vec<String> = out
                .iter()
                .map(|(p, x)| format!(r#"("partition_id" = {p} AND "last_offset" <= {})"#, f(x)))
                .collect();
            format!(
                r#"CAST(max(CASE WHEN {} THEN "last_offset" END) AS BIGINT)"#,
                conds.join(" OR ")
            )
        };
        let sql = format!(
            r#"SELECT "partition_id", {} AS "through_at", {} AS "top_at" FROM {table} WHERE {filter} AND {holds} GROUP BY "partition_id""#,
            upto(&|x: &Prefix| x.through),
            upto(&|x: &Prefix| x.top),
        );
        let mut at: BTreeMap<i32, (Option<i64>, Option<i64>)> = BTreeMap::new();
        for r in self.read(vec![sql], &what)? {
            if let Some(p) = r.get::<i32>(0)? {
                at.insert(p, (r.get(1)?, r.get(2)?));
            }
        }
        let ends: Vec<String> = at
            .iter()
            .flat_map(|(p, (a, b))| [a, b].into_iter().flatten().map(move |o| (*p, *o)))
            .map(|(p, o)| format!(r#"("partition_id" = {p} AND "last_offset" = {o})"#))
            .collect();
        if ends.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            r#"SELECT "partition_id", "key", "manifest", "last_offset" FROM {table} WHERE {filter} AND {holds} AND ({}) ORDER BY "key""#,
            ends.join(" OR ")
        );
        for r in self.read(vec![sql], &what)? {
            let last = r.get::<i64>(3)?;
            let Some(p) = r.get::<i32>(0)? else { continue };
            let (Some(x), Some(&(through_at, top_at))) = (out.get_mut(&p), at.get(&p)) else {
                continue;
            };
            if last.is_some() && last == through_at && x.key.is_none() {
                x.key = r.text(1);
                x.manifest = r.text(2);
            }
            if last.is_some() && last == top_at && x.top_key.is_none() {
                x.top_key = r.text(1);
                x.top_manifest = r.text(2);
            }
        }
        Ok(out)
    }

    /// Every ledger row of the configured raw table (the audit reads them all, once).
    pub fn rows(&mut self) -> Result<Vec<LedgerRow>> {
        let sql = format!(
            r#"SELECT "key", "size", "sha256", "rows_loaded", "rows_rejected", coalesce("rows_skipped", 0) AS "skipped", "topic", "partition_id", "epoch", "first_offset", "last_offset", "manifest" FROM {} WHERE "target_table" = {} ORDER BY "key""#,
            self.table(),
            self.target()
        );
        let what = self.reading();
        let mut out = Vec::new();
        for r in self.read(vec![sql], &what)? {
            out.push(LedgerRow {
                key: r.text(0).unwrap_or_default(),
                size: r.count(1)?,
                sha256: r.text(2).unwrap_or_default(),
                rows_loaded: r.count(3)?,
                rows_rejected: r.count(4)?,
                rows_skipped: r.count(5)?,
                topic: r.text(6),
                partition: r.get(7)?,
                epoch: r.get(8)?,
                first_offset: r.get(9)?,
                last_offset: r.get(10)?,
                manifest: r.text(11),
            });
        }
        Ok(out)
    }

    /// The raw table's row count and the rows the ledger says were loaded into it, read by one
    /// statement (one snapshot, so a concurrent load cannot make them differ). None when
    /// either table does not exist yet.
    pub fn raw_against_ledger(&mut self) -> Result<Option<(i64, i64)>> {
        let n = self.wh.names().clone();
        if !self.wh.session().table_exists(&n.raw)? {
            return Ok(None);
        }
        let sql = format!(
            r#"SELECT (SELECT CAST(count(*) AS BIGINT) FROM {}) AS "raw_rows", (SELECT CAST(coalesce(sum("rows_loaded"), 0) AS BIGINT) FROM {} WHERE "target_table" = {}) AS "ledger_rows""#,
            n.qualified(&n.raw),
            self.table(),
            self.target()
        );
        let rows = self.read(
            vec![sql],
            "counting the raw table's rows against the ledger",
        )?;
        match rows.first() {
            Some(r) if r.0.len() >= 2 => Ok(Some((r.count(0)?, r.count(1)?))),
            _ => Ok(None),
        }
    }

    /// The INSERT of an object's ledger row with every value a literal (`literal` quotes text
    /// the dialect's way). The counts may be placeholders, in a plan.
    pub fn insert_sql(
        names: &Names,
        job: &LoadJob,
        loaded: impl Display,
        rejected: impl Display,
        skipped: u64,
        literal: &dyn Fn(&str) -> String,
    ) -> String {
        let null = || "NULL".to_string();
        let r = job.range.as_ref();
        let num = |v: Option<i64>| v.map_or_else(null, |v| v.to_string());
        format!(
            "INSERT INTO {} ({})\nVALUES ({}, {}, {}, {loaded}, {rejected}, {}, {}, {}, {}, {}, {}, {skipped}, {}, {})",
            names.qualified(&names.ledger),
            quote_idents(&COLUMNS),
            literal(&job.key),
            job.size,
            literal(job.expected_sha256.as_deref().unwrap_or("")),
            literal(&format!("{}.{}", names.schema, names.raw)),
            r.map_or_else(null, |r| literal(&r.topic)),
            num(r.map(|r| r.partition.into())),
            num(r.map(|r| r.epoch.into())),
            num(r.map(|r| r.first)),
            num(r.map(|r| r.last)),
            job.manifest.as_deref().map_or_else(null, literal),
            num(job.manifest_objects.map(i64::from)),
        )
    }

    /// Records an object's load in its PostgreSQL transaction: the same INSERT, its values
    /// sent as parameters.
    pub fn insert_in(
        tx: &mut postgres::Transaction<'_>,
        names: &Names,
        job: &LoadJob,
        result: &LoadResult,
    ) -> Result<()> {
        let r = job.range.as_ref();
        tx.execute(
            &format!(
                "INSERT INTO {} ({}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                names.qualified(&names.ledger),
                quote_idents(&COLUMNS)
            ),
            &[
                &job.key,
                &(job.size as i64),
                &job.expected_sha256.clone().unwrap_or_default(),
                &(result.loaded as i64),
                &(result.rejected as i64),
                &format!("{}.{}", names.schema, names.raw),
                &r.map(|r| r.topic.clone()),
                &r.map(|r| r.partition),
                &r.map(|r| r.epoch),
                &r.map(|r| r.first),
                &r.map(|r| r.last),
                &(result.skipped as i64),
                &job.manifest,
                &job.manifest_objects.map(|n| n as i32),
            ],
        )
        .sql_with(|| format!("recording {} in the ledger", job.key))?;
        Ok(())
    }

    /// The INSERT as a PostgreSQL plan (`copy --dry-run`) shows it: key and size, the rest
    /// measured.
    pub fn insert_outline(names: &Names, job: &LoadJob) -> String {
        format!(
            "INSERT INTO {} ({}) VALUES ({}, {}, ...)",
            names.qualified(&names.ledger),
            quote_idents(&COLUMNS[..6]),
            super::quote_literal(&job.key),
            job.size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::ObjectStore;
    use crate::records::Layout;
    use crate::warehouse::session::{Rows, SqlSession};
    use crate::warehouse::{LoadOptions, OffsetRange};

    /// A session that logs what it is asked and answers queries by script.
    struct Script {
        ledger_exists: bool,
        log: Vec<String>,
        answer: fn(&str) -> Rows,
    }

    impl SqlSession for Script {
        fn describe(&self) -> String {
            "script".into()
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
        fn table_exists(&mut self, table: &str) -> Result<bool> {
            self.log.push(format!("exists {table}"));
            Ok(self.ledger_exists || (table != "l" && table != "l__cursor"))
        }
        fn query_text(&mut self, sql: &str) -> Result<(Vec<String>, Rows)> {
            self.log.push(sql.to_string());
            Ok((Vec::new(), (self.answer)(sql)))
        }
    }

    /// A warehouse that is only its session and names.
    struct Wh(Script, Names);

    impl Warehouse for Wh {
        fn session(&mut self) -> &mut dyn SqlSession {
            &mut self.0
        }
        fn names(&self) -> &Names {
            &self.1
        }
        fn describe(&self) -> String {
            "wh".into()
        }
        fn try_lock(&mut self, _: &str) -> Result<bool> {
            unimplemented!()
        }
        fn lock_wait(&mut self, _: &str) -> Result<()> {
            unimplemented!()
        }
        fn load(
            &mut self,
            _: &[LoadJob],
            _: &dyn ObjectStore,
            _: &crate::records::Codec,
            _: &LoadOptions,
            _: &mut dyn FnMut(&LoadResult),
        ) -> Result<Vec<LoadResult>> {
            unimplemented!()
        }
        fn record_skipped(&mut self, _: &LoadJob, _: u64) -> Result<()> {
            unimplemented!()
        }
        fn load_sql(&self, _: &[LoadJob], _: &Layout) -> Vec<String> {
            unimplemented!()
        }
    }

    fn wh(ledger_exists: bool, answer: fn(&str) -> Rows) -> Wh {
        let names = Names {
            schema: "s".into(),
            raw: "r".into(),
            ledger: "l".into(),
            rejects: "x".into(),
        };
        let s = Script {
            ledger_exists,
            log: Vec::new(),
            answer,
        };
        Wh(s, names)
    }

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(String::from)).collect()
    }

    fn job(key: &str) -> LoadJob {
        LoadJob {
            key: key.into(),
            range: Some(OffsetRange {
                topic: "t".into(),
                partition: 1,
                epoch: 0,
                first: 5,
                last: 9,
            }),
            ..Default::default()
        }
    }

    /// No ledger table yet: every question has the empty answer, and only the table's
    /// existence is asked (nothing at all when there is nothing to ask about).
    #[test]
    fn no_ledger_yet_asks_nothing_more() {
        let mut w = wh(false, |sql| panic!("asked {sql}"));
        let mut l = Ledger::new(&mut w);
        assert!(l.keys_loaded(&[]).unwrap().is_empty());
        assert!(l.loaded_ranges(&[LoadJob::default()]).unwrap().is_empty());
        assert!(l.keys_loaded(&["k".into()]).unwrap().is_empty());
        assert!(l.loaded_keys().unwrap().is_empty());
        assert_eq!(l.copy_cursor("t").unwrap(), None);
        assert!(l.manifests_loaded("t", &["m".into()]).unwrap().is_empty());
        assert!(l.loaded_ranges(&[job("a")]).unwrap().is_empty());
        assert_eq!(l.summary("t").unwrap(), LedgerSummary::default());
        assert!(l.loaded_prefixes("t", 0).unwrap().is_empty());
        assert!(l.rows().unwrap().is_empty());
        assert_eq!(l.raw_against_ledger().unwrap(), None);
        assert_eq!(w.0.log.len(), 10, "{:?}", w.0.log);
        assert_eq!(w.0.log[2], "exists l__cursor");
        assert!(w.0.log[..8]
            .iter()
            .enumerate()
            .all(|(i, s)| i == 2 || s == "exists l"));
        assert_eq!(w.0.log[8..], ["exists r", "exists l"]);
    }

    /// NULLs come back as None (or 0 for counts), never as text.
    #[test]
    fn nulls_are_none() {
        let mut w = wh(true, |sql| {
            if sql.starts_with("SELECT \"manifest\", \"checked_head\"") {
                vec![row(&[None, None])]
            } else if sql.starts_with("SELECT \"key\", \"size\"") {
                vec![row(&[
                    Some("k"),
                    Some("10"),
                    Some(""),
                    Some("3"),
                    Some("0"),
                    Some("0"),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ])]
            } else if sql.starts_with("SELECT CAST(count(*)") {
                vec![row(&[
                    Some("0"),
                    Some("0"),
                    Some("0"),
                    Some("0"),
                    Some("0"),
                    None,
                ])]
            } else if sql.starts_with("SELECT (SELECT") {
                vec![row(&[Some("4"), None])]
            } else if sql.starts_with("SELECT \"partition_id\", CAST") {
                vec![row(&[Some("0"), Some("0"), None, None])]
            } else {
                vec![row(&[None])]
            }
        });
        let mut l = Ledger::new(&mut w);
        assert_eq!(l.copy_cursor("t").unwrap(), None);
        let r = &l.rows().unwrap()[0];
        assert_eq!((r.key.as_str(), r.size, r.rows_loaded), ("k", 10, 3));
        assert_eq!((r.topic.clone(), r.partition, r.epoch), (None, None, None));
        assert_eq!(
            (r.first_offset, r.last_offset, r.manifest.clone()),
            (None, None, None)
        );
        assert_eq!(l.summary("t").unwrap(), LedgerSummary::default());
        assert_eq!(l.raw_against_ledger().unwrap(), Some((4, 0)));
        assert!(l.loaded_prefixes("t", 0).unwrap().is_empty());
        assert!(l.keys_loaded(&["k".into()]).unwrap().is_empty());
        assert!(l.loaded_keys().unwrap().is_empty());
        let err = format!("{:#}", l.loaded_ranges(&[job("a")]).unwrap_err());
        assert!(err.contains("ledger offset value None"), "{err}");
    }

    /// Values are asked about 500 at a time, the ledger's existence once.
    #[test]
    fn long_lists_are_asked_in_chunks() {
        let mut w = wh(true, |sql| {
            let n = sql.matches(", ").count() + 1;
            vec![row(&[Some(&n.to_string())])]
        });
        let keys: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
        let got = Ledger::new(&mut w).keys_loaded(&keys).unwrap();
        let want: HashSet<String> = ["500", "1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want);
        assert_eq!(w.0.log.len(), 4);
        assert_eq!(w.0.log[0], "exists l");
        assert!(w.0.log[1].starts_with(
            "SELECT DISTINCT \"key\" FROM \"s\".\"l\" WHERE \"target_table\" = 's.r' AND \"key\" IN ('k0', 'k1', "
        ));
    }

    /// An object with no offsets or manifest is written with NULLs.
    #[test]
    fn insert_without_range_writes_nulls() {
        let names = wh(true, |_| vec![]).1;
        let j = LoadJob {
            key: "a'b".into(),
            size: 7,
            ..Default::default()
        };
        assert_eq!(
            Ledger::insert_sql(&names, &j, 1, 2, 3, &super::super::quote_literal),
            "INSERT INTO \"s\".\"l\" (\"key\", \"size\", \"sha256\", \"rows_loaded\", \"rows_rejected\", \"target_table\", \"topic\", \"partition_id\", \"epoch\", \"first_offset\", \"last_offset\", \"rows_skipped\", \"manifest\", \"manifest_objects\")\n\
             VALUES ('a''b', 7, '', 1, 2, 's.r', NULL, NULL, NULL, NULL, NULL, 3, NULL, NULL)"
        );
    }
}
