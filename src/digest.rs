//! SHA-256 of what lands, computed on the bytes as they stream to disk (no second read), and
//! of what `verify` reads back.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// A writer that hashes and counts every byte that reaches `inner`.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far and their SHA-256 (lowercase hex).
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex(&self.hasher.finalize()))
    }

    /// Runs `last` on the inner writer (an fsync), then [`Hashing::finish`].
    pub fn finish_into(
        mut self,
        last: impl FnOnce(&mut W) -> io::Result<()>,
    ) -> io::Result<(u64, String)> {
        last(&mut self.inner)?;
        Ok(self.finish())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Size and SHA-256 of everything `r` yields, read through `buf`.
pub fn sha256_of(mut r: impl Read, buf: &mut [u8]) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_reading_back_agree_with_the_known_digest() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let mut w = Hashing::new(Vec::new());
        w.write_all(b"a").unwrap();
        w.write_all(b"bc").unwrap();
        assert_eq!(w.finish(), (3, abc.to_owned()));
        let mut buf = [0u8; 2];
        assert_eq!(
            sha256_of(&b"abc"[..], &mut buf).unwrap(),
            (3, abc.to_owned())
        );
    }
}
