//! Each backend trait's one conformance suite, run against the real services.

use crate::common::*;
use batchlayer::source::{KafkaSource, MessageSource, Mode};
use std::collections::BTreeMap;

#[test]
fn s3_store_conforms_on_s3s_fs() {
    if !stack_up() {
        return;
    }
    let w = World::s3("s3conf");
    batchlayer::archive::conformance::run(w.store().as_ref());
}

#[test]
fn kafka_source_conforms_on_tansu() {
    if !stack_up() {
        return;
    }
    let w = World::local("kconf");
    let mut expected: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    let msgs: Vec<Option<Vec<u8>>> = (0..300)
        .map(|i| Some(format!("msg {i}\nwith newline").into_bytes()))
        .collect();
    for (i, m) in msgs.iter().enumerate() {
        expected
            .entry(i as i32 % 3)
            .or_default()
            .push(m.clone().unwrap());
    }
    produce_raw(&brokers(), &w.topic, 3, &msgs);
    let k = w.kafka();
    batchlayer::source::conformance::run(
        &|| Box::new(KafkaSource::connect(&k, Mode::Subscribe).unwrap()) as Box<dyn MessageSource>,
        &expected,
    );
}

#[test]
fn postgres_warehouse_conforms() {
    use batchlayer::tweets::tweet;
    if !stack_up() {
        return;
    }
    let w = World::s3("wconf");
    let s = w.settings();
    let good: Vec<Vec<u8>> = (0..5)
        .map(|i| tweet(50, i, 10).record().into_bytes())
        .collect();
    let good: Vec<&[u8]> = good.iter().map(|r| &r[..]).collect();
    let bad = b"1;2024-01-01 00:00:00;not-a-number;Oslo;1;2;".to_vec();
    let open = || batchlayer::warehouse::connect(&s.warehouse, &s.archive).unwrap();
    batchlayer::warehouse::conformance::run(
        &open,
        w.store().as_ref(),
        &batchlayer::records::Codec::new(s.layout.clone()),
        "batch_raw",
        &format!("{}.batch_raw", w.schema),
        &good,
        &bad,
    );
}

#[test]
fn sql_errors_keep_their_sqlstate_and_print_as_one_line() {
    if !stack_up() {
        return;
    }
    let w = World::local("sqlstate");
    let s = w.settings();
    let mut wh = batchlayer::warehouse::connect(&s.warehouse, &s.archive).unwrap();
    let err = wh
        .session()
        .execute("SELECT * FROM no_such_table_here")
        .unwrap_err();
    let sql = err
        .chain()
        .find_map(|e| e.downcast_ref::<batchlayer::warehouse::SqlError>())
        .expect("the server's error is kept in the chain");
    assert_eq!(
        sql.code(),
        Some(&postgres::error::SqlState::UNDEFINED_TABLE),
        "{err:#}"
    );
    let line = format!("{err:#}");
    assert!(
        line.contains("no_such_table_here") && line.contains("42P01"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
}

#[test]
fn a_multipart_completion_never_replaces_an_existing_object() {
    use batchlayer::archive::PutOutcome;
    if !stack_up() {
        return;
    }
    let w = World::s3("mpcond");
    let store = batchlayer::archive::s3::S3Store::new(&w.settings().archive.location).unwrap();
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![3u8; 6 << 20]).unwrap();
    // Another writer stored the key while this one uploaded its parts (no HEAD here).
    use batchlayer::archive::ObjectStore;
    assert_eq!(
        store.put_bytes_if_absent("race/obj.log", b"first").unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put_multipart_if_absent("race/obj.log", big.path())
            .unwrap(),
        PutOutcome::AlreadyExists
    );
    let mut got = Vec::new();
    store.get_into("race/obj.log", &mut got).unwrap();
    assert_eq!(got, b"first", "the completion replaced the object");
    assert_eq!(
        store
            .put_multipart_if_absent("race/new.log", big.path())
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(store.list("race/").unwrap().len(), 2);
}

#[test]
fn a_small_object_costs_one_s3_request_and_listings_of_catalog_folders_are_delimited() {
    use batchlayer::archive::PutOutcome;
    if !stack_up() {
        return;
    }
    let (endpoint, requests) = proxy::counting_proxy();
    let mut w = World::s3("s3reqs");
    w.env.insert("BATCHLAYER_S3_ENDPOINT".into(), endpoint);
    let store = w.store();
    requests.take();
    assert_eq!(
        store.put_bytes_if_absent("r/a.log", b"small").unwrap(),
        PutOutcome::Created
    );
    assert_eq!(requests.take().len(), 1, "storing a small object");
    // An existing key: the conditional PUT alone answers (412), nothing overwritten.
    assert_eq!(
        store.put_bytes_if_absent("r/a.log", b"other").unwrap(),
        PutOutcome::AlreadyExists
    );
    let reqs = requests.take();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(reqs[0].starts_with("PUT "), "{reqs:?}");
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"a small file").unwrap();
    assert_eq!(
        store.put_file_if_absent("r/b.log", f.path()).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(requests.take().len(), 1, "storing a small file");
    // A file of several MiB is one PUT as well, its body streamed from the file.
    let mid = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(mid.path(), vec![9u8; 7 << 20]).unwrap();
    assert_eq!(
        store.put_file_if_absent("r/m.log", mid.path()).unwrap(),
        PutOutcome::Created
    );
    let reqs = requests.take();
    assert_eq!(reqs.len(), 1, "storing a 7 MiB file: {reqs:?}");
    assert!(reqs[0].starts_with("PUT "), "{reqs:?}");
    let mut got = Vec::new();
    store.get_into("r/m.log", &mut got).unwrap();
    assert!(got.len() == 7 << 20 && got.iter().all(|b| *b == 9));
    store.delete("r/m.log").unwrap();
    store.put_bytes("r/sub/c.log", b"deeper").unwrap();
    requests.take();
    let folder: Vec<String> = store
        .list_folder("r/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(folder, vec!["r/a.log", "r/b.log"]);
    let reqs = requests.take();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(reqs[0].contains("delimiter=%2F"), "{reqs:?}");

    // A whole ingest run: each data object is one PUT, and no HEAD anywhere.
    w.extra_toml = "max_object_records = 10\n".into();
    produce_raw(&brokers(), &w.topic, 1, &tweet_payloads(30, 5, 10));
    requests.take();
    let s = w.json(&["ingest"]);
    assert_eq!(s["objects"].as_u64(), Some(3), "{s}");
    let reqs = requests.take();
    let data: Vec<&String> = reqs
        .iter()
        .filter(|r| r.contains(&format!("/{}", w.topic)) && !r.contains("/_"))
        .collect();
    assert_eq!(data.len(), 3, "requests on data objects: {data:?}");
    assert!(data.iter().all(|r| r.starts_with("PUT ")), "{data:?}");
    assert!(!reqs.iter().any(|r| r.starts_with("HEAD ")), "{reqs:?}");
    eprintln!(
        "ingest of 3 small objects: {} S3 requests: {reqs:?}",
        reqs.len()
    );
}
