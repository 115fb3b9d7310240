//! Fuzzes `fleet_agent::unpack::unpack` with arbitrary archives and checks
//! what it promises: it never panics, never leaves `dest` behind on an
//! error, and on success leaves only plain files (no setuid/setgid, modes
//! 0644/0755, one link each), directories and symlinks that stay inside
//! `dest`, with nothing created next to it.
//!
//! Input layout: the first byte picks how the rest is read.
//!
//! - `0`: the rest is a gzip stream, unpacked as `tar.gz`;
//! - `1`: the rest is a zstd stream, unpacked as `tar.zst`;
//! - anything else: the rest is a plain tar stream, wrapped here in an
//!   uncompressed gzip stream, so mutations land on tar headers directly
//!   instead of being spent on compressed bytes.
//!
//! Every run works in one sandbox per process, `$FLEET_FUZZ_DIR` (default:
//! `/dev/shm` when it exists, else the temp dir) `/fleet-fuzz-unpack-PID`,
//! removed by a later process once this one is gone:
//!
//! ```text
//! fleet-fuzz-unpack-PID/
//!     archive            the input, as unpack reads it from disk
//!     outer/sandbox/     dest's parent; empty between runs
//!         release/       dest, created by unpack and removed after each run
//! ```
//!
//! `/dev/shm` matters for speed: unpack fsyncs every file and directory.

#![no_main]

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use fleet_agent::unpack::{unpack, Format, Limits, Summary};
use libfuzzer_sys::fuzz_target;

/// Small, so that limit paths are reached by small inputs.
const LIMITS: Limits = Limits {
    max_entries: 64,
    max_unpacked_bytes: 64 * 1024,
};

/// Symlinks followed before a path counts as a loop; the kernel's limit.
const MAX_HOPS: u32 = 40;

struct Sandbox {
    base: PathBuf,
    archive: PathBuf,
    outer: PathBuf,
    sandbox: PathBuf,
    dest: PathBuf,
}

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let root = match std::env::var_os("FLEET_FUZZ_DIR") {
            Some(dir) => PathBuf::from(dir),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        remove_stale_sandboxes(&root);
        let base = root.join(format!("{PREFIX}{}", std::process::id()));
        // A leftover from an earlier process with the same pid.
        let _ = fs::remove_dir_all(&base);
        let outer = base.join("outer");
        let sandbox = outer.join("sandbox");
        fs::create_dir_all(&sandbox).expect("create the fuzz sandbox");
        Sandbox {
            archive: base.join("archive"),
            dest: sandbox.join("release"),
            base,
            outer,
            sandbox,
        }
    })
}

const PREFIX: &str = "fleet-fuzz-unpack-";

/// libFuzzer ends the process with `exit`, so no sandbox cleans up after
/// itself; the next process removes those whose process is gone (`-jobs`
/// and `-fork` workers running beside it keep theirs).
fn remove_stale_sandboxes(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            // Ignored error: another process may be removing it too.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (archive, format) = match selector {
        0 => (rest.to_vec(), Format::TarGz),
        1 => (rest.to_vec(), Format::TarZst),
        _ => (gzip_stored(rest), Format::TarGz),
    };
    let sb = sandbox();
    fs::write(&sb.archive, &archive).expect("write the archive");

    let result = unpack(&sb.archive, format, &sb.dest, &LIMITS);

    match &result {
        Ok(summary) => {
            check_release(&sb.dest, summary);
            assert_eq!(names(&sb.sandbox), set(&["release"]), "unpack wrote next to dest");
        }
        Err(e) => {
            assert!(
                fs::symlink_metadata(&sb.dest).is_err(),
                "unpack failed ({e}) but left {} behind",
                sb.dest.display()
            );
            assert!(!e.to_string().is_empty());
            assert_eq!(names(&sb.sandbox), set(&[]), "unpack wrote next to dest");
        }
    }
    assert_eq!(names(&sb.outer), set(&["sandbox"]), "unpack wrote outside its sandbox");
    assert_eq!(
        names(&sb.base),
        set(&["archive", "outer"]),
        "unpack wrote outside its sandbox"
    );

    if result.is_ok() {
        fs::remove_dir_all(&sb.dest).expect("remove the unpacked release");
    }
});

/// A gzip stream holding `tar` in stored (uncompressed) deflate blocks.
fn gzip_stored(tar: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(tar.len() + 64), flate2::Compression::none());
    enc.write_all(tar).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

fn names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("read a directory entry").file_name())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<OsString> {
    names.iter().map(OsString::from).collect()
}

/// Walks the unpacked release without following any symlink and checks
/// every path in it.
fn check_release(dest: &Path, summary: &Summary) {
    assert!(summary.entries <= LIMITS.max_entries, "{summary:?} over {LIMITS:?}");
    assert!(
        summary.bytes <= LIMITS.max_unpacked_bytes,
        "{summary:?} over {LIMITS:?}"
    );
    let meta = fs::symlink_metadata(dest).expect("dest exists after Ok");
    assert!(meta.is_dir(), "dest is not a directory");
    assert_eq!(meta.mode() & 0o7000, 0, "dest has setuid/setgid/sticky bits");
    let real_dest = fs::canonicalize(dest).expect("canonicalize dest");

    let mut file_bytes = 0u64;
    let mut todo = vec![Vec::<OsString>::new()];
    while let Some(dir) = todo.pop() {
        let dir_path = join(dest, &dir);
        for entry in fs::read_dir(&dir_path).unwrap_or_else(|e| panic!("list {}: {e}", dir_path.display())) {
            let name = entry.expect("read a directory entry").file_name();
            let mut rel = dir.clone();
            rel.push(name);
            let path = join(dest, &rel);
            let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            let kind = meta.file_type();
            if kind.is_symlink() {
                check_symlink(dest, &rel, &path);
                continue;
            }
            // No symlink above it either: its real path is where it was found.
            let real = fs::canonicalize(&path).unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()));
            assert_eq!(real, join(&real_dest, &rel), "{} resolves elsewhere", path.display());
            let mode = meta.mode() & 0o7777;
            if kind.is_dir() {
                assert_eq!(mode, 0o755, "directory {} has mode {mode:o}", path.display());
                todo.push(rel);
            } else if kind.is_file() {
                assert!(
                    mode == 0o644 || mode == 0o755,
                    "file {} has mode {mode:o}",
                    path.display()
                );
                // Hard links in the archive are copies on disk: a second
                // link would be shared with something else.
                assert_eq!(meta.nlink(), 1, "file {} has {} links", path.display(), meta.nlink());
                file_bytes += meta.len();
            } else {
                panic!("{} is a special file: {kind:?}", path.display());
            }
        }
    }
    assert!(
        file_bytes <= LIMITS.max_unpacked_bytes,
        "{file_bytes} bytes on disk over {LIMITS:?}"
    );
}

/// A symlink's target must stay inside `dest`, both lexically from the
/// link's directory and as the kernel would resolve it (through any other
/// symlinks in the release).
fn check_symlink(dest: &Path, rel: &[OsString], path: &Path) {
    let target = fs::read_link(path).unwrap_or_else(|e| panic!("read_link {}: {e}", path.display()));
    let link_dir = &rel[..rel.len() - 1];
    assert!(
        lexically_inside(link_dir, &target),
        "symlink {} -> {} leaves the release (lexically)",
        path.display(),
        target.display()
    );
    assert!(
        resolves_inside(dest, link_dir, &target),
        "symlink {} -> {} leaves the release (through other symlinks)",
        path.display(),
        target.display()
    );
}

fn lexically_inside(link_dir: &[OsString], target: &Path) -> bool {
    if target.as_os_str().is_empty() {
        return false;
    }
    let mut depth = link_dir.len();
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// One step of a path walk.
enum Step {
    Up,
    Down(OsString),
}

fn steps(target: &Path) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    for component in target.components() {
        match component {
            Component::Normal(name) => out.push(Step::Down(name.to_owned())),
            Component::ParentDir => out.push(Step::Up),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Walks `target` from `link_dir` the way path lookup does: a component
/// that is a symlink is replaced by its target, `..` goes to the parent of
/// where the walk really is. False when the walk goes above `dest`, meets an
/// absolute target, or loops. Components that do not exist are walked
/// lexically (the kernel would stop there; this is stricter).
fn resolves_inside(dest: &Path, link_dir: &[OsString], target: &Path) -> bool {
    if target.as_os_str().is_empty() {
        return false;
    }
    let Some(first) = steps(target) else {
        return false;
    };
    let mut at: Vec<OsString> = link_dir.to_vec();
    let mut todo: VecDeque<Step> = first.into();
    let mut hops = 0;
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Up => {
                if at.pop().is_none() {
                    return false;
                }
            }
            Step::Down(name) => {
                let mut next = at.clone();
                next.push(name);
                let path = join(dest, &next);
                let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                if !is_link {
                    at = next;
                    continue;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return false;
                }
                let inner = fs::read_link(&path).unwrap_or_else(|e| panic!("read_link {}: {e}", path.display()));
                let Some(inner_steps) = steps(&inner) else {
                    return false;
                };
                for s in inner_steps.into_iter().rev() {
                    todo.push_front(s);
                }
            }
        }
    }
    true
}

fn join(base: &Path, rel: &[OsString]) -> PathBuf {
    let mut path = base.to_path_buf();
    path.extend(rel);
    path
}
