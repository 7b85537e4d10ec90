//! kill -9 at random moments while data keeps arriving, then each step once to the end: the
//! archive, `batch_raw` and `batch_layer` must equal what a fault-free run gives. Seeded: the
//! seed is printed, and BATCHLAYER_CHAOS_SEED replays it. CI runs a few rounds;
//! BATCHLAYER_CHAOS_ROUNDS=200 runs a long one.

use crate::common::*;
use crate::e2e::{actual_view, expected_view};
use crate::ingest::assert_archive_exact;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// xorshift64*: enough randomness for choosing steps and moments, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn kill_9_at_random_moments_then_one_clean_run_equals_a_fault_free_run() {
    if !stack_up() {
        return;
    }
    let seed: u64 = std::env::var("BATCHLAYER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: u64 = std::env::var("BATCHLAYER_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    eprintln!("chaos: seed {seed}, {rounds} rounds (replay with BATCHLAYER_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let mut w = World::local("chaos");
    w.extra_toml = "max_object_records = 700\n".into();
    w.kafka_toml = "stall_timeout_secs = 20\n".into();
    let (partitions, batch, locations, tweet_seed) = (3i32, 999u64, 25u64, 77u64);
    // Data keeps arriving: batches of distinct tweets (a multiple of the partition count, so
    // the round-robin spread of each batch continues the one before).
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, topic) = (stop.clone(), w.topic.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            // At least two batches, then more until the killing stops.
            while sent < 2 * batch || !stop.load(Ordering::SeqCst) {
                let msgs = tweet_range(sent..sent + batch, tweet_seed, locations);
                produce_raw(&brokers(), &topic, partitions, &msgs);
                sent += batch;
                std::thread::sleep(Duration::from_millis(150));
            }
            sent
        })
    };
    let steps = ["ingest", "copy", "aggregate"];
    let mut killed = 0;
    for round in 0..rounds {
        let step = steps[rng.below(3) as usize];
        let delay = Duration::from_millis(rng.below(900));
        let mut child = w
            .std_cmd()
            .args([step])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let done = child.try_wait().unwrap().is_some();
        if !done {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let status = child.wait().unwrap();
        eprintln!(
            "chaos round {round}: {step} after {delay:?}: {}",
            if done {
                format!("ended ({status})")
            } else {
                "killed".into()
            }
        );
    }
    stop.store(true, Ordering::SeqCst);
    let sent = producer.join().unwrap();
    eprintln!("chaos: {killed} of {rounds} runs killed, {sent} messages produced");

    // One run of each step to the end.
    let t0 = Instant::now();
    let ing = w.json(&["ingest"]);
    let cp = w.json(&["copy"]);
    let agg = w.json(&["aggregate"]);
    eprintln!(
        "chaos: clean runs took {:?}: ingest {} messages ({} skipped), copy {} rows, view {} rows",
        t0.elapsed(),
        ing["messages"],
        ing["skipped"],
        cp["rows"],
        agg["rows"]
    );

    let all = tweet_range(0..sent, tweet_seed, locations);
    // The archive holds every message exactly once, in contiguous objects per partition.
    assert_archive_exact(&w, &all, partitions);
    // batch_raw holds each message once.
    let (rows, distinct) = w.raw_counts();
    assert_eq!((rows, distinct), (sent as i64, sent as i64), "seed {seed}");
    // And the view is the one computed from the produced tweets.
    assert_eq!(
        actual_view(&w.schema),
        expected_view(tweet_seed, sent, locations),
        "seed {seed}"
    );
    // No leftovers of killed aggregates are published.
    let leftovers: i64 = pg()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'batch_layer__new'",
            &[&w.schema],
        )
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "seed {seed}");
}
