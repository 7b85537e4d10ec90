//! `status`: the pipeline on one screen, read from the catalog (head, manifests since copy's
//! cursor), Kafka's committed offsets and watermarks, and aggregates of the ledger; never a
//! listing of the archive's data objects. Thresholds turn it into a check (exit 5).

use crate::archive;
use crate::cli::StatusArgs;
use crate::config::Settings;
use crate::error::Error;
use crate::output::format_table;
use crate::progress::{self, PartitionProgress, Snapshot};
use crate::report::Report;
use crate::warehouse::views::{read_build, BuildRecord};
use crate::warehouse::views::{version_name, ViewTable};
use crate::warehouse::{self, ledger, Names, Warehouse};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// The oldest archived object not loaded yet.
#[derive(Debug, Clone, Serialize)]
pub struct Oldest {
    pub key: String,
    pub stored_at: Option<DateTime<Utc>>,
    pub age_secs: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct ArchiveStatus {
    /// Objects the catalog knows: loaded (per the ledger) and listed but not loaded.
    pub objects: i64,
    pub bytes: i64,
    pub unloaded_objects: usize,
    pub unloaded_bytes: u64,
    pub oldest_unloaded: Option<Oldest>,
    /// In-flight markers: ingest runs going on, or dead, whose objects no manifest lists yet.
    pub unlisted_runs: Vec<String>,
}

/// One version of a view (the live one, `__prev`, `__rejected`).
#[derive(Debug, Serialize)]
pub struct Version {
    pub table: String,
    pub rows: i64,
    pub build: Option<BuildRecord>,
}

#[derive(Debug, Serialize)]
pub struct ViewStatus {
    pub view: String,
    pub live: Option<Version>,
    /// Seconds since the live version was built (None when unknown).
    pub age_secs: Option<i64>,
    pub previous: Option<Version>,
    /// The last build a gate refused, when it is still kept.
    pub rejected: Option<Version>,
}

/// What this run read, so its cost is visible.
#[derive(Debug, Serialize)]
pub struct Reads {
    pub catalog_head: bool,
    pub manifests_since_cursor: usize,
    pub manifests_by_name: usize,
    pub data_object_listings: usize,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub checked_at: DateTime<Utc>,
    pub topic: String,
    pub group: String,
    pub epoch: i32,
    pub lateness_secs: u64,
    pub partitions: Vec<PartitionProgress>,
    pub total_lag: i64,
    pub archive: ArchiveStatus,
    pub warehouse: ledger::LedgerSummary,
    pub views: Vec<ViewStatus>,
    /// Every partition is archived and loaded through this time (less the lateness).
    pub complete_through: Option<DateTime<Utc>>,
    /// The partitions that set it (the latest complete-through of none of them is later).
    pub held_back_by: Vec<i32>,
    pub reads: Reads,
    /// Thresholds exceeded (exit 5 when any).
    pub problems: Vec<String>,
}

/// The thresholds of a check.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    pub max_lag: Option<u64>,
    pub max_unloaded_age: Option<Duration>,
    pub max_view_age: Option<Duration>,
}

/// `batchlayer status`: reads where the pipeline stands, and reports it (judged by
/// `StatusReport::outcome` once it is printed).
pub fn exec(a: &StatusArgs, s: &Settings) -> Result<Report> {
    if s.topics.multi() {
        let mut many = crate::report::Many::new("status");
        let quiet = crate::output::Output::new(true, false, false, true);
        for t in super::config_topics(s, None)? {
            let r = match s.for_topic(&t) {
                Ok(ts) => exec_one(a, &ts),
                Err(e) => Err(e.into()),
            };
            many.record(&t, r, &quiet);
        }
        return Ok(Report::Many(many));
    }
    exec_one(a, s)
}

/// One topic's status.
fn exec_one(a: &StatusArgs, s: &Settings) -> Result<Report> {
    let store = archive::open(&s.archive)?;
    let mut wh = warehouse::connect(&s.warehouse, &s.archive)?;
    let lateness = a.lateness.unwrap_or(s.status.lateness);
    let now = Utc::now();
    let snap = progress::snapshot(s, store.as_ref(), wh.as_mut(), lateness, now)?;
    let thresholds = Thresholds {
        max_lag: a.max_lag,
        max_unloaded_age: a.max_unloaded_age,
        max_view_age: a.max_view_age,
    };
    let report = build(snap, wh.as_mut(), s, lateness, now, &thresholds)?;
    Ok(Report::Status(report))
}

impl StatusReport {
    /// A check's verdict: unhealthy (exit 5) when a threshold is exceeded.
    pub fn outcome(&self) -> Result<(), Error> {
        if !self.problems.is_empty() {
            return Err(Error::Unhealthy(self.problems.join("; ")));
        }
        Ok(())
    }
}

/// Puts the report together and judges it against the thresholds.
pub fn build(
    snap: Snapshot,
    wh: &mut dyn Warehouse,
    s: &Settings,
    lateness: Duration,
    now: DateTime<Utc>,
    t: &Thresholds,
) -> Result<StatusReport> {
    let summary = ledger::Ledger::new(wh).summary(&snap.topic)?;
    let archive = archive_status(&snap, &summary, now);
    let names = Names::from_settings(&s.warehouse);
    let mut views = Vec::new();
    for v in &s.aggregate.views {
        views.push(view_status(wh, &names, &v.view, now)?);
    }
    let complete_through = progress::complete_through(&snap.partitions);
    let held_back_by = snap
        .partitions
        .iter()
        .filter(|p| match (p.complete_through, complete_through) {
            (None, _) => true,
            (Some(c), Some(min)) => c == min && !p.caught_up,
            _ => false,
        })
        .map(|p| p.partition)
        .collect();
    let mut r = StatusReport {
        checked_at: now,
        topic: snap.topic,
        group: snap.group,
        epoch: snap.epoch,
        lateness_secs: lateness.as_secs(),
        total_lag: snap.partitions.iter().map(|p| p.lag).sum(),
        partitions: snap.partitions,
        archive,
        warehouse: summary,
        views,
        complete_through,
        held_back_by,
        reads: Reads {
            catalog_head: true,
            manifests_since_cursor: snap.pending.manifests_read,
            manifests_by_name: snap.manifests_read_by_name,
            data_object_listings: 0,
        },
        problems: Vec::new(),
    };
    r.problems = judge(&r, t);
    Ok(r)
}

fn archive_status(snap: &Snapshot, l: &ledger::LedgerSummary, now: DateTime<Utc>) -> ArchiveStatus {
    let p = &snap.pending;
    let oldest = p
        .objects
        .iter()
        .min_by_key(|o| (o.stored_at, o.key.clone()))
        .map(|o| Oldest {
            key: o.key.clone(),
            stored_at: o.stored_at,
            age_secs: o.stored_at.map(|t| (now - t).num_seconds().max(0)),
        });
    let unloaded_bytes: u64 = p.objects.iter().map(|o| o.bytes).sum();
    ArchiveStatus {
        objects: l.objects + p.objects.len() as i64,
        bytes: l.bytes + unloaded_bytes as i64,
        unloaded_objects: p.objects.len(),
        unloaded_bytes,
        oldest_unloaded: oldest,
        unlisted_runs: p.unlisted_runs.clone(),
    }
}

fn version(wh: &mut dyn Warehouse, names: &Names, table: &str) -> Result<Option<Version>> {
    let sql = wh.session();
    if !sql.table_exists(table)? {
        return Ok(None);
    }
    let rows = sql
        .query_i64(&format!("SELECT count(*) FROM {}", names.qualified(table)))?
        .unwrap_or(0);
    let build = read_build(sql, names, table)?;
    Ok(Some(Version {
        table: table.to_string(),
        rows,
        build,
    }))
}

fn view_status(
    wh: &mut dyn Warehouse,
    names: &Names,
    view: &str,
    now: DateTime<Utc>,
) -> Result<ViewStatus> {
    let live = version(wh, names, view)?;
    let age_secs = live
        .as_ref()
        .and_then(|v| v.build.as_ref())
        .map(|b| (now - b.built_at).num_seconds().max(0));
    Ok(ViewStatus {
        view: view.to_string(),
        age_secs,
        live,
        previous: version(wh, names, &version_name(view, ViewTable::Prev(1)))?,
        rejected: version(wh, names, &version_name(view, ViewTable::Rejected))?,
    })
}

/// The thresholds the report exceeds, each as one clause naming the values.
pub fn judge(r: &StatusReport, t: &Thresholds) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(max) = t.max_lag {
        if r.total_lag > max as i64 {
            let parts: Vec<String> = r
                .partitions
                .iter()
                .filter(|p| p.lag > 0)
                .map(|p| format!("{}: {}", p.partition, p.lag))
                .collect();
            v.push(format!(
                "topic {} lags {} messages, more than --max-lag {max} (partition {})",
                r.topic,
                r.total_lag,
                parts.join(", ")
            ));
        }
    }
    if let (Some(max), Some(o)) = (t.max_unloaded_age, &r.archive.oldest_unloaded) {
        match o.age_secs {
            Some(age) if age as u64 > max.as_secs() => v.push(format!(
                "{} objects are not loaded; the oldest, {}, was stored {} ago, more than --max-unloaded-age {}",
                r.archive.unloaded_objects,
                o.key,
                human_secs(age),
                human_secs(max.as_secs() as i64)
            )),
            None => v.push(format!(
                "object {} is not loaded and its manifest does not say when it was stored",
                o.key
            )),
            _ => {}
        }
    }
    if let Some(max) = t.max_view_age {
        for view in &r.views {
            match (&view.live, view.age_secs) {
                (None, _) => v.push(format!("view {} does not exist", view.view)),
                (Some(_), None) => v.push(format!(
                    "view {}: its build time is unknown (built before batchlayer recorded builds; run aggregate)",
                    view.view
                )),
                (Some(_), Some(age)) if age as u64 > max.as_secs() => v.push(format!(
                    "view {} was built {} ago, more than --max-view-age {}",
                    view.view,
                    human_secs(age),
                    human_secs(max.as_secs() as i64)
                )),
                _ => {}
            }
        }
    }
    v
}

/// "1h02m", "5m10s", "42s".
pub fn human_secs(s: i64) -> String {
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn when(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!(
            "{} ({} ago)",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            human_secs((now - t).num_seconds().max(0))
        ),
        None => "-".into(),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |x| x.to_string())
}

fn partition_rows(r: &StatusReport) -> String {
    let cols: Vec<String> = [
        "partition",
        "committed",
        "end",
        "lag",
        "archived to",
        "loaded through",
        "newest archived",
        "complete through",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let fmt = |t: Option<DateTime<Utc>>| {
        t.map_or("-".into(), |t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
    };
    let rows: Vec<Vec<String>> = r
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                opt(p.committed),
                p.end.to_string(),
                p.lag.to_string(),
                opt(p.archived_next.map(|n| n - 1)),
                opt(p.loaded_through),
                fmt(p.newest_archived_at),
                fmt(p.complete_through),
            ]
        })
        .collect();
    format_table(&cols, &rows)
}

fn gates_text(b: &Option<BuildRecord>, now: DateTime<Utc>) -> String {
    let Some(b) = b else {
        return "build not recorded".into();
    };
    let gates: Vec<String> = b
        .gates
        .iter()
        .map(|g| {
            let old = g.old.map_or(String::new(), |o| format!(" (was {o})"));
            let ok = if g.passed { "ok" } else { "FAILED" };
            format!("{} {}{old} {ok}", g.name, opt(g.new))
        })
        .collect();
    format!(
        "built {}{}; gates: {}",
        when(Some(b.built_at), now),
        if b.forced { ", forced" } else { "" },
        gates.join(", ")
    )
}

/// The one screen.
pub fn render(r: &StatusReport) -> String {
    let now = r.checked_at;
    let mut s = format!(
        "topic {} (group {}, epoch {}), checked {}\n",
        r.topic,
        r.group,
        r.epoch,
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    s += &partition_rows(r);
    let a = &r.archive;
    s += &format!(
        "archive: {} objects ({}); not loaded: {} objects ({}){}\n",
        a.objects,
        indicatif::HumanBytes(a.bytes.max(0) as u64),
        a.unloaded_objects,
        indicatif::HumanBytes(a.unloaded_bytes),
        a.oldest_unloaded
            .as_ref()
            .map_or(String::new(), |o| format!(
                ", the oldest stored {}: {}",
                when(o.stored_at, now),
                o.key
            ))
    );
    if !a.unlisted_runs.is_empty() {
        s += &format!(
            "archive: {} ingest run(s) in flight or dead, objects not in a manifest yet: {}\n",
            a.unlisted_runs.len(),
            a.unlisted_runs.join(", ")
        );
    }
    let w = &r.warehouse;
    s += &format!(
        "warehouse: {} rows loaded, {} rejected, {} skipped as loaded already, from {} objects; last load {}\n",
        w.rows_loaded, w.rows_rejected, w.rows_skipped, w.objects, when(w.last_load_at, now)
    );
    for v in &r.views {
        s += &render_view(v, now);
    }
    s += &format!(
        "complete through: {} (lateness {}){}\n",
        r.complete_through.map_or("nothing yet".into(), |t| t
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        human_secs(r.lateness_secs as i64),
        if r.held_back_by.is_empty() {
            String::new()
        } else {
            format!(", held back by partition {:?}", r.held_back_by)
        }
    );
    s += &format!(
        "read: the catalog head, {} manifests since copy's cursor, {} by name, ledger aggregates; no listing of data objects\n",
        r.reads.manifests_since_cursor, r.reads.manifests_by_name
    );
    for p in &r.problems {
        s += &format!("PROBLEM: {p}\n");
    }
    s
}

fn render_view(v: &ViewStatus, now: DateTime<Utc>) -> String {
    let Some(live) = &v.live else {
        return format!("view {}: does not exist (run aggregate)\n", v.view);
    };
    let mut s = format!(
        "view {}: {} rows, {}\n",
        v.view,
        live.rows,
        gates_text(&live.build, now)
    );
    for (what, x) in [("previous", &v.previous), ("refused", &v.rejected)] {
        if let Some(x) = x {
            s += &format!(
                "  {what} {}: {} rows, {}\n",
                x.table,
                x.rows,
                gates_text(&x.build, now)
            );
        }
    }
    s
}
