//! Crash recovery for ingest: this run's in-flight marker, the markers runs that died before
//! their commit left, the objects those runs stored (listed, so their offsets are skipped), and
//! their adoption into this run's manifest.

use crate::archive::catalog::{Catalog, Marker};
use crate::archive::layout::{self, ObjectEntry, OffsetSpan};
use crate::archive::{ObjectMeta, ObjectStore};
use crate::output::Output;
use crate::source::Message;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// An archived object found in a listing.
#[derive(Debug, Clone)]
struct Listed {
    partition: i32,
    span: OffsetSpan,
    key: String,
    /// The folder it was listed in (a marker names its folders).
    folder: String,
}

/// A crashed run's object this run recognised (it skipped its offsets) and lists in its own
/// manifest, so every stored object is in a manifest; with the tombstones seen in its range
/// and the newest timestamp of its records, read from the messages skipped.
#[derive(Debug, Clone)]
pub(super) struct Adopted {
    object: Listed,
    tombstones: Vec<i64>,
    /// The newest Kafka timestamp among the skipped messages the object holds as records.
    max_ts: Option<i64>,
    /// Whether the run saw the messages at the object's first and last offsets (both are
    /// records): then it saw every message of the object, and `max_ts` is the object's.
    seen_first: bool,
    seen_last: bool,
}

/// Whose stored object covers an offset this run is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cover {
    /// One this run stored itself before the partition was taken from it and handed back.
    Own,
    /// One a run that died before its manifest stored: adopted into this run's manifest.
    Adopted,
}

/// What makes a crash at any point recoverable: this run's marker names the folders it stores
/// objects in; the markers of dead runs name where their objects are, and this run lists those
/// (all of the topic's archive under `--full-scan`), skips the offsets they cover and adopts
/// them into its manifest.
pub(super) struct Recovery<'a> {
    store: &'a dyn ObjectStore,
    catalog: Catalog<'a>,
    /// The archive's key template (`--full-scan` lists the topic's whole prefix).
    key_template: &'a str,
    full_scan: bool,
    /// The epoch this run archives: only objects of that epoch hold the same messages.
    epoch: i32,
    /// This run's marker: the folders it stores objects in.
    marker: Marker,
    /// The objects of this topic's epoch that dead runs may have left; None until listed.
    listing: Option<Vec<Listed>>,
    /// Markers of runs that died, found by this run's last listing, with their folders.
    crashed_markers: Vec<(String, BTreeSet<String>)>,
    adopted: BTreeMap<String, Adopted>,
    /// The objects this run stored (or queued), per partition, with their keys: a partition
    /// taken from this run and handed back restarts at the committed offset, and these are
    /// skipped then, not stored again.
    own: BTreeMap<i32, Vec<(OffsetSpan, String)>>,
    /// The keys of the adopted objects this run lists in its manifest.
    listed_adopted: BTreeSet<String>,
}

impl<'a> Recovery<'a> {
    pub(super) fn new(
        store: &'a dyn ObjectStore,
        catalog: Catalog<'a>,
        key_template: &'a str,
        full_scan: bool,
        epoch: i32,
        run_id: &str,
    ) -> Self {
        Recovery {
            store,
            catalog,
            key_template,
            full_scan,
            epoch,
            marker: Marker {
                run_id: run_id.to_string(),
                folders: BTreeSet::new(),
            },
            listing: None,
            crashed_markers: Vec::new(),
            adopted: BTreeMap::new(),
            own: BTreeMap::new(),
            listed_adopted: BTreeSet::new(),
        }
    }

    /// The objects a run that died may have left: under `--full-scan` the topic's whole
    /// archive; otherwise only the folders the markers of dead runs name (what a run costs
    /// then follows the crashes, not the archive's history).
    fn list_candidates(&mut self) -> Result<Vec<ObjectMeta>> {
        if self.full_scan {
            let prefix = layout::list_prefix(self.key_template, self.catalog.topic());
            return self.store.list(&prefix);
        }
        let mut folders = BTreeSet::new();
        self.crashed_markers.clear();
        for (key, marker) in self.catalog.markers_of_other_runs(&self.marker.run_id)? {
            folders.extend(marker.folders.iter().cloned());
            self.crashed_markers.push((key, marker.folders));
        }
        let mut out = Vec::new();
        for f in folders {
            out.extend(
                self.store
                    .list_folder(&format!("{}/", f.trim_end_matches('/')))?,
            );
        }
        Ok(out)
    }

    /// Lists the objects dead runs may have left, once per assignment.
    pub(super) fn list(&mut self) -> Result<()> {
        if self.listing.is_some() {
            return Ok(());
        }
        let listed = self.list_candidates().with_context(|| {
            format!(
                "listing the archive {} for reconciliation",
                self.store.describe()
            )
        })?;
        let mut v = Vec::new();
        for o in listed {
            // Only objects of this topic's current epoch hold the same messages.
            if let Some(n) = layout::parse_object_name(&o.key) {
                if n.topic == self.catalog.topic() && n.epoch == self.epoch {
                    let folder = o.key.rsplit_once('/').map_or("", |x| x.0).to_string();
                    v.push(Listed {
                        partition: n.partition,
                        span: OffsetSpan::new(n.first, n.last),
                        key: o.key,
                        folder,
                    });
                }
            }
        }
        self.listing = Some(v);
        Ok(())
    }

    /// A new assignment lists the archive again (another member may have died meanwhile).
    pub(super) fn forget_listing(&mut self) {
        self.listing = None;
    }

    /// Whether this run stored (or queued) the object under `key`.
    fn is_own(&self, key: &str) -> bool {
        self.own.values().flatten().any(|(_, k)| k == key)
    }

    /// The offsets of partition `p` that stored objects hold, in order: those other runs left
    /// (listed: [`Recovery::list`] first) and those this run stored itself.
    pub(super) fn archived(&self, p: i32) -> Vec<OffsetSpan> {
        let listing = self.listing.as_ref().expect("listed");
        let mut r: Vec<OffsetSpan> = listing
            .iter()
            .filter(|x| x.partition == p)
            .map(|x| x.span)
            .chain(self.own.get(&p).into_iter().flatten().map(|(s, _)| *s))
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// Notes an object this run stores (queued for upload) for partition `p`.
    pub(super) fn stored_own(&mut self, p: i32, span: OffsetSpan, key: &str) {
        self.own.entry(p).or_default().push((span, key.to_string()));
    }

    /// The stored object that covers this skipped message: one of this run's own (nothing to
    /// do), or another run's, which this run adopts (lists in its manifest), noting the
    /// message's timestamp or its tombstone. None when no object covers it.
    pub(super) fn adopt(&mut self, m: &Message) -> Option<Cover> {
        self.adopt_at(m.partition, m.offset, Some(m))
    }

    /// [`Recovery::adopt`] for an offset that holds no record this run received (a hole a
    /// dead run's object accounts for): the object covering it, adopted without a message.
    pub(super) fn adopt_offset(&mut self, p: i32, offset: i64) -> Option<Cover> {
        self.adopt_at(p, offset, None)
    }

    fn adopt_at(&mut self, p: i32, offset: i64, m: Option<&Message>) -> Option<Cover> {
        if self
            .own
            .get(&p)
            .is_some_and(|v| v.iter().any(|(s, _)| s.contains(offset)))
        {
            return Some(Cover::Own);
        }
        let o = self.listing.as_ref().and_then(|l| {
            l.iter()
                .find(|x| x.partition == p && x.span.contains(offset))
        })?;
        let a = self
            .adopted
            .entry(o.key.clone())
            .or_insert_with(|| Adopted {
                object: o.clone(),
                tombstones: Vec::new(),
                max_ts: None,
                seen_first: false,
                seen_last: false,
            });
        match m {
            Some(m) if m.payload.is_none() => a.tombstones.push(offset),
            Some(m) => a.max_ts = a.max_ts.max(m.timestamp_ms),
            None => {}
        }
        a.seen_first |= offset == a.object.span.first;
        a.seen_last |= offset == a.object.span.last;
        Some(Cover::Adopted)
    }

    /// Partitions taken from this run: the objects it was adopting there are left to the next
    /// owner (this run does not commit those partitions; if one comes back, its objects are
    /// adopted again as they are read).
    pub(super) fn revoked(&mut self, ps: &[i32]) {
        self.adopted
            .retain(|_, a| !ps.contains(&a.object.partition));
    }

    /// Takes the adopted objects of the partitions `keep` accepts (the ones this run
    /// commits), to describe with [`describe`] for its manifest. Each object once, and never
    /// one this run stored itself (a folder shared with a dead run's marker lists those too).
    pub(super) fn take_adopted(&mut self, keep: impl Fn(i32) -> bool) -> Vec<Adopted> {
        let adopted = std::mem::take(&mut self.adopted);
        let mut v = Vec::new();
        for (key, a) in adopted {
            if keep(a.object.partition) && !self.is_own(&key) {
                self.listed_adopted.insert(key);
                v.push(a);
            }
        }
        v
    }

    /// Records a folder this run stores objects in, in its marker, before the first object
    /// there is stored.
    pub(super) fn mark_folder(&mut self, folder: &str) -> Result<()> {
        if self.marker.folders.contains(folder) {
            return Ok(());
        }
        self.marker.folders.insert(folder.to_string());
        self.catalog.store_marker(&self.marker)
    }

    /// Stores this run's marker again (after a new assignment), if it names any folder: a run
    /// that held every partition may have removed it as a dead run's while this member held
    /// none, once every object it names was accounted for; the objects this run stores from
    /// now on need it again.
    pub(super) fn renew_marker(&self) -> Result<()> {
        if self.marker.folders.is_empty() {
            return Ok(());
        }
        self.catalog.store_marker(&self.marker)
    }

    /// After the commit: this run's marker goes (unless `keep_own`: objects it stored for
    /// partitions it did not commit are left to the next owner, which finds them by it).
    /// A dead run's marker goes only when this run held every partition (so no live member
    /// stores objects it names) and every object of this topic and epoch in its folders is
    /// accounted for: this run's own, adopted into this run's manifest, or below the group's
    /// committed offset `committed` gives for its partition (after this run's commit). A
    /// marker whose objects a `--max-*` limit kept this run from reading stays, for the next
    /// run. A failure is a warning. Returns the keys of the markers it kept.
    pub(super) fn remove_markers(
        &self,
        held_all: bool,
        committed: &HashMap<i32, i64>,
        keep_own: bool,
        out: &Output,
    ) -> Vec<String> {
        let mut removed = Vec::new();
        if !keep_own {
            removed.push(self.catalog.remove_marker(&self.marker.run_id));
        }
        let mut kept = Vec::new();
        let listing = self.listing.as_deref().unwrap_or_default();
        for (key, folders) in &self.crashed_markers {
            let open: Vec<&Listed> = listing
                .iter()
                .filter(|o| folders.iter().any(|f| f.trim_end_matches('/') == o.folder))
                .filter(|o| {
                    !(self.is_own(&o.key)
                        || self.listed_adopted.contains(&o.key)
                        || committed
                            .get(&o.partition)
                            .is_some_and(|&c| o.span.last < c))
                })
                .collect();
            if held_all && open.is_empty() {
                removed.push(self.catalog.remove_marker_at(key));
            } else {
                if let Some(o) = open.first() {
                    out.debug(&format!(
                        "keeping the marker {key}: {} of its objects are in no manifest this run wrote (first: {})",
                        open.len(),
                        o.key
                    ));
                }
                kept.push(key.clone());
            }
        }
        for e in removed.into_iter().filter_map(Result::err) {
            out.warn(&format!("{e:#}"));
        }
        kept
    }
}

/// Reads an adopted object once (its checksum, size and record count, and for an Avro topic
/// the schema ids of its records) and returns its entry for this run's manifest. The newest
/// timestamp is the one of the messages the run skipped, when it saw them all (from the
/// object's first offset to its last), else unknown.
pub(super) fn describe(
    store: &dyn ObjectStore,
    topic: &str,
    a: Adopted,
    avro_ids: bool,
) -> Result<ObjectEntry> {
    let key = a.object.key;
    let c = crate::archive::Compression::from_key(&key).unwrap_or_default();
    let mut file = crate::archive::download(store, &key, None)?;
    let (sha256, size) = crate::util::sha256_of(&mut file).and_then(|sha| {
        Ok((
            sha,
            std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))?,
        ))
    })?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    let mut ids = avro_ids.then(BTreeSet::new);
    let (records, bytes) = count_records(file, c, ids.as_mut())?;
    Ok(ObjectEntry {
        key,
        topic: topic.to_string(),
        partition: a.object.partition,
        first_offset: a.object.span.first,
        last_offset: a.object.span.last,
        records,
        bytes: size,
        uncompressed_bytes: bytes,
        sha256,
        compression: c,
        gaps: a.tombstones,
        holes: Vec::new(),
        max_timestamp_ms: a.max_ts.filter(|_| a.seen_first && a.seen_last),
        timestamps: None,
        schema_ids: ids.unwrap_or_default().into_iter().collect(),
    })
}

/// An object's records and their framed (uncompressed) size; with `ids`, the schema ids of its
/// Confluent-framed records are gathered there.
pub(super) fn count_records(
    file: std::fs::File,
    c: crate::archive::Compression,
    mut ids: Option<&mut BTreeSet<u32>>,
) -> Result<(u64, u64)> {
    let mut reader = crate::records::FrameReader::new(crate::archive::decoder(file, c)?);
    let (mut records, mut bytes, mut rec) = (0u64, 0u64, Vec::new());
    while reader.next_into(&mut rec)? {
        records += 1;
        bytes += rec.len() as u64 + 1;
        if let Some(ids) = ids.as_deref_mut() {
            ids.extend(crate::registry::framed_schema_id(&rec));
        }
    }
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::archive::layout::{self, ObjectEntry};
    use crate::archive::ObjectStore;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// A run that dies after storing its objects for what the log holds now: no manifest, no
    /// commit, its marker left behind.
    fn crashed_run(log: &Arc<Mutex<Log>>, dir: &std::path::Path, records: u64) {
        let mut store = TestStore::new(dir);
        store.refuse_manifests = true;
        let err = ingest(log, &store, &archive(dir, records), &options()).unwrap_err();
        assert!(format!("{err:#}").contains("refusing"), "{err:#}");
        assert!(log.lock().unwrap().committed.is_empty());
        assert_eq!(markers(&store.inner), 1, "the dead run's marker");
    }

    fn markers(store: &dyn ObjectStore) -> usize {
        store.list(&layout::markers_prefix("t")).unwrap().len()
    }

    /// The newest timestamp among the records an entry describes.
    fn newest(e: &ObjectEntry) -> Option<i64> {
        (e.first_offset..=e.last_offset)
            .filter(|o| !e.gaps.contains(o))
            .map(ts)
            .max()
    }

    /// Item 9 of issue 23: a run stopped by --max-messages before it read a dead run's
    /// objects must leave that run's marker, so the next run still finds and adopts them
    /// (while more data arrives); every object ends up in a manifest, none overlaps another.
    #[test]
    fn a_dead_runs_marker_stays_until_a_run_adopts_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        log.lock().unwrap().produce(0, 0);
        log.lock().unwrap().produce(1, 60);
        crashed_run(&log, dir.path(), 25);
        let store = TestStore::new(dir.path());
        let settings = archive(dir.path(), 25);
        // Partition 0 gets messages; a run limited to 10 reads only those.
        log.lock().unwrap().produce(0, 100);
        let opts = super::super::IngestOptions {
            max_messages: Some(10),
            ..options()
        };
        let limited = ingest(&log, &store, &settings, &opts).unwrap();
        assert_eq!(limited.messages, 10);
        assert!(limited.adopted.is_empty(), "{:?}", limited.adopted);
        assert_eq!(
            markers(&store),
            1,
            "the dead run's objects are in no manifest yet: its marker stays"
        );
        // More data arrives in partition 1; the next run adopts the dead run's objects.
        log.lock().unwrap().produce(1, 20);
        let next = ingest(&log, &store, &settings, &options()).unwrap();
        assert_eq!(next.adopted.len(), 3, "{:?}", next.adopted);
        assert_eq!(next.messages, 90 + 20);
        assert_eq!(
            markers(&store),
            0,
            "every marker went once its objects were adopted"
        );
        let ends: BTreeMap<i32, i64> = [(0, 100), (1, 80)].into_iter().collect();
        assert_contiguous(&store, &ends);
        let listed: std::collections::BTreeSet<String> = manifest_entries(&store)
            .into_iter()
            .map(|e| e.key)
            .collect();
        for objs in data_objects(&store).values() {
            for (_, _, key) in objs {
                assert!(listed.contains(key), "{key} is in no manifest");
            }
        }
        assert_eq!(log.lock().unwrap().committed, ends.into_iter().collect());
    }

    /// A source that answers each poll slowly, so a `--max-duration` run stops a few messages
    /// into what it reads.
    struct Slow(Scripted);

    impl crate::source::MessageSource for Slow {
        fn topic(&self) -> &str {
            self.0.topic()
        }
        fn start(&mut self) -> anyhow::Result<()> {
            self.0.start()
        }
        fn poll(&mut self, t: std::time::Duration) -> anyhow::Result<crate::source::Event> {
            std::thread::sleep(std::time::Duration::from_millis(40));
            self.0.poll(t)
        }
        fn committed(
            &self,
            ps: &[i32],
        ) -> anyhow::Result<std::collections::HashMap<i32, Option<i64>>> {
            self.0.committed(ps)
        }
        fn commit(&self, offsets: &[(i32, i64)]) -> anyhow::Result<()> {
            self.0.commit(offsets)
        }
        fn watermarks(&self, p: i32) -> anyhow::Result<(i64, i64)> {
            self.0.watermarks(p)
        }
        fn partitions(&self) -> anyhow::Result<Vec<i32>> {
            self.0.partitions()
        }
    }

    /// A run that a limit stops while it skips an object a dead run stored commits past the
    /// whole object (it lists it), so the next run never stores the rest of its offsets again
    /// (an overlap Redshift cannot load in part).
    #[test]
    fn a_run_stopped_inside_an_object_it_skips_commits_past_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        log.lock().unwrap().produce(0, 60);
        crashed_run(&log, dir.path(), 25);
        let store = TestStore::new(dir.path());
        let settings = archive(dir.path(), 25);
        let opts = super::super::IngestOptions {
            max_duration: Some(std::time::Duration::from_millis(300)),
            ..options()
        };
        let mut src = Slow(Scripted::new(log.clone()));
        let sum = super::super::run(
            &mut src,
            &store,
            &settings,
            &opts,
            &crate::output::Output::silent(),
        )
        .unwrap();
        assert!(
            sum.skipped > 0 && sum.skipped < 25,
            "stopped inside the first object: {sum:?}"
        );
        assert_eq!(
            log.lock().unwrap().committed.get(&0),
            Some(&25),
            "the commit passes the whole skipped object"
        );
        let rest = ingest(&log, &store, &settings, &options()).unwrap();
        // The dead run stored every offset: the next run adopts the other two objects.
        assert_eq!((rest.messages, rest.skipped), (0, 35), "{rest:?}");
        let ends: BTreeMap<i32, i64> = [(0, 60)].into_iter().collect();
        assert_contiguous(&store, &ends);
    }

    /// Item 12 of issue 23: an adopted object is listed once, with the newest Kafka timestamp
    /// of its records (read from the messages the adopting run skipped), as the run that
    /// stored it would have listed it.
    #[test]
    fn adopted_objects_are_listed_once_with_their_newest_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        log.lock().unwrap().produce(0, 70);
        log.lock().unwrap().produce(1, 30);
        // A tombstone inside an object the dead run stores.
        log.lock().unwrap().parts.get_mut(&0).unwrap()[12] = None;
        crashed_run(&log, dir.path(), 25);
        let store = TestStore::new(dir.path());
        log.lock().unwrap().produce(0, 5);
        let sum = ingest(&log, &store, &archive(dir.path(), 25), &options()).unwrap();
        assert_eq!(sum.messages, 5);
        assert_eq!(sum.adopted.len(), 5, "{:?}", sum.adopted);
        let entries = manifest_entries(&store);
        assert_eq!(entries.len(), 6, "five adopted objects and one new one");
        for e in &entries {
            assert!(
                e.max_timestamp_ms.is_some(),
                "{} has no newest timestamp",
                e.key
            );
            assert_eq!(e.max_timestamp_ms, newest(e), "{}", e.key);
        }
        let with_gap = entries
            .iter()
            .find(|e| e.first_offset == 0 && e.partition == 0);
        assert_eq!(with_gap.unwrap().gaps, vec![12]);
    }

    /// An object already stored under the key a run stores (the listing did not show it: no
    /// marker names its folder) with other bytes: the manifest describes the stored object
    /// (its sha256 and size) when it holds the same records; with other records the run
    /// fails and commits nothing.
    #[test]
    fn an_existing_object_is_described_as_stored_or_refused_when_its_records_differ() {
        use std::io::Write;
        for same_records in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let log = Arc::new(Mutex::new(Log::default()));
            log.lock().unwrap().produce(0, 10);
            let mut settings = archive(dir.path(), 0);
            settings.compression = crate::archive::Compression::Gzip;
            let store = TestStore::new(dir.path());
            // The key this run's object gets, stored beforehand with the best compression
            // (other bytes than ingest's fast level), and, the second time, one record changed.
            let key = layout::object_key(
                &layout::folder("{topic}", "t", Some(ts(0)), 0),
                &layout::object_file_name("t", 0, 0, 9, crate::archive::Compression::Gzip),
            );
            let mut framed = Vec::new();
            for o in 0..10 {
                let payload = if same_records || o != 4 {
                    format!("p0-{o}")
                } else {
                    "something else".to_string()
                };
                crate::records::frame_into(payload.as_bytes(), &mut framed);
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&framed).unwrap();
            let bytes = gz.finish().unwrap();
            store.inner.put_bytes_if_absent(&key, &bytes).unwrap();
            let r = ingest(&log, &store, &settings, &options());
            if same_records {
                let sum = r.unwrap();
                let e = &sum.object_list[0];
                assert_eq!(e.key, key);
                assert_eq!(
                    e.sha256,
                    crate::util::sha256_hex(&bytes),
                    "the stored object's"
                );
                assert_eq!(e.bytes, bytes.len() as u64);
                assert_eq!(e.records, 10);
                assert_eq!(manifest_entries(&store)[0], *e);
            } else {
                let msg = format!("{:#}", r.unwrap_err());
                assert!(
                    msg.contains("holds other records") && msg.contains("record 5"),
                    "{msg}"
                );
                assert!(log.lock().unwrap().committed.is_empty());
                assert!(manifests(&store).is_empty());
            }
        }
    }
}
