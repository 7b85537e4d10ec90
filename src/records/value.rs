//! One value of a record, whatever its format, checked against its column's type and written
//! as each loader wants it: PostgreSQL's text or binary COPY, or a JSON line (Redshift's
//! staging objects).
//!
//! The formats' readers (delimited, [`super::json`], Avro) turn what they find into a [`Src`];
//! [`cell`] checks it against the column (type, range, length, NULL) and gives a [`Cell`].

use super::{pg_escape_into, put_binary, Column, ColumnType, CopyFormat, PG_EPOCH_OFFSET_MICROS};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime};
use std::borrow::Cow;
use std::io::Write as _;

/// A value as a record holds it, before its column's type is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Src<'a> {
    /// The record has no value there (a JSON Pointer that leads nowhere, an Avro field the
    /// writer's schema does not have).
    Missing,
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    /// A JSON number above i64's range.
    Uint(u64),
    Float(f64),
    Bool(bool),
    /// A point in time, in microseconds since the Unix epoch (Avro's timestamp types).
    Micros(i64),
    /// Days since the Unix epoch (Avro's date).
    Days(i32),
    /// An exact decimal number, as text (Avro's decimal).
    Decimal(String),
    /// An object or array (or anything whole), as JSON text.
    Compound(String),
}

/// A checked value of its column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Bigint(i64),
    Int(i32),
    Double(f64),
    Bool(bool),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
    Text(Cow<'a, str>),
    /// JSON text.
    Json(Cow<'a, str>),
}

/// Checks `src` against `col` and gives its cell, or the reason it does not fit. `ts_format`
/// is the layout's timestamp format (text timestamps may also be RFC 3339). `null_ok` says
/// whether a missing value or null loads as NULL.
pub fn cell<'a>(
    col: &Column,
    src: Src<'a>,
    ts_format: &str,
    null_ok: bool,
) -> Result<Cell<'a>, String> {
    let src = match src {
        Src::Str(s) if col.null_marker.as_deref() == Some(s.as_ref()) => Src::Null,
        s => s,
    };
    match src {
        Src::Missing if null_ok => return Ok(Cell::Null),
        Src::Null if null_ok => return Ok(Cell::Null),
        Src::Missing => return Err("no value, and the column takes no NULL".into()),
        Src::Null => return Err("null, and the column takes no NULL".into()),
        _ => {}
    }
    match col.ty {
        ColumnType::Bigint => integer(src).map(Cell::Bigint),
        ColumnType::Int => {
            let v = integer(src)?;
            i32::try_from(v)
                .map(Cell::Int)
                .map_err(|_| format!("{v} is out of a 32-bit integer's range"))
        }
        ColumnType::Double => double(src).map(Cell::Double),
        ColumnType::Boolean => match src {
            Src::Bool(b) => Ok(Cell::Bool(b)),
            Src::Str(s) if s == "true" => Ok(Cell::Bool(true)),
            Src::Str(s) if s == "false" => Ok(Cell::Bool(false)),
            other => Err(format!("not a boolean ({})", kind(&other))),
        },
        ColumnType::Date => date(src).map(Cell::Date),
        ColumnType::Timestamp => timestamp(col, src, ts_format).map(Cell::Timestamp),
        ColumnType::Text => text(col, src).map(Cell::Text),
        ColumnType::Json => json(src).map(Cell::Json),
    }
}

/// A delimited record's field as a source value: text, but for a `json` column, where the
/// field must be JSON itself.
pub fn field_src<'a>(col: &Column, s: &'a str) -> Result<Src<'a>, String> {
    if col.ty != ColumnType::Json || col.null_marker.as_deref() == Some(s) {
        return Ok(Src::Str(s.into()));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(s)
        .map(|_| Src::Compound(s.to_string()))
        .map_err(|e| format!("not JSON ({e})"))
}

fn kind(s: &Src<'_>) -> &'static str {
    match s {
        Src::Missing => "missing",
        Src::Null => "null",
        Src::Str(_) => "a string",
        Src::Int(_) | Src::Uint(_) => "an integer",
        Src::Float(_) => "a fractional number",
        Src::Bool(_) => "a boolean",
        Src::Micros(_) => "a timestamp",
        Src::Days(_) => "a date",
        Src::Decimal(_) => "a decimal",
        Src::Compound(_) => "an object or array",
    }
}

fn integer(src: Src<'_>) -> Result<i64, String> {
    match src {
        Src::Int(v) => Ok(v),
        Src::Uint(v) => Err(format!("{v} is out of a 64-bit integer's range")),
        // A digit string: JSON producers write 64-bit ids as strings (JavaScript's numbers
        // hold 53 bits).
        Src::Str(s) => s
            .parse::<i64>()
            .map_err(|_| "not a 64-bit integer".to_string()),
        Src::Float(f) => Err(format!("{f} is not an integer")),
        other => Err(format!("not an integer ({})", kind(&other))),
    }
}

fn double(src: Src<'_>) -> Result<f64, String> {
    let v = match src {
        Src::Float(f) => f,
        Src::Int(i) => i as f64,
        Src::Uint(u) => u as f64,
        Src::Decimal(d) => d
            .parse::<f64>()
            .map_err(|_| format!("{d} is not a number"))?,
        Src::Str(s) => s.parse::<f64>().map_err(|_| "not a number".to_string())?,
        other => return Err(format!("not a number ({})", kind(&other))),
    };
    if !v.is_finite() {
        return Err(format!("{v} is not a finite number"));
    }
    Ok(v)
}

fn date(src: Src<'_>) -> Result<NaiveDate, String> {
    let d = match src {
        Src::Days(n) => NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::Duration::days(n.into())))
            .ok_or_else(|| format!("{n} days from 1970-01-01 is out of range"))?,
        Src::Str(s) => NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .map_err(|e| format!("not a date in format YYYY-MM-DD ({e})"))?,
        other => return Err(format!("not a date ({})", kind(&other))),
    };
    if d.year() < 1 {
        return Err("a year before 1 AD".into());
    }
    Ok(d)
}

fn timestamp(col: &Column, src: Src<'_>, ts_format: &str) -> Result<NaiveDateTime, String> {
    let from_micros = |m: i64| {
        DateTime::from_timestamp_micros(m)
            .map(|t| t.naive_utc())
            .ok_or_else(|| format!("{m} microseconds from the epoch is out of range"))
    };
    let t = match src {
        Src::Micros(m) => from_micros(m)?,
        Src::Int(n) => {
            let Some(unit) = col.unit else {
                return Err("a number, and the column has no unit (records.columns unit = \"s\", \"ms\" or \"us\")".into());
            };
            let m = n
                .checked_mul(unit.micros())
                .ok_or_else(|| format!("{n} is out of range"))?;
            from_micros(m)?
        }
        Src::Float(f) => {
            let Some(unit) = col.unit else {
                return Err("a number, and the column has no unit (records.columns unit = \"s\", \"ms\" or \"us\")".into());
            };
            let m = (f * unit.micros() as f64).round();
            if !m.is_finite() || m.abs() > 9.2e18 {
                return Err(format!("{f} is out of range"));
            }
            from_micros(m as i64)?
        }
        Src::Str(s) => text_timestamp(&s, ts_format)?,
        other => return Err(format!("not a timestamp ({})", kind(&other))),
    };
    if t.year() < 1 {
        return Err("a year before 1 AD".into());
    }
    Ok(t)
}

/// A timestamp read from text as a timestamp column takes it: in whole microseconds (what
/// the column holds; a leap second carried into the next second), year 1 AD or later. What
/// [`cell`] makes of the same timestamp given as microseconds.
pub fn checked_timestamp(t: NaiveDateTime) -> Result<NaiveDateTime, String> {
    let nanos = t.and_utc().timestamp_subsec_nanos();
    let t = if !nanos.is_multiple_of(1000) || nanos >= 1_000_000_000 {
        let m = t.and_utc().timestamp_micros();
        DateTime::from_timestamp_micros(m)
            .map(|t| t.naive_utc())
            .ok_or_else(|| format!("{m} microseconds from the epoch is out of range"))?
    } else {
        t
    };
    if t.year() < 1 {
        return Err("a year before 1 AD".into());
    }
    Ok(t)
}

/// A timestamp written as text: in the layout's format, or RFC 3339 (an offset is applied:
/// the column holds UTC).
fn text_timestamp(s: &str, ts_format: &str) -> Result<NaiveDateTime, String> {
    if let Ok(t) = NaiveDateTime::parse_from_str(s, ts_format) {
        return Ok(t);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.naive_utc())
        .map_err(|e| format!("not a timestamp in format {ts_format} or RFC 3339 ({e})"))
}

fn text<'a>(col: &Column, src: Src<'a>) -> Result<Cow<'a, str>, String> {
    let s: Cow<'a, str> = match src {
        Src::Str(s) => s,
        Src::Int(v) => v.to_string().into(),
        Src::Uint(v) => v.to_string().into(),
        Src::Float(v) => v.to_string().into(),
        Src::Bool(v) => v.to_string().into(),
        Src::Decimal(d) | Src::Compound(d) => d.into(),
        other => return Err(format!("not text ({})", kind(&other))),
    };
    checked_text(col, s)
}

/// Text as a text column takes it: no NUL byte (PostgreSQL's text has none), at most the
/// column's `max_len` characters.
pub fn checked_text<'a>(col: &Column, s: Cow<'a, str>) -> Result<Cow<'a, str>, String> {
    if s.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if let Some(max) = col.max_len.filter(|&max| s.len() > max) {
        let n = s.chars().count();
        if n > max {
            return Err(format!("{n} characters, longer than {max}"));
        }
    }
    Ok(s)
}

fn json(src: Src<'_>) -> Result<Cow<'_, str>, String> {
    let j: Cow<'_, str> = match src {
        Src::Compound(j) => j.into(),
        // A string value of a JSON or Avro record is a JSON string (a delimited field comes
        // as a compound: `field_src`).
        Src::Str(s) => serde_json::Value::String(s.into_owned()).to_string().into(),
        Src::Int(v) => v.to_string().into(),
        Src::Uint(v) => v.to_string().into(),
        Src::Float(v) if v.is_finite() => serde_json::Value::from(v).to_string().into(),
        Src::Float(v) => return Err(format!("{v} has no JSON form")),
        Src::Bool(v) => v.to_string().into(),
        Src::Micros(v) => v.to_string().into(),
        Src::Days(v) => v.to_string().into(),
        Src::Decimal(d) => serde_json::Value::String(d).to_string().into(),
        Src::Missing | Src::Null => "null".into(),
    };
    if j.contains("\\u0000") {
        // PostgreSQL's jsonb refuses the NUL character ("unsupported Unicode escape").
        return Err("holds a \\u0000 character, which jsonb cannot store".into());
    }
    Ok(j)
}

impl Cell<'_> {
    /// Writes the cell as a field of PostgreSQL's text or binary COPY.
    pub fn write(&self, format: CopyFormat, out: &mut Vec<u8>) {
        match format {
            CopyFormat::Binary => self.write_binary(out),
            CopyFormat::Text => self.write_text(out),
        }
    }

    fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            Cell::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Cell::Bigint(v) => put_binary(out, &v.to_be_bytes()),
            Cell::Int(v) => put_binary(out, &v.to_be_bytes()),
            Cell::Double(v) => put_binary(out, &v.to_be_bytes()),
            Cell::Bool(v) => put_binary(out, &[u8::from(*v)]),
            Cell::Date(d) => {
                let pg_epoch = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default();
                let days = (*d - pg_epoch).num_days() as i32;
                put_binary(out, &days.to_be_bytes());
            }
            Cell::Timestamp(t) => {
                let micros = t.and_utc().timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
                put_binary(out, &micros.to_be_bytes());
            }
            Cell::Text(s) => put_binary(out, s.as_bytes()),
            Cell::Json(j) => {
                // jsonb's binary form: a version byte (1), then the JSON text.
                out.extend_from_slice(&(j.len() as i32 + 1).to_be_bytes());
                out.push(1);
                out.extend_from_slice(j.as_bytes());
            }
        }
    }

    fn write_text(&self, out: &mut Vec<u8>) {
        let _ = match self {
            Cell::Null => out.write_all(b"\\N"),
            Cell::Bigint(v) => write!(out, "{v}"),
            Cell::Int(v) => write!(out, "{v}"),
            Cell::Double(v) => write!(out, "{v:e}"),
            Cell::Bool(v) => out.write_all(if *v { b"t" } else { b"f" }),
            Cell::Date(d) => write!(out, "{}", d.format("%Y-%m-%d")),
            Cell::Timestamp(t) => write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.f")),
            Cell::Text(s) | Cell::Json(s) => {
                pg_escape_into(s.as_bytes(), out);
                Ok(())
            }
        };
    }

    /// Writes the cell as a JSON value: numbers and booleans as themselves, timestamps as
    /// `YYYY-MM-DD HH:MM:SS.ffffff`, dates as `YYYY-MM-DD`, text as a string, a JSON cell as
    /// its JSON, NULL as null.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let _ = match self {
            Cell::Null => out.write_all(b"null"),
            Cell::Bigint(v) => write!(out, "{v}"),
            Cell::Int(v) => write!(out, "{v}"),
            Cell::Double(v) => write!(out, "{}", serde_json::Value::from(*v)),
            Cell::Bool(v) => write!(out, "{v}"),
            Cell::Date(d) => write!(out, "\"{}\"", d.format("%Y-%m-%d")),
            Cell::Timestamp(t) => write!(out, "\"{}\"", t.format("%Y-%m-%d %H:%M:%S%.6f")),
            Cell::Text(s) => serde_json::to_writer(&mut *out, s.as_ref()).map_err(Into::into),
            Cell::Json(j) => out.write_all(j.as_bytes()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: ColumnType) -> Column {
        Column::new("c", ty)
    }

    const ISO: &str = "%Y-%m-%d %H:%M:%S";

    fn ok(c: &Column, s: Src<'_>) -> Cell<'static> {
        match cell(c, s, ISO, true) {
            Ok(Cell::Text(t)) => Cell::Text(t.into_owned().into()),
            Ok(Cell::Json(t)) => Cell::Json(t.into_owned().into()),
            Ok(Cell::Null) => Cell::Null,
            Ok(Cell::Bigint(v)) => Cell::Bigint(v),
            Ok(Cell::Int(v)) => Cell::Int(v),
            Ok(Cell::Double(v)) => Cell::Double(v),
            Ok(Cell::Bool(v)) => Cell::Bool(v),
            Ok(Cell::Date(v)) => Cell::Date(v),
            Ok(Cell::Timestamp(v)) => Cell::Timestamp(v),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn integers_come_from_numbers_or_digit_strings_and_ranges_are_checked() {
        let big = col(ColumnType::Bigint);
        assert_eq!(ok(&big, Src::Int(-5)), Cell::Bigint(-5));
        assert_eq!(
            ok(&big, Src::Str("9007199254740993".into())),
            Cell::Bigint(9_007_199_254_740_993)
        );
        let int = col(ColumnType::Int);
        let e = cell(&int, Src::Int(1 << 40), ISO, true).unwrap_err();
        assert!(e.contains("32-bit"), "{e}");
        assert!(cell(&big, Src::Float(1.5), ISO, true).is_err());
        assert!(cell(&big, Src::Uint(u64::MAX), ISO, true).is_err());
        assert!(cell(&big, Src::Str("12a".into()), ISO, true).is_err());
    }

    #[test]
    fn timestamps_take_text_in_the_layouts_format_rfc3339_or_numbers_with_a_unit() {
        let mut ts = col(ColumnType::Timestamp);
        let want = NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_opt(1, 0, 1)
            .unwrap();
        assert_eq!(
            ok(&ts, Src::Str("2024-01-01 01:00:01".into())),
            Cell::Timestamp(want)
        );
        assert_eq!(
            ok(&ts, Src::Str("2024-01-01T02:00:01+01:00".into())),
            Cell::Timestamp(want)
        );
        let e = cell(&ts, Src::Int(1_704_070_801), ISO, true).unwrap_err();
        assert!(e.contains("unit"), "{e}");
        ts.unit = Some(super::super::TimeUnit::Seconds);
        assert_eq!(ok(&ts, Src::Int(1_704_070_801)), Cell::Timestamp(want));
        ts.unit = Some(super::super::TimeUnit::Millis);
        assert_eq!(ok(&ts, Src::Int(1_704_070_801_000)), Cell::Timestamp(want));
        assert_eq!(
            ok(&ts, Src::Micros(1_704_070_801_000_000)),
            Cell::Timestamp(want)
        );
        assert!(cell(&ts, Src::Str("yesterday".into()), ISO, true).is_err());
    }

    #[test]
    fn null_follows_the_column() {
        let mut t = col(ColumnType::Text);
        assert_eq!(ok(&t, Src::Missing), Cell::Null);
        assert!(cell(&t, Src::Missing, ISO, false)
            .unwrap_err()
            .contains("no NULL"));
        assert!(cell(&t, Src::Null, ISO, false).is_err());
        t.null_marker = Some("None".into());
        assert_eq!(ok(&t, Src::Str("None".into())), Cell::Null);
    }

    #[test]
    fn json_cells_hold_json_and_text_cells_check_length() {
        let j = col(ColumnType::Json);
        assert_eq!(
            ok(&j, Src::Compound("{\"a\":1}".into())),
            Cell::Json("{\"a\":1}".into())
        );
        assert_eq!(
            ok(&j, Src::Str("x\"y".into())),
            Cell::Json("\"x\\\"y\"".into())
        );
        // A string that looks like JSON stays a string; a delimited field is JSON itself.
        assert_eq!(ok(&j, Src::Str("[1]".into())), Cell::Json("\"[1]\"".into()));
        assert_eq!(field_src(&j, "[1]"), Ok(Src::Compound("[1]".into())));
        assert!(field_src(&j, "[1").unwrap_err().contains("not JSON"));
        assert!(cell(&j, Src::Compound("\"a\\u0000\"".into()), ISO, true).is_err());
        let mut t = col(ColumnType::Text);
        t.max_len = Some(3);
        assert!(cell(&t, Src::Str("\u{e9}\u{e9}\u{e9}".into()), ISO, true).is_ok());
        let e = cell(&t, Src::Str("abcd".into()), ISO, true).unwrap_err();
        assert!(e.contains("longer than 3"), "{e}");
    }

    #[test]
    fn cells_write_as_binary_text_and_json() {
        let d = Cell::Date(NaiveDate::from_ymd_opt(2000, 1, 2).unwrap());
        let mut out = Vec::new();
        d.write(CopyFormat::Binary, &mut out);
        assert_eq!(out, [0, 0, 0, 4, 0, 0, 0, 1]);
        out.clear();
        Cell::Json("{}".into()).write(CopyFormat::Binary, &mut out);
        assert_eq!(out, [0, 0, 0, 3, 1, b'{', b'}']);
        out.clear();
        Cell::Double(0.5).write(CopyFormat::Text, &mut out);
        assert_eq!(out, b"5e-1");
        out.clear();
        Cell::Text("a\"\n".into()).write_json(&mut out);
        assert_eq!(out, b"\"a\\\"\\n\"");
        out.clear();
        let t = NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_micro_opt(0, 0, 1, 5)
            .unwrap();
        Cell::Timestamp(t).write_json(&mut out);
        assert_eq!(out, b"\"2024-01-01 00:00:01.000005\"");
    }
}
