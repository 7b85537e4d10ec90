//! The archive's layout, shared by every command: object keys and their parsing, time folders,
//! compression and file extensions, and the run manifest and rejects formats.
//!
//! Imports nothing else of the crate: config, the stores and the commands all build on it.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// Where run manifests live: `_manifests/{topic}/{run}.json`.
pub const MANIFESTS: &str = "_manifests/";
/// Where rejected messages live: `_rejected/{topic}/{run}.jsonl`.
pub const REJECTED: &str = "_rejected/";
/// Where Redshift COPY manifests live.
pub const COPY_MANIFESTS: &str = "_copy_manifests/";
/// Where the catalog keeps each topic's head: `_catalog/{topic}/head.json`.
pub const CATALOG: &str = "_catalog/";
/// The cross-topic index of change: one empty object per topic, `_topics/{topic}+{manifest}`,
/// named by the newest manifest an ingest run stored for it. One listing of this folder tells
/// copy which topics changed since it last loaded them all, whatever the number of topics.
pub const TOPICS_INDEX: &str = "_topics/";

/// A topic's key in the index of change ([`TOPICS_INDEX`]):
/// `_topics/{topic}+{manifest}+{positions}`, `positions` being [`positions_tag`] of the offsets
/// the manifest's run commits (`+` never occurs in a topic or manifest name).
pub fn topic_index_key(
    topic: &str,
    manifest_name: &str,
    next: &std::collections::BTreeMap<i32, i64>,
) -> String {
    format!(
        "{TOPICS_INDEX}{topic}+{manifest_name}+{}",
        positions_tag(next)
    )
}

/// A short tag of a set of positions (partition: next offset): the first 16 hex digits of the
/// SHA-256 of `p:o,` for each, in partition order. Equal tags: the same positions (but for a
/// 64-bit collision).
pub fn positions_tag(next: &std::collections::BTreeMap<i32, i64>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (p, o) in next {
        h.update(format!("{p}:{o},").as_bytes());
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// Where the schemas of Avro-framed messages live, one per registry id, for the whole archive:
/// `_schemas/{id}.json` ([`StoredSchema`]).
pub const SCHEMAS: &str = "_schemas/";

/// How an archived object is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression {other:?} (expected none, gzip or zstd)"
            )),
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "log",
            Compression::Gzip => "log.gz",
            Compression::Zstd => "log.zst",
        }
    }
    /// The compression an object key's extension names.
    pub fn from_key(key: &str) -> Option<Self> {
        if key.ends_with(".log.gz") {
            Some(Compression::Gzip)
        } else if key.ends_with(".log.zst") {
            Some(Compression::Zstd)
        } else if key.ends_with(".log") {
            Some(Compression::None)
        } else {
            None
        }
    }
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

/// The name of an object of a later epoch: `{topic}@{epoch}+{partition}+{first}+{last}...`
/// (epoch 0 keeps the plain name). `@` never occurs in a Kafka topic name.
pub fn epoch_file_name(
    topic: &str,
    epoch: i32,
    partition: i32,
    first: i64,
    last: i64,
    c: Compression,
) -> String {
    if epoch == 0 {
        object_file_name(topic, partition, first, last, c)
    } else {
        object_file_name(&format!("{topic}@{epoch}"), partition, first, last, c)
    }
}

/// An inclusive range of one partition's offsets, `first..=last`. Serialized as
/// `[first, last]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "(i64, i64)")]
pub struct OffsetSpan {
    pub first: i64,
    pub last: i64,
}

impl OffsetSpan {
    pub fn new(first: i64, last: i64) -> Self {
        OffsetSpan { first, last }
    }

    pub fn contains(self, offset: i64) -> bool {
        self.first <= offset && offset <= self.last
    }

    /// The offsets both spans hold, when they share any.
    pub fn intersect(self, other: OffsetSpan) -> Option<OffsetSpan> {
        (other.last >= self.first && other.first <= self.last)
            .then(|| OffsetSpan::new(self.first.max(other.first), self.last.min(other.last)))
    }

    /// How many offsets it holds.
    pub fn count(self) -> u64 {
        (self.last - self.first + 1) as u64
    }
}

impl From<OffsetSpan> for (i64, i64) {
    fn from(s: OffsetSpan) -> Self {
        (s.first, s.last)
    }
}

/// What an object's name says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    pub topic: String,
    pub epoch: i32,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// Parses an object key's last segment, epoch included.
pub fn parse_object_name(key: &str) -> Option<ObjectName> {
    let name = key.rsplit('/').next()?;
    let c = Compression::from_key(name)?;
    let stem = name.strip_suffix(&format!(".{}", c.extension()))?;
    let mut it = stem.rsplitn(4, '+');
    let last = it.next()?.parse().ok()?;
    let first = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let full = it.next()?;
    let (topic, epoch) = match full.rsplit_once('@') {
        Some((t, e)) => (t.to_string(), e.parse().ok()?),
        None => (full.to_string(), 0),
    };
    if topic.is_empty() || first > last {
        return None;
    }
    Some(ObjectName {
        topic,
        epoch,
        partition,
        first,
        last,
    })
}

/// Parses an object key's last segment back into (topic, partition, first, last).
pub fn parse_object_key(key: &str) -> Option<(String, i32, i64, i64)> {
    parse_object_name(key).map(|n| (n.topic, n.partition, n.first, n.last))
}

/// Where the in-flight markers of a topic's runs are.
pub fn markers_prefix(topic: &str) -> String {
    format!("{CATALOG}{topic}/inflight/")
}

/// The key of a run's in-flight marker.
pub fn marker_key(topic: &str, run_id: &str) -> String {
    format!("{}{run_id}.json", markers_prefix(topic))
}

/// The key of a topic's catalog head.
pub fn catalog_head_key(topic: &str) -> String {
    format!("{CATALOG}{topic}/head.json")
}

/// The folder of a topic's head fragments: `_catalog/{topic}/heads/`. Each ingest run that
/// commits writes one fragment (write-once, named by its run) holding the head as it merged it;
/// the topic's head is the merge of the fragments there and of `head.json` (older versions'
/// head, still written as a mirror). See [`CatalogHead::merge`].
pub fn catalog_heads_prefix(topic: &str) -> String {
    format!("{CATALOG}{topic}/heads/")
}

/// The key of a run's head fragment (`attempt` > 0 when the first name was taken).
pub fn catalog_head_fragment_key(topic: &str, run_id: &str, attempt: u32) -> String {
    match attempt {
        0 => format!("{}{run_id}.json", catalog_heads_prefix(topic)),
        n => format!("{}{run_id}-{n}.json", catalog_heads_prefix(topic)),
    }
}

/// The key that gives a topic archived before the catalog existed its catalog folder.
pub fn catalog_legacy_key(topic: &str) -> String {
    format!("{CATALOG}{topic}/legacy.json")
}

/// Where a topic's archive stands, written after each committed run: the epoch and, per
/// partition, the next offset the archive expects. The committed offsets of the group are
/// never behind it unless the group's offsets were reset or the topic was re-created.
///
/// Stored as fragments that only ever grow when merged ([`CatalogHead::merge`]: the newest
/// epoch, per partition the highest next offset of that epoch, every accepted gap), so runs of
/// several group members writing side by side never lose each other's positions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogHead {
    pub epoch: i32,
    /// partition -> next offset to archive.
    pub next: std::collections::BTreeMap<i32, i64>,
    /// Offsets that expired before they were archived, accepted by the operator.
    #[serde(default)]
    pub expired: Vec<ExpiredGap>,
    pub run_id: String,
}

/// Offsets of a partition that expired unarchived (inclusive), accepted with --accept-expired.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpiredGap {
    pub epoch: i32,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// Prefixes batchlayer keeps its own files under; no data object lives there.
pub const RESERVED: [&str; 6] = [
    MANIFESTS,
    REJECTED,
    COPY_MANIFESTS,
    CATALOG,
    SCHEMAS,
    TOPICS_INDEX,
];

/// Whether a key names an archived data object (not a manifest or a rejects file). Any topic
/// name works, `_events` included: only batchlayer's own prefixes are excluded.
pub fn is_data_key(key: &str) -> bool {
    !RESERVED.iter().any(|r| key.starts_with(r)) && parse_object_key(key).is_some()
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

/// The full key of an object: its time folder, then its file name.
pub fn object_key(folder: &str, file_name: &str) -> String {
    if folder.is_empty() {
        file_name.to_string()
    } else {
        format!("{}/{file_name}", folder.trim_end_matches('/'))
    }
}

/// The time of an object's folder, read back from its key by the template (the inverse of
/// `folder`); None when the key does not follow the template.
pub fn folder_time(template: &str, key: &str) -> Option<NaiveDateTime> {
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
pub fn list_prefix(template: &str, topic: &str) -> String {
    let t = template.replace("{topic}", topic);
    let upto = t.find('{').unwrap_or(t.len());
    match t[..upto].rfind('/') {
        Some(i) => t[..=i].to_string(),
        None => String::new(),
    }
}

/// A run's id: its start time (sortable) and the process id.
pub fn run_id(started_at: DateTime<Utc>) -> String {
    format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    )
}

/// The key of a run's manifest: `_manifests/{topic}/{YYYYMMDD}/{finished}-{run_id}.json`,
/// in a folder per day of the time it is written, so its name sorts by when it was stored
/// and a reader of recent manifests lists a day or two, whatever the archive's age.
pub fn manifest_key(topic: &str, run_id: &str, finished: DateTime<Utc>) -> String {
    format!(
        "{MANIFESTS}{topic}/{}/{}-{run_id}.json",
        finished.format("%Y%m%d"),
        finished.format("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// A manifest's name (its key's last segment without `.json`): sorts by the time it was
/// stored (by the time its run started for manifests of older versions).
pub fn manifest_name(key: &str) -> Option<&str> {
    key.rsplit('/').next()?.strip_suffix(".json")
}

/// Where a manifest of this name may be: its day folder (named by the time the name starts
/// with), then the topic's folder (manifests of older versions).
pub fn manifest_keys_for_name(topic: &str, name: &str) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(day) = name
        .get(..8)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
    {
        keys.push(format!("{MANIFESTS}{topic}/{day}/{name}.json"));
    }
    keys.push(format!("{MANIFESTS}{topic}/{name}.json"));
    keys
}

/// The time a manifest name starts with.
pub fn manifest_time(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.get(..20)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The key of the schema with this registry id.
pub fn schema_key(id: u32) -> String {
    format!("{SCHEMAS}{id}.json")
}

/// The registry id a schema's key names (`_schemas/7.json`: 7).
pub fn parse_schema_key(key: &str) -> Option<u32> {
    let digits = key.strip_prefix(SCHEMAS)?.strip_suffix(".json")?;
    // Only the key `schema_key` writes: plain digits, no sign, no leading zero.
    (digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0')))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A schema as the archive keeps it, written once by the ingest run that first archived a
/// message framed with its id: the text the registry served, so copy decodes without it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredSchema {
    pub id: u32,
    /// The schema text, as the registry returned it.
    pub schema: String,
    /// The registry it came from (its URL, without credentials).
    pub registry: String,
    /// The registry's schema type when it is not Avro (`JSON`, `PROTOBUF`); absent for Avro.
    #[serde(
        rename = "schemaType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_type: Option<String>,
}

/// The key of a run's rejected-messages file.
pub fn rejected_key(topic: &str, run_id: &str) -> String {
    format!("{REJECTED}{topic}/{run_id}.jsonl")
}

/// Why offsets inside an object's range hold no record of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoleReason {
    /// Transaction markers and the records of aborted transactions (which a read_committed
    /// consumer never sees): offsets the broker skipped in a topic that is not compacted.
    Marker,
    /// Offsets the broker skipped in a compacted topic (`cleanup.policy` holds `compact`):
    /// removed by compaction, or transaction markers (a consumer cannot tell them apart).
    Compacted,
    /// A message with a null payload (listed in the run's rejects file).
    Tombstone,
    /// Offsets that expired (retention, DeleteRecords) before they were read, accepted with
    /// `--accept-expired`.
    Expired,
    /// Offsets the broker skipped whose cause could not be told (the topic's configuration
    /// could not be read).
    Unknown,
}

impl HoleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoleReason::Marker => "marker",
            HoleReason::Compacted => "compacted",
            HoleReason::Tombstone => "tombstone",
            HoleReason::Expired => "expired",
            HoleReason::Unknown => "unknown",
        }
    }
}

/// Offsets `first..=last` inside an object's range that hold no record, and why. Serialized
/// compactly as `[first, last, "reason"]`: an aborted transaction can span a million offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "(i64, i64, HoleReason)", from = "(i64, i64, HoleReason)")]
pub struct Hole {
    pub first: i64,
    pub last: i64,
    pub reason: HoleReason,
}

impl Hole {
    pub fn span(self) -> OffsetSpan {
        OffsetSpan::new(self.first, self.last)
    }
}

impl From<Hole> for (i64, i64, HoleReason) {
    fn from(h: Hole) -> Self {
        (h.first, h.last, h.reason)
    }
}

impl From<(i64, i64, HoleReason)> for Hole {
    fn from((first, last, reason): (i64, i64, HoleReason)) -> Self {
        Hole {
            first,
            last,
            reason,
        }
    }
}

/// Adds a hole to a list in offset order, merged with the last one when it follows it with the
/// same reason.
pub fn push_hole(holes: &mut Vec<Hole>, h: Hole) {
    match holes.last_mut() {
        Some(l) if l.reason == h.reason && l.last + 1 == h.first => l.last = h.last,
        _ => holes.push(h),
    }
}

/// One stored (or, in a dry run, planned) object, as its manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    pub compression: Compression,
    /// Offsets inside [first_offset, last_offset] the object does not hold (tombstones), as
    /// manifests before `holes` list them; read, no longer written (see [`ObjectEntry::missing`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<i64>,
    /// Every offset inside [first_offset, last_offset] that holds no record of the object, as
    /// ranges with their reason, in offset order: so each record's offset is known, and the
    /// range accounts for every offset from the one before it to the one after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<Hole>,
    /// The newest Kafka timestamp (ms) among its records, when known (manifests written before
    /// this field, and adopted objects, have none: readers fall back to the time folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timestamp_ms: Option<i64>,
    /// The schema ids of its Confluent-framed messages (Avro topics), sorted, each once; each
    /// has its schema in the archive (`_schemas/{id}.json`) before the manifest is written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_ids: Vec<u32>,
    /// Each record's Kafka timestamp, in record order ([`RecordTimes`]): what the lake's
    /// `_timestamp` column holds. Manifests written before it, and adopted objects, have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<String>,
}

#[cfg(test)]
impl ObjectEntry {
    /// A test entry of topic `t`: offsets `first..=last` of `partition`, every one a record,
    /// nothing else set.
    pub fn sample(key: &str, partition: i32, first: i64, last: i64) -> ObjectEntry {
        ObjectEntry {
            key: key.into(),
            topic: "t".into(),
            partition,
            first_offset: first,
            last_offset: last,
            records: (last - first + 1).max(0) as u64,
            bytes: 0,
            uncompressed_bytes: 0,
            sha256: String::new(),
            compression: Compression::None,
            gaps: vec![],
            holes: vec![],
            max_timestamp_ms: None,
            timestamps: None,
            schema_ids: Vec::new(),
        }
    }
}

#[cfg(test)]
impl Manifest {
    /// A test manifest of topic `t`, group `g`, epoch 0: run `run_id`'s `objects`.
    pub fn sample(run_id: &str, objects: Vec<ObjectEntry>) -> Manifest {
        Manifest {
            run_id: run_id.into(),
            topic: "t".into(),
            group: "g".into(),
            started_at: String::new(),
            finished_at: String::new(),
            objects,
            rejected_key: None,
            rejected: 0,
            epoch: 0,
            expired: vec![],
            next: Default::default(),
        }
    }
}

impl ObjectEntry {
    /// A copy without its record timestamps (the large part of an entry).
    pub fn without_times(&self) -> ObjectEntry {
        ObjectEntry {
            key: self.key.clone(),
            topic: self.topic.clone(),
            sha256: self.sha256.clone(),
            gaps: self.gaps.clone(),
            holes: self.holes.clone(),
            schema_ids: self.schema_ids.clone(),
            timestamps: None,
            ..*self
        }
    }
}

/// Each record's Kafka timestamp (ms) of one object, as a manifest keeps it: `z1:` then the
/// base64 of a zstd frame of one zigzag varint per record, the difference from the record
/// before (the first from 0); -1 stands for a record without a timestamp. Messages of a
/// partition come in about time order, so most differences take a byte or less after zstd.
#[derive(Debug, Default)]
pub struct RecordTimes {
    buf: Vec<u8>,
    prev: i64,
    pub count: u64,
}

impl RecordTimes {
    pub fn push(&mut self, ts_ms: Option<i64>) {
        let v = ts_ms.unwrap_or(-1);
        let d = v.wrapping_sub(self.prev);
        self.prev = v;
        let mut z = ((d << 1) ^ (d >> 63)) as u64;
        while z >= 0x80 {
            self.buf.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
        self.count += 1;
    }

    /// The manifest's form.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let packed = zstd::bulk::compress(&self.buf, 3).unwrap_or_default();
        format!(
            "z1:{}",
            base64::engine::general_purpose::STANDARD.encode(packed)
        )
    }

    /// The timestamps of a manifest's form, in record order (None: a record without one).
    pub fn decode(s: &str) -> Result<Vec<Option<i64>>, String> {
        RecordTimes::reader(s)?.collect()
    }

    /// The timestamps of a manifest's form as they are read, one per record: the varints
    /// stay packed (about a byte a record), not a vector of every record's.
    pub fn reader(s: &str) -> Result<TimesReader, String> {
        use base64::Engine as _;
        let b64 = s
            .strip_prefix("z1:")
            .ok_or_else(|| "record timestamps in an unknown form".to_string())?;
        let packed = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("record timestamps: {e}"))?;
        let raw =
            zstd::stream::decode_all(&packed[..]).map_err(|e| format!("record timestamps: {e}"))?;
        Ok(TimesReader {
            raw,
            at: 0,
            prev: 0,
        })
    }
}

/// Reads [`RecordTimes`]' varints one record at a time.
#[derive(Debug)]
pub struct TimesReader {
    raw: Vec<u8>,
    at: usize,
    prev: i64,
}

impl TimesReader {
    /// How many timestamps it holds (a pass over the bytes).
    pub fn records(&self) -> usize {
        self.raw.iter().filter(|&&b| b & 0x80 == 0).count()
    }
}

impl Iterator for TimesReader {
    type Item = Result<Option<i64>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.raw.len() {
            return None;
        }
        let (mut z, mut shift) = (0u64, 0u32);
        while let Some(&b) = self.raw.get(self.at) {
            self.at += 1;
            if shift >= 64 {
                return Some(Err("record timestamps: a varint too long".into()));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 != 0 {
                shift += 7;
                continue;
            }
            let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
            self.prev = self.prev.wrapping_add(d);
            return Some(Ok((self.prev >= 0).then_some(self.prev)));
        }
        Some(Err("record timestamps: cut short".into()))
    }
}

impl ObjectEntry {
    /// The offsets of its range that hold no record (`holes`, and an older manifest's
    /// `gaps`), merged and in order.
    pub fn missing(&self) -> Vec<OffsetSpan> {
        let mut v: Vec<OffsetSpan> = self.holes.iter().map(|h| h.span()).collect();
        v.extend(self.gaps.iter().map(|&o| OffsetSpan::new(o, o)));
        merge_spans(v)
    }

    /// How many offsets of its range hold no record.
    pub fn missing_count(&self) -> u64 {
        self.missing().iter().map(|s| s.count()).sum()
    }

    /// The offset of its last record: the range's last offset less the holes at its end. None
    /// when it holds no record, or when its records and holes do not make up its range (an
    /// adopted object whose holes are not all known), so the offset is not known.
    pub fn last_record_offset(&self) -> Option<i64> {
        let span = OffsetSpan::new(self.first_offset, self.last_offset);
        if self.records == 0 || self.records + self.missing_count() != span.count() {
            return None;
        }
        let mut last = self.last_offset;
        for h in self.missing().iter().rev() {
            if h.last >= last && h.first <= last {
                last = h.first - 1;
            }
        }
        (last >= self.first_offset).then_some(last)
    }
}

/// Merges spans that touch or overlap, in order.
pub fn merge_spans(mut v: Vec<OffsetSpan>) -> Vec<OffsetSpan> {
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

/// The parts of `span` that none of `cover` holds, in order.
pub fn subtract_spans(span: OffsetSpan, cover: &[OffsetSpan]) -> Vec<OffsetSpan> {
    let mut left = vec![span];
    for c in cover {
        let mut next = Vec::new();
        for s in left {
            if c.last < s.first || c.first > s.last {
                next.push(s);
                continue;
            }
            if s.first < c.first {
                next.push(OffsetSpan::new(s.first, c.first - 1));
            }
            if s.last > c.last {
                next.push(OffsetSpan::new(c.last + 1, s.last));
            }
        }
        left = next;
    }
    left.sort_unstable();
    left
}

/// A message that could not be archived as a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// The run manifest, stored under `_manifests/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub topic: String,
    pub group: String,
    pub started_at: String,
    pub finished_at: String,
    pub objects: Vec<ObjectEntry>,
    pub rejected_key: Option<String>,
    pub rejected: u64,
    /// The topic's epoch this run archived.
    #[serde(default)]
    pub epoch: i32,
    /// Expired offsets this run accepted as a gap (recorded forever).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<ExpiredGap>,
    /// Per partition, the offset the run commits once this manifest is stored (the next
    /// offset it did not read). A committed offset ahead of the catalog head is this
    /// archive's own when a manifest records it (the head may lag a member's commit).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub next: std::collections::BTreeMap<i32, i64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn record_times_round_trip_in_order_with_gaps_and_clocks_going_back() {
        let v = vec![
            Some(1_764_806_400_000),
            Some(1_764_806_400_000),
            Some(1_764_806_399_001),
            None,
            Some(0),
            Some(i64::MAX / 4),
            Some(1_764_806_400_007),
        ];
        let mut t = RecordTimes::default();
        for x in &v {
            t.push(*x);
        }
        let s = t.encode();
        assert!(s.starts_with("z1:"), "{s}");
        assert_eq!(RecordTimes::decode(&s).unwrap(), v);
        assert_eq!(RecordTimes::reader(&s).unwrap().records(), v.len());
        assert!(RecordTimes::decode("z2:AAAA").is_err());
        // A million timestamps a millisecond apart take a few hundred bytes.
        let mut m = RecordTimes::default();
        for i in 0..1_000_000i64 {
            m.push(Some(1_764_806_400_000 + i));
        }
        assert!(m.encode().len() < 4096, "{}", m.encode().len());
    }

    use super::*;

    #[test]
    fn offset_spans_are_inclusive() {
        let s = OffsetSpan::new(10, 20);
        assert!(s.contains(10) && s.contains(20) && !s.contains(9) && !s.contains(21));
        assert_eq!(s.count(), 11);
        assert_eq!(
            s.intersect(OffsetSpan::new(20, 30)),
            Some(OffsetSpan::new(20, 20))
        );
        assert_eq!(s.intersect(OffsetSpan::new(0, 9)), None);
        assert_eq!(
            s.intersect(OffsetSpan::new(0, 99)),
            Some(OffsetSpan::new(10, 20))
        );
        assert_eq!(serde_json::to_string(&[s]).unwrap(), "[[10,20]]");
    }

    #[test]
    fn object_names_round_trip() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let n = object_file_name("my+topic", 3, 10, 99, c);
            let key = format!("x/my+topic/2024/01/02/03/{n}");
            assert_eq!(parse_object_key(&key), Some(("my+topic".into(), 3, 10, 99)));
        }
        assert_eq!(parse_object_key("_manifests/t/run.json"), None);
        assert_eq!(parse_object_key("a/t+1+5+2.log"), None);
        let n = epoch_file_name("my.topic", 3, 1, 10, 20, Compression::Gzip);
        assert_eq!(
            parse_object_name(&format!("x/{n}")),
            Some(ObjectName {
                topic: "my.topic".into(),
                epoch: 3,
                partition: 1,
                first: 10,
                last: 20
            })
        );
        assert_eq!(
            epoch_file_name("t", 0, 1, 1, 2, Compression::None),
            object_file_name("t", 1, 1, 2, Compression::None)
        );
        assert_eq!(parse_object_name("t+1+1+2.log").unwrap().epoch, 0);
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

    #[test]
    fn topics_starting_with_an_underscore_are_data() {
        let k = format!(
            "_events/2024/01/02/03/{}",
            object_file_name("_events", 0, 0, 9, Compression::Gzip)
        );
        assert!(is_data_key(&k));
        assert!(!is_data_key("_manifests/_events/run.json"));
        let fake = format!(
            "_rejected/{}",
            object_file_name("t", 0, 0, 9, Compression::None)
        );
        assert!(!is_data_key(&fake));
    }

    #[test]
    fn holes_are_compact_ranges_and_old_manifests_gaps_still_read() {
        let json = r#"{"key":"k","topic":"t","partition":0,"first_offset":10,"last_offset":20,
            "records":8,"bytes":1,"uncompressed_bytes":1,"sha256":"","compression":"gzip",
            "gaps":[12,13]}"#;
        let old: ObjectEntry = serde_json::from_str(json).unwrap();
        assert!(old.holes.is_empty());
        assert_eq!(
            old.missing(),
            vec![OffsetSpan::new(12, 13)],
            "a manifest of an older version: its tombstones"
        );
        let mut holes = Vec::new();
        push_hole(&mut holes, Hole::from((10, 10, HoleReason::Tombstone)));
        push_hole(&mut holes, Hole::from((11, 11, HoleReason::Marker)));
        push_hole(&mut holes, Hole::from((12, 1_000_011, HoleReason::Marker)));
        assert_eq!(
            holes.len(),
            2,
            "adjacent holes of one reason merge: {holes:?}"
        );
        let e = ObjectEntry {
            gaps: vec![],
            holes,
            last_offset: 1_000_020,
            ..old
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v["holes"],
            serde_json::json!([[10, 10, "tombstone"], [11, 1_000_011, "marker"]])
        );
        assert!(v.get("gaps").is_none());
        let back: ObjectEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.missing(), vec![OffsetSpan::new(10, 1_000_011)]);
        assert_eq!(back.missing_count(), 1_000_002);
        assert_eq!(
            subtract_spans(
                OffsetSpan::new(0, 20),
                &[OffsetSpan::new(15, 30), OffsetSpan::new(3, 4)]
            ),
            vec![OffsetSpan::new(0, 2), OffsetSpan::new(5, 14)]
        );
    }

    #[test]
    fn manifest_compression_is_a_plain_word() {
        let e = ObjectEntry {
            key: "k".into(),
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            records: 1,
            bytes: 1,
            uncompressed_bytes: 1,
            sha256: String::new(),
            compression: Compression::Zstd,
            gaps: vec![],
            holes: vec![],
            max_timestamp_ms: None,
            schema_ids: Vec::new(),
            timestamps: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["compression"], "zstd");
        let back: ObjectEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_last_record_offset_passes_the_holes_at_the_end() {
        let mut o = ObjectEntry {
            key: "t/t+0+00000000000000000000+00000000000000000009.log".into(),
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 9,
            records: 5,
            bytes: 0,
            uncompressed_bytes: 0,
            sha256: String::new(),
            compression: Compression::None,
            gaps: vec![7],
            holes: vec![
                Hole {
                    first: 2,
                    last: 3,
                    reason: HoleReason::Marker,
                },
                Hole {
                    first: 8,
                    last: 9,
                    reason: HoleReason::Marker,
                },
            ],
            max_timestamp_ms: None,
            schema_ids: Vec::new(),
            timestamps: None,
        };
        assert_eq!(
            o.last_record_offset(),
            Some(6),
            "7 (a tombstone), 8 and 9 hold none"
        );
        o.records = 4;
        assert_eq!(
            o.last_record_offset(),
            None,
            "records and holes do not make up the range"
        );
        o.records = 0;
        o.holes = vec![Hole {
            first: 0,
            last: 9,
            reason: HoleReason::Marker,
        }];
        o.gaps.clear();
        assert_eq!(o.last_record_offset(), None, "no record");
    }
}
