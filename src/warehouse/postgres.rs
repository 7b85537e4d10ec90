//! PostgreSQL: streamed `COPY ... FROM STDIN`, ledger row in the same transaction,
//! session advisory locks.

use super::session::{PgSession, SqlContext, SqlSession};
use super::{quote_ident, quote_literal, LoadJob, LoadOptions, LoadResult, Names, Warehouse};
use crate::archive::{decoder, download, ObjectStore};
use crate::config::WarehouseSettings;
use crate::records::{FrameReader, Layout};
use anyhow::{anyhow, bail, Context, Result};
use postgres::Transaction;
use std::io::{BufRead, Write};

pub struct Pg {
    s: PgSession,
}

/// How much of a bad record the rejects table keeps (bytes, cut at a character boundary).
pub const REJECT_RAW_PREFIX: usize = 4096;

/// A bad row kept for the rejects table: a bounded prefix of the record, with the whole
/// record's length and sha256 so it can be found in its object whatever its size.
struct Reject {
    line: u64,
    raw: String,
    bytes: u64,
    sha256: String,
    reason: String,
}

impl Reject {
    fn new(line: u64, rec: &[u8], reason: String) -> Self {
        use sha2::Digest;
        let text = String::from_utf8_lossy(&rec[..rec.len().min(REJECT_RAW_PREFIX + 4)]);
        let mut end = text.len().min(REJECT_RAW_PREFIX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Reject {
            line,
            raw: text[..end].replace('\0', "\u{fffd}"),
            bytes: rec.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(rec)),
            reason: reason.chars().take(1000).collect(),
        }
    }
}

impl Pg {
    pub fn connect(w: &WarehouseSettings, names: Names) -> Result<Self> {
        Ok(Pg {
            s: PgSession::connect(w, names)?,
        })
    }

    fn copy_sql(&self, layout: &Layout) -> String {
        let cols: Vec<String> = layout
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        format!(
            "COPY {} ({}) FROM STDIN",
            self.s.names.qualified(&self.s.names.raw),
            cols.join(", ")
        )
    }

    fn lock_key(&self, name: &str) -> String {
        format!(
            "batchlayer:{name}:{}.{}",
            self.s.names.schema, self.s.names.raw
        )
    }

    fn load_one(
        &mut self,
        job: &LoadJob,
        store: &dyn ObjectStore,
        layout: &Layout,
        opts: &LoadOptions,
    ) -> Result<LoadResult> {
        let file = download(store, &job.key, job.expected_sha256.as_deref())?;
        let mut reader = FrameReader::new(decoder(file, job.compression)?);
        let copy_sql = self.copy_sql(layout);
        let names = self.s.names.clone();
        let mut tx = self.s.client.transaction().sql_bare()?;
        let (result, rejects) = copy_rows(
            &mut tx,
            &copy_sql,
            &names.raw,
            &mut reader,
            job,
            layout,
            opts,
        )?;
        if let Some(want) = job.expected_records {
            if want != result.records {
                bail!(
                    "object {}: holds {} records but its manifest says {want}",
                    job.key,
                    result.records
                );
            }
        }
        record_load(&mut tx, &names, job, &result, &rejects)?;
        if opts.fail_before_commit {
            bail!(
                "failpoint: stopping after COPY of {}, before commit",
                job.key
            );
        }
        tx.commit()
            .sql_with(|| format!("committing load of {}", job.key))?;
        Ok(result)
    }
}

/// Streams one object's records into `COPY`; bad rows fail the object (strict) or are kept
/// for the rejects table (up to `max_errors`).
fn copy_rows<R: BufRead>(
    tx: &mut Transaction<'_>,
    copy_sql: &str,
    table: &str,
    reader: &mut FrameReader<R>,
    job: &LoadJob,
    layout: &Layout,
    opts: &LoadOptions,
) -> Result<(LoadResult, Vec<Reject>)> {
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
    let mut w = tx.copy_in(copy_sql).sql("starting COPY")?;
    let mut rec = Vec::with_capacity(1024);
    let mut buf = Vec::with_capacity(128 << 10);
    while reader
        .next_into(&mut rec)
        .with_context(|| format!("reading object {}", job.key))?
    {
        result.records += 1;
        if let Some(offs) = &offsets {
            let i = result.records as usize - 1;
            let Some(&off) = offs.get(i) else {
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
        match layout.to_pg_copy_row(&rec, &mut buf) {
            Ok(()) => result.loaded += 1,
            Err(e) => {
                let line = reader.record_no;
                let Some(max) = opts.max_errors else {
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
        if buf.len() >= 64 << 10 {
            w.write_all(&buf)
                .map_err(|e| anyhow!("sending COPY data: {e}"))?;
            buf.clear();
        }
    }
    w.write_all(&buf)
        .map_err(|e| anyhow!("sending COPY data: {e}"))?;
    w.finish().sql_with(|| format!("COPY into {table}"))?;
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
    let ledger = names.qualified(&names.ledger);
    let rejects_t = names.qualified(&names.rejects);
    for r in rejects {
        tx.execute(
            &format!(
                "INSERT INTO {rejects_t} (key, line, raw, reason, raw_bytes, raw_sha256) VALUES ($1, $2, $3, $4, $5, $6)"
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
    let r = job.range.as_ref();
    tx.execute(
        &format!(
            "INSERT INTO {ledger} (key, size, sha256, rows_loaded, rows_rejected, target_table, \
             topic, partition_id, epoch, first_offset, last_offset, rows_skipped, manifest, manifest_objects) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ),
        &[
            &job.key,
            &(job.size as i64),
            &job.expected_sha256.clone().unwrap_or_default(),
            &(result.loaded as i64),
            &(result.rejected as i64),
            &format!("{}.{}", names.schema, names.raw),
            &r.map(|r| r.topic.clone()),
            &r.map(|r| r.partition),
            &r.map(|r| r.epoch),
            &r.map(|r| r.first),
            &r.map(|r| r.last),
            &(result.skipped as i64),
            &job.manifest,
            &job.manifest_objects.map(|n| n as i32),
        ],
    )
    .sql_with(|| format!("recording {} in the ledger", job.key))?;
    Ok(())
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
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS raw_bytes bigint, ADD COLUMN IF NOT EXISTS raw_sha256 varchar(64)"
            ),
            format!(
                "ALTER TABLE {l} ADD COLUMN IF NOT EXISTS topic varchar(255), ADD COLUMN IF NOT EXISTS partition_id integer, \
                 ADD COLUMN IF NOT EXISTS epoch integer, ADD COLUMN IF NOT EXISTS first_offset bigint, \
                 ADD COLUMN IF NOT EXISTS last_offset bigint, ADD COLUMN IF NOT EXISTS rows_skipped bigint, \
                 ADD COLUMN IF NOT EXISTS manifest varchar(256), ADD COLUMN IF NOT EXISTS manifest_objects integer"
            ),
            // Copy's lookups by offset range and by manifest stay cheap as the ledger grows.
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {l} (topic, partition_id, epoch, last_offset)",
                quote_ident(&format!("{}_offsets", self.s.names.ledger))
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {l} (topic, manifest)",
                quote_ident(&format!("{}_manifest", self.s.names.ledger))
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
        layout: &Layout,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadResult),
    ) -> Result<Vec<LoadResult>> {
        let mut out = Vec::new();
        for job in jobs {
            let r = self.load_one(job, store, layout, opts).with_context(|| {
                format!(
                    "loading {} into {} at {}",
                    job.key, self.s.names.raw, self.s.url
                )
            })?;
            progress(&r);
            out.push(r);
        }
        Ok(out)
    }

    fn load_sql(&self, jobs: &[LoadJob], layout: &Layout) -> Vec<String> {
        let ledger = self.s.names.qualified(&self.s.names.ledger);
        let mut v = Vec::new();
        for j in jobs {
            v.push("BEGIN".into());
            v.push(format!("{}  -- rows of {}", self.copy_sql(layout), j.key));
            v.push(format!(
                "INSERT INTO {ledger} (key, size, sha256, rows_loaded, rows_rejected, target_table) VALUES ({}, {}, ...)",
                quote_literal(&j.key),
                j.size
            ));
            v.push("COMMIT".into());
        }
        v
    }
}
