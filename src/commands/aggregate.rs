//! `aggregate`: build the batch view into `<view>__new` while readers use the old one, check
//! the gates, then swap in one short transaction (`<view>` -> `<view>__prev`, new -> `<view>`).

use crate::warehouse::{quote_ident, strip_comments, Names, Warehouse};
use crate::{Busy, GateRefused};
use anyhow::{bail, Result};
use serde::Serialize;
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
    pub min_rows: Option<i64>,
    pub max_row_change: Option<f64>,
}

/// The statements of one rebuild, split by phase (shown by --dry-run, checked by the tests).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Plan {
    /// Outside any transaction that locks the view: readers keep reading.
    pub build: Vec<String>,
    /// One short transaction: only renames (and dropping the oldest version).
    pub swap: Vec<String>,
    /// Gate queries, each returning one bigint.
    pub gates: Vec<String>,
}

pub fn plan(names: &Names, opts: &AggregateOptions, view_exists: bool) -> Plan {
    let v = &opts.view;
    let q = |t: &str| names.qualified(t);
    let new = format!("{v}__new");
    let prev = format!("{v}__prev");
    let select = strip_comments(&names.render(&opts.view_sql, &[("view", v)]));
    let build = vec![
        format!("DROP TABLE IF EXISTS {}", q(&new)),
        format!("CREATE TABLE {} AS\n{select}", q(&new)),
    ];
    let mut swap = vec![];
    if view_exists {
        swap.push(format!("DROP TABLE IF EXISTS {}", q(&prev)));
        swap.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            q(v),
            quote_ident(&prev)
        ));
    }
    swap.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        q(&new),
        quote_ident(v)
    ));
    let mut gates = vec![format!("SELECT count(*) FROM {}", q(&new))];
    if view_exists {
        gates.push(format!("SELECT count(*) FROM {}", q(v)));
    }
    Plan { build, swap, gates }
}

/// The statements of `--rollback`: the previous view and the current one trade places.
pub fn rollback_plan(names: &Names, view: &str) -> Vec<String> {
    let q = |t: &str| names.qualified(t);
    let tmp = format!("{view}__swap");
    let prev = format!("{view}__prev");
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
}

pub fn run(
    wh: &mut dyn Warehouse,
    names: &Names,
    opts: &AggregateOptions,
) -> Result<AggregateSummary> {
    let started = Instant::now();
    let v = opts.view.clone();
    let mut summary = AggregateSummary {
        view: v.clone(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !opts.dry_run && !wh.lock("aggregate", opts.wait)? {
        return Err(Busy(format!("another aggregate of {v} holds the lock")).into());
    }
    let view_exists = wh.table_exists(&v)?;
    if opts.rollback {
        if !wh.table_exists(&format!("{v}__prev"))? {
            bail!("no previous version {v}__prev to roll back to");
        }
        if !view_exists {
            bail!("view {v} does not exist; nothing to roll back from");
        }
        let stmts = rollback_plan(names, &v);
        if opts.dry_run {
            summary.plan = Some(Plan {
                build: vec![],
                swap: stmts,
                gates: vec![],
            });
        } else {
            wh.run_in_transaction(&stmts)?;
            summary.rolled_back = true;
            summary.rows = wh
                .query_i64(&format!("SELECT count(*) FROM {}", names.qualified(&v)))?
                .unwrap_or(0);
        }
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let p = plan(names, opts, view_exists);
    if opts.dry_run {
        summary.plan = Some(p);
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    for s in &p.build {
        wh.execute(s)?;
    }
    let rows = wh.query_i64(&p.gates[0])?.unwrap_or(0);
    let previous = if view_exists {
        wh.query_i64(&p.gates[1])?
    } else {
        None
    };
    summary.rows = rows;
    summary.previous_rows = previous;
    if !opts.force {
        if let Some(why) = gate_failure(opts, rows, previous) {
            let rejected = format!("{v}__rejected");
            wh.run_in_transaction(&[
                format!("DROP TABLE IF EXISTS {}", names.qualified(&rejected)),
                format!(
                    "ALTER TABLE {} RENAME TO {}",
                    names.qualified(&format!("{v}__new")),
                    quote_ident(&rejected)
                ),
            ])?;
            return Err(GateRefused(format!("{why}; kept {v} as it was, the new build is in {rejected} (use --force to swap anyway)")).into());
        }
    }
    wh.run_in_transaction(&p.swap)?;
    if let Some(n) = opts.print {
        let sql = format!(
            "SELECT * FROM {} ORDER BY 2 DESC, 1 LIMIT {n}",
            names.qualified(&v)
        );
        summary.top = Some(wh.query_text(&sql)?);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Which gate (if any) refuses the swap, naming both values.
pub fn gate_failure(opts: &AggregateOptions, rows: i64, previous: Option<i64>) -> Option<String> {
    let min = opts.min_rows.unwrap_or(1);
    if rows < min {
        return Some(format!(
            "gate min_rows: the new view has {rows} rows, fewer than {min}"
        ));
    }
    if let (Some(max), Some(prev)) = (opts.max_row_change, previous) {
        if prev > 0 {
            let change = (rows - prev).abs() as f64 / prev as f64;
            if change > max {
                return Some(format!(
                    "gate max_row_change: rows went from {prev} to {rows} ({:.1}%), more than {:.1}%",
                    change * 100.0,
                    max * 100.0
                ));
            }
        }
    }
    None
}

/// Formats rows as an aligned text table.
pub fn format_table(cols: &[String], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = cols.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(w[i] - c.chars().count())))
            .collect();
        format!("{}\n", parts.join(" | ").trim_end())
    };
    let mut s = line(cols);
    s += &format!(
        "{}\n",
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for r in rows {
        s += &line(r);
    }
    s
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
            ..Default::default()
        }
    }

    /// Statements both PostgreSQL and Redshift accept: no PG-only syntax may creep in.
    #[test]
    fn statements_are_redshift_safe() {
        let mut all = vec![];
        for exists in [false, true] {
            let p = plan(&names(), &opts(), exists);
            all.extend(p.build);
            all.extend(p.swap);
            all.extend(p.gates);
        }
        all.extend(rollback_plan(&names(), "batch_layer"));
        let forbidden = [
            "::",
            "ON CONFLICT",
            "RETURNING",
            "MATERIALIZED",
            "CONCURRENTLY",
            "UNLOGGED",
            "IF EXISTS RENAME",
            "ALTER TABLE IF EXISTS",
            "FILTER (",
            "DISTINCT ON",
            "SERIAL",
            "TEXT[]",
            "ILIKE ANY",
            "GENERATED",
            "CREATE OR REPLACE VIEW",
            "pg_",
        ];
        for s in &all {
            let up = s.to_uppercase();
            for f in forbidden {
                assert!(!up.contains(&f.to_uppercase()), "{f} in: {s}");
            }
            let first = up.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            assert!(
                [
                    "DROP TABLE",
                    "CREATE TABLE",
                    "ALTER TABLE",
                    "SELECT COUNT(*)"
                ]
                .contains(&first.as_str()),
                "unexpected statement kind: {s}"
            );
        }
        let p = plan(&names(), &opts(), true);
        assert_eq!(p.swap.len(), 3);
        assert!(
            p.swap.iter().all(|s| !s.contains("CREATE")),
            "the swap must only rename"
        );
        assert!(p.build[1].contains("WITH dedup AS") && p.build[1].contains("SELECT DISTINCT"));
    }

    #[test]
    fn gates_name_both_values() {
        let mut o = opts();
        assert!(gate_failure(&o, 0, Some(10)).unwrap().contains("0 rows"));
        assert!(gate_failure(&o, 5, Some(10)).is_none());
        o.max_row_change = Some(0.2);
        let g = gate_failure(&o, 5, Some(10)).unwrap();
        assert!(g.contains("from 10 to 5"), "{g}");
        assert!(gate_failure(&o, 11, Some(10)).is_none());
    }

    #[test]
    fn table_is_aligned() {
        let t = format_table(
            &["a".into(), "count".into()],
            &[vec!["Z\u{fc}rich".into(), "3".into()]],
        );
        assert_eq!(t, "a      | count\n-------+------\nZ\u{fc}rich | 3\n");
    }
}
