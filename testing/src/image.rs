//! OCI images generated on disk in the OCI image layout, for skopeo's `oci:`
//! transport to push: deterministic pseudo-random content from a seed,
//! layers streamed to disk so a 1 GiB layer never sits in memory.
//!
//! Layers are real `tar+gzip` (a tar with one file, in gzip "stored"
//! deflate blocks), so clients that unpack or check diff IDs accept them and
//! skopeo pushes them unchanged: it would gzip an uncompressed layer on the
//! way to a registry and the manifest digest would no longer match.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::digest::{Digest, HashingWriter, sha256_bytes};

/// `application/vnd.oci.image.manifest.v1+json`.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.config.v1+json`.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.oci.image.layer.v1.tar+gzip`.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The annotation that names a tag in an OCI layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be written or read.
    #[error("failed to write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// `index.json` is not the JSON this module writes.
    #[error("{} is not an OCI index: {source}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// The parse failure.
        #[source]
        source: serde_json::Error,
    },
    /// A tar entry cannot hold this many bytes.
    #[error("a layer of {size} bytes is over the 8 GiB a ustar header can describe")]
    LayerTooLarge {
        /// The requested payload size.
        size: u64,
    },
}

/// Result of writing images.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A blob in the layout, described as a manifest would reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The blob's media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Blob {
    /// The OCI descriptor of this blob.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An operating system and CPU architecture pair, e.g. `linux/arm64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `os`, e.g. `linux`.
    pub os: String,
    /// `architecture`, e.g. `amd64`.
    pub architecture: String,
}

impl Platform {
    /// `os`/`architecture`.
    pub fn new(os: &str, architecture: &str) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
        }
    }
}

/// Everything one image consists of.
#[derive(Debug, Clone)]
pub struct ImageDigests {
    /// The manifest blob (its digest is the image digest).
    pub manifest: Blob,
    /// The config blob.
    pub config: Blob,
    /// The compressed layer blobs, bottom first.
    pub layers: Vec<Blob>,
    /// The digests of the uncompressed layers, as the config lists them.
    pub diff_ids: Vec<String>,
}

/// A multi-platform image index and its images.
#[derive(Debug, Clone)]
pub struct IndexDigests {
    /// The index blob (its digest is the image digest).
    pub index: Blob,
    /// One image per platform, in index order.
    pub images: Vec<(Platform, ImageDigests)>,
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Creates an empty layout in `dir` (created if missing), or opens the
    /// one already there.
    pub fn new(dir: &Path) -> Result<Self> {
        let layout = Self { dir: dir.to_owned() };
        create_dir(&layout.blobs_dir())?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_file(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = layout.index_path();
        if !index.exists() {
            let empty = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
            write_file(&index, empty.to_string().as_bytes())?;
        }
        Ok(layout)
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The skopeo reference of `tag` in this layout: `oci:<dir>:<tag>`.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    /// The file holding the blob `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs_dir().join(digest.trim_start_matches("sha256:"))
    }

    /// Writes a `linux/amd64` image whose layers carry `layer_sizes` bytes of
    /// content each (the tar and gzip framing add a little), all derived from
    /// `seed`, and tags it `tag` (replacing an earlier image of that tag).
    pub fn add_image(&self, tag: &str, layer_sizes: &[u64], seed: u64) -> Result<ImageDigests> {
        let image = self.write_image(&Platform::new("linux", "amd64"), layer_sizes, seed)?;
        self.tag(tag, &image.manifest, None)?;
        Ok(image)
    }

    /// Writes one image per platform (each with its own content) and an
    /// image index over them, and tags the index `tag`.
    pub fn add_index(
        &self,
        tag: &str,
        platforms: &[(&str, &str)],
        layer_sizes: &[u64],
        seed: u64,
    ) -> Result<IndexDigests> {
        let mut images = Vec::with_capacity(platforms.len());
        for (position, (os, architecture)) in platforms.iter().enumerate() {
            let platform = Platform::new(os, architecture);
            let image = self.write_image(&platform, layer_sizes, mix(seed, 1000 + position as u64))?;
            images.push((platform, image));
        }
        let manifests: Vec<Value> = images
            .iter()
            .map(|(platform, image)| {
                let mut descriptor = image.manifest.descriptor();
                descriptor["platform"] = json!({"architecture": platform.architecture, "os": platform.os});
                descriptor
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let index = self.write_json_blob(OCI_INDEX, &index)?;
        self.tag(tag, &index, None)?;
        Ok(IndexDigests { index, images })
    }

    /// Writes `size` bytes of seeded pseudo-random content as a blob of
    /// `media_type`, streaming it to disk.
    pub fn add_blob(&self, media_type: &str, size: u64, seed: u64) -> Result<Blob> {
        let temporary = self.temporary_blob_path();
        let digest = write_random_file(&temporary, size, seed)?;
        self.commit_blob(&temporary, media_type, digest)
    }

    /// Writes `value` as a JSON blob.
    pub fn write_json_blob(&self, media_type: &str, value: &Value) -> Result<Blob> {
        let bytes = serde_json::to_vec(value).expect("a JSON value serializes");
        let digest = sha256_bytes(&bytes);
        let path = self.blob_path(&digest);
        write_file(&path, &bytes)?;
        Ok(Blob {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
        })
    }

    /// Points `tag` at `manifest` in `index.json`, replacing an earlier
    /// entry with that tag; `platform` is recorded if given.
    pub fn tag(&self, tag: &str, manifest: &Blob, platform: Option<&Platform>) -> Result<()> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let mut index: Value = serde_json::from_slice(&bytes).map_err(|source| Error::Index {
            path: path.clone(),
            source,
        })?;
        let mut descriptor = manifest.descriptor();
        descriptor["annotations"] = json!({REF_NAME: tag});
        if let Some(platform) = platform {
            descriptor["platform"] = json!({"architecture": platform.architecture, "os": platform.os});
        }
        let manifests = index["manifests"].as_array_mut().ok_or_else(|| Error::Index {
            path: path.clone(),
            source: serde::de::Error::custom("no manifests array"),
        })?;
        manifests.retain(|entry| entry["annotations"][REF_NAME] != tag);
        manifests.push(descriptor);
        write_file(&path, index.to_string().as_bytes())
    }

    fn write_image(&self, platform: &Platform, layer_sizes: &[u64], seed: u64) -> Result<ImageDigests> {
        let mut layers = Vec::with_capacity(layer_sizes.len());
        let mut diff_ids = Vec::with_capacity(layer_sizes.len());
        for (position, size) in layer_sizes.iter().enumerate() {
            let (layer, diff_id) = self.write_layer(*size, mix(seed, position as u64), position)?;
            layers.push(layer);
            diff_ids.push(diff_id);
        }
        let config = json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Env": [format!("TESTING_SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.write_json_blob(OCI_CONFIG, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = self.write_json_blob(OCI_MANIFEST, &manifest)?;
        Ok(ImageDigests {
            manifest,
            config,
            layers,
            diff_ids,
        })
    }

    /// Streams a tar with one file of `size` seeded bytes through gzip to a
    /// blob; returns the blob and the diff ID (digest of the tar).
    fn write_layer(&self, size: u64, seed: u64, position: usize) -> Result<(Blob, String)> {
        let temporary = self.temporary_blob_path();
        let io_error = |source| Error::Io {
            path: temporary.clone(),
            source,
        };
        let file = File::create(&temporary).map_err(io_error)?;
        let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
        let mut tar = HashingWriter::new(StoredGzip::new(compressed).map_err(io_error)?);
        let header = tar_header(&format!("layer-{position}.bin"), size)?;
        tar.write_all(&header).map_err(io_error)?;
        copy_random(&mut tar, size, seed).map_err(io_error)?;
        let padding = (512 - size % 512) % 512;
        tar.write_all(&vec![0; padding as usize + 1024]).map_err(io_error)?;
        let (gzip, diff_id) = tar.finish();
        let (mut file, digest) = gzip.finish().map_err(io_error)?.finish();
        file.flush().map_err(io_error)?;
        drop(file);
        let blob = self.commit_blob(&temporary, OCI_LAYER_GZIP, digest)?;
        Ok((blob, diff_id.digest))
    }

    fn commit_blob(&self, temporary: &Path, media_type: &str, digest: Digest) -> Result<Blob> {
        let path = self.blob_path(&digest.digest);
        fs::rename(temporary, &path).map_err(|source| Error::Io { path, source })?;
        Ok(Blob {
            media_type: media_type.to_owned(),
            digest: digest.digest,
            size: digest.size,
        })
    }

    fn temporary_blob_path(&self) -> PathBuf {
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).expect("the OS has randomness");
        self.blobs_dir()
            .join(format!(".partial-{}", crate::digest::hex(&nonce)))
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }
}

/// Writes `size` bytes of content derived from `seed` to `path`, streaming,
/// and returns its digest: the "one big blob" for 1 GiB transfers.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> Result<Digest> {
    let io_error = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::create(path).map_err(io_error)?;
    let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    copy_random(&mut writer, size, seed).map_err(io_error)?;
    let (mut file, digest) = writer.finish();
    file.flush().map_err(io_error)?;
    Ok(digest)
}

/// `size` bytes of content derived from `seed`, in memory: for small blobs.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size);
    copy_random(&mut bytes, size as u64, seed).expect("writing to a Vec cannot fail");
    bytes
}

/// Writes `size` bytes of a keystream keyed by `seed`.
///
/// NB: the keystream is AES-128-GCM over zeros, computed by ring's assembly,
/// because this crate builds unoptimised in tests: a Rust generator here
/// makes a 1 GiB layer take half a minute.
fn copy_random(writer: &mut impl Write, size: u64, seed: u64) -> io::Result<()> {
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key_material = ring::digest::digest(&ring::digest::SHA256, &mix(seed, 0x5eed).to_le_bytes());
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key_material.as_ref()[..16]).expect("a 16-byte key"));
    let mut buffer = vec![0u8; 1 << 16];
    let mut remaining = size;
    let mut chunk: u64 = 0;
    while remaining > 0 {
        buffer.fill(0);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&chunk.to_le_bytes());
        // The tag is not content: only the sealed zeros are.
        let _tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buffer)
            .expect("sealing 64 KiB cannot fail");
        let take = remaining.min(buffer.len() as u64) as usize;
        writer.write_all(&buffer[..take])?;
        remaining -= take as u64;
        chunk += 1;
    }
    Ok(())
}

/// splitmix64 of `seed` and `salt`: independent streams from one seed.
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed.wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A ustar header for a regular file `name` of `size` bytes, mode 0644,
/// owned by root, dated the epoch.
fn tar_header(name: &str, size: u64) -> Result<[u8; 512]> {
    if size >= 1 << 33 {
        return Err(Error::LayerTooLarge { size });
    }
    let mut header = [0u8; 512];
    let mut field = |offset: usize, value: &[u8]| header[offset..offset + value.len()].copy_from_slice(value);
    field(0, name.as_bytes());
    field(100, b"0000644\0");
    field(108, b"0000000\0");
    field(116, b"0000000\0");
    field(124, format!("{size:011o}\0").as_bytes());
    field(136, b"00000000000\0");
    field(148, b"        ");
    field(156, b"0");
    field(257, b"ustar\0");
    field(263, b"00");
    field(265, b"root");
    field(297, b"root");
    let checksum: u32 = header.iter().map(|byte| u32::from(*byte)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    Ok(header)
}

/// A gzip encoder that emits deflate "stored" (uncompressed) blocks: valid
/// gzip at disk speed, and the content is random anyway.
struct StoredGzip<W: Write> {
    inner: W,
    block: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u64,
}

/// The most a stored deflate block holds.
const STORED_BLOCK: usize = 65_535;

impl<W: Write> StoredGzip<W> {
    fn new(mut inner: W) -> io::Result<Self> {
        // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        Ok(Self {
            inner,
            block: Vec::with_capacity(STORED_BLOCK),
            crc: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    fn write_block(&mut self, last: bool) -> io::Result<()> {
        let length = self.block.len() as u16;
        self.inner.write_all(&[u8::from(last)])?;
        self.inner.write_all(&length.to_le_bytes())?;
        self.inner.write_all(&(!length).to_le_bytes())?;
        self.inner.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.write_block(false)?;
        }
        self.write_block(true)?;
        self.inner.write_all(&self.crc.clone().finalize().to_le_bytes())?;
        self.inner.write_all(&(self.size as u32).to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for StoredGzip<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let take = bytes.len().min(STORED_BLOCK - self.block.len());
        let taken = &bytes[..take];
        self.crc.update(taken);
        self.size += take as u64;
        self.block.extend_from_slice(taken);
        if self.block.len() == STORED_BLOCK {
            self.write_block(false)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::digest::sha256_file;

    #[test]
    fn the_stored_gzip_of_a_layer_decompresses_to_the_tar_its_diff_id_names() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::new(dir.path()).unwrap();
        let image = layout.add_image("v1", &[70_000, 3], 7).unwrap();
        for (layer, diff_id) in image.layers.iter().zip(&image.diff_ids) {
            let path = layout.blob_path(&layer.digest);
            assert_eq!(sha256_file(&path).unwrap().digest, layer.digest);
            // gzip(1) is an independent decoder: it checks the CRC and length.
            let tar = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
            assert!(tar.status.success(), "{}", String::from_utf8_lossy(&tar.stderr));
            assert_eq!(&sha256_bytes(&tar.stdout), diff_id);
            let listing = Command::new("tar")
                .arg("-tvf")
                .arg("-")
                .arg("--")
                .output_with_stdin(&tar.stdout);
            assert!(listing.contains("layer-"), "{listing}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_image_and_another_seed_a_different_one() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::new(dir.path()).unwrap();
        let first = layout.add_image("a", &[1000], 1).unwrap();
        let again = layout.add_image("b", &[1000], 1).unwrap();
        let other = layout.add_image("c", &[1000], 2).unwrap();
        assert_eq!(first.manifest, again.manifest);
        assert_ne!(first.manifest, other.manifest);
    }

    #[test]
    fn the_index_lists_one_manifest_per_platform() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::new(dir.path()).unwrap();
        let index = layout
            .add_index("multi", &[("linux", "amd64"), ("linux", "arm64")], &[100], 3)
            .unwrap();
        let bytes = fs::read(layout.blob_path(&index.index.digest)).unwrap();
        let parsed: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed["manifests"][1]["platform"]["architecture"], "arm64");
        assert_ne!(index.images[0].1.manifest, index.images[1].1.manifest);
        let top: Value = serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(top["manifests"][0]["digest"], index.index.digest.as_str());
    }

    trait OutputWithStdin {
        fn output_with_stdin(&mut self, input: &[u8]) -> String;
    }

    impl OutputWithStdin for Command {
        fn output_with_stdin(&mut self, input: &[u8]) -> String {
            use std::process::Stdio;
            let mut child = self
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    }
}
