//! The metrics file of a step (`--metrics-file PATH`): the Prometheus text format that
//! node_exporter's textfile collector reads, written atomically (a temp file in the same
//! folder, then a rename) when the step ends, on success and on failure.
//!
//! Every metric is a gauge labelled `step="ingest|copy|publish|aggregate"`, with the same help text
//! whatever the step, so the files of several steps can sit in one collector folder. The
//! figures of a run come from the report the step returned (what `--json` prints); a failed
//! run writes its exit code, duration and end time, and keeps the last success timestamp of
//! the file it replaces.

use crate::error::{code_for, OK};
use crate::output::Output;
use crate::report::Report;
use anyhow::{anyhow, bail, Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// The name of the metric that carries the last success over a failed run.
pub const LAST_SUCCESS: &str = "batchlayer_last_success_timestamp_seconds";

/// What one run of a step wrote: its outcome and, after a success, its figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepMetrics {
    pub step: String,
    pub exit_code: u8,
    /// When the run ended (Unix seconds).
    pub finished_at: f64,
    pub duration_seconds: f64,
    /// The end of the last successful run: this one, or the previous file's.
    pub last_success: Option<f64>,
    pub figures: Figures,
}

/// A successful run's counts; None where the step has no such count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
    pub objects: Option<u64>,
    pub rows: Option<u64>,
    pub rejects: Option<u64>,
    pub skipped_offsets: Option<u64>,
    /// (partition, lag) where the run knows it: 0 for a partition it read to its end, the
    /// reported lag of one another group member held.
    pub lag: Vec<(i32, i64)>,
    /// (view, rows) of each view aggregate built or rolled back.
    pub views: Vec<(String, i64)>,
    /// A run over many topics: each topic's figures and exit code (0, or its failure's),
    /// written with a `topic` label; the step's own figures are their sums.
    pub topics: Vec<(String, u8, Figures)>,
}

impl Figures {
    /// A step's figures, from the report it returned. A report of another command (or none)
    /// is an error, never zeros.
    pub fn from_report(step: &str, report: &Report) -> Result<Figures> {
        let figures = match (step, report) {
            ("ingest", Report::Ingest(i)) => {
                let mut lag: Vec<(i32, i64)> = Vec::new();
                if i.stopped_by.read_to_end() {
                    lag.extend(i.committed.keys().map(|p| (*p, 0)));
                }
                lag.extend(i.held_by_others.iter().map(|h| (h.partition, h.lag)));
                lag.sort_unstable();
                Figures {
                    messages: Some(i.messages),
                    bytes: Some(i.bytes),
                    objects: Some(i.objects as u64),
                    rejects: Some(i.rejected),
                    skipped_offsets: Some(i.skipped),
                    lag,
                    ..Figures::default()
                }
            }
            ("copy", Report::Copy(c)) => Figures {
                bytes: Some(c.bytes),
                objects: Some(c.objects as u64),
                rows: Some(c.rows),
                rejects: Some(c.rejects),
                skipped_offsets: Some(c.skipped_rows),
                ..Figures::default()
            },
            ("publish", Report::Publish(p)) => Figures {
                bytes: Some(p.bytes),
                objects: Some(p.files as u64),
                rows: Some(p.rows),
                rejects: Some(p.rejects),
                ..Figures::default()
            },
            ("aggregate", Report::Aggregate(views)) => Figures {
                views: views.iter().map(|v| (v.view.clone(), v.rows)).collect(),
                ..Figures::default()
            },
            ("ingest" | "copy" | "publish", Report::Many(m)) => {
                let mut total = Figures::default();
                let mut topics = Vec::new();
                for (t, r) in &m.topics {
                    let f = Figures::from_report(step, r)?;
                    let add = |a: &mut Option<u64>, b: Option<u64>| {
                        if let Some(b) = b {
                            *a = Some(a.unwrap_or(0) + b);
                        }
                    };
                    add(&mut total.messages, f.messages);
                    add(&mut total.bytes, f.bytes);
                    add(&mut total.objects, f.objects);
                    add(&mut total.rows, f.rows);
                    add(&mut total.rejects, f.rejects);
                    add(&mut total.skipped_offsets, f.skipped_offsets);
                    topics.push((t.clone(), OK, f));
                }
                for t in &m.idle {
                    topics.push((t.clone(), OK, Figures::default()));
                }
                for (t, f) in &m.failed {
                    topics.push((t.clone(), f.exit, Figures::default()));
                }
                topics.sort_by(|a, b| a.0.cmp(&b.0));
                Figures { topics, ..total }
            }
            ("ingest" | "copy" | "publish" | "aggregate", _) => bail!("{step} reported no summary"),
            (other, _) => bail!("no metrics for step {other}"),
        };
        Ok(figures)
    }
}

type Labels = Vec<(String, String)>;

/// Adds a gauge family to the registry and returns a handle on it.
fn family<G>(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, G>
where
    G: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let f = Family::<Labels, G>::default();
    reg.register(name, help, f.clone());
    f
}

fn labels(step: &str, extra: Option<(&str, String)>) -> Labels {
    let mut l = vec![("step".to_string(), step.to_string())];
    l.extend(extra.map(|(k, v)| (k.to_string(), v)));
    l
}

impl StepMetrics {
    /// The file's text, in the Prometheus text format.
    pub fn encode(&self) -> Result<String> {
        let mut reg = Registry::default();
        let step = || labels(&self.step, None);
        let seconds = |reg: &mut Registry, name: &str, help: &str, v: f64| {
            family::<Gauge<f64, AtomicU64>>(reg, name, help)
                .get_or_create(&step())
                .set(v);
        };
        if let Some(t) = self.last_success {
            seconds(
                &mut reg,
                LAST_SUCCESS,
                "End of the step's last successful run, in Unix seconds",
                t,
            );
        }
        seconds(
            &mut reg,
            "batchlayer_last_run_timestamp_seconds",
            "End of the step's last run, successful or not, in Unix seconds",
            self.finished_at,
        );
        seconds(
            &mut reg,
            "batchlayer_last_run_duration_seconds",
            "Wall time of the step's last run",
            self.duration_seconds,
        );
        family::<Gauge>(
            &mut reg,
            "batchlayer_last_run_exit_code",
            "Exit code of the step's last run (0 ok, 1 failure, 2 usage, 3 busy, 4 gate)",
        )
        .get_or_create(&step())
        .set(i64::from(self.exit_code));
        let f = &self.figures;
        let counts = [
            ("messages", f.messages, "Kafka messages the last run archived"),
            ("bytes", f.bytes, "Bytes the last run archived (ingest: payload bytes) or loaded (copy: object bytes)"),
            ("objects", f.objects, "Objects the last run stored (ingest) or loaded (copy)"),
            ("rows", f.rows, "Rows the last run loaded into the raw table"),
            ("rejects", f.rejects, "Records the last run rejected (ingest: tombstones; copy: bad rows)"),
            ("skipped_offsets", f.skipped_offsets, "Offsets the last run skipped as done already (ingest: archived; copy: loaded)"),
        ];
        for (what, value, help) in counts {
            if let Some(v) = value {
                let v = i64::try_from(v).with_context(|| format!("{what} {v} out of range"))?;
                family::<Gauge>(&mut reg, &format!("batchlayer_last_run_{what}"), help)
                    .get_or_create(&step())
                    .set(v);
            }
        }
        if !f.lag.is_empty() {
            let g = family::<Gauge>(
                &mut reg,
                "batchlayer_lag_messages",
                "Messages of a partition not archived when the last run ended, where known",
            );
            for (p, lag) in &f.lag {
                g.get_or_create(&labels(&self.step, Some(("partition", p.to_string()))))
                    .set(*lag);
            }
        }
        if !f.views.is_empty() {
            let g = family::<Gauge>(
                &mut reg,
                "batchlayer_view_rows",
                "Rows of the batch view the last run swapped in",
            );
            for (view, rows) in &f.views {
                g.get_or_create(&labels(&self.step, Some(("view", view.clone()))))
                    .set(*rows);
            }
        }
        if !f.topics.is_empty() {
            let code = family::<Gauge>(
                &mut reg,
                "batchlayer_topic_exit_code",
                "Exit code of each topic of the step's last run over many topics (0 ok)",
            );
            let mut per: Vec<(&str, Family<Labels, Gauge>)> = Vec::new();
            for (what, help) in [
                (
                    "messages",
                    "Kafka messages the last run archived, per topic",
                ),
                ("bytes", "Bytes the last run archived or loaded, per topic"),
                (
                    "objects",
                    "Objects the last run stored or loaded, per topic",
                ),
                ("rows", "Rows the last run loaded, per topic"),
                ("rejects", "Records the last run rejected, per topic"),
                (
                    "skipped_offsets",
                    "Offsets the last run skipped as done already, per topic",
                ),
            ] {
                per.push((
                    what,
                    family::<Gauge>(&mut reg, &format!("batchlayer_topic_{what}"), help),
                ));
            }
            for (t, exit, tf) in &f.topics {
                let l = labels(&self.step, Some(("topic", t.clone())));
                code.get_or_create(&l).set(i64::from(*exit));
                let values = [
                    tf.messages,
                    tf.bytes,
                    tf.objects,
                    tf.rows,
                    tf.rejects,
                    tf.skipped_offsets,
                ];
                for ((_, g), v) in per.iter().zip(values) {
                    if let Some(v) = v {
                        g.get_or_create(&l)
                            .set(i64::try_from(v).unwrap_or(i64::MAX));
                    }
                }
            }
        }
        let mut text = String::new();
        encode(&mut text, &reg).map_err(|e| anyhow!("encoding metrics: {e}"))?;
        Ok(text)
    }
}

/// The last success timestamp a metrics file holds for a step, if any.
pub fn last_success_in(text: &str, step: &str) -> Option<f64> {
    let want = format!("{LAST_SUCCESS}{{step=\"{step}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// Writes `text` to `path` atomically: a temp file in the same folder (not named *.prom, so
/// the collector never reads half a file), readable by the collector's user, then a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".batchlayer-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!(e.error))
        .with_context(|| format!("renaming the temp file to {}", path.display()))?;
    Ok(())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes the metrics file of a step that ended with `result`, and returns the result. A
/// step that succeeded but whose file cannot be written fails (exit 1): the operator asked
/// for it. A step that failed keeps its own error; a write failure is then a warning.
pub fn finish(
    step: &str,
    path: &Path,
    started: Instant,
    out: &Output,
    result: Result<Report>,
) -> Result<Report> {
    let finished_at = unix_now();
    let written = (|| {
        let m = StepMetrics {
            step: step.to_string(),
            // A run over many topics reports even when topics failed; its verdict is theirs.
            exit_code: match &result {
                Ok(r) => r.outcome().err().map_or(OK, |e| code_for(&e)),
                Err(e) => code_for(e),
            },
            finished_at,
            duration_seconds: started.elapsed().as_secs_f64(),
            last_success: match &result {
                Ok(r) if r.outcome().is_ok() => Some(finished_at),
                _ => std::fs::read_to_string(path)
                    .ok()
                    .and_then(|t| last_success_in(&t, step)),
            },
            figures: match &result {
                Ok(report) => Figures::from_report(step, report)?,
                Err(_) => Figures::default(),
            },
        };
        write_atomic(path, &m.encode()?)
    })()
    .with_context(|| format!("writing metrics file {}", path.display()));
    match (result, written) {
        (Ok(report), w) => w.map(|()| report),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(w)) => {
            out.warn(&format!("{w:#}"));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AggregateSummary, CopySummary};

    #[test]
    fn a_run_over_many_topics_labels_each_topic_and_sums_the_step() {
        use crate::report::{Failure, Many};
        let mut m = Many::new("copy");
        for (t, rows) in [("a", 5), ("b", 7)] {
            m.topics.insert(
                t.into(),
                Report::Copy(CopySummary {
                    objects: 1,
                    rows,
                    ..Default::default()
                }),
            );
        }
        m.idle.push("c".into());
        m.failed.insert(
            "d".into(),
            Failure {
                error: "bad record".into(),
                exit: 1,
            },
        );
        let f = Figures::from_report("copy", &Report::Many(m)).unwrap();
        assert_eq!(f.rows, Some(12));
        let text = StepMetrics {
            step: "copy".into(),
            exit_code: 1,
            finished_at: 1.0,
            duration_seconds: 1.0,
            last_success: None,
            figures: f,
        }
        .encode()
        .unwrap();
        for line in [
            "batchlayer_last_run_rows{step=\"copy\"} 12",
            "batchlayer_topic_rows{step=\"copy\",topic=\"a\"} 5",
            "batchlayer_topic_rows{step=\"copy\",topic=\"b\"} 7",
            "batchlayer_topic_exit_code{step=\"copy\",topic=\"c\"} 0",
            "batchlayer_topic_exit_code{step=\"copy\",topic=\"d\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn failed_run_keeps_the_last_success_and_has_no_figures() {
        let ok = StepMetrics {
            step: "copy".into(),
            exit_code: 0,
            finished_at: 1700000000.5,
            duration_seconds: 2.0,
            last_success: Some(1700000000.5),
            figures: Figures::from_report(
                "copy",
                &Report::Copy(CopySummary {
                    objects: 3,
                    rows: 30,
                    rejects: 1,
                    bytes: 900,
                    skipped_rows: 2,
                    ..Default::default()
                }),
            )
            .unwrap(),
        };
        let text = ok.encode().unwrap();
        assert!(
            text.contains("batchlayer_last_run_rows{step=\"copy\"} 30\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE batchlayer_last_run_exit_code gauge"),
            "{text}"
        );
        assert_eq!(last_success_in(&text, "copy"), Some(1700000000.5));
        assert_eq!(last_success_in(&text, "ingest"), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.prom");
        write_atomic(&path, &text).unwrap();
        let err: Result<Report> = Err(crate::error::Error::Busy("lock".into()).into());
        let out = Output::silent();
        assert!(finish("copy", &path, Instant::now(), &out, err).is_err());
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(
            after.contains("batchlayer_last_run_exit_code{step=\"copy\"} 3\n"),
            "{after}"
        );
        assert_eq!(last_success_in(&after, "copy"), Some(1700000000.5));
        assert!(!after.contains("batchlayer_last_run_rows"), "{after}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file is left behind");
    }

    /// A summary without a field no longer compiles (the figures read typed fields); a step
    /// without its summary is still an error, never zeros.
    #[test]
    fn a_step_without_its_summary_is_an_error() {
        assert!(Figures::from_report("copy", &Report::None).is_err());
        assert!(Figures::from_report("copy", &Report::Aggregate(Vec::new())).is_err());
        let view = |v: &str, rows| AggregateSummary {
            view: v.into(),
            rows,
            ..Default::default()
        };
        let agg = Figures::from_report(
            "aggregate",
            &Report::Aggregate(vec![view("a", 5), view("b", 7)]),
        )
        .unwrap();
        assert_eq!(agg.views, vec![("a".into(), 5), ("b".into(), 7)]);
    }
}
