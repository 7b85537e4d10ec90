//! `ingest`: consume what the group has not archived, store it as immutable offset-named
//! objects, write the run manifest, and only then commit offsets.
//!
//! Exactly-once rests on three rules:
//! 1. an object's key is a pure function of its data (topic, partition, first/last offset,
//!    first message's timestamp), and an existing key is never overwritten;
//! 2. offsets are committed only after the objects and the manifest are stored;
//! 3. before archiving a partition, the archive is listed, and offsets already covered by an
//!    object (left by a run that died before its commit) are skipped and the commit repaired.
//!
//! `spool` frames and compresses a partition's records into a temp file, `upload` stores
//! finished files on a worker thread, `recovery` finds and adopts what crashed runs left,
//! `membership` follows the group (assignments, partitions others hold), and this module runs
//! the consumer's state machine.

mod epochs;
mod membership;
mod recovery;
mod schemas;
mod spool;
#[cfg(test)]
mod testkit;
mod upload;

use crate::archive::catalog::{Catalog, RunEpoch};
use crate::archive::layout::{
    self, CatalogHead, ExpiredGap, HoleReason, Manifest, ObjectEntry, OffsetSpan, Rejected,
};
use crate::archive::{self as archive_mod, ObjectStore, PutOutcome};
use crate::cli::IngestArgs;
use crate::config::{ArchiveSettings, Settings};
use crate::output::Output;
use crate::report::Report;
use crate::source::{Event, KafkaSource, Message, MessageSource, Mode, ReplayPoint, ReplayRange};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
pub use membership::Held;
use membership::{Membership, Others};
use recovery::{Cover, Recovery};
use serde::Serialize;
use spool::Spool;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upload::{Pending, Stored, Uploader};

/// How long the run waits between polls of the group while it finishes.
const FINISH_POLL: Duration = Duration::from_millis(100);

/// Per-run options (limits and mode) on top of the archive settings.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    pub dry_run: bool,
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_duration: Option<Duration>,
    /// How long to wait for the group to assign partitions.
    pub assignment_timeout: Duration,
    /// Fail when assigned partitions deliver neither data nor end-of-partition for this long.
    pub stall_timeout: Duration,
    pub group: String,
    /// How long to wait for partitions other members hold while they have lag.
    pub member_wait: Duration,
    /// The topic's producers use transactions (`kafka.transactional`): offsets the consumer
    /// skips are transaction markers and aborted records, recorded as holes. Otherwise a skip
    /// fails the run (but in a compacted topic).
    pub transactional: bool,
    /// Join the group again after this long without the held partitions (a dead member's
    /// session has ended by then; some brokers reassign only on a join).
    pub rejoin_after: Duration,
    /// Start a new epoch of the topic (after it was re-created): read every partition from
    /// its beginning into objects named with the new epoch.
    pub new_epoch: bool,
    /// Accept offsets that expired unarchived: record them as a gap and go on from the
    /// partition's first offset.
    pub accept_expired: bool,
    /// Commit the catalog head's next offsets for the group where its committed offsets
    /// differ (lost, reset, or moved past the archive), once the topic is shown to be the
    /// archived one.
    pub resume_from_archive: bool,
    /// Record the offsets between the archive's next offset and a committed offset ahead of it
    /// as a gap (skipped on purpose), and go on from the committed offset.
    pub accept_skipped: bool,
    /// Find a crashed run's objects by listing the topic's whole archive (repair) instead of
    /// the folders named by the crashed runs' markers.
    pub full_scan: bool,
    /// `--replay`: the main archive's epoch, which the replayed objects carry (the shadow
    /// archive's catalog is not checked against the group: the source starts where asked
    /// and never commits).
    pub replay_epoch: Option<i32>,
    /// The topic's messages are Confluent-framed (Avro): each object lists the schema ids of
    /// its messages, and the archive gets each id's schema before the manifest.
    pub avro_ids: bool,
    /// Where schemas the archive does not hold yet come from.
    pub registry: Option<crate::config::RegistrySettings>,
}

#[derive(Debug, Default, Serialize)]
pub struct IngestSummary {
    pub messages: u64,
    pub bytes: u64,
    pub partitions: usize,
    pub objects: usize,
    /// Messages found already archived by an earlier run (skipped, commit repaired).
    pub skipped: u64,
    pub rejected: u64,
    pub seconds: f64,
    pub dry_run: bool,
    pub stopped_by: StopReason,
    pub object_list: Vec<ObjectEntry>,
    pub manifest_key: Option<String>,
    pub committed: BTreeMap<i32, i64>,
    /// Partitions with lag that other members held, so this run did not read them (a
    /// warning: the run did all it could).
    pub held_by_others: Vec<Held>,
    /// The topic's epoch this run archived.
    pub epoch: i32,
    /// Expired offsets accepted as a gap by this run (--accept-expired).
    pub expired: Vec<ExpiredGap>,
    /// Objects of runs that died before their manifest, now listed in this run's manifest.
    pub adopted: Vec<String>,
    /// Partitions the group took from this run (a rebalance, another member joining) after it
    /// had stored objects for them and before its commit: their offsets are not committed and
    /// their objects are left to the next owner, which finds them by this run's marker (a
    /// warning: the run did all it could).
    pub handed_over: Vec<i32>,
    /// Schema ids whose schemas this run stored in the archive (fetched from the registry).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas_stored: Vec<u32>,
}

/// Why a run stopped reading. In the summary, the text `as_str` gives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StopReason {
    /// Every assigned partition was read to its end (also the summary's value while the run
    /// is still reading).
    #[default]
    EndOfPartitions,
    /// Every assigned partition was read to its end; others, with lag, stayed with other
    /// members of the group past `member_wait`.
    EndOfPartitionsOthersHeld,
    MaxMessages,
    MaxBytes,
    MaxDuration,
}

impl StopReason {
    /// The reason as the summary's `stopped_by` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfPartitions => "end of partitions",
            StopReason::EndOfPartitionsOthersHeld => {
                "end of partitions (others held by other members)"
            }
            StopReason::MaxMessages => "--max-messages",
            StopReason::MaxBytes => "--max-bytes",
            StopReason::MaxDuration => "--max-duration",
        }
    }

    /// Whether every partition the run held was read to its end (so their lag is 0).
    pub fn read_to_end(self) -> bool {
        matches!(
            self,
            StopReason::EndOfPartitions | StopReason::EndOfPartitionsOthersHeld
        )
    }
}

impl Serialize for StopReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `batchlayer ingest`: connects, runs, prints the plan (dry run), and reports the summary.
pub fn exec(a: &IngestArgs, s: &Settings, out: &Output) -> Result<Report> {
    if s.topics.multi() {
        return exec_many(a, s, out);
    }
    exec_one(a, s, out)
}

/// Ingest over many topics, one group for all: one client reads the cluster's topics, the
/// group's committed offsets and the end offsets of every partition the config takes; a
/// topic whose every partition is committed at its end, where the catalog head agrees (one
/// read of its `head.json`), has nothing new and is passed by. The others are ingested one
/// after the other, each as a single-topic run (its own catalog, epochs and manifests); one
/// topic's failure does not stop the others.
fn exec_many(a: &IngestArgs, s: &Settings, out: &Output) -> Result<Report> {
    if a.replay {
        return Err(crate::error::Error::config(
            "--replay reads one topic: give the config one kafka.topic, or --topic with one name",
        )
        .into());
    }
    let kafka = &s.kafka;
    let ov = crate::source::GroupOverview::read(kafka, &|t| s.topics.takes(t))?;
    let topics = match s.topics.listed() {
        Some(l) => l,
        None => s.topics.pick(&ov.topics),
    };
    out.debug(&format!(
        "ingest: {} topics of {} ({} on the cluster)",
        topics.len(),
        s.topics.describe(),
        ov.topics.len()
    ));
    let store = archive_mod::open(&s.archive)?;
    let index = crate::archive::catalog::ChangeIndex::read(store.as_ref())?;
    let plain = !(a.dry_run
        || a.new_epoch
        || a.resume_from_archive
        || a.accept_skipped
        || a.accept_expired
        || a.full_scan);
    let mut many = crate::report::Many::new("ingest");
    for t in topics {
        if plain && idle(&ov, &index, store.as_ref(), &t)? {
            many.idle.push(t);
            continue;
        }
        let r = match s.for_topic_archive(&t) {
            Ok(ts) => exec_one(a, &ts, out),
            Err(e) => Err(e.into()),
        };
        many.record(&t, r, out);
    }
    Ok(Report::Many(many))
}

/// Whether a topic has nothing new for the group: every partition at its end at the
/// committed offset (or empty and never committed), as the broker's fetch tells, and the
/// archive at those offsets: the positions its newest manifest's run committed (the index of
/// change says, in the listing read once for all topics), else the catalog head (a read of
/// its `head.json`). Anything else is no error here: the topic's run decides (new messages, a
/// commit ahead of the archive, a re-created topic).
fn idle(
    ov: &crate::source::GroupOverview,
    index: &crate::archive::catalog::ChangeIndex,
    store: &dyn ObjectStore,
    topic: &str,
) -> Result<bool> {
    let Some(ps) = ov.positions.get(topic).filter(|ps| !ps.is_empty()) else {
        return Ok(false);
    };
    if ps.iter().any(|&(_, _, more)| more) {
        return Ok(false);
    }
    let committed: BTreeMap<i32, i64> = ps.iter().filter_map(|&(p, c, _)| Some((p, c?))).collect();
    if committed.len() == ps.len() && index.committed_as(topic, &committed) == Some(true) {
        return Ok(true);
    }
    let head = Catalog::new(store, topic).mirrored_head()?;
    Ok(ps.iter().all(|&(p, committed, _)| {
        let next = head.as_ref().and_then(|h| h.next.get(&p).copied());
        next == committed
    }))
}

/// One topic's ingest.
fn exec_one(a: &IngestArgs, s: &Settings, out: &Output) -> Result<Report> {
    let mut kafka = s.require_kafka()?.clone();
    let main_store = archive_mod::open(&s.archive)?;
    if let Some(src) = main_store.credential_source() {
        out.debug(&format!("S3 credentials: {src}"));
    }
    let (mode, archive, replay_epoch) = match replay_plan(a)? {
        Some((range, prefix)) => {
            let epoch = Catalog::new(main_store.as_ref(), &kafka.topic).epoch()?;
            // A group of its own that never commits: the main group is never touched.
            kafka.group = format!("{}-replay-{}", kafka.group, std::process::id());
            out.info(&format!(
                "replaying {} (epoch {epoch}) into {}/{prefix}",
                kafka.topic,
                main_store.describe()
            ));
            (
                Mode::Replay(range),
                s.archive
                    .under(&prefix)
                    .map_err(crate::error::Error::Config)?,
                Some(epoch),
            )
        }
        None if a.dry_run => (Mode::AssignAll, s.archive.clone(), None),
        None => (Mode::Subscribe, s.archive.clone(), None),
    };
    let store = archive_mod::open(&archive)?;
    out.debug(&format!(
        "Kafka client: {}",
        crate::source::describe_config(&crate::source::client_config(&kafka))
    ));
    let mut src = KafkaSource::connect(&kafka, mode)?;
    let opts = IngestOptions {
        dry_run: a.dry_run,
        max_messages: a.max_messages,
        max_bytes: a.max_bytes,
        max_duration: a.max_duration,
        assignment_timeout: Duration::from_secs(60),
        stall_timeout: Duration::from_secs(s.kafka.stall_timeout_secs),
        group: kafka.group.clone(),
        member_wait: Duration::from_secs(s.kafka.member_wait_secs),
        transactional: s.kafka.transactional,
        rejoin_after: Duration::from_secs(s.kafka.session_timeout_secs + 2),
        new_epoch: a.new_epoch,
        accept_expired: a.accept_expired,
        resume_from_archive: a.resume_from_archive,
        accept_skipped: a.accept_skipped,
        full_scan: a.full_scan,
        replay_epoch,
        avro_ids: s.layout.format == crate::records::RecordFormat::Avro,
        registry: s.schema_registry.clone(),
    };
    if a.dry_run {
        let parts = src.partitions()?;
        out.plan("partition  committed  end  lag");
        for l in describe_lag(&src, &parts)? {
            let c = l
                .committed
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into());
            out.plan(&format!("{}  {c}  {}  {}", l.partition, l.end, l.lag));
        }
    }
    let sum = run(&mut src, store.as_ref(), &archive, &opts, out)?;
    if !sum.handed_over.is_empty() {
        out.warn(&format!(
            "the group took partitions {:?} of topic {} from this run before its commit; their offsets are not committed, and the objects this run stored for them are left to the next run, which adopts them",
            sum.handed_over, kafka.topic
        ));
    }
    if !sum.held_by_others.is_empty() {
        let parts: Vec<String> = sum
            .held_by_others
            .iter()
            .map(|h| format!("{} (lag {})", h.partition, h.lag))
            .collect();
        out.warn(&format!(
            "partitions {} of topic {} are held by other members of group {}; this run did not read them",
            parts.join(", "),
            kafka.topic,
            kafka.group
        ));
    }
    if a.dry_run {
        for o in &sum.object_list {
            out.plan(&format!("would write {} ({} records)", o.key, o.records));
        }
    }
    Ok(Report::Ingest(sum))
}

#[derive(Default)]
struct PartState {
    /// Archived offset spans at or after where this run started, from the listing.
    archived: Option<Vec<OffsetSpan>>,
    spool: Option<Spool>,
    /// The offset to commit: one past the last offset handled (a message, or an offset the
    /// consumer's position passed that holds no record).
    next_commit: Option<i64>,
    /// The next offset this run's objects must account for: where the read started (the
    /// committed offset, or the first offset of a gap accepted as expired), then one past the
    /// last offset handled. Offsets the broker skips from here are holes of the objects.
    expected: Option<i64>,
    /// The newest Kafka timestamp seen in this partition (the time folder of an object that
    /// holds no record).
    last_ts: Option<i64>,
}

/// One run's state: partitions, their spools, stored objects; it polls the source and
/// orchestrates the crash recovery and the group membership.
struct Run<'a> {
    store: &'a dyn ObjectStore,
    /// The topic's catalog: its head and manifests.
    catalog: Catalog<'a>,
    settings: &'a ArchiveSettings,
    opts: &'a IngestOptions,
    topic: String,
    out: &'a Output,
    parts: BTreeMap<i32, PartState>,
    /// This run's marker, and what crashed runs left.
    recovery: Recovery<'a>,
    /// Where this run stands in the group.
    membership: Membership,
    run_id: String,
    objects: Vec<ObjectEntry>,
    rejected: Vec<Rejected>,
    summary: IngestSummary,
    uploader: Uploader,
    eof: BTreeSet<i32>,
    started: Instant,
    last_progress: Instant,
    pb: ProgressBar,
    /// The catalog head as this run found it, and the epoch it archives.
    head: RunEpoch,
    /// Committed offsets at assignment, and the partitions whose first message was seen.
    committed_at_assign: HashMap<i32, Option<i64>>,
    first_seen: BTreeSet<i32>,
    /// Where each assigned partition's read starts (the committed offset, else the first).
    start_at: std::collections::HashMap<i32, i64>,
    /// When the run started (the time folder of an object that holds no record, when the
    /// run saw no message of its partition).
    started_at: DateTime<Utc>,
    /// Why offsets the broker skips hold no record: the topic's cleanup policy says.
    skipped_reason: Option<HoleReason>,
    /// While the run finishes: objects waiting for room in the upload queue (the run polls the
    /// group meanwhile instead of blocking on the queue).
    deferred: Option<VecDeque<Pending>>,
    /// Partitions revoked while the run finished: not committed, not in its manifest.
    handed_over: BTreeSet<i32>,
    /// Offsets accepted as a gap before the run read (`--accept-expired`, `--accept-skipped`),
    /// and the keys of the objects that account for them (listed whoever holds the partition).
    accepted_gaps: Vec<ExpiredGap>,
    gap_objects: BTreeSet<String>,
    /// Where the run first saw each schema id (Avro topics).
    schema_seen: schemas::FirstSeen,
}

impl Run<'_> {
    /// Takes the results of finished uploads; the first failure fails the run.
    fn collect_uploads(&mut self) -> Result<()> {
        for r in self.uploader.finished() {
            self.stored(r)?;
        }
        Ok(())
    }

    fn stored(&mut self, r: Stored) -> Result<()> {
        let (entry, outcome) = r?;
        // Test hook: die as kill -9 would, with an object stored and nothing else.
        crate::failpoint::crash("ingest-crash-after-first-object");
        match outcome {
            PutOutcome::Created => self
                .out
                .debug(&format!("stored {} ({} records)", entry.key, entry.records)),
            // Same name means same data (the name is a function of the offsets).
            PutOutcome::AlreadyExists => self.out.warn(&format!(
                "{} already exists; kept the stored object",
                entry.key
            )),
        }
        self.objects.push(entry);
        Ok(())
    }

    /// Queues an object for the worker (blocks while the queue is full; while the run
    /// finishes, it waits in `deferred` instead, see [`Run::finish_uploads`]).
    fn upload(&mut self, p: Pending) -> Result<()> {
        if let Some(d) = self.deferred.as_mut() {
            d.push_back(p);
            return Ok(());
        }
        self.collect_uploads()?;
        if let Err(e) = self.uploader.send(p) {
            // The worker is gone: report its error if it left one.
            self.collect_uploads()?;
            return Err(e);
        }
        Ok(())
    }

    /// Queues the deferred objects and waits for every queued object to be stored, polling
    /// the group meanwhile ([`Run::keep_membership`]); fails on the first upload that failed.
    fn finish_uploads(&mut self, source: &mut dyn MessageSource) -> Result<()> {
        loop {
            let Some(p) = self.deferred.as_mut().and_then(|d| d.pop_front()) else {
                break;
            };
            let sent = self.uploader.try_send(p);
            let back = match sent {
                Ok(back) => back,
                Err(e) => {
                    // The workers are gone: report their error if they left one.
                    self.collect_uploads()?;
                    return Err(e);
                }
            };
            if let Some(p) = back {
                self.deferred.as_mut().expect("finishing").push_front(p);
                self.collect_uploads()?;
                self.keep_membership(source)?;
            }
        }
        self.uploader.close();
        loop {
            match self.uploader.next_result(FINISH_POLL) {
                Ok(r) => self.stored(r)?,
                Err(true) => return Ok(()),
                Err(false) => self.keep_membership(source)?,
            }
        }
    }

    /// While the run finishes (stores its last objects, reads adopted ones): polls the group,
    /// so that this member stays in it. librdkafka sends the heartbeats from its own thread,
    /// but a member whose application does not poll within `max.poll.interval.ms` leaves the
    /// group, and another member would archive its partitions again. Nothing more is read (the
    /// partitions are paused; a message still delivered is dropped: nothing past it is
    /// committed, the next run reads it). A revocation hands the partitions over: after the
    /// revoke barrier has waited for the objects being stored, this run neither stores more
    /// for them nor commits them, and its marker stays so the next owner adopts them.
    fn keep_membership(&mut self, source: &mut dyn MessageSource) -> Result<()> {
        if self.opts.dry_run {
            std::thread::sleep(FINISH_POLL);
            return Ok(());
        }
        match source.poll(FINISH_POLL)? {
            Event::Revoked(ps) => {
                self.out.debug(&format!(
                    "partitions {ps:?} revoked while this run stored its last objects; handing them over uncommitted"
                ));
                if let Some(d) = self.deferred.as_mut() {
                    d.retain(|p| !ps.contains(&p.entry.partition));
                }
                self.on_revoked(&ps);
                self.handed_over.extend(ps);
            }
            Event::Assigned(ps) => {
                // Read nothing more: the run is finishing.
                self.out.debug(&format!(
                    "assigned partitions {ps:?} while finishing; not reading them"
                ));
                source.pause()?;
            }
            // Nothing past the accounted position is committed: a message still delivered, or
            // offsets found expired, are the next run's.
            Event::Message(_) | Event::Eof(_) | Event::Expired { .. } | Event::Idle => {}
        }
        Ok(())
    }

    /// Reads the adopted objects (checksum, size, records) on a thread of their own, polling
    /// the group meanwhile, and lists them in this run's objects, each once.
    fn describe_adopted(&mut self, source: &mut dyn MessageSource) -> Result<()> {
        let handed = self.handed_over.clone();
        let jobs = self.recovery.take_adopted(|p| !handed.contains(&p));
        if jobs.is_empty() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (store, topic, avro) = (self.store, self.topic.clone(), self.opts.avro_ids);
        std::thread::scope(|s| {
            s.spawn(move || {
                for a in jobs {
                    let r = recovery::describe(store, &topic, a, avro);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            });
            loop {
                match rx.recv_timeout(FINISH_POLL) {
                    Ok(r) => {
                        let e = r?;
                        self.out.debug(&format!(
                            "adopting {} ({} records) stored by a run that died before its manifest",
                            e.key, e.records
                        ));
                        if !self.handed_over.contains(&e.partition) {
                            self.summary.adopted.push(e.key.clone());
                            self.schema_seen.adopted(&e);
                            self.objects.push(e);
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        self.keep_membership(source)?
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
        })
    }

    /// The offsets of partition `p` already archived (by runs that died before committing).
    fn archived_for(&mut self, p: i32) -> Result<&[OffsetSpan]> {
        self.recovery.list()?;
        let st = self.parts.entry(p).or_default();
        if st.archived.is_none() {
            st.archived = Some(self.recovery.archived(p));
        }
        Ok(st.archived.as_deref().expect("set"))
    }

    /// Offsets from the partition's expected one up to `upto` (exclusive) hold no record: the
    /// broker skipped them (transaction markers, aborted transactions, compaction). They become
    /// holes of this run's objects, but for those an object of a crashed run holds (that
    /// object accounts for them). The commit moves past them.
    fn account_until(&mut self, p: i32, upto: i64, reason: Option<HoleReason>) -> Result<()> {
        let Some(e) = self.parts.get(&p).and_then(|st| st.expected) else {
            return Ok(());
        };
        if upto <= e {
            return Ok(());
        }
        let archived = self.archived_for(p)?.to_vec();
        let span = OffsetSpan::new(e, upto - 1);
        for a in archived.iter().filter_map(|a| a.intersect(span)) {
            // A crashed run's object holds these (one of holes only has no record this run
            // could recognise it by): this run lists it in its manifest (both ends: the
            // object's edges count as seen).
            self.recovery.adopt_offset(p, a.first);
            self.recovery.adopt_offset(p, a.last);
        }
        for s in layout::subtract_spans(span, &archived) {
            let Some(reason) = reason else {
                bail!(
                    "topic {}: partition {p}: the consumer skipped offsets {}..{}, which hold no record it could read. Transactional producers leave such offsets (markers, aborted records): if the topic's producers use transactions, set kafka.transactional = true; a compacted topic has them too. Otherwise the broker did not return them; nothing was committed",
                    self.topic,
                    s.first,
                    s.last
                );
            };
            self.add_hole(p, s, reason)?;
        }
        let st = self.parts.get_mut(&p).expect("state");
        st.expected = Some(upto);
        st.next_commit = Some(st.next_commit.unwrap_or(upto).max(upto));
        Ok(())
    }

    /// Puts a hole in the partition's open object, or opens one at the hole (an object may
    /// hold no record: its range still accounts for the offsets).
    fn add_hole(&mut self, p: i32, s: OffsetSpan, reason: HoleReason) -> Result<()> {
        let contiguous = self
            .parts
            .get(&p)
            .and_then(|st| st.spool.as_ref())
            .map(|sp| sp.last + 1 == s.first);
        if contiguous == Some(false) {
            self.flush_partition(p)?;
        }
        let (c, dry) = (self.settings.compression, self.opts.dry_run);
        let st = self.parts.get_mut(&p).expect("state");
        if st.spool.is_none() {
            st.spool = Some(Spool::new(s.first, c, dry)?);
        }
        st.spool
            .as_mut()
            .expect("spool")
            .add_hole(s.first, s.last, reason);
        Ok(())
    }

    fn on_message(&mut self, m: Message) -> Result<()> {
        let p = m.partition;
        if let Some(ts) = m.timestamp_ms {
            let st = self.parts.entry(p).or_default();
            st.last_ts = st.last_ts.max(Some(ts));
        }
        self.account_until(p, m.offset, self.skipped_reason)?;
        let covering = self
            .archived_for(p)?
            .iter()
            .find(|s| s.contains(m.offset))
            .copied();
        if let Some(span) = covering {
            // Already archived by a run that died before committing: skip, and cut the
            // current object here so no object spans the gap. A tombstone inside the archived
            // range is listed here: the run that archived the range died before listing it.
            if m.payload.is_none() {
                self.reject_tombstone(p, m.offset);
            }
            // This run's own object (the partition came back to it) or a dead run's, adopted.
            let cover = self.recovery.adopt(&m);
            self.flush_partition(p)?;
            // The whole object is archived and listed (in this run's manifest, or, for the
            // run's own, already): the commit may pass all of it, so a run stopped by a limit
            // inside it never makes the next run archive its rest again (an overlap, which
            // Redshift cannot load in part).
            let st = self.parts.get_mut(&p).expect("state");
            st.next_commit = Some(st.next_commit.unwrap_or(0).max(span.last + 1));
            st.expected = Some(st.expected.unwrap_or(0).max(span.last + 1));
            if cover != Some(Cover::Own) {
                self.summary.skipped += 1;
            }
            return Ok(());
        }
        if let Some(e) = self.parts.get(&p).and_then(|st| st.expected) {
            if m.offset < e {
                bail!(
                    "topic {}: partition {p}: offset {} was delivered after this run had accounted for the offsets up to {} (as records, holes or expired offsets); nothing was committed",
                    self.topic,
                    m.offset,
                    e - 1
                );
            }
        }
        let Some(payload) = m.payload.as_deref() else {
            // A tombstone is a hole of the object (and listed in the rejects file), also at
            // an object's edge: the next object's range starts with it.
            self.reject_tombstone(p, m.offset);
            self.add_hole(
                p,
                OffsetSpan::new(m.offset, m.offset),
                HoleReason::Tombstone,
            )?;
            let st = self.parts.get_mut(&p).expect("state");
            st.next_commit = Some(m.offset + 1);
            st.expected = Some(m.offset + 1);
            return Ok(());
        };
        let len = payload.len() as u64;
        let c = self.settings.compression;
        let st = self.parts.get_mut(&p).expect("state");
        if st.spool.as_ref().is_some_and(|sp| sp.last + 1 != m.offset) {
            // Not contiguous (the read's start was not known): a new object.
            self.flush_partition(p)?;
        }
        let st = self.parts.get_mut(&p).expect("state");
        if st.spool.is_none() {
            st.spool = Some(Spool::new(m.offset, c, self.opts.dry_run)?);
        }
        let sp = st.spool.as_mut().expect("spool");
        sp.append(&m, payload)?;
        if self.opts.avro_ids {
            // A message not so framed is archived as it is: copy finds it a bad record.
            if let Some(id) = crate::registry::framed_schema_id(payload) {
                if sp.note_schema_id(id) {
                    self.schema_seen.message(id, p, m.offset);
                }
            }
        }
        st.next_commit = Some(m.offset + 1);
        st.expected = Some(m.offset + 1);
        let rotate = sp.uncompressed >= self.settings.max_object_bytes
            || (self.settings.max_object_records > 0
                && sp.records >= self.settings.max_object_records);
        self.summary.messages += 1;
        self.summary.bytes += len;
        if rotate {
            self.flush_partition(p)?;
        }
        Ok(())
    }

    fn reject_tombstone(&mut self, partition: i32, offset: i64) {
        self.rejected.push(Rejected {
            partition,
            offset,
            reason: "null payload (tombstone)".into(),
        });
    }

    /// Stores the partition's open spool as an object (or, in a dry run, plans it).
    fn flush_partition(&mut self, p: i32) -> Result<()> {
        let Some(sp) = self.parts.get_mut(&p).and_then(|st| st.spool.take()) else {
            return Ok(());
        };
        self.store_spool(p, sp).map(|_| ())
    }

    /// Offsets this run accepted as a gap before it read (`--accept-expired`,
    /// `--accept-skipped`) are an object of their own that holds no record, whoever holds the
    /// partition and whether or not the run reads it: the readers of the ledger then find no
    /// hole there (the gap is also in the manifest's and the head's expired list).
    fn store_accepted_gaps(&mut self) -> Result<()> {
        let c = self.settings.compression;
        for g in self.accepted_gaps.clone() {
            let mut sp = Spool::new(g.first, c, self.opts.dry_run)?;
            sp.add_hole(g.first, g.last, HoleReason::Expired);
            let key = self.store_spool(g.partition, sp)?;
            self.gap_objects.insert(key);
        }
        Ok(())
    }

    /// Stores a partition's spool as an object (or, in a dry run, plans it); returns its key.
    fn store_spool(&mut self, p: i32, sp: Spool) -> Result<String> {
        let c = self.settings.compression;
        let name = layout::epoch_file_name(&self.topic, self.head.epoch, p, sp.first, sp.last, c);
        // An object that holds no record goes in the folder of the newest message seen, else
        // of the run's start.
        let last_ts = self.parts.get(&p).and_then(|st| st.last_ts);
        let folder_ts = sp
            .first_ts
            .or(last_ts)
            .or(Some(self.started_at.timestamp_millis()));
        let dir = layout::folder(
            &self.settings.key_template,
            &self.topic,
            folder_ts,
            self.settings.utc_offset_secs,
        );
        let key = layout::object_key(&dir, &name);
        let (first, last, records, uncompressed) = (sp.first, sp.last, sp.records, sp.uncompressed);
        let max_timestamp_ms = sp.max_ts;
        let timestamps = (sp.records > 0).then(|| sp.times.encode());
        let holes = sp.holes.clone();
        let schema_ids = sp.schema_ids();
        let done = sp.finish()?;
        let dry = self.opts.dry_run;
        let entry = ObjectEntry {
            key: key.clone(),
            topic: self.topic.clone(),
            partition: p,
            first_offset: first,
            last_offset: last,
            records,
            bytes: if dry { 0 } else { done.bytes },
            uncompressed_bytes: uncompressed,
            sha256: if dry { String::new() } else { done.sha256 },
            compression: c,
            gaps: Vec::new(),
            holes,
            max_timestamp_ms,
            schema_ids,
            timestamps,
        };
        if dry {
            self.objects.push(entry);
            return Ok(key);
        }
        self.recovery.mark_folder(&dir)?;
        self.recovery
            .stored_own(p, OffsetSpan::new(first, last), &key);
        self.upload(Pending {
            key: key.clone(),
            file: done.file,
            entry,
        })?;
        Ok(key)
    }

    /// Stores what is spooled, then leaves and joins the group again. The revocation drops
    /// this run's uncommitted positions; the stored objects make the re-read skip them.
    fn rejoin(&mut self, source: &mut dyn MessageSource) -> Result<()> {
        self.out.debug(&format!(
            "partitions {:?} still held by other members after {}s; joining the group again",
            self.membership
                .held()
                .iter()
                .map(|h| h.partition)
                .collect::<Vec<_>>(),
            self.membership.since_joined().as_secs()
        ));
        let ids: Vec<i32> = self.parts.keys().copied().collect();
        for p in ids {
            self.flush_partition(p)?;
        }
        self.membership.rejoin(source)
    }

    /// Why the run stops now, if it does; fails when no assignment came in time. When every
    /// assigned partition is at its end but other members hold partitions with lag, it waits
    /// for them ([`Membership::others`]).
    fn stop_reason(&mut self, source: &mut dyn MessageSource) -> Result<Option<StopReason>> {
        let at_end = self
            .membership
            .assigned()
            .map(|a| a.iter().all(|p| self.eof.contains(p)));
        if at_end == Some(true) {
            if self.opts.dry_run || self.limit_reached().is_some() {
                return Ok(Some(StopReason::EndOfPartitions));
            }
            return match self.membership.others(source, self.started)? {
                Others::NoneLagging => Ok(Some(StopReason::EndOfPartitions)),
                Others::WaitedLongEnough => Ok(Some(StopReason::EndOfPartitionsOthersHeld)),
                Others::Rejoin => {
                    self.rejoin(source)?;
                    Ok(None)
                }
                Others::Wait => Ok(None),
            };
        }
        if self.membership.assignment_overdue() {
            bail!(
                "no partitions of topic {} were assigned to group {} within {}s (is the group coordinator up?)",
                self.topic,
                self.opts.group,
                self.opts.assignment_timeout.as_secs()
            );
        }
        Ok(self.limit_reached())
    }

    /// The limit (flag) that stops the run now, if any.
    fn limit_reached(&self) -> Option<StopReason> {
        let o = self.opts;
        if o.max_messages.is_some_and(|n| self.summary.messages >= n) {
            Some(StopReason::MaxMessages)
        } else if o.max_bytes.is_some_and(|n| self.summary.bytes >= n) {
            Some(StopReason::MaxBytes)
        } else if o.max_duration.is_some_and(|d| self.started.elapsed() >= d) {
            Some(StopReason::MaxDuration)
        } else {
            None
        }
    }

    /// Polls until every assigned partition is at its end or a limit is reached.
    fn consume(&mut self, source: &mut dyn MessageSource) -> Result<StopReason> {
        loop {
            if let Some(why) = self.stop_reason(source)? {
                self.pb.finish_and_clear();
                return Ok(why);
            }
            let ev = source.poll(Duration::from_millis(200))?;
            if !matches!(ev, Event::Idle) {
                self.last_progress = Instant::now();
            }
            match ev {
                Event::Message(m) => self.on_message_event(m)?,
                // Make sure the reconciliation covered this partition even with no new messages.
                Event::Eof(p) => {
                    // The offsets up to the consumer's position that hold no record (a
                    // transaction's marker after the last record) are accounted for first.
                    self.account_to_position(source, p)?;
                    // The partition's last object starts uploading now, while the others
                    // drain (once per assignment: later messages wait for the run's end).
                    if self.eof.insert(p) {
                        self.flush_partition(p)?;
                    }
                }
                Event::Expired {
                    partition,
                    first,
                    last,
                } => self.on_expired(partition, first, last)?,
                Event::Assigned(ps) => self.on_assigned(source, ps)?,
                Event::Revoked(ps) => self.on_revoked(&ps),
                Event::Idle => self.check_stall()?,
            }
        }
    }

    /// Accounts for the offsets below the consumer's position in `p` that hold no record.
    fn account_to_position(&mut self, source: &dyn MessageSource, p: i32) -> Result<()> {
        if !self.membership.is_assigned(p) {
            return Ok(());
        }
        if let Some(pos) = source.position(p) {
            self.account_until(p, pos, self.skipped_reason)?;
        }
        Ok(())
    }

    /// Offsets `first..=last` of `p` expired (retention, DeleteRecords) while this run was
    /// reading them: the consumer found its position gone. The run fails naming them, unless
    /// `--accept-expired` was given: then they are a hole of the partition's object and an
    /// expiry gap of the manifest and the catalog head, the commit moves past them, and this
    /// run reads no more of the partition (librdkafka stops fetching it; the next run goes on
    /// after the gap).
    fn on_expired(&mut self, p: i32, first: i64, last: i64) -> Result<()> {
        if !self.membership.is_assigned(p) {
            return Ok(());
        }
        if !self.opts.accept_expired || self.opts.replay_epoch.is_some() {
            bail!(
                "topic {}: partition {p}: offsets {first}..{last} expired (retention or DeleteRecords) while this run was reading them, before they were archived. Nothing was committed; to record them as a gap and go on, run `batchlayer ingest --accept-expired`",
                self.topic
            );
        }
        self.account_until(p, first, self.skipped_reason)?;
        let st = self.parts.entry(p).or_default();
        if st.expected.is_none() {
            st.expected = Some(first);
        }
        self.account_until(p, last + 1, Some(HoleReason::Expired))?;
        let gap = ExpiredGap {
            epoch: self.head.epoch,
            partition: p,
            first,
            last,
        };
        self.out.warn(&format!(
            "partition {p}: offsets {first}..{last} expired while this run read them; recorded as a gap (the next run reads on from offset {})",
            last + 1
        ));
        self.head.expired.push(gap);
        self.eof.insert(p);
        self.flush_partition(p)
    }

    fn on_message_event(&mut self, m: Message) -> Result<()> {
        if !self.membership.is_assigned(m.partition) {
            return Ok(());
        }
        if self.first_seen.insert(m.partition) {
            let c = self
                .committed_at_assign
                .get(&m.partition)
                .copied()
                .flatten();
            if let Some(c) = c.filter(|&c| m.offset < c) {
                bail!(
                    "topic {}: partition {}: the first message has offset {}, below the committed offset {c}: the partition was truncated or re-created. Nothing was committed; if the topic was re-created, run `batchlayer ingest --new-epoch`",
                    self.topic,
                    m.partition,
                    m.offset
                );
            }
        }
        self.on_message(m)?;
        if self.summary.messages.is_multiple_of(1024) {
            self.collect_uploads()?;
            // The lag comes from the broker's high watermarks, which some brokers (tansu)
            // report short: never show a position past the total.
            if self.pb.length().is_some_and(|l| l < self.summary.messages) {
                self.pb.set_length(self.summary.messages);
            }
            self.pb.set_position(self.summary.messages);
            self.pb.set_message(format!(
                "messages, {}",
                indicatif::HumanBytes(self.summary.bytes)
            ));
        }
        Ok(())
    }

    /// Checks that the partitions are the ones the archive holds (same incarnation, nothing
    /// expired unarchived) before anything is read. Every problem fails the run, naming the
    /// partitions and offsets; nothing is committed.
    fn check_positions(&mut self, source: &dyn MessageSource, ps: &[i32]) -> Result<()> {
        // What the source looked up while assigning, else asked now (after the fetching has
        // started, where a broker may answer only after a pending fetch).
        let known = source
            .assigned_positions()
            .filter(|k| ps.iter().all(|p| k.contains_key(p)));
        let committed: std::collections::HashMap<i32, Option<i64>> = match &known {
            Some(k) => k.iter().map(|(p, pos)| (*p, pos.committed)).collect(),
            None => source.committed(ps)?,
        };
        if self.opts.replay_epoch.is_some() {
            // A replay starts where asked (the source refuses expired offsets).
            // Where a replay starts, objects start at its first message (the source passes
            // over messages before a start time).
            for &p in ps {
                self.committed_at_assign
                    .insert(p, committed.get(&p).copied().flatten());
            }
            return Ok(());
        }
        let mut problems = Vec::new();
        let mut expired = Vec::new();
        for &p in ps {
            let c = committed.get(&p).copied().flatten();
            self.committed_at_assign.insert(p, c);
            let lo = match known.as_ref().and_then(|k| k.get(&p)) {
                Some(pos) => pos.low,
                None => source.watermarks(p)?.0,
            };
            self.start_at.insert(p, c.unwrap_or(lo));
            problems.extend(self.head.committed_problem(p, c));
            if let Some(c) = c {
                if c < lo {
                    expired.push(format!(
                        "partition {p}: offsets {c}..{} expired before they were archived (the partition starts at {lo})",
                        lo - 1
                    ));
                }
            }
        }
        // A member may have committed since this run checked (its head may lag its commit).
        let problems = epochs::drop_own_commits(&self.catalog, &mut self.head, problems, self.out)?;
        if !problems.is_empty() {
            bail!(epochs::refusal(
                &self.topic,
                &self.opts.group,
                &problems,
                &Default::default()
            ));
        }
        if expired.is_empty() {
            return Ok(());
        }
        bail!(
            "topic {}: {}. Nothing was read or committed. To record the expired offsets as a gap and go on, run `batchlayer ingest --accept-expired`",
            self.topic,
            expired.join("; ")
        )
    }

    fn on_assigned(&mut self, source: &dyn MessageSource, ps: Vec<i32>) -> Result<()> {
        self.out.debug(&format!("assigned partitions {ps:?}"));
        self.check_positions(source, &ps)?;
        self.recovery.forget_listing();
        if !self.opts.dry_run {
            self.recovery.renew_marker()?;
        }
        for p in &ps {
            // Expired offsets this run accepted before it read are an object of their own
            // (`store_accepted_gaps`): the read starts after them.
            let start = self.start_at.get(p).copied();
            let st = self.parts.entry(*p).or_default();
            st.archived = None;
            if st.expected.is_none() {
                st.expected = start;
            }
        }
        if self.opts.dry_run || self.out.interactive {
            self.pb.finish_and_clear();
            self.pb = self.out.progress(lag(source, &ps), "ingest", false);
        }
        self.membership.assign(ps);
        Ok(())
    }

    fn on_revoked(&mut self, ps: &[i32]) {
        self.recovery.revoked(ps);
        self.out.debug(&format!(
            "partitions {ps:?} revoked; dropping their uncommitted data"
        ));
        for p in ps {
            // Objects already stored stay (the next owner skips them); the spool is dropped.
            if let Some(sp) = self.parts.remove(p).and_then(|st| st.spool) {
                self.summary.messages -= sp.records;
                self.summary.bytes -= sp.payload_bytes;
            }
            self.eof.remove(p);
        }
        self.rejected.retain(|r| !ps.contains(&r.partition));
        self.membership.revoked();
    }

    /// Fails the run when assigned partitions deliver nothing for the stall timeout.
    fn check_stall(&self) -> Result<()> {
        let Some(a) = self.membership.assigned() else {
            return Ok(());
        };
        if a.iter().all(|p| self.eof.contains(p))
            || self.last_progress.elapsed() <= self.opts.stall_timeout
        {
            return Ok(());
        }
        let waiting: Vec<String> = a
            .iter()
            .filter(|p| !self.eof.contains(p))
            .map(|p| match self.parts.get(p).and_then(|s| s.next_commit) {
                Some(o) => format!("{p} (at offset {o})"),
                None => format!("{p} (at its committed offset)"),
            })
            .collect();
        bail!(
            "topic {}: partitions {} delivered neither data nor end-of-partition for {}s; \
             the broker may be failing to serve that offset (nothing was committed)",
            self.topic,
            waiting.join(", "),
            self.opts.stall_timeout.as_secs()
        )
    }

    /// Records where the archive now stands, after the commit. The head is never ahead of the
    /// committed offsets (a run that died before its commit wrote none), so a committed offset
    /// behind it means the offsets were reset or the topic re-created. A failure here loses
    /// nothing (the next run's check only needs the head not to be ahead): it is a warning.
    fn store_head(&self, commits: &[(i32, i64)], run_id: &str) {
        let head = self.head.head_after(commits, run_id);
        if let Err(e) = self.catalog.store_head(&head) {
            self.out
                .warn(&format!("the offsets are committed, but {e:#}"));
        }
    }

    /// Stores the rejected messages' list, if any; returns its key.
    fn store_rejected(&self, run_id: &str) -> Result<Option<String>> {
        if self.rejected.is_empty() {
            return Ok(None);
        }
        let key = layout::rejected_key(&self.topic, run_id);
        if !self.opts.dry_run {
            let mut body = Vec::new();
            for r in &self.rejected {
                serde_json::to_writer(&mut body, r)?;
                body.push(b'\n');
            }
            self.store
                .put_bytes_if_absent(&key, &body)
                .with_context(|| format!("storing {key}"))?;
        }
        Ok(Some(key))
    }

    /// Where the group's offsets stand once the run commits: its commits, and past each gap it
    /// accepted (the offsets were moved there before the run read anything).
    fn next_offsets(&self, commits: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        let mut next: BTreeMap<i32, i64> = commits.iter().copied().collect();
        for g in &self.head.expired {
            next.entry(g.partition).or_insert(g.last + 1);
        }
        next
    }

    /// Stores the run manifest, if the run stored anything; returns its key.
    fn store_manifest(
        &self,
        run_id: &str,
        started_at: DateTime<Utc>,
        rejected_key: Option<String>,
        commits: &[(i32, i64)],
    ) -> Result<Option<String>> {
        if self.objects.is_empty() && rejected_key.is_none() && self.head.expired.is_empty() {
            return Ok(None);
        }
        let m = Manifest {
            epoch: self.head.epoch,
            expired: self.head.expired.clone(),
            run_id: run_id.to_string(),
            topic: self.topic.clone(),
            group: self.opts.group.clone(),
            started_at: started_at.to_rfc3339(),
            finished_at: Utc::now().to_rfc3339(),
            objects: self.objects.clone(),
            rejected_key,
            rejected: self.rejected.len() as u64,
            next: self.next_offsets(commits),
        };
        let key = self.catalog.key_for_manifest(run_id, Utc::now());
        if !self.opts.dry_run {
            self.catalog.store_manifest(&key, &m)?;
            // Before the commit: copy finds every committed manifest through the index.
            if self.opts.replay_epoch.is_none() {
                crate::archive::catalog::ChangeIndex::read(self.store)?.mark(
                    self.store,
                    &self.topic,
                    &key,
                    &m.next,
                )?;
            }
        }
        Ok(Some(key))
    }

    /// The objects this run's manifest lists: those of the partitions it commits (those of
    /// partitions taken from it are left, with its marker, to their next owner), and the
    /// objects of gaps it accepted; each once. Returns whether it left any to a next owner.
    fn keep_manifest_objects(&mut self) -> bool {
        let committing: BTreeSet<i32> = self
            .parts
            .iter()
            .filter(|(_, st)| st.next_commit.is_some())
            .map(|(p, _)| *p)
            .collect();
        let gaps = &self.gap_objects;
        let before = self.objects.len();
        self.objects
            .retain(|o| committing.contains(&o.partition) || gaps.contains(&o.key));
        let left_to_next_owner = self.objects.len() < before;
        // An object this run stored for a partition that came back to it after another member
        // committed past it is in that member's manifest already (it adopted it).
        let at_assign = &self.committed_at_assign;
        self.objects.retain(|o| {
            gaps.contains(&o.key)
                || at_assign
                    .get(&o.partition)
                    .copied()
                    .flatten()
                    .is_none_or(|c| o.last_offset >= c)
        });
        // Each object once (a defence: adoption never takes this run's own objects).
        let mut keys = BTreeSet::new();
        self.objects.retain(|o| keys.insert(o.key.clone()));
        left_to_next_owner
    }

    /// Busy (exit 3) when the run committed nothing because the group took its partitions
    /// while it finished, or because other members held every partition with lag.
    fn refuse_if_busy(&self, committed_nothing: bool, others_held_all: bool) -> Result<()> {
        if committed_nothing && !self.handed_over.is_empty() {
            return Err(crate::error::Error::Busy(format!(
                "the group took partitions {:?} of topic {} from this run while it stored its last objects; nothing was committed, and the next run adopts the objects it stored",
                self.handed_over.iter().collect::<Vec<_>>(),
                self.topic
            ))
            .into());
        }
        if others_held_all {
            let parts: Vec<String> = self
                .membership
                .held()
                .iter()
                .map(|h| format!("{} (lag {})", h.partition, h.lag))
                .collect();
            return Err(crate::error::Error::Busy(format!(
                "other members of group {} hold every partition of topic {} that has lag ({}); this run read none and committed nothing",
                self.opts.group,
                self.topic,
                parts.join(", ")
            ))
            .into());
        }
        Ok(())
    }

    /// After the commit: this run's marker goes (unless it left objects to a next owner), and
    /// dead runs' markers whose objects are accounted for.
    fn remove_markers(&self, commits: &[(i32, i64)], left_to_next_owner: bool) {
        // Where the group stands now on each partition this run holds.
        let mut committed: HashMap<i32, i64> = self
            .membership
            .assigned()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((*p, self.committed_at_assign.get(p).copied().flatten()?)))
            .collect();
        committed.extend(commits.iter().copied());
        let keep_own = left_to_next_owner || !self.handed_over.is_empty();
        self.recovery
            .remove_markers(self.membership.holds_all(), &committed, keep_own, self.out);
    }

    /// Stores what is left, the rejects and the manifest, then commits: the order that makes
    /// a crash at any point safe.
    fn finish(
        mut self,
        source: &mut dyn MessageSource,
        started_at: DateTime<Utc>,
        stopped_by: StopReason,
    ) -> Result<IngestSummary> {
        // Whether the run held no partition when it stopped (before a revocation now).
        let held_none = self.membership.holds_none();
        if !self.opts.dry_run {
            source.pause()?;
        }
        self.deferred = Some(VecDeque::new());
        self.store_accepted_gaps()?;
        let part_ids: Vec<i32> = self.parts.keys().copied().collect();
        for p in &part_ids {
            // Markers after the last message read since end-of-partition: the commit moves
            // past them, and the last object accounts for them.
            self.account_to_position(source, *p)?;
            self.flush_partition(*p)?;
        }
        self.finish_uploads(source)?;
        if !self.opts.dry_run {
            self.describe_adopted(source)?;
        }
        let left_to_next_owner = self.keep_manifest_objects();
        if !self.opts.dry_run {
            // Before the manifest: copy finds the schema of every id a manifest lists.
            self.summary.schemas_stored = schemas::store_missing(
                self.store,
                &self.topic,
                &self.objects,
                self.opts.registry.as_ref(),
                &self.schema_seen,
            )?;
        }
        let run_id = self.run_id.clone();
        let rejected_key = self.store_rejected(&run_id)?;
        let commits: Vec<(i32, i64)> = self
            .parts
            .iter()
            .filter_map(|(p, st)| st.next_commit.map(|o| (*p, o)))
            .collect();
        let manifest_key = self.store_manifest(&run_id, started_at, rejected_key, &commits)?;
        if !self.opts.dry_run {
            if crate::failpoint::hit("ingest-before-commit") {
                bail!("failpoint: stopping after storing objects, before committing offsets");
            }
            source.commit(&commits).context(
                "objects are stored but the offset commit failed; the next run recognises them and will not duplicate them",
            )?;
        }
        let held = stopped_by == StopReason::EndOfPartitionsOthersHeld;
        self.refuse_if_busy(commits.is_empty(), held && held_none)?;
        // Accepted gaps move the head too (the group's offsets were moved past them, or were
        // there already), also when the run read nothing after them; so does a lagging head
        // this run found its archive's commits past.
        if !self.opts.dry_run
            && (!commits.is_empty() || !self.head.expired.is_empty() || self.head.repaired)
        {
            self.store_head(&commits, &run_id);
        }
        if !self.opts.dry_run {
            self.remove_markers(&commits, left_to_next_owner);
        }
        let mut sum = self.summary;
        sum.epoch = self.head.epoch;
        sum.expired = self.head.expired.clone();
        if held {
            sum.held_by_others = self.membership.held().to_vec();
        }
        sum.committed = commits.into_iter().collect();
        sum.handed_over = self.handed_over.iter().copied().collect();
        sum.rejected = self.rejected.len() as u64;
        sum.partitions = self.membership.assigned_count();
        sum.objects = self.objects.len();
        sum.object_list = self.objects;
        sum.manifest_key = manifest_key;
        sum.stopped_by = stopped_by;
        sum.seconds = self.started.elapsed().as_secs_f64();
        Ok(sum)
    }
}

/// Runs one bounded ingest over a source and a store.
pub fn run(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    settings: &ArchiveSettings,
    opts: &IngestOptions,
    out: &Output,
) -> Result<IngestSummary> {
    let (uploader, end, results) = upload::channel();
    // A revocation waits until objects of the revoked partitions are stored.
    let waiter = uploader.gate.clone();
    source.set_revoke_barrier(Arc::new(move || waiter.wait_idle()));
    let end = &end;
    let r = std::thread::scope(|s| {
        let mut workers = Vec::new();
        for i in 0..upload::UPLOAD_WORKERS {
            let results = results.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn_scoped(s, move || upload::worker(store, end, results))
                    .context("starting the upload threads")?,
            );
        }
        drop(results);
        let r = run_with(source, store, settings, opts, out, uploader);
        // On success the queue is already closed and drained; on failure, dropping `run_with`'s
        // uploader closed it, and each worker ends after the object it is storing.
        for w in workers {
            if w.join().is_err() {
                return Err(anyhow!("an upload thread panicked"));
            }
        }
        r
    });
    source.set_revoke_barrier(Arc::new(|| {}));
    r
}

fn run_with(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    settings: &ArchiveSettings,
    opts: &IngestOptions,
    out: &Output,
    uploader: Uploader,
) -> Result<IngestSummary> {
    let started_at = Utc::now();
    let now = Instant::now();
    if !opts.dry_run {
        store.check()?;
    }
    let topic = source.topic().to_string();
    let catalog = Catalog::new(store, &topic);
    let run_id = layout::run_id(started_at);
    let head = run_epoch(source, store, &catalog, opts, &run_id, out)?;
    let accepted_gaps = head.expired.clone();
    source.start()?;
    let recovery = Recovery::new(
        store,
        catalog.clone(),
        &settings.key_template,
        opts.full_scan,
        head.epoch,
        &run_id,
    );
    let mut run = Run {
        store,
        catalog,
        settings,
        opts,
        topic,
        out,
        parts: BTreeMap::new(),
        recovery,
        run_id,
        objects: Vec::new(),
        rejected: Vec::new(),
        summary: IngestSummary {
            dry_run: opts.dry_run,
            ..Default::default()
        },
        uploader,
        eof: BTreeSet::new(),
        started: now,
        last_progress: now,
        pb: out.progress(0, "ingest", false),
        membership: Membership::new(source.partitions()?, opts, now),
        head,
        committed_at_assign: Default::default(),
        first_seen: BTreeSet::new(),
        start_at: Default::default(),
        started_at,
        skipped_reason: skipped_reason(source, opts.transactional, out),
        deferred: None,
        handed_over: BTreeSet::new(),
        accepted_gaps,
        gap_objects: BTreeSet::new(),
        schema_seen: Default::default(),
    };
    let stopped_by = run.consume(source)?;
    run.finish(source, started_at, stopped_by)
}

/// The head this run finds and the epoch it archives: a topic's first run catalogues the
/// topics archived before the catalog; `--new-epoch` starts the next epoch,
/// `--resume-from-archive` commits the head's offsets, and `--accept-expired` records expired
/// offsets as gaps (all three move the group's offsets). Then the group's committed offsets
/// must be the archive's ([`epochs::check_committed`]).
fn run_epoch(
    source: &mut dyn MessageSource,
    store: &dyn ObjectStore,
    catalog: &Catalog,
    opts: &IngestOptions,
    run_id: &str,
    out: &Output,
) -> Result<RunEpoch> {
    let head = catalog.head_or_default()?;
    if head == CatalogHead::default() && !opts.dry_run && opts.replay_epoch.is_none() {
        let added = catalog.catalog_legacy_topics()?;
        if !added.is_empty() {
            out.info(&format!(
                "catalogued topics archived before the catalog existed, so copy finds them: {}",
                added.join(", ")
            ));
        }
    }
    let mut head = RunEpoch::new(head, opts.replay_epoch);
    if opts.replay_epoch.is_some() {
        // A replay starts where asked and never commits: no group's offsets are checked.
        return Ok(head);
    }
    if opts.new_epoch && !opts.dry_run {
        start_epoch(source, catalog, &mut head, run_id, out)?;
    }
    if opts.resume_from_archive && !opts.dry_run {
        epochs::resume_from_archive(source, store, catalog, &mut head, &opts.group, out)?;
    }
    if opts.accept_skipped && !opts.dry_run {
        let gaps = epochs::skipped(source, catalog, &mut head, out)?;
        head.accept_expired(gaps);
    }
    if opts.accept_expired && !opts.dry_run {
        // The head moves past the gap: the partition now goes on from its first offset.
        head.accept_expired(accept_expired(source, head.epoch, out)?);
    }
    epochs::check_committed(source, store, catalog, &mut head, &opts.group, out)?;
    Ok(head)
}

/// Why offsets the consumer skips hold no record: in a compacted topic compaction (or
/// markers); with transactional producers (`kafka.transactional`) transaction markers and
/// aborted records. None otherwise: nothing explains a skip then (a broker that did not return
/// them, a truncated log), and it fails the run.
fn skipped_reason(
    source: &dyn MessageSource,
    transactional: bool,
    out: &Output,
) -> Option<HoleReason> {
    let compacted = match source.compacted() {
        Ok(c) => c,
        Err(e) => {
            out.debug(&format!(
                "the topic's cleanup.policy could not be read ({e:#})"
            ));
            None
        }
    };
    match (compacted, transactional) {
        (Some(true), _) => Some(HoleReason::Compacted),
        (_, true) => Some(HoleReason::Marker),
        _ => None,
    }
}

/// The range and prefix of `--replay`, or None for a normal run.
fn replay_plan(a: &IngestArgs) -> Result<Option<(ReplayRange, String)>> {
    if !a.replay {
        return Ok(None);
    }
    // --from-time and --to-time read a time without a zone as UTC.
    let now = chrono::Utc::now();
    let utc = |t: crate::config::TimeSpec| ReplayPoint::Time(t.resolve(now, crate::config::UTC));
    let from = match (a.from_offset, a.from_time) {
        (Some(o), _) => ReplayPoint::Offset(o),
        (None, Some(t)) => utc(t),
        (None, None) => {
            return Err(crate::error::Error::Config(anyhow!(
                "ingest --replay needs --from-offset N or --from-time TIME"
            ))
            .into())
        }
    };
    let to = a.to_offset.map(ReplayPoint::Offset).or(a.to_time.map(utc));
    let prefix = a.prefix.clone().unwrap_or_default();
    Ok(Some((ReplayRange { from, to }, prefix)))
}

/// `--new-epoch`: the group's offsets go to the start of every partition; this run's objects
/// carry the new epoch, so they never collide with the old incarnation's. The head records the
/// new epoch and its start offsets before the offsets are reset: a run killed after the reset
/// finds the head in the new epoch, at the offsets committed, and the next run goes on there.
fn start_epoch(
    source: &mut dyn MessageSource,
    catalog: &Catalog,
    head: &mut RunEpoch,
    run_id: &str,
    out: &Output,
) -> Result<()> {
    let mut starts = Vec::new();
    for p in source.partitions()? {
        starts.push((p, source.watermarks(p)?.0));
    }
    let started = head.start_next_at(&starts, run_id);
    catalog
        .store_head(&started)
        .context("recording the new epoch in the catalog before resetting the group's offsets")?;
    source
        .commit(&starts)
        .context("resetting the group's offsets for the new epoch")?;
    // Test hook: die as kill -9 would, with the offsets reset and nothing else.
    crate::failpoint::crash("ingest-crash-after-epoch-reset");
    out.info(&format!(
        "topic {}: starting epoch {}; every partition is read from its first offset",
        catalog.topic(),
        head.epoch
    ));
    Ok(())
}

/// `--accept-expired`: partitions whose committed offset is below their first offset go on
/// from the first offset; the expired range is recorded in the manifest and the catalog.
fn accept_expired(
    source: &mut dyn MessageSource,
    epoch: i32,
    out: &Output,
) -> Result<Vec<ExpiredGap>> {
    let parts = source.partitions()?;
    let committed = source.committed(&parts)?;
    let mut gaps = Vec::new();
    let mut moves = Vec::new();
    for p in parts {
        let (lo, _) = source.watermarks(p)?;
        if let Some(c) = committed.get(&p).copied().flatten().filter(|&c| c < lo) {
            gaps.push(ExpiredGap {
                epoch,
                partition: p,
                first: c,
                last: lo - 1,
            });
            moves.push((p, lo));
        }
    }
    source
        .commit(&moves)
        .context("moving the group's offsets past the expired range")?;
    for g in &gaps {
        out.warn(&format!(
            "partition {}: offsets {}..{} expired unarchived; recorded as a gap",
            g.partition, g.first, g.last
        ));
    }
    Ok(gaps)
}

/// Total lag over these partitions from committed offsets and high watermarks (display only).
fn lag(source: &dyn MessageSource, ps: &[i32]) -> u64 {
    let committed = source.committed(ps).unwrap_or_default();
    ps.iter()
        .map(|p| {
            let (lo, hi) = source.watermarks(*p).unwrap_or((0, 0));
            let c = committed.get(p).copied().flatten().unwrap_or(lo);
            (hi - c).max(0) as u64
        })
        .sum()
}

/// One partition's position, for --dry-run.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: Option<i64>,
    /// The high watermark as the broker reports it.
    pub end: i64,
    pub lag: i64,
}

/// Per-partition committed offset, end offset and lag, for --dry-run.
pub fn describe_lag(source: &dyn MessageSource, ps: &[i32]) -> Result<Vec<PartitionLag>> {
    let committed = source.committed(ps)?;
    let mut v = Vec::new();
    for p in ps {
        let (lo, hi) = source.watermarks(*p)?;
        let c = committed.get(p).copied().flatten();
        v.push(PartitionLag {
            partition: *p,
            committed: c,
            end: hi,
            lag: (hi - c.unwrap_or(lo)).max(0),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::LocalStore;

    /// Archive settings for a local directory: plain objects, folders per topic.
    pub(super) fn local_archive(dir: &std::path::Path) -> ArchiveSettings {
        ArchiveSettings {
            location: crate::config::ArchiveLocation::Local(dir.to_path_buf()),
            compression: crate::archive::Compression::None,
            max_object_bytes: 1 << 20,
            max_object_records: 0,
            key_template: "{topic}".into(),
            utc_offset_secs: 0,
            retry: Default::default(),
        }
    }

    /// A message source double for what no local broker can produce: a partition whose first
    /// messages expired (retention, DeleteRecords) before the group archived them.
    struct Expired {
        committed: i64,
        low: i64,
        high: i64,
        next: i64,
        started: bool,
        commits: Arc<std::sync::Mutex<Vec<(i32, i64)>>>,
    }

    impl MessageSource for Expired {
        fn topic(&self) -> &str {
            "exp"
        }
        fn start(&mut self) -> Result<()> {
            self.started = true;
            // Like librdkafka's auto.offset.reset=earliest: start at the committed offset, or
            // at the partition's first offset when that is gone.
            let c = self
                .commits
                .lock()
                .unwrap()
                .last()
                .map_or(self.committed, |x| x.1);
            self.next = c.max(self.low);
            Ok(())
        }
        fn poll(&mut self, _t: Duration) -> Result<Event> {
            if self.next == -1 {
                return Ok(Event::Idle);
            }
            if self.next == -2 {
                self.next = -1;
                return Ok(Event::Eof(0));
            }
            if !std::mem::replace(&mut self.started, false) {
                if self.next >= self.high {
                    self.next = -2;
                    return self.poll(_t);
                }
                let o = self.next;
                self.next += 1;
                return Ok(Event::Message(Message {
                    partition: 0,
                    offset: o,
                    timestamp_ms: Some(0),
                    payload: Some(format!("m{o}").into_bytes()),
                }));
            }
            Ok(Event::Assigned(vec![0]))
        }
        fn committed(&self, _: &[i32]) -> Result<std::collections::HashMap<i32, Option<i64>>> {
            let c = self
                .commits
                .lock()
                .unwrap()
                .last()
                .map_or(self.committed, |x| x.1);
            Ok([(0, Some(c))].into_iter().collect())
        }
        fn commit(&self, offsets: &[(i32, i64)]) -> Result<()> {
            self.commits.lock().unwrap().extend_from_slice(offsets);
            Ok(())
        }
        fn watermarks(&self, _: i32) -> Result<(i64, i64)> {
            Ok((self.low, self.high))
        }
        fn partitions(&self) -> Result<Vec<i32>> {
            Ok(vec![0])
        }
    }

    fn expired_run(accept: bool) -> (Result<IngestSummary>, Vec<(i32, i64)>, tempfile::TempDir) {
        expired_run_to(accept, 20)
    }

    fn expired_run_to(
        accept: bool,
        high: i64,
    ) -> (Result<IngestSummary>, Vec<(i32, i64)>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let commits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut src = Expired {
            committed: 5,
            low: 10,
            high,
            next: 0,
            started: false,
            commits: commits.clone(),
        };
        let store = LocalStore::new(dir.path().to_path_buf());
        let archive = local_archive(dir.path());
        let opts = IngestOptions {
            assignment_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            group: "g".into(),
            accept_expired: accept,
            ..Default::default()
        };
        let r = run(&mut src, &store, &archive, &opts, &Output::silent());
        let c = commits.lock().unwrap().clone();
        (r, c, dir)
    }

    /// Accepted expired offsets are an object of their own that holds no record, also when
    /// the run reads nothing of the partition (everything left expired, nothing new): the
    /// ledger's loaded offsets then pass the gap, and the completeness gate is not held back.
    #[test]
    fn an_accepted_gap_is_an_object_of_holes_even_when_nothing_is_read() {
        let (r, commits, dir) = expired_run_to(true, 10);
        let sum = r.unwrap();
        assert_eq!(sum.messages, 0);
        assert_eq!(commits, vec![(0, 10)], "moved past the gap");
        let store = LocalStore::new(dir.path().to_path_buf());
        let manifests = store.list(layout::MANIFESTS).unwrap();
        assert_eq!(manifests.len(), 1);
        let mut body = Vec::new();
        store.get_into(&manifests[0].key, &mut body).unwrap();
        let m: Manifest = serde_json::from_slice(&body).unwrap();
        assert_eq!(m.objects.len(), 1, "{:?}", m.objects);
        let o = &m.objects[0];
        assert_eq!((o.first_offset, o.last_offset, o.records), (5, 9, 0));
        assert_eq!(
            o.holes,
            vec![layout::Hole {
                first: 5,
                last: 9,
                reason: HoleReason::Expired
            }]
        );
        assert_eq!(m.expired.len(), 1);
    }

    #[test]
    fn offsets_that_expired_unarchived_fail_the_run_until_accepted_as_a_recorded_gap() {
        let (r, commits, _dir) = expired_run(false);
        let msg = format!("{:#}", r.unwrap_err());
        assert!(
            msg.contains("partition 0: offsets 5..9 expired before they were archived"),
            "{msg}"
        );
        assert!(msg.contains("--accept-expired"), "{msg}");
        assert!(commits.is_empty(), "committed {commits:?}");

        let (r, commits, dir) = expired_run(true);
        let sum = r.unwrap();
        assert_eq!(sum.messages, 10);
        assert_eq!(
            sum.expired,
            vec![ExpiredGap {
                epoch: 0,
                partition: 0,
                first: 5,
                last: 9
            }]
        );
        // The gap is skipped on purpose (offsets moved to 10), then the run commits its end.
        assert_eq!(commits, vec![(0, 10), (0, 20)]);
        let store = LocalStore::new(dir.path().to_path_buf());
        let manifests = store.list(layout::MANIFESTS).unwrap();
        let mut body = Vec::new();
        store.get_into(&manifests[0].key, &mut body).unwrap();
        let m: Manifest = serde_json::from_slice(&body).unwrap();
        assert_eq!(m.expired, sum.expired, "the gap is in the manifest");
        let head = Catalog::new(&store, "exp").head_or_default().unwrap();
        assert_eq!(head.expired, sum.expired, "and in the catalog");
        assert_eq!(head.next.get(&0), Some(&20));
    }
}

#[cfg(test)]
mod holes {
    //! Offsets that hold no record (transaction markers, aborted transactions, compaction,
    //! tombstones, expiry) through a message source double: librdkafka's mock cluster writes
    //! no transaction markers and has neither compaction nor DeleteRecords.
    use super::tests::local_archive;
    use super::*;
    use crate::archive::layout::Hole;
    use crate::archive::local::LocalStore;
    use std::sync::Mutex;

    /// One partition read as a consumer sees it: the messages at `offsets` (the others hold
    /// no record), end-of-partition with the position at `end`; or, at `expire`, the position
    /// found gone (its offsets expired), after which the partition is not read.
    struct Skipping {
        /// (offset, payload); None: a tombstone.
        messages: Vec<(i64, Option<&'static str>)>,
        end: i64,
        start: i64,
        compacted: Option<bool>,
        /// Offsets first..=last expire when the read reaches `first`.
        expire: Option<(i64, i64)>,
        commits: Arc<Mutex<Vec<(i32, i64)>>>,
        step: usize,
        pos: i64,
        reported: bool,
    }

    impl Skipping {
        fn new(messages: Vec<(i64, Option<&'static str>)>, end: i64, start: i64) -> Self {
            Skipping {
                messages,
                end,
                start,
                compacted: Some(false),
                expire: None,
                commits: Arc::default(),
                step: 0,
                pos: start,
                reported: false,
            }
        }
        fn committed_now(&self) -> i64 {
            self.commits
                .lock()
                .unwrap()
                .last()
                .map_or(self.start, |c| c.1)
        }
    }

    impl MessageSource for Skipping {
        fn topic(&self) -> &str {
            "tx"
        }
        fn start(&mut self) -> Result<()> {
            self.pos = self.committed_now();
            Ok(())
        }
        fn poll(&mut self, _t: Duration) -> Result<Event> {
            self.step += 1;
            if self.step == 1 {
                return Ok(Event::Assigned(vec![0]));
            }
            if let Some((first, last)) = self.expire {
                if (first..=last).contains(&self.pos) {
                    // Like librdkafka under auto.offset.reset=error: reported once, then the
                    // partition is not read until it is moved.
                    if !std::mem::replace(&mut self.reported, true) {
                        return Ok(Event::Expired {
                            partition: 0,
                            first,
                            last,
                        });
                    }
                    return Ok(Event::Idle);
                }
            }
            match self.messages.iter().find(|m| m.0 >= self.pos) {
                Some(&(o, payload)) => {
                    self.pos = o + 1;
                    Ok(Event::Message(Message {
                        partition: 0,
                        offset: o,
                        timestamp_ms: Some(1_700_000_000_000 + o),
                        payload: payload.map(|p| p.as_bytes().to_vec()),
                    }))
                }
                _ if self.pos <= self.end => {
                    // Markers after the last message: the position moves past them.
                    self.pos = self.end + 1;
                    Ok(Event::Eof(0))
                }
                _ => Ok(Event::Idle),
            }
        }
        fn committed(&self, _: &[i32]) -> Result<std::collections::HashMap<i32, Option<i64>>> {
            Ok([(0, Some(self.committed_now()))].into_iter().collect())
        }
        fn commit(&self, offsets: &[(i32, i64)]) -> Result<()> {
            self.commits.lock().unwrap().extend_from_slice(offsets);
            Ok(())
        }
        fn watermarks(&self, _: i32) -> Result<(i64, i64)> {
            Ok((0, self.end))
        }
        fn partitions(&self) -> Result<Vec<i32>> {
            Ok(vec![0])
        }
        fn position(&self, _: i32) -> Option<i64> {
            Some(self.pos.min(self.end))
        }
        fn compacted(&self) -> Result<Option<bool>> {
            Ok(self.compacted)
        }
    }

    /// Options of a run on a topic whose producers use transactions (`kafka.transactional`).
    fn opts(accept_expired: bool) -> IngestOptions {
        IngestOptions {
            assignment_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            group: "g".into(),
            accept_expired,
            transactional: true,
            ..Default::default()
        }
    }

    /// Offsets the consumer skips in a topic that is neither compacted nor declared
    /// transactional have nothing to explain them (a broker that did not return them: tansu
    /// 0.6.0 answers a fetch from the middle of a record batch with the next batch): the run
    /// fails naming them and commits nothing, instead of recording records as holes.
    #[test]
    fn offsets_skipped_with_nothing_to_explain_them_fail_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let archive = local_archive(dir.path());
        let msgs = [0, 1, 2, 6, 7].map(|o| (o, Some("m"))).to_vec();
        let mut src = Skipping::new(msgs, 8, 0);
        let commits = src.commits.clone();
        let plain = IngestOptions {
            transactional: false,
            ..opts(false)
        };
        let err = run(&mut src, &store, &archive, &plain, &Output::silent()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("partition 0: the consumer skipped offsets 3..5")
                && msg.contains("kafka.transactional = true")
                && msg.contains("nothing was committed"),
            "{msg}"
        );
        assert!(commits.lock().unwrap().is_empty());
        // Declared transactional, the same offsets are holes (markers).
        src.step = 0;
        let sum = run(&mut src, &store, &archive, &opts(false), &Output::silent()).unwrap();
        assert_eq!(
            ranges(&sum),
            vec![(0, 7, 5, vec![hole(3, 5, HoleReason::Marker)])]
        );
    }

    /// (first, last, records, holes) of each object, in offset order.
    fn ranges(sum: &IngestSummary) -> Vec<(i64, i64, u64, Vec<Hole>)> {
        let mut v: Vec<_> = sum
            .object_list
            .iter()
            .map(|o| (o.first_offset, o.last_offset, o.records, o.holes.clone()))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    fn hole(first: i64, last: i64, reason: HoleReason) -> Hole {
        Hole {
            first,
            last,
            reason,
        }
    }

    #[test]
    fn offsets_without_a_record_are_holes_of_contiguous_objects_and_the_commit_passes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let mut archive = local_archive(dir.path());
        archive.max_object_records = 3;
        let out = Output::silent();
        // A transactional producer: a commit marker at 3, an aborted transaction 6..7 and its
        // marker 8, a commit marker at 12 after the last record.
        let msgs = [0, 1, 2, 4, 5, 9, 10, 11].map(|o| (o, Some("m"))).to_vec();
        let mut src = Skipping::new(msgs, 13, 0);
        let commits = src.commits.clone();
        let sum = run(&mut src, &store, &archive, &opts(false), &out).unwrap();
        use HoleReason::*;
        assert_eq!(
            ranges(&sum),
            vec![
                (0, 2, 3, vec![]),
                (3, 9, 3, vec![hole(3, 3, Marker), hole(6, 8, Marker)]),
                (10, 12, 2, vec![hole(12, 12, Marker)]),
            ],
            "every offset up to the position is in one object's range"
        );
        assert_eq!(
            *commits.lock().unwrap(),
            vec![(0, 13)],
            "the position is committed"
        );
        let cat = Catalog::new(&store, "tx");
        assert_eq!(cat.head_or_default().unwrap().next.get(&0), Some(&13));

        // Only an aborted transaction since: an object of holes only accounts for it.
        src.end = 18;
        src.step = 0;
        let sum = run(&mut src, &store, &archive, &opts(false), &out).unwrap();
        assert_eq!(ranges(&sum), vec![(13, 17, 0, vec![hole(13, 17, Marker)])]);
        assert_eq!(commits.lock().unwrap().last(), Some(&(0, 18)));
        let o = &sum.object_list[0];
        let mut body = Vec::new();
        store.get_into(&o.key, &mut body).unwrap();
        assert_eq!(o.bytes, body.len() as u64, "stored, with no record");

        // A compacted topic, with a tombstone at an object's edge.
        src.messages = vec![(18, None), (19, Some("a")), (21, Some("b"))];
        src.end = 22;
        src.step = 0;
        src.compacted = Some(true);
        let sum = run(&mut src, &store, &archive, &opts(false), &out).unwrap();
        assert_eq!(
            ranges(&sum),
            vec![(
                18,
                21,
                2,
                vec![hole(18, 18, Tombstone), hole(20, 20, Compacted)]
            )]
        );
        assert_eq!(
            sum.rejected, 1,
            "the tombstone is listed in the rejects file too"
        );

        // What copy knows of each record's offset, from the manifests.
        let mut all = Vec::new();
        for m in store.list(layout::MANIFESTS).unwrap() {
            let man: Manifest = cat.read_manifest(&m.key).unwrap();
            all.extend(man.objects);
        }
        all.sort_by_key(|o| o.first_offset);
        let offsets: Vec<Vec<i64>> = all
            .iter()
            .map(|o| {
                let job = crate::warehouse::LoadJob {
                    range: Some(crate::warehouse::OffsetRange {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        epoch: 0,
                        first: o.first_offset,
                        last: o.last_offset,
                    }),
                    gaps: Some(o.missing()).filter(|m| !m.is_empty()),
                    ..Default::default()
                };
                job.record_offsets(Some(o.records)).expect("known")
            })
            .collect();
        assert_eq!(
            offsets,
            vec![
                vec![0, 1, 2],
                vec![4, 5, 9],
                vec![10, 11],
                vec![],
                vec![19, 21]
            ]
        );
    }

    #[test]
    fn offsets_expiring_under_a_running_read_fail_it_or_are_recorded_with_accept_expired() {
        let msgs: Vec<_> = (10..25).map(|o| (o, Some("m"))).collect();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let archive = local_archive(dir.path());
        let out = Output::silent();
        let mut src = Skipping::new(msgs.clone(), 25, 10);
        src.expire = Some((15, 19));
        let err = run(&mut src, &store, &archive, &opts(false), &out).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("partition 0: offsets 15..19 expired"), "{msg}");
        assert!(msg.contains("--accept-expired"), "{msg}");
        assert!(src.commits.lock().unwrap().is_empty(), "nothing committed");

        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let archive = local_archive(dir.path());
        let mut src = Skipping::new(msgs, 25, 10);
        src.expire = Some((15, 19));
        let sum = run(&mut src, &store, &archive, &opts(true), &out).unwrap();
        assert_eq!(
            ranges(&sum),
            vec![(10, 19, 5, vec![hole(15, 19, HoleReason::Expired)])]
        );
        let gap = ExpiredGap {
            epoch: 0,
            partition: 0,
            first: 15,
            last: 19,
        };
        assert_eq!(sum.expired, vec![gap.clone()]);
        assert_eq!(*src.commits.lock().unwrap(), vec![(0, 20)], "past the gap");
        let cat = Catalog::new(&store, "tx");
        let head = cat.head_or_default().unwrap();
        assert_eq!(head.expired, vec![gap.clone()], "recorded forever");
        let key = store.list(layout::MANIFESTS).unwrap().remove(0).key;
        assert_eq!(cat.read_manifest(&key).unwrap().expired, vec![gap.clone()]);
        // The next run reads on after the gap: the objects follow each other.
        src.step = 0;
        let sum = run(&mut src, &store, &archive, &opts(false), &out).unwrap();
        assert_eq!(ranges(&sum), vec![(20, 24, 5, vec![])]);
        assert_eq!(src.commits.lock().unwrap().last(), Some(&(0, 25)));
        assert_eq!(cat.head_or_default().unwrap().expired, vec![gap]);
    }
}
