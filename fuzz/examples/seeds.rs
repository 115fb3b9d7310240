//! Writes the seed corpus of the `unpack` fuzz target into
//! `corpus/unpack/seed-*` (run from `fuzz/`: `cargo run --example seeds`).
//!
//! One good release in each input form, then one archive for each class of
//! archive the unpacker must refuse. The first byte of each seed is the
//! target's selector: 0 gzip, 1 zstd, 2 plain tar.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use tar::{EntryType, Header};

const GZIP: u8 = 0;
const ZSTD: u8 = 1;
const PLAIN: u8 = 2;

/// A tar stream built from raw headers, so names the `tar` crate's own
/// setters would reject (`..`, absolute paths) can be written.
struct Archive(tar::Builder<Vec<u8>>);

impl Archive {
    fn new() -> Self {
        Archive(tar::Builder::new(Vec::new()))
    }

    fn raw(mut self, kind: EntryType, name: &str, link: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Header::new_gnu();
        let fields = h.as_old_mut();
        fields.name[..name.len()].copy_from_slice(name.as_bytes());
        fields.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.append(&h, data).expect("append to memory");
        self
    }

    fn file(self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.raw(EntryType::Regular, name, "", mode, data)
    }

    fn dir(self, name: &str) -> Self {
        self.raw(EntryType::Directory, name, "", 0o755, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(EntryType::Symlink, name, target, 0o777, b"")
    }

    fn hard_link(self, name: &str, target: &str) -> Self {
        self.raw(EntryType::Link, name, target, 0o644, b"")
    }

    /// A PAX `path` record followed by a ustar entry named `name`.
    fn pax_file(mut self, pax_path: &str, name: &str, data: &[u8]) -> Self {
        self.0
            .append_pax_extensions([("path", pax_path.as_bytes())])
            .expect("append to memory");
        let mut h = Header::new_ustar();
        h.set_path(name).expect("a valid ustar name");
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).expect("append to memory");
        self
    }

    /// A name longer than the 100-byte field, written the way GNU tar does.
    fn long_file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, name, data).expect("append to memory");
        self
    }

    fn tar(self) -> Vec<u8> {
        self.0.into_inner().expect("finish the tar stream")
    }
}

fn good() -> Archive {
    Archive::new()
        .dir("bin/")
        .file("bin/app", 0o755, b"#!/bin/sh\nexec true\n")
        .file("etc/app.toml", 0o644, b"port = 8080\n")
        .symlink("bin/app.toml", "../etc/app.toml")
        .symlink("current", ".")
        .symlink("etc/up", "..")
        .symlink("bin/via-current", "../current/etc/app.toml")
        .hard_link("etc/app.copy", "etc/app.toml")
        .long_file(&format!("share/{}", "n".repeat(120)), b"long name\n")
        .pax_file("doc/readme", "doc/readme", b"hello\n")
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(tar).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

fn zstd(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 19).expect("zstd into memory")
}

fn write(dir: &Path, name: &str, selector: u8, body: &[u8]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(selector);
    bytes.extend_from_slice(body);
    let path = dir.join(format!("seed-{name}"));
    fs::write(&path, &bytes)?;
    println!("{:>6} {}", bytes.len(), path.display());
    Ok(())
}

fn main() -> io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/unpack");
    fs::create_dir_all(&dir)?;

    let good = good().tar();
    write(&dir, "good-gz", GZIP, &gzip(&good))?;
    write(&dir, "good-zst", ZSTD, &zstd(&good))?;
    write(&dir, "good-tar", PLAIN, &good)?;
    write(&dir, "empty-tar", PLAIN, &Archive::new().tar())?;

    let refused: Vec<(&str, Archive)> = vec![
        ("absolute", Archive::new().file("/tmp/fleet-fuzz-evil", 0o644, b"x")),
        ("dot-dot", Archive::new().file("a/../../evil", 0o644, b"x")),
        ("root-itself", Archive::new().file("./", 0o644, b"x")),
        (
            "symlink-out-then-file",
            Archive::new().symlink("etc", "/etc").file("etc/passwd", 0o644, b"x"),
        ),
        ("symlink-up", Archive::new().dir("a/").symlink("a/out", "../..")),
        (
            "dot-dot-after-symlink",
            Archive::new().symlink("up", ".").symlink("a", "up/.."),
        ),
        (
            "file-through-symlink",
            Archive::new()
                .dir("real/")
                .symlink("via", "real")
                .file("via/f", 0o644, b"x"),
        ),
        (
            "dir-through-symlink",
            Archive::new().dir("real/").symlink("via", "real").dir("via/sub/"),
        ),
        ("hard-link-out", Archive::new().hard_link("passwd", "/etc/passwd")),
        ("hard-link-missing", Archive::new().hard_link("b", "a")),
        (
            "hard-link-via-symlink",
            Archive::new()
                .dir("real/")
                .file("real/f", 0o644, b"x")
                .symlink("via", "real")
                .hard_link("g", "via/f"),
        ),
        ("fifo", Archive::new().raw(EntryType::Fifo, "fifo", "", 0o644, b"")),
        ("char-dev", Archive::new().raw(EntryType::Char, "null", "", 0o666, b"")),
        ("block-dev", Archive::new().raw(EntryType::Block, "sda", "", 0o660, b"")),
        ("setuid", Archive::new().file("su", 0o4755, b"x")),
        ("setgid", Archive::new().file("sg", 0o2755, b"x")),
        ("pax-mismatch", Archive::new().pax_file("bin/evil", "bin/good", b"x")),
        ("dir-over-file", Archive::new().file("x", 0o644, b"x").dir("x/")),
        ("file-over-dir", Archive::new().dir("x/").file("x", 0o644, b"x")),
    ];
    for (name, archive) in refused {
        write(&dir, name, PLAIN, &archive.tar())?;
    }

    // Limits: these only stay small compressed.
    let mut many = Archive::new();
    for i in 0..80 {
        many = many.file(&format!("f{i}"), 0o644, b"");
    }
    write(&dir, "too-many-entries-gz", GZIP, &gzip(&many.tar()))?;
    let big = Archive::new().file("zeros", 0o644, &vec![0u8; 100 * 1024]).tar();
    write(&dir, "too-large-gz", GZIP, &gzip(&big))?;
    let truncated = gzip(&good);
    write(&dir, "truncated-gz", GZIP, &truncated[..truncated.len() / 2])?;
    Ok(())
}
