//! PostgreSQL: streamed `COPY ... FROM STDIN`, ledger row in the same transaction,
//! session advisory locks.

use super::session::{PgSession, SqlContext, SqlSession};
use super::{quote_ident, Ledger, LoadJob, LoadOptions, LoadResult, Names, Warehouse};
use crate::archive::{decoder, download, stream, ObjectStore};
use crate::config::WarehouseSettings;
use crate::records::{
    Codec, ColumnType, CopyFormat, FrameReader, Layout, PG_BINARY_HEADER, PG_BINARY_TRAILER,
};
use anyhow::{anyhow, bail, Context, Result};
use postgres::Transaction;
use std::io::{BufRead, Write};

pub struct Pg {
    s: PgSession,
    /// What `copy --jobs` opens its extra connections with.
    settings: WarehouseSettings,
    /// The extra connections of `copy --jobs N` (N - 1 of them, opened at the first load).
    workers: Vec<PgSession>,
}

/// How much of a bad record the rejects table keeps (bytes, cut at a character boundary).
pub const REJECT_RAW_PREFIX: usize = 4096;

/// A bad row kept for the rejects table: a bounded prefix of the record, with the whole
/// record's length and sha256 so it can be found in its object whatever its size.
pub(crate) struct Reject {
    pub(crate) line: u64,
    pub(crate) raw: String,
    pub(crate) bytes: u64,
    pub(crate) sha256: String,
    pub(crate) reason: String,
}

impl Reject {
    pub(crate) fn new(line: u64, rec: &[u8], reason: String) -> Self {
        let text = String::from_utf8_lossy(&rec[..rec.len().min(REJECT_RAW_PREFIX + 4)]);
        let mut end = text.len().min(REJECT_RAW_PREFIX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Reject {
            line,
            raw: text[..end].replace('\0', "\u{fffd}"),
            bytes: rec.len() as u64,
            sha256: crate::util::sha256_hex(rec),
            reason: reason.chars().take(1000).collect(),
        }
    }
}

impl Pg {
    pub fn connect(w: &WarehouseSettings, names: Names) -> Result<Self> {
        Ok(Pg {
            s: PgSession::connect(w, names)?,
            settings: w.clone(),
            workers: Vec::new(),
        })
    }

    fn lock_key(&self, name: &str) -> String {
        format!(
            "batchlayer:{name}:{}.{}",
            self.s.names.schema, self.s.names.raw
        )
    }

    /// The format to send: binary needs the raw table's columns to have exactly the types
    /// the layout encodes (a table created by hand with other types gets text, which the
    /// server converts).
    fn usable_format(&mut self, layout: &Layout, asked: CopyFormat) -> Result<CopyFormat> {
        if asked == CopyFormat::Text {
            return Ok(CopyFormat::Text);
        }
        let rows = self
            .s
            .client
            .query(
                r#"SELECT "a"."attname"::text, "a"."atttypid"::regtype::text FROM "pg_attribute" "a" WHERE "a"."attrelid" = to_regclass($1) AND "a"."attnum" > 0 AND NOT "a"."attisdropped""#,
                &[&self.s.names.qualified(&self.s.names.raw)],
            )
            .sql("reading the raw table's column types")?;
        let types: std::collections::HashMap<String, String> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mismatch = layout.columns.iter().find(|c| {
            let want: &[&str] = match c.ty {
                ColumnType::Bigint => &["bigint"],
                ColumnType::Int => &["integer"],
                ColumnType::Timestamp => &["timestamp without time zone"],
                ColumnType::Text => &["character varying", "text"],
                ColumnType::Double => &["double precision"],
                ColumnType::Boolean => &["boolean"],
                ColumnType::Date => &["date"],
                ColumnType::Json => &["jsonb"],
            };
            !types
                .get(&c.name)
                .is_some_and(|t| want.contains(&t.as_str()))
        });
        let topic_mismatch = layout.topic_column.as_ref().filter(|t| {
            !types
                .get(*t)
                .is_some_and(|ty| ty == "character varying" || ty == "text")
        });
        if let Some(t) = topic_mismatch {
            tracing::warn!(
                "topic column {t} of {} is not text: loading with text COPY",
                self.s.names.raw
            );
            return Ok(CopyFormat::Text);
        }
        Ok(match mismatch {
            None => CopyFormat::Binary,
            Some(c) => {
                tracing::warn!(
                    "column {} of {} is {}, not the layout's {:?}: loading with text COPY",
                    c.name,
                    self.s.names.raw,
                    types.get(&c.name).map_or("missing", |t| t.as_str()),
                    c.ty
                );
                CopyFormat::Text
            }
        })
    }
}

/// The COPY statement for the raw table's layout columns.
fn copy_sql(names: &Names, layout: &Layout, format: CopyFormat) -> String {
    let cols = super::table_column_list(layout);
    format!(
        "COPY {} ({}) FROM STDIN{}",
        names.qualified(&names.raw),
        cols,
        match format {
            CopyFormat::Binary => " (FORMAT binary)",
            CopyFormat::Text => "",
        }
    )
}

/// What an object's encoder found: its counts, and the rows kept for the rejects table.
type Encoded = (LoadResult, Vec<Reject>);

/// An object on its way into COPY: a thread reads, checks and encodes its records into chunks
/// (two queued at most) before its transaction starts, so the first rows of the next object are
/// ready when the current one commits. Memory stays bounded: two chunks and the pipe.
struct Incoming<'s> {
    job: &'s LoadJob,
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
    encoder: Option<std::thread::ScopedJoinHandle<'s, Result<Encoded>>>,
    /// The streamed GET; its result is the object's sha256. None when the object was
    /// downloaded (and checked) before.
    getter: Option<std::thread::ScopedJoinHandle<'s, Result<String>>>,
}

impl<'s> Incoming<'s> {
    /// Starts encoding `input` (the object's bytes as stored) on a thread of `scope`.
    fn start<R: std::io::Read + Send + 'static>(
        scope: &'s std::thread::Scope<'s, '_>,
        job: &'s LoadJob,
        input: R,
        getter: Option<std::thread::ScopedJoinHandle<'s, Result<String>>>,
        enc: &'s Encoding<'s>,
    ) -> Result<Self> {
        let reader = FrameReader::new(decoder(input, job.compression)?);
        let (full_tx, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (spare, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let encoder = scope.spawn(move || encode_object(reader, job, enc, &full_tx, &empty_rx));
        Ok(Incoming {
            job,
            chunks,
            spare,
            encoder: Some(encoder),
            getter,
        })
    }

    /// Streams the object from the store: the GET on one thread, through a pipe, the encoder
    /// on another.
    fn stream(
        scope: &'s std::thread::Scope<'s, '_>,
        store: &'s dyn ObjectStore,
        job: &'s LoadJob,
        enc: &'s Encoding<'s>,
    ) -> Result<Self> {
        let (reader, getter) = stream(scope, store, &job.key)?;
        Incoming::start(scope, job, reader, Some(getter), enc)
    }

    /// The streamed object's sha256, checked against its manifest's.
    fn downloaded(&mut self) -> Result<()> {
        let key = &self.job.key;
        let got = self
            .getter
            .take()
            .map(|g| {
                g.join()
                    .unwrap_or_else(|_| Err(anyhow!("the download of {key} panicked")))
            })
            .transpose()?;
        match (got, self.job.expected_sha256.as_deref()) {
            (Some(got), Some(want)) if want != got => {
                bail!("object {key} is corrupt: sha256 {got} does not match the manifest's {want}")
            }
            _ => Ok(()),
        }
    }
}

/// Loads one object in its own transaction: its rows, rejects and ledger row. `sent` runs once
/// the last row is on the wire, while the server still works through it (the caller starts
/// the next object then). A streamed object's checksum is checked after its rows are sent and
/// before anything is recorded; when the load fails, a download that failed or bytes that are
/// not the manifest's are the error reported, not what the decoder made of them.
fn load_one(
    s: &mut PgSession,
    mut inc: Incoming<'_>,
    store: &dyn ObjectStore,
    layout: &Codec,
    format: CopyFormat,
    sent: &mut dyn FnMut(),
) -> Result<LoadResult> {
    let job = inc.job;
    let names = s.names.clone();
    let copy_sql = copy_sql(&names, layout, format);
    let mut tx = s.client.transaction().sql_bare()?;
    let loaded = copy_rows(&mut tx, &copy_sql, &names.raw, &mut inc, sent);
    let (result, rejects) = match loaded {
        Ok(r) => r,
        Err(e) => {
            drop(tx);
            return Err(download_cause(&mut inc, store).unwrap_or(e));
        }
    };
    if let Some(want) = job.expected_records {
        if want != result.records {
            inc.downloaded()?;
            bail!(
                "object {}: holds {} records but its manifest says {want}",
                job.key,
                result.records
            );
        }
    }
    inc.downloaded()?;
    record_load(&mut tx, &names, job, &result, &rejects)?;
    if crate::failpoint::hit("copy-before-commit") {
        bail!(
            "failpoint: stopping after COPY of {}, before commit",
            job.key
        );
    }
    tx.commit()
        .sql_with(|| format!("committing load of {}", job.key))?;
    Ok(result)
}

/// Why did a streamed object's load fail? A download that failed is the cause; bytes that are
/// not the manifest's (corrupt) are the cause of whatever the decoder said about them. None:
/// the load's own error stands.
fn download_cause(inc: &mut Incoming<'_>, store: &dyn ObjectStore) -> Option<anyhow::Error> {
    let want = inc.job.expected_sha256.as_deref();
    let getter = inc.getter.take()?;
    // The getter may be blocked on a full pipe: stop the encoder so it lets go of it.
    drop(std::mem::replace(
        &mut inc.chunks,
        std::sync::mpsc::sync_channel(0).1,
    ));
    let got = getter
        .join()
        .unwrap_or_else(|_| Err(anyhow!("the download of {} panicked", inc.job.key)));
    crate::archive::stream_verdict(got, store, &inc.job.key, want, true)
}

/// Loads the objects one after another on one connection, each streamed as it downloads; the
/// next one starts (its GET, and its first rows encoded) once this one's rows are all sent.
fn load_in_order(
    s: &mut PgSession,
    jobs: &[LoadJob],
    store: &dyn ObjectStore,
    layout: &Codec,
    opts: &LoadOptions,
    format: CopyFormat,
    progress: &mut dyn FnMut(&LoadResult),
) -> Result<Vec<LoadResult>> {
    let enc = Encoding {
        layout,
        format,
        max_errors: opts.max_errors,
    };
    let enc = &enc;
    let mut out = Vec::new();
    std::thread::scope(|scope| {
        let mut next = None;
        for (i, job) in jobs.iter().enumerate() {
            // Started early by the previous object's hook, or now: never skipped.
            let inc = next
                .take()
                .unwrap_or_else(|| Incoming::stream(scope, store, job, enc));
            let mut sent = || {
                next = jobs
                    .get(i + 1)
                    .map(|j| Incoming::stream(scope, store, j, enc));
            };
            let r = inc
                .and_then(|inc| load_one(s, inc, store, layout, format, &mut sent))
                .with_context(|| {
                    format!("loading {} into {} at {}", job.key, s.names.raw, s.url)
                })?;
            progress(&r);
            out.push(r);
        }
        Ok(out)
    })
}

/// `copy --jobs N`: N connections take the objects in turn, each object still its own
/// transaction with its ledger row. After a failure no object is started; the ones under way
/// finish (committed or not, each whole), and the first error is returned.
fn load_parallel(
    sessions: Vec<&mut PgSession>,
    jobs: &[LoadJob],
    store: &dyn ObjectStore,
    layout: &Codec,
    opts: &LoadOptions,
    format: CopyFormat,
) -> Result<Vec<LoadResult>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    // Workers between taking a job and finishing it (the failpoint below waits for none).
    let running = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let enc = &Encoding {
        layout,
        format,
        max_errors: opts.max_errors,
    };
    let done: Mutex<Vec<(usize, LoadResult)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for s in sessions {
            let (next, running, failed, done, first_error) =
                (&next, &running, &failed, &done, &first_error);
            scope.spawn(move || loop {
                running.fetch_add(1, Ordering::SeqCst);
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= jobs.len() || failed.load(Ordering::SeqCst) {
                    running.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                let job = &jobs[i];
                if i == 0 && crate::failpoint::hit("copy-first-parallel-load-fails-last") {
                    running.fetch_sub(1, Ordering::SeqCst);
                    // Every other job is taken and finished (committed or failed) first.
                    while (next.load(Ordering::SeqCst) < jobs.len()
                        && !failed.load(Ordering::SeqCst))
                        || running.load(Ordering::SeqCst) > 0
                    {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    failed.store(true, Ordering::SeqCst);
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(anyhow!(
                            "failpoint: the load of {} fails after the other loads of its batch",
                            job.key
                        ));
                    break;
                }
                let r = download(store, &job.key, job.expected_sha256.as_deref())
                    .and_then(|file| {
                        std::thread::scope(|scope| {
                            let inc = Incoming::start(scope, job, file, None, enc)?;
                            load_one(s, inc, store, layout, format, &mut || ())
                        })
                    })
                    .with_context(|| {
                        format!("loading {} into {} at {}", job.key, s.names.raw, s.url)
                    });
                running.fetch_sub(1, Ordering::SeqCst);
                match r {
                    Ok(r) => done.lock().unwrap_or_else(|e| e.into_inner()).push((i, r)),
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

/// How records become COPY rows.
struct Encoding<'a> {
    layout: &'a Codec,
    format: CopyFormat,
    /// None: strict (first bad row fails the object). Some(n): up to n rejects per object.
    max_errors: Option<u64>,
}

/// The size of the chunks the encoder hands to the COPY stream.
const CHUNK: usize = 128 << 10;

/// Streams an incoming object's chunks into `COPY` as its encoder makes them, so decoding and
/// the server's work overlap. Bad rows fail the object (strict) or are kept for the rejects
/// table.
fn copy_rows(
    tx: &mut Transaction<'_>,
    copy_sql: &str,
    table: &str,
    inc: &mut Incoming<'_>,
    sent_all: &mut dyn FnMut(),
) -> Result<Encoded> {
    let mut w = tx.copy_in(copy_sql).sql("starting COPY")?;
    let mut sent: Result<()> = Ok(());
    for chunk in inc.chunks.iter() {
        if let Err(e) = w.write_all(&chunk) {
            sent = Err(anyhow!("sending COPY data: {e}"));
            break;
        }
        let _ = inc.spare.send(chunk);
    }
    // The encoder stops at its next chunk when the sending did.
    drop(std::mem::replace(
        &mut inc.chunks,
        std::sync::mpsc::sync_channel(0).1,
    ));
    let key = &inc.job.key;
    let encoded = match inc.encoder.take() {
        Some(e) => e
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the encoder of {key} panicked"))),
        None => Err(anyhow!("the encoder of {key} was joined twice")),
    };
    let (result, rejects) = encoded?;
    if let Err(e) = sent {
        // The server's own error (a bad value, a lost connection) says more than the write's.
        w.finish().sql_with(|| format!("COPY into {table}"))?;
        return Err(e);
    }
    sent_all();
    w.finish().sql_with(|| format!("COPY into {table}"))?;
    Ok((result, rejects))
}

/// The encoder's side of `copy_rows`: reads, checks and encodes every record of the object,
/// sending full chunks (reusing the buffers that come back).
fn encode_object<R: BufRead>(
    mut reader: FrameReader<R>,
    job: &LoadJob,
    enc: &Encoding<'_>,
    full: &std::sync::mpsc::SyncSender<Vec<u8>>,
    empty: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<Encoded> {
    let mut rejects = Vec::new();
    let mut result = LoadResult {
        key: job.key.clone(),
        bytes: job.size,
        ..Default::default()
    };
    // Records whose offsets other objects loaded already are skipped; that needs each
    // record's offset.
    let offsets = if job.skip.is_empty() {
        None
    } else {
        Some(job.record_offsets(job.expected_records).with_context(|| {
            format!(
                "object {}: its records' offsets are unknown (no manifest lists its gaps), so the part other objects loaded cannot be skipped",
                job.key
            )
        })?)
    };
    let mut rec = Vec::with_capacity(1024);
    let mut buf = Vec::with_capacity(CHUNK + (64 << 10));
    if enc.format == CopyFormat::Binary {
        buf.extend_from_slice(PG_BINARY_HEADER);
    }
    while reader
        .next_into(&mut rec)
        .with_context(|| format!("reading object {}", job.key))?
    {
        result.records += 1;
        if let Some(offs) = &offsets {
            let Some(&off) = offs.get(result.records as usize - 1) else {
                bail!(
                    "object {}: holds more records than its offset range",
                    job.key
                );
            };
            if job.skipped(off) {
                result.skipped += 1;
                continue;
            }
        }
        let row = match enc.format {
            CopyFormat::Text => enc.layout.to_pg_copy_row(&rec, &mut buf),
            CopyFormat::Binary => enc.layout.to_pg_binary_row(&rec, &mut buf),
        };
        match row {
            Ok(()) => result.loaded += 1,
            Err(e) => {
                let line = reader.record_no;
                let Some(max) = enc.max_errors else {
                    bail!("object {} record {line}: {e}", job.key);
                };
                result.rejected += 1;
                if result.rejected > max {
                    bail!(
                        "object {}: more than {max} bad rows (--max-errors); record {line}: {e}",
                        job.key
                    );
                }
                rejects.push(Reject::new(line, &rec, e.to_string()));
            }
        }
        if buf.len() >= CHUNK {
            let next = empty
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(buf.capacity()));
            if full.send(std::mem::replace(&mut buf, next)).is_err() {
                // The sender stopped (the server refused the data): its error is the one to report.
                return Ok((result, rejects));
            }
            buf.clear();
        }
    }
    if enc.format == CopyFormat::Binary {
        buf.extend_from_slice(PG_BINARY_TRAILER);
    }
    let _ = full.send(buf);
    Ok((result, rejects))
}

/// Writes the object's rejects and its ledger row inside the load's transaction.
fn record_load(
    tx: &mut Transaction<'_>,
    names: &Names,
    job: &LoadJob,
    result: &LoadResult,
    rejects: &[Reject],
) -> Result<()> {
    let rejects_t = names.qualified(&names.rejects);
    for r in rejects {
        tx.execute(
            &format!(
                r#"INSERT INTO {rejects_t} ("key", "line", "raw", "reason", "raw_bytes", "raw_sha256") VALUES ($1, $2, $3, $4, $5, $6)"#
            ),
            &[
                &job.key,
                &(r.line as i64),
                &r.raw,
                &r.reason,
                &(r.bytes as i64),
                &r.sha256,
            ],
        )
        .sql("recording rejects")?;
    }
    Ledger::insert_in(tx, names, job, result)
}

impl Warehouse for Pg {
    fn session(&mut self) -> &mut dyn SqlSession {
        &mut self.s
    }

    fn names(&self) -> &Names {
        &self.s.names
    }

    fn describe(&self) -> String {
        self.s.describe()
    }

    fn upgrade_statements(&self) -> Vec<String> {
        let t = self.s.names.qualified(&self.s.names.rejects);
        let l = self.s.names.qualified(&self.s.names.ledger);
        vec![
            format!(
                r#"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS "raw_bytes" bigint, ADD COLUMN IF NOT EXISTS "raw_sha256" varchar(64)"#
            ),
            format!(
                r#"ALTER TABLE {l} ADD COLUMN IF NOT EXISTS "topic" varchar(255), ADD COLUMN IF NOT EXISTS "partition_id" integer, ADD COLUMN IF NOT EXISTS "epoch" integer, ADD COLUMN IF NOT EXISTS "first_offset" bigint, ADD COLUMN IF NOT EXISTS "last_offset" bigint, ADD COLUMN IF NOT EXISTS "rows_skipped" bigint, ADD COLUMN IF NOT EXISTS "manifest" varchar(256), ADD COLUMN IF NOT EXISTS "manifest_objects" integer"#
            ),
            // Copy's lookups by offset range and by manifest stay cheap as the ledger grows;
            // every lookup names the raw table first (a ledger may serve several). The
            // indexes of older versions, without it, go.
            format!(
                r#"DROP INDEX IF EXISTS {}.{}"#,
                quote_ident(&self.s.names.schema),
                quote_ident(&format!("{}_offsets", self.s.names.ledger))
            ),
            format!(
                r#"DROP INDEX IF EXISTS {}.{}"#,
                quote_ident(&self.s.names.schema),
                quote_ident(&format!("{}_manifest", self.s.names.ledger))
            ),
            format!(
                r#"CREATE INDEX IF NOT EXISTS {} ON {l} ("target_table", "topic", "partition_id", "epoch", "last_offset")"#,
                quote_ident(&format!("{}_t_offsets", self.s.names.ledger))
            ),
            format!(
                r#"CREATE INDEX IF NOT EXISTS {} ON {l} ("target_table", "topic", "manifest")"#,
                quote_ident(&format!("{}_t_manifest", self.s.names.ledger))
            ),
        ]
    }

    fn record_skipped(&mut self, job: &LoadJob, records: u64) -> Result<()> {
        let names = self.s.names.clone();
        let result = LoadResult {
            key: job.key.clone(),
            bytes: job.size,
            records,
            skipped: records,
            ..Default::default()
        };
        let mut tx = self.s.client.transaction().sql_bare()?;
        record_load(&mut tx, &names, job, &result, &[])?;
        tx.commit()
            .sql_with(|| format!("recording {} as loaded by other objects", job.key))
    }

    fn try_lock(&mut self, name: &str) -> Result<bool> {
        let key = self.lock_key(name);
        Ok(self
            .s
            .client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
            .sql("taking lock")?
            .get(0))
    }

    fn lock_wait(&mut self, name: &str) -> Result<()> {
        let key = self.lock_key(name);
        self.s
            .client
            .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
            .sql("taking lock")?;
        Ok(())
    }

    fn load(
        &mut self,
        jobs: &[LoadJob],
        store: &dyn ObjectStore,
        layout: &Codec,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadResult),
    ) -> Result<Vec<LoadResult>> {
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        let format = self.usable_format(layout, opts.format)?;
        let jobs_n = opts.jobs.max(1);
        if jobs_n == 1 {
            return load_in_order(&mut self.s, jobs, store, layout, opts, format, progress);
        }
        while self.workers.len() < jobs_n - 1 {
            let names = self.s.names.clone();
            self.workers
                .push(PgSession::connect(&self.settings, names)?);
        }
        // The whole batch at once: copy's plan puts no two objects that rest on each other's
        // offsets in one batch, and its cursor passes only manifests the ledger holds in full,
        // so an object of a manifest may fail while others of it commit.
        let mut sessions: Vec<&mut PgSession> = vec![&mut self.s];
        sessions.extend(self.workers.iter_mut().take(jobs_n - 1));
        let out = load_parallel(sessions, jobs, store, layout, opts, format)?;
        for x in &out {
            progress(x);
        }
        Ok(out)
    }

    fn load_sql(&self, jobs: &[LoadJob], layout: &Layout) -> Vec<String> {
        let mut v = Vec::new();
        for j in jobs {
            v.push("BEGIN".into());
            v.push(format!(
                "{}  -- rows of {}",
                copy_sql(&self.s.names, layout, CopyFormat::Binary),
                j.key
            ));
            v.push(Ledger::insert_outline(&self.s.names, j));
            v.push("COMMIT".into());
        }
        v
    }
}
