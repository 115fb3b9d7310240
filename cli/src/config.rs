//! Where fleetctl finds the controller, the token and the CA.
//!
//! Sources, later wins: the config file (`--config`, else `$FLEET_CONFIG`, else
//! `$XDG_CONFIG_HOME/fleet/fleetctl.toml` or `~/.config/fleet/fleetctl.toml`),
//! then `FLEET_CONTROLLER` / `FLEET_TOKEN` / `FLEET_CA`, then the flags
//! `--controller` / `--token` / `--ca`. The environment is passed in as an
//! [`Env`] value rather than read here, so resolution is a pure function the
//! tests can drive without touching the process environment.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The keys a config file may hold, listed in error messages.
const KEYS: &str = "controller, token, ca, ca_fingerprint";

/// The config file as it is on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port` of the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// Operator token, `fleet_op_<id>.<secret>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// CA certificate (PEM); a relative path is relative to the file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// `sha256:<hex>` of the CA, instead of `ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

/// The environment variables fleetctl reads, captured once.
#[derive(Debug, Default, Clone)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// Captures the variables fleetctl cares about from the process. Empty
    /// values count as unset, the way shells usually mean them.
    pub fn from_process() -> Env {
        const NAMES: [&str; 7] = [
            "FLEET_CONFIG",
            "FLEET_CONTROLLER",
            "FLEET_TOKEN",
            "FLEET_CA",
            "XDG_CONFIG_HOME",
            "HOME",
            // bootstrap logs in with the ssh-agent's keys, as ssh does.
            "SSH_AUTH_SOCK",
        ];
        Env(NAMES
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.to_string(), value)))
            .collect())
    }

    /// One variable, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Env {
    fn from(pairs: [(&str, &str); N]) -> Env {
        Env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

/// The global flags that feed configuration.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--controller HOST:PORT`.
    pub controller: Option<String>,
    /// `--token TOKEN`.
    pub token: Option<String>,
    /// `--ca FILE`.
    pub ca: Option<PathBuf>,
}

/// An operator token. Its `Debug` hides the secret so it never reaches an
/// error message or a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string.
    pub fn new(token: impl Into<String>) -> Token {
        Token(token.into())
    }

    /// The token itself, for the `authorization` header and the config file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How fleetctl decides to trust the controller's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// A CA file, and where its path came from (for error messages).
    CaFile { path: PathBuf, origin: Origin },
    /// A pinned CA fingerprint, `sha256:<hex>`.
    Fingerprint(String),
}

/// Which source a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file at this path.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Env(name) => write!(f, "${name}"),
            Origin::Flag(name) => write!(f, "{name}"),
        }
    }
}

/// Settings after every source was applied; any of them may still be missing.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `host:port`.
    pub controller: Option<String>,
    /// The operator token.
    pub token: Option<Token>,
    /// How to trust the controller.
    pub trust: Option<TrustSource>,
    /// The config file that was read, if one was.
    pub file: Option<PathBuf>,
}

/// Everything needed to call the controller.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `host:port`.
    pub controller: String,
    /// The operator token.
    pub token: Token,
    /// How to trust the controller.
    pub trust: TrustSource,
}

/// A configuration problem; every one exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file named explicitly does not exist.
    #[error("config file {path} (from {origin}) does not exist; create it with 'fleetctl login', or point {origin} at another file")]
    FileMissing { path: PathBuf, origin: Origin },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}; check its permissions or pass --config with another file")]
    Read { path: PathBuf, source: std::io::Error },
    /// The config file is not valid TOML, or has unknown keys or wrong types.
    #[error(
        "config file {path} is not valid: {detail}; fix it (allowed keys: {KEYS}) or rewrite it with 'fleetctl login'"
    )]
    Parse { path: PathBuf, detail: String },
    /// A key in the config file has a value fleetctl cannot use.
    #[error("config file {path}: key '{key}' {problem}; {fix}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
        fix: String,
    },
    /// A setting is missing after every source.
    #[error("no {what}: pass {flag}, set {env}, or run 'fleetctl login'{note}")]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
        note: String,
    },
    /// A controller address from the environment or a flag is not `host:port`.
    #[error(
        "controller address '{value}' (from {origin}) is not host:port, e.g. controller.example.com:7443 \
         (several controllers of one fleet: separated by commas)"
    )]
    BadController { value: String, origin: Origin },
    /// A fingerprint is not `sha256:<64 hex>`.
    #[error("CA fingerprint '{0}' is not sha256:<64 hex digits>; copy it from the output of 'fleet-controller init'")]
    BadFingerprint(String),
    /// No default place for the config file.
    #[error("cannot tell where the config file lives: set HOME or XDG_CONFIG_HOME, or pass --config FILE")]
    NoHome,
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use the CA file {path} (from {origin}): {detail}; point it at the ca.pem from the controller's data dir")]
    CaFile {
        path: PathBuf,
        origin: Origin,
        detail: String,
    },
    /// The token holds characters that cannot travel in a gRPC header.
    #[error(
        "the token contains characters that cannot be sent to the controller; copy it again exactly as it was printed"
    )]
    BadToken,
}

/// Where the config file is, and whether the operator named it (then it must exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// The path.
    pub path: PathBuf,
    /// `Some` when named by `--config` or `$FLEET_CONFIG`.
    pub explicit: Option<Origin>,
}

/// Finds the config file's path: `--config`, `$FLEET_CONFIG`, then the default.
pub fn config_path(flags: &Flags, env: &Env) -> Result<ConfigPath, ConfigError> {
    if let Some(path) = &flags.config {
        return Ok(ConfigPath {
            path: path.clone(),
            explicit: Some(Origin::Flag("--config")),
        });
    }
    if let Some(path) = env.get("FLEET_CONFIG") {
        return Ok(ConfigPath {
            path: path.into(),
            explicit: Some(Origin::Env("FLEET_CONFIG")),
        });
    }
    // XDG says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    let base = match env
        .get("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(xdg) => xdg,
        None => PathBuf::from(env.get("HOME").ok_or(ConfigError::NoHome)?).join(".config"),
    };
    Ok(ConfigPath {
        path: base.join("fleet").join("fleetctl.toml"),
        explicit: None,
    })
}

/// Reads and validates a config file. `Ok(None)` when it does not exist.
pub fn read_file(path: &Path) -> Result<Option<FileConfig>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.into(),
                source,
            })
        }
    };
    parse_file(path, &text).map(Some)
}

/// Parses and validates a config file's text; `path` is for messages and to
/// resolve a relative `ca`.
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let mut file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        detail: describe_toml_error(&e, text),
    })?;
    let invalid = |key, problem: &str, fix: &str| ConfigError::Invalid {
        path: path.into(),
        key,
        problem: problem.into(),
        fix: fix.into(),
    };
    let rewrite = "fix the file or rewrite it with 'fleetctl login'";
    if let Some(controller) = &file.controller {
        if fleet_proto::transport::split_addresses(controller).is_err() {
            return Err(invalid(
                "controller",
                &format!("is '{controller}', which is not host:port"),
                "write it as controller = \"controller.example.com:7443\" (several controllers of one fleet: \
                 separated by commas)",
            ));
        }
    }
    if file.token.as_deref().is_some_and(str::is_empty) {
        return Err(invalid("token", "is empty", rewrite));
    }
    if file.ca.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(invalid("ca", "is empty", rewrite));
    }
    if file.ca.is_some() && file.ca_fingerprint.is_some() {
        return Err(invalid(
            "ca_fingerprint",
            "is set together with 'ca'",
            "keep only one of the two",
        ));
    }
    if let Some(fp) = &file.ca_fingerprint {
        let normal = normalize_fingerprint(fp).map_err(|_| {
            invalid(
                "ca_fingerprint",
                &format!("is '{fp}', which is not sha256:<64 hex digits>"),
                "copy it from the output of 'fleet-controller init'",
            )
        })?;
        file.ca_fingerprint = Some(normal);
    }
    // A relative CA path means "next to this file", not "next to wherever
    // fleetctl happens to run".
    if let Some(ca) = &file.ca {
        if ca.is_relative() {
            let dir = path.parent().unwrap_or(Path::new("."));
            file.ca = Some(dir.join(ca));
        }
    }
    Ok(file)
}

/// Turns a toml error into one line that says where: the line number and the
/// line's text, which names the key.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return message.to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    if line.is_empty() {
        format!("{message} (line {line_no})")
    } else {
        format!("{message} at line {line_no}: `{line}`")
    }
}

/// Checks a `sha256:<64 hex>` fingerprint and lowercases it.
pub fn normalize_fingerprint(fp: &str) -> Result<String, ConfigError> {
    let fp = fp.trim().to_ascii_lowercase();
    match fp.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(fp),
        _ => Err(ConfigError::BadFingerprint(fp)),
    }
}

/// Applies every source in order: file, then environment, then flags.
pub fn resolve(flags: &Flags, env: &Env) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    // Without HOME there is no default file; that is only an error when
    // nothing else supplies the settings, which `require` reports.
    let config = match config_path(flags, env) {
        Ok(config) => Some(config),
        Err(ConfigError::NoHome) => None,
        Err(e) => return Err(e),
    };
    if let Some(ConfigPath { path, explicit }) = config {
        match (read_file(&path)?, explicit) {
            (Some(file), _) => {
                settings.controller = file.controller;
                settings.token = file.token.map(Token);
                settings.trust = match (file.ca, file.ca_fingerprint) {
                    (Some(ca), _) => Some(TrustSource::CaFile {
                        path: ca,
                        origin: Origin::File(path.clone()),
                    }),
                    (None, Some(fp)) => Some(TrustSource::Fingerprint(fp)),
                    (None, None) => None,
                };
                settings.file = Some(path);
            }
            (None, Some(origin)) => return Err(ConfigError::FileMissing { path, origin }),
            (None, None) => {}
        }
    }
    apply_overrides(&mut settings, flags, env)?;
    Ok(settings)
}

/// Applies the environment, then the flags, over whatever is in `settings`.
pub fn apply_overrides(settings: &mut Settings, flags: &Flags, env: &Env) -> Result<(), ConfigError> {
    let controllers = [
        (
            env.get("FLEET_CONTROLLER").map(str::to_string),
            Origin::Env("FLEET_CONTROLLER"),
        ),
        (flags.controller.clone(), Origin::Flag("--controller")),
    ];
    for (value, origin) in controllers {
        if let Some(value) = value {
            if fleet_proto::transport::split_addresses(&value).is_err() {
                return Err(ConfigError::BadController { value, origin });
            }
            settings.controller = Some(value);
        }
    }
    if let Some(token) = env.get("FLEET_TOKEN") {
        settings.token = Some(Token(token.to_string()));
    }
    if let Some(token) = flags.token.as_deref().filter(|t| !t.is_empty()) {
        settings.token = Some(Token(token.to_string()));
    }
    if let Some(ca) = env.get("FLEET_CA") {
        settings.trust = Some(TrustSource::CaFile {
            path: ca.into(),
            origin: Origin::Env("FLEET_CA"),
        });
    }
    if let Some(ca) = &flags.ca {
        settings.trust = Some(TrustSource::CaFile {
            path: ca.clone(),
            origin: Origin::Flag("--ca"),
        });
    }
    Ok(())
}

impl Settings {
    /// Insists that controller, token and CA are all known.
    pub fn require(self) -> Result<Resolved, ConfigError> {
        // When a file was read but lacked the key, say so: the operator
        // probably expected the file to provide it.
        let note = |key: &str| match &self.file {
            Some(path) => format!(" ({} has no '{key}' key)", path.display()),
            None => String::new(),
        };
        let controller = self.controller.clone().ok_or_else(|| ConfigError::Missing {
            what: "controller address",
            flag: "--controller",
            env: "FLEET_CONTROLLER",
            note: note("controller"),
        })?;
        let token = self.token.clone().ok_or_else(|| ConfigError::Missing {
            what: "token",
            flag: "--token",
            env: "FLEET_TOKEN",
            note: note("token"),
        })?;
        let trust = self.trust.clone().ok_or_else(|| ConfigError::Missing {
            what: "CA",
            flag: "--ca",
            env: "FLEET_CA",
            note: note("ca"),
        })?;
        Ok(Resolved {
            controller,
            token,
            trust,
        })
    }
}

/// Writes a config file atomically with mode 0600: a temp file beside it,
/// fsynced, then renamed over the old one, so a crash never leaves half a
/// file and the token is never readable by others, not even briefly.
pub fn write_file(path: &Path, config: &FileConfig) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let text = toml::to_string(config).map_err(std::io::Error::other)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fleetctl.toml".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("fleetctl.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "controller = \"file:1\"\ntoken = \"file-token\"\nca = \"ca.pem\"\n",
        );
        let flags = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        };

        let only_file = resolve(&flags, &Env::default())
            .expect("resolve")
            .require()
            .expect("complete");
        assert_eq!(only_file.controller, "file:1");
        assert_eq!(only_file.token.expose(), "file-token");
        assert_eq!(
            only_file.trust,
            TrustSource::CaFile {
                path: dir.path().join("ca.pem"),
                origin: Origin::File(path.clone())
            }
        );

        let env = Env::from([("FLEET_CONTROLLER", "env:2"), ("FLEET_TOKEN", "env-token")]);
        let with_env = resolve(&flags, &env).expect("resolve").require().expect("complete");
        assert_eq!(with_env.controller, "env:2");
        assert_eq!(with_env.token.expose(), "env-token");

        let flags = Flags {
            controller: Some("flag:3".into()),
            ca: Some("/flag/ca.pem".into()),
            ..flags
        };
        let env = Env::from([
            ("FLEET_CONTROLLER", "env:2"),
            ("FLEET_TOKEN", "env-token"),
            ("FLEET_CA", "/env/ca.pem"),
        ]);
        let with_flags = resolve(&flags, &env).expect("resolve").require().expect("complete");
        assert_eq!(with_flags.controller, "flag:3");
        assert_eq!(with_flags.token.expose(), "env-token");
        assert_eq!(
            with_flags.trust,
            TrustSource::CaFile {
                path: "/flag/ca.pem".into(),
                origin: Origin::Flag("--ca")
            }
        );
    }

    #[test]
    fn env_ca_overrides_file_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            &format!(
                "ca_fingerprint = \"{}\"\n",
                FP.to_uppercase().replace("SHA256", "sha256")
            ),
        );
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let settings = resolve(&flags, &Env::default()).expect("resolve");
        assert_eq!(settings.trust, Some(TrustSource::Fingerprint(FP.into())));
        let settings = resolve(&flags, &Env::from([("FLEET_CA", "/x.pem")])).expect("resolve");
        assert_eq!(
            settings.trust,
            Some(TrustSource::CaFile {
                path: "/x.pem".into(),
                origin: Origin::Env("FLEET_CA")
            })
        );
    }

    #[test]
    fn default_path_prefers_xdg_and_may_be_absent() {
        let env = Env::from([("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/op")]);
        let p = config_path(&Flags::default(), &env).expect("path");
        assert_eq!(
            p,
            ConfigPath {
                path: "/xdg/fleet/fleetctl.toml".into(),
                explicit: None
            }
        );
        let env = Env::from([("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/op")]);
        let p = config_path(&Flags::default(), &env).expect("path");
        assert_eq!(p.path, PathBuf::from("/home/op/.config/fleet/fleetctl.toml"));
        let env = Env::from([("FLEET_CONFIG", "/etc/f.toml"), ("HOME", "/home/op")]);
        assert_eq!(
            config_path(&Flags::default(), &env).expect("path").path,
            PathBuf::from("/etc/f.toml")
        );

        // A default file that does not exist is fine; flags can carry everything.
        let home = tempfile::tempdir().expect("tempdir");
        let env = Env::from([("HOME", home.path().to_str().expect("utf-8"))]);
        let flags = Flags {
            controller: Some("c:1".into()),
            token: Some("t".into()),
            ca: Some("/ca.pem".into()),
            ..Flags::default()
        };
        let settings = resolve(&flags, &env).expect("resolve");
        assert_eq!(settings.file, None);
        settings.require().expect("complete");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flags = Flags {
            config: Some(dir.path().join("nope.toml")),
            ..Flags::default()
        };
        let err = resolve(&flags, &Env::default()).expect_err("missing");
        assert!(matches!(err, ConfigError::FileMissing { .. }), "{err}");
        assert!(err.to_string().contains("nope.toml"), "{err}");
        assert!(err.to_string().contains("--config"), "{err}");
    }

    #[test]
    fn missing_settings_say_how_to_fix() {
        let err = Settings::default().require().expect_err("incomplete");
        assert_eq!(
            err.to_string(),
            "no controller address: pass --controller, set FLEET_CONTROLLER, or run 'fleetctl login'"
        );
        let settings = Settings {
            controller: Some("a:1".into()),
            ..Settings::default()
        };
        assert_eq!(
            settings.require().expect_err("incomplete").to_string(),
            "no token: pass --token, set FLEET_TOKEN, or run 'fleetctl login'"
        );
        let settings = Settings {
            controller: Some("a:1".into()),
            token: Some(Token::new("t")),
            file: Some("/f.toml".into()),
            ..Settings::default()
        };
        assert_eq!(
            settings.require().expect_err("incomplete").to_string(),
            "no CA: pass --ca, set FLEET_CA, or run 'fleetctl login' (/f.toml has no 'ca' key)"
        );
    }

    #[test]
    fn corrupt_file_names_file_and_key() {
        let path = Path::new("/cfg/fleetctl.toml");
        let err = parse_file(path, "controller = \"a:1\"\ntokn = \"x\"\n").expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("/cfg/fleetctl.toml"), "{msg}");
        assert!(msg.contains("tokn"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("fleetctl login"), "{msg}");

        let msg = parse_file(path, "controller = 5\n")
            .expect_err("wrong type")
            .to_string();
        assert!(
            msg.contains("/cfg/fleetctl.toml") && msg.contains("controller"),
            "{msg}"
        );

        let msg = parse_file(path, "controller = \"a:1\n")
            .expect_err("broken toml")
            .to_string();
        assert!(msg.contains("/cfg/fleetctl.toml") && msg.contains("line 1"), "{msg}");

        let msg = parse_file(path, "controller = \"nohost\"\n")
            .expect_err("bad address")
            .to_string();
        assert!(msg.contains("key 'controller'") && msg.contains("host:port"), "{msg}");

        let msg = parse_file(path, "ca_fingerprint = \"md5:00\"\n")
            .expect_err("bad fingerprint")
            .to_string();
        assert!(msg.contains("key 'ca_fingerprint'"), "{msg}");

        let text = format!("ca = \"a.pem\"\nca_fingerprint = \"{FP}\"\n");
        let msg = parse_file(path, &text).expect_err("both").to_string();
        assert!(msg.contains("only one"), "{msg}");

        let msg = parse_file(path, "token = \"\"\n").expect_err("empty token").to_string();
        assert!(msg.contains("key 'token' is empty"), "{msg}");
    }

    #[test]
    fn bad_controller_from_flag_is_refused() {
        let flags = Flags {
            controller: Some("nohost".into()),
            config: Some("/dev/null".into()),
            ..Flags::default()
        };
        let err = resolve(&flags, &Env::default()).expect_err("bad");
        assert!(err.to_string().contains("--controller"), "{err}");
    }

    #[test]
    fn token_debug_hides_secret() {
        assert_eq!(format!("{:?}", Token::new("fleet_op_a.secret")), "Token(<redacted>)");
    }

    #[test]
    fn write_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/fleetctl.toml");
        let config = FileConfig {
            controller: Some("c.example:7443".into()),
            token: Some("fleet_op_x.y".into()),
            ca: None,
            ca_fingerprint: Some(FP.into()),
        };
        write_file(&path, &config).expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_file(&path).expect("read"), Some(config));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir")).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }
}
