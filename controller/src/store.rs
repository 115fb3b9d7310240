//! The controller's durable state, in sled under `DATA_DIR/store`.
//!
//! Key layout (also in ARCHITECTURE.md). Every value starts with a version byte.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema` | `[1]` |
//! | `meta` | `alive` | `1` + big-endian ms of the watchdog's last store probe |
//! | `hosts` | host id | `1` + protobuf `fleet.v1.Host` (status and remote_addr left empty: they are live state) |
//! | `certs` | `sha256:<hex>` of a client certificate's DER | `1` + JSON [`CertRecord`] |
//! | `tokens` | join token id | `1` + JSON [`TokenRecord`] |
//! | `operators` | operator token id | `1` + JSON [`OperatorRecord`] |
//! | `apps` | app name | `1` + protobuf `fleet.v1.AppSpec` |
//! | `releases` | `<app>\0<version>` | `1` + protobuf `fleet.v1.Release` (the bytes are in `DATA_DIR/artifacts/<sha256>`) |
//! | `audit` | big-endian ms timestamp + big-endian sequence (8 + 8 bytes) | `1` + JSON `audit::Record` (owned by `audit`) |
//!
//! Invariant: a client certificate is valid only while its `certs` entry
//! exists AND the host it names exists in `hosts`; removing the host is
//! therefore enough to revoke every certificate it ever got, including one a
//! renewal issued concurrently.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use fleet_proto::{AppSpec, Host, Release};

pub mod audit;
pub mod codec;
mod flusher;
pub mod rollouts;

pub use flusher::{FlushCounts, Health};

const V1: u8 = 1;

/// sled's own file in a store directory: a directory without it holds no
/// store (an empty mount point, a deleted store).
const SLED_DB_FILE: &str = "db";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption it detected).
    #[error("store: {0}{advice}", advice = io_advice(.0))]
    Sled(#[from] sled::Error),
    /// Writes could not be made durable: the flush failed (ENOSPC, EIO, ...).
    #[error(
        "cannot make writes durable in the store {dir}: {detail}; free space on the filesystem \
         holding it (or repair the disk), then restart the controller: sled refuses every write \
         after an I/O error until it is reopened (under systemd the watchdog restarts it). \
         /healthz reports unhealthy meanwhile"
    )]
    Flush { dir: String, detail: String },
    /// The store is closed: the controller is shutting down.
    #[error("the store {dir} is closed (the controller is shutting down)")]
    Closed { dir: String },
    /// The flusher thread could not be started.
    #[error("cannot start the flusher thread of the store {dir}: {detail}")]
    Thread { dir: String, detail: String },
    /// `serve` found a data dir whose store is missing or unreadable.
    #[error(
        "the store {path} is missing or unreadable ({detail}), but its data dir is a fleet \
         controller's: is the volume holding it mounted, and readable by this user? Refusing to \
         start with an empty store, which would revoke every host's certificate. Mount or restore \
         {path} and start again; a new fleet needs a new data dir ('fleet-controller init')"
    )]
    Missing { path: String, detail: String },
    /// Another process holds the store's lock.
    #[error(
        "the store {path} is locked by another process: is another fleet-controller running on \
         this data dir? Stop it first ({detail})"
    )]
    Locked { path: String, detail: String },
    /// sled could not read the store: damaged, or not one `init` made.
    #[error(
        "cannot open the store {path}: {detail}; it may be damaged: check the disk, then restore \
         {path} from a backup"
    )]
    Damaged { path: String, detail: String },
    /// Opening the store hit an I/O error (a restart may get past it).
    #[error("cannot open the store {path}: {detail}; check the disk and the free space on it")]
    Open { path: String, detail: String },
    /// A value could not be decoded.
    #[error("store: value {key:?} in tree '{tree}' is corrupt or from an unknown version: {detail}")]
    Corrupt {
        tree: &'static str,
        key: String,
        detail: String,
    },
}

/// The store `serve` runs on, for messages that sled's errors cannot carry.
/// Invariant: `serve` opens one store per process (set once, by `open_existing`).
static SERVED_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// What to do about an I/O error: sled keeps refusing writes after one.
fn io_advice(e: &sled::Error) -> String {
    let sled::Error::Io(io) = e else {
        return String::new();
    };
    let dir = SERVED_DIR
        .get()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "the controller's store".into());
    let what = if io.kind() == std::io::ErrorKind::StorageFull {
        "the filesystem holding it is full: free space on it"
    } else {
        "check the disk"
    };
    format!(
        " (in {dir}: {what}, then restart the controller; sled refuses every write after an I/O \
         error until it is reopened)"
    )
}

/// A client certificate the controller issued and still honours.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRecord {
    /// The host it names.
    pub host_id: String,
    /// Issued at (ms).
    pub issued_at_ms: i64,
    /// Expires at (ms).
    pub not_after_ms: i64,
    /// For a renewed certificate not yet used: the fingerprint of the one it
    /// replaces, revoked when the host first authenticates with this one
    /// (`Store::confirm_cert`). Absent in records written before renewals
    /// revoked anything, and once confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// A join token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 (hex) of the secret part.
    pub secret_sha256: String,
    /// Labels of hosts it enrolls.
    pub labels: BTreeMap<String, String>,
    /// Created at (ms).
    pub created_at_ms: i64,
    /// Expires at (ms).
    pub expires_at_ms: i64,
    /// Allowed uses, 0 = unlimited.
    pub max_uses: u32,
    /// Uses so far.
    pub uses: u32,
    /// Revoked at (ms), 0 = not revoked.
    pub revoked_at_ms: i64,
    /// Operator who created it.
    pub created_by: String,
    /// Free-form note.
    pub description: String,
    /// Lifetime of certificates issued with it (ms).
    pub cert_ttl_ms: u64,
    /// Label keys hosts enrolling with it may set themselves (absent in
    /// records written before it existed: none).
    #[serde(default)]
    pub allowed_label_keys: Vec<String>,
}

/// An operator credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorRecord {
    /// Public id.
    pub id: String,
    /// Name shown in audit and `whoami`.
    pub name: String,
    /// Role, e.g. "admin".
    pub role: String,
    /// SHA-256 (hex) of the secret part.
    pub secret_sha256: String,
    /// Created at (ms).
    pub created_at_ms: i64,
}

/// Why a join token cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token.
    #[error("join token {0} is unknown to this controller; create one with 'fleetctl token create'")]
    Unknown(String),
    /// The secret part does not match.
    #[error("join token {0} does not match the one the controller issued (wrong secret); copy it again from 'fleetctl token create'")]
    WrongSecret(String),
    /// Revoked by an operator.
    #[error("join token {id} was revoked at {at}; create a new one with 'fleetctl token create'")]
    Revoked { id: String, at: String },
    /// Past its lifetime.
    #[error("join token {id} expired at {at}; create a new one with 'fleetctl token create'")]
    Expired { id: String, at: String },
    /// Every allowed use is spent.
    #[error("join token {id} is used up ({uses} of {max} enrollments); create a new one with 'fleetctl token create --uses N'")]
    UsedUp { id: String, uses: u32, max: u32 },
}

/// Why an enrollment transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token cannot be used.
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RFC 3339 UTC time of a ms timestamp, for messages.
pub fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Hex SHA-256 of a secret.
pub fn secret_hash(secret: &str) -> String {
    fleet_proto::transport::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

impl TokenRecord {
    /// Whether the token can enroll a host at `now`, and if not why.
    pub fn state(&self, now: i64) -> fleet_proto::TokenState {
        use fleet_proto::TokenState;
        match self.check(None, now) {
            Ok(()) => TokenState::Active,
            Err(TokenRefusal::Revoked { .. }) => TokenState::Revoked,
            Err(TokenRefusal::UsedUp { .. }) => TokenState::UsedUp,
            Err(_) => TokenState::Expired,
        }
    }

    /// Whether the token may enroll a host now (checking the secret hash when given).
    pub fn check(&self, secret_sha256: Option<&str>, now: i64) -> Result<(), TokenRefusal> {
        if let Some(h) = secret_sha256 {
            if !ring_eq(h.as_bytes(), self.secret_sha256.as_bytes()) {
                return Err(TokenRefusal::WrongSecret(self.id.clone()));
            }
        }
        if self.revoked_at_ms != 0 {
            return Err(TokenRefusal::Revoked {
                id: self.id.clone(),
                at: utc(self.revoked_at_ms),
            });
        }
        if now >= self.expires_at_ms {
            return Err(TokenRefusal::Expired {
                id: self.id.clone(),
                at: utc(self.expires_at_ms),
            });
        }
        if self.max_uses != 0 && self.uses >= self.max_uses {
            return Err(TokenRefusal::UsedUp {
                id: self.id.clone(),
                uses: self.uses,
                max: self.max_uses,
            });
        }
        Ok(())
    }
}

/// Constant-time equality, so a wrong secret's hash leaks no prefix length.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether opening may create the store's schema record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// `init` and tests: a new store.
    CreateIfMissing,
    /// `serve`: a store without it is empty or damaged.
    MustExist,
}

/// The store: cheap to clone (sled trees are reference-counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// The one path to durability; see `flusher`.
    flusher: Arc<flusher::Flusher>,
    meta: sled::Tree,
    hosts: sled::Tree,
    certs: sled::Tree,
    tokens: sled::Tree,
    operators: sled::Tree,
    apps: sled::Tree,
    releases: sled::Tree,
}

fn enc_proto<M: Message>(m: &M) -> Vec<u8> {
    codec::proto(V1, m)
}

fn dec_proto<M: Message + Default>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    codec::from_proto(tree, key, bytes, V1)
}

fn release_key(app: &str, version: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + 1 + version.len());
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

fn enc_json<T: Serialize>(v: &T) -> Vec<u8> {
    codec::json(V1, v)
}

fn dec_json<T: DeserializeOwned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    codec::from_json(tree, key, bytes, V1)
}

fn enc_host(h: &Host) -> Vec<u8> {
    codec::proto(V1, h)
}

fn dec_host(key: &[u8], bytes: &[u8]) -> Result<Host, StoreError> {
    codec::from_proto("hosts", key, bytes, V1)
}

fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

fn unwrap_txn<T, E: From<StoreError>>(r: Result<T, TransactionError<E>>) -> Result<T, E> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e).into(),
    })
}

impl Store {
    /// Opens the store in `dir`, creating it when missing (`init`, tests).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_sled(dir, Schema::CreateIfMissing)
    }

    /// Opens the store `serve` runs on, which must exist: a data dir whose
    /// store is missing or unreadable is most likely an unmounted volume, and
    /// an empty store in its place would tell every agent it was revoked.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        let missing = |detail: String| StoreError::Missing {
            path: dir.display().to_string(),
            detail,
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(missing("it is not a directory".into())),
            Err(e) => return Err(missing(e.to_string())),
        }
        // Reading the directory and sled's file proves the mount and the permissions.
        std::fs::read_dir(dir).map_err(|e| missing(format!("cannot list it: {e}")))?;
        let db_file = dir.join(SLED_DB_FILE);
        std::fs::File::open(&db_file).map_err(|e| missing(format!("cannot open {}: {e}", db_file.display())))?;
        let store = Store::open_sled(dir, Schema::MustExist)?;
        let _ = SERVED_DIR.set(dir.to_path_buf());
        Ok(store)
    }

    fn open_sled(dir: &Path, schema: Schema) -> Result<Store, StoreError> {
        let path = dir.display().to_string();
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| {
                let detail = e.to_string();
                // sled's words when fs2's try_lock_exclusive fails (config.rs, 0.34).
                if detail.contains("could not acquire lock") {
                    StoreError::Locked {
                        path: path.clone(),
                        detail,
                    }
                } else if matches!(e, sled::Error::Io(_)) {
                    StoreError::Open {
                        path: path.clone(),
                        detail,
                    }
                } else {
                    StoreError::Damaged {
                        path: path.clone(),
                        detail,
                    }
                }
            })?;
        let meta = db.open_tree("meta")?;
        if meta.get("schema")?.is_none() {
            // sled recovers a log it cannot parse as an empty database, so a
            // damaged store opens "fine": the schema record init wrote is
            // what tells an empty store from ours.
            if schema == Schema::MustExist {
                return Err(StoreError::Damaged {
                    path,
                    detail: "it holds no fleet data (no schema record), so sled found nothing it could read".into(),
                });
            }
            meta.insert("schema", &[V1])?;
        }
        Ok(Store {
            flusher: Arc::new(flusher::Flusher::start(db.clone(), dir)?),
            hosts: db.open_tree("hosts")?,
            certs: db.open_tree("certs")?,
            tokens: db.open_tree("tokens")?,
            operators: db.open_tree("operators")?,
            apps: db.open_tree("apps")?,
            releases: db.open_tree("releases")?,
            meta,
            db,
        })
    }

    /// A tree of the database, for the store's own submodules (`rollouts`,
    /// `audit`): nothing outside `store` reaches sled.
    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Makes every write made before the call durable: waits for a flush by
    /// the store's single flusher that started after the call (many callers
    /// share one flush). Fails with [`StoreError::Flush`] when that flush fails.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// [`Store::flush`] for `init`, outside an async runtime (panics on one).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.flusher.flush_blocking()
    }

    /// What the flushes say about the store: `/healthz` and `/metrics` read it.
    pub fn health(&self) -> Arc<Health> {
        self.flusher.health().clone()
    }

    /// Proves the store takes durable writes: a tiny write and a flush
    /// through the flusher (the watchdog's check). A refused write makes
    /// the store unhealthy like a failed flush.
    pub async fn probe(&self, now_ms: i64) -> Result<(), StoreError> {
        let mut v = vec![V1];
        v.extend_from_slice(&now_ms.to_be_bytes());
        if let Err(e) = self.meta.insert("alive", v) {
            self.flusher.health().record_write_error(e.to_string());
            return Err(e.into());
        }
        self.flush().await
    }

    // --- operators -------------------------------------------------------

    /// Adds an operator credential.
    pub fn put_operator(&self, rec: &OperatorRecord) -> Result<(), StoreError> {
        self.operators.insert(rec.id.as_bytes(), enc_json(rec))?;
        Ok(())
    }

    /// An operator credential by id.
    pub fn operator(&self, id: &str) -> Result<Option<OperatorRecord>, StoreError> {
        self.operators
            .get(id)?
            .map(|v| dec_json("operators", id.as_bytes(), &v))
            .transpose()
    }

    // --- join tokens -----------------------------------------------------

    /// Stores a new join token.
    pub fn put_token(&self, rec: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(rec.id.as_bytes(), enc_json(rec))?;
        Ok(())
    }

    /// A join token by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens
            .get(id)?
            .map(|v| dec_json("tokens", id.as_bytes(), &v))
            .transpose()
    }

    /// Every join token.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                dec_json("tokens", &k, &v)
            })
            .collect()
    }

    /// Marks a token revoked; returns it, or None when unknown.
    pub fn revoke_token(&self, id: &str, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        let r = self.tokens.transaction(|t| {
            let Some(v) = t.get(id)? else { return Ok(None) };
            let mut rec: TokenRecord = dec_json("tokens", id.as_bytes(), &v).map_err(abort)?;
            if rec.revoked_at_ms == 0 {
                rec.revoked_at_ms = now;
                t.insert(id.as_bytes(), enc_json(&rec))?;
            }
            Ok(Some(rec))
        });
        unwrap_txn(r)
    }

    // --- enrollment and certificates -------------------------------------

    /// Enrolls a host in one transaction: re-checks and spends a use of the
    /// token, stores the host and allows its certificate. Nothing changes when
    /// any check fails.
    pub fn enroll(
        &self,
        token_id: &str,
        secret_sha256: &str,
        now: i64,
        host: &Host,
        cert_fp: &str,
        cert: &CertRecord,
    ) -> Result<(), EnrollError> {
        let r = (&self.tokens, &self.hosts, &self.certs).transaction(|(tokens, hosts, certs)| {
            let Some(v) = tokens.get(token_id)? else {
                return Err(abort(EnrollError::Token(TokenRefusal::Unknown(token_id.to_string()))));
            };
            let mut rec: TokenRecord =
                dec_json("tokens", token_id.as_bytes(), &v).map_err(|e| abort(EnrollError::Store(e)))?;
            rec.check(Some(secret_sha256), now)
                .map_err(|e| abort(EnrollError::Token(e)))?;
            rec.uses += 1;
            tokens.insert(token_id.as_bytes(), enc_json(&rec))?;
            hosts.insert(host.id.as_bytes(), enc_host(host))?;
            certs.insert(cert_fp.as_bytes(), enc_json(cert))?;
            Ok(())
        });
        unwrap_txn(r)
    }

    /// Allows a renewed certificate for an existing host; false when the host is gone.
    pub fn add_cert(&self, cert_fp: &str, cert: &CertRecord) -> Result<bool, StoreError> {
        let r = (&self.hosts, &self.certs).transaction(|(hosts, certs)| {
            let Some(v) = hosts.get(cert.host_id.as_bytes())? else {
                return Ok(false);
            };
            let mut host = dec_host(cert.host_id.as_bytes(), &v).map_err(abort)?;
            host.cert_not_after_ms = cert.not_after_ms;
            hosts.insert(cert.host_id.as_bytes(), enc_host(&host))?;
            certs.insert(cert_fp.as_bytes(), enc_json(cert))?;
            Ok(true)
        });
        unwrap_txn(r)
    }

    /// The host authenticated with `cert_fp`: if that certificate replaces
    /// another (a renewal), the other is revoked now, with every other
    /// renewal of it the host did not move to (asked again on the same
    /// stream), and this one is recorded as confirmed. Returns the first
    /// revoked fingerprint, if any. Callers make it durable with `flush`.
    pub fn confirm_cert(&self, cert_fp: &str) -> Result<Option<String>, StoreError> {
        let Some(rec) = self.certs.get(cert_fp)? else {
            return Ok(None);
        };
        let rec: CertRecord = dec_json("certs", cert_fp.as_bytes(), &rec)?;
        let Some(replaced) = rec.replaces.clone() else {
            return Ok(None);
        };
        // Siblings: renewals of the same certificate for the same host.
        let mut siblings = Vec::new();
        for kv in self.certs.iter() {
            let (k, v) = kv?;
            let other: CertRecord = dec_json("certs", &k, &v)?;
            if k.as_ref() != cert_fp.as_bytes()
                && other.host_id == rec.host_id
                && other.replaces.as_deref() == Some(replaced.as_str())
            {
                siblings.push(k);
            }
        }
        let r = self.certs.transaction(|certs| {
            let Some(v) = certs.get(cert_fp.as_bytes())? else {
                return Ok(None);
            };
            let mut rec: CertRecord = dec_json("certs", cert_fp.as_bytes(), &v).map_err(abort)?;
            let Some(old) = rec.replaces.take() else {
                return Ok(None);
            };
            for k in &siblings {
                certs.remove(k.clone())?;
            }
            // Only a certificate of the same host is ever revoked here.
            let same_host = match certs.get(old.as_bytes())? {
                Some(ov) => {
                    dec_json::<CertRecord>("certs", old.as_bytes(), &ov)
                        .map_err(abort)?
                        .host_id
                        == rec.host_id
                }
                None => false,
            };
            if same_host {
                certs.remove(old.as_bytes())?;
            }
            certs.insert(cert_fp.as_bytes(), enc_json(&rec))?;
            Ok(same_host.then_some(old))
        });
        unwrap_txn(r)
    }

    /// The host a certificate (by fingerprint) authenticates, if it is still honoured.
    pub fn cert_host(&self, cert_fp: &str) -> Result<Option<CertRecord>, StoreError> {
        let Some(v) = self.certs.get(cert_fp)? else {
            return Ok(None);
        };
        let rec: CertRecord = dec_json("certs", cert_fp.as_bytes(), &v)?;
        if self.hosts.contains_key(rec.host_id.as_bytes())? {
            Ok(Some(rec))
        } else {
            Ok(None)
        }
    }

    // --- hosts -----------------------------------------------------------

    /// A host by exact id.
    pub fn host(&self, id: &str) -> Result<Option<Host>, StoreError> {
        self.hosts.get(id)?.map(|v| dec_host(id.as_bytes(), &v)).transpose()
    }

    /// Every host.
    pub fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        self.hosts
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                dec_host(&k, &v)
            })
            .collect()
    }

    /// How many hosts are enrolled.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Changes a host in place; returns the new record, or None when unknown.
    pub fn update_host(&self, id: &str, f: impl Fn(&mut Host)) -> Result<Option<Host>, StoreError> {
        let r = self.hosts.transaction(|t| {
            let Some(v) = t.get(id)? else { return Ok(None) };
            let mut host = dec_host(id.as_bytes(), &v).map_err(abort)?;
            f(&mut host);
            t.insert(id.as_bytes(), enc_host(&host))?;
            Ok(Some(host))
        });
        unwrap_txn(r)
    }

    /// Removes a host and every certificate issued to it. Returns the removed
    /// host and how many certificates were dropped, or None when unknown.
    pub fn remove_host(&self, id: &str) -> Result<Option<(Host, u32)>, StoreError> {
        let mut fps = Vec::new();
        for kv in self.certs.iter() {
            let (k, v) = kv?;
            let rec: CertRecord = dec_json("certs", &k, &v)?;
            if rec.host_id == id {
                fps.push(k);
            }
        }
        let r = (&self.hosts, &self.certs).transaction(|(hosts, certs)| {
            let Some(v) = hosts.remove(id.as_bytes())? else {
                return Ok(None);
            };
            let host = dec_host(id.as_bytes(), &v).map_err(abort)?;
            let mut n = 0;
            for fp in &fps {
                if certs.remove(fp.clone())?.is_some() {
                    n += 1;
                }
            }
            Ok(Some((host, n)))
        });
        unwrap_txn(r)
    }

    // --- apps and releases -----------------------------------------------

    /// Stores an app; `create` refuses to overwrite one (returns false).
    pub fn put_app(&self, spec: &AppSpec, create: bool) -> Result<bool, StoreError> {
        let v = enc_proto(spec);
        if create {
            let r = self
                .apps
                .compare_and_swap(spec.name.as_bytes(), None as Option<&[u8]>, Some(v))?;
            return Ok(r.is_ok());
        }
        self.apps.insert(spec.name.as_bytes(), v)?;
        Ok(true)
    }

    /// An app by name.
    pub fn app(&self, name: &str) -> Result<Option<AppSpec>, StoreError> {
        self.apps
            .get(name)?
            .map(|v| dec_proto("apps", name.as_bytes(), &v))
            .transpose()
    }

    /// Every app, sorted by name.
    pub fn apps(&self) -> Result<Vec<AppSpec>, StoreError> {
        self.apps
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                dec_proto("apps", &k, &v)
            })
            .collect()
    }

    /// Stores a release unless that version exists; returns the stored one
    /// when it does (the caller compares digests).
    pub fn put_release(&self, rel: &Release) -> Result<Result<(), Release>, StoreError> {
        let version = rel.artifact.as_ref().map(|a| a.version.as_str()).unwrap_or_default();
        let key = release_key(&rel.app, version);
        match self
            .releases
            .compare_and_swap(&key, None as Option<&[u8]>, Some(enc_proto(rel)))?
        {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                let current = e.current.unwrap_or_default();
                Ok(Err(dec_proto("releases", &key, &current)?))
            }
        }
    }

    /// One release.
    pub fn release(&self, app: &str, version: &str) -> Result<Option<Release>, StoreError> {
        let key = release_key(app, version);
        self.releases
            .get(&key)?
            .map(|v| dec_proto("releases", &key, &v))
            .transpose()
    }

    /// An app's releases, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        let mut prefix = app.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<Release> = self
            .releases
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                dec_proto("releases", &k, &v)
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|r| std::cmp::Reverse(r.pushed_at_ms));
        Ok(out)
    }

    /// Deletes a release record (the caller makes it durable, then removes
    /// the artifact if nothing names it); returns what was deleted.
    pub fn delete_release(&self, app: &str, version: &str) -> Result<Option<Release>, StoreError> {
        let key = release_key(app, version);
        self.releases
            .remove(&key)?
            .map(|v| dec_proto("releases", &key, &v))
            .transpose()
    }

    /// Every release of every app, in key order (app, then version).
    pub fn all_releases(&self) -> Result<Vec<Release>, StoreError> {
        let mut out = Vec::new();
        for kv in self.releases.iter() {
            let (k, v) = kv?;
            out.push(dec_proto("releases", &k, &v)?);
        }
        Ok(out)
    }

    /// The digests some release names: the artifacts that must be kept.
    pub fn artifact_digests(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        Ok(self
            .all_releases()?
            .into_iter()
            .filter_map(|r| r.artifact.map(|a| a.sha256))
            .collect())
    }

    /// Whether any stored release has this digest.
    pub fn has_artifact(&self, sha256: &str) -> Result<bool, StoreError> {
        for kv in self.releases.iter() {
            let (k, v) = kv?;
            let rel: Release = dec_proto("releases", &k, &v)?;
            if rel.artifact.is_some_and(|a| a.sha256 == sha256) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(max_uses: u32) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            secret_sha256: secret_hash("s"),
            labels: BTreeMap::new(),
            created_at_ms: 0,
            expires_at_ms: 1000,
            max_uses,
            uses: 0,
            revoked_at_ms: 0,
            created_by: "admin".into(),
            description: String::new(),
            cert_ttl_ms: 3_600_000,
            allowed_label_keys: Vec::new(),
        }
    }

    fn host(id: &str) -> Host {
        Host {
            id: id.into(),
            ..Default::default()
        }
    }

    fn cert(host_id: &str) -> CertRecord {
        CertRecord {
            replaces: None,
            host_id: host_id.into(),
            issued_at_ms: 1,
            not_after_ms: 2,
        }
    }

    #[test]
    fn token_checks_in_order() {
        let t = token(1);
        assert_eq!(t.check(Some(&secret_hash("s")), 10), Ok(()));
        assert!(matches!(
            t.check(Some(&secret_hash("x")), 10),
            Err(TokenRefusal::WrongSecret(_))
        ));
        assert!(matches!(t.check(None, 1000), Err(TokenRefusal::Expired { .. })));
        assert_eq!(t.state(2000), fleet_proto::TokenState::Expired);
        let used = TokenRecord { uses: 1, ..token(1) };
        assert_eq!(used.state(10), fleet_proto::TokenState::UsedUp);
        let revoked = TokenRecord {
            revoked_at_ms: 5,
            ..token(0)
        };
        assert_eq!(revoked.state(10), fleet_proto::TokenState::Revoked);
    }

    #[test]
    fn enrollment_is_all_or_nothing_and_spends_uses() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        store.put_token(&token(1)).expect("put");
        store
            .enroll("t1", &secret_hash("s"), 10, &host("h1"), "fp1", &cert("h1"))
            .expect("first use");
        let err = store
            .enroll("t1", &secret_hash("s"), 10, &host("h2"), "fp2", &cert("h2"))
            .expect_err("used up");
        assert!(matches!(err, EnrollError::Token(TokenRefusal::UsedUp { .. })), "{err}");
        assert!(store.host("h2").expect("get").is_none(), "nothing stored on refusal");
        assert!(store.cert_host("fp2").expect("get").is_none());
        assert_eq!(store.token("t1").expect("get").map(|t| t.uses), Some(1));
    }

    #[test]
    fn a_renewal_revokes_what_it_replaces_only_once_used() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        store.put_token(&token(0)).expect("put");
        store
            .enroll("t1", &secret_hash("s"), 10, &host("h1"), "fp0", &cert("h1"))
            .expect("enroll");
        let renewal = CertRecord {
            replaces: Some("fp0".into()),
            ..cert("h1")
        };
        // Two renewals on the stream of fp0; nothing is revoked yet.
        assert!(store.add_cert("fp1", &renewal).expect("renew"));
        assert!(store.add_cert("fp2", &renewal).expect("renew again"));
        assert_eq!(store.confirm_cert("fp0").expect("no renewal"), None);
        for fp in ["fp0", "fp1", "fp2"] {
            assert!(
                store.cert_host(fp).expect("get").is_some(),
                "{fp} honoured before the switch"
            );
        }
        // The host authenticates with fp2: fp0 and the unused sibling go.
        assert_eq!(store.confirm_cert("fp2").expect("confirm"), Some("fp0".into()));
        assert!(store.cert_host("fp0").expect("get").is_none());
        assert!(store.cert_host("fp1").expect("get").is_none());
        let kept = store.cert_host("fp2").expect("get").expect("the new one stays");
        assert_eq!(kept.replaces, None, "confirmed");
        assert_eq!(store.confirm_cert("fp2").expect("again"), None, "idempotent");
    }

    #[test]
    fn removing_a_host_revokes_all_its_certs() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        store.put_token(&token(0)).expect("put");
        store
            .enroll("t1", &secret_hash("s"), 10, &host("h1"), "fp1", &cert("h1"))
            .expect("enroll");
        assert!(store.add_cert("fp1b", &cert("h1")).expect("renew"));
        let (_, n) = store.remove_host("h1").expect("rm").expect("existed");
        assert_eq!(n, 2);
        assert!(store.cert_host("fp1").expect("get").is_none());
        assert!(
            !store.add_cert("fp1c", &cert("h1")).expect("renew after rm"),
            "no cert for a removed host"
        );
        assert!(store.cert_host("fp1c").expect("get").is_none());
    }

    #[test]
    fn corrupt_values_are_reported_not_guessed() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        store.tokens.insert("bad", &[9, 1, 2]).expect("raw insert");
        let err = store.token("bad").expect_err("corrupt");
        assert!(err.to_string().contains("version byte 9"), "{err}");
    }
}
