//! Hidden `produce-tweets`: sends N deterministic synthetic tweets (quickstart, tests, benchmarks),
//! as delimited records, JSON, or Avro in the Confluent wire format (the schema registered in
//! the Schema Registry first).

use crate::cli::{ProduceArgs, TweetFormat};
use crate::config::{KafkaSettings, Settings};
use crate::registry::RegistryClient;
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
    pub encoding: Encoding,
    /// Kafka timestamps: the first message's (ms since the epoch) and the span (ms) the
    /// messages are spread over; None: the time each is sent.
    pub timestamps: Option<(i64, i64)>,
}

/// How each tweet becomes a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `Tweet::record`, the tweets layout.
    #[default]
    Delimited,
    /// `Tweet::json`.
    Json,
    /// `Tweet::avro_body` after the Confluent header with this schema id.
    Avro(u32),
}

impl Encoding {
    fn message(self, t: &crate::tweets::Tweet) -> Vec<u8> {
        match self {
            Encoding::Delimited => t.record().into_bytes(),
            Encoding::Json => t.json(),
            Encoding::Avro(id) => crate::records::avro::confluent_frame(id, &t.avro_body()),
        }
    }
}

/// What `produce-tweets` did.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceSummary {
    pub produced: u64,
    pub topic: String,
    /// The id the registry gave the tweets' Avro schema (`--format avro`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<u32>,
}

/// `batchlayer produce-tweets` (hidden): produces, and reports how many.
pub fn exec(a: &ProduceArgs, s: &Settings) -> Result<Report> {
    let kafka = s.require_kafka()?;
    let encoding = match a.format {
        TweetFormat::Delimited => Encoding::Delimited,
        TweetFormat::Json => Encoding::Json,
        TweetFormat::Avro => Encoding::Avro(register_tweet_schema(s, &kafka.topic)?),
    };
    let opts = ProduceOptions {
        count: a.count,
        seed: a.seed,
        locations: a.locations,
        duplicate_every: a.duplicate_every,
        partitions: a.partitions,
        long_locations: a.long_locations,
        encoding,
        timestamps: a.start_time.map(|t| {
            let start = t
                .wall_clock(chrono::Utc::now(), 0)
                .and_utc()
                .timestamp_millis();
            (start, (a.span * 1000) as i64)
        }),
    };
    let n = run(kafka, &opts)?;
    Ok(Report::Produce(ProduceSummary {
        produced: n,
        topic: s.kafka.topic.clone(),
        schema_id: match encoding {
            Encoding::Avro(id) => Some(id),
            _ => None,
        },
    }))
}

/// Registers the tweets' Avro schema under the subject `{topic}-value` (Confluent's default
/// subject name for a topic's values), or finds it registered; returns its id.
fn register_tweet_schema(s: &Settings, topic: &str) -> Result<u32> {
    let Some(r) = &s.schema_registry else {
        return Err(crate::error::Error::config(
            "produce-tweets --format avro registers the tweets' schema: set [schema_registry] url (or BATCHLAYER_SCHEMA_REGISTRY_URL)",
        )
        .into());
    };
    RegistryClient::new(r)?.register(&format!("{topic}-value"), crate::tweets::TWEET_AVRO_SCHEMA)
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
        let rec = o
            .encoding
            .message(&tweet_with(o.seed, i, o.locations, o.long_locations));
        let key = i.to_string();
        let copies = if o.duplicate_every > 0 && i % o.duplicate_every == 0 {
            2
        } else {
            1
        };
        let ts = o.timestamps.map(|(start, span)| {
            start + (i128::from(span) * i128::from(i) / i128::from(o.count.max(1))) as i64
        });
        for _ in 0..copies {
            loop {
                let mut msg = BaseRecord::to(&k.topic).key(&key).payload(&rec);
                if let Some(ts) = ts {
                    msg = msg.timestamp(ts);
                }
                match producer.send(msg) {
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
