//! `fleet-controller init`: a new data dir with a CA, the server certificate,
//! the store and the first admin credential.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fleet_proto::transport::{certs_from_pem, fingerprint};

use crate::auth::OPERATOR_TOKEN_PREFIX;
use crate::ca::{generate_ca, Ca};
use crate::config::{RawConfig, RawStore};
use crate::owner::{self, OwnerPlan};
use crate::store::{secret_hash, IdentityRecord, OperatorRecord, Store};

/// Name of the marker file that makes a directory a data dir.
pub const MARKER: &str = "fleet-controller.datadir";

/// Errors of `init`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The target exists and holds something.
    #[error(
        "{0} already exists and is not empty; refusing to overwrite it. Pick a new directory \
         (an existing fleet's hosts trust its CA and would all need new join tokens)"
    )]
    NotEmpty(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A flag holds a bad value.
    #[error("{0}")]
    Invalid(String),
    /// Root is making the packaged data dir before the package made its user.
    #[error(
        "{0} is the packaged controller's data dir, but its user {user} does not exist yet: install the \
         fleet-controller package first (it makes the user and this directory), then run this again; \
         or pick another --data-dir for a controller you run yourself",
        user = crate::owner::SERVICE_USER
    )]
    NoServiceUser(PathBuf),
}

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The new data dir.
    pub data_dir: PathBuf,
    /// Names and addresses agents and operators reach the controller by.
    pub sans: Vec<String>,
    /// gRPC listen address to write into controller.toml.
    pub listen: String,
    /// `[store]` to write into controller.toml (None: sled in the data dir).
    pub store: Option<RawStore>,
    /// Metrics listen address to write into controller.toml.
    pub metrics_listen: String,
    /// `join`: the directory holding the fleet's `ca.pem`, `ca.key` and
    /// `mac.key` (copied from a controller of the fleet). None: a new fleet.
    pub join_from: Option<PathBuf>,
}

/// What `init` made, for the next-steps message.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The data dir (absolute).
    pub data_dir: PathBuf,
    /// `sha256:<hex>` of the CA: agents pin it.
    pub ca_fingerprint: String,
    /// The controller address written to fleetctl.toml.
    pub controller: String,
    /// Path of controller.toml.
    pub config: PathBuf,
    /// Path of fleetctl.toml (holds the admin token); None after `join`
    /// (the fleet's admins already have theirs).
    pub fleetctl_config: Option<PathBuf>,
    /// The user the files were given to, when init ran as root for another
    /// user (the packaged controller's `fleet-controller`).
    pub given_to: Option<String>,
    /// Whether the data dir is the packaged controller's (started by systemd).
    pub packaged: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file (never an existing one) with `mode`, and fsyncs it.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), InitError> {
    write_new_bytes(path, contents.as_bytes(), mode)
}

/// Writes a new file of bytes (never an existing one) with `mode`, fsynced.
fn write_new_bytes(path: &Path, contents: &[u8], mode: u32) -> Result<(), InitError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The fleet's CA and MAC keys, copied from one of its controllers for
/// `join`: its data dir's `ca.pem`, `ca.key` and `mac.key`.
struct Identity {
    ca_pem: String,
    ca_key_pem: String,
    mac_key: Vec<u8>,
    fingerprint: String,
}

impl Identity {
    fn read(from: &Path) -> Result<Identity, InitError> {
        let file = |name: &str| {
            let path = from.join(name);
            std::fs::read(&path).map_err(|e| {
                InitError::Invalid(format!(
                    "cannot read {}: {e}; --from names a directory holding ca.pem, ca.key and mac.key copied \
                     from the data dir of a controller of the fleet (e.g. /var/lib/fleet-controller)",
                    path.display()
                ))
            })
        };
        if from.join(crate::rotation::DIR).exists() {
            return Err(InitError::Invalid(format!(
                "{} holds a CA rotation under way; join after it ended ('fleet-controller ca status')",
                from.join(crate::rotation::DIR).display()
            )));
        }
        let text = |name: &str| {
            file(name).and_then(|b| {
                String::from_utf8(b)
                    .map_err(|_| InitError::Invalid(format!("{} is not PEM text", from.join(name).display())))
            })
        };
        let (ca_pem, ca_key_pem, mac_key) = (text("ca.pem")?, text("ca.key")?, file(crate::secrets::FILE)?);
        // Proves the pair before anything is written.
        Ca::load(&ca_pem, &ca_key_pem)?;
        let der = certs_from_pem("CA", &ca_pem).map_err(|e| InitError::Invalid(e.to_string()))?;
        Ok(Identity {
            fingerprint: fingerprint(&der[0]),
            ca_pem,
            ca_key_pem,
            mac_key,
        })
    }
}

/// The kernel's hostname, for the default SANs.
pub(crate) fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// Creates a data dir. Refuses a path that exists and is not empty.
pub fn init(opts: &InitOptions) -> Result<InitReport, InitError> {
    let dir = &opts.data_dir;
    let owner = match owner::plan_for(dir) {
        OwnerPlan::NoServiceUser => return Err(InitError::NoServiceUser(dir.clone())),
        OwnerPlan::Give(account) => Some(account),
        OwnerPlan::Caller => None,
    };
    // The store first: a wrong etcd endpoint or a prefix that holds a fleet
    // is refused before anything is written.
    let backend = match &opts.store {
        None => crate::store::Backend::Sled,
        Some(raw) => crate::config::store_backend(raw, Path::new("."))
            .map_err(|(key, detail)| InitError::Invalid(format!("{key}: {detail}")))?,
    };
    // The fleet's CA and keys, when joining a fleet.
    let joined = match &opts.join_from {
        None => {
            Store::check_new(&backend)?;
            None
        }
        Some(from) => {
            let identity = Identity::read(from)?;
            Store::check_join(&backend, &identity.fingerprint)?;
            Some(identity)
        }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(InitError::NotEmpty(dir.clone()));
        }
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let dir = dir.canonicalize().map_err(io(dir))?;
    let listen: std::net::SocketAddr = opts
        .listen
        .parse()
        .map_err(|_| InitError::Invalid(format!("--listen '{}' is not ip:port", opts.listen)))?;
    opts.metrics_listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| InitError::Invalid(format!("--metrics-listen '{}' is not ip:port", opts.metrics_listen)))?;
    let mut sans = opts.sans.clone();
    if sans.is_empty() {
        sans = vec!["localhost".into(), "127.0.0.1".into()];
        sans.extend(hostname());
    }

    let new_ca = match &joined {
        Some(identity) => crate::ca::NewCa {
            cert_pem: identity.ca_pem.clone(),
            key_pem: identity.ca_key_pem.clone(),
        },
        None => generate_ca(
            &dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )?,
    };
    let ca = Ca::load(&new_ca.cert_pem, &new_ca.key_pem)?;
    let (server_pem, server_key) = ca.server_certificate(&sans)?;
    let ca_der = certs_from_pem("CA", &new_ca.cert_pem).map_err(|e| InitError::Invalid(e.to_string()))?;
    let ca_fingerprint = fingerprint(&ca_der[0]);

    write_new(&dir.join("ca.key"), &new_ca.key_pem, 0o600)?;
    write_new(&dir.join("ca.pem"), &new_ca.cert_pem, 0o644)?;
    write_new(&dir.join("server.key"), &server_key, 0o600)?;
    // The chain carries the CA so agents can find the CA they pinned.
    write_new(
        &dir.join("server.pem"),
        &format!("{server_pem}{}", new_ca.cert_pem),
        0o644,
    )?;
    let mac_path = dir.join(crate::secrets::FILE);
    let Some(identity) = &joined else {
        crate::secrets::Macs::make(&dir).map_err(io(&mac_path))?;
        return new_fleet(opts, &dir, &backend, &sans, listen, ca_fingerprint, owner);
    };
    write_new_bytes(&mac_path, &identity.mac_key, 0o600)?;
    let config_path = write_config(opts, &dir)?;
    finish(&dir, &owner)?;
    Ok(InitReport {
        packaged: dir == Path::new(owner::PACKAGED_DATA_DIR),
        controller: controller_addr(&sans[0], listen),
        data_dir: dir,
        ca_fingerprint,
        config: config_path,
        fleetctl_config: None,
        given_to: owner.map(|a| a.name),
    })
}

/// The store and the first admin of a new fleet, controller.toml and
/// fleetctl.toml.
fn new_fleet(
    opts: &InitOptions,
    dir: &Path,
    backend: &crate::store::Backend,
    sans: &[String],
    listen: std::net::SocketAddr,
    ca_fingerprint: String,
    owner: Option<owner::Account>,
) -> Result<InitReport, InitError> {
    let dir = dir.to_path_buf();
    let store = Store::create_on(backend, &dir)?;
    let (op_id, op_secret) = (crate::random_hex(6), crate::random_hex(24));
    let now = fleet_proto::now_ms();
    store.create_identity(&IdentityRecord {
        name: "admin".into(),
        role: "admin".into(),
        apps: Vec::new(),
        selector: String::new(),
        created_at_ms: now,
        created_by: "init".into(),
        description: "the first admin, made by fleet-controller init".into(),
    })?;
    store.put_operator(&OperatorRecord {
        id: op_id.clone(),
        name: "admin".into(),
        secret_sha256: secret_hash(&op_secret),
        created_at_ms: now,
        created_by: "init".into(),
        ..Default::default()
    })?;
    store.flush_blocking()?;
    drop(store);

    let config_path = write_config(opts, &dir)?;

    let controller = controller_addr(&sans[0], listen);
    let fleetctl_path = dir.join("fleetctl.toml");
    let fleetctl = format!(
        "# fleetctl credentials for the admin of this controller. Keep it secret.\n\
         controller = \"{controller}\"\ntoken = \"{OPERATOR_TOKEN_PREFIX}{op_id}.{op_secret}\"\nca = \"{}\"\n",
        dir.join("ca.pem").display()
    );
    write_new(&fleetctl_path, &fleetctl, 0o600)?;
    finish(&dir, &owner)?;
    Ok(InitReport {
        packaged: dir == Path::new(owner::PACKAGED_DATA_DIR),
        data_dir: dir,
        ca_fingerprint,
        controller,
        config: config_path,
        fleetctl_config: Some(fleetctl_path),
        given_to: owner.map(|a| a.name),
    })
}

/// `host:port` for a SAN and the listen port.
fn controller_addr(host: &str, listen: std::net::SocketAddr) -> String {
    if host.contains(':') {
        format!("[{host}]:{}", listen.port())
    } else {
        format!("{host}:{}", listen.port())
    }
}

/// The data dir's marker (last: a dir without it is not a data dir, so a
/// crashed init is not half-used), then the files to their owner.
fn finish(dir: &Path, owner: &Option<owner::Account>) -> Result<(), InitError> {
    write_new(&dir.join(MARKER), "fleet-controller data dir, format 1\n", 0o644)?;
    if let Some(account) = owner {
        owner::give_tree(dir, account).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes controller.toml for `opts` in `dir`.
fn write_config(opts: &InitOptions, dir: &Path) -> Result<PathBuf, InitError> {
    let raw = RawConfig {
        data_dir: dir.to_path_buf(),
        listen: opts.listen.clone(),
        metrics_listen: opts.metrics_listen.clone(),
        heartbeat_interval: crate::config::defaults::heartbeat_interval(),
        cert_ttl: crate::config::defaults::cert_ttl(),
        token_ttl: crate::config::defaults::token_ttl(),
        log_format: crate::config::defaults::log_format(),
        max_release_size: crate::config::defaults::max_release_size(),
        reconnect_grace: crate::config::defaults::reconnect_grace(),
        connections: None,
        limits: None,
        audit: None,
        events: None,
        store: opts.store.clone(),
    };
    let config_path = dir.join("controller.toml");
    let toml_text = toml::to_string(&raw).map_err(|e| InitError::Invalid(e.to_string()))?;
    write_new(
        &config_path,
        &format!("# Written by fleet-controller init; see ARCHITECTURE.md for every key.\n{toml_text}"),
        0o644,
    )?;

    Ok(config_path)
}
