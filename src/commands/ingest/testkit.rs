//! Test doubles for ingest's recovery and membership tests: a scripted message source (its
//! log and the group's commits kept across runs), an object store wrapper that can refuse
//! manifests (a run that dies after storing its objects) or answer slowly, and readers of
//! what a run left in the archive.

use super::tests::local_archive;
use super::{run, IngestOptions, IngestSummary};
use crate::archive::layout::{self, Manifest, ObjectEntry};
use crate::archive::local::LocalStore;
use crate::archive::{ObjectMeta, ObjectStore, PutOutcome};
use crate::config::ArchiveSettings;
use crate::output::Output;
use crate::source::{Event, Message, MessageSource};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A topic's partitions (payload per offset; None is a tombstone) and the group's commits.
#[derive(Default)]
pub struct Log {
    pub parts: BTreeMap<i32, Vec<Option<Vec<u8>>>>,
    pub committed: HashMap<i32, i64>,
}

/// The Kafka timestamp of offset `o`: not in offset order, so the newest record of an object
/// is not always its last.
pub fn ts(o: i64) -> i64 {
    1_700_000_000_000 + ((o * 37) % 100) * 1000
}

impl Log {
    /// Appends `n` messages to partition `p` (payload `p{p}-{offset}`).
    pub fn produce(&mut self, p: i32, n: usize) {
        let v = self.parts.entry(p).or_default();
        for _ in 0..n {
            let o = v.len();
            v.push(Some(format!("p{p}-{o}").into_bytes()));
        }
    }
}

/// A message source over a shared [`Log`]: one member that is assigned every partition and
/// reads them in order, each from the group's committed offset to its end.
pub struct Scripted {
    pub log: Arc<Mutex<Log>>,
    queue: VecDeque<Event>,
}

impl Scripted {
    pub fn new(log: Arc<Mutex<Log>>) -> Self {
        Scripted {
            log,
            queue: VecDeque::new(),
        }
    }
}

impl MessageSource for Scripted {
    fn topic(&self) -> &str {
        "t"
    }
    fn start(&mut self) -> Result<()> {
        let log = self.log.lock().unwrap();
        self.queue
            .push_back(Event::Assigned(log.parts.keys().copied().collect()));
        for (&p, msgs) in &log.parts {
            let from = log.committed.get(&p).copied().unwrap_or(0);
            for (o, m) in msgs.iter().enumerate().skip(from as usize) {
                let offset = o as i64;
                self.queue.push_back(Event::Message(Message {
                    partition: p,
                    offset,
                    timestamp_ms: Some(ts(offset)),
                    payload: m.clone(),
                }));
            }
            self.queue.push_back(Event::Eof(p));
        }
        Ok(())
    }
    fn poll(&mut self, _t: Duration) -> Result<Event> {
        Ok(self.queue.pop_front().unwrap_or(Event::Idle))
    }
    fn committed(&self, ps: &[i32]) -> Result<HashMap<i32, Option<i64>>> {
        let log = self.log.lock().unwrap();
        Ok(ps
            .iter()
            .map(|p| (*p, log.committed.get(p).copied()))
            .collect())
    }
    fn commit(&self, offsets: &[(i32, i64)]) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .committed
            .extend(offsets.iter().copied());
        Ok(())
    }
    fn watermarks(&self, p: i32) -> Result<(i64, i64)> {
        let log = self.log.lock().unwrap();
        Ok((0, log.parts.get(&p).map_or(0, |v| v.len() as i64)))
    }
    fn partitions(&self) -> Result<Vec<i32>> {
        Ok(self.log.lock().unwrap().parts.keys().copied().collect())
    }
}

/// A local store that can refuse to store manifests (so a run dies as kill -9 would after
/// storing its objects: no manifest, no commit, its marker left) and can answer slowly for
/// data objects (stores and reads).
pub struct TestStore {
    pub inner: LocalStore,
    pub refuse_manifests: bool,
    pub slow_data: Duration,
}

impl TestStore {
    pub fn new(dir: &Path) -> Self {
        TestStore {
            inner: LocalStore::new(dir.to_path_buf()),
            refuse_manifests: false,
            slow_data: Duration::ZERO,
        }
    }
    fn slow(&self, key: &str) {
        if layout::is_data_key(key) {
            std::thread::sleep(self.slow_data);
        }
    }
}

impl ObjectStore for TestStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn check(&self) -> Result<()> {
        self.inner.check()
    }
    fn put_file_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        self.slow(key);
        self.inner.put_file_if_absent(key, path)
    }
    fn put_bytes_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        if self.refuse_manifests && key.starts_with(layout::MANIFESTS) {
            bail!("test store: refusing {key}");
        }
        self.inner.put_bytes_if_absent(key, data)
    }
    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.put_bytes(key, data)
    }
    fn get_into(&self, key: &str, w: &mut (dyn std::io::Write + Send)) -> Result<u64> {
        self.slow(key);
        self.inner.get_into(key, w)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_dirs(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }
}

/// Options for a run over a scripted source or a mock cluster.
pub fn options() -> IngestOptions {
    IngestOptions {
        // The mock coordinator's rebalances are slow when the 2 cores are shared with the
        // other tests: 30 s passed by in a clean-clone run (2026-12-06, a partition handed
        // back mid-run), as it had for membership's `ingest` helper, which waits 90 s.
        assignment_timeout: Duration::from_secs(90),
        stall_timeout: Duration::from_secs(30),
        group: "g".into(),
        ..Default::default()
    }
}

/// Archive settings of a local directory with objects of at most `records` records.
pub fn archive(dir: &Path, records: u64) -> ArchiveSettings {
    ArchiveSettings {
        max_object_records: records,
        ..local_archive(dir)
    }
}

/// One ingest run over the log.
pub fn ingest(
    log: &Arc<Mutex<Log>>,
    store: &dyn ObjectStore,
    settings: &ArchiveSettings,
    opts: &IngestOptions,
) -> Result<IngestSummary> {
    let mut src = Scripted::new(log.clone());
    run(&mut src, store, settings, opts, &Output::silent())
}

/// Every manifest in the archive.
pub fn manifests(store: &dyn ObjectStore) -> Vec<Manifest> {
    store
        .list(layout::MANIFESTS)
        .unwrap()
        .into_iter()
        .map(|m| crate::archive::catalog::read_manifest(store, &m.key).unwrap())
        .collect()
}

/// The data objects in the archive, per partition: (first, last, key), in offset order.
pub fn data_objects(store: &dyn ObjectStore) -> BTreeMap<i32, Vec<(i64, i64, String)>> {
    let mut m: BTreeMap<i32, Vec<(i64, i64, String)>> = BTreeMap::new();
    for o in store.list("").unwrap() {
        if !layout::is_data_key(&o.key) {
            continue;
        }
        let n = layout::parse_object_name(&o.key).unwrap();
        m.entry(n.partition)
            .or_default()
            .push((n.first, n.last, o.key));
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

/// Fails when two data objects of a partition share an offset, or when the objects do not
/// cover `0..ends[p]` without a hole.
pub fn assert_contiguous(store: &dyn ObjectStore, ends: &BTreeMap<i32, i64>) {
    let objs = data_objects(store);
    for (p, end) in ends {
        let mut next = 0;
        for (first, last, key) in objs.get(p).into_iter().flatten() {
            assert_eq!(
                *first, next,
                "partition {p}: {key} does not start where the objects before end ({next}): {:?}",
                objs[p]
            );
            next = last + 1;
        }
        assert_eq!(next, *end, "partition {p}: objects {:?}", objs.get(p));
    }
}

/// Every manifest entry, checked: each key once per manifest; the entries of all manifests.
pub fn manifest_entries(store: &dyn ObjectStore) -> Vec<ObjectEntry> {
    let mut all = Vec::new();
    for m in manifests(store) {
        let mut keys: Vec<&str> = m.objects.iter().map(|o| o.key.as_str()).collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key listed twice in manifest {}", m.run_id);
        all.extend(m.objects);
    }
    all
}
