//! `audit` on the real stack: a healthy pipeline passes (with `--deep`), and each kind of
//! corruption is found with its exact key or offsets, exit 6: an object deleted, a duplicate
//! (overlapping) range, ledger rows deleted, a gap in the offsets.

use crate::common::*;
use crate::status::healthy;
use batchlayer::archive::layout::Manifest;

fn problems(w: &World, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let mut a = vec!["--json", "audit"];
    a.extend_from_slice(args);
    let (code, out, err) = w.run(&a);
    let r: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    (code, r["problems"].as_array().unwrap().clone(), err)
}

fn kinds(ps: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = ps
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The topic's only manifest (one ingest run) and its key.
fn manifest(w: &World) -> (String, Manifest) {
    let store = w.store();
    let keys: Vec<String> = store
        .list("_manifests/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut body = Vec::new();
    store.get_into(&keys[0], &mut body).unwrap();
    (keys[0].clone(), serde_json::from_slice(&body).unwrap())
}

/// Partition 0's objects in offset order: (key, first, last).
fn partition0(m: &Manifest) -> Vec<(String, i64, i64)> {
    let mut v: Vec<_> = m
        .objects
        .iter()
        .filter(|o| o.partition == 0)
        .map(|o| (o.key.clone(), o.first_offset, o.last_offset))
        .collect();
    v.sort_by_key(|x| x.1);
    v
}

fn delete_ledger_row(w: &World, key: &str) {
    let n = pg()
        .execute(
            &format!("DELETE FROM {}.batchlayer_loads WHERE key = $1", w.schema),
            &[&key],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_healthy_pipeline_passes_the_audit_deep_too() {
    if !stack_up() {
        return;
    }
    let w = healthy("audhealthy", 200);
    let out = w.run_ok(&["audit"]);
    assert!(out.contains("no problems found"), "{out}");
    let r = w.json(&["audit", "--deep"]);
    assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["objects_reread"], 8, "{r}");
    assert_eq!(r["objects_listed"], 8, "{r}");
    assert_eq!(r["manifests_read"], 1, "{r}");
    let parts = r["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{r}");
    for p in parts {
        assert_eq!(p["records"], 100, "{p}");
        assert_eq!(p["objects"], 4, "{p}");
        assert_eq!(
            p["committed"].as_i64().unwrap(),
            p["last_offset"].as_i64().unwrap() + 1,
            "{p}"
        );
    }
    // Archived, not loaded yet: a note, not a problem.
    produce_raw(&brokers(), &w.topic, 2, &tweet_range(200..202, 7, 10));
    w.run_ok(&["ingest"]);
    let r = w.json(&["audit"]);
    assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
    assert!(r["notes"].to_string().contains("not loaded yet"), "{r}");
}

#[test]
fn deleted_objects_are_named() {
    if !stack_up() {
        return;
    }
    let w = healthy("auddeleted", 100);
    let (_, m) = manifest(&w);
    let p0 = partition0(&m);
    let loaded = &p0[1];
    w.store().delete(&loaded.0).unwrap();
    let (code, ps, err) = problems(&w, &[]);
    assert_eq!(code, 6, "{err}");
    assert_eq!(kinds(&ps), vec!["loaded_object_missing"], "{ps:?}");
    assert_eq!(ps[0]["key"], loaded.0.as_str());
    assert_eq!(
        (ps[0]["first"].as_i64(), ps[0]["last"].as_i64()),
        (Some(loaded.1), Some(loaded.2))
    );
    assert!(
        err.contains("inconsistent: audit found 1 problem(s): loaded_object_missing"),
        "{err}"
    );
    // One not loaded yet, deleted too: a manifest entry with no object.
    produce_raw(&brokers(), &w.topic, 2, &tweet_range(100..101, 7, 10));
    w.run_ok(&["ingest"]);
    let fresh = w
        .data_objects()
        .into_iter()
        .find(|k| !m.objects.iter().any(|o| &o.key == k))
        .unwrap();
    w.store().delete(&fresh).unwrap();
    let (code, ps, _) = problems(&w, &[]);
    assert_eq!(code, 6);
    assert_eq!(
        kinds(&ps),
        vec!["loaded_object_missing", "missing_object"],
        "{ps:?}"
    );
    assert!(ps
        .iter()
        .any(|p| p["kind"] == "missing_object" && p["key"] == fresh.as_str()));
}

#[test]
fn a_duplicate_range_is_an_overlap_with_both_keys() {
    if !stack_up() {
        return;
    }
    let w = healthy("auddup", 100);
    let (key, m) = manifest(&w);
    let store = w.store();
    let p0 = partition0(&m);
    // The same offsets stored again under another folder, listed by a second manifest.
    let orig = m.objects.iter().find(|o| o.key == p0[0].0).unwrap().clone();
    let name = orig.key.rsplit('/').next().unwrap();
    let dup_key = format!("{}/2000/01/01/00/{name}", w.topic);
    let mut body = Vec::new();
    store.get_into(&orig.key, &mut body).unwrap();
    store.put_bytes_if_absent(&dup_key, &body).unwrap();
    let mut m2 = m.clone();
    m2.run_id = "20000101T000000.000Z-1".into();
    m2.objects = vec![batchlayer::archive::layout::ObjectEntry {
        key: dup_key.clone(),
        ..orig.clone()
    }];
    let day = key.rsplit('/').nth(1).unwrap();
    let m2_key = format!("_manifests/{}/{day}/29991231T000000.000Z-dup.json", w.topic);
    store
        .put_bytes(&m2_key, &serde_json::to_vec(&m2).unwrap())
        .unwrap();
    let (code, ps, _) = problems(&w, &["--deep"]);
    assert_eq!(code, 6);
    assert_eq!(kinds(&ps), vec!["overlap"], "{ps:?}");
    assert_eq!(
        (ps[0]["first"].as_i64(), ps[0]["last"].as_i64()),
        (Some(orig.first_offset), Some(orig.last_offset))
    );
    let detail = ps[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&orig.key) && detail.contains(&dup_key),
        "{detail}"
    );
}

#[test]
fn deleted_ledger_rows_are_found() {
    if !stack_up() {
        return;
    }
    let w = healthy("audledger", 100);
    let (_, m) = manifest(&w);
    let p0 = partition0(&m);
    delete_ledger_row(&w, &p0[0].0);
    let (code, ps, _) = problems(&w, &[]);
    assert_eq!(code, 6);
    assert_eq!(
        kinds(&ps),
        vec!["not_loaded", "raw_rows_mismatch"],
        "{ps:?}"
    );
    let nl = ps.iter().find(|p| p["kind"] == "not_loaded").unwrap();
    assert_eq!(nl["key"], p0[0].0.as_str());
    let raw = ps
        .iter()
        .find(|p| p["kind"] == "raw_rows_mismatch")
        .unwrap();
    assert!(
        raw["detail"]
            .as_str()
            .unwrap()
            .contains("holds 100 rows but the ledger records 75"),
        "{raw}"
    );
}

#[test]
fn a_gap_in_the_offsets_is_reported_with_its_range() {
    if !stack_up() {
        return;
    }
    // 100 records per partition, 4 objects each: the second one is in the middle.
    let w = healthy("audgap", 200);
    let (key, mut m) = manifest(&w);
    let p0 = partition0(&m);
    let (gone, first, last) = p0[1].clone();
    // The object, its manifest entry and its ledger row all gone: only the offsets tell.
    m.objects.retain(|o| o.key != gone);
    let store = w.store();
    store
        .put_bytes(&key, &serde_json::to_vec(&m).unwrap())
        .unwrap();
    store.delete(&gone).unwrap();
    delete_ledger_row(&w, &gone);
    pg().execute(
        &format!(
            "DELETE FROM {}.batch_raw WHERE ctid IN (SELECT ctid FROM {}.batch_raw LIMIT 25)",
            w.schema, w.schema
        ),
        &[],
    )
    .unwrap();
    let (code, ps, err) = problems(&w, &[]);
    assert_eq!(code, 6, "{err}");
    assert_eq!(kinds(&ps), vec!["gap"], "{ps:?}");
    assert_eq!(
        (
            ps[0]["partition"].as_i64(),
            ps[0]["first"].as_i64(),
            ps[0]["last"].as_i64()
        ),
        (Some(0), Some(first), Some(last))
    );
    let screen = w.run(&["audit"]).1;
    assert!(
        screen.contains(&format!(
            "PROBLEM: gap {}[0]@0 offsets {first}..{last}",
            w.topic
        )),
        "{screen}"
    );
}
