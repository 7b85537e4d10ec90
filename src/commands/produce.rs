//! Hidden `produce-tweets`: sends N deterministic synthetic tweets (quickstart, tests, benchmarks).

use crate::cli::ProduceArgs;
use crate::config::{KafkaSettings, Settings};
use crate::report::Report;
use crate::tweets::tweet_with;
use anyhow::{anyhow, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counts failed deliveries so a lost message fails the run instead of vanishing.
#[derive(Default)]
struct Counting {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error
                .lock()
                .unwrap()
                .get_or_insert_with(|| e.to_string());
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub count: u64,
    pub seed: u64,
    pub locations: u64,
    pub duplicate_every: u64,
    pub partitions: Option<i32>,
    pub long_locations: bool,
}

/// What `produce-tweets` did.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceSummary {
    pub produced: u64,
    pub topic: String,
}

/// `batchlayer produce-tweets` (hidden): produces, and reports how many.
pub fn exec(a: &ProduceArgs, s: &Settings) -> Result<Report> {
    let opts = ProduceOptions {
        count: a.count,
        seed: a.seed,
        locations: a.locations,
        duplicate_every: a.duplicate_every,
        partitions: a.partitions,
        long_locations: a.long_locations,
    };
    let n = run(s.require_kafka()?, &opts)?;
    Ok(Report::Produce(ProduceSummary {
        produced: n,
        topic: s.kafka.topic.clone(),
    }))
}

fn client_config(k: &KafkaSettings) -> Result<ClientConfig> {
    if k.msk_iam.is_some() {
        // Its producer and admin clients have no token callback (only ingest's consumer has).
        anyhow::bail!("produce-tweets does not support kafka.sasl_mechanism = \"AWS_MSK_IAM\"");
    }
    Ok(crate::source::client_config(k))
}

/// Creates the topic unless it exists.
pub fn create_topic(k: &KafkaSettings, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(k)?
        .create()
        .context("creating Kafka admin client")?;
    let topic = NewTopic::new(&k.topic, partitions, TopicReplication::Fixed(1));
    let res = futures_executor::block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .map_err(|e| anyhow!("creating topic {} on {}: {e}", k.topic, k.brokers))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(anyhow!("creating topic {t} on {}: {e}", k.brokers)),
        }
    }
    Ok(())
}

/// Produces the tweets; returns how many messages were sent (duplicates included).
pub fn run(k: &KafkaSettings, o: &ProduceOptions) -> Result<u64> {
    if let Some(p) = o.partitions {
        create_topic(k, p)?;
    }
    let producer: ThreadedProducer<Counting> = client_config(k)?
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("compression.type", "none")
        .create_with_context(Counting::default())
        .context("creating Kafka producer")?;
    let mut sent = 0u64;
    for i in 0..o.count {
        let rec = tweet_with(o.seed, i, o.locations, o.long_locations).record();
        let key = i.to_string();
        let copies = if o.duplicate_every > 0 && i % o.duplicate_every == 0 {
            2
        } else {
            1
        };
        for _ in 0..copies {
            loop {
                match producer.send(BaseRecord::to(&k.topic).key(&key).payload(&rec)) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        return Err(anyhow!("producing to {} on {}: {e}", k.topic, k.brokers))
                    }
                }
            }
            sent += 1;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| anyhow!("flushing producer to {}: {e}", k.brokers))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer
            .context()
            .first_error
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default();
        return Err(anyhow!(
            "{failed} of {sent} messages to {} were not delivered: {first}",
            k.topic
        ));
    }
    Ok(sent)
}
