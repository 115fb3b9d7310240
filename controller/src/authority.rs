//! The CA material the controller serves with, swapped in place when a CA
//! rotation begins or ends (see `rotation`): which CA signs new client
//! certificates, which CAs client certificates may chain to, the server
//! certificate presented, and the CAs agents are told to trust. The TLS
//! configuration reads it at every handshake, so live connections stay and
//! new ones see the change at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use fleet_proto::transport::{certs_from_pem, key_from_pem, provider};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::ca::Ca;
use crate::rotation::{self, Files, Plan, State};

/// What the controller serves with at one moment.
pub struct Material {
    /// Signs new client certificates.
    pub signing: Ca,
    /// The CAs agents trust (PEM): the signing CA, and during a rotation the
    /// one it replaces.
    pub bundle_pem: String,
    /// Checks client certificates against those CAs (the store's allowlist
    /// comes after, in `tls`).
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// The server certificate chain and key presented.
    pub server: Arc<CertifiedKey>,
    /// The rotation under way, if any.
    pub rotation: Option<Plan>,
}

/// Why the material cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {detail}")]
    Read {
        /// The file.
        path: String,
        /// Why, and what to do.
        detail: String,
    },
    /// The files do not make a working TLS set-up.
    #[error("{0}")]
    Tls(String),
    /// The rotation files are damaged or cannot be promoted.
    #[error(transparent)]
    Rotation(#[from] rotation::RotationError),
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError::Read {
        path: path.display().to_string(),
        detail: format!(
            "{e}{}",
            crate::owner::permission_hint(&e, path.parent().unwrap_or(path))
        ),
    })
}

fn tls<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> LoadError + '_ {
    move |e| LoadError::Tls(format!("{what}: {e}"))
}

impl Material {
    /// Reads `data_dir` as it stands at `now_ms`; a rotation whose overlap
    /// has ended is promoted first.
    pub fn load(data_dir: &Path, now_ms: i64) -> Result<Material, LoadError> {
        let plan = match rotation::state(data_dir, now_ms)? {
            State::Idle => None,
            State::Overlap(p) => Some(p),
            State::Due(p) => {
                rotation::promote(data_dir)?;
                tracing::info!(ca = %p.next_fingerprint, retired = %p.previous_fingerprint, "CA rotation finished: only the new CA is trusted");
                None
            }
        };
        let (dir, previous) = match &plan {
            Some(_) => (Files::of(data_dir).dir, Some(read(&data_dir.join("ca.pem"))?)),
            None => (data_dir.to_path_buf(), None),
        };
        let ca_pem = read(&dir.join("ca.pem"))?;
        let signing = Ca::load(&ca_pem, &read(&dir.join("ca.key"))?).map_err(tls("ca.key"))?;
        let mut roots = RootCertStore::empty();
        let mut trusted: Vec<CertificateDer<'static>> = certs_from_pem("ca.pem", &ca_pem).map_err(tls("ca.pem"))?;
        if let Some(prev) = &previous {
            trusted.extend(certs_from_pem("ca.pem", prev).map_err(tls("the previous ca.pem"))?);
        }
        for ca in trusted {
            roots.add(ca).map_err(tls("ca.pem"))?;
        }
        let provider = provider();
        let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls("client verifier"))?;
        let chain = certs_from_pem("server.pem", &read(&dir.join("server.pem"))?).map_err(tls("server.pem"))?;
        let key = key_from_pem("server.key", &read(&dir.join("server.key"))?).map_err(tls("server.key"))?;
        let key = provider.key_provider.load_private_key(key).map_err(tls("server.key"))?;
        Ok(Material {
            signing,
            bundle_pem: format!("{ca_pem}{}", previous.unwrap_or_default()),
            client_verifier,
            server: Arc::new(CertifiedKey::new(chain, key)),
            rotation: plan,
        })
    }
}

/// What a look at the data dir changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// A rotation began: agents should renew now.
    Began(Plan),
    /// A rotation ended: the old CA is no longer trusted.
    Finished(Plan),
}

/// The material in force, swapped when a rotation begins or ends.
pub struct Authority {
    dir: PathBuf,
    current: RwLock<Arc<Material>>,
}

impl Authority {
    /// Loads the data dir's material.
    pub fn open(data_dir: &Path, now_ms: i64) -> Result<Authority, LoadError> {
        Ok(Authority {
            dir: data_dir.to_path_buf(),
            current: RwLock::new(Arc::new(Material::load(data_dir, now_ms)?)),
        })
    }

    /// The material in force.
    pub fn current(&self) -> Arc<Material> {
        // A poisoned lock only means a panic while swapping an Arc.
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes up a rotation that began or whose overlap ended (blocking file
    /// I/O: run it off the runtime).
    pub fn refresh(&self, now_ms: i64) -> Result<Change, LoadError> {
        let was = self.current().rotation.clone();
        let change = match (rotation::state(&self.dir, now_ms)?, &was) {
            (State::Idle, None) => return Ok(Change::None),
            (State::Overlap(p), Some(w)) if p == *w => return Ok(Change::None),
            (State::Overlap(p), _) => Change::Began(p),
            (State::Due(p), _) => Change::Finished(p),
            // Promoted by someone else (a restart): reload.
            (State::Idle, Some(w)) => Change::Finished(w.clone()),
        };
        let next = Material::load(&self.dir, now_ms)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(change)
    }
}
