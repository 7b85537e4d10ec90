//! One module per subcommand, each with a cargo-style `exec(args, &Settings[, &Output])` that
//! opens the backends, runs plain logic over their traits, prints its plan and progress, and
//! returns its typed `Report` (which `lib` prints and the metrics file reads).

pub mod aggregate;
pub mod audit;
pub mod completions;
pub mod copy;
pub mod ddl;
pub mod ingest;
pub mod produce;
pub mod publish;
pub mod status;

use crate::error::Error;
use crate::output::Output;
use crate::warehouse::Warehouse;
use anyhow::Result;

/// Takes a warehouse lock: at once if free, else waits (saying so) or fails busy (exit 3).
/// True when it had to wait.
pub fn take_lock(
    wh: &mut dyn Warehouse,
    name: &str,
    wait: bool,
    busy: impl FnOnce() -> String,
    out: &Output,
) -> Result<bool> {
    if wh.try_lock(name)? {
        return Ok(false);
    }
    if !wait {
        return Err(Error::Busy(busy()).into());
    }
    out.info(&format!(
        "waiting for another {name} run to finish (lock on {})",
        wh.names().raw
    ));
    wh.lock_wait(name)?;
    Ok(true)
}

/// The topics a run over many takes: the listed ones, or those of the cluster (and, given,
/// of the archive) that the pattern matches; narrowed by `--topic`.
pub fn config_topics(
    s: &crate::config::Settings,
    archived: Option<&[String]>,
) -> Result<Vec<String>> {
    if let Some(l) = s.topics.listed() {
        return Ok(l);
    }
    let ov = crate::source::GroupOverview::read(&s.kafka, &|_| false)?;
    let mut all = ov.topics;
    all.extend(archived.into_iter().flatten().cloned());
    Ok(s.topics.pick(&all))
}

/// The layout's codec: for Avro, with every writer schema the archive holds (`_schemas/`), so
/// records decode from the archive alone, never from the registry.
pub fn codec_for(
    store: &dyn crate::archive::ObjectStore,
    layout: &crate::records::Layout,
) -> anyhow::Result<crate::records::Codec> {
    use crate::records::{Codec, RecordFormat};
    use anyhow::Context as _;
    if layout.format != RecordFormat::Avro {
        return Ok(Codec::new(layout.clone()));
    }
    let schemas: Vec<(u32, String)> = crate::archive::catalog::read_schemas(store)
        .context("reading the archive's writer schemas (_schemas/)")?
        .into_iter()
        .map(|s| (s.id, s.schema))
        .collect();
    tracing::debug!("{} writer schemas in the archive", schemas.len());
    Codec::with_schemas(layout.clone(), &schemas)
}
