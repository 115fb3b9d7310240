//! Archives for tests, safe and hostile: the unpacker's unit tests, the
//! end-to-end tests (feature `testkit`) and the fuzz seeds build on these.
//! Headers are written raw, so `..`, absolute paths, links and special
//! files can be crafted the way an attacker would.

#![allow(clippy::unwrap_used)]

use std::io::{self, Write};

use tar::EntryType;

/// A raw GNU header; the name and link bytes go in unchecked.
pub fn header(name: &str, kind: EntryType, mode: u32, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// A tar stream under construction.
pub struct Tar(pub tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

impl Tar {
    /// An empty archive.
    pub fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    /// A regular file.
    pub fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Tar {
        let h = header(name, EntryType::Regular, mode, data.len() as u64, "");
        self.0.append(&h, data).unwrap();
        self
    }
    /// A directory (name ends with '/').
    pub fn dir(mut self, name: &str, mode: u32) -> Tar {
        self.0
            .append(&header(name, EntryType::Directory, mode, 0, ""), io::empty())
            .unwrap();
        self
    }
    /// A symlink or hard link.
    pub fn link(mut self, kind: EntryType, name: &str, target: &str) -> Tar {
        self.0
            .append(&header(name, kind, 0o777, 0, target), io::empty())
            .unwrap();
        self
    }
    /// A fifo or device node.
    pub fn special(mut self, kind: EntryType, name: &str) -> Tar {
        self.0.append(&header(name, kind, 0o644, 0, ""), io::empty()).unwrap();
        self
    }
    /// A PAX `path` record naming `pax_name`, then a ustar header naming `name`.
    pub fn pax_mismatch(mut self, pax_name: &str, name: &str) -> Tar {
        self.0.append_pax_extensions([("path", pax_name.as_bytes())]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        self.0.append(&h, &b"x"[..]).unwrap();
        self
    }
    /// The tar bytes.
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
    /// gzip-compressed.
    pub fn gz(self) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&self.bytes()).unwrap();
        enc.finish().unwrap()
    }
    /// zstd-compressed.
    pub fn zst(self) -> Vec<u8> {
        zstd::encode_all(&self.bytes()[..], 3).unwrap()
    }
}

/// Every hostile archive class the agent must refuse, as named `.tar.gz`
/// bytes. `bomb_bytes` is how much the bomb unpacks to: set it above the
/// agent's `max_unpacked_size`.
pub fn attacks(bomb_bytes: usize) -> Vec<(&'static str, Vec<u8>)> {
    let truncated = {
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let gz = Tar::new().file("VERSION", 0o644, b"x").file("big", 0o644, &big).gz();
        gz[..gz.len() / 2].to_vec()
    };
    vec![
        ("absolute-path", Tar::new().file("/tmp/fleet-evil", 0o644, b"x").gz()),
        ("dot-dot", Tar::new().file("a/../../fleet-evil", 0o644, b"x").gz()),
        (
            "symlink-then-file (CVE-2018-20990 class)",
            Tar::new()
                .link(EntryType::Symlink, "link", "/tmp")
                .file("link/fleet-evil", 0o644, b"x")
                .gz(),
        ),
        (
            "symlink-then-directory-mode (CVE-2026-33056 class)",
            Tar::new().link(EntryType::Symlink, "d", "../..").dir("d/", 0o777).gz(),
        ),
        (
            "symlink-outside",
            Tar::new().link(EntryType::Symlink, "etc", "/etc").gz(),
        ),
        (
            "hard-link-outside",
            Tar::new().link(EntryType::Link, "passwd", "/etc/passwd").gz(),
        ),
        ("fifo", Tar::new().special(EntryType::Fifo, "fifo").gz()),
        ("char-device", Tar::new().special(EntryType::Char, "null").gz()),
        ("block-device", Tar::new().special(EntryType::Block, "sda").gz()),
        ("setuid", Tar::new().file("su", 0o4755, b"x").gz()),
        ("setgid", Tar::new().file("sg", 0o2755, b"x").gz()),
        (
            "pax-header-disagrees",
            Tar::new().pax_mismatch("bin/evil", "bin/good").gz(),
        ),
        (
            "decompression-bomb",
            Tar::new().file("zeros", 0o644, &vec![0u8; bomb_bytes]).gz(),
        ),
        ("truncated", truncated),
        ("not-an-archive", b"\x1f\x8b this is not gzip at all".to_vec()),
    ]
}
