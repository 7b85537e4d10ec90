//! The group's committed offsets against the catalog head: before a run reads anything, each
//! partition's committed offset must be the archive's next offset. When it is not, this
//! module tells the cases apart and names each one's remedy:
//! * a commit ahead of the head that a run of this archive recorded in its manifest (the head
//!   lags a member's commit) is the archive's own: the run goes on, and its head says so;
//! * any other commit ahead would skip offsets: refused;
//! * no commit, or a commit behind the head: the group's offsets were lost or reset, or the
//!   topic was deleted and re-created. The record at an archived offset still in Kafka tells
//!   which: the same bytes are the same topic (`--resume-from-archive` commits the head's
//!   offsets), other bytes, or a partition that now ends before it, a new one (`--new-epoch`).

use crate::archive::catalog::{Catalog, OffsetProblem, ProblemKind, RunEpoch};
use crate::archive::layout::{ExpiredGap, ObjectEntry};
use crate::archive::ObjectStore;
use crate::output::Output;
use crate::source::MessageSource;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// How many manifests, newest first, are read to find an archived record to compare.
const IDENTITY_MANIFESTS: usize = 200;

/// Whether the topic still holds, at an archived offset, the record the archive holds there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Identity {
    /// The same bytes at this offset: the topic is the archived one.
    Same(i64),
    /// Not the archived record (why): the topic was re-created.
    Different(String),
    /// No record could be compared (why).
    Unknown(String),
}

/// Drops the commits ahead of the head that this archive's runs made: the head as stored now
/// (a member may have written it since this run read it) or a manifest recording the commit.
/// The head this run stores moves to them. Returns the other problems.
pub(super) fn drop_own_commits(
    catalog: &Catalog,
    run: &mut RunEpoch,
    problems: Vec<OffsetProblem>,
    out: &Output,
) -> Result<Vec<OffsetProblem>> {
    let ahead: BTreeMap<i32, (i64, i64)> = problems
        .iter()
        .filter_map(|x| match x.kind {
            ProblemKind::Ahead(c) => Some((x.partition, (x.next, c))),
            _ => None,
        })
        .collect();
    if ahead.is_empty() {
        return Ok(problems);
    }
    let mut own = BTreeSet::new();
    if let Some(f) = catalog.head()?.filter(|f| f.epoch == run.epoch) {
        for (p, (_, c)) in &ahead {
            if f.next.get(p).is_some_and(|n| n >= c) {
                own.insert(*p);
            }
        }
    }
    let rest: BTreeMap<i32, (i64, i64)> = ahead
        .iter()
        .filter(|(p, _)| !own.contains(*p))
        .map(|(p, x)| (*p, *x))
        .collect();
    if !rest.is_empty() {
        own.extend(catalog.commits_recorded(run.epoch, &rest)?);
    }
    for p in &own {
        out.debug(&format!(
            "partition {p}: the committed offset {} is ahead of the catalog head as this run found it, and a run of this archive made it; going on from there",
            ahead[p].1
        ));
        run.archived_through(*p, ahead[p].1);
    }
    Ok(problems
        .into_iter()
        .filter(|x| !own.contains(&x.partition))
        .collect())
}

/// Per partition of `problems`, whether the topic is the archived one: the newest archived
/// object whose last offset Kafka still holds, its last record against Kafka's at that offset.
pub(super) fn identify(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    catalog: &Catalog,
    epoch: i32,
    problems: &[OffsetProblem],
) -> BTreeMap<i32, Identity> {
    let mut out = BTreeMap::new();
    let mut wanted = BTreeMap::new();
    for x in problems {
        let p = x.partition;
        match source.watermarks(p) {
            Ok((low, _)) if low < x.next => {
                wanted.insert(p, (low, x.next));
            }
            Ok((low, _)) => {
                out.insert(
                    p,
                    Identity::Unknown(format!(
                        "the partition now starts at offset {low}, after every archived offset"
                    )),
                );
            }
            Err(e) => {
                out.insert(p, Identity::Unknown(format!("{e:#}")));
            }
        }
    }
    let objects = match catalog.objects_ending_in(epoch, &wanted, IDENTITY_MANIFESTS) {
        Ok(o) => o,
        Err(e) => {
            for p in wanted.keys() {
                out.insert(*p, Identity::Unknown(format!("{e:#}")));
            }
            return out;
        }
    };
    for (p, (low, _)) in wanted {
        let id = match objects.get(&p) {
            Some(o) => compare(source, store, o).unwrap_or_else(|e| Identity::Unknown(format!("{e:#}"))),
            None => Identity::Unknown(format!(
                "the newest {IDENTITY_MANIFESTS} manifests list no object of it ending at or after offset {low}, where the partition now starts"
            )),
        };
        out.insert(p, id);
    }
    out
}

/// The object's last record against the message Kafka holds at that offset.
fn compare(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    o: &ObjectEntry,
) -> Result<Identity> {
    // The object's range may end in holes (a transaction's marker, a tombstone): compare at
    // its last record, whose offset the holes give.
    let Some(at) = o.last_record_offset() else {
        return Ok(Identity::Unknown(format!(
            "the offset of the last record of {} is not known",
            o.key
        )));
    };
    let archived = last_record(store, &o.key)?;
    Ok(match source.read_at(o.partition, at)? {
        Some(m) if m.offset == at && m.payload.as_deref() == Some(&archived[..]) => {
            Identity::Same(at)
        }
        Some(m) if m.offset == at => Identity::Different(format!(
            "the record at offset {at} differs from the archived one"
        )),
        // Past the partition's end, the consumer starts over at its first offset.
        Some(m) if m.offset < at => {
            Identity::Different(format!("the partition now ends before offset {at}"))
        }
        None => Identity::Different(format!("the partition now ends before offset {at}")),
        Some(m) => Identity::Unknown(format!(
            "offset {at} holds no record now (the next one is {})",
            m.offset
        )),
    })
}

/// The last record of an archived object (each record's bytes as Kafka gave them).
fn last_record(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>> {
    let c = crate::archive::Compression::from_key(key).unwrap_or_default();
    let file = crate::archive::download(store, key, None)?;
    let mut reader = crate::records::FrameReader::new(crate::archive::decoder(file, c)?);
    let (mut rec, mut last) = (Vec::new(), None);
    while reader.next_into(&mut rec)? {
        last = Some(std::mem::take(&mut rec));
    }
    last.with_context(|| format!("{key} holds no record"))
}

/// The one line a refused run ends with: each partition's problem, what it means, what to do.
pub(super) fn refusal(
    topic: &str,
    group: &str,
    problems: &[OffsetProblem],
    ids: &BTreeMap<i32, Identity>,
) -> String {
    let mut parts = Vec::new();
    let (mut same, mut different, mut unknown) = (false, false, false);
    for x in problems {
        let said = match ids.get(&x.partition) {
            Some(Identity::Same(at)) => {
                same = true;
                let why = match x.kind {
                    ProblemKind::NoCommit => "the group's offsets were lost (a renamed group, or offsets expired after offsets.retention.minutes)",
                    ProblemKind::Behind(_) => "the group's offsets were moved back",
                    ProblemKind::Ahead(_) => "another consumer of the group, or a reset, moved its offsets past what the archive holds",
                };
                format!("{x}; the record at offset {at} is the archived one: {why}")
            }
            Some(Identity::Different(why)) => {
                different = true;
                format!("{x}; {why}: the topic was deleted and re-created")
            }
            Some(Identity::Unknown(why)) => {
                unknown = true;
                format!("{x}; whether the topic is the archived one is unknown: {why}")
            }
            None => {
                unknown = true;
                x.to_string()
            }
        };
        parts.push(said);
    }
    const NEW_EPOCH: &str = "run `batchlayer ingest --new-epoch` (every partition is read from its start into a new epoch)";
    const RESUME: &str = "run `batchlayer ingest --resume-from-archive` (it commits the archive's next offsets for the group, then reads on from there)";
    let mut remedy = match (same, different, unknown) {
        (false, true, false) => format!("The topic was re-created: {NEW_EPOCH}"),
        (true, false, false) => format!("To go on from the archive: {RESUME}"),
        _ => format!("If the topic was deleted and re-created, {NEW_EPOCH}; otherwise {RESUME}"),
    };
    if !different
        && problems
            .iter()
            .any(|x| matches!(x.kind, ProblemKind::Ahead(_)))
    {
        remedy.push_str("; to skip the offsets on purpose, run `batchlayer ingest --accept-skipped` (they are recorded as a gap)");
    }
    format!(
        "topic {topic}: the committed offsets of group {group} disagree with the archive: {}. Nothing was read or committed. {remedy}",
        parts.join("; ")
    )
}

/// Before the run joins the group: every partition's committed offset against the head.
/// Commits this archive's runs made are the head's (the head may lag them); any other
/// difference fails the run, diagnosed, before anything is read.
pub(super) fn check_committed(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    catalog: &Catalog,
    run: &mut RunEpoch,
    group: &str,
    out: &Output,
) -> Result<()> {
    let parts = source.partitions()?;
    if parts.iter().all(|p| run.expected_next(*p).is_none()) {
        return Ok(());
    }
    let committed = source.committed(&parts)?;
    let problems: Vec<OffsetProblem> = parts
        .iter()
        .filter_map(|p| run.committed_problem(*p, committed.get(p).copied().flatten()))
        .collect();
    let problems = drop_own_commits(catalog, run, problems, out)?;
    if problems.is_empty() {
        return Ok(());
    }
    let ids = identify(source, store, catalog, run.epoch, &problems);
    bail!(refusal(catalog.topic(), group, &problems, &ids))
}

/// `--resume-from-archive`: commits the head's next offset for each partition whose committed
/// offset differs from it (missing, behind, or ahead of it without a run of this archive
/// having made it), once the topic is shown to be the archived one. A partition whose record
/// differs from the archived one (a re-created topic) fails the run; one with no record left
/// to compare is moved with a warning.
pub(super) fn resume_from_archive(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    catalog: &Catalog,
    run: &mut RunEpoch,
    group: &str,
    out: &Output,
) -> Result<()> {
    let parts = source.partitions()?;
    if parts.iter().all(|p| run.expected_next(*p).is_none()) {
        out.warn(&format!(
            "--resume-from-archive: the catalog of topic {} holds no next offsets (epoch {}); the group's offsets stay as they are",
            catalog.topic(),
            run.epoch
        ));
        return Ok(());
    }
    let committed = source.committed(&parts)?;
    let problems: Vec<OffsetProblem> = parts
        .iter()
        .filter_map(|p| run.committed_problem(*p, committed.get(p).copied().flatten()))
        .collect();
    let problems = drop_own_commits(catalog, run, problems, out)?;
    if problems.is_empty() {
        out.info(&format!(
            "topic {}: the committed offsets of group {group} are the archive's already",
            catalog.topic()
        ));
        return Ok(());
    }
    let ids = identify(source, store, catalog, run.epoch, &problems);
    let recreated: Vec<&OffsetProblem> = problems
        .iter()
        .filter(|x| matches!(ids.get(&x.partition), Some(Identity::Different(_))))
        .collect();
    if !recreated.is_empty() {
        let recreated: Vec<OffsetProblem> = recreated.into_iter().cloned().collect();
        bail!(
            "--resume-from-archive refused: {}",
            refusal(catalog.topic(), group, &recreated, &ids)
        );
    }
    let mut moves = Vec::new();
    for x in &problems {
        if let Some(Identity::Unknown(why)) = ids.get(&x.partition) {
            out.warn(&format!(
                "partition {}: could not check that the topic is the archived one ({why}); resuming from the archive all the same",
                x.partition
            ));
        }
        moves.push((x.partition, x.next));
    }
    source
        .commit(&moves)
        .context("committing the archive's next offsets for the group")?;
    let said: Vec<String> = problems
        .iter()
        .map(|x| match x.kind {
            ProblemKind::NoCommit => format!("{}: none -> {}", x.partition, x.next),
            ProblemKind::Behind(c) | ProblemKind::Ahead(c) => {
                format!("{}: {c} -> {}", x.partition, x.next)
            }
        })
        .collect();
    out.info(&format!(
        "topic {}: group {group} resumes from the archive (epoch {}): {}",
        catalog.topic(),
        run.epoch,
        said.join(", ")
    ));
    Ok(())
}

/// `--accept-skipped`: the offsets between the archive's next offset and a committed offset
/// ahead of it (not one of this archive's runs' commits), as gaps to record; the group's
/// offsets stay where they are.
pub(super) fn skipped(
    source: &mut dyn MessageSource,
    catalog: &Catalog,
    run: &mut RunEpoch,
    out: &Output,
) -> Result<Vec<ExpiredGap>> {
    let parts = source.partitions()?;
    let committed = source.committed(&parts)?;
    let problems: Vec<OffsetProblem> = parts
        .iter()
        .filter_map(|p| run.committed_problem(*p, committed.get(p).copied().flatten()))
        .collect();
    let mut gaps = Vec::new();
    for x in drop_own_commits(catalog, run, problems, out)? {
        if let ProblemKind::Ahead(c) = x.kind {
            out.warn(&format!(
                "partition {}: offsets {}..{} skipped on purpose (the group's committed offset is {c}); recorded as a gap",
                x.partition,
                x.next,
                c - 1
            ));
            gaps.push(ExpiredGap {
                epoch: run.epoch,
                partition: x.partition,
                first: x.next,
                last: c - 1,
            });
        }
    }
    Ok(gaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::catalog::Catalog;
    use crate::archive::layout::{self, CatalogHead, Manifest};
    use crate::archive::local::LocalStore;
    use crate::archive::Compression;
    use crate::source::{Event, Message};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    /// One partition: its first offset, the group's committed offset, the record Kafka holds
    /// at each offset; commits are recorded.
    struct Topic {
        low: i64,
        committed: Mutex<Option<i64>>,
        records: HashMap<i64, Vec<u8>>,
        commits: Mutex<Vec<(i32, i64)>>,
    }

    impl MessageSource for Topic {
        fn topic(&self) -> &str {
            "t"
        }
        fn start(&mut self) -> Result<()> {
            Ok(())
        }
        fn poll(&mut self, _: Duration) -> Result<Event> {
            Ok(Event::Idle)
        }
        fn committed(&self, _: &[i32]) -> Result<HashMap<i32, Option<i64>>> {
            Ok([(0, *self.committed.lock().unwrap())].into_iter().collect())
        }
        fn commit(&self, offsets: &[(i32, i64)]) -> Result<()> {
            self.commits.lock().unwrap().extend_from_slice(offsets);
            if let Some(&(_, o)) = offsets.last() {
                *self.committed.lock().unwrap() = Some(o);
            }
            Ok(())
        }
        fn read_at(&mut self, partition: i32, offset: i64) -> Result<Option<Message>> {
            let at = offset.max(self.low);
            Ok(self.records.get(&at).map(|r| Message {
                partition,
                offset: at,
                timestamp_ms: None,
                payload: Some(r.clone()),
            }))
        }
        fn watermarks(&self, _: i32) -> Result<(i64, i64)> {
            Ok((self.low, 100))
        }
        fn partitions(&self) -> Result<Vec<i32>> {
            Ok(vec![0])
        }
    }

    /// An archive of topic `t` holding offsets 0..=9 of partition 0 (records `r0`..`r9`),
    /// one manifest whose run committed 10, and a head at 10.
    fn archive(dir: &std::path::Path) -> LocalStore {
        archive_ending(dir, 9)
    }

    /// [`archive`] whose object's range runs on to `last`: offsets 10..=last are holes (a
    /// transaction's commit marker after the last record), and the run committed `last + 1`.
    fn archive_ending(dir: &std::path::Path, last: i64) -> LocalStore {
        let store = LocalStore::new(dir.to_path_buf());
        let key = layout::object_key(
            "t",
            &layout::epoch_file_name("t", 0, 0, 0, last, Compression::None),
        );
        let mut body = Vec::new();
        for i in 0..10 {
            crate::records::frame_into(format!("r{i}").as_bytes(), &mut body);
        }
        store.put_bytes(&key, &body).unwrap();
        let cat = Catalog::new(&store, "t");
        let at = chrono::Utc::now();
        let run = layout::run_id(at);
        let m = Manifest {
            objects: vec![layout::ObjectEntry {
                records: 10,
                bytes: body.len() as u64,
                uncompressed_bytes: body.len() as u64,
                holes: (last > 9)
                    .then_some(layout::Hole {
                        first: 10,
                        last,
                        reason: layout::HoleReason::Marker,
                    })
                    .into_iter()
                    .collect(),
                ..layout::ObjectEntry::sample(&key, 0, 0, last)
            }],
            next: [(0, last + 1)].into_iter().collect(),
            ..Manifest::sample(&run, vec![])
        };
        cat.store_manifest(&cat.key_for_manifest(&run, at), &m)
            .unwrap();
        cat.store_head(&CatalogHead::default().after_run(0, &[(0, last + 1)], &[], &run))
            .unwrap();
        store
    }

    fn topic(low: i64, committed: Option<i64>, prefix: &str) -> Topic {
        Topic {
            low,
            committed: Mutex::new(committed),
            records: (0..30)
                .map(|i| (i, format!("{prefix}{i}").into_bytes()))
                .collect(),
            commits: Mutex::default(),
        }
    }

    fn check(store: &LocalStore, src: &mut Topic) -> Result<RunEpoch> {
        let cat = Catalog::new(store, "t");
        let mut run = RunEpoch::new(cat.head_or_default()?, None);
        check_committed(src, store, &cat, &mut run, "g", &Output::silent())?;
        Ok(run)
    }

    fn resume(store: &LocalStore, src: &mut Topic) -> Result<()> {
        let cat = Catalog::new(store, "t");
        let mut run = RunEpoch::new(cat.head_or_default()?, None);
        resume_from_archive(src, store, &cat, &mut run, "g", &Output::silent())
    }

    #[test]
    fn the_record_at_the_last_archived_offset_tells_lost_offsets_from_a_re_created_topic() {
        let dir = tempfile::tempdir().unwrap();
        let store = archive(dir.path());

        // The same topic, the group's offsets lost: resume from the archive.
        let mut same = topic(0, None, "r");
        let err = check(&store, &mut same).unwrap_err().to_string();
        assert!(
            err.contains(
                "the record at offset 9 is the archived one: the group's offsets were lost"
            ),
            "{err}"
        );
        assert!(
            err.contains("--resume-from-archive") && !err.contains("--new-epoch"),
            "{err}"
        );
        resume(&store, &mut same).unwrap();
        assert_eq!(*same.commits.lock().unwrap(), vec![(0, 10)]);
        check(&store, &mut same).unwrap();

        // Other bytes at that offset: re-created; resuming is refused.
        let mut other = topic(0, None, "x");
        let err = check(&store, &mut other).unwrap_err().to_string();
        assert!(
            err.contains("the record at offset 9 differs from the archived one: the topic was deleted and re-created"),
            "{err}"
        );
        assert!(
            err.contains("--new-epoch") && !err.contains("--resume-from-archive"),
            "{err}"
        );
        let err = resume(&store, &mut other).unwrap_err().to_string();
        assert!(err.starts_with("--resume-from-archive refused"), "{err}");
        assert!(other.commits.lock().unwrap().is_empty());

        // A partition that now ends before the archived offset: re-created.
        let mut short = topic(0, Some(3), "r");
        short.records.retain(|o, _| *o < 5);
        let err = check(&store, &mut short).unwrap_err().to_string();
        assert!(
            err.contains("the committed offset 3 is behind the archive's next offset 10")
                && err.contains("the partition now ends before offset 9"),
            "{err}"
        );

        // Every archived offset expired from Kafka too: both remedies; resuming warns and
        // moves the offsets (the expired check then wants --accept-expired).
        let mut gone = topic(20, None, "r");
        let err = check(&store, &mut gone).unwrap_err().to_string();
        assert!(
            err.contains("whether the topic is the archived one is unknown"),
            "{err}"
        );
        assert!(
            err.contains("--new-epoch") && err.contains("--resume-from-archive"),
            "{err}"
        );
        resume(&store, &mut gone).unwrap();
        assert_eq!(*gone.commits.lock().unwrap(), vec![(0, 10)]);
    }

    #[test]
    fn an_object_ending_in_holes_is_compared_at_its_last_record() {
        // The object's range ends with a commit marker (offset 10): Kafka holds no record
        // there (the double's record at 10 stands for the next one a consumer would get).
        // Compared at offset 9, its last record, a lost group is told as lost, not re-created.
        let dir = tempfile::tempdir().unwrap();
        let store = archive_ending(dir.path(), 10);
        let mut same = topic(0, None, "r");
        let err = check(&store, &mut same).unwrap_err().to_string();
        assert!(
            err.contains(
                "the record at offset 9 is the archived one: the group's offsets were lost"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_commit_ahead_of_the_head_is_the_archives_own_only_when_a_manifest_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = archive(dir.path());
        let cat = Catalog::new(&store, "t");
        // The head lags: it says 4, a run's manifest says it committed 10 (a run killed
        // between its commit and its head; concurrent writers merge, so only an old head
        // and no fragment of the later run make one lag).
        let run_id = cat.head().unwrap().unwrap().run_id;
        for o in store.list(&layout::catalog_heads_prefix("t")).unwrap() {
            store.delete(&o.key).unwrap();
        }
        let stale = CatalogHead::default().after_run(0, &[(0, 4)], &[], &run_id);
        store
            .put_bytes(
                &layout::catalog_head_key("t"),
                &serde_json::to_vec(&stale).unwrap(),
            )
            .unwrap();
        assert_eq!(cat.head().unwrap().unwrap().next.get(&0), Some(&4));
        let mut own = topic(0, Some(10), "r");
        let run = check(&store, &mut own).unwrap();
        assert_eq!(
            run.head_after(&[], "r2").next.get(&0),
            Some(&10),
            "the head this run stores moves to the commit"
        );
        // 12 is nobody's: refused, and resuming goes back to the head's 4.
        let mut ahead = topic(0, Some(12), "r");
        let err = check(&store, &mut ahead).unwrap_err().to_string();
        assert!(
            err.contains("the committed offset 12 is ahead of the archive's next offset 4 (epoch 0): offsets 4..11 would be skipped"),
            "{err}"
        );
        let mut run = RunEpoch::new(cat.head_or_default().unwrap(), None);
        let gaps = skipped(&mut ahead, &cat, &mut run, &Output::silent()).unwrap();
        assert_eq!(
            gaps,
            vec![ExpiredGap {
                epoch: 0,
                partition: 0,
                first: 4,
                last: 11
            }],
            "--accept-skipped records the skipped offsets"
        );
        assert!(
            skipped(&mut own, &cat, &mut run, &Output::silent())
                .unwrap()
                .is_empty(),
            "a run's own commit skips nothing"
        );
        resume(&store, &mut ahead).unwrap();
        assert_eq!(*ahead.commits.lock().unwrap(), vec![(0, 4)]);
    }
}
