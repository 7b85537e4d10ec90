//! `copy`: load archived objects that are not in the ledger yet, each with its ledger row in
//! the same transaction, under a lock so concurrent runs load each object once.

use super::ingest::{parse_object_key, Manifest};
use crate::archive::ObjectStore;
use crate::config::Compression;
use crate::output::Output;
use crate::records::Layout;
use crate::warehouse::{LoadJob, LoadOptions, LoadResult, Warehouse};
use crate::Busy;
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

/// Parses `--since`/`--until`: `YYYY-MM-DD`, `YYYY-MM-DDTHH` or `YYYY-MM-DDTHH:MM[:SS]`.
pub fn parse_time(s: &str) -> Result<NaiveDateTime> {
    let s = s.trim().replace(' ', "T");
    if let Ok(d) = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight"));
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&s, f) {
            return Ok(t);
        }
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(&format!("{s}:00"), "%Y-%m-%dT%H:%M") {
        return Ok(t);
    }
    bail!("{s:?} is not a time (use YYYY-MM-DD, YYYY-MM-DDTHH or YYYY-MM-DDTHH:MM)")
}

#[derive(Debug, Default, Serialize)]
pub struct CopySummary {
    pub objects: usize,
    pub rows: u64,
    pub rejects: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub dry_run: bool,
    pub loaded: Vec<LoadResult>,
    pub pending: Vec<LoadJob>,
    pub sql: Vec<String>,
}

/// Archived data objects (not manifests or rejects), with what the manifests say of them.
pub fn archived_objects(store: &dyn ObjectStore) -> Result<Vec<LoadJob>> {
    let mut expected: HashMap<String, (String, u64)> = HashMap::new();
    for m in store.list("_manifests/")? {
        let mut body = Vec::new();
        store.get_into(&m.key, &mut body)?;
        let man: Manifest =
            serde_json::from_slice(&body).with_context(|| format!("parsing manifest {}", m.key))?;
        for o in man.objects {
            expected.insert(o.key, (o.sha256, o.records));
        }
    }
    let mut jobs = Vec::new();
    for o in store.list("")? {
        if o.key.starts_with('_') || parse_object_key(&o.key).is_none() {
            continue;
        }
        let compression = Compression::from_key(&o.key).unwrap_or(Compression::None);
        let exp = expected.get(&o.key);
        jobs.push(LoadJob {
            key: o.key,
            size: o.size,
            compression,
            expected_sha256: exp.map(|e| e.0.clone()),
            expected_records: exp.map(|e| e.1),
        });
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
        if !wh.lock("copy", opts.wait)? {
            return Err(Busy("another copy holds the lock on this raw table".into()).into());
        }
        wh.ensure_tables(layout)?;
    }
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
        jobs.retain(
            |j| match super::ingest::folder_time(&opts.key_template, &j.key) {
                Some(t) => opts.since.is_none_or(|s| t >= s) && opts.until.is_none_or(|u| t < u),
                None => false,
            },
        );
    }
    if let Some(n) = opts.limit {
        jobs.truncate(n);
    }
    let mut summary = CopySummary {
        dry_run: opts.dry_run,
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
    let pb = out.progress(total, "copy");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arguments() {
        assert_eq!(
            parse_time("2024-01-02").unwrap().to_string(),
            "2024-01-02 00:00:00"
        );
        assert_eq!(
            parse_time("2024-01-02T05").unwrap().to_string(),
            "2024-01-02 05:00:00"
        );
        assert_eq!(
            parse_time("2024-01-02 05:30").unwrap().to_string(),
            "2024-01-02 05:30:00"
        );
        assert!(parse_time("yesterday").is_err());
    }
}
