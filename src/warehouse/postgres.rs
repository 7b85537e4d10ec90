//! PostgreSQL: streamed `COPY ... FROM STDIN`, ledger row in the same transaction,
//! session advisory locks.

use super::{
    create_statements, quote_ident, quote_literal, LoadJob, LoadOptions, LoadResult, Names,
    Warehouse,
};
use crate::archive::{decoder, download, ObjectStore};
use crate::config::{redact_url, WarehouseSettings};
use crate::output::Output;
use crate::records::{FrameReader, Layout};
use anyhow::{anyhow, bail, Context, Result};
use postgres::{Client, NoTls};
use std::collections::HashSet;
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

pub struct Pg {
    client: Client,
    names: Names,
    url: String,
    out: Output,
}

/// Opens a client; the error names the server, never the password.
pub fn open_client(w: &WarehouseSettings) -> Result<(Client, String)> {
    let shown = redact_url(&w.url);
    let mut cfg = postgres::Config::from_str(&w.url)
        .map_err(|_| anyhow!("warehouse.url {shown} is not a valid PostgreSQL URL"))?;
    if let Some(p) = &w.password {
        cfg.password(p.expose());
    }
    cfg.connect_timeout(Duration::from_secs(10));
    cfg.application_name("batchlayer");
    let client = cfg
        .connect(NoTls)
        .map_err(|e| anyhow!("cannot connect to PostgreSQL at {shown}: {}", pg_reason(&e)))?;
    Ok((client, shown))
}

/// The server's message (or the I/O reason), one line, without connection parameters.
pub fn pg_reason(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s = format!("{s}: {c}");
        src = c.source();
    }
    s
}

impl Pg {
    pub fn connect(w: &WarehouseSettings, names: Names, out: Output) -> Result<Self> {
        let (client, url) = open_client(w)?;
        Ok(Pg {
            client,
            names,
            url,
            out,
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
            self.names.qualified(&self.names.raw),
            cols.join(", ")
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
        let ledger = self.names.qualified(&self.names.ledger);
        let rejects_t = self.names.qualified(&self.names.rejects);
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| anyhow!("{}", pg_reason(&e)))?;
        let mut rejects: Vec<(u64, String, String)> = Vec::new();
        let mut result = LoadResult {
            key: job.key.clone(),
            bytes: job.size,
            ..Default::default()
        };
        {
            let mut w = tx
                .copy_in(&copy_sql)
                .map_err(|e| anyhow!("starting COPY: {}", pg_reason(&e)))?;
            let mut rec = Vec::with_capacity(1024);
            let mut buf = Vec::with_capacity(128 << 10);
            loop {
                let more = reader
                    .next_into(&mut rec)
                    .with_context(|| format!("reading object {}", job.key))?;
                if !more {
                    break;
                }
                result.records += 1;
                match layout.to_pg_copy_row(&rec, &mut buf) {
                    Ok(()) => result.loaded += 1,
                    Err(e) => {
                        let line = reader.record_no;
                        match opts.max_errors {
                            None => bail!("object {} record {line}: {e}", job.key),
                            Some(max) => {
                                result.rejected += 1;
                                if result.rejected > max {
                                    bail!(
                                        "object {}: more than {max} bad rows (--max-errors); record {line}: {e}",
                                        job.key
                                    );
                                }
                                let raw = String::from_utf8_lossy(&rec).replace('\0', "\u{fffd}");
                                rejects.push((line, raw, e.to_string()));
                            }
                        }
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
            w.finish()
                .map_err(|e| anyhow!("COPY into {}: {}", self.names.raw, pg_reason(&e)))?;
        }
        if let Some(want) = job.expected_records {
            if want != result.records {
                bail!(
                    "object {}: holds {} records but its manifest says {want}",
                    job.key,
                    result.records
                );
            }
        }
        for (line, raw, reason) in &rejects {
            tx.execute(
                &format!(
                    "INSERT INTO {rejects_t} (key, line, raw, reason) VALUES ($1, $2, $3, $4)"
                ),
                &[&job.key, &(*line as i64), raw, reason],
            )
            .map_err(|e| anyhow!("recording rejects: {}", pg_reason(&e)))?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {ledger} (key, size, sha256, rows_loaded, rows_rejected, target_table) VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            &[
                &job.key,
                &(job.size as i64),
                &job.expected_sha256.clone().unwrap_or_default(),
                &(result.loaded as i64),
                &(result.rejected as i64),
                &format!("{}.{}", self.names.schema, self.names.raw),
            ],
        )
        .map_err(|e| anyhow!("recording {} in the ledger: {}", job.key, pg_reason(&e)))?;
        if opts.fail_before_commit {
            bail!(
                "failpoint: stopping after COPY of {}, before commit",
                job.key
            );
        }
        tx.commit()
            .map_err(|e| anyhow!("committing load of {}: {}", job.key, pg_reason(&e)))?;
        Ok(result)
    }
}

impl Warehouse for Pg {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn ensure_tables(&mut self, layout: &Layout) -> Result<()> {
        for s in create_statements(&self.names, layout) {
            self.client
                .batch_execute(&s)
                .map_err(|e| anyhow!("creating tables in {}: {}", self.url, pg_reason(&e)))?;
        }
        Ok(())
    }

    fn lock(&mut self, name: &str, wait: bool) -> Result<bool> {
        let key = format!("batchlayer:{name}:{}.{}", self.names.schema, self.names.raw);
        if wait {
            let got: bool = self
                .client
                .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
                .map_err(|e| anyhow!("taking lock: {}", pg_reason(&e)))?
                .get(0);
            if !got {
                self.out.info(&format!(
                    "waiting for another {name} run to finish (lock {key})"
                ));
                self.client
                    .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
                    .map_err(|e| anyhow!("taking lock: {}", pg_reason(&e)))?;
            }
            Ok(true)
        } else {
            Ok(self
                .client
                .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
                .map_err(|e| anyhow!("taking lock: {}", pg_reason(&e)))?
                .get(0))
        }
    }

    fn loaded_keys(&mut self) -> Result<HashSet<String>> {
        let ledger = self.names.ledger.clone();
        if !self.table_exists(&ledger)? {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "SELECT key FROM {}",
            self.names.qualified(&self.names.ledger)
        );
        let rows = self
            .client
            .query(&sql, &[])
            .map_err(|e| anyhow!("reading the ledger: {}", pg_reason(&e)))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
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
                    job.key, self.names.raw, self.url
                )
            })?;
            progress(&r);
            out.push(r);
        }
        Ok(out)
    }

    fn load_sql(&self, jobs: &[LoadJob], layout: &Layout) -> Vec<String> {
        let ledger = self.names.qualified(&self.names.ledger);
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

    fn run_in_transaction(&mut self, stmts: &[String]) -> Result<()> {
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| anyhow!("{}", pg_reason(&e)))?;
        for s in stmts {
            tx.batch_execute(s)
                .map_err(|e| anyhow!("{}: {}", first_line(s), pg_reason(&e)))?;
        }
        tx.commit()
            .map_err(|e| anyhow!("commit: {}", pg_reason(&e)))
    }

    fn execute(&mut self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .map_err(|e| anyhow!("{}: {}", first_line(sql), pg_reason(&e)))
    }

    fn query_i64(&mut self, sql: &str) -> Result<Option<i64>> {
        let row = self
            .client
            .query_one(sql, &[])
            .map_err(|e| anyhow!("{}: {}", first_line(sql), pg_reason(&e)))?;
        Ok(row.get::<_, Option<i64>>(0))
    }

    fn table_exists(&mut self, table: &str) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
                &[&self.names.schema, &table],
            )
            .map_err(|e| anyhow!("checking table {table}: {}", pg_reason(&e)))?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    fn query_text(&mut self, sql: &str) -> Result<(Vec<String>, Vec<Vec<String>>)> {
        let stmt = self
            .client
            .prepare(sql)
            .map_err(|e| anyhow!("{}", pg_reason(&e)))?;
        let cols: Vec<String> = stmt
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        // Cast every column to text on the server so any type prints.
        let casts: Vec<String> = cols
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        let sql_text = format!("SELECT {} FROM ({sql}) AS q", casts.join(", "));
        let rows = self
            .client
            .query(&sql_text, &[])
            .map_err(|e| anyhow!("{}", pg_reason(&e)))?;
        let data = rows
            .iter()
            .map(|r| {
                (0..cols.len())
                    .map(|i| {
                        r.get::<_, Option<String>>(i)
                            .unwrap_or_else(|| "NULL".into())
                    })
                    .collect()
            })
            .collect();
        Ok((cols, data))
    }
}

fn first_line(sql: &str) -> String {
    sql.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .chars()
        .take(80)
        .collect()
}
