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
    let rejects = text_rows(&format!(
        "SELECT line::text AS l, reason FROM {}.batchlayer_rejects ORDER BY line",
        w.schema
    ));
    let want: Vec<(usize, &str)> = msgs
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| r.map(|r| (i + 1, r)))
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
        if needle.starts_with('/') || needle.starts_with('"') {
            assert!(
                reason.contains("column "),
                "record {line}: {reason:?} names no column"
            );
        }
    }
    // The good rows: a null location is NULL, a digit-string id a bigint, the json column the
    // user object as jsonb.
    let rows = text_rows(&format!(
        "SELECT id::text, location, user_doc->>'followers_count' FROM {}.batch_raw ORDER BY id",
        w.schema
    ));
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(ids, ["1", "8", "9"]);
    assert_eq!(rows[1][1], None);
    assert_eq!(rows[2][2].as_deref(), Some("1"));
}
