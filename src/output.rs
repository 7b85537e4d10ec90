//! Every write to stdout and stderr: quiet/verbose/TTY decisions, progress bars, summaries.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// How log lines (details under -v, warnings, `tracing` events) are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `batchlayer: ...` lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message, target).
    Json,
}

/// How a summary reads for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Human {
    /// A line on stderr, shown on a terminal or with -v, never under -q.
    Line(String),
    /// A table on stdout, always.
    Table(String),
}

/// What a run prints when it ends: a JSON document with --json, else its form for people.
pub trait Summary {
    fn human(&self) -> Human;
    fn document(&self) -> serde_json::Result<serde_json::Value>;
}

#[derive(Debug, Clone)]
pub struct Output {
    pub quiet: bool,
    pub verbose: bool,
    pub json: bool,
    /// Whether stderr is an interactive terminal fit for progress bars.
    pub interactive: bool,
    /// Log lines as JSON (`--log-format json`): details, info and warnings become `tracing`
    /// events, and progress bars are off so that stderr holds JSON lines only.
    pub log_json: bool,
}

impl Output {
    /// Decides from the flags and the real terminal; `ci`/`dumb_term` come from config.
    pub fn new(quiet: bool, verbose: bool, json: bool, no_progress_env: bool) -> Self {
        Output {
            quiet,
            verbose,
            json,
            interactive: std::io::stderr().is_terminal() && !no_progress_env,
            log_json: false,
        }
    }

    /// The same output with log lines in this format.
    pub fn with_log_format(mut self, format: LogFormat) -> Self {
        self.log_json = format == LogFormat::Json;
        self
    }

    /// For tests and library callers: prints nothing.
    pub fn silent() -> Self {
        Output {
            quiet: true,
            verbose: false,
            json: false,
            interactive: false,
            log_json: false,
        }
    }

    /// Human-facing lines (summaries, dry-run plans) go to stderr on a terminal or with -v.
    fn human(&self) -> bool {
        !self.quiet && (self.interactive || self.verbose)
    }

    /// A line of information, shown on a terminal or with -v, never under -q.
    pub fn info(&self, line: &str) {
        if self.human() {
            if self.log_json {
                tracing::info!("{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }

    /// Detail shown only with -v.
    pub fn debug(&self, line: &str) {
        if self.verbose {
            if self.log_json {
                tracing::info!("{line}");
            } else {
                eprintln!("batchlayer: {line}");
            }
        }
    }

    /// A warning: always shown unless -q (cron mails it, which is what a warning is for).
    pub fn warn(&self, line: &str) {
        if !self.quiet {
            if self.log_json {
                tracing::warn!("{line}");
            } else {
                eprintln!("batchlayer: warning: {line}");
            }
        }
    }

    /// Plan output of --dry-run: always on stdout (the user asked for it), unless --json.
    pub fn plan(&self, line: &str) {
        if !self.json {
            println!("{line}");
        }
    }

    /// An end-of-run summary: its JSON document on a line of stdout with --json, else its
    /// line for humans (or its table, on stdout).
    pub fn summary(&self, summary: &impl Summary) -> anyhow::Result<()> {
        if self.json {
            println!("{}", summary.document()?);
        } else {
            match summary.human() {
                Human::Line(line) => self.info(&line),
                Human::Table(text) => self.table(&text),
            }
        }
        Ok(())
    }

    /// Plain result rows (e.g. `aggregate --print`): stdout, always.
    pub fn table(&self, text: &str) {
        print!("{text}");
    }

    /// A generated document (shell completions, a man page): stdout, as is.
    pub fn document(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes)?;
        stdout.flush()
    }

    /// A progress bar on a terminal, or a hidden one. `bytes`: position and total are bytes.
    /// The bar takes the width the text leaves, so a line never wraps on a narrow terminal.
    pub fn progress(&self, total: u64, what: &str, bytes: bool) -> ProgressBar {
        if !self.interactive || self.quiet || self.log_json {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let counts = if bytes {
            "{bytes}/{total_bytes}"
        } else {
            "{human_pos}/{human_len}"
        };
        pb.set_style(
            ProgressStyle::with_template(&format!(
                "{what} {{wide_bar}} {counts} {{msg}} [{{elapsed_precise}}, eta {{eta}}]"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    }

    /// The one error line, in main.
    pub fn error(err: &anyhow::Error) {
        eprintln!("batchlayer: error: {err:#}");
    }
}

/// Formats rows as an aligned text table. Columns are aligned by display width (what a
/// terminal shows), so a wide character (an emoji, CJK) in a cell does not shift the others.
pub fn format_table(cols: &[String], rows: &[Vec<String>]) -> String {
    use unicode_width::UnicodeWidthStr;
    let clean = |c: &String| {
        c.replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
    };
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(clean).collect()).collect();
    let mut w: Vec<usize> = cols.iter().map(|c| c.width()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.width());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(w[i] - c.width())))
            .collect();
        format!("{}\n", parts.join(" | ").trim_end())
    };
    let mut s = line(cols);
    s += &format!(
        "{}\n",
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for r in &rows {
        s += &line(r);
    }
    s
}

/// Detail lines from the backends (retries, for example) go through `tracing`. As text, they
/// are printed under -v as `batchlayer: ...` lines, otherwise dropped. As JSON, every event
/// (and the details, information and warnings of `Output`) is one JSON object per line:
/// warnings always (unless -q), details and backend events under -v. `filter` (RUST_LOG,
/// `target=level,...`) replaces those levels. The one error line of a failed run is never
/// JSON: main prints it as it is.
pub fn init_logs(
    verbose: bool,
    quiet: bool,
    format: LogFormat,
    filter: Option<&str>,
) -> Result<(), String> {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let targets = match filter {
        Some(f) => f
            .parse::<Targets>()
            .map_err(|e| format!("RUST_LOG {f:?}: {e} (use level or target=level,...)"))?,
        None if verbose => Targets::new().with_default(LevelFilter::INFO),
        None if format == LogFormat::Json && !quiet => Targets::new()
            .with_default(LevelFilter::WARN)
            .with_target("batchlayer::output", LevelFilter::INFO),
        None => return Ok(()),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(LevelFilter::TRACE);
    // try_init: a second call in one process (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish()
            .with(targets)
            .try_init(),
        LogFormat::Text => builder.event_format(Line).finish().with(targets).try_init(),
    };
    Ok(())
}

/// The text form of a `tracing` event: `batchlayer: ` and its fields.
struct Line;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Line
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(w, "batchlayer: ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let t = format_table(
            &["a".into(), "count".into()],
            &[vec!["Z\u{fc}rich".into(), "3".into()]],
        );
        assert_eq!(t, "a      | count\n-------+------\nZ\u{fc}rich | 3\n");
    }

    #[test]
    fn table_aligns_wide_characters_by_display_width() {
        // An emoji and CJK characters take two columns each on a terminal.
        let t = format_table(
            &["location".into(), "n".into()],
            &[
                vec!["\u{6771}\u{4eac}".into(), "1".into()],
                vec!["Paris \u{1f4cd}".into(), "2".into()],
                vec!["Lyon".into(), "3".into()],
            ],
        );
        assert_eq!(
            t,
            "location | n\n\
             ---------+--\n\
             \u{6771}\u{4eac}     | 1\n\
             Paris \u{1f4cd} | 2\n\
             Lyon     | 3\n"
        );
    }
}
