//! The lake's own catalog: what `publish` planned (intents), what each Parquet file holds
//! (commit records), which hours are sealed, and a head that caches all of it for the next
//! run. It lives under `_lake/{topic}/`, outside every table's folder (Athena reads every file
//! under a table's LOCATION), so no engine reads it as data. Every record but the head is
//! written once (`put_bytes_if_absent`); the order of writes is what makes a run that dies at
//! any point resumable (docs/lake-design.md, "Resume after kill -9"):
//! intent -> data file -> commit record -> head -> intent deleted; hour record -> `_SUCCESS`.

use crate::archive::catalog::get_json;
use crate::archive::layout::{merge_spans, OffsetSpan};
use crate::archive::{Compression, ObjectStore, PutOutcome};
use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The lake's folder of catalogs (a topic of this name is refused).
pub const LAKE_DIR: &str = "_lake";
/// The marker of a sealed hour's folder (Hadoop's name: Spark and Hive skip it).
pub const SUCCESS: &str = "_SUCCESS";

/// An hour of the archive's time folders, `YYYYMMDDHH` in the archive's zone.
pub fn hour_id(t: NaiveDateTime) -> String {
    t.format("%Y%m%d%H").to_string()
}

/// The hour's start, from its id.
pub fn hour_start(id: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(&format!("{id}0000"), "%Y%m%d%H%M%S").ok()
}

/// The hour's data folder under the lake, `{topic}/dt=YYYY-MM-DD/hour=HH/`.
pub fn hour_folder(topic: &str, id: &str) -> String {
    let t = hour_start(id).unwrap_or_default();
    format!(
        "{topic}/dt={}/hour={}/",
        t.format("%Y-%m-%d"),
        t.format("%H")
    )
}

fn base(topic: &str) -> String {
    format!("{LAKE_DIR}/{topic}/")
}

pub fn head_key(topic: &str) -> String {
    format!("{}head.json", base(topic))
}

pub fn intents_prefix(topic: &str) -> String {
    format!("{}intents/", base(topic))
}

pub fn intent_key(topic: &str, name: &str) -> String {
    format!("{}{name}.json", intents_prefix(topic))
}

pub fn files_prefix(topic: &str) -> String {
    format!("{}files/", base(topic))
}

pub fn file_record_key(topic: &str, hour: &str, name: &str) -> String {
    format!("{}{hour}/{name}.json", files_prefix(topic))
}

pub fn hours_prefix(topic: &str) -> String {
    format!("{}hours/", base(topic))
}

pub fn hour_record_key(topic: &str, hour: &str) -> String {
    format!("{}{hour}.json", hours_prefix(topic))
}

pub fn rejects_key(topic: &str, name: &str) -> String {
    format!("{}rejects/{name}.jsonl", base(topic))
}

/// A data file's key.
pub fn data_key(topic: &str, hour: &str, name: &str) -> String {
    format!("{}{name}.parquet", hour_folder(topic, hour))
}

/// Spans as stored: `[[first, last], ...]`.
pub type Spans = Vec<(i64, i64)>;

pub fn to_spans(v: &[OffsetSpan]) -> Spans {
    v.iter().map(|s| (s.first, s.last)).collect()
}

pub fn from_spans(v: &Spans) -> Vec<OffsetSpan> {
    v.iter().map(|&(f, l)| OffsetSpan::new(f, l)).collect()
}

/// A partition's identity in the lake: `"{epoch}/{partition}"`.
pub fn part_id(epoch: i32, partition: i32) -> String {
    format!("{epoch}/{partition}")
}

/// One archive object a file takes records from, and which of its offsets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedObject {
    pub key: String,
    pub sha256: String,
    pub records: u64,
    pub epoch: i32,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// Offsets of its range that hold no record.
    pub holes: Spans,
    pub compression: Compression,
    /// Its stored and uncompressed sizes, from the manifest.
    pub bytes: u64,
    pub uncompressed: u64,
    /// The manifest's record timestamps (`RecordTimes`), when it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<String>,
    /// The offsets to publish (its range less what the lake holds already).
    pub spans: Spans,
    /// The manifest that lists it.
    pub manifest: String,
}

/// A file planned and not yet committed: fixes its contents before any of its data exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Intent {
    pub hour: String,
    pub name: String,
    /// Written before its hour is closed (`publish --open`).
    pub open: bool,
    /// Written into an hour sealed already (a record later than the lateness).
    #[serde(default)]
    pub late: bool,
    pub objects: Vec<PlannedObject>,
}

impl Intent {
    /// Offsets per partition (`part_id`) the file holds.
    pub fn spans(&self) -> BTreeMap<String, Vec<OffsetSpan>> {
        let mut m: BTreeMap<String, Vec<OffsetSpan>> = BTreeMap::new();
        for o in &self.objects {
            m.entry(part_id(o.epoch, o.partition))
                .or_default()
                .extend(from_spans(&o.spans));
        }
        for v in m.values_mut() {
            *v = merge_spans(std::mem::take(v));
        }
        m
    }

    /// The file's name: its hour, where its first records come from, and a hash of its plan,
    /// so a retried intent writes the same key.
    pub fn name_for(hour: &str, objects: &[PlannedObject]) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for o in objects {
            h.update(format!("{}|{}|{:?}\n", o.key, o.sha256, o.spans));
        }
        let sha = hex::encode(h.finalize());
        let first = objects.first();
        format!(
            "h{hour}-e{}-p{}-o{}-{}",
            first.map_or(0, |o| o.epoch),
            first.map_or(0, |o| o.partition),
            first.map_or(0, |o| o.spans.first().map_or(o.first, |s| s.0)),
            &sha[..8]
        )
    }
}

/// A committed file: the lake's catalog entry for it, written after the file is stored and
/// before its hour's `_SUCCESS`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub key: String,
    pub hour: String,
    pub name: String,
    pub rows: u64,
    /// Records the layout refused (listed in `rejects_key`), accounted for, not in the file.
    pub rejects: u64,
    pub bytes: u64,
    pub sha256: String,
    pub row_groups: usize,
    pub open: bool,
    #[serde(default)]
    pub late: bool,
    /// Per partition (`part_id`), the offsets the file accounts for (rows, rejects, and
    /// offsets of its objects' ranges that hold no record).
    pub spans: BTreeMap<String, Spans>,
    /// The archive objects it reads.
    pub objects: Vec<String>,
    pub at: DateTime<Utc>,
}

/// A sealed hour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HourRecord {
    pub hour: String,
    pub files: Vec<String>,
    pub rows: u64,
    pub rejects: u64,
    /// What `complete_through` was when the hour was sealed.
    pub complete_through: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// What the lake holds of a topic, as the last run left it: a cache of the commit and hour
/// records, rebuilt from them when missing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LakeHead {
    /// The archive manifest up to which every object is published (publish's window starts
    /// after it, less the catalog's grace).
    pub cursor: Option<String>,
    /// Offsets published, per partition (`part_id`).
    pub published: BTreeMap<String, Spans>,
    /// Hours with files, not sealed yet.
    pub unsealed: BTreeSet<String>,
    /// Hours sealed.
    pub sealed: BTreeSet<String>,
    /// Files of each unsealed hour, by name (the hour record lists them when sealed).
    #[serde(default)]
    pub files: BTreeMap<String, Vec<String>>,
    /// Parquet bytes per archive (uncompressed) byte so far: how files are sized.
    pub ratio: Option<f64>,
    /// Rows and rejects of each unsealed hour.
    #[serde(default)]
    pub rows: BTreeMap<String, (u64, u64)>,
}

impl LakeHead {
    pub fn read(store: &dyn ObjectStore, topic: &str) -> Result<Option<LakeHead>> {
        get_json(store, &head_key(topic), "the lake's head ")
    }

    pub fn store(&self, store: &dyn ObjectStore, topic: &str) -> Result<()> {
        store
            .put_bytes(&head_key(topic), &serde_json::to_vec(self)?)
            .with_context(|| format!("writing the lake's head {}", head_key(topic)))
    }

    /// The published offsets of one partition.
    pub fn published(&self, epoch: i32, partition: i32) -> Vec<OffsetSpan> {
        self.published
            .get(&part_id(epoch, partition))
            .map(from_spans)
            .unwrap_or_default()
    }

    /// Marks offsets published (a committed file's, or an object without records).
    pub fn add_published(&mut self, part: &str, spans: &[OffsetSpan]) {
        let e = self.published.entry(part.to_string()).or_default();
        let mut all = from_spans(e);
        all.extend_from_slice(spans);
        *e = to_spans(&merge_spans(all));
    }

    /// Folds a committed file in.
    pub fn fold(&mut self, rec: &FileRecord) {
        for (p, s) in &rec.spans {
            self.add_published(p, &from_spans(s));
        }
        if self.sealed.contains(&rec.hour) {
            // A late file of a sealed hour: its offsets count, the hour stays sealed.
            return;
        }
        self.unsealed.insert(rec.hour.clone());
        let files = self.files.entry(rec.hour.clone()).or_default();
        if !files.contains(&rec.name) {
            files.push(rec.name.clone());
            let r = self.rows.entry(rec.hour.clone()).or_default();
            r.0 += rec.rows;
            r.1 += rec.rejects;
        }
    }

    /// Rebuilds the head from the commit and hour records (the head was lost).
    pub fn rebuild(store: &dyn ObjectStore, topic: &str) -> Result<LakeHead> {
        let mut head = LakeHead::default();
        for o in store.list(&hours_prefix(topic))? {
            if let Some(h) = get_json::<HourRecord>(store, &o.key, "the lake's hour record ")? {
                head.sealed.insert(h.hour);
            }
        }
        for o in store.list(&files_prefix(topic))? {
            if let Some(r) = get_json::<FileRecord>(store, &o.key, "the lake's file record ")? {
                head.fold(&r);
            }
        }
        for h in head.sealed.clone() {
            head.files.remove(&h);
            head.rows.remove(&h);
        }
        Ok(head)
    }
}

/// Writes a record once; an existing one with other contents is an error (the key holds
/// something this run did not plan).
pub fn put_record<T: Serialize + for<'de> Deserialize<'de> + PartialEq>(
    store: &dyn ObjectStore,
    key: &str,
    v: &T,
    same: impl Fn(&T, &T) -> bool,
) -> Result<()> {
    let body = serde_json::to_vec(v)?;
    match store.put_bytes_if_absent(key, &body)? {
        PutOutcome::Created => Ok(()),
        PutOutcome::AlreadyExists => {
            let there: Option<T> = get_json(store, key, "")?;
            match there {
                Some(t) if same(&t, v) => Ok(()),
                _ => anyhow::bail!(
                    "{key} exists in the lake and holds another record than this run's"
                ),
            }
        }
    }
}

pub fn read_intent(store: &dyn ObjectStore, key: &str) -> Result<Option<Intent>> {
    get_json(store, key, "the lake's intent ")
}

pub fn read_file_record(store: &dyn ObjectStore, key: &str) -> Result<Option<FileRecord>> {
    get_json(store, key, "the lake's file record ")
}

pub fn read_hour_record(store: &dyn ObjectStore, key: &str) -> Result<Option<HourRecord>> {
    get_json(store, key, "the lake's hour record ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, p: i32, spans: Spans) -> PlannedObject {
        PlannedObject {
            key: key.into(),
            sha256: "ab".into(),
            records: 10,
            epoch: 0,
            partition: p,
            first: 0,
            last: 9,
            holes: vec![],
            compression: Compression::Gzip,
            bytes: 1,
            uncompressed: 2,
            timestamps: None,
            spans,
            manifest: "m".into(),
        }
    }

    #[test]
    fn keys_and_folders_follow_the_hour() {
        let t = NaiveDateTime::parse_from_str("2026-11-27 09:15:00", "%Y-%m-%d %H:%M:%S").unwrap();
        let h = hour_id(t);
        assert_eq!(h, "2026112709");
        assert_eq!(hour_folder("tweets", &h), "tweets/dt=2026-11-27/hour=09/");
        assert_eq!(
            data_key("tweets", &h, "x"),
            "tweets/dt=2026-11-27/hour=09/x.parquet"
        );
        assert_eq!(
            file_record_key("tweets", &h, "x"),
            "_lake/tweets/files/2026112709/x.json"
        );
        assert_eq!(
            hour_start("2026112709"),
            Some(t.date().and_hms_opt(9, 0, 0).unwrap())
        );
    }

    #[test]
    fn a_name_is_fixed_by_the_plan_and_changes_with_it() {
        let a = vec![obj("k1", 2, vec![(0, 9)])];
        let n = Intent::name_for("2026112709", &a);
        assert!(n.starts_with("h2026112709-e0-p2-o0-"), "{n}");
        assert!(!n.starts_with(['_', '.']));
        assert_eq!(n, Intent::name_for("2026112709", &a));
        let b = vec![obj("k1", 2, vec![(5, 9)])];
        assert_ne!(n, Intent::name_for("2026112709", &b));
    }

    #[test]
    fn the_head_merges_published_spans_and_counts_a_file_once() {
        let mut h = LakeHead::default();
        let rec = FileRecord {
            key: "k".into(),
            hour: "2026112709".into(),
            name: "n".into(),
            rows: 10,
            rejects: 1,
            bytes: 5,
            sha256: "s".into(),
            row_groups: 1,
            open: false,
            late: false,
            spans: [("0/1".to_string(), vec![(0, 4), (5, 9)])].into(),
            objects: vec![],
            at: Utc::now(),
        };
        h.fold(&rec);
        h.fold(&rec);
        assert_eq!(h.published["0/1"], vec![(0, 9)]);
        assert_eq!(h.rows["2026112709"], (10, 1));
        h.add_published("0/1", &[OffsetSpan::new(10, 12)]);
        assert_eq!(h.published(0, 1), vec![OffsetSpan::new(0, 12)]);
        assert!(h.unsealed.contains("2026112709"));
    }
}
