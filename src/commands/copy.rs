//! `copy`: load archived objects that are not in the ledger yet, each with its ledger row in
//! the same transaction, under a lock so concurrent runs load each object once.

use crate::archive::catalog::{self, Catalog};
use crate::archive::layout;
use crate::archive::layout::CatalogHead;
use crate::archive::layout::OffsetSpan;
use crate::archive::{self as archive_mod, Compression, ObjectStore};
use crate::cli::CopyArgs;
use crate::config::Settings;
use crate::output::Output;
use crate::records::{Codec, Layout};
use crate::report::Report;
use crate::warehouse::ledger::{CheckedHead, CopyCursor};
use crate::warehouse::{self, LoadJob, LoadOptions, LoadResult, OffsetRange, Warehouse};
use anyhow::{bail, Context, Result};
use chrono::NaiveDateTime;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// Only these topics (None: every topic of the archive).
    pub topics: Option<Vec<String>>,
    /// The index of change as read once for a run over many topics (None: read here).
    pub index: Option<std::sync::Arc<catalog::ChangeIndex>>,
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

/// Offsets are the identity of a record: an object whose every offset (same topic, partition
/// and epoch) is loaded already is skipped, and one that overlaps loaded offsets loads only the
/// others, whatever the keys look like. Jobs are planned in order, each counting as loaded
/// for the ones after it. A job that rests on offsets another job of this run loads (it skips
/// them, or is skipped for them) never goes in the same batch as that job: a batch's loads may
/// run in parallel, each in its own transaction, so one could commit while the other fails, and
/// its ledger row would claim offsets nobody loaded. It goes in a later batch, or is a later
/// skip, and batches run in order, each only once the ones before it committed in full.
fn plan_loads(ledger: crate::warehouse::LoadedRanges, jobs: Vec<LoadJob>) -> Vec<Step> {
    type Id = (String, i32, i32);
    // What this run plans to load, per identity: offsets and the batch (step) loading them.
    let mut planned: HashMap<Id, Vec<(OffsetSpan, usize)>> = HashMap::new();
    let mut steps: Vec<Step> = Vec::new();
    for mut job in jobs {
        let mut skip_all = None;
        // The last step this job rests on, if any.
        let mut rests_on: Option<usize> = None;
        if let Some(r) = job.range.clone() {
            let span = r.span();
            let id = (r.topic.clone(), r.partition, r.epoch);
            let mine = planned.entry(id.clone()).or_default();
            let mut overlap: Vec<OffsetSpan> = ledger
                .get(&id)
                .into_iter()
                .flatten()
                .filter_map(|s| s.intersect(span))
                .collect();
            for (s, step) in mine.iter() {
                if let Some(x) = s.intersect(span) {
                    overlap.push(x);
                    rests_on = rests_on.max(Some(*step));
                }
            }
            let overlap = layout::merge_spans(overlap);
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
        }
        // A batch may take the job when it is the last step and the job rests on no job of it.
        let joins = match (steps.last(), rests_on) {
            (Some(Step::Load(_)), Some(r)) => r < steps.len() - 1,
            (Some(Step::Load(_)), None) => true,
            _ => false,
        };
        let at = match skip_all {
            Some(n) => {
                steps.push(Step::Skip(job.clone(), n));
                steps.len() - 1
            }
            None if joins => {
                if let Some(Step::Load(batch)) = steps.last_mut() {
                    batch.push(job.clone());
                }
                steps.len() - 1
            }
            None => {
                steps.push(Step::Load(vec![job.clone()]));
                steps.len() - 1
            }
        };
        if let Some(r) = &job.range {
            planned
                .entry((r.topic.clone(), r.partition, r.epoch))
                .or_default()
                .push((r.span(), at));
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
    if s.topics.multi() {
        return exec_many(a, s, out);
    }
    exec_one(a, s, out, None)
}

/// Copy over many topics: each archived topic the config takes into its route's raw table,
/// one after the other, each with a connection and lock of its own. The index of change is
/// read once, and one connection asks each topic's cursor: a topic with no manifest since
/// copy last loaded it all costs that question and nothing in the archive. A topic that
/// fails (no route, a bad record in strict mode, a missing table) fails alone.
fn exec_many(a: &CopyArgs, s: &Settings, out: &Output) -> Result<Report> {
    let archive = match &a.prefix {
        Some(p) => s.archive.under(p).map_err(crate::error::Error::Config)?,
        None => s.archive.clone(),
    };
    if a.raw_table.is_some() {
        return Err(crate::error::Error::config(
            "--raw-table with many topics: each topic's raw table is its [[topics]] route's",
        )
        .into());
    }
    let store = archive_mod::open(&archive)?;
    let index = std::sync::Arc::new(catalog::ChangeIndex::read(store.as_ref())?);
    let mut topics = s.topics.pick(&catalog::topics(store.as_ref())?);
    // --key names one object: only its topic loads it.
    if let Some(k) = &a.key {
        let of = layout::parse_object_key(k).map(|(t, ..)| t);
        topics.retain(|t| of.as_ref() == Some(t));
        if topics.is_empty() {
            return Err(crate::error::Error::config(format!(
                "--key {k}: not an object of a topic this config takes"
            ))
            .into());
        }
    }
    out.debug(&format!(
        "copy: {} archived topics of {}",
        topics.len(),
        s.topics.describe()
    ));
    let mut many = crate::report::Many::new("copy");
    // Which topics load into each table: several need the table's topic column.
    let mut settings = BTreeMap::new();
    let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &topics {
        match s.for_topic(t) {
            Ok(ts) => {
                by_table
                    .entry(ts.warehouse.raw_table.clone())
                    .or_default()
                    .push(t.clone());
                settings.insert(t.clone(), ts);
            }
            Err(e) => many.record(t, Err(e.into()), out),
        }
    }
    for (table, ts) in &by_table {
        if ts.len() < 2 {
            continue;
        }
        let first = &settings[&ts[0]].layout;
        let why = if ts.iter().any(|t| settings[t].layout.topic_column.is_none()) {
            Some(
                "give their [[topics]] entries topic_column = \"topic\" so each row says its topic",
            )
        } else if ts.iter().any(|t| settings[t].layout != *first) {
            Some("their record layouts differ (columns, format or topic_column): one table takes one layout")
        } else {
            None
        };
        if let Some(why) = why {
            for t in ts {
                settings.remove(t);
                let e = crate::error::Error::config(format!(
                    "topics {} all load into raw table {table}: {why}",
                    ts.join(", ")
                ));
                many.record(t, Err(e.into()), out);
            }
        }
    }
    // One connection asks every topic's cursor at once; a topic whose keys in the index of
    // change are those its cursor recorded has nothing new (no lock, no archive request).
    let checked = match settings.values().next() {
        Some(first) if !(a.dry_run || a.full_scan || a.key.is_some()) => {
            let mut wh = warehouse::connect(&first.warehouse, &archive)?;
            let pairs: Vec<(warehouse::Names, String)> = settings
                .iter()
                .map(|(t, ts)| (warehouse::Names::from_settings(&ts.warehouse), t.clone()))
                .collect();
            warehouse::Ledger::new(wh.as_mut()).checked_heads(&pairs)?
        }
        _ => Default::default(),
    };
    for (t, ts) in settings {
        let keys = index.keys(&t);
        let seen = checked.get(&(ts.warehouse.raw_table.clone(), t.clone()));
        if !keys.is_empty() && seen.is_some_and(|c| c.index == keys) {
            many.idle.push(t);
            continue;
        }
        let r = exec_one(a, &ts, out, Some((&t, index.clone())))
            .with_context(|| format!("loading into {}", ts.warehouse.raw_table));
        many.record(&t, r, out);
    }
    Ok(Report::Many(many))
}

/// Copy into one raw table: every archived topic (one topic's config), or the one topic of
/// a run over many (`one`, with the index of change that run read).
fn exec_one(
    a: &CopyArgs,
    s: &Settings,
    out: &Output,
    one: Option<(&str, std::sync::Arc<catalog::ChangeIndex>)>,
) -> Result<Report> {
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
        topics: None,
        index: None,
    };
    let mut opts = CopyOptions {
        max_errors: a.max_errors.or(s.max_errors),
        ..opts
    };
    match one {
        Some((t, index)) => {
            opts.topics = Some(vec![t.to_string()]);
            opts.index = Some(index);
        }
        // One topic's config with --topic: only the archived topics it names.
        None if !s.topics.narrow.is_empty() => {
            opts.topics = Some(s.topics.pick(&catalog::topics(store.as_ref())?));
        }
        None => {}
    }
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

/// What copy read of one topic's catalog: the manifests it looked at (by name, in order) and
/// the keys of those it read, for moving the cursor once the loads are done.
#[derive(Debug, Default)]
struct TopicWork {
    topic: String,
    cursor: Option<CopyCursor>,
    /// Every manifest in the window, by name, in order.
    candidates: Vec<String>,
    /// Those the ledger counted as loaded in full before this run.
    done: HashSet<String>,
    /// The keys of each manifest read.
    keys: HashMap<String, Vec<String>>,
    /// Whether every manifest of the topic was listed (no cursor yet, or the offset check).
    full: bool,
    /// The head when the full listing was made.
    head: Option<CheckedHead>,
    /// The topic's keys in the index of change when the run started.
    index: Vec<String>,
}

/// A topic's manifests in copy's window, as (key, name) by name, and the names the ledger holds
/// in full.
type Window = (Vec<(String, String)>, HashSet<String>);

/// The manifests of a topic in copy's window: every one after the cursor less the catalog's
/// grace (all of them when `full`), and those of them the ledger counts as loaded in full.
fn window(
    cat: &Catalog<'_>,
    wh: &mut dyn Warehouse,
    cursor: Option<&str>,
    full: bool,
) -> Result<Window> {
    let candidates = cat.recent_manifests(if full { None } else { cursor })?;
    let names: Vec<String> = candidates.iter().map(|(_, n)| n.clone()).collect();
    let done = warehouse::Ledger::new(wh).manifests_loaded(cat.topic(), &names)?;
    Ok((candidates, done))
}

/// Reads the manifests of the window that are not loaded in full; their objects as jobs.
fn read_window(
    cat: &Catalog<'_>,
    candidates: &[(String, String)],
    done: &HashSet<String>,
    work: &mut TopicWork,
) -> Result<(Vec<LoadJob>, usize)> {
    let mut jobs = Vec::new();
    let mut read = 0;
    work.keys.clear();
    for (key, name) in candidates.iter().filter(|(_, n)| !done.contains(n)) {
        let man = cat.read_manifest(key)?;
        read += 1;
        let listed = man.objects.len() as u32;
        let keys = work.keys.entry(name.clone()).or_default();
        for o in man.objects {
            keys.push(o.key.clone());
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
    Ok((jobs, read))
}

/// The check that rests on offsets, not on manifest names: offsets the catalog head says are
/// archived, or that lie between the window's objects and what the ledger holds, which neither
/// the ledger nor a manifest in the window accounts for. A manifest named before the window (an
/// ingest host whose clock is behind by more than the grace) holds them, or they hold no record
/// (accepted expired offsets count as accounted for). Returns why, when there are such offsets.
fn unexplained(
    wh: &mut dyn Warehouse,
    topic: &str,
    head: Option<&CatalogHead>,
    checked: Option<&CheckedHead>,
    jobs: &[LoadJob],
) -> Result<Option<String>> {
    let Some(head) = head else { return Ok(None) };
    let epoch = head.epoch;
    // The window's objects and the accepted expired offsets, per partition of the head's epoch.
    let mut window: BTreeMap<i32, Vec<OffsetSpan>> = BTreeMap::new();
    for r in jobs.iter().filter_map(|j| j.range.as_ref()) {
        if r.topic == topic && r.epoch == epoch {
            window.entry(r.partition).or_default().push(r.span());
        }
    }
    let mut expired: BTreeMap<i32, Vec<OffsetSpan>> = BTreeMap::new();
    for g in head.expired.iter().filter(|g| g.epoch == epoch) {
        expired
            .entry(g.partition)
            .or_default()
            .push(OffsetSpan::new(g.first, g.last));
    }
    // The last offset the head says is archived, where a full listing has not accounted for it.
    let mut tail: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, &next) in &head.next {
        let seen = checked
            .filter(|c| c.epoch == epoch)
            .and_then(|c| c.next.get(&p))
            .is_some_and(|&c| next <= c);
        if next > 0 && !seen {
            tail.insert(p, next - 1);
        }
    }
    // What the ledger holds around them: from just below the window's lowest offset to its
    // highest, and at each tail (an index range each, bounded by the window).
    let mut probes = Vec::new();
    let probe = |p: i32, first: i64, last: i64| LoadJob {
        range: Some(OffsetRange {
            topic: topic.to_string(),
            partition: p,
            epoch,
            first,
            last,
        }),
        ..Default::default()
    };
    for (&p, v) in &window {
        let lo = v.iter().map(|s| s.first).min().unwrap_or(0);
        let hi = v.iter().map(|s| s.last).max().unwrap_or(0);
        probes.push(probe(p, (lo - 1).max(0), hi));
    }
    for (&p, &t) in &tail {
        probes.push(probe(p, t, t));
    }
    if probes.is_empty() {
        return Ok(None);
    }
    let ledger = warehouse::Ledger::new(wh).loaded_ranges(&probes)?;
    let partitions: BTreeSet<i32> = window.keys().chain(tail.keys()).copied().collect();
    for p in partitions {
        let mut all: Vec<OffsetSpan> = window.get(&p).cloned().unwrap_or_default();
        all.extend(expired.get(&p).into_iter().flatten().copied());
        all.extend(
            ledger
                .get(&(topic.to_string(), p, epoch))
                .into_iter()
                .flatten()
                .copied(),
        );
        let covered = layout::merge_spans(all);
        let holds = |o: i64| covered.iter().any(|s| s.contains(o));
        if let Some(v) = window.get(&p) {
            let lo = v.iter().map(|s| s.first).min().unwrap_or(0);
            let hi = v.iter().map(|s| s.last).max().unwrap_or(0);
            if lo > 0 && !holds(lo - 1) {
                return Ok(Some(format!(
                    "partition {p}: offset {} (below the manifests' objects since the cursor, from {lo}) is in no ledger row",
                    lo - 1
                )));
            }
            if let Some(w) = covered
                .windows(2)
                .find(|w| w[0].last >= lo - 1 && w[1].first <= hi)
            {
                return Ok(Some(format!(
                    "partition {p}: offsets {}..{} (between the manifests' objects since the cursor) are in no ledger row or manifest since the cursor",
                    w[0].last + 1,
                    w[1].first - 1
                )));
            }
        }
        if let Some(&t) = tail.get(&p) {
            if !holds(t) {
                return Ok(Some(format!(
                    "partition {p}: the catalog head says offsets through {t} are archived, and no ledger row or manifest since the cursor holds offset {t}"
                )));
            }
        }
    }
    Ok(None)
}

/// The objects to load, found through the catalog: per topic, the manifests in copy's window
/// (after its cursor, less the grace) that the ledger does not hold in full, read in order;
/// their objects that the ledger does not hold yet. What a run costs follows what is new, not
/// the archive's size; only when the offsets say a manifest outside the window must exist
/// (see [`unexplained`]) is every manifest of the topic listed. Returns the jobs, how many
/// manifests were read, and what each topic's cursor needs.
fn discover(
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    opts: &CopyOptions,
    unlisted: &mut Vec<String>,
    out: &Output,
) -> Result<(Vec<LoadJob>, usize, Vec<TopicWork>)> {
    let mut jobs = Vec::new();
    let mut read = 0;
    let mut works = Vec::new();
    let index = match &opts.index {
        Some(i) => i.clone(),
        None => std::sync::Arc::new(catalog::ChangeIndex::read(store)?),
    };
    let topics = match &opts.topics {
        Some(t) => t.clone(),
        None => catalog::topics(store)?,
    };
    for topic in topics {
        let cat = Catalog::new(store, &topic);
        let cursor = warehouse::Ledger::new(wh).copy_cursor(&topic)?;
        let keys = index.keys(&topic);
        let unchanged = cursor
            .as_ref()
            .and_then(|c| c.checked.as_ref())
            .is_some_and(|c| !keys.is_empty() && c.index == keys);
        if unchanged {
            out.debug(&format!(
                "topic {topic}: no manifest since copy last loaded it all (the index of change)"
            ));
            continue;
        }
        unlisted.extend(cat.marker_keys()?);
        let mut work = TopicWork {
            topic: topic.clone(),
            full: cursor.is_none(),
            cursor,
            index: keys.to_vec(),
            ..Default::default()
        };
        let head = cat.head()?;
        let at = work.cursor.as_ref().map(|c| c.manifest.clone());
        let (mut candidates, mut done) = window(&cat, wh, at.as_deref(), work.full)?;
        let (mut found, mut n) = read_window(&cat, &candidates, &done, &mut work)?;
        if !work.full {
            let checked = work.cursor.as_ref().and_then(|c| c.checked.as_ref());
            if let Some(why) = unexplained(wh, &topic, head.as_ref(), checked, &found)? {
                out.debug(&format!(
                    "topic {topic}: {why}; a manifest named before copy's window may hold them (an ingest host's clock behind), so every manifest of the topic is listed once"
                ));
                read += n;
                work.full = true;
                (candidates, done) = window(&cat, wh, None, true)?;
                (found, n) = read_window(&cat, &candidates, &done, &mut work)?;
            }
        }
        if work.full {
            work.head = head.map(|h| CheckedHead {
                epoch: h.epoch,
                next: h.next,
                index: Vec::new(),
            });
        }
        read += n;
        work.candidates = candidates.into_iter().map(|(_, n)| n).collect();
        work.done = done;
        jobs.extend(found);
        works.push(work);
    }
    let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
    let loaded = warehouse::Ledger::new(wh).keys_loaded(&keys)?;
    let mut seen = HashSet::new();
    // A key listed by two manifests (a crashed run's object adopted later) loads once.
    jobs.retain(|j| !loaded.contains(&j.key) && seen.insert(j.key.clone()));
    select(&mut jobs, opts);
    Ok((jobs, read, works))
}

/// A name just below this manifest's: the time it starts with (every name of that time sorts
/// after it). None for a name that does not start with a time.
fn just_below(name: &str) -> Option<String> {
    layout::manifest_time(name)
        .and(name.get(..20))
        .map(str::to_string)
}

/// Moves each topic's cursor over the manifests of its window whose every object the ledger
/// now holds, up to the first that is not (and back before it when it is older than the
/// cursor: it landed late). The ledger is asked, so what a filter (--since, --until, --limit)
/// left out stops the cursor whatever this run loaded.
fn advance_cursors(wh: &mut dyn Warehouse, works: &[TopicWork], out: &Output) -> Result<()> {
    for w in works {
        let keys: Vec<String> = w.keys.values().flatten().cloned().collect();
        let loaded = warehouse::Ledger::new(wh).keys_loaded(&keys)?;
        let complete = |name: &String| {
            w.done.contains(name)
                || w.keys
                    .get(name)
                    .is_some_and(|k| k.iter().all(|k| loaded.contains(k)))
        };
        let old = w.cursor.as_ref().map(|c| c.manifest.clone());
        let manifest = next_cursor(old.as_deref(), &w.candidates, complete);
        let Some(manifest) = manifest else { continue };
        let mut checked = w
            .head
            .clone()
            .or_else(|| w.cursor.as_ref().and_then(|c| c.checked.clone()));
        // Nothing of the topic left to load: the index's keys say when that changes.
        let all_loaded = w.candidates.iter().all(&complete);
        match (&mut checked, all_loaded && !w.index.is_empty()) {
            (Some(c), true) => c.index = w.index.clone(),
            (Some(c), false) => c.index.clear(),
            (None, true) => {
                checked = Some(CheckedHead {
                    index: w.index.clone(),
                    ..Default::default()
                })
            }
            (None, false) => {}
        }
        let next = CopyCursor { manifest, checked };
        if w.cursor.as_ref() != Some(&next) {
            out.debug(&format!(
                "topic {}: copy's cursor {} -> {}",
                w.topic,
                old.as_deref().unwrap_or("(none)"),
                next.manifest
            ));
            warehouse::Ledger::new(wh).store_copy_cursor(&w.topic, &next)?;
        }
    }
    Ok(())
}

/// Where a cursor goes, from `old`, over the window's manifests (`candidates`, by name, in
/// order): past every one when all are `complete`; else just before the first that is not
/// (not before `old` when that one is after `old`, and back before it when it landed late,
/// before `old`). None: no cursor to store.
fn next_cursor(
    old: Option<&str>,
    candidates: &[String],
    complete: impl Fn(&String) -> bool,
) -> Option<String> {
    let old = old.map(str::to_string);
    match candidates.iter().position(|n| !complete(n)) {
        Some(i) => {
            let first = &candidates[i];
            let below = match i {
                0 => just_below(first),
                _ => Some(candidates[i - 1].clone()),
            };
            match (old, below) {
                (Some(o), Some(b)) if o < *first => Some(o.max(b)),
                (o, None) => o,
                (_, b) => b,
            }
        }
        None => match (old, candidates.last()) {
            (Some(o), Some(l)) => Some(o.max(l.clone())),
            (o, l) => o.or_else(|| l.cloned()),
        },
    }
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
    // Only a run that reads the catalog moves copy's cursors (--full-scan and --key do not).
    let (jobs, read, works) = if opts.full_scan || opts.key.is_some() {
        let mut jobs = pending_jobs(store, wh, opts)?;
        let read = attach_expectations(store, &mut jobs)
            .with_context(|| format!("reading run manifests in {}", store.describe()))?;
        (jobs, read, Vec::new())
    } else {
        discover(store, wh, opts, &mut unlisted, out)
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
    let mut codec = super::codec_for(store, layout)?;
    if let Some([t]) = opts.topics.as_deref() {
        codec = codec.for_topic(t);
    } else if layout.topic_column.is_some() {
        bail!("a raw table with a topic column loads one topic at a time");
    }
    let results = execute(steps, store, wh, &codec, &lopts, &pb, &mut summary, out)?;
    pb.finish_and_clear();
    advance_cursors(wh, &works, out)?;
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
    layout: &Codec,
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
        // c skips offsets b loads: it goes in a batch after b's (a batch's loads may run in
        // parallel, and c must not commit unless b did); d rests on nothing and joins c's.
        let batches: Vec<usize> = steps
            .iter()
            .map(|s| match s {
                Step::Load(b) => b.len(),
                Step::Skip(..) => 0,
            })
            .collect();
        assert_eq!(batches, vec![0, 1, 2, 0]);
    }

    #[test]
    fn a_job_resting_on_a_job_of_this_run_never_shares_its_batch() {
        // The full object first, then the two it overlaps: both rest on it.
        let steps = plan_loads(
            BTreeMap::new(),
            vec![
                job("full", 0, 40, 79),
                job("low", 0, 0, 59),
                job("high", 0, 60, 99),
                job("other", 1, 0, 9),
            ],
        );
        assert_eq!(
            describe(&steps),
            vec![
                "load full skipping []",
                "load low skipping [(40, 59)]",
                "load high skipping [(60, 79)]",
                "load other skipping []",
            ]
        );
        let batches: Vec<Vec<&str>> = steps
            .iter()
            .map(|s| match s {
                Step::Load(b) => b.iter().map(|j| j.key.as_str()).collect(),
                Step::Skip(j, _) => vec![j.key.as_str()],
            })
            .collect();
        assert_eq!(batches, vec![vec!["full"], vec!["low", "high", "other"]]);
        // Offsets the ledger holds are no reason to wait: one batch.
        let mut loaded = BTreeMap::new();
        loaded.insert(("t".to_string(), 0, 0), vec![OffsetSpan::new(40, 79)]);
        let steps = plan_loads(loaded, vec![job("low", 0, 0, 59), job("high", 0, 60, 99)]);
        assert_eq!(steps.len(), 1);
    }

    #[test]
    fn the_cursor_passes_only_manifests_loaded_in_full_and_goes_back_for_a_late_one() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = |s: &str| format!("20261203T1{s}0000.000Z-r");
        let c = names(&[&m("1"), &m("2"), &m("3")]);
        let all = |_: &String| true;
        // All loaded: past the last.
        assert_eq!(next_cursor(None, &c, all), Some(m("3")));
        assert_eq!(
            next_cursor(Some(&m("9")), &c, all),
            Some(m("9")),
            "never back for nothing"
        );
        // The second not loaded (a filtered run): just before it, not past it.
        let not2 = |n: &String| *n != m("2");
        assert_eq!(next_cursor(None, &c, not2), Some(m("1")));
        assert_eq!(next_cursor(Some(&m("0")), &c, not2), Some(m("1")));
        // The first not loaded: a name just below it, for the window to include it.
        let not1 = |n: &String| *n != m("1");
        assert_eq!(
            next_cursor(None, &c, not1),
            Some("20261203T110000.000Z".into())
        );
        // One that landed late, before the cursor: the cursor goes back before it.
        assert_eq!(next_cursor(Some(&m("5")), &c, not2), Some(m("1")));
        // Nothing in the window: the cursor stays (or there is none).
        assert_eq!(next_cursor(Some(&m("5")), &[], all), Some(m("5")));
        assert_eq!(next_cursor(None, &[], all), None);
    }

    #[test]
    fn a_name_just_below_a_manifest_sorts_before_every_manifest_of_its_time() {
        let m = "20261203T131833.123Z-run-b";
        let below = just_below(m).unwrap();
        assert_eq!(below, "20261203T131833.123Z");
        assert!(below.as_str() < "20261203T131833.123Z-run-a" && below.as_str() < m);
        assert!(below.as_str() > "20261203T131833.122Z-run-z");
        assert_eq!(just_below("no-time-here"), None);
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
            pairs(&layout::merge_spans(spans(&[
                (5, 9),
                (0, 4),
                (12, 14),
                (13, 20)
            ]))),
            vec![(0, 9), (12, 20)]
        );
    }
}
