//! Release signing keys: `fleetctl keys generate` and what `release push
//! --sign-key` and `app update --require-signature` read. The private key
//! stays where it was made (a CI secret); only signatures and public keys
//! reach the controller.

use std::path::{Path, PathBuf};

use fleet_proto::signing::{self, PublicKey};
use fleet_proto::ReleaseSignature;
use serde_json::json;

use crate::error::Error;
use crate::output::{Format, Report};

/// Makes an Ed25519 key pair: `PREFIX.key` (PKCS#8 PEM, 0600, created only
/// if absent) and `PREFIX.pub` (the public key line).
pub fn generate(prefix: &Path, format: Format) -> Result<Report, Error> {
    let key_path = with_ext(prefix, "key");
    let pub_path = with_ext(prefix, "pub");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| Error::Failed(format!("cannot make a key: {e}")))?;
    let public = public_of(&pair)?;
    write_new(&key_path, pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok(match format {
        Format::Json => Report::json(&json!({
            "private_key_file": key_path,
            "public_key_file": pub_path,
            "public_key": public.to_string(),
        })),
        Format::Table => Report::out(format!(
            "wrote {} (private: keep it in CI's secret store, never on the controller) and {}\n\
             public key: {public}\n\
             sign releases: fleetctl release push APP FILE --release V --sign-key {}\n\
             require them: fleetctl app update APP --require-signature {}; pin it on hosts in \
             /etc/fleet/agent.toml: trusted_keys = [\"{public}\"]",
            key_path.display(),
            pub_path.display(),
            key_path.display(),
            pub_path.display(),
        )),
    })
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            Error::Failed(format!(
                "cannot create {}: {e}{}",
                path.display(),
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    " (a key is never overwritten: choose another name or remove it first)"
                } else {
                    ""
                }
            ))
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Failed(format!("cannot write {}: {e}", path.display())))
}

fn public_of(pair: &rcgen::KeyPair) -> Result<PublicKey, Error> {
    let raw = pair.public_key_raw();
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| Error::Failed("the new key's public half is not 32 bytes".into()))?;
    Ok(PublicKey(bytes))
}

/// Reads a private key file `keys generate` wrote; the PKCS#8 bytes.
pub fn read_private(path: &Path) -> Result<Vec<u8>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read the signing key {}: {e}", path.display())))?;
    let pair = rcgen::KeyPair::from_pem(&text).map_err(|e| {
        Error::Usage(format!(
            "{} is not a private key in PEM ({e}); make one with 'fleetctl keys generate NAME'",
            path.display()
        ))
    })?;
    if !pair.is_compatible(&rcgen::PKCS_ED25519) {
        return Err(Error::Usage(format!(
            "{} is not an Ed25519 key; make one with 'fleetctl keys generate NAME'",
            path.display()
        )));
    }
    Ok(pair.serialize_der())
}

/// A public key given as a `.pub` file or as the key text itself.
pub fn read_public(arg: &str) -> Result<PublicKey, Error> {
    let text = if arg.starts_with(signing::KEY_PREFIX) {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).map_err(|e| {
            Error::Usage(format!(
                "cannot read the public key file {arg}: {e} (give a .pub file or the key, {}…)",
                signing::KEY_PREFIX
            ))
        })?
    };
    PublicKey::parse(&text).map_err(|e| Error::Usage(format!("{arg}: {e}")))
}

/// Signs a release with the key in `path`; `sequence` defaults to the time
/// of signing in ms, which grows from one CI run to the next.
pub fn sign(
    path: &Path,
    app: &str,
    version: &str,
    sha256: &str,
    sequence: Option<u64>,
) -> Result<ReleaseSignature, Error> {
    let pkcs8 = read_private(path)?;
    let sequence = sequence.unwrap_or_else(|| u64::try_from(fleet_proto::now_ms()).unwrap_or(0));
    signing::sign(&pkcs8, app, version, sha256, sequence).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_what_the_public_key_verifies_and_are_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().join("ci");
        generate(&prefix, Format::Json).expect("generate");
        let key = dir.path().join("ci.key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let public = read_public(dir.path().join("ci.pub").to_str().expect("utf-8")).expect("pub");
        let sig = sign(&key, "web", "1.0.0", "ab", Some(3)).expect("sign");
        assert_eq!(sig.key, public.to_string());
        let checked = signing::check(&[public], "this host", "web", "1.0.0", "ab", Some(&sig)).expect("verifies");
        assert_eq!(checked, Some((public, 3)));
        let again = generate(&prefix, Format::Json).expect_err("exists");
        assert!(again.to_string().contains("never overwritten"), "{again}");
        // The key text works in place of a file; garbage does not.
        assert_eq!(read_public(&public.to_string()).expect("text"), public);
        assert!(read_public("ed25519:00").is_err());
        std::fs::write(dir.path().join("junk.key"), "not a key").expect("write");
        assert!(read_private(&dir.path().join("junk.key")).is_err());
    }
}
