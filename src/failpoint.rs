//! Failpoints: named places where a run stops or dies on purpose, for the integration tests.
//! Built only with the `testing` feature (every test build turns it on); without it `hit` is
//! always false and `crash` does nothing, so `cargo build` and `cargo install` have none.
//!
//! The name comes from the resolved settings (`BATCHLAYER_FAILPOINT`), armed once per run by
//! `lib.rs`; the commands only ask whether theirs is the one armed. The names:
//! * `ingest-before-commit`: ingest fails after storing its objects and manifest, before
//!   committing offsets.
//! * `ingest-crash-after-first-object`: ingest aborts the process once its first object is
//!   stored.
//! * `ingest-crash-after-epoch-reset`: `ingest --new-epoch` aborts the process once it has
//!   reset the group's offsets to the start of every partition.
//! * `copy-before-commit`: copy fails after a load's COPY, before its transaction commits.
//! * `copy-first-parallel-load-fails-last`: in a batch loaded in parallel (`copy --jobs N`),
//!   the load of the batch's first object fails once every other load of the batch has
//!   finished (committed or failed).

use crate::config::Settings;

/// The armed failpoint; one per process (a run arms it before its command starts).
#[cfg(feature = "testing")]
static ARMED: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

/// Arms the failpoint the settings name (none: disarms).
pub fn arm(s: &Settings) {
    #[cfg(feature = "testing")]
    set(s.failpoint.clone());
    #[cfg(not(feature = "testing"))]
    let _ = s;
}

#[cfg(feature = "testing")]
fn set(name: Option<String>) {
    *ARMED.write().unwrap_or_else(|e| e.into_inner()) = name;
}

/// Whether the failpoint `name` is armed.
#[inline]
pub fn hit(name: &str) -> bool {
    #[cfg(feature = "testing")]
    {
        ARMED.read().unwrap_or_else(|e| e.into_inner()).as_deref() == Some(name)
    }
    #[cfg(not(feature = "testing"))]
    {
        let _ = name;
        false
    }
}

/// Dies as `kill -9` would (no unwinding, no cleanup) when the failpoint `name` is armed.
#[inline]
pub fn crash(name: &str) {
    #[cfg(feature = "testing")]
    if hit(name) {
        std::process::abort();
    }
    #[cfg(not(feature = "testing"))]
    let _ = name;
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    #[test]
    fn only_the_armed_name_is_hit() {
        // A name no code checks, so unit tests running at the same time are not disturbed.
        set(Some("unit-test-only".into()));
        assert!(hit("unit-test-only"));
        assert!(!hit("copy-before-commit"));
        crash("copy-before-commit");
        set(None);
        assert!(!hit("unit-test-only"));
    }
}
