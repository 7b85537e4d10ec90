//! The layout with what decoding its records needs (an Avro topic's writer schemas, read from
//! the archive): what the loaders call for each record.

use super::value::{self, Cell};
use super::{avro_cells, json, CopyFormat, Layout, RecordFormat, RowError, SchemaBook};
use std::ops::Deref;

/// Decodes records of one layout into rows for each loader.
#[derive(Debug, Clone)]
pub struct Codec {
    layout: Layout,
    /// Avro: the archive's writer schemas.
    schemas: std::sync::Arc<SchemaBook>,
    /// JSON: each column's pointer.
    pointers: Vec<String>,
    /// The topic the rows come from, written after the layout's columns when the layout has a
    /// topic column (several topics in one raw table).
    topic: Option<String>,
    /// Whether the layout's timestamp format is `YYYY-MM-DD HH:MM:SS`, which delimited fields
    /// are read in without chrono's parser.
    iso_seconds: bool,
}

impl Deref for Codec {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

impl Codec {
    /// A codec for a layout whose records need nothing else (delimited and JSON).
    pub fn new(layout: Layout) -> Codec {
        Codec {
            pointers: layout.columns.iter().map(|c| c.json_pointer()).collect(),
            iso_seconds: layout.timestamp_format == super::ISO_SECONDS,
            layout,
            schemas: Default::default(),
            topic: None,
        }
    }

    /// The same codec for rows of this topic: a layout with a topic column gets its name.
    pub fn for_topic(mut self, topic: &str) -> Codec {
        if self.layout.topic_column.is_some() {
            self.topic = Some(topic.to_string());
        }
        self
    }

    /// Appends the topic cell to a row just written from `start` (its field count, in
    /// binary, counts one more field).
    fn topic_cell(&self, format: CopyFormat, start: usize, out: &mut Vec<u8>) {
        let Some(t) = &self.topic else { return };
        match format {
            CopyFormat::Binary => {
                let n = i16::from_be_bytes([out[start], out[start + 1]]) + 1;
                out[start..start + 2].copy_from_slice(&n.to_be_bytes());
                out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                out.extend_from_slice(t.as_bytes());
            }
            CopyFormat::Text => {
                // A topic name is [a-zA-Z0-9._-]: nothing to escape.
                out.pop();
                out.push(b'\t');
                out.extend_from_slice(t.as_bytes());
                out.push(b'\n');
            }
        }
    }

    /// A codec for Avro records written with these schemas (id, schema text), as the
    /// archive's `_schemas/` holds them.
    pub fn with_schemas(layout: Layout, schemas: &[(u32, String)]) -> anyhow::Result<Codec> {
        let book = SchemaBook::new(schemas, &layout.columns)?;
        Ok(Codec {
            schemas: std::sync::Arc::new(book),
            ..Codec::new(layout)
        })
    }

    /// Validates one record and writes it as a PostgreSQL text-COPY row into `out`. On error,
    /// `out` is as it was and the error names the column, value and reason.
    pub fn to_pg_copy_row(&self, rec: &[u8], out: &mut Vec<u8>) -> Result<(), RowError> {
        self.pg_row(rec, CopyFormat::Text, out)
    }

    /// As [`Codec::to_pg_copy_row`], in PostgreSQL's binary COPY format.
    pub fn to_pg_binary_row(&self, rec: &[u8], out: &mut Vec<u8>) -> Result<(), RowError> {
        self.pg_row(rec, CopyFormat::Binary, out)
    }

    fn pg_row(&self, rec: &[u8], format: CopyFormat, out: &mut Vec<u8>) -> Result<(), RowError> {
        let start = out.len();
        let r = self.pg_row_of_layout(rec, format, out);
        if r.is_ok() {
            self.topic_cell(format, start, out);
        }
        r
    }

    fn pg_row_of_layout(
        &self,
        rec: &[u8],
        format: CopyFormat,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        match self.layout.format {
            RecordFormat::Delimited => match format {
                CopyFormat::Text => self.layout.to_pg_copy_row(rec, out),
                CopyFormat::Binary => self.layout.to_pg_binary_row(rec, out),
            },
            _ => {
                let start = out.len();
                if format == CopyFormat::Binary {
                    out.extend_from_slice(&(self.layout.columns.len() as i16).to_be_bytes());
                }
                let r = self.each_cell(rec, &mut |i, c| {
                    if format == CopyFormat::Text && i > 0 {
                        out.push(b'\t');
                    }
                    c.write(format, out);
                });
                if r.is_err() {
                    out.truncate(start);
                } else if format == CopyFormat::Text {
                    out.push(b'\n');
                }
                r
            }
        }
    }

    /// Validates one record and writes it as one JSON object per line, keyed by column name
    /// (Redshift's staging objects): see [`Cell::write_json`].
    pub fn to_json_row(&self, rec: &[u8], out: &mut Vec<u8>) -> Result<(), RowError> {
        let start = out.len();
        out.push(b'{');
        let r = self.each_cell(rec, &mut |i, c| {
            if i > 0 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut *out, &self.layout.columns[i].name);
            out.push(b':');
            c.write_json(out);
        });
        match r {
            Ok(()) => {
                out.extend_from_slice(b"}\n");
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Calls `f` with each column's checked cell of a record, in column order; stops at the
    /// first column that does not fit. Refuses what the loaders refuse (a delimited
    /// timestamp only in the layout's format, as `copy` reads it): what `publish` writes.
    pub fn cells(&self, rec: &[u8], f: &mut dyn FnMut(usize, Cell<'_>)) -> Result<(), RowError> {
        self.each_cell(rec, f)
    }

    /// Calls `f` with each column's cell of a record, in column order; stops at the first
    /// column that does not fit.
    fn each_cell(&self, rec: &[u8], f: &mut dyn FnMut(usize, Cell<'_>)) -> Result<(), RowError> {
        let ts = &self.layout.timestamp_format;
        match self.layout.format {
            RecordFormat::Json => {
                let doc = json::parse(rec)?;
                for (i, col) in self.layout.columns.iter().enumerate() {
                    f(i, json::cell(col, &self.pointers[i], &doc, ts)?);
                }
                Ok(())
            }
            RecordFormat::Avro => {
                avro_cells::each_cell(&self.schemas, &self.layout.columns, ts, rec, f)
            }
            RecordFormat::Delimited => self.delimited_cells(rec, f),
        }
    }

    /// [`Codec::each_cell`] of a delimited record: one pass over the delimiters, one UTF-8
    /// check of the whole record (SIMD), then each field by its column. Whatever is wrong with
    /// the record's shape is reported before any field's value (`Layout::check_fields`), as
    /// copy reports it; cells already handed to `f` are for the caller to drop.
    fn delimited_cells(
        &self,
        rec: &[u8],
        f: &mut dyn FnMut(usize, Cell<'_>),
    ) -> Result<(), RowError> {
        let text = match self.layout.delimiter.is_ascii() {
            true => simdutf8::basic::from_utf8(rec).ok(),
            false => None,
        };
        // Not UTF-8 (or a delimiter that is not ASCII, which could cut a character): field by
        // field, for the message to name the column.
        match text {
            Some(text) => self.delimited_text_cells(text, f),
            None => self.delimited_cells_bytes(rec, f),
        }
    }

    /// [`Codec::cells`] of a record already known to be UTF-8 (a slice of a batch checked
    /// whole, say): the same cells and errors, without checking it again.
    pub fn text_cells(
        &self,
        rec: &str,
        f: &mut dyn FnMut(usize, Cell<'_>),
    ) -> Result<(), RowError> {
        match self.layout.format {
            RecordFormat::Delimited if self.layout.delimiter.is_ascii() => {
                self.delimited_text_cells(rec, f)
            }
            _ => self.each_cell(rec.as_bytes(), f),
        }
    }

    /// [`Codec::delimited_cells`] of a UTF-8 record (the delimiter is ASCII).
    fn delimited_text_cells(
        &self,
        text: &str,
        f: &mut dyn FnMut(usize, Cell<'_>),
    ) -> Result<(), RowError> {
        let l = &self.layout;
        let rec = text.as_bytes();
        let shape = || match l.check_fields(rec) {
            Err(e) => e,
            Ok(()) => RowError {
                column: None,
                value: None,
                reason: "fields that do not fit the layout".into(),
            },
        };
        let last = l.columns.len().saturating_sub(1);
        let mut ends = memchr::memchr_iter(l.delimiter, rec);
        let mut begin = 0;
        for (i, col) in l.columns.iter().enumerate() {
            let end = match ends.next() {
                Some(e) if i < last || l.trailing_delimiter => e,
                None if i == last && !l.trailing_delimiter => rec.len(),
                _ => return Err(shape()),
            };
            match self.delimited_cell(col, &text[begin..end]) {
                Ok(c) => f(i, c),
                Err(e) => {
                    l.check_fields(rec)?;
                    return Err(e);
                }
            }
            begin = end + 1;
        }
        // With a trailing delimiter it must end the record; without, the last field does.
        if l.trailing_delimiter && begin != rec.len() {
            return Err(shape());
        }
        Ok(())
    }

    /// [`Codec::delimited_cells`] of a record that is not UTF-8 as a whole.
    fn delimited_cells_bytes(
        &self,
        rec: &[u8],
        f: &mut dyn FnMut(usize, Cell<'_>),
    ) -> Result<(), RowError> {
        self.layout.check_fields(rec)?;
        let d = self.layout.delimiter;
        for (i, (col, raw)) in self
            .layout
            .columns
            .iter()
            .zip(rec.split(|&b| b == d))
            .enumerate()
        {
            let err = |reason: String| RowError {
                column: Some(col.name.clone()),
                value: Some(String::from_utf8_lossy(raw).into_owned()),
                reason,
            };
            let s = std::str::from_utf8(raw).map_err(|e| err(format!("invalid UTF-8 ({e})")))?;
            f(i, self.delimited_cell(col, s)?);
        }
        Ok(())
    }

    /// A delimited field's cell: a timestamp in the layout's format only (as copy's COPY rows
    /// take it); NULL only as the column's null marker, which COPY loads as NULL (the marker is
    /// the column's way to say it takes NULL). Integers, timestamps and text are read here
    /// directly; they are what `value::cell` makes of the field (a unit test holds the two
    /// together), without its detour through a source value.
    fn delimited_cell<'a>(&self, col: &super::Column, s: &'a str) -> Result<Cell<'a>, RowError> {
        use super::ColumnType as T;
        let err = |reason: String| RowError {
            column: Some(col.name.clone()),
            value: Some(s.to_string()),
            reason,
        };
        if col.null_marker.as_deref() == Some(s) {
            return Ok(Cell::Null);
        }
        match col.ty {
            T::Bigint => s
                .parse::<i64>()
                .map(Cell::Bigint)
                .map_err(|_| err("not a 64-bit integer".into())),
            T::Int => match s.parse::<i64>() {
                Ok(v) => i32::try_from(v)
                    .map(Cell::Int)
                    .map_err(|_| err(format!("{v} is out of a 32-bit integer's range"))),
                Err(_) => Err(err("not a 64-bit integer".into())),
            },
            T::Timestamp => {
                let ts = &self.layout.timestamp_format;
                let fast = if self.iso_seconds {
                    super::parse_iso_seconds(s)
                } else {
                    None
                };
                let t = match fast {
                    Some(t) => t,
                    None => super::parse_timestamp_field(s, ts).map_err(err)?,
                };
                value::checked_timestamp(t)
                    .map(Cell::Timestamp)
                    .map_err(err)
            }
            T::Text => value::checked_text(col, s.into())
                .map(Cell::Text)
                .map_err(err),
            T::Json | T::Double | T::Boolean | T::Date => {
                let ts = &self.layout.timestamp_format;
                let src = value::field_src(col, s).map_err(err)?;
                value::cell(col, src, ts, true).map_err(err)
            }
        }
    }

    /// What the field's cell was before the direct reads of [`Codec::delimited_cell`]: every
    /// field through `value::cell`. The unit tests hold the two together.
    #[cfg(test)]
    fn delimited_cell_by_value<'a>(
        &self,
        col: &super::Column,
        s: &'a str,
    ) -> Result<Cell<'a>, RowError> {
        let err = |reason: String| RowError {
            column: Some(col.name.clone()),
            value: Some(s.to_string()),
            reason,
        };
        let ts = &self.layout.timestamp_format;
        let src = if col.ty == super::ColumnType::Timestamp && col.null_marker.as_deref() != Some(s)
        {
            let t = super::parse_timestamp_field(s, ts).map_err(err)?;
            value::Src::Micros(t.and_utc().timestamp_micros())
        } else {
            value::field_src(col, s).map_err(err)?
        };
        value::cell(col, src, ts, true).map_err(err)
    }
}

/// Columns a [`FastDelimited`] reads at most (its values go in an array on the stack).
pub const FAST_COLUMNS: usize = 32;

/// The fast reading of a delimited layout's records (publish's decoders): each field parsed
/// straight into the value its Parquet column takes, with no cell and no callback per field.
/// It takes only what the general path ([`Codec::text_cells`]) reads without an error, and
/// gives the same values; any other record (a field it does not take, a bad one, the wrong
/// number of fields) it leaves to the general path, which reads it or names its error.
#[derive(Debug, Clone)]
pub struct FastDelimited {
    delimiter: u8,
    trailing: bool,
    columns: Vec<FastColumn>,
}

#[derive(Debug, Clone)]
struct FastColumn {
    kind: FastKind,
    null_marker: Option<String>,
}

/// What a [`FastColumn`] reads its field as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastKind {
    Bigint,
    Int,
    /// `YYYY-MM-DD HH:MM:SS` (the layout's timestamp format), as microseconds since the epoch.
    Timestamp,
    Text {
        max_len: Option<usize>,
    },
}

/// A field's value as its Parquet column takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastValue<'a> {
    Null,
    I64(i64),
    I32(i32),
    Text(&'a str),
}

impl Codec {
    /// The fast reading of this layout's records: None unless the records are delimited (by
    /// an ASCII byte) and every column is a bigint, int, text, or timestamp in the
    /// `YYYY-MM-DD HH:MM:SS` format, [`FAST_COLUMNS`] at most.
    pub fn fast_delimited(&self) -> Option<FastDelimited> {
        use super::ColumnType as T;
        let l = &self.layout;
        if l.format != RecordFormat::Delimited
            || !l.delimiter.is_ascii()
            || l.columns.is_empty()
            || l.columns.len() > FAST_COLUMNS
        {
            return None;
        }
        let columns = l
            .columns
            .iter()
            .map(|c| {
                let kind = match c.ty {
                    T::Bigint => FastKind::Bigint,
                    T::Int => FastKind::Int,
                    T::Timestamp if self.iso_seconds => FastKind::Timestamp,
                    T::Text => FastKind::Text { max_len: c.max_len },
                    _ => return None,
                };
                Some(FastColumn {
                    kind,
                    null_marker: c.null_marker.clone(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FastDelimited {
            delimiter: l.delimiter,
            trailing: l.trailing_delimiter,
            columns,
        })
    }
}

impl FastDelimited {
    /// The layout's columns: the values [`FastDelimited::read`] gives a record.
    pub fn columns(&self) -> usize {
        self.columns.len()
    }

    /// What each column is read as, in order.
    pub fn kinds(&self) -> impl Iterator<Item = FastKind> + '_ {
        self.columns.iter().map(|c| c.kind)
    }

    /// Reads a record (UTF-8) into `out`, one value per column in order (`out` is at least
    /// that long); false when the record is one to leave to the general path (what `out`
    /// holds then means nothing).
    #[inline]
    pub fn read<'a>(&self, rec: &'a str, out: &mut [FastValue<'a>]) -> bool {
        let b = rec.as_bytes();
        let last = self.columns.len() - 1;
        let mut ends = memchr::memchr_iter(self.delimiter, b);
        let mut begin = 0;
        for (i, (col, slot)) in self.columns.iter().zip(out.iter_mut()).enumerate() {
            // The fields as `Codec::delimited_text_cells` cuts them.
            let end = match ends.next() {
                Some(e) if i < last || self.trailing => e,
                None if i == last && !self.trailing => b.len(),
                _ => return false,
            };
            // The delimiter is ASCII: a cut next to it is a character boundary.
            let Some(v) = col.read(&rec[begin..end]) else {
                return false;
            };
            *slot = v;
            begin = end + 1;
        }
        !self.trailing || begin == b.len()
    }
}

impl FastColumn {
    /// A field's value where `Codec::delimited_cell` reads it without an error, else None.
    #[inline]
    fn read<'a>(&self, s: &'a str) -> Option<FastValue<'a>> {
        if self.null_marker.as_deref() == Some(s) {
            return Some(FastValue::Null);
        }
        match self.kind {
            FastKind::Bigint => s.parse::<i64>().ok().map(FastValue::I64),
            FastKind::Int => s
                .parse::<i64>()
                .ok()
                .and_then(|v| i32::try_from(v).ok())
                .map(FastValue::I32),
            FastKind::Timestamp => iso_seconds_micros(s).map(FastValue::I64),
            FastKind::Text { max_len } => {
                // `value::checked_text`: no NUL, at most max_len characters.
                if memchr::memchr(0, s.as_bytes()).is_some() {
                    return None;
                }
                if let Some(max) = max_len.filter(|&m| s.len() > m) {
                    if s.chars().count() > max {
                        return None;
                    }
                }
                Some(FastValue::Text(s))
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` as microseconds since the Unix epoch, for the times that
/// [`super::parse_iso_seconds`] reads and `value::checked_timestamp` keeps as they are: a
/// real date of the years 1 to 9999 and a time before 24:00:00 (a leap second, `:60`, is
/// left to the general path, which moves it to the next second).
#[inline]
pub fn iso_seconds_micros(s: &str) -> Option<i64> {
    let [y, mo, d, h, mi, sec] = super::iso_seconds_fields(s)?.map(i64::from);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if y < 1 || d < 1 || d > month_days || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    // Days from 1970-01-01 to the date (the proleptic Gregorian calendar): March-based years,
    // so that the leap day ends a year; 719,468 days from 0000-03-01 to 1970-01-01.
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3_600 + mi * 60 + sec) * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Column, ColumnType};

    const TWEET: &[u8] = br#"{"id":7,"created_at":"2024-01-01T00:00:01Z","user":{"followers_count":5,"location":"Tab\tTown"},"favorite_count":1,"retweet_count":2}"#;

    #[test]
    fn a_json_tweet_becomes_the_same_rows_as_its_delimited_twin() {
        let j = Codec::new(Layout::tweets_json());
        let d = Codec::new(Layout::tweets());
        let twin = "7;2024-01-01 00:00:01;5;Tab\tTown;1;2;".as_bytes();
        for format in [CopyFormat::Text, CopyFormat::Binary] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            j.pg_row(TWEET, format, &mut a).unwrap();
            d.pg_row(twin, format, &mut b).unwrap();
            assert_eq!(a, b, "{format:?}");
        }
        // A delimited field equal to its column's null marker is NULL here as in COPY.
        let mut out = Vec::new();
        d.to_json_row(b"7;2024-01-01 00:00:01;5;None;1;2;", &mut out)
            .unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains(r#""location":null"#),
            "a null marker is not NULL"
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        j.to_json_row(TWEET, &mut a).unwrap();
        d.to_json_row(twin, &mut b).unwrap();
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(a["location"], "Tab\tTown");
        assert_eq!(a["created_at"], "2024-01-01 00:00:01.000000");
        assert_eq!(a["id"], 7);
        let b: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(b["location"], "Tab\tTown");
    }

    #[test]
    fn a_bad_json_record_leaves_nothing_and_names_column_and_pointer() {
        let j = Codec::new(Layout::tweets_json());
        let mut out = b"kept".to_vec();
        let rec = br#"{"id":7,"created_at":"2024-01-01T00:00:01Z","user":{"followers_count":"many"},"favorite_count":1,"retweet_count":2}"#;
        for format in [CopyFormat::Text, CopyFormat::Binary] {
            let e = j.pg_row(rec, format, &mut out).unwrap_err();
            assert_eq!(e.column.as_deref(), Some("followers_count"));
            assert!(e.reason.contains("/user/followers_count"), "{e}");
            assert_eq!(out, b"kept");
        }
        let e = j.to_json_row(b"[1,", &mut out).unwrap_err();
        assert!(e.reason.starts_with("not JSON"), "{e}");
        assert_eq!(out, b"kept");
    }

    #[test]
    fn json_columns_take_subtrees() {
        let mut l = Layout::tweets_json();
        let mut u = Column::new("user_doc", ColumnType::Json);
        u.path = Some("/user".into());
        l.columns.push(u);
        let c = Codec::new(l);
        let mut out = Vec::new();
        c.to_json_row(TWEET, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user_doc"]["followers_count"], 5);
    }

    #[test]
    fn avro_tweets_become_the_same_rows_as_their_delimited_twins() {
        use crate::records::avro::confluent_frame;
        use crate::tweets::{tweet_with, TWEET_AVRO_SCHEMA};
        let a = Codec::with_schemas(Layout::tweets_avro(), &[(3, TWEET_AVRO_SCHEMA.to_string())])
            .unwrap();
        let d = Codec::new(Layout::tweets());
        for i in 0..200 {
            let t = tweet_with(5, i, 40, i % 3 == 0);
            let msg = confluent_frame(3, &t.avro_body());
            for format in [CopyFormat::Text, CopyFormat::Binary] {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                a.pg_row(&msg, format, &mut x).unwrap();
                d.pg_row(t.record().as_bytes(), format, &mut y).unwrap();
                if format == CopyFormat::Text {
                    // The delimited record's time goes as it came; Avro's is printed.
                    let (x, y) = (String::from_utf8(x).unwrap(), String::from_utf8(y).unwrap());
                    assert_eq!(x.split('\t').count(), y.split('\t').count());
                } else {
                    assert_eq!(x, y, "tweet {i}");
                }
            }
        }
    }

    #[test]
    fn bad_avro_records_name_what_is_wrong() {
        use crate::records::avro::confluent_frame;
        use crate::tweets::{tweet, TWEET_AVRO_SCHEMA};
        let a = Codec::with_schemas(Layout::tweets_avro(), &[(3, TWEET_AVRO_SCHEMA.to_string())])
            .unwrap();
        let body = tweet(1, 1, 4).avro_body();
        let mut out = Vec::new();
        let reason = |msg: &[u8]| a.to_pg_binary_row(msg, &mut Vec::new()).unwrap_err();
        assert!(reason(b"{\"id\":1}").reason.contains("magic byte"));
        assert!(reason(&[0, 0]).reason.contains("Confluent"));
        assert!(reason(&confluent_frame(9, &body))
            .reason
            .contains("schema id 9 is not in the archive"));
        let e = reason(&confluent_frame(3, &body[..body.len() - 1]));
        assert!(e.reason.contains("writer schema 3"), "{e}");
        let mut narrow = Layout::tweets_avro();
        narrow.columns[3].max_len = Some(1);
        let n = Codec::with_schemas(narrow, &[(3, TWEET_AVRO_SCHEMA.to_string())]).unwrap();
        let long = crate::tweets::Tweet {
            location: Some("Paris".into()),
            ..tweet(1, 1, 4)
        };
        let e = n
            .to_pg_binary_row(&confluent_frame(3, &long.avro_body()), &mut out)
            .unwrap_err();
        assert_eq!(e.column.as_deref(), Some("location"));
        assert!(e.reason.contains("Avro field user.location"), "{e}");
        assert!(out.is_empty());
    }

    #[test]
    fn evolved_writers_fill_columns_from_defaults_or_null() {
        use crate::records::avro::{confluent_frame, encode, Schema};
        let v1 = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"long"},{"name":"n","type":"int"},{"name":"old","type":"string"}]}"#;
        let v2 = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"long"},{"name":"n","type":"int"},{"name":"old","type":"string"},{"name":"added","type":"string","default":"dflt"}]}"#;
        let v3 = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"long"},{"name":"n","type":"long"},{"name":"added","type":"string","default":"dflt"}]}"#;
        let mut l = Layout::tweets();
        l.format = RecordFormat::Avro;
        l.columns = vec![
            Column::new("id", ColumnType::Bigint),
            Column::new("n", ColumnType::Bigint),
            Column::new("old", ColumnType::Text),
            Column::new("added", ColumnType::Text),
        ];
        let schemas: Vec<(u32, String)> = vec![(1, v1.into()), (2, v2.into()), (3, v3.into())];
        let c = Codec::with_schemas(l.clone(), &schemas).unwrap();
        let row = |id: u32, v: serde_json::Value| {
            let s = Schema::parse(&schemas[id as usize - 1].1).unwrap();
            let mut out = Vec::new();
            c.to_json_row(&confluent_frame(id, &encode(&s, &v).unwrap()), &mut out)
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let r1 = row(1, serde_json::json!({"id": 1, "n": 5, "old": "o"}));
        assert_eq!(
            r1,
            serde_json::json!({"id": 1, "n": 5, "old": "o", "added": "dflt"})
        );
        let r3 = row(
            3,
            serde_json::json!({"id": 3, "n": 1u64 << 40, "added": "a"}),
        );
        assert_eq!(
            r3,
            serde_json::json!({"id": 3, "n": 1u64 << 40, "old": null, "added": "a"})
        );
        // A column that takes no NULL: the writer without the field is a bad record.
        l.columns[2].nullable = Some(false);
        let strict = Codec::with_schemas(l, &schemas).unwrap();
        let s3 = Schema::parse(v3).unwrap();
        let msg = confluent_frame(
            3,
            &encode(&s3, &serde_json::json!({"id": 3, "n": 1, "added": "a"})).unwrap(),
        );
        let e = strict.to_json_row(&msg, &mut Vec::new()).unwrap_err();
        assert!(
            e.reason.contains("writer schema 3 has no such field"),
            "{e}"
        );
    }

    /// The cells of a delimited record as every field through `value::cell` made them (the
    /// path before the direct reads): the shape checked first, then field by field.
    fn cells_by_value(codec: &Codec, rec: &[u8]) -> Result<Vec<(usize, Cell<'static>)>, RowError> {
        let l = &codec.layout;
        l.check_fields(rec)?;
        let mut out = Vec::new();
        for (i, (col, raw)) in l
            .columns
            .iter()
            .zip(rec.split(|&b| b == l.delimiter))
            .enumerate()
        {
            let s = std::str::from_utf8(raw).map_err(|e| RowError {
                column: Some(col.name.clone()),
                value: Some(String::from_utf8_lossy(raw).into_owned()),
                reason: format!("invalid UTF-8 ({e})"),
            })?;
            out.push((i, owned(codec.delimited_cell_by_value(col, s)?)));
        }
        Ok(out)
    }

    fn owned(c: Cell<'_>) -> Cell<'static> {
        match c {
            Cell::Text(s) => Cell::Text(s.into_owned().into()),
            Cell::Json(s) => Cell::Json(s.into_owned().into()),
            Cell::Null => Cell::Null,
            Cell::Bigint(v) => Cell::Bigint(v),
            Cell::Int(v) => Cell::Int(v),
            Cell::Double(v) => Cell::Double(v),
            Cell::Bool(v) => Cell::Bool(v),
            Cell::Date(v) => Cell::Date(v),
            Cell::Timestamp(v) => Cell::Timestamp(v),
        }
    }

    fn cells_now(codec: &Codec, rec: &[u8]) -> Result<Vec<(usize, Cell<'static>)>, RowError> {
        let mut out = Vec::new();
        codec.cells(rec, &mut |i, c| out.push((i, owned(c))))?;
        // A record known to be UTF-8 gives the same by `text_cells`.
        if let Ok(text) = std::str::from_utf8(rec) {
            let mut again = Vec::new();
            let r = codec.text_cells(text, &mut |i, c| again.push((i, owned(c))));
            assert_eq!(r.map(|()| again), Ok(out.clone()), "{text:?}");
        }
        Ok(out)
    }

    /// Layouts for the comparison: the tweets, and one of every type with null markers, a
    /// short text, no trailing delimiter and a timestamp format chrono parses.
    fn compared_layouts() -> Vec<Layout> {
        let mut every = Layout::tweets();
        every.trailing_delimiter = false;
        every.delimiter = b'|';
        every.timestamp_format = "%d/%m/%Y %H:%M:%S%.f".into();
        let c = |name: &str, ty, max_len, null: Option<&str>| Column {
            max_len,
            null_marker: null.map(String::from),
            ..Column::new(name, ty)
        };
        every.columns = vec![
            c("big", ColumnType::Bigint, None, Some("")),
            c("small", ColumnType::Int, None, Some("None")),
            c("at", ColumnType::Timestamp, None, Some("-")),
            c("txt", ColumnType::Text, Some(5), None),
            c("doc", ColumnType::Json, None, Some("None")),
            c("num", ColumnType::Double, None, None),
            c("flag", ColumnType::Boolean, None, Some("")),
            c("day", ColumnType::Date, None, None),
        ];
        let mut iso_every = every.clone();
        iso_every.timestamp_format = "%Y-%m-%d %H:%M:%S".into();
        iso_every.trailing_delimiter = true;
        vec![Layout::tweets(), every, iso_every]
    }

    /// Field values that each column type takes or refuses, at and past the edges.
    const FIELDS: &[&str] = &[
        "",
        "None",
        "-",
        "0",
        "-0",
        "+7",
        "7",
        " 7",
        "7 ",
        "2147483647",
        "2147483648",
        "-2147483648",
        "-2147483649",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "1e3",
        "1.5",
        "NaN",
        "inf",
        "-1.25e-3",
        "true",
        "false",
        "TRUE",
        "2024-01-01 00:00:01",
        "2024-02-30 00:00:00",
        "2016-12-31 23:59:60",
        "0000-12-31 23:59:59",
        "0001-01-01 00:00:00",
        "2024-01-01 24:00:00",
        "2024-01-01T00:00:01",
        "2024-01-01 0:00:01",
        "31/12/2016 23:59:60",
        "01/02/2024 03:04:05.123456789",
        "01/02/2024 03:04:05.5",
        "29/02/2023 00:00:00",
        "2024-02-29",
        "2024-13-01",
        "caf\u{e9}",
        "\u{1f1e8}\u{1f1ed}",
        "abcde",
        "abcdef",
        "a\0b",
        "{\"a\":[1,2]}",
        "[1",
        "\"\\u0000\"",
        "null",
        "{}",
        "Z\u{fc}rich \u{1f1e8}\u{1f1ed} 855",
    ];

    /// A record of `l`'s delimiter from edge values (`picks`: a field each, and a byte), with
    /// `damage` now and then: 1 a raw byte in the third field (a delimiter, a byte not UTF-8),
    /// 2 no trailing delimiter where one is due, 3 raw bytes after the end, 4 a byte not UTF-8
    /// first.
    fn shaped_record(l: &Layout, picks: &[(usize, u8)], raw: &[u8], damage: u8) -> Vec<u8> {
        let d = l.delimiter;
        let mut rec = Vec::new();
        for (k, (f, b)) in picks.iter().enumerate() {
            if k > 0 {
                rec.push(d);
            }
            rec.extend_from_slice(FIELDS[*f].as_bytes());
            if damage == 1 && k == 2 {
                rec.push(*b);
            }
        }
        if l.trailing_delimiter && damage != 2 {
            rec.push(d);
        }
        if damage == 3 {
            rec.extend_from_slice(raw);
        }
        if damage == 4 {
            rec.insert(0, 0xff);
        }
        rec
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// The direct reads give what `value::cell` gives, cell for cell and error for error,
        /// on records of every shape (fields from the edge values, raw bytes, delimiters too
        /// many or too few, bytes that are not UTF-8).
        #[test]
        fn direct_reads_of_delimited_fields_equal_value_cells(
            layout in 0usize..3,
            picks in proptest::collection::vec((0usize..FIELDS.len(), proptest::prelude::any::<u8>()), 0..11),
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6),
            damage in 0u8..8,
        ) {
            let l = compared_layouts().swap_remove(layout);
            let codec = Codec::new(l.clone());
            let rec = shaped_record(&l, &picks, &raw, damage);
            let now = cells_now(&codec, &rec);
            let before = cells_by_value(&codec, &rec);
            proptest::prop_assert_eq!(now, before, "record {:?}", String::from_utf8_lossy(&rec));
        }
    }

    /// Layouts the fast reading takes: the tweets, and one of its four kinds with null
    /// markers, a short text and no trailing delimiter.
    fn fast_layouts() -> Vec<Layout> {
        let mut marked = Layout::tweets();
        marked.trailing_delimiter = false;
        marked.delimiter = b'|';
        let c = |name: &str, ty, max_len, null: Option<&str>| Column {
            max_len,
            null_marker: null.map(String::from),
            ..Column::new(name, ty)
        };
        marked.columns = vec![
            c("big", ColumnType::Bigint, None, Some("")),
            c("small", ColumnType::Int, None, Some("None")),
            c("at", ColumnType::Timestamp, None, Some("-")),
            c("txt", ColumnType::Text, Some(5), None),
            c("any", ColumnType::Text, None, Some("None")),
        ];
        vec![Layout::tweets(), marked]
    }

    /// A general path's cell as the fast reading gives it (its Debug form).
    fn as_fast(c: &Cell<'_>) -> String {
        let v = match c {
            Cell::Null => FastValue::Null,
            Cell::Bigint(v) => FastValue::I64(*v),
            Cell::Int(v) => FastValue::I32(*v),
            Cell::Timestamp(t) => FastValue::I64(t.and_utc().timestamp_micros()),
            Cell::Text(s) => FastValue::Text(s),
            other => panic!("no fast value for {other:?}"),
        };
        format!("{v:?}")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// Whatever record the fast reading takes, the general path reads without an error
        /// and into the same values; and a record of good fields in their places it takes.
        #[test]
        fn the_fast_reading_takes_only_what_the_general_path_reads_and_gives_the_same(
            layout in 0usize..2,
            picks in proptest::collection::vec((0usize..FIELDS.len(), proptest::prelude::any::<u8>()), 0..8),
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6),
            damage in 0u8..8,
        ) {
            let l = fast_layouts().swap_remove(layout);
            let codec = Codec::new(l.clone());
            let fast = codec.fast_delimited().expect("a layout the fast reading takes");
            let rec = shaped_record(&l, &picks, &raw, damage);
            let Ok(text) = std::str::from_utf8(&rec) else {
                return Ok(());
            };
            let mut values = [FastValue::Null; FAST_COLUMNS];
            let general = cells_now(&codec, &rec);
            if fast.read(text, &mut values) {
                let cells = general.map_err(|e| proptest::test_runner::TestCaseError::fail(
                    format!("fast took {text:?}, the general path refused it: {e:?}")))?;
                let want: Vec<String> = cells.iter().map(|(_, c)| as_fast(c)).collect();
                let got: Vec<String> =
                    values[..fast.columns()].iter().map(|v| format!("{v:?}")).collect();
                proptest::prop_assert_eq!(got, want, "{:?}", text);
            }
        }
    }

    #[test]
    fn the_fast_reading_takes_good_records_and_only_layouts_it_can_read() {
        let codec = Codec::new(Layout::tweets());
        let fast = codec.fast_delimited().unwrap();
        let mut v = [FastValue::Null; FAST_COLUMNS];
        assert!(fast.read("7;2024-02-29 23:59:59;5;None;-1;0;", &mut v));
        assert_eq!(
            &v[..6],
            &[
                FastValue::I64(7),
                FastValue::I64(1_709_251_199_000_000),
                FastValue::I32(5),
                FastValue::Null,
                FastValue::I32(-1),
                FastValue::I32(0),
            ]
        );
        assert!(fast.read("7;2024-02-29 23:59:59;5;Z\u{fc}rich;1;0;", &mut v));
        assert_eq!(v[3], FastValue::Text("Z\u{fc}rich"));
        // Not a NULL marker there: a bad record, for the general path to name.
        assert!(!fast.read("7;2024-02-29 23:59:59;None;x;1;0;", &mut v));
        // Left to the general path: a leap second, a field too many, one missing.
        assert!(!fast.read("7;2016-12-31 23:59:60;5;x;1;0;", &mut v));
        assert!(!fast.read("7;2024-01-01 00:00:00;5;x;1;0;9;", &mut v));
        assert!(!fast.read("7;2024-01-01 00:00:00;5;x;1;", &mut v));
        assert_eq!(iso_seconds_micros("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            iso_seconds_micros("0001-01-01 00:00:00"),
            Some(-62_135_596_800_000_000)
        );
        // Layouts with another kind of column, or timestamps in another format, have none.
        let mut other = Layout::tweets();
        other.timestamp_format = "%d/%m/%Y %H:%M:%S".into();
        assert!(Codec::new(other).fast_delimited().is_none());
        for l in compared_layouts().into_iter().skip(1) {
            assert!(Codec::new(l).fast_delimited().is_none());
        }
    }

    #[test]
    fn direct_reads_hold_on_well_formed_records_of_each_layout() {
        // Records of the right shape: good values but in one column, which takes each edge
        // value in turn, so that the comparison reaches every field of every column.
        for l in compared_layouts() {
            let codec = Codec::new(l.clone());
            let good: Vec<&str> = l
                .columns
                .iter()
                .map(|c| match c.ty {
                    ColumnType::Bigint | ColumnType::Int => "7",
                    ColumnType::Timestamp if codec.iso_seconds => "2024-01-01 00:00:01",
                    ColumnType::Timestamp => "01/02/2024 03:04:05.5",
                    ColumnType::Text => "abc",
                    ColumnType::Json => "{}",
                    ColumnType::Double => "1.5",
                    ColumnType::Boolean => "true",
                    ColumnType::Date => "2024-02-29",
                })
                .collect();
            let (mut taken, mut refused) = (0, 0);
            for j in 0..l.columns.len() {
                for v in FIELDS
                    .iter()
                    .filter(|v| !v.as_bytes().contains(&l.delimiter))
                {
                    let mut fields = good.clone();
                    fields[j] = v;
                    let mut rec = fields.join(&(l.delimiter as char).to_string());
                    if l.trailing_delimiter {
                        rec.push(l.delimiter as char);
                    }
                    let now = cells_now(&codec, rec.as_bytes());
                    assert_eq!(now, cells_by_value(&codec, rec.as_bytes()), "{rec:?}");
                    match now {
                        Ok(_) => taken += 1,
                        Err(_) => refused += 1,
                    }
                }
            }
            assert!(taken > 0 && refused > 0, "{taken} taken, {refused} refused");
        }
        // And the tweet as the producer writes it.
        let codec = Codec::new(Layout::tweets());
        let rec = "7;2016-12-31 23:59:60;5;None;1;2;".as_bytes();
        let cells = cells_now(&codec, rec).unwrap();
        assert_eq!(cells, cells_by_value(&codec, rec).unwrap());
        assert_eq!(cells[3], (3, Cell::Null));
    }
}
