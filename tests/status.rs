//! `status` and `aggregate --require-complete-through` on the real stack: the one screen on a
//! healthy pipeline, thresholds that exit 5 with their reason, `--json` read back, and the
//! completeness gate refusing (naming the partition that holds it back) and then passing.

use crate::common::*;
use std::time::Duration;

/// A pipeline run through once: `n` tweets over 2 partitions, 25 records per object.
pub(crate) fn healthy(name: &str, n: u64) -> World {
    let mut w = World::local(name);
    w.extra_toml = "max_object_records = 25\n".into();
    produce_raw(&brokers(), &w.topic, 2, &tweet_payloads(n, 7, 10));
    w.run_ok(&["ingest"]);
    w.run_ok(&["copy"]);
    w
}

fn ts(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[test]
fn status_on_a_healthy_pipeline_reads_the_catalog_and_passes_its_thresholds() {
    if !stack_up() {
        return;
    }
    let w = healthy("sthealthy", 200);
    let before = chrono::Utc::now();
    w.run_ok(&["aggregate"]);
    let s = w.json(&[
        "status",
        "--max-lag",
        "0",
        "--max-unloaded-age",
        "1h",
        "--max-view-age",
        "1h",
    ]);
    let parts = s["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{s}");
    for p in parts {
        assert_eq!(p["lag"], 0, "{p}");
        // tansu reports the high watermark short (docs/operating.md): never above.
        assert!(p["committed"].as_i64() >= p["end"].as_i64(), "{p}");
        assert_eq!(p["caught_up"], true, "{p}");
        assert_eq!(
            p["loaded_through"].as_i64().unwrap() + 1,
            p["committed"].as_i64().unwrap(),
            "{p}"
        );
        // The newest archived message was produced by this test, a moment ago.
        let newest = ts(&p["newest_archived_at"]);
        assert!(before - newest < chrono::Duration::minutes(5), "{p}");
    }
    assert_eq!(s["archive"]["objects"], 8, "{s}");
    assert_eq!(s["archive"]["unloaded_objects"], 0, "{s}");
    assert!(s["archive"]["oldest_unloaded"].is_null(), "{s}");
    assert_eq!(s["warehouse"]["rows_loaded"], 200, "{s}");
    assert_eq!(s["warehouse"]["rows_rejected"], 0, "{s}");
    let last_load = ts(&s["warehouse"]["last_load_at"]);
    assert!(
        (chrono::Utc::now() - last_load).num_seconds().abs() < 300,
        "{s}"
    );
    let view = &s["views"][0];
    assert_eq!(view["view"], "batch_layer");
    assert_eq!(view["live"]["rows"], 10, "{view}");
    let build = &view["live"]["build"];
    assert!(
        ts(&build["built_at"]) >= before - chrono::Duration::seconds(1),
        "{view}"
    );
    assert_eq!(build["gates"][0]["name"], "min_rows");
    assert_eq!(build["gates"][0]["new"], 10);
    assert_eq!(build["gates"][0]["passed"], true);
    assert!(view["previous"].is_null(), "{view}");
    // Caught up everywhere: complete through (about) now.
    let through = ts(&s["complete_through"]);
    assert!(
        (chrono::Utc::now() - through).num_seconds().abs() < 300,
        "{s}"
    );
    assert!(s["problems"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(s["reads"]["data_object_listings"], 0);

    // A second build: the previous version and its gates are shown.
    w.run_ok(&["aggregate"]);
    let s = w.json(&["status", "--lateness", "10m"]);
    let prev = &s["views"][0]["previous"];
    assert_eq!(prev["table"], "batch_layer__prev", "{s}");
    assert_eq!(prev["rows"], 10);
    assert_eq!(prev["build"]["gates"][0]["passed"], true);
    assert_eq!(s["lateness_secs"], 600);
    let lateness_through = ts(&s["complete_through"]);
    assert!(
        chrono::Utc::now() - lateness_through >= chrono::Duration::minutes(9),
        "{s}"
    );

    let screen = w.run_ok(&["status"]);
    for want in [
        "partition",
        "archive: 8 objects",
        "not loaded: 0 objects",
        "warehouse: 200 rows loaded, 0 rejected",
        "view batch_layer: 10 rows, built",
        "previous batch_layer__prev: 10 rows",
        "min_rows 10 ok",
        "complete through: 20",
        "no listing of data objects",
    ] {
        assert!(screen.contains(want), "{want:?} not in:\n{screen}");
    }
}

#[test]
fn status_thresholds_exit_5_with_the_reason() {
    if !stack_up() {
        return;
    }
    let w = healthy("stthresh", 100);
    // No view yet: a view-age check fails, naming it.
    let (code, out, err) = w.run(&["status", "--max-view-age", "1d"]);
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(
        err.contains("unhealthy: view batch_layer does not exist"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    w.run_ok(&["aggregate"]);
    std::thread::sleep(Duration::from_secs(2));
    let (code, _, err) = w.run(&["status", "--max-view-age", "1"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("view batch_layer was built") && err.contains("more than --max-view-age 1s"),
        "{err}"
    );

    // New messages not yet ingested: lag on partition 0 only.
    produce_raw(&brokers(), &w.topic, 2, &tweet_range(100..101, 7, 10));
    let (code, out, err) = w.run(&["--json", "status", "--max-lag", "0"]);
    assert_eq!(code, 5, "{err}");
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["total_lag"], 1, "{s}");
    assert_eq!(s["problems"].as_array().unwrap().len(), 1, "{s}");
    assert!(
        err.contains("lags 1 messages, more than --max-lag 0 (partition 0: 1)"),
        "{err}"
    );
    assert!(w.run(&["status", "--max-lag", "1"]).0 == 0);

    // Ingested, not loaded: an object waits; its age counts from its manifest.
    w.run_ok(&["ingest"]);
    std::thread::sleep(Duration::from_secs(2));
    let s = w.json(&["status"]);
    assert_eq!(s["archive"]["unloaded_objects"], 1, "{s}");
    let key = s["archive"]["oldest_unloaded"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.contains("+0+"), "{key}");
    assert_eq!(s["partitions"][0]["unloaded_objects"], 1, "{s}");
    assert_eq!(s["partitions"][0]["caught_up"], false, "{s}");
    assert_eq!(s["held_back_by"], serde_json::json!([0]), "{s}");
    let (code, _, err) = w.run(&["status", "--max-unloaded-age", "1"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains(&format!("the oldest, {key}, was stored")),
        "{err}"
    );
    w.run_ok(&["copy"]);
    assert_eq!(
        w.run(&["status", "--max-unloaded-age", "1", "--max-lag", "0"])
            .0,
        0
    );
}

#[test]
fn aggregate_refuses_a_view_that_would_miss_data_and_names_the_partition() {
    if !stack_up() {
        return;
    }
    let w = healthy("stcomplete", 100);
    w.run_ok(&["aggregate"]);
    std::thread::sleep(Duration::from_secs(4));
    // One more message (partition 0), archived but not loaded.
    produce_raw(&brokers(), &w.topic, 2, &tweet_range(100..101, 7, 10));
    w.run_ok(&["ingest"]);
    let (code, _, err) = w.run(&["aggregate", "--require-complete-through", "2s"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("gate require_complete_through"), "{err}");
    assert!(err.contains("held back by partition 0 ("), "{err}");
    assert!(
        !err.contains("partition 1"),
        "partition 1 is complete: {err}"
    );
    assert!(err.contains("1 objects not loaded"), "{err}");
    // Nothing was built or swapped: the live view is the one from before.
    let s = w.json(&["status"]);
    assert!(s["views"][0]["previous"].is_null(), "{s}");
    // The same gate from the config file.
    let mut w = w;
    w.tail_toml = "[aggregate]\nrequire_complete_through = \"2s\"\n".into();
    assert_eq!(w.run(&["aggregate"]).0, 4);
    // Loaded: complete through now, and the view is built with the gate recorded.
    w.run_ok(&["copy"]);
    let a = w.json(&["aggregate", "--require-complete-through", "2s"]);
    assert!(!a["complete_through"].is_null(), "{a}");
    let s = w.json(&["status"]);
    let b = &s["views"][0]["live"]["build"];
    assert!(!b["required_complete_through"].is_null(), "{s}");
    assert_eq!(s["views"][0]["previous"]["table"], "batch_layer__prev");
}
