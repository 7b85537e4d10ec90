//! `publish`: the archive as a Parquet lake, one hour folder at a time, each written once its
//! hour is closed (every partition archived and loaded past the hour's end plus
//! `status.lateness`: the "complete through" status computes), then sealed with `_SUCCESS`.
//! `--open` also writes hours not closed yet. The lake's own catalog (`lake::catalog`) makes
//! each archived offset land in exactly one row, whatever kills a run and when
//! (docs/lake-design.md).

use crate::archive::catalog::{Catalog, ManifestCache};
use crate::archive::layout::{self, subtract_spans, ObjectEntry, OffsetSpan, RecordTimes};
use crate::archive::{self as archive_mod, ObjectStore, PutOutcome};
use crate::cli::PublishArgs;
use crate::config::Settings;
use crate::error::Error;
use crate::lake::catalog::{
    self as lc, FileRecord, HourRecord, Intent, LakeHead, PlannedObject, Spans,
};
use crate::lake::{Coordinates, ParquetOptions, ParquetSink, RowChunk};
use crate::output::Output;
use crate::records::{Codec, FrameReader};
use crate::report::Report;
use crate::warehouse::{self, Warehouse};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

/// Parquet bytes per uncompressed archive byte assumed until the lake has a file to go by.
const FIRST_RATIO: f64 = 0.3;

/// About how many bytes of parsed manifests (mostly their record timestamps, about 0.6 bytes
/// a record) a run keeps to read each once; beyond it, a manifest is read again when a file's
/// record times are (a backlog of many runs).
const MANIFESTS_KEPT: usize = 16 << 20;

/// One file of the plan (a dry run prints them).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub hour: String,
    pub name: String,
    pub open: bool,
    pub late: bool,
    pub objects: usize,
    pub records: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct PublishSummary {
    pub topic: String,
    pub lake: String,
    /// Every partition is archived and loaded through this time (less the lateness): hours
    /// ending at or before it are closed.
    pub complete_through: Option<DateTime<Utc>>,
    /// Parquet files written, their rows, records refused by the layout, and bytes.
    pub files: usize,
    pub rows: u64,
    pub rejects: u64,
    pub bytes: u64,
    /// Archive bytes read (as stored).
    pub archive_bytes: u64,
    /// Hours sealed by this run (`_SUCCESS` written).
    pub hours_sealed: Vec<String>,
    /// Hours written before they closed (`--open`): sealed by a later run once closed.
    pub hours_open: Vec<String>,
    /// Hours with archived records not published because they are not closed yet.
    pub hours_waiting: Vec<String>,
    /// Files written into hours sealed already (records later than the lateness).
    pub late_files: Vec<String>,
    /// Files a run that died had planned, finished by this one.
    pub resumed: usize,
    /// Partitions added in Redshift Spectrum.
    pub spectrum_partitions: Vec<String>,
    /// `_SUCCESS` markers of sealed hours written again (`--repair`, or a lost head).
    pub markers_restored: Vec<String>,
    /// Manifest keys read beyond the snapshot's: for the plan and the files' record times, and
    /// those read ahead while the warehouse was connected to.
    pub manifests_read: usize,
    pub dry_run: bool,
    pub plan: Vec<PlannedFile>,
    pub seconds: f64,
}

/// `batchlayer publish`.
pub fn exec(a: &PublishArgs, s: &Settings, out: &Output) -> Result<Report> {
    if s.topics.multi() {
        let store = archive_mod::open(&s.archive)?;
        let topics = s
            .topics
            .pick(&crate::archive::catalog::topics(store.as_ref())?);
        let mut many = crate::report::Many::new("publish");
        for t in topics {
            let r = s
                .for_topic(&t)
                .map_err(anyhow::Error::from)
                .and_then(|ts| exec_one(a, &ts, &t, out));
            many.record(&t, r, out);
        }
        return Ok(Report::Many(many));
    }
    let topic = s.require_kafka()?.topic.clone();
    exec_one(a, s, &topic, out)
}

fn exec_one(a: &PublishArgs, s: &Settings, topic: &str, out: &Output) -> Result<Report> {
    let started = Instant::now();
    check_settings(s, topic)?;
    let archive = archive_mod::open(&s.archive)?;
    let lake = archive_mod::open(&s.lake.store)?;
    if !a.dry_run {
        lake.check()
            .with_context(|| format!("the lake {}", s.lake.url))?;
    }
    // Kafka's positions are read on a thread of their own while the warehouse is connected
    // to and locked. The snapshot's time is taken before them: a partition caught up is
    // complete through it, so it must not be later than its end offset's reading.
    let mut kafka = crate::progress::start(s)?;
    // Meanwhile, the manifests the lake's cursor has not passed are read too (a guess: the
    // plan reads those it lists after the lock); the snapshot, the plan and the files' record
    // times find them kept (each read once), up to a bound.
    let fresh_cache =
        || ManifestCache::with_budget(Catalog::new(archive.as_ref(), topic), MANIFESTS_KEPT);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let (wh, mut manifests) = std::thread::scope(|scope| {
        let warm = scope.spawn(|| {
            let mut m = fresh_cache();
            let head = LakeHead::read(lake.as_ref(), topic).ok().flatten();
            m.warm(head.and_then(|h| h.cursor).as_deref(), &failed);
            m
        });
        let wh = warehouse::connect(&s.warehouse, &s.archive);
        if wh.is_err() {
            // The error is told at once: the warming stops at its next manifest.
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let manifests = warm.join().unwrap_or_else(|_| fresh_cache());
        (wh, manifests)
    });
    // Read ahead, whether the plan uses them or not.
    let warm_reads = manifests.read;
    let mut wh = wh?;
    if !a.dry_run {
        let waited = super::take_lock(
            wh.as_mut(),
            "publish",
            !a.no_wait,
            || "another publish holds the lock on this raw table's topic".into(),
            out,
        )?;
        if waited {
            // Another publish ran meanwhile: read the positions after it, and forget the
            // manifests read ahead (its run has moved the lake's cursor past some of them).
            kafka = crate::progress::start(s)?;
            manifests = fresh_cache();
        }
    }
    let snap =
        crate::progress::snapshot_from(s, &mut manifests, wh.as_mut(), s.status.lateness, kafka)
            .context("reading how complete the topic is (status's complete-through)")?;
    // The snapshot's own reads (a manifest per partition) are kept over the bound; from here
    // on, while files are written, it holds.
    manifests.trim();
    let complete_through = crate::progress::complete_through(&snap.partitions);
    let codec = super::codec_for(archive.as_ref(), &s.layout)?;
    let mut p = Publisher {
        s,
        topic,
        archive: archive.as_ref(),
        lake: lake.as_ref(),
        wh: wh.as_mut(),
        out,
        codec: &codec,
        manifests,
        max_errors: a.max_errors.or(s.max_errors),
        registered: BTreeSet::new(),
        repair: a.repair,
        sum: PublishSummary {
            topic: topic.to_string(),
            lake: s.lake.url.clone(),
            complete_through,
            dry_run: a.dry_run,
            manifests_read: warm_reads,
            ..Default::default()
        },
    };
    p.run(a.open, a.dry_run)?;
    let mut sum = p.sum;
    if a.dry_run {
        for f in &sum.plan {
            out.plan(&format!(
                "would write {} ({} hour {}{}): {} objects, {} records",
                f.name,
                if f.open { "open" } else { "closed" },
                f.hour,
                if f.late { ", late" } else { "" },
                f.objects,
                f.records
            ));
        }
    }
    for h in &sum.hours_open {
        out.info(&format!(
            "hour {h} written open (not closed yet): it is sealed by a later run once closed"
        ));
    }
    if !sum.late_files.is_empty() {
        out.warn(&format!(
            "{} late file(s) written into hours sealed already (records later than status.lateness): {}",
            sum.late_files.len(),
            sum.late_files.join(", ")
        ));
    }
    sum.seconds = started.elapsed().as_secs_f64();
    Ok(Report::Publish(sum))
}

/// What publish needs of the settings: a time folder per hour, a topic the lake can hold.
fn check_settings(s: &Settings, topic: &str) -> Result<()> {
    let t = &s.archive.key_template;
    if !["{YYYY}", "{MM}", "{DD}", "{HH}"]
        .iter()
        .all(|f| t.contains(f))
    {
        return Err(Error::config(format!(
            "archive.key_template {t:?}: publish writes one folder per hour of the archive's time folders, so the template needs {{YYYY}}, {{MM}}, {{DD}} and {{HH}}"
        ))
        .into());
    }
    if topic == lc::LAKE_DIR {
        return Err(Error::config(format!(
            "topic {topic:?}: the lake keeps its catalog under that name"
        ))
        .into());
    }
    crate::lake::parquet::check_layout(&s.layout)
        .map_err(|e| Error::config(format!("the layout cannot be a lake table: {e:#}")).into())
}

/// A manifest's name and its objects' (key, epoch, partition).
type ManifestObjects = (String, Vec<(String, i32, i32)>);

/// An archived object with something to publish.
struct Candidate {
    entry: ObjectEntry,
    epoch: i32,
    manifest: String,
    hour: String,
    /// Its offsets the lake does not hold yet.
    todo: Vec<OffsetSpan>,
}

struct Publisher<'a> {
    s: &'a Settings,
    topic: &'a str,
    archive: &'a dyn ObjectStore,
    lake: &'a dyn ObjectStore,
    wh: &'a mut dyn Warehouse,
    out: &'a Output,
    codec: &'a Codec,
    /// Manifests read (by the snapshot, the plan), kept up to [`MANIFESTS_KEPT`].
    manifests: ManifestCache<'a>,
    max_errors: Option<u64>,
    sum: PublishSummary,
    /// Hours this run added (or found) as Spectrum partitions.
    registered: BTreeSet<String>,
    /// Rebuild the head from the lake's records and restore sealed hours' `_SUCCESS`.
    repair: bool,
}

impl<'a> Publisher<'a> {
    fn run(&mut self, open: bool, dry_run: bool) -> Result<()> {
        let mut head = match LakeHead::read(self.lake, self.topic)? {
            Some(h) if !self.repair => h,
            _ => {
                let mut h = LakeHead::rebuild(self.lake, self.topic)?;
                let old = LakeHead::read(self.lake, self.topic)?.unwrap_or_default();
                h.cursor = if self.repair { None } else { old.cursor };
                h.ratio = old.ratio;
                if !dry_run {
                    // Every sealed hour has its marker (a lost head, a marker deleted).
                    for hour in &h.sealed {
                        let success =
                            format!("{}{}", lc::hour_folder(self.topic, hour), lc::SUCCESS);
                        if self.lake.put_bytes_if_absent(&success, b"")? == PutOutcome::Created {
                            self.sum.markers_restored.push(success);
                        }
                    }
                }
                h
            }
        };
        if !dry_run {
            self.resume(&mut head)?;
        }
        // What the archive holds since the cursor, less what the lake holds.
        let manifests = self
            .manifests
            .catalog()
            .recent_manifests(head.cursor.as_deref())?;
        let mut cands: Vec<Candidate> = Vec::new();
        let mut keys_of: Vec<ManifestObjects> = Vec::new();
        let mut seen = HashSet::new();
        // Offsets a candidate of this run claims: an offset archived twice (a partition
        // handed back mid-run, an adopted object) is published once.
        let mut claimed: BTreeMap<String, Vec<OffsetSpan>> = BTreeMap::new();
        for (key, name) in &manifests {
            let read = self.manifests.read;
            let man = self.manifests.listed(key, name)?;
            let mut mine = Vec::new();
            for o in &man.objects {
                // Record timestamps (about a byte a record) are kept in the cache up to its
                // bound, else read again when the object's file is written: the plan holds
                // none of them.
                let o = o.without_times();
                mine.push((o.key.clone(), man.epoch, o.partition));
                if !seen.insert(o.key.clone()) {
                    continue;
                }
                let span = OffsetSpan::new(o.first_offset, o.last_offset);
                if o.last_offset < o.first_offset {
                    continue;
                }
                let part = lc::part_id(man.epoch, o.partition);
                let mut taken = head.published(man.epoch, o.partition);
                taken.extend(claimed.get(&part).into_iter().flatten().copied());
                let todo = subtract_spans(span, &layout::merge_spans(taken));
                if todo.is_empty() {
                    continue;
                }
                claimed
                    .entry(part)
                    .or_default()
                    .extend(todo.iter().copied());
                let t = layout::folder_time(&self.s.archive.key_template, &o.key)
                    .ok_or_else(|| {
                        anyhow!(
                            "object {}: its key does not follow archive.key_template {:?}, so its hour is unknown",
                            o.key,
                            self.s.archive.key_template
                        )
                    })?;
                cands.push(Candidate {
                    hour: lc::hour_id(t),
                    epoch: man.epoch,
                    manifest: name.clone(),
                    entry: o,
                    todo,
                });
            }
            keys_of.push((name.clone(), mine));
            self.sum.manifests_read += self.manifests.read - read;
        }
        // Objects without records publish nothing: their offsets are accounted for.
        let mut empty = Vec::new();
        cands.retain(|c| {
            if c.entry.records == 0 {
                empty.push((lc::part_id(c.epoch, c.entry.partition), c.todo.clone()));
                false
            } else {
                true
            }
        });
        // Which hours are closed: ended (in UTC) at or before complete-through.
        let ct = self.sum.complete_through;
        let closed = |hour: &str| -> bool {
            let Some(start) = lc::hour_start(hour) else {
                return false;
            };
            let end = start.and_utc()
                - chrono::Duration::seconds(i64::from(self.s.archive.utc_offset_secs))
                + chrono::Duration::hours(1);
            ct.is_some_and(|c| end <= c)
        };
        let mut by_hour: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
        let mut waiting = BTreeSet::new();
        for c in cands {
            if closed(&c.hour) || open {
                by_hour.entry(c.hour.clone()).or_default().push(c);
            } else {
                waiting.insert(c.hour.clone());
            }
        }
        self.sum.hours_waiting = waiting.iter().cloned().collect();
        let intents = self.plan(&head, by_hour, &closed)?;
        // The kept manifests hold record times of the planned objects only, each until its
        // file takes them.
        let planned: HashSet<&str> = intents
            .iter()
            .flat_map(|i| &i.objects)
            .map(|o| o.key.as_str())
            .collect();
        self.manifests.drop_times_except(&planned);
        for i in &intents {
            self.sum.plan.push(PlannedFile {
                hour: i.hour.clone(),
                name: i.name.clone(),
                open: i.open,
                late: i.late,
                objects: i.objects.len(),
                records: i.objects.iter().map(count_records).sum(),
            });
        }
        if dry_run {
            return Ok(());
        }
        for (part, spans) in &empty {
            head.add_published(part, spans);
        }
        let total: u64 = intents
            .iter()
            .flat_map(|i| &i.objects)
            .map(count_records)
            .sum();
        let pb = self.out.progress(total, "publish", false);
        // A closed hour is sealed once its last file is committed (an hour's files are planned
        // one after another), while the next hour's first file is written.
        let seal_now = |i: usize, head: &LakeHead| -> Option<String> {
            let hour = &intents[i].hour;
            let last = intents.get(i + 1).is_none_or(|n| &n.hour != hour);
            (last && closed(hour) && !waiting.contains(hour) && head.unsealed.contains(hour))
                .then(|| hour.clone())
        };
        self.write_files(&mut head, &intents, &pb, &seal_now)?;
        pb.finish_and_clear();
        let mut hours_open: BTreeSet<String> = BTreeSet::new();
        for i in intents.iter().filter(|i| i.open) {
            hours_open.insert(i.hour.clone());
        }
        // Seal the closed hours with files: every object of theirs is published now (the
        // window's objects of a closed hour were all planned, and older ones are behind the
        // cursor), and a run that failed to write one stopped before this.
        for hour in head.unsealed.clone() {
            if closed(&hour) && !waiting.contains(&hour) {
                self.seal(&mut head, &hour)?;
                hours_open.remove(&hour);
            }
        }
        self.sum.hours_open = hours_open.into_iter().collect();
        // The cursor passes the manifests whose every object the lake now holds, up to the
        // first that is not.
        let complete = |objs: &Vec<(String, i32, i32)>, head: &LakeHead| {
            objs.iter()
                .all(|(key, epoch, p)| match layout::parse_object_name(key) {
                    Some(n) => subtract_spans(
                        OffsetSpan::new(n.first, n.last),
                        &head.published(*epoch, *p),
                    )
                    .is_empty(),
                    None => false,
                })
        };
        let first_open = keys_of.iter().position(|(_, objs)| !complete(objs, &head));
        let next = match first_open {
            None => keys_of.last().map(|(n, _)| n.clone()),
            Some(0) => keys_of[0].0.get(..20).map(str::to_string),
            Some(i) => Some(keys_of[i - 1].0.clone()),
        };
        let next = match (&head.cursor, next) {
            (Some(old), Some(n)) if first_open.is_none() => Some(old.clone().max(n)),
            (old, None) => old.clone(),
            (_, n) => n,
        };
        if next != head.cursor {
            head.cursor = next;
        }
        head.store(self.lake, self.topic)?;
        Ok(())
    }

    /// Writes the intents' files in order: each one's intent is stored before the file is,
    /// and the file committed after. File i+1's objects are read and encoded (on a thread of
    /// the run's) while file i's last row group is encoded, its footer written, and it is
    /// stored and committed (here), and only then is intent i+1 stored: one intent at most is
    /// outstanding, as when files were written one after the other. Whatever stops the run,
    /// a file not committed keeps its intent (or has none yet), which the next run finishes.
    /// `seal_now` names the hour to seal after file i's commit, if any.
    fn write_files(
        &mut self,
        head: &mut LakeHead,
        intents: &[Intent],
        pb: &indicatif::ProgressBar,
        seal_now: &dyn Fn(usize, &LakeHead) -> Option<String>,
    ) -> Result<()> {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let stop = &stop;
        std::thread::scope(|scope| -> Result<()> {
            // The file streamed last, not stored yet.
            let mut pending: Option<(usize, Streamed)> = None;
            for (i, intent) in intents.iter().enumerate() {
                let rd = self.reading();
                let known = take_times(&mut self.manifests, intent);
                let streaming = std::thread::Builder::new()
                    .name("publish-file".into())
                    .spawn_scoped(scope, move || stream_file(rd, intent, known, pb, stop))
                    .context("starting a thread to write a Parquet file")?;
                let before = match pending.take() {
                    Some((j, f)) => self.finish_file(head, &intents[j], f, j, seal_now),
                    None => Ok(()),
                };
                let planned = before.and_then(|()| {
                    lc::put_record(
                        self.lake,
                        &lc::intent_key(self.topic, &intent.name),
                        intent,
                        |a, b| a == b,
                    )
                });
                if let Err(e) = planned {
                    // Its file is not stored: its reading stops at its next object.
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = streaming.join();
                    return Err(e);
                }
                crate::failpoint::crash("publish-crash-after-intent");
                let streamed = streaming
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("writing {} panicked", intent.name)))?;
                pending = Some((i, streamed));
            }
            if let Some((j, f)) = pending.take() {
                self.finish_file(head, &intents[j], f, j, seal_now)?;
            }
            Ok(())
        })
    }

    /// Stores and commits a streamed file, then seals its hour if `seal_now` says so.
    fn finish_file(
        &mut self,
        head: &mut LakeHead,
        intent: &Intent,
        f: Streamed,
        i: usize,
        seal_now: &dyn Fn(usize, &LakeHead) -> Option<String>,
    ) -> Result<()> {
        let rec = self.store_file(intent, f)?;
        self.commit(head, intent, rec)?;
        if let Some(hour) = seal_now(i, head) {
            self.seal(head, &hour)?;
        }
        Ok(())
    }

    /// Finishes what a run that died started: each intent's file is written (or found
    /// written) and committed; hour records without their `_SUCCESS` get it.
    fn resume(&mut self, head: &mut LakeHead) -> Result<()> {
        let listed = self.lake.list(&lc::intents_prefix(self.topic))?;
        if listed.is_empty() {
            return Ok(());
        }
        let pb = indicatif::ProgressBar::hidden();
        for o in listed {
            let Some(intent) = lc::read_intent(self.lake, &o.key)? else {
                continue;
            };
            let rec_key = lc::file_record_key(self.topic, &intent.hour, &intent.name);
            let rec = match lc::read_file_record(self.lake, &rec_key)? {
                Some(r) => r,
                None => self.write_file(&intent, &pb)?,
            };
            self.out.debug(&format!(
                "finished file {} that an earlier run planned",
                intent.name
            ));
            self.commit(head, &intent, rec)?;
            self.sum.resumed += 1;
        }
        Ok(())
    }

    /// The files to write: per hour, its objects in (epoch, partition, offset) order, cut
    /// into files of about `lake.file_bytes` (an object is never split).
    fn plan(
        &self,
        head: &LakeHead,
        by_hour: BTreeMap<String, Vec<Candidate>>,
        closed: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Intent>> {
        let ratio = head.ratio.unwrap_or(FIRST_RATIO);
        let target = self.s.lake.file_bytes as f64;
        let mut intents = Vec::new();
        for (hour, mut cands) in by_hour {
            cands.sort_by_key(|c| (c.epoch, c.entry.partition, c.entry.first_offset));
            let open = !closed(&hour);
            let late = head.sealed.contains(&hour);
            let mut group: Vec<PlannedObject> = Vec::new();
            let mut est = 0.0;
            for c in cands {
                let o = &c.entry;
                let span = OffsetSpan::new(o.first_offset, o.last_offset);
                // Each record's offset must be known to give it its `_offset`.
                if o.records + o.missing_count() != span.count() {
                    bail!(
                        "object {}: its {} records and {} listed holes do not make up its offsets {}..{} (an object adopted from an ingest run that died, whose holes are not all known), so its records' offsets are unknown; publish gives no row an _offset it cannot prove",
                        o.key,
                        o.records,
                        o.missing_count(),
                        o.first_offset,
                        o.last_offset
                    );
                }
                let share =
                    c.todo.iter().map(|s| s.count()).sum::<u64>() as f64 / span.count() as f64;
                let size = o.uncompressed_bytes as f64 * ratio * share;
                if !group.is_empty() && est + size > target {
                    intents.push(intent(&hour, open, late, std::mem::take(&mut group)));
                    est = 0.0;
                }
                est += size;
                group.push(PlannedObject {
                    key: o.key.clone(),
                    sha256: o.sha256.clone(),
                    records: o.records,
                    epoch: c.epoch,
                    partition: o.partition,
                    first: o.first_offset,
                    last: o.last_offset,
                    holes: lc::to_spans(&o.missing()),
                    compression: o.compression,
                    bytes: o.bytes,
                    uncompressed: o.uncompressed_bytes,
                    timestamps: None,
                    spans: lc::to_spans(&c.todo),
                    manifest: c.manifest.clone(),
                });
            }
            if !group.is_empty() {
                intents.push(intent(&hour, open, late, group));
            }
        }
        Ok(intents)
    }

    /// What streaming a file reads (references only: a thread of the run's may hold them
    /// while this side commits the file before).
    fn reading(&self) -> Reading<'a> {
        Reading {
            s: self.s,
            topic: self.topic,
            archive: self.archive,
            lake: self.lake,
            codec: self.codec,
            max_errors: self.max_errors,
        }
    }

    /// Writes one intent's file (rows from its objects' planned offsets) and stores it, with
    /// its rejects; returns its commit record (not written yet).
    fn write_file(&mut self, intent: &Intent, pb: &indicatif::ProgressBar) -> Result<FileRecord> {
        let streamed = stream_file(
            self.reading(),
            intent,
            take_times(&mut self.manifests, intent),
            pb,
            &std::sync::atomic::AtomicBool::new(false),
        )?;
        self.store_file(intent, streamed)
    }

    /// Finishes a streamed file (its last row group, its footer, its sync) and stores it,
    /// with its rejects; returns its commit record (not written yet).
    fn store_file(&mut self, intent: &Intent, f: Streamed) -> Result<FileRecord> {
        let Streamed {
            sink,
            syncer,
            tmp,
            plan_sha,
            rejects,
            rejected,
            archive_bytes,
            manifests_read,
        } = f;
        self.sum.manifests_read += manifests_read;
        self.sum.archive_bytes += archive_bytes;
        let mut stats = sink.finish().context("finishing the Parquet file")?;
        if let Some(s) = syncer {
            s.finish()
                .with_context(|| format!("syncing {}", tmp.path().display()))?;
        }
        let key = lc::data_key(self.topic, &intent.hour, &intent.name);
        if rejected > 0 {
            let rk = lc::rejects_key(self.topic, &intent.name);
            if self.lake.put_bytes_if_absent(&rk, &rejects)? == PutOutcome::AlreadyExists {
                self.out
                    .debug(&format!("{rk} was stored by an earlier attempt"));
            }
        }
        match self
            .lake
            .put_file_if_absent(&key, tmp.path())
            .with_context(|| format!("storing {key} in the lake"))?
        {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => {
                // An earlier attempt of this very plan stored it (its footer names the plan, and
                // it holds the rows; the writer's settings may have changed since): that file
                // is the one committed. Anything else under the key stops the run.
                stats = stored_file(self.lake, &key, &plan_sha, stats.rows)?;
            }
        }
        crate::failpoint::crash("publish-crash-after-upload");
        let mut spans: BTreeMap<String, Spans> = BTreeMap::new();
        for (p, v) in intent.spans() {
            spans.insert(p, lc::to_spans(&v));
        }
        Ok(FileRecord {
            key,
            hour: intent.hour.clone(),
            name: intent.name.clone(),
            rows: stats.rows,
            rejects: rejected,
            bytes: stats.bytes,
            sha256: stats.sha256,
            row_groups: stats.row_groups,
            open: intent.open,
            late: intent.late,
            spans,
            objects: intent.objects.iter().map(|o| o.key.clone()).collect(),
            at: Utc::now(),
        })
    }

    /// Writes the commit record (the lake's catalog entry), folds it into the head, stores
    /// the head and drops the intent.
    fn commit(&mut self, head: &mut LakeHead, intent: &Intent, rec: FileRecord) -> Result<()> {
        // The hour's partition is there before its file counts as published: a run that dies
        // after this adds it again (IF NOT EXISTS), one that dies before never relied on it.
        if !self.registered.contains(&rec.hour) {
            self.add_spectrum_partition(&rec.hour)?;
            self.registered.insert(rec.hour.clone());
        }
        let key = lc::file_record_key(self.topic, &intent.hour, &intent.name);
        lc::put_record(self.lake, &key, &rec, |a, b| {
            a.key == b.key && a.sha256 == b.sha256 && a.spans == b.spans
        })?;
        crate::failpoint::crash("publish-crash-after-commit");
        head.fold(&rec);
        let archived: u64 = intent.objects.iter().map(count_records).sum();
        if archived > 0 && rec.rows > 0 {
            let r = rec.bytes as f64 / self.uncompressed_of(intent).max(1) as f64;
            head.ratio = Some(match head.ratio {
                Some(old) => (old * 3.0 + r) / 4.0,
                None => r,
            });
        }
        head.store(self.lake, self.topic)?;
        self.lake
            .delete(&lc::intent_key(self.topic, &intent.name))?;
        self.sum.files += 1;
        self.sum.rows += rec.rows;
        self.sum.rejects += rec.rejects;
        self.sum.bytes += rec.bytes;
        if rec.late {
            self.sum.late_files.push(rec.key.clone());
        }
        Ok(())
    }

    /// The archive bytes (uncompressed) of the offsets an intent publishes.
    fn uncompressed_of(&self, intent: &Intent) -> u64 {
        intent
            .objects
            .iter()
            .map(|o| {
                let all = o.records.max(1);
                (o.uncompressed as f64 * count_records(o) as f64 / all as f64) as u64
            })
            .sum()
    }

    /// With `lake.spectrum_schema`, registers the hour's folder as a partition of the
    /// Spectrum table (idempotent: `IF NOT EXISTS`).
    fn add_spectrum_partition(&mut self, hour: &str) -> Result<()> {
        let Some(schema) = self.s.lake.spectrum_schema.clone() else {
            return Ok(());
        };
        let Some(start) = lc::hour_start(hour) else {
            return Ok(());
        };
        let table = self.s.lake.table_for(self.topic);
        let location = self.s.lake.topic_location(self.topic);
        let t = crate::lake::ddl::LakeTable {
            name: &table,
            schema: &schema,
            location: &location,
            layout: &self.s.layout,
            first_day: "",
        };
        let day = start.format("%Y-%m-%d").to_string();
        let sql = crate::lake::ddl::spectrum_partition(
            &t,
            &day,
            start.format("%H").to_string().parse().unwrap_or(0),
        );
        self.wh.session().execute(&sql).with_context(|| {
            format!("adding hour {hour} as a partition of {schema}.{table} in Redshift Spectrum")
        })?;
        self.sum
            .spectrum_partitions
            .push(format!("dt={day}/hour={}", start.format("%H")));
        Ok(())
    }

    /// Seals a closed hour: its record (files, rows), then `_SUCCESS` in its folder.
    fn seal(&mut self, head: &mut LakeHead, hour: &str) -> Result<()> {
        let (rows, rejects) = head.rows.get(hour).copied().unwrap_or_default();
        let rec = HourRecord {
            hour: hour.to_string(),
            files: head.files.get(hour).cloned().unwrap_or_default(),
            rows,
            rejects,
            complete_through: self.sum.complete_through,
            at: Utc::now(),
        };
        lc::put_record(
            self.lake,
            &lc::hour_record_key(self.topic, hour),
            &rec,
            |a, b| a.hour == b.hour,
        )?;
        crate::failpoint::crash("publish-crash-before-success");
        let success = format!("{}{}", lc::hour_folder(self.topic, hour), lc::SUCCESS);
        self.lake.put_bytes_if_absent(&success, b"")?;
        head.unsealed.remove(hour);
        head.files.remove(hour);
        head.rows.remove(hour);
        head.sealed.insert(hour.to_string());
        head.store(self.lake, self.topic)?;
        self.sum.hours_sealed.push(hour.to_string());
        Ok(())
    }
}

/// What streaming a file reads; see [`Publisher::reading`].
#[derive(Clone, Copy)]
struct Reading<'a> {
    s: &'a Settings,
    topic: &'a str,
    archive: &'a dyn ObjectStore,
    lake: &'a dyn ObjectStore,
    codec: &'a Codec,
    max_errors: Option<u64>,
}

/// A file whose every row is handed to its writer, the last row group still being encoded:
/// what finishing and storing it takes ([`Publisher::store_file`]).
struct Streamed {
    sink: ParquetSink<std::io::BufWriter<std::fs::File>>,
    syncer: Option<EarlySync>,
    tmp: tempfile::NamedTempFile,
    /// The sha256 of the intent, in the file's footer.
    plan_sha: String,
    rejects: Vec<u8>,
    rejected: u64,
    archive_bytes: u64,
    manifests_read: usize,
}

/// Streams an intent's objects into a new Parquet file (a temp file), up to its last rows;
/// stops before its next object once `stop` is set.
fn stream_file(
    rd: Reading<'_>,
    intent: &Intent,
    known: BTreeMap<String, Option<String>>,
    pb: &indicatif::ProgressBar,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Streamed> {
    let plan_sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(serde_json::to_vec(intent)?))
    };
    let opts = ParquetOptions {
        compression: rd.s.lake.compression,
        row_group_rows: rd.s.lake.row_group_rows as usize,
        row_group_bytes: rd.s.lake.row_group_bytes as usize,
        metadata: vec![
            ("batchlayer.topic".into(), rd.topic.to_string()),
            ("batchlayer.intent".into(), plan_sha.clone()),
        ],
        ..ParquetOptions::default()
    };
    let tmp = tempfile::NamedTempFile::new().context("creating a temp file for a Parquet file")?;
    let file = tmp.reopen()?;
    // A file the lake keeps as it is goes to disk object by object, behind the writing.
    let syncer = if rd.lake.keeps_file(tmp.path()) {
        Some(EarlySync::start(tmp.reopen()?))
    } else {
        None
    };
    let mut sink = ParquetSink::new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        &rd.s.layout,
        &opts,
    )?;
    let (times, manifests_read) = record_times(rd.archive, rd.topic, intent, known)?;
    let mut rejects: Vec<u8> = Vec::new();
    let mut rejected = 0u64;
    let mut archive_bytes = 0;
    read_objects(
        rd.archive,
        &intent.objects,
        &times,
        rd.codec,
        rd.max_errors,
        &mut sink,
        &mut rejects,
        pb,
        stop,
        |o, r| {
            rejected += r;
            archive_bytes += o.bytes;
            if let Some(s) = &syncer {
                s.kick();
            }
        },
    )?;
    Ok(Streamed {
        sink,
        syncer,
        tmp,
        plan_sha,
        rejects,
        rejected,
        archive_bytes,
        manifests_read,
    })
}

/// Writes a file's bytes to disk on a thread of its own whenever kicked (kicks while it is
/// syncing fold into one), so the sync that makes the file durable finds most of it there.
/// Its first error is kept: a failed sync may not be reported again by the next one.
struct EarlySync {
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl EarlySync {
    fn start(file: std::fs::File) -> EarlySync {
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("publish-sync".into())
            .spawn(move || -> std::io::Result<()> {
                for () in kicked {
                    file.sync_data()?;
                }
                Ok(())
            })
            .expect("starting the sync thread");
        EarlySync {
            kick: Some(kick),
            thread: Some(thread),
        }
    }

    fn kick(&self) {
        if let Some(k) = &self.kick {
            let _ = k.try_send(());
        }
    }

    /// Waits for the syncs asked for; the first error.
    fn finish(mut self) -> std::io::Result<()> {
        drop(self.kick.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the sync thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for EarlySync {
    fn drop(&mut self) {
        drop(self.kick.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn intent(hour: &str, open: bool, late: bool, objects: Vec<PlannedObject>) -> Intent {
    Intent {
        hour: hour.to_string(),
        name: Intent::name_for(hour, &objects),
        open,
        late,
        objects,
    }
}

/// A file an earlier attempt of the same plan stored: its footer's `batchlayer.intent` is the
/// plan's hash and it holds `rows` rows. Its own size and sha256 are what the commit records.
fn stored_file(
    lake: &dyn ObjectStore,
    key: &str,
    plan_sha: &str,
    rows: u64,
) -> Result<crate::lake::FileStats> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::io::{Seek, SeekFrom};
    let mut file = archive_mod::download(lake, key, None)?;
    let sha256 = crate::util::sha256_of(&mut file)?;
    let bytes = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{key} exists in the lake and is not a Parquet file"))?;
    let meta = reader.metadata();
    let names_plan = meta
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .any(|kv| kv.key == "batchlayer.intent" && kv.value.as_deref() == Some(plan_sha));
    let held = meta.file_metadata().num_rows() as u64;
    if !names_plan || held != rows {
        bail!(
            "{key} exists in the lake and is not the file of this plan (its footer names another plan, or it holds {held} rows, not {rows}): move it away and run again"
        );
    }
    Ok(crate::lake::FileStats {
        rows,
        row_groups: meta.num_row_groups(),
        bytes,
        sha256,
    })
}

/// Records of an object's planned offsets (its spans less its holes).
fn count_records(o: &PlannedObject) -> u64 {
    let holes = lc::from_spans(&o.holes);
    lc::from_spans(&o.spans)
        .into_iter()
        .map(|s| {
            subtract_spans(s, &holes)
                .iter()
                .map(|x| x.count())
                .sum::<u64>()
        })
        .sum()
}

/// Records handed from the framing thread to a decoding one at a time: about this many
/// bytes of them...
const BATCH_BYTES: usize = 512 << 10;
/// ...or this many records.
const BATCH_RECORDS: usize = 4096;

/// Records of the planned offsets framed from an object, packed one after another: the
/// bytes, where each ends, and each one's coordinates and number in the object.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    ends: Vec<usize>,
    at: Vec<Coordinates>,
    /// 1-based record numbers in the object (for messages).
    numbers: Vec<u64>,
}

impl Batch {
    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.at.clear();
        self.numbers.clear();
    }
}

/// A batch decoded: its rows, and the records the layout refused (offset, record number,
/// why), in record order.
struct Decoded {
    rows: RowChunk,
    refused: Vec<(Coordinates, u64, String, Vec<u8>)>,
}

/// Threads that decode records at once: the machine's cores, up to 4.
fn decoders() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// The record timestamps of an intent's objects that manifests kept in `cache` give (None:
/// the manifest has none), taken out of it for the thread that writes the file: the cache
/// holds them no longer.
fn take_times(cache: &mut ManifestCache<'_>, intent: &Intent) -> BTreeMap<String, Option<String>> {
    let mut times = BTreeMap::new();
    for o in intent.objects.iter().filter(|o| o.timestamps.is_none()) {
        if let Some(t) = cache.take_times(&o.manifest, &o.key) {
            times.insert(o.key.clone(), t);
        }
    }
    times
}

/// The record timestamps of an intent's objects (None: the manifest has none): those in
/// `known` (see [`take_times`]), the others read from their manifests, each manifest once; an
/// intent written by an older version carries them itself. Only the file's own are kept,
/// while it is written: a manifest kept for the next file would hold an ingest run's
/// timestamps (about 0.6 bytes a record it archived) through this file's writing, where the
/// peak memory is. Also returns the manifest keys tried.
fn record_times(
    archive: &dyn ObjectStore,
    topic: &str,
    intent: &Intent,
    known: BTreeMap<String, Option<String>>,
) -> Result<(BTreeMap<String, Option<String>>, usize)> {
    let mut times = known;
    let mut read = 0;
    let mut by_manifest: BTreeMap<&str, Vec<&PlannedObject>> = BTreeMap::new();
    for o in &intent.objects {
        match &o.timestamps {
            Some(t) => {
                times.insert(o.key.clone(), Some(t.clone()));
            }
            None if times.contains_key(&o.key) => {}
            None => by_manifest.entry(o.manifest.as_str()).or_default().push(o),
        }
    }
    for (name, objects) in by_manifest {
        // One manifest parsed at a time.
        let mut cache = ManifestCache::new(Catalog::new(archive, topic));
        let man = cache.get(name)?.ok_or_else(|| {
            anyhow!(
                "manifest {name}, which lists {}, is gone from the archive",
                objects[0].key
            )
        })?;
        for o in objects {
            let entry = man
                .objects
                .iter()
                .find(|e| e.key == o.key)
                .ok_or_else(|| anyhow!("manifest {name} no longer lists object {}", o.key))?;
            times.insert(o.key.clone(), entry.timestamps.clone());
        }
        read += cache.read;
    }
    Ok((times, read))
}

/// Streams a file's objects into it in order, each as [`ObjectReader`] says; `done` is told
/// of each object read (and its records rejected) before the next is appended. The next
/// object's download, decompression and decoding start once the current one's download has
/// ended, while its last records are decoded and appended: no pause between objects.
#[allow(clippy::too_many_arguments)]
fn read_objects<W: std::io::Write + Send + 'static>(
    store: &dyn ObjectStore,
    objects: &[PlannedObject],
    times: &BTreeMap<String, Option<String>>,
    codec: &Codec,
    max_errors: Option<u64>,
    sink: &mut ParquetSink<W>,
    rejects: &mut Vec<u8>,
    pb: &indicatif::ProgressBar,
    stop: &std::sync::atomic::AtomicBool,
    mut done: impl FnMut(&PlannedObject, u64),
) -> Result<()> {
    let proto = sink.chunk();
    let times_of = |o: &PlannedObject| times.get(&o.key).and_then(|t| t.as_deref());
    std::thread::scope(|scope| -> Result<()> {
        // The reader of the object after the current one, once started.
        let mut ahead: Option<Result<ObjectReader<'_>>> = None;
        for (i, o) in objects.iter().enumerate() {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(next)) = ahead.take() {
                    next.abandon();
                }
                bail!("stopped before object {}: the run failed", o.key);
            }
            let reader = match ahead.take() {
                Some(r) => r,
                None => ObjectReader::start(scope, store, o, times_of(o), codec, &proto),
            };
            let next = objects.get(i + 1);
            let mut start_next = || {
                if let (None, Some(n)) = (&ahead, next) {
                    ahead = Some(ObjectReader::start(
                        scope,
                        store,
                        n,
                        times_of(n),
                        codec,
                        &proto,
                    ));
                }
            };
            let rejected = reader
                .and_then(|r| r.finish(max_errors, sink, rejects, pb, &mut start_next))
                .with_context(|| format!("publishing object {}", o.key));
            match rejected {
                Ok(r) => done(o, r),
                Err(e) => {
                    // The object read ahead is stopped and heard out: its threads' endings
                    // (a panic included) are not this error's.
                    if let Some(Ok(next)) = ahead.take() {
                        next.abandon();
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    })
}

/// One archived object being read into the file. A record the layout refuses is a reject
/// (a JSON line in `rejects`) under `max_errors` (bad records per object), else the error.
/// The object's record count and sha256 must be its manifest's.
///
/// The GET (hashing) on a thread; the decompression and framing on another, which hands
/// batches of the planned records round the decoding threads (one per core); each decodes a
/// batch's cells straight into column buffers (a [`RowChunk`]); [`ObjectReader::finish`]
/// takes the chunks in batch order and appends them to the file's row group
/// ([`ParquetSink::append`]), whose encoder is a thread of its own. Batches and chunks go
/// back to be reused, and each channel holds two at most: the memory is bounded whatever the
/// object's size.
struct ObjectReader<'scope> {
    o: &'scope PlannedObject,
    store: &'scope dyn ObjectStore,
    getter: std::thread::ScopedJoinHandle<'scope, Result<String>>,
    framer: std::thread::ScopedJoinHandle<'scope, Result<u64>>,
    decoders: Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>>,
    from_decoders: Vec<std::sync::mpsc::Receiver<Decoded>>,
    spare_chunks: Vec<std::sync::mpsc::Sender<RowChunk>>,
    /// Set when the framing has ended well: the object is downloaded.
    framed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<'scope> ObjectReader<'scope> {
    /// Starts the download, the framing and the decoding threads of `o`; `proto` is a chunk
    /// of the file's columns.
    fn start(
        scope: &'scope std::thread::Scope<'scope, '_>,
        store: &'scope dyn ObjectStore,
        o: &'scope PlannedObject,
        timestamps: Option<&str>,
        codec: &'scope Codec,
        proto: &RowChunk,
    ) -> Result<Self> {
        let times = match timestamps {
            Some(t) => {
                let r = RecordTimes::reader(t).map_err(|e| anyhow!("its manifest's {e}"))?;
                let n = r.records();
                if n as u64 != o.records {
                    bail!(
                        "its manifest lists {n} record timestamps for {} records",
                        o.records
                    );
                }
                Some(r)
            }
            None => None,
        };
        let k = decoders();
        let (reader, getter) = archive_mod::stream(scope, store, &o.key)?;
        let (spare_batch_tx, spare_batch_rx) = std::sync::mpsc::channel::<Batch>();
        let mut to_decoders = Vec::with_capacity(k);
        let mut from_decoders = Vec::with_capacity(k);
        let mut spare_chunks = Vec::with_capacity(k);
        let mut decoder_threads = Vec::with_capacity(k);
        for _ in 0..k {
            let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Batch>(3);
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Decoded>(2);
            let (spare_tx, spare_rx) = std::sync::mpsc::channel::<RowChunk>();
            let spare_batches = spare_batch_tx.clone();
            // Two chunks each: one being filled while the other waits to be appended.
            let fresh = vec![proto.empty_like(), proto.empty_like()];
            decoder_threads.push(scope.spawn(move || {
                decode_batches(codec, &batch_rx, &done_tx, &spare_rx, &spare_batches, fresh)
            }));
            to_decoders.push(batch_tx);
            from_decoders.push(done_rx);
            spare_chunks.push(spare_tx);
        }
        drop(spare_batch_tx);
        let compression = o.compression;
        let framed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = framed.clone();
        let framer = scope.spawn(move || -> Result<u64> {
            let r = archive_mod::buffered_decoder(reader, compression)
                .context("decompressing")
                .and_then(|d| {
                    frame_batches(FrameReader::new(d), o, times, &to_decoders, &spare_batch_rx)
                });
            if r.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
            r
        });
        Ok(ObjectReader {
            o,
            store,
            getter,
            framer,
            decoders: decoder_threads,
            from_decoders,
            spare_chunks,
            framed,
        })
    }

    /// Stops the reading (its channels closed: the decoding threads and the framing stop at
    /// their next batch, the download at its next write) and waits for its threads, whatever
    /// they end with.
    fn abandon(self) {
        let ObjectReader {
            getter,
            framer,
            decoders,
            from_decoders,
            spare_chunks,
            ..
        } = self;
        drop(from_decoders);
        drop(spare_chunks);
        let _ = framer.join();
        for t in decoders {
            let _ = t.join();
        }
        let _ = getter.join();
    }

    /// Appends the object's records to the file, in order; calls `ahead` once its download
    /// has ended (to start the next object's). Returns the records rejected.
    fn finish<W: std::io::Write + Send + 'static>(
        self,
        max_errors: Option<u64>,
        sink: &mut ParquetSink<W>,
        rejects: &mut Vec<u8>,
        pb: &indicatif::ProgressBar,
        ahead: &mut dyn FnMut(),
    ) -> Result<u64> {
        let ObjectReader {
            o,
            store,
            getter,
            framer,
            decoders: decoder_threads,
            from_decoders,
            spare_chunks,
            framed,
        } = self;
        let k = from_decoders.len();
        // The chunks in batch order: batch i went to decoder i % k.
        let mut appended: Result<u64> = Ok(0);
        let mut rejected = 0u64;
        let mut started_ahead = false;
        'chunks: for i in 0.. {
            if !started_ahead && framed.load(std::sync::atomic::Ordering::Acquire) {
                started_ahead = true;
                ahead();
            }
            let Ok(mut d) = from_decoders[i % k].recv() else {
                break;
            };
            for (at, n, e, rec) in d.refused.drain(..) {
                rejected += 1;
                let Some(max) = max_errors else {
                    appended = Err(anyhow!(
                        "partition {} offset {} (record {n}): {e}",
                        at.partition,
                        at.offset
                    ));
                    break 'chunks;
                };
                if rejected > max {
                    appended = Err(anyhow!(
                        "more than {max} bad records (--max-errors); partition {} offset {} (record {n}): {e}",
                        at.partition,
                        at.offset
                    ));
                    break 'chunks;
                }
                use base64::Engine as _;
                let line = serde_json::json!({
                    "object": o.key,
                    "partition": at.partition,
                    "epoch": at.epoch,
                    "offset": at.offset,
                    "record": n,
                    "error": e,
                    "bytes_base64": base64::engine::general_purpose::STANDARD.encode(&rec),
                });
                if let Err(e) = serde_json::to_writer(&mut *rejects, &line) {
                    appended = Err(e.into());
                    break 'chunks;
                }
                rejects.push(b'\n');
            }
            let rows = d.rows.rows() as u64;
            if let Err(e) = sink.append(&mut d.rows) {
                appended = Err(e);
                break;
            }
            pb.inc(rows);
            // Back to its decoder, emptied.
            let _ = spare_chunks[i % k].send(d.rows);
        }
        // Stop the decoders and the framing if this side stopped first (their sends fail, and
        // a decoder waiting for a chunk back hears that none will come), then hear everyone
        // out.
        drop(from_decoders);
        drop(spare_chunks);
        let framed = framer
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the decompression of {} panicked", o.key)));
        let mut decoded = Ok(());
        for t in decoder_threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a decoder of {} panicked", o.key)));
            if decoded.is_ok() {
                decoded = r;
            }
        }
        let got = getter
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the download of {} panicked", o.key)));
        // A failed download, or bytes that are not the manifest's, is the cause to report
        // (read again if the download was cut short by an error here).
        let failed = appended.is_err() || decoded.is_err() || framed.is_err();
        if let Some(e) = archive_mod::stream_verdict(got, store, &o.key, Some(&o.sha256), failed) {
            return Err(e);
        }
        // Then what the framing found (the decompression, the records against the
        // manifest's offsets and timestamps: the causes of what the decoding saw), then what
        // stopped this side (a bad record, the file), then a decoder.
        let n = framed?;
        appended?;
        decoded?;
        if n != o.records {
            bail!("holds {n} records but its manifest says {}", o.records);
        }
        Ok(rejected)
    }
}

/// The framing of [`ObjectReader`]: reads every record of the decompressed object, keeps
/// those of the planned offsets with their coordinates, and deals the batches round the
/// decoders. Returns the records read (or, when a decoder stopped first, those so far).
fn frame_batches<R: std::io::BufRead>(
    mut frames: FrameReader<R>,
    o: &PlannedObject,
    mut times: Option<crate::archive::layout::TimesReader>,
    decoders: &[std::sync::mpsc::SyncSender<Batch>],
    spare: &std::sync::mpsc::Receiver<Batch>,
) -> Result<u64> {
    let holes = lc::from_spans(&o.holes);
    let wanted = lc::from_spans(&o.spans);
    let mut offsets = subtract_spans(OffsetSpan::new(o.first, o.last), &holes)
        .into_iter()
        .flat_map(|s| s.first..=s.last);
    let mut n: u64 = 0;
    let mut sent = 0usize;
    let mut batch = Batch::default();
    let mut send = |batch: &mut Batch| -> bool {
        let mut next = spare.try_recv().unwrap_or_default();
        next.clear();
        let full = std::mem::replace(batch, next);
        let ok = decoders[sent % decoders.len()].send(full).is_ok();
        sent += 1;
        ok
    };
    loop {
        let start = batch.data.len();
        if !frames
            .append_next(&mut batch.data)
            .context("decompressing")?
        {
            break;
        }
        let Some(off) = offsets.next() else {
            bail!(
                "holds more records than its offsets {}..{} less its holes",
                o.first,
                o.last
            );
        };
        n += 1;
        // Each record's timestamp is read, published or not: they come in record order.
        let ts = match times.as_mut().map(|t| t.next()) {
            Some(Some(Ok(t))) => t,
            Some(Some(Err(e))) => bail!("its manifest's {e}"),
            Some(None) => bail!("its manifest lists fewer record timestamps than records"),
            None => None,
        };
        if !wanted.iter().any(|s| s.contains(off)) {
            batch.data.truncate(start);
            continue;
        }
        batch.ends.push(batch.data.len());
        batch.at.push(Coordinates {
            partition: o.partition,
            offset: off,
            epoch: o.epoch,
            timestamp_micros: ts.map(|ms| ms.saturating_mul(1000)),
        });
        batch.numbers.push(n);
        if (batch.data.len() >= BATCH_BYTES || batch.ends.len() >= BATCH_RECORDS)
            && !send(&mut batch)
        {
            // A decoder stopped: the reason is on the other side.
            return Ok(n);
        }
    }
    if !batch.ends.is_empty() {
        send(&mut batch);
    }
    Ok(n)
}

/// A decoding thread of [`ObjectReader`]: each batch's records decoded into a chunk of rows,
/// the refused ones listed, in order.
fn decode_batches(
    codec: &Codec,
    batches: &std::sync::mpsc::Receiver<Batch>,
    done: &std::sync::mpsc::SyncSender<Decoded>,
    spare: &std::sync::mpsc::Receiver<RowChunk>,
    spare_batches: &std::sync::mpsc::Sender<Batch>,
    mut fresh: Vec<RowChunk>,
) -> Result<()> {
    // Records whose every field the fast reading takes skip the general one (which reads
    // the others, and names what is wrong with a bad one).
    let fast = codec
        .fast_delimited()
        .filter(|f| fresh.first().is_some_and(|c| c.fits_fast(f.kinds())));
    for batch in batches.iter() {
        let mut rows = match spare.try_recv() {
            Ok(c) => c,
            Err(_) => match fresh.pop() {
                Some(c) => c,
                // All in flight: wait for one back.
                None => match spare.recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(()),
                },
            },
        };
        let mut refused = Vec::new();
        let mut start = 0;
        // One UTF-8 check of the whole batch (SIMD over a long buffer): a record cut from it
        // at character boundaries is UTF-8 itself, and is not checked again.
        let text = simdutf8::basic::from_utf8(&batch.data).ok();
        let mut values =
            [crate::records::codec::FastValue::Null; crate::records::codec::FAST_COLUMNS];
        for ((&end, at), &n) in batch.ends.iter().zip(&batch.at).zip(&batch.numbers) {
            let rec = &batch.data[start..end];
            let as_text = text.and_then(|t| t.get(start..end));
            start = end;
            let decoded = match (as_text, &fast) {
                (Some(t), Some(f)) if f.read(t, &mut values) => {
                    rows.push_fast(at, &values[..f.columns()])?;
                    Ok(())
                }
                (Some(t), _) => rows.push_with(at, |put| codec.text_cells(t, put))?,
                (None, _) => rows.push_with(at, |put| codec.cells(rec, put))?,
            };
            if let Err(e) = decoded {
                refused.push((*at, n, e.to_string(), rec.to_vec()));
            }
        }
        let _ = spare_batches.send(batch);
        if done.send(Decoded { rows, refused }).is_err() {
            // The writing side stopped: its reason is the one to report.
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_a_plan_are_its_spans_less_the_holes() {
        let o = PlannedObject {
            key: "k".into(),
            sha256: "s".into(),
            records: 8,
            epoch: 0,
            partition: 0,
            first: 0,
            last: 9,
            holes: vec![(3, 4)],
            compression: crate::archive::Compression::Gzip,
            bytes: 1,
            uncompressed: 2,
            timestamps: None,
            spans: vec![(2, 9)],
            manifest: "m".into(),
        };
        // 2..9 is 8 offsets, 3 and 4 hold no record.
        assert_eq!(count_records(&o), 6);
    }

    /// An object of `recs` (framed, gzip) stored at `key`; its plan: every offset from 100.
    fn stored(
        store: &dyn ObjectStore,
        key: &str,
        recs: &[Vec<u8>],
        bytes: Option<Vec<u8>>,
    ) -> PlannedObject {
        use std::io::Write as _;
        let mut framed = Vec::new();
        for r in recs {
            crate::records::frame_into(r, &mut framed);
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&framed).unwrap();
        let good = gz.finish().unwrap();
        let sha = crate::util::sha256_of(&mut &good[..]).unwrap();
        // Other bytes stored than the manifest's sha256 describes (corruption), or the same.
        store
            .put_bytes(key, bytes.as_deref().unwrap_or(&good))
            .unwrap();
        let n = recs.len() as i64;
        PlannedObject {
            key: key.into(),
            sha256: sha,
            records: recs.len() as u64,
            epoch: 1,
            partition: 2,
            first: 100,
            last: 100 + n - 1,
            holes: vec![],
            compression: crate::archive::Compression::Gzip,
            bytes: good.len() as u64,
            uncompressed: framed.len() as u64,
            timestamps: None,
            spans: vec![(100, 100 + n - 1)],
            manifest: "m".into(),
        }
    }

    /// A tweet whose location is 200 characters of noise: objects of a few MB compressed,
    /// more than the pipeline's buffers hold, so that a stop cuts the download short.
    fn tweet(i: usize) -> Vec<u8> {
        let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let noise: String = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        format!(
            "{};2024-01-01 00:00:{:02};{};{noise};{};{};",
            1000 + i,
            i % 60,
            i,
            i % 5,
            i % 3
        )
        .into_bytes()
    }

    /// [`publish_objects`] of one object: its offsets written, the reject lines, or the error.
    fn publish_object(
        store: std::sync::Arc<crate::archive::local::LocalStore>,
        o: PlannedObject,
        max_errors: Option<u64>,
    ) -> Result<(Vec<i64>, Vec<serde_json::Value>), String> {
        publish_objects(store, vec![o], max_errors)
            .map(|(rows, lines)| (rows.into_iter().map(|(_, o)| o).collect(), lines))
    }

    #[test]
    fn record_timestamps_come_from_the_manifest_or_from_an_older_intent() {
        use crate::archive::layout::{Manifest, RecordTimes};
        let dir = tempfile::tempdir().unwrap();
        let store = crate::archive::local::LocalStore::new(dir.path().to_path_buf());
        let cat = Catalog::new(&store, "t");
        let mut times = RecordTimes::default();
        for ms in [1_000, 2_000, -1, 3_500] {
            times.push((ms >= 0).then_some(ms));
        }
        let entry = |key: &str, timestamps: Option<String>| ObjectEntry {
            key: key.into(),
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 3,
            records: 4,
            bytes: 1,
            uncompressed_bytes: 1,
            sha256: "s".into(),
            compression: crate::archive::Compression::Gzip,
            gaps: vec![],
            holes: vec![],
            max_timestamp_ms: None,
            schema_ids: vec![],
            timestamps,
        };
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let key = cat.key_for_manifest("run1", at);
        let name = layout::manifest_name(&key).unwrap().to_string();
        cat.store_manifest(
            &key,
            &Manifest {
                run_id: "run1".into(),
                topic: "t".into(),
                group: "g".into(),
                started_at: "a".into(),
                finished_at: "b".into(),
                objects: vec![
                    entry("a/with", Some(times.encode())),
                    entry("a/without", None),
                ],
                rejected_key: None,
                rejected: 0,
                epoch: 0,
                expired: vec![],
                next: BTreeMap::new(),
            },
        )
        .unwrap();
        let planned = |key: &str, manifest: &str, timestamps: Option<&str>| PlannedObject {
            key: key.into(),
            sha256: "s".into(),
            records: 4,
            epoch: 0,
            partition: 0,
            first: 0,
            last: 3,
            holes: vec![],
            compression: crate::archive::Compression::Gzip,
            bytes: 1,
            uncompressed: 1,
            timestamps: timestamps.map(str::to_string),
            spans: vec![(0, 3)],
            manifest: manifest.into(),
        };
        let intent = |objects| Intent {
            hour: "2026120510".into(),
            name: "f".into(),
            open: false,
            late: false,
            objects,
        };
        // This version's intents carry none: the manifest's, read once for both objects; an
        // older intent's own are used as they are (its manifest is not read for them).
        let (got, read) = record_times(
            &store,
            "t",
            &intent(vec![
                planned("a/with", &name, None),
                planned("a/without", &name, None),
                planned("a/older", "gone", Some("z1:old")),
            ]),
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(got["a/with"], Some(times.encode()));
        assert_eq!(
            RecordTimes::decode(got["a/with"].as_deref().unwrap()).unwrap(),
            vec![Some(1_000), Some(2_000), None, Some(3_500)]
        );
        assert_eq!(got["a/without"], None);
        assert_eq!(got["a/older"].as_deref(), Some("z1:old"));
        assert_eq!(read, 1, "one manifest key tried");
        // A manifest gone, or one that no longer lists the object: named.
        let e = record_times(
            &store,
            "t",
            &intent(vec![planned("a/x", "20261205T0000", None)]),
            BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("manifest 20261205T0000, which lists a/x, is gone"),
            "{e}"
        );
        let e = record_times(
            &store,
            "t",
            &intent(vec![planned("a/x", &name, None)]),
            BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("manifest {name} no longer lists object a/x")),
            "{e}"
        );
    }

    /// Runs `read_objects` over `objects` into one file, on its own thread, failing the test
    /// if it does not end within a minute (a hang is a failure): each row's (partition,
    /// offset) and the reject lines, or the error.
    #[allow(clippy::type_complexity)]
    fn publish_objects(
        store: std::sync::Arc<crate::archive::local::LocalStore>,
        objects: Vec<PlannedObject>,
        max_errors: Option<u64>,
    ) -> Result<(Vec<(i32, i64)>, Vec<serde_json::Value>), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let layout = crate::records::Layout::tweets();
            let codec = Codec::new(layout.clone());
            let mut sink =
                ParquetSink::new(Vec::new(), &layout, &ParquetOptions::default()).unwrap();
            let mut rejects = Vec::new();
            let pb = indicatif::ProgressBar::hidden();
            let mut seen = Vec::new();
            let r = read_objects(
                &*store,
                &objects,
                &BTreeMap::new(),
                &codec,
                max_errors,
                &mut sink,
                &mut rejects,
                &pb,
                &std::sync::atomic::AtomicBool::new(false),
                |o, _| seen.push(o.key.clone()),
            );
            let out = r.map_err(|e| format!("{e:#}")).map(|()| {
                let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
                assert_eq!(seen, keys, "each object reported done once, in order");
                let (file, _) = sink.into_inner().unwrap();
                use ::parquet::file::reader::FileReader as _;
                let reader =
                    ::parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(file))
                        .unwrap();
                let rows = reader
                    .get_row_iter(None)
                    .unwrap()
                    .map(|row| {
                        let row = row.unwrap();
                        let get = |name: &str| {
                            row.get_column_iter()
                                .find(|(n, _)| n.as_str() == name)
                                .map(|(_, f)| f.clone())
                                .unwrap()
                        };
                        match (get("_partition"), get("_offset")) {
                            (
                                ::parquet::record::Field::Int(p),
                                ::parquet::record::Field::Long(o),
                            ) => (p, o),
                            other => panic!("{other:?}"),
                        }
                    })
                    .collect();
                let lines = String::from_utf8(rejects)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                (rows, lines)
            });
            let _ = tx.send(out);
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("read_objects did not end within a minute")
    }

    #[test]
    fn a_files_objects_are_read_ahead_but_appended_in_order_and_a_failure_names_its_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(crate::archive::local::LocalStore::new(
            dir.path().to_path_buf(),
        ));
        // Objects of several batches each and one of a few records, in three partitions.
        let sizes = [3 * BATCH_RECORDS + 17, 5, 2 * BATCH_RECORDS + 1];
        let objects: Vec<PlannedObject> = sizes
            .iter()
            .enumerate()
            .map(|(p, &n)| {
                let recs: Vec<Vec<u8>> = (0..n).map(|i| tweet(i + 10_000 * p)).collect();
                let mut o = stored(&*store, &format!("a/p{p}.log.gz"), &recs, None);
                o.partition = p as i32;
                o
            })
            .collect();
        let (rows, _) = publish_objects(store.clone(), objects.clone(), None).unwrap();
        let want: Vec<(i32, i64)> = sizes
            .iter()
            .enumerate()
            .flat_map(|(p, &n)| (100..100 + n as i64).map(move |o| (p as i32, o)))
            .collect();
        assert_eq!(rows, want, "the objects' rows in the plan's order");

        // The middle object's bytes are not its manifest's: it is named, after the first was
        // read and while the last may be read ahead.
        let mut corrupt = objects.clone();
        store.put_bytes("a/p1.log.gz", b"not gzip at all").unwrap();
        let e = publish_objects(store.clone(), corrupt.clone(), None).unwrap_err();
        assert!(e.contains("publishing object a/p1.log.gz"), "{e}");

        // The first object has a bad record (strict) while the next is read ahead: the first
        // one's record is the error.
        let mut recs: Vec<Vec<u8>> = (0..sizes[0]).map(tweet).collect();
        recs[2 * BATCH_RECORDS + 3] = b"1;not a time;1;x;1;1;".to_vec();
        corrupt[0] = stored(&*store, "a/p0.log.gz", &recs, None);
        corrupt[0].partition = 0;
        corrupt[1] = objects[1].clone();
        let e = publish_objects(store.clone(), corrupt, None).unwrap_err();
        assert!(e.contains("publishing object a/p0.log.gz"), "{e}");
        assert!(
            e.contains(&format!(
                "partition 0 offset {}",
                100 + 2 * BATCH_RECORDS + 3
            )),
            "{e}"
        );
    }

    #[test]
    fn an_object_goes_through_the_decoding_threads_in_order_with_its_rejects_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(crate::archive::local::LocalStore::new(
            dir.path().to_path_buf(),
        ));
        // Enough records for several batches per decoding thread.
        let n = 5 * BATCH_RECORDS + 123;
        let mut recs: Vec<Vec<u8>> = (0..n).map(tweet).collect();
        let good = stored(&*store, "a/good.log.gz", &recs, None);
        let (offsets, lines) = publish_object(store.clone(), good.clone(), None).unwrap();
        assert_eq!(offsets, (100..100 + n as i64).collect::<Vec<_>>());
        assert!(lines.is_empty());

        // Bad records on both sides of batch boundaries, in every decoder's batches.
        let bad_at = [
            0,
            BATCH_RECORDS - 1,
            BATCH_RECORDS,
            2 * BATCH_RECORDS + 1,
            n - 1,
        ];
        for &i in &bad_at {
            recs[i] = format!("{};not a time;1;x;1;1;", i).into_bytes();
        }
        let with_bad = stored(&*store, "a/bad.log.gz", &recs, None);
        let (offsets, lines) =
            publish_object(store.clone(), with_bad.clone(), Some(bad_at.len() as u64)).unwrap();
        let bad_offsets: Vec<i64> = bad_at.iter().map(|&i| 100 + i as i64).collect();
        let want: Vec<i64> = (100..100 + n as i64)
            .filter(|o| !bad_offsets.contains(o))
            .collect();
        assert_eq!(offsets, want);
        let listed: Vec<i64> = lines
            .iter()
            .map(|l| l["offset"].as_i64().unwrap())
            .collect();
        assert_eq!(listed, bad_offsets, "the rejects in record order");
        assert_eq!(lines[1]["record"], BATCH_RECORDS as u64);
        assert!(
            lines[0]["error"].as_str().unwrap().contains("created_at"),
            "{}",
            lines[0]
        );

        // Strict: the first bad record; one over --max-errors: that one.
        let e = publish_object(store.clone(), with_bad.clone(), None).unwrap_err();
        assert!(e.contains("partition 2 offset 100 (record 1)"), "{e}");
        let e = publish_object(store.clone(), with_bad.clone(), Some(2)).unwrap_err();
        assert!(
            e.contains(&format!(
                "more than 2 bad records (--max-errors); partition 2 offset {} (record {})",
                100 + BATCH_RECORDS,
                BATCH_RECORDS + 1
            )),
            "{e}"
        );

        // A stored object whose bytes are not the manifest's: named corrupt, whether the
        // garbage stops the decompression or not.
        let mut flipped = {
            let mut v = Vec::new();
            store.get_into("a/good.log.gz", &mut v).unwrap();
            v
        };
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        let corrupt = stored(&*store, "a/corrupt.log.gz", &recs, Some(flipped.clone()));
        let e = publish_object(store.clone(), corrupt, None).unwrap_err();
        assert!(e.contains("is corrupt: sha256"), "{e}");
        let cut = flipped[..mid].to_vec();
        let truncated = stored(&*store, "a/cut.log.gz", &recs, Some(cut.clone()));
        let e = publish_object(store.clone(), truncated.clone(), None).unwrap_err();
        assert!(e.contains("is corrupt: sha256"), "{e}");
        // The same truncated bytes, as the manifest describes them: the decompression says so.
        let mut described = truncated;
        described.sha256 = crate::util::sha256_of(&mut &cut[..]).unwrap();
        let e = publish_object(store.clone(), described, None).unwrap_err();
        assert!(e.contains("decompressing"), "{e}");

        // Fewer records than the manifest says: counted.
        let mut short = good;
        short.records += 1;
        short.last += 1;
        short.spans = vec![(short.first, short.last)];
        let e = publish_object(store, short, None).unwrap_err();
        assert!(
            e.contains(&format!(
                "holds {n} records but its manifest says {}",
                n + 1
            )),
            "{e}"
        );
    }
}
