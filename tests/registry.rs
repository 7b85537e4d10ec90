//! Avro-framed topics and the Schema Registry at ingest, on the real stack (tansu, s3s-fs) with
//! the registry stand-in (tests/registry_standin.py): the schemas land in the archive before
//! the manifest, the manifest lists each object's schema ids, an id the registry cannot serve
//! (or a registry that is gone or refuses the credentials) fails the run before any commit,
//! and ids already archived need no registry.
//!
//! The messages need no Avro encoder: ingest reads only the 5-byte header; any body does.

use crate::common::*;
use crate::ingest::assert_archive_exact;
use batchlayer::archive::layout::{Manifest, StoredSchema};
use batchlayer::config::{RegistrySettings, Secret};
use batchlayer::registry::standin::RegistryStandIn;
use batchlayer::registry::{framed_schema_id, RegistryClient};
use batchlayer::source::{KafkaSource, MessageSource, Mode};
use std::collections::BTreeSet;

/// The stand-in tests/stack.sh keeps on :8081 (shared by the tests: ids are global there).
fn shared_registry() -> Option<String> {
    let url = env_or("BATCHLAYER_TEST_SCHEMA_REGISTRY", "http://127.0.0.1:8081");
    let addr = url.trim_start_matches("http://").to_string();
    if std::net::TcpStream::connect(&addr).is_ok() {
        return Some(url);
    }
    if std::env::var_os("BATCHLAYER_REQUIRE_SERVICES").is_some() {
        panic!("the schema registry stand-in is not running on {url} (run tests/stack.sh)");
    }
    eprintln!("SKIPPED: no schema registry stand-in on {url} (run tests/stack.sh)");
    None
}

fn client(url: &str, auth: Option<(&str, &str)>) -> RegistryClient {
    RegistryClient::new(&RegistrySettings {
        url: url.into(),
        username: auth.map(|a| a.0.to_string()),
        password: auth.map(|a| Secret::new(a.1)),
        bearer_token: None,
        ca_file: None,
        retry: Default::default(),
    })
    .unwrap()
}

/// A record schema of its own name (so a shared registry gives it an id of its own).
fn schema(name: &str) -> String {
    format!(
        r#"{{"type":"record","name":"{name}","namespace":"batchlayer.test","fields":[{{"name":"id","type":"long"}}]}}"#
    )
}

/// A message in the Confluent wire format: magic byte 0, the id, then a body (not Avro: ingest
/// reads only the header).
fn framed(id: u32, body: &str) -> Option<Vec<u8>> {
    let mut m = vec![0u8];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(body.as_bytes());
    Some(m)
}

/// A world of Avro records whose config names this registry (and a quick retry policy).
fn world(name: &str, registry: &str) -> World {
    let mut w = World::s3(name);
    w.tail_toml = format!(
        "[records]\nformat = \"avro\"\n[[records.columns]]\nname = \"id\"\ntype = \"bigint\"\n\
         [schema_registry]\nurl = \"{registry}\"\n[retry]\nattempts = 2\ninitial_backoff_ms = 20\n"
    );
    w
}

fn committed(w: &World, parts: &[i32]) -> Vec<Option<i64>> {
    let src = KafkaSource::connect(&w.kafka(), Mode::Subscribe).unwrap();
    let c = src.committed(parts).unwrap();
    parts.iter().map(|p| c[p]).collect()
}

fn manifests(w: &World) -> Vec<Manifest> {
    let store = w.store();
    let mut keys: Vec<String> = store
        .list("_manifests/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys.iter()
        .map(|k| batchlayer::archive::catalog::read_manifest(store.as_ref(), k).unwrap())
        .collect()
}

fn stored_schema(w: &World, id: u32) -> Option<StoredSchema> {
    batchlayer::archive::catalog::read_schema(w.store().as_ref(), id).unwrap()
}

/// The schema ids of an archived object's records, read back from its bytes.
fn ids_in_object(w: &World, key: &str) -> Vec<u32> {
    let store = w.store();
    let f = batchlayer::archive::download(store.as_ref(), key, None).unwrap();
    let c = batchlayer::archive::Compression::from_key(key).unwrap();
    let mut r = batchlayer::records::FrameReader::new(batchlayer::archive::decoder(f, c).unwrap());
    let (mut ids, mut rec) = (BTreeSet::new(), Vec::new());
    while r.next_into(&mut rec).unwrap() {
        ids.extend(framed_schema_id(&rec));
    }
    ids.into_iter().collect()
}

#[test]
fn avro_framed_messages_bring_their_schemas_into_the_archive_and_ids_into_the_manifest() {
    let Some(url) = shared_registry() else { return };
    if !stack_up() {
        return;
    }
    let mut w = world("sr_ids", &url);
    w.extra_toml = "max_object_records = 4\n".into();
    let c = client(&url, None);
    let tag = w.topic.replace('_', "");
    let a = c
        .register(&format!("{}-value", w.topic), &schema(&format!("A{tag}")))
        .unwrap();
    let b = c
        .register(&format!("{}-value", w.topic), &schema(&format!("B{tag}")))
        .unwrap();
    assert_ne!(a, b);
    // Partition 0 gets the even messages, 1 the odd ones: A, A, B, A, then not framed ones
    // (archived as they are), a tombstone, and B again.
    let mut msgs = Vec::new();
    for i in 0..12 {
        msgs.push(framed(if i % 5 == 4 { b } else { a }, &format!("body {i}")));
    }
    msgs.push(Some(b"not framed".to_vec()));
    msgs.push(Some(vec![0, 1]));
    msgs.push(None);
    msgs.push(framed(b, "late b"));
    produce_raw(&brokers(), &w.topic, 2, &msgs);
    let s = w.json(&["ingest"]);
    let stored: Vec<u64> = s["schemas_stored"]
        .as_array()
        .unwrap_or_else(|| panic!("{s}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(stored, vec![a as u64, b as u64], "{s}");
    assert_archive_exact(&w, &msgs, 2);
    for id in [a, b] {
        let got = stored_schema(&w, id).unwrap();
        let served = c.schema_by_id(id).unwrap().unwrap();
        assert_eq!(
            got,
            StoredSchema {
                id,
                schema: served.schema,
                registry: url.clone(),
                schema_type: None
            }
        );
    }
    // Each object lists the ids of its own records, sorted, each once.
    let ms = manifests(&w);
    assert_eq!(ms.len(), 1);
    let mut with_ids = 0;
    for o in &ms[0].objects {
        assert_eq!(o.schema_ids, ids_in_object(&w, &o.key), "{}", o.key);
        with_ids += usize::from(!o.schema_ids.is_empty());
    }
    assert!(with_ids >= 3, "{:?}", ms[0].objects);
    assert!(ms[0]
        .objects
        .iter()
        .any(|o| o.schema_ids == vec![a.min(b), a.max(b)]));
    // A later run with ids already archived stores no schema and lists the ids again.
    let more = vec![framed(a, "again"), framed(b, "again")];
    produce_raw(&brokers(), &w.topic, 2, &more);
    let s = w.json(&["ingest"]);
    assert_eq!(s["messages"], 2, "{s}");
    assert!(s.get("schemas_stored").is_none(), "{s}");
    let ms = manifests(&w);
    let ids: BTreeSet<u32> = ms[1]
        .objects
        .iter()
        .flat_map(|o| o.schema_ids.clone())
        .collect();
    assert_eq!(ids, BTreeSet::from([a, b]));
    // The audit finds every id's schema in the archive; without one it names the objects.
    let audit = |w: &World| -> Vec<serde_json::Value> {
        let (_, out, err) = w.run(&["--json", "audit", "--no-kafka"]);
        let r: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "schema_missing")
            .cloned()
            .collect()
    };
    assert_eq!(audit(&w), Vec::<serde_json::Value>::new());
    w.store().delete(&format!("_schemas/{b}.json")).unwrap();
    let missing = audit(&w);
    let with_b: BTreeSet<String> = ms
        .iter()
        .flat_map(|m| m.objects.iter())
        .filter(|o| o.schema_ids.contains(&b))
        .map(|o| o.key.clone())
        .collect();
    let named: BTreeSet<String> = missing
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, with_b, "{missing:?}");
}

#[test]
fn an_unknown_schema_id_fails_ingest_before_any_commit_until_the_registry_has_it() {
    if !stack_up() {
        return;
    }
    let sr = RegistryStandIn::start(&[]);
    let w = world("sr_unknown", &sr.url);
    // A fresh registry gives its first schema id 1: the messages carry it before it exists.
    let mut msgs = vec![Some(b"plain".to_vec())];
    msgs.extend((0..9).map(|i| framed(1, &format!("m{i}"))));
    produce_raw(&brokers(), &w.topic, 1, &msgs);
    let (code, _, err) = w.run(&["ingest"]);
    assert_eq!(code, 1, "{err}");
    for want in [
        "schema id 1 (first at partition 0 offset 1)",
        &format!("the schema registry {} has no schema with this id", sr.url),
        "nothing was committed",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert_eq!(committed(&w, &[0]), vec![None]);
    assert!(manifests(&w).is_empty());
    assert_eq!(stored_schema(&w, 1), None);
    // Once the registry has it, the next run archives everything (adopting the objects the
    // failed run stored) and commits.
    let id = client(&sr.url, None)
        .register("any-value", &schema("Late"))
        .unwrap();
    assert_eq!(id, 1);
    let s = w.json(&["ingest"]);
    assert_eq!(s["schemas_stored"], serde_json::json!([1]), "{s}");
    assert_eq!(committed(&w, &[0]), vec![Some(10)]);
    assert_archive_exact(&w, &msgs, 1);
    let ms = manifests(&w);
    assert_eq!(ms.len(), 1);
    let objects: Vec<(i64, i64, Vec<u32>)> = ms[0]
        .objects
        .iter()
        .map(|o| (o.first_offset, o.last_offset, o.schema_ids.clone()))
        .collect();
    assert_eq!(objects, vec![(0, 9, vec![1])]);
    assert!(stored_schema(&w, 1).is_some());
}

#[test]
fn with_the_registry_gone_archived_ids_need_nothing_and_a_new_id_fails_naming_it() {
    if !stack_up() {
        return;
    }
    let mut sr = RegistryStandIn::start(&[]);
    let w = world("sr_down", &sr.url);
    let c = client(&sr.url, None);
    let one = c.register("t-value", &schema("One")).unwrap();
    let two = c.register("t-value", &schema("Two")).unwrap();
    let first: Vec<_> = (0..4).map(|i| framed(one, &format!("a{i}"))).collect();
    produce_raw(&brokers(), &w.topic, 2, &first);
    w.run_ok(&["ingest"]);
    assert!(stored_schema(&w, one).is_some());
    sr.stop();
    // Known ids: no registry call at all.
    let second: Vec<_> = (0..4).map(|i| framed(one, &format!("b{i}"))).collect();
    produce_raw(&brokers(), &w.topic, 2, &second);
    let s = w.json(&["ingest"]);
    assert_eq!(s["messages"], 4, "{s}");
    assert_eq!(committed(&w, &[0, 1]), vec![Some(4), Some(4)]);
    // A new id with the registry gone: the run fails naming the registry, commits nothing.
    let third = vec![framed(one, "c0"), framed(two, "c1")];
    produce_raw(&brokers(), &w.topic, 2, &third);
    let (code, _, err) = w.run(&["ingest"]);
    assert_eq!(code, 1, "{err}");
    for want in [
        format!("schema id {two} (first at partition 1 offset 4)"),
        format!(
            "schema registry {}: GET /schemas/ids/{two}: cannot reach it",
            sr.url
        ),
        "nothing was committed".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} not in: {err}");
    }
    assert_eq!(committed(&w, &[0, 1]), vec![Some(4), Some(4)]);
    assert_eq!(manifests(&w).len(), 2);
}

#[test]
fn basic_auth_is_sent_and_a_wrong_password_is_a_clear_refusal() {
    if !stack_up() {
        return;
    }
    let sr = RegistryStandIn::start(&[
        ("BATCHLAYER_STANDIN_REGISTRY_USER", "loader"),
        ("BATCHLAYER_STANDIN_REGISTRY_PASSWORD", "right-pw-1"),
    ]);
    let mut w = world("sr_auth", &sr.url);
    w.tail_toml = w.tail_toml.replace(
        "[schema_registry]\n",
        "[schema_registry]\nusername = \"loader\"\n",
    );
    let id = client(&sr.url, Some(("loader", "right-pw-1")))
        .register("t-value", &schema("Auth"))
        .unwrap();
    produce_raw(&brokers(), &w.topic, 1, &[framed(id, "x"), framed(id, "y")]);
    w.env.insert(
        "BATCHLAYER_SCHEMA_REGISTRY_PASSWORD".into(),
        "wrong-pw-2".into(),
    );
    let (code, _, err) = w.run(&["ingest"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "schema registry {}: GET /schemas/ids/{id}: HTTP 401 (error code 401): Unauthorized",
            sr.url
        )),
        "{err}"
    );
    assert!(
        !err.contains("wrong-pw-2") && !err.contains("gave up"),
        "{err}"
    );
    assert_eq!(committed(&w, &[0]), vec![None]);
    w.env.insert(
        "BATCHLAYER_SCHEMA_REGISTRY_PASSWORD".into(),
        "right-pw-1".into(),
    );
    let s = w.json(&["ingest"]);
    assert_eq!(s["schemas_stored"], serde_json::json!([id]), "{s}");
    assert_eq!(committed(&w, &[0]), vec![Some(2)]);
}

#[test]
fn produce_tweets_writes_json_and_avro_registering_the_schema_first() {
    if !stack_up() {
        return;
    }
    use batchlayer::records::avro::confluent_frame;
    use batchlayer::tweets::{tweet_with, TWEET_AVRO_SCHEMA};
    let sr = RegistryStandIn::start(&[]);
    let w = world("sr_produce", &sr.url);
    let args = |fmt: &'static str| {
        vec![
            "produce-tweets",
            "--format",
            fmt,
            "--count",
            "20",
            "--seed",
            "5",
            "--locations",
            "3",
            "--partitions",
            "1",
        ]
    };
    let p = w.json(&args("avro"));
    let id = p["schema_id"].as_u64().unwrap_or_else(|| panic!("{p}")) as u32;
    // Registered under {topic}-value; registering again gives the same id.
    let c = client(&sr.url, None);
    assert_eq!(
        c.register(&format!("{}-value", w.topic), TWEET_AVRO_SCHEMA)
            .unwrap(),
        id
    );
    let p = w.json(&args("avro"));
    assert_eq!(p["schema_id"], id, "{p}");
    let s = w.json(&["ingest"]);
    assert_eq!(s["messages"], 40, "{s}");
    assert_eq!(s["schemas_stored"], serde_json::json!([id]), "{s}");
    let got = stored_schema(&w, id).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&got.schema).unwrap(),
        serde_json::from_str::<serde_json::Value>(TWEET_AVRO_SCHEMA).unwrap()
    );
    let want: Vec<Vec<u8>> = (0..2)
        .flat_map(|_| (0..20).map(|i| confluent_frame(id, &tweet_with(5, i, 3, false).avro_body())))
        .collect();
    let archived = archived_messages(w.store().as_ref());
    let recs: Vec<Vec<u8>> = archived[&0].iter().flat_map(|o| o.2.clone()).collect();
    assert!(
        recs == want,
        "the archived Avro messages differ from the tweets' frames"
    );
    // JSON tweets: Tweet::json, no registry needed.
    let wj = World::local("sr_produce_json");
    let p = wj.json(&args("json"));
    assert!(p.get("schema_id").is_none(), "{p}");
    wj.run_ok(&["ingest"]);
    let archived = archived_messages(wj.store().as_ref());
    let recs: Vec<Vec<u8>> = archived[&0].iter().flat_map(|o| o.2.clone()).collect();
    let want: Vec<Vec<u8>> = (0..20).map(|i| tweet_with(5, i, 3, false).json()).collect();
    assert_eq!(recs, want);
    // Avro without a registry is a configuration error.
    let (code, _, err) = wj.run(&args("avro"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[schema_registry] url"), "{err}");
}
