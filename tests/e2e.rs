//! The whole pipeline, twice: the second run must add nothing.

use crate::common::*;
use batchlayer::tweets::tweet;
use std::collections::{BTreeMap, BTreeSet};

pub(crate) type ViewRow = (Option<String>, i64, i64, i64, i64);

/// The batch view computed in the test from the produced records.
pub(crate) fn expected_view(seed: u64, count: u64, locations: u64) -> Vec<ViewRow> {
    let distinct: BTreeSet<_> = (0..count).map(|i| tweet(seed, i, locations)).collect();
    let mut m: BTreeMap<Option<String>, (i64, i64, i64, i64)> = BTreeMap::new();
    for t in distinct {
        let e = m.entry(t.location.clone()).or_default();
        e.0 += 1;
        e.1 += t.followers_count as i64;
        e.2 += t.favorite_count as i64;
        e.3 += t.retweet_count as i64;
    }
    m.into_iter()
        .map(|(k, v)| (k, v.0, v.1, v.2, v.3))
        .collect()
}

pub(crate) fn actual_view(schema: &str) -> Vec<ViewRow> {
    let mut rows: Vec<ViewRow> = pg()
        .query(
            &format!(
                "SELECT location, count_id, sum_followers_count, sum_favorite_count, sum_retweet_count FROM {schema}.batch_layer"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    rows.sort();
    rows
}

#[test]
fn pipeline_end_to_end_on_real_services_and_second_run_adds_nothing() {
    if !stack_up() {
        return;
    }
    let w = World::s3("e2e");
    let (count, seed, locs) = (3000u64, 7u64, 40u64);
    let produced = w.json(&[
        "produce-tweets",
        "--count",
        &count.to_string(),
        "--seed",
        &seed.to_string(),
        "--locations",
        &locs.to_string(),
        "--duplicate-every",
        "7",
        "--partitions",
        "3",
    ]);
    let sent = produced["produced"].as_u64().unwrap();
    assert!(sent > count, "duplicates were produced: {sent}");

    let ing = w.json(&["ingest"]);
    assert_eq!(ing["messages"].as_u64().unwrap(), sent, "{ing}");
    assert_eq!(
        ing["objects"].as_u64().unwrap(),
        3,
        "one object per partition: {ing}"
    );
    let cp = w.json(&["copy"]);
    assert_eq!(cp["rows"].as_u64().unwrap(), sent, "{cp}");
    assert_eq!(cp["rejects"].as_u64().unwrap(), 0);
    w.json(&["aggregate"]);
    let want = expected_view(seed, count, locs);
    assert_eq!(actual_view(&w.schema), want);

    // Second full run: zero new objects, zero new rows, the same view.
    let objects_before = w.data_objects();
    let ing2 = w.json(&["ingest"]);
    assert_eq!(ing2["messages"].as_u64().unwrap(), 0, "{ing2}");
    assert_eq!(ing2["objects"].as_u64().unwrap(), 0);
    let cp2 = w.json(&["copy"]);
    assert_eq!(cp2["objects"].as_u64().unwrap(), 0, "{cp2}");
    assert_eq!(cp2["rows"].as_u64().unwrap(), 0);
    assert_eq!(w.count("batch_raw"), sent as i64);
    w.json(&["aggregate"]);
    assert_eq!(w.data_objects(), objects_before);
    assert_eq!(actual_view(&w.schema), want);
}

#[test]
fn a_topic_named_with_a_leading_underscore_goes_through_all_three_steps() {
    if !stack_up() {
        return;
    }
    let mut w = World::local("underscore");
    w.topic = format!("_events_{}", w.topic);
    let (count, seed, locs) = (600u64, 13u64, 9u64);
    produce_raw(&brokers(), &w.topic, 2, &tweet_payloads(count, seed, locs));
    let ing = w.json(&["ingest"]);
    assert_eq!(ing["messages"].as_u64(), Some(count), "{ing}");
    let cp = w.json(&["copy"]);
    assert_eq!(cp["rows"].as_u64(), Some(count), "{cp}");
    w.json(&["aggregate"]);
    assert_eq!(actual_view(&w.schema), expected_view(seed, count, locs));
}
