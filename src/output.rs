//! Every write to stdout and stderr: quiet/verbose/TTY decisions, progress bars, summaries.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

#[derive(Debug, Clone)]
pub struct Output {
    pub quiet: bool,
    pub verbose: bool,
    pub json: bool,
    /// Whether stderr is an interactive terminal fit for progress bars.
    pub interactive: bool,
}

impl Output {
    /// Decides from the flags and the real terminal; `ci`/`dumb_term` come from config.
    pub fn new(quiet: bool, verbose: bool, json: bool, no_progress_env: bool) -> Self {
        Output {
            quiet,
            verbose,
            json,
            interactive: std::io::stderr().is_terminal() && !no_progress_env,
        }
    }

    /// For tests and library callers: prints nothing.
    pub fn silent() -> Self {
        Output {
            quiet: true,
            verbose: false,
            json: false,
            interactive: false,
        }
    }

    /// Human-facing lines (summaries, dry-run plans) go to stderr on a terminal or with -v.
    fn human(&self) -> bool {
        !self.quiet && (self.interactive || self.verbose)
    }

    /// A line of information, shown on a terminal or with -v, never under -q.
    pub fn info(&self, line: &str) {
        if self.human() {
            eprintln!("{line}");
        }
    }

    /// Detail shown only with -v.
    pub fn debug(&self, line: &str) {
        if self.verbose {
            eprintln!("batchlayer: {line}");
        }
    }

    /// A warning: always shown unless -q (cron mails it, which is what a warning is for).
    pub fn warn(&self, line: &str) {
        if !self.quiet {
            eprintln!("batchlayer: warning: {line}");
        }
    }

    /// Plan output of --dry-run: always on stdout (the user asked for it), unless --json.
    pub fn plan(&self, line: &str) {
        if !self.json {
            println!("{line}");
        }
    }

    /// The end-of-run summary: a line for humans, JSON on stdout with --json.
    pub fn summary(&self, line: &str, json: &serde_json::Value) {
        if self.json {
            println!("{json}");
        } else {
            self.info(line);
        }
    }

    /// Plain result rows (e.g. `aggregate --print`): stdout, always.
    pub fn table(&self, text: &str) {
        print!("{text}");
    }

    /// A progress bar on a terminal, or a hidden one. `bytes`: position and total are bytes.
    /// The bar takes the width the text leaves, so a line never wraps on a narrow terminal.
    pub fn progress(&self, total: u64, what: &str, bytes: bool) -> ProgressBar {
        if !self.interactive || self.quiet {
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

/// Detail lines from the backends (retries, for example) go through `tracing`; under -v they
/// are printed to stderr as `batchlayer: ...` lines, otherwise dropped.
pub fn init_logs(verbose: bool) {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    struct Line;
    impl<S, N> FormatEvent<S, N> for Line
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            event: &tracing::Event<'_>,
        ) -> std::fmt::Result {
            write!(w, "batchlayer: ")?;
            ctx.field_format().format_fields(w.by_ref(), event)?;
            writeln!(w)
        }
    }

    if verbose {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::INFO)
            .event_format(Line)
            .try_init();
    }
}
