//! The root of the controller's own MAC keys (fetch grants, recovery
//! tokens): 32 random bytes in `DATA_DIR/mac.key` (0600), independent of the
//! CA so that rotating the CA keeps every grant and token valid.
//!
//! Data dirs made before the file existed derived the root from the CA key;
//! the first start writes that same root to the file, so nothing signed
//! before changes meaning.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::ca::Ca;

/// The file in the data dir.
pub const FILE: &str = "mac.key";

/// The MAC root.
pub struct Macs([u8; 32]);

impl Macs {
    /// A 32-byte key for `purpose`: stable across restarts and CA
    /// rotations, different per purpose, never the root itself.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.0);
        ctx.update(purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Reads `mac.key` from `data_dir`; None when it is not there.
    pub fn load(data_dir: &Path) -> std::io::Result<Option<Macs>> {
        match std::fs::read(data_dir.join(FILE)) {
            Ok(bytes) => {
                let root: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} is not 32 bytes: restore it from a backup",
                            data_dir.join(FILE).display()
                        ),
                    )
                })?;
                Ok(Some(Macs(root)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `mac.key`, or writes it from the CA (`legacy_mac_root`) when a
    /// data dir made before it has none.
    pub fn load_or_migrate(data_dir: &Path, ca: &Ca) -> std::io::Result<Macs> {
        if let Some(m) = Macs::load(data_dir)? {
            return Ok(m);
        }
        let root = ca.legacy_mac_root();
        write_new(data_dir, &root)?;
        Ok(Macs(root))
    }

    /// Writes a new random `mac.key` (init).
    pub fn make(data_dir: &Path) -> std::io::Result<()> {
        write_new(data_dir, &crate::random_bytes::<32>())
    }
}

fn write_new(data_dir: &Path, root: &[u8; 32]) -> std::io::Result<()> {
    let path = data_dir.join(FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(root)?;
    f.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_without_the_file_keeps_the_root_its_ca_gave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = crate::ca::generate_ca("t").expect("ca");
        let ca = Ca::load(&new.cert_pem, &new.key_pem).expect("load");
        assert!(Macs::load(dir.path()).expect("read").is_none());
        let m = Macs::load_or_migrate(dir.path(), &ca).expect("migrate");
        assert_eq!(m.0, ca.legacy_mac_root());
        let again = Macs::load(dir.path()).expect("read").expect("written");
        assert_eq!(again.derive("x"), m.derive("x"));
        assert_ne!(m.derive("x"), m.derive("y"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
