//! Read-only questions to the ledger for `status`, `audit` and the completeness gate. Each is
//! one query whose answer is small (aggregates, or one row per object for the audit), in SQL
//! that PostgreSQL and Redshift both accept.

use super::{quote_literal, Warehouse};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// The true epoch seconds of a `timestamp` column written with `DEFAULT CURRENT_TIMESTAMP`
/// (the session's zone): its nominal value less the session's offset from UTC.
fn epoch_expr(col: &str) -> String {
    format!(
        "CAST(EXTRACT(EPOCH FROM {col}) - (EXTRACT(EPOCH FROM LOCALTIMESTAMP) - EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)) AS BIGINT)"
    )
}

fn opt_i64(v: &str) -> Result<Option<i64>> {
    if v == "NULL" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .with_context(|| format!("ledger value {v:?} is not a number"))
}

fn opt_str(v: &str) -> Option<String> {
    (v != "NULL").then(|| v.to_string())
}

fn time(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::from_timestamp(s, 0))
}

/// Runs a query on the ledger; no rows when there is no ledger yet.
fn ledger_query(wh: &mut dyn Warehouse, sql: &str) -> Result<Vec<Vec<String>>> {
    let ledger = wh.names().ledger.clone();
    let s = wh.session();
    if !s.table_exists(&ledger)? {
        return Ok(Vec::new());
    }
    let (_, rows) = s
        .query_text(sql)
        .with_context(|| format!("reading the ledger {ledger}"))?;
    Ok(rows)
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

/// Totals of the ledger's rows for a topic (one aggregate query).
pub fn summary(wh: &mut dyn Warehouse, topic: &str) -> Result<LedgerSummary> {
    let table = wh.names().qualified(&wh.names().ledger.clone());
    let sql = format!(
        "SELECT CAST(count(*) AS BIGINT) AS objects, CAST(coalesce(sum(size), 0) AS BIGINT) AS bytes, \
         CAST(coalesce(sum(rows_loaded), 0) AS BIGINT) AS loaded, CAST(coalesce(sum(rows_rejected), 0) AS BIGINT) AS rejected, \
         CAST(coalesce(sum(rows_skipped), 0) AS BIGINT) AS skipped, {} AS last_load \
         FROM {table} WHERE topic = {}",
        epoch_expr("max(loaded_at)"),
        quote_literal(topic)
    );
    let Some(r) = ledger_query(wh, &sql)?.into_iter().next() else {
        return Ok(LedgerSummary::default());
    };
    let n = |i: usize| opt_i64(&r[i]).map(|v| v.unwrap_or(0));
    Ok(LedgerSummary {
        objects: n(0)?,
        bytes: n(1)?,
        rows_loaded: n(2)?,
        rows_rejected: n(3)?,
        rows_skipped: n(4)?,
        last_load_at: time(opt_i64(&r[5])?),
    })
}

/// A partition's loaded offsets from their start: `start..=through` is loaded without a hole
/// (`top` is the highest loaded offset, above `through` when there is a hole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prefix {
    pub start: i64,
    pub through: i64,
    pub top: i64,
    /// An object whose last offset is `through`, and the manifest that listed it.
    pub key: Option<String>,
    pub manifest: Option<String>,
    /// The same for `top`.
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

/// Per partition of a topic's epoch, how far its offsets are loaded without a hole. Two
/// queries; the holes are found by the database (a window over each partition's ranges).
pub fn loaded_prefixes(
    wh: &mut dyn Warehouse,
    topic: &str,
    epoch: i32,
) -> Result<BTreeMap<i32, Prefix>> {
    let table = wh.names().qualified(&wh.names().ledger.clone());
    let filter = format!(
        "topic = {} AND epoch = {epoch} AND first_offset IS NOT NULL",
        quote_literal(topic)
    );
    let sql = format!(
        "SELECT partition_id, CAST(min(first_offset) AS BIGINT) AS start, \
         CAST(coalesce(min(CASE WHEN first_offset > prev_max + 1 THEN prev_max END), max(last_offset)) AS BIGINT) AS through, \
         CAST(max(last_offset) AS BIGINT) AS top FROM (\
         SELECT partition_id, first_offset, last_offset, max(last_offset) OVER (PARTITION BY partition_id \
         ORDER BY first_offset, last_offset ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max \
         FROM {table} WHERE {filter}) x GROUP BY partition_id"
    );
    let mut out = BTreeMap::new();
    for r in ledger_query(wh, &sql)? {
        let (Some(p), Some(start), Some(through), Some(top)) = (
            opt_i64(&r[0])?,
            opt_i64(&r[1])?,
            opt_i64(&r[2])?,
            opt_i64(&r[3])?,
        ) else {
            continue;
        };
        out.insert(p as i32, Prefix::new(start, through, top));
    }
    if out.is_empty() {
        return Ok(out);
    }
    let ends: Vec<String> = out
        .iter()
        .map(|(p, x)| {
            format!(
                "(partition_id = {p} AND last_offset IN ({}, {}))",
                x.through, x.top
            )
        })
        .collect();
    let sql = format!(
        "SELECT partition_id, key, manifest, last_offset FROM {table} WHERE {filter} AND ({}) ORDER BY key",
        ends.join(" OR ")
    );
    for r in ledger_query(wh, &sql)? {
        let last = opt_i64(&r[3])?;
        if let Some(x) = opt_i64(&r[0])?.and_then(|p| out.get_mut(&(p as i32))) {
            if last == Some(x.through) {
                x.key = Some(r[1].clone());
                x.manifest = opt_str(&r[2]);
            }
            if last == Some(x.top) {
                x.top_key = Some(r[1].clone());
                x.top_manifest = opt_str(&r[2]);
            }
        }
    }
    Ok(out)
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

/// Every ledger row of the configured raw table (the audit reads them all, once).
pub fn rows(wh: &mut dyn Warehouse) -> Result<Vec<LedgerRow>> {
    let n = wh.names().clone();
    let sql = format!(
        "SELECT key, size, sha256, rows_loaded, rows_rejected, coalesce(rows_skipped, 0) AS skipped, topic, \
         partition_id, epoch, first_offset, last_offset, manifest FROM {} WHERE target_table = {} ORDER BY key",
        n.qualified(&n.ledger),
        quote_literal(&format!("{}.{}", n.schema, n.raw))
    );
    let mut out = Vec::new();
    for r in ledger_query(wh, &sql)? {
        let n = |i: usize| opt_i64(&r[i]).map(|v| v.unwrap_or(0));
        out.push(LedgerRow {
            key: r[0].clone(),
            size: n(1)?,
            sha256: r[2].clone(),
            rows_loaded: n(3)?,
            rows_rejected: n(4)?,
            rows_skipped: n(5)?,
            topic: opt_str(&r[6]),
            partition: opt_i64(&r[7])?.map(|v| v as i32),
            epoch: opt_i64(&r[8])?.map(|v| v as i32),
            first_offset: opt_i64(&r[9])?,
            last_offset: opt_i64(&r[10])?,
            manifest: opt_str(&r[11]),
        });
    }
    Ok(out)
}

/// The raw table's row count and the rows the ledger says were loaded into it, read by one
/// statement (one snapshot, so a concurrent load cannot make them differ).
pub fn raw_against_ledger(wh: &mut dyn Warehouse) -> Result<Option<(i64, i64)>> {
    let n = wh.names().clone();
    let s = wh.session();
    if !s.table_exists(&n.raw)? || !s.table_exists(&n.ledger)? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT (SELECT CAST(count(*) AS BIGINT) FROM {}) AS raw_rows, \
         (SELECT CAST(coalesce(sum(rows_loaded), 0) AS BIGINT) FROM {} WHERE target_table = {}) AS ledger_rows",
        n.qualified(&n.raw),
        n.qualified(&n.ledger),
        quote_literal(&format!("{}.{}", n.schema, n.raw))
    );
    let (_, rows) = s
        .query_text(&sql)
        .context("counting the raw table's rows against the ledger")?;
    let r = rows.into_iter().next().unwrap_or_default();
    match (r.first(), r.get(1)) {
        (Some(a), Some(b)) => Ok(Some((opt_i64(a)?.unwrap_or(0), opt_i64(b)?.unwrap_or(0)))),
        _ => Ok(None),
    }
}
