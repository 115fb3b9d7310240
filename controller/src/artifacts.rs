//! The artifact store on disk: `DATA_DIR/artifacts/<sha256>`, one file per
//! distinct content, whatever app or version names it.
//!
//! Only verified bytes ever carry a digest's name: an upload is written to a
//! `.upload-*` temp file beside the store while it is hashed, fsynced, and
//! renamed into place only when its digest is the one announced. A temp file
//! left by a killed push is removed at the next start ([`Artifacts::sweep`]).
//! A stored file can still rot or be cut short behind our back, so
//! [`Artifacts::examine`] re-hashes a file before it is served (once per
//! change of the file: the result is remembered by size, inode, mtime and
//! ctime) and `fleet-controller check` re-hashes them all.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fleet_proto::transport::hex;

pub mod chunks;

/// Bytes of artifact chunks kept for the downloads that follow
/// ([`chunks::ChunkCache`]): 256 chunks of 64 KiB. Hosts of one batch
/// download about in step; one that falls behind reads from the page
/// cache instead.
pub const CHUNK_CACHE: usize = 16 << 20;

/// Prefix of an upload's temp file.
const UPLOAD_PREFIX: &str = ".upload-";
/// How many first bytes of an upload are looked at to tell an archive.
pub const HEAD: usize = 64 * 1024;
/// Size of a tar header block.
const TAR_BLOCK: usize = 512;

/// Why an artifact could not be written, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The disk under the data dir is full.
    #[error("the controller's disk is full ({what} {}); free space in its data dir and push again", .path.display())]
    DiskFull {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("the controller could not {what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The upload's bytes are not the ones its header announced.
    #[error(
        "the uploaded bytes have sha256 {actual}, not {expected} as announced; the file changed or was \
         corrupted in transit: push again"
    )]
    DigestMismatch {
        /// The announced digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
}

fn io_error(what: &'static str, path: &Path, source: std::io::Error) -> ArtifactError {
    if source.raw_os_error() == Some(28) {
        return ArtifactError::DiskFull {
            what,
            path: path.to_path_buf(),
        };
    }
    ArtifactError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a stored artifact looks like next to what its release says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Present, the right size, and its bytes hash to its digest.
    Intact,
    /// No file.
    Missing,
    /// Not the size the release says (cut short, or grown).
    WrongSize {
        /// Its size on disk.
        actual: u64,
    },
    /// The right size, other bytes.
    WrongDigest {
        /// The digest of the bytes on disk.
        actual: String,
    },
}

impl Condition {
    /// Whether the artifact can be served.
    pub fn is_intact(&self) -> bool {
        *self == Condition::Intact
    }

    /// One word for tables and JSON.
    pub fn word(&self) -> &'static str {
        match self {
            Condition::Intact => "ok",
            Condition::Missing => "missing",
            Condition::WrongSize { .. } => "truncated",
            Condition::WrongDigest { .. } => "corrupt",
        }
    }

    /// A sentence for an operator, given the size the release says.
    pub fn describe(&self, expected_size: u64) -> String {
        match self {
            Condition::Intact => "present and matches its digest".into(),
            Condition::Missing => "the file is missing".into(),
            Condition::WrongSize { actual } => format!("the file is {actual} bytes, not {expected_size}"),
            Condition::WrongDigest { actual } => format!("its bytes have sha256 {actual}"),
        }
    }
}

/// What identifies one version of a file cheaply: a file rewritten in place,
/// truncated or replaced changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: m.len(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// What a start-up sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// `.upload-*` files of pushes that never finished.
    pub uploads: Vec<String>,
    /// Artifacts no release names (a crash between writing the file and the
    /// release record, or between deleting a release and its file).
    pub orphans: Vec<String>,
}

/// The artifact directory and what is known to be verified in it.
pub struct Artifacts {
    dir: PathBuf,
    /// Digest → the stamp of the file last hashed to that digest.
    verified: Mutex<HashMap<String, Stamp>>,
    /// Held from "which artifacts are named?" to the file change that
    /// depends on the answer: by a push from the rename until its release is
    /// durable, by a release removal until its artifact is collected. So a
    /// collection never deletes a file a concurrent push just named.
    pub naming: tokio::sync::Mutex<()>,
    /// Chunks read for downloads, shared by the next ones.
    pub chunks: std::sync::Arc<chunks::ChunkCache>,
}

/// Whether `name` is a sha256 digest as the store names files.
fn is_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

impl Artifacts {
    /// The store under `data_dir` (created on first upload).
    pub fn new(data_dir: &Path) -> Artifacts {
        Artifacts {
            dir: data_dir.join("artifacts"),
            verified: Mutex::new(HashMap::new()),
            naming: tokio::sync::Mutex::new(()),
            chunks: std::sync::Arc::new(chunks::ChunkCache::new(CHUNK_CACHE)),
        }
    }

    /// The file of a digest.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stamp>> {
        // Plain inserts and removes: a poisoned lock still holds usable data.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an upload into a fresh temp file.
    pub fn upload(&self) -> Result<Upload, ArtifactError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error("create the artifact directory", &self.dir, e))?;
        let tmp = self.dir.join(format!("{UPLOAD_PREFIX}{}", crate::random_hex(8)));
        let file = std::fs::File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
        Ok(Upload {
            tmp,
            file,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
        })
    }

    /// Blocking. fsyncs the upload and, only if its bytes hash to `expected`,
    /// renames it over `<expected>` (replacing a missing or damaged copy) and
    /// fsyncs the directory. Otherwise the temp file is removed and nothing
    /// carries the digest's name.
    pub fn commit(&self, upload: Upload, expected: &str) -> Result<(), ArtifactError> {
        upload.file.sync_all().map_err(|e| io_error("fsync", &upload.tmp, e))?;
        let actual = hex(upload.hasher.clone().finish().as_ref());
        if actual != expected {
            // Dropping the upload removes its temp file.
            return Err(ArtifactError::DigestMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
        let dest = self.path(expected);
        let stamp = upload
            .file
            .metadata()
            .map(|m| Stamp::of(&m))
            .map_err(|e| io_error("stat", &upload.tmp, e))?;
        std::fs::rename(&upload.tmp, &dest).map_err(|e| io_error("rename", &dest, e))?;
        self.sync_dir()?;
        // A rename changes the ctime: remember the stamp the file has now.
        let stamp = std::fs::metadata(&dest).map(|m| Stamp::of(&m)).unwrap_or(stamp);
        self.verified().insert(expected.to_string(), stamp);
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), ArtifactError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("fsync", &self.dir, e))
    }

    /// Blocking. Compares the stored file of `sha256` with the release's
    /// digest and size; hashes it unless this very file was verified before.
    pub fn examine(&self, sha256: &str, size: u64) -> Result<Condition, ArtifactError> {
        let path = self.path(sha256);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Condition::Missing),
            Err(e) => return Err(io_error("stat", &path, e)),
        };
        if meta.len() != size {
            self.verified().remove(sha256);
            return Ok(Condition::WrongSize { actual: meta.len() });
        }
        let stamp = Stamp::of(&meta);
        if self.verified().get(sha256) == Some(&stamp) {
            return Ok(Condition::Intact);
        }
        let actual = hash_file(&path)?;
        if actual != sha256 {
            self.verified().remove(sha256);
            return Ok(Condition::WrongDigest { actual });
        }
        self.verified().insert(sha256.to_string(), stamp);
        Ok(Condition::Intact)
    }

    /// Blocking, at start before anything is served or pushed: removes every
    /// `.upload-*` temp file (a push that never finished; nothing verified
    /// it) and every artifact no release in `named` names. Other files are
    /// left alone and logged.
    pub fn sweep(&self, named: &HashSet<String>) -> Result<Sweep, ArtifactError> {
        let mut sweep = Sweep::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sweep),
            Err(e) => return Err(io_error("list", &self.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(UPLOAD_PREFIX) {
                std::fs::remove_file(entry.path()).map_err(|e| io_error("remove", &entry.path(), e))?;
                sweep.uploads.push(name);
            } else if is_digest(&name) && !named.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|e| io_error("remove", &entry.path(), e))?;
                sweep.orphans.push(name);
            } else if !is_digest(&name) {
                tracing::warn!(file = %entry.path().display(), "unexpected file in the artifact store; left alone");
            }
        }
        if !sweep.uploads.is_empty() || !sweep.orphans.is_empty() {
            self.sync_dir()?;
        }
        Ok(sweep)
    }

    /// Blocking. Removes the file of `sha256` (no release names it any
    /// more) and fsyncs the directory; a missing file is fine.
    pub fn remove(&self, sha256: &str) -> Result<(), ArtifactError> {
        let path = self.path(sha256);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("remove", &path, e)),
        }
        self.verified().remove(sha256);
        self.sync_dir()
    }
}

/// sha256 of a file, lowercase hex (blocking).
fn hash_file(path: &Path) -> Result<String, ArtifactError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_error("read", path, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// An upload being written; its temp file is removed unless it was renamed
/// into place.
pub struct Upload {
    tmp: PathBuf,
    file: std::fs::File,
    hasher: ring::digest::Context,
    size: u64,
}

impl Upload {
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        self.file.write_all(data).map_err(|e| io_error("write", &self.tmp, e))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a successful rename this path no longer exists; either way
        // no unverified upload is left behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Why the bytes of an upload are not a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotARelease {
    /// Nothing at all.
    #[error("the release file is empty (0 bytes); push the .tar.gz or .tar.zst your build made")]
    Empty,
    /// Compressed with the other format than its name says.
    #[error("the upload says {said} but its bytes are {is}; name the file after its format")]
    OtherFormat {
        /// The format in the header (from the file name).
        said: String,
        /// The format the bytes are.
        is: &'static str,
    },
    /// Neither gzip nor zstd.
    #[error(
        "the upload is not a {said} archive: its first bytes are neither gzip nor zstd; push a .tar.gz or .tar.zst"
    )]
    NotCompressed {
        /// The format in the header.
        said: String,
    },
    /// The compressed stream is broken or ends before one tar header.
    #[error("the upload is not a {said} archive: {detail}; push a .tar.gz or .tar.zst made with tar")]
    NotTar {
        /// The format in the header.
        said: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A tar archive with no entry: nothing to deploy.
    #[error("the {said} archive has no entries; a release needs at least one file")]
    NoEntries {
        /// The format in the header.
        said: String,
    },
}

/// Which format the first bytes of an archive are, by magic number.
pub fn sniff(first: &[u8]) -> Option<&'static str> {
    if first.starts_with(&[0x1f, 0x8b]) {
        Some("tar.gz")
    } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("tar.zst")
    } else {
        None
    }
}

/// Judges the first bytes of an upload announced as `format` (`head`: up to
/// [`HEAD`] bytes, all of them when the upload is shorter): the right
/// compression, and a valid first tar header once decompressed. The rest of
/// the archive is the agent's unpacker's business; this refuses what can
/// never be a release before it is stored.
pub fn check_head(format: &str, head: &[u8]) -> Result<(), NotARelease> {
    if head.is_empty() {
        return Err(NotARelease::Empty);
    }
    match sniff(head) {
        Some(f) if f == format => {}
        Some(is) => {
            return Err(NotARelease::OtherFormat {
                said: format.to_string(),
                is,
            })
        }
        None => {
            return Err(NotARelease::NotCompressed {
                said: format.to_string(),
            })
        }
    }
    let not_tar = |detail: String| NotARelease::NotTar {
        said: format.to_string(),
        detail,
    };
    let mut block = [0u8; TAR_BLOCK];
    let got = match format {
        "tar.gz" => read_up_to(flate2::read::GzDecoder::new(head), &mut block),
        _ => match zstd::stream::read::Decoder::with_buffer(head) {
            Ok(d) => read_up_to(d, &mut block),
            Err(e) => Err(e),
        },
    };
    let n = got.map_err(|e| not_tar(format!("its compressed stream is broken ({e})")))?;
    if n < TAR_BLOCK {
        return Err(not_tar(format!(
            "it decompresses to {n} bytes, less than one tar header ({TAR_BLOCK})"
        )));
    }
    if block.iter().all(|b| *b == 0) {
        return Err(NotARelease::NoEntries {
            said: format.to_string(),
        });
    }
    if !tar_checksum_ok(&block) {
        return Err(not_tar(
            "its decompressed bytes do not start with a tar header (bad header checksum)".into(),
        ));
    }
    Ok(())
}

/// Reads until `buf` is full or the stream ends. A stream cut short (`head`
/// is only the start of the upload) after some output counts as its end.
fn read_up_to(mut r: impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && n > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A tar header's checksum: the sum of its bytes with the checksum field
/// (offset 148, 8 bytes) counted as spaces, stored as octal in that field.
fn tar_checksum_ok(block: &[u8; TAR_BLOCK]) -> bool {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .map(|b| *b as char)
        .filter(|c| *c != '\0' && *c != ' ')
        .collect();
    let Ok(stored) = u32::from_str_radix(&text, 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == stored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with_one_file() -> Vec<u8> {
        let mut header = [0u8; TAR_BLOCK];
        header[..7].copy_from_slice(b"VERSION");
        header[100..108].copy_from_slice(b"0000644\0");
        header[124..136].copy_from_slice(b"00000000002\0");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let sum: u32 = header
            .iter()
            .enumerate()
            .map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) })
            .sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut tar = header.to_vec();
        let mut body = [0u8; TAR_BLOCK];
        body[..2].copy_from_slice(b"1\n");
        tar.extend_from_slice(&body);
        tar.extend_from_slice(&[0u8; 2 * TAR_BLOCK]);
        tar
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    fn zst(bytes: &[u8]) -> Vec<u8> {
        zstd::encode_all(bytes, 3).expect("zstd")
    }

    #[test]
    fn formats_are_sniffed_from_magic_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Some("tar.gz"));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some("tar.zst"));
        assert_eq!(sniff(b"ustar"), None);
    }

    #[test]
    fn real_archives_pass() {
        let tar = tar_with_one_file();
        assert!(tar_checksum_ok(tar[..TAR_BLOCK].try_into().expect("block")));
        assert_eq!(check_head("tar.gz", &gz(&tar)), Ok(()));
        assert_eq!(check_head("tar.zst", &zst(&tar)), Ok(()));
        // Only the start of a long upload is seen.
        let mut big = tar_with_one_file();
        let mut rng = fastrand::Rng::with_seed(7);
        big.extend((0..200_000).map(|_| rng.u8(..)));
        let long = gz(&big);
        assert!(long.len() > HEAD);
        assert_eq!(check_head("tar.gz", &long[..HEAD]), Ok(()));
    }

    #[test]
    fn what_is_not_a_release_is_named() {
        let tar = tar_with_one_file();
        assert_eq!(check_head("tar.gz", b""), Err(NotARelease::Empty));
        assert!(matches!(
            check_head("tar.gz", &tar),
            Err(NotARelease::NotCompressed { .. })
        ));
        assert!(matches!(
            check_head("tar.zst", &gz(&tar)),
            Err(NotARelease::OtherFormat { is: "tar.gz", .. })
        ));
        assert!(matches!(
            check_head("tar.gz", &zst(&tar)),
            Err(NotARelease::OtherFormat { is: "tar.zst", .. })
        ));
        // Compressed, but not a tar inside.
        for (fmt, bytes) in [
            ("tar.gz", gz(&[b'x'; 4096])),
            ("tar.zst", zst(&[b'x'; 4096])),
            ("tar.gz", gz(b"short")),
            ("tar.gz", vec![0x1f, 0x8b, 8, 0, 0, 0]),
            ("tar.zst", vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff]),
        ] {
            assert!(
                matches!(check_head(fmt, &bytes), Err(NotARelease::NotTar { .. })),
                "{fmt} {:?}",
                check_head(fmt, &bytes)
            );
        }
        assert!(matches!(
            check_head("tar.gz", &gz(&[0u8; 2 * TAR_BLOCK])),
            Err(NotARelease::NoEntries { .. })
        ));
    }

    #[test]
    fn only_verified_bytes_get_a_digest_name_and_sweep_removes_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Artifacts::new(dir.path());
        let good = b"release bytes";
        let digest = hex(ring::digest::digest(&ring::digest::SHA256, good).as_ref());

        let mut up = store.upload().expect("upload");
        up.write(good).expect("write");
        let wrong = "0".repeat(64);
        assert!(matches!(
            store.commit(up, &wrong),
            Err(ArtifactError::DigestMismatch { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path().join("artifacts")).expect("dir").count(), 0);

        let mut up = store.upload().expect("upload");
        up.write(good).expect("write");
        store.commit(up, &digest).expect("commit");
        assert_eq!(
            store.examine(&digest, good.len() as u64).expect("examine"),
            Condition::Intact
        );

        // Damage behind its back: same size, other bytes; then cut short.
        std::fs::write(store.path(&digest), b"RELEASE BYTES").expect("corrupt");
        assert!(matches!(
            store.examine(&digest, good.len() as u64).expect("examine"),
            Condition::WrongDigest { .. }
        ));
        std::fs::write(store.path(&digest), b"rel").expect("truncate");
        assert_eq!(
            store.examine(&digest, good.len() as u64).expect("examine"),
            Condition::WrongSize { actual: 3 }
        );
        // The same bytes pushed again repair it.
        let mut up = store.upload().expect("upload");
        up.write(good).expect("write");
        store.commit(up, &digest).expect("repair");
        assert_eq!(
            store.examine(&digest, good.len() as u64).expect("examine"),
            Condition::Intact
        );

        // A killed push's temp file and an artifact nothing names are swept.
        let up = store.upload().expect("upload");
        std::mem::forget(up);
        std::fs::write(store.path(&"b".repeat(64)), b"orphan").expect("orphan");
        let sweep = store.sweep(&HashSet::from([digest.clone()])).expect("sweep");
        assert_eq!(sweep.uploads.len(), 1);
        assert_eq!(sweep.orphans, vec!["b".repeat(64)]);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("artifacts"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![digest.clone()]);
        assert_eq!(store.examine(&"c".repeat(64), 1).expect("examine"), Condition::Missing);
    }
}
