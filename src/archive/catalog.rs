//! The archive's catalog: every read and write of batchlayer's own state in the archive. Per
//! topic ([`Catalog`]): the head (epoch and next offsets, and the epoch bookkeeping of
//! re-created topics and of one ingest run, [`RunEpoch`]), the in-flight markers of runs, the run manifests (stored, listed since
//! copy's cursor, read by key or by name), and the legacy entries of topics archived before the
//! catalog existed; for the whole archive: its topics, every manifest, what a key is.
//!
//! `layout` names the keys and formats; this module is the one that builds and reads them.

use super::layout::{
    self, CatalogHead, ExpiredGap, Manifest, ObjectEntry, StoredSchema, CATALOG, MANIFESTS,
    REJECTED, SCHEMAS,
};
use super::{ObjectStore, PutOutcome, StoreError};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a run's in-flight marker says: the folders it stores objects in. Written before the
/// first object in each folder, removed after the commit; a marker left behind belongs to a
/// run that died, and its folders are where its objects are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub run_id: String,
    pub folders: BTreeSet<String>,
}

/// How far before the cursor copy still looks for manifests: a manifest is named when it is
/// written, and one may land a little after a later one (a slow PUT, retries).
const MANIFEST_GRACE_MINUTES: i64 = 15;

pub(crate) fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StoreError>(),
        Some(StoreError::NotFound(_))
    )
}

/// The catalog's one JSON getter: reads and parses a small JSON file; None when it does not
/// exist. A parse error names the file (`parsing {what}{key}`).
pub(crate) fn get_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
    what: &str,
) -> Result<Option<T>> {
    let mut body = Vec::new();
    match store.get_into(key, &mut body) {
        Ok(_) => serde_json::from_slice(&body)
            .map(Some)
            .with_context(|| format!("parsing {what}{key}")),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {key}")),
    }
}

/// A file that must exist (it was listed): missing is `StoreError::NotFound`.
fn require_json<T: DeserializeOwned>(store: &dyn ObjectStore, key: &str, what: &str) -> Result<T> {
    get_json(store, key, what)?.ok_or_else(|| StoreError::NotFound(key.to_string()).into())
}

/// One run manifest, by key (of any topic).
pub fn read_manifest(store: &dyn ObjectStore, key: &str) -> Result<Manifest> {
    require_json(store, key, "manifest ")
}

/// The topics of the archive: those with a catalog folder (an ingest run writes its marker
/// there before its first object, and the head after its commit, so every topic archived
/// since the catalog exists has one). An archive with no catalog at all was written before
/// it existed: its topics are the manifests' folders. Listing those in every run would cost
/// a walk of every manifest on servers that answer a folder listing by walking it (s3s-fs);
/// instead, the first ingest run of a topic gives every topic that has manifests but no
/// catalog folder one (a legacy entry, [`Catalog::catalog_legacy_topics`]), so those are
/// found here too.
pub fn topics(store: &dyn ObjectStore) -> Result<Vec<String>> {
    let mut topics = store.list_dirs(CATALOG)?;
    if topics.is_empty() {
        topics = store.list_dirs(MANIFESTS)?;
    }
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// The index of change ([`layout::TOPICS_INDEX`]): per topic, its keys there, sorted. One
/// folder listing for every topic of the archive.
#[derive(Debug, Clone, Default)]
pub struct ChangeIndex(BTreeMap<String, Vec<String>>);

impl ChangeIndex {
    pub fn read(store: &dyn ObjectStore) -> Result<ChangeIndex> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in store
            .list_folder(layout::TOPICS_INDEX)
            .context("listing the index of change (_topics/)")?
        {
            let rest = &o.key[layout::TOPICS_INDEX.len()..];
            if let Some((topic, _)) = rest.split_once('+') {
                m.entry(topic.to_string()).or_default().push(o.key.clone());
            }
        }
        for v in m.values_mut() {
            v.sort();
        }
        Ok(ChangeIndex(m))
    }

    /// Whether the topic's one key says its newest manifest's run committed exactly these
    /// positions (None: no key, or several: runs side by side).
    pub fn committed_as(&self, topic: &str, positions: &BTreeMap<i32, i64>) -> Option<bool> {
        match self.keys(topic) {
            [k] => Some(k.ends_with(&format!("+{}", layout::positions_tag(positions)))),
            _ => None,
        }
    }

    /// The topic's keys (empty when it has none: an archive older than the index).
    pub fn keys(&self, topic: &str) -> &[String] {
        self.0.get(topic).map(Vec::as_slice).unwrap_or_default()
    }

    /// Records in the index that a manifest of this topic was stored: its key, then the
    /// topic's keys this index listed go (another run's newer key, stored meanwhile, stays:
    /// copy then sees two keys, a change).
    pub fn mark(
        &self,
        store: &dyn ObjectStore,
        topic: &str,
        manifest_key: &str,
        next: &BTreeMap<i32, i64>,
    ) -> Result<()> {
        let name = layout::manifest_name(manifest_key).unwrap_or(manifest_key);
        let key = layout::topic_index_key(topic, name, next);
        store
            .put_bytes(&key, b"")
            .with_context(|| format!("storing {key} (the index of change)"))?;
        for old in self.keys(topic).iter().filter(|k| **k != key) {
            if let Err(e) = store.delete(old) {
                tracing::warn!("removing {old} from the index of change: {e:#}");
            }
        }
        Ok(())
    }
}

/// Every run manifest of every topic, newest first (by name: the time it was stored, or its
/// run's start for manifests of older versions).
pub fn manifests_newest_first(store: &dyn ObjectStore) -> Result<Vec<String>> {
    let mut manifests: Vec<String> = store
        .list(MANIFESTS)?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    let run_name = |k: &String| k.rsplit('/').next().unwrap_or_default().to_string();
    manifests.sort_by_cached_key(|k| std::cmp::Reverse(run_name(k)));
    Ok(manifests)
}

/// What a key of the archive is, and the topic of batchlayer's own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'k> {
    /// A run manifest of this topic.
    Manifest(&'k str),
    /// A rejected-messages file of this topic.
    Rejects(&'k str),
    /// An in-flight marker of a run of this topic.
    Marker(&'k str),
    /// The schema of this registry id (`_schemas/{id}.json`).
    Schema(u32),
    /// An archived data object.
    Data,
    /// Anything else (a head, a legacy entry, a COPY manifest, a foreign file).
    Other,
}

/// Sorts a key of a listing of the whole archive.
pub fn classify(key: &str) -> KeyKind<'_> {
    let seg = |prefix: &str| key.strip_prefix(prefix).and_then(|x| x.split('/').next());
    if let Some(t) = seg(MANIFESTS).filter(|_| key.ends_with(".json")) {
        KeyKind::Manifest(t)
    } else if let Some(t) = seg(REJECTED) {
        KeyKind::Rejects(t)
    } else if let Some(t) = seg(CATALOG).filter(|t| key.starts_with(&layout::markers_prefix(t))) {
        KeyKind::Marker(t)
    } else if let Some(id) = layout::parse_schema_key(key) {
        KeyKind::Schema(id)
    } else if layout::is_data_key(key) {
        KeyKind::Data
    } else {
        KeyKind::Other
    }
}

/// The registry ids whose schemas the archive holds: one listing of `_schemas/`.
pub fn schema_ids_stored(store: &dyn ObjectStore) -> Result<BTreeSet<u32>> {
    Ok(store
        .list_folder(SCHEMAS)
        .context("listing the archive's schemas")?
        .iter()
        .filter_map(|o| layout::parse_schema_key(&o.key))
        .collect())
}

/// The schema of a registry id as the archive keeps it; None when it holds none. A file that
/// names another id than its key is an error.
pub fn read_schema(store: &dyn ObjectStore, id: u32) -> Result<Option<StoredSchema>> {
    let key = layout::schema_key(id);
    let s: Option<StoredSchema> = get_json(store, &key, "schema ")?;
    if let Some(s) = &s {
        if s.id != id {
            anyhow::bail!("{key} holds the schema of id {}, not {id}", s.id);
        }
    }
    Ok(s)
}

/// Every schema the archive holds, by id (what copy decodes Avro records with): one listing
/// of `_schemas/` and a read of each.
pub fn read_schemas(store: &dyn ObjectStore) -> Result<Vec<StoredSchema>> {
    let mut out = Vec::new();
    for id in schema_ids_stored(store)? {
        out.push(
            read_schema(store, id)?.ok_or_else(|| StoreError::NotFound(layout::schema_key(id)))?,
        );
    }
    Ok(out)
}

/// Stores a schema unless the archive holds one for its id. One it holds already must be the
/// same schema (text and type; the registry it came from may be named differently): a
/// different one means the messages' ids come from another registry than the archive's, and
/// is an error that names both.
pub fn store_schema(store: &dyn ObjectStore, s: &StoredSchema) -> Result<PutOutcome> {
    let key = layout::schema_key(s.id);
    let body = serde_json::to_vec(s)?;
    let outcome = store
        .put_bytes_if_absent(&key, &body)
        .with_context(|| format!("storing {key}"))?;
    if outcome == PutOutcome::AlreadyExists {
        let old = read_schema(store, s.id)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        if old.schema != s.schema || old.schema_type != s.schema_type {
            anyhow::bail!(
                "the archive's {key} holds another schema for id {} (from {}) than the registry {} serves now: the messages' ids come from another registry than the archive's? archived: {}; registry: {}",
                s.id,
                old.registry,
                s.registry,
                clip(&old.schema),
                clip(&s.schema)
            );
        }
    }
    Ok(outcome)
}

/// The start of a long text, for a message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(120).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// Whether these inclusive spans hold every offset of first..=last.
fn covers(spans: &mut [(i64, i64)], first: i64, last: i64) -> bool {
    spans.sort_unstable();
    let mut next = first;
    for &(a, b) in spans.iter() {
        if a > next {
            break;
        }
        next = next.max(b + 1);
        if next > last {
            return true;
        }
    }
    next > last
}

/// A topic's `head.json` (if any) and its head fragments with their keys.
type HeadParts = (Option<CatalogHead>, Vec<(String, CatalogHead)>);

/// One topic's catalog in an archive.
#[derive(Clone)]
pub struct Catalog<'a> {
    store: &'a dyn ObjectStore,
    topic: String,
}

impl<'a> Catalog<'a> {
    /// The store it reads.
    pub fn store(&self) -> &'a dyn ObjectStore {
        self.store
    }

    pub fn new(store: &'a dyn ObjectStore, topic: &str) -> Self {
        Catalog {
            store,
            topic: topic.to_string(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's head, None when no ingest has written one: the merge of its fragments and
    /// of `head.json` (what older versions wrote). One listing of the fragments' folder and a
    /// read of each (as many as runs stored heads side by side since the last merge, usually
    /// one) and of `head.json`.
    pub fn head(&self) -> Result<Option<CatalogHead>> {
        let (legacy, fragments) = self.head_parts()?;
        if legacy.is_none() && fragments.is_empty() {
            return Ok(None);
        }
        let mut head = CatalogHead::default();
        for h in legacy.iter().chain(fragments.iter().map(|f| &f.1)) {
            head.merge(h);
        }
        Ok(Some(head))
    }

    /// `head.json` and every head fragment with its key. A fragment listed but gone when read
    /// was merged into a newer one by a writer, which stored that one first: the folder is
    /// listed again. (A session-11 CI run under load saw a head go back before `head.json`
    /// was read last.)
    fn head_parts(&self) -> Result<HeadParts> {
        let prefix = layout::catalog_heads_prefix(&self.topic);
        let mut relisted = 0;
        'list: loop {
            let mut fragments = Vec::new();
            for o in self.store.list_folder(&prefix)? {
                if !o.key.ends_with(".json") {
                    continue;
                }
                match get_json::<CatalogHead>(self.store, &o.key, "the head fragment ")? {
                    Some(h) => fragments.push((o.key, h)),
                    None if relisted < 20 => {
                        relisted += 1;
                        continue 'list;
                    }
                    None => anyhow::bail!(
                        "the head fragments under {prefix} kept changing while they were read (20 listings)"
                    ),
                }
            }
            // `head.json` is read after the fragments: a writer mirrors its merged fragment
            // there before it deletes the fragments it merged, so a listing that missed both
            // its new fragment and the deleted ones (a listing is not a snapshot) still finds
            // their positions in the mirror read after it.
            let legacy = get_json(self.store, &layout::catalog_head_key(&self.topic), "")?;
            return Ok((legacy, fragments));
        }
    }

    /// The head as the last writer mirrored it in `head.json` (one read; never ahead of
    /// [`Catalog::head`], behind it only while runs store heads side by side).
    pub fn mirrored_head(&self) -> Result<Option<CatalogHead>> {
        get_json(self.store, &layout::catalog_head_key(&self.topic), "")
    }

    /// The topic's head; an archive without one is at epoch 0 with no recorded positions.
    pub fn head_or_default(&self) -> Result<CatalogHead> {
        Ok(self.head()?.unwrap_or_default())
    }

    /// The topic's epoch (0 before any head).
    pub fn epoch(&self) -> Result<i32> {
        Ok(self.head_or_default()?.epoch)
    }

    /// Records a run's head: merges it with the head as stored now ([`CatalogHead::merge`]:
    /// positions never go back, another member's newer ones are kept), stores the result as
    /// this run's fragment (write-once), mirrors it to `head.json` for older versions, then
    /// removes the fragments it merged. A fragment is removed only by a writer that stored
    /// one holding it, so concurrent writers lose nothing: at any moment every position is
    /// in a stored fragment.
    pub fn store_head(&self, head: &CatalogHead) -> Result<()> {
        self.store_head_inner(head)
            .with_context(|| format!("storing the catalog head of topic {}", self.topic))
    }

    fn store_head_inner(&self, head: &CatalogHead) -> Result<()> {
        let (legacy, fragments) = self.head_parts()?;
        let mut merged = CatalogHead::default();
        for h in legacy.iter().chain(fragments.iter().map(|f| &f.1)) {
            merged.merge(h);
        }
        merged.merge(head);
        merged.run_id = head.run_id.clone();
        let body = serde_json::to_vec_pretty(&merged)?;
        let mut attempt = 0;
        loop {
            let key = layout::catalog_head_fragment_key(&self.topic, &head.run_id, attempt);
            match self.store.put_bytes_if_absent(&key, &body)? {
                super::PutOutcome::Created => break,
                super::PutOutcome::AlreadyExists if attempt < 100 => attempt += 1,
                super::PutOutcome::AlreadyExists => {
                    anyhow::bail!("every fragment name of run {} is taken", head.run_id)
                }
            }
        }
        let mirror = layout::catalog_head_key(&self.topic);
        self.store
            .put_bytes(&mirror, &body)
            .with_context(|| format!("storing {mirror}"))?;
        for (key, _) in &fragments {
            self.store
                .delete(key)
                .with_context(|| format!("removing the merged head fragment {key}"))?;
        }
        Ok(())
    }

    /// The keys of the in-flight markers: runs going on, or dead, whose objects no manifest
    /// lists yet.
    pub fn marker_keys(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .list_folder(&layout::markers_prefix(&self.topic))?
            .into_iter()
            .map(|m| m.key)
            .collect())
    }

    /// The marker stored under `key` (one of [`Catalog::marker_keys`]).
    pub fn read_marker(&self, key: &str) -> Result<Marker> {
        require_json(self.store, key, "the marker ")
    }

    /// The markers of every run but `run_id` (runs going on, or dead), with their keys.
    pub fn markers_of_other_runs(&self, run_id: &str) -> Result<Vec<(String, Marker)>> {
        let own = layout::marker_key(&self.topic, run_id);
        let mut out = Vec::new();
        for key in self.marker_keys()? {
            if key == own {
                continue;
            }
            let m = self.read_marker(&key)?;
            out.push((key, m));
        }
        Ok(out)
    }

    /// Stores (replaces) the marker of the run `m.run_id`.
    pub fn store_marker(&self, m: &Marker) -> Result<()> {
        let key = layout::marker_key(&self.topic, &m.run_id);
        self.store
            .put_bytes(&key, &serde_json::to_vec(m)?)
            .with_context(|| format!("storing the run marker {key}"))
    }

    /// Removes the marker of the run `run_id`.
    pub fn remove_marker(&self, run_id: &str) -> Result<()> {
        self.remove_marker_at(&layout::marker_key(&self.topic, run_id))
    }

    /// Removes the marker stored under `key` (one of [`Catalog::marker_keys`]).
    pub fn remove_marker_at(&self, key: &str) -> Result<()> {
        self.store
            .delete(key)
            .with_context(|| format!("removing the run marker {key}"))
    }

    /// The key of the manifest of run `run_id` written at `at` (in its day's folder).
    pub fn key_for_manifest(&self, run_id: &str, at: DateTime<Utc>) -> String {
        layout::manifest_key(&self.topic, run_id, at)
    }

    /// Stores a run's manifest under `key` (from [`Catalog::key_for_manifest`]); an existing
    /// one is never replaced.
    pub fn store_manifest(&self, key: &str, m: &Manifest) -> Result<()> {
        self.store
            .put_bytes_if_absent(key, &serde_json::to_vec_pretty(m)?)
            .with_context(|| format!("storing manifest {key}"))?;
        Ok(())
    }

    /// One run manifest, by key.
    pub fn read_manifest(&self, key: &str) -> Result<Manifest> {
        read_manifest(self.store, key)
    }

    /// The manifest of this name, from its day folder (or the topic's folder, older layout);
    /// None when there is none. Counts the keys it tried into `read`.
    fn manifest_named(&self, name: &str, read: &mut usize) -> Result<Option<Manifest>> {
        for key in layout::manifest_keys_for_name(&self.topic, name) {
            *read += 1;
            if let Some(m) = get_json(self.store, &key, "")? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// The manifests copy must look at, as (key, name) sorted by name: all of them the first
    /// time (no cursor), else those in the day folders from the cursor (less the grace) to
    /// now, newer than that.
    pub fn recent_manifests(&self, cursor: Option<&str>) -> Result<Vec<(String, String)>> {
        let base = format!("{MANIFESTS}{}/", self.topic);
        let floor = cursor
            .and_then(layout::manifest_time)
            .map(|t| t - chrono::Duration::minutes(MANIFEST_GRACE_MINUTES));
        let listed = match floor {
            None => self.store.list(&base)?,
            Some(floor) => {
                let mut v = Vec::new();
                let mut day = floor.date_naive();
                let last = Utc::now().date_naive() + chrono::Days::new(1);
                while day <= last {
                    v.extend(
                        self.store
                            .list_folder(&format!("{base}{}/", day.format("%Y%m%d")))?,
                    );
                    day = day + chrono::Days::new(1);
                }
                v
            }
        };
        let floor_name = floor.map(|t| t.format("%Y%m%dT%H%M%S%.3fZ").to_string());
        let mut out: Vec<(String, String)> = listed
            .into_iter()
            .filter_map(|o| {
                let name = layout::manifest_name(&o.key)?.to_string();
                Some((o.key, name))
            })
            .filter(|(_, n)| floor_name.as_deref().is_none_or(|f| n.as_str() > f))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// The topic's manifest keys, newest first, one day folder at a time (the folders of
    /// older layouts last): a walk that stops early lists only the days it reached.
    fn manifests_walk(&self) -> Result<impl Iterator<Item = Result<Vec<String>>> + '_> {
        let base = format!("{MANIFESTS}{}/", self.topic);
        let mut days = self.store.list_dirs(&base)?;
        days.sort_unstable_by(|a, b| b.cmp(a));
        let mut folders: Vec<String> = days.into_iter().map(|d| format!("{base}{d}/")).collect();
        folders.push(base);
        Ok(folders.into_iter().map(move |f| {
            let mut keys: Vec<String> = self
                .store
                .list_folder(&f)?
                .into_iter()
                .map(|o| o.key)
                .filter(|k| layout::manifest_name(k).is_some() && k.ends_with(".json"))
                .collect();
            keys.sort_by(|a, b| layout::manifest_name(b).cmp(&layout::manifest_name(a)));
            Ok(keys)
        }))
    }

    /// Of these partitions (partition -> (the head's next offset, the committed offset above
    /// it)), those whose committed offset is this archive's own, in epoch `epoch`: a manifest
    /// records it as what its run commits (each run's manifest does, since this version), or,
    /// for manifests of older versions, the objects and listed tombstones of the manifests hold
    /// every offset from the head's to the committed one. The head lags such commits when a
    /// member's head write is lost to another's, or a run dies between its commit and its head.
    /// Reads the manifests newest first, for each partition until it is settled: proven, or
    /// the walk has gone past the manifest holding the head's offset (by the manifests'
    /// grace): its cost follows the lag, not the archive's history.
    pub fn commits_recorded(
        &self,
        epoch: i32,
        wanted: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<BTreeSet<i32>> {
        let mut own = BTreeSet::new();
        // Per partition not settled yet: the spans found, and when the walk reached the
        // manifest holding the head's offset.
        type Open = (Vec<(i64, i64)>, Option<DateTime<Utc>>);
        let mut open: BTreeMap<i32, Open> =
            wanted.keys().map(|p| (*p, (Vec::new(), None))).collect();
        let grace = chrono::Duration::minutes(MANIFEST_GRACE_MINUTES);
        'walk: for keys in self.manifests_walk()? {
            for key in keys? {
                let at = layout::manifest_name(&key).and_then(layout::manifest_time);
                open.retain(|_, (_, reached)| match (reached, at) {
                    (Some(r), Some(t)) => t >= *r - grace,
                    _ => true,
                });
                if open.is_empty() {
                    break 'walk;
                }
                let m = self.read_manifest(&key)?;
                if m.epoch != epoch {
                    continue;
                }
                let tombstones = self.tombstones(&m, &open)?;
                let mut proven = Vec::new();
                for (p, (spans, reached)) in open.iter_mut() {
                    let (next, committed) = wanted[p];
                    if m.next.get(p) == Some(&committed) {
                        proven.push(*p);
                        continue;
                    }
                    for o in m.objects.iter().filter(|o| o.partition == *p) {
                        spans.push((o.first_offset, o.last_offset));
                        if o.first_offset <= next && reached.is_none() {
                            *reached = at;
                        }
                    }
                    spans.extend(tombstones.iter().filter(|t| t.0 == *p).map(|t| (t.1, t.1)));
                    if covers(spans, next, committed - 1) {
                        proven.push(*p);
                    }
                }
                for p in proven {
                    open.remove(&p);
                    own.insert(p);
                }
            }
        }
        Ok(own)
    }

    /// The tombstones a manifest's run listed, as (partition, offset), for these partitions.
    fn tombstones<T>(&self, m: &Manifest, of: &BTreeMap<i32, T>) -> Result<Vec<(i32, i64)>> {
        let Some(key) = m.rejected_key.as_deref().filter(|_| m.rejected > 0) else {
            return Ok(Vec::new());
        };
        let mut body = Vec::new();
        match self.store.get_into(key, &mut body) {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {key}")),
        }
        let mut out = Vec::new();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let r: layout::Rejected =
                serde_json::from_slice(line).with_context(|| format!("parsing {key}"))?;
            if of.contains_key(&r.partition) {
                out.push((r.partition, r.offset));
            }
        }
        Ok(out)
    }

    /// Per partition of `wanted` (partition -> (low, below)), the newest archived object of
    /// epoch `epoch` whose last offset lies in low..below-1 (a record Kafka may still hold,
    /// to tell whether the topic is the one archived). Reads at most `max_manifests`
    /// manifests, newest first.
    pub fn objects_ending_in(
        &self,
        epoch: i32,
        wanted: &BTreeMap<i32, (i64, i64)>,
        max_manifests: usize,
    ) -> Result<BTreeMap<i32, ObjectEntry>> {
        let mut found: BTreeMap<i32, ObjectEntry> = BTreeMap::new();
        let mut read = 0;
        'walk: for keys in self.manifests_walk()? {
            for key in keys? {
                if read == max_manifests || found.len() == wanted.len() {
                    break 'walk;
                }
                read += 1;
                let m = self.read_manifest(&key)?;
                if m.epoch != epoch {
                    continue;
                }
                for o in m.objects {
                    let Some(&(low, below)) = wanted.get(&o.partition) else {
                        continue;
                    };
                    // Compared at its last record (its range may end in holes).
                    let Some(last) = o.last_record_offset() else {
                        continue;
                    };
                    let fits = last >= low && last < below;
                    let newer = found
                        .get(&o.partition)
                        .is_none_or(|f| f.last_record_offset() < Some(last));
                    if fits && newer {
                        found.insert(o.partition, o);
                    }
                }
            }
        }
        Ok(found)
    }

    /// An archive written before the catalog existed names its topics only by their manifest
    /// folders, and copy finds topics through the catalog. A topic's first run (no head yet)
    /// therefore gives every other topic that has manifests but no catalog folder a legacy
    /// entry there, before its own marker makes the catalog non-empty. Returns the topics it
    /// catalogued.
    pub fn catalog_legacy_topics(&self) -> Result<Vec<String>> {
        let known: BTreeSet<String> = self.store.list_dirs(CATALOG)?.into_iter().collect();
        let mut added = Vec::new();
        for t in self.store.list_dirs(MANIFESTS)? {
            if t == self.topic || known.contains(&t) {
                continue;
            }
            let key = layout::catalog_legacy_key(&t);
            self.store
                .put_bytes(&key, br#"{"catalogued_from":"_manifests"}"#)
                .with_context(|| format!("cataloguing topic {t}, archived before the catalog"))?;
            added.push(t);
        }
        Ok(added)
    }
}

/// A topic's manifests read by name (the ledger names them), each read once.
pub struct ManifestCache<'a> {
    catalog: Catalog<'a>,
    by_name: HashMap<String, Option<Manifest>>,
    /// Keys tried so far.
    pub read: usize,
    /// About how many bytes the manifests kept take ([`manifest_size`]).
    held: usize,
    /// Manifests read by [`ManifestCache::listed`] are kept only while `held` stays under this.
    budget: usize,
    /// Objects whose record timestamps were taken ([`ManifestCache::take_times`]).
    taken: std::collections::HashSet<String>,
}

/// About the memory a parsed manifest takes: its record timestamps, and a few hundred bytes
/// an object.
fn manifest_size(m: &Manifest) -> usize {
    512 + m
        .objects
        .iter()
        .map(|o| 256 + o.key.len() + o.timestamps.as_ref().map_or(0, String::len))
        .sum::<usize>()
}

impl<'a> ManifestCache<'a> {
    pub fn new(catalog: Catalog<'a>) -> Self {
        Self::with_budget(catalog, usize::MAX)
    }

    /// A cache that keeps the manifests [`ManifestCache::listed`] reads only up to about
    /// `budget` bytes in all (those [`ManifestCache::get`] reads are kept until
    /// [`ManifestCache::trim`]).
    pub fn with_budget(catalog: Catalog<'a>, budget: usize) -> Self {
        ManifestCache {
            catalog,
            by_name: HashMap::new(),
            read: 0,
            held: 0,
            budget,
            taken: std::collections::HashSet::new(),
        }
    }

    /// The manifest listed at `key` (named `name`): the one kept if it is, else read (and
    /// kept while the budget allows).
    pub fn listed(&mut self, key: &str, name: &str) -> Result<std::borrow::Cow<'_, Manifest>> {
        if matches!(self.by_name.get(name), Some(Some(_))) {
            return Ok(std::borrow::Cow::Borrowed(
                self.by_name[name].as_ref().expect("matched"),
            ));
        }
        let m = self.catalog.read_manifest(key)?;
        self.read += 1;
        let size = manifest_size(&m);
        if self.held.saturating_add(size) > self.budget {
            return Ok(std::borrow::Cow::Owned(m));
        }
        self.held += size;
        let kept = self.by_name.entry(name.to_string()).or_default();
        *kept = Some(m);
        Ok(std::borrow::Cow::Borrowed(kept.as_ref().expect("kept")))
    }

    /// Reads the manifests [`Catalog::recent_manifests`] lists from `cursor`, in order, while
    /// the budget keeps them and `stop` is not set: a guess at what a run is about to read,
    /// made while it waits for something else, so a failed read is left to the read that
    /// needs it.
    pub fn warm(&mut self, cursor: Option<&str>, stop: &std::sync::atomic::AtomicBool) {
        let Ok(listed) = self.catalog.recent_manifests(cursor) else {
            return;
        };
        for (key, name) in listed {
            if stop.load(std::sync::atomic::Ordering::Relaxed)
                || !matches!(self.listed(&key, &name), Ok(std::borrow::Cow::Borrowed(_)))
            {
                break;
            }
        }
    }

    /// Drops kept manifests, the newest names first, until what is kept fits the budget
    /// again (those [`ManifestCache::get`] read are kept whatever their size until then).
    pub fn trim(&mut self) {
        if self.held <= self.budget {
            return;
        }
        let mut names: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, m)| m.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        while self.held > self.budget {
            let Some(name) = names.pop() else {
                break;
            };
            if let Some(Some(m)) = self.by_name.remove(&name) {
                self.held = self.held.saturating_sub(manifest_size(&m));
            }
        }
    }

    /// Takes the record timestamps of object `key` out of the kept manifest `name`: `Some`
    /// (holding None when the manifest has none) the first time, None when the manifest is
    /// not kept, does not list it, or its times were taken before.
    pub fn take_times(&mut self, name: &str, key: &str) -> Option<Option<String>> {
        let entry = self
            .by_name
            .get_mut(name)?
            .as_mut()?
            .objects
            .iter_mut()
            .find(|e| e.key == key)?;
        if !self.taken.insert(key.to_string()) {
            return None;
        }
        let times = entry.timestamps.take();
        self.held = self
            .held
            .saturating_sub(times.as_ref().map_or(0, String::len));
        Some(times)
    }

    /// Drops the record timestamps of every kept object `keep` does not name (those no file
    /// of the run will take).
    pub fn drop_times_except(&mut self, keep: &std::collections::HashSet<&str>) {
        for m in self.by_name.values_mut().flatten() {
            for e in m
                .objects
                .iter_mut()
                .filter(|e| !keep.contains(e.key.as_str()))
            {
                // Not to be taken as "the manifest has none": a file that wants them after
                // all reads them from the manifest.
                self.taken.insert(e.key.clone());
                if let Some(t) = e.timestamps.take() {
                    self.held = self.held.saturating_sub(t.len());
                }
            }
        }
    }

    /// The manifest of this name if it is kept (what the tests look at).
    #[cfg(test)]
    pub fn kept(&self, name: &str) -> Option<&Manifest> {
        self.by_name.get(name).and_then(Option::as_ref)
    }

    /// The catalog it reads.
    pub fn catalog(&self) -> &Catalog<'a> {
        &self.catalog
    }

    /// The manifest of this name, from its day folder (or the topic's folder, older layout).
    pub fn get(&mut self, name: &str) -> Result<Option<&Manifest>> {
        if !self.by_name.contains_key(name) {
            let found = self.catalog.manifest_named(name, &mut self.read)?;
            self.held = self
                .held
                .saturating_add(found.as_ref().map_or(0, manifest_size));
            self.by_name.insert(name.to_string(), found);
        }
        Ok(self.by_name.get(name).and_then(Option::as_ref))
    }
}

/// The topic's epochs: a topic deleted and re-created starts a new epoch (`--new-epoch`), whose
/// objects carry it in their names; offsets that expired unarchived are recorded as gaps.
impl CatalogHead {
    /// Merges another head (a fragment, or `head.json`) into this one. The newer epoch wins and
    /// an older epoch's positions are dropped; within one epoch each partition keeps its
    /// highest next offset (a position only moves forward within an epoch); accepted gaps are
    /// kept from both, once each. The run id is the one of the newest head (by epoch, then run
    /// id, which starts with the run's start time). Merging is commutative and idempotent, so
    /// readers and writers may merge fragments in any order.
    pub fn merge(&mut self, other: &CatalogHead) {
        if (other.epoch, &other.run_id) > (self.epoch, &self.run_id) {
            self.run_id = other.run_id.clone();
        }
        if other.epoch > self.epoch {
            self.epoch = other.epoch;
            self.next = other.next.clone();
        } else if other.epoch == self.epoch {
            for (&p, &o) in &other.next {
                let e = self.next.entry(p).or_insert(o);
                *e = (*e).max(o);
            }
        }
        for g in &other.expired {
            if !self.expired.contains(g) {
                self.expired.push(g.clone());
            }
        }
    }

    /// `--new-epoch`: the epoch after this head's. The old epoch's positions are dropped; the
    /// head moves to the new epoch when the run's head is stored ([`CatalogHead::after_run`]).
    pub fn start_next_epoch(&mut self) -> i32 {
        self.next.clear();
        self.epoch + 1
    }

    /// `--accept-expired`: each partition of a gap goes on from the offset after it.
    pub fn skip_expired(&mut self, gaps: &[ExpiredGap]) {
        for g in gaps {
            self.next.insert(g.partition, g.last + 1);
        }
    }

    /// The head after a run of `epoch` committed `commits`: the positions of another epoch
    /// are dropped, the run's commits and accepted gaps recorded.
    pub fn after_run(
        &self,
        epoch: i32,
        commits: &[(i32, i64)],
        expired: &[ExpiredGap],
        run_id: &str,
    ) -> CatalogHead {
        let mut head = self.clone();
        if head.epoch != epoch {
            head.next.clear();
        }
        head.epoch = epoch;
        for &(p, o) in commits {
            head.next.insert(p, o);
        }
        head.expired.extend(expired.iter().cloned());
        head.run_id = run_id.to_string();
        head
    }
}

/// One ingest run against the topic's head: the head as the run found it, the epoch the run
/// archives, and the expired offsets it accepted as gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunEpoch {
    /// The head as found (emptied by a new epoch, moved past accepted gaps).
    head: CatalogHead,
    /// The epoch the run's objects carry.
    pub epoch: i32,
    /// Expired offsets the run accepted as gaps (`--accept-expired`).
    pub expired: Vec<ExpiredGap>,
    /// The head as found lagged commits of this archive's runs: the run stores it even if
    /// it commits nothing.
    pub repaired: bool,
}

/// A partition whose committed offset disagrees with the archive's next offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetProblem {
    pub partition: i32,
    pub epoch: i32,
    /// The archive's next offset.
    pub next: i64,
    pub kind: ProblemKind,
}

/// How a committed offset disagrees with the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The group has no committed offset (a renamed group, expired group offsets, or a
    /// re-created topic).
    NoCommit,
    /// The committed offset is below the archive's next offset (a reset, or a re-created topic).
    Behind(i64),
    /// The committed offset is above it, and no run of this archive recorded it: the offsets
    /// between would be skipped (another consumer of the group, a reset to latest).
    Ahead(i64),
}

impl std::fmt::Display for OffsetProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, n, e) = (self.partition, self.next, self.epoch);
        match self.kind {
            ProblemKind::NoCommit => write!(
                f,
                "partition {p}: the group has no committed offset, but the archive holds offsets up to {} (epoch {e})",
                n - 1
            ),
            ProblemKind::Behind(c) => write!(
                f,
                "partition {p}: the committed offset {c} is behind the archive's next offset {n} (epoch {e})"
            ),
            ProblemKind::Ahead(c) => write!(
                f,
                "partition {p}: the committed offset {c} is ahead of the archive's next offset {n} (epoch {e}): offsets {n}..{} would be skipped",
                c - 1
            ),
        }
    }
}

impl RunEpoch {
    /// A run on the head found; under `--replay`, of the main archive's epoch `replay_epoch`.
    pub fn new(mut head: CatalogHead, replay_epoch: Option<i32>) -> Self {
        if let Some(e) = replay_epoch {
            head.epoch = e;
        }
        RunEpoch {
            epoch: head.epoch,
            head,
            expired: Vec::new(),
            repaired: false,
        }
    }

    /// `--new-epoch`: the run archives the epoch after the head's; returns it.
    pub fn start_next(&mut self) -> i32 {
        self.epoch = self.head.start_next_epoch();
        self.epoch
    }

    /// `--accept-expired` (and `--accept-skipped`): records the gaps; each partition of one
    /// goes on after it.
    pub fn accept_expired(&mut self, gaps: Vec<ExpiredGap>) {
        self.head.skip_expired(&gaps);
        self.expired.extend(gaps);
    }

    /// The offset the archive expects partition `p` to go on from: the head's next offset
    /// (None for a partition the head lacks: a topic's first run, a partition no run of the
    /// catalog's time has committed, an archive written before the catalog).
    pub fn expected_next(&self, p: i32) -> Option<i64> {
        self.head.next.get(&p).copied()
    }

    /// What is wrong with partition `p`'s committed offset against the archive's next offset:
    /// none, missing or lower (the group's offsets were lost or reset, or the topic
    /// re-created), or higher (the group moved past offsets the archive may not hold: see
    /// [`Catalog::commits_recorded`]). A partition the head lacks is not checked.
    pub fn committed_problem(&self, p: i32, committed: Option<i64>) -> Option<OffsetProblem> {
        let next = self.expected_next(p)?;
        let kind = match committed {
            None if next > 0 => ProblemKind::NoCommit,
            Some(c) if c < next => ProblemKind::Behind(c),
            Some(c) if c > next => ProblemKind::Ahead(c),
            _ => return None,
        };
        Some(OffsetProblem {
            partition: p,
            epoch: self.epoch,
            next,
            kind,
        })
    }

    /// The archive holds partition `p` up to `next` - 1 (a commit found recorded by this
    /// archive's own run): the head this run stores says so.
    pub fn archived_through(&mut self, p: i32, next: i64) {
        let e = self.head.next.entry(p).or_insert(next);
        if *e < next {
            *e = next;
            self.repaired = true;
        }
    }

    /// `--new-epoch`: the run archives the epoch after the head's, from these offsets (each
    /// partition's first). Returns the head to store before the group's offsets are reset,
    /// so a run killed after the reset goes on in the new epoch.
    pub fn start_next_at(&mut self, starts: &[(i32, i64)], run_id: &str) -> CatalogHead {
        self.start_next();
        self.head = self.head.after_run(self.epoch, starts, &[], run_id);
        self.head.clone()
    }

    /// The run id of the run that stored the head as found ("" for none).
    pub fn head_run_id(&self) -> &str {
        &self.head.run_id
    }

    /// The head to store after the run committed `commits` ([`CatalogHead::after_run`]).
    pub fn head_after(&self, commits: &[(i32, i64)], run_id: &str) -> CatalogHead {
        self.head
            .after_run(self.epoch, commits, &self.expired, run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::LocalStore;

    #[test]
    fn heads_markers_and_manifests_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let cat = Catalog::new(&store, "t");
        assert_eq!(cat.head().unwrap(), None);
        assert_eq!(cat.epoch().unwrap(), 0);
        let head = CatalogHead::default().after_run(2, &[(0, 10)], &[], "r1");
        cat.store_head(&head).unwrap();
        assert_eq!(cat.head().unwrap(), Some(head.clone()));
        assert_eq!(cat.epoch().unwrap(), 2);

        let mut m = Marker {
            run_id: "r2".into(),
            ..Default::default()
        };
        m.folders.insert("t/2024".into());
        cat.store_marker(&m).unwrap();
        cat.store_marker(&Marker {
            run_id: "r3".into(),
            ..Default::default()
        })
        .unwrap();
        let keys = cat.marker_keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(cat.read_marker(&keys[0]).unwrap(), m);
        let others = cat.markers_of_other_runs("r3").unwrap();
        assert_eq!(others, vec![(keys[0].clone(), m)]);
        assert_eq!(classify(&keys[0]), KeyKind::Marker("t"));
        cat.remove_marker("r2").unwrap();
        cat.remove_marker_at(&keys[1]).unwrap();
        assert!(cat.marker_keys().unwrap().is_empty());

        let at = DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let key = cat.key_for_manifest("r1", at);
        let man = Manifest {
            run_id: "r1".into(),
            topic: "t".into(),
            group: "g".into(),
            started_at: String::new(),
            finished_at: String::new(),
            objects: vec![],
            rejected_key: None,
            rejected: 0,
            epoch: 2,
            expired: vec![],
            next: Default::default(),
        };
        cat.store_manifest(&key, &man).unwrap();
        assert_eq!(classify(&key), KeyKind::Manifest("t"));
        assert_eq!(cat.read_manifest(&key).unwrap().epoch, 2);
        let recent = cat.recent_manifests(None).unwrap();
        assert_eq!(recent.len(), 1);
        let mut cache = ManifestCache::new(cat.clone());
        assert_eq!(cache.get(&recent[0].1).unwrap().unwrap().run_id, "r1");
        assert!(cache.get("20240102T000000.000Z-none").unwrap().is_none());
        assert_eq!(
            cache.read, 3,
            "one key for the first, two for the missing one"
        );
        assert_eq!(manifests_newest_first(&store).unwrap(), vec![key]);
        let err = cat.read_manifest("_manifests/t/missing.json").unwrap_err();
        assert!(is_not_found(&err), "{err:#}");
    }

    #[test]
    fn a_budgeted_cache_reads_each_manifest_once_and_keeps_what_fits() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let cat = Catalog::new(&store, "t");
        let t0 = Utc::now() - chrono::Duration::hours(1);
        // Three runs, each with one object whose record times take 10,000 bytes.
        for i in 0..3i64 {
            let at = t0 + chrono::Duration::minutes(i);
            let run = layout::run_id(at);
            let man = Manifest::sample(
                &run,
                vec![ObjectEntry {
                    timestamps: Some("x".repeat(10_000)),
                    ..ObjectEntry::sample(&format!("t/t+0+{i:020}+{i:020}.log"), 0, i, i)
                }],
            );
            cat.store_manifest(&cat.key_for_manifest(&run, at), &man)
                .unwrap();
        }
        let listed = cat.recent_manifests(None).unwrap();
        assert_eq!(listed.len(), 3);
        // Room for two: warming reads the first two and keeps them, then the third (read,
        // not kept) stops it.
        let go = std::sync::atomic::AtomicBool::new(false);
        let mut cache = ManifestCache::with_budget(cat.clone(), 25_000);
        cache.warm(None, &go);
        assert_eq!(cache.read, 3);
        assert!(cache.kept(&listed[0].1).is_some());
        assert!(cache.kept(&listed[1].1).is_some());
        assert!(cache.kept(&listed[2].1).is_none());
        // Kept ones are not read again, by key or by name; the other is, each time.
        for (key, name) in &listed[..2] {
            assert!(matches!(
                cache.listed(key, name).unwrap(),
                std::borrow::Cow::Borrowed(_)
            ));
            assert!(cache.get(name).unwrap().is_some());
        }
        assert_eq!(cache.read, 3);
        let (key, name) = &listed[2];
        let m = cache.listed(key, name).unwrap();
        assert!(matches!(m, std::borrow::Cow::Owned(_)));
        assert_eq!(m.objects[0].first_offset, 2);
        assert_eq!(
            m.objects[0].timestamps.as_deref().map(str::len),
            Some(10_000)
        );
        assert_eq!(cache.read, 4);
        // A copy of an entry without its times is the entry less them.
        let e = &cache.kept(&listed[0].1).unwrap().objects[0];
        let bare = e.without_times();
        assert_eq!(bare.timestamps, None);
        assert_eq!(
            ObjectEntry {
                timestamps: e.timestamps.clone(),
                ..bare
            },
            *e
        );
        // Read by name (the snapshot's), the third is kept over the budget until trimmed:
        // then the newest go first until the rest fits.
        assert!(cache.get(name).unwrap().is_some());
        assert!(cache.kept(name).is_some());
        cache.trim();
        assert!(cache.kept(&listed[0].1).is_some());
        assert!(cache.kept(&listed[1].1).is_some());
        assert!(cache.kept(name).is_none());
        // A file takes an object's times once; then the cache holds them no longer.
        let key0 = format!("t/t+0+{:020}+{:020}.log", 0, 0);
        let held = cache.held;
        assert_eq!(
            cache
                .take_times(&listed[0].1, &key0)
                .map(|t| t.map(|s| s.len())),
            Some(Some(10_000))
        );
        assert_eq!(cache.held, held - 10_000);
        assert_eq!(cache.take_times(&listed[0].1, &key0), None, "taken already");
        assert_eq!(cache.take_times(&listed[0].1, "t/other.log"), None);
        assert_eq!(cache.take_times(name, "t/whatever.log"), None, "not kept");
        // Times no file takes are dropped, the named ones kept.
        let key1 = format!("t/t+0+{:020}+{:020}.log", 1, 1);
        cache.drop_times_except(&std::collections::HashSet::new());
        assert_eq!(cache.held, held - 20_000);
        assert_eq!(
            cache.take_times(&listed[1].1, &key1),
            None,
            "dropped: to be read from the manifest, not taken as none"
        );
        // Warming stops when told to.
        let stopped = std::sync::atomic::AtomicBool::new(true);
        let mut none = ManifestCache::with_budget(cat.clone(), 25_000);
        none.warm(None, &stopped);
        assert_eq!(none.read, 0);
        // Unbudgeted (status, copy): all kept.
        let mut all = ManifestCache::new(cat.clone());
        all.warm(None, &go);
        assert!(listed.iter().all(|(_, n)| all.kept(n).is_some()));
    }

    #[test]
    fn legacy_topics_are_catalogued_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        store
            .put_bytes("_manifests/old/20240101T000000.000Z-1.json", b"{}")
            .unwrap();
        assert_eq!(topics(&store).unwrap(), vec!["old"]);
        let added = Catalog::new(&store, "new").catalog_legacy_topics().unwrap();
        assert_eq!(added, vec!["old"]);
        assert_eq!(topics(&store).unwrap(), vec!["old"]);
        assert!(Catalog::new(&store, "new")
            .catalog_legacy_topics()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn epochs_drop_the_old_positions() {
        let mut head = CatalogHead::default().after_run(0, &[(0, 5), (1, 7)], &[], "r1");
        assert_eq!(head.start_next_epoch(), 1);
        assert!(head.next.is_empty());
        let gap = ExpiredGap {
            epoch: 1,
            partition: 1,
            first: 0,
            last: 3,
        };
        head.skip_expired(std::slice::from_ref(&gap));
        assert_eq!(head.next.get(&1), Some(&4));
        let after = head.after_run(1, &[(0, 9)], std::slice::from_ref(&gap), "r2");
        assert_eq!(after.epoch, 1);
        assert_eq!(
            after.next.into_iter().collect::<Vec<_>>(),
            vec![(0, 9)],
            "a new epoch keeps only its own run's positions"
        );
        assert_eq!(after.expired, vec![gap]);
        assert_eq!(after.run_id, "r2");
        let same = CatalogHead::default()
            .after_run(0, &[(0, 5), (1, 7)], &[], "r1")
            .after_run(0, &[(0, 8)], &[], "r2");
        assert_eq!(same.next.get(&1), Some(&7), "the same epoch keeps them");
    }

    #[test]
    fn a_run_epoch_checks_committed_offsets_and_moves_the_head() {
        let found = CatalogHead::default().after_run(0, &[(0, 5), (1, 7)], &[], "r1");
        let run = RunEpoch::new(found.clone(), None);
        assert_eq!(run.epoch, 0);
        let problem =
            |r: &RunEpoch, p: i32, c: Option<i64>| r.committed_problem(p, c).map(|x| x.to_string());
        assert_eq!(problem(&run, 0, Some(5)), None);
        assert_eq!(
            problem(&run, 2, None),
            None,
            "a partition the head lacks, nothing committed"
        );
        assert_eq!(
            problem(&run, 2, Some(9)),
            None,
            "a partition the head lacks, committed by runs before the head existed"
        );
        assert_eq!(
            problem(&run, 1, Some(9)).unwrap(),
            "partition 1: the committed offset 9 is ahead of the archive's next offset 7 (epoch 0): offsets 7..8 would be skipped"
        );
        assert_eq!(
            problem(&run, 0, Some(4)).unwrap(),
            "partition 0: the committed offset 4 is behind the archive's next offset 5 (epoch 0)"
        );
        assert_eq!(
            problem(&run, 1, None).unwrap(),
            "partition 1: the group has no committed offset, but the archive holds offsets up to 6 (epoch 0)"
        );
        assert_eq!(
            run.committed_problem(1, Some(8)).unwrap().kind,
            ProblemKind::Ahead(8)
        );
        let first_run = RunEpoch::new(CatalogHead::default(), None);
        assert_eq!(
            problem(&first_run, 0, Some(9)),
            None,
            "no head: nothing to compare"
        );
        assert_eq!(RunEpoch::new(found.clone(), Some(3)).epoch, 3, "--replay");

        let mut ahead = RunEpoch::new(found.clone(), None);
        ahead.archived_through(1, 9);
        ahead.archived_through(1, 8);
        assert_eq!(problem(&ahead, 1, Some(9)), None, "recorded by a run");
        assert_eq!(ahead.head_after(&[], "r2").next.get(&1), Some(&9));

        let mut next_epoch = RunEpoch::new(found.clone(), None);
        let stored = next_epoch.start_next_at(&[(0, 0), (1, 3)], "r3");
        assert_eq!(next_epoch.epoch, 1);
        assert_eq!(
            stored,
            CatalogHead::default().after_run(1, &[(0, 0), (1, 3)], &[], "r3"),
            "the new epoch's head, before the reset"
        );
        assert_eq!(problem(&next_epoch, 0, Some(0)), None, "the reset offsets");
        assert!(
            problem(&next_epoch, 0, Some(5)).is_some(),
            "the old epoch's offsets are not the new one's"
        );

        let gap = ExpiredGap {
            epoch: 1,
            partition: 1,
            first: 0,
            last: 3,
        };
        next_epoch.accept_expired(vec![gap.clone()]);
        assert_eq!(next_epoch.expired, vec![gap.clone()]);
        assert!(problem(&next_epoch, 1, Some(3)).is_some(), "behind the gap");
        let head = next_epoch.head_after(&[(0, 9)], "r2");
        assert_eq!(
            head,
            CatalogHead::default().after_run(1, &[(0, 9), (1, 4)], &[gap], "r2")
        );
    }

    #[test]
    fn commits_ahead_of_the_head_are_found_in_the_manifests_that_record_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let cat = Catalog::new(&store, "t");
        let t0 = Utc::now() - chrono::Duration::hours(1);
        let obj = |p: i32, first: i64, last: i64| {
            ObjectEntry::sample(
                &format!("t/t+{p}+{first:020}+{last:020}.log"),
                p,
                first,
                last,
            )
        };
        let store_run = |i: i64,
                         epoch: i32,
                         objects: Vec<ObjectEntry>,
                         next: &[(i32, i64)],
                         tombstones: &[(i32, i64)]| {
            let at = t0 + chrono::Duration::minutes(i);
            let run = layout::run_id(at);
            let rejected_key = (!tombstones.is_empty()).then(|| layout::rejected_key("t", &run));
            if let Some(k) = &rejected_key {
                let mut body = Vec::new();
                for &(partition, offset) in tombstones {
                    let r = layout::Rejected {
                        partition,
                        offset,
                        reason: "null payload (tombstone)".into(),
                    };
                    serde_json::to_writer(&mut body, &r).unwrap();
                    body.push(b'\n');
                }
                store.put_bytes(k, &body).unwrap();
            }
            let m = Manifest {
                run_id: run.clone(),
                topic: "t".into(),
                group: "g".into(),
                started_at: String::new(),
                finished_at: String::new(),
                objects,
                rejected_key,
                rejected: tombstones.len() as u64,
                epoch,
                expired: vec![],
                next: next.iter().copied().collect(),
            };
            cat.store_manifest(&cat.key_for_manifest(&run, at), &m)
                .unwrap();
        };
        store_run(
            0,
            0,
            vec![obj(0, 0, 9), obj(1, 0, 4)],
            &[(0, 10), (1, 5)],
            &[],
        );
        store_run(5, 0, vec![obj(0, 10, 19)], &[(0, 21)], &[]);
        store_run(6, 1, vec![obj(1, 0, 2)], &[(1, 3)], &[]);
        // A manifest of an older version: no next offsets, a tombstone between two objects.
        store_run(
            7,
            0,
            vec![obj(2, 0, 9), obj(2, 12, 15)],
            &[],
            &[(2, 10), (2, 11)],
        );
        // Yesterday's day folder: a run of partition 3, far behind.
        store_run(-24 * 60, 0, vec![obj(3, 0, 9)], &[(3, 10)], &[]);
        let wanted =
            |w: &[(i32, (i64, i64))]| -> BTreeMap<i32, (i64, i64)> { w.iter().copied().collect() };
        assert_eq!(
            cat.commits_recorded(0, &wanted(&[(0, (10, 21)), (1, (5, 7))]))
                .unwrap(),
            [0].into_iter().collect(),
            "a run recorded 21; nothing holds partition 1's 5..6"
        );
        assert_eq!(
            cat.commits_recorded(1, &wanted(&[(1, (0, 3))])).unwrap(),
            [1].into_iter().collect(),
            "epoch 1's own"
        );
        assert_eq!(
            cat.commits_recorded(0, &wanted(&[(1, (0, 3))])).unwrap(),
            [1].into_iter().collect(),
            "epoch 0's objects hold 0..2"
        );
        assert_eq!(
            cat.commits_recorded(0, &wanted(&[(2, (0, 16)), (3, (10, 12))]))
                .unwrap(),
            [2].into_iter().collect(),
            "objects and listed tombstones hold 0..15; nothing holds 10..11 of partition 3"
        );
        assert!(cat
            .commits_recorded(0, &wanted(&[(2, (0, 18))]))
            .unwrap()
            .is_empty());
        assert_eq!(
            cat.commits_recorded(0, &wanted(&[(3, (5, 10))])).unwrap(),
            [3].into_iter().collect(),
            "found in an older day folder"
        );
        assert!(covers(&mut [(3, 5), (0, 2)], 0, 5));
        assert!(!covers(&mut [(0, 2), (4, 5)], 0, 5));
        assert!(covers(&mut [], 3, 2), "an empty range");

        let wanted: BTreeMap<i32, (i64, i64)> = [(0, (0, 21)), (1, (0, 5)), (2, (0, 9))]
            .into_iter()
            .collect();
        let found = cat.objects_ending_in(0, &wanted, 10).unwrap();
        assert_eq!(found[&0].last_offset, 19);
        assert_eq!(found[&1].last_offset, 4, "epoch 0's, not epoch 1's");
        assert!(!found.contains_key(&2));
        let wanted: BTreeMap<i32, (i64, i64)> = [(0, (12, 21))].into_iter().collect();
        assert_eq!(
            cat.objects_ending_in(0, &wanted, 10).unwrap()[&0].last_offset,
            19
        );
        let wanted: BTreeMap<i32, (i64, i64)> = [(0, (0, 19))].into_iter().collect();
        assert_eq!(
            cat.objects_ending_in(0, &wanted, 10).unwrap()[&0].last_offset,
            9,
            "below the offset asked for"
        );
    }

    /// Item 11 of issue 23: runs of several group members store heads side by side. Each
    /// thread is one member's runs on its own partition, reading the head at its start and
    /// storing it after its commit as ingest does; no stored position may ever go back.
    #[test]
    fn heads_stored_side_by_side_lose_no_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        // An archive of an older version: its head.json is where the merged head starts.
        let old =
            CatalogHead::default().after_run(0, &[(0, 1), (1, 1), (2, 1), (9, 42)], &[], "r0");
        store
            .put_bytes(
                &layout::catalog_head_key("t"),
                &serde_json::to_vec(&old).unwrap(),
            )
            .unwrap();
        let rounds = 100i64;
        std::thread::scope(|s| {
            for t in 0..3i32 {
                let store = &store;
                s.spawn(move || {
                    let cat = Catalog::new(store, "t");
                    for n in 2..=rounds {
                        let run = RunEpoch::new(cat.head_or_default().unwrap(), None);
                        let run_id = format!("r{t}-{n:03}");
                        cat.store_head(&run.head_after(&[(t, n)], &run_id)).unwrap();
                        let now = cat.head().unwrap().unwrap();
                        assert!(
                            now.next[&t] >= n,
                            "partition {t}: stored {n}, the head says {:?}",
                            now.next
                        );
                        assert_eq!(now.next.get(&9), Some(&42), "{:?}", now.next);
                    }
                });
            }
        });
        let cat = Catalog::new(&store, "t");
        let head = cat.head().unwrap().unwrap();
        assert_eq!(
            head.next.into_iter().collect::<Vec<_>>(),
            vec![(0, rounds), (1, rounds), (2, rounds), (9, 42)]
        );
        let left = store.list(&layout::catalog_heads_prefix("t")).unwrap();
        assert!(
            (1..=3).contains(&left.len()),
            "merged fragments are removed: {left:?}"
        );
        // head.json mirrors a merged head for older versions.
        let mut body = Vec::new();
        store
            .get_into(&layout::catalog_head_key("t"), &mut body)
            .unwrap();
        let mirror: CatalogHead = serde_json::from_slice(&body).unwrap();
        assert_eq!(mirror.next.get(&9), Some(&42));
    }

    #[test]
    fn merging_heads_keeps_the_newest_epoch_the_highest_positions_and_every_gap() {
        let gap = |epoch, partition| ExpiredGap {
            epoch,
            partition,
            first: 0,
            last: 3,
        };
        let a = CatalogHead::default().after_run(0, &[(0, 5), (1, 9)], &[gap(0, 1)], "r1");
        let b = CatalogHead::default().after_run(0, &[(0, 7), (2, 3)], &[gap(0, 1)], "r2");
        let mut m = a.clone();
        m.merge(&b);
        let mut m2 = b.clone();
        m2.merge(&a);
        assert_eq!(m, m2, "the order does not matter");
        assert_eq!(
            m.next.iter().map(|(p, o)| (*p, *o)).collect::<Vec<_>>(),
            vec![(0, 7), (1, 9), (2, 3)]
        );
        assert_eq!(m.expired, vec![gap(0, 1)], "a gap once");
        assert_eq!(m.run_id, "r2");
        let c = CatalogHead::default().after_run(1, &[(0, 2)], &[gap(1, 0)], "r0");
        m.merge(&c);
        assert_eq!(m.epoch, 1);
        assert_eq!(
            m.next.iter().map(|(p, o)| (*p, *o)).collect::<Vec<_>>(),
            vec![(0, 2)],
            "a newer epoch drops the old positions"
        );
        assert_eq!(m.expired, vec![gap(0, 1), gap(1, 0)]);
        assert_eq!(m.run_id, "r0", "the newest epoch's run");
        m.merge(&a);
        assert_eq!(m.epoch, 1, "an older epoch changes nothing");
        assert_eq!(m.next.get(&1), None);
    }

    #[test]
    fn schemas_are_stored_once_and_a_different_one_for_an_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::archive::local::LocalStore::new(dir.path().to_path_buf());
        assert!(schema_ids_stored(&store).unwrap().is_empty());
        assert_eq!(read_schema(&store, 7).unwrap(), None);
        let s = StoredSchema {
            id: 7,
            schema: "\"long\"".into(),
            registry: "http://a:8081".into(),
            schema_type: None,
        };
        assert_eq!(store_schema(&store, &s).unwrap(), PutOutcome::Created);
        let again = StoredSchema {
            registry: "https://b".into(),
            ..s.clone()
        };
        assert_eq!(
            store_schema(&store, &again).unwrap(),
            PutOutcome::AlreadyExists,
            "the same schema from another URL of the registry"
        );
        assert_eq!(read_schema(&store, 7).unwrap(), Some(s.clone()));
        let other = StoredSchema {
            schema: "\"int\"".into(),
            ..s.clone()
        };
        let err = format!("{:#}", store_schema(&store, &other).unwrap_err());
        assert!(
            err.contains("_schemas/7.json") && err.contains("\"long\"") && err.contains("\"int\""),
            "{err}"
        );
        assert_eq!(read_schema(&store, 7).unwrap(), Some(s), "kept as it was");
        let json = StoredSchema {
            id: 8,
            schema: "{}".into(),
            registry: "http://a:8081".into(),
            schema_type: Some("JSON".into()),
        };
        store_schema(&store, &json).unwrap();
        let mut raw = Vec::new();
        store.get_into("_schemas/8.json", &mut raw).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&raw).unwrap(),
            serde_json::json!({"id": 8, "schema": "{}", "registry": "http://a:8081", "schemaType": "JSON"})
        );
        store
            .put_bytes(
                "_schemas/9.json",
                br#"{"id": 10, "schema": "1", "registry": "r"}"#,
            )
            .unwrap();
        assert!(format!("{:#}", read_schema(&store, 9).unwrap_err()).contains("not 9"));
        assert_eq!(
            schema_ids_stored(&store).unwrap(),
            BTreeSet::from([7, 8, 9])
        );
        assert!(format!("{:#}", read_schemas(&store).unwrap_err()).contains("not 9"));
        store.delete("_schemas/9.json").unwrap();
        let all = read_schemas(&store).unwrap();
        assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), vec![7, 8]);
    }

    #[test]
    fn keys_are_classified() {
        assert_eq!(classify("_schemas/7.json"), KeyKind::Schema(7));
        assert_eq!(classify("_schemas/07.json"), KeyKind::Other);
        assert_eq!(classify("_schemas/x.json"), KeyKind::Other);
        assert_eq!(classify("_rejected/t/r.jsonl"), KeyKind::Rejects("t"));
        assert_eq!(classify("_catalog/t/head.json"), KeyKind::Other);
        assert_eq!(classify("_manifests/t/x.txt"), KeyKind::Other);
        assert_eq!(
            classify("t/t+0+00000000000000000001+00000000000000000002.log"),
            KeyKind::Data
        );
    }
}
