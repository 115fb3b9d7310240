//! The host's identity on disk: its client certificate and key, the CA it
//! trusts, and what the controller told it at enrollment.
//!
//! Files in the state dir (see ARCHITECTURE.md):
//! - `identity.pem` (0600): the client certificate, then its private key;
//! - `ca.pem` (0644): the CA received at enrollment;
//! - `host.json` (0644): [`HostRecord`].
//!
//! Every file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old file or the new one, never half.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fleet_proto::transport::{certs_from_pem, key_from_pem, ClientIdentity, Trust};
use serde::{Deserialize, Serialize};

const IDENTITY_FILE: &str = "identity.pem";
const CA_FILE: &str = "ca.pem";
const HOST_FILE: &str = "host.json";

/// Problems with the state dir or the files in it.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or the directory could not be read or written.
    #[error("{path}: {source}; check that the agent's user owns the state dir")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file exists but holds nothing usable.
    #[error(
        "{path} is damaged ({detail}); remove identity.pem, ca.pem and host.json from the state dir to enroll again"
    )]
    Corrupt { path: PathBuf, detail: String },
    /// Making a key pair or a CSR failed.
    #[error("cannot make a key pair and CSR: {0}")]
    Key(#[from] rcgen::Error),
}

/// What the controller said about this host at enrollment or renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The id the controller gave this host (the certificate's CN).
    pub host_id: String,
    /// When the certificate stops being valid, Unix ms.
    pub not_after_ms: i64,
    /// When this agent received the certificate, Unix ms.
    pub issued_at_ms: i64,
    /// The join token id the host enrolled with.
    pub token_id: String,
}

/// A complete identity: certificate, key, CA and host record.
#[derive(Clone)]
pub struct Identity {
    /// The controller's record of this host.
    pub host: HostRecord,
    /// The client certificate (PEM, leaf first).
    pub cert_pem: String,
    /// The private key (PEM). Never log it.
    pub key_pem: String,
    /// The CA the controller is verified with.
    pub ca_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The client certificate and key for mTLS.
    pub fn client_identity(&self) -> Result<ClientIdentity, IdentityError> {
        let corrupt = |e: fleet_proto::transport::TransportError| IdentityError::Corrupt {
            path: PathBuf::from(IDENTITY_FILE),
            detail: e.to_string(),
        };
        Ok(ClientIdentity {
            chain: certs_from_pem(IDENTITY_FILE, &self.cert_pem).map_err(corrupt)?,
            key: key_from_pem(IDENTITY_FILE, &self.key_pem).map_err(corrupt)?,
        })
    }

    /// Trust in the CAs received at enrollment or with the last renewal
    /// (two during a CA rotation: the new one and the one it replaces).
    pub fn trust(&self) -> Result<Trust, IdentityError> {
        let certs = certs_from_pem(CA_FILE, &self.ca_pem).map_err(|e| IdentityError::Corrupt {
            path: PathBuf::from(CA_FILE),
            detail: e.to_string(),
        })?;
        Ok(Trust::Cas(certs))
    }

    /// Checks that the PEM texts parse and that the key belongs to the
    /// certificate, by building the TLS configuration the stream will use.
    pub fn check(&self) -> Result<(), IdentityError> {
        let trust = self.trust()?;
        fleet_proto::transport::client_config(trust, Some(self.client_identity()?)).map_err(|e| {
            IdentityError::Corrupt {
                path: PathBuf::from(IDENTITY_FILE),
                detail: e.to_string(),
            }
        })?;
        Ok(())
    }

    /// When to ask for a new certificate: half-way through its lifetime.
    pub fn renew_at_ms(&self) -> i64 {
        renew_at_ms(self.host.issued_at_ms, self.host.not_after_ms)
    }

    /// Whether the certificate is past its expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms >= self.host.not_after_ms
    }
}

/// Half-life of a certificate issued at `issued_at_ms` that expires at
/// `not_after_ms`: renewing there leaves as much time to retry as has passed.
pub fn renew_at_ms(issued_at_ms: i64, not_after_ms: i64) -> i64 {
    issued_at_ms + (not_after_ms - issued_at_ms).max(0) / 2
}

/// A key pair made on this host and a CSR for it (DER), with `common_name`
/// as the subject CN. The controller sets the real CN (the host id).
pub fn new_key_and_csr(common_name: &str) -> Result<(rcgen::KeyPair, Vec<u8>), IdentityError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// The agent's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// A state dir at `path`; nothing is touched until [`StateDir::ensure`].
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (0700: it holds the private key) if missing.
    pub fn ensure(&self) -> Result<(), IdentityError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| IdentityError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The stored identity, or `None` when the host is not enrolled (or a
    /// crash during the first enrollment left it incomplete).
    pub fn load(&self) -> Result<Option<Identity>, IdentityError> {
        let Some(identity_pem) = self.read_optional(IDENTITY_FILE)? else {
            return Ok(None);
        };
        let (Some(ca_pem), Some(host_json)) = (self.read_optional(CA_FILE)?, self.read_optional(HOST_FILE)?) else {
            tracing::warn!(
                state_dir = %self.path.display(),
                "identity.pem exists but ca.pem or host.json is missing; treating the host as not enrolled"
            );
            return Ok(None);
        };
        let host: HostRecord = serde_json::from_str(&host_json).map_err(|e| IdentityError::Corrupt {
            path: self.path.join(HOST_FILE),
            detail: e.to_string(),
        })?;
        let (cert_pem, key_pem) = split_identity_pem(&identity_pem).ok_or_else(|| IdentityError::Corrupt {
            path: self.path.join(IDENTITY_FILE),
            detail: "expected a CERTIFICATE block followed by a PRIVATE KEY block".into(),
        })?;
        let identity = Identity {
            host,
            cert_pem,
            key_pem,
            ca_pem,
        };
        // Check now, so damage is reported at start and not as a TLS failure.
        identity.check().map_err(|e| self.locate(e))?;
        Ok(Some(identity))
    }

    /// Writes the identity.
    ///
    /// Invariant: identity.pem is renamed into place before host.json. A
    /// crash between the two leaves a new certificate with an older record,
    /// which at worst makes the agent renew or enroll again early; the other
    /// order could claim a lifetime the certificate on disk does not have.
    pub fn store(&self, identity: &Identity) -> Result<(), IdentityError> {
        let host_json = serde_json::to_vec_pretty(&identity.host).map_err(|e| IdentityError::Corrupt {
            path: self.path.join(HOST_FILE),
            detail: e.to_string(),
        })?;
        let mut pem = String::with_capacity(identity.cert_pem.len() + identity.key_pem.len() + 1);
        pem.push_str(&identity.cert_pem);
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&identity.key_pem);
        self.write_atomic(CA_FILE, identity.ca_pem.as_bytes(), 0o644)?;
        self.write_atomic(IDENTITY_FILE, pem.as_bytes(), 0o600)?;
        self.write_atomic(HOST_FILE, &host_json, 0o644)?;
        Ok(())
    }

    fn read_optional(&self, name: &str) -> Result<Option<String>, IdentityError> {
        let path = self.path.join(name);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// Makes a file name in an error a full path.
    fn locate(&self, e: IdentityError) -> IdentityError {
        match e {
            IdentityError::Corrupt { path, detail } => IdentityError::Corrupt {
                path: self.path.join(path),
                detail,
            },
            other => other,
        }
    }

    /// Replaces `name` with `bytes`: a temp file created with `mode` from the
    /// start (a key is never readable by others, not even briefly), fsynced,
    /// renamed over the old file, then the directory fsynced so the rename
    /// survives a power cut.
    fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| IdentityError::Io { path: p, source }
        };
        // A temp file left by a crash may have another mode; mode() only
        // applies at creation, so start from nothing.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(IdentityError::Io { path: tmp, source }),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.path))?;
        Ok(())
    }
}

/// Splits identity.pem into the certificate PEM blocks and the key PEM block.
fn split_identity_pem(pem: &str) -> Option<(String, String)> {
    let key_start = pem
        .find("-----BEGIN PRIVATE KEY-----")
        .or_else(|| pem.find("-----BEGIN EC PRIVATE KEY-----"))?;
    let (cert, key) = pem.split_at(key_start);
    cert.contains("-----BEGIN CERTIFICATE-----")
        .then(|| (cert.to_string(), key.to_string()))
}

/// A CA for tests that signs CSRs the way the controller does.
#[cfg(test)]
pub(crate) mod test_ca {
    use super::*;

    pub(crate) struct TestCa {
        key: rcgen::KeyPair,
        params: rcgen::CertificateParams,
        pub(crate) pem: String,
    }

    impl TestCa {
        pub(crate) fn new() -> TestCa {
            let key = rcgen::KeyPair::generate().expect("ca key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).expect("ca").pem();
            TestCa { key, params, pem }
        }

        /// Signs a CSR (DER) and returns the certificate PEM.
        pub(crate) fn sign(&self, csr_der: &[u8]) -> String {
            let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
            let csr = rcgen::CertificateSigningRequestParams::from_der(&der).expect("csr");
            let issuer = rcgen::Issuer::new(self.params.clone(), &self.key);
            csr.signed_by(&issuer).expect("sign").pem()
        }

        /// A complete identity issued by this CA.
        pub(crate) fn identity(&self, host_id: &str, issued_at_ms: i64, not_after_ms: i64) -> Identity {
            let (key, csr) = new_key_and_csr(host_id).expect("csr");
            Identity {
                host: HostRecord {
                    host_id: host_id.into(),
                    not_after_ms,
                    issued_at_ms,
                    token_id: "abc".into(),
                },
                cert_pem: self.sign(&csr),
                key_pem: key.serialize_pem(),
                ca_pem: self.pem.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample_identity() -> Identity {
        test_ca::TestCa::new().identity("h-123", 1_000_000, 2_000_000)
    }

    #[test]
    fn identity_round_trips_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        state.ensure().expect("ensure");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(state.path()), 0o700);
        assert!(state.load().expect("load empty").is_none());

        let id = sample_identity();
        state.store(&id).expect("store");
        assert_eq!(mode(&state.path().join(IDENTITY_FILE)), 0o600);
        let back = state.load().expect("load").expect("present");
        assert_eq!(back.host, id.host);
        assert_eq!(back.cert_pem, id.cert_pem);
        assert_eq!(back.key_pem, id.key_pem);
        assert_eq!(back.ca_pem, id.ca_pem);
        back.check().expect("usable identity");
        assert!(matches!(back.trust().expect("trust"), Trust::Cas(c) if c.len() == 1));

        // Overwriting keeps the mode and leaves no temp file behind.
        state.store(&back).expect("store again");
        assert_eq!(mode(&state.path().join(IDENTITY_FILE)), 0o600);
        let names: Vec<_> = fs::read_dir(state.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn damaged_identity_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        state.store(&sample_identity()).expect("store");
        fs::write(dir.path().join(HOST_FILE), "{\"host_id\":").expect("truncate");
        assert!(matches!(state.load(), Err(IdentityError::Corrupt { .. })));
    }

    #[test]
    fn incomplete_identity_means_not_enrolled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        state.store(&sample_identity()).expect("store");
        fs::remove_file(dir.path().join(HOST_FILE)).expect("remove");
        assert!(state.load().expect("load").is_none());
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let mut id = sample_identity();
        id.key_pem = rcgen::KeyPair::generate().expect("key").serialize_pem();
        assert!(matches!(id.check(), Err(IdentityError::Corrupt { .. })));
    }

    #[test]
    fn debug_hides_the_key() {
        let id = sample_identity();
        assert!(!format!("{id:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn renew_at_is_half_life() {
        assert_eq!(renew_at_ms(1_000, 3_000), 2_000);
        assert_eq!(renew_at_ms(0, 7 * 24 * 3_600_000), 84 * 3_600_000);
        // A certificate "expiring" before it was issued is due at once.
        assert_eq!(renew_at_ms(5_000, 1_000), 5_000);
        let id = sample_identity();
        assert_eq!(id.renew_at_ms(), 1_500_000);
        assert!(!id.is_expired(1_999_999));
        assert!(id.is_expired(2_000_000));
    }

    #[test]
    fn csr_is_made_with_a_fresh_key() {
        let (k1, csr1) = new_key_and_csr("web-1").expect("csr");
        let (k2, _) = new_key_and_csr("web-1").expect("csr");
        assert_ne!(k1.serialize_der(), k2.serialize_der());
        assert!(!csr1.is_empty());
    }
}
