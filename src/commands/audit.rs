//! `audit`: reconciles the whole chain per topic, partition and epoch: the group's committed
//! offsets, the manifests' offset ranges, the objects that exist, and the ledger. Unlike
//! `status` it reads everything: one listing of the archive, every manifest and rejects file,
//! every ledger row (and with `--deep` every object's bytes). Each problem names its exact
//! offsets or key; any problem exits 6.

use crate::archive::catalog::{self, Catalog, KeyKind};
use crate::archive::layout::OffsetSpan;
use crate::archive::layout::{self, ExpiredGap, ObjectEntry, Rejected};
use crate::archive::{self, ObjectMeta, ObjectStore};
use crate::cli::AuditArgs;
use crate::config::Settings;
use crate::error::Error;
use crate::output::Output;
use crate::report::Report;
use crate::source::{KafkaSource, MessageSource, Mode};
use crate::warehouse::ledger::{self, LedgerRow};
use crate::warehouse::{self, Warehouse};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One problem (or note), with where it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub kind: String,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub epoch: Option<i32>,
    /// The offsets concerned (inclusive).
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub key: Option<String>,
    pub detail: String,
}

impl Finding {
    fn new(kind: &str, detail: String) -> Self {
        Finding {
            kind: kind.into(),
            topic: None,
            partition: None,
            epoch: None,
            first: None,
            last: None,
            key: None,
            detail,
        }
    }
    fn at(mut self, topic: &str, partition: i32, epoch: i32) -> Self {
        self.topic = Some(topic.into());
        self.partition = Some(partition);
        self.epoch = Some(epoch);
        self
    }
    fn range(mut self, first: i64, last: i64) -> Self {
        self.first = Some(first);
        self.last = Some(last);
        self
    }
    fn key(mut self, key: &str) -> Self {
        self.key = Some(key.into());
        self
    }

    /// One line: kind, where, what.
    pub fn line(&self) -> String {
        let mut s = self.kind.clone();
        if let (Some(t), Some(p), Some(e)) = (&self.topic, self.partition, self.epoch) {
            s += &format!(" {t}[{p}]@{e}");
        } else if let Some(t) = &self.topic {
            s += &format!(" {t}");
        }
        if let (Some(f), Some(l)) = (self.first, self.last) {
            s += &format!(" offsets {f}..{l}");
        }
        if let Some(k) = &self.key {
            s += &format!(" {k}");
        }
        format!("{s}: {}", self.detail)
    }
}

/// One partition of one epoch, as the manifests describe it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionAudit {
    pub topic: String,
    pub partition: i32,
    pub epoch: i32,
    pub objects: usize,
    pub first_offset: i64,
    pub last_offset: i64,
    pub records: u64,
    pub committed: Option<i64>,
}

#[derive(Debug, Default, Serialize)]
pub struct AuditReport {
    pub topics: Vec<String>,
    pub partitions: Vec<PartitionAudit>,
    pub objects_listed: usize,
    pub manifests_read: usize,
    pub ledger_rows: usize,
    pub deep: bool,
    pub objects_reread: usize,
    pub problems: Vec<Finding>,
    /// Not problems: work in progress (objects not loaded yet, runs in flight), recorded gaps.
    pub notes: Vec<Finding>,
}

/// A manifest entry with the epoch and manifest it came from.
#[derive(Debug, Clone)]
struct Entry {
    o: ObjectEntry,
    epoch: i32,
    manifest: String,
}

/// Everything the archive holds for one topic.
#[derive(Debug, Default)]
struct TopicArchive {
    /// Entries by key (the first manifest that lists a key).
    entries: BTreeMap<String, Entry>,
    /// Data objects listed in the store, by key.
    listed: BTreeMap<String, u64>,
    expired: Vec<ExpiredGap>,
    /// Tombstone offsets per (partition, epoch).
    tombstones: HashMap<(i32, i32), BTreeSet<i64>>,
    /// Folders named by in-flight markers.
    marker_folders: BTreeSet<String>,
    markers: usize,
    head: Option<layout::CatalogHead>,
}

/// `batchlayer audit`: reconciles the chain, and reports what it found (judged by
/// `AuditReport::outcome` once it is printed).
pub fn exec(a: &AuditArgs, s: &Settings, out: &Output) -> Result<Report> {
    if s.topics.multi() {
        let store = archive::open(&s.archive)?;
        let archived = crate::archive::catalog::topics(store.as_ref())?;
        let mut many = crate::report::Many::new("audit");
        for t in super::config_topics(s, Some(&archived))? {
            let r = match s.for_topic(&t) {
                Ok(ts) => exec_one(a, &ts, out, Some(&t)),
                Err(e) => Err(e.into()),
            };
            many.record(&t, r, out);
        }
        return Ok(Report::Many(many));
    }
    let only: Vec<String> = s
        .topics
        .narrow
        .iter()
        .filter_map(|m| match m {
            crate::config::topics::Matcher::Name(n) => Some(n.clone()),
            crate::config::topics::Matcher::Pattern(_) => None,
        })
        .collect();
    exec_one(
        a,
        s,
        out,
        only.first().map(String::as_str).filter(|_| only.len() == 1),
    )
}

/// The audit of one raw table's ledger against the archive: every topic, or one (`only`).
fn exec_one(a: &AuditArgs, s: &Settings, out: &Output, only: Option<&str>) -> Result<Report> {
    let store = archive::open(&s.archive)?;
    let mut wh = warehouse::connect(&s.warehouse, &s.archive)?;
    let source = if a.no_kafka || s.kafka.topic.is_empty() {
        None
    } else {
        Some(KafkaSource::connect(&s.kafka, Mode::AssignAll)?)
    };
    let kafka = source
        .as_ref()
        .map(|src| (src as &dyn MessageSource, s.kafka.topic.as_str()));
    let lake_store = archive::open(&s.lake.store)?;
    let lake = LakeAudit {
        store: lake_store.as_ref(),
        key_template: &s.archive.key_template,
        explicit: s.lake.explicit,
    };
    let report = run_with_lake(
        store.as_ref(),
        wh.as_mut(),
        kafka,
        a.deep,
        only,
        Some(lake),
        out,
    )?;
    Ok(Report::Audit(report))
}

impl AuditReport {
    /// The audit's verdict: inconsistent (exit 6) when it found a problem.
    pub fn outcome(&self) -> Result<(), Error> {
        if !self.problems.is_empty() {
            let first: Vec<String> = self.problems.iter().take(3).map(Finding::line).collect();
            return Err(Error::Inconsistent(format!(
                "audit found {} problem(s): {}{}",
                self.problems.len(),
                first.join("; "),
                if self.problems.len() > 3 { "; ..." } else { "" }
            )));
        }
        Ok(())
    }
}

/// The report as people read it.
pub fn render(r: &AuditReport) -> String {
    let mut s = format!(
        "audit: {} topics, {} partitions, {} objects listed, {} manifests read, {} ledger rows{}\n",
        r.topics.len(),
        r.partitions.len(),
        r.objects_listed,
        r.manifests_read,
        r.ledger_rows,
        if r.deep {
            format!(", {} objects re-read", r.objects_reread)
        } else {
            String::new()
        }
    );
    for p in &r.partitions {
        s += &format!(
            "{}[{}]@{}: offsets {}..{} in {} objects ({} records), committed {}\n",
            p.topic,
            p.partition,
            p.epoch,
            p.first_offset,
            p.last_offset,
            p.objects,
            p.records,
            p.committed.map_or("-".into(), |c| c.to_string())
        );
    }
    for n in &r.notes {
        s += &format!("note: {}\n", n.line());
    }
    for p in &r.problems {
        s += &format!("PROBLEM: {}\n", p.line());
    }
    if r.problems.is_empty() {
        s += "no problems found\n";
    }
    s
}

/// The audit over the traits: `kafka` is the source and the topic whose group it reads.
pub fn run(
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    kafka: Option<(&dyn MessageSource, &str)>,
    deep: bool,
    only: Option<&str>,
    out: &Output,
) -> Result<AuditReport> {
    run_with_lake(store, wh, kafka, deep, only, None, out)
}

/// The lake a run audits besides the archive: its store and the archive's folder template.
pub struct LakeAudit<'a> {
    pub store: &'a dyn ObjectStore,
    pub key_template: &'a str,
    /// Configured (not the default beside the archive): a lake that cannot be read fails.
    pub explicit: bool,
}

/// The lake's audit; a lake nobody configured (the default beside the archive) that cannot
/// be read is no lake to audit, a configured one is an error.
fn check_lake_or_skip(
    l: &LakeAudit<'_>,
    topic: &str,
    ta: &TopicArchive,
    deep: bool,
    r: &mut AuditReport,
    out: &Output,
) -> Result<()> {
    match check_lake(l, topic, ta, deep, r) {
        Err(e) if !l.explicit => {
            out.debug(&format!(
                "the default lake {} was not audited: {e:#}",
                l.store.describe()
            ));
            Ok(())
        }
        other => other,
    }
}

/// As [`run`], and each topic's lake (when it has one) against the archive.
pub fn run_with_lake(
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    kafka: Option<(&dyn MessageSource, &str)>,
    deep: bool,
    only: Option<&str>,
    lake: Option<LakeAudit<'_>>,
    out: &Output,
) -> Result<AuditReport> {
    let listing = store
        .list("")
        .with_context(|| format!("listing the archive {}", store.describe()))?;
    let mut r = AuditReport {
        deep,
        ..Default::default()
    };
    let rows = ledger::Ledger::new(wh).rows()?;
    r.ledger_rows = rows.len();
    let mut topics = split_listing(&listing, &mut r);
    let schemas = stored_schemas(&listing);
    for row in &rows {
        if let Some(t) = &row.topic {
            topics.entry(t.clone()).or_default();
        }
    }
    if let Some((_, t)) = kafka {
        topics.entry(t.to_string()).or_default();
    }
    if let Some(t) = only {
        topics.retain(|topic, _| topic == t);
        topics.entry(t.to_string()).or_default();
    }
    for (topic, paths) in topics {
        out.debug(&format!("auditing topic {topic}"));
        let ta = read_topic(store, &topic, &paths, &listing, &mut r)?;
        check_ranges(&topic, &ta, &mut r);
        check_schemas(&topic, &ta, &schemas, &mut r);
        if let Some((src, t)) = kafka.filter(|(_, t)| *t == topic) {
            check_committed(src, t, &ta, &mut r)?;
        }
        check_objects(&topic, &ta, &rows, &mut r);
        check_ledger(&topic, &ta, &rows, &mut r);
        if deep {
            reread(store, &topic, &ta, &mut r)?;
        }
        if let Some(l) = &lake {
            check_lake_or_skip(l, &topic, &ta, deep, &mut r, out).with_context(|| {
                format!("auditing the lake {} of topic {topic}", l.store.describe())
            })?;
        }
        r.topics.push(topic);
    }
    check_orphan_rows(&rows, &listing, &mut r);
    if let Some((raw, led)) = ledger::Ledger::new(wh).raw_against_ledger()? {
        if raw != led {
            let names = wh.names().clone();
            r.problems.push(Finding::new(
                "raw_rows_mismatch",
                format!(
                    "{}.{} holds {raw} rows but the ledger records {led} loaded into it ({}): ledger rows deleted, or rows written or deleted outside batchlayer",
                    names.schema,
                    names.raw,
                    if raw > led { "more rows than the ledger accounts for" } else { "rows the ledger counts are gone" }
                ),
            ));
        }
    }
    Ok(r)
}

/// The listing's own files per topic: manifests, rejects files and markers.
#[derive(Debug, Default)]
struct TopicPaths {
    manifests: Vec<String>,
    rejects: Vec<String>,
    markers: Vec<String>,
}

fn split_listing(listing: &[ObjectMeta], r: &mut AuditReport) -> BTreeMap<String, TopicPaths> {
    let mut topics: BTreeMap<String, TopicPaths> = BTreeMap::new();
    for o in listing {
        let k = &o.key;
        match catalog::classify(k) {
            KeyKind::Manifest(t) => topics
                .entry(t.into())
                .or_default()
                .manifests
                .push(k.clone()),
            KeyKind::Rejects(t) => topics.entry(t.into()).or_default().rejects.push(k.clone()),
            KeyKind::Marker(t) => topics.entry(t.into()).or_default().markers.push(k.clone()),
            KeyKind::Data => {
                r.objects_listed += 1;
                if let Some(n) = layout::parse_object_name(k) {
                    topics.entry(n.topic).or_default();
                }
            }
            KeyKind::Schema(_) | KeyKind::Other => {}
        }
    }
    topics
}

/// The registry ids whose schemas the listing holds (`_schemas/{id}.json`).
fn stored_schemas(listing: &[ObjectMeta]) -> BTreeSet<u32> {
    listing
        .iter()
        .filter_map(|o| match catalog::classify(&o.key) {
            KeyKind::Schema(id) => Some(id),
            _ => None,
        })
        .collect()
}

/// Every schema id an object's messages carry has its schema in the archive: copy decodes
/// with it, and never asks the registry.
fn check_schemas(topic: &str, ta: &TopicArchive, stored: &BTreeSet<u32>, r: &mut AuditReport) {
    for e in ta.entries.values() {
        let missing: Vec<u32> =
            e.o.schema_ids
                .iter()
                .filter(|id| !stored.contains(id))
                .copied()
                .collect();
        if !missing.is_empty() {
            r.problems.push(
                Finding::new(
                    "schema_missing",
                    format!(
                        "manifest {} lists schema ids {missing:?} for its messages, but the archive holds no {}{{id}}.json for them: copy cannot decode those records",
                        e.manifest,
                        layout::SCHEMAS
                    ),
                )
                .at(topic, e.o.partition, e.epoch)
                .range(e.o.first_offset, e.o.last_offset)
                .key(&e.o.key),
            );
        }
    }
}

/// The topic's lake against its archive: every Parquet file has a commit record and every
/// record its file; no offset is in two files; in a sealed hour every archived record's offset
/// is in a file or its rejects; `_SUCCESS` only on sealed hours. `--deep` reads each file's
/// `_partition`, `_offset` and `_epoch` columns and compares them with its commit record.
fn check_lake(
    l: &LakeAudit<'_>,
    topic: &str,
    ta: &TopicArchive,
    deep: bool,
    r: &mut AuditReport,
) -> Result<()> {
    use crate::lake::catalog as lc;
    let catalog = l.store.list(&format!("{}/{topic}/", lc::LAKE_DIR))?;
    let data = l.store.list(&format!("{topic}/"))?;
    if catalog.is_empty() && data.is_empty() {
        return Ok(());
    }
    let lake_finding = |kind: &str, detail: String| {
        let mut f = Finding::new(kind, detail);
        f.topic = Some(topic.to_string());
        f
    };
    let mut records: Vec<lc::FileRecord> = Vec::new();
    let mut sealed: BTreeSet<String> = BTreeSet::new();
    let mut intents: Vec<lc::Intent> = Vec::new();
    for o in &catalog {
        let k = o.key.as_str();
        if k.starts_with(&lc::files_prefix(topic)) {
            if let Some(rec) = lc::read_file_record(l.store, k)? {
                records.push(rec);
            }
        } else if k.starts_with(&lc::hours_prefix(topic)) {
            if let Some(h) = lc::read_hour_record(l.store, k)? {
                sealed.insert(h.hour);
            }
        } else if k.starts_with(&lc::intents_prefix(topic)) {
            if let Some(i) = lc::read_intent(l.store, k)? {
                intents.push(i);
            }
        }
    }
    let sizes: BTreeMap<&str, u64> = data.iter().map(|o| (o.key.as_str(), o.size)).collect();
    // Every file has its record, every record its file.
    let recorded: BTreeSet<&str> = records.iter().map(|x| x.key.as_str()).collect();
    let planned: BTreeSet<String> = intents
        .iter()
        .map(|i| lc::data_key(topic, &i.hour, &i.name))
        .collect();
    for o in data.iter().filter(|o| o.key.ends_with(".parquet")) {
        if recorded.contains(o.key.as_str()) {
            continue;
        }
        if planned.contains(&o.key) {
            r.notes.push(lake_finding("lake_uncommitted_file", "a file a run planned and stored, not committed yet (a run going on, or one that died: the next publish commits it)".into()).key(&o.key));
        } else {
            r.problems.push(lake_finding("lake_orphan_file", "a Parquet file in the lake that no commit record lists: engines read it, and its rows may be in other files too".into()).key(&o.key));
        }
    }
    for rec in &records {
        match sizes.get(rec.key.as_str()) {
            None => r.problems.push(
                lake_finding(
                    "lake_missing_file",
                    format!(
                        "its commit record says it holds {} rows, and the lake has no such file",
                        rec.rows
                    ),
                )
                .key(&rec.key),
            ),
            Some(&n) if n != rec.bytes => r.problems.push(
                lake_finding(
                    "lake_missing_file",
                    format!("{n} bytes, and its commit record says {}", rec.bytes),
                )
                .key(&rec.key),
            ),
            _ => {}
        }
    }
    for i in &intents {
        r.notes.push(lake_finding("lake_stale_intent", format!("hour {}: a file planned by a run that has not finished it (the next publish does)", i.hour)).key(&lc::intent_key(topic, &i.name)));
    }
    // No offset in two files.
    let mut by_part: BTreeMap<String, Vec<(OffsetSpan, &str)>> = BTreeMap::new();
    for rec in &records {
        for (p, spans) in &rec.spans {
            for s in lc::from_spans(spans) {
                by_part
                    .entry(p.clone())
                    .or_default()
                    .push((s, rec.key.as_str()));
            }
        }
    }
    for (p, mut v) in by_part.clone() {
        v.sort();
        for w in v.windows(2) {
            if let Some(x) = w[0].0.intersect(w[1].0) {
                let (epoch, part) = split_part(&p);
                r.problems.push(
                    lake_finding(
                        "lake_overlap",
                        format!("in two files: {} and {}", w[0].1, w[1].1),
                    )
                    .at(topic, part, epoch)
                    .range(x.first, x.last),
                );
            }
        }
    }
    // `_SUCCESS` only on sealed hours; a sealed hour has its `_SUCCESS`.
    let successes: BTreeSet<&str> = data
        .iter()
        .filter(|o| o.key.ends_with(&format!("/{}", lc::SUCCESS)))
        .map(|o| o.key.as_str())
        .collect();
    let success_of = |h: &str| format!("{}{}", lc::hour_folder(topic, h), lc::SUCCESS);
    for s in &successes {
        if !sealed.iter().any(|h| success_of(h) == *s) {
            r.problems.push(lake_finding("lake_success_without_seal", "a _SUCCESS marker in an hour the lake's catalog has not sealed: readers take the hour as complete".into()).key(s));
        }
    }
    for h in &sealed {
        if !successes.contains(success_of(h).as_str()) {
            r.notes.push(lake_finding("lake_seal_without_success", format!("hour {h} is sealed in the catalog and its folder has no _SUCCESS (a run died while sealing it: the next publish writes it; deleted: publish --repair writes it)")).key(&success_of(h)));
        }
    }
    // In a sealed hour, every archived record's offset is in a file (or its rejects).
    let mut covered: BTreeMap<String, Vec<OffsetSpan>> = BTreeMap::new();
    for (p, v) in by_part {
        covered.insert(p, layout::merge_spans(v.into_iter().map(|x| x.0).collect()));
    }
    for e in ta.entries.values() {
        let Some(t) = layout::folder_time(l.key_template, &e.o.key) else {
            continue;
        };
        if !sealed.contains(&lc::hour_id(t)) || e.o.records == 0 {
            continue;
        }
        let span = OffsetSpan::new(e.o.first_offset, e.o.last_offset);
        let mut left = layout::subtract_spans(span, &e.o.missing());
        let cover = covered
            .get(&lc::part_id(e.epoch, e.o.partition))
            .cloned()
            .unwrap_or_default();
        left = left
            .into_iter()
            .flat_map(|s| layout::subtract_spans(s, &cover))
            .collect();
        for g in left {
            r.problems.push(
                lake_finding(
                    "lake_gap",
                    format!(
                        "hour {} is sealed, and these archived records are in no file of the lake",
                        lc::hour_id(t)
                    ),
                )
                .at(topic, e.o.partition, e.epoch)
                .range(g.first, g.last)
                .key(&e.o.key),
            );
        }
    }
    let rejects: u64 = records.iter().map(|x| x.rejects).sum();
    if rejects > 0 {
        r.notes.push(lake_finding("lake_rejects", format!("{rejects} records the layout refused are listed under {}{topic}/rejects/, not in any file", lc::LAKE_DIR.to_string() + "/")));
    }
    if deep {
        for rec in &records {
            if sizes.contains_key(rec.key.as_str()) {
                deep_check_file(l.store, topic, rec, r)?;
            }
        }
    }
    Ok(())
}

fn split_part(p: &str) -> (i32, i32) {
    let (e, q) = p.split_once('/').unwrap_or(("0", p));
    (e.parse().unwrap_or(0), q.parse().unwrap_or(0))
}

/// Reads a file's `_epoch`, `_partition` and `_offset` columns: each row's offset once, in its
/// commit record's spans, and as many rows as it says.
fn deep_check_file(
    store: &dyn ObjectStore,
    topic: &str,
    rec: &crate::lake::catalog::FileRecord,
    r: &mut AuditReport,
) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = archive::download(store, &rec.key, Some(&rec.sha256))?;
    let reader = SerializedFileReader::new(file).with_context(|| format!("reading {}", rec.key))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let idx = |name: &str| schema.columns().iter().position(|c| c.name() == name);
    let (Some(pi), Some(oi), Some(ei)) = (
        idx(crate::lake::PARTITION),
        idx(crate::lake::OFFSET),
        idx(crate::lake::EPOCH),
    ) else {
        r.problems.push(
            Finding::new(
                "lake_bad_file",
                "it has no _partition, _offset and _epoch columns".into(),
            )
            .key(&rec.key),
        );
        return Ok(());
    };
    let mut seen: BTreeMap<(i32, i32), Vec<i64>> = BTreeMap::new();
    let mut rows = 0u64;
    for row in reader.get_row_iter(None)? {
        let row = row?;
        use parquet::record::RowAccessor as _;
        let (p, o, e) = (row.get_int(pi)?, row.get_long(oi)?, row.get_int(ei)?);
        seen.entry((e, p)).or_default().push(o);
        rows += 1;
    }
    r.objects_reread += 1;
    if rows != rec.rows {
        r.problems.push(
            Finding::new(
                "lake_bad_file",
                format!("{rows} rows, and its commit record says {}", rec.rows),
            )
            .key(&rec.key),
        );
    }
    for ((e, p), mut offs) in seen {
        offs.sort_unstable();
        let spans = rec
            .spans
            .get(&crate::lake::catalog::part_id(e, p))
            .map(crate::lake::catalog::from_spans)
            .unwrap_or_default();
        if let Some(w) = offs.windows(2).find(|w| w[0] == w[1]) {
            r.problems.push(
                Finding::new(
                    "lake_overlap",
                    format!("offset {} is in two rows of the file", w[0]),
                )
                .at(topic, p, e)
                .key(&rec.key),
            );
        }
        if let Some(o) = offs.iter().find(|o| !spans.iter().any(|s| s.contains(**o))) {
            r.problems.push(
                Finding::new(
                    "lake_bad_file",
                    format!("a row of offset {o}, outside the offsets its commit record lists"),
                )
                .at(topic, p, e)
                .key(&rec.key),
            );
        }
    }
    Ok(())
}

/// Reads a topic's manifests (oldest first), rejects files, markers and head.
fn read_topic(
    store: &dyn ObjectStore,
    topic: &str,
    paths: &TopicPaths,
    listing: &[ObjectMeta],
    r: &mut AuditReport,
) -> Result<TopicArchive> {
    let cat = Catalog::new(store, topic);
    let mut ta = TopicArchive {
        head: cat.head()?,
        markers: paths.markers.len(),
        ..Default::default()
    };
    let mut manifests = paths.manifests.clone();
    manifests.sort_by_key(|k| layout::manifest_name(k).unwrap_or_default().to_string());
    let mut reject_epoch: HashMap<String, i32> = HashMap::new();
    for key in &manifests {
        let m = cat.read_manifest(key)?;
        r.manifests_read += 1;
        let name = layout::manifest_name(key).unwrap_or_default().to_string();
        if let Some(rk) = &m.rejected_key {
            reject_epoch.insert(rk.clone(), m.epoch);
        }
        ta.expired.extend(m.expired.iter().cloned());
        for o in m.objects {
            add_entry(&mut ta, o, m.epoch, &name, topic, r);
        }
    }
    if let Some(h) = &ta.head {
        ta.expired.extend(h.expired.iter().cloned());
    }
    for key in &paths.rejects {
        let epoch = reject_epoch.get(key).copied().unwrap_or(0);
        let mut body = Vec::new();
        store.get_into(key, &mut body)?;
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let rej: Rejected =
                serde_json::from_slice(line).with_context(|| format!("parsing {key}"))?;
            ta.tombstones
                .entry((rej.partition, epoch))
                .or_default()
                .insert(rej.offset);
        }
    }
    for key in &paths.markers {
        ta.marker_folders.extend(cat.read_marker(key)?.folders);
    }
    for o in listing.iter().filter(|o| layout::is_data_key(&o.key)) {
        if layout::parse_object_name(&o.key).is_some_and(|n| n.topic == topic) {
            ta.listed.insert(o.key.clone(), o.size);
        }
    }
    Ok(ta)
}

/// Adds a manifest entry; a key listed again must say the same of the object.
fn add_entry(
    ta: &mut TopicArchive,
    o: ObjectEntry,
    epoch: i32,
    name: &str,
    topic: &str,
    r: &mut AuditReport,
) {
    if let Some(prev) = ta.entries.get(&o.key) {
        let same = prev.o.sha256 == o.sha256 && prev.o.records == o.records && prev.epoch == epoch;
        if !same {
            r.problems.push(
                Finding::new(
                    "manifest_conflict",
                    format!(
                        "manifests {} and {name} describe it differently (sha256 {} vs {}, {} vs {} records)",
                        prev.manifest, prev.o.sha256, o.sha256, prev.o.records, o.records
                    ),
                )
                .at(topic, o.partition, epoch)
                .range(o.first_offset, o.last_offset)
                .key(&o.key),
            );
        }
        return;
    }
    // An object's range accounts for each of its offsets: a record, or a listed hole.
    if !o.holes.is_empty() {
        let span = OffsetSpan::new(o.first_offset, o.last_offset);
        let missing = o.missing();
        let inside = missing.iter().all(|m| span.intersect(*m) == Some(*m));
        let holes = o.missing_count();
        if !inside || o.records + holes != span.count() {
            r.problems.push(
                Finding::new(
                    "holes_mismatch",
                    format!(
                        "manifest {name}: {} records and {holes} offsets without a record do not make up its {} offsets",
                        o.records,
                        span.count()
                    ),
                )
                .at(topic, o.partition, epoch)
                .range(o.first_offset, o.last_offset)
                .key(&o.key),
            );
        }
    }
    ta.entries.insert(
        o.key.clone(),
        Entry {
            o,
            epoch,
            manifest: name.to_string(),
        },
    );
}

/// The parts of `span` that no recorded expiry gap and no tombstone accounts for.
fn unaccounted(
    span: OffsetSpan,
    expired: &[OffsetSpan],
    tombs: Option<&BTreeSet<i64>>,
) -> Vec<OffsetSpan> {
    let mut left = vec![span];
    for gap in expired {
        let mut next = Vec::new();
        for s in left {
            if gap.last < s.first || gap.first > s.last {
                next.push(s);
                continue;
            }
            if s.first < gap.first {
                next.push(OffsetSpan::new(s.first, gap.first - 1));
            }
            if s.last > gap.last {
                next.push(OffsetSpan::new(gap.last + 1, s.last));
            }
        }
        left = next;
    }
    let Some(tombs) = tombs else { return left };
    let mut out = Vec::new();
    for OffsetSpan { first: f, last: l } in left {
        let mut start = None;
        for o in f..=l.min(f + 1_000_000) {
            match (tombs.contains(&o), start) {
                (false, None) => start = Some(o),
                (true, Some(s)) => {
                    out.push(OffsetSpan::new(s, o - 1));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push(OffsetSpan::new(s, l));
        }
    }
    out
}

/// Per (partition, epoch): manifest entries in offset order.
fn by_partition(ta: &TopicArchive) -> BTreeMap<(i32, i32), Vec<&Entry>> {
    let mut m: BTreeMap<(i32, i32), Vec<&Entry>> = BTreeMap::new();
    for e in ta.entries.values() {
        m.entry((e.o.partition, e.epoch)).or_default().push(e);
    }
    for v in m.values_mut() {
        v.sort_by_key(|e| (e.o.first_offset, e.o.last_offset, e.o.key.clone()));
    }
    m
}

fn expired_for(ta: &TopicArchive, p: i32, epoch: i32) -> Vec<OffsetSpan> {
    ta.expired
        .iter()
        .filter(|g| g.partition == p && g.epoch == epoch)
        .map(|g| OffsetSpan::new(g.first, g.last))
        .collect()
}

/// The manifests' ranges are contiguous from the first archived offset: every gap is a
/// recorded expiry or tombstones, and no two objects hold the same offset.
fn check_ranges(topic: &str, ta: &TopicArchive, r: &mut AuditReport) {
    for ((p, epoch), es) in by_partition(ta) {
        let expired = expired_for(ta, p, epoch);
        let tombs = ta.tombstones.get(&(p, epoch));
        let mut prev: Option<&Entry> = None;
        let mut top = i64::MIN;
        for e in &es {
            if let Some(pe) = prev {
                if e.o.first_offset > top + 1 {
                    let between = OffsetSpan::new(top + 1, e.o.first_offset - 1);
                    for s in unaccounted(between, &expired, tombs) {
                        r.problems.push(
                            Finding::new(
                                "gap",
                                format!("in no manifest's object, no recorded expiry and no tombstone (after {}, before {})", pe.o.key, e.o.key),
                            )
                            .at(topic, p, epoch)
                            .range(s.first, s.last),
                        );
                    }
                } else if e.o.first_offset <= top {
                    r.problems.push(
                        Finding::new(
                            "overlap",
                            format!("archived twice: in {} and in {}", pe.o.key, e.o.key),
                        )
                        .at(topic, p, epoch)
                        .range(e.o.first_offset, top.min(e.o.last_offset))
                        .key(&e.o.key),
                    );
                }
            }
            if e.o.last_offset > top {
                top = e.o.last_offset;
                prev = Some(e);
            }
        }
        r.partitions.push(PartitionAudit {
            topic: topic.into(),
            partition: p,
            epoch,
            objects: es.len(),
            first_offset: es.first().map_or(0, |e| e.o.first_offset),
            last_offset: top,
            records: es.iter().map(|e| e.o.records).sum(),
            committed: None,
        });
    }
}

/// The group's committed offsets against what the manifests hold of the head's epoch.
fn check_committed(
    src: &dyn MessageSource,
    topic: &str,
    ta: &TopicArchive,
    r: &mut AuditReport,
) -> Result<()> {
    let epoch = ta.head.as_ref().map_or(0, |h| h.epoch);
    let parts = src.partitions()?;
    let committed = src.committed(&parts)?;
    let ranges = by_partition(ta);
    for p in parts {
        let c = committed.get(&p).copied().flatten();
        let (low, _) = src.watermarks(p)?;
        let es = ranges.get(&(p, epoch));
        let archived_end = es
            .and_then(|v| v.iter().map(|e| e.o.last_offset).max())
            .map(|l| l + 1);
        if let Some(pa) = r
            .partitions
            .iter_mut()
            .find(|x| x.topic == topic && x.partition == p && x.epoch == epoch)
        {
            pa.committed = c;
        }
        let head_next = ta.head.as_ref().and_then(|h| h.next.get(&p).copied());
        compare_commit(
            topic,
            p,
            epoch,
            c,
            archived_end.unwrap_or(low),
            head_next,
            ta,
            r,
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn compare_commit(
    topic: &str,
    p: i32,
    epoch: i32,
    c: Option<i64>,
    end: i64,
    head_next: Option<i64>,
    ta: &TopicArchive,
    r: &mut AuditReport,
) {
    let Some(c) = c else {
        if head_next.is_some() {
            r.problems.push(
                Finding::new(
                    "no_committed_offset",
                    format!(
                        "the group has no committed offset, but the catalog head expects offset {}",
                        head_next.unwrap_or(0)
                    ),
                )
                .at(topic, p, epoch),
            );
        }
        return;
    };
    if c > end {
        let expired = expired_for(ta, p, epoch);
        let tombs = ta.tombstones.get(&(p, epoch));
        for s in unaccounted(OffsetSpan::new(end, c - 1), &expired, tombs) {
            r.problems.push(
                Finding::new(
                    "committed_not_archived",
                    format!("committed (offset {c}) but in no manifest's object"),
                )
                .at(topic, p, epoch)
                .range(s.first, s.last),
            );
        }
    } else if c < end {
        let f = Finding::new(
            "archived_beyond_commit",
            format!("archived, but the committed offset is {c}"),
        )
        .at(topic, p, epoch)
        .range(c, end - 1);
        if ta.markers > 0 {
            r.notes.push(Finding {
                detail: format!(
                    "{} (an ingest run is in flight or died; the next run commits it)",
                    f.detail
                ),
                ..f
            });
        } else {
            r.problems.push(Finding {
                detail: format!(
                    "{}: the group's offsets were reset, or a run died after its manifest",
                    f.detail
                ),
                ..f
            });
        }
    }
    if let Some(h) = head_next.filter(|&h| h > c) {
        r.problems.push(
            Finding::new(
                "head_ahead_of_commit",
                format!("the catalog head expects offset {h}, past the committed offset {c}"),
            )
            .at(topic, p, epoch),
        );
    }
}

/// Every manifest entry has its object, of its size; every data object is in a manifest.
fn check_objects(topic: &str, ta: &TopicArchive, rows: &[LedgerRow], r: &mut AuditReport) {
    let loaded: BTreeSet<&str> = rows.iter().map(|x| x.key.as_str()).collect();
    for e in ta.entries.values() {
        let at = |f: Finding| {
            f.at(topic, e.o.partition, e.epoch)
                .range(e.o.first_offset, e.o.last_offset)
                .key(&e.o.key)
        };
        match ta.listed.get(&e.o.key) {
            None if loaded.contains(e.o.key.as_str()) => r.problems.push(at(Finding::new(
                "loaded_object_missing",
                format!(
                    "loaded (in the ledger) and listed by manifest {}, but gone from the archive",
                    e.manifest
                ),
            ))),
            None => r.problems.push(at(Finding::new(
                "missing_object",
                format!("listed by manifest {} but not in the archive", e.manifest),
            ))),
            Some(&size) if size != e.o.bytes => r.problems.push(at(Finding::new(
                "size_mismatch",
                format!(
                    "{size} bytes in the archive, {} in manifest {}",
                    e.o.bytes, e.manifest
                ),
            ))),
            Some(_) => {}
        }
    }
    for key in ta.listed.keys().filter(|k| !ta.entries.contains_key(*k)) {
        let n = layout::parse_object_name(key).expect("listed data keys parse");
        let folder = key.rsplit_once('/').map_or("", |x| x.0);
        let f = Finding::new("unlisted_object", "in no manifest".into())
            .at(topic, n.partition, n.epoch)
            .range(n.first, n.last)
            .key(key);
        if ta.marker_folders.contains(folder) {
            r.notes.push(Finding {
                detail:
                    "in no manifest yet: an ingest run is in flight or died; the next run lists it"
                        .into(),
                ..f
            });
        } else {
            r.problems.push(f);
        }
    }
}

/// Each ledger row agrees with its manifest entry; nothing is left unloaded below loaded offsets.
fn check_ledger(topic: &str, ta: &TopicArchive, rows: &[LedgerRow], r: &mut AuditReport) {
    let mut loaded: HashMap<(i32, i32), Vec<OffsetSpan>> = HashMap::new();
    let mut in_ledger = BTreeSet::new();
    for row in rows.iter().filter(|x| x.topic.as_deref() == Some(topic)) {
        in_ledger.insert(row.key.as_str());
        if let (Some(p), Some(e), Some(f), Some(l)) =
            (row.partition, row.epoch, row.first_offset, row.last_offset)
        {
            loaded
                .entry((p, e))
                .or_default()
                .push(OffsetSpan::new(f, l));
        }
        let Some(e) = ta.entries.get(&row.key) else {
            continue;
        };
        let at = |f: Finding| {
            f.at(topic, e.o.partition, e.epoch)
                .range(e.o.first_offset, e.o.last_offset)
                .key(&row.key)
        };
        let sum = row.rows_loaded + row.rows_rejected + row.rows_skipped;
        if sum != e.o.records as i64 {
            r.problems.push(at(Finding::new(
                "ledger_count_mismatch",
                format!(
                    "{} loaded + {} rejected + {} skipped = {sum}, but the object holds {} records",
                    row.rows_loaded, row.rows_rejected, row.rows_skipped, e.o.records
                ),
            )));
        }
        if !row.sha256.is_empty() && row.sha256 != e.o.sha256 {
            r.problems.push(at(Finding::new(
                "ledger_checksum_mismatch",
                format!(
                    "the ledger says sha256 {}, manifest {} says {}",
                    row.sha256, e.manifest, e.o.sha256
                ),
            )));
        }
    }
    let mut pending = 0;
    for e in ta
        .entries
        .values()
        .filter(|e| !in_ledger.contains(e.o.key.as_str()))
    {
        let ranges = loaded.get(&(e.o.partition, e.epoch));
        let top = ranges.and_then(|v| v.iter().map(|x| x.last).max());
        // Every offset loaded by other objects (a duplicate): the overlap is the finding.
        let span = OffsetSpan::new(e.o.first_offset, e.o.last_offset);
        let covered = ranges.is_some_and(|v| unaccounted(span, v, None).is_empty());
        match top {
            _ if covered => {}
            Some(top) if e.o.last_offset < top => r.problems.push(
                Finding::new("not_loaded", format!(
                    "archived (manifest {}) but not in the ledger, while offsets up to {top} are loaded; plain copy will not return to it: run copy --full-scan (or copy --key)",
                    e.manifest
                ))
                .at(topic, e.o.partition, e.epoch)
                .range(e.o.first_offset, e.o.last_offset)
                .key(&e.o.key),
            ),
            _ => pending += 1,
        }
    }
    if pending > 0 {
        let mut f = Finding::new(
            "pending",
            format!("{pending} archived objects are not loaded yet (the next copy loads them)"),
        );
        f.topic = Some(topic.into());
        r.notes.push(f);
    }
}

/// Ledger rows whose object is in no topic's listing and no manifest.
fn check_orphan_rows(rows: &[LedgerRow], listing: &[ObjectMeta], r: &mut AuditReport) {
    let listed: BTreeSet<&str> = listing.iter().map(|o| o.key.as_str()).collect();
    let reported: BTreeSet<String> = r.problems.iter().filter_map(|f| f.key.clone()).collect();
    for row in rows {
        if listed.contains(row.key.as_str()) || reported.contains(&row.key) {
            continue;
        }
        let mut f = Finding::new(
            "loaded_object_missing",
            "loaded (in the ledger) but gone from the archive, and in no manifest".into(),
        )
        .key(&row.key);
        f.topic = row.topic.clone();
        f.partition = row.partition;
        f.epoch = row.epoch;
        f.first = row.first_offset;
        f.last = row.last_offset;
        r.problems.push(f);
    }
}

/// `--deep`: every listed object of the topic is read again; its sha256 and record count must
/// match its manifest entry.
fn reread(
    store: &dyn ObjectStore,
    topic: &str,
    ta: &TopicArchive,
    r: &mut AuditReport,
) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    for key in ta.listed.keys() {
        let mut file = archive::download(store, key, None)?;
        let sha = crate::util::sha256_of(&mut file).with_context(|| format!("re-reading {key}"))?;
        file.seek(SeekFrom::Start(0))?;
        let c = archive::Compression::from_key(key).unwrap_or_default();
        let mut reader = crate::records::FrameReader::new(archive::decoder(file, c)?);
        let (mut records, mut rec) = (0u64, Vec::new());
        let readable = loop {
            match reader.next_into(&mut rec) {
                Ok(true) => records += 1,
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        r.objects_reread += 1;
        let n = layout::parse_object_name(key).expect("listed data keys parse");
        let at = |f: Finding| {
            f.at(topic, n.partition, n.epoch)
                .range(n.first, n.last)
                .key(key)
        };
        if let Err(e) = readable {
            r.problems.push(at(Finding::new(
                "unreadable_object",
                format!("cannot be decoded: {e:#}"),
            )));
            continue;
        }
        let Some(e) = ta.entries.get(key) else {
            continue;
        };
        if sha != e.o.sha256 {
            r.problems.push(at(Finding::new(
                "checksum_mismatch",
                format!("sha256 {sha}, manifest {} says {}", e.manifest, e.o.sha256),
            )));
        }
        if records != e.o.records {
            r.problems.push(at(Finding::new(
                "record_count_mismatch",
                format!(
                    "holds {records} records, manifest {} says {}",
                    e.manifest, e.o.records
                ),
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unaccounted` over plain pairs.
    fn unaccounted(
        first: i64,
        last: i64,
        expired: &[(i64, i64)],
        tombs: Option<&BTreeSet<i64>>,
    ) -> Vec<(i64, i64)> {
        let expired: Vec<OffsetSpan> = expired
            .iter()
            .map(|&(f, l)| OffsetSpan::new(f, l))
            .collect();
        super::unaccounted(OffsetSpan::new(first, last), &expired, tombs)
            .into_iter()
            .map(|s| s.into())
            .collect()
    }

    #[test]
    fn an_objects_records_and_holes_must_make_up_its_range() {
        use crate::archive::layout::{Hole, HoleReason};
        let entry = |records: u64, holes: Vec<Hole>| ObjectEntry {
            key: format!("t+0+10+19-{records}-{}.log", holes.len()),
            topic: "t".into(),
            partition: 0,
            first_offset: 10,
            last_offset: 19,
            records,
            bytes: 0,
            uncompressed_bytes: 0,
            sha256: String::new(),
            compression: crate::archive::Compression::None,
            gaps: vec![],
            holes,
            max_timestamp_ms: None,
            timestamps: None,
            schema_ids: Vec::new(),
        };
        let h = |f, l| Hole::from((f, l, HoleReason::Marker));
        let mut ta = TopicArchive::default();
        let mut r = AuditReport::default();
        add_entry(
            &mut ta,
            entry(7, vec![h(10, 10), h(15, 16)]),
            0,
            "m",
            "t",
            &mut r,
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        add_entry(
            &mut ta,
            entry(8, vec![h(10, 10), h(15, 16)]),
            0,
            "m",
            "t",
            &mut r,
        );
        add_entry(&mut ta, entry(8, vec![h(19, 20)]), 0, "m", "t", &mut r);
        let kinds: Vec<&str> = r.problems.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["holes_mismatch", "holes_mismatch"],
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn an_objects_schema_ids_must_have_their_schemas_in_the_archive() {
        let meta = |key: &str| ObjectMeta {
            key: key.into(),
            size: 1,
        };
        let listing = [
            meta("_schemas/3.json"),
            meta("_schemas/4.json"),
            meta("_schemas/notes.txt"),
            meta("t/t+0+10+19.log"),
        ];
        let stored = stored_schemas(&listing);
        assert_eq!(stored, BTreeSet::from([3, 4]));
        let mut r = AuditReport::default();
        assert_eq!(
            split_listing(&listing, &mut r).keys().collect::<Vec<_>>(),
            vec!["t"],
            "schemas are no topic's files"
        );
        assert_eq!(r.objects_listed, 1, "schemas are not data objects");
        let mut ta = TopicArchive::default();
        for (key, ids) in [("a", vec![3, 4]), ("b", vec![4, 5, 6]), ("c", vec![])] {
            let o = ObjectEntry {
                schema_ids: ids,
                ..ObjectEntry::sample(key, 0, 0, 0)
            };
            add_entry(&mut ta, o, 0, "m", "t", &mut r);
        }
        check_schemas("t", &ta, &stored, &mut r);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let p = &r.problems[0];
        assert_eq!(
            (p.kind.as_str(), p.key.as_deref()),
            ("schema_missing", Some("b"))
        );
        assert!(p.detail.contains("[5, 6]"), "{}", p.detail);
    }

    #[test]
    fn gaps_are_accounted_for_by_expiry_and_tombstones() {
        let tombs: BTreeSet<i64> = [12, 13].into_iter().collect();
        assert_eq!(unaccounted(10, 20, &[], None), vec![(10, 20)]);
        assert_eq!(unaccounted(10, 20, &[(0, 15)], None), vec![(16, 20)]);
        assert_eq!(unaccounted(10, 20, &[(5, 25)], None), vec![]);
        assert_eq!(
            unaccounted(10, 20, &[(15, 16)], Some(&tombs)),
            vec![(10, 11), (14, 14), (17, 20)]
        );
        assert_eq!(unaccounted(12, 13, &[], Some(&tombs)), vec![]);
    }
}
