//! SHA-256 content digests (`sha256:<hex>`) of bytes, files and streams,
//! computed with ring.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use ring::digest::{Context, SHA256};

/// A content digest with the size of the content it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    /// `sha256:` followed by 64 lowercase hex digits.
    pub digest: String,
    /// The content length in bytes.
    pub size: u64,
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.digest)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    let mut hasher = Sha256::default();
    hasher.update(bytes);
    hasher.finish().digest
}

/// The digest and size of the file at `path`, read in chunks so files of
/// any size fit.
pub fn sha256_file(path: &Path) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::default();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buffer[..read]);
    }
}

/// A streaming SHA-256 that also counts bytes.
#[derive(Clone)]
pub struct Sha256 {
    context: Context,
    size: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self {
            context: Context::new(&SHA256),
            size: 0,
        }
    }
}

impl Sha256 {
    /// Adds `bytes` to the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// The digest of everything added so far.
    pub fn finish(self) -> Digest {
        Digest {
            digest: format!("sha256:{}", hex(self.context.finish().as_ref())),
            size: self.size,
        }
    }
}

/// A writer that hashes what passes through it to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    /// Hashes everything written to `inner` from now on.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::default(),
        }
    }

    /// The inner writer and the digest of what was written to it.
    pub fn finish(self) -> (W, Digest) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_published_sha256_vectors() {
        assert_eq!(
            sha256_bytes(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_bytes(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_hashing_writer_agrees_with_hashing_the_bytes() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        let (bytes, digest) = writer.finish();
        assert_eq!(digest.digest, sha256_bytes(&bytes));
        assert_eq!(digest.size, 11);
    }
}
