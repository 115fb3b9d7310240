//! The decompressed stream, bounded: a bomb hidden in headers or padding
//! stops at the limit instead of filling memory or time.

use std::fmt;
use std::io::{self, Read};

/// Marks the error a [`Bounded`] reader returns at its limit.
#[derive(Debug)]
pub(super) struct StreamLimit;

impl fmt::Display for StreamLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("decompressed archive exceeds its limit")
    }
}

impl std::error::Error for StreamLimit {}

/// A reader that fails once more than `left` bytes have been read.
pub(super) struct Bounded<R> {
    pub inner: R,
    pub left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| io::Error::other(StreamLimit))?;
        Ok(n)
    }
}
