//! `copy`: load archived objects that are not in the ledger yet, each with its ledger row in
//! the same transaction, under a lock so concurrent runs load each object once.

use crate::archive::catalog::{self, Catalog};
use crate::archive::layout;
use crate::archive::layout::OffsetSpan;
use crate::archive::{self as archive_mod, Compression, ObjectStore};
use crate::cli::CopyArgs;
use crate::config::Settings;
use crate::output::Output;
use crate::records::Layout;
use crate::report::Report;
use crate::warehouse::{self, LoadJob, LoadOptions, LoadResult, OffsetRange, Warehouse};
use anyhow::{bail, Context, Result};
use chrono::NaiveDateTime;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    pub dry_run: bool,
    pub key: Option<String>,
    pub limit: Option<usize>,
    pub max_errors: Option<u64>,
    pub wait: bool,
    /// Only objects whose time folder is at or after this (in the archive's zone).
    pub since: Option<NaiveDateTime>,
    /// Only objects whose time folder is before this.
    pub until: Option<NaiveDateTime>,
    /// The archive's folder template, to read an object's time folder from its key.
    pub key_template: String,
    /// List the whole archive (verify/repair) instead of reading recent manifests.
    pub full_scan: bool,
    /// PostgreSQL COPY format.
    pub format: crate::records::CopyFormat,
    /// PostgreSQL: connections loading at once.
    pub jobs: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct CopySummary {
    pub objects: usize,
    pub rows: u64,
    pub rejects: u64,
    pub bytes: u64,
    /// Run manifests read to find the objects' checksums (the newest ones, as needed).
    pub manifests_read: usize,
    pub seconds: f64,
    pub dry_run: bool,
    pub loaded: Vec<LoadResult>,
    pub pending: Vec<LoadJob>,
    pub sql: Vec<String>,
    /// Objects not loaded because other objects had loaded every offset they hold.
    pub skipped_objects: Vec<String>,
    /// Objects of which only the offsets no other object had loaded were loaded.
    pub partial_objects: Vec<String>,
    /// Records skipped because their offsets were loaded already.
    pub skipped_rows: u64,
    /// In-flight markers of ingest runs: runs still going, or that died, whose stored objects
    /// no manifest lists yet, so this run could not load them (a warning).
    pub unlisted_runs: Vec<String>,
}

/// What copy does with one object, in order.
#[derive(Debug)]
enum Step {
    /// Load these objects (consecutive loads are one batch).
    Load(Vec<LoadJob>),
    /// Every offset is loaded already: record it in the ledger with this many records skipped.
    Skip(LoadJob, u64),
}

/// Merges spans that touch or overlap.
fn merge(mut v: Vec<OffsetSpan>) -> Vec<OffsetSpan> {
    v.sort_unstable();
    let mut out: Vec<OffsetSpan> = Vec::new();
    for s in v {
        match out.last_mut() {
            Some(last) if s.first <= last.last.saturating_add(1) => {
                last.last = last.last.max(s.last)
            }
            _ => out.push(s),
        }
    }
    out
}

/// Offsets are the identity of a record: an object whose every offset (same topic, partition
/// and epoch) is loaded already is skipped, and one that overlaps loaded offsets loads only the
/// others, whatever the keys look like. Jobs are planned in order, each counting as loaded
/// for the ones after it (they load in that order, each in its own transaction).
fn plan_loads(mut loaded: crate::warehouse::LoadedRanges, jobs: Vec<LoadJob>) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for mut job in jobs {
        let mut skip_all = None;
        if let Some(r) = job.range.clone() {
            let span = r.span();
            let ranges = loaded
                .entry((r.topic.clone(), r.partition, r.epoch))
                .or_default();
            let overlap = merge(ranges.iter().filter_map(|s| s.intersect(span)).collect());
            if overlap == [span] {
                let holes = job
                    .gaps
                    .as_ref()
                    .map_or(0, |g| g.iter().map(|s| s.count()).sum());
                let records = job
                    .expected_records
                    .unwrap_or(span.count().saturating_sub(holes));
                skip_all = Some(records);
            } else {
                job.skip = overlap;
            }
            ranges.push(span);
        }
        match (skip_all, steps.last_mut()) {
            (Some(n), _) => steps.push(Step::Skip(job, n)),
            (None, Some(Step::Load(batch))) => batch.push(job),
            (None, _) => steps.push(Step::Load(vec![job])),
        }
    }
    steps
}

/// Archived data objects (not manifests or rejects), sorted by key. What the manifests say of
/// them is attached by [`attach_expectations`], only for the objects a run will load.
pub fn archived_objects(store: &dyn ObjectStore) -> Result<Vec<LoadJob>> {
    let mut jobs = Vec::new();
    for o in store.list("")? {
        if !layout::is_data_key(&o.key) {
            continue;
        }
        let compression = Compression::from_key(&o.key).unwrap_or(Compression::None);
        let range = layout::parse_object_name(&o.key).map(|n| OffsetRange {
            topic: n.topic,
            partition: n.partition,
            epoch: n.epoch,
            first: n.first,
            last: n.last,
        });
        jobs.push(LoadJob {
            key: o.key,
            size: o.size,
            compression,
            range,
            ..Default::default()
        });
    }
    Ok(jobs)
}

/// Fills in each job's sha256 and record count from the run manifests. Manifests are read
/// newest first (their names start with the run's start time) and reading stops once every job
/// is matched, so a copy after each ingest reads the last few manifests, not one per ingest run
/// ever made. An object no manifest lists (its run died before writing one) costs a read of
/// every manifest and is loaded unchecked, as before. Returns the number of manifests read.
pub fn attach_expectations(store: &dyn ObjectStore, jobs: &mut [LoadJob]) -> Result<usize> {
    let mut want: HashMap<String, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.key.clone(), i))
        .collect();
    if want.is_empty() {
        return Ok(0);
    }
    let mut read = 0;
    for key in catalog::manifests_newest_first(store)? {
        if want.is_empty() {
            break;
        }
        let man = catalog::read_manifest(store, &key)?;
        read += 1;
        let listed = man.objects.len() as u32;
        for o in man.objects {
            // Newest first: a key listed again by a later run (same name, same data) keeps
            // the later run's entry.
            if let Some(i) = want.remove(&o.key) {
                jobs[i].gaps = Some(o.missing()).filter(|m| !m.is_empty());
                jobs[i].expected_sha256 = Some(o.sha256);
                jobs[i].expected_records = Some(o.records);
                jobs[i].manifest = layout::manifest_name(&key).map(str::to_string);
                jobs[i].manifest_objects = Some(listed);
                if let Some(r) = jobs[i].range.as_mut() {
                    r.epoch = man.epoch;
                }
            }
        }
    }
    Ok(read)
}

/// `batchlayer copy`: connects, runs, prints the plan (dry run), and reports the summary.
pub fn exec(a: &CopyArgs, s: &Settings, out: &Output) -> Result<Report> {
    // A shadow archive (ingest --replay --prefix) and another raw table with its own ledger.
    let archive = match &a.prefix {
        Some(p) => s.archive.under(p).map_err(crate::error::Error::Config)?,
        None => s.archive.clone(),
    };
    let warehouse = match &a.raw_table {
        Some(t) => s
            .warehouse
            .with_raw_table(t)
            .map_err(crate::error::Error::Config)?,
        None => s.warehouse.clone(),
    };
    let store = archive_mod::open(&archive)?;
    if let Some(src) = store.credential_source() {
        out.debug(&format!("S3 credentials: {src}"));
    }
    let mut wh = warehouse::connect(&warehouse, &archive)?;
    let now = chrono::Utc::now();
    let opts = CopyOptions {
        dry_run: a.dry_run,
        key: a.key.clone(),
        limit: a.limit,
        max_errors: a.max_errors,
        wait: !a.no_wait,
        // The time folders are in the archive's zone: so is a time given without one.
        since: a.since.map(|t| t.wall_clock(now, archive.utc_offset_secs)),
        until: a.until.map(|t| t.wall_clock(now, archive.utc_offset_secs)),
        key_template: archive.key_template.clone(),
        full_scan: a.full_scan,
        format: a.copy_format.unwrap_or(s.warehouse.copy_format),
        jobs: usize::from(a.jobs),
    };
    let sum = run(store.as_ref(), wh.as_mut(), &s.layout, &opts, out)?;
    if !sum.unlisted_runs.is_empty() {
        out.warn(&format!(
            "{} ingest run(s) stored objects that no manifest lists yet (still running, or they died: {}); \
             they were not loaded. The next ingest lists them in its manifest; copy --full-scan loads them now",
            sum.unlisted_runs.len(),
            sum.unlisted_runs.join(", ")
        ));
    }
    if a.dry_run {
        for j in &sum.pending {
            let what = if sum.skipped_objects.contains(&j.key) {
                "would skip (its offsets are loaded already)"
            } else if !j.skip.is_empty() {
                "would load in part (some offsets are loaded already)"
            } else {
                "would load"
            };
            out.plan(&format!("{what} {} ({} bytes)", j.key, j.size));
        }
        for q in &sum.sql {
            out.plan(&format!("{q};"));
        }
    }
    Ok(Report::Copy(sum))
}

/// The objects to load, found through the catalog: per topic, the manifests written since
/// copy's cursor (the newest manifest in the ledger), read in order; their objects that the
/// ledger does not hold yet. What a run costs follows what is new, not the archive's size.
/// Returns the jobs and how many manifests were read.
fn discover(
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    opts: &CopyOptions,
    unlisted: &mut Vec<String>,
) -> Result<(Vec<LoadJob>, usize)> {
    let mut jobs = Vec::new();
    let mut read = 0;
    for topic in catalog::topics(store)? {
        let cat = Catalog::new(store, &topic);
        unlisted.extend(cat.marker_keys()?);
        // Manifests up to the cursor whose objects are in the ledger need no reading.
        for (key, name) in crate::progress::unloaded_manifests(&cat, wh)? {
            let man = cat.read_manifest(&key)?;
            read += 1;
            let listed = man.objects.len() as u32;
            for o in man.objects {
                let gaps = Some(o.missing()).filter(|m| !m.is_empty());
                jobs.push(LoadJob {
                    manifest_objects: Some(listed),
                    compression: o.compression,
                    range: Some(OffsetRange {
                        topic: o.topic,
                        partition: o.partition,
                        epoch: man.epoch,
                        first: o.first_offset,
                        last: o.last_offset,
                    }),
                    gaps,
                    expected_sha256: Some(o.sha256),
                    expected_records: Some(o.records),
                    size: o.bytes,
                    manifest: Some(name.clone()),
                    key: o.key,
                    skip: Vec::new(),
                });
            }
        }
    }
    let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
    let loaded = warehouse::Ledger::new(wh).keys_loaded(&keys)?;
    let mut seen = std::collections::HashSet::new();
    // A key listed by two manifests (a crashed run's object adopted later) loads once.
    jobs.retain(|j| !loaded.contains(&j.key) && seen.insert(j.key.clone()));
    select(&mut jobs, opts);
    Ok((jobs, read))
}

/// Applies --since/--until and --limit.
fn select(jobs: &mut Vec<LoadJob>, opts: &CopyOptions) {
    if opts.since.is_some() || opts.until.is_some() {
        jobs.retain(|j| match layout::folder_time(&opts.key_template, &j.key) {
            Some(t) => opts.since.is_none_or(|s| t >= s) && opts.until.is_none_or(|u| t < u),
            None => false,
        });
    }
    if let Some(n) = opts.limit {
        jobs.truncate(n);
    }
}

/// The objects to load by a full listing (--full-scan, --key): archived, not in the ledger,
/// and selected by the options.
fn pending_jobs(
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    opts: &CopyOptions,
) -> Result<Vec<LoadJob>> {
    let loaded = warehouse::Ledger::new(wh).loaded_keys()?;
    let mut jobs = archived_objects(store)
        .with_context(|| format!("listing the archive {}", store.describe()))?;
    if let Some(k) = &opts.key {
        jobs.retain(|j| &j.key == k);
        if jobs.is_empty() {
            bail!("object {k} is not in the archive {}", store.describe());
        }
    }
    jobs.retain(|j| !loaded.contains(&j.key));
    select(&mut jobs, opts);
    Ok(jobs)
}

pub fn run(
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    layout: &Layout,
    opts: &CopyOptions,
    out: &Output,
) -> Result<CopySummary> {
    let started = Instant::now();
    if !opts.dry_run {
        super::take_lock(
            wh,
            "copy",
            opts.wait,
            || "another copy holds the lock on this raw table".into(),
            out,
        )?;
        wh.ensure_tables(layout)?;
    }
    let mut unlisted = Vec::new();
    let (jobs, read) = if opts.full_scan || opts.key.is_some() {
        let mut jobs = pending_jobs(store, wh, opts)?;
        let read = attach_expectations(store, &mut jobs)
            .with_context(|| format!("reading run manifests in {}", store.describe()))?;
        (jobs, read)
    } else {
        discover(store, wh, opts, &mut unlisted)
            .with_context(|| format!("reading the catalog of {}", store.describe()))?
    };
    out.debug(&format!(
        "{} objects to load; read {read} run manifests",
        jobs.len()
    ));
    let mut summary = CopySummary {
        dry_run: opts.dry_run,
        manifests_read: read,
        unlisted_runs: unlisted,
        ..Default::default()
    };
    let steps = plan_loads(
        warehouse::Ledger::new(wh).loaded_ranges(&jobs)?,
        jobs.clone(),
    );
    if opts.dry_run {
        plan_summary(&mut summary, steps);
        summary.sql = wh.load_sql(&jobs, layout);
        summary.bytes = jobs.iter().map(|j| j.size).sum();
        summary.objects = jobs.len();
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let total: u64 = jobs.iter().map(|j| j.size).sum();
    let pb = out.progress(total, "copy", true);
    let lopts = LoadOptions {
        max_errors: opts.max_errors,
        format: opts.format,
        jobs: opts.jobs,
    };
    let results = execute(steps, store, wh, layout, &lopts, &pb, &mut summary, out)?;
    pb.finish_and_clear();
    for r in &results {
        if r.loaded + r.rejected + r.skipped != r.records {
            bail!(
                "object {}: {} loaded + {} rejected + {} skipped != {} records",
                r.key,
                r.loaded,
                r.rejected,
                r.skipped,
                r.records
            );
        }
        if r.skipped > 0 {
            summary.partial_objects.push(r.key.clone());
        }
        summary.rows += r.loaded;
        summary.rejects += r.rejected;
        summary.skipped_rows += r.skipped;
        summary.bytes += r.bytes;
    }
    summary.objects = results.len();
    summary.loaded = results;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// What a dry run would do, into the summary.
fn plan_summary(summary: &mut CopySummary, steps: Vec<Step>) {
    for st in steps {
        match st {
            Step::Skip(j, _) => {
                summary.skipped_objects.push(j.key.clone());
                summary.pending.push(j);
            }
            Step::Load(b) => {
                for j in b {
                    if !j.skip.is_empty() {
                        summary.partial_objects.push(j.key.clone());
                    }
                    summary.pending.push(j);
                }
            }
        }
    }
}

/// Runs the steps in order: each batch of loads commits before the skips that rest on it
/// are recorded. Returns what each load did.
#[allow(clippy::too_many_arguments)]
fn execute(
    steps: Vec<Step>,
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    layout: &Layout,
    lopts: &LoadOptions,
    pb: &indicatif::ProgressBar,
    summary: &mut CopySummary,
    out: &Output,
) -> Result<Vec<LoadResult>> {
    let mut results = Vec::new();
    // In order: each batch of loads commits before the skips that rest on it are recorded.
    for step in steps {
        match step {
            Step::Load(batch) => {
                let r = wh.load(&batch, store, layout, lopts, &mut |r| {
                    pb.inc(r.bytes);
                    pb.set_message(format!("{} rows", r.loaded));
                })?;
                results.extend(r);
            }
            Step::Skip(job, records) => {
                wh.record_skipped(&job, records)?;
                out.debug(&format!(
                    "{}: every offset is loaded already by other objects; skipped",
                    job.key
                ));
                pb.inc(job.size);
                summary.skipped_objects.push(job.key);
                summary.skipped_rows += records;
            }
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn job(key: &str, p: i32, first: i64, last: i64) -> LoadJob {
        LoadJob {
            key: key.into(),
            range: Some(OffsetRange {
                topic: "t".into(),
                partition: p,
                epoch: 0,
                first,
                last,
            }),
            expected_records: Some((last - first + 1) as u64),
            ..Default::default()
        }
    }

    fn pairs(v: &[OffsetSpan]) -> Vec<(i64, i64)> {
        v.iter().map(|&s| s.into()).collect()
    }

    fn spans(v: &[(i64, i64)]) -> Vec<OffsetSpan> {
        v.iter().map(|&(f, l)| OffsetSpan::new(f, l)).collect()
    }

    fn describe(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .flat_map(|s| match s {
                Step::Skip(j, n) => vec![format!("skip {} ({n})", j.key)],
                Step::Load(b) => b
                    .iter()
                    .map(|j| format!("load {} skipping {:?}", j.key, pairs(&j.skip)))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn offsets_decide_what_loads_whatever_the_keys() {
        let mut loaded = BTreeMap::new();
        loaded.insert(("t".to_string(), 0, 0), vec![OffsetSpan::new(0, 9)]);
        let steps = plan_loads(
            loaded,
            vec![
                job("a", 0, 0, 9),   // the same offsets under another key: skipped
                job("b", 0, 5, 19),  // 5..9 loaded: only 10..19
                job("c", 0, 15, 24), // 15..19 now loaded by b: only 20..24
                job("d", 1, 0, 9),   // another partition: all
                job("e", 0, 10, 24), // covered by b and c together
            ],
        );
        assert_eq!(
            describe(&steps),
            vec![
                "skip a (10)",
                "load b skipping [(5, 9)]",
                "load c skipping [(15, 19)]",
                "load d skipping []",
                "skip e (15)",
            ]
        );
        // b, c and d are one batch: loads between skips go together.
        assert_eq!(steps.len(), 3);
    }

    #[test]
    fn epochs_and_topics_are_separate_identities() {
        let mut loaded = BTreeMap::new();
        loaded.insert(("t".to_string(), 0, 0), vec![OffsetSpan::new(0, 9)]);
        let mut other_epoch = job("x", 0, 0, 9);
        other_epoch.range.as_mut().unwrap().epoch = 1;
        let mut other_topic = job("y", 0, 0, 9);
        other_topic.range.as_mut().unwrap().topic = "u".into();
        let steps = plan_loads(loaded, vec![other_epoch, other_topic]);
        assert_eq!(
            describe(&steps),
            vec!["load x skipping []", "load y skipping []"]
        );
    }

    #[test]
    fn intervals_merge_when_they_touch_or_overlap() {
        assert_eq!(
            pairs(&merge(spans(&[(5, 9), (0, 4), (12, 14), (13, 20)]))),
            vec![(0, 9), (12, 20)]
        );
    }
}
