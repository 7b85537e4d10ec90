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
}

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
