//! Thin binary: parse, run, map the result to an exit code and one stderr line.

use batchlayer::error::{code_for, to_exit, OK};
use std::process::ExitCode;

fn main() -> ExitCode {
    fixed_mmap_threshold();
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
/// A threshold set in the environment (`MALLOC_MMAP_THRESHOLD_`, or `mmap_threshold` in
/// `GLIBC_TUNABLES`) is left as it is. The crate's one `unsafe`.
#[allow(unsafe_code)]
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"))
    {
        // SAFETY: mallopt takes two integers and sets a parameter of the allocator (under
        // its own lock); no pointer is passed and no memory changes hands.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}
