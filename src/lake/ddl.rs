//! The lake's table definitions for the engines that read it (`batchlayer ddl`, and the
//! partitions `publish` adds in Spectrum): a topic's folder of Hive-style `dt=YYYY-MM-DD/hour=HH/` folders of Parquet files
//! ([`super::parquet`]'s schema), as Spark, Trino (Hive connector), Athena (with partition
//! projection: no partition is ever registered), DuckDB and Redshift Spectrum declare it. The
//! statements and the documentation each rests on are in docs/lake-design.md.

use super::parquet::{EPOCH, OFFSET, PARTITION, TIMESTAMP};
use crate::records::{ColumnType, Layout};
use anyhow::{bail, Result};

/// An engine that reads the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Spark,
    Trino,
    Athena,
    DuckDb,
    Spectrum,
}

impl Engine {
    pub fn parse(s: &str) -> Result<Engine> {
        Ok(match s {
            "spark" => Engine::Spark,
            "trino" => Engine::Trino,
            "athena" => Engine::Athena,
            "duckdb" => Engine::DuckDb,
            "spectrum" => Engine::Spectrum,
            other => {
                bail!("engine {other:?} (expected spark, trino, athena, duckdb or spectrum)")
            }
        })
    }
}

/// The table a topic's folder is.
#[derive(Debug, Clone)]
pub struct LakeTable<'a> {
    /// The table's name.
    pub name: &'a str,
    /// Trino's catalog.schema, Spectrum's external schema (Spark, Athena, DuckDB: unqualified).
    pub schema: &'a str,
    /// The topic's folder (`s3://bucket/lake/tweets/`, or a local path for DuckDB), ending
    /// with `/`.
    pub location: &'a str,
    pub layout: &'a Layout,
    /// Athena's partition projection starts at this day (`YYYY-MM-DD`).
    pub first_day: &'a str,
}

/// One column's type in an engine; `meta` columns are the lake's own.
fn type_of(engine: Engine, ty: ColumnType, max_len: Option<usize>) -> String {
    use ColumnType::*;
    let t = match (engine, ty) {
        (_, Bigint) => "bigint",
        (Engine::Spark | Engine::Athena | Engine::Spectrum, Int) => "int",
        (_, Int) => "integer",
        (Engine::Spark, Timestamp) => "timestamp_ntz",
        (Engine::Trino, Timestamp) => "timestamp(6)",
        (_, Timestamp) => "timestamp",
        (Engine::Spark | Engine::Athena, Text | Json) => "string",
        (Engine::Spectrum, Text) => return format!("varchar({})", max_len.unwrap_or(65535)),
        (Engine::Spectrum, Json) => "varchar(65535)",
        (_, Text | Json) => "varchar",
        (Engine::Spectrum, Double) => "double precision",
        (_, Double) => "double",
        (_, Boolean) => "boolean",
        (_, Date) => "date",
    };
    t.to_string()
}

/// The Kafka timestamp column's type (INT64 micros, adjusted to UTC).
fn kafka_timestamp(engine: Engine) -> &'static str {
    match engine {
        Engine::Trino => "timestamp(6)",
        Engine::DuckDb => "timestamptz",
        _ => "timestamp",
    }
}

fn quote(engine: Engine, name: &str) -> String {
    match engine {
        Engine::Spark | Engine::Athena => format!("`{}`", name.replace('`', "``")),
        _ => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The table's columns, the layout's then the lake's own, `name type` each.
fn columns(engine: Engine, layout: &Layout) -> Vec<String> {
    let mut v: Vec<String> = layout
        .columns
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                quote(engine, &c.name),
                type_of(engine, c.ty, c.max_len)
            )
        })
        .collect();
    for (name, ty) in [
        (PARTITION, type_of(engine, ColumnType::Int, None)),
        (OFFSET, type_of(engine, ColumnType::Bigint, None)),
        (EPOCH, type_of(engine, ColumnType::Int, None)),
        (TIMESTAMP, kafka_timestamp(engine).to_string()),
    ] {
        v.push(format!("{} {ty}", quote(engine, name)));
    }
    v
}

/// The statements that declare the table (and, where the engine needs it, register the
/// folders found).
pub fn statements(engine: Engine, t: &LakeTable<'_>) -> Vec<String> {
    let cols = columns(engine, t.layout);
    let loc = sql_string(t.location);
    let q = |n: &str| quote(engine, n);
    match engine {
        Engine::Spark => {
            let mut c = cols;
            c.push(format!("{} date", q("dt")));
            c.push(format!("{} int", q("hour")));
            vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n  {}\n)\nUSING PARQUET\nPARTITIONED BY ({}, {})\nLOCATION {loc}",
                    q(t.name),
                    c.join(",\n  "),
                    q("dt"),
                    q("hour")
                ),
                format!("MSCK REPAIR TABLE {}", q(t.name)),
            ]
        }
        Engine::Trino => {
            let mut c = cols;
            c.push(format!("{} varchar", q("dt")));
            c.push(format!("{} varchar", q("hour")));
            let (catalog, schema) = t.schema.split_once('.').unwrap_or(("hive", t.schema));
            vec![
                format!(
                    "CREATE TABLE {catalog}.{schema}.{} (\n  {}\n)\nWITH (external_location = {loc}, format = 'PARQUET', partitioned_by = ARRAY['dt', 'hour'])",
                    q(t.name),
                    c.join(",\n  ")
                ),
                format!(
                    "CALL {catalog}.system.sync_partition_metadata({}, {}, 'ADD')",
                    sql_string(schema),
                    sql_string(t.name)
                ),
            ]
        }
        Engine::Athena => {
            let template = format!("{}dt=${{dt}}/hour=${{hour}}/", t.location);
            let props = [
                ("projection.enabled", "true".to_string()),
                ("projection.dt.type", "date".into()),
                ("projection.dt.format", "yyyy-MM-dd".into()),
                ("projection.dt.range", format!("{},NOW", t.first_day)),
                ("projection.dt.interval", "1".into()),
                ("projection.dt.interval.unit", "DAYS".into()),
                ("projection.hour.type", "integer".into()),
                ("projection.hour.range", "0,23".into()),
                ("projection.hour.digits", "2".into()),
                ("storage.location.template", template),
            ];
            let props: Vec<String> = props
                .iter()
                .map(|(k, v)| format!("  {} = {}", sql_string(k), sql_string(v)))
                .collect();
            vec![format!(
                "CREATE EXTERNAL TABLE IF NOT EXISTS {} (\n  {}\n)\nPARTITIONED BY ({} string, {} int)\nSTORED AS PARQUET\nLOCATION {loc}\nTBLPROPERTIES (\n{}\n)",
                q(t.name),
                cols.join(",\n  "),
                q("dt"),
                q("hour"),
                props.join(",\n")
            )]
        }
        Engine::DuckDb => vec![format!(
            "CREATE OR REPLACE VIEW {} AS\nSELECT * REPLACE (CAST(dt AS DATE) AS dt, CAST(hour AS INTEGER) AS hour)\nFROM read_parquet({}, hive_partitioning = true)",
            q(t.name),
            sql_string(&format!("{}dt=*/hour=*/*.parquet", t.location))
        )],
        Engine::Spectrum => vec![format!(
            "CREATE EXTERNAL TABLE {}.{} (\n  {}\n)\nPARTITIONED BY (dt char(10), hour int)\nSTORED AS PARQUET\nLOCATION {loc}",
            q(t.schema),
            q(t.name),
            cols.join(",\n  ")
        )],
    }
}

/// Spectrum's statement that adds one hour's folder (publish runs it for each new hour). Both
/// values quoted, the int's too, as the AWS guide writes them ("Partitioning Redshift
/// Spectrum external tables", c-spectrum-external-tables.html: `event integer` added as
/// `partition(salesmonth='2008-01', event='101')`).
pub fn spectrum_partition(t: &LakeTable<'_>, day: &str, hour: u32) -> String {
    format!(
        "ALTER TABLE {}.{} ADD IF NOT EXISTS PARTITION (dt={}, hour='{hour}') LOCATION {}",
        quote(Engine::Spectrum, t.schema),
        quote(Engine::Spectrum, t.name),
        sql_string(day),
        sql_string(&format!("{}dt={day}/hour={hour:02}/", t.location))
    )
}

#[cfg(test)]
mod tests {
    use super::super::parquet::{Cell, ParquetOptions, ParquetSink, RowValues};
    use super::*;

    fn table<'a>(layout: &'a Layout, location: &'a str) -> LakeTable<'a> {
        LakeTable {
            name: "tweets",
            schema: "lake",
            location,
            layout,
            first_day: "2026-11-01",
        }
    }

    #[test]
    fn each_engine_types_the_columns_and_partitions_its_way() {
        let l = Layout::tweets();
        let t = table(&l, "s3://b/lake/tweets/");
        let spark = statements(Engine::Spark, &t).join(";\n");
        assert!(spark.contains("`created_at` timestamp_ntz"), "{spark}");
        assert!(spark.contains("`_timestamp` timestamp,"), "{spark}");
        assert!(spark.contains("PARTITIONED BY (`dt`, `hour`)"), "{spark}");
        let athena = statements(Engine::Athena, &t).join("");
        assert!(
            athena.contains(
                "'storage.location.template' = 's3://b/lake/tweets/dt=${dt}/hour=${hour}/'"
            ),
            "{athena}"
        );
        let spectrum = statements(Engine::Spectrum, &t).join("");
        assert!(spectrum.contains("\"location\" varchar(256)"), "{spectrum}");
        assert_eq!(
            spectrum_partition(&t, "2026-11-27", 9),
            "ALTER TABLE \"lake\".\"tweets\" ADD IF NOT EXISTS PARTITION (dt='2026-11-27', hour='9') LOCATION 's3://b/lake/tweets/dt=2026-11-27/hour=09/'"
        );
        assert!(Engine::parse("hive").is_err());
    }

    /// DuckDB runs its own statement over a lake of two hours written by our writer, and
    /// sqlglot (a parser we did not write) parses the Spark, Trino, Athena and Spectrum ones
    /// in their dialects (tests/fixtures/parquet/ddl_judge.py).
    #[test]
    fn duckdb_runs_its_ddl_and_sqlglot_parses_the_others() {
        let Some(python) = crate::util::judge_python("DuckDB and sqlglot") else {
            return;
        };
        let l = Layout::tweets();
        let dir = tempfile::tempdir().unwrap();
        let topic = dir.path().join("tweets");
        for (hour, rows) in [("09", 3), ("10", 2)] {
            let folder = topic.join(format!("dt=2026-11-27/hour={hour}"));
            std::fs::create_dir_all(&folder).unwrap();
            let f = std::fs::File::create(folder.join("part-0.parquet")).unwrap();
            let mut sink = ParquetSink::new(f, &l, &ParquetOptions::default()).unwrap();
            for i in 0..rows {
                let mut cells = vec![Cell::Null; l.columns.len()];
                cells[0] = Cell::I64(i);
                sink.push(&RowValues {
                    cells,
                    partition: 0,
                    offset: i,
                    epoch: 0,
                    timestamp_micros: None,
                })
                .unwrap();
            }
            sink.finish().unwrap();
        }
        let location = format!("{}/", topic.display());
        let t = table(&l, &location);
        let mut input = serde_json::Map::new();
        for (name, engine) in [
            ("duckdb", Engine::DuckDb),
            ("spark", Engine::Spark),
            ("trino", Engine::Trino),
            ("athena", Engine::Athena),
        ] {
            input.insert(name.into(), statements(engine, &t).into());
        }
        let mut spectrum = statements(Engine::Spectrum, &t);
        spectrum.push(spectrum_partition(&t, "2026-11-27", 9));
        input.insert("redshift".into(), spectrum.into());
        let out = std::process::Command::new(python)
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/parquet/ddl_judge.py"),
            )
            .arg(serde_json::Value::Object(input).to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ddl_judge.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            got["duckdb_rows"],
            serde_json::json!([["2026-11-27", 9, 3], ["2026-11-27", 10, 2]]),
            "{got}"
        );
        assert_eq!(got["duckdb_types"]["dt"], "DATE", "{got}");
        assert_eq!(got["duckdb_types"]["hour"], "INTEGER", "{got}");
        assert_eq!(got["duckdb_types"]["_offset"], "BIGINT", "{got}");
        for d in ["spark", "trino", "athena", "redshift"] {
            assert_eq!(got["parsed"][d], serde_json::json!("ok"), "{d}: {got}");
        }
    }
}
