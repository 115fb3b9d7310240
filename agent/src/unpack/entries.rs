//! One entry at a time: its name and kind checked, its parents made without
//! following a symlink, then the directory, file or link written and queued
//! for fsync.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::names::{file_mode, link_target_inside, relative, same_name};
use super::stream::StreamLimit;
use super::{corrupt, io_error, Limits, Summary, UnpackError};

pub(super) struct Unpacker<'a> {
    pub dest: &'a Path,
    pub limits: &'a Limits,
    pub summary: Summary,
    /// Directories created or written into, fsynced at the end.
    pub dirs: BTreeSet<PathBuf>,
    pub stream_limit: u64,
}

impl Unpacker<'_> {
    pub fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
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
        let target_path = link_target_inside(rel, target).ok_or_else(|| UnpackError::LinkEscapesRelease {
            entry: name.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        })?;
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
    pub fn read_error(&self, e: io::Error) -> UnpackError {
        if e.get_ref().is_some_and(|inner| inner.is::<StreamLimit>()) {
            UnpackError::TooLarge {
                limit: self.stream_limit,
            }
        } else {
            corrupt(e)
        }
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

pub(super) fn sync_dir(path: &Path) -> Result<(), UnpackError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error(path, e))
}
