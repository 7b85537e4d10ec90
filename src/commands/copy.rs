//! `copy`: load archived objects that are not in the ledger yet, each with its ledger row in
//! the same transaction, under a lock so concurrent runs load each object once.

use crate::archive::layout::{self, Manifest, MANIFESTS};
use crate::archive::{self as archive_mod, Compression, ObjectStore};
use crate::cli::CopyArgs;
use crate::config::Settings;
use crate::output::Output;
use crate::records::Layout;
use crate::warehouse::{self, LoadJob, LoadOptions, LoadResult, Warehouse};
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
    pub fail_before_commit: bool,
    /// Only objects whose time folder is at or after this (in the archive's zone).
    pub since: Option<NaiveDateTime>,
    /// Only objects whose time folder is before this.
    pub until: Option<NaiveDateTime>,
    /// The archive's folder template, to read an object's time folder from its key.
    pub key_template: String,
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
        jobs.push(LoadJob {
            key: o.key,
            size: o.size,
            compression,
            expected_sha256: None,
            expected_records: None,
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
    let mut manifests: Vec<String> = store
        .list(MANIFESTS)?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    let run_name = |k: &String| k.rsplit('/').next().unwrap_or_default().to_string();
    manifests.sort_by_cached_key(|k| std::cmp::Reverse(run_name(k)));
    let mut read = 0;
    for key in manifests {
        if want.is_empty() {
            break;
        }
        let mut body = Vec::new();
        store.get_into(&key, &mut body)?;
        read += 1;
        let man: Manifest =
            serde_json::from_slice(&body).with_context(|| format!("parsing manifest {key}"))?;
        for o in man.objects {
            // Newest first: a key listed again by a later run (same name, same data) keeps
            // the later run's entry.
            if let Some(i) = want.remove(&o.key) {
                jobs[i].expected_sha256 = Some(o.sha256);
                jobs[i].expected_records = Some(o.records);
            }
        }
    }
    Ok(read)
}

/// `batchlayer copy`: connects, runs, and prints the plan (dry run) and the summary.
pub fn exec(a: &CopyArgs, s: &Settings, out: &Output) -> Result<()> {
    let store = archive_mod::open(&s.archive)?;
    if let Some(src) = store.credential_source() {
        out.debug(&format!("S3 credentials: {src}"));
    }
    let mut wh = warehouse::connect(&s.warehouse, &s.archive)?;
    let opts = CopyOptions {
        dry_run: a.dry_run,
        key: a.key.clone(),
        limit: a.limit,
        max_errors: a.max_errors,
        wait: !a.no_wait,
        fail_before_commit: s.failpoint("copy-before-commit"),
        since: a.since,
        until: a.until,
        key_template: s.archive.key_template.clone(),
    };
    let sum = run(store.as_ref(), wh.as_mut(), &s.layout, &opts, out)?;
    if a.dry_run {
        for j in &sum.pending {
            out.plan(&format!("would load {} ({} bytes)", j.key, j.size));
        }
        for q in &sum.sql {
            out.plan(&format!("{q};"));
        }
    }
    out.summary(
        &format!(
            "copy{}: {} objects ({}), {} rows, {} rejects, {:.1}s",
            if sum.dry_run { " (dry run)" } else { "" },
            sum.objects,
            indicatif::HumanBytes(sum.bytes),
            sum.rows,
            sum.rejects,
            sum.seconds
        ),
        &serde_json::to_value(&sum)?,
    );
    Ok(())
}

/// The objects to load: archived, not in the ledger, and selected by the options.
fn pending_jobs(
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    opts: &CopyOptions,
) -> Result<Vec<LoadJob>> {
    let loaded = wh.loaded_keys()?;
    let mut jobs = archived_objects(store)
        .with_context(|| format!("listing the archive {}", store.describe()))?;
    if let Some(k) = &opts.key {
        jobs.retain(|j| &j.key == k);
        if jobs.is_empty() {
            bail!("object {k} is not in the archive {}", store.describe());
        }
    }
    jobs.retain(|j| !loaded.contains(&j.key));
    if opts.since.is_some() || opts.until.is_some() {
        jobs.retain(|j| match layout::folder_time(&opts.key_template, &j.key) {
            Some(t) => opts.since.is_none_or(|s| t >= s) && opts.until.is_none_or(|u| t < u),
            None => false,
        });
    }
    if let Some(n) = opts.limit {
        jobs.truncate(n);
    }
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
    let mut jobs = pending_jobs(store, wh, opts)?;
    let read = attach_expectations(store, &mut jobs)
        .with_context(|| format!("reading run manifests in {}", store.describe()))?;
    out.debug(&format!(
        "{} objects to load; read {read} run manifests",
        jobs.len()
    ));
    let mut summary = CopySummary {
        dry_run: opts.dry_run,
        manifests_read: read,
        ..Default::default()
    };
    if opts.dry_run {
        summary.sql = wh.load_sql(&jobs, layout);
        summary.bytes = jobs.iter().map(|j| j.size).sum();
        summary.objects = jobs.len();
        summary.pending = jobs;
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let total: u64 = jobs.iter().map(|j| j.size).sum();
    let pb = out.progress(total, "copy", true);
    let lopts = LoadOptions {
        max_errors: opts.max_errors,
        fail_before_commit: opts.fail_before_commit,
    };
    let results = wh.load(&jobs, store, layout, &lopts, &mut |r| {
        pb.inc(r.bytes);
        pb.set_message(format!("{} rows", r.loaded));
    })?;
    pb.finish_and_clear();
    for r in &results {
        if r.loaded + r.rejected != r.records {
            bail!(
                "object {}: {} loaded + {} rejected != {} records",
                r.key,
                r.loaded,
                r.rejected,
                r.records
            );
        }
        summary.rows += r.loaded;
        summary.rejects += r.rejected;
        summary.bytes += r.bytes;
    }
    summary.objects = results.len();
    summary.loaded = results;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
