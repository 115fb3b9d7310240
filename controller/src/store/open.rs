//! Opening the store on its backend: sled in the data dir, or etcd (the
//! checks `init` makes before a new fleet, the serving lock `serve` takes),
//! and the schema record that tells a fleet's store from an empty one.

use std::path::Path;
use std::sync::Arc;

use super::kv::{Kv, SledKv, Space, Txn, SLED_DB_FILE};
use super::{etcd, flusher, Store, StoreError, LANES, SERVED_DIR, V1};

/// The etcd client for `settings`, after one status call proves the
/// endpoints, the TLS and a leader.
fn etcd_kv(settings: &etcd::EtcdSettings) -> Result<Arc<etcd::EtcdKv>, StoreError> {
    let kv = etcd::EtcdKv::connect(settings)?;
    let version = kv.check()?;
    tracing::info!(etcd = %settings.describe(), version, "store on etcd");
    Ok(Arc::new(kv))
}

/// The error for asking a fleet on sled about other controllers.
fn alone_on_sled() -> StoreError {
    StoreError::Etcd {
        name: "the data dir".into(),
        detail: "this fleet's state is in the data dir (sled), so one controller serves it; several controllers \
                 share a fleet on etcd (made by 'fleet-controller init --etcd URL …'; others join it with \
                 'fleet-controller join --etcd URL … --from DIR')"
            .into(),
    }
}

/// The error for a prefix without a fleet.
fn no_fleet(settings: &etcd::EtcdSettings) -> StoreError {
    StoreError::Etcd {
        name: settings.describe(),
        detail: "no fleet is stored under this prefix: check [store] endpoints and prefix in controller.toml \
                 (a new fleet is made by 'fleet-controller init --etcd ...')"
            .into(),
    }
}

/// Takes `serve.lock` in the data dir (an exclusive flock, held while the
/// file is open): one process per host serves a data dir.
fn local_lock(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    use rustix::fs::{flock, FlockOperation};
    let path = data_dir.join("serve.lock");
    let open_err = |detail: String| StoreError::Open {
        path: path.display().to_string(),
        detail,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| open_err(e.to_string()))?;
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Locked {
            path: path.display().to_string(),
            detail: "another fleet-controller on this host serves this data dir".into(),
        }),
        Err(e) => Err(open_err(e.to_string())),
    }
}

/// The etcd client for a new fleet: refuses a prefix that holds one.
fn new_fleet_in_etcd(settings: &etcd::EtcdSettings) -> Result<Arc<dyn Kv>, StoreError> {
    let kv = etcd_kv(settings)?;
    if kv.get(Space::Meta, b"schema")?.is_some() {
        return Err(StoreError::Etcd {
            name: settings.describe(),
            detail: "the prefix already holds a fleet; choose another prefix for a new fleet".into(),
        });
    }
    Ok(kv)
}

/// Whether opening may create the store's schema record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Schema {
    /// `init` and tests: a new store.
    CreateIfMissing,
    /// `serve`: a store without it is empty or damaged.
    MustExist,
}

/// Where the fleet's state is kept (`[store]` in controller.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// sled, in the data dir's `store/` (the default).
    Sled,
    /// An etcd cluster, under a key prefix.
    Etcd(etcd::EtcdSettings),
}

impl Store {
    /// Creates the fleet's store on `backend` (`init`): sled in
    /// `<data_dir>/store`; in etcd, refuses a prefix that already holds a
    /// fleet.
    pub fn create_on(backend: &Backend, data_dir: &Path) -> Result<Store, StoreError> {
        match backend {
            Backend::Sled => Store::open(&data_dir.join("store")),
            Backend::Etcd(settings) => {
                let kv = new_fleet_in_etcd(settings)?;
                Store::on(kv, Path::new(&settings.describe()), Schema::CreateIfMissing)
            }
        }
    }

    /// Checks that a new fleet's store can be made on `backend`: for etcd,
    /// the cluster answers and the prefix holds no fleet (`init` asks before
    /// it writes anything).
    pub fn check_new(backend: &Backend) -> Result<(), StoreError> {
        match backend {
            Backend::Sled => Ok(()),
            Backend::Etcd(settings) => new_fleet_in_etcd(settings).map(drop),
        }
    }

    /// Checks, for `join`, that `backend` (etcd) holds a fleet whose CA is
    /// `ca` (recording it when no controller recorded one yet).
    pub fn check_join(backend: &Backend, ca: &str) -> Result<(), StoreError> {
        let Backend::Etcd(settings) = backend else {
            return Err(alone_on_sled());
        };
        let kv = etcd_kv(settings)?;
        if kv.get(Space::Meta, b"schema")?.is_none() {
            return Err(no_fleet(settings));
        }
        same_ca(&kv, settings, ca)
    }

    /// Opens the store `serve` runs on (see [`Store::open_existing_on`]);
    /// on etcd, [`Store::stand_by`] then [`Standby::serve`] in one go.
    pub fn open_to_serve(backend: &Backend, data_dir: &Path, me: &Me) -> Result<Store, StoreError> {
        match backend {
            Backend::Etcd(_) => Store::stand_by(backend, data_dir, me)?.serve(),
            Backend::Sled => Store::open_existing_on(backend, data_dir),
        }
    }

    /// On etcd: this controller joins the fleet's members, after checking
    /// that its CA is the fleet's, with the data dir's local lock
    /// `serve.lock` held; [`Standby::serve`] then waits for the serving
    /// lock. On sled there is nothing to stand by for: an error.
    pub fn stand_by(backend: &Backend, data_dir: &Path, me: &Me) -> Result<Standby, StoreError> {
        let Backend::Etcd(settings) = backend else {
            return Err(alone_on_sled());
        };
        let local = local_lock(data_dir)?;
        let kv = etcd_kv(settings)?;
        if kv.get(Space::Meta, b"schema")?.is_none() {
            return Err(no_fleet(settings));
        }
        same_ca(&kv, settings, &me.ca_fingerprint)?;
        let holder = etcd::Holder {
            host: me.host.clone(),
            dir: data_dir.display().to_string(),
            pid: std::process::id(),
            addr: me.addr.clone(),
        };
        let membership = kv.join_members(&holder, fleet_proto::now_ms())?;
        kv.watch_hot();
        Ok(Standby {
            peers: Arc::new(Peers {
                kv,
                addr: me.addr.clone(),
            }),
            settings: settings.clone(),
            holder,
            membership,
            local,
        })
    }

    /// The fleet's controllers (on etcd: each running one, serving or
    /// following); on sled, an error saying one controller serves it.
    pub fn members(backend: &Backend) -> Result<Vec<etcd::Peer>, StoreError> {
        match backend {
            Backend::Sled => Err(alone_on_sled()),
            Backend::Etcd(settings) => etcd_kv(settings)?.members(),
        }
    }

    /// The fleet's controllers as this one sees them (None on sled).
    pub fn peers(&self) -> Option<Arc<Peers>> {
        self.serving.as_ref().map(|s| s.peers.clone())
    }

    /// Resolves with the reason when this controller loses the serving lock
    /// (never on sled).
    pub async fn lock_lost(&self) -> String {
        match &self.serving {
            Some(s) => s.lock.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Gives the serving lock up at a clean stop (nothing on sled).
    pub async fn release_lock(&self) {
        if let Some(s) = &self.serving {
            s.lock.release().await;
            s.membership.leave().await;
        }
    }

    /// Opens the store `serve` (and `check`) run on, which must exist (see
    /// [`Store::open_existing`]; in etcd, the prefix must hold a fleet).
    pub fn open_existing_on(backend: &Backend, data_dir: &Path) -> Result<Store, StoreError> {
        match backend {
            Backend::Sled => Store::open_existing(&data_dir.join("store")),
            Backend::Etcd(settings) => {
                let kv = etcd_kv(settings)?;
                if kv.get(Space::Meta, b"schema")?.is_none() {
                    return Err(no_fleet(settings));
                }
                Store::on(kv, Path::new(&settings.describe()), Schema::MustExist)
            }
        }
    }

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
        Store::on(Arc::new(SledKv::open(dir)?), dir, schema)
    }

    /// The store on a backend (`dir`: where its files are, for messages).
    pub(super) fn on(kv: Arc<dyn Kv>, dir: &Path, schema: Schema) -> Result<Store, StoreError> {
        if kv.get(Space::Meta, b"schema")?.is_none() {
            // sled recovers a log it cannot parse as an empty database, so a
            // damaged store opens "fine": the schema record init wrote is
            // what tells an empty store from ours.
            if schema == Schema::MustExist {
                return Err(StoreError::Damaged {
                    path: dir.display().to_string(),
                    detail: "it holds no fleet data (no schema record), so sled found nothing it could read".into(),
                });
            }
            let _ = kv.commit(Txn::new().put(Space::Meta, b"schema", vec![V1]))?;
        }
        let store = Store {
            flusher: Arc::new(flusher::Flusher::start(kv.clone(), dir)?),
            kv,
            lanes: (0..LANES).map(|_| std::sync::Mutex::new(())).collect(),
            names: Arc::default(),
            serving: None,
        };
        store.upgrade_operators()?;
        Ok(store)
    }
}

/// The serving lock in etcd, and the data dir's local lock held with it.
pub(super) struct Serving {
    lock: etcd::ServingLock,
    membership: etcd::Membership,
    pub(super) peers: Arc<Peers>,
    _local: std::fs::File,
}

/// A controller of a fleet on etcd, a member that does not serve yet.
pub struct Standby {
    peers: Arc<Peers>,
    settings: etcd::EtcdSettings,
    holder: etcd::Holder,
    membership: etcd::Membership,
    local: std::fs::File,
}

impl Standby {
    /// What it reads of the fleet and its members meanwhile.
    pub fn peers(&self) -> Arc<Peers> {
        self.peers.clone()
    }

    /// Blocking: waits for the fleet's serving lock for as long as another
    /// controller holds it, then opens the store; from then on a write is
    /// refused once the lock is lost ([`Store::lock_lost`]).
    pub fn serve(self) -> Result<Store, StoreError> {
        let kv = self.peers.kv.clone();
        let lock = kv.take_lock(&self.holder, None)?;
        tracing::info!(holder = %self.holder.value(), "holding the fleet's serving lock in etcd");
        let keys = kv.preload_hot()?;
        tracing::debug!(
            keys,
            "read the honoured certificates and the hosts ahead of the hosts' reconnections"
        );
        let mut store = Store::on(kv, Path::new(&self.settings.describe()), Schema::MustExist)?;
        store.serving = Some(Arc::new(Serving {
            lock,
            membership: self.membership,
            peers: self.peers,
            _local: self.local,
        }));
        Ok(store)
    }
}

/// The fleet's controllers and what they hold, as one member sees them in
/// etcd: which one serves, the releases, which controllers hold a copy of
/// each artifact (`meta` `copy/<sha256>/<addr>`).
pub struct Peers {
    kv: Arc<etcd::EtcdKv>,
    addr: String,
}

impl Peers {
    /// This controller's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address of the controller serving the fleet now, if any.
    pub fn serving_addr(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .kv
            .members()?
            .into_iter()
            .find(|p| p.serving)
            .map(|p| p.field("addr").to_string()))
    }

    /// The addresses of the other controllers running now.
    pub fn others(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .kv
            .members()?
            .into_iter()
            .map(|p| p.field("addr").to_string())
            .filter(|a| *a != self.addr)
            .collect())
    }

    /// The record of a client certificate the fleet honours now (a
    /// follower checks the certificates of the hosts it forwards).
    pub fn cert_host(&self, cert_fp: &str) -> Result<Option<super::CertRecord>, StoreError> {
        super::honoured_cert(self.kv.as_ref(), cert_fp)
    }

    /// `app`'s release `version`.
    pub fn release(&self, app: &str, version: &str) -> Result<Option<fleet_proto::Release>, StoreError> {
        super::one_release(self.kv.as_ref(), app, version)
    }

    /// Every release of the fleet.
    pub fn releases(&self) -> Result<Vec<fleet_proto::Release>, StoreError> {
        super::all_releases(self.kv.as_ref())
    }

    /// Notes that this controller holds a verified copy of `sha256`.
    pub fn note_copy(&self, sha256: &str) -> Result<(), StoreError> {
        let key = format!("copy/{sha256}/{}", self.addr);
        let at = fleet_proto::now_ms().to_be_bytes().to_vec();
        let _ = self
            .kv
            .commit(Txn::new().put(Space::Meta, key, [vec![1], at].concat()))?;
        Ok(())
    }

    /// The addresses of the controllers that noted a copy of `sha256`.
    pub fn copies(&self, sha256: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("copy/{sha256}/");
        Ok(self
            .kv
            .scan_prefix(Space::Meta, prefix.as_bytes())?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }
}

/// Who this controller is, for the fleet's members and serving lock.
#[derive(Debug, Clone)]
pub struct Me {
    /// This host's name.
    pub host: String,
    /// Where the fleet's other controllers reach it (`host:port`, a name
    /// its certificate holds; see `server::advertised`).
    pub addr: String,
    /// `sha256:` of the CA it serves with.
    pub ca_fingerprint: String,
}

/// Checks that `ca` is the fleet's CA (recorded in `meta/ca` by the first
/// controller that served it): a controller made by another `init` would
/// present a CA the fleet's agents do not trust, so it must not serve.
fn same_ca(kv: &etcd::EtcdKv, settings: &etcd::EtcdSettings, ca: &str) -> Result<(), StoreError> {
    use crate::store::kv::Committed;
    loop {
        match kv.get(Space::Meta, b"ca")? {
            Some(v) if v == ca.as_bytes() => return Ok(()),
            Some(v) => {
                return Err(StoreError::Etcd {
                    name: settings.describe(),
                    detail: format!(
                        "this controller's CA is {ca}, but the fleet in etcd is served with the CA {}: these keys \
                         were made by another 'fleet-controller init'. A controller joins a fleet with 'fleet-controller \
                         join --from DIR', DIR holding ca.pem, ca.key and mac.key from one of the fleet's controllers",
                        String::from_utf8_lossy(&v)
                    ),
                })
            }
            None => {
                let txn = Txn::new()
                    .when_absent(Space::Meta, b"ca")
                    .put(Space::Meta, b"ca", ca.as_bytes().to_vec());
                if kv.commit(txn)? == Committed::Applied {
                    return Ok(());
                }
            }
        }
    }
}
