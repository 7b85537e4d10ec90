//! What a command reports when it ends: its typed summaries, each printed as a line for people
//! (or a table) or, with `--json`, as one JSON document; read by the metrics file. Besides
//! `lib`, the one module that names the commands' types (their summaries, where they are
//! built).

use crate::commands::{audit, status};
use crate::output::{Human, Summary};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

pub use crate::commands::aggregate::AggregateSummary;
pub use crate::commands::audit::AuditReport;
pub use crate::commands::copy::CopySummary;
pub use crate::commands::ingest::{IngestSummary, StopReason};
pub use crate::commands::produce::ProduceSummary;
pub use crate::commands::publish::PublishSummary;
pub use crate::commands::status::StatusReport;

/// The report of one run, as its command's `exec` returns it.
#[derive(Debug)]
pub enum Report {
    Ingest(IngestSummary),
    Copy(CopySummary),
    /// One summary per view built, in turn.
    Aggregate(Vec<AggregateSummary>),
    Status(StatusReport),
    Audit(AuditReport),
    Produce(ProduceSummary),
    Publish(PublishSummary),
    /// A run over many topics: each topic's report.
    Many(Many),
    /// A command that reports nothing (completions, man).
    None,
}

/// A step run over many topics: each topic's report (as its single-topic run reports it),
/// the topics that failed, and those it found nothing to do for.
#[derive(Debug, Default)]
pub struct Many {
    pub step: &'static str,
    pub topics: BTreeMap<String, Report>,
    pub failed: BTreeMap<String, Failure>,
    pub idle: Vec<String>,
}

/// Why one topic of a run over many failed, and the exit code it alone would have had.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub error: String,
    pub exit: u8,
}

impl Many {
    pub fn new(step: &'static str) -> Many {
        Many {
            step,
            ..Default::default()
        }
    }

    /// Records one topic's result: its report, or its failure (the others go on).
    pub fn record(&mut self, topic: &str, r: Result<Report>, out: &crate::output::Output) {
        match r {
            Ok(rep) => {
                self.topics.insert(topic.to_string(), rep);
            }
            Err(e) => {
                let f = Failure {
                    error: format!("{e:#}"),
                    exit: crate::error::code_for(&e),
                };
                // Named once, with every other failed topic, in the run's error line.
                out.debug(&format!("topic {topic}: {} (exit {})", f.error, f.exit));
                self.failed.insert(topic.to_string(), f);
            }
        }
    }

    /// Fails (the first failed topic's exit code) naming every failed topic.
    pub fn outcome(&self) -> Result<()> {
        let Some(first) = self.failed.values().next() else {
            return Ok(());
        };
        let n = self.failed.len() + self.topics.len() + self.idle.len();
        let each: Vec<String> = self
            .failed
            .iter()
            .map(|(t, f)| format!("topic {t}: {}", f.error))
            .collect();
        Err(crate::error::Error::Topics {
            code: first.exit,
            msg: format!(
                "{} of {n} topics failed: {}",
                self.failed.len(),
                each.join("; ")
            ),
        }
        .into())
    }

    /// The single-topic summaries of the topics, by name.
    fn documents(&self) -> serde_json::Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        for (t, r) in &self.topics {
            let docs: Vec<serde_json::Value> = r
                .parts()
                .iter()
                .map(|p| p.document())
                .collect::<serde_json::Result<_>>()?;
            let doc = match docs.len() {
                1 => docs.into_iter().next().unwrap_or_default(),
                _ => serde_json::Value::Array(docs),
            };
            m.insert(t.clone(), doc);
        }
        Ok(m)
    }

    fn totals(&self) -> Vec<(&'static str, serde_json::Value)> {
        let keys: &[&'static str] = match self.step {
            "ingest" => &["messages", "objects", "bytes"],
            "copy" => &["rows", "objects", "rejects", "bytes"],
            "publish" => &["rows", "files", "rejects", "bytes"],
            "status" => &["lag"],
            _ => &[],
        };
        let mut t: BTreeMap<&'static str, u64> = keys.iter().map(|k| (*k, 0)).collect();
        for r in self.topics.values() {
            match r {
                Report::Ingest(s) => {
                    *t.entry("messages").or_default() += s.messages;
                    *t.entry("objects").or_default() += s.objects as u64;
                    *t.entry("bytes").or_default() += s.bytes;
                }
                Report::Copy(s) => {
                    *t.entry("rows").or_default() += s.rows;
                    *t.entry("objects").or_default() += s.objects as u64;
                    *t.entry("rejects").or_default() += s.rejects;
                    *t.entry("bytes").or_default() += s.bytes;
                }
                Report::Status(s) => {
                    *t.entry("lag").or_default() += s.total_lag.max(0) as u64;
                }
                Report::Publish(s) => {
                    *t.entry("rows").or_default() += s.rows;
                    *t.entry("files").or_default() += s.files as u64;
                    *t.entry("rejects").or_default() += s.rejects;
                    *t.entry("bytes").or_default() += s.bytes;
                }
                _ => {}
            }
        }
        let mut v: Vec<(&'static str, serde_json::Value)> =
            t.into_iter().map(|(k, n)| (k, n.into())).collect();
        let problems: Vec<String> = self
            .topics
            .values()
            .flat_map(|r| match r {
                Report::Status(s) => s.problems.clone(),
                Report::Audit(a) => a.problems.iter().map(|f| f.line()).collect(),
                _ => Vec::new(),
            })
            .collect();
        if matches!(self.step, "status" | "audit") {
            v.push(("problems", problems.into()));
        }
        v
    }

    fn human(&self) -> String {
        let mut s = String::new();
        for (t, r) in &self.topics {
            for p in r.parts() {
                match p.human() {
                    Human::Line(l) => s += &format!("topic {t}: {l}\n"),
                    Human::Table(text) => s += &text,
                }
            }
        }
        for (t, f) in &self.failed {
            s += &format!("topic {t}: FAILED (exit {}): {}\n", f.exit, f.error);
        }
        let totals: Vec<String> = self
            .totals()
            .into_iter()
            .filter(|(k, _)| *k != "problems")
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let n = self.topics.len() + self.idle.len() + self.failed.len();
        let counts = if matches!(self.step, "ingest" | "copy" | "publish") {
            format!(
                "{} with something to do, {} idle, {} failed",
                self.topics.len(),
                self.idle.len(),
                self.failed.len()
            )
        } else {
            format!("{} failed", self.failed.len())
        };
        s += &format!(
            "{}: {n} topics ({counts}){}{}",
            self.step,
            if totals.is_empty() { "" } else { ": " },
            totals.join(", ")
        );
        s
    }
}

/// One summary of a report: with `--json`, one JSON document on a line of stdout.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Ingest(&'a IngestSummary),
    Copy(&'a CopySummary),
    /// One view of an aggregate run.
    View(&'a AggregateSummary),
    Status(&'a StatusReport),
    Audit(&'a AuditReport),
    Produce(&'a ProduceSummary),
    Publish(&'a PublishSummary),
    Many(&'a Many),
}

impl Report {
    /// The summaries it prints, in order.
    pub fn parts(&self) -> Vec<Part<'_>> {
        match self {
            Report::Ingest(s) => vec![Part::Ingest(s)],
            Report::Copy(s) => vec![Part::Copy(s)],
            Report::Aggregate(views) => views.iter().map(Part::View).collect(),
            Report::Status(s) => vec![Part::Status(s)],
            Report::Audit(s) => vec![Part::Audit(s)],
            Report::Produce(s) => vec![Part::Produce(s)],
            Report::Publish(s) => vec![Part::Publish(s)],
            Report::Many(m) => vec![Part::Many(m)],
            Report::None => Vec::new(),
        }
    }

    /// The run's verdict on what it found, once the report is printed: `status` fails
    /// (exit 5) when a threshold is exceeded, `audit` (exit 6) when it found a problem.
    pub fn outcome(&self) -> Result<()> {
        match self {
            Report::Status(s) => Ok(s.outcome()?),
            Report::Audit(s) => Ok(s.outcome()?),
            Report::Many(m) => {
                // Each topic's own verdict (a threshold, an audit problem) counts as its failure.
                let mut m2 = Many {
                    step: m.step,
                    failed: m.failed.clone(),
                    ..Default::default()
                };
                for (t, r) in &m.topics {
                    if let Err(e) = r.outcome() {
                        m2.failed.insert(
                            t.clone(),
                            Failure {
                                error: format!("{e:#}"),
                                exit: crate::error::code_for(&e),
                            },
                        );
                    } else {
                        m2.topics.insert(t.clone(), Report::None);
                    }
                }
                m2.idle = m.idle.clone();
                m2.outcome()
            }
            _ => Ok(()),
        }
    }
}

impl Summary for Part<'_> {
    /// The JSON document. It goes through `serde_json::Value`, whose objects keep their keys
    /// sorted (serde_json without `preserve_order`): that order, at every level and in maps
    /// with number keys (`"10"` before `"2"`), is the `--json` contract.
    fn document(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Part::Ingest(s) => serde_json::to_value(s),
            Part::Copy(s) => serde_json::to_value(s),
            Part::View(s) => serde_json::to_value(s),
            Part::Status(s) => serde_json::to_value(s),
            Part::Audit(s) => serde_json::to_value(s),
            Part::Produce(s) => serde_json::to_value(s),
            Part::Publish(s) => serde_json::to_value(s),
            Part::Many(m) => {
                let mut doc = serde_json::Map::new();
                doc.insert("topics".into(), serde_json::Value::Object(m.documents()?));
                doc.insert("failed".into(), serde_json::to_value(&m.failed)?);
                doc.insert("idle".into(), serde_json::to_value(&m.idle)?);
                for (k, v) in m.totals() {
                    doc.insert(k.into(), v);
                }
                Ok(serde_json::Value::Object(doc))
            }
        }
    }

    /// A line, or the whole report as a table (status, audit).
    fn human(&self) -> Human {
        match self {
            Part::Ingest(s) => Human::Line(ingest_line(s)),
            Part::Copy(s) => Human::Line(copy_line(s)),
            Part::View(s) => Human::Line(view_line(s)),
            Part::Status(s) => Human::Table(status::render(s)),
            Part::Audit(s) => Human::Table(audit::render(s)),
            Part::Produce(s) => {
                Human::Line(format!("produced {} messages to {}", s.produced, s.topic))
            }
            Part::Publish(s) => Human::Line(publish_line(s)),
            Part::Many(m) if matches!(m.step, "status" | "audit") => Human::Table(m.human() + "\n"),
            Part::Many(m) => Human::Line(m.human()),
        }
    }
}

fn dry_run(yes: bool) -> &'static str {
    if yes {
        " (dry run)"
    } else {
        ""
    }
}

fn ingest_line(s: &IngestSummary) -> String {
    format!(
        "ingest{}: {} messages ({}), {} partitions, {} objects, {} skipped, {} rejected{}, {:.1}s",
        dry_run(s.dry_run),
        s.messages,
        indicatif::HumanBytes(s.bytes),
        s.partitions,
        s.objects,
        s.skipped,
        s.rejected,
        match s.schemas_stored.len() {
            0 => String::new(),
            n => format!(", {n} schemas stored"),
        },
        s.seconds
    )
}

fn copy_line(s: &CopySummary) -> String {
    format!(
        "copy{}: {} objects ({}), {} rows, {} rejects{}, {:.1}s",
        dry_run(s.dry_run),
        s.objects,
        indicatif::HumanBytes(s.bytes),
        s.rows,
        s.rejects,
        if s.skipped_rows > 0 || !s.skipped_objects.is_empty() {
            format!(
                ", {} rows skipped as loaded already ({} objects skipped, {} loaded in part)",
                s.skipped_rows,
                s.skipped_objects.len(),
                s.partial_objects.len()
            )
        } else {
            String::new()
        },
        s.seconds
    )
}

fn view_line(s: &AggregateSummary) -> String {
    let delta = s
        .previous_rows
        .map(|p| format!("{:+}", s.rows - p))
        .unwrap_or_else(|| "new".into());
    format!(
        "aggregate{}: view {}, {} rows ({delta}){}, {:.1}s",
        dry_run(s.dry_run),
        s.view,
        s.rows,
        if s.rolled_back { ", rolled back" } else { "" },
        s.seconds
    )
}

/// publish's summary line.
fn publish_line(s: &PublishSummary) -> String {
    if s.dry_run {
        return format!(
            "dry run: would write {} files ({} records) into {}; {} hours not closed",
            s.plan.len(),
            s.plan.iter().map(|f| f.records).sum::<u64>(),
            s.lake,
            s.hours_waiting.len()
        );
    }
    let mut l = format!(
        "published {} rows in {} files ({}) to {}; {} hours sealed",
        s.rows,
        s.files,
        indicatif::HumanBytes(s.bytes),
        s.lake,
        s.hours_sealed.len()
    );
    if !s.hours_open.is_empty() {
        l += &format!(", {} written open", s.hours_open.len());
    }
    if !s.hours_waiting.is_empty() {
        l += &format!(", {} not closed yet", s.hours_waiting.len());
    }
    if s.rejects > 0 {
        l += &format!("; {} records rejected", s.rejects);
    }
    if s.resumed > 0 {
        l += &format!("; finished {} files of a run that died", s.resumed);
    }
    l + &format!(" in {:.1}s", s.seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_todays_bytes() {
        let p = ProduceSummary {
            produced: 3,
            topic: "tweets".into(),
            schema_id: None,
        };
        let doc = Part::Produce(&p).document().unwrap();
        assert_eq!(doc.to_string(), r#"{"produced":3,"topic":"tweets"}"#);
        assert_eq!(
            Part::Produce(&p).human(),
            Human::Line("produced 3 messages to tweets".into())
        );

        let mut i = IngestSummary {
            messages: 5,
            stopped_by: StopReason::MaxMessages,
            ..Default::default()
        };
        i.committed.insert(2, 7);
        i.committed.insert(10, 9);
        let doc = Part::Ingest(&i).document().unwrap().to_string();
        assert_eq!(
            doc,
            r#"{"adopted":[],"bytes":0,"committed":{"10":9,"2":7},"dry_run":false,"epoch":0,"expired":[],"handed_over":[],"held_by_others":[],"manifest_key":null,"messages":5,"object_list":[],"objects":0,"partitions":0,"rejected":0,"seconds":0.0,"skipped":0,"stopped_by":"--max-messages"}"#
        );
    }

    #[test]
    fn a_run_over_many_topics_is_one_document_and_fails_with_its_first_failed_topic() {
        let mut m = Many::new("copy");
        m.topics.insert(
            "a".into(),
            Report::Copy(CopySummary {
                rows: 5,
                objects: 1,
                ..Default::default()
            }),
        );
        m.idle.push("b".into());
        for (t, exit) in [("d", 2), ("c", 1)] {
            m.failed.insert(
                t.into(),
                Failure {
                    error: format!("{t} broke"),
                    exit,
                },
            );
        }
        let r = Report::Many(m);
        let doc = r.parts()[0].document().unwrap();
        assert_eq!(doc["topics"]["a"]["rows"], 5);
        assert_eq!(doc["idle"], serde_json::json!(["b"]));
        assert_eq!(doc["failed"]["c"]["exit"], 1);
        assert_eq!(
            (doc["rows"].clone(), doc["objects"].clone()),
            (5.into(), 1.into())
        );
        let Human::Line(text) = r.parts()[0].human() else {
            panic!("not a line")
        };
        assert!(text.starts_with("topic a: copy: 1 objects"), "{text}");
        assert!(text.contains("topic c: FAILED (exit 1): c broke"), "{text}");
        assert!(
            text.ends_with("copy: 4 topics (1 with something to do, 1 idle, 2 failed): 0 bytes, 1 objects, 0 rejects, 5 rows"),
            "{text}"
        );
        // By name, c is the first failed topic: its exit code is the run's; the line names both.
        let e = r.outcome().unwrap_err();
        assert_eq!(crate::error::code_for(&e), 1);
        assert_eq!(
            e.to_string(),
            "2 of 4 topics failed: topic c: c broke; topic d: d broke"
        );
    }

    #[test]
    fn stop_reasons_read_as_before() {
        let all = [
            (StopReason::EndOfPartitions, "end of partitions"),
            (
                StopReason::EndOfPartitionsOthersHeld,
                "end of partitions (others held by other members)",
            ),
            (StopReason::MaxMessages, "--max-messages"),
            (StopReason::MaxBytes, "--max-bytes"),
            (StopReason::MaxDuration, "--max-duration"),
        ];
        for (r, text) in all {
            assert_eq!(serde_json::to_value(r).unwrap(), text);
            assert_eq!(r.read_to_end(), text.starts_with("end of partitions"));
        }
    }

    #[test]
    fn an_aggregate_report_prints_one_summary_per_view() {
        let views = ["a", "b"].map(|v| AggregateSummary {
            view: v.into(),
            rows: 5,
            previous_rows: Some(7),
            ..Default::default()
        });
        let r = Report::Aggregate(views.into());
        let s = r.parts();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1].human(),
            Human::Line("aggregate: view b, 5 rows (-2), 0.0s".into())
        );
        assert!(Report::None.parts().is_empty());
        assert!(r.outcome().is_ok());
    }
}
