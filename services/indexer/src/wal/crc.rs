//! A writer that keeps the crc32 of what passed through it, for the snapshot's trailing checksum.

use std::io::{self, Write};

/// Passes writes to `inner` and hashes exactly the bytes it accepted.
pub(super) struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// The crc32 of everything written so far.
    pub(super) fn crc(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    pub(super) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
