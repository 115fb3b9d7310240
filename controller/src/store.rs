//! The controller's durable state, in sled under `DATA_DIR/store`.
//!
//! The typed methods below sit on a narrow key-value trait ([`kv::Kv`]:
//! get, prefix and range scans, one conditional commit) and the codec; sled
//! is behind it ([`kv::SledKv`]), so a second backend (etcd) can replace it.
//! Read-modify-writes are optimistic ([`kv::optimistic`]): read, decide,
//! commit with compares on what was read, retry on a conflict.
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
//! | `operators` | operator token id | `1` + JSON [`OperatorRecord`] (owned by `operators`) |
//! | `identities` | operator name | `1` + JSON [`IdentityRecord`] (owned by `operators`) |
//! | `apps` | app name | `1` + protobuf `fleet.v1.AppSpec` |
//! | `releases` | `<app>\0<version>` | `1` + protobuf `fleet.v1.Release` (the bytes are in `DATA_DIR/artifacts/<sha256>`) |
//! | `audit` | big-endian ms timestamp + big-endian sequence (8 + 8 bytes) | `1` + JSON `audit::Record` (owned by `audit`) |
//!
//! Invariant: a client certificate is valid only while its `certs` entry
//! exists AND the host it names exists in `hosts`; removing the host is
//! therefore enough to revoke every certificate it ever got, including one a
//! renewal issued concurrently.

use std::sync::Arc;

use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use fleet_proto::{AppSpec, Host, Release};

pub mod audit;
pub mod codec;
pub mod etcd;
mod flusher;
pub mod journal;
pub mod kv;
pub mod names;
pub mod notifiers;
mod open;
pub mod operators;
mod records;
pub mod rollouts;

pub use flusher::{FlushCounts, Health};
use kv::{optimistic, Attempt, Committed, Kv, Space, Txn};
#[cfg(test)]
use open::Schema;
use open::Serving;
pub use open::{Backend, Me, Peers, Standby};
pub use records::{
    secret_hash, utc, CertRecord, EnrollError, IdentityRecord, OperatorRecord, TokenRecord, TokenRefusal,
};

const V1: u8 = 1;

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
    /// A read-modify-write lost to concurrent writers every time it tried.
    #[error(
        "store: {what} conflicted with concurrent writes {tries} times in a row and gave up; \
         try again"
    )]
    Contended { what: &'static str, tries: u32 },
    /// The etcd backend could not do what was asked (`detail` says what
    /// happened and what to do).
    #[error("store on {name}: {detail}")]
    Etcd { name: String, detail: String },
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

/// Lanes queueing this process's read-modify-writes (see [`Store::rmw`]).
const LANES: usize = 64;

/// The store: cheap to clone (the backend is shared).
#[derive(Clone)]
pub struct Store {
    /// The backend; see `kv`.
    kv: Arc<dyn Kv>,
    /// The one path to durability; see `flusher`.
    flusher: Arc<flusher::Flusher>,
    /// Read-modify-writes of one key queue in its lane (by hash).
    lanes: Arc<[std::sync::Mutex<()>]>,
    /// Host ids by hostname, kept beside the hosts; see `names`.
    names: Arc<names::HostNames>,
    /// On etcd, under `serve`: the fleet's serving lock (see `etcd::lock`).
    serving: Option<Arc<Serving>>,
}

fn enc_proto<M: Message>(m: &M) -> Vec<u8> {
    codec::proto(V1, m)
}

/// Every release in `kv`, in key order (also read by a follower, which
/// has no `Store`).
fn all_releases(kv: &dyn Kv) -> Result<Vec<Release>, StoreError> {
    decode_all(kv, Space::Releases, b"", |k, v| dec_proto("releases", k, v))
}

/// `app`'s release `version` in `kv` (also read by a follower).
fn one_release(kv: &dyn Kv, app: &str, version: &str) -> Result<Option<Release>, StoreError> {
    let key = release_key(app, version);
    kv.get(Space::Releases, &key)?
        .map(|v| dec_proto("releases", &key, &v))
        .transpose()
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

/// Every entry of a space whose key starts with `prefix`, decoded.
fn decode_all<T>(
    kv: &dyn Kv,
    space: Space,
    prefix: &[u8],
    dec: impl Fn(&[u8], &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    kv.scan_prefix(space, prefix)?.iter().map(|(k, v)| dec(k, v)).collect()
}

impl Store {
    /// Runs a read-modify-write centred on `key` (a token, a host, a
    /// release) with [`optimistic`]: the compares keep it correct against
    /// every other writer (another controller on a shared backend), and
    /// this process's read-modify-writes of the same key wait in one lane
    /// instead of conflicting with each other (32 enrollments with one token
    /// would otherwise retry in a herd whenever a flush holds sled's lock).
    /// Lanes are never nested: `attempt` must not call the store.
    fn rmw<T, E: From<StoreError>>(
        &self,
        key: &[u8],
        what: &'static str,
        attempt: impl FnMut(&dyn Kv) -> Result<Attempt<T>, E>,
    ) -> Result<T, E> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let lane = &self.lanes[(h.finish() % LANES as u64) as usize];
        // A poisoned lane only means a panic in another attempt; it guards no data.
        let _queued = lane.lock().unwrap_or_else(|p| p.into_inner());
        optimistic(self.kv.as_ref(), what, attempt)
    }

    /// The backend, for the store's own submodules (`rollouts`, `audit`):
    /// nothing outside `store` reaches it.
    pub(crate) fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
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
        if let Err(e) = self.kv.commit(Txn::new().put(Space::Meta, b"alive", v)) {
            // The backend's own words, as a failed flush reports them.
            let detail = match &e {
                StoreError::Sled(inner) => inner.to_string(),
                StoreError::Etcd { detail, .. } => detail.clone(),
                other => other.to_string(),
            };
            self.flusher.health().record_write_error(detail);
            return Err(e);
        }
        self.flush().await
    }

    /// One value of a space, decoded.
    fn get_with<T>(
        &self,
        space: Space,
        key: &[u8],
        dec: impl FnOnce(&[u8], &[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.kv.get(space, key)?.map(|v| dec(key, &v)).transpose()
    }

    /// Writes one value, unconditionally.
    fn put(&self, space: Space, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let _ = self.kv.commit(Txn::new().put(space, key, value))?;
        Ok(())
    }

    // --- join tokens -----------------------------------------------------

    /// Stores a new join token.
    pub fn put_token(&self, rec: &TokenRecord) -> Result<(), StoreError> {
        self.put(Space::Tokens, rec.id.as_bytes(), enc_json(rec))
    }

    /// A join token by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get_with(Space::Tokens, id.as_bytes(), |k, v| dec_json("tokens", k, v))
    }

    /// Every join token.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        decode_all(self.kv.as_ref(), Space::Tokens, b"", |k, v| dec_json("tokens", k, v))
    }

    /// Marks a token revoked; returns it, or None when unknown.
    pub fn revoke_token(&self, id: &str, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        self.rmw(id.as_bytes(), "revoking a join token", |kv| {
            let Some(v) = kv.get(Space::Tokens, id.as_bytes())? else {
                return Ok(Attempt::Done(None));
            };
            let mut rec: TokenRecord = dec_json("tokens", id.as_bytes(), &v)?;
            if rec.revoked_at_ms != 0 {
                return Ok(Attempt::Done(Some(rec)));
            }
            rec.revoked_at_ms = now;
            let txn = Txn::new()
                .when_equals(Space::Tokens, id, &v)
                .put(Space::Tokens, id, enc_json(&rec));
            Ok(Attempt::Commit(txn, Some(rec)))
        })
    }

    // --- enrollment and certificates -------------------------------------

    /// Enrolls a host in one transaction: re-checks and spends a use of the
    /// token, stores the host and allows its certificate. Nothing changes when
    /// any check fails. The use is spent only if the token is still what the
    /// check read (a compare), so concurrent enrollments never spend more
    /// uses than the token allows.
    pub fn enroll(
        &self,
        token_id: &str,
        secret_sha256: &str,
        now: i64,
        host: &Host,
        cert_fp: &str,
        cert: &CertRecord,
    ) -> Result<(), EnrollError> {
        self.rmw(token_id.as_bytes(), "an enrollment", |kv| {
            let Some(v) = kv.get(Space::Tokens, token_id.as_bytes())? else {
                return Err(EnrollError::Token(TokenRefusal::Unknown(token_id.to_string())));
            };
            let mut rec: TokenRecord = dec_json("tokens", token_id.as_bytes(), &v)?;
            rec.check(Some(secret_sha256), now)?;
            rec.uses += 1;
            let txn = Txn::new()
                .when_equals(Space::Tokens, token_id, &v)
                .put(Space::Tokens, token_id, enc_json(&rec))
                .put(Space::Hosts, &host.id, enc_host(host))
                .put(Space::Certs, cert_fp, enc_json(cert));
            Ok(Attempt::Commit(txn, ()))
        })?;
        self.names.note(host);
        Ok(())
    }

    /// Allows a renewed certificate for an existing host; false when the host is gone.
    pub fn add_cert(&self, cert_fp: &str, cert: &CertRecord) -> Result<bool, StoreError> {
        self.rmw(cert.host_id.as_bytes(), "storing a renewed certificate", |kv| {
            let id = cert.host_id.as_bytes();
            let Some(v) = kv.get(Space::Hosts, id)? else {
                return Ok(Attempt::Done(false));
            };
            let mut host = dec_host(id, &v)?;
            host.cert_not_after_ms = cert.not_after_ms;
            let txn = Txn::new()
                .when_equals(Space::Hosts, id, &v)
                .put(Space::Hosts, id, enc_host(&host))
                .put(Space::Certs, cert_fp, enc_json(cert));
            Ok(Attempt::Commit(txn, true))
        })
    }

    /// The host authenticated with `cert_fp`: if that certificate replaces
    /// another (a renewal), the other is revoked now, with every other
    /// renewal of it the host did not move to (asked again on the same
    /// stream), and this one is recorded as confirmed. Returns the first
    /// revoked fingerprint, if any. Callers make it durable with `flush`.
    pub fn confirm_cert(&self, cert_fp: &str) -> Result<Option<String>, StoreError> {
        self.rmw(cert_fp.as_bytes(), "confirming a renewed certificate", |kv| {
            let Some(v) = kv.get(Space::Certs, cert_fp.as_bytes())? else {
                return Ok(Attempt::Done(None));
            };
            let mut rec: CertRecord = dec_json("certs", cert_fp.as_bytes(), &v)?;
            let Some(old) = rec.replaces.take() else {
                return Ok(Attempt::Done(None));
            };
            let mut txn = Txn::new().when_equals(Space::Certs, cert_fp, &v);
            // Siblings: renewals of the same certificate for the same host;
            // and whether the replaced one is the same host's (only such a
            // certificate is ever revoked here).
            let mut same_host = false;
            let mut old_seen = false;
            for (k, ov) in kv.scan_prefix(Space::Certs, b"")? {
                if k == cert_fp.as_bytes() {
                    continue;
                }
                let other: CertRecord = dec_json("certs", &k, &ov)?;
                if k == old.as_bytes() {
                    old_seen = true;
                    same_host = other.host_id == rec.host_id;
                    txn = txn.when_equals(Space::Certs, &k, &ov);
                } else if other.host_id == rec.host_id && other.replaces.as_deref() == Some(old.as_str()) {
                    txn = txn.delete(Space::Certs, &k);
                }
            }
            if !old_seen {
                txn = txn.when_absent(Space::Certs, &old);
            }
            if same_host {
                txn = txn.delete(Space::Certs, &old);
            }
            txn = txn.put(Space::Certs, cert_fp, enc_json(&rec));
            Ok(Attempt::Commit(txn, same_host.then_some(old)))
        })
    }

    /// The host a certificate (by fingerprint) authenticates, if it is still honoured.
    pub fn cert_host(&self, cert_fp: &str) -> Result<Option<CertRecord>, StoreError> {
        honoured_cert(self.kv.as_ref(), cert_fp)
    }

    // --- hosts -----------------------------------------------------------

    /// A host by exact id.
    pub fn host(&self, id: &str) -> Result<Option<Host>, StoreError> {
        self.get_with(Space::Hosts, id.as_bytes(), dec_host)
    }

    /// Every host.
    pub fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        decode_all(self.kv.as_ref(), Space::Hosts, b"", dec_host)
    }

    /// The hosts whose id starts with `prefix` (a range read, not a scan).
    pub fn hosts_with_id_prefix(&self, prefix: &str) -> Result<Vec<Host>, StoreError> {
        decode_all(self.kv.as_ref(), Space::Hosts, prefix.as_bytes(), dec_host)
    }

    /// How many hosts are enrolled (0 when the store cannot say).
    pub fn host_count(&self) -> usize {
        self.kv.count(Space::Hosts).unwrap_or(0)
    }

    /// Changes a host in place; returns the new record, or None when unknown.
    /// `f` may run more than once (again after a concurrent change).
    pub fn update_host(&self, id: &str, f: impl Fn(&mut Host)) -> Result<Option<Host>, StoreError> {
        let updated: Option<Host> = self.rmw::<_, StoreError>(id.as_bytes(), "updating a host", |kv| {
            let Some(v) = kv.get(Space::Hosts, id.as_bytes())? else {
                return Ok(Attempt::Done(None));
            };
            let mut host = dec_host(id.as_bytes(), &v)?;
            f(&mut host);
            let txn = Txn::new()
                .when_equals(Space::Hosts, id, &v)
                .put(Space::Hosts, id, enc_host(&host));
            Ok(Attempt::Commit(txn, Some(host)))
        })?;
        if let Some(h) = &updated {
            self.names.note(h);
        }
        Ok(updated)
    }

    /// The hosts that go by `name` (the hostname they report), from the
    /// hostname index: no scan of every host.
    pub fn hosts_named(&self, name: &str) -> Result<Vec<Host>, StoreError> {
        if name.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for id in self.names.ids(name, || self.hosts())? {
            if let Some(h) = self.host(&id)?.filter(|h| names::hostname(h) == name) {
                found.push(h);
            }
        }
        Ok(found)
    }

    /// Removes a host and every certificate issued to it. Returns the removed
    /// host and how many certificates were dropped, or None when unknown.
    pub fn remove_host(&self, id: &str) -> Result<Option<(Host, u32)>, StoreError> {
        let removed: Option<(Host, u32)> = self.rmw::<_, StoreError>(id.as_bytes(), "removing a host", |kv| {
            let Some(v) = kv.get(Space::Hosts, id.as_bytes())? else {
                return Ok(Attempt::Done(None));
            };
            let host = dec_host(id.as_bytes(), &v)?;
            let mut txn = Txn::new().when_equals(Space::Hosts, id, &v).delete(Space::Hosts, id);
            let mut n = 0;
            for (k, cv) in kv.scan_prefix(Space::Certs, b"")? {
                let rec: CertRecord = dec_json("certs", &k, &cv)?;
                if rec.host_id == id {
                    txn = txn.when_equals(Space::Certs, &k, &cv).delete(Space::Certs, &k);
                    n += 1;
                }
            }
            Ok(Attempt::Commit(txn, Some((host, n))))
        })?;
        if let Some((h, _)) = &removed {
            self.names.forget(h);
        }
        Ok(removed)
    }

    // --- apps and releases -----------------------------------------------

    /// Stores an app; `create` refuses to overwrite one (returns false).
    pub fn put_app(&self, spec: &AppSpec, create: bool) -> Result<bool, StoreError> {
        let key = spec.name.as_bytes();
        let mut txn = Txn::new();
        if create {
            txn = txn.when_absent(Space::Apps, key);
        }
        let r = self.kv.commit(txn.put(Space::Apps, key, enc_proto(spec)))?;
        Ok(r == Committed::Applied)
    }

    /// An app by name.
    pub fn app(&self, name: &str) -> Result<Option<AppSpec>, StoreError> {
        self.get_with(Space::Apps, name.as_bytes(), |k, v| dec_proto("apps", k, v))
    }

    /// Every app, sorted by name.
    pub fn apps(&self) -> Result<Vec<AppSpec>, StoreError> {
        decode_all(self.kv.as_ref(), Space::Apps, b"", |k, v| dec_proto("apps", k, v))
    }

    /// Stores a release unless that version exists; returns the stored one
    /// when it does (the caller compares digests).
    pub fn put_release(&self, rel: &Release) -> Result<Result<(), Release>, StoreError> {
        let version = rel.artifact.as_ref().map(|a| a.version.as_str()).unwrap_or_default();
        let key = release_key(&rel.app, version);
        self.rmw(&key, "storing a release", |kv| {
            if let Some(current) = kv.get(Space::Releases, &key)? {
                return Ok(Attempt::Done(Err(dec_proto("releases", &key, &current)?)));
            }
            let txn = Txn::new()
                .when_absent(Space::Releases, &key)
                .put(Space::Releases, &key, enc_proto(rel));
            Ok(Attempt::Commit(txn, Ok(())))
        })
    }

    /// One release.
    pub fn release(&self, app: &str, version: &str) -> Result<Option<Release>, StoreError> {
        one_release(self.kv.as_ref(), app, version)
    }

    /// An app's releases, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        let mut prefix = app.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<Release> = decode_all(self.kv.as_ref(), Space::Releases, &prefix, |k, v| {
            dec_proto("releases", k, v)
        })?;
        out.sort_by_key(|r| std::cmp::Reverse(r.pushed_at_ms));
        Ok(out)
    }

    /// Deletes a release record (the caller makes it durable, then removes
    /// the artifact if nothing names it); returns what was deleted.
    pub fn delete_release(&self, app: &str, version: &str) -> Result<Option<Release>, StoreError> {
        let key = release_key(app, version);
        self.rmw(&key, "deleting a release", |kv| {
            let Some(v) = kv.get(Space::Releases, &key)? else {
                return Ok(Attempt::Done(None));
            };
            let rel = dec_proto("releases", &key, &v)?;
            let txn = Txn::new()
                .when_equals(Space::Releases, &key, &v)
                .delete(Space::Releases, &key);
            Ok(Attempt::Commit(txn, Some(rel)))
        })
    }

    /// Every release of every app, in key order (app, then version).
    pub fn all_releases(&self) -> Result<Vec<Release>, StoreError> {
        all_releases(self.kv.as_ref())
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
        for (k, v) in self.kv.scan_prefix(Space::Releases, b"")? {
            let rel: Release = dec_proto("releases", &k, &v)?;
            if rel.artifact.is_some_and(|a| a.sha256 == sha256) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The record of a client certificate the fleet honours: issued, and its
/// host not removed (`Store::cert_host`; a follower's TLS reads it too).
pub(crate) fn honoured_cert(kv: &dyn Kv, cert_fp: &str) -> Result<Option<CertRecord>, StoreError> {
    let Some(v) = kv.get(Space::Certs, cert_fp.as_bytes())? else {
        return Ok(None);
    };
    let rec: CertRecord = dec_json("certs", cert_fp.as_bytes(), &v)?;
    if kv.get(Space::Hosts, rec.host_id.as_bytes())?.is_some() {
        Ok(Some(rec))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
