//! Safe release unpacking: a `.tar.gz` or `.tar.zst` archive into a fresh
//! directory, refusing anything that could write outside it.
//!
//! The tar crate's own `unpack`/`unpack_in` are not used: their symlink
//! handling is where the known CVEs live. [`unpack`] walks the entries
//! itself and creates every file, directory and symlink with `std::fs`:
//!
//! - paths must be relative and free of `..`; a PAX or GNU long name that
//!   disagrees with the ustar name is refused ([`UnpackError::HeaderMismatch`]);
//! - nothing is ever written through a symlink: every ancestor of an entry
//!   inside `dest` is checked with `symlink_metadata`, and files are created
//!   with `O_CREAT|O_EXCL` (which does not follow a symlink at the final
//!   component either);
//! - symlinks must point inside `dest` (resolved lexically from the link's
//!   directory, with `..` only before the first name, so no other symlink
//!   can redirect a `..`); hard links must name a file already unpacked,
//!   which is copied;
//! - device nodes, fifos and setuid/setgid files are refused; modes are
//!   reduced to 0755/0644;
//! - entries and unpacked bytes are limited ([`Limits`]), and so is the
//!   decompressed stream as a whole, which stops decompression bombs hidden
//!   in headers;
//! - every file and directory written is fsynced, `dest` last.
//!
//! Architecture invariant: on any error `dest` is removed, so a release
//! directory either holds the whole archive or does not exist.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// How much an archive may unpack to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files, directories, links) in one archive.
    pub max_entries: u64,
    /// Most bytes of file contents written, in total.
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 100_000,
            max_unpacked_bytes: 4 << 30,
        }
    }
}

/// The compression around the tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gzip (`.tar.gz`).
    TarGz,
    /// zstd (`.tar.zst`).
    TarZst,
}

impl Format {
    /// The format named `tar.gz` or `tar.zst`; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "tar.gz" => Some(Format::TarGz),
            "tar.zst" => Some(Format::TarZst),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::TarGz => "tar.gz",
            Format::TarZst => "tar.zst",
        })
    }
}

/// What was unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries in the archive (files, directories, links).
    pub entries: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Why an archive was not unpacked. `dest` never exists after one of these
/// (except [`UnpackError::DestExists`], where it was there before).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{path} already exists; releases are unpacked into a new directory")]
    DestExists { path: PathBuf },
    #[error(
        "archive entry {entry:?} has a '..' component or names the release directory itself; refusing to unpack it"
    )]
    PathEscapesRelease { entry: String },
    #[error("archive entry {entry:?} is an absolute path; release archives must hold relative paths")]
    AbsolutePath { entry: String },
    #[error(
        "archive entry {entry:?} is a symlink to {target:?}, which is absolute, outside the release, or has '..' after a name"
    )]
    LinkEscapesRelease { entry: String, target: String },
    #[error("archive entry {entry:?} would be written through the symlink {link:?}; refusing to follow symlinks while unpacking")]
    ThroughSymlink { entry: String, link: String },
    #[error(
        "archive entry {entry:?} is a hard link to {target:?}, which is not a file unpacked earlier inside the release"
    )]
    HardLink { entry: String, target: String },
    #[error("archive entry {entry:?} is a {kind}; release archives may hold only files, directories and links")]
    SpecialFile { entry: String, kind: String },
    #[error("archive entry {entry:?} has the setuid or setgid bit; release archives may not")]
    SetId { entry: String },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("archive unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("archive is corrupt or truncated: {detail}")]
    Corrupt { detail: String },
    #[error("archive entry {entry:?}: its PAX or GNU long name disagrees with its tar header name; refusing an ambiguous archive")]
    HeaderMismatch { entry: String },
    #[error("disk full while writing {path}; free space and deploy again")]
    DiskFull { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Unpacks `archive` into `dest`, which must not exist; creates it (0755)
/// and removes it again on any error.
pub fn unpack(archive: &Path, format: Format, dest: &Path, limits: &Limits) -> Result<Summary, UnpackError> {
    crate::offload::blocking_step("unpacking a release");
    let file = File::open(archive).map_err(|e| io_error(archive, e))?;
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o755);
    if let Err(e) = builder.create(dest) {
        return Err(if e.kind() == io::ErrorKind::AlreadyExists {
            UnpackError::DestExists { path: dest.into() }
        } else {
            io_error(dest, e)
        });
    }
    match unpack_into(file, format, dest, limits) {
        Ok(summary) => Ok(summary),
        Err(e) => {
            // Ignored error: nothing better to report than `e`; a leftover is
            // refused by the next attempt with DestExists, naming the path.
            let _ = fs::remove_dir_all(dest);
            Err(e)
        }
    }
}

fn unpack_into(file: File, format: Format, dest: &Path, limits: &Limits) -> Result<Summary, UnpackError> {
    let input = BufReader::new(file);
    let decoded: Box<dyn Read> = match format {
        Format::TarGz => Box::new(flate2::read::GzDecoder::new(input)),
        Format::TarZst => Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(corrupt)?),
    };
    // Headers, padding and long names cost stream bytes but no written bytes;
    // allow a generous amount for them and no more.
    let stream_limit = limits
        .max_unpacked_bytes
        .saturating_add(limits.max_entries.saturating_mul(4096))
        .saturating_add(1 << 20);
    let mut archive = tar::Archive::new(Bounded {
        inner: decoded,
        left: stream_limit,
    });
    let mut unpacker = Unpacker {
        dest,
        limits,
        summary: Summary { entries: 0, bytes: 0 },
        dirs: BTreeSet::new(),
        stream_limit,
    };
    let entries = archive.entries().map_err(|e| unpacker.read_error(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unpacker.read_error(e))?;
        unpacker.summary.entries += 1;
        if unpacker.summary.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        unpacker.entry(&mut entry)?;
    }
    // A gzip trailer after the tar end blocks is still checked: drain it.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| unpacker.read_error(e))?;
    for dir in unpacker.dirs.iter().rev() {
        sync_dir(dir)?;
    }
    sync_dir(dest)?;
    Ok(unpacker.summary)
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    summary: Summary,
    /// Directories created or written into, fsynced at the end.
    dirs: BTreeSet<PathBuf>,
    stream_limit: u64,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let header = entry.header();
        if !same_name(&entry.path_bytes(), &header.path_bytes(), &header.as_old().name) {
            return Err(UnpackError::HeaderMismatch { entry: name });
        }
        if let (Some(full), Some(short)) = (entry.link_name_bytes(), header.link_name_bytes()) {
            if !same_name(&full, &short, &header.as_old().linkname) {
                return Err(UnpackError::HeaderMismatch { entry: name });
            }
        }
        let kind = header.entry_type();
        let mode = header.mode().map_err(corrupt)?;
        let rel = match relative(&entry.path_bytes(), &name)? {
            Some(rel) => rel,
            // "." or "./": the release directory itself; its mode is ours.
            None if kind == EntryType::Directory => return Ok(()),
            None => return Err(UnpackError::PathEscapesRelease { entry: name }),
        };
        match kind {
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            EntryType::Char => return special(name, "character device"),
            EntryType::Block => return special(name, "block device"),
            EntryType::Fifo => return special(name, "fifo"),
            EntryType::GNUSparse => return special(name, "GNU sparse file"),
            other => return special(name, &format!("entry of tar type {:?}", other.as_byte() as char)),
        }
        if mode & 0o6000 != 0 {
            return Err(UnpackError::SetId { entry: name });
        }
        let parent = self.prepare_parents(&rel, &name)?;
        let path = self.dest.join(&rel);
        match kind {
            EntryType::Directory => self.directory(&path, &name),
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.symlink(&rel, &path, &target, &name)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hard_link(&path, &target, &name)
            }
            _ => {
                let size = entry.size();
                self.file(&path, file_mode(mode), entry, size)
            }
        }?;
        self.dirs.insert(parent);
        Ok(())
    }

    /// Creates the missing directories above `rel` and checks that none of
    /// those that exist is a symlink; returns the parent directory.
    fn prepare_parents(&mut self, rel: &Path, name: &str) -> Result<PathBuf, UnpackError> {
        let mut dir = self.dest.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(dir);
        };
        for component in parent.components() {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(through(name, &dir, self.dest));
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(io_error(
                        &dir,
                        io::Error::other(format!("a file is in the way of archive entry {name:?}")),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_dir(&dir)?;
                    self.dirs.insert(dir.clone());
                }
                Err(e) => return Err(io_error(&dir, e)),
            }
        }
        Ok(dir)
    }

    fn directory(&mut self, path: &Path, name: &str) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(through(name, path, self.dest)),
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io_error(
                    path,
                    io::Error::other(format!(
                        "archive entry {name:?} is a directory but a file is already there"
                    )),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(path)?,
            Err(e) => return Err(io_error(path, e)),
        }
        self.dirs.insert(path.to_path_buf());
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, path: &Path, target: &[u8], name: &str) -> Result<(), UnpackError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let escapes = || UnpackError::LinkEscapesRelease {
            entry: name.to_owned(),
            target: shown.clone(),
        };
        let target_path = Path::new(OsStr::from_bytes(target));
        // Lexical resolution from the link's directory. `..` is allowed only
        // before the first name: the link's ancestors are real directories,
        // so leading `..` go up exactly as counted, but after a name that is
        // (or later becomes) a symlink the kernel applies `..` to wherever
        // that symlink leads: `up -> .` then `a -> up/..` would be `dest/..`.
        let mut depth = rel.components().count().saturating_sub(1);
        if target.is_empty() {
            return Err(escapes());
        }
        let mut named = false;
        for component in target_path.components() {
            match component {
                Component::Normal(_) => {
                    depth += 1;
                    named = true;
                }
                Component::CurDir => {}
                Component::ParentDir if named => return Err(escapes()),
                Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
                Component::RootDir | Component::Prefix(_) => return Err(escapes()),
            }
        }
        self.make_room(path, name)?;
        std::os::unix::fs::symlink(target_path, path).map_err(|e| io_error(path, e))
    }

    fn hard_link(&mut self, path: &Path, target: &[u8], name: &str) -> Result<(), UnpackError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let refused = || UnpackError::HardLink {
            entry: name.to_owned(),
            target: shown.clone(),
        };
        // Hard link targets are relative to the archive root.
        let rel = match relative(target, &shown) {
            Ok(Some(rel)) => rel,
            _ => return Err(refused()),
        };
        let mut source_path = self.dest.to_path_buf();
        for component in rel.components() {
            source_path.push(component);
            match fs::symlink_metadata(&source_path) {
                Ok(meta) if meta.file_type().is_symlink() => return Err(refused()),
                Ok(_) => {}
                Err(_) => return Err(refused()),
            }
        }
        let meta = fs::symlink_metadata(&source_path).map_err(|_| refused())?;
        if !meta.is_file() || source_path == path {
            return Err(refused());
        }
        let mut source = File::open(&source_path).map_err(|e| io_error(&source_path, e))?;
        let size = meta.len();
        self.file(path, meta.permissions().mode() & 0o777, &mut source, size)
    }

    /// Writes `size` bytes of `data` to a new file at `path`.
    fn file(&mut self, path: &Path, mode: u32, data: &mut dyn Read, size: u64) -> Result<(), UnpackError> {
        let name = path.display().to_string();
        self.make_room(path, &name)?;
        // create_new is O_CREAT|O_EXCL: it fails rather than follow a symlink.
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = data.read(&mut buf).map_err(|e| self.read_error(e))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            self.summary.bytes += n as u64;
            if self.summary.bytes > self.limits.max_unpacked_bytes {
                return Err(UnpackError::TooLarge {
                    limit: self.limits.max_unpacked_bytes,
                });
            }
            out.write_all(&buf[..n]).map_err(|e| io_error(path, e))?;
        }
        if written != size {
            return Err(UnpackError::Corrupt {
                detail: format!("{name}: {written} of {size} bytes present"),
            });
        }
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(path, e))?;
        out.sync_all().map_err(|e| io_error(path, e))
    }

    /// Removes a file or symlink at `path` left by an earlier entry of the
    /// same name (later entries win, as with tar); refuses a directory.
    fn make_room(&self, path: &Path, name: &str) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Err(io_error(
                path,
                io::Error::other(format!(
                    "archive entry {name:?} is not a directory but a directory is already there"
                )),
            )),
            Ok(_) => fs::remove_file(path).map_err(|e| io_error(path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    /// An error reading the archive: a limit hit, or corruption.
    fn read_error(&self, e: io::Error) -> UnpackError {
        if e.get_ref().is_some_and(|inner| inner.is::<StreamLimit>()) {
            UnpackError::TooLarge {
                limit: self.stream_limit,
            }
        } else {
            corrupt(e)
        }
    }
}

/// The entry's path as a relative path of normal components; `None` when it
/// names the root itself.
fn relative(bytes: &[u8], name: &str) -> Result<Option<PathBuf>, UnpackError> {
    let path = Path::new(OsStr::from_bytes(bytes));
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::PathEscapesRelease { entry: name.to_owned() }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::AbsolutePath { entry: name.to_owned() })
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Whether the full (PAX or GNU long) name agrees with the header's own
/// name: equal once normalized, or the header holds a truncated prefix of it
/// (its 100-byte name field is full, as writers do for long names).
fn same_name(full: &[u8], short: &[u8], field: &[u8]) -> bool {
    let norm = |b: &[u8]| -> Vec<u8> {
        let mut b = b;
        while let Some(rest) = b.strip_prefix(b"./") {
            b = rest;
        }
        while let Some(rest) = b.strip_suffix(b"/") {
            b = rest;
        }
        b.to_vec()
    };
    full == short || norm(full) == norm(short) || (!field.contains(&0) && full.starts_with(short))
}

/// 0755 when the owner may execute, else 0644.
fn file_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

fn special(entry: String, kind: &str) -> Result<(), UnpackError> {
    Err(UnpackError::SpecialFile {
        entry,
        kind: kind.to_owned(),
    })
}

fn through(name: &str, link: &Path, dest: &Path) -> UnpackError {
    UnpackError::ThroughSymlink {
        entry: name.to_owned(),
        link: link.strip_prefix(dest).unwrap_or(link).display().to_string(),
    }
}

fn create_dir(path: &Path) -> Result<(), UnpackError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|e| io_error(path, e))?;
    // The umask may have taken bits away; releases are 0755 everywhere.
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|e| io_error(path, e))
}

fn sync_dir(path: &Path) -> Result<(), UnpackError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error(path, e))
}

fn corrupt(e: io::Error) -> UnpackError {
    UnpackError::Corrupt { detail: e.to_string() }
}

fn io_error(path: &Path, e: io::Error) -> UnpackError {
    const ENOSPC: i32 = 28;
    if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(ENOSPC) {
        UnpackError::DiskFull { path: path.into() }
    } else {
        UnpackError::Io {
            path: path.into(),
            source: e,
        }
    }
}

/// Marks the error a [`Bounded`] reader returns at its limit.
#[derive(Debug)]
struct StreamLimit;

impl fmt::Display for StreamLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("decompressed archive exceeds its limit")
    }
}

impl std::error::Error for StreamLimit {}

/// A reader that fails once more than `left` bytes have been read.
struct Bounded<R> {
    inner: R,
    left: u64,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testkit::Tar;
    use std::os::unix::fs::MetadataExt;

    struct Run {
        _dir: tempfile::TempDir,
        dest: PathBuf,
        result: Result<Summary, UnpackError>,
    }

    fn run_with(archive: &[u8], format: Format, limits: &Limits) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.archive");
        fs::write(&path, archive).unwrap();
        let dest = dir.path().join("release");
        let result = unpack(&path, format, &dest, limits);
        Run {
            _dir: dir,
            dest,
            result,
        }
    }

    fn run(archive: &[u8]) -> Run {
        run_with(archive, Format::TarGz, &Limits::default())
    }

    /// Asserts the run failed with `pattern` and left nothing behind.
    macro_rules! refused {
        ($run:expr, $pattern:pat) => {{
            let run = $run;
            match &run.result {
                Err(e @ $pattern) => assert!(!e.to_string().is_empty()),
                other => panic!("expected {}, got {other:?}", stringify!($pattern)),
            }
            assert!(!run.dest.exists(), "{} left behind", run.dest.display());
        }};
    }

    fn good() -> Tar {
        let long = format!("deep/{}", "x".repeat(150));
        let mut tar = Tar::new()
            .dir("bin/", 0o755)
            .file("bin/app", 0o4755 & 0o777, b"#!/bin/sh\necho hi\n")
            .file("etc/app.toml", 0o666, b"port = 1\n")
            .link(EntryType::Symlink, "bin/config", "../etc/app.toml")
            .link(EntryType::Link, "etc/copy.toml", "etc/app.toml");
        // A long name through the builder (GNU long name): not a mismatch.
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        tar.0.append_data(&mut h, &long, &b"long"[..]).unwrap();
        tar
    }

    fn check_good(run: &Run) {
        let summary = run.result.as_ref().unwrap();
        assert_eq!(summary.entries, 6);
        let d = &run.dest;
        assert_eq!(fs::read(d.join("bin/app")).unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(fs::metadata(d.join("bin/app")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(d.join("etc/app.toml")).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(fs::metadata(d.join("etc")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(d).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(d.join("bin/config")).unwrap(),
            Path::new("../etc/app.toml")
        );
        assert_eq!(fs::read(d.join("bin/config")).unwrap(), b"port = 1\n");
        assert_eq!(fs::read(d.join("etc/copy.toml")).unwrap(), b"port = 1\n");
        assert_eq!(fs::read(d.join(format!("deep/{}", "x".repeat(150)))).unwrap(), b"long");
        assert_eq!(summary.bytes, 18 + 9 + 9 + 4);
    }

    #[test]
    fn good_archive_unpacks_gz_and_zst() {
        check_good(&run(&good().gz()));
        let zst = zstd::encode_all(&good().bytes()[..], 3).unwrap();
        check_good(&run_with(&zst, Format::TarZst, &Limits::default()));
    }

    #[test]
    fn enospc_is_disk_full() {
        let e = io_error(Path::new("/r/f"), io::Error::from_raw_os_error(28));
        assert!(matches!(e, UnpackError::DiskFull { .. }), "{e}");
        let e = io_error(Path::new("/r/f"), io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(e, UnpackError::Io { .. }), "{e}");
    }

    #[test]
    fn format_names() {
        assert_eq!(Format::from_name("tar.gz"), Some(Format::TarGz));
        assert_eq!(Format::from_name("tar.zst"), Some(Format::TarZst));
        assert_eq!(Format::from_name("zip"), None);
    }

    #[test]
    fn existing_dest_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        fs::write(&path, good().gz()).unwrap();
        let dest = dir.path().join("release");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("keep"), b"x").unwrap();
        let err = unpack(&path, Format::TarGz, &dest, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::DestExists { .. }), "{err}");
        assert!(dest.join("keep").exists());
    }

    #[test]
    fn absolute_path_is_refused() {
        refused!(
            run(&Tar::new().file("ok", 0o644, b"x").file("/tmp/evil", 0o644, b"x").gz()),
            UnpackError::AbsolutePath { .. }
        );
    }

    #[test]
    fn dot_dot_is_refused() {
        refused!(
            run(&Tar::new().file("../escape", 0o644, b"x").gz()),
            UnpackError::PathEscapesRelease { .. }
        );
        refused!(
            run(&Tar::new().file("a/../../escape", 0o644, b"x").gz()),
            UnpackError::PathEscapesRelease { .. }
        );
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        // CVE-2018-20990 class: symlink to /etc, then a file through it.
        let tar =
            Tar::new()
                .link(EntryType::Symlink, "link", "/etc")
                .file("link/passwd", 0o644, b"root::0:0::/:/bin/sh\n");
        refused!(run(&tar.gz()), UnpackError::LinkEscapesRelease { .. });
        // Even a symlink that stays inside is never written through.
        let tar = Tar::new()
            .dir("sub/", 0o755)
            .link(EntryType::Symlink, "link", "sub")
            .file("link/passwd", 0o644, b"x");
        refused!(run(&tar.gz()), UnpackError::ThroughSymlink { .. });
    }

    #[test]
    fn directory_through_a_symlink_is_refused() {
        // CVE-2026-33056 class: symlink, then a directory entry whose mode
        // would be applied through it.
        let tar = Tar::new().link(EntryType::Symlink, "d", "../..").dir("d/", 0o777);
        refused!(run(&tar.gz()), UnpackError::LinkEscapesRelease { .. });
        let tar = Tar::new()
            .dir("sub/", 0o755)
            .link(EntryType::Symlink, "d", "sub")
            .dir("d/", 0o777);
        refused!(run(&tar.gz()), UnpackError::ThroughSymlink { .. });
        let tar = Tar::new()
            .dir("sub/", 0o755)
            .link(EntryType::Symlink, "d", "sub")
            .dir("d/inner/", 0o777);
        refused!(run(&tar.gz()), UnpackError::ThroughSymlink { .. });
        let tar = Tar::new().link(EntryType::Symlink, "d", "a/../../x");
        refused!(run(&tar.gz()), UnpackError::LinkEscapesRelease { .. });
    }

    #[test]
    fn dot_dot_after_a_symlink_in_a_link_target_is_refused() {
        // `up/..` counts as inside lexically, but the kernel resolves `up`
        // first, so `a` pointed at dest's parent (the fuzz target's
        // resolution check flags it). Either order of the two links, and
        // through a subdirectory too.
        let tar = Tar::new()
            .link(EntryType::Symlink, "up", ".")
            .link(EntryType::Symlink, "a", "up/..");
        refused!(run(&tar.gz()), UnpackError::LinkEscapesRelease { .. });
        let tar = Tar::new()
            .link(EntryType::Symlink, "a", "up/..")
            .link(EntryType::Symlink, "up", ".");
        refused!(run(&tar.gz()), UnpackError::LinkEscapesRelease { .. });
        let tar = Tar::new()
            .dir("sub/", 0o755)
            .link(EntryType::Symlink, "sub/top", "..")
            .link(EntryType::Symlink, "sub/a", "top/../x");
        refused!(run(&tar.gz()), UnpackError::LinkEscapesRelease { .. });
        // Leading `..`, `.` and links to the release root stay allowed.
        let tar = Tar::new()
            .dir("sub/", 0o755)
            .file("x", 0o644, b"x")
            .link(EntryType::Symlink, "up", ".")
            .link(EntryType::Symlink, "sub/top", "./..")
            .link(EntryType::Symlink, "sub/x", "../x");
        let run = run(&tar.gz());
        assert_eq!(run.result.as_ref().unwrap().entries, 5);
        assert_eq!(fs::read(run.dest.join("sub/x")).unwrap(), b"x");
        assert_eq!(fs::read(run.dest.join("sub/top/x")).unwrap(), b"x");
    }

    #[test]
    fn hard_links_outside_are_refused() {
        refused!(
            run(&Tar::new().link(EntryType::Link, "passwd", "/etc/passwd").gz()),
            UnpackError::HardLink { .. }
        );
        refused!(
            run(&Tar::new().link(EntryType::Link, "x", "../x").gz()),
            UnpackError::HardLink { .. }
        );
        // A hard link to something not unpacked (yet) is refused too.
        refused!(
            run(&Tar::new().link(EntryType::Link, "x", "y").gz()),
            UnpackError::HardLink { .. }
        );
    }

    #[test]
    fn special_files_are_refused() {
        refused!(
            run(&Tar::new().special(EntryType::Fifo, "fifo").gz()),
            UnpackError::SpecialFile { .. }
        );
        refused!(
            run(&Tar::new().special(EntryType::Char, "null").gz()),
            UnpackError::SpecialFile { .. }
        );
        refused!(
            run(&Tar::new().special(EntryType::Block, "sda").gz()),
            UnpackError::SpecialFile { .. }
        );
    }

    #[test]
    fn setuid_and_setgid_are_refused() {
        refused!(
            run(&Tar::new().file("su", 0o4755, b"x").gz()),
            UnpackError::SetId { .. }
        );
        refused!(
            run(&Tar::new().file("sg", 0o2755, b"x").gz()),
            UnpackError::SetId { .. }
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let mut tar = Tar::new();
        for i in 0..5 {
            tar = tar.file(&format!("f{i}"), 0o644, b"x");
        }
        let limits = Limits {
            max_entries: 3,
            ..Limits::default()
        };
        refused!(
            run_with(&tar.gz(), Format::TarGz, &limits),
            UnpackError::TooManyEntries { limit: 3 }
        );
    }

    #[test]
    fn too_many_bytes_are_refused() {
        let tar = Tar::new().file("zeros", 0o644, &[0u8; 10 * 1024]);
        let limits = Limits {
            max_unpacked_bytes: 1024,
            ..Limits::default()
        };
        refused!(
            run_with(&tar.gz(), Format::TarGz, &limits),
            UnpackError::TooLarge { limit: 1024 }
        );
    }

    #[test]
    fn corrupt_archives_are_refused() {
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let gz = Tar::new().file("a", 0o644, b"x").file("big", 0o644, &big).gz();
        refused!(run(&gz[..gz.len() / 2]), UnpackError::Corrupt { .. });
        refused!(
            run(b"this is not a gzip file at all, just some garbage bytes"),
            UnpackError::Corrupt { .. }
        );
        refused!(
            run_with(b"garbage garbage garbage", Format::TarZst, &Limits::default()),
            UnpackError::Corrupt { .. }
        );
    }

    #[test]
    fn pax_path_disagreeing_with_header_is_refused() {
        let tar = Tar::new().pax_mismatch("bin/evil", "bin/good");
        refused!(run(&tar.gz()), UnpackError::HeaderMismatch { .. });
    }
}
