//! Small helpers shared by the archive, the warehouse and the commands: retries, sha256, and a
//! writer that counts and hashes.

use sha2::{Digest, Sha256};
use std::fmt::Display;
use std::io::{Read, Write};
use std::time::Duration;

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The hex sha256 of everything `r` yields, read to its end.
pub fn sha256_of(r: &mut impl Read) -> std::io::Result<String> {
    let mut h = Tally::hashing(std::io::sink());
    std::io::copy(r, &mut h)?;
    Ok(h.finish().0)
}

/// How transient failures are retried: `attempts` tries in all, waiting `initial`, then
/// twice as long each time, at most `max`, in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let f = 2u32.saturating_pow(n.saturating_sub(1).min(20));
        self.initial.saturating_mul(f).min(self.max)
    }
}

/// A failure after retries: the last error and how many attempts were made.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    pub attempts: u32,
}

impl<E> GaveUp<E> {
    /// " (gave up after N attempts)" when it was retried, else "".
    pub fn note(&self) -> String {
        if self.attempts > 1 {
            format!(" (gave up after {} attempts)", self.attempts)
        } else {
            String::new()
        }
    }
}

/// Runs `op` until it succeeds, fails with an error `transient` rejects, or the policy's
/// attempts are used up. Each retry is logged (shown under -v).
pub fn retry<T, E: Display>(
    policy: &RetryPolicy,
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, GaveUp<E>> {
    let mut n = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if n < policy.attempts.max(1) && transient(&e) => {
                let wait = policy.backoff(n);
                tracing::info!(
                    "{what}: {e}; retrying in {} ms (attempt {} of {})",
                    wait.as_millis(),
                    n + 1,
                    policy.attempts
                );
                std::thread::sleep(wait);
                n += 1;
            }
            Err(error) => return Err(GaveUp { error, attempts: n }),
        }
    }
}

/// Whether an I/O error is the kind a retry can cure (refused, reset, timed out).
pub fn transient_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | TimedOut
            | BrokenPipe
            | UnexpectedEof
            | Interrupted
            | NotConnected
    )
}

/// A writer that counts the bytes it passes on and, when asked, hashes them (sha256).
pub struct Tally<W> {
    pub inner: W,
    pub bytes: u64,
    hash: Option<Sha256>,
}

impl<W: Write> Tally<W> {
    /// Counts only.
    pub fn counting(inner: W) -> Self {
        Tally {
            inner,
            bytes: 0,
            hash: None,
        }
    }

    /// Counts and hashes.
    pub fn hashing(inner: W) -> Self {
        Tally {
            inner,
            bytes: 0,
            hash: Some(Sha256::new()),
        }
    }

    /// The hex sha256 of what was written (empty when not hashing), and the inner writer.
    pub fn finish(self) -> (String, W) {
        let hex = self
            .hash
            .map(|h| hex::encode(h.finalize()))
            .unwrap_or_default();
        (hex, self.inner)
    }
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The test venv's Python (tests/stack.sh makes it: fastavro, pyarrow, DuckDB), the judges of
/// what batchlayer writes; None with a note when it is not there, and under CI (or
/// `BATCHLAYER_REQUIRE_SERVICES`) a missing venv fails the test.
#[cfg(test)]
#[allow(clippy::print_stderr)]
pub fn judge_python(judge: &str) -> Option<std::path::PathBuf> {
    let Some(venv) = std::env::var_os("BATCHLAYER_TEST_VENV") else {
        let required = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var_os("BATCHLAYER_REQUIRE_SERVICES").is_some();
        assert!(
            !required,
            "BATCHLAYER_TEST_VENV is not set (tests/stack.sh makes the judges' venv)"
        );
        eprintln!("note: BATCHLAYER_TEST_VENV is not set; the {judge} judge did not run (source tests/stack.sh)");
        return None;
    };
    let python = std::path::PathBuf::from(venv).join("bin/python");
    assert!(python.exists(), "{} does not exist", python.display());
    Some(python)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_transient_errors_with_growing_waits_then_gives_up() {
        let p = RetryPolicy {
            attempts: 3,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(3),
        };
        assert_eq!(
            [p.backoff(1), p.backoff(2), p.backoff(3)],
            [1, 2, 3].map(Duration::from_millis)
        );
        let mut calls = 0;
        let r: Result<(), GaveUp<String>> = retry(
            &p,
            "op",
            |_| true,
            || {
                calls += 1;
                Err("down".to_string())
            },
        );
        let g = r.unwrap_err();
        assert_eq!((calls, g.attempts), (3, 3));
        assert_eq!(g.note(), " (gave up after 3 attempts)");
        let mut calls = 0;
        let r = retry(
            &p,
            "op",
            |_: &String| true,
            || {
                calls += 1;
                if calls < 2 {
                    Err("once".to_string())
                } else {
                    Ok(7)
                }
            },
        );
        assert_eq!(r.unwrap(), 7);
        let mut calls = 0;
        let r: Result<(), _> = retry(
            &p,
            "op",
            |_: &String| false,
            || {
                calls += 1;
                Err("fatal".to_string())
            },
        );
        assert_eq!((calls, r.unwrap_err().note()), (1, String::new()));
    }

    #[test]
    fn hashes_bytes_and_readers_alike() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        assert_eq!(sha256_of(&mut &b"abc"[..]).unwrap(), abc);
        let mut t = Tally::hashing(std::io::sink());
        t.write_all(b"ab").unwrap();
        t.write_all(b"c").unwrap();
        assert_eq!(t.finish().0, abc);
    }

    #[test]
    fn counts_and_hashes() {
        let mut t = Tally::hashing(Vec::new());
        t.write_all(b"abc").unwrap();
        assert_eq!(t.bytes, 3);
        let (hex, inner) = t.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut c = Tally::counting(std::io::sink());
        c.write_all(b"hello").unwrap();
        assert_eq!((c.bytes, c.finish().0), (5, String::new()));
    }
}
