//! Times and durations as operators write them: one grammar for every time flag and key
//! (`copy --since/--until`, `ingest --from-time/--to-time`, `aggregate
//! --require-complete-through` and `aggregate.require_complete_through`). A time written
//! without a zone is read in the zone its caller names when it resolves it; each flag and key
//! documents its zone.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::time::Duration;

/// The zone of the flags that read a time without a zone as UTC (`ingest --from-time` and
/// `--to-time`), as an offset from UTC in seconds.
pub const UTC: i32 = 0;

/// A point in time as the operator gives it: a duration before now, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// This long before the moment it is resolved.
    Ago(Duration),
    /// A time without a zone: read in the zone it is resolved in (each flag and key says
    /// which: the archive's zone, `archive.timezone`, or UTC).
    Local(NaiveDateTime),
    /// A time with its zone.
    At(DateTime<Utc>),
}

impl TimeSpec {
    /// Parses "2h", "90m", "3600" (before now), "YYYY-MM-DD[THH[:MM[:SS]]]" (a space for the
    /// T works too) or RFC 3339.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(d) = parse_duration(s) {
            return Ok(TimeSpec::Ago(d));
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(TimeSpec::At(t.with_timezone(&Utc)));
        }
        let t = s.replace(' ', "T");
        if let Ok(d) = NaiveDate::parse_from_str(&t, "%Y-%m-%d") {
            return Ok(TimeSpec::Local(d.and_hms_opt(0, 0, 0).expect("midnight")));
        }
        for (f, suffix) in [
            ("%Y-%m-%dT%H:%M:%S", ""),
            ("%Y-%m-%dT%H:%M", ""),
            ("%Y-%m-%dT%H:%M", ":00"),
        ] {
            if let Ok(v) = NaiveDateTime::parse_from_str(&format!("{t}{suffix}"), f) {
                return Ok(TimeSpec::Local(v));
            }
        }
        Err(format!(
            "{s:?} is neither a duration (30m, 2h, 1d) nor a time (YYYY-MM-DD[THH[:MM]], RFC 3339)"
        ))
    }

    /// The UTC time it names, `now` being the present and `zone_offset_secs` the zone (east of
    /// UTC, in seconds) a time without a zone is read in.
    pub fn resolve(self, now: DateTime<Utc>, zone_offset_secs: i32) -> DateTime<Utc> {
        match self {
            TimeSpec::Ago(d) => now - chrono::Duration::from_std(d).unwrap_or_default(),
            TimeSpec::Local(t) => {
                t.and_utc() - chrono::Duration::seconds(i64::from(zone_offset_secs))
            }
            TimeSpec::At(t) => t,
        }
    }

    /// The time it names as a clock in that zone shows it (what the archive's time folders
    /// hold); a time without a zone is itself.
    pub fn wall_clock(self, now: DateTime<Utc>, zone_offset_secs: i32) -> NaiveDateTime {
        match self {
            TimeSpec::Local(t) => t,
            other => {
                other.resolve(now, zone_offset_secs).naive_utc()
                    + chrono::Duration::seconds(i64::from(zone_offset_secs))
            }
        }
    }
}

/// Parses a duration: whole seconds ("90"), or a number with s, m, h or d ("15m", "2h").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (90, 90s, 15m, 2h, 1d)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?} is not a duration (90, 90s, 15m, 2h, 1d)")),
    };
    Ok(Duration::from_secs(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_for_status_and_the_completeness_gate() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(parse_duration("1d").unwrap().as_secs(), 86400);
        assert!(parse_duration("2 weeks").is_err() && parse_duration("h").is_err());
        let now = DateTime::parse_from_rfc3339("2024-01-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str, tz: i32| TimeSpec::parse(s).unwrap().resolve(now, tz).to_rfc3339();
        assert_eq!(at("2h", 0), "2024-01-02T10:00:00+00:00");
        assert_eq!(at("2024-01-02T05", 0), "2024-01-02T05:00:00+00:00");
        // A time without a zone is in the zone it is resolved in (the archive's, here).
        assert_eq!(at("2024-01-02 05:30", 3600), "2024-01-02T04:30:00+00:00");
        assert_eq!(
            at("2024-01-02T05:00:00+02:00", 0),
            "2024-01-02T03:00:00+00:00"
        );
        assert!(TimeSpec::parse("yesterday").is_err());
    }

    /// The forms `--since`, `--until`, `--from-time` and `--to-time` took when they had their
    /// own parser: each still names the same time.
    #[test]
    fn time_arguments() {
        let local = |s: &str| match TimeSpec::parse(s).unwrap() {
            TimeSpec::Local(t) => t.to_string(),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(local("2024-01-02"), "2024-01-02 00:00:00");
        assert_eq!(local("2024-01-02T05"), "2024-01-02 05:00:00");
        assert_eq!(local("2024-01-02 05:30"), "2024-01-02 05:30:00");
        assert_eq!(local(" 2024-01-02T05:30:15 "), "2024-01-02 05:30:15");
        assert!(TimeSpec::parse("yesterday").is_err());
        assert!(TimeSpec::parse("last tuesday").is_err());
    }

    #[test]
    fn a_time_resolves_in_the_zone_its_flag_names() {
        let now = DateTime::parse_from_rfc3339("2024-01-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = TimeSpec::parse("2024-01-02T05").unwrap();
        // --from-time: UTC.
        assert_eq!(
            t.resolve(now, UTC).to_rfc3339(),
            "2024-01-02T05:00:00+00:00"
        );
        // --since: the archive's zone, compared with its folders' wall clock as written.
        assert_eq!(t.wall_clock(now, 7200).to_string(), "2024-01-02 05:00:00");
        let z = TimeSpec::parse("2024-01-02T05:00:00Z").unwrap();
        assert_eq!(z.wall_clock(now, 7200).to_string(), "2024-01-02 07:00:00");
        let ago = TimeSpec::parse("2h").unwrap();
        assert_eq!(
            ago.wall_clock(now, -3600).to_string(),
            "2024-01-02 09:00:00"
        );
    }
}
