//! Exit codes, in one place (documented in the README).

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

/// The exit code for an error, by its kind.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<crate::Busy>().is_some() {
        BUSY
    } else if err.downcast_ref::<crate::GateRefused>().is_some() {
        GATE
    } else if err.downcast_ref::<crate::ConfigError>().is_some() {
        USAGE
    } else {
        FAILURE
    }
}

pub fn to_exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_mapped() {
        let all = [OK, FAILURE, USAGE, BUSY, GATE];
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        assert_eq!(code_for(&crate::Busy("x".into()).into()), BUSY);
        assert_eq!(code_for(&crate::GateRefused("x".into()).into()), GATE);
        assert_eq!(
            code_for(&crate::ConfigError(anyhow::anyhow!("x")).into()),
            USAGE
        );
        assert_eq!(code_for(&anyhow::anyhow!("x")), FAILURE);
    }
}
