//! The one error type whose variant decides the exit code (README "Exit codes"), and the codes.
//!
//! Every other failure is an `anyhow::Error` with context at each I/O boundary and exits 1.
//! A caller marks a failure as a configuration mistake, a busy lock or a refused gate by
//! returning the matching variant (and `status`/`audit` a failed check); `code_for` finds it anywhere in the error's chain.

use std::fmt::Display;
use std::process::ExitCode;

pub const OK: u8 = 0;
/// The step failed; nothing that matters was changed (see the error line).
pub const FAILURE: u8 = 1;
/// Usage or configuration error.
pub const USAGE: u8 = 2;
/// Busy: another run holds the lock (`--no-wait`).
pub const BUSY: u8 = 3;
/// A gate refused the aggregate swap; the old view stays.
pub const GATE: u8 = 4;
/// `status`: a threshold (`--max-lag`, `--max-unloaded-age`, `--max-view-age`) is exceeded.
pub const UNHEALTHY: u8 = 5;
/// `audit`: the archive, the manifests, the offsets and the ledger do not agree.
pub const INCONSISTENT: u8 = 6;

/// An error whose kind decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration or usage mistake (exit 2). Display and source are the inner error's.
    #[error(transparent)]
    Config(anyhow::Error),
    /// Another run holds the lock (exit 3).
    #[error("busy: {0}")]
    Busy(String),
    /// A gate refused the aggregate swap (exit 4).
    #[error("{0}")]
    Gate(String),
    /// A status threshold is exceeded (exit 5).
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    /// The audit found problems (exit 6).
    #[error("inconsistent: {0}")]
    Inconsistent(String),
    /// A run over many topics in which some failed: the first failed topic's exit code, and a
    /// line naming each.
    #[error("{msg}")]
    Topics { code: u8, msg: String },
}

impl Error {
    /// A configuration error from a message.
    pub fn config(msg: impl Display) -> Self {
        Error::Config(anyhow::anyhow!("{msg}"))
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => USAGE,
            Error::Busy(_) => BUSY,
            Error::Gate(_) => GATE,
            Error::Unhealthy(_) => UNHEALTHY,
            Error::Inconsistent(_) => INCONSISTENT,
            Error::Topics { code, .. } => *code,
        }
    }
}

/// Marks any error of a result as a configuration error (exit 2).
pub trait OrConfig<T> {
    fn or_config(self) -> Result<T, Error>;
}

impl<T, E: Into<anyhow::Error>> OrConfig<T> for Result<T, E> {
    fn or_config(self) -> Result<T, Error> {
        self.map_err(|e| Error::Config(e.into()))
    }
}

/// The exit code for an error: the first `Error` in its chain decides, anything else is 1.
pub fn code_for(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>())
        .map_or(FAILURE, Error::exit_code)
}

pub fn to_exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_are_distinct_and_mapped() {
        let all = [OK, FAILURE, USAGE, BUSY, GATE, UNHEALTHY, INCONSISTENT];
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        assert_eq!(code_for(&Error::Busy("x".into()).into()), BUSY);
        assert_eq!(code_for(&Error::Gate("x".into()).into()), GATE);
        assert_eq!(code_for(&Error::Unhealthy("x".into()).into()), UNHEALTHY);
        assert_eq!(
            code_for(&Error::Inconsistent("x".into()).into()),
            INCONSISTENT
        );
        assert_eq!(code_for(&Error::Config(anyhow::anyhow!("x")).into()), USAGE);
        assert_eq!(code_for(&anyhow::anyhow!("x")), FAILURE);
    }

    #[test]
    fn the_variant_decides_even_under_context() {
        let e: anyhow::Result<()> = Err(Error::config("bad key").into());
        let e = e.context("reading settings").unwrap_err();
        assert_eq!(code_for(&e), USAGE);
        assert_eq!(format!("{e:#}"), "reading settings: bad key");
        let e: anyhow::Error = Error::Busy("lock".into()).into();
        assert_eq!(code_for(&e.context("copy")), BUSY);
    }
}
