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
//!
//! Here: the API, its limits and errors, and the walk over the entries;
//! `entries` checks and writes one entry, `names` holds the pure rules for
//! names and modes, `stream` bounds the decompressed stream.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

mod entries;
mod names;
mod stream;
#[cfg(test)]
mod tests;

use entries::{sync_dir, Unpacker};
use stream::Bounded;

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
