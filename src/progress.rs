//! Where each partition of a topic stands along the chain (Kafka -> archive -> ledger), read
//! from the catalog (`archive::catalog`), not from a listing of the archive: the catalog head,
//! the manifests written since copy's cursor, a few ledger aggregates, and one manifest per
//! partition for the time of its newest loaded message. Shared by `status` and `aggregate
//! --require-complete-through`.

use crate::archive::catalog::{Catalog, ManifestCache};
use crate::archive::layout::{self, CatalogHead, ObjectEntry};
use crate::archive::ObjectStore;
use crate::config::{KafkaSettings, Settings};
use crate::source::{KafkaSource, MessageSource, Mode};
use crate::warehouse::ledger::{self, Prefix};
use crate::warehouse::Warehouse;
use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// An archived object no ledger row holds yet, as its manifest lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingObject {
    pub key: String,
    pub partition: i32,
    pub epoch: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// Records it holds (0 for an object whose range holds only offsets without a record).
    pub records: u64,
    pub bytes: u64,
    /// When its manifest was stored (the manifest's name says).
    pub stored_at: Option<DateTime<Utc>>,
    pub max_timestamp_ms: Option<i64>,
}

/// What the catalog lists that copy has not loaded yet.
#[derive(Debug, Default, Serialize)]
pub struct Pending {
    pub objects: Vec<PendingObject>,
    pub manifests_read: usize,
    /// In-flight markers: runs going on, or dead, whose objects no manifest lists yet.
    pub unlisted_runs: Vec<String>,
}

/// The manifests (key, name) a copy reads for a topic: those after copy's cursor (less the
/// catalog's grace; every one when there is no cursor yet) that the ledger does not count as
/// loaded in full. The cursor is copy's own row for this raw table and topic: every manifest
/// named before it is loaded in full.
pub fn unloaded_manifests(
    cat: &Catalog<'_>,
    wh: &mut dyn Warehouse,
) -> Result<Vec<(String, String)>> {
    let topic = cat.topic();
    let cursor = ledger::Ledger::new(wh).copy_cursor(topic)?;
    let candidates = cat.recent_manifests(cursor.as_ref().map(|c| c.manifest.as_str()))?;
    let names: Vec<String> = candidates.iter().map(|(_, n)| n.clone()).collect();
    let done = ledger::Ledger::new(wh).manifests_loaded(topic, &names)?;
    Ok(candidates
        .into_iter()
        .filter(|(_, n)| !done.contains(n))
        .collect())
}

/// The objects of a topic's manifests since copy's cursor that the ledger does not hold: what
/// the next `copy` would load (copy's own discovery, read only).
pub fn pending(cat: &Catalog<'_>, wh: &mut dyn Warehouse) -> Result<Pending> {
    let mut out = Pending {
        unlisted_runs: cat.marker_keys()?,
        ..Default::default()
    };
    let mut seen = HashSet::new();
    for (key, name) in unloaded_manifests(cat, wh)? {
        let man = cat.read_manifest(&key)?;
        out.manifests_read += 1;
        let stored_at = layout::manifest_time(&name);
        for o in man.objects {
            if seen.insert(o.key.clone()) {
                out.objects.push(pending_object(o, man.epoch, stored_at));
            }
        }
    }
    let keys: Vec<String> = out.objects.iter().map(|o| o.key.clone()).collect();
    let loaded = ledger::Ledger::new(wh).keys_loaded(&keys)?;
    out.objects.retain(|o| !loaded.contains(&o.key));
    Ok(out)
}

fn pending_object(o: ObjectEntry, epoch: i32, stored_at: Option<DateTime<Utc>>) -> PendingObject {
    PendingObject {
        key: o.key,
        partition: o.partition,
        epoch,
        first_offset: o.first_offset,
        last_offset: o.last_offset,
        records: o.records,
        bytes: o.bytes,
        stored_at,
        max_timestamp_ms: o.max_timestamp_ms,
    }
}

/// How object times are read when a manifest has none: the key's time folder (the hour of the
/// object's first message, so never later than its newest message).
#[derive(Debug, Clone)]
pub struct TimeRules {
    pub key_template: String,
    pub utc_offset_secs: i32,
}

impl TimeRules {
    fn folder_time(&self, key: &str) -> Option<DateTime<Utc>> {
        let t = layout::folder_time(&self.key_template, key)?;
        Some(t.and_utc() - chrono::Duration::seconds(i64::from(self.utc_offset_secs)))
    }

    /// The newest message time of an object: the manifest's, else its time folder.
    fn object_time(&self, key: &str, max_ms: Option<i64>) -> Option<DateTime<Utc>> {
        max_ms
            .and_then(DateTime::from_timestamp_millis)
            .or_else(|| self.folder_time(key))
    }
}

/// One partition along the chain.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionProgress {
    /// The topic, when a gate looks at several (aggregate over many topics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub partition: i32,
    /// The group's committed offset (next to read); None when nothing is committed.
    pub committed: Option<i64>,
    /// The broker's low and high watermarks.
    pub start: i64,
    pub end: i64,
    /// end - committed (or - start when nothing is committed).
    pub lag: i64,
    /// The next offset the catalog head expects (archived below it).
    pub archived_next: Option<i64>,
    /// The newest archived message's time.
    pub newest_archived_at: Option<DateTime<Utc>>,
    /// Loaded without a hole from the first loaded offset through this offset.
    pub loaded_through: Option<i64>,
    pub loaded_through_at: Option<DateTime<Utc>>,
    /// Objects archived but not loaded.
    pub unloaded_objects: usize,
    /// Every message up to the end offset is archived and loaded.
    pub caught_up: bool,
    /// Every message of this partition with an earlier time is archived and loaded.
    pub complete_through: Option<DateTime<Utc>>,
}

/// What `progress` reads, besides Kafka.
pub struct Inputs<'a> {
    pub head: Option<&'a CatalogHead>,
    pub pending: &'a Pending,
    pub rules: &'a TimeRules,
    pub lateness: Duration,
    pub now: DateTime<Utc>,
}

/// Each partition's position in Kafka, the archive and the ledger, and the time it is
/// complete through.
///
/// `kafka`: what reading Kafka's positions gave (its error is reported after the ledger's,
/// as when they were read here).
pub fn progress(
    kafka: Result<KafkaPositions>,
    wh: &mut dyn Warehouse,
    topic: &str,
    inp: &Inputs<'_>,
    manifests: &mut ManifestCache<'_>,
) -> Result<Vec<PartitionProgress>> {
    let epoch = inp.head.map_or(0, |h| h.epoch);
    let prefixes = ledger::Ledger::new(wh).loaded_prefixes(topic, epoch)?;
    let kafka = kafka?;
    let mut out = Vec::new();
    for &p in &kafka.partitions {
        let (start, end) = kafka
            .watermarks
            .get(&p)
            .copied()
            .ok_or_else(|| anyhow!("no watermarks read for partition {p}"))?;
        let c = kafka.committed.get(&p).copied().flatten();
        let mine: Vec<&PendingObject> = inp
            .pending
            .objects
            .iter()
            .filter(|o| o.partition == p && o.epoch == epoch)
            .collect();
        let prefix = prefixes.get(&p);
        let mut pp = PartitionProgress {
            topic: None,
            partition: p,
            committed: c,
            start,
            end,
            lag: (end - c.unwrap_or(start)).max(0),
            archived_next: inp.head.and_then(|h| h.next.get(&p).copied()),
            newest_archived_at: None,
            loaded_through: None,
            loaded_through_at: None,
            unloaded_objects: mine.len(),
            caught_up: false,
            complete_through: None,
        };
        fill_times(&mut pp, prefix, &mine, inp.rules, manifests)?;
        judge(&mut pp, prefix, &mine, inp);
        out.push(pp);
    }
    Ok(out)
}

/// The time of the ledger's object `key` (listed by manifest `name`).
fn loaded_time(
    key: Option<&String>,
    name: Option<&String>,
    rules: &TimeRules,
    manifests: &mut ManifestCache<'_>,
) -> Result<Option<DateTime<Utc>>> {
    let Some(key) = key else { return Ok(None) };
    let mut max_ms = None;
    if let Some(name) = name {
        if let Some(m) = manifests.get(name)? {
            max_ms = m
                .objects
                .iter()
                .find(|o| &o.key == key)
                .and_then(|o| o.max_timestamp_ms);
        }
    }
    Ok(rules.object_time(key, max_ms))
}

/// The newest archived message's time and the loaded prefix's.
fn fill_times(
    pp: &mut PartitionProgress,
    prefix: Option<&Prefix>,
    mine: &[&PendingObject],
    rules: &TimeRules,
    manifests: &mut ManifestCache<'_>,
) -> Result<()> {
    // A pending object below the loaded offsets: nothing is loaded from the start.
    let prefix = prefix.filter(|x| mine.iter().all(|o| o.first_offset > x.start));
    if let Some(x) = prefix {
        pp.loaded_through = Some(x.through);
        pp.loaded_through_at = loaded_time(x.key.as_ref(), x.manifest.as_ref(), rules, manifests)?;
    }
    // An object of holes only (an aborted transaction's) has no message time.
    let newest_pending = mine
        .iter()
        .filter(|o| o.records > 0)
        .max_by_key(|o| o.last_offset);
    let top = prefixes_top(prefix);
    pp.newest_archived_at = match newest_pending {
        Some(o) if top.is_none_or(|t| o.last_offset > t) => {
            rules.object_time(&o.key, o.max_timestamp_ms)
        }
        _ => match prefix {
            Some(x) if x.top == x.through => pp.loaded_through_at,
            Some(x) => loaded_time(
                x.top_key.as_ref(),
                x.top_manifest.as_ref(),
                rules,
                manifests,
            )?,
            None => None,
        },
    };
    Ok(())
}

fn prefixes_top(p: Option<&Prefix>) -> Option<i64> {
    p.map(|x| x.top)
}

/// Caught up: nothing to read (an empty partition), or every offset to the end is archived,
/// listed and loaded without a hole. Then complete through now; else through the newest
/// loaded message's time; both less the lateness allowed.
fn judge(
    pp: &mut PartitionProgress,
    prefix: Option<&Prefix>,
    mine: &[&PendingObject],
    inp: &Inputs<'_>,
) {
    let no_hole = prefix.is_none_or(|x| x.through == x.top);
    let archived_all = pp.archived_next.is_some_and(|n| n >= pp.end);
    pp.caught_up = pp.end <= pp.start || (archived_all && mine.is_empty() && no_hole);
    let lateness = chrono::Duration::from_std(inp.lateness).unwrap_or_default();
    pp.complete_through = if pp.caught_up {
        Some(inp.now - lateness)
    } else {
        pp.loaded_through_at.map(|t| t - lateness)
    };
}

/// The time every partition is complete through (None when one is complete through nothing).
pub fn complete_through(parts: &[PartitionProgress]) -> Option<DateTime<Utc>> {
    let mut min: Option<DateTime<Utc>> = None;
    for p in parts {
        let t = p.complete_through?;
        min = Some(min.map_or(t, |m| m.min(t)));
    }
    min
}

/// The partitions that hold completeness back from `t`, described for a message.
pub fn holding_back(parts: &[PartitionProgress], t: DateTime<Utc>) -> Vec<String> {
    parts
        .iter()
        .filter(|p| p.complete_through.is_none_or(|c| c < t))
        .map(|p| {
            let through = match (p.loaded_through, p.complete_through) {
                (Some(o), Some(c)) => format!(
                    "loaded through offset {o}, complete through {}",
                    c.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                (Some(o), None) => format!("loaded through offset {o}, time unknown"),
                _ => "nothing loaded".to_string(),
            };
            let topic = p
                .topic
                .as_ref()
                .map(|t| format!("topic {t} "))
                .unwrap_or_default();
            format!(
                "{topic}partition {} ({through}; end offset {}, lag {}, {} objects not loaded)",
                p.partition, p.end, p.lag, p.unloaded_objects
            )
        })
        .collect()
}

/// A topic along the chain, as one run of `status` (or the completeness gate) reads it.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub topic: String,
    pub group: String,
    pub epoch: i32,
    pub head: Option<CatalogHead>,
    pub pending: Pending,
    pub partitions: Vec<PartitionProgress>,
    /// Manifests read by name for the loaded objects' times.
    pub manifests_read_by_name: usize,
}

/// What Kafka says of a topic: its partitions, the group's committed offsets, and each
/// partition's watermarks (low, high).
pub struct KafkaPositions {
    pub partitions: Vec<i32>,
    pub committed: HashMap<i32, Option<i64>>,
    pub watermarks: HashMap<i32, (i64, i64)>,
}

/// Partitions whose watermarks are asked for at once.
const WATERMARK_THREADS: usize = 8;

impl KafkaPositions {
    /// Connects (no group is joined, nothing is committed) and reads them; the watermarks of
    /// several partitions at once, so that a topic of many partitions costs a few round trips,
    /// not one per partition. The outer error: connecting (the topic's metadata) failed; the
    /// inner: reading the offsets or watermarks did.
    pub fn read(k: &KafkaSettings) -> Result<Result<KafkaPositions>> {
        let source = KafkaSource::connect(k, Mode::AssignAll)?;
        Ok(Self::read_from(&source))
    }

    fn read_from(source: &KafkaSource) -> Result<KafkaPositions> {
        let partitions = source.partitions()?;
        let committed = source.committed(&partitions)?;
        let per = partitions.len().div_ceil(WATERMARK_THREADS).max(1);
        let marks = std::thread::scope(|scope| {
            let threads: Vec<_> = partitions
                .chunks(per)
                .map(|ps| {
                    scope.spawn(move || -> Result<Vec<(i32, (i64, i64))>> {
                        ps.iter().map(|&p| Ok((p, source.watermarks(p)?))).collect()
                    })
                })
                .collect();
            let mut marks = HashMap::new();
            for t in threads {
                let got = t
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("reading watermarks panicked")))?;
                marks.extend(got);
            }
            Ok::<_, anyhow::Error>(marks)
        })?;
        Ok(KafkaPositions {
            partitions,
            committed,
            watermarks: marks,
        })
    }
}

/// [`KafkaPositions`] read on a thread of their own (Kafka's round trips are the slowest part
/// of a snapshot) while [`snapshot`] reads the catalog.
struct KafkaPrefetch(std::thread::JoinHandle<Result<Result<KafkaPositions>>>);

impl KafkaPrefetch {
    fn start(k: &KafkaSettings) -> KafkaPrefetch {
        let k = k.clone();
        KafkaPrefetch(
            std::thread::Builder::new()
                .name("kafka-positions".into())
                .spawn(move || KafkaPositions::read(&k))
                .expect("starting a thread to read Kafka"),
        )
    }

    fn wait(self) -> Result<Result<KafkaPositions>> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(anyhow!("reading Kafka's positions panicked")))
    }
}

/// Kafka's positions being read on a thread of their own since `now` (taken first): a command
/// starts this before it connects to the warehouse, then hands it to [`snapshot_from`].
pub struct Started {
    now: DateTime<Utc>,
    kafka: KafkaPrefetch,
}

/// Starts reading Kafka's positions (see [`Started`]).
pub fn start(s: &Settings) -> Result<Started> {
    let k = s.require_kafka()?;
    let now = Utc::now();
    Ok(Started {
        now,
        kafka: KafkaPrefetch::start(k),
    })
}

/// Reads the configured topic along the chain: Kafka's committed offsets and watermarks (no
/// group is joined, nothing is committed), the catalog head, the manifests since copy's
/// cursor, the ledger's aggregates, and one manifest per partition. Kafka is read on a thread
/// of its own while the catalog is; the errors come in the order they did when Kafka was
/// read first (connecting, then the catalog, the ledger, then Kafka's offsets). `now` must
/// be taken before the call: a partition caught up is complete through `now`, so it must
/// not be later than the reading of its end offset.
pub fn snapshot(
    s: &Settings,
    store: &dyn ObjectStore,
    wh: &mut dyn Warehouse,
    lateness: Duration,
    now: DateTime<Utc>,
) -> Result<Snapshot> {
    let k = s.require_kafka()?;
    let started = Started {
        now,
        kafka: KafkaPrefetch::start(k),
    };
    let catalog = Catalog::new(store, &k.topic);
    snapshot_from(s, &mut ManifestCache::new(catalog), wh, lateness, started)
}

/// [`snapshot`] with Kafka's reading started already, its manifests read through `manifests`
/// (which keeps them for the caller).
pub fn snapshot_from(
    s: &Settings,
    manifests: &mut ManifestCache<'_>,
    wh: &mut dyn Warehouse,
    lateness: Duration,
    started: Started,
) -> Result<Snapshot> {
    let k = s.require_kafka()?;
    let Started { now, kafka } = started;
    let catalog = manifests.catalog();
    let head = catalog.head();
    let pending = head.as_ref().ok().map(|_| {
        pending(catalog, wh)
            .with_context(|| format!("reading the catalog of {}", catalog.store().describe()))
    });
    let positions = kafka.wait()?;
    let head = head?;
    let pending = pending.expect("read when the head was")?;
    let rules = TimeRules {
        key_template: s.archive.key_template.clone(),
        utc_offset_secs: s.archive.utc_offset_secs,
    };
    let read_before = manifests.read;
    let inputs = Inputs {
        head: head.as_ref(),
        pending: &pending,
        rules: &rules,
        lateness,
        now,
    };
    let partitions = progress(positions, wh, &k.topic, &inputs, manifests)?;
    Ok(Snapshot {
        topic: k.topic.clone(),
        group: k.group.clone(),
        epoch: head.as_ref().map_or(0, |h| h.epoch),
        head,
        pending,
        partitions,
        manifests_read_by_name: manifests.read - read_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn part(p: i32, end: i64, next: Option<i64>, through_at: Option<&str>) -> PartitionProgress {
        PartitionProgress {
            topic: None,
            partition: p,
            committed: next,
            start: 0,
            end,
            lag: 0,
            archived_next: next,
            newest_archived_at: None,
            loaded_through: next.map(|n| n - 1),
            loaded_through_at: through_at.map(t),
            unloaded_objects: 0,
            caught_up: false,
            complete_through: None,
        }
    }

    fn prefix(start: i64, through: i64, top: i64) -> Prefix {
        Prefix::new(start, through, top)
    }

    #[test]
    fn complete_through_is_now_when_caught_up_else_the_loaded_prefix_less_lateness() {
        let pending = Pending::default();
        let rules = TimeRules {
            key_template: "{topic}/{YYYY}/{MM}/{DD}/{HH}".into(),
            utc_offset_secs: 0,
        };
        let inp = Inputs {
            head: None,
            pending: &pending,
            rules: &rules,
            lateness: Duration::from_secs(60),
            now: t("2024-01-02T12:00:00Z"),
        };
        // Everything archived and loaded: complete through now, less the lateness.
        let mut a = part(0, 100, Some(100), Some("2024-01-02T11:00:00Z"));
        judge(&mut a, Some(&prefix(0, 99, 99)), &[], &inp);
        assert!(a.caught_up);
        assert_eq!(a.complete_through, Some(t("2024-01-02T11:59:00Z")));
        // Behind the end offset: through the newest loaded message, less the lateness.
        let mut b = part(1, 150, Some(100), Some("2024-01-02T11:00:00Z"));
        judge(&mut b, Some(&prefix(0, 99, 99)), &[], &inp);
        assert!(!b.caught_up);
        assert_eq!(b.complete_through, Some(t("2024-01-02T10:59:00Z")));
        // A hole in the loaded offsets: not caught up even when all is archived.
        let mut c = part(2, 100, Some(100), Some("2024-01-02T10:00:00Z"));
        judge(&mut c, Some(&prefix(0, 49, 99)), &[], &inp);
        assert!(!c.caught_up);
        // Nothing loaded, messages waiting: complete through nothing.
        let mut d = part(3, 10, None, None);
        judge(&mut d, None, &[], &inp);
        assert_eq!(d.complete_through, None);
        // An empty partition holds nothing back.
        let mut e = part(4, 0, None, None);
        judge(&mut e, None, &[], &inp);
        assert!(e.caught_up);

        assert_eq!(
            complete_through(&[a.clone(), b.clone()]),
            Some(t("2024-01-02T10:59:00Z"))
        );
        assert_eq!(complete_through(&[a.clone(), d.clone()]), None);
        let held = holding_back(&[a, b, d], t("2024-01-02T11:30:00Z"));
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(
            held[0].starts_with("partition 1 (loaded through offset 99"),
            "{held:?}"
        );
        assert!(
            held[1].starts_with("partition 3 (nothing loaded"),
            "{held:?}"
        );
    }
}
