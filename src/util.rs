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

/// An in-process pipe of byte chunks between two threads: the writer fills a buffer of
/// `chunk` bytes and hands it over whole, at most `depth` waiting; the reader gives each one
/// back emptied when done with it, so the same few buffers go round. Against an OS pipe
/// (64 KiB in the kernel): no copy into and out of the kernel, and one hand-over per `chunk`
/// bytes instead of a wake-up of each side every 64 KiB.
///
/// The reader sees the end once the writer is dropped (what it wrote before its last
/// [`Write::flush`] is delivered; an unflushed buffer is not: a writer that stops on an error
/// does not flush, and its error is the one to report). Once the reader is gone, the next
/// hand-over (a full buffer, or a flush) fails with [`std::io::ErrorKind::BrokenPipe`], as a
/// pipe's write would; writes into the buffer before it succeed. Alive at once: up to `depth`
/// buffers waiting, one more being handed over, the writer's and the reader's.
pub fn byte_channel(chunk: usize, depth: usize) -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = std::sync::mpsc::sync_channel(depth);
    let (back_tx, back_rx) = std::sync::mpsc::channel();
    let chunk = chunk.max(1);
    (
        ChunkWriter {
            buf: Vec::with_capacity(chunk),
            chunk,
            tx,
            spare: back_rx,
        },
        ChunkReader {
            rx,
            back: back_tx,
            cur: Vec::new(),
            pos: 0,
        },
    )
}

/// The writing end of [`byte_channel`].
pub struct ChunkWriter {
    buf: Vec<u8>,
    chunk: usize,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl ChunkWriter {
    /// Hands the buffer over (waits while `depth` buffers wait already).
    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = match self.spare.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(self.chunk),
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.tx.send(full).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the reading side of the download stopped",
            )
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.hand_over()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over()
    }
}

/// The reading end of [`byte_channel`].
pub struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    back: std::sync::mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let have = std::io::BufRead::fill_buf(self)?;
        let n = have.len().min(out.len());
        out[..n].copy_from_slice(&have[..n]);
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl std::io::BufRead for ChunkReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    self.pos = 0;
                    if done.capacity() > 0 {
                        // The writer may be gone: then the buffer is simply dropped.
                        let _ = self.back.send(done);
                    }
                }
                // The writer is gone: the end.
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.cur[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.cur.len());
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
    fn a_byte_channel_delivers_every_byte_in_order_then_the_end_and_reports_a_gone_reader() {
        // Odd sizes on both sides, buffers going round (depth 2), the reader on another thread.
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut w, mut r) = byte_channel(1000, 2);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut small = [0u8; 333];
            loop {
                let n = r.read(&mut small).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&small[..n]);
            }
            got
        });
        for piece in data.chunks(4097) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        assert_eq!(reader.join().unwrap(), data);

        // What was not flushed when the writer went is not delivered (a writer that failed).
        let (mut w, mut r) = byte_channel(8, 4);
        w.write_all(b"12345678abc").unwrap();
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"12345678");

        // The reader gone: the next hand-over is a broken pipe.
        let (mut w, r) = byte_channel(4, 1);
        drop(r);
        let e = w.write_all(b"abcdefgh").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        let (mut w, r) = byte_channel(4, 1);
        w.write_all(b"ab").unwrap();
        drop(r);
        assert_eq!(
            w.flush().unwrap_err().kind(),
            std::io::ErrorKind::BrokenPipe
        );
    }

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
