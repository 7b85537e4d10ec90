//! Amazon Redshift: a COPY manifest of exactly the selected objects, one server-side
//! `COPY ... MANIFEST`, and the ledger rows in the same transaction.
//! No cluster is reachable from the test machines: this path is verified by SQL snapshot tests.

use super::session::{PgSession, SqlSession};
use super::{quote_literal, LoadJob, LoadOptions, LoadResult, Names, Warehouse};
use crate::archive::layout::COPY_MANIFESTS;
use crate::archive::{Compression, ObjectStore};
use crate::config::{ArchiveLocation, ArchiveSettings, Secret, WarehouseSettings};
use crate::records::Layout;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;

/// How Redshift authenticates to S3.
#[derive(Debug, Clone)]
pub enum S3Auth {
    IamRole(String),
    Keys {
        access_key_id: String,
        secret_access_key: Secret,
    },
}

/// Everything needed to write the COPY statement.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// s3://bucket/prefix of the archive (objects' keys are relative to it).
    pub archive_url: String,
    pub manifest_url: String,
    pub region: String,
    pub auth: S3Auth,
    pub compression: Compression,
    pub max_errors: Option<u64>,
}

/// The Redshift COPY manifest (JSON) listing exactly these objects.
pub fn copy_manifest(archive_url: &str, jobs: &[LoadJob]) -> String {
    let entries: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "url": format!("{}/{}", archive_url.trim_end_matches('/'), j.key),
                "mandatory": true,
                "meta": { "content_length": j.size }
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "entries": entries })).unwrap_or_default()
}

/// Converts a chrono format to Redshift's TIMEFORMAT, for the formats the layout supports.
fn redshift_timeformat(chrono_fmt: &str) -> String {
    chrono_fmt
        .replace("%Y", "YYYY")
        .replace("%m", "MM")
        .replace("%d", "DD")
        .replace("%H", "HH24")
        .replace("%M", "MI")
        .replace("%S", "SS")
}

/// The COPY statement. With `mask`, secrets are replaced by `***` (for --dry-run and logs).
pub fn copy_sql(names: &Names, layout: &Layout, spec: &CopySpec, mask: bool) -> Result<String> {
    let cols: Vec<String> = layout
        .columns
        .iter()
        .map(|c| super::quote_ident(&c.name))
        .collect();
    let mut s = format!(
        "COPY {} ({})\nFROM {}\n",
        names.qualified(&names.raw),
        cols.join(", "),
        quote_literal(&spec.manifest_url)
    );
    match &spec.auth {
        S3Auth::IamRole(arn) => {
            if !arn.starts_with("arn:") {
                bail!("warehouse.iam_role {arn:?} is not an ARN (arn:aws:iam::ACCOUNT:role/NAME)");
            }
            s += &format!("IAM_ROLE {}\n", quote_literal(arn));
        }
        S3Auth::Keys {
            access_key_id,
            secret_access_key,
        } => {
            let secret = if mask {
                "***"
            } else {
                secret_access_key.expose()
            };
            s += &format!(
                "ACCESS_KEY_ID {}\nSECRET_ACCESS_KEY {}\n",
                quote_literal(access_key_id),
                quote_literal(secret)
            );
        }
    }
    s += "MANIFEST\n";
    s += &format!(
        "DELIMITER {}\n",
        quote_literal(&(layout.delimiter as char).to_string())
    );
    s += "ESCAPE\n";
    match spec.compression {
        Compression::Gzip => s += "GZIP\n",
        Compression::Zstd => s += "ZSTD\n",
        Compression::None => {}
    }
    s += &format!("REGION {}\n", quote_literal(&spec.region));
    s += &format!(
        "TIMEFORMAT {}\n",
        quote_literal(&redshift_timeformat(&layout.timestamp_format))
    );
    let markers: HashSet<&str> = layout
        .columns
        .iter()
        .filter_map(|c| c.null_marker.as_deref())
        .collect();
    match markers.len() {
        0 => {}
        1 => s += &format!("NULL AS {}\n", quote_literal(markers.iter().next().expect("one"))),
        _ => bail!("Redshift COPY takes one NULL AS string for all columns; the layout has several null markers"),
    }
    if let Some(n) = spec.max_errors {
        s += &format!("MAXERROR {n}\n");
    }
    Ok(s.trim_end().to_string())
}

/// The statements of one load, in order, inside one transaction.
pub fn load_statements(
    names: &Names,
    layout: &Layout,
    spec: &CopySpec,
    jobs: &[LoadJob],
    mask: bool,
) -> Result<Vec<String>> {
    let ledger = names.qualified(&names.ledger);
    let rejects = names.qualified(&names.rejects);
    let target = format!("{}.{}", names.schema, names.raw);
    let mut v = vec!["BEGIN".to_string(), format!("LOCK {ledger}")];
    v.push(copy_sql(names, layout, spec, mask)?);
    v.push(format!(
        "INSERT INTO {rejects} (key, line, raw, reason)\nSELECT trim(filename), line_number, trim(raw_line), trim(err_reason)\nFROM stl_load_errors WHERE query = pg_last_copy_id()"
    ));
    for j in jobs {
        let url = format!("{}/{}", spec.archive_url.trim_end_matches('/'), j.key);
        let bad = format!(
            "(SELECT count(*) FROM stl_load_errors WHERE query = pg_last_copy_id() AND trim(filename) = {})",
            quote_literal(&url)
        );
        let records = j
            .expected_records
            .map(|n| n.to_string())
            .unwrap_or_else(|| "NULL".into());
        v.push(format!(
            "INSERT INTO {ledger} (key, size, sha256, rows_loaded, rows_rejected, target_table, topic, partition_id, epoch, first_offset, last_offset, rows_skipped, manifest, manifest_objects)\nSELECT {}, {}, {}, {records} - {bad}, {bad}, {}, {}, 0, {}, {}",
            quote_literal(&j.key),
            j.size,
            quote_literal(j.expected_sha256.as_deref().unwrap_or("")),
            quote_literal(&target),
            range_values(j),
            j.manifest
                .as_deref()
                .map(quote_literal)
                .unwrap_or_else(|| "NULL".into()),
            j.manifest_objects
                .map(|n| n.to_string())
                .unwrap_or_else(|| "NULL".into())
        ));
    }
    v.push("COMMIT".to_string());
    Ok(v)
}

/// The ledger's identity columns of a job: topic, partition, epoch, first and last offset.
fn range_values(j: &LoadJob) -> String {
    match &j.range {
        Some(r) => format!(
            "{}, {}, {}, {}, {}",
            quote_literal(&r.topic),
            r.partition,
            r.epoch,
            r.first,
            r.last
        ),
        None => "NULL, NULL, NULL, NULL, NULL".into(),
    }
}

/// The query that explains a failed COPY.
pub const LOAD_ERRORS_SQL: &str =
    "SELECT trim(filename), line_number, trim(colname), trim(raw_field_value), trim(err_reason) \
FROM stl_load_errors WHERE query = pg_last_copy_id() ORDER BY line_number LIMIT 5";

/// Builds the COPY statement's fixed parts from the settings (the manifest URL is set per load).
pub fn copy_spec(w: &WarehouseSettings, archive: &ArchiveSettings) -> Result<CopySpec> {
    let rs = w
        .redshift
        .as_ref()
        .ok_or_else(|| anyhow!("warehouse.kind is not redshift"))?;
    let ArchiveLocation::S3 {
        bucket,
        prefix,
        access_key_id,
        secret_access_key,
        ..
    } = &archive.location
    else {
        bail!("Redshift COPY reads from S3: archive.url must be s3://");
    };
    let auth = match (&rs.iam_role, access_key_id, secret_access_key) {
        (Some(role), _, _) => S3Auth::IamRole(role.clone()),
        (None, Some(id), Some(secret)) => S3Auth::Keys {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
        },
        _ => bail!("Redshift COPY needs warehouse.iam_role, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    };
    let archive_url = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    Ok(CopySpec {
        manifest_url: format!("{archive_url}/{COPY_MANIFESTS}"),
        archive_url,
        region: rs.region.clone(),
        auth,
        compression: archive.compression,
        max_errors: None,
    })
}

pub struct Redshift {
    s: PgSession,
    spec: CopySpec,
}

impl Redshift {
    pub fn connect(w: &WarehouseSettings, archive: &ArchiveSettings, names: Names) -> Result<Self> {
        let spec = copy_spec(w, archive)?;
        Ok(Redshift {
            s: PgSession::connect(w, names)?,
            spec,
        })
    }

    /// The first rows of `stl_load_errors` for the last COPY, one line.
    fn load_errors(&mut self) -> String {
        self.s
            .query_text(LOAD_ERRORS_SQL)
            .map(|(_, rows)| {
                rows.iter()
                    .map(|r| r.join(" | "))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    /// What the ledger recorded for these jobs (rows rejected under MAXERROR included).
    fn ledger_results(&mut self, jobs: &[LoadJob]) -> Result<Vec<LoadResult>> {
        let keys: Vec<String> = jobs.iter().map(|j| quote_literal(&j.key)).collect();
        let (_, rows) = self.s.query_text(&format!(
            "SELECT key, rows_loaded, rows_rejected FROM {} WHERE key IN ({})",
            self.s.names.qualified(&self.s.names.ledger),
            keys.join(", ")
        ))?;
        let mut results = Vec::new();
        for j in jobs {
            let row = rows
                .iter()
                .find(|r| r[0] == j.key)
                .ok_or_else(|| anyhow!("{} is missing from the ledger after its COPY", j.key))?;
            let loaded: u64 = row[1].parse().unwrap_or(0);
            let rejected: u64 = row[2].parse().unwrap_or(0);
            results.push(LoadResult {
                key: j.key.clone(),
                bytes: j.size,
                records: loaded + rejected,
                loaded,
                rejected,
                skipped: 0,
            });
        }
        Ok(results)
    }
}

impl Warehouse for Redshift {
    fn session(&mut self) -> &mut dyn SqlSession {
        &mut self.s
    }
    fn names(&self) -> &Names {
        &self.s.names
    }
    fn describe(&self) -> String {
        format!("redshift {}", self.s.describe())
    }
    fn try_lock(&mut self, _name: &str) -> Result<bool> {
        // Redshift has no advisory locks: `LOCK ledger` inside the load transaction serialises.
        Ok(true)
    }
    fn lock_wait(&mut self, _name: &str) -> Result<()> {
        Ok(())
    }
    fn record_skipped(&mut self, job: &LoadJob, records: u64) -> Result<()> {
        let ledger = self.s.names.qualified(&self.s.names.ledger);
        let r = job
            .range
            .as_ref()
            .context("an object without an offset range")?;
        let target = format!("{}.{}", self.s.names.schema, self.s.names.raw);
        let sql = format!(
            "INSERT INTO {ledger} (key, size, sha256, rows_loaded, rows_rejected, target_table, topic, partition_id, epoch, first_offset, last_offset, rows_skipped) \
             VALUES ({}, {}, {}, 0, 0, {}, {}, {}, {}, {}, {}, {records})",
            quote_literal(&job.key),
            job.size,
            quote_literal(job.expected_sha256.as_deref().unwrap_or("")),
            quote_literal(&target),
            quote_literal(&r.topic),
            r.partition,
            r.epoch,
            r.first,
            r.last
        );
        self.s.run_in_transaction(&[format!("LOCK {ledger}"), sql])
    }
    fn load(
        &mut self,
        jobs: &[LoadJob],
        store: &dyn ObjectStore,
        layout: &Layout,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadResult),
    ) -> Result<Vec<LoadResult>> {
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        if let Some(j) = jobs.iter().find(|j| !j.skip.is_empty()) {
            bail!(
                "object {} overlaps offsets loaded already; loading part of an object is not supported on Redshift",
                j.key
            );
        }
        let mut spec = self.spec.clone();
        spec.max_errors = opts.max_errors;
        let run_id = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let manifest_key = format!("{COPY_MANIFESTS}{run_id}-{}.json", std::process::id());
        spec.manifest_url = format!("{}/{manifest_key}", spec.archive_url.trim_end_matches('/'));
        store
            .put_bytes_if_absent(
                &manifest_key,
                copy_manifest(&spec.archive_url, jobs).as_bytes(),
            )
            .context("writing the COPY manifest")?;
        let stmts = load_statements(&self.s.names, layout, &spec, jobs, false)?;
        let inner: Vec<String> = stmts[1..stmts.len() - 1].to_vec();
        if let Err(e) = self.s.run_in_transaction(&inner) {
            let detail = self.load_errors();
            bail!("Redshift COPY failed: {e:#}; load errors: {detail}");
        }
        let results = self.ledger_results(jobs)?;
        for r in &results {
            progress(r);
        }
        Ok(results)
    }
    fn load_sql(&self, jobs: &[LoadJob], layout: &Layout) -> Vec<String> {
        load_statements(&self.s.names, layout, &self.spec, jobs, true)
            .unwrap_or_else(|e| vec![format!("-- {e:#}")])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            schema: "public".into(),
            raw: "batch_raw".into(),
            ledger: "batchlayer_loads".into(),
            rejects: "batchlayer_rejects".into(),
        }
    }

    fn spec(auth: S3Auth, c: Compression, max_errors: Option<u64>) -> CopySpec {
        CopySpec {
            archive_url: "s3://arch/tweets".into(),
            manifest_url: "s3://arch/tweets/_copy_manifests/run1.json".into(),
            region: "eu-west-1".into(),
            auth,
            compression: c,
            max_errors,
        }
    }

    fn job(key: &str) -> LoadJob {
        LoadJob {
            key: key.into(),
            size: 123,
            compression: Compression::Gzip,
            expected_sha256: Some("ab".into()),
            expected_records: Some(10),
            ..Default::default()
        }
    }

    #[test]
    fn copy_with_iam_role_gzip_snapshot() {
        let sql = copy_sql(
            &names(),
            &Layout::tweets(),
            &spec(
                S3Auth::IamRole("arn:aws:iam::123456789012:role/Loader".into()),
                Compression::Gzip,
                None,
            ),
            false,
        )
        .unwrap();
        assert_eq!(
            sql,
            "COPY \"public\".\"batch_raw\" (\"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\")\n\
FROM 's3://arch/tweets/_copy_manifests/run1.json'\n\
IAM_ROLE 'arn:aws:iam::123456789012:role/Loader'\n\
MANIFEST\n\
DELIMITER ';'\n\
ESCAPE\n\
GZIP\n\
REGION 'eu-west-1'\n\
TIMEFORMAT 'YYYY-MM-DD HH24:MI:SS'\n\
NULL AS 'None'"
        );
    }

    #[test]
    fn copy_with_keys_zstd_maxerror_masks_secret() {
        let auth = S3Auth::Keys {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Secret::new("s3cr3t/key"),
        };
        let s = spec(auth, Compression::Zstd, Some(5));
        let masked = copy_sql(&names(), &Layout::tweets(), &s, true).unwrap();
        assert!(
            masked.contains("ACCESS_KEY_ID 'AKIAEXAMPLE'\nSECRET_ACCESS_KEY '***'\n"),
            "{masked}"
        );
        assert!(!masked.contains("s3cr3t"));
        assert!(
            masked.contains("\nZSTD\n") && masked.ends_with("MAXERROR 5"),
            "{masked}"
        );
        let real = copy_sql(&names(), &Layout::tweets(), &s, false).unwrap();
        assert!(real.contains("SECRET_ACCESS_KEY 's3cr3t/key'"));
    }

    #[test]
    fn manifest_lists_exactly_the_objects() {
        let m = copy_manifest(
            "s3://arch/tweets/",
            &[
                job("t/2024/01/01/00/t+0+00000000000000000000+00000000000000000009.log.gz"),
                job("t/x/t+1+1+1.log.gz"),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        let urls: Vec<&str> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            vec![
            "s3://arch/tweets/t/2024/01/01/00/t+0+00000000000000000000+00000000000000000009.log.gz",
            "s3://arch/tweets/t/x/t+1+1+1.log.gz"
        ]
        );
        assert!(v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["mandatory"] == true && e["meta"]["content_length"] == 123));
    }

    #[test]
    fn load_runs_in_one_transaction_with_lock_and_ledger() {
        let s = spec(
            S3Auth::IamRole("arn:aws:iam::1:role/r".into()),
            Compression::Gzip,
            Some(2),
        );
        let st = load_statements(
            &names(),
            &Layout::tweets(),
            &s,
            &[job("a.log.gz"), job("b.log.gz")],
            true,
        )
        .unwrap();
        assert_eq!(st[0], "BEGIN");
        assert_eq!(st[1], "LOCK \"public\".\"batchlayer_loads\"");
        assert!(st[2].starts_with("COPY "));
        assert!(st[3].starts_with("INSERT INTO \"public\".\"batchlayer_rejects\""));
        assert!(st[4].contains("'a.log.gz'") && st[5].contains("'b.log.gz'"));
        assert_eq!(st.last().unwrap(), "COMMIT");
        assert_eq!(st.len(), 7);
    }

    #[test]
    fn bad_iam_role_is_refused() {
        let s = spec(S3Auth::IamRole("Loader".into()), Compression::Gzip, None);
        assert!(copy_sql(&names(), &Layout::tweets(), &s, true).is_err());
    }
}
