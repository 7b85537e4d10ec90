//! `ingest`: consume what the group has not archived, store it as immutable offset-named
//! objects, write the run manifest, and only then commit offsets.
//!
//! Exactly-once rests on three rules:
//! 1. an object's key is a pure function of its data (topic, partition, first/last offset,
//!    first message's timestamp), and an existing key is never overwritten;
//! 2. offsets are committed only after the objects and the manifest are stored;
//! 3. before archiving a partition, the archive is listed, and offsets already covered by an
//!    object (left by a run that died before its commit) are skipped and the commit repaired.

use crate::archive::{ObjectStore, PutOutcome};
use crate::config::{ArchiveSettings, Compression};
use crate::output::Output;
use crate::records::frame_into;
use crate::source::{Event, Message, MessageSource};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Datelike, FixedOffset, Timelike, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Per-run options (limits and mode) on top of the archive settings.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    pub dry_run: bool,
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_duration: Option<Duration>,
    /// How long to wait for the group to assign partitions.
    pub assignment_timeout: Duration,
    /// Fail when assigned partitions deliver neither data nor end-of-partition for this long.
    pub stall_timeout: Duration,
    pub group: String,
    /// Test hook: fail after storing objects and the manifest, before committing.
    pub fail_before_commit: bool,
}

/// One stored (or, in a dry run, planned) object.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub records: u64,
    /// Stored (compressed) size.
    pub bytes: u64,
    pub uncompressed_bytes: u64,
    pub sha256: String,
    pub compression: String,
}

/// A message that could not be archived as a record.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// The run manifest, stored under `_manifests/`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub topic: String,
    pub group: String,
    pub started_at: String,
    pub finished_at: String,
    pub objects: Vec<ObjectEntry>,
    pub rejected_key: Option<String>,
    pub rejected: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct IngestSummary {
    pub messages: u64,
    pub bytes: u64,
    pub partitions: usize,
    pub objects: usize,
    /// Messages found already archived by an earlier run (skipped, commit repaired).
    pub skipped: u64,
    pub rejected: u64,
    pub seconds: f64,
    pub dry_run: bool,
    pub stopped_by: String,
    pub object_list: Vec<ObjectEntry>,
    pub manifest_key: Option<String>,
    pub committed: BTreeMap<i32, i64>,
}

/// The name part of an archived object: `{topic}+{partition}+{first:020}+{last:020}.log[.gz|.zst]`.
pub fn object_file_name(
    topic: &str,
    partition: i32,
    first: i64,
    last: i64,
    c: Compression,
) -> String {
    format!(
        "{topic}+{partition}+{first:020}+{last:020}.{}",
        c.extension()
    )
}

/// Parses an object key's last segment back into (topic, partition, first, last).
pub fn parse_object_key(key: &str) -> Option<(String, i32, i64, i64)> {
    let name = key.rsplit('/').next()?;
    let c = Compression::from_key(name)?;
    let stem = name.strip_suffix(&format!(".{}", c.extension()))?;
    let mut it = stem.rsplitn(4, '+');
    let last = it.next()?.parse().ok()?;
    let first = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?.to_string();
    if topic.is_empty() || first > last {
        return None;
    }
    Some((topic, partition, first, last))
}

/// Expands the folder template for a timestamp.
pub fn folder(template: &str, topic: &str, ts_ms: Option<i64>, utc_offset_secs: i32) -> String {
    let tz = FixedOffset::east_opt(utc_offset_secs).unwrap_or(FixedOffset::east_opt(0).unwrap());
    let t = DateTime::<Utc>::from_timestamp_millis(ts_ms.unwrap_or(0))
        .unwrap_or_default()
        .with_timezone(&tz);
    template
        .replace("{topic}", topic)
        .replace("{YYYY}", &format!("{:04}", t.year()))
        .replace("{MM}", &format!("{:02}", t.month()))
        .replace("{DD}", &format!("{:02}", t.day()))
        .replace("{HH}", &format!("{:02}", t.hour()))
}

/// The time of an object's folder, read back from its key by the template (the inverse of
/// `folder`); None when the key does not follow the template.
pub fn folder_time(template: &str, key: &str) -> Option<chrono::NaiveDateTime> {
    let tparts: Vec<&str> = template.split('/').filter(|p| !p.is_empty()).collect();
    let kparts: Vec<&str> = key.split('/').collect();
    if kparts.len() != tparts.len() + 1 {
        return None;
    }
    let (mut y, mut mo, mut d, mut h) = (None, 1, 1, 0);
    for (t, k) in tparts.iter().zip(&kparts) {
        match *t {
            "{YYYY}" => y = Some(k.parse::<i32>().ok()?),
            "{MM}" => mo = k.parse().ok()?,
            "{DD}" => d = k.parse().ok()?,
            "{HH}" => h = k.parse().ok()?,
            _ => {}
        }
    }
    chrono::NaiveDate::from_ymd_opt(y?, mo, d)?.and_hms_opt(h, 0, 0)
}

/// The fixed listing prefix of the template (everything before the first time field).
fn list_prefix(template: &str, topic: &str) -> String {
    let t = template.replace("{topic}", topic);
    let upto = t.find('{').unwrap_or(t.len());
    match t[..upto].rfind('/') {
        Some(i) => t[..=i].to_string(),
        None => String::new(),
    }
}

struct HashWriter<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Sink = HashWriter<BufWriter<std::fs::File>>;

/// Compressors get 128 KiB writes, not one call per record: per-call overhead dominates otherwise.
const ENC_BUF: usize = 128 << 10;

enum Encoder {
    Plain(Sink),
    Gzip(BufWriter<flate2::write::GzEncoder<Sink>>),
    Zstd(BufWriter<zstd::stream::write::Encoder<'static, Sink>>),
}

impl Encoder {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w,
            Encoder::Zstd(w) => w,
        }
    }
    fn finish(self) -> Result<Sink> {
        let mut s = match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.into_inner().map_err(|e| e.into_error())?.finish()?,
            Encoder::Zstd(w) => w.into_inner().map_err(|e| e.into_error())?.finish()?,
        };
        s.flush()?;
        Ok(s)
    }
}

/// Records of one partition being written to a local spool file (bounded memory).
struct Spool {
    first: i64,
    last: i64,
    first_ts: Option<i64>,
    records: u64,
    uncompressed: u64,
    payload_bytes: u64,
    file: tempfile::TempPath,
    enc: Option<Encoder>,
    buf: Vec<u8>,
}

impl Spool {
    fn new(m: &Message, c: Compression, dry_run: bool) -> Result<Self> {
        let (file, path) = tempfile::NamedTempFile::new()
            .context("creating spool file in the temp directory")?
            .into_parts();
        let sink = HashWriter {
            inner: BufWriter::with_capacity(256 << 10, file),
            hash: Sha256::new(),
            n: 0,
        };
        let enc = if dry_run {
            Encoder::Plain(sink)
        } else {
            match c {
                Compression::None => Encoder::Plain(sink),
                Compression::Gzip => Encoder::Gzip(BufWriter::with_capacity(
                    ENC_BUF,
                    flate2::write::GzEncoder::new(sink, flate2::Compression::fast()),
                )),
                Compression::Zstd => Encoder::Zstd(BufWriter::with_capacity(
                    ENC_BUF,
                    zstd::stream::write::Encoder::new(sink, 3)?,
                )),
            }
        };
        Ok(Spool {
            first: m.offset,
            last: m.offset,
            first_ts: m.timestamp_ms,
            records: 0,
            uncompressed: 0,
            payload_bytes: 0,
            file: path,
            enc: Some(enc),
            buf: Vec::with_capacity(4096),
        })
    }

    fn append(&mut self, offset: i64, payload: &[u8], dry_run: bool) -> Result<()> {
        self.buf.clear();
        frame_into(payload, &mut self.buf);
        if !dry_run {
            self.enc
                .as_mut()
                .expect("open spool")
                .writer()
                .write_all(&self.buf)
                .context("writing spool file (is the temp directory full?)")?;
        }
        self.uncompressed += self.buf.len() as u64;
        self.payload_bytes += payload.len() as u64;
        self.records += 1;
        self.last = offset;
        Ok(())
    }
}

/// A finished spool file waiting to be stored under its key.
struct Pending {
    key: String,
    file: tempfile::TempPath,
    entry: ObjectEntry,
}

type Stored = Result<(ObjectEntry, PutOutcome)>;

/// Counts objects queued or uploading, so a group revocation can wait until they are stored.
#[derive(Default)]
struct UploadGate {
    /// (objects not yet stored, worker gone)
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl UploadGate {
    fn add(&self) {
        self.state.lock().unwrap().0 += 1;
    }
    fn done(&self) {
        let mut st = self.state.lock().unwrap();
        st.0 = st.0.saturating_sub(1);
        self.changed.notify_all();
    }
    fn close(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
    /// Blocks until every queued object is stored (or the worker has stopped).
    fn wait_idle(&self) {
        let mut st = self.state.lock().unwrap();
        while st.0 > 0 && !st.1 {
            st = self.changed.wait(st).unwrap();
        }
    }
}

/// Closes the gate when the worker ends, even by panic, so no revocation waits forever.
struct CloseOnDrop(Arc<UploadGate>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Objects queued for the upload worker before `flush_partition` blocks (back-pressure). Each
/// is a spool file on disk, not memory.
const UPLOAD_QUEUE: usize = 4;

/// Stores objects one after another on its own thread, so the consumer keeps draining
/// librdkafka's queue during an upload (a synchronous upload let the prefetch queue fill,
/// which made peak RSS grow with run length).
fn upload_worker(
    store: &dyn ObjectStore,
    queue: Receiver<Pending>,
    results: std::sync::mpsc::Sender<Stored>,
    gate: Arc<UploadGate>,
) {
    let _close = CloseOnDrop(gate.clone());
    let mut failed = false;
    for p in queue {
        if !failed {
            let r = store
                .put_file_if_absent(&p.key, &p.file)
                .with_context(|| format!("storing an object in {}", store.describe()));
            failed = r.is_err();
            // Sent before `done`, so a caller that waited for the gate finds the result. When
            // the run has already failed (nobody receives), the rest is not worth storing.
            failed |= results.send(r.map(|o| (p.entry, o))).is_err();
        }
        // After a failure the rest is dropped unstored: the run fails and commits nothing.
        drop(p.file);
        gate.done();
    }
}

/// The consumer's side of the upload worker.
struct Uploader {
    queue: Option<SyncSender<Pending>>,
    results: Receiver<Stored>,
    gate: Arc<UploadGate>,
}

#[derive(Default)]
struct PartState {
    /// Archived (first, last) ranges at or after where this run started, from the listing.
    archived: Option<Vec<(i64, i64)>>,
    spool: Option<Spool>,
    /// The offset to commit: one past the last message handled.
    next_commit: Option<i64>,
}

struct Run<'a> {
    store: &'a dyn ObjectStore,
    settings: &'a ArchiveSettings,
    opts: &'a IngestOptions,
    topic: String,
    out: &'a Output,
    parts: BTreeMap<i32, PartState>,
    listing: Option<Vec<(i32, i64, i64)>>,
    objects: Vec<ObjectEntry>,
    rejected: Vec<Rejected>,
    summary: IngestSummary,
    uploader: Uploader,
}

impl Run<'_> {
    /// Takes the results of finished uploads; the first failure fails the run.
    fn collect_uploads(&mut self) -> Result<()> {
        while let Ok(r) = self.uploader.results.try_recv() {
            self.stored(r)?;
        }
        Ok(())
    }

    fn stored(&mut self, r: Stored) -> Result<()> {
        let (entry, outcome) = r?;
        match outcome {
            PutOutcome::Created => self
                .out
                .debug(&format!("stored {} ({} records)", entry.key, entry.records)),
            // Same name means same data (the name is a function of the offsets).
            PutOutcome::AlreadyExists => self.out.warn(&format!(
                "{} already exists; kept the stored object",
                entry.key
            )),
        }
        self.objects.push(entry);
        Ok(())
    }

    /// Queues an object for the worker (blocks while the queue is full).
    fn upload(&mut self, p: Pending) -> Result<()> {
        self.collect_uploads()?;
        let queue = self.uploader.queue.as_ref().expect("uploader open");
        self.uploader.gate.add();
        if queue.send(p).is_err() {
            self.uploader.gate.done();
            // The worker is gone: report its error if it left one.
            self.collect_uploads()?;
            bail!("the upload worker stopped unexpectedly");
        }
        Ok(())
    }

    /// Waits for every queued object to be stored; fails on the first upload that failed.
    fn finish_uploads(&mut self) -> Result<()> {
        self.uploader.queue = None;
        while let Ok(r) = self.uploader.results.recv() {
            self.stored(r)?;
        }
        Ok(())
    }

    fn archived_for(&mut self, p: i32) -> Result<&Vec<(i64, i64)>> {
        if self.listing.is_none() {
            let prefix = list_prefix(&self.settings.key_template, &self.topic);
            let listed = self.store.list(&prefix).with_context(|| {
                format!(
                    "listing the archive {} for reconciliation",
                    self.store.describe()
                )
            })?;
            let mut v = Vec::new();
            for o in listed {
                if let Some((t, part, first, last)) = parse_object_key(&o.key) {
                    if t == self.topic {
                        v.push((part, first, last));
                    }
                }
            }
            self.listing = Some(v);
        }
        let listing = self.listing.as_ref().expect("listed");
        let st = self.parts.entry(p).or_default();
        if st.archived.is_none() {
            let mut r: Vec<(i64, i64)> = listing
                .iter()
                .filter(|x| x.0 == p)
                .map(|x| (x.1, x.2))
                .collect();
            r.sort_unstable();
            st.archived = Some(r);
        }
        Ok(st.archived.as_ref().expect("set"))
    }

    fn on_message(&mut self, m: Message) -> Result<()> {
        let p = m.partition;
        let covered = self
            .archived_for(p)?
            .iter()
            .any(|&(f, l)| f <= m.offset && m.offset <= l);
        if covered {
            // Already archived by a run that died before committing: skip, and cut the
            // current object here so no object spans the gap.
            self.flush_partition(p)?;
            let st = self.parts.get_mut(&p).expect("state");
            st.next_commit = Some(st.next_commit.unwrap_or(0).max(m.offset + 1));
            self.summary.skipped += 1;
            return Ok(());
        }
        let Some(payload) = m.payload.as_deref() else {
            self.rejected.push(Rejected {
                partition: p,
                offset: m.offset,
                reason: "null payload (tombstone)".into(),
            });
            let st = self.parts.get_mut(&p).expect("state");
            st.next_commit = Some(m.offset + 1);
            return Ok(());
        };
        let len = payload.len() as u64;
        let dry = self.opts.dry_run;
        let c = self.settings.compression;
        let st = self.parts.get_mut(&p).expect("state");
        if st.spool.is_none() {
            st.spool = Some(Spool::new(&m, c, dry)?);
        }
        let sp = st.spool.as_mut().expect("spool");
        sp.append(m.offset, payload, dry)?;
        st.next_commit = Some(m.offset + 1);
        let rotate = sp.uncompressed >= self.settings.max_object_bytes
            || (self.settings.max_object_records > 0
                && sp.records >= self.settings.max_object_records);
        self.summary.messages += 1;
        self.summary.bytes += len;
        if rotate {
            self.flush_partition(p)?;
        }
        Ok(())
    }

    /// Stores the partition's open spool as an object (or, in a dry run, plans it).
    fn flush_partition(&mut self, p: i32) -> Result<()> {
        let Some(st) = self.parts.get_mut(&p) else {
            return Ok(());
        };
        let Some(mut sp) = st.spool.take() else {
            return Ok(());
        };
        let c = self.settings.compression;
        let name = object_file_name(&self.topic, p, sp.first, sp.last, c);
        let dir = folder(
            &self.settings.key_template,
            &self.topic,
            sp.first_ts,
            self.settings.utc_offset_secs,
        );
        let key = if dir.is_empty() {
            name
        } else {
            format!("{}/{name}", dir.trim_end_matches('/'))
        };
        let sink = sp
            .enc
            .take()
            .expect("encoder")
            .finish()
            .context("finishing spool file")?;
        let bytes = sink.n;
        let sha = hex::encode(sink.hash.finalize());
        drop(sink.inner);
        let entry = ObjectEntry {
            key: key.clone(),
            topic: self.topic.clone(),
            partition: p,
            first_offset: sp.first,
            last_offset: sp.last,
            records: sp.records,
            bytes: if self.opts.dry_run { 0 } else { bytes },
            uncompressed_bytes: sp.uncompressed,
            sha256: if self.opts.dry_run {
                String::new()
            } else {
                sha
            },
            compression: format!("{c:?}").to_lowercase(),
        };
        if self.opts.dry_run {
            self.objects.push(entry);
            return Ok(());
        }
        self.upload(Pending {
            key,
            file: sp.file,
            entry,
        })
    }
}

/// Runs one bounded ingest over a source and a store.
pub fn run(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    settings: &ArchiveSettings,
    opts: &IngestOptions,
    out: &Output,
) -> Result<IngestSummary> {
    let gate = Arc::new(UploadGate::default());
    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(UPLOAD_QUEUE);
    let (results_tx, results_rx) = std::sync::mpsc::channel();
    let uploader = Uploader {
        queue: Some(queue_tx),
        results: results_rx,
        gate: gate.clone(),
    };
    // A revocation waits until objects of the revoked partitions are stored.
    let waiter = gate.clone();
    source.set_revoke_barrier(Arc::new(move || waiter.wait_idle()));
    let r = std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("upload".into())
            .spawn_scoped(s, {
                let gate = gate.clone();
                move || upload_worker(store, queue_rx, results_tx, gate)
            })
            .context("starting the upload thread")?;
        let r = run_with(source, store, settings, opts, out, uploader);
        // On success the queue is already closed and drained; on failure, dropping `run_with`'s
        // uploader closed it, and the worker ends after the object it is storing.
        if worker.join().is_err() {
            return Err(anyhow!("the upload thread panicked"));
        }
        r
    });
    source.set_revoke_barrier(Arc::new(|| {}));
    r
}

fn run_with(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    settings: &ArchiveSettings,
    opts: &IngestOptions,
    out: &Output,
    uploader: Uploader,
) -> Result<IngestSummary> {
    let started = Instant::now();
    let started_at = Utc::now();
    let topic = source.topic().to_string();
    if !opts.dry_run {
        store.check()?;
    }
    source.start()?;
    let mut run = Run {
        store,
        settings,
        opts,
        topic: topic.clone(),
        out,
        parts: BTreeMap::new(),
        listing: None,
        objects: Vec::new(),
        rejected: Vec::new(),
        summary: IngestSummary {
            dry_run: opts.dry_run,
            ..Default::default()
        },
        uploader,
    };
    let mut assigned: Option<BTreeSet<i32>> = None;
    let mut eof: BTreeSet<i32> = BTreeSet::new();
    let mut lag_total = 0u64;
    let mut assign_wait_start = Instant::now();
    let mut last_progress = Instant::now();
    let mut pb = out.progress(0, "ingest", false);
    let stopped_by;
    loop {
        if let Some(a) = &assigned {
            if a.iter().all(|p| eof.contains(p)) {
                stopped_by = "end of partitions".to_string();
                break;
            }
        } else if assign_wait_start.elapsed() > opts.assignment_timeout {
            bail!(
                "no partitions of topic {topic} were assigned to group {} within {}s (is the group coordinator up?)",
                opts.group,
                opts.assignment_timeout.as_secs()
            );
        }
        if opts.max_messages.is_some_and(|n| run.summary.messages >= n) {
            stopped_by = "--max-messages".into();
            break;
        }
        if opts.max_bytes.is_some_and(|n| run.summary.bytes >= n) {
            stopped_by = "--max-bytes".into();
            break;
        }
        if opts.max_duration.is_some_and(|d| started.elapsed() >= d) {
            stopped_by = "--max-duration".into();
            break;
        }
        let ev = source.poll(Duration::from_millis(200))?;
        if !matches!(ev, Event::Idle) {
            last_progress = Instant::now();
        }
        match ev {
            Event::Message(m) => {
                if !assigned.as_ref().is_some_and(|a| a.contains(&m.partition)) {
                    continue;
                }
                run.on_message(m)?;
                if run.summary.messages.is_multiple_of(1024) {
                    run.collect_uploads()?;
                    // The lag comes from the broker's high watermarks, which some brokers
                    // (tansu) report short: never show a position past the total.
                    if pb.length().is_some_and(|l| l < run.summary.messages) {
                        pb.set_length(run.summary.messages);
                    }
                    pb.set_position(run.summary.messages);
                    pb.set_message(format!(
                        "messages, {}",
                        indicatif::HumanBytes(run.summary.bytes)
                    ));
                }
            }
            Event::Eof(p) => {
                // Make sure the reconciliation covered this partition even with no new messages.
                eof.insert(p);
            }
            Event::Assigned(ps) => {
                out.debug(&format!("assigned partitions {ps:?}"));
                run.listing = None;
                for p in &ps {
                    run.parts.entry(*p).or_default().archived = None;
                }
                if opts.dry_run || out.interactive {
                    lag_total = lag(source, &ps);
                    pb.finish_and_clear();
                    pb = out.progress(lag_total, "ingest", false);
                }
                assigned = Some(ps.into_iter().collect());
            }
            Event::Revoked(ps) => {
                out.debug(&format!(
                    "partitions {ps:?} revoked; dropping their uncommitted data"
                ));
                for p in &ps {
                    // Objects already stored stay (the next owner skips them); the spool is dropped.
                    if let Some(sp) = run.parts.remove(p).and_then(|st| st.spool) {
                        run.summary.messages -= sp.records;
                        run.summary.bytes -= sp.payload_bytes;
                    }
                    eof.remove(p);
                }
                run.rejected.retain(|r| !ps.contains(&r.partition));
                // An assignment follows every revocation; wait for it before judging "done".
                assigned = None;
                assign_wait_start = Instant::now();
            }
            Event::Idle => {
                if let Some(a) = &assigned {
                    if last_progress.elapsed() > opts.stall_timeout {
                        let waiting: Vec<String> = a
                            .iter()
                            .filter(|p| !eof.contains(p))
                            .map(|p| match run.parts.get(p).and_then(|s| s.next_commit) {
                                Some(o) => format!("{p} (at offset {o})"),
                                None => format!("{p} (at its committed offset)"),
                            })
                            .collect();
                        bail!(
                            "topic {topic}: partitions {} delivered neither data nor end-of-partition for {}s; \
                             the broker may be failing to serve that offset (nothing was committed)",
                            waiting.join(", "),
                            opts.stall_timeout.as_secs()
                        );
                    }
                }
            }
        }
    }
    pb.finish_and_clear();
    let part_ids: Vec<i32> = run.parts.keys().copied().collect();
    for p in &part_ids {
        run.flush_partition(*p)?;
    }
    run.finish_uploads()?;
    let run_id = format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    );

    let rejected_key = if run.rejected.is_empty() {
        None
    } else {
        let key = format!("_rejected/{topic}/{run_id}.jsonl");
        if !opts.dry_run {
            let mut body = Vec::new();
            for r in &run.rejected {
                serde_json::to_writer(&mut body, r)?;
                body.push(b'\n');
            }
            store
                .put_bytes_if_absent(&key, &body)
                .with_context(|| format!("storing {key}"))?;
        }
        Some(key)
    };

    let mut manifest_key = None;
    if !run.objects.is_empty() || rejected_key.is_some() {
        let m = Manifest {
            run_id: run_id.clone(),
            topic: topic.clone(),
            group: opts.group.clone(),
            started_at: started_at.to_rfc3339(),
            finished_at: Utc::now().to_rfc3339(),
            objects: run.objects.clone(),
            rejected_key: rejected_key.clone(),
            rejected: run.rejected.len() as u64,
        };
        let key = format!("_manifests/{topic}/{run_id}.json");
        if !opts.dry_run {
            store
                .put_bytes_if_absent(&key, &serde_json::to_vec_pretty(&m)?)
                .with_context(|| format!("storing manifest {key}"))?;
        }
        manifest_key = Some(key);
    }

    let commits: Vec<(i32, i64)> = run
        .parts
        .iter()
        .filter_map(|(p, st)| st.next_commit.map(|o| (*p, o)))
        .collect();
    if !opts.dry_run {
        if opts.fail_before_commit {
            bail!("failpoint: stopping after storing objects, before committing offsets");
        }
        source.commit(&commits).context(
            "objects are stored but the offset commit failed; the next run recognises them and will not duplicate them",
        )?;
    }
    run.summary.committed = commits.into_iter().collect();
    run.summary.rejected = run.rejected.len() as u64;
    run.summary.partitions = assigned.map(|a| a.len()).unwrap_or(0);
    run.summary.objects = run.objects.len();
    run.summary.object_list = run.objects;
    run.summary.manifest_key = manifest_key;
    run.summary.stopped_by = stopped_by;
    run.summary.seconds = started.elapsed().as_secs_f64();
    let _ = lag_total;
    Ok(run.summary)
}

/// Total lag over these partitions from committed offsets and high watermarks (display only).
fn lag(source: &dyn MessageSource, ps: &[i32]) -> u64 {
    let committed = source.committed(ps).unwrap_or_default();
    ps.iter()
        .map(|p| {
            let (lo, hi) = source.watermarks(*p).unwrap_or((0, 0));
            let c = committed.get(p).copied().flatten().unwrap_or(lo);
            (hi - c).max(0) as u64
        })
        .sum()
}

/// One partition's position, for --dry-run.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: Option<i64>,
    /// The high watermark as the broker reports it.
    pub end: i64,
    pub lag: i64,
}

/// Per-partition committed offset, end offset and lag, for --dry-run.
pub fn describe_lag(source: &dyn MessageSource, ps: &[i32]) -> Result<Vec<PartitionLag>> {
    let committed = source.committed(ps)?;
    let mut v = Vec::new();
    for p in ps {
        let (lo, hi) = source.watermarks(*p)?;
        let c = committed.get(p).copied().flatten();
        v.push(PartitionLag {
            partition: *p,
            committed: c,
            end: hi,
            lag: (hi - c.unwrap_or(lo)).max(0),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let n = object_file_name("my+topic", 3, 10, 99, c);
            let key = format!("x/my+topic/2024/01/02/03/{n}");
            assert_eq!(parse_object_key(&key), Some(("my+topic".into(), 3, 10, 99)));
        }
        assert_eq!(parse_object_key("_manifests/t/run.json"), None);
        assert_eq!(parse_object_key("a/t+1+5+2.log"), None);
    }

    #[test]
    fn folders_use_utc_or_offset() {
        // 2021-03-04T23:30:00Z
        let ts = 1_614_900_600_000;
        assert_eq!(
            folder("{topic}/{YYYY}/{MM}/{DD}/{HH}", "t", Some(ts), 0),
            "t/2021/03/04/23"
        );
        assert_eq!(
            folder("{topic}/{YYYY}/{MM}/{DD}/{HH}", "t", Some(ts), 3600),
            "t/2021/03/05/00"
        );
        assert_eq!(list_prefix("{topic}/{YYYY}/{MM}", "t"), "t/");
        let tpl = "{topic}/{YYYY}/{MM}/{DD}/{HH}";
        let key = format!(
            "{}/{}",
            folder(tpl, "t", Some(ts), 0),
            object_file_name("t", 0, 1, 2, Compression::Gzip)
        );
        assert_eq!(
            folder_time(tpl, &key).unwrap().to_string(),
            "2021-03-04 23:00:00"
        );
        assert_eq!(folder_time(tpl, "t/x.log"), None);
        assert_eq!(list_prefix("raw/{topic}/x/{YYYY}", "t"), "raw/t/x/");
        assert_eq!(list_prefix("{YYYY}/{topic}", "t"), "");
    }
}
