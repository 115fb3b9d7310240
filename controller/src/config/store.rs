//! `[store]`: where the fleet's state is kept, and its checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults;
use crate::store::etcd::{EtcdSettings, EtcdTls};
use crate::store::Backend;

/// `[store]`: the fleet's state in the data dir (sled, the default) or in
/// an etcd cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// "sled" or "etcd".
    #[serde(default = "defaults::store_backend")]
    pub backend: String,
    /// etcd: `http://host:port` or `https://host:port`, one per member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// etcd: the key prefix of this fleet (ends with `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// etcd over TLS: the CA certificate of etcd's members (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// etcd over TLS: this controller's client certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// etcd over TLS: the client certificate's key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// etcd: how long one call may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// The backend `[store]` names, checked; an error is the key and what is
/// wrong with it. Relative paths are relative to `base` (the config's dir).
pub fn store_backend(raw: &RawStore, base: &Path) -> Result<Backend, (&'static str, String)> {
    match raw.backend.as_str() {
        "sled" => {
            if !raw.endpoints.is_empty() || raw.prefix.is_some() || raw.ca.is_some() || raw.timeout.is_some() {
                return Err((
                    "store.backend",
                    "endpoints, prefix, ca, cert, key and timeout are etcd's; set backend = \"etcd\" or remove them"
                        .into(),
                ));
            }
            Ok(Backend::Sled)
        }
        "etcd" => {
            if raw.endpoints.is_empty() {
                return Err((
                    "store.endpoints",
                    "etcd needs its members' client URLs, e.g. [\"https://10.0.0.5:2379\"]".into(),
                ));
            }
            for e in &raw.endpoints {
                let rest = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://"));
                if rest.is_none_or(|r| fleet_proto::transport::split_host_port(r).is_err()) {
                    return Err((
                        "store.endpoints",
                        format!("'{e}' is not http://host:port or https://host:port"),
                    ));
                }
            }
            let prefix = raw.prefix.clone().unwrap_or_else(defaults::etcd_prefix);
            if prefix.is_empty() || !prefix.ends_with('/') {
                return Err((
                    "store.prefix",
                    format!("'{prefix}' must end with '/' (e.g. \"fleet/prod/\"), so one fleet's keys never start another's"),
                ));
            }
            let abs = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
            let tls = match (&raw.ca, &raw.cert, &raw.key) {
                (None, None, None) => None,
                (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
                    ca: abs(ca),
                    cert: abs(cert),
                    key: abs(key),
                }),
                _ => {
                    return Err((
                        "store.ca",
                        "TLS to etcd needs all three of ca, cert and key (the controller's client certificate)".into(),
                    ))
                }
            };
            if tls.is_none() && raw.endpoints.iter().any(|e| e.starts_with("https://")) {
                return Err(("store.ca", "https:// endpoints need ca, cert and key".into()));
            }
            let timeout_text = raw.timeout.clone().unwrap_or_else(defaults::etcd_timeout);
            let timeout = humantime::parse_duration(&timeout_text).map_err(|e| {
                (
                    "store.timeout",
                    format!("'{timeout_text}' is not a duration such as 5s ({e})"),
                )
            })?;
            if timeout < Duration::from_millis(100) {
                return Err(("store.timeout", "must be at least 100ms".into()));
            }
            Ok(Backend::Etcd(EtcdSettings {
                endpoints: raw.endpoints.clone(),
                prefix,
                tls,
                timeout,
            }))
        }
        other => Err((
            "store.backend",
            format!("'{other}' is not a backend: \"sled\" or \"etcd\""),
        )),
    }
}
