//! Release signatures: what is signed, how a public key is written, and the
//! check every side makes (fleetctl before a push, the controller at push,
//! the agent before it fetches a byte).
//!
//! A release is signed by an Ed25519 key that CI holds (made by `fleetctl
//! keys generate`); the key never reaches the controller. The statement
//! binds the app, the version, the artifact's sha256 and a release
//! sequence, so a signature cannot be moved to another app, another
//! version or other bytes; the sequence lets a host refuse an old release
//! pushed again (see the agent's `trust`).

use ring::signature::{UnparsedPublicKey, ED25519};

use crate::ReleaseSignature;

/// How a public key is written: this prefix and 64 hex digits.
pub const KEY_PREFIX: &str = "ed25519:";

/// A parsed Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses `ed25519:<64 hex>` (surrounding whitespace ignored); the
    /// error says what was expected.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let t = text.trim();
        // The text is never echoed: it may be a private key given by mistake.
        let Some(hex) = t.strip_prefix(KEY_PREFIX) else {
            let hint = if t.contains("PRIVATE KEY") {
                " (this is a private key: give the .pub file, and keep the .key secret)"
            } else {
                ""
            };
            return Err(format!(
                "not a fleet public key: expected {KEY_PREFIX} and 64 hex digits, as in the .pub file                  'fleetctl keys generate' writes{hint}"
            ));
        };
        let bytes = crate::transport::unhex(hex)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| format!("not a fleet public key: {KEY_PREFIX} must be followed by 64 hex digits"))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(PublicKey(k))
    }

    /// A short form for messages: `ed25519:` and the first 16 hex digits.
    pub fn short(&self) -> String {
        format!("{KEY_PREFIX}{}", &crate::transport::hex(&self.0)[..16])
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_PREFIX}{}", crate::transport::hex(&self.0))
    }
}

/// The bytes a release signature covers.
pub fn statement(app: &str, version: &str, sha256: &str, sequence: u64) -> Vec<u8> {
    format!("fleet-release-v1\n{app}\n{version}\n{sha256}\n{sequence}\n").into_bytes()
}

/// Why a release's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Keys are required and the release carries no signature.
    #[error("the release is not signed, and {0} requires a signature by one of its keys; push it again with 'fleetctl release push … --sign-key FILE'")]
    Unsigned(&'static str),
    /// The signature's key is not one of the trusted keys.
    #[error("the release is signed by {key}, which {who} does not trust (it trusts {trusted}); sign with a trusted key, or add the key")]
    UnknownKey {
        /// The key that signed.
        key: String,
        /// Who refused ("this host", "app web").
        who: &'static str,
        /// The trusted keys, short.
        trusted: String,
    },
    /// The signature does not verify over this app, version and digest.
    #[error("the release's signature by {key} does not verify for app {app} version {version} sha256 {sha256}: it was made for another app, version or artifact, or was altered")]
    Invalid {
        /// The key that claims to have signed.
        key: String,
        /// App.
        app: String,
        /// Version.
        version: String,
        /// Digest.
        sha256: String,
    },
    /// The signature is malformed (key text, length).
    #[error("the release's signature is malformed: {0}")]
    Malformed(String),
}

/// Checks `sig` over (app, version, sha256) against `trusted`: Ok with the
/// signing key and sequence, or why not. `who` names the checker in
/// refusals ("this host", "the app"). With no trusted keys, a present
/// signature is still checked against its own key (a wrong one is a
/// mistake worth stopping), and an absent one is fine: Ok(None).
pub fn check(
    trusted: &[PublicKey],
    who: &'static str,
    app: &str,
    version: &str,
    sha256: &str,
    sig: Option<&ReleaseSignature>,
) -> Result<Option<(PublicKey, u64)>, Refusal> {
    let sig = match sig {
        Some(s) if !s.key.is_empty() || !s.signature.is_empty() => s,
        _ if trusted.is_empty() => return Ok(None),
        _ => return Err(Refusal::Unsigned(who)),
    };
    let key = PublicKey::parse(&sig.key).map_err(Refusal::Malformed)?;
    if !trusted.is_empty() && !trusted.contains(&key) {
        return Err(Refusal::UnknownKey {
            key: key.short(),
            who,
            trusted: trusted.iter().map(PublicKey::short).collect::<Vec<_>>().join(", "),
        });
    }
    if sig.signature.len() != 64 {
        return Err(Refusal::Malformed(format!(
            "{} bytes where an Ed25519 signature has 64",
            sig.signature.len()
        )));
    }
    UnparsedPublicKey::new(&ED25519, key.0)
        .verify(&statement(app, version, sha256, sig.sequence), &sig.signature)
        .map_err(|_| Refusal::Invalid {
            key: key.short(),
            app: app.into(),
            version: version.into(),
            sha256: sha256.into(),
        })?;
    Ok(Some((key, sig.sequence)))
}

/// A new Ed25519 key, PKCS#8 (what `sign` takes).
pub fn new_key() -> Result<Vec<u8>, String> {
    let rng = ring::rand::SystemRandom::new();
    ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|k| k.as_ref().to_vec())
        .map_err(|e| format!("cannot make a key: {e}"))
}

/// Signs (app, version, sha256, sequence) with a PKCS#8 Ed25519 key.
pub fn sign(pkcs8: &[u8], app: &str, version: &str, sha256: &str, sequence: u64) -> Result<ReleaseSignature, String> {
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|e| format!("not an Ed25519 private key ({e})"))?;
    let public = ring::signature::KeyPair::public_key(&pair).as_ref();
    let mut k = [0u8; 32];
    k.copy_from_slice(public);
    Ok(ReleaseSignature {
        key: PublicKey(k).to_string(),
        sequence,
        signature: pair.sign(&statement(app, version, sha256, sequence)).as_ref().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Vec<u8> {
        new_key().expect("key")
    }

    const SHA: &str = "ab12";

    #[test]
    fn a_signature_binds_app_version_digest_and_sequence() {
        let k = key();
        let sig = sign(&k, "web", "1.0.0", SHA, 7).expect("sign");
        let pk = PublicKey::parse(&sig.key).expect("key");
        assert_eq!(PublicKey::parse(&pk.to_string()), Ok(pk));
        let ok = check(&[pk], "this host", "web", "1.0.0", SHA, Some(&sig)).expect("valid");
        assert_eq!(ok, Some((pk, 7)));
        for (app, version, sha) in [("api", "1.0.0", SHA), ("web", "1.0.1", SHA), ("web", "1.0.0", "cd34")] {
            let e = check(&[pk], "this host", app, version, sha, Some(&sig)).expect_err("moved");
            assert!(matches!(e, Refusal::Invalid { .. }), "{e}");
        }
        let mut later = sig.clone();
        later.sequence = 8;
        assert!(matches!(
            check(&[pk], "this host", "web", "1.0.0", SHA, Some(&later)),
            Err(Refusal::Invalid { .. })
        ));
    }

    #[test]
    fn trust_decides_what_is_required() {
        let (k, other) = (key(), key());
        let sig = sign(&k, "web", "1.0.0", SHA, 1).expect("sign");
        let pk = PublicKey::parse(&sig.key).expect("key");
        let other_pk = PublicKey::parse(&sign(&other, "x", "1", SHA, 1).expect("sign").key).expect("key");
        // Unsigned: fine without trusted keys, refused with them.
        assert_eq!(check(&[], "this host", "web", "1.0.0", SHA, None), Ok(None));
        let e = check(&[pk], "this host", "web", "1.0.0", SHA, None).expect_err("unsigned");
        assert!(
            e.to_string().contains("not signed") && e.to_string().contains("--sign-key"),
            "{e}"
        );
        // Signed by a key not trusted.
        let e = check(&[other_pk], "this host", "web", "1.0.0", SHA, Some(&sig)).expect_err("unknown");
        assert!(
            e.to_string().contains(&pk.short()) && e.to_string().contains(&other_pk.short()),
            "{e}"
        );
        // Without trusted keys a present signature is still checked.
        let mut bad = sig.clone();
        bad.signature[0] ^= 1;
        assert!(matches!(
            check(&[], "the controller", "web", "1.0.0", SHA, Some(&bad)),
            Err(Refusal::Invalid { .. })
        ));
        bad.signature.truncate(10);
        assert!(matches!(
            check(&[pk], "this host", "web", "1.0.0", SHA, Some(&bad)),
            Err(Refusal::Malformed(_))
        ));
        for text in [
            "",
            "ed25519:zz",
            "rsa:00",
            "ed25519:€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€",
            &format!("{KEY_PREFIX}{}", "0".repeat(62)),
        ] {
            assert!(PublicKey::parse(text).is_err(), "{text}");
        }
        // A private key given by mistake is named, never echoed.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKSECRET\n-----END PRIVATE KEY-----\n";
        let e = PublicKey::parse(pem).expect_err("private");
        assert!(e.contains("private key") && !e.contains("SECRET"), "{e}");
    }
}
