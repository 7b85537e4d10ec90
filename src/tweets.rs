//! The shipped example workload: deterministic synthetic tweets.

/// Locations, including the awkward ones the pipeline must carry: emoji, non-ASCII, `None`.
const LOCATIONS: &[&str] = &[
    "Berlin",
    "Paris",
    "New York",
    "Z\u{fc}rich \u{1F1E8}\u{1F1ED}",
    "None",
    "S\u{e3}o Paulo",
    "Tokyo \u{1F5FC}",
    "London",
    "Lagos",
    "Sydney",
    "Back\\slash City",
    "Tab\tTown",
];

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fixed, well-spread function of the input.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fields of one tweet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tweet {
    pub id: i64,
    pub created_at: String,
    pub followers_count: i32,
    /// None when the record says `None`.
    pub location: Option<String>,
    pub favorite_count: i32,
    pub retweet_count: i32,
}

impl Tweet {
    /// The record as it travels on Kafka: `id;created_at;followers;location;favorites;retweets;`.
    pub fn record(&self) -> String {
        format!(
            "{};{};{};{};{};{};",
            self.id,
            self.created_at,
            self.followers_count,
            self.location.as_deref().unwrap_or("None"),
            self.favorite_count,
            self.retweet_count
        )
    }

    /// The record in JSON, as the JSON example produces it: `created_at` in RFC 3339 (UTC),
    /// `location` null where the delimited record says `None`.
    pub fn json(&self) -> Vec<u8> {
        let location = match &self.location {
            // A JSON string of a `String` always serializes.
            Some(l) => serde_json::to_string(l).unwrap_or_default(),
            None => "null".to_string(),
        };
        format!(
            "{{\"id\":{},\"created_at\":\"{}Z\",\"user\":{{\"followers_count\":{},\"location\":{}}},\"favorite_count\":{},\"retweet_count\":{}}}",
            self.id,
            self.created_at.replacen(' ', "T", 1),
            self.followers_count,
            location,
            self.favorite_count,
            self.retweet_count
        )
        .into_bytes()
    }

    /// The record as the Avro body of `TWEET_AVRO_SCHEMA` (without the Confluent header):
    /// `created_at` in milliseconds since the epoch.
    pub fn avro_body(&self) -> Vec<u8> {
        use crate::records::avro::{write_long, write_string};
        let mut out = Vec::with_capacity(32 + self.location.as_ref().map_or(0, String::len));
        write_long(&mut out, self.id);
        write_long(&mut out, self.created_millis());
        write_long(&mut out, self.followers_count as i64);
        match &self.location {
            None => write_long(&mut out, 0),
            Some(l) => {
                write_long(&mut out, 1);
                write_string(&mut out, l);
            }
        }
        write_long(&mut out, self.favorite_count as i64);
        write_long(&mut out, self.retweet_count as i64);
        out
    }

    /// `created_at` ("YYYY-MM-DD HH:MM:SS", UTC) in milliseconds since the epoch (0 if it
    /// does not parse, which `tweet_with` never makes).
    fn created_millis(&self) -> i64 {
        chrono::NaiveDateTime::parse_from_str(&self.created_at, "%Y-%m-%d %H:%M:%S")
            .map_or(0, |t| t.and_utc().timestamp_millis())
    }
}

/// The Avro schema of the example (subject `{topic}-value` in the Schema Registry).
pub const TWEET_AVRO_SCHEMA: &str = r#"{
  "type": "record",
  "name": "Tweet",
  "namespace": "batchlayer.example",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "user", "type": {
      "type": "record",
      "name": "User",
      "fields": [
        {"name": "followers_count", "type": "int"},
        {"name": "location", "type": ["null", "string"], "default": null}
      ]
    }},
    {"name": "favorite_count", "type": "int"},
    {"name": "retweet_count", "type": "int"}
  ]
}"#;

/// Pieces of the long locations: multi-byte characters, escapes and line breaks.
const LONG_PIECES: &[&str] = &[
    "\u{1F600}",
    "\u{6771}\u{4EAC}",
    "Z\u{fc}rich",
    "\\",
    "\n",
    "\r\n",
    "\t",
    "caf\u{e9}",
    " ",
    "\u{1F1E8}\u{1F1ED}",
    "\\N",
    "Rio",
];

/// A long location: 20 to 256 characters of `LONG_PIECES`, chosen by `h`.
fn long_location(mut h: u64) -> String {
    let want = 20 + (h % 237) as usize;
    let mut loc = String::new();
    let mut n = 0;
    while n < want {
        h = mix(h);
        let p = LONG_PIECES[(h % LONG_PIECES.len() as u64) as usize];
        let c = p.chars().count();
        if n + c > want {
            break;
        }
        loc.push_str(p);
        n += c;
    }
    loc
}

/// Tweet number `i` of the stream with this seed, over `locations` distinct locations.
pub fn tweet(seed: u64, i: u64, locations: u64) -> Tweet {
    tweet_with(seed, i, locations, false)
}

/// As `tweet`; with `long`, the location is a long one (up to 256 characters, multi-byte,
/// with backslashes, tabs and line breaks) instead of a short name.
pub fn tweet_with(seed: u64, i: u64, locations: u64, long: bool) -> Tweet {
    let h = mix(seed.wrapping_mul(1_000_003) ^ i);
    let n_loc = locations.max(1);
    let li = h % n_loc;
    let base = LOCATIONS[(li as usize) % LOCATIONS.len()];
    let loc = if long {
        long_location(mix(li ^ seed))
    } else if li < LOCATIONS.len() as u64 {
        base.to_string()
    } else {
        format!("{base} {li}")
    };
    let secs = 1_704_067_200 + (i as i64); // 2024-01-01T00:00:00Z + i seconds
    let created = chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .naive_utc();
    Tweet {
        id: (seed as i64) * 1_000_000_000 + i as i64,
        created_at: created.format("%Y-%m-%d %H:%M:%S").to_string(),
        followers_count: (h >> 8) as i32 & 0xFFFF,
        location: if loc == "None" { None } else { Some(loc) },
        favorite_count: (h >> 24) as i32 & 0xFF,
        retweet_count: (h >> 32) as i32 & 0x3F,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_parseable() {
        assert_eq!(tweet(1, 5, 50), tweet(1, 5, 50));
        assert_ne!(tweet(1, 5, 50), tweet(2, 5, 50));
        let l = crate::records::Layout::tweets();
        let mut out = Vec::new();
        for i in 0..500 {
            l.to_pg_copy_row(tweet(3, i, 50).record().as_bytes(), &mut out)
                .unwrap();
        }
        assert!((0..500).any(|i| tweet(3, i, 50).location.is_none()));
    }

    #[test]
    fn json_matches_the_documented_example() {
        let t = Tweet {
            id: 1_000_000_001,
            created_at: "2024-01-01 00:00:01".into(),
            followers_count: 5,
            location: Some("Paris".into()),
            favorite_count: 1,
            retweet_count: 2,
        };
        assert_eq!(
            String::from_utf8(t.json()).unwrap(),
            r#"{"id":1000000001,"created_at":"2024-01-01T00:00:01Z","user":{"followers_count":5,"location":"Paris"},"favorite_count":1,"retweet_count":2}"#
        );
        let none = Tweet {
            location: None,
            ..t
        };
        assert!(String::from_utf8(none.json())
            .unwrap()
            .contains(r#""location":null}"#));
    }

    #[test]
    fn json_and_avro_carry_the_same_values() {
        use crate::records::avro::{decode, encode, Schema};
        let schema = Schema::parse(TWEET_AVRO_SCHEMA).unwrap();
        for i in 0..300 {
            let t = tweet_with(7, i, 1000, i % 2 == 0);
            let j: serde_json::Value = serde_json::from_slice(&t.json()).unwrap();
            assert_eq!(j["user"]["location"].as_str(), t.location.as_deref());
            let body = t.avro_body();
            let v = decode(&schema, &body).unwrap();
            let expect_ms = chrono::DateTime::parse_from_rfc3339(j["created_at"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            assert_eq!(
                v.get("created_at").unwrap().to_json(),
                serde_json::json!(expect_ms)
            );
            let mut avro_json = v.to_json();
            avro_json["created_at"] = j["created_at"].clone();
            assert_eq!(avro_json, j, "tweet {i}");
            // The hand-written body is what the general encoder makes of the JSON.
            assert_eq!(encode(&schema, &j).unwrap(), body, "tweet {i}");
        }
        // 2024-01-01T00:00:01Z
        assert_eq!(tweet(1, 1, 5).created_millis(), 1_704_067_201_000);
    }

    #[test]
    fn long_locations_are_valid_long_and_awkward() {
        let l = crate::records::Layout::tweets();
        let mut out = Vec::new();
        let locs: Vec<String> = (0..2000)
            .map(|i| tweet_with(4, i, 1000, true).location.unwrap())
            .collect();
        for i in 0..2000 {
            l.to_pg_copy_row(tweet_with(4, i, 1000, true).record().as_bytes(), &mut out)
                .unwrap();
        }
        assert!(locs.iter().all(|l| (1..=256).contains(&l.chars().count())));
        assert!(locs.iter().any(|l| l.chars().count() > 200));
        for needle in ["\n", "\\", "\u{1F600}", "\t"] {
            assert!(locs.iter().any(|l| l.contains(needle)), "{needle:?}");
        }
    }
}
