//! Thin binary: parse, run, map the result to an exit code and one stderr line.

use batchlayer::error::{code_for, to_exit, OK};
use std::process::ExitCode;

fn main() -> ExitCode {
    allocator_settings();
    let cli = batchlayer::cli::Cli::parse_args();
    match batchlayer::run(cli) {
        Ok(_report) => to_exit(OK),
        Err(err) => {
            batchlayer::output::Output::error(&err);
            to_exit(code_for(&err))
        }
    }
}

/// glibc serves a block of `M_MMAP_THRESHOLD` bytes or more (128 KiB at first) with a mapping
/// of its own, returned to the system when freed; but each such block freed raises the
/// threshold to its size (up to 32 MiB), after which blocks that large come from the heap and
/// stay there, fragmented, as a run goes on. Publish's large buffers (row chunks, page
/// buffers, manifests, download and write buffers) come and go all run long: with the
/// sliding threshold its peak RSS grew from 51 MiB at 1M records to 93 MiB at 10M; with the
/// threshold fixed at 1 MiB (which stops the sliding), 49 and 57 (docs/lake-design.md, memory).
///
/// `M_TRIM_THRESHOLD` (128 KiB by default) is how much free memory at the top of a heap is
/// kept rather than given back. Publish's threads (one heap each) free and take back a few
/// hundred KiB per page they encode, so at 128 KiB each heap was trimmed (madvise) and
/// faulted back in all run long: 115,000 page faults for 10M records, 39,000 with 4 MiB kept
/// per heap (its system time 0.69 -> 0.53 s; peak RSS 74 -> 79 MiB, and 64 -> 67 at 1M).
///
/// `M_ARENA_MAX`: glibc gives threads heaps of their own, up to eight per core; each keeps its
/// own free memory (the trim threshold above, and fragments). Publish runs ten threads or so
/// on two cores: one heap per core (two at least) kept 10M records at 73 MiB instead of 82
/// (1M: 62-66, the same as before), with fewer page faults still (10M: 41,000 -> 34,000) and
/// no slower. Its threads mostly reuse buffers, so they seldom wait on a heap's lock.
///
/// A value set in the environment (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_ARENA_MAX`, or `mmap_threshold`, `trim_threshold`, `arena_max` in `GLIBC_TUNABLES`)
/// is left as it is. The crate's one `unsafe`.
#[allow(unsafe_code)]
fn allocator_settings() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        let cores = std::thread::available_parallelism()
            .map_or(2, |n| i32::try_from(n.get()).unwrap_or(i32::MAX));
        let unset = |env: &str, tunable: &str| {
            std::env::var_os(env).is_none() && !tunables.contains(tunable)
        };
        // SAFETY: mallopt takes two integers and sets a parameter of the allocator (under
        // its own lock); no pointer is passed and no memory changes hands.
        unsafe {
            if unset("MALLOC_MMAP_THRESHOLD_", "mmap_threshold") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
            if unset("MALLOC_TRIM_THRESHOLD_", "trim_threshold") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
            }
            if unset("MALLOC_ARENA_MAX", "arena_max") {
                libc::mallopt(libc::M_ARENA_MAX, cores.max(2));
            }
        }
    }
}
