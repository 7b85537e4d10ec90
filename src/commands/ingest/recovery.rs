//! Crash recovery for ingest: this run's in-flight marker, the markers runs that died before
//! their commit left, the objects those runs stored (listed, so their offsets are skipped), and
//! their adoption into this run's manifest.

use crate::archive::catalog::{Catalog, Marker};
use crate::archive::layout::{self, ObjectEntry, OffsetSpan};
use crate::archive::{ObjectMeta, ObjectStore};
use crate::output::Output;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// An archived object found in a listing.
#[derive(Debug, Clone)]
struct Listed {
    partition: i32,
    span: OffsetSpan,
    key: String,
    size: u64,
}

/// A crashed run's object this run recognised (it skipped its offsets) and lists in its own
/// manifest, so every stored object is in a manifest; with the tombstones seen in its range.
#[derive(Debug, Clone)]
struct Adopted {
    object: Listed,
    tombstones: Vec<i64>,
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
    /// Markers of runs that died, found by this run's listing.
    crashed_markers: Vec<String>,
    adopted: BTreeMap<String, Adopted>,
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
            folders.extend(marker.folders);
            self.crashed_markers.push(key);
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
                    v.push(Listed {
                        partition: n.partition,
                        span: OffsetSpan::new(n.first, n.last),
                        key: o.key,
                        size: o.size,
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

    /// The offsets of partition `p` that listed objects hold, in order ([`Recovery::list`]
    /// first).
    pub(super) fn archived(&self, p: i32) -> Vec<OffsetSpan> {
        let listing = self.listing.as_ref().expect("listed");
        let mut r: Vec<OffsetSpan> = listing
            .iter()
            .filter(|x| x.partition == p)
            .map(|x| x.span)
            .collect();
        r.sort_unstable();
        r
    }

    /// Notes the stored object that covers this offset: this run lists it in its manifest.
    pub(super) fn adopt(&mut self, p: i32, offset: i64, tombstone: bool) {
        let Some(o) = self.listing.as_ref().and_then(|l| {
            l.iter()
                .find(|x| x.partition == p && x.span.contains(offset))
        }) else {
            return;
        };
        let a = self
            .adopted
            .entry(o.key.clone())
            .or_insert_with(|| Adopted {
                object: o.clone(),
                tombstones: Vec::new(),
            });
        if tombstone {
            a.tombstones.push(offset);
        }
    }

    /// Reads each adopted object once (its checksum and record count); returns their entries,
    /// for this run's objects.
    pub(super) fn describe_adopted(&mut self, out: &Output) -> Result<Vec<ObjectEntry>> {
        let mut entries = Vec::new();
        for (key, a) in std::mem::take(&mut self.adopted) {
            let c = crate::archive::Compression::from_key(&key).unwrap_or_default();
            let mut file = crate::archive::download(self.store, &key, None)?;
            let sha256 = crate::util::sha256_of(&mut file)?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
            let mut reader = crate::records::FrameReader::new(crate::archive::decoder(file, c)?);
            let (mut records, mut bytes, mut rec) = (0u64, 0u64, Vec::new());
            while reader.next_into(&mut rec)? {
                records += 1;
                bytes += rec.len() as u64 + 1;
            }
            out.debug(&format!(
                "adopting {key} ({records} records) stored by a run that died before its manifest"
            ));
            entries.push(ObjectEntry {
                key,
                topic: self.catalog.topic().to_string(),
                partition: a.object.partition,
                first_offset: a.object.span.first,
                last_offset: a.object.span.last,
                records,
                bytes: a.object.size,
                uncompressed_bytes: bytes,
                sha256,
                compression: c,
                gaps: a.tombstones,
                holes: Vec::new(),
                max_timestamp_ms: None,
            });
        }
        Ok(entries)
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

    /// After the commit: this run's marker goes, and so do the dead runs' markers when this
    /// run held every partition (their objects are adopted or their offsets committed). A
    /// failure is a warning.
    pub(super) fn remove_markers(&self, held_all: bool, out: &Output) {
        let mut removed = vec![self.catalog.remove_marker(&self.marker.run_id)];
        if held_all {
            for k in &self.crashed_markers {
                removed.push(self.catalog.remove_marker_at(k));
            }
        }
        for e in removed.into_iter().filter_map(Result::err) {
            out.warn(&format!("{e:#}"));
        }
    }
}
