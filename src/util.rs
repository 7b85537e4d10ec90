//! Small I/O helpers shared by the archive and the commands.

use sha2::{Digest, Sha256};
use std::io::Write;

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

#[cfg(test)]
mod tests {
    use super::*;

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
