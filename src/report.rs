//! What a command reports when it ends: its typed summaries, each printed as a line for people
//! (or a table) or, with `--json`, as one JSON document; read by the metrics file. Besides
//! `lib`, the one module that names the commands' types (their summaries, where they are
//! built).

use crate::commands::{audit, status};
use crate::output::{Human, Summary};
use anyhow::Result;

pub use crate::commands::aggregate::AggregateSummary;
pub use crate::commands::audit::AuditReport;
pub use crate::commands::copy::CopySummary;
pub use crate::commands::ingest::{IngestSummary, StopReason};
pub use crate::commands::produce::ProduceSummary;
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
    /// A command that reports nothing (completions, man).
    None,
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
            Report::None => Vec::new(),
        }
    }

    /// The run's verdict on what it found, once the report is printed: `status` fails
    /// (exit 5) when a threshold is exceeded, `audit` (exit 6) when it found a problem.
    pub fn outcome(&self) -> Result<()> {
        match self {
            Report::Status(s) => Ok(s.outcome()?),
            Report::Audit(s) => Ok(s.outcome()?),
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
