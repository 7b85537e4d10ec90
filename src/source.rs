//! The message source: a Kafka consumer (rdkafka) behind a small trait.

use crate::config::KafkaSettings;
use anyhow::{anyhow, bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod msk_iam;

/// librdkafka properties that hold secrets: never shown.
const SECRET_PROPERTIES: [&str; 3] = [
    "sasl.password",
    "ssl.key.password",
    "sasl.oauthbearer.client.secret",
];

/// Consumer settings that `[kafka.properties]` cannot change: offsets are stored and
/// committed only by batchlayer, after the objects are stored, and a run stops at each
/// partition's end.
/// The group protocol is pinned too: ingest's membership reads each assignment as the whole
/// of what the member holds and each revocation as the loss of it (eager rebalancing), which
/// cooperative assignors and the KIP-848 protocol (incremental assignments) do not give.
const PINNED_CONSUMER_PROPERTIES: [&str; 8] = [
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "allow.auto.create.topics",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "group.protocol",
];

/// The client configuration every Kafka client of batchlayer shares: brokers, TLS and SASL,
/// then the extra properties from `[kafka.properties]`.
pub fn client_config(k: &KafkaSettings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &k.brokers)
        .set("log_level", "3");
    let path = |p: &std::path::Path| p.display().to_string();
    // MSK IAM: OAUTHBEARER with tokens from `Ctx` (see `msk_iam`); no user name or password.
    let password = k.sasl_password.as_ref().filter(|_| k.msk_iam.is_none());
    let pairs: [(&str, Option<String>); 8] = [
        ("security.protocol", k.security_protocol.clone()),
        ("sasl.mechanism", k.sasl_mechanism.clone()),
        (
            "sasl.username",
            k.sasl_username.clone().filter(|_| k.msk_iam.is_none()),
        ),
        ("sasl.password", password.map(|s| s.expose().to_string())),
        ("ssl.ca.location", k.ssl_ca_location.as_deref().map(path)),
        (
            "ssl.certificate.location",
            k.ssl_certificate_location.as_deref().map(path),
        ),
        ("ssl.key.location", k.ssl_key_location.as_deref().map(path)),
        (
            "ssl.key.password",
            k.ssl_key_password.as_ref().map(|s| s.expose().to_string()),
        ),
    ];
    for (key, v) in pairs {
        if let Some(v) = v {
            cfg.set(key, v);
        }
    }
    if let Some(check) = k.ssl_endpoint_identification {
        cfg.set(
            "ssl.endpoint.identification.algorithm",
            if check { "https" } else { "none" },
        );
    }
    for (key, v) in &k.properties {
        cfg.set(key, v);
    }
    cfg
}

/// The client configuration as text with secrets masked (for -v and tests).
pub fn describe_config(cfg: &ClientConfig) -> String {
    cfg.config_map()
        .into_iter()
        .map(|(k, val)| {
            if SECRET_PROPERTIES.contains(&k) || k.contains("secret") || k.contains("password") {
                format!("{k}=***")
            } else {
                format!("{k}={val}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The group session timeout (10 s when unset).
fn session_timeout_ms(k: &KafkaSettings) -> u64 {
    match k.session_timeout_secs {
        0 => 10_000,
        n => n * 1000,
    }
}

/// One consumed message, owned.
#[derive(Debug, Clone)]
pub struct Message {
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp in milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// None for a null payload (a tombstone).
    pub payload: Option<Vec<u8>>,
}

/// What a poll can return.
#[derive(Debug)]
pub enum Event {
    Message(Message),
    /// The partition has no more messages right now.
    Eof(i32),
    /// The group gave this consumer these partitions (the whole new assignment).
    Assigned(Vec<i32>),
    /// The group took these partitions away; data not yet committed for them must be dropped.
    Revoked(Vec<i32>),
    /// Offsets `first..=last` of the partition are gone (retention, DeleteRecords) before the
    /// consumer read them: its position fell below the partition's first offset. librdkafka
    /// fetches no more of the partition in this assignment.
    Expired {
        partition: i32,
        first: i64,
        last: i64,
    },
    /// Nothing arrived within the timeout.
    Idle,
}

/// A consumer of one topic in one consumer group.
pub trait MessageSource {
    fn topic(&self) -> &str;
    /// Joins the group (or takes the partitions); called once the sink is known to work, so a
    /// run that cannot store anything never disturbs the group.
    fn start(&mut self) -> Result<()>;
    fn poll(&mut self, timeout: Duration) -> Result<Event>;
    /// Committed offsets (next offset to read) for these partitions; None where nothing is committed.
    fn committed(&self, partitions: &[i32]) -> Result<HashMap<i32, Option<i64>>>;
    /// Where the partitions of the last assignment stood when they were assigned, if the
    /// source looked it up then (taken: a second call answers None).
    fn assigned_positions(&self) -> Option<HashMap<i32, Position>> {
        None
    }
    /// Commits these next-offsets synchronously.
    fn commit(&self, offsets: &[(i32, i64)]) -> Result<()>;
    /// The first message at or after `offset` in `partition` (None: the partition ends
    /// before), read before the run starts, to tell whether the topic holds what the archive
    /// holds at that offset. Sources that cannot say fail.
    fn read_at(&mut self, partition: i32, offset: i64) -> Result<Option<Message>> {
        let _ = (partition, offset);
        bail!("this message source cannot read a single offset")
    }
    /// (low, high) watermarks of a partition. Some brokers report `high` wrongly; use it for display only.
    fn watermarks(&self, partition: i32) -> Result<(i64, i64)>;
    /// Every partition of the topic (assigned to this member or not).
    fn partitions(&self) -> Result<Vec<i32>>;
    /// Where the read of an assigned partition stands: every offset below it was delivered
    /// or holds no message (transaction markers and aborted transactions, compacted
    /// offsets), so a jump past the last message is offsets without a record. None when
    /// unknown.
    fn position(&self, _partition: i32) -> Option<i64> {
        None
    }
    /// Whether the topic is compacted (`cleanup.policy` holds `compact`); None when the
    /// source cannot tell.
    fn compacted(&self) -> Result<Option<bool>> {
        Ok(None)
    }

    /// Leaves and joins the group again, so the coordinator computes a fresh assignment
    /// (some brokers keep a dead member's partitions until someone joins). Sources without
    /// a group do nothing.
    fn rejoin(&mut self) -> Result<()> {
        Ok(())
    }
    /// Registers a function the source calls inside a group revocation, before the revoked
    /// partitions are released to another member. Ingest uses it to finish storing objects
    /// it has queued, so the next owner's archive listing sees them. Sources without a group
    /// never revoke and may ignore it.
    fn set_revoke_barrier(&mut self, _barrier: RevokeBarrier) {}
    /// Stops fetching the assigned partitions (until they are assigned again); polls then
    /// serve the group's events (a revocation, an assignment) and no more messages. Ingest
    /// pauses while it stores its last objects and keeps polling, to stay in the group.
    fn pause(&mut self) -> Result<()> {
        Ok(())
    }
}

/// See [`MessageSource::set_revoke_barrier`].
pub type RevokeBarrier = Arc<dyn Fn() + Send + Sync>;

/// Where an assigned partition stood when it was assigned: the group's committed offset (None:
/// nothing committed) and the partition's first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub committed: Option<i64>,
    pub low: i64,
}

#[derive(Default)]
struct Ctx {
    events: Mutex<Vec<Event>>,
    barrier: Mutex<Option<RevokeBarrier>>,
    /// The positions looked up in the last assignment's callback.
    positions: Mutex<Option<HashMap<i32, Position>>>,
    /// MSK IAM: signs the OAUTHBEARER tokens librdkafka asks for.
    msk: Option<msk_iam::MskTokens>,
}

impl ClientContext for Ctx {
    // librdkafka asks (through an event the consumer's poll serves) for a token when the
    // client starts and again at 80% of the last token's lifetime.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        let Some(msk) = &self.msk else {
            return Err("sasl.mechanism OAUTHBEARER needs kafka.sasl_mechanism = \"AWS_MSK_IAM\" or librdkafka's own token source (sasl.oauthbearer.method = \"oidc\")".into());
        };
        let t = msk.token().map_err(|e| format!("{e:#}"))?;
        Ok(rdkafka::client::OAuthToken {
            token: t.value,
            principal_name: String::new(),
            lifetime_ms: t.expires_at_ms,
        })
    }
}

/// MSK IAM: serves librdkafka's first token request before anything waits on a broker (the
/// request is an event on the consumer's queue, which nothing polls before a metadata
/// request would time out); fails with the signer's reason when no token can be made.
fn first_token(c: &BaseConsumer<Ctx>, brokers: &str) -> Result<()> {
    let Some(msk) = &c.context().msk else {
        return Ok(());
    };
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while msk.issued() == 0 {
        if let Some(e) = msk.last_error() {
            return Err(crate::error::Error::Config(anyhow!(
                "Kafka at {brokers}: no MSK IAM token: {e}"
            ))
            .into());
        }
        if std::time::Instant::now() > give_up {
            bail!("Kafka at {brokers}: librdkafka did not ask for an MSK IAM token within 30 s");
        }
        // Nothing is assigned yet: a poll serves events only.
        let _ = c.poll(Duration::from_millis(50));
    }
    Ok(())
}

/// Looks up where each newly assigned partition stands and gives it its start explicitly:
/// the committed offset, or the first offset where nothing is committed (what
/// `auto.offset.reset=earliest` gives). Left to itself, librdkafka looks the committed
/// offsets up after the assignment and the first offsets after that, which delays the first
/// fetch (measured in bench/notes.md). The elements write through to the list librdkafka
/// assigns right after this callback. None (and the offsets left to librdkafka) when a lookup
/// fails.
fn start_positions<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) -> Option<HashMap<i32, Position>> {
    let wait = Duration::from_secs(10);
    let committed = c.committed_offsets(tpl.clone(), wait).ok()?;
    let mut found = HashMap::new();
    for e in tpl.elements() {
        let committed = match committed
            .find_partition(e.topic(), e.partition())
            .map(|c| c.offset())
        {
            Some(Offset::Offset(o)) if o >= 0 => Some(o),
            _ => None,
        };
        let (low, _) = c.fetch_watermarks(e.topic(), e.partition(), wait).ok()?;
        found.insert(e.partition(), Position { committed, low });
    }
    for mut e in tpl.elements() {
        if matches!(e.offset(), Offset::Invalid | Offset::Stored) {
            let p = found[&e.partition()];
            e.set_offset(Offset::Offset(p.committed.unwrap_or(p.low)))
                .ok()?;
        }
    }
    Some(found)
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            *self.positions.lock().unwrap() = start_positions(c, tpl);
        }
        if let Rebalance::Revoke(tpl) = r {
            // Runs before rdkafka releases the partitions (it unassigns after this returns).
            let barrier = self.barrier.lock().unwrap().clone();
            if let Some(wait) = barrier {
                wait();
            }
            let parts = tpl.elements().iter().map(|e| e.partition()).collect();
            self.events.lock().unwrap().push(Event::Revoked(parts));
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            let parts = tpl.elements().iter().map(|e| e.partition()).collect();
            self.events.lock().unwrap().push(Event::Assigned(parts));
        }
    }
}

pub struct KafkaSource {
    consumer: BaseConsumer<Ctx>,
    /// The client configuration (brokers, TLS, SASL) of the admin client `compacted` uses.
    admin_config: Option<ClientConfig>,
    mode: Mode,
    /// Replay: per partition, the first offset read and the offset it stops before.
    replay: HashMap<i32, (i64, i64)>,
    /// Replay by time: the start time not reached yet (ms; messages before it are passed
    /// over) and the stop time, checked on every message's own timestamp, since brokers'
    /// offset-by-time answers vary (tansu 0.6 answers offset 0 for any time).
    replay_times: HashMap<i32, (Option<i64>, Option<i64>)>,
    topic: String,
    brokers: String,
    timeout: Duration,
    retry: crate::util::RetryPolicy,
    /// A transient failure being retried: its reason and the attempts so far.
    failing: Option<(String, u32)>,
}

/// Errors librdkafka recovers from by itself when the broker comes back.
fn transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    let code = match e {
        KafkaError::MessageConsumption(c) | KafkaError::Global(c) => *c,
        _ => return false,
    };
    matches!(
        code,
        BrokerTransportFailure
            | AllBrokersDown
            | NetworkException
            | RequestTimedOut
            | OperationTimedOut
    )
}

/// How the consumer gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Join the consumer group (ingest).
    Subscribe,
    /// Take every partition at its committed offset without joining (dry-run: changes nothing).
    AssignAll,
    /// Read a range of every partition without joining and never commit (`ingest --replay`):
    /// from an offset or a time, to an offset or a time (exclusive) or the partition's end.
    Replay(ReplayRange),
}

/// Where a replay starts or stops in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayPoint {
    Offset(i64),
    /// The first message with a timestamp at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// The range `ingest --replay` reads: `from` inclusive, `to` exclusive (None: the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRange {
    pub from: ReplayPoint,
    pub to: Option<ReplayPoint>,
}

/// A consumer's settings that exactly-once archiving rests on: the group's offsets, committed
/// by batchlayer alone and only after the objects are stored; an end-of-partition event; no
/// topic created by reading. Every start position is set explicitly (`start_positions`,
/// `start_replay`), so a reset happens only when the position is gone (retention or
/// DeleteRecords passed it while the run read): an error (ERR__AUTO_OFFSET_RESET,
/// `Event::Expired`), never a silent jump to the log start over the expired offsets.
fn reader_config(k: &KafkaSettings) -> ClientConfig {
    let mut cfg = client_config(k);
    cfg.set("group.id", &k.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        .set("allow.auto.create.topics", "false");
    cfg
}

/// A consumer with batchlayer's context (MSK IAM tokens signed in it), its first token in.
fn create_consumer(cfg: &ClientConfig, k: &KafkaSettings) -> Result<BaseConsumer<Ctx>> {
    let ctx = Ctx {
        msk: k.msk_iam.as_ref().map(msk_iam::MskTokens::new),
        ..Ctx::default()
    };
    let c: BaseConsumer<Ctx> = cfg
        .create_with_context(ctx)
        .map_err(|e| anyhow!("creating Kafka consumer for {}: {e}", k.brokers))?;
    first_token(&c, &k.brokers)?;
    Ok(c)
}

/// Where a group stands in many topics at once, from one client that never joins the group:
/// the cluster's topics (one metadata request), the group's committed offsets (one request),
/// and whether each partition holds anything past its committed offset, told by the broker's
/// fetch (end of partition, or a message) as a run's read is: some brokers answer ListOffsets
/// wrong (tansu gives the last batch's base offset plus one), so no end offset is trusted.
/// What a run over many topics reads before it joins the group for the topics with new
/// messages.
#[derive(Debug, Default)]
pub struct GroupOverview {
    /// Every topic of the cluster (the broker's own, `__*`, left out), sorted.
    pub topics: Vec<String>,
    /// Per topic asked for: per partition, the committed offset (None: none) and whether the
    /// partition holds a message at or past it (or could not be told within the wait).
    pub positions: std::collections::BTreeMap<String, Vec<(i32, Option<i64>, bool)>>,
}

impl GroupOverview {
    /// Reads the cluster's topics, and the positions of those `want` takes.
    pub fn read(k: &KafkaSettings, want: &dyn Fn(&str) -> bool) -> Result<GroupOverview> {
        let mut cfg = reader_config(k);
        // One short fetch round: the answer is "end of partition" or the first messages.
        cfg.set("fetch.wait.max.ms", "10")
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "65536")
            .set("queued.max.messages.kbytes", "1024");
        let c = Arc::new(create_consumer(&cfg, k)?);
        let timeout = Duration::from_secs(30);
        let md = c
            .fetch_metadata(None, timeout)
            .map_err(|e| anyhow!("cannot reach Kafka at {}: {e}", k.brokers))?;
        let mut out = GroupOverview::default();
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            if t.name().starts_with("__") || t.error().is_some() {
                continue;
            }
            out.topics.push(t.name().to_string());
            if !want(t.name()) {
                continue;
            }
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
        out.topics.sort();
        if tpl.count() == 0 {
            return Ok(out);
        }
        let committed = c
            .committed_offsets(tpl, timeout)
            .with_context(|| format!("reading group {}'s committed offsets", k.group))?;
        let mut at: Vec<(String, i32, Option<i64>)> = Vec::new();
        let mut assign = TopicPartitionList::new();
        for e in committed.elements() {
            let pos = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            assign.add_partition_offset(
                e.topic(),
                e.partition(),
                pos.map_or(Offset::Beginning, Offset::Offset),
            )?;
            at.push((e.topic().to_string(), e.partition(), pos));
        }
        // Each partition's events on a queue of its own: an end of partition names no topic.
        let mut queues = Vec::with_capacity(at.len());
        for (i, (t, p, _)) in at.iter().enumerate() {
            let q = c
                .split_partition_queue(t, *p)
                .ok_or_else(|| anyhow!("no queue for {t}/{p}"))?;
            queues.push((i, q));
        }
        c.assign(&assign)
            .with_context(|| format!("reading ahead of group {}'s offsets", k.group))?;
        let mut more = vec![true; at.len()];
        // A real broker answers in milliseconds; what is not told by then is "maybe more".
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !queues.is_empty() && std::time::Instant::now() < deadline {
            // The main queue: a message of a partition not split yet, errors, callbacks.
            if let Some(Ok(m)) = c.poll(Duration::ZERO) {
                let key = (m.topic().to_string(), m.partition());
                queues.retain(|(i, _)| (at[*i].0.as_str(), at[*i].1) != (key.0.as_str(), key.1));
            }
            queues.retain(|(i, q)| match q.poll(Duration::ZERO) {
                None => true,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    more[*i] = false;
                    false
                }
                // A message, or an error (an expired offset): the topic's run decides.
                Some(_) => false,
            });
            if !queues.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let _ = c.unassign();
        for (i, (t, p, pos)) in at.into_iter().enumerate() {
            out.positions.entry(t).or_default().push((p, pos, more[i]));
        }
        for v in out.positions.values_mut() {
            v.sort();
        }
        Ok(out)
    }
}

impl KafkaSource {
    pub fn connect(k: &KafkaSettings, mode: Mode) -> Result<Self> {
        if let Some(key) = PINNED_CONSUMER_PROPERTIES
            .iter()
            .find(|p| k.properties.contains_key(**p))
        {
            return Err(crate::error::Error::Config(anyhow!(
                "kafka.properties: {key} is set by batchlayer and cannot be changed (offsets are committed only after the objects are stored)"
            ))
            .into());
        }
        let mut cfg = reader_config(k);
        // Eager rebalancing: every assignment whole, every revocation of all of it.
        cfg.set("partition.assignment.strategy", "range,roundrobin")
            .set("group.protocol", "classic")
            .set("socket.timeout.ms", "10000")
            .set("session.timeout.ms", session_timeout_ms(k).to_string())
            // Bounded runs are short: notice a rebalance quickly.
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", "100")
            // Bound librdkafka's prefetch queue (default 64 MiB); queued.min.messages stays
            // default, for throughput (bench/notes.md).
            .set("queued.max.messages.kbytes", "16384");
        if mode == Mode::AssignAll {
            // Without joining the group (the positions of status and complete-through, audit,
            // ingest --dry-run) every partition's leader is asked at once: connect to the
            // brokers up front. With sparse connections (librdkafka's
            // default) a broker learned from the metadata was connected late, and the first
            // request to it waited about 50 ms (tansu 0.6.0, librdkafka 2.12: 8 ms instead,
            // 12 runs of each; docs/benchmarks.md).
            cfg.set("enable.sparse.connections", "false");
        }
        // `[kafka.properties]` may tune these defaults (the loop in `client_config` ran before
        // them); the settings that exactly-once archiving rests on stay as set above.
        for (key, v) in &k.properties {
            if !PINNED_CONSUMER_PROPERTIES.contains(&key.as_str()) {
                cfg.set(key, v);
            }
        }
        if let Some(id) = &k.group_instance_id {
            // Static membership (KIP-345): a restarted run takes over its partitions at once.
            cfg.set("group.instance.id", id);
        }
        // MSK IAM tokens come from the consumer's context; an admin client has none.
        let admin_config = k.msk_iam.is_none().then(|| client_config(k));
        let consumer = create_consumer(&cfg, k)?;
        let src = KafkaSource {
            consumer,
            admin_config,
            mode,
            replay: HashMap::new(),
            replay_times: HashMap::new(),
            topic: k.topic.clone(),
            brokers: k.brokers.clone(),
            timeout: Duration::from_secs(10),
            retry: k.retry,
            failing: None,
        };
        src.topic_partitions()?;
        Ok(src)
    }

    /// Partitions of the topic; a clear error when the broker is unreachable or the topic is missing.
    pub fn topic_partitions(&self) -> Result<Vec<i32>> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(|e| anyhow!("cannot reach Kafka at {}: {e}", self.brokers))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| anyhow!("topic {} does not exist on {}", self.topic, self.brokers))?;
        if let Some(err) = t.error() {
            let code: RDKafkaErrorCode = err.into();
            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                bail!("topic {} does not exist on {}", self.topic, self.brokers);
            }
            bail!("topic {} on {}: {code}", self.topic, self.brokers);
        }
        if t.partitions().is_empty() {
            bail!(
                "topic {} does not exist on {} (no partitions)",
                self.topic,
                self.brokers
            );
        }
        let mut v: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        v.sort_unstable();
        Ok(v)
    }
}

/// Leaves the group before the consumer is dropped. rdkafka's own drop does the same but
/// waits for the close in 100 ms polls, which every run would pay at its end; this polls in
/// 5 ms steps.
impl Drop for KafkaSource {
    fn drop(&mut self) {
        if self.consumer.close_queue().is_err() {
            return;
        }
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        while !self.consumer.closed() && std::time::Instant::now() < give_up {
            // Messages still queued are dropped; a revocation runs the barrier as usual.
            let _ = self.consumer.poll(Duration::from_millis(5));
        }
    }
}

impl MessageSource for KafkaSource {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn start(&mut self) -> Result<()> {
        match self.mode {
            Mode::Subscribe => self
                .consumer
                .subscribe(&[&self.topic])
                .with_context(|| format!("subscribing to topic {}", self.topic))?,
            Mode::AssignAll => {
                let partitions = self.topic_partitions()?;
                let committed = self.committed(&partitions)?;
                let mut tpl = TopicPartitionList::new();
                for p in &partitions {
                    let off = match committed.get(p).copied().flatten() {
                        Some(o) => Offset::Offset(o),
                        None => Offset::Beginning,
                    };
                    tpl.add_partition_offset(&self.topic, *p, off)?;
                }
                self.consumer.assign(&tpl)?;
                self.consumer
                    .context()
                    .events
                    .lock()
                    .unwrap()
                    .push(Event::Assigned(partitions));
            }
            Mode::Replay(range) => self.start_replay(range)?,
        }
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let ev =
                self.poll_once(deadline.saturating_duration_since(std::time::Instant::now()))?;
            match ev {
                Event::Message(m) if matches!(self.mode, Mode::Replay(_)) => {
                    if let Some(ev) = self.replay_keep(m)? {
                        return Ok(ev);
                    }
                }
                ev => return Ok(ev),
            }
        }
    }

    fn assigned_positions(&self) -> Option<HashMap<i32, Position>> {
        self.consumer.context().positions.lock().unwrap().take()
    }

    fn committed(&self, partitions: &[i32]) -> Result<HashMap<i32, Option<i64>>> {
        if matches!(self.mode, Mode::Replay(_)) {
            // A replay's position is where it starts; no group's offsets are read.
            return Ok(partitions
                .iter()
                .map(|p| (*p, self.replay.get(p).map(|r| r.0)))
                .collect());
        }
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, self.timeout)
            .with_context(|| {
                format!(
                    "reading committed offsets of {} from {}",
                    self.topic, self.brokers
                )
            })?;
        Ok(got
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), o)
            })
            .collect())
    }

    fn commit(&self, offsets: &[(i32, i64)]) -> Result<()> {
        // A replay never moves any group's offsets.
        if offsets.is_empty() || matches!(self.mode, Mode::Replay(_)) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .with_context(|| format!("committing offsets of {} to {}", self.topic, self.brokers))
    }

    fn partitions(&self) -> Result<Vec<i32>> {
        self.topic_partitions()
    }

    fn read_at(&mut self, partition: i32, offset: i64) -> Result<Option<Message>> {
        // Before `start`: the consumer has no assignment and is not in the group.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.consumer
            .assign(&tpl)
            .with_context(|| format!("reading {}/{partition} at offset {offset}", self.topic))?;
        let give_up = std::time::Instant::now() + self.timeout;
        let got = loop {
            if std::time::Instant::now() > give_up {
                break Err(anyhow!(
                    "reading {}/{partition} at offset {offset}: no answer from {} within {} s",
                    self.topic,
                    self.brokers,
                    self.timeout.as_secs()
                ));
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.partition() == partition => break Ok(Some(own(&m))),
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break Ok(None),
                // Out of range (the consumer never resets a position: auto.offset.reset=error):
                // the partition holds no message there.
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    break Ok(None)
                }
                Some(Err(e)) if !transient(&e) => {
                    break Err(anyhow!(
                        "reading {}/{partition} at offset {offset}: {e}",
                        self.topic
                    ))
                }
                _ => {}
            }
        };
        self.consumer
            .unassign()
            .with_context(|| format!("releasing {}/{partition}", self.topic))?;
        got
    }

    fn rejoin(&mut self) -> Result<()> {
        if self.mode == Mode::Subscribe {
            self.consumer.unsubscribe();
            self.consumer
                .subscribe(&[&self.topic])
                .with_context(|| format!("subscribing to topic {}", self.topic))?;
        }
        Ok(())
    }

    fn watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, self.timeout)
            .with_context(|| format!("watermarks of {}/{partition}", self.topic))
    }

    fn position(&self, partition: i32) -> Option<i64> {
        if matches!(self.mode, Mode::Replay(_)) {
            // A replay passes over the messages outside its range, which the position counts.
            return None;
        }
        let tpl = self.consumer.position().ok()?;
        let pos = match tpl.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(o) if o >= 0 => o,
            _ => return None,
        };
        // A message kept back behind a rebalance event counts in librdkafka's position but
        // has not been handed out yet.
        let kept = self
            .consumer
            .context()
            .events
            .lock()
            .unwrap()
            .iter()
            .find_map(|e| match e {
                Event::Message(m) if m.partition == partition => Some(m.offset),
                _ => None,
            });
        Some(kept.map_or(pos, |k| pos.min(k)))
    }

    fn compacted(&self) -> Result<Option<bool>> {
        use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
        let Some(cfg) = &self.admin_config else {
            return Ok(None);
        };
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = cfg
            .create()
            .map_err(|e| anyhow!("creating a Kafka admin client for {}: {e}", self.brokers))?;
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        let res = futures_executor::block_on(
            admin.describe_configs(&[ResourceSpecifier::Topic(&self.topic)], &opts),
        )
        .with_context(|| format!("describing topic {} on {}", self.topic, self.brokers))?;
        let Some(Ok(r)) = res.into_iter().next() else {
            return Ok(None);
        };
        Ok(r.get("cleanup.policy")
            .and_then(|e| e.value.as_deref())
            .map(|v| v.split(',').any(|p| p.trim() == "compact")))
    }

    fn set_revoke_barrier(&mut self, barrier: RevokeBarrier) {
        *self.consumer.context().barrier.lock().unwrap() = Some(barrier);
    }

    fn pause(&mut self) -> Result<()> {
        let assigned = self
            .consumer
            .assignment()
            .with_context(|| format!("reading the assignment of {}", self.topic))?;
        if assigned.count() > 0 {
            self.consumer
                .pause(&assigned)
                .with_context(|| format!("pausing the partitions of {}", self.topic))?;
        }
        Ok(())
    }
}

impl KafkaSource {
    /// One poll of the consumer, rebalance events first.
    fn poll_once(&mut self, timeout: Duration) -> Result<Event> {
        if let Some(ev) = self.take_event() {
            return Ok(ev);
        }
        let r = self.consumer.poll(timeout);
        // A rebalance handled inside this poll comes first: it changes what the message means.
        if let Some(ev) = self.take_event() {
            if let Some(Ok(m)) = &r {
                // Keep the message for after the rebalance events: librdkafka served every
                // callback of this poll before it handed the message out (older fetches are
                // dropped by its version barrier), so the message belongs to the newest
                // assignment. Put before a pending assignment event, it would be read as one
                // of a partition not assigned, and dropped.
                let msg = own(m);
                self.consumer
                    .context()
                    .events
                    .lock()
                    .unwrap()
                    .push(Event::Message(msg));
            }
            return Ok(ev);
        }
        match r {
            None if self.failing.is_some() => self.retry_wait(None),
            None => Ok(Event::Idle),
            Some(Ok(m)) => {
                self.failing = None;
                Ok(Event::Message(own(&m)))
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                self.failing = None;
                Ok(Event::Eof(p))
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                self.failing = None;
                self.expired_event()
            }
            Some(Err(e)) if transient(&e) => self.retry_wait(Some(e.to_string())),
            Some(Err(e)) => Err(anyhow!(
                "consuming {} from {}: {e}",
                self.topic,
                self.brokers
            )),
        }
    }

    /// Replay: whether a message is in the range. A message at or past the stop ends its
    /// partition (end-of-partition, the partition paused); one before the start time is
    /// passed over.
    fn replay_keep(&mut self, m: Message) -> Result<Option<Event>> {
        let p = m.partition;
        if self.replay.get(&p).is_some_and(|r| m.offset >= r.1) {
            return self.replay_done(p).map(Some);
        }
        if let Some((from, to)) = self.replay_times.get_mut(&p) {
            if let (Some(to), Some(ts)) = (*to, m.timestamp_ms) {
                if ts >= to {
                    return self.replay_done(p).map(Some);
                }
            }
            if let Some(f) = *from {
                if m.timestamp_ms.is_none_or(|ts| ts < f) {
                    return Ok(None);
                }
                *from = None;
            }
        }
        Ok(Some(Event::Message(m)))
    }

    /// The offset `point` names in a partition: itself, or the first offset at or after the
    /// time (None when no message is that late).
    fn replay_offset(&self, p: i32, point: ReplayPoint) -> Result<Option<i64>> {
        let ms = match point {
            ReplayPoint::Offset(o) => return Ok(Some(o)),
            ReplayPoint::Time(t) => t.timestamp_millis(),
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Offset(ms))?;
        let got = self
            .consumer
            .offsets_for_times(tpl, self.timeout)
            .with_context(|| format!("finding the offset at {ms} ms in {}/{p}", self.topic))?;
        let found = match got.elements().first().map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => Some(o),
            _ => None,
        };
        tracing::info!(
            "replay of {}/{p}: the first offset at or after {} is {found:?}",
            self.topic,
            chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
        );
        Ok(found)
    }

    /// Assigns every partition at the replay's first offset; a partition with nothing in the
    /// range is at its end at once. A start below the low watermark (expired) is an error.
    /// The stop is the `to` offset or the partition's end-of-partition (not the high
    /// watermark, which some brokers report wrong).
    fn start_replay(&mut self, range: ReplayRange) -> Result<()> {
        let partitions = self.topic_partitions()?;
        let mut tpl = TopicPartitionList::new();
        let mut empty = Vec::new();
        for &p in &partitions {
            let (low, _) = self.watermarks(p)?;
            let ms = |pt: Option<ReplayPoint>| match pt {
                Some(ReplayPoint::Time(t)) => Some(t.timestamp_millis()),
                _ => None,
            };
            self.replay_times
                .insert(p, (ms(Some(range.from)), ms(range.to)));
            // A time start begins at the broker's answer (never later than the first such
            // message) or the partition's start; a time stop is checked on each message.
            let from = match range.from {
                ReplayPoint::Offset(o) => Some(o),
                t => Some(self.replay_offset(p, t)?.unwrap_or(low).max(low)),
            };
            let to = match range.to {
                Some(ReplayPoint::Offset(o)) => o,
                _ => i64::MAX,
            };
            match from {
                Some(from) if from < to => {
                    if from < low {
                        bail!(
                            "replay of {}: partition {p} starts at offset {low} now (offsets below it expired); offset {from} cannot be replayed",
                            self.topic
                        );
                    }
                    self.replay.insert(p, (from, to));
                    tpl.add_partition_offset(&self.topic, p, Offset::Offset(from))?;
                }
                _ => {
                    self.replay.insert(p, (from.unwrap_or(to), to));
                    empty.push(p);
                }
            }
        }
        self.consumer.assign(&tpl)?;
        let mut q = self.consumer.context().events.lock().unwrap();
        q.push(Event::Assigned(partitions));
        q.extend(empty.into_iter().map(Event::Eof));
        Ok(())
    }

    /// A replayed partition reached its stop offset: no more of it is read.
    fn replay_done(&mut self, p: i32) -> Result<Event> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, p);
        self.consumer
            .pause(&tpl)
            .with_context(|| format!("pausing {}/{p} at the end of the replay", self.topic))?;
        Ok(Event::Eof(p))
    }

    /// A transient failure (or a poll that brought nothing while one lasts): waits the
    /// policy's backoff and reports Idle, or gives up once the attempts are used.
    fn retry_wait(&mut self, reason: Option<String>) -> Result<Event> {
        let (why, n) = self.failing.get_or_insert_with(|| (String::new(), 0));
        if let Some(r) = reason {
            *why = r;
        }
        *n += 1;
        if *n >= self.retry.attempts {
            bail!(
                "consuming {} from {}: {why} (gave up after {n} attempts)",
                self.topic,
                self.brokers
            );
        }
        let wait = self.retry.backoff(*n);
        tracing::info!(
            "Kafka at {}: {why}; retrying in {} ms (attempt {} of {})",
            self.brokers,
            wait.as_millis(),
            *n + 1,
            self.retry.attempts
        );
        std::thread::sleep(wait);
        Ok(Event::Idle)
    }

    /// The consumer's position in a partition fell below its first offset (librdkafka's
    /// ERR__AUTO_OFFSET_RESET under `auto.offset.reset=error`, which names neither): the
    /// assigned partition whose position is below its low watermark, and what expired.
    fn expired_event(&mut self) -> Result<Event> {
        let assigned = self
            .consumer
            .assignment()
            .with_context(|| format!("reading the assignment of {}", self.topic))?;
        let parts: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        let committed = self.committed(&parts).unwrap_or_default();
        let mut unknown = Vec::new();
        for p in parts {
            let Some(at) = self
                .position(p)
                .or_else(|| committed.get(&p).copied().flatten())
            else {
                unknown.push(p);
                continue;
            };
            let (low, _) = self.watermarks(p)?;
            if at < low {
                return Ok(Event::Expired {
                    partition: p,
                    first: at,
                    last: low - 1,
                });
            }
        }
        if !unknown.is_empty() {
            bail!(
                "consuming {} from {}: partitions {unknown:?} have no committed offset, and their first offset could not be looked up when they were assigned (auto.offset.reset is error); nothing was committed: run again",
                self.topic,
                self.brokers
            );
        }
        bail!(
            "consuming {} from {}: a partition's read position is not available on the broker (auto offset reset), and no assigned partition is below its first offset",
            self.topic,
            self.brokers
        )
    }

    fn take_event(&self) -> Option<Event> {
        let mut q = self.consumer.context().events.lock().unwrap();
        if q.is_empty() {
            None
        } else {
            Some(q.remove(0))
        }
    }
}

fn own(m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    Message {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        payload: m.payload().map(|p| p.to_vec()),
    }
}

/// The suite every `MessageSource` must pass, given a topic that holds exactly `expected`
/// (partition, payload) messages and a group that has committed nothing. Run against
/// librdkafka's mock cluster (unit test) and tansu (integration test).
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Reads every assigned partition to its end; returns payloads per partition.
    pub fn drain(src: &mut dyn MessageSource) -> BTreeMap<i32, Vec<(i64, Vec<u8>)>> {
        let mut assigned: Option<BTreeSet<i32>> = None;
        let mut eof = BTreeSet::new();
        let mut got: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
        let t0 = std::time::Instant::now();
        while assigned
            .as_ref()
            .is_none_or(|a| !a.iter().all(|p| eof.contains(p)))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no end of partitions within 60s"
            );
            match src.poll(Duration::from_millis(100)).expect("poll") {
                Event::Assigned(ps) => assigned = Some(ps.into_iter().collect()),
                Event::Revoked(_) => assigned = None,
                Event::Eof(p) => {
                    eof.insert(p);
                }
                Event::Message(m) => got
                    .entry(m.partition)
                    .or_default()
                    .push((m.offset, m.payload.unwrap_or_default())),
                Event::Expired {
                    partition,
                    first,
                    last,
                } => panic!("partition {partition}: offsets {first}..{last} expired"),
                Event::Idle => {}
            }
        }
        got
    }

    pub fn run(open: &dyn Fn() -> Box<dyn MessageSource>, expected: &BTreeMap<i32, Vec<Vec<u8>>>) {
        let mut src = open();
        src.start().expect("start");
        let got = drain(src.as_mut());
        let payloads: BTreeMap<i32, Vec<Vec<u8>>> = got
            .iter()
            .map(|(p, v)| (*p, v.iter().map(|x| x.1.clone()).collect()))
            .collect();
        assert_eq!(
            &payloads, expected,
            "messages differ from what was produced"
        );
        for v in got.values() {
            let offs: Vec<i64> = v.iter().map(|x| x.0).collect();
            assert!(
                offs.windows(2).all(|w| w[1] == w[0] + 1),
                "offsets not contiguous: {offs:?}"
            );
        }
        let parts: Vec<i32> = expected.keys().copied().collect();
        assert!(
            src.committed(&parts).unwrap().values().all(|c| c.is_none()),
            "fresh group has commits"
        );
        let ends: Vec<(i32, i64)> = got
            .iter()
            .map(|(p, v)| (*p, v.last().unwrap().0 + 1))
            .collect();
        src.commit(&ends).expect("commit");
        let committed = src.committed(&parts).unwrap();
        for (p, o) in &ends {
            assert_eq!(committed[p], Some(*o), "partition {p}");
        }
        drop(src);
        // A new member of the group starts at the commit: nothing left to read.
        let mut again = open();
        again.start().expect("start");
        let rest = drain(again.as_mut());
        assert!(
            rest.values().all(|v| v.is_empty()),
            "re-read after commit: {rest:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::collections::BTreeMap;

    fn mock_settings(brokers: impl Into<String>, topic: &str, group: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.into(),
            topic: topic.into(),
            group: group.into(),
            stall_timeout_secs: 60,
            ..Default::default()
        }
    }

    fn msk_settings(brokers: String, keys: bool) -> KafkaSettings {
        let nowhere = std::path::PathBuf::from("/nonexistent/batchlayer-test");
        KafkaSettings {
            // The mock cluster speaks no SASL: tokens are asked for and set client-side
            // all the same, which is what these tests look at.
            security_protocol: Some("sasl_plaintext".into()),
            sasl_mechanism: Some("OAUTHBEARER".into()),
            sasl_username: Some("not-sent".into()),
            sasl_password: Some(crate::config::Secret::new("not-sent-either")),
            msk_iam: Some(crate::config::MskIamSettings {
                region: "us-east-1".into(),
                access_key_id: keys.then(|| "AKIDEXAMPLE".into()),
                secret_access_key: keys.then(|| {
                    crate::config::Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
                }),
                session_token: None,
                chain: crate::config::AwsChain {
                    profile: None,
                    credentials_file: nowhere.join("credentials"),
                    config_file: nowhere.join("config"),
                    instance_metadata: false,
                },
            }),
            ..mock_settings(brokers, "msk", "g")
        }
    }

    /// librdkafka's MockCluster implements no SASL (rdkafka_mock_handlers.c has no
    /// SaslHandshake or SaslAuthenticate handler), so no broker checks the token here. What
    /// librdkafka does with it is client-side and is checked: it asks our context for a
    /// token at start, accepts it (a refused or expired token is asked for again only after
    /// 10 s), and asks again at 80% of its lifetime.
    #[test]
    fn librdkafka_asks_for_msk_iam_tokens_and_refreshes_them_before_they_expire() {
        let cluster = MockCluster::new(1).unwrap();
        let k = msk_settings(cluster.bootstrap_servers(), true);
        let mut cfg = client_config(&k);
        let shown = describe_config(&cfg);
        assert!(shown.contains("sasl.mechanism=OAUTHBEARER"), "{shown}");
        assert!(
            !shown.contains("sasl.username") && !shown.contains("sasl.password"),
            "{shown}"
        );
        cfg.set("group.id", "g");
        let ctx = Ctx {
            // Tokens valid 2 s, so refreshes come within the test.
            msk: Some(msk_iam::MskTokens::with_expiry(
                k.msk_iam.as_ref().unwrap(),
                2,
            )),
            ..Ctx::default()
        };
        let consumer: BaseConsumer<Ctx> = cfg.create_with_context(ctx).unwrap();
        let start = std::time::Instant::now();
        first_token(&consumer, &k.brokers).expect("first token");
        let msk = consumer.context().msk.as_ref().unwrap();
        assert_eq!(msk.issued(), 1);
        while msk.issued() < 3 && start.elapsed() < Duration::from_secs(9) {
            let _ = consumer.poll(Duration::from_millis(50));
        }
        let took = start.elapsed();
        assert!(
            msk.issued() >= 3,
            "tokens asked for in {took:?}: {}",
            msk.issued()
        );
        // Two refreshes of a ~2 s token: not at once, and sooner than a refused token's 10 s.
        assert!(took > Duration::from_millis(900), "{took:?}");
        assert!(msk.last_error().is_none());
    }

    #[test]
    fn msk_iam_without_aws_credentials_fails_at_connect_and_says_why() {
        let cluster = MockCluster::new(1).unwrap();
        let k = msk_settings(cluster.bootstrap_servers(), false);
        let err = format!(
            "{:#}",
            KafkaSource::connect(&k, Mode::Subscribe).err().unwrap()
        );
        assert!(err.contains("no MSK IAM token"), "{err}");
        assert!(err.contains("AWS credentials"), "{err}");
    }

    #[test]
    fn properties_tune_the_consumer_but_cannot_change_what_exactly_once_rests_on() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("props", 1, 1).unwrap();
        let mut k = mock_settings(cluster.bootstrap_servers(), "props", "g");
        k.properties
            .insert("enable.auto.commit".into(), "true".into());
        let err = KafkaSource::connect(&k, Mode::Subscribe)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
        let refused = KafkaSource::connect(&k, Mode::Subscribe).err().unwrap();
        assert_eq!(crate::error::code_for(&refused), crate::error::USAGE);
        // Incremental assignments would break the membership's reading of rebalances.
        for (key, v) in [
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("group.protocol", "consumer"),
        ] {
            k.properties.clear();
            k.properties.insert(key.into(), v.into());
            let err = KafkaSource::connect(&k, Mode::Subscribe)
                .err()
                .expect("refused");
            assert!(err.to_string().contains(key), "{err}");
        }
        k.properties.clear();
        // A tuning property overrides ingest's default (an invalid value proves it is applied).
        k.properties
            .insert("fetch.wait.max.ms".into(), "not-a-number".into());
        let err = KafkaSource::connect(&k, Mode::Subscribe)
            .err()
            .expect("invalid value reaches librdkafka")
            .to_string();
        assert!(err.contains("fetch.wait.max.ms"), "{err}");
        k.properties.insert("fetch.wait.max.ms".into(), "50".into());
        assert!(KafkaSource::connect(&k, Mode::Subscribe).is_ok());
    }

    /// Produces the payloads round-robin over the partitions; returns them per partition.
    fn produce_round_robin(
        brokers: &str,
        topic: &str,
        partitions: u32,
        payloads: impl Iterator<Item = Vec<u8>>,
    ) -> BTreeMap<i32, Vec<Vec<u8>>> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        let mut sent: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
        for (i, payload) in payloads.enumerate() {
            let p = (i as u32 % partitions) as i32;
            producer
                .send(
                    BaseRecord::<(), [u8]>::to(topic)
                        .partition(p)
                        .payload(&payload),
                )
                .unwrap();
            sent.entry(p).or_default().push(payload);
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        sent
    }

    #[test]
    fn kafka_source_conforms_on_the_mock_cluster() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("conf", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let expected = produce_round_robin(
            &brokers,
            "conf",
            3,
            (0..300u32).map(|i| format!("msg {i}\nwith newline").into_bytes()),
        );
        let settings = mock_settings(brokers.clone(), "conf", "conf-group");
        conformance::run(
            &|| {
                Box::new(KafkaSource::connect(&settings, Mode::Subscribe).unwrap())
                    as Box<dyn MessageSource>
            },
            &expected,
        );
    }

    #[test]
    fn an_assignment_starts_at_the_committed_offsets_it_looked_up() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("pos", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        produce_round_robin(
            &brokers,
            "pos",
            2,
            (0..20u32).map(|i| format!("m{i}").into_bytes()),
        );
        let settings = mock_settings(brokers, "pos", "pos-group");
        KafkaSource::connect(&settings, Mode::Subscribe)
            .unwrap()
            .commit(&[(0, 7)])
            .unwrap();
        let mut src = KafkaSource::connect(&settings, Mode::Subscribe).unwrap();
        src.start().unwrap();
        let t0 = std::time::Instant::now();
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        let mut positions = None;
        while first.len() < 2 {
            assert!(t0.elapsed() < Duration::from_secs(30), "no messages");
            match src.poll(Duration::from_millis(100)).unwrap() {
                Event::Assigned(_) => positions = src.assigned_positions(),
                Event::Message(m) => {
                    first.entry(m.partition).or_insert(m.offset);
                }
                _ => {}
            }
        }
        let positions = positions.expect("looked up while assigning");
        assert_eq!(
            positions[&0],
            Position {
                committed: Some(7),
                low: 0
            }
        );
        assert_eq!(
            positions[&1],
            Position {
                committed: None,
                low: 0
            }
        );
        assert_eq!(src.assigned_positions(), None, "taken once");
        assert_eq!(first, BTreeMap::from([(0, 7), (1, 0)]));
    }

    #[test]
    fn revocation_waits_for_the_barrier_before_releasing_partitions() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("reb", 4, 1).unwrap();
        let settings = mock_settings(cluster.bootstrap_servers(), "reb", "reb-group");
        let mut a = KafkaSource::connect(&settings, Mode::Subscribe).unwrap();
        let barrier_done: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let done = barrier_done.clone();
        a.set_revoke_barrier(Arc::new(move || {
            // An upload that takes a while.
            std::thread::sleep(Duration::from_millis(1500));
            *done.lock().unwrap() = Some(std::time::Instant::now());
        }));
        a.start().unwrap();
        let t0 = std::time::Instant::now();
        loop {
            assert!(t0.elapsed() < Duration::from_secs(30), "a never assigned");
            if let Event::Assigned(ps) = a.poll(Duration::from_millis(100)).unwrap() {
                assert_eq!(ps.len(), 4);
                break;
            }
        }
        // A second member joins from another thread and records when it gets partitions.
        let s2 = settings.clone();
        let b = std::thread::spawn(move || {
            let mut b = KafkaSource::connect(&s2, Mode::Subscribe).unwrap();
            b.start().unwrap();
            let t0 = std::time::Instant::now();
            loop {
                assert!(t0.elapsed() < Duration::from_secs(60), "b never assigned");
                if let Event::Assigned(ps) = b.poll(Duration::from_millis(50)).unwrap() {
                    if !ps.is_empty() {
                        return std::time::Instant::now();
                    }
                }
            }
        });
        let mut revoked_seen = None;
        while !b.is_finished() {
            assert!(t0.elapsed() < Duration::from_secs(60), "no rebalance");
            if let Event::Revoked(_) = a.poll(Duration::from_millis(50)).unwrap() {
                revoked_seen = Some(std::time::Instant::now());
            }
        }
        let b_assigned = b.join().unwrap();
        let barrier_end = barrier_done.lock().unwrap().expect("barrier never ran");
        assert!(
            revoked_seen.is_some_and(|r| r >= barrier_end),
            "the Revoked event came before the barrier finished"
        );
        assert!(
            b_assigned >= barrier_end,
            "the other member got partitions while the barrier was still running"
        );
    }

    /// librdkafka's mock cluster keeps at most 5 MiB per partition (rdkafka_mock.c drops the
    /// oldest message sets past it): retention that overtakes a lagging read. Under
    /// `auto.offset.reset=earliest` the consumer jumped to the new first offset and the
    /// expired offsets were skipped unseen; now the source names them.
    #[test]
    fn a_read_overtaken_by_retention_names_the_expired_offsets_instead_of_jumping() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("ret", 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let big = vec![b'x'; 300 << 10];
        let send = |n: usize| {
            for _ in 0..n {
                producer
                    .send(
                        BaseRecord::<(), [u8]>::to("ret")
                            .partition(0)
                            .payload(&big[..]),
                    )
                    .unwrap();
                // One message set per message: retention drops whole sets.
                producer.flush(Duration::from_secs(10)).unwrap();
            }
        };
        send(4);
        let mut k = mock_settings(brokers, "ret", "ret-group");
        // A slow reader: one message fetched at a time, nothing queued ahead.
        k.properties
            .insert("queued.max.messages.kbytes".into(), "1".into());
        k.properties
            .insert("max.partition.fetch.bytes".into(), "1".into());
        let mut src = KafkaSource::connect(&k, Mode::Subscribe).unwrap();
        src.start().unwrap();
        let t0 = std::time::Instant::now();
        let mut got: Vec<i64> = Vec::new();
        while got.is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(30), "no message");
            if let Event::Message(m) = src.poll(Duration::from_millis(100)).unwrap() {
                got.push(m.offset);
            }
        }
        send(20);
        let (low, _) = src.watermarks(0).unwrap();
        assert!(low > 3, "the mock kept offsets from {low}");
        let expired = loop {
            assert!(t0.elapsed() < Duration::from_secs(60), "read {got:?}");
            match src.poll(Duration::from_millis(100)).unwrap() {
                Event::Message(m) => {
                    let want = got.last().unwrap() + 1;
                    assert_eq!(
                        m.offset, want,
                        "the read jumped over expired offsets {got:?}"
                    );
                    got.push(m.offset);
                }
                Event::Expired {
                    partition,
                    first,
                    last,
                } => break (partition, first, last),
                Event::Eof(_) => panic!("the end, and no expiry reported: read {got:?}"),
                _ => {}
            }
        };
        assert_eq!(
            expired,
            (0, got.last().unwrap() + 1, low - 1),
            "read {got:?}"
        );
        // Committed past them (what `ingest --accept-expired` does), the next read starts at
        // the first offset left.
        src.commit(&[(0, low)]).unwrap();
        drop(src);
        let mut again = KafkaSource::connect(&k, Mode::Subscribe).unwrap();
        again.start().unwrap();
        let next = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "nothing after the gap"
            );
            if let Event::Message(m) = again.poll(Duration::from_millis(100)).unwrap() {
                break m.offset;
            }
        };
        assert_eq!(next, low);
    }

    #[test]
    fn read_at_gives_the_message_at_an_offset_before_the_run_starts() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("at", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        produce_round_robin(
            &brokers,
            "at",
            2,
            (0..20u32).map(|i| format!("m{i}").into_bytes()),
        );
        let settings = mock_settings(brokers, "at", "at-group");
        let mut src = KafkaSource::connect(&settings, Mode::Subscribe).unwrap();
        let m = src.read_at(1, 3).unwrap().expect("a message");
        assert_eq!((m.partition, m.offset), (1, 3));
        assert_eq!(m.payload.as_deref(), Some(&b"m7"[..]));
        assert!(
            src.read_at(0, 10).unwrap().is_none(),
            "at the partition's end"
        );
        let past = src.read_at(0, 50).unwrap();
        assert!(
            past.as_ref().is_none_or(|m| m.offset < 50),
            "past the end: {past:?}"
        );
        // The run then starts as usual: nothing was committed, the group reads everything.
        assert_eq!(src.committed(&[0, 1]).unwrap()[&0], None);
        src.start().unwrap();
        let got = conformance::drain(&mut src);
        assert_eq!(got.values().map(Vec::len).sum::<usize>(), 20);
    }

    #[test]
    fn missing_topic_is_named() {
        let cluster = MockCluster::new(1).unwrap();
        let settings = mock_settings(cluster.bootstrap_servers(), "absent", "g");
        let err = KafkaSource::connect(&settings, Mode::Subscribe)
            .err()
            .expect("error")
            .to_string();
        assert!(err.contains("topic absent does not exist"), "{err}");
    }
}
