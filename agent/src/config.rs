//! `agent.toml`: the agent's typed configuration, validated at load so that a
//! mistake is reported once, naming the file, the key and the fix, instead of
//! surfacing later as a connection failure.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hooks::HookMode;

/// Where the agent keeps its identity when the config names no `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-agent";

/// The prefix every join token starts with.
pub const JOIN_TOKEN_PREFIX: &str = "fleet_jt_";

/// A configuration problem; the agent exits with code 2 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}; pass the agent config with --config or FLEET_AGENT_CONFIG")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML, or has an unknown, missing or mistyped key.
    #[error(
        "{path}{location}: {detail}; fix the file (every key is listed in /usr/share/doc/fleet-agent/README.Debian)"
    )]
    Parse {
        path: PathBuf,
        location: String,
        detail: String,
    },
    /// A key has a value the agent cannot use.
    #[error("{path}: {key} {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
    /// The host has no identity yet and there is no token to get one with.
    #[error(
        "no join_token in {path} and this host is not enrolled yet; \
         create one with 'fleetctl token create' and put it in join_token"
    )]
    NoJoinToken { path: PathBuf },
}

/// Log line format on stderr.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// A join token. Its `Debug` hides the secret so that the config can be
/// logged or printed without leaking it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// The token string as the controller expects it. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The public id of the token: the part between `fleet_jt_` and the dot.
    pub fn id(&self) -> &str {
        token_id(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_TOKEN_PREFIX}{}.<redacted>", self.id())
    }
}

/// The public id of a join token `fleet_jt_<id>.<secret>`, or `None` when the
/// string does not have that shape.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(JOIN_TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some(id)
}

/// `controller` as written: one string (addresses separated by commas) or
/// a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Addresses {
    One(String),
    Many(Vec<String>),
}

/// The file as written; turned into [`Config`] by validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    controller: Addresses,
    ca_fingerprint: String,
    #[serde(default)]
    join_token: Option<String>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    systemd: SystemdSection,
    #[serde(default)]
    releases: ReleasesSection,
    #[serde(default)]
    hooks: HooksSection,
}

/// `[hooks]`: how a release's hooks run.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HooksSection {
    run: Option<HookMode>,
}

/// `[releases]`: limits on what one release may unpack to.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReleasesSection {
    max_unpacked_size: Option<String>,
    max_entries: Option<u64>,
    #[serde(default)]
    trusted_keys: Vec<String>,
}

/// `[systemd]`: how the agent reaches the service manager.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SystemdSection {
    #[serde(default)]
    bus: Bus,
}

/// Which D-Bus the agent finds systemd on.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    /// The system bus: the system manager (production).
    #[default]
    System,
    /// The session bus named by `DBUS_SESSION_BUS_ADDRESS`: a `systemd --user`
    /// manager (tests, and apps run as user units).
    Session,
}

/// The validated agent configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from; error messages name it.
    pub path: PathBuf,
    /// `host:port` of each controller of the fleet (one, or several on a
    /// shared store), each resolved on every connection attempt.
    pub controllers: Vec<String>,
    /// `sha256:<64 lowercase hex>` of the controller's CA, pinned for enrollment.
    pub ca_fingerprint: String,
    /// Needed until the host is enrolled, and to enroll again.
    pub join_token: Option<JoinToken>,
    /// Where the identity lives.
    pub state_dir: PathBuf,
    /// Overrides the kernel's hostname in facts and the CSR.
    pub hostname: Option<String>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Labels sent at enrollment and in hello; the token's labels win.
    pub labels: BTreeMap<String, String>,
    /// The bus systemd is reached on (`[systemd] bus`).
    pub bus: Bus,
    /// What one release may unpack to (`[releases]`).
    pub limits: crate::unpack::Limits,
    /// Keys one of which must have signed every release
    /// (`[releases] trusted_keys`); empty: releases need no signature.
    pub trusted_keys: Vec<fleet_proto::signing::PublicKey>,
    /// How hooks run (`[hooks] run`): as `fleet-hook@<app>.service` by
    /// default on the system bus, as the agent's children on a session bus.
    pub hook_mode: HookMode,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            location: e.span().map(|s| line_of(text, s.start)).unwrap_or_default(),
            // The message alone: toml's Display adds a multi-line excerpt,
            // and the error must fit one line.
            detail: e.message().trim().to_string(),
        })?;
        let invalid = |key, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };

        let list = match raw.controller {
            Addresses::One(one) => one,
            Addresses::Many(many) => many.join(","),
        };
        let controllers = fleet_proto::transport::split_addresses(&list).map_err(|_| {
            invalid(
                "controller",
                format!(
                    "'{}' is not host:port (or several, separated by commas); write e.g. controller = \
                     \"controller.example.com:7443\" or controller = [\"c1.example.com:7443\", \"c2.example.com:7443\"]",
                    list.trim()
                ),
            )
        })?;

        let ca_fingerprint = raw.ca_fingerprint.trim().to_ascii_lowercase();
        if !is_fingerprint(&ca_fingerprint) {
            return Err(invalid(
                "ca_fingerprint",
                format!(
                    "'{}' is not sha256:<64 hex digits>; copy it from the output of 'fleet-controller init'",
                    raw.ca_fingerprint.trim()
                ),
            ));
        }

        let join_token = match raw.join_token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) if token_id(t).is_some() => Some(JoinToken(t.to_string())),
            // Deliberately not echoing the value: it may be a real secret with a typo.
            Some(_) => return Err(invalid(
                "join_token",
                "is not a join token (fleet_jt_<id>.<secret>); paste it exactly as 'fleetctl token create' printed it"
                    .into(),
            )),
        };

        let state_dir = raw.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid(
                "state_dir",
                format!("is empty; remove the key to use {DEFAULT_STATE_DIR}"),
            ));
        }

        let hostname = match raw.hostname.as_deref().map(str::trim) {
            None => None,
            Some("") => {
                return Err(invalid(
                    "hostname",
                    "is empty; remove the key to use the kernel's hostname".into(),
                ))
            }
            Some(h) => Some(h.to_string()),
        };

        if let Some(k) = raw
            .labels
            .keys()
            .find(|k| k.trim().is_empty() || k.contains(['=', ',']))
        {
            return Err(invalid(
                "labels",
                format!("has a bad key '{k}': keys must be non-empty and hold no '=' or ','"),
            ));
        }

        let mut limits = crate::unpack::Limits::default();
        if let Some(size) = &raw.releases.max_unpacked_size {
            limits.max_unpacked_bytes = fleet_proto::parse_size(size).filter(|n| *n > 0).ok_or_else(|| {
                invalid(
                    "releases.max_unpacked_size",
                    format!("'{size}' is not a size such as 500MiB or 4GiB"),
                )
            })?;
        }
        if let Some(n) = raw.releases.max_entries {
            if n == 0 {
                return Err(invalid("releases.max_entries", "must be at least 1".into()));
            }
            limits.max_entries = n;
        }

        let trusted_keys = raw
            .releases
            .trusted_keys
            .iter()
            .map(|k| fleet_proto::signing::PublicKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| invalid("releases.trusted_keys", why))?;

        Ok(Config {
            path: path.to_path_buf(),
            limits,
            trusted_keys,
            controllers,
            ca_fingerprint,
            join_token,
            state_dir,
            hostname,
            log_format: raw.log_format,
            labels: raw.labels,
            bus: raw.systemd.bus,
            hook_mode: raw.hooks.run.unwrap_or(match raw.systemd.bus {
                Bus::System => HookMode::Unit,
                Bus::Session => HookMode::Process,
            }),
        })
    }

    /// The join token, or the error that tells the operator to add one.
    pub fn require_join_token(&self) -> Result<&JoinToken, ConfigError> {
        self.join_token.as_ref().ok_or_else(|| ConfigError::NoJoinToken {
            path: self.path.clone(),
        })
    }
}

fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// " line N" for a byte offset, so a parse error points at the line.
fn line_of(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line = text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
    format!(" line {line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/fleet/agent.toml"), text)
    }

    fn good() -> String {
        format!(
            "controller = \"controller.example.com:7443\"\n\
             ca_fingerprint = \"{FP}\"\n\
             join_token = \"fleet_jt_abc123.s3cr3t\"\n\
             state_dir = \"/var/lib/fleet-agent\"\n\
             hostname = \"web-1\"\n\
             log_format = \"json\"\n\
             [labels]\n\
             az = \"eu-west-1a\"\n"
        )
    }

    #[test]
    fn good_config_loads() {
        let c = parse(&good()).expect("good config");
        assert_eq!(c.controllers, ["controller.example.com:7443"]);
        assert_eq!(c.ca_fingerprint, FP);
        assert_eq!(c.join_token.as_ref().map(JoinToken::id), Some("abc123"));
        assert_eq!(c.hostname.as_deref(), Some("web-1"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.labels.get("az").map(String::as_str), Some("eu-west-1a"));
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse(&format!("controller = \"10.0.0.1:7443\"\nca_fingerprint = \"{FP}\"\n")).expect("minimal");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.join_token.is_none());
        let err = c.require_join_token().expect_err("no token");
        let msg = err.to_string();
        assert!(msg.contains("no join_token in /etc/fleet/agent.toml"), "{msg}");
        assert!(msg.contains("fleetctl token create"), "{msg}");
    }

    #[test]
    fn hooks_run_as_units_on_the_system_bus_and_as_children_on_a_session_bus() {
        let base = format!("controller = \"10.0.0.1:7443\"\nca_fingerprint = \"{FP}\"\n");
        assert_eq!(parse(&base).expect("system").hook_mode, HookMode::Unit);
        let session = format!("{base}[systemd]\nbus = \"session\"\n");
        assert_eq!(parse(&session).expect("session").hook_mode, HookMode::Process);
        let chosen = format!("{base}[hooks]\nrun = \"process\"\n");
        assert_eq!(parse(&chosen).expect("chosen").hook_mode, HookMode::Process);
        let err = parse(&format!("{base}[hooks]\nrun = \"root\"\n")).expect_err("unknown");
        assert!(
            err.to_string().contains("unit") && err.to_string().contains("process"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = parse(&format!(
            "{}colour = \"blue\"\n",
            good().replace("[labels]\naz = \"eu-west-1a\"\n", "")
        ))
        .expect_err("unknown key");
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.contains("/etc/fleet/agent.toml line 7"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn truncated_file_is_a_parse_error() {
        let text = good();
        let err = parse(&text[..40]).expect_err("truncated");
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Config::load(Path::new("/nonexistent/agent.toml")).expect_err("missing");
        assert!(
            err.to_string().starts_with("cannot read /nonexistent/agent.toml"),
            "{err}"
        );
    }

    #[test]
    fn bad_fingerprint_is_refused() {
        for bad in [
            "sha1:abcd",
            "sha256:xyz",
            &FP[..70],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            let err = parse(&good().replace(FP, bad)).expect_err(bad);
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        key: "ca_fingerprint",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("fleet-controller init"), "{err}");
        }
        let upper = parse(&good().replace(FP, &FP.to_uppercase().replace("SHA256", "sha256"))).expect("upper hex");
        assert_eq!(upper.ca_fingerprint, FP);
    }

    #[test]
    fn bad_address_is_refused() {
        for bad in ["controller.example.com", ":7443", "host:port", ""] {
            let err = parse(&good().replace("controller.example.com:7443", bad)).expect_err(bad);
            assert!(
                matches!(err, ConfigError::Invalid { key: "controller", .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn several_controllers_as_a_list_or_separated_by_commas() {
        let want = ["c1.example.com:7443", "10.0.0.2:7443"];
        let listed = parse(&good().replace(
            "controller = \"controller.example.com:7443\"",
            "controller = [\"c1.example.com:7443\", \"10.0.0.2:7443\"]",
        ))
        .expect("a list");
        assert_eq!(listed.controllers, want);
        let commas = parse(&good().replace("controller.example.com:7443", "c1.example.com:7443, 10.0.0.2:7443"))
            .expect("commas");
        assert_eq!(commas.controllers, want);
        let err = parse(&good().replace(
            "controller = \"controller.example.com:7443\"",
            "controller = [\"c1.example.com:7443\", \"c2\"]",
        ))
        .expect_err("one bad address");
        assert!(
            matches!(err, ConfigError::Invalid { key: "controller", .. }) && err.to_string().contains("several"),
            "{err}"
        );
    }

    #[test]
    fn malformed_token_is_refused_without_echoing_it() {
        let err = parse(&good().replace("fleet_jt_abc123.s3cr3t", "fleet_op_abc.s3cr3t")).expect_err("bad token");
        assert!(matches!(err, ConfigError::Invalid { key: "join_token", .. }), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = parse(&good()).expect("good config");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("fleet_jt_abc123"), "{dbg}");
    }

    #[test]
    fn token_id_extraction() {
        assert_eq!(token_id("fleet_jt_abc123.secret"), Some("abc123"));
        assert_eq!(token_id("fleet_jt_a.b.c"), Some("a"));
        assert_eq!(token_id("fleet_jt_.secret"), None);
        assert_eq!(token_id("fleet_jt_abc."), None);
        assert_eq!(token_id("fleet_jt_abc"), None);
        assert_eq!(token_id("fleet_op_abc.secret"), None);
    }
}
