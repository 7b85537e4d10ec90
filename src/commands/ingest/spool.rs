//! The spool: one partition's records framed and compressed into a local temp file, so
//! memory stays bounded whatever the object size.

use crate::archive::layout::{push_hole, Hole, HoleReason, RecordTimes};
use crate::archive::Compression;
use crate::records::frame_into;
use crate::source::Message;
use crate::util::Tally;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::io::{BufWriter, Write};

type Sink = Tally<BufWriter<std::fs::File>>;

/// Compressors get 128 KiB writes, not one call per record: per-call overhead dominates otherwise.
const ENC_BUF: usize = 128 << 10;

enum Encoder {
    Plain(Sink),
    Gzip(BufWriter<flate2::write::GzEncoder<Sink>>),
    Zstd(BufWriter<zstd::stream::write::Encoder<'static, Sink>>),
}

impl Encoder {
    fn new(sink: Sink, c: Compression) -> Result<Self> {
        Ok(match c {
            Compression::None => Encoder::Plain(sink),
            Compression::Gzip => Encoder::Gzip(BufWriter::with_capacity(
                ENC_BUF,
                flate2::write::GzEncoder::new(sink, flate2::Compression::fast()),
            )),
            Compression::Zstd => Encoder::Zstd(BufWriter::with_capacity(
                ENC_BUF,
                zstd::stream::write::Encoder::new(sink, 3)?,
            )),
        })
    }
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w,
            Encoder::Zstd(w) => w,
        }
    }
    fn finish(self) -> Result<Sink> {
        let mut s = match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.into_inner().map_err(|e| e.into_error())?.finish()?,
            Encoder::Zstd(w) => w.into_inner().map_err(|e| e.into_error())?.finish()?,
        };
        s.flush()?;
        Ok(s)
    }
}

/// Records of one partition being written to a local spool file. Its range `first..=last`
/// accounts for every offset from where the partition's read stood when it was opened to the
/// last one handled: each offset holds a record or lies in one of its `holes`.
pub struct Spool {
    pub first: i64,
    pub last: i64,
    /// The first record's Kafka timestamp (its time folder).
    pub first_ts: Option<i64>,
    /// The newest Kafka timestamp among the records (for the manifest).
    pub max_ts: Option<i64>,
    /// Each record's Kafka timestamp, in order (for the manifest: the lake's `_timestamp`).
    pub times: RecordTimes,
    pub records: u64,
    pub uncompressed: u64,
    pub payload_bytes: u64,
    /// Offsets of the range that hold no record, and why, in order.
    pub holes: Vec<Hole>,
    /// The schema ids of its Confluent-framed records (Avro topics), and the last one noted.
    schema_ids: BTreeSet<u32>,
    last_schema_id: Option<u32>,
    file: tempfile::TempPath,
    enc: Option<Encoder>,
    buf: Vec<u8>,
    /// A dry run frames and counts, but writes nothing.
    dry_run: bool,
}

/// A finished spool file: its stored size and sha256.
pub struct Finished {
    pub file: tempfile::TempPath,
    pub bytes: u64,
    pub sha256: String,
}

impl Spool {
    /// A spool whose range starts at `first` (a record's offset, or the first of a hole).
    pub fn new(first: i64, c: Compression, dry_run: bool) -> Result<Self> {
        let (file, path) = tempfile::NamedTempFile::new()
            .context("creating spool file in the temp directory")?
            .into_parts();
        let sink = Tally::hashing(BufWriter::with_capacity(256 << 10, file));
        let enc = Encoder::new(sink, if dry_run { Compression::None } else { c })?;
        Ok(Spool {
            first,
            last: first - 1,
            first_ts: None,
            max_ts: None,
            times: RecordTimes::default(),
            records: 0,
            uncompressed: 0,
            payload_bytes: 0,
            holes: Vec::new(),
            schema_ids: BTreeSet::new(),
            last_schema_id: None,
            file: path,
            enc: Some(enc),
            buf: Vec::with_capacity(4096),
            dry_run,
        })
    }

    /// Offsets `first..=last`, right after the range, hold no record.
    pub fn add_hole(&mut self, first: i64, last: i64, reason: HoleReason) {
        debug_assert_eq!(first, self.last + 1, "holes extend the range");
        push_hole(
            &mut self.holes,
            Hole {
                first,
                last,
                reason,
            },
        );
        self.last = last;
    }

    /// The record at `offset`, right after the range.
    pub fn append(&mut self, m: &Message, payload: &[u8]) -> Result<()> {
        debug_assert_eq!(m.offset, self.last + 1, "records extend the range");
        if self.records == 0 {
            self.first_ts = m.timestamp_ms;
        }
        self.max_ts = self.max_ts.max(m.timestamp_ms);
        self.times.push(m.timestamp_ms);
        let offset = m.offset;
        self.buf.clear();
        frame_into(payload, &mut self.buf);
        if !self.dry_run {
            self.enc
                .as_mut()
                .expect("open spool")
                .writer()
                .write_all(&self.buf)
                .context("writing spool file (is the temp directory full?)")?;
        }
        self.uncompressed += self.buf.len() as u64;
        self.payload_bytes += payload.len() as u64;
        self.records += 1;
        self.last = offset;
        Ok(())
    }

    /// Notes the schema id of a record it holds; true when it is new to this spool. Records
    /// of one id usually follow each other: those cost one comparison.
    #[inline]
    pub fn note_schema_id(&mut self, id: u32) -> bool {
        if self.last_schema_id == Some(id) {
            return false;
        }
        self.last_schema_id = Some(id);
        self.schema_ids.insert(id)
    }

    /// The schema ids noted, sorted.
    pub fn schema_ids(&self) -> Vec<u32> {
        self.schema_ids.iter().copied().collect()
    }

    /// Closes the compressor and the file.
    pub fn finish(mut self) -> Result<Finished> {
        let sink = self
            .enc
            .take()
            .expect("encoder")
            .finish()
            .context("finishing spool file")?;
        let bytes = sink.bytes;
        let (sha256, file) = sink.finish();
        drop(file);
        Ok(Finished {
            file: self.file,
            bytes,
            sha256,
        })
    }
}
