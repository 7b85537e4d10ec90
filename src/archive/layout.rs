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

/// Prefixes batchlayer keeps its own files under; no data object lives there.
pub const RESERVED: [&str; 3] = [MANIFESTS, REJECTED, COPY_MANIFESTS];

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

/// The key of a run's manifest.
pub fn manifest_key(topic: &str, run_id: &str) -> String {
    format!("{MANIFESTS}{topic}/{run_id}.json")
}

/// The key of a run's rejected-messages file.
pub fn rejected_key(topic: &str, run_id: &str) -> String {
    format!("{REJECTED}{topic}/{run_id}.jsonl")
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
    /// Offsets inside [first_offset, last_offset] the object does not hold (tombstones), so
    /// each record's offset is known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<i64>,
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
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["compression"], "zstd");
        let back: ObjectEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
