//! The physical limit for `ingest`: a bare librdkafka consumer that reads a topic to the end
//! of every partition with a fresh group and throws the data away.
//!   cargo run --release --example bare_consumer -- BROKERS TOPIC [START_OFFSET | --subscribe]
//! It takes the partitions itself (assign, from the beginning); `--subscribe` joins the group
//! and starts at the committed offsets instead, as ingest does.
#![allow(clippy::print_stdout)]

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic) = (&args[1], &args[2]);
    let subscribe = args.get(3).is_some_and(|a| a == "--subscribe");
    let start = args
        .get(3)
        .filter(|_| !subscribe)
        .map(|s| s.parse::<i64>().expect("offset"));
    let group = format!("bare-{}", std::process::id());
    let mut cfg = ClientConfig::new();
    if let Ok(d) = std::env::var("RDKAFKA_DEBUG") {
        cfg.set("debug", d);
    }
    let c: BaseConsumer = cfg
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        let off = start.map(Offset::Offset).unwrap_or(Offset::Beginning);
        tpl.add_partition_offset(topic, *p, off).expect("tpl");
    }
    if subscribe {
        c.subscribe(&[topic]).expect("subscribe");
    } else {
        c.assign(&tpl).expect("assign");
    }
    let t0 = Instant::now();
    let (mut n, mut bytes, mut eof) = (0u64, 0u64, HashSet::new());
    while eof.len() < parts.len() {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload().map(|p| p.len()).unwrap_or(0) as u64;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    // Leave the group before the drop: rdkafka's drop waits for the close in 100 ms polls
    // (0.1 s per run); ingest closes the same way.
    c.close_queue().expect("close");
    while !c.closed() {
        c.poll(Duration::from_millis(5));
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(c);
    println!("{n} messages, {bytes} bytes, {:.3}s", secs);
}
