//! The Redshift dialect on the Redshift stand-in (`tests/common/standin.rs`): PostgreSQL
//! set up to behave like Redshift, with the server-side COPY carried out by a test double that
//! reads the manifests and objects from s3s-fs. The conformance suite, and the cases the
//! Redshift loader got wrong before: concurrent copies, objects no manifest lists, mixed
//! compression, hostile keys, MAXERROR per object and varchar in bytes, concurrent aggregates.
//!
//! Every test runs twice: on a stand-in provisioned cluster (STL views) and on a stand-in
//! Redshift Serverless (no STL views; SYS views), the flavour detected by the dialect's probe.
//!
//! `publish` with `lake.spectrum_schema` runs the real binary against the stand-in through the
//! stand-in's wire-protocol server (`StandInCluster::serve`), the Spectrum statements modelled
//! in tests/common/standin_spectrum.rs.

use crate::common::standin::{StandIn, StandInCluster};
use crate::common::*;
use batchlayer::archive::layout::{self, Compression, Manifest, ObjectEntry};
use batchlayer::archive::ObjectStore;
use batchlayer::commands::aggregate::{self, AggregateOptions};
use batchlayer::commands::copy::{self, CopyOptions, CopySummary};
use batchlayer::config::{ArchiveSettings, Secret};
use batchlayer::output::Output;
use batchlayer::records::{frame_into, Column, ColumnType, Layout};
use batchlayer::warehouse::redshift::{CopySpec, Flavour, Redshift, S3Auth};
use batchlayer::warehouse::{
    quote_literal, LoadJob, LoadOptions, Names, OffsetRange, SqlSession, Warehouse,
};
use sha2::Digest;
use std::io::Write;
use std::sync::{Arc, Barrier};

/// What a thread needs to open its own warehouse and store.
#[derive(Clone)]
struct Target {
    cluster: StandInCluster,
    names: Names,
    spec: CopySpec,
    archive: ArchiveSettings,
    topic: String,
}

impl Target {
    /// The dialect over the stand-in, its flavour probed (the stand-in answers as its flavour).
    fn open(&self) -> Box<dyn Warehouse> {
        Box::new(self.redshift(None))
    }

    fn redshift(&self, flavour: Option<Flavour>) -> Redshift {
        let (c, n) = (self.cluster.clone(), self.names.clone());
        let open = Box::new(move || Ok(Box::new(c.session(n.clone())?) as Box<dyn SqlSession>));
        Redshift::over(self.names.clone(), self.spec.clone(), open)
            .unwrap()
            .with_flavour(flavour)
    }

    fn store(&self) -> Box<dyn ObjectStore> {
        batchlayer::archive::open(&self.archive).unwrap()
    }

    fn copy(&self, max_errors: Option<u64>, full_scan: bool) -> anyhow::Result<CopySummary> {
        self.copy_with(&Layout::tweets(), max_errors, full_scan)
    }

    fn copy_with(
        &self,
        layout: &Layout,
        max_errors: Option<u64>,
        full_scan: bool,
    ) -> anyhow::Result<CopySummary> {
        let opts = CopyOptions {
            wait: true,
            max_errors,
            full_scan,
            key_template: "{topic}/{YYYY}/{MM}/{DD}/{HH}".into(),
            ..Default::default()
        };
        let mut wh = self.open();
        copy::run(
            self.store().as_ref(),
            wh.as_mut(),
            layout,
            &opts,
            &Output::silent(),
        )
    }

    /// Stores framed records as partition `p`'s object from offset `first`; returns the entry
    /// a run manifest gives it. `folder` replaces the time folder (hostile keys).
    fn put(
        &self,
        p: i32,
        first: i64,
        recs: &[Vec<u8>],
        c: Compression,
        folder: Option<&str>,
    ) -> ObjectEntry {
        let mut plain = Vec::new();
        for r in recs {
            frame_into(r, &mut plain);
        }
        let body = match c {
            Compression::None => plain.clone(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&plain).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(&plain[..], 3).unwrap(),
        };
        let last = first + recs.len() as i64 - 1;
        let name = layout::object_file_name(&self.topic, p, first, last, c);
        let folder = folder.map_or(format!("{}/2024/01/01/00", self.topic), str::to_string);
        let key = layout::object_key(&folder, &name);
        self.store().put_bytes_if_absent(&key, &body).unwrap();
        ObjectEntry {
            key,
            topic: self.topic.clone(),
            partition: p,
            first_offset: first,
            last_offset: last,
            records: recs.len() as u64,
            bytes: body.len() as u64,
            uncompressed_bytes: plain.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&body)),
            compression: c,
            gaps: vec![],
            holes: vec![],
            max_timestamp_ms: None,
            schema_ids: Vec::new(),
            timestamps: None,
        }
    }

    /// Writes a run manifest listing these objects.
    fn manifest(&self, objects: Vec<ObjectEntry>) {
        let now = chrono::Utc::now();
        let run = format!("{}{}", layout::run_id(now), unique("r"));
        let m = Manifest {
            run_id: run.clone(),
            topic: self.topic.clone(),
            group: "g".into(),
            started_at: now.to_rfc3339(),
            finished_at: now.to_rfc3339(),
            objects,
            rejected_key: None,
            rejected: 0,
            epoch: 0,
            expired: vec![],
            next: Default::default(),
        };
        let key = layout::manifest_key(&self.topic, &run, now);
        self.store()
            .put_bytes_if_absent(&key, &serde_json::to_vec(&m).unwrap())
            .unwrap();
    }

    fn job(&self, e: &ObjectEntry) -> LoadJob {
        LoadJob {
            key: e.key.clone(),
            size: e.bytes,
            compression: e.compression,
            expected_sha256: Some(e.sha256.clone()),
            expected_records: Some(e.records),
            range: Some(OffsetRange {
                topic: e.topic.clone(),
                partition: e.partition,
                epoch: 0,
                first: e.first_offset,
                last: e.last_offset,
            }),
            manifest: Some("m".into()),
            manifest_objects: Some(1),
            ..Default::default()
        }
    }

    fn query(&self, sql: &str) -> Vec<postgres::Row> {
        pg().query(&sql.replace("{s}", &self.names.schema), &[])
            .unwrap()
    }

    fn count(&self, table: &str) -> i64 {
        self.query(&format!("SELECT count(*) FROM {{s}}.{table}"))[0].get(0)
    }
}

/// Each test of this suite, as two tests: `<name>::provisioned` and `<name>::serverless`.
macro_rules! both_flavours {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn provisioned() {
                super::$name(false)
            }
            #[test]
            fn serverless() {
                super::$name(true)
            }
        }
    )*};
}

both_flavours!(
    two_topics_share_one_raw_table_by_its_topic_column,
    redshift_warehouse_conforms_on_the_stand_in,
    two_raw_tables_sharing_one_ledger_each_get_every_object,
    the_stand_in_refuses_what_it_does_not_model,
    two_copies_started_at_once_load_each_object_once,
    loads_racing_past_the_run_lock_still_load_each_object_once,
    an_object_no_manifest_lists_is_loaded_and_measured,
    a_mixed_compression_archive_loads_with_one_copy_per_compression,
    a_key_with_backslash_quote_is_loaded_safely,
    maxerror_applies_per_object_and_rejects_are_recorded,
    two_aggregates_at_once_are_serialised,
    temporary_keys_and_the_default_role_load,
    the_stand_in_refuses_an_unquoted_reserved_word,
    the_stand_in_folds_quoted_identifiers_to_lower_case,
    the_stand_in_refuses_leader_only_functions_on_user_tables,
    the_stand_in_refuses_a_text_value_over_256_bytes,
    a_copy_failing_before_loading_quotes_no_earlier_copys_errors,
    a_serializable_isolation_violation_is_retried,
    a_busy_run_lock_is_refused_at_once,
    a_load_blocks_other_ledger_writers_but_not_its_readers,
    one_awkward_archive_loads_the_same_into_postgresql_and_redshift,
    the_stand_in_converts_as_copy_is_documented,
    one_awkward_json_archive_loads_the_same_into_postgresql_and_redshift,
    one_awkward_avro_archive_loads_the_same_into_postgresql_and_redshift,
    a_json_record_redshift_refuses_is_rejected_under_its_archived_line,
    the_stand_in_reads_json_as_copy_is_documented,
    the_stand_in_refuses_json_copies_as_redshift_does,
    the_stand_in_models_spectrum_as_documented,
    publish_adds_each_sealed_hour_to_spectrum_once,
);

/// A world with an S3 archive and the stand-in (Serverless or provisioned) over its schema;
/// None when the stack is down.
fn target(name: &str, serverless: bool) -> Option<(World, Target)> {
    if !s3_and_pg_up() {
        return None;
    }
    let w = World::s3(name);
    let cluster = StandInCluster {
        pg_url: pg_url(),
        system_schema: format!("{}_sys", w.schema),
        s3_endpoint: s3_endpoint(),
        s3_region: "us-east-1".into(),
        role_keys: (s3_access(), s3_secret()),
        serverless,
        serial_violations: Default::default(),
    };
    cluster.install().unwrap();
    let s = w.settings();
    let t = Target {
        cluster,
        names: Names::from_settings(&s.warehouse),
        spec: CopySpec {
            archive_url: w.archive.clone(),
            region: "us-east-1".into(),
            auth: S3Auth::Keys {
                access_key_id: s3_access(),
                secret_access_key: Secret::new(s3_secret()),
                session_token: None,
            },
        },
        archive: s.archive.clone(),
        topic: w.topic.clone(),
    };
    Some((w, t))
}

fn tweets(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range
        .map(|i| batchlayer::tweets::tweet(77, i, 5).record().into_bytes())
        .collect()
}

const BAD: &[u8] = b"1;2024-01-01 00:00:00;not-a-number;Oslo;1;2;";

/// A record the loader's check accepts (256 characters at most) and Redshift refuses: 400
/// bytes in a varchar(256).
static OVER_256_BYTES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("1;2024-01-01 00:00:00;5;{};1;2;", "é".repeat(200)));

fn redshift_warehouse_conforms_on_the_stand_in(serverless: bool) {
    let Some((w, t)) = target("rsconf", serverless) else {
        return;
    };
    let good = tweets(0..5);
    let good: Vec<&[u8]> = good.iter().map(|r| &r[..]).collect();
    batchlayer::warehouse::conformance::run(
        &|| t.open(),
        t.store().as_ref(),
        &batchlayer::records::Codec::new(Layout::tweets()),
        "batch_raw",
        &format!("{}.batch_raw", w.schema),
        &good,
        BAD,
    );
}

/// Item 10 of issue 23 on the Redshift dialect: a second raw table sharing the ledger loads
/// every object the first one loaded, and each table's next copy has nothing left.
fn two_raw_tables_sharing_one_ledger_each_get_every_object(serverless: bool) {
    let Some((_w, t)) = target("rsshare", serverless) else {
        return;
    };
    let entries = vec![
        t.put(0, 0, &tweets(0..10), Compression::Gzip, None),
        t.put(1, 0, &tweets(10..25), Compression::Gzip, None),
    ];
    t.manifest(entries);
    let mut other = t.clone();
    other.names.raw = "other_raw".into();
    let a = t.copy(None, false).unwrap();
    assert_eq!((a.objects, a.rows), (2, 25), "{a:?}");
    let b = other.copy(None, false).unwrap();
    assert_eq!(
        (b.objects, b.rows),
        (2, 25),
        "the second raw table skipped the first one's objects: {b:?}"
    );
    assert_eq!(t.count("batch_raw"), 25);
    assert_eq!(t.count("other_raw"), 25);
    assert_eq!(t.count("batchlayer_loads"), 4);
    assert_eq!(t.copy(None, false).unwrap().objects, 0);
    assert_eq!(other.copy(None, false).unwrap().objects, 0);
}

/// Many topics (issue 26) on the Redshift dialect: two topics loaded one after the other
/// into one raw table, each row's topic in the table's topic column (COPY leaves the staging
/// table's column NULL; the move from staging writes the topic).
fn two_topics_share_one_raw_table_by_its_topic_column(serverless: bool) {
    let Some((_w, t)) = target("rstopics", serverless) else {
        return;
    };
    let mut other = t.clone();
    other.topic = format!("{}.other", t.topic);
    t.manifest(vec![t.put(0, 0, &tweets(0..10), Compression::Gzip, None)]);
    other.manifest(vec![
        other.put(0, 0, &tweets(10..14), Compression::Gzip, None),
        other.put(1, 0, &tweets(14..20), Compression::None, None),
    ]);
    let layout = Layout {
        topic_column: Some("topic".into()),
        ..Layout::tweets()
    };
    for (topic, rows) in [(&t.topic, 10), (&other.topic, 10)] {
        let opts = CopyOptions {
            wait: true,
            key_template: "{topic}/{YYYY}/{MM}/{DD}/{HH}".into(),
            topics: Some(vec![topic.clone()]),
            ..Default::default()
        };
        let mut wh = t.open();
        let sum = copy::run(
            t.store().as_ref(),
            wh.as_mut(),
            &layout,
            &opts,
            &Output::silent(),
        )
        .unwrap();
        assert_eq!(sum.rows, rows, "{topic}: {sum:?}");
    }
    let by_topic: Vec<(String, i64)> = t
        .query("SELECT \"topic\", count(*) FROM {s}.batch_raw GROUP BY 1 ORDER BY 1")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        by_topic,
        vec![(t.topic.clone(), 10), (other.topic.clone(), 10)]
    );
    let ids: Vec<(String, i64)> = t
        .query("SELECT \"topic\", min(\"id\") FROM {s}.batch_raw GROUP BY 1 ORDER BY 1")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let first = |i| batchlayer::tweets::tweet(77, i, 5).id;
    assert_eq!(ids[0].1, (0..10).map(first).min().unwrap());
    assert_eq!(ids[1].1, (10..20).map(first).min().unwrap());
}

fn the_stand_in_refuses_what_it_does_not_model(serverless: bool) {
    let Some((_w, t)) = target("rsrefuse", serverless) else {
        return;
    };
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    let err = format!(
        "{:#}",
        s.execute("SELECT pg_try_advisory_lock(1)").unwrap_err()
    );
    assert!(err.contains("advisory"), "{err}");
    // The STL views are provisioned-only: Serverless refuses them, though PostgreSQL (holding
    // the look-alike) accepts the statement. The SYS views answer on both.
    let stl = "SELECT count(*) FROM stl_load_errors WHERE query = -1";
    if serverless {
        let err = format!("{:#}", s.query_i64(stl).unwrap_err());
        assert!(err.contains("provisioned-only"), "{err}");
        let direct = format!(
            "SELECT count(*) FROM {}.stl_load_errors WHERE query = -1",
            t.cluster.system_schema
        );
        assert!(pg().query(&direct, &[]).is_ok());
    } else {
        assert_eq!(s.query_i64(stl).unwrap(), Some(0));
    }
    for sys in ["sys_load_error_detail", "sys_load_history"] {
        assert_eq!(
            s.query_i64(&format!("SELECT count(*) FROM {sys} WHERE query_id = -1"))
                .unwrap(),
            Some(0)
        );
    }
    for copy in [
        "COPY x FROM 's3://b/m' IAM_ROLE 'arn:aws:iam::1:role/r' MANIFEST CSV",
        "COPY x FROM 's3://b/prefix' IAM_ROLE 'arn:aws:iam::1:role/r'",
        "COPY x FROM 's3://b/m' MANIFEST GZIP",
        "COPY x FROM 's3://b/m' IAM_ROLE 'a' MANIFEST TIMEFORMAT 'auto'",
    ] {
        let err = format!("{:#}", s.execute(copy).unwrap_err());
        assert!(err.contains("does not understand"), "{copy}: {err}");
    }
    // Backslash is an escape in literals, as on Redshift; PostgreSQL's quoting is not enough.
    let key = "a\\'b";
    assert!(
        s.query_text(&format!("SELECT {} AS k", quote_literal(key)))
            .map(|(_, r)| r[0][0].as_deref() != Some(key))
            .unwrap_or(true),
        "the stand-in read a backslash as PostgreSQL does"
    );
    let (_, rows) = s
        .query_text(&format!(
            "SELECT {} AS k",
            batchlayer::warehouse::redshift::literal(key)
        ))
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some(key));
}

/// Runs `sql` on PostgreSQL itself (schema `{s}`), which must accept it, and on the stand-in,
/// which must refuse it with a message holding `why`.
fn pg_accepts_standin_refuses(t: &Target, s: &mut dyn SqlSession, sql: &str, why: &str) {
    let sql = sql.replace("{s}", &t.names.schema);
    pg().batch_execute(&sql)
        .unwrap_or_else(|e| panic!("PostgreSQL refused {sql}: {e}"));
    let err = format!("{:#}", s.execute(&sql).unwrap_err());
    assert!(err.contains(why), "{sql}: {err}");
}

/// Reserved words (r_pg_keywords): an unquoted one in an identifier's place is Redshift's
/// syntax error; quoted, it is an identifier. The dialect's own DDL passes (`ensure_tables`).
fn the_stand_in_refuses_an_unquoted_reserved_word(serverless: bool) {
    let Some((_w, t)) = target("rsreserved", serverless) else {
        return;
    };
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    pg().batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", t.names.schema))
        .unwrap();
    let why = "syntax error at or near";
    pg_accepts_standin_refuses(
        &t,
        &mut s,
        "CREATE TABLE {s}.rej_a (raw varchar(10), open int)",
        why,
    );
    pg_accepts_standin_refuses(&t, &mut s, "SELECT raw FROM {s}.rej_a", why);
    pg_accepts_standin_refuses(&t, &mut s, "INSERT INTO {s}.rej_a (raw) VALUES ('x')", why);
    pg_accepts_standin_refuses(&t, &mut s, "SELECT r.open FROM {s}.rej_a r", why);
    pg_accepts_standin_refuses(&t, &mut s, "SELECT 1 AS tag", why);
    pg_accepts_standin_refuses(&t, &mut s, "CREATE TABLE {s}.rej_b (partition int)", why);
    // Quoted, each is an identifier.
    s.execute(&format!(
        r#"CREATE TABLE {}.rej_c ("raw" varchar(10), "open" int, "partition" int)"#,
        t.names.schema
    ))
    .unwrap();
    s.execute(&format!(
        r#"INSERT INTO {}.rej_c ("raw", "open") VALUES ('x', 1)"#,
        t.names.schema
    ))
    .unwrap();
    let (_, rows) = s
        .query_text(&format!(
            r#"SELECT "r"."raw" AS "tag" FROM {}.rej_c "r" ORDER BY "open""#,
            t.names.schema
        ))
        .unwrap();
    assert_eq!(rows, vec![vec![Some("x".to_string())]]);
    // The COPY's table and columns are checked too.
    let err = format!(
        "{:#}",
        s.execute("COPY x (raw) FROM 's3://b/m' IAM_ROLE 'arn:aws:iam::1:role/r' MANIFEST")
            .unwrap_err()
    );
    assert!(err.contains(why), "{err}");
    t.open().ensure_tables(&Layout::tweets()).unwrap();
}

/// Identifiers fold to lower case, quoted ones too (r_names): "Mixed" and "mixed" are one
/// table, and a lookup of the name as written finds nothing.
fn the_stand_in_folds_quoted_identifiers_to_lower_case(serverless: bool) {
    let Some((_w, t)) = target("rsfold", serverless) else {
        return;
    };
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    pg().batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", t.names.schema))
        .unwrap();
    // PostgreSQL keeps quoted names as written: two tables.
    let pg_schema = format!("{}_pg", t.names.schema);
    pg().batch_execute(&format!(
        r#"CREATE SCHEMA {pg_schema}; CREATE TABLE {pg_schema}."MixedCase" ("Col" int); CREATE TABLE {pg_schema}."mixedcase" ("col" int)"#
    ))
    .unwrap();
    // Redshift folds them: one.
    s.execute(&format!(
        r#"CREATE TABLE {}."MixedCase" ("Col" int)"#,
        t.names.schema
    ))
    .unwrap();
    let err = format!(
        "{:#}",
        s.execute(&format!(
            r#"CREATE TABLE {}."mixedcase" ("col" int)"#,
            t.names.schema
        ))
        .unwrap_err()
    );
    assert!(err.contains("already exists"), "{err}");
    assert!(s.table_exists("mixedcase").unwrap());
    assert!(!s.table_exists("MixedCase").unwrap(), "kept as written");
    s.execute(&format!(
        r#"INSERT INTO {}."MIXEDCASE" ("COL") VALUES (1)"#,
        t.names.schema
    ))
    .unwrap();
    let (cols, _) = s
        .query_text(&format!(
            r#"SELECT "Col" FROM {}."mixedCase""#,
            t.names.schema
        ))
        .unwrap();
    assert_eq!(cols, vec!["col"], "column names come back in lower case");
    // The dialect with a mixed-case ledger name (config refuses it for Redshift): the table is
    // created folded, and the ledger's lookup of the name as written finds none, so every
    // question would see an empty ledger.
    let mut names = t.names.clone();
    names.ledger = "MixedLoads".into();
    let (c, n) = (t.cluster.clone(), names.clone());
    let open = Box::new(move || Ok(Box::new(c.session(n.clone())?) as Box<dyn SqlSession>));
    let mut wh = Redshift::over(names, t.spec.clone(), open).unwrap();
    wh.ensure_tables(&Layout::tweets()).unwrap();
    assert!(wh.session().table_exists("mixedloads").unwrap());
    assert!(!wh.session().table_exists("MixedLoads").unwrap());
}

/// Leader-node-only functions (c_SQL_functions_leader_node_only) fail in a statement on a
/// user table, the DDL's DEFAULT included; alone, or on catalog tables, they run. SYSDATE and
/// GETDATE() are Redshift's, answered in UTC.
fn the_stand_in_refuses_leader_only_functions_on_user_tables(serverless: bool) {
    let Some((_w, t)) = target("rsleader", serverless) else {
        return;
    };
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    pg().batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", t.names.schema))
        .unwrap();
    let why = "not supported on Redshift tables";
    pg_accepts_standin_refuses(
        &t,
        &mut s,
        r#"CREATE TABLE {s}.lo_a ("at" timestamp DEFAULT CURRENT_TIMESTAMP)"#,
        why,
    );
    pg_accepts_standin_refuses(&t, &mut s, r#"SELECT now() FROM {s}.lo_a"#, why);
    pg_accepts_standin_refuses(
        &t,
        &mut s,
        r#"SELECT count(*) FROM {s}.lo_a WHERE "at" < CURRENT_TIMESTAMP"#,
        why,
    );
    assert!(s
        .query_i64("SELECT CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) AS BIGINT)")
        .is_ok());
    assert!(
        s.query_i64("SELECT count(*) FROM pg_class WHERE now() IS NOT NULL")
            .is_ok(),
        "a catalog table runs on the leader"
    );
    s.execute(&format!(
        r#"CREATE TABLE {}.lo_b ("at" timestamp DEFAULT SYSDATE, "x" int)"#,
        t.names.schema
    ))
    .unwrap();
    s.execute(&format!(
        r#"INSERT INTO {}.lo_b ("x") VALUES (1)"#,
        t.names.schema
    ))
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    for f in [r#"max("at")"#, "GETDATE()", "SYSDATE"] {
        let got = s
            .query_i64(&format!(
                "SELECT CAST(EXTRACT(EPOCH FROM {f}) AS BIGINT) FROM {}.lo_b",
                t.names.schema
            ))
            .unwrap()
            .unwrap();
        assert!(
            (got - now).abs() < 300,
            "{f}: {got} is not now ({now}) in UTC"
        );
    }
}

/// TEXT is VARCHAR(256) in bytes (r_Character_types): a longer value cast to it is refused
/// (PostgreSQL's text takes any length). query_text casts nothing, so a ledger key of 300
/// bytes comes back whole, and in the query's order.
fn the_stand_in_refuses_a_text_value_over_256_bytes(serverless: bool) {
    let Some((_w, t)) = target("rstext", serverless) else {
        return;
    };
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    let why = "text_is_varchar_256_on_redshift";
    pg_accepts_standin_refuses(&t, &mut s, "SELECT repeat('x', 257)::text AS v", why);
    pg_accepts_standin_refuses(
        &t,
        &mut s,
        "SELECT CAST(repeat('é', 129) AS TEXT) AS v",
        why,
    );
    let (_, rows) = s.query_text("SELECT repeat('é', 128)::text AS v").unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("é".repeat(128).as_str()));
    let key = format!("t/{}/t+0+0+9.log.gz", "k".repeat(300));
    let (_, rows) = s
        .query_text(&format!(
            "SELECT {} AS k UNION ALL SELECT 'a' UNION ALL SELECT 'z' ORDER BY 1 DESC",
            quote_literal(&key)
        ))
        .unwrap();
    let got: Vec<Option<String>> = rows.into_iter().map(|mut r| r.remove(0)).collect();
    assert_eq!(got, vec![Some("z".into()), Some(key), Some("a".into())]);
}

fn two_copies_started_at_once_load_each_object_once(serverless: bool) {
    let Some((_w, t)) = target("rstwo", serverless) else {
        return;
    };
    let mut entries = Vec::new();
    for p in 0..3 {
        for k in 0..2 {
            let recs = tweets((p * 100 + k * 10) as u64..(p * 100 + k * 10 + 10) as u64);
            entries.push(t.put(p, k as i64 * 10, &recs, Compression::Gzip, None));
        }
    }
    t.manifest(entries);
    let barrier = Arc::new(Barrier::new(2));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (t, b) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                t.copy(None, false).map(|s| s.objects)
            })
        })
        .collect();
    let objects: Vec<usize> = runs
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert_eq!(objects.iter().sum::<usize>(), 6, "{objects:?}");
    assert_eq!(t.count("batch_raw"), 60);
    let r = t.query("SELECT count(*), count(DISTINCT key) FROM {s}.batchlayer_loads");
    assert_eq!((r[0].get::<_, i64>(0), r[0].get::<_, i64>(1)), (6, 6));
}

fn loads_racing_past_the_run_lock_still_load_each_object_once(serverless: bool) {
    let Some((_w, t)) = target("rsrace", serverless) else {
        return;
    };
    let e = [
        t.put(0, 0, &tweets(0..20), Compression::Gzip, None),
        t.put(1, 0, &tweets(20..40), Compression::Gzip, None),
    ];
    let jobs: Vec<LoadJob> = e.iter().map(|e| t.job(e)).collect();
    t.open().ensure_tables(&Layout::tweets()).unwrap();
    // Both load the same objects at once without copy's run lock: the LOCK on the ledger
    // and the re-check inside it let one through.
    let barrier = Arc::new(Barrier::new(2));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (t, b, jobs) = (t.clone(), barrier.clone(), jobs.clone());
            std::thread::spawn(move || {
                let mut wh = t.open();
                b.wait();
                wh.load(
                    &jobs,
                    t.store().as_ref(),
                    &batchlayer::records::Codec::new(Layout::tweets()),
                    &LoadOptions::default(),
                    &mut |_| {},
                )
                .map_err(|e| format!("{e:#}"))
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    let err = results.iter().find_map(|r| r.clone().err()).unwrap();
    assert!(err.contains("in the ledger already"), "{err}");
    assert_eq!(t.count("batch_raw"), 40);
    assert_eq!(t.count("batchlayer_loads"), 2);
}

fn an_object_no_manifest_lists_is_loaded_and_measured(serverless: bool) {
    let Some((_w, t)) = target("rsunlisted", serverless) else {
        return;
    };
    let listed = t.put(0, 0, &tweets(0..10), Compression::Gzip, None);
    t.manifest(vec![listed]);
    // A crashed run's object: stored, in no manifest; one bad record among 8.
    let mut recs = tweets(10..17);
    recs.push(BAD.to_vec());
    let orphan = t.put(0, 10, &recs, Compression::Gzip, None);
    let s = t.copy(Some(1), true).unwrap();
    assert_eq!((s.objects, s.rows, s.rejects), (2, 17, 1), "{s:?}");
    let r = t.query(&format!(
        "SELECT rows_loaded, rows_rejected, sha256 FROM {{s}}.batchlayer_loads WHERE key = '{}'",
        orphan.key
    ));
    assert_eq!(
        (
            r[0].get::<_, i64>(0),
            r[0].get::<_, i64>(1),
            r[0].get::<_, String>(2)
        ),
        (7, 1, String::new()),
        "measured, not taken from a manifest"
    );
    assert_eq!(t.count("batch_raw"), 17);
    assert_eq!(t.count("batchlayer_rejects"), 1);
    // Nothing is left to load: the next runs do nothing, and are not stuck.
    assert_eq!(t.copy(Some(1), true).unwrap().objects, 0);
    assert_eq!(t.copy(None, false).unwrap().objects, 0);
    assert_eq!(t.count("batch_raw"), 17);
}

fn a_mixed_compression_archive_loads_with_one_copy_per_compression(serverless: bool) {
    let Some((_w, t)) = target("rsmixed", serverless) else {
        return;
    };
    let e = vec![
        t.put(0, 0, &tweets(0..10), Compression::Gzip, None),
        t.put(0, 10, &tweets(10..15), Compression::Zstd, None),
        t.put(0, 15, &tweets(15..18), Compression::None, None),
        t.put(1, 0, &tweets(18..25), Compression::Gzip, None),
    ];
    t.manifest(e);
    let s = t.copy(None, false).unwrap();
    assert_eq!((s.objects, s.rows), (4, 25), "{s:?}");
    assert_eq!(t.count("batch_raw"), 25);
    // One COPY manifest per compression, each listing only its own objects.
    let store = t.store();
    let manifests = store.list(layout::COPY_MANIFESTS).unwrap();
    assert_eq!(manifests.len(), 3, "{manifests:?}");
    for m in manifests {
        let mut body = Vec::new();
        store.get_into(&m.key, &mut body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let urls: Vec<&str> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap())
            .collect();
        let mut kinds: Vec<Option<Compression>> =
            urls.iter().map(|u| Compression::from_key(u)).collect();
        kinds.dedup();
        assert_eq!(kinds.len(), 1, "{urls:?}");
    }
}

fn a_key_with_backslash_quote_is_loaded_safely(serverless: bool) {
    let Some((w, t)) = target("rskey", serverless) else {
        return;
    };
    let folder = format!("{}/x\\'); DROP TABLE {}.batch_raw; --", t.topic, w.schema);
    let e = t.put(0, 0, &tweets(0..4), Compression::Gzip, Some(&folder));
    assert!(e.key.contains("\\'"));
    t.manifest(vec![e.clone()]);
    let s = t.copy(None, false).unwrap();
    assert_eq!((s.objects, s.rows), (1, 4));
    let r = t.query("SELECT key FROM {s}.batchlayer_loads");
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].get::<_, String>(0),
        e.key,
        "the key is stored as it is"
    );
    assert_eq!(t.count("batch_raw"), 4, "the raw table is intact");
    // The next run finds it loaded (the ledger lookups quote it the Redshift way too).
    assert_eq!(t.copy(None, false).unwrap().objects, 0);
    assert_eq!(t.copy(None, true).unwrap().objects, 0);
}

fn maxerror_applies_per_object_and_rejects_are_recorded(serverless: bool) {
    let Some((_w, t)) = target("rsmaxerr", serverless) else {
        return;
    };
    let with_bad = |r: std::ops::Range<u64>, bad: usize| {
        let mut v = tweets(r);
        v.extend(std::iter::repeat_n(BAD.to_vec(), bad));
        v
    };
    // Two objects with one bad row each, one COPY: --max-errors 1 allows both.
    let a = t.put(0, 0, &with_bad(0..3, 1), Compression::Gzip, None);
    let b = t.put(1, 0, &with_bad(3..6, 1), Compression::Gzip, None);
    // Redshift's MAXERROR counts errors over the whole COPY: MAXERROR 2 fails on these two.
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    t.open().ensure_tables(&Layout::tweets()).unwrap();
    let jobs = [t.job(&a), t.job(&b)];
    let refs: Vec<&LoadJob> = jobs.iter().collect();
    let body = batchlayer::warehouse::redshift::copy_manifest(&t.spec.archive_url, &refs);
    t.store()
        .put_bytes_if_absent("_copy_manifests/by-hand.json", body.as_bytes())
        .unwrap();
    let err = s
        .execute(&format!(
            "COPY {}.batch_raw FROM '{}/_copy_manifests/by-hand.json' ACCESS_KEY_ID '{}' SECRET_ACCESS_KEY '{}' MANIFEST DELIMITER ';' ESCAPE GZIP NULL AS 'None' MAXERROR 2",
            t.names.schema, t.spec.archive_url, s3_access(), s3_secret()
        ))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains(t.cluster.error_view()),
        "{err:#}"
    );
    assert_eq!(t.count("batch_raw"), 0);

    t.manifest(vec![a.clone(), b.clone()]);
    let sum = t.copy(Some(1), false).unwrap();
    assert_eq!((sum.objects, sum.rows, sum.rejects), (2, 6, 2), "{sum:?}");
    let r = t.query("SELECT key, line, reason FROM {s}.batchlayer_rejects ORDER BY key");
    let got: Vec<(String, i64)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(a.key.clone(), 4), (b.key.clone(), 4)]);
    let reason: String = r[0].get(2);
    assert!(reason.contains("followers_count"), "{reason}");

    // varchar(256) counts bytes on Redshift: 200 two-byte characters are 400 bytes. The
    // PostgreSQL path's check (characters) accepts the record; the stand-in rejects it.
    let long = format!("1;2024-01-01 00:00:00;5;{};1;2;", "é".repeat(200)).into_bytes();
    assert!(Layout::tweets()
        .to_pg_copy_row(&long, &mut Vec::new())
        .is_ok());
    let mut recs = tweets(9..12);
    recs.push(long);
    let d = t.put(3, 0, &recs, Compression::Zstd, None);
    t.manifest(vec![d.clone()]);
    let err = format!("{:#}", t.copy(None, false).unwrap_err());
    assert!(
        err.contains(&d.key) && err.contains("String length exceeds DDL length"),
        "strict: the error names the object and Redshift's reason: {err}"
    );
    assert_eq!(t.count("batch_raw"), 6);
    let sum = t.copy(Some(1), false).unwrap();
    assert_eq!((sum.objects, sum.rows, sum.rejects), (1, 3, 1), "{sum:?}");

    // An object with two bad rows under --max-errors 1 fails, naming it; nothing of it loads.
    let c = t.put(2, 0, &with_bad(6..9, 2), Compression::Gzip, None);
    t.manifest(vec![c.clone()]);
    let err = format!("{:#}", t.copy(Some(1), false).unwrap_err());
    assert!(
        err.contains(&c.key) && err.contains("followers_count"),
        "{err}"
    );
    assert_eq!(
        (t.count("batch_raw"), t.count("batchlayer_rejects")),
        (9, 3)
    );
    let r = t.query(&format!(
        "SELECT count(*) FROM {{s}}.batchlayer_loads WHERE key = '{}'",
        c.key
    ));
    assert_eq!(r[0].get::<_, i64>(0), 0);
}

fn two_aggregates_at_once_are_serialised(serverless: bool) {
    let Some((_w, t)) = target("rsagg", serverless) else {
        return;
    };
    t.manifest(vec![t.put(0, 0, &tweets(0..50), Compression::Gzip, None)]);
    assert_eq!(t.copy(None, false).unwrap().rows, 50);
    fn run(t: &Target, wait: bool) -> anyhow::Result<aggregate::AggregateSummary> {
        let opts = AggregateOptions {
            wait,
            view: "batch_layer".into(),
            view_sql: batchlayer::warehouse::BATCH_VIEW.into(),
            min_rows: 1,
            keep_versions: 1,
            ..Default::default()
        };
        let mut wh = t.open();
        aggregate::run(wh.as_mut(), &t.names, &opts, &Output::silent())
    }
    // Another aggregate holds the lock: --no-wait is busy (exit 3), a waiting one waits.
    let mut holder = t.open();
    assert!(holder.lock("aggregate:batch_layer", false).unwrap());
    let err = run(&t, false).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<batchlayer::error::Error>(),
            Some(batchlayer::error::Error::Busy(_))
        ),
        "{err:#}"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let t2 = t.clone();
    let waiter = std::thread::spawn(move || {
        let r = run(&t2, true).map(|s| s.rows);
        tx.send(()).unwrap();
        r.map_err(|e| format!("{e:#}"))
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(3)).is_err(),
        "the waiting aggregate ran while another held the lock"
    );
    drop(holder);
    let groups: i64 =
        t.query("SELECT count(*) FROM (SELECT DISTINCT location FROM {s}.batch_raw) q")[0].get(0);
    assert_eq!(waiter.join().unwrap().unwrap(), groups);
    // Two started at once: both complete, one after the other; the view is whole.
    let barrier = Arc::new(Barrier::new(2));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (t, b) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                run(&t, true).map(|s| s.rows).map_err(|e| format!("{e:#}"))
            })
        })
        .collect();
    for h in runs {
        assert_eq!(h.join().unwrap().unwrap(), groups);
    }
    let tables: Vec<String> = t
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = '{s}' AND table_name LIKE 'batch_layer%' ORDER BY 1")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, vec!["batch_layer", "batch_layer__prev"]);
}

/// COPY with temporary keys (SESSION_TOKEN) and with the cluster's default role loads; each
/// COPY is in sys_load_history. On Serverless, a dialect told it is provisioned fails on the
/// STL views: the flavour matters.
fn temporary_keys_and_the_default_role_load(serverless: bool) {
    let Some((_w, t)) = target("rstmpkeys", serverless) else {
        return;
    };
    let mut tmp = t.clone();
    tmp.spec.auth = S3Auth::Keys {
        access_key_id: s3_access(),
        secret_access_key: Secret::new(s3_secret()),
        session_token: Some(Secret::new("temporary-session-token")),
    };
    tmp.manifest(vec![t.put(0, 0, &tweets(0..5), Compression::Gzip, None)]);
    assert_eq!(tmp.copy(None, false).unwrap().rows, 5);
    let mut role = t.clone();
    role.spec.auth = S3Auth::IamRole("default".into());
    role.manifest(vec![t.put(1, 0, &tweets(5..8), Compression::Gzip, None)]);
    assert_eq!(role.copy(None, false).unwrap().rows, 3);
    assert_eq!(t.count("batch_raw"), 8);
    let history: Vec<(String, i64)> = pg()
        .query(
            &format!(
                "SELECT status, loaded_rows FROM {}.sys_load_history ORDER BY query_id",
                t.cluster.system_schema
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        history,
        vec![("completed".to_string(), 5), ("completed".to_string(), 3)]
    );

    // A row only Redshift refuses (the loader's own check, which the PostgreSQL path shares,
    // counts characters; varchar counts bytes), and a dialect set to the other flavour.
    let mut recs = tweets(8..10);
    recs.push(OVER_256_BYTES.as_bytes().to_vec());
    t.manifest(vec![t.put(2, 0, &recs, Compression::Gzip, None)]);
    let wrong = if serverless {
        Flavour::Provisioned
    } else {
        Flavour::Serverless
    };
    let mut wh = t.redshift(Some(wrong));
    let opts = CopyOptions {
        wait: true,
        max_errors: Some(1),
        key_template: "{topic}/{YYYY}/{MM}/{DD}/{HH}".into(),
        ..Default::default()
    };
    let r = copy::run(
        t.store().as_ref(),
        &mut wh,
        &Layout::tweets(),
        &opts,
        &Output::silent(),
    );
    if serverless {
        let err = format!("{:#}", r.unwrap_err());
        assert!(err.contains("stl_load_errors"), "{err}");
        assert_eq!(t.count("batch_raw"), 8);
    } else {
        // SYS views exist on provisioned clusters too, but their query_id is not the STL query
        // id pg_last_copy_id() gives: the errors are not found and the counts do not add up.
        let err = format!("{:#}", r.unwrap_err());
        assert!(
            err.contains("do not hold what their manifests say"),
            "{err}"
        );
    }
    // The run lock is held until the warehouse is dropped.
    drop(wh);
    let sum = t.copy(Some(1), false).unwrap();
    assert_eq!((sum.rows, sum.rejects), (2, 1), "{sum:?}");
}

/// pg_last_copy_id() does not move when a COPY fails before loading (here: a manifest naming
/// an object S3 does not have), so a load failing so quotes no error rows: the view's rows
/// for the id it still names are an earlier COPY's.
/// https://docs.aws.amazon.com/redshift/latest/dg/PG_LAST_COPY_ID.html
fn a_copy_failing_before_loading_quotes_no_earlier_copys_errors(serverless: bool) {
    let Some((_w, t)) = target("rslastcopy", serverless) else {
        return;
    };
    let mut wh = t.redshift(None);
    wh.ensure_tables(&Layout::tweets()).unwrap();
    // The stand-in's rule: a COPY of a missing manifest leaves pg_last_copy_id() at -1.
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    let last = "SELECT CAST(pg_last_copy_id() AS BIGINT)";
    assert_eq!(s.query_i64(last).unwrap(), Some(-1));
    let err = s
        .execute(&format!(
            "COPY {}.batch_raw FROM '{}/_copy_manifests/none.json' ACCESS_KEY_ID '{}' SECRET_ACCESS_KEY '{}' MANIFEST DELIMITER ';' ESCAPE NULL AS 'None'",
            t.names.schema, t.spec.archive_url, s3_access(), s3_secret()
        ))
        .unwrap_err();
    assert!(format!("{err:#}").contains("none.json"), "{err:#}");
    let _ = s.execute("ROLLBACK");
    assert_eq!(
        s.query_i64(last).unwrap(),
        Some(-1),
        "moved on a pre-load failure"
    );

    // A strict load with a bad row fails, quoting its own error.
    // (A record the loader's own check passes and COPY refuses: 400 bytes in a varchar(256);
    // records the check refuses never reach COPY.)
    let mut recs = tweets(0..3);
    recs.push(OVER_256_BYTES.as_bytes().to_vec());
    let bad = t.put(0, 0, &recs, Compression::Gzip, None);
    let opts = LoadOptions::default();
    let err = format!(
        "{:#}",
        wh.load(
            &[t.job(&bad)],
            t.store().as_ref(),
            &batchlayer::records::Codec::new(Layout::tweets()),
            &opts,
            &mut |_| {}
        )
        .unwrap_err()
    );
    assert!(err.contains("location"), "{err}");
    // In the same session, a COPY whose manifest S3 does not have fails before loading: none
    // of the earlier COPY's errors are quoted. (The loader reads the object and writes the
    // COPY manifest through the store it is given, here a local directory; COPY reads S3.)
    let elsewhere = tempfile::tempdir().unwrap();
    let local = batchlayer::archive::local::LocalStore::new(elsewhere.path().to_path_buf());
    let entry = t.put(1, 0, &tweets(3..5), Compression::None, None);
    let mut body = Vec::new();
    t.store().get_into(&entry.key, &mut body).unwrap();
    local.put_bytes_if_absent(&entry.key, &body).unwrap();
    let missing = t.job(&entry);
    let err = format!(
        "{:#}",
        wh.load(
            &[missing],
            &local,
            &batchlayer::records::Codec::new(Layout::tweets()),
            &opts,
            &mut |_| {}
        )
        .unwrap_err()
    );
    assert!(
        !err.contains("location") && err.contains("pg_last_copy_id() did not move"),
        "{err}"
    );
    assert_eq!(t.count("batch_raw"), 0);
}

/// Redshift cancels a transaction it cannot serialise with error 1023; the load is tried
/// again (at most SERIALIZABLE_RETRIES times), and loads each object once.
/// https://docs.aws.amazon.com/redshift/latest/dg/c_serial_isolation-serializable-isolation-troubleshooting.html
fn a_serializable_isolation_violation_is_retried(serverless: bool) {
    use batchlayer::warehouse::redshift::SERIALIZABLE_RETRIES;
    use std::sync::atomic::Ordering;
    let Some((_w, t)) = target("rs1023", serverless) else {
        return;
    };
    t.manifest(vec![t.put(0, 0, &tweets(0..5), Compression::Gzip, None)]);
    t.cluster.serial_violations.store(2, Ordering::SeqCst);
    let sum = t.copy(None, false).unwrap();
    assert_eq!((sum.objects, sum.rows), (1, 5), "{sum:?}");
    assert_eq!(t.cluster.serial_violations.load(Ordering::SeqCst), 0);
    assert_eq!(t.count("batch_raw"), 5);
    assert_eq!(t.count("batchlayer_loads"), 1);

    // More violations than retries: the load fails with Redshift's error; nothing loaded.
    t.manifest(vec![t.put(1, 0, &tweets(5..8), Compression::Gzip, None)]);
    t.cluster
        .serial_violations
        .store(SERIALIZABLE_RETRIES + 2, Ordering::SeqCst);
    let err = format!("{:#}", t.copy(None, false).unwrap_err());
    assert!(err.contains("1023"), "{err}");
    assert_eq!(t.cluster.serial_violations.load(Ordering::SeqCst), 1);
    assert_eq!(t.count("batch_raw"), 5);
    t.cluster.serial_violations.store(0, Ordering::SeqCst);
    assert_eq!(t.copy(None, false).unwrap().rows, 3);
}

/// `try_lock` does not wait for a LOCK: another session holding (or waiting for) the lock
/// table's LOCK, as svv_transactions shows it, makes it busy at once, well before the
/// statement_timeout kept as a second guard; once the holder is gone it is taken.
fn a_busy_run_lock_is_refused_at_once(serverless: bool) {
    use batchlayer::warehouse::redshift::TRY_LOCK_MS;
    let Some((_w, t)) = target("rstrylock", serverless) else {
        return;
    };
    let mut holder = t.open();
    assert!(holder.lock("copy", false).unwrap());
    let mut other = t.open();
    let start = std::time::Instant::now();
    assert!(!other.lock("copy", false).unwrap(), "held elsewhere: busy");
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_millis(TRY_LOCK_MS / 2),
        "busy after {took:?}: it waited for the LOCK"
    );
    assert!(
        other.lock("aggregate:batch_layer", false).unwrap(),
        "another name is free"
    );
    drop(holder);
    assert!(
        other.lock("copy", false).unwrap(),
        "free once the holder is gone"
    );
}

/// A load's transaction LOCKs the ledger's write-lock table, not the ledger: while one holds it
/// (with a ledger row written, uncommitted), the ledger is read at once (status, audit) and
/// another load waits until it ends.
fn a_load_blocks_other_ledger_writers_but_not_its_readers(serverless: bool) {
    use batchlayer::warehouse::redshift::ledger_lock_table;
    let Some((_w, t)) = target("rsledgerlock", serverless) else {
        return;
    };
    t.manifest(vec![t.put(0, 0, &tweets(0..4), Compression::Gzip, None)]);
    assert_eq!(t.copy(None, false).unwrap().rows, 4);
    // A batch in flight: its transaction holds the write lock and has written the ledger.
    let mut batch = t.cluster.session(t.names.clone()).unwrap();
    batch.execute("BEGIN").unwrap();
    batch
        .execute(&format!(
            "LOCK {}",
            t.names.qualified(&ledger_lock_table(&t.names))
        ))
        .unwrap();
    let in_flight = t.job(&t.put(2, 0, &tweets(9..10), Compression::Gzip, None));
    batch
        .execute(&batchlayer::warehouse::Ledger::insert_sql(
            &t.names,
            &in_flight,
            1,
            0,
            0,
            &batchlayer::warehouse::redshift::literal,
        ))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = t.clone();
    std::thread::spawn(move || {
        let mut wh = reader.open();
        let rows = batchlayer::warehouse::Ledger::new(wh.as_mut())
            .rows()
            .map(|r| r.len())
            .map_err(|e| format!("{e:#}"));
        tx.send(rows).unwrap();
    });
    let read = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("reading the ledger waited for the batch in flight");
    assert_eq!(read.unwrap(), 1, "the committed rows only");
    // Another load waits for the write lock.
    t.manifest(vec![t.put(1, 0, &tweets(4..6), Compression::Gzip, None)]);
    let (tx, rx) = std::sync::mpsc::channel();
    let loader = t.clone();
    std::thread::spawn(move || {
        tx.send(
            loader
                .copy(None, false)
                .map(|s| s.rows)
                .map_err(|e| format!("{e:#}")),
        )
        .unwrap();
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(2)).is_err(),
        "a load wrote the ledger while another held its write lock"
    );
    batch.execute("ROLLBACK").unwrap();
    let rows = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(rows, 2);
    assert_eq!(t.count("batchlayer_loads"), 2);
}

/// A rejects table's row: key, line, raw, reason, raw_bytes, raw_sha256.
type RejectRow = (
    String,
    i64,
    Option<String>,
    String,
    Option<i64>,
    Option<String>,
);

/// One awkward archive, loaded by the PostgreSQL path and by the Redshift dialect on the
/// stand-in, gives the same rows and the same rejects (key, line, raw prefix, reason, length,
/// sha256). Without the loader's own record check before COPY, the stand-in (modelling COPY's
/// documented conversions) would load the empty INT and TIMESTAMP fields as NULL and the
/// fractional second, and keep a 1024-byte `raw_line` with multibyte characters as `.`.
fn one_awkward_archive_loads_the_same_into_postgresql_and_redshift(serverless: bool) {
    let Some((w, t)) = target("rsawkward", serverless) else {
        return;
    };
    let mut recs = tweets(0..2);
    for r in [
        "10;2024-01-01 00:00:00;;Oslo;1;2;".to_string(), // empty INT
        "11;;5;Oslo;1;2;".into(),                        // empty TIMESTAMP
        "12;2024-01-01 00:00:00;5;Os\0lo;1;2;".into(),   // NUL in location
        "13;2024-01-01 00:00:00.5;5;Oslo;1;2;".into(),   // fractional second
        "14;2024-01-01 00:00:00;5;Zürich – 東京 🚀;1;2;".into(), // multibyte, good
        format!("15;2024-01-01 00:00:00;5;{};1;2;", "ø".repeat(700)), // 1 KiB+ line
        "16;2024-01-01 00:00:00;5;Os\\;lo;1;2;".into(),  // a `;` after a backslash
        "17;2024-01-01 00:00:00;5;None;1;2;".into(),     // the NULL marker
        "18;2024-01-01 00:00:00;5;a\nb\\c;1;2;".into(),  // escaped newline and backslash, good
    ] {
        recs.push(r.into_bytes());
    }
    recs.push(BAD.to_vec());
    let e = t.put(0, 0, &recs, Compression::Gzip, None);
    t.manifest(vec![e.clone()]);
    let rs = t.copy(Some(100), false).unwrap();

    let mut s = w.settings();
    let pg_schema = format!("{}_pg", s.warehouse.schema);
    s.warehouse.schema = pg_schema.clone();
    let mut pgw = batchlayer::warehouse::connect(&s.warehouse, &s.archive).unwrap();
    let opts = CopyOptions {
        wait: true,
        max_errors: Some(100),
        key_template: "{topic}/{YYYY}/{MM}/{DD}/{HH}".into(),
        ..Default::default()
    };
    let pgs = copy::run(
        t.store().as_ref(),
        pgw.as_mut(),
        &Layout::tweets(),
        &opts,
        &Output::silent(),
    )
    .unwrap();
    drop(pgw);
    assert_eq!(
        (rs.rows, rs.rejects),
        (pgs.rows, pgs.rejects),
        "{rs:?} {pgs:?}"
    );
    assert_eq!((rs.rows, rs.rejects), (5, 7), "{rs:?}");

    let rows = |schema: &str| -> Vec<Vec<Option<String>>> {
        pg().query(
            &format!(
                "SELECT id::text, created_at::text, followers_count::text, location, favorite_count::text, retweet_count::text FROM \"{schema}\".batch_raw ORDER BY id"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (0..6).map(|i| r.get(i)).collect())
        .collect()
    };
    let rejects = |schema: &str| -> Vec<RejectRow> {
        pg().query(
            &format!(
                "SELECT key, line, raw, reason, raw_bytes, raw_sha256 FROM \"{schema}\".batchlayer_rejects ORDER BY line"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
    };
    let (rs_rows, pg_rows) = (rows(&t.names.schema), rows(&pg_schema));
    let (rs_rej, pg_rej) = (rejects(&t.names.schema), rejects(&pg_schema));
    pg().batch_execute(&format!("DROP SCHEMA IF EXISTS \"{pg_schema}\" CASCADE"))
        .unwrap();
    assert_eq!(rs_rows, pg_rows);
    let ids: Vec<String> = rs_rows.iter().map(|r| r[0].clone().unwrap()).collect();
    assert!(
        ids.starts_with(&["14".into(), "17".into(), "18".into()]),
        "{ids:?}"
    );
    assert_eq!(rs_rej, pg_rej);
    let lines: Vec<i64> = rs_rej.iter().map(|r| r.1).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 8, 9, 12]);
    assert!(rs_rej
        .iter()
        .all(|r| r.0 == e.key && r.4.is_some() && r.5.is_some()));
    let long = &rs_rej[4];
    assert_eq!(long.4, Some(1430), "the whole record's length");
    assert!(
        long.2.as_deref().unwrap().contains("øøø"),
        "raw kept as UTF-8"
    );
}

/// COPY's documented conversions, as the stand-in models them, on records the PostgreSQL path
/// refuses: an empty INT or TIMESTAMP field loads as NULL, `SS` takes a fraction; a NUL byte
/// fails the line; a line with a field after the last column fails unless COPY has a column
/// for it; `raw_line` shows multibyte characters as `.`. (The loader checks records before
/// COPY, so none of these reaches Redshift from batchlayer.)
fn the_stand_in_converts_as_copy_is_documented(serverless: bool) {
    let Some((_w, t)) = target("rsconv", serverless) else {
        return;
    };
    t.open().ensure_tables(&Layout::tweets()).unwrap();
    let recs: Vec<Vec<u8>> = [
        "1;;5;Oslo;1;2;".to_string(),
        "2;2024-01-01 00:00:00;;Oslo;1;2;".into(),
        "3;2024-01-01 00:00:00.25;5;Oslo;1;2;".into(),
        "4;2024-01-01 00:00:00;5;Os\0lo;1;2;".into(),
        format!("5;2024-01-01 00:00:00;5;{};1;2;", "é".repeat(200)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    for r in &recs[..4] {
        assert!(
            Layout::tweets().to_pg_copy_row(r, &mut Vec::new()).is_err(),
            "the PostgreSQL path refuses {r:?}"
        );
    }
    let e = t.put(0, 0, &recs, Compression::Gzip, None);
    let jobs = [t.job(&e)];
    let refs: Vec<&LoadJob> = jobs.iter().collect();
    let body = batchlayer::warehouse::redshift::copy_manifest(&t.spec.archive_url, &refs);
    t.store()
        .put_bytes_if_absent("_copy_manifests/conv.json", body.as_bytes())
        .unwrap();
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    let copy = |table: &str, cols: &str| {
        format!(
            "COPY {}.{table}{cols} FROM '{}/_copy_manifests/conv.json' ACCESS_KEY_ID '{}' SECRET_ACCESS_KEY '{}' MANIFEST DELIMITER ';' ESCAPE GZIP TIMEFORMAT 'YYYY-MM-DD HH24:MI:SS' NULL AS 'None' MAXERROR 100",
            t.names.schema,
            t.spec.archive_url,
            s3_access(),
            s3_secret()
        )
    };
    // No column for the field after the final delimiter: every line has one field too many.
    s.execute(&copy("batch_raw", "")).unwrap();
    assert_eq!(t.count("batch_raw"), 0);
    let errors = |s: &mut dyn SqlSession| -> Vec<Vec<Option<String>>> {
        let sql = if serverless {
            "SELECT CAST(line_number AS BIGINT), trim(error_message) FROM sys_load_error_detail WHERE query_id = pg_last_copy_id() ORDER BY 1"
        } else {
            "SELECT CAST(line_number AS BIGINT), trim(err_reason), trim(raw_line) FROM stl_load_errors WHERE query = pg_last_copy_id() ORDER BY 1"
        };
        s.query_text(sql).unwrap().1
    };
    let first = errors(&mut s);
    assert_eq!(first.len(), 5, "{first:?}");
    assert!(first
        .iter()
        .all(|r| r[1].as_deref() == Some("Extra column(s) found")));
    // With a column for it (as the loader's staging table has), the conversions apply.
    s.execute(&format!(
        "CREATE TABLE {0}.conv (LIKE {0}.batch_raw)",
        t.names.schema
    ))
    .unwrap();
    s.execute(&format!(
        "ALTER TABLE {}.conv ADD COLUMN \"batchlayer_trailing\" VARCHAR(1)",
        t.names.schema
    ))
    .unwrap();
    let cols = " (\"id\", \"created_at\", \"followers_count\", \"location\", \"favorite_count\", \"retweet_count\", \"batchlayer_trailing\")";
    s.execute(&copy("conv", cols)).unwrap();
    let rows: Vec<Vec<Option<String>>> = t
        .query("SELECT id::text, created_at::text, followers_count::text FROM {s}.conv ORDER BY id")
        .iter()
        .map(|r| (0..3).map(|i| r.get(i)).collect())
        .collect();
    let v = |a: &str, b: Option<&str>, c: Option<&str>| {
        vec![
            Some(a.to_string()),
            b.map(String::from),
            c.map(String::from),
        ]
    };
    assert_eq!(
        rows,
        vec![
            v("1", None, Some("5")),
            v("2", Some("2024-01-01 00:00:00"), None),
            v("3", Some("2024-01-01 00:00:00.25"), Some("5")),
        ]
    );
    let bad = errors(&mut s);
    let lines: Vec<Option<&str>> = bad.iter().map(|r| r[0].as_deref()).collect();
    assert_eq!(lines, vec![Some("4"), Some("5")], "{bad:?}");
    if !serverless {
        let raw = bad[1][2].as_deref().unwrap();
        assert!(
            raw.contains(&".".repeat(200)) && !raw.contains('é'),
            "{raw}"
        );
    }
}

/// The tweets as JSON records (issue 25's example), with two `json` columns: the whole
/// `/user` object (required) and `/entities` (nullable, mostly missing: NULL).
fn json_tweets_layout() -> Layout {
    let mut l = Layout::tweets_json();
    let mut user = Column::new("user_doc", ColumnType::Json);
    user.path = Some("/user".into());
    let mut entities = Column::new("entities", ColumnType::Json);
    entities.nullable = Some(true);
    l.columns.extend([user, entities]);
    l
}

/// What one archive loaded into both warehouses gave.
struct Compared {
    summary: CopySummary,
    /// Every column as text, ordered by the first column.
    rows: Vec<Vec<Option<String>>>,
    rejects: Vec<RejectRow>,
}

/// Archives `messages` as one object of `t`'s topic, loads it with `layout` by the Redshift
/// dialect on the stand-in and by the PostgreSQL path (into a schema of its own), and asserts
/// that both hold the same rows and the same rejects (key, line, raw prefix, reason, length,
/// sha256). Any record format: a JSON or Avro case is its layout and messages (an Avro test
/// stores its schemas in `t`'s archive first).
fn loads_the_same_into_both(
    w: &World,
    t: &Target,
    layout: &Layout,
    messages: &[Vec<u8>],
    max_errors: Option<u64>,
) -> Compared {
    let e = t.put(0, 0, messages, Compression::Gzip, None);
    t.manifest(vec![e]);
    let rs = t.copy_with(layout, max_errors, false).unwrap();

    let mut s = w.settings();
    let pg_schema = format!("{}_pg", s.warehouse.schema);
    s.warehouse.schema = pg_schema.clone();
    let mut pgw = batchlayer::warehouse::connect(&s.warehouse, &s.archive).unwrap();
    let opts = CopyOptions {
        wait: true,
        max_errors,
        key_template: "{topic}/{YYYY}/{MM}/{DD}/{HH}".into(),
        ..Default::default()
    };
    let pgs = copy::run(
        t.store().as_ref(),
        pgw.as_mut(),
        layout,
        &opts,
        &Output::silent(),
    )
    .unwrap();
    drop(pgw);
    assert_eq!(
        (rs.rows, rs.rejects),
        (pgs.rows, pgs.rejects),
        "{rs:?} {pgs:?}"
    );
    let cols: Vec<String> = layout
        .columns
        .iter()
        .map(|c| format!("\"{}\"::text", c.name))
        .collect();
    let rows = |schema: &str| -> Vec<Vec<Option<String>>> {
        pg().query(
            &format!(
                "SELECT {} FROM \"{schema}\".batch_raw ORDER BY 1",
                cols.join(", ")
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (0..cols.len()).map(|i| r.get(i)).collect())
        .collect()
    };
    let rejects = |schema: &str| -> Vec<RejectRow> {
        pg().query(
            &format!(
                "SELECT key, line, raw, reason, raw_bytes, raw_sha256 FROM \"{schema}\".batchlayer_rejects ORDER BY line"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
    };
    let (rs_rows, pg_rows) = (rows(&t.names.schema), rows(&pg_schema));
    let (rs_rej, pg_rej) = (rejects(&t.names.schema), rejects(&pg_schema));
    pg().batch_execute(&format!("DROP SCHEMA IF EXISTS \"{pg_schema}\" CASCADE"))
        .unwrap();
    same_rows(&rs_rows, &pg_rows, "rows");
    let text = |r: &[RejectRow]| -> Vec<Vec<Option<String>>> {
        r.iter()
            .map(|r| {
                vec![
                    Some(r.0.clone()),
                    Some(r.1.to_string()),
                    r.2.clone(),
                    Some(r.3.clone()),
                    r.4.map(|n| n.to_string()),
                    r.5.clone(),
                ]
            })
            .collect()
    };
    same_rows(&text(&rs_rej), &text(&pg_rej), "rejects");
    Compared {
        summary: rs,
        rows: rs_rows,
        rejects: rs_rej,
    }
}

/// Asserts the Redshift side's rows equal PostgreSQL's, naming the first difference with
/// long values cut (a 1 MB value would drown the message).
fn same_rows(rs: &[Vec<Option<String>>], pg: &[Vec<Option<String>>], what: &str) {
    let cut = |r: &[Option<String>]| -> Vec<Option<String>> {
        r.iter()
            .map(|c| c.as_ref().map(|v| v.chars().take(120).collect()))
            .collect()
    };
    for (i, (a, b)) in rs.iter().zip(pg).enumerate() {
        assert!(
            a == b,
            "{what} {i}: Redshift {:?}, PostgreSQL {:?}",
            cut(a),
            cut(b)
        );
    }
    assert_eq!(rs.len(), pg.len(), "{what}: Redshift's count, PostgreSQL's");
}

/// A JSON tweet with these parts changed (`user` and `rest` are JSON text).
fn json_tweet(id: &str, user: &str, rest: &str) -> Vec<u8> {
    format!(
        "{{\"id\":{id},\"created_at\":\"2024-01-01T00:00:01Z\",\"user\":{user},\"favorite_count\":1,\"retweet_count\":2{rest}}}"
    )
    .into_bytes()
}

/// Issue 25 on Redshift: one awkward JSON archive, loaded through staged JSON lines and a
/// JSONPaths file on the stand-in and by the PostgreSQL path, gives the same rows and the
/// same rejects, reasons included.
fn one_awkward_json_archive_loads_the_same_into_postgresql_and_redshift(serverless: bool) {
    let Some((w, t)) = target("rsjson", serverless) else {
        return;
    };
    let user = |loc: &str| format!("{{\"followers_count\":5,\"location\":{loc}}}");
    let mb = "x".repeat(1 << 20);
    let messages: Vec<Vec<u8>> = vec![
        json_tweet("1000000001", &user("\"Paris\""), ""),
        json_tweet("2", &user("\"Zürich – 東京 🚀\""), ""),
        // Tab, newline, backslash, quotes.
        json_tweet("3", &user(r#""a\tb\nc\\d \"q\" 'e'""#), ""),
        json_tweet("4", &user("null"), ""),
        // A missing required field.
        br#"{"id":5,"user":{"followers_count":5,"location":"Oslo"},"favorite_count":1,"retweet_count":2}"#.to_vec(),
        // A string where an int goes; a digit string where an int goes (loads).
        br#"{"id":6,"created_at":"2024-01-01T00:00:01Z","user":{"followers_count":5,"location":"Oslo"},"favorite_count":"many","retweet_count":2}"#.to_vec(),
        br#"{"id":7,"created_at":"2024-01-01T00:00:01Z","user":{"followers_count":5,"location":"Oslo"},"favorite_count":"11","retweet_count":2}"#.to_vec(),
        // A number too large for int.
        json_tweet("8", "{\"followers_count\":3000000000,\"location\":\"Oslo\"}", ""),
        // Not JSON; the empty message.
        b"{\"id\":9,".to_vec(),
        b"hello".to_vec(),
        Vec::new(),
        // A 1 MB string: in the json column it loads; as the location (max 256) it is refused.
        json_tweet(
            "12",
            &format!("{{\"followers_count\":5,\"location\":\"Oslo\",\"bio\":\"{mb}\"}}"),
            "",
        ),
        json_tweet("13", &user(&format!("\"{mb}\"")), ""),
        // Digit-string ids, one past JavaScript's 2^53.
        json_tweet("\"9007199254740993\"", &user("\"Lima\""), ""),
        // The nullable json column given.
        json_tweet("15", &user("\"Rome\""), ",\"entities\":{\"tags\":[\"a\",\"b\"]}"),
    ];
    let c = loads_the_same_into_both(&w, &t, &json_tweets_layout(), &messages, Some(100));
    assert_eq!(
        (c.summary.rows, c.summary.rejects),
        (8, 7),
        "{:?}",
        c.summary
    );
    let ids: Vec<&str> = c.rows.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "1000000001",
            "12",
            "15",
            "2",
            "3",
            "4",
            "7",
            "9007199254740993"
        ],
        "ordered as text"
    );
    let row = |id: &str| c.rows.iter().find(|r| r[0].as_deref() == Some(id)).unwrap();
    assert_eq!(row("2")[3].as_deref(), Some("Zürich – 東京 🚀"));
    assert_eq!(row("3")[3].as_deref(), Some("a\tb\nc\\d \"q\" 'e'"));
    assert_eq!(row("4")[3], None, "null location");
    assert_eq!(row("7")[4].as_deref(), Some("11"));
    assert_eq!(row("1000000001")[1].as_deref(), Some("2024-01-01 00:00:01"));
    assert!(row("12")[6].as_deref().unwrap().len() > 1 << 20);
    assert_eq!(row("4")[7], None, "a missing nullable json value is NULL");
    assert_eq!(row("15")[7].as_deref(), Some(r#"{"tags": ["a", "b"]}"#));
    let lines: Vec<i64> = c.rejects.iter().map(|r| r.1).collect();
    assert_eq!(lines, vec![5, 6, 8, 9, 10, 11, 13]);
    let reason = |line: i64| &c.rejects.iter().find(|r| r.1 == line).unwrap().3;
    assert!(reason(5).contains("created_at"), "{}", reason(5));
    assert!(reason(6).contains("/favorite_count"), "{}", reason(6));
    assert!(reason(8).contains("32-bit"), "{}", reason(8));
    assert!(reason(9).contains("not JSON"), "{}", reason(9));
    assert!(reason(13).contains("longer than 256"), "{}", reason(13));
}

/// Issue 25 on Redshift, Avro: one awkward archive of Confluent-framed tweets (two writer
/// versions, one of them adding a field with a default; bad framing, a truncated body, an id
/// the archive lacks, values that do not fit) gives the same rows and rejects in both.
fn one_awkward_avro_archive_loads_the_same_into_postgresql_and_redshift(serverless: bool) {
    use batchlayer::archive::catalog::store_schema;
    use batchlayer::archive::layout::StoredSchema;
    use batchlayer::records::avro::{confluent_frame, encode, Schema};
    use batchlayer::tweets::{tweet, Tweet, TWEET_AVRO_SCHEMA};
    let Some((w, t)) = target("rsavro", serverless) else {
        return;
    };
    // Version 2 adds `lang` with a default.
    let v2 = TWEET_AVRO_SCHEMA.replace(
        r#"{"name": "retweet_count", "type": "int"}"#,
        r#"{"name": "retweet_count", "type": "int"}, {"name": "lang", "type": "string", "default": "und"}"#,
    );
    assert_ne!(v2, TWEET_AVRO_SCHEMA);
    for (id, text) in [(1, TWEET_AVRO_SCHEMA), (2, v2.as_str())] {
        let s = StoredSchema {
            id,
            schema: text.to_string(),
            registry: "http://registry.test".into(),
            schema_type: None,
        };
        store_schema(t.store().as_ref(), &s).unwrap();
    }
    let mut layout = Layout::tweets_avro();
    let mut lang = Column::new("lang", ColumnType::Text);
    lang.max_len = Some(8);
    layout.columns.push(lang);
    let with = |loc: Option<&str>| Tweet {
        location: loc.map(String::from),
        ..tweet(3, 1, 4)
    };
    let v1 = |t: &Tweet| confluent_frame(1, &t.avro_body());
    let s2 = Schema::parse(&v2).unwrap();
    let as_v2 = |id: i64, lang: &str| {
        let body = encode(
            &s2,
            &serde_json::json!({"id": id, "created_at": 1_704_067_201_000i64, "user": {"followers_count": 5, "location": "Lima"}, "favorite_count": 1, "retweet_count": 2, "lang": lang}),
        )
        .unwrap();
        confluent_frame(2, &body)
    };
    let good = with(Some("Paris")).avro_body();
    let messages: Vec<Vec<u8>> = vec![
        v1(&Tweet {
            id: 1,
            ..with(Some("Zürich – 東京 🚀"))
        }),
        v1(&Tweet {
            id: 2,
            ..with(Some("a\tb\nc\\d \"q\" 'e'"))
        }),
        v1(&Tweet {
            id: 3,
            ..with(None)
        }),
        as_v2(4, "de"),
        // Bad: JSON, no header, truncated, an id the archive lacks, too long, too long for lang.
        br#"{"id":5}"#.to_vec(),
        vec![0, 0, 0],
        confluent_frame(1, &good[..good.len() - 3]),
        confluent_frame(7, &good),
        v1(&Tweet {
            id: 9,
            ..with(Some(&"x".repeat(300)))
        }),
        as_v2(10, "far-too-long"),
        Vec::new(),
        v1(&Tweet {
            id: 9_007_199_254_740_993,
            ..with(Some("Rome"))
        }),
    ];
    let c = loads_the_same_into_both(&w, &t, &layout, &messages, Some(100));
    assert_eq!(
        (c.summary.rows, c.summary.rejects),
        (5, 7),
        "{:?}",
        c.summary
    );
    let row = |id: &str| c.rows.iter().find(|r| r[0].as_deref() == Some(id)).unwrap();
    assert_eq!(row("1")[3].as_deref(), Some("Zürich – 東京 🚀"));
    assert_eq!(row("2")[3].as_deref(), Some("a\tb\nc\\d \"q\" 'e'"));
    assert_eq!(row("3")[3], None, "a null location");
    assert_eq!(
        row("1")[6].as_deref(),
        Some("und"),
        "version 1 takes version 2's default"
    );
    assert_eq!(row("4")[6].as_deref(), Some("de"));
    assert_eq!(row("4")[1].as_deref(), Some("2024-01-01 00:00:01"));
    let lines: Vec<i64> = c.rejects.iter().map(|r| r.1).collect();
    assert_eq!(lines, vec![5, 6, 7, 8, 9, 10, 11]);
    let reason = |line: i64| &c.rejects.iter().find(|r| r.1 == line).unwrap().3;
    assert!(reason(5).contains("magic byte"), "{}", reason(5));
    assert!(reason(7).contains("writer schema 1"), "{}", reason(7));
    assert!(reason(8).contains("schema id 7"), "{}", reason(8));
    assert!(
        reason(9).contains("Avro field user.location"),
        "{}",
        reason(9)
    );
    assert!(reason(10).contains("column lang"), "{}", reason(10));
}

/// A record the loader's check accepts and Redshift's COPY refuses (200 `é` in a
/// varchar(256): 200 characters, 400 bytes) is a reject named by its archived record number:
/// the staged JSON lines keep an empty line for each record the check refused. Strict, the
/// load fails.
fn a_json_record_redshift_refuses_is_rejected_under_its_archived_line(serverless: bool) {
    let Some((_w, t)) = target("rsjsonline", serverless) else {
        return;
    };
    let user = |loc: &str| format!("{{\"followers_count\":5,\"location\":\"{loc}\"}}");
    let messages = vec![
        json_tweet("1", &user("Oslo"), ""),
        b"not json".to_vec(),
        json_tweet("3", &user(&"é".repeat(200)), ""),
        json_tweet("4", &user("Bergen"), ""),
    ];
    let e = t.put(0, 0, &messages, Compression::Gzip, None);
    t.manifest(vec![e.clone()]);
    let layout = json_tweets_layout();
    let err = format!("{:#}", t.copy_with(&layout, None, false).unwrap_err());
    assert!(err.contains("record 2"), "strict: {err}");
    let s = t.copy_with(&layout, Some(2), false).unwrap();
    assert_eq!((s.rows, s.rejects), (2, 2), "{s:?}");
    let rejects = t.query("SELECT line, reason FROM {s}.batchlayer_rejects ORDER BY line");
    let got: Vec<(i64, String)> = rejects.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got[0].0, 2);
    assert!(got[0].1.starts_with("not JSON"), "{got:?}");
    assert_eq!(got[1].0, 3, "the archived record's number: {got:?}");
    assert!(
        got[1].1.starts_with("location: ") && got[1].1.contains("String length exceeds DDL length"),
        "{got:?}"
    );
    let ids: Vec<i64> = t
        .query("SELECT id FROM {s}.batch_raw ORDER BY id")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 4]);
}

/// A table `j` (bigint, varchar(64), SUPER, timestamp, integer) on the stand-in, and COPYs
/// into it from JSON written for each.
struct JsonCopies {
    t: Target,
    s: crate::common::standin::StandIn,
    n: usize,
}

impl JsonCopies {
    fn new(t: Target) -> JsonCopies {
        let mut s = t.cluster.session(t.names.clone()).unwrap();
        let sch = &t.names.schema;
        s.execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{sch}\""))
            .unwrap();
        s.execute(&format!(
            "CREATE TABLE \"{sch}\".\"j\" (\"n\" bigint, \"v\" varchar(64), \"sup\" super, \"ts\" timestamp, \"i\" integer)"
        ))
        .unwrap();
        JsonCopies { t, s, n: 0 }
    }

    /// Writes `data` and the JSONPaths file `paths` (or 'auto') as a new COPY's objects and
    /// runs it into the emptied table.
    fn copy(&mut self, data: &str, paths: &str) -> anyhow::Result<()> {
        self.n += 1;
        let (store, n, url) = (self.t.store(), self.n, self.t.spec.archive_url.clone());
        let put = |name: &str, body: &str| {
            let key = format!("j{n}/{name}");
            store.put_bytes(&key, body.as_bytes()).unwrap();
            format!("{url}/{key}")
        };
        let data = put("data.json", data);
        let manifest = put(
            "m.json",
            &format!("{{\"entries\":[{{\"url\":\"{data}\",\"mandatory\":true}}]}}"),
        );
        let paths = if paths == "auto" {
            "auto".into()
        } else {
            put("paths.json", paths)
        };
        let sch = &self.t.names.schema;
        self.s.execute(&format!("TRUNCATE \"{sch}\".\"j\""))?;
        self.s.execute(&format!(
            "COPY \"{sch}\".\"j\" (\"n\", \"v\", \"sup\", \"ts\", \"i\") FROM '{manifest}' ACCESS_KEY_ID '{}' SECRET_ACCESS_KEY '{}' MANIFEST FORMAT AS JSON '{paths}' TIMEFORMAT 'YYYY-MM-DD HH24:MI:SS' MAXERROR 10",
            s3_access(),
            s3_secret()
        ))
    }

    /// A COPY that must fail, its error holding `why`.
    fn fails(&mut self, data: &str, paths: &str, why: &str) {
        let err = format!("{:#}", self.copy(data, paths).unwrap_err());
        assert!(err.contains(why), "{paths}: {err}");
    }

    fn rows(&self) -> Vec<Vec<Option<String>>> {
        self.t
            .query("SELECT n::text, v, sup::text, ts::text, i::text FROM {s}.j ORDER BY n")
            .iter()
            .map(|r| (0..5).map(|i| r.get(i)).collect())
            .collect()
    }

    /// The last COPY's errors: line, column, code.
    fn errors(&mut self, serverless: bool) -> Vec<Vec<String>> {
        let sql = if serverless {
            "SELECT CAST(line_number AS BIGINT), trim(column_name), error_code FROM sys_load_error_detail WHERE query_id = pg_last_copy_id() ORDER BY 1"
        } else {
            "SELECT CAST(line_number AS BIGINT), trim(colname), err_code FROM stl_load_errors WHERE query = pg_last_copy_id() ORDER BY 1"
        };
        let (_, rows) = self.s.query_text(sql).unwrap();
        rows.iter()
            .map(|r| r.iter().map(|c| c.clone().unwrap_or_default()).collect())
            .collect()
    }
}

fn o(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// COPY from JSON as the stand-in models it, rule by rule (each with its page in
/// `tests/common/standin_json.rs`), on hand-written JSONPaths files and data: conversions,
/// notations, error lines, 'auto'.
fn the_stand_in_reads_json_as_copy_is_documented(serverless: bool) {
    let Some((_w, t)) = target("rsjsonrules", serverless) else {
        return;
    };
    let mut j = JsonCopies::new(t);
    let data = concat!(
        "{\"a\":{\"n\":\"7\"},\"o\":{\"y\":1},\"s\":null,\"t\":\"2024-01-01 00:00:01.250000\",\"i\":\"\"}\n",
        "\n",
        "{\"a\":{\"n\":8},\"o\":[1,\"two\"],\"t\":\"2024-01-02 00:00:00\",\"i\":5,\"more\":true}\n",
        "garbage\n",
        "{\"a\":{\"n\":\"nine\"},\"o\":\"x\",\"t\":\"2024-01-01 00:00:00\",\"i\":1}\n",
        "{\"a\":{\"n\":10},\"o\":\"x\",\"t\":\"2024-01-03\",\"i\":1}\n",
        "{\"a\":\n  {\"n\":11},\n \"o\":\"x\",\"s\":[1],\"t\":\"2024-01-01 00:00:00\",\"i\":3000000000}\n",
    );
    let want = vec![
        // A digit string into BIGINT converts; an object into VARCHAR is its JSON text; a JSON
        // null into SUPER is SUPER's null; an empty string into INTEGER is NULL.
        vec![
            o("7"),
            o(r#"{"y":1}"#),
            o("null"),
            o("2024-01-01 00:00:01.25"),
            None,
        ],
        // An array into VARCHAR; a key not found is NULL; keys no expression names are ignored.
        vec![
            o("8"),
            o(r#"[1,"two"]"#),
            None,
            o("2024-01-02 00:00:00"),
            o("5"),
        ],
    ];
    j.copy(
        data,
        r#"{"jsonpaths": ["$.a.n", "$.o", "$.s", "$.t", "$.i"]}"#,
    )
    .unwrap();
    assert_eq!(j.rows(), want, "dot notation");
    // Each error is on the last line of its object; the blank line is white space.
    let errs = j.errors(serverless);
    let want_errs: Vec<Vec<String>> = [
        ["4", "", "1216"],
        ["5", "n", "1207"],
        ["6", "ts", "1206"],
        ["9", "i", "1207"],
    ]
    .iter()
    .map(|r| r.iter().map(|c| c.to_string()).collect())
    .collect();
    assert_eq!(errs, want_errs);
    j.copy(
        data,
        r#"{"jsonpaths": ["$['a']['n']", "$['o']", "$['s']", "$['t']", "$['i']"]}"#,
    )
    .unwrap();
    assert_eq!(j.rows(), want, "bracket notation");
    // Another key name than "jsonpaths": COPY takes 'auto' (top-level keys named as columns).
    let auto = r#"{"n":1,"v":"x","sup":{"k":[true]},"ts":"2024-01-01 00:00:00","i":2,"other":0}"#;
    let want_auto = vec![vec![
        o("1"),
        o("x"),
        o(r#"{"k": [true]}"#),
        o("2024-01-01 00:00:00"),
        o("2"),
    ]];
    j.copy(auto, r#"{"paths": ["$.x"]}"#).unwrap();
    assert_eq!(j.rows(), want_auto);
    j.copy(auto, "auto").unwrap();
    assert_eq!(j.rows(), want_auto);
    // Arrays through indices.
    let indexed = r#"{"jsonpaths": ["$[0]", "$[1]", "$[2]", "$[3]", "$[4]"]}"#;
    j.copy(
        r#"[3, "three", {"a":1}, "2024-01-01 00:00:00", 3]"#,
        indexed,
    )
    .unwrap();
    assert_eq!(j.rows()[0][2], o(r#"{"a": 1}"#));
}

/// What makes the stand-in's COPY from JSON fail, as Redshift's does: an array index out of
/// range, a JSONPaths file of another shape or count, an object over 4 MB, and options COPY
/// refuses with JSON.
fn the_stand_in_refuses_json_copies_as_redshift_does(serverless: bool) {
    let Some((_w, t)) = target("rsjsonrefuse", serverless) else {
        return;
    };
    let mut j = JsonCopies::new(t);
    let indexed = r#"{"jsonpaths": ["$[0]", "$[1]", "$[2]", "$[3]", "$[4]"]}"#;
    j.fails(r#"[3, "three"]"#, indexed, "index out of range");
    let auto = r#"{"n":1,"v":"x","sup":{"k":[true]},"ts":"2024-01-01 00:00:00","i":2}"#;
    for (paths, why) in [
        (
            r#"{"jsonpaths": ["$.n", "$.v", "$.sup", "$.ts"]}"#,
            "4 expressions for 5 columns",
        ),
        (
            r#"{"jsonpaths": ["$.n", "$['v']", "$.sup", "$.ts", "$.i"]}"#,
            "mixes bracket notation and dot notation",
        ),
        (
            r#"["$.n", "$.v", "$.sup", "$.ts", "$.i"]"#,
            "single JSON object",
        ),
        (
            r#"{"jsonpaths": ["$.n", "", "$.sup", "$.ts", "$.i"]}"#,
            "empty string or not a string",
        ),
        (
            r#"{"jsonpaths": ["$.n", 2, "$.sup", "$.ts", "$.i"]}"#,
            "empty string or not a string",
        ),
        (
            r#"{"jsonpaths": ["$.n", "$.v[*]", "$.sup", "$.ts", "$.i"]}"#,
            "integer >= 0",
        ),
        (
            r#"{"jsonpaths": ["$.n", "$.v", "$.sup", "$.ts", "$.i"]} {"x": 1}"#,
            "not one well-formed JSON object",
        ),
    ] {
        j.fails(auto, paths, why);
    }
    // An object over 4 MB fails the COPY, whatever MAXERROR says.
    let big = format!(r#"{{"n":1,"v":"{}"}}"#, "x".repeat(4_000_001));
    j.fails(&big, "auto", "4 MB");
    for extra in ["DELIMITER ';'", "ESCAPE", "NULL AS 'None'"] {
        let sql = format!(
            "COPY \"{}\".\"j\" FROM 's3://b/m' IAM_ROLE default MANIFEST FORMAT AS JSON 'auto' {extra}",
            j.t.names.schema
        );
        let err = format!("{:#}", j.s.execute(&sql).unwrap_err());
        assert!(err.contains("not supported with JSON"), "{extra}: {err}");
    }
}

/// Runs `sql` on the stand-in, which must refuse it with a message holding `why`.
fn spectrum_refused(s: &mut StandIn, sql: &str, why: &str) {
    let err = format!("{:#}", s.execute(sql).unwrap_err());
    assert!(err.contains(why), "{sql}: {err}");
}

/// The partitions the stand-in recorded for `lake.{table}`: (values, location), by location.
fn spectrum_partitions(t: &Target, table: &str) -> Vec<(String, String)> {
    pg().query(
        &format!(
            "SELECT partition_values, location FROM {}.standin_spectrum_partitions \
             WHERE schemaname = 'lake' AND tablename = $1 ORDER BY location",
            t.cluster.system_schema
        ),
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Redshift Spectrum as the stand-in models it (standin_spectrum.rs, each rule with its
/// page): an external schema, a partitioned external table in it, its partitions; and what
/// Redshift refuses: an ALTER naming a table never created, a table in a schema that does not
/// exist or is not external, a second table or partition of the same name (a partition's repeat
/// is a no-op with IF NOT EXISTS), partition columns other than the table's, an unqualified
/// name, ADD PARTITION on a local table, either statement inside a transaction block.
fn the_stand_in_models_spectrum_as_documented(serverless: bool) {
    let Some((_w, t)) = target("rsspecsi", serverless) else {
        return;
    };
    let mut s = t.cluster.session(t.names.clone()).unwrap();
    let table = "CREATE EXTERNAL TABLE \"lake\".\"tl\" (\n  \"id\" bigint,\n  \"location\" varchar(256)\n)\nPARTITIONED BY (dt char(10), hour int)\nSTORED AS PARQUET\nLOCATION 's3://b/lake/t/'";
    let add = |dt: &str, hour: u32| {
        format!(
            "ALTER TABLE \"lake\".\"tl\" ADD IF NOT EXISTS PARTITION (dt='{dt}', hour='{hour}') LOCATION 's3://b/lake/t/dt={dt}/hour={hour:02}/'"
        )
    };
    // Nothing created yet: neither the table an ALTER names nor the schema.
    spectrum_refused(
        &mut s,
        &add("2026-11-27", 9).replace("\"tl\"", "\"never\""),
        "does not exist",
    );
    spectrum_refused(&mut s, table, "does not exist");
    let schema = "CREATE EXTERNAL SCHEMA lake FROM DATA CATALOG DATABASE 'lake' IAM_ROLE 'arn:aws:iam::123456789012:role/spectrum' CREATE EXTERNAL DATABASE IF NOT EXISTS";
    s.execute(schema).unwrap();
    spectrum_refused(&mut s, schema, "already exists");
    s.execute("CREATE EXTERNAL SCHEMA IF NOT EXISTS lake FROM DATA CATALOG DATABASE 'lake' IAM_ROLE default")
        .unwrap();
    spectrum_refused(
        &mut s,
        "CREATE EXTERNAL SCHEMA hive FROM HIVE METASTORE DATABASE 'h' URI 'h' IAM_ROLE default",
        "not modelled",
    );
    // A local schema is not an external one.
    pg().batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE {s}.local (id bigint)",
        s = t.names.schema
    ))
    .unwrap();
    spectrum_refused(
        &mut s,
        &table.replace("\"lake\".", &format!("\"{}\".", t.names.schema)),
        "not an external schema",
    );
    // Not inside a transaction block; outside one it runs, once.
    s.execute("BEGIN").unwrap();
    spectrum_refused(&mut s, table, "transaction block");
    s.execute("ROLLBACK").unwrap();
    s.execute(table).unwrap();
    spectrum_refused(&mut s, table, "already exists");
    spectrum_refused(
        &mut s,
        &table
            .replace("\"tl\"", "\"t2\"")
            .replace("hour int", "\"id\" int"),
        "more than once",
    );
    spectrum_refused(
        &mut s,
        &table
            .replace("\"tl\"", "\"t3\"")
            .replace("PARQUET", "TEXTFILE"),
        "not modelled",
    );
    // Partitions: a repeat is a no-op with IF NOT EXISTS, an error without.
    s.execute(&add("2026-11-27", 9)).unwrap();
    s.execute(&add("2026-11-27", 9)).unwrap();
    spectrum_refused(
        &mut s,
        &add("2026-11-27", 9).replace(" IF NOT EXISTS", ""),
        "already exists",
    );
    for (sql, why) in [
        (
            "ALTER TABLE \"lake\".\"tl\" ADD PARTITION (hour=10, dt='2026-11-27') LOCATION 's3://b/lake/t/x/'",
            "partition columns",
        ),
        (
            "ALTER TABLE \"lake\".\"tl\" ADD PARTITION (dt='2026-11-27') LOCATION 's3://b/lake/t/x/'",
            "partition columns",
        ),
        (
            "ALTER TABLE \"tl\" ADD PARTITION (dt='2026-11-27', hour=10) LOCATION 's3://b/lake/t/x/'",
            "qualified",
        ),
        (
            "ALTER TABLE \"lake\".\"tl\" ADD PARTITION (dt='2026-11-27', hour=10)",
            "does not understand",
        ),
        (
            "ALTER TABLE \"lake\".\"tl\" ADD PARTITION (dt='2026-11-27', hour=10) LOCATION '/tmp/x/'",
            "not an Amazon S3 path",
        ),
        (
            "ALTER TABLE \"lake\".\"tl\" DROP PARTITION (dt='2026-11-27', hour=9)",
            "not modelled",
        ),
    ] {
        spectrum_refused(&mut s, sql, why);
    }
    spectrum_refused(
        &mut s,
        &format!(
            "ALTER TABLE {}.local ADD PARTITION (dt='2026-11-27', hour=10) LOCATION 's3://b/lake/t/x/'",
            t.names.schema
        ),
        "not an external table",
    );
    s.execute("BEGIN").unwrap();
    spectrum_refused(&mut s, &add("2026-11-27", 10), "transaction block");
    s.execute("ROLLBACK").unwrap();
    // Two partitions in one statement, one after the other (PARTS' example).
    s.execute("ALTER TABLE lake.tl ADD PARTITION (dt='2026-11-27', hour=10) LOCATION 's3://b/lake/t/dt=2026-11-27/hour=10/' PARTITION (dt='2026-11-27', hour='11') LOCATION 's3://b/lake/t/dt=2026-11-27/hour=11/'")
        .unwrap();
    let part = |h: &str, folder: &str| {
        (
            format!(r#"["2026-11-27","{h}"]"#),
            format!("s3://b/lake/t/dt=2026-11-27/hour={folder}/"),
        )
    };
    assert_eq!(
        spectrum_partitions(&t, "tl"),
        vec![part("9", "09"), part("10", "10"), part("11", "11")]
    );
}

/// A lake hour id (`2026112709`) as publish names its partition (`dt=2026-11-27/hour=09`).
fn hour_folder(id: &str) -> String {
    format!(
        "dt={}-{}-{}/hour={}",
        &id[..4],
        &id[4..6],
        &id[6..8],
        &id[8..10]
    )
}

/// A list of strings of a JSON report, sorted.
fn sorted_strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no list {key}: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("{key}: {v}"))
                .to_string()
        })
        .collect();
    out.sort();
    out
}

/// `publish` with `lake.spectrum_schema` (issue 27), the real binary against the stand-in
/// through its wire-protocol server: the operator creates the external schema (the statement
/// `ddl --engine spectrum` prints as a comment, with a role) and the table (its statement);
/// tweets with Kafka timestamps from 3 hours ago over 2 hours are ingested, copied and
/// published. Each sealed hour is in `spectrum_partitions` once, the stand-in holds one
/// partition per hour written with the hour's folder as its LOCATION, and a second publish
/// adds none (nor do the ALTERs `ddl` prints for the sealed hours).
fn publish_adds_each_sealed_hour_to_spectrum_once(serverless: bool) {
    if !stack_up() {
        return;
    }
    let Some((mut w, t)) = target("rsspectrum", serverless) else {
        return;
    };
    w.env.insert(
        "BATCHLAYER_WAREHOUSE_URL".into(),
        t.cluster.serve(t.names.clone()),
    );
    // Objects of 100 records at most: two hours of messages start objects in each hour.
    w.extra_toml = "max_object_records = 100\n".into();
    // After [warehouse]'s url and schema.
    w.tail_toml = "kind = \"redshift\"\nregion = \"us-east-1\"\n\n[status]\nlateness = \"1m\"\n\n[lake]\nspectrum_schema = \"lake\"\ntable = \"tweets_lake\"\n".into();
    let mut operator = t.cluster.session(t.names.clone()).unwrap();
    let ddl = w.run_ok(&["ddl", "--engine", "spectrum"]);
    let placeholder = "arn:aws:iam::ACCOUNT:role/ROLE";
    let schema = ddl
        .lines()
        .filter_map(|l| l.strip_prefix("-- "))
        .find(|l| l.starts_with("CREATE EXTERNAL SCHEMA"))
        .unwrap_or_else(|| panic!("no CREATE EXTERNAL SCHEMA comment: {ddl}"));
    assert!(schema.contains(placeholder), "{schema}");
    operator
        .execute(
            schema
                .trim_end_matches(';')
                .replace(placeholder, "arn:aws:iam::123456789012:role/spectrum")
                .as_str(),
        )
        .unwrap();
    let statements = |ddl: &str| -> Vec<String> {
        let body: String = ddl
            .lines()
            .filter(|l| !l.starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        body.split(";\n")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let create = statements(&ddl);
    assert_eq!(
        create.len(),
        1,
        "the table alone, no hour sealed yet: {ddl}"
    );
    assert!(
        create[0].starts_with("CREATE EXTERNAL TABLE \"lake\".\"tweets_lake\""),
        "{ddl}"
    );
    operator.execute(&create[0]).unwrap();

    w.json(&[
        "produce-tweets",
        "--start-time",
        "3h",
        "--span",
        "7200",
        "--count",
        "2000",
        "--partitions",
        "2",
    ]);
    let ing = w.json(&["ingest"]);
    assert_eq!(ing["messages"].as_u64(), Some(2000), "{ing}");
    let cp = w.json(&["copy"]);
    assert_eq!(cp["rows"].as_u64(), Some(2000), "{cp}");
    assert_eq!(w.count("batch_raw"), 2000);

    let p1 = w.json(&["publish"]);
    let sealed = sorted_strings(&p1, "hours_sealed");
    // The first two of the (two or three) hours the timestamps span end an hour before now at
    // the latest: closed, whatever the minute.
    assert!(sealed.len() >= 2, "{p1}");
    let want: Vec<String> = sealed.iter().map(|h| hour_folder(h)).collect();
    assert_eq!(sorted_strings(&p1, "spectrum_partitions"), want, "{p1}");
    // Every hour the archive holds is sealed or waiting (not closed yet).
    let settings = w.settings();
    let archived: std::collections::BTreeSet<String> = w
        .data_objects()
        .iter()
        .filter_map(|k| layout::folder_time(&settings.archive.key_template, k))
        .map(|time| time.format("%Y%m%d%H").to_string())
        .collect();
    let published: std::collections::BTreeSet<String> = sealed
        .iter()
        .chain(&sorted_strings(&p1, "hours_waiting"))
        .cloned()
        .collect();
    assert_eq!(published, archived, "{p1}");
    // One partition per hour, its LOCATION the hour's folder, which holds the hour's files.
    let lake_url = p1["lake"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let lake = batchlayer::archive::open(&settings.lake.store).unwrap();
    let expected = |hours: &[String]| -> Vec<(String, String)> {
        hours
            .iter()
            .map(|h| {
                let day = format!("{}-{}-{}", &h[..4], &h[4..6], &h[6..8]);
                let hour: u32 = h[8..10].parse().unwrap();
                (
                    serde_json::to_string(&[day, hour.to_string()]).unwrap(),
                    format!("{lake_url}/{}/{}/", w.topic, hour_folder(h)),
                )
            })
            .collect()
    };
    assert_eq!(spectrum_partitions(&t, "tweets_lake"), expected(&sealed));
    for h in &sealed {
        let keys: Vec<String> = lake
            .list(&format!("{}/{}/", w.topic, hour_folder(h)))
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(
            keys.iter().any(|k| k.ends_with(".parquet")),
            "{h}: {keys:?}"
        );
        assert!(
            keys.iter().any(|k| k.ends_with("/_SUCCESS")),
            "{h}: {keys:?}"
        );
    }

    // A second run adds no partition for an hour it sealed before (an hour that closed in
    // between, the clock passing the hour, is that run's own).
    let p2 = w.json(&["publish"]);
    let again = sorted_strings(&p2, "spectrum_partitions");
    assert!(again.iter().all(|p| !want.contains(p)), "{p2}");
    let sealed2 = sorted_strings(&p2, "hours_sealed");
    assert_eq!(
        again,
        sealed2.iter().map(|h| hour_folder(h)).collect::<Vec<_>>(),
        "{p2}"
    );
    let all: Vec<String> = {
        let mut v: Vec<String> = sealed.iter().chain(&sealed2).cloned().collect();
        v.sort();
        v
    };
    assert_eq!(spectrum_partitions(&t, "tweets_lake"), expected(&all));
    // The ALTERs ddl now prints for the sealed hours (IF NOT EXISTS) are publish's: no-ops.
    let ddl = w.run_ok(&["ddl", "--engine", "spectrum"]);
    let alters: Vec<String> = statements(&ddl)
        .into_iter()
        .filter(|s| s.starts_with("ALTER TABLE"))
        .collect();
    assert_eq!(alters.len(), all.len(), "{ddl}");
    for a in &alters {
        operator.execute(a).unwrap();
    }
    assert_eq!(spectrum_partitions(&t, "tweets_lake"), expected(&all));
}
