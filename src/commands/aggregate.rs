//! `aggregate`: build the batch view into `<view>__new` while readers use the old one, check
//! the gates, then swap in one short transaction (`<view>` -> `<view>__prev`, new -> `<view>`).

use crate::cli::AggregateArgs;
use crate::config::{Settings, ViewSettings};
use crate::error::Error;
use crate::output::{format_table, Output};
use crate::progress::{self, PartitionProgress};
use crate::report::Report;
use crate::warehouse::views::{record_build, BuildRecord, GateResult};
use crate::warehouse::views::{version_name, ViewTable};
use crate::warehouse::{self, quote_ident, strip_comments, Names, SqlSession, Warehouse};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct AggregateOptions {
    pub dry_run: bool,
    pub rollback: bool,
    pub force: bool,
    pub print: Option<usize>,
    pub wait: bool,
    pub view: String,
    /// The view's SELECT (a template with {schema}/{raw} placeholders).
    pub view_sql: String,
    pub min_rows: i64,
    pub max_row_change: Option<f64>,
    pub max_sum_change: BTreeMap<String, f64>,
    pub non_null_columns: Vec<String>,
    pub keep_versions: u32,
    /// The completeness gate: refuse unless every partition is complete through this time.
    pub require_complete_through: Option<DateTime<Utc>>,
    /// Where each partition stands (read once by `exec` when a view has the gate).
    pub progress: Option<Vec<PartitionProgress>>,
}

/// The completeness gate, before anything is built: Err(gate) naming the partitions that
/// hold the data back from the time asked for.
fn check_complete(opts: &AggregateOptions, out: &Output) -> Result<Option<DateTime<Utc>>> {
    let Some(t) = opts.require_complete_through else {
        return Ok(None);
    };
    let parts = opts.progress.as_deref().unwrap_or_default();
    let through = progress::complete_through(parts);
    if through.is_some_and(|c| c >= t) {
        return Ok(through);
    }
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let why = format!(
        "gate require_complete_through: the data is complete through {}, not {}: held back by {}",
        through.map_or("nothing".to_string(), fmt),
        fmt(t),
        progress::holding_back(parts, t).join(", ")
    );
    if opts.force {
        out.warn(&format!(
            "view {}: {why}; building anyway (--force)",
            opts.view
        ));
        return Ok(through);
    }
    Err(Error::Gate(format!(
        "view {}: {why}; kept {} as it was and built nothing (run ingest and copy, or use --force)",
        opts.view, opts.view
    ))
    .into())
}

/// What a gate compares.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum Check {
    /// The new value must be at least this.
    AtLeast(i64),
    /// The relative change against the current view must be at most this.
    MaxChange(f64),
    /// The new value must be zero.
    Zero,
}

/// One gate: a query on the new build (and the same on the live view, for changes).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gate {
    pub name: String,
    pub new_sql: String,
    pub old_sql: Option<String>,
    pub check: Check,
}

/// The statements of one rebuild, split by phase (shown by --dry-run, checked by the tests).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    /// Outside any transaction that locks the view: readers keep reading.
    pub build: Vec<String>,
    /// Gate queries, each returning one bigint.
    pub gates: Vec<Gate>,
    /// One short transaction: only renames (and dropping the oldest version).
    pub swap: Vec<String>,
}

impl Plan {
    /// Every statement, in order (for the dialect test and --dry-run).
    pub fn statements(&self) -> Vec<String> {
        let mut v = self.build.clone();
        for g in &self.gates {
            v.push(g.new_sql.clone());
            v.extend(g.old_sql.clone());
        }
        v.extend(self.swap.clone());
        v
    }
}

/// `versions`: which previous versions (1 = `__prev`, 2 = `__prev2`, ...) exist now.
pub fn plan(names: &Names, opts: &AggregateOptions, view_exists: bool, versions: &[u32]) -> Plan {
    let v = &opts.view;
    let q = |t: &str| names.qualified(t);
    let new = version_name(v, ViewTable::New);
    let select = strip_comments(&names.render(&opts.view_sql, &[("view", v)]));
    let build = vec![
        format!("DROP TABLE IF EXISTS {}", q(&new)),
        format!("CREATE TABLE {} AS\n{select}", q(&new)),
    ];
    let mut swap = vec![];
    if view_exists {
        let keep = opts.keep_versions.max(1);
        swap.push(format!(
            "DROP TABLE IF EXISTS {}",
            q(&version_name(v, ViewTable::Prev(keep)))
        ));
        // Shift the kept versions up by one.
        for n in (1..keep).rev().filter(|n| versions.contains(n)) {
            swap.push(format!(
                "ALTER TABLE {} RENAME TO {}",
                q(&version_name(v, ViewTable::Prev(n))),
                quote_ident(&version_name(v, ViewTable::Prev(n + 1)))
            ));
        }
        swap.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            q(v),
            quote_ident(&version_name(v, ViewTable::Prev(1)))
        ));
    }
    swap.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        q(&new),
        quote_ident(v)
    ));

    let on = |t: &str, expr: &str| format!("SELECT CAST({expr} AS BIGINT) FROM {}", q(t));
    let mut gates = vec![Gate {
        name: "min_rows".into(),
        new_sql: on(&new, "count(*)"),
        old_sql: None,
        check: Check::AtLeast(opts.min_rows),
    }];
    if let Some(max) = opts.max_row_change {
        gates.push(Gate {
            name: "max_row_change".into(),
            new_sql: on(&new, "count(*)"),
            old_sql: view_exists.then(|| on(v, "count(*)")),
            check: Check::MaxChange(max),
        });
    }
    for (col, max) in &opts.max_sum_change {
        let e = format!("sum({})", quote_ident(col));
        gates.push(Gate {
            name: format!("max_sum_change({col})"),
            new_sql: on(&new, &e),
            old_sql: view_exists.then(|| on(v, &e)),
            check: Check::MaxChange(*max),
        });
    }
    for col in &opts.non_null_columns {
        gates.push(Gate {
            name: format!("non_null({col})"),
            new_sql: format!(
                "SELECT count(*) FROM {} WHERE {} IS NULL",
                q(&new),
                quote_ident(col)
            ),
            old_sql: None,
            check: Check::Zero,
        });
    }
    Plan { build, gates, swap }
}

/// The statements of `--rollback`: the previous view and the current one trade places.
pub fn rollback_plan(names: &Names, view: &str) -> Vec<String> {
    let q = |t: &str| names.qualified(t);
    let tmp = version_name(view, ViewTable::Swap);
    let prev = version_name(view, ViewTable::Prev(1));
    vec![
        format!("ALTER TABLE {} RENAME TO {}", q(view), quote_ident(&tmp)),
        format!("ALTER TABLE {} RENAME TO {}", q(&prev), quote_ident(view)),
        format!("ALTER TABLE {} RENAME TO {}", q(&tmp), quote_ident(&prev)),
    ]
}

#[derive(Debug, Default, Serialize)]
pub struct AggregateSummary {
    pub view: String,
    pub rows: i64,
    pub previous_rows: Option<i64>,
    pub seconds: f64,
    pub dry_run: bool,
    pub rolled_back: bool,
    pub plan: Option<Plan>,
    pub top: Option<(Vec<String>, Vec<Vec<String>>)>,
    /// Every gate's values.
    pub gates: Vec<GateResult>,
    /// What the data was complete through (with --require-complete-through).
    pub complete_through: Option<DateTime<Utc>>,
}

/// Judges one gate from its values; Some(reason naming both values) when it fails.
pub fn judge(g: &Gate, new: Option<i64>, old: Option<i64>) -> Option<String> {
    let n = new.unwrap_or(0);
    match g.check {
        Check::AtLeast(min) => {
            (n < min).then(|| format!("gate {}: the new view has {n}, fewer than {min}", g.name))
        }
        Check::Zero => {
            (n != 0).then(|| format!("gate {}: the new view has {n} rows with NULL", g.name))
        }
        Check::MaxChange(max) => {
            let o = old?;
            if o == 0 {
                return None;
            }
            let change = (n - o).abs() as f64 / o.abs() as f64;
            (change > max).then(|| {
                format!(
                    "gate {}: went from {o} to {n} ({:.1}%), more than {:.1}%",
                    g.name,
                    change * 100.0,
                    max * 100.0
                )
            })
        }
    }
}

/// The views this run rebuilds: all configured ones, or `--view`, with `--sql` applied.
fn selected_views(a: &AggregateArgs, s: &Settings) -> Result<Vec<ViewSettings>, Error> {
    let mut views = s.aggregate.views.clone();
    if let Some(name) = &a.view {
        views.retain(|v| &v.view == name);
        if views.is_empty() {
            return Err(Error::config(format!(
                "--view {name}: no such view in [aggregate]"
            )));
        }
    }
    if let Some(sql) = &a.sql {
        if views.len() > 1 {
            return Err(Error::config(
                "--sql needs --view when several views are configured",
            ));
        }
        views[0].sql = Some(sql.clone());
    }
    Ok(views)
}

/// `batchlayer aggregate`: rebuilds each selected view in turn, prints its plan (dry run) or
/// rows (`--print`), and hands its summary to `built` at once: a later view's failure leaves
/// the earlier views built, and reported. The report lists every view built.
pub fn exec(
    a: &AggregateArgs,
    s: &Settings,
    out: &Output,
    built: &mut dyn FnMut(&AggregateSummary) -> Result<()>,
) -> Result<Report> {
    let views = selected_views(a, s)?;
    let mut wh = warehouse::connect(&s.warehouse, &s.archive)?;
    let names = Names::from_settings(&s.warehouse);
    let now = Utc::now();
    let required = |vs: &ViewSettings| {
        a.require_complete_through
            .or(vs.require_complete_through)
            .map(|t| t.resolve(now, s.archive.utc_offset_secs))
    };
    let gated = !a.dry_run && !a.rollback && views.iter().any(|v| required(v).is_some());
    let store = if gated {
        Some(crate::archive::open(&s.archive)?)
    } else {
        None
    };
    let mut sums = Vec::with_capacity(views.len());
    for vs in &views {
        let progress = match &store {
            Some(store) if required(vs).is_some() => {
                Some(gate_progress(s, vs, store.as_ref(), wh.as_mut(), now)?)
            }
            _ => None,
        };
        let view_sql = match &vs.sql {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| Error::config(format!("view SQL {}: {e}", p.display())))?,
            None => warehouse::BATCH_VIEW.to_string(),
        };
        let view_sql = topic_tables(&view_sql, s)?;
        let opts = AggregateOptions {
            dry_run: a.dry_run,
            rollback: a.rollback,
            force: a.force,
            print: a.print,
            wait: !a.no_wait,
            view: vs.view.clone(),
            view_sql,
            min_rows: vs.min_rows,
            max_row_change: vs.max_row_change,
            max_sum_change: vs.max_sum_change.clone(),
            non_null_columns: vs.non_null_columns.clone(),
            keep_versions: vs.keep_versions,
            require_complete_through: required(vs),
            progress,
        };
        let sum = run(wh.as_mut(), &names, &opts, out)?;
        print_plan(&sum, out);
        built(&sum)?;
        sums.push(sum);
    }
    Ok(Report::Aggregate(sums))
}

/// Where each partition the view's completeness gate looks at stands: the configured
/// topic's, or with many topics those of every topic the view declares (`topics`).
fn gate_progress(
    s: &Settings,
    vs: &ViewSettings,
    store: &dyn crate::archive::ObjectStore,
    wh: &mut dyn Warehouse,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<progress::PartitionProgress>> {
    if !s.topics.multi() {
        return Ok(progress::snapshot(s, store, wh, s.status.lateness, now)?.partitions);
    }
    if vs.topics.is_empty() {
        return Err(Error::config(format!(
            "view {}: the completeness gate over many topics needs the view's topics (topics = [...] in its [aggregate] entry)",
            vs.view
        ))
        .into());
    }
    let mut all = Vec::new();
    for t in &vs.topics {
        // Each topic's ledger is its own raw table's: a connection of its own asks it.
        let ts = s.for_topic(t)?;
        let mut twh = warehouse::connect(&ts.warehouse, &ts.archive)?;
        let snap = progress::snapshot(&ts, store, twh.as_mut(), s.status.lateness, now)
            .with_context(|| format!("topic {t}"))?;
        for mut p in snap.partitions {
            p.topic = Some(t.clone());
            all.push(p);
        }
    }
    Ok(all)
}

/// The view SQL with each `{raw:TOPIC}` made that topic's raw table (schema-qualified,
/// quoted).
fn topic_tables(sql: &str, s: &Settings) -> Result<String> {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find("{raw:") {
        out += &rest[..i];
        let after = &rest[i + 5..];
        let Some(end) = after.find('}') else {
            return Err(Error::config("view SQL: {raw: without its closing }").into());
        };
        let topic = &after[..end];
        let ts = s.for_topic(topic)?;
        out += &Names::from_settings(&ts.warehouse).qualified(&ts.warehouse.raw_table);
        rest = &after[end + 1..];
    }
    out += rest;
    Ok(out)
}

/// A view's plan (dry run) and rows (`--print`), before its summary.
fn print_plan(sum: &AggregateSummary, out: &Output) {
    if let Some(p) = &sum.plan {
        for q in &p.build {
            out.plan(&format!("{q};"));
        }
        for g in &p.gates {
            out.plan(&format!("-- gate {} ({:?})", g.name, g.check));
            out.plan(&format!("{};", g.new_sql));
            if let Some(o) = &g.old_sql {
                out.plan(&format!("{o};"));
            }
        }
        out.plan("BEGIN;");
        for q in &p.swap {
            out.plan(&format!("{q};"));
        }
        out.plan("COMMIT;");
    }
    if let Some((cols, rows)) = &sum.top {
        if !out.json {
            out.table(&format_table(cols, rows));
        }
    }
}

/// `--rollback`: the previous version and the current view trade places.
fn rollback(
    sql: &mut dyn SqlSession,
    names: &Names,
    opts: &AggregateOptions,
    view_exists: bool,
    summary: &mut AggregateSummary,
) -> Result<()> {
    let v = &opts.view;
    let prev = version_name(v, ViewTable::Prev(1));
    if !sql.table_exists(&prev)? {
        bail!("no previous version {prev} to roll back to");
    }
    if !view_exists {
        bail!("view {v} does not exist; nothing to roll back from");
    }
    let stmts = rollback_plan(names, v);
    if opts.dry_run {
        summary.plan = Some(Plan {
            build: vec![],
            gates: vec![],
            swap: stmts,
        });
    } else {
        sql.run_in_transaction(&stmts)?;
        summary.rolled_back = true;
        summary.rows = sql
            .query_i64(&format!("SELECT count(*) FROM {}", names.qualified(v)))?
            .unwrap_or(0);
    }
    Ok(())
}

/// Runs the gate queries; returns the reasons of the gates that failed (and every gate's
/// values into the summary).
fn run_gates(
    sql: &mut dyn SqlSession,
    p: &Plan,
    summary: &mut AggregateSummary,
) -> Result<Vec<String>> {
    let mut failures = vec![];
    for g in &p.gates {
        let new = sql.query_i64(&g.new_sql)?;
        let old = match &g.old_sql {
            Some(q) => sql.query_i64(q)?,
            None => None,
        };
        if g.name == "min_rows" {
            summary.rows = new.unwrap_or(0);
        }
        let why = judge(g, new, old);
        summary.gates.push(GateResult {
            name: g.name.clone(),
            new,
            old,
            passed: why.is_none(),
        });
        failures.extend(why);
    }
    Ok(failures)
}

/// Keeps the refused build as `<view>__rejected` and returns the gate error (exit 4).
fn refuse(sql: &mut dyn SqlSession, names: &Names, v: &str, failures: &[String]) -> Result<()> {
    let rejected = version_name(v, ViewTable::Rejected);
    sql.run_in_transaction(&[
        format!("DROP TABLE IF EXISTS {}", names.qualified(&rejected)),
        format!(
            "ALTER TABLE {} RENAME TO {}",
            names.qualified(&version_name(v, ViewTable::New)),
            quote_ident(&rejected)
        ),
    ])?;
    Err(Error::Gate(format!(
        "view {v}: {}; kept {v} as it was, the new build is in {rejected} (use --force to swap anyway)",
        failures.join("; ")
    ))
    .into())
}

pub fn run(
    wh: &mut dyn Warehouse,
    names: &Names,
    opts: &AggregateOptions,
    out: &Output,
) -> Result<AggregateSummary> {
    let started = Instant::now();
    let v = opts.view.clone();
    let mut summary = AggregateSummary {
        view: v.clone(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !opts.dry_run {
        super::take_lock(
            wh,
            &format!("aggregate:{v}"),
            opts.wait,
            || format!("another aggregate of {v} holds the lock"),
            out,
        )?;
    }
    let sql = wh.session();
    let view_exists = sql.table_exists(&v)?;
    if opts.rollback {
        rollback(sql, names, opts, view_exists, &mut summary)?;
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let mut versions = vec![];
    for n in 1..opts.keep_versions.max(1) {
        if sql.table_exists(&version_name(&v, ViewTable::Prev(n)))? {
            versions.push(n);
        }
    }
    let p = plan(names, opts, view_exists, &versions);
    if opts.dry_run {
        summary.plan = Some(p);
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    summary.complete_through = check_complete(opts, out)?;
    for s in &p.build {
        sql.execute(s)?;
    }
    let failures = run_gates(sql, &p, &mut summary)?;
    if view_exists {
        summary.previous_rows =
            sql.query_i64(&format!("SELECT count(*) FROM {}", names.qualified(&v)))?;
    }
    let rec = BuildRecord {
        built_at: Utc::now(),
        rows: summary.rows,
        gates: summary.gates.clone(),
        forced: opts.force && !failures.is_empty(),
        required_complete_through: opts.require_complete_through,
        complete_through: summary.complete_through,
    };
    sql.execute(&record_build(
        names,
        &version_name(&v, ViewTable::New),
        &rec,
    )?)?;
    if !failures.is_empty() && !opts.force {
        refuse(sql, names, &v, &failures)?;
    }
    sql.run_in_transaction(&p.swap)?;
    if let Some(n) = opts.print {
        let q = format!(
            "SELECT * FROM {} ORDER BY 2 DESC, 1 LIMIT {n}",
            names.qualified(&v)
        );
        let (cols, rows) = sql.query_text(&q)?;
        summary.top = Some((cols, crate::warehouse::session::shown(rows)));
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::BATCH_VIEW;

    fn names() -> Names {
        Names {
            schema: "public".into(),
            raw: "batch_raw".into(),
            ledger: "l".into(),
            rejects: "r".into(),
        }
    }

    fn opts() -> AggregateOptions {
        AggregateOptions {
            view: "batch_layer".into(),
            view_sql: BATCH_VIEW.into(),
            min_rows: 1,
            max_row_change: Some(0.5),
            max_sum_change: [("sum_followers_count".to_string(), 0.3)]
                .into_iter()
                .collect(),
            non_null_columns: vec!["location".into()],
            keep_versions: 3,
            ..Default::default()
        }
    }

    /// Statements both PostgreSQL and Redshift accept: no PG-only syntax may creep in.
    #[test]
    fn statements_are_redshift_safe() {
        let mut all = vec![];
        for exists in [false, true] {
            all.extend(plan(&names(), &opts(), exists, &[1, 2]).statements());
        }
        all.extend(rollback_plan(&names(), "batch_layer"));
        let forbidden = [
            "::",
            "ON CONFLICT",
            "RETURNING",
            "MATERIALIZED",
            "CONCURRENTLY",
            "UNLOGGED",
            "ALTER TABLE IF EXISTS",
            "FILTER (",
            "DISTINCT ON",
            "SERIAL",
            "GENERATED",
            "CREATE OR REPLACE VIEW",
            "PG_",
            "ILIKE",
        ];
        for s in &all {
            let up = s.to_uppercase();
            for f in forbidden {
                assert!(!up.contains(f), "{f} in: {s}");
            }
            let first = up.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            assert!(
                [
                    "DROP TABLE",
                    "CREATE TABLE",
                    "ALTER TABLE",
                    "SELECT CAST(COUNT(*)",
                    "SELECT CAST(SUM(\"SUM_FOLLOWERS_COUNT\")",
                    "SELECT COUNT(*)"
                ]
                .iter()
                .any(|k| up.starts_with(k) || first == *k),
                "unexpected statement kind: {s}"
            );
        }
        let p = plan(&names(), &opts(), true, &[1, 2]);
        assert!(
            p.swap.iter().all(|s| !s.contains("CREATE")),
            "the swap must only rename and drop"
        );
        assert_eq!(
            p.swap,
            vec![
                "DROP TABLE IF EXISTS \"public\".\"batch_layer__prev3\"",
                "ALTER TABLE \"public\".\"batch_layer__prev2\" RENAME TO \"batch_layer__prev3\"",
                "ALTER TABLE \"public\".\"batch_layer__prev\" RENAME TO \"batch_layer__prev2\"",
                "ALTER TABLE \"public\".\"batch_layer\" RENAME TO \"batch_layer__prev\"",
                "ALTER TABLE \"public\".\"batch_layer__new\" RENAME TO \"batch_layer\"",
            ]
        );
        let first = plan(&names(), &opts(), true, &[]);
        assert_eq!(
            first.swap.len(),
            3,
            "only existing versions shift: {:?}",
            first.swap
        );
        assert!(p.build[1].contains("WITH \"dedup\" AS") && p.build[1].contains("SELECT DISTINCT"));
        assert_eq!(p.gates.len(), 4);
    }

    #[test]
    fn gates_name_both_values() {
        let p = plan(&names(), &opts(), true, &[]);
        let g = |name: &str| {
            p.gates
                .iter()
                .find(|g| g.name.starts_with(name))
                .unwrap()
                .clone()
        };
        assert!(judge(&g("min_rows"), Some(0), None)
            .unwrap()
            .contains("has 0, fewer than 1"));
        assert!(judge(&g("min_rows"), Some(5), None).is_none());
        let m = judge(&g("max_row_change"), Some(4), Some(10)).unwrap();
        assert!(m.contains("from 10 to 4"), "{m}");
        assert!(judge(&g("max_row_change"), Some(14), Some(10)).is_none());
        assert!(
            judge(&g("max_row_change"), Some(14), None).is_none(),
            "no old view: no change gate"
        );
        assert!(judge(&g("max_sum_change"), Some(200), Some(100))
            .unwrap()
            .contains("sum_followers_count"));
        assert!(judge(&g("non_null"), Some(2), None)
            .unwrap()
            .contains("2 rows with NULL"));
        assert!(judge(&g("non_null"), Some(0), None).is_none());
    }
}
