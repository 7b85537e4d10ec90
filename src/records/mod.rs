//! Record layout, archive framing (escape/unescape), and field validation.
//!
//! Archive framing: one record per line. Inside a record, the three bytes `\`, LF and CR are
//! written as a backslash followed by that byte. This is the one escaping that both
//! Redshift `COPY ... ESCAPE` (a backslash makes the next byte literal) and PostgreSQL's text
//! `COPY` (backslash + LF/CR/backslash) decode back to the original bytes, so an archived object
//! can be loaded server-side by Redshift and decoded by `copy` for PostgreSQL. Any byte string,
//! including invalid UTF-8 and the empty message, round-trips.

pub mod avro;
pub mod avro_cells;
pub mod codec;
pub mod json;
pub mod value;

pub use avro_cells::SchemaBook;
pub use codec::Codec;

use anyhow::{bail, Result};
use chrono::{Datelike, NaiveDateTime};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Appends `msg` to `out` escaped, followed by the record terminator `\n`.
pub fn frame_into(msg: &[u8], out: &mut Vec<u8>) {
    out.reserve(msg.len() + 1);
    let mut start = 0;
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\\' || b == b'\n' || b == b'\r' {
            out.extend_from_slice(&msg[start..i]);
            out.push(b'\\');
            out.push(b);
            start = i + 1;
        }
    }
    out.extend_from_slice(&msg[start..]);
    out.push(b'\n');
}

/// Reads framed records one at a time from a buffered reader.
pub struct FrameReader<R> {
    inner: R,
    /// 1-based number of the record most recently returned.
    pub record_no: u64,
}

impl<R: BufRead> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            record_no: 0,
        }
    }

    /// Reads the next record (unescaped) into `buf`. Returns false at end of input.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        buf.clear();
        self.append_next(buf)
    }

    /// Reads the next record (unescaped) onto the end of `buf` (records packed one after
    /// another, their ends kept by the caller). Returns false at end of input.
    pub fn append_next(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        let mut pending_escape = false;
        let mut any = false;
        loop {
            let avail = self.inner.fill_buf()?;
            if avail.is_empty() {
                if pending_escape {
                    bail!(
                        "record {}: truncated escape at end of object",
                        self.record_no + 1
                    );
                }
                if any {
                    bail!(
                        "record {}: last record has no terminating newline (truncated object?)",
                        self.record_no + 1
                    );
                }
                return Ok(false);
            }
            any = true;
            let mut consumed = 0;
            let mut done = false;
            // Copy the runs between special bytes whole.
            while consumed < avail.len() {
                if pending_escape {
                    buf.push(avail[consumed]);
                    consumed += 1;
                    pending_escape = false;
                    continue;
                }
                let rest = &avail[consumed..];
                match memchr::memchr2(b'\\', b'\n', rest) {
                    None => {
                        buf.extend_from_slice(rest);
                        consumed = avail.len();
                    }
                    Some(i) => {
                        buf.extend_from_slice(&rest[..i]);
                        consumed += i + 1;
                        if rest[i] == b'\n' {
                            done = true;
                            break;
                        }
                        pending_escape = true;
                    }
                }
            }
            self.inner.consume(consumed);
            if done {
                self.record_no += 1;
                return Ok(true);
            }
        }
    }
}

/// Column types the layout understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Bigint,
    Int,
    Timestamp,
    Text,
    /// A JSON value: PostgreSQL `jsonb`, Redshift `SUPER`.
    Json,
    /// `double precision` (finite values only: Redshift and JSON have no NaN).
    Double,
    Boolean,
    Date,
}

/// How a message's bytes hold its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// Fields separated by one byte (the tweets' `;`).
    #[default]
    Delimited,
    /// One JSON value per message; columns pick values by JSON Pointer.
    Json,
    /// Avro binary framed by a Confluent Schema Registry header (magic byte 0, schema id).
    Avro,
}

impl RecordFormat {
    pub fn name(self) -> &'static str {
        match self {
            RecordFormat::Delimited => "delimited",
            RecordFormat::Json => "json",
            RecordFormat::Avro => "avro",
        }
    }
}

/// What a number in a timestamp column counts from the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeUnit {
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "us")]
    Micros,
}

impl TimeUnit {
    /// Microseconds per unit.
    pub fn micros(self) -> i64 {
        match self {
            TimeUnit::Seconds => 1_000_000,
            TimeUnit::Millis => 1_000,
            TimeUnit::Micros => 1,
        }
    }
}

/// One column of the record layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Column name in the raw table (validated as an identifier).
    pub name: String,
    /// bigint, int, timestamp or text.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Maximum length of text columns: characters on PostgreSQL, bytes on Redshift (its
    /// varchar(n) counts bytes).
    #[serde(default)]
    pub max_len: Option<usize>,
    /// A field value that means NULL for this column (e.g. "None").
    #[serde(default)]
    pub null_marker: Option<String>,
    /// JSON records: where the value is, as a JSON Pointer (RFC 6901); "" is the whole
    /// record. Default: `/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Avro records: the field, as a dotted path through records (`user.id`). Default: the
    /// column's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Timestamp columns fed numbers: what the number counts since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<TimeUnit>,
    /// Whether a missing value or null loads as NULL. JSON: default false (a missing value is
    /// a bad record). Avro: default what the writer's schema says (a union with null, or a
    /// field the writer does not have, loads NULL); false makes NULL a bad record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nullable: Option<bool>,
}

impl Column {
    /// A column of `ty` named `name`, with nothing else set.
    pub fn new(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            max_len: None,
            null_marker: None,
            path: None,
            field: None,
            unit: None,
            nullable: None,
        }
    }

    /// The JSON Pointer of a JSON record's value.
    pub fn json_pointer(&self) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("/{}", self.name))
    }

    /// The Avro field path of an Avro record's value.
    pub fn avro_field(&self) -> &str {
        self.field.as_deref().unwrap_or(&self.name)
    }
}

/// The record layout: how a message splits into typed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub format: RecordFormat,
    pub delimiter: u8,
    pub trailing_delimiter: bool,
    pub columns: Vec<Column>,
    /// chrono format of timestamp fields.
    pub timestamp_format: String,
    /// A text column after the layout's columns that holds the topic of each row's record
    /// (`[[topics]] topic_column`: several topics in one raw table). Not in the records: the
    /// codec writes the topic it loads.
    pub topic_column: Option<String>,
}

impl Layout {
    /// The shipped example: `id;created_at;followers_count;location;favorite_count;retweet_count;`.
    pub fn tweets() -> Layout {
        let c = |name: &str, ty, max_len, null: Option<&str>| Column {
            max_len,
            null_marker: null.map(String::from),
            ..Column::new(name, ty)
        };
        Layout {
            format: RecordFormat::Delimited,
            delimiter: b';',
            trailing_delimiter: true,
            columns: vec![
                c("id", ColumnType::Bigint, None, None),
                c("created_at", ColumnType::Timestamp, None, None),
                c("followers_count", ColumnType::Int, None, None),
                c("location", ColumnType::Text, Some(256), Some("None")),
                c("favorite_count", ColumnType::Int, None, None),
                c("retweet_count", ColumnType::Int, None, None),
            ],
            timestamp_format: "%Y-%m-%d %H:%M:%S".into(),
            topic_column: None,
        }
    }

    /// The tweets as JSON messages (`tweets::Tweet::json`, `examples/tweets-json.toml`):
    /// followers and location under `/user`, location nullable.
    pub fn tweets_json() -> Layout {
        let mut l = Layout::tweets();
        l.format = RecordFormat::Json;
        for c in &mut l.columns {
            c.null_marker = None;
            match c.name.as_str() {
                "followers_count" => c.path = Some("/user/followers_count".into()),
                "location" => {
                    c.path = Some("/user/location".into());
                    c.nullable = Some(true);
                }
                _ => {}
            }
        }
        l
    }

    /// The tweets as Avro messages of `tweets::TWEET_AVRO_SCHEMA`
    /// (`examples/tweets-avro.toml`): followers and location in the `user` record.
    pub fn tweets_avro() -> Layout {
        let mut l = Layout::tweets();
        l.format = RecordFormat::Avro;
        for c in &mut l.columns {
            c.null_marker = None;
            if c.name == "followers_count" || c.name == "location" {
                c.field = Some(format!("user.{}", c.name));
            }
        }
        l
    }

    /// Validates one record and writes it as a PostgreSQL text-COPY row into `out`.
    /// On error, `out` is left as it was and the error names the column, value and reason.
    pub fn to_pg_copy_row(&self, rec: &[u8], out: &mut Vec<u8>) -> Result<(), RowError> {
        self.encode_row(rec, out, CopyFormat::Text)
    }

    /// Validates one record and writes it as a row of PostgreSQL's binary COPY format (a
    /// field count, then each field's length and network-order bytes) into `out`. The raw
    /// table's columns must have the layout's types exactly (`bigint`, `integer`, `timestamp`
    /// without time zone, `varchar`/`text`); the caller checks that before choosing binary.
    pub fn to_pg_binary_row(&self, rec: &[u8], out: &mut Vec<u8>) -> Result<(), RowError> {
        self.encode_row(rec, out, CopyFormat::Binary)
    }

    fn encode_row(
        &self,
        rec: &[u8],
        out: &mut Vec<u8>,
        format: CopyFormat,
    ) -> Result<(), RowError> {
        let start = out.len();
        // A row is never longer than the record plus each field's length word and widening.
        out.reserve(rec.len() + 2 + 12 * self.columns.len());
        if format == CopyFormat::Binary {
            out.extend_from_slice(&(self.columns.len() as i16).to_be_bytes());
        }
        // One pass: the UTF-8 check for the whole record (fields cut at an ASCII delimiter stay
        // valid; a record that fails it is checked field by field, to name the column), then
        // the fields at the delimiters. Whatever is wrong with the record's shape is reported
        // before any field's value, as `check_fields` says it.
        let text = simdutf8::basic::from_utf8(rec).ok();
        let mut ends = memchr::memchr_iter(self.delimiter, rec);
        let last = self.columns.len().saturating_sub(1);
        let mut begin = 0;
        for (i, col) in self.columns.iter().enumerate() {
            let end = match ends.next() {
                Some(e) if i < last || self.trailing_delimiter => e,
                None if i == last && !self.trailing_delimiter => rec.len(),
                _ => return Err(self.shape_error(rec, out, start, None)),
            };
            if format == CopyFormat::Text && i > 0 {
                out.push(b'\t');
            }
            let put = match text {
                Some(t) => self.put_field(col, &t[begin..end], format, out),
                None => self.field(col, &rec[begin..end], format, out),
            };
            begin = end + 1;
            if let Err(e) = put {
                return Err(self.shape_error(rec, out, start, Some(e)));
            }
        }
        // With a trailing delimiter, it must end the record.
        if self.trailing_delimiter && begin != rec.len() {
            return Err(self.shape_error(rec, out, start, None));
        }
        if format == CopyFormat::Text {
            out.push(b'\n');
        }
        Ok(())
    }

    /// The error of a record that failed: its shape's (field count, trailing delimiter) if that
    /// is wrong, else the field's. `out` goes back to `start`.
    fn shape_error(
        &self,
        rec: &[u8],
        out: &mut Vec<u8>,
        start: usize,
        field: Option<RowError>,
    ) -> RowError {
        out.truncate(start);
        match (self.check_fields(rec), field) {
            (Err(e), _) | (Ok(()), Some(e)) => e,
            (Ok(()), None) => RowError {
                column: None,
                value: None,
                reason: "malformed record".into(),
            },
        }
    }

    /// Checks the record's number of fields and its trailing delimiter.
    fn check_fields(&self, rec: &[u8]) -> Result<(), RowError> {
        let found = memchr::memchr_iter(self.delimiter, rec).count() + 1;
        let expected = self.columns.len() + usize::from(self.trailing_delimiter);
        if found != expected {
            return Err(RowError {
                column: None,
                value: None,
                reason: format!(
                    "expected {} fields separated by '{}'{}, found {found}",
                    self.columns.len(),
                    self.delimiter as char,
                    if self.trailing_delimiter {
                        " plus a trailing delimiter"
                    } else {
                        ""
                    },
                ),
            });
        }
        if self.trailing_delimiter {
            let last = rec
                .rsplit(|&b| b == self.delimiter)
                .next()
                .unwrap_or_default();
            if !last.is_empty() {
                return Err(RowError {
                    column: None,
                    value: Some(String::from_utf8_lossy(last).into_owned()),
                    reason: "text after the trailing delimiter".into(),
                });
            }
        }
        Ok(())
    }

    /// Parses and validates one field by its column and writes it into `out`.
    fn field(
        &self,
        col: &Column,
        raw: &[u8],
        format: CopyFormat,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        let err = |reason: String| RowError {
            column: Some(col.name.clone()),
            value: Some(String::from_utf8_lossy(raw).into_owned()),
            reason,
        };
        let s = std::str::from_utf8(raw).map_err(|e| err(format!("invalid UTF-8 ({e})")))?;
        self.put_field(col, s, format, out)
    }

    /// Parses and validates one field, known to be UTF-8, by its column, and writes it into
    /// `out` as COPY wants it: text COPY gets the text as it came (escaped, for text columns),
    /// binary COPY the value's length and network-order bytes.
    fn put_field(
        &self,
        col: &Column,
        s: &str,
        format: CopyFormat,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        let err = |reason: String| RowError {
            column: Some(col.name.clone()),
            value: Some(s.to_string()),
            reason,
        };
        let binary = format == CopyFormat::Binary;
        if col.null_marker.as_deref() == Some(s) {
            match format {
                CopyFormat::Binary => out.extend_from_slice(&(-1i32).to_be_bytes()),
                CopyFormat::Text => out.extend_from_slice(b"\\N"),
            }
            return Ok(());
        }
        match col.ty {
            ColumnType::Bigint => {
                let v = s
                    .parse::<i64>()
                    .map_err(|_| err("not a 64-bit integer".into()))?;
                if binary {
                    put_binary(out, &v.to_be_bytes());
                    return Ok(());
                }
            }
            ColumnType::Int => {
                let v = s
                    .parse::<i32>()
                    .map_err(|_| err("not a 32-bit integer".into()))?;
                if binary {
                    put_binary(out, &v.to_be_bytes());
                    return Ok(());
                }
            }
            ColumnType::Timestamp => {
                let fast = (self.timestamp_format == ISO_SECONDS)
                    .then(|| parse_iso_seconds(s))
                    .flatten();
                let t = match fast {
                    Some(t) => t,
                    None => {
                        NaiveDateTime::parse_from_str(s, &self.timestamp_format).map_err(|e| {
                            err(format!(
                                "not a timestamp in format {} ({e})",
                                self.timestamp_format
                            ))
                        })?
                    }
                };
                // PostgreSQL has no year 0 (1 BC): refused here in both formats alike.
                if t.year() < 1 {
                    return Err(err("a year before 1 AD".into()));
                }
                if binary {
                    // A leap second (:60) carries over into the next minute, as PostgreSQL's
                    // own input does.
                    let micros = t.and_utc().timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
                    put_binary(out, &micros.to_be_bytes());
                    return Ok(());
                }
                // Text COPY: the server reads a timestamp under its DateStyle, which decides
                // what 01/02/2024 is; ISO year-month-day is read the same under every one. A
                // record already in it goes as it came.
                if fast.is_none() {
                    use std::io::Write as _;
                    let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.f"));
                    return Ok(());
                }
            }
            ColumnType::Json | ColumnType::Double | ColumnType::Boolean | ColumnType::Date => {
                let cell = value::field_src(col, s)
                    .and_then(|src| value::cell(col, src, &self.timestamp_format, false))
                    .map_err(err)?;
                cell.write(format, out);
                return Ok(());
            }
            ColumnType::Text => {
                if s.contains('\0') {
                    return Err(err("contains a NUL byte".into()));
                }
                // A value no longer in bytes than the limit is within it in characters.
                if let Some(max) = col.max_len.filter(|&max| s.len() > max) {
                    let n = s.chars().count();
                    if n > max {
                        return Err(err(format!("{n} characters, longer than {max}")));
                    }
                }
                match format {
                    CopyFormat::Binary => put_binary(out, s.as_bytes()),
                    CopyFormat::Text => pg_escape_into(s.as_bytes(), out),
                }
                return Ok(());
            }
        }
        // Text COPY: a checked number or timestamp goes as it came.
        out.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A delimited timestamp field in the layout's format (what COPY rows take).
pub(crate) fn parse_timestamp_field(s: &str, format: &str) -> Result<NaiveDateTime, String> {
    if format == ISO_SECONDS {
        if let Some(t) = parse_iso_seconds(s) {
            return Ok(t);
        }
    }
    NaiveDateTime::parse_from_str(s, format)
        .map_err(|e| format!("not a timestamp in format {format} ({e})"))
}

/// The tweets' timestamp format, which `parse_iso_seconds` reads without chrono's parser.
pub(crate) const ISO_SECONDS: &str = "%Y-%m-%d %H:%M:%S";

/// The six numbers of `YYYY-MM-DD HH:MM:SS` (19 bytes, digits and separators in place),
/// unchecked beyond that: year, month, day, hour, minute, second.
#[inline]
pub(crate) fn iso_seconds_fields(s: &str) -> Option<[u32; 6]> {
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    Some([
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    ])
}

/// `YYYY-MM-DD HH:MM:SS` (19 bytes) parsed directly; None for anything else, which then goes
/// to chrono (so what is accepted does not change, only how fast). Second 60 is a leap
/// second, as chrono reads it.
pub(crate) fn parse_iso_seconds(s: &str) -> Option<NaiveDateTime> {
    let [y, mo, d, h, m, sec] = iso_seconds_fields(s)?;
    let date = chrono::NaiveDate::from_ymd_opt(y as i32, mo, d)?;
    let time = if sec == 60 {
        chrono::NaiveTime::from_hms_nano_opt(h, m, 59, 1_000_000_000)?
    } else {
        chrono::NaiveTime::from_hms_opt(h, m, sec)?
    };
    Some(date.and_time(time))
}

/// PostgreSQL's two COPY formats that `copy` can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CopyFormat {
    Text,
    #[default]
    Binary,
}

/// The header of a binary COPY stream: signature, flags, no header extension.
pub const PG_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The trailer of a binary COPY stream: a field count of -1.
pub const PG_BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One binary COPY field: its length, then its bytes.
fn put_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Escapes a value for PostgreSQL text COPY.
pub fn pg_escape_into(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

/// Why a record cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub column: Option<String>,
    pub value: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(c) = &self.column {
            write!(f, "column {c}: ")?;
        }
        if let Some(v) = &self.value {
            let short: String = v.chars().take(80).collect();
            write!(f, "value {short:?}: ")?;
        }
        write!(f, "{}", self.reason)
    }
}

/// Writes a framed record to any writer (used by tests and tools).
pub fn write_framed<W: Write>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let mut v = Vec::with_capacity(msg.len() + 2);
    frame_into(msg, &mut v);
    w.write_all(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msgs: &[&[u8]]) {
        let mut buf = Vec::new();
        for m in msgs {
            frame_into(m, &mut buf);
        }
        let mut r = FrameReader::new(&buf[..]);
        let mut got = Vec::new();
        let mut rec = Vec::new();
        while r.next_into(&mut rec).unwrap() {
            got.push(rec.clone());
        }
        let want: Vec<Vec<u8>> = msgs.iter().map(|m| m.to_vec()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn framing_round_trips_awkward_messages() {
        roundtrip(&[
            b"plain",
            b"",
            b"new\nline",
            b"cr\r\nlf",
            b"back\\slash\\",
            b"\\",
            b"\n",
            &[0xff, 0xfe, 0x00, b'\\', b'n'],
            "emoji \u{1F600};x;".as_bytes(),
        ]);
    }

    #[test]
    fn framing_escapes_exactly_backslash_lf_cr() {
        let mut out = Vec::new();
        frame_into(b"a\\b\nc\rd\te", &mut out);
        assert_eq!(out, b"a\\\\b\\\nc\\\rd\te\n");
    }

    #[test]
    fn truncated_object_is_an_error() {
        let mut r = FrameReader::new(&b"abc"[..]);
        let mut rec = Vec::new();
        assert!(r.next_into(&mut rec).is_err());
    }

    #[test]
    fn invalid_utf8_is_refused_naming_its_column_in_both_formats() {
        let l = Layout::tweets();
        for binary in [false, true] {
            let mut out = b"kept".to_vec();
            let rec = b"4;2024-01-01 00:00:00;5;\xff\xfe;1;1;";
            let e = if binary {
                l.to_pg_binary_row(rec, &mut out)
            } else {
                l.to_pg_copy_row(rec, &mut out)
            }
            .unwrap_err();
            assert_eq!(e.column.as_deref(), Some("location"), "{e:?}");
            assert!(e.reason.contains("invalid UTF-8"), "{e:?}");
            assert_eq!(out, b"kept", "a refused row left bytes behind");
        }
    }

    #[test]
    fn tweet_row_converts_and_null_marker_applies() {
        let l = Layout::tweets();
        let mut out = Vec::new();
        l.to_pg_copy_row(b"1;2020-01-02 03:04:05;10;None;2;3;", &mut out)
            .unwrap();
        assert_eq!(out, b"1\t2020-01-02 03:04:05\t10\t\\N\t2\t3\n");
        out.clear();
        l.to_pg_copy_row(
            "7;2020-01-02 03:04:05;1;Z\u{fc}rich\tx\\;0;0;".as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            "7\t2020-01-02 03:04:05\t1\tZ\u{fc}rich\\tx\\\\\t0\t0\n".as_bytes()
        );
    }

    #[test]
    fn binary_rows_hold_network_order_values_and_year_zero_is_refused() {
        let l = Layout::tweets();
        let mut out = Vec::new();
        l.to_pg_binary_row(b"-2;2000-01-01 00:00:01;7;None;0;1;", &mut out)
            .unwrap();
        let mut want = 6i16.to_be_bytes().to_vec();
        for (len, bytes) in [
            (8i32, (-2i64).to_be_bytes().to_vec()),
            (8, 1_000_000i64.to_be_bytes().to_vec()),
            (4, 7i32.to_be_bytes().to_vec()),
        ] {
            want.extend_from_slice(&len.to_be_bytes());
            want.extend_from_slice(&bytes);
        }
        want.extend_from_slice(&(-1i32).to_be_bytes());
        for v in [0i32, 1] {
            want.extend_from_slice(&4i32.to_be_bytes());
            want.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(out, want);
        for f in [Layout::to_pg_copy_row, Layout::to_pg_binary_row] {
            let mut out = Vec::new();
            let e = f(&l, b"1;0000-06-01 00:00:00;1;x;1;1;", &mut out).unwrap_err();
            assert!(e.reason.contains("before 1 AD"), "{e}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn bad_rows_name_column_and_reason() {
        let l = Layout::tweets();
        let mut out = Vec::new();
        let e = l
            .to_pg_copy_row(b"1;2020-01-02 03:04:05;10;Paris; France;2;3;", &mut out)
            .unwrap_err();
        assert!(e.reason.contains("found 8"), "{e}");
        let e = l
            .to_pg_copy_row(b"1;2020-01-02 03:04:05;ten;Paris;2;3;", &mut out)
            .unwrap_err();
        assert_eq!(e.column.as_deref(), Some("followers_count"));
        let e = l
            .to_pg_copy_row(b"1;yesterday;1;Paris;2;3;", &mut out)
            .unwrap_err();
        assert_eq!(e.column.as_deref(), Some("created_at"));
        let e = l
            .to_pg_copy_row(b"1;2020-01-02 03:04:05;1;\xff\xfe;2;3;", &mut out)
            .unwrap_err();
        assert!(e.reason.contains("UTF-8"));
        let long = format!("1;2020-01-02 03:04:05;1;{};2;3;", "x".repeat(300));
        let e = l.to_pg_copy_row(long.as_bytes(), &mut out).unwrap_err();
        assert!(e.reason.contains("longer than 256"));
        let e = l
            .to_pg_copy_row(b"1;2020-01-02 03:04:05;1;x;2;3;junk", &mut out)
            .unwrap_err();
        assert!(e.reason.contains("trailing"));
        assert!(out.is_empty());
    }

    #[test]
    fn a_layout_without_trailing_delimiter_takes_exactly_its_fields() {
        let mut l = Layout::tweets();
        l.trailing_delimiter = false;
        l.columns.truncate(3);
        let mut out = Vec::new();
        l.to_pg_binary_row(b"1;2020-01-02 03:04:05;7", &mut out)
            .unwrap();
        // Field count, then bigint and timestamp (8 bytes each) and int (4), each after its length.
        assert_eq!(out.len(), 2 + (4 + 8) + (4 + 8) + (4 + 4));
        for (rec, why) in [
            (&b"1;2020-01-02 03:04:05;7;"[..], "found 4"),
            (b"1;2020-01-02 03:04:05", "found 2"),
            (b"1;2020-01-02 03:04:05;7;8", "found 4"),
        ] {
            let mut out = b"kept".to_vec();
            let e = l.to_pg_copy_row(rec, &mut out).unwrap_err();
            assert!(e.reason.contains(why), "{e:?}");
            assert_eq!(out, b"kept");
        }
    }

    mod properties {
        //! Property tests: any bytes round-trip through the framing, and any record gives a
        //! row or a reject, never a panic; a valid row keeps its fields.
        use super::*;
        use proptest::prelude::*;

        fn decode_all(buf: &[u8]) -> Vec<Vec<u8>> {
            let mut r = FrameReader::new(buf);
            let mut got = Vec::new();
            let mut rec = Vec::new();
            while r.next_into(&mut rec).unwrap() {
                got.push(rec.clone());
            }
            got
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_messages_round_trip(msgs in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
                let mut buf = Vec::new();
                for m in &msgs {
                    frame_into(m, &mut buf);
                }
                prop_assert_eq!(decode_all(&buf), msgs);
            }

            #[test]
            fn framed_bytes_hold_no_bare_newline(m in proptest::collection::vec(any::<u8>(), 0..500)) {
                let mut buf = Vec::new();
                frame_into(&m, &mut buf);
                // Exactly one record terminator: every other LF is escaped.
                let mut bare = 0;
                let mut escaped = false;
                for &b in &buf {
                    if escaped { escaped = false; continue; }
                    if b == b'\\' { escaped = true; } else if b == b'\n' { bare += 1; }
                }
                prop_assert_eq!(bare, 1);
            }

            #[test]
            fn any_bytes_decode_or_fail_cleanly(buf in proptest::collection::vec(any::<u8>(), 0..2000)) {
                let mut r = FrameReader::new(&buf[..]);
                let mut rec = Vec::new();
                for _ in 0..buf.len() + 1 {
                    match r.next_into(&mut rec) {
                        Ok(true) => {}
                        Ok(false) | Err(_) => break,
                    }
                }
            }

            #[test]
            fn any_record_is_a_row_or_a_reject(rec in proptest::collection::vec(any::<u8>(), 0..400)) {
                let l = Layout::tweets();
                let mut out = b"keep".to_vec();
                match l.to_pg_copy_row(&rec, &mut out) {
                    Ok(()) => {
                        prop_assert!(out.starts_with(b"keep") && out.ends_with(b"\n"));
                        let row = &out[4..out.len() - 1];
                        prop_assert_eq!(row.split(|&b| b == b'\t').count(), 6);
                    }
                    Err(e) => {
                        prop_assert_eq!(&out[..], b"keep", "a reject left bytes behind");
                        prop_assert!(!e.reason.is_empty());
                    }
                }
            }

            #[test]
            fn a_record_of_the_wrong_shape_says_so_before_any_value(
                rec in "[0-9a-z;: \\-]{0,60}", trailing in any::<bool>(), binary in any::<bool>()) {
                let mut l = Layout::tweets();
                l.trailing_delimiter = trailing;
                let mut out = Vec::new();
                let got = if binary {
                    l.to_pg_binary_row(rec.as_bytes(), &mut out)
                } else {
                    l.to_pg_copy_row(rec.as_bytes(), &mut out)
                };
                if let Err(shape) = l.check_fields(rec.as_bytes()) {
                    prop_assert_eq!(got.unwrap_err(), shape);
                    prop_assert!(out.is_empty());
                }
            }

            #[test]
            fn the_fast_timestamp_path_agrees_with_chrono(
                y in 0u32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62,
                sec in 0u32..62, junk in proptest::option::of(0usize..19)) {
                let mut t = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{sec:02}").into_bytes();
                if let Some(i) = junk {
                    t[i] = b'x';
                }
                let t = String::from_utf8(t).unwrap();
                let chrono = NaiveDateTime::parse_from_str(&t, ISO_SECONDS).ok();
                prop_assert_eq!(parse_iso_seconds(&t), chrono, "{}", t);
                // The fast reading's time is chrono's, in microseconds, for every time it
                // reads; it reads every time of the years 1-9999 that chrono reads, but a
                // leap second.
                let micros = chrono
                    .filter(|_| sec < 60 && y >= 1)
                    .map(|t| t.and_utc().timestamp_micros());
                prop_assert_eq!(codec::iso_seconds_micros(&t), micros, "{}", t);
            }

            #[test]
            fn valid_tweets_with_any_location_load(
                id in any::<i64>(), followers in any::<i32>(),
                location in "[^;\\x00]{0,256}", fav in any::<i32>(), rt in any::<i32>()) {
                let rec = format!("{id};2021-05-06 07:08:09;{followers};{location};{fav};{rt};");
                let mut out = Vec::new();
                prop_assert!(Layout::tweets().to_pg_copy_row(rec.as_bytes(), &mut out).is_ok(), "{}", rec);
            }
        }
    }
}
