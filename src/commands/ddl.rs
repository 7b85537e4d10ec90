//! `ddl --engine E`: the table an engine declares over a topic's lake folder, printed on
//! stdout (statements end with `;`). Spectrum's also lists the sealed hours' partitions;
//! Athena's partition projection starts at the lake's first hour.

use crate::archive as archive_mod;
use crate::cli::DdlArgs;
use crate::config::Settings;
use crate::error::Error;
use crate::lake::catalog::{self as lc, LakeHead};
use crate::lake::ddl::{self, Engine, LakeTable};
use crate::output::Output;
use crate::report::Report;
use anyhow::Result;

pub fn exec(a: &DdlArgs, s: &Settings, out: &Output) -> Result<Report> {
    let engine = Engine::parse(&a.engine).map_err(|e| Error::config(format!("--engine: {e}")))?;
    let (topic, own);
    let s = if s.topics.multi() {
        match s.topics.narrow.as_slice() {
            [crate::config::topics::Matcher::Name(t)] => {
                topic = t.clone();
                own = s.for_topic(t)?;
                &own
            }
            _ => return Err(Error::config(
                "ddl prints one topic's table: name it with one --topic (a config of many topics)",
            )
            .into()),
        }
    } else {
        topic = s.require_kafka()?.topic.clone();
        s
    };
    let location = match &a.location {
        Some(l) => format!("{}/", l.trim_end_matches('/')),
        None => s.lake.topic_location(&topic),
    };
    // The lake's hours, when it can be read: Athena's projection starts at the first one,
    // Spectrum's partitions are the sealed ones.
    let head = archive_mod::open(&s.lake.store)
        .ok()
        .and_then(|l| LakeHead::read(l.as_ref(), &topic).ok().flatten())
        .unwrap_or_default();
    let first_hour = head.sealed.iter().chain(&head.unsealed).min().cloned();
    let first_day = first_hour
        .as_deref()
        .and_then(lc::hour_start)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| chrono::Utc::now().format("%Y-%m-%d").to_string());
    let table = s.lake.table_for(&topic);
    let schema = a
        .schema
        .clone()
        .or_else(|| s.lake.spectrum_schema.clone())
        .unwrap_or_else(|| "lake".into());
    let t = LakeTable {
        name: &table,
        schema: &schema,
        location: &location,
        layout: &s.layout,
        first_day: &first_day,
    };
    let mut text = format!(
        "-- batchlayer ddl --engine {}: topic {topic}, lake {}; dt and hour are the archive's time folders (zone {}).\n",
        a.engine,
        s.lake.url,
        if s.archive.utc_offset_secs == 0 {
            "UTC".to_string()
        } else {
            format!("UTC{:+} s", s.archive.utc_offset_secs)
        }
    );
    match engine {
        Engine::Spectrum => text += &format!(
            "-- The external schema is yours to create once, with your IAM role:\n-- CREATE EXTERNAL SCHEMA {schema} FROM DATA CATALOG DATABASE '{schema}' IAM_ROLE 'arn:aws:iam::ACCOUNT:role/ROLE' CREATE EXTERNAL DATABASE IF NOT EXISTS;\n"
        ),
        Engine::DuckDb if location.starts_with("s3://") => text += "-- An S3 lake needs httpfs and a secret: INSTALL httpfs; LOAD httpfs; CREATE SECRET (TYPE s3, ...);\n",
        _ => {}
    }
    for st in ddl::statements(engine, &t) {
        text += &st;
        text += ";\n";
    }
    if engine == Engine::Spectrum {
        for h in &head.sealed {
            if let Some(start) = lc::hour_start(h) {
                let hour: u32 = start.format("%H").to_string().parse().unwrap_or(0);
                text += &ddl::spectrum_partition(&t, &start.format("%Y-%m-%d").to_string(), hour);
                text += ";\n";
            }
        }
    }
    out.document(text.as_bytes())?;
    Ok(Report::None)
}
