//! Offsets that hold no record on the real stack (tansu, s3s-fs, PostgreSQL): a transactional
//! producer's markers and aborted transactions, and a compacted topic's missing offsets, go
//! through ingest, copy, status and `aggregate --require-complete-through` with nothing stuck,
//! and `audit` is clean. Ingest runs as a library call on a consumer double over tansu that
//! hides those offsets (tansu can make neither); copy, status, the gate and audit are the
//! binary.

use crate::common::*;
use batchlayer::archive::layout::{HoleReason, Manifest};
use batchlayer::source::{Event, KafkaSource, Message, MessageSource, Mode};
use std::time::Duration;

/// Every manifest's objects of the world's topic.
fn manifests(w: &World) -> Vec<Manifest> {
    let store = w.store();
    let mut out = Vec::new();
    for o in store.list("_manifests/").unwrap() {
        let mut body = Vec::new();
        store.get_into(&o.key, &mut body).unwrap();
        out.push(serde_json::from_slice(&body).unwrap());
    }
    out
}

/// The chain after a round: every partition caught up (lag 0, loaded without a hole), the
/// completeness gate passes, `audit` finds no problem.
fn nothing_stuck(w: &World, what: &str) {
    w.run_ok(&["copy"]);
    let s = w.json(&["status"]);
    for p in s["partitions"].as_array().unwrap() {
        assert_eq!(p["caught_up"], true, "{what}: {p}");
        assert_eq!(p["lag"], 0, "{what}: {p}");
        assert_eq!(
            p["loaded_through"].as_i64().map(|l| l + 1),
            p["committed"].as_i64(),
            "{what}: loaded without a hole up to the commit: {p}"
        );
    }
    let (code, _, err) = w.run(&["aggregate", "--require-complete-through", "2s"]);
    assert_eq!(code, 0, "{what}: the gate: {err}");
    let (code, out, err) = w.run(&["audit"]);
    assert_eq!(code, 0, "{what}: audit:\n{out}\n{err}");
    assert!(out.contains("no problems found"), "{what}: {out}");
}

/// A consumer that does not see some offsets: the records of `inner` but those `removed`
/// names, as a read_committed consumer skips a transaction's markers and an aborted
/// transaction's records, or a compacted topic's consumer the offsets compaction removed. The
/// position (past them), the commits and the watermarks are Kafka's.
struct Hiding {
    inner: KafkaSource,
    removed: fn(i64) -> bool,
    compacted: bool,
}

impl MessageSource for Hiding {
    fn topic(&self) -> &str {
        self.inner.topic()
    }
    fn start(&mut self) -> anyhow::Result<()> {
        self.inner.start()
    }
    fn poll(&mut self, timeout: Duration) -> anyhow::Result<Event> {
        loop {
            match self.inner.poll(timeout)? {
                Event::Message(Message { offset, .. }) if (self.removed)(offset) => continue,
                ev => return Ok(ev),
            }
        }
    }
    fn committed(
        &self,
        partitions: &[i32],
    ) -> anyhow::Result<std::collections::HashMap<i32, Option<i64>>> {
        self.inner.committed(partitions)
    }
    fn assigned_positions(
        &self,
    ) -> Option<std::collections::HashMap<i32, batchlayer::source::Position>> {
        self.inner.assigned_positions()
    }
    fn commit(&self, offsets: &[(i32, i64)]) -> anyhow::Result<()> {
        self.inner.commit(offsets)
    }
    fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)> {
        self.inner.watermarks(partition)
    }
    fn partitions(&self) -> anyhow::Result<Vec<i32>> {
        self.inner.partitions()
    }
    fn position(&self, partition: i32) -> Option<i64> {
        self.inner.position(partition)
    }
    fn compacted(&self) -> anyhow::Result<Option<bool>> {
        Ok(Some(self.compacted))
    }
    fn set_revoke_barrier(&mut self, barrier: batchlayer::source::RevokeBarrier) {
        self.inner.set_revoke_barrier(barrier)
    }
}

/// Ingest as a library call on a `Hiding` consumer of the world's topic (1 partition).
fn ingest(
    w: &World,
    removed: fn(i64) -> bool,
    compacted: bool,
) -> batchlayer::commands::ingest::IngestSummary {
    let s = w.settings();
    let k = s.kafka.clone();
    let mut src = Hiding {
        inner: KafkaSource::connect(&k, Mode::Subscribe).unwrap(),
        removed,
        compacted,
    };
    let store = w.store();
    let opts = batchlayer::commands::ingest::IngestOptions {
        assignment_timeout: Duration::from_secs(60),
        stall_timeout: Duration::from_secs(60),
        group: k.group.clone(),
        member_wait: Duration::from_secs(30),
        rejoin_after: Duration::from_secs(12),
        // `kafka.transactional` from the world's config file.
        transactional: s.kafka.transactional,
        ..Default::default()
    };
    let out = batchlayer::output::Output::silent();
    batchlayer::commands::ingest::run(&mut src, store.as_ref(), &s.archive, &opts, &out).unwrap()
}

/// The holes the manifests list: (first, last, reason).
fn holes(w: &World) -> Vec<(i64, i64, HoleReason)> {
    let mut v: Vec<_> = manifests(w)
        .iter()
        .flat_map(|m| m.objects.iter())
        .flat_map(|o| o.holes.iter().map(|h| (h.first, h.last, h.reason)))
        .collect();
    v.sort_by_key(|h| h.0);
    v
}

/// A transactional producer's offsets as a read_committed consumer reads them: a commit
/// marker after every 6 records, an aborted transaction (its records and its marker), and a
/// marker as the partition's last offset. librdkafka's transactional producer cannot write
/// them on the local stack (tansu 0.6.0 answers "EndTxnRequest (KIP-98) not supported by
/// broker"; librdkafka's mock cluster writes no markers and filters no aborted transaction),
/// so plain records are produced and the consumer double hides the offsets a transactional
/// topic would not deliver.
#[test]
fn a_transactional_producers_markers_and_aborts_leave_nothing_stuck() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("holestx");
    w.extra_toml = "max_object_records = 7\n".into();
    // The producers use transactions: the offsets the consumer skips are markers and aborts.
    w.kafka_toml = "transactional = true\n".into();
    produce_raw(&brokers(), &w.topic, 1, &tweet_payloads(40, 5, 5));
    // Markers at 6, 13, 20, 34 (every 7th offset); an aborted transaction at 21..26 and its
    // marker 27; the last offset (39) is a commit marker.
    let sum = ingest(
        &w,
        |o| o % 7 == 6 || (21..=27).contains(&o) || o == 39,
        false,
    );
    let hidden = 1 + 1 + 1 + 7 + 1 + 1; // 6, 13, 20, 21..=27, 34, 39
    assert_eq!(sum.messages, 40 - hidden);
    assert_eq!(
        sum.committed.get(&0),
        Some(&40),
        "the position is committed"
    );
    let h = holes(&w);
    assert!(h.iter().all(|x| x.2 == HoleReason::Marker), "{h:?}");
    assert!(h.contains(&(20, 27, HoleReason::Marker)), "{h:?}");
    assert!(h.contains(&(39, 39, HoleReason::Marker)), "{h:?}");
    assert_eq!(h.iter().map(|x| x.1 - x.0 + 1).sum::<i64>() as u64, hidden);
    nothing_stuck(&w, "after the first transactions");
    assert_eq!(w.raw_counts(), (28, 28));
    // Only an aborted transaction since (records 40..43, marker 44): an object of holes only.
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(40..45, 5, 5));
    let sum = ingest(&w, |o| o >= 40, false);
    assert_eq!(sum.messages, 0);
    assert_eq!(sum.object_list.len(), 1, "{:?}", sum.object_list);
    assert_eq!(
        (
            sum.object_list[0].first_offset,
            sum.object_list[0].last_offset
        ),
        (40, 44)
    );
    assert_eq!(sum.object_list[0].records, 0);
    nothing_stuck(&w, "after an aborted transaction alone");
    // A committed one, archived but not loaded yet: the loaded prefix ends with the object of
    // holes only, and its time is that of the newest record loaded (the object before it).
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(45..50, 5, 5));
    ingest(&w, |o| o == 49, false);
    let newest_loaded = manifests(&w)
        .iter()
        .flat_map(|m| m.objects.iter())
        .filter(|o| o.last_offset <= 44 && o.records > 0)
        .filter_map(|o| o.max_timestamp_ms)
        .max()
        .unwrap();
    let s = w.json(&["status"]);
    let p = &s["partitions"][0];
    assert_eq!(p["loaded_through"], 44, "{p}");
    let at = chrono::DateTime::parse_from_rfc3339(p["loaded_through_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!(at, newest_loaded, "{p}");
    nothing_stuck(&w, "after one more transaction");
    assert_eq!(w.raw_counts(), (32, 32));
}

/// tansu 0.6.0 does not compact: the consumer double hides the offsets compaction would have
/// removed (including the last ones before the end, and a whole run's worth).
#[test]
fn a_compacted_topics_missing_offsets_leave_nothing_stuck() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("holescomp");
    w.extra_toml = "max_object_records = 7\n".into();
    produce_raw(&brokers(), &w.topic, 1, &tweet_payloads(40, 9, 5));
    // Offsets 3, 10, 17, 24, 31 and the last two (38, 39) were compacted away.
    let sum = ingest(&w, |o| o % 7 == 3 || o >= 38, true);
    assert_eq!(sum.messages, 40 - 7);
    assert_eq!(
        sum.committed.get(&0),
        Some(&40),
        "the position is committed"
    );
    let h = holes(&w);
    assert!(h.contains(&(38, 39, HoleReason::Compacted)), "{h:?}");
    assert!(h.iter().all(|x| x.2 == HoleReason::Compacted), "{h:?}");
    assert_eq!(h.iter().map(|x| x.1 - x.0 + 1).sum::<i64>(), 7, "{h:?}");
    nothing_stuck(&w, "after the first compacted read");
    assert_eq!(w.raw_counts(), (33, 33));
    // A run whose every new offset was compacted: an object of holes only accounts for them.
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(40..45, 9, 5));
    let sum = ingest(&w, |o| o >= 40, true);
    assert_eq!(sum.messages, 0);
    assert_eq!(sum.object_list.len(), 1, "{:?}", sum.object_list);
    assert_eq!(sum.object_list[0].records, 0);
    nothing_stuck(&w, "after a read of removed offsets only");
    // And one more with records: loaded through the end again.
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(45..50, 9, 5));
    ingest(&w, |o| o == 45, true);
    nothing_stuck(&w, "after more records");
    assert_eq!(w.raw_counts(), (37, 37));
}
