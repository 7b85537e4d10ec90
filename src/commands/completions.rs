//! `batchlayer completions SHELL` and `batchlayer man [SUBCOMMAND]`: generated from the clap
//! definitions in `cli`, so they never drift from the real flags.

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::Error;
use crate::output::Output;
use anyhow::{Context, Result};
use clap::CommandFactory;

/// Writes the completion script for one shell on stdout.
pub fn exec(a: &CompletionsArgs, out: &Output) -> Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "batchlayer", &mut buf);
    out.document(&buf).context("writing completions to stdout")
}

/// The man page (roff) of batchlayer, or of one subcommand as `batchlayer-NAME(1)`.
pub fn man_page(subcommand: Option<&str>) -> Result<Vec<u8>> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = match subcommand {
        None => clap_mangen::Man::new(cmd),
        Some(name) => {
            let sub = cmd
                .get_subcommands()
                .find(|s| s.get_name() == name && !s.is_hide_set())
                .ok_or_else(|| Error::config(format!("man {name}: no such subcommand")))?;
            clap_mangen::Man::new(sub.clone())
                .title(format!("batchlayer-{name}"))
                .source(format!("batchlayer {}", env!("CARGO_PKG_VERSION")))
        }
    };
    let mut buf = Vec::new();
    man.render(&mut buf).context("rendering the man page")?;
    Ok(buf)
}

/// Writes the man page on stdout.
pub fn man(a: &ManArgs, out: &Output) -> Result<()> {
    let page = man_page(a.subcommand.as_deref())?;
    out.document(&page)
        .context("writing the man page to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_name_their_commands_and_flags() {
        let top = String::from_utf8(man_page(None).unwrap()).unwrap();
        for s in [
            ".TH batchlayer 1",
            "ingest",
            "copy",
            "aggregate",
            "completions",
        ] {
            assert!(top.contains(s), "batchlayer(1) lacks {s}");
        }
        let ingest = String::from_utf8(man_page(Some("ingest")).unwrap()).unwrap();
        assert!(ingest.contains(".TH batchlayer-ingest 1"), "{ingest}");
        assert!(ingest.contains("metrics\\-file"), "{ingest}");
        assert!(
            man_page(Some("produce-tweets")).is_err(),
            "hidden commands have no page"
        );
        assert!(man_page(Some("nope")).is_err());
    }
}
