//! Record formats on the real stack: JSON (and Avro) tweets through ingest, copy and
//! aggregate, their view against the delimited path's, and bad records of each kind.

use crate::common::*;
use crate::e2e::actual_view;
use batchlayer::tweets::tweet;

/// The `[records]` section of JSON tweets, as a user writes it (docs/configuration.md).
pub(crate) const JSON_TWEETS: &str = r#"
[records]
format = "json"

[[records.columns]]
name = "id"
type = "bigint"

[[records.columns]]
name = "created_at"
type = "timestamp"

[[records.columns]]
name = "followers_count"
type = "int"
path = "/user/followers_count"

[[records.columns]]
name = "location"
type = "text"
max_len = 256
path = "/user/location"
nullable = true

[[records.columns]]
name = "favorite_count"
type = "int"

[[records.columns]]
name = "retweet_count"
type = "int"
"#;

/// Tweet `i` as JSON, written here with serde_json from the tweet's fields (not by
/// batchlayer's producer), RFC 3339 time, null for no location.
pub(crate) fn json_tweet(seed: u64, i: u64, locations: u64) -> Vec<u8> {
    let t = tweet(seed, i, locations);
    let at = chrono::NaiveDateTime::parse_from_str(&t.created_at, "%Y-%m-%d %H:%M:%S").unwrap();
    serde_json::json!({
        "id": t.id,
        "created_at": at.and_utc().to_rfc3339(),
        "user": {"followers_count": t.followers_count, "location": t.location},
        "favorite_count": t.favorite_count,
        "retweet_count": t.retweet_count,
    })
    .to_string()
    .into_bytes()
}

#[test]
fn json_tweets_make_the_same_view_as_their_delimited_twins() {
    if !stack_up() {
        return;
    }
    let (count, seed, locs) = (2000u64, 11u64, 30u64);
    let mut json = World::s3("fmt_json");
    json.tail_toml = JSON_TWEETS.into();
    // Every 9th tweet twice: the view counts distinct ids.
    let payloads: Vec<Option<Vec<u8>>> = (0..count)
        .flat_map(|i| {
            let n = if i % 9 == 0 { 2 } else { 1 };
            std::iter::repeat_n(Some(json_tweet(seed, i, locs)), n)
        })
        .collect();
    produce_raw(&brokers(), &json.topic, 3, &payloads);
    let delimited = World::s3("fmt_delim");
    let twins: Vec<Option<Vec<u8>>> = (0..count)
        .flat_map(|i| {
            let n = if i % 9 == 0 { 2 } else { 1 };
            std::iter::repeat_n(Some(tweet(seed, i, locs).record().into_bytes()), n)
        })
        .collect();
    produce_raw(&brokers(), &delimited.topic, 3, &twins);
    for w in [&json, &delimited] {
        w.run_ok(&["ingest"]);
        let c = w.json(&["copy"]);
        assert_eq!(c["rows"].as_u64(), Some(payloads.len() as u64), "{c}");
        assert_eq!(c["rejects"].as_u64(), Some(0), "{c}");
        w.run_ok(&["aggregate"]);
    }
    let (a, b) = (actual_view(&json.schema), actual_view(&delimited.schema));
    assert!(!a.is_empty());
    assert_eq!(
        a, b,
        "the JSON tweets' view differs from the delimited tweets' view"
    );
    assert_eq!(
        a,
        crate::e2e::expected_view(seed, count, locs),
        "the view differs from the tweets' own"
    );
}

/// Rows of a query as text, for comparing tables.
fn text_rows(sql: &str) -> Vec<Vec<Option<String>>> {
    pg().query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// The rejects table holds exactly the records whose `expected` entry is Some (by record
/// number, in order), each reason containing that text, and naming a column where `of_column`
/// says the text is a column's.
fn assert_rejects_name(w: &World, expected: &[Option<&str>], of_column: fn(&str) -> bool) {
    let rejects = text_rows(&format!(
        "SELECT line::text AS l, reason FROM {}.batchlayer_rejects ORDER BY line",
        w.schema
    ));
    let want: Vec<(usize, &str)> = expected
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i + 1, r)))
        .collect();
    assert_eq!(rejects.len(), want.len(), "{rejects:?}");
    for (row, (line, needle)) in rejects.iter().zip(&want) {
        assert_eq!(
            row[0].as_deref(),
            Some(line.to_string().as_str()),
            "{row:?}"
        );
        let reason = row[1].as_deref().unwrap_or_default();
        assert!(
            reason.contains(needle),
            "record {line}: {reason:?} does not name {needle}"
        );
        if of_column(needle) {
            assert!(
                reason.contains("column "),
                "record {line}: {reason:?} names no column"
            );
        }
    }
}

#[test]
fn bad_json_records_of_each_kind_land_in_rejects_naming_column_and_pointer() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("fmt_json_bad");
    w.tail_toml = format!(
        "{JSON_TWEETS}\n[[records.columns]]\nname = \"user_doc\"\ntype = \"json\"\npath = \"/user\"\nnullable = true\n"
    );
    let good = |id: i64| {
        format!(
            r#"{{"id":{id},"created_at":"2024-01-01T00:00:00Z","user":{{"followers_count":1,"location":"x"}},"favorite_count":0,"retweet_count":0}}"#
        )
    };
    let long = "é".repeat(300);
    let msgs: Vec<(String, Option<&str>)> = vec![
        (good(1), None),
        ("{\"id\": 2, \"created_at\"".into(), Some("not JSON")),
        (String::new(), Some("not JSON")),
        (
            good(3).replace("\"followers_count\":1", "\"followers_count\":\"many\""),
            Some("/user/followers_count"),
        ),
        (
            good(4).replace("\"followers_count\":1", "\"followers_count\":4294967296"),
            Some("/user/followers_count"),
        ),
        (good(5).replace("\"id\":5,", ""), Some("\"/id\"")),
        (
            good(6).replace("2024-01-01T00:00:00Z", "yesterday"),
            Some("/created_at"),
        ),
        (
            good(7).replace("\"x\"", &format!("\"{long}\"")),
            Some("/user/location"),
        ),
        (good(8).replace("\"x\"", "null"), None),
        (good(9).replace("\"id\":9", "\"id\":\"9\""), None),
        ("[1,2,3]".into(), Some("\"/id\"")),
        (
            good(10).replace("\"x\"", "\"a\\u0000b\""),
            Some("/user/location"),
        ),
    ];
    let payloads: Vec<Option<Vec<u8>>> = msgs
        .iter()
        .map(|(m, _)| Some(m.clone().into_bytes()))
        .collect();
    produce_raw(&brokers(), &w.topic, 1, &payloads);
    w.run_ok(&["ingest"]);
    // Strict by default: the first bad record fails the copy, naming it; nothing is loaded.
    let (code, _, err) = w.run(&["copy"]);
    assert_ne!(code, 0);
    assert!(err.contains("not JSON"), "{err}");
    assert_eq!(w.count("batch_raw"), 0);
    let c = w.json(&["copy", "--max-errors", "100"]);
    let bad = msgs.iter().filter(|(_, r)| r.is_some()).count() as u64;
    assert_eq!(c["rejects"].as_u64(), Some(bad), "{c}");
    assert_eq!(c["rows"].as_u64(), Some(msgs.len() as u64 - bad), "{c}");
    let expected: Vec<Option<&str>> = msgs.iter().map(|(_, r)| *r).collect();
    assert_rejects_name(&w, &expected, |n| n.starts_with('/') || n.starts_with('"'));
    // The good rows: a null location is NULL, a digit-string id a bigint, the json column the
    // user object as jsonb.
    let rows = text_rows(&format!(
        "SELECT id::text AS i, location, user_doc->>'followers_count' FROM {}.batch_raw ORDER BY id",
        w.schema
    ));
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(ids, ["1", "8", "9"]);
    assert_eq!(rows[1][1], None);
    assert_eq!(rows[2][2].as_deref(), Some("1"));
}

/// The `[records]` section of Avro tweets (`tweets::TWEET_AVRO_SCHEMA`).
pub(crate) const AVRO_TWEETS: &str = r#"
[records]
format = "avro"
columns = [
  { name = "id", type = "bigint" },
  { name = "created_at", type = "timestamp" },
  { name = "followers_count", type = "int", field = "user.followers_count" },
  { name = "location", type = "text", max_len = 256, field = "user.location" },
  { name = "favorite_count", type = "int" },
  { name = "retweet_count", type = "int" },
]
"#;

fn avro_world(name: &str, registry: &str, records: &str) -> World {
    let mut w = World::s3(name);
    w.tail_toml = format!("{records}\n[schema_registry]\nurl = \"{registry}\"\n");
    w
}

fn registry_client(url: &str) -> batchlayer::registry::RegistryClient {
    batchlayer::registry::RegistryClient::new(&batchlayer::config::RegistrySettings {
        url: url.into(),
        username: None,
        password: None,
        bearer_token: None,
        ca_file: None,
        retry: Default::default(),
    })
    .unwrap()
}

#[test]
fn avro_tweets_make_the_same_view_as_their_delimited_twins_and_copy_needs_no_registry() {
    if !stack_up() {
        return;
    }
    let registry = batchlayer::registry::standin::RegistryStandIn::start(&[]);
    let (count, seed, locs) = ("1500", "13", "25");
    let produce = |w: &World, format: &str| {
        w.json(&[
            "produce-tweets",
            "--format",
            format,
            "--count",
            count,
            "--seed",
            seed,
            "--locations",
            locs,
            "--duplicate-every",
            "9",
            "--partitions",
            "3",
        ])
    };
    let avro = avro_world("fmt_avro", &registry.url, AVRO_TWEETS);
    let delimited = World::s3("fmt_avro_twin");
    produce(&avro, "avro");
    produce(&delimited, "delimited");
    for w in [&avro, &delimited] {
        w.run_ok(&["ingest"]);
    }
    // The registry is gone: copy decodes with the archive's schemas alone.
    drop(registry);
    for w in [&avro, &delimited] {
        let c = w.json(&["copy"]);
        assert_eq!(c["rejects"].as_u64(), Some(0), "{c}");
        w.run_ok(&["aggregate"]);
    }
    assert_eq!(avro.count("batch_raw"), delimited.count("batch_raw"));
    let (a, b) = (actual_view(&avro.schema), actual_view(&delimited.schema));
    assert!(!a.is_empty());
    assert_eq!(
        a, b,
        "the Avro tweets' view differs from the delimited tweets' view"
    );
    assert_eq!(a, crate::e2e::expected_view(13, 1500, 25));
}

/// Three writer versions of one record: a field added with a default, one removed, an int
/// promoted to long.
const EVOLVED: [&str; 3] = [
    r#"{"type":"record","name":"Ev","namespace":"batchlayer.test","fields":[{"name":"id","type":"long"},{"name":"n","type":"int"},{"name":"old","type":"string"}]}"#,
    r#"{"type":"record","name":"Ev","namespace":"batchlayer.test","fields":[{"name":"id","type":"long"},{"name":"n","type":"int"},{"name":"old","type":"string"},{"name":"added","type":"string","default":"dflt"}]}"#,
    r#"{"type":"record","name":"Ev","namespace":"batchlayer.test","fields":[{"name":"id","type":"long"},{"name":"n","type":"long"},{"name":"added","type":"string","default":"dflt"}]}"#,
];

#[test]
fn three_writer_versions_load_in_one_run_into_one_object_per_partition() {
    use batchlayer::records::avro::{confluent_frame, encode, Schema};
    if !stack_up() {
        return;
    }
    let registry = batchlayer::registry::standin::RegistryStandIn::start(&[]);
    let records = r#"
[records]
format = "avro"
columns = [
  { name = "id", type = "bigint" },
  { name = "n", type = "bigint" },
  { name = "old", type = "text" },
  { name = "added", type = "text" },
]
"#;
    let w = avro_world("fmt_evolve", &registry.url, records);
    let client = registry_client(&registry.url);
    let subject = format!("{}-value", w.topic);
    let ids: Vec<u32> = EVOLVED
        .iter()
        .map(|s| client.register(&subject, s).unwrap())
        .collect();
    let schemas: Vec<Schema> = EVOLVED.iter().map(|s| Schema::parse(s).unwrap()).collect();
    let mut payloads = Vec::new();
    for i in 0..60i64 {
        let v = (i % 3) as usize;
        let value = match v {
            0 => serde_json::json!({"id": i, "n": i, "old": format!("o{i}")}),
            1 => {
                serde_json::json!({"id": i, "n": i, "old": format!("o{i}"), "added": format!("a{i}")})
            }
            _ => serde_json::json!({"id": i, "n": (1i64 << 40) + i, "added": format!("a{i}")}),
        };
        let body = encode(&schemas[v], &value).unwrap();
        payloads.push(Some(confluent_frame(ids[v], &body)));
    }
    produce_raw(&brokers(), &w.topic, 2, &payloads);
    w.run_ok(&["ingest"]);
    // Objects are cut by size and time, never by schema: one per partition.
    assert_eq!(w.data_objects().len(), 2, "{:?}", w.data_objects());
    let c = w.json(&["copy"]);
    assert_eq!(c["rows"].as_u64(), Some(60), "{c}");
    let rows = text_rows(&format!(
        "SELECT id::text AS i, n::text, old, added FROM {}.batch_raw ORDER BY id",
        w.schema
    ));
    for (i, r) in rows.iter().enumerate() {
        let (n, old, added) = match i % 3 {
            0 => (i as i64, Some(format!("o{i}")), "dflt".to_string()),
            1 => (i as i64, Some(format!("o{i}")), format!("a{i}")),
            _ => ((1i64 << 40) + i as i64, None, format!("a{i}")),
        };
        assert_eq!(
            r,
            &vec![Some(i.to_string()), Some(n.to_string()), old, Some(added)],
            "row {i} (writer version {})",
            i % 3 + 1
        );
    }
}

#[test]
fn bad_avro_records_of_each_kind_land_in_rejects_naming_column_and_field() {
    use batchlayer::records::avro::confluent_frame;
    use batchlayer::tweets::{tweet, TWEET_AVRO_SCHEMA};
    if !stack_up() {
        return;
    }
    let registry = batchlayer::registry::standin::RegistryStandIn::start(&[]);
    let w = avro_world("fmt_avro_bad", &registry.url, AVRO_TWEETS);
    let client = registry_client(&registry.url);
    let subject = format!("{}-value", w.topic);
    let id = client.register(&subject, TWEET_AVRO_SCHEMA).unwrap();
    // A writer whose followers_count is a string, and one whose schema the archive will lose.
    let stringly = TWEET_AVRO_SCHEMA.replace(
        r#"{"name": "followers_count", "type": "int"}"#,
        r#"{"name": "followers_count", "type": "string"}"#,
    );
    assert_ne!(
        stringly, TWEET_AVRO_SCHEMA,
        "the schema's text changed: fix the test"
    );
    let sid = client.register(&subject, &stringly).unwrap();
    let lost = TWEET_AVRO_SCHEMA.replace("\"Tweet\"", "\"LostTweet\"");
    assert_ne!(lost, TWEET_AVRO_SCHEMA);
    let lid = client.register(&subject, &lost).unwrap();
    let good = tweet(2, 1, 4);
    let body = good.avro_body();
    let long = batchlayer::tweets::Tweet {
        location: Some("\u{1F600}".repeat(300)),
        ..good.clone()
    };
    let s = batchlayer::records::avro::Schema::parse(&stringly).unwrap();
    let string_followers = batchlayer::records::avro::encode(
        &s,
        &serde_json::json!({"id": 5, "created_at": 0, "user": {"followers_count": "many", "location": null}, "favorite_count": 0, "retweet_count": 0}),
    )
    .unwrap();
    let msgs: Vec<(Vec<u8>, Option<&str>)> = vec![
        (confluent_frame(id, &body), None),
        (good.json(), Some("magic byte")),
        (vec![0, 0], Some("header")),
        (
            confluent_frame(id, &body[..body.len() - 2]),
            Some("writer schema"),
        ),
        (confluent_frame(lid, &body), Some("not in the archive")),
        (
            confluent_frame(id, &long.avro_body()),
            Some("Avro field user.location"),
        ),
        (
            confluent_frame(sid, &string_followers),
            Some("Avro field user.followers_count"),
        ),
        (confluent_frame(id, &body), None),
    ];
    let payloads: Vec<Option<Vec<u8>>> = msgs.iter().map(|(m, _)| Some(m.clone())).collect();
    produce_raw(&brokers(), &w.topic, 1, &payloads);
    w.run_ok(&["ingest"]);
    let store = w.store();
    store.delete(&format!("_schemas/{lid}.json")).unwrap();
    let (code, _, err) = w.run(&["copy"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("magic byte"), "{err}");
    let c = w.json(&["copy", "--max-errors", "100"]);
    assert_eq!(c["rows"].as_u64(), Some(2), "{c}");
    let expected: Vec<Option<&str>> = msgs.iter().map(|(_, r)| *r).collect();
    assert_rejects_name(&w, &expected, |n| n.starts_with("Avro field"));
}
