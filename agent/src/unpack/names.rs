//! The pure rules for an entry's name and mode.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::UnpackError;

/// The entry's path as a relative path of normal components; `None` when it
/// names the root itself.
pub(super) fn relative(bytes: &[u8], name: &str) -> Result<Option<PathBuf>, UnpackError> {
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
pub(super) fn same_name(full: &[u8], short: &[u8], field: &[u8]) -> bool {
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
pub(super) fn file_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

/// The target of a symlink entry at `rel`, when it stays inside the
/// release; `None` when it is empty, absolute or escapes.
///
/// Lexical resolution from the link's directory. `..` is allowed only
/// before the first name: the link's ancestors are real directories, so
/// leading `..` go up exactly as counted, but after a name that is (or later
/// becomes) a symlink the kernel applies `..` to wherever that symlink
/// leads: `up -> .` then `a -> up/..` would be `dest/..`.
pub(super) fn link_target_inside<'t>(rel: &Path, target: &'t [u8]) -> Option<&'t Path> {
    if target.is_empty() {
        return None;
    }
    let target_path = Path::new(OsStr::from_bytes(target));
    let mut depth = rel.components().count().saturating_sub(1);
    let mut named = false;
    for component in target_path.components() {
        match component {
            Component::Normal(_) => {
                depth += 1;
                named = true;
            }
            Component::CurDir => {}
            Component::ParentDir if named => return None,
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(target_path)
}
