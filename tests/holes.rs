//! Offsets that hold no record on the real stack (tansu, s3s-fs, PostgreSQL): a transactional
//! producer's markers, and a compacted topic's missing offsets, go through ingest, copy,
//! status and `aggregate --require-complete-through` with nothing stuck, and `audit` is clean.

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

/// A transactional producer (read_committed is librdkafka's default isolation) whose commit
/// markers take offsets no record holds. tansu 0.6.0 writes the markers (control batches)
/// but lists no aborted transactions in its fetch answers, so a read_committed consumer gets
/// an aborted transaction's records too: only committed transactions are produced here.
#[test]
fn a_transactional_producers_markers_leave_nothing_stuck() {
    if !stack_up() {
        return;
    }
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let w = World::s3("holestx");
    let k = batchlayer::config::KafkaSettings {
        brokers: brokers(),
        topic: w.topic.clone(),
        group: "unused".into(),
        stall_timeout_secs: 60,
        ..Default::default()
    };
    batchlayer::commands::produce::create_topic(&k, 2).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", format!("{}-tx", w.topic))
        .set("log_level", "3")
        .create()
        .unwrap();
    let t = Duration::from_secs(30);
    p.init_transactions(t).expect("tansu: InitProducerId");
    let mut next = 0u64;
    let mut txn = |n: u64| {
        p.begin_transaction().unwrap();
        for (i, m) in tweet_range(next..next + n, 3, 5).into_iter().enumerate() {
            let part = (i % 2) as i32;
            let m = m.unwrap();
            p.send(BaseRecord::<(), [u8]>::to(&w.topic).partition(part).payload(&m[..]))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        p.commit_transaction(t).expect("commit");
        next += n;
    };
    for _ in 0..3 {
        txn(10);
    }
    w.run_ok(&["ingest"]);
    let holes: Vec<(i32, i64, i64, HoleReason)> = manifests(&w)
        .iter()
        .flat_map(|m| m.objects.iter())
        .flat_map(|o| o.holes.iter().map(|h| (o.partition, h.first, h.last, h.reason)))
        .collect();
    assert!(
        !holes.is_empty() && holes.iter().all(|h| h.3 == HoleReason::Marker),
        "the markers are holes of the objects: {holes:?}"
    );
    nothing_stuck(&w, "after the first transactions");
    assert_eq!(w.raw_counts(), (30, 30));
    // More transactions: the next run starts after the last marker, and the boundary between
    // the runs holds no gap.
    txn(6);
    txn(4);
    w.run_ok(&["ingest"]);
    nothing_stuck(&w, "after more transactions");
    assert_eq!(w.raw_counts(), (40, 40));
}

/// A consumer of a compacted topic: the records of `inner` but those `removed` says
/// compaction took (their offsets hold no record); the position and the commits are Kafka's.
struct Compacted {
    inner: KafkaSource,
    removed: fn(i64) -> bool,
}

impl MessageSource for Compacted {
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
        Ok(Some(true))
    }
    fn set_revoke_barrier(&mut self, barrier: batchlayer::source::RevokeBarrier) {
        self.inner.set_revoke_barrier(barrier)
    }
}

/// tansu 0.6.0 does not compact: the consumer double hides the offsets compaction would have
/// removed (including the last ones before the end, and a whole run's worth), and ingest runs
/// as a library call on it; copy, status, the gate and audit are the real binary.
#[test]
fn a_compacted_topics_missing_offsets_leave_nothing_stuck() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("holescomp");
    w.extra_toml = "max_object_records = 7\n".into();
    let ingest = |w: &World, removed: fn(i64) -> bool| {
        let s = w.settings();
        let k = s.kafka.clone();
        let mut src = Compacted {
            inner: KafkaSource::connect(&k, Mode::Subscribe).unwrap(),
            removed,
        };
        let store = w.store();
        let opts = batchlayer::commands::ingest::IngestOptions {
            assignment_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            group: k.group.clone(),
            member_wait: Duration::from_secs(30),
            rejoin_after: Duration::from_secs(12),
            ..Default::default()
        };
        let out = batchlayer::output::Output::silent();
        batchlayer::commands::ingest::run(&mut src, store.as_ref(), &s.archive, &opts, &out)
            .unwrap()
    };
    produce_raw(&brokers(), &w.topic, 1, &tweet_payloads(40, 9, 5));
    // Offsets 3, 10, 17, ... and the last two (38, 39) were compacted away.
    let sum = ingest(&w, |o| o % 7 == 3 || o >= 38);
    assert_eq!(sum.messages, 40 - 6 - 2);
    assert_eq!(sum.committed.get(&0), Some(&40), "the position is committed");
    let holes: Vec<(i64, i64, HoleReason)> = manifests(&w)
        .iter()
        .flat_map(|m| m.objects.iter())
        .flat_map(|o| o.holes.iter().map(|h| (h.first, h.last, h.reason)))
        .collect();
    assert!(holes.contains(&(38, 39, HoleReason::Compacted)), "{holes:?}");
    assert_eq!(
        holes.iter().map(|h| h.1 - h.0 + 1).sum::<i64>(),
        8,
        "{holes:?}"
    );
    nothing_stuck(&w, "after the first compacted read");
    assert_eq!(w.raw_counts(), (32, 32));
    // A run whose every new offset was compacted: an object of holes only accounts for them.
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(40..45, 9, 5));
    let sum = ingest(&w, |o| o >= 40);
    assert_eq!(sum.messages, 0);
    assert_eq!(sum.object_list.len(), 1, "{:?}", sum.object_list);
    assert_eq!(sum.object_list[0].records, 0);
    nothing_stuck(&w, "after a read of removed offsets only");
    // And one more with records: loaded through the end again.
    produce_raw(&brokers(), &w.topic, 1, &tweet_range(45..50, 9, 5));
    ingest(&w, |o| o == 45);
    nothing_stuck(&w, "after more records");
    assert_eq!(w.raw_counts(), (36, 36));
}
