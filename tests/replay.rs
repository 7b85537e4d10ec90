//! `ingest --replay` into a shadow prefix and `copy --prefix --raw-table`: the main group's
//! offsets, archive and tables stay as they were; a replay of an archived range makes the
//! same objects.

use crate::common::*;
use batchlayer::source::{KafkaSource, MessageSource, Mode};
use std::collections::BTreeMap;

fn committed(w: &World) -> BTreeMap<i32, Option<i64>> {
    let src = KafkaSource::connect(&w.kafka(), Mode::AssignAll).unwrap();
    src.committed(&[0, 1]).unwrap().into_iter().collect()
}

/// Every object under `prefix` (prefix stripped) with its bytes.
fn objects_under(w: &World, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let store = w.store();
    store
        .list(prefix)
        .unwrap()
        .into_iter()
        .filter(|o| !o.key[prefix.len()..].starts_with('_'))
        .map(|o| {
            let mut body = Vec::new();
            store.get_into(&o.key, &mut body).unwrap();
            (o.key[prefix.len()..].to_string(), body)
        })
        .collect()
}

#[test]
fn replay_rebuilds_the_same_objects_in_a_shadow_and_loads_them_into_another_table() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("replay");
    w.extra_toml = "max_object_records = 50\n".into();
    // Batches of 50 per partition: tansu's memory engine cannot start a fetch in the middle
    // of a batch (docs/operating.md), and the partial replay below starts at offset 50.
    produce_batched(&brokers(), &w.topic, 2, &tweet_payloads(300, 11, 20), 100);
    w.run_ok(&["ingest"]);
    w.run_ok(&["copy"]);
    let offsets = committed(&w);
    assert_eq!(offsets[&0], Some(150));
    let main_objects = objects_under(&w, "");
    assert_eq!(main_objects.len(), 6);
    let ledger_rows = w.count("batchlayer_loads");

    let s = w.json(&[
        "ingest",
        "--replay",
        "--from-offset",
        "0",
        "--prefix",
        "shadow",
    ]);
    assert_eq!(s["messages"].as_u64(), Some(300), "{s}");
    assert_eq!(committed(&w), offsets, "a replay moved the group's offsets");
    let shadow = objects_under(&w, "shadow/");
    assert_eq!(
        shadow.keys().collect::<Vec<_>>(),
        main_objects.keys().collect::<Vec<_>>(),
        "the replay's object names differ from the archive's"
    );
    for (k, body) in &shadow {
        assert!(body == &main_objects[k], "{k}: the replayed bytes differ");
    }
    // The main archive gained nothing but the shadow folder.
    let after: Vec<String> = objects_under(&w, "")
        .into_keys()
        .filter(|k| !k.starts_with("shadow/"))
        .collect();
    assert_eq!(after, main_objects.keys().cloned().collect::<Vec<_>>());

    let c = w.json(&["copy", "--prefix", "shadow", "--raw-table", "replayed"]);
    assert_eq!(c["rows"].as_u64(), Some(300), "{c}");
    assert_eq!(w.count("replayed"), 300);
    assert_eq!(w.count("replayed_loads"), 6);
    assert_eq!(w.count("batch_raw"), 300, "the main raw table changed");
    assert_eq!(w.count("batchlayer_loads"), ledger_rows);
    // A plain copy afterwards finds nothing new.
    assert_eq!(w.json(&["copy"])["objects"].as_u64(), Some(0));

    // A part of the range, by offsets: [50, 100) of each partition.
    let p = w.json(&[
        "ingest",
        "--replay",
        "--from-offset",
        "50",
        "--to-offset",
        "100",
        "--prefix",
        "part",
    ]);
    assert_eq!(p["messages"].as_u64(), Some(100), "{p}");
    let part = objects_under(&w, "part/");
    assert_eq!(part.len(), 2, "{:?}", part.keys());
    for k in part.keys() {
        assert!(
            k.ends_with(&format!("+{:020}+{:020}.log.gz", 50, 99)),
            "{k}"
        );
        assert_eq!(part[k], main_objects[k], "{k}");
    }
    assert_eq!(committed(&w), offsets);
}

#[test]
fn replay_by_time_and_refusals() {
    if !stack_up() {
        return;
    }
    let w = World::local("replaytime");
    // Two batches an hour apart (Kafka timestamps).
    let t0 = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    produce_at(&brokers(), &w.topic, 2, &tweet_payloads(40, 12, 5), t0);
    produce_at(
        &brokers(),
        &w.topic,
        2,
        &tweet_range(40..100, 12, 5),
        t0 + 3_600_000,
    );
    let s = w.json(&[
        "ingest",
        "--replay",
        "--from-time",
        "2026-01-01T00:30",
        "--prefix",
        "late",
    ]);
    assert_eq!(s["messages"].as_u64(), Some(60), "{s}");
    let s = w.json(&[
        "ingest",
        "--replay",
        "--from-time",
        "2025-12-31",
        "--to-time",
        "2026-01-01T00:30",
        "--prefix",
        "early",
    ]);
    assert_eq!(s["messages"].as_u64(), Some(40), "{s}");
    assert_eq!(committed(&w), BTreeMap::from([(0, None), (1, None)]));
    // Refused with exit 2: no start, a reserved prefix, no prefix, --prefix without --raw-table.
    for args in [
        vec!["ingest", "--replay", "--prefix", "x"],
        vec![
            "ingest",
            "--replay",
            "--from-offset",
            "0",
            "--prefix",
            "_catalog",
        ],
        vec!["ingest", "--replay", "--from-offset", "0"],
        vec!["copy", "--prefix", "x"],
        vec!["copy", "--prefix", "../up", "--raw-table", "t"],
    ] {
        let (code, _, err) = w.run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}
